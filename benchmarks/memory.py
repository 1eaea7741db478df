"""Memory measurement helpers: sizes from /proc, and tracemalloc snapshots split by owner."""

from __future__ import annotations

import tracemalloc
from collections import Counter

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
    for frame in reversed(traceback):  # tracemalloc lists frames oldest first
        for name, markers in OWNERS:
            if any(marker in frame.filename for marker in markers):
                return name
    return "other (stdlib, interpreter)"


def by_owner(snapshot: tracemalloc.Snapshot) -> Counter[str]:
    """Bytes still allocated in `snapshot`, by owner."""
    totals: Counter[str] = Counter()
    for statistic in snapshot.statistics("traceback"):
        totals[owner(statistic.traceback)] += statistic.size
    return totals
