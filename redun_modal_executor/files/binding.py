"""Which backend's Volumes ``modalvol://`` names in a scheduler: that of its ``modal``
executor sections (those with ``volume_files = true``, the default).

A section on Modal wins over sections on the local backend: in a run that sends some tasks to
Modal, Volumes are Modal's, and local workers reach them through the Volume API. Sections on
Modal in different environments, or only local sections with different ``local_dir``, are an
error, unless all but one set ``volume_files = false``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from redun_modal_executor.backends import BackendRef, backend_class
from redun_modal_executor.errors import VolumeFileError


def volume_backend(executors: Iterable[Any]) -> BackendRef | None:
    """The backend whose Volumes these executors' Files name; None if no section says."""
    found: dict[tuple[str, str | None, str | None], tuple[BackendRef, list[str]]] = {}
    for executor in executors:
        ref = getattr(executor, "volume_files_backend", lambda: None)()
        if ref is not None:
            key = (ref.name, ref.environment, ref.local_dir)
            found.setdefault(key, (ref, []))[1].append(executor.name)
    remote = [key for key, (ref, _) in found.items() if backend_class(ref.name).remote]
    candidates = remote or list(found)
    if len(candidates) > 1:
        described = "; ".join(
            f"[executors.{', '.join(found[key][1])}]: the {key[0]} backend, "
            + (f"local_dir {key[2]}" if key[2] else f"environment {key[1] or '(profile default)'}")
            for key in candidates
        )
        raise VolumeFileError(
            f"modalvol:// Files would name the Volumes of several backends ({described}). "
            "Set volume_files = false in all of these sections but one."
        )
    return found[candidates[0]][0] if candidates else None
