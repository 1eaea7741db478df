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
import io
import os
import sys
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

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
