"""The interface every backend implements, and the reference that names one.

A backend owns everything that differs between where calls run: running calls, the store of
code packages, volumes, the lock on a launched scheduler's database, and detached calls (their
outcome and log). The rest of the package asks the backend and never compares backend names.
It moves bytes and knows nothing of redun: the executor turns jobs into payloads and result
envelopes back into results.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from redun_modal_executor.calls import Call
    from redun_modal_executor.code_package import CodePackage
    from redun_modal_executor.config import CallOptions, ExecutorConfig
    from redun_modal_executor.files.stores import VolumeStore
    from redun_modal_executor.launch.lock import DatabaseLock


@dataclass(frozen=True)
class BackendRef:
    """What it takes to open a backend, on the client or in a worker (it travels in call
    headers, so it holds no secret)."""

    name: str
    app_name: str
    environment: str | None = None
    local_dir: str | None = None  # The local backend's storage root, resolved on the client.
    max_workers: int | None = None

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> BackendRef:
        return cls(**data)


@dataclass(frozen=True)
class DetachedState:
    """Where a detached call stands: its result envelope once it has one, else ``running``,
    or ``failure``: why it ended without one (cancelled, crashed, expired)."""

    envelope: bytes | None = None
    running: bool = False
    failure: str = ""


class Volume(ABC):
    """A named volume: a directory that outlives calls, seen at ``path`` in a call."""

    def __init__(self, name: str, path: str) -> None:
        self.name = name
        self.path = path

    @abstractmethod
    def ensure(self) -> None:
        """Create the volume if it is missing (client side)."""

    @abstractmethod
    def reload(self) -> None:
        """See what other calls committed (in a call)."""

    @abstractmethod
    def commit(self) -> None:
        """Make what this call wrote visible to others (in a call)."""

    @abstractmethod
    def read_file(self, relative: str, target: Path) -> bool:
        """Copy one file of the volume to ``target`` (client side); False if it is missing."""


class Backend(ABC):
    """Where calls run; one per executor, restartable after ``stop``."""

    # Workers cannot import from the client's files: the code package must reach them.
    ships_code: ClassVar[bool] = False
    # Calls outlive their client, so a later client can await them by id.
    reattaches: ClassVar[bool] = False
    # There is an app to deploy (`redun-modal deploy`, `doctor`).
    deploys: ClassVar[bool] = False
    # A call sees a volume only where its options mount it; it cannot reach this machine.
    remote: ClassVar[bool] = False
    # Calls submitted together travel together (one request for many): the executor hands
    # over a burst of jobs at once rather than one at a time.
    batches: ClassVar[bool] = False
    # Calls report from a thread of the backend's own that may block: the executor handles
    # the reports there, in order, instead of on its reports thread (no hop per call).
    reports_on_own_thread: ClassVar[bool] = False

    def __init__(self, ref: BackendRef) -> None:
        self.ref = ref

    @classmethod
    @abstractmethod
    def ref_for(cls, config: ExecutorConfig) -> BackendRef:
        """The reference of this backend for an executor section (resolved on the client)."""

    # Calls, on the client.

    @abstractmethod
    def spawn(self, calls: Sequence[Call]) -> None:
        """Start ``calls`` (a burst of jobs, or one) and return at once; the backend reports
        on each handle later."""

    @abstractmethod
    def spawn_detached(self, call: Call) -> str:
        """Start a call that outlives this client (``redun launch``); return its call id once
        it is safely started. ``stop`` leaves it running."""

    @abstractmethod
    def stop(self) -> int:
        """Cancel every call in flight (each finishes with ``CallCancelledError``), release
        workers; return how many calls were cancelled."""

    def upload_code(self, package: CodePackage) -> None:
        """Make ``package`` reachable by workers, in the background (``ships_code`` only)."""
        raise NotImplementedError(f"{type(self).__name__} does not ship code")

    # Detached calls, on the client.

    @abstractmethod
    def detached_state(self, call_id: str, wait: bool) -> DetachedState:
        """Where a detached call stands; with ``wait``, once it has ended."""

    @abstractmethod
    def log_lines(self, call_id: str, entries: int) -> Iterator[str]:
        """A detached call's output so far (at most its last ``entries`` entries)."""

    # Storage, on both sides.

    @abstractmethod
    def volume(self, name: str, mount: str) -> Volume:
        """The volume ``name``, seen at ``mount`` where this backend mounts volumes."""

    @classmethod
    @abstractmethod
    def volume_store(cls, ref: BackendRef) -> VolumeStore:
        """Where ``modalvol://`` Files are reached, on the client and wherever a call has not
        mounted their Volume."""

    @abstractmethod
    def database_lock(self, volume: Volume, file: str) -> DatabaseLock:
        """The lock that keeps one writer on a sqlite database on ``volume``."""

    # In a worker.

    @abstractmethod
    def current_call_id(self) -> str:
        """The id of the call this process runs."""

    def fetch_code(self, digest: str) -> bytes:
        """A code package uploaded by a client (``ships_code`` only)."""
        raise NotImplementedError(f"{type(self).__name__} does not ship code")

    # Descriptions.

    @abstractmethod
    def describe(self, options: CallOptions) -> str:
        """Where a call with ``options`` runs, in words (`redun-modal plan`)."""

    def job_tags(self) -> list[tuple[str, Any]]:
        """Tags for every job, saying where it runs (that leads somewhere: none here)."""
        return []
