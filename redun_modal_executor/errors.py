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
    "TaskExitError",
    "TaskOptionError",
    "VersionSkewError",
    "VolumeFileError",
    "WorkerDiedError",
    "WorkerStopped",
    "as_exception",
    "is_retriable",
    "recordable",
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
    """Stands in for a task's exception that cannot be itself here: it could not be pickled
    in the worker, its class cannot be loaded on the client, or redun cannot record it."""

    def __init__(
        self,
        type_name: str,
        message: str,
        remote_traceback: str = "",
        task: str = "",
        why: str = "",
    ) -> None:
        super().__init__(type_name, message, remote_traceback, task, why)
        self.type_name = type_name
        self.message = message
        self.remote_traceback = remote_traceback
        self.task = task
        self.why = why

    def __str__(self) -> str:
        raised = f"{self.type_name}: {self.message}" if self.message else self.type_name
        if self.task:
            raised = f"Task {self.task} raised {raised}"
        return f"{raised} ({self.why})" if self.why else raised


class TaskExitError(Exception):
    """A task let out a ``BaseException`` that is not an ``Exception`` (``sys.exit``,
    ``KeyboardInterrupt``, ``GeneratorExit``): the job fails as for any task error."""


class WorkerStopped(KeyboardInterrupt):
    """The worker was told to stop (SIGTERM) while a launch ran: it ends the worker."""


class VolumeFileError(RuntimeError):
    """A ``modalvol://`` File that cannot be reached as asked: its Volume does not exist, its
    path leads outside the Volume, or the Volume is mounted read-only where it is written."""


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


def as_exception(error: BaseException, task: str) -> Exception:
    """``error`` if it is an ``Exception``; else a ``TaskExitError`` that names the task and
    what it let out (redun records and retries only ``Exception``)."""
    if isinstance(error, Exception):
        return error
    if isinstance(error, SystemExit):
        code = error.code
        if code is None or isinstance(code, int):
            argument = "" if code is None else code
            message = f"Task {task} called sys.exit({argument}): exit status {code or 0}"
        else:
            message = f"Task {task} called sys.exit({code!r}): {code}"
    else:
        detail = f": {error}" if str(error) else ""
        message = f"Task {task} let out {type(error).__name__}{detail} (not an Exception)"
    wrapped = TaskExitError(message).with_traceback(error.__traceback__)
    wrapped.__cause__ = error
    return wrapped


def recordable(error: Exception, task: str) -> Exception:
    """``error``, or where redun cannot pickle it into its database, a stand-in that keeps
    its type name, message and traceback text (redun records such errors as
    ``Exception(repr(error))``; its traceback, which holds the error too, must pickle)."""
    from redun.utils import pickle_dumps

    try:
        pickle_dumps(error)
    except Exception as why:
        remote = getattr(error, "remote_traceback", "")
        why_text = f"redun cannot pickle it: {why}"
        return RemoteTaskError(qualified_type_name(error), str(error), remote, task, why_text)
    return error


def qualified_type_name(error: BaseException) -> str:
    """``KeyError`` for builtins, else ``module.Class``."""
    kind = type(error)
    if kind.__module__ == "builtins":
        return kind.__qualname__
    return f"{kind.__module__}.{kind.__qualname__}"
