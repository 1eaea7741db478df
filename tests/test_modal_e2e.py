"""`redun run` against the fake Modal control plane, through the real `modal` client.

The fake runs the deployed generic function (`backends.modal.app.run_job`) for real, in worker
processes that, as on Modal, cannot import the project's files: code arrives by code shipping.
"""

from __future__ import annotations

import pytest
from helpers import (
    APP,
    MODAL_CONFIG,
    ON_EACH_DATABASE,
    SUM_OF_SQUARES,
    call_tags,
    final_line,
    inflight_rows,
    job_tags,
    ran,
    wait_for,
)

from redun_modal_executor.calls import CallAddress

pytestmark = pytest.mark.e2e


def test_workflow_runs_on_modal_and_reruns_from_cache_without_rpcs(modal_project, fake_modal):
    modal_project.write("wf.py", SUM_OF_SQUARES)
    output = modal_project.redun("run", "wf.py", "main").stdout
    assert final_line(output) == "14"
    assert ran(output, "square") == 4
    jobs = 6  # main, 4 x square, sum_all
    # The jobs go out in batches: one map call (FunctionMap) per burst of jobs, its inputs
    # added (FunctionPutInputs) and finished (FunctionFinishInputs), outputs long-polled
    # (FunctionGetOutputs: each poll answers with one output or more, as they finish). main,
    # the squares and sum_all come in three bursts; how the squares' burst splits between
    # requests depends on timing. Per run: one lookup of the image's function, and the code
    # package (Dict lookup, contains, put). Per container and code version: the package's
    # download (Dict lookup, get). The fake's workers share one temp dir (its "container
    # disk"), and main runs alone before any other job is spawned: its worker is the only one
    # that downloads, the others find the package unpacked.
    counts = dict(fake_modal.rpc_counts)
    batches = list(fake_modal.calls.values())
    assert sorted(len(batch.inputs) for batch in batches)[-1] >= 2  # The squares shared one.
    assert sum(len(batch.inputs) for batch in batches) == jobs
    assert all(batch.finished_inputs == len(batch.inputs) for batch in batches)
    assert counts.pop("FunctionMap") == counts.pop("FunctionFinishInputs") == len(batches)
    assert len(batches) <= counts.pop("FunctionPutInputs") <= jobs
    assert len(batches) <= counts.pop("FunctionGetOutputs") <= jobs
    assert counts == {
        "FunctionGet": 1,
        "DictGetOrCreate": 1 + 1,  # the client's lookup, and main's worker's
        "DictContains": 1,
        "DictUpdate": 1,
        "DictGet": 1,
    }
    assert fake_modal.executions[f"{APP}/run_job"] == jobs
    assert "code package" in output

    fake_modal.rpc_counts.clear()
    again = modal_project.redun("run", "wf.py", "main").stdout
    assert final_line(again) == "14"
    assert sum(fake_modal.rpc_counts.values()) == 0


def test_task_options_become_one_bound_variant(modal_project, fake_modal):
    modal_project.write(
        "wf.py",
        """\
        import os
        from redun import task

        @task(gpu="A10G", cpu=2, memory=1024, timeout=60, retries=1, image="gpu",
              secrets=["hf-token"], volumes={"/data": "my-volume"})
        def train(i: int) -> str:
            return os.environ["HF_TOKEN"][:3] + str(i)

        @task
        def main() -> list:
            return [train(i) for i in range(3)]
        """,
    )
    output = modal_project.redun("run", "wf.py", "main").stdout
    assert final_line(output) == "['not0', 'not1', 'not2']"
    (bind,) = fake_modal.binds
    assert (bind.gpu, bind.cpu, bind.memory, bind.timeout, bind.retries) == (
        "A10G",
        2.0,
        1024,
        60,
        1,
    )
    assert bind.secrets == ("hf-token",)
    assert bind.volumes == {"/data": "my-volume"}
    assert fake_modal.executions[f"{APP}/run_job_gpu"] == 3
    assert fake_modal.rpc_counts["FunctionBindParams"] == 1


def test_env_reaches_the_task_and_warm_pool_options_reach_modal(modal_project, fake_modal):
    modal_project.write(".redun/redun.ini", MODAL_CONFIG + "env = MODE=slow, LEFT=over\n")
    modal_project.write(
        "wf.py",
        """\
        import os
        from redun import task

        @task(env={"MODE": "fast", "GREETING": "hi, there"}, secrets=["hf-token"],
              buffer_containers=1, scaledown_window=30)
        def tuned() -> list:
            return [os.environ.get(name) for name in ("MODE", "GREETING", "HF_TOKEN", "LEFT")]

        @task
        def plain() -> list:
            return [os.environ.get(name) for name in ("MODE", "LEFT")]

        @task
        def main() -> list:
            return [tuned(), plain()]
        """,
    )
    output = modal_project.redun("run", "wf.py", "main").stdout
    # A task's env replaces the executor's (LEFT is gone); Secrets still come with it.
    assert final_line(output) == (
        "[['fast', 'hi, there', 'not-a-real-token', None], ['slow', 'over']]"
    )
    # main and plain share one option set: one variant each set, and one Secret each env.
    binds = sorted(fake_modal.binds, key=lambda bind: "GREETING" in bind.env)
    assert [bind.env for bind in binds] == [
        {"MODE": "slow", "LEFT": "over"},
        {"MODE": "fast", "GREETING": "hi, there"},
    ]
    assert fake_modal.rpc_counts["SecretGetOrCreate"] == 3  # hf-token, and the two env
    assert binds[-1].secrets == ("hf-token",)  # The env Secret is anonymous: no name.
    assert (binds[-1].buffer_containers, binds[-1].scaledown_window) == (1, 30)
    assert (binds[0].buffer_containers, binds[0].scaledown_window) == (None, None)
    tags = job_tags(modal_project, "tuned")
    assert tags["modal_env"] == {"GREETING": "hi, there", "MODE": "fast"}
    assert (tags["modal_buffer_containers"], tags["modal_scaledown_window"]) == (1, 30)


@pytest.mark.parametrize(
    "kib",
    [
        2 * 1024,  # Above the inline limit: through the client's in-memory path.
        6 * 1024,  # Above blobs.SPOOL_BYTES: pickled into a file and uploaded in parts.
    ],
)
def test_big_values_travel_through_blobs(modal_project, fake_modal, tmp_path, monkeypatch, kib):
    spool = tmp_path / "spool"
    spool.mkdir()
    monkeypatch.setenv("TMPDIR", str(spool))  # The client's temporary files go here.
    fake_modal.blob_multipart_threshold = fake_modal.blob_part_length = 1024 * 1024
    modal_project.write(
        "wf.py",
        f"""\
        from redun import task

        @task
        def reverse(data: bytes) -> bytes:
            return data[::-1]

        @task
        def main() -> int:
            return check(reverse(bytes(range(256)) * 4 * {kib}))

        @task
        def check(data: bytes) -> int:
            return len(data) if data[:2] == bytes([255, 254]) else -1
        """,
    )
    output = modal_project.redun("run", "wf.py", "main").stdout
    assert final_line(output) == str(kib * 1024)
    # Up as blobs, in 1 MiB parts: the arguments of reverse and of check (the data and a
    # header: one part more than its MiB). Down:
    # main's result (the expression `check(reverse(data))`, which holds the data) and
    # reverse's. check's result is small.
    assert fake_modal.rpc_counts["BlobCreate"] == 2
    assert fake_modal.blob_store.parts == 2 * (kib // 1024 + 1)
    assert fake_modal.rpc_counts["BlobGet"] == 2
    assert [path.name for path in spool.iterdir() if path.name.startswith("redun-modal-")] == []
    rerun = modal_project.redun("run", "wf.py", "main").stdout
    assert final_line(rerun) == str(kib * 1024) and ran(rerun, "reverse") == 0


def test_timeout_names_the_option_and_the_call(modal_project):
    modal_project.write(
        "wf.py",
        """\
        import time
        from redun import task

        @task(timeout=1)
        def slow() -> int:
            time.sleep(60)
            return 1
        """,
    )
    process = modal_project.redun("run", "wf.py", "slow", check=False, timeout=60)
    assert process.returncode != 0
    assert "CallTimeoutError: Task slow: timed out after 1 s on Modal" in process.stdout
    assert "[call fc-" in process.stdout


def test_edited_code_runs_without_redeploy(modal_project, fake_modal):
    workflow = modal_project.write(
        "wf.py",
        """\
        from redun import task

        @task
        def version() -> str:
            return "first"
        """,
    )
    assert final_line(modal_project.redun("run", "wf.py", "version").stdout) == "'first'"
    workflow.write_text(workflow.read_text().replace('"first"', '"second"'))
    assert final_line(modal_project.redun("run", "wf.py", "version").stdout) == "'second'"
    (packages,) = fake_modal.dicts.values()
    assert packages.name == f"{APP}-code"
    assert len(packages.entries) == 2  # one package per code version, uploaded once each


def test_app_not_deployed_says_how_to_deploy(project, fake_modal):
    project.write(".redun/redun.ini", MODAL_CONFIG)
    project.write("wf.py", SUM_OF_SQUARES)
    process = project.redun("run", "wf.py", "main", check=False)
    assert process.returncode != 0
    assert "AppNotDeployedError: Task main: the Modal app 'redun-modal-executor' has no " in (
        process.stdout
    )
    assert "run `redun-modal deploy`" in process.stdout


def test_missing_credentials_say_how_to_set_a_token(modal_project, monkeypatch, tmp_path):
    monkeypatch.delenv("MODAL_TOKEN_ID")
    monkeypatch.delenv("MODAL_TOKEN_SECRET")
    (tmp_path / "empty.toml").write_text("")
    monkeypatch.setenv("MODAL_CONFIG_PATH", str(tmp_path / "empty.toml"))
    modal_project.write("wf.py", SUM_OF_SQUARES)
    process = modal_project.redun("run", "wf.py", "main", check=False)
    assert process.returncode != 0
    assert "ModalAuthError" in process.stdout
    assert "run `modal token new`, or set MODAL_TOKEN_ID and MODAL_TOKEN_SECRET" in (
        process.stdout
    )


NAPS = """\
import time
from redun import task

@task
def nap(i: int) -> int:
    time.sleep(4)
    return i

@task
def main() -> int:
    return total([nap(i) for i in range(3)])

@task
def total(values: list) -> int:
    return sum(values)
"""


def kill_mid_run(project, fake_modal) -> None:
    """Start `redun run wf.py main`, SIGKILL it once its naps run and are recorded."""
    process = project.start("run", "wf.py", "main", capture=False)

    def recorded() -> bool:
        # main's call and three naps, each recorded for reattaching soon after its spawn; and
        # each nap job tagged with its call, which redun's scheduler thread writes on its own
        # schedule (queued before the record, written maybe after it).
        return (
            fake_modal.running == 3
            and len(inflight_rows(project)) == 4
            and len(call_tags(project, "nap")) == 3
        )

    try:
        wait_for(recorded, timeout=60, process=process)
    finally:
        process.kill()  # SIGKILL: no stop(), no cancel, the naps keep running on "Modal".
        process.wait()


@ON_EACH_DATABASE
def test_killed_scheduler_reattaches_instead_of_running_again(modal_project, fake_modal):
    modal_project.write("wf.py", NAPS)
    kill_mid_run(modal_project, fake_modal)
    assert fake_modal.running == 3
    left = set(inflight_rows(modal_project).values())

    output = modal_project.redun("run", "wf.py", "main").stdout
    assert final_line(output) == "3"
    # main's result was recorded before the kill: cached now. The naps were still running.
    assert output.count("reattaching to Modal call fc-") == 3
    # Each nap, of the killed run and of this one, is tagged with the input left running: the
    # three are inputs of one batch.
    naps = call_tags(modal_project, "nap")
    assert len(naps) == 6 and len(set(naps)) == 3 and set(naps) <= left
    assert len({CallAddress.parse(nap).call_id for nap in naps}) == 1
    executions = fake_modal.executions[f"{APP}/run_job"]
    assert executions == 5  # main, 3 x nap and total: each ran exactly once.
    assert inflight_rows(modal_project) == {}  # A run that ends normally leaves no rows.


def test_stale_call_ids_fall_back_to_a_fresh_spawn(modal_project, fake_modal):
    import modal

    modal_project.write("wf.py", NAPS)
    kill_mid_run(modal_project, fake_modal)
    left = inflight_rows(modal_project).values()
    for call_id in {CallAddress.parse(address).call_id for address in left}:
        modal.FunctionCall.from_id(call_id).cancel()
    fake_modal.wait_until(lambda: fake_modal.running == 0)

    output = modal_project.redun("run", "wf.py", "main").stdout
    assert final_line(output) == "3"
    assert output.count("reattaching to Modal call fc-") == 3
    assert fake_modal.executions[f"{APP}/run_job"] == 5 + 3  # The naps ran again, once.


def test_jobs_are_tagged_with_their_call_image_and_resources(modal_project, fake_modal):
    modal_project.write(
        "wf.py",
        """\
        from redun import task

        @task(gpu="T4", memory=2048, image="gpu", volumes={"/data": "my-volume"})
        def train() -> str:
            return "ok"
        """,
    )
    modal_project.redun("run", "wf.py", "train")
    tags = job_tags(modal_project, "train")
    assert tags["modal_call"].startswith("fc-")
    assert tags["modal_call"] in fake_modal.calls
    assert tags["modal_input"] == 0  # The first input of its batch.
    assert {key: tags[key] for key in tags if key not in ("modal_call", "modal_input")} == {
        "modal_app": APP,
        "modal_gpu": "T4",
        "modal_memory": 2048,
        "modal_image": "gpu",
        "modal_volumes": {"/data": "my-volume"},
    }


def test_crashed_container_shows_the_calls_latest_logs(modal_project, fake_modal):
    modal_project.write(
        "wf.py",
        """\
        import time
        from redun import task

        @task
        def load() -> int:
            print("loading shard 7")
            time.sleep(60)
            return 7
        """,
    )
    # The container dies once the task has printed (and sleeps): no result, no traceback;
    # what it printed comes from the call's logs (FunctionCall.logs.tail).
    fake_modal.inject_fault("crash", function=f"{APP}/run_job", on_output="loading shard 7")
    process = modal_project.redun("run", "wf.py", "load", check=False, timeout=60)
    assert process.returncode != 0
    output = process.stdout
    assert "RemoteCallError" in output
    assert "Modal call fc-" in output
    assert "(injected crash)" in output
    assert "Latest logs:" in output
    logs = output.split("Latest logs:", 1)[1]
    assert "loading shard 7" in logs
    # One read of the call's log tail. The client's tail widens its lookback window (an hour, a
    # day, ...) until it has the entries asked for: this call logged one line, so it asks once
    # per window.
    from modal._logs import _TAIL_LOOKBACKS

    assert fake_modal.rpc_counts["AppFetchLogs"] == len(_TAIL_LOOKBACKS)
    assert fake_modal.executions[f"{APP}/run_job"] == 1
