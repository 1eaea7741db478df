"""Live: ``modalvol://`` Files on a real Volume. What only real Modal can show: that a File
written through a container's mount hashes there as the scheduler hashes it from the Volume's
listing after the commit (size and whole-second mtime), so that a rerun is fully cached; and
that one written through the API agrees too."""

from __future__ import annotations

import pytest
from helpers import LIVE_RUN_SECONDS, final_line, live_executions

pytestmark = [pytest.mark.live, pytest.mark.e2e]

FILES = """\
from redun import File, task

@task
def through_api(name: str) -> File:
    record("through_api")
    out = File(f"modalvol://{DATA_VOLUME}/{RUN}/{name}.txt")
    out.write(name)
    return out

@task(volumes={"/live-files": DATA_VOLUME})
def through_mount(name: str) -> File:
    record("through_mount")
    out = File(f"modalvol://{DATA_VOLUME}/{RUN}/{name}.txt")
    out.write(name)
    return out

@task
def both(files: list) -> str:
    record("both")
    return "+".join(file.read() for file in files)

@task
def main() -> str:
    return both([through_api("api"), through_mount("mount")])
"""


def test_files_written_in_containers_are_cached_on_a_rerun(live_app, live_project, run_id):
    live_project.write("wf.py", live_app.workflow(run_id, FILES))
    first = live_project.redun("run", "wf.py", "main", timeout=LIVE_RUN_SECONDS).stdout
    assert final_line(first) == "'api+mount'"
    again = live_project.redun("run", "wf.py", "main", timeout=LIVE_RUN_SECONDS).stdout
    assert final_line(again) == "'api+mount'"
    # Each task ran once: the second run checked both Files' hashes and found them valid.
    assert live_executions(live_app, run_id) == {"through_api": 1, "through_mount": 1, "both": 1}
