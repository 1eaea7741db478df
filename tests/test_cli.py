"""`redun-modal doctor` (against the fake control plane) and `redun-modal plan` (offline)."""

from __future__ import annotations

import sys

import modal
import pytest
from helpers import APP, MODAL_CONFIG, TARGET

from redun_modal_executor import cli
from redun_modal_executor.backends.modal.app import (
    MANIFEST_KEY,
    code_dict_name,
    deployment_manifest,
)
from redun_modal_executor.config import ExecutorConfig


@pytest.fixture
def in_project(project, monkeypatch):
    project.write(".redun/redun.ini", MODAL_CONFIG)
    monkeypatch.chdir(project.root)
    # `plan` imports the workflow here, as redun does: its directory joins sys.path and its
    # module sys.modules. Neither may leak to later tests (nor to their fake's workers).
    monkeypatch.setattr(sys, "path", list(sys.path))
    yield project
    for name, module in list(sys.modules.items()):
        if str(getattr(module, "__file__", None) or "").startswith(str(project.root)):
            del sys.modules[name]


def record_deployment(**changes: object) -> None:
    """What `redun-modal deploy` writes after deploying, with `changes` to fake an old image."""
    config = ExecutorConfig.from_section("default", {"image.gpu.pip": "torch"})
    manifest = {**deployment_manifest(config), **changes}
    modal.Dict.from_name(code_dict_name(config.app_name), create_if_missing=True).put(
        MANIFEST_KEY, manifest
    )


def test_doctor_reports_an_app_that_is_not_deployed(in_project, fake_modal, capsys):
    assert cli.main(["doctor"]) == 1
    out = capsys.readouterr().out
    assert "FAIL function run_job: not deployed: run `redun-modal deploy`" in out
    assert "FAIL function run_job_gpu: not deployed" in out


def test_doctor_passes_on_a_matching_deployment(in_project, fake_modal, capsys):
    fake_modal.register_function(APP, "run_job", TARGET)
    fake_modal.register_function(APP, "run_job_gpu", TARGET)
    record_deployment()
    assert cli.main(["doctor"]) == 0
    out = capsys.readouterr().out
    assert "ok   function run_job: deployed" in out and "ok   redun:" in out
    assert "ok   memory snapshots: on" in out
    assert out.strip().endswith("all good")


@pytest.mark.parametrize(
    "deployed, detail",
    [
        (False, "deployed off, memory_snapshot says on: redeploy with `redun-modal deploy`"),
        (None, "not recorded: redeploy with `redun-modal deploy`"),
    ],
)
def test_doctor_finds_a_deployment_without_the_configured_snapshots(
    in_project, fake_modal, capsys, deployed, detail
):
    fake_modal.register_function(APP, "run_job", TARGET)
    fake_modal.register_function(APP, "run_job_gpu", TARGET)
    record_deployment(memory_snapshot=deployed)
    assert cli.main(["doctor"]) == 1
    assert f"FAIL memory snapshots: {detail}" in capsys.readouterr().out


def test_doctor_finds_version_skew(in_project, fake_modal, capsys):
    fake_modal.register_function(APP, "run_job", TARGET)
    fake_modal.register_function(APP, "run_job_gpu", TARGET)
    record_deployment(redun="0.0.1")
    assert cli.main(["doctor"]) == 1
    assert "FAIL redun: image has 0.0.1, client has " in capsys.readouterr().out


def test_doctor_explains_bad_credentials(in_project, fake_modal, monkeypatch, capsys):
    monkeypatch.setenv("MODAL_TOKEN_SECRET", "wrong")
    from fake_modal.fake import reset_modal_client

    reset_modal_client()
    assert cli.main(["doctor"]) == 1
    assert "FAIL credentials:" in capsys.readouterr().out


def test_plan_shows_where_each_task_runs_without_calling_modal(in_project, capsys):
    in_project.write(
        "wf.py",
        """\
        from redun import task

        @task(gpu="A10G", memory=16384, image="gpu")
        def train() -> int:
            return 1

        @task(executor="elsewhere")
        def local_step() -> int:
            return 2

        @task(memory=16)
        def typo() -> int:
            return 3
        """,
    )
    assert cli.main(["plan", "wf.py"]) == 1
    out = capsys.readouterr().out
    assert (
        "train: executor 'default' -> Modal app 'redun-modal-executor', function run_job_gpu; "
        "gpu=A10G, memory=16384, image=gpu"
    ) in out
    assert "local_step: ERROR executor 'elsewhere' is not in redun.ini" in out
    assert "typo: ERROR Task typo: task option memory is in MiB" in out


def test_help_lists_the_commands(capsys):
    with pytest.raises(SystemExit) as exit:
        cli.main(["--help"])
    assert exit.value.code == 0
    out = capsys.readouterr().out
    assert all(name in out for name in ("deploy", "doctor", "plan", "status", "logs", "pull"))


def test_launch_commands_explain_what_they_cannot_find(project, monkeypatch, capsys):
    monkeypatch.chdir(project.root)  # A local-backend project that never launched.
    assert cli.main(["status", "lc-0123"]) == 2
    assert "no local launch lc-0123 under" in capsys.readouterr().err
    assert cli.main(["pull"]) == 2
    assert "holds no redun.db yet" in capsys.readouterr().err
    assert cli.main(["logs", "--executor", "nope", "lc-0123"]) == 2
    assert "no [executors.nope] with `type = modal`" in capsys.readouterr().err


def test_missing_config_is_a_clean_error(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("REDUN_CONFIG", str(tmp_path / "nowhere"))
    assert cli.main(["doctor"]) == 2
    assert capsys.readouterr().err.startswith("redun-modal: No redun config found")
