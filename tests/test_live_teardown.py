"""The live suite's own logic that needs no Modal account: its gate, and its teardown, which
must try to remove every object even when removing one fails."""

from __future__ import annotations

import inspect
from types import SimpleNamespace
from unittest import mock

import modal
import modal.exception
import pytest
from helpers import (
    LiveApp,
    ModalCleanup,
    live_skip_reason,
    tear_down_live_app,
    teardown_report,
)

APP = LiveApp("rmx-live-0123456789", "ci", "s3cret")
ALL = [
    ("app", "rmx-live-0123456789"),
    ("dict", "rmx-live-0123456789-code"),
    ("dict", "rmx-live-0123456789-locks"),
    ("dict", "rmx-live-0123456789-effects"),
    ("volume", "rmx-live-0123456789-scheduler"),
    ("volume", "rmx-live-0123456789-data"),
    ("secret", "rmx-live-0123456789-secret"),
]


class RecordingCleanup:
    """Records each removal; those named in `failing` raise."""

    def __init__(self, *failing: str) -> None:
        self.failing = set(failing)
        self.calls: list[tuple[str, str]] = []

    def _remove(self, kind: str, name: str) -> None:
        self.calls.append((kind, name))
        if name in self.failing:
            raise modal.exception.ServiceError(f"could not remove {name}")

    def app(self, name: str) -> None:
        self._remove("app", name)

    def dict(self, name: str) -> None:
        self._remove("dict", name)

    def volume(self, name: str) -> None:
        self._remove("volume", name)

    def secret(self, name: str) -> None:
        self._remove("secret", name)


def test_teardown_removes_everything_the_session_created():
    cleanup = RecordingCleanup()
    assert tear_down_live_app(APP, cleanup) == []
    assert cleanup.calls == ALL  # The app first: stopping it ends its containers.


@pytest.mark.parametrize("failing", [name for _, name in ALL])
def test_one_failed_removal_does_not_keep_the_others_from_going(failing):
    cleanup = RecordingCleanup(failing)
    failures = tear_down_live_app(APP, cleanup)
    assert cleanup.calls == ALL
    (failure,) = failures
    assert failure.endswith(f"{failing}: ServiceError: could not remove {failing}")


def test_every_removal_failing_is_reported_with_the_commands_to_clean_up():
    cleanup = RecordingCleanup(*(name for _, name in ALL))
    failures = tear_down_live_app(APP, cleanup)
    assert cleanup.calls == ALL and len(failures) == len(ALL)
    report = teardown_report(APP, failures)
    for failure in failures:
        assert failure in report
    for command in (
        "modal app stop --yes --env ci rmx-live-0123456789",
        "modal dict delete --yes --allow-missing --env ci rmx-live-0123456789-code",
        "modal dict delete --yes --allow-missing --env ci rmx-live-0123456789-locks",
        "modal dict delete --yes --allow-missing --env ci rmx-live-0123456789-effects",
        "modal volume delete --yes --allow-missing --env ci rmx-live-0123456789-scheduler",
        "modal volume delete --yes --allow-missing --env ci rmx-live-0123456789-data",
        "modal secret delete --yes --allow-missing --env ci rmx-live-0123456789-secret",
    ):
        assert command in report


def test_modal_cleanup_makes_the_client_calls_that_remove_each_kind(monkeypatch):
    app_handle = mock.Mock()
    lookup = mock.Mock(return_value=app_handle)
    managers = {kind: mock.Mock() for kind in ("Dict", "Volume", "Secret")}
    monkeypatch.setattr(modal.App, "lookup", lookup)
    for kind, manager in managers.items():
        monkeypatch.setattr(modal, kind, SimpleNamespace(objects=manager))
    cleanup = ModalCleanup("ci")

    cleanup.app("my-app")
    lookup.assert_called_once_with("my-app", environment_name="ci")
    app_handle.stop.assert_called_once_with()
    for kind in managers:
        getattr(cleanup, kind.lower())(f"my-{kind.lower()}")
        managers[kind].delete.assert_called_once_with(
            f"my-{kind.lower()}", allow_missing=True, environment_name="ci"
        )

    # An app that is not there (never deployed, or stopped already) has nothing to stop.
    lookup.side_effect = modal.exception.NotFoundError("App 'gone' not found")
    cleanup.app("gone")
    app_handle.stop.assert_called_once_with()


def test_the_client_calls_take_the_arguments_the_cleanup_passes():
    """Against the installed client: the names and keywords ModalCleanup relies on."""
    assert {"name", "environment_name"} <= set(inspect.signature(modal.App.lookup).parameters)
    assert callable(modal.App.stop)
    for kind in (modal.Dict, modal.Volume, modal.Secret):
        parameters = inspect.signature(kind.objects.delete).parameters
        assert {"name", "allow_missing", "environment_name"} <= set(parameters), kind


def write_profile(tmp_path, text: str) -> dict[str, str]:
    path = tmp_path / "modal.toml"
    path.write_text(text)
    return {"MODAL_CONFIG_PATH": str(path)}


@pytest.mark.parametrize(
    ("environ", "runs"),
    [
        ({}, False),
        ({"REDUN_MODAL_LIVE": "1"}, False),
        ({"MODAL_TOKEN_ID": "ak-1", "MODAL_TOKEN_SECRET": "as-1"}, False),
        ({"REDUN_MODAL_LIVE": "1", "MODAL_TOKEN_ID": "ak-1"}, False),
        (
            {"REDUN_MODAL_LIVE": "yes", "MODAL_TOKEN_ID": "ak-1", "MODAL_TOKEN_SECRET": "as-1"},
            False,
        ),
        ({"REDUN_MODAL_LIVE": "1", "MODAL_TOKEN_ID": "ak-1", "MODAL_TOKEN_SECRET": "as-1"}, True),
    ],
)
def test_the_gate_wants_the_opt_in_and_a_token(tmp_path, environ, runs):
    environ = {**write_profile(tmp_path, ""), **environ}  # No profile file to fall back on.
    reason = live_skip_reason(environ)
    assert (reason is None) == runs
    if not runs:
        assert "set REDUN_MODAL_LIVE=1 and MODAL_TOKEN_ID and MODAL_TOKEN_SECRET" in reason
        assert "REDUN_MODAL_LIVE_ENVIRONMENT" in reason


def test_the_gate_finds_a_token_in_the_active_profile(tmp_path):
    profiles = (
        '[work]\ntoken_id = "ak-w"\ntoken_secret = "as-w"\nactive = true\n'
        '[empty]\nserver_url = "https://example.invalid"\n'
    )
    environ = {"REDUN_MODAL_LIVE": "1", **write_profile(tmp_path, profiles)}
    assert live_skip_reason(environ) is None
    # MODAL_PROFILE picks another profile, as it does for the client.
    assert "no Modal credentials" in live_skip_reason({**environ, "MODAL_PROFILE": "empty"})
