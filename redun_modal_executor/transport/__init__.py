"""Transports carry call payloads to workers and result envelopes back.

A transport knows nothing of redun: it moves bytes, enforces time limits and cancels. The
executor turns jobs into payloads (``payload``) and envelopes back into results.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

from redun_modal_executor.code_package import CodePackage
from redun_modal_executor.config import CallOptions, ExecutorConfig

# Called from the transport's own thread with the key given to ``spawn`` and either the result
# envelope or the exception that kept the call from producing one.
OnDone = Callable[[str, bytes | BaseException], None]
# Called from the transport's own thread with a key and the id of the call now running it;
# it must not block.
OnSpawned = Callable[[str, str], None]
# Called from the transport's own thread with a key: that call's payload, encoded again to send
# it once more. Transports drop a payload once it is sent rather than keep big ones in memory.
Reencode = Callable[[str], bytes]


class Transport(ABC):
    """Runs calls somewhere; one per executor, restartable after ``stop``."""

    # Whether workers need the client's code package (they cannot import from its files).
    ships_code = False
    # Whether calls outlive their client, so that a later client can await them by id.
    reattaches = False

    def __init__(self, on_done: OnDone) -> None:
        self._on_done = on_done

    def upload_code(self, package: CodePackage) -> dict[str, Any]:
        """Make ``package`` reachable by workers, in the background; return the store
        reference that call payloads carry. Only transports with ``ships_code``."""
        raise NotImplementedError(f"{type(self).__name__} does not ship code")

    @abstractmethod
    def spawn(
        self,
        key: str,
        label: str,
        payload: bytes,
        options: CallOptions,
        reattach_to: str | None = None,
    ) -> None:
        """Queue one call and return at once; its outcome reaches ``on_done`` later.

        ``reattach_to`` names a call a previous client spawned for the same work: its result
        is awaited instead, and a fresh call is made only if it cannot be had. Transports
        whose calls die with their client ignore it."""

    @abstractmethod
    def spawn_detached(self, label: str, payload: bytes, options: CallOptions) -> str:
        """Start a call that outlives this client (``redun launch``); return its call id
        once it is safely started. ``stop`` leaves it running."""

    @abstractmethod
    def stop(self) -> int:
        """Cancel every call in flight, release workers; return how many calls were cancelled."""


def create_transport(
    config: ExecutorConfig, on_done: OnDone, on_spawned: OnSpawned, reencode: Reencode
) -> Transport:
    """The transport for the configured backend (imported only when first used)."""
    if config.backend == "local":
        from redun_modal_executor.transport.local import LocalTransport

        return LocalTransport(
            on_done,
            max_workers=config.max_workers or os.cpu_count() or 1,
            calls_dir=config.local_root() / "calls",
        )
    from redun_modal_executor.transport.modal import ModalTransport

    return ModalTransport(on_done, on_spawned, reencode, config)
