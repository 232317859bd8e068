"""The databases a run visits: DB_NAME, then each other database GROUP_ROLES names.

Roles are the cluster's and privileges each database's, and a role made in a
transaction not yet committed is invisible from the other databases: so the roles
and DB_NAME's privileges commit first, then each other database's privileges, each
in a transaction of its own under that database's advisory lock. A run holds one of
those locks at a time, so runs that visit the same databases in any order cannot
deadlock. Every database is checked before anything commits: a missing one fails
the run with nothing applied anywhere.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import psycopg

from app.errors import ConfigError
from app.login.master import MasterLogin

_CHECK = """
SELECT u.name, d.oid IS NOT NULL, coalesce(d.datallowconn, false),
       d.oid IS NOT NULL AND has_database_privilege(d.oid, 'CONNECT')
FROM unnest(%s::text[]) WITH ORDINALITY AS u(name, i)
LEFT JOIN pg_database d ON d.datname = u.name
ORDER BY u.i
"""


def check(conn: psycopg.Connection[Any], names: tuple[str, ...], setting: str) -> None:
    """Each database exists and the master may connect to it, or a ConfigError naming
    every one that fails."""
    problems: list[ConfigError] = []
    for name, exists, allows, may in conn.execute(_CHECK, (list(names),)).fetchall():
        if not exists:
            problems.append(ConfigError(setting, f"database {name!r} does not exist"))
        elif not allows:
            problems.append(ConfigError(setting, f"database {name!r} does not allow connections"))
        elif not may:
            problems.append(
                ConfigError(setting, f"the master user has no CONNECT on database {name!r}")
            )
    if problems:
        raise ConfigError.all_of(problems)


def login_to(login: MasterLogin, name: str) -> MasterLogin:
    """The same login, to another database of the cluster."""
    return dataclasses.replace(login, dbname=name, prior_changes=[])
