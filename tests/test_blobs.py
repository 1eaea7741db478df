"""Big payloads through files (backends/modal/blobs.py), on the fake with the real client."""

from __future__ import annotations

import asyncio
import io
import os
import pickle
import tracemalloc
from typing import TYPE_CHECKING, Any

import modal
import modal._utils.function_utils
import pytest
from modal._serialization import serialize
from modal_proto import api_pb2

from redun_modal_executor.backends.modal import blobs
from redun_modal_executor.backends.modal.client import MapWire, access
from redun_modal_executor.calls import Call
from redun_modal_executor.config import CallOptions
from redun_modal_executor.payload import _RESULT_MAGIC, Success, _frame, decode_result

if TYPE_CHECKING:
    from fake_modal import FakeModal

MiB = 1024 * 1024


def on_client_loop(coroutine: Any) -> Any:
    return asyncio.run_coroutine_threadsafe(coroutine, access().loop()).result(timeout=60)


@pytest.fixture
def wire() -> MapWire:
    map_wire = access().map_wire()
    if map_wire is None:
        pytest.skip("the map RPCs are borrowed on tested modal releases only")
    return map_wire


@pytest.fixture
def function(fake_modal: FakeModal) -> Any:
    fake_modal.register_function("my-app", "reverse", "tests.fake_modal.sample:reverse")
    function = modal.Function.from_name("my-app", "reverse")
    function.hydrate()
    return function


@pytest.mark.parametrize("size", [10, 300, 70_000, 5 * MiB])
def test_the_span_of_a_pickled_bytes_is_found_in_its_first_bytes(size: int) -> None:
    data = os.urandom(size)
    for pickled in (serialize(data), pickle.dumps(data, protocol=5)):
        span = blobs.pickled_bytes_span(pickled[:32])
        assert span is not None
        start, length = span
        assert pickled[start : start + length] == data


def test_the_span_of_an_eight_byte_length_is_read_too() -> None:
    head = pickle.PROTO + b"\x04" + pickle.BINBYTES8 + (5 * 2**30).to_bytes(8, "little")
    assert blobs.pickled_bytes_span(head) == (11, 5 * 2**30)


@pytest.mark.parametrize("other", [b"", pickle.dumps([b"x"]), pickle.dumps("text")])
def test_what_is_not_one_pickled_bytes_has_no_span(other: bytes) -> None:
    assert blobs.pickled_bytes_span(other[:32]) is None


def test_a_big_argument_is_uploaded_from_a_file_in_parts(
    fake_modal: FakeModal, function: Any, wire: MapWire, monkeypatch, tmp_path
) -> None:
    monkeypatch.setattr(blobs.tempfile, "tempdir", str(tmp_path))
    fake_modal.blob_multipart_threshold = fake_modal.blob_part_length = 2 * MiB

    def no_in_memory_pickle(*args: Any) -> bytes:
        raise AssertionError("the client's in-memory path was taken")

    monkeypatch.setattr(modal._utils.function_utils, "_serialize_data_format", no_in_memory_pickle)
    payload = os.urandom(blobs.SPOOL_BYTES + 3 * MiB)
    item = on_client_loop(wire.make_input(function, payload))
    blob_id = item.input.args_blob_id
    assert blob_id and not item.input.args
    assert item.input.data_format == api_pb2.DATA_FORMAT_PICKLE
    assert [result.blob_id for result in item.blob_upload_results] == [blob_id]
    # What the client would have uploaded, in parts; the container unpickles it as usual.
    assert fake_modal.blob_store.blobs[blob_id] == serialize(((payload,), {}))
    assert fake_modal.blob_store.parts == 4
    assert list(tmp_path.iterdir()) == []  # The file is gone once uploaded.


def test_a_small_argument_takes_the_clients_own_path(
    fake_modal: FakeModal, function: Any, wire: MapWire
) -> None:
    payload = os.urandom(blobs.SPOOL_BYTES - 1)
    item = on_client_loop(wire.make_input(function, payload))
    assert fake_modal.blob_store.blobs[item.input.args_blob_id] == serialize(((payload,), {}))


def blob_output(fake_modal: FakeModal, data: bytes) -> Any:
    """An output whose value is in a new blob holding ``data``."""
    return api_pb2.FunctionGetOutputsItem(
        result=api_pb2.GenericResult(
            status=api_pb2.GenericResult.GENERIC_STATUS_SUCCESS,
            data_blob_id=fake_modal.blob_store.put(data),
        ),
        data_format=api_pb2.DATA_FORMAT_PICKLE,
    )


@pytest.mark.parametrize("size", [20_000, blobs.SPOOL_BYTES + MiB])
def test_a_result_blob_comes_as_a_file_at_the_envelope(
    fake_modal: FakeModal, function: Any, wire: MapWire, size: int
) -> None:
    value = os.urandom(size)
    envelope = _frame(_RESULT_MAGIC, {"ok": True}, value)
    client = on_client_loop(modal.Client.from_env.aio())
    outcome = on_client_loop(wire.result(client, blob_output(fake_modal, serialize(envelope))))
    with outcome:
        result = decode_result(outcome)
    assert isinstance(result, Success) and result.value == value
    assert fake_modal.blob_store.downloads == 1


def test_a_result_pickled_another_way_is_loaded_whole(
    fake_modal: FakeModal, function: Any, wire: MapWire
) -> None:
    envelope = _frame(_RESULT_MAGIC, {"ok": True}, "value")
    old_style = pickle.dumps(envelope, protocol=2)  # bytes as a call of codecs.encode
    client = on_client_loop(modal.Client.from_env.aio())
    with on_client_loop(wire.result(client, blob_output(fake_modal, old_style))) as outcome:
        assert outcome.read() == envelope


def test_a_big_value_loads_from_a_file_without_a_second_copy(tmp_path) -> None:
    value = os.urandom(20 * MiB)
    path = tmp_path / "envelope"
    path.write_bytes(_frame(_RESULT_MAGIC, {"ok": True}, value))
    with path.open("rb") as envelope:
        tracemalloc.start()
        try:
            result = decode_result(envelope)
            _current, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert isinstance(result, Success) and result.value == value
    assert peak < 1.05 * len(value)  # The value itself, read straight into its object.


def test_framing_a_big_buffer_makes_one_copy_and_the_same_bytes() -> None:
    value = {"data": os.urandom(20 * MiB), "small": list(range(1000))}
    tracemalloc.start()
    try:
        framed = _frame(_RESULT_MAGIC, {"ok": True}, value)
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1.02 * len(framed)
    header = framed[: len(framed) - len(pickle.dumps(value, protocol=5))]
    assert framed == header + pickle.dumps(value, protocol=5)


def test_an_envelope_file_a_finished_call_refuses_is_closed() -> None:
    call = Call("Task t", CallOptions(), lambda: b"")
    assert call.finish(b"first")
    late = io.BytesIO(b"second")
    assert not call.finish(late)
    assert late.closed
    assert call.take_outcome() == b"first" and call.take_outcome() is None
