"""The deployment files: the CloudFormation template lints clean and its roles grant
no more than the job needs; the buildspec runs ecs-run and fails on its exit code."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml
from cfnlint.decode import decode

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = ROOT / "deploy" / "cloudformation.yaml"

TASK_ROLE_ACTIONS = {"rds:DescribeDBClusters", "secretsmanager:GetSecretValue", "kms:Decrypt"}
EXECUTION_ROLE_ACTIONS = {
    "ecr:GetAuthorizationToken",
    "ecr:BatchCheckLayerAvailability",
    "ecr:GetDownloadUrlForLayer",
    "ecr:BatchGetImage",
    "logs:CreateLogStream",
    "logs:PutLogEvents",
    "secretsmanager:GetSecretValue",
    "kms:Decrypt",
}


def template() -> dict[str, Any]:
    data, matches = decode(str(TEMPLATE))
    assert not matches, matches
    assert data is not None
    return dict(data)


def statements(node: Any) -> list[dict[str, Any]]:
    """Every policy statement under node, through Fn::If branches."""
    found: list[dict[str, Any]] = []
    if isinstance(node, dict):
        if "Effect" in node and "Action" in node:
            found.append(node)
        for value in node.values():
            found += statements(value)
    elif isinstance(node, list):
        for value in node:
            found += statements(value)
    return found


def actions(statement: dict[str, Any]) -> set[str]:
    action = statement["Action"]
    return {action} if isinstance(action, str) else set(action)


def role_statements(role: str) -> list[dict[str, Any]]:
    resources = template()["Resources"]
    return statements(resources[role]["Properties"]["Policies"])


def test_template_is_cfn_lint_clean() -> None:
    cfn_lint = Path(sys.executable).parent / "cfn-lint"
    done = subprocess.run(
        [str(cfn_lint), str(TEMPLATE)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_task_role_grants_only_what_the_job_calls() -> None:
    granted = role_statements("TaskRole")
    assert set().union(*(actions(s) for s in granted)) == TASK_ROLE_ACTIONS
    for statement in granted:
        assert statement["Effect"] == "Allow"
        assert statement["Resource"] != "*", statement
        assert not any("*" in a for a in actions(statement))


def test_execution_role_pulls_logs_and_reads_only_an_injected_secret() -> None:
    granted = role_statements("ExecutionRole")
    assert set().union(*(actions(s) for s in granted)) == EXECUTION_ROLE_ACTIONS
    for statement in granted:
        wildcard = statement["Resource"] == "*"
        assert not wildcard or actions(statement) == {"ecr:GetAuthorizationToken"}
    resources = template()["Resources"]
    trust = resources["TaskRole"]["Properties"]["AssumeRolePolicyDocument"]["Statement"]
    assert trust == [
        {
            "Effect": "Allow",
            "Principal": {"Service": "ecs-tasks.amazonaws.com"},
            "Action": "sts:AssumeRole",
        }
    ]


def test_task_definition_is_small_fargate_with_awslogs() -> None:
    data = template()
    props = data["Resources"]["TaskDefinition"]["Properties"]
    assert props["RequiresCompatibilities"] == ["FARGATE"]
    assert data["Parameters"]["Cpu"]["Default"] == "256"
    assert data["Parameters"]["Memory"]["Default"] == "512"
    [container] = props["ContainerDefinitions"]
    assert container["LogConfiguration"]["LogDriver"] == "awslogs"
    names = {e["Name"] for e in statements_free_env(container["Environment"])}
    assert {"DB_CLUSTER_ID", "IAM_USERS", "PRUNE", "DEADLINE_SECONDS"} <= names
    assert "TaskDefinitionArn" in data["Outputs"]


def statements_free_env(environment: list[Any]) -> list[dict[str, str]]:
    """Environment entries, with those behind Fn::If taken from their true branch."""
    return [entry["Fn::If"][1] if "Fn::If" in entry else entry for entry in environment]


def test_buildspec_runs_ecs_run_and_fails_the_stage_on_its_exit_code() -> None:
    spec = yaml.safe_load((ROOT / "deploy" / "buildspec.yml").read_text())
    assert spec["version"] == 0.2
    commands = "\n".join(spec["phases"]["build"]["commands"])
    assert "aurora-bootstrap ecs-run" in commands


def test_buildspec_build_step_exits_with_ecs_runs_code(tmp_path: Path) -> None:
    """The build commands, run by bash as CodeBuild runs them, with a stand-in
    aurora-bootstrap that exits 6: the step must fail with 6, not hide it."""
    spec = yaml.safe_load((ROOT / "deploy" / "buildspec.yml").read_text())
    stub = tmp_path / "aurora-bootstrap"
    stub.write_text('#!/bin/sh\necho \'{"command": "ecs-run", "exit_code": 6}\'\nexit 6\n')
    stub.chmod(0o755)
    for command in spec["phases"]["build"]["commands"]:
        installed = "/tmp/aurora-bootstrap/bin/aurora-bootstrap"  # noqa: S108 (the buildspec's)
        script = command.replace(installed, str(stub))
        done = subprocess.run(
            ["bash", "-e", "-c", script], cwd=tmp_path, capture_output=True, text=True, check=False
        )
        assert done.returncode == 6, done.stderr
    assert (tmp_path / "ecs-run.json").read_text().startswith('{"command": "ecs-run"')
