"""``modalvol://`` Files in a call: through the Volumes the call mounts, else the backend's
store, with Modal's rules for mounted Volumes.

A container sees what others committed only after it reloads, and others see its writes
only after it commits. So a call reloads a mounted Volume before it first touches it (once per
call), and the worker commits, after the task returned, each mounted Volume the call wrote
through a ``modalvol://`` File. A write to a Volume the call mounts read-only fails, naming
the File and the task.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from redun_modal_executor.backends.base import Backend, BackendRef, Volume
from redun_modal_executor.config import CallOptions, VolumeMount
from redun_modal_executor.errors import VolumeFileError
from redun_modal_executor.files.paths import VolumePath, mounted_volumes, volumes_named
from redun_modal_executor.files.stores import (
    DirectoryStore,
    Entry,
    VolumeStore,
    forget_listings,
    store_for,
)


@dataclass(frozen=True)
class VolumeAccess:
    """What a call needs to reach ``modalvol://`` Files (it travels in the call header): the
    backend it runs on, the Volumes it mounts there, and the backend whose Volumes it reaches
    otherwise (the scheduler's, see ``binding``; a container's own, on Modal)."""

    backend: BackendRef
    store: BackendRef
    mounts: tuple[tuple[str, str, bool], ...] = ()  # (Volume, mount path, read-only)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> VolumeAccess:
        mounts = tuple((volume, path, bool(ro)) for volume, path, ro in data["mounts"])
        backend, store = BackendRef.from_json(data["backend"]), BackendRef.from_json(data["store"])
        return cls(backend, store, mounts)


class CallVolumes(VolumeStore):
    """The Volumes as one call reaches them: a mounted one at its mount path (on a backend
    that mounts them), any other through ``base``."""

    def __init__(self, task: str, access: VolumeAccess) -> None:
        from redun_modal_executor.backends import backend_class

        self.task = task
        self.access = access
        self.remote = backend_class(access.backend.name).remote
        self.base = store_for(access.store)
        self._backend: Backend | None = None
        self.mounts = {volume: (path, read_only) for volume, path, read_only in access.mounts}
        self.written: set[str] = set()
        self._reloaded: set[str] = set()
        self._mounted = DirectoryStore(lambda volume: Path(self.mounts[volume][0]))

    def stat(self, where: VolumePath) -> Entry | None:
        return self._route(where).stat(where)

    def listdir(self, where: VolumePath) -> list[Entry]:
        return self._route(where).listdir(where)

    def open(self, where: VolumePath, mode: str) -> IO:
        writing = any(flag in mode for flag in "wax+")
        return self._route(where, writing).open(where, mode)

    def remove(self, where: VolumePath, recursive: bool = False) -> None:
        self._route(where, writing=True).remove(where, recursive)

    def copy(self, source: VolumePath, target: VolumePath) -> None:
        reader, writer = self._route(source), self._route(target, writing=True)
        if reader is writer:
            writer.copy(source, target)
            return
        with reader.open(source, "rb") as data, writer.open(target, "wb") as out:
            while chunk := data.read(1 << 20):
                out.write(chunk)

    def mkdir(self, where: VolumePath) -> None:
        self._route(where, writing=True).mkdir(where)

    def forget(self, volume: str | None = None) -> None:
        self.base.forget(volume)

    def commit(self) -> None:
        """Make what the call wrote to its mounted Volumes visible to other containers."""
        for volume in sorted(self.written):
            self._volume(volume).commit()
        self.written.clear()

    def _volume(self, name: str) -> Volume:
        """A mounted Volume, to reload or commit."""
        if self._backend is None:
            from redun_modal_executor.backends import open_backend

            self._backend = open_backend(self.access.backend)
        return self._backend.volume(name, self.mounts[name][0])

    def _route(self, where: VolumePath, writing: bool = False) -> VolumeStore:
        mount = self.mounts.get(where.volume)
        if mount is None:
            return self.base
        path, read_only = mount
        if writing and read_only:
            raise VolumeFileError(
                f"Task {self.task}: cannot write {where.url}: the Volume {where.volume!r} is "
                f"mounted read-only at {path} (drop read_only from its volumes entry)"
            )
        if not self.remote:
            return self.base  # Mounted nowhere: the Volume's directory is here.
        if where.volume not in self._reloaded:
            self._reloaded.add(where.volume)
            self._volume(where.volume).reload()
        if writing:
            self.written.add(where.volume)
        return self._mounted


STORE_ENV = "REDUN_MODAL_VOLUME_STORE"
# The call this thread runs, if any (a worker may run calls in several threads).
_current: ContextVar[CallVolumes | None] = ContextVar("redun_modal_call_volumes", default=None)


def current_call() -> CallVolumes | None:
    return _current.get()


@contextmanager
def in_call(task: str, access: VolumeAccess | None) -> Iterator[CallVolumes | None]:
    """Serve ``modalvol://`` Files as the call ``access`` describes, in this thread and in the
    processes it starts, until the context ends; the caller commits once the task returned.
    Listings kept by an earlier call in this process are dropped: other containers may have
    written since."""
    if access is None:
        yield None
        return
    forget_listings()
    call = CallVolumes(task, access)
    token = _current.set(call)
    # For the task's own processes (a script's `redun fs cp`): where Volumes are, unmounted.
    saved = os.environ.get(STORE_ENV)
    os.environ[STORE_ENV] = json.dumps(access.store.to_json())
    try:
        yield call
    finally:
        _current.reset(token)
        if saved is None:
            os.environ.pop(STORE_ENV, None)
        else:
            os.environ[STORE_ENV] = saved


def store_of_parent() -> BackendRef | None:
    """The backend whose Volumes the call that started this process reaches, if any."""
    found = os.environ.get(STORE_ENV)
    return BackendRef.from_json(json.loads(found)) if found else None


def call_access(
    options: CallOptions,
    values: Iterable[Any],
    backend: Backend,
    volumes_of: BackendRef | None,
    mount_root: str,
) -> tuple[CallOptions, VolumeAccess]:
    """A job's options, with the Volumes that its ``modalvol://`` arguments name mounted at
    ``<mount_root>/<volume>`` where the task does not mount them itself (on a backend that
    mounts Volumes), and the ``VolumeAccess`` its call carries. ``volumes_of`` is the backend
    whose Volumes the scheduler's Files name (``binding``), if one does."""
    mounted = mounted_volumes(options.volumes)
    store = volumes_of or backend.ref
    if backend.remote:
        store = backend.ref  # A container reaches its own backend's Volumes.
        missing = sorted(set(volumes_named(values)) - set(mounted))
        if missing:
            extra = [(f"{mount_root}/{volume}", VolumeMount(volume)) for volume in missing]
            volumes = sorted([*options.volumes, *extra], key=lambda pair: pair[0])
            options = dataclasses.replace(options, volumes=tuple(volumes))
            mounted = mounted_volumes(options.volumes)
    mounts = tuple(
        (volume, path, read_only) for volume, (path, read_only) in sorted(mounted.items())
    )
    return options, VolumeAccess(backend.ref, store, mounts)
