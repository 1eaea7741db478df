"""A launched scheduler, seen from the user's machine: its outcome, its log and its records."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from redun_modal_executor.backends import Backend
from redun_modal_executor.config import ExecutorConfig
from redun_modal_executor.errors import LaunchError
from redun_modal_executor.launch.spec import DATABASE_FILE
from redun_modal_executor.payload import Success, decode_result


@dataclass(frozen=True)
class Outcome:
    """Where a launched call stands: ``running``, ``succeeded`` or ``failed``, and its text
    (the launched command's stdout, or what went wrong)."""

    state: str
    text: str = ""


def outcome(backend: Backend, call_id: str, wait: bool = False) -> Outcome:
    """The launched call's outcome; with ``wait``, once it has one."""
    state = backend.detached_state(call_id, wait)
    if state.running:
        return Outcome("running")
    if state.envelope is None:
        return Outcome("failed", state.failure)
    result = decode_result(state.envelope)
    if isinstance(result, Success):
        value = result.value
        return Outcome("succeeded", value.decode(errors="replace") if value else "")
    logs = "".join(result.logs)
    return Outcome("failed", f"{type(result.error).__name__}: {result.error}\n{logs}".rstrip())


def pull_records(config: ExecutorConfig, backend: Backend, destination: Any) -> int:
    """Merge the launched schedulers' database into ``destination`` (a redun backend);
    return how many records were new."""
    from redun.backends.db import Execution, RedunBackendDb

    volume = backend.volume(config.scheduler_volume_name, config.scheduler_mount)
    with tempfile.TemporaryDirectory(prefix="redun-modal-pull-") as scratch:
        copy = Path(scratch) / DATABASE_FILE
        if not volume.read_file(DATABASE_FILE, copy):
            raise LaunchError(
                f"volume {volume.name!r} holds no {DATABASE_FILE} yet: no launched scheduler "
                "has finished its first sync there (check `scheduler_volume`, or wait for the "
                "launch)"
            )
        source = RedunBackendDb(db_uri=f"sqlite:///{copy}")
        source.load()
        assert source.session is not None
        root_ids = [row[0] for row in source.session.query(Execution.id).all()]
        records = source.get_records(source.iter_record_ids(root_ids))
        count = destination.put_records(records)
        source.session.close()
        source.engine.dispose()
    return count
