"""Failures end with the documented exit code, a clear message, no change to the
database and no secret in any output."""

from __future__ import annotations

import re
import socket
from pathlib import Path

import pytest

from tests.conftest import catalog, job_env, role, run_job
from tools import localpg


def test_wrong_password_exits_4_without_echoing_it(pg: localpg.LocalPostgres) -> None:
    wrong = "Wr0ng-but-secret-" + pg.master_password[:6]
    run = run_job(job_env(pg, DB_PASSWORD=wrong, IAM_USERS="alice"))
    assert run.code == 4, run
    assert run.result["error"]["type"] == "login_refused"
    assert "password authentication failed" in run.result["error"]["message"]
    for text in (run.stdout, run.stderr):
        assert wrong not in text
        assert pg.master_password not in text
    assert not any(e["event"] == "retry" for e in run.logs), "a refused login is not retried"
    assert role(catalog(pg), "alice") is None


def test_unknown_database_exits_4(pg: localpg.LocalPostgres) -> None:
    run = run_job(job_env(pg, DB_NAME="no_such_db"))
    assert run.code == 4, run
    assert "no_such_db" in run.result["error"]["message"]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_unreachable_server_exits_5_within_the_deadline() -> None:
    env = job_env(
        DB_HOST="127.0.0.1",
        DB_PORT=str(_closed_port()),
        DB_USER="master",
        DB_PASSWORD="not-used-anyway",
        DB_SSLMODE="disable",
        DEADLINE_SECONDS="3",
        CONNECT_TIMEOUT="2",
        IAM_USERS="alice",
    )
    run = run_job(env)
    assert run.code == 5, run
    assert run.result["error"]["type"] == "deadline_exceeded"
    assert "Connection refused" in run.result["error"]["message"]
    retries = [e for e in run.logs if e["event"] == "retry"]
    assert len(retries) >= 2
    assert all(e["reason"] and e["delay_s"] >= 0 for e in retries)
    # The deadline bounds the run; a generous margin covers interpreter start-up.
    assert run.elapsed < 3 + 5


def test_unresolvable_host_is_retried_then_gives_up() -> None:
    env = job_env(
        DB_HOST="cluster-not-created-yet.invalid",
        DB_USER="master",
        DB_PASSWORD="not-used-anyway",
        DB_SSLMODE="disable",
        DEADLINE_SECONDS="2",
    )
    run = run_job(env)
    assert run.code == 5, run
    assert re.search("resolve host|translate host name", run.result["error"]["message"])
    assert len([e for e in run.logs if e["event"] == "retry"]) >= 2


def test_certificate_that_does_not_verify_exits_4(
    pg15: localpg.LocalPostgres, tmp_path: Path
) -> None:
    import trustme  # noqa: PLC0415

    other_ca = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other_ca))
    run = run_job(job_env(pg15, DB_SSLROOTCERT=str(other_ca), IAM_USERS="alice"))
    assert run.code == 4, run
    assert "certificate verify failed" in run.result["error"]["message"]
    assert "DB_SSLROOTCERT" in run.result["error"]["message"]
    assert role(catalog(pg15), "alice") is None


def test_host_name_mismatch_exits_4(pg15: localpg.LocalPostgres) -> None:
    # The certificate names 127.0.0.1 and localhost; the server also listens on
    # 127.0.0.2, which the certificate does not name.
    run = run_job(job_env(pg15, DB_HOST="127.0.0.2"))
    assert run.code == 4, run
    assert "does not match host name" in run.result["error"]["message"]


def test_plaintext_to_a_tls_only_server_exits_4(pg15: localpg.LocalPostgres) -> None:
    run = run_job(job_env(pg15, DB_SSLMODE="disable"))
    assert run.code == 4, run
    assert "pg_hba.conf" in run.result["error"]["message"]


def test_missing_ca_bundle_is_a_config_error(pg15: localpg.LocalPostgres, tmp_path: Path) -> None:
    run = run_job(job_env(pg15, DB_SSLROOTCERT=str(tmp_path / "absent.pem")))
    assert run.code == 2, run
    assert run.result["error"]["message"].startswith("DB_SSLROOTCERT:")


INJECTIONS = [
    "alice; DROP ROLE master; --",
    'alice"; GRANT rds_superuser TO alice; --',
    "alice'||pg_sleep(1)||'",
    '[{"name": "x\\"; DROP ROLE master; --", "roles": []}]',
    '[{"name": "alice", "roles": ["rds_superuser\\" WITH ADMIN OPTION; --"]}]',
    "alice:app_readonly;DROP TABLE x",
    "Alice",
    "pg_monitor",
    "rds_admin",
    "public",
    "master",
    "alice:master",
    "alice,alice",
    "a" * 64,
]


@pytest.mark.parametrize("users", INJECTIONS)
def test_bad_or_hostile_iam_users_exit_2_with_catalog_unchanged(
    pg: localpg.LocalPostgres, users: str
) -> None:
    before = catalog(pg)
    run = run_job(job_env(pg, IAM_USERS=users))
    assert run.code == 2, run
    assert run.result["error"]["message"].startswith("IAM_USERS:")
    assert run.result["changes"] == []
    assert catalog(pg) == before


SETTINGS_ERRORS: list[tuple[dict[str, str | None], str]] = [
    ({"DB_PORT": "abc"}, "DB_PORT"),
    ({"DB_PORT": "0"}, "DB_PORT"),
    ({"DB_PORT": "65536"}, "DB_PORT"),
    ({"DB_PORT": ""}, "DB_PORT"),
    ({"DB_HOST": ""}, "DB_HOST"),
    ({"DB_HOST": "host name"}, "DB_HOST"),
    ({"DB_HOST": None}, "DB_HOST"),
    ({"DB_USER": None}, "DB_USER"),
    ({"DB_PASSWORD": None}, "DB_PASSWORD"),
    ({"DB_PASSWORD": ""}, "DB_PASSWORD"),
    ({"DB_NAME": "   "}, "DB_NAME"),
    ({"DB_SSLMODE": "verify-fulll"}, "DB_SSLMODE"),
    ({"DEADLINE_SECONDS": "-5"}, "DEADLINE_SECONDS"),
    ({"DEADLINE_SECONDS": "soon"}, "DEADLINE_SECONDS"),
    ({"DEADLINE_SECONDS": "1e9"}, "DEADLINE_SECONDS"),
    ({"CONNECT_TIMEOUT": "0"}, "CONNECT_TIMEOUT"),
    ({"CONNECT_TIMEOUT": "2.5"}, "CONNECT_TIMEOUT"),
    ({"PRUNE": "maybe"}, "PRUNE"),
    ({"LOG_FORMAT": "xml"}, "LOG_FORMAT"),
    ({"LOG_LEVEL": "LOUD"}, "LOG_LEVEL"),
    ({"INIT_SQL": "/nonexistent/init.sql"}, "INIT_SQL"),
    ({"DB_CLUSTER_ID": "not a cluster!"}, "DB_CLUSTER_ID"),
    ({"IAM_USERS": '[{"name": "a"'}, "IAM_USERS"),
    ({"IAM_USERS": '{"name": "a"}'}, "IAM_USERS"),
    ({"IAM_USERS": '[{"name": "a", "role": []}]'}, "IAM_USERS"),
    ({"IAM_USERS": "a,,b"}, "IAM_USERS"),
    ({"IAM_USERS": "a:"}, "IAM_USERS"),
    ({"DB_HOST": "   "}, "DB_HOST"),
    ({"DB_PORT": " "}, "DB_PORT"),
    ({"DB_PORT": "99999999999999999999"}, "DB_PORT"),
    ({"DEADLINE_SECONDS": "nan"}, "DEADLINE_SECONDS"),
    ({"CONNECT_TIMEOUT": "1e3"}, "CONNECT_TIMEOUT"),
    ({"DB_SSLMODE": "VERIFY-FULL"}, "DB_SSLMODE"),
    ({"DB_USER": "master\n"}, "DB_USER"),
    ({"INIT_SQL": "/"}, "INIT_SQL"),
    # Bytes that are not UTF-8 arrive as surrogate escapes, as Python reads them.
    ({"IAM_USERS": "caf\udce9"}, "IAM_USERS"),
    ({"DB_HOST": "db\udcff.example"}, "DB_HOST"),
]


@pytest.mark.parametrize(
    ("overrides", "setting"), SETTINGS_ERRORS, ids=[f"{s}={o[s]!r}" for o, s in SETTINGS_ERRORS]
)
def test_missing_or_malformed_setting_exits_2_naming_it(
    pg: localpg.LocalPostgres, overrides: dict[str, str | None], setting: str
) -> None:
    before = catalog(pg)
    env = job_env(pg, IAM_USERS="alice")
    for key, value in overrides.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    run = run_job(env)
    assert run.code == 2, run
    assert run.result["status"] == "error"
    assert run.result["error"]["message"].startswith(f"{setting}:"), run.result
    assert catalog(pg) == before
    assert pg.master_password not in run.stdout + run.stderr


def test_non_utf8_init_sql_is_a_config_error(pg: localpg.LocalPostgres, tmp_path: Path) -> None:
    init = tmp_path / "init.sql"
    init.write_bytes(b"SELECT '\xff\xfe';\n")
    run = run_job(job_env(pg, INIT_SQL=str(init)))
    assert run.code == 2, run
    assert "not UTF-8" in run.result["error"]["message"]


def test_text_logs_are_readable_and_redacted(pg: localpg.LocalPostgres) -> None:
    run = run_job(job_env(pg, LOG_FORMAT="text", IAM_USERS="alice"))
    assert run.code == 0, run
    assert " INFO    start  command=apply" in run.stderr
    assert pg.master_password not in run.stderr
