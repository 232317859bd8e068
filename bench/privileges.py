"""Benchmark: GROUP_ROLES over a schema of many tables, against psql typing the grants.

    python -m bench.privileges [--tables 5000] [--reps 3] [--pg 18|15]

On a throwaway server with Aurora's roles, a schema `app` of N tables (each with a
bigserial column, so N sequences too) and two groups, `r` read and `w` write:
- the job's first `apply` (groups made, every grant and default privilege set),
  against psql running, in one transaction, what a person would type: `GRANT ... ON
  ALL TABLES IN SCHEMA` and `ON ALL SEQUENCES` for both groups, `ALTER DEFAULT
  PRIVILEGES` for both, USAGE and CONNECT; plus the import floor;
- the job's no-op `apply` over the N tables, against its no-op over an empty schema
  (in a database of its own, without the N tables);
- round trips of each run, counted by a proxy, at N and at N / 100 tables;
- peak RSS of each run.
Each repetition drops the groups (and with them every grant) before the next.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
from pathlib import Path

from psycopg import sql

from bench.bench import (
    ROOT,
    Bench,
    CountingProxy,
    Counts,
    Run,
    applied,
    fresh,
    import_floor,
    timed,
)
from tools import localpg

DOCUMENT = {
    "r": [{"schemas": ["app"], "access": "read"}],
    "w": [{"schemas": ["app"], "access": "write"}],
}
BY_HAND = """
GRANT CONNECT ON DATABASE {db} TO {r}, {w};
GRANT USAGE ON SCHEMA app TO {r}, {w};
GRANT SELECT ON ALL TABLES IN SCHEMA app TO {r};
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA app TO {w};
GRANT SELECT ON ALL SEQUENCES IN SCHEMA app TO {r};
GRANT SELECT, USAGE ON ALL SEQUENCES IN SCHEMA app TO {w};
ALTER DEFAULT PRIVILEGES IN SCHEMA app GRANT SELECT ON TABLES TO {r};
ALTER DEFAULT PRIVILEGES IN SCHEMA app GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO {w};
ALTER DEFAULT PRIVILEGES IN SCHEMA app GRANT SELECT ON SEQUENCES TO {r};
ALTER DEFAULT PRIVILEGES IN SCHEMA app GRANT SELECT, USAGE ON SEQUENCES TO {w};
"""


def make_schema(bench: Bench, db: str, tables: int) -> None:
    with bench.server.superuser_connect(db) as conn:
        conn.execute(f"SET ROLE {localpg.MASTER_USER}")
        conn.execute("CREATE SCHEMA app")
        conn.execute(
            "DO $$BEGIN FOR i IN 1.." + str(int(tables)) + " LOOP"
            " EXECUTE format('CREATE TABLE app.t%s (id bigserial, v int)', i);"
            " END LOOP; END$$"
        )


def job(bench: Bench, db: str, port: int | None = None) -> Run:
    env = bench.job_env("", port) | {"DB_NAME": db, "GROUP_ROLES": json.dumps(DOCUMENT)}
    return applied(env)


def by_hand(bench: Bench, db: str) -> Run:
    with bench.server.superuser_connect(db) as conn:
        for name in ("hr", "hw"):
            conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(name)))
    script = bench.workdir / "grants.sql"
    script.write_text(BY_HAND.format(db=db, r="hr", w="hw"))
    args = [str(bench.psql), "-X", "-q", "-v", "ON_ERROR_STOP=1", "--single-transaction"]
    args += ["-h", "127.0.0.1", "-p", str(bench.server.port), "-U", localpg.MASTER_USER]
    args += ["-d", db, "-o", "/dev/null", "-f", str(script)]
    env = {"PATH": os.environ["PATH"], "PGPASSWORD": bench.server.master_password}
    return timed(args, env | {"PGSSLMODE": "disable"})


def drop_groups(bench: Bench, *names: str) -> None:
    for db in ("postgres", "small", "empty"):
        with bench.server.superuser_connect(db) as conn:
            for name in names:
                if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (name,)).fetchone():
                    conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(name)))
    with bench.server.superuser_connect() as conn:
        for name in names:
            conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))
        conn.execute("VACUUM pg_authid, pg_auth_members, pg_shdescription, pg_database")
        conn.execute("VACUUM pg_class, pg_default_acl, pg_namespace")


def counted(bench: Bench, proxy: CountingProxy, db: str) -> tuple[int, int]:
    # Groups holding privileges in another database would have the run visit it too.
    drop_groups(bench, "r", "w")
    proxy.counts = Counts()
    job(bench, db, port=proxy.port)
    first = proxy.counts.round_trips
    proxy.counts = Counts()
    job(bench, db, port=proxy.port)
    return first, proxy.counts.round_trips


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tables", type=int, default=5000)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--pg", choices=("15", "18"), default="18")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "privileges.md")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda _sig, _frame: sys.exit(143))
    bindir = localpg.debian_bindir(15) if args.pg == "15" else localpg.embedded_bindir()
    if bindir is None:
        raise SystemExit(f"PostgreSQL {args.pg} is not installed")
    bench, _ = fresh(bindir, "privileges")
    try:
        with bench.server.superuser_connect() as conn:
            for db in ("small", "empty"):
                conn.execute(f"CREATE DATABASE {db} OWNER {localpg.MASTER_USER}")
        make_schema(bench, "postgres", args.tables)
        make_schema(bench, "small", max(args.tables // 100, 1))
        make_schema(bench, "empty", 0)
        series: dict[str, list[float]] = {k: [] for k in ("first", "noop", "hand", "empty")}
        rss: dict[str, int] = {}
        for rep in range(args.reps):
            order = ("job", "hand") if rep % 2 == 0 else ("hand", "job")
            for who in order:
                if who == "job":
                    first = job(bench, "postgres")
                    noop = job(bench, "postgres")
                    series["first"].append(first.wall)
                    series["noop"].append(noop.wall)
                    rss["first"] = max(rss.get("first", 0), first.rss_kb)
                    rss["noop"] = max(rss.get("noop", 0), noop.rss_kb)
                    drop_groups(bench, "r", "w")
                else:
                    series["hand"].append(by_hand(bench, "postgres").wall)
                    drop_groups(bench, "hr", "hw")
            job(bench, "empty")
            series["empty"].append(job(bench, "empty").wall)
            drop_groups(bench, "r", "w")
        proxy = CountingProxy(bench.server.port)
        trips = {db: counted(bench, proxy, db) for db in ("postgres", "small")}
        floor = import_floor(max(args.reps, 5))["deps_import"]
        best = {k: min(v) for k, v in series.items()}
        rows = [
            f"# GROUP_ROLES over {args.tables:,} tables (PostgreSQL {bench.server.version})",
            "",
            "| case | job | compared with | ratio |",
            "|---|---|---|---|",
            f"| first apply | {best['first'] * 1000:.0f} ms | psql typing the grants "
            f"{best['hand'] * 1000:.0f} ms + import floor {floor * 1000:.0f} ms | "
            f"{best['first'] / (best['hand'] + floor):.2f}x |",
            f"| no-op apply | {best['noop'] * 1000:.0f} ms | no-op over an empty schema "
            f"{best['empty'] * 1000:.0f} ms | {best['noop'] / best['empty']:.2f}x |",
            "",
            f"Best of {args.reps}; medians: first "
            f"{statistics.median(series['first']) * 1000:.0f} ms, psql "
            f"{statistics.median(series['hand']) * 1000:.0f} ms, no-op "
            f"{statistics.median(series['noop']) * 1000:.0f} ms, empty "
            f"{statistics.median(series['empty']) * 1000:.0f} ms.",
            f"Round trips first / no-op: {trips['postgres'][0]} / {trips['postgres'][1]} at "
            f"{args.tables:,} tables, {trips['small'][0]} / {trips['small'][1]} at "
            f"{max(args.tables // 100, 1):,}.",
            f"Peak RSS: first {rss['first'] / 1024:.1f} MB, no-op {rss['noop'] / 1024:.1f} MB.",
        ]
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("\n".join(rows) + "\n")
        print("\n".join(rows))
    finally:
        bench.server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
