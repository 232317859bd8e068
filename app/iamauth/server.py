"""aurora-bootstrap iam-auth-server: a local stand-in for Aurora's IAM token check.

PostgreSQL's own `ldap` authentication asks it: pg_hba sends members of rds_iam here
(`hostssl all +rds_iam 0.0.0.0/0 ldap ldapserver=HOST ldapport=PORT ldapprefix="cn="
ldapsuffix=",dc=rds-iam"`), PostgreSQL passes the login's password (the token) in a
simple bind as `cn=USER,dc=rds-iam`, and the answer is success or invalidCredentials.
LDAP because it is compiled into the PostgreSQL builds users run and passes the whole
password (RADIUS caps it at 128 characters, PAM at 512 bytes; a token signed with
temporary credentials is well over 1 KB). Each decision is logged with the user and
the reason, never the token.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import re
import resource
import signal
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from app import log
from app.errors import ConfigError
from app.iamauth import ldap, token
from app.inputs import flags

if TYPE_CHECKING:
    from app.outcome import Run

_HOST_PORT = re.compile(r"^(?P<host>[A-Za-z0-9._\-]+|\[[0-9A-Fa-f:]+\]):(?P<port>\d{1,5})$")
_BIND_NAME = re.compile(r"^cn=(?P<user>[^,]+),dc=rds-iam$")


def _host_port(value: str) -> str:
    match = _HOST_PORT.fullmatch(value)
    if match is None or not 0 < int(match.group("port")) < 65536:
        raise ValueError("must be host:port")
    return value


class IamAuthSettings(BaseSettings):
    model_config = SettingsConfigDict(case_sensitive=True, extra="ignore", frozen=True)

    listen: str = Field("0.0.0.0:1389", alias="IAM_AUTH_LISTEN")
    endpoint: str = Field(alias="IAM_AUTH_ENDPOINT")
    keys: str | None = Field(None, alias="IAM_AUTH_KEYS")
    region: str = Field(alias="AWS_REGION", min_length=1)
    access_key_id: str | None = Field(None, alias="AWS_ACCESS_KEY_ID")
    secret_access_key: str | None = Field(None, alias="AWS_SECRET_ACCESS_KEY")
    log_level: str = Field("INFO", alias="LOG_LEVEL")

    _addresses = field_validator("listen", "endpoint")(classmethod(lambda cls, v: _host_port(v)))

    @model_validator(mode="after")
    def _some_key(self) -> IamAuthSettings:
        self.trusted()
        return self

    def trusted(self) -> dict[str, str]:
        """The key pairs tokens may be signed with."""
        if self.keys is None:
            if not (self.access_key_id and self.secret_access_key):
                raise ConfigError(
                    "IAM_AUTH_KEYS", "not set, nor AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
                )
            return {self.access_key_id: self.secret_access_key}
        pairs: dict[str, str] = {}
        for entry in self.keys.split(","):
            key_id, sep, secret = entry.strip().partition(":")
            if not sep or not key_id or not secret:
                raise ConfigError(
                    "IAM_AUTH_KEYS", "must be comma-separated ACCESS_KEY_ID:SECRET_ACCESS_KEY pairs"
                )
            pairs[key_id] = secret
        return pairs


def load() -> IamAuthSettings:
    return flags.load(IamAuthSettings)


# What one client may cost the server. PostgreSQL's ldap authentication connects,
# binds and unbinds within milliseconds: a connection has CONNECTION_SECONDS in all,
# however it trickles. Connections are capped below the descriptor limit, so that
# the server always has descriptors for its own work; a new connection beyond the cap
# displaces the oldest one, so that clients that stall cannot lock out a login.
CONNECTION_SECONDS = 10.0
# The server accepts up to BACKLOG connections in a burst before a displaced one's
# descriptor is closed: the cap leaves room for a burst and for the server's own.
BACKLOG = 32
RESERVED_DESCRIPTORS = 64 + 2 * BACKLOG
MAX_CONNECTIONS = 4096
# Characters of a value the client chose (a bind name) that reach the log.
MAX_LOGGED = 128
# A noisy event (connections displaced, descriptors exhausted) is logged at most once
# in this many seconds, with the number of times it happened.
NOISY_EVENT_SECONDS = 10.0


def connection_cap() -> int:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return MAX_CONNECTIONS
    return max(4, min(MAX_CONNECTIONS, soft - RESERVED_DESCRIPTORS))


def shown(text: str) -> str:
    """A client's text as the log shows it: cut to MAX_LOGGED characters."""
    if len(text) <= MAX_LOGGED:
        return text
    return f"{text[:MAX_LOGGED]}... ({len(text)} characters)"


class _Noisy:
    """An event logged at most once per NOISY_EVENT_SECONDS, with how often it came."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.count = 0
        self.last = -NOISY_EVENT_SECONDS

    def __call__(self, **fields: object) -> None:
        self.count += 1
        now = time.monotonic()
        if now - self.last >= NOISY_EVENT_SECONDS:
            log.event(self.name, logging.WARNING, times=self.count, **fields)
            self.count, self.last = 0, now


class Server:
    def __init__(self, settings: IamAuthSettings, cap: int | None = None) -> None:
        self.checker = token.Checker(settings.endpoint, settings.region, settings.trusted())
        # Only the server's own keys are secrets: nothing a client sends is, and the
        # server never logs a password (registering each would let a client redact
        # the log, and make every line cost more as they piled up).
        for secret in self.checker.keys.values():
            log.register_secret(secret)
        self.cap = cap or connection_cap()
        self.open: dict[asyncio.StreamWriter, asyncio.Task[None] | None] = {}
        self.displaced = _Noisy("iam_auth_connections_displaced")

    def decide(self, message: ldap.Message) -> tuple[int, str, str]:
        """(LDAP result, user, reason) for one bind."""
        match = _BIND_NAME.fullmatch(message.name)
        if match is None:
            return ldap.INVALID_CREDENTIALS, message.name, "bind name is not cn=USER,dc=rds-iam"
        user = match.group("user")
        if message.version != 3:
            return ldap.PROTOCOL_ERROR, user, f"LDAP version {message.version}, not 3"
        if message.password is None:
            return ldap.AUTH_METHOD_NOT_SUPPORTED, user, "not a simple bind"
        try:
            self.checker.check(user, message.password)
        except token.Refused as exc:
            return ldap.INVALID_CREDENTIALS, user, str(exc)
        return ldap.SUCCESS, user, "token verifies"

    def _admit(self, writer: asyncio.StreamWriter) -> None:
        while len(self.open) >= self.cap:
            oldest = next(iter(self.open))
            self.open.pop(oldest)
            oldest.transport.abort()
            self.displaced(cap=self.cap, reason="more connections than the cap")
        self.open[writer] = asyncio.current_task()

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._admit(writer)
        try:
            async with asyncio.timeout(CONNECTION_SECONDS):
                await self._converse(reader, writer)
        except TimeoutError:
            log.event(
                "iam_auth_connection",
                logging.WARNING,
                reason=f"connection open for {CONNECTION_SECONDS:g} s: closed",
            )
        except (ldap.BerError, ConnectionError, OSError) as exc:
            log.event("iam_auth_connection", logging.WARNING, reason=type(exc).__name__)
        except asyncio.CancelledError:
            pass  # the server is stopping: this connection ends with it, quietly
        finally:
            self.open.pop(writer, None)
            writer.transport.abort()

    async def _converse(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        buffer = b""
        while True:
            size = ldap.message_size(buffer)
            if size is None:
                chunk = await reader.read(4096)
                if not chunk:
                    return
                buffer += chunk
                continue
            message, buffer = ldap.decode(buffer[:size]), buffer[size:]
            if message.op == ldap.BIND_REQUEST:
                result, user, reason = self.decide(message)
                log.event(
                    "iam_auth",
                    logging.INFO if result == ldap.SUCCESS else logging.WARNING,
                    user=shown(user),
                    decision="accepted" if result == ldap.SUCCESS else "refused",
                    reason=shown(reason),
                )
                writer.write(ldap.bind_response(message.message_id, result))
            elif message.op in ldap.RESPONSES:
                # Answered, so that a client says what happened rather than that the
                # server went away; the client may go on (and unbind).
                unknown = message.op == ldap.EXTENDED_REQUEST
                log.event("iam_auth_unsupported", logging.WARNING, operation=hex(message.op))
                writer.write(
                    ldap.result_message(
                        message.message_id,
                        ldap.RESPONSES[message.op],
                        ldap.PROTOCOL_ERROR if unknown else ldap.UNWILLING_TO_PERFORM,
                        "this server answers simple binds only",
                    )
                )
            elif message.op == ldap.ABANDON_REQUEST:
                continue  # has no response
            else:
                if message.op != ldap.UNBIND_REQUEST:
                    log.event("iam_auth_unsupported", logging.WARNING, operation=hex(message.op))
                    writer.write(ldap.notice_of_disconnection(ldap.PROTOCOL_ERROR))
                    await writer.drain()
                return
            await writer.drain()

    async def close_all(self) -> None:
        """Close every client's connection and wait (briefly) for its task to end."""
        tasks = [task for task in self.open.values() if task is not None]
        for writer in list(self.open):
            writer.transport.abort()
        if tasks:
            await asyncio.wait(tasks, timeout=2)


def _loop_errors(noisy: _Noisy) -> Callable[[asyncio.AbstractEventLoop, dict[str, Any]], None]:
    """asyncio's own errors (an accept that ran out of descriptors) as JSON events, at
    most one per NOISY_EVENT_SECONDS, instead of a traceback each time."""

    def handle(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        noisy(
            what=str(context.get("message", "")),
            error=f"{type(exc).__name__}: {exc}" if exc is not None else "",
        )

    return handle


async def _run(settings: IamAuthSettings) -> None:
    host, _, port = settings.listen.rpartition(":")
    server = Server(settings)
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(_loop_errors(_Noisy("iam_auth_server_error")))
    listener = await asyncio.start_server(
        server.serve, host.strip("[]"), int(port), backlog=BACKLOG
    )
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    bound = ", ".join(str(s.getsockname()) for s in listener.sockets)
    log.event(
        "iam_auth_server_listening",
        listen=bound,
        endpoint=settings.endpoint,
        max_connections=server.cap,
        connection_seconds=CONNECTION_SECONDS,
    )
    await stop.wait()
    # From Python 3.12 Server.wait_closed() waits for every connection: close them
    # first, so that a stop takes no longer than its clients' tasks take to end.
    listener.close()
    await server.close_all()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(listener.wait_closed(), timeout=2)
    log.event("iam_auth_server_stopped", reason="stop signal")


def main() -> int:
    """Runs until SIGTERM or SIGINT, then exits 0."""
    settings = load()
    log.setup("json" if not os.isatty(2) else "text", settings.log_level.upper())
    asyncio.run(_run(settings))
    return 0


def command(args: argparse.Namespace, run: Run) -> int:
    """iam-auth-server, as the command line runs it."""
    return main()
