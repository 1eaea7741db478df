"""The fake Modal control plane, driven by the real `modal` client only."""

from __future__ import annotations

import asyncio
import io
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import modal
import modal.exception
import pytest
from grpclib import Status
from modal_proto import api_pb2

if TYPE_CHECKING:
    from fake_modal import FakeModal


SAMPLE = "tests.fake_modal.sample"


def deploy(fake: FakeModal, *names: str, app: str = "my-app") -> None:
    """Deploy functions of tests/fake_modal/sample.py under their own names."""
    for name in names:
        fake.register_function(app, name, f"{SAMPLE}:{name}")


def process_exists(pid: int) -> bool:
    """True if a process with this id exists (zombies included)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_lookup_of_unknown_app_or_function_raises_not_found(fake_modal: FakeModal) -> None:
    deploy(fake_modal, "double")
    with pytest.raises(modal.exception.NotFoundError, match="App 'nope' not found"):
        modal.Function.from_name("nope", "double").hydrate()
    with pytest.raises(modal.exception.NotFoundError, match="Function 'nope' not found"):
        modal.Function.from_name("my-app", "nope").hydrate()
    with pytest.raises(modal.exception.NotFoundError):
        modal.Function.from_name("my-app", "double", environment_name="elsewhere").hydrate()
    assert modal.Function.from_name("my-app", "double", environment_name="main").remote(4) == 8


def test_spawn_returns_at_once_and_get_polls(fake_modal: FakeModal) -> None:
    deploy(fake_modal, "sleep_then")
    function = modal.Function.from_name("my-app", "sleep_then")
    function.hydrate()
    started = time.monotonic()
    call = function.spawn(1.5, "done")
    assert time.monotonic() - started < 0.5
    fake_modal.wait_until(lambda: fake_modal.running == 1)
    with pytest.raises(TimeoutError) as raised:
        call.get(timeout=0)
    assert type(raised.value) is TimeoutError  # the builtin, not modal's
    with pytest.raises(TimeoutError):
        call.get(timeout=0.2)
    assert call.get(timeout=10) == "done"
    assert call.get(timeout=0) == "done"  # results stay retrievable
    assert (fake_modal.inputs_started, fake_modal.inputs_finished, fake_modal.running) == (1, 1, 0)
    assert fake_modal.executions["my-app/sleep_then"] == 1


def test_rpcs_of_one_small_call(fake_modal: FakeModal) -> None:
    deploy(fake_modal, "double")
    call = modal.Function.from_name("my-app", "double").spawn(21)
    assert call.get() == 42
    assert dict(fake_modal.rpc_counts) == {
        "FunctionGet": 1,
        "FunctionMap": 1,
        "FunctionGetOutputs": 1,
    }
    assert modal.FunctionCall.from_id(call.object_id).get() == 42
    assert fake_modal.rpc_counts["FunctionGetOutputs"] == 2
    assert fake_modal.rpc_counts["FunctionCallFromId"] == 0


def test_inputs_put_separately_when_not_pipelined(fake_modal: FakeModal) -> None:
    deploy(fake_modal, "double")
    fake_modal.pipeline_inputs = False
    assert modal.Function.from_name("my-app", "double").spawn(4).get(timeout=10) == 8
    assert fake_modal.rpc_counts["FunctionPutInputs"] == 1


def test_cbor_payloads(fake_modal: FakeModal, monkeypatch: pytest.MonkeyPatch) -> None:
    deploy(fake_modal, "double", "fail")
    monkeypatch.setenv("MODAL_PAYLOAD_FORMAT", "cbor")
    assert modal.Function.from_name("my-app", "double").remote(21) == 42
    with pytest.raises(modal.exception.RemoteError, match="boom"):  # no pickled exception
        modal.Function.from_name("my-app", "fail").remote("boom")
    [*_, last] = fake_modal.inputs.values()
    assert last.function_input.data_format == api_pb2.DATA_FORMAT_CBOR


def test_large_argument_and_result_go_through_blobs(fake_modal: FakeModal) -> None:
    deploy(fake_modal, "reverse")
    data = os.urandom(1_000_000)
    call = modal.Function.from_name("my-app", "reverse").spawn(data)
    assert call.get(timeout=30) == data[::-1]
    assert fake_modal.rpc_counts["BlobCreate"] == 1  # the argument
    assert fake_modal.rpc_counts["BlobGet"] == 1  # the result
    assert (fake_modal.blob_store.uploads, fake_modal.blob_store.downloads) == (1, 1)
    function_input = fake_modal.calls[call.object_id].inputs[0].function_input
    assert function_input.args_blob_id and not function_input.args


def test_multipart_upload(fake_modal: FakeModal) -> None:
    deploy(fake_modal, "reverse")
    fake_modal.blob_multipart_threshold = fake_modal.blob_part_length = 256 * 1024
    data = os.urandom(1_000_000)
    call = modal.Function.from_name("my-app", "reverse").spawn(data)
    assert call.get(timeout=30) == data[::-1]
    assert fake_modal.rpc_counts["BlobCreate"] == 1
    assert (fake_modal.blob_store.uploads, fake_modal.blob_store.parts) == (1, 4)


def test_remote_exception_is_raised_by_get(fake_modal: FakeModal) -> None:
    deploy(fake_modal, "fail")
    call = modal.Function.from_name("my-app", "fail").spawn("boom")
    with pytest.raises(ValueError, match="boom"):
        call.get(timeout=10)
    assert fake_modal.calls[call.object_id].inputs[0].status == "FAILURE"


def test_cancel_kills_the_running_input(fake_modal: FakeModal) -> None:
    deploy(fake_modal, "sleep_then")
    call = modal.Function.from_name("my-app", "sleep_then").spawn(60)
    fake_modal.wait_until(lambda: fake_modal.running == 1)
    pid = fake_modal.calls[call.object_id].inputs[0].worker_pids[-1]
    assert process_exists(pid)
    call.cancel()
    assert fake_modal.running == 0
    assert fake_modal.inputs_cancelled == 1
    assert fake_modal.inputs_finished == 0
    assert not process_exists(pid)
    assert pid not in fake_modal.live_worker_pids()
    with pytest.raises(modal.exception.RemoteError, match="cancelled"):
        call.get(timeout=5)
    assert fake_modal.rpc_counts["FunctionCallCancel"] == 1


def test_with_options_are_recorded_and_the_variant_runs(fake_modal: FakeModal) -> None:
    deploy(fake_modal, "getenv")
    fake_modal.register_secret("creds", {"API_KEY": "s3cret"})
    function = modal.Function.from_name("my-app", "getenv").with_options(
        gpu="A10G",
        cpu=2,
        memory=1024,
        timeout=5,
        retries=1,
        region="us-east",
        cloud="aws",
        secrets=[modal.Secret.from_name("creds")],
        volumes={"/data": modal.Volume.from_name("datasets")},
        max_containers=3,
    )
    assert function.spawn("API_KEY").get(timeout=10) == "s3cret"
    [bind] = fake_modal.binds
    assert (bind.gpu, bind.cpu, bind.memory, bind.timeout) == ("A10G", 2.0, 1024, 5)
    assert (bind.retries, bind.regions, bind.cloud, bind.max_containers) == (
        1,
        ("us-east",),
        "aws",
        3,
    )
    assert bind.secrets == ("creds",) and bind.volumes == {"/data": "datasets"}
    assert fake_modal.calls[next(iter(fake_modal.calls))].variant.function_id == (
        bind.bound_function_id
    )
    for method in ("FunctionGet", "FunctionBindParams", "SecretGetOrCreate", "VolumeGetOrCreate"):
        assert fake_modal.rpc_counts[method] == 1, method


def test_strict_objects_make_unknown_secrets_not_found(fake_modal: FakeModal) -> None:
    deploy(fake_modal, "getenv")
    fake_modal.strict_objects = True
    function = modal.Function.from_name("my-app", "getenv").with_options(
        secrets=[modal.Secret.from_name("missing")]
    )
    with pytest.raises(modal.exception.NotFoundError, match="Secret 'missing' not found"):
        function.spawn("X")


def test_timeout_raises_function_timeout_error(fake_modal: FakeModal) -> None:
    deploy(fake_modal, "sleep_then")
    call = modal.Function.from_name("my-app", "sleep_then").with_options(timeout=1).spawn(30)
    with pytest.raises(modal.exception.FunctionTimeoutError, match="timeout of 1s"):
        call.get(timeout=10)
    assert fake_modal.running == 0
    assert fake_modal.calls[call.object_id].inputs[0].status == "TIMEOUT"


def test_from_id_reattaches_to_a_call(fake_modal: FakeModal) -> None:
    deploy(fake_modal, "sleep_then")
    call_id = modal.Function.from_name("my-app", "sleep_then").spawn(0.5, [1, 2]).object_id
    again = modal.FunctionCall.from_id(call_id)
    assert again.get(timeout=10) == [1, 2]
    assert again.num_inputs() == 1  # FunctionCallFromId
    assert modal.FunctionCall.from_id(call_id).get(timeout=0) == [1, 2]
    with pytest.raises(modal.exception.NotFoundError):
        modal.FunctionCall.from_id("fc-unknown").get(timeout=0)


def test_aio_variants(fake_modal: FakeModal) -> None:
    deploy(fake_modal, "async_double", "sleep_then")

    async def main() -> None:
        function = modal.Function.from_name("my-app", "async_double")
        call = await function.spawn.aio(21)
        assert await call.get.aio(timeout=10) == 42
        assert await modal.FunctionCall.from_id(call.object_id).get.aio() == 42
        assert await function.with_options(cpu=1).remote.aio(5) == 10
        sleeper = await modal.Function.from_name("my-app", "sleep_then").spawn.aio(60)
        with pytest.raises(TimeoutError):
            await sleeper.get.aio(timeout=0)
        await sleeper.cancel.aio()
        with pytest.raises(modal.exception.RemoteError):
            await sleeper.get.aio(timeout=5)

    asyncio.run(main())
    assert fake_modal.inputs_cancelled == 1
    assert fake_modal.running == 0


def test_injected_faults(fake_modal: FakeModal) -> None:
    deploy(fake_modal, "double")
    function = modal.Function.from_name("my-app", "double")
    fake_modal.inject_fault("internal_failure")
    with pytest.raises(modal.exception.InternalFailure):
        function.spawn(1).get(timeout=10)
    assert fake_modal.executions["my-app/double"] == 0

    fake_modal.inject_fault("preempt", function="my-app/double")
    call = function.spawn(2)
    assert call.get(timeout=10) == 4
    assert fake_modal.preemptions == 1
    assert fake_modal.executions["my-app/double"] == 2
    assert fake_modal.calls[call.object_id].inputs[0].retry_count == 1

    fake_modal.inject_fault("crash")
    with pytest.raises(modal.exception.RemoteError, match="killed"):
        function.spawn(3).get(timeout=10)
    assert function.spawn(4).get(timeout=10) == 8
    assert fake_modal.running == 0


def test_worker_death_raises_remote_error(fake_modal: FakeModal) -> None:
    deploy(fake_modal, "die")
    with pytest.raises(modal.exception.RemoteError, match="exit code 3"):
        modal.Function.from_name("my-app", "die").spawn(3).get(timeout=10)


def test_retry_policy_reruns_failed_inputs(fake_modal: FakeModal, tmp_path: Path) -> None:
    deploy(fake_modal, "flaky")
    retries = modal.Retries(max_retries=2, initial_delay=0.0, backoff_coefficient=1.0)
    function = modal.Function.from_name("my-app", "flaky").with_options(retries=retries)
    assert function.spawn(str(tmp_path / "count"), 2).get(timeout=10) == 3
    assert fake_modal.executions["my-app/flaky"] == 3


def test_injected_rpc_failure_is_retried_by_the_client(fake_modal: FakeModal) -> None:
    deploy(fake_modal, "double")
    fake_modal.fail_rpc("FunctionMap", Status.UNAVAILABLE)
    assert modal.Function.from_name("my-app", "double").spawn(5).get(timeout=10) == 10
    assert fake_modal.rpc_counts["FunctionMap"] == 2


def test_latency_is_added_to_every_rpc(fake_modal: FakeModal) -> None:
    deploy(fake_modal, "double")
    fake_modal.latency = 0.3
    started = time.monotonic()
    modal.Function.from_name("my-app", "double").hydrate()
    assert time.monotonic() - started >= 0.3


def test_a_subprocess_reaches_the_fake_through_env(fake_modal: FakeModal) -> None:
    deploy(fake_modal, "double")
    script = "import modal; print(modal.Function.from_name('my-app', 'double').remote(21))"
    env = {**os.environ, **fake_modal.env}
    process = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60
    )
    assert process.stdout.strip() == "42", process.stderr
    assert Path(fake_modal.env["MODAL_CONFIG_PATH"]).is_file()


def test_stop_leaves_no_processes(fake_modal: FakeModal) -> None:
    deploy(fake_modal, "double", "sleep_then")
    running = modal.Function.from_name("my-app", "sleep_then").spawn(60)
    assert modal.Function.from_name("my-app", "double").remote(1) == 2
    fake_modal.wait_until(lambda: fake_modal.running == 1)
    pids = set(fake_modal.live_worker_pids())
    assert pids and fake_modal.calls[running.object_id].inputs[0].worker_pids[0] in pids
    fake_modal.stop()
    assert not any(process_exists(pid) for pid in pids)


def test_tail_of_a_crashed_call_has_what_its_input_printed(fake_modal: FakeModal) -> None:
    deploy(fake_modal, "chatty")
    function = modal.Function.from_name("my-app", "chatty")
    assert function.remote(["an earlier call"]) == 1  # Same worker: not in the call below.
    # Killed as soon as it has printed everything and sleeps.
    fake_modal.inject_fault("crash", function="my-app/chatty", on_output="sleeping")
    call = function.spawn(["loading shard 7", "shard 7 has 10 rows"], 60)
    with pytest.raises(modal.exception.RemoteError, match="killed"):
        call.get(timeout=30)

    rpcs = len(fake_modal.rpc_log)
    entries = list(call.logs.tail(entries=10))
    # What the client (1.6) asks for a call spawned here: time ranges of the app's logs.
    assert set(fake_modal.rpc_log[rpcs:]) == {"AppFetchLogs"}
    assert [entry.message for entry in entries if entry.source == "stdout"] == [
        "loading shard 7\n",
        "shard 7 has 10 rows\n",
    ]
    assert [entry.message for entry in entries if entry.source == "stderr"] == ["sleeping 60s\n"]
    [record] = fake_modal.calls[call.object_id].inputs
    assert (entries[-1].source, entries[-1].message) == (
        "system",
        f"Worker of input {record.input_id} was killed (injected crash)\n",
    )
    assert len(entries) == 4
    assert [entry.timestamp for entry in entries] == sorted(entry.timestamp for entry in entries)
    task_id = f"ta-{record.worker_pids[0]}"
    assert all(entry.context_ids == [record.input_id, task_id] for entry in entries)
    assert all(entry.object_id == call.object_id for entry in entries)
    # Newest last: fewer entries are the latest ones; a source keeps only its own.
    assert [entry.message for entry in call.logs.tail(entries=1)] == [entries[-1].message]
    assert [entry.message for entry in call.logs.tail(entries=10, source="stderr")] == [
        "sleeping 60s\n"
    ]
    # A call from its id learns its app first.
    again = modal.FunctionCall.from_id(call.object_id)
    assert [entry.message for entry in again.logs.tail(entries=1)] == [entries[-1].message]
    assert fake_modal.rpc_counts["FunctionCallFromId"] == 1
    assert fake_modal.running == 0


def test_logs_are_kept_per_input_and_attempt(fake_modal: FakeModal) -> None:
    deploy(fake_modal, "chatty")
    function = modal.Function.from_name("my-app", "chatty")
    first = function.spawn(["first call"])
    assert first.get(timeout=30) == 1
    fake_modal.inject_fault("preempt", function="my-app/chatty", on_output="sleeping")
    second = function.spawn(["second call"], 1)
    assert second.get(timeout=30) == 1

    assert sorted(entry.message for entry in first.logs.tail(entries=10)) == [
        "first call\n",
        "sleeping 0s\n",
    ]
    [record] = fake_modal.calls[second.object_id].inputs

    def lines(attempt: int, source: str) -> list[str]:
        return [
            line.text for line in record.logs if (line.attempt, line.source) == (attempt, source)
        ]

    assert lines(1, "stdout") == lines(2, "stdout") == ["second call\n"]
    assert lines(1, "stderr") == lines(2, "stderr") == ["sleeping 1s\n"]
    assert lines(1, "system") == [
        f"Worker of input {record.input_id} was killed (injected preempted)\n"
    ]
    assert lines(2, "system") == []
    entries = list(second.logs.tail(entries=10))
    assert len(entries) == 5
    first_task, second_task = (f"ta-{pid}" for pid in record.worker_pids)
    assert [entry.context_ids[1] for entry in entries] == [first_task] * 3 + [second_task] * 2


# ----- Volumes: the API's file operations, and what each container sees -----


def test_volume_api_lists_reads_writes_removes_and_copies_files(fake_modal: FakeModal) -> None:
    fake_modal.register_volume("files")
    volume = modal.Volume.from_name("files")
    big = os.urandom(5 * 1024 * 1024)  # Above the client's 4 MiB: uploaded as a blob.
    with volume.batch_upload() as batch:
        batch.put_file(io.BytesIO(b"small"), "/dir/small.txt")
        batch.put_file(io.BytesIO(big), "/dir/sub/big.bin")
    assert fake_modal.rpc_counts["BlobCreate"] == 1
    listed = {entry.path: entry for entry in volume.listdir("/dir", recursive=True)}
    assert set(listed) == {"dir/small.txt", "dir/sub", "dir/sub/big.bin"}
    small = listed["dir/small.txt"]
    on_disk = (fake_modal.volume_dir("files") / "dir" / "small.txt").stat()
    assert (small.size, small.mtime) == (5, int(on_disk.st_mtime))
    assert [entry.path for entry in volume.listdir("/dir")] == ["dir/small.txt", "dir/sub"]
    assert b"".join(volume.read_file("/dir/sub/big.bin")) == big
    with pytest.raises(FileExistsError), volume.batch_upload() as batch:
        batch.put_file(io.BytesIO(b"again"), "/dir/small.txt")
    volume.copy_files(["/dir/small.txt"], "/copy.txt")
    assert b"".join(volume.read_file("/copy.txt")) == b"small"
    volume.remove_file("/dir", recursive=True)
    assert [entry.path for entry in volume.listdir("/")] == ["copy.txt"]
    with pytest.raises(FileNotFoundError):
        volume.remove_file("/dir/small.txt")
    with pytest.raises(FileNotFoundError):
        b"".join(volume.read_file("/dir/small.txt"))


def test_a_container_sees_another_s_writes_once_committed_and_reloaded(
    fake_modal: FakeModal, tmp_path: Path
) -> None:
    deploy(fake_modal, "volume_steps")
    fake_modal.register_volume("shared")
    mount, go_on = str(tmp_path / "mnt"), str(tmp_path / "go-on")
    function = modal.Function.from_name("my-app", "volume_steps").with_options(
        volumes={mount: modal.Volume.from_name("shared")}
    )
    # A writes x and waits; B, in another container meanwhile, cannot see x (not committed).
    first = function.spawn(
        "shared",
        mount,
        [["write", "x", "A"], ["wait", go_on], ["read", "y"], ["reload"], ["read", "y"]],
    )
    fake_modal.wait_until(lambda: fake_modal.running == 1)
    steps = [["read", "x"], ["write", "y", "B"], ["commit"], ["read", "y"]]
    assert function.spawn("shared", mount, steps).get(timeout=30) == [None, "B"]
    api = modal.Volume.from_name("shared")
    assert [entry.path for entry in api.listdir("/")] == ["y"]  # committed: y, not x
    Path(go_on).touch()
    # A sees y only once it reloads; its reload commits x first.
    assert first.get(timeout=30) == [None, "B"]
    assert sorted(entry.path for entry in api.listdir("/")) == ["x", "y"]
    assert len({pid for record in fake_modal.inputs.values() for pid in record.worker_pids}) == 2
