"""The generic function's body: one call payload in, one result envelope out.

``run_call`` is the body of the single generic Modal function, and of each local-backend
worker process. It does its own pickling of results and exceptions, so nothing depends on
how a transport would pickle them.
"""

from __future__ import annotations

import asyncio
import inspect
import sys
from collections import deque
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any, TextIO

import redun.executors.base

from redun_modal_executor._registration import register
from redun_modal_executor.errors import WorkerStopped, as_exception
from redun_modal_executor.files.call_volumes import in_call
from redun_modal_executor.payload import (
    CallKind,
    DecodedCall,
    decode_call,
    encode_failure,
    encode_success,
)
from redun_modal_executor.worker import code

LOG_TAIL_LINES = 100
_LOG_LINE_CHARS = 2000

# Sub-schedulers (subrun) built in a worker need `type = modal` even where this package was
# copied into the image without its start-up .pth file.
register(redun.executors.base)


def run_call(payload: bytes) -> bytes:
    """Run one job; return a result envelope. Never raises on the task's behalf."""
    task_name = "<unknown task>"
    value: Any = None
    error: BaseException | None = None
    # The call's Volumes serve its modalvol:// Files until the result is encoded, which
    # hashes the Files in it.
    with ExitStack() as volumes_in_use:
        with capture_output_tail() as tail:
            try:
                call = decode_call(payload)
                task_name = call.header.task
                volumes = volumes_in_use.enter_context(in_call(task_name, call.header.volumes))
                value = _execute(call)
                if volumes is not None:
                    volumes.commit()  # What the task wrote, for the next containers.
            except WorkerStopped:
                raise  # Not the task's outcome: the worker is stopping.
            except BaseException as caught:  # sys.exit() in a task fails the job, not the worker.
                error = as_exception(caught, task_name)
        if error is not None:
            return encode_failure(error, list(tail))
        return encode_success(value, task_name, list(tail))


def _execute(call: DecodedCall) -> Any:
    code.activate(call.header.code)
    function, args, kwargs = call.load()
    if call.header.kind == CallKind.SCRIPT.value:
        from redun.scripting import exec_script, prepare_command

        return exec_script(prepare_command(function(*args, **kwargs)))
    if call.header.kind == CallKind.LAUNCH.value:
        from redun_modal_executor.launch.scheduler import run_launch

        assert call.header.launch is not None
        return run_launch(function(*args, **kwargs), call.header.launch)
    result = function(*args, **kwargs)
    if inspect.iscoroutine(result):
        result = asyncio.run(result)
    return result


class _TeeLines:
    """A text stream that passes writes through and keeps the last lines written."""

    def __init__(self, stream: TextIO, tail: deque[str]) -> None:
        self._stream = stream
        self._tail = tail
        self._partial = ""

    def write(self, text: str) -> int:
        written = self._stream.write(text)
        lines = (self._partial + text).split("\n")
        self._partial = lines.pop()[-_LOG_LINE_CHARS:]
        self._tail.extend(line[:_LOG_LINE_CHARS] + "\n" for line in lines)
        return written

    def flush_partial(self) -> None:
        if self._partial:
            self._tail.append(self._partial + "\n")
            self._partial = ""

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


@contextmanager
def capture_output_tail() -> Iterator[deque[str]]:
    """Tee ``sys.stdout``/``sys.stderr`` and collect their last lines (both interleaved)."""
    tail: deque[str] = deque(maxlen=LOG_TAIL_LINES)
    saved = sys.stdout, sys.stderr
    tees = _TeeLines(sys.stdout, tail), _TeeLines(sys.stderr, tail)
    sys.stdout, sys.stderr = tees  # type: ignore[assignment]
    try:
        yield tail
    finally:
        sys.stdout, sys.stderr = saved
        for tee in tees:
            tee.flush_partial()
