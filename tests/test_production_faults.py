"""How Aurora and ECS fail in production, reproduced against the real servers: silent
hosts and networks, long statements, a read-only writer after failover, TLS cut by a
restart, a COMMIT whose reply is lost, and stop signals. Each run ends within its
deadline, with nothing half-applied and a report that tells the truth."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.job.transaction import LOCK_KEY
from tests.conftest import IN_CI, Job, job_env, run_job
from tests.faultproxy import FaultProxy
from tests.scenario import (
    EXPECTED,
    USERS,
    assert_exact,
    assert_untouched,
    retries,
    through,
    wait_for_no_job_sessions,
)
from tools import localpg

# 1. DEADLINE_SECONDS bounds the whole run


@pytest.fixture
def silent_host() -> Iterator[int]:
    """A host that accepts TCP and never says a word (a half-dead load balancer)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            with contextlib.suppress(OSError):
                accepted.append(listener.accept()[0])

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield int(listener.getsockname()[1])
    stop.set()
    thread.join()
    for conn in accepted:
        conn.close()
    listener.close()


def test_silent_host_ends_at_the_deadline_not_the_connect_timeout(silent_host: int) -> None:
    env = job_env(
        DB_HOST="127.0.0.1",
        DB_PORT=str(silent_host),
        DB_USER="master",
        DB_PASSWORD="not-used-here",
        DB_SSLMODE="disable",
        IAM_USERS="alice",
        CONNECT_TIMEOUT="60",
        DEADLINE_SECONDS="3",
    )
    run = run_job(env, timeout=60)
    assert run.code == 5, run
    assert "DEADLINE_SECONDS=3" in run.result["error"]["message"]
    # Bounded by the deadline, far below the 60 s connect timeout.
    assert run.elapsed < 30, run.elapsed


def test_long_statement_is_cancelled_at_the_deadline(
    pg: localpg.LocalPostgres, tmp_path: Path
) -> None:
    init_sql = tmp_path / "slow.sql"
    init_sql.write_text("CREATE ROLE slow_one;\nSELECT pg_sleep(120);\n")
    run = run_job(job_env(pg, INIT_SQL=str(init_sql), DEADLINE_SECONDS="3"), timeout=100)
    assert run.code == 5, run
    assert run.result["error"]["type"] == "deadline_exceeded"
    assert run.elapsed < 60, run.elapsed
    wait_for_no_job_sessions(pg)
    assert_untouched(pg, "slow_one")


def test_sessions_carry_their_timeouts(pg: localpg.LocalPostgres, tmp_path: Path) -> None:
    """statement_timeout and lock_timeout come from what is left of the deadline, and
    idle_in_transaction_session_timeout frees the lock of a session the job lost."""
    init_sql = tmp_path / "show.sql"
    init_sql.write_text(
        "DO $$ BEGIN RAISE NOTICE 'timeouts % % %', current_setting('statement_timeout'),"
        " current_setting('lock_timeout'),"
        " current_setting('idle_in_transaction_session_timeout'); END $$;\n"
    )
    run = run_job(job_env(pg, INIT_SQL=str(init_sql), DEADLINE_SECONDS="40"))
    assert run.code == 0, run
    notice = next(e["text"] for e in run.logs if e["event"] == "server_notice")
    _, statement, lock, idle = notice.split()
    for value in (statement, lock):
        assert value.endswith("ms") and 30_000 < int(value.removesuffix("ms")) <= 40_000, notice
    assert idle not in ("0", "0ms"), notice


def _iptables() -> str:
    found = shutil.which("iptables") or shutil.which("iptables", path="/usr/sbin:/sbin")
    if found is None or os.geteuid() != 0:
        message = "a silent network needs root and iptables (apt-get install iptables)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return found


class Blackhole:
    """Drops, in the kernel, every packet of the loopback connections whose client
    ports it is given: the peers get no error, only silence."""

    def __init__(self, iptables: str) -> None:
        self.iptables = iptables
        self.rules: list[list[str]] = []

    def drop(self, port: int) -> None:
        for direction in ("--sport", "--dport"):
            rule = ["INPUT", "-i", "lo", "-p", "tcp", direction, str(port), "-j", "DROP"]
            subprocess.run([self.iptables, "-I", *rule], check=True)
            self.rules.append(rule)

    def clear(self) -> None:
        for rule in self.rules:
            subprocess.run([self.iptables, "-D", *rule], check=False)


@pytest.fixture
def blackhole() -> Iterator[Blackhole]:
    hole = Blackhole(_iptables())
    yield hole
    hole.clear()


def test_network_that_goes_silent_mid_transaction_is_noticed_and_retried(
    pg18: localpg.LocalPostgres, plain_proxy: FaultProxy, blackhole: Blackhole
) -> None:
    """The job's connection goes silent after it took the lock (packets dropped, the
    server keeping the session and its lock). The job notices within seconds, and
    the stranded session lets go of the lock, so the retry succeeds."""
    pg, proxy = pg18, plain_proxy
    proxy.freeze_on(b"rds_iam disables password login", blackhole.drop)
    run = run_job(through(proxy, pg, DEADLINE_SECONDS="90"), timeout=150)
    assert run.code == 0, run
    assert proxy.faults.frozen_ports, "the connection was never made silent"
    assert len(retries(run)) >= 1
    assert_exact(pg)


# 2. Aurora failover


def set_read_only(pg: localpg.LocalPostgres, on: bool) -> None:
    with pg.superuser_connect() as conn:
        conn.execute(f"ALTER SYSTEM SET default_transaction_read_only = {'on' if on else 'off'}")
        conn.execute("SELECT pg_reload_conf()")


@pytest.fixture
def read_only_server(pg: localpg.LocalPostgres) -> Iterator[localpg.LocalPostgres]:
    """The writer endpoint still pointing at a demoted instance: every transaction is
    read-only, as on a reader (SQLSTATE 25006 on any write)."""
    set_read_only(pg, True)
    try:
        yield pg
    finally:
        set_read_only(pg, False)


def test_read_only_writer_after_failover_is_retried_until_it_is_writable(
    read_only_server: localpg.LocalPostgres,
) -> None:
    pg = read_only_server
    job = Job(job_env(pg, IAM_USERS=USERS, DEADLINE_SECONDS="60"))
    job.wait_for_event("retry")
    set_read_only(pg, False)
    run = job.finish()
    assert run.code == 0, run
    assert any("read-only" in str(e["reason"]) for e in retries(run)), run.stderr
    assert_exact(pg)


def test_writer_that_stays_read_only_exits_5(read_only_server: localpg.LocalPostgres) -> None:
    run = run_job(job_env(read_only_server, IAM_USERS=USERS, DEADLINE_SECONDS="3"))
    assert run.code == 5, run
    assert "read-only" in run.result["error"]["message"]
    assert_untouched(read_only_server)


def test_tls_handshake_cut_by_a_restarting_server_is_retried(
    pg15: localpg.LocalPostgres, tls_proxy: FaultProxy
) -> None:
    tls_proxy.cut_handshakes(2)
    run = run_job(through(tls_proxy, pg15, DEADLINE_SECONDS="30"))
    assert run.code == 0, run
    assert tls_proxy.faults.handshake_cuts == 2
    assert len(retries(run)) == 2
    assert_exact(pg15)


# 3. A COMMIT whose reply is lost


def test_commit_whose_reply_is_lost_is_confirmed_and_reported(
    pg18: localpg.LocalPostgres, plain_proxy: FaultProxy
) -> None:
    pg, proxy = pg18, plain_proxy
    proxy.drop_reply_to(b"COMMIT")
    run = run_job(through(proxy, pg, DEADLINE_SECONDS="30"))
    assert run.code == 0, run
    assert proxy.faults.replies_dropped == 1
    assert_exact(pg)
    result = run.result
    assert result["commit_confirmed_after_reconnect"] is True
    created = {c["role"] for c in run.changes if c["action"] == "create_role"}
    assert created >= {"alice", "bob", "carol", "analytics"}, run.changes
    # A normal run says nothing of the kind.
    again = run_job(job_env(pg, IAM_USERS=USERS))
    assert again.changes == [] and "commit_confirmed_after_reconnect" not in again.result


def test_commit_lost_before_the_server_got_it_is_a_normal_retry(
    pg18: localpg.LocalPostgres, plain_proxy: FaultProxy
) -> None:
    pg, proxy = pg18, plain_proxy
    proxy.cut_on(b"COMMIT")
    run = run_job(through(proxy, pg, DEADLINE_SECONDS="30"))
    assert run.code == 0, run
    assert proxy.faults.cuts == 1
    assert "commit_confirmed_after_reconnect" not in run.result
    assert {c["role"] for c in run.changes if c["action"] == "create_role"} >= set(EXPECTED)
    assert_exact(pg)


# 4. Stop signals


@pytest.fixture
def held_lock(pg: localpg.LocalPostgres) -> Iterator[localpg.LocalPostgres]:
    with pg.master_connect() as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", (LOCK_KEY,))
        yield pg
        holder.execute("SELECT pg_advisory_unlock_all()")


@pytest.mark.parametrize(
    ("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)], ids=["sigterm", "sigint"]
)
def test_stop_signal_while_waiting_for_the_lock(
    held_lock: localpg.LocalPostgres, sig: signal.Signals, code: int
) -> None:
    pg = held_lock
    job = Job(job_env(pg, IAM_USERS=USERS, DEADLINE_SECONDS="120"))
    job.wait_for_event("lock_wait")
    signalled = time.monotonic()
    job.proc.send_signal(sig)
    run = job.finish(timeout=30)
    assert run.code == code, run
    assert time.monotonic() - signalled < 15
    assert run.result["status"] == "error"
    assert run.result["error"]["type"] == "interrupted"
    assert sig.name in run.result["error"]["message"]
    wait_for_no_job_sessions(pg)
    assert_untouched(pg)


def test_stop_signal_while_sleeping_between_retries() -> None:
    port = localpg.free_port()  # nothing listens: the job sleeps between attempts
    env = job_env(
        DB_HOST="127.0.0.1",
        DB_PORT=str(port),
        DB_USER="master",
        DB_PASSWORD="not-used-here",
        DB_SSLMODE="disable",
        DEADLINE_SECONDS="120",
    )
    job = Job(env)
    job.wait_for_event("retry")
    job.proc.send_signal(signal.SIGTERM)
    run = job.finish(timeout=30)
    assert run.code == 143, run
    assert run.result["error"]["type"] == "interrupted"


def test_stop_signal_during_a_statement_cancels_it(
    pg: localpg.LocalPostgres, tmp_path: Path
) -> None:
    init_sql = tmp_path / "slow.sql"
    init_sql.write_text(
        "CREATE ROLE slow_one;\nDO $$ BEGIN RAISE NOTICE 'sleeping'; END $$;\n"
        "SELECT pg_sleep(120);\n"
    )
    job = Job(job_env(pg, INIT_SQL=str(init_sql), DEADLINE_SECONDS="200"))
    job.wait_for_event("server_notice")
    time.sleep(0.3)
    job.proc.send_signal(signal.SIGTERM)
    run = job.finish(timeout=30)
    assert run.code == 143, run
    wait_for_no_job_sessions(pg)
    assert_untouched(pg, "slow_one")
