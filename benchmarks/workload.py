"""Tasks the benchmarks run; importable by name, as workers need."""

import fcntl
import time

from redun import task


@task
def noop(i: int) -> int:
    return i


@task
def reduce_sum(values: list[int]) -> int:
    return sum(values)


@task
def fan_out(n: int, salt: str) -> int:
    """`n` trivial jobs and one reduce; `salt` keeps runs from hitting each other's cache."""
    return reduce_sum([noop(i) for i in range(n)])


@task
def nap(i: int, seconds: float) -> int:
    time.sleep(seconds)
    return i


@task
def naps(n: int, seconds: float, salt: str) -> int:
    """`n` jobs that each sleep `seconds`, and one reduce."""
    return reduce_sum([nap(i, seconds) for i in range(n)])


@task
def hold(i: int, gate: str) -> int:
    """Block until file `gate` is no longer locked (see `Gate` in benchmarks/__main__.py)."""
    with open(gate) as file:
        fcntl.flock(file, fcntl.LOCK_SH)
    return i


@task
def holds(n: int, gate: str, salt: str) -> int:
    """`n` jobs that all block on `gate`, and one reduce."""
    return reduce_sum([hold(i, gate) for i in range(n)])


@task
def echo(data: bytes) -> bytes:
    return data
