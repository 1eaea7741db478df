"""A worker process of the fake: plays the part of a Modal container, one input at a time.

Run as a script by `workers.WorkerPool`. It reads requests from stdin and writes replies to
the stdout it started with; each is an 8-byte big-endian length and a pickled dict. The
function's own stdout goes to the pipe whose file descriptor is the first argument (to stderr
without one) and its stdin is /dev/null, so neither can disturb the protocol. After each input
the end-of-input mark goes to stdout and stderr, so that the parent knows it has every line the
input wrote. Arguments are decoded and results (or exceptions) encoded with the client's own
serialization code, as the container runtime does (modal/_runtime/container_io_manager.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import inspect
import os
import pickle
import struct
import sys
import traceback
from collections.abc import Callable
from typing import Any, BinaryIO

if sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
    # This folder's module names must not shadow top-level modules in the function's code.
    del sys.path[0]

from modal._runtime.execution_context import _set_current_context_ids  # noqa: E402
from modal._serialization import (  # noqa: E402
    deserialize_data_format,
    pickle_exception,
    pickle_traceback,
    serialize_data_format,
)
from modal_proto import api_pb2  # noqa: E402

_HEADER = struct.Struct(">Q")
END_OF_INPUT = b"\0fake-modal:end-of-input\0"  # as in workers.py
_OUTPUT_FORMATS = (api_pb2.DATA_FORMAT_PICKLE, api_pb2.DATA_FORMAT_CBOR)
_targets: dict[str, Callable[..., Any]] = {}


def _read(stream: BinaryIO) -> dict[str, Any] | None:
    header = stream.read(_HEADER.size)
    if len(header) < _HEADER.size:
        return None
    (length,) = _HEADER.unpack(header)
    request: dict[str, Any] = pickle.loads(stream.read(length))
    return request


def _write(stream: BinaryIO, message: dict[str, Any]) -> None:
    body = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(_HEADER.pack(len(body)) + body)
    stream.flush()


def _load(target: str) -> Callable[..., Any]:
    function = _targets.get(target)
    if function is None:
        module_name, _, qualname = target.partition(":")
        value: Any = importlib.import_module(module_name)
        for attribute in qualname.split("."):
            value = getattr(value, attribute)
        function = _targets[target] = value
    return function


async def _await(awaitable: Any) -> Any:
    return await awaitable


def _call(request: dict[str, Any]) -> dict[str, Any]:
    input_format = request["data_format"] or api_pb2.DATA_FORMAT_PICKLE
    output_format = input_format if input_format in _OUTPUT_FORMATS else _OUTPUT_FORMATS[0]
    try:
        args, kwargs = deserialize_data_format(request["args"], input_format, None)
        # What `modal.current_function_call_id()` and friends read in a real container.
        _set_current_context_ids([request["input_id"]], [request["call_id"]], [""])
        result = _load(request["target"])(*args, **kwargs)
        if inspect.isawaitable(result):
            result = asyncio.run(_await(result))
        data = serialize_data_format(result, output_format)
    except Exception as exc:
        reply: dict[str, Any] = {
            "ok": False,
            "data_format": output_format,
            "exception": repr(exc),
            "traceback": traceback.format_exc(),
            "data": b"",
            "serialized_tb": b"",
            "tb_line_cache": b"",
        }
        if output_format == api_pb2.DATA_FORMAT_PICKLE:
            reply["data"] = pickle_exception(exc)
            reply["serialized_tb"], reply["tb_line_cache"] = pickle_traceback(
                exc, request["task_id"]
            )
        return reply
    return {"ok": True, "data_format": output_format, "data": data}


def _with_environment(environment: dict[str, str], request: dict[str, Any]) -> dict[str, Any]:
    saved = {name: os.environ.get(name) for name in environment}
    os.environ.update(environment)
    try:
        return _call(request)
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _mount(views: dict[int, str]) -> list[int]:
    """Hold each view open under its mount path's descriptor (see volumes.py)."""
    for fd, path in views.items():
        descriptor = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        os.dup2(descriptor, fd)
        os.close(descriptor)
    return list(views)


def main() -> None:
    """Serve requests until stdin closes."""
    requests = os.fdopen(os.dup(0), "rb")
    replies = os.fdopen(os.dup(1), "wb")
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    if len(sys.argv) > 1:
        output = int(sys.argv[1])
        os.dup2(output, 1)
        os.close(output)
    else:
        os.dup2(2, 1)
    while (request := _read(requests)) is not None:
        mounted = _mount(request.get("mounts", {}))
        reply = _with_environment(request.get("env", {}), request)
        for fd in mounted:
            os.close(fd)
        _mark_end_of_input()
        _write(replies, reply)


def _mark_end_of_input() -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    for fd in (1, 2):
        with contextlib.suppress(OSError):
            os.write(fd, END_OF_INPUT)


if __name__ == "__main__":
    main()
