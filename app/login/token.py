"""`token` and `policy`: an IAM auth token for one user, and the IAM policy that lets
the listed users connect. Both need AWS; neither logs in to the database."""

from __future__ import annotations

import argparse
import json
from typing import Any

from app.aws import Aws
from app.errors import ConfigError
from app.inputs import settings
from app.inputs.users import NAME_RE, NAME_RULE
from app.login.discover import by_token
from app.login.master import DEFAULT_PORT
from app.outcome import Run
from app.retry import Deadline


def token_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("user", metavar="USER", help="database user to sign in as")


def token(args: argparse.Namespace, run: Run) -> str:
    if not NAME_RE.fullmatch(args.user):
        raise ConfigError("USER", f"{args.user!r} {NAME_RULE}")
    conf, deadline = settings.configure(run.started)
    return auth_token(conf, deadline, args.user)


def policy(args: argparse.Namespace, run: Run) -> str:
    conf, deadline = settings.configure(run.started)
    return json.dumps(connect_policy(conf, deadline), indent=2)


def auth_token(conf: settings.Settings, deadline: Deadline, user: str) -> str:
    """An IAM auth token for `user`, as `aws rds generate-db-auth-token` makes it: for
    IAM_AUTH_ENDPOINT where the local stand-in is configured, else the database's."""
    if conf.iam_auth_endpoint:
        stand_in, _, port_text = conf.iam_auth_endpoint.rpartition(":")
        return Aws(deadline).auth_token(stand_in, int(port_text), user)
    port, cluster_id = conf.db_port, conf.db_cluster_id
    if conf.db_host is None and not cluster_id:
        raise ConfigError("DB_HOST", "not set: set DB_HOST or DB_CLUSTER_ID")
    aws = Aws(deadline)
    host = conf.db_host
    if host is None:
        cluster = aws.cluster(cluster_id or "")
        host, port = cluster.endpoint, port or cluster.port
    return aws.auth_token(host, port or DEFAULT_PORT, user)


def connect_policy(conf: settings.Settings, deadline: Deadline) -> dict[str, Any]:
    """The IAM policy that allows rds-db:connect as each listed user; with
    DB_TRANSPORT=data-api also what the job's own Data API calls need."""
    name = conf.db_cluster_id or conf.db_cluster_arn
    if not name:
        raise ConfigError("DB_CLUSTER_ID", "needed: the policy names the cluster's resource id")
    if not conf.iam_users:
        raise ConfigError("IAM_USERS", "empty: the policy needs at least one user")
    cluster = Aws(deadline).cluster(name)
    partition, region, account = cluster.partition_region_account
    prefix = f"arn:{partition}:rds-db:{region}:{account}:dbuser:{cluster.resource_id}"
    names = [user.name for user in conf.iam_users]
    if by_token(conf, cluster):
        names.append(conf.db_user or cluster.master_username)  # the job's own login
    statements: list[dict[str, Any]] = [
        {
            "Sid": "AuroraIamConnect",
            "Effect": "Allow",
            "Action": "rds-db:connect",
            "Resource": [f"{prefix}/{name}" for name in names],
        }
    ]
    if conf.db_transport == "data-api":
        statements += data_api_statements(cluster.arn, conf.db_secret_arn or cluster.secret_arn)
    return {"Version": "2012-10-17", "Statement": statements}


def data_api_statements(cluster_arn: str, secret_arn: str | None) -> list[dict[str, Any]]:
    """What the job's own calls over the Data API need: its four calls on the cluster,
    and reading the secret, which the Data API does as its caller."""
    found = [
        {
            "Sid": "AuroraBootstrapDataApi",
            "Effect": "Allow",
            "Action": [
                "rds-data:BeginTransaction",
                "rds-data:ExecuteStatement",
                "rds-data:CommitTransaction",
                "rds-data:RollbackTransaction",
            ],
            "Resource": cluster_arn,
        }
    ]
    if secret_arn:
        found.append(
            {
                "Sid": "AuroraBootstrapDataApiSecret",
                "Effect": "Allow",
                "Action": "secretsmanager:GetSecretValue",
                "Resource": secret_arn,
            }
        )
    return found
