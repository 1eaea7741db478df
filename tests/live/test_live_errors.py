"""Live: a task's exception comes back as itself with its output, and a crashed container's
failure brings the tail of the call's log on Modal."""

from __future__ import annotations

import pytest
from helpers import (
    LIVE_RUN_SECONDS,
    LIVE_WAIT_SECONDS,
    call_log,
    call_tags,
    live_executions,
    wait_for,
)

pytestmark = [pytest.mark.live, pytest.mark.e2e]

FAILING = """\
import os
import time

from redun import task

@task
def fails(x: int) -> int:
    record("fails")
    print("about to fail on", x, "in run", RUN)
    raise KeyError(f"no sample {x}")

@task
def crashes(x: int) -> int:
    record("crashes")
    print("crashing on", x, "in run", RUN, flush=True)
    time.sleep(2)  # The line is in Modal's log before the container goes.
    os._exit(3)

@task
def main() -> int:
    return fails(3)
"""


def test_remote_exception_comes_back_with_its_traceback_and_output(live_app, live_project, run_id):
    live_project.write("wf.py", live_app.workflow(run_id, FAILING))
    process = live_project.redun("run", "wf.py", "main", check=False, timeout=LIVE_RUN_SECONDS)
    output = process.stdout
    assert process.returncode != 0
    assert "KeyError: 'no sample 3'" in output
    assert 'raise KeyError(f"no sample {x}")' in output  # The remote frame.
    printed = f"about to fail on 3 in run {run_id}"
    assert "Latest logs:" in output
    assert printed in output.split("Latest logs:", 1)[1]  # From the result envelope.
    assert live_executions(live_app, run_id) == {"fails": 1}
    # Modal logged the task's output under its call too (what `redun-modal logs` and a
    # crash's log tail read); Modal's logs may lag a little behind.
    (call_id,) = call_tags(live_project, "fails")
    wait_for(lambda: printed in call_log(call_id), timeout=LIVE_WAIT_SECONDS, interval=5)


def test_crashed_container_fails_the_job_with_the_calls_log_tail(live_app, live_project, run_id):
    live_project.write("wf.py", live_app.workflow(run_id, FAILING))
    process = live_project.redun(
        "run", "wf.py", "crashes", "--x", "3", check=False, timeout=LIVE_RUN_SECONDS
    )
    output = process.stdout
    assert process.returncode != 0
    assert "RemoteCallError" in output
    assert "Modal call fc-" in output
    # No result envelope: what the task printed comes from Modal's log of the call, read
    # within explain.LOG_TAIL_SECONDS of the failure.
    assert "Latest logs:" in output, output
    assert f"crashing on 3 in run {run_id}" in output.split("Latest logs:", 1)[1]
    assert live_executions(live_app, run_id) == {"crashes": 1}  # No retries asked for.
