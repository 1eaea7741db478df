"""Backends: where calls run. ``local`` (worker processes here) and ``modal`` (Modal's cloud).

This is the one place that tells backends apart by name; each is imported only when chosen,
so the local backend never imports ``modal``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from redun_modal_executor.backends.base import Backend, BackendRef, DetachedState, Volume

if TYPE_CHECKING:
    from redun_modal_executor.config import ExecutorConfig

__all__ = [
    "Backend",
    "BackendRef",
    "DetachedState",
    "Volume",
    "backend_class",
    "create_backend",
    "open_backend",
]


def backend_class(name: str) -> type[Backend]:
    """The class of the backend called ``name`` (one of ``config.BACKENDS``)."""
    if name == "local":
        from redun_modal_executor.backends.local import LocalBackend

        return LocalBackend
    from redun_modal_executor.backends.modal import ModalBackend

    return ModalBackend


def create_backend(config: ExecutorConfig) -> Backend:
    """The backend an executor section asks for (on the client)."""
    cls = backend_class(config.backend)
    return cls(cls.ref_for(config))


def open_backend(ref: BackendRef) -> Backend:
    """The backend a reference names (in a worker, from a call header)."""
    return backend_class(ref.name)(ref)
