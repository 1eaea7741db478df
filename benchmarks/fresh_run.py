"""One fan-out run in a fresh process, as a user's `redun run` of a small workflow is.

python -m benchmarks.fresh_run JOBS EXECUTOR_JSON runs `fan_out(JOBS)` with a new scheduler on
an in-memory database and `[executors.default]` EXECUTOR_JSON, then prints one JSON line: the
run's wall time, from `scheduler.run` to its result (the executor's stop included).

Nothing has started before the run: redun's process mode starts its forkserver and its
workers, and the local backend its template and workers, within the time measured. The imports
at the top are those of a workflow script: redun and the tasks. Each of process mode's workers
imports this module again, as multiprocessing does with the main module (the forkserver of
Python 3.11 is meant to preload it, but does not: it looks for a key, `main_path`, that
`spawn.get_preparation_data` does not give), so each of them imports redun.
"""

from __future__ import annotations

import json
import sys
import time
import uuid

from redun import Scheduler
from redun.config import Config

from benchmarks.workload import fan_out


def main() -> None:
    jobs, executor = int(sys.argv[1]), json.loads(sys.argv[2])
    scheduler = Scheduler(
        config=Config({"backend": {"db_uri": "sqlite:///:memory:"}, "executors.default": executor})
    )
    scheduler.load()
    scheduler.logger.disabled = True
    began = time.perf_counter()
    result = scheduler.run(fan_out(jobs, uuid.uuid4().hex))
    elapsed = time.perf_counter() - began
    assert result == sum(range(jobs)), result
    print(json.dumps({"wall": elapsed}), flush=True)


if __name__ == "__main__":
    main()
