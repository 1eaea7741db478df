"""Modal calls in flight, kept in the redun database so a restarted scheduler can reattach.

A row maps a job's ``eval_hash`` (its task's code and arguments) to the Modal call running
it. It is written as soon as the call is spawned and deleted when the run that spawned it
stops normally, by which time redun has been given every outcome. Only a scheduler that dies
(SIGKILL, a lost laptop) leaves rows behind; the same command run again claims them and waits
for those calls instead of paying for the work twice.

The table lives next to redun's own, through SQLAlchemy Core, so it works on sqlite and
Postgres alike; redun's migrations neither know nor touch it.
"""

from __future__ import annotations

import threading
import time
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import sqlalchemy as sa

_metadata = sa.MetaData()
_DELETE_BATCH = 500  # Bound parameters per statement stay well under sqlite's limit.
# redun's own cache table: a job whose eval_hash is there has its outcome recorded.
_REDUN_EVALUATIONS = sa.table("evaluation", sa.column("eval_hash"))

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

    def __init__(self, engine: sa.engine.Engine, lock: AbstractContextManager[Any] | None = None):
        # `lock` serializes with redun's own use of the database (sqlite has one writer).
        self._engine = engine
        self._db_lock = lock if lock is not None else nullcontext()
        self._lock = threading.Lock()
        self._touched: set[str] = set()
        query = sa.select(INFLIGHT_CALLS.c.eval_hash, INFLIGHT_CALLS.c.call_id)
        with self._db_lock, self._engine.begin() as connection:
            _metadata.create_all(connection, tables=[INFLIGHT_CALLS], checkfirst=True)
            self._left_behind = {row.eval_hash: row.call_id for row in connection.execute(query)}

    def claim(self, eval_hash: str) -> str | None:
        """The call an earlier scheduler left running for this job, if any (once)."""
        with self._lock:
            call_id = self._left_behind.pop(eval_hash, None)
            if call_id is not None:
                self._touched.add(eval_hash)
            return call_id

    def record(self, eval_hash: str, call_id: str, task: str) -> None:
        """Remember the call now running this job (replacing an older one)."""
        row = {"eval_hash": eval_hash, "call_id": call_id, "task": task, "spawned_at": time.time()}
        with self._db_lock, self._engine.begin() as connection:
            connection.execute(
                INFLIGHT_CALLS.delete().where(INFLIGHT_CALLS.c.eval_hash == eval_hash)
            )
            connection.execute(INFLIGHT_CALLS.insert().values(**row))
        with self._lock:
            self._touched.add(eval_hash)

    def release(self) -> None:
        """The run has ended and redun has every outcome: drop the rows it claimed or made,
        and those of any run whose results redun recorded before that run died."""
        with self._lock:
            hashes, self._touched = sorted(self._touched), set()
        recorded = sa.select(_REDUN_EVALUATIONS.c.eval_hash)
        with self._db_lock, self._engine.begin() as connection:
            connection.execute(
                INFLIGHT_CALLS.delete().where(INFLIGHT_CALLS.c.eval_hash.in_(recorded))
            )
            for start in range(0, len(hashes), _DELETE_BATCH):
                batch = hashes[start : start + _DELETE_BATCH]
                connection.execute(
                    INFLIGHT_CALLS.delete().where(INFLIGHT_CALLS.c.eval_hash.in_(batch))
                )
