"""Property-based tests of IAM_USERS: what is accepted reaches the catalog exactly,
what is rejected never reaches the database."""

from __future__ import annotations

import json
import string

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.errors import ConfigError
from app.inputs import users as users_module
from app.inputs.settings import default_init_sql
from app.inputs.users import MANAGED_ROLE, NAME_RE, RESERVED_NAMES, IamUser, parse
from app.job import script
from app.job import transaction as apply
from app.retry import Deadline
from tests.conftest import catalog as read_catalog
from tests.conftest import job_env, managed, members_of, reset, role, run_job
from tools import localpg

first = st.sampled_from(string.ascii_lowercase + "_")
rest = st.text(string.ascii_lowercase + string.digits + "_", max_size=62)
name = st.builds(lambda a, b: a + b, first, rest).filter(
    lambda n: not n.startswith(("pg_", "rds_")) and n not in (*RESERVED_NAMES, localpg.MASTER_USER)
)
# Group roles drawn from a small pool, so that users share them.
group = st.sampled_from(["app_readonly", "app_readwrite", "analytics", "g_1", "g_2"])
user_lists = st.lists(
    st.tuples(name, st.lists(group, unique=True, max_size=3)),
    min_size=1,
    max_size=6,
    unique_by=lambda pair: pair[0],
).filter(
    lambda pairs: (
        not {n for n, _ in pairs} & {"app_readonly", "app_readwrite", "analytics", "g_1", "g_2"}
    )
)


def as_comma_list(pairs: list[tuple[str, list[str]]]) -> str:
    return ",".join(":".join([n, *roles]) for n, roles in pairs)


def as_json(pairs: list[tuple[str, list[str]]]) -> str:
    return json.dumps([{"name": n, "roles": roles} for n, roles in pairs])


@given(user_lists, st.booleans())
def test_both_forms_parse_to_what_was_written(
    pairs: list[tuple[str, list[str]]], use_json: bool
) -> None:
    raw = as_json(pairs) if use_json else as_comma_list(pairs)
    assert parse(raw) == tuple(IamUser(n, tuple(r)) for n, r in pairs)


@given(st.text(max_size=200))
def test_any_text_is_parsed_or_rejected_as_a_config_error(raw: str) -> None:
    try:
        users = parse(raw)
    except ConfigError as exc:
        assert str(exc).startswith("IAM_USERS: ")
        return
    for user in users:
        assert NAME_RE.fullmatch(user.name)
        assert all(NAME_RE.fullmatch(r) for r in user.roles)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(pairs=user_lists)
def test_accepted_names_round_trip_into_the_catalog_exactly(
    pg18: localpg.LocalPostgres, pairs: list[tuple[str, list[str]]]
) -> None:
    reset(pg18)
    users = parse(as_comma_list(pairs))
    program = script.load(default_init_sql())
    with pg18.master_connect() as conn:
        apply.Attempts(
            (program,), apply.Inputs(users, localpg.MASTER_USER, False), Deadline(60), commit=True
        )(conn)
    state = read_catalog(pg18)
    for n, roles in pairs:
        found = role(state, n)
        assert found is not None
        _name, login, _super, _createrole, _comment = found
        assert login and managed(state, n)
        assert members_of(state, n) == {"rds_iam", *roles}


def rejected(raw: str) -> bool:
    try:
        parse(raw)
    except ConfigError:
        return True
    return False


hostile = st.one_of(
    # Environment values cannot hold NUL or unpaired surrogates.
    st.text(
        st.characters(exclude_characters="\x00", exclude_categories=["Cs"]),
        min_size=1,
        max_size=40,
    ),
    st.builds(lambda n, bad: n + bad, name, st.sampled_from(['"', "'", ";", " x", "-", "A"])),
    st.sampled_from(["pg_x", "rds_x", "public", localpg.MASTER_USER]),
).filter(rejected)


@settings(
    max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(bad=hostile)
def test_rejected_names_change_nothing(pg18: localpg.LocalPostgres, bad: str) -> None:
    before = read_catalog(pg18)
    run = run_job(job_env(pg18, IAM_USERS=bad))
    assert run.code == 2, run
    assert run.result["error"]["message"].startswith("IAM_USERS:")
    assert read_catalog(pg18) == before


# Names that each rule of IAM_USERS is about: reserved, prefixed, repeated, the marker.
tricky = st.sampled_from(
    ["a", "b", "a_b", "public", "none", "current_user", "pg_x", "rds_y", MANAGED_ROLE]
)


@given(st.lists(st.lists(tricky, min_size=1, max_size=4), min_size=1, max_size=4))
def test_the_fast_path_accepts_exactly_what_the_checks_accept(entries: list[list[str]]) -> None:
    text = ",".join(":".join(entry) for entry in entries)
    fast = users_module._plain(text)
    try:
        checked = users_module._checked(text)
    except ConfigError:
        assert fast is None, text
    else:
        assert fast is None or fast == checked, text
