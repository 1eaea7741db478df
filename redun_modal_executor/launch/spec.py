"""What a launch call carries besides its command: typed here, JSON in the call header."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from redun_modal_executor.backends.base import BackendRef

DATABASE_FILE = "redun.db"


@dataclass(frozen=True)
class DatabaseSpec:
    """A launched scheduler's sqlite database, kept on a volume of the backend (one writer at
    a time, under the backend's database lock)."""

    backend: BackendRef
    volume: str
    mount: str  # Where the launch's call sees the volume.
    file: str = DATABASE_FILE

    @property
    def where(self) -> str:
        return f"{self.file} on volume {self.volume}"


@dataclass(frozen=True)
class LaunchSpec:
    """The ``launch`` part of a launch call's header (no secrets, nothing pickled)."""

    config_files: dict[str, str]  # The project's .redun/*.ini files, by name.
    # On a volume; None when the project's db_uri is not sqlite and is used as is.
    database: DatabaseSpec | None
    sync_interval: float
    workdir: str | None  # Where the command runs; None: a copy of the code package.

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LaunchSpec:
        database = data.get("database")
        if database is not None:
            backend = BackendRef.from_json(database["backend"])
            database = DatabaseSpec(**{**database, "backend": backend})
        return cls(**{**data, "database": database})
