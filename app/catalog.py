"""What init.sql changed, read from the catalog itself.

A snapshot is taken before and after init.sql inside the same transaction, so the
report is what the database did, not what the script meant to do. Only catalogs the
master user can read on Aurora are used: pg_roles, pg_auth_members, pg_shdescription,
pg_namespace, pg_default_acl, pg_class (never pg_authid).

Both snapshots stay on the server: the first is kept as JSON in a transaction-local
setting, and after init.sql one query returns only the rows that differ. A catalog
of 10,000 users then costs no transfer and no client memory when nothing changed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import psycopg

# The comment init.sql puts on the roles it manages. On users it may be followed by
# {"granted": [...]}, the roles the job granted them; group roles carry GROUP_MARKER,
# so that verify and PRUNE, which act on users only, leave them alone.
MARKER = "managed by aurora-bootstrap"
GROUP_MARKER = "managed by aurora-bootstrap (group role)"
MARKER_RE = "^managed by aurora-bootstrap( |$)"


def is_managed(comment: str | None) -> bool:
    return comment is not None and re.match(MARKER_RE, comment) is not None


# SQL: whether role `p` (a pg_roles row) is a user the job manages. Earlier versions
# marked groups with the plain marker too: a role with it that a listed user names as a
# role, or that has a member other than the master user, is such a group. Reads the
# inputs init.sql reads, bootstrap.iam_users and bootstrap.master_user.
_COMMENT_OF_P = (
    "(SELECT d.description FROM pg_shdescription d"
    " WHERE d.objoid = p.oid AND d.classoid = 'pg_authid'::regclass)"
)
MANAGED_USER = (
    "coalesce(" + _COMMENT_OF_P + r" ~ '^managed by aurora-bootstrap( \{.*\})?$'"
    " AND NOT (" + _COMMENT_OF_P + " = 'managed by aurora-bootstrap' AND ("
    " p.rolname IN (SELECT g FROM jsonb_to_recordset("
    "current_setting('bootstrap.iam_users')::jsonb) AS u(roles text[]),"
    " unnest(coalesce(u.roles, '{}')) AS g)"
    " OR EXISTS (SELECT FROM pg_auth_members a WHERE a.roleid = p.oid AND a.member <>"
    " (SELECT m.oid FROM pg_roles m WHERE m.rolname = current_setting('bootstrap.master_user'))"
    "))), false)"
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


# Each query gives one JSON array per row.
# Roles: name, LOGIN, comment. PostgreSQL's own pg_* roles are left out.
_ROLES = """
SELECT jsonb_build_array(r.rolname, r.rolcanlogin, coalesce(
    (SELECT d.description FROM pg_shdescription d
     WHERE d.objoid = r.oid AND d.classoid = 'pg_authid'::regclass), '')) AS e
FROM pg_roles r
WHERE r.rolname !~ '^pg_'
"""
# Memberships with their grantor: from PostgreSQL 16 a membership belongs to it.
# Names come from the role cache (pg_get_userbyid), far cheaper than three joins.
_MEMBERSHIPS = """
SELECT jsonb_build_array(pg_get_userbyid(a.roleid), pg_get_userbyid(a.member),
                         pg_get_userbyid(a.grantor), a.admin_option) AS e
FROM pg_auth_members a
"""
# Privileges, summarised per schema, object kind, grantee and privilege, so that a
# schema of many tables costs one row per kind, not one per table.
_PRIVILEGES = """
SELECT jsonb_build_array(object, grantee, privilege, count(*)) AS e
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


# The snapshot as one JSON document of three lists of rows.
_SNAPSHOT = f"""
SELECT jsonb_build_object(
    'roles', (SELECT coalesce(jsonb_agg(e ORDER BY e), '[]') FROM ({_ROLES}) AS r),
    'memberships', (SELECT coalesce(jsonb_agg(e ORDER BY e), '[]') FROM ({_MEMBERSHIPS}) AS m),
    'privileges', (SELECT coalesce(jsonb_agg(e ORDER BY e), '[]') FROM ({_PRIVILEGES}) AS p))
"""
# Rows are sorted, so the snapshot's md5 is a fingerprint of the catalog's state.
_REMEMBER = f"SELECT md5(set_config('bootstrap.snapshot', ({_SNAPSHOT})::text, true))"
# Rows of the remembered snapshot that are gone now ('before'), and rows now that
# were not there ('after'), for each of the three lists.
_CHANGED = f"""
WITH was AS (SELECT current_setting('bootstrap.snapshot')::jsonb AS j),
     now AS MATERIALIZED ({_SNAPSHOT.strip()} AS j)
SELECT 'fingerprint' AS kind, 'after' AS side, to_jsonb(md5(now.j::text)) AS row FROM now
UNION ALL
SELECT kind, side, row
FROM unnest(ARRAY['roles', 'memberships', 'privileges']) AS kind
CROSS JOIN LATERAL (
    (SELECT 'after' AS side, e AS row FROM now, jsonb_array_elements(now.j -> kind) e
     EXCEPT
     SELECT 'after', e FROM was, jsonb_array_elements(was.j -> kind) e)
    UNION ALL
    (SELECT 'before', e FROM was, jsonb_array_elements(was.j -> kind) e
     EXCEPT
     SELECT 'before', e FROM now, jsonb_array_elements(now.j -> kind) e)
) AS d
"""


@dataclass(frozen=True)
class Snapshot:
    roles: dict[str, tuple[bool, str]]  # name -> (login, comment)
    memberships: dict[tuple[str, str, str], bool]  # (role, member, grantor) -> admin
    privileges: dict[tuple[str, str, str], int]  # (object, grantee, privilege) -> count


def remember(cur: psycopg.Cursor[Any]) -> str:
    """Keep a snapshot of the catalog on the server, for changes() to compare with.
    Returns its fingerprint."""
    cur.execute(_REMEMBER)
    row = cur.fetchone()
    return str(row[0]) if row is not None else ""


def changes(cur: psycopg.Cursor[Any]) -> tuple[list[Change], str]:
    """What changed since remember(), in the same transaction, and the fingerprint of
    the catalog as it is now."""
    sides = {"before": Snapshot({}, {}, {}), "after": Snapshot({}, {}, {})}
    fingerprint = ""
    cur.execute(_CHANGED)
    for kind, side, row in cur.fetchall():
        snap = sides[side]
        if kind == "fingerprint":
            fingerprint = str(row)
        elif kind == "roles":
            name, login, comment = row
            snap.roles[name] = (login, comment)
        elif kind == "memberships":
            role, member, grantor, admin = row
            snap.memberships[(role, member, grantor)] = admin
        else:
            obj, grantee, privilege, count = row
            snap.privileges[(obj, grantee, privilege)] = count
    return diff(sides["before"], sides["after"]), fingerprint


Change = dict[str, object]


def diff(before: Snapshot, after: Snapshot) -> list[Change]:
    """The changes that turn `before` into `after`, in a stable order."""
    return _roles(before, after) + _memberships(before, after) + _privileges(before, after)


def _roles(before: Snapshot, after: Snapshot) -> list[Change]:
    changes: list[Change] = []
    for role in sorted(after.roles.keys() - before.roles.keys()):
        login, comment = after.roles[role]
        changes.append({"action": "create_role", "role": role, "login": login})
        if comment:
            changes.append({"action": "comment", "role": role, "comment": comment})
    for role in sorted(before.roles.keys() - after.roles.keys()):
        changes.append({"action": "drop_role", "role": role})
    for role in sorted(before.roles.keys() & after.roles.keys()):
        (login_was, comment_was), (login, comment) = before.roles[role], after.roles[role]
        if login != login_was:
            changes.append({"action": "alter_role", "role": role, "login": login})
        if comment != comment_was:
            if is_managed(comment) and not is_managed(comment_was):
                # A role made by hand, now managed by the job.
                changes.append({"action": "adopt", "role": role})
            changes.append({"action": "comment", "role": role, "comment": comment or None})
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
