"""Live: the deployment is what the client expects, and edited code runs without a redeploy."""

from __future__ import annotations

import re

import pytest
from helpers import LIVE_RUN_SECONDS, final_line, live_executions, redun_modal

pytestmark = [pytest.mark.live, pytest.mark.e2e]

VERSION = """\
from redun import task

@task
def version() -> str:
    record("version")
    return "first"
"""


def test_doctor_finds_the_deployed_functions_and_matching_versions(live_project):
    output = redun_modal(live_project, "doctor").stdout
    assert "ok   function run_job: deployed" in output
    assert "all good" in output


def test_edited_code_reaches_the_containers_without_a_redeploy(live_app, live_project, run_id):
    import modal

    from redun_modal_executor.backends.modal.app import MANIFEST_KEY

    workflow = live_project.write("wf.py", live_app.workflow(run_id, VERSION))
    first = live_project.redun("run", "wf.py", "version", timeout=LIVE_RUN_SECONDS).stdout
    assert final_line(first) == "'first'"
    workflow.write_text(workflow.read_text().replace('"first"', '"second"'))
    second = live_project.redun("run", "wf.py", "version", timeout=LIVE_RUN_SECONDS).stdout
    assert final_line(second) == "'second'"
    assert live_executions(live_app, run_id) == {"version": 2}  # Once per code version.

    # One package per code version, each in the app's code Dict next to the deploy's record.
    digests = [re.findall(r"code package ([0-9a-f]{12})", output) for output in (first, second)]
    assert all(len(found) == 1 for found in digests), (first, second)
    (first_digest,), (second_digest,) = digests
    assert first_digest != second_digest
    packages = modal.Dict.from_name(live_app.code_dict, environment_name=live_app.environment)
    keys = [str(key) for key in packages.keys()]
    assert MANIFEST_KEY in keys
    for digest in (first_digest, second_digest):
        assert any(key.startswith(digest) for key in keys), (digest, keys)
