"""Batched calls: jobs with the same options go to Modal as inputs of one map-type call.

What the scheduler submits in one burst (a fan-out) becomes one asynchronous map call, as
the client's own ``spawn_map`` makes it: one ``FunctionMap``, the inputs added with
``FunctionPutInputs`` (up to 512 a request), and one long-polled ``FunctionGetOutputs`` that
returns the outputs of many inputs as they finish. There is no waiting to fill a batch: the
first job goes out at once, and jobs that come while a request is on the wire go with the
next one.

::

    queued --put--> owed --output--> finished
      ^                |
      +---- internal failure (a few times), payload encoded again

A batch takes new inputs while it owes outputs, and for ``BATCH_IDLE_SECONDS`` after: the
next stage of a workflow (a reduce after its map) joins the same call, with no new
``FunctionMap`` and no second poll. Then it is finished (``FunctionFinishInputs``), and the
next job opens a new one. Each job's input index is reported with its call id, so the ledger
and the job's tags name both.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from redun_modal_executor.backends.modal.client import MapWire
from redun_modal_executor.backends.modal.explain import (
    INTERNAL_FAILURE_ATTEMPTS,
    UNREACHABLE_SECONDS,
    explain,
    through_transient_errors,
)
from redun_modal_executor.calls import Call, CallAddress
from redun_modal_executor.config import CallOptions
from redun_modal_executor.errors import JOB_ERRORS, CallCancelledError

# Inputs of one map call at most: Modal's limits per call are far higher; a bound keeps a
# long run's outputs (kept on Modal for reattaching) in calls of a readable size.
MAX_BATCH_INPUTS = 10_000
# Inputs made at once (blob uploads of big payloads among them).
INPUTS_IN_PARALLEL = 16
# How long a batch that owes nothing waits for new inputs before it is finished. Waiting
# costs no request: nothing is polled while nothing is owed.
BATCH_IDLE_SECONDS = 2.0
# A batch that owes this many outputs paces its polls: each poll waits until about
# OUTPUTS_PER_POLL outputs are due at the rate they came at, PACE_SECONDS at most. A poll
# answers as soon as one output is ready, so without pacing a big fan-out costs a request per
# few outputs; with it, an output waits PACE_SECONDS more at most, in a batch that runs far
# longer than that.
PACED_OWED = 1000
OUTPUTS_PER_POLL = 100
PACE_SECONDS = 5.0


@dataclass(eq=False)
class _Input:
    """One job's input: its call, and where it is in its batch once put."""

    call: Call
    attempt: int = 1
    index: int | None = None
    input_id: str | None = None  # Known once Modal has the input.


@dataclass(eq=False)
class _Batch:
    """One map call: the inputs it owes outputs for, and its output loop."""

    options: CallOptions
    function: Any
    call_id: str
    size: int = 0  # Inputs given an index (put, or being put).
    owed: dict[int, _Input] = field(default_factory=dict)
    accepting: bool = True
    collecting: asyncio.Task[None] | None = None
    woken: asyncio.Event = field(default_factory=asyncio.Event)  # Set when inputs are added.


class Batches:
    """The batched calls of one run, on the modal client's loop."""

    def __init__(
        self,
        wire: MapWire,
        ready_function: Callable[[CallOptions], Awaitable[Any]],
        connected: Callable[[], Awaitable[Any]],
    ) -> None:
        self._wire = wire
        self._ready_function = ready_function
        self._connected = connected
        self._queued: dict[CallOptions, list[_Input]] = {}
        self._pumps: dict[CallOptions, asyncio.Task[None]] = {}
        self._open: dict[CallOptions, _Batch] = {}
        # Every batch that owes outputs, or may still be given inputs.
        self._batches: dict[str, _Batch] = {}
        self._opening: set[asyncio.Future[str]] = set()
        self._delivering: set[asyncio.Task[None]] = set()
        self._stopped = False

    def add(self, call: Call) -> None:
        """Send ``call`` with the next request of its options' batch."""
        self._queue(_Input(call))

    def _queue(self, item: _Input) -> None:
        options = item.call.options
        self._queued.setdefault(options, []).append(item)
        if options not in self._pumps:
            self._pumps[options] = asyncio.get_running_loop().create_task(self._pump(options))

    async def _pump(self, options: CallOptions) -> None:
        """Put the queued inputs of ``options`` into its open batch until none is queued."""
        queued = self._queued[options]
        try:
            function = await self._ready_function(options)
            while queued:
                batch = self._open.get(options)
                if batch is None:
                    batch = await self._open_batch(options, function)
                # Everything queued by now goes in this request, up to the request's limit.
                room = min(MapWire.PUT_CHUNK, MAX_BATCH_INPUTS - batch.size)
                chunk, queued[:] = queued[:room], queued[room:]
                await self._put(batch, chunk)
                if batch.size >= MAX_BATCH_INPUTS:
                    self._finish_inputs(batch)
        except asyncio.CancelledError:
            raise
        except Exception as error:  # No function, or no map call: every queued job fails.
            items, queued[:] = list(queued), []
            for item in items:
                item.call.finish(await explain(error, item.call.label, options, None))
        finally:
            del self._pumps[options]
            if queued and not self._stopped:  # Jobs that came while the last ones failed.
                self._pumps[options] = asyncio.get_running_loop().create_task(self._pump(options))

    async def _open_batch(self, options: CallOptions, function: Any) -> _Batch:
        deadline = asyncio.get_running_loop().time() + UNREACHABLE_SECONDS
        # Shielded: a stop in the middle still learns the call id, and cancels the call.
        opening = asyncio.ensure_future(
            through_transient_errors(lambda: self._wire.open(function), deadline)
        )
        self._opening.add(opening)
        opening.add_done_callback(self._opening.discard)
        call_id = await asyncio.shield(opening)
        batch = self._open[options] = self._batches[call_id] = _Batch(options, function, call_id)
        return batch

    async def _put(self, batch: _Batch, chunk: list[_Input]) -> None:
        """Encode, make and put ``chunk``'s inputs; a job that cannot be sent fails alone."""
        payloads = await asyncio.to_thread(_payloads, chunk)
        limit = asyncio.Semaphore(INPUTS_IN_PARALLEL)

        async def make(payload: bytes) -> Any:
            async with limit:
                try:
                    return await self._wire.make_input(batch.function, payload)
                except Exception as error:
                    return error

        encoded = []
        for item, payload in zip(chunk, payloads, strict=True):
            if isinstance(payload, BaseException):  # The job's own problem: it fails as it is.
                item.call.finish(payload)
            else:
                encoded.append(item)
        made = await asyncio.gather(
            *(make(p) for p in payloads if not isinstance(p, BaseException))
        )
        del payloads  # Each payload is in its input now (or in a blob).
        inputs, sent, unmade = [], [], []
        for item, modal_input in zip(encoded, made, strict=True):
            if isinstance(modal_input, BaseException):
                unmade.append((item, modal_input))
                continue
            item.index = modal_input.idx = batch.size
            batch.size += 1
            batch.owed[item.index] = item
            inputs.append(modal_input)
            sent.append(item)
        del made
        for item, error in unmade:
            await self._fail(batch, item, error)
        if not sent:
            return
        batch.woken.set()
        deadline = asyncio.get_running_loop().time() + UNREACHABLE_SECONDS
        try:
            input_ids = await through_transient_errors(
                lambda: self._wire.put(batch.function, batch.call_id, inputs), deadline
            )
        except Exception as error:
            # Modal may hold some: the batch takes no more, and its owed jobs fail.
            self._open.pop(batch.options, None)
            batch.accepting = False
            for item in sent:
                batch.owed.pop(item.index, None)  # type: ignore[arg-type]
                await self._fail(batch, item, error)
            return
        for item in sent:
            assert item.index is not None
            item.input_id = input_ids.get(item.index)
            item.call.spawned(CallAddress(batch.call_id, item.index))
        if batch.collecting is None:
            batch.collecting = asyncio.get_running_loop().create_task(self._collect(batch))

    def _finish_inputs(self, batch: _Batch) -> None:
        """The batch takes no more inputs: tell Modal (in the background)."""
        if not batch.accepting:
            return
        batch.accepting = False
        batch.woken.set()  # An idle output loop ends now.
        if self._open.get(batch.options) is batch:
            del self._open[batch.options]
        if not batch.owed:
            self._batches.pop(batch.call_id, None)
        finish = self._wire.finish(batch.function, batch.call_id, batch.size)
        task = asyncio.get_running_loop().create_task(_quietly(finish))
        self._delivering.add(task)
        task.add_done_callback(self._delivering.discard)

    async def _collect(self, batch: _Batch) -> None:
        """The batch's output loop: hand each output to its job as it comes."""
        last_entry_id = "0-0"
        loop = asyncio.get_running_loop()
        answered = loop.time()
        while batch.owed or batch.accepting:
            if not batch.owed:
                if not await self._woken(batch):
                    break
                continue
            try:
                poll = functools.partial(
                    self._wire.outputs, await self._connected(), batch.call_id, last_entry_id
                )
                polled = loop.time()
                response = await through_transient_errors(poll)
            except asyncio.CancelledError:
                raise
            except Exception as error:  # Modal is out of reach for good: the owed jobs fail.
                for item in list(batch.owed.values()):
                    del batch.owed[item.index]  # type: ignore[arg-type]
                    await self._fail(batch, item, error)
                break
            last_entry_id = response.last_entry_id
            since, answered = answered, loop.time()
            outputs = len(response.outputs)
            pause = _pause(len(batch.owed), outputs, answered - since, answered - polled)
            for output in response.outputs:
                item = batch.owed.pop(output.idx, None)
                if item is None:  # Not owed (any more): a duplicate.
                    continue
                item.input_id = item.input_id or output.input_id
                task = asyncio.get_running_loop().create_task(self._deliver(batch, item, output))
                self._delivering.add(task)
                task.add_done_callback(self._delivering.discard)
            if pause:
                await asyncio.sleep(pause)
        self._finish_inputs(batch)
        self._batches.pop(batch.call_id, None)

    async def _woken(self, batch: _Batch) -> bool:
        """Wait for the batch's next inputs; False once none came for ``BATCH_IDLE_SECONDS``
        and none are being made."""
        batch.woken.clear()
        while batch.accepting:
            try:
                await asyncio.wait_for(batch.woken.wait(), BATCH_IDLE_SECONDS)
                return True
            except TimeoutError:
                if batch.options not in self._pumps:
                    return False
        return False

    async def _deliver(self, batch: _Batch, item: _Input, output: Any) -> None:
        """One output to its job: the result, or the job's error; an input Modal failed is
        sent again (as a new input) a few times."""
        import modal.exception

        try:
            outcome = await self._wire.result(await self._connected(), output)
        except modal.exception.InternalFailure as error:
            if item.attempt < INTERNAL_FAILURE_ATTEMPTS and not self._stopped:
                item.attempt += 1
                item.index = item.input_id = None
                self._queue(item)
                return
            await self._fail(batch, item, error)
            return
        except Exception as error:
            await self._fail(batch, item, error)
            return
        item.call.finish(outcome)

    async def _fail(self, batch: _Batch, item: _Input, error: Exception) -> None:
        call, address = item.call, None
        if item.index is not None:
            address = CallAddress(batch.call_id, item.index)
        function_call = _function_call(batch.call_id) if address is not None else None
        explained = await explain(
            error, call.label, call.options, function_call, address, item.input_id
        )
        call.finish(explained)

    async def stop(self, deadline: float) -> int:
        """Cancel every batch's call on Modal (within ``deadline``, loop time) and finish its
        jobs as cancelled; return how many jobs were."""
        self._stopped = True
        for pump in self._pumps.values():
            pump.cancel()
        remaining = max(0.0, deadline - asyncio.get_running_loop().time())
        opening = list(self._opening)
        if opening:  # Map calls being made: wait for their ids, to cancel them too.
            await asyncio.wait(opening, timeout=remaining)
        for batch in self._batches.values():
            if batch.collecting is not None:
                batch.collecting.cancel()
        for task in self._delivering:
            task.cancel()
        # A batch that owes outputs is cancelled; an idle one is finished.
        owing = [batch.call_id for batch in self._batches.values() if batch.owed]
        owing += [future.result() for future in opening if _succeeded(future)]
        requests = [_function_call(call_id).cancel.aio() for call_id in owing]
        requests += [
            self._wire.finish(batch.function, batch.call_id, batch.size)
            for batch in self._batches.values()
            if batch.accepting and not batch.owed
        ]
        if requests:
            remaining = max(0.0, deadline - asyncio.get_running_loop().time())
            await asyncio.wait([asyncio.ensure_future(r) for r in requests], timeout=remaining)
        cancelled = 0
        owed = [(batch, item) for batch in self._batches.values() for item in batch.owed.values()]
        queued = [(None, item) for items in self._queued.values() for item in items]
        for batch, item in [*owed, *queued]:
            if batch is not None:
                where = f"cancelled on Modal [call {batch.call_id} input {item.index}]"
            else:
                where = "cancelled before it ran"
            finished = item.call.finish(CallCancelledError(f"{item.call.label}: {where}"))
            cancelled += finished and batch is not None
        self._batches.clear()
        self._queued.clear()
        return cancelled


def _pause(owed: int, outputs: int, cycle: float, wait: float) -> float:
    """How long to wait before the next poll of a batch that owed ``owed`` outputs, when a
    poll gave ``outputs`` after ``wait`` seconds, ``cycle`` seconds after the one before."""
    if owed < PACED_OWED or outputs == 0 or outputs >= OUTPUTS_PER_POLL:
        return 0.0
    seconds_per_output = max(cycle, 1e-3) / outputs
    return min(PACE_SECONDS, max(0.0, OUTPUTS_PER_POLL * seconds_per_output - wait))


def _payloads(chunk: list[_Input]) -> list[bytes | BaseException]:
    """Each input's payload (held, or encoded again), or the error that kept it from one."""
    payloads: list[bytes | BaseException] = []
    for item in chunk:
        try:
            payloads.append(item.call.take_payload())
        except JOB_ERRORS as error:  # The job's own problem: it fails as it is.
            payloads.append(error)
    return payloads


def _function_call(call_id: str) -> Any:
    import modal

    return modal.FunctionCall.from_id(call_id)


def _succeeded(future: asyncio.Future[Any]) -> bool:
    return future.done() and not future.cancelled() and future.exception() is None


async def _quietly(request: Awaitable[Any]) -> None:
    """``request``, whose failure changes nothing for the run (Modal ends the call anyway)."""
    try:
        await request
    except Exception:
        pass
