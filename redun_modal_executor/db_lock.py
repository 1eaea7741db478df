"""One writer at a time for a launched scheduler's sqlite database on a volume.

A Modal Volume keeps whichever copy of a file was committed last, so two schedulers writing
one database would silently lose a run's records. The lock is taken before the database is
copied in and released after it is copied back; a second launch is refused meanwhile.

- ``FileLock`` (local backend, where the volume is a directory): ``flock`` on a file beside
  the database, which the kernel drops when its process dies.
- ``DictLock`` (Modal): an entry of a Modal Dict, created only if absent, naming the call that
  holds it. A holder whose call has ended without releasing (crash, timeout, cancel) is taken
  over, by one contender only.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from redun_modal_executor.errors import DatabaseBusyError


@dataclass(frozen=True)
class Holder:
    """Who holds a database: a launch's call id, and since when."""

    owner: str
    since: float

    @classmethod
    def from_record(cls, record: Any) -> Holder:
        if isinstance(record, dict) and isinstance(record.get("owner"), str):
            return cls(record["owner"], float(record.get("since", 0)))
        return cls("an unknown launch", 0.0)

    def record(self) -> dict[str, Any]:
        return {"owner": self.owner, "since": self.since}

    def describe(self) -> str:
        started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(self.since))
        return f"launch {self.owner} (started {started})"


def busy_message(where: str, holder: Holder) -> str:
    return (
        f"the scheduler database {where} is in use by {holder.describe()}. One launched "
        "scheduler at a time may write a sqlite database: wait for that run to end "
        f"(`redun-modal status {holder.owner}`), give this project its own "
        "`scheduler_volume`, or use a Postgres db_uri (see 'Running the scheduler on Modal')."
    )


class DatabaseLock(ABC):
    """Exclusive right to write one database."""

    def __init__(self, where: str) -> None:
        self.where = where

    @abstractmethod
    def acquire(self, owner: str) -> None:
        """Take the lock for ``owner``, or raise ``DatabaseBusyError`` naming the holder."""

    @abstractmethod
    def release(self) -> None:
        """Give the lock up, if this object holds it."""

    @abstractmethod
    def holder(self) -> Holder | None:
        """Who holds the lock now, if anyone still running does."""


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


class DictLock(DatabaseLock):
    """An entry ``key`` of the Modal Dict ``dict_name``, created only where absent."""

    def __init__(self, dict_name: str, environment: str | None, key: str, where: str) -> None:
        super().__init__(where)
        self.dict_name = dict_name
        self.environment = environment
        self.key = key
        self._owner: str | None = None

    def _dict(self) -> Any:
        import modal

        return modal.Dict.from_name(
            self.dict_name, environment_name=self.environment, create_if_missing=True
        )

    def acquire(self, owner: str) -> None:
        entries = self._dict()
        mine = Holder(owner, time.time()).record()
        if entries.put(self.key, mine, skip_if_exists=True):
            self._owner = owner
            return
        current = Holder.from_record(entries.get(self.key))
        # Our own call, run again by Modal after its container was lost, takes its lock back.
        if current.owner != owner:
            if call_is_running(current.owner):
                raise DatabaseBusyError(busy_message(self.where, current))
            # Ended without releasing. Of all who saw this holder dead, one takes over.
            marker = f"{self.key}/taken-from/{current.owner}"
            if not entries.put(marker, owner, skip_if_exists=True):
                raise DatabaseBusyError(busy_message(self.where, current))
        entries.put(self.key, mine)
        self._owner = owner

    def release(self) -> None:
        owner, self._owner = self._owner, None
        if owner is None:
            return
        entries = self._dict()
        if Holder.from_record(entries.get(self.key)).owner == owner:
            entries.pop(self.key)

    def holder(self) -> Holder | None:
        record = self._dict().get(self.key)
        if record is None:
            return None
        current = Holder.from_record(record)
        return current if call_is_running(current.owner) else None


def call_is_running(call_id: str) -> bool:
    """Whether a Modal call is still running; when Modal cannot be asked, assume it is."""
    import modal
    import modal.exception

    try:
        modal.FunctionCall.from_id(call_id).get(timeout=0)
    except TimeoutError:
        return True
    except modal.exception.ConnectionError:
        return True
    except Exception:  # Failed, cancelled, expired or unknown: it runs no more.
        return False
    return False


def open_lock(database: dict[str, Any]) -> DatabaseLock:
    """The lock for a launch's ``database`` spec (see ``launch.database_spec``)."""
    where = f"{database['file']} on volume {database['volume']}"
    if database["backend"] == "local":
        return FileLock(Path(database["dir"]) / (database["file"] + ".lock"), where)
    return DictLock(
        database["lock_dict"],
        database.get("environment"),
        f"{database['volume']}/{database['file']}",
        where,
    )
