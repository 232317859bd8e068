"""GROUP_ROLES: the group roles and what each may do, as a JSON or YAML document.

A mapping from group role name to a list of grants, each naming a database (default
DB_NAME), schemas (exact names, or "*" for every schema but PostgreSQL's own), an
access level (read, write) and the owners whose future objects get the same
privileges (default: the master user). The job resolves the defaults and hands the
document to the SQL as JSON (bootstrap.group_roles): the SQL never sees YAML or
guesses a default.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.errors import ConfigError
from app.inputs.users import NAME_RE, NAME_RULE, RESERVED_NAMES, RESERVED_USER_PREFIXES, IamUser

SETTING = "GROUP_ROLES"
FILE_SETTING = "GROUP_ROLES_FILE"
ACCESS_LEVELS = ("read", "write")
ALL_SCHEMAS = "*"
_KEYS = ("database", "schemas", "access", "owners")
# PostgreSQL keeps the first 63 bytes of a name (NAMEDATALEN - 1) and cuts the rest:
# a longer name would silently mean another object.
MAX_IDENTIFIER_BYTES = 63
# Names that GRANT reads as something other than a role.
_NOT_ROLES = frozenset({"public", "none", "current_user", "current_role", "session_user"})


@dataclass(frozen=True)
class Grant:
    schemas: tuple[str, ...]
    access: str
    database: str | None = None  # None: DB_NAME
    owners: tuple[str, ...] | None = None  # None: the master user

    def resolved(self, db_name: str, master: str) -> dict[str, object]:
        return {
            "database": self.database or db_name,
            "schemas": list(self.schemas),
            "access": self.access,
            "owners": list(self.owners if self.owners is not None else (master,)),
        }


@dataclass(frozen=True)
class GroupRoles:
    """The declared groups, in the document's order. `source` is the setting the
    document came from, for the errors found once the master user is known."""

    groups: Mapping[str, tuple[Grant, ...]]
    source: str = SETTING

    def databases(self, db_name: str) -> tuple[str, ...]:
        """DB_NAME first (the roles are made there), then the others in the order the
        document first names them."""
        names = [db_name]
        for grants in self.groups.values():
            for grant in grants:
                if grant.database is not None and grant.database not in names:
                    names.append(grant.database)
        return tuple(names)

    def to_json(self, db_name: str, master: str) -> str:
        """The document as the SQL reads it, every default resolved."""
        return json.dumps(
            {
                group: [grant.resolved(db_name, master) for grant in grants]
                for group, grants in self.groups.items()
            },
            separators=(",", ":"),
        )

    def check(self, users: tuple[IamUser, ...]) -> None:
        """A group may not be a listed user."""
        listed = {user.name for user in users}
        for group in self.groups:
            if group in listed:
                raise ConfigError(
                    self.source,
                    f"group {group!r} is also a user in IAM_USERS; a group role is a NOLOGIN "
                    "role its users are members of",
                )

    def check_master(self, master: str) -> None:
        """Nor the master user."""
        if master in self.groups:
            raise ConfigError(self.source, f"group {master!r} is the master user")


# What the job granted before GROUP_ROLES existed: an upgrade keeps it.
DEFAULT = GroupRoles(
    {
        "app_readonly": (Grant(("public",), "read"),),
        "app_readwrite": (Grant(("public",), "write"),),
    }
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


def _grant(setting: str, where: str, raw: object) -> Grant:
    if not isinstance(raw, dict):
        raise ConfigError(
            setting,
            f"{where} must be a mapping {{database, schemas, access, owners}}, got {_show(raw)}",
        )
    unknown = sorted(str(k) for k in raw if k not in _KEYS)
    if unknown:
        raise ConfigError(
            setting, f"{where}: unknown key {unknown[0]!r}; allowed: {', '.join(_KEYS)}"
        )
    if "schemas" not in raw:
        raise ConfigError(setting, f"{where}: 'schemas' is missing (a list; \"*\" for all)")
    schemas = _names(setting, where, "schemas", raw["schemas"])
    if not schemas:
        raise ConfigError(setting, f'{where}: schemas is empty; name at least one, or "*"')
    if ALL_SCHEMAS in schemas and len(schemas) > 1:
        raise ConfigError(setting, f'{where}: "*" already means every schema; list it alone')
    access = raw.get("access")
    if access not in ACCESS_LEVELS:
        raise ConfigError(
            setting,
            f"{where}: access must be one of {', '.join(ACCESS_LEVELS)}, got {_show(access)}",
        )
    database = raw.get("database")
    if database is not None:
        database = _identifier(setting, where, "database", database)
    owners = None
    if "owners" in raw:
        owners = _names(setting, where, "owners", raw["owners"])
        if not owners:
            raise ConfigError(
                setting, f"{where}: owners is empty; leave it out for the master user"
            )
        for owner in owners:
            if owner.lower() in _NOT_ROLES:
                raise ConfigError(setting, f"{where}: owner {owner!r} is not a role")
    return Grant(schemas, str(access), database, owners)


# What a document may be: at most 1 MiB, also once YAML's aliases are expanded (the
# job hands the document on as JSON, where an alias is a copy), and nested no deeper
# than the grammar goes (a group, its grants, a grant, its lists, a name: five; the
# rest is room).
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
            "must be a mapping from group role name to a list of grants, got "
            + ("nothing" if data is None else type(data).__name__),
        )
    groups: dict[str, tuple[Grant, ...]] = {}
    for name, grants in data.items():
        group = _group_name(setting, name)
        if not isinstance(grants, list):
            raise ConfigError(setting, f"group {group!r}: must be a list of grants")
        groups[group] = tuple(
            _grant(setting, f"group {group!r}, grant {i}", raw) for i, raw in enumerate(grants, 1)
        )
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
