"""One writer at a time for a launched scheduler's sqlite database on a volume.

A Modal Volume keeps whichever copy of a file was committed last, so two schedulers writing
one database would silently lose a run's records. The lock is taken before the database is
copied in and released after it is copied back; a second launch is refused meanwhile.

Each backend implements ``DatabaseLock`` (``Backend.database_lock``): an ``flock`` beside the
database on the local backend, a Modal Dict entry on Modal.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any


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
