"""``modalvol://`` Files through ``redun run``, on the local backend and on the fake Modal:
written and read by tasks, fully cached on a rerun in a new process, and run again when a
File changed since."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from helpers import APP, MODAL_CONFIG, final_line, ran

pytestmark = pytest.mark.e2e

WORKFLOW = """\
from redun import File, task

@task
def produce(name: str, text: str) -> File:
    out = File(f"modalvol://data/out/{name}.txt")
    out.write(text)
    return out

@task
def consume(files: list) -> str:
    return "+".join(file.read() for file in files)

@task
def main() -> str:
    return consume([produce("a", "1"), produce("b", "2")])
"""


def touch_later(path, text: str) -> None:
    """Change a file as someone else would, later than its last write."""
    path.write_text(text)
    later = time.time() + 5
    os.utime(path, (later, later))


def test_local_backend_files_stay_cached_and_a_change_reruns_the_producer(project):
    project.write("wf.py", WORKFLOW)
    first = project.redun("run", "wf.py", "main").stdout
    assert final_line(first) == "'1+2'"
    assert (ran(first, "produce"), ran(first, "consume")) == (2, 1)
    volume = project.root / ".redun" / "modal-local" / "volumes" / "data"
    assert (volume / "out" / "a.txt").read_text() == "1"

    again = project.redun("run", "wf.py", "main").stdout
    assert final_line(again) == "'1+2'"
    assert ran(again, "produce") == ran(again, "consume") == ran(again, "main") == 0

    touch_later(volume / "out" / "a.txt", "changed")
    after = project.redun("run", "wf.py", "main").stdout
    assert final_line(after) == "'1+2'"
    assert (ran(after, "produce"), ran(after, "consume")) == (1, 1)


@pytest.fixture
def volume_project(modal_project, fake_modal, tmp_path):
    """The Modal backend on the fake, with Volumes mounted under tmp_path (the fake mounts
    only there), and the Volume `data`."""
    mounts = tmp_path / "mounts"
    modal_project.configure(MODAL_CONFIG + f"volume_files_mount = {mounts}\n")
    fake_modal.register_volume("data")
    fake_modal.strict_objects = True
    return modal_project


def test_modal_files_stay_cached_and_a_hash_costs_one_listing(volume_project, fake_modal):
    volume_project.write("wf.py", WORKFLOW)
    first = volume_project.redun("run", "wf.py", "main").stdout
    assert final_line(first) == "'1+2'"
    assert fake_modal.executions[f"{APP}/run_job"] == 4
    # produce wrote through the Volume API; consume mounted the Volume its Files name.
    assert fake_modal.rpc_counts["VolumePutFiles"] == 2
    (bind,) = fake_modal.binds
    assert bind.volumes == {str(volume_project.root / "mounts" / "data"): "data"}
    assert fake_modal.rpc_counts["VolumeReload"] == 1
    assert fake_modal.rpc_counts["VolumeCommit"] == 0  # consume wrote nothing

    fake_modal.rpc_counts.clear()
    again = volume_project.redun("run", "wf.py", "main").stdout
    assert final_line(again) == "'1+2'"
    assert fake_modal.executions[f"{APP}/run_job"] == 4  # Nothing ran.
    # Both Files checked with one lookup of the Volume and one listing of their directory.
    assert dict(fake_modal.rpc_counts) == {"VolumeGetOrCreate": 1, "VolumeListFiles": 1}

    touch_later(fake_modal.volume_dir("data") / "out" / "b.txt", "changed")
    after = volume_project.redun("run", "wf.py", "main").stdout
    assert final_line(after) == "'1+2'"
    assert (ran(after, "produce"), ran(after, "consume")) == (1, 1)


def test_a_task_that_writes_a_mounted_volume_commits_it(volume_project, fake_modal, tmp_path):
    volume_project.write(
        "wf.py",
        f"""\
        from redun import File, task

        @task(volumes={{"{tmp_path / "mnt"}": "data"}})
        def write(text: str) -> File:
            out = File("modalvol://data/written.txt")
            out.write(text)
            return out

        @task
        def read(file: File) -> str:
            return file.read()

        @task
        def main() -> str:
            return read(write("through the mount"))
        """,
    )
    output = volume_project.redun("run", "wf.py", "main").stdout
    assert final_line(output) == "'through the mount'"
    assert fake_modal.rpc_counts["VolumeCommit"] == 1
    assert (fake_modal.volume_dir("data") / "written.txt").read_text() == "through the mount"


def test_writing_a_volume_mounted_read_only_fails_the_task(volume_project, tmp_path):
    volume_project.write(
        "wf.py",
        f"""\
        from redun import File, task

        @task(volumes={{"{tmp_path / "ref"}": {{"volume": "data", "read_only": True}}}})
        def main() -> None:
            File("modalvol://data/x.txt").write("no")
        """,
    )
    output = volume_project.redun("run", "wf.py", "main", check=False).stdout
    assert "Task main: cannot write modalvol://data/x.txt" in output
    assert f"mounted read-only at {tmp_path / 'ref'}" in output


def test_the_volume_tables_example_runs_on_modal_and_is_cached(volume_project, fake_modal):
    example = Path(__file__).parents[1] / "examples" / "volume_tables.py"
    volume_project.write("volume_tables.py", example.read_text())
    mounts = volume_project.root / "mounts"
    volume_project.configure(
        MODAL_CONFIG
        + f"volume_files_mount = {mounts}\n\n[executors.modal]\ntype = modal\n"
        + f"volume_files_mount = {mounts}\n"
    )
    fake_modal.register_volume("redun-examples")
    command = ("run", "volume_tables.py", "main", "--shards", "3", "--rows", "30")
    first = volume_project.redun(*command).stdout
    assert final_line(first) == "{'g0': 14.5, 'g1': 14.5, 'g2': 14.5}"
    tables = fake_modal.volume_dir("redun-examples") / "tables"
    assert sorted(path.name for path in tables.iterdir()) == [
        "shard-0.parquet",
        "shard-1.parquet",
        "shard-2.parquet",
        "summary.parquet",  # written through aggregate's mount, and committed
    ]
    executions = fake_modal.executions[f"{APP}/run_job"]
    assert executions == 6  # main, 3 shards, aggregate, report
    again = volume_project.redun(*command).stdout
    assert final_line(again) == final_line(first)
    assert fake_modal.executions[f"{APP}/run_job"] == executions


def test_a_script_stages_volume_files_in_and_out(project):
    project.write(
        "wf.py",
        """\
        from redun import File, script, task

        @task
        def seed() -> File:
            source = File("modalvol://data/in.txt")
            source.write("staged in\\n")
            return source

        @task
        def shout(source: File) -> File:
            return script(
                "tr a-z A-Z < in.txt > out.txt",
                inputs=[source.stage("in.txt")],
                outputs=File("modalvol://data/out.txt").stage("out.txt"),
                tempdir=True,
            )

        @task
        def main() -> str:
            return shout(seed())
        """,
    )
    output = project.redun("run", "wf.py", "main").stdout
    assert "modalvol://data/out.txt" in final_line(output)
    volume = project.root / ".redun" / "modal-local" / "volumes" / "data"
    assert (volume / "out.txt").read_text() == "STAGED IN\n"
