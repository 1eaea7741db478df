"""Calls on Modal: every call goes to the deployed generic function, with per-task options.

All Modal traffic of the calls happens on one asyncio loop (the modal client's own, see
``client``), through the client's ``.aio`` API: ``spawn`` queues a coroutine and returns at
once, so the scheduler thread never waits on the network. Payloads are encoded again (for a
resubmission) in a worker thread, never on the loop.

New calls go out in batches (``batches``): the jobs with the same options share one map-type
call. Where the client's map RPCs cannot be borrowed (an untested modal release), and for a
call an earlier run left (reattaching), each job has its own call: one ``FunctionMap``
(spawn) and one long-polled ``FunctionGetOutputs`` (get). The function is looked up once per
image and bound once per distinct option set (``with_options``), and the code package is
uploaded once per run.
"""

from __future__ import annotations

import asyncio
import functools
import math
import threading
from collections.abc import Awaitable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from redun_modal_executor.backends.base import BackendRef
from redun_modal_executor.backends.modal.app import code_dict_name, function_name
from redun_modal_executor.backends.modal.batches import Batches
from redun_modal_executor.backends.modal.client import access
from redun_modal_executor.backends.modal.explain import (
    DEPLOY_HINT,
    INTERNAL_FAILURE_ATTEMPTS,
    UNREACHABLE_SECONDS,
    auth_message,
    explain,
    through_transient_errors,
    unreachable,
    within_reach,
)
from redun_modal_executor.backends.modal.pollers import Pollers
from redun_modal_executor.calls import Call, CallAddress
from redun_modal_executor.code_package import CodePackage
from redun_modal_executor.config import PASSTHROUGH_MODAL_OPTIONS, CallOptions
from redun_modal_executor.errors import (
    AppNotDeployedError,
    CallCancelledError,
    ModalAuthError,
    RemoteCallError,
)

STOP_SECONDS = 30.0


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
        from redun_modal_executor.backends.modal.storage import modal_mount

        kwargs["volumes"] = {
            path: modal_mount(mount, environment) for path, mount in options.volumes
        }
    if options.env:
        # The client turns it into a Secret (Secret.from_dict), made when the variant is bound.
        kwargs["env"] = dict(options.env)
    return kwargs


@dataclass
class _WorkItem:
    """One call in flight on the loop: its coroutine, and its FunctionCall once known."""

    call: Call
    task: asyncio.Task[None] | None = None
    # The spawn in progress, shielded: if the run stops mid-spawn, stop() still learns the
    # call id and cancels the call instead of leaving it running unseen.
    spawning: asyncio.Future[Any] | None = None
    function_call: Any = None


class ModalCalls:
    """Runs calls on the deployed app's generic function."""

    def __init__(self, ref: BackendRef) -> None:
        self._ref = ref
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None  # Set while running.
        # Owned by the loop thread.
        self._connecting: asyncio.Future[Any] | None = None  # the default client, connected
        self._bases: dict[str, asyncio.Future[Any]] = {}  # image -> its deployed function
        self._functions: dict[CallOptions, asyncio.Future[Any]] = {}  # bound variants
        self._items: dict[Call, _WorkItem] = {}
        self._batches: Batches | None = None  # This run's, where calls can be batched.
        self._pollers = Pollers()
        self._code_upload: Future[None] | None = None

    # Called from any thread.

    def spawn(self, calls: Sequence[Call]) -> None:
        self._running_loop().call_soon_threadsafe(self._start_all, list(calls))

    def spawn_detached(self, call: Call) -> str:
        coroutine = self._spawn_detached(call)
        return asyncio.run_coroutine_threadsafe(coroutine, self._running_loop()).result()

    def upload_code(self, package: CodePackage) -> None:
        loop = self._running_loop()
        self._code_upload = asyncio.run_coroutine_threadsafe(self._upload(package), loop)

    def stop(self) -> int:
        with self._lock:
            loop, self._loop = self._loop, None
        if loop is None:
            return 0
        return asyncio.run_coroutine_threadsafe(self._stop(), loop).result()

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                self._loop = access().loop()
            return self._loop

    # On the loop thread.

    def _start_all(self, calls: list[Call]) -> None:
        for call in calls:
            self._start(call)

    def _start(self, call: Call) -> None:
        if call.reattach_to is None:
            if self._batches is None and (wire := access().map_wire()) is not None:
                self._batches = Batches(wire, self._ready_function, self._connected)
            if self._batches is not None:
                self._batches.add(call)
                return
        item = self._items[call] = _WorkItem(call)
        item.task = asyncio.get_running_loop().create_task(self._run(item))

    async def _run(self, item: _WorkItem) -> None:
        import modal.exception

        call = item.call
        outcome: bytes | BaseException
        if call.reattach_to is not None:
            reattached = await self._reattach(item, call.reattach_to)
            if reattached is not None:
                self._finish(item, reattached)
                return
        try:
            function = await self._ready_function(call.options)
            for attempt in range(1, INTERNAL_FAILURE_ATTEMPTS + 1):
                payload = call.take_held()
                if payload is None:
                    try:
                        payload = await asyncio.to_thread(call.encode)
                    except Exception as error:  # The job's own problem: report it as it is.
                        self._finish(item, error)
                        return
                spawn = functools.partial(function.spawn.aio, payload)
                del payload  # Sent, a big value would take memory until the call ends.
                # Not cut short (a big payload takes its time), but not retried for long.
                deadline = asyncio.get_running_loop().time() + UNREACHABLE_SECONDS
                item.spawning = asyncio.ensure_future(through_transient_errors(spawn, deadline))
                item.function_call = await asyncio.shield(item.spawning)
                call.spawned(CallAddress(item.function_call.object_id))
                try:
                    outcome = await self._get(item.function_call)
                    break
                except modal.exception.InternalFailure:
                    # Modal lost the input (not the task's fault): run it again, a few times.
                    if attempt == INTERNAL_FAILURE_ATTEMPTS:
                        raise
        except asyncio.CancelledError:
            raise
        except Exception as error:
            outcome = await explain(error, call.label, call.options, item.function_call)
        self._finish(item, outcome)

    def _finish(self, item: _WorkItem, outcome: bytes | BaseException) -> None:
        self._items.pop(item.call, None)
        item.call.finish(outcome)

    async def _ready_function(self, options: CallOptions) -> Any:
        """The function bound to ``options``, once the code package is uploaded."""
        if options not in self._functions:
            self._functions[options] = asyncio.ensure_future(self._bind(options))
        function = await asyncio.shield(self._functions[options])
        if self._code_upload is not None:
            await asyncio.wrap_future(self._code_upload)
        return function

    async def _spawn_detached(self, call: Call) -> str:
        payload = call.take_held()
        if payload is None:
            payload = await asyncio.to_thread(call.encode)  # Its errors are the job's own.
        try:
            function = await self._ready_function(call.options)
            spawn = functools.partial(function.spawn.aio, payload)
            deadline = asyncio.get_running_loop().time() + UNREACHABLE_SECONDS
            function_call = await through_transient_errors(spawn, deadline)
        except Exception as error:
            raise await explain(error, call.label, call.options, None) from None
        return function_call.object_id

    async def _reattach(self, item: _WorkItem, address: CallAddress) -> bytes | None:
        """The result of a call (or an input of one) spawned by an earlier client, or None if
        it cannot be had (expired, cancelled, failed outside the task, unknown): then the job
        runs afresh."""
        import modal

        item.function_call = modal.FunctionCall.from_id(address.call_id)  # stop() cancels it.
        item.call.reattached(address)
        try:
            await self._connected()  # The long-poll below cannot be bounded.
            return await self._get(item.function_call, address.index or 0)
        except asyncio.CancelledError:
            raise
        except Exception:
            item.function_call = None
            return None

    def _connected(self) -> Awaitable[Any]:
        """The default client, connected; ``ModalUnreachableError`` if it cannot be within
        ``UNREACHABLE_SECONDS``. Once per run: every job that waits to reach Modal shares it."""
        import modal

        if self._connecting is None:
            self._connecting = asyncio.ensure_future(within_reach(modal.Client.from_env.aio))
        return asyncio.shield(self._connecting)

    async def _get(self, function_call: Any, index: int = 0) -> Any:
        """The result of the call's input ``index``, long-polled over a connection with a
        stream to spare."""
        import modal

        client = await self._pollers.acquire()
        try:
            if client is not None:
                function_call = modal.FunctionCall.from_id(function_call.object_id, client=client)
            get = functools.partial(access().get(function_call), index=index)
            return await through_transient_errors(get)
        finally:
            self._pollers.release(client)

    async def _bind(self, options: CallOptions) -> Any:
        """The generic function for ``options``: the image's base, bound to the rest."""
        import modal.exception

        image = options.image
        if image not in self._bases:
            self._bases[image] = asyncio.ensure_future(self._look_up(image))
        base = await asyncio.shield(self._bases[image])
        kwargs = modal_options(options, self._ref.environment)
        if not kwargs:
            return base
        variant = base.with_options(**kwargs)
        try:
            await within_reach(variant.hydrate.aio)
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

        name, app, environment = function_name(image), self._ref.app_name, self._ref.environment
        base = modal.Function.from_name(app, name, environment_name=environment)

        async def hydrate() -> None:
            await self._connected()
            await base.hydrate.aio()

        try:
            await within_reach(hydrate)
        except modal.exception.NotFoundError as error:
            raise AppNotDeployedError(
                f"the Modal app {app!r} has no function {name!r} in environment "
                f"{environment or '(profile default)'} ({error}): {DEPLOY_HINT}."
            ) from None
        except modal.exception.AuthError as error:
            raise ModalAuthError(auth_message(error)) from None
        return base

    async def _upload(self, package: CodePackage) -> None:
        import modal
        import modal.exception

        name = code_dict_name(self._ref.app_name)
        packages = modal.Dict.from_name(
            name, environment_name=self._ref.environment, create_if_missing=True
        )
        contains = functools.partial(packages.contains.aio, package.digest)
        put = functools.partial(
            packages.put.aio, package.digest, package.data, skip_if_exists=True
        )

        async def ask() -> bool:
            await self._connected()
            return await contains()

        try:
            # Usually the package is there from an earlier run: ask before sending it.
            if not await within_reach(ask):
                # Not cut short (it may be big), but not retried for long.
                deadline = asyncio.get_running_loop().time() + UNREACHABLE_SECONDS
                await through_transient_errors(put, deadline)
        except modal.exception.AuthError as error:
            raise ModalAuthError(auth_message(error)) from None
        except Exception as error:
            lost = unreachable(error)
            if lost is not None:
                raise lost from None
            raise RemoteCallError(
                f"could not upload the code package {package.digest[:12]} to the Modal Dict "
                f"{name!r}: {type(error).__name__}: {error}"
            ) from None

    async def _stop(self) -> int:
        """Cancel every call, close the extra clients, forget the run; return how many jobs'
        calls were cancelled on Modal."""
        deadline = asyncio.get_running_loop().time() + STOP_SECONDS
        cancelled = await self._cancel_all(deadline)
        if self._batches is not None:
            cancelled += await self._batches.stop(deadline)
            self._batches = None
        await self._pollers.close()
        # A restart looks up, binds and uploads afresh (a deploy may have happened meanwhile).
        self._connecting = None
        self._bases.clear()
        self._functions.clear()
        self._pollers = Pollers()
        self._code_upload = None
        return cancelled

    async def _cancel_all(self, deadline: float) -> int:
        """Cancel every unbatched call in flight on Modal, by ``deadline`` (loop time); return
        how many."""
        items, self._items = list(self._items.values()), {}
        for item in items:
            if item.task is not None:
                item.task.cancel()
        # Spawns still in progress: wait for their call ids.
        spawning = [item for item in items if item.spawning and not item.spawning.done()]
        outcomes = await _within(deadline, *(item.spawning for item in spawning))
        for item, outcome in zip(spawning, outcomes, strict=True):
            if not isinstance(outcome, BaseException):
                item.function_call = outcome
        spawned = [item for item in items if item.function_call is not None]
        await _within(deadline, *(item.function_call.cancel.aio() for item in spawned))
        for item in items:
            if item.function_call is not None:
                where = f"cancelled on Modal [call {item.function_call.object_id}]"
            else:
                where = "cancelled before it ran"
            item.call.finish(CallCancelledError(f"{item.call.label}: {where}"))
        return len(spawned)


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
