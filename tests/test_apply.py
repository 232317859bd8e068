"""apply and plan, end to end: the job as a subprocess against real servers."""

from __future__ import annotations

import json

import psycopg
import pytest

from app.inputs.users import MANAGED_ROLE
from tests.conftest import Job, catalog, job_env, managed, members_of, role, run_job
from tools import localpg

USERS = "alice:app_readonly,bob:app_readwrite:analytics,carol"


def test_first_apply_creates_users_with_login_rds_iam_and_roles(
    pg: localpg.LocalPostgres,
) -> None:
    run = run_job(job_env(pg, IAM_USERS=USERS))
    assert run.code == 0, run
    result = run.result
    assert result["command"] == "apply"
    assert result["status"] == "ok"
    assert result["exit_code"] == 0
    assert isinstance(result["duration_ms"], int)

    state = catalog(pg)
    for user, groups in {
        "alice": {"app_readonly"},
        "bob": {"app_readwrite", "analytics"},
        "carol": set(),
    }.items():
        found = role(state, user)
        assert found is not None, user
        _name, login, superuser, createrole, comment = found
        assert login and not superuser and not createrole
        assert comment is None, "nothing is written per user but the role and its grants"
        assert managed(state, user)
        assert members_of(state, user) == {"rds_iam"} | groups
    # The record of what the job granted: one comment, on the marker role.
    record = role(state, MANAGED_ROLE)[4]  # type: ignore[index]
    assert json.loads(record[record.index("{") :]) == {
        "granted": {"alice": ["app_readonly"], "bob": ["analytics", "app_readwrite"]}
    }
    assert role(state, "analytics")[1] is False  # type: ignore[index]
    assert "rds_iam" not in members_of(state, localpg.MASTER_USER)

    creates = {c["role"] for c in run.changes if c["action"] == "create_role"}
    assert creates == {
        "alice",
        "bob",
        "carol",
        "analytics",
        "app_readonly",
        "app_readwrite",
        MANAGED_ROLE,
    }
    grants = {(c["role"], c["member"]) for c in run.changes if c["action"] == "grant"}
    user_grants = {(g, m) for g, m in grants if m != localpg.MASTER_USER and g != MANAGED_ROLE}
    assert {m for g, m in grants if g == MANAGED_ROLE} - {localpg.MASTER_USER} == {
        "alice",
        "bob",
        "carol",
    }
    assert user_grants == {
        ("rds_iam", "alice"),
        ("app_readonly", "alice"),
        ("rds_iam", "bob"),
        ("app_readwrite", "bob"),
        ("analytics", "bob"),
        ("rds_iam", "carol"),
    }
    # From PostgreSQL 16, a CREATEROLE user gets ADMIN OPTION on each role it creates.
    creator_grants = {g for g, m in grants if m == localpg.MASTER_USER}
    assert creator_grants == (creates if pg.major >= 16 else set())


def test_rds_iam_grant_is_recorded_as_aurora_records_it(pg: localpg.LocalPostgres) -> None:
    """From PostgreSQL 16 the grant goes through rds_superuser's ADMIN OPTION."""
    run = run_job(job_env(pg, IAM_USERS="alice"))
    assert run.code == 0, run
    grant = next(c for c in run.changes if c["action"] == "grant" and c["role"] == "rds_iam")
    expected = "rds_superuser" if pg.major >= 16 else localpg.MASTER_USER
    assert grant["grantor"] == expected
    grantors = {gr for g, m, gr, _ in catalog(pg)["members"] if (g, m) == ("rds_iam", "alice")}
    assert grantors == {expected}


def test_second_apply_reports_no_changes(pg: localpg.LocalPostgres) -> None:
    env = job_env(pg, IAM_USERS=USERS)
    assert run_job(env).code == 0
    before = catalog(pg)
    again = run_job(env)
    assert again.code == 0, again
    assert again.changes == []
    assert catalog(pg) == before


def test_plan_changes_nothing_and_reports_what_apply_would(pg: localpg.LocalPostgres) -> None:
    env = job_env(pg, IAM_USERS=USERS)
    before = catalog(pg)
    plan = run_job(env, "plan")
    assert plan.code == 0, plan
    assert plan.result["command"] == "plan"
    assert catalog(pg) == before
    apply = run_job(env, "apply")
    assert apply.code == 0, apply
    assert plan.changes == apply.changes
    assert plan.changes, "plan on an empty server must report work"


def test_plan_after_apply_is_empty(pg: localpg.LocalPostgres) -> None:
    env = job_env(pg, IAM_USERS=USERS)
    assert run_job(env).code == 0
    plan = run_job(env, "plan")
    assert plan.code == 0, plan
    assert plan.changes == []


def test_apply_converges_a_changed_user(pg: localpg.LocalPostgres) -> None:
    """LOGIN removed and rds_iam revoked by hand: the next apply restores both."""
    env = job_env(pg, IAM_USERS="alice:app_readonly")
    assert run_job(env).code == 0
    with pg.superuser_connect() as conn:
        conn.execute("ALTER ROLE alice NOLOGIN")
        conn.execute(
            "REVOKE rds_iam FROM alice GRANTED BY "
            + ("rds_superuser" if pg.major >= 16 else "master")
        )
    run = run_job(env)
    assert run.code == 0, run
    actions = {(c["action"], c["role"]) for c in run.changes}
    assert actions == {("alter_role", "alice"), ("grant", "rds_iam")}
    state = catalog(pg)
    assert role(state, "alice")[1] is True  # type: ignore[index]
    assert "rds_iam" in members_of(state, "alice")


def test_concurrent_applies_all_succeed_with_exact_end_state(pg: localpg.LocalPostgres) -> None:
    users = ",".join(f"user_{i}:app_readonly" for i in range(40))
    env = job_env(pg, IAM_USERS=users, DEADLINE_SECONDS="120")
    jobs = [Job(env) for _ in range(8)]
    runs = [job.finish() for job in jobs]
    assert [r.code for r in runs] == [0] * 8, "\n".join(map(str, runs))
    # The lock serialises the runs: exactly one does the work, the others find it done.
    did_work = [r for r in runs if r.changes]
    assert len(did_work) == 1
    state = catalog(pg)
    for i in range(40):
        assert role(state, f"user_{i}")[1] is True  # type: ignore[index]
        assert members_of(state, f"user_{i}") == {"rds_iam", "app_readonly"}
    assert all("unique" not in r.stderr.lower() for r in runs)


def test_waits_for_the_lock_then_finds_nothing_to_do(pg: localpg.LocalPostgres) -> None:
    env = job_env(pg, IAM_USERS="alice", DEADLINE_SECONDS="60")
    assert run_job(env).code == 0
    with pg.superuser_connect() as conn:
        conn.autocommit = False
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_lock_key(),))
        job = Job(env)
        job.wait_for_event("lock_wait")
        conn.rollback()  # releases the lock
    run = job.finish()
    assert run.code == 0, run
    assert run.changes == []
    assert "lock_wait" in {line["event"] for line in run.logs}


def test_lock_held_past_the_deadline_exits_5(pg: localpg.LocalPostgres) -> None:
    env = job_env(pg, IAM_USERS="alice", DEADLINE_SECONDS="3")
    with pg.superuser_connect() as conn:
        conn.autocommit = False
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_lock_key(),))
        run = run_job(env)
        conn.rollback()
    assert run.code == 5, run
    assert run.result["error"]["type"] == "deadline_exceeded"
    assert "lock" in run.result["error"]["message"]
    assert role(catalog(pg), "alice") is None


def test_custom_init_sql_error_is_reported_by_file_line_and_sqlstate(
    pg: localpg.LocalPostgres, tmp_path: pytest.TempPathFactory
) -> None:
    init = tmp_path / "init.sql"  # type: ignore[operator]
    init.write_text(
        "-- a custom program\n"
        "CREATE ROLE half_done;\n"
        "\n"
        "DO $$\n"
        "BEGIN\n"
        "    PERFORM 1;\n"
        "    EXECUTE format('GRANT %I TO %I', 'no_such_role', 'half_done');\n"
        "END\n"
        "$$;\n"
    )
    run = run_job(job_env(pg, INIT_SQL=str(init), IAM_USERS="alice"))
    assert run.code == 6, run
    message = run.result["error"]["message"]
    assert f"{init}:7:" in message
    assert "42704" in message
    assert role(catalog(pg), "half_done") is None


def test_syntax_error_in_init_sql_points_at_its_line(
    pg: localpg.LocalPostgres, tmp_path: pytest.TempPathFactory
) -> None:
    init = tmp_path / "init.sql"  # type: ignore[operator]
    init.write_text("CREATE ROLE first_one;\nSELECT 1;\nSELECT\n  1 +;\n")
    run = run_job(job_env(pg, INIT_SQL=str(init)))
    assert run.code == 6, run
    assert f"{init}:4:" in run.result["error"]["message"]
    assert "42601" in run.result["error"]["message"]
    assert role(catalog(pg), "first_one") is None


def test_shipped_init_sql_refuses_the_master_user(pg: localpg.LocalPostgres) -> None:
    """The SQL guard itself, as psql or any client would run it."""
    with pg.master_connect() as conn:
        conn.execute(
            "SELECT set_config('bootstrap.iam_users', %s, true),"
            " set_config('bootstrap.master_user', 'someone_else', true),"
            " set_config('bootstrap.prune', 'false', true)",
            ('[{"name": "master", "roles": []}]',),
        )
        with pytest.raises(psycopg.errors.RaiseException, match="master user"):
            conn.execute(localpg.ROOT.joinpath("sql/init.sql").read_bytes())
    assert "rds_iam" not in members_of(catalog(pg), localpg.MASTER_USER)


def test_broken_shipped_init_sql_names_the_line(
    pg: localpg.LocalPostgres, tmp_path: pytest.TempPathFactory
) -> None:
    """A faulty edit of the shipped file: error inside the users block, mapped back."""
    text = localpg.ROOT.joinpath("sql/init.sql").read_text()
    needle = "            EXECUTE format('CREATE ROLE %I WITH LOGIN', r.name);"
    assert needle in text
    broken = text.replace(
        needle, "            EXECUTE format('CREATE ROLE %I WITH LOGON', r.name);"
    )
    init = tmp_path / "init.sql"  # type: ignore[operator]
    init.write_text(broken)
    line = (
        broken.splitlines().index(
            "            EXECUTE format('CREATE ROLE %I WITH LOGON', r.name);"
        )
        + 1
    )
    run = run_job(job_env(pg, INIT_SQL=str(init), IAM_USERS="alice:analytics"))
    assert run.code == 6, run
    assert f"{init}:{line}:" in run.result["error"]["message"]
    state = catalog(pg)
    assert role(state, "alice") is None
    assert role(state, "app_readonly") is None, "nothing of the first statements may remain"


def test_notices_from_init_sql_are_logged(
    pg: localpg.LocalPostgres, tmp_path: pytest.TempPathFactory
) -> None:
    init = tmp_path / "init.sql"  # type: ignore[operator]
    init.write_text("DO $$ BEGIN RAISE NOTICE 'hello from init.sql'; END $$;\n")
    run = run_job(job_env(pg, INIT_SQL=str(init)))
    assert run.code == 0, run
    notices = [e for e in run.logs if e["event"] == "server_notice"]
    assert notices and notices[0]["text"] == "hello from init.sql"


def test_prune_revokes_login_and_rds_iam_from_unlisted_managed_users_only(
    pg: localpg.LocalPostgres,
) -> None:
    assert run_job(job_env(pg, IAM_USERS="alice,bob:app_readonly")).code == 0
    with pg.superuser_connect() as conn:
        conn.execute("CREATE ROLE handmade LOGIN IN ROLE rds_iam")
        conn.execute("CREATE TABLE public.owned_by_bob (id int)")
        conn.execute("ALTER TABLE public.owned_by_bob OWNER TO bob")
    without_prune = run_job(job_env(pg, IAM_USERS="alice"))
    assert without_prune.code == 0 and without_prune.changes == []

    plan = run_job(job_env(pg, IAM_USERS="alice", PRUNE="true"), "plan")
    run = run_job(job_env(pg, IAM_USERS="alice", PRUNE="true"))
    assert run.code == 0, run
    assert plan.changes == run.changes
    actions = {(c["action"], c["role"]) for c in run.changes}
    assert actions == {("alter_role", "bob"), ("revoke", "rds_iam")}
    state = catalog(pg)
    assert role(state, "bob")[1] is False  # type: ignore[index]
    assert members_of(state, "bob") == {"app_readonly"}  # never dropped, groups kept
    assert members_of(state, "handmade") == {"rds_iam"}  # no marker: untouched
    assert role(state, "handmade")[1] is True  # type: ignore[index]
    assert role(state, "alice")[1] is True  # type: ignore[index]
    with pg.superuser_connect() as conn:
        conn.execute("DROP TABLE public.owned_by_bob")


def _lock_key() -> int:
    from app.job.transaction import LOCK_KEY  # noqa: PLC0415

    return LOCK_KEY


def test_group_roles_get_privileges_on_the_masters_tables_only(
    pg: localpg.LocalPostgres,
) -> None:
    with pg.superuser_connect() as conn:
        conn.execute("CREATE ROLE other_owner NOLOGIN")
        conn.execute("CREATE TABLE public.theirs (id int)")
        conn.execute("ALTER TABLE public.theirs OWNER TO other_owner")
        conn.execute("SET ROLE master")
        conn.execute("CREATE TABLE public.ours (id serial)")
        conn.execute("RESET ROLE")
    env = job_env(pg, IAM_USERS="alice:app_readonly")
    first = run_job(env)
    assert first.code == 0, first
    with pg.superuser_connect() as conn:

        def can(grp: str, priv: str, rel: str) -> bool:
            row = conn.execute(
                "SELECT has_table_privilege(%s, %s, %s)", (grp, rel, priv)
            ).fetchone()
            return bool(row and row[0])

        assert can("app_readonly", "SELECT", "public.ours")
        assert not can("app_readonly", "INSERT", "public.ours")
        assert can("app_readwrite", "DELETE", "public.ours")
        assert not can("app_readonly", "SELECT", "public.theirs")
        row = conn.execute(
            "SELECT has_sequence_privilege('app_readwrite', 'public.ours_id_seq', 'USAGE')"
        ).fetchone()
        assert row and row[0]
        conn.execute("SET ROLE master")
        conn.execute("CREATE TABLE public.later (id int)")  # default privileges apply
        conn.execute("RESET ROLE")
        assert can("app_readonly", "SELECT", "public.later")
    again = run_job(env)
    assert again.code == 0 and again.changes == [], again
    with pg.superuser_connect() as conn:
        conn.execute("DROP TABLE public.ours, public.theirs, public.later")
