"""The worker's side of code shipping: the code package a call names, put first on sys.path.

A container (or local worker) keeps one ``CodeVersions``: it unpacks each digest once, and
switching digests drops the modules imported from the previous one, so a warm container
never runs a task from another client's package.
"""

from __future__ import annotations

import hashlib
import importlib
import io
import shutil
import sys
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

from redun_modal_executor.errors import CodePackageError
from redun_modal_executor.payload import CodeReference


class CodeVersions:
    """Which code package this process imports task modules from, if any."""

    def __init__(self, unpack_root: Path) -> None:
        self.unpack_root = unpack_root
        self.digest: str | None = None
        self._paths: list[str] = []

    @property
    def root(self) -> Path | None:
        """Where the active package is unpacked, if one is active."""
        return None if self.digest is None else self.unpack_root / self.digest

    def activate(self, reference: CodeReference, fetch: Callable[[str], bytes]) -> None:
        """Make the referenced package the one task modules are imported from."""
        if self.digest == reference.digest:
            return
        unpacked = self.unpack_root / reference.digest
        if not unpacked.exists():
            _unpack(reference.digest, fetch(reference.digest), unpacked)
        self.deactivate()
        self._paths = [str(unpacked / relative) for relative in reference.import_paths]
        sys.path[:0] = self._paths
        importlib.invalidate_caches()
        self.digest = reference.digest

    def deactivate(self) -> None:
        """Forget the active package and the modules imported from it (the image's view)."""
        if self.digest is None:
            return
        sys.path[:] = [entry for entry in sys.path if entry not in self._paths]
        old_root = str(self.unpack_root / self.digest)
        for name, module in list(sys.modules.items()):
            if (getattr(module, "__file__", None) or "").startswith(old_root):
                del sys.modules[name]
        self.digest, self._paths = None, []


# This process's code versions: a worker process serves one call at a time.
versions = CodeVersions(Path(tempfile.gettempdir()) / "redun-modal-code")


def activate(reference: CodeReference | None) -> None:
    """Import task modules from the referenced package, fetched from the backend that stores
    it; with none, from the image (a warm container may hold another client's package)."""
    if reference is None:
        versions.deactivate()
        return
    from redun_modal_executor.backends import open_backend

    versions.activate(reference, open_backend(reference.store).fetch_code)


def _unpack(digest: str, data: bytes, target: Path) -> None:
    if hashlib.sha256(data).hexdigest() != digest:
        raise CodePackageError(f"code package {digest[:12]} arrived corrupted (digest mismatch)")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent))
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        archive.extractall(staging)
    try:
        staging.rename(target)
    except OSError:  # Another worker in this container unpacked it first.
        shutil.rmtree(staging, ignore_errors=True)
