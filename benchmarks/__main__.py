"""Run the benchmark scenarios and print medians and ratios against redun's LocalExecutor.

python -m benchmarks                 # full run (see docs/benchmarks.md)
python -m benchmarks --quick         # seconds; what CI runs to keep this working
python -m benchmarks --only 2,5      # some scenarios (1 to 7)

The Modal scenarios (2 to 6) run ModalExecutor with the real `modal` client against the fake
Modal control plane of tests/fake_modal, served from a child process (benchmarks/fake_server.py).
Scenario 7 runs each contender's small fan-out in a fresh process (benchmarks/fresh_run.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import fcntl
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from redun import Scheduler
from redun.config import Config

from benchmarks.fake_server import ROOT, TESTS, FakeServer
from benchmarks.memory import by_owner, status_kb
from benchmarks.workload import fan_out, holds, naps

if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))  # tests/fake_modal: the fake is test infrastructure

RAISED_STREAMS = 100_000  # HTTP/2 streams per connection when the fake's limit is raised
MB = 10**6


@dataclass(frozen=True)
class Contender:
    label: str
    executor_config: dict[str, str]


@dataclass(frozen=True)
class Sizes:
    """How big and how often: the defaults are the full run's (see docs/benchmarks.md)."""

    repeat: int = 5
    overhead_jobs: int = 400
    sleepers: int = 500
    sleep: float = 1.0
    latency: float = 0.1
    cached_jobs: int = 1000
    payload: int = 100 * MB
    tiny_payload: int = 1000
    big_repeat: int = 3
    in_flight: int = 10_000
    in_flight_repeat: int = 1
    traced_in_flight: int = 500
    in_flight_probe: int = 1000
    startup_jobs: int = 50
    startup_workers: int = 4
    container_tasks: int = 300
    container_sleep: float = 0.2
    containers: int = 8


FULL = Sizes()
QUICK = Sizes(  # Seconds in all: enough to show every scenario still runs.
    repeat=1,
    overhead_jobs=20,
    sleepers=4,
    sleep=0.2,
    cached_jobs=20,
    payload=1 * MB,
    big_repeat=1,
    in_flight=50,
    traced_in_flight=50,
    in_flight_probe=0,
    startup_jobs=10,
    container_tasks=16,
    container_sleep=0.05,
)


@dataclass
class Row:
    """One line of the summary table."""

    scenario: str
    metric: str
    ours: str
    reference: str = "-"
    ratio: str = "-"
    target: str = "-"
    met: bool | None = None


def ours_on_modal() -> Contender:
    return Contender("ModalExecutor, Modal backend (fake)", {"type": "modal"})


def local(mode: str, workers: int) -> Contender:
    return Contender(
        f"LocalExecutor, {mode} mode",
        {"type": "local", "mode": mode, "max_workers": str(workers)},
    )


def scheduler_for(contender: Contender, db_uri: str = "sqlite:///:memory:") -> Scheduler:
    scheduler = Scheduler(
        config=Config(
            {"backend": {"db_uri": db_uri}, "executors.default": contender.executor_config}
        )
    )
    scheduler.load()
    scheduler.logger.disabled = True
    return scheduler


def file_db(directory: Path) -> str:
    """A new sqlite file database (see docs/benchmarks.md: why not in-memory for Modal)."""
    return f"sqlite:///{directory / uuid.uuid4().hex}.db"


def median_of(repeat: int, measure: Callable[[], float]) -> float:
    return statistics.median(measure() for _ in range(repeat))


OURS_LOCALLY = "ModalExecutor, local backend"
PROCESS_MODE = "LocalExecutor, process mode"


def against_local_executor(
    workers: int, repeat: int, measure: Callable[[Contender], float]
) -> dict[str, float]:
    """The median of ``measure`` for ours on the local backend and for LocalExecutor's process
    and thread modes, by label. They take turns: a change in load slows every contender."""
    ours = Contender(
        OURS_LOCALLY, {"type": "modal", "backend": "local", "max_workers": str(workers)}
    )
    contenders = (ours, local("process", workers), local("thread", workers))
    walls: dict[str, list[float]] = {c.label: [] for c in contenders}
    for _ in range(repeat):
        for contender in contenders:
            walls[contender.label].append(measure(contender))
    return {label: statistics.median(values) for label, values in walls.items()}


class SubmitCounter:
    """Counts (and times) the jobs a scheduler hands to its default executor."""

    def __init__(self, scheduler: Scheduler) -> None:
        self.count = 0
        self.times: list[float] = []  # when each submit returned
        executor = scheduler.executors["default"]
        submit = executor.submit

        def counting_submit(job: Any) -> None:
            submit(job)
            self.count += 1
            self.times.append(time.perf_counter())

        executor.submit = counting_submit  # type: ignore[method-assign]


def machine() -> str:
    import modal
    import redun

    with open("/proc/meminfo") as meminfo:
        total_kb = int(meminfo.readline().split()[1])
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            cpu = next(line for line in cpuinfo if line.startswith("model name")).split(":")[1]
    except (OSError, StopIteration):
        pass
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    return (
        f"machine: {platform.machine()}, {cpu.strip()}, {os.cpu_count()} CPUs, "
        f"{total_kb / 2**20:.0f} GiB, Linux {platform.release()}; Python "
        f"{platform.python_version()}, redun {redun.__version__}, modal {modal.__version__}; "
        f"commit {commit or '?'}"
    )


# ---------------------------------------------------------------------------------------------
# 1. Overhead (local backend)


def time_fan_out(contender: Contender, jobs: int) -> float:
    scheduler = scheduler_for(contender)
    began = time.perf_counter()
    result = scheduler.run(fan_out(jobs, uuid.uuid4().hex))
    elapsed = time.perf_counter() - began
    assert result == sum(range(jobs)), result
    return elapsed


def overhead(sizes: Sizes, workers: int) -> list[Row]:
    jobs = sizes.overhead_jobs
    medians = against_local_executor(
        workers, sizes.repeat, lambda contender: time_fan_out(contender, jobs)
    )
    reference = medians[PROCESS_MODE]
    print(f"1. overhead: {jobs} trivial jobs + reduce, max_workers={workers} (interleaved)")
    print(f"   {'contender':36} {'wall s':>8} {'jobs/s':>8} {'vs process':>10}")
    for label, seconds in medians.items():
        print(f"   {label:36} {seconds:8.2f} {jobs / seconds:8.0f} {seconds / reference:9.2f}x")
    seconds = medians[OURS_LOCALLY]
    return [
        Row(
            "1. overhead (local backend)",
            f"wall s, {jobs} jobs",
            f"{seconds:.2f}",
            f"{reference:.2f} (process)",
            f"{seconds / reference:.2f}x",
            "<= 1.10x",
            seconds / reference <= 1.10,
        )
    ]


# ---------------------------------------------------------------------------------------------
# 2. Latency hiding and 3. RPC economy


def cpu_seconds() -> float:
    """User + system CPU time of this process (every thread) so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def fake_cpu_seconds(fake: FakeServer | None) -> float:
    if fake is None:
        return 0.0
    counts = fake.counts()
    return float(counts["cpu_s"] + counts["worker_cpu_s"])


def time_naps(
    contender: Contender, sizes: Sizes, tmp: Path, fake: FakeServer | None = None
) -> tuple[float, float, float]:
    """Wall time of one run, and the CPU time it took here and in the fake."""
    scheduler = scheduler_for(contender, file_db(tmp))
    cpu, fake_cpu = cpu_seconds(), fake_cpu_seconds(fake)
    began = time.perf_counter()
    result = scheduler.run(naps(sizes.sleepers, sizes.sleep, uuid.uuid4().hex))
    elapsed = time.perf_counter() - began
    assert result == sum(range(sizes.sleepers)), result
    return elapsed, cpu_seconds() - cpu, fake_cpu_seconds(fake) - fake_cpu


def latency_hiding(sizes: Sizes, tmp: Path) -> list[Row]:
    n = sizes.sleepers
    jobs = n + 2  # the workflow's own job, the sleepers, the reduce
    served = FakeServer(lanes=jobs)
    raised = FakeServer(lanes=jobs, max_streams=RAISED_STREAMS)
    thread = local("thread", n)
    runs: dict[str, list[tuple[float, float, float]]] = {"served": [], "raised": [], "thread": []}
    rpcs: list[Counter[str]] = []
    try:
        for fake in (served, raised):
            fake.set(latency=sizes.latency)
        for _ in range(sizes.repeat):
            for key, fake in (("served", served), ("raised", raised)):
                fake.point_client()
                fake.reset()
                runs[key].append(time_naps(ours_on_modal(), sizes, tmp, fake))
                if key == "served":
                    rpcs.append(Counter(fake.counts()["rpc"]))
            runs["thread"].append(time_naps(thread, sizes, tmp))
    finally:
        served.stop()
        raised.stop()
    medians = {
        key: [statistics.median(column) for column in zip(*values, strict=True)]
        for key, values in runs.items()
    }
    reference = medians["thread"][0]
    print(
        f"2. latency hiding: {n} jobs sleeping {sizes.sleep:g} s + workflow job + reduce, "
        f"{sizes.latency * 1000:.0f} ms added to every Modal RPC (sqlite file)"
    )
    print(f"   {'contender':62} {'wall s':>7} {'vs thread':>9} {'CPU s':>6} {'fake CPU s':>10}")
    labels = {
        "served": "ModalExecutor, fake as served (100 HTTP/2 streams/connection)",
        "raised": f"ModalExecutor, fake with {RAISED_STREAMS:,} streams/connection",
        "thread": f"LocalExecutor, thread mode, max_workers={n}",
    }
    for key, label in labels.items():
        wall, cpu, fake_cpu = medians[key]
        fake_text = f"{fake_cpu:10.2f}" if key != "thread" else f"{'-':>10}"
        print(f"   {label:62} {wall:7.2f} {wall / reference:8.2f}x {cpu:6.2f} {fake_text}")
    print("   (CPU s: this process, every thread; fake CPU s: the fake's process and its worker)")

    total = sum(rpcs, Counter())
    per_job = sum(total.values()) / (jobs * len(rpcs))
    print(f"\n3. RPC economy: Modal RPCs per job in scenario 2 ({jobs} jobs per run), on the fake")
    print(f"   {'RPC':24} {'per run':>10} {'per job':>9}   (run 1 / later runs)")
    for method, count in total.most_common():
        first, later = rpcs[0][method], [run[method] for run in rpcs[1:]]
        spread = f"{first} / {statistics.median(later):g}" if later else f"{first}"
        per_run, share = count / len(rpcs), count / (jobs * len(rpcs))
        print(f"   {method:24} {per_run:10.1f} {share:9.3f}   ({spread})")
    print(f"   {'total':24} {sum(total.values()) / len(rpcs):10.1f} {per_job:9.3f}")

    rows = []
    for key, name in (("served", "fake as served"), ("raised", "streams raised")):
        ratio = medians[key][0] / reference
        rows.append(
            Row(
                f"2. latency hiding ({name})",
                f"wall s, {n} x {sizes.sleep:g} s",
                f"{medians[key][0]:.2f}",
                f"{reference:.2f} (thread)",
                f"{ratio:.2f}x",
                "<= 1.10x",
                ratio <= 1.10,
            )
        )
    rows.append(
        Row(
            "3. RPC economy",
            "Modal RPCs per job",
            f"{per_job:.2f}",
            target="<= 0.10",
            met=per_job <= 0.10,
        )
    )
    return rows


# ---------------------------------------------------------------------------------------------
# 4. Cached rerun


def cached_rerun(sizes: Sizes, tmp: Path, workers: int) -> list[Row]:
    jobs = sizes.cached_jobs
    salt = uuid.uuid4().hex
    ours, reference = ours_on_modal(), local("process", workers)
    dbs = {ours.label: file_db(tmp), reference.label: file_db(tmp)}
    runs: dict[str, list[tuple[float, float]]] = {ours.label: [], reference.label: []}
    rpcs: list[int] = []
    submitted: Counter[str] = Counter()

    def run(contender: Contender) -> tuple[float, float]:
        scheduler = scheduler_for(contender, dbs[contender.label])
        counter = SubmitCounter(scheduler)
        cpu = cpu_seconds()
        began = time.perf_counter()
        result = scheduler.run(fan_out(jobs, salt))
        elapsed = time.perf_counter() - began
        assert result == sum(range(jobs)), result
        submitted[contender.label] += counter.count
        return elapsed, cpu_seconds() - cpu

    with FakeServer(lanes=workers) as fake:
        for contender in (ours, reference):
            run(contender)  # the first run fills the cache
        submitted.clear()
        # Twice the usual repetitions, in alternating order: a cached rerun is a few seconds
        # of sqlite reads and writes whose run-to-run spread (~10%) is wider than the target.
        for repetition in range(2 * sizes.repeat):
            order = (ours, reference) if repetition % 2 == 0 else (reference, ours)
            for contender in order:
                fake.reset()
                runs[contender.label].append(run(contender))
                if contender is ours:
                    rpcs.append(sum(fake.counts()["rpc"].values()))
    assert sum(submitted.values()) == 0, f"cached reruns ran jobs: {dict(submitted)}"
    medians = {
        label: [statistics.median(column) for column in zip(*values, strict=True)]
        for label, values in runs.items()
    }
    ratio = medians[ours.label][0] / medians[reference.label][0]
    print(
        f"4. cached rerun: scenario 1's workflow ({jobs} jobs) again, all cached "
        f"(sqlite file; {len(rpcs)} reruns each, alternating)"
    )
    print(f"   {'contender':36} {'wall s':>8} {'CPU s':>6} {'RPCs':>5} {'vs process':>10}")
    for label, (seconds, cpu) in medians.items():
        calls = f"{max(rpcs)}" if label == ours.label else "-"
        ratio_text = f"{seconds / medians[reference.label][0]:9.2f}x"
        print(f"   {label:36} {seconds:8.2f} {cpu:6.2f} {calls:>5} {ratio_text}")
    return [
        Row("4. cached rerun", "Modal RPCs", f"{max(rpcs)}", target="0", met=max(rpcs) == 0),
        Row(
            "4. cached rerun",
            f"wall s, {jobs} cached jobs",
            f"{medians[ours.label][0]:.3f}",
            f"{medians[reference.label][0]:.3f} (process)",
            f"{ratio:.2f}x",
            "<= 1.05x",
            ratio <= 1.05,
        ),
    ]


# ---------------------------------------------------------------------------------------------
# 5. Big values


def fresh_process_run(module: str, *args: str) -> dict[str, Any]:
    """Run `python -m benchmarks.<module> args...`; the JSON report on its last line."""
    process = subprocess.run(
        [sys.executable, "-m", f"benchmarks.{module}", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if process.returncode != 0:
        raise RuntimeError(f"{module} run failed:\n{process.stdout}\n{process.stderr}")
    return json.loads(process.stdout.strip().splitlines()[-1])


def big_value_run(
    contender: Contender, size: int, tmp: Path, trace: bool = False
) -> dict[str, Any]:
    """One run of `echo(size bytes)` in a fresh process; its wall time and peak RSS (and, with
    ``trace``, its big blocks by owner)."""
    db = tmp / f"{uuid.uuid4().hex}.db"
    arguments = [str(size), str(db), json.dumps(contender.executor_config)]
    report = fresh_process_run("big_values", *arguments, *(["trace"] if trace else []))
    db.unlink(missing_ok=True)
    return report


def big_values(sizes: Sizes, tmp: Path) -> list[Row]:
    size = sizes.payload
    contenders = (ours_on_modal(), local("process", 1), local("thread", 1))
    walls: dict[str, list[float]] = {c.label: [] for c in contenders}
    multiples: dict[str, list[float]] = {c.label: [] for c in contenders}
    with FakeServer(lanes=2) as fake:
        for _ in range(sizes.big_repeat):
            for contender in contenders:
                fake.reset()
                tiny = big_value_run(contender, sizes.tiny_payload, tmp)
                big = big_value_run(contender, size, tmp)
                walls[contender.label].append(big["wall"])
                peak_kb = big["hwm_kb"] - tiny["hwm_kb"]
                multiples[contender.label].append(peak_kb * 1024 / size)
        fake.reset()
        traced = big_value_run(contenders[0], size, tmp, trace=True)
    print(
        f"5. big values: echo() of a {size / MB:g} MB bytes argument, result as big; peak RSS "
        "of the scheduler process minus that of a 1 kB run, as a multiple of the payload"
    )
    print(f"   {'contender':36} {'wall s':>8} {'peak RSS':>9} {'= MB':>6} {'wall vs process':>16}")
    reference, thread = contenders[1].label, contenders[2].label
    medians = {label: statistics.median(values) for label, values in walls.items()}
    peaks = {label: statistics.median(values) for label, values in multiples.items()}
    for contender in contenders:
        label = contender.label
        ratio = f"{medians[label] / medians[reference]:15.2f}x"
        megabytes = peaks[label] * size / MB
        print(f"   {label:36} {medians[label]:8.2f} {peaks[label]:8.1f}x {megabytes:6.0f} {ratio}")
    print(
        f"   traced run (ModalExecutor): peak of traced allocations "
        f"{traced['traced_peak'] / size:.2f}x; blocks of 1 MiB and more, as multiples of the "
        "payload, at that peak and each owner's largest at any sample (every 20 ms):"
    )
    at_peak, largest = traced["big_blocks_at_peak"], traced["largest_big_blocks"]
    for name in sorted(largest, key=largest.get, reverse=True):
        print(f"     {name:30} {at_peak.get(name, 0) / size:6.2f}x {largest[name] / size:6.2f}x")
    ours = contenders[0].label
    our_share = largest.get("our executor", 0) / size
    return [
        Row(
            "5. big values",
            f"peak RSS / payload, {size / MB:g} MB",
            f"{peaks[ours]:.1f}x",
            f"{peaks[thread]:.1f}x (thread)",
            f"{peaks[ours] / peaks[thread]:.2f}x",
            "<= 1.00x",
            peaks[ours] <= peaks[thread],
        ),
        Row(
            "5. big values",
            "executor's largest share / payload",
            f"{our_share:.2f}x",
            target="<= 1 copy",
            met=our_share <= 1.01,  # The payload's own header and frame: about 1 kB.
        ),
        Row(
            "5. big values",
            f"wall s, {size / MB:g} MB",
            f"{medians[ours]:.2f}",
            f"{medians[reference]:.2f} (process)",
            f"{medians[ours] / medians[reference]:.2f}x",
        ),
    ]


# ---------------------------------------------------------------------------------------------
# 6. Many in flight


class Gate:
    """A file whose exclusive lock `hold` jobs wait on (fcntl.flock: no polling, any process)."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / f"gate-{uuid.uuid4().hex}"
        self.path.touch()
        self._file = self.path.open()
        fcntl.flock(self._file, fcntl.LOCK_EX)

    def release(self) -> None:
        if not self._file.closed:
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()


@dataclass
class InFlight:
    jobs: int
    submitted_s: float  # from run start until the executor had every job
    in_flight_s: float  # ... until every job was in flight
    rss_kb: int  # RSS growth of this process, run start to all in flight
    owners: Counter[str] | None  # traced allocations alive at that point, by owner
    total_s: float


def hold_many(
    contender: Contender,
    n: int,
    tmp: Path,
    all_in_flight: Callable[[SubmitCounter], bool],
    trace: bool = False,
) -> InFlight:
    """Run `n` jobs that block on a gate; measure when all are in flight, then release them."""
    scheduler = scheduler_for(contender, file_db(tmp))
    counter = SubmitCounter(scheduler)
    gate = Gate(tmp)
    measured: dict[str, Any] = {}
    failure: list[BaseException] = []

    def watch() -> None:
        try:
            while not (counter.count >= n + 1 and all_in_flight(counter)):
                time.sleep(0.05)
            measured["in_flight"] = time.perf_counter()
            measured["rss_kb"] = status_kb("VmRSS")
            if trace:
                measured["snapshot"] = tracemalloc.take_snapshot()
        except BaseException as error:
            failure.append(error)
        finally:
            gate.release()

    rss_before = status_kb("VmRSS")
    if trace:
        tracemalloc.start(16)
    watcher = threading.Thread(target=watch, daemon=True)
    began = time.perf_counter()
    watcher.start()
    try:
        result = scheduler.run(holds(n, str(gate.path), uuid.uuid4().hex))
    finally:
        gate.release()
        watcher.join()
        if trace:
            tracemalloc.stop()
    ended = time.perf_counter()
    if failure:
        raise failure[0]
    assert result == sum(range(n)), result
    return InFlight(
        jobs=n,
        submitted_s=counter.times[n] - began,  # the workflow's job, then the n holds
        in_flight_s=measured["in_flight"] - began,
        rss_kb=measured["rss_kb"] - rss_before,
        owners=by_owner(measured["snapshot"]) if trace else None,
        total_s=ended - began,
    )


def inputs_put(fake: FakeServer, n: int) -> Callable[[SubmitCounter], bool]:
    """True once the fake holds an input for every job (n + the workflow's job)."""
    return lambda _counter: fake.counts()["inputs"] >= n + 1


def stream_limit_probe(n: int, tmp: Path) -> int:
    """Calls in flight (spawned, not finished) with the fake as served: where they plateau."""
    with FakeServer(lanes=4) as fake:
        seen: list[int] = []

        def plateaued(counter: SubmitCounter) -> bool:
            counts = fake.counts()
            seen.append(counts["inputs"] - counts["finished"])
            done = counter.count >= n + 1 and len(seen) > 60 and seen[-60] == seen[-1]
            return done or seen[-1] >= n

        hold_many(ours_on_modal(), n, tmp, plateaued)
        return max(seen)


def many_in_flight(sizes: Sizes, tmp: Path) -> list[Row]:
    n, traced_n = sizes.in_flight, sizes.traced_in_flight
    thread = local("thread", n + 1)
    with FakeServer(lanes=4, max_streams=RAISED_STREAMS) as fake:
        fake.reset()
        ours = [hold_many(ours_on_modal(), n, tmp, inputs_put(fake, n))]
        rpcs = Counter(fake.counts()["rpc"])
        ours += [
            hold_many(ours_on_modal(), n, tmp, inputs_put(fake, n))
            for _ in range(sizes.in_flight_repeat - 1)
        ]
        # tracemalloc slows this workload about tenfold: the split by owner comes from a
        # smaller run (per job, it is the same from 50 to 2,000 jobs).
        traced = hold_many(ours_on_modal(), traced_n, tmp, inputs_put(fake, traced_n), trace=True)
    theirs = [
        hold_many(thread, n, tmp, lambda _counter: True) for _ in range(sizes.in_flight_repeat)
    ]
    probe = stream_limit_probe(sizes.in_flight_probe, tmp) if sizes.in_flight_probe else None

    def med(runs: list[InFlight], field: str) -> float:
        return float(statistics.median(getattr(run, field) for run in runs))

    def kb_per_job(runs: list[InFlight]) -> float:
        return med(runs, "rss_kb") * 1024 / n / 1000

    assert traced.owners is not None
    owners = {name: size / traced_n / 1000 for name, size in traced.owners.most_common()}
    executor_kb = owners.get("our executor", 0.0) + owners.get("modal client", 0.0)
    print(
        f"6. many in flight: {n} jobs blocked at once (sqlite file; fake with "
        f"{RAISED_STREAMS:,} streams/connection, 4 inputs running, the rest queued)"
    )
    print(
        f"   {'contender':36} {'submitted s':>11} {'in flight s':>11} {'RSS/job':>9} "
        f"{'total s':>8}"
    )
    for label, runs in ((ours_on_modal().label, ours), (thread.label, theirs)):
        print(
            f"   {label:36} {med(runs, 'submitted_s'):11.1f} {med(runs, 'in_flight_s'):11.1f} "
            f"{kb_per_job(runs):7.1f}KB {med(runs, 'total_s'):8.1f}"
        )
    print(
        f"   traced Python allocations alive with all {traced_n} in flight, per job "
        "(ModalExecutor):"
    )
    for name, kb in owners.items():
        print(f"     {name:30} {kb:7.2f} KB")
    if probe is not None:
        print(
            f"   with the fake as served (100 streams/connection): {probe} of "
            f"{sizes.in_flight_probe} calls in flight at most"
        )
    jobs = n + 2  # the workflow's job, the holds, the reduce
    per_job = sum(rpcs.values()) / jobs
    print(
        f"   Modal RPCs, first run: {sum(rpcs.values())} for {jobs} jobs ({per_job:.4f} per job)"
    )
    for method, count in rpcs.most_common():
        print(f"     {method:30} {count:7d}")
    ours_s, theirs_s = med(ours, "in_flight_s"), med(theirs, "in_flight_s")
    rows = [
        Row(
            "3. RPC economy",
            f"Modal RPCs per job, {n}-job fan-out",
            f"{per_job:.4f}",
            target="<= 0.02",
            met=per_job <= 0.02,
        ),
        Row(
            "6. many in flight",
            "executor + client KB per job (traced)",
            f"{executor_kb:.1f}",
            target="<= 5 KB",
            met=executor_kb <= 5,
        ),
        Row(
            "6. many in flight",
            "process RSS KB per job",
            f"{kb_per_job(ours):.1f}",
            f"{kb_per_job(theirs):.1f} (thread)",
            f"{kb_per_job(ours) / kb_per_job(theirs):.2f}x",
        ),
        Row(
            "6. many in flight",
            f"s until all {n} in flight",
            f"{ours_s:.1f}",
            f"{theirs_s:.1f} (thread)",
            f"{ours_s / theirs_s:.2f}x",
            "<= 1.00x",
            ours_s / theirs_s <= 1.00,
        ),
    ]
    if probe is not None:
        rows.append(
            Row(
                "6. many in flight (fake as served)",
                "calls in flight at most",
                f"{probe} of {sizes.in_flight_probe}",
            )
        )
    return rows


# ---------------------------------------------------------------------------------------------
# 7. Start-up (local backend): a small run in a fresh process


def fresh_fan_out(contender: Contender, jobs: int) -> float:
    """Wall time of `fan_out(jobs)` in a fresh process (see benchmarks/fresh_run.py)."""
    report = fresh_process_run("fresh_run", str(jobs), json.dumps(contender.executor_config))
    return float(report["wall"])


def start_up(sizes: Sizes) -> list[Row]:
    jobs, workers = sizes.startup_jobs, sizes.startup_workers
    medians = against_local_executor(
        workers, sizes.repeat, lambda contender: fresh_fan_out(contender, jobs)
    )
    reference = medians[PROCESS_MODE]
    print(
        f"7. start-up: {jobs} trivial jobs + reduce, max_workers={workers}, each run in a "
        "fresh process (nothing started before it)"
    )
    print(f"   {'contender':36} {'wall s':>8} {'vs process':>10}")
    for label, seconds in medians.items():
        print(f"   {label:36} {seconds:8.2f} {seconds / reference:9.2f}x")
    ratio = medians[OURS_LOCALLY] / reference
    return [
        Row(
            "7. start-up (local backend)",
            f"wall s, {jobs} jobs, fresh process",
            f"{medians[OURS_LOCALLY]:.2f}",
            f"{reference:.2f} (process)",
            f"{ratio:.2f}x",
            "<= 1.00x",
            ratio <= 1.00,
        )
    ]


# ---------------------------------------------------------------------------------------------
# 8. Fan-out on a few containers


def few_containers(sizes: Sizes, tmp: Path) -> list[Row]:
    n, lanes = sizes.container_tasks, sizes.containers
    work = dataclasses.replace(sizes, sleepers=n, sleep=sizes.container_sleep)
    thread = local("thread", lanes)
    walls: dict[str, list[float]] = {"ours": [], "thread": []}
    with FakeServer(lanes=lanes) as fake:
        for _ in range(sizes.repeat):
            fake.point_client()
            walls["ours"].append(time_naps(ours_on_modal(), work, tmp, fake)[0])
            walls["thread"].append(time_naps(thread, work, tmp)[0])
    ours, theirs = (statistics.median(walls[key]) for key in ("ours", "thread"))
    ideal = n * sizes.container_sleep / lanes
    print(
        f"8. fan-out on {lanes} containers: {n} jobs sleeping {sizes.container_sleep:g} s + "
        f"workflow job + reduce; {lanes} inputs run at once on the fake, as served "
        f"(no added latency); {ideal:.1f} s of sleep per lane"
    )
    print(f"   {'contender':44} {'wall s':>7} {'vs thread':>9}")
    print(f"   {ours_on_modal().label:44} {ours:7.2f} {ours / theirs:8.2f}x")
    print(f"   {f'LocalExecutor, thread mode, max_workers={lanes}':44} {theirs:7.2f} {1:8.2f}x")
    return [
        Row(
            f"8. fan-out on {lanes} containers",
            f"wall s, {n} x {sizes.container_sleep:g} s",
            f"{ours:.2f}",
            f"{theirs:.2f} (thread)",
            f"{ours / theirs:.2f}x",
            "<= 1.20x",
            ours / theirs <= 1.20,
        )
    ]


# ---------------------------------------------------------------------------------------------


def time_registration_hook() -> float:
    """Seconds a fresh interpreter spends running the registration .pth line."""
    import redun_modal_executor

    pth = Path(redun_modal_executor.__file__).with_name("registration.pth")
    (line,) = [line for line in pth.read_text().splitlines() if line.startswith("import")]
    probe = (
        "import time; began = time.perf_counter(); exec(LINE); print(time.perf_counter() - began)"
    ).replace("LINE", repr(line))
    output = subprocess.run([sys.executable, "-S", "-c", probe], capture_output=True, text=True)
    return float(output.stdout)


def print_summary(rows: list[Row]) -> None:
    print("\nsummary (medians; ratio = ours / LocalExecutor)")
    header = ("scenario", "metric", "ours", "LocalExecutor", "ratio", "target", "")
    table = [header] + [
        (
            row.scenario,
            row.metric,
            row.ours,
            row.reference,
            row.ratio,
            row.target,
            "" if row.met is None else ("met" if row.met else "MISSED"),
        )
        for row in rows
    ]
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    for line in table:
        print(
            "   "
            + "  ".join(
                cell.ljust(width) for cell, width in zip(line, widths, strict=True)
            ).rstrip()
        )


@contextmanager
def scratch() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="redun_modal_bench_") as directory:
        yield Path(directory)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one repetition")
    parser.add_argument("--repeat", type=int, help="repetitions (default 5; big ones 3)")
    parser.add_argument("--only", help="comma-separated scenario numbers (1 to 8)")
    args = parser.parse_args()
    sizes = QUICK if args.quick else FULL
    if args.repeat:
        sizes = dataclasses.replace(sizes, repeat=args.repeat)
    only = {int(part) for part in args.only.split(",")} if args.only else set(range(1, 9))
    workers = os.cpu_count() or 1

    print(machine())
    print(
        f"medians of {sizes.repeat} run(s) ({sizes.big_repeat} for scenario 5, "
        f"{sizes.in_flight_repeat} for scenario 6)\n"
    )
    rows: list[Row] = []
    scenarios: list[tuple[set[int], Callable[[Path], list[Row]]]] = [
        ({1}, lambda tmp: overhead(sizes, workers)),
        ({2, 3}, lambda tmp: latency_hiding(sizes, tmp)),
        ({4}, lambda tmp: cached_rerun(sizes, tmp, workers)),
        ({5}, lambda tmp: big_values(sizes, tmp)),
        ({6}, lambda tmp: many_in_flight(sizes, tmp)),
        ({7}, lambda tmp: start_up(sizes)),
        ({8}, lambda tmp: few_containers(sizes, tmp)),
    ]
    with scratch() as tmp:
        for numbers, scenario in scenarios:
            if numbers & only:
                load, began = os.getloadavg()[0], time.perf_counter()
                rows += scenario(tmp)
                print(
                    f"   ({time.perf_counter() - began:.0f} s; 1-minute load average "
                    f"{load:.2f} before, {os.getloadavg()[0]:.2f} after)\n"
                )

    hook = median_of(5 if args.quick else 30, time_registration_hook)
    print(f"registration .pth line at interpreter start: {hook * 1e6:.0f} us (median)")
    print_summary(rows)


if __name__ == "__main__":
    main()
