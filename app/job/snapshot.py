"""What a run changed, read from the catalog itself.

A snapshot (sql/report/snapshot.sql) is taken before and after the scripts inside
the same transaction, so the report is what the database did, not what the script
meant to do. The same snapshot gives the fingerprint that confirms a COMMIT whose
reply was lost, so the report and that check see the same changes.

Both snapshots stay on the server, as text arrays in transaction-local settings, and
one query (sql/report/changes.sql) returns only the rows that differ, and only if
the transaction wrote anything at all. A catalog of 10,000 users then costs no
transfer and no client memory when nothing changed. This module only binds them.
"""

from __future__ import annotations

import json
from typing import Any

import psycopg

from app import sqlfiles
from app.changelog import ChangeLog


def _keep(setting: str) -> str:
    """The statement that keeps a snapshot of the catalog now in `setting`."""
    return (
        f"SELECT set_config('{setting}', ARRAY({sqlfiles.query('report/snapshot.sql')})::text,"
        " true) IS NULL"
    )


class Snapshot:
    """The catalog as the report sees it."""

    def __init__(self) -> None:
        self._before = _keep("bootstrap.snapshot")
        self._now = _keep("bootstrap.snapshot_now")

    @classmethod
    def of(cls, conn: psycopg.Connection[Any]) -> Snapshot:
        return cls()

    def remember(self, cur: psycopg.Cursor[Any]) -> None:
        """Keep a snapshot of the catalog on the server, for changes() to compare with."""
        cur.execute(self._before)

    def fingerprint(self, cur: psycopg.Cursor[Any]) -> str:
        """The catalog's fingerprint now, as changes() gives it after a change."""
        cur.execute(self._now)
        cur.execute(sqlfiles.query("report/fingerprint.sql"))
        row = cur.fetchone()
        return str(row[0]) if row is not None else ""

    def changes(self, cur: psycopg.Cursor[Any]) -> tuple[ChangeLog, str]:
        """What changed since remember(), in the same transaction, and the fingerprint
        of the catalog as it is now ("" when the transaction has written nothing)."""
        found = ChangeLog()
        fingerprint = ""
        # A question the size of a line first: planning the report's query alone costs
        # more than a no-op run's whole report should.
        cur.execute("SELECT pg_current_xact_id_if_assigned() IS NOT NULL")
        if not (row := cur.fetchone()) or not row[0]:
            return found, fingerprint
        cur.execute(self._now)
        cur.execute(sqlfiles.query("report/changes.sql"))
        # Pieces of one text, cut anywhere: a line ends at the piece that ends it.
        pending = ""
        while (piece := cur.fetchone()) is not None:
            lines, newline, rest = (pending + str(piece[0])).rpartition("\n")
            pending = rest if newline else lines + rest
            if newline:
                fingerprint = self._take(found, fingerprint, lines)
        if pending:
            fingerprint = self._take(found, fingerprint, pending)
        return found, fingerprint

    @staticmethod
    def _take(found: ChangeLog, fingerprint: str, lines: str) -> str:
        """Whole lines of the report: the first is the fingerprint, the rest changes."""
        if not fingerprint:
            first, _, lines = lines.partition("\n")
            fingerprint = str(json.loads(first)["fingerprint"])
        if lines:
            found.add_lines(lines)
        return fingerprint
