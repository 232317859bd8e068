"""Benchmark: the change report alone, for N new users and for N retired by PRUNE.

    python -m bench.report [--users 2000,10000] [--pg 15|18]

In one transaction on a throwaway server: the snapshot, sql/init.sql, then the
report's query timed alone (Snapshot.changes, which computes and reads the
changes); then, after commit, the same with PRUNE and no user listed, which alters
every one of them. The report should grow linearly with the changes it holds.
"""

from __future__ import annotations

import argparse
import sys
import time

from app.inputs.groups import DEFAULT
from app.inputs.settings import default_init_sql
from app.inputs.users import parse
from app.job import script
from app.job import snapshot as catalog
from app.job import transaction as apply
from app.retry import Deadline
from bench.bench import fresh, users_list
from tools import localpg


def measure(bindir: object, n: int) -> tuple[float, int, float, int]:
    bench, _ = fresh(bindir, "report")  # type: ignore[arg-type]
    program = script.load(default_init_sql())
    groups = DEFAULT.to_json("postgres", localpg.MASTER_USER)
    try:
        with bench.server.master_connect() as conn, conn.cursor() as cur:
            timings: list[tuple[float, int]] = []
            for listed, prune in ((parse(users_list("u", n)), False), ((), True)):
                apply.set_inputs(
                    cur, apply.Inputs(listed, localpg.MASTER_USER, prune, groups, exact=False)
                )
                snapshot = catalog.Snapshot.of(conn)
                snapshot.remember(cur)
                apply.run_script(conn, cur, program, Deadline(600))
                started = time.perf_counter()
                changes, _ = snapshot.changes(cur)
                timings.append((time.perf_counter() - started, len(changes)))
                conn.commit()
    finally:
        bench.server.stop()
    (new, new_n), (retired, retired_n) = timings
    return new, new_n, retired, retired_n


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--users", default="2000,10000")
    parser.add_argument("--pg", choices=("15", "18"), default="15")
    args = parser.parse_args()
    bindir = localpg.debian_bindir(15) if args.pg == "15" else localpg.embedded_bindir()
    if bindir is None:
        raise SystemExit(f"PostgreSQL {args.pg} is not installed")
    print("| users | report, new (changes) | report, retired by PRUNE (changes) |")
    print("|---|---|---|")
    for n in (int(x) for x in args.users.split(",")):
        new, new_n, retired, retired_n = measure(bindir, n)
        print(
            f"| {n:,} | {new * 1000:.0f} ms ({new_n:,}) | {retired * 1000:.0f} ms ({retired_n:,}) |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
