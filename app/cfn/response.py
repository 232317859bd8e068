"""The answer to CloudFormation: one PUT of a small JSON body to the request's
pre-signed ResponseURL, retried within what the run's deadline left for it."""

from __future__ import annotations

import http.client
import json
import logging
import urllib.error
import urllib.request
from typing import Any

from app import log, retry
from app.cfn.request import Request
from app.errors import DeadlineExceeded, ResponseNotDelivered

# CloudFormation refuses a response body over 4 KiB.
MAX_BODY_BYTES = 4096
_CUT = "...(cut)"
# Of DEADLINE_SECONDS, the end kept for the answer: a quarter, at most this.
MAX_RESERVE_SECONDS = 30.0
# After a stop signal ECS kills the task after its stop timeout (30 s by default).
STOPPED_BUDGET_SECONDS = 20.0
_ATTEMPT_SECONDS = 10.0


def reserve(deadline_seconds: float) -> float:
    """How much of DEADLINE_SECONDS the run leaves for its answer."""
    return min(MAX_RESERVE_SECONDS, deadline_seconds / 4)


def _encode(fields: dict[str, Any]) -> bytes:
    # ASCII escapes, as CloudFormation's own helper sends: one character is never
    # fewer bytes than it counts, so cutting N characters frees at least N bytes.
    return json.dumps(fields).encode("ascii")


def body(request: Request, status: str, reason: str, data: dict[str, str]) -> bytes:
    """The response, its Reason cut so that the whole stays within MAX_BODY_BYTES."""
    fields: dict[str, Any] = {
        "Status": status,
        "Reason": reason,
        "PhysicalResourceId": request.resource_id,
        "StackId": request.stack_id,
        "RequestId": request.request_id,
        "LogicalResourceId": request.logical_resource_id,
        "NoEcho": False,
        "Data": data,
    }
    encoded = _encode(fields)
    if len(encoded) <= MAX_BODY_BYTES:
        return encoded
    # The longest start of the reason that fits (escapes make bytes and characters
    # differ, so it is searched for, not computed).
    fits, low, high = _encode(fields | {"Reason": ""}), 0, len(reason)
    while low < high:
        middle = (low + high + 1) // 2
        tried = _encode(fields | {"Reason": reason[:middle] + _CUT})
        if len(tried) <= MAX_BODY_BYTES:
            fits, low = tried, middle
        else:
            high = middle - 1
    return fits


def _transient(exc: BaseException) -> bool:
    if isinstance(exc, urllib.error.HTTPError):
        # S3 asks for a retry with 5xx and 429; a 4xx (an expired or altered URL)
        # stays what it is.
        return exc.code >= 500 or exc.code == 429
    return isinstance(exc, OSError | http.client.HTTPException)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    if isinstance(exc, urllib.error.URLError):
        return f"{type(exc.reason).__name__}: {exc.reason}"
    return f"{type(exc).__name__}: {exc}"


def send(request: Request, payload: bytes, seconds: float) -> dict[str, Any]:
    """PUT payload to the ResponseURL within `seconds`; returns what the result line
    says of it, or raises ResponseNotDelivered."""
    deadline = retry.Deadline(seconds, setting="the answer's share of DEADLINE_SECONDS")
    attempts = 0

    def put() -> int:
        nonlocal attempts
        attempts += 1
        # An empty content type, as the URL is signed for (CloudFormation's helper
        # sends the same).
        put_request = urllib.request.Request(  # noqa: S310 (the scheme is checked: http(s))
            request.response_url,
            data=payload,
            method="PUT",
            headers={"Content-Type": "", "Content-Length": str(len(payload))},
        )
        timeout = max(min(_ATTEMPT_SECONDS, deadline.remaining()), 0.1)
        with urllib.request.urlopen(put_request, timeout=timeout) as reply:  # noqa: S310
            reply.read()
            return int(reply.status)

    try:
        status = retry.run(
            put,
            what=f"answering CloudFormation at {request.response_where}",
            deadline=deadline,
            transient=_transient,
            describe=_describe,
        )
    except DeadlineExceeded as exc:
        raise ResponseNotDelivered(str(exc), {"response_attempts": attempts}) from None
    except (OSError, http.client.HTTPException) as exc:
        raise ResponseNotDelivered(
            f"answering CloudFormation at {request.response_where}: {_describe(exc)}",
            {"response_attempts": attempts},
        ) from None
    log.event("response_sent", http_status=status, attempts=attempts, bytes=len(payload))
    return {"http_status": status, "attempts": attempts, "bytes": len(payload)}


def answer(
    request: Request, status: str, reason: str, data: dict[str, str], seconds: float
) -> dict[str, Any]:
    """Send SUCCESS or FAILED; the result line's `response` field."""
    payload = body(request, status, log.redact(reason), data)
    log.event(
        "responding",
        logging.INFO if status == "SUCCESS" else logging.WARNING,
        status=status,
        physical_resource_id=request.resource_id,
        to=request.response_where,
        budget_s=round(seconds, 1),
    )
    sent = send(request, payload, seconds)
    return {"status": status, "physical_resource_id": request.resource_id, **sent}
