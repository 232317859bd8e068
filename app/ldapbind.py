"""Just enough LDAP (RFC 4511) for a simple bind: read a BindRequest or UnbindRequest,
write a BindResponse. BER as LDAP uses it: definite lengths, one tag byte.

A codec of our own, because the messages PostgreSQL's `ldap` authentication sends in
its simple-bind mode are these two, and the maintained LDAP libraries on PyPI are
clients, or bring a general ASN.1 stack (and a dependency in the image) for them.
"""

from __future__ import annotations

from dataclasses import dataclass

SEQUENCE, INTEGER, OCTET_STRING, ENUMERATED = 0x30, 0x02, 0x04, 0x0A
BIND_REQUEST, BIND_RESPONSE, UNBIND_REQUEST = 0x60, 0x61, 0x42
SIMPLE_AUTH = 0x80
SUCCESS, PROTOCOL_ERROR, INVALID_CREDENTIALS, AUTH_METHOD_NOT_SUPPORTED = 0, 2, 49, 7
MAX_MESSAGE = 64 * 1024  # a bind with a token signed with temporary credentials: ~2 KB


class BerError(Exception):
    pass


@dataclass(frozen=True)
class Message:
    message_id: int
    op: int  # the protocolOp's tag
    name: str = ""
    password: str | None = None  # simple authentication only


def _length(data: bytes, i: int) -> tuple[int, int]:
    """(length, index past it) of the length octets at i."""
    if i >= len(data):
        raise BerError("truncated")
    first = data[i]
    if first < 0x80:
        return first, i + 1
    count = first & 0x7F
    if count == 0 or count > 4 or i + 1 + count > len(data):
        raise BerError("unsupported length")
    return int.from_bytes(data[i + 1 : i + 1 + count], "big"), i + 1 + count


def _element(data: bytes, i: int) -> tuple[int, bytes, int]:
    """(tag, contents, index past it) of the element at i."""
    if i >= len(data):
        raise BerError("truncated")
    tag = data[i]
    length, start = _length(data, i + 1)
    end = start + length
    if end > len(data):
        raise BerError("truncated")
    return tag, data[start:end], end


def message_size(buffer: bytes) -> int | None:
    """The size of the first whole message in buffer, None while it is incomplete."""
    if len(buffer) < 2:
        return None
    try:
        length, start = _length(buffer, 1)
    except BerError:
        if len(buffer) < 6:
            return None
        raise
    if start + length > MAX_MESSAGE:
        raise BerError("message too large")
    return start + length if len(buffer) >= start + length else None


def decode(data: bytes) -> Message:
    tag, body, _ = _element(data, 0)
    if tag != SEQUENCE:
        raise BerError("not an LDAPMessage")
    tag, raw_id, i = _element(body, 0)
    if tag != INTEGER:
        raise BerError("no messageID")
    message_id = int.from_bytes(raw_id, "big", signed=True)
    op, contents, _ = _element(body, i)
    if op != BIND_REQUEST:
        return Message(message_id, op)
    tag, _version, j = _element(contents, 0)
    tag_name, name, j = _element(contents, j)
    tag_auth, password, _ = _element(contents, j)
    if tag != INTEGER or tag_name != OCTET_STRING:
        raise BerError("malformed BindRequest")
    if tag_auth != SIMPLE_AUTH:
        return Message(message_id, op, name.decode("utf-8", "replace"))
    return Message(
        message_id, op, name.decode("utf-8", "replace"), password.decode("utf-8", "replace")
    )


def _encode(tag: int, contents: bytes) -> bytes:
    size = len(contents)
    if size < 0x80:
        return bytes([tag, size]) + contents
    octets = size.to_bytes((size.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(octets)]) + octets + contents


def bind_response(message_id: int, result: int, diagnostic: str = "") -> bytes:
    raw_id = message_id.to_bytes(max(1, (message_id.bit_length() + 8) // 8), "big", signed=True)
    response = (
        _encode(ENUMERATED, bytes([result]))
        + _encode(OCTET_STRING, b"")
        + _encode(OCTET_STRING, diagnostic.encode())
    )
    return _encode(SEQUENCE, _encode(INTEGER, raw_id) + _encode(BIND_RESPONSE, response))


def bind_request(message_id: int, name: str, password: str) -> bytes:
    """A simple BindRequest, as PostgreSQL sends it (for the tests and tools)."""
    request = (
        _encode(INTEGER, b"\x03")
        + _encode(OCTET_STRING, name.encode())
        + _encode(SIMPLE_AUTH, password.encode())
    )
    raw_id = message_id.to_bytes(max(1, (message_id.bit_length() + 8) // 8), "big", signed=True)
    return _encode(SEQUENCE, _encode(INTEGER, raw_id) + _encode(BIND_REQUEST, request))
