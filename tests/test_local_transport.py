"""The local backend's process pool: reuse, limits, timeouts, cancellation, crashes."""

from __future__ import annotations

import os
import queue
import tempfile
import time
from pathlib import Path

import pytest
import sample_tasks

from redun_modal_executor.config import CallOptions
from redun_modal_executor.errors import CallCancelledError, CallTimeoutError, WorkerDiedError
from redun_modal_executor.payload import CallKind, Success, decode_result, encode_call
from redun_modal_executor.transport.local import LocalTransport


class Pool:
    """A LocalTransport whose outcomes land in a queue."""

    def __init__(self, max_workers: int) -> None:
        self.outcomes: queue.Queue = queue.Queue()
        self.transport = LocalTransport(
            lambda key, outcome: self.outcomes.put((key, outcome)),
            max_workers=max_workers,
            # Made only by spawn_detached, which these tests do not use.
            calls_dir=Path(tempfile.gettempdir()) / "redun-modal-unused-calls",
        )

    def spawn(self, key, task, *args, timeout=None, kind=CallKind.TASK):
        payload = encode_call(task, args, {}, kind)
        self.transport.spawn(key, f"Task {task.fullname}", payload, CallOptions(timeout=timeout))

    def results(self, count: int, within: float = 30) -> dict:
        found = {}
        for _ in range(count):
            key, outcome = self.outcomes.get(timeout=within)
            found[key] = decode_result(outcome) if isinstance(outcome, bytes) else outcome
        return found


@pytest.fixture
def pool():
    pools = []

    def make(max_workers: int = 2) -> Pool:
        pools.append(Pool(max_workers))
        return pools[-1]

    yield make
    for made in pools:
        made.transport.stop()


def test_warm_worker_is_reused(pool):
    one = pool(max_workers=1)
    pids = set()
    for i in range(3):
        one.spawn(str(i), sample_tasks.timed_sleep, 0)
        (result,) = one.results(1).values()
        pids.add(result.value[0])
    assert len(pids) == 1
    assert pids != {os.getpid()}


def test_concurrency_is_limited_to_max_workers(pool):
    two = pool(max_workers=2)
    for i in range(4):
        two.spawn(str(i), sample_tasks.timed_sleep, 0.5)
    spans = [result.value[1:] for result in two.results(4).values()]
    starts = sorted(start for start, _ in spans)
    most_at_once = max(sum(1 for s, e in spans if s <= t < e) for t in starts)
    assert most_at_once == 2


def test_timeout_kills_only_that_call(pool):
    two = pool(max_workers=2)
    began = time.monotonic()
    two.spawn("slow", sample_tasks.timed_sleep, 30, timeout=0.5)
    two.spawn("quick", sample_tasks.timed_sleep, 0.1)
    results = two.results(2)
    assert time.monotonic() - began < 15
    assert isinstance(results["quick"], Success)
    assert isinstance(results["slow"], CallTimeoutError)
    assert "Task timed_sleep: timed out after 0.5 s" in str(results["slow"])


def test_timeout_kills_the_task_child_processes(pool, tmp_path):
    one = pool(max_workers=1)
    pid_file = tmp_path / "child.pid"
    one.spawn("s", sample_tasks.sleep_in_child, str(pid_file), timeout=1, kind=CallKind.SCRIPT)
    (outcome,) = one.results(1).values()
    assert isinstance(outcome, CallTimeoutError)
    child = int(pid_file.read_text())
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    pytest.fail(f"the script's child process {child} outlived the timeout")


def test_stop_cancels_everything_in_flight_and_can_restart(pool):
    two = pool(max_workers=2)
    for i in range(3):
        two.spawn(str(i), sample_tasks.timed_sleep, 30)
    time.sleep(0.5)
    began = time.monotonic()
    assert two.transport.stop() == 3
    assert time.monotonic() - began < 10
    outcomes = two.results(3)
    assert all(isinstance(o, CallCancelledError) for o in outcomes.values())
    assert sorted(str(o).rsplit(": ", 1)[1] for o in outcomes.values()) == [
        "cancelled before it ran",
        "cancelled mid-run",
        "cancelled mid-run",
    ]
    assert two.transport.stop() == 0

    two.spawn("again", sample_tasks.add, 1, 2)
    assert two.results(1)["again"] == Success(3)


def test_worker_that_dies_fails_its_call_and_is_replaced(pool):
    one = pool(max_workers=1)
    one.spawn("dies", sample_tasks.hard_exit)
    one.spawn("next", sample_tasks.add, 2, 2)
    results = one.results(2)
    assert isinstance(results["dies"], WorkerDiedError)
    assert "Task hard_exit: the worker process exited with status 9" in str(results["dies"])
    assert results["next"] == Success(4)


def test_worker_start_up_does_not_count_against_the_timeout(pool):
    # A fresh worker takes far longer than 0.3 s to import redun; Modal, too, starts the clock
    # when the container is up.
    one = pool(max_workers=1)
    one.spawn("first", sample_tasks.timed_sleep, 0.01, timeout=0.3)
    assert isinstance(one.results(1)["first"], Success)
