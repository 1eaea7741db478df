"""The local backend's pool: the generic worker in separate Python processes.

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
from collections import deque
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait

from redun_modal_executor.calls import Call
from redun_modal_executor.errors import CallCancelledError, CallTimeoutError, WorkerDiedError

WORKER_MODULE = "redun_modal_executor.backends.local.worker_main"
_STOP_GRACE_SECONDS = 2.0  # For an idle worker to exit.
_KILL_GRACE_SECONDS = 5.0  # For a stopped worker to exit on SIGTERM (a launch saves its db).


@dataclass
class _WorkItem:
    """A call on its way to a worker: its payload until sent, its deadline once sent."""

    call: Call
    payload: bytes
    deadline: float | None = None

    @property
    def timeout(self) -> float | None:
        return self.call.options.timeout

    @property
    def env(self) -> tuple[tuple[str, str], ...]:
        return self.call.options.env


class _Worker:
    """One worker process and the socket to it.

    A new worker first sends an empty message once its imports are done; its call is
    transmitted only then, so start-up does not count against the call's timeout. It is
    started with the ``env`` task option of its first call, and takes only calls with the
    same ``env`` (as on Modal, where each option set has containers of its own).
    """

    def __init__(self, base_env: dict[str, str], env: tuple[tuple[str, str], ...]) -> None:
        self.env = env
        ours, theirs = socket.socketpair()
        with theirs:
            self.process = subprocess.Popen(
                [sys.executable, "-m", WORKER_MODULE, str(theirs.fileno())],
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
                env={**base_env, **dict(env)},
                # Own process group: Ctrl-C reaches the scheduler, which cancels; and a
                # timeout kill takes the task's own child processes with it.
                start_new_session=True,
            )
        self.connection = Connection(ours.detach())
        self.ready = False
        self.item: _WorkItem | None = None

    def assign(self, item: _WorkItem) -> None:
        self.item = item
        if self.ready:
            self._transmit()

    def mark_ready(self) -> None:
        self.ready = True
        if self.item is not None:
            self._transmit()

    def _transmit(self) -> None:
        assert self.item is not None
        if self.item.timeout is not None:
            self.item.deadline = time.monotonic() + self.item.timeout
        self.connection.send_bytes(self.item.payload)
        self.item.payload = b""  # Sent: a big value need not stay in memory until the end.

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
            return f"was killed by signal {signal.Signals(-code).name}"
        return f"exited with status {code}"


def worker_environment(extra: tuple[tuple[str, str], ...] = ()) -> dict[str, str]:
    """Workers import task modules from the same places this process does; ``extra`` (a
    call's ``env`` option) is set on top."""
    env = dict(os.environ)
    paths = [path for path in sys.path if path]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env.update(extra)
    return env


class WorkerPool:
    """Runs calls in up to ``max_workers`` worker processes on this machine."""

    def __init__(self, max_workers: int) -> None:
        self.max_workers = max_workers
        self._lock = threading.Lock()
        self._incoming: deque[_WorkItem] = deque()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._wake_reader, self._wake_writer = socket.socketpair()
        self._wake_writer.setblocking(False)
        self._cancelled_at_stop = 0

    # Called from any thread.

    def submit(self, call: Call) -> None:
        """Queue ``call``; its payload is taken (encoded, if need be) on the caller's thread."""
        try:
            item = _WorkItem(call, call.take_payload())
        except Exception as error:  # The job's own problem (say, an unpicklable argument).
            call.finish(error)
            return
        with self._lock:
            self._incoming.append(item)
            if self._thread is None or not self._thread.is_alive():
                self._stopping = False
                self._thread = threading.Thread(
                    target=self._dispatch, name="redun-modal-local", daemon=True
                )
                self._thread.start()
        self._wake()

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
        queued: deque[_WorkItem] = deque()
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
                ready = wait([*busy, self._wake_reader], _next_deadline(busy))
                for connection in ready:
                    if connection is self._wake_reader:
                        self._wake_reader.recv(4096)
                    else:
                        _collect(busy.pop(connection), idle, busy)
                _expire(busy)
        finally:
            with self._lock:
                queued.extend(self._incoming)
                self._incoming.clear()
                self._cancelled_at_stop = len(queued) + len(busy)
            for item in queued:
                item.call.finish(CallCancelledError(f"{item.call.label}: cancelled before it ran"))
            for worker in busy.values():
                worker.kill()
                if worker.item is not None:
                    message = f"{worker.item.call.label}: cancelled mid-run"
                    worker.item.call.finish(CallCancelledError(message))
            for worker in idle:
                worker.close()

    def _assign(
        self,
        queued: deque[_WorkItem],
        idle: list[_Worker],
        busy: dict[Connection, _Worker],
        env: dict[str, str],
    ) -> None:
        while queued and (idle or len(busy) < self.max_workers):
            item = queued.popleft()
            worker = _take_idle(idle, item.env)
            if worker is None and len(idle) + len(busy) >= self.max_workers:
                # The idle workers have another env: stop one, so max_workers still holds.
                idle.pop(0).close()
            try:
                if worker is None:
                    worker = _Worker(env, item.env)
            except OSError as error:
                message = f"{item.call.label}: could not start a worker process: {error}"
                item.call.finish(WorkerDiedError(message))
                continue
            try:
                worker.assign(item)
            except OSError:
                # An idle worker that died in between never saw the call: run it elsewhere.
                worker.kill()
                queued.appendleft(item)
                continue
            busy[worker.connection] = worker


def _take_idle(idle: list[_Worker], env: tuple[tuple[str, str], ...]) -> _Worker | None:
    """The most recently idle worker started with ``env``, taken out of ``idle``."""
    for index in range(len(idle) - 1, -1, -1):
        if idle[index].env == env:
            return idle.pop(index)
    return None


def _collect(worker: _Worker, idle: list[_Worker], busy: dict[Connection, _Worker]) -> None:
    """Read what a busy worker sent: its ready signal, its result, or its end."""
    item = worker.item
    assert item is not None
    try:
        message = worker.connection.recv_bytes()
        if not worker.ready:
            worker.mark_ready()
            busy[worker.connection] = worker
            return
    except (EOFError, OSError):
        worker.connection.close()
        item.call.finish(
            WorkerDiedError(
                f"{item.call.label}: the worker process {worker.describe_exit()} before "
                "returning a result (out of memory, a crash in native code, or os._exit in "
                "the task)."
            )
        )
        return
    worker.item = None
    idle.append(worker)
    item.call.finish(message)


def _expire(busy: dict[Connection, _Worker]) -> None:
    """Stop the workers whose call ran past its timeout."""
    now = time.monotonic()
    for connection, worker in list(busy.items()):
        item = worker.item
        if item is not None and item.deadline is not None and item.deadline <= now:
            del busy[connection]
            worker.kill()
            item.call.finish(
                CallTimeoutError(
                    f"{item.call.label}: timed out after {item.timeout:g} s (the `timeout` task "
                    "option or executor setting); the worker was stopped."
                )
            )


def _next_deadline(busy: dict[Connection, _Worker]) -> float | None:
    deadlines = [w.item.deadline for w in busy.values() if w.item and w.item.deadline]
    if not deadlines:
        return None
    return max(0.0, min(deadlines) - time.monotonic())
