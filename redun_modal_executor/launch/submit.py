"""Submitting a launch: ``redun launch`` turned into one call that runs a scheduler.

redun's launch submits one script job, ``redun.script_task`` running ``redun run ...``, and
without ``--wait`` stops at once. Here such a job is a *launch*: its call also carries the
project's redun config and where the launched scheduler's database lives. The worker's side
is ``launch.scheduler``.

Where the database lives follows the project's ``db_uri``:

- a sqlite file (redun's default) lives on this machine, out of the worker's reach, so the
  launched scheduler keeps its own sqlite database on a volume (``scheduler_volume``), one
  launch at a time, and ``redun-modal pull`` merges it into the local one;
- any other ``db_uri`` (Postgres) is used as is, with credentials from Modal Secrets.
"""

from __future__ import annotations

import configparser
import dataclasses
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from redun_modal_executor.backends import Backend
from redun_modal_executor.config import CallOptions, ExecutorConfig, VolumeMount, redun_config_dir
from redun_modal_executor.errors import (
    DatabaseBusyError,
    LaunchError,
    ModalAuthError,
    ModalUnreachableError,
)
from redun_modal_executor.launch.lock import busy_message
from redun_modal_executor.launch.spec import DatabaseSpec, LaunchSpec

if TYPE_CHECKING:
    from redun.scheduler import Job

SCRIPT_TASK = "redun.script_task"
DEFAULT_DB_URI = "sqlite:///redun.db"  # redun's, relative to the config directory


def is_launch(job: Job) -> bool:
    """What ``redun launch`` submits: redun's script task as a root job (a script inside a
    workflow always has a parent, redun's ``script`` task)."""
    return job.task.fullname == SCRIPT_TASK and job.parent_job is None


def build_launch(config: ExecutorConfig, backend: Backend) -> LaunchSpec:
    """What a launch call carries besides its command."""
    files = project_config_files(redun_config_dir())
    return LaunchSpec(
        config_files=files,
        database=database_spec(config, backend, configured_db_uri(files)),
        sync_interval=config.scheduler_sync_interval,
        # Where code is not shipped, the worker runs where the client runs, on its files.
        workdir=None if backend.ships_code else os.getcwd(),
    )


def project_config_files(config_dir: Path) -> dict[str, str]:
    """The ``*.ini`` files of the redun config directory, by name."""
    if not config_dir.is_dir():
        return {}
    return {path.name: path.read_text() for path in sorted(config_dir.glob("*.ini"))}


def configured_db_uri(files: dict[str, str]) -> str:
    parser = configparser.ConfigParser(interpolation=None)
    parser.read_string(files.get("redun.ini", ""))
    return parser.get("backend", "db_uri", fallback="") or DEFAULT_DB_URI


def database_spec(config: ExecutorConfig, backend: Backend, db_uri: str) -> DatabaseSpec | None:
    """Where the launched scheduler's database lives: on the scheduler volume for a sqlite
    ``db_uri``, else (None) the configured database itself."""
    if not db_uri.startswith("sqlite:"):
        _check_shared_db_uri(backend, db_uri)
        return None
    volume = backend.volume(config.scheduler_volume_name, config.scheduler_mount)
    return DatabaseSpec(backend.ref, volume.name, volume.path)


def check_database_free(backend: Backend, database: DatabaseSpec | None) -> None:
    """Create the scheduler volume if missing, and refuse a launch whose sqlite database
    another launched scheduler is writing. (The launched call checks again, under the lock;
    this says so before anything starts.) Blocking: call it off the scheduler's thread."""
    if database is None:
        return
    volume = backend.volume(database.volume, database.mount)
    lock = backend.database_lock(volume, database.file)
    volume.ensure()
    holder = lock.holder()
    if holder is not None:
        raise DatabaseBusyError(busy_message(lock.where, holder))


def check_launch(backend: Backend, launch: LaunchSpec, log: Callable[[str], None]) -> None:
    """``check_database_free``, where it can be done: a failure to ask (other than Modal's
    credentials or reach) is logged, and the launched call checks again under the lock."""
    try:
        check_database_free(backend, launch.database)
    except (DatabaseBusyError, ModalAuthError, ModalUnreachableError):
        raise
    except Exception as error:
        log(f"could not check who uses the scheduler database: {error}")


def checked_encode(
    backend: Backend, launch: LaunchSpec, encode: Callable[[], bytes], log: Callable[[str], None]
) -> Callable[[], bytes]:
    """``encode``, after ``check_launch`` (both off the scheduler's thread)."""

    def check_then_encode() -> bytes:
        check_launch(backend, launch, log)
        return encode()

    return check_then_encode


def _check_shared_db_uri(backend: Backend, db_uri: str) -> None:
    parsed = urlparse(db_uri)
    if parsed.password:
        raise LaunchError(
            "the db_uri in redun.ini holds a password, which would travel with the launch. "
            "Remove it from db_uri and put it in a Modal Secret as REDUN_DB_PASSWORD (with "
            "REDUN_DB_USERNAME), named in scheduler_secrets; redun reads both from there."
        )
    if backend.remote and parsed.hostname in ("localhost", "127.0.0.1", "::1"):
        raise LaunchError(
            f"db_uri points at {parsed.hostname}, which a scheduler on Modal cannot reach. "
            "Use a database host reachable from Modal, or a sqlite db_uri (the launched "
            "scheduler then keeps its database on scheduler_volume)."
        )


def launch_options(
    options: CallOptions,
    config: ExecutorConfig,
    backend: Backend,
    launch: LaunchSpec,
    job_options: dict[str, Any],
) -> CallOptions:
    """A launch's call options: its task options (``redun launch -o``) plus the volume, the
    scheduler secrets and, unless given, ``scheduler_timeout``."""
    database = launch.database
    volumes = options.volumes
    if database is not None and backend.remote:  # Mounted, so that the call can see it.
        mount = (database.mount, VolumeMount(database.volume))
        volumes = tuple(sorted({*volumes, mount}, key=lambda pair: pair[0]))
    secrets = tuple(dict.fromkeys((*options.secrets, *config.scheduler_secrets)))
    timeout = options.timeout if "timeout" in job_options else config.scheduler_timeout
    return dataclasses.replace(options, volumes=volumes, secrets=secrets, timeout=timeout)


def follow_hint(call_id: str, launch: LaunchSpec) -> str:
    """What a user can do with a detached launch, printed when it starts."""
    hint = (
        f"launched scheduler call {call_id}; it goes on after this command exits. "
        f"Follow it: `redun-modal logs {call_id}`; its outcome: `redun-modal status "
        f"{call_id}` (--wait to wait for it)."
    )
    if launch.database is not None:
        hint += " Then `redun-modal pull` brings its records here, for `redun log`."
    return hint
