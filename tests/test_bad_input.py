"""Bad input: each failure names the task and the fix, and what finished stays cached.

Every case first runs `good`, then the bad workflow, then `good` again: it must come from
the cache (nothing dispatched), so the failure left the redun database consistent.
"""

from __future__ import annotations

import pytest
from helpers import APP, MODAL_CONFIG, TARGET, final_line, ran

pytestmark = pytest.mark.e2e

GOOD = """\
import os
import threading
import time
from redun import task

@task
def good() -> str:
    return "fine"
"""


def check_failure_keeps_cache(project, bad_task: str, *messages: str) -> None:
    assert final_line(project.redun("run", "wf.py", "good").stdout) == "'fine'"
    process = project.redun("run", "wf.py", bad_task, check=False)
    assert process.returncode != 0
    for message in messages:
        assert message in process.stdout, process.stdout
    again = project.redun("run", "wf.py", "good").stdout
    assert final_line(again) == "'fine'" and ran(again, "good") == 0


@pytest.mark.parametrize(
    "bad_code, messages",
    [
        (
            "@task\ndef bad() -> object:\n    return threading.Lock()\n",
            ["SerializationError: Task bad: its result (lock) cannot be pickled"],
        ),
        (
            "@task(timout=5)\ndef bad() -> int:\n    return 1\n",
            ["Task bad: unknown task option 'timout'", "did you mean 'timeout'?"],
        ),
        (
            "@task(memory=16)\ndef bad() -> int:\n    return 1\n",
            ["Task bad: task option memory is in MiB", "write memory=16384"],
        ),
        (
            "@task(gpu='A100-80G')\ndef bad() -> int:\n    return 1\n",
            ["unknown GPU type 'A100-80G'; did you mean 'A100-80GB'?"],
        ),
        (
            "@task\ndef bad() -> int:\n    os._exit(3)\n",
            ["WorkerDiedError: Task bad: the worker process exited with status 3"],
        ),
    ],
    ids=["unpicklable-result", "unknown-option", "memory-in-gb", "unknown-gpu", "worker-dies"],
)
def test_local_backend(project, bad_code, messages):
    project.write("wf.py", GOOD + "\n" + bad_code)
    check_failure_keeps_cache(project, "bad", *messages)


@pytest.fixture
def deployed(project, fake_modal):
    project.write(".redun/redun.ini", MODAL_CONFIG)
    fake_modal.register_function(APP, "run_job", TARGET)
    project.write("wf.py", GOOD + "\n@task\ndef bad() -> str:\n    return 'unreachable'\n")
    return project


def with_config(project, extra: str) -> None:
    """From now on, runs use the Modal config plus `extra` keys."""
    project.write(".redun/redun.ini", MODAL_CONFIG + extra)


def test_module_missing_in_the_image(deployed):
    assert final_line(deployed.redun("run", "wf.py", "good").stdout) == "'fine'"
    with_config(deployed, "ship_code = false\n")
    process = deployed.redun("run", "wf.py", "bad", check=False)
    assert "Task bad: the worker cannot import module 'wf'" in process.stdout
    assert "install it in the image or ship it with the code package" in process.stdout
    again = deployed.redun("run", "wf.py", "good").stdout
    assert ran(again, "good") == 0


def test_app_not_deployed(deployed):
    assert final_line(deployed.redun("run", "wf.py", "good").stdout) == "'fine'"
    with_config(deployed, "app_name = not-deployed\n")
    process = deployed.redun("run", "wf.py", "bad", check=False)
    assert "AppNotDeployedError: Task bad: the Modal app 'not-deployed' has no function" in (
        process.stdout
    )
    assert "run `redun-modal deploy`" in process.stdout
    assert ran(deployed.redun("run", "wf.py", "good").stdout, "good") == 0


def test_missing_credentials(deployed, monkeypatch, tmp_path):
    assert final_line(deployed.redun("run", "wf.py", "good").stdout) == "'fine'"
    for name in ("MODAL_TOKEN_ID", "MODAL_TOKEN_SECRET"):
        monkeypatch.delenv(name)
    (tmp_path / "no-profile.toml").write_text("")
    monkeypatch.setenv("MODAL_CONFIG_PATH", str(tmp_path / "no-profile.toml"))
    process = deployed.redun("run", "wf.py", "bad", check=False)
    assert "ModalAuthError: Task bad: Modal could not authenticate" in process.stdout
    assert "run `modal token new`, or set MODAL_TOKEN_ID and MODAL_TOKEN_SECRET" in process.stdout
    assert ran(deployed.redun("run", "wf.py", "good").stdout, "good") == 0


def test_version_skew_between_client_and_image(deployed, fake_modal):
    assert final_line(deployed.redun("run", "wf.py", "good").stdout) == "'fine'"
    with_config(deployed, "app_name = old-image\n")
    fake_modal.register_function("old-image", "run_job", "skewed_worker:run_job")
    process = deployed.redun("run", "wf.py", "bad", check=False)
    assert "VersionSkewError: Task bad: version skew between client and worker" in process.stdout
    assert "redun" in process.stdout and "in the worker" in process.stdout
    assert "rebuild and redeploy the worker image" in process.stdout
    assert ran(deployed.redun("run", "wf.py", "good").stdout, "good") == 0
