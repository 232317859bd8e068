"""custom-resource: the worker of Custom::AuroraBootstrap. It reads the request from
CFN_REQUEST, applies it (Create, Update) or changes nothing (Delete), and answers
CloudFormation just before its result line is written, whoever writes it: the run's
end, or a hard stop after a stop signal."""

from __future__ import annotations

import argparse
import logging
import os
import time
from typing import TYPE_CHECKING, Any

from app import log
from app.cfn import request as cfnrequest
from app.cfn import response
from app.errors import BootstrapError, ConfigError, ResponseNotDelivered
from app.inputs import settings
from app.job.run import database_command
from app.outcome import Outcome, Run
from app.retry import Deadline
from app.version import version

if TYPE_CHECKING:
    from app.aws import Aws

# How long reading the ResponseURL from its parameter may take, before the run's own
# deadline exists (the launcher answers FAILED if it cannot be read).
URL_SECONDS = 30.0


def command(args: argparse.Namespace, run: Run) -> dict[str, Any]:
    # Without a readable request there is nowhere to answer: the result line alone
    # (the launcher, which still holds the URL, answers FAILED for the task).
    request = with_response_url(read_request())
    worker = Worker(request, run.started)
    run.before_result = worker.answer
    return worker.work()


def _ssm(what: str) -> Aws:
    """AWS for the URL's parameter, with a deadline of its own (the run's may not exist
    yet, or be over)."""
    from app.aws import Aws  # noqa: PLC0415 (AWS only for a request the launcher sent)

    return Aws(Deadline(URL_SECONDS, setting=what))


def with_response_url(request: cfnrequest.Request) -> cfnrequest.Request:
    """The request with its ResponseURL: as sent, or read from the SSM parameter the
    launcher kept it in (never from the task's overrides, which others read)."""
    if request.url_parameter is None:
        return request
    url = _ssm("the wait for the ResponseURL").secure_parameter(request.url_parameter)
    found = request.with_url(url)
    log.register_secret(found.response_signature)
    return found


def read_request() -> cfnrequest.Request:
    request = cfnrequest.parse(os.environ.get(cfnrequest.SETTING))
    # Whoever holds the pre-signed URL can answer for the resource: never logged.
    log.register_secret(request.response_signature)
    log.event(
        "request",
        request_type=request.request_type,
        logical_resource_id=request.logical_resource_id,
        physical_resource_id=request.resource_id,
        properties=sorted(request.properties),
    )
    return request


class Worker:
    """One request: the run it asks for, then its answer."""

    def __init__(self, request: cfnrequest.Request, started: float) -> None:
        self.request, self.started = request, started
        # The run's deadline, once its settings are read: the answer's time comes
        # from what it keeps for it.
        self.deadline: Deadline | None = None

    def work(self) -> dict[str, Any]:
        """Create and Update apply with the request's properties over the settings;
        Delete changes nothing (users are never dropped) and reads no setting at all,
        so that a stack can always be deleted."""
        if self.request.request_type == "Delete":
            log.event("delete", detail="users are never dropped: nothing to change")
            return {}
        overridden = cfnrequest.overrides(self.request)
        try:
            conf, self.deadline = settings.configure(
                self.started, overridden, reserve=response.reserve
            )
            return database_command("apply", conf, self.deadline)
        except ConfigError as exc:
            raise cfnrequest.name_property(exc, overridden) from None

    def budget(self, *, stopped: bool) -> float:
        """Seconds the answer may take: what is left of the run's deadline, never less
        than what the run kept for it (DEADLINE_SECONDS' default when the settings
        themselves could not be read), fewer after a stop signal."""
        if self.deadline is not None:
            left = max(self.deadline.remaining() + self.deadline.reserved, self.deadline.reserved)
        else:
            total = settings.DEFAULT_DEADLINE_SECONDS
            left = max(total - (time.monotonic() - self.started), response.reserve(total))
        return min(left, response.STOPPED_BUDGET_SECONDS) if stopped else left

    def answer(self, run: Outcome, fields: dict[str, Any]) -> None:
        """Answer CloudFormation with the run's outcome; a failure to deliver it becomes
        the run's outcome (the launcher then answers FAILED from outside the VPC)."""
        request = self.request
        changes = len(fields.get("changes", []))
        if run.exit_code == 0:
            status = "SUCCESS"
            reason = (
                "Delete changes nothing: users are never dropped"
                if request.request_type == "Delete"
                else f"applied: {changes} changes"
            )
        else:
            error = run.error or {"type": "internal_error", "message": "no error recorded"}
            status, reason = "FAILED", f"{error['type']} (exit {run.exit_code}): {error['message']}"
            if request.rollback:
                # A rollback never strands the stack in UPDATE_ROLLBACK_FAILED: the run
                # changed nothing (one transaction), and the database keeps what the
                # update before it committed, which verify shows.
                status = "SUCCESS"
                reason = f"rollback did not apply the old properties: {reason}; run verify"
        seconds = self.budget(stopped=run.exit_code in (130, 143))
        data = {"Changes": str(changes), "Version": version()}
        fields["request_type"] = request.request_type
        try:
            fields["response"] = response.answer(request, status, reason, data, seconds)
            self.forget_url()
        except ResponseNotDelivered as exc:
            log.event("failed", logging.ERROR, error=exc.kind, detail=str(exc))
            fields["response"] = {"status": status, "delivered": False, **exc.details}
            if run.error is not None:
                fields["run_error"] = run.error
            run.exit_code = exc.exit_code
            run.error = {"type": exc.kind, "message": log.redact(str(exc))}

    def forget_url(self) -> None:
        """Answered: the URL's parameter goes, which tells the launcher so (a task that
        stops with it still there did not answer)."""
        if self.request.url_parameter is None:
            return
        try:
            _ssm("the cleanup").delete_parameter(self.request.url_parameter)
        except BootstrapError as exc:
            log.event("response_url_kept", logging.WARNING, error=exc.kind, detail=str(exc))
