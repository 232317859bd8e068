"""Custom::AuroraBootstrap's launcher: the Lambda behind the resource's ServiceToken,
outside the VPC. Create, Update: RunTask the bootstrap task, which does the work and
answers CloudFormation itself. Delete: stop this resource's task if one still runs,
then answer. A task of its own that stopped without answering (any exit that did not
deliver an answer, no exit code at all): answered here, within a minute of ECS's
event.

The pre-signed ResponseURL is a capability (whoever holds it answers for the
resource): it never travels in the task's overrides, which DescribeTasks, CloudTrail
and every ECS Task State Change event show. It is kept in an SSM SecureString under
this stack's path, which the task reads and deletes once it has answered; a task
that stops with the parameter still there did not answer. Never logged.

Every AWS call has short timeouts and the invocation's remaining time as its budget,
so that the answer always goes out before Lambda's own timeout; once an answer is
delivered nothing is raised (Lambda would retry, and answer again).

The template carries this file as its inline code (make template): stdlib and boto3
only."""

import hashlib
import json
import os
import time
import urllib.request
from typing import Any

import boto3
from botocore.config import Config

Request = dict[str, Any]

STARTED_BY = "aurora-bootstrap-cfn"
MAX_OVERRIDES = 8192  # RunTask's limit, JSON included
KEYS = ("RequestType", "ResponseURL", "StackId", "RequestId", "LogicalResourceId")
# What a Fargate task takes before the job starts (capacity, image pull, secrets):
# the run's deadline is the request's ServiceTimeout less this.
TASK_START_SECONDS = 120
MIN_RUN_SECONDS = 60
DEFAULT_SERVICE_TIMEOUT = 3600  # CloudFormation's, when the resource sets none
# The end of the invocation kept for the answer (two attempts of 5 s, and a pause).
ANSWER_SECONDS = 12.0
# No AWS call waits longer than this for a connection or an answer.
CONNECT_SECONDS = 2
READ_SECONDS = 8


def log(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, **fields}))


class Budget:
    """The invocation's time: Lambda's context says how much is left."""

    def __init__(self, context: Any) -> None:
        self.context = context
        self.started = time.monotonic()

    def left(self) -> float:
        remaining = getattr(self.context, "get_remaining_time_in_millis", None)
        if remaining is not None:
            return float(remaining()) / 1000
        return 60.0 - (time.monotonic() - self.started)  # the template's Timeout

    def for_calls(self) -> float:
        """What AWS calls may take before the answer must go out."""
        return self.left() - ANSWER_SECONDS


def client(service: Any, budget: Budget) -> Any:
    read = max(1, min(READ_SECONDS, int(budget.for_calls() / 2)))
    config = Config(
        connect_timeout=CONNECT_SECONDS,
        read_timeout=read,
        retries={"mode": "standard", "total_max_attempts": 2},
    )
    return boto3.client(service, config=config)


def resource_id(req: Request) -> str:
    """The worker's: stable for the Create and every Update of one resource."""
    if req.get("PhysicalResourceId"):
        return str(req["PhysicalResourceId"])
    key = f"{req['StackId']}/{req['LogicalResourceId']}".encode()
    return f"aurora-bootstrap-{req['LogicalResourceId']}-{hashlib.sha256(key).hexdigest()[:16]}"


def answer(req: Request, status: str, reason: str, budget: Budget) -> str:
    """PUT the response (an empty content type, as the URL is signed for); a 5xx or
    a network error is tried again while the invocation has time."""
    if not str(req.get("ResponseURL", "")).startswith(("https://", "http://")):
        raise ValueError("ResponseURL is not an http(s) URL")
    body = {k: req[k] for k in KEYS[2:]}
    # Well within CloudFormation's 4,096 bytes, with ASCII escapes at 6 bytes each.
    body |= {"Status": status, "Reason": reason[:500], "PhysicalResourceId": resource_id(req)}
    data = json.dumps(body).encode()
    attempt = 0
    while True:
        headers = {"Content-Type": ""}
        put = urllib.request.Request(req["ResponseURL"], data, headers, method="PUT")  # noqa: S310
        timeout = max(1.0, min(5.0, budget.left() - 1))
        try:
            with urllib.request.urlopen(put, timeout=timeout) as reply:  # noqa: S310
                log("answered", status=status, reason=reason, http_status=reply.status)
                return status
        except OSError as exc:
            attempt += 1
            if getattr(exc, "code", 500) < 500 or budget.left() < timeout + 2 or attempt == 4:
                log(
                    "answer_failed",
                    status=status,
                    reason=reason,
                    error=f"{type(exc).__name__}: {exc}",
                )
                raise
            time.sleep(min(2**attempt / 2, 2))


def family(task_definition: str) -> str:
    """arn:...:task-definition/FAMILY:REVISION, or FAMILY[:REVISION], to FAMILY."""
    return task_definition.rsplit("/", 1)[-1].split(":", 1)[0]


def parameter_name(req: Request) -> str:
    """Where this request's ResponseURL is kept, under this stack's path."""
    key = f"{req['StackId']}/{req['LogicalResourceId']}/{req['RequestId']}".encode()
    return f"{os.environ['REQUESTS']}/{hashlib.sha256(key).hexdigest()[:40]}"


def run_deadline(req: Request) -> int:
    """The run's DEADLINE_SECONDS: within the request's ServiceTimeout, less the time a
    task takes to start, and never more than the stack's DeadlineSeconds."""
    props = req.get("ResourceProperties") or {}
    try:
        timeout = int(props.get("ServiceTimeout") or DEFAULT_SERVICE_TIMEOUT)
    except (TypeError, ValueError):
        timeout = DEFAULT_SERVICE_TIMEOUT
    return min(int(os.environ.get("DEADLINE_SECONDS") or 300), timeout - TASK_START_SECONDS)


def task_definition(req: Request, rollback: bool) -> str:
    """The stack's current task definition; for a rollback, the old revision the
    resource's old Triggers name, where they name one of this stack's family (it is
    still registered while CloudFormation rolls back)."""
    current = os.environ["TASK_DEFINITION"]
    if not rollback:
        return current
    triggers = (req.get("ResourceProperties") or {}).get("Triggers")
    named = triggers.get("TaskDefinition") if isinstance(triggers, dict) else None
    if isinstance(named, str) and ":task-definition/" in named and family(named) == family(current):
        return named
    return current


def task_request(req: Request, deadline: int, rollback: bool) -> dict[str, Any]:
    """RunTask's arguments: the request, without its ResponseURL (kept in SSM) and
    without what the worker needs not, in the environment."""
    sent = {k: req[k] for k in (*KEYS[2:], "RequestType", "PhysicalResourceId") if k in req}
    sent["ResponseURLParameter"] = parameter_name(req)
    if rollback:
        sent["Rollback"] = True
    # CloudFormation's own, and the launcher's (what re-runs the bootstrap): not the
    # worker's, which fails on any property it does not know.
    props = dict(req.get("ResourceProperties") or {})
    for own in ("ServiceToken", "ServiceTimeout", "Triggers"):
        props.pop(own, None)
    sent["ResourceProperties"] = props
    env = [
        {"name": "CFN_REQUEST", "value": json.dumps(sent, separators=(",", ":"))},
        {"name": "DEADLINE_SECONDS", "value": str(deadline)},
    ]
    container = {"name": os.environ["CONTAINER"], "command": ["custom-resource"]}
    overrides = {"containerOverrides": [container | {"environment": env}]}
    network = {
        "subnets": os.environ["SUBNETS"].split(","),
        "securityGroups": [os.environ["SECURITY_GROUP"]],
        "assignPublicIp": "DISABLED",
    }
    return {
        "cluster": os.environ["CLUSTER"],
        "taskDefinition": task_definition(req, rollback),
        "launchType": "FARGATE",
        "count": 1,
        "startedBy": STARTED_BY,
        "networkConfiguration": {"awsvpcConfiguration": network},
        "overrides": overrides,
        # A retried invocation (same RequestId) gets the task already started.
        "clientToken": hashlib.sha256(req["RequestId"].encode()).hexdigest(),
    }


def rolling_back(req: Request, budget: Budget) -> bool:
    """An Update sent while the stack rolls back carries the old properties: its run
    must not strand the stack in UPDATE_ROLLBACK_FAILED."""
    if req["RequestType"] != "Update":
        return False
    try:
        cfn = client("cloudformation", budget)
        stack = cfn.describe_stacks(StackName=req["StackId"])["Stacks"][0]
    except Exception as exc:  # noqa: BLE001 (not known: run it as any Update)
        log("stack_status_unknown", error=type(exc).__name__)
        return False
    return str(stack.get("StackStatus", "")).endswith("ROLLBACK_IN_PROGRESS")


def request_of(task: dict[str, Any]) -> Request | None:
    """The request a task of this launcher runs, from its overrides."""
    for container in (task.get("overrides") or {}).get("containerOverrides") or []:
        for variable in container.get("environment") or []:
            if variable.get("name") == "CFN_REQUEST":
                found = json.loads(variable["value"])
                return found if isinstance(found, dict) else None
    return None


def stop_running(req: Request, budget: Budget) -> list[str]:
    """Stop this resource's Create or Update task, if one still runs: CloudFormation
    sends Delete while Create runs when another resource failed, and nothing may
    commit after the rollback. A task stopped so rolls back its transaction."""
    ecs = client("ecs", budget)
    cluster = os.environ["CLUSTER"]
    arns = ecs.list_tasks(cluster=cluster, startedBy=STARTED_BY, desiredStatus="RUNNING")
    arns = arns.get("taskArns") or []
    stopped = []
    for start in range(0, len(arns), 100):
        for task in ecs.describe_tasks(cluster=cluster, tasks=arns[start : start + 100])["tasks"]:
            running = request_of(task) or {}
            same = all(running.get(k) == req[k] for k in ("StackId", "LogicalResourceId"))
            if same and running.get("RequestId") != req["RequestId"]:
                ecs.stop_task(
                    cluster=cluster,
                    task=task["taskArn"],
                    reason="CloudFormation deleted the resource while its bootstrap ran",
                )
                stopped.append(task["taskArn"])
    if stopped:
        log("stopped_for_delete", tasks=stopped, request=req["RequestId"])
    return stopped


def launch(req: Request, budget: Budget) -> str:
    if req["RequestType"] == "Delete":
        reason = "Delete changes nothing: users are never dropped"
        try:
            if stop_running(req, budget):
                reason += "; its running bootstrap was stopped, and rolls back"
        except Exception as exc:  # noqa: BLE001 (a Delete must not strand the stack)
            reason += f"; a running bootstrap could not be looked for: {type(exc).__name__}"
        return answer(req, "SUCCESS", reason, budget)
    deadline = run_deadline(req)
    if deadline < MIN_RUN_SECONDS:
        least = MIN_RUN_SECONDS + TASK_START_SECONDS
        reason = f"ServiceTimeout leaves {deadline} s for the run after {TASK_START_SECONDS} s "
        reason += f"for the task to start: give the resource at least {least}"
        return answer(req, "FAILED", reason, budget)
    rollback = rolling_back(req, budget)
    args = task_request(req, deadline, rollback)
    size = len(json.dumps(args["overrides"], separators=(",", ":")))
    if size > MAX_OVERRIDES:
        reason = f"the request makes RunTask overrides of {size} characters, over ECS's "
        reason += f"{MAX_OVERRIDES}: give long IamUsers, GroupRoles to the task definition"
        return answer(req, "FAILED", reason, budget)
    ssm = client("ssm", budget)
    name = parameter_name(req)
    ssm.put_parameter(Name=name, Value=req["ResponseURL"], Type="SecureString", Overwrite=True)
    try:
        started = client("ecs", budget).run_task(**args)
    except Exception as exc:  # noqa: BLE001 (every failure must reach CloudFormation)
        forget(name, budget)
        return answer(req, "FAILED", f"RunTask failed: {type(exc).__name__}: {exc}", budget)
    if started.get("failures") or not started.get("tasks"):
        forget(name, budget)
        why = "; ".join(
            f"{f.get('arn', '')} {f.get('reason', '')}" for f in started.get("failures") or []
        )
        return answer(req, "FAILED", f"RunTask started no task: {why or 'no reason given'}", budget)
    log("task_started", task=started["tasks"][0]["taskArn"], request=req["RequestId"])
    return "STARTED"


def forget(name: str, budget: Budget) -> None:
    try:
        client("ssm", budget).delete_parameter(Name=name)
    except Exception as exc:  # noqa: BLE001 (the answer matters more than the cleanup)
        log("parameter_not_deleted", error=type(exc).__name__)


def mine(task: dict[str, Any]) -> bool:
    """A task this launcher started: its startedBy, its cluster, its family."""
    cluster = str(task.get("clusterArn", ""))
    return (
        task.get("startedBy") == STARTED_BY
        and cluster.rsplit("/", 1)[-1] == os.environ["CLUSTER"]
        and family(str(task.get("taskDefinitionArn", ""))) == family(os.environ["TASK_DEFINITION"])
    )


def stopped(event_task: dict[str, Any], budget: Budget) -> str | None:
    """An ECS Task State Change (STOPPED): answer for a task of this launcher that
    stopped without answering. The event is checked against ECS itself, so that an
    invocation with a forged one cannot answer for a running task."""
    if not mine(event_task) or not event_task.get("taskArn"):
        log("ignored", reason="not a task this launcher started")
        return None
    ecs = client("ecs", budget)
    found = ecs.describe_tasks(cluster=os.environ["CLUSTER"], tasks=[event_task["taskArn"]])
    tasks = [t for t in found.get("tasks") or [] if mine(t) and t.get("lastStatus") == "STOPPED"]
    req = request_of(tasks[0]) if tasks else None
    name = str((req or {}).get("ResponseURLParameter"))
    if not tasks or req is None or not name.startswith(os.environ["REQUESTS"] + "/"):
        log("ignored", reason="no stopped task of this launcher with a request")
        return None
    task = tasks[0]
    try:
        url = client("ssm", budget).get_parameter(Name=name, WithDecryption=True)
    except Exception as exc:  # noqa: BLE001 (ParameterNotFound: the task answered)
        log("answered_by_the_task", task=task["taskArn"], detail=type(exc).__name__)
        return None
    req["ResponseURL"] = url["Parameter"]["Value"]
    named = [c for c in task.get("containers") or [] if c.get("name") == os.environ["CONTAINER"]]
    code = named[0].get("exitCode") if named else None
    if code == 0:  # the worker exits 0 only after its SUCCESS was delivered
        forget(name, budget)
        return None
    how = "stopped before its container ran" if code is None else f"exited {code} unanswered"
    why = [
        task.get("stopCode"),
        task.get("stoppedReason"),
        named[0].get("reason") if named else None,
    ]
    if code == 11:
        why.append("it could not reach the ResponseURL: do its subnets reach S3?")
    if code == 2:
        why.append("a setting or the request was refused, or the image predates custom-resource")
    reason = f"the task {how}: " + "; ".join(str(w) for w in why if w)
    status = "FAILED"
    if req.get("Rollback"):
        # A rollback never strands the stack: the database keeps what it holds.
        status = "SUCCESS"
        reason = f"rollback run did not apply the old properties ({reason}); run verify"
    result = answer(req, status, reason, budget)
    forget(name, budget)
    return result


def handler(event: dict[str, Any], context: Any = None) -> str | None:
    budget = Budget(context)
    if event.get("source") == "aws.ecs":
        return stopped(event.get("detail") or {}, budget)
    try:
        return launch(event, budget)
    except Exception as exc:  # noqa: BLE001
        # Whatever went wrong, CloudFormation hears of it now, not at ServiceTimeout;
        # once it has heard, nothing is raised (Lambda would invoke again, and answer
        # again). An answer that could not be delivered is raised: a retry may.
        log("launcher_failed", error=f"{type(exc).__name__}: {exc}")
        return answer(event, "FAILED", f"launcher: {type(exc).__name__}: {exc}", budget)
