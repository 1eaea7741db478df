"""Shared fixtures: a throwaway redun project on the local backend, or on the fake Modal; and
the gate of the live suite (tests/live), whose own fixtures are in tests/live/conftest.py.

What test modules share besides fixtures is in helpers.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import APP, LOCAL_CONFIG, MODAL_CONFIG, TARGET, Project, live_skip_reason

pytest_plugins = [
    "fake_modal",  # The `fake_modal` fixture: a Modal control plane on 127.0.0.1.
    "postgres_server",  # `postgres_db_uri`: a new database on a throwaway PostgreSQL server.
    "pytester",  # pytest's own, to run pytest on a test file made by a test.
]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked `live` run only with the opt-in variable and Modal credentials set; else
    they are skipped, saying what to set. Nothing here calls the network."""
    live = [item for item in items if item.get_closest_marker("live") is not None]
    reason = live_skip_reason() if live else None
    if reason is not None:
        for item in live:
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture
def project(tmp_path: Path, request: pytest.FixtureRequest) -> Project:
    """A project whose default executor is ModalExecutor on the local backend.

    Its database is redun's default sqlite file, or a new Postgres database in a test marked
    ``ON_EACH_DATABASE`` (helpers.py), which runs once with each."""
    project = Project(tmp_path)
    if getattr(request, "param", "sqlite") == "postgres":
        project.db_uri = request.getfixturevalue("postgres_db_uri")
    project.configure(LOCAL_CONFIG)
    return project


@pytest.fixture
def modal_project(project, fake_modal):
    """A project whose default executor is the Modal backend, with the app "deployed"."""
    project.configure(MODAL_CONFIG)
    fake_modal.register_function(APP, "run_job", TARGET)
    fake_modal.register_function(APP, "run_job_gpu", TARGET)
    fake_modal.register_secret("hf-token", {"HF_TOKEN": "not-a-real-token"})
    fake_modal.register_volume("my-volume")
    return project
