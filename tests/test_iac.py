"""Inside an IaC deploy: the template's launcher, its role and its EventBridge rule,
and a stack with Custom::AuroraBootstrap that moto's CloudFormation completes when
the worker answers it.

What moto cannot show, and where it is covered instead: moto's CloudFormation honours
only SUCCESS on Create (a FAILED answer leaves the stack waiting) and never calls the
provider on Update or Delete, so FAILED, Update and Delete are covered by
test_custom_resource.py (the worker) and test_launcher.py (the launcher)."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import types
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit, urlunsplit

import boto3
import pytest
from moto.awslambda.models import LambdaFunction
from moto.events.models import EventPattern, EventPatternParser
from moto.moto_server.threaded_moto_server import ThreadedMotoServer

from tests import awsemu
from tests.conftest import catalog, job_env, members_of, npm_tool, run_job
from tests.test_deploy import (
    ROOT,
    TEMPLATE,
    _without_nulls,
    actions,
    role_statements,
    template,
)
from tests.test_launcher import LAUNCHER, stopped_event
from tools import localpg
from tools.localpg import free_port

LAUNCHER_ACTIONS = {
    "ecs:RunTask",
    "iam:PassRole",
    "logs:CreateLogStream",
    "logs:PutLogEvents",
    # Each request's ResponseURL, kept out of the task's overrides.
    "ssm:PutParameter",
    "ssm:GetParameter",
    "ssm:DeleteParameter",
    # A Delete stops a running Create; a stopped task's event is checked with ECS.
    "ecs:ListTasks",
    "ecs:DescribeTasks",
    "ecs:StopTask",
    # Whether an Update comes from a rollback.
    "cloudformation:DescribeStacks",
}


def test_the_template_carries_the_launcher_file_as_its_inline_code() -> None:
    code = template()["Resources"]["Launcher"]["Properties"]["Code"]["ZipFile"]
    assert code == LAUNCHER.read_text(), "run make template"


def test_the_launchers_role_grants_exactly_what_it_calls() -> None:
    granted = {a: s for s in role_statements("LauncherRole") for a in actions(s)}
    assert set(granted) == LAUNCHER_ACTIONS
    run_task = json.dumps(granted["ecs:RunTask"])
    # This stack's task definitions, in the one cluster.
    assert "task-definition/aurora-bootstrap-${AWS::StackName}:*" in run_task
    cluster = "arn:${AWS::Partition}:ecs:${AWS::Region}:${AWS::AccountId}:cluster/${EcsCluster}"
    assert granted["ecs:RunTask"]["Condition"] == {
        "ArnEquals": {"ecs:cluster": {"Fn::Sub": cluster}}
    }
    # Its two roles, to ECS tasks alone.
    assert granted["iam:PassRole"]["Resource"] == [
        {"Fn::GetAtt": ["TaskRole", "Arn"]},
        {"Fn::GetAtt": ["ExecutionRole", "Arn"]},
    ]
    assert granted["iam:PassRole"]["Condition"] == {
        "StringEquals": {"iam:PassedToService": "ecs-tasks.amazonaws.com"}
    }
    # Its own logs.
    assert granted["logs:PutLogEvents"]["Resource"] == {"Fn::Sub": "${LauncherLogGroup.Arn}:*"}
    for statement in granted.values():
        assert statement["Resource"] != "*"
    resources = template()["Resources"]
    trust = resources["LauncherRole"]["Properties"]["AssumeRolePolicyDocument"]["Statement"]
    assert [s["Principal"] for s in trust] == [{"Service": "lambda.amazonaws.com"}]
    function = resources["Launcher"]["Properties"]
    assert function["LoggingConfig"] == {"LogGroup": {"Ref": "LauncherLogGroup"}}
    # Outside the VPC: no network interface to outlive it and block a subnet's deletion.
    assert "VpcConfig" not in function


def test_the_example_resource_reruns_on_what_should_and_bounds_its_wait() -> None:
    data = template()
    resource = data["Resources"]["DatabaseUsers"]
    assert resource["Type"] == "Custom::AuroraBootstrap"
    props = resource["Properties"]
    assert props["ServiceToken"] == {"Fn::GetAtt": ["Launcher", "Arn"]}
    assert props["ServiceTimeout"] == {"Ref": "BootstrapTimeoutSeconds"}
    # The task definition carries the settings (RunTask's 8 KiB does not bound them);
    # the launcher's own Triggers are what re-runs the bootstrap.
    assert set(props) == {"ServiceToken", "ServiceTimeout", "Triggers"}
    triggers = props["Triggers"]
    for name in ("Image", "IamUsers", "GroupRoles", "Prune", "TaskDefinition"):
        assert triggers[name] == {"Ref": name}
    # The ingress rule, when the stack makes it, is in place before the task connects.
    assert triggers["DatabaseIngress"] == {
        "Fn::If": ["HasDatabaseSecurityGroup", {"Ref": "DatabaseIngress"}, "none"]
    }
    # The rule that hears a task that never ran is in place before the first task.
    assert resource["DependsOn"] == "LauncherTaskStoppedPermission"
    timeout = data["Parameters"]["BootstrapTimeoutSeconds"]
    assert timeout["MaxValue"] == 3600 and timeout["MinValue"] >= 60
    assert data["Outputs"]["ServiceToken"]["Export"] == {
        "Name": {"Fn::Sub": "${AWS::StackName}-ServiceToken"}
    }


# Where the forms are written: the docs' page, and the README's shorter one.
IAC_PAGE = ("docs/iac.md", "# Inside an IaC deploy")
README = ("README.md", "### Inside an IaC deploy")


def _readme_snippet(language: str, where: tuple[str, str] = IAC_PAGE) -> str:
    """The first `language` block of the section "Inside an IaC deploy"."""
    page, heading = where
    text = (ROOT / page).read_text()
    section = text.split(heading, 1)[1]
    return section.split(f"```{language}\n", 1)[1].split("```", 1)[0]


def _passes(
    *args: str, cwd: Path | None = None, env: dict[str, str] | None = None, timeout: float = 300
) -> None:
    """Run a checker; it must exit 0, else its output is the failure."""
    done = subprocess.run(
        args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr


CFN_LINT = str(Path(sys.executable).parent / "cfn-lint")


@pytest.mark.parametrize("where", [IAC_PAGE, README], ids=["docs", "readme"])
def test_the_readmes_cloudformation_form_is_cfn_lint_clean(
    tmp_path: Path, where: tuple[str, str]
) -> None:
    snippet = _readme_snippet("yaml", where)
    assert "Custom::AuroraBootstrap" in snippet
    # With a stand-in for the writer instance it waits for.
    stand_in = "  AuroraInstance:\n    Type: AWS::CloudFormation::WaitConditionHandle\n"
    stack = tmp_path / "cluster-stack.yaml"
    stack.write_text('AWSTemplateFormatVersion: "2010-09-09"\n' + snippet + stand_in)
    _passes(CFN_LINT, str(stack))


_CDK_APP = """import * as cdk from "aws-cdk-lib";
import { Construct } from "constructs";

class ClusterStack extends cdk.Stack {
  constructor(scope: Construct, id: string) {
    super(scope, id);
    const groupRoles = { app_readwrite: [{ schemas: ["public"], access: "write" }] };
    const imageUri = "123456789012.dkr.ecr.eu-west-1.amazonaws.com/aurora-bootstrap:1.4.0";
    const writerInstance = new cdk.CfnWaitConditionHandle(this, "Writer");
SNIPPET
  }
}

const app = new cdk.App();  // writes to CDK_OUTDIR
new ClusterStack(app, "Cluster");
app.synth();
"""


def test_the_readmes_cdk_form_compiles_and_synthesizes_a_lint_clean_template(
    tmp_path: Path,
) -> None:
    """The README's CDK lines, type-checked by tsc against aws-cdk-lib (from
    package-lock.json) in a stack with stand-ins for what they name (the group roles,
    the image, the writer instance), synthesized by node, and the template cfn-lint."""
    tsc = npm_tool("tsc")
    modules = ROOT / "node_modules"
    (tmp_path / "node_modules").symlink_to(modules)
    (tmp_path / "app.ts").write_text(_CDK_APP.replace("SNIPPET", _readme_snippet("ts")))
    # skipLibCheck as CDK's own project template: the snippet is still checked against
    # aws-cdk-lib's declarations.
    strict = ("--strict", "--skipLibCheck", "--target", "es2022", "--module", "commonjs")
    _passes(str(tsc), *strict, "app.ts", cwd=tmp_path)
    out = tmp_path / "cdk.out"
    _passes("node", "app.js", cwd=tmp_path, env={**os.environ, "CDK_OUTDIR": str(out)})
    synthesized = out / "Cluster.template.json"
    data = json.loads(synthesized.read_text())
    [resource] = [r for r in data["Resources"].values() if r["Type"] == "Custom::AuroraBootstrap"]
    props = resource["Properties"]
    assert props["ServiceToken"] == {"Fn::ImportValue": "aurora-bootstrap-prod-ServiceToken"}
    assert str(props["ServiceTimeout"]) == "900"  # CDK writes it as a string
    assert set(props) == {"ServiceToken", "ServiceTimeout", "IamUsers", "GroupRoles", "Triggers"}
    assert json.loads(props["GroupRoles"]) == {
        "app_readwrite": [{"schemas": ["public"], "access": "write"}]
    }
    assert resource["DependsOn"] == ["Writer"]
    _passes(CFN_LINT, str(synthesized))


_TF_VARIABLES = """
variable "iam_users" { type = string }
variable "group_roles" { type = string }
variable "image" { type = string }
variable "ecs_cluster" { type = string }
variable "task_definition_arn" { type = string }
variable "subnets" { type = list(string) }
variable "task_security_group_id" { type = string }
"""


def test_the_readmes_terraform_form_is_formatted_and_valid(tmp_path: Path) -> None:
    """terraform fmt and validate, where a Terraform binary is on the machine (none is
    installed for this: the check is skipped without one). The writer instance it
    waits for is stood in by a terraform_data, so that no provider is downloaded."""
    terraform = shutil.which("terraform")
    if terraform is None:
        pytest.skip("no terraform binary on this machine")
    snippet = _readme_snippet("hcl")
    (tmp_path / "bootstrap.tf").write_text(snippet)
    config = tmp_path / "terraformrc"
    config.write_text("")
    env = {**os.environ, "TF_CLI_CONFIG_FILE": str(config), "TF_IN_AUTOMATION": "1"}

    def tf(*args: str) -> None:
        _passes(terraform, *args, "-no-color", cwd=tmp_path, env=env, timeout=120)

    tf("fmt", "-check", "-diff")
    stand_in = snippet.replace("aws_rds_cluster_instance.writer", "terraform_data.writer")
    (tmp_path / "bootstrap.tf").write_text(
        stand_in + 'resource "terraform_data" "writer" {}\n' + _TF_VARIABLES
    )
    tf("init", "-backend=false", "-input=false")
    tf("validate")


class InProcessMoto:
    """moto's server in this process, so that its Lambda can be run: moto runs a
    function in a Docker container from a public Lambda image, which cannot be pulled
    here. Scripted: its invoke runs the function's own code (the index.py moto made
    from the template's ZipFile) in this process, with the function's environment,
    as Lambda's Python runtime would."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        # moto writes its own port into the response URLs it makes.
        monkeypatch.setenv("MOTO_PORT", str(self.port))
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self.server.start()
        self.env = awsemu.client_env(self.url) | {"AWS_DEFAULT_REGION": awsemu.REGION}
        self.events: list[dict[str, Any]] = []
        self.results: list[str] = []
        self.environment_override: dict[str, str] = {}
        # Set by the test when what the function will find is in place.
        self.ready = threading.Event()
        moto = self

        def invoke(
            fn: LambdaFunction, body: str, request_headers: Any, response_headers: Any
        ) -> str:
            event = json.loads(body)
            moto.events.append(event)
            moto.ready.wait(30)
            with zipfile.ZipFile(io.BytesIO(fn.code_bytes)) as code:
                source = code.read("index.py").decode()
            module = types.ModuleType("index")
            exec(compile(source, "index.py", "exec"), module.__dict__)  # noqa: S102 (the function's code)
            with pytest.MonkeyPatch.context() as runtime:
                for key, value in {
                    **fn.environment_vars,
                    **moto.env,
                    **moto.environment_override,
                }.items():
                    # A Number parameter's Ref is a string in CloudFormation; moto keeps a number.
                    runtime.setenv(key, str(value))
                result = str(module.handler(event, None))
            moto.results.append(result)
            return result

        monkeypatch.setattr(LambdaFunction, "invoke", invoke)

    def client(self, service: str) -> Any:
        return boto3.client(
            service,  # type: ignore[call-overload]
            endpoint_url=self.url,
            region_name=awsemu.REGION,
            aws_access_key_id=self.env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=self.env["AWS_SECRET_ACCESS_KEY"],
        )

    def stop(self) -> None:
        request = urllib.request.Request(f"{self.url}/moto-api/reset", method="POST")  # noqa: S310
        urllib.request.urlopen(request, timeout=5).close()  # noqa: S310
        self.server.stop()


@pytest.fixture
def moto(monkeypatch: pytest.MonkeyPatch) -> Iterator[InProcessMoto]:
    server = InProcessMoto(monkeypatch)
    yield server
    server.stop()


def _wait(what: str, check: Any, timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.2)
    raise AssertionError(f"no {what} within {timeout}s")


def _reachable(url: str, moto: InProcessMoto) -> str:
    """moto's response URL names host.docker.internal, where its Lambda containers
    would reach it; the worker here reaches it on loopback."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=f"127.0.0.1:{moto.port}"))


def test_a_stack_with_the_resource_completes_when_the_worker_answers(
    moto: InProcessMoto, pg: localpg.LocalPostgres
) -> None:
    vpc, subnets, _group = awsemu.fargate_network(moto.client("ec2"), "10.3", subnets=2)
    moto.client("ecs").create_cluster(clusterName="deploys")
    secret = moto.client("secretsmanager").create_secret(Name="master", SecretString="{}")
    cfn = moto.client("cloudformation")
    parameters = {
        "Image": "123456789012.dkr.ecr.us-east-1.amazonaws.com/aurora-bootstrap:1.0",
        "ClusterIdentifier": "prod-aurora",
        "MasterSecretArn": secret["ARN"],
        "VpcId": vpc,
        "Subnets": ",".join(subnets),
        "IamUsers": "app_user:app_readwrite,report_user:app_readonly",
        "EcsCluster": "deploys",
        "BootstrapOnDeploy": "true",
    }
    stack_id = cfn.create_stack(
        StackName="db",
        TemplateBody=TEMPLATE.read_text(),
        Parameters=[{"ParameterKey": k, "ParameterValue": v} for k, v in parameters.items()],
        Capabilities=["CAPABILITY_IAM"],
    )["StackId"]
    # Scripted: moto keeps an AWS::NoValue in a list as null and its RunTask fails on
    # it (see test_deploy); the launcher is given the definition registered again
    # without the nulls, in the stack's family, which its role allows.
    ecs = moto.client("ecs")
    made = ecs.describe_task_definition(taskDefinition="aurora-bootstrap-db")["taskDefinition"]
    registered = _without_nulls(made)
    registered["containerDefinitions"][0]["memory"] = int(made["memory"])
    clean = ecs.register_task_definition(**registered)["taskDefinition"]["taskDefinitionArn"]
    moto.environment_override["TASK_DEFINITION"] = clean
    moto.ready.set()
    [event] = _wait("invocation of the launcher", lambda: moto.events[:1])
    assert (
        cfn.describe_stacks(StackName=stack_id)["Stacks"][0]["StackStatus"] == "CREATE_IN_PROGRESS"
    )
    assert _wait("launcher's result", lambda: moto.results) == ["STARTED"]
    function = moto.client("lambda").get_function(FunctionName=event["ServiceToken"])
    assert function["Configuration"]["Runtime"].startswith("python3")
    # Fargate, played here: the task the launcher started runs the worker.
    arns = _wait("task", lambda: ecs.list_tasks(cluster="deploys")["taskArns"])
    [task] = ecs.describe_tasks(cluster="deploys", tasks=arns)["tasks"]
    assert task["taskDefinitionArn"] == clean and task["startedBy"] == "aurora-bootstrap-cfn"
    [container] = task["overrides"]["containerOverrides"]
    request = json.loads(
        next(e["value"] for e in container["environment"] if e["name"] == "CFN_REQUEST")
    )
    # The settings come from the task definition; the Triggers stayed with the launcher.
    assert request["ResourceProperties"] == {}
    # The ResponseURL is not in the overrides: the worker reads it from SSM.
    assert "ResponseURL" not in request and "X-Amz-Signature" not in json.dumps(task, default=str)
    ssm = moto.client("ssm")
    name = request["ResponseURLParameter"]
    url = ssm.get_parameter(Name=name, WithDecryption=True)["Parameter"]["Value"]
    ssm.put_parameter(Name=name, Value=_reachable(url, moto), Type="SecureString", Overwrite=True)
    overridden = {e["name"]: e["value"] for e in container["environment"]}
    assert int(overridden["DEADLINE_SECONDS"]) + 120 <= 900  # within ServiceTimeout
    # The task definition's environment, but for where the database is: moto runs no
    # container and has no Aurora, so the local server stands in for DB_CLUSTER_ID.
    [defined] = ecs.describe_task_definition(taskDefinition=clean)["taskDefinition"][
        "containerDefinitions"
    ]
    settings = {e["name"]: e["value"] for e in defined["environment"]}
    assert settings["IAM_USERS"] == parameters["IamUsers"]
    del settings["DB_CLUSTER_ID"]  # managed-secret: the cluster is all it names
    settings["DEADLINE_SECONDS"] = overridden["DEADLINE_SECONDS"]
    env = job_env(pg, CFN_REQUEST=json.dumps(request), **settings, **moto.env)
    run = run_job(env, *container["command"])
    assert run.code == 0, run
    assert run.result["response"]["status"] == "SUCCESS"
    # Answered: the URL is gone from SSM too.
    assert not ssm.get_parameters(Names=[name])["Parameters"]
    stack = cfn.describe_stacks(StackName=stack_id)["Stacks"][0]
    assert stack["StackStatus"] == "CREATE_COMPLETE", stack
    outputs = {o["OutputKey"]: o["OutputValue"] for o in stack["Outputs"]}
    assert outputs["ServiceToken"] == event["ServiceToken"]
    state = catalog(pg)
    assert members_of(state, "app_user") == {"rds_iam", "app_readwrite"}
    assert members_of(state, "report_user") == {"rds_iam", "app_readonly"}
    # The rule CloudFormation made hears this task stopping, and no other. Matched by
    # moto's own matcher (what its PutEvents uses): moto has no TestEventPattern.
    rule = moto.client("events").describe_rule(Name=_physical(cfn, stack_id, "LauncherTaskStopped"))
    pattern = EventPattern(rule["EventPattern"], EventPatternParser(rule["EventPattern"]).parse())
    stopped = stopped_event(task, None, stoppedReason="CannotPullContainerError")
    # moto types the event as its own TypedDict; it is the JSON EventBridge delivers.
    assert pattern.matches_event(cast(Any, stopped))
    running = stopped | {"detail": stopped["detail"] | {"lastStatus": "RUNNING"}}
    pipeline = stopped | {"detail": stopped["detail"] | {"startedBy": "aurora-bootstrap"}}
    elsewhere = stopped | {
        "detail": stopped["detail"]
        | {
            "taskDefinitionArn": f"arn:aws:ecs:{awsemu.REGION}:{awsemu.ACCOUNT}:"
            "task-definition/aurora-bootstrap-dbx:1"
        }
    }
    for other in (running, pipeline, elsewhere):
        assert not pattern.matches_event(cast(Any, other))


def _physical(cfn: Any, stack_id: str, logical: str) -> str:
    resources = cfn.describe_stack_resources(StackName=stack_id)["StackResources"]
    return next(
        str(r["PhysicalResourceId"]) for r in resources if r.get("LogicalResourceId") == logical
    )


CDK = ROOT / "deploy" / "cdk"


def _synthesize_the_cdk_example(tmp_path: Path) -> dict[str, Any]:
    """deploy/cdk/example/app.ts (a DatabaseCluster and AuroraBootstrap in one stack),
    type-checked by tsc against aws-cdk-lib and synthesized by node."""
    tsc = npm_tool("tsc")
    work = tmp_path / "cdk"
    shutil.copytree(ROOT / "deploy", work / "deploy")
    (work / "node_modules").symlink_to(ROOT / "node_modules")
    strict = ("--strict", "--skipLibCheck", "--target", "es2022", "--module", "commonjs")
    _passes(str(tsc), *strict, "--types", "node", "deploy/cdk/example/app.ts", cwd=work)
    out = tmp_path / "cdk.out"
    env = {**os.environ, "CDK_OUTDIR": str(out)}
    _passes("node", "deploy/cdk/example/app.js", cwd=work, env=env)
    synthesized = out / "Database.template.json"
    # W3005 on CDK's own Lambda, which DependsOn its role's policy as well as its role.
    _passes(CFN_LINT, "--ignore-checks", "W3005", "--", str(synthesized))
    data: dict[str, Any] = json.loads(synthesized.read_text())
    return data


def _of_type(data: dict[str, Any], kind: str) -> list[str]:
    return [name for name, r in data["Resources"].items() if r["Type"] == kind]


def test_the_cdk_construct_makes_the_bootstrap_in_the_clusters_own_stack(tmp_path: Path) -> None:
    data = _synthesize_the_cdk_example(tmp_path)
    resources = data["Resources"]
    [custom] = _of_type(data, "Custom::AuroraBootstrap")
    [cluster] = _of_type(data, "AWS::RDS::DBCluster")
    [writer] = _of_type(data, "AWS::RDS::DBInstance")
    [launcher] = _of_type(data, "AWS::Lambda::Function")
    resource = resources[custom]
    props = resource["Properties"]
    assert props["ServiceToken"] == {"Fn::GetAtt": [launcher, "Arn"]}
    assert props["ClusterId"] == {"Ref": cluster}
    assert set(props["Triggers"]) == {"Image", "IamUsers", "GroupRoles", "TaskDefinition"}
    assert writer in resource["DependsOn"]  # the writer instance, not just the cluster
    assert int(props["ServiceTimeout"]) <= 3600
    function = resources[launcher]["Properties"]
    assert "VpcConfig" not in function
    assert function["Code"]["ZipFile"] == LAUNCHER.read_text()
    deadline = int(function["Environment"]["Variables"]["DEADLINE_SECONDS"])
    assert deadline + 120 <= int(props["ServiceTimeout"])
    # The task is admitted to the cluster on its port, from its own security group.
    [ingress] = _of_type(data, "AWS::EC2::SecurityGroupIngress")
    rule = resources[ingress]["Properties"]
    assert rule["FromPort"] == {"Fn::GetAtt": [cluster, "Endpoint.Port"]}
    assert "UsersTaskSecurityGroup" in json.dumps(rule["SourceSecurityGroupId"])


def _without_the_cluster(data: dict[str, Any], moto: InProcessMoto, password: str) -> str:
    """The synthesized template less the cluster's own resources, which moto's
    CloudFormation cannot make (it has no AWS::RDS::DBCluster, no Aurora DBInstance,
    no AWS::SecretsManager::Secret): they are made through moto's RDS and Secrets
    Manager APIs instead, and the template's references to them resolved. Scripted."""
    [cluster] = _of_type(data, "AWS::RDS::DBCluster")
    [writer] = _of_type(data, "AWS::RDS::DBInstance")
    [secret] = _of_type(data, "AWS::SecretsManager::Secret")
    [attachment] = _of_type(data, "AWS::SecretsManager::SecretTargetAttachment")
    rds = moto.client("rds")
    rds.create_db_cluster(
        DBClusterIdentifier="database-cluster",
        Engine="aurora-postgresql",
        MasterUsername=localpg.MASTER_USER,
        MasterUserPassword="unused-password",
        EnableIAMDatabaseAuthentication=True,
    )
    made = rds.describe_db_clusters(DBClusterIdentifier="database-cluster")["DBClusters"][0]
    login = {"username": localpg.MASTER_USER, "password": password}
    arn = moto.client("secretsmanager").create_secret(
        Name="database-master", SecretString=json.dumps(login)
    )["ARN"]
    gone = {cluster, writer, secret, attachment}
    refs = {cluster: "database-cluster", writer: "database-writer", secret: arn, attachment: arn}
    attributes = {
        "Endpoint.Address": made["Endpoint"],
        "Endpoint.Port": str(made["Port"]),
        "ReadEndpoint.Address": made["ReaderEndpoint"],
        "DBClusterArn": made["DBClusterArn"],
    }

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            if node.get("Ref") in refs:
                return refs[node["Ref"]]
            if "Fn::GetAtt" in node and node["Fn::GetAtt"][0] in gone:
                return attributes[node["Fn::GetAtt"][1]]
            out = {k: resolve(v) for k, v in node.items()}
            depends = out.get("DependsOn")
            if isinstance(depends, list):
                out["DependsOn"] = [d for d in depends if d not in gone] or None
            elif depends in gone:
                out["DependsOn"] = None
            return {k: v for k, v in out.items() if not (k == "DependsOn" and v is None)}
        if isinstance(node, list):
            return [resolve(v) for v in node]
        return node

    kept = {k: v for k, v in data["Resources"].items() if k not in gone}
    return json.dumps(resolve(data | {"Resources": kept}))


def test_the_cdk_example_deploys_and_completes_when_the_worker_answers(
    moto: InProcessMoto, pg18: localpg.LocalPostgres, tmp_path: Path
) -> None:
    """One stack: the cluster (played, see _without_the_cluster), the construct's task
    definition, roles, launcher and rule, and Custom::AuroraBootstrap, which reaches
    CREATE_COMPLETE when the task the launcher starts (the worker, run here as Fargate
    would) answers. The worker takes ClusterId and SecretArn from the resource."""
    data = _synthesize_the_cdk_example(tmp_path)
    cfn = moto.client("cloudformation")
    stack_id = cfn.create_stack(
        StackName="Database",
        TemplateBody=_without_the_cluster(data, moto, pg18.master_password),
        Capabilities=["CAPABILITY_IAM"],
    )["StackId"]
    # Scripted: moto's RunTask needs a container-level memory, which a Fargate task
    # definition need not give; the launcher runs the definition registered again
    # with one, in the construct's family, which its role allows.
    ecs = moto.client("ecs")
    [made_arn] = _wait("task definition", lambda: ecs.list_task_definitions()["taskDefinitionArns"])
    made = ecs.describe_task_definition(taskDefinition=made_arn)["taskDefinition"]
    registered = _without_nulls(made)
    registered["containerDefinitions"][0]["memory"] = int(made["memory"])
    clean = ecs.register_task_definition(**registered)["taskDefinition"]["taskDefinitionArn"]
    moto.environment_override["TASK_DEFINITION"] = clean
    moto.ready.set()
    _wait("invocation of the launcher", lambda: moto.events[:1])
    assert _wait("launcher's result", lambda: moto.results) == ["STARTED"]
    [cluster] = ecs.list_clusters()["clusterArns"]
    arns = _wait("task", lambda: ecs.list_tasks(cluster=cluster)["taskArns"])
    [task] = ecs.describe_tasks(cluster=cluster, tasks=arns)["tasks"]
    [container] = task["overrides"]["containerOverrides"]
    overridden = {e["name"]: e["value"] for e in container["environment"]}
    request = json.loads(overridden["CFN_REQUEST"])
    assert set(request["ResourceProperties"]) == {"ClusterId", "SecretArn"}
    assert "ResponseURL" not in request
    ssm = moto.client("ssm")
    name = request["ResponseURLParameter"]
    url = ssm.get_parameter(Name=name, WithDecryption=True)["Parameter"]["Value"]
    ssm.put_parameter(Name=name, Value=_reachable(url, moto), Type="SecureString", Overwrite=True)
    [defined] = ecs.describe_task_definition(taskDefinition=task["taskDefinitionArn"])[
        "taskDefinition"
    ]["containerDefinitions"]
    settings = {e["name"]: e["value"] for e in defined["environment"]} | overridden
    # Where the database is: moto's cluster has none behind it, the local server does.
    env = job_env(pg18, **settings, **moto.env)
    del env["DB_PASSWORD"]  # the secret the resource names is the login
    run = run_job(env, *container["command"])
    assert run.code == 0, run
    stack = cfn.describe_stacks(StackName=stack_id)["Stacks"][0]
    assert stack["StackStatus"] == "CREATE_COMPLETE", stack
    state = catalog(pg18)
    assert members_of(state, "app_user") == {"rds_iam", "app_readwrite"}
    assert members_of(state, "report_user") == {"rds_iam", "app_readonly"}


TERRAFORM_MODULE = ROOT / "deploy" / "terraform" / "aurora-bootstrap"


def test_the_terraform_module_passes_the_templates_parameters_and_declares_its_variables() -> None:
    """Read as text (no Terraform binary or provider is installed here): every
    parameter the module gives the stack is one of the template's, every parameter the
    template requires is given, the in-stack resource is on, and the variables used
    are the variables declared."""
    main = (TERRAFORM_MODULE / "main.tf").read_text()
    variables = (TERRAFORM_MODULE / "variables.tf").read_text()
    declared = set(re.findall(r'^variable "(\w+)"', variables, flags=re.M))
    used = set(re.findall(r"\bvar\.(\w+)", main + variables))
    assert used == declared, used ^ declared
    block = main.split("parameters = {", 1)[1].split("\n  }", 1)[0]
    given = dict(re.findall(r"^\s+(\w+)\s+=\s+(.+)$", block, flags=re.M))
    parameters = template()["Parameters"]
    assert set(given) <= set(parameters), set(given) - set(parameters)
    required = {name for name, p in parameters.items() if "Default" not in p}
    assert required <= set(given), required - set(given)
    assert given["BootstrapOnDeploy"] == '"true"'
    assert 'file("${path.module}/../../cloudformation.yaml")' in main
    assert (TERRAFORM_MODULE / "../../cloudformation.yaml").resolve() == TEMPLATE


def test_the_terraform_module_is_formatted(tmp_path: Path) -> None:
    terraform = shutil.which("terraform")
    if terraform is None:
        pytest.skip("no terraform binary on this machine")
    _passes(terraform, "fmt", "-check", "-diff", "-no-color", cwd=TERRAFORM_MODULE)


def test_the_terraform_module_is_valid(tmp_path: Path) -> None:
    """terraform validate needs the AWS provider's schema: skipped where the provider
    cannot be installed (no registry here; the README's form stands in for it with
    terraform_data, the module cannot)."""
    terraform = shutil.which("terraform")
    if terraform is None:
        pytest.skip("no terraform binary on this machine")
    shutil.copytree(ROOT / "deploy", tmp_path / "deploy")
    work = tmp_path / "deploy" / "terraform" / "aurora-bootstrap"
    config = tmp_path / "terraformrc"
    config.write_text("")
    env = {**os.environ, "TF_CLI_CONFIG_FILE": str(config), "TF_IN_AUTOMATION": "1"}
    init = subprocess.run(
        [terraform, "init", "-backend=false", "-input=false", "-no-color"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if init.returncode != 0 and "registry.terraform.io" in init.stdout + init.stderr:
        pytest.skip("the AWS provider cannot be installed here (no registry)")
    assert init.returncode == 0, init.stdout + init.stderr
    _passes(terraform, "validate", "-no-color", cwd=work, env=env)


_CLUSTER_STAND_INS = """  AuroraCluster:
    Type: AWS::RDS::DBCluster
    Properties:
      Engine: aurora-postgresql
      MasterUsername: master
      ManageMasterUserPassword: true
  AuroraInstance:
    Type: AWS::RDS::DBInstance
    Properties:
      Engine: aurora-postgresql
      DBClusterIdentifier: !Ref AuroraCluster
      DBInstanceClass: db.serverless
  DatabaseSecurityGroup:
    Type: AWS::EC2::SecurityGroup
    Properties:
      GroupDescription: the cluster
"""


def test_the_same_stack_cloudformation_form_is_cfn_lint_clean(tmp_path: Path) -> None:
    """The docs' form in the stack that makes the cluster, with the cluster, its writer
    and its security group it names, cfn-lint clean; it names the cluster and its
    managed secret as properties and admits the task stack's security group."""
    page = (ROOT / IAC_PAGE[0]).read_text()
    section = page.split("## In the stack that makes the cluster", 1)[1]
    snippet = section.split("```yaml\n", 1)[1].split("```", 1)[0]
    for needed in ("ClusterId: !Ref AuroraCluster", "TaskSecurityGroupId", "SecretArn:"):
        assert needed in snippet
    stack = tmp_path / "cluster-stack.yaml"
    stack.write_text('AWSTemplateFormatVersion: "2010-09-09"\n' + snippet + _CLUSTER_STAND_INS)
    _passes(CFN_LINT, str(stack))
