"""What the ``volumes`` task option mounts at each path: a Modal Volume or a cloud bucket.

A mount is written as a value of ``volumes``: in a task as a Volume name, a dict or one of
these classes; in redun.ini as ``/path=<mount>``, where ``<mount>`` is a Volume name or a
bucket URL (``s3://``, ``gs://``, ``r2://<account id>/``), each optionally followed by
``?read_only=true`` and, for a bucket, ``&secret=<name>``. Modal's ``CloudBucketMount`` takes
the same fields (``modal/cloud_bucket_mount.py``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any
from urllib.parse import parse_qsl

from redun_modal_executor.config.parsers import flag, split_pairs

# Where a gs:// or r2:// bucket is reached; Modal tells bucket kinds apart by these hosts
# (cloud_bucket_mounts_to_proto), and mounts s3:// without an endpoint.
GCS_ENDPOINT = "https://storage.googleapis.com"
R2_ENDPOINT = "https://{account}.r2.cloudflarestorage.com"
BUCKET_SCHEMES = ("s3", "gs", "r2")
# Modal's rule for Volume and Secret names (modal/_utils/name_utils.py: check_object_name).
OBJECT_NAME = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9._-]{0,63}")


@dataclass(frozen=True)
class VolumeMount:
    """A Modal Volume, by name; ``read_only`` mounts it so in the container."""

    volume: str
    read_only: bool = False

    def shown(self) -> Any:
        """As a job tag and ``redun-modal plan`` show it: the name, or the fields."""
        return self.volume if not self.read_only else {"volume": self.volume, "read_only": True}


@dataclass(frozen=True)
class BucketMount:
    """An S3, GCS or R2 bucket, mounted by Modal (``modal.CloudBucketMount``).

    ``key_prefix`` (ending in ``/``) mounts only the keys below it; ``endpoint_url`` is needed
    for GCS and R2; ``secret`` names the Modal Secret with the credentials (none for a public
    bucket)."""

    bucket: str
    key_prefix: str | None = None
    endpoint_url: str | None = None
    secret: str | None = None
    read_only: bool = False

    def shown(self) -> Any:
        return {
            spec.name: getattr(self, spec.name)
            for spec in fields(self)
            if getattr(self, spec.name)
        }


Mount = VolumeMount | BucketMount
_VOLUME_KEYS = {spec.name for spec in fields(VolumeMount)}
_BUCKET_KEYS = {spec.name for spec in fields(BucketMount)}


def parse_mount(path: str, value: Any) -> Mount:
    """The mount at ``path``; ValueError completing ``volumes ...`` says why not."""
    if isinstance(value, (VolumeMount, BucketMount)):
        mount = value
    elif isinstance(value, str):
        mount = _from_text(path, value.strip())
    elif isinstance(value, Mapping):
        mount = _from_mapping(path, value)
    else:
        raise ValueError(f"needs a Volume name, a bucket or a dict for {path!r}; got {value!r}")
    return _checked(path, mount)


def _from_text(path: str, text: str) -> Mount:
    location, _, query = text.partition("?")
    try:
        extras: dict[str, Any] = dict(
            parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query))
        )
    except ValueError:
        raise ValueError(f"has a bad ?key=value part for {path!r}: {text!r}") from None
    scheme, colon, rest = location.partition("://")
    if not colon:
        return _from_mapping(path, {"volume": location, **extras})
    if scheme not in BUCKET_SCHEMES:
        raise ValueError(
            f"mounts {location!r} at {path!r}: a bucket URL starts with s3://, gs:// or "
            "r2://<account id>/"
        )
    fields_: dict[str, Any] = {}
    if scheme == "r2":
        account, _, rest = rest.partition("/")
        fields_["endpoint_url"] = R2_ENDPOINT.format(account=account)
    elif scheme == "gs":
        fields_["endpoint_url"] = GCS_ENDPOINT
    bucket, _, prefix = rest.partition("/")
    fields_["bucket"] = bucket
    if prefix:
        fields_["key_prefix"] = prefix if prefix.endswith("/") else prefix + "/"
    return _from_mapping(path, {**fields_, **extras})


def _from_mapping(path: str, value: Mapping[str, Any]) -> Mount:
    keys = set(value)
    kind, known = (BucketMount, _BUCKET_KEYS) if "bucket" in keys else (VolumeMount, _VOLUME_KEYS)
    unknown = keys - known
    if unknown or not keys & {"bucket", "volume"}:
        raise ValueError(
            f"for {path!r} takes a Volume ({', '.join(sorted(_VOLUME_KEYS))}) or a bucket "
            f"({', '.join(sorted(_BUCKET_KEYS))}); got {dict(value)!r}"
        )
    values = dict(value)
    if "read_only" in values:
        try:
            values["read_only"] = flag(values["read_only"])
        except ValueError:
            raise ValueError(
                f"needs read_only true or false for {path!r}; got {values['read_only']!r}"
            ) from None
    for name, text in values.items():
        if name != "read_only" and not (text is None or isinstance(text, str)):
            raise ValueError(f"needs {name} as a string for {path!r}; got {text!r}")
    return kind(**values)


def _checked(path: str, mount: Mount) -> Mount:
    if isinstance(mount, VolumeMount):
        if not (isinstance(mount.volume, str) and OBJECT_NAME.fullmatch(mount.volume)):
            raise ValueError(
                f"needs a Volume name for {path!r} (letters, digits, ., - and _); "
                f"got {mount.volume!r}"
            )
        return mount
    if not (isinstance(mount.bucket, str) and mount.bucket):
        raise ValueError(f"needs a bucket name for {path!r}; got {mount.bucket!r}")
    if mount.key_prefix is not None and not mount.key_prefix.endswith("/"):
        raise ValueError(
            f"has key_prefix {mount.key_prefix!r} for {path!r}: Modal prefixes every key with "
            "it, so it must end in '/'"
        )
    if mount.secret is not None and not OBJECT_NAME.fullmatch(str(mount.secret)):
        raise ValueError(f"needs a Secret name for {path!r}; got {mount.secret!r}")
    return mount


def volumes(value: Any) -> tuple[tuple[str, Mount], ...]:
    """``{"/path": mount}``, or ``/path=mount, ...`` in redun.ini (see the module's doc)."""
    pairs: list[tuple[Any, Any]]
    if isinstance(value, str):
        pairs = list(split_pairs(value.replace(",", " ").split(), "/mount/path=volume-name"))
    elif isinstance(value, Mapping):
        pairs = list(value.items())
    else:
        raise ValueError(f"must map mount paths to volume names; got {value!r}")
    for path, _ in pairs:
        if not (isinstance(path, str) and path.startswith("/")):
            raise ValueError(f"needs absolute mount paths; got {path!r}")
    return tuple(sorted(((path, parse_mount(path, mount)) for path, mount in pairs), key=_path))


def _path(pair: tuple[str, Mount]) -> str:
    return pair[0]
