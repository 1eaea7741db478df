"""A launched scheduler, seen from the user's machine: its outcome, its log and its records.

Call ids say where a launch ran: ``fc-...`` on Modal, ``lc-...`` on the local backend (a
directory under ``local_dir/calls``, see ``transport.local``).
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from redun_modal_executor.config import ExecutorConfig
from redun_modal_executor.errors import LaunchError
from redun_modal_executor.launch import DATABASE_FILE
from redun_modal_executor.payload import Success, decode_result
from redun_modal_executor.remote_scheduler import copy_database
from redun_modal_executor.transport.local import (
    DETACHED_OUTPUT,
    DETACHED_PID,
    DETACHED_RESULT,
)

LOCAL_CALL_PREFIX = "lc-"
_POLL_SECONDS = 0.5


@dataclass(frozen=True)
class Outcome:
    """Where a launched call stands: ``running``, ``succeeded`` or ``failed``, and its text
    (the launched command's stdout, or what went wrong)."""

    state: str
    text: str = ""


def is_local_call(call_id: str) -> bool:
    return call_id.startswith(LOCAL_CALL_PREFIX)


def outcome(config: ExecutorConfig, call_id: str, wait: bool = False) -> Outcome:
    """The launched call's outcome; with ``wait``, once it has one."""
    if is_local_call(call_id):
        return _local_outcome(_local_call_dir(config, call_id), wait)
    return _modal_outcome(call_id, wait)


def _local_call_dir(config: ExecutorConfig, call_id: str) -> Path:
    call_dir = config.local_root() / "calls" / call_id
    if not call_dir.is_dir():
        raise LaunchError(f"no local launch {call_id} under {call_dir.parent}")
    return call_dir


def _local_outcome(call_dir: Path, wait: bool) -> Outcome:
    while True:
        result = call_dir / DETACHED_RESULT
        if result.exists():
            return _from_envelope(result.read_bytes())
        if not _process_alive(call_dir / DETACHED_PID):
            if result.exists():  # It finished between the two looks.
                continue
            return Outcome(
                "failed", f"its process ended without a result; see {call_dir / DETACHED_OUTPUT}"
            )
        if not wait:
            return Outcome("running")
        time.sleep(_POLL_SECONDS)


def _process_alive(pid_file: Path) -> bool:
    try:
        pid = int(pid_file.read_text())
    except (OSError, ValueError):
        return True  # Not started far enough to write its pid.
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _modal_outcome(call_id: str, wait: bool) -> Outcome:
    import modal
    import modal.exception

    try:
        envelope = modal.FunctionCall.from_id(call_id).get(timeout=None if wait else 0)
    except TimeoutError:
        return Outcome("running")
    except (modal.exception.AuthError, modal.exception.ConnectionError) as error:
        # Not the launch's outcome: Modal could not be asked.
        raise LaunchError(
            f"could not ask Modal about {call_id}: {type(error).__name__}: {error} (check "
            "`modal token new`, or MODAL_TOKEN_ID and MODAL_TOKEN_SECRET)"
        ) from None
    except Exception as error:  # Cancelled, timed out, crashed, expired: Modal says which.
        return Outcome("failed", f"{type(error).__name__}: {error}")
    return _from_envelope(envelope)


def _from_envelope(envelope: bytes) -> Outcome:
    result = decode_result(envelope)
    if isinstance(result, Success):
        value = result.value
        return Outcome("succeeded", value.decode(errors="replace") if value else "")
    logs = "".join(result.logs)
    return Outcome("failed", f"{type(result.error).__name__}: {result.error}\n{logs}".rstrip())


def log_lines(config: ExecutorConfig, call_id: str, entries: int) -> Iterator[str]:
    """The launched call's output so far (on Modal, its last ``entries`` log entries)."""
    if is_local_call(call_id):
        with (_local_call_dir(config, call_id) / DETACHED_OUTPUT).open(errors="replace") as log:
            yield from log
        return
    import modal

    for entry in modal.FunctionCall.from_id(call_id).logs.tail(entries=entries):
        yield entry.message


def pull_records(config: ExecutorConfig, destination: Any) -> int:
    """Merge the launched schedulers' database into ``destination`` (a redun backend);
    return how many records were new."""
    from redun.backends.db import Execution, RedunBackendDb

    with tempfile.TemporaryDirectory(prefix="redun-modal-pull-") as scratch:
        copy = Path(scratch) / DATABASE_FILE
        _fetch_database(config, copy)
        source = RedunBackendDb(db_uri=f"sqlite:///{copy}")
        source.load()
        assert source.session is not None
        root_ids = [row[0] for row in source.session.query(Execution.id).all()]
        records = source.get_records(source.iter_record_ids(root_ids))
        count = destination.put_records(records)
        source.session.close()
        source.engine.dispose()
    return count


def _fetch_database(config: ExecutorConfig, target: Path) -> None:
    volume = config.scheduler_volume_name
    missing = LaunchError(
        f"volume {volume!r} holds no {DATABASE_FILE} yet: no launched scheduler has finished "
        "its first sync there (check `scheduler_volume`, or wait for the launch)"
    )
    if config.backend == "local":
        shared = config.local_root() / "volumes" / volume / DATABASE_FILE
        if not shared.exists():
            raise missing
        copy_database(shared, target)
        return
    import modal
    import modal.exception

    source = modal.Volume.from_name(volume, environment_name=config.environment)
    try:
        with target.open("wb") as file:
            for chunk in source.read_file(DATABASE_FILE):
                file.write(chunk)
    except (FileNotFoundError, modal.exception.NotFoundError):
        raise missing from None
