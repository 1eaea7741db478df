"""Worker processes that run inputs, one at a time each, and a small pool of warm ones.

A worker that is killed (cancellation, timeout, injected fault) or dies is never reused;
the pool starts a fresh one in the background to keep `warm` idle workers ready.

What a worker writes to its stdout and stderr (at the file-descriptor level, subprocesses
included) comes through two pipes, line by line, as a Modal container's output goes to its
logs: each line is still copied to this process's stderr (where the workers' output always
went), and handed to the worker's `log_sink` while one is set (the control plane sets one per
attempt). After each input the worker marks the end of its output on both pipes, so `run`
returns only once every line the input wrote has been handed over; a killed or dead worker's
pipes are read to their end.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pickle
import signal
import struct
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

WORKER_MAIN = Path(__file__).with_name("_worker_main.py")
_HEADER = struct.Struct(">Q")
_CLOSE_GRACE = 2.0
# Written by _worker_main to its stdout and stderr after each input (NUL: not in text output).
END_OF_INPUT = b"\0fake-modal:end-of-input\0"
_MAX_LINE = 64 * 1024  # a longer run of output without a newline is cut into lines
_DRAIN_TIMEOUT = 2.0  # how long to wait for output still in the pipes (a grandchild may hold one)

Stream = Literal["stdout", "stderr"]
LogSink = Callable[[Stream, int, str], None]  # (stream, time.time_ns() when read, line)


def container_token(token_id: str, number: int) -> str:
    """The token id of worker `number`: the fake's own, marked with the worker, so that the
    fake knows which "container" a request comes from (a Volume's commit, say), as Modal
    knows a container's requests."""
    return f"{token_id}{CONTAINER_MARK}{number}"


CONTAINER_MARK = ".container-"


class WorkerDied(Exception):
    """The worker process ended while it had an input."""

    def __init__(self, returncode: int | None) -> None:
        super().__init__(f"worker exited with code {returncode}")
        self.returncode = returncode


class _OutputPipe:
    """Reads one of a worker's output streams into lines, until end of file."""

    def __init__(self, worker: Worker, stream: Stream, reader: asyncio.StreamReader) -> None:
        self.worker = worker
        self.stream = stream
        self.marks = 0  # END_OF_INPUT marks seen
        self._reader = reader
        self._pending = b""  # the start of a line (or of a mark) still to come
        self._pending_ns = 0  # when its first byte was read
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        self.task = asyncio.ensure_future(self._pump())

    async def wait_for_mark(self, count: int) -> None:
        """Return once `count` marks have been read (or the pipe has ended)."""
        if self.marks < count and not self.task.done():
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append((count, waiter))
            await waiter

    async def _pump(self) -> None:
        try:
            while chunk := await self._reader.read(65536):
                self._split(chunk, time.time_ns())
            if self._pending:  # A last line without its newline.
                self._emit(self._pending, self._pending_ns)
        finally:
            self._wake(everyone=True)

    def _split(self, chunk: bytes, now: int) -> None:
        """Hand over each complete line; what follows the last newline waits for the rest."""
        if not self._pending:
            self._pending_ns = now
        data, start, started_ns = self._pending + chunk, 0, self._pending_ns
        while True:
            newline = data.find(b"\n", start)
            end = newline + 1 if newline >= 0 else len(data)
            mark = data.find(END_OF_INPUT, start, end)  # A mark holds no newline.
            if mark >= 0:
                if mark > start:  # The input's last line, without its newline.
                    self._emit(data[start:mark], started_ns)
                start = mark + len(END_OF_INPUT)
                self.marks += 1
                self._wake()
            elif newline >= 0:
                self._emit(data[start:end], started_ns)
                start = end
            elif len(data) - start > _MAX_LINE:  # Cut it, but not where a mark may begin.
                cut = len(data) - len(END_OF_INPUT) + 1
                self._emit(data[start:cut], started_ns)
                start = cut
            else:
                break
            started_ns = now  # What follows came in this chunk.
        self._pending, self._pending_ns = data[start:], started_ns

    def _emit(self, data: bytes, timestamp_ns: int) -> None:
        with contextlib.suppress(OSError):
            os.write(2, data)  # Where the workers' output went before the fake kept logs.
        sink = self.worker.log_sink
        if sink is not None:
            sink(self.stream, timestamp_ns, data.decode(errors="replace"))

    def _wake(self, everyone: bool = False) -> None:
        waiting = []
        for count, waiter in self._waiters:
            if everyone or count <= self.marks:
                if not waiter.done():
                    waiter.set_result(None)
            else:
                waiting.append((count, waiter))
        self._waiters = waiting


class Worker:
    """One worker process, talking the length-prefixed pickle protocol of _worker_main."""

    def __init__(
        self,
        process: asyncio.subprocess.Process,
        stdout: tuple[asyncio.StreamReader, asyncio.BaseTransport],
        stderr: tuple[asyncio.StreamReader, asyncio.BaseTransport],
        identity: str,
    ) -> None:
        self.process = process
        # The token id its modal client sends: which "container" a request comes from.
        self.identity = identity
        self.used = False
        self.log_sink: LogSink | None = None  # gets each line the worker writes
        self._requests = 0
        self._transports = (stdout[1], stderr[1])
        self._pipes = (
            _OutputPipe(self, "stdout", stdout[0]),
            _OutputPipe(self, "stderr", stderr[0]),
        )

    @property
    def pid(self) -> int:
        """The process id."""
        return self.process.pid

    @property
    def alive(self) -> bool:
        """True until the process has been reaped."""
        return self.process.returncode is None

    async def run(self, request: dict[str, Any]) -> dict[str, Any]:
        """Send one request and wait for its reply; raises WorkerDied if the process ends."""
        stdin, stdout = self.process.stdin, self.process.stdout
        assert stdin is not None and stdout is not None
        self.used = True
        self._requests += 1
        body = pickle.dumps(request, protocol=pickle.HIGHEST_PROTOCOL)
        try:
            stdin.write(_HEADER.pack(len(body)) + body)
            await stdin.drain()
            (length,) = _HEADER.unpack(await stdout.readexactly(_HEADER.size))
            reply: dict[str, Any] = pickle.loads(await stdout.readexactly(length))
        except (asyncio.IncompleteReadError, ConnectionError):
            self._kill_group()  # Whatever the worker started goes with it.
            returncode = await self.process.wait()
            await self.drain_output()
            raise WorkerDied(returncode) from None
        # The input's last lines may still be in the pipes: wait for its end marks.
        marks = [pipe.wait_for_mark(self._requests) for pipe in self._pipes]
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.gather(*marks), _DRAIN_TIMEOUT)
        return reply

    async def drain_output(self) -> None:
        """Once the process is gone: read what is left in its output pipes, then close them."""
        tasks = [pipe.task for pipe in self._pipes]
        await asyncio.wait(tasks, timeout=_DRAIN_TIMEOUT)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for transport in self._transports:
            transport.close()

    async def kill(self) -> None:
        """SIGKILL the process (and the processes it started) and reap it."""
        self._kill_group()
        await self.process.wait()
        await self.drain_output()

    def _kill_group(self) -> None:
        # A worker leads a process group of its own: it goes as a whole, like a container (and
        # a child of the function left running cannot hold the output pipes open).
        if self.process.returncode is None or not all(pipe.task.done() for pipe in self._pipes):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signal.SIGKILL)

    async def close(self) -> None:
        """Let the process exit on end of input; kill it if it lingers."""
        if self.process.stdin is not None and not self.process.stdin.is_closing():
            self.process.stdin.close()
        try:
            await asyncio.wait_for(self.process.wait(), _CLOSE_GRACE)
        except asyncio.TimeoutError:
            await self.kill()
        else:
            await self.drain_output()


async def _read_pipe(fd: int) -> tuple[asyncio.StreamReader, asyncio.BaseTransport]:
    """A stream reader on the read end `fd` of a pipe, and its transport (to close it)."""
    reader = asyncio.StreamReader()
    transport, _ = await asyncio.get_running_loop().connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(fd, "rb", buffering=0)
    )
    return reader, transport


def _python_path() -> str:
    """Where workers find the function's module: the project, tests/, and the caller's path."""
    tests_dir = Path(__file__).resolve().parents[1]
    prefixes = {os.path.realpath(prefix) for prefix in (sys.prefix, sys.base_prefix)}
    entries = [str(tests_dir.parent), str(tests_dir)]
    for entry in sys.path:
        path = os.path.realpath(entry or os.getcwd())
        if os.path.isdir(path) and not any(path.startswith(prefix) for prefix in prefixes):
            entries.append(path)
    existing = os.environ.get("PYTHONPATH")
    if existing:
        entries.append(existing)
    return os.pathsep.join(dict.fromkeys(entries))


class WorkerPool:
    """Hands out workers; keeps `warm` idle ones started so an input does not wait for one."""

    def __init__(self, *, warm: int, env: dict[str, str], python: str = sys.executable) -> None:
        self.warm = warm
        self.python = python
        self.env = env
        self.started = 0  # processes started, over the pool's life
        self._idle: list[Worker] = []
        self._workers: set[Worker] = set()
        self._background: set[asyncio.Task[None]] = set()
        self._spawning = 0
        self._closing = False

    async def start(self) -> None:
        """Start the warm workers (they finish importing in the background)."""
        for _ in range(self.warm):
            self._idle.append(await self._spawn())

    async def acquire(self) -> Worker:
        """An idle live worker, or a new one."""
        while self._idle:
            worker = self._idle.pop()
            if worker.alive:
                return worker
            self._workers.discard(worker)
        return await self._spawn()

    def release(self, worker: Worker) -> None:
        """Take back a worker whose input finished normally."""
        if worker.alive and not self._closing and len(self._idle) < self.warm:
            self._idle.append(worker)
        else:
            self._in_background(self._retire(worker))

    async def discard(self, worker: Worker) -> None:
        """Kill a worker that must not be reused, and start a replacement."""
        await worker.kill()
        self._workers.discard(worker)
        self._replenish()

    def pids(self) -> set[int]:
        """Process ids of all live workers, idle or busy."""
        return {worker.pid for worker in self._workers if worker.alive}

    async def close(self) -> None:
        """Stop every worker and wait until all are reaped."""
        self._closing = True
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        await asyncio.gather(*(worker.kill() for worker in list(self._workers)))
        self._workers.clear()
        self._idle.clear()

    async def _spawn(self) -> Worker:
        # Unbuffered, as in a Modal container: a line printed just before a crash is logged.
        identity = container_token(self.env.get("MODAL_TOKEN_ID", ""), self.started)
        env = {
            **os.environ,
            **self.env,
            "MODAL_TOKEN_ID": identity,
            "PYTHONPATH": _python_path(),
            "PYTHONUNBUFFERED": "1",
        }
        # The worker's own stdout carries the protocol: the function's stdout gets a pipe of
        # its own. Both output pipes are ours, not the subprocess transport's, so that a process
        # holding one open cannot delay `process.wait()`.
        out_read, out_write = os.pipe()
        err_read, err_write = os.pipe()
        try:
            process = await asyncio.create_subprocess_exec(
                self.python,
                str(WORKER_MAIN),
                str(out_write),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=err_write,
                env=env,
                pass_fds=(out_write,),
                start_new_session=True,
                # A container's working directory is its own, not the client's project.
                cwd=self.env.get("TMPDIR"),
            )
        except BaseException:
            os.close(out_read)
            os.close(err_read)
            raise
        finally:
            os.close(out_write)
            os.close(err_write)
        worker = Worker(process, await _read_pipe(out_read), await _read_pipe(err_read), identity)
        self._workers.add(worker)
        self.started += 1
        return worker

    def _replenish(self) -> None:
        if not self._closing and len(self._idle) + self._spawning < self.warm:
            self._spawning += 1
            self._in_background(self._add_idle())

    async def _add_idle(self) -> None:
        try:
            worker = await self._spawn()
        finally:
            self._spawning -= 1
        if self._closing:
            await worker.kill()
            self._workers.discard(worker)
        else:
            self._idle.append(worker)

    async def _retire(self, worker: Worker) -> None:
        await worker.close()
        self._workers.discard(worker)

    def _in_background(self, coroutine: Any) -> None:
        task = asyncio.ensure_future(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
