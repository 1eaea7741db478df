"""The two private parts of the modal client this backend borrows, decided once.

On the modal client's own event loop (its synchronizer's thread) each ``.aio`` call runs in
place; from any other loop it hops threads, with two futures and a task per call. And the
client's own ``get`` coroutine, awaited there, skips synchronicity's wrapping (about 5 KB per
call in flight, and its CPU). Both are private: they are used only on the modal releases
they were tested with, and where they are missing; elsewhere the public ``.aio`` API does the
same work, a little slower, on a loop thread of this module's own.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from typing import Any

# modal releases (major, minor) whose private parts this module was tested with.
TESTED_MODAL_RELEASES = ((1, 6),)


def _borrowed_synchronizer() -> Any | None:
    """The client's synchronizer, where it may be borrowed; else None."""
    import modal

    try:
        release = tuple(int(part) for part in modal.__version__.split(".")[:2])
        from modal._utils.async_utils import synchronizer
    except (ImportError, ValueError):
        return None
    if release not in TESTED_MODAL_RELEASES:
        return None
    if not (hasattr(synchronizer, "_get_loop") and hasattr(synchronizer, "_translate_in")):
        return None
    return synchronizer


class ClientAccess:
    """The loop to run on and the ``get`` to await, from the one decision above."""

    def __init__(self, synchronizer: Any | None) -> None:
        self._synchronizer = synchronizer
        self._own_loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()

    @property
    def borrows(self) -> bool:
        return self._synchronizer is not None

    def loop(self) -> asyncio.AbstractEventLoop:
        """The event loop the backend's coroutines run on (started if need be)."""
        if self._synchronizer is not None:
            return self._synchronizer._get_loop(start=True)
        with self._lock:
            if self._own_loop is None:
                self._own_loop = asyncio.new_event_loop()
                threading.Thread(
                    target=self._own_loop.run_forever, name="redun-modal-calls", daemon=True
                ).start()
            return self._own_loop

    def get(self, call: Any) -> Callable[..., Awaitable[Any]]:
        """The coroutine function that awaits a ``FunctionCall``'s result, on ``loop()``."""
        if self._synchronizer is not None:
            return self._synchronizer._translate_in(call).get
        return call.get.aio


_access: ClientAccess | None = None


def access() -> ClientAccess:
    """This process's decision (made on first use)."""
    global _access
    if _access is None:
        _access = ClientAccess(_borrowed_synchronizer())
    return _access
