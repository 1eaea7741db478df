"""The generic worker: bytes in, bytes out, whatever the task does."""

import sample_tasks

from redun_modal_executor.errors import (
    PayloadError,
    RemoteTaskError,
    SerializationError,
    TaskExitError,
)
from redun_modal_executor.payload import CallKind, Failure, Success, decode_result, encode_call
from redun_modal_executor.worker.run import LOG_TAIL_LINES, run_call


def run(task, *args, kind=CallKind.TASK, **kwargs):
    return decode_result(run_call(encode_call(task, args, kwargs, kind)))


def test_sync_task():
    assert run(sample_tasks.add, 2, b=3) == Success(5)


def test_tuple_result_keeps_shape():
    assert run(sample_tasks.pair, 4) == Success((4, 5))


def test_async_task():
    assert run(sample_tasks.async_add, 2, 5) == Success(7)


def test_script_task_returns_stdout_bytes():
    assert run(sample_tasks.echo, "hello", kind=CallKind.SCRIPT) == Success(b"hello\n")


def test_script_failure_raises_script_error():
    from redun import task
    from redun.scripting import ScriptError

    @task(script=True, name="fails_script", namespace="tests")
    def fails_script():
        return "echo oops >&2; exit 4"

    result = run(fails_script, kind=CallKind.SCRIPT)
    assert isinstance(result, Failure)
    assert isinstance(result.error, ScriptError)
    assert b"oops" in result.error.args[0]


def test_exception_comes_back_with_frames_and_output_tail(capsys):
    result = run(sample_tasks.fails, 7)
    assert isinstance(result, Failure)
    assert type(result.error) is ValueError and str(result.error) == "bad 7"
    assert [frame.name for frame in result.frames] == ["fails"]
    assert result.frames[0].line == 'raise ValueError(f"bad {x}")'
    assert result.logs == ["about to fail\n"]
    # Output is passed through as well as captured.
    assert "about to fail" in capsys.readouterr().out


def test_output_tail_is_bounded(capsys):
    from redun import task

    @task(name="chatty", namespace="tests")
    def chatty():
        for i in range(LOG_TAIL_LINES * 3):
            print(f"line {i}")
        raise RuntimeError("done talking")

    result = run(chatty)
    assert len(result.logs) == LOG_TAIL_LINES
    assert result.logs[-1] == f"line {LOG_TAIL_LINES * 3 - 1}\n"


def test_unpicklable_exception():
    result = run(sample_tasks.raises_unpicklable)
    assert isinstance(result.error, RemoteTaskError)
    assert str(result.error) == (
        "sample_tasks.LockedError: holding a lock (it could not be pickled in the worker)"
    )


def test_unpicklable_result():
    result = run(sample_tasks.returns_lock)
    assert isinstance(result.error, SerializationError)
    assert "Task returns_lock: its result (lock) cannot be pickled" in str(result.error)


def test_sys_exit_is_a_failure_not_a_dead_worker():
    result = run(sample_tasks.exits)
    assert isinstance(result, Failure) and isinstance(result.error, TaskExitError)
    assert str(result.error) == "Task exits called sys.exit(3): exit status 3"
    assert [frame.name for frame in result.frames] == ["exits"]  # Where the task exited.


def test_an_expressions_unpicklable_argument_is_named():
    result = run(sample_tasks.returns_call_with_lock)
    assert isinstance(result.error, SerializationError)
    assert str(result.error).startswith(
        "Task returns_call_with_lock: argument 0 (lock) of the add call it returns cannot be "
        "pickled to send back"
    )


def test_foreign_payload_is_rejected_with_an_envelope():
    result = decode_result(run_call(b"GET / HTTP/1.1\r\n\r\n"))
    assert isinstance(result.error, PayloadError)
    assert "not a redun-modal-executor call payload" in str(result.error)
