"""Where a process reaches the files of Volumes: ``VolumeStore``, and the one that is a
directory per Volume (the local backend's volumes, or Volumes mounted in a container).

A store answers in terms of ``VolumePath``; the file system (``filesystem.py``) turns URLs
into those and hashes what the store reports. Entries carry what Modal's Volume listing
carries (``modal.volume.FileEntry``): the size, and the modification time in whole seconds,
so that every store gives one file the same hash.
"""

from __future__ import annotations

import os
import shutil
import stat
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING

if TYPE_CHECKING:
    from redun_modal_executor.backends.base import BackendRef
    from redun_modal_executor.files.paths import VolumePath


@dataclass(frozen=True)
class Entry:
    """A file or directory of a Volume, as its listing describes it."""

    path: VolumePath
    is_dir: bool
    size: int
    mtime: int  # seconds since the epoch, whole


class VolumeStore(ABC):
    """The files of Volumes, as one process reaches them."""

    @abstractmethod
    def stat(self, where: VolumePath) -> Entry | None:
        """The entry at ``where``, or None if there is none."""

    @abstractmethod
    def listdir(self, where: VolumePath) -> list[Entry]:
        """Every file and directory below ``where``, at any depth (none if it is missing)."""

    @abstractmethod
    def open(self, where: VolumePath, mode: str) -> IO:
        """A stream on the file, in ``mode`` as ``open`` takes it (text or binary)."""

    @abstractmethod
    def remove(self, where: VolumePath, recursive: bool = False) -> None:
        """Remove a file (or, with ``recursive``, a directory); nothing if it is missing."""

    @abstractmethod
    def copy(self, source: VolumePath, target: VolumePath) -> None:
        """Copy one file, within a Volume or between two."""

    @abstractmethod
    def mkdir(self, where: VolumePath) -> None:
        """Make a directory (and its parents)."""

    @abstractmethod
    def forget(self, volume: str | None = None) -> None:
        """Drop what this store keeps of ``volume`` (every Volume, by default): it may have
        changed elsewhere."""


class DirectoryStore(VolumeStore):
    """Volumes that are directories here: ``root_of(volume)`` holds a Volume's files."""

    def __init__(self, root_of: Callable[[str], Path]) -> None:
        self.root_of = root_of

    def local_path(self, where: VolumePath) -> Path:
        """Where the file is on this machine."""
        root = self.root_of(where.volume)
        return root / where.path if where.path else root

    def stat(self, where: VolumePath) -> Entry | None:
        try:
            status = self.local_path(where).stat()
        except (FileNotFoundError, NotADirectoryError):
            return None
        return _entry(where, status)

    def listdir(self, where: VolumePath) -> list[Entry]:
        top = self.local_path(where)
        entries = []
        for directory, names, files in os.walk(top):
            for name in (*names, *files):
                local = Path(directory, name)
                relative = local.relative_to(top).as_posix()
                entries.append(_entry(where.child(relative), local.stat()))
        return entries

    def open(self, where: VolumePath, mode: str) -> IO:
        local = self.local_path(where)
        if any(flag in mode for flag in "wax+"):
            local.parent.mkdir(parents=True, exist_ok=True)
        return open(local, mode)  # noqa: SIM115 - the caller closes it

    def remove(self, where: VolumePath, recursive: bool = False) -> None:
        local = self.local_path(where)
        if recursive and local.is_dir():
            shutil.rmtree(local)
        else:
            local.unlink(missing_ok=True)

    def copy(self, source: VolumePath, target: VolumePath) -> None:
        destination = self.local_path(target)
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self.local_path(source), destination)

    def mkdir(self, where: VolumePath) -> None:
        self.local_path(where).mkdir(parents=True, exist_ok=True)

    def forget(self, volume: str | None = None) -> None:
        """Nothing to drop: every look goes to the directory itself."""


def _entry(where: VolumePath, status: os.stat_result) -> Entry:
    is_dir = stat.S_ISDIR(status.st_mode)
    return Entry(where, is_dir, 0 if is_dir else status.st_size, int(status.st_mtime))


# One store per backend a process reaches Volumes through, so that listings are shared.
_stores: dict[tuple[str, str | None, str | None], VolumeStore] = {}
_stores_lock = threading.Lock()


def store_for(ref: BackendRef) -> VolumeStore:
    """This process's store for the Volumes of the backend ``ref`` names."""
    key = (ref.name, ref.environment, ref.local_dir)
    with _stores_lock:
        store = _stores.get(key)
        if store is None:
            from redun_modal_executor.backends import backend_class

            store = _stores[key] = backend_class(ref.name).volume_store(ref)
        return store


def forget_listings() -> None:
    """Drop every store's listings: a job has ended, and it may have written anywhere."""
    with _stores_lock:
        stores = list(_stores.values())
    for store in stores:
        store.forget()
