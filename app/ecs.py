"""ecs-run: run this job as an ECS task from a pipeline, and exit as its container did.

RunTask (failures in its answer are errors), then follow the task until STOPPED with
polling bounded by the deadline alone, streaming the container's CloudWatch log
events as they arrive; finally exit with that container's exit code, or 8 when the
task stopped without running it.
"""

from __future__ import annotations

import functools
import json
import logging
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from app import log
from app.aws import Aws
from app.errors import AwsError, ConfigError, DeadlineExceeded, TaskNotStarted
from app.retry import Deadline
from app.settings import describe_error

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

    cluster: str = Field(alias="ECS_CLUSTER", min_length=1)
    task_definition: str = Field(alias="ECS_TASK_DEFINITION", min_length=1)
    subnets: Annotated[list[str], NoDecode] = Field(default_factory=list, alias="ECS_SUBNETS")
    security_groups: Annotated[list[str], NoDecode] = Field(
        default_factory=list, alias="ECS_SECURITY_GROUPS"
    )
    assign_public_ip: bool = Field(False, alias="ECS_ASSIGN_PUBLIC_IP")
    launch_type: str | None = Field(None, alias="ECS_LAUNCH_TYPE")
    capacity_provider: str | None = Field(None, alias="ECS_CAPACITY_PROVIDER")
    container: str | None = Field(None, alias="ECS_CONTAINER")
    deadline_seconds: float = Field(
        1800.0, alias="ECS_DEADLINE_SECONDS", gt=0, le=86400, allow_inf_nan=False
    )
    poll_seconds: float = Field(5.0, alias="ECS_POLL_SECONDS", gt=0, le=60)

    _split_subnets = field_validator("subnets", "security_groups", mode="before")(_split)

    @field_validator("launch_type")
    @classmethod
    def _launch_type(cls, value: str | None) -> str | None:
        if value is not None and value not in ("FARGATE", "EC2", "EXTERNAL"):
            raise ValueError("must be FARGATE, EC2 or EXTERNAL")
        return value


def load_settings(overrides: dict[str, Any]) -> EcsSettings:
    """From the environment, with command-line flags winning."""
    given = {alias: value for alias, value in overrides.items() if value is not None}
    try:
        settings = EcsSettings(**given)
    except ValidationError as exc:
        error = exc.errors()[0]
        if error.get("type") == "missing":
            name = str(error["loc"][0])
            flag = name.removeprefix("ECS_").lower().replace("_", "-")
            raise ConfigError(name, f"not set (or pass --{flag})") from None
        raise describe_error(error) from None
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
    return environment


@dataclass
class Container:
    name: str
    log_group: str | None
    log_stream_prefix: str | None


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
    )


@dataclass
class LogTail:
    """Follows one CloudWatch Logs stream, printing new events to stderr."""

    client: CloudWatchLogsClient
    aws: Aws
    group: str
    stream: str
    token: str | None = None
    results: list[dict[str, Any]] = field(default_factory=list)

    def poll(self) -> None:
        while True:
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
        # The job's own result line, so the pipeline sees it in ecs-run's result.
        try:
            data = json.loads(message)
        except ValueError:
            return
        if isinstance(data, dict) and {"command", "exit_code", "status"} <= data.keys():
            self.results.append(data)


def run(settings: EcsSettings, env: list[dict[str, str]], deadline: Deadline) -> dict[str, Any]:
    """RunTask, follow it, and return the fields of ecs-run's result line."""
    aws = Aws(deadline)
    ecs: ECSClient = aws.session.client("ecs", config=aws.config())
    logs: CloudWatchLogsClient = aws.session.client("logs", config=aws.config())
    definition = aws.call(
        lambda: ecs.describe_task_definition(taskDefinition=settings.task_definition),
        what=f"describing task definition {settings.task_definition}",
        missing=f"task definition {settings.task_definition}",
    )["taskDefinition"]
    container = pick_container(definition, settings.container)
    request: dict[str, Any] = {
        "cluster": settings.cluster,
        "taskDefinition": definition["taskDefinitionArn"],
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
        request["overrides"] = {
            "containerOverrides": [{"name": container.name, "environment": env}]
        }
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

    last_status = ""
    while True:
        task = aws.call(
            lambda: ecs.describe_tasks(cluster=settings.cluster, tasks=[task_arn])["tasks"][0],
            what=f"following task {task_id}",
            missing=f"task {task_arn}",
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
                f"(ECS_DEADLINE_SECONDS={deadline.seconds:g}); it was left running"
            )
        time.sleep(settings.poll_seconds)
    if tail is not None:
        tail.poll()
    return outcome(task, container.name, tail.results if tail else [])


def outcome(
    task: Mapping[str, Any], container_name: str, results: list[dict[str, Any]]
) -> dict[str, Any]:
    """The followed container's exit code; TaskNotStarted if it never ran."""
    container: dict[str, Any] = next(
        (c for c in task.get("containers", []) if c["name"] == container_name), {}
    )
    exit_code = container.get("exitCode")
    reason = "; ".join(r for r in (task.get("stoppedReason"), container.get("reason")) if r) or None
    fields = {
        "task_arn": task["taskArn"],
        "container": container_name,
        "container_exit_code": exit_code,
        "stop_code": task.get("stopCode"),
        "stopped_reason": reason,
        "task_result": results[-1] if results else None,
    }
    if exit_code is None:
        raise TaskNotStarted(
            f"task {task['taskArn']} stopped without running {container_name} "
            f"({task.get('stopCode') or 'no stop code'}): {reason or 'no reason given'}",
            fields,
        )
    log.event(
        "task_stopped",
        logging.INFO if exit_code == 0 else logging.WARNING,
        task_arn=task["taskArn"],
        container_exit_code=exit_code,
    )
    return fields
