"""The private parts of the modal client this backend borrows, decided once.

On the modal client's own event loop (its synchronizer's thread) each ``.aio`` call runs in
place; from any other loop it hops threads, with two futures and a task per call. The
client's own ``get`` coroutine, awaited there, skips synchronicity's wrapping (about 5 KB per
call in flight, and its CPU). And the RPCs of a map-type call (``MapWire``), which the public
API makes only for a whole iterable at once, carry many jobs per request; with them, a big
payload goes to and from Modal's blob store through a file (``blobs``). All are private: they
are used only on the modal releases they were tested with, and where they are missing;
elsewhere the public ``.aio`` API does the same work with one call per job, a little slower,
on a loop thread of this module's own.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from typing import Any

from redun_modal_executor.backends.modal import blobs

# modal releases (major, minor) whose private parts this module was tested with.
TESTED_MODAL_RELEASES = ((1, 6),)


def _borrowed_synchronizer() -> Any | None:
    """The client's synchronizer, where it may be borrowed; else None."""
    import modal

    try:
        release = tuple(int(part) for part in modal.__version__.split(".")[:2])
        from modal._utils.async_utils import synchronizer
    except (ImportError, ValueError):
        return None
    if release not in TESTED_MODAL_RELEASES:
        return None
    if not (hasattr(synchronizer, "_get_loop") and hasattr(synchronizer, "_translate_in")):
        return None
    return synchronizer


class MapWire:
    """The RPCs of an asynchronous map-type call, made as the client's ``spawn_map`` and
    ``map`` make them (``modal/parallel_map.py``), on the client's loop."""

    # Inputs per FunctionPutInputs: the client's own for spawn_map.
    PUT_CHUNK = 512
    # A long-poll for outputs waits this long on the server (the client's OUTPUTS_TIMEOUT).
    POLL_SECONDS = 55.0

    def __init__(self, synchronizer: Any) -> None:
        self._synchronizer = synchronizer

    def _stub(self, function: Any) -> Any:
        return self._synchronizer._translate_in(function).client._stub

    def _client(self, client: Any) -> Any:
        return self._synchronizer._translate_in(client)

    async def open(self, function: Any) -> str:
        """A new map call of ``function`` (hydrated); its id."""
        from modal_proto import api_pb2

        request = api_pb2.FunctionMapRequest(
            function_id=function.object_id,
            function_call_type=api_pb2.FUNCTION_CALL_TYPE_MAP,
            function_call_invocation_type=api_pb2.FUNCTION_CALL_INVOCATION_TYPE_ASYNC,
        )
        response = await self._stub(function).FunctionMap(request)
        return str(response.function_call_id)

    async def make_input(self, function: Any, payload: bytes) -> Any:
        """The input that calls ``function(payload)`` (its index is set when it is put); a
        payload over Modal's inline limit is uploaded as a blob here, a big one from a file
        (``blobs``)."""
        from modal._serialization import get_preferred_payload_format
        from modal._utils.function_utils import _create_input
        from modal_proto import api_pb2

        impl = self._synchronizer._translate_in(function)
        pickle_format = api_pb2.DATA_FORMAT_PICKLE
        accepted = impl._metadata.supported_input_formats or [pickle_format]
        if (
            len(payload) >= blobs.SPOOL_BYTES
            and get_preferred_payload_format() == pickle_format
            and pickle_format in accepted
        ):
            blob_id, uploads = await blobs.upload_arguments(payload, self._stub(function))
            return api_pb2.FunctionPutInputsItem(
                input=api_pb2.FunctionInput(
                    args_blob_id=blob_id,
                    data_format=pickle_format,
                    method_name=impl._use_method_name,
                ),
                blob_upload_results=uploads,
            )
        return await _create_input(
            (payload,),
            {},
            self._stub(function),
            function=impl,
            function_call_invocation_type=api_pb2.FUNCTION_CALL_INVOCATION_TYPE_ASYNC,
        )

    async def put(self, function: Any, call_id: str, inputs: list[Any]) -> dict[int, str]:
        """Add ``inputs`` to the map call; their input ids, by index."""
        from modal_proto import api_pb2

        request = api_pb2.FunctionPutInputsRequest(
            function_id=function.object_id, function_call_id=call_id, inputs=inputs
        )
        response = await self._stub(function).FunctionPutInputs(request)
        return {item.idx: item.input_id for item in response.inputs}

    async def finish(self, function: Any, call_id: str, count: int) -> None:
        """Tell Modal the map call has all its inputs (``count``)."""
        from modal_proto import api_pb2

        request = api_pb2.FunctionFinishInputsRequest(
            function_id=function.object_id, function_call_id=call_id, num_inputs=count
        )
        await self._stub(function).FunctionFinishInputs(request)

    async def outputs(self, client: Any, call_id: str, last_entry_id: str) -> Any:
        """The outputs after ``last_entry_id`` in order of completion, long-polled:
        a ``FunctionGetOutputsResponse``."""
        import time

        from modal._utils.grpc_utils import Retry
        from modal_proto import api_pb2

        request = api_pb2.FunctionGetOutputsRequest(
            function_call_id=call_id,
            timeout=self.POLL_SECONDS,
            last_entry_id=last_entry_id,
            clear_on_success=False,  # Kept for a restarted run to reattach to.
            requested_at=time.time(),
        )
        retry = Retry(attempt_timeout=self.POLL_SECONDS + 5.0)
        return await self._client(client)._stub.FunctionGetOutputs(request, retry=retry)

    async def result(self, client: Any, output: Any) -> Any:
        """One output's value, or the exception its input ended with (raised). A value in a
        blob, the result envelope the generic function returns, comes as a file
        (``blobs``)."""
        from modal._utils.function_utils import _process_result
        from modal_proto import api_pb2

        impl = self._client(client)
        result = output.result
        if (
            result.status == api_pb2.GenericResult.GENERIC_STATUS_SUCCESS
            and result.WhichOneof("data_oneof") == "data_blob_id"
            and output.data_format == api_pb2.DATA_FORMAT_PICKLE
        ):
            return await blobs.download_envelope(result.data_blob_id, impl._stub, impl)
        return await _process_result(result, output.data_format, impl._stub, impl)


class ClientAccess:
    """The loop to run on and the ``get`` to await, from the one decision above."""

    def __init__(self, synchronizer: Any | None) -> None:
        self._synchronizer = synchronizer
        self._own_loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()

    @property
    def borrows(self) -> bool:
        return self._synchronizer is not None

    def map_wire(self) -> MapWire | None:
        """The map-call RPCs, where they may be borrowed; else None (one call per job)."""
        return MapWire(self._synchronizer) if self._synchronizer is not None else None

    def loop(self) -> asyncio.AbstractEventLoop:
        """The event loop the backend's coroutines run on (started if need be)."""
        if self._synchronizer is not None:
            return self._synchronizer._get_loop(start=True)
        with self._lock:
            if self._own_loop is None:
                self._own_loop = asyncio.new_event_loop()
                threading.Thread(
                    target=self._own_loop.run_forever, name="redun-modal-calls", daemon=True
                ).start()
            return self._own_loop

    def get(self, call: Any) -> Callable[..., Awaitable[Any]]:
        """The coroutine function that awaits a ``FunctionCall``'s result, on ``loop()``."""
        if self._synchronizer is not None:
            return self._synchronizer._translate_in(call).get
        return call.get.aio


_access: ClientAccess | None = None


def access() -> ClientAccess:
    """This process's decision (made on first use)."""
    global _access
    if _access is None:
        _access = ClientAccess(_borrowed_synchronizer())
    return _access
