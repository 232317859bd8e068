"""The transaction: advisory lock, inputs, snapshot, init.sql, snapshot, commit or not.

Everything happens in one transaction, so init.sql is applied whole or not at all.
The transaction-scoped advisory lock makes concurrent runs queue: the second one
waits, then finds the work done.

Each attempt bounds itself by what is left of the deadline on the server too
(statement_timeout, lock_timeout), and sets idle_in_transaction_session_timeout: the
job never idles inside its transaction, so a session it lost to a silent network is
ended by the server within seconds, and with it the lock it held.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import psycopg
from psycopg.pq import TransactionStatus

from app import interrupt, log
from app.changelog import ChangeLog
from app.errors import InitSqlError
from app.inputs.users import IamUser, to_json
from app.job import managed
from app.job.script import Script, Statement
from app.job.snapshot import Snapshot
from app.login import connect
from app.retry import Deadline

T = TypeVar("T")

# pg_advisory_xact_lock key: the bytes of "aurora-b" read as a signed 64-bit integer.
LOCK_KEY = int.from_bytes(b"aurora-b", "big", signed=True)
# How long the server keeps a session of the job that stopped talking mid-transaction.
IDLE_IN_TRANSACTION_MS = 10_000

# One round trip: the attempt's timeouts, whether this server can write at all (after
# a failover the writer endpoint may still lead to the demoted instance), and the lock
# if it is free. CASE keeps a read-only server from being asked for a lock. JIT is
# off: the catalog queries of a large run are estimated costly enough for LLVM to
# compile them, which took seconds longer than running them (PostgreSQL 15, 5,000
# tables).
# standard_conforming_strings is set on: the splitter reads backslashes in quotes as
# PostgreSQL does with it on (and init.sql may not turn it off).
_BEGIN = """
SELECT set_config('statement_timeout', %(budget)s, true),
       set_config('jit', 'off', true),
       set_config('lock_timeout', %(budget)s, true),
       set_config('idle_in_transaction_session_timeout', %(idle)s, true),
       set_config('standard_conforming_strings', 'on', true),
       current_setting('transaction_read_only') = 'on' AS read_only,
       CASE WHEN current_setting('transaction_read_only') = 'off'
            THEN pg_try_advisory_xact_lock(%(key)s) END AS locked
"""


@dataclass(frozen=True)
class Inputs:
    """What init.sql and privileges.sql read through current_setting('bootstrap.*')."""

    users: tuple[IamUser, ...]
    master_user: str
    prune: bool
    group_roles: str = "{}"  # GROUP_ROLES as JSON, every default resolved
    # Where a declared document came from, for its errors; None for the shipped default.
    groups_setting: str | None = None
    # The document decides all the groups hold (the shipped default only adds).
    exact: bool = True

    def settings(self, *, roles_here: bool = True) -> dict[str, str]:
        """Each input by its name after `bootstrap.`; `roles_here` is true in DB_NAME,
        where the cluster's roles and memberships are the run's business."""
        return {
            "iam_users": to_json(self.users),
            "master_user": self.master_user,
            "prune": "true" if self.prune else "false",
            "group_roles": self.group_roles,
            "exact": "true" if self.exact else "false",
            "roles_here": "true" if roles_here else "false",
        }


def set_inputs(cur: psycopg.Cursor[Any], inputs: Inputs, *, roles_here: bool = True) -> None:
    """The inputs, set transaction-local in one round trip, each value a parameter of
    its own (the Data API takes no array); bootstrap.findings and bootstrap.elsewhere
    are what privileges.sql leaves (what it could not act on, the other databases
    where the groups hold privileges)."""
    given = inputs.settings(roles_here=roles_here) | {"findings": "[]", "elsewhere": "[]"}
    calls = ", ".join(f"set_config('bootstrap.{name}', %s, true)" for name in given)
    cur.execute(f"SELECT {calls}", list(given.values()))


# A setting's text in pieces of at most 16,000 characters: the Data API returns a row
# of at most 64 KB, and a verify of 5,000 objects leaves more than that.
_SETTING_IN_PIECES = """
SELECT substr(v, (i - 1) * 16000 + 1, 16000)
FROM (SELECT coalesce(current_setting(%s, true), '') AS v) AS s
CROSS JOIN LATERAL generate_series(1, greatest((length(v) + 15999) / 16000, 1)) AS g(i)
ORDER BY i
"""


def read_setting(cur: psycopg.Cursor[Any], setting: str) -> str:
    cur.execute(_SETTING_IN_PIECES, (setting,))
    return "".join(str(piece) for (piece,) in cur.fetchall())


def script_output(cur: psycopg.Cursor[Any], setting: str) -> list[managed.Finding]:
    """A JSON list a script left in a transaction-local setting: bootstrap.findings
    (what the master could not act on, what is not made yet), bootstrap.drift."""
    text = read_setting(cur, setting)
    found = json.loads(text) if text else []
    return [f for f in found if isinstance(f, dict)]


def script_findings(cur: psycopg.Cursor[Any]) -> list[managed.Finding]:
    return script_output(cur, "bootstrap.findings")


def elsewhere(cur: psycopg.Cursor[Any]) -> list[str]:
    """The other databases where a declared group holds privileges that the document
    does not name (privileges.sql finds them in DB_NAME): the run visits them too."""
    text = read_setting(cur, "bootstrap.elsewhere")
    return [str(name) for name in (json.loads(text) if text else [])]


@dataclass
class Applied:
    """What one run did, as the report tells it."""

    changes: ChangeLog
    findings: list[managed.Finding] = field(default_factory=list)
    elsewhere: list[str] = field(default_factory=list)
    # The reply to COMMIT was lost, and the next attempt found the catalog exactly as
    # that COMMIT would have left it: `changes` are the lost attempt's.
    confirmed_after_reconnect: bool = False


class CommitInDoubt(psycopg.OperationalError):
    """The connection was lost while COMMIT was in flight: it may have committed.

    A lost connection, so the retry policy reconnects; the next attempt compares the
    catalog with the after-state this attempt computed before committing.
    """

    def __init__(self, cause: str, changes: ChangeLog, after: str) -> None:
        super().__init__(
            f"connection lost during COMMIT ({cause}); "
            "the next attempt checks whether it was committed"
        )
        self.changes = changes
        self.after = after


class ReadOnlyServer(psycopg.errors.ReadOnlySqlTransaction):
    """The endpoint leads to a read-only server: a failover not yet visible in DNS."""


def _wait_for_the_lock(
    cur: psycopg.Cursor[tuple[object, ...]], deadline: Deadline, call_limit: float | None
) -> None:
    """Wait for the lock, within the deadline (lock_timeout). Over the Data API a call
    ends at 45 s, so the wait goes in slices shorter than that, each under a savepoint
    so that one that runs out leaves the transaction usable."""
    if call_limit is None:
        cur.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_KEY,))
        return
    while True:
        slice_ms = max(int(min(deadline.remaining(), call_limit - 5) * 1000), 1)
        cur.execute("SAVEPOINT aurora_bootstrap_lock")
        try:
            cur.execute(
                "SELECT set_config('lock_timeout', %s, true), pg_advisory_xact_lock(%s)",
                (f"{slice_ms}ms", LOCK_KEY),
            )
        except psycopg.errors.LockNotAvailable:
            cur.execute("ROLLBACK TO SAVEPOINT aurora_bootstrap_lock")
            continue
        cur.execute("RELEASE SAVEPOINT aurora_bootstrap_lock")
        return


def _begin(
    conn: psycopg.Connection[tuple[object, ...]],
    cur: psycopg.Cursor[tuple[object, ...]],
    deadline: Deadline,
) -> None:
    budget_ms = max(int(deadline.remaining() * 1000), 1)
    cur.execute(
        _BEGIN,
        {"budget": f"{budget_ms}ms", "idle": f"{IDLE_IN_TRANSACTION_MS}ms", "key": LOCK_KEY},
    )
    *_, read_only, locked = cur.fetchone() or (False, False)
    if read_only:
        raise ReadOnlyServer(
            "the server is read-only (transaction_read_only is on): the writer endpoint "
            "still leads to a reader or a demoted instance"
        )
    if not locked:
        log.event("lock_wait", reason="another run holds the bootstrap lock", key=LOCK_KEY)
        deadline.activity = "waiting for the bootstrap lock, which another run holds"
        _wait_for_the_lock(cur, deadline, getattr(conn, "call_limit", None))
        log.event("lock_acquired", waited_s=round(deadline.elapsed(), 3))


def _message(exc: psycopg.Error) -> str:
    """The server's message with its DETAIL and HINT, which say what to do."""
    diag = exc.diag
    parts = [diag.message_primary or str(exc)]
    if diag.message_detail:
        parts.append(f"DETAIL: {diag.message_detail}")
    if diag.message_hint:
        parts.append(f"HINT: {diag.message_hint}")
    return log.redact(" ".join(parts))


def _script_error(script: Script, statement: Statement, exc: psycopg.Error) -> InitSqlError:
    diag = exc.diag
    line = script.error_line(
        statement,
        int(diag.statement_position) if diag.statement_position else None,
        diag.context,
    )
    return InitSqlError(_message(exc), file=str(script.path), line=line, sqlstate=exc.sqlstate)


def _still_inside(
    conn: psycopg.Connection[tuple[object, ...]], script: Script, statement: Statement
) -> None:
    """After each statement: the job's transaction is still open, and the server still
    reads quotes as the splitter did."""
    problem = None
    if conn.info.transaction_status != TransactionStatus.INTRANS:
        problem = "this statement ended the job's transaction"
    elif conn.info.parameter_status("standard_conforming_strings") != "on":
        problem = (
            "this statement turned standard_conforming_strings off; the job splits "
            "init.sql as PostgreSQL reads it with that setting on"
        )
    if problem is not None:
        raise InitSqlError(problem, file=str(script.path), line=statement.line, sqlstate=None)


def run_script(
    conn: psycopg.Connection[tuple[object, ...]],
    cur: psycopg.Cursor[tuple[object, ...]],
    script: Script,
    deadline: Deadline,
) -> None:
    for statement in script.statements:
        deadline.activity = f"running {script.path}:{statement.line}"
        try:
            # A prepared statement goes through the extended protocol, where the server
            # refuses a call holding more than one statement: where the splitter and
            # the server disagree about where a statement ends (a COMMIT hidden in
            # what looked like one), the call fails and nothing commits. (Pipeline
            # mode would too, but its flush requests keep the server from arming
            # idle_in_transaction_session_timeout after each statement.)
            cur.execute(statement.text.encode(), prepare=True)
        except psycopg.Error as exc:
            # The server was writable when the transaction began and cannot become
            # read-only within it: 25006 now comes from the script itself.
            if connect.is_transient(exc) and exc.sqlstate != "25006":
                raise
            raise _script_error(script, statement, exc) from None
        _still_inside(conn, script, statement)
    deadline.activity = f"checking deferred constraints at the end of {script.path}"
    try:
        # Deferred constraints are checked now, under plan as under apply, and fail
        # here as the script's error rather than as COMMIT's.
        cur.execute("SET CONSTRAINTS ALL IMMEDIATE")
    except psycopg.Error as exc:
        if connect.is_transient(exc):
            raise
        raise InitSqlError(
            f"a deferred constraint failed at the end of init.sql: {_message(exc)}",
            file=str(script.path),
            line=script.last_line,
            sqlstate=exc.sqlstate,
        ) from None


def _after_script(script: Script, work: Callable[[], T]) -> T:
    """The job's own queries after init.sql: tested against the shipped script, so a
    failure here comes from what a custom script did to the transaction (its inputs
    reset, a setting changed) and is init.sql's error."""
    try:
        return work()
    except psycopg.Error as exc:
        if connect.is_transient(exc):
            raise
        raise InitSqlError(
            "the job cannot read what init.sql changed, after it ran: " + _message(exc),
            file=str(script.path),
            line=None,
            sqlstate=exc.sqlstate,
        ) from None


class Attempts:
    """init.sql applied once per connection the retry policy hands over.

    It remembers a commit whose reply was lost until an attempt has checked whether
    the server committed it, and the changes of one that it did.
    """

    def __init__(
        self,
        scripts: tuple[Script, ...],
        inputs: Inputs,
        deadline: Deadline,
        *,
        commit: bool,
        database_changes_only: bool = False,
    ):
        self.scripts = scripts
        # Where a failure after the scripts comes from: the first, init.sql, is the one
        # a user may have replaced.
        self.script = scripts[0]
        # For a database after the first: the roles were reported there.
        self.database_changes_only = database_changes_only
        self.inputs = inputs
        self.deadline = deadline
        self.commit = commit
        self.in_doubt: CommitInDoubt | None = None
        self.confirmed: ChangeLog | None = None

    def __call__(self, conn: psycopg.Connection[tuple[object, ...]]) -> Applied:
        committing = False
        try:
            with conn.transaction(force_rollback=not self.commit), conn.cursor() as cur:
                applied, after, locked = self._work(conn, cur)
                if self.commit:
                    interrupt.committing()
                    committing = True
        except psycopg.Error as exc:
            if not committing:
                raise
            if exc.sqlstate is not None and not exc.sqlstate.startswith("08"):
                # The server answered COMMIT with an error: it rolled back.
                interrupt.release()
                if connect.is_transient(exc):
                    raise
                raise InitSqlError(
                    f"COMMIT failed: {_message(exc)}",
                    file=str(self.script.path),
                    line=None,
                    sqlstate=exc.sqlstate,
                ) from None
            self.in_doubt = CommitInDoubt(connect.describe(exc), applied.changes, after)
            interrupt.release()
            raise self.in_doubt from None
        if committing:
            interrupt.committed()
        # How long this run held the lock, and with it the role catalog, until commit.
        log.event(
            "transaction_done",
            logging.INFO,
            changes=len(applied.changes),
            outcome="commit" if self.commit else "rollback",
            lock_held_ms=round((time.monotonic() - locked) * 1000, 1),
        )
        if self.confirmed is not None:
            self.confirmed.extend(applied.changes)
            applied.changes, applied.confirmed_after_reconnect = self.confirmed, True
        return applied

    def _check_lost_commit(
        self, snapshot: Snapshot, cur: psycopg.Cursor[tuple[object, ...]]
    ) -> None:
        """After a lost COMMIT reply: is the catalog as that COMMIT left it? A commit
        that changed nothing the snapshot holds cannot be told from none (and the
        script, run again now, makes what it did either way)."""
        lost = self.in_doubt
        if lost is None:
            return
        confirmed = bool(lost.changes) and snapshot.fingerprint(cur) == lost.after
        log.event(
            "commit_checked",
            logging.WARNING if confirmed else logging.INFO,
            committed=confirmed,
            reason="the reply to COMMIT was lost; the catalog "
            + ("matches" if confirmed else "does not match")
            + " what that COMMIT would have left",
        )
        if confirmed:
            self.confirmed = self.confirmed or ChangeLog()
            self.confirmed.extend(lost.changes)
        self.in_doubt = None  # checked: kept until now, whatever failed before

    def _work(
        self, conn: psycopg.Connection[tuple[object, ...]], cur: psycopg.Cursor[tuple[object, ...]]
    ) -> tuple[Applied, str, float]:
        self.deadline.activity = "starting the transaction"
        _begin(conn, cur, self.deadline)
        locked = time.monotonic()
        roles_here = not self.database_changes_only  # the cluster's roles: once, in DB_NAME
        set_inputs(cur, self.inputs, roles_here=roles_here)
        if roles_here:
            managed.check_groups(cur, self.inputs.group_roles, self.inputs.groups_setting)
        snapshot = Snapshot.of(conn)
        snapshot.remember(cur)
        self._check_lost_commit(snapshot, cur)
        for script in self.scripts:
            run_script(conn, cur, script, self.deadline)
        changes, after = _after_script(self.script, lambda: snapshot.changes(cur))
        if self.database_changes_only:
            changes = changes.where(lambda change: "database" in change)
        prune = (
            _after_script(self.script, lambda: managed.prune_findings(cur))
            if self.inputs.prune and not self.database_changes_only
            else []
        )
        for finding in prune:
            log.event("prune_incomplete", logging.WARNING, **finding)
        found = _after_script(self.script, lambda: script_findings(cur))
        for finding in found:
            fields = {k: v for k, v in finding.items() if k not in ("level", "statement")}
            log.event("privileges_left_alone", logging.WARNING, **fields)
        others = _after_script(self.script, lambda: elsewhere(cur)) if roles_here else []
        return Applied(changes, prune + found, others), after, locked
