"""Where each copy of a big value is made: scenario 5's ModalExecutor run under memray.

python -m benchmarks.profile_big_values [SIZE]     (needs `pip install memray`)

Runs `benchmarks.big_values` (ModalExecutor on the fake, SIZE bytes, default 100 MB) under
`memray run --native`, then reads every recorded allocation of 1 MiB and more, in order, and
prints those alive at the process's high-water mark, and each owner's largest total alive at
any moment, both by the site that made them (the owner's innermost frame). Unlike the sampled
tracemalloc figures of `python -m benchmarks --only 5`, nothing short-lived is missed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

from benchmarks.fake_server import FakeServer
from benchmarks.memory import owner_of

ROOT = Path(__file__).resolve().parent.parent
MB = 1000 * 1000
BIG_BLOCK = 1024 * 1024


def record(size: int, directory: Path) -> Path:
    """Run the big-value workflow under memray; the capture file."""
    capture = directory / "big_values.bin"
    with FakeServer(lanes=2) as fake:
        command = [
            *(sys.executable, "-m", "memray", "run", "--native", "-q", "-o", str(capture)),
            *("-m", "benchmarks.big_values", str(size), str(directory / "redun.db")),
            json.dumps({"type": "modal"}),
        ]
        subprocess.run(command, cwd=ROOT, env={**os.environ, **fake.env}, check=True)
    return capture


def site(record: Any) -> tuple[str, str]:
    """The owner of an allocation, and where in the owner's code it was made."""
    frames = record.stack_trace()
    name, index = owner_of([filename for _function, filename, _line in frames])
    if not frames:
        return name, "-"
    function, filename, line = frames[index or 0]  # No owner: the innermost frame.
    short = filename.split("site-packages/")[-1].removeprefix(f"{ROOT}/")
    return name, f"{short}:{line} {function}"


def is_big_block(allocation: Any) -> bool:
    """A buffer of 1 MiB and more from malloc: not an arena of the interpreter's own small
    objects (mmap). A high-water-mark record groups a site's blocks: it counts them."""
    from memray import AllocatorType

    malloc = {AllocatorType.MALLOC, AllocatorType.CALLOC, AllocatorType.REALLOC}
    count = getattr(allocation, "n_allocations", 1)
    return allocation.allocator in malloc and allocation.size >= BIG_BLOCK * count


def largest_by_owner(capture: Path) -> dict[str, tuple[int, Counter[str]]]:
    """Each owner's largest total of big blocks alive at once, and its sites at that moment."""
    from memray import FileReader

    live: dict[int, tuple[str, str, int]] = {}
    totals: Counter[str] = Counter()
    largest: dict[str, tuple[int, Counter[str]]] = {}
    for allocation in FileReader(str(capture)).get_allocation_records():
        gone = live.pop(allocation.address, None)  # A free, or a realloc in place.
        if gone is not None:
            totals[gone[0]] -= gone[2]
        if not is_big_block(allocation):
            continue
        name, where = site(allocation)
        live[allocation.address] = (name, where, allocation.size)
        totals[name] += allocation.size
        if totals[name] > largest.get(name, (0, Counter()))[0]:
            sites: Counter[str] = Counter()
            for block_owner, block_site, size in live.values():
                if block_owner == name:
                    sites[block_site] += size
            largest[name] = (totals[name], sites)
    return largest


def at_high_water_mark(capture: Path) -> tuple[int, Counter[tuple[str, str]]]:
    """The process's peak, and the big blocks alive then, by owner and site."""
    from memray import FileReader

    reader = FileReader(str(capture))
    blocks: Counter[tuple[str, str]] = Counter()
    for allocation in reader.get_high_watermark_allocation_records(merge_threads=True):
        if is_big_block(allocation):
            blocks[site(allocation)] += allocation.size
    return reader.metadata.peak_memory, blocks


def main() -> None:
    size = int(sys.argv[1]) if len(sys.argv) > 1 else 100 * MB
    with tempfile.TemporaryDirectory(prefix="profile-big-values-") as directory:
        capture = record(size, Path(directory))
        peak, blocks = at_high_water_mark(capture)
        largest = largest_by_owner(capture)
    print(f"echo() of {size / MB:g} MB on ModalExecutor (fake); multiples of the payload")
    print(f"peak heap (memray): {peak / size:.2f}x; blocks of 1 MiB and more alive then:")
    shown = [(key, total) for key, total in blocks.most_common() if total >= size / 20]
    for (name, where), total in shown:
        print(f"   {total / size:6.2f}x  {name:14} {where}")
    rest = sum(blocks.values()) - sum(total for _key, total in shown)
    print(f"   {rest / size:6.2f}x  (the rest, each site under 0.05x)")
    print("each owner's largest total of such blocks alive at once, and what it was:")
    for name, (total, sites) in sorted(largest.items(), key=lambda item: -item[1][0]):
        print(f"   {total / size:6.2f}x  {name}")
        for where, part in sites.most_common():
            print(f"      {part / size:6.2f}x  {where}")


if __name__ == "__main__":
    main()
