"""Every error this package raises, in one place (the troubleshooting docs list them).

They carry a single message argument (or, for ``RemoteTaskError``, plain strings), so they
pickle across the worker boundary and into redun's database unchanged. Errors a transport
reports may also carry ``logs``: the tail of the call's log, which redun shows under the job.
"""

from redun_modal_executor.config import ConfigError, TaskOptionError

__all__ = [
    "JOB_ERRORS",
    "AppNotDeployedError",
    "CallCancelledError",
    "CallTimeoutError",
    "CodePackageError",
    "CodeSkewError",
    "ConfigError",
    "DatabaseBusyError",
    "LaunchError",
    "ModalAuthError",
    "ModalUnreachableError",
    "PayloadError",
    "RemoteCallError",
    "RemoteTaskError",
    "SerializationError",
    "TaskOptionError",
    "VersionSkewError",
    "WorkerDiedError",
    "is_retriable",
]


class PayloadError(Exception):
    """Bytes that are not a call payload or result envelope of a format this side speaks."""


class VersionSkewError(PayloadError):
    """The client and the worker run different Python, redun, cloudpickle or payload versions."""


class CodeSkewError(Exception):
    """The worker imported a different version of a task's code than the client submitted."""


class CodePackageError(RuntimeError):
    """The code package could not be built, fetched or unpacked."""


class SerializationError(TypeError):
    """An argument or result that cannot be pickled."""


class CallTimeoutError(TimeoutError):
    """A job ran longer than its ``timeout``."""


class WorkerDiedError(RuntimeError):
    """The worker running a job exited before returning a result."""


class CallCancelledError(RuntimeError):
    """A job's call was cancelled (the run was stopped)."""


class AppNotDeployedError(RuntimeError):
    """The Modal app or its generic function is not deployed where the client looks."""


class ModalAuthError(RuntimeError):
    """Modal found no credentials, or rejected them."""


class RemoteCallError(RuntimeError):
    """A Modal call failed outside the task: out of memory, failed to start, lost, expired."""


class LaunchError(RuntimeError):
    """A ``redun launch`` that cannot be started as asked (its database or configuration)."""


class DatabaseBusyError(RuntimeError):
    """Another launched scheduler holds the sqlite database on the scheduler volume."""


class RemoteTaskError(Exception):
    """Stands in for a remote exception that could not be sent back as itself."""

    def __init__(self, type_name: str, message: str, remote_traceback: str = "") -> None:
        super().__init__(type_name, message, remote_traceback)
        self.type_name = type_name
        self.message = message
        self.remote_traceback = remote_traceback

    def __str__(self) -> str:
        return f"{self.type_name}: {self.message}" if self.message else self.type_name


class ModalUnreachableError(RemoteCallError):
    """The client could not reach Modal's API: no network, a wrong server URL, or a proxy."""


# Errors that fail one job before it is sent (options, arguments, code, launch database).
JOB_ERRORS = (
    TaskOptionError,
    SerializationError,
    CodePackageError,
    LaunchError,
    DatabaseBusyError,
)


def is_retriable(error: BaseException) -> bool:
    """A task's own exception, or a local worker that died: worth another run if asked for.

    Not: timeouts (reported, never silently rerun), cancellations, problems of configuration or
    code that would fail the same way again, and Modal call failures (Modal's own ``retries``
    has already rerun those).
    """
    deterministic = (
        CallTimeoutError,
        CallCancelledError,
        RemoteCallError,
        AppNotDeployedError,
        ModalAuthError,
        PayloadError,
        CodeSkewError,
        *JOB_ERRORS,
    )
    return not isinstance(error, deterministic)
