"""What the test modules share: a throwaway redun project and the `redun` and `redun-modal`
commands run in it as a user would, the configs and names of the "deployed" app, readers of
`redun`'s output and of its database (sqlite or Postgres), and a bounded wait. Fixtures are in
conftest.py; test modules import from here, never from one another."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from redun.backends.db import Job, Tag, Task

from redun_modal_executor.inflight import INFLIGHT_CALLS

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


# A test so marked runs twice: its project's database is redun's default sqlite file, then a
# new Postgres database (the `postgres_db_uri` fixture; skipped where no server is installed).
ON_EACH_DATABASE = pytest.mark.parametrize("project", ["sqlite", "postgres"], indirect=True)
ON_POSTGRES = pytest.mark.parametrize("project", ["postgres"], indirect=True)  # Postgres only.


@dataclass
class Project:
    root: Path
    db_uri: str | None = None  # None: redun's default, .redun/redun.db

    def write(self, relative: str, text: str) -> Path:
        path = self.root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
        return path

    def configure(self, config: str) -> Path:
        """Write `.redun/redun.ini`: `config`, then the project's db_uri where it has one."""
        backend = f"\n[backend]\ndb_uri = {self.db_uri}\n" if self.db_uri else ""
        return self.write(".redun/redun.ini", textwrap.dedent(config) + backend)

    @cached_property
    def database(self) -> sa.engine.Engine:
        """The project's redun database, read through SQLAlchemy whichever it is. A connection
        per query (NullPool), so that no connection outlives the query."""
        uri = self.db_uri or f"sqlite:///{self.root / '.redun' / 'redun.db'}"
        return sa.create_engine(uri, poolclass=sa.pool.NullPool)

    def query(self, statement: Any) -> list[sa.Row]:
        with self.database.connect() as connection:
            return list(connection.execute(statement))

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


def inflight_rows(project: Project) -> dict[str, str]:
    """The reattach ledger: eval_hash -> Modal call id (empty before the table exists)."""
    if not sa.inspect(project.database).has_table(INFLIGHT_CALLS.name):
        return {}
    query = sa.select(INFLIGHT_CALLS.c.eval_hash, INFLIGHT_CALLS.c.call_id)
    return dict(project.query(query))


def job_tag_rows(project: Project, task: str) -> list[tuple[str, Any]]:
    """(key, value) of each tag of each job of `task`, values decoded from JSON."""
    query = (
        sa.select(Tag.key, Tag.value)
        .join(Job, Tag.entity_id == Job.id)
        .join(Task, Job.task_hash == Task.hash)
        .where(Task.name == task)
    )
    return [(key, value) for key, value in project.query(query)]


def job_tags(project: Project, task: str) -> dict:
    return dict(job_tag_rows(project, task))


def call_tags(project: Project, task: str) -> list[str]:
    """The ``modal_call`` tags of every job of ``task``."""
    return [value for key, value in job_tag_rows(project, task) if key == "modal_call"]


def redun_modal(project: Project, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run the `redun-modal` command in the project; output is stdout and stderr together."""
    process = subprocess.run(
        [REDUN_MODAL, *args],
        cwd=project.root,
        env=project.environment(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=180,
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
