"""Stop signals and the deadline, raised wherever the job happens to be blocked.

ECS stops a task with SIGTERM and kills it after its stop timeout; a terminal sends
SIGINT; and DEADLINE_SECONDS must end a run that is stuck on a host that never
answers or a statement that never returns. Each raises `Interrupt` in the main
thread, in the middle of whatever call is waiting: a connection attempt, a lock wait,
a statement, a sleep between retries. It derives from KeyboardInterrupt because
psycopg answers that by cancelling the statement in flight on the server before the
exception goes on, so the transaction is rolled back, not left running.

Once the job is committing, stop signals no longer interrupt it: they are held and
the run finishes, so that the report never says "rolled back" of a commit that
happened. If cleanup hangs (a dead network), a hard stop prints the result line and
exits a few seconds after the first signal.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from types import FrameType

from app.errors import BootstrapError, DeadlineExceeded, StoppedBySigint, StoppedBySigterm

# After a stop signal, how long cleanup (cancel, rollback, close) may take.
HARD_STOP_SECONDS = 5.0

_STOPS: dict[int, type[BootstrapError]] = {
    signal.SIGINT: StoppedBySigint,
    signal.SIGTERM: StoppedBySigterm,
}


class Interrupt(KeyboardInterrupt):
    """Carries the job's error out of whatever was interrupted."""

    def __init__(self, error: BootstrapError) -> None:
        super().__init__(str(error))
        self.error = error


class _State:
    held = False  # committing: stop signals are noted, not raised
    pending: Interrupt | None = None
    deadline_message: Callable[[], str] = str
    deadline_at: float | None = None  # time.monotonic() when the deadline passes
    on_hard_stop: Callable[[BootstrapError], None] | None = None
    hard_stop: threading.Timer | None = None


_state = _State()


def _stop_signal(signum: int, frame: FrameType | None) -> None:
    error = _STOPS[signum](
        f"stopped by {signal.Signals(signum).name}: the statement in flight was cancelled "
        "and the transaction rolled back"
    )
    _arm_hard_stop(error)
    if _state.held:
        _state.pending = _state.pending or Interrupt(error)
        return
    raise Interrupt(error)


def _deadline(signum: int, frame: FrameType | None) -> None:
    raise Interrupt(DeadlineExceeded(_state.deadline_message()))


def _arm_hard_stop(error: BootstrapError) -> None:
    if _state.hard_stop is not None or _state.on_hard_stop is None:
        return
    report = _state.on_hard_stop

    def stop() -> None:
        report(error)
        os._exit(error.exit_code)

    _state.hard_stop = threading.Timer(HARD_STOP_SECONDS, stop)
    _state.hard_stop.daemon = True
    _state.hard_stop.start()


def install(on_hard_stop: Callable[[BootstrapError], None]) -> None:
    """Handle SIGTERM and SIGINT from now on; on_hard_stop reports a stuck stop."""
    _state.on_hard_stop = on_hard_stop
    for signum in _STOPS:
        signal.signal(signum, _stop_signal)


def arm_deadline(seconds: float, message: Callable[[], str]) -> None:
    """Raise DeadlineExceeded(message()) in `seconds`, wherever the job is then."""
    _state.deadline_message = message
    _state.deadline_at = time.monotonic() + seconds
    signal.signal(signal.SIGALRM, _deadline)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.001))


def disarm_deadline() -> None:
    signal.setitimer(signal.ITIMER_REAL, 0)


def hold() -> None:
    """From now on neither stop signals nor the deadline interrupt: the job is
    committing, then reporting. A COMMIT that hangs on a dead network still ends, when
    TCP keepalives give up on the connection."""
    _state.held = True
    disarm_deadline()


def release() -> None:
    """Interruptions resume (the commit failed); a stop signal that arrived while held
    is raised now."""
    _state.held = False
    if _state.deadline_at is not None:
        signal.setitimer(signal.ITIMER_REAL, max(_state.deadline_at - time.monotonic(), 0.001))
    pending, _state.pending = _state.pending, None
    if pending is not None:
        raise pending
