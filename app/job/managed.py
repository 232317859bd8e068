"""The roles the job manages, as the SQL that finds them says it, and what PRUNE
could not take back from them.

The users init.sql manages are the members of its marker role; verify and PRUNE
act on those alone, never on a role the job did not make or adopt.
"""

from __future__ import annotations

import json
from typing import Any

import psycopg

from app.errors import ConfigError
from app.inputs import users

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


# Declared group roles that exist as roles that can log in (a typo for another name,
# or a user made by hand, whose grants PRUNE would take), and the server's version.
# (Lists come back as JSON text, which every transport returns alike.)
_LOGIN_ROLES = (
    "SELECT coalesce((SELECT json_agg(rolname ORDER BY rolname) FROM pg_roles"
    " WHERE rolname = ANY(%s) AND rolcanlogin), '[]')::text,"
    " current_setting('server_version_num')::int"
)
# The first version that has the MAINTAIN privilege.
MAINTAIN_SINCE = 170000


def _maintain(declared: dict[str, Any]) -> bool:
    return any(
        "MAINTAIN" in grant["privileges"].get("tables", ())
        for group in declared.values()
        for grant in group["grants"]
    )


def check_groups(cur: psycopg.Cursor[Any], group_roles: str, setting: str | None) -> None:
    """What of a declared document only the server can refuse, refused by name (exit
    2) in the run's own transaction before anything is changed: a declared group
    that exists as a LOGIN role (a group is a NOLOGIN role), and MAINTAIN before
    PostgreSQL 17. (Not the shipped default's, `setting` None, which only adds.)"""
    declared = json.loads(group_roles)
    if setting is None or not declared:
        return
    cur.execute(_LOGIN_ROLES, (list(declared),))
    row = cur.fetchone()
    logins, version = (json.loads(str(row[0])), row[1]) if row is not None else ([], 0)
    if logins:
        names = ", ".join(repr(str(name)) for name in logins)
        raise ConfigError(
            setting,
            f"declares {names}, which exist as LOGIN roles (users), not groups: correct the "
            "name, or, if the role is a group, ALTER ROLE ... NOLOGIN first",
        )
    if int(version) < MAINTAIN_SINCE and _maintain(declared):
        raise ConfigError(
            setting,
            f"grants MAINTAIN on tables, which PostgreSQL has from version 17; this server "
            f"is {int(version) // 10000}",
        )
