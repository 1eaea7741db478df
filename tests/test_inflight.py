"""The reattach table: batched writes from a background thread, claims, release."""

from __future__ import annotations

import threading
import time
from contextlib import nullcontext

import sqlalchemy as sa

from redun_modal_executor import inflight
from redun_modal_executor.inflight import INFLIGHT_CALLS, InflightCalls


def database(tmp_path) -> sa.engine.Engine:
    """A sqlite file with redun's cache table, which release reads."""
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'redun.db'}")
    with engine.begin() as connection:
        connection.execute(sa.text("create table evaluation (eval_hash varchar primary key)"))
    return engine


def rows(engine: sa.engine.Engine) -> dict[str, str]:
    with engine.connect() as connection:
        query = sa.select(INFLIGHT_CALLS.c.eval_hash, INFLIGHT_CALLS.c.call_id)
        return dict(connection.execute(query).all())


def wait_for(condition, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition never held"
        time.sleep(0.01)


def test_records_are_written_in_batches_and_claimed_by_the_next_run(tmp_path, monkeypatch):
    engine = database(tmp_path)
    transactions = []
    monkeypatch.setattr(inflight.InflightCalls, "_write", counted(transactions))
    errors: list[str] = []
    redun_lock = threading.RLock()
    calls = InflightCalls(engine, lambda: redun_lock, on_error=errors.append)
    for i in range(250):
        calls.record(f"hash-{i}", f"fc-{i}", "nap")
    calls.record("hash-0", "fc-again", "nap")  # A later call replaces the job's row.
    wait_for(lambda: len(rows(engine)) == 250)
    assert rows(engine)["hash-0"] in ("fc-0", "fc-again")
    wait_for(lambda: rows(engine)["hash-0"] == "fc-again")
    assert len(transactions) <= 6  # Not one per call.

    # A run that died left these: the next one claims each once.
    successor = InflightCalls(engine, nullcontext, on_error=errors.append)
    assert successor.claim("hash-0") == "fc-again"
    assert successor.claim("hash-0") is None
    successor.release()
    assert "hash-0" not in rows(engine) and len(rows(engine)) == 249
    assert errors == []


def test_release_drops_this_runs_rows_written_or_still_queued(tmp_path):
    engine = database(tmp_path)
    errors: list[str] = []
    calls = InflightCalls(engine, nullcontext, on_error=errors.append)
    calls.record("written", "fc-1", "nap")
    wait_for(lambda: rows(engine) == {"written": "fc-1"})
    calls.record("queued", "fc-2", "nap")
    calls.release()
    assert rows(engine) == {}
    calls.record("late", "fc-3", "nap")  # After release: ignored.
    time.sleep(2 * inflight.FLUSH_SECONDS)
    assert rows(engine) == {} and errors == []


def test_a_failed_write_is_reported_not_raised(tmp_path):
    engine = database(tmp_path)
    errors: list[str] = []
    calls = InflightCalls(engine, nullcontext, on_error=errors.append)
    with engine.begin() as connection:
        connection.execute(sa.text("drop table redun_modal_inflight_call"))
    calls.record("hash", "fc-1", "nap")
    wait_for(lambda: errors)
    assert errors[0].startswith("could not record 1 Modal call(s) for reattaching:")


def counted(transactions: list[int]):
    write = InflightCalls._write

    def counting(self, batch):
        transactions.append(len(batch))
        write(self, batch)

    return counting
