"""Batched calls on the fake: a fan-out is one map call, and each job keeps its guarantees.

Results come as inputs finish; a batch partly failed, partly cancelled and partly reattached
leaves each job with its own outcome.
"""

from __future__ import annotations

import signal

import pytest
import sqlalchemy as sa
from helpers import APP, MODAL_CONFIG, TARGET, call_tags, final_line, inflight_rows, ran, wait_for
from redun.backends.db import Job, Task

pytestmark = pytest.mark.e2e

# The workflows' main tasks run in redun's own executor (`here`): the fan-out is the first
# thing sent to Modal.
BATCH = """\
import time
from redun import task

@task
def nap(i: int, seconds: float) -> int:
    print(f"nap {i} for {seconds} s", flush=True)
    time.sleep(seconds)
    return i

@task
def follow(value: int) -> int:
    return value + 100

@task
def fails(i: int, after: list) -> int:
    print(f"fails {i} now", flush=True)
    raise ValueError(f"shard {i} is bad")

@task
def load(i: int) -> int:
    print(f"loading shard {i}", flush=True)
    time.sleep(60)
    return i

@task
def total(values: list) -> int:
    return sum(values)

@task(executor="here")
def ordered(fast: float = 0.0, slow: float = 6.0) -> int:
    return total([follow(nap(0, fast)), nap(1, slow), nap(2, slow), nap(3, slow)])

@task(executor="here")
def mixed(bad: int = 1) -> int:
    naps = [nap(0, 0.0), nap(2, 0.0), nap(3, 0.0)]
    return total([*naps, fails(bad, naps)])  # fails comes once the naps are done.

@task(executor="here")
def halves(fast: float = 0.0, slow: float = 60.0) -> int:
    return total([nap(i, fast if i % 2 == 0 else slow) for i in range(6)])

@task(executor="here")
def crashing() -> int:
    return total([load(7), nap(1, 30.0), nap(2, 30.0)])
"""


@pytest.fixture
def batch_project(project, fake_modal):
    project.configure(MODAL_CONFIG + "\n[executors.here]\ntype = local\nmode = thread\n")
    fake_modal.register_function(APP, "run_job", TARGET)
    project.write("wf.py", BATCH)
    return project


def inputs_of(fake_modal, task: str) -> list:
    """The fake's input records whose worker printed a line of ``task`` (e.g. "nap")."""
    return [
        record
        for record in fake_modal.inputs.values()
        if any(line.text.startswith(task) for line in record.logs)
    ]


def test_a_fan_out_is_one_map_call_and_results_come_as_inputs_finish(batch_project, fake_modal):
    output = batch_project.redun("run", "wf.py", "ordered").stdout
    assert final_line(output) == str(0 + 100 + 1 + 2 + 3)
    # The four naps went out together; follow joined their batch while the slow naps ran
    # (a batch takes inputs while it owes outputs), and total just after they finished (and
    # for BATCH_IDLE_SECONDS after that): one map call in all.
    sizes = [len(call.inputs) for call in fake_modal.calls.values()]
    assert sizes == [4 + 1 + 1]
    assert fake_modal.rpc_counts["FunctionMap"] == 1
    assert fake_modal.rpc_counts["FunctionFinishInputs"] == 1
    # follow ran on nap 0's result before any slow nap had finished.
    [first, *_] = fake_modal.calls.values()
    follow_input = first.inputs[4]
    slow = [record for record in first.inputs if record.idx in (1, 2, 3)]
    assert follow_input.output is not None
    assert all(
        follow_input.output.output_created_at < record.output.output_created_at for record in slow
    )
    # Each job is tagged with its call and index.
    naps = call_tags(batch_project, "nap")
    assert sorted(naps) == [f"{first.call_id}:{index}" for index in range(4)]


def test_a_batch_partly_failed_gives_each_job_its_own_outcome(batch_project, fake_modal):
    fake_modal.inject_fault("internal_failure", count=1, function=f"{APP}/run_job")
    process = batch_project.redun("run", "wf.py", "mixed", check=False)
    assert process.returncode != 0
    output = process.stdout
    # The failing job's own exception, with its traceback (from the task's own frame).
    assert "ValueError: shard 1 is bad" in output
    assert 'raise ValueError(f"shard {i} is bad")' in output
    # The input Modal failed internally (the first to start: nap 0) was sent again, alone,
    # as a new input of the same (still open) batch; fails joined it once the naps were done.
    [batch] = fake_modal.calls.values()
    assert [record.status for record in batch.inputs] == ["INTERNAL_FAILURE"] + ["SUCCESS"] * 4
    assert [line.text for line in batch.inputs[3].logs] == ["nap 0 for 0.0 s\n"]
    assert [line.text for line in batch.inputs[4].logs] == ["fails 1 now\n"]
    # The naps that succeeded are cached: a rerun runs the failing job only.
    again = batch_project.redun("run", "wf.py", "mixed", "--bad", "5", check=False).stdout
    assert ran(again, "nap") == 0
    assert "ValueError: shard 5 is bad" in again


def test_a_batch_partly_cancelled_cancels_only_the_inputs_still_running(batch_project, fake_modal):
    finished_naps = (
        sa.select(sa.func.count())
        .select_from(Job)
        .join(Task, Job.task_hash == Task.hash)
        .where(Task.name == "nap", Job.end_time.is_not(None))
    )

    def fast_ones_done() -> bool:  # and recorded by redun
        if not sa.inspect(batch_project.database).has_table("job"):
            return False
        [(recorded,)] = batch_project.query(finished_naps)
        return recorded == 3 and fake_modal.running == 3

    process = batch_project.start("run", "wf.py", "halves")
    try:
        wait_for(fast_ones_done, timeout=120, process=process)
        process.send_signal(signal.SIGINT)
        output = process.communicate(timeout=90)[0]
    finally:
        process.kill()
    assert "cancelled 3 call(s) still in flight" in output
    fake_modal.wait_until(lambda: fake_modal.running == 0, timeout=10)
    [batch] = fake_modal.calls.values()
    assert sorted(record.status for record in batch.inputs) == ["SUCCESS"] * 3 + ["TERMINATED"] * 3
    assert fake_modal.inputs_cancelled == 3
    assert inflight_rows(batch_project) == {}
    # The three that finished were recorded: only the slow ones run again.
    again = batch_project.redun("run", "wf.py", "halves", "--slow", "0").stdout
    assert final_line(again) == str(sum(range(6)))
    assert ran(again, "nap") == 3


def test_a_batch_partly_reattached_runs_only_the_input_it_cannot_have(batch_project, fake_modal):
    process = batch_project.start("run", "wf.py", "ordered", "--fast", "3", "--slow", "10")

    def recorded() -> bool:
        return fake_modal.running == 4 and len(inflight_rows(batch_project)) == 4

    try:
        wait_for(recorded, timeout=60, process=process)
    finally:
        process.kill()  # SIGKILL: the naps keep running on "Modal".
        process.wait()
    left = set(inflight_rows(batch_project).values())
    [batch] = fake_modal.calls.values()
    assert left == {f"{batch.call_id}:{index}" for index in range(4)}
    # nap 0 finishes with nobody waiting; nap 3's container is terminated.
    fake_modal.wait_until(lambda: batch.inputs[0].status == "SUCCESS", timeout=30)
    fake_modal.terminate(batch.inputs[3].input_id)

    output = batch_project.redun("run", "wf.py", "ordered", "--fast", "3", "--slow", "10").stdout
    assert final_line(output) == str(0 + 100 + 1 + 2 + 3)
    assert output.count("reattaching to Modal call fc-") == 4
    # nap 0's output was there, naps 1 and 2 were awaited, nap 3 alone ran again.
    nap_inputs = inputs_of(fake_modal, "nap")
    assert len(nap_inputs) == 4 + 1
    assert sorted(record.status for record in nap_inputs) == ["SUCCESS"] * 4 + ["TERMINATED"]
    assert inflight_rows(batch_project) == {}


def test_a_crashed_input_shows_its_own_logs_not_its_batchs(batch_project, fake_modal):
    # The first input of the batch (load) dies once it has printed; the naps print too.
    fake_modal.inject_fault("crash", function=f"{APP}/run_job", on_output="loading shard 7")
    process = batch_project.redun("run", "wf.py", "crashing", check=False, timeout=90)
    assert process.returncode != 0
    output = process.stdout
    [batch] = fake_modal.calls.values()
    assert f"RemoteCallError: Task load: Modal call {batch.call_id} input 0 failed" in output
    logs = output.split("Latest logs:", 1)[1]
    assert "loading shard 7" in logs
    assert "nap 1" not in logs and "nap 2" not in logs
