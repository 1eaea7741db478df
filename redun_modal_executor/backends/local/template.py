"""The local backend's worker template: one interpreter that imports once and forks workers.

The pool starts it with the first worker it needs, in the workers' environment and in a session
of its own: ``python -m redun_modal_executor.backends.local.worker_main --template <fd>``. It
is a fresh interpreter, not a fork of the scheduler, so nothing of the scheduler's reaches a
worker. It imports what a worker runs (``worker_main``: redun and this package), says it is
ready, and waits on its control socket, single-threaded. Each request there is a header with
a worker's socket end attached (SCM_RIGHTS), then the worker's ``env`` (JSON). The template
forks; the child starts a session of its own, drops the template's signal handling and control
socket, sets its ``env`` in ``os.environ``, and serves calls on that socket
(``worker_main.serve``) as a worker started from scratch would. The template answers
with the child's pid, reaps its children and reports each one's exit status. It exits when
the control socket closes; workers still running then carry on until their own socket closes.

``Template`` is the pool's side of it, used by the pool's dispatcher thread only.
"""

from __future__ import annotations

import gc
import json
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

WORKER_MODULE = "redun_modal_executor.backends.local.worker_main"
TEMPLATE_FLAG = "--template"
# What the template reports: kind, pid, and an exit status (negative: killed by that signal)
# or, for a fork that failed, its errno.
_REPORT = struct.Struct("=cii")
_READY, _STARTED, _FAILED, _EXITED = b"r", b"s", b"f", b"x"
# A request: its kind, and the length of the worker's env (JSON) that follows it.
_REQUEST = struct.Struct("=cI")
_FORK = b"w"
_END_GRACE_SECONDS = 2.0  # For the template to exit once its control socket closes.

# A call's ``env`` option: what its worker sets in ``os.environ`` before its first call.
WorkerEnv = tuple[tuple[str, str], ...]


def describe_exit(code: int) -> str:
    """An exit status as ``Popen.returncode`` gives it, in words."""
    if code < 0:
        return f"was killed by signal {signal.Signals(-code).name}"
    return f"exited with status {code}"


# ---------------------------------------------------------------------------------------------
# The pool's side.


@dataclass(eq=False)
class Child:
    """A worker the template was asked to fork, as far as the pool knows."""

    end: socket.socket | None  # The worker's socket end, until it is sent to the template.
    env: WorkerEnv
    pid: int | None = None
    code: int | None = None  # Its exit status, once the template has reaped it.
    failed: str | None = None  # Why it was never started.


class Template:
    """One template process: asks it for workers, and takes in what it reports."""

    def __init__(self, env: dict[str, str]) -> None:
        ours, theirs = socket.socketpair()
        with theirs:
            self.process = subprocess.Popen(
                [sys.executable, "-m", WORKER_MODULE, TEMPLATE_FLAG, str(theirs.fileno())],
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,  # Ctrl-C reaches the scheduler only.
            )
        self.control = ours
        self.ready = False
        self.ended = False
        self._unsent: deque[Child] = deque()  # Until the template is ready.
        self._unanswered: deque[Child] = deque()  # Sent; its pid comes next, in order.
        self._running: dict[int, Child] = {}
        self._received = b""

    @property
    def pid(self) -> int:
        return self.process.pid

    def fileno(self) -> int:
        return self.control.fileno()

    def fork(self, env: WorkerEnv) -> tuple[Child, socket.socket]:
        """Ask for a worker with ``env`` set; return it and the pool's end of its socket."""
        if self.ended:
            raise OSError(f"the worker template process (pid {self.pid}) has ended")
        ours, theirs = socket.socketpair()
        child = Child(theirs, env)
        if self.ready:
            self._send(child)
        else:
            self._unsent.append(child)
        return child, ours

    def withdraw(self, child: Child) -> bool:
        """Drop a request not yet sent (the template is still starting); False if it was."""
        if child.end is None or child not in self._unsent:
            return False
        self._unsent.remove(child)
        self._close_end(child, "withdrawn")
        return True

    def pump(self) -> None:
        """Take in what the template has reported so far, without waiting."""
        while not self.ended:
            try:
                data = self.control.recv(65536, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                self._end()
                return
            self._received += data
            whole = len(self._received) - len(self._received) % _REPORT.size
            for kind, pid, value in _REPORT.iter_unpack(self._received[:whole]):
                self._take(kind, pid, value)
            self._received = self._received[whole:]

    def wait_until(self, condition: Callable[[], bool], timeout: float) -> bool:
        """Take in reports until ``condition()`` holds, the template ends or time runs out."""
        deadline = time.monotonic() + timeout
        while True:
            self.pump()
            remaining = deadline - time.monotonic()
            if condition() or self.ended or remaining <= 0:
                return condition()
            select.select([self.control], [], [], remaining)

    def describe_end(self) -> str:
        try:
            code = self.process.wait(timeout=_END_GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            return "stopped answering"
        return describe_exit(code)

    def close(self) -> None:
        """End the template; its workers must have been closed or killed first."""
        if not self.ready:
            self.process.kill()  # Still importing, and nothing forked: no need to wait.
        self._end()
        try:
            self.process.wait(timeout=_END_GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def _take(self, kind: bytes, pid: int, value: int) -> None:
        if kind == _READY:
            self.ready = True
            while self._unsent and not self.ended:
                self._send(self._unsent.popleft())
        elif kind == _STARTED and self._unanswered:  # (None left once the template ended.)
            child = self._unanswered.popleft()
            child.pid = pid
            self._running[pid] = child
        elif kind == _FAILED and self._unanswered:
            self._unanswered.popleft().failed = f"fork failed: {os.strerror(value)}"
        elif kind == _EXITED and pid in self._running:
            self._running.pop(pid).code = value

    def _send(self, child: Child) -> None:
        assert child.end is not None
        env = json.dumps(child.env).encode()
        request = _REQUEST.pack(_FORK, len(env)) + env
        try:
            sent = socket.send_fds(self.control, [request], [child.end.fileno()])
            self.control.sendall(request[sent:])
        except OSError:
            self._close_end(child, f"the worker template process (pid {self.pid}) has ended")
            self._end()
            return
        self._unanswered.append(child)
        child.end.close()
        child.end = None

    def _end(self) -> None:
        if self.ended:
            return
        self.ended = True
        self.control.close()
        why = f"the worker template process (pid {self.pid}) ended before it started it"
        for child in (*self._unsent, *self._unanswered):
            if child.failed is None:
                child.failed = why
            self._close_end(child, why)
        self._unsent.clear()
        self._unanswered.clear()

    @staticmethod
    def _close_end(child: Child, why: str) -> None:
        if child.end is not None:
            child.end.close()  # The pool's end now reads EOF.
            child.end = None
        if child.failed is None:
            child.failed = why


# ---------------------------------------------------------------------------------------------
# The template process.


def _report(control: socket.socket, kind: bytes, pid: int = 0, value: int = 0) -> None:
    control.sendall(_REPORT.pack(kind, pid, value))


def _reap(control: socket.socket) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        _report(control, _EXITED, pid, os.waitstatus_to_exitcode(status))


def _receive_request(control: socket.socket) -> tuple[list[int], dict[str, str]] | None:
    """The next request: the fds attached (a worker's socket end) and the worker's env; None
    once the pool has gone."""
    head, fds, _, _ = socket.recv_fds(control, _REQUEST.size, 1)
    if not head:
        return None
    head += _receive_exactly(control, _REQUEST.size - len(head))
    _, length = _REQUEST.unpack(head)
    return fds, dict(json.loads(_receive_exactly(control, length)))


def _receive_exactly(control: socket.socket, size: int) -> bytes:
    """The next ``size`` bytes of a request."""
    data = b""
    while len(data) < size:
        chunk = control.recv(size - len(data))
        if not chunk:
            raise ConnectionResetError("the pool closed the control socket mid-request")
        data += chunk
    return data


def run_template(control_fd: int) -> int | None:
    """The template's loop, once ``worker_main`` is imported. Returns in each worker it forks,
    with the fd of the worker's socket; in the template once the pool has gone, with None."""
    control = socket.socket(fileno=control_fd)
    # What is loaded now stays out of the workers' garbage collections: they would otherwise
    # copy every page of it (copy-on-write) to look at it.
    gc.freeze()
    try:
        return _serve_requests(control)
    except (BrokenPipeError, ConnectionResetError):
        return None


def _serve_requests(control: socket.socket) -> int | None:
    wake_reader, wake_writer = os.pipe()
    os.set_blocking(wake_reader, False)
    os.set_blocking(wake_writer, False)
    signal.set_wakeup_fd(wake_writer)  # A SIGCHLD wakes the select below.
    signal.signal(signal.SIGCHLD, lambda signum, frame: None)
    _report(control, _READY)
    while True:
        readable, _, _ = select.select([control, wake_reader], [], [])
        if wake_reader in readable:
            while True:
                try:
                    os.read(wake_reader, 4096)
                except BlockingIOError:
                    break
            _reap(control)
        if control not in readable:
            continue
        request = _receive_request(control)
        if request is None:
            return None
        fds, env = request
        if not fds:
            continue
        worker_fd = fds[0]
        sys.stdout.flush()  # Nothing buffered here is written twice.
        sys.stderr.flush()
        try:
            pid = os.fork()
        except OSError as error:
            os.close(worker_fd)
            _report(control, _FAILED, 0, error.errno or 0)
            continue
        if pid == 0:
            # A worker: its own session and process group (Ctrl-C reaches the scheduler only,
            # and a kill reaches the task's own children), nothing of the template's.
            os.setsid()
            signal.set_wakeup_fd(-1)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            os.close(wake_reader)
            os.close(wake_writer)
            control.close()
            os.environ.update(env)
            return worker_fd
        os.close(worker_fd)
        _report(control, _STARTED, pid)
