"""The order in which the master login is resolved: DB_PASSWORD (with DB_HOST and
DB_USER), else AWS (`app.login.discover`: the secret, the cluster, an IAM token); with
DB_TRANSPORT=data-api, the cluster and secret the RDS Data API logs in with.

The AWS half is imported only when it is needed, so that a run with DB_HOST, DB_USER
and DB_PASSWORD never loads the AWS SDK.
"""

from __future__ import annotations

from app.errors import ConfigError
from app.inputs.settings import Settings
from app.login.master import DEFAULT_PORT, MasterLogin
from app.retry import Deadline


def check(settings: Settings) -> ConfigError | None:
    """The first thing a run needs: somewhere to log in. None when there is one (the
    Data API's cluster the settings have checked already)."""
    if settings.db_transport == "data-api":
        return None
    given: list[tuple[str, object]] = [("DB_HOST", settings.db_host), ("DB_USER", settings.db_user)]
    if not settings.db_iam_auth:  # else a token, signed for each attempt, is the password
        given.append(("DB_PASSWORD", settings.db_password))
    missing = [name for name, value in given if value is None]
    if not missing or settings.db_secret_arn or settings.db_cluster_id:
        return None
    return ConfigError(
        missing[0],
        f"not set ({', '.join(missing)} missing): set DB_HOST, DB_USER and DB_PASSWORD, "
        "or DB_SECRET_ARN or DB_CLUSTER_ID to find them in AWS",
    )


def resolve(settings: Settings, deadline: Deadline, *, plan: bool = False) -> MasterLogin:
    """The master login, from the environment alone when it can be, once check() has
    found somewhere to log in. A master named by AWS alone (DB_USER unset) is held to
    the rules the settings hold DB_USER to when it is set."""
    data_api = settings.db_transport == "data-api"
    host, user, password = settings.db_host, settings.db_user, settings.db_password
    # ENABLE_IAM_AUTH and DB_IAM_AUTH need the cluster, or a token, and the Data API
    # is an AWS service: AWS either way.
    aws_needed = data_api or settings.db_iam_auth or settings.enable_iam_auth
    if host is not None and user is not None and password is not None and not aws_needed:
        return MasterLogin(
            host=host,
            port=settings.db_port or DEFAULT_PORT,
            dbname=settings.db_name,
            user=user,
            password=password.get_secret_value(),
            source="env",
        )
    from app.login import discover  # noqa: PLC0415 (the AWS SDK loads only on this path)

    found = discover.data_api_login if data_api else discover.from_aws
    login = found(settings, deadline, plan=plan)
    if settings.db_user is None:
        settings.check_master(login.user)
    return login
