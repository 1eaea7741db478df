"""The fake's Volumes: their committed files, and each container's view of a mounted one.

As on Modal (https://modal.com/docs/guide/volumes): the Volume API (listing, reading, putting,
removing, copying files) works on the committed state, at once. A container that mounts a
Volume sees the committed state as it was when it mounted it, plus its own writes; it sees
later commits only after `reload()`, and others see its writes only after its `commit()`
(a reload commits first, as Modal may). A commit sends the files the container changed or
removed since it last mounted, reloaded or committed: two containers that write different
files both keep theirs; of two that write one file, the last to commit wins.

A mount path is a symlink to `/proc/self/fd/<n>`, the same for every worker process; each
worker holds descriptor `n` open on its own view while it runs an input, so the one path shows
each "container" its own files (Linux only, as the fake's workers are). Read-only mounts are
not enforced on the files: the fake records the flag.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
from pathlib import Path

from grpclib import GRPCError, Status
from modal_proto import api_pb2

MOUNT_FD_BASE = 900  # Descriptors 900, 901, ... stand for the mount paths, in order of use.


@dataclasses.dataclass
class View:
    """One container's copy of a Volume, and the committed state it started from."""

    path: Path
    base: dict[str, tuple[int, int]]  # file -> (size, mtime_ns) when last in step


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every file below `root`, with its size and modification time."""
    found = {}
    for directory, _, files in os.walk(root):
        for name in files:
            status = os.stat(os.path.join(directory, name))
            relative = Path(directory, name).relative_to(root).as_posix()
            found[relative] = (status.st_size, status.st_mtime_ns)
    return found


class Volumes:
    """The views of mounted Volumes, keyed by Volume id and container (worker) identity."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._views: dict[tuple[str, str], View] = {}
        self._mount_fds: dict[str, int] = {}
        self.mounted: list[Path] = []  # symlinks made, removed at close

    def mount(self, mount_path: str, committed: Path, volume_id: str, container: str) -> int:
        """The descriptor under which `container` must hold its view of the Volume while an
        input runs (its view is made on first mount, from the committed state)."""
        fd = self._mount_fds.get(mount_path)
        if fd is None:
            fd = self._mount_fds[mount_path] = MOUNT_FD_BASE + len(self._mount_fds)
            path = Path(mount_path)
            path.parent.mkdir(parents=True, exist_ok=True)
            if path.is_symlink():
                path.unlink()
            path.symlink_to(f"/proc/self/fd/{fd}", target_is_directory=True)
            self.mounted.append(path)
        if (volume_id, container) not in self._views:
            view = View(self.root / volume_id / container, {})
            view.path.mkdir(parents=True)
            self._refresh(view, committed)
            self._views[volume_id, container] = view
        return fd

    def view_path(self, volume_id: str, container: str) -> Path:
        return self._views[volume_id, container].path

    def commit(self, committed: Path, volume_id: str, container: str) -> None:
        """Send the container's changes to the committed state (nothing, outside a container
        or where it does not mount the Volume)."""
        view = self._views.get((volume_id, container))
        if view is None:
            return
        current = snapshot(view.path)
        for relative, signature in current.items():
            if view.base.get(relative) != signature:
                target = committed / relative
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(view.path / relative, target)
        for relative in view.base.keys() - current.keys():
            (committed / relative).unlink(missing_ok=True)
        view.base = current

    def reload(self, committed: Path, volume_id: str, container: str) -> None:
        """Commit, then show the container the committed state."""
        view = self._views.get((volume_id, container))
        if view is None:
            return
        self.commit(committed, volume_id, container)
        self._refresh(view, committed)

    def close(self) -> None:
        for path in self.mounted:
            path.unlink(missing_ok=True)

    @staticmethod
    def _refresh(view: View, committed: Path) -> None:
        # In place: the worker's descriptor stays on this directory.
        for child in view.path.iterdir():
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()
        shutil.copytree(committed, view.path, dirs_exist_ok=True, copy_function=shutil.copy2)
        view.base = snapshot(view.path)


# ----- the Volume API, on the committed files -----


def inside(committed: Path, path: str) -> Path:
    """The file a request's path names; INVALID_ARGUMENT for one outside the Volume."""
    target = (committed / path.lstrip("/")).resolve()
    if not target.is_relative_to(committed.resolve()):
        raise GRPCError(Status.INVALID_ARGUMENT, f"Path '{path}' is outside the volume")
    return target


def list_files(committed: Path, path: str, recursive: bool) -> list[api_pb2.FileEntry]:
    """VolumeListFiles: a file's own entry, or a directory's entries (all, if recursive),
    with paths from the Volume's root; NOT_FOUND for a missing path."""
    top = inside(committed, path)
    if not top.exists():
        raise GRPCError(Status.NOT_FOUND, f"No such file or directory: {path}")
    if top.is_file():
        children = [top]
    else:
        children = sorted(top.rglob("*") if recursive else top.iterdir())
    root = committed.resolve()
    entries = []
    for child in children:
        status = child.stat()
        is_dir = child.is_dir()
        entries.append(
            api_pb2.FileEntry(
                path=child.relative_to(root).as_posix(),
                type=api_pb2.FileEntry.DIRECTORY if is_dir else api_pb2.FileEntry.FILE,
                mtime=int(status.st_mtime),
                size=0 if is_dir else status.st_size,
            )
        )
    return entries


def put_file(committed: Path, filename: str, data: bytes, mode: int, overwrite: bool) -> None:
    """One file of a VolumePutFiles, written whole (readers never see half of it)."""
    target = inside(committed, filename)
    if target.is_dir():
        raise GRPCError(Status.INVALID_ARGUMENT, f"'{filename}' is a directory")
    if target.exists() and not overwrite:
        raise GRPCError(Status.ALREADY_EXISTS, f"File '{filename}' already exists")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=target.parent, delete=False) as partial:
        partial.write(data)
    os.chmod(partial.name, mode or 0o644)
    os.replace(partial.name, target)


def remove_file(committed: Path, path: str, recursive: bool) -> None:
    target = inside(committed, path)
    if target == committed.resolve():
        raise GRPCError(Status.INVALID_ARGUMENT, "Cannot remove the root of a volume")
    if not target.exists():
        raise GRPCError(Status.NOT_FOUND, f"No such file or directory: {path}")
    if target.is_dir():
        if not recursive:
            raise GRPCError(Status.INVALID_ARGUMENT, f"'{path}' is a directory")
        shutil.rmtree(target)
    else:
        target.unlink()


def copy_files(committed: Path, sources: list[str], destination: str) -> None:
    """VolumeCopyFiles, as `cp`: into an existing directory, else to the path itself."""
    target = inside(committed, destination)
    for source in sources:
        origin = inside(committed, source)
        if not origin.is_file():
            raise GRPCError(Status.NOT_FOUND, f"No such file: {source}")
        final = target / origin.name if target.is_dir() else target
        final.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(origin, final)  # A new file: modified now, as `cp` makes it.
