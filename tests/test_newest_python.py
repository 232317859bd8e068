"""The package on the newest Python pyenv has (`make venv-newest`: the lock installed
into .venv-newest, with pytest from the dev lock), which `requires-python` admits:
the unit tests pass there, and the job applies, plans and verifies against a real
server. (iam-auth-server's start and stop there are in test_standin.py.)"""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.conftest import IN_CI, OUTPUTS, ROOT, catalog, expand, job_env, members_of
from tools import localpg

NEWEST = ROOT / ".venv-newest" / "bin"


def _newest() -> None:
    if not (NEWEST / "aurora-bootstrap").exists():
        message = f"{NEWEST} missing: make venv-newest"
        pytest.fail(message) if IN_CI else pytest.skip(message)


def test_apply_plan_and_verify_run_on_the_newest_python(pg18: localpg.LocalPostgres) -> None:
    _newest()
    version = subprocess.run(
        [str(NEWEST / "python"), "-c", "import sys; print(*sys.version_info[:2])"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert tuple(map(int, version.stdout.split())) >= (3, 12), version.stdout
    env = job_env(pg18, IAM_USERS="alice:app_readonly,bob")
    results = {}
    for command in ("apply", "plan", "verify"):
        done = subprocess.run(
            [str(NEWEST / "aurora-bootstrap"), command],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            cwd=ROOT,
        )
        OUTPUTS.extend((done.stdout, done.stderr))
        assert done.returncode == 0, done.stderr
        results[command] = json.loads(done.stdout)
    made = expand(results["apply"]["changes"])
    assert {c["role"] for c in made if c["action"] == "create_role"} >= {
        "alice",
        "bob",
    }
    assert results["plan"]["changes"] == []
    assert results["verify"].get("findings", []) == []
    assert members_of(catalog(pg18), "alice") == {"rds_iam", "app_readonly"}


def test_the_unit_tests_pass_on_the_newest_python() -> None:
    _newest()
    done = subprocess.run(
        [
            str(NEWEST / "python"),
            "-m",
            "pytest",
            "tests/test_units.py",
            "-q",
            "--noconftest",
            "-p",
            "no:cacheprovider",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert " passed" in done.stdout and "failed" not in done.stdout, done.stdout
