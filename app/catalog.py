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
import re
from dataclasses import dataclass, field
from typing import Any

import psycopg

from app import users

# The users init.sql manages are the members of MANAGED_ROLE. Group roles it creates
# carry GROUP_MARKER, so that verify and PRUNE, which act on users only, leave them
# alone. MARKER is the comment earlier versions put on users (and groups), followed
# on users by {"granted": [...]}.
MARKER = "managed by aurora-bootstrap"
MANAGED_ROLE = users.MANAGED_ROLE
GROUP_MARKER = "managed by aurora-bootstrap (group role)"
MARKER_RE = "^managed by aurora-bootstrap( |$)"


def is_managed(comment: str | None) -> bool:
    return comment is not None and re.match(MARKER_RE, comment) is not None


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
_SNAPSHOT = f"ARRAY({_ROLES} UNION ALL {_MEMBERSHIPS} UNION ALL {_PRIVILEGES})"
_REMEMBER = f"SELECT set_config('bootstrap.snapshot', ({_SNAPSHOT})::text, true) IS NULL"
# The catalog's fingerprint: its row count and the sum of its rows' hashes, so that
# the order rows come in does not matter.
_FINGERPRINT_OF = "count(*) || ':' || coalesce(sum(hashtextextended(e, 0)), 0)"
_FINGERPRINT = f"SELECT {_FINGERPRINT_OF} FROM unnest({_SNAPSHOT}) AS e"
# Rows of the remembered snapshot that are gone now ('before'), rows now that were not
# there ('after'), and the catalog's fingerprint now. A transaction that has written
# nothing (no transaction id assigned: init.sql only read) has changed nothing: then
# the query returns no row, and does not build the second snapshot at all.
_CHANGED = f"""
WITH was AS (SELECT unnest(current_setting('bootstrap.snapshot')::text[]) AS e),
     now AS MATERIALIZED (SELECT unnest({_SNAPSHOT}) AS e)
SELECT 'fingerprint' AS side, {_FINGERPRINT_OF} AS row FROM now
WHERE (SELECT pg_current_xact_id_if_assigned()) IS NOT NULL
UNION ALL
(SELECT 'after', e FROM now EXCEPT ALL SELECT 'after', e FROM was)
UNION ALL
(SELECT 'before', e FROM was EXCEPT ALL SELECT 'before', e FROM now)
"""
_CHANGED_IF_WRITTEN = f"""
SELECT side, row FROM ({_CHANGED}) AS d
WHERE (SELECT pg_current_xact_id_if_assigned()) IS NOT NULL
"""
# Names and comments of the roles that differing rows name.
_NAMES = """
SELECT r.oid::text, r.rolname,
       (SELECT d.description FROM pg_shdescription d
        WHERE d.objoid = r.oid AND d.classoid = 'pg_authid'::regclass)
FROM pg_roles r
WHERE r.oid = ANY (%s::oid[])
"""


@dataclass
class Snapshot:
    """The rows of one side of the difference, by name."""

    roles: dict[str, tuple[bool, str]] = field(default_factory=dict)  # -> (login, md5)
    memberships: dict[tuple[str, str, str], bool] = field(default_factory=dict)  # -> admin
    privileges: dict[tuple[str, str, str], int] = field(default_factory=dict)  # -> count
    comments: dict[str, str | None] = field(default_factory=dict)  # roles' comments now


def remember(cur: psycopg.Cursor[Any]) -> None:
    """Keep a snapshot of the catalog on the server, for changes() to compare with."""
    cur.execute(_REMEMBER)


def fingerprint(cur: psycopg.Cursor[Any]) -> str:
    """The catalog's fingerprint now, as changes() gives it after a change."""
    cur.execute(_FINGERPRINT)
    row = cur.fetchone()
    return str(row[0]) if row is not None else ""


def changes(cur: psycopg.Cursor[Any]) -> tuple[list[Change], str]:
    """What changed since remember(), in the same transaction, and the fingerprint of
    the catalog as it is now ("" when the transaction has written nothing)."""
    cur.execute(_CHANGED_IF_WRITTEN)
    rows = cur.fetchall()
    fingerprint = next((str(row) for side, row in rows if side == "fingerprint"), "")
    differing = [(side, str(row)) for side, row in rows if side != "fingerprint"]
    if not differing:
        return [], fingerprint
    names, comments = _names(cur, differing)
    sides = {"before": Snapshot(), "after": Snapshot(comments=comments)}
    for side, row in differing:
        snap = sides[side]
        kind, body = row.split(":", 1)
        if kind == "r":
            _oid, login, digest, name = body.split(":", 3)
            snap.roles[name] = (login == "1", digest)
        elif kind == "m":
            role, member, grantor, admin = body.split(":")
            key = (names.get(role, role), names.get(member, member), names.get(grantor, grantor))
            snap.memberships[key] = admin == "1"
        else:
            obj, grantee, privilege, count = json.loads(body)
            snap.privileges[(obj, grantee, privilege)] = count
    found = diff(sides["before"], sides["after"])
    return found + _adopted(cur, sides["before"], sides["after"]), fingerprint


def _names(
    cur: psycopg.Cursor[Any], differing: list[tuple[str, str]]
) -> tuple[dict[str, str], dict[str, str | None]]:
    """Role names by oid for the differing rows (a dropped role's from its own row),
    and the current comments of the roles they name."""
    names: dict[str, str] = {}
    oids: set[str] = set()
    for _side, row in differing:
        kind, body = row.split(":", 1)
        if kind == "r":
            oid, _login, _digest, name = body.split(":", 3)
            names[oid] = name
            oids.add(oid)
        elif kind == "m":
            oids.update(body.split(":")[:3])
    cur.execute(_NAMES, (sorted(oids, key=int),))
    comments: dict[str, str | None] = {}
    for oid, name, comment in cur.fetchall():
        names[oid] = name
        comments[name] = comment
    return names, comments


# Of the given roles, those that earlier versions did not mark with their comment.
_UNMARKED = """
SELECT p.rolname FROM pg_roles p
WHERE p.rolname = ANY (%s)
  AND coalesce((SELECT d.description FROM pg_shdescription d
                WHERE d.objoid = p.oid AND d.classoid = 'pg_authid'::regclass), '')
      !~ '^managed by aurora-bootstrap( |$)'
ORDER BY 1
"""


def _adopted(cur: psycopg.Cursor[Any], before: Snapshot, after: Snapshot) -> list[Change]:
    """Users made by hand that the job now manages: new members of the marker role
    (without ADMIN OPTION, which is its creator's) that this run did not create and no
    earlier version marked. A query only when there are such members (an adoption, or
    the migration of earlier markers)."""
    created = after.roles.keys() - before.roles.keys()
    joined = [
        member
        for (role, member, grantor), admin in after.memberships.items()
        if role == MANAGED_ROLE
        and not admin
        and member not in created
        and (role, member, grantor) not in before.memberships
    ]
    if not joined:
        return []
    cur.execute(_UNMARKED, (joined,))
    return [{"action": "adopt", "role": name} for (name,) in cur.fetchall()]


Change = dict[str, object]


def diff(before: Snapshot, after: Snapshot) -> list[Change]:
    """The changes that turn `before` into `after`, in a stable order."""
    return _roles(before, after) + _memberships(before, after) + _privileges(before, after)


def _roles(before: Snapshot, after: Snapshot) -> list[Change]:
    changes: list[Change] = []
    for role in sorted(after.roles.keys() - before.roles.keys()):
        login, digest = after.roles[role]
        changes.append({"action": "create_role", "role": role, "login": login})
        if digest:
            changes.append({"action": "comment", "role": role, "comment": after.comments[role]})
    for role in sorted(before.roles.keys() - after.roles.keys()):
        changes.append({"action": "drop_role", "role": role})
    for role in sorted(before.roles.keys() & after.roles.keys()):
        (login_was, digest_was), (login, digest) = before.roles[role], after.roles[role]
        if login != login_was:
            changes.append({"action": "alter_role", "role": role, "login": login})
        if digest != digest_was:
            changes.append({"action": "comment", "role": role, "comment": after.comments[role]})
    return changes


def _memberships(before: Snapshot, after: Snapshot) -> list[Change]:
    changes = [
        _membership("grant", key, after.memberships[key])
        for key in sorted(after.memberships.keys() - before.memberships.keys())
    ]
    changes += [
        _membership("revoke", key, before.memberships[key])
        for key in sorted(before.memberships.keys() - after.memberships.keys())
    ]
    changes += [
        _membership("grant", key, after.memberships[key])
        for key in sorted(after.memberships.keys() & before.memberships.keys())
        if after.memberships[key] != before.memberships[key]
    ]
    return changes


def _privileges(before: Snapshot, after: Snapshot) -> list[Change]:
    changes: list[Change] = []
    for key in sorted(after.privileges.keys() | before.privileges.keys()):
        delta = after.privileges.get(key, 0) - before.privileges.get(key, 0)
        if delta:
            obj, grantee, privilege = key
            changes.append(
                {
                    "action": "grant_privilege" if delta > 0 else "revoke_privilege",
                    "object": obj,
                    "role": grantee,
                    "privilege": privilege,
                    "count": abs(delta),
                }
            )
    return changes


def _membership(action: str, key: tuple[str, str, str], admin: bool) -> Change:
    role, member, grantor = key
    change: Change = {"action": action, "role": role, "member": member, "grantor": grantor}
    if admin:
        change["admin_option"] = True
    return change
