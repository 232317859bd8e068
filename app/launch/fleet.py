"""fleet-run: one bootstrap task per cluster, fanned out by the fleet state machine.

Step Functions does the scheduling (deploy/fleet.yaml, deploy/fleet.asl.json: a Map
state of ecs:runTask.sync with a concurrency limit); this starts an execution with the
targets, follows it, logs a line per target as each finishes, and returns one row per
target. The execution's name is derived from the input and a token of this
invocation, so a retried StartExecution (a lost reply) never starts a second fleet
run, while running the same fleet again later does.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import logging
import re
import time
import uuid
from pathlib import Path
from typing import Any

import botocore.exceptions as bx
import yaml
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from app import log
from app.aws import Aws, NotReady
from app.errors import ConfigError, DeadlineExceeded, FleetFailed
from app.inputs import flags
from app.launch.ecs import MAX_OVERRIDES_CHARACTERS, overrides_size
from app.outcome import Run
from app.retry import Deadline

SETTING = "FLEET_TARGETS"
# Step Functions' limit on an execution's input (and on any state's payload), as AWS
# documents it (RunTask's on a task's overrides is ecs.MAX_OVERRIDES_CHARACTERS).
MAX_INPUT_BYTES = 256 * 1024
# DescribeExecution may not find an execution yet this long after StartExecution.
EVENTUAL_CONSISTENCY_SECONDS = 30.0
_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,80}$")
_FIELDS = {
    "name",
    "ecs_cluster",
    "task_definition",
    "subnets",
    "security_groups",
    "container",
    "environment",
}


class FleetSettings(BaseSettings):
    """FLEET_* variables; each may be given as a flag of the same name instead."""

    model_config = SettingsConfigDict(case_sensitive=True, extra="ignore", frozen=True)

    state_machine_arn: str = Field(
        alias="FLEET_STATE_MACHINE_ARN",
        min_length=1,
        description="the fleet state machine's ARN",
        json_schema_extra=flags.flag("state-machine"),
    )
    targets: Path = Field(
        alias=SETTING,
        description="targets file, JSON or YAML",
        json_schema_extra=flags.flag("targets"),
    )
    max_concurrency: int | None = Field(
        None,
        alias="FLEET_MAX_CONCURRENCY",
        ge=1,
        le=40,
        description="targets at once; default the stack's",
        json_schema_extra=flags.flag("max-concurrency"),
    )
    tolerated_failures: int | None = Field(
        None,
        alias="FLEET_TOLERATED_FAILURES",
        ge=0,
        description="failed targets before the execution fails; default the stack's",
        json_schema_extra=flags.flag("tolerated-failures"),
    )
    deadline_seconds: float = Field(
        3600.0,
        alias="FLEET_DEADLINE_SECONDS",
        gt=0,
        le=86400,
        allow_inf_nan=False,
        description="seconds to wait in all",
        json_schema_extra=flags.flag("deadline"),
    )
    poll_seconds: float = Field(
        10.0,
        alias="FLEET_POLL_SECONDS",
        gt=0,
        le=300,
        description="seconds between looks",
        json_schema_extra=flags.flag("poll-seconds"),
    )


def arguments(parser: argparse.ArgumentParser) -> None:
    """Each flag overrides the FLEET_* variable it names."""
    flags.add_flags(parser, FleetSettings)


def command(args: argparse.Namespace, run: Run) -> dict[str, Any]:
    """fleet-run: the settings from the environment and the flags, then the execution."""
    conf = flags.load(FleetSettings, args)
    deadline = Deadline(
        conf.deadline_seconds, started=run.started, setting="FLEET_DEADLINE_SECONDS"
    )
    return run_fleet(conf, deadline)


def _fail(path: Path, position: int, name: object, problem: str) -> ConfigError:
    return ConfigError(SETTING, f"{path}: target {position} {name!r}: {problem}")


def _strings(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) and v for v in value)


def _target(path: Path, position: int, raw: object, defaults: dict[str, Any]) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise _fail(path, position, raw, "must be a mapping")
    unknown = sorted(set(raw) - _FIELDS)
    if unknown:
        raise _fail(path, position, raw.get("name"), f"unknown keys {unknown}")
    merged = {"container": "bootstrap", **defaults, **raw}
    merged["environment"] = {**defaults.get("environment", {}), **raw.get("environment", {})}
    name = merged.get("name")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise _fail(path, position, name, "name must be 1-80 letters, digits, '.', '_' or '-'")
    for key in ("ecs_cluster", "task_definition", "container"):
        if not isinstance(merged.get(key), str) or not merged[key]:
            raise _fail(path, position, name, f"{key} must be a non-empty string")
    if not _strings(merged.get("subnets")) or not merged["subnets"]:
        raise _fail(path, position, name, "subnets must be a non-empty list of subnet ids")
    if not _strings(merged.setdefault("security_groups", [])):
        raise _fail(path, position, name, "security_groups must be a list of group ids")
    environment = merged["environment"]
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in environment.items()):
        raise _fail(path, position, name, "environment must map names to strings")
    # Step Functions passes Parameters on as they are written: PascalCase at every
    # depth, also in data given with ".$" (RunTask's KeyValuePair is Name, Value).
    merged["environment"] = [{"Name": k, "Value": v} for k, v in sorted(environment.items())]
    size = overrides_size(
        merged["container"],
        [{"name": e["Name"], "value": e["Value"]} for e in merged["environment"]],
    )
    if size > MAX_OVERRIDES_CHARACTERS:
        raise _fail(
            path,
            position,
            name,
            f"its environment makes RunTask overrides of {size} characters; RunTask takes "
            f"at most {MAX_OVERRIDES_CHARACTERS}: put long values in the task definition",
        )
    return merged


def load_targets(path: Path) -> list[dict[str, Any]]:
    """The targets file, JSON or YAML: a list of targets, or {defaults, targets}."""
    try:
        data = yaml.safe_load(path.read_text())  # JSON is YAML too
    except OSError as exc:
        raise ConfigError(SETTING, f"cannot read {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(SETTING, f"{path} is not JSON or YAML: {exc}") from None
    defaults: dict[str, Any] = {}
    if isinstance(data, dict):
        defaults = data.get("defaults") or {}
        data = data.get("targets")
    if not isinstance(data, list) or not data or not isinstance(defaults, dict):
        raise ConfigError(SETTING, f"{path} must list targets (a list, or {{defaults, targets}})")
    targets = [_target(path, i, raw, defaults) for i, raw in enumerate(data, 1)]
    names = [t["name"] for t in targets]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise ConfigError(SETTING, f"{path}: target names listed twice: {duplicated}")
    return targets


def _json_object(text: object) -> dict[str, Any]:
    try:
        value = json.loads(text) if isinstance(text, str) else None
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


class History:
    """The execution's history, read on from where the last look left off: newest
    first, down to the last event already seen, so each look reads only what is new.

    The state machine's rows are small (target, ok, task ARN or error); each task's
    details (its containers' exit codes, stop code, reason) are read here from the
    task state's own event: the output of TaskSucceeded, the cause of TaskFailed.
    """

    # How far back from a target's row its task's event may be: the row's Pass
    # state, the Task state's exit, then the task's end.
    _CHAIN = 12

    def __init__(self, sfn: Any, aws: Aws, execution: str) -> None:
        self.sfn, self.aws, self.execution = sfn, aws, execution
        self.seen = 0
        self.events: dict[int, dict[str, Any]] = {}
        self.failed_cause: str | None = None

    def new_events(self) -> list[dict[str, Any]]:
        fresh: list[dict[str, Any]] = []
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {
                "executionArn": self.execution,
                "maxResults": 1000,
                "reverseOrder": True,
            }
            if token:
                kwargs["nextToken"] = token
            page = self.aws.call(
                functools.partial(self.sfn.get_execution_history, **kwargs),
                what="reading the fleet's history",
                missing=f"execution {self.execution}",
            )
            events = page.get("events", [])
            fresh += [e for e in events if e["id"] > self.seen]
            token = page.get("nextToken")
            if not token or any(e["id"] <= self.seen for e in events):
                break
        fresh.sort(key=lambda e: e["id"])
        for event in fresh:
            self.events[event["id"]] = event
            details = event.get("executionFailedEventDetails")
            if details:
                self.failed_cause = details.get("cause")
        if fresh:
            self.seen = fresh[-1]["id"]
        return fresh

    def task_of(self, event: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
        """The task JSON (as ECS describes it, PascalCase) of the RunTask state that
        led to `event`, and the failure's cause when it was not a task."""
        current: dict[str, Any] | None = event
        for _ in range(self._CHAIN):
            if current is None:
                break
            succeeded = current.get("taskSucceededEventDetails")
            if succeeded is not None:
                return _json_object(succeeded.get("output")), None
            failed = current.get("taskFailedEventDetails")
            if failed is not None:
                task = _json_object(failed.get("cause"))
                return task, None if task else failed.get("cause")
            if current.get("type") == "MapIterationStarted":
                break
            current = self.events.get(current.get("previousEventId", 0))
        return {}, None

    def rows(
        self, events: list[dict[str, Any]], containers: dict[str, str]
    ) -> list[dict[str, Any]]:
        """A row for each target that finished in these events."""
        found = []
        for event in events:
            details = event.get("stateExitedEventDetails") or {}
            if details.get("name") not in ("TargetSucceeded", "TargetFailed"):
                continue
            output = _json_object(details.get("output"))
            task, cause = self.task_of(event)
            found.append(_row(output, task, cause, containers))
        return found


def _row(
    output: dict[str, Any], task: dict[str, Any], cause: str | None, containers: dict[str, str]
) -> dict[str, Any]:
    """One target's row: the state machine's (target, ok, error) with its task's
    details, each of which ECS may omit."""
    name = str(output.get("target"))
    container: dict[str, Any] = next(
        (c for c in task.get("Containers") or [] if c.get("Name") == containers.get(name)), {}
    )
    row: dict[str, Any] = {
        "target": name,
        "ok": False,
        "task_arn": task.get("TaskArn") or output.get("task_arn"),
        "container_exit_code": container.get("ExitCode"),
        "stop_code": task.get("StopCode"),
        "stopped_reason": task.get("StoppedReason"),
    }
    if not output.get("ok"):
        row["error"] = output.get("error")
        if cause:
            row["cause"] = cause[:1000]
    row["ok"] = bool(output.get("ok")) and row["container_exit_code"] == 0
    return row


def execution_input(fleet: dict[str, Any]) -> str:
    """The execution's input; one over Step Functions' limit is refused before any
    call (it would fail the execution with States.DataLimitExceeded)."""
    text = json.dumps(fleet, sort_keys=True, separators=(",", ":"))
    size = len(text.encode())
    if size > MAX_INPUT_BYTES:
        raise ConfigError(
            SETTING,
            f"the fleet's execution input would be {size} bytes; Step Functions takes at "
            f"most {MAX_INPUT_BYTES} ({len(fleet['targets'])} targets): split the targets "
            "file, or move shared environment into the task definitions",
        )
    return text


def _execution_arn(state_machine_arn: str, name: str) -> str:
    """The ARN StartExecution gives an execution of this name."""
    prefix, sep, machine = state_machine_arn.partition(":stateMachine:")
    return f"{prefix}:execution:{machine}:{name}" if sep else ""


def run_fleet(settings: FleetSettings, deadline: Deadline) -> dict[str, Any]:
    """Start the fleet, follow it, and return the fields of fleet-run's result line."""
    targets = load_targets(settings.targets)
    containers = {t["name"]: t["container"] for t in targets}
    fleet: dict[str, Any] = {"targets": targets}
    if settings.max_concurrency is not None:
        fleet["max_concurrency"] = settings.max_concurrency
    if settings.tolerated_failures is not None:
        fleet["tolerated_failures"] = settings.tolerated_failures
    text = execution_input(fleet)
    name = f"fleet-{hashlib.sha256(text.encode()).hexdigest()[:24]}-{uuid.uuid4().hex[:16]}"
    aws = Aws(deadline)
    sfn = aws.session.client("stepfunctions", config=aws.config())
    execution = _start(aws, sfn, settings.state_machine_arn, name, text)
    log.event("fleet_started", execution_arn=execution, targets=len(targets), execution=name)
    history = History(sfn, aws, execution)
    rows: dict[str, dict[str, Any]] = {}
    status = "RUNNING"
    started = time.monotonic()

    def describe() -> dict[str, Any]:
        try:
            return dict(sfn.describe_execution(executionArn=execution))
        except bx.ClientError as exc:
            code = exc.response.get("Error", {}).get("Code")
            if code == "ExecutionDoesNotExist" and (
                time.monotonic() - started < EVENTUAL_CONSISTENCY_SECONDS
            ):
                # DescribeExecution is eventually consistent right after the start.
                raise NotReady(f"execution {execution} not visible yet") from None
            raise

    while True:
        status = aws.call(describe, what="following the fleet", missing=f"execution {execution}")[
            "status"
        ]
        for row in history.rows(history.new_events(), containers):
            rows[row["target"]] = row
            log.event("target_done", logging.INFO if row["ok"] else logging.WARNING, **row)
        if status != "RUNNING":
            break
        if deadline.remaining() < settings.poll_seconds:
            raise DeadlineExceeded(
                f"fleet {execution} still RUNNING after {deadline.elapsed():.0f}s "
                f"({deadline.setting}={deadline.seconds:g}); it was left running",
                {"execution_arn": execution, "targets": list(rows.values())},
            )
        time.sleep(settings.poll_seconds)
    ordered = [rows.get(t["name"]) or {"target": t["name"], "ok": False} for t in targets]
    fields = {"execution_arn": execution, "execution_status": status, "targets": ordered}
    if status == "FAILED" and history.failed_cause:
        fields["execution_cause"] = history.failed_cause[:1000]
    failed = [row["target"] for row in ordered if not row["ok"]]
    if failed or status != "SUCCEEDED":
        raise FleetFailed(
            f"fleet {execution} {status}: {len(failed)} of {len(ordered)} targets failed"
            + (f" ({', '.join(failed)})" if failed else ""),
            fields,
        )
    return fields


def _start(aws: Aws, sfn: Any, state_machine_arn: str, name: str, text: str) -> str:
    """StartExecution, retried under one name. StartExecution is idempotent only while
    the execution runs: a retry after a lost reply, once the execution has ended (a
    fast failure), answers ExecutionAlreadyExists. That execution is this one when its
    input is this input: it is followed like any other."""

    def start() -> str:
        try:
            answer = sfn.start_execution(stateMachineArn=state_machine_arn, name=name, input=text)
        except bx.ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "ExecutionAlreadyExists":
                raise
            arn = _execution_arn(state_machine_arn, name)
            existing = sfn.describe_execution(executionArn=arn)
            if existing.get("input") != text:
                raise
            log.event(
                "fleet_already_started",
                execution_arn=arn,
                reason="a StartExecution whose reply was lost started it; it has ended",
            )
            return arn
        return str(answer["executionArn"])

    return aws.call(
        start,
        what=f"starting the fleet on {state_machine_arn}",
        missing=f"state machine {state_machine_arn}",
    )
