"""Shared fixtures: a throwaway redun project, and `redun` run in it as a user would."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

REDUN = str(Path(sys.executable).with_name("redun"))

LOCAL_CONFIG = """\
[executors.default]
type = modal
backend = local
max_workers = 2
"""


@dataclass
class Project:
    root: Path

    def write(self, relative: str, text: str) -> Path:
        path = self.root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
        return path

    def redun(
        self, *args: str, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess:
        """Run the `redun` command in the project; output is stdout and stderr together."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("REDUN_")}
        # As in an activated virtualenv: script jobs find `redun` on PATH.
        env["PATH"] = os.pathsep.join([os.path.dirname(REDUN), env.get("PATH", "")])
        process = subprocess.run(
            [REDUN, *args],
            cwd=self.root,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=timeout,
        )
        if check and process.returncode != 0:
            raise AssertionError(f"redun {' '.join(args)} failed:\n{process.stdout}")
        return process


@pytest.fixture
def project(tmp_path: Path) -> Project:
    """A project whose default executor is ModalExecutor on the local backend."""
    project = Project(tmp_path)
    project.write(".redun/redun.ini", LOCAL_CONFIG)
    return project
