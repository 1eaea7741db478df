"""`FakeModal`: the control plane served on 127.0.0.1 from a background thread."""

from __future__ import annotations

import asyncio
import socket
import tempfile
import threading
from collections.abc import Coroutine
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import grpclib.events
import grpclib.server
from modal._utils.async_utils import synchronizer
from modal.client import _Client

from .control import ControlPlane
from .servicer import FakeModalServicer

T = TypeVar("T")
# Settings a developer's shell may hold that would point the client elsewhere: a process
# pointed at the fake clears them.
CLEARED_ENV = (
    "MODAL_PROFILE",
    "MODAL_ENVIRONMENT",
    "MODAL_IS_REMOTE",
    "MODAL_OAUTH_REFRESH_TOKEN",
    "MODAL_OAUTH_CLIENT_ID",
    "MODAL_OAUTH_CLIENT_SECRET",
    "MODAL_OAUTH_JWT_KEY",
)
_STOP_TIMEOUT = 15.0


class FakeModal(ControlPlane):
    """A fake Modal control plane that the real `modal` client talks to over gRPC.

    `start()` serves it (gRPC and the HTTP blob store, both on 127.0.0.1) from a thread
    with its own event loop; `env` then holds what a process needs to reach it. `stop()`
    cancels every input, kills every worker process and stops serving.
    """

    def __init__(
        self,
        *,
        token_id: str = "ak-fake-modal",
        token_secret: str = "as-fake-modal",
        config_dir: Path | None = None,
        default_environment: str = "main",
        warm_workers: int = 1,
        max_concurrency: int = 4,
        strict_objects: bool = False,
    ) -> None:
        super().__init__(
            default_environment=default_environment,
            warm_workers=warm_workers,
            max_concurrency=max_concurrency,
            strict_objects=strict_objects,
        )
        self.token_id = token_id
        self.token_secret = token_secret
        self.port = 0
        self._config_dir = config_dir
        self._own_config_dir: tempfile.TemporaryDirectory[str] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: grpclib.server.Server | None = None
        self._socket: socket.socket | None = None

    @property
    def url(self) -> str:
        """The gRPC server URL, for MODAL_SERVER_URL."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def config_path(self) -> Path:
        """A .modal.toml with one active profile pointing at this server."""
        if self._config_dir is None:
            self._own_config_dir = tempfile.TemporaryDirectory(prefix="fake_modal_")
            self._config_dir = Path(self._own_config_dir.name)
        return self._config_dir / ".modal.toml"

    @property
    def env(self) -> dict[str, str]:
        """Environment variables that point a modal client (in any process) at this server."""
        return {
            "MODAL_SERVER_URL": self.url,
            "MODAL_TOKEN_ID": self.token_id,
            "MODAL_TOKEN_SECRET": self.token_secret,
            "MODAL_CONFIG_PATH": str(self.config_path),
        }

    def start(self) -> FakeModal:
        """Serve from a background thread; returns once the port accepts connections."""
        if self._thread is not None:
            raise RuntimeError("FakeModal is already started")
        # IPPROTO_TCP, not 0: only then does asyncio set TCP_NODELAY on accepted connections
        # (without it every small response waits ~40 ms for a delayed ACK).
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self._socket.bind(("127.0.0.1", 0))
        self.port = int(self._socket.getsockname()[1])
        self.config_path.write_text(
            "[fake-modal]\n"
            f'token_id = "{self.token_id}"\n'
            f'token_secret = "{self.token_secret}"\n'
            f'server_url = "{self.url}"\n'
            "active = true\n"
        )
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="fake-modal", daemon=True
        )
        self._thread.start()
        try:
            self._run(self._serve())
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop inputs, workers and servers, and the thread. Safe to call twice."""
        loop, thread = self._loop, self._thread
        client = _Client._client_from_env
        if client is not None and client.server_url == self.url:
            reset_modal_client()  # disconnect first: the server cannot close its connections
        try:
            if loop is not None and thread is not None and thread.is_alive():
                self._run(self._shutdown(), timeout=_STOP_TIMEOUT)
        finally:
            if loop is not None and thread is not None:
                loop.call_soon_threadsafe(loop.stop)
                thread.join(_STOP_TIMEOUT)
                loop.close()
            self._loop = self._thread = None
            if self._socket is not None:
                self._socket.close()
                self._socket = None
            if self._own_config_dir is not None:
                self._own_config_dir.cleanup()
                self._own_config_dir = self._config_dir = None

    def __enter__(self) -> FakeModal:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def terminate(self, input_id: str) -> None:
        """``terminate_input``, from the test's thread."""
        self._run(self.terminate_input(input_id), timeout=30)

    def _run(self, coroutine: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)

    async def _serve(self) -> None:
        # patch_mock_servicer fills in the abstract methods, which mypy cannot see.
        servicer = FakeModalServicer(self, self.token_id, self.token_secret)  # type: ignore[abstract]
        self._server = grpclib.server.Server([servicer])
        grpclib.events.listen(self._server, grpclib.events.RecvRequest, servicer.on_request)
        await self._server.start(sock=self._socket)
        # Workers get a temp dir of their own, like a container's local disk: nothing they
        # cache there (code packages, say) outlives this fake.
        worker_tmp = self.config_path.parent / "worker-tmp"
        worker_tmp.mkdir(exist_ok=True)
        await self.open({**self.env, "TMPDIR": str(worker_tmp)})

    async def _shutdown(self) -> None:
        await self.close()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None


def reset_modal_client() -> None:
    """Close and forget the client that `modal.Client.from_env()` caches per process."""
    client = _Client._client_from_env
    if client is not None:
        _Client._set_env_client(None)
        synchronizer._translate_out(client).close()  # type: ignore[no-untyped-call]
