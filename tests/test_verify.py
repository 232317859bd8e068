"""Day two: verify finds drift, apply repairs it, prune retires users, hand-made users
are adopted, and changed role lists converge, touching only what the job manages."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from app.inputs.users import MANAGED_ROLE
from tests import awsemu
from tests.conftest import catalog, job_env, managed, members_of, role, run_job
from tools import localpg

USERS = "alice:app_readonly,bob:app_readwrite:analytics"


def _job_grantor(pg: localpg.LocalPostgres) -> str:
    """Who PostgreSQL records as granting rds_iam for the job."""
    return "rds_superuser" if pg.major >= 16 else localpg.MASTER_USER


def _sql(pg: localpg.LocalPostgres, *statements: str) -> None:
    with pg.superuser_connect() as conn:
        for statement in statements:
            conn.execute(statement.encode())


def test_verify_in_sync_exits_0(pg: localpg.LocalPostgres) -> None:
    env = job_env(pg, IAM_USERS=USERS)
    assert run_job(env).code == 0
    before = catalog(pg)
    run = run_job(env, "verify")
    assert run.code == 0, run
    assert run.result["command"] == "verify"
    assert run.result["findings"] == []
    assert run.result["changes"] == []
    assert catalog(pg) == before


DRIFTS: list[tuple[str, Callable[[localpg.LocalPostgres], list[str]], dict[str, Any]]] = [
    ("user dropped", lambda pg: ["DROP ROLE alice"], {"role": "alice", "problem": "missing"}),
    (
        "login removed",
        lambda pg: ["ALTER ROLE alice NOLOGIN"],
        {"role": "alice", "problem": "no_login"},
    ),
    (
        "rds_iam revoked",
        lambda pg: [f"REVOKE rds_iam FROM alice GRANTED BY {_job_grantor(pg)}"],
        {"role": "alice", "problem": "not_in_rds_iam"},
    ),
    (
        "role revoked",
        lambda pg: ["REVOKE analytics FROM bob GRANTED BY master"],
        {"role": "bob", "problem": "not_in_role", "group": "analytics"},
    ),
    (
        "marker removed",
        lambda pg: [f"REVOKE {MANAGED_ROLE} FROM alice GRANTED BY master"],
        {"role": "alice", "problem": "no_marker"},
    ),
]


@pytest.mark.parametrize(("_name", "break_it", "finding"), DRIFTS, ids=[d[0] for d in DRIFTS])
def test_each_drift_exits_7_naming_it_and_apply_repairs_it(
    pg: localpg.LocalPostgres,
    _name: str,
    break_it: Callable[[localpg.LocalPostgres], list[str]],
    finding: dict[str, Any],
) -> None:
    env = job_env(pg, IAM_USERS=USERS)
    assert run_job(env).code == 0
    synced = catalog(pg)
    _sql(pg, *break_it(pg))

    drifted = run_job(env, "verify")
    assert drifted.code == 7, drifted
    assert drifted.result["status"] == "error"
    assert drifted.result["error"]["type"] == "drift"
    assert drifted.result["findings"] == [finding]

    repair = run_job(env)
    assert repair.code == 0, repair
    assert repair.changes, "apply must report the repair"
    assert run_job(env, "verify").code == 0
    assert {r[0] for r in catalog(pg)["roles"]} == {r[0] for r in synced["roles"]}


def test_unlisted_managed_user_is_drift_until_pruned(pg: localpg.LocalPostgres) -> None:
    assert run_job(job_env(pg, IAM_USERS=USERS)).code == 0
    env = job_env(pg, IAM_USERS="alice:app_readonly")
    run = run_job(env, "verify")
    assert run.code == 7, run
    assert run.result["findings"] == [
        {"role": "bob", "problem": "unlisted", "login": True, "rds_iam": True}
    ]
    assert run_job(job_env(pg, IAM_USERS="alice:app_readonly", PRUNE="true")).code == 0
    assert run_job(env, "verify").code == 0
    assert role(catalog(pg), "bob") is not None, "pruned users are never dropped"


def test_prune_plan_shows_exactly_what_prune_does_and_spares_unmarked_roles(
    pg: localpg.LocalPostgres,
) -> None:
    assert run_job(job_env(pg, IAM_USERS=USERS)).code == 0
    # The same shape as a managed user, but made by hand: never touched.
    _sql(
        pg,
        "CREATE ROLE lookalike LOGIN IN ROLE rds_iam",
        "COMMENT ON ROLE lookalike IS 'managed by someone else'",
    )
    env = job_env(pg, IAM_USERS="alice:app_readonly", PRUNE="true")
    before = catalog(pg)
    plan = run_job(env, "plan")
    assert plan.code == 0, plan
    assert catalog(pg) == before
    run = run_job(env)
    assert run.code == 0, run
    assert plan.changes == run.changes
    assert [(c["action"], c["role"], c.get("member")) for c in run.changes] == [
        ("alter_role", "bob", None),
        ("revoke", "rds_iam", "bob"),
    ]
    state = catalog(pg)
    assert members_of(state, "lookalike") == {"rds_iam"}
    assert role(state, "lookalike")[1] is True  # type: ignore[index]
    assert run_job(env).changes == []


def test_hand_made_user_is_adopted(pg: localpg.LocalPostgres) -> None:
    # Made by the master user, as a person would with psql (from PostgreSQL 16 the
    # master may only alter roles it has ADMIN OPTION on, as on Aurora).
    with pg.master_connect() as conn:
        conn.execute("CREATE ROLE handmade NOLOGIN")
        conn.execute("COMMENT ON ROLE handmade IS 'made by hand'")
    run = run_job(job_env(pg, IAM_USERS="handmade:app_readonly"))
    assert run.code == 0, run
    actions = [(c["action"], c["role"]) for c in run.changes if c.get("role") == "handmade"]
    assert ("adopt", "handmade") in actions
    assert ("alter_role", "handmade") in actions
    state = catalog(pg)
    assert role(state, "handmade")[1] is True  # type: ignore[index]
    assert members_of(state, "handmade") == {"rds_iam", "app_readonly"}
    assert run_job(job_env(pg, IAM_USERS="handmade:app_readonly"), "verify").code == 0


def test_changed_role_list_converges_in_one_run(pg: localpg.LocalPostgres) -> None:
    assert run_job(job_env(pg, IAM_USERS="alice:app_readonly:analytics")).code == 0
    # A role granted to alice by someone else is not the job's to revoke.
    _sql(pg, "CREATE ROLE auditors NOLOGIN", "GRANT auditors TO alice")
    env = job_env(pg, IAM_USERS="alice:app_readwrite")
    run = run_job(env)
    assert run.code == 0, run
    memberships = {(c["action"], c["role"]) for c in run.changes if c.get("member") == "alice"}
    assert memberships == {
        ("revoke", "app_readonly"),
        ("revoke", "analytics"),
        ("grant", "app_readwrite"),
    }
    assert members_of(catalog(pg), "alice") == {"rds_iam", "app_readwrite", "auditors"}
    assert run_job(env).changes == []
    assert run_job(env, "verify").code == 0


def test_roles_held_before_the_job_listed_them_are_never_revoked(
    pg: localpg.LocalPostgres,
) -> None:
    with pg.master_connect() as conn:
        conn.execute("CREATE ROLE reporting NOLOGIN")
        conn.execute("CREATE ROLE carol LOGIN IN ROLE reporting")
    assert run_job(job_env(pg, IAM_USERS="carol:reporting")).code == 0
    run = run_job(job_env(pg, IAM_USERS="carol"))
    assert run.code == 0, run
    assert "reporting" in members_of(catalog(pg), "carol")


def test_verify_is_read_only_and_takes_no_lock(pg: localpg.LocalPostgres) -> None:
    from app.job.transaction import LOCK_KEY  # noqa: PLC0415

    env = job_env(pg, IAM_USERS=USERS, DEADLINE_SECONDS="5")
    with pg.superuser_connect() as conn:
        conn.autocommit = False
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_KEY,))
        run = run_job(env, "verify")
        conn.rollback()
    assert run.code == 7, run  # nothing applied yet: every user is missing
    assert {f["problem"] for f in run.result["findings"]} == {"missing"}


def test_verify_connect_logs_in_as_each_user_with_a_token(
    pg: localpg.LocalPostgres, aws: awsemu.Emulator
) -> None:
    """The test servers let members of rds_iam in without checking the password (a
    stand-in for Aurora's token check), so this exercises token signing, pacing,
    the TLS login as each user, SELECT 1 and the report."""
    env = job_env(pg, IAM_USERS=USERS, **awsemu.client_env(aws.url))
    assert run_job(env).code == 0
    run = run_job(env, "verify", "--connect")
    assert run.code == 0, run
    assert run.result["connections"] == [
        {"user": "alice", "ok": True},
        {"user": "bob", "ok": True},
    ]
    # A user that lost rds_iam falls to password auth, where the token is refused.
    _sql(pg, f"REVOKE rds_iam FROM bob GRANTED BY {_job_grantor(pg)}")
    run = run_job(env, "verify", "--connect")
    assert run.code == 7, run
    bob = run.result["connections"][1]
    assert bob["user"] == "bob" and bob["ok"] is False
    assert "password authentication failed" in bob["error"]


def _as_an_earlier_version_left_it(pg: localpg.LocalPostgres) -> None:
    """The catalog an earlier version wrote, as the master, for
    alice:app_readonly,bob:analytics and a retired carol: a marker comment per user
    with the roles it granted, groups marked the same way, and no marker role."""
    with pg.master_connect() as conn:
        conn.autocommit = True
        for statement in (
            "CREATE ROLE app_readonly NOLOGIN",
            "CREATE ROLE analytics NOLOGIN",
            "CREATE ROLE alice LOGIN",
            "CREATE ROLE bob LOGIN",
            "CREATE ROLE carol LOGIN",
            "GRANT rds_iam TO alice, bob, carol",
            "GRANT app_readonly TO alice",
            "GRANT analytics TO bob",
            "COMMENT ON ROLE app_readonly IS 'managed by aurora-bootstrap'",
            "COMMENT ON ROLE analytics IS 'managed by aurora-bootstrap'",
            "COMMENT ON ROLE alice IS"
            """ 'managed by aurora-bootstrap {"granted": ["app_readonly"]}'""",
            """COMMENT ON ROLE bob IS 'managed by aurora-bootstrap {"granted": ["analytics"]}'""",
            "COMMENT ON ROLE carol IS 'managed by aurora-bootstrap'",
        ):
            conn.execute(statement.encode())


def test_markers_an_earlier_version_wrote_keep_working_and_are_migrated(
    pg: localpg.LocalPostgres,
) -> None:
    _as_an_earlier_version_left_it(pg)
    env = job_env(pg, IAM_USERS="alice:app_readonly,bob:analytics")
    # Read as they were meant before anything is migrated: carol is unlisted.
    verify = run_job(env, "verify")
    assert verify.code == 7, verify
    # (The shipped GROUP_ROLES groups are drift too: that version gave them less.)
    assert [f for f in verify.result["findings"] if f["role"] in ("alice", "bob", "carol")] == [
        {"role": "carol", "problem": "unlisted", "login": True, "rds_iam": True}
    ]
    # bob's analytics was granted by the job (its record says so): dropped from the list,
    # it is revoked; carol is pruned; nobody is reported as adopted.
    run = run_job(job_env(pg, IAM_USERS="alice:app_readonly,bob", PRUNE="true"))
    assert run.code == 0, run
    assert not [c for c in run.changes if c["action"] == "adopt"]
    state = catalog(pg)
    assert all(managed(state, u) for u in ("alice", "bob", "carol"))
    assert members_of(state, "bob") == {"rds_iam"}
    assert role(state, "carol")[1] is False  # type: ignore[index]
    assert "rds_iam" not in members_of(state, "carol")
    assert run_job(job_env(pg, IAM_USERS="alice:app_readonly,bob"), "verify").code == 0
    assert run_job(job_env(pg, IAM_USERS="alice:app_readonly,bob")).changes == []
    # alice's recorded grant moved into the record: dropping it revokes it.
    dropped = run_job(job_env(pg, IAM_USERS="alice,bob"))
    assert ("revoke", "app_readonly", "alice") in {
        (c["action"], c["role"], c.get("member")) for c in dropped.changes
    }


def test_a_user_made_by_hand_is_adopted_and_reported(pg: localpg.LocalPostgres) -> None:
    _sql(pg, "CREATE ROLE handmade LOGIN", "GRANT handmade TO master WITH ADMIN OPTION")
    run = run_job(job_env(pg, IAM_USERS="handmade"))
    assert run.code == 0, run
    assert {"action": "adopt", "role": "handmade"} in run.changes
    assert managed(catalog(pg), "handmade")
