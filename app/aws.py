"""AWS under the job's retry policy: clients, which failures are worth retrying, and
the few calls more than one wing makes (the cluster, a secret, an IAM auth token).

Imported only when a setting needs AWS, so local runs never load the SDK. botocore's
own retrying is turned off: every call goes through the job's one retry policy, so
each retry is logged and all of them share the run's deadline. What the answers
mean for the login (which source wins, what a secret must hold) is `app.login`'s.
"""

from __future__ import annotations

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
from app.retry import Deadline

if TYPE_CHECKING:
    from mypy_boto3_rds import RDSClient
    from mypy_boto3_secretsmanager import SecretsManagerClient
    from mypy_boto3_ssm import SSMClient

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
    port: int | None
    master_username: str
    resource_id: str
    secret_arn: str | None
    # "password", "iam-db-auth" or "iam-db-auth-and-password" where the API reports it
    master_auth: str | None = None
    # The Data API's HTTP endpoint (DB_TRANSPORT=data-api needs it on).
    http_endpoint: bool = False
    # What ENABLE_IAM_AUTH did, or with plan would do, to the cluster.
    changes: tuple[dict[str, object], ...] = ()

    @property
    def partition_region_account(self) -> tuple[str, str, str]:
        # arn:PARTITION:rds:REGION:ACCOUNT:cluster:ID
        parts = self.arn.split(":")
        return parts[1], parts[3], parts[4]


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
    def rds_data(self) -> Any:
        # A Data API call may run its statement for up to 45 s before the API ends it.
        timeout = max(1, min(50, math.ceil(self.deadline.remaining())))
        return self.session.client(
            "rds-data", config=self.config().merge(Config(read_timeout=timeout))
        )

    @cached_property
    def secretsmanager(self) -> SecretsManagerClient:
        return self.session.client("secretsmanager", config=self.config())

    @cached_property
    def ssm(self) -> SSMClient:
        return self.session.client("ssm", config=self.config())

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
                port=int(found["Port"]) if found.get("Port") else None,
                master_username=found["MasterUsername"],
                resource_id=found["DbClusterResourceId"],
                secret_arn=secret.get("SecretArn"),
                master_auth=str(found.get("MasterUserAuthenticationType") or "") or None,
                http_endpoint=bool(found.get("HttpEndpointEnabled")),
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

    def secret_string(self, secret_id: str) -> str | None:
        """The secret's SecretString (None when it holds binary data), never logged."""
        response = self.call(
            lambda: self.secretsmanager.get_secret_value(SecretId=secret_id),
            what=f"reading secret {secret_id}",
            missing=f"secret {secret_id}",
        )
        text = response.get("SecretString")
        log.register_secret(text)
        return text

    def secure_parameter(self, name: str) -> str:
        """An SSM SecureString's value, decrypted, never logged."""
        response = self.call(
            lambda: self.ssm.get_parameter(Name=name, WithDecryption=True),
            what=f"reading parameter {name}",
            missing=f"parameter {name}",
        )
        value = str(response["Parameter"].get("Value", ""))
        log.register_secret(value)
        return value

    def delete_parameter(self, name: str) -> None:
        self.call(
            lambda: self.ssm.delete_parameter(Name=name),
            what=f"deleting parameter {name}",
            missing=f"parameter {name}",
        )
