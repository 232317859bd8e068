"""GROUP_ROLES managed exactly, as the job runs in production: every ACL item naming a
declared group (whoever granted it, with its grant option; on databases, schemas,
relations, columns, sequences, functions; per-schema and global default privileges)
and its memberships, in every database where it holds anything; what the master
cannot do is a finding that says who can; the shipped default only adds.

Each test judges the catalog afterwards: aclexplode over every ACL column, the
has_*_privilege functions and pg_auth_members. The owner and grantor rules run on
PostgreSQL 18 (16 changed who may grant and revoke), the core also on 15 with TLS.
"""

from __future__ import annotations

import json
from typing import Any

from tests.conftest import expand, job_env, run_job
from tests.test_group_roles import MASTER, as_role, ask, env, privileges, sales_schema, superuser
from tools import localpg

Holding = tuple[str, str, str, str, bool]

# Every ACL item naming a role, as (kind, object, privilege, grantor, grantable).
_HOLDINGS = """
SELECT 'database', d.datname::text, a.privilege_type, a.grantor::regrole::text, a.is_grantable
FROM pg_database d, aclexplode(d.datacl) a WHERE a.grantee = %(role)s::regrole
UNION ALL
SELECT 'schema', n.nspname::text, a.privilege_type, a.grantor::regrole::text, a.is_grantable
FROM pg_namespace n, aclexplode(n.nspacl) a WHERE a.grantee = %(role)s::regrole
UNION ALL
SELECT 'relation', c.oid::regclass::text, a.privilege_type, a.grantor::regrole::text,
       a.is_grantable
FROM pg_class c, aclexplode(c.relacl) a WHERE a.grantee = %(role)s::regrole
UNION ALL
SELECT 'column', t.attrelid::regclass::text || '.' || t.attname, a.privilege_type,
       a.grantor::regrole::text, a.is_grantable
FROM pg_attribute t, aclexplode(t.attacl) a WHERE a.grantee = %(role)s::regrole
UNION ALL
SELECT 'function', p.oid::regprocedure::text, a.privilege_type, a.grantor::regrole::text,
       a.is_grantable
FROM pg_proc p, aclexplode(p.proacl) a WHERE a.grantee = %(role)s::regrole
UNION ALL
SELECT 'default', d.defaclrole::regrole::text || ' ' || coalesce(n.nspname, '(global)') || ' '
       || d.defaclobjtype::text, a.privilege_type, a.grantor::regrole::text, a.is_grantable
FROM pg_default_acl d LEFT JOIN pg_namespace n ON n.oid = d.defaclnamespace,
     aclexplode(d.defaclacl) a
WHERE a.grantee = %(role)s::regrole
"""


def holdings(server: localpg.LocalPostgres, role: str, db: str = "postgres") -> set[Holding]:
    with server.superuser_connect(db) as conn:
        rows = conn.execute(_HOLDINGS, {"role": role}).fetchall()
    return {(str(k), str(o), str(p), str(g), bool(w)) for k, o, p, g, w in rows}


def memberships(server: localpg.LocalPostgres, member: str) -> set[tuple[str, str, bool]]:
    """(role, grantor, admin option) of each membership `member` holds."""
    with server.superuser_connect() as conn:
        rows = conn.execute(
            "SELECT a.roleid::regrole::text, a.grantor::regrole::text, a.admin_option "
            "FROM pg_auth_members a WHERE a.member = %s::regrole",
            (member,),
        ).fetchall()
    return {(str(r), str(g), bool(a)) for r, g, a in rows}


def drift_of(run: Any) -> list[dict[str, Any]]:
    return expand([f for f in run.result.get("findings", []) if f.get("level") != "warning"])


READ_SALES = {"analyst": [{"schemas": ["sales"], "access": "read"}]}


def test_an_upgrade_with_prune_and_the_shipped_default_only_adds(
    pg: localpg.LocalPostgres,
) -> None:
    """What a previous version's groups were given by hand, outside the shipped
    default, is neither revoked nor drift, with PRUNE or without."""
    # The groups as a previous version made them, as the master.
    as_role(
        pg,
        MASTER,
        "CREATE ROLE app_readonly NOLOGIN",
        "CREATE ROLE app_readwrite NOLOGIN",
        "COMMENT ON ROLE app_readonly IS 'managed by aurora-bootstrap (group role)'",
        "COMMENT ON ROLE app_readwrite IS 'managed by aurora-bootstrap (group role)'",
    )
    superuser(pg, "GRANT pg_read_all_stats TO app_readonly")
    sales_schema(pg)
    as_role(
        pg,
        MASTER,
        "GRANT USAGE ON SCHEMA sales TO app_readonly, app_readwrite",
        "GRANT SELECT ON sales.orders TO app_readonly",
        "GRANT UPDATE (amount) ON sales.orders TO app_readwrite",
        "GRANT TRUNCATE ON sales.orders TO app_readwrite WITH GRANT OPTION",
        "ALTER DEFAULT PRIVILEGES GRANT SELECT ON TABLES TO app_readonly",
    )
    before = {g: holdings(pg, g) for g in ("app_readonly", "app_readwrite")}
    run = run_job(job_env(pg, IAM_USERS="alice:app_readonly", PRUNE="true"))
    assert run.code == 0, run
    revoked = [c for c in run.changes if c["action"] in ("revoke", "revoke_privilege")]
    assert revoked == [], revoked
    for group, held in before.items():
        assert held <= holdings(pg, group), group
    assert ("pg_read_all_stats", "postgres", False) in memberships(pg, "app_readonly")
    verified = run_job(job_env(pg, IAM_USERS="alice:app_readonly"), "verify")
    assert verified.code == 0, verified
    assert run_job(job_env(pg, IAM_USERS="alice:app_readonly", PRUNE="true")).changes == []


def test_a_group_declared_empty_loses_everything_in_every_database(
    pg18: localpg.LocalPostgres,
) -> None:
    """Also in a database the document no longer names, and where the group holds no
    more than CONNECT: pg_shdepend says where it holds anything."""
    as_role(pg18, MASTER, "CREATE DATABASE reports", "CREATE DATABASE archive")
    as_role(pg18, MASTER, "CREATE SCHEMA rpt", "CREATE TABLE rpt.daily (x int)", db="reports")
    sales_schema(pg18)
    wide = {
        "analyst": [
            {"schemas": ["sales"], "access": "read"},
            {"database": "reports", "schemas": ["rpt"], "access": "read"},
            {"database": "archive", "schemas": ["public"], "privileges": {"database": ["CONNECT"]}},
        ]
    }
    assert run_job(env(pg18, wide)).code == 0
    assert holdings(pg18, "analyst", "reports")
    emptied: dict[str, Any] = {"analyst": []}
    plan = run_job(env(pg18, emptied, PRUNE="true"), "plan")
    assert plan.code == 0, plan
    run = run_job(env(pg18, emptied, PRUNE="true"))
    assert run.code == 0, run
    assert privileges(plan.changes) == privileges(run.changes)
    assert {c["database"] for c in run.changes} == {"postgres", "reports", "archive"}
    for db in ("postgres", "reports", "archive"):
        assert holdings(pg18, "analyst", db) == set(), db
    assert not ask(pg18, "SELECT has_table_privilege('analyst', 'rpt.daily', 'SELECT')", "reports")
    verified = run_job(env(pg18, emptied), "verify")
    assert verified.code == 0, verified
    assert run_job(env(pg18, emptied, PRUNE="true")).changes == []


def test_privileges_of_other_grantors_are_revoked_as_them_or_named_with_who_can(
    pg: localpg.LocalPostgres,
) -> None:
    sales_schema(pg)
    superuser(
        pg,
        "CREATE ROLE etl NOLOGIN",
        f"GRANT etl TO {MASTER}",
        "CREATE ROLE vendor NOLOGIN",
        "CREATE SCHEMA hr AUTHORIZATION vendor",
        "GRANT USAGE ON SCHEMA sales TO etl",
        "GRANT SELECT, INSERT ON sales.orders TO etl WITH GRANT OPTION",
    )
    as_role(pg, "vendor", "CREATE TABLE hr.salaries (x int)")
    assert run_job(env(pg, READ_SALES)).code == 0
    as_role(pg, "etl", "GRANT SELECT, INSERT ON sales.orders TO analyst")
    as_role(
        pg,
        "vendor",
        "GRANT USAGE ON SCHEMA hr TO analyst",
        "GRANT SELECT ON hr.salaries TO analyst",
    )

    verified = run_job(env(pg, READ_SALES), "verify")
    assert verified.code == 7, verified
    drift = {
        (d["problem"], d["object"], d.get("grantor"), d.get("fix")) for d in drift_of(verified)
    }
    assert drift == {
        ("privilege_undeclared", "table sales.orders", "etl", None),
        (
            "privilege_undeclared",
            "schema hr",
            "vendor",
            "as vendor: REVOKE USAGE ON SCHEMA hr FROM analyst CASCADE",
        ),
        (
            "privilege_undeclared",
            "table hr.salaries",
            "vendor",
            "as vendor: REVOKE SELECT ON TABLE hr.salaries FROM analyst CASCADE",
        ),
    }

    for attempt in range(2):  # every run names what it cannot do
        run = run_job(env(pg, READ_SALES, PRUNE="true"))
        assert run.code == 0, run
        if attempt == 0:
            assert [
                (c["action"], c["object"], c["grantor"], c["privileges"]) for c in run.changes
            ] == [("revoke_privilege", "table sales.orders", "etl", ["INSERT"])]
        else:
            assert run.changes == []
        findings = {
            (f["problem"], f["grantor"], f["as"], f["statement"]) for f in run.result["findings"]
        }
        assert findings == {
            (
                "privilege_not_revoked",
                "vendor",
                "vendor",
                "REVOKE USAGE ON SCHEMA hr FROM analyst CASCADE",
            ),
            (
                "privilege_not_revoked",
                "vendor",
                "vendor",
                "REVOKE SELECT ON TABLE hr.salaries FROM analyst CASCADE",
            ),
        }
    assert ("relation", "sales.orders", "INSERT", "etl", False) not in holdings(pg, "analyst")
    # The declared SELECT is held, by the owner's grant and etl's alike.
    assert ask(pg, "SELECT has_table_privilege('analyst', 'sales.orders', 'SELECT')")
    assert not ask(pg, "SELECT has_table_privilege('analyst', 'sales.orders', 'INSERT')")
    assert run_job(env(pg, READ_SALES), "verify").code == 7
    as_role(
        pg,
        "vendor",
        "REVOKE ALL ON hr.salaries FROM analyst",
        "REVOKE ALL ON SCHEMA hr FROM analyst",
    )
    verified = run_job(env(pg, READ_SALES), "verify")
    assert verified.code == 0, verified


def test_what_a_group_passed_on_goes_with_it_and_the_run_completes(
    pg: localpg.LocalPostgres,
) -> None:
    """Revoking a privilege the group passed on with its grant option needs CASCADE:
    without it the whole run failed, and its users were not made."""
    sales_schema(pg)
    assert run_job(env(pg, READ_SALES)).code == 0
    superuser(pg, "CREATE ROLE partner NOLOGIN", "CREATE ROLE auditor_x NOLOGIN")
    as_role(
        pg,
        MASTER,
        "GRANT TRUNCATE ON sales.orders TO analyst WITH GRANT OPTION",
        "GRANT SELECT ON sales.orders TO analyst WITH GRANT OPTION",
    )
    as_role(
        pg,
        "analyst",
        "GRANT TRUNCATE ON sales.orders TO partner",
        "GRANT SELECT ON sales.orders TO auditor_x",
    )
    run = run_job(env(pg, READ_SALES, PRUNE="true", IAM_USERS="ann:analyst"))
    assert run.code == 0, run
    assert ask(pg, "SELECT count(*) FROM pg_roles WHERE rolname = 'ann'") == 1
    assert holdings(pg, "partner") == set()
    assert holdings(pg, "auditor_x") == set()
    held = {h for h in holdings(pg, "analyst") if h[1] == "sales.orders"}
    assert held == {("relation", "sales.orders", "SELECT", MASTER, False)}
    # The report lists what cascaded: the grants the group had made.
    cascaded = {
        (c["role"], c["grantor"], tuple(c["privileges"]))
        for c in run.changes
        if c["action"] == "revoke_privilege" and c["role"] != "analyst"
    }
    assert cascaded == {
        ("partner", "analyst", ("TRUNCATE",)),
        ("auditor_x", "analyst", ("SELECT",)),
    }
    assert {
        (tuple(c["privileges"]), c.get("grant_option", False))
        for c in run.changes
        if c["action"] == "revoke_privilege" and c["role"] == "analyst"
    } == {(("TRUNCATE",), False), (("SELECT", "TRUNCATE"), True)}
    assert run_job(env(pg, READ_SALES, IAM_USERS="ann:analyst"), "verify").code == 0


def test_a_cascade_that_takes_what_another_group_needs_is_granted_back_in_the_same_run(
    pg18: localpg.LocalPostgres,
) -> None:
    sales_schema(pg18)
    groups = {"passer": [], "keeper": [{"schemas": ["sales"], "access": "read"}]}
    assert run_job(env(pg18, groups)).code == 0
    # keeper's SELECT on orders came from passer alone.
    as_role(pg18, MASTER, "REVOKE SELECT ON sales.orders FROM keeper")
    as_role(
        pg18,
        MASTER,
        "GRANT USAGE ON SCHEMA sales TO passer",
        "GRANT SELECT ON sales.orders TO passer WITH GRANT OPTION",
    )
    as_role(pg18, "passer", "GRANT SELECT ON sales.orders TO keeper")
    run = run_job(env(pg18, groups, PRUNE="true"))
    assert run.code == 0, run
    assert ask(pg18, "SELECT has_table_privilege('keeper', 'sales.orders', 'SELECT')")
    assert ("relation", "sales.orders", "SELECT", MASTER, False) in holdings(pg18, "keeper")
    assert holdings(pg18, "passer") == set()
    assert run_job(env(pg18, groups, PRUNE="true")).changes == []
    assert run_job(env(pg18, groups), "verify").code == 0


def test_an_owner_acted_as_without_usage_on_its_schema_is_a_finding_and_the_rest_applies(
    pg: localpg.LocalPostgres,
) -> None:
    sales_schema(pg)
    superuser(
        pg,
        "CREATE ROLE app_owner NOLOGIN",
        f"GRANT app_owner TO {MASTER}",
        "CREATE SCHEMA locked",
        "CREATE TABLE locked.t (x int)",
        "ALTER TABLE locked.t OWNER TO app_owner",
    )
    groups = {"analyst": [{"schemas": ["sales", "locked"], "access": "read"}]}
    for command in ("plan", "apply"):
        run = run_job(env(pg, groups), command)
        assert run.code == 0, run
        usage = [f for f in run.result["findings"] if f["problem"] == "no_schema_usage"]
        assert [(f["objects"], f["as"], f["fix"]) for f in usage] == [
            (["table locked.t"], MASTER, f"as postgres: GRANT USAGE ON SCHEMA locked TO {MASTER}")
        ]
    assert ask(pg, "SELECT has_table_privilege('analyst', 'sales.orders', 'SELECT')")
    assert not ask(pg, "SELECT has_table_privilege('analyst', 'locked.t', 'SELECT')")
    assert run_job(env(pg, groups), "verify").code == 7
    superuser(
        pg, f"GRANT USAGE ON SCHEMA locked TO {MASTER}", "GRANT USAGE ON SCHEMA locked TO analyst"
    )
    assert run_job(env(pg, groups)).code == 0
    assert ask(pg, "SELECT has_table_privilege('analyst', 'locked.t', 'SELECT')")
    assert run_job(env(pg, groups), "verify").code == 0


def test_verify_sees_grant_options_columns_global_defaults_and_memberships(
    pg: localpg.LocalPostgres,
) -> None:
    sales_schema(pg)
    assert run_job(env(pg, READ_SALES)).code == 0
    assert run_job(env(pg, READ_SALES), "verify").code == 0
    as_role(
        pg,
        MASTER,
        "GRANT UPDATE (amount) ON sales.orders TO analyst",
        "GRANT SELECT ON sales.big TO analyst WITH GRANT OPTION",
        "ALTER DEFAULT PRIVILEGES GRANT SELECT ON TABLES TO analyst",
    )
    superuser(pg, "CREATE ROLE helpdesk NOLOGIN", "GRANT helpdesk TO analyst")
    verified = run_job(env(pg, READ_SALES), "verify")
    assert verified.code == 7, verified
    found = {(d["problem"], d.get("object") or d.get("member_of")) for d in drift_of(verified)}
    assert found == {
        ("privilege_undeclared", "table column sales.orders.amount"),
        ("grant_option_undeclared", "view sales.big"),
        ("privilege_undeclared", f"default acl for role {MASTER} on tables"),
        ("membership_undeclared", "helpdesk"),
    }
    run = run_job(env(pg, READ_SALES, PRUNE="true"))
    assert run.code == 0, run
    held = holdings(pg, "analyst")
    assert not [h for h in held if h[0] == "column" or h[4] or h[1].endswith("(global) r")]
    assert ("relation", "sales.big", "SELECT", MASTER, False) in held
    if pg.major >= 16:
        # Granted by the superuser: from 16 only that grantor (or a role acting as it)
        # can take it back. The finding says who, and verify still sees it.
        assert ("helpdesk", "postgres", False) in memberships(pg, "analyst")
        [finding] = [f for f in run.result["findings"] if f["problem"] == "membership_not_revoked"]
        assert finding["statement"] == "REVOKE helpdesk FROM analyst GRANTED BY postgres CASCADE"
        left = drift_of(run_job(env(pg, READ_SALES), "verify"))
        assert [(d["problem"], d["member_of"]) for d in left] == [
            ("membership_undeclared", "helpdesk")
        ]
        assert "postgres" in left[0]["fix"]
    else:
        assert memberships(pg, "analyst") == set()
        assert run_job(env(pg, READ_SALES), "verify").code == 0


GRAMMAR = {
    "migrator": [
        {
            "schemas": ["sales"],
            "privileges": {"database": ["CONNECT", "temporary"], "schema": ["USAGE", "CREATE"]},
        }
    ],
    "writer": [
        {
            "schemas": ["sales"],
            "access": "write",
            "privileges": {
                "tables": ["TRUNCATE", "REFERENCES", "TRIGGER"],
                "sequences": ["UPDATE"],
                "functions": ["EXECUTE"],
            },
        }
    ],
    "auditor": [
        {
            "schemas": ["sales"],
            "objects": ["orders", "total"],
            "privileges": {"tables": ["SELECT"], "functions": ["EXECUTE"]},
        }
    ],
    "reader": {"member_of": ["auditor"], "grants": []},
}


def test_every_privilege_kind_single_objects_and_memberships(pg: localpg.LocalPostgres) -> None:
    sales_schema(pg)
    as_role(
        pg,
        MASTER,
        "CREATE FUNCTION sales.total(int) RETURNS int LANGUAGE sql AS 'SELECT 1'",
        "CREATE FUNCTION sales.total(text) RETURNS int LANGUAGE sql AS 'SELECT 2'",
        "CREATE PROCEDURE sales.close() LANGUAGE sql AS 'SELECT 1'",
        "REVOKE EXECUTE ON FUNCTION sales.total(int), sales.total(text) FROM PUBLIC",
        "REVOKE EXECUTE ON PROCEDURE sales.close() FROM PUBLIC",
    )

    def acls() -> Any:
        return ask(
            pg,
            "SELECT md5(string_agg(x, ',' ORDER BY x)) FROM ("
            "SELECT relacl::text AS x FROM pg_class WHERE relacl IS NOT NULL UNION ALL "
            "SELECT proacl::text FROM pg_proc WHERE proacl IS NOT NULL UNION ALL "
            "SELECT nspacl::text FROM pg_namespace UNION ALL "
            "SELECT datacl::text FROM pg_database WHERE datacl IS NOT NULL UNION ALL "
            "SELECT defaclacl::text FROM pg_default_acl) AS a",
        )

    before = acls()
    plan = run_job(env(pg, GRAMMAR), "plan")
    assert plan.code == 0, plan
    assert acls() == before
    run = run_job(env(pg, GRAMMAR))
    assert run.code == 0, run
    assert privileges(run.changes) == privileges(plan.changes)

    def can(fn: str, role: str, obj: str, privilege: str) -> bool:
        return bool(ask(pg, f"SELECT {fn}('{role}', '{obj}', '{privilege}')"))

    assert can("has_database_privilege", "migrator", "postgres", "TEMPORARY")
    assert can("has_schema_privilege", "migrator", "sales", "CREATE")
    for privilege in ("TRUNCATE", "REFERENCES", "TRIGGER", "DELETE"):
        assert can("has_table_privilege", "writer", "sales.orders", privilege)
    assert can("has_sequence_privilege", "writer", "sales.invoice_no", "UPDATE")
    for fn in ("sales.total(int)", "sales.total(text)", "sales.close()"):
        assert can("has_function_privilege", "writer", fn, "EXECUTE")
    # objects: exactly the named ones, every overload of a function, no defaults.
    assert can("has_table_privilege", "auditor", "sales.orders", "SELECT")
    assert not can("has_table_privilege", "auditor", "sales.big", "SELECT")
    assert can("has_function_privilege", "auditor", "sales.total(text)", "EXECUTE")
    assert not can("has_function_privilege", "auditor", "sales.close()", "EXECUTE")
    assert not [h for h in holdings(pg, "auditor") if h[0] == "default"]
    # member_of: granted by the master, with INHERIT (reader may do what auditor may).
    assert memberships(pg, "reader") == {("auditor", MASTER, False)}
    assert can("has_table_privilege", "reader", "sales.orders", "SELECT")

    # What the owner makes later: covered for writer, of every kind; not for auditor.
    as_role(
        pg,
        MASTER,
        "CREATE TABLE sales.later (id bigserial)",
        "CREATE FUNCTION sales.later_fn() RETURNS int LANGUAGE sql AS 'SELECT 1'",
        "REVOKE EXECUTE ON FUNCTION sales.later_fn() FROM PUBLIC",
    )
    assert can("has_table_privilege", "writer", "sales.later", "TRUNCATE")
    assert can("has_sequence_privilege", "writer", "sales.later_id_seq", "UPDATE")
    assert can("has_function_privilege", "writer", "sales.later_fn()", "EXECUTE")
    assert not can("has_table_privilege", "auditor", "sales.later", "SELECT")

    assert run_job(env(pg, GRAMMAR)).changes == []
    verified = run_job(env(pg, GRAMMAR), "verify")
    assert verified.code == 0, verified


def test_maintain_is_granted_from_postgresql_17_and_refused_before(
    pg: localpg.LocalPostgres,
) -> None:
    sales_schema(pg)
    groups = {"vacuumer": [{"schemas": ["sales"], "privileges": {"tables": ["maintain"]}}]}
    run = run_job(env(pg, groups))
    if pg.major >= 17:
        assert run.code == 0, run
        assert ask(pg, "SELECT has_table_privilege('vacuumer', 'sales.orders', 'MAINTAIN')")
    else:
        assert run.code == 2, run
        message = run.result["error"]["message"]
        assert message.startswith("GROUP_ROLES: ") and "MAINTAIN" in message, message
        assert ask(pg, "SELECT count(*) FROM pg_roles WHERE rolname = 'vacuumer'") == 0


def test_a_membership_the_master_cannot_grant_is_a_finding_with_the_statement(
    pg: localpg.LocalPostgres,
) -> None:
    groups = {"analyst": {"member_of": ["pg_read_all_data"], "grants": []}}
    run = run_job(env(pg, groups))
    assert run.code == 0, run
    if pg.major >= 16:
        [finding] = run.result["findings"]
        assert finding["problem"] == "membership_not_granted"
        assert finding["statement"] == "GRANT pg_read_all_data TO analyst WITH INHERIT TRUE"
        assert memberships(pg, "analyst") == set()
        assert run_job(env(pg, groups), "verify").code == 7
    else:  # CREATEROLE grants any role but a superuser's on 15
        assert memberships(pg, "analyst") == {("pg_read_all_data", MASTER, False)}
        assert run_job(env(pg, groups), "verify").code == 0


def test_findings_give_fixes_postgresql_accepts_and_no_empty_fields(
    pg18: localpg.LocalPostgres,
) -> None:
    """A database the master does not own: schema public belongs to pg_database_owner,
    which can have no members; the fix is the statement, as the database's owner."""
    superuser(
        pg18, "CREATE DATABASE foreign_db", f"GRANT CONNECT ON DATABASE foreign_db TO {MASTER}"
    )
    superuser(pg18, "CREATE TABLE public.t (x int)", db="foreign_db")
    groups = {"analyst": [{"database": "foreign_db", "schemas": ["public"], "access": "read"}]}
    run = run_job(env(pg18, groups))
    assert run.code == 0, run
    findings = run.result["findings"]
    assert findings
    text = json.dumps(findings)
    assert "GRANT pg_database_owner" not in text and "null" not in text
    by_object = {o: f for f in findings for o in f["objects"]}
    assert by_object["schema public"]["as"] == "postgres"
    assert by_object["schema public"]["statement"] == "GRANT USAGE ON SCHEMA public TO analyst"
    assert "fix" not in by_object["schema public"]
    assert by_object["table public.t"]["as"] == "postgres"
    verified = run_job(env(pg18, groups), "verify")
    assert verified.code == 7
    assert "null" not in json.dumps(verified.result["findings"])


def test_a_thousand_users_and_five_hundred_tables_are_a_few_dozen_entries(
    pg18: localpg.LocalPostgres,
) -> None:
    as_role(
        pg18,
        MASTER,
        "CREATE SCHEMA app",
        "DO $$BEGIN FOR i IN 1..500 LOOP "
        "EXECUTE format('CREATE TABLE app.t%s (id bigserial)', i); END LOOP; END$$",
    )
    groups = {
        "reader": [{"schemas": ["app"], "access": "read"}],
        "writer": [{"schemas": ["app"], "access": "write"}],
    }
    users = ",".join(f"u{i:04d}:{'reader' if i % 2 else 'writer'}" for i in range(1000))
    plan = run_job(env(pg18, groups, IAM_USERS=users), "plan")
    run = run_job(env(pg18, groups, IAM_USERS=users))
    assert run.code == 0 and plan.code == 0, run
    assert len(run.entries) <= 40, [
        {k: v for k, v in e.items() if k[-1] != "s"} for e in run.entries
    ]
    assert plan.entries == run.entries
    made = {c["role"] for c in run.changes if c["action"] == "create_role"}
    assert made >= {f"u{i:04d}" for i in range(1000)}
    granted = {c["object"] for c in run.changes if c["action"] == "grant_privilege"}
    assert {f"table app.t{i}" for i in range(1, 501)} <= granted
    assert {f"sequence app.t{i}_id_seq" for i in range(1, 501)} <= granted
    # Each entry standing for several changes names them all and counts them.
    for entry in run.entries:
        plural = [k for k in ("roles", "members", "objects") if k in entry]
        assert ("count" in entry) == bool(plural), entry
        if plural:
            assert entry["count"] == len(entry[plural[0]]) > 1
    # verify groups its drift the same way.
    as_role(pg18, MASTER, "REVOKE SELECT ON ALL TABLES IN SCHEMA app FROM reader")
    verified = run_job(env(pg18, groups, IAM_USERS=users), "verify")
    assert verified.code == 7
    [missing] = [f for f in verified.result["findings"] if f["role"] == "reader"]
    assert missing["problem"] == "privilege_missing" and missing["count"] == 500
    assert len(missing["objects"]) == 500
