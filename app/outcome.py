"""How a command ended, and the exit code that says so.

Each error type carries its one exit code (`app.errors`); this module turns a
command's end into an Outcome: its value, or its error and that code, and for the
commands whose findings decide (verify's drift, ecs-run's container) the code their
fields call for.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from app import interrupt, log
from app.errors import BootstrapError, DriftFound


@dataclass
class Outcome:
    value: Any = None
    exit_code: int = 0
    error: dict[str, str] | None = None
    details: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def failed(cls, exc: BootstrapError, *, redact: bool = True) -> Outcome:
        message = log.redact(str(exc)) if redact else str(exc)
        return cls(None, exc.exit_code, {"type": exc.kind, "message": message}, exc.details)


@dataclass
class Run:
    """One invocation: its command, when it started, and what must happen just before
    its result line is written (custom-resource answers CloudFormation then, whoever
    writes the line: the run's end, or a hard stop)."""

    command: str
    started: float
    before_result: Callable[[Outcome, dict[str, Any]], None] | None = None


def guarded(fn: Callable[[], Any]) -> Outcome:
    """Run a command: its value, or its exit code and what went wrong. From its end
    on, nothing interrupts: what it returns is reported, and exited with."""
    try:
        interrupt.release()  # a stop signal that came while starting ends it here
        value = fn()
        interrupt.quiet()
        return Outcome(value)
    except (BootstrapError, interrupt.Interrupt) as caught:
        interrupt.quiet()
        exc = caught.error if isinstance(caught, interrupt.Interrupt) else caught
        log.event("failed", logging.ERROR, error=exc.kind, detail=str(exc))
        return Outcome.failed(exc)
    except Exception as exc:  # noqa: BLE001 (any other failure is a bug: exit 1)
        interrupt.quiet()
        log.LOGGER.exception("internal_error")
        return Outcome(None, 1, {"type": "internal_error", "message": log.redact(repr(exc))})


def verdict(command: str, fields: dict[str, Any]) -> Outcome:
    """Exit codes that come from what a command found, not from an error."""
    if command == "verify":
        # Warnings (what the master may not act on) are findings, not drift.
        drift = sum(f.get("level") != "warning" for f in fields.get("findings", [])) + sum(
            not c["ok"] for c in fields.get("connections", [])
        )
        if drift:
            log.event("drift", logging.WARNING, findings=drift)
            return Outcome(
                None,
                DriftFound.exit_code,
                {"type": DriftFound.kind, "message": f"{drift} findings of drift"},
            )
    if command == "ecs-run" and fields.get("container_exit_code"):
        code = int(fields["container_exit_code"])
        message = str(fields.get("stopped_how") or f"container exited with {code}")
        return Outcome(None, code, {"type": "task_failed", "message": message})
    return Outcome(None)
