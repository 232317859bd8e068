"""Checking an RDS IAM auth token as Aurora does: a SigV4 presigned URL.

A token is `HOST:PORT/?Action=connect&DBUser=USER&X-Amz-Algorithm=AWS4-HMAC-SHA256&
X-Amz-Credential=KEY/DATE/REGION/rds-db/aws4_request&X-Amz-Date=...&X-Amz-Expires=900&
X-Amz-SignedHeaders=host[&X-Amz-Security-Token=...]&X-Amz-Signature=...`, signed as
botocore's generate_db_auth_token signs it: a GET of `/` with the host header alone
signed and the SHA-256 of an empty body as the payload hash.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
from dataclasses import dataclass
from urllib.parse import parse_qsl, quote

SERVICE = "rds-db"
MAX_EXPIRES = 900
CLOCK_SKEW = datetime.timedelta(minutes=5)
_EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


class Refused(Exception):
    """Why a token is not accepted; never holds the token."""


@dataclass(frozen=True)
class Checker:
    endpoint: str  # the host:port tokens must be signed for
    region: str
    keys: dict[str, str]  # trusted access key id -> secret access key

    def check(self, user: str, token: str, now: datetime.datetime | None = None) -> None:
        """Accept `token` as `user`'s password, or raise Refused saying why."""
        host, values, signature = _parse(token)
        self._claims(user, host, values)
        secret, date = self._scope(values)
        _in_time(values, date, now or datetime.datetime.now(datetime.UTC))
        expected = _signature(host, values, secret, date, self.region)
        if not hmac.compare_digest(expected, signature):
            raise Refused("signature does not verify")

    def _claims(self, user: str, host: str, values: dict[str, str]) -> None:
        if values.get("Action") != "connect":
            raise Refused("Action is not connect")
        if values.get("DBUser") != user:
            raise Refused("signed for another user")
        if host != self.endpoint:
            raise Refused("signed for another endpoint")
        if values.get("X-Amz-Algorithm") != "AWS4-HMAC-SHA256":
            raise Refused("not signed with AWS4-HMAC-SHA256")
        if values.get("X-Amz-SignedHeaders") != "host":
            raise Refused("signed headers are not host alone")

    def _scope(self, values: dict[str, str]) -> tuple[str, str]:
        """The secret of the trusted key the token names, and its credential date."""
        scope = [*values.get("X-Amz-Credential", "").split("/"), "", "", "", "", ""]
        key_id, date, region, service, terminal = scope[:5]
        if (region, service, terminal) != (self.region, SERVICE, "aws4_request"):
            raise Refused(f"credential scope is not {self.region}/{SERVICE}")
        secret = self.keys.get(key_id)
        if secret is None:
            raise Refused("signed with a key this server does not trust")
        return secret, date


def _parse(token: str) -> tuple[str, dict[str, str], str]:
    """(host:port, parameters without the signature, signature)."""
    host, sep, query = token.partition("/?")
    if not sep or not host:
        raise Refused("not an IAM auth token")
    params = parse_qsl(query, keep_blank_values=True)
    values = dict(params)
    if len(values) != len(params):
        raise Refused("a parameter is repeated")
    return host, values, values.pop("X-Amz-Signature", "")


def _in_time(values: dict[str, str], date: str, now: datetime.datetime) -> None:
    try:
        signed_at = datetime.datetime.strptime(
            values.get("X-Amz-Date", ""), "%Y%m%dT%H%M%SZ"
        ).replace(tzinfo=datetime.UTC)
        expires = int(values.get("X-Amz-Expires", ""))
    except ValueError:
        raise Refused("X-Amz-Date or X-Amz-Expires is malformed") from None
    if date != signed_at.strftime("%Y%m%d"):
        raise Refused("credential date and X-Amz-Date differ")
    if not 0 < expires <= MAX_EXPIRES:
        raise Refused(f"X-Amz-Expires is not within 1-{MAX_EXPIRES} seconds")
    if signed_at > now + CLOCK_SKEW:
        raise Refused("signed in the future")
    if signed_at + datetime.timedelta(seconds=expires) < now:
        raise Refused("expired")


def _quote(text: str) -> str:
    return quote(text, safe="-_.~")


def _signature(host: str, params: dict[str, str], secret: str, date: str, region: str) -> str:
    query = "&".join(f"{_quote(k)}={_quote(v)}" for k, v in sorted(params.items()))
    canonical = "\n".join(["GET", "/", query, f"host:{host}\n", "host", _EMPTY_SHA256])
    scope = f"{date}/{region}/{SERVICE}/aws4_request"
    to_sign = "\n".join(
        [
            "AWS4-HMAC-SHA256",
            params["X-Amz-Date"],
            scope,
            hashlib.sha256(canonical.encode()).hexdigest(),
        ]
    )
    key = f"AWS4{secret}".encode()
    for part in (date, region, SERVICE, "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
