"""One login as the master user over TLS, and what its failures mean.

libpq reports connection failures as text with no SQLSTATE, so they are told apart by
the messages libpq and the server send; anything not known to be final is treated as
transient (a cluster resuming, resolving, restarting) and retried by the caller.
"""

from __future__ import annotations

import math
import re
from typing import cast

import psycopg

from app import log
from app.errors import ConfigError, LoginRefused
from app.inputs.settings import Settings
from app.login.master import MasterLogin
from app.retry import Deadline

APPLICATION_NAME = "aurora-bootstrap"

_AUTH_FAILED = re.compile(
    r"password authentication failed|authentication failed|"
    r"no pg_hba\.conf entry|pg_hba\.conf rejects|"
    r'role "[^"]*" does not exist|database "[^"]*" does not exist|'
    r"permission denied for database|not permitted to log in|"
    r"password is required",
)
# Only a certificate that does not verify, a host name it does not hold, an alert the
# peer sends on purpose, or a server without TLS are final. A handshake cut short
# ("SSL error: unexpected eof", "SSL SYSCALL error", a reset) is a server restarting
# or failing over: transient.
_TLS_FAILED = re.compile(
    r"certificate|does not match host name|server does not support SSL|"
    r"tlsv1 alert|sslv3 alert|wrong version number",
    re.IGNORECASE,
)
# Retryable states seen inside a session: serialization, deadlock, lock timeout,
# too many connections, shutdown/restart, crash recovery, and a read-only
# transaction (the writer endpoint still resolving to a demoted instance).
RETRY_SQLSTATES = frozenset(
    {"40001", "40P01", "55P03", "53300", "57P01", "57P02", "57P03", "25006"}
)


# Catalogs every database shares: two runs working in different databases hold
# different advisory locks, and the second to write the same row of one (a role both
# create, a membership both grant, the marker's comment both update) fails rather
# than waits. It is a concurrent run's doing: the next attempt finds its work done.
_SHARED_CATALOGS = frozenset(
    {"pg_authid", "pg_auth_members", "pg_shdescription", "pg_database", "pg_shdepend"}
)


def is_concurrent_catalog_write(exc: psycopg.Error) -> bool:
    diag = exc.diag
    if exc.sqlstate == "23505":
        return diag.table_name in _SHARED_CATALOGS
    return exc.sqlstate == "XX000" and diag.message_primary == "tuple concurrently updated"


def is_auth_failure(exc: psycopg.OperationalError) -> bool:
    return bool(_AUTH_FAILED.search(str(exc)))


def is_transient(exc: BaseException) -> bool:
    """Whether a retry of the whole unit (connect and transaction) may succeed."""
    if not isinstance(exc, psycopg.Error):
        return False
    state = exc.sqlstate
    if state is not None:
        return (
            state in RETRY_SQLSTATES or state.startswith("08") or is_concurrent_catalog_write(exc)
        )
    # Without a server code: the connection failed or was lost.
    return isinstance(exc, psycopg.OperationalError)


def describe(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    if isinstance(exc, psycopg.Error) and exc.sqlstate:
        text = f"{text} (SQLSTATE {exc.sqlstate})"
    return log.redact(f"{type(exc).__name__}: {text}")


def sslrootcert(settings: Settings) -> str | None:
    """The CA bundle to verify against: required by verify-*, used if present otherwise."""
    rootcert = settings.db_sslrootcert
    if settings.db_sslmode in ("verify-ca", "verify-full"):
        if not rootcert.is_file():
            raise ConfigError(
                "DB_SSLROOTCERT",
                f"CA bundle {rootcert} not found (needed by DB_SSLMODE={settings.db_sslmode})",
            )
        return str(rootcert)
    if settings.db_sslmode != "disable" and rootcert.is_file():
        return str(rootcert)
    return None


def check(settings: Settings) -> ConfigError | None:
    """A TLS setting problem that can be found before any connection is tried (the
    Data API uses none)."""
    if settings.db_transport == "data-api":
        return None
    try:
        sslrootcert(settings)
    except ConfigError as exc:
        return exc
    return None


def connect(
    login: MasterLogin, settings: Settings, deadline: Deadline
) -> psycopg.Connection[tuple[object, ...]]:
    """One connection attempt. Final refusals raise LoginRefused; others propagate.

    A password from Secrets Manager may have rotated since it was read: on an
    authentication failure it is fetched again once before the login counts as refused.
    With DB_TRANSPORT=data-api the connection is the RDS Data API, shaped as the part
    of psycopg's connection the job uses (`app.login.dataapi`).
    """
    if login.transport == "data-api":
        from app.login import dataapi  # noqa: PLC0415 (it loads the AWS SDK)

        deadline.activity = f"calling the Data API of {login.resource_arn}"
        return cast(
            "psycopg.Connection[tuple[object, ...]]", dataapi.DataApiConnection(login, deadline)
        )
    deadline.activity = f"connecting to {login.host}:{login.port}"
    while True:
        timeout = max(2, min(settings.connect_timeout, math.ceil(deadline.remaining())))
        try:
            conn = psycopg.connect(
                host=login.host,
                port=login.port,
                dbname=login.dbname,
                user=login.user,
                password=login.attempt_password(),
                connect_timeout=timeout,
                application_name=APPLICATION_NAME,
                sslmode=settings.db_sslmode,
                sslrootcert=sslrootcert(settings),
                # A connection that goes silent (packets dropped, a peer gone without
                # a word) is noticed within about ten seconds: keepalive probes from
                # 5 s idle, and data or probes unacknowledged for 10 s end it.
                keepalives=1,
                keepalives_idle=5,
                keepalives_interval=1,
                keepalives_count=5,
                tcp_user_timeout=10_000,
            )
        except psycopg.OperationalError as exc:
            if is_auth_failure(exc):
                if login.source == "iam":
                    raise LoginRefused(
                        f"{login.user}@{login.host}: the IAM token login was refused: "
                        f"{describe(exc)}. Likely causes: the task role lacks rds-db:connect "
                        f"on dbuser:.../{login.user} (see `aurora-bootstrap policy`), IAM "
                        f"database authentication is off on the cluster (ENABLE_IAM_AUTH), "
                        f"or {login.user} is not a member of rds_iam"
                    ) from None
                if login.refresh_password():
                    log.event("secret_refetched", reason="login refused; secret may have rotated")
                    continue
                raise LoginRefused(f"{login.user}@{login.host}: {describe(exc)}") from None
            if _TLS_FAILED.search(str(exc)):
                raise LoginRefused(
                    f"TLS to {login.host}:{login.port} failed (DB_SSLMODE="
                    f"{settings.db_sslmode}, DB_SSLROOTCERT={settings.db_sslrootcert}): "
                    f"{describe(exc)}"
                ) from None
            raise
        conn.add_notice_handler(_log_notice)
        return conn


def _log_notice(diag: psycopg.errors.Diagnostic) -> None:
    log.event("server_notice", severity=diag.severity, text=diag.message_primary)
