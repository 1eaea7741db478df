"""One big-value run in a fresh process, so that its peak RSS is the scheduler's alone.

python -m benchmarks.big_values SIZE DB_PATH EXECUTOR_JSON runs `echo` on a SIZE-byte argument
with a new scheduler on sqlite file DB_PATH and `[executors.default]` EXECUTOR_JSON, then
prints one JSON line: the run's wall time and this process's peak RSS (VmHWM) before and after.
The parent points the modal client at the fake through the environment. To see where the peak
is, run this module under `memray run --native` the same way (see docs/benchmarks.md).
"""

from __future__ import annotations

import json
import sys
import time

from benchmarks.memory import status_kb


def main() -> None:
    size, db_path, executor = int(sys.argv[1]), sys.argv[2], json.loads(sys.argv[3])

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
    report: dict[str, object] = {"hwm_before_kb": status_kb("VmHWM")}
    began = time.perf_counter()
    result = scheduler.run(echo(payload))
    report["wall"] = time.perf_counter() - began
    report["hwm_kb"] = status_kb("VmHWM")
    assert result == payload, "echo changed its argument"
    print(json.dumps(report), flush=True)


if __name__ == "__main__":
    main()
