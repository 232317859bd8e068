"""The transaction: advisory lock, inputs, snapshot, init.sql, snapshot, commit or not.

Everything happens in one transaction, so init.sql is applied whole or not at all.
The transaction-scoped advisory lock makes concurrent runs queue: the second one
waits, then finds the work done.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass

import psycopg

from app import catalog, connect, log
from app.errors import InitSqlError
from app.retry import Deadline
from app.script import Script
from app.users import IamUser

# pg_advisory_xact_lock key: the bytes of "aurora-b" read as a signed 64-bit integer.
LOCK_KEY = int.from_bytes(b"aurora-b", "big", signed=True)


@dataclass(frozen=True)
class Inputs:
    """What init.sql reads through current_setting('bootstrap.*')."""

    users: tuple[IamUser, ...]
    master_user: str
    prune: bool

    def settings(self) -> tuple[str, str, str]:
        users = json.dumps([u.as_json() for u in self.users], separators=(",", ":"))
        return users, self.master_user, "true" if self.prune else "false"


def _lock(cur: psycopg.Cursor[tuple[object, ...]], deadline: Deadline) -> None:
    # lock_timeout bounds every lock wait of the transaction, this one and init.sql's,
    # by the deadline; on expiry 55P03 ends the attempt.
    timeout_ms = max(int(deadline.remaining() * 1000), 1)
    cur.execute("SELECT set_config('lock_timeout', %s, true)", (f"{timeout_ms}ms",))
    cur.execute("SELECT pg_try_advisory_xact_lock(%s)", (LOCK_KEY,))
    row = cur.fetchone()
    if row is None or not row[0]:
        log.event("lock_wait", reason="another run holds the bootstrap lock", key=LOCK_KEY)
        cur.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_KEY,))
        log.event("lock_acquired", waited_s=round(deadline.elapsed(), 3))


def _run_script(cur: psycopg.Cursor[tuple[object, ...]], script: Script) -> None:
    for statement in script.statements:
        try:
            cur.execute(statement.text.encode())
        except psycopg.Error as exc:
            if connect.is_transient(exc):
                raise
            diag = exc.diag
            line = script.error_line(
                statement,
                int(diag.statement_position) if diag.statement_position else None,
                diag.context,
            )
            raise InitSqlError(
                log.redact(diag.message_primary or str(exc)),
                file=str(script.path),
                line=line,
                sqlstate=exc.sqlstate,
            ) from None


def transaction(
    conn: psycopg.Connection[tuple[object, ...]],
    script: Script,
    inputs: Inputs,
    deadline: Deadline,
    *,
    commit: bool,
) -> list[catalog.Change]:
    """Run init.sql once under the lock; commit only if `commit`. Returns the changes."""
    with conn.transaction(force_rollback=not commit), conn.cursor() as cur:
        _lock(cur, deadline)
        locked = time.monotonic()
        cur.execute(
            "SELECT set_config('bootstrap.iam_users', %s, true),"
            " set_config('bootstrap.master_user', %s, true),"
            " set_config('bootstrap.prune', %s, true)",
            inputs.settings(),
        )
        catalog.remember(cur)
        _run_script(cur, script)
        changes = catalog.changes(cur)
    # How long this run held the lock, and with it the role catalog, until commit.
    log.event(
        "transaction_done",
        logging.INFO,
        changes=len(changes),
        outcome="commit" if commit else "rollback",
        lock_held_ms=round((time.monotonic() - locked) * 1000, 1),
    )
    return changes
