"""examples/demo.py behaves as its docstring says (the proof of concept's demo)."""

import ast
import shutil
from pathlib import Path

import pytest
from helpers import ran

pytestmark = pytest.mark.e2e

DEMO = Path(__file__).parents[1] / "examples" / "demo.py"


def result(output: str) -> dict:
    return ast.literal_eval(output[output.rindex("{") :])


def test_demo_runs_caches_and_reruns_only_the_changed_call(project):
    shutil.copy(DEMO, project.root / "demo.py")

    first = project.redun("run", "demo.py", "main").stdout
    assert "namespace" not in first  # redun's "Tasks will require namespace soon" warning.
    values = result(first)
    assert values["add"].endswith(" :: 2.0 + 3.0 = 5.0")
    assert values["mul"].endswith(" :: 2.0 * 3.0 = 6.0")
    assert values["sum of squares"] == sum(i * i for i in range(32))
    assert ran(first, "examples.demo.square") == 32

    again = project.redun("run", "demo.py", "main").stdout
    assert result(again) == values
    assert (
        ran(again, "examples.demo.add")
        == ran(again, "examples.demo.mul")
        == ran(again, "examples.demo.square")
        == 0
    )

    changed = project.redun("run", "demo.py", "main", "--factor", "3.0").stdout
    new_values = result(changed)
    assert new_values["add"] == values["add"]  # same timestamp: served from the cache
    assert new_values["mul"].endswith(" :: 3.0 * 3.0 = 9.0")
    assert (
        ran(changed, "examples.demo.mul") == 1
        and ran(changed, "examples.demo.add") == 0
        and ran(changed, "examples.demo.square") == 0
    )


def test_demo_is_plain_redun():
    tree = ast.parse(DEMO.read_text())
    imported = {
        alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom | ast.Import)
        for alias in node.names
    } | {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert imported == {"datetime", "redun", "task"}
    calls = [
        n.func.attr
        for n in ast.walk(tree)
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
    ]
    assert "t" not in calls
