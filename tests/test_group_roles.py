"""GROUP_ROLES: declared privileges, end to end, as the job runs in production.

The owner rules, membership options and several databases run on PostgreSQL 18 (16
changed who may grant and set default privileges); the core document also on 15,
with TLS. Every check reads the server's own privilege functions afterwards.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import psycopg
import pytest

from app.login import connect
from tests.conftest import Job, expand, job_env, run_job
from tools import localpg

MASTER = localpg.MASTER_USER
HOSTILE = 'Sales"; DROP ROLE master; --'


def superuser(server: localpg.LocalPostgres, *statements: str, db: str = "postgres") -> None:
    with server.superuser_connect(db) as conn:
        for statement in statements:
            conn.execute(statement)


def as_role(
    server: localpg.LocalPostgres, who: str, *statements: str, db: str = "postgres"
) -> None:
    """Statements run as `who` (SET ROLE from the superuser), as an owner would."""
    with server.superuser_connect(db) as conn:
        conn.execute(f'SET ROLE "{who}"')
        for statement in statements:
            conn.execute(statement)


def ask(server: localpg.LocalPostgres, query: str, db: str = "postgres") -> Any:
    with server.superuser_connect(db) as conn:
        row = conn.execute(query).fetchone()
    assert row is not None
    return row[0]


def doc(value: dict[str, Any]) -> str:
    return json.dumps(value)


def env(server: localpg.LocalPostgres, groups: dict[str, Any] | str, **more: str) -> dict[str, str]:
    text = groups if isinstance(groups, str) else doc(groups)
    return job_env(server, GROUP_ROLES=text, **more)


def privileges(changes: list[dict[str, Any]]) -> set[tuple[str, str, str, str, str]]:
    """(action, database, object, role, privilege) of each privilege change."""
    return {
        (c["action"], c["database"], c["object"], c["role"], p)
        for c in changes
        if c["action"] in ("grant_privilege", "revoke_privilege")
        for p in c["privileges"]
    }


def sales_schema(server: localpg.LocalPostgres, owner: str = MASTER, db: str = "postgres") -> None:
    """A schema of every kind of relation the access levels name, owned by `owner`."""
    superuser(
        server,
        "DO $$BEGIN IF NOT EXISTS (SELECT FROM pg_foreign_data_wrapper "
        "WHERE fdwname = 'dummy_fdw') THEN CREATE FOREIGN DATA WRAPPER dummy_fdw; END IF; END$$",
        "CREATE SERVER IF NOT EXISTS dummy_server FOREIGN DATA WRAPPER dummy_fdw",
        f'GRANT USAGE ON FOREIGN SERVER dummy_server TO "{owner}"',
        f'CREATE SCHEMA sales AUTHORIZATION "{owner}"',
        db=db,
    )
    as_role(
        server,
        owner,
        "CREATE TABLE sales.orders (id bigserial PRIMARY KEY, amount int)",
        "CREATE VIEW sales.big AS SELECT * FROM sales.orders WHERE amount > 100",
        "CREATE MATERIALIZED VIEW sales.totals AS SELECT sum(amount) FROM sales.orders",
        "CREATE FOREIGN TABLE sales.remote (x int) SERVER dummy_server",
        "CREATE SEQUENCE sales.invoice_no",
        db=db,
    )


RELATIONS = ("sales.orders", "sales.big", "sales.totals", "sales.remote")
TABLE_PRIVILEGES = ("SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER")
SEQUENCE_PRIVILEGES = ("SELECT", "USAGE", "UPDATE")


def held(server: localpg.LocalPostgres, group: str, db: str = "postgres") -> dict[str, set[str]]:
    """What `group` may do on the sales relations and sequence, and the schema and db."""
    out: dict[str, set[str]] = {}
    for rel in (*RELATIONS, "sales.orders_id_seq", "sales.invoice_no"):
        kinds = SEQUENCE_PRIVILEGES if rel.endswith(("_seq", "_no")) else TABLE_PRIVILEGES
        fn = "has_sequence_privilege" if rel.endswith(("_seq", "_no")) else "has_table_privilege"
        out[rel] = {p for p in kinds if ask(server, f"SELECT {fn}('{group}', '{rel}', '{p}')", db)}
    out["schema"] = {
        p
        for p in ("USAGE", "CREATE")
        if ask(server, f"SELECT has_schema_privilege('{group}', 'sales', '{p}')", db)
    }
    out["database"] = {
        p
        for p in ("CONNECT", "CREATE")
        if ask(
            server,
            f"SELECT EXISTS (SELECT FROM pg_database d, aclexplode(d.datacl) a "
            f"WHERE d.datname = '{db}' AND a.grantee = '{group}'::regrole "
            f"AND a.privilege_type = '{p}')",
            db,
        )
    }
    return out


READ = {
    **{rel: {"SELECT"} for rel in RELATIONS},
    "sales.orders_id_seq": {"SELECT"},
    "sales.invoice_no": {"SELECT"},
    "schema": {"USAGE"},
    "database": {"CONNECT"},
}
WRITE = {
    **{rel: {"SELECT", "INSERT", "UPDATE", "DELETE"} for rel in RELATIONS},
    "sales.orders_id_seq": {"SELECT", "USAGE"},
    "sales.invoice_no": {"SELECT", "USAGE"},
    "schema": {"USAGE"},
    "database": {"CONNECT"},
}
CORE = {
    "analyst": [{"schemas": ["sales"], "access": "read"}],
    "writer": [{"schemas": ["sales"], "access": "write"}],
}


def test_read_and_write_give_exactly_their_privileges_now_and_on_tables_made_later(
    pg: localpg.LocalPostgres,
) -> None:
    sales_schema(pg)
    run = run_job(env(pg, CORE, IAM_USERS="ann:analyst,wes:writer"))
    assert run.code == 0, run
    assert held(pg, "analyst") == READ
    assert held(pg, "writer") == WRITE
    # Each change names its database, object, role and privileges; the grants on the
    # master's objects are the master's.
    grants = privileges(run.changes)
    assert ("grant_privilege", "postgres", "table sales.orders", "writer", "DELETE") in grants
    assert ("grant_privilege", "postgres", "database postgres", "analyst", "CONNECT") in grants
    assert ("grant_privilege", "postgres", "schema sales", "analyst", "USAGE") in grants
    assert {c["grantor"] for c in run.changes if c["action"] == "grant_privilege"} == {MASTER}

    # Made after the run, by the owner the document names (the master by default).
    as_role(pg, MASTER, "CREATE TABLE sales.later (id serial)", "CREATE SEQUENCE sales.later_no")
    assert ask(pg, "SELECT has_table_privilege('analyst', 'sales.later', 'SELECT')")
    assert not ask(pg, "SELECT has_table_privilege('analyst', 'sales.later', 'INSERT')")
    assert ask(pg, "SELECT has_table_privilege('writer', 'sales.later', 'DELETE')")
    assert ask(pg, "SELECT has_sequence_privilege('analyst', 'sales.later_no', 'SELECT')")
    assert not ask(pg, "SELECT has_sequence_privilege('analyst', 'sales.later_no', 'USAGE')")
    assert ask(pg, "SELECT has_sequence_privilege('writer', 'sales.later_no', 'USAGE')")

    again = run_job(env(pg, CORE, IAM_USERS="ann:analyst,wes:writer"))
    assert again.code == 0, again
    assert again.changes == []
    verified = run_job(env(pg, CORE, IAM_USERS="ann:analyst,wes:writer"), "verify")
    assert verified.code == 0, verified
    assert verified.result["findings"] == []


def test_the_shipped_default_upgrades_with_exactly_the_two_additions(
    pg: localpg.LocalPostgres,
) -> None:
    # What the previous version granted, as it granted it.
    superuser(
        pg,
        "CREATE ROLE app_readonly NOLOGIN",
        "CREATE ROLE app_readwrite NOLOGIN",
        "COMMENT ON ROLE app_readonly IS 'managed by aurora-bootstrap (group role)'",
        "COMMENT ON ROLE app_readwrite IS 'managed by aurora-bootstrap (group role)'",
    )
    as_role(
        pg,
        MASTER,
        "CREATE TABLE public.t (id bigserial)",
        "GRANT USAGE ON SCHEMA public TO app_readonly, app_readwrite",
        "GRANT SELECT ON public.t TO app_readonly",
        "GRANT SELECT, INSERT, UPDATE, DELETE ON public.t TO app_readwrite",
        "GRANT USAGE, SELECT ON SEQUENCE public.t_id_seq TO app_readwrite",
        "ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT ON TABLES TO app_readonly",
        "ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT, INSERT, UPDATE, DELETE "
        "ON TABLES TO app_readwrite",
        "ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT USAGE, SELECT ON SEQUENCES "
        "TO app_readwrite",
    )
    run = run_job(job_env(pg))  # GROUP_ROLES unset: the shipped default
    assert run.code == 0, run
    assert privileges(run.changes) == {
        ("grant_privilege", "postgres", "database postgres", "app_readonly", "CONNECT"),
        ("grant_privilege", "postgres", "database postgres", "app_readwrite", "CONNECT"),
        ("grant_privilege", "postgres", "sequence public.t_id_seq", "app_readonly", "SELECT"),
        (
            "grant_privilege",
            "postgres",
            "default acl for role master in schema public on sequences",
            "app_readonly",
            "SELECT",
        ),
    }
    # Besides: the marker of managed users, which the first run of any version makes.
    assert {c["role"] for c in run.changes if c["action"] != "grant_privilege"} == {
        "aurora_bootstrap_managed"
    }


def test_owners_the_master_is_a_member_of_are_acted_as_and_others_are_findings(
    pg18: localpg.LocalPostgres,
) -> None:
    superuser(
        pg18,
        "CREATE ROLE app_owner NOLOGIN",
        f"GRANT app_owner TO {MASTER}",  # by an administrator: INHERIT, as on 15
        "CREATE ROLE outsider NOLOGIN",
    )
    sales_schema(pg18, owner="app_owner")
    superuser(
        pg18, "CREATE TABLE sales.secret (x int)", "ALTER TABLE sales.secret OWNER TO outsider"
    )
    # A role the master made itself: from 16 it holds ADMIN OPTION on it, but neither
    # INHERIT nor SET, so it cannot act as it; the job does not grant itself more.
    as_role(pg18, MASTER, "CREATE ROLE migrator NOLOGIN")
    superuser(pg18, "GRANT CREATE ON SCHEMA sales TO migrator")
    as_role(pg18, "migrator", "CREATE TABLE sales.migrated (x int)")
    groups = {
        "analyst": [
            {"schemas": ["sales"], "access": "read", "owners": ["app_owner", "outsider", "ghost"]}
        ]
    }
    run = run_job(env(pg18, groups))
    assert run.code == 0, run
    assert held(pg18, "analyst") == READ
    assert not ask(pg18, "SELECT has_table_privilege('analyst', 'sales.secret', 'SELECT')")
    assert not ask(pg18, "SELECT has_table_privilege('analyst', 'sales.migrated', 'SELECT')")
    # Recorded as the owner's grants, as PostgreSQL does for a member.
    orders = [c for c in run.changes if c.get("object") == "table sales.orders"]
    assert {c["grantor"] for c in orders} == {"app_owner"}

    findings = run.result["findings"]
    assert all(f["level"] == "warning" for f in findings)
    by_problem = {(f["problem"], f.get("owner")): f for f in findings}
    secret = by_problem["not_owner_member", "outsider"]
    assert secret["objects"] == ["table sales.secret"] and secret["schema"] == "sales"
    assert secret["fix"] == f"GRANT outsider TO {MASTER} WITH INHERIT TRUE"
    migrated = by_problem["not_owner_member", "migrator"]
    assert migrated["objects"] == ["table sales.migrated"]
    assert migrated["fix"] == f"GRANT migrator TO {MASTER} WITH INHERIT TRUE"
    assert secret["as"] == "outsider"
    assert secret["statement"] == "GRANT SELECT ON TABLE sales.secret TO analyst"
    defaults = [f for f in findings if f["problem"] == "default_privileges_not_set"]
    assert {f["owner"] for f in defaults} == {"outsider"}
    assert {(f["as"], f["statement"]) for f in defaults} == {
        (
            "outsider",
            "ALTER DEFAULT PRIVILEGES FOR ROLE outsider IN SCHEMA sales "
            "GRANT SELECT ON TABLES TO analyst",
        ),
        (
            "outsider",
            "ALTER DEFAULT PRIVILEGES FOR ROLE outsider IN SCHEMA sales "
            "GRANT SELECT ON SEQUENCES TO analyst",
        ),
    }
    assert {f["fix"] for f in defaults} == {f"GRANT outsider TO {MASTER} WITH INHERIT TRUE"}
    assert ("owner_missing", "ghost") in by_problem
    # The master never granted itself a membership.
    assert not ask(
        pg18,
        "SELECT EXISTS (SELECT FROM pg_auth_members a WHERE a.roleid = 'migrator'::regrole "
        f"AND a.member = '{MASTER}'::regrole AND a.inherit_option)",
    )

    # Tables the owner makes later: covered by its default privileges.
    as_role(pg18, "app_owner", "CREATE TABLE sales.later (x int)")
    assert ask(pg18, "SELECT has_table_privilege('analyst', 'sales.later', 'SELECT')")
    # What the master could not do is still a difference from the document: drift,
    # with who may fix it; what is not there at all (the owner ghost) is a warning.
    verified = run_job(env(pg18, groups), "verify")
    assert verified.code == 7, verified
    drift = expand([f for f in verified.result["findings"] if f.get("level") != "warning"])
    assert {(f["object"], f.get("fix")) for f in drift} == {
        ("table sales.secret", "as outsider: GRANT SELECT ON TABLE sales.secret TO analyst"),
        ("table sales.migrated", "as migrator: GRANT SELECT ON TABLE sales.migrated TO analyst"),
        (
            "default acl for role outsider in schema sales on tables",
            "as outsider: ALTER DEFAULT PRIVILEGES FOR ROLE outsider IN SCHEMA sales "
            "GRANT SELECT ON TABLES TO analyst",
        ),
        (
            "default acl for role outsider in schema sales on sequences",
            "as outsider: ALTER DEFAULT PRIVILEGES FOR ROLE outsider IN SCHEMA sales "
            "GRANT SELECT ON SEQUENCES TO analyst",
        ),
    }
    assert [f["owner"] for f in verified.result["findings"] if f.get("level") == "warning"] == [
        "ghost"
    ]
    # Once the administrator grants the membership, the next run acts on them.
    superuser(pg18, f"GRANT outsider TO {MASTER}")
    later = run_job(env(pg18, groups))
    assert later.code == 0, later
    assert ask(pg18, "SELECT has_table_privilege('analyst', 'sales.secret', 'SELECT')")
    assert not [f for f in later.result.get("findings", []) if f.get("owner") == "outsider"]


def test_a_second_database_and_every_schema(pg: localpg.LocalPostgres) -> None:
    as_role(pg, MASTER, "CREATE DATABASE reports")
    as_role(
        pg,
        MASTER,
        "CREATE SCHEMA rpt",
        "CREATE SCHEMA rpt2",
        "CREATE TABLE rpt.daily (x int)",
        "CREATE TABLE rpt2.monthly (x int)",
        "CREATE TABLE public.p (x int)",
        db="reports",
    )
    groups = {
        "analyst": [
            {"schemas": ["public"], "access": "read"},
            {"database": "reports", "schemas": ["*"], "access": "read"},
        ]
    }
    run = run_job(env(pg, groups, IAM_USERS="ann:analyst"))
    assert run.code == 0, run
    for table in ("rpt.daily", "rpt2.monthly", "public.p"):
        assert ask(pg, f"SELECT has_table_privilege('analyst', '{table}', 'SELECT')", "reports")
    databases = {c["database"] for c in run.changes if c["action"] == "grant_privilege"}
    assert databases == {"postgres", "reports"}
    assert ("grant_privilege", "reports", "table rpt.daily", "analyst", "SELECT") in privileges(
        run.changes
    )
    assert run_job(env(pg, groups, IAM_USERS="ann:analyst")).changes == []
    verified = run_job(env(pg, groups, IAM_USERS="ann:analyst"), "verify")
    assert verified.code == 0, verified


def test_plan_reports_every_privilege_change_that_apply_then_makes(
    pg18: localpg.LocalPostgres,
) -> None:
    sales_schema(pg18)
    as_role(pg18, MASTER, "CREATE DATABASE reports")
    as_role(pg18, MASTER, "CREATE SCHEMA rpt", "CREATE TABLE rpt.daily (x int)", db="reports")
    groups = {
        "analyst": [
            {"schemas": ["sales"], "access": "read"},
            {"database": "reports", "schemas": ["rpt"], "access": "read"},
        ],
        "writer": [{"schemas": ["sales"], "access": "write"}],
    }

    def acl_state() -> Any:
        return [
            ask(pg18, "SELECT array_agg(relacl::text ORDER BY relname) FROM pg_class", db)
            for db in ("postgres", "reports")
        ] + [ask(pg18, "SELECT array_agg(rolname ORDER BY rolname) FROM pg_roles")]

    before = acl_state()
    plan = run_job(env(pg18, groups, IAM_USERS="ann:analyst"), "plan")
    assert plan.code == 0, plan
    assert acl_state() == before
    planned = privileges(plan.changes)
    assert ("grant_privilege", "reports", "table rpt.daily", "analyst", "SELECT") in planned
    applied = run_job(env(pg18, groups, IAM_USERS="ann:analyst"))
    assert applied.code == 0, applied
    assert privileges(applied.changes) == planned
    assert sorted(map(json.dumps, plan.changes)) == sorted(map(json.dumps, applied.changes))


def test_verify_names_missing_and_undeclared_privileges_as_drift(
    pg18: localpg.LocalPostgres,
) -> None:
    sales_schema(pg18)
    assert run_job(env(pg18, CORE)).code == 0
    as_role(
        pg18,
        MASTER,
        "REVOKE SELECT ON sales.big FROM analyst",
        "GRANT TRUNCATE ON sales.orders TO writer",
        "ALTER DEFAULT PRIVILEGES IN SCHEMA sales REVOKE SELECT ON SEQUENCES FROM analyst",
    )
    verified = run_job(env(pg18, CORE), "verify")
    assert verified.code == 7, verified
    drift = expand([f for f in verified.result["findings"] if f.get("level") != "warning"])
    assert {
        "role": "analyst",
        "problem": "privilege_missing",
        "database": "postgres",
        "object": "view sales.big",
        "privileges": ["SELECT"],
    } in drift
    assert {
        "role": "writer",
        "problem": "privilege_undeclared",
        "database": "postgres",
        "object": "table sales.orders",
        "privileges": ["TRUNCATE"],
        "grantor": MASTER,
    } in drift
    assert {
        "role": "analyst",
        "problem": "privilege_missing",
        "database": "postgres",
        "object": "default acl for role master in schema sales on sequences",
        "privileges": ["SELECT"],
    } in drift
    assert len(drift) == 3
    # apply repairs what is missing; without PRUNE it leaves what is undeclared.
    repaired = run_job(env(pg18, CORE))
    assert privileges(repaired.changes) == {
        ("grant_privilege", "postgres", "view sales.big", "analyst", "SELECT"),
        (
            "grant_privilege",
            "postgres",
            "default acl for role master in schema sales on sequences",
            "analyst",
            "SELECT",
        ),
    }
    assert ask(pg18, "SELECT has_table_privilege('writer', 'sales.orders', 'TRUNCATE')")


def test_narrowing_the_document_with_and_without_prune(pg18: localpg.LocalPostgres) -> None:
    sales_schema(pg18)
    superuser(pg18, "CREATE ROLE bystander NOLOGIN")
    as_role(
        pg18,
        MASTER,
        "CREATE SCHEMA old",
        "CREATE TABLE old.t (x int)",
        "GRANT SELECT ON sales.orders TO bystander",
        "GRANT SELECT ON sales.orders TO PUBLIC",
    )
    wide = {"writer": [{"schemas": ["sales", "old"], "access": "write"}]}
    assert run_job(env(pg18, wide)).code == 0
    narrow = {"writer": [{"schemas": ["sales"], "access": "read"}]}

    kept = run_job(env(pg18, narrow))
    assert kept.code == 0, kept
    assert kept.changes == []
    assert ask(pg18, "SELECT has_table_privilege('writer', 'sales.orders', 'INSERT')")
    assert run_job(env(pg18, narrow), "verify").code == 7

    pruned = run_job(env(pg18, narrow, PRUNE="true"))
    assert pruned.code == 0, pruned
    revoked = {(obj, p) for action, _db, obj, who, p in privileges(pruned.changes)}
    assert all(c["action"] == "revoke_privilege" for c in pruned.changes), pruned.changes
    assert {c["role"] for c in pruned.changes} == {"writer"}
    assert ("table sales.orders", "INSERT") in revoked
    assert ("sequence sales.invoice_no", "USAGE") in revoked
    assert ("schema old", "USAGE") in revoked
    assert ("table old.t", "SELECT") in revoked
    assert ("default acl for role master in schema sales on tables", "DELETE") in revoked
    assert ("default acl for role master in schema old on tables", "SELECT") in revoked
    assert held(pg18, "writer") == READ
    # PUBLIC and the roles the job does not manage keep theirs.
    assert ask(pg18, "SELECT has_table_privilege('bystander', 'sales.orders', 'SELECT')")
    assert ask(
        pg18,
        "SELECT EXISTS (SELECT FROM aclexplode((SELECT relacl FROM pg_class "
        "WHERE oid = 'sales.orders'::regclass)) a WHERE a.grantee = 0)",
    )
    assert run_job(env(pg18, narrow, PRUNE="true")).changes == []
    assert run_job(env(pg18, narrow), "verify").code == 0


def test_a_group_declared_with_nothing_loses_everything_under_prune(
    pg18: localpg.LocalPostgres,
) -> None:
    sales_schema(pg18)
    assert run_job(env(pg18, CORE)).code == 0
    emptied = {"analyst": [], "writer": [{"schemas": ["sales"], "access": "write"}]}
    run = run_job(env(pg18, emptied, PRUNE="true"))
    assert run.code == 0, run
    assert {c["role"] for c in run.changes} == {"analyst"}
    assert held(pg18, "analyst") == {rel: set() for rel in READ}


@pytest.mark.parametrize("name", [HOSTILE, "Mixed Case", "sp ace's"])
def test_any_schema_name_is_only_ever_an_identifier(pg18: localpg.LocalPostgres, name: str) -> None:
    quoted = '"' + name.replace('"', '""') + '"'
    as_role(pg18, MASTER, f"CREATE SCHEMA {quoted}", f"CREATE TABLE {quoted}.{quoted} (x int)")
    groups = {"analyst": [{"schemas": [name], "access": "write"}]}
    run = run_job(env(pg18, groups))
    assert run.code == 0, run
    with pg18.superuser_connect() as conn:
        table = f"{quoted}.{quoted}"
        assert conn.execute(
            "SELECT has_table_privilege('analyst', %s, 'INSERT')", (table,)
        ).fetchone() == (True,)
        assert conn.execute(
            "SELECT count(*) FROM pg_roles WHERE rolname = %s", (MASTER,)
        ).fetchone() == (1,)
    assert run_job(env(pg18, groups)).changes == []


def test_a_schema_not_made_yet_is_a_finding_and_the_next_run_grants_on_it(
    pg18: localpg.LocalPostgres,
) -> None:
    groups = {"analyst": [{"schemas": ["later"], "access": "read"}]}
    run = run_job(env(pg18, groups))
    assert run.code == 0, run
    assert run.result["findings"] == [
        {
            "level": "warning",
            "problem": "schema_missing",
            "database": "postgres",
            "schema": "later",
            "group": "analyst",
        }
    ]
    as_role(pg18, MASTER, "CREATE SCHEMA later", "CREATE TABLE later.t (x int)")
    again = run_job(env(pg18, groups))
    assert again.code == 0, again
    assert ask(pg18, "SELECT has_table_privilege('analyst', 'later.t', 'SELECT')")
    assert "findings" not in again.result


def test_a_missing_database_fails_the_run_with_nothing_applied_anywhere(
    pg18: localpg.LocalPostgres,
) -> None:
    as_role(pg18, MASTER, "CREATE DATABASE reports")
    groups = {
        "analyst": [
            {"database": "reports", "schemas": ["public"], "access": "read"},
            {"database": "nosuch", "schemas": ["public"], "access": "read"},
        ]
    }
    run = run_job(env(pg18, groups, IAM_USERS="ann:analyst"))
    assert run.code == 2, run
    assert "GROUP_ROLES" in run.result["error"]["message"]
    assert "'nosuch' does not exist" in run.result["error"]["message"]
    assert ask(pg18, "SELECT count(*) FROM pg_roles WHERE rolname IN ('analyst', 'ann')") == 0
    assert ask(pg18, "SELECT count(*) FROM pg_class WHERE relacl::text LIKE '%analyst%'") == 0


def test_concurrent_applies_over_two_databases_all_succeed(pg18: localpg.LocalPostgres) -> None:
    as_role(pg18, MASTER, "CREATE DATABASE reports")
    for db in ("postgres", "reports"):
        as_role(
            pg18,
            MASTER,
            "CREATE SCHEMA sales",
            *(f"CREATE TABLE sales.t{i} (x int)" for i in range(20)),
            db=db,
        )
    groups = {
        g: [
            {"schemas": ["sales"], "access": a},
            {"database": "reports", "schemas": ["sales"], "access": a},
            {"database": "postgres", "schemas": ["public"], "access": a},
        ]
        for g, a in (("analyst", "read"), ("writer", "write"))
    }
    users = ",".join(f"u{i}:analyst" for i in range(30)) + ",w1:writer"
    jobs = [
        Job(env(pg18, groups, IAM_USERS=users, DB_NAME=db, DEADLINE_SECONDS="90"))
        for db in ("postgres", "reports", "postgres", "reports")
    ]
    runs = [job.finish() for job in jobs]
    for run in runs:
        assert run.code == 0, run
    for db in ("postgres", "reports"):
        assert ask(pg18, "SELECT has_table_privilege('writer', 'sales.t19', 'DELETE')", db)
        assert ask(pg18, "SELECT has_table_privilege('analyst', 'sales.t0', 'SELECT')", db)
    # Between them, every change was made once.
    made = [c for run in runs for c in run.changes if c["action"] == "create_role"]
    assert len(made) == len({c["role"] for c in made})
    assert run_job(env(pg18, groups, IAM_USERS=users)).changes == []


BAD_DOCUMENTS = [
    ("[1, 2]", "must be a mapping"),
    ("just text", "must be a mapping"),
    ('{"analyst": {"schemas": ["s"]}}', "unknown key 'schemas'; allowed: grants, member_of"),
    ('{"analyst": "s"}', "must be a list of grants, or a mapping with grants and member_of"),
    ('{"analyst": [{"schemas": ["s"], "access": "read", "colour": 1}]}', "unknown key 'colour'"),
    ('{"analyst": [{"schemas": ["s"], "access": "admin"}]}', "access must be one of"),
    ('{"analyst": [{"access": "read"}]}', "'schemas' is missing"),
    ('{"analyst": [{"schemas": [], "access": "read"}]}', "schemas is empty"),
    ('{"analyst": [{"schemas": "s", "access": "read"}]}', "schemas must be a list"),
    ('{"analyst": [{"schemas": ["s"], "access": "read", "owners": "o"}]}', "owners must be a list"),
    ('{"Analyst": [{"schemas": ["s"], "access": "read"}]}', "must match"),
    ('{"pg_monitor2": []}', "reserved"),
    ('{"rds_x": []}', "reserved"),
    ('{"public": []}', "reserved"),
    ('{"aurora_bootstrap_managed": []}', "reserved"),
    ('{"ann": []}', "also a user in IAM_USERS"),
    ('{"master": []}', "is the master user"),
    ('{"analyst": [{"schemas": ["' + "x" * 64 + '"], "access": "read"}]}', "longer than 63"),
    ("analyst: [{schemas: [s], access: read", "not valid JSON or YAML"),
    ('{"analyst": [{"schemas": ["pg_catalog"], "access": "read"}]}', "PostgreSQL's own"),
    ('{"analyst": [{"schemas": ["information_schema"], "access": "read"}]}', "PostgreSQL's own"),
    (
        '{"analyst": [{"schemas": ["s"], "privileges": {"tables": ["EXECUTE"]}}]}',
        "is not a privilege of tables; allowed: SELECT",
    ),
    (
        '{"analyst": [{"schemas": ["s"], "privileges": {"views": ["SELECT"]}}]}',
        "unknown privilege kind",
    ),
    ('{"analyst": [{"schemas": ["s"], "privileges": {"tables": []}}]}', "non-empty list"),
    ('{"analyst": [{"schemas": ["s"]}]}', "says nothing the group may do"),
    ('{"analyst": [{"schemas": ["*"], "objects": ["t"], "access": "read"}]}', 'not in "*"'),
    (
        '{"analyst": [{"schemas": ["s"], "objects": ["t"], "owners": ["o"], "access": "read"}]}',
        "leave one of them out",
    ),
    ('{"analyst": {"member_of": ["rds_iam"]}}', "member_of names rds_iam"),
    ('{"analyst": {"member_of": ["analyst"]}}', "cannot be a member of itself"),
    ('{"analyst": {"member_of": ["ann"]}}', "a user in IAM_USERS"),
    ('{"analyst": {"member_of": ["master"]}}', "the master user"),
    (
        '{"a": {"member_of": ["b"]}, "b": {"member_of": ["a"]}}',
        "member_of forms a cycle: a -> b -> a",
    ),
    ('{"analyst": {"grant": []}}', "unknown key 'grant'"),
]


@pytest.mark.parametrize(("text", "problem"), BAD_DOCUMENTS)
def test_a_bad_document_exits_2_naming_the_setting_before_any_connection(
    text: str, problem: str
) -> None:
    # Nothing listens on the port: a connection attempt would be retried, not exit 2.
    run = run_job(
        job_env(
            None,
            DB_HOST="127.0.0.1",
            DB_PORT=str(localpg.free_port()),
            DB_USER=MASTER,
            DB_PASSWORD="unused-password",
            DB_SSLMODE="disable",
            IAM_USERS="ann",
            GROUP_ROLES=text,
        )
    )
    assert run.code == 2, run
    message = run.result["error"]["message"]
    assert message.startswith("GROUP_ROLES: "), message
    assert problem in message, message
    assert not [e for e in run.logs if e.get("event") == "retry"]


def test_the_file_form_yaml_and_its_errors(pg15: localpg.LocalPostgres, tmp_path: Any) -> None:
    sales_schema(pg15)
    path = tmp_path / "groups.yaml"
    path.write_text(
        "# who may do what\n"
        "analyst:\n"
        "  - {schemas: [sales], access: read}\n"
        "writer:\n"
        "  - schemas: [sales]\n"
        "    access: write\n"
        f"    owners: [{MASTER}]\n"
    )
    run = run_job(job_env(pg15, GROUP_ROLES_FILE=str(path)))
    assert run.code == 0, run
    assert held(pg15, "analyst") == READ and held(pg15, "writer") == WRITE

    both = run_job(job_env(pg15, GROUP_ROLES_FILE=str(path), GROUP_ROLES="{}"))
    assert both.code == 2, both
    assert both.result["error"]["message"].startswith(
        "GROUP_ROLES: is set and so is GROUP_ROLES_FILE"
    )
    missing = run_job(job_env(pg15, GROUP_ROLES_FILE=str(tmp_path / "nope.yaml")))
    assert missing.code == 2, missing
    assert missing.result["error"]["message"].startswith("GROUP_ROLES_FILE: cannot read")
    path.write_text("analyst: [{schemas: [sales], access: read, owner: x}]\n")
    bad = run_job(job_env(pg15, GROUP_ROLES_FILE=str(path)))
    assert bad.code == 2 and bad.result["error"]["message"].startswith("GROUP_ROLES_FILE: ")


def test_groups_declared_in_a_document_are_made_nologin_and_marked(
    pg15: localpg.LocalPostgres,
) -> None:
    run = run_job(env(pg15, {"analyst": [], "auditor": []}, IAM_USERS="ann:analyst"))
    assert run.code == 0, run
    with pg15.superuser_connect() as conn:
        rows = conn.execute(
            "SELECT rolname, rolcanlogin, shobj_description(oid, 'pg_authid') FROM pg_roles "
            "WHERE rolname IN ('analyst', 'auditor') ORDER BY 1"
        ).fetchall()
    assert rows == [
        ("analyst", False, "managed by aurora-bootstrap (group role)"),
        ("auditor", False, "managed by aurora-bootstrap (group role)"),
    ]
    # No group of the shipped default: the document replaces it.
    assert ask(pg15, "SELECT count(*) FROM pg_roles WHERE rolname LIKE 'app_read%'") == 0


def test_a_role_made_by_a_run_in_another_database_is_a_transient_failure(
    pg18: localpg.LocalPostgres,
) -> None:
    """Two runs with different DB_NAMEs hold different advisory locks: the second to
    create the same role fails with a unique violation once the first commits. The
    job retries it (the next attempt finds the role), rather than exit 6."""
    as_role(pg18, MASTER, "CREATE DATABASE reports")
    first = pg18.superuser_connect()
    first.autocommit = False
    first.execute(f"SET ROLE {MASTER}")
    first.execute("CREATE ROLE raced NOLOGIN")
    caught: list[psycopg.Error] = []

    def second() -> None:
        with pg18.superuser_connect("reports") as conn:
            conn.execute(f"SET ROLE {MASTER}")
            try:
                conn.execute("DO $$BEGIN CREATE ROLE raced NOLOGIN; END$$")
            except psycopg.Error as exc:
                caught.append(exc)

    thread = threading.Thread(target=second)
    thread.start()
    time.sleep(1)  # the second waits on the first's uncommitted row
    first.commit()
    first.close()
    thread.join(timeout=30)
    assert len(caught) == 1
    assert caught[0].sqlstate == "23505"
    assert connect.is_transient(caught[0])
