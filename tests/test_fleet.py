"""The fleet: deploy/fleet.asl.json validated by asl-validator, deploy/fleet.yaml by
cfn-lint and its role action by action, and fleet-run against moto's Step Functions.

moto runs no ECS integration: its executions stay RUNNING with a canned history. Each
test scripts, through the emulator's proxy, what Step Functions answers as the
execution runs (DescribeExecution's status and output, GetExecutionHistory's events),
and says what it scripts.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from cfnlint.decode import decode

from tests import awsemu
from tests.conftest import job_env, npm_tool, run_job
from tests.test_deploy import actions, run_build_commands, statements

ROOT = Path(__file__).resolve().parent.parent
ASL = ROOT / "deploy" / "fleet.asl.json"
TEMPLATE = ROOT / "deploy" / "fleet.yaml"
CONTAINER = "bootstrap"


def _asl_validator() -> Path:
    return npm_tool("asl-validator")


def test_the_definition_is_valid_and_the_validator_would_say_otherwise(tmp_path: Path) -> None:
    tool = _asl_validator()
    done = subprocess.run(
        [str(tool), "--json-path", str(ASL)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    broken = json.loads(ASL.read_text())
    broken["States"]["Targets"]["Next"] = "NoSuchState"
    (tmp_path / "broken.json").write_text(json.dumps(broken))
    refused = subprocess.run(
        [str(tool), "--json-path", str(tmp_path / "broken.json")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert refused.returncode != 0


def test_the_stack_lints_and_its_role_grants_exactly_what_runtask_sync_needs() -> None:
    done = subprocess.run(
        [str(Path(shutil.which("cfn-lint") or ROOT / ".venv/bin/cfn-lint")), str(TEMPLATE)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    data, matches = decode(str(TEMPLATE))
    assert not matches and data is not None
    granted = statements(data["Resources"]["StateMachineRole"]["Properties"]["Policies"])
    assert set().union(*(actions(s) for s in granted)) == {
        "ecs:RunTask",
        "ecs:StopTask",
        "ecs:DescribeTasks",
        "iam:PassRole",
        "events:PutTargets",
        "events:PutRule",
        "events:DescribeRule",
    }
    for statement in granted:
        assert statement["Resource"] != "*", statement
    [events] = [s for s in granted if "events:PutRule" in actions(s)]
    assert "StepFunctionsGetEventsForECSTaskRule" in json.dumps(events["Resource"])
    definition = data["Resources"]["StateMachine"]["Properties"]
    assert definition["DefinitionS3Location"] == "fleet.asl.json"
    assert data["Parameters"]["MaxConcurrency"]["Default"] == 5
    map_state = json.loads(ASL.read_text())["States"]["Targets"]
    task = map_state["ItemProcessor"]["States"]["RunTask"]
    assert task["Resource"] == "arn:aws:states:::ecs:runTask.sync"
    assert task["Catch"][0]["ErrorEquals"] == ["States.ALL"]


# --- fleet-run -----------------------------------------------------------------


class Fleet:
    """Scripts the execution: RUNNING for `running` looks, then `status`; the history
    holds each target's end as Step Functions writes it (the task's JSON in the
    TaskSucceeded output or the TaskFailed cause, then the row's Pass state), one more
    target per look, linked by previousEventId, paged newest first when asked."""

    PAGE = 4  # events per GetExecutionHistory page: small, so that paging happens

    def __init__(self, aws: awsemu.Emulator) -> None:
        self.aws = aws
        iam = aws.admin("iam")
        role = iam.create_role(RoleName="fleet", AssumeRolePolicyDocument="{}")["Role"]["Arn"]
        definition = ASL.read_text().replace("${MaxConcurrency}", "5")
        definition = definition.replace("${ToleratedFailures}", "0")
        self.arn = aws.admin("stepfunctions").create_state_machine(
            name="fleet", definition=definition, roleArn=role
        )["stateMachineArn"]
        self.running = 1
        self.status = "SUCCEEDED"
        self.ends: list[dict[str, Any]] = []
        self.failed_cause: str | None = None
        self.looks = 0
        self.events_sent = 0
        aws.state.rewrites.append(self.rewrite)

    def history(self) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = [{"id": 1, "type": "ExecutionStarted", "timestamp": 0}]

        def add(kind: str, previous: int, **details: Any) -> int:
            events.append(
                {"id": len(events) + 1, "type": kind, "timestamp": 0, "previousEventId": previous}
                | details
            )
            return len(events)

        for index, end in enumerate(self.ends[: self.looks]):
            start = add("MapIterationStarted", 1, mapIterationStartedEventDetails={"index": index})
            task = json.dumps(end["task"])
            if end["ok"]:
                done = add("TaskSucceeded", start, taskSucceededEventDetails={"output": task})
                row = {
                    "target": end["name"],
                    "ok": True,
                    "flag": "+",
                    "task_arn": end["task"]["TaskArn"],
                }
            else:
                done = add(
                    "TaskFailed",
                    start,
                    taskFailedEventDetails={"error": "States.TaskFailed", "cause": task},
                )
                row = {
                    "target": end["name"],
                    "ok": False,
                    "flag": end["name"],
                    "error": "States.TaskFailed",
                }
            exited = add("TaskStateExited", done, stateExitedEventDetails={"name": "RunTask"})
            entered = add("PassStateEntered", exited)
            add(
                "PassStateExited",
                entered,
                stateExitedEventDetails={
                    "name": "TargetSucceeded" if end["ok"] else "TargetFailed",
                    "output": json.dumps(row),
                },
            )
        if self.failed_cause is not None and self.looks > self.running:
            add(
                "ExecutionFailed",
                len(events),
                executionFailedEventDetails={
                    "error": "TooManyTargetsFailed",
                    "cause": self.failed_cause,
                },
            )
        return events

    def rewrite(self, service: str, operation: str, body: bytes) -> bytes:
        if operation == "DescribeExecution":
            data = json.loads(body)
            if "status" not in data:
                return body
            self.looks += 1
            if self.looks > self.running:
                data["status"] = self.status
            return json.dumps(data).encode()
        if operation == "GetExecutionHistory":
            asked = json.loads(self.aws.state.bodies[-1])
            events = self.history()
            if asked.get("reverseOrder"):
                events.reverse()
            start = int(asked.get("nextToken") or 0)
            page = events[start : start + self.PAGE]
            self.events_sent += len(page)
            answer: dict[str, Any] = {"events": page}
            if start + self.PAGE < len(events):
                answer["nextToken"] = str(start + self.PAGE)
            return json.dumps(answer).encode()
        return body


def task(name: str, exit_code: int | None = 0, **fields: Any) -> dict[str, Any]:
    """A stopped task as the .sync integration gives it (PascalCase); StopCode and
    StoppedReason only when given, as ECS may omit them."""
    container: dict[str, Any] = {"Name": CONTAINER}
    if exit_code is not None:
        container["ExitCode"] = exit_code
    return {
        "TaskArn": f"arn:aws:ecs:us-east-1:123456789012:task/pipeline/{name}",
        "LastStatus": "STOPPED",
        "Containers": [container],
    } | fields


def succeeded(name: str) -> dict[str, Any]:
    return {
        "name": name,
        "ok": True,
        "task": task(
            name,
            StopCode="EssentialContainerExited",
            StoppedReason="Essential container in task exited",
        ),
    }


def failed(name: str, stopped: dict[str, Any]) -> dict[str, Any]:
    """As ecs:runTask.sync fails a task: States.TaskFailed, the task as the cause."""
    return {"name": name, "ok": False, "task": stopped}


@pytest.fixture
def targets_file(tmp_path: Path) -> Path:
    path = tmp_path / "targets.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "defaults": {
                    "ecs_cluster": "pipeline",
                    "subnets": ["subnet-0aaa"],
                    "security_groups": ["sg-0bbb"],
                    "environment": {"IAM_USERS": "app_user:app_readwrite"},
                },
                "targets": [
                    {"name": "orders-prod", "task_definition": "aurora-bootstrap-orders"},
                    {
                        "name": "billing-prod",
                        "task_definition": "aurora-bootstrap-billing",
                        "environment": {"IAM_USERS": "billing_app"},
                    },
                ],
            }
        )
    )
    return path


@pytest.fixture
def fleet(aws: awsemu.Emulator) -> Iterator[Fleet]:
    yield Fleet(aws)


def fleet_run(aws: awsemu.Emulator, fleet: Fleet, targets: Path, *extra: str) -> Any:
    return run_job(
        job_env(**awsemu.client_env(aws.url)),
        "fleet-run",
        "--state-machine",
        fleet.arn,
        "--targets",
        str(targets),
        "--poll-seconds",
        "0.1",
        "--deadline",
        "60",
        *extra,
    )


def test_every_target_succeeds(aws: awsemu.Emulator, fleet: Fleet, targets_file: Path) -> None:
    fleet.ends = [succeeded("orders-prod"), succeeded("billing-prod")]
    run = fleet_run(aws, fleet, targets_file)
    assert run.code == 0, run
    rows = run.result["targets"]
    assert [(r["target"], r["ok"], r["container_exit_code"]) for r in rows] == [
        ("orders-prod", True, 0),
        ("billing-prod", True, 0),
    ]
    done = [e for e in run.logs if e.get("event") == "target_done"]
    assert [e["target"] for e in done] == ["orders-prod", "billing-prod"]
    [start] = [
        json.loads(body)
        for (_s, op), body in zip(aws.state.calls, aws.state.bodies, strict=True)
        if op == "StartExecution"
    ]
    fleet_input = json.loads(start["input"])
    billing = next(t for t in fleet_input["targets"] if t["name"] == "billing-prod")
    assert billing["environment"] == [{"Name": "IAM_USERS", "Value": "billing_app"}]
    assert billing["container"] == CONTAINER and billing["subnets"] == ["subnet-0aaa"]
    assert start["name"].startswith("fleet-")


def test_one_target_failing_neither_stops_nor_hides_the_others(
    aws: awsemu.Emulator, fleet: Fleet, targets_file: Path
) -> None:
    """Scripted: orders-prod's container exits 6 (the job's init.sql error); the state
    machine caught it, billing-prod ran on; the execution failed on the tolerance."""
    orders = failed(
        "orders-prod",
        task(
            "orders",
            6,
            StopCode="EssentialContainerExited",
            StoppedReason="Essential container in task exited",
        ),
    )
    fleet.ends = [orders, succeeded("billing-prod")]
    fleet.status = "FAILED"
    fleet.failed_cause = "more than 0 of 2 targets failed; fleet-run has a row for each"
    run = fleet_run(aws, fleet, targets_file)
    assert run.code == 10, run
    rows = {r["target"]: r for r in run.result["targets"]}
    assert rows["orders-prod"]["ok"] is False and rows["orders-prod"]["container_exit_code"] == 6
    assert rows["billing-prod"]["ok"] is True
    assert "orders-prod" in run.result["error"]["message"]


def test_a_target_that_never_started(
    aws: awsemu.Emulator, fleet: Fleet, targets_file: Path
) -> None:
    """Scripted: billing-prod's task failed to start (image pull): no exit code."""
    billing = failed(
        "billing-prod",
        task(
            "billing",
            None,
            StopCode="TaskFailedToStart",
            StoppedReason="CannotPullContainerError: pull image manifest has been retried",
        ),
    )
    fleet.ends = [succeeded("orders-prod"), billing]
    fleet.status = "FAILED"
    fleet.failed_cause = "more than 0 of 2 targets failed; fleet-run has a row for each"
    run = fleet_run(aws, fleet, targets_file)
    assert run.code == 10, run
    rows = {r["target"]: r for r in run.result["targets"]}
    assert rows["billing-prod"]["stop_code"] == "TaskFailedToStart"
    assert rows["billing-prod"]["container_exit_code"] is None
    assert "CannotPullContainerError" in rows["billing-prod"]["stopped_reason"]


def test_throttled_start_execution_starts_one_fleet(
    aws: awsemu.Emulator, fleet: Fleet, targets_file: Path
) -> None:
    """Scripted: StartExecution is throttled twice, then its reply is lost once after
    Step Functions took it; every retry carries the same execution name."""
    fleet.ends = [succeeded("orders-prod"), succeeded("billing-prod")]
    aws.state.throttle = {"states": 2}
    aws.state.lose_replies["StartExecution"] = 1
    run = fleet_run(aws, fleet, targets_file)
    assert run.code == 0, run
    assert aws.state.throttled == {"states": 2}
    names = {
        json.loads(body)["name"]
        for (_s, op), body in zip(aws.state.calls, aws.state.bodies, strict=True)
        if op == "StartExecution"
    }
    assert len(names) == 1
    executions = aws.admin("stepfunctions").list_executions(stateMachineArn=fleet.arn)
    assert len(executions["executions"]) == 1


def test_a_fleet_still_running_at_the_deadline_exits_5(
    aws: awsemu.Emulator, fleet: Fleet, targets_file: Path
) -> None:
    """Scripted: DescribeExecution says RUNNING throughout."""
    fleet.ends = [succeeded("orders-prod")]
    fleet.running = 10**6
    run = fleet_run(aws, fleet, targets_file, "--deadline", "2")
    assert run.code == 5, run
    assert "FLEET_DEADLINE_SECONDS=2" in run.result["error"]["message"]
    assert "left running" in run.result["error"]["message"]


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("[]", "must list targets"),
        (
            '[{"name": "a b", "ecs_cluster": "c", "task_definition": "t", "subnets": ["s"]}]',
            "name must be",
        ),
        ('[{"name": "a", "ecs_cluster": "c", "task_definition": "t"}]', "subnets"),
        (
            '[{"name": "a", "ecs_cluster": "c", "task_definition": "t", "subnets": ["s"],'
            ' "colour": "red"}]',
            "unknown keys",
        ),
        ("targets: [", "not JSON or YAML"),
    ],
)
def test_a_bad_targets_file_exits_2(
    aws: awsemu.Emulator, fleet: Fleet, tmp_path: Path, text: str, problem: str
) -> None:
    path = tmp_path / "targets.json"
    path.write_text(text)
    run = fleet_run(aws, fleet, path)
    assert run.code == 2, run
    message = run.result["error"]["message"]
    assert message.startswith("FLEET_TARGETS:") and problem in message, message
    assert ("states", "StartExecution") not in aws.state.calls


def test_the_stack_deploys_as_cloudformation_package_leaves_it(aws: awsemu.Emulator) -> None:
    """`aws cloudformation package` uploads fleet.asl.json and rewrites
    DefinitionS3Location to the copy: done here against moto's S3, then the stack is
    deployed into moto's CloudFormation. moto creates the state machine with its role
    but does not read the definition from S3 (it stays empty there): the definition
    itself is what asl-validator checks above."""
    s3 = aws.admin("s3")
    s3.create_bucket(Bucket="artifacts")
    s3.put_object(Bucket="artifacts", Key="fleet.asl.json", Body=ASL.read_bytes())
    packaged = TEMPLATE.read_text().replace(
        "DefinitionS3Location: fleet.asl.json",
        "DefinitionS3Location: {Bucket: artifacts, Key: fleet.asl.json}",
    )
    cfn = aws.admin("cloudformation")
    cfn.create_stack(
        StackName="aurora-bootstrap-fleet",
        TemplateBody=packaged,
        Parameters=[
            {
                "ParameterKey": "TaskRoleArns",
                "ParameterValue": "arn:aws:iam::123456789012:role/task,"
                "arn:aws:iam::123456789012:role/execution",
            }
        ],
        Capabilities=["CAPABILITY_IAM"],
    )
    stack = cfn.describe_stacks(StackName="aurora-bootstrap-fleet")["Stacks"][0]
    assert stack["StackStatus"] == "CREATE_COMPLETE", stack
    outputs = {o["OutputKey"]: o["OutputValue"] for o in stack["Outputs"]}
    machine = aws.admin("stepfunctions").describe_state_machine(
        stateMachineArn=outputs["StateMachineArn"]
    )
    assert machine["roleArn"].startswith("arn:aws:iam::123456789012:role/")
    assert machine["name"] == "aurora-bootstrap-fleet"


def test_the_fleet_buildspec_fails_the_stage_on_fleet_runs_code(tmp_path: Path) -> None:
    """A target failed: fleet-run exits 10, and so must the stage."""
    saved = run_build_commands("buildspec-fleet.yml", "fleet-run", 10, tmp_path)
    assert saved.startswith('{"command": "fleet-run"')


# --- what AWS does and moto does not ---------------------------------------------


def test_a_start_whose_reply_was_lost_after_the_execution_ended_is_followed(
    aws: awsemu.Emulator, fleet: Fleet, targets_file: Path
) -> None:
    """Scripted: the first StartExecution reply is lost after Step Functions took it,
    and by the retry that execution has ended (a fast failure): AWS then answers
    ExecutionAlreadyExists, which moto does not."""
    fleet.ends = [succeeded("orders-prod"), succeeded("billing-prod")]
    aws.state.lose_replies["StartExecution"] = 1

    def closed(service: str, operation: str) -> None:
        if operation == "StartExecution":
            aws.state.errors[("states", "StartExecution")] = (400, "ExecutionAlreadyExists")

    aws.state.hooks.append(closed)
    run = fleet_run(aws, fleet, targets_file)
    assert run.code == 0, run
    assert [e for e in run.logs if e.get("event") == "fleet_already_started"], run.stderr
    executions = aws.admin("stepfunctions").list_executions(stateMachineArn=fleet.arn)
    [only] = executions["executions"]
    assert run.result["execution_arn"] == only["executionArn"]


def test_an_execution_not_visible_yet_is_waited_for(
    aws: awsemu.Emulator, fleet: Fleet, targets_file: Path
) -> None:
    """Scripted: DescribeExecution answers ExecutionDoesNotExist twice right after
    StartExecution (eventual consistency), which moto never does."""
    fleet.ends = [succeeded("orders-prod"), succeeded("billing-prod")]
    aws.state.errors[("states", "DescribeExecution")] = (400, "ExecutionDoesNotExist")
    aws.state.error_times[("states", "DescribeExecution")] = 2
    run = fleet_run(aws, fleet, targets_file)
    assert run.code == 0, run
    assert any("not visible yet" in str(e.get("reason")) for e in run.logs), run.stderr


def test_the_history_is_read_only_as_far_as_what_is_new(
    aws: awsemu.Emulator, fleet: Fleet, tmp_path: Path
) -> None:
    names = [f"cluster-{i:02d}" for i in range(12)]
    path = tmp_path / "targets.json"
    path.write_text(
        json.dumps(
            [
                {"name": n, "ecs_cluster": "c", "task_definition": "t", "subnets": ["s"]}
                for n in names
            ]
        )
    )
    fleet.ends = [succeeded(n) for n in names]
    fleet.running = len(names)
    run = fleet_run(aws, fleet, path)
    assert run.code == 0, run
    assert [r["target"] for r in run.result["targets"]] == names
    total = len(fleet.history())
    # Each look reads what is new and one page more, never the whole history again.
    assert fleet.events_sent <= total + Fleet.PAGE * fleet.looks, (fleet.events_sent, total)


def test_a_task_without_a_stop_code_gets_its_row(
    aws: awsemu.Emulator, fleet: Fleet, targets_file: Path
) -> None:
    """Scripted: ECS omitted StopCode and StoppedReason (it may)."""
    fleet.ends = [
        {"name": "orders-prod", "ok": True, "task": task("orders")},
        succeeded("billing-prod"),
    ]
    run = fleet_run(aws, fleet, targets_file)
    assert run.code == 0, run
    orders = run.result["targets"][0]
    assert (orders["ok"], orders["container_exit_code"], orders["stop_code"]) == (True, 0, None)


def _targets(tmp_path: Path, environment: dict[str, str], count: int = 1) -> Path:
    path = tmp_path / "targets.json"
    path.write_text(
        json.dumps(
            {
                "defaults": {"ecs_cluster": "c", "subnets": ["s"], "environment": environment},
                "targets": [{"name": f"t{i}", "task_definition": "d"} for i in range(count)],
            }
        )
    )
    return path


def test_overrides_past_runtasks_limit_exit_2_naming_the_target(
    aws: awsemu.Emulator, fleet: Fleet, tmp_path: Path
) -> None:
    path = _targets(tmp_path, {"IAM_USERS": "u" * 8200})
    run = fleet_run(aws, fleet, path)
    assert run.code == 2, run
    assert "target 1 't0'" in run.result["error"]["message"]
    assert "8192" in run.result["error"]["message"]
    assert not [op for _s, op in aws.state.calls if op == "StartExecution"]


def test_an_execution_input_past_256_kib_exits_2_saying_how_large(
    aws: awsemu.Emulator, fleet: Fleet, tmp_path: Path
) -> None:
    path = _targets(tmp_path, {"IAM_USERS": "u" * 7000}, count=40)
    run = fleet_run(aws, fleet, path)
    assert run.code == 2, run
    message = run.result["error"]["message"]
    assert "FLEET_TARGETS" in message and "bytes" in message and "262144" in message
    assert not [op for _s, op in aws.state.calls if op == "StartExecution"]
