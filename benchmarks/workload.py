"""Tasks the benchmarks run; importable by name, as workers need."""

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
