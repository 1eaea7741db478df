"""``modalvol://`` Files through Modal's Volume API: where the Volume is not mounted (the
client, or a container that did not mount it).

Hashing costs one listing per directory, not one request per File: ``stat`` lists the File's
directory (``Volume.listdir``, one ``VolumeListFiles``) and keeps that listing for
``LISTING_SECONDS``, so the Files of one directory that redun checks together (a cached
run's results) share it. A listing is dropped sooner when this process writes, removes or
copies in its Volume, and when ``forget`` is called (the executor does, as each job ends:
the job may have written there).
"""

from __future__ import annotations

import errno
import io
import os
import tempfile
import threading
import time
from collections.abc import Callable
from typing import IO, Any, BinaryIO

from redun_modal_executor.errors import VolumeFileError
from redun_modal_executor.files.paths import VolumePath
from redun_modal_executor.files.stores import Entry, VolumeStore

LISTING_SECONDS = 5.0


class ModalApiStore(VolumeStore):
    """The Volumes of one Modal environment, through the Volume API."""

    def __init__(self, environment: str | None) -> None:
        self.environment = environment
        self._lock = threading.Lock()
        self._volumes: dict[str, Any] = {}  # name -> hydrated modal.Volume
        self._listings: dict[VolumePath, tuple[float, dict[str, Entry]]] = {}

    def stat(self, where: VolumePath) -> Entry | None:
        self._volume(where)  # Its lookup names this File if the Volume does not exist.
        if not where.path:
            return Entry(where, True, 0, 0)  # The root exists with its Volume.
        return self._children(where.parent).get(where.path)

    def listdir(self, where: VolumePath) -> list[Entry]:
        return self._list(where, recursive=True)

    def open(self, where: VolumePath, mode: str) -> IO:
        if "r" in mode and "+" not in mode:
            stream: BinaryIO = tempfile.TemporaryFile()
            self._download(where, stream)
            stream.seek(0)
        elif ("w" in mode or "a" in mode) and "+" not in mode:
            stream = _UploadOnClose(lambda data: self._upload(where, data))
            if "a" in mode and self.stat(where) is not None:
                self._download(where, stream)
        else:
            raise ValueError(f"{where.url}: mode {mode!r} is not supported; use r, w or a")
        return stream if "b" in mode else io.TextIOWrapper(stream)  # type: ignore[arg-type]

    def remove(self, where: VolumePath, recursive: bool = False) -> None:
        volume = self._volume(where)
        try:
            volume.remove_file(where.path, recursive=recursive)
        except FileNotFoundError:
            pass
        finally:
            self.forget(where.volume)

    def copy(self, source: VolumePath, target: VolumePath) -> None:
        if source.volume == target.volume:
            self._volume(source).copy_files([source.path], target.path)
            self.forget(target.volume)
            return
        with tempfile.TemporaryFile() as data:
            self._download(source, data)
            data.seek(0)
            self._upload(target, data)

    def mkdir(self, where: VolumePath) -> None:
        """Nothing to do: a Volume's directory exists once a file is written below it (the
        Volume API makes no empty directories)."""
        self._volume(where)

    def forget(self, volume: str | None = None) -> None:
        """Drop the listings kept of ``volume`` (of every Volume, by default)."""
        with self._lock:
            for directory in list(self._listings):
                if volume in (None, directory.volume):
                    del self._listings[directory]

    def _children(self, directory: VolumePath) -> dict[str, Entry]:
        with self._lock:
            kept = self._listings.get(directory)
        if kept is not None and time.monotonic() - kept[0] < LISTING_SECONDS:
            return kept[1]
        fetched = time.monotonic()
        children = {entry.path.path: entry for entry in self._list(directory, recursive=False)}
        with self._lock:
            self._listings[directory] = (fetched, children)
        return children

    def _list(self, where: VolumePath, recursive: bool) -> list[Entry]:
        import modal.exception
        from modal.volume import FileEntryType

        volume = self._volume(where)
        try:
            found = volume.listdir("/" + where.path, recursive=recursive)
        except (FileNotFoundError, modal.exception.NotFoundError):
            return []
        return [
            Entry(
                VolumePath(where.volume, entry.path.strip("/")),
                entry.type == FileEntryType.DIRECTORY,
                entry.size,
                int(entry.mtime),
            )
            for entry in found
            if entry.path.strip("/") != where.path  # A directory's listing may name itself.
        ]

    def _download(self, where: VolumePath, stream: BinaryIO) -> None:
        volume = self._volume(where)
        try:
            for chunk in volume.read_file(where.path):
                stream.write(chunk)
        except FileNotFoundError:
            raise FileNotFoundError(
                errno.ENOENT, f"No such file in the Modal Volume {where.volume!r}"
            ) from None

    def _upload(self, where: VolumePath, data: BinaryIO) -> None:
        volume = self._volume(where)
        try:
            with volume.batch_upload(force=True) as batch:
                batch.put_file(data, "/" + where.path)
        finally:
            self.forget(where.volume)

    def _volume(self, where: VolumePath) -> Any:
        """The Volume, looked up once per process; ``VolumeFileError`` if it does not exist."""
        import modal
        import modal.exception

        with self._lock:
            volume = self._volumes.get(where.volume)
        if volume is not None:
            return volume
        volume = modal.Volume.from_name(where.volume, environment_name=self.environment)
        try:
            volume.hydrate()
        except modal.exception.NotFoundError:
            raise VolumeFileError(
                f"{where.url}: the Modal Volume {where.volume!r} does not exist in "
                f"environment {self.environment or '(profile default)'}; create it with "
                f"`modal volume create {where.volume}`"
            ) from None
        with self._lock:
            self._volumes[where.volume] = volume
        return volume


class _UploadOnClose(io.BufferedRandom):
    """A temporary file that is uploaded when it is closed."""

    def __init__(self, upload: Callable[[BinaryIO], None]) -> None:
        descriptor, name = tempfile.mkstemp(prefix="modalvol-")
        os.unlink(name)
        super().__init__(io.FileIO(descriptor, "w+b"))
        self._upload = upload

    def close(self) -> None:
        if self.closed:
            return
        try:
            self.flush()
            self.seek(0)
            self._upload(self)
        finally:
            super().close()
