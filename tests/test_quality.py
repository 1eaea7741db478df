"""The repository's own checks, so that `python -m pytest` is the one command CI runs."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[1]


def run(*command: str) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True)


def test_ruff_lint_and_format():
    ruff = str(Path(sys.executable).with_name("ruff"))
    lint = run(ruff, "check", ".")
    assert lint.returncode == 0, lint.stdout + lint.stderr
    formatting = run(ruff, "format", "--check", ".")
    assert formatting.returncode == 0, formatting.stdout + formatting.stderr


def test_docs_build_without_warnings(tmp_path):
    build = run(
        sys.executable,
        "-m",
        "sphinx",
        "-W",
        "--keep-going",
        "-q",
        "-b",
        "html",
        "docs",
        str(tmp_path / "html"),
    )
    assert build.returncode == 0, build.stdout + build.stderr
