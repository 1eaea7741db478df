"""One big-value run in a fresh process, so that its peak RSS is the scheduler's alone.

python -m benchmarks.big_values SIZE DB_PATH EXECUTOR_JSON [trace] runs `echo` on a SIZE-byte
argument with a new scheduler on sqlite file DB_PATH and `[executors.default]` EXECUTOR_JSON,
then prints one JSON line: the run's wall time and this process's peak RSS (VmHWM) before and
after. With `trace`, tracemalloc follows the run, and the line also has the big blocks (1 MiB
and more) alive at the traced peak by owner, and each owner's largest total of big blocks
at any sample (sampled every 20 ms). The parent points the modal client at the fake through
the environment. For a native profile, run this module under `memray run --native` the same
way (see docs/benchmarks.md).
"""

from __future__ import annotations

import json
import sys
import threading
import time
import tracemalloc
from collections import Counter
from typing import Any

from benchmarks.memory import owner, status_kb

BIG_BLOCK = 1024 * 1024
SAMPLE_SECONDS = 0.02


class BigBlocks:
    """Samples of the big blocks tracemalloc sees, by owner, on a thread of their own."""

    def __init__(self) -> None:
        self.at_peak: Counter[str] = Counter()
        self.largest: Counter[str] = Counter()
        self._peak_seen = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample_until_stopped, daemon=True)

    def __enter__(self) -> BigBlocks:
        tracemalloc.start(32)
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()
        tracemalloc.stop()

    def _sample_until_stopped(self) -> None:
        while not self._stop.wait(SAMPLE_SECONDS):
            current, _peak = tracemalloc.get_traced_memory()
            blocks: Counter[str] = Counter()
            for trace in tracemalloc.take_snapshot().traces:
                if trace.size >= BIG_BLOCK:
                    blocks[owner(trace.traceback)] += trace.size
            for name, size in blocks.items():
                self.largest[name] = max(self.largest[name], size)
            if current > self._peak_seen:
                self._peak_seen, self.at_peak = current, blocks

    def report(self) -> dict[str, Any]:
        return {
            "traced_peak": tracemalloc.get_traced_memory()[1],
            "big_blocks_at_peak": dict(self.at_peak),
            "largest_big_blocks": dict(self.largest),
        }


def main() -> None:
    size, db_path, executor = int(sys.argv[1]), sys.argv[2], json.loads(sys.argv[3])
    traced = sys.argv[4:] == ["trace"]

    from redun import Scheduler
    from redun.config import Config

    from benchmarks.workload import echo

    scheduler = Scheduler(
        config=Config(
            {"backend": {"db_uri": f"sqlite:///{db_path}"}, "executors.default": executor}
        )
    )
    scheduler.load()
    scheduler.logger.disabled = True
    payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
    report: dict[str, Any] = {"hwm_before_kb": status_kb("VmHWM")}
    began = time.perf_counter()
    if traced:
        with BigBlocks() as blocks:
            result = scheduler.run(echo(payload))
            report.update(blocks.report())
    else:
        result = scheduler.run(echo(payload))
    report["wall"] = time.perf_counter() - began
    report["hwm_kb"] = status_kb("VmHWM")
    assert result == payload, "echo changed its argument"
    print(json.dumps(report), flush=True)


if __name__ == "__main__":
    main()
