"""Custom::AuroraBootstrap's launcher: the Lambda behind the resource's ServiceToken,
outside the VPC. Create, Update: RunTask the bootstrap task, which does the work and
answers CloudFormation itself. Delete, and a task that cannot answer (it never ran,
was killed, or could not reach the ResponseURL): answered here.

The template carries this file as its inline code (make template): stdlib and boto3
only. The ResponseURL is a capability (whoever holds it answers): never logged."""

import hashlib
import json
import os
import time
import urllib.request
from typing import Any

import boto3
from botocore.config import Config

Request = dict[str, Any]

MAX_OVERRIDES = 8192  # RunTask's limit, JSON included
# Exit codes after which the task has answered itself.
ANSWERED = {0, 2, 3, 4, 5, 6, 7, 8, 9, 10, 130, 143}
# Throttling and 5xx retried within the Lambda's minute (boto3 is botocore's).
RETRIES = Config(retries={"mode": "standard", "max_attempts": 5})
KEYS = ("RequestType", "ResponseURL", "StackId", "RequestId", "LogicalResourceId")


def log(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, **fields}))


def resource_id(req: Request) -> str:
    """The worker's: stable for the Create and every Update of one resource."""
    if req.get("PhysicalResourceId"):
        return str(req["PhysicalResourceId"])
    key = f"{req['StackId']}/{req['LogicalResourceId']}".encode()
    return f"aurora-bootstrap-{req['LogicalResourceId']}-{hashlib.sha256(key).hexdigest()[:16]}"


def answer(req: Request, status: str, reason: str) -> str:
    """PUT the response (an empty content type, as the URL is signed for); a 5xx or
    a network error is tried again, four times in all."""
    if not req["ResponseURL"].startswith(("https://", "http://")):
        raise ValueError("ResponseURL is not an http(s) URL")
    body = {k: req[k] for k in KEYS[2:]}
    # Well within CloudFormation's 4,096 bytes, with ASCII escapes at 6 bytes each.
    body |= {"Status": status, "Reason": reason[:500], "PhysicalResourceId": resource_id(req)}
    data = json.dumps(body).encode()
    for attempt in range(4):
        headers = {"Content-Type": ""}
        put = urllib.request.Request(req["ResponseURL"], data, headers, method="PUT")  # noqa: S310
        try:
            with urllib.request.urlopen(put, timeout=10) as reply:  # noqa: S310
                log("answered", status=status, reason=reason, http_status=reply.status)
                return status
        except OSError as exc:
            if getattr(exc, "code", 500) < 500 or attempt == 3:
                log("answer_failed", status=status, error=f"{type(exc).__name__}: {exc}")
                raise
            time.sleep(2**attempt)
    raise AssertionError("unreachable")


def task_request(req: Request) -> dict[str, Any]:
    """RunTask's arguments: the request, without what the worker needs not, in env."""
    sent = {k: req[k] for k in (*KEYS, "PhysicalResourceId") if k in req}
    # CloudFormation's own, and the launcher's (what re-runs the bootstrap): not the
    # worker's, which fails on any property it does not know.
    props = dict(req.get("ResourceProperties") or {})
    for own in ("ServiceToken", "ServiceTimeout", "Triggers"):
        props.pop(own, None)
    sent["ResourceProperties"] = props
    env = [{"name": "CFN_REQUEST", "value": json.dumps(sent, separators=(",", ":"))}]
    container = {"name": os.environ["CONTAINER"], "command": ["custom-resource"]}
    overrides = {"containerOverrides": [container | {"environment": env}]}
    network = {
        "subnets": os.environ["SUBNETS"].split(","),
        "securityGroups": [os.environ["SECURITY_GROUP"]],
        "assignPublicIp": "DISABLED",
    }
    return {
        "cluster": os.environ["CLUSTER"],
        "taskDefinition": os.environ["TASK_DEFINITION"],
        "launchType": "FARGATE",
        "count": 1,
        "startedBy": "aurora-bootstrap-cfn",
        "networkConfiguration": {"awsvpcConfiguration": network},
        "overrides": overrides,
        # A retried invocation (same RequestId) gets the task already started.
        "clientToken": hashlib.sha256(req["RequestId"].encode()).hexdigest(),
    }


def launch(req: Request) -> str:
    if req["RequestType"] == "Delete":
        return answer(req, "SUCCESS", "Delete changes nothing: users are never dropped")
    args = task_request(req)
    size = len(json.dumps(args["overrides"], separators=(",", ":")))
    if size > MAX_OVERRIDES:
        reason = f"the request makes RunTask overrides of {size} characters, over ECS's "
        reason += f"{MAX_OVERRIDES}: give long IamUsers, GroupRoles to the task definition"
        return answer(req, "FAILED", reason)
    try:
        started = boto3.client("ecs", config=RETRIES).run_task(**args)
    except Exception as exc:  # noqa: BLE001 (every failure must reach CloudFormation)
        return answer(req, "FAILED", f"RunTask failed: {exc}")
    if started.get("failures") or not started.get("tasks"):
        why = "; ".join(
            f"{f.get('arn', '')} {f.get('reason', '')}" for f in started.get("failures") or []
        )
        return answer(req, "FAILED", f"RunTask started no task: {why or 'no reason given'}")
    log("task_started", task=started["tasks"][0]["taskArn"], request=req["RequestId"])
    return "STARTED"


def stopped(task: dict[str, Any]) -> str | None:
    """An ECS Task State Change (STOPPED) of a task this launcher started."""
    env = {
        e["name"]: e["value"]
        for c in (task.get("overrides") or {}).get("containerOverrides") or []
        for e in c.get("environment") or []
    }
    if "CFN_REQUEST" not in env:
        return None
    req = json.loads(env["CFN_REQUEST"])
    mine = [c for c in task.get("containers") or [] if c.get("name") == os.environ["CONTAINER"]]
    code = mine[0].get("exitCode") if mine else None
    if code in ANSWERED:
        return None
    how = "stopped before its container ran" if code is None else f"exited {code} unanswered"
    why = [task.get("stopCode"), task.get("stoppedReason"), mine[0].get("reason") if mine else None]
    if code == 11:
        why.append("it could not reach the ResponseURL: do its subnets reach S3?")
    return answer(req, "FAILED", f"the task {how}: " + "; ".join(str(w) for w in why if w))


def handler(event: dict[str, Any], context: object = None) -> str | None:
    if event.get("source") == "aws.ecs":
        return stopped(event.get("detail") or {})
    try:
        return launch(event)
    except Exception as exc:
        # Whatever went wrong, CloudFormation hears of it now, not at ServiceTimeout.
        answer(event, "FAILED", f"launcher: {type(exc).__name__}: {exc}")
        raise
