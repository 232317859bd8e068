"""aurora-bootstrap [COMMAND]: settings -> credentials -> connection -> transaction ->
report -> exit code."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, TypeVar

from app import log
from app.errors import BootstrapError, ConfigError
from app.report import Result, emit

if TYPE_CHECKING:
    from app.retry import Deadline
    from app.settings import Settings

T = TypeVar("T")

COMMANDS = {
    "apply": "run init.sql in one transaction under the advisory lock and commit",
    "plan": "the same transaction, rolled back: what apply would change",
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
    return parser


def _configure(started: float) -> tuple[Settings, Deadline]:
    # Imported here: --help and argument errors should not pay for pydantic.
    from app import retry, settings  # noqa: PLC0415

    conf = settings.load()
    log.setup(conf.log_format_resolved, conf.log_level)
    if conf.db_password is not None:
        log.register_secret(conf.db_password.get_secret_value())
    return conf, retry.Deadline(conf.deadline_seconds, started=started)


def _apply_or_plan(command: str, started: float) -> list[dict[str, object]]:
    from app import apply, connect, credentials, retry, script  # noqa: PLC0415
    from app.users import check_master  # noqa: PLC0415

    conf, deadline = _configure(started)
    program = script.load(conf.init_sql)
    connect.check(conf)
    login = credentials.resolve(conf, deadline)
    check_master(conf.iam_users, login.user)
    inputs = apply.Inputs(conf.iam_users, login.user, conf.prune)
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
        init_sql=str(program.path),
    )

    def attempt() -> list[dict[str, object]]:
        with connect.connect(login, conf, deadline) as conn:
            return apply.transaction(conn, program, inputs, deadline, commit=command == "apply")

    return retry.run(
        attempt,
        what="connecting and applying init.sql",
        deadline=deadline,
        transient=connect.is_transient,
        describe=connect.describe,
    )


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
    changes, code, error = _guarded(lambda: _apply_or_plan(command, started))
    if code == 0:
        log.event("done", command=command, changes=len(changes or []))
    emit(
        Result(
            command=command,
            exit_code=code,
            changes=changes or [],
            duration_ms=round((time.monotonic() - started) * 1000),
            error=error,
        )
    )
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
