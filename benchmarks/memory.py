"""Memory measurement helpers: sizes from /proc, and tracemalloc snapshots split by owner."""

from __future__ import annotations

import tracemalloc
from collections import Counter
from collections.abc import Sequence

# Where an allocation's owner is found: the innermost frame in one of these (stdlib frames, and
# libraries called on an owner's behalf, such as SQLAlchemy, count for their caller).
OWNERS = (
    ("our executor", ("/redun_modal_executor/",)),
    ("redun", ("/redun/",)),
    (
        "modal client",
        (
            "/modal/",
            "/modal_proto/",
            "/grpclib/",
            "/h2/",
            "/hpack/",
            "/synchronicity/",
            "/google/protobuf/",
            "/aiohttp/",
        ),
    ),
    ("benchmark", ("/benchmarks/", "/fake_modal/")),
)


def status_kb(field: str) -> int:
    """A size from /proc/self/status, in KiB (VmRSS, VmHWM, ...)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def owner(traceback: tracemalloc.Traceback) -> str:
    """The owner of an allocation: the first known owner from the innermost frame out."""
    # tracemalloc lists frames oldest first.
    return owner_of([frame.filename for frame in reversed(traceback)])[0]


def owner_of(filenames: Sequence[str]) -> tuple[str, int | None]:
    """The first known owner of a stack's files (innermost first), and the index of its file
    (None for no known owner)."""
    for index, filename in enumerate(filenames):
        for name, markers in OWNERS:
            if any(marker in filename for marker in markers):
                return name, index
    return "other (stdlib, interpreter)", None


def by_owner(snapshot: tracemalloc.Snapshot) -> Counter[str]:
    """Bytes still allocated in `snapshot`, by owner."""
    totals: Counter[str] = Counter()
    for statistic in snapshot.statistics("traceback"):
        totals[owner(statistic.traceback)] += statistic.size
    return totals
