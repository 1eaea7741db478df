"""Shared fixtures: a throwaway redun project, and `redun` run in it as a user would."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

pytest_plugins = ["fake_modal"]  # The `fake_modal` fixture: a Modal control plane on 127.0.0.1.

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

    def command(self, *args: str) -> list[str]:
        return [REDUN, *args]

    def environment(self) -> dict[str, str]:
        """This process's environment, as in an activated virtualenv, without REDUN_*."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("REDUN_")}
        # Script jobs find `redun` on PATH.
        env["PATH"] = os.pathsep.join([os.path.dirname(REDUN), env.get("PATH", "")])
        return env

    def start(self, *args: str, capture: bool = True) -> subprocess.Popen:
        """Start the `redun` command in the project without waiting (output: text, merged)."""
        output = subprocess.PIPE if capture else subprocess.DEVNULL
        return subprocess.Popen(
            self.command(*args),
            cwd=self.root,
            env=self.environment(),
            stdout=output,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def redun(
        self, *args: str, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess:
        """Run the `redun` command in the project; output is stdout and stderr together."""
        process = subprocess.run(
            self.command(*args),
            cwd=self.root,
            env=self.environment(),
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
