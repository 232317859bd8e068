"""Where the master login comes from: DB_PASSWORD, else AWS (secret or cluster).

The AWS sources live in their own module, imported only when used, so that a run
with DB_HOST, DB_USER and DB_PASSWORD never loads the AWS SDK.
"""

from __future__ import annotations

from app.errors import ConfigError
from app.login import DEFAULT_PORT, MasterLogin
from app.retry import Deadline
from app.settings import Settings


def resolve(settings: Settings, deadline: Deadline) -> MasterLogin:
    """The master login, from the environment alone when it can be."""
    host, user, password = settings.db_host, settings.db_user, settings.db_password
    if host is not None and user is not None and password is not None:
        return MasterLogin(
            host=host,
            port=settings.db_port or DEFAULT_PORT,
            dbname=settings.db_name,
            user=user,
            password=password.get_secret_value(),
            source="env",
        )
    if not (settings.db_secret_arn or settings.db_cluster_id):
        missing = [
            name
            for name, value in (("DB_HOST", host), ("DB_USER", user), ("DB_PASSWORD", password))
            if value is None
        ]
        raise ConfigError(
            missing[0],
            f"not set ({', '.join(missing)} missing): set DB_HOST, DB_USER and DB_PASSWORD, "
            "or DB_SECRET_ARN or DB_CLUSTER_ID to find them in AWS",
        )
    from app import aws  # noqa: PLC0415 (the AWS SDK loads only on this path)

    return aws.resolve_login(settings, deadline)
