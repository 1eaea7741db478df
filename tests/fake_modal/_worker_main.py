"""A worker process of the fake: plays the part of a Modal container, one input at a time.

Run as a script by `workers.WorkerPool`. It reads requests from stdin and writes replies to
the stdout it started with; each is an 8-byte big-endian length and a pickled dict. The
function's own stdout goes to stderr and its stdin is /dev/null, so neither can disturb the
protocol. Arguments are decoded and results (or exceptions) encoded with the client's own
serialization code, as the container runtime does (modal/_runtime/container_io_manager.py).
"""

from __future__ import annotations

import asyncio
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

from modal._serialization import (  # noqa: E402
    deserialize_data_format,
    pickle_exception,
    pickle_traceback,
    serialize_data_format,
)
from modal_proto import api_pb2  # noqa: E402

_HEADER = struct.Struct(">Q")
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


def main() -> None:
    """Serve requests until stdin closes."""
    requests = os.fdopen(os.dup(0), "rb")
    replies = os.fdopen(os.dup(1), "wb")
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    os.dup2(2, 1)
    while (request := _read(requests)) is not None:
        _write(replies, _with_environment(request.get("env", {}), request))


if __name__ == "__main__":
    main()
