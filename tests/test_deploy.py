"""The deployment files: the CloudFormation template lints clean and its roles grant
no more than the job needs; the buildspec runs ecs-run and fails on its exit code."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from cfnlint.decode import decode

from tests import awsemu
from tests.conftest import job_env, run_job

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = ROOT / "deploy" / "cloudformation.yaml"

TASK_ROLE_ACTIONS = {
    "rds:DescribeDBClusters",
    "rds:ModifyDBCluster",  # only with EnableIamAuth=true
    "rds-db:connect",  # only with CredentialSource iam, on the master user alone
    "secretsmanager:GetSecretValue",
    "kms:Decrypt",
    # Transport data-api: the Data API's four calls, on the cluster
    "rds-data:BeginTransaction",
    "rds-data:ExecuteStatement",
    "rds-data:CommitTransaction",
    "rds-data:RollbackTransaction",
    # custom-resource: its request's ResponseURL, kept by the launcher (with EcsCluster)
    "ssm:GetParameter",
    "ssm:DeleteParameter",
}
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
    assert {"DB_CLUSTER_ID", "IAM_USERS", "GROUP_ROLES", "PRUNE", "DEADLINE_SECONDS"} <= names
    assert "TaskDefinitionArn" in data["Outputs"]


def statements_free_env(environment: list[Any]) -> list[dict[str, str]]:
    """Environment entries, with those behind Fn::If taken from their true branch."""
    return [entry["Fn::If"][1] if "Fn::If" in entry else entry for entry in environment]


def test_buildspec_runs_ecs_run_and_fails_the_stage_on_its_exit_code() -> None:
    spec = yaml.safe_load((ROOT / "deploy" / "buildspec.yml").read_text())
    assert spec["version"] == 0.2
    commands = "\n".join(spec["phases"]["build"]["commands"])
    assert "aurora-bootstrap ecs-run" in commands


def run_build_commands(buildspec: str, command: str, exit_code: int, workdir: Path) -> str:
    """The build commands of deploy/BUILDSPEC, run by bash as CodeBuild runs them, with
    a stand-in aurora-bootstrap that prints a result line and exits `exit_code`: each
    step must fail with that code, not hide it. Returns the saved result file."""
    spec = yaml.safe_load((ROOT / "deploy" / buildspec).read_text())
    stub = workdir / "aurora-bootstrap"
    result = f'{{"command": "{command}", "exit_code": {exit_code}}}'
    stub.write_text(f"#!/bin/sh\necho '{result}'\nexit {exit_code}\n")
    stub.chmod(0o755)
    installed = "/tmp/aurora-bootstrap/bin/aurora-bootstrap"  # noqa: S108 (the buildspec's)
    for step in spec["phases"]["build"]["commands"]:
        assert installed in step
        done = subprocess.run(
            ["bash", "-e", "-c", step.replace(installed, str(stub))],
            cwd=workdir,
            capture_output=True,
            text=True,
            check=False,
        )
        assert done.returncode == exit_code, done.stderr
    return (workdir / f"{command}.json").read_text()


def test_buildspec_build_step_exits_with_ecs_runs_code(tmp_path: Path) -> None:
    saved = run_build_commands("buildspec.yml", "ecs-run", 6, tmp_path)
    assert saved.startswith('{"command": "ecs-run"')


def test_template_guards_what_a_first_deployment_trips_on() -> None:
    data = template()
    pattern = re.compile(data["Parameters"]["ClusterIdentifier"]["AllowedPattern"])
    assert pattern.fullmatch("prod-aurora") and not pattern.fullmatch("Prod-Aurora")
    resources = data["Resources"]
    assert resources["LogGroup"]["DeletionPolicy"] == "Retain"
    assert resources["LogGroup"]["UpdateReplacePolicy"] == "Retain"
    assert "AWS::StackName" in str(resources["LogGroup"]["Properties"]["LogGroupName"])
    assert data["Parameters"]["CpuArchitecture"]["AllowedValues"] == ["X86_64", "ARM64"]
    egress = resources["TaskSecurityGroup"]["Properties"]["SecurityGroupEgress"]
    # The database's port with Transport postgres alone (the Fn::If's other branch).
    rules = [rule["Fn::If"][2] if "Fn::If" in rule else rule for rule in egress]
    assert {rule["FromPort"] if isinstance(rule["FromPort"], int) else "db" for rule in rules} == {
        443,
        "db",
    }
    assert egress[0]["Fn::If"][:2] == ["DataApi", {"Ref": "AWS::NoValue"}]
    assert {"TaskSecurityGroupId", "Subnets", "TaskDefinitionArn"} <= data["Outputs"].keys()


_REGISTERED = (
    "family",
    "taskRoleArn",
    "executionRoleArn",
    "networkMode",
    "containerDefinitions",
    "requiresCompatibilities",
    "cpu",
    "memory",
    "runtimePlatform",
)


def _without_nulls(definition: dict[str, Any]) -> dict[str, Any]:
    def clean(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items() if v is not None}
        if isinstance(value, list):
            return [clean(v) for v in value if v is not None]
        return value

    return {k: clean(definition[k]) for k in _REGISTERED if definition.get(k) is not None}


def _deploy(aws: awsemu.Emulator, name: str, **parameters: str) -> dict[str, str]:
    cfn = aws.admin("cloudformation")
    cfn.create_stack(
        StackName=name,
        TemplateBody=TEMPLATE.read_text(),
        Parameters=[{"ParameterKey": k, "ParameterValue": v} for k, v in parameters.items()],
        Capabilities=["CAPABILITY_IAM"],
    )
    stack = cfn.describe_stacks(StackName=name)["Stacks"][0]
    assert stack["StackStatus"] == "CREATE_COMPLETE", stack
    return {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}


@pytest.mark.parametrize("source", ["managed-secret", "secret-arn", "ecs-secret", "iam"])
def test_template_deploys_and_ecs_run_runs_the_task_it_defines(
    aws: awsemu.Emulator, source: str
) -> None:
    """Deployed into moto's CloudFormation, which creates the resources but evaluates
    no IAM policy (the roles' actions are checked one by one above); ecs-run then runs
    the task definition the stack made, in the subnets and security group it outputs.
    moto runs no container: the task stops with exit code 0. Scripted: moto keeps an
    AWS::NoValue in a list as null, and its RunTask then fails, as it does without a
    container-level memory figure (Fargate needs none); the definition is registered
    again without the nulls and with the task's memory on its container."""
    ec2 = aws.admin("ec2")
    vpc = ec2.create_vpc(CidrBlock="10.1.0.0/16")["Vpc"]["VpcId"]
    subnets = [
        ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.1.{i}.0/24")["Subnet"]["SubnetId"]
        for i in (1, 2)
    ]
    database = ec2.create_security_group(GroupName="db", Description="db", VpcId=vpc)["GroupId"]
    secret = aws.admin("secretsmanager").create_secret(Name=f"master-{source}", SecretString="{}")
    aws.admin("ecs").create_cluster(clusterName="pipeline")
    stack = f"aurora-bootstrap-{source}"
    outputs = _deploy(
        aws,
        stack,
        Image="123456789012.dkr.ecr.eu-west-1.amazonaws.com/aurora-bootstrap:1.0",
        ClusterIdentifier="prod-aurora",
        CredentialSource=source,
        MasterSecretArn="" if source == "iam" else secret["ARN"],
        ClusterResourceId="cluster-ABCDEFGHIJ" if source == "iam" else "",
        EnableIamAuth="true" if source == "iam" else "false",
        IamUsers="app_user:app_readwrite",
        VpcId=vpc,
        Subnets=",".join(subnets),
        DatabaseSecurityGroupId=database,
        DbHost="db.example" if source == "ecs-secret" else "",
        DbUser="master" if source in ("ecs-secret", "iam") else "",
        EcsCluster="pipeline",
    )
    assert outputs["Subnets"] == ",".join(subnets)
    # The launcher of Custom::AuroraBootstrap runs this task definition, in this
    # network (its own tests are in test_launcher.py and test_iac.py).
    launcher = aws.admin("lambda").get_function_configuration(FunctionName=outputs["ServiceToken"])
    assert launcher["Environment"]["Variables"] == {
        "CLUSTER": "pipeline",
        "TASK_DEFINITION": outputs["TaskDefinitionArn"],
        "CONTAINER": "bootstrap",
        "SUBNETS": outputs["Subnets"],
        "SECURITY_GROUP": outputs["TaskSecurityGroupId"],
        "REQUESTS": f"/aurora-bootstrap/{stack}/requests",
        "DEADLINE_SECONDS": 300,
    }
    rules = ec2.describe_security_groups(GroupIds=[database])["SecurityGroups"][0]["IpPermissions"]
    assert any(
        pair["GroupId"] == outputs["TaskSecurityGroupId"]
        for rule in rules
        if rule.get("FromPort") == 5432
        for pair in rule.get("UserIdGroupPairs", [])
    ), rules
    definition = aws.admin("ecs").describe_task_definition(
        taskDefinition=outputs["TaskDefinitionArn"]
    )["taskDefinition"]
    [container] = definition["containerDefinitions"]
    # moto leaves an AWS::NoValue in a list as null, where CloudFormation drops it.
    environment = {e["name"]: e["value"] for e in container["environment"] if e}
    assert environment["DB_CLUSTER_ID"] == "prod-aurora"
    assert ("DB_SECRET_ARN" in environment) == (source == "secret-arn")
    assert ("DB_IAM_AUTH" in environment) == (source == "iam")
    assert ("ENABLE_IAM_AUTH" in environment) == (source == "iam")
    injected = [s["name"] for s in container.get("secrets") or [] if s]
    assert injected == (["DB_PASSWORD"] if source == "ecs-secret" else [])
    assert container["logConfiguration"]["options"]["awslogs-group"] == (
        f"/ecs/aurora-bootstrap/{stack}"
    )
    # moto's RunTask fails on those nulls: register the definition as CloudFormation
    # would have, without them.
    registered = _without_nulls(definition)
    # moto's RunTask also wants a memory figure per container, which Fargate does not:
    # the task's own is given.
    registered["containerDefinitions"][0]["memory"] = int(definition["memory"])
    arn = aws.admin("ecs").register_task_definition(**registered)["taskDefinition"][
        "taskDefinitionArn"
    ]
    run = run_job(
        job_env(**awsemu.client_env(aws.url)),
        "ecs-run",
        "--cluster",
        "pipeline",
        "--task-definition",
        arn,
        "--subnets",
        outputs["Subnets"],
        "--security-groups",
        outputs["TaskSecurityGroupId"],
        "--poll-seconds",
        "0.1",
        "--log-grace",
        "0",
        "--deadline",
        "30",
    )
    assert run.code == 0, run
    assert run.result["container"] == "bootstrap"
    # The log group, the audit trail, outlives the stack.
    aws.admin("cloudformation").delete_stack(StackName=stack)
    groups = aws.admin("logs").describe_log_groups(logGroupNamePrefix="/ecs/aurora-bootstrap/")
    assert f"/ecs/aurora-bootstrap/{stack}" in {g["logGroupName"] for g in groups["logGroups"]}


def test_make_image_builds_for_the_architecture_asked_for() -> None:
    """PLATFORM picks the wheels' architecture and the image's platform together, so
    an image for CpuArchitecture=ARM64 can be built on an x86 machine (dry run: no
    engine here runs arm64 build steps)."""
    done = subprocess.run(
        ["make", "-n", "image", "PLATFORM=linux/arm64", "BASE_IMAGE=base"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    assert "manylinux2014_aarch64" in done.stdout and "x86_64" not in done.stdout
    assert "--platform linux/arm64" in done.stdout


def test_token_login_and_enabling_iam_auth_are_granted_only_when_asked_for() -> None:
    granted = role_statements("TaskRole")
    conditions = {
        action: json.dumps(statement)
        for statement in granted
        for action in actions(statement)
        if action in ("rds-db:connect", "rds:ModifyDBCluster")
    }
    resources = template()["Resources"]["TaskRole"]["Properties"]["Policies"][0]
    policy = json.dumps(resources["PolicyDocument"])
    assert '"IamLogin"' in policy and '"MayEnableIamAuth"' in policy
    assert "dbuser:${ClusterResourceId}/${DbUser}" in conditions["rds-db:connect"]
    assert "cluster:${ClusterIdentifier}" in conditions["rds:ModifyDBCluster"]


def test_transport_data_api_opens_no_database_port_and_grants_the_data_api_calls(
    aws: awsemu.Emulator,
) -> None:
    """Transport data-api in moto's CloudFormation: no ingress rule is added to the
    database's group even when it is given, and the task definition says DB_TRANSPORT.
    The task role's Data API grant names the cluster, and each of its actions is an
    operation of botocore's rds-data model. (moto evaluates no Rules section: the rule
    that refuses ecs-secret and iam with data-api is checked as text, and by cfn-lint
    above.)"""
    import botocore.session  # noqa: PLC0415

    ec2 = aws.admin("ec2")
    vpc = ec2.create_vpc(CidrBlock="10.2.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.2.1.0/24")["Subnet"]["SubnetId"]
    database = ec2.create_security_group(GroupName="db", Description="db", VpcId=vpc)["GroupId"]
    # (moto resolves the template's outputs of the launcher, which needs its cluster.)
    aws.admin("ecs").create_cluster(clusterName="pipeline")
    outputs = _deploy(
        aws,
        "aurora-bootstrap-data-api",
        Image="123456789012.dkr.ecr.eu-west-1.amazonaws.com/aurora-bootstrap:1.0",
        ClusterIdentifier="prod-aurora",
        Transport="data-api",
        CredentialSource="managed-secret",
        MasterSecretArn="",
        ClusterResourceId="",
        VpcId=vpc,
        Subnets=subnet,
        DatabaseSecurityGroupId=database,
        IamUsers="app_user:app_readwrite",
        EcsCluster="pipeline",
    )
    # (moto keeps a new group's allow-all egress whatever the template says: the
    # egress rules, the database's port with postgres alone, are checked in the template
    # by test_template_guards_what_a_first_deployment_trips_on.)
    rules = ec2.describe_security_groups(GroupIds=[database])["SecurityGroups"][0]["IpPermissions"]
    assert rules == []
    definition = aws.admin("ecs").describe_task_definition(
        taskDefinition=outputs["TaskDefinitionArn"]
    )["taskDefinition"]
    [container] = definition["containerDefinitions"]
    environment = {e["name"]: e["value"] for e in container["environment"] if e}
    assert environment["DB_TRANSPORT"] == "data-api"
    [grant] = [s for s in role_statements("TaskRole") if "rds-data:ExecuteStatement" in actions(s)]
    assert "cluster:${ClusterIdentifier}" in json.dumps(grant["Resource"])
    model = botocore.session.get_session().get_service_model("rds-data")
    assert {a.split(":")[1] for a in actions(grant)} <= set(model.operation_names)
    rule = template()["Rules"]["DataApiLogsInWithASecret"]
    assert rule["Assertions"][0]["Assert"] == {
        "Fn::Contains": [["managed-secret", "secret-arn"], {"Ref": "CredentialSource"}]
    }


def test_the_data_api_buildspec_runs_apply_itself_and_fails_the_stage_on_its_code(
    tmp_path: Path,
) -> None:
    """The no-VPC variant: the job runs in CodeBuild over the Data API, no ECS task."""
    spec = yaml.safe_load((ROOT / "deploy" / "buildspec-data-api.yml").read_text())
    assert spec["env"]["variables"]["DB_TRANSPORT"] == "data-api"
    assert "ecs-run" not in json.dumps(spec["phases"])
    saved = run_build_commands("buildspec-data-api.yml", "apply", 5, tmp_path)
    assert saved.startswith('{"command": "apply"')
