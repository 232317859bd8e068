"""Benchmark: GROUP_ROLES against ldap2pg 5.9 doing the same, side by side in one run.

    python -m bench.ldap2pg [--tables 5000] [--reps 3] [--pg 15,18]

On a throwaway server of each version with Aurora's roles, a schema `app` of N tables
(each with a bigserial column, so N sequences too) and two groups, `r` read and `w`
write, as bench.privileges makes them. Each side, logged in as the same non-superuser
master:
- the job: `apply` with the document {r: read on app, w: write on app}, first run and
  no-op; then PRUNE of all of it (the groups declared with nothing);
- ldap2pg 5.9 (PyPI, in a virtual environment of its own under bench/out): a static
  YAML with the same roles, privileges and default privileges (`__connect__`,
  `__usage_on_schemas__`, `__select_on_tables__`, ... for r; `ro` plus insert, update,
  delete and sequence usage for w), `--real`, first run and no-op;
- psql typing the grants (`GRANT ... ON ALL TABLES IN SCHEMA`, `ALTER DEFAULT
  PRIVILEGES`) and the import floor, the reference the job's targets are set against.
The groups are dropped between runs, and each side's order alternates by repetition.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

from bench.bench import ROOT, Bench, Run, applied, fresh, import_floor, timed
from bench.privileges import DOCUMENT, by_hand, drop_groups, make_schema
from tools import localpg

LDAP2PG = "ldap2pg==5.9"
VENV = ROOT / "bench" / "out" / "ldap2pg-venv"
CONFIG = """\
version: 5
postgres:
  managed_roles_query: "VALUES ('public'), ('r'), ('w')"
  databases_query: [postgres]
  schemas_query: [app]
  owners_query: [{master}]
privileges:
  ro:
  - __connect__
  - __usage_on_schemas__
  - __select_on_tables__
  - __select_on_sequences__
  rw:
  - ro
  - __insert__
  - __update_on_tables__
  - __delete__
  - __usage_on_sequences__
sync_map:
- role:
    names: [r, w]
    options: NOLOGIN
- grant:
    privilege: ro
    role: r
    schema: app
- grant:
    privilege: rw
    role: w
    schema: app
"""


def ldap2pg_binary() -> Path:
    """ldap2pg 5.9 in a virtual environment of its own (python-ldap builds against
    Debian's libldap2-dev and libsasl2-dev)."""
    binary = VENV / "bin" / "ldap2pg"
    if not binary.exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        subprocess.run(
            [str(VENV / "bin" / "pip"), "install", "-q", LDAP2PG, "psycopg2-binary"], check=True
        )
    return binary


def ldap2pg(bench: Bench, binary: Path, config: Path) -> Run:
    env = {
        "PATH": os.environ["PATH"],
        "PGHOST": "127.0.0.1",
        "PGPORT": str(bench.server.port),
        "PGUSER": localpg.MASTER_USER,
        "PGPASSWORD": bench.server.master_password,
        "PGDATABASE": "postgres",
        "PGSSLMODE": "disable",
    }
    return timed([str(binary), "--real", "--quiet", "-c", str(config)], env)


def job(bench: Bench, document: Mapping[str, object], *, prune: bool = False) -> Run:
    env = bench.job_env("") | {"GROUP_ROLES": json.dumps(document)}
    if prune:
        env["PRUNE"] = "true"
    return applied(env)


def measure(version: str, tables: int, reps: int, binary: Path) -> dict[str, float]:
    bindir = localpg.debian_bindir(15) if version == "15" else localpg.embedded_bindir()
    if bindir is None:
        raise SystemExit(f"PostgreSQL {version} is not installed")
    bench, _ = fresh(bindir, f"ldap2pg{version}")
    try:
        with bench.server.superuser_connect() as conn:
            for db in ("small", "empty"):  # drop_groups visits them
                conn.execute(f"CREATE DATABASE {db} OWNER {localpg.MASTER_USER}")
        make_schema(bench, "postgres", tables)
        config = bench.workdir / "ldap2pg.yml"
        config.write_text(CONFIG.format(master=localpg.MASTER_USER))
        series: dict[str, list[float]] = {
            k: [] for k in ("job_first", "job_noop", "job_prune", "l2p_first", "l2p_noop", "psql")
        }
        emptied: dict[str, list[object]] = {name: [] for name in DOCUMENT}
        for rep in range(reps):
            for who in ("job", "ldap2pg") if rep % 2 == 0 else ("ldap2pg", "job"):
                if who == "job":
                    series["job_first"].append(job(bench, DOCUMENT).wall)
                    series["job_noop"].append(job(bench, DOCUMENT).wall)
                    series["job_prune"].append(job(bench, emptied, prune=True).wall)
                else:
                    series["l2p_first"].append(ldap2pg(bench, binary, config).wall)
                    series["l2p_noop"].append(ldap2pg(bench, binary, config).wall)
                drop_groups(bench, "r", "w")
            series["psql"].append(by_hand(bench, "postgres").wall)
            drop_groups(bench, "hr", "hw")
        best = {k: min(v) for k, v in series.items()}
        best["floor"] = import_floor(max(reps, 5))["deps_import"]
        best["version"] = float(bench.server.major)
        return best
    finally:
        bench.server.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tables", type=int, default=5000)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--pg", default="15,18")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "ldap2pg.md")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda _sig, _frame: sys.exit(143))
    binary = ldap2pg_binary()

    def ms(seconds: float) -> str:
        return f"{seconds * 1000:.0f} ms"

    rows = [
        f"# GROUP_ROLES against {LDAP2PG}: two groups over {args.tables:,} tables, "
        f"best of {args.reps}",
        "",
        "| PostgreSQL | ldap2pg first | job first | ldap2pg no-op | job no-op "
        "| job first / (psql + import floor) | job PRUNE of it all / job first |",
        "|---|---|---|---|---|---|---|",
    ]
    for version in args.pg.split(","):
        b = measure(version, args.tables, args.reps, binary)
        rows.append(
            f"| {int(b['version'])} | {ms(b['l2p_first'])} | {ms(b['job_first'])} "
            f"| {ms(b['l2p_noop'])} | {ms(b['job_noop'])} "
            f"| {b['job_first'] / (b['psql'] + b['floor']):.2f}x "
            f"({ms(b['psql'])} + {ms(b['floor'])}) "
            f"| {b['job_prune'] / b['job_first']:.2f}x ({ms(b['job_prune'])}) |"
        )
        print(rows[-1], flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(rows) + "\n")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
