"""The local backend's pool: the generic worker in separate Python processes.

It behaves like Modal where it matters for testing workflows: every worker is a process of
its own, with none of the scheduler's state, that gets bytes and returns bytes; warm workers
are reused across calls; a call that runs past its timeout (counted from when its worker was
ready, as Modal counts from container start) has its worker killed; and stopping cancels what
is in flight. Workers are forked from a template process that has done their imports once
(see ``template``).

One dispatcher thread owns the template and all workers. It waits on their sockets and on a
wake-up socket at once, so there is no thread per job or per worker.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait

from redun_modal_executor.backends.local.template import Child, Template, WorkerEnv, describe_exit
from redun_modal_executor.calls import Call
from redun_modal_executor.errors import CallCancelledError, CallTimeoutError, WorkerDiedError

_STOP_GRACE_SECONDS = 2.0  # For an idle worker to exit.
_KILL_GRACE_SECONDS = 5.0  # For a stopped worker to exit on SIGTERM (a launch saves its db).
_REPORT_SECONDS = 5.0  # For a ready template to report a fork or an exit.


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
    def env(self) -> WorkerEnv:
        return self.call.options.env


class _Worker:
    """One worker process, forked by the template, and the socket to it.

    A new worker first sends an empty message; its call is transmitted only then, so start-up
    (the template's included) does not count against the call's timeout. The template sets
    the ``env`` task option of its first call in it before that, and it takes only calls with
    the same ``env`` (as on Modal, where each option set has containers of its own).
    """

    def __init__(self, template: Template, env: WorkerEnv) -> None:
        self.template = template
        self.env = env
        self.child: Child
        self.child, ours = template.fork(env)
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
        if self._pid() is not None:
            self._signal_group(signal.SIGTERM)
            self._wait_exit(_KILL_GRACE_SECONDS)
            self._signal_group(signal.SIGKILL)  # Also the task's own children, if any linger.
        self.connection.close()
        self._wait_exit(_REPORT_SECONDS)

    def abandon(self) -> None:
        """Kill the worker of a template that has ended, without waiting: nothing reaps it
        for us now, and nothing would tell how it ended."""
        self._signal_group(signal.SIGKILL)
        self.connection.close()

    def close(self) -> None:
        """Ask an idle worker to exit (EOF on its socket); kill it if it lingers."""
        self.connection.close()
        if not self._wait_exit(_STOP_GRACE_SECONDS):
            self.kill()

    def death(self, label: str) -> WorkerDiedError:
        """What to tell of a worker whose socket closed before it returned a result."""
        self._wait_exit(_REPORT_SECONDS)
        if self.child.code is not None:
            return WorkerDiedError(
                f"{label}: the worker process {describe_exit(self.child.code)} before "
                "returning a result (out of memory, a crash in native code, or os._exit in "
                "the task)."
            )
        if self.child.failed is not None:
            return WorkerDiedError(
                f"{label}: could not start a worker process: {self.child.failed}."
            )
        if self.template.ended:
            return WorkerDiedError(
                f"{label}: the worker process ended before returning a result: its template "
                f"process (pid {self.template.pid}) {self.template.describe_end()}."
            )
        return WorkerDiedError(
            f"{label}: the worker process ended before returning a result (its template "
            "process did not report how)."
        )

    def _pid(self) -> int | None:
        """The worker's pid, once the template has answered; None if it never will."""
        if self.template.withdraw(self.child):
            return None  # The template is still starting: the worker never will.
        self.template.wait_until(
            lambda: self.child.pid is not None or self.child.failed is not None, _REPORT_SECONDS
        )
        return self.child.pid

    def _wait_exit(self, timeout: float) -> bool:
        child = self.child
        if child.pid is None and child.failed is not None:
            return True  # Never started.
        return self.template.wait_until(lambda: child.code is not None, timeout)

    def _signal_group(self, signum: int) -> None:
        if self.child.pid is None or self.child.code is not None:
            return  # Never started, or reaped: the pid may be another process's by now.
        try:
            os.killpg(self.child.pid, signum)
        except ProcessLookupError:
            pass


def worker_environment(extra: WorkerEnv = ()) -> dict[str, str]:
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
        self._template: Template | None = None  # The dispatcher thread's.

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
                template = self._template
                if template is not None and template.ended:
                    self._template = None
                    _template_ended(template, queued, idle, busy)
                    continue  # Its calls that had not begun go to a new one.
                waiting: list = [*busy, self._wake_reader]
                if template is not None:
                    waiting.append(template)
                ready = wait(waiting, _next_deadline(busy))
                for connection in ready:
                    if connection is self._wake_reader:
                        self._wake_reader.recv(4096)
                    elif connection is template:
                        template.pump()
                    elif connection in busy:
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
                worker.connection.close()  # All of them exit at once.
            for worker in idle:
                worker.close()
            if self._template is not None:
                self._template.close()
                self._template = None

    def _assign(
        self,
        queued: deque[_WorkItem],
        idle: list[_Worker],
        busy: dict[Connection, _Worker],
        env: dict[str, str],
    ) -> None:
        while queued and (idle or len(busy) < self.max_workers):
            if self._template is not None and self._template.ended:
                return  # The dispatcher deals with its workers first.
            worker = _take_idle(idle, queued[0].env)
            if worker is None and len(idle) + len(busy) >= self.max_workers:
                # The idle workers have another env: stop one, so max_workers still holds
                # (and look again: the template may have ended meanwhile).
                idle.pop(0).close()
                continue
            item = queued.popleft()
            try:
                if worker is None:
                    worker = _Worker(self._template_for(env), item.env)
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

    def _template_for(self, env: dict[str, str]) -> Template:
        """The template to fork a new worker from: started with the first worker needed."""
        if self._template is None:
            self._template = Template(env)
        return self._template


def _template_ended(
    template: Template,
    queued: deque[_WorkItem],
    idle: list[_Worker],
    busy: dict[Connection, _Worker],
) -> None:
    """Kill every worker of a template that has ended and fail their calls; calls that no
    worker of a template that was ready had begun go back to the queue."""
    how = template.describe_end()
    for worker in idle:
        worker.abandon()
    idle.clear()
    for worker in busy.values():
        worker.abandon()
        item = worker.item
        assert item is not None
        if template.ready and not worker.ready:
            queued.appendleft(item)  # Its payload was never sent.
        elif worker.ready:
            item.call.finish(
                WorkerDiedError(
                    f"{item.call.label}: the worker process was stopped before returning a "
                    f"result: its template process (pid {template.pid}) {how}."
                )
            )
        else:
            item.call.finish(
                WorkerDiedError(
                    f"{item.call.label}: could not start a worker process: the worker "
                    f"template process (pid {template.pid}) {how} before it was ready."
                )
            )
    busy.clear()


def _take_idle(idle: list[_Worker], env: WorkerEnv) -> _Worker | None:
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
        item.call.finish(worker.death(item.call.label))
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
