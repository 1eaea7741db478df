"""The benchmark suite still runs (tiny sizes); numbers are in docs/benchmarks.md, not here."""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[1]

SCENARIOS = (
    "1. overhead",
    "2. latency hiding",
    "3. RPC economy",
    "4. cached rerun",
    "5. big values",
    "6. many in flight",
    "7. start-up",
)


def test_benchmarks_quick_run_completes():
    process = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert process.returncode == 0, process.stdout + process.stderr
    output = process.stdout
    assert "ModalExecutor, local backend" in output
    assert "registration .pth line" in output
    # Each scenario prints its own section, then one or more rows of the summary table.
    _, summary = output.split("\nsummary ", 1)
    rows = [re.split(r"\s{2,}", line.strip()) for line in summary.splitlines()[2:]]
    for scenario in SCENARIOS:
        assert f"\n{scenario}" in output, scenario
        measured = [row for row in rows if row[0].startswith(scenario)]
        assert measured, f"no summary row for {scenario}"
        for row in measured:
            assert re.match(r"\d", row[2]), row  # a number in the "ours" column
