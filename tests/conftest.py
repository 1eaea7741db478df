"""Shared fixtures: a throwaway redun project on the local backend, or on the fake Modal.

What test modules share besides fixtures is in helpers.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import APP, LOCAL_CONFIG, MODAL_CONFIG, TARGET, Project

pytest_plugins = ["fake_modal"]  # The `fake_modal` fixture: a Modal control plane on 127.0.0.1.


@pytest.fixture
def project(tmp_path: Path) -> Project:
    """A project whose default executor is ModalExecutor on the local backend."""
    project = Project(tmp_path)
    project.write(".redun/redun.ini", LOCAL_CONFIG)
    return project


@pytest.fixture
def modal_project(project, fake_modal):
    """A project whose default executor is the Modal backend, with the app "deployed"."""
    project.write(".redun/redun.ini", MODAL_CONFIG)
    fake_modal.register_function(APP, "run_job", TARGET)
    fake_modal.register_function(APP, "run_job_gpu", TARGET)
    fake_modal.register_secret("hf-token", {"HF_TOKEN": "not-a-real-token"})
    fake_modal.register_volume("my-volume")
    return project
