"""fleet-run: one bootstrap task per cluster, fanned out by the fleet state machine.

Step Functions does the scheduling (deploy/fleet.yaml, deploy/fleet.asl.json: a Map
state of ecs:runTask.sync with a concurrency limit); this starts an execution with the
targets, follows it, logs a line per target as each finishes, and returns one row per
target. The execution's name is derived from the input and a token of this
invocation, so a retried StartExecution (a lost reply) never starts a second fleet
run, while running the same fleet again later does.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import re
import time
import uuid
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from app import log
from app.aws import Aws
from app.errors import ConfigError, DeadlineExceeded, FleetFailed
from app.retry import Deadline
from app.settings import load_flagged

SETTING = "FLEET_TARGETS"
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

    state_machine_arn: str = Field(alias="FLEET_STATE_MACHINE_ARN", min_length=1)
    targets: Path = Field(alias="FLEET_TARGETS")
    max_concurrency: int | None = Field(None, alias="FLEET_MAX_CONCURRENCY", ge=1, le=40)
    tolerated_failures: int | None = Field(None, alias="FLEET_TOLERATED_FAILURES", ge=0)
    deadline_seconds: float = Field(
        3600.0, alias="FLEET_DEADLINE_SECONDS", gt=0, le=86400, allow_inf_nan=False
    )
    poll_seconds: float = Field(10.0, alias="FLEET_POLL_SECONDS", gt=0, le=300)


def load_settings(overrides: dict[str, Any]) -> FleetSettings:
    """From the environment, with command-line flags winning."""
    flags = {"FLEET_STATE_MACHINE_ARN": "--state-machine", SETTING: "--targets"}
    return load_flagged(FleetSettings, overrides, flags)


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
    merged["environment"] = [{"name": k, "value": v} for k, v in sorted(environment.items())]
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


def _row(output: dict[str, Any], containers: dict[str, str]) -> dict[str, Any]:
    """One target's row, from the state machine's TargetSucceeded/TargetFailed output."""
    name = str(output.get("target"))
    row: dict[str, Any] = {"target": name, "ok": False, "container_exit_code": None}
    task: dict[str, Any] = {}
    if output.get("ok"):
        task = {
            "TaskArn": output.get("task_arn"),
            "StopCode": output.get("stop_code"),
            "StoppedReason": output.get("stopped_reason"),
            "Containers": output.get("containers") or [],
        }
    else:
        row["error"] = output.get("error")
        try:
            task = json.loads(output.get("cause") or "")
        except ValueError:
            row["cause"] = output.get("cause")
        if not isinstance(task, dict):
            task = {}
    container: dict[str, Any] = next(
        (c for c in task.get("Containers") or [] if c.get("Name") == containers.get(name)), {}
    )
    row |= {
        "task_arn": task.get("TaskArn"),
        "container_exit_code": container.get("ExitCode"),
        "stop_code": task.get("StopCode"),
        "stopped_reason": task.get("StoppedReason"),
    }
    row["ok"] = row["container_exit_code"] == 0
    return row


class History:
    """The execution's history, read on from where the last look left off."""

    def __init__(self, sfn: Any, aws: Aws, execution: str) -> None:
        self.sfn, self.aws, self.execution = sfn, aws, execution
        self.seen = 0
        self.failed_cause: str | None = None

    def new_events(self) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"executionArn": self.execution, "maxResults": 1000}
            if token:
                kwargs["nextToken"] = token
            page = self.aws.call(
                functools.partial(self.sfn.get_execution_history, **kwargs),
                what="reading the fleet's history",
                missing=f"execution {self.execution}",
            )
            events += [e for e in page.get("events", []) if e["id"] > self.seen]
            token = page.get("nextToken")
            if not token:
                break
        if events:
            self.seen = max(e["id"] for e in events)
        for event in events:
            details = event.get("executionFailedEventDetails")
            if details:
                self.failed_cause = details.get("cause")
        return events


def _finished(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The outputs of the targets that finished in these events."""
    outputs = []
    for event in events:
        details = event.get("stateExitedEventDetails") or {}
        if details.get("name") in ("TargetSucceeded", "TargetFailed"):
            outputs.append(json.loads(details.get("output") or "{}"))
    return outputs


def run(settings: FleetSettings, deadline: Deadline) -> dict[str, Any]:
    """Start the fleet, follow it, and return the fields of fleet-run's result line."""
    targets = load_targets(settings.targets)
    containers = {t["name"]: t["container"] for t in targets}
    fleet: dict[str, Any] = {"targets": targets}
    if settings.max_concurrency is not None:
        fleet["max_concurrency"] = settings.max_concurrency
    if settings.tolerated_failures is not None:
        fleet["tolerated_failures"] = settings.tolerated_failures
    text = json.dumps(fleet, sort_keys=True, separators=(",", ":"))
    name = f"fleet-{hashlib.sha256(text.encode()).hexdigest()[:24]}-{uuid.uuid4().hex[:16]}"
    aws = Aws(deadline)
    sfn = aws.session.client("stepfunctions", config=aws.config())
    started = aws.call(
        lambda: sfn.start_execution(
            stateMachineArn=settings.state_machine_arn, name=name, input=text
        ),
        what=f"starting the fleet on {settings.state_machine_arn}",
        missing=f"state machine {settings.state_machine_arn}",
    )
    execution: str = started["executionArn"]
    log.event("fleet_started", execution_arn=execution, targets=len(targets), execution=name)
    history = History(sfn, aws, execution)
    rows: dict[str, dict[str, Any]] = {}
    status = "RUNNING"
    while True:
        status = aws.call(
            lambda: sfn.describe_execution(executionArn=execution),
            what="following the fleet",
            missing=f"execution {execution}",
        )["status"]
        for output in _finished(history.new_events()):
            row = _row(output, containers)
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
    if status == "FAILED" and history.failed_cause:
        try:  # TooManyTargetsFailed carries every row
            for output in json.loads(history.failed_cause):
                row = _row(output, containers)
                rows.setdefault(row["target"], row)
        except (ValueError, TypeError, AttributeError):
            pass
    ordered = [rows.get(t["name"]) or {"target": t["name"], "ok": False} for t in targets]
    fields = {"execution_arn": execution, "execution_status": status, "targets": ordered}
    failed = [row["target"] for row in ordered if not row["ok"]]
    if failed or status != "SUCCEEDED":
        raise FleetFailed(
            f"fleet {execution} {status}: {len(failed)} of {len(ordered)} targets failed"
            + (f" ({', '.join(failed)})" if failed else ""),
            fields,
        )
    return fields
