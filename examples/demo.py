"""The proof of concept's demo, as plain redun: no Modal code, no `.t()`.

    redun run examples/demo.py main               # runs everything
    redun run examples/demo.py main               # again: every result comes from the cache
    redun run examples/demo.py main --factor 3.0  # only `mul` (and `main`) run again

Results carry the time they were computed, so cached ones keep their old timestamps.
"""

from datetime import datetime

from redun import task

redun_namespace = "examples.demo"


def stamped(text: str) -> str:
    return f"{datetime.now():%Y-%m-%d %H:%M:%S} :: {text}"


@task
def add(a: float, b: float) -> str:
    return stamped(f"{a} + {b} = {a + b}")


@task
def mul(a: float, b: float) -> str:
    return stamped(f"{a} * {b} = {a * b}")


@task
def square(x: int) -> int:
    return x * x


@task
def total(values: list[int]) -> int:
    return sum(values)


@task
def main(x: float = 2.0, y: float = 3.0, factor: float = 2.0, fan_out: int = 32) -> dict:
    """Two timestamped results, and a fan-out of `fan_out` small jobs run in parallel."""
    return {
        "add": add(x, y),
        "mul": mul(factor, y),
        "sum of squares": total([square(i) for i in range(fan_out)]),
    }
