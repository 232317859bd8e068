"""ecs-run against moto's ECS and CloudWatch Logs, through the emulator's proxy.

moto runs no containers: its tasks step through their states on each describe and
report exit code 0 for the first container only. What it cannot express is scripted
by rewriting its answers in the proxy, and each test says so: a sidecar that exits
differently, a task that failed to start, RunTask failures, a task that never stops.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import pytest

from tests import awsemu
from tests.conftest import job_env, run_job

CLUSTER, FAMILY, GROUP, PREFIX = "pipeline", "aurora-bootstrap", "/ecs/aurora-bootstrap", "ecs"
JOB_RESULT = {"command": "apply", "status": "ok", "exit_code": 0, "changes": [], "duration_ms": 12}


def setup_ecs(aws: awsemu.Emulator) -> dict[str, str]:
    _vpc, [subnet], group = awsemu.fargate_network(aws.admin("ec2"), "10.0")
    aws.admin("ecs").create_cluster(clusterName=CLUSTER)
    aws.admin("logs").create_log_group(logGroupName=GROUP)
    aws.admin("ecs").register_task_definition(
        family=FAMILY,
        networkMode="awsvpc",
        requiresCompatibilities=["FARGATE"],
        cpu="256",
        memory="512",
        containerDefinitions=[
            {
                "name": "bootstrap",
                "image": "aurora-bootstrap",
                "essential": True,
                "memory": 384,
                "logConfiguration": {
                    "logDriver": "awslogs",
                    "options": {
                        "awslogs-group": GROUP,
                        "awslogs-stream-prefix": PREFIX,
                        "awslogs-region": awsemu.REGION,
                    },
                },
            },
            {"name": "sidecar", "image": "sidecar", "essential": False, "memory": 128},
        ],
    )
    return {"subnet": subnet, "group": group}


def write_logs_on_run_task(aws: awsemu.Emulator, messages: list[str]) -> None:
    """When the task starts, its container 'writes' these lines to its log stream."""

    def rewrite(service: str, operation: str, body: bytes) -> bytes:
        if operation == "RunTask":
            task_id = json.loads(body)["tasks"][0]["taskArn"].rsplit("/", 1)[-1]
            stream = f"{PREFIX}/bootstrap/{task_id}"
            logs = aws.admin("logs")
            logs.create_log_stream(logGroupName=GROUP, logStreamName=stream)
            logs.put_log_events(
                logGroupName=GROUP,
                logStreamName=stream,
                logEvents=[
                    {"timestamp": int(time.time() * 1000) + i, "message": m}
                    for i, m in enumerate(messages)
                ],
            )
        return body

    aws.state.rewrites.append(rewrite)


def on_stopped(aws: awsemu.Emulator, change: Callable[[dict[str, Any]], None]) -> None:
    """Script what DescribeTasks says once moto's task has STOPPED."""

    def rewrite(service: str, operation: str, body: bytes) -> bytes:
        if operation != "DescribeTasks":
            return body
        data = json.loads(body)
        for task in data["tasks"]:
            if task["lastStatus"] == "STOPPED":
                change(task)
        return json.dumps(data).encode()

    aws.state.rewrites.append(rewrite)


def ecs_run(aws: awsemu.Emulator, net: dict[str, str], *extra: str, **env: str) -> Any:
    return run_job(
        job_env(**awsemu.client_env(aws.url), **env),
        "ecs-run",
        "--cluster",
        CLUSTER,
        "--task-definition",
        FAMILY,
        "--subnets",
        net["subnet"],
        "--security-groups",
        net["group"],
        "--poll-seconds",
        "0.1",
        "--deadline",
        "60",
        "--log-grace",
        "1",
        *extra,
    )


def test_runs_the_task_streams_its_logs_and_exits_0(aws: awsemu.Emulator) -> None:
    net = setup_ecs(aws)
    job_log = json.dumps({"ts": "t", "level": "INFO", "event": "start", "command": "apply"})
    write_logs_on_run_task(aws, [job_log, json.dumps(JOB_RESULT)])
    run = ecs_run(aws, net, "--env", "IAM_USERS=app_user:app_readonly")
    assert run.code == 0, run
    assert job_log in run.stderr, "the container's log lines are streamed to stderr"
    result = run.result
    assert result["command"] == "ecs-run" and result["status"] == "ok"
    assert result["task_arn"].startswith(f"arn:aws:ecs:{awsemu.REGION}:")
    assert result["container"] == "bootstrap"
    assert result["container_exit_code"] == 0
    assert result["task_result"] == JOB_RESULT
    assert isinstance(result["duration_ms"], int)
    [request] = [
        json.loads(b)
        for (s, op), b in zip(aws.state.calls, aws.state.bodies, strict=True)
        if op == "RunTask"
    ]
    assert request["overrides"]["containerOverrides"] == [
        {
            "name": "bootstrap",
            "environment": [{"name": "IAM_USERS", "value": "app_user:app_readonly"}],
        }
    ]
    assert request["networkConfiguration"]["awsvpcConfiguration"]["assignPublicIp"] == "DISABLED"
    assert request["launchType"] == "FARGATE"


@pytest.mark.parametrize(("bootstrap", "sidecar"), [(6, 0), (0, 137)])
def test_exit_code_is_the_followed_containers_not_the_sidecars(
    aws: awsemu.Emulator, bootstrap: int, sidecar: int
) -> None:
    """Scripted: moto reports one container, always 0; the proxy adds the sidecar."""
    net = setup_ecs(aws)

    def exits(task: dict[str, Any]) -> None:
        task["containers"] = [
            {"name": "sidecar", "exitCode": sidecar, "lastStatus": "STOPPED"},
            {"name": "bootstrap", "exitCode": bootstrap, "lastStatus": "STOPPED"},
        ]

    on_stopped(aws, exits)
    run = ecs_run(aws, net)
    assert run.code == bootstrap, run
    assert run.result["container_exit_code"] == bootstrap
    assert run.result["status"] == ("ok" if bootstrap == 0 else "error")


def test_task_that_failed_to_start_exits_8_with_its_reason(aws: awsemu.Emulator) -> None:
    """Scripted: a task stopped by ECS before the container ran, as an image pull
    failure leaves it."""
    net = setup_ecs(aws)
    reason = "CannotPullContainerError: pull image manifest has been retried 5 time(s)"

    def failed(task: dict[str, Any]) -> None:
        task["stopCode"] = "TaskFailedToStart"
        task["stoppedReason"] = "Task failed to start"
        task["containers"] = [{"name": "bootstrap", "lastStatus": "STOPPED", "reason": reason}]

    on_stopped(aws, failed)
    run = ecs_run(aws, net)
    assert run.code == 8, run
    assert reason in run.result["error"]["message"]
    assert run.result["stop_code"] == "TaskFailedToStart"
    assert run.result["container_exit_code"] is None
    assert reason in run.stderr


def test_run_task_failures_are_reported(aws: awsemu.Emulator) -> None:
    """Scripted: RunTask answers with failures and no task."""
    net = setup_ecs(aws)

    def no_capacity(service: str, operation: str, body: bytes) -> bytes:
        if operation != "RunTask":
            return body
        return json.dumps(
            {
                "tasks": [],
                "failures": [
                    {
                        "arn": f"arn:aws:ecs:{awsemu.REGION}:{awsemu.ACCOUNT}:cluster/{CLUSTER}",
                        "reason": "RESOURCE:MEMORY",
                    }
                ],
            }
        ).encode()

    aws.state.rewrites.append(no_capacity)
    run = ecs_run(aws, net)
    assert run.code == 8, run
    assert "RESOURCE:MEMORY" in run.result["error"]["message"]


def test_unknown_cluster_exits_3(aws: awsemu.Emulator) -> None:
    net = setup_ecs(aws)
    run = run_job(
        job_env(**awsemu.client_env(aws.url)),
        "ecs-run",
        "--cluster",
        "nope",
        "--task-definition",
        FAMILY,
        "--subnets",
        net["subnet"],
        "--poll-seconds",
        "0.1",
    )
    assert run.code == 3, run


def test_throttling_is_survived(aws: awsemu.Emulator) -> None:
    net = setup_ecs(aws)
    write_logs_on_run_task(aws, [json.dumps(JOB_RESULT)])
    aws.state.throttle = {"ecs": 3, "logs": 2}
    run = ecs_run(aws, net)
    assert run.code == 0, run
    assert aws.state.throttled == {"ecs": 3, "logs": 2}
    assert sum(e["event"] == "retry" for e in run.logs if "event" in e) == 5


def test_task_that_never_stops_exits_5_at_the_deadline(aws: awsemu.Emulator) -> None:
    """Scripted: DescribeTasks always says RUNNING."""
    net = setup_ecs(aws)

    def running(service: str, operation: str, body: bytes) -> bytes:
        if operation != "DescribeTasks":
            return body
        data = json.loads(body)
        for task in data["tasks"]:
            task["lastStatus"] = "RUNNING"
        return json.dumps(data).encode()

    aws.state.rewrites.append(running)
    run = ecs_run(aws, net, "--deadline", "2")
    assert run.code == 5, run
    assert "RUNNING" in run.result["error"]["message"]


@pytest.mark.parametrize(
    ("args", "setting"),
    [
        (["--task-definition", FAMILY], "ECS_CLUSTER"),
        (["--cluster", CLUSTER], "ECS_TASK_DEFINITION"),
        (
            ["--cluster", CLUSTER, "--task-definition", FAMILY, "--launch-type", "LAMBDA"],
            "ECS_LAUNCH_TYPE",
        ),
        (["--cluster", CLUSTER, "--task-definition", FAMILY, "--env", "NOEQUALS"], "--env"),
        (
            ["--cluster", CLUSTER, "--task-definition", FAMILY, "--container", "ghost"],
            "ECS_CONTAINER",
        ),
    ],
)
def test_bad_ecs_settings_exit_2(aws: awsemu.Emulator, args: list[str], setting: str) -> None:
    setup_ecs(aws)
    run = run_job(job_env(**awsemu.client_env(aws.url)), "ecs-run", *args)
    assert run.code == 2, run
    assert run.result["error"]["message"].startswith(f"{setting}:")
