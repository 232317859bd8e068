"""verify: a read-only look at whether the catalog matches IAM_USERS.

Each listed user must exist, log in, be a member of rds_iam and of its listed roles,
and carry the managed marker; nothing may stop it from logging in (a connection
limit of 0, no CONNECT on the database through PUBLIC, itself or its groups) or from
using its groups (a membership without INHERIT); a managed user no longer listed must
no longer be able to log in with IAM. In each database the run visits, the declared
groups must hold what GROUP_ROLES gives them, and nothing more. With --connect, each
listed user also logs in with a fresh IAM token and runs SELECT 1.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import psycopg

from app import log
from app.inputs.settings import Settings
from app.inputs.users import IamUser, to_json
from app.job import managed
from app.job.script import Script
from app.job.transaction import (
    Inputs,
    elsewhere,
    run_script,
    script_findings,
    script_output,
    set_inputs,
)
from app.login import connect
from app.login.master import MasterLogin
from app.retry import Deadline

_LISTED = f"""
SELECT u.name, p.oid IS NOT NULL, coalesce(p.rolcanlogin, false),
       p.oid IS NOT NULL AND {managed.MANAGED_USER},
       (SELECT coalesce(json_agg(g.rolname), '[]') FROM pg_auth_members a
        JOIN pg_roles g ON g.oid = a.roleid WHERE a.member = p.oid)::text,
       p.rolconnlimit = 0,
       p.oid IS NOT NULL AND NOT has_database_privilege(p.oid, current_database(), 'CONNECT'),
       -- Groups it is a member of but holds no privileges of (granted WITH INHERIT
       -- FALSE on 16+, or the user NOINHERIT).
       (SELECT coalesce(json_agg(DISTINCT g.rolname), '[]') FROM pg_auth_members a
        JOIN pg_roles g ON g.oid = a.roleid
        WHERE a.member = p.oid AND NOT pg_has_role(p.oid, g.oid, 'USAGE'))::text,
       current_database()
FROM jsonb_to_recordset(current_setting('bootstrap.iam_users')::jsonb) AS u(name text)
LEFT JOIN pg_roles p ON p.rolname = u.name
ORDER BY 1
"""
# Managed users no longer listed that can still log in, or still hold rds_iam. Group
# roles are not users: one given LOGIN by hand is none of verify's business.
_UNLISTED = f"""
SELECT p.rolname, p.rolcanlogin,
       EXISTS (SELECT FROM pg_auth_members a
               WHERE a.member = p.oid AND a.roleid = 'rds_iam'::regrole)
FROM pg_roles p
WHERE {managed.MANAGED_USER}
  AND {managed.UNLISTED}
  AND (p.rolcanlogin OR EXISTS (SELECT FROM pg_auth_members a
                                WHERE a.member = p.oid AND a.roleid = 'rds_iam'::regrole))
ORDER BY 1
"""
# New IAM connections are throttled around 200 per second per cluster: stay far below.
CONNECTS_PER_SECOND = 20

Finding = managed.Finding


def findings(
    conn: psycopg.Connection[Any], users: tuple[IamUser, ...], master: str
) -> list[Finding]:
    """Drift between the catalog and `users`, read in one read-only transaction."""
    listed = to_json(users)
    wanted = {u.name: u for u in users}
    found: list[Finding] = []
    conn.read_only = True
    with conn.transaction(), conn.cursor() as cur:
        # The inputs init.sql would read, for the queries that share its rules.
        cur.execute(
            "SELECT set_config('bootstrap.iam_users', %s, true),"
            " set_config('bootstrap.master_user', %s, true)",
            (listed, master),
        )
        cur.execute(_LISTED)
        for row in cur.fetchall():
            name, exists, login, managed, members, no_connections, no_connect = row[:7]
            inherits_nothing, database = row[7:]
            # Lists come back as JSON text, which every transport returns alike.
            member_of, not_inherited = json.loads(str(members)), json.loads(str(inherits_nothing))
            if not exists:
                found.append({"role": name, "problem": "missing"})
                continue
            if not login:
                found.append({"role": name, "problem": "no_login"})
            if no_connections:
                found.append({"role": name, "problem": "connection_limit_zero"})
            if no_connect:
                found.append({"role": name, "problem": "no_connect", "database": database})
            for group in wanted[name].roles:
                if group in member_of and group in not_inherited:
                    found.append({"role": name, "problem": "group_not_inherited", "group": group})
            if "rds_iam" not in member_of:
                found.append({"role": name, "problem": "not_in_rds_iam"})
            for group in wanted[name].roles:
                if group not in member_of:
                    found.append({"role": name, "problem": "not_in_role", "group": group})
            if not managed:
                found.append({"role": name, "problem": "no_marker"})
        cur.execute(_UNLISTED)
        for name, login, in_rds_iam in cur.fetchall():
            found.append(
                {"role": name, "problem": "unlisted", "login": login, "rds_iam": in_rds_iam}
            )
    return found


def privilege_findings(
    conn: psycopg.Connection[Any],
    privileges: Script,
    inputs: Inputs,
    deadline: Deadline,
    *,
    roles_here: bool = False,
) -> tuple[list[Finding], list[str]]:
    """The declared groups' privileges in this database, as privileges.sql sees them
    without changing anything: each difference from the document is drift (with who
    may fix it, where the master may not); what is not there yet is a warning. In
    DB_NAME (`roles_here`) also the groups' memberships, and the other databases
    where they hold privileges, which verify visits too."""
    conn.read_only = True
    with conn.transaction(), conn.cursor() as cur:
        set_inputs(cur, inputs, roles_here=roles_here)
        if roles_here:
            managed.check_groups(cur, inputs.group_roles, inputs.groups_setting)
        cur.execute("SELECT set_config('bootstrap.check_only', 'true', true)")
        run_script(conn, cur, privileges, deadline)
        found = script_output(cur, "bootstrap.drift") + script_findings(cur)
        return found, elsewhere(cur) if roles_here else []


def connect_each(
    users: tuple[IamUser, ...],
    login: MasterLogin,
    settings: Settings,
    token: Callable[[str], str],
) -> list[dict[str, object]]:
    """Log in as each user with a fresh IAM token and run SELECT 1, paced."""
    results: list[dict[str, object]] = []
    interval = 1.0 / CONNECTS_PER_SECOND
    last = 0.0
    for user in users:
        pause = last + interval - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        last = time.monotonic()
        password = token(user.name)
        try:
            with psycopg.connect(
                host=login.host,
                port=login.port,
                dbname=login.dbname,
                user=user.name,
                password=password,
                connect_timeout=settings.connect_timeout,
                application_name=connect.APPLICATION_NAME,
                sslmode=settings.db_sslmode,
                sslrootcert=connect.sslrootcert(settings),
            ) as conn:
                conn.execute("SELECT 1")
            results.append({"user": user.name, "ok": True})
        except psycopg.Error as exc:
            results.append({"user": user.name, "ok": False, "error": connect.describe(exc)})
        log.event("verify_connect", user=user.name, ok=results[-1]["ok"])
    return results
