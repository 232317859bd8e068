"""What the fault tests share: the users they provision, what the catalog must then
hold, and the job's environment through a fault proxy."""

from __future__ import annotations

import time

from tests.conftest import JobRun, catalog, job_env, members_of, role
from tests.faultproxy import FaultProxy
from tools import localpg

USERS = "alice:app_readonly,bob:app_readwrite:analytics,carol"
EXPECTED = {
    "alice": {"rds_iam", "app_readonly"},
    "bob": {"rds_iam", "app_readwrite", "analytics"},
    "carol": {"rds_iam"},
}


def through(proxy: FaultProxy, pg: localpg.LocalPostgres, **overrides: str) -> dict[str, str]:
    return job_env(pg, IAM_USERS=USERS, DB_PORT=str(proxy.port), **overrides)


def assert_exact(pg: localpg.LocalPostgres) -> None:
    state = catalog(pg)
    for user, groups in EXPECTED.items():
        assert role(state, user)[1] is True, user  # type: ignore[index]
        assert members_of(state, user) == groups


def assert_untouched(pg: localpg.LocalPostgres, *names: str) -> None:
    state = catalog(pg)
    for name in names or [*EXPECTED, "analytics", "app_readonly", "app_readwrite"]:
        assert role(state, name) is None, f"{name} left behind"


def retries(run: JobRun) -> list[dict[str, object]]:
    return [e for e in run.logs if e.get("event") == "retry"]


def job_sessions(pg: localpg.LocalPostgres) -> int:
    with pg.superuser_connect() as conn:
        row = conn.execute(
            "SELECT count(*)::int FROM pg_stat_activity WHERE application_name = 'aurora-bootstrap'"
        ).fetchone()
    assert row is not None
    count: int = row[0]  # type: ignore[assignment]
    return count


def wait_for_no_job_sessions(pg: localpg.LocalPostgres, timeout: float = 10) -> None:
    """The server notices a lost client and rolls its transaction back."""
    deadline = time.monotonic() + timeout
    while job_sessions(pg) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert job_sessions(pg) == 0, "a session of the job is still open on the server"
