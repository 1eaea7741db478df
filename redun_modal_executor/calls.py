"""``Call``: one job's call through a backend, as a handle with a small state machine; and
``Burst``, the calls submitted together.

::

    PENDING --spawned(call_id)--> RUNNING --finish(outcome)--> FINISHED
       \\_______________________finish(outcome)_______________/

The executor makes a ``Call`` per job (and per retry) and hands it to a backend; the backend
reports on the handle itself, from its own thread, and never calls the executor by key. The
outcome is the result envelope (bytes, or a file holding a big one) or the exception that kept
the call from producing one. A handle keeps its payload only until the backend takes it: to
send the call again, the backend asks the handle to encode it once more.
"""

from __future__ import annotations

import enum
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO

from redun_modal_executor.config import CallOptions

Outcome = bytes | BinaryIO | BaseException


@dataclass(frozen=True)
class CallAddress:
    """Where a call runs: the backend's call id and, for an input of a batch (one Modal
    call with many inputs), the input's index in it."""

    call_id: str
    index: int | None = None

    def __str__(self) -> str:
        return self.call_id if self.index is None else f"{self.call_id}:{self.index}"

    def words(self) -> str:
        """The address, for messages."""
        return self.call_id if self.index is None else f"{self.call_id} input {self.index}"

    @classmethod
    def parse(cls, text: str) -> CallAddress:
        """The address ``str()`` wrote."""
        call_id, colon, index = text.partition(":")
        return cls(call_id, int(index) if colon else None)


class CallState(enum.Enum):
    PENDING = "pending"  # Not spawned yet (queued, or being spawned).
    RUNNING = "running"  # Spawned: ``address`` says where it runs.
    FINISHED = "finished"  # ``outcome`` is set; nothing changes any more.


class Call:
    """One call: what to send (payload, options), and where it stands."""

    def __init__(
        self,
        label: str,
        options: CallOptions,
        encode: Callable[[], bytes],
        payload: bytes | None = None,
        reattach_to: CallAddress | None = None,
        on_spawned: Callable[[Call], None] | None = None,
        on_done: Callable[[Call], None] | None = None,
    ) -> None:
        self.label = label  # "Task <fullname>", for messages.
        self.options = options
        # A call an earlier client spawned for the same job: its result is awaited instead,
        # and a fresh call is made only if it cannot be had.
        self.reattach_to = reattach_to
        self.state = CallState.PENDING
        self.address: CallAddress | None = None
        self.outcome: Outcome | None = None
        self._encode = encode
        self._payload = payload
        self._on_spawned = on_spawned
        self._on_done = on_done
        self._lock = threading.Lock()

    def take_held(self) -> bytes | None:
        """The payload given with the call, once (None after, or if none was given)."""
        with self._lock:
            payload, self._payload = self._payload, None
        return payload

    def encode(self) -> bytes:
        """The payload encoded afresh. Blocking: backends call it off their I/O loop."""
        return self._encode()

    def take_payload(self) -> bytes:
        """The payload to send now: the one given (once), else encoded afresh."""
        payload = self.take_held()
        return payload if payload is not None else self.encode()

    def take_outcome(self) -> Outcome | None:
        """The outcome, handed over once: the handle keeps no reference to a big result."""
        with self._lock:
            outcome, self.outcome = self.outcome, None
        return outcome

    def spawned(self, address: CallAddress) -> None:
        """The backend spawned a new call for this handle."""
        if self._run(address) and self._on_spawned is not None:
            self._on_spawned(self)

    def reattached(self, address: CallAddress) -> None:
        """The backend awaits the call ``reattach_to`` names (nothing new was spawned)."""
        self._run(address)

    def _run(self, address: CallAddress) -> bool:
        with self._lock:
            if self.state is CallState.FINISHED:
                return False
            self.state, self.address = CallState.RUNNING, address
            return True

    def finish(self, outcome: Outcome) -> bool:
        """Set the outcome, once; False if the call had finished already (and an envelope
        file given is closed)."""
        with self._lock:
            finished_before = self.state is CallState.FINISHED
            if not finished_before:
                self.state, self.outcome, self._payload = CallState.FINISHED, outcome, None
        if finished_before:
            if not isinstance(outcome, (bytes, BaseException)):
                outcome.close()
            return False
        if self._on_done is not None:
            self._on_done(self)
        return True

    def __repr__(self) -> str:
        return f"<Call {self.label} {self.state.value} {self.address or ''}>".replace(" >", ">")


class Reports:
    """One thread that handles what backends report on calls, in order: decoding results and
    telling redun happen there, never on a backend's I/O loop."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def put(self, report: Callable[[], None]) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._handle, name="redun-modal-results", daemon=True
                )
                self._thread.start()
        self._queue.put(report)

    def drain(self) -> None:
        """Handle every report queued so far, then end the thread (a later put restarts it)."""
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            self._queue.put(None)
            thread.join()

    def _handle(self) -> None:
        while (report := self._queue.get()) is not None:
            report()


# Calls a burst holds at most before it is handed over: a request's worth (512 is Modal's
# most) would hold the first job of a big fan-out back while redun prepares the rest. While a
# fan-out goes on, each full burst doubles the next one's limit, up to MAX_BURST: fewer,
# fuller requests once the first jobs are out.
BURST_LIMIT = 128
MAX_BURST = 512


class Burst:
    """The calls the scheduler submits in one burst, handed to a backend together.

    redun queues each ready job's execution as an event of its own, so a fan-out is a run of
    events queued at once. The first call held queues one more event behind them, which
    hands the burst over (``flush``); so does reaching the limit (``BURST_LIMIT``, growing
    to ``MAX_BURST`` while the fan-out lasts). No timer: a lone job goes out as soon as the
    events queued before it are handled.
    """

    def __init__(
        self,
        post: Callable[[Callable[[], None]], None],
        send: Callable[[list[Call]], None],
    ) -> None:
        self._post = post  # Queues an event on the scheduler's thread.
        self._send = send
        self._held: list[Call] = []
        self._limit = BURST_LIMIT
        self._lock = threading.Lock()

    def add(self, call: Call) -> None:
        with self._lock:
            self._held.append(call)
            first, full = len(self._held) == 1, len(self._held) >= self._limit
            if full:
                calls, self._held = self._held, []
                self._limit = min(2 * self._limit, MAX_BURST)
        if full:
            self._send(calls)
        elif first:
            self._post(self.flush)

    def flush(self) -> None:
        """Hand over the calls held (if any): the burst has ended."""
        with self._lock:
            calls, self._held = self._held, []
            self._limit = BURST_LIMIT
        if calls:
            self._send(calls)

    def drop(self) -> list[Call]:
        """The calls held, never to be handed over (the run stops)."""
        with self._lock:
            calls, self._held = self._held, []
        return calls
