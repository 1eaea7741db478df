"""Every example in examples/ runs on the local backend, with the repository's demo config."""

import ast
import shutil
from pathlib import Path

import pytest
from helpers import final_line, launch, ran, redun_modal

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).parents[1]


@pytest.fixture
def example_project(project):
    shutil.copy(ROOT / ".redun" / "redun.ini", project.root / ".redun" / "redun.ini")
    return project


def run_example(project, name: str, *args: str) -> str:
    shutil.copy(ROOT / "examples" / f"{name}.py", project.root / f"{name}.py")
    return final_line(project.redun("run", f"{name}.py", "main", *args).stdout)


@pytest.mark.parametrize("example", sorted(path.stem for path in (ROOT / "examples").glob("*.py")))
def test_every_example_names_its_namespace(example):
    tree = ast.parse((ROOT / "examples" / f"{example}.py").read_text())
    assigned = {
        target.id: node.value.value
        for node in tree.body
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant)
        for target in node.targets
        if isinstance(target, ast.Name)
    }
    assert assigned.get("redun_namespace") == f"examples.{example}"


def test_map_reduce(example_project):
    means = ast.literal_eval(run_example(example_project, "map_reduce", "--shards", "3"))
    assert means == {"g0": 499.5, "g1": 499.5, "g2": 499.5}


def test_gpu_task_runs_on_the_cpu_locally(example_project):
    result = ast.literal_eval(run_example(example_project, "gpu", "--size", "16"))
    assert result["trace"] == 16.0 and result["device"].startswith("cpu")


def test_script_task(example_project):
    output = ast.literal_eval(run_example(example_project, "script", "--name", "tests"))
    assert output.startswith(b"hello from a script job, tests\n")


def test_remote_scheduler_launch(example_project):
    shutil.copy(ROOT / "examples" / "launch.py", example_project.root / "launch.py")
    call_id = launch(
        example_project, "redun", "run", "launch.py", "main", "--samples", "4", executor="modal"
    )
    status = redun_modal(example_project, "status", "--wait", call_id).stdout
    assert ast.literal_eval(status.splitlines()[1]) == {"mean": 3.625, "max": 8.2}
    redun_modal(example_project, "pull")
    assert "launch.py main" in example_project.redun("log").stdout


def test_volume_tables_are_served_from_the_cache_on_the_second_run(example_project):
    shutil.copy(ROOT / "examples" / "volume_tables.py", example_project.root / "volume_tables.py")
    command = ("run", "volume_tables.py", "main", "--shards", "3")
    first = example_project.redun(*command).stdout
    means = ast.literal_eval(final_line(first))
    assert means == {"g0": 499.5, "g1": 499.5, "g2": 499.5}
    steps = [f"examples.volume_tables.{name}" for name in ("write_shard", "aggregate", "main")]
    assert [ran(first, step) for step in steps] == [3, 1, 1]
    tables = example_project.root / ".redun" / "modal-local" / "volumes" / "redun-examples"
    assert sorted(path.name for path in (tables / "tables").iterdir()) == [
        "shard-0.parquet",
        "shard-1.parquet",
        "shard-2.parquet",
        "summary.parquet",
    ]
    again = example_project.redun(*command).stdout
    assert ast.literal_eval(final_line(again)) == means
    assert [ran(again, step) for step in steps] == [0, 0, 0]
