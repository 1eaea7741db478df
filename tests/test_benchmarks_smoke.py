"""The benchmark suite still runs (tiny sizes); numbers are in docs/benchmarks.md, not here."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[1]


def test_benchmarks_quick_run_completes():
    process = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert process.returncode == 0, process.stdout + process.stderr
    assert "ModalExecutor, local backend" in process.stdout
    assert "registration .pth line" in process.stdout
