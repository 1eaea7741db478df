"""The `fake_modal` pytest fixture: a served FakeModal, with this process pointed at it."""

from __future__ import annotations

from collections.abc import Iterator

import modal.config
import pytest

from .fake import CLEARED_ENV, FakeModal, reset_modal_client


@pytest.fixture
def fake_modal(
    monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[FakeModal]:
    """A running FakeModal; this process's env (and so its subprocesses') points at it.

    Register functions with `fake_modal.register_function(app, name, "module:callable")`.
    Afterwards the client is closed, inputs and workers are killed and the server stops.
    """
    fake = FakeModal(config_dir=tmp_path_factory.mktemp("fake_modal")).start()
    try:
        for name in CLEARED_ENV:
            monkeypatch.delenv(name, raising=False)
        for name, value in fake.env.items():
            monkeypatch.setenv(name, value)
        # The profile file read when modal was imported (~/.modal.toml) must not apply.
        monkeypatch.setattr(modal.config, "_user_config", {})
        reset_modal_client()
        yield fake
    finally:
        reset_modal_client()
        fake.stop()
