"""Code shipping: the workflow's Python files as one content-addressed zip.

The client zips the files under its working directory that redun's own code packaging picks
for ``code_includes`` / ``code_excludes`` (redun's keys; default ``**/*.py``), names the zip by
its SHA-256 and uploads it once per version (to a Modal Dict). Each call payload names the
digest; a container downloads and unpacks a digest once, puts it first on ``sys.path`` and
imports task modules from there, so edited code runs remotely without redeploying the image.
"""

from __future__ import annotations

import glob
import hashlib
import importlib
import io
import os
import shutil
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from redun.executors.code_packaging import find_code_files

from redun_modal_executor.errors import CodePackageError

DEFAULT_INCLUDES = ("**/*.py",)
# Never ship interpreters, caches or build output that happen to sit under the project.
EXCLUDED_DIRECTORIES = frozenset(
    {"__pycache__", "site-packages", "node_modules", "venv", "env", "build", "dist"}
)
MAX_PACKAGE_BYTES = 64 * 1024 * 1024
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)  # Fixed, so the same files always give the same digest.


@dataclass(frozen=True)
class CodePackage:
    """A zip of workflow files and the sys.path entries (relative to it) to import them from."""

    digest: str
    data: bytes
    import_paths: tuple[str, ...]
    files: int

    def reference(self, store: dict[str, Any]) -> dict[str, Any]:
        """What a call payload carries so a worker can find and activate this package."""
        return {"digest": self.digest, "import_paths": list(self.import_paths), "store": store}


def build_code_package(
    root: str | Path,
    includes: Iterable[str] = DEFAULT_INCLUDES,
    excludes: Iterable[str] = (),
    search_path: Iterable[str] | None = None,
) -> CodePackage:
    """Zip the matching files under ``root``; deterministic for the same files and contents."""
    root = Path(root).resolve()
    paths = _select_files(root, includes, excludes)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for relative in sorted(paths):
            info = zipfile.ZipInfo(relative, date_time=_ZIP_DATE)
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, (root / relative).read_bytes())
    data = buffer.getvalue()
    if len(data) > MAX_PACKAGE_BYTES:
        raise CodePackageError(
            f"the code package of {root} is {len(data) / 2**20:.0f} MiB (limit "
            f"{MAX_PACKAGE_BYTES / 2**20:.0f} MiB): narrow code_includes / code_excludes, or "
            "install large packages in the image instead"
        )
    import_paths = _relative_import_paths(root, sys.path if search_path is None else search_path)
    return CodePackage(hashlib.sha256(data).hexdigest(), data, import_paths, len(paths))


def _select_files(root: Path, includes: Iterable[str], excludes: Iterable[str]) -> set[str]:
    """The files under ``root`` that redun's ``find_code_files`` picks (what each include's
    glob matches, less what each exclude's matches), relative to ``root``, less the files in
    always-excluded directories. An absolute or ``..`` pattern reaches nothing outside root."""
    # redun globs os.path.join(basedir, pattern): escaped, the root's own path matches only
    # itself, whatever characters it holds.
    found = find_code_files(glob.escape(str(root)), list(includes), list(excludes))
    selected: set[str] = set()
    for path in found:
        relative = os.path.relpath(path, root)
        if relative.split(os.sep)[0] == os.pardir:
            continue
        relative = Path(relative).as_posix()
        if (root / relative).is_file() and not _in_excluded_directory(root, relative):
            selected.add(relative)
    return selected


def _in_excluded_directory(root: Path, relative: str) -> bool:
    parents = Path(relative).parents
    return any(
        parent.name in EXCLUDED_DIRECTORIES or (root / parent / "pyvenv.cfg").exists()
        for parent in parents
        if parent != Path(".")
    )


def _relative_import_paths(root: Path, search_path: Iterable[str]) -> tuple[str, ...]:
    """The client's sys.path entries inside ``root`` (where `redun run` imported from)."""
    found: list[str] = []
    for entry in search_path:
        resolved = Path(entry or os.getcwd()).resolve()
        if resolved == root or root in resolved.parents:
            relative = resolved.relative_to(root).as_posix()
            relative = "" if relative == "." else relative
            if relative not in found:
                found.append(relative)
    return tuple(found) or ("",)


# ---------------------------------------------------------------------------------------------
# Worker side

_UNPACK_ROOT = Path(tempfile.gettempdir()) / "redun-modal-code"
_active: dict[str, Any] = {"digest": None, "paths": []}


def activate(reference: dict[str, Any], fetch: Callable[[str], bytes]) -> None:
    """Make the referenced package the one task modules are imported from (once per digest)."""
    digest = reference["digest"]
    if _active["digest"] == digest:
        return
    unpacked = _UNPACK_ROOT / digest
    if not unpacked.exists():
        _unpack(digest, fetch(digest), unpacked)
    deactivate()
    paths = [str(unpacked / relative) for relative in reference["import_paths"]]
    sys.path[:0] = paths
    importlib.invalidate_caches()
    _active.update(digest=digest, paths=paths)


def active_root() -> Path | None:
    """Where the active package is unpacked, if one is active."""
    digest = _active["digest"]
    return None if digest is None else _UNPACK_ROOT / digest


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


def deactivate() -> None:
    """Forget the active package and the modules imported from it (the image's view again)."""
    old_paths = _active["paths"]
    if not old_paths:
        return
    sys.path[:] = [entry for entry in sys.path if entry not in old_paths]
    old_root = str(_UNPACK_ROOT / _active["digest"])
    for name, module in list(sys.modules.items()):
        if (getattr(module, "__file__", None) or "").startswith(old_root):
            del sys.modules[name]
    _active.update(digest=None, paths=[])


def fetcher(store: dict[str, Any]) -> Callable[[str], bytes]:
    """How a worker downloads a package, from the store named in the payload."""
    if store.get("kind") == "modal_dict":
        return lambda digest: _fetch_from_modal_dict(store, digest)
    raise CodePackageError(f"unknown code store {store!r}")


def _fetch_from_modal_dict(store: dict[str, Any], digest: str) -> bytes:
    import modal

    packages = modal.Dict.from_name(store["name"], environment_name=store.get("environment"))
    data = packages.get(digest)
    if data is None:
        raise CodePackageError(
            f"code package {digest[:12]} is missing from Modal Dict {store['name']!r}; rerun "
            "the workflow so the client uploads it again"
        )
    return data
