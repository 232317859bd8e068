"""ecs-run as ECS and CloudWatch Logs behave on AWS, which moto does not show: each
test scripts, through the emulator's proxy, what AWS does there and moto does not, and
says what it scripts."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import pytest

from tests import awsemu
from tests.conftest import job_env, run_job
from tests.test_ecs import (
    FAMILY,
    GROUP,
    JOB_RESULT,
    PREFIX,
    ecs_run,
    on_stopped,
    setup_ecs,
    write_logs_on_run_task,
)
from tools import localpg


def requests(aws: awsemu.Emulator, operation: str) -> list[dict[str, Any]]:
    return [
        json.loads(body)
        for (_service, op), body in zip(aws.state.calls, aws.state.bodies, strict=True)
        if op == operation
    ]


def test_run_task_whose_reply_is_lost_is_retried_with_the_same_client_token(
    aws: awsemu.Emulator,
) -> None:
    """Scripted: ECS takes the first RunTask but its reply is lost (a 503 comes back);
    ECS answers a repeated clientToken with the task it already started, which moto
    does not do, so the proxy answers the retry with the first task."""
    net = setup_ecs(aws)
    write_logs_on_run_task(aws, [json.dumps(JOB_RESULT)])
    aws.state.lose_replies["RunTask"] = 1
    first: dict[str, bytes] = {}

    def idempotent(service: str, operation: str, body: bytes) -> bytes:
        if operation != "RunTask":
            return body
        if "answer" in first:
            return first["answer"]  # the task ECS started for this token
        first["answer"] = body
        return body

    aws.state.rewrites.append(idempotent)
    run = ecs_run(aws, net)
    assert run.code == 0, run
    sent = requests(aws, "RunTask")
    assert len(sent) == 2
    tokens = {request.get("clientToken") for request in sent}
    assert len(tokens) == 1 and None not in tokens, tokens
    [token] = tokens
    assert any(e.get("client_token") == token for e in run.logs if e.get("event") == "run_task")
    started = json.loads(first["answer"])["tasks"][0]["taskArn"]
    assert run.result["task_arn"] == started


def test_missing_task_right_after_run_task_is_waited_for(aws: awsemu.Emulator) -> None:
    """Scripted: DescribeTasks is eventually consistent; right after RunTask it answers
    MISSING and no task, twice."""
    net = setup_ecs(aws)
    write_logs_on_run_task(aws, [json.dumps(JOB_RESULT)])
    missing = iter([True, True])

    def not_yet(service: str, operation: str, body: bytes) -> bytes:
        if operation != "DescribeTasks" or not next(missing, False):
            return body
        data = json.loads(body)
        arn = data["tasks"][0]["taskArn"]
        return json.dumps({"tasks": [], "failures": [{"arn": arn, "reason": "MISSING"}]}).encode()

    aws.state.rewrites.append(not_yet)
    run = ecs_run(aws, net)
    assert run.code == 0, run
    reasons = [str(e["reason"]) for e in run.logs if e.get("event") == "retry"]
    assert len(reasons) == 2 and all("MISSING" in r for r in reasons), reasons


def test_result_line_that_arrives_after_the_task_stopped_is_read(aws: awsemu.Emulator) -> None:
    """Scripted: CloudWatch Logs ingests with a lag: the job's result line is put into
    the stream 2 s after DescribeTasks first says STOPPED."""
    net = setup_ecs(aws)
    written = threading.Event()

    def late(service: str, operation: str, body: bytes) -> bytes:
        if operation != "DescribeTasks" or written.is_set():
            return body
        data = json.loads(body)
        task = data["tasks"][0]
        if task["lastStatus"] != "STOPPED":
            return body
        written.set()
        stream = f"{PREFIX}/bootstrap/{task['taskArn'].rsplit('/', 1)[-1]}"

        def put() -> None:
            time.sleep(2)
            logs = aws.admin("logs")
            logs.create_log_stream(logGroupName=GROUP, logStreamName=stream)
            event = {"timestamp": int(time.time() * 1000), "message": json.dumps(JOB_RESULT)}
            logs.put_log_events(logGroupName=GROUP, logStreamName=stream, logEvents=[event])

        threading.Thread(target=put, daemon=True).start()
        return body

    aws.state.rewrites.append(late)
    run = ecs_run(aws, net, "--log-grace", "15")
    assert run.code == 0, run
    assert run.result["task_result"] == JOB_RESULT


def test_access_denied_on_the_logs_is_a_warning_naming_the_permission(
    aws: awsemu.Emulator,
) -> None:
    """Scripted: GetLogEvents answers AccessDeniedException (the caller's role lacks
    logs:GetLogEvents)."""
    net = setup_ecs(aws)
    aws.state.errors[("logs", "GetLogEvents")] = (400, "AccessDeniedException")
    run = ecs_run(aws, net)
    assert run.code == 0, run
    warnings = [e for e in run.logs if e.get("event") == "logs_unreadable"]
    assert warnings and warnings[0]["level"] == "WARNING"
    assert "logs:GetLogEvents" in warnings[0]["reason"]
    assert GROUP in warnings[0]["reason"]


def split_as_docker_does(line: str, size: int = 16 * 1024) -> list[str]:
    """Docker's log drivers pass a line longer than 16 KB on in pieces of 16 KB."""
    return [line[i : i + size] for i in range(0, len(line), size)]


def test_result_line_of_5000_users_split_by_the_log_driver_is_reassembled(
    aws: awsemu.Emulator, pg18: localpg.LocalPostgres
) -> None:
    """The job's real result line for 5,000 new users (run here against PostgreSQL),
    written to the task's stream in the 16 KB pieces Docker's awslogs driver makes."""
    users = ",".join(f"u{i:04d}:app_readonly" for i in range(5000))
    job = run_job(job_env(pg18, IAM_USERS=users, DEADLINE_SECONDS="120"))
    assert job.code == 0, job.stderr[-2000:]
    line = job.stdout.strip()
    pieces = split_as_docker_does(line)
    assert len(pieces) > 20
    net = setup_ecs(aws)
    start = json.dumps({"ts": "t", "level": "INFO", "event": "start"})
    write_logs_on_run_task(aws, [start, *pieces, json.dumps({"event": "after"})])
    run = ecs_run(aws, net)
    assert run.code == 0, run.stderr[-2000:]
    assert run.result["task_result"] == json.loads(line)


STOPS: list[tuple[str, dict[str, Any], int, str]] = [
    (
        "exited by itself",
        {"stopCode": "EssentialContainerExited", "exitCode": 6},
        6,
        "exited with 6",
    ),
    (
        "stopped by StopTask",
        {
            "stopCode": "UserInitiated",
            "stoppedReason": "Task stopped by user",
            "exitCode": 143,
        },
        143,
        "stopped (UserInitiated): Task stopped by user",
    ),
    (
        "Spot interruption",
        {
            "stopCode": "SpotInterruption",
            "stoppedReason": "Your Spot Task was interrupted.",
            "exitCode": 143,
        },
        143,
        "stopped (SpotInterruption)",
    ),
    (
        "killed for memory",
        {
            "stopCode": "EssentialContainerExited",
            "exitCode": 137,
            "reason": "OutOfMemoryError: Container killed due to memory usage",
        },
        137,
        "killed for memory",
    ),
    (
        "stopped for its infrastructure",
        {
            "stopCode": "InfrastructureHealth",
            "stoppedReason": "Task stopped due to infrastructure health",
            "exitCode": 143,
        },
        143,
        "stopped (InfrastructureHealth)",
    ),
    (
        "host lost",
        {
            "stopCode": "TerminationNotice",
            "stoppedReason": "Host EC2 (instance i-0abc) terminated.",
            "startedAt": True,
        },
        9,
        "may have committed",
    ),
]


@pytest.mark.parametrize(("_name", "stop", "code", "says"), STOPS, ids=[s[0] for s in STOPS])
def test_how_a_task_stopped_decides_the_exit_code_and_the_message(
    aws: awsemu.Emulator, _name: str, stop: dict[str, Any], code: int, says: str
) -> None:
    """Scripted: DescribeTasks, once moto's task has STOPPED, reports the stop as ECS
    does for each case."""
    net = setup_ecs(aws)

    def stopped(task: dict[str, Any]) -> None:
        task["stopCode"] = stop["stopCode"]
        task["stoppedReason"] = stop.get("stoppedReason", "Essential container in task exited")
        if stop.get("startedAt"):
            task["startedAt"] = task.get("createdAt", time.time())
        else:
            task.pop("startedAt", None)
        container: dict[str, Any] = {"name": "bootstrap", "lastStatus": "STOPPED"}
        if "exitCode" in stop:
            container["exitCode"] = stop["exitCode"]
        if "reason" in stop:
            container["reason"] = stop["reason"]
        task["containers"] = [container]

    on_stopped(aws, stopped)
    run = ecs_run(aws, net)
    assert run.code == code, run
    assert says in run.result["error"]["message"], run.result["error"]


def test_deadline_of_ecs_run_names_its_own_setting(aws: awsemu.Emulator) -> None:
    net = setup_ecs(aws)
    aws.state.throttle_forever.add("ecs")
    run = ecs_run(aws, net, "--deadline", "2")
    assert run.code == 5, run
    assert "ECS_DEADLINE_SECONDS=2" in run.result["error"]["message"]
    assert "DEADLINE_SECONDS=2" not in run.result["error"]["message"].replace(
        "ECS_DEADLINE_SECONDS=2", ""
    )


def test_a_sidecar_that_failed_before_the_container_ran_is_never_ran(
    aws: awsemu.Emulator,
) -> None:
    """Scripted: an essential sidecar failed before the job's container started (it
    depends on it): the task has startedAt, the job's container no exit code and was
    never RUNNING. It never ran (8), rather than ran and lost its code (9)."""
    net = setup_ecs(aws)

    def stopped(task: dict[str, Any]) -> None:
        task["stopCode"] = "EssentialContainerExited"
        task["stoppedReason"] = "Essential container in task exited"
        task["startedAt"] = task.get("createdAt", time.time())
        task["containers"] = [
            {"name": "bootstrap", "lastStatus": "STOPPED"},
            {"name": "proxy", "lastStatus": "STOPPED", "exitCode": 1, "reason": "bad config"},
        ]

    on_stopped(aws, stopped)
    run = ecs_run(aws, net)
    assert run.code == 8, run
    assert "proxy failed first" in run.result["error"]["message"]


def test_the_log_tail_reads_the_region_of_the_log_group(aws: awsemu.Emulator) -> None:
    """The task definition's awslogs-region, not the session's, holds the stream."""
    net = setup_ecs(aws)
    region = "eu-west-1"
    logs = aws.admin("logs", region)
    logs.create_log_group(logGroupName=GROUP)
    definition = aws.admin("ecs").describe_task_definition(taskDefinition=FAMILY)["taskDefinition"]
    containers = definition["containerDefinitions"]
    containers[0]["logConfiguration"]["options"]["awslogs-region"] = region
    aws.admin("ecs").register_task_definition(
        family="aurora-bootstrap-eu",
        networkMode="awsvpc",
        requiresCompatibilities=["FARGATE"],
        cpu="256",
        memory="512",
        containerDefinitions=containers,
    )

    def write(service: str, operation: str, body: bytes) -> bytes:
        if operation == "RunTask":
            task_id = json.loads(body)["tasks"][0]["taskArn"].rsplit("/", 1)[-1]
            stream = f"{PREFIX}/bootstrap/{task_id}"
            logs.create_log_stream(logGroupName=GROUP, logStreamName=stream)
            logs.put_log_events(
                logGroupName=GROUP,
                logStreamName=stream,
                logEvents=[
                    {"timestamp": int(time.time() * 1000), "message": json.dumps(JOB_RESULT)}
                ],
            )
        return body

    aws.state.rewrites.append(write)
    run = ecs_run(aws, net, "--task-definition", "aurora-bootstrap-eu")
    assert run.code == 0, run
    assert run.result["task_result"] == JOB_RESULT


def test_env_overrides_past_runtasks_limit_exit_2_before_any_call(aws: awsemu.Emulator) -> None:
    net = setup_ecs(aws)
    calls = len(aws.state.calls)
    run = ecs_run(aws, net, "--env", "IAM_USERS=" + "u" * 8200)
    assert run.code == 2, run
    assert run.result["error"]["message"].startswith("--env:"), run.result
    assert "8192" in run.result["error"]["message"]
    assert len(aws.state.calls) == calls, "no AWS call was made"
