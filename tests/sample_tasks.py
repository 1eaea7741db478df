"""Tasks importable by module name (the "by reference" path), used by unit and e2e tests."""

import os
import sys
import threading

from redun import task


@task
def add(a: int, b: int) -> int:
    return a + b


@task
def pair(x: int) -> tuple[int, int]:
    return x, x + 1


@task(cache=False)
async def async_add(a: int, b: int) -> int:
    return a + b


@task
def fails(x: int) -> int:
    print("about to fail")
    raise ValueError(f"bad {x}")


@task(script=True)
def echo(text: str) -> str:
    return f"echo {text}"


class LockedError(Exception):
    """An exception holding something that cannot be pickled."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.lock = threading.Lock()


@task
def raises_unpicklable() -> None:
    raise LockedError("holding a lock")


def _refuse_to_load() -> None:
    raise RuntimeError("this exception cannot be rebuilt here")


class UnloadableError(Exception):
    """Pickles fine, fails to unpickle (as when its class exists only in the container)."""

    def __reduce__(self):
        return (_refuse_to_load, ())


@task
def raises_unloadable() -> None:
    raise UnloadableError("only in the container")


@task
def returns_lock() -> object:
    return threading.Lock()


@task
def exits() -> None:
    sys.exit(3)


@task
def returns_call_with_lock():
    return add(threading.Lock(), 1)


@task
def timed_sleep(seconds: float) -> tuple[int, float, float]:
    """Sleeps; returns (worker pid, start, end) so tests can see reuse and overlap."""
    import os
    import time

    start = time.time()
    time.sleep(seconds)
    return os.getpid(), start, time.time()


@task
def env_value(name: str) -> tuple[int, int, str | None]:
    """The worker's pid, its parent's, and the variable ``name``."""
    return os.getpid(), os.getppid(), os.environ.get(name)


@task
def hard_exit() -> None:
    import os

    os._exit(9)


@task(script=True)
def sleep_in_child(pid_file: str) -> str:
    return f"sleep 60 & echo $! > {pid_file}; wait"


@task
def mark_then_sleep(marker: str, seconds: float) -> None:
    """Write ``marker`` once running (the worker's pid and its parent's), then sleep: tests
    wait for the file, not a guess."""
    import os
    import time
    from pathlib import Path

    partial = Path(marker + ".partial")
    partial.write_text(f"{os.getpid()} {os.getppid()}")
    partial.replace(marker)  # Whoever sees the marker sees both pids.
    time.sleep(seconds)


@task
def process_facts(seconds: float) -> dict[str, int]:
    """Sleeps (so that calls at once get workers of their own); returns the worker's pids."""
    import os
    import time

    time.sleep(seconds)
    return {
        "pid": os.getpid(),
        "ppid": os.getppid(),
        "pgid": os.getpgid(0),
        "sid": os.getsid(0),
    }


@task
def kill_self() -> None:
    import os
    import signal

    os.kill(os.getpid(), signal.SIGKILL)


@task
def scheduler_state(modules: list[str]) -> tuple[object, list[str]]:
    """What a worker sees of state the scheduler set: this module's ``SET_BY_SCHEDULER``, and
    which of ``modules`` are imported."""
    return globals().get("SET_BY_SCHEDULER"), [name for name in modules if name in sys.modules]
