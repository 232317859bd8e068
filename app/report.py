"""The one JSON result line on stdout that ends apply, plan and verify."""

from __future__ import annotations

import json
import sys
import threading
from dataclasses import dataclass, field
from typing import Any

from app import log


@dataclass
class Result:
    command: str
    version: str = ""
    exit_code: int = 0
    changes: list[dict[str, object]] = field(default_factory=list)
    duration_ms: int = 0
    error: dict[str, str] | None = None
    # Command-specific fields: verify's findings, ecs-run's task.
    details: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "command": self.command,
            "status": "ok" if self.exit_code == 0 else "error",
            "exit_code": self.exit_code,
            "changes": self.changes,
            "duration_ms": self.duration_ms,
            "version": self.version,
        }
        body |= self.details
        if self.error is not None:
            body["error"] = self.error
        return body


_emitted = threading.Lock()


def emit(result: Result) -> None:
    """Write the result line; only the first call writes (a hard stop may race the
    normal end of a run)."""
    if not _emitted.acquire(blocking=False):
        return
    line = json.dumps(result.as_json(), separators=(",", ":"), ensure_ascii=False)
    sys.stdout.write(log.redact(line) + "\n")
    sys.stdout.flush()
