"""Logs on stderr: one JSON object per line, or readable text on a terminal.

Every record passes through a redaction filter that knows each secret the job has
seen (the master password, secret values, tokens), so that no code path can leak
one into a log line, whatever message or exception text it carries.
"""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime
from typing import Any, Literal

from pythonjsonlogger.json import JsonFormatter

LOGGER = logging.getLogger("aurora_bootstrap")
REDACTED = "[redacted]"
_secrets: set[str] = set()
# Attributes every LogRecord has; anything else on a record is an event field.
_RECORD_ATTRS = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


def register_secret(value: str | None) -> None:
    """From now on, `value` is replaced by [redacted] wherever it would be written."""
    if value and len(value) >= 4:  # shorter strings would redact ordinary words
        _secrets.add(value)


def redact(text: str) -> str:
    for secret in sorted(_secrets, key=len, reverse=True):
        if secret in text:
            text = text.replace(secret, REDACTED)
    return text


def _redact_value(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: _redact_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_redact_value(v) for v in value]
    return value


class _RedactFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if _secrets:
            record.msg = redact(record.getMessage())
            record.args = None
            for key, value in list(vars(record).items()):
                if key not in _RECORD_ATTRS:
                    setattr(record, key, _redact_value(value))
        return True


class _JsonFormatter(JsonFormatter):
    def formatException(self, ei: Any) -> str:
        return redact(str(super().formatException(ei)))


class _TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ts = datetime.fromtimestamp(record.created, UTC).strftime("%H:%M:%S")
        fields = " ".join(
            f"{key}={value}"
            for key, value in vars(record).items()
            if key not in _RECORD_ATTRS and not key.startswith("_")
        )
        line = f"{ts} {record.levelname:<7} {record.getMessage()}"
        if fields:
            line += f"  {fields}"
        if record.exc_info:
            line += "\n" + redact(self.formatException(record.exc_info))
        return line


def setup(fmt: Literal["json", "text"], level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_RedactFilter())
    if fmt == "json":
        handler.setFormatter(
            _JsonFormatter(
                "{asctime}{levelname}{message}",
                style="{",
                rename_fields={"asctime": "ts", "levelname": "level", "message": "event"},
                datefmt="%Y-%m-%dT%H:%M:%S%z",
                json_ensure_ascii=False,
            )
        )
    else:
        handler.setFormatter(_TextFormatter())
    LOGGER.handlers[:] = [handler]
    LOGGER.setLevel(level)
    LOGGER.propagate = False


def event(name: str, level: int = logging.INFO, **fields: Any) -> None:
    """Log one event: a short snake_case name and its fields."""
    LOGGER.log(level, name, extra=fields)
