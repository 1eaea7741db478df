"""Nothing orphaned, nothing run twice, nothing lost: faults injected on the fake and locally.

Each bad-input case also checks that the redun database stays usable and that a result
finished in the same run stays cached.
"""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path

import pytest
from grpclib import Status
from helpers import (
    APP,
    MODAL_CONFIG,
    ON_EACH_DATABASE,
    TARGET,
    final_line,
    inflight_rows,
    ran,
    wait_for,
)

from redun_modal_executor.backends.local.template import TEMPLATE_FLAG, WORKER_MODULE

pytestmark = pytest.mark.e2e

FAN_OUT = """\
import time
from redun import task

@task
def nap(i: int, seconds: float) -> int:
    time.sleep(seconds)
    return i

@task
def main(n: int = 50, seconds: float = 60) -> int:
    return total([nap(i, seconds) for i in range(n)])

@task
def total(values: list) -> int:
    return sum(values)
"""
TEMPLATE_COMMAND = f"{WORKER_MODULE}\0{TEMPLATE_FLAG}\0".encode()  # In /proc/<pid>/cmdline.


@pytest.fixture
def deployed(project, fake_modal):
    project.configure(MODAL_CONFIG)
    fake_modal.register_function(APP, "run_job", TARGET)
    return project


def interrupt_when(project, condition, *args: str) -> str:
    """Run `redun run wf.py main ...`, send SIGINT once `condition()` holds; return output."""
    process = project.start("run", "wf.py", "main", *args)
    try:
        wait_for(condition, timeout=120, process=process)
        process.send_signal(signal.SIGINT)
        return process.communicate(timeout=90)[0]
    finally:
        process.kill()


@ON_EACH_DATABASE
def test_sigint_mid_fan_out_cancels_every_call_on_modal(deployed, fake_modal):
    deployed.write("wf.py", FAN_OUT)
    output = interrupt_when(
        deployed, lambda: len(fake_modal.inputs) >= 51 and fake_modal.running >= 4
    )
    assert "cancelled 50 call(s) still in flight" in output
    fake_modal.wait_until(lambda: fake_modal.running == 0, timeout=10)
    statuses = {record.status for call in fake_modal.calls.values() for record in call.inputs}
    assert statuses <= {"SUCCESS", "TERMINATED"}  # main finished; every nap was cancelled.
    assert fake_modal.inputs_cancelled == 50
    assert inflight_rows(deployed) == {}  # Written for reattaching, released on the way out.


def local_processes(project) -> dict[int, int]:
    """Local-backend template and worker processes started from `project` (their cwd), from
    /proc: pid to parent pid."""
    found = {}
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes()
            cwd = os.readlink(proc / "cwd")
            stat = (proc / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if TEMPLATE_COMMAND in cmdline and cwd == str(project.root) and stat[0] != "Z":
            found[int(proc.name)] = int(stat[1])
    return found


def local_workers(project) -> list[int]:
    """The workers among them: those forked by a template."""
    processes = local_processes(project)
    return [pid for pid, parent in processes.items() if parent in processes]


@ON_EACH_DATABASE
def test_sigint_mid_fan_out_stops_every_local_worker(project):
    project.write("wf.py", FAN_OUT)  # Two workers (the project's max_workers), 50 naps.
    output = interrupt_when(project, lambda: len(local_workers(project)) == 2)
    cancelled = re.search(r"cancelled (\d+) call\(s\) still in flight", output)
    # The two naps running, and those queued by then: how many the scheduler had submitted when
    # SIGINT came varies; main had finished, so at most the 50 naps.
    assert cancelled and 2 <= int(cancelled.group(1)) <= 50
    assert local_processes(project) == {}  # Neither the workers nor their template is left.


def test_preemption_is_transparent(deployed, fake_modal):
    deployed.write("wf.py", FAN_OUT)
    fake_modal.inject_fault("preempt", count=1, function=f"{APP}/run_job", after=0.3)
    output = deployed.redun("run", "wf.py", "main", "--n", "3", "--seconds", "1").stdout
    assert final_line(output) == "3"
    assert fake_modal.preemptions == 1


def test_internal_failures_are_resubmitted_a_bounded_number_of_times(deployed, fake_modal):
    deployed.write("wf.py", FAN_OUT)
    fake_modal.inject_fault("internal_failure", count=2)
    output = deployed.redun("run", "wf.py", "main", "--n", "2", "--seconds", "0").stdout
    assert final_line(output) == "1"
    assert len(fake_modal.inputs) == 4 + 2  # main, 2 naps, total; 2 resubmitted inputs

    fake_modal.inject_fault("internal_failure", count=3)
    process = deployed.redun("run", "wf.py", "main", "--n", "1", "--seconds", "0", check=False)
    assert process.returncode != 0
    assert "Modal failed the call 3 times with an internal error" in process.stdout


def test_a_dying_container_fails_the_job_with_its_call_id(deployed, fake_modal):
    deployed.write("wf.py", FAN_OUT)
    deployed.redun("run", "wf.py", "nap", "--i", "7", "--seconds", "0")  # Cached from now on.
    fake_modal.inject_fault("crash", count=1, function=f"{APP}/run_job", after=0.3)
    process = deployed.redun("run", "wf.py", "nap", "--i", "1", "--seconds", "5", check=False)
    assert process.returncode != 0
    assert "RemoteCallError: Task nap: Modal call fc-" in process.stdout
    again = deployed.redun("run", "wf.py", "nap", "--i", "7", "--seconds", "0").stdout
    assert final_line(again) == "7" and ran(again, "nap") == 0


def test_two_thousand_jobs_with_dropped_and_delayed_rpcs(deployed, fake_modal):
    deployed.write("wf.py", FAN_OUT)
    fake_modal.latency = 0.002
    fake_modal.fail_rpc("FunctionMap", Status.UNAVAILABLE, count=10)
    fake_modal.fail_rpc("FunctionGetOutputs", Status.UNAVAILABLE, count=10)
    output = deployed.redun(
        "run", "wf.py", "main", "--n", "2000", "--seconds", "0", timeout=600
    ).stdout
    assert final_line(output) == str(sum(range(2000)))
    assert fake_modal.executions[f"{APP}/run_job"] == 2002  # Each job ran exactly once.
