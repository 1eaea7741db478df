"""Live: Ctrl-C cancels every call on Modal, and a scheduler killed mid-run is replaced by one
that reattaches to the calls left running instead of running them again."""

from __future__ import annotations

import signal

import pytest
from helpers import (
    LIVE_RUN_SECONDS,
    LIVE_WAIT_SECONDS,
    call_outcome,
    call_tags,
    final_line,
    inflight_rows,
    live_executions,
    wait_for,
)

pytestmark = [pytest.mark.live, pytest.mark.e2e]

NAPS = """\
import time

from redun import task

@task
def nap(i: int, seconds: float) -> int:
    record(f"nap-{i}")
    time.sleep(seconds)
    return i

@task
def main(n: int = 3, seconds: float = 90) -> int:
    return total([nap(i, seconds) for i in range(n)])

@task
def total(values: list) -> int:
    record("total")
    return sum(values)
"""


def naps_started(app, run: str, n: int) -> bool:
    counts = live_executions(app, run)
    return all(counts[f"nap-{i}"] >= 1 for i in range(n))


def test_sigint_cancels_every_call_on_modal_and_leaves_nothing_running(
    live_app, live_project, run_id
):
    import modal

    n = 4
    live_project.write("wf.py", live_app.workflow(run_id, NAPS))
    process = live_project.start("run", "wf.py", "main", "--n", str(n), "--seconds", "600")
    try:
        wait_for(
            lambda: naps_started(live_app, run_id, n) and len(call_tags(live_project, "nap")) == n,
            timeout=LIVE_WAIT_SECONDS,
            process=process,
            interval=2,
        )
        process.send_signal(signal.SIGINT)
        output = process.communicate(timeout=LIVE_WAIT_SECONDS)[0]
    finally:
        process.kill()
        process.wait()
    assert f"cancelled {n} call(s) still in flight" in output, output

    # Modal's word on each call the naps were tagged with: ended, and not by returning.
    calls = call_tags(live_project, "nap")
    assert len(set(calls)) == n
    wait_for(
        lambda: all(call_outcome(call_id) != "running" for call_id in calls),
        timeout=LIVE_WAIT_SECONDS,
        interval=5,
    )
    outcomes = {call_id: call_outcome(call_id) for call_id in calls}
    assert all(outcome.startswith("raised ") for outcome in outcomes.values()), outcomes
    # And the function's: no input of it running or waiting (the suite runs one test at a
    # time, so no other test's inputs are in flight; Modal's stats may lag a little).
    function = modal.Function.from_name(
        live_app.name, "run_job", environment_name=live_app.environment
    )

    def idle() -> bool:
        stats = function.get_current_stats()
        return stats.num_running_inputs == 0 and stats.backlog == 0

    wait_for(idle, timeout=LIVE_WAIT_SECONDS, interval=5)
    counts = live_executions(live_app, run_id)
    assert counts == {f"nap-{i}": 1 for i in range(n)}  # total never ran.


def test_a_killed_scheduler_is_replaced_by_one_that_reattaches(live_app, live_project, run_id):
    args = ("run", "wf.py", "main", "--n", "3", "--seconds", "150")
    live_project.write("wf.py", live_app.workflow(run_id, NAPS))
    process = live_project.start(*args, capture=False)

    def recorded() -> bool:
        # The naps run on Modal, and main's call and the three naps are in the reattach
        # ledger; each nap job is tagged with its call.
        return (
            naps_started(live_app, run_id, 3)
            and len(inflight_rows(live_project)) == 4
            and len(call_tags(live_project, "nap")) == 3
        )

    try:
        wait_for(recorded, timeout=LIVE_WAIT_SECONDS, process=process, interval=2)
    finally:
        process.kill()  # SIGKILL: nothing is cancelled, the naps go on on Modal.
        process.wait()
    left_running = set(call_tags(live_project, "nap"))
    assert all(call_outcome(call_id) == "running" for call_id in left_running)

    output = live_project.redun(*args, timeout=LIVE_RUN_SECONDS).stdout
    assert final_line(output) == "3"
    assert output.count("reattaching to Modal call fc-") == 3, output
    naps = call_tags(live_project, "nap")
    assert len(naps) == 6 and set(naps) == left_running  # Both runs' jobs: the same calls.
    # Each task ran once on Modal: the naps in the killed run only, total in the second.
    assert live_executions(live_app, run_id) == {"nap-0": 1, "nap-1": 1, "nap-2": 1, "total": 1}
    assert inflight_rows(live_project) == {}
