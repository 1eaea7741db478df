"""The local backend's process pool: reuse, limits, timeouts, cancellation, crashes, and the
template process that workers are forked from."""

from __future__ import annotations

import os
import queue
import signal
import threading
import time
from pathlib import Path

import pytest
import sample_tasks

from redun_modal_executor.backends.local.pool import WorkerPool
from redun_modal_executor.backends.local.template import TEMPLATE_FLAG, WORKER_MODULE
from redun_modal_executor.calls import Call, CallState
from redun_modal_executor.config import CallOptions
from redun_modal_executor.errors import (
    CallCancelledError,
    CallTimeoutError,
    SerializationError,
    WorkerDiedError,
)
from redun_modal_executor.payload import CallKind, Success, decode_result, encode_call


class Pool:
    """A WorkerPool whose finished calls land in a queue, by name."""

    def __init__(self, max_workers: int) -> None:
        self.finished: queue.Queue[tuple[str, Call]] = queue.Queue()
        self.pool = WorkerPool(max_workers)

    def spawn(self, name, task, *args, timeout=None, kind=CallKind.TASK, env=()) -> Call:
        def encode() -> bytes:
            return encode_call(task, args, {}, kind)

        call = Call(
            f"Task {task.fullname}",
            CallOptions(timeout=timeout, env=env),
            encode,
            on_done=lambda call: self.finished.put((name, call)),
        )
        self.pool.submit(call)
        return call

    def results(self, count: int, within: float = 30) -> dict:
        found = {}
        for _ in range(count):
            name, call = self.finished.get(timeout=within)
            assert call.state is CallState.FINISHED
            outcome = call.outcome
            found[name] = decode_result(outcome) if isinstance(outcome, bytes) else outcome
        return found


@pytest.fixture
def pool():
    pools = []

    def make(max_workers: int = 2) -> Pool:
        pools.append(Pool(max_workers))
        return pools[-1]

    yield make
    for made in pools:
        made.pool.stop()


def wait_for(condition, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail("condition not met in time")
        time.sleep(0.02)


TEMPLATE_COMMAND = f"{WORKER_MODULE}\0{TEMPLATE_FLAG}\0".encode()  # In /proc/<pid>/cmdline.


def parent_of(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[1])  # After the name: state, then ppid.


def alive(pid: int) -> bool:
    """Running, as far as /proc tells (a zombie is not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def our_templates() -> list[int]:
    """Template processes started by this process."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes()
            if TEMPLATE_COMMAND in cmdline and parent_of(int(proc.name)) == os.getpid():
                found.append(int(proc.name))
        except (OSError, ValueError):
            continue
    return found


def sitecustomize(tmp_path: Path, monkeypatch, source: str) -> None:
    """Python processes started from now on (the template, not its forks) run ``source``."""
    directory = tmp_path / "site"
    directory.mkdir()
    (directory / "sitecustomize.py").write_text(source)
    monkeypatch.setenv("PYTHONPATH", str(directory))


def test_warm_worker_is_reused(pool):
    one = pool(max_workers=1)
    pids = set()
    for i in range(3):
        one.spawn(str(i), sample_tasks.timed_sleep, 0)
        (result,) = one.results(1).values()
        pids.add(result.value[0])
    assert len(pids) == 1
    assert pids != {os.getpid()}


def test_env_is_set_in_workers_kept_for_that_env(pool, monkeypatch):
    monkeypatch.delenv("MODE", raising=False)
    one = pool(max_workers=1)
    seen = []
    for env in [(("MODE", "a"),), (("MODE", "a"),), (("MODE", "b"),), ()]:
        one.spawn("x", sample_tasks.env_value, "MODE", env=env)
        (result,) = one.results(1).values()
        seen.append(result.value)
    assert [value for _, _, value in seen] == ["a", "a", "b", None]
    pids = [pid for pid, _, _ in seen]
    # The same env reuses its warm worker; another env gets a worker of its own, and with
    # max_workers = 1 the idle one of the other env is stopped to make room.
    assert pids[0] == pids[1] and len(set(pids[1:])) == 3
    # All forked from one template, which never takes a call's env: the last worker, forked
    # after those of "a" and "b", has neither.
    (template,) = {parent for _, parent, _ in seen}
    assert template != os.getpid()


def test_calls_of_two_envs_at_once_each_run_in_a_worker_of_their_env(pool):
    two = pool(max_workers=2)
    for i in range(8):
        mode = "ab"[i % 2]
        two.spawn(f"{mode}{i}", sample_tasks.env_value, "MODE", env=(("MODE", mode),))
    envs_by_worker: dict[int, set[str]] = {}
    for name, result in two.results(8).items():
        pid, _, value = result.value
        assert value == name[0]
        envs_by_worker.setdefault(pid, set()).add(value)
    assert all(len(envs) == 1 for envs in envs_by_worker.values())  # None ran both.


def test_a_big_env_reaches_its_worker_whole(pool):
    value = "é" * 100_000 + ' "quoted", spaced\\'  # Several socket reads' worth.
    one = pool(max_workers=1)
    one.spawn("big", sample_tasks.env_value, "BIG", env=(("BIG", value), ("SMALL", "1")))
    _, _, seen = one.results(1)["big"].value
    assert seen == value


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

    def gone() -> bool:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            return True
        return False

    wait_for(gone, timeout=5)


def test_stop_cancels_everything_in_flight_and_can_restart(pool, tmp_path):
    two = pool(max_workers=2)
    markers = [tmp_path / f"started-{i}" for i in range(3)]
    for i, marker in enumerate(markers):
        two.spawn(str(i), sample_tasks.mark_then_sleep, str(marker), 30)
    wait_for(lambda: sum(marker.exists() for marker in markers) == 2)  # Two run, one waits.
    began = time.monotonic()
    assert two.pool.stop() == 3
    assert time.monotonic() - began < 10
    outcomes = two.results(3)
    assert all(isinstance(o, CallCancelledError) for o in outcomes.values())
    assert sorted(str(o).rsplit(": ", 1)[1] for o in outcomes.values()) == [
        "cancelled before it ran",
        "cancelled mid-run",
        "cancelled mid-run",
    ]
    assert not markers[2].exists()
    assert two.pool.stop() == 0

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


def test_a_payload_that_cannot_be_encoded_fails_its_call_at_once(pool):
    one = pool(max_workers=1)
    one.spawn("bad", sample_tasks.add, threading.Lock(), 1)
    (outcome,) = one.results(1, within=5).values()
    assert isinstance(outcome, SerializationError)
    assert "Task add: argument 0 (lock) cannot be pickled" in str(outcome)


def test_worker_start_up_does_not_count_against_the_timeout(pool, tmp_path, monkeypatch):
    # Modal, too, starts the clock when the container is up. The first worker starts slower
    # than the timeout here, whatever the machine: the template it is forked from sleeps in
    # its sitecustomize first, and the call is assigned to the worker before that.
    startup = 1.5
    sitecustomize(tmp_path, monkeypatch, f"import time\ntime.sleep({startup})\n")
    one = pool(max_workers=1)
    began = time.monotonic()
    one.spawn("first", sample_tasks.timed_sleep, 0.01, timeout=0.5)
    result = one.results(1)["first"]
    assert isinstance(result, Success), result
    assert time.monotonic() - began > startup  # The start-up did take longer than the timeout.


@pytest.mark.parametrize(
    ("task", "how"),
    [
        (sample_tasks.hard_exit, "exited with status 9"),
        (sample_tasks.kill_self, "was killed by signal SIGKILL"),
    ],
)
def test_a_dead_worker_is_described_by_its_exit_status(pool, task, how):
    one = pool(max_workers=1)
    one.spawn("dies", task)
    (outcome,) = one.results(1).values()
    assert isinstance(outcome, WorkerDiedError)
    assert str(outcome) == (
        f"Task {task.fullname}: the worker process {how} before returning a result (out of "
        "memory, a crash in native code, or os._exit in the task)."
    )


def test_workers_are_forked_from_one_template_that_starts_once(pool, tmp_path, monkeypatch):
    started = tmp_path / "interpreters"
    record = f"import os\nopen({str(started)!r}, 'a').write(str(os.getpid()) + ' ')\n"
    sitecustomize(tmp_path, monkeypatch, record)
    two = pool(max_workers=2)
    two.spawn("a", sample_tasks.process_facts, 1.0)
    two.spawn("b", sample_tasks.process_facts, 1.0)
    facts = [result.value for result in two.results(2).values()]
    (template,) = {fact["ppid"] for fact in facts}
    assert started.read_text().split() == [str(template)]  # One interpreter start for both.
    assert parent_of(template) == os.getpid()  # Started by the scheduler ...
    assert TEMPLATE_COMMAND in Path(f"/proc/{template}/cmdline").read_bytes()
    assert os.getsid(template) == template  # ... in a session of its own.
    assert facts[0]["pid"] != facts[1]["pid"]
    for fact in facts:  # Each worker: its own session and process group.
        assert fact["pid"] == fact["pgid"] == fact["sid"]


def test_a_worker_has_none_of_the_schedulers_state(pool, monkeypatch):
    monkeypatch.setattr(sample_tasks, "SET_BY_SCHEDULER", "only here", raising=False)
    one = pool(max_workers=1)
    one.spawn("state", sample_tasks.scheduler_state, ["pytest", "_pytest", "redun"])
    result = one.results(1)["state"]
    # redun, which the template imports, is there; what this test process imported is not,
    # and sample_tasks was imported afresh.
    assert result == Success((None, ["redun"]))


def test_a_template_that_dies_fails_the_running_calls_and_is_replaced(pool, tmp_path):
    two = pool(max_workers=2)
    markers = [tmp_path / f"started-{i}" for i in range(2)]
    for i, marker in enumerate(markers):
        two.spawn(str(i), sample_tasks.mark_then_sleep, str(marker), 30)
    wait_for(lambda: all(marker.exists() for marker in markers))
    workers = [tuple(int(pid) for pid in marker.read_text().split()) for marker in markers]
    (template,) = {parent for _, parent in workers}
    os.kill(template, signal.SIGKILL)
    outcomes = two.results(2)
    for outcome in outcomes.values():
        assert isinstance(outcome, WorkerDiedError)
        assert str(outcome) == (
            "Task mark_then_sleep: the worker process was stopped before returning a result: "
            f"its template process (pid {template}) was killed by signal SIGKILL."
        )
    for pid, _ in workers:
        wait_for(lambda pid=pid: not alive(pid), timeout=5)

    two.spawn("later", sample_tasks.process_facts, 0)
    later = two.results(1)["later"].value
    assert later["ppid"] not in (template, os.getpid())  # A new template.


def test_a_template_that_cannot_start_fails_each_call(pool, tmp_path, monkeypatch):
    sitecustomize(tmp_path, monkeypatch, "import os\nos._exit(3)\n")
    one = pool(max_workers=1)
    one.spawn("first", sample_tasks.add, 1, 2)
    one.spawn("second", sample_tasks.add, 2, 2)
    for outcome in one.results(2).values():  # One template each: no retrying without end.
        assert isinstance(outcome, WorkerDiedError)
        assert "Task add: could not start a worker process: the worker template" in str(outcome)
        assert str(outcome).endswith("exited with status 3 before it was ready.")


def test_stop_while_the_template_starts_ends_it_at_once(pool, tmp_path, monkeypatch):
    sitecustomize(tmp_path, monkeypatch, "import time\ntime.sleep(60)\n")
    one = pool(max_workers=1)
    one.spawn("first", sample_tasks.add, 1, 2)
    wait_for(lambda: len(our_templates()) == 1)
    began = time.monotonic()
    assert one.pool.stop() == 1
    assert time.monotonic() - began < 10
    assert str(one.results(1)["first"]) == "Task add: cancelled mid-run"
    assert our_templates() == []
