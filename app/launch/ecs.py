"""ecs-run: run this job as an ECS task from a pipeline, and exit as its container did.

RunTask (failures in its answer are errors), then follow the task until STOPPED with
polling bounded by the deadline alone, streaming the container's CloudWatch log
events as they arrive; finally exit with that container's exit code, or 8 when the
task stopped without running it, or 9 when it ran and its exit code was lost.

As ECS and CloudWatch behave on AWS: RunTask carries one clientToken per invocation,
so a retried RunTask whose reply was lost returns the task ECS already started
instead of starting a second; DescribeTasks may answer MISSING right after RunTask,
which is waited out; log events arrive late, so the stream is read on after the task
stopped until the job's result line has come or a grace period has passed; and a
line longer than Docker's 16 KB, split into several events by the log driver, is put
back together.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import sys
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from app import log
from app.aws import Aws, NotReady
from app.errors import (
    AwsAccessDenied,
    AwsError,
    ConfigError,
    DeadlineExceeded,
    TaskLost,
    TaskNotStarted,
)
from app.inputs import flags
from app.outcome import Run
from app.retry import Deadline

if TYPE_CHECKING:
    from mypy_boto3_ecs import ECSClient
    from mypy_boto3_logs import CloudWatchLogsClient


def _split(value: Any) -> Any:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class EcsSettings(BaseSettings):
    """ECS_* variables; each may be given as a flag of the same name instead."""

    model_config = SettingsConfigDict(case_sensitive=True, extra="ignore", frozen=True)

    cluster: str = Field(
        alias="ECS_CLUSTER",
        min_length=1,
        description="ECS cluster",
        json_schema_extra=flags.flag("cluster"),
    )
    task_definition: str = Field(
        alias="ECS_TASK_DEFINITION",
        min_length=1,
        description="family, family:revision or ARN",
        json_schema_extra=flags.flag("task-definition"),
    )
    subnets: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        alias="ECS_SUBNETS",
        description="comma-separated subnet ids, for awsvpc",
        json_schema_extra=flags.flag("subnets"),
    )
    security_groups: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        alias="ECS_SECURITY_GROUPS",
        description="comma-separated security group ids",
        json_schema_extra=flags.flag("security-groups"),
    )
    assign_public_ip: bool = Field(
        False,
        alias="ECS_ASSIGN_PUBLIC_IP",
        description="public IP for the task",
        json_schema_extra=flags.flag("assign-public-ip"),
    )
    launch_type: str | None = Field(
        None,
        alias="ECS_LAUNCH_TYPE",
        description="FARGATE (default), EC2 or EXTERNAL",
        json_schema_extra=flags.flag("launch-type"),
    )
    capacity_provider: str | None = Field(
        None,
        alias="ECS_CAPACITY_PROVIDER",
        description="instead of a launch type",
        json_schema_extra=flags.flag("capacity-provider"),
    )
    container: str | None = Field(
        None,
        alias="ECS_CONTAINER",
        description="container to follow; default the essential one",
        json_schema_extra=flags.flag("container"),
    )
    deadline_seconds: float = Field(
        1800.0,
        alias="ECS_DEADLINE_SECONDS",
        gt=0,
        le=86400,
        allow_inf_nan=False,
        description="seconds to wait in all",
        json_schema_extra=flags.flag("deadline"),
    )
    poll_seconds: float = Field(
        5.0,
        alias="ECS_POLL_SECONDS",
        gt=0,
        le=60,
        description="seconds between looks at the task",
        json_schema_extra=flags.flag("poll-seconds"),
    )
    log_grace_seconds: float = Field(
        15.0,
        alias="ECS_LOG_GRACE_SECONDS",
        ge=0,
        le=600,
        description="seconds to wait for the job's result line after the task stopped",
        json_schema_extra=flags.flag("log-grace"),
    )

    _split_subnets = field_validator("subnets", "security_groups", mode="before")(_split)

    @field_validator("launch_type")
    @classmethod
    def _launch_type(cls, value: str | None) -> str | None:
        if value is not None and value not in ("FARGATE", "EC2", "EXTERNAL"):
            raise ValueError("must be FARGATE, EC2 or EXTERNAL")
        return value


def arguments(parser: argparse.ArgumentParser) -> None:
    """Each flag overrides the ECS_* variable it names."""
    flags.add_flags(parser, EcsSettings)
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="environment override for the container; repeatable (no variable)",
    )


def command(args: argparse.Namespace, run: Run) -> dict[str, Any]:
    """ecs-run: the settings from the environment and the flags, then the task."""
    environment = parse_env_overrides(args.env)
    conf = load_settings(args)
    for pair in environment:
        if "PASSWORD" in pair["name"] or "SECRET" in pair["name"]:
            log.register_secret(pair["value"])
    deadline = Deadline(conf.deadline_seconds, started=run.started, setting="ECS_DEADLINE_SECONDS")
    return run_task(conf, environment, deadline)


def load_settings(args: argparse.Namespace) -> EcsSettings:
    """From the environment, with command-line flags winning."""
    settings = flags.load(EcsSettings, args)
    if settings.launch_type and settings.capacity_provider:
        raise ConfigError("ECS_CAPACITY_PROVIDER", "give a launch type or a capacity provider")
    return settings


def parse_env_overrides(pairs: list[str]) -> list[dict[str, str]]:
    environment = []
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise ConfigError("--env", f"{pair.split('=')[0]!r} is not KEY=VALUE")
        environment.append({"name": name, "value": value})
    # Before any call: the container's name, known later, only adds to this.
    check_overrides("", environment)
    return environment


# RunTask's limit on the overrides of one task, as AWS documents it.
MAX_OVERRIDES_CHARACTERS = 8192


def overrides_size(container: str, environment: list[dict[str, str]]) -> int:
    """The size of RunTask's `overrides` (its JSON text) for one container."""
    overrides = {"containerOverrides": [{"name": container, "environment": environment}]}
    return len(json.dumps(overrides, separators=(",", ":")))


def check_overrides(container: str, environment: list[dict[str, str]]) -> None:
    """--env overrides within RunTask's limit, or a ConfigError naming --env."""
    size = overrides_size(container, environment)
    if size > MAX_OVERRIDES_CHARACTERS:
        raise ConfigError(
            "--env",
            f"the overrides would be {size} characters; RunTask takes at most "
            f"{MAX_OVERRIDES_CHARACTERS}: put long values in the task definition",
        )


@dataclass
class Container:
    name: str
    log_group: str | None
    log_stream_prefix: str | None
    log_region: str | None = None  # awslogs-region: the log group's, not the session's


def pick_container(task_definition: Mapping[str, Any], wanted: str | None) -> Container:
    containers = task_definition["containerDefinitions"]
    if wanted is not None:
        chosen = [c for c in containers if c["name"] == wanted]
        if not chosen:
            names = ", ".join(c["name"] for c in containers)
            raise ConfigError(
                "ECS_CONTAINER", f"{wanted!r} is not in the task definition ({names})"
            )
    else:
        chosen = [c for c in containers if c.get("essential", True)]
        if len(chosen) != 1:
            raise ConfigError(
                "ECS_CONTAINER",
                "the task definition has several essential containers: name the one to follow",
            )
    definition = chosen[0]
    logging_ = definition.get("logConfiguration") or {}
    options = logging_.get("options") or {}
    awslogs = logging_.get("logDriver") == "awslogs"
    return Container(
        name=definition["name"],
        log_group=options.get("awslogs-group") if awslogs else None,
        log_stream_prefix=options.get("awslogs-stream-prefix") if awslogs else None,
        log_region=options.get("awslogs-region") if awslogs else None,
    )


# A piece of a split line is at most this long (Docker's 16 KB); pieces of one line
# are put together up to this many bytes (CloudWatch holds 256 KB an event, and a
# result line can be several of those).
_PIECE_BYTES = 16 * 1024
_LINE_LIMIT_BYTES = 64 * 1024 * 1024


@dataclass
class LogTail:
    """Follows one CloudWatch Logs stream, printing new events to stderr."""

    client: CloudWatchLogsClient
    aws: Aws
    group: str
    stream: str
    token: str | None = None
    results: list[dict[str, Any]] = field(default_factory=list)
    denied: bool = False
    _pieces: list[str] = field(default_factory=list)
    _piece_bytes: int = 0

    def poll(self) -> None:
        while not self.denied:
            kwargs: dict[str, Any] = {
                "logGroupName": self.group,
                "logStreamName": self.stream,
                "startFromHead": True,
            }
            if self.token:
                kwargs["nextToken"] = self.token
            try:
                page = self.aws.call(
                    functools.partial(self.client.get_log_events, **kwargs),
                    what=f"reading log stream {self.stream}",
                    missing=f"log group {self.group}",
                )
            except AwsAccessDenied:
                self.denied = True
                log.event(
                    "logs_unreadable",
                    logging.WARNING,
                    reason=f"access denied: the caller needs logs:GetLogEvents on log "
                    f"group {self.group}; the task is followed without its logs",
                )
                return
            except AwsError:
                return  # the stream appears once the container starts writing
            for event in page.get("events", []):
                message = event.get("message", "")
                sys.stderr.write(log.redact(message.rstrip("\n")) + "\n")
                self._keep_result(message)
            sys.stderr.flush()
            if page.get("nextForwardToken") in (None, self.token):
                return
            self.token = page["nextForwardToken"]

    def _keep_result(self, message: str) -> None:
        """The job's own result line, put back together if the log driver split it,
        so that the pipeline sees it in ecs-run's result."""
        size = len(message.encode())  # Docker splits at 16 KB, not 16 K characters
        if self._pieces:
            self._pieces.append(message)
            self._piece_bytes += size
            text = "".join(self._pieces)
        elif message.startswith('{"command":'):
            text = message
        else:
            return
        try:
            data = json.loads(text)
        except ValueError:
            if not self._pieces:
                self._pieces, self._piece_bytes = [message], size
            elif self._piece_bytes > _LINE_LIMIT_BYTES or size < _PIECE_BYTES:
                # A short piece ends a split line: this one did not parse, give it up.
                self._pieces, self._piece_bytes = [], 0
            return
        self._pieces, self._piece_bytes = [], 0
        if isinstance(data, dict) and {"command", "exit_code", "status"} <= data.keys():
            self.results.append(data)

    def drain(self, deadline: Deadline, poll_seconds: float, grace: float) -> None:
        """After the task stopped: read on until the result line has come, or the
        grace period (or the deadline) has passed."""
        until = time.monotonic() + min(grace, max(deadline.remaining() - 1, 0))
        self.poll()
        while not self.results and not self.denied and time.monotonic() < until:
            time.sleep(min(poll_seconds, 1.0))
            self.poll()
        if not self.results and not self.denied:
            log.event(
                "result_line_missing",
                logging.WARNING,
                reason=f"the job's result line did not reach {self.stream} within "
                f"{grace:g} s of the task stopping (ECS_LOG_GRACE_SECONDS)",
            )


def _request(
    settings: EcsSettings, definition_arn: str, container: str, env: list[dict[str, str]]
) -> dict[str, Any]:
    """RunTask's request, but for its client token; overrides past RunTask's limit are
    refused before it is called."""
    request: dict[str, Any] = {
        "cluster": settings.cluster,
        "taskDefinition": definition_arn,
        "count": 1,
        "startedBy": "aurora-bootstrap",
    }
    if settings.capacity_provider:
        request["capacityProviderStrategy"] = [{"capacityProvider": settings.capacity_provider}]
    else:
        request["launchType"] = settings.launch_type or "FARGATE"
    if settings.subnets:
        request["networkConfiguration"] = {
            "awsvpcConfiguration": {
                "subnets": settings.subnets,
                "securityGroups": settings.security_groups,
                "assignPublicIp": "ENABLED" if settings.assign_public_ip else "DISABLED",
            }
        }
    if env:
        check_overrides(container, env)
        request["overrides"] = {"containerOverrides": [{"name": container, "environment": env}]}
    return request


def run_task(
    settings: EcsSettings, env: list[dict[str, str]], deadline: Deadline
) -> dict[str, Any]:
    """RunTask, follow it, and return the fields of ecs-run's result line."""
    aws = Aws(deadline)
    ecs: ECSClient = aws.session.client("ecs", config=aws.config())
    definition = aws.call(
        lambda: ecs.describe_task_definition(taskDefinition=settings.task_definition),
        what=f"describing task definition {settings.task_definition}",
        missing=f"task definition {settings.task_definition}",
    )["taskDefinition"]
    container = pick_container(definition, settings.container)
    logs: CloudWatchLogsClient = aws.session.client(
        "logs", region_name=container.log_region, config=aws.config()
    )
    request = _request(settings, definition["taskDefinitionArn"], container.name, env)
    # One token for every retry of this RunTask: ECS answers a repeat with the task it
    # already started, so a reply lost in transit never starts a second task.
    request["clientToken"] = str(uuid.uuid4())
    log.event("run_task", client_token=request["clientToken"], cluster=settings.cluster)
    started = aws.call(
        lambda: ecs.run_task(**request),
        what=f"running task {settings.task_definition} on {settings.cluster}",
        missing=f"cluster {settings.cluster}",
    )
    failures = started.get("failures") or []
    if failures or not started.get("tasks"):
        reasons = "; ".join(
            f"{f.get('arn', '')} {f.get('reason', '')} {f.get('detail', '')}".strip()
            for f in failures
        )
        raise TaskNotStarted(f"RunTask started no task: {reasons or 'no reason given'}")
    task_arn: str = started["tasks"][0]["taskArn"]
    task_id = task_arn.rsplit("/", 1)[-1]
    log.event("task_started", task_arn=task_arn, container=container.name)

    tail = None
    if container.log_group and container.log_stream_prefix:
        stream = f"{container.log_stream_prefix}/{container.name}/{task_id}"
        tail = LogTail(logs, aws, container.log_group, stream)
        log.event("streaming_logs", log_group=container.log_group, log_stream=stream)

    def describe() -> dict[str, Any]:
        answer = ecs.describe_tasks(cluster=settings.cluster, tasks=[task_arn])
        if not answer.get("tasks"):
            # Eventual consistency: right after RunTask the task may not be found yet.
            reasons = ", ".join(f.get("reason", "?") for f in answer.get("failures") or [])
            raise NotReady(f"task {task_id} not found yet ({reasons or 'no task'})")
        return dict(answer["tasks"][0])

    last_status = ""
    seen_running = False
    while True:
        task = aws.call(describe, what=f"following task {task_id}", missing=f"task {task_arn}")
        seen_running = seen_running or any(
            c.get("name") == container.name and c.get("lastStatus") == "RUNNING"
            for c in task.get("containers") or []
        )
        if tail is not None:
            tail.poll()
        if task.get("lastStatus") != last_status:
            last_status = task.get("lastStatus", "")
            log.event("task_status", task_arn=task_arn, status=last_status)
        if last_status == "STOPPED":
            break
        if deadline.remaining() < settings.poll_seconds:
            raise DeadlineExceeded(
                f"task {task_arn} still {last_status} after {deadline.elapsed():.0f}s "
                f"({deadline.setting}={deadline.seconds:g}); it was left running"
            )
        time.sleep(settings.poll_seconds)
    if tail is not None:
        tail.drain(deadline, settings.poll_seconds, settings.log_grace_seconds)
    return outcome(task, container.name, tail.results if tail else [], seen_running=seen_running)


# Stop codes of a task that someone or something stopped, rather than its container
# exiting: StopTask, a deployment, a Spot interruption, a host retired.
# InfrastructureHealth: ECS stopped it for its infrastructure (botocore's TaskStopCode).
_STOPPED_BY = frozenset(
    {
        "UserInitiated",
        "ServiceSchedulerInitiated",
        "SpotInterruption",
        "TerminationNotice",
        "InfrastructureHealth",
    }
)


def _sidecar_failed_first(task: Mapping[str, Any], container: Mapping[str, Any]) -> str | None:
    """The essential container that failed while ours never ran (it has no exit code
    and was never seen RUNNING), if any."""
    for other in task.get("containers") or []:
        if other.get("name") == container.get("name"):
            continue
        if other.get("exitCode") not in (None, 0) or other.get("reason"):
            return str(other.get("name"))
    return None


def outcome(
    task: Mapping[str, Any],
    container_name: str,
    results: list[dict[str, Any]],
    *,
    seen_running: bool = False,
) -> dict[str, Any]:
    """The followed container's exit code, and how the task came to stop. Raises
    TaskNotStarted if the container never ran, TaskLost if it ran and its exit code
    was lost with its host."""
    container: dict[str, Any] = next(
        (c for c in task.get("containers", []) if c["name"] == container_name), {}
    )
    exit_code = container.get("exitCode")
    stop_code = task.get("stopCode")
    reason = "; ".join(r for r in (task.get("stoppedReason"), container.get("reason")) if r) or None
    fields = {
        "task_arn": task["taskArn"],
        "container": container_name,
        "container_exit_code": exit_code,
        "stop_code": stop_code,
        "stopped_reason": reason,
        "task_result": results[-1] if results else None,
    }
    if exit_code is None:
        ran = task.get("startedAt") is not None and stop_code != "TaskFailedToStart"
        sidecar = None if seen_running or results else _sidecar_failed_first(task, container)
        if ran and sidecar is not None:
            raise TaskNotStarted(
                f"task {task['taskArn']} stopped before {container_name} ran: container "
                f"{sidecar} failed first ({stop_code or 'no stop code'}): "
                f"{reason or 'no reason given'}",
                fields,
            )
        if ran:
            raise TaskLost(
                f"task {task['taskArn']} ran {container_name}, but its exit code was lost "
                f"({stop_code or 'no stop code'}: {reason or 'no reason given'}); it may "
                "have committed: run verify to see",
                fields,
            )
        raise TaskNotStarted(
            f"task {task['taskArn']} stopped without running {container_name} "
            f"({stop_code or 'no stop code'}): {reason or 'no reason given'}",
            fields,
        )
    if "OutOfMemoryError" in (container.get("reason") or ""):
        fields["stopped_how"] = (
            f"container {container_name} was killed for memory (OutOfMemoryError, exit "
            f"{exit_code}): give the task definition more memory"
        )
    elif stop_code in _STOPPED_BY:
        fields["stopped_how"] = (
            f"task stopped ({stop_code}): {task.get('stoppedReason') or 'no reason given'}; "
            f"container {container_name} exited with {exit_code}"
        )
    else:
        fields["stopped_how"] = f"container {container_name} exited with {exit_code}"
    log.event(
        "task_stopped",
        logging.INFO if exit_code == 0 else logging.WARNING,
        task_arn=task["taskArn"],
        container_exit_code=exit_code,
        how=fields["stopped_how"],
    )
    return fields
