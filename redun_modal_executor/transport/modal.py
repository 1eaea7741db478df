"""The Modal backend: every call goes to the deployed generic function, with per-task options.

All Modal traffic happens on the modal client's own asyncio loop (its synchronizer's thread),
through the client's ``.aio`` API: ``spawn`` queues a coroutine and returns at once, so the
scheduler thread never waits on the network. On that loop each ``.aio`` call runs in place;
from any other loop it would hop threads, with two futures and a task per call.

Per call there is one ``FunctionMap`` (spawn) and one long-polled ``FunctionGetOutputs``
(get); the function is looked up once per image and bound once per distinct option set
(``with_options``), and the code package is uploaded once per run.

Each long-poll holds an HTTP/2 stream for as long as its call runs. Servers cap the streams of
a connection (h2's default is 100), and h2's bookkeeping per new stream grows with the streams
already open, so the gets are spread over several clients, each with its own connection.
"""

from __future__ import annotations

import asyncio
import functools
import math
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from typing import Any, TypeVar

from redun_modal_executor.code_package import CodePackage
from redun_modal_executor.config import PASSTHROUGH_MODAL_OPTIONS, CallOptions, ExecutorConfig
from redun_modal_executor.errors import (
    AppNotDeployedError,
    CallCancelledError,
    CallTimeoutError,
    ModalAuthError,
    RemoteCallError,
)
from redun_modal_executor.modal_app import code_dict_name, function_name
from redun_modal_executor.transport import OnDone, OnSpawned, Reencode, Transport

MODAL_DEFAULT_TIMEOUT = 300
INTERNAL_FAILURE_ATTEMPTS = 3
TRANSIENT_ATTEMPTS = 5
TRANSIENT_BACKOFF_SECONDS = 0.5
LOG_TAIL_ENTRIES = 50
LOG_TAIL_SECONDS = 5.0
STOP_SECONDS = 30.0
# Long-polls per connection: well under h2's default cap of 100 streams, which spawns share.
POLLS_PER_CONNECTION = 50
_FULL = object()  # No client has room for another poll.
T = TypeVar("T")
DEPLOY_HINT = "run `redun-modal deploy` (once, and after changing images or dependencies)"
TOKEN_HINT = "run `modal token new`, or set MODAL_TOKEN_ID and MODAL_TOKEN_SECRET"


def modal_options(options: CallOptions, environment: str | None) -> dict[str, Any]:
    """``Function.with_options`` keyword arguments for a job's options (empty: use the base)."""
    import modal

    kwargs: dict[str, Any] = {}
    if options.timeout is not None:
        kwargs["timeout"] = math.ceil(options.timeout)
    for name in PASSTHROUGH_MODAL_OPTIONS:
        value = getattr(options, name)
        if value is not None:
            kwargs[name] = value
    if options.secrets:
        kwargs["secrets"] = [
            modal.Secret.from_name(name, environment_name=environment) for name in options.secrets
        ]
    if options.volumes:
        kwargs["volumes"] = {
            path: modal.Volume.from_name(name, environment_name=environment)
            for path, name in options.volumes
        }
    return kwargs


class ModalTransport(Transport):
    """Runs calls on the deployed app's generic function."""

    ships_code = True
    reattaches = True

    def __init__(
        self, on_done: OnDone, on_spawned: OnSpawned, reencode: Reencode, config: ExecutorConfig
    ) -> None:
        super().__init__(on_done)
        self._on_spawned = on_spawned
        self._reencode = reencode
        self._config = config
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None  # Set while running.
        # Owned by the loop thread.
        self._bases: dict[str, asyncio.Future[Any]] = {}  # image -> its deployed function
        self._functions: dict[CallOptions, asyncio.Future[Any]] = {}  # bound variants
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._labels: dict[str, str] = {}
        self._spawns: dict[str, asyncio.Future[Any]] = {}  # key -> its FunctionCall, once spawned
        self._pollers = _Pollers()
        self._code_upload: Future[None] | None = None

    # Called from any thread.

    def spawn(
        self,
        key: str,
        label: str,
        payload: bytes,
        options: CallOptions,
        reattach_to: str | None = None,
    ) -> None:
        loop = self._running_loop()
        loop.call_soon_threadsafe(self._start, key, label, payload, options, reattach_to)

    def spawn_detached(self, label: str, payload: bytes, options: CallOptions) -> str:
        coroutine = self._spawn_detached(label, payload, options)
        return asyncio.run_coroutine_threadsafe(coroutine, self._running_loop()).result()

    def upload_code(self, package: CodePackage) -> dict[str, Any]:
        loop = self._running_loop()
        self._code_upload = asyncio.run_coroutine_threadsafe(self._upload(package), loop)
        return {
            "kind": "modal_dict",
            "name": code_dict_name(self._config),
            "environment": self._config.environment,
        }

    def stop(self) -> int:
        with self._lock:
            loop, self._loop = self._loop, None
        if loop is None:
            return 0
        return asyncio.run_coroutine_threadsafe(self._stop(), loop).result()

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                self._loop = _client_loop()
            return self._loop

    # On the loop thread.

    def _start(
        self,
        key: str,
        label: str,
        payload: bytes,
        options: CallOptions,
        reattach_to: str | None,
    ) -> None:
        self._labels[key] = label
        self._tasks[key] = asyncio.get_running_loop().create_task(
            self._run(key, label, payload, options, reattach_to)
        )

    async def _run(
        self,
        key: str,
        label: str,
        payload: bytes | None,
        options: CallOptions,
        reattach_to: str | None,
    ) -> None:
        import modal.exception

        outcome: bytes | BaseException
        if reattach_to is not None:
            reattached = await self._reattach(key, reattach_to)
            if reattached is not None:
                self._finish(key, reattached)
                return
        try:
            function = await self._ready_function(options)
            for attempt in range(1, INTERNAL_FAILURE_ATTEMPTS + 1):
                if payload is None:
                    payload = self._reencode(key)
                # Shielded: if the run stops mid-spawn, stop() still learns the call id and
                # cancels the call instead of leaving it running unseen.
                self._spawns[key] = asyncio.ensure_future(
                    _through_transient_errors(functools.partial(function.spawn.aio, payload))
                )
                call = await asyncio.shield(self._spawns[key])
                payload = None  # Sent: kept, a big value would take memory until the call ends.
                self._on_spawned(key, call.object_id)
                try:
                    outcome = await self._get(call, call.object_id)
                    break
                except modal.exception.InternalFailure:
                    # Modal lost the input (not the task's fault): run it again, a few times.
                    if attempt == INTERNAL_FAILURE_ATTEMPTS:
                        raise
        except asyncio.CancelledError:
            raise
        except Exception as error:
            outcome = await self._explain(error, label, options, self._spawned_call(key))
        self._finish(key, outcome)

    async def _ready_function(self, options: CallOptions) -> Any:
        """The function bound to ``options``, once the code package is uploaded."""
        if options not in self._functions:
            self._functions[options] = asyncio.ensure_future(self._bind(options))
        function = await asyncio.shield(self._functions[options])
        if self._code_upload is not None:
            await asyncio.wrap_future(self._code_upload)
        return function

    async def _spawn_detached(self, label: str, payload: bytes, options: CallOptions) -> str:
        try:
            function = await self._ready_function(options)
            call = await _through_transient_errors(lambda: function.spawn.aio(payload))
        except Exception as error:
            raise await self._explain(error, label, options, None) from None
        return call.object_id

    def _finish(self, key: str, outcome: bytes | BaseException) -> None:
        self._tasks.pop(key, None)
        self._spawns.pop(key, None)
        self._labels.pop(key, None)
        self._on_done(key, outcome)

    async def _reattach(self, key: str, call_id: str) -> bytes | None:
        """The result of a call spawned by an earlier client, or None if it cannot be had
        (expired, cancelled, failed outside the task, unknown): then the job runs afresh."""
        import modal

        call = modal.FunctionCall.from_id(call_id)
        self._spawns[key] = asyncio.get_running_loop().create_future()
        self._spawns[key].set_result(call)  # stop() cancels it like a call of our own.
        try:
            return await self._get(call, call_id)
        except asyncio.CancelledError:
            raise
        except Exception:
            del self._spawns[key]
            return None

    async def _get(self, call: Any, call_id: str) -> Any:
        """The call's result, long-polled over a connection with a stream to spare."""
        import modal

        client = await self._pollers.acquire()
        try:
            if client is not None:
                call = modal.FunctionCall.from_id(call_id, client=client)
            return await _through_transient_errors(_own_get(call))
        finally:
            self._pollers.release(client)

    def _spawned_call(self, key: str) -> Any:
        spawn = self._spawns.get(key)
        if spawn is None or not spawn.done() or spawn.cancelled() or spawn.exception():
            return None
        return spawn.result()

    async def _bind(self, options: CallOptions) -> Any:
        """The generic function for ``options``: the image's base, bound to the rest."""
        import modal.exception

        image = options.image
        if image not in self._bases:
            self._bases[image] = asyncio.ensure_future(self._look_up(image))
        base = await asyncio.shield(self._bases[image])
        kwargs = modal_options(options, self._config.environment)
        if not kwargs:
            return base
        variant = base.with_options(**kwargs)
        try:
            await variant.hydrate.aio()
        except modal.exception.NotFoundError as error:
            raise RemoteCallError(
                f"a Modal Secret or Volume named in the task options was not found ({error}); "
                "create it (`modal secret create`, `modal volume create`) or fix the name."
            ) from None
        return variant

    async def _look_up(self, image: str) -> Any:
        """The deployed generic function for one image, hydrated (once per image)."""
        import modal
        import modal.exception

        name = function_name(image)
        environment = self._config.environment
        base = modal.Function.from_name(self._config.app_name, name, environment_name=environment)
        try:
            await base.hydrate.aio()
        except modal.exception.NotFoundError as error:
            raise AppNotDeployedError(
                f"the Modal app {self._config.app_name!r} has no function {name!r} in "
                f"environment {environment or '(profile default)'} ({error}): {DEPLOY_HINT}."
            ) from None
        except modal.exception.AuthError as error:
            raise ModalAuthError(_auth_message(error)) from None
        return base

    async def _upload(self, package: CodePackage) -> None:
        import modal
        import modal.exception

        name = code_dict_name(self._config)
        packages = modal.Dict.from_name(
            name, environment_name=self._config.environment, create_if_missing=True
        )
        try:
            # Usually the package is there from an earlier run: ask before sending it.
            if not await packages.contains.aio(package.digest):
                await packages.put.aio(package.digest, package.data, skip_if_exists=True)
        except modal.exception.AuthError as error:
            raise ModalAuthError(_auth_message(error)) from None
        except Exception as error:
            raise RemoteCallError(
                f"could not upload the code package {package.digest[:12]} to the Modal Dict "
                f"{name!r}: {type(error).__name__}: {error}"
            ) from None

    async def _explain(
        self, error: Exception, label: str, options: CallOptions, call: Any
    ) -> BaseException:
        """Turn a Modal exception into one that says what happened and what to do."""
        import modal.exception

        if isinstance(error, AppNotDeployedError | ModalAuthError | RemoteCallError):
            return type(error)(f"{label}: {error}")
        if isinstance(error, modal.exception.AuthError):
            return ModalAuthError(f"{label}: {_auth_message(error)}")
        call_id = getattr(call, "object_id", None) or "not spawned"
        if isinstance(error, modal.exception.FunctionTimeoutError):
            seconds = math.ceil(options.timeout or MODAL_DEFAULT_TIMEOUT)
            explained: BaseException = CallTimeoutError(
                f"{label}: timed out after {seconds} s on Modal (the `timeout` task option or "
                f"executor setting; Modal's default is {MODAL_DEFAULT_TIMEOUT} s) [call {call_id}]"
            )
        elif isinstance(error, modal.exception.InternalFailure):
            explained = RemoteCallError(
                f"{label}: Modal failed the call {INTERNAL_FAILURE_ATTEMPTS} times with an "
                f"internal error: {error} [call {call_id}]"
            )
        else:
            kind = "" if isinstance(error, modal.exception.RemoteError) else type(error).__name__
            explained = RemoteCallError(
                f"{label}: Modal call {call_id} failed: {kind + ': ' if kind else ''}{error}"
            )
        explained.logs = await self._log_tail(call)  # type: ignore[attr-defined]
        return explained

    async def _log_tail(self, call: Any) -> list[str]:
        """The last lines of a failed call's Modal log; empty if they cannot be had quickly."""
        if call is None:
            return []
        lines: list[str] = []

        async def read() -> None:
            async for entry in call.logs.tail.aio(entries=LOG_TAIL_ENTRIES):
                lines.append(entry.message.rstrip("\n") + "\n")

        try:
            await asyncio.wait_for(read(), LOG_TAIL_SECONDS)
        except Exception:  # Logs are a courtesy: never let them hide the real error.
            pass
        return lines

    async def _stop(self) -> int:
        """Cancel every call, close the extra clients, forget the run; return how many calls
        were cancelled on Modal."""
        cancelled = await self._cancel_all()
        await self._pollers.close()
        # A restart looks up, binds and uploads afresh (a deploy may have happened meanwhile).
        self._bases.clear()
        self._functions.clear()
        self._pollers = _Pollers()
        self._code_upload = None
        return cancelled

    async def _cancel_all(self) -> int:
        """Cancel every call in flight on Modal, within ``STOP_SECONDS``; return how many."""
        deadline = asyncio.get_running_loop().time() + STOP_SECONDS
        spawns, labels = dict(self._spawns), dict(self._labels)
        for task in list(self._tasks.values()):
            task.cancel()
        unspawned = [key for key in self._tasks if key not in spawns]
        self._tasks.clear()
        self._spawns.clear()
        self._labels.clear()
        outcomes = await _within(deadline, *spawns.values())
        calls = {
            key: call
            for key, call in zip(spawns, outcomes, strict=True)
            if not isinstance(call, BaseException)
        }
        await _within(deadline, *(call.cancel.aio() for call in calls.values()))
        for key, call in calls.items():
            message = f"{labels[key]}: cancelled on Modal [call {call.object_id}]"
            self._on_done(key, CallCancelledError(message))
        for key in unspawned:
            self._on_done(key, CallCancelledError(f"{labels[key]}: cancelled before it ran"))
        return len(calls)


class _Pollers:
    """Modal clients for the long-polled gets, each over its own connection (on the loop thread).

    ``None`` stands for the default client, which also spawns; it takes the first
    ``POLLS_PER_CONNECTION`` polls, so small runs open no connection of their own. Another
    client is opened whenever every one is full.
    """

    def __init__(self) -> None:
        self._polls: dict[Any, int] = {None: 0}  # client -> polls it holds now
        self._current: Any = None  # The client filled first.
        self._opening: asyncio.Future[Any] | None = None
        self._can_open = True

    async def acquire(self) -> Any:
        """A client with room for one more poll (``None``: the default one)."""
        while True:
            client = self._with_room()
            if client is not _FULL:
                self._polls[client] += 1
                return client
            if self._opening is None:
                self._opening = asyncio.ensure_future(_open_client())
            opening = self._opening
            try:
                client = await asyncio.shield(opening)
            finally:
                if self._opening is opening and opening.done():
                    self._opening = None
            if client is None:  # No credentials to open one with: the default client it is.
                self._can_open = False
            elif client not in self._polls:
                self._polls[client] = 0
                self._current = client

    def release(self, client: Any) -> None:
        if client in self._polls:
            self._polls[client] -= 1

    async def close(self) -> None:
        """Close the clients opened here (not the default one)."""
        clients = [client for client in self._polls if client is not None]
        self._polls = {None: 0}
        self._current = None
        for client in clients:
            await client.close.aio()

    def _with_room(self) -> Any:
        """A client with fewer than ``POLLS_PER_CONNECTION`` polls, or ``_FULL``."""
        if self._polls.get(self._current, POLLS_PER_CONNECTION) < POLLS_PER_CONNECTION:
            return self._current
        for client, polls in self._polls.items():
            if polls < POLLS_PER_CONNECTION:
                self._current = client
                return client
        return _FULL if self._can_open else None


# Two private parts of the modal client save a thread hop and a wrapper per call. Should a
# modal release drop them, the public API does the same work, a little slower.
_fallback_loop: asyncio.AbstractEventLoop | None = None


def _client_loop() -> asyncio.AbstractEventLoop:
    """The modal client's own event loop: there, its ``.aio`` calls run without a thread hop."""
    global _fallback_loop
    try:
        from modal._utils.async_utils import synchronizer

        return synchronizer._get_loop(start=True)
    except (ImportError, AttributeError, TypeError):
        if _fallback_loop is None:
            _fallback_loop = asyncio.new_event_loop()
            threading.Thread(
                target=_fallback_loop.run_forever, name="redun-modal-calls", daemon=True
            ).start()
        return _fallback_loop


def _own_get(call: Any) -> Callable[[], Awaitable[Any]]:
    """The call's own ``get`` coroutine function, for its own loop: ``.aio`` would add
    synchronicity's wrapping (about 5 KB per call in flight, and its CPU)."""
    try:
        from modal._utils.async_utils import synchronizer

        return synchronizer._translate_in(call).get
    except (ImportError, AttributeError, TypeError):
        return call.get.aio


async def _open_client() -> Any:
    """A new Modal client with the default one's token, or None if it was not made from one
    (OAuth credentials, or inside a Modal container)."""
    import modal
    import modal.config

    token_id, token_secret = modal.config.config["token_id"], modal.config.config["token_secret"]
    if not (token_id and token_secret) or not modal.is_local():
        return None
    return await modal.Client.from_credentials.aio(token_id, token_secret)


async def _through_transient_errors(request: Callable[[], Awaitable[T]]) -> T:
    """``request()``, tried again (with backoff) while Modal's API is briefly unreachable.

    The client already retries each RPC a few times under one idempotency key; this covers
    outages longer than that. A spawn is retried only after the client gave up on every
    attempt of the previous one, so a duplicate would need all of those to be lost after the
    server acted on one.
    """
    import modal.exception

    transient = (
        modal.exception.ServiceError,
        modal.exception.InternalError,
        modal.exception.ResourceExhaustedError,
        modal.exception.ConnectionError,
    )
    for attempt in range(1, TRANSIENT_ATTEMPTS + 1):
        try:
            return await request()
        except transient:
            if attempt == TRANSIENT_ATTEMPTS:
                raise
            await asyncio.sleep(TRANSIENT_BACKOFF_SECONDS * 2 ** (attempt - 1))
    raise AssertionError("unreachable")


def _auth_message(error: Exception) -> str:
    return f"Modal could not authenticate ({error}): {TOKEN_HINT}."


async def _within(deadline: float, *awaitables: Any) -> list[Any]:
    """Each awaitable's result or exception; ``TimeoutError`` for any still pending at
    ``deadline`` (event-loop time)."""
    futures = [asyncio.ensure_future(awaitable) for awaitable in awaitables]
    if not futures:
        return []
    remaining = max(0.0, deadline - asyncio.get_running_loop().time())
    await asyncio.wait(futures, timeout=remaining)
    results: list[Any] = []
    for future in futures:
        if not future.done():
            future.cancel()
            results.append(TimeoutError())
        else:
            results.append(future.exception() or future.result())
    return results
