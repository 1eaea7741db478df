"""Time the imports a memory snapshot skips: each in a fresh interpreter, several times.

python -m benchmarks.cold_imports            # 15 runs of each
python -m benchmarks.cold_imports --runs 30

Each statement runs as ``python -c <statement>`` with this interpreter, the statements taking
turns; the wall time of the whole process and its CPU time (user + system, from
``getrusage(RUSAGE_CHILDREN)``) are recorded, and the medians printed. ``pass`` is the bare
interpreter; the rows below it include that start-up. The last row less the one above it is
what a memory snapshot of the deployed function saves a container: the imports of loading
``run_job``, on top of what Modal's container entry point has imported already.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time

# What a Modal container has imported before it loads the function (its entry point), and
# that plus what loading run_job imports: run_job pickles by reference, so loading it imports
# its module (and package), which imports redun, cloudpickle and the worker.
ENTRYPOINT = "import modal._container_entrypoint"
STATEMENTS = (
    "pass",
    "import redun",
    "import redun_modal_executor.worker.run",
    ENTRYPOINT,
    ENTRYPOINT + ", redun_modal_executor.backends.modal.app",
)


def run_once(statement: str) -> tuple[float, float]:
    """Wall and CPU seconds of one fresh interpreter running ``statement``."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", statement], check=True)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args(argv)
    load_before = os.getloadavg()[0]
    for statement in STATEMENTS:
        run_once(statement)  # Warm the file cache: time imports, not the disk.
    times: dict[str, list[tuple[float, float]]] = {statement: [] for statement in STATEMENTS}
    for _ in range(args.runs):  # Interleaved, so a burst of load hits every row alike.
        for statement in STATEMENTS:
            times[statement].append(run_once(statement))
    width = max(len(statement) for statement in STATEMENTS)
    print(f"{'python -c':<{width}} {'wall ms':>8} {'cpu ms':>8}  (medians of {args.runs})")
    medians = {}
    for statement, samples in times.items():
        wall = statistics.median(sample[0] for sample in samples) * 1000
        cpu = statistics.median(sample[1] for sample in samples) * 1000
        medians[statement] = (wall, cpu)
        print(f"{statement:<{width}} {wall:>8.0f} {cpu:>8.0f}")
    wall_with, cpu_with = medians[STATEMENTS[-1]]
    wall_without, cpu_without = medians[ENTRYPOINT]
    print(
        f"a snapshot saves (last row less the row above): {wall_with - wall_without:.0f} ms "
        f"wall, {cpu_with - cpu_without:.0f} ms CPU"
    )
    print(f"1-minute load average: {load_before:.2f} before, {os.getloadavg()[0]:.2f} after")


if __name__ == "__main__":
    main()
