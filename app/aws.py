"""AWS: the master login from Secrets Manager or the cluster, IAM tokens, the policy.

Imported only when a setting needs AWS, so local runs never load the SDK. botocore's
own retrying is turned off: every call goes through the job's one retry policy, so
each retry is logged and all of them share DEADLINE_SECONDS.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any, TypeVar

import boto3
import botocore.exceptions as bx
import botocore.loaders
from botocore.config import Config
from botocore.waiter import WaiterModel

from app import log, retry
from app.errors import AwsAccessDenied, AwsError, ConfigError
from app.login import DEFAULT_PORT, MasterLogin
from app.retry import Deadline
from app.settings import Settings

if TYPE_CHECKING:
    from mypy_boto3_rds import RDSClient
    from mypy_boto3_secretsmanager import SecretsManagerClient

T = TypeVar("T")

# The throttling and transient error codes of botocore's standard retry mode (a test
# keeps them in step with botocore), so the job retries what the SDK would.
THROTTLING_CODES = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottledException",
        "TooManyRequestsException",
        "ProvisionedThroughputExceededException",
        "TransactionInProgressException",
        "RequestLimitExceeded",
        "BandwidthLimitExceeded",
        "LimitExceededException",
        "RequestThrottled",
        "SlowDown",
        "PriorRequestNotComplete",
        "EC2ThrottledException",
    }
)
TRANSIENT_CODES = frozenset(
    {"RequestTimeout", "RequestTimeoutException", "PriorRequestNotComplete"}
)
TRANSIENT_STATUS = frozenset({429, 500, 502, 503, 504})
TRANSIENT_EXCEPTIONS = bx.ConnectionError | bx.HTTPClientError

# Cluster states that waiting will not fix, besides those botocore's own
# DBClusterAvailable waiter gives up on (deleted, deleting, failed, incompatible-*):
# a stopped cluster starts only when someone starts it, and a lost KMS key or a failed
# clone or migration needs a person. Every other state but "available" passes by
# itself (creating, modifying, failing-over, backtracking, upgrading, ...), as the
# waiter assumes too, and is waited for within the deadline.
CLUSTER_NEEDS_SOMEONE = frozenset(
    {
        "stopped",
        "stopping",
        "inaccessible-encryption-credentials",
        "inaccessible-encryption-credentials-recoverable",
        "cloning-failed",
        "migration-failed",
    }
)
SECRET_BUSY = frozenset({"creating", "rotating"})


class NotReady(Exception):
    """A resource that will be ready soon: retried like throttling."""


def is_transient(exc: BaseException) -> bool:
    if isinstance(exc, NotReady | TRANSIENT_EXCEPTIONS):
        return True
    if isinstance(exc, bx.ClientError):
        error = exc.response.get("Error", {})
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        code = error.get("Code", "")
        return code in THROTTLING_CODES or code in TRANSIENT_CODES or status in TRANSIENT_STATUS
    return False


def describe(exc: BaseException) -> str:
    if isinstance(exc, bx.ClientError):
        error = exc.response.get("Error", {})
        return log.redact(f"{error.get('Code', 'Error')}: {error.get('Message', '')}")
    return log.redact(f"{type(exc).__name__}: {exc}")


@dataclass(frozen=True)
class Cluster:
    identifier: str
    arn: str
    endpoint: str
    port: int
    master_username: str
    resource_id: str
    secret_arn: str | None
    # "password", "iam-db-auth" or "iam-db-auth-and-password" where the API reports it
    master_auth: str | None = None
    # What ENABLE_IAM_AUTH did, or with plan would do, to the cluster.
    changes: tuple[dict[str, object], ...] = ()

    @property
    def partition_region_account(self) -> tuple[str, str, str]:
        # arn:PARTITION:rds:REGION:ACCOUNT:cluster:ID
        parts = self.arn.split(":")
        return parts[1], parts[3], parts[4]


@dataclass(frozen=True)
class SecretLogin:
    username: str
    password: str
    host: str | None
    port: int | None
    dbname: str | None


class Aws:
    """Clients with SDK retries off, and calls under the job's retry policy."""

    def __init__(self, deadline: Deadline) -> None:
        self.deadline = deadline
        # botocore reads AWS_DEFAULT_REGION and profiles; ECS and most tools set
        # AWS_REGION, so it is honoured too when nothing else names a region.
        self.session = boto3.session.Session()
        region = self.session.region_name or os.environ.get("AWS_REGION")
        if not region:
            raise ConfigError(
                "AWS_REGION", "not set (nor AWS_DEFAULT_REGION): the cluster's region is needed"
            )
        if self.session.region_name is None:
            self.session = boto3.session.Session(region_name=region)
        self.region: str = region

    def config(self) -> Config:
        timeout = max(1, min(10, math.ceil(self.deadline.remaining())))
        return Config(
            retries={"total_max_attempts": 1, "mode": "standard"},
            connect_timeout=timeout,
            read_timeout=timeout,
            user_agent_extra="aurora-bootstrap",
        )

    @cached_property
    def rds(self) -> RDSClient:
        return self.session.client("rds", config=self.config())

    @cached_property
    def secretsmanager(self) -> SecretsManagerClient:
        return self.session.client("secretsmanager", config=self.config())

    def call(self, fn: Callable[[], T], *, what: str, missing: str) -> T:
        """fn under the retry policy; final AWS failures become AwsError (exit 3).

        `missing` names the resource, for "not found" and "access denied" messages.
        """
        try:
            return retry.run(
                fn, what=what, deadline=self.deadline, transient=is_transient, describe=describe
            )
        except bx.NoCredentialsError:
            raise AwsError(
                f"{what}: no AWS credentials found (task role, AWS_PROFILE or AWS_ACCESS_KEY_ID)"
            ) from None
        except bx.ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if "NotFound" in code:
                raise AwsError(f"{what}: {missing} not found in {self.region}") from None
            if "AccessDenied" in code or code in ("UnauthorizedOperation", "AuthFailure"):
                raise AwsAccessDenied(
                    f"{what}: access denied to {missing}: {describe(exc)}"
                ) from None
            raise AwsError(f"{what}: {describe(exc)}") from None
        except bx.BotoCoreError as exc:
            raise AwsError(f"{what}: {describe(exc)}") from None

    @cached_property
    def cluster_final_states(self) -> frozenset[str]:
        model = WaiterModel(botocore.loaders.create_loader().load_service_model("rds", "waiters-2"))
        given_up = {
            str(acceptor.expected)
            for acceptor in model.get_waiter("DBClusterAvailable").acceptors
            if acceptor.state == "failure"
        }
        return frozenset(given_up) | CLUSTER_NEEDS_SOMEONE

    def cluster(self, identifier: str, *, enable_iam_auth: str | None = None) -> Cluster:
        """The cluster, once it is available and its managed secret is usable.

        IAM database authentication must be on. With enable_iam_auth "apply" it is
        turned on if it is off (ModifyDBCluster) and waited for; with "plan" the
        cluster is left as it is and the change it would need is reported.
        """
        changes: list[dict[str, object]] = []

        def once() -> Cluster:
            found = self.rds.describe_db_clusters(DBClusterIdentifier=identifier)["DBClusters"][0]
            status = found.get("Status", "")
            if status in self.cluster_final_states:
                raise AwsError(f"cluster {identifier} is {status}; it cannot take connections")
            if status != "available":
                raise NotReady(f"cluster {identifier} is {status}")
            secret = found.get("MasterUserSecret") or {}
            if secret.get("SecretStatus") in SECRET_BUSY:
                raise NotReady(f"master secret of {identifier} is {secret['SecretStatus']}")
            if not found.get("IAMDatabaseAuthenticationEnabled"):
                self._iam_auth_off(identifier, enable_iam_auth, changes)
            return Cluster(
                identifier=identifier,
                arn=found["DBClusterArn"],
                endpoint=found["Endpoint"],
                port=int(found.get("Port") or DEFAULT_PORT),
                master_username=found["MasterUsername"],
                resource_id=found["DbClusterResourceId"],
                secret_arn=secret.get("SecretArn"),
                master_auth=str(found.get("MasterUserAuthenticationType") or "") or None,
                changes=tuple(changes),
            )

        return self.call(
            once, what=f"describing cluster {identifier}", missing=f"cluster {identifier}"
        )

    def _iam_auth_off(
        self, identifier: str, enable: str | None, changes: list[dict[str, object]]
    ) -> None:
        """IAM database authentication is off: enable it (then wait), plan it, or fail."""
        if enable is None:
            raise AwsError(
                f"IAM database authentication is disabled on cluster {identifier}; set "
                f"ENABLE_IAM_AUTH=true, or enable it with: aws rds modify-db-cluster "
                f"--db-cluster-identifier {identifier} --enable-iam-database-authentication "
                "--apply-immediately"
            )
        if not changes:
            changes.append({"action": "enable_iam_auth", "cluster": identifier})
            if enable == "plan":
                log.event("iam_auth_would_enable", cluster=identifier)
                return
            self.call(
                lambda: self.rds.modify_db_cluster(
                    DBClusterIdentifier=identifier,
                    EnableIAMDatabaseAuthentication=True,
                    ApplyImmediately=True,
                ),
                what=f"enabling IAM database authentication on cluster {identifier}",
                missing=f"cluster {identifier}",
            )
            log.event("iam_auth_enabling", cluster=identifier)
        elif enable == "plan":
            return
        raise NotReady(f"IAM database authentication is not on yet on cluster {identifier}")

    def auth_token(self, host: str, port: int, user: str) -> str:
        """Signed locally with the caller's credentials: no AWS call is made."""
        token: str = self.call(
            lambda: self.rds.generate_db_auth_token(
                DBHostname=host, Port=port, DBUsername=user, Region=self.region
            ),
            what=f"signing an IAM auth token for {user}",
            missing="AWS credentials",
        )
        log.register_secret(token)
        return token

    def secret(self, secret_id: str) -> SecretLogin:
        response = self.call(
            lambda: self.secretsmanager.get_secret_value(SecretId=secret_id),
            what=f"reading secret {secret_id}",
            missing=f"secret {secret_id}",
        )
        text = response.get("SecretString")
        log.register_secret(text)
        return parse_secret(secret_id, text)


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


def resolve_login(settings: Settings, deadline: Deadline, *, plan: bool = False) -> MasterLogin:
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
    if _by_token(settings, cluster):
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
        secret = aws.secret(secret_id)

    def pick(explicit: Any, from_secret: Any, from_cluster: Any, setting: str) -> Any:
        for value in (explicit, from_secret, from_cluster):
            if value is not None:
                return value
        raise ConfigError(setting, "not set, and neither the secret nor a cluster provides it")

    host = pick(
        settings.db_host,
        secret.host if secret else None,
        cluster.endpoint if cluster else None,
        "DB_HOST",
    )
    user = pick(
        settings.db_user,
        secret.username if secret else None,
        cluster.master_username if cluster else None,
        "DB_USER",
    )
    port = (
        settings.db_port
        or (secret.port if secret else None)
        or (cluster.port if cluster else DEFAULT_PORT)
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
        refetch=lambda: aws.secret(secret_id).password if secret_id else secret.password,
        prior_changes=prior,
    )


def _by_token(settings: Settings, cluster: Cluster | None) -> bool:
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


def _token_login(settings: Settings, aws: Aws, cluster: Cluster | None) -> MasterLogin:
    host = settings.db_host or (cluster.endpoint if cluster else None)
    user = settings.db_user or (cluster.master_username if cluster else None)
    if host is None or user is None:
        missing = "DB_HOST" if host is None else "DB_USER"
        raise ConfigError(missing, "not set, and no DB_CLUSTER_ID to find it (DB_IAM_AUTH)")
    port = settings.db_port or (cluster.port if cluster else DEFAULT_PORT)
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


def auth_token(settings: Settings, deadline: Deadline, user: str) -> str:
    """An IAM auth token for `user`, as `aws rds generate-db-auth-token` makes it: for
    IAM_AUTH_ENDPOINT where the local stand-in is configured, else the database's."""
    if settings.iam_auth_endpoint:
        stand_in, _, port_text = settings.iam_auth_endpoint.rpartition(":")
        return Aws(deadline).auth_token(stand_in, int(port_text), user)
    port, cluster_id = settings.db_port, settings.db_cluster_id
    if settings.db_host is None and not cluster_id:
        raise ConfigError("DB_HOST", "not set: set DB_HOST or DB_CLUSTER_ID")
    aws = Aws(deadline)
    host = settings.db_host
    if host is None:
        cluster = aws.cluster(cluster_id or "")
        host, port = cluster.endpoint, port or cluster.port
    return aws.auth_token(host, port or DEFAULT_PORT, user)


def connect_policy(settings: Settings, deadline: Deadline) -> dict[str, Any]:
    """The IAM policy that allows rds-db:connect as each listed user."""
    if not settings.db_cluster_id:
        raise ConfigError("DB_CLUSTER_ID", "needed: the policy names the cluster's resource id")
    if not settings.iam_users:
        raise ConfigError("IAM_USERS", "empty: the policy needs at least one user")
    cluster = Aws(deadline).cluster(settings.db_cluster_id)
    partition, region, account = cluster.partition_region_account
    prefix = f"arn:{partition}:rds-db:{region}:{account}:dbuser:{cluster.resource_id}"
    names = [user.name for user in settings.iam_users]
    if _by_token(settings, cluster):
        names.append(settings.db_user or cluster.master_username)  # the job's own login
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "AuroraIamConnect",
                "Effect": "Allow",
                "Action": "rds-db:connect",
                "Resource": [f"{prefix}/{name}" for name in names],
            }
        ],
    }
