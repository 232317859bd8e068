"""What init.sql changed, read from the catalog itself.

A snapshot is taken before and after init.sql inside the same transaction, so the
report is what the database did, not what the script meant to do. The same snapshot
gives the fingerprint that confirms a COMMIT whose reply was lost, so the report and
that check see the same changes. Only catalogs the master user can read on Aurora are
used: pg_roles, pg_auth_members, pg_shdescription and the catalogs of objects with
privileges (never pg_authid).

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
# SQL: role `p` is not one of the users listed in bootstrap.iam_users.
UNLISTED = (
    "p.rolname NOT IN (SELECT u.name FROM jsonb_to_recordset("
    "current_setting('bootstrap.iam_users')::jsonb) AS u(name text))"
)
# Managed users no longer listed that are still members of rds_iam, with the grantor
# of each membership: after PRUNE, the grants the master could not revoke.
_STILL_IN_RDS_IAM = f"""
SELECT p.rolname, gr.rolname
FROM pg_roles p
JOIN pg_auth_members a ON a.member = p.oid AND a.roleid = 'rds_iam'::regrole
JOIN pg_roles gr ON gr.oid = a.grantor
WHERE {MANAGED_USER}
  AND {UNLISTED}
ORDER BY 1, 2
"""

Finding = dict[str, object]


# Managed users no longer listed that can still log in after PRUNE: from PostgreSQL 16
# only a role holding ADMIN OPTION on a user may alter it, and the master holds none
# on a user another administrator made.
_STILL_LOGIN = f"""
SELECT p.rolname,
       format('GRANT %I TO %I WITH ADMIN OPTION', p.rolname,
              current_setting('bootstrap.master_user'))
FROM pg_roles p
WHERE {MANAGED_USER} AND p.rolcanlogin
  AND {UNLISTED}
  AND p.rolname NOT IN (current_setting('bootstrap.master_user'), session_user, current_user)
ORDER BY 1
"""


def prune_findings(cur: psycopg.Cursor[Any]) -> list[Finding]:
    """What PRUNE left in place: on PostgreSQL 16+ an rds_iam grant made by another
    administrator belongs to it, and a user another administrator made can be altered
    only by a role holding ADMIN OPTION on it."""
    cur.execute(_STILL_IN_RDS_IAM)
    found: list[Finding] = [
        {"role": name, "problem": "rds_iam_not_revoked", "grantor": grantor}
        for name, grantor in cur.fetchall()
    ]
    cur.execute(_STILL_LOGIN)
    found += [
        {
            "role": name,
            "problem": "login_not_revoked",
            "fix": f"as a superuser or the role's creator: {fix}; then run PRUNE again",
        }
        for name, fix in cur.fetchall()
    ]
    return found


# The snapshot: one text row per catalog entry, by oid, which is far cheaper to build
# than names or JSON (pg_get_userbyid and jsonb per row tripled its cost at 10,000
# users); names are looked up only for the rows that differ. It holds every attribute
# the change report and the commit fingerprint depend on, so that the two cannot
# disagree about what changed.
#
# Roles: r:OID:LOGIN:FLAGS:CONNLIMIT:VALIDUNTIL:MD5(CONFIG):MD5(COMMENT):NAME, FLAGS
# being superuser, inherit, createrole, createdb, replication, bypassrls as 0/1, the
# name last (it may hold any character). PostgreSQL's own pg_* roles are left out.
_ROLES = """
SELECT 'r:' || r.oid || ':' || r.rolcanlogin::int || ':' ||
       r.rolsuper::int || r.rolinherit::int || r.rolcreaterole::int || r.rolcreatedb::int
       || r.rolreplication::int || r.rolbypassrls::int || ':' || r.rolconnlimit || ':' ||
       coalesce(extract(epoch FROM r.rolvaliduntil)::text, '') || ':' ||
       coalesce(md5(r.rolconfig::text), '') || ':' ||
       coalesce(md5((SELECT d.description FROM pg_shdescription d
                     WHERE d.objoid = r.oid AND d.classoid = 'pg_authid'::regclass)), '')
       || ':' || r.rolname
FROM pg_roles r
WHERE r.rolname !~ '^pg_'
"""
_ROLE_ATTRIBUTES = (
    # (position in FLAGS, name in the report)
    (1, "superuser"),
    (2, "inherit"),
    (3, "createrole"),
    (4, "createdb"),
    (5, "replication"),
    (6, "bypassrls"),
)
# Memberships with their grantor (from PostgreSQL 16 a membership belongs to it) and
# options: m:ROLE:MEMBER:GRANTOR:ADMIN, and from 16 :INHERIT:SET, by oid.
_MEMBERSHIPS = (
    "SELECT 'm:' || a.roleid || ':' || a.member || ':' || a.grantor || ':' || a.admin_option::int"
)
_MEMBERSHIP_OPTIONS_16 = " || ':' || a.inherit_option::int || ':' || a.set_option::int"
# Privileges, one row per object whose ACL is not the default: a:CLASS:OID:KIND:OWNER:ACL,
# KIND being the object type acldefault() takes ('E', its object type and the
# schema's oid for a schema's default
# privileges, whose default is none). An object with no row has its owner's implicit
# privileges (acldefault), which is what the diff compares a missing row with: the
# first GRANT on a table writes its owner's privileges out, and changes none of them.
# Objects in these schemas are PostgreSQL's own: {0} is the pg_namespace row.
_USER_SCHEMA = "NOT ({0}.nspname ~ '^pg_' OR {0}.nspname = 'information_schema')"
# The fixed oids of the system catalogs (pg_class.oid of each): constants in every
# PostgreSQL version, spelt as numbers so that the snapshot parses no regclass.
_ACL_SOURCES = (
    # (catalog, its oid, kind, owner, acl, join, condition)
    ("pg_database", 1262, "'d'", "x.datdba", "x.datacl", "", ""),
    ("pg_tablespace", 1213, "'t'", "x.spcowner", "x.spcacl", "", ""),
    ("pg_namespace", 2615, "'n'", "x.nspowner", "x.nspacl", "", _USER_SCHEMA.format("x")),
    (
        "pg_class",
        1259,
        "CASE x.relkind WHEN 'S' THEN 's' ELSE 'r' END",
        "x.relowner",
        "x.relacl",
        "JOIN pg_namespace n ON n.oid = x.relnamespace",
        "x.relkind IN ('r', 'p', 'v', 'm', 'f', 'S') AND " + _USER_SCHEMA.format("n"),
    ),
    (
        "pg_proc",
        1255,
        "'f'",
        "x.proowner",
        "x.proacl",
        "JOIN pg_namespace n ON n.oid = x.pronamespace",
        _USER_SCHEMA.format("n"),
    ),
    (
        "pg_type",
        1247,
        "'T'",
        "x.typowner",
        "x.typacl",
        "JOIN pg_namespace n ON n.oid = x.typnamespace",
        _USER_SCHEMA.format("n"),
    ),
    ("pg_language", 2612, "'l'", "x.lanowner", "x.lanacl", "", ""),
    ("pg_foreign_data_wrapper", 2328, "'F'", "x.fdwowner", "x.fdwacl", "", ""),
    ("pg_foreign_server", 1417, "'S'", "x.srvowner", "x.srvacl", "", ""),
    (
        "pg_default_acl",
        826,
        "CASE WHEN x.defaclnamespace <> 0"
        " THEN 'E' || x.defaclobjtype::text || x.defaclnamespace::text"
        " WHEN x.defaclobjtype = 'S' THEN 's'"
        " ELSE x.defaclobjtype::text END",
        "x.defaclrole",
        "x.defaclacl",
        "",
        "",
    ),
)


def _acl_rows() -> str:
    return "\nUNION ALL\n".join(
        f"SELECT 'a:' || {oid} || ':' || x.oid || ':' || {kind} || ':' || {owner} || ':' ||"
        f" {acl}::text FROM {table} x {join}"
        f" WHERE {condition + ' AND ' if condition else ''}{acl} IS NOT NULL"
        for table, oid, kind, owner, acl, join, condition in _ACL_SOURCES
    )


# Object types whose privileges are the cluster's, not one database's.
_SHARED = (1262, 1213)
# The privilege letters of an ACL item, as PostgreSQL prints them.
_PRIVILEGE_LETTERS = (
    "('r', 'SELECT'), ('a', 'INSERT'), ('w', 'UPDATE'), ('d', 'DELETE'), ('D', 'TRUNCATE'),"
    " ('x', 'REFERENCES'), ('t', 'TRIGGER'), ('m', 'MAINTAIN'), ('X', 'EXECUTE'),"
    " ('U', 'USAGE'), ('C', 'CREATE'), ('c', 'CONNECT'), ('T', 'TEMPORARY'), ('s', 'SET'),"
    " ('A', 'ALTER SYSTEM')"
)
_COMMENT_OF_A = (
    "(SELECT cd.description FROM pg_shdescription cd"
    " WHERE cd.objoid = a.oid AND cd.classoid = 'pg_authid'::regclass)"
)
# The catalog's fingerprint: its row count and the sum of its rows' hashes, so that
# the order rows come in does not matter.
_FINGERPRINT_OF = "count(*) || ':' || coalesce(sum(hashtextextended(e, 0)), 0)"
# A role name in an ACL item, as PostgreSQL prints it: quoted where it must be.
_UNQUOTE = (
    "CASE WHEN left({0}, 1) = '\"'"
    " THEN replace(substr({0}, 2, length({0}) - 2), '\"\"', '\"') ELSE {0} END"
)


# Changes per row of the report's result: one JSON object a line. Sent in blocks, the
# 40,000 changes of 10,000 new users cost the client 40 rows to read, not 40,000.
_BLOCK = 1000


def _changes_sql(snapshot: str) -> str:
    """The changes since remember(), computed on the server and sent in their final
    order, in blocks of lines of one JSON object each (the result set stays small: a
    block holds about 100 KB), the first line being the catalog's fingerprint now.
    Roles are matched by name, memberships by (role, member, grantor), privileges by
    (object, grantee, grantor, privilege, grant option); names come from the catalog,
    or for a role dropped in this run from its own snapshot row."""
    attributes = "\n         UNION ALL\n".join(
        f"""         SELECT 3, a.name, '{name}', '', 0,
                jsonb_build_object('action', 'alter_role', 'role', a.name, '{name}',
                                   substr(a.flags, {pos}, 1) = '1')
         FROM rr a
         WHERE a.in_a AND a.in_b AND substr(a.flags, {pos}, 1) <> substr(a.b_flags, {pos}, 1)"""
        for pos, name in _ROLE_ATTRIBUTES
    )
    options = "\n         UNION ALL\n".join(
        f"""         SELECT 6, a.role, a.member, a.grantor, {k},
                jsonb_build_object('action', CASE WHEN a.{option} = '1' THEN 'grant'
                                                  ELSE 'revoke' END,
                                   'role', a.role, 'member', a.member, 'grantor', a.grantor,
                                   'option', '{option}')
         FROM mm a
         WHERE a.in_a AND a.in_b AND a.{option} IS DISTINCT FROM a.b_{option}"""
        for k, option in ((5, "admin"), (6, "inherit"), (7, "set"))
    )
    grantee, grantor = _UNQUOTE.format("p.m[1]"), _UNQUOTE.format("p.m[3]")
    return f"""
WITH was AS (SELECT unnest(current_setting('bootstrap.snapshot')::text[]) AS e),
     now AS MATERIALIZED (SELECT unnest({snapshot}) AS e),
     d AS MATERIALIZED (
         (SELECT 'a'::text AS side, e FROM now EXCEPT ALL SELECT 'a', e FROM was)
         UNION ALL
         (SELECT 'b', e FROM was EXCEPT ALL SELECT 'b', e FROM now)),
     r AS MATERIALIZED (
         SELECT side, f[2]::oid AS oid, f[3] = '1' AS login, f[4] AS flags,
                f[5]::int AS connlimit, f[6] AS valid_until, f[7] AS config,
                -- The name is what follows the first eight fields, none of which
                -- holds a colon.
                f[8] AS digest,
                substr(e, length(f[2]) + length(f[3]) + length(f[4]) + length(f[5])
                          + length(f[6]) + length(f[7]) + length(f[8]) + 10) AS name
         FROM (SELECT side, e, string_to_array(e, ':') AS f FROM d WHERE left(e, 2) = 'r:') AS x),
     -- Roles dropped in this run, named from their snapshot row; the others by the
     -- catalog's cache (pg_get_userbyid), which is far cheaper than joining pg_roles.
     gone AS (
         SELECT DISTINCT ON (oid) oid, name FROM r
         WHERE side = 'b' AND NOT EXISTS (SELECT FROM pg_roles p WHERE p.oid = r.oid)),
     named AS (
         SELECT x.side, coalesce(o1.name, pg_get_userbyid(x.f[2]::oid)) AS role,
                coalesce(o2.name, pg_get_userbyid(x.f[3]::oid)) AS member,
                coalesce(o3.name, pg_get_userbyid(x.f[4]::oid)) AS grantor, x.f
         FROM (SELECT side, string_to_array(e, ':') AS f FROM d WHERE left(e, 2) = 'm:') AS x
         LEFT JOIN gone o1 ON o1.oid = x.f[2]::oid
         LEFT JOIN gone o2 ON o2.oid = x.f[3]::oid
         LEFT JOIN gone o3 ON o3.oid = x.f[4]::oid),
     -- Each membership with the fields its grant or revoke reports: the options that
     -- are not their default.
     m AS MATERIALIZED (
         SELECT n.*, jsonb_build_object('role', n.role, 'member', n.member,
                                        'grantor', n.grantor)
                     || CASE WHEN n.f[5] = '1' THEN '{{"admin_option": true}}'::jsonb
                             ELSE '{{}}' END
                     || CASE WHEN n.f[6] = '0' THEN '{{"inherit_option": false}}'::jsonb
                             ELSE '{{}}' END
                     || CASE WHEN n.f[7] = '0' THEN '{{"set_option": false}}'::jsonb
                             ELSE '{{}}' END AS fields
         FROM named AS n),
     -- Each role, and each membership, with its row on either side: the report reads
     -- both sides from one row and never joins them (the planner, guessing at one row
     -- a side, joined them in nested loops: retiring 8,000 users took 100 s).
     rr AS MATERIALIZED (
         SELECT name, bool_or(side = 'a') AS in_a, bool_or(side = 'b') AS in_b,
                (array_agg(oid) FILTER (WHERE side = 'a'))[1] AS oid,
                bool_or(login) FILTER (WHERE side = 'a') AS login,
                bool_or(login) FILTER (WHERE side = 'b') AS b_login,
                max(flags) FILTER (WHERE side = 'a') AS flags,
                max(flags) FILTER (WHERE side = 'b') AS b_flags,
                max(connlimit) FILTER (WHERE side = 'a') AS connlimit,
                max(connlimit) FILTER (WHERE side = 'b') AS b_connlimit,
                max(valid_until) FILTER (WHERE side = 'a') AS valid_until,
                max(valid_until) FILTER (WHERE side = 'b') AS b_valid_until,
                max(config) FILTER (WHERE side = 'a') AS config,
                max(config) FILTER (WHERE side = 'b') AS b_config,
                max(digest) FILTER (WHERE side = 'a') AS digest,
                max(digest) FILTER (WHERE side = 'b') AS b_digest
         FROM r GROUP BY name),
     mm AS MATERIALIZED (
         SELECT role, member, grantor, bool_or(side = 'a') AS in_a, bool_or(side = 'b') AS in_b,
                max(f[5]) FILTER (WHERE side = 'a') AS admin,
                max(f[5]) FILTER (WHERE side = 'b') AS b_admin,
                max(f[6]) FILTER (WHERE side = 'a') AS inherit,
                max(f[6]) FILTER (WHERE side = 'b') AS b_inherit,
                max(f[7]) FILTER (WHERE side = 'a') AS set,
                max(f[7]) FILTER (WHERE side = 'b') AS b_set,
                (array_agg(fields) FILTER (WHERE side = 'a'))[1] AS fields,
                (array_agg(fields) FILTER (WHERE side = 'b'))[1] AS b_fields
         FROM m GROUP BY role, member, grantor),
     -- Privileges: for each object whose row differs, its ACL items before and after,
     -- a missing row standing for the object's default; then the items that differ,
     -- taken apart into one row per privilege (and one more where it is grantable).
     acl AS MATERIALIZED (
         SELECT side, f[1]::oid AS classid, f[2]::oid AS objid, f[3] AS kind,
                f[4]::oid AS owner, f[5] AS items
         -- The first four fields hold no colon: split, which costs a fraction of a
         -- regular expression per row; the ACL is the rest.
         FROM (SELECT side, ARRAY[split_part(e, ':', 2), split_part(e, ':', 3),
                                  split_part(e, ':', 4), split_part(e, ':', 5),
                                  substr(e, length(split_part(e, ':', 2))
                                            + length(split_part(e, ':', 3))
                                            + length(split_part(e, ':', 4))
                                            + length(split_part(e, ':', 5)) + 7)] AS f
               FROM d WHERE left(e, 2) = 'a:') AS x),
     -- Each object's row before and after, by grouping: a join of the two sides
     -- would be planned as a nested loop over CTEs the planner guesses at one row.
     sides AS MATERIALIZED (
         SELECT classid, objid,
                (array_agg(items) FILTER (WHERE side = 'b'))[1] AS before,
                (array_agg(items) FILTER (WHERE side = 'a'))[1] AS after,
                (array_agg(kind) FILTER (WHERE side = 'b'))[1] AS bkind,
                (array_agg(kind ORDER BY side))[1] AS kind,
                (array_agg(owner ORDER BY side))[1] AS owner
         FROM acl
         GROUP BY classid, objid),
     objects AS MATERIALIZED (
         SELECT o.classid, o.objid, o.before, o.after, o.kind, o.owner,
                -- A schema's default privileges all revoked leave no row to name: named
                -- from the snapshot's, as pg_identify_object names one.
                coalesce(i.type, CASE WHEN o.bkind LIKE 'E%' THEN 'default acl' END) AS id_type,
                coalesce(i.identity, CASE WHEN o.after IS NULL AND o.bkind LIKE 'E%' THEN
                    format('for role %s in schema %s on %s',
                           quote_ident(pg_get_userbyid(o.owner)),
                           (SELECT quote_ident(n.nspname) FROM pg_namespace n
                            WHERE n.oid = substr(o.bkind, 3)::oid),
                           CASE substr(o.bkind, 2, 1) WHEN 'r' THEN 'tables'
                                WHEN 'S' THEN 'sequences' WHEN 'f' THEN 'functions'
                                WHEN 'T' THEN 'types' ELSE 'schemas' END) END) AS identity
         FROM sides AS o
         CROSS JOIN LATERAL pg_identify_object(o.classid, o.objid, 0) AS i),
     items AS (
         SELECT o.classid, o.objid, s.side, i.item
         FROM objects o
         CROSS JOIN LATERAL (VALUES ('b', o.before), ('a', o.after)) AS s(side, items)
         CROSS JOIN LATERAL unnest(coalesce(s.items, CASE WHEN o.kind LIKE 'E%' THEN '{{}}'
                 ELSE acldefault(o.kind::"char", o.owner)::text END)::text[]) AS i(item)
         WHERE o.identity IS NOT NULL),  -- not dropped in this run
     changed AS (
         (SELECT classid, objid, 'a' AS side, item FROM items WHERE side = 'a'
          EXCEPT SELECT classid, objid, 'a', item FROM items WHERE side = 'b')
         UNION ALL
         (SELECT classid, objid, 'b', item FROM items WHERE side = 'b'
          EXCEPT SELECT classid, objid, 'b', item FROM items WHERE side = 'a')),
     letters AS (
         SELECT c.classid, c.objid, c.side,
                {grantee} AS grantee, {grantor} AS grantor,
                substr(p.m[2], g.i, 1) AS letter, w.grantable
         FROM changed c
         -- grantee=privileges/grantor, split where no name is quoted (no '"'), and
         -- read with the regular expression where one is (and may hold = or /).
         CROSS JOIN LATERAL (SELECT CASE WHEN strpos(c.item, '"') = 0
                 THEN ARRAY[split_part(c.item, '=', 1),
                            split_part(split_part(c.item, '=', 2), '/', 1),
                            split_part(c.item, '/', 2)]
                 ELSE regexp_match(c.item,
                          '^((?:"(?:[^"]|"")*"|[^="])*)=([A-Za-z*]*)/(.*)$') END AS m) AS p
         CROSS JOIN LATERAL generate_series(1, length(p.m[2])) AS g(i)
         CROSS JOIN LATERAL (VALUES (false), (true)) AS w(grantable)
         WHERE substr(p.m[2], g.i, 1) <> '*'
           AND (NOT w.grantable OR substr(p.m[2], g.i + 1, 1) = '*')),
     privileges AS (
         SELECT q.classid, q.objid, q.grantee, q.grantor, q.grantable, q.granted,
                jsonb_agg(v.name ORDER BY v.name) AS names
         FROM (SELECT classid, objid, grantee, grantor, letter, grantable,
                      count(*) FILTER (WHERE side = 'a') > count(*) FILTER (WHERE side = 'b')
                          AS granted
               FROM letters
               GROUP BY 1, 2, 3, 4, 5, 6
               HAVING count(*) FILTER (WHERE side = 'a')
                      <> count(*) FILTER (WHERE side = 'b')) AS q
         JOIN (VALUES {_PRIVILEGE_LETTERS}) AS v(letter, name) ON v.letter = q.letter
         GROUP BY 1, 2, 3, 4, 5, 6),
     ch(part, k1, k2, k3, k4, c) AS (
         SELECT 1, a.name, '', '', 0,
                jsonb_build_object('action', 'create_role', 'role', a.name, 'login', a.login)
         FROM rr a WHERE a.in_a AND NOT a.in_b
         UNION ALL
         SELECT 1, a.name, '', '', 1,
                jsonb_build_object('action', 'comment', 'role', a.name, 'comment',
                                   {_COMMENT_OF_A})
         FROM rr a WHERE a.in_a AND NOT a.in_b AND a.digest <> ''
         UNION ALL
         SELECT 2, a.name, '', '', 0, jsonb_build_object('action', 'drop_role', 'role', a.name)
         FROM rr a WHERE a.in_b AND NOT a.in_a
         UNION ALL
         SELECT 3, a.name, 'login', '', 0,
                jsonb_build_object('action', 'alter_role', 'role', a.name, 'login', a.login)
         FROM rr a WHERE a.in_a AND a.in_b AND a.login <> a.b_login
         UNION ALL
         SELECT 3, a.name, 'connection_limit', '', 0,
                jsonb_build_object('action', 'alter_role', 'role', a.name,
                                   'connection_limit', a.connlimit)
         FROM rr a WHERE a.in_a AND a.in_b AND a.connlimit <> a.b_connlimit
         UNION ALL
         SELECT 3, a.name, 'valid_until', '', 0,
                jsonb_build_object('action', 'alter_role', 'role', a.name, 'valid_until',
                                   (SELECT p.rolvaliduntil FROM pg_roles p WHERE p.oid = a.oid))
         FROM rr a WHERE a.in_a AND a.in_b AND a.valid_until <> a.b_valid_until
         UNION ALL
         SELECT 3, a.name, 'settings', '', 0,
                jsonb_build_object('action', 'alter_role', 'role', a.name, 'settings',
                                   (SELECT to_jsonb(p.rolconfig) FROM pg_roles p
                                    WHERE p.oid = a.oid))
         FROM rr a WHERE a.in_a AND a.in_b AND a.config <> a.b_config
         UNION ALL
{attributes}
         UNION ALL
         SELECT 3, a.name, '~comment', '', 1,
                jsonb_build_object('action', 'comment', 'role', a.name, 'comment',
                                   {_COMMENT_OF_A})
         FROM rr a WHERE a.in_a AND a.in_b AND a.digest <> a.b_digest
         UNION ALL
         SELECT 4, a.role, a.member, a.grantor, 0, '{{"action": "grant"}}'::jsonb || a.fields
         FROM mm a WHERE a.in_a AND NOT a.in_b
         UNION ALL
         SELECT 5, a.role, a.member, a.grantor, 0, '{{"action": "revoke"}}'::jsonb || a.b_fields
         FROM mm a WHERE a.in_b AND NOT a.in_a
         UNION ALL
{options}
         UNION ALL
         SELECT 7, o.id_type || ' ' || o.identity, p.grantee,
                p.grantor || CASE WHEN p.granted THEN '+' ELSE '-' END, p.grantable::int,
                jsonb_strip_nulls(jsonb_build_object(
                    'action', CASE WHEN p.granted THEN 'grant_privilege'
                                   ELSE 'revoke_privilege' END,
                    'database', CASE WHEN o.classid = {_SHARED[0]} THEN o.identity
                                     WHEN o.classid = {_SHARED[1]} THEN NULL
                                     ELSE current_database() END,
                    'object', o.id_type || ' ' || o.identity,
                    'role', coalesce(nullif(p.grantee, ''), 'PUBLIC'),
                    'privileges', p.names, 'grantor', p.grantor,
                    'grant_option', CASE WHEN p.grantable THEN true END))
         FROM privileges p
         JOIN objects o ON (o.classid, o.objid) = (p.classid, p.objid)
         UNION ALL
         -- Users made by hand that the job now manages: new members of the marker role
         -- (without ADMIN OPTION, which is its creator's), not created in this run and
         -- not marked by an earlier version.
         SELECT 8, a.member, '', '', 0, jsonb_build_object('action', 'adopt', 'role', a.member)
         FROM mm a JOIN pg_roles u ON u.rolname = a.member
         WHERE a.role = '{MANAGED_ROLE}' AND a.in_a AND a.admin = '0'
           AND a.member NOT IN (SELECT b.member FROM mm b
                                WHERE b.role = '{MANAGED_ROLE}' AND b.in_b)
           AND (a.member IN (SELECT x.name FROM rr x WHERE x.in_b)
                OR a.member NOT IN (SELECT x.name FROM rr x WHERE x.in_a))
           AND coalesce((SELECT dd.description FROM pg_shdescription dd
                         WHERE dd.objoid = u.oid AND dd.classoid = 'pg_authid'::regclass), '')
               !~ '^managed by aurora-bootstrap( |$)')
SELECT string_agg(c, E'\n' ORDER BY n) FROM (
    SELECT c::text AS c,
           row_number() OVER (ORDER BY part, k1 COLLATE "C", k2 COLLATE "C",
                                       k3 COLLATE "C", k4) AS n
    FROM (SELECT 0 AS part, '' AS k1, '' AS k2, '' AS k3, 0 AS k4,
                 jsonb_build_object('fingerprint', (SELECT {_FINGERPRINT_OF} FROM now)) AS c
          UNION ALL
          SELECT * FROM ch) AS x) AS y
GROUP BY (n - 1) / {_BLOCK}
ORDER BY (n - 1) / {_BLOCK}
"""


class Snapshot:
    """The catalog as the report sees it, in the SQL for one server version (from
    PostgreSQL 16 memberships carry their inherit and set options)."""

    def __init__(self, server_version: int) -> None:
        memberships = _MEMBERSHIPS + (_MEMBERSHIP_OPTIONS_16 if server_version >= 160000 else "")
        self.sql = (
            f"ARRAY({_ROLES} UNION ALL {memberships} FROM pg_auth_members a"
            f" UNION ALL {_acl_rows()})"
        )
        self._changes = _changes_sql(self.sql)

    @classmethod
    def of(cls, conn: psycopg.Connection[Any]) -> Snapshot:
        return cls(conn.info.server_version)

    def remember(self, cur: psycopg.Cursor[Any]) -> None:
        """Keep a snapshot of the catalog on the server, for changes() to compare with."""
        cur.execute(f"SELECT set_config('bootstrap.snapshot', ({self.sql})::text, true) IS NULL")

    def fingerprint(self, cur: psycopg.Cursor[Any]) -> str:
        """The catalog's fingerprint now, as changes() gives it after a change."""
        cur.execute(f"SELECT {_FINGERPRINT_OF} FROM unnest({self.sql}) AS e")
        row = cur.fetchone()
        return str(row[0]) if row is not None else ""

    def changes(self, cur: psycopg.Cursor[Any]) -> tuple[ChangeLog, str]:
        """What changed since remember(), in the same transaction, and the fingerprint
        of the catalog as it is now ("" when the transaction has written nothing)."""
        found = ChangeLog()
        fingerprint = ""
        # A question the size of a line first: planning the report's query alone costs
        # more than a no-op run's whole report should.
        cur.execute("SELECT pg_current_xact_id_if_assigned() IS NOT NULL")
        if not (row := cur.fetchone()) or not row[0]:
            return found, fingerprint
        cur.execute(self._changes)
        while (block := cur.fetchone()) is not None:
            lines = str(block[0])
            if not fingerprint:
                first, _, lines = lines.partition("\n")
                fingerprint = str(json.loads(first)["fingerprint"])
            if lines:
                found.add_lines(lines)
        return found, fingerprint
