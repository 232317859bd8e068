"""aurora-bootstrap [COMMAND]: settings -> credentials -> connection -> transaction ->
report -> exit code."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from app import log
from app.errors import BootstrapError, ConfigError, DriftFound
from app.report import Result, emit

if TYPE_CHECKING:
    import psycopg

    from app.retry import Deadline
    from app.settings import Settings

T = TypeVar("T")

COMMANDS = {
    "apply": "run init.sql in one transaction under the advisory lock and commit",
    "plan": "the same transaction, rolled back: what apply would change",
    "verify": "read-only: do the listed users exist as they should? exit 7 on drift",
    "token": "print an IAM auth token for USER on the configured endpoint",
    "policy": "print the IAM policy that allows rds-db:connect for the listed users",
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="aurora-bootstrap",
        description="Provision IAM database users on Aurora PostgreSQL. "
        "Settings come from the environment (see README).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, help_text in COMMANDS.items():
        command = sub.add_parser(name, help=help_text, description=help_text)
        if name == "token":
            command.add_argument("user", metavar="USER", help="database user to sign in as")
        if name == "verify":
            command.add_argument(
                "--connect",
                action="store_true",
                help="also log in as each user with a fresh IAM token (needs AWS)",
            )
    return parser


def _configure(started: float) -> tuple[Settings, Deadline]:
    # Imported here: --help and argument errors should not pay for pydantic.
    from app import retry, settings  # noqa: PLC0415

    conf = settings.load()
    log.setup(conf.log_format_resolved, conf.log_level)
    if conf.db_password is not None:
        log.register_secret(conf.db_password.get_secret_value())
    return conf, retry.Deadline(conf.deadline_seconds, started=started)


def _database_command(args: argparse.Namespace, started: float) -> dict[str, Any]:
    """apply, plan and verify: log in as the master user and work in one transaction.
    Returns the fields of the result line."""
    from app import apply, connect, credentials, retry, script, verify  # noqa: PLC0415
    from app.users import check_master  # noqa: PLC0415

    command = args.command or "apply"
    conf, deadline = _configure(started)
    program = script.load(conf.init_sql) if command != "verify" else None
    connect.check(conf)
    login = credentials.resolve(conf, deadline)
    check_master(conf.iam_users, login.user)
    log.event(
        "start",
        command=command,
        host=login.host,
        port=login.port,
        dbname=login.dbname,
        user=login.user,
        credentials=login.source,
        sslmode=conf.db_sslmode,
        iam_users=len(conf.iam_users),
    )

    def with_retries(what: str, work: Callable[[psycopg.Connection[Any]], T]) -> T:
        def attempt() -> T:
            with connect.connect(login, conf, deadline) as conn:
                return work(conn)

        return retry.run(
            attempt,
            what=what,
            deadline=deadline,
            transient=connect.is_transient,
            describe=connect.describe,
        )

    if program is None:
        fields: dict[str, Any] = {
            "findings": with_retries(
                "connecting and reading the catalog",
                lambda conn: verify.findings(conn, conf.iam_users),
            )
        }
        if args.connect:
            from app import aws  # noqa: PLC0415

            signer = aws.Aws(deadline)
            fields["connections"] = verify.connect_each(
                conf.iam_users,
                login,
                conf,
                lambda user: signer.auth_token(login.host, login.port, user),
            )
        return fields
    inputs = apply.Inputs(conf.iam_users, login.user, conf.prune)
    commit = command == "apply"
    return {
        "changes": with_retries(
            "connecting and applying init.sql",
            lambda conn: apply.transaction(conn, program, inputs, deadline, commit=commit),
        )
    }


def _token(args: argparse.Namespace, started: float) -> str:
    from app import aws  # noqa: PLC0415
    from app.users import NAME_RE, NAME_RULE  # noqa: PLC0415

    if not NAME_RE.fullmatch(args.user):
        raise ConfigError("USER", f"{args.user!r} {NAME_RULE}")
    conf, deadline = _configure(started)
    return aws.auth_token(conf, deadline, args.user)


def _policy(args: argparse.Namespace, started: float) -> str:
    from app import aws  # noqa: PLC0415

    conf, deadline = _configure(started)
    return json.dumps(aws.connect_policy(conf, deadline), indent=2)


PRINTERS: dict[str, Callable[[argparse.Namespace, float], str]] = {
    "token": _token,
    "policy": _policy,
}


def _guarded(fn: Callable[[], T]) -> tuple[T | None, int, dict[str, str] | None]:
    """Run a command: its value, its exit code, and what went wrong if it failed."""
    try:
        return fn(), 0, None
    except BootstrapError as exc:
        log.event("failed", logging.ERROR, error=exc.kind, detail=str(exc))
        return None, exc.exit_code, {"type": exc.kind, "message": log.redact(str(exc))}
    except Exception as exc:  # noqa: BLE001 (any other failure is a bug: exit 1)
        log.LOGGER.exception("internal_error")
        return None, 1, {"type": "internal_error", "message": log.redact(repr(exc))}


def main(argv: Sequence[str] | None = None) -> int:
    started = time.monotonic()
    args = _parser().parse_args(argv)
    command = args.command or "apply"
    log.setup("text" if sys.stderr.isatty() else "json", "INFO")
    if command in PRINTERS:
        # token and policy: their output alone on stdout; failures only on stderr.
        text, code, _error = _guarded(lambda: PRINTERS[command](args, started))
        if text is not None:
            sys.stdout.write(text + "\n")
        return code
    fields, code, error = _guarded(lambda: _database_command(args, started))
    fields = fields or {}
    drift = [
        f
        for f in fields.get("findings", []) + fields.get("connections", [])
        if f.get("ok") is not True
    ]
    if code == 0 and drift:
        code = DriftFound.exit_code
        error = {"type": DriftFound.kind, "message": f"{len(drift)} findings: see findings"}
        log.event("drift", logging.WARNING, findings=len(drift))
    if code == 0:
        log.event("done", command=command, changes=len(fields.get("changes", [])))
    emit(
        Result(
            command=command,
            exit_code=code,
            changes=fields.get("changes", []),
            duration_ms=round((time.monotonic() - started) * 1000),
            error=error,
            findings=fields.get("findings"),
            connections=fields.get("connections"),
        )
    )
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
