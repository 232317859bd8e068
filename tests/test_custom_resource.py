"""custom-resource, the worker of Custom::AuroraBootstrap, run as a subprocess against
real PostgreSQL as the launcher's task runs it: the request in CFN_REQUEST, the
answer PUT to a loopback server standing in for CloudFormation's pre-signed URL."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import awsemu, cfnserver
from tests.cfnserver import STACK, ResponseServer
from tests.conftest import Job, JobRun, catalog, job_env, members_of, role, run_job
from tests.faultproxy import FaultProxy
from tests.test_apply import _lock_key
from tests.test_aws import make_cluster
from tools import localpg


@pytest.fixture
def cfn() -> Iterator[ResponseServer]:
    server = ResponseServer()
    yield server
    server.stop()


def cfn_request(
    url: str, request_type: str = "Create", physical: str | None = None, **properties: Any
) -> str:
    """The request as CFN_REQUEST carries it."""
    return json.dumps(cfnserver.request(url, request_type, physical, **properties))


def worker(pg: localpg.LocalPostgres | None, request: str, **env: str) -> dict[str, str]:
    return job_env(pg, CFN_REQUEST=request, **env)


def test_create_applies_and_answers_success_with_a_stable_id(
    pg: localpg.LocalPostgres, cfn: ResponseServer
) -> None:
    request = cfn_request(
        cfn.url,
        IamUsers=["app_user:app_readwrite", "report_user:app_reporting"],
        GroupRoles={
            "app_readwrite": [{"schemas": ["public"], "access": "write"}],
            "app_reporting": [{"schemas": ["public"], "access": "read"}],
        },
        Prune="false",
    )
    run = run_job(worker(pg, request, IAM_USERS="ignored_user"), "custom-resource")
    assert run.code == 0, run
    state = catalog(pg)
    assert members_of(state, "app_user") == {"rds_iam", "app_readwrite"}
    assert members_of(state, "report_user") == {"rds_iam", "app_reporting"}
    assert role(state, "ignored_user") is None  # the property wins over IAM_USERS
    [put] = cfn.puts
    # Signed for an empty content type, as CloudFormation's own helper sends.
    assert put.headers["content-type"] == ""
    answer, sent = put.json, json.loads(request)
    assert answer["Status"] == "SUCCESS", answer
    for key in ("StackId", "RequestId", "LogicalResourceId"):
        assert answer[key] == sent[key]
    assert answer["Data"]["Changes"] == str(len(run.changes)) and len(run.changes) > 4
    assert answer["Data"]["Version"] == run.result["version"]
    assert run.result["response"]["physical_resource_id"] == answer["PhysicalResourceId"]
    # A Create of the same resource again (CloudFormation retrying) names it the same.
    again = run_job(worker(pg, cfn_request(cfn.url, IamUsers="app_user")), "custom-resource")
    assert again.code == 0, again
    assert cfn.puts[1].json["PhysicalResourceId"] == answer["PhysicalResourceId"]


def test_update_keeps_the_physical_id_and_applies_the_new_properties(
    pg: localpg.LocalPostgres, cfn: ResponseServer
) -> None:
    assert run_job(worker(pg, cfn_request(cfn.url, IamUsers="alice")), "custom-resource").code == 0
    physical = cfn.puts[0].json["PhysicalResourceId"]
    request = cfn_request(cfn.url, "Update", physical, IamUsers="alice,bob", Prune="true")
    run = run_job(worker(pg, request), "custom-resource")
    assert run.code == 0, run
    answer = cfn.puts[1].json
    assert answer["Status"] == "SUCCESS"
    # The same id: CloudFormation would otherwise take it for a replacement and send
    # the old resource a Delete.
    assert answer["PhysicalResourceId"] == physical
    assert "rds_iam" in members_of(catalog(pg), "bob")
    assert answer["Data"]["Changes"] == str(len(run.changes))


def test_delete_changes_nothing_and_needs_no_database(
    pg: localpg.LocalPostgres, cfn: ResponseServer
) -> None:
    assert run_job(worker(pg, cfn_request(cfn.url, IamUsers="alice")), "custom-resource").code == 0
    before = catalog(pg)
    physical = cfn.puts[0].json["PhysicalResourceId"]
    # No database settings at all, and a property that would fail a Create: a stack
    # must always be deletable.
    request = cfn_request(cfn.url, "Delete", physical, IamUsers="NOT VALID", Other="x")
    run = run_job(job_env(CFN_REQUEST=request), "custom-resource")
    assert run.code == 0, run
    assert catalog(pg) == before
    answer = cfn.puts[1].json
    assert answer["Status"] == "SUCCESS"
    assert answer["PhysicalResourceId"] == physical
    assert run.result["changes"] == []


@pytest.mark.parametrize(
    ("properties", "named"),
    [
        ({"IamUsers": "alice", "Users": "bob"}, "ResourceProperties.Users"),
        ({"IamUsers": "alice,Bad-Name"}, "ResourceProperties.IamUsers"),
        ({"IamUsers": "alice", "GroupRoles": {"app_x": [{"access": "all"}]}}, "GroupRoles"),
        ({"IamUsers": "alice", "Prune": ["yes"]}, "ResourceProperties.Prune"),
    ],
    ids=["unknown-property", "bad-iam-users", "bad-group-roles", "bad-prune"],
)
def test_a_bad_property_fails_the_request_naming_it(
    pg: localpg.LocalPostgres, cfn: ResponseServer, properties: dict[str, Any], named: str
) -> None:
    before = catalog(pg)
    run = run_job(worker(pg, cfn_request(cfn.url, **properties)), "custom-resource")
    assert run.code == 2, run
    [put] = cfn.puts
    answer = put.json
    assert answer["Status"] == "FAILED"
    assert named in answer["Reason"], answer["Reason"]
    assert answer["Reason"].startswith("config_error (exit 2): ")
    assert answer["PhysicalResourceId"].startswith("aurora-bootstrap-DatabaseUsers-")
    assert catalog(pg) == before


def run_with_init_sql(
    pg: localpg.LocalPostgres, cfn: ResponseServer, script: Path, text: str
) -> JobRun:
    """A Create for alice, with `text` as INIT_SQL."""
    script.write_text(text)
    request = cfn_request(cfn.url, IamUsers="alice")
    return run_job(worker(pg, request, INIT_SQL=str(script)), "custom-resource")


def test_a_failing_init_sql_answers_failed_with_file_and_line(
    pg: localpg.LocalPostgres, cfn: ResponseServer, tmp_path: Path
) -> None:
    script = "CREATE ROLE made_then_undone;\nSELECT 1 / 0;\n"
    run = run_with_init_sql(pg, cfn, tmp_path / "init.sql", script)
    assert run.code == 6, run
    answer = cfn.puts[0].json
    assert answer["Status"] == "FAILED"
    assert "init.sql:2" in answer["Reason"] and "22012" in answer["Reason"]
    assert role(catalog(pg), "made_then_undone") is None


def test_a_long_error_is_cut_so_the_body_stays_within_4096_bytes(
    pg: localpg.LocalPostgres, cfn: ResponseServer, tmp_path: Path
) -> None:
    # Non-ASCII too: JSON escapes it, so the cut must count bytes as sent.
    script = "DO $$ BEGIN RAISE EXCEPTION '%', repeat('é—x', 4000); END $$;\n"
    run = run_with_init_sql(pg, cfn, tmp_path / "init.sql", script)
    assert run.code == 6, run
    [put] = cfn.puts
    assert 3500 < len(put.body) <= 4096, len(put.body)
    answer = put.json
    assert answer["Status"] == "FAILED" and answer["Reason"].endswith("...(cut)")
    assert answer["Reason"].startswith("init_sql_error (exit 6): ")
    assert answer["StackId"] == STACK and answer["Data"]["Changes"] == "0"


def test_sigterm_while_waiting_for_the_lock_answers_failed_then_exits_143(
    pg: localpg.LocalPostgres, cfn: ResponseServer
) -> None:
    env = worker(pg, cfn_request(cfn.url, IamUsers="alice"), DEADLINE_SECONDS="60")
    with pg.superuser_connect() as conn:
        conn.autocommit = False
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_lock_key(),))
        job = Job(env, "custom-resource")
        job.wait_for_event("lock_wait")
        job.proc.send_signal(signal.SIGTERM)
        run = job.finish()
        conn.rollback()
    assert run.code == 143, run
    answer = cfn.puts[0].json
    assert answer["Status"] == "FAILED"
    assert "SIGTERM" in answer["Reason"] and "(exit 143)" in answer["Reason"]
    assert role(catalog(pg), "alice") is None


def test_a_stop_whose_cleanup_hangs_still_answers_failed_before_the_task_is_killed(
    pg18: localpg.LocalPostgres, plain_proxy: FaultProxy, cfn: ResponseServer, tmp_path: Path
) -> None:
    """SIGTERM while a statement runs, and the network to the database then stalls, so
    that cancelling the statement hangs: the hard stop answers FAILED and exits 143
    well within ECS's 30 s before SIGKILL."""
    script = tmp_path / "init.sql"
    script.write_text("DO $$ BEGIN RAISE NOTICE 'sleeping'; END $$;\nSELECT pg_sleep(60);\n")
    env = worker(
        pg18,
        cfn_request(cfn.url, IamUsers="alice"),
        INIT_SQL=str(script),
        DB_PORT=str(plain_proxy.port),
        DEADLINE_SECONDS="120",
    )
    job = Job(env, "custom-resource")
    job.wait_for_event("server_notice")
    time.sleep(0.3)
    plain_proxy.delay(60)  # the cancel request and every reply from now on
    signalled = time.monotonic()
    job.proc.send_signal(signal.SIGTERM)
    try:
        run = job.finish(timeout=40)
    finally:
        # The statement the cancel never reached still sleeps on the server, holding
        # the lock; the server would notice the lost client only when it ends.
        with pg18.superuser_connect() as conn:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE query LIKE 'SELECT pg_sleep(60)%'"
            )
    assert run.code == 143, run
    assert time.monotonic() - signalled < 20
    # libpq itself writes one plain line here ("query cancellation failed: ...").
    events = {json.loads(line)["event"] for line in run.stderr.splitlines() if line[:1] == "{"}
    assert "hard_stop" in events
    [put] = cfn.puts
    assert put.json["Status"] == "FAILED" and "SIGTERM" in put.json["Reason"]
    assert run.result["response"]["status"] == "FAILED"


def test_an_answer_refused_with_5xx_is_sent_again(
    pg: localpg.LocalPostgres, cfn: ResponseServer
) -> None:
    cfn.replies.statuses = [503, 500]
    run = run_job(worker(pg, cfn_request(cfn.url, IamUsers="alice")), "custom-resource")
    assert run.code == 0, run
    assert [p.json["Status"] for p in cfn.puts] == ["SUCCESS"] * 3
    assert run.result["response"]["attempts"] == 3
    retries = [line for line in run.logs if line["event"] == "retry"]
    assert [r["reason"] for r in retries] == [
        "HTTP 503 Service Unavailable",
        "HTTP 500 Internal Server Error",
    ]


def test_an_answer_refused_with_4xx_is_not_sent_again(
    pg: localpg.LocalPostgres, cfn: ResponseServer
) -> None:
    cfn.replies.statuses = [403]  # an expired pre-signed URL
    run = run_job(worker(pg, cfn_request(cfn.url, IamUsers="alice")), "custom-resource")
    assert run.code == 11, run
    assert len(cfn.puts) == 1
    assert run.result["error"]["type"] == "response_not_delivered"
    assert "HTTP 403" in run.result["error"]["message"]
    assert run.result["response"] == {
        "status": "SUCCESS",
        "delivered": False,
        "response_attempts": 1,
    }


def test_a_response_url_that_never_answers_is_given_up_within_the_deadline(
    pg: localpg.LocalPostgres, cfn: ResponseServer
) -> None:
    cfn.replies.silent = True
    run = run_job(
        worker(pg, cfn_request(cfn.url, IamUsers="alice"), DEADLINE_SECONDS="8"), "custom-resource"
    )
    assert run.code == 11, run
    assert run.elapsed < 8 + 5, run.elapsed  # the deadline, and process start-up
    assert run.result["error"]["type"] == "response_not_delivered"
    assert "answer's share of DEADLINE_SECONDS" in run.result["error"]["message"]
    assert cfn.puts and {p.json["Status"] for p in cfn.puts} == {"SUCCESS"}
    # The run itself succeeded and committed: the result line still says what changed.
    assert role(catalog(pg), "alice") is not None and run.changes


def test_the_response_urls_signature_is_never_logged(
    pg: localpg.LocalPostgres, cfn: ResponseServer
) -> None:
    cfn.replies.statuses = [500]
    run = run_job(worker(pg, cfn_request(cfn.url, IamUsers="alice")), "custom-resource")
    assert run.code == 0, run
    assert cfn.signature not in run.stdout + run.stderr
    assert "127.0.0.1" in run.stderr  # where it answered is logged, without the query


@pytest.mark.parametrize(
    ("request_text", "problem"),
    [
        (None, "not set"),
        ("{not json", "not valid JSON"),
        (json.dumps({"RequestType": "Create"}), "missing or not a string: ResponseURL"),
        (
            json.dumps(
                {
                    "RequestType": "Replace",
                    "ResponseURL": "https://x",
                    "StackId": STACK,
                    "RequestId": "r",
                    "LogicalResourceId": "L",
                }
            ),
            "RequestType 'Replace'",
        ),
    ],
    ids=["unset", "not-json", "no-url", "bad-type"],
)
def test_an_unreadable_request_exits_2_and_answers_nothing(
    pg: localpg.LocalPostgres, request_text: str | None, problem: str
) -> None:
    env = job_env(pg, IAM_USERS="alice")
    if request_text is not None:
        env["CFN_REQUEST"] = request_text
    run = run_job(env, "custom-resource")
    assert run.code == 2, run
    assert run.result["error"]["message"].startswith("CFN_REQUEST: ")
    assert problem in run.result["error"]["message"]
    assert role(catalog(pg), "alice") is None


def _kept(aws: awsemu.Emulator, cfn: ResponseServer, **properties: Any) -> tuple[str, str]:
    """A request as the launcher sends it: its ResponseURL kept in SSM, not in it."""
    sent = cfnserver.request(cfn.url, "Create", None, **properties)
    name = f"/aurora-bootstrap/db/requests/{sent['RequestId']}"
    aws.admin("ssm").put_parameter(Name=name, Value=sent.pop("ResponseURL"), Type="SecureString")
    return json.dumps(sent | {"ResponseURLParameter": name}), name


def test_the_response_url_kept_by_the_launcher_is_read_then_deleted(
    pg18: localpg.LocalPostgres, cfn: ResponseServer, aws: awsemu.Emulator
) -> None:
    request, name = _kept(aws, cfn, IamUsers="alice")
    assert cfn.signature not in request
    run = run_job(worker(pg18, request, **awsemu.client_env(aws.url)), "custom-resource")
    assert run.code == 0, run
    [put] = cfn.puts
    assert put.json["Status"] == "SUCCESS"
    assert role(catalog(pg18), "alice") is not None
    # Deleted once answered: that is how the launcher knows the task answered.
    assert not aws.admin("ssm").get_parameters(Names=[name])["Parameters"]
    assert cfn.signature not in run.stdout + run.stderr
    assert ("ssm", "GetParameter") in aws.state.calls and (
        "ssm",
        "DeleteParameter",
    ) in aws.state.calls


def test_a_response_url_that_cannot_be_read_answers_nothing(
    pg18: localpg.LocalPostgres, cfn: ResponseServer, aws: awsemu.Emulator
) -> None:
    """The launcher still holds it, and answers FAILED when the task stops."""
    request, name = _kept(aws, cfn, IamUsers="alice")
    aws.admin("ssm").delete_parameter(Name=name)
    run = run_job(worker(pg18, request, **awsemu.client_env(aws.url)), "custom-resource")
    assert run.code == 3, run
    assert "not found" in run.result["error"]["message"]
    assert cfn.puts == [] and role(catalog(pg18), "alice") is None


def test_the_resource_names_the_secret_it_stands_beside(
    pg18: localpg.LocalPostgres, cfn: ResponseServer, aws: awsemu.Emulator
) -> None:
    """SecretArn, in the stack that makes the cluster: the master's secret, read by the
    worker; no DB_PASSWORD anywhere."""
    login = {"username": localpg.MASTER_USER, "password": pg18.master_password}
    secret = aws.admin("secretsmanager").create_secret(
        Name="cluster-master", SecretString=json.dumps(login)
    )["ARN"]
    env = worker(pg18, cfn_request(cfn.url, IamUsers="alice", SecretArn=secret))
    env |= awsemu.client_env(aws.url)
    del env["DB_PASSWORD"]
    run = run_job(env, "custom-resource")
    assert run.code == 0, run
    assert ("secretsmanager", "GetSecretValue") in aws.state.calls
    assert cfn.puts[0].json["Status"] == "SUCCESS"
    assert role(catalog(pg18), "alice") is not None


def test_the_resource_names_the_cluster_it_stands_beside(
    pg18: localpg.LocalPostgres, cfn: ResponseServer, aws: awsemu.Emulator
) -> None:
    """ClusterId: the cluster's managed secret, found through DescribeDBClusters. The
    endpoint stays DB_HOST's (moto's cluster has no database behind it)."""
    make_cluster(aws, pg18, name="same-stack")  # its managed secret holds the login
    env = worker(pg18, cfn_request(cfn.url, IamUsers="alice", ClusterId="same-stack"))
    env |= awsemu.client_env(aws.url)
    del env["DB_PASSWORD"]
    run = run_job(env, "custom-resource")
    assert run.code == 0, run
    assert ("rds", "DescribeDBClusters") in aws.state.calls
    assert cfn.puts[0].json["Status"] == "SUCCESS"


def test_a_rollback_that_cannot_apply_answers_success_saying_so(
    cfn: ResponseServer,
) -> None:
    """The Update of a rollback, to a database the task cannot reach: the stack must
    not end in UPDATE_ROLLBACK_FAILED, so the answer is SUCCESS, with why; the result
    line keeps the run's own exit code."""
    sent = cfnserver.request(cfn.url, "Update", "aurora-bootstrap-DatabaseUsers-0123")
    sent["Rollback"] = True
    port = localpg.free_port()  # nothing listens there
    env = job_env(
        CFN_REQUEST=json.dumps(sent | {"ResourceProperties": {"IamUsers": "alice"}}),
        DB_HOST="127.0.0.1",
        DB_PORT=str(port),
        DB_USER="master",
        DB_PASSWORD="unused-password",
        DB_SSLMODE="disable",
        DEADLINE_SECONDS="8",
    )
    run = run_job(env, "custom-resource")
    assert run.code == 5, run
    [put] = cfn.puts
    assert put.json["Status"] == "SUCCESS"
    assert "rollback did not apply the old properties" in put.json["Reason"]
    assert put.json["PhysicalResourceId"] == "aurora-bootstrap-DatabaseUsers-0123"
