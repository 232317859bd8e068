"""Logging in with IAM tokens as Aurora checks them: PostgreSQL 15 (Debian's build has
LDAP; the embedded 18 build has not, so there members of rds_iam are still trusted)
sends members of rds_iam to `aurora-bootstrap iam-auth-server`, run as a subprocess,
which verifies the token's SigV4 signature."""

from __future__ import annotations

import datetime
import json
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import boto3
import botocore.auth
import psycopg
import pytest

from app import aws as app_aws
from app.inputs import settings as app_settings
from app.login import discover
from tests import awsemu
from tests.conftest import CLI, IN_CI, OUTPUTS, SECRETS, job_env, reset, run_job
from tools import localpg

REGION = "eu-west-1"
KEY_ID, SECRET = "AKIAIAMAUTHTEST00001", "iam-auth-test-secret-key-0001"
OTHER_KEY_ID, OTHER_SECRET = "AKIAIAMAUTHTEST00002", "iam-auth-test-secret-key-0002"
SECRETS.update({SECRET, OTHER_SECRET})


class IamAuth:
    """A PostgreSQL 15 with TLS whose rds_iam members log in by token, and the
    iam-auth-server it asks."""

    def __init__(self, base: Path) -> None:
        bindir = localpg.debian_bindir(15)
        if bindir is None:
            message = "PostgreSQL 15 (with LDAP) not found: apt-get install postgresql-15"
            pytest.fail(message) if IN_CI else pytest.skip(message)
        assert bindir is not None
        self.ldap_port = localpg.free_port()
        self.pg = localpg.new_server(bindir, tls=True, base=base, iam_ldap_port=self.ldap_port)
        SECRETS.update({self.pg.master_password, self.pg.superuser_password})
        self.log = base / "iam-auth-server.log"
        self.server = subprocess.Popen(
            [str(CLI), "iam-auth-server"],
            env={
                "PATH": os.environ["PATH"],
                "IAM_AUTH_LISTEN": f"127.0.0.1:{self.ldap_port}",
                "IAM_AUTH_ENDPOINT": f"127.0.0.1:{self.pg.port}",
                "IAM_AUTH_KEYS": f"{KEY_ID}:{SECRET}",
                "AWS_REGION": REGION,
                "LOG_FORMAT": "json",
            },
            stdout=subprocess.DEVNULL,
            stderr=self.log.open("w"),
        )
        deadline = time.monotonic() + 15
        while "iam_auth_server_listening" not in self.log.read_text():
            assert self.server.poll() is None, self.log.read_text()
            assert time.monotonic() < deadline, "iam-auth-server did not start"
            time.sleep(0.05)

    def token(
        self,
        user: str,
        *,
        port: int | None = None,
        key: tuple[str, str] = (KEY_ID, SECRET),
        at: datetime.datetime | None = None,
    ) -> str:
        """A token as `aws rds generate-db-auth-token` makes it (signed at `at`)."""
        client = boto3.client(
            "rds", region_name=REGION, aws_access_key_id=key[0], aws_secret_access_key=key[1]
        )
        with mock.patch.object(
            botocore.auth,
            "get_current_datetime",
            return_value=at or datetime.datetime.now(datetime.UTC),
        ):
            token: str = client.generate_db_auth_token(
                DBHostname="127.0.0.1", Port=port or self.pg.port, DBUsername=user
            )
        SECRETS.add(token)
        return token

    def login(self, user: str, password: str) -> None:
        assert self.pg.tls is not None
        with psycopg.connect(
            host="127.0.0.1",
            port=self.pg.port,
            user=user,
            password=password,
            dbname="postgres",
            sslmode="verify-full",
            sslrootcert=str(self.pg.tls.ca_pem),
            connect_timeout=10,
        ) as conn:
            conn.execute("SELECT 1")

    def decisions(self) -> str:
        text = self.log.read_text()
        OUTPUTS.append(text)
        return text

    def stop(self) -> int:
        self.server.send_signal(signal.SIGTERM)
        code = self.server.wait(timeout=10)
        self.pg.stop()
        return code


@pytest.fixture(scope="module")
def iam_auth() -> Iterator[IamAuth]:
    base = Path(tempfile.mkdtemp(prefix="aurora-bootstrap-iam-"))
    base.chmod(0o755)
    stack = IamAuth(base)
    yield stack
    assert stack.stop() == 0, "SIGTERM stops the iam-auth-server cleanly"


@pytest.fixture
def provisioned(iam_auth: IamAuth) -> IamAuth:
    reset(iam_auth.pg)
    run = run_job(job_env(iam_auth.pg, IAM_USERS="alice:app_readonly,bob"))
    assert run.code == 0, run
    return iam_auth


def test_a_token_logs_in_and_the_decision_is_logged_without_it(provisioned: IamAuth) -> None:
    token = provisioned.token("alice")
    assert len(token) > 300
    provisioned.login("alice", token)
    log = provisioned.decisions()
    assert '"user": "alice", "decision": "accepted"' in log
    assert token not in log


def test_a_token_signed_with_temporary_credentials_logs_in(provisioned: IamAuth) -> None:
    """Over 1 KB with its session token: RADIUS and PAM could not carry it."""
    client = boto3.client(
        "rds",
        region_name=REGION,
        aws_access_key_id=KEY_ID,
        aws_secret_access_key=SECRET,
        aws_session_token="FwoGZXIvYXdzE" + "x" * 900,
    )
    token = client.generate_db_auth_token(
        DBHostname="127.0.0.1", Port=provisioned.pg.port, DBUsername="bob"
    )
    SECRETS.add(token)
    assert len(token) > 1024
    provisioned.login("bob", token)


def _refusals(stack: IamAuth) -> list[tuple[str, str, str]]:
    now = datetime.datetime.now(datetime.UTC)
    good = stack.token("alice")
    flipped = good[:-1] + ("0" if good[-1] != "0" else "1")
    return [
        ("another user's token", stack.token("bob"), "signed for another user"),
        ("a bad signature", flipped, "signature does not verify"),
        (
            "an expired token",
            stack.token("alice", at=now - datetime.timedelta(minutes=20)),
            "expired",
        ),
        ("a token for another endpoint", stack.token("alice", port=1), "another endpoint"),
        ("an untrusted key", stack.token("alice", key=(OTHER_KEY_ID, OTHER_SECRET)), "not trust"),
        ("a password", "not-a-token-password", "not an IAM auth token"),
    ]


def test_refusals(provisioned: IamAuth) -> None:
    for case, password, reason in _refusals(provisioned):
        with pytest.raises(psycopg.OperationalError, match="LDAP authentication failed"):
            provisioned.login("alice", password)
        assert reason in provisioned.decisions(), case


def test_verify_connect_logs_in_by_token(provisioned: IamAuth, aws: awsemu.Emulator) -> None:
    """verify --connect signs a token per user with the job's AWS credentials (the
    trusted key here) and really logs in through the token check."""
    env = job_env(
        provisioned.pg,
        IAM_USERS="alice:app_readonly,bob",
        AWS_REGION=REGION,
        AWS_ACCESS_KEY_ID=KEY_ID,
        AWS_SECRET_ACCESS_KEY=SECRET,
    )
    run = run_job(env, "verify", "--connect")
    assert run.code == 0, run
    assert run.result["connections"] == [
        {"user": "alice", "ok": True},
        {"user": "bob", "ok": True},
    ]
    untrusted = env | {"AWS_ACCESS_KEY_ID": OTHER_KEY_ID, "AWS_SECRET_ACCESS_KEY": OTHER_SECRET}
    refused = run_job(untrusted, "verify", "--connect")
    assert refused.code == 7, refused
    assert not any(c["ok"] for c in refused.result["connections"])


@pytest.mark.parametrize(
    ("env", "setting"),
    [
        (
            {"IAM_AUTH_ENDPOINT": "no-port", "AWS_REGION": REGION, "IAM_AUTH_KEYS": "a:b"},
            "IAM_AUTH_ENDPOINT",
        ),
        ({"IAM_AUTH_ENDPOINT": "h:5432", "IAM_AUTH_KEYS": "a:b"}, "AWS_REGION"),
        (
            {"IAM_AUTH_ENDPOINT": "h:5432", "AWS_REGION": REGION, "IAM_AUTH_KEYS": "nocolon"},
            "IAM_AUTH_KEYS",
        ),
        ({"IAM_AUTH_ENDPOINT": "h:5432", "AWS_REGION": REGION}, "IAM_AUTH_KEYS"),
        (
            {
                "IAM_AUTH_ENDPOINT": "h:5432",
                "AWS_REGION": REGION,
                "IAM_AUTH_KEYS": "a:b",
                "IAM_AUTH_LISTEN": "0.0.0.0:99999",
            },
            "IAM_AUTH_LISTEN",
        ),
    ],
)
def test_bad_server_settings_exit_2(env: dict[str, str], setting: str) -> None:
    done = subprocess.run(
        [str(CLI), "iam-auth-server"],
        env={"PATH": os.environ["PATH"], "LOG_FORMAT": "json", **env},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    OUTPUTS.extend((done.stdout, done.stderr))
    assert done.returncode == 2, done.stderr
    assert setting in done.stderr


# The job's own login by token: DB_IAM_AUTH, and clusters whose master is IAM-only.

IAM_MASTER = "iam_master"


def _iam_master(stack: IamAuth) -> None:
    """A master as Aurora makes it with --master-user-authentication-type iam-db-auth:
    no password, a member of rds_iam."""
    with stack.pg.superuser_connect() as conn:
        conn.execute(f"CREATE ROLE {IAM_MASTER} LOGIN CREATEROLE IN ROLE rds_superuser, rds_iam")


def _token_env(stack: IamAuth, **overrides: str) -> dict[str, str]:
    env = job_env(stack.pg, DB_USER=IAM_MASTER, AWS_REGION=REGION)
    env.pop("DB_PASSWORD")
    env |= {"AWS_ACCESS_KEY_ID": KEY_ID, "AWS_SECRET_ACCESS_KEY": SECRET}
    return env | overrides


def test_the_job_logs_in_with_a_token_it_signs(iam_auth: IamAuth) -> None:
    reset(iam_auth.pg)
    _iam_master(iam_auth)
    run = run_job(_token_env(iam_auth, DB_IAM_AUTH="true", IAM_USERS="carol"))
    assert run.code == 0, run
    assert {"action": "create_role", "role": "carol", "login": True} in run.changes
    assert f'"user": "{IAM_MASTER}", "decision": "accepted"' in iam_auth.decisions()


def test_a_refused_token_login_exits_4_naming_the_likely_causes(iam_auth: IamAuth) -> None:
    reset(iam_auth.pg)
    _iam_master(iam_auth)
    env = _token_env(
        iam_auth,
        DB_IAM_AUTH="true",
        IAM_USERS="carol",
        AWS_ACCESS_KEY_ID=OTHER_KEY_ID,
        AWS_SECRET_ACCESS_KEY=OTHER_SECRET,
    )
    run = run_job(env)
    assert run.code == 4, run
    message = run.result["error"]["message"]
    assert "rds-db:connect" in message and "rds_iam" in message


def test_with_the_cluster_the_token_login_reads_no_secret(
    iam_auth: IamAuth, aws: awsemu.Emulator
) -> None:
    """DB_IAM_AUTH with DB_CLUSTER_ID: user and endpoint come from the cluster (the
    endpoint overridden to reach the local server), and no secret is read."""
    reset(iam_auth.pg)
    _iam_master(iam_auth)
    creds = awsemu.client_env(aws.moto.url)
    rds = boto3.client(
        "rds",
        endpoint_url=aws.moto.url,
        region_name=REGION,  # the region the token check expects
        aws_access_key_id=creds["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=creds["AWS_SECRET_ACCESS_KEY"],
    )
    rds.create_db_cluster(
        DBClusterIdentifier="iam-cluster",
        Engine="aurora-postgresql",
        MasterUsername=IAM_MASTER,
        MasterUserPassword="unused-password",
        EnableIAMDatabaseAuthentication=True,
    )

    env = _token_env(iam_auth, DB_CLUSTER_ID="iam-cluster", DB_IAM_AUTH="true", IAM_USERS="dave")
    env |= awsemu.client_env(aws.url) | {
        "AWS_ACCESS_KEY_ID": KEY_ID,
        "AWS_SECRET_ACCESS_KEY": SECRET,
        "AWS_REGION": REGION,
    }
    env.pop("DB_USER")  # the cluster's MasterUsername
    run = run_job(env)
    assert run.code == 0, run
    assert not [op for _service, op in aws.state.calls if op == "GetSecretValue"]
    policy = run_job(env, "policy")
    assert policy.code == 0, policy
    resources = json.loads(policy.stdout)["Statement"][0]["Resource"]
    assert [r.rsplit("/", 1)[1] for r in resources] == ["dave", IAM_MASTER]


@pytest.mark.parametrize(
    ("env", "setting"),
    [
        ({"DB_IAM_AUTH": "true", "DB_PASSWORD": "x-password"}, "DB_IAM_AUTH"),
        ({"DB_IAM_AUTH": "true", "DB_SECRET_ARN": "arn:aws:secretsmanager:x"}, "DB_IAM_AUTH"),
        ({"ENABLE_IAM_AUTH": "true", "DB_PASSWORD": "x-password"}, "ENABLE_IAM_AUTH"),
    ],
)
def test_settings_that_contradict_a_token_login_exit_2(env: dict[str, str], setting: str) -> None:
    base = {"DB_HOST": "127.0.0.1", "DB_USER": "m", "DB_SSLMODE": "disable"}
    run = run_job(job_env(**base, **env))
    assert run.code == 2, run
    assert run.result["error"]["message"].startswith(f"{setting}:")


# ENABLE_IAM_AUTH: the seed's step 2.


def _cluster_without_iam(aws: awsemu.Emulator, pg: localpg.LocalPostgres) -> dict[str, str]:
    aws.admin("rds").create_db_cluster(
        DBClusterIdentifier="plain-cluster",
        Engine="aurora-postgresql",
        MasterUsername=localpg.MASTER_USER,
        MasterUserPassword="unused-password",
        EnableIAMDatabaseAuthentication=False,
    )
    return job_env(
        pg, **awsemu.client_env(aws.url), DB_CLUSTER_ID="plain-cluster", IAM_USERS="erin"
    )


class ModifyScript:
    """Scripted: moto accepts ModifyDBCluster but ignores EnableIAMDatabaseAuthentication.
    After the call, as RDS does, the cluster is "modifying" once, then available with IAM
    authentication on."""

    def __init__(self, aws: awsemu.Emulator) -> None:
        self.modified = False
        self.describes_after = 0
        aws.state.rewrites.append(self.rewrite)

    def rewrite(self, service: str, operation: str, body: bytes) -> bytes:
        if operation == "ModifyDBCluster":
            self.modified = True
        if operation != "DescribeDBClusters" or not self.modified:
            return body
        self.describes_after += 1
        body = body.replace(
            b"<IAMDatabaseAuthenticationEnabled>false</IAMDatabaseAuthenticationEnabled>",
            b"<IAMDatabaseAuthenticationEnabled>true</IAMDatabaseAuthenticationEnabled>",
        )
        if self.describes_after == 1:
            body = body.replace(b"<Status>available</Status>", b"<Status>modifying</Status>")
        return body


def test_enable_iam_auth_turns_it_on_then_applies(
    pg: localpg.LocalPostgres, aws: awsemu.Emulator
) -> None:
    env = _cluster_without_iam(aws, pg)
    script = ModifyScript(aws)
    run = run_job(env | {"ENABLE_IAM_AUTH": "true"})
    assert run.code == 0, run
    assert run.changes[0] == {"action": "enable_iam_auth", "cluster": "plain-cluster"}
    assert aws.state.calls.count(("rds", "ModifyDBCluster")) == 1
    assert script.describes_after >= 2, "it waited for the cluster"
    [modify] = [
        body
        for (_s, op), body in zip(aws.state.calls, aws.state.bodies, strict=True)
        if op == "ModifyDBCluster"
    ]
    assert b"EnableIAMDatabaseAuthentication=true" in modify
    assert b"ApplyImmediately=true" in modify
    again = run_job(env | {"ENABLE_IAM_AUTH": "true"})
    assert again.code == 0 and again.changes == []


def test_plan_with_enable_iam_auth_only_says_it_would(
    pg: localpg.LocalPostgres, aws: awsemu.Emulator
) -> None:
    env = _cluster_without_iam(aws, pg)
    run = run_job(env | {"ENABLE_IAM_AUTH": "true"}, "plan")
    assert run.code == 0, run
    assert run.changes[0] == {"action": "enable_iam_auth", "cluster": "plain-cluster"}
    assert ("rds", "ModifyDBCluster") not in aws.state.calls


def test_a_cluster_that_reports_an_iam_only_master_defaults_to_a_token_login() -> None:
    """DescribeDBClusters does not report MasterUserAuthenticationType today (botocore's
    model of DBCluster lacks it); where it does, an IAM-only master means a token."""
    cluster = app_aws.Cluster(
        "c", "arn:aws:rds:eu-west-1:1:cluster:c", "h", 5432, "m", "r", None, "iam-db-auth"
    )
    bare = app_settings.Settings.model_validate({"DB_CLUSTER_ID": "c"})
    assert discover.by_token(bare, cluster)
    with_password = app_settings.Settings.model_validate({"DB_CLUSTER_ID": "c", "DB_PASSWORD": "p"})
    assert not discover.by_token(with_password, cluster)
