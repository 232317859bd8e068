"""Stop signals and the deadline, raised wherever the job happens to be blocked.

ECS stops a task with SIGTERM and kills it after its stop timeout; a terminal sends
SIGINT; and DEADLINE_SECONDS must end a run that is stuck on a host that never
answers or a statement that never returns. Each raises `Interrupt` in the main
thread, in the middle of whatever call is waiting: a connection attempt, a lock wait,
a statement, a sleep between retries. It derives from KeyboardInterrupt because
psycopg answers that by cancelling the statement in flight on the server before the
exception goes on, so the transaction is rolled back, not left running.

While COMMIT is in flight, stop signals no longer interrupt it: they are held, so
that a COMMIT that takes its usual milliseconds finishes and the report says what
happened. A COMMIT that hangs (its reply lost, a synchronous standby down) is still
ended by the deadline, or by the hard stop a few seconds after a signal, and then the
error says that the commit may have happened (`commit_in_doubt`), never that it was
rolled back. Once COMMIT has answered, the outcome is known and the run finishes
and reports whatever comes.
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


IN_DOUBT = {"commit_in_doubt": True}


def _in_doubt(what: str) -> str:
    return (
        f"{what} while COMMIT was in flight: the transaction may have been committed; "
        "run `aurora-bootstrap verify` to see the database as it is"
    )


class _State:
    held = False  # stop signals are noted, not raised
    committing = False  # COMMIT is in flight: its outcome is unknown
    committed = False  # COMMIT answered: the run reports, whatever comes
    pending: Interrupt | None = None
    deadline_message: Callable[[], str] = str
    deadline_at: float | None = None  # time.monotonic() when the deadline passes
    on_hard_stop: Callable[[BootstrapError], bool] | None = None
    hard_stop: threading.Timer | None = None


_state = _State()


def _stop_signal(signum: int, frame: FrameType | None) -> None:
    name = signal.Signals(signum).name
    if _state.committing:
        error = _STOPS[signum](_in_doubt(f"stopped by {name}"), dict(IN_DOUBT))
    else:
        error = _STOPS[signum](
            f"stopped by {name}: the statement in flight was cancelled and the "
            "transaction rolled back"
        )
    if _state.committed:
        return  # the outcome is known and being reported: nothing to stop
    _arm_hard_stop(error)
    if _state.held:
        _state.pending = _state.pending or Interrupt(error)
        return
    # One interruption: later signals are noted while it unwinds (psycopg cancels the
    # statement in flight, which a second interruption would cut short).
    _state.held = True
    raise Interrupt(error)


def _deadline(signum: int, frame: FrameType | None) -> None:
    _state.held = True
    if _state.committing:
        raise Interrupt(DeadlineExceeded(_in_doubt(_state.deadline_message()), dict(IN_DOUBT)))
    raise Interrupt(DeadlineExceeded(_state.deadline_message()))


def _arm_hard_stop(error: BootstrapError) -> None:
    if _state.hard_stop is not None or _state.on_hard_stop is None:
        return
    report = _state.on_hard_stop

    def stop() -> None:
        # False: the run is writing its own result line, and exits with its code.
        if report(error):
            os._exit(error.exit_code)

    _state.hard_stop = threading.Timer(HARD_STOP_SECONDS, stop)
    _state.hard_stop.daemon = True
    _state.hard_stop.start()


def install() -> None:
    """The process's first act: handle SIGTERM and SIGINT, holding them until the
    command starts (release()). A process started with them blocked (as the image
    starts the job, so that no signal can come before this) has them unblocked now,
    and one already pending is held like any other."""
    _state.held = True
    for signum in _STOPS:
        signal.signal(signum, _stop_signal)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, set(_STOPS))


def on_hard_stop(report: Callable[[BootstrapError], bool]) -> None:
    """report(error) writes the result line of a stop whose cleanup hung, and says
    whether it did (else the run is already writing its own)."""
    _state.on_hard_stop = report
    if _state.pending is not None:
        _arm_hard_stop(_state.pending.error)


def arm_deadline(seconds: float, message: Callable[[], str]) -> None:
    """Raise DeadlineExceeded(message()) in `seconds`, wherever the job is then."""
    _state.deadline_message = message
    _state.deadline_at = time.monotonic() + seconds
    signal.signal(signal.SIGALRM, _deadline)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.001))


def disarm_deadline() -> None:
    signal.setitimer(signal.ITIMER_REAL, 0)


def committing() -> None:
    """COMMIT is about to be sent: stop signals are held (and arm the hard stop); the
    deadline still ends a COMMIT that hangs, saying that it may have committed."""
    _state.held = True
    _state.committing = True


def committed() -> None:
    """COMMIT answered: the outcome is known, and the run finishes and reports it
    whatever signal comes; a hard stop armed meanwhile is called off."""
    _state.committing = False
    _state.committed = True
    _state.pending = None
    disarm_deadline()
    if _state.hard_stop is not None:
        _state.hard_stop.cancel()


def release() -> None:
    """Interruptions resume (the connection was lost during COMMIT: the next attempt
    finds out); a stop signal that arrived meanwhile is raised now, in doubt."""
    _state.held = False
    _state.committing = False
    if _state.deadline_at is not None:
        signal.setitimer(signal.ITIMER_REAL, max(_state.deadline_at - time.monotonic(), 0.001))
    pending, _state.pending = _state.pending, None
    if pending is not None:
        raise pending


def quiet() -> None:
    """From here nothing may interrupt: the result line is being written, and the
    exit code it states is the process's. Stop signals are ignored until exit, also
    through interpreter shutdown (Python restores the default action of a signal it
    handles when it shuts down, but leaves an ignored one ignored)."""
    disarm_deadline()
    for signum in _STOPS:
        signal.signal(signum, signal.SIG_IGN)
