"""GROUP_ROLES: the group roles and what each may do, as a JSON or YAML document.

A mapping from group role name to its grants: a list of grants, or a mapping with
`grants` (that list) and `member_of` (the roles the group is a member of). Each grant
names a database (default DB_NAME), schemas (exact names, or "*" for every schema but
PostgreSQL's own), what the group may do there (`access`: read or write, `privileges`
per kind, or both: their union), optionally single `objects`, and the owners whose
future objects get the same privileges (default: the master user). The job resolves
every default and shorthand and hands the document to the SQL as JSON
(bootstrap.group_roles): the SQL never sees YAML, an access level or a default.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.errors import ConfigError
from app.inputs.users import (
    MANAGED_ROLE,
    NAME_RE,
    NAME_RULE,
    RESERVED_NAMES,
    RESERVED_USER_PREFIXES,
    IamUser,
)

SETTING = "GROUP_ROLES"
FILE_SETTING = "GROUP_ROLES_FILE"
ALL_SCHEMAS = "*"
_KEYS = ("database", "schemas", "access", "privileges", "objects", "owners")
_GROUP_KEYS = ("grants", "member_of")
# The privileges of each kind a grant may name, in the order GRANT lists them.
# MAINTAIN exists from PostgreSQL 17; privileges.sql refuses it on an older server.
KINDS: Mapping[str, tuple[str, ...]] = {
    "database": ("CONNECT", "TEMPORARY", "CREATE"),
    "schema": ("USAGE", "CREATE"),
    "tables": (
        "SELECT",
        "INSERT",
        "UPDATE",
        "DELETE",
        "TRUNCATE",
        "REFERENCES",
        "TRIGGER",
        "MAINTAIN",
    ),
    "sequences": ("USAGE", "SELECT", "UPDATE"),
    "functions": ("EXECUTE",),
}
_SYNONYMS = {"TEMP": "TEMPORARY"}
# What each access level stands for.
ACCESS: Mapping[str, Mapping[str, tuple[str, ...]]] = {
    "read": {
        "database": ("CONNECT",),
        "schema": ("USAGE",),
        "tables": ("SELECT",),
        "sequences": ("SELECT",),
    },
    "write": {
        "database": ("CONNECT",),
        "schema": ("USAGE",),
        "tables": ("SELECT", "INSERT", "UPDATE", "DELETE"),
        "sequences": ("USAGE", "SELECT"),
    },
}
ACCESS_LEVELS = tuple(ACCESS)
# PostgreSQL keeps the first 63 bytes of a name (NAMEDATALEN - 1) and cuts the rest:
# a longer name would silently mean another object.
MAX_IDENTIFIER_BYTES = 63
# Names that GRANT reads as something other than a role.
_NOT_ROLES = frozenset({"public", "none", "current_user", "current_role", "session_user"})


def _system_schema(name: str) -> bool:
    return name.startswith("pg_") or name == "information_schema"


@dataclass(frozen=True)
class Grant:
    schemas: tuple[str, ...]
    access: str | None = None
    database: str | None = None  # None: DB_NAME
    owners: tuple[str, ...] | None = None  # None: the master user
    # Privileges named per kind, besides those of `access`.
    privileges: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    objects: tuple[str, ...] | None = None  # None: every object of the schemas

    def effective(self) -> dict[str, list[str]]:
        """The privileges of each kind this grant gives: `access` and `privileges`,
        their union, in GRANT's order; kinds with none left out."""
        given = {kind: set(self.privileges.get(kind, ())) for kind in KINDS}
        for kind, names in ACCESS.get(self.access or "", {}).items():
            given[kind].update(names)
        return {
            kind: [p for p in order if p in given[kind]]
            for kind, order in KINDS.items()
            if given[kind]
        }

    def resolved(self, db_name: str, master: str) -> dict[str, object]:
        return {
            "database": self.database or db_name,
            "schemas": list(self.schemas),
            "owners": list(self.owners if self.owners is not None else (master,)),
            "objects": list(self.objects) if self.objects is not None else None,
            "privileges": self.effective(),
        }


@dataclass(frozen=True)
class Group:
    grants: tuple[Grant, ...] = ()
    member_of: tuple[str, ...] = ()


@dataclass(frozen=True)
class GroupRoles:
    """The declared groups, in the document's order. `source` is the setting the
    document came from, for the errors found once the master user is known; `exact`
    says that the document decides everything the groups hold (the shipped default
    only adds)."""

    groups: Mapping[str, Group]
    source: str = SETTING
    exact: bool = True

    def databases(self, db_name: str) -> tuple[str, ...]:
        """DB_NAME first (the roles are made there), then the others in the order the
        document first names them."""
        names = [db_name]
        for group in self.groups.values():
            for grant in group.grants:
                if grant.database is not None and grant.database not in names:
                    names.append(grant.database)
        return tuple(names)

    def to_json(self, db_name: str, master: str) -> str:
        """The document as the SQL reads it, every default resolved."""
        return json.dumps(
            {
                name: {
                    "member_of": list(group.member_of),
                    "grants": [grant.resolved(db_name, master) for grant in group.grants],
                }
                for name, group in self.groups.items()
            },
            separators=(",", ":"),
        )

    def check(self, users: tuple[IamUser, ...]) -> None:
        """A group may not be a listed user, nor be a member of one."""
        listed = {user.name for user in users}
        for name, group in self.groups.items():
            if name in listed:
                raise ConfigError(
                    self.source,
                    f"group {name!r} is also a user in IAM_USERS; a group role is a NOLOGIN "
                    "role its users are members of",
                )
            for role in group.member_of:
                if role in listed:
                    raise ConfigError(
                        self.source,
                        f"group {name!r}: member_of names {role!r}, a user in IAM_USERS; a "
                        "group is a member of roles, not of users",
                    )

    def check_master(self, master: str) -> None:
        """Nor the master user, whose privileges no group may be given."""
        if master in self.groups:
            raise ConfigError(self.source, f"group {master!r} is the master user")
        for name, group in self.groups.items():
            if master in group.member_of:
                raise ConfigError(
                    self.source,
                    f"group {name!r}: member_of names the master user {master!r}, which "
                    "would give the group everything the master may do",
                )


# What the job granted before GROUP_ROLES existed: an upgrade keeps it, and adds.
DEFAULT = GroupRoles(
    {
        "app_readonly": Group((Grant(("public",), "read"),)),
        "app_readwrite": Group((Grant(("public",), "write"),)),
    },
    exact=False,
)


def _show(value: object) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return repr(text if len(text) <= 80 else text[:77] + "...")


def _identifier(setting: str, where: str, what: str, value: object) -> str:
    if not isinstance(value, str):
        raise ConfigError(setting, f"{where}: {what} must be a string, got {_show(value)}")
    if not value:
        raise ConfigError(setting, f"{where}: {what} is empty")
    if "\x00" in value:
        raise ConfigError(setting, f"{where}: {what} {_show(value)} holds a NUL character")
    if len(value.encode()) > MAX_IDENTIFIER_BYTES:
        raise ConfigError(
            setting,
            f"{where}: {what} {_show(value)} is longer than {MAX_IDENTIFIER_BYTES} bytes, "
            "which PostgreSQL would cut",
        )
    return value


def _names(setting: str, where: str, what: str, value: object) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise ConfigError(setting, f"{where}: {what} must be a list, got {_show(value)}")
    names = tuple(_identifier(setting, where, f"each of {what}", v) for v in value)
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ConfigError(setting, f"{where}: {what} lists {twice[0]!r} twice")
    return names


def _group_name(setting: str, name: object) -> str:
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise ConfigError(setting, f"group name {_show(name)} {NAME_RULE}")
    if name in RESERVED_NAMES:
        raise ConfigError(
            setting, f"group name {name!r} is reserved (by PostgreSQL, or as the job's marker)"
        )
    if name.startswith(RESERVED_USER_PREFIXES):
        raise ConfigError(
            setting, f"group name {name!r}: names starting with pg_ or rds_ are reserved"
        )
    return name


def _kind_of(privilege: str) -> str:
    kinds = [kind for kind, names in KINDS.items() if privilege in names]
    return f" ({privilege} is a privilege of {' and '.join(kinds)})" if kinds else ""


def _privileges(setting: str, where: str, raw: object) -> dict[str, tuple[str, ...]]:
    """`privileges`: a mapping from kind to a list of its privileges, any case."""
    if not isinstance(raw, dict):
        raise ConfigError(
            setting,
            f"{where}: privileges must be a mapping from kind ({', '.join(KINDS)}) to a list "
            f"of privileges, got {_show(raw)}",
        )
    found: dict[str, tuple[str, ...]] = {}
    for kind, names in raw.items():
        if kind not in KINDS:
            raise ConfigError(
                setting,
                f"{where}: unknown privilege kind {_show(kind)}; allowed: {', '.join(KINDS)}",
            )
        if not isinstance(names, list) or not names:
            raise ConfigError(
                setting, f"{where}: privileges.{kind} must be a non-empty list, got {_show(names)}"
            )
        given: list[str] = []
        for name in names:
            if not isinstance(name, str):
                raise ConfigError(
                    setting, f"{where}: privileges.{kind}: {_show(name)} is not a privilege"
                )
            upper = name.strip().upper()
            upper = _SYNONYMS.get(upper, upper)
            if upper not in KINDS[kind]:
                raise ConfigError(
                    setting,
                    f"{where}: {_show(name)} is not a privilege of {kind}; allowed: "
                    f"{', '.join(KINDS[kind])}{_kind_of(upper)}",
                )
            if upper in given:
                raise ConfigError(setting, f"{where}: privileges.{kind} lists {upper} twice")
            given.append(upper)
        found[kind] = tuple(given)
    return found


def _schemas(setting: str, where: str, raw: dict[Any, Any]) -> tuple[str, ...]:
    if "schemas" not in raw:
        raise ConfigError(setting, f"{where}: 'schemas' is missing (a list; \"*\" for all)")
    schemas = _names(setting, where, "schemas", raw["schemas"])
    if not schemas:
        raise ConfigError(setting, f'{where}: schemas is empty; name at least one, or "*"')
    if ALL_SCHEMAS in schemas and len(schemas) > 1:
        raise ConfigError(setting, f'{where}: "*" already means every schema; list it alone')
    for schema in schemas:
        if _system_schema(schema):
            raise ConfigError(
                setting,
                f"{where}: schema {schema!r} is PostgreSQL's own (pg_* and "
                "information_schema); a group is given access to the database's schemas",
            )
    return schemas


def _owners(setting: str, where: str, raw: dict[Any, Any]) -> tuple[str, ...] | None:
    if "owners" not in raw:
        return None
    owners = _names(setting, where, "owners", raw["owners"])
    if not owners:
        raise ConfigError(setting, f"{where}: owners is empty; leave it out for the master user")
    for owner in owners:
        if owner.lower() in _NOT_ROLES:
            raise ConfigError(setting, f"{where}: owner {owner!r} is not a role")
    return owners


def _objects(setting: str, where: str, raw: dict[Any, Any]) -> tuple[str, ...] | None:
    if "objects" not in raw:
        return None
    objects = _names(setting, where, "objects", raw["objects"])
    if not objects:
        raise ConfigError(setting, f"{where}: objects is empty; leave it out for every object")
    if ALL_SCHEMAS in raw["schemas"]:
        raise ConfigError(setting, f'{where}: objects are named in schemas named, not in "*"')
    if "owners" in raw:
        raise ConfigError(
            setting,
            f"{where}: owners give default privileges on later objects, which a grant "
            "naming objects does not; leave one of them out",
        )
    return objects


def _grant(setting: str, where: str, raw: object) -> Grant:
    if not isinstance(raw, dict):
        raise ConfigError(
            setting,
            f"{where} must be a mapping {{{', '.join(_KEYS)}}}, got {_show(raw)}",
        )
    unknown = sorted(str(k) for k in raw if k not in _KEYS)
    if unknown:
        raise ConfigError(
            setting, f"{where}: unknown key {unknown[0]!r}; allowed: {', '.join(_KEYS)}"
        )
    schemas = _schemas(setting, where, raw)
    access = raw.get("access")
    if access is not None and access not in ACCESS_LEVELS:
        raise ConfigError(
            setting,
            f"{where}: access must be one of {', '.join(ACCESS_LEVELS)}, got {_show(access)}",
        )
    privileges = _privileges(setting, where, raw["privileges"]) if "privileges" in raw else {}
    if access is None and not privileges:
        raise ConfigError(
            setting,
            f"{where}: says nothing the group may do; give access ({', '.join(ACCESS_LEVELS)}), "
            "privileges, or both",
        )
    database = raw.get("database")
    if database is not None:
        database = _identifier(setting, where, "database", database)
    owners = _owners(setting, where, raw)
    objects = _objects(setting, where, raw)
    return Grant(schemas, access, database, owners, privileges, objects)


def _member_of(setting: str, group: str, raw: object) -> tuple[str, ...]:
    where = f"group {group!r}"
    roles = _names(setting, where, "member_of", raw)
    for role in roles:
        if role.lower() in _NOT_ROLES:
            raise ConfigError(setting, f"{where}: member_of names {role!r}, which is not a role")
        if role == group:
            raise ConfigError(setting, f"{where}: a group cannot be a member of itself")
        if role == MANAGED_ROLE:
            raise ConfigError(
                setting, f"{where}: member_of names {role!r}, the marker of managed users"
            )
        if role == "rds_iam":
            raise ConfigError(
                setting,
                f"{where}: member_of names rds_iam, which users are granted directly; through "
                "a group it would end the password login of every member, and from "
                "PostgreSQL 16 the master is a member of every group it made",
            )
    return roles


def _group(setting: str, name: str, raw: object) -> Group:
    where = f"group {name!r}"
    member_of: tuple[str, ...] = ()
    if isinstance(raw, dict):
        unknown = sorted(str(k) for k in raw if k not in _GROUP_KEYS)
        if unknown:
            raise ConfigError(
                setting,
                f"{where}: unknown key {unknown[0]!r}; allowed: {', '.join(_GROUP_KEYS)} "
                "(or a list of grants)",
            )
        member_of = _member_of(setting, name, raw.get("member_of", []))
        raw = raw.get("grants", [])
    if not isinstance(raw, list):
        raise ConfigError(
            setting, f"{where}: must be a list of grants, or a mapping with grants and member_of"
        )
    grants = tuple(_grant(setting, f"{where}, grant {i}", g) for i, g in enumerate(raw, 1))
    return Group(grants, member_of)


def _check_cycles(setting: str, groups: Mapping[str, Group]) -> None:
    """Memberships among declared groups must not loop: PostgreSQL refuses the GRANT
    that would close the loop, after the rest of the run was spent."""
    done: set[str] = set()

    def visit(name: str, path: list[str]) -> None:
        if name in path:
            loop = [*path[path.index(name) :], name]
            raise ConfigError(
                setting,
                f"member_of forms a cycle: {' -> '.join(loop)} (each is a member of the next)",
            )
        if name in done or name not in groups:
            return
        for role in groups[name].member_of:
            visit(role, [*path, name])
        done.add(name)

    for name in groups:
        visit(name, [])


# What a document may be: at most 1 MiB, also once YAML's aliases are expanded (the
# job hands the document on as JSON, where an alias is a copy), and nested no deeper
# than the grammar goes (a group, its mapping, its grants, a grant, its privileges, a
# kind's list, a name: seven; the rest is room).
MAX_DOCUMENT_BYTES = 1024 * 1024
MAX_DEPTH = 8


def _unique_keys(setting: str) -> Callable[[list[tuple[str, object]]], dict[str, object]]:
    """JSON's object_pairs_hook: a key given twice is an error, not the last one kept."""

    def hook(pairs: list[tuple[str, object]]) -> dict[str, object]:
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise ConfigError(setting, f"key {key!r} is given twice in one mapping")
            seen.add(key)
        return dict(pairs)

    return hook


@functools.cache
def _yaml_loader() -> type:
    """PyYAML's SafeLoader, refusing a key given twice in one mapping (merge keys, `<<`,
    are YAML's way to override, and are left to it)."""
    import yaml  # noqa: PLC0415 (YAML only for a document that is not JSON)

    class UniqueKeys(yaml.SafeLoader):
        def construct_mapping(self, node: Any, deep: bool = False) -> dict[Any, Any]:
            seen: set[object] = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=deep)
                if isinstance(key, Hashable) and key in seen:
                    raise yaml.constructor.ConstructorError(
                        None,
                        None,
                        f"key {key!r} is given twice in one mapping",
                        key_node.start_mark,
                    )
                seen.add(key)
            mapping: dict[Any, Any] = super().construct_mapping(node, deep=deep)
            return mapping

    return UniqueKeys


def _too_deep(setting: str) -> ConfigError:
    return ConfigError(
        setting, f"is nested deeper than the grammar goes ({MAX_DEPTH} levels at most)"
    )


def _bounded(setting: str, data: object) -> object:
    """The document no deeper than MAX_DEPTH and, expanded, no larger than
    MAX_DOCUMENT_BYTES (a walk that stops at the bound, so an alias bomb costs it no
    more than a document of that size would)."""
    budget = MAX_DOCUMENT_BYTES
    stack: list[tuple[object, int]] = [(data, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise _too_deep(setting)
        if isinstance(node, dict):
            budget -= 2
            stack.extend((key, depth + 1) for key in node)
            stack.extend((value, depth + 1) for value in node.values())
        elif isinstance(node, list):
            budget -= 2
            stack.extend((value, depth + 1) for value in node)
        else:
            budget -= len(str(node)) + 1
        if budget < 0:
            raise ConfigError(
                setting, "expands past the 1 MiB a document may be (YAML aliases are copies)"
            )
    return data


def _document(setting: str, text: str) -> object:
    """JSON, or else YAML (of which JSON is nearly a subset; JSON is tried first for
    its precise errors, and to keep the YAML parser off the import path)."""
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_DOCUMENT_BYTES:
        raise ConfigError(setting, f"is {size} bytes, over the 1 MiB a document may be")
    stripped = text.strip()
    if stripped.startswith("{"):
        try:
            return _bounded(setting, json.loads(stripped, object_pairs_hook=_unique_keys(setting)))
        except json.JSONDecodeError:
            pass
        except RecursionError:
            raise _too_deep(setting) from None
    import yaml  # noqa: PLC0415

    try:
        data = yaml.load(stripped, Loader=_yaml_loader())  # noqa: S506 (a SafeLoader)
    except RecursionError:
        raise _too_deep(setting) from None
    except yaml.YAMLError as exc:
        raise ConfigError(
            setting, f"not valid JSON or YAML: {' '.join(str(exc).split())}"
        ) from None
    return _bounded(setting, data)


def parse(text: str, setting: str = SETTING) -> GroupRoles:
    data = _document(setting, text)
    if not isinstance(data, dict):
        raise ConfigError(
            setting,
            "must be a mapping from group role name to its grants, got "
            + ("nothing" if data is None else type(data).__name__),
        )
    groups = {
        (group := _group_name(setting, name)): _group(setting, group, raw)
        for name, raw in data.items()
    }
    _check_cycles(setting, groups)
    return GroupRoles(groups, setting)


def load_file(path: Path) -> GroupRoles:
    try:
        # Not read at all when it is too large to be a document.
        if path.is_file() and path.stat().st_size > MAX_DOCUMENT_BYTES:
            size = path.stat().st_size
            raise ConfigError(
                FILE_SETTING, f"{path} is {size} bytes, over the 1 MiB a document may be"
            )
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(FILE_SETTING, f"cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(FILE_SETTING, f"{path} is not UTF-8 (byte {exc.start})") from None
    return parse(text, FILE_SETTING)
