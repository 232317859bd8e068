"""`aurora-bootstrap sql` as a migration: the printed file applied by psql and by a
real migration tool (dbmate, from npm), twice, then `verify` with the same settings.

psql and dbmate log in as the master, as the docs say the file must be applied; the
job itself is not involved after printing. Every check reads the catalog, or verify's
exit code, afterwards.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import CLI, OUTPUTS, catalog, job_env, managed, members_of, npm_tool, role
from tools import localpg

USERS = "app_user:app_readwrite,report_user:app_readonly"
HOSTILE = 'Sales"; DROP ROLE master; --'


def printed(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [str(CLI), "sql"], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    OUTPUTS.append(done.stdout + done.stderr)
    return done


def psql(server: localpg.LocalPostgres, *args: str) -> subprocess.CompletedProcess[str]:
    """psql as the master, over TCP with its password (and TLS where the server has it)."""
    binary = shutil.which("psql")
    assert binary is not None, "psql (Debian's postgresql-client) is needed"
    env = {
        "PATH": os.environ["PATH"],
        "PGHOST": "127.0.0.1",
        "PGPORT": str(server.port),
        "PGUSER": localpg.MASTER_USER,
        "PGPASSWORD": server.master_password,
        "PGDATABASE": "postgres",
        "PGSSLMODE": "verify-full" if server.tls else "disable",
    }
    if server.tls:
        env["PGSSLROOTCERT"] = str(server.tls.ca_pem)
    return subprocess.run(
        [binary, "-X", "-v", "ON_ERROR_STOP=1", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def verify(env: dict[str, str]) -> dict[str, Any]:
    done = subprocess.run(
        [str(CLI), "verify"], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    OUTPUTS.append(done.stdout + done.stderr)
    result: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
    assert done.returncode == 0, result
    return result


def plan_changes(env: dict[str, str]) -> list[dict[str, Any]]:
    done = subprocess.run(
        [str(CLI), "plan"], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    OUTPUTS.append(done.stdout + done.stderr)
    assert done.returncode == 0, done.stdout + done.stderr
    changes: list[dict[str, Any]] = json.loads(done.stdout.splitlines()[-1])["changes"]
    return changes


def test_psql_applies_the_file_twice_and_verify_is_clean(
    pg: localpg.LocalPostgres, tmp_path: Path
) -> None:
    env = job_env(pg, IAM_USERS=USERS)
    out = printed(env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("-- aurora-bootstrap")
    migration = tmp_path / "iam_users.sql"
    migration.write_text(out.stdout)
    first = psql(pg, "--single-transaction", "-f", str(migration))
    assert first.returncode == 0, first.stderr
    state = catalog(pg)
    assert members_of(state, "app_user") == {"rds_iam", "app_readwrite"}
    assert members_of(state, "report_user") == {"rds_iam", "app_readonly"}
    assert managed(state, "app_user") and managed(state, "report_user")
    # Statement by statement, each in a transaction of its own: nothing to change.
    second = psql(pg, "-f", str(migration))
    assert second.returncode == 0, second.stderr
    assert catalog(pg) == state
    assert plan_changes(env) == []
    assert verify(env)["findings"] == []


def test_dbmate_applies_it_as_a_migration_and_again_as_a_new_one(
    pg18: localpg.LocalPostgres, tmp_path: Path
) -> None:
    """dbmate wraps each migration in a transaction of its own; the second migration
    is the same file printed again, as a team regenerates it when settings change."""
    dbmate = npm_tool("@dbmate/linux-x64/bin/dbmate")
    env = job_env(pg18, IAM_USERS=USERS)
    text = printed(env).stdout
    migrations = tmp_path / "db" / "migrations"
    migrations.mkdir(parents=True)
    for stamp in ("20260101000000", "20260201000000"):
        (migrations / f"{stamp}_iam_users.sql").write_text(
            f"-- migrate:up\n{text}\n\n-- migrate:down\n"
        )
    url = (
        f"postgres://{localpg.MASTER_USER}:{pg18.master_password}@127.0.0.1:{pg18.port}"
        "/postgres?sslmode=disable"
    )
    done = subprocess.run(
        [str(dbmate), "--no-dump-schema", "--migrations-dir", str(migrations), "up"],
        env={"PATH": os.environ["PATH"], "DATABASE_URL": url},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    OUTPUTS.append(done.stdout + done.stderr)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("Applied: ") == 2, done.stdout
    state = catalog(pg18)
    assert members_of(state, "app_user") == {"rds_iam", "app_readwrite"}
    assert verify(env)["findings"] == []


def test_group_roles_with_a_hostile_schema_name_stay_names(pg18: localpg.LocalPostgres) -> None:
    with pg18.superuser_connect("postgres") as conn:
        quoted = HOSTILE.replace('"', '""')
        conn.execute(f'CREATE SCHEMA "{quoted}" AUTHORIZATION master')
        conn.execute("SET ROLE master")  # the master's own table, as in a real schema
        conn.execute(f'CREATE TABLE "{quoted}".orders (id int)')
    groups = {"app_readonly": [{"schemas": [HOSTILE, "public"], "access": "read"}]}
    env = job_env(pg18, IAM_USERS="report_user:app_readonly", GROUP_ROLES=json.dumps(groups))
    out = printed(env)
    assert out.returncode == 0, out.stderr
    applied = psql(pg18, "--single-transaction", "-c", out.stdout)
    assert applied.returncode == 0, applied.stderr
    assert role(catalog(pg18), localpg.MASTER_USER) is not None  # still there
    with pg18.superuser_connect("postgres") as conn:
        row = conn.execute(
            "SELECT has_table_privilege('app_readonly', format('%%I.orders', %s::text), 'SELECT')",
            (HOSTILE,),
        ).fetchone()
    assert row == (True,)
    again = psql(pg18, "-c", out.stdout)
    assert again.returncode == 0, again.stderr
    assert verify(env)["findings"] == []


def test_the_file_holds_no_secret_and_names_the_other_databases(
    pg18: localpg.LocalPostgres,
) -> None:
    groups = {
        "app_readonly": [
            {"schemas": ["public"], "access": "read"},
            {"database": "reports", "schemas": ["rpt"], "access": "read"},
        ]
    }
    env = job_env(
        pg18,
        IAM_USERS=USERS,
        GROUP_ROLES=json.dumps(groups),
        DB_SECRET_ARN="arn:aws:secretsmanager:eu-west-1:123456789012:secret:rds!cluster-x",
    )
    out = printed(env)
    assert out.returncode == 0, out.stderr
    assert pg18.master_password not in out.stdout + out.stderr
    assert "secretsmanager" not in out.stdout
    note = [json.loads(line) for line in out.stderr.splitlines() if "other_databases" in line]
    assert note and note[0]["others"] == ["reports"], out.stderr
    reports = printed(env | {"DB_NAME": "reports"})
    assert reports.returncode == 0, reports.stderr
    assert "bootstrap of database reports" in reports.stdout
    assert "other_databases" not in reports.stderr


@pytest.mark.parametrize(
    ("setting", "value", "named"),
    [
        ("IAM_USERS", "Bad User", "IAM_USERS"),
        ("GROUP_ROLES", "{not json", "GROUP_ROLES"),
        ("PRUNE", "perhaps", "PRUNE"),
        # The master may not be one of the users: the entry is what is named, as apply
        # names it.
        ("DB_USER", "app_user", "IAM_USERS: entry 1 'app_user': is the master user"),
    ],
)
def test_bad_settings_exit_2_with_no_sql_on_stdout(setting: str, value: str, named: str) -> None:
    env = job_env(**({"IAM_USERS": "app_user"} | {setting: value}))
    out = printed(env)
    assert out.returncode == 2, out.stdout + out.stderr
    assert out.stdout == ""
    assert named in out.stderr
