"""The ``local`` backend: the generic worker in separate processes on this machine.

What Modal keeps in the cloud lives under one directory, ``local_dir`` (by default
``modal-local`` in the redun config directory)::

    <local_dir>/volumes/<volume>/...      a volume (see storage.DirectoryVolume)
    <local_dir>/calls/lc-<id>/payload     a detached call: what it runs,
                             /output.log  its output so far,
                             /pid         its process,
                             /result      its result envelope, once it has ended
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

from redun_modal_executor.backends.base import Backend, BackendRef, DetachedState, Volume
from redun_modal_executor.backends.local.pool import WorkerPool, worker_environment
from redun_modal_executor.backends.local.storage import DirectoryVolume, FileLock
from redun_modal_executor.backends.local.template import WORKER_MODULE
from redun_modal_executor.calls import Call
from redun_modal_executor.config import (
    BucketMount,
    CallOptions,
    ExecutorConfig,
    TaskOptionError,
    redun_config_dir,
)
from redun_modal_executor.errors import LaunchError
from redun_modal_executor.files.stores import DirectoryStore, VolumeStore
from redun_modal_executor.launch.lock import DatabaseLock

CALL_ID_PREFIX = "lc-"
CALL_ID_ENV = "REDUN_MODAL_CALL_ID"  # Set in a detached call's process.
DETACHED_PAYLOAD = "payload"
DETACHED_OUTPUT = "output.log"
DETACHED_PID = "pid"
DETACHED_RESULT = "result"
_POLL_SECONDS = 0.5


class LocalBackend(Backend):
    """Calls in a pool of worker processes; volumes and detached calls under ``local_dir``."""

    def __init__(self, ref: BackendRef) -> None:
        super().__init__(ref)
        assert ref.local_dir is not None
        self.root = Path(ref.local_dir)
        self._pool = WorkerPool(ref.max_workers or os.cpu_count() or 1)

    @classmethod
    def ref_for(cls, config: ExecutorConfig) -> BackendRef:
        if config.local_dir:
            root = Path(config.local_dir).expanduser().resolve()
        else:
            root = redun_config_dir() / "modal-local"
        return BackendRef(
            config.backend,
            config.app_name,
            config.environment,
            local_dir=str(root),
            max_workers=config.max_workers,
        )

    def spawn(self, calls: Sequence[Call]) -> None:
        for call in calls:
            refused = _bucket_refused(call)
            if refused is not None:
                call.finish(refused)
            else:
                self._pool.submit(call)

    def spawn_detached(self, call: Call) -> str:
        """A worker process of its own, in its own session, that outlives this one."""
        refused = _bucket_refused(call)
        if refused is not None:
            raise refused
        call_id = CALL_ID_PREFIX + uuid.uuid4().hex[:24]
        call_dir = self.root / "calls" / call_id
        call_dir.mkdir(parents=True)
        (call_dir / DETACHED_PAYLOAD).write_bytes(call.take_payload())
        with (call_dir / DETACHED_OUTPUT).open("wb") as output:
            subprocess.Popen(
                [sys.executable, "-m", WORKER_MODULE, "--detached", str(call_dir)],
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                env=worker_environment(call.options.env),
                start_new_session=True,
            )
        return call_id

    def stop(self) -> int:
        return self._pool.stop()

    def detached_state(self, call_id: str, wait: bool) -> DetachedState:
        call_dir = self._call_dir(call_id)
        while True:
            result = call_dir / DETACHED_RESULT
            if result.exists():
                return DetachedState(envelope=result.read_bytes())
            if not _process_alive(call_dir / DETACHED_PID):
                if result.exists():  # It finished between the two looks.
                    continue
                output = call_dir / DETACHED_OUTPUT
                return DetachedState(failure=f"its process ended without a result; see {output}")
            if not wait:
                return DetachedState(running=True)
            time.sleep(_POLL_SECONDS)

    def log_lines(self, call_id: str, entries: int) -> Iterator[str]:
        with (self._call_dir(call_id) / DETACHED_OUTPUT).open(errors="replace") as log:
            yield from log

    def volume(self, name: str, mount: str) -> Volume:
        # Not mounted anywhere: every process here sees the directory itself.
        return DirectoryVolume(name, str(_volume_dir(self.root, name)))

    @classmethod
    def volume_store(cls, ref: BackendRef) -> VolumeStore:
        assert ref.local_dir is not None
        root = Path(ref.local_dir)
        return DirectoryStore(lambda name: _volume_dir(root, name))

    def database_lock(self, volume: Volume, file: str) -> DatabaseLock:
        return FileLock(Path(volume.path) / (file + ".lock"), f"{file} on volume {volume.name}")

    def current_call_id(self) -> str:
        return os.environ.get(CALL_ID_ENV) or f"pid-{os.getpid()}"

    def describe(self, options: CallOptions) -> str:
        return f"local worker processes (max_workers {self.ref.max_workers or 'CPUs'})"

    def _call_dir(self, call_id: str) -> Path:
        call_dir = self.root / "calls" / call_id
        if not call_dir.is_dir():
            raise LaunchError(f"no local launch {call_id} under {call_dir.parent}")
        return call_dir


def _volume_dir(root: Path, name: str) -> Path:
    return root / "volumes" / name


def _bucket_refused(call: Call) -> TaskOptionError | None:
    """Why a call that mounts a cloud bucket cannot run here: nothing is mounted for local
    workers (a Volume's mount path is this machine's own path), and a bucket's keys cannot
    appear at one, so the task would read an empty or unrelated directory."""
    for path, mount in call.options.volumes:
        if isinstance(mount, BucketMount):
            return TaskOptionError(
                f"{call.label}: mounts the bucket {mount.bucket!r} at {path}, and the local "
                "backend mounts nothing (its workers see this machine's paths). Read the "
                "bucket through redun Files (File('s3://...')), or run the task on Modal."
            )
    return None


def _process_alive(pid_file: Path) -> bool:
    try:
        pid = int(pid_file.read_text())
    except (OSError, ValueError):
        return True  # Not started far enough to write its pid.
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
