"""Modal calls in flight, kept in the redun database so a restarted scheduler can reattach.

A row maps a job's ``eval_hash`` (its task's code and arguments) to the Modal call running
it: the call id, and ``:<index>`` for an input of a batched call (``calls.CallAddress``).
Rows are written in batches, within ``FLUSH_SECONDS`` of the spawn, and deleted when the run
that spawned them stops normally, by which time redun has been given every outcome. Only a
scheduler that dies (SIGKILL, a lost laptop) leaves rows behind; the same command run again
claims them and waits for those calls instead of paying for the work twice. A scheduler that
dies loses at most its last, unwritten batch: those calls run again.

The table lives next to redun's own, through SQLAlchemy Core, so it works on sqlite and
Postgres alike; redun's migrations neither know nor touch it. The spawned jobs' tags go in the
same batches, into redun's own tag table, as redun's ``record_tags`` writes them (a tag is
keyed by its hash: one already there is left as it is): redun's API writes one job's tags
per transaction, on the scheduler thread.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import sqlalchemy as sa
from redun.backends.db import Evaluation, Tag, TagEntity
from redun.hashing import hash_tag

_metadata = sa.MetaData()
_DELETE_BATCH = 500  # Bound parameters per statement stay well under sqlite's limit.
# A batch is written this long after its first call was spawned, or once it has this many rows:
# one transaction for many calls keeps redun's database lock free for the scheduler thread.
FLUSH_SECONDS = 0.1
FLUSH_ROWS = 100
# redun's own cache table: a job whose eval_hash is there has its outcome recorded.
_REDUN_EVALUATIONS = Evaluation.__table__
_REDUN_TAGS = Tag.__table__

INFLIGHT_CALLS = sa.Table(
    "redun_modal_inflight_call",
    _metadata,
    sa.Column("eval_hash", sa.String(64), primary_key=True),
    sa.Column("call_id", sa.String(128), nullable=False),
    sa.Column("task", sa.String(1024), nullable=False),
    sa.Column("spawned_at", sa.Float, nullable=False),
)


class InflightCalls:
    """One run's view of the in-flight call table: what earlier runs left, what it adds."""

    def __init__(
        self,
        engine: sa.engine.Engine,
        guard: Callable[[], AbstractContextManager[Any]],
        on_error: Callable[[str], None],
    ):
        # `guard` serializes with redun's own use of the database (sqlite has one writer).
        self._engine = engine
        self._guard = guard
        self._on_error = on_error
        self._lock = threading.Lock()
        self._queued = threading.Condition(self._lock)
        self._touched: set[str] = set()
        self._pending: dict[str, dict[str, Any]] = {}  # eval_hash -> its row, not yet written
        self._pending_tags: dict[str, dict[str, Any]] = {}  # tag_hash -> its row, the same
        self._stopping = False
        self._flusher: threading.Thread | None = None
        try:
            with self._guard(), self._engine.begin() as connection:
                _metadata.create_all(connection, tables=[INFLIGHT_CALLS], checkfirst=True)
        except sa.exc.DBAPIError:
            # Postgres lets two schedulers starting at once both try to create it; the one
            # that commits second fails, and uses the other's.
            if not sa.inspect(self._engine).has_table(INFLIGHT_CALLS.name):
                raise
        query = sa.select(INFLIGHT_CALLS.c.eval_hash, INFLIGHT_CALLS.c.call_id)
        with self._guard(), self._engine.begin() as connection:
            self._left_behind = {row.eval_hash: row.call_id for row in connection.execute(query)}

    def claim(self, eval_hash: str) -> str | None:
        """The call an earlier scheduler left running for this job, if any (once)."""
        with self._lock:
            call_id = self._left_behind.pop(eval_hash, None)
            if call_id is not None:
                self._touched.add(eval_hash)
            return call_id

    def record(
        self,
        eval_hash: str,
        call_id: str,
        task: str,
        job_id: str = "",
        tags: list[tuple[str, Any]] | None = None,
    ) -> None:
        """Remember the call now running this job (replacing an older one), and the job's
        ``tags``, soon; never blocks on the database."""
        row = {"eval_hash": eval_hash, "call_id": call_id, "task": task, "spawned_at": time.time()}
        tag_rows = [_tag_row(job_id, key, value) for key, value in tags or ()]
        with self._lock:
            if self._stopping:
                return
            self._touched.add(eval_hash)
            self._pending[eval_hash] = row
            self._pending_tags.update((tag["tag_hash"], tag) for tag in tag_rows)
            if self._flusher is None:
                self._flusher = threading.Thread(
                    target=self._flush_batches, name="redun-modal-reattach", daemon=True
                )
                self._flusher.start()
            if len(self._pending) in (1, FLUSH_ROWS):
                self._queued.notify()

    def release(self) -> None:
        """The run has ended and redun has every outcome: drop the rows it claimed or made,
        and those of any run whose results redun recorded before that run died."""
        with self._lock:
            self._stopping = True
            self._queued.notify()
            flusher = self._flusher
        if flusher is not None:
            flusher.join()
        with self._lock:
            # Rows still queued would be deleted below anyway: no need to write them first.
            self._pending.clear()
            tags, self._pending_tags = list(self._pending_tags.values()), {}
            hashes, self._touched = sorted(self._touched), set()
        if tags:  # Tags stay: they say where the jobs ran.
            try:
                self._write([], tags)
            except Exception as error:
                self._on_error(f"could not tag {len(tags)} job(s) with their calls: {error}")
        recorded = sa.select(_REDUN_EVALUATIONS.c.eval_hash)
        with self._guard(), self._engine.begin() as connection:
            connection.execute(
                INFLIGHT_CALLS.delete().where(INFLIGHT_CALLS.c.eval_hash.in_(recorded))
            )
            for batch in _batches(hashes):
                connection.execute(
                    INFLIGHT_CALLS.delete().where(INFLIGHT_CALLS.c.eval_hash.in_(batch))
                )

    def _flush_batches(self) -> None:
        """The flusher thread: write each batch once it is full or old enough, until release."""
        while True:
            with self._lock:
                while not self._pending and not self._stopping:
                    self._queued.wait()
                deadline = time.monotonic() + FLUSH_SECONDS
                while len(self._pending) < FLUSH_ROWS and not self._stopping:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    self._queued.wait(remaining)
                if self._stopping:
                    return
                rows, self._pending = list(self._pending.values()), {}
                tags, self._pending_tags = list(self._pending_tags.values()), {}
            try:
                self._write(rows, tags)
            except Exception as error:  # Reattaching is a saving, not a duty: warn, go on.
                self._on_error(
                    f"could not record {len(rows)} Modal call(s) for reattaching: {error}"
                )

    def _write(self, rows: list[dict[str, Any]], tags: list[dict[str, Any]]) -> None:
        """Insert the rows, each replacing the row of its job if there is one: an upsert, so
        that a row another scheduler inserts at the same moment (it runs the same job, on
        Postgres) is replaced, not a conflict that loses the whole batch. Tags already there
        are left as they are."""
        with self._guard(), self._engine.begin() as connection:
            dialect = connection.dialect.name
            if rows:
                connection.execute(_upsert(dialect), rows)
            if tags:
                insert = _insert(dialect, _REDUN_TAGS)
                connection.execute(insert.on_conflict_do_nothing(), tags)


def _insert(dialect: str, table: sa.Table) -> Any:
    """An INSERT that can say ON CONFLICT, in the database's dialect (redun's databases are
    sqlite and Postgres, the two that have one)."""
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    return insert(table)


def _upsert(dialect: str) -> sa.sql.Insert:
    """INSERT ... ON CONFLICT (eval_hash) DO UPDATE."""
    statement = _insert(dialect, INFLIGHT_CALLS)
    replaced = ("call_id", "task", "spawned_at")
    return statement.on_conflict_do_update(
        index_elements=[INFLIGHT_CALLS.c.eval_hash],
        set_={name: statement.excluded[name] for name in replaced},
    )


def _tag_row(job_id: str, key: str, value: Any) -> dict[str, Any]:
    """A job's tag, as redun's ``record_tags`` makes it (no parents: a new tag)."""
    return {
        "tag_hash": hash_tag(job_id, key, value, []),
        "entity_type": TagEntity.Job,
        "entity_id": job_id,
        "key": key,
        "value": value,
        "is_current": True,
    }


def open_inflight_calls(redun_backend: Any, log: Callable[[str], None]) -> InflightCalls | None:
    """The table in redun's database, where one can be kept there; else None, said in ``log``
    where that is a surprise."""
    engine = getattr(redun_backend, "engine", None)
    if engine is None:
        return None
    if engine.dialect.name == "sqlite" and engine.url.database in (None, "", ":memory:"):
        # Each thread would see its own empty in-memory database, and no later process
        # could reattach from it anyway.
        return None
    # redun's session guard keeps its database to one writer at a time (sqlite has one).
    try:
        return InflightCalls(engine, redun_backend.with_session, log)
    except sa.exc.SQLAlchemyError as error:  # A saving, not a duty: run without.
        # Typically a Postgres user that may write redun's tables but not create one.
        reason = str(getattr(error, "orig", None) or error).splitlines()[0]
        log(
            f"reattaching is off for this run: the table {INFLIGHT_CALLS.name} could not be "
            f"opened in the redun database ({reason}); create it once as a user who may (any "
            "run by such a user does), or set reattach = false"
        )
        return None


def _batches(hashes: list[str]) -> list[list[str]]:
    """``hashes`` in slices small enough for one statement's bound parameters."""
    return [
        hashes[start : start + _DELETE_BATCH] for start in range(0, len(hashes), _DELETE_BATCH)
    ]
