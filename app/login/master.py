"""The master login the job connects with, wherever it came from.

Below both credential sources (the environment in `credentials`, AWS in `aws`), so
that neither has to import the other to describe what it found.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from app import log

DEFAULT_PORT = 5432


@dataclass
class MasterLogin:
    host: str
    port: int
    dbname: str
    user: str
    password: str = field(repr=False)
    source: Literal["env", "secret", "cluster", "iam"]
    # Fetches the password again (a rotated secret); None when it cannot change.
    refetch: Callable[[], str] | None = field(default=None, repr=False)
    # Signs a fresh IAM auth token, the password of each attempt (DB_IAM_AUTH).
    token: Callable[[], str] | None = field(default=None, repr=False)
    # What was done, or with plan would be done, before logging in (enabling IAM auth).
    prior_changes: list[dict[str, object]] = field(default_factory=list)
    # How the job reaches the database: a connection, or the RDS Data API with the
    # cluster's ARN and a secret's (DB_TRANSPORT).
    transport: Literal["postgres", "data-api"] = "postgres"
    resource_arn: str | None = None
    secret_arn: str | None = None

    def __post_init__(self) -> None:
        log.register_secret(self.password)

    def attempt_password(self) -> str:
        """The password for the next connection attempt: a fresh token when the login
        is by IAM (a token is good for 15 minutes, and a run may outlast one)."""
        if self.token is not None:
            self.password = self.token()
            log.register_secret(self.password)
        return self.password

    def refresh_password(self) -> bool:
        """Fetch a rotated password once; False when there is nothing to fetch."""
        if self.refetch is None:
            return False
        self.password = self.refetch()
        log.register_secret(self.password)
        self.refetch = None
        return True
