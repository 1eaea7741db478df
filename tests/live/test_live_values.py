"""Live: a 100 MB argument goes up and a 100 MB result comes down (through Modal's blob
store: both are far over the client's inline limit), unchanged."""

from __future__ import annotations

import hashlib
import random

import pytest
from helpers import LIVE_RUN_SECONDS, final_line, live_executions

pytestmark = [pytest.mark.live, pytest.mark.e2e]

SIZE = 100 * 1024 * 1024
SEED = 12

LARGE = f"""\
import hashlib
import random

from redun import task

SIZE = {SIZE}

@task(memory=2048)
def flip(data: bytes) -> dict:
    record("flip")
    return {{"received": hashlib.sha256(data).hexdigest(), "size": len(data), "data": data[::-1]}}

@task(executor="here")
def check(result: dict) -> str:
    # Short enough for one line of redun's output: 64 bits of each checksum.
    returned = hashlib.sha256(result["data"]).hexdigest()
    received, size = result["received"], result["size"]
    return f"received {{received[:16]}} returned {{returned[:16]}} size {{size}}"

@task(executor="here")
def main(seed: int = 0) -> str:
    # Made on the client (`here` runs in the scheduler's process), sent to Modal by `flip`.
    return check(flip(random.Random(seed).randbytes(SIZE)))
"""


def test_a_100_mb_argument_and_result_round_trip(live_app, live_project, run_id):
    from modal._utils.blob_utils import MAX_OBJECT_SIZE_BYTES

    assert SIZE > 10 * MAX_OBJECT_SIZE_BYTES  # Not inline: through the blob store both ways.
    data = random.Random(SEED).randbytes(SIZE)
    sent, expected = hashlib.sha256(data).hexdigest(), hashlib.sha256(data[::-1]).hexdigest()
    del data
    live_project.write("wf.py", live_app.workflow(run_id, LARGE))
    output = live_project.redun(
        "run", "wf.py", "main", "--seed", str(SEED), timeout=LIVE_RUN_SECONDS
    ).stdout
    assert final_line(output) == repr(f"received {sent[:16]} returned {expected[:16]} size {SIZE}")
    assert live_executions(live_app, run_id) == {"flip": 1}
