"""A fake Modal control plane for tests: the real `modal` client talks to it over gRPC.

Functions are "deployed" by import path and really run, each input in a worker process::

    def test_it(fake_modal):
        fake_modal.register_function("my-app", "f", "tests.fake_modal.sample:double")
        f = modal.Function.from_name("my-app", "f")
        assert f.spawn(21).get(timeout=10) == 42
        assert fake_modal.rpc_counts["FunctionMap"] == 1

What each input's worker writes goes to its logs (`InputRecord.logs`, `CallRecord.logs`),
which the client reads with `call.logs.tail()`.

The `fake_modal` fixture comes with ``pytest_plugins = ["fake_modal"]`` in conftest.py
(pytest puts tests/ on sys.path). Everything is in `FakeModal` (see `ControlPlane` for the
knobs, faults and counters); `env` has the variables a subprocess needs to reach it.
"""

from .control import ControlPlane, NamedObject, RpcFault
from .fake import FakeModal, reset_modal_client
from .fixture import fake_modal
from .records import (
    BindRecord,
    CallRecord,
    Fault,
    FunctionSpec,
    InputRecord,
    LogLine,
    Variant,
)

__all__ = [
    "BindRecord",
    "CallRecord",
    "ControlPlane",
    "FakeModal",
    "Fault",
    "FunctionSpec",
    "InputRecord",
    "LogLine",
    "NamedObject",
    "RpcFault",
    "Variant",
    "fake_modal",
    "reset_modal_client",
]
