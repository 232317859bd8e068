"""Master credentials from Secrets Manager or the cluster, throttling, token and
policy: the job as a subprocess against a moto server and the real PostgreSQL."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from tests import awsemu
from tests.conftest import SECRETS, catalog, job_env, members_of, role, run_job
from tools import localpg


def aws_env(pg: localpg.LocalPostgres, aws: awsemu.Emulator, **overrides: str) -> dict[str, str]:
    """The job's environment with no DB_PASSWORD, DB_HOST or DB_USER of its own."""
    env = job_env(pg, **awsemu.client_env(aws.url), IAM_USERS="alice:app_readonly")
    for key in ("DB_PASSWORD", "DB_HOST", "DB_USER", "DB_PORT"):
        env.pop(key)
    env |= overrides
    return env


def put_secret(aws: awsemu.Emulator, value: dict[str, Any] | str, name: str = "db") -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    SECRETS.add(text)
    arn: str = aws.admin("secretsmanager").create_secret(Name=name, SecretString=text)["ARN"]
    return arn


def make_cluster(
    aws: awsemu.Emulator,
    pg: localpg.LocalPostgres,
    *,
    iam: bool = True,
    managed: bool = True,
    name: str = "app-cluster",
) -> dict[str, Any]:
    rds = aws.admin("rds")
    rds.create_db_cluster(
        DBClusterIdentifier=name,
        Engine="aurora-postgresql",
        MasterUsername=localpg.MASTER_USER,
        ManageMasterUserPassword=managed,
        **({} if managed else {"MasterUserPassword": "unused-password"}),
        EnableIAMDatabaseAuthentication=iam,
    )
    cluster: dict[str, Any] = rds.describe_db_clusters(DBClusterIdentifier=name)["DBClusters"][0]
    if managed:
        # moto's managed secret holds a canned password: put the real one in.
        secret = {"username": localpg.MASTER_USER, "password": pg.master_password}
        aws.admin("secretsmanager").put_secret_value(
            SecretId=cluster["MasterUserSecret"]["SecretArn"], SecretString=json.dumps(secret)
        )
    return cluster


def assert_provisioned(pg: localpg.LocalPostgres) -> None:
    state = catalog(pg)
    assert role(state, "alice") is not None
    assert members_of(state, "alice") == {"rds_iam", "app_readonly"}


def test_master_login_from_a_secret_by_arn(pg: localpg.LocalPostgres, aws: awsemu.Emulator) -> None:
    arn = put_secret(
        aws,
        {
            "username": localpg.MASTER_USER,
            "password": pg.master_password,
            "host": "127.0.0.1",
            "port": pg.port,
            "dbname": "postgres",
            "engine": "postgres",
        },
    )
    run = run_job(aws_env(pg, aws, DB_SECRET_ARN=arn))
    assert run.code == 0, run
    start = next(e for e in run.logs if e["event"] == "start")
    assert start["credentials"] == "secret"
    assert (start["host"], start["port"]) == ("127.0.0.1", pg.port)
    assert_provisioned(pg)
    assert pg.master_password not in run.stdout + run.stderr


def test_explicit_settings_override_the_secret(
    pg: localpg.LocalPostgres, aws: awsemu.Emulator
) -> None:
    arn = put_secret(
        aws,
        {
            "username": localpg.MASTER_USER,
            "password": pg.master_password,
            "host": "db.example.invalid",
            "port": 1,
        },
    )
    run = run_job(aws_env(pg, aws, DB_SECRET_ARN=arn, DB_HOST="127.0.0.1", DB_PORT=str(pg.port)))
    assert run.code == 0, run


def test_cluster_discovery_with_the_managed_master_secret(
    pg: localpg.LocalPostgres, aws: awsemu.Emulator
) -> None:
    make_cluster(aws, pg)
    # The cluster's endpoint does not resolve here: DB_HOST and DB_PORT point at the
    # local server, and the rest (user, password) comes from the cluster and its secret.
    run = run_job(
        aws_env(pg, aws, DB_CLUSTER_ID="app-cluster", DB_HOST="127.0.0.1", DB_PORT=str(pg.port))
    )
    assert run.code == 0, run
    start = next(e for e in run.logs if e["event"] == "start")
    assert (start["credentials"], start["user"]) == ("cluster", localpg.MASTER_USER)
    assert ("rds", "DescribeDBClusters") in aws.state.calls
    assert ("secretsmanager", "GetSecretValue") in aws.state.calls
    assert_provisioned(pg)


def test_iam_auth_disabled_exits_3_saying_how_to_enable_it(
    pg: localpg.LocalPostgres, aws: awsemu.Emulator
) -> None:
    make_cluster(aws, pg, iam=False)
    run = run_job(
        aws_env(pg, aws, DB_CLUSTER_ID="app-cluster", DB_HOST="127.0.0.1", DB_PORT=str(pg.port))
    )
    assert run.code == 3, run
    message = run.result["error"]["message"]
    assert "--enable-iam-database-authentication" in message
    assert "app-cluster" in message
    assert role(catalog(pg), "alice") is None


def test_unknown_secret_exits_3_naming_it(pg: localpg.LocalPostgres, aws: awsemu.Emulator) -> None:
    arn = f"arn:aws:secretsmanager:{awsemu.REGION}:{awsemu.ACCOUNT}:secret:nope-AbCdEf"
    run = run_job(aws_env(pg, aws, DB_SECRET_ARN=arn))
    assert run.code == 3, run
    assert arn in run.result["error"]["message"]
    assert "not found" in run.result["error"]["message"]


def test_unknown_cluster_exits_3_naming_it(pg: localpg.LocalPostgres, aws: awsemu.Emulator) -> None:
    run = run_job(aws_env(pg, aws, DB_CLUSTER_ID="no-such-cluster"))
    assert run.code == 3, run
    assert "cluster no-such-cluster not found" in run.result["error"]["message"]


def test_cluster_without_managed_secret_and_no_other_source_exits_3(
    pg: localpg.LocalPostgres, aws: awsemu.Emulator
) -> None:
    make_cluster(aws, pg, managed=False)
    run = run_job(aws_env(pg, aws, DB_CLUSTER_ID="app-cluster"))
    assert run.code == 3, run
    assert "DB_SECRET_ARN" in run.result["error"]["message"]


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("hunter2-not-json-at-all", "is not JSON"),
        ('["a", "list"]', "not an object"),
        ('{"username": "master"}', "lacks password"),
        ('{"password": "only-a-password-here"}', "lacks username"),
    ],
)
def test_malformed_secret_exits_3_without_echoing_it(
    pg: localpg.LocalPostgres, aws: awsemu.Emulator, value: str, fragment: str
) -> None:
    arn = put_secret(aws, value)
    run = run_job(aws_env(pg, aws, DB_SECRET_ARN=arn))
    assert run.code == 3, run
    assert fragment in run.result["error"]["message"]
    assert value not in run.stdout + run.stderr
    if "only-a-password-here" in value:
        assert "only-a-password-here" not in run.stdout + run.stderr


def test_rotated_secret_is_fetched_again_once(
    pg: localpg.LocalPostgres, aws: awsemu.Emulator
) -> None:
    old = {
        "username": localpg.MASTER_USER,
        "password": "old-rotated-away-password",
        "host": "127.0.0.1",
        "port": pg.port,
    }
    arn = put_secret(aws, old)
    new = json.dumps({**old, "password": pg.master_password})

    def rotate_after_first_read(service: str, operation: str) -> None:
        if operation == "GetSecretValue":
            aws.admin("secretsmanager").put_secret_value(SecretId=arn, SecretString=new)
            aws.state.hooks.clear()

    aws.state.hooks.append(rotate_after_first_read)
    run = run_job(aws_env(pg, aws, DB_SECRET_ARN=arn))
    assert run.code == 0, run
    assert aws.state.calls.count(("secretsmanager", "GetSecretValue")) == 2
    assert "secret_refetched" in {e["event"] for e in run.logs}
    assert "old-rotated-away-password" not in run.stdout + run.stderr
    assert_provisioned(pg)


def test_wrong_password_after_one_refetch_exits_4(
    pg: localpg.LocalPostgres, aws: awsemu.Emulator
) -> None:
    arn = put_secret(
        aws,
        {
            "username": localpg.MASTER_USER,
            "password": "wrong-both-times",
            "host": "127.0.0.1",
            "port": pg.port,
        },
    )
    run = run_job(aws_env(pg, aws, DB_SECRET_ARN=arn))
    assert run.code == 4, run
    assert aws.state.calls.count(("secretsmanager", "GetSecretValue")) == 2
    assert "wrong-both-times" not in run.stdout + run.stderr


def test_throttling_is_retried_and_logged(pg: localpg.LocalPostgres, aws: awsemu.Emulator) -> None:
    make_cluster(aws, pg)
    aws.state.throttle = {"rds": 2, "secretsmanager": 3}
    run = run_job(
        aws_env(pg, aws, DB_CLUSTER_ID="app-cluster", DB_HOST="127.0.0.1", DB_PORT=str(pg.port))
    )
    assert run.code == 0, run
    assert aws.state.throttled == {"rds": 2, "secretsmanager": 3}
    retries = [e for e in run.logs if e["event"] == "retry"]
    reasons = [e["reason"] for e in retries]
    assert sum(r.startswith("Throttling:") for r in reasons) >= 2
    assert sum(r.startswith("ThrottlingException:") for r in reasons) == 3
    assert all(e["delay_s"] >= 0 for e in retries)
    assert_provisioned(pg)


def test_endless_throttling_exits_5_within_the_deadline(
    pg: localpg.LocalPostgres, aws: awsemu.Emulator
) -> None:
    arn = put_secret(aws, {"username": localpg.MASTER_USER, "password": pg.master_password})
    aws.state.throttle_forever = {"secretsmanager"}
    run = run_job(aws_env(pg, aws, DB_SECRET_ARN=arn, DB_HOST="127.0.0.1", DEADLINE_SECONDS="3"))
    assert run.code == 5, run
    assert "ThrottlingException" in run.result["error"]["message"]
    assert run.elapsed < 3 + 5  # the deadline bounds it; the margin covers start-up


def test_a_local_run_never_imports_the_aws_sdk(pg: localpg.LocalPostgres) -> None:
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "app", "plan"],
        env=job_env(pg, IAM_USERS="alice"),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    imported = {
        line.split("|")[-1].strip().split(".")[0]
        for line in done.stderr.splitlines()
        if line.startswith("import time:")
    }
    assert "psycopg" in imported  # the check sees the imports it should
    assert not imported & {"boto3", "botocore", "s3transfer"}


def test_missing_region_is_a_config_error(pg: localpg.LocalPostgres, aws: awsemu.Emulator) -> None:
    env = aws_env(pg, aws, DB_SECRET_ARN="db")
    env.pop("AWS_REGION")
    run = run_job(env)
    assert run.code == 2, run
    assert run.result["error"]["message"].startswith("AWS_REGION:")


def test_no_aws_credentials_exits_3(pg: localpg.LocalPostgres, aws: awsemu.Emulator) -> None:
    env = aws_env(pg, aws, DB_SECRET_ARN="db")
    env.pop("AWS_ACCESS_KEY_ID")
    env.pop("AWS_SECRET_ACCESS_KEY")
    run = run_job(env)
    assert run.code == 3, run
    assert "no AWS credentials" in run.result["error"]["message"]


def _token_parts(token: str) -> tuple[str, dict[str, list[str]]]:
    url = urlsplit("https://" + token)
    return url.netloc, parse_qs(url.query)


def test_token_for_the_configured_endpoint(aws: awsemu.Emulator) -> None:
    env = job_env(**awsemu.client_env(aws.url), DB_HOST="db.example.internal", DB_PORT="6432")
    run = run_job(env, "token", "app_user")
    assert run.code == 0, run
    token = run.stdout.strip()
    assert "\n" not in token
    netloc, query = _token_parts(token)
    assert netloc == "db.example.internal:6432"
    assert query["Action"] == ["connect"]
    assert query["DBUser"] == ["app_user"]
    credential = query["X-Amz-Credential"][0].split("/")
    assert (credential[2], credential[3]) == (awsemu.REGION, "rds-db")
    assert token not in run.stderr


def test_token_endpoint_from_the_cluster(pg: localpg.LocalPostgres, aws: awsemu.Emulator) -> None:
    cluster = make_cluster(aws, pg)
    env = job_env(**awsemu.client_env(aws.url), DB_CLUSTER_ID="app-cluster")
    run = run_job(env, "token", "app_user")
    assert run.code == 0, run
    netloc, _query = _token_parts(run.stdout.strip())
    assert netloc == f"{cluster['Endpoint']}:{cluster['Port']}"


def test_token_rejects_a_bad_user_name(aws: awsemu.Emulator) -> None:
    run = run_job(job_env(**awsemu.client_env(aws.url), DB_HOST="h"), "token", "App User")
    assert run.code == 2, run
    assert run.stdout == ""


def test_policy_allows_connect_as_each_listed_user(
    pg: localpg.LocalPostgres, aws: awsemu.Emulator
) -> None:
    cluster = make_cluster(aws, pg)
    env = job_env(
        **awsemu.client_env(aws.url),
        DB_CLUSTER_ID="app-cluster",
        IAM_USERS="app_user:app_readwrite,report_user",
    )
    run = run_job(env, "policy")
    assert run.code == 0, run
    policy = json.loads(run.stdout)
    assert policy["Version"] == "2012-10-17"
    [statement] = policy["Statement"]
    assert statement["Effect"] == "Allow"
    assert statement["Action"] == "rds-db:connect"
    prefix = (
        f"arn:aws:rds-db:{awsemu.REGION}:{awsemu.ACCOUNT}:dbuser:{cluster['DbClusterResourceId']}"
    )
    assert statement["Resource"] == [f"{prefix}/app_user", f"{prefix}/report_user"]


def test_policy_needs_the_cluster(aws: awsemu.Emulator) -> None:
    run = run_job(job_env(**awsemu.client_env(aws.url), IAM_USERS="a"), "policy")
    assert run.code == 2, run
    assert "DB_CLUSTER_ID" in run.stderr


def test_cluster_that_is_still_busy_is_waited_for(
    pg: localpg.LocalPostgres, aws: awsemu.Emulator
) -> None:
    """moto's clusters are available at once: the proxy reports the first two
    describes as "modifying", then the secret as "rotating" once."""
    make_cluster(aws, pg)
    answers = iter(
        [(b"<Status>available</Status>", b"<Status>modifying</Status>")] * 2
        + [(b"<SecretStatus>active</SecretStatus>", b"<SecretStatus>rotating</SecretStatus>")]
    )

    def busy(service: str, operation: str, body: bytes) -> bytes:
        if operation != "DescribeDBClusters":
            return body
        old, new = next(answers, (b"", b""))
        return body.replace(old, new) if old else body

    aws.state.rewrites.append(busy)
    env = aws_env(pg, aws, DB_CLUSTER_ID="app-cluster", DB_HOST="127.0.0.1", DB_PORT=str(pg.port))
    run = run_job(env, "plan")
    assert run.code == 0, run
    retries = [e["reason"] for e in run.logs if e["event"] == "retry"]
    assert retries == [
        "NotReady: cluster app-cluster is modifying",
        "NotReady: cluster app-cluster is modifying",
        "NotReady: master secret of app-cluster is rotating",
    ]
    assert aws.state.calls.count(("rds", "DescribeDBClusters")) == 4


@pytest.mark.parametrize(
    "status", ["failing-over", "backtracking", "update-iam-db-auth", "a-state-added-later"]
)
def test_cluster_in_a_passing_state_is_waited_for(
    pg: localpg.LocalPostgres, aws: awsemu.Emulator, status: str
) -> None:
    """A failover (and any state botocore's waiter does not give up on) passes by
    itself: the proxy reports the first two describes in that state."""
    make_cluster(aws, pg)
    answers = iter([status] * 2)

    def passing(service: str, operation: str, body: bytes) -> bytes:
        state = next(answers, None) if operation == "DescribeDBClusters" else None
        if state is None:
            return body
        return body.replace(b"<Status>available</Status>", f"<Status>{state}</Status>".encode())

    aws.state.rewrites.append(passing)
    env = aws_env(pg, aws, DB_CLUSTER_ID="app-cluster", DB_HOST="127.0.0.1", DB_PORT=str(pg.port))
    run = run_job(env, "plan")
    assert run.code == 0, run
    retries = [e["reason"] for e in run.logs if e["event"] == "retry"]
    assert retries == [f"NotReady: cluster app-cluster is {status}"] * 2


@pytest.mark.parametrize("status", ["stopped", "deleting", "failed", "incompatible-parameters"])
def test_cluster_that_will_not_come_up_exits_3(
    pg: localpg.LocalPostgres, aws: awsemu.Emulator, status: str
) -> None:
    make_cluster(aws, pg)
    aws.state.rewrites.append(
        lambda service, operation, body: body.replace(
            b"<Status>available</Status>", f"<Status>{status}</Status>".encode()
        )
    )
    run = run_job(aws_env(pg, aws, DB_CLUSTER_ID="app-cluster"))
    assert run.code == 3, run
    assert f"app-cluster is {status}" in run.result["error"]["message"]


def test_password_from_env_with_user_and_endpoint_from_the_cluster(
    pg: localpg.LocalPostgres, aws: awsemu.Emulator
) -> None:
    make_cluster(aws, pg)
    env = aws_env(
        pg,
        aws,
        DB_CLUSTER_ID="app-cluster",
        DB_HOST="127.0.0.1",
        DB_PORT=str(pg.port),
        DB_PASSWORD=pg.master_password,
    )
    run = run_job(env)
    assert run.code == 0, run
    start = next(e for e in run.logs if e["event"] == "start")
    assert (start["credentials"], start["user"]) == ("env", localpg.MASTER_USER)
    assert ("secretsmanager", "GetSecretValue") not in aws.state.calls
