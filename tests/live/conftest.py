"""Fixtures of the live suite: one app deployed on real Modal for the whole session, under a
unique name, and removed at the end with everything the session created, even after a failure.

The tests here are marked `live`; tests/conftest.py skips them unless REDUN_MODAL_LIVE=1 and
Modal credentials are set (see docs/testing.rst, "The live suite"). Nothing here touches the
network before a live test's fixtures run.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import (
    LIVE_ENVIRONMENT,
    LIVE_SECRET_VARIABLE,
    LiveApp,
    Project,
    redun_modal,
    tear_down_live_app,
    teardown_report,
)

# Building the image is most of a first deploy: Python, redun and cloudpickle, this package.
DEPLOY_SECONDS = 1200


@pytest.fixture(scope="session")
def live_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveApp]:
    """The app, deployed with `redun-modal deploy` from a project whose redun.ini names it, and
    the session's own Modal objects: a Secret, a Volume, and a Dict where tasks record what
    ran. Whatever happens, everything in `LiveApp.resources()` is removed afterwards, each on
    its own; what could not be is reported as an error, with the commands to remove it."""
    import modal

    app = LiveApp.unique(os.environ.get(LIVE_ENVIRONMENT))
    try:
        environment = app.environment
        modal.Secret.objects.create(
            app.secret, {LIVE_SECRET_VARIABLE: app.secret_value}, environment_name=environment
        )
        modal.Volume.objects.create(app.data_volume, environment_name=environment)
        modal.Dict.objects.create(app.effects_dict, environment_name=environment)
        project = Project(tmp_path_factory.mktemp("live-deploy"))
        project.write(".redun/redun.ini", app.config())
        deployed = redun_modal(project, "deploy", timeout=DEPLOY_SECONDS).stdout
        assert f"Deploying Modal app {app.name!r}" in deployed, deployed
        yield app
    finally:
        failures = tear_down_live_app(app)
        if failures:
            pytest.fail(teardown_report(app, failures), pytrace=False)


@pytest.fixture
def live_project(live_app: LiveApp, tmp_path: Path) -> Project:
    """A project of its own whose default executor is the live app."""
    project = Project(tmp_path)
    project.write(".redun/redun.ini", live_app.config())
    return project


@pytest.fixture
def run_id() -> str:
    """This test's key in the effects Dict (`LiveApp.workflow`, `live_executions`)."""
    return uuid.uuid4().hex[:8]
