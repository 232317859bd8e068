"""What an operator can get wrong, and what the job does about it: a custom INIT_SQL
that tries to leave the job's transaction, group roles given LOGIN by hand, grants
made by another administrator, inputs PostgreSQL would refuse."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.job.managed import MARKER
from tests.conftest import catalog, job_env, members_of, role, run_job
from tools import localpg

# 5. A custom INIT_SQL cannot escape the one transaction

ESCAPES = [
    ("BEGIN;\nCREATE ROLE escaped;\nCOMMIT;\n", 1, "BEGIN"),
    ("CREATE ROLE escaped;\ncommit;\n", 2, "COMMIT"),
    ("CREATE ROLE escaped;\n  END;\n", 2, "END"),
    ("CREATE ROLE escaped;\nROLLBACK;\n", 2, "ROLLBACK"),
    ("CREATE ROLE escaped;\nabort;\n", 2, "ABORT"),
    ("START TRANSACTION;\nCREATE ROLE escaped;\n", 1, "START TRANSACTION"),
    ("CREATE ROLE escaped;\nPREPARE TRANSACTION 'x';\n", 2, "PREPARE TRANSACTION"),
    ("COMMIT PREPARED 'x';\n", 1, "COMMIT PREPARED"),
    ("CREATE ROLE escaped;\n-- a comment\nVACUUM;\n", 3, "VACUUM"),
    ("CREATE DATABASE escaped;\n", 1, "CREATE DATABASE"),
    ("CREATE INDEX CONCURRENTLY i ON t (a);\n", 1, "CONCURRENTLY"),
    ("CREATE ROLE escaped;\n\\set x 1\nSELECT 1;\n", 2, "psql meta-command"),
    ("\\i other.sql\n", 1, "psql meta-command"),
]


@pytest.mark.parametrize("case", ESCAPES, ids=[e[2] + str(e[1]) for e in ESCAPES])
@pytest.mark.parametrize("command", ["apply", "plan"])
def test_statements_that_escape_the_transaction_are_refused_before_anything_runs(
    pg: localpg.LocalPostgres, tmp_path: Path, case: tuple[str, int, str], command: str
) -> None:
    text, line, what = case
    init_sql = tmp_path / "custom.sql"
    init_sql.write_text(text)
    before = catalog(pg)
    run = run_job(job_env(pg, INIT_SQL=str(init_sql), IAM_USERS="alice"), command)
    assert run.code == 2, run
    message = run.result["error"]["message"]
    assert message.startswith(f"INIT_SQL: {init_sql}:{line}:"), message
    assert what in message, message
    assert catalog(pg) == before
    assert not [e for e in run.logs if e["event"] == "start"], "nothing may be attempted"


def test_sql_standard_function_body_is_one_statement(
    pg: localpg.LocalPostgres, tmp_path: Path
) -> None:
    init_sql = tmp_path / "atomic.sql"
    init_sql.write_text(
        "CREATE FUNCTION public.two() RETURNS int LANGUAGE sql\n"
        "BEGIN ATOMIC\n"
        "    SELECT 1;\n"
        "    SELECT CASE WHEN true THEN 2 END;\n"
        "END;\n"
        "DO $$ BEGIN IF public.two() <> 2 THEN RAISE EXCEPTION 'wrong'; END IF; END $$;\n"
    )
    run = run_job(job_env(pg, INIT_SQL=str(init_sql)))
    assert run.code == 0, run
    with pg.superuser_connect() as conn:
        conn.execute("DROP FUNCTION public.two()")


def test_error_without_position_reports_the_statements_own_line(
    pg: localpg.LocalPostgres, tmp_path: Path
) -> None:
    init_sql = tmp_path / "fails.sql"
    init_sql.write_text(
        "SELECT 1;\n-- the next statement fails\n-- without a position\nDROP ROLE no_such_role;\n"
    )
    run = run_job(job_env(pg, INIT_SQL=str(init_sql)))
    assert run.code == 6, run
    assert run.result["error"]["message"].startswith(f"{init_sql}:4:"), run.result


# 6. Operators' mistakes that lock people out


def test_group_given_login_by_hand_is_neither_unlisted_nor_pruned(
    pg: localpg.LocalPostgres,
) -> None:
    assert run_job(job_env(pg, IAM_USERS="alice:app_readwrite")).code == 0
    with pg.superuser_connect() as conn:  # a legacy application logs in as the group
        conn.execute("ALTER ROLE app_readwrite LOGIN")
    verify = run_job(job_env(pg, IAM_USERS="alice:app_readwrite"), "verify")
    assert verify.code == 0, verify
    pruned = run_job(job_env(pg, IAM_USERS="alice:app_readwrite", PRUNE="true"))
    assert pruned.code == 0, pruned
    assert pruned.changes == []
    assert role(catalog(pg), "app_readwrite")[1] is True  # type: ignore[index]


def test_groups_marked_by_an_earlier_version_are_migrated(pg: localpg.LocalPostgres) -> None:
    """Earlier versions marked groups exactly as users; a group that has members, or
    that a listed user names, is re-marked as a group in the same transaction."""
    assert run_job(job_env(pg, IAM_USERS="alice:app_readwrite:analytics")).code == 0
    with pg.superuser_connect() as conn:
        for name in ("app_readwrite", "analytics", "app_readonly"):
            conn.execute(f"COMMENT ON ROLE {name} IS '{MARKER}'")
        conn.execute("ALTER ROLE analytics LOGIN")
    verify = run_job(job_env(pg, IAM_USERS="alice:app_readwrite:analytics"), "verify")
    assert verify.code == 0, verify  # old markers are read as they were meant
    run = run_job(job_env(pg, IAM_USERS="alice:app_readwrite:analytics", PRUNE="true"))
    assert run.code == 0, run
    state = catalog(pg)
    assert role(state, "analytics")[1] is True  # type: ignore[index]
    for name in ("app_readwrite", "analytics"):
        assert role(state, name)[4] != MARKER, name  # type: ignore[index]
        assert {"action": "comment", "role": name, "comment": role(state, name)[4]} in run.changes  # type: ignore[index]
    assert run_job(job_env(pg, IAM_USERS="alice:app_readwrite:analytics")).changes == []


@pytest.fixture
def other_admins_grant(pg18: localpg.LocalPostgres) -> localpg.LocalPostgres:
    """On 16+, a membership in rds_iam granted by another administrator (here the
    superuser) belongs to that administrator: the master cannot revoke it."""
    assert run_job(job_env(pg18, IAM_USERS="alice,bob")).code == 0
    with pg18.superuser_connect() as conn:
        conn.execute("GRANT rds_iam TO alice GRANTED BY postgres")
    return pg18


def test_prune_retires_a_user_whose_rds_iam_grant_it_cannot_revoke(
    other_admins_grant: localpg.LocalPostgres,
) -> None:
    pg = other_admins_grant
    run = run_job(job_env(pg, IAM_USERS="carol", PRUNE="true"))
    assert run.code == 0, run
    state = catalog(pg)
    assert role(state, "alice")[1] is False  # type: ignore[index]
    assert role(state, "bob")[1] is False  # type: ignore[index]
    assert "rds_iam" not in members_of(state, "bob")
    grantors = {gr for g, m, gr, _ in state["members"] if g == "rds_iam" and m == "alice"}
    assert grantors == {"postgres"}
    assert {
        "role": "alice",
        "problem": "rds_iam_not_revoked",
        "grantor": "postgres",
    } in run.result["findings"]
    warnings = [e for e in run.logs if e["event"] == "prune_incomplete"]
    assert warnings and warnings[0]["level"] == "WARNING"
    assert members_of(state, "carol") == {"rds_iam"}


def test_permission_error_keeps_detail_and_says_how_to_fix_it(
    pg18: localpg.LocalPostgres,
) -> None:
    """A user made by another administrator: from PostgreSQL 16 the master may not
    alter it until it holds ADMIN OPTION on it."""
    with pg18.superuser_connect() as conn:
        conn.execute("CREATE ROLE legacy NOLOGIN")
    run = run_job(job_env(pg18, IAM_USERS="legacy"))
    assert run.code == 6, run
    message = run.result["error"]["message"]
    assert "legacy" in message
    assert "WITH ADMIN OPTION" in message, message
    assert pg18.master_password not in run.stdout + run.stderr


# 7. Inputs PostgreSQL would refuse are configuration errors


@pytest.mark.parametrize(
    ("users", "entry"),
    [
        ("none", "'none'"),
        ("current_user", "'current_user'"),
        ("alice:current_role", "'alice:current_role'"),
        ("alice:session_user", "'alice:session_user'"),
        ("alice:none", "'alice:none'"),
        ("u1:u2,u2:u1", "u1"),
        ("a:b,b:c,c:a", "cycle"),
        ('[{"name": "x", "roles": ["y"]}, {"name": "y", "roles": ["x"]}]', "cycle"),
    ],
)
def test_names_and_memberships_postgresql_would_refuse_exit_2(
    pg: localpg.LocalPostgres, users: str, entry: str
) -> None:
    before = catalog(pg)
    run = run_job(job_env(pg, IAM_USERS=users))
    assert run.code == 2, run
    message = run.result["error"]["message"]
    assert message.startswith("IAM_USERS:") and entry in message, message
    assert catalog(pg) == before
