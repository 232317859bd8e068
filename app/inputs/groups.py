"""GROUP_ROLES: the group roles and what each may do, as a JSON or YAML document.

A mapping from group role name to a list of grants, each naming a database (default
DB_NAME), schemas (exact names, or "*" for every schema but PostgreSQL's own), an
access level (read, write) and the owners whose future objects get the same
privileges (default: the master user). The job resolves the defaults and hands the
document to the SQL as JSON (bootstrap.group_roles): the SQL never sees YAML or
guesses a default.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

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


def _document(setting: str, text: str) -> object:
    """JSON, or else YAML (of which JSON is nearly a subset; JSON is tried first for
    its precise errors, and to keep the YAML parser off the import path)."""
    stripped = text.strip()
    if stripped.startswith("{"):
        try:
            return json.loads(stripped)
        except json.JSONDecodeError:
            pass
    import yaml  # noqa: PLC0415

    try:
        return yaml.safe_load(stripped)
    except yaml.YAMLError as exc:
        raise ConfigError(
            setting, f"not valid JSON or YAML: {' '.join(str(exc).split())}"
        ) from None


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
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(FILE_SETTING, f"cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(FILE_SETTING, f"{path} is not UTF-8 (byte {exc.start})") from None
    return parse(text, FILE_SETTING)
