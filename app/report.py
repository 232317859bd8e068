"""The one JSON result line on stdout that ends apply, plan, verify, ecs-run,
fleet-run and custom-resource."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from app import log
from app.changelog import Change, ChangeLog

# The line is written in pieces: its list of changes can be tens of thousands long.
_PLACEHOLDER = "__changes__"
_BLOCK = 1000


@dataclass
class Result:
    command: str
    version: str = ""
    exit_code: int = 0
    changes: ChangeLog | list[Change] = field(default_factory=list)
    duration_ms: int = 0
    error: dict[str, str] | None = None
    # Command-specific fields: verify's findings, ecs-run's task.
    details: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        """Every field but the changes, which stand as a placeholder string."""
        body: dict[str, Any] = {
            "command": self.command,
            "status": "ok" if self.exit_code == 0 else "error",
            "exit_code": self.exit_code,
            "changes": _PLACEHOLDER,
            "duration_ms": self.duration_ms,
            "version": self.version,
        }
        body |= self.details
        if self.error is not None:
            body["error"] = self.error
        return body

    def change_texts(self) -> Iterable[str]:
        if isinstance(self.changes, ChangeLog):
            return self.changes
        return (json.dumps(c, separators=(",", ":"), ensure_ascii=False) for c in self.changes)


def emit(result: Result) -> None:
    """Write the result line, one change at a time (its one caller, `app.cli`, makes
    sure it is written once, whoever ends the run)."""
    line = json.dumps(result.as_json(), separators=(",", ":"), ensure_ascii=False)
    head, tail = line.split(json.dumps(_PLACEHOLDER), 1)
    out = sys.stdout
    out.write(log.redact(head) + "[")
    # Redacted a block of changes at a time: what a secret could hide in, it is still
    # read whole, and 40,000 changes cost 40 passes, not 40,000.
    block: list[str] = []
    first = True
    for text in result.change_texts():
        block.append(text)
        if len(block) == _BLOCK:
            out.write(("" if first else ",") + log.redact(",".join(block)))
            block, first = [], False
    if block:
        out.write(("" if first else ",") + log.redact(",".join(block)))
    out.write("]" + log.redact(tail) + "\n")
    out.flush()
