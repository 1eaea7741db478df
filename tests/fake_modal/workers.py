"""Worker processes that run inputs, one at a time each, and a small pool of warm ones.

A worker that is killed (cancellation, timeout, injected fault) or dies is never reused;
the pool starts a fresh one in the background to keep `warm` idle workers ready.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pickle
import struct
import sys
from pathlib import Path
from typing import Any

WORKER_MAIN = Path(__file__).with_name("_worker_main.py")
_HEADER = struct.Struct(">Q")
_CLOSE_GRACE = 2.0


class WorkerDied(Exception):
    """The worker process ended while it had an input."""

    def __init__(self, returncode: int | None) -> None:
        super().__init__(f"worker exited with code {returncode}")
        self.returncode = returncode


class Worker:
    """One worker process, talking the length-prefixed pickle protocol of _worker_main."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.used = False

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
        body = pickle.dumps(request, protocol=pickle.HIGHEST_PROTOCOL)
        try:
            stdin.write(_HEADER.pack(len(body)) + body)
            await stdin.drain()
            (length,) = _HEADER.unpack(await stdout.readexactly(_HEADER.size))
            reply: dict[str, Any] = pickle.loads(await stdout.readexactly(length))
        except (asyncio.IncompleteReadError, ConnectionError):
            raise WorkerDied(await self.process.wait()) from None
        return reply

    async def kill(self) -> None:
        """SIGKILL the process and reap it."""
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
        await self.process.wait()

    async def close(self) -> None:
        """Let the process exit on end of input; kill it if it lingers."""
        if self.process.stdin is not None and not self.process.stdin.is_closing():
            self.process.stdin.close()
        try:
            await asyncio.wait_for(self.process.wait(), _CLOSE_GRACE)
        except asyncio.TimeoutError:
            await self.kill()


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
        env = {**os.environ, **self.env, "PYTHONPATH": _python_path()}
        process = await asyncio.create_subprocess_exec(
            self.python,
            str(WORKER_MAIN),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            env=env,
        )
        worker = Worker(process)
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
