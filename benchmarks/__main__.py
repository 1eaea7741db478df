"""Run the benchmark scenarios and print medians and ratios against redun's LocalExecutor.

python -m benchmarks                 # full run (see docs/benchmarks.md)
python -m benchmarks --quick         # seconds; what CI runs to keep this working
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from redun import Scheduler
from redun.config import Config

from benchmarks.workload import fan_out


@dataclass(frozen=True)
class Contender:
    label: str
    executor_config: dict[str, str]


def scheduler_for(contender: Contender) -> Scheduler:
    scheduler = Scheduler(
        config=Config(
            {
                "backend": {"db_uri": "sqlite:///:memory:"},
                "executors.default": contender.executor_config,
            }
        )
    )
    scheduler.load()
    return scheduler


def time_fan_out(contender: Contender, jobs: int) -> float:
    scheduler = scheduler_for(contender)
    scheduler.logger.disabled = True
    began = time.perf_counter()
    result = scheduler.run(fan_out(jobs, uuid.uuid4().hex))
    elapsed = time.perf_counter() - began
    assert result == sum(range(jobs)), result
    return elapsed


def time_registration_hook() -> float:
    """Seconds a fresh interpreter spends running the registration .pth line."""
    from pathlib import Path

    import redun_modal_executor

    pth = Path(redun_modal_executor.__file__).with_name("registration.pth")
    (line,) = [line for line in pth.read_text().splitlines() if line.startswith("import")]
    probe = (
        "import time; began = time.perf_counter(); exec(LINE); print(time.perf_counter() - began)"
    ).replace("LINE", repr(line))
    output = subprocess.run([sys.executable, "-S", "-c", probe], capture_output=True, text=True)
    return float(output.stdout)


def median_of(repeat: int, measure: Callable[[], float]) -> float:
    return statistics.median(measure() for _ in range(repeat))


def overhead(repeat: int, jobs: int, workers: int) -> list[tuple[str, float]]:
    ours = Contender(
        "ModalExecutor, local backend",
        {"type": "modal", "backend": "local", "max_workers": str(workers)},
    )
    process = Contender(
        "LocalExecutor, process mode",
        {"type": "local", "mode": "process", "max_workers": str(workers)},
    )
    thread = Contender(
        "LocalExecutor, thread mode",
        {"type": "local", "mode": "thread", "max_workers": str(workers)},
    )
    return [
        (c.label, median_of(repeat, lambda c=c: time_fan_out(c, jobs)))
        for c in (ours, process, thread)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one repetition")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    repeat = 1 if args.quick else args.repeat
    jobs = 20 if args.quick else 1000
    workers = os.cpu_count() or 1

    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
    )
    print(f"medians of {repeat} run(s)\n")

    rows = overhead(repeat, jobs, workers)
    reference = dict(rows)["LocalExecutor, process mode"]
    print(f"1. overhead: {jobs} trivial jobs + reduce, max_workers={workers}")
    print(f"   {'contender':34} {'wall s':>8} {'jobs/s':>8} {'vs process':>10}")
    for label, seconds in rows:
        print(f"   {label:34} {seconds:8.2f} {jobs / seconds:8.0f} {seconds / reference:9.2f}x")

    hook = median_of(5 if args.quick else 30, time_registration_hook)
    print(f"\nregistration .pth line at interpreter start: {hook * 1e6:.0f} us (median)")


if __name__ == "__main__":
    main()
