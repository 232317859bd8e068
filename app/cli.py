"""aurora-bootstrap [COMMAND]: settings -> credentials -> connection -> transaction ->
report -> exit code."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable, Sequence

from app import log
from app.errors import BootstrapError
from app.report import Result, emit

COMMANDS = {
    "apply": "run init.sql in one transaction under the advisory lock and commit",
    "plan": "the same transaction, rolled back: what apply would change",
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="aurora-bootstrap",
        description="Provision IAM database users on Aurora PostgreSQL. "
        "Settings come from the environment (see README).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, help_text in COMMANDS.items():
        sub.add_parser(name, help=help_text, description=help_text)
    return parser


def _apply_or_plan(command: str, started: float) -> list[dict[str, object]]:
    # Imported here: a configuration error should not pay for loading the driver.
    from app import apply, connect, credentials, retry, script, settings  # noqa: PLC0415
    from app.users import check_master  # noqa: PLC0415

    conf = settings.load()
    log.setup(conf.log_format_resolved, conf.log_level)
    if conf.db_password is not None:
        log.register_secret(conf.db_password.get_secret_value())
    deadline = retry.Deadline(conf.deadline_seconds, started=started)
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


RUNNERS: dict[str, Callable[[str, float], list[dict[str, object]]]] = {
    "apply": _apply_or_plan,
    "plan": _apply_or_plan,
}


def main(argv: Sequence[str] | None = None) -> int:
    started = time.monotonic()
    args = _parser().parse_args(argv)
    command = args.command or "apply"
    log.setup("text" if sys.stderr.isatty() else "json", "INFO")
    result = Result(command=command)
    try:
        result.changes = RUNNERS[command](command, started)
    except BootstrapError as exc:
        result.exit_code = exc.exit_code
        result.error = {"type": exc.kind, "message": log.redact(str(exc))}
        log.event("failed", logging.ERROR, error=exc.kind, detail=str(exc))
    except Exception as exc:  # noqa: BLE001 (any other failure is a bug: exit 1)
        result.exit_code = 1
        result.error = {"type": "internal_error", "message": log.redact(repr(exc))}
        log.LOGGER.exception("internal_error")
    result.duration_ms = round((time.monotonic() - started) * 1000)
    if result.exit_code == 0:
        log.event("done", command=command, changes=len(result.changes))
    emit(result)
    return result.exit_code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
