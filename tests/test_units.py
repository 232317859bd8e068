"""Fast checks of the pure parts: IAM_USERS parsing and init.sql splitting."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.errors import ConfigError
from app.inputs import users
from app.job import script


def test_comma_form_with_roles() -> None:
    assert users.parse(" alice:app_readonly , bob:app_readwrite:analytics,carol ") == (
        users.IamUser("alice", ("app_readonly",)),
        users.IamUser("bob", ("app_readwrite", "analytics")),
        users.IamUser("carol", ()),
    )


def test_json_form_matches_comma_form() -> None:
    assert users.parse(
        '[{"name": "alice", "roles": ["app_readonly"]}, {"name": "carol"}]'
    ) == users.parse("alice:app_readonly,carol")


@pytest.mark.parametrize("raw", ["", "   "])
def test_empty_means_no_users(raw: str) -> None:
    assert users.parse(raw) == ()


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        ("alice,Alice", "entry 2 'Alice'"),
        ("alice:alice", "cannot be granted to itself"),
        ("alice:x:x", "listed twice"),
        ('[{"name": 1}]', "must be a string"),
        ('[{"name": "a", "roles": "x"}]', "must be a list"),
        ('[{"name": "a", "roles": [1]}]', "must be strings"),
        ('["a"]', "must be an object"),
        ("[1,", "not valid JSON"),
        ("rds_iam", "reserved"),
        ("x" * 64, "at most 63"),
    ],
)
def test_rejections_name_the_entry_and_the_problem(raw: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as err:
        users.parse(raw)
    assert err.value.setting == "IAM_USERS"
    assert fragment in str(err.value)


def test_master_user_is_refused() -> None:
    with pytest.raises(ConfigError, match="master user"):
        users.check_master(users.parse("app,admin"), "admin")


SQL = """-- leading comment; with a semicolon
CREATE ROLE a;

DO $body$
BEGIN
    RAISE NOTICE 'a;b';
END
$body$;
/* block; /* nested; */ */ SELECT 'it''s;', E'\\';', "x;y" FROM t;
SELECT $$;$$, $1
;
-- trailing comment only
"""


def test_split_respects_quotes_comments_and_dollar_quotes() -> None:
    parsed = script.parse(Path("init.sql"), SQL)
    texts = [s.text for s in parsed.statements]
    assert texts[0].endswith("CREATE ROLE a;")
    assert texts[1].startswith("DO $body$") and texts[1].endswith("$body$;")
    assert "E'\\';'" in texts[2]
    assert texts[3].startswith("SELECT $$;$$")
    assert len(texts) == 4
    # A statement starts where its code does, not at the comment above it.
    assert [s.line for s in parsed.statements] == [2, 4, 9, 10]
    assert parsed.statements[1].body_line == 4


def test_error_lines_map_back_to_the_file() -> None:
    parsed = script.parse(Path("init.sql"), SQL)
    do_block = parsed.statements[1]
    context = "PL/pgSQL function inline_code_block line 3 at RAISE"
    assert parsed.error_line(do_block, None, context) == 6
    last = parsed.statements[3]
    assert parsed.error_line(last, len("SELECT $$;$$, $1\n;"), None) == 11


@pytest.mark.parametrize("text", ["SELECT 'open", "DO $$ BEGIN", "/* open", 'SELECT "x'])
def test_unterminated_text_is_a_config_error(text: str) -> None:
    with pytest.raises(ConfigError, match="unterminated"):
        script.parse(Path("init.sql"), text)


def test_retried_aws_error_codes_keep_in_step_with_botocore() -> None:
    from botocore.retries import standard  # noqa: PLC0415

    from app import aws  # noqa: PLC0415

    throttled = set(standard.ThrottledRetryableChecker._THROTTLED_ERROR_CODES)  # type: ignore[attr-defined]
    transient = set(standard.TransientRetryableChecker._TRANSIENT_ERROR_CODES)  # type: ignore[attr-defined]
    assert throttled == aws.THROTTLING_CODES
    assert transient == aws.TRANSIENT_CODES


def test_sql_standard_bodies_split_as_psql_splits_them() -> None:
    text = (
        "CREATE OR REPLACE FUNCTION f(a int) RETURNS int LANGUAGE sql\n"
        "BEGIN ATOMIC\n  SELECT CASE WHEN a > 0 THEN 1 ELSE 2 END;\n  SELECT (a; \n);\nEND;\n"
        "SELECT 'end';\nCREATE TABLE t (begin_at int);\nSELECT 1;\n"
    )
    statements = script.parse(Path("init.sql"), text).statements
    assert [s.line for s in statements] == [1, 7, 8, 9]
    assert statements[0].text.endswith("END;")


@pytest.mark.parametrize(
    "text",
    [
        "ROLLBACK TO SAVEPOINT s;",
        "SAVEPOINT s;",
        "SELECT 'commit';",
        "REFRESH MATERIALIZED VIEW v;",
    ],
)
def test_statements_that_stay_inside_the_transaction_are_accepted(text: str) -> None:
    assert script.parse(Path("init.sql"), text).statements


def test_the_services_the_image_keeps_are_the_ones_the_code_makes_clients_for() -> None:
    """Derived from the code: every `.client("...")` in app/, against app.services."""
    import ast  # noqa: PLC0415

    from app.services import SERVICES  # noqa: PLC0415

    made = set()
    for path in Path(__file__).resolve().parent.parent.joinpath("app").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "client"
                and node.args
                and isinstance(node.args[0], ast.Constant)
            ):
                made.add(node.args[0].value)
    assert made == set(SERVICES)
