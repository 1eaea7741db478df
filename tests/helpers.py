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
import uuid
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from redun.backends.db import Job, Tag, Task

from redun_modal_executor.calls import CallAddress
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
    """Where each job of ``task`` ran, from its tags: ``modal_call``, and ``:<modal_input>``
    for an input of a batch (the reattach ledger's form)."""
    query = (
        sa.select(Tag.entity_id, Tag.key, Tag.value)
        .join(Job, Tag.entity_id == Job.id)
        .join(Task, Job.task_hash == Task.hash)
        .where(Task.name == task, Tag.key.in_(["modal_call", "modal_input"]))
    )
    by_job: dict[str, dict[str, Any]] = {}
    for job_id, key, value in project.query(query):
        by_job.setdefault(job_id, {})[key] = value
    return [
        str(CallAddress(tags["modal_call"], tags.get("modal_input"))) for tags in by_job.values()
    ]


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


# ----- The live suite (tests/live): real Modal, opt-in; see docs/testing.rst -----

LIVE_OPT_IN = "REDUN_MODAL_LIVE"
LIVE_ENVIRONMENT = "REDUN_MODAL_LIVE_ENVIRONMENT"
LIVE_SECRET_VARIABLE = "RMX_LIVE_SECRET"  # the one variable of the live Secret
# Bounds of one `redun` command, and of one wait on Modal's state, in a live test: generous
# (containers start cold), but a test that hangs still ends.
LIVE_RUN_SECONDS = 600
LIVE_WAIT_SECONDS = 180


def modal_credentials_configured(environ: Mapping[str, str]) -> bool:
    """Whether the modal client would find a token, as `modal.config` resolves one: the
    MODAL_TOKEN_ID and MODAL_TOKEN_SECRET variables, else the active profile of the config file
    (MODAL_CONFIG_PATH, default ~/.modal.toml; MODAL_PROFILE, else the profile marked active,
    else "default"). Reads files only: no network."""
    token_id, token_secret = environ.get("MODAL_TOKEN_ID"), environ.get("MODAL_TOKEN_SECRET")
    if token_id and token_secret:
        return True
    path = Path(environ.get("MODAL_CONFIG_PATH") or Path("~/.modal.toml").expanduser())
    try:
        if sys.version_info >= (3, 11):
            import tomllib

            profiles = tomllib.loads(path.read_text())
        else:  # pragma: no cover - the modal client depends on `toml`
            import toml

            profiles = toml.loads(path.read_text())
    except Exception:  # Missing or unreadable: no profile.
        return False
    active = next((name for name, p in profiles.items() if p.get("active") is True), "default")
    profile = profiles.get(environ.get("MODAL_PROFILE") or active) or {}
    token_id = token_id or profile.get("token_id")
    token_secret = token_secret or profile.get("token_secret")
    return bool(token_id and token_secret)


def live_skip_reason(environ: Mapping[str, str] = os.environ) -> str | None:
    """Why the live suite cannot run here, or None when it can: it needs the opt-in variable
    and Modal credentials."""
    missing = []
    if environ.get(LIVE_OPT_IN) != "1":
        missing.append(f"{LIVE_OPT_IN}=1 is not set")
    if not modal_credentials_configured(environ):
        missing.append(
            "no Modal credentials (neither MODAL_TOKEN_ID and MODAL_TOKEN_SECRET nor a "
            "profile with token_id and token_secret in ~/.modal.toml)"
        )
    if not missing:
        return None
    return (
        f"live Modal suite: {'; '.join(missing)}. To run it, set {LIVE_OPT_IN}=1 and "
        "MODAL_TOKEN_ID and MODAL_TOKEN_SECRET (or run `modal token new`); optionally "
        f"{LIVE_ENVIRONMENT}=<Modal environment> (default: the profile's)"
    )


@dataclass(frozen=True)
class LiveApp:
    """The app a live session deploys, and everything else the session may create on Modal."""

    name: str
    environment: str | None = None
    secret_value: str = ""

    @classmethod
    def unique(cls, environment: str | None) -> LiveApp:
        return cls(f"rmx-live-{uuid.uuid4().hex[:10]}", environment or None, uuid.uuid4().hex)

    # What the executor creates, named after the app (backends/modal: app.py, __init__.py,
    # config/settings.py's scheduler_volume_name).
    @property
    def code_dict(self) -> str:
        return f"{self.name}-code"

    @property
    def lock_dict(self) -> str:
        return f"{self.name}-locks"

    @property
    def scheduler_volume(self) -> str:
        return f"{self.name}-scheduler"

    # What the session creates for its tests.
    @property
    def effects_dict(self) -> str:
        """Where tasks record each execution (`record` in `workflow`), for tests to count."""
        return f"{self.name}-effects"

    @property
    def data_volume(self) -> str:
        return f"{self.name}-data"

    @property
    def secret(self) -> str:
        return f"{self.name}-secret"

    def resources(self) -> list[tuple[str, str]]:
        """(kind, name) of everything to remove at the end, the app first: stopping it ends
        its containers, which may hold the Volumes."""
        return [
            ("app", self.name),
            ("dict", self.code_dict),
            ("dict", self.lock_dict),
            ("dict", self.effects_dict),
            ("volume", self.scheduler_volume),
            ("volume", self.data_volume),
            ("secret", self.secret),
        ]

    def cleanup_commands(self) -> list[str]:
        """The `modal` commands that remove by hand what `resources` names."""
        env = f" --env {self.environment}" if self.environment else ""
        commands = {
            "app": "app stop --yes",
            "dict": "dict delete --yes --allow-missing",
            "volume": "volume delete --yes --allow-missing",
            "secret": "secret delete --yes --allow-missing",
        }
        return [f"modal {commands[kind]}{env} {name}" for kind, name in self.resources()]

    def config(self) -> str:
        """The redun.ini of a live project: the default executor on this app; `here` is
        redun's own in-process executor, for tasks that must run on the client."""
        environment = f"environment = {self.environment}\n" if self.environment else ""
        return (
            "[executors.default]\n"
            "type = modal\n"
            f"app_name = {self.name}\n"
            f"{environment}"
            "progress_interval = 10\n"
            "\n"
            "[executors.here]\n"
            "type = local\n"
        )

    def workflow(self, run: str, body: str) -> str:
        """A workflow file: `body` after the names of this app's objects and `record(what)`,
        which notes one execution of `what` in run `run` (see `live_executions`)."""
        prelude = f'''\
            EFFECTS = {self.effects_dict!r}
            DATA_VOLUME = {self.data_volume!r}
            SECRET = {self.secret!r}
            SECRET_VARIABLE = {LIVE_SECRET_VARIABLE!r}
            ENVIRONMENT = {self.environment!r}
            RUN = {run!r}


            def record(what):
                """Note one execution of `what` in the Modal Dict EFFECTS."""
                import time
                import uuid

                import modal

                effects = modal.Dict.from_name(EFFECTS, environment_name=ENVIRONMENT)
                effects.put(f"{{RUN}}/{{what}}/{{uuid.uuid4().hex}}", time.time())


            '''
        return textwrap.dedent(prelude) + textwrap.dedent(body)


def live_executions(app: LiveApp, run: str) -> Counter[str]:
    """How many times each `record(what)` of run `run` happened, read from Modal."""
    import modal

    effects = modal.Dict.from_name(app.effects_dict, environment_name=app.environment)
    counts: Counter[str] = Counter()
    for key in effects.keys():
        prefix, _, _ = str(key).rpartition("/")
        key_run, _, what = prefix.partition("/")
        if key_run == run and what:
            counts[what] += 1
    return counts


def call_outcome(address: str) -> str:
    """What Modal says of a call (or an input of one: ``call_tags``' form) now: "running",
    "returned", or "raised <exception type>"."""
    import modal

    where = CallAddress.parse(address)
    try:
        modal.FunctionCall.from_id(where.call_id).get(timeout=0, index=where.index or 0)
    except TimeoutError:
        return "running"
    except Exception as error:
        return f"raised {type(error).__name__}"
    return "returned"


def call_log(address: str, entries: int = 100) -> str:
    """The last `entries` entries of a call's Modal log (of its batch, for an input of one:
    ``call_tags``' form), as one text."""
    import modal

    tail = modal.FunctionCall.from_id(CallAddress.parse(address).call_id).logs.tail(
        entries=entries
    )
    return "".join(entry.message for entry in tail)


class ModalCleanup:
    """Removes one thing a live session created, by kind, through the modal client."""

    def __init__(self, environment: str | None) -> None:
        self.environment = environment

    def app(self, name: str) -> None:
        """Stop the deployed app (what `modal app stop` does): its containers end, and a
        stopped app is no longer served. Modal keeps no way to delete an app."""
        import modal
        import modal.exception

        try:
            app = modal.App.lookup(name, environment_name=self.environment)
        except modal.exception.NotFoundError:
            return  # Never deployed, or stopped already.
        app.stop()

    def dict(self, name: str) -> None:
        import modal

        modal.Dict.objects.delete(name, allow_missing=True, environment_name=self.environment)

    def volume(self, name: str) -> None:
        import modal

        modal.Volume.objects.delete(name, allow_missing=True, environment_name=self.environment)

    def secret(self, name: str) -> None:
        import modal

        modal.Secret.objects.delete(name, allow_missing=True, environment_name=self.environment)


def tear_down_live_app(app: LiveApp, cleanup: Any = None) -> list[str]:
    """Remove everything `app.resources()` names, each on its own: one that fails does not
    keep the others from going. Returns one line per failure."""
    cleanup = cleanup if cleanup is not None else ModalCleanup(app.environment)
    failures = []
    for kind, name in app.resources():
        try:
            getattr(cleanup, kind)(name)
        except Exception as error:
            failures.append(f"{kind} {name}: {type(error).__name__}: {error}")
    return failures


def teardown_report(app: LiveApp, failures: list[str]) -> str:
    """What a failed teardown says: what was left, and the commands that remove it all."""
    commands = "\n".join(f"  {command}" for command in app.cleanup_commands())
    return (
        f"the live suite could not remove everything it created on Modal for {app.name}:\n"
        + "\n".join(f"  {failure}" for failure in failures)
        + "\nRemove what is left by hand (the deletions skip what is gone already; "
        + f"`modal app stop` says so of an app stopped already):\n{commands}"
    )
