"""DB_TRANSPORT=data-api, as the job runs in production: the job as a subprocess, the
RDS Data API emulated by data-api-local over the real PostgreSQL (tools/dataapi_local.py),
the cluster and its managed secret in moto, judged by exit code, stdout JSON and the
catalog afterwards.

Where the emulator differs from AWS, and it matters, the test says so. Throughout:
the emulator reads no secret (it logs in as the master it was started with, so the
job's choice of secret is checked in the calls it makes, not by a login), and it has
none of AWS's limits, which the proxy in front of it scripts where a test needs them.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import awsemu
from tests.conftest import ROOT, catalog, job_env, managed, members_of, npm_tool, role, run_job
from tests.test_group_roles import MASTER, ask, privileges, sales_schema
from tools import localpg
from tools.dataapi_local import DataApiEmulator

_emulators: dict[int, DataApiEmulator] = {}


@pytest.fixture(scope="session")
def _all_emulators() -> Iterator[dict[int, DataApiEmulator]]:
    yield _emulators
    for emulator in _emulators.values():
        emulator.stop()


def emulator_for(
    server: localpg.LocalPostgres, every: dict[int, DataApiEmulator]
) -> DataApiEmulator:
    npm_tool("data-api-local/lib/index.js")
    if server.port not in every:
        every[server.port] = DataApiEmulator(server, str(ROOT / "tools" / "dataapi" / "server.js"))
    emulator = every[server.port]
    emulator.script.reset()
    return emulator


@pytest.fixture
def dapi(
    pg18: localpg.LocalPostgres, _all_emulators: dict[int, DataApiEmulator]
) -> DataApiEmulator:
    return emulator_for(pg18, _all_emulators)


@pytest.fixture
def dapi_any(
    pg: localpg.LocalPostgres, _all_emulators: dict[int, DataApiEmulator]
) -> DataApiEmulator:
    return emulator_for(pg, _all_emulators)


def make_cluster(aws: awsemu.Emulator, *, http_endpoint: bool = True) -> dict[str, Any]:
    """A provisioned Aurora PostgreSQL cluster with its managed secret. moto turns the
    HTTP endpoint on only for Serverless v1's old engine versions (and has no
    EnableHttpEndpoint call); AWS has it for provisioned and Serverless v2 clusters of
    Aurora PostgreSQL: where a test wants it on, the proxy reports it on."""
    rds = aws.admin("rds")
    rds.create_db_cluster(
        DBClusterIdentifier="data-cluster",
        Engine="aurora-postgresql",
        MasterUsername=MASTER,
        ManageMasterUserPassword=True,
        EnableIAMDatabaseAuthentication=True,
    )
    if http_endpoint:
        aws.state.rewrites.append(
            lambda service, operation, body: (
                body.replace(
                    b"<HttpEndpointEnabled>false</HttpEndpointEnabled>",
                    b"<HttpEndpointEnabled>true</HttpEndpointEnabled>",
                )
                if operation == "DescribeDBClusters"
                else body
            )
        )
    cluster: dict[str, Any] = rds.describe_db_clusters(DBClusterIdentifier="data-cluster")[
        "DBClusters"
    ][0]
    return cluster


def data_env(aws: awsemu.Emulator, dapi: DataApiEmulator, **more: str) -> dict[str, str]:
    """The job reaching AWS (moto, for the cluster) and the Data API (the emulator),
    with no DB_HOST, password or TLS setting at all."""
    env = job_env(
        None,
        DB_TRANSPORT="data-api",
        DB_CLUSTER_ID="data-cluster",
        AWS_ENDPOINT_URL_RDS_DATA=dapi.url,
        **awsemu.client_env(aws.url),
    )
    return env | more


USERS = "alice:app_readonly,bob:app_readwrite,carol:app_readonly:app_readwrite"


def test_plan_then_apply_twice_then_verify(
    pg: localpg.LocalPostgres, dapi_any: DataApiEmulator, aws: awsemu.Emulator
) -> None:
    cluster = make_cluster(aws)
    env = data_env(aws, dapi_any, IAM_USERS=USERS)
    before = catalog(pg)
    plan = run_job(env, "plan")
    assert plan.code == 0, plan
    assert catalog(pg) == before
    applied = run_job(env)
    assert applied.code == 0, applied
    assert applied.entries == plan.entries
    state = catalog(pg)
    for user, groups in (("alice", {"app_readonly"}), ("carol", {"app_readonly", "app_readwrite"})):
        assert role(state, user) is not None and managed(state, user)
        assert members_of(state, user) == {"rds_iam"} | groups
    again = run_job(env)
    assert again.code == 0 and again.changes == [], again
    verified = run_job(env, "verify")
    assert verified.code == 0, verified
    assert verified.result["findings"] == []
    # Every call named the cluster and its managed secret; no other AWS call read it.
    start = next(e for e in applied.logs if e["event"] == "start")
    assert start["transport"] == "data-api" and start["cluster_arn"] == cluster["DBClusterArn"]
    assert set(dapi_any.script.calls) <= {
        "BeginTransaction",
        "ExecuteStatement",
        "CommitTransaction",
        "RollbackTransaction",
    }
    assert ("secretsmanager", "GetSecretValue") not in aws.state.calls


def test_calls_are_constant_in_the_number_of_users(
    pg18: localpg.LocalPostgres, dapi: DataApiEmulator, aws: awsemu.Emulator
) -> None:
    make_cluster(aws)
    counts = []
    for n in (5, 500):
        users = ",".join(f"n{n}u{i}:app_readonly" for i in range(n))
        dapi.script.reset()
        run = run_job(data_env(aws, dapi, IAM_USERS=users))
        assert run.code == 0, run
        counts.append(len(dapi.script.calls))
    assert counts[0] == counts[1], counts


def test_group_roles_over_the_data_api(
    pg18: localpg.LocalPostgres, dapi: DataApiEmulator, aws: awsemu.Emulator
) -> None:
    make_cluster(aws)
    sales_schema(pg18)
    groups = {
        "analyst": [{"schemas": ["sales"], "access": "read"}],
        "writer": {"member_of": ["analyst"], "grants": [{"schemas": ["sales"], "access": "write"}]},
    }
    env = data_env(aws, dapi, GROUP_ROLES=json.dumps(groups), IAM_USERS="ann:analyst")
    run = run_job(env)
    assert run.code == 0, run
    assert ("grant_privilege", "postgres", "table sales.orders", "writer", "INSERT") in privileges(
        run.changes
    )
    assert ask(pg18, "SELECT has_table_privilege('writer', 'sales.orders', 'DELETE')")
    assert ask(pg18, "SELECT has_table_privilege('analyst', 'sales.big', 'SELECT')")
    assert run_job(env, "verify").code == 0
    # PRUNE over the Data API: what the document no longer gives goes.
    narrowed = {"analyst": [{"schemas": ["sales"], "access": "read"}], "writer": []}
    pruned = run_job(env | {"GROUP_ROLES": json.dumps(narrowed), "PRUNE": "true"})
    assert pruned.code == 0, pruned
    assert not ask(pg18, "SELECT has_table_privilege('writer', 'sales.orders', 'DELETE')")
    assert run_job(env | {"GROUP_ROLES": json.dumps(narrowed)}, "verify").code == 0


def test_every_database_the_document_names_in_a_transaction_of_its_own(
    pg18: localpg.LocalPostgres, dapi: DataApiEmulator, aws: awsemu.Emulator
) -> None:
    """Each call names its database: DB_NAME's transaction makes the roles, then the
    other database's its privileges, under that database's lock."""
    make_cluster(aws)
    with pg18.superuser_connect() as conn:
        conn.execute(f"CREATE DATABASE reports OWNER {MASTER}")
    with pg18.superuser_connect("reports") as conn:
        conn.execute(f"SET ROLE {MASTER}")
        conn.execute("CREATE SCHEMA rpt")
        conn.execute("CREATE TABLE rpt.daily (x int)")
    groups = {"analyst": [{"database": "reports", "schemas": ["rpt"], "access": "read"}]}
    env = data_env(aws, dapi, GROUP_ROLES=json.dumps(groups), IAM_USERS="ann:analyst")
    run = run_job(env)
    assert run.code == 0, run
    assert ("grant_privilege", "reports", "table rpt.daily", "analyst", "SELECT") in privileges(
        run.changes
    )
    assert ask(pg18, "SELECT has_table_privilege('analyst', 'rpt.daily', 'SELECT')", "reports")
    assert dapi.script.calls.count("CommitTransaction") == 2
    assert run_job(env, "verify").code == 0
    assert run_job(env).changes == []


def test_a_failing_init_sql_is_rolled_back_with_file_line_and_sqlstate(
    pg18: localpg.LocalPostgres, dapi: DataApiEmulator, aws: awsemu.Emulator, tmp_path: Path
) -> None:
    make_cluster(aws)
    script = tmp_path / "init.sql"
    script.write_text("CREATE ROLE made_first NOLOGIN;\n\nSELECT * FROM no_such_table;\n")
    run = run_job(data_env(aws, dapi, INIT_SQL=str(script)))
    assert run.code == 6, run
    message = run.result["error"]["message"]
    assert message.startswith(f"{script}:3:"), message
    assert "no_such_table" in message and "42P01" in message, message
    assert role(catalog(pg18), "made_first") is None
    assert dapi.script.calls[-1] == "RollbackTransaction"


def test_three_thousand_users_past_one_response(
    pg18: localpg.LocalPostgres, dapi: DataApiEmulator, aws: awsemu.Emulator
) -> None:
    """AWS ends a call whose answer is over 1 MiB (of the database's data); the
    emulator has no such limit, so the proxy refuses a larger answer as AWS does.
    verify's read of 3,000 users is about 0.9 MB of the API's JSON here (an
    environment string holds at most 128 KiB, which bounds their names), so the proxy
    puts the limit at 256 KiB: the read is past one response, and is read in pages."""
    make_cluster(aws)
    users = ",".join(f"u{i:04d}:app_readonly:app_readwrite" for i in range(3000))
    env = data_env(aws, dapi, IAM_USERS=users, DEADLINE_SECONDS="120")
    dapi.script.response_limit = 256 * 1024
    run = run_job(env, timeout=180)
    assert run.code == 0, run
    assert ask(pg18, "SELECT count(*) FROM pg_roles WHERE rolname ~ '^u[0-9]{4}$'") == 3000
    assert {c["role"] for c in run.changes if c["action"] == "create_role"} >= {
        f"u{i:04d}" for i in range(3000)
    }
    verified = run_job(env, "verify", timeout=180)
    assert verified.code == 0, verified
    assert verified.result["findings"] == []
    assert any(e["event"] == "result_in_pages" for e in verified.logs), verified.stderr[-2000:]
    assert any(s.startswith("DECLARE aurora_bootstrap_page_") for s in dapi.script.statements)


def test_a_resuming_cluster_is_waited_for(
    pg18: localpg.LocalPostgres, dapi: DataApiEmulator, aws: awsemu.Emulator
) -> None:
    """An Aurora Serverless v2 cluster resuming answers DatabaseResumingException
    (data-api-local never does: the proxy answers it, three times)."""
    make_cluster(aws)
    dapi.script.refuse["BeginTransaction"] = (400, "DatabaseResumingException", 3)
    run = run_job(data_env(aws, dapi, IAM_USERS="alice"))
    assert run.code == 0, run
    assert dapi.script.refused == {"DatabaseResumingException": 3}
    retries = [e for e in run.logs if e["event"] == "retry"]
    assert len(retries) == 3 and "DatabaseResumingException" in retries[0]["reason"]
    assert role(catalog(pg18), "alice") is not None


def test_a_throttled_call_is_retried_in_its_transaction(
    pg18: localpg.LocalPostgres, dapi: DataApiEmulator, aws: awsemu.Emulator
) -> None:
    make_cluster(aws)
    dapi.script.refuse["ExecuteStatement"] = (400, "ThrottlingException", 2)
    run = run_job(data_env(aws, dapi, IAM_USERS="alice"))
    assert run.code == 0, run
    assert dapi.script.refused == {"ThrottlingException": 2}
    # Refused before it ran, the call was made again in the same transaction.
    assert dapi.script.calls.count("BeginTransaction") == 1
    assert role(catalog(pg18), "alice") is not None


def test_a_lost_commit_answer_is_confirmed_and_reported(
    pg18: localpg.LocalPostgres, dapi: DataApiEmulator, aws: awsemu.Emulator
) -> None:
    make_cluster(aws)
    dapi.script.lose["CommitTransaction"] = 1
    run = run_job(data_env(aws, dapi, IAM_USERS="alice,bob"))
    assert run.code == 0, run
    assert run.result["commit_confirmed_after_reconnect"] is True
    assert {c["role"] for c in run.changes if c["action"] == "create_role"} >= {"alice", "bob"}
    state = catalog(pg18)
    assert members_of(state, "alice") == {"rds_iam"} and members_of(state, "bob") == {"rds_iam"}
    assert run_job(data_env(aws, dapi, IAM_USERS="alice,bob")).changes == []


def test_a_statement_past_the_calls_45_seconds_is_followed_until_it_ends(
    pg18: localpg.LocalPostgres, dapi: DataApiEmulator, aws: awsemu.Emulator
) -> None:
    """AWS ends a call at 45 s; sent with continueAfterTimeout its statement runs on.
    The proxy forwards privileges.sql's statement and answers as AWS would then."""
    make_cluster(aws)
    sales_schema(pg18)
    groups = {"analyst": [{"schemas": ["sales"], "access": "read"}]}
    env = data_env(aws, dapi, GROUP_ROLES=json.dumps(groups))
    dapi.script.time_out.append("current_setting('bootstrap.group_roles')::jsonb")  # its DO
    run = run_job(env)
    assert run.code == 0, run
    assert any(e["event"] == "statement_runs_on" for e in run.logs)
    assert ask(pg18, "SELECT has_table_privilege('analyst', 'sales.orders', 'SELECT')")


def test_the_deadline_rolls_the_transaction_back(
    pg18: localpg.LocalPostgres, dapi: DataApiEmulator, aws: awsemu.Emulator
) -> None:
    """No statement can be cancelled over the Data API: the lock held by another
    session past the deadline ends in RollbackTransaction and exit 5."""
    make_cluster(aws)
    with pg18.superuser_connect() as holder:
        holder.autocommit = False
        holder.execute(
            "SELECT pg_advisory_xact_lock(%s)", (int.from_bytes(b"aurora-b", "big", signed=True),)
        )
        run = run_job(data_env(aws, dapi, IAM_USERS="alice", DEADLINE_SECONDS="6"))
        holder.rollback()
    assert run.code == 5, run
    assert dapi.script.calls[-1] == "RollbackTransaction"
    assert any(e["event"] == "transaction_rolled_back" for e in run.logs), run.stderr
    assert role(catalog(pg18), "alice") is None


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        ({"DB_IAM_AUTH": "true"}, "DB_IAM_AUTH"),
        ({"DB_PASSWORD": "not-used-here"}, "DB_PASSWORD"),
        ({"DB_CLUSTER_ID": ""}, "DB_CLUSTER_ID"),
        ({"DB_CLUSTER_ARN": "arn:aws:rds:us-east-1:123456789012:cluster:c"}, "DB_CLUSTER_ARN"),
        ({"DB_CLUSTER_ID": "", "DB_CLUSTER_ARN": "not-an-arn"}, "DB_CLUSTER_ARN"),
    ],
    ids=["iam-auth", "password", "no-cluster", "both", "bad-arn"],
)
def test_settings_the_data_api_cannot_take_exit_2_before_any_call(
    dapi: DataApiEmulator, aws: awsemu.Emulator, settings: dict[str, str], named: str
) -> None:
    env = data_env(aws, dapi, IAM_USERS="alice") | settings
    env = {k: v for k, v in env.items() if v != ""}
    if named == "DB_CLUSTER_ID":
        named = "DB_TRANSPORT"
    run = run_job(env)
    assert run.code == 2, run
    assert run.result["error"]["message"].startswith(f"{named}: "), run.result
    assert dapi.script.calls == [] and aws.state.calls == []


def test_verify_connect_needs_a_network_path(dapi: DataApiEmulator, aws: awsemu.Emulator) -> None:
    run = run_job(data_env(aws, dapi, IAM_USERS="alice"), "verify", "--connect")
    assert run.code == 2, run
    assert run.result["error"]["message"].startswith("DB_TRANSPORT: verify --connect")


def test_a_cluster_without_its_http_endpoint_exits_3_saying_how_to_enable_it(
    pg18: localpg.LocalPostgres, dapi: DataApiEmulator, aws: awsemu.Emulator
) -> None:
    cluster = make_cluster(aws, http_endpoint=False)
    run = run_job(data_env(aws, dapi, IAM_USERS="alice"))
    assert run.code == 3, run
    message = run.result["error"]["message"]
    assert "HTTP endpoint is off" in message and cluster["DBClusterArn"] in message
    assert dapi.script.calls == []


def test_the_cluster_arn_and_a_secret_need_no_rds_call(
    pg18: localpg.LocalPostgres, dapi: DataApiEmulator, aws: awsemu.Emulator
) -> None:
    """With DB_CLUSTER_ARN and DB_SECRET_ARN the job calls the Data API alone, and the
    master is whoever the secret logs in as (the emulator: the master it runs as); the
    connection's settings are not read."""
    arn = "arn:aws:rds:us-east-1:123456789012:cluster:elsewhere"
    secret = "arn:aws:secretsmanager:us-east-1:123456789012:secret:master-abc"
    env = data_env(aws, dapi, IAM_USERS="alice", DB_CLUSTER_ARN=arn, DB_SECRET_ARN=secret)
    del env["DB_CLUSTER_ID"]
    # What only a connection reads is neither used nor checked: a host that does not
    # resolve, a CA bundle that does not exist.
    env |= {"DB_HOST": "nowhere.invalid", "DB_SSLROOTCERT": "/nonexistent/ca.pem"}
    run = run_job(env)
    assert run.code == 0, run
    assert aws.state.calls == []
    start = next(e for e in run.logs if e["event"] == "start")
    assert start["user"] == MASTER and start["cluster_arn"] == arn
    assert role(catalog(pg18), "alice") is not None


def test_policy_gives_the_data_api_calls_and_the_secret(
    pg18: localpg.LocalPostgres, dapi: DataApiEmulator, aws: awsemu.Emulator
) -> None:
    """`policy` with DB_TRANSPORT=data-api adds what the job's own calls need: the four
    calls on the cluster (each an operation of botocore's rds-data model) and reading
    the secret, which the Data API does as its caller."""
    import botocore.session  # noqa: PLC0415

    cluster = make_cluster(aws)
    run = run_job(data_env(aws, dapi, IAM_USERS="alice"), "policy")
    assert run.code == 0, run
    statements = {s["Sid"]: s for s in json.loads(run.stdout)["Statement"]}
    calls = statements["AuroraBootstrapDataApi"]
    assert calls["Resource"] == cluster["DBClusterArn"]
    model = botocore.session.get_session().get_service_model("rds-data")
    assert {a.split(":")[1] for a in calls["Action"]} <= set(model.operation_names)
    assert {a.split(":")[0] for a in calls["Action"]} == {model.signing_name}
    secret = statements["AuroraBootstrapDataApiSecret"]
    assert secret == {
        "Sid": "AuroraBootstrapDataApiSecret",
        "Effect": "Allow",
        "Action": "secretsmanager:GetSecretValue",
        "Resource": cluster["MasterUserSecret"]["SecretArn"],
    }
    assert statements["AuroraIamConnect"]["Resource"][0].endswith("/alice")
