"""The launcher of Custom::AuroraBootstrap (deploy/launcher.py, the template's inline
Lambda code), called as Lambda calls it, against moto's ECS through the recording
proxy, with a loopback server as CloudFormation's response URL."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from app.cfn import request as cfnrequest
from tests import awsemu, cfnserver
from tests.cfnserver import TOKEN, ResponseServer

ROOT = Path(__file__).resolve().parent.parent
LAUNCHER = ROOT / "deploy" / "launcher.py"
CLUSTER = "deploys"
FAMILY = "aurora-bootstrap-db"


def load_launcher() -> ModuleType:
    """The file as Lambda loads it (CloudFormation names it index.py)."""
    spec = importlib.util.spec_from_file_location("index", LAUNCHER)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


launcher = load_launcher()


@pytest.fixture
def cfn() -> Iterator[ResponseServer]:
    server = ResponseServer()
    yield server
    server.stop()


@pytest.fixture
def ecs(aws: awsemu.Emulator, monkeypatch: pytest.MonkeyPatch) -> awsemu.Emulator:
    """A cluster, a task definition and a network, and the launcher's environment as
    the template sets it; boto3 in this process reaches moto through the proxy."""
    _vpc, [subnet], group = awsemu.fargate_network(aws.admin("ec2"), "10.2")
    aws.admin("ecs").create_cluster(clusterName=CLUSTER)
    definition = aws.admin("ecs").register_task_definition(
        family=FAMILY,
        networkMode="awsvpc",
        requiresCompatibilities=["FARGATE"],
        cpu="256",
        memory="512",
        containerDefinitions=[
            {"name": "bootstrap", "image": "aurora-bootstrap:1.0", "memory": 512, "essential": True}
        ],
    )["taskDefinition"]
    for key, value in awsemu.client_env(aws.url).items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("AWS_DEFAULT_REGION", awsemu.REGION)  # Lambda's runtime sets both
    monkeypatch.setenv("CLUSTER", CLUSTER)
    monkeypatch.setenv("TASK_DEFINITION", definition["taskDefinitionArn"])
    monkeypatch.setenv("CONTAINER", "bootstrap")
    monkeypatch.setenv("SUBNETS", subnet)
    monkeypatch.setenv("SECURITY_GROUP", group)
    return aws


def event(url: str, request_type: str = "Create", **properties: Any) -> dict[str, Any]:
    """The request as CloudFormation invokes the launcher with it: also with its own
    and the launcher's properties, and on Update the old ones."""
    physical = None if request_type == "Create" else "aurora-bootstrap-DatabaseUsers-0123"
    own = {"ServiceTimeout": "900", "Triggers": {"Image": "aurora-bootstrap:1.0"}}
    request = cfnserver.request(url, request_type, physical, **own, **properties)
    if request_type != "Create":
        request["OldResourceProperties"] = {"ServiceToken": TOKEN, "IamUsers": "old_user"}
    return request


def run_task_bodies(aws: awsemu.Emulator) -> list[dict[str, Any]]:
    return [
        json.loads(body)
        for (service, operation), body in zip(aws.state.calls, aws.state.bodies, strict=True)
        if service == "ecs" and operation == "RunTask"
    ]


def tasks(aws: awsemu.Emulator) -> list[dict[str, Any]]:
    ecs = aws.admin("ecs")
    arns = ecs.list_tasks(cluster=CLUSTER)["taskArns"]
    found: list[dict[str, Any]] = (
        ecs.describe_tasks(cluster=CLUSTER, tasks=arns)["tasks"] if arns else []
    )
    return found


@pytest.mark.parametrize("request_type", ["Create", "Update"])
def test_create_and_update_run_the_task_with_the_request_and_answer_nothing(
    ecs: awsemu.Emulator, cfn: ResponseServer, request_type: str
) -> None:
    sent = event(cfn.url, request_type, IamUsers="app_user:app_readwrite", Prune="true")
    assert launcher.handler(sent) == "STARTED"
    assert cfn.puts == []  # the task answers
    [body] = run_task_bodies(ecs)
    # One token per request: Lambda's retry of this invocation gets the task already
    # started (ECS's idempotency; moto does not keep tokens, so only the token is shown).
    assert body["clientToken"] == hashlib.sha256(sent["RequestId"].encode()).hexdigest()
    assert len(body["clientToken"]) <= 64
    assert body["startedBy"] == "aurora-bootstrap-cfn"
    assert body["launchType"] == "FARGATE"
    assert body["networkConfiguration"]["awsvpcConfiguration"]["assignPublicIp"] == "DISABLED"
    [container] = body["overrides"]["containerOverrides"]
    assert container["name"] == "bootstrap" and container["command"] == ["custom-resource"]
    [variable] = container["environment"]
    assert variable["name"] == "CFN_REQUEST"
    assert len(json.dumps(body["overrides"], separators=(",", ":"))) <= 8192
    forwarded = json.loads(variable["value"])
    # What the worker needs, and no more: not the old properties, nor the properties
    # that are CloudFormation's or the launcher's own.
    assert forwarded["ResourceProperties"] == {
        "IamUsers": "app_user:app_readwrite",
        "Prune": "true",
    }
    assert "OldResourceProperties" not in forwarded
    assert forwarded.get("PhysicalResourceId") == sent.get("PhysicalResourceId")
    # The worker reads it as it was sent.
    request = cfnrequest.parse(variable["value"])
    assert request.request_id == sent["RequestId"] and request.response_url == cfn.url
    assert cfnrequest.overrides(request) == {"IAM_USERS": "app_user:app_readwrite", "PRUNE": "true"}
    [task] = tasks(ecs)
    assert task["startedBy"] == "aurora-bootstrap-cfn"
    # The same invocation again (Lambda retries an event it thinks failed): the same token.
    launcher.handler(sent)
    assert len({b["clientToken"] for b in run_task_bodies(ecs)}) == 1


def test_delete_is_answered_without_a_task(ecs: awsemu.Emulator, cfn: ResponseServer) -> None:
    sent = event(cfn.url, "Delete", IamUsers="app_user")
    assert launcher.handler(sent) == "SUCCESS"
    assert run_task_bodies(ecs) == [] and tasks(ecs) == []
    [put] = cfn.puts
    assert put.headers["content-type"] == ""
    assert put.json["Status"] == "SUCCESS"
    assert put.json["PhysicalResourceId"] == sent["PhysicalResourceId"]
    assert put.json["RequestId"] == sent["RequestId"]


def test_a_request_past_runtasks_8_kib_is_answered_failed(
    ecs: awsemu.Emulator, cfn: ResponseServer
) -> None:
    users = ",".join(f"user_{i:04d}:app_readonly" for i in range(400))
    assert launcher.handler(event(cfn.url, IamUsers=users)) == "FAILED"
    assert run_task_bodies(ecs) == []
    reason = cfn.puts[0].json["Reason"]
    assert "8192" in reason and "task definition" in reason


def test_runtask_errors_and_failures_are_answered_failed(
    ecs: awsemu.Emulator, cfn: ResponseServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    ecs.state.errors[("ecs", "RunTask")] = (400, "AccessDeniedException")
    assert launcher.handler(event(cfn.url, IamUsers="alice")) == "FAILED"
    assert "AccessDeniedException" in cfn.puts[-1].json["Reason"]
    ecs.state.errors.clear()

    monkeypatch.setenv("CLUSTER", "no-such-cluster")
    assert launcher.handler(event(cfn.url, IamUsers="alice")) == "FAILED"
    assert "ClusterNotFoundException" in cfn.puts[-1].json["Reason"]
    monkeypatch.setenv("CLUSTER", CLUSTER)

    # Scripted: moto always places a task; ECS answers no capacity with `failures`.
    def no_capacity(service: str, operation: str, data: bytes) -> bytes:
        if operation != "RunTask":
            return data
        return json.dumps(
            {"tasks": [], "failures": [{"arn": "cluster", "reason": "RESOURCE:MEMORY"}]}
        ).encode()

    ecs.state.rewrites.append(no_capacity)
    assert launcher.handler(event(cfn.url, IamUsers="alice")) == "FAILED"
    assert cfn.puts[-1].json["Reason"] == "RunTask started no task: cluster RESOURCE:MEMORY"
    assert {p.json["Status"] for p in cfn.puts} == {"FAILED"}


def stopped_event(task: dict[str, Any], exit_code: int | None, **stop: str) -> dict[str, Any]:
    """The ECS Task State Change event EventBridge delivers (its detail is the task, as
    DescribeTasks gives it), for moto's task stopped as `stop` says. Scripted: moto's
    ECS emits no events and never stops a task by itself."""
    detail = json.loads(json.dumps(task, default=str))
    detail |= {"lastStatus": "STOPPED", "desiredStatus": "STOPPED", **stop}
    for container in detail["containers"]:
        container["lastStatus"] = "STOPPED"
        container.pop("exitCode", None)
        if exit_code is not None:
            container["exitCode"] = exit_code
    return {
        "version": "0",
        "id": str(uuid.uuid4()),
        "detail-type": "ECS Task State Change",
        "source": "aws.ecs",
        "account": awsemu.ACCOUNT,
        "region": awsemu.REGION,
        "resources": [task["taskArn"]],
        "detail": detail,
    }


@pytest.mark.parametrize(
    ("exit_code", "stop", "expected"),
    [
        (
            None,
            {
                "stopCode": "TaskFailedToStart",
                "stoppedReason": "CannotPullContainerError: pull access denied for bootstrap",
            },
            "the task stopped before its container ran: TaskFailedToStart; "
            "CannotPullContainerError: pull access denied for bootstrap",
        ),
        (
            None,
            {
                "stopCode": "TaskFailedToStart",
                "stoppedReason": "ResourceInitializationError: unable to pull secrets",
            },
            "ResourceInitializationError: unable to pull secrets",
        ),
        (11, {"stoppedReason": "Essential container in task exited"}, "do its subnets reach S3?"),
        (137, {"stoppedReason": "OutOfMemoryError: Container killed"}, "exited 137 unanswered"),
        (0, {"stoppedReason": "Essential container in task exited"}, None),
        (6, {"stoppedReason": "Essential container in task exited"}, None),
        (143, {"stoppedReason": "Task stopped by user"}, None),
    ],
    ids=["image-pull", "secrets", "undelivered", "killed", "success", "failed", "stopped"],
)
def test_a_task_that_could_not_answer_is_answered_failed(
    ecs: awsemu.Emulator,
    cfn: ResponseServer,
    exit_code: int | None,
    stop: dict[str, str],
    expected: str | None,
) -> None:
    sent = event(cfn.url, IamUsers="alice")
    launcher.handler(sent)
    [task] = tasks(ecs)
    answered = launcher.handler(stopped_event(task, exit_code, **stop))
    if expected is None:
        # The worker ran and answered itself (exit 0 SUCCESS, else FAILED).
        assert answered is None and cfn.puts == []
        return
    assert answered == "FAILED"
    [put] = cfn.puts
    assert put.json["Status"] == "FAILED" and expected in put.json["Reason"]
    assert put.json["RequestId"] == sent["RequestId"]
    assert put.json["PhysicalResourceId"] == cfnrequest.parse(json.dumps(sent)).resource_id


def test_a_task_not_started_by_the_launcher_is_left_alone(
    ecs: awsemu.Emulator, cfn: ResponseServer
) -> None:
    network = {"subnets": [os.environ["SUBNETS"]], "securityGroups": [os.environ["SECURITY_GROUP"]]}
    ecs.admin("ecs").run_task(  # as ecs-run starts it
        cluster=CLUSTER,
        taskDefinition=FAMILY,
        launchType="FARGATE",
        startedBy="aurora-bootstrap",
        networkConfiguration={"awsvpcConfiguration": network},
    )
    [task] = tasks(ecs)
    assert (
        launcher.handler(stopped_event(task, None, stoppedReason="CannotPullContainerError"))
        is None
    )
    assert cfn.puts == []


def test_any_failure_of_the_launcher_itself_is_answered_failed(
    ecs: awsemu.Emulator, cfn: ResponseServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CONTAINER")
    with pytest.raises(KeyError):
        launcher.handler(event(cfn.url, IamUsers="alice"))
    [put] = cfn.puts
    assert put.json["Status"] == "FAILED" and "launcher: KeyError" in put.json["Reason"]


def test_the_launchers_answer_is_retried_on_5xx_and_never_logs_the_url(
    ecs: awsemu.Emulator, cfn: ResponseServer, capsys: pytest.CaptureFixture[str]
) -> None:
    cfn.replies.statuses = [503]
    assert launcher.handler(event(cfn.url, "Delete")) == "SUCCESS"
    assert len(cfn.puts) == 2
    printed = capsys.readouterr()
    assert cfn.signature not in printed.out + printed.err
    assert "127.0.0.1" not in printed.out


def test_the_launcher_needs_nothing_beyond_the_standard_library_and_boto3() -> None:
    tree = LAUNCHER.read_text()
    imported = {
        line.split()[1].split(".")[0]
        for line in tree.splitlines()
        if line.startswith(("import ", "from "))
    }
    # botocore is boto3's own; Lambda's Python runtime carries both.
    assert imported <= {*sys.stdlib_module_names, "boto3", "botocore"}, imported
