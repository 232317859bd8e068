"""Just enough LDAP (RFC 4511) for a simple bind: read a BindRequest or UnbindRequest,
write a BindResponse, and answer any other request with its response's result code
(an extended operation it does not know: protocolError; others: unwillingToPerform).
BER as LDAP uses it: definite lengths, one tag byte.

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
UNWILLING_TO_PERFORM = 53
ABANDON_REQUEST, EXTENDED_REQUEST, EXTENDED_RESPONSE = 0x50, 0x77, 0x78
# Each request the server does not perform, and the response that answers it.
RESPONSES = {
    0x63: 0x65,  # SearchRequest: SearchResultDone
    0x66: 0x67,  # ModifyRequest
    0x68: 0x69,  # AddRequest
    0x4A: 0x6B,  # DelRequest
    0x6C: 0x6D,  # ModifyDNRequest
    0x6E: 0x6F,  # CompareRequest
    EXTENDED_REQUEST: EXTENDED_RESPONSE,  # StartTLS, WhoAmI, ...
}
MAX_MESSAGE = 64 * 1024  # a bind with a token signed with temporary credentials: ~2 KB


class BerError(Exception):
    pass


@dataclass(frozen=True)
class Message:
    message_id: int
    op: int  # the protocolOp's tag
    name: str = ""
    password: str | None = None  # simple authentication only
    version: int = 3


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
    tag, raw_version, j = _element(contents, 0)
    tag_name, name, j = _element(contents, j)
    tag_auth, password, _ = _element(contents, j)
    if tag != INTEGER or tag_name != OCTET_STRING:
        raise BerError("malformed BindRequest")
    version = int.from_bytes(raw_version, "big", signed=True)
    if tag_auth != SIMPLE_AUTH:
        return Message(message_id, op, name.decode("utf-8", "replace"), version=version)
    return Message(
        message_id,
        op,
        name.decode("utf-8", "replace"),
        password.decode("utf-8", "replace"),
        version,
    )


def _encode(tag: int, contents: bytes) -> bytes:
    size = len(contents)
    if size < 0x80:
        return bytes([tag, size]) + contents
    octets = size.to_bytes((size.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(octets)]) + octets + contents


def _id(message_id: int) -> bytes:
    return message_id.to_bytes(max(1, (message_id.bit_length() + 8) // 8), "big", signed=True)


def result_message(message_id: int, tag: int, result: int, diagnostic: str = "") -> bytes:
    """An LDAPMessage whose protocolOp (of `tag`) is an LDAPResult."""
    response = (
        _encode(ENUMERATED, bytes([result]))
        + _encode(OCTET_STRING, b"")
        + _encode(OCTET_STRING, diagnostic.encode())
    )
    return _encode(SEQUENCE, _encode(INTEGER, _id(message_id)) + _encode(tag, response))


def bind_response(message_id: int, result: int, diagnostic: str = "") -> bytes:
    return result_message(message_id, BIND_RESPONSE, result, diagnostic)


def bind_request(message_id: int, name: str, password: str, version: int = 3) -> bytes:
    """A simple BindRequest, as PostgreSQL sends it (for the tests and tools)."""
    request = (
        _encode(INTEGER, bytes([version]))
        + _encode(OCTET_STRING, name.encode())
        + _encode(SIMPLE_AUTH, password.encode())
    )
    return _encode(SEQUENCE, _encode(INTEGER, _id(message_id)) + _encode(BIND_REQUEST, request))


def request(message_id: int, tag: int, contents: bytes = b"") -> bytes:
    """Any other request, its contents as given (for the tests)."""
    return _encode(SEQUENCE, _encode(INTEGER, _id(message_id)) + _encode(tag, contents))


# The unsolicited notification a server sends before it closes a connection.
_NOTICE_OF_DISCONNECTION = b"1.3.6.1.4.1.1466.20036"
_RESPONSE_NAME = 0x8A


def notice_of_disconnection(result: int, diagnostic: str = "") -> bytes:
    response = (
        _encode(ENUMERATED, bytes([result]))
        + _encode(OCTET_STRING, b"")
        + _encode(OCTET_STRING, diagnostic.encode())
        + _encode(_RESPONSE_NAME, _NOTICE_OF_DISCONNECTION)
    )
    return _encode(SEQUENCE, _encode(INTEGER, _id(0)) + _encode(EXTENDED_RESPONSE, response))


def result_of(data: bytes) -> tuple[int, int]:
    """(protocolOp tag, resultCode) of a response (for the tests and tools)."""
    tag, body, _ = _element(data, 0)
    if tag != SEQUENCE:
        raise BerError("not an LDAPMessage")
    _, _, i = _element(body, 0)
    op, contents, _ = _element(body, i)
    tag, result, _ = _element(contents, 0)
    if tag != ENUMERATED:
        raise BerError("no resultCode")
    return op, int.from_bytes(result, "big")
