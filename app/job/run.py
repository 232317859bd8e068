"""apply, plan and verify: settings -> credentials -> connection -> one transaction
per database -> the fields of the result line.

The master logs in once; DB_NAME gets init.sql and privileges.sql, each other
database GROUP_ROLES names gets privileges.sql in a transaction of its own (see
`app.job.databases`), every attempt under the run's deadline and retry policy.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from app import log, retry
from app.changelog import ChangeLog
from app.errors import BootstrapError, ConfigError
from app.inputs import settings
from app.job import databases, script, transaction, verify
from app.login import connect, credentials

if TYPE_CHECKING:
    import psycopg

    from app.inputs.settings import Settings
    from app.login.master import MasterLogin
    from app.outcome import Run
    from app.retry import Deadline

T = TypeVar("T")


def apply(args: argparse.Namespace, run: Run) -> dict[str, Any]:
    conf, deadline = settings.configure(run.started)
    return database_command("apply", conf, deadline)


def plan(args: argparse.Namespace, run: Run) -> dict[str, Any]:
    conf, deadline = settings.configure(run.started)
    return database_command("plan", conf, deadline)


def verify_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--connect",
        action="store_true",
        help="also log in as each user with a fresh IAM token (needs AWS)",
    )


def verify_command(args: argparse.Namespace, run: Run) -> dict[str, Any]:
    conf, deadline = settings.configure(run.started)
    if args.connect and conf.db_transport == "data-api":
        raise ConfigError(
            "DB_TRANSPORT",
            "verify --connect logs in as each user over the network, which data-api runs "
            "without; run it where the writer can be reached, with DB_TRANSPORT=postgres",
        )
    return database_command("verify", conf, deadline, connect_each=args.connect)


class Session:
    """The master login, and each database of the cluster reached with it, under the
    run's deadline and retry policy."""

    def __init__(self, login: MasterLogin, conf: Settings, deadline: Deadline) -> None:
        self.login, self.conf, self.deadline = login, conf, deadline

    def retried(
        self, what: str, work: Callable[[psycopg.Connection[Any]], T], dbname: str | None = None
    ) -> T:
        where = self.login if dbname is None else databases.login_to(self.login, dbname)

        def attempt() -> T:
            with connect.connect(where, self.conf, self.deadline) as conn:
                return work(conn)

        return retry.run(
            attempt,
            what=what,
            deadline=self.deadline,
            transient=connect.is_transient,
            describe=connect.describe,
        )


def database_command(
    command: str, conf: Settings, deadline: Deadline, *, connect_each: bool = False
) -> dict[str, Any]:
    """Log in as the master user and work in one transaction per database."""
    # Where to log in first, then how: every problem found here is reported at once.
    problems = [p for p in (credentials.check(conf), connect.check(conf)) if p is not None]
    if problems:
        raise ConfigError.all_of(problems)
    program = script.load(conf.init_sql) if command != "verify" else None
    privileges = script.load(settings.privileges_sql())
    login = credentials.resolve(conf, deadline, plan=command == "plan")
    group_roles = conf.group_roles
    names = group_roles.databases(login.dbname)
    where: dict[str, Any] = (
        {"transport": "data-api", "cluster_arn": login.resource_arn}
        if login.transport == "data-api"
        else {"host": login.host, "port": login.port, "sslmode": conf.db_sslmode}
    )
    log.event(
        "start",
        command=command,
        **where,
        dbname=login.dbname,
        user=login.user,
        credentials=login.source,
        iam_users=len(conf.iam_users),
        group_roles=len(group_roles.groups),
        databases=list(names),
    )
    session = Session(login, conf, deadline)
    if len(names) > 1:
        # Before anything commits: every database is there, and the master gets in.
        session.retried(
            "checking the databases GROUP_ROLES names",
            lambda conn: databases.check(conn, names[1:], group_roles.source),
        )
        for name in names[1:]:
            session.retried(f"connecting to database {name}", lambda conn: None, name)
    inputs = transaction.Inputs(
        conf.iam_users,
        login.user,
        conf.prune,
        group_roles.to_json(login.dbname, login.user),
        # The shipped default's groups may have been given LOGIN by hand (a legacy
        # application logging in as one): it only adds, and refuses nothing.
        group_roles.source if group_roles.exact else None,
        group_roles.exact,
    )
    if program is None:
        return _verify(session, names, privileges, inputs, connect_each=connect_each)
    return _apply(session, names, (program, privileges), inputs, commit=command == "apply")


def _verify(
    session: Session,
    names: tuple[str, ...],
    privileges: script.Script,
    inputs: transaction.Inputs,
    *,
    connect_each: bool,
) -> dict[str, Any]:
    login, conf, deadline = session.login, session.conf, session.deadline

    def first(conn: psycopg.Connection[Any]) -> tuple[list[verify.Finding], list[str]]:
        found = verify.findings(conn, conf.iam_users, login.user)
        drift, others = verify.privilege_findings(
            conn, privileges, inputs, deadline, roles_here=True
        )
        return found + drift, others

    found, others = session.retried("connecting and reading the catalog", first)
    for name in _others(names, others):
        found += session.retried(
            f"reading the privileges in database {name}",
            lambda conn: verify.privilege_findings(conn, privileges, inputs, deadline)[0],
            name,
        )
    fields: dict[str, Any] = {"findings": found}
    if connect_each:
        from app.aws import Aws  # noqa: PLC0415 (the AWS SDK loads only for --connect)

        signer = Aws(deadline)
        fields["connections"] = verify.connect_each(
            conf.iam_users,
            login,
            conf,
            lambda user: signer.auth_token(login.host, login.port, user),
        )
    return fields


def _others(names: tuple[str, ...], elsewhere: list[str]) -> list[str]:
    """The databases after DB_NAME: those the document names, in its order, then those
    where a declared group holds privileges the document does not name."""
    return [*names[1:], *(name for name in elsewhere if name not in names)]


def _apply(
    session: Session,
    names: tuple[str, ...],
    scripts: tuple[script.Script, script.Script],
    inputs: transaction.Inputs,
    *,
    commit: bool,
) -> dict[str, Any]:
    """init.sql and privileges.sql in DB_NAME, then privileges.sql in each other
    database, each in its own transaction (see app.job.databases)."""
    attempts = transaction.Attempts(scripts, inputs, session.deadline, commit=commit)
    applied = session.retried("connecting and applying init.sql", attempts)
    changes = ChangeLog()
    for change in session.login.prior_changes:  # enabling IAM auth came first
        changes.add(change)
    changes.extend(applied.changes)
    findings = list(applied.findings)
    done = [session.login.dbname]
    for name in _others(names, applied.elsewhere):
        # With plan nothing was committed, so the roles are made here again, in this
        # database's own rolled-back transaction; only its privileges are reported.
        per_database = transaction.Attempts(
            scripts[1:] if commit else scripts,
            inputs,
            session.deadline,
            commit=commit,
            database_changes_only=True,
        )
        try:
            here = session.retried(f"applying privileges in database {name}", per_database, name)
        except BootstrapError as exc:
            # What the databases before this one committed stays committed: say so.
            exc.details.setdefault("changes", changes)
            exc.details["databases_committed" if commit else "databases_planned"] = done
            raise
        changes.extend(here.changes)
        findings += here.findings
        done.append(name)
    fields: dict[str, Any] = {"changes": changes}
    if findings:
        fields["findings"] = findings
    if applied.confirmed_after_reconnect:
        fields["commit_confirmed_after_reconnect"] = True
    return fields
