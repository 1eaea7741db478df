"""The call payload and the result envelope: the only bytes that cross to a worker and back.

Both have the same frame::

    magic (8 bytes) | format version (uint16) | header length (uint32) | JSON header | body

The JSON header is readable by any version, so a worker rejects a payload from another
format, Python, redun or cloudpickle version with a clear message before unpickling anything.
The body is one pickle (cloudpickle, protocol 5): ``(function or None, args, kwargs)`` for a
call; the value, or ``(pickled exception or None, frames)`` for a result.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import struct
import sys
import traceback
from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Any, BinaryIO

import cloudpickle
import redun
from redun.expression import TaskExpression

from redun_modal_executor.backends.base import BackendRef
from redun_modal_executor.errors import (
    CodeSkewError,
    PayloadError,
    RemoteTaskError,
    SerializationError,
    VersionSkewError,
    qualified_type_name,
)
from redun_modal_executor.files.call_volumes import VolumeAccess
from redun_modal_executor.launch.spec import LaunchSpec

FORMAT_VERSION = 1
_CALL_MAGIC = b"RMX:CALL"
_RESULT_MAGIC = b"RMX:RSLT"
_FRAME = struct.Struct("!8sHI")
_PICKLE_PROTOCOL = 5
_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


class CallKind(str, Enum):
    TASK = "task"  # run the function, return its value
    SCRIPT = "script"  # run the shell command the function returns, return its stdout
    LAUNCH = "launch"  # a script that runs a redun scheduler, with its database (see launch)


def runtime_versions() -> dict[str, str]:
    """Versions that must agree between client and worker for pickles to load."""
    return {
        "python": f"{sys.version_info.major}.{sys.version_info.minor}",
        "redun": redun.__version__,
        "cloudpickle": cloudpickle.__version__,
    }


def _frame(magic: bytes, header: dict[str, Any], contents: Any) -> bytes:
    """The frame of ``header`` and the pickle of ``contents``."""
    header_bytes = json.dumps(header).encode()
    frame = _Frame()
    frame.write(_FRAME.pack(magic, FORMAT_VERSION, len(header_bytes)))
    frame.write(header_bytes)
    cloudpickle.dump(contents, frame, protocol=_PICKLE_PROTOCOL)
    return frame.getvalue()


class _Frame:
    """What a pickler writes, as one ``bytes`` made with one copy of the data at most.

    The pickler hands a big buffer (a ``bytes`` argument, an array's data) to ``write`` as it
    is: it is kept by reference and copied once, into the result. The rest goes through a
    ``BytesIO``, whose own buffer is handed over without a copy. Writing it all to one
    ``BytesIO`` would over-allocate it by an eighth as it grows.
    """

    _BY_REFERENCE = 1024 * 1024  # Writes from this size are kept, not copied.

    def __init__(self) -> None:
        self._pieces: list[Any] = []  # Finished pieces, in order.
        self._small = io.BytesIO()

    def write(self, data: Any) -> int:
        size = memoryview(data).nbytes
        if size < self._BY_REFERENCE:
            return self._small.write(data)
        if self._small.tell():
            self._pieces.append(self._small.getvalue())
            self._small = io.BytesIO()
        self._pieces.append(data)  # Alive until getvalue(), within the same dump.
        return size

    def getvalue(self) -> bytes:
        if not self._pieces:
            return self._small.getvalue()
        return b"".join([*self._pieces, self._small.getvalue()])


def _unframe(
    data: bytes | memoryview | BinaryIO, magic: bytes, what: str
) -> tuple[dict[str, Any], memoryview | BinaryIO]:
    """The header, and the body: a view into ``data``, or the file ``data`` read up to it."""
    if isinstance(data, (bytes, memoryview)):
        view = memoryview(data)
        end = _FRAME.size + _header_length(view[: _FRAME.size], magic, what)
        return _parse_header(view[_FRAME.size : end], what), view[end:]
    header_length = _header_length(data.read(_FRAME.size), magic, what)
    return _parse_header(data.read(header_length), what), data


def _header_length(prefix: bytes | memoryview, magic: bytes, what: str) -> int:
    if len(prefix) < _FRAME.size:
        raise PayloadError(f"not a redun-modal-executor {what}: only {len(prefix)} bytes")
    found_magic, version, header_length = _FRAME.unpack_from(prefix)
    if found_magic != magic:
        raise PayloadError(f"not a redun-modal-executor {what} (bad magic {found_magic!r})")
    if version != FORMAT_VERSION:
        raise VersionSkewError(
            f"{what} uses payload format {version}, this side speaks format {FORMAT_VERSION}. "
            "Install the same redun-modal-executor version on the client and in the worker "
            "image (redeploy the Modal app after upgrading)."
        )
    return header_length


def _parse_header(header: bytes | memoryview, what: str) -> dict[str, Any]:
    try:
        return json.loads(bytes(header))
    except ValueError as error:
        raise PayloadError(f"corrupt {what} header: {error}") from None


def _load(body: memoryview | BinaryIO) -> Any:
    """Unpickle a body; from a file, a big ``bytes`` is read straight into its object."""
    return cloudpickle.loads(body) if isinstance(body, memoryview) else cloudpickle.load(body)


# ---------------------------------------------------------------------------------------------
# Call payload


@dataclass(frozen=True)
class CodeReference:
    """The code package a call's task is imported from: its digest, the ``sys.path`` entries
    inside it, and the backend that stores it."""

    digest: str
    import_paths: tuple[str, ...]
    store: BackendRef

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CodeReference:
        return cls(data["digest"], tuple(data["import_paths"]), BackendRef(**data["store"]))


@dataclass(frozen=True)
class CallHeader:
    """What the worker learns about a call before unpickling it."""

    kind: str
    task: str
    task_hash: str
    module: str
    by_value: bool
    job_id: str = ""
    eval_hash: str = ""
    code: CodeReference | None = None
    launch: LaunchSpec | None = None  # Only for a LAUNCH call.
    volumes: VolumeAccess | None = None  # How the call reaches modalvol:// Files.
    versions: dict[str, str] = field(default_factory=runtime_versions)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CallHeader:
        code, launch, volumes = data.get("code"), data.get("launch"), data.get("volumes")
        return cls(
            **{
                **data,
                "code": None if code is None else CodeReference.from_json(code),
                "launch": None if launch is None else LaunchSpec.from_json(launch),
                "volumes": None if volumes is None else VolumeAccess.from_json(volumes),
            }
        )


@dataclass(frozen=True)
class DecodedCall:
    """A decoded call payload; ``load`` unpickles it (worker side, with its code active)."""

    header: CallHeader
    body: memoryview

    def load(self) -> tuple[Any, tuple, dict]:
        """Return ``(function, args, kwargs)``, importing the task by name if shipped by ref."""
        function, args, kwargs = cloudpickle.loads(self.body)
        if function is None:
            function = _import_task_function(self.header)
        return function, args, kwargs


def ships_by_value(task: Any) -> bool:
    """True when a worker cannot re-import the task by module and name."""
    func = task.func
    return func.__module__ == "__main__" or "<locals>" in func.__qualname__


def encode_call(
    task: Any,
    args: tuple,
    kwargs: dict,
    kind: CallKind = CallKind.TASK,
    job_id: str = "",
    eval_hash: str = "",
    code: CodeReference | None = None,
    launch: LaunchSpec | None = None,
    volumes: VolumeAccess | None = None,
) -> bytes:
    """Serialize one job's call. Raises ``SerializationError`` naming the bad argument."""
    by_value = ships_by_value(task)
    header = CallHeader(
        kind=kind.value,
        task=task.fullname,
        task_hash=task.hash,
        module=task.load_module,
        by_value=by_value,
        job_id=job_id,
        eval_hash=eval_hash,
        code=code,
        launch=launch,
        volumes=volumes,
    )
    function = task.func if by_value else None
    try:
        return _frame(_CALL_MAGIC, asdict(header), (function, args, kwargs))
    except Exception as error:
        message = _describe_unpicklable(task.fullname, args, kwargs, error)
        raise SerializationError(message) from None


def _first_unpicklable(args: tuple, kwargs: dict) -> str | None:
    """``argument N (type)`` for the first argument that cannot be pickled, if any."""
    named = [(f"argument {i}", value) for i, value in enumerate(args)]
    named += [(f"argument {key!r}", value) for key, value in kwargs.items()]
    for label, value in named:
        try:
            cloudpickle.dumps(value, protocol=_PICKLE_PROTOCOL)
        except Exception:
            return f"{label} ({type(value).__name__})"
    return None


def _describe_unpicklable(task_name: str, args: tuple, kwargs: dict, error: Exception) -> str:
    culprit = _first_unpicklable(args, kwargs) or "its function"
    return (
        f"Task {task_name}: {culprit} cannot be pickled to send to the worker: "
        f"{type(error).__name__}: {error}. Pass plain data (or a redun File) instead of "
        "open handles, locks, sockets or clients, and create those inside the task."
    )


def decode_call(data: bytes) -> DecodedCall:
    """Parse a call payload and check that this worker can run it (versions first)."""
    header_dict, body = _unframe(data, _CALL_MAGIC, "call payload")
    try:
        header = CallHeader.from_json(header_dict)
    except (TypeError, KeyError, AttributeError) as error:
        raise PayloadError(f"corrupt call payload header: {error}") from None
    check_versions(header)
    return DecodedCall(header, body)


def check_versions(header: CallHeader) -> None:
    ours = runtime_versions()
    skew = [
        f"{name} {theirs} on the client, {ours.get(name)} in the worker"
        for name, theirs in sorted(header.versions.items())
        if ours.get(name) != theirs
    ]
    if skew:
        raise VersionSkewError(
            f"Task {header.task}: version skew between client and worker: {'; '.join(skew)}. "
            "Pickled calls only load on matching versions: rebuild and redeploy the worker "
            "image from this client's environment, or install the image's versions locally."
        )


def _import_task_function(header: CallHeader) -> Any:
    from redun.task import get_task_registry

    try:
        __import__(header.module)
    except ModuleNotFoundError as error:
        raise ModuleNotFoundError(
            f"Task {header.task}: the worker cannot import module {header.module!r} "
            f"({error}). Make the module importable in the worker: install it in the image "
            "or ship it with the code package (see the docs on code shipping).",
            name=error.name,
        ) from None
    task = get_task_registry().get(header.task)
    if task is None:
        raise CodeSkewError(
            f"Task {header.task}: module {header.module!r} was imported in the worker but "
            "defines no such task. The worker's copy of the module differs from the client's."
        )
    if task.hash != header.task_hash:
        raise CodeSkewError(
            f"Task {header.task}: the worker's code for this task (hash {task.hash[:8]}) "
            f"differs from the client's (hash {header.task_hash[:8]}). Ship the current code "
            "to the worker (or redeploy) so results are cached under the code that made them."
        )
    return task.func


# ---------------------------------------------------------------------------------------------
# Result envelope


@dataclass(frozen=True)
class Success:
    value: Any


@dataclass(frozen=True)
class Failure:
    error: BaseException
    frames: list[traceback.FrameSummary]
    logs: list[str]


def encode_success(value: Any, task_name: str, logs: list[str]) -> bytes:
    """Serialize a task's return value; an unpicklable value becomes a failure envelope."""
    try:
        return _frame(_RESULT_MAGIC, {"ok": True}, value)
    except Exception as error:
        what = f"its result ({type(value).__name__})"
        if isinstance(value, TaskExpression):  # A call of another task: which argument?
            culprit = _first_unpicklable(value.args, value.kwargs)
            if culprit is not None:
                what = f"{culprit} of the {value.task_name} call it returns"
        failure = SerializationError(
            f"Task {task_name}: {what} cannot be pickled to send back: "
            f"{type(error).__name__}: {error}. Return plain data or a redun File."
        )
        return encode_failure(failure, logs)


def encode_failure(error: BaseException, logs: list[str]) -> bytes:
    """Serialize an exception with its remote traceback; never raises."""
    frames = [
        traceback.FrameSummary(frame.filename, frame.lineno, frame.name, line=frame.line)
        for frame in traceback.extract_tb(error.__traceback__)
        if not frame.filename.startswith(_PACKAGE_DIR)
    ]
    header = {
        "ok": False,
        "error_type": qualified_type_name(error),
        "message": str(error),
        "traceback": "".join(traceback.format_exception(error)),
        "logs": logs,
    }
    try:
        pickled_error: bytes | None = cloudpickle.dumps(error, protocol=_PICKLE_PROTOCOL)
    except Exception:
        pickled_error = None
    # The exception is pickled on its own so that its frames still load where it cannot.
    return _frame(_RESULT_MAGIC, header, (pickled_error, frames))


def decode_result(data: bytes | BinaryIO, task: str = "") -> Success | Failure:
    """Parse a result envelope (client side) of a call of ``task``, in memory or a file
    positioned at it; a value that cannot be loaded here raises ``SerializationError``
    naming the task."""
    header, body = _unframe(data, _RESULT_MAGIC, "result envelope")
    if header.get("ok"):
        try:
            return Success(_load(body))
        except Exception as error:
            raise SerializationError(
                f"Task {task}: its result cannot be loaded here: {type(error).__name__}: "
                f"{error}. Unpickling it needs what made it in the worker: install the "
                "modules its classes come from where `redun run` runs, or return plain data."
            ) from None
    logs = header.get("logs", [])
    pickled_error, frames = _load(body)

    def stand_in(why: str) -> RemoteTaskError:
        return RemoteTaskError(
            header["error_type"], header["message"], header["traceback"], task, why
        )

    if pickled_error is None:
        return Failure(stand_in("it could not be pickled in the worker"), frames, logs)
    try:
        error = cloudpickle.loads(pickled_error)
    except Exception as unloadable:
        # The exception's class does not exist or load here: keep its name, text and traceback.
        why = f"its class cannot be loaded here: {type(unloadable).__name__}: {unloadable}"
        error = stand_in(why)
    return Failure(error, frames, logs)


def decode_outcome(
    outcome: bytes | BinaryIO | BaseException | None, label: str, task: str
) -> Success | Failure | BaseException:
    """A call's outcome (client side): the result in its envelope, or the error that kept
    the call ``label`` of ``task`` from one. An envelope file is closed once read."""
    assert outcome is not None
    if isinstance(outcome, BaseException):
        return outcome
    try:
        with contextlib.nullcontext() if isinstance(outcome, bytes) else outcome:
            return decode_result(outcome, task)
    except SerializationError as unloadable:  # A value this client cannot load.
        return unloadable
    except Exception as unreadable:
        return PayloadError(
            f"{label}: its result envelope could not be loaded here: "
            f"{type(unreadable).__name__}: {unreadable}"
        )
