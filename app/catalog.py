"""What init.sql changed, read from the catalog itself.

A snapshot is taken before and after init.sql inside the same transaction, so the
report is what the database did, not what the script meant to do. Only catalogs the
master user can read on Aurora are used: pg_roles, pg_auth_members, pg_shdescription,
pg_namespace, pg_default_acl, pg_class (never pg_authid).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import psycopg

# The comment init.sql puts on the roles it manages; on users it may be followed by
# {"granted": [...]}, the roles the job granted them.
MARKER = "managed by aurora-bootstrap"
MARKER_RE = "^managed by aurora-bootstrap( |$)"


def is_managed(comment: str | None) -> bool:
    return comment is not None and re.match(MARKER_RE, comment) is not None


# Roles: name, LOGIN, comment. PostgreSQL's own pg_* roles are left out.
_ROLES = """
SELECT r.rolname, r.rolcanlogin, coalesce(shobj_description(r.oid, 'pg_authid'), '')
FROM pg_roles r
WHERE r.rolname !~ '^pg_'
"""
# Memberships with their grantor: from PostgreSQL 16 a membership belongs to it.
_MEMBERSHIPS = """
SELECT g.rolname, m.rolname, coalesce(gr.rolname, ''), a.admin_option
FROM pg_auth_members a
JOIN pg_roles g ON g.oid = a.roleid
JOIN pg_roles m ON m.oid = a.member
LEFT JOIN pg_roles gr ON gr.oid = a.grantor
"""
# Privileges, summarised per schema, object kind, grantee and privilege, so that a
# schema of many tables costs one row per kind, not one per table.
_PRIVILEGES = """
SELECT 'schema ' || n.nspname, coalesce(g.rolname, 'PUBLIC'), a.privilege_type, 1
FROM pg_namespace n CROSS JOIN LATERAL aclexplode(n.nspacl) a
LEFT JOIN pg_roles g ON g.oid = a.grantee
WHERE n.nspname !~ '^pg_' AND n.nspname <> 'information_schema'
UNION ALL
SELECT 'default privileges on ' || CASE d.defaclobjtype
         WHEN 'r' THEN 'tables' WHEN 'S' THEN 'sequences' WHEN 'f' THEN 'functions'
         WHEN 'T' THEN 'types' WHEN 'n' THEN 'schemas' END
       || coalesce(' in schema ' || n.nspname, '') || ' for ' || o.rolname,
       coalesce(g.rolname, 'PUBLIC'), a.privilege_type, 1
FROM pg_default_acl d CROSS JOIN LATERAL aclexplode(d.defaclacl) a
JOIN pg_roles o ON o.oid = d.defaclrole
LEFT JOIN pg_namespace n ON n.oid = d.defaclnamespace
LEFT JOIN pg_roles g ON g.oid = a.grantee
UNION ALL
SELECT CASE c.relkind WHEN 'S' THEN 'sequences' ELSE 'tables' END || ' in schema ' || n.nspname,
       coalesce(g.rolname, 'PUBLIC'), a.privilege_type, count(*)
FROM pg_class c CROSS JOIN LATERAL aclexplode(c.relacl) a
JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_roles g ON g.oid = a.grantee
WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S')
  AND n.nspname !~ '^pg_' AND n.nspname <> 'information_schema'
GROUP BY 1, 2, 3
"""


@dataclass(frozen=True)
class Snapshot:
    roles: dict[str, tuple[bool, str]]  # name -> (login, comment)
    memberships: dict[tuple[str, str, str], bool]  # (role, member, grantor) -> admin
    privileges: dict[tuple[str, str, str], int]  # (object, grantee, privilege) -> count


def snapshot(cur: psycopg.Cursor[Any]) -> Snapshot:
    cur.execute(_ROLES)
    roles = {name: (login, comment) for name, login, comment in cur.fetchall()}
    cur.execute(_MEMBERSHIPS)
    memberships = {(g, m, gr): admin for g, m, gr, admin in cur.fetchall()}
    cur.execute(_PRIVILEGES)
    privileges = {(obj, grantee, priv): n for obj, grantee, priv, n in cur.fetchall()}
    return Snapshot(roles, memberships, privileges)


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
