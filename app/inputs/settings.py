"""Settings from the environment, exactly the variables of the contract."""

from __future__ import annotations

import functools
import re
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_core import ErrorDetails
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from app import log, sqlfiles
from app.errors import ConfigError
from app.inputs import groups, users
from app.retry import Deadline

DEFAULT_SSLROOTCERT = Path("/etc/aurora-bootstrap/rds-global-bundle.pem")
SslMode = Literal["disable", "allow", "prefer", "require", "verify-ca", "verify-full"]
Transport = Literal["postgres", "data-api"]
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]

# Settings whose values are never echoed back, even in an error message.
SECRET_SETTINGS = frozenset({"DB_PASSWORD"})
# Settings for which an empty value means "none", as the contract's default says.
# (An empty GROUP_ROLES is the shipped default document, as compose and CloudFormation
# pass an unset parameter.)
EMPTY_MEANS_NONE = frozenset({"IAM_USERS", "GROUP_ROLES", "GROUP_ROLES_FILE"})

_HOST_RE = re.compile(r"^[A-Za-z0-9._:\-\[\]]{1,253}$")
_CLUSTER_RE = re.compile(r"^[A-Za-z][A-Za-z0-9-]{0,62}$")
_CLUSTER_ARN_RE = re.compile(
    r"^arn:aws[a-z-]*:rds:[a-z0-9-]+:\d{12}:cluster:[A-Za-z][A-Za-z0-9-]{0,62}$"
)
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")


def default_init_sql() -> Path:
    """sql/init.sql of the installed app: packaged beside it, or in the source tree."""
    return sqlfiles.path("init.sql")


def privileges_sql() -> Path:
    """sql/privileges.sql, which init.sql's roles get their privileges from in each
    database: always the installed app's (INIT_SQL replaces init.sql alone)."""
    return sqlfiles.path("privileges.sql")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        case_sensitive=True, extra="ignore", frozen=True, populate_by_name=False
    )

    db_host: str | None = Field(None, alias="DB_HOST")
    db_port: int | None = Field(None, alias="DB_PORT", ge=1, le=65535)
    db_name: str = Field("postgres", alias="DB_NAME", min_length=1, max_length=63)
    db_user: str | None = Field(None, alias="DB_USER", min_length=1, max_length=63)
    db_password: SecretStr | None = Field(None, alias="DB_PASSWORD")
    db_secret_arn: str | None = Field(None, alias="DB_SECRET_ARN", max_length=2048)
    db_cluster_id: str | None = Field(None, alias="DB_CLUSTER_ID")
    db_cluster_arn: str | None = Field(None, alias="DB_CLUSTER_ARN", max_length=2048)
    # postgres: a TLS connection to the writer; data-api: the RDS Data API over HTTPS.
    db_transport: Transport = Field("postgres", alias="DB_TRANSPORT")
    db_sslmode: SslMode = Field("verify-full", alias="DB_SSLMODE")
    db_sslrootcert: Path = Field(DEFAULT_SSLROOTCERT, alias="DB_SSLROOTCERT")
    iam_users: Annotated[tuple[users.IamUser, ...], NoDecode] = Field((), alias="IAM_USERS")
    group_roles_text: str | None = Field(None, alias="GROUP_ROLES", repr=False)
    group_roles_file: Path | None = Field(None, alias="GROUP_ROLES_FILE")
    init_sql: Path = Field(default_factory=default_init_sql, alias="INIT_SQL")
    prune: bool = Field(False, alias="PRUNE")
    deadline_seconds: float = Field(
        300.0, alias="DEADLINE_SECONDS", gt=0, le=86400, allow_inf_nan=False
    )
    connect_timeout: int = Field(10, alias="CONNECT_TIMEOUT", ge=1, le=3600)
    # The host:port the local stand-in checks tokens against (iam-auth-server); where
    # set, `token` signs for it, as clients outside the stack reach the database there.
    iam_auth_endpoint: str | None = Field(
        None, alias="IAM_AUTH_ENDPOINT", pattern=r"^[A-Za-z0-9._\-]+:\d{1,5}$"
    )
    db_iam_auth: bool = Field(False, alias="DB_IAM_AUTH")
    enable_iam_auth: bool = Field(False, alias="ENABLE_IAM_AUTH")
    log_format: Literal["json", "text"] | None = Field(None, alias="LOG_FORMAT")
    log_level: LogLevel = Field("INFO", alias="LOG_LEVEL")

    @model_validator(mode="before")
    @classmethod
    def _no_empty_or_undecodable(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        problems: list[ConfigError] = []
        for name, value in data.items():
            if not isinstance(value, str):
                continue
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                problems.append(ConfigError(name, "is not valid UTF-8"))
                continue
            if not value.strip() and name not in EMPTY_MEANS_NONE:
                problems.append(ConfigError(name, "is set but empty; unset it to use the default"))
        if problems:
            raise ConfigError.all_of(problems)
        return data

    @field_validator("iam_users", mode="before")
    @classmethod
    def _parse_users(cls, value: Any) -> Any:
        return users.parse(value) if isinstance(value, str) else value

    @field_validator("db_host")
    @classmethod
    def _host(cls, value: str | None) -> str | None:
        if value is not None and not _HOST_RE.fullmatch(value):
            raise ValueError("must be a host name or IP address")
        return value

    @field_validator("db_cluster_id")
    @classmethod
    def _cluster(cls, value: str | None) -> str | None:
        if value is not None and not _CLUSTER_RE.fullmatch(value):
            raise ValueError(
                "must be an Aurora cluster identifier (a letter, then letters, digits "
                "and hyphens, at most 63 characters)"
            )
        return value

    @field_validator("db_cluster_arn")
    @classmethod
    def _cluster_arn(cls, value: str | None) -> str | None:
        if value is not None and not _CLUSTER_ARN_RE.fullmatch(value):
            raise ValueError(
                "must be an Aurora cluster's ARN (arn:aws:rds:REGION:ACCOUNT:cluster:ID)"
            )
        return value

    @field_validator("db_transport", mode="before")
    @classmethod
    def _transport(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value

    @field_validator("db_name", "db_user", "db_secret_arn")
    @classmethod
    def _printable(cls, value: str | None) -> str | None:
        if value is not None and (_CONTROL_RE.search(value) or value != value.strip()):
            raise ValueError("must not contain control characters or surrounding spaces")
        return value

    @field_validator("log_format", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @field_validator("group_roles_text", "group_roles_file", mode="before")
    @classmethod
    def _blank_is_unset(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        self.group_roles.check(self.iam_users)
        if self.db_user is not None:
            self.check_master(self.db_user)
        if self.db_iam_auth:
            given = [
                name
                for name, value in (
                    ("DB_PASSWORD", self.db_password),
                    ("DB_SECRET_ARN", self.db_secret_arn),
                )
                if value is not None
            ]
            if given:
                raise ConfigError(
                    "DB_IAM_AUTH",
                    f"the job logs in with an IAM token, so {' and '.join(given)} must not be "
                    "set too",
                )
        if self.enable_iam_auth and not self.db_cluster_id:
            raise ConfigError("ENABLE_IAM_AUTH", "needs DB_CLUSTER_ID: the cluster to modify")
        if self.db_transport == "data-api":
            self._data_api()
        elif self.db_cluster_arn is not None:
            raise ConfigError(
                "DB_CLUSTER_ARN", "is for DB_TRANSPORT=data-api; a connection uses DB_CLUSTER_ID"
            )
        return self

    def _data_api(self) -> None:
        """The Data API logs in with a Secrets Manager secret, to a cluster named by
        its identifier or ARN; what only a connection uses is refused, not ignored.
        (DB_HOST, DB_PORT and the TLS settings are not read, and not checked.)"""
        if self.db_iam_auth:
            raise ConfigError(
                "DB_IAM_AUTH",
                "cannot be used with DB_TRANSPORT=data-api: the Data API logs in with a "
                "Secrets Manager secret, never an IAM token (an IAM-only master cannot use "
                "it)",
            )
        if not self.db_cluster_id and not self.db_cluster_arn:
            raise ConfigError(
                "DB_TRANSPORT",
                "data-api needs the cluster: set DB_CLUSTER_ID or DB_CLUSTER_ARN",
            )
        if self.db_cluster_id and self.db_cluster_arn:
            raise ConfigError("DB_CLUSTER_ARN", "is set and so is DB_CLUSTER_ID; set one of them")
        if self.db_password is not None:
            raise ConfigError(
                "DB_PASSWORD",
                "is not used by DB_TRANSPORT=data-api, which logs in with a Secrets Manager "
                "secret (DB_SECRET_ARN, or the cluster's managed secret)",
            )

    def check_master(self, master: str) -> None:
        """The master may be neither an IAM user (rds_iam would lock it out), a role
        granted to one, nor a group: checked here when DB_USER names it, by the login
        when AWS does."""
        users.check_master(self.iam_users, master)
        self.group_roles.check_master(master)

    @functools.cached_property
    def group_roles(self) -> groups.GroupRoles:
        """The GROUP_ROLES document, from the variable or the file; the shipped
        default when neither is set."""
        if self.group_roles_text is not None and self.group_roles_file is not None:
            raise ConfigError(
                groups.SETTING, f"is set and so is {groups.FILE_SETTING}; set one of them"
            )
        if self.group_roles_file is not None:
            return groups.load_file(self.group_roles_file)
        if self.group_roles_text is not None:
            return groups.parse(self.group_roles_text)
        return groups.DEFAULT

    @property
    def log_format_resolved(self) -> Literal["json", "text"]:
        if self.log_format is not None:
            return self.log_format
        return "text" if sys.stderr.isatty() else "json"


def describe_error(error: ErrorDetails) -> ConfigError:
    """A pydantic error as a ConfigError naming the variable; secrets are never shown."""
    loc = error.get("loc") or ("settings",)
    name = str(loc[0])
    message = str(error.get("msg", "is invalid")).removeprefix("Value error, ")
    value = error.get("input")
    if (
        name not in SECRET_SETTINGS
        and isinstance(value, str)
        and error.get("type") != "value_error"
    ):
        shown = value if len(value) <= 80 else value[:77] + "..."
        message = f"{message} (got {shown!r})"
    return ConfigError(name, message)


def load(overrides: Mapping[str, str] | None = None) -> Settings:
    """Read and check every setting, `overrides` (variable -> value) winning over the
    environment; all the problems found are raised together, as one ConfigError
    naming the first setting."""
    given: dict[str, Any] = dict(overrides or {})
    try:
        return Settings(**given)
    except ValidationError as exc:
        raise ConfigError.all_of([describe_error(e) for e in exc.errors()]) from None


# DEADLINE_SECONDS when it is not set, or is itself what could not be read.
DEFAULT_DEADLINE_SECONDS: float = Settings.model_fields["deadline_seconds"].default


def configure(
    started: float,
    overrides: Mapping[str, str] | None = None,
    *,
    reserve: Callable[[float], float] | None = None,
) -> tuple[Settings, Deadline]:
    """The run's settings, its logging, and its deadline, armed; `reserve` says how
    much of DEADLINE_SECONDS to keep for after the run (an answer to CloudFormation)."""
    conf = load(overrides)
    log.setup(conf.log_format_resolved, conf.log_level)
    if conf.db_password is not None:
        log.register_secret(conf.db_password.get_secret_value())
    reserved = reserve(conf.deadline_seconds) if reserve is not None else 0.0
    deadline = Deadline(conf.deadline_seconds, started=started, reserved=reserved)
    deadline.arm()
    return conf, deadline
