"""aurora-bootstrap [COMMAND]: settings -> credentials -> connection -> transaction ->
report -> exit code."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from app import interrupt, log
from app.errors import BootstrapError, ConfigError, DriftFound
from app.report import Result, emit

if TYPE_CHECKING:
    import psycopg

    from app.apply import Inputs
    from app.cfnrequest import Request
    from app.login import MasterLogin
    from app.retry import Deadline
    from app.script import Script
    from app.settings import Settings

T = TypeVar("T")

COMMANDS = {
    "apply": "run init.sql in one transaction under the advisory lock and commit",
    "plan": "the same transaction, rolled back: what apply would change",
    "verify": "read-only: do the listed users exist as they should? exit 7 on drift",
    "token": "print an IAM auth token for USER on the configured endpoint",
    "policy": "print the IAM policy that allows rds-db:connect for the listed users",
    "ecs-run": "run this job as an ECS task, stream its logs, exit with its container's code",
    "fleet-run": "run the fleet state machine over a targets file (one bootstrap task per "
    "cluster), follow it, one result row per target",
    "iam-auth-server": "local stand-in for Aurora's IAM token check, for PostgreSQL's ldap "
    "auth (IAM_AUTH_LISTEN, IAM_AUTH_ENDPOINT, IAM_AUTH_KEYS, AWS_REGION); runs until SIGTERM",
    "custom-resource": "the worker of Custom::AuroraBootstrap: apply the request in "
    "CFN_REQUEST (Create, Update; Delete changes nothing) and answer CloudFormation",
}


def version() -> str:
    """The installed package's version, as pip and the image know it."""
    from importlib.metadata import PackageNotFoundError  # noqa: PLC0415
    from importlib.metadata import version as installed  # noqa: PLC0415

    try:
        return installed("aurora-bootstrap")
    except PackageNotFoundError:
        return "unknown (not installed)"


def docs() -> str:
    """Where the full contract (settings, exit codes, output) can be read here."""
    here = Path(__file__).resolve().parent
    for readme in (here / "README.md", here.parent / "README.md"):
        if readme.is_file():
            return str(readme)
    return "the README of the aurora-bootstrap package"


def _parser() -> argparse.ArgumentParser:
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
    for name, help_text in COMMANDS.items():
        command = sub.add_parser(name, help=help_text, description=help_text)
        if name == "token":
            command.add_argument("user", metavar="USER", help="database user to sign in as")
        if name == "ecs-run":
            _ecs_flags(command)
        if name == "fleet-run":
            _fleet_flags(command)
        if name == "verify":
            command.add_argument(
                "--connect",
                action="store_true",
                help="also log in as each user with a fresh IAM token (needs AWS)",
            )
    return parser


def _ecs_flags(parser: argparse.ArgumentParser) -> None:
    """Each flag overrides the ECS_* variable of the same name."""
    flag = parser.add_argument
    flag("--cluster", help="ECS cluster (ECS_CLUSTER)")
    flag("--task-definition", help="family, family:revision or ARN (ECS_TASK_DEFINITION)")
    flag("--subnets", help="comma-separated subnet ids, for awsvpc (ECS_SUBNETS)")
    flag("--security-groups", help="comma-separated security group ids (ECS_SECURITY_GROUPS)")
    flag(
        "--assign-public-ip",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="public IP for the task (ECS_ASSIGN_PUBLIC_IP)",
    )
    flag("--launch-type", help="FARGATE (default), EC2 or EXTERNAL (ECS_LAUNCH_TYPE)")
    flag("--capacity-provider", help="instead of a launch type (ECS_CAPACITY_PROVIDER)")
    flag("--container", help="container to follow; default the essential one (ECS_CONTAINER)")
    flag("--deadline", type=float, help="seconds to wait in all (ECS_DEADLINE_SECONDS, 1800)")
    flag(
        "--poll-seconds", type=float, help="seconds between looks at the task (ECS_POLL_SECONDS, 5)"
    )
    flag(
        "--log-grace",
        type=float,
        help="seconds to wait for the job's result line after the task stopped "
        "(ECS_LOG_GRACE_SECONDS, 15)",
    )
    flag(
        "--env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="environment override for the container; repeatable (no variable)",
    )


def _fleet_flags(parser: argparse.ArgumentParser) -> None:
    """Each flag overrides the FLEET_* variable of the same name."""
    flag = parser.add_argument
    flag("--state-machine", help="the fleet state machine's ARN (FLEET_STATE_MACHINE_ARN)")
    flag("--targets", help="targets file, JSON or YAML (FLEET_TARGETS)")
    flag("--max-concurrency", type=int, help="targets at once (FLEET_MAX_CONCURRENCY; stack's)")
    flag(
        "--tolerated-failures",
        type=int,
        help="failed targets before the execution fails (FLEET_TOLERATED_FAILURES; stack's)",
    )
    flag("--deadline", type=float, help="seconds to wait in all (FLEET_DEADLINE_SECONDS, 3600)")
    flag("--poll-seconds", type=float, help="seconds between looks (FLEET_POLL_SECONDS, 10)")


def _configure(started: float, *, answering: bool = False) -> tuple[Settings, Deadline]:
    """The settings, and the run's deadline (which ends early by the time an answer to
    CloudFormation is given, when `answering`)."""
    # Imported here: --help and argument errors should not pay for pydantic.
    from app import retry, settings  # noqa: PLC0415

    conf = settings.load()
    log.setup(conf.log_format_resolved, conf.log_level)
    if conf.db_password is not None:
        log.register_secret(conf.db_password.get_secret_value())
    reserved = 0.0
    if answering:
        from app import cfnresponse  # noqa: PLC0415

        reserved = cfnresponse.reserve(conf.deadline_seconds)
    deadline = retry.Deadline(conf.deadline_seconds, started=started, reserved=reserved)
    deadline.arm()
    return conf, deadline


class _Session:
    """The master login, and each database of the cluster reached with it, under the
    run's deadline and retry policy."""

    def __init__(self, login: MasterLogin, conf: Settings, deadline: Deadline) -> None:
        self.login, self.conf, self.deadline = login, conf, deadline

    def retried(
        self, what: str, work: Callable[[psycopg.Connection[Any]], T], dbname: str | None = None
    ) -> T:
        from app import connect, databases, retry  # noqa: PLC0415

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


def _database_command(
    args: argparse.Namespace, started: float, *, answering: bool = False
) -> dict[str, Any]:
    """apply, plan and verify: log in as the master user and work in one transaction
    per database. Returns the fields of the result line."""
    from app import apply, connect, credentials, databases, script  # noqa: PLC0415
    from app.settings import privileges_sql  # noqa: PLC0415
    from app.users import check_master  # noqa: PLC0415

    command = args.command or "apply"
    conf, deadline = _configure(started, answering=answering)
    # Where to log in first, then how: every problem found here is reported at once.
    problems = [p for p in (credentials.check(conf), connect.check(conf)) if p is not None]
    if problems:
        raise ConfigError.all_of(problems)
    program = script.load(conf.init_sql) if command != "verify" else None
    privileges = script.load(privileges_sql())
    login = credentials.resolve(conf, deadline, plan=command == "plan")
    check_master(conf.iam_users, login.user)
    group_roles = conf.group_roles
    group_roles.check(conf.iam_users, login.user)
    names = group_roles.databases(login.dbname)
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
        group_roles=len(group_roles.groups),
        databases=list(names),
    )
    session = _Session(login, conf, deadline)
    if len(names) > 1:
        # Before anything commits: every database is there, and the master gets in.
        session.retried(
            "checking the databases GROUP_ROLES names",
            lambda conn: databases.check(conn, names[1:], group_roles.source),
        )
        for name in names[1:]:
            session.retried(f"connecting to database {name}", lambda conn: None, name)
    inputs = apply.Inputs(
        conf.iam_users, login.user, conf.prune, group_roles.to_json(login.dbname, login.user)
    )
    if program is None:
        return _verify(args, session, names, privileges, inputs)
    return _apply(session, names, (program, privileges), inputs, commit=command == "apply")


def _verify(
    args: argparse.Namespace,
    session: _Session,
    names: tuple[str, ...],
    privileges: Script,
    inputs: Inputs,
) -> dict[str, Any]:
    from app import verify  # noqa: PLC0415

    login, conf, deadline = session.login, session.conf, session.deadline
    found = session.retried(
        "connecting and reading the catalog",
        lambda conn: (
            verify.findings(conn, conf.iam_users, login.user)
            + verify.privilege_findings(conn, privileges, inputs, deadline)
        ),
    )
    for name in names[1:]:
        found += session.retried(
            f"reading the privileges in database {name}",
            lambda conn: verify.privilege_findings(conn, privileges, inputs, deadline),
            name,
        )
    fields: dict[str, Any] = {"findings": found}
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


def _apply(
    session: _Session,
    names: tuple[str, ...],
    scripts: tuple[Script, Script],
    inputs: Inputs,
    *,
    commit: bool,
) -> dict[str, Any]:
    """init.sql and privileges.sql in DB_NAME, then privileges.sql in each other
    database, each in its own transaction (see app.databases)."""
    from app import apply  # noqa: PLC0415
    from app.changelog import ChangeLog  # noqa: PLC0415

    attempts = apply.Attempts(scripts, inputs, session.deadline, commit=commit)
    applied = session.retried("connecting and applying init.sql", attempts)
    changes = ChangeLog()
    for change in session.login.prior_changes:  # enabling IAM auth came first
        changes.add(change)
    changes.extend(applied.changes)
    findings = list(applied.findings)
    done = [session.login.dbname]
    for name in names[1:]:
        # With plan nothing was committed, so the roles are made here again, in this
        # database's own rolled-back transaction; only its privileges are reported.
        per_database = apply.Attempts(
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


def _custom_resource(request: Request, started: float) -> dict[str, Any]:
    """Create and Update apply with the request's properties over the settings; Delete
    changes nothing (users are never dropped) and needs no setting at all, so that a
    stack can always be deleted."""
    from app import cfnrequest  # noqa: PLC0415

    if request.request_type == "Delete":
        log.event("delete", detail="users are never dropped: nothing to change")
        return {}
    overridden = cfnrequest.overrides(request)
    os.environ.update(overridden)
    try:
        return _database_command(argparse.Namespace(command="apply"), started, answering=True)
    except ConfigError as exc:
        raise cfnrequest.name_property(exc, overridden) from None


def _answer(request: Request, started: float, run: Outcome[Any], fields: dict[str, Any]) -> None:
    """Answer CloudFormation with the run's outcome; a failure to deliver it becomes
    the run's outcome (the launcher then answers FAILED from outside the VPC)."""
    from app import cfnresponse  # noqa: PLC0415
    from app.errors import ResponseNotDelivered  # noqa: PLC0415

    changes = len(fields.get("changes", []))
    if run.exit_code == 0:
        status = "SUCCESS"
        reason = (
            "Delete changes nothing: users are never dropped"
            if request.request_type == "Delete"
            else f"applied: {changes} changes"
        )
    else:
        error = run.error or {"type": "internal_error", "message": "no error recorded"}
        status, reason = "FAILED", f"{error['type']} (exit {run.exit_code}): {error['message']}"
    seconds = cfnresponse.budget(started, stopped=run.exit_code in (130, 143))
    data = {"Changes": str(changes), "Version": version()}
    fields["request_type"] = request.request_type
    try:
        fields["response"] = cfnresponse.answer(request, status, reason, data, seconds)
    except ResponseNotDelivered as exc:
        log.event("failed", logging.ERROR, error=exc.kind, detail=str(exc))
        fields["response"] = {"status": status, "delivered": False, **exc.details}
        if run.error is not None:
            fields["run_error"] = run.error
        run.exit_code = exc.exit_code
        run.error = {"type": exc.kind, "message": log.redact(str(exc))}


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


def _ecs_run(args: argparse.Namespace, started: float) -> dict[str, Any]:
    from app import ecs, retry  # noqa: PLC0415

    environment = ecs.parse_env_overrides(args.env)
    conf = ecs.load_settings(
        {
            "ECS_CLUSTER": args.cluster,
            "ECS_TASK_DEFINITION": args.task_definition,
            "ECS_SUBNETS": args.subnets,
            "ECS_SECURITY_GROUPS": args.security_groups,
            "ECS_ASSIGN_PUBLIC_IP": args.assign_public_ip,
            "ECS_LAUNCH_TYPE": args.launch_type,
            "ECS_CAPACITY_PROVIDER": args.capacity_provider,
            "ECS_CONTAINER": args.container,
            "ECS_DEADLINE_SECONDS": args.deadline,
            "ECS_POLL_SECONDS": args.poll_seconds,
            "ECS_LOG_GRACE_SECONDS": args.log_grace,
        }
    )
    for pair in environment:
        if "PASSWORD" in pair["name"] or "SECRET" in pair["name"]:
            log.register_secret(pair["value"])
    deadline = retry.Deadline(
        conf.deadline_seconds, started=started, setting="ECS_DEADLINE_SECONDS"
    )
    return ecs.run(conf, environment, deadline)


def _fleet_run(args: argparse.Namespace, started: float) -> dict[str, Any]:
    from app import fleet, retry  # noqa: PLC0415

    conf = fleet.load_settings(
        {
            "FLEET_STATE_MACHINE_ARN": args.state_machine,
            "FLEET_TARGETS": args.targets,
            "FLEET_MAX_CONCURRENCY": args.max_concurrency,
            "FLEET_TOLERATED_FAILURES": args.tolerated_failures,
            "FLEET_DEADLINE_SECONDS": args.deadline,
            "FLEET_POLL_SECONDS": args.poll_seconds,
        }
    )
    deadline = retry.Deadline(
        conf.deadline_seconds, started=started, setting="FLEET_DEADLINE_SECONDS"
    )
    return fleet.run(conf, deadline)


REPORTED: dict[str, Callable[[argparse.Namespace, float], dict[str, Any]]] = {
    "apply": _database_command,
    "plan": _database_command,
    "verify": _database_command,
    "ecs-run": _ecs_run,
    "fleet-run": _fleet_run,
}
# Commands that end with a result line on stdout (custom-resource's work is in main:
# a hard stop must know its request).
RESULT_LINE = {*REPORTED, "custom-resource"}

PRINTERS: dict[str, Callable[[argparse.Namespace, float], str]] = {
    "token": _token,
    "policy": _policy,
}


@dataclass
class Outcome(Generic[T]):
    value: T | None = None
    exit_code: int = 0
    error: dict[str, str] | None = None
    details: dict[str, Any] = field(default_factory=dict)


def _guarded(fn: Callable[[], T]) -> Outcome[T]:
    """Run a command: its value, or its exit code and what went wrong. From its end
    on, nothing interrupts: what it returns is reported, and exited with."""
    try:
        interrupt.release()  # a stop signal that came while starting ends it here
        value = fn()
        interrupt.quiet()
        return Outcome(value)
    except (BootstrapError, interrupt.Interrupt) as caught:
        interrupt.quiet()
        exc = caught.error if isinstance(caught, interrupt.Interrupt) else caught
        log.event("failed", logging.ERROR, error=exc.kind, detail=str(exc))
        error = {"type": exc.kind, "message": log.redact(str(exc))}
        return Outcome(None, exc.exit_code, error, exc.details)
    except Exception as exc:  # noqa: BLE001 (any other failure is a bug: exit 1)
        interrupt.quiet()
        log.LOGGER.exception("internal_error")
        return Outcome(None, 1, {"type": "internal_error", "message": log.redact(repr(exc))})


def _verdict(command: str, fields: dict[str, Any]) -> Outcome[None]:
    """Exit codes that come from what a command found, not from an error."""
    if command == "verify":
        # Warnings (what the master may not act on) are findings, not drift.
        drift = sum(f.get("level") != "warning" for f in fields.get("findings", [])) + sum(
            not c["ok"] for c in fields.get("connections", [])
        )
        if drift:
            log.event("drift", logging.WARNING, findings=drift)
            return Outcome(
                None,
                DriftFound.exit_code,
                {"type": DriftFound.kind, "message": f"{drift} findings of drift"},
            )
    if command == "ecs-run" and fields.get("container_exit_code"):
        code = int(fields["container_exit_code"])
        message = str(fields.get("stopped_how") or f"container exited with {code}")
        return Outcome(None, code, {"type": "task_failed", "message": message})
    return Outcome(None)


def _result(command: str, started: float, run: Outcome[Any], fields: dict[str, Any]) -> Result:
    return Result(
        command=command,
        version=version(),
        exit_code=run.exit_code,
        changes=fields.pop("changes", []),
        duration_ms=round((time.monotonic() - started) * 1000),
        error=run.error,
        details=fields,
    )


# Held by whoever reports the run's end: the main thread, or a hard stop.
_finishing = threading.Lock()


def _finish(
    command: str,
    started: float,
    run: Outcome[Any],
    fields: dict[str, Any],
    request: Request | None,
    *,
    blocking: bool = True,
) -> bool:
    """Answer CloudFormation (custom-resource), then write the result line; only the
    first caller does, and says so."""
    if not _finishing.acquire(blocking=blocking):
        return False
    if request is not None:
        _answer(request, started, run, fields)
    if run.exit_code == 0:
        log.event("done", command=command, changes=len(fields.get("changes", [])))
    emit(_result(command, started, run, fields))
    return True


def _read_request() -> Request:
    from app import cfnrequest  # noqa: PLC0415

    request = cfnrequest.parse(os.environ.get(cfnrequest.SETTING))
    # Whoever holds the pre-signed URL can answer for the resource: never logged.
    log.register_secret(request.response_signature)
    log.event(
        "request",
        request_type=request.request_type,
        logical_resource_id=request.logical_resource_id,
        physical_resource_id=request.resource_id,
        properties=sorted(request.properties),
    )
    return request


def main(argv: Sequence[str] | None = None) -> int:
    started = time.monotonic()
    args = _parser().parse_args(argv)
    command = args.command or "apply"
    log.setup("text" if sys.stderr.isatty() else "json", "INFO")
    request: Request | None = None

    def hard_stop(error: BootstrapError) -> bool:
        # Cleanup after a stop signal hung (a dead network): report and go, unless
        # the run has begun reporting its end itself.
        log.event("hard_stop", logging.ERROR, error=error.kind, detail=str(error))
        if command not in RESULT_LINE:
            return True
        failed = Outcome[Any](None, error.exit_code, {"type": error.kind, "message": str(error)})
        finished = _finish(command, started, failed, dict(error.details), request, blocking=False)
        if finished and failed.exit_code != error.exit_code:
            os._exit(failed.exit_code)  # an answer that could not be delivered (11)
        return finished

    if command == "iam-auth-server":
        from app import iamauthserver  # noqa: PLC0415

        # A server: no result line; a bad setting is logged and exits 2 as anywhere.
        return _guarded(iamauthserver.main).exit_code
    interrupt.on_hard_stop(hard_stop)
    if command in PRINTERS:
        # token and policy: their output alone on stdout; failures only on stderr.
        printed = _guarded(lambda: PRINTERS[command](args, started))
        if printed.value is not None:
            sys.stdout.write(printed.value + "\n")
        return printed.exit_code

    def custom_resource(args: argparse.Namespace, started: float) -> dict[str, Any]:
        # Without a readable request there is nowhere to answer: the result line alone.
        nonlocal request
        request = _read_request()
        return _custom_resource(request, started)

    work = custom_resource if command == "custom-resource" else REPORTED[command]
    run = _guarded(lambda: work(args, started))
    fields = run.value if run.value is not None else run.details
    if run.exit_code == 0:
        verdict = _verdict(command, fields)
        run.exit_code, run.error = verdict.exit_code, verdict.error
    _finish(command, started, run, fields, request)
    return run.exit_code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
