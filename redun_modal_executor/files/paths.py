"""``modalvol://<volume>/<path>`` URLs: what they name, and the errors about them."""

from __future__ import annotations

import posixpath
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from redun.file import Dir, File, FileSet, Staging
from redun.utils import iter_nested_value

from redun_modal_executor.config.mounts import OBJECT_NAME, VolumeMount
from redun_modal_executor.errors import VolumeFileError
from redun_modal_executor.files import SCHEME

PREFIX = f"{SCHEME}://"


@dataclass(frozen=True)
class VolumePath:
    """A path inside a Volume: ``path`` is relative to its root, ``""`` for the root."""

    volume: str
    path: str

    @property
    def url(self) -> str:
        return f"{PREFIX}{self.volume}/{self.path}"

    @property
    def parent(self) -> VolumePath:
        return VolumePath(self.volume, posixpath.dirname(self.path))

    @property
    def name(self) -> str:
        return posixpath.basename(self.path)

    def child(self, relative: str) -> VolumePath:
        return VolumePath(
            self.volume, posixpath.join(self.path, relative) if self.path else relative
        )


def parse(url: str) -> VolumePath:
    """The Volume and path a ``modalvol://`` URL names; ``VolumeFileError`` if it names none,
    or leads outside its Volume."""
    if not url.startswith(PREFIX):
        raise VolumeFileError(f"{url}: not a {PREFIX}<volume>/<path> URL")
    volume, _, path = url[len(PREFIX) :].partition("/")
    if not OBJECT_NAME.fullmatch(volume):
        raise VolumeFileError(
            f"{url}: {volume!r} is not a Modal Volume name (letters, digits, ., - and _; "
            f"write {PREFIX}<volume>/<path>)"
        )
    parts: list[str] = []
    for part in path.split("/"):
        if part == "..":
            if not parts:
                raise VolumeFileError(f"{url}: the path leads outside the Volume {volume!r}")
            parts.pop()
        elif part not in ("", "."):
            parts.append(part)
    return VolumePath(volume, "/".join(parts))


def volumes_named(values: Iterable[Any]) -> Iterator[str]:
    """The Volumes that the ``modalvol://`` Files, Dirs and staged Files in ``values`` (nested
    as redun nests values: lists, tuples, dicts, dataclasses) live on."""
    for value in iter_nested_value(list(values)):
        if isinstance(value, Staging):
            value = value.remote
        if isinstance(value, (File, Dir)):
            url = value.path
        elif isinstance(value, FileSet):
            url = value.pattern
        else:
            continue
        if isinstance(url, str) and url.startswith(PREFIX):
            try:
                yield parse(url).volume
            except VolumeFileError:
                continue  # Mounts nothing: the task fails on it, naming the File.


def mounted_volumes(volumes: Iterable[tuple[str, Any]]) -> dict[str, tuple[str, bool]]:
    """Volume name -> (mount path, read-only) for the Volumes among a call's mounts."""
    return {
        mount.volume: (path, mount.read_only)
        for path, mount in volumes
        if isinstance(mount, VolumeMount)
    }
