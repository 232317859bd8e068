"""aurora-bootstrap [COMMAND]: the parser, the table of commands, main, and the one
writer of the result line.

Each command is a function of a module of its wing, imported only when that command
runs (`_entry`, the one place that imports a wing), so that --help and argument
errors pay for no wing, and a local run with DB_PASSWORD never loads the AWS SDK.
A new command is a module and a row here.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from app import interrupt, log, report
from app.errors import BootstrapError
from app.outcome import Outcome, Run, guarded, verdict
from app.version import version


@dataclass(frozen=True)
class Command:
    help: str
    entry: str  # module:function, called with (args, run)
    # What it prints: one result line (JSON), its own output alone, or nothing (a
    # server, until SIGTERM).
    output: Literal["result", "printed", "server"] = "result"
    arguments: str | None = None  # module:function adding its arguments to its parser


COMMANDS = {
    "apply": Command(
        "run init.sql in one transaction under the advisory lock and commit", "app.job.run:apply"
    ),
    "plan": Command(
        "the same transaction, rolled back: what apply would change", "app.job.run:plan"
    ),
    "verify": Command(
        "read-only: do the listed users exist as they should? exit 7 on drift",
        "app.job.run:verify_command",
        arguments="app.job.run:verify_arguments",
    ),
    "token": Command(
        "print an IAM auth token for USER on the configured endpoint",
        "app.login.token:token",
        "printed",
        arguments="app.login.token:token_arguments",
    ),
    "policy": Command(
        "print the IAM policy that allows rds-db:connect for the listed users",
        "app.login.token:policy",
        "printed",
    ),
    "sql": Command(
        "print the bootstrap of DB_NAME as one plain SQL file, its settings bound as "
        "literals, for a migration tool or psql (no connection, no AWS)",
        "app.job.migration:command",
        "printed",
    ),
    "ecs-run": Command(
        "run this job as an ECS task, stream its logs, exit with its container's code",
        "app.launch.ecs:command",
        arguments="app.launch.ecs:arguments",
    ),
    "fleet-run": Command(
        "run the fleet state machine over a targets file (one bootstrap task per "
        "cluster), follow it, one result row per target",
        "app.launch.fleet:command",
        arguments="app.launch.fleet:arguments",
    ),
    "iam-auth-server": Command(
        "local stand-in for Aurora's IAM token check, for PostgreSQL's ldap auth "
        "(IAM_AUTH_LISTEN, IAM_AUTH_ENDPOINT, IAM_AUTH_KEYS, AWS_REGION); runs until SIGTERM",
        "app.iamauth.server:command",
        "server",
    ),
    "custom-resource": Command(
        "the worker of Custom::AuroraBootstrap: apply the request in CFN_REQUEST "
        "(Create, Update; Delete changes nothing) and answer CloudFormation",
        "app.cfn.worker:command",
    ),
}


def _entry(target: str) -> Callable[..., Any]:
    """module:function, imported now: the one place the command line loads a wing."""
    module, _, function = target.partition(":")
    found: Callable[..., Any] = getattr(importlib.import_module(module), function)
    return found


def docs() -> str:
    """Where the contract (commands, settings, exit codes, output) can be read here:
    the reference page installed with the package, else the source tree's."""
    here = Path(__file__).resolve().parent
    for page in (here / "docs" / "reference.md", here.parent / "docs" / "reference.md"):
        if page.is_file():
            return str(page)
    return "the aurora-bootstrap documentation (docs/reference.md)"


def _parser(chosen: str | None) -> argparse.ArgumentParser:
    """The parser; only the chosen command's own arguments are added (and so only its
    module imported)."""
    parser = argparse.ArgumentParser(
        prog="aurora-bootstrap",
        usage="aurora-bootstrap [-h] [--version] [COMMAND] [ARGS ...]",
        description="Provision IAM database users on Aurora PostgreSQL.\n"
        "Settings come from the environment. No COMMAND means apply.",
        # The path on a line of its own, never wrapped: it is there to be copied.
        epilog=f"Settings, exit codes and output are documented in\n  {docs()}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"aurora-bootstrap {version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, command in COMMANDS.items():
        own = sub.add_parser(name, help=command.help, description=command.help)
        if name == chosen and command.arguments is not None:
            _entry(command.arguments)(own)
    return parser


def _chosen(argv: Sequence[str]) -> str | None:
    return next((word for word in argv if not word.startswith("-")), None)


# Held by whoever writes the run's result line: the main thread, or a hard stop.
_finishing = threading.Lock()


def _finish(run: Run, ended: Outcome, fields: dict[str, Any], *, blocking: bool = True) -> bool:
    """What must come first (custom-resource's answer), then the result line; only the
    first caller writes it, and says so."""
    if not _finishing.acquire(blocking=blocking):
        return False
    if run.before_result is not None:
        run.before_result(ended, fields)
    if ended.exit_code == 0:
        log.event("done", command=run.command, changes=len(fields.get("changes", [])))
    report.emit(
        report.Result(
            command=run.command,
            version=version(),
            exit_code=ended.exit_code,
            changes=fields.pop("changes", []),
            duration_ms=round((time.monotonic() - run.started) * 1000),
            error=ended.error,
            details=fields,
        )
    )
    return True


def main(argv: Sequence[str] | None = None) -> int:
    started = time.monotonic()
    words = list(sys.argv[1:] if argv is None else argv)
    args = _parser(_chosen(words)).parse_args(words)
    name = args.command or "apply"
    command = COMMANDS[name]
    log.setup("text" if sys.stderr.isatty() else "json", "INFO")
    run = Run(name, started)
    work = _entry(command.entry)
    if command.output == "server":
        # No result line; a bad setting is logged and exits 2 as anywhere.
        return guarded(lambda: work(args, run)).exit_code

    def hard_stop(error: BootstrapError) -> bool:
        # Cleanup after a stop signal hung (a dead network): report and go, unless
        # the run has begun reporting its end itself.
        log.event("hard_stop", logging.ERROR, error=error.kind, detail=str(error))
        if command.output != "result":
            return True
        failed = Outcome.failed(error)
        finished = _finish(run, failed, dict(error.details), blocking=False)
        if finished and failed.exit_code != error.exit_code:
            os._exit(failed.exit_code)  # an answer that could not be delivered (11)
        return finished

    interrupt.on_hard_stop(hard_stop)
    ended = guarded(lambda: work(args, run))
    if command.output == "printed":
        # token and policy: their output alone on stdout; failures only on stderr.
        if ended.value is not None:
            sys.stdout.write(ended.value + "\n")
        return ended.exit_code
    fields = ended.value if ended.value is not None else ended.details
    if ended.exit_code == 0:
        found = verdict(name, fields)
        ended.exit_code, ended.error = found.exit_code, found.error
    _finish(run, ended, fields)
    return ended.exit_code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
