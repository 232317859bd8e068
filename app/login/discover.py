"""The master login found in AWS: a Secrets Manager secret, the cluster, or an IAM
token signed with the job's own credentials; or, with DB_TRANSPORT=data-api, the
cluster's ARN and the secret the RDS Data API logs in with.

Imported only when a setting needs AWS (`app.login.credentials` decides), so a run
with DB_HOST, DB_USER and DB_PASSWORD never loads the SDK.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from app import log
from app.aws import Aws, Cluster
from app.errors import AwsError, ConfigError
from app.inputs.settings import Settings
from app.login.master import DEFAULT_PORT, MasterLogin
from app.retry import Deadline


@dataclass(frozen=True)
class SecretLogin:
    username: str
    password: str
    host: str | None
    port: int | None
    dbname: str | None


def parse_secret(secret_id: str, text: str | None) -> SecretLogin:
    """The login in a secret's JSON; its problems are named, its values never shown."""
    if text is None:
        raise AwsError(f"secret {secret_id} holds binary data, not a JSON string")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise AwsError(
            f"secret {secret_id} is not JSON ({exc.msg} at character {exc.pos}); "
            'expected {"username": ..., "password": ...}'
        ) from None
    if not isinstance(data, dict):
        raise AwsError(f"secret {secret_id} is JSON but not an object")
    missing = [
        k for k in ("username", "password") if not isinstance(data.get(k), str) or not data[k]
    ]
    if missing:
        raise AwsError(f"secret {secret_id} lacks {' and '.join(missing)} (non-empty strings)")
    log.register_secret(data["password"])
    port = data.get("port")
    try:
        port_number = int(port) if port not in (None, "") else None
    except (TypeError, ValueError):
        raise AwsError(f"secret {secret_id} has a port that is not a number") from None
    return SecretLogin(
        username=data["username"],
        password=data["password"],
        host=data.get("host") or None,
        port=port_number,
        dbname=data.get("dbname") or None,
    )


def read_secret(aws: Aws, secret_id: str) -> SecretLogin:
    return parse_secret(secret_id, aws.secret_string(secret_id))


def by_token(settings: Settings, cluster: Cluster | None) -> bool:
    """DB_IAM_AUTH, or no password source given and a cluster that reports an IAM-only
    master (MasterUserAuthenticationType iam-db-auth)."""
    if settings.db_iam_auth:
        return True
    return (
        cluster is not None
        and cluster.master_auth == "iam-db-auth"
        and settings.db_password is None
        and settings.db_secret_arn is None
    )


def _pick(setting: str, *values: Any) -> Any:
    """The first value given: the explicit setting, then the secret's, then the cluster's."""
    for value in values:
        if value is not None:
            return value
    raise ConfigError(setting, "not set, and neither the secret nor a cluster provides it")


def from_aws(settings: Settings, deadline: Deadline, *, plan: bool = False) -> MasterLogin:
    """The spec's order: DB_PASSWORD, else DB_SECRET_ARN, else the cluster's managed
    secret; or, with DB_IAM_AUTH (or a cluster whose master is IAM-only), a token.
    Explicit DB_* settings override what is discovered."""
    aws = Aws(deadline)
    enable = ("plan" if plan else "apply") if settings.enable_iam_auth else None
    cluster = (
        aws.cluster(settings.db_cluster_id, enable_iam_auth=enable)
        if settings.db_cluster_id
        else None
    )
    if by_token(settings, cluster):
        return _token_login(settings, aws, cluster)
    prior = list(cluster.changes) if cluster else []
    secret_id = settings.db_secret_arn or (cluster.secret_arn if cluster else None)
    secret: SecretLogin | None = None
    if settings.db_password is None:
        if secret_id is None:
            raise AwsError(
                f"cluster {settings.db_cluster_id} has no managed master secret "
                "(ManageMasterUserPassword is off): set DB_SECRET_ARN or DB_PASSWORD"
            )
        secret = read_secret(aws, secret_id)
    host = _pick(
        "DB_HOST",
        settings.db_host,
        secret.host if secret else None,
        cluster.endpoint if cluster else None,
    )
    user = _pick(
        "DB_USER",
        settings.db_user,
        secret.username if secret else None,
        cluster.master_username if cluster else None,
    )
    port = (
        settings.db_port
        or (secret.port if secret else None)
        or (cluster.port if cluster else None)
        or DEFAULT_PORT
    )
    dbname = settings.db_name
    if "db_name" not in settings.model_fields_set and secret and secret.dbname:
        dbname = secret.dbname

    if secret is None:
        # Only when DB_PASSWORD is set: AWS supplied the endpoint or user alone.
        password = settings.db_password.get_secret_value() if settings.db_password else ""
        return MasterLogin(host, port, dbname, user, password, source="env", prior_changes=prior)
    return MasterLogin(
        host,
        port,
        dbname,
        user,
        secret.password,
        source="secret" if settings.db_secret_arn else "cluster",
        refetch=lambda: read_secret(aws, secret_id).password if secret_id else secret.password,
        prior_changes=prior,
    )


def _token_login(settings: Settings, aws: Aws, cluster: Cluster | None) -> MasterLogin:
    host = settings.db_host or (cluster.endpoint if cluster else None)
    user = settings.db_user or (cluster.master_username if cluster else None)
    if host is None or user is None:
        missing = "DB_HOST" if host is None else "DB_USER"
        raise ConfigError(missing, "not set, and no DB_CLUSTER_ID to find it (DB_IAM_AUTH)")
    port = settings.db_port or (cluster.port if cluster else None) or DEFAULT_PORT
    log.event("iam_login", user=user, reason="the master logs in with an IAM token")
    return MasterLogin(
        host,
        port,
        settings.db_name,
        user,
        "",
        source="iam",
        token=lambda: aws.auth_token(host, port, user),
        prior_changes=list(cluster.changes) if cluster else [],
    )


def data_api_login(settings: Settings, deadline: Deadline, *, plan: bool = False) -> MasterLogin:
    """The Data API's login: the cluster's ARN and a secret's, which the API reads itself
    (the job never does). DescribeDBClusters finds the ARN, the managed secret and the
    master's name, and checks the HTTP endpoint and IAM auth; with DB_CLUSTER_ARN and
    DB_SECRET_ARN both given it is not called, and the master is whoever the secret
    logs in as."""
    aws = Aws(deadline)
    cluster: Cluster | None = None
    if settings.db_cluster_id or not settings.db_secret_arn:
        enable = ("plan" if plan else "apply") if settings.enable_iam_auth else None
        name = settings.db_cluster_id or settings.db_cluster_arn or ""
        cluster = aws.cluster(name, enable_iam_auth=enable)
        if not cluster.http_endpoint:
            raise AwsError(
                f"cluster {cluster.identifier} has no Data API: its HTTP endpoint is off; "
                f"enable it with: aws rds enable-http-endpoint --resource-arn {cluster.arn}"
            )
    secret_arn = settings.db_secret_arn or (cluster.secret_arn if cluster else None)
    if secret_arn is None and cluster is not None:  # (no secret given: the cluster was read)
        if cluster.master_auth == "iam-db-auth":
            raise ConfigError(
                "DB_TRANSPORT",
                f"data-api logs in with a Secrets Manager secret, and the master of cluster "
                f"{cluster.identifier} logs in with IAM only (MasterUserAuthenticationType "
                "iam-db-auth); use DB_TRANSPORT=postgres with DB_IAM_AUTH",
            )
        raise AwsError(
            f"cluster {cluster.identifier} has no managed master secret "
            "(ManageMasterUserPassword is off): set DB_SECRET_ARN"
        )
    arn = cluster.arn if cluster else str(settings.db_cluster_arn)
    if secret_arn is None:
        raise ConfigError("DB_SECRET_ARN", "not set, and no cluster to find its managed secret")
    login = MasterLogin(
        host=arn,
        port=0,
        dbname=settings.db_name,
        user=settings.db_user or (cluster.master_username if cluster else ""),
        password="",
        source="secret" if settings.db_secret_arn else "cluster",
        prior_changes=list(cluster.changes) if cluster else [],
        transport="data-api",
        resource_arn=arn,
        secret_arn=secret_arn,
    )
    if not login.user:
        from app.login import dataapi  # noqa: PLC0415 (as the transport, only on this path)

        row = (
            dataapi.DataApiConnection(login, deadline, aws)
            .execute("SELECT current_user::text")
            .fetchone()
        )
        login.user = str(row[0]) if row else ""
    return login
