"""The RDS Data API as the job's connection (DB_TRANSPORT=data-api): SQL over HTTPS,
authenticated by a Secrets Manager secret, with no network path into the VPC.

It answers the part of psycopg's connection the job uses (a transaction that commits
or rolls back, cursors, `execute`, `fetchone`/`fetchall`, `read_only`, `info`), so
that the transaction, the report, verify and PRUNE do not know which transport they
run over. BeginTransaction, ExecuteStatement, CommitTransaction and
RollbackTransaction are the calls; each runs one statement.

What the Data API is, and how each of its rules is kept:
- Parameters are named and typed, and arrays cannot be one: strings are sent as
  parameters, numbers, booleans and lists as literals (psycopg quotes them).
- A call times out after 45 s (`CALL_LIMIT_SECONDS`): the job waits for its lock in
  slices shorter than that; a script statement is sent with continueAfterTimeout,
  and a call that times out is followed until the statement has finished.
- A transaction ends after 3 minutes without a call: the job makes its calls back to
  back, and retries a refused call (throttling, a cluster resuming) within seconds.
- A response holds at most 1 MiB, and a row at most 64 KB: a result refused for its
  size is read again in pages, through a cursor in the same transaction; the job's
  long texts (the report, a script's findings) come in pieces of 16,000 characters.
- There is no cancel: an interrupted statement ends by the transaction's rollback
  (and by statement_timeout, which the job sets from the deadline).
- Errors carry PostgreSQL's message and SQLSTATE ("...; SQLState: 42P01"): they are
  raised as psycopg's errors of that SQLSTATE, and a failure of the API itself (a
  5xx, an expired transaction, a lost answer) as a lost connection, which the job
  retries whole; a lost answer to CommitTransaction is a commit in doubt.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import botocore.exceptions as bx
import psycopg
from psycopg import sql
from psycopg.pq import TransactionStatus

from app import log, retry
from app.aws import Aws, describe, is_transient
from app.errors import AwsAccessDenied, AwsError, LoginRefused
from app.login.master import MasterLogin
from app.retry import Deadline

CALL_LIMIT_SECONDS = 45.0
# Rows a page of a result too large for one response starts with (halved while a
# page is still too large).
PAGE_ROWS = 1000

_PLACEHOLDER = re.compile(r"%\((\w+)\)s|%s|%%")
_SQLSTATE = re.compile(r";\s*SQLState:\s*([0-9A-Z]{5})\s*$")
_TOO_LARGE = re.compile(r"response size|response (data )?(is )?(too large|more than)", re.I)
_LOGIN_REFUSED = re.compile(r"password authentication failed|authentication failed", re.I)
# Refused before anything ran: the same call again is safe, also inside a transaction.
_REFUSED_BEFORE_RUNNING = frozenset({"DatabaseResumingException"})
_FAILED_ON_THE_WAY = frozenset(
    {
        "TransactionNotFoundException",
        "DatabaseUnavailableException",
        "ServiceUnavailableError",
        "InternalServerErrorException",
        "StatementTimeoutException",
    }
)
_FIXES = {
    "HttpEndpointNotEnabledException": "enable it: aws rds enable-http-endpoint --resource-arn ARN",
    "SecretsErrorException": "the secret must hold the master's username and password",
    "InvalidSecretException": "the secret must hold the master's username and password",
    "DatabaseNotFoundException": "the cluster needs a writer instance",
}


def _code(exc: bx.ClientError) -> tuple[str, str]:
    error = exc.response.get("Error", {})
    return str(error.get("Code", "")), str(error.get("Message", ""))


def _refused_before_running(exc: BaseException) -> bool:
    if not isinstance(exc, bx.ClientError):
        return False
    code, _ = _code(exc)
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return code in _REFUSED_BEFORE_RUNNING or (is_transient(exc) and status in (400, 429))


class LostCall(psycopg.OperationalError):
    """The Data API failed on the way (a 5xx, an expired transaction, a lost answer):
    like a lost connection, the whole unit is retried; during CommitTransaction the
    commit is in doubt."""


def _database_error(message: str) -> psycopg.Error:
    """PostgreSQL's error, as the API relays it, as psycopg's error of its SQLSTATE."""
    found = _SQLSTATE.search(message)
    text = _SQLSTATE.sub("", message).strip()
    if found is None:
        return psycopg.DatabaseError(text)
    try:
        cls = psycopg.errors.lookup(found.group(1))
    except KeyError:
        error = psycopg.DatabaseError(text)
        error.sqlstate = found.group(1)
        return error
    return cls(text)


def _value(field: Mapping[str, Any]) -> object:
    """One field of a record as Python has it."""
    if field.get("isNull"):
        return None
    for kind in ("stringValue", "longValue", "booleanValue", "doubleValue"):
        if kind in field:
            return field[kind]
    if "arrayValue" in field:
        return _array(field["arrayValue"])
    if "blobValue" in field:
        return bytes(field["blobValue"])
    return None


def _array(array: Mapping[str, Any]) -> list[object]:
    if "arrayValues" in array:
        return [_array(item) for item in array["arrayValues"]]
    for kind in ("stringValues", "longValues", "booleanValues", "doubleValues"):
        if kind in array:
            return list(array[kind])
    return []


def bind(
    query: str, params: Sequence[object] | Mapping[str, object] | None
) -> tuple[str, list[dict[str, Any]]]:
    """psycopg's placeholders as the Data API's: strings as named parameters, the rest
    (numbers, booleans, None, lists, which the API cannot take) as literals."""
    if params is None:
        return query, []
    parameters: list[dict[str, Any]] = []
    named = params if isinstance(params, Mapping) else {}
    given = iter(()) if isinstance(params, Mapping) else iter(params)

    def one(match: re.Match[str]) -> str:
        if match.group(0) == "%%":
            return "%"
        value = named[match.group(1)] if match.group(1) else next(given)
        if isinstance(value, str):
            name = f"p{len(parameters)}"
            parameters.append({"name": name, "value": {"stringValue": value}})
            return f":{name}"
        return sql.Literal(value).as_string(None)

    return _PLACEHOLDER.sub(one, query), parameters


class _Info:
    def __init__(self, connection: DataApiConnection) -> None:
        self._connection = connection

    @property
    def transaction_status(self) -> TransactionStatus:
        return (
            TransactionStatus.INTRANS
            if self._connection.transaction_id is not None
            else TransactionStatus.IDLE
        )

    def parameter_status(self, name: str) -> str | None:
        # The job turns it on in each transaction (and reads quotes as with it on).
        return "on" if name == "standard_conforming_strings" else None


class DataApiCursor:
    def __init__(self, connection: DataApiConnection) -> None:
        self._connection = connection
        self._rows: list[tuple[object, ...]] = []

    def __enter__(self) -> DataApiCursor:
        return self

    def __exit__(self, *exc: object) -> None:
        self._rows = []

    def execute(
        self,
        query: str | bytes,
        params: Sequence[object] | Mapping[str, object] | None = None,
        *,
        prepare: bool | None = None,
    ) -> DataApiCursor:
        text = query.decode() if isinstance(query, bytes) else query
        self._rows = self._connection.run(*bind(text, params))
        return self

    def fetchone(self) -> tuple[object, ...] | None:
        return self._rows.pop(0) if self._rows else None

    def fetchall(self) -> list[tuple[object, ...]]:
        rows, self._rows = self._rows, []
        return rows


class DataApiConnection:
    """One login's calls to the Data API, shaped as the job uses a psycopg connection."""

    # The Data API ends a call at 45 s: waits longer than that go in slices.
    call_limit: float | None = CALL_LIMIT_SECONDS

    def __init__(self, login: MasterLogin, deadline: Deadline, aws: Aws | None = None) -> None:
        if login.resource_arn is None or login.secret_arn is None:
            raise AwsError("the Data API needs the cluster's ARN and a secret's")
        self.login, self.deadline = login, deadline
        self.aws = aws or Aws(deadline)
        self.read_only = False
        self.transaction_id: str | None = None
        self.calls = 0
        self.info = _Info(self)
        self._cursors = itertools.count()

    def __enter__(self) -> DataApiConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self.transaction_id is not None:
            self._end("RollbackTransaction")

    def cursor(self) -> DataApiCursor:
        return DataApiCursor(self)

    def execute(
        self, query: str, params: Sequence[object] | Mapping[str, object] | None = None
    ) -> DataApiCursor:
        return self.cursor().execute(query, params)

    @contextmanager
    def transaction(self, force_rollback: bool = False) -> Iterator[None]:
        answer = self._call("BeginTransaction", database=self.login.dbname)
        self.transaction_id = str(answer["transactionId"])
        try:
            if self.read_only:
                self.run("SET TRANSACTION READ ONLY", [])
            yield
        except BaseException:
            # No statement can be cancelled: the rollback ends what runs.
            self._end("RollbackTransaction", quietly=True)
            raise
        self._end("RollbackTransaction" if force_rollback else "CommitTransaction")

    def _end(self, operation: str, *, quietly: bool = False) -> None:
        transaction_id, self.transaction_id = self.transaction_id, None
        if transaction_id is None:
            return
        try:
            self._call(operation, transactionId=transaction_id)
        except (psycopg.Error, AwsError) as exc:
            if not quietly:
                raise
            log.event("rollback_failed", reason=str(exc))
        else:
            if quietly:
                log.event(
                    "transaction_rolled_back",
                    reason="the Data API cannot cancel a statement: its transaction was "
                    "rolled back instead",
                )

    def run(self, text: str, parameters: list[dict[str, Any]]) -> list[tuple[object, ...]]:
        """One statement; its rows. A result too large for one response is read again
        in pages through a cursor of the transaction."""
        try:
            return self._execute(text, parameters)
        except TooLarge:
            return self._paged(text, parameters)

    def _execute(self, text: str, parameters: list[dict[str, Any]]) -> list[tuple[object, ...]]:
        request: dict[str, Any] = {
            "sql": text,
            "database": self.login.dbname,
            # A script's statement may run past the call's limit: it goes on, and
            # the job waits for it (below).
            "continueAfterTimeout": self.transaction_id is not None,
        }
        if parameters:
            request["parameters"] = parameters
        if self.transaction_id is not None:
            request["transactionId"] = self.transaction_id
        try:
            answer = self._call("ExecuteStatement", **request)
        except CallTimedOut:
            self._wait_for_the_statement()
            return []
        return [tuple(_value(f) for f in record) for record in answer.get("records", [])]

    def _wait_for_the_statement(self) -> None:
        """A statement that ran past the call's 45 s goes on in its transaction: the
        next statement there runs once it has finished (or fails, if it did)."""
        log.event("statement_runs_on", reason="the Data API call timed out after 45 s")
        while True:
            try:
                self._call(
                    "ExecuteStatement",
                    sql="SELECT 1",
                    database=self.login.dbname,
                    transactionId=self.transaction_id,
                )
            except CallTimedOut:
                continue
            break

    def _paged(self, text: str, parameters: list[dict[str, Any]]) -> list[tuple[object, ...]]:
        if self.transaction_id is None:
            raise AwsError("a result larger than one Data API response needs a transaction")
        name = f"aurora_bootstrap_page_{next(self._cursors)}"
        log.event("result_in_pages", reason="larger than one Data API response (1 MiB)")
        self._execute(f"DECLARE {name} SCROLL CURSOR FOR {text}", parameters)
        rows: list[tuple[object, ...]] = []
        size = PAGE_ROWS
        while True:
            try:
                page = self._execute(f"FETCH FORWARD {size} FROM {name}", [])
            except TooLarge:
                if size == 1:
                    raise AwsError("one row is larger than a Data API response (1 MiB)") from None
                # The FETCH ran and its answer was refused: back to where it started.
                self._execute(f"MOVE ABSOLUTE {len(rows)} IN {name}", [])
                size = max(size // 2, 1)
                continue
            rows.extend(page)
            if len(page) < size:
                break
        self._execute(f"CLOSE {name}", [])
        return rows

    def _call(self, operation: str, **request: Any) -> dict[str, Any]:
        """One call, again while the API refuses it before running it (throttling, a
        cluster resuming), within the deadline; its failures as the job's errors."""
        login = self.login
        method: Callable[..., dict[str, Any]] = getattr(
            self.aws.rds_data, re.sub(r"(?<!^)([A-Z])", r"_\1", operation).lower()
        )

        def once() -> dict[str, Any]:
            self.calls += 1
            return method(resourceArn=login.resource_arn, secretArn=login.secret_arn, **request)

        try:
            return retry.run(
                once,
                what=f"calling the Data API ({operation})",
                deadline=self.deadline,
                transient=_refused_before_running,
                describe=describe,
            )
        except bx.ClientError as exc:
            raise _error(operation, exc) from None
        except (bx.ConnectionError, bx.HTTPClientError, bx.ReadTimeoutError) as exc:
            raise LostCall(f"Data API {operation}: {describe(exc)}") from None
        except bx.NoCredentialsError:
            raise AwsError(
                f"Data API {operation}: no AWS credentials found (task role, AWS_PROFILE or "
                "AWS_ACCESS_KEY_ID)"
            ) from None


class TooLarge(psycopg.OperationalError):
    """The result was larger than one response (1 MiB): read it in pages."""


class CallTimedOut(psycopg.OperationalError):
    """The call ended at the API's 45 s; with continueAfterTimeout the statement runs on."""


def _error(operation: str, exc: bx.ClientError) -> Exception:
    code, message = _code(exc)
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
    found: Exception | None = None
    if code == "StatementTimeoutException" and operation == "ExecuteStatement":
        found = CallTimedOut(f"Data API {operation}: {code}: {message}")
    elif _TOO_LARGE.search(message):
        found = TooLarge(f"Data API {operation}: {message}")
    return found or _final_error(operation, exc, code, message, status)


def _final_error(
    operation: str, exc: bx.ClientError, code: str, message: str, status: int
) -> Exception:
    if _LOGIN_REFUSED.search(message):
        return LoginRefused(f"the Data API's login with the secret was refused: {message}")
    if code in ("BadRequestException", "DatabaseErrorException") and (
        _SQLSTATE.search(message) or message.startswith(("ERROR", "FATAL"))
    ):
        return _database_error(message)
    if code in _FAILED_ON_THE_WAY or status >= 500 or is_transient(exc):
        return LostCall(f"Data API {operation}: {code}: {message}")
    if "AccessDenied" in code or code == "ForbiddenException":
        return AwsAccessDenied(f"Data API {operation}: access denied: {describe(exc)}")
    fix = _FIXES.get(code)
    return AwsError(f"Data API {operation}: {describe(exc)}" + (f"; {fix}" if fix else ""))
