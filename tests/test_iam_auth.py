"""Logging in with IAM tokens as Aurora checks them: PostgreSQL 15 (Debian's build has
LDAP; the embedded 18 build has not, so there members of rds_iam are still trusted)
sends members of rds_iam to `aurora-bootstrap iam-auth-server`, run as a subprocess,
which verifies the token's SigV4 signature."""

from __future__ import annotations

import datetime
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
