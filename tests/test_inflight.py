"""The reattach table: batched writes from a background thread, claims, release."""

from __future__ import annotations

import threading
import time
from contextlib import nullcontext

import sqlalchemy as sa

from redun_modal_executor import inflight
from redun_modal_executor.inflight import INFLIGHT_CALLS, InflightCalls

WAIT_SECONDS = 10.0  # For the flusher to get to where a test waits for it; never slept.


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


def flushers() -> set[threading.Thread]:
    """The flusher threads alive now, of every InflightCalls."""
    return {thread for thread in threading.enumerate() if thread.name == "redun-modal-reattach"}


class Writes:
    """Stands in for `InflightCalls._write`: notes each batch the flusher hands over (its size,
    when), and lets the flusher write it only once the test has let that many batches through.
    So a test sees each batch as it is cut and can look at the table between two writes."""

    def __init__(self, monkeypatch, *, let_through: float = float("inf")) -> None:
        self.sizes: list[int] = []
        self.taken_at: list[float] = []  # time.monotonic() when the flusher handed it over
        self.written = 0
        self._let_through = let_through
        self._changed = threading.Condition()
        write = InflightCalls._write

        def gated(calls: InflightCalls, batch: list, tags: list) -> None:
            with self._changed:
                self.sizes.append(len(batch))
                self.taken_at.append(time.monotonic())
                self._changed.notify_all()
                number = len(self.sizes)
                if not self._changed.wait_for(lambda: number <= self._let_through, WAIT_SECONDS):
                    raise AssertionError(f"batch {number} was never let through")
            write(calls, batch, tags)
            with self._changed:
                self.written += 1
                self._changed.notify_all()

        monkeypatch.setattr(InflightCalls, "_write", gated)

    def let_through(self, batches: int) -> None:
        with self._changed:
            self._let_through += batches
            self._changed.notify_all()

    def wait(self, *, taken: int = 0, written: int = 0) -> None:
        """Until the flusher has handed over `taken` batches and written `written`."""
        with self._changed:
            reached = self._changed.wait_for(
                lambda: len(self.sizes) >= taken and self.written >= written, WAIT_SECONDS
            )
        assert reached, f"batches {self.sizes}, {self.written} written; wanted {taken}, {written}"


def test_records_are_written_in_batches_and_claimed_by_the_next_run(tmp_path, monkeypatch):
    # No batch is cut for its age here: only FLUSH_ROWS cuts them, at rows the test chooses.
    monkeypatch.setattr(inflight, "FLUSH_SECONDS", 3600.0)
    engine = database(tmp_path)
    writes = Writes(monkeypatch, let_through=0)
    errors: list[str] = []
    redun_lock = threading.RLock()
    calls = InflightCalls(engine, lambda: redun_lock, on_error=errors.append)
    for i in range(inflight.FLUSH_ROWS):
        calls.record(f"hash-{i}", f"fc-{i}", "nap")
    writes.wait(taken=1)  # A full batch: cut at once, whatever its age.
    assert writes.sizes == [inflight.FLUSH_ROWS]
    # While that batch waits to be written, more calls are spawned; one replaces the call of
    # a job in it (a later call of the same job).
    calls.record("hash-0", "fc-again", "nap")
    for i in range(inflight.FLUSH_ROWS, 250):
        calls.record(f"hash-{i}", f"fc-{i}", "nap")
    writes.let_through(1)
    # The first batch is written; the next, over FLUSH_ROWS by then, is cut at once: all of it.
    writes.wait(taken=2, written=1)
    assert len(rows(engine)) == inflight.FLUSH_ROWS and rows(engine)["hash-0"] == "fc-0"
    writes.let_through(1)
    writes.wait(written=2)
    # Two transactions for 251 records: the second holds the replaced call and the rest.
    assert writes.sizes == [inflight.FLUSH_ROWS, 1 + 250 - inflight.FLUSH_ROWS]
    table = rows(engine)
    assert len(table) == 250 and table["hash-0"] == "fc-again"

    # A run that died left these: the next one claims each once.
    successor = InflightCalls(engine, nullcontext, on_error=errors.append)
    assert successor.claim("hash-0") == "fc-again"
    assert successor.claim("hash-0") is None
    successor.release()
    assert "hash-0" not in rows(engine) and len(rows(engine)) == 249
    assert errors == []


def test_a_short_batch_is_written_once_its_first_call_is_flush_seconds_old(tmp_path, monkeypatch):
    engine = database(tmp_path)
    writes = Writes(monkeypatch)
    errors: list[str] = []
    calls = InflightCalls(engine, nullcontext, on_error=errors.append)
    recorded = time.monotonic()
    calls.record("first", "fc-1", "nap")
    writes.wait(written=1)
    # Held for later calls to join it, FLUSH_SECONDS and never less; then written alone.
    assert writes.sizes == [1]
    assert writes.taken_at[0] - recorded >= inflight.FLUSH_SECONDS
    assert rows(engine) == {"first": "fc-1"} and errors == []
    calls.release()


def test_release_drops_this_runs_rows_written_or_still_queued(tmp_path, monkeypatch):
    engine = database(tmp_path)
    writes = Writes(monkeypatch)
    errors: list[str] = []
    others = flushers()
    calls = InflightCalls(engine, nullcontext, on_error=errors.append)
    calls.record("written", "fc-1", "nap")
    (flusher,) = flushers() - others
    writes.wait(written=1)
    assert rows(engine) == {"written": "fc-1"}
    # The next batch would be an hour old before it is written: still queued at release.
    monkeypatch.setattr(inflight, "FLUSH_SECONDS", 3600.0)
    calls.record("queued", "fc-2", "nap")
    calls.release()
    assert rows(engine) == {}
    assert writes.sizes == [1]  # Release did not write the queued row first.
    assert not flusher.is_alive()
    calls.record("late", "fc-3", "nap")  # After release: ignored; no flusher to write it.
    assert flushers() <= others and writes.sizes == [1]
    assert rows(engine) == {} and errors == []


def test_a_failed_write_is_reported_not_raised(tmp_path):
    engine = database(tmp_path)
    errors: list[str] = []
    reported = threading.Event()

    def on_error(message: str) -> None:
        errors.append(message)
        reported.set()

    calls = InflightCalls(engine, nullcontext, on_error=on_error)
    with engine.begin() as connection:
        connection.execute(sa.text("drop table redun_modal_inflight_call"))
    calls.record("hash", "fc-1", "nap")
    assert reported.wait(WAIT_SECONDS)
    (error,) = errors
    assert error.startswith("could not record 1 Modal call(s) for reattaching:")
    assert "redun_modal_inflight_call" in error  # The database's own words follow.


def test_tags_go_with_the_batches_as_redun_writes_them(tmp_path):
    from redun.backends.db import Tag, TagEntity
    from redun.hashing import hash_tag

    engine = database(tmp_path)
    Tag.__table__.create(engine)
    tags = [("modal_call", "fc-1"), ("modal_input", 3)]
    calls = InflightCalls(engine, nullcontext, print)
    calls.record("e1", "fc-1:3", "t", "job-1", tags)
    calls.release()  # Writes the tags still queued; deletes the run's rows.
    again = InflightCalls(engine, nullcontext, print)
    again.record("e1", "fc-1:3", "t", "job-1", tags)  # The same tags: left as they are.
    again.release()
    with engine.connect() as connection:
        query = sa.select(Tag.tag_hash, Tag.entity_type, Tag.entity_id, Tag.key, Tag.value)
        found = sorted(connection.execute(query).all())
    expected = [
        (hash_tag("job-1", key, value, []), TagEntity.Job, "job-1", key, value)
        for key, value in tags
    ]
    assert found == sorted(expected)
    assert rows(engine) == {}
