"""deploy/fleet.asl.json as AWS reads it, not as moto accepts it.

- Checked against the data AWS publishes: every key under a service integration's
  Parameters, and the data fleet-run passes into them with ".$", is the PascalCase
  name of a member of botocore's input shape for that API, at every depth; no
  intrinsic's string literal holds an unescaped reserved character; no state selects
  a field ECS or Step Functions may omit.
- Run by moto's own ASL engine (in process, execute_state_machine on), which runs
  RunTask against moto's ECS. What moto cannot do is patched at its narrowest point:
  moto 5.2's ECS integration hands the PascalCase parameters to boto3 unconverted
  (RunTask then fails on 'Cluster') and ECS's answer back unconverted, so they are
  converted, the parameters with moto's own converter against botocore's RunTask
  shape (case-insensitively, as moto does: the case check is the static one above),
  the answer to PascalCase as Step Functions gives it; and the .sync wait (moto's
  tasks never stop, and carry no exit codes) is replaced by a resolver that answers
  the stopped task as ECS describes it, or fails the state as Step Functions does
  (States.TaskFailed, the task as the cause).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import boto3
import botocore.session
import pytest
from botocore.model import ListShape, Shape, StructureShape

from app.launch import fleet

ROOT = Path(__file__).resolve().parent.parent
ASL = ROOT / "deploy" / "fleet.asl.json"
REGION = "us-east-1"
# Integrations the definition uses: resource -> (botocore service, operation).
INTEGRATIONS = {"arn:aws:states:::ecs:runTask.sync": ("ecs", "RunTask")}
# Fields of a .sync task result (ECS's Task) and of a Catch's error output that are
# always there; anything else may be omitted, and selecting it is States.Runtime.
ALWAYS_IN_TASK = {"TaskArn"}
ALWAYS_IN_ERROR = {"Error"}


def definition() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(ASL.read_text())
    return data


def states(node: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for name, state in node["States"].items():
        yield name, state
        processor = state.get("ItemProcessor") or state.get("Iterator")
        if processor:
            yield from states(processor)


def a_target() -> dict[str, Any]:
    """A target as fleet-run passes it into the state machine."""
    [target] = fleet.load_targets(_targets_file())
    return target


def _targets_file() -> Path:
    path = Path(__file__).parent / "_fleet_target.json"
    return path


@pytest.fixture(autouse=True, scope="module")
def _target_file() -> Iterator[None]:
    _targets_file().write_text(
        json.dumps(
            {
                "defaults": {"environment": {"IAM_USERS": "app_user:app_readonly"}},
                "targets": [
                    {
                        "name": "orders",
                        "ecs_cluster": "pipeline",
                        "task_definition": "aurora-bootstrap-orders",
                        "subnets": ["subnet-0aaa"],
                        "security_groups": ["sg-0bbb"],
                    }
                ],
            }
        )
    )
    yield
    _targets_file().unlink()


def pascal(name: str) -> str:
    return name[:1].upper() + name[1:]


def check_value(value: Any, shape: Shape, where: str) -> list[str]:
    """Problems with `value` as data of `shape`, keys PascalCase."""
    if isinstance(shape, StructureShape):
        if not isinstance(value, dict):
            return [f"{where}: {shape.name} wants an object"]
        members = {pascal(m): s for m, s in shape.members.items()}
        problems = []
        for key, item in value.items():
            bare = key.removesuffix(".$")
            if bare not in members:
                problems.append(f"{where}.{key}: not a member of {shape.name} ({sorted(members)})")
            elif not key.endswith(".$"):
                problems += check_value(item, members[bare], f"{where}.{bare}")
        return problems
    if isinstance(shape, ListShape):
        if not isinstance(value, list):
            return [f"{where}: wants a list"]
        return [
            p for i, v in enumerate(value) for p in check_value(v, shape.member, f"{where}[{i}]")
        ]
    return []


def passed_in(
    parameters: dict[str, Any], shape: StructureShape, data: dict[str, Any], where: str
) -> list[str]:
    """The data each ".$" path takes from `data`, checked against its member's shape."""
    members = {pascal(m): s for m, s in shape.members.items()}
    problems = []
    for key, item in parameters.items():
        bare = key.removesuffix(".$")
        member = members.get(bare)
        if member is None:
            continue
        if key.endswith(".$"):
            path = str(item)
            assert path.startswith("$.") and re.fullmatch(r"\$\.[a-z_]+", path), path
            field = path[2:]
            if field not in data:
                problems.append(f"{where}.{key}: {path} is not in what fleet-run passes")
            else:
                problems += check_value(data[field], member, f"{where}.{bare}")
        elif isinstance(member, StructureShape) and isinstance(item, dict):
            problems += passed_in(item, member, data, f"{where}.{bare}")
        elif isinstance(member, ListShape) and isinstance(item, list):
            for i, element in enumerate(item):
                if isinstance(member.member, StructureShape) and isinstance(element, dict):
                    problems += passed_in(element, member.member, data, f"{where}.{bare}[{i}]")
    return problems


def test_every_service_parameter_is_a_member_of_botocores_input_shape() -> None:
    session = botocore.session.get_session()
    problems: list[str] = []
    target = a_target()
    for name, state in states(definition()):
        if state.get("Type") != "Task":
            continue
        service, operation = INTEGRATIONS[state["Resource"]]
        shape = session.get_service_model(service).operation_model(operation).input_shape
        assert isinstance(shape, StructureShape)
        problems += check_value(state["Parameters"], shape, name)
        problems += passed_in(state["Parameters"], shape, target, name)
    assert problems == []


def test_the_shape_check_finds_the_lower_case_environment_of_before() -> None:
    """The check above would have failed on the definition fleet-run fed lower-case
    {"name", "value"} pairs."""
    session = botocore.session.get_session()
    shape = session.get_service_model("ecs").operation_model("RunTask").input_shape
    state = next(s for _, s in states(definition()) if s.get("Type") == "Task")
    assert isinstance(shape, StructureShape)
    before = a_target() | {"environment": [{"name": "IAM_USERS", "value": "x"}]}
    problems = passed_in(state["Parameters"], shape, before, "RunTask")
    assert problems and "not a member of KeyValuePair" in problems[0]


_LITERAL = re.compile(r"'((?:[^'\\]|\\.)*)'")


def intrinsic_problems(text: str) -> list[str]:
    problems = []
    for match in _LITERAL.finditer(text):
        literal = match.group(1)
        unescaped = re.sub(r"\\.", "", literal)
        if text[: match.start()].rstrip().endswith("States.Format("):
            unescaped = unescaped.replace("{}", "")  # Format's own placeholders
        for ch in "{}":
            if ch in unescaped:
                problems.append(f"{text}: unescaped {ch!r} in {literal!r}")
    return problems


def all_strings(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for value in node.values():
            yield from all_strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from all_strings(value)
    elif isinstance(node, str):
        yield node


def test_no_intrinsic_literal_holds_an_unescaped_reserved_character() -> None:
    found = [
        p
        for s in all_strings(definition())
        if s.startswith("States.")
        for p in intrinsic_problems(s)
    ]
    assert found == []
    # ... and the check finds the literal JSON of before.
    before = "States.StringToJson('{\"max_concurrency\": 5}')"
    assert intrinsic_problems(before)


def test_no_state_selects_a_field_that_may_be_omitted() -> None:
    problems = []
    for name, state in states(definition()):
        for key, path in (state.get("ResultSelector") or {}).items():
            if path.removeprefix("$.") not in ALWAYS_IN_TASK:
                problems.append(f"{name}.ResultSelector.{key}: {path} may be omitted")
        for catch in state.get("Catch") or []:
            result = catch["ResultPath"].removeprefix("$.")
            for later_name, later in states(definition()):
                for key, path in (later.get("Parameters") or {}).items():
                    if key.endswith(".$") and str(path).startswith(f"$.{result}."):
                        field = str(path).removeprefix(f"$.{result}.")
                        if field not in ALWAYS_IN_ERROR:
                            problems.append(f"{later_name}.{key}: {path} may be omitted")
    assert problems == []


# --- moto's ASL engine -----------------------------------------------------------


Outcome = dict[str, Any]


def _stopped_task(submission: dict[str, Any], outcome: Outcome) -> dict[str, Any]:
    submitted = submission["Tasks"][0]
    container: dict[str, Any] = {"Name": "bootstrap", "LastStatus": "STOPPED"}
    if outcome.get("exit_code") is not None:
        container["ExitCode"] = outcome["exit_code"]
    task = {
        "TaskArn": submitted["TaskArn"],
        "ClusterArn": submitted["ClusterArn"],
        "LastStatus": "STOPPED",
        "Containers": [container],
    }
    if outcome.get("stop_code"):
        task["StopCode"] = outcome["stop_code"]
        task["StoppedReason"] = "Essential container in task exited"
    return task


def run_in_moto(outcomes: dict[str, Outcome], tolerated: int = 0) -> dict[str, Any]:
    """Run the definition over one target per outcome (keyed by target name); return
    the execution's status, history, and the rows fleet-run makes of it."""
    from moto import mock_aws  # noqa: PLC0415
    from moto.stepfunctions.parser.api import (  # noqa: PLC0415
        HistoryEventType,
        TaskFailedEventDetails,
    )
    from moto.stepfunctions.parser.asl.component.common.error_name.failure_event import (  # noqa: PLC0415
        FailureEvent,
        FailureEventException,
    )
    from moto.stepfunctions.parser.asl.component.common.error_name.states_error_name import (  # noqa: PLC0415
        StatesErrorName,
    )
    from moto.stepfunctions.parser.asl.component.common.error_name.states_error_name_type import (  # noqa: PLC0415
        StatesErrorNameType,
    )
    from moto.stepfunctions.parser.asl.component.state.exec.state_task.service import (  # noqa: PLC0415
        state_task_service_ecs as ecs_service,
    )
    from moto.stepfunctions.parser.asl.eval.event.event_detail import (  # noqa: PLC0415
        EventDetails,
    )

    families = {f"aurora-bootstrap-{name}": name for name in outcomes}

    def scripted_sync(self: Any, env: Any, **_: Any) -> Any:
        submission = env.stack.pop()
        family = submission["Tasks"][0]["TaskDefinitionArn"].rsplit("/", 1)[-1].split(":")[0]
        outcome = outcomes[families[family]]
        stopped = _stopped_task(submission, outcome)

        def resolve() -> dict[str, Any]:
            if outcome.get("exit_code") != 0:
                # As Step Functions fails a .sync task whose container did not exit 0.
                raise FailureEventException(
                    failure_event=FailureEvent(
                        env=env,
                        error_name=StatesErrorName(typ=StatesErrorNameType.StatesTaskFailed),
                        event_type=HistoryEventType.TaskFailed,
                        event_details=EventDetails(  # type: ignore[typeddict-item]
                            taskFailedEventDetails=TaskFailedEventDetails(
                                error="States.TaskFailed",
                                cause=json.dumps(stopped),
                                resourceType="ecs",
                                resource="runTask.sync",
                            )
                        ),
                    )
                )
            return stopped

        return resolve

    run_task = (
        botocore.session.get_session()
        .get_service_model("ecs")
        .operation_model("RunTask")
        .input_shape
    )

    def to_boto(self: Any, parameters: dict[str, Any], *_: Any, **__: Any) -> None:
        self._to_boto_request(parameters, run_task)

    def to_sfn(self: Any, response: dict[str, Any], *_: Any, **__: Any) -> None:
        # What Step Functions gives a state: ECS's answer with PascalCase keys.
        def cased(value: Any) -> Any:
            if isinstance(value, dict):
                return {pascal(k): cased(v) for k, v in value.items()}
            if isinstance(value, list):
                return [cased(v) for v in value]
            return value

        converted = cased(response)
        response.clear()
        response.update(converted)

    with (
        mock_aws(config={"stepfunctions": {"execute_state_machine": True}}),
        mock.patch.object(ecs_service.StateTaskServiceEcs, "_build_sync_resolver", scripted_sync),
        mock.patch.object(ecs_service.StateTaskServiceEcs, "_normalise_parameters", to_boto),
        mock.patch.object(ecs_service.StateTaskServiceEcs, "_normalise_response", to_sfn),
    ):
        ec2 = boto3.client("ec2", region_name=REGION)
        vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
        subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.0.1.0/24")["Subnet"]["SubnetId"]
        ecs = boto3.client("ecs", region_name=REGION)
        ecs.create_cluster(clusterName="pipeline")
        for family in families:
            ecs.register_task_definition(
                family=family,
                # bridge: moto 5.2 fails RunTask on an awsvpc task's network interface.
                networkMode="bridge",
                cpu="256",
                memory="512",
                containerDefinitions=[{"name": "bootstrap", "image": "x", "memory": 512}],
            )
        sfn = boto3.client("stepfunctions", region_name=REGION)
        role = boto3.client("iam", region_name=REGION).create_role(
            RoleName="fleet", AssumeRolePolicyDocument="{}"
        )["Role"]["Arn"]
        text = ASL.read_text().replace("${MaxConcurrency}", "5")
        text = text.replace("${ToleratedFailures}", str(tolerated))
        machine = sfn.create_state_machine(name="fleet", definition=text, roleArn=role)
        path = Path(__file__).parent / "_fleet_targets_moto.json"
        path.write_text(
            json.dumps(
                [
                    {
                        "name": name,
                        "ecs_cluster": "pipeline",
                        "task_definition": f"aurora-bootstrap-{name}",
                        "subnets": [subnet],
                        "environment": {"IAM_USERS": "app_user"},
                    }
                    for name in outcomes
                ]
            )
        )
        try:
            targets = fleet.load_targets(path)
        finally:
            path.unlink()
        started = sfn.start_execution(
            stateMachineArn=machine["stateMachineArn"],
            input=fleet.execution_input({"targets": targets}),
        )
        deadline = time.monotonic() + 60
        while True:
            described = sfn.describe_execution(executionArn=started["executionArn"])
            if described["status"] != "RUNNING" or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        events = sfn.get_execution_history(executionArn=started["executionArn"], maxResults=1000)[
            "events"
        ]
    history = fleet.History(None, None, started["executionArn"])  # type: ignore[arg-type]
    for event in events:
        history.events[event["id"]] = event
    rows = history.rows(events, {t["name"]: t["container"] for t in targets})
    return {
        "status": described["status"],
        "events": events,
        "rows": {r["target"]: r for r in rows},
        "described": described,
    }


def test_in_moto_every_target_succeeding_succeeds_with_a_row_each() -> None:
    run = run_in_moto(
        {
            "orders": {"exit_code": 0, "stop_code": "EssentialContainerExited"},
            "billing": {"exit_code": 0, "stop_code": "EssentialContainerExited"},
        }
    )
    assert run["status"] == "SUCCEEDED", run["events"][-3:]
    assert {n: (r["ok"], r["container_exit_code"]) for n, r in run["rows"].items()} == {
        "orders": (True, 0),
        "billing": (True, 0),
    }
    # The payload holds small rows, not tasks.
    mapped = next(
        e["stateExitedEventDetails"]["output"]
        for e in run["events"]
        if (e.get("stateExitedEventDetails") or {}).get("name") == "Targets"
    )
    rows = json.loads(mapped)["results"]
    assert all(set(row) <= {"target", "ok", "flag", "task_arn", "error"} for row in rows), rows


def test_in_moto_one_failing_target_fails_the_execution_on_the_tolerance_not_at_runtime() -> None:
    run = run_in_moto(
        {
            "orders": {"exit_code": 6, "stop_code": "EssentialContainerExited"},
            "billing": {"exit_code": 0, "stop_code": "EssentialContainerExited"},
        }
    )
    assert run["status"] == "FAILED"
    failure = next(e for e in run["events"] if e["type"] == "ExecutionFailed")
    assert failure["executionFailedEventDetails"]["error"] == "TooManyTargetsFailed"
    assert "of 2 targets failed" in failure["executionFailedEventDetails"]["cause"]
    assert (
        run["rows"]["orders"]["ok"] is False and run["rows"]["orders"]["container_exit_code"] == 6
    )
    assert run["rows"]["billing"]["ok"] is True


def test_in_moto_a_task_without_a_stop_code_is_no_runtime_error() -> None:
    run = run_in_moto({"orders": {"exit_code": 0}})
    assert run["status"] == "SUCCEEDED", run["events"][-3:]
    assert run["rows"]["orders"]["stop_code"] is None and run["rows"]["orders"]["ok"] is True


def test_in_moto_failures_within_the_tolerance_succeed() -> None:
    run = run_in_moto(
        {"orders": {"exit_code": 6}, "billing": {"exit_code": 0}, "ledger": {"exit_code": 6}},
        tolerated=2,
    )
    assert run["status"] == "SUCCEEDED", run["events"][-3:]
    assert sorted(n for n, r in run["rows"].items() if not r["ok"]) == ["ledger", "orders"]


def test_in_moto_every_target_failing_counts_every_failure() -> None:
    run = run_in_moto({"orders": {"exit_code": 6}, "billing": {"exit_code": 1}}, tolerated=1)
    assert run["status"] == "FAILED", run["events"][-3:]
    assert all(not r["ok"] for r in run["rows"].values())
