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
    source: Literal["env", "secret", "cluster"]
    # Fetches the password again (a rotated secret); None when it cannot change.
    refetch: Callable[[], str] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        log.register_secret(self.password)

    def refresh_password(self) -> bool:
        """Fetch a rotated password once; False when there is nothing to fetch."""
        if self.refetch is None:
            return False
        self.password = self.refetch()
        log.register_secret(self.password)
        self.refetch = None
        return True
