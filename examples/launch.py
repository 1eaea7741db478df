"""A workflow to run with the scheduler away from this machine (``redun launch``).

redun launch --executor modal redun run examples/launch.py main --samples 8
redun-modal status --wait <call id>     # the id `redun launch` printed
redun-modal pull                         # then: redun log

The launched scheduler runs in a worker of the ``modal`` executor (on Modal, a container; on
the local backend, a process of its own) and keeps its database on ``scheduler_volume``.
Its tasks go to the executors the project's redun.ini names, as in any run.
"""

import statistics

from redun import task

redun_namespace = "examples.launch"


@task
def measure(sample: int) -> float:
    """Stands in for an hour-long job: the reason not to keep a laptop awake for the run."""
    return (sample * 7919) % 101 / 10


@task
def summarize(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values), "max": max(values)}


@task
def main(samples: int = 8) -> dict[str, float]:
    return summarize([measure(sample) for sample in range(samples)])
