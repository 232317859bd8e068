"""sql: the bootstrap of DB_NAME as one plain SQL file, for a migration tool (prisma
migrate, Flyway, dbmate) or psql to apply.

It is the program `apply` runs there, init.sql and privileges.sql, with the inputs
the job would set as transaction settings bound into the text instead: the users and
the groups' document as quoted literals, PRUNE as a literal, and the master as
`current_user`, whoever applies the file. Settings that vanish with a transaction
cannot then be lost when the tool runs the file statement by statement, or in a
transaction of its own. No connection, no AWS, no secret: the file holds what
IAM_USERS, GROUP_ROLES and PRUNE say, and nothing else.
"""

from __future__ import annotations

import argparse
import json
import logging
import re

from psycopg import sql

from app import log
from app.inputs import settings
from app.job import script
from app.job.transaction import Inputs
from app.outcome import Run
from app.version import version

# The master in the groups' document (each grant's default owner) before it is bound
# to current_user: NUL, which no PostgreSQL name holds and the settings refuse, so its
# JSON text "\u0000" stands for nothing else.
_MASTER = "\x00"
_INPUT = re.compile(r"current_setting\('bootstrap\.(?P<name>[a-z_]+)'(?:\s*,\s*true)?\)")


def _literal(text: str) -> str:
    return sql.Literal(text).as_string(None)


def inputs(conf: settings.Settings) -> dict[str, str]:
    """Each bootstrap.* input the scripts read, as the SQL expression bound for it: the
    values `apply` sets (its Inputs), but for the master, who is whoever applies."""
    groups = conf.group_roles
    given = Inputs(
        conf.iam_users,
        _MASTER,
        conf.prune,
        groups.to_json(conf.db_name, _MASTER),
        None,
        groups.exact,
    ).settings()
    master = _literal(json.dumps(_MASTER))
    bound = {name: _literal(value) for name, value in given.items() if name != "master_user"}
    bound["master_user"] = "current_user::text"
    bound["group_roles"] = (
        f"replace({bound['group_roles']}, {master}, to_json(current_user::text)::text)"
    )
    return bound


def bind(statement: str, bound: dict[str, str]) -> str:
    """The statement with each input it reads replaced by its bound expression; an
    input not bound (bootstrap.check_only) is left to read as unset."""
    return _INPUT.sub(lambda m: bound.get(m["name"], m[0]), statement)


def render(conf: settings.Settings) -> str:
    bound = inputs(conf)
    parts = [
        f"-- aurora-bootstrap {version()} sql: the bootstrap of database {conf.db_name},",
        f"-- for {len(conf.iam_users)} users and {len(conf.group_roles.groups)} group roles,"
        f" PRUNE {'on' if conf.prune else 'off'}.",
        "-- Apply it as the cluster's master user (or a role with the same memberships):",
        "-- where the job acts as its master, this file acts as current_user. Idempotent;",
        "-- generated: run `aurora-bootstrap sql` again when the settings change.",
    ]
    for path in (conf.init_sql, settings.privileges_sql()):
        program = script.load(path)
        parts.append(f"\n-- {path.name}")
        for statement in program.statements:
            parts.append(f"\n-- {path.name}:{statement.line}\n{bind(statement.text, bound)};")
    return "\n".join(parts)


def command(args: argparse.Namespace, run: Run) -> str:
    conf = settings.load()
    log.setup(conf.log_format_resolved, conf.log_level)
    others = conf.group_roles.databases(conf.db_name)[1:]
    if others:
        log.event(
            "other_databases",
            logging.WARNING,
            database=conf.db_name,
            others=list(others),
            detail="this file is DB_NAME's part alone; print each other database's with "
            "DB_NAME=<name> aurora-bootstrap sql",
        )
    return render(conf)
