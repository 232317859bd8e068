"""Faults, restarts, contention and load: the job converges or fails cleanly, never
leaving a partial state."""

from __future__ import annotations

import pytest

from tests.conftest import Job, catalog, job_env, members_of, run_job
from tests.faultproxy import FaultProxy
from tests.scenario import (
    USERS,
    assert_exact,
    assert_untouched,
    retries,
    through,
    wait_for_no_job_sessions,
)
from tools import localpg


def test_cluster_resuming_from_auto_pause(pg: localpg.LocalPostgres, proxy: FaultProxy) -> None:
    proxy.refuse_for(3)
    run = run_job(through(proxy, pg, DEADLINE_SECONDS="30"))
    assert run.code == 0, run
    assert retries(run), "the refused connections must be retried and logged"
    assert all("Connection refused" in str(e["reason"]) for e in retries(run))
    assert_exact(pg)


def test_cluster_that_stays_down_exits_5(pg: localpg.LocalPostgres, proxy: FaultProxy) -> None:
    proxy.refuse_for(60)
    run = run_job(through(proxy, pg, DEADLINE_SECONDS="2"))
    assert run.code == 5, run
    assert_untouched(pg)


def test_every_packet_delayed(pg: localpg.LocalPostgres, proxy: FaultProxy) -> None:
    proxy.delay(0.02)
    run = run_job(through(proxy, pg, DEADLINE_SECONDS="60"))
    assert run.code == 0, run
    assert_exact(pg)


@pytest.mark.parametrize(
    "marker",
    [b"bootstrap.iam_users", b"rds_iam disables password login", b"COMMIT"],
    ids=["after-the-lock", "mid-init-sql", "at-commit"],
)
def test_connection_cut_mid_transaction_is_retried_whole(
    pg18: localpg.LocalPostgres, plain_proxy: FaultProxy, marker: bytes
) -> None:
    pg, proxy = pg18, plain_proxy
    proxy.cut_on(marker)
    run = run_job(through(proxy, pg, DEADLINE_SECONDS="30"))
    assert run.code == 0, run
    assert proxy.faults.cuts == 1
    assert len(retries(run)) == 1
    assert_exact(pg)
    assert run_job(job_env(pg, IAM_USERS=USERS)).changes == []


def test_connection_cut_mid_init_sql_leaves_nothing_behind(
    pg18: localpg.LocalPostgres, plain_proxy: FaultProxy
) -> None:
    """The cut transaction is rolled back by the server; with no way back in, the job
    gives up at the deadline and the catalog is as it was."""
    pg, proxy = pg18, plain_proxy
    proxy.cut_on(b"rds_iam disables password login", then_refuse=True)
    run = run_job(through(proxy, pg, DEADLINE_SECONDS="3"))
    assert run.code == 5, run
    assert proxy.faults.cuts == 1
    wait_for_no_job_sessions(pg)  # the server notices the lost client, rolls back
    assert_untouched(pg)


def test_server_restart_while_waiting_to_connect(pg: localpg.LocalPostgres) -> None:
    pg.stop()
    try:
        job = Job(job_env(pg, IAM_USERS=USERS, DEADLINE_SECONDS="60"))
        job.wait_for_event("retry")
    finally:
        pg.start()
    run = job.finish()
    assert run.code == 0, run
    assert_exact(pg)


def test_sixteen_concurrent_applies_of_200_users(pg: localpg.LocalPostgres) -> None:
    users = ",".join(f"load_{i:03d}:app_readonly" for i in range(200))
    env = job_env(pg, IAM_USERS=users, DEADLINE_SECONDS="240")
    jobs = [Job(env) for _ in range(16)]
    runs = [job.finish(timeout=300) for job in jobs]
    assert [r.code for r in runs] == [0] * 16, "\n".join(str(r) for r in runs if r.code)
    assert sum(1 for r in runs if r.changes) == 1, "the lock lets exactly one do the work"
    for run in runs:
        assert "unique" not in run.stderr.lower()
        assert "23505" not in run.stderr
    state = catalog(pg)
    loaded = {r[0] for r in state["roles"] if r[0].startswith("load_")}
    assert loaded == {f"load_{i:03d}" for i in range(200)}
    for i in range(200):
        assert members_of(state, f"load_{i:03d}") == {"rds_iam", "app_readonly"}
