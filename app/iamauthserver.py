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

import asyncio
import contextlib
import logging
import os
import re
import signal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from app import iamtoken, ldapbind, log
from app.errors import ConfigError
from app.settings import load_flagged

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
    return load_flagged(IamAuthSettings, {}, {})


class Server:
    def __init__(self, settings: IamAuthSettings) -> None:
        self.checker = iamtoken.Checker(settings.endpoint, settings.region, settings.trusted())
        for secret in self.checker.keys.values():
            log.register_secret(secret)

    def decide(self, name: str, password: str | None) -> tuple[int, str, str]:
        """(LDAP result, user, reason) for one bind."""
        match = _BIND_NAME.fullmatch(name)
        if match is None:
            return ldapbind.INVALID_CREDENTIALS, name, "bind name is not cn=USER,dc=rds-iam"
        user = match.group("user")
        if password is None:
            return ldapbind.AUTH_METHOD_NOT_SUPPORTED, user, "not a simple bind"
        log.register_secret(password)
        try:
            self.checker.check(user, password)
        except iamtoken.Refused as exc:
            return ldapbind.INVALID_CREDENTIALS, user, str(exc)
        return ldapbind.SUCCESS, user, "token verifies"

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        buffer = b""
        try:
            while True:
                size = ldapbind.message_size(buffer)
                if size is None:
                    chunk = await asyncio.wait_for(reader.read(4096), timeout=30)
                    if not chunk:
                        return
                    buffer += chunk
                    continue
                message, buffer = ldapbind.decode(buffer[:size]), buffer[size:]
                if message.op != ldapbind.BIND_REQUEST:
                    return  # an unbind, or anything else: the conversation is over
                result, user, reason = self.decide(message.name, message.password)
                log.event(
                    "iam_auth",
                    logging.INFO if result == ldapbind.SUCCESS else logging.WARNING,
                    user=user,
                    decision="accepted" if result == ldapbind.SUCCESS else "refused",
                    reason=reason,
                )
                writer.write(ldapbind.bind_response(message.message_id, result))
                await writer.drain()
        except (ldapbind.BerError, TimeoutError, ConnectionError) as exc:
            log.event("iam_auth_connection", logging.WARNING, reason=type(exc).__name__)
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


async def _run(settings: IamAuthSettings) -> None:
    host, _, port = settings.listen.rpartition(":")
    server = Server(settings)
    listener = await asyncio.start_server(server.serve, host.strip("[]"), int(port))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    bound = ", ".join(str(s.getsockname()) for s in listener.sockets)
    log.event("iam_auth_server_listening", listen=bound, endpoint=settings.endpoint)
    async with listener:
        await stop.wait()
    log.event("iam_auth_server_stopped", reason="stop signal")


def main() -> int:
    """Runs until SIGTERM or SIGINT, then exits 0."""
    settings = load()
    log.setup("json" if not os.isatty(2) else "text", settings.log_level.upper())
    asyncio.run(_run(settings))
    return 0
