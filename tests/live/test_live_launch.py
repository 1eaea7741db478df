"""Live: `redun launch` runs the scheduler in a Modal container, its database on the scheduler
Volume; `redun-modal status --wait` follows it, `redun-modal pull` brings its records here."""

from __future__ import annotations

import re

import pytest
from helpers import (
    LIVE_RUN_SECONDS,
    LIVE_WAIT_SECONDS,
    SUM_OF_SQUARES,
    final_line,
    launch,
    redun_modal,
    wait_for,
)

from redun_modal_executor.launch.spec import DATABASE_FILE

pytestmark = [pytest.mark.live, pytest.mark.e2e]


def test_detached_launch_on_the_scheduler_volume_then_pull(live_app, live_project):
    import modal

    live_project.write("wf.py", SUM_OF_SQUARES)
    # The launched scheduler runs the project's [executors.default] from its container: its
    # jobs are calls of the same app.
    call_id = launch(live_project, "redun", "run", "wf.py", "main")
    assert call_id.startswith("fc-")
    status = redun_modal(live_project, "status", "--wait", call_id, timeout=LIVE_RUN_SECONDS)
    assert f"{call_id}: succeeded" in status.stdout
    assert final_line(status.stdout) == "14"

    # The database was committed to the Volume, where the client reads it, and the lock on
    # it was given back.
    environment = live_app.environment
    volume = modal.Volume.from_name(live_app.scheduler_volume, environment_name=environment)
    database = b"".join(volume.read_file(DATABASE_FILE))
    assert database.startswith(b"SQLite format 3\x00")
    locks = modal.Dict.from_name(live_app.lock_dict, environment_name=environment)
    assert not locks.contains(f"{live_app.scheduler_volume}/{DATABASE_FILE}")

    pulled = redun_modal(live_project, "pull").stdout
    assert re.search(r"Pulled [1-9]\d* new record\(s\)", pulled), pulled
    assert "wf.py main" in live_project.redun("log").stdout
    # The scheduler's own log, from Modal's log of the launch call (which may lag a little).
    wait_for(
        lambda: "[redun]" in redun_modal(live_project, "logs", call_id).stdout,
        timeout=LIVE_WAIT_SECONDS,
        interval=10,
    )
