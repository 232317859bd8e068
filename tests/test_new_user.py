"""What a new user types after the quick start, on a copy of the tree as a clone would
have it: `make run` with their own settings, `make run | jq`, exit codes through
make, `make help`, `make bench`, `--version` and help, the first error they meet."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sysconfig
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path

import pytest
import yaml

from tests.conftest import CLI, OUTPUTS, ROOT, job_env, run_job
from tools import localpg

VENV = Path(sysconfig.get_paths()["scripts"]).parent


@pytest.fixture
def clone(tmp_path: Path) -> Iterator[Path]:
    """The tree's tracked and unignored files, as `git clone` gives them (CI runs on a
    clean clone, where they are the same), using this session's virtual environment."""
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    dest = tmp_path / "clone"
    for name in filter(None, files):
        source = ROOT / name.decode()
        if source.is_file():
            (dest / name.decode()).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name.decode())
    subprocess.run(["git", "init", "-q"], cwd=dest, check=True)
    subprocess.run(["git", "add", "-A"], cwd=dest, check=True)
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "clone"],
        cwd=dest,
        check=True,
    )
    yield dest
    subprocess.run(
        [str(VENV / "bin" / "python"), "-m", "tools.localdb", "remove"],
        cwd=dest,
        capture_output=True,
        check=False,
    )


def make(clone: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """make in the clone, with this session's venv standing in for `make install`."""
    # A user's shell: no settings of the test run, and not inside another make (which
    # would make this one print "Entering directory" on stdout, as make does).
    base = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DB_", "IAM_", "PG")) and k not in ("MAKELEVEL", "MAKEFLAGS", "MFLAGS")
    }
    done = subprocess.run(
        ["make", f"VENV={VENV}", "-o", f"{VENV}/bin/aurora-bootstrap", *args],
        cwd=clone,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={**base, "LOG_FORMAT": "json", **env},
    )
    OUTPUTS.extend((done.stdout, done.stderr))
    return done


def local_database_started(clone: Path) -> bool:
    return (clone / ".local" / "localdb.json").exists()


def test_make_run_honours_the_users_settings(clone: Path) -> None:
    done = make(clone, "run", DB_PORT="abc")
    assert done.returncode != 0, done.stdout
    assert "DB_PORT" in done.stderr and "not the local database" in done.stderr
    assert json.loads(done.stdout)["exit_code"] == 2
    assert "DB_PORT: " in json.loads(done.stdout)["error"]["message"]
    assert not local_database_started(clone)


def test_make_run_checks_settings_before_starting_a_database(clone: Path) -> None:
    done = make(clone, "run", IAM_USERS="Bad User")
    assert done.returncode != 0
    assert "IAM_USERS: entry 1 'Bad User'" in done.stderr
    assert not local_database_started(clone)


def test_make_run_stdout_is_the_result_alone_and_failures_say_the_jobs_code(
    clone: Path,
) -> None:
    first = make(clone, "run")
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout)["status"] == "ok"  # `make run | jq` works
    drift = make(clone, "run", "CMD=verify", IAM_USERS="nobody_yet")
    assert json.loads(drift.stdout)["exit_code"] == 7
    assert "the job exited with 7" in drift.stderr


def test_make_help_prints_real_values(clone: Path) -> None:
    done = make(clone, "help")
    assert done.returncode == 0
    assert "$(" not in done.stdout
    assert "CMD=apply" in done.stdout


def test_make_bench_leaves_the_tree_clean(clone: Path) -> None:
    done = make(clone, "bench", "BENCH_SIZES=10")
    assert done.returncode == 0, done.stderr
    assert (clone / "bench" / "out" / "results.md").is_file()
    status = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=all"],
        cwd=clone,
        capture_output=True,
        text=True,
        check=True,
    )
    assert status.stdout == "", status.stdout


def test_version_on_the_command_line_and_in_the_result_line(pg: localpg.LocalPostgres) -> None:
    done = subprocess.run([str(CLI), "--version"], capture_output=True, text=True, check=False)
    assert done.returncode == 0
    assert done.stdout.strip() == f"aurora-bootstrap {version('aurora-bootstrap')}"
    run = run_job(job_env(pg, IAM_USERS="alice"), "plan")
    assert run.result["version"] == version("aurora-bootstrap")


def test_help_shows_the_optional_command_every_variable_and_where_the_docs_are() -> None:
    top = subprocess.run([str(CLI), "--help"], capture_output=True, text=True, check=True)
    assert top.stdout.startswith("usage: aurora-bootstrap [-h] [--version] [COMMAND]")
    docs = top.stdout.split("documented in", 1)[1].split()[0]
    assert Path(docs).is_file() and "## Exit codes" in Path(docs).read_text()
    # Whole on one line, so that it can be copied, however long the install path.
    assert any(line.strip() == docs for line in top.stdout.splitlines()), top.stdout
    wide = subprocess.run(
        [str(CLI), "--help"],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "COLUMNS": "40"},
    )
    assert any(line.strip() == docs for line in wide.stdout.splitlines()), wide.stdout
    ecs = subprocess.run(
        [str(CLI), "ecs-run", "--help"], capture_output=True, text=True, check=True
    )
    for flag in ("--cluster", "--deadline", "--poll-seconds", "--container", "--subnets"):
        options = ecs.stdout.split("options:", 1)[1]
        line = options.split(f"  {flag}", 1)[1].split("\n  --", 1)[0]
        assert "ECS_" in line, (flag, line)


def test_the_first_error_is_the_missing_endpoint_and_all_come_at_once() -> None:
    bare = {"PATH": os.environ["PATH"], "LOG_FORMAT": "json"}
    run = run_job(bare)
    assert run.code == 2
    message = run.result["error"]["message"]
    assert message.startswith("DB_HOST: not set"), message
    assert "DB_SSLROOTCERT" in message  # reported in the same run, second
    token = run_job(bare, "token", "app_user")
    assert token.code == 2
    assert "DB_HOST" in token.stderr and "AWS_REGION" not in token.stderr
    many = run_job(bare | {"DB_PORT": "abc", "DB_SSLMODE": "x", "DEADLINE_SECONDS": "-1"})
    message = many.result["error"]["message"]
    assert message.startswith("DB_PORT: ")
    assert "; DB_SSLMODE: " in message and "; DEADLINE_SECONDS: " in message


def test_compose_db_is_healthy_only_when_the_master_can_log_in_over_tcp(
    pg15: localpg.LocalPostgres,
) -> None:
    """The official postgres image cannot be pulled here: its healthcheck command is
    run as the container would run it, against Debian's PostgreSQL on this host."""
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    kind, command = compose["services"]["db"]["healthcheck"]["test"]
    assert kind == "CMD-SHELL"
    command = command.replace("$$", "$")  # compose's escape for a literal $
    psql_dir = "/usr/lib/postgresql/15/bin"
    env = {"PATH": f"{psql_dir}:{os.environ['PATH']}", "PGPORT": str(pg15.port)}

    def check(password: str) -> int:
        done = subprocess.run(
            ["sh", "-c", command],
            env=env | {"MASTER_PASSWORD": password},
            capture_output=True,
            check=False,
        )
        return done.returncode

    assert check(pg15.master_password) == 0
    assert check("wrong-password") != 0
    pg15.stop()
    try:
        assert check(pg15.master_password) != 0
    finally:
        pg15.start()
