"""`redun launch` on this executor: a scheduler in a worker, its database on a volume.

On the local backend the volume is a directory (``local_dir/volumes/<name>``) and a detached
launch is a process of its own; the same code runs as on Modal.
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
from pathlib import Path

import modal
import pytest
import sqlalchemy as sa
from helpers import (
    APP,
    LOCAL_CONFIG,
    ON_POSTGRES,
    REDUN,
    SUM_OF_SQUARES,
    TARGET,
    Project,
    final_line,
    launch,
    redun_modal,
    wait_for,
)
from redun.backends.db import Execution

from redun_modal_executor.backends import create_backend
from redun_modal_executor.backends.local.storage import FileLock
from redun_modal_executor.backends.modal.storage import DictLock
from redun_modal_executor.config import CallOptions, ExecutorConfig, VolumeMount
from redun_modal_executor.errors import DatabaseBusyError, LaunchError
from redun_modal_executor.launch.lock import Holder
from redun_modal_executor.launch.scheduler import _set_db_uri, run_launch
from redun_modal_executor.launch.spec import LaunchSpec
from redun_modal_executor.launch.submit import database_spec, launch_options

pytestmark = pytest.mark.e2e

WORKFLOW = (
    "import time\nfrom pathlib import Path\n"
    + SUM_OF_SQUARES
    + """
@task
def wait_for(path: str, after: int = 0) -> str:
    Path(path + ".started").touch()
    deadline = time.time() + 120
    while not Path(path).exists() and time.time() < deadline:
        time.sleep(0.1)
    return "released"

@task
def fails() -> None:
    raise ValueError("the launched workflow failed on purpose")
"""
)


def stop_local_launch(project: Project, call_id: str) -> None:
    pid_file = project.root / ".redun" / "modal-local" / "calls" / call_id / "pid"
    try:
        os.killpg(int(pid_file.read_text()), signal.SIGKILL)
    except (OSError, ValueError):
        pass


def test_detached_launch_runs_on_then_pull_shows_it_and_a_second_launch_is_cached(project):
    project.write("wf.py", WORKFLOW)
    first = launch(project, "redun", "run", "wf.py", "main")  # `redun launch` has exited.
    status = redun_modal(project, "status", "--wait", first).stdout
    assert status.splitlines()[:2] == [f"{first}: succeeded", "14"]
    assert "Run    Job" in redun_modal(project, "logs", first).stdout

    second = launch(project, "redun", "run", "wf.py", "main")
    assert redun_modal(project, "status", "--wait", second).stdout.splitlines()[1] == "14"
    log = redun_modal(project, "logs", second).stdout
    assert len(re.findall(r"Cached Job \w+: +(?:main|square|sum_all)", log)) == 6, log
    assert "Run    Job" not in log

    pulled = redun_modal(project, "pull").stdout
    assert re.search(r"Pulled [1-9]\d* new record\(s\)", pulled)
    executions = project.redun("log").stdout
    assert executions.count("run wf.py main") == 2
    assert "square" in project.redun("log", "--job").stdout
    assert "Pulled 0 new record(s)" in redun_modal(project, "pull").stdout


def test_status_of_a_failed_launch_and_its_records(project):
    project.write("wf.py", WORKFLOW)
    call_id = launch(project, "redun", "run", "wf.py", "fails")
    status = redun_modal(project, "status", "--wait", call_id, check=False)
    assert status.returncode == 1
    assert f"{call_id}: failed" in status.stdout and "ScriptError" in status.stdout
    redun_modal(project, "pull")
    assert "[FAILED]" in project.redun("log").stdout


def test_a_second_launch_is_refused_while_the_first_writes_the_database(project, tmp_path):
    project.write("wf.py", WORKFLOW)
    release = tmp_path / "release"
    first = launch(project, "redun", "run", "wf.py", "wait_for", "--path", str(release))
    try:
        assert redun_modal(project, "status", first, check=False).returncode == 3
        refused = project.redun(
            "launch", "--executor", "default", "redun", "run", "wf.py", "main", check=False
        )
        assert refused.returncode == 1
        assert f"is in use by launch {first}" in refused.stdout
        assert "redun-modal status" in refused.stdout
        release.touch()
        assert "released" in redun_modal(project, "status", "--wait", first).stdout
    finally:
        stop_local_launch(project, first)
    # Released with the run: the next launch goes ahead.
    after = launch(project, "redun", "run", "wf.py", "main")
    assert redun_modal(project, "status", "--wait", after).returncode == 0


def test_launch_wait_runs_the_scheduler_against_the_volume_database(project):
    project.write("wf.py", WORKFLOW)
    for _ in range(2):
        output = project.redun(
            "launch", "--executor", "default", "--wait", "redun", "run", "wf.py", "main"
        ).stdout
        assert "b'14\\n'" in output
    redun_modal(project, "pull")
    jobs = project.redun("log", "--job").stdout
    assert "square" in jobs


def test_ctrl_c_on_a_waited_launch_saves_its_database_first(project, tmp_path):
    project.write(".redun/redun.ini", LOCAL_CONFIG + "scheduler_sync_interval = 3600\n")
    # The jobs of `main` are done (wait_for takes their result) when wait_for starts.
    project.write(
        "wf.py",
        WORKFLOW + "\n@task\ndef both(path: str) -> str:\n    return wait_for(path, main())\n",
    )
    release = tmp_path / "release"
    command = ("redun", "run", "wf.py", "both", "--path", str(release))
    client = project.start("launch", "--executor", "default", "--wait", *command)
    wait_for(Path(f"{release}.started").exists, timeout=60, process=client)
    client.send_signal(signal.SIGINT)
    output, _ = client.communicate(timeout=60)
    release.touch()  # For the stopped scheduler's worker, if it outlived its scheduler.
    assert client.returncode != 0, output
    # No periodic sync happened (an hour apart): the records come from the copy made on stop.
    redun_modal(project, "pull")
    assert "square" in project.redun("log", "--job").stdout
    after = launch(project, "redun", "run", "wf.py", "main")  # The lock was released.
    log = redun_modal(project, "status", "--wait", after).stdout
    assert log.splitlines()[1] == "14"


def test_subrun_tasks_are_dispatched_again_from_the_sub_scheduler(project):
    project.write(
        "wf.py",
        """\
        import os
        from redun import task
        from redun.scheduler import subrun

        @task
        def where() -> list:
            return [os.getpid(), os.getppid()]

        @task
        def main() -> list:
            return [where(), subrun(where(), executor="default", new_execution=True)]
        """,
    )
    output = project.redun("run", "wf.py", "main").stdout
    (outer_pid, outer_parent), (inner_pid, inner_parent) = eval(final_line(output))
    assert "Sub-scheduler" in output
    # Each ran in a worker process; the inner one's was started by the sub-scheduler's own
    # executor (itself in a worker), not by the top-level scheduler.
    assert inner_parent != outer_parent
    assert inner_pid not in (outer_pid, outer_parent)


def test_file_lock_admits_one_writer_and_names_it(tmp_path):
    path = tmp_path / "redun.db.lock"
    first, second = FileLock(path, "redun.db on volume v"), FileLock(path, "redun.db on volume v")
    first.acquire("lc-first")
    try:
        assert second.holder() is not None and second.holder().owner == "lc-first"
        with pytest.raises(DatabaseBusyError, match="in use by launch lc-first"):
            second.acquire("lc-second")
    finally:
        first.release()
    assert second.holder() is None
    second.acquire("lc-second")
    second.release()


def launch_spec(database) -> LaunchSpec:
    return LaunchSpec(config_files={}, database=database, sync_interval=60, workdir=None)


def test_database_spec_follows_the_projects_db_uri(tmp_path):
    config = ExecutorConfig(name="modal", local_dir=str(tmp_path))
    backend = create_backend(config)
    volume = database_spec(config, backend, "sqlite:///redun.db")
    assert volume is not None and volume.volume == "redun-modal-executor-scheduler"
    assert volume.backend == backend.ref and volume.mount == "/redun-scheduler"
    options = launch_options(CallOptions(timeout=60), config, backend, launch_spec(volume), {})
    assert options.volumes == (
        ("/redun-scheduler", VolumeMount("redun-modal-executor-scheduler")),
    )
    assert options.timeout == 86400  # The executor's timeout is its jobs'; not a launch's.
    given = launch_options(
        CallOptions(timeout=60), config, backend, launch_spec(volume), {"timeout": 60}
    )
    assert given.timeout == 60
    assert database_spec(config, backend, "postgresql://db.example.com/redun") is None
    with pytest.raises(LaunchError, match="REDUN_DB_PASSWORD"):
        database_spec(config, backend, "postgresql://me:hunter2@db.example.com/redun")
    with pytest.raises(LaunchError, match="cannot reach"):
        database_spec(config, backend, "postgresql://localhost/redun")
    local = ExecutorConfig(name="default", backend="local", local_dir=str(tmp_path))
    local_backend = create_backend(local)
    on_disk = database_spec(local, local_backend, "sqlite:///redun.db")
    assert on_disk is not None
    assert on_disk.mount == str(tmp_path / "volumes" / "redun-modal-executor-scheduler")
    # Calls on the local backend see the directory itself: nothing to mount.
    local_options = launch_options(CallOptions(), local, local_backend, launch_spec(on_disk), {})
    assert local_options.volumes == ()


def test_launch_options_add_the_scheduler_secrets():
    config = ExecutorConfig(name="modal", scheduler_secrets=("pg", "mine"))
    backend = create_backend(config)
    asked = CallOptions(secrets=("mine",))
    options = launch_options(asked, config, backend, launch_spec(None), {})
    assert options.secrets == ("mine", "pg")


def test_the_launched_config_points_at_the_staged_database(tmp_path):
    (tmp_path / "redun.ini").write_text(
        LOCAL_CONFIG + "[backend]\ndb_uri = sqlite:///redun.db\nMixedCase = kept\n"
    )
    _set_db_uri(tmp_path, "sqlite:////tmp/x/redun.db")
    text = (tmp_path / "redun.ini").read_text()
    assert "db_uri = sqlite:////tmp/x/redun.db" in text and "MixedCase = kept" in text
    assert "max_workers = 2" in text


# On the fake Modal control plane, through the real modal client.


def test_detached_launch_on_modal_outlives_the_launcher_which_cancels_nothing(
    project, fake_modal, tmp_path
):
    mount = tmp_path / "mounts" / "scheduler"
    project.write(
        ".redun/redun.ini",
        LOCAL_CONFIG
        + f"""
[executors.modal]
type = modal
scheduler_mount = {mount}
scheduler_sync_interval = 1
""",
    )
    fake_modal.register_function(APP, "run_job", TARGET)
    fake_modal.strict_objects = True  # As on Modal: the launch creates its Volume itself.
    project.write("wf.py", WORKFLOW)
    release = tmp_path / "release"
    # The container runs the scheduler with the project's [executors.default]: local workers
    # inside it. `redun` by path: the fake's workers need not have it on PATH.
    command = (REDUN, "run", "wf.py", "wait_for", "--path", str(release))
    began = time.monotonic()
    first = launch(project, *command, executor="modal")
    assert first.startswith("fc-")

    def lock_taken() -> bool:
        return any(d.name == f"{APP}-locks" and d.entries for d in fake_modal.dicts.values())

    fake_modal.wait_until(lock_taken, timeout=60)
    # `redun launch` has exited; its call runs on.
    assert fake_modal.running == 1
    running = redun_modal(project, "status", "--executor", "modal", first, check=False)
    assert running.returncode == 3
    refused = project.redun("launch", "--executor", "modal", *command, check=False)
    assert refused.returncode == 1 and f"in use by launch {first}" in refused.stdout

    release.touch()
    status = redun_modal(project, "status", "--executor", "modal", "--wait", first).stdout
    lived = time.monotonic() - began  # The launch ran within this time.
    assert "released" in status
    assert fake_modal.rpc_counts["FunctionCallCancel"] == 0
    assert fake_modal.inputs_cancelled == 0
    # The launch commits the Volume after each periodic sync, at most one a second (the
    # interval) while its command runs, and once when the command has ended: how many periodic
    # ones fit depends on how fast this machine runs the steps above, the bound does not.
    assert 1 <= fake_modal.rpc_counts["VolumeCommit"] <= 1 + int(lived)
    assert not lock_taken()
    pulled = redun_modal(project, "pull", "--executor", "modal").stdout
    assert re.search(r"Pulled [1-9]\d* new record\(s\)", pulled)
    assert "wf.py wait_for" in project.redun("log").stdout


@pytest.fixture(params=["sqlite", "postgres"])
def shared_db_uri(request, tmp_path) -> str:
    """A database a launched scheduler uses as is: a new Postgres database, and a sqlite file
    by absolute path standing in for one."""
    if request.param == "postgres":
        return request.getfixturevalue("postgres_db_uri")
    return f"sqlite:///{tmp_path / 'shared.db'}"


def test_a_configured_database_is_used_as_is(tmp_path, shared_db_uri):
    """A non-sqlite db_uri (Postgres, in practice) needs no volume: the launched scheduler
    uses the project's db_uri."""
    (tmp_path / "wf.py").write_text(WORKFLOW)
    spec = LaunchSpec(
        config_files={"redun.ini": LOCAL_CONFIG + f"[backend]\ndb_uri = {shared_db_uri}\n"},
        database=None,
        sync_interval=60,
        workdir=str(tmp_path),
    )
    assert run_launch(f"{REDUN} run wf.py main", spec).splitlines()[-1] == b"14"
    database = Project(tmp_path, db_uri=shared_db_uri)
    (execution,) = database.query(sa.select(Execution.args))  # The launched `redun run`'s.
    assert json.loads(execution.args)[1:] == ["run", "wf.py", "main"]


@ON_POSTGRES
def test_launches_on_a_postgres_db_uri_write_the_projects_database(project):
    """With a Postgres db_uri in redun.ini, a launched scheduler, waited for or detached,
    writes the project's own database: no volume, no lock, nothing to pull."""
    project.write("wf.py", WORKFLOW)
    waited = project.redun(
        "launch", "--executor", "default", "--wait", "redun", "run", "wf.py", "main"
    ).stdout
    assert "b'14\\n'" in waited
    detached = project.redun("launch", "--executor", "default", "redun", "run", "wf.py", "main")
    call_id = re.search(r"launched scheduler call (lc-\w+)", detached.stdout).group(1)
    assert "redun-modal pull" not in detached.stdout
    status = redun_modal(project, "status", "--wait", call_id).stdout
    assert status.splitlines()[:2] == [f"{call_id}: succeeded", "14"]
    log = redun_modal(project, "logs", call_id).stdout
    assert len(re.findall(r"Cached Job \w+: +(?:main|square|sum_all)", log)) == 6, log
    # Both runs are in the project's database, with their jobs, without a pull; so is the
    # waiting client's own execution, of the launch job.
    executions = project.redun("log").stdout
    assert len(re.findall(r":  run wf.py main \(", executions)) == 2, executions
    assert executions.count("redun.script_task('redun run wf.py main')") == 1, executions
    assert "square" in project.redun("log", "--job").stdout
    assert not (project.root / ".redun" / "modal-local" / "volumes").exists()


def test_modal_dict_lock_refuses_while_the_holder_runs_then_takes_over_once(fake_modal):
    fake_modal.register_function("locks-app", "sleep_then", "fake_modal.sample:sleep_then")
    holder = modal.Function.from_name("locks-app", "sleep_then").spawn(60).object_id
    entries = modal.Dict.from_name("app-locks", create_if_missing=True)

    def lock() -> DictLock:
        return DictLock("app-locks", None, "v/redun.db", "redun.db on volume v")

    first, contender = lock(), lock()
    first.acquire(holder)
    with pytest.raises(DatabaseBusyError, match=f"in use by launch {holder}"):
        contender.acquire("fc-contender")
    assert contender.holder() == Holder.from_record(entries.get("v/redun.db"))
    # Modal runs a call again after its container was lost: the same call takes its lock.
    lock().acquire(holder)

    modal.FunctionCall.from_id(holder).cancel()  # It ended without releasing its lock.
    fake_modal.wait_until(lambda: fake_modal.inputs_cancelled == 1)
    assert contender.holder() is None
    # Of those who see the dead holder, one takes over: here another got there first.
    entries.put(f"v/redun.db/taken-from/{holder}", "fc-quicker")
    with pytest.raises(DatabaseBusyError):
        contender.acquire("fc-contender")
    entries.pop(f"v/redun.db/taken-from/{holder}")
    contender.acquire("fc-contender")
    assert entries.get("v/redun.db")["owner"] == "fc-contender"
    first.release()  # No longer the holder: leaves the lock alone.
    assert entries.get("v/redun.db")["owner"] == "fc-contender"
    contender.release()
    assert entries.get("v/redun.db") is None
