"""Redaction: a registered secret never reaches a log line, field or traceback."""

from __future__ import annotations

import json

import pytest

from app import log

SECRET = "s3cr3t-Value-That-Must-Not-Leak"


@pytest.mark.parametrize("fmt", ["json", "text"])
def test_secret_is_redacted_from_message_fields_and_traceback(
    fmt: str, capsys: pytest.CaptureFixture[str]
) -> None:
    log.setup(fmt, "INFO")  # type: ignore[arg-type]
    log.register_secret(SECRET)
    log.event("login", detail=f"password={SECRET}", nested={"list": [SECRET]})
    lookup: dict[str, str] = {}
    try:
        lookup[SECRET]  # a KeyError whose message holds the secret
    except KeyError:
        log.LOGGER.exception("internal_error")
    err = capsys.readouterr().err
    assert SECRET not in err
    assert err.count(log.REDACTED) >= 3
    if fmt == "json":
        first = json.loads(err.splitlines()[0])
        assert first["event"] == "login"
        assert first["detail"] == f"password={log.REDACTED}"
        assert {"ts", "level"} <= first.keys()
