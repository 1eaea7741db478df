"""The Modal backend's storage: Modal Volumes, and a Modal Dict entry as a database lock."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from redun_modal_executor.backends.base import Volume
from redun_modal_executor.config import Mount, VolumeMount
from redun_modal_executor.errors import DatabaseBusyError
from redun_modal_executor.launch.lock import DatabaseLock, Holder, busy_message


class ModalVolume(Volume):
    """A Modal Volume, mounted at ``path`` in the calls whose options name it."""

    def __init__(self, name: str, path: str, environment: str | None) -> None:
        super().__init__(name, path)
        self.environment = environment

    def _volume(self, create: bool = False) -> Any:
        import modal

        return modal.Volume.from_name(
            self.name, environment_name=self.environment, create_if_missing=create
        )

    def ensure(self) -> None:
        from redun_modal_executor.backends.modal.app import connect

        connect()  # Within a bound: unreachable, the client alone would try for a minute.
        self._volume(create=True).hydrate()

    def reload(self) -> None:
        self._volume().reload()

    def commit(self) -> None:
        self._volume().commit()

    def read_file(self, relative: str, target: Path) -> bool:
        import modal.exception

        try:
            with target.open("wb") as file:
                for chunk in self._volume().read_file(relative):
                    file.write(chunk)
        except (FileNotFoundError, modal.exception.NotFoundError):
            return False
        return True


def modal_mount(mount: Mount, environment: str | None) -> Any:
    """What Modal's ``volumes=`` takes for a mount: a Volume (with its mount options), or a
    ``CloudBucketMount`` with its Secret, each looked up by name in ``environment``."""
    import modal

    if isinstance(mount, VolumeMount):
        volume = modal.Volume.from_name(mount.volume, environment_name=environment)
        return volume.with_mount_options(read_only=True) if mount.read_only else volume
    secret = None
    if mount.secret is not None:
        secret = modal.Secret.from_name(mount.secret, environment_name=environment)
    return modal.CloudBucketMount(
        bucket_name=mount.bucket,
        bucket_endpoint_url=mount.endpoint_url,
        key_prefix=mount.key_prefix,
        secret=secret,
        read_only=mount.read_only,
    )


class DictLock(DatabaseLock):
    """An entry ``key`` of the Modal Dict ``dict_name``, created only where absent."""

    def __init__(self, dict_name: str, environment: str | None, key: str, where: str) -> None:
        super().__init__(where)
        self.dict_name = dict_name
        self.environment = environment
        self.key = key
        self._owner: str | None = None

    def _dict(self) -> Any:
        import modal

        return modal.Dict.from_name(
            self.dict_name, environment_name=self.environment, create_if_missing=True
        )

    def acquire(self, owner: str) -> None:
        entries = self._dict()
        mine = Holder(owner, time.time()).record()
        if entries.put(self.key, mine, skip_if_exists=True):
            self._owner = owner
            return
        current = Holder.from_record(entries.get(self.key))
        # Our own call, run again by Modal after its container was lost, takes its lock back.
        if current.owner != owner:
            if call_is_running(current.owner):
                raise DatabaseBusyError(busy_message(self.where, current))
            # Ended without releasing. Of all who saw this holder dead, one takes over.
            marker = f"{self.key}/taken-from/{current.owner}"
            if not entries.put(marker, owner, skip_if_exists=True):
                raise DatabaseBusyError(busy_message(self.where, current))
        entries.put(self.key, mine)
        self._owner = owner

    def release(self) -> None:
        owner, self._owner = self._owner, None
        if owner is None:
            return
        entries = self._dict()
        if Holder.from_record(entries.get(self.key)).owner == owner:
            entries.pop(self.key)

    def holder(self) -> Holder | None:
        record = self._dict().get(self.key)
        if record is None:
            return None
        current = Holder.from_record(record)
        return current if call_is_running(current.owner) else None


def call_is_running(call_id: str) -> bool:
    """Whether a Modal call is still running; when Modal cannot be asked, assume it is."""
    import modal
    import modal.exception

    try:
        modal.FunctionCall.from_id(call_id).get(timeout=0)
    except TimeoutError:
        return True
    except modal.exception.ConnectionError:
        return True
    except Exception:  # Failed, cancelled, expired or unknown: it runs no more.
        return False
    return False
