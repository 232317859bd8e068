"""One retry policy for the whole job: exponential backoff with full jitter, bounded by
DEADLINE_SECONDS, every retry logged with its reason and delay."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from tenacity import RetryCallState, Retrying, retry_if_exception, wait_random_exponential

from app import interrupt, log
from app.errors import DeadlineExceeded

T = TypeVar("T")

# Backoff: full jitter over 0.2 s * 2^n, at most 10 s between attempts.
_BASE_SECONDS = 0.2
_MAX_WAIT_SECONDS = 10.0
# The last attempt starts with at least this much of the deadline left.
_MIN_ATTEMPT_SECONDS = 0.5


@dataclass
class Deadline:
    seconds: float
    started: float = field(default_factory=time.monotonic)
    setting: str = "DEADLINE_SECONDS"  # named in every message about it
    activity: str = "starting"  # what the job is waiting for now
    # The end of the deadline kept for something after the run (custom-resource's
    # answer): the run stops that much earlier.
    reserved: float = 0.0

    def arm(self) -> None:
        """Interrupt the job wherever it is when the deadline passes: a host that never
        answers, a statement that never returns. Retries stop before it by themselves."""
        interrupt.arm_deadline(self.remaining(), self.expired)

    def expired(self) -> str:
        return f"gave up {self.activity}: {self.label()} passed after {self.elapsed():.1f}s"

    def label(self) -> str:
        kept = f", less {self.reserved:g}s kept to answer CloudFormation" if self.reserved else ""
        return f"{self.setting}={self.seconds:g}{kept}"

    def remaining(self) -> float:
        return self.seconds - self.reserved - (time.monotonic() - self.started)

    def elapsed(self) -> float:
        return time.monotonic() - self.started


def run(
    fn: Callable[[], T],
    *,
    what: str,
    deadline: Deadline,
    transient: Callable[[BaseException], bool],
    describe: Callable[[BaseException], str] = str,
) -> T:
    """Call fn until it succeeds, retrying transient failures until the deadline.

    Non-transient exceptions pass through at once. When the deadline leaves no room for
    another attempt, DeadlineExceeded says what was being waited for and why.
    """
    deadline.activity = what
    backoff = wait_random_exponential(multiplier=_BASE_SECONDS, max=_MAX_WAIT_SECONDS)

    def wait(state: RetryCallState) -> float:
        return min(backoff(state), max(deadline.remaining() - _MIN_ATTEMPT_SECONDS, 0.0))

    def stop(state: RetryCallState) -> bool:
        # wait() never sleeps into the last _MIN_ATTEMPT_SECONDS; once there, stop.
        return deadline.remaining() <= _MIN_ATTEMPT_SECONDS

    def reason(state: RetryCallState) -> str:
        exc = state.outcome.exception() if state.outcome is not None else None
        return describe(exc) if exc is not None else "no result"

    def before_sleep(state: RetryCallState) -> None:
        log.event(
            "retry",
            logging.WARNING,
            what=what,
            attempt=state.attempt_number,
            reason=reason(state),
            delay_s=round(state.upcoming_sleep, 3),
            remaining_s=round(deadline.remaining(), 3),
        )

    def give_up(state: RetryCallState) -> T:
        raise DeadlineExceeded(
            f"gave up {what} after {state.attempt_number} attempts in "
            f"{deadline.elapsed():.1f}s ({deadline.label()}): {reason(state)}"
        )

    retrying = Retrying(
        retry=retry_if_exception(transient),
        wait=wait,
        stop=stop,
        before_sleep=before_sleep,
        retry_error_callback=give_up,
        sleep=time.sleep,
    )
    return retrying(fn)
