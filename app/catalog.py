"""What init.sql changed, read from the catalog itself.

A snapshot is taken before and after init.sql inside the same transaction, so the
report is what the database did, not what the script meant to do. Only catalogs the
master user can read on Aurora are used: pg_roles, pg_auth_members, pg_shdescription,
pg_namespace, pg_default_acl, pg_class (never pg_authid).

Both snapshots stay on the server: the first is kept as a text array in a
transaction-local setting, and after init.sql one query returns only the rows that
differ, and only if the transaction wrote anything at all. A catalog of 10,000 users
then costs no transfer and no client memory when nothing changed.
"""

from __future__ import annotations

import json
from typing import Any

import psycopg

from app import users
from app.changelog import ChangeLog

# The users init.sql manages are the members of MANAGED_ROLE; group roles it creates
# carry the comment 'managed by aurora-bootstrap (group role)', so that verify and
# PRUNE, which act on users only, leave them alone. MARKER is the comment earlier
# versions put on users (and groups), followed on users by {"granted": [...]}.
MARKER = "managed by aurora-bootstrap"
MANAGED_ROLE = users.MANAGED_ROLE

# SQL: whether role `p` (a pg_roles row) is a user the job manages: a member of the
# marker role (without ADMIN OPTION: from PostgreSQL 16 the master, its creator, is a
# member with it), or (before the first apply of this version) a role that an earlier
# version marked with its comment, unless that comment is the plain marker on what is
# really a group (named as a role by a listed user, or with a member other than the
# master user). Reads the inputs init.sql reads, bootstrap.iam_users and
# bootstrap.master_user.
_COMMENT_OF_P = (
    "(SELECT d.description FROM pg_shdescription d"
    " WHERE d.objoid = p.oid AND d.classoid = 'pg_authid'::regclass)"
)
MANAGED_USER = (
    "(EXISTS (SELECT FROM pg_auth_members mm JOIN pg_roles mr ON mr.oid = mm.roleid"
    f" WHERE mm.member = p.oid AND mr.rolname = '{MANAGED_ROLE}' AND NOT mm.admin_option)"
    " OR coalesce(" + _COMMENT_OF_P + r" ~ '^managed by aurora-bootstrap( \{.*\})?$'"
    " AND NOT (" + _COMMENT_OF_P + " = 'managed by aurora-bootstrap' AND ("
    " p.rolname IN (SELECT g FROM jsonb_to_recordset("
    "current_setting('bootstrap.iam_users')::jsonb) AS u(roles text[]),"
    " unnest(coalesce(u.roles, '{}')) AS g)"
    " OR EXISTS (SELECT FROM pg_auth_members a WHERE a.roleid = p.oid AND a.member <>"
    " (SELECT m.oid FROM pg_roles m WHERE m.rolname = current_setting('bootstrap.master_user'))"
    "))), false))"
)
# Managed users no longer listed that are still members of rds_iam, with the grantor
# of each membership: after PRUNE, the grants the master could not revoke.
_STILL_IN_RDS_IAM = f"""
SELECT p.rolname, gr.rolname
FROM pg_roles p
JOIN pg_auth_members a ON a.member = p.oid AND a.roleid = 'rds_iam'::regrole
JOIN pg_roles gr ON gr.oid = a.grantor
WHERE {MANAGED_USER}
  AND p.rolname NOT IN (SELECT u.name FROM jsonb_to_recordset(
        current_setting('bootstrap.iam_users')::jsonb) AS u(name text))
ORDER BY 1, 2
"""

Finding = dict[str, object]


def prune_findings(cur: psycopg.Cursor[Any]) -> list[Finding]:
    """rds_iam memberships PRUNE left in place: on PostgreSQL 16+ a grant made by
    another administrator belongs to it, and the master cannot revoke it."""
    cur.execute(_STILL_IN_RDS_IAM)
    return [
        {"role": name, "problem": "rds_iam_not_revoked", "grantor": grantor}
        for name, grantor in cur.fetchall()
    ]


# The snapshot: one text row per catalog entry, by oid, which is far cheaper to build
# than names or JSON (pg_get_userbyid and jsonb per row tripled its cost at 10,000
# users); names are looked up only for the rows that differ.
# Roles: r:OID:LOGIN:MD5(COMMENT):NAME (the name last: it may hold any character).
# PostgreSQL's own pg_* roles are left out.
_ROLES = """
SELECT 'r:' || r.oid || ':' || r.rolcanlogin::int || ':' ||
       coalesce(md5((SELECT d.description FROM pg_shdescription d
                     WHERE d.objoid = r.oid AND d.classoid = 'pg_authid'::regclass)), '')
       || ':' || r.rolname
FROM pg_roles r
WHERE r.rolname !~ '^pg_'
"""
# Memberships with their grantor (from PostgreSQL 16 a membership belongs to it):
# m:ROLE:MEMBER:GRANTOR:ADMIN, by oid.
_MEMBERSHIPS = """
SELECT 'm:' || a.roleid || ':' || a.member || ':' || a.grantor || ':' || a.admin_option::int
FROM pg_auth_members a
"""
# Privileges, summarised per schema, object kind, grantee and privilege, so that a
# schema of many tables costs one row per kind, not one per table: p:JSON.
_PRIVILEGES = """
SELECT 'p:' || jsonb_build_array(object, grantee, privilege, count(*))::text
FROM (
    SELECT 'schema ' || n.nspname AS object, coalesce(g.rolname, 'PUBLIC') AS grantee,
           a.privilege_type AS privilege
    FROM pg_namespace n CROSS JOIN LATERAL aclexplode(n.nspacl) a
    LEFT JOIN pg_roles g ON g.oid = a.grantee
    WHERE n.nspname !~ '^pg_' AND n.nspname <> 'information_schema'
    UNION ALL
    SELECT 'default privileges on ' || CASE d.defaclobjtype
             WHEN 'r' THEN 'tables' WHEN 'S' THEN 'sequences' WHEN 'f' THEN 'functions'
             WHEN 'T' THEN 'types' WHEN 'n' THEN 'schemas' END
           || coalesce(' in schema ' || n.nspname, '') || ' for ' || o.rolname,
           coalesce(g.rolname, 'PUBLIC'), a.privilege_type
    FROM pg_default_acl d CROSS JOIN LATERAL aclexplode(d.defaclacl) a
    JOIN pg_roles o ON o.oid = d.defaclrole
    LEFT JOIN pg_namespace n ON n.oid = d.defaclnamespace
    LEFT JOIN pg_roles g ON g.oid = a.grantee
    UNION ALL
    SELECT CASE c.relkind WHEN 'S' THEN 'sequences' ELSE 'tables' END
           || ' in schema ' || n.nspname,
           coalesce(g.rolname, 'PUBLIC'), a.privilege_type
    FROM pg_class c CROSS JOIN LATERAL aclexplode(c.relacl) a
    JOIN pg_namespace n ON n.oid = c.relnamespace
    LEFT JOIN pg_roles g ON g.oid = a.grantee
    WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S')
      AND n.nspname !~ '^pg_' AND n.nspname <> 'information_schema'
) AS acl
GROUP BY object, grantee, privilege
"""
_COMMENT_OF_A = (
    "(SELECT cd.description FROM pg_shdescription cd"
    " WHERE cd.objoid = a.oid AND cd.classoid = 'pg_authid'::regclass)"
)
_SNAPSHOT = f"ARRAY({_ROLES} UNION ALL {_MEMBERSHIPS} UNION ALL {_PRIVILEGES})"
_REMEMBER = f"SELECT set_config('bootstrap.snapshot', ({_SNAPSHOT})::text, true) IS NULL"
# The catalog's fingerprint: its row count and the sum of its rows' hashes, so that
# the order rows come in does not matter.
_FINGERPRINT_OF = "count(*) || ':' || coalesce(sum(hashtextextended(e, 0)), 0)"
_FINGERPRINT = f"SELECT {_FINGERPRINT_OF} FROM unnest({_SNAPSHOT}) AS e"
# The changes since remember(), computed on the server and sent in their final order as
# one JSON object per row (streamed with COPY: one round trip, no result set held in
# memory on either side), the first row being the catalog's fingerprint now. A
# transaction that has written nothing (no transaction id assigned: init.sql only
# read) has changed nothing: then the query is not even sent.
# Roles are matched by name, memberships by (role, member, grantor), privileges by
# (object, grantee, privilege); names come from the catalog, or for a role dropped in
# this run from its own snapshot row.
_CHANGES = f"""
WITH was AS (SELECT unnest(current_setting('bootstrap.snapshot')::text[]) AS e),
     now AS MATERIALIZED (SELECT unnest({_SNAPSHOT}) AS e),
     d AS MATERIALIZED (
         (SELECT 'a'::text AS side, e FROM now EXCEPT ALL SELECT 'a', e FROM was)
         UNION ALL
         (SELECT 'b', e FROM was EXCEPT ALL SELECT 'b', e FROM now)),
     r AS MATERIALIZED (
         SELECT side, split_part(e, ':', 2)::oid AS oid, split_part(e, ':', 3) = '1' AS login,
                split_part(e, ':', 4) AS digest,
                substr(e, length(substring(e FROM '^r:[^:]*:[^:]*:[^:]*:')) + 1) AS name
         FROM d WHERE left(e, 2) = 'r:'),
     gone AS (SELECT DISTINCT ON (oid) oid, name FROM r WHERE side = 'b'),
     named AS (
         SELECT x.side, coalesce(g1.rolname, o1.name) AS role,
                coalesce(g2.rolname, o2.name) AS member,
                coalesce(g3.rolname, o3.name) AS grantor, x.f[5] = '1' AS admin
         FROM (SELECT side, string_to_array(e, ':') AS f FROM d WHERE left(e, 2) = 'm:') AS x
         LEFT JOIN pg_roles g1 ON g1.oid = x.f[2]::oid LEFT JOIN gone o1 ON o1.oid = x.f[2]::oid
         LEFT JOIN pg_roles g2 ON g2.oid = x.f[3]::oid LEFT JOIN gone o2 ON o2.oid = x.f[3]::oid
         LEFT JOIN pg_roles g3 ON g3.oid = x.f[4]::oid LEFT JOIN gone o3 ON o3.oid = x.f[4]::oid),
     -- Each membership with the fields its change reports.
     m AS MATERIALIZED (
         SELECT n.*, jsonb_build_object('role', n.role, 'member', n.member,
                                        'grantor', n.grantor)
                     || CASE WHEN n.admin THEN '{{"admin_option": true}}'::jsonb
                             ELSE '{{}}' END AS fields
         FROM named AS n),
     ra AS MATERIALIZED (SELECT * FROM r WHERE side = 'a'),
     rb AS MATERIALIZED (SELECT * FROM r WHERE side = 'b'),
     ma AS MATERIALIZED (SELECT * FROM m WHERE side = 'a'),
     mb AS MATERIALIZED (SELECT * FROM m WHERE side = 'b'),
     ch(part, k1, k2, k3, k4, c) AS (
         SELECT 1, a.name, '', '', 0,
                jsonb_build_object('action', 'create_role', 'role', a.name, 'login', a.login)
         FROM ra a WHERE NOT EXISTS (SELECT FROM rb b WHERE b.name = a.name)
         UNION ALL
         SELECT 1, a.name, '', '', 1,
                jsonb_build_object('action', 'comment', 'role', a.name, 'comment',
                                   {_COMMENT_OF_A})
         FROM ra a WHERE a.digest <> '' AND NOT EXISTS (SELECT FROM rb b WHERE b.name = a.name)
         UNION ALL
         SELECT 2, b.name, '', '', 0, jsonb_build_object('action', 'drop_role', 'role', b.name)
         FROM rb b WHERE NOT EXISTS (SELECT FROM ra a WHERE a.name = b.name)
         UNION ALL
         SELECT 3, a.name, '', '', 0,
                jsonb_build_object('action', 'alter_role', 'role', a.name, 'login', a.login)
         FROM ra a JOIN rb b ON b.name = a.name WHERE a.login <> b.login
         UNION ALL
         SELECT 3, a.name, '', '', 1,
                jsonb_build_object('action', 'comment', 'role', a.name, 'comment',
                                   {_COMMENT_OF_A})
         FROM ra a JOIN rb b ON b.name = a.name WHERE a.digest <> b.digest
         UNION ALL
         SELECT 4, a.role, a.member, a.grantor, 0, '{{"action": "grant"}}'::jsonb || a.fields
         FROM ma a
         WHERE NOT EXISTS (SELECT FROM mb b WHERE (b.role, b.member, b.grantor)
                                                  = (a.role, a.member, a.grantor))
         UNION ALL
         SELECT 5, b.role, b.member, b.grantor, 0, '{{"action": "revoke"}}'::jsonb || b.fields
         FROM mb b
         WHERE NOT EXISTS (SELECT FROM ma a WHERE (b.role, b.member, b.grantor)
                                                  = (a.role, a.member, a.grantor))
         UNION ALL
         SELECT 6, a.role, a.member, a.grantor, 0, '{{"action": "grant"}}'::jsonb || a.fields
         FROM ma a JOIN mb b ON (b.role, b.member, b.grantor) = (a.role, a.member, a.grantor)
         WHERE a.admin <> b.admin
         UNION ALL
         SELECT 7, q.object, q.grantee, q.privilege, 0,
                jsonb_build_object('action', CASE WHEN q.delta > 0 THEN 'grant_privilege'
                                                  ELSE 'revoke_privilege' END,
                                   'object', q.object, 'role', q.grantee,
                                   'privilege', q.privilege, 'count', abs(q.delta))
         FROM (SELECT j ->> 0 AS object, j ->> 1 AS grantee, j ->> 2 AS privilege,
                      sum(CASE side WHEN 'a' THEN (j ->> 3)::int ELSE -(j ->> 3)::int END)
                          AS delta
               FROM (SELECT side, substr(e, 3)::jsonb AS j FROM d WHERE left(e, 2) = 'p:') AS p
               GROUP BY 1, 2, 3) AS q
         WHERE q.delta <> 0
         UNION ALL
         -- Users made by hand that the job now manages: new members of the marker role
         -- (without ADMIN OPTION, which is its creator's), not created in this run and
         -- not marked by an earlier version.
         SELECT 8, a.member, '', '', 0, jsonb_build_object('action', 'adopt', 'role', a.member)
         FROM ma a JOIN pg_roles u ON u.rolname = a.member
         WHERE a.role = '{MANAGED_ROLE}' AND NOT a.admin
           AND NOT EXISTS (SELECT FROM mb b WHERE (b.role, b.member) = (a.role, a.member))
           AND (EXISTS (SELECT FROM rb WHERE rb.name = a.member)
                OR NOT EXISTS (SELECT FROM ra WHERE ra.name = a.member))
           AND coalesce((SELECT dd.description FROM pg_shdescription dd
                         WHERE dd.objoid = u.oid AND dd.classoid = 'pg_authid'::regclass), '')
               !~ '^managed by aurora-bootstrap( |$)')
SELECT c::text FROM (
    SELECT 0 AS part, '' AS k1, '' AS k2, '' AS k3, 0 AS k4,
           jsonb_build_object('fingerprint', (SELECT {_FINGERPRINT_OF} FROM now)) AS c
    UNION ALL
    SELECT * FROM ch) AS x
ORDER BY part, k1 COLLATE "C", k2 COLLATE "C", k3 COLLATE "C", k4
"""


def remember(cur: psycopg.Cursor[Any]) -> None:
    """Keep a snapshot of the catalog on the server, for changes() to compare with."""
    cur.execute(_REMEMBER)


def fingerprint(cur: psycopg.Cursor[Any]) -> str:
    """The catalog's fingerprint now, as changes() gives it after a change."""
    cur.execute(_FINGERPRINT)
    row = cur.fetchone()
    return str(row[0]) if row is not None else ""


def changes(cur: psycopg.Cursor[Any]) -> tuple[ChangeLog, str]:
    """What changed since remember(), in the same transaction, and the fingerprint of
    the catalog as it is now ("" when the transaction has written nothing)."""
    found = ChangeLog()
    fingerprint = ""
    # A question the size of a line first: planning the report's query alone costs
    # more than a no-op run's whole report should.
    cur.execute("SELECT pg_current_xact_id_if_assigned() IS NOT NULL")
    if not (row := cur.fetchone()) or not row[0]:
        return found, fingerprint
    with cur.copy(f"COPY ({_CHANGES}) TO STDOUT") as copy:
        for (text,) in copy.rows():
            if not fingerprint:
                fingerprint = str(json.loads(text)["fingerprint"])
            else:
                found.add_json(text)
    return found, fingerprint
