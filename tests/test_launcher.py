"""The launcher of Custom::AuroraBootstrap (deploy/launcher.py, the template's inline
Lambda code), called as Lambda calls it, against moto's ECS through the recording
proxy, with a loopback server as CloudFormation's response URL."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import socket
import sys
import threading
import time
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
REQUESTS = "/aurora-bootstrap/db/requests"


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


def register(aws: awsemu.Emulator, image: str) -> str:
    """A revision of the stack's task definition family, with `image`."""
    definition = aws.admin("ecs").register_task_definition(
        family=FAMILY,
        networkMode="awsvpc",
        requiresCompatibilities=["FARGATE"],
        cpu="256",
        memory="512",
        containerDefinitions=[
            {"name": "bootstrap", "image": image, "memory": 512, "essential": True}
        ],
    )["taskDefinition"]
    return str(definition["taskDefinitionArn"])


@pytest.fixture
def ecs(aws: awsemu.Emulator, monkeypatch: pytest.MonkeyPatch) -> awsemu.Emulator:
    """A cluster, a task definition and a network, and the launcher's environment as
    the template sets it; boto3 in this process reaches moto through the proxy."""
    _vpc, [subnet], group = awsemu.fargate_network(aws.admin("ec2"), "10.2")
    aws.admin("ecs").create_cluster(clusterName=CLUSTER)
    definition = {"taskDefinitionArn": register(aws, "aurora-bootstrap:1.0")}
    for key, value in awsemu.client_env(aws.url).items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("AWS_DEFAULT_REGION", awsemu.REGION)  # Lambda's runtime sets both
    monkeypatch.setenv("CLUSTER", CLUSTER)
    monkeypatch.setenv("TASK_DEFINITION", definition["taskDefinitionArn"])
    monkeypatch.setenv("CONTAINER", "bootstrap")
    monkeypatch.setenv("SUBNETS", subnet)
    monkeypatch.setenv("SECURITY_GROUP", group)
    monkeypatch.setenv("REQUESTS", REQUESTS)
    monkeypatch.setenv("DEADLINE_SECONDS", "300")
    return aws


class Context:
    """Lambda's context, as far as the launcher reads it: the time left."""

    def __init__(self, seconds: float) -> None:
        self.until = time.monotonic() + seconds

    def get_remaining_time_in_millis(self) -> int:
        return int((self.until - time.monotonic()) * 1000)


def kept_url(aws: awsemu.Emulator, name: str) -> str | None:
    """The ResponseURL the launcher keeps in SSM for a request, if it is still there."""
    try:
        found = aws.admin("ssm").get_parameter(Name=name, WithDecryption=True)
    except aws.admin("ssm").exceptions.ParameterNotFound:
        return None
    return str(found["Parameter"]["Value"])


def forwarded(body: dict[str, Any]) -> dict[str, Any]:
    [container] = body["overrides"]["containerOverrides"]
    env = {e["name"]: e["value"] for e in container["environment"]}
    request: dict[str, Any] = json.loads(env["CFN_REQUEST"])
    return request


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
    assert launcher.handler(sent, Context(60)) == "STARTED"
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
    assert {e["name"] for e in container["environment"]} == {"CFN_REQUEST", "DEADLINE_SECONDS"}
    assert len(json.dumps(body["overrides"], separators=(",", ":"))) <= 8192
    request = forwarded(body)
    # What the worker needs, and no more: not the old properties, nor the properties
    # that are CloudFormation's or the launcher's own.
    assert request["ResourceProperties"] == {"IamUsers": "app_user:app_readwrite", "Prune": "true"}
    assert "OldResourceProperties" not in request
    assert request.get("PhysicalResourceId") == sent.get("PhysicalResourceId")
    # The ResponseURL is nowhere in what RunTask was sent (DescribeTasks, CloudTrail
    # and ECS's events show it): it is in SSM, under the stack's path.
    assert "ResponseURL" not in request
    assert cfn.signature not in json.dumps(body) and "127.0.0.1" not in json.dumps(body)
    assert request["ResponseURLParameter"].startswith(REQUESTS + "/")
    assert kept_url(ecs, request["ResponseURLParameter"]) == cfn.url
    # The worker reads it as it was sent.
    parsed = cfnrequest.parse(json.dumps(request))
    assert parsed.request_id == sent["RequestId"] and parsed.response_url == ""
    assert parsed.url_parameter == request["ResponseURLParameter"]
    assert cfnrequest.overrides(parsed) == {"IAM_USERS": "app_user:app_readwrite", "PRUNE": "true"}
    [task] = tasks(ecs)
    assert task["startedBy"] == "aurora-bootstrap-cfn"
    assert cfn.signature not in json.dumps(task, default=str)
    tagged = ecs.admin("ecs").describe_tasks(
        cluster=CLUSTER, tasks=[task["taskArn"]], include=["TAGS"]
    )
    assert cfn.signature not in json.dumps(tagged, default=str)
    # The same invocation again (Lambda retries an event it thinks failed): the same token.
    launcher.handler(sent, Context(60))
    assert len({b["clientToken"] for b in run_task_bodies(ecs)}) == 1


@pytest.mark.parametrize(
    ("timeout", "deadline"), [(None, "300"), ("900", "300"), ("300", "180"), ("3600", "300")]
)
def test_the_runs_deadline_ends_before_the_service_timeout(
    ecs: awsemu.Emulator, cfn: ResponseServer, timeout: str | None, deadline: str
) -> None:
    """ServiceTimeout less the 120 s a Fargate task may take to start, and never more
    than the stack's DeadlineSeconds (300 here); CloudFormation's own 3,600 without one."""
    sent = event(cfn.url, IamUsers="alice")
    if timeout is None:
        del sent["ResourceProperties"]["ServiceTimeout"]
    else:
        sent["ResourceProperties"]["ServiceTimeout"] = timeout
    assert launcher.handler(sent, Context(60)) == "STARTED"
    [body] = run_task_bodies(ecs)
    [container] = body["overrides"]["containerOverrides"]
    env = {e["name"]: e["value"] for e in container["environment"]}
    assert env["DEADLINE_SECONDS"] == deadline
    assert int(env["DEADLINE_SECONDS"]) + 120 <= int(timeout or 3600)


def test_a_service_timeout_too_short_for_any_run_is_answered_failed(
    ecs: awsemu.Emulator, cfn: ResponseServer
) -> None:
    sent = event(cfn.url, IamUsers="alice")
    sent["ResourceProperties"]["ServiceTimeout"] = "150"
    assert launcher.handler(sent, Context(60)) == "FAILED"
    assert run_task_bodies(ecs) == []
    assert "at least 180" in cfn.puts[0].json["Reason"]


def test_delete_is_answered_without_a_task(ecs: awsemu.Emulator, cfn: ResponseServer) -> None:
    sent = event(cfn.url, "Delete", IamUsers="app_user")
    assert launcher.handler(sent, Context(60)) == "SUCCESS"
    assert run_task_bodies(ecs) == [] and tasks(ecs) == []
    [put] = cfn.puts
    assert put.headers["content-type"] == ""
    assert put.json["Status"] == "SUCCESS"
    assert put.json["PhysicalResourceId"] == sent["PhysicalResourceId"]
    assert put.json["RequestId"] == sent["RequestId"]


def test_a_delete_during_a_running_create_stops_that_task_first(
    ecs: awsemu.Emulator, cfn: ResponseServer
) -> None:
    """CloudFormation sends Delete while the Create still runs when another resource of
    the stack failed: the Create's task is stopped (SIGTERM: its run rolls back), and
    only then is the Delete answered. Another resource's task runs on."""
    create = event(cfn.url, IamUsers="alice")
    assert launcher.handler(create, Context(60)) == "STARTED"
    other = event(cfn.url, IamUsers="bob") | {"LogicalResourceId": "OtherUsers"}
    assert launcher.handler(other, Context(60)) == "STARTED"
    delete = event(cfn.url, "Delete", IamUsers="alice")
    delete["PhysicalResourceId"] = cfnrequest.parse(json.dumps(create)).resource_id
    assert launcher.handler(delete, Context(60)) == "SUCCESS"
    stopped = [call for call in ecs.state.calls if call == ("ecs", "StopTask")]
    assert len(stopped) == 1
    by_resource = {forwarded_task(t)["LogicalResourceId"]: t for t in tasks(ecs)}
    assert by_resource["DatabaseUsers"]["desiredStatus"] == "STOPPED"
    assert by_resource["OtherUsers"]["desiredStatus"] == "RUNNING"
    [put] = cfn.puts
    assert put.json["Status"] == "SUCCESS" and "was stopped" in put.json["Reason"]
    assert put.json["RequestId"] == delete["RequestId"]


def forwarded_task(task: dict[str, Any]) -> dict[str, Any]:
    return forwarded({"overrides": task["overrides"]})


def test_a_request_past_runtasks_8_kib_is_answered_failed(
    ecs: awsemu.Emulator, cfn: ResponseServer
) -> None:
    users = ",".join(f"user_{i:04d}:app_readonly" for i in range(400))
    assert launcher.handler(event(cfn.url, IamUsers=users), Context(60)) == "FAILED"
    assert run_task_bodies(ecs) == []
    reason = cfn.puts[0].json["Reason"]
    assert "8192" in reason and "task definition" in reason


def test_runtask_errors_and_failures_are_answered_failed(
    ecs: awsemu.Emulator, cfn: ResponseServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    ecs.state.errors[("ecs", "RunTask")] = (400, "AccessDeniedException")
    sent = event(cfn.url, IamUsers="alice")
    assert launcher.handler(sent, Context(60)) == "FAILED"
    assert "AccessDeniedException" in cfn.puts[-1].json["Reason"]
    # No task will answer: the request's URL is not kept.
    assert kept_url(ecs, launcher.parameter_name(sent)) is None
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


def stop_in_ecs(aws: awsemu.Emulator, stopped: dict[str, Any]) -> None:
    """ECS's own answer for the task from now on: as the event says. Scripted in the
    proxy: moto never stops a task by itself, and the launcher believes ECS, not the
    event it was invoked with."""
    detail = stopped["detail"]

    def as_stopped(service: str, operation: str, data: bytes) -> bytes:
        if operation != "DescribeTasks":
            return data
        answer = json.loads(data)
        answer["tasks"] = [
            detail if t.get("taskArn") == detail["taskArn"] else t for t in answer.get("tasks", [])
        ]
        return json.dumps(answer).encode()

    aws.state.rewrites.append(as_stopped)


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
        # An image too old to know custom-resource, or a request it could not read.
        (2, {"stoppedReason": "Essential container in task exited"}, "predates custom-resource"),
        (6, {"stoppedReason": "Essential container in task exited"}, "exited 6 unanswered"),
    ],
    ids=["image-pull", "secrets", "undelivered", "killed", "old-image", "died-before-answering"],
)
def test_a_task_that_did_not_answer_is_answered_failed_once(
    ecs: awsemu.Emulator,
    cfn: ResponseServer,
    exit_code: int | None,
    stop: dict[str, str],
    expected: str,
) -> None:
    sent = event(cfn.url, IamUsers="alice")
    launcher.handler(sent, Context(60))
    [task] = tasks(ecs)
    stopped = stopped_event(task, exit_code, **stop)
    stop_in_ecs(ecs, stopped)
    assert launcher.handler(stopped, Context(60)) == "FAILED"
    [put] = cfn.puts
    assert put.json["Status"] == "FAILED" and expected in put.json["Reason"]
    assert put.json["RequestId"] == sent["RequestId"]
    assert put.json["PhysicalResourceId"] == cfnrequest.parse(json.dumps(sent)).resource_id
    # Once: the URL is gone, and the same event again (EventBridge delivers at least
    # once) answers nothing more.
    assert kept_url(ecs, launcher.parameter_name(sent)) is None
    assert launcher.handler(stopped, Context(60)) is None
    assert len(cfn.puts) == 1


@pytest.mark.parametrize("exit_code", [0, 6, 143])
def test_a_task_that_answered_is_left_to_its_answer(
    ecs: awsemu.Emulator, cfn: ResponseServer, exit_code: int
) -> None:
    """The worker deletes the URL's parameter once its answer is delivered (exit 0
    means SUCCESS delivered, whatever became of the parameter)."""
    sent = event(cfn.url, IamUsers="alice")
    launcher.handler(sent, Context(60))
    [task] = tasks(ecs)
    if exit_code != 0:
        ecs.admin("ssm").delete_parameter(Name=launcher.parameter_name(sent))
    stopped = stopped_event(task, exit_code, stoppedReason="Essential container in task exited")
    stop_in_ecs(ecs, stopped)
    assert launcher.handler(stopped, Context(60)) is None
    assert cfn.puts == []
    assert kept_url(ecs, launcher.parameter_name(sent)) is None


def test_a_forged_event_is_ignored(ecs: awsemu.Emulator, cfn: ResponseServer) -> None:
    """Whoever may invoke the function could send it any event: one of another
    startedBy, of another cluster, of another family, or one that says a task stopped
    which ECS says still runs, answers nothing."""
    sent = event(cfn.url, IamUsers="alice")
    launcher.handler(sent, Context(60))
    [task] = tasks(ecs)
    genuine = stopped_event(task, 137)
    arn = f"arn:aws:ecs:{awsemu.REGION}:{awsemu.ACCOUNT}"
    forged = [
        genuine | {"detail": genuine["detail"] | {"startedBy": "someone-else"}},
        genuine | {"detail": genuine["detail"] | {"clusterArn": f"{arn}:cluster/other"}},
        genuine
        | {"detail": genuine["detail"] | {"taskDefinitionArn": f"{arn}:task-definition/x:1"}},
        genuine,  # ECS itself says the task runs
    ]
    for invocation in forged:
        assert launcher.handler(invocation, Context(60)) is None
    assert cfn.puts == []
    assert kept_url(ecs, launcher.parameter_name(sent)) == cfn.url


def test_a_rollback_runs_the_old_task_definition_and_never_strands_the_stack(
    ecs: awsemu.Emulator, cfn: ResponseServer
) -> None:
    """The Update CloudFormation sends while rolling back carries the old properties:
    its task is the old revision the resource's Triggers name, marked as a rollback,
    and if it cannot answer (a database it cannot reach), the launcher answers
    SUCCESS, saying so, so that the stack does not end in UPDATE_ROLLBACK_FAILED.
    Scripted: moto's CloudFormation has no stack rolling back; its DescribeStacks
    answer is rewritten to say so."""
    admin = ecs.admin("cloudformation")
    stack = admin.create_stack(
        StackName="db",
        TemplateBody=json.dumps(
            {"Resources": {"Handle": {"Type": "AWS::CloudFormation::WaitConditionHandle"}}}
        ),
    )["StackId"]

    def rolling_back(service: str, operation: str, data: bytes) -> bytes:
        if operation != "DescribeStacks":
            return data
        return data.replace(b">CREATE_COMPLETE<", b">UPDATE_ROLLBACK_IN_PROGRESS<")

    ecs.state.rewrites.append(rolling_back)
    old = os.environ["TASK_DEFINITION"]
    newer = register(ecs, "aurora-bootstrap:2.0")
    os.environ["TASK_DEFINITION"] = newer  # the stack's current one, as the Lambda has it
    sent = event(cfn.url, "Update", IamUsers="alice") | {"StackId": stack}
    sent["ResourceProperties"]["Triggers"]["TaskDefinition"] = old
    assert launcher.handler(sent, Context(60)) == "STARTED"
    [body] = run_task_bodies(ecs)
    assert body["taskDefinition"] == old
    assert forwarded(body)["Rollback"] is True
    [task] = tasks(ecs)
    stopped = stopped_event(task, 5, stoppedReason="Essential container in task exited")
    stop_in_ecs(ecs, stopped)
    assert launcher.handler(stopped, Context(60)) == "SUCCESS"
    [put] = cfn.puts
    assert put.json["Status"] == "SUCCESS"
    assert "rollback run did not apply the old properties" in put.json["Reason"]
    assert put.json["PhysicalResourceId"] == sent["PhysicalResourceId"]


def test_the_triggers_name_the_task_definition_of_a_rollback_alone_and_of_this_family(
    ecs: awsemu.Emulator, cfn: ResponseServer
) -> None:
    arn = f"arn:aws:ecs:{awsemu.REGION}:{awsemu.ACCOUNT}:task-definition"
    for named in (f"{arn}/someone-elses:3", f"{arn}/{FAMILY}:1"):
        sent = event(cfn.url, "Update", IamUsers="alice")
        sent["ResourceProperties"]["Triggers"]["TaskDefinition"] = named
        assert launcher.handler(sent, Context(60)) == "STARTED"  # not a rollback
        body = run_task_bodies(ecs)[-1]
        assert body["taskDefinition"] == os.environ["TASK_DEFINITION"]
        assert "Rollback" not in forwarded(body)
    assert task_definition_of_a_rollback(f"{arn}/someone-elses:3") == os.environ["TASK_DEFINITION"]


def task_definition_of_a_rollback(named: str) -> str:
    request = {"ResourceProperties": {"Triggers": {"TaskDefinition": named}}}
    return str(launcher.task_definition(request, True))


class Silent:
    """An endpoint that takes connections and never answers: an AWS API that hangs."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.held: list[socket.socket] = []
        threading.Thread(target=self._hold, daemon=True).start()

    def _hold(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.held.append(conn)

    def close(self) -> None:
        for conn in self.held:
            conn.close()
        self.sock.close()


def test_a_runtask_that_never_answers_is_answered_failed_within_the_invocation(
    ecs: awsemu.Emulator, cfn: ResponseServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    silent = Silent()
    monkeypatch.setenv("AWS_ENDPOINT_URL_ECS", silent.url)
    try:
        started = time.monotonic()
        answered = launcher.handler(event(cfn.url, IamUsers="alice"), Context(30))
        took = time.monotonic() - started
    finally:
        silent.close()
    assert answered == "FAILED"  # and no exception: Lambda would invoke it again
    assert took < 30, took
    [put] = cfn.puts
    assert put.json["Status"] == "FAILED" and "RunTask failed" in put.json["Reason"]


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
        launcher.handler(
            stopped_event(task, None, stoppedReason="CannotPullContainerError"), Context(60)
        )
        is None
    )
    assert cfn.puts == []


def test_any_failure_of_the_launcher_itself_is_answered_failed(
    ecs: awsemu.Emulator, cfn: ResponseServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CONTAINER")
    # Answered, so nothing is raised: Lambda would invoke it again, and it would answer
    # again.
    assert launcher.handler(event(cfn.url, IamUsers="alice"), Context(60)) == "FAILED"
    [put] = cfn.puts
    assert put.json["Status"] == "FAILED" and "launcher: KeyError" in put.json["Reason"]


def test_the_launchers_answer_is_retried_on_5xx_and_never_logs_the_url(
    ecs: awsemu.Emulator, cfn: ResponseServer, capsys: pytest.CaptureFixture[str]
) -> None:
    cfn.replies.statuses = [503]
    assert launcher.handler(event(cfn.url, "Delete"), Context(60)) == "SUCCESS"
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
