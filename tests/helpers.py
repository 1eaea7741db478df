"""What the test modules share: a throwaway redun project and the `redun` and `redun-modal`
commands run in it as a user would, the configs and names of the "deployed" app, readers of
`redun`'s output, and a bounded wait. Fixtures are in conftest.py; test modules import from
here, never from one another."""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REDUN = str(Path(sys.executable).with_name("redun"))
REDUN_MODAL = str(Path(sys.executable).with_name("redun-modal"))

LOCAL_CONFIG = """\
[executors.default]
type = modal
backend = local
max_workers = 2
"""

MODAL_CONFIG = """\
[executors.default]
type = modal
image.gpu.pip = torch
"""

# The app `redun-modal deploy` makes, as the fake serves it: its functions run the real worker.
APP = "redun-modal-executor"
TARGET = "redun_modal_executor.backends.modal.app:run_job"

SUM_OF_SQUARES = """\
from redun import task

@task
def square(x: int) -> int:
    return x * x

@task
def main(n: int = 4) -> int:
    return sum_all([square(i) for i in range(n)])

@task
def sum_all(values: list) -> int:
    return sum(values)
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


def redun_modal(
    project: Project, *args: str, check: bool = True, timeout: float = 180
) -> subprocess.CompletedProcess:
    """Run the `redun-modal` command in the project; output is stdout and stderr together."""
    process = subprocess.run(
        [REDUN_MODAL, *args],
        cwd=project.root,
        env=project.environment(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
    )
    if check and process.returncode != 0:
        raise AssertionError(f"redun-modal {' '.join(args)} failed:\n{process.stdout}")
    return process


def launch(project: Project, *command: str, executor: str = "default") -> str:
    """Start a detached launch; return its call id."""
    output = project.redun("launch", "--executor", executor, *command).stdout
    found = re.search(r"launched scheduler call ([lf]c-\w+)", output)
    assert found, output
    return found.group(1)


def ran(output: str, task: str) -> int:
    """How many jobs of `task` were dispatched (not served from the cache)."""
    return len(re.findall(rf"\] Run +Job \w+: +{task}\(", output))


def final_line(output: str) -> str:
    return output.strip().splitlines()[-1]


def job_tag_rows(project: Project, task: str) -> list[tuple[str, Any]]:
    """The tags (key, value) of every job of `task` in the project's redun database."""
    query = (
        "select tag.key, tag.value from tag join job on tag.entity_id = job.id "
        "join task on job.task_hash = task.hash where task.name = ?"
    )
    with sqlite3.connect(project.root / ".redun" / "redun.db") as db:
        return [(key, json.loads(value)) for key, value in db.execute(query, (task,))]


def call_tags(project: Project, task: str) -> list[str]:
    """The ``modal_call`` tags of every job of `task`: the call ids, in the database's order."""
    return [value for key, value in job_tag_rows(project, task) if key == "modal_call"]


def inflight_rows(project: Project) -> int:
    """Rows of the reattach ledger in the project's redun database."""
    with sqlite3.connect(project.root / ".redun" / "redun.db") as db:
        try:
            return db.execute("select count(*) from redun_modal_inflight_call").fetchone()[0]
        except sqlite3.OperationalError:  # Not created yet.
            return 0


def wait_for(
    condition: Callable[[], object],
    timeout: float = 10.0,
    *,
    process: subprocess.Popen | None = None,
    interval: float = 0.02,
) -> None:
    """Return as soon as `condition()` holds; AssertionError once `timeout` seconds have passed,
    or at once if `process` (the one expected to bring the condition about) has exited.

    For state another process changes (files, a database, a fake's counters), which no event in
    this process can signal: it is checked every `interval` seconds.
    """
    deadline = time.monotonic() + timeout
    while not condition():
        if process is not None and process.poll() is not None:
            output = process.communicate()[0] if process.stdout is not None else ""
            raise AssertionError(f"exited ({process.returncode}) first:\n{output}")
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(interval)
