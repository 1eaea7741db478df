"""The local backend: the generic worker in a pool of separate Python processes.

It behaves like Modal where it matters for testing workflows: every worker is a fresh
interpreter that gets bytes and returns bytes, warm workers are reused across calls, a call
that runs past its timeout (counted from when its worker was ready, as Modal counts from
container start) has its worker killed, and stopping cancels what is in flight.

One dispatcher thread owns all workers. It waits on their sockets and on a wake-up socket at
once, so there is no thread per job or per worker.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from pathlib import Path

from redun_modal_executor.config import CallOptions
from redun_modal_executor.errors import CallCancelledError, CallTimeoutError, WorkerDiedError
from redun_modal_executor.transport import OnDone, Transport

_WORKER_MODULE = "redun_modal_executor.transport.local_worker"
_STOP_GRACE_SECONDS = 2.0  # For an idle worker to exit.
_KILL_GRACE_SECONDS = 5.0  # For a stopped worker to exit on SIGTERM (a launch saves its db).
# Files of a detached call, in its directory.
DETACHED_PAYLOAD = "payload"
DETACHED_OUTPUT = "output.log"
DETACHED_PID = "pid"
DETACHED_RESULT = "result"


@dataclass
class _Call:
    key: str
    label: str
    payload: bytes
    timeout: float | None
    deadline: float | None = None


class _Worker:
    """One worker process and the socket to it.

    A new worker first sends an empty message once its imports are done; its call is
    transmitted only then, so start-up does not count against the call's timeout.
    """

    def __init__(self, env: dict[str, str]) -> None:
        ours, theirs = socket.socketpair()
        with theirs:
            self.process = subprocess.Popen(
                [sys.executable, "-m", _WORKER_MODULE, str(theirs.fileno())],
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
                env=env,
                # Own process group: Ctrl-C reaches the scheduler, which cancels; and a
                # timeout kill takes the task's own child processes with it.
                start_new_session=True,
            )
        self.connection = Connection(ours.detach())
        self.ready = False
        self.call: _Call | None = None

    def assign(self, call: _Call) -> None:
        self.call = call
        if self.ready:
            self._transmit()

    def mark_ready(self) -> None:
        self.ready = True
        if self.call is not None:
            self._transmit()

    def _transmit(self) -> None:
        assert self.call is not None
        if self.call.timeout is not None:
            self.call.deadline = time.monotonic() + self.call.timeout
        self.connection.send_bytes(self.call.payload)

    def kill(self) -> None:
        """Stop the worker and whatever its task started: SIGTERM first, as Modal stops a
        container, so a launched scheduler can save its database; SIGKILL after a grace."""
        self._signal_group(signal.SIGTERM)
        try:
            self.process.wait(timeout=_KILL_GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            pass
        self._signal_group(signal.SIGKILL)  # Also the task's own children, if any linger.
        self.connection.close()
        self.process.wait()

    def _signal_group(self, signum: int) -> None:
        try:
            os.killpg(self.process.pid, signum)
        except ProcessLookupError:
            pass

    def close(self) -> None:
        """Ask an idle worker to exit (EOF on its socket); kill it if it lingers."""
        self.connection.close()
        try:
            self.process.wait(timeout=_STOP_GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            self.kill()

    def describe_exit(self) -> str:
        code = self.process.wait()
        if code < 0:
            return f"killed by signal {signal.Signals(-code).name}"
        return f"exited with status {code}"


def worker_environment() -> dict[str, str]:
    """Workers import task modules from the same places this process does."""
    env = dict(os.environ)
    paths = [path for path in sys.path if path]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    return env


class LocalTransport(Transport):
    """Runs calls in up to ``max_workers`` worker processes on this machine."""

    def __init__(self, on_done: OnDone, max_workers: int, calls_dir: Path) -> None:
        super().__init__(on_done)
        self.max_workers = max_workers
        self.calls_dir = calls_dir
        self._lock = threading.Lock()
        self._incoming: deque[_Call] = deque()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._wake_reader, self._wake_writer = socket.socketpair()
        self._wake_writer.setblocking(False)
        self._cancelled_at_stop = 0

    # Called from any thread.

    def spawn(
        self,
        key: str,
        label: str,
        payload: bytes,
        options: CallOptions,
        reattach_to: str | None = None,
    ) -> None:
        with self._lock:
            self._incoming.append(_Call(key, label, payload, options.timeout))
            if self._thread is None or not self._thread.is_alive():
                self._stopping = False
                self._thread = threading.Thread(
                    target=self._dispatch, name="redun-modal-local", daemon=True
                )
                self._thread.start()
        self._wake()

    def spawn_detached(self, label: str, payload: bytes, options: CallOptions) -> str:
        """A worker process of its own, in its own session, that outlives this one; its
        output, pid and result envelope are files in ``calls_dir/<call id>``."""
        call_id = "lc-" + uuid.uuid4().hex[:24]
        call_dir = self.calls_dir / call_id
        call_dir.mkdir(parents=True)
        (call_dir / DETACHED_PAYLOAD).write_bytes(payload)
        with (call_dir / DETACHED_OUTPUT).open("wb") as output:
            subprocess.Popen(
                [sys.executable, "-m", _WORKER_MODULE, "--detached", str(call_dir)],
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                env=worker_environment(),
                start_new_session=True,
            )
        return call_id

    def stop(self) -> int:
        with self._lock:
            thread, self._stopping = self._thread, True
        if thread is None:
            return 0
        self._wake()
        thread.join()
        with self._lock:
            self._thread = None
            return self._cancelled_at_stop

    def _wake(self) -> None:
        try:
            self._wake_writer.send(b"\0")
        except BlockingIOError:
            pass  # Already awake: the buffer is full of wake-ups.

    # The dispatcher thread.

    def _dispatch(self) -> None:
        env = worker_environment()
        queued: deque[_Call] = deque()
        idle: list[_Worker] = []
        busy: dict[Connection, _Worker] = {}
        try:
            while True:
                with self._lock:
                    queued.extend(self._incoming)
                    self._incoming.clear()
                    if self._stopping:
                        break
                self._assign(queued, idle, busy, env)
                ready = wait([*busy, self._wake_reader], self._next_deadline(busy))
                for connection in ready:
                    if connection is self._wake_reader:
                        self._wake_reader.recv(4096)
                    else:
                        self._collect(busy.pop(connection), idle, busy)
                self._expire(busy)
        finally:
            with self._lock:
                queued.extend(self._incoming)
                self._incoming.clear()
                self._cancelled_at_stop = len(queued) + len(busy)
            for call in queued:
                self._on_done(
                    call.key, CallCancelledError(f"{call.label}: cancelled before it ran")
                )
            for worker in busy.values():
                worker.kill()
                if worker.call is not None:
                    message = f"{worker.call.label}: cancelled mid-run"
                    self._on_done(worker.call.key, CallCancelledError(message))
            for worker in idle:
                worker.close()

    def _assign(
        self,
        queued: deque[_Call],
        idle: list[_Worker],
        busy: dict[Connection, _Worker],
        env: dict[str, str],
    ) -> None:
        while queued and (idle or len(busy) < self.max_workers):
            call = queued.popleft()
            try:
                worker = idle.pop() if idle else _Worker(env)
            except OSError as error:
                message = f"{call.label}: could not start a worker process: {error}"
                self._on_done(call.key, WorkerDiedError(message))
                continue
            try:
                worker.assign(call)
            except OSError:
                # An idle worker that died in between never saw the call: run it elsewhere.
                worker.kill()
                queued.appendleft(call)
                continue
            busy[worker.connection] = worker

    def _collect(
        self, worker: _Worker, idle: list[_Worker], busy: dict[Connection, _Worker]
    ) -> None:
        call = worker.call
        assert call is not None
        try:
            message = worker.connection.recv_bytes()
            if not worker.ready:
                worker.mark_ready()
                busy[worker.connection] = worker
                return
        except (EOFError, OSError):
            worker.connection.close()
            self._on_done(
                call.key,
                WorkerDiedError(
                    f"{call.label}: the worker process {worker.describe_exit()} before returning "
                    "a result (out of memory, a crash in native code, or os._exit in the task)."
                ),
            )
            return
        worker.call = None
        idle.append(worker)
        self._on_done(call.key, message)

    def _expire(self, busy: dict[Connection, _Worker]) -> None:
        now = time.monotonic()
        for connection, worker in list(busy.items()):
            call = worker.call
            if call is not None and call.deadline is not None and call.deadline <= now:
                del busy[connection]
                worker.kill()
                self._on_done(
                    call.key,
                    CallTimeoutError(
                        f"{call.label}: timed out after {call.timeout:g} s (the `timeout` task "
                        "option or executor setting); the worker was stopped."
                    ),
                )

    @staticmethod
    def _next_deadline(busy: dict[Connection, _Worker]) -> float | None:
        deadlines = [w.call.deadline for w in busy.values() if w.call and w.call.deadline]
        if not deadlines:
            return None
        return max(0.0, min(deadlines) - time.monotonic())
