"""IAM_USERS: the users to provision and their group roles, parsed and checked."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from app.errors import ConfigError

SETTING = "IAM_USERS"
NAME_RE = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
NAME_RULE = (
    "must match ^[a-z_][a-z0-9_]{0,62}$ "
    "(lowercase letters, digits and underscores, at most 63 characters)"
)
RESERVED_USER_PREFIXES = ("pg_", "rds_")
# Names PostgreSQL refuses as role names (or reads as something else in GRANT), and
# the role whose members are the users the job manages.
MANAGED_ROLE = "aurora_bootstrap_managed"
RESERVED_NAMES = frozenset(
    {"public", "none", "current_user", "current_role", "session_user", MANAGED_ROLE}
)


@dataclass(frozen=True)
class IamUser:
    name: str
    roles: tuple[str, ...] = ()

    def as_json(self) -> dict[str, object]:
        return {"name": self.name, "roles": list(self.roles)}


def to_json(users: tuple[IamUser, ...]) -> str:
    """The users as init.sql's bootstrap.iam_users input reads them."""
    return json.dumps([u.as_json() for u in users], separators=(",", ":"))


def _show(value: object) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return repr(text if len(text) <= 80 else text[:77] + "...")


def _fail(position: int, entry: object, problem: str) -> ConfigError:
    return ConfigError(SETTING, f"entry {position} {_show(entry)}: {problem}")


def _check_user(position: int, entry: object, name: object) -> str:
    if not isinstance(name, str):
        raise _fail(position, entry, "user name must be a string")
    if not NAME_RE.fullmatch(name):
        raise _fail(position, entry, f"user name {_show(name)} {NAME_RULE}")
    if name in RESERVED_NAMES:
        raise _fail(
            position,
            entry,
            f"{name!r} is reserved (by PostgreSQL, or as the job's marker) and cannot be a user",
        )
    if name.startswith(RESERVED_USER_PREFIXES):
        raise _fail(position, entry, "user names starting with pg_ or rds_ are reserved")
    return name


def _check_roles(position: int, entry: object, user: str, roles: object) -> tuple[str, ...]:
    if not isinstance(roles, list):
        raise _fail(position, entry, "roles must be a list of role names")
    seen: list[str] = []
    for role in roles:
        if not isinstance(role, str):
            raise _fail(position, entry, "role names must be strings")
        if not NAME_RE.fullmatch(role):
            raise _fail(position, entry, f"role name {_show(role)} {NAME_RULE}")
        if role in RESERVED_NAMES:
            raise _fail(
                position,
                entry,
                f"{role!r} is reserved (by PostgreSQL, or as the job's marker): not grantable",
            )
        if role == user:
            raise _fail(position, entry, "a user cannot be granted to itself")
        if role in seen:
            raise _fail(position, entry, f"role {role!r} is listed twice")
        seen.append(role)
    return tuple(seen)


def _from_json(raw: str) -> list[tuple[object, object, object]]:
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ConfigError(SETTING, f"not valid JSON: {exc.msg} at character {exc.pos}") from None
    if not isinstance(data, list):
        raise ConfigError(SETTING, 'JSON form must be a list of {"name": ..., "roles": [...]}')
    entries: list[tuple[object, object, object]] = []
    for position, item in enumerate(data, 1):
        if not isinstance(item, dict):
            raise _fail(position, item, 'must be an object {"name": ..., "roles": [...]}')
        unknown = sorted(set(item) - {"name", "roles"})
        if unknown:
            raise _fail(position, item, f"unknown keys {unknown}; allowed: name, roles")
        if "name" not in item:
            raise _fail(position, item, "missing 'name'")
        entries.append((item, item["name"], item.get("roles", [])))
    return entries


def _from_list(raw: str) -> list[tuple[object, object, object]]:
    entries: list[tuple[object, object, object]] = []
    for position, chunk in enumerate(raw.split(","), 1):
        entry = chunk.strip()
        if not entry:
            raise _fail(position, chunk, "empty entry (stray comma?)")
        name, *roles = (part.strip() for part in entry.split(":"))
        if any(not role for role in roles):
            raise _fail(position, entry, "empty role name (stray colon?)")
        entries.append((entry, name, roles))
    return entries


_NAME = r"[a-z_][a-z0-9_]{0,62}"
# The comma form with nothing to complain about in its shape: checked in one pass of
# the regex engine, so that 10,000 users cost milliseconds, not a call per name.
_PLAIN_LIST_RE = re.compile(rf"{_NAME}(?::{_NAME})*(?:,{_NAME}(?::{_NAME})*)*")


def _plain(text: str) -> tuple[IamUser, ...] | None:
    """The users of a well-formed comma list, or None when it needs a closer look (the
    checks below then name the entry and the problem)."""
    if not _PLAIN_LIST_RE.fullmatch(text):
        return None
    users: list[IamUser] = []
    seen: set[str] = set()
    for entry in text.split(","):
        name, *roles = entry.split(":")
        unique = set(roles)
        if (
            name in seen
            or name in RESERVED_NAMES
            or name.startswith(RESERVED_USER_PREFIXES)
            or len(unique) != len(roles)
            or name in unique
            or not unique.isdisjoint(RESERVED_NAMES)
        ):
            return None
        seen.add(name)
        users.append(IamUser(name, tuple(roles)))
    return tuple(users)


def parse(raw: str) -> tuple[IamUser, ...]:
    """Parse `name[:role...],...` or a JSON list of {"name", "roles"} objects."""
    text = raw.strip()
    if not text:
        return ()
    plain = None if text.startswith("[") else _plain(text)
    if plain is not None:
        _check_cycles(list(plain), list(text.split(",")))
        return plain
    return _checked(text)


def _checked(text: str) -> tuple[IamUser, ...]:
    """Every entry checked on its own, so that an error names the entry and the
    problem; the fast path above must accept nothing this refuses (a test holds them
    together)."""
    entries = _from_json(text) if text.startswith("[") else _from_list(text)
    users: list[IamUser] = []
    seen: set[str] = set()
    for position, (entry, name, roles) in enumerate(entries, 1):
        user = _check_user(position, entry, name)
        if user in seen:
            raise _fail(position, entry, f"user {user!r} is listed twice")
        seen.add(user)
        users.append(IamUser(user, _check_roles(position, entry, user, roles)))
    _check_cycles(users, [entry for entry, _, _ in entries])
    return tuple(users)


def _check_cycles(users: list[IamUser], entries: list[object]) -> None:
    """Memberships among listed users must not loop: PostgreSQL refuses the GRANT that
    would close the loop, after the rest of the run was spent."""
    position = {user.name: i for i, user in enumerate(users)}
    done: set[str] = set()

    def visit(name: str, path: list[str]) -> None:
        if name in path:
            loop = [*path[path.index(name) :], name]
            first = position[loop[0]]
            raise _fail(
                first + 1,
                entries[first],
                f"memberships form a cycle: {' -> '.join(loop)} (each is a member of the next)",
            )
        if name in done or name not in position:
            return
        for role in users[position[name]].roles:
            visit(role, [*path, name])
        done.add(name)

    for user in users:
        visit(user.name, [])


def check_master(users: tuple[IamUser, ...], master: str) -> None:
    """The master user must never become an IAM user: rds_iam would lock it out."""
    for position, user in enumerate(users, 1):
        if user.name == master:
            raise _fail(
                position,
                user.name,
                "is the master user; granting it rds_iam would disable its password login",
            )
        if master in user.roles:
            raise _fail(position, user.name, "the master user cannot be granted as a role")
