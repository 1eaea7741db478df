"""The call payload and result envelope: round trips, versions, and bad input."""

import json
import struct
import threading

import cloudpickle
import pytest
import sample_tasks
from redun import task

from redun_modal_executor.errors import (
    CodeSkewError,
    PayloadError,
    RemoteTaskError,
    SerializationError,
    VersionSkewError,
)
from redun_modal_executor.payload import (
    FORMAT_VERSION,
    CallKind,
    Failure,
    Success,
    decode_call,
    decode_result,
    encode_call,
    encode_failure,
    encode_success,
    runtime_versions,
    ships_by_value,
)

FRAME = struct.Struct("!8sHI")


def split(data: bytes) -> tuple[bytes, int, dict, bytes]:
    magic, version, length = FRAME.unpack_from(data)
    header = json.loads(data[FRAME.size : FRAME.size + length])
    return magic, version, header, data[FRAME.size + length :]


def join(magic: bytes, version: int, header: dict, body: bytes) -> bytes:
    header_bytes = json.dumps(header).encode()
    return FRAME.pack(magic, version, len(header_bytes)) + header_bytes + body


def test_call_round_trip_by_reference():
    data = encode_call(sample_tasks.add, (1,), {"b": 2}, job_id="j1", eval_hash="e1")
    call = decode_call(data)
    assert call.header.task == "add"
    assert call.header.module == "sample_tasks"
    assert call.header.task_hash == sample_tasks.add.hash
    assert call.header.by_value is False
    assert (call.header.job_id, call.header.eval_hash) == ("j1", "e1")
    assert call.header.versions == runtime_versions()
    function, args, kwargs = call.load()
    assert function is sample_tasks.add.func
    assert function(*args, **kwargs) == 3


def test_header_is_readable_without_unpickling():
    magic, version, header, body = split(encode_call(sample_tasks.add, (1, 2), {}))
    assert (magic, version) == (b"RMX:CALL", FORMAT_VERSION)
    assert header["kind"] == "task"
    assert cloudpickle.loads(body) == (None, (1, 2), {})


def test_task_defined_inside_a_function_ships_by_value():
    def make(offset):
        @task(name="local_offset", namespace="tests")
        def offset_by(x):
            return x + offset

        return offset_by

    local_task = make(10)
    assert ships_by_value(local_task)
    assert not ships_by_value(sample_tasks.add)
    call = decode_call(encode_call(local_task, (5,), {}))
    assert call.header.by_value
    function, args, kwargs = call.load()
    assert function(*args, **kwargs) == 15


def test_unpicklable_argument_is_named():
    with pytest.raises(SerializationError) as error:
        encode_call(sample_tasks.add, (1,), {"b": threading.Lock()})
    message = str(error.value)
    assert message.startswith("Task add: argument 'b' (lock) cannot be pickled")
    assert "create those inside the task" in message


@pytest.mark.parametrize("component", ["python", "redun", "cloudpickle"])
def test_version_skew_is_reported_before_unpickling(component):
    magic, version, header, _ = split(encode_call(sample_tasks.add, (1, 2), {}))
    header["versions"][component] = "0.0"
    # A body that would crash if anything tried to unpickle it.
    data = join(magic, version, header, b"not a pickle")
    with pytest.raises(VersionSkewError) as error:
        decode_call(data)
    message = str(error.value)
    assert (
        f"{component} 0.0 on the client, {runtime_versions()[component]} in the worker" in message
    )
    assert "redeploy" in message


def test_other_payload_format_is_rejected():
    magic, _, header, body = split(encode_call(sample_tasks.add, (1, 2), {}))
    with pytest.raises(
        VersionSkewError, match=f"payload format 99, this side speaks format {FORMAT_VERSION}"
    ):
        decode_call(join(magic, 99, header, body))


@pytest.mark.parametrize("data", [b"", b"hello", cloudpickle.dumps((None, (), {})) * 2])
def test_foreign_bytes_are_rejected(data):
    with pytest.raises(PayloadError, match="not a redun-modal-executor call payload"):
        decode_call(data)


def test_code_skew_is_detected():
    magic, version, header, body = split(encode_call(sample_tasks.add, (1, 2), {}))
    header["task_hash"] = "0" * 40
    call = decode_call(join(magic, version, header, body))
    with pytest.raises(CodeSkewError, match="the worker's code for this task"):
        call.load()


def test_missing_module_names_task_and_fix():
    magic, version, header, body = split(encode_call(sample_tasks.add, (1, 2), {}))
    header["module"] = "no_such_workflow_module"
    call = decode_call(join(magic, version, header, body))
    with pytest.raises(ModuleNotFoundError) as error:
        call.load()
    assert "Task add: the worker cannot import module 'no_such_workflow_module'" in str(
        error.value
    )
    assert "code package" in str(error.value)


def test_result_round_trip_keeps_tuple_shape():
    result = decode_result(encode_success((1, [2, 3]), "pair", []))
    assert result == Success((1, [2, 3]))


def test_unpicklable_result_becomes_serialization_failure():
    result = decode_result(encode_success(threading.Lock(), "returns_lock", ["log\n"]))
    assert isinstance(result, Failure)
    assert isinstance(result.error, SerializationError)
    assert "Task returns_lock: its result (lock) cannot be pickled" in str(result.error)
    assert result.logs == ["log\n"]


def raise_and_catch(error: Exception) -> Exception:
    try:
        raise error
    except Exception as caught:
        return caught


def test_failure_keeps_type_frames_and_logs():
    error = raise_and_catch(KeyError("missing"))
    result = decode_result(encode_failure(error, ["line 1\n"]))
    assert isinstance(result, Failure)
    assert type(result.error) is KeyError and result.error.args == ("missing",)
    assert [frame.name for frame in result.frames] == ["raise_and_catch"]
    assert result.logs == ["line 1\n"]


def test_unpicklable_exception_gets_a_stand_in():
    error = raise_and_catch(sample_tasks.LockedError("holding a lock"))
    result = decode_result(encode_failure(error, []), "sample_tasks.raises_unpicklable")
    assert isinstance(result.error, RemoteTaskError)
    assert str(result.error) == (
        "Task sample_tasks.raises_unpicklable raised sample_tasks.LockedError: holding a lock "
        "(it could not be pickled in the worker)"
    )
    assert "raise error" in result.error.remote_traceback
    assert result.frames  # Frames travel even when the exception cannot.


def test_exception_that_cannot_load_here_gets_a_stand_in():
    error = raise_and_catch(sample_tasks.UnloadableError("only in the container"))
    result = decode_result(encode_failure(error, []), "t")
    assert isinstance(result.error, RemoteTaskError)
    assert result.error.type_name == "sample_tasks.UnloadableError"
    assert str(result.error).startswith(
        "Task t raised sample_tasks.UnloadableError: only in the container (its class cannot "
        "be loaded here: "
    )
    assert "only in the container" in result.error.remote_traceback
    assert [frame.name for frame in result.frames] == ["raise_and_catch"]


def test_stand_in_pickles_for_redun_database():
    stand_in = RemoteTaskError("x.Error", "message", "Traceback ...")
    copy = cloudpickle.loads(cloudpickle.dumps(stand_in))
    assert (copy.type_name, copy.message, str(copy)) == ("x.Error", "message", "x.Error: message")


def test_script_kind_travels_in_header():
    call = decode_call(encode_call(sample_tasks.echo, ("hi",), {}, CallKind.SCRIPT))
    assert call.header.kind == "script"
