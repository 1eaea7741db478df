"""``ModalVolumeFileSystem``: redun's file system for ``modalvol://<volume>/<path>``.

Which Volumes a URL means depends on where the process is:

* in a call (a worker), the call's own ``VolumeAccess`` (``call_volumes``): the Volumes it
  mounts at their mount path, the others through its backend;
* in a scheduler (``redun run``, or a launched one), the backend of its ``modal`` executor
  sections (``binding``): the local backend's volume directories, or Modal's Volume API in
  the section's ``environment``;
* in a process a call started (a script's ``redun fs cp``), the backend the call reaches
  unmounted Volumes through (``call_volumes.STORE_ENV``);
* anywhere else, Modal's Volume API in the profile's environment.

A File's hash is made of its URL, its size and its modification time in whole seconds, as the
Volume lists them (redun hashes local files by size and mtime too): the same on the client,
in a container and on both backends. A missing File hashes as size and mtime -1.

This module is registered while redun itself is being imported (``_registration``), so it
imports the rest of ``files/``, which imports redun, only when a File is first used.
"""

from __future__ import annotations

import dataclasses
import re
import shlex
from collections.abc import Iterator
from typing import IO, TYPE_CHECKING, Any

from redun.file import FileSystem, register_filesystem
from redun.hashing import hash_struct

from redun_modal_executor.files import SCHEME

if TYPE_CHECKING:
    from redun_modal_executor.backends.base import BackendRef
    from redun_modal_executor.files.paths import VolumePath
    from redun_modal_executor.files.stores import Entry, VolumeStore


class ModalVolumeFileSystem(FileSystem):
    """Files and directories on Modal Volumes (``modalvol://<volume>/<path>``)."""

    name = SCHEME

    def _open(self, path: str, mode: str, **kwargs: Any) -> IO:
        store, where = _located(path)
        return store.open(where, mode)

    def exists(self, path: str) -> bool:
        store, where = _located(path)
        return store.stat(where) is not None

    def remove(self, path: str) -> None:
        store, where = _located(path)
        store.remove(where)

    def mkdir(self, path: str) -> None:
        store, where = _located(path)
        store.mkdir(where)

    def rmdir(self, path: str, recursive: bool = False) -> None:
        store, where = _located(path)
        if not recursive and store.listdir(where):
            raise OSError(f"{path}: directory not empty")
        store.remove(where, recursive=True)

    def get_hash(self, path: str) -> str:
        store, where = _located(path)
        return _hash(where, store.stat(where))

    def iter_file_hashes(self, path: str) -> Iterator[str]:
        """The hashes of the files below a directory: one listing of it."""
        store, where = _located(path)
        for entry in store.listdir(where):
            if not entry.is_dir:
                yield _hash(entry.path, entry)

    def copy(self, src_path: str, dest_path: str) -> None:
        if src_path.startswith(f"{SCHEME}://") and dest_path.startswith(f"{SCHEME}://"):
            store, source = _located(src_path)
            store.copy(source, _located(dest_path)[1])
        else:  # To or from another file system: through a stream.
            super().copy(src_path, dest_path)

    def shell_copy(
        self,
        src_path: str | None,
        dest_path: str | None,
        recursive: bool = False,
        as_mount: bool = False,
    ) -> str:
        """A ``redun fs cp`` command (``-`` for standard input or output): the copy runs
        through this file system in the command's process, which reaches the Volumes as the
        call that runs it does (unmounted). Staged Dirs are not supported."""
        if recursive:
            raise ValueError(f"{src_path or dest_path}: a modalvol:// Dir cannot be staged")
        return f"redun fs cp {shlex.quote(src_path or '-')} {shlex.quote(dest_path or '-')}"

    def glob(self, pattern: str) -> list[str]:
        """The files and directories matching ``pattern`` (``*``, ``?``, ``[...]``; ``**`` for
        any depth), from one listing of the deepest directory without a wildcard."""
        store, where = _located(pattern)
        fixed, _, _ = re.split(r"[*?\[]", where.path, maxsplit=1)[0].rpartition("/")
        top = dataclasses.replace(where, path=fixed)
        matcher = _glob_regex(where.path)
        found = [entry.path for entry in store.listdir(top)]
        if top.path and store.stat(top) is not None:
            found.append(top)
        return sorted(path.url for path in found if matcher.fullmatch(path.path))

    def isfile(self, path: str) -> bool:
        store, where = _located(path)
        entry = store.stat(where)
        return entry is not None and not entry.is_dir

    def isdir(self, path: str) -> bool:
        store, where = _located(path)
        entry = store.stat(where)
        return entry is not None and entry.is_dir

    def filesize(self, path: str) -> int:
        store, where = _located(path)
        entry = store.stat(where)
        if entry is None or entry.is_dir:
            raise FileNotFoundError(f"{path}: no such file")
        return entry.size


def register() -> None:
    """Make ``modalvol://`` a redun file system (idempotent)."""
    register_filesystem(ModalVolumeFileSystem)


def _hash(where: VolumePath, entry: Entry | None) -> str:
    size, mtime = (entry.size, entry.mtime) if entry is not None else (-1, -1)
    return hash_struct(["File", SCHEME, where.url, size, str(mtime)])


def _glob_regex(pattern: str) -> re.Pattern[str]:
    """A pattern's regex: ``*``, ``?`` and ``[...]`` within one path segment, a ``**`` segment
    for any number of segments (as redun's local glob, which is recursive)."""
    segments = pattern.split("/")
    regex = ""
    for index, segment in enumerate(segments):
        last = index == len(segments) - 1
        if segment == "**":
            regex += ".*" if last else "(?:[^/]+/)*"
        else:
            regex += _segment_regex(segment) + ("" if last else "/")
    return re.compile(regex)


def _segment_regex(segment: str) -> str:
    out, at = "", 0
    while at < len(segment):
        char = segment[at]
        close = segment.find("]", at + 2) if char == "[" else -1
        if char == "*":
            out += "[^/]*"
        elif char == "?":
            out += "[^/]"
        elif close > 0:
            inside = segment[at + 1 : close]
            out += "[" + ("^" + inside[1:] if inside.startswith("!") else inside) + "]"
            at = close
        else:
            out += re.escape(char)
        at += 1
    return out


def _located(url: str) -> tuple[VolumeStore, VolumePath]:
    """Where ``url`` is, and the store that reaches it for this process now (see the
    module's doc)."""
    from redun_modal_executor.backends.base import BackendRef
    from redun_modal_executor.config.settings import DEFAULT_APP_NAME
    from redun_modal_executor.files.call_volumes import current_call, store_of_parent
    from redun_modal_executor.files.paths import parse
    from redun_modal_executor.files.stores import store_for

    where = parse(url)
    call = current_call()
    if call is not None:
        return call, where
    backend = _scheduler_backend() or store_of_parent() or BackendRef("modal", DEFAULT_APP_NAME)
    return store_for(backend), where


def _scheduler_backend() -> BackendRef | None:
    from redun.scheduler import get_current_scheduler

    from redun_modal_executor.files.binding import volume_backend

    scheduler = get_current_scheduler(required=False)
    return None if scheduler is None else volume_backend(scheduler.executors.values())
