"""The job's failures, each with the one exit code the contract gives it."""

from __future__ import annotations


class BootstrapError(Exception):
    """A failure the job reports and exits on; never carries a secret value."""

    exit_code = 1
    kind = "internal_error"

    def __init__(self, message: str, details: dict[str, object] | None = None) -> None:
        super().__init__(message)
        # Fields for the result line that are known despite the failure.
        self.details = details or {}


class ConfigError(BootstrapError):
    """A setting is missing, malformed or unsafe; nothing was attempted."""

    exit_code = 2
    kind = "config_error"

    def __init__(self, setting: str, problem: str, *also: ConfigError) -> None:
        # `also`: further problems found in the same pass, reported together.
        super().__init__("; ".join([f"{setting}: {problem}", *map(str, also)]))
        self.setting = setting

    @classmethod
    def all_of(cls, errors: list[ConfigError]) -> ConfigError:
        """One error reporting every problem in `errors` (not empty), first first."""
        first, *rest = errors
        return first if not rest else cls(first.setting, first.problem, *rest)

    @property
    def problem(self) -> str:
        return str(self).split("; ", 1)[0].removeprefix(f"{self.setting}: ")


class AwsError(BootstrapError):
    """An AWS failure that retrying cannot fix."""

    exit_code = 3
    kind = "aws_error"


class AwsAccessDenied(AwsError):
    """The caller's credentials may not do this (an IAM policy lacks the action)."""


class LoginRefused(BootstrapError):
    """The database refused the master login, or its certificate did not verify."""

    exit_code = 4
    kind = "login_refused"


class DeadlineExceeded(BootstrapError):
    """DEADLINE_SECONDS passed while waiting or retrying."""

    exit_code = 5
    kind = "deadline_exceeded"


class InitSqlError(BootstrapError):
    """init.sql failed; the transaction was rolled back."""

    exit_code = 6
    kind = "init_sql_error"

    def __init__(self, message: str, *, file: str, line: int | None, sqlstate: str | None) -> None:
        where = f"{file}:{line}" if line is not None else file
        super().__init__(f"{where}: {message} (SQLSTATE {sqlstate or 'unknown'})")
        self.file = file
        self.line = line
        self.sqlstate = sqlstate


class DriftFound(BootstrapError):
    """verify found the database out of line with the settings."""

    exit_code = 7
    kind = "drift"


class Interrupted(BootstrapError):
    """A stop signal arrived: the statement in flight was cancelled and rolled back."""

    kind = "interrupted"


class StoppedBySigint(Interrupted):
    exit_code = 130


class StoppedBySigterm(Interrupted):
    exit_code = 143


class TaskNotStarted(BootstrapError):
    """ecs-run: the task stopped without running the container."""

    exit_code = 8
    kind = "task_not_started"


class FleetFailed(BootstrapError):
    """fleet-run: a target's container did not exit 0, or the execution did not
    succeed; the rows say which targets and how."""

    exit_code = 10
    kind = "fleet_failed"


class TaskLost(BootstrapError):
    """ecs-run: the container ran, but its exit code was lost with its host: the job
    may have committed."""

    exit_code = 9
    kind = "task_lost"


class ResponseNotDelivered(BootstrapError):
    """custom-resource: the answer could not be PUT to CloudFormation's ResponseURL
    within the deadline; the launcher answers FAILED for a task that exits with this."""

    exit_code = 11
    kind = "response_not_delivered"
