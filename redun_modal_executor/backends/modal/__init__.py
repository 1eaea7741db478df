"""The ``modal`` backend: calls on the deployed generic function, storage in Modal.

- ``app``: what is deployed (the app, its images, the generic function ``run_job``).
- ``calls``: spawning, awaiting and cancelling calls, on the modal client's loop.
- ``client``: the private parts of the modal client borrowed there, decided once.
- ``pollers``: the long-polls spread over several connections.
- ``explain``: Modal's exceptions turned into this package's.
- ``storage``: Volumes, and the Dict entry that locks a launched scheduler's database.
- ``volume_files``: ``modalvol://`` Files through the Volume API.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from typing import Any

from redun_modal_executor.backends.base import Backend, BackendRef, DetachedState, Volume
from redun_modal_executor.backends.modal.app import code_dict_name, connect, function_name
from redun_modal_executor.backends.modal.calls import ModalCalls
from redun_modal_executor.backends.modal.explain import commands_errors
from redun_modal_executor.backends.modal.storage import DictLock, ModalVolume
from redun_modal_executor.backends.modal.volume_files import ModalApiStore
from redun_modal_executor.calls import Call
from redun_modal_executor.code_package import CodePackage
from redun_modal_executor.config import CallOptions, ExecutorConfig
from redun_modal_executor.errors import (
    CodePackageError,
    LaunchError,
    ModalAuthError,
    ModalUnreachableError,
)
from redun_modal_executor.files.stores import VolumeStore
from redun_modal_executor.launch.lock import DatabaseLock

LOCK_DICT_SUFFIX = "-locks"


class ModalBackend(Backend):
    """Calls on Modal, code packages in a Modal Dict, volumes as Modal Volumes."""

    ships_code = True
    reattaches = True
    deploys = True
    remote = True
    batches = True

    def __init__(self, ref: BackendRef) -> None:
        super().__init__(ref)
        self._calls = ModalCalls(ref)

    @classmethod
    def ref_for(cls, config: ExecutorConfig) -> BackendRef:
        return BackendRef(config.backend, config.app_name, config.environment)

    def spawn(self, calls: Sequence[Call]) -> None:
        self._calls.spawn(calls)

    def spawn_detached(self, call: Call) -> str:
        return self._calls.spawn_detached(call)

    def stop(self) -> int:
        return self._calls.stop()

    def upload_code(self, package: CodePackage) -> None:
        self._calls.upload_code(package)

    def detached_state(self, call_id: str, wait: bool) -> DetachedState:
        import modal
        import modal.exception

        try:
            connect()
        except (ModalAuthError, ModalUnreachableError) as error:
            raise LaunchError(f"could not ask Modal about {call_id}: {error}") from None
        try:
            envelope = modal.FunctionCall.from_id(call_id).get(timeout=None if wait else 0)
        except TimeoutError:
            return DetachedState(running=True)
        except (modal.exception.AuthError, modal.exception.ConnectionError) as error:
            # Not the launch's outcome: Modal could not be asked.
            raise LaunchError(
                f"could not ask Modal about {call_id}: {type(error).__name__}: {error} (check "
                "`modal token new`, or MODAL_TOKEN_ID and MODAL_TOKEN_SECRET)"
            ) from None
        except Exception as error:  # Cancelled, timed out, crashed, expired: Modal says which.
            return DetachedState(failure=f"{type(error).__name__}: {error}")
        return DetachedState(envelope=envelope)

    def log_lines(self, call_id: str, entries: int) -> Iterator[str]:
        import modal
        import modal.exception

        connect()
        with commands_errors():
            for entry in modal.FunctionCall.from_id(call_id).logs.tail(entries=entries):
                yield entry.message

    def volume(self, name: str, mount: str) -> Volume:
        return ModalVolume(name, mount, self.ref.environment)

    @classmethod
    def volume_store(cls, ref: BackendRef) -> VolumeStore:
        return ModalApiStore(ref.environment)

    def database_lock(self, volume: Volume, file: str) -> DatabaseLock:
        return DictLock(
            self.ref.app_name + LOCK_DICT_SUFFIX,
            self.ref.environment,
            f"{volume.name}/{file}",
            f"{file} on volume {volume.name}",
        )

    def current_call_id(self) -> str:
        import modal

        return modal.current_function_call_id() or f"pid-{os.getpid()}"

    def fetch_code(self, digest: str) -> bytes:
        import modal

        name = code_dict_name(self.ref.app_name)
        packages = modal.Dict.from_name(name, environment_name=self.ref.environment)
        data = packages.get(digest)
        if data is None:
            raise CodePackageError(
                f"code package {digest[:12]} is missing from Modal Dict {name!r}; rerun the "
                "workflow so the client uploads it again"
            )
        return data

    def describe(self, options: CallOptions) -> str:
        return f"Modal app {self.ref.app_name!r}, function {function_name(options.image)}"

    def job_tags(self) -> list[tuple[str, Any]]:
        return [("modal_app", self.ref.app_name)]
