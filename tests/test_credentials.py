"""Every AWS credential source a pipeline hands the job, inside the real image and in
the installed package: web identity (EKS, GitHub Actions and GitLab OIDC), an
assume-role profile from a mounted config file, static keys, and ECS container
credentials. Each runs `policy` against moto, with no other credentials in reach.

The trimmed image keeps botocore's data for the clients its credential providers make
(sts here); without it the first two exit 3 with "Unknown service: 'sts'". Scripted:
the ECS agent's credentials endpoint is a small server of the tests' own on 127.0.0.1,
answering as the agent documents; moto's STS accepts any web identity token and any
role. An IAM Identity Center (SSO) profile and `aws login` are not tested here: moto
has neither the SSO portal API (GetRoleCredentials) nor `signin`; the image's probe
test makes their clients instead.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests import awsemu
from tests.conftest import CLI, OUTPUTS, SECRETS
from tests.test_image import _need_engine, docker
from tools import localpg

ROLE = f"arn:aws:iam::{awsemu.ACCOUNT}:role/pipeline"
USERS = "app_user:app_readwrite,report_user"


def _cluster(aws: awsemu.Emulator) -> str:
    rds = aws.admin("rds")
    rds.create_db_cluster(
        DBClusterIdentifier="creds-cluster",
        Engine="aurora-postgresql",
        MasterUsername=localpg.MASTER_USER,
        ManageMasterUserPassword=True,
        EnableIAMDatabaseAuthentication=True,
    )
    found = rds.describe_db_clusters(DBClusterIdentifier="creds-cluster")["DBClusters"][0]
    return str(found["DbClusterResourceId"])


def _base_env(aws: awsemu.Emulator) -> dict[str, str]:
    """The emulator, a region, and no credentials at all: each test adds its source."""
    env = awsemu.client_env(aws.url)
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        del env[name]
    return env | {"DB_CLUSTER_ID": "creds-cluster", "IAM_USERS": USERS, "LOG_FORMAT": "json"}


def _policy(
    where: str, env: dict[str, str], mounts: dict[str, Path]
) -> subprocess.CompletedProcess[str]:
    """`policy` in the image (files mounted at their container paths) or in the package
    (the same settings, naming the files where they are on the host)."""
    if where == "image":
        image = _need_engine()
        volumes = [arg for inside, host in mounts.items() for arg in ("-v", f"{host}:{inside}:ro")]
        names = [arg for key in env for arg in ("-e", key)]
        return docker("run", "--rm", "--network=host", *volumes, *names, image, "policy", env=env)
    local = {
        key: next((str(host) for inside, host in mounts.items() if value == inside), value)
        for key, value in env.items()
    }
    done = subprocess.run(
        [str(CLI), "policy"],
        env={"PATH": os.environ["PATH"], **local},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    OUTPUTS.extend((done.stdout, done.stderr))
    return done


def _resources(done: subprocess.CompletedProcess[str], resource_id: str) -> list[str]:
    assert done.returncode == 0, done.stdout + done.stderr
    statement = json.loads(done.stdout)["Statement"][0]
    prefix = f"arn:aws:rds-db:{awsemu.REGION}:{awsemu.ACCOUNT}:dbuser:{resource_id}"
    assert statement["Resource"] == [f"{prefix}/app_user", f"{prefix}/report_user"]
    return list(statement["Resource"])


def _readable(path: Path, text: str) -> Path:
    """A file the image's user (uid 65532) can read through its mount."""
    path.write_text(text)
    path.chmod(0o644)
    path.parent.chmod(0o755)
    return path


WHERE = pytest.mark.parametrize("where", ["package", "image"])


@WHERE
def test_web_identity_from_a_token_file(where: str, aws: awsemu.Emulator, tmp_path: Path) -> None:
    resource_id = _cluster(aws)
    token = _readable(tmp_path / "token", "eyJhbGciOiJSUzI1NiJ9.pipeline-oidc-token.sig")
    env = _base_env(aws) | {
        "AWS_ROLE_ARN": ROLE,
        "AWS_WEB_IDENTITY_TOKEN_FILE": "/run/aws/token",
        "AWS_ROLE_SESSION_NAME": "pipeline",
    }
    _resources(_policy(where, env, {"/run/aws/token": token}), resource_id)
    assert ("unknown", "AssumeRoleWithWebIdentity") in aws.state.calls


@WHERE
def test_an_assume_role_profile_from_a_mounted_config_file(
    where: str, aws: awsemu.Emulator, tmp_path: Path
) -> None:
    resource_id = _cluster(aws)
    config = _readable(
        tmp_path / "config",
        f"[profile pipeline]\nrole_arn = {ROLE}\nsource_profile = base\n\n"
        "[profile base]\naws_access_key_id = AKIDBASEPROFILE\n"
        "aws_secret_access_key = base-profile-secret\n",
    )
    env = _base_env(aws) | {"AWS_CONFIG_FILE": "/run/aws/config", "AWS_PROFILE": "pipeline"}
    _resources(_policy(where, env, {"/run/aws/config": config}), resource_id)
    assert ("sts", "AssumeRole") in aws.state.calls


@WHERE
def test_static_keys(where: str, aws: awsemu.Emulator) -> None:
    resource_id = _cluster(aws)
    env = _base_env(aws) | {
        "AWS_ACCESS_KEY_ID": "AKIDSTATICKEYS",
        "AWS_SECRET_ACCESS_KEY": "static-keys-secret",
    }
    _resources(_policy(where, env, {}), resource_id)
    assert not [call for call in aws.state.calls if call[1].startswith("AssumeRole")]


class _Agent:
    """The ECS agent's credentials endpoint, as it answers a task: the token the task
    was given in AWS_CONTAINER_AUTHORIZATION_TOKEN, else 401."""

    TOKEN = "ecs-agent-authorization-token"

    def __init__(self) -> None:
        self.asked: list[str] = []
        agent = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                agent.asked.append(self.headers.get("Authorization", ""))
                if self.headers.get("Authorization") != agent.TOKEN:
                    self.send_response(401)
                    self.end_headers()
                    return
                body = json.dumps(
                    {
                        "AccessKeyId": "ASIAECSTASKROLE",
                        "SecretAccessKey": "ecs-task-role-secret",
                        "Token": "ecs-task-role-session-token",
                        "Expiration": "2099-01-01T00:00:00Z",
                        "RoleArn": ROLE,
                    }
                ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v2/credentials/task"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def agent() -> Iterator[_Agent]:
    serving = _Agent()
    SECRETS.add(_Agent.TOKEN)
    yield serving
    serving.server.shutdown()


@WHERE
def test_ecs_container_credentials(where: str, aws: awsemu.Emulator, agent: _Agent) -> None:
    resource_id = _cluster(aws)
    env = _base_env(aws) | {
        "AWS_CONTAINER_CREDENTIALS_FULL_URI": agent.url,
        "AWS_CONTAINER_AUTHORIZATION_TOKEN": agent.TOKEN,
    }
    _resources(_policy(where, env, {}), resource_id)
    assert agent.asked and set(agent.asked) == {agent.TOKEN}


def test_the_providers_clients_are_derived_from_botocore() -> None:
    """What the image keeps for botocore's own providers comes from its code: at least
    the four of today's botocore, each a service botocore has data for."""
    import botocore  # noqa: PLC0415

    from app.services import SERVICES, kept, provider_services  # noqa: PLC0415

    found = provider_services()
    assert {"sts", "sso", "sso-oidc", "signin"} <= set(found)
    data = Path(botocore.__file__).parent / "data"
    assert all((data / name).is_dir() for name in found)
    assert set(kept()) == set(SERVICES) | set(found)


def test_a_new_provider_in_botocore_is_kept(tmp_path: Path) -> None:
    """A provider that a later botocore adds is found without a change here."""
    (tmp_path / "credentials.py").write_text(
        "class NewProvider:\n"
        "    def load(self):\n"
        "        return self._client_creator('newauth', config=None)\n"
    )
    (tmp_path / "tokens.py").write_text(
        "def make(session):\n    return create_nested_client(session, 'sso-oidc')\n"
    )
    from app.services import provider_services  # noqa: PLC0415

    assert provider_services(tmp_path) == ("newauth", "sso-oidc")
