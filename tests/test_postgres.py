"""Two schedulers sharing one Postgres database at once, as a team's runs do.

What the design guarantees, and so what is asserted: redun takes no lock on a job across
schedulers. A job that neither of two concurrent schedulers found cached may run in both, once
in each: never more, and never not at all. The runs end with the right result, each is
recorded whole, and a run started after they have finished finds every job cached and runs
nothing. On the Modal backend both schedulers write the reattach ledger; it is empty once both
have finished.

One exception is redun's own (0.44.1): it records its content-addressed rows (call nodes,
values, tasks) by looking each up and then inserting it, without a lock. Two schedulers that
record the same row at the same moment may both insert it; the later insert fails on redun's
table (a duplicate key, or a missing one once redun has rolled its session back over a
duplicate), and that scheduler's run stops with the IntegrityError (in 5 pairs of runs out
of 31 while these tests were written). The tests tolerate exactly that failure, raised in
redun's code alone, in one of the two runs, and nothing else: the other run, and the run
after, still show every guarantee above.
"""

from __future__ import annotations

import os
import re
import threading
from collections import Counter
from contextlib import nullcontext
from pathlib import Path

import pytest
import sqlalchemy as sa
from helpers import (
    APP,
    MODAL_CONFIG,
    ON_POSTGRES,
    SUM_OF_SQUARES,
    Project,
    final_line,
    inflight_rows,
    ran,
    wait_for,
)
from redun.backends.db import Execution, Job

from redun_modal_executor import inflight
from redun_modal_executor.inflight import INFLIGHT_CALLS, InflightCalls

pytestmark = pytest.mark.e2e

# Each execution of a task appends its name and argument to the file `log`, so that a test can
# count how often each job ran, whichever scheduler ran it.
COUNTED = """\
import time
from redun import task

def note(log: str, what: str) -> None:
    with open(log, "a") as file:  # One short append per line: whole lines, in any order.
        file.write(what + "\\n")

@task
def work(i: int, log: str, seconds: float) -> int:
    note(log, f"work {i}")
    time.sleep(seconds)
    return i * i

@task
def main(n: int, log: str, seconds: float = 0.5) -> int:
    note(log, "main")
    return total([work(i, log, seconds) for i in range(n)], log)

@task
def total(values: list, log: str) -> int:
    note(log, "total")
    return sum(values)
"""
N = 6
RESULT = str(sum(i * i for i in range(N)))
JOBS = [f"work {i}" for i in range(N)] + ["main", "total"]
# redun's race (see above): an IntegrityError on one of redun's tables, never this package's.
REDUN_RACE = re.compile(
    r"\(psycopg\.errors\.(?:UniqueViolation|ForeignKeyViolation)\) (?!.*redun_modal_)"
)


def stopped_by_redun(output: str) -> bool:
    """Whether a run stopped on redun's race, raised in redun's own recording alone."""
    traceback = output.rpartition("Traceback (most recent call last):")[2]
    return (
        "sqlalchemy.exc.IntegrityError: " in traceback
        and REDUN_RACE.search(traceback) is not None
        and "redun/backends/db/" in traceback
        and "redun_modal_executor" not in traceback
    )


def executions(log: Path) -> Counter:
    """How many times each job has run, by what it wrote."""
    return Counter(log.read_text().splitlines()) if log.exists() else Counter()


def run_two_at_once(project: Project, *args: str, timeout: float = 180) -> list[str | None]:
    """Start two `redun run wf.py main ...` in the project at once. The output of each run,
    or None for one that redun's race stopped; at most one may be."""
    processes = [project.start("run", "wf.py", "main", *args) for _ in range(2)]
    try:
        outputs = [process.communicate(timeout=timeout)[0] for process in processes]
    finally:
        for process in processes:
            process.kill()
    finished: list[str | None] = []
    for process, output in zip(processes, outputs, strict=True):
        if process.returncode != 0:
            assert stopped_by_redun(output), output
        finished.append(output if process.returncode == 0 else None)
    assert finished.count(None) <= 1, outputs
    print(f"runs stopped by redun's race: {finished.count(None)} of 2")
    return finished


def execution_id(output: str) -> str:
    found = re.search(r"Start Execution ([0-9a-f-]+):", output)
    assert found, output
    return found.group(1)


def assert_recorded(project: Project, runs: int, whole: list[str]) -> None:
    """`redun log` lists `runs` runs of the workflow; those of the outputs `whole` are
    recorded with every job, ended."""
    listed = project.redun("log").stdout
    assert listed.count("run wf.py main") == runs, listed
    assert len(project.query(sa.select(Execution.id))) == runs
    for output in whole:
        ended = sa.select(Job.end_time.is_not(None)).where(
            Job.execution_id == execution_id(output)
        )
        jobs = [row[0] for row in project.query(ended)]
        assert len(jobs) == len(JOBS) and all(jobs), jobs


@ON_POSTGRES
def test_two_schedulers_on_one_database_finish_and_a_third_runs_nothing(project):
    project.write("wf.py", COUNTED)
    log = project.root / "executions.txt"
    args = ("--n", str(N), "--log", str(log))
    outputs = run_two_at_once(project, *args)
    finished = [output for output in outputs if output is not None]
    assert [final_line(output) for output in finished] == [RESULT] * len(finished)

    ran_by_each = Counter(executions(log))
    # Every job ran, in one scheduler or in both: at most once in each.
    assert set(ran_by_each) == set(JOBS)
    assert all(1 <= times <= 2 for times in ran_by_each.values()), ran_by_each
    if len(finished) == 2:  # What each scheduler says it ran, it ran.
        jobs = ("main", "work", "total")
        assert sum(ran_by_each.values()) == sum(ran(out, job) for out in finished for job in jobs)
    print(f"two schedulers at once: {sum(ran_by_each.values())} executions of {len(JOBS)} jobs")
    assert_recorded(project, 2, whole=finished)

    after = project.redun("run", "wf.py", "main", *args).stdout
    assert final_line(after) == RESULT
    assert executions(log) == ran_by_each  # Nothing ran again: 0 new executions.
    assert "Run    Job" not in after
    assert_recorded(project, 3, whole=[*finished, after])


NAPS = """\
import time
from redun import task

@task
def nap(i: int) -> int:
    time.sleep(2)
    return i

@task
def main(n: int = 4) -> int:
    return total([nap(i) for i in range(n)])

@task
def total(values: list) -> int:
    return sum(values)
"""


@ON_POSTGRES
def test_two_modal_schedulers_share_the_reattach_ledger(modal_project, fake_modal):
    modal_project.write("wf.py", NAPS)
    outputs = run_two_at_once(modal_project)
    finished = [output for output in outputs if output is not None]
    assert [final_line(output) for output in finished] == ["6"] * len(finished)
    jobs = 4 + 2  # main, 4 x nap, total
    executed = fake_modal.executions[f"{APP}/run_job"]
    # A job runs once per scheduler at most; one that a scheduler found in the ledger, written
    # by the other, it awaited instead of running it again.
    reattached = sum(output.count("reattaching to Modal call fc-") for output in finished)
    assert jobs <= executed <= 2 * jobs
    print(f"two Modal schedulers at once: {executed} executions, {reattached} reattached")
    assert inflight_rows(modal_project) == {}  # Nothing left behind, even by a stopped run.
    again = modal_project.redun("run", "wf.py", "main").stdout
    assert final_line(again) == "6"
    assert fake_modal.executions[f"{APP}/run_job"] == executed


@ON_POSTGRES
def test_a_user_who_may_not_create_tables_runs_without_reattaching(modal_project, fake_modal):
    """Teams often run redun as a Postgres user that may write redun's tables but not create
    one (and since Postgres 15 only the schema's owner may create tables in `public`). The
    ledger is then missing: the run goes on without reattaching, and says why."""
    url = sa.engine.make_url(modal_project.db_uri)
    runner = f"runner_{url.database}"[:63]
    owner = sa.create_engine(url)
    with owner.begin() as connection:
        connection.execute(sa.text(f"create role {runner} login"))
        connection.execute(
            sa.text(
                f"grant select, insert, update, delete on all tables in schema public to {runner}"
            )
        )
        connection.execute(sa.text(f"grant usage on all sequences in schema public to {runner}"))
    owner.dispose()
    modal_project.db_uri = url.set(username=runner).render_as_string()
    modal_project.configure(MODAL_CONFIG)
    modal_project.write("wf.py", SUM_OF_SQUARES)
    output = modal_project.redun("run", "wf.py", "main").stdout
    assert final_line(output) == "14"
    assert (
        "reattaching is off for this run: the table redun_modal_inflight_call could not be "
        "opened in the redun database (permission denied for schema public)"
    ) in output
    assert fake_modal.executions[f"{APP}/run_job"] == 6


# Two ledgers at once, step by step: one scheduler's transaction is held open while the
# other's waits on it, which only Postgres lets happen (sqlite has one writer at a time).


def waiting_on_a_lock(engine: sa.engine.Engine) -> bool:
    """Whether some session of the database waits for a lock another holds."""
    query = sa.text(
        "select count(*) from pg_stat_activity "
        "where wait_event_type = 'Lock' and datname = current_database()"
    )
    with engine.connect() as connection:
        return connection.execute(query).scalar() > 0


def test_two_schedulers_creating_the_ledger_at_once_share_it(postgres_db_uri):
    """Both find no table and create it; the second CREATE waits for the first, then fails
    (Postgres checks the name when the first commits). The second must use the first's."""
    engine = sa.create_engine(postgres_db_uri)
    errors: list[object] = []
    opened: list[InflightCalls] = []

    def second_scheduler() -> None:
        try:
            opened.append(InflightCalls(engine, nullcontext, errors.append))
        except Exception as error:
            errors.append(error)

    second = threading.Thread(target=second_scheduler)
    with engine.begin() as first:  # The first scheduler has created it, not yet committed.
        inflight._metadata.create_all(first, tables=[INFLIGHT_CALLS], checkfirst=True)
        second.start()
        wait_for(lambda: waiting_on_a_lock(engine), timeout=30)
    second.join(timeout=30)
    assert errors == [] and len(opened) == 1
    opened[0].release()
    engine.dispose()


def test_two_schedulers_recording_the_same_job_at_once_lose_no_batch(postgres_db_uri):
    """Both run a job neither found cached and record their calls for it at once: the later
    write waits for the earlier, then replaces its row, and writes the rest of its batch."""
    engine = sa.create_engine(postgres_db_uri)
    errors: list[str] = []
    calls = InflightCalls(engine, nullcontext, errors.append)
    row = {"eval_hash": "e" * 40, "call_id": "fc-other", "task": "work", "spawned_at": 0.0}
    with engine.begin() as other:  # The other scheduler's batch, written, not yet committed.
        other.execute(INFLIGHT_CALLS.insert(), [row])
        calls.record("e" * 40, "fc-mine", "work")
        calls.record("f" * 40, "fc-mine-too", "work")
        wait_for(lambda: waiting_on_a_lock(engine), timeout=30)
    database = Project(Path("."), postgres_db_uri)  # Only to read the ledger with.
    wait_for(lambda: errors or len(inflight_rows(database)) == 2, timeout=30)
    assert errors == []
    assert inflight_rows(database) == {"e" * 40: "fc-mine", "f" * 40: "fc-mine-too"}
    calls.release()
    engine.dispose()


# Where no server is installed.

MISSING_SERVER = """\
import postgres_server

postgres_server.find_pg_ctl = lambda: None  # As where the `postgresql` package is missing.
pytest_plugins = ["postgres_server"]
"""


@pytest.mark.parametrize("ci", [None, "true"])
def test_without_the_server_binaries_postgres_tests_skip_but_fail_in_ci(pytester, monkeypatch, ci):
    tests = Path(__file__).parent
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tests), str(tests.parent)]))
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    pytester.makeconftest(MISSING_SERVER)
    pytester.makepyfile("def test_on_postgres(postgres_db_uri):\n    pass\n")
    result = pytester.runpytest_subprocess("-rs", "-p", "no:cacheprovider")
    hint = "PostgreSQL server binaries not found: `apt-get install postgresql` (Debian)"
    if ci is None:
        result.assert_outcomes(skipped=1)
    else:
        result.assert_outcomes(errors=1)
    assert hint in result.stdout.str()
