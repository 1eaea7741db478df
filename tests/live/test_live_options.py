"""Live: task options, bound with `with_options`, are what the containers get: a Secret's
variables and a mounted Volume (in a variant that also asks for CPU and memory), Modal's own
retry of a crashed container, and the timeout."""

from __future__ import annotations

import pytest
from helpers import LIVE_RUN_SECONDS, call_tags, final_line, live_executions

from redun_modal_executor.calls import CallAddress

pytestmark = [pytest.mark.live, pytest.mark.e2e]

OPTIONS = """\
import os
import time
from pathlib import Path

from redun import task

@task(cpu=0.5, memory=1024, timeout=300, secrets=[SECRET], volumes={"/live-data": DATA_VOLUME})
def bound() -> dict:
    import modal

    record("bound")
    written = "written by " + (modal.current_function_call_id() or "no call")
    Path("/live-data", RUN).write_text(written)
    modal.Volume.from_name(DATA_VOLUME, environment_name=ENVIRONMENT).commit()
    return {"secret": os.environ.get(SECRET_VARIABLE, "(not set)")}

@task(retries=1)
def crashes_once() -> str:
    import modal

    record("crashes_once")
    effects = modal.Dict.from_name(EFFECTS, environment_name=ENVIRONMENT)
    if effects.put(RUN + "-crashed", True, skip_if_exists=True):
        print("crashing on purpose", flush=True)
        os._exit(3)
    return "survived"

@task(timeout=5)
def too_slow() -> int:
    record("too_slow")
    time.sleep(120)
    return 1

@task
def main() -> list:
    return [bound(), crashes_once()]
"""


def test_bound_options_reach_the_container(live_app, live_project, run_id):
    import modal

    live_project.write("wf.py", live_app.workflow(run_id, OPTIONS))
    output = live_project.redun("run", "wf.py", "main", timeout=LIVE_RUN_SECONDS).stdout
    assert final_line(output) == repr([{"secret": live_app.secret_value}, "survived"])
    # The container died on the first attempt; Modal ran the input again (the executor does
    # not rerun a failed Modal call: errors.is_retriable), and no job ran twice otherwise.
    assert live_executions(live_app, run_id) == {"bound": 1, "crashes_once": 2}
    # What the job wrote to the mounted Volume and committed is there for the client to read,
    # written by the call the job is tagged with.
    (address,) = call_tags(live_project, "bound")
    volume = modal.Volume.from_name(live_app.data_volume, environment_name=live_app.environment)
    call_id = CallAddress.parse(address).call_id
    assert b"".join(volume.read_file(run_id)) == f"written by {call_id}".encode()


def test_the_timeout_option_is_enforced_by_modal(live_app, live_project, run_id):
    live_project.write("wf.py", live_app.workflow(run_id, OPTIONS))
    process = live_project.redun("run", "wf.py", "too_slow", check=False, timeout=LIVE_RUN_SECONDS)
    assert process.returncode != 0
    assert "CallTimeoutError: Task too_slow: timed out after 5 s on Modal" in process.stdout
    assert "[call fc-" in process.stdout
    assert live_executions(live_app, run_id) == {"too_slow": 1}  # No retries asked for.
