"""Functions for the fake's own tests to deploy; they run in its worker processes."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path


def double(x: int) -> int:
    """Twice x."""
    return 2 * x


async def async_double(x: int) -> int:
    """Twice x, from a coroutine function."""
    await asyncio.sleep(0)
    return 2 * x


def sleep_then(seconds: float, value: object = None) -> object:
    """Sleep, then return `value`."""
    time.sleep(seconds)
    return value


def reverse(data: bytes) -> bytes:
    """The bytes reversed (as large as the argument)."""
    return data[::-1]


def fail(message: str) -> None:
    """Raise ValueError(message)."""
    raise ValueError(message)


def getenv(name: str) -> str | None:
    """An environment variable of the worker."""
    return os.environ.get(name)


def die(code: int) -> None:
    """End the worker process at once, as a crashing container would."""
    os._exit(code)


def flaky(counter: str, failures: int) -> int:
    """Fail the first `failures` times (counted in file `counter`); return the attempt number."""
    path = Path(counter)
    attempt = int(path.read_text()) + 1 if path.exists() else 1
    path.write_text(str(attempt))
    if attempt <= failures:
        raise RuntimeError(f"attempt {attempt} fails")
    return attempt


def chatty(lines: list[str], seconds: float = 0.0) -> int:
    """Print `lines` (stdout), say on stderr that it sleeps, sleep; return how many lines."""
    for line in lines:
        print(line)
    print(f"sleeping {seconds:g}s", file=sys.stderr)
    time.sleep(seconds)
    return len(lines)


def volume_steps(volume: str, mount: str, steps: list[list[str]]) -> list[str | None]:
    """Act on a mounted Volume, step by step: ["write", name, text], ["read", name] (its text,
    or None), ["commit"], ["reload"], ["wait", path] (until that file exists). The reads."""
    import modal

    handle = modal.Volume.from_name(volume)
    reads: list[str | None] = []
    for step in steps:
        action, *rest = step
        if action == "write":
            Path(mount, rest[0]).write_text(rest[1])
        elif action == "read":
            path = Path(mount, rest[0])
            reads.append(path.read_text() if path.exists() else None)
        elif action == "commit":
            handle.commit()
        elif action == "reload":
            handle.reload()
        elif action == "wait":
            while not Path(rest[0]).exists():
                time.sleep(0.02)
    return reads
