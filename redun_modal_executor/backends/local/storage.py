"""The local backend's storage: volumes as directories, and an ``flock`` as a database lock."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import time
from pathlib import Path

from redun_modal_executor.backends.base import Volume
from redun_modal_executor.errors import DatabaseBusyError
from redun_modal_executor.launch.lock import DatabaseLock, Holder, busy_message


class DirectoryVolume(Volume):
    """A volume that is a directory on this machine: every process sees every write at once,
    so reload and commit have nothing to do."""

    def ensure(self) -> None:
        pass  # Made when first written.

    def reload(self) -> None:
        pass

    def commit(self) -> None:
        pass

    def read_file(self, relative: str, target: Path) -> bool:
        source = Path(self.path) / relative
        if not source.exists():
            return False
        # Writers replace files whole (see launch.scheduler.copy_database): a plain copy is
        # a consistent one.
        shutil.copyfile(source, target)
        return True


class FileLock(DatabaseLock):
    """``flock`` on ``path``; the file holds the holder's record for others to read."""

    def __init__(self, path: Path, where: str) -> None:
        super().__init__(where)
        self.path = path
        self._fd: int | None = None

    def acquire(self, owner: str) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise DatabaseBusyError(busy_message(self.where, self._read())) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(Holder(owner, time.time()).record()).encode(), 0)
        self._fd = fd

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.ftruncate(fd, 0)
            os.close(fd)  # Closing the only descriptor drops the flock.

    def holder(self) -> Holder | None:
        try:
            fd = os.open(self.path, os.O_RDWR)
        except FileNotFoundError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return self._read()
        finally:
            os.close(fd)
        return None

    def _read(self) -> Holder:
        try:
            return Holder.from_record(json.loads(self.path.read_text() or "null"))
        except (OSError, ValueError):
            return Holder.from_record(None)
