"""GROUP_ROLES documents that are not what they seem: duplicate keys (which JSON and
YAML parsers settle silently, by keeping the last), nesting deeper than the grammar
(a parser's recursion), a document over 1 MiB, and YAML aliases that expand past it.
Each exits 2 naming the setting, before any connection, with no traceback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import catalog, job_env, run_job
from tools import localpg


def refused(text: str, setting: str = "GROUP_ROLES", tmp_path: Path | None = None) -> str:
    env = job_env(DB_HOST="127.0.0.1", DB_USER="master", DB_PASSWORD="unused", DB_PORT="1")
    if setting == "GROUP_ROLES_FILE":
        assert tmp_path is not None
        document = tmp_path / "groups.yaml"
        document.write_text(text)
        env["GROUP_ROLES_FILE"] = str(document)
    else:
        env["GROUP_ROLES"] = text
    run = run_job(env, "plan")
    assert run.code == 2, run
    assert "Traceback" not in run.stderr and len(run.stderr) < 10_000, run.stderr[:2000]
    message = str(run.result["error"]["message"])
    assert message.startswith(setting), message
    return message


@pytest.mark.parametrize(
    "text",
    [
        '{"app_readonly": [{"schemas": ["public"], "access": "read"}], "app_readonly": []}',
        '{"app_readonly": [{"schemas": ["public"], "access": "read", "access": "write"}]}',
        "app_readonly:\n  - {schemas: [public], access: read}\napp_readonly: []\n",
        "app_readonly:\n  - schemas: [public]\n    access: read\n    access: write\n",
    ],
    ids=["json-group", "json-key", "yaml-group", "yaml-key"],
)
def test_a_key_given_twice_is_refused(text: str) -> None:
    assert "given twice" in refused(text)


@pytest.mark.parametrize("opening", ["[", '{"a": '])
def test_nesting_deeper_than_the_grammar_is_refused(opening: str, tmp_path: Path) -> None:
    """Deep enough to exhaust a recursive parser, small enough to be under 1 MiB."""
    deep = '{"app_readonly": ' + opening * 50_000
    assert "nested" in refused(deep, "GROUP_ROLES_FILE", tmp_path)


def test_nesting_deeper_than_the_grammar_but_well_formed_is_refused() -> None:
    value: object = "public"
    for _ in range(40):
        value = [value]
    document = {"app_readonly": [{"schemas": value, "access": "read"}]}
    assert "nested deeper" in refused(json.dumps(document))


def test_a_document_over_1_mib_is_refused(tmp_path: Path) -> None:
    grants = [{"schemas": [f"s{i:07d}"], "access": "read"} for i in range(40_000)]
    text = json.dumps({"app_readonly": grants})
    assert len(text.encode()) > 1024 * 1024
    assert "1 MiB" in refused(text, "GROUP_ROLES_FILE", tmp_path)


def test_yaml_aliases_that_expand_past_1_mib_are_refused(tmp_path: Path) -> None:
    lines = ['a0: &a0 ["' + "x" * 64 + '"]']
    for i in range(1, 4):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 64) + "]")
    lines.append("app_readonly: [{schemas: *a3, access: read}]")
    text = "\n".join(lines) + "\n"
    assert len(text) < 2048 * 3  # a few KB, 17 MB once its aliases are copies
    assert "expand" in refused(text, "GROUP_ROLES_FILE", tmp_path)


def test_a_yaml_alias_of_a_small_grant_still_works(tmp_path: Path) -> None:
    """Aliases are YAML's own: one that stays small is a document like any other."""
    text = "app_readonly: &read\n  - {schemas: [public], access: read}\napp_reporting: *read\n"
    env = job_env(GROUP_ROLES=text, IAM_USERS="alice:app_reporting")
    run = run_job(env, "sql")
    assert run.code == 0, run.stderr


@pytest.mark.parametrize("command", ["apply", "plan", "verify"])
def test_a_login_role_declared_as_a_group_is_refused_with_nothing_changed(
    pg18: localpg.LocalPostgres, command: str
) -> None:
    """A typo, or a hand-made user: under PRUNE it would lose its grants. Refused by
    name before anything runs, in each command."""
    with pg18.superuser_connect("postgres") as conn:
        conn.execute("CREATE ROLE app_reporter LOGIN")
        conn.execute("GRANT SELECT ON ALL TABLES IN SCHEMA pg_catalog TO app_reporter")
    before = catalog(pg18)
    groups = {
        "app_readonly": [{"schemas": ["public"], "access": "read"}],
        "app_reporter": [{"schemas": ["public"], "access": "read"}],
    }
    env = job_env(
        pg18, IAM_USERS="alice:app_readonly", GROUP_ROLES=json.dumps(groups), PRUNE="true"
    )
    run = run_job(env, command)
    assert run.code == 2, run
    message = str(run.result["error"]["message"])
    assert message.startswith("GROUP_ROLES") and "app_reporter" in message, message
    assert catalog(pg18) == before
