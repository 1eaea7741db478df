"""Code shipping, the client's side: what goes in the package."""

from __future__ import annotations

import configparser
import os
from pathlib import Path

import pytest
from redun.executors.code_packaging import find_code_files, parse_code_package_config

from redun_modal_executor import code_package
from redun_modal_executor.code_package import CodePackageError, build_code_package
from redun_modal_executor.config import ExecutorConfig


def write(root: Path, relative: str, text: str) -> None:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "project"
    write(root, "flows/shipped_flow.py", "from shipped_helpers import VALUE\n")
    write(root, "shipped_helpers.py", "VALUE = 1\n")
    write(root, "notes.txt", "not code\n")
    write(root, "venv/lib/thing.py", "x = 1\n")
    write(root, "pkg/site-packages/dep.py", "x = 1\n")
    write(root, "pkg/__pycache__/shipped_helpers.cpython-311.py", "x = 1\n")
    write(root, ".hidden/secret.py", "x = 1\n")
    return root


def names_in(package) -> list[str]:
    import io
    import zipfile

    return sorted(zipfile.ZipFile(io.BytesIO(package.data)).namelist())


def test_package_holds_workflow_python_files_only(project):
    package = build_code_package(project, search_path=[str(project / "flows"), "/usr/lib"])
    assert names_in(package) == ["flows/shipped_flow.py", "shipped_helpers.py"]
    assert package.files == 2
    assert package.import_paths == ("flows",)


def test_excludes_and_includes_are_honoured(project):
    package = build_code_package(
        project, includes=["**/*.py", "*.txt"], excludes=["flows/*"], search_path=[str(project)]
    )
    assert names_in(package) == ["notes.txt", "shipped_helpers.py"]
    assert package.import_paths == ("",)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A project without always-excluded directories, in a directory whose name globs."""
    root = tmp_path / "my [project]"
    for relative in (
        "flows/flow.py",
        "flows/sub/deep.py",
        "flows/sub/table.csv",
        "helpers.py",
        "tests/test_flows.py",
        "tests/sub/test_more.py",
        "data files/reads.csv",
        "notes.txt",
        ".hidden/secret.py",
    ):
        write(root, relative, f"# {relative}\n")
    return root


def redun_picks(root: Path, includes, excludes, monkeypatch) -> list[str]:
    """The files redun's ``find_code_files`` selects, called as ``redun launch --code-package``
    calls it in ``root`` (basedir ``.``)."""
    monkeypatch.chdir(root)
    found = find_code_files(includes=list(includes), excludes=list(excludes))
    return sorted(os.path.relpath(path) for path in found if os.path.isfile(path))


@pytest.mark.parametrize(
    "includes, excludes, expected",
    [
        # As in redun, an exclude is a glob: `flows/*` matches flows' own files only.
        (
            ["**/*.py"],
            ["flows/*"],
            ["flows/sub/deep.py", "helpers.py", "tests/sub/test_more.py", "tests/test_flows.py"],
        ),
        (
            ["**/*.py"],
            ["flows/**"],
            ["helpers.py", "tests/sub/test_more.py", "tests/test_flows.py"],
        ),
        (["**/*.py"], ["**/test_*.py"], ["flows/flow.py", "flows/sub/deep.py", "helpers.py"]),
        (
            ["**/*.py"],
            ["tests/*"],
            ["flows/flow.py", "flows/sub/deep.py", "helpers.py", "tests/sub/test_more.py"],
        ),
        (["flows/**/*.py"], [], ["flows/flow.py", "flows/sub/deep.py"]),
        (
            ["**/*.csv", "*.txt"],
            ["*.csv"],
            ["data files/reads.csv", "flows/sub/table.csv", "notes.txt"],
        ),
        (
            ["**"],
            ["**/*.py"],
            ["data files/reads.csv", "flows/sub/table.csv", "notes.txt"],
        ),
        ([".hidden/*.py", "helpers.py"], [], [".hidden/secret.py", "helpers.py"]),
        ([], [], []),
    ],
)
def test_selection_is_redun_find_code_files(tree, includes, excludes, expected, monkeypatch):
    package = build_code_package(tree, includes=includes, excludes=excludes)
    assert names_in(package) == expected
    assert redun_picks(tree, includes, excludes, monkeypatch) == expected


def test_quoted_patterns_from_redun_ini_pick_what_redun_picks(tree, monkeypatch):
    section = {"code_includes": '"data files/*.csv" **/*.py', "code_excludes": "'tests/**'"}
    config = ExecutorConfig.from_section("modal", section)
    package = build_code_package(tree, config.code_includes, config.code_excludes)
    ini = configparser.ConfigParser()
    ini.read_dict({"executors.modal": section})
    redun_reads = parse_code_package_config(ini["executors.modal"])
    assert names_in(package) == [
        "data files/reads.csv",
        "flows/flow.py",
        "flows/sub/deep.py",
        "helpers.py",
    ]
    assert redun_picks(tree, redun_reads["includes"], redun_reads["excludes"], monkeypatch) == (
        names_in(package)
    )


def test_patterns_reach_nothing_outside_the_project(tree):
    write(tree.parent, "outside.py", "x = 1\n")
    package = build_code_package(
        tree, includes=["../*.py", str(tree.parent / "*.py"), "flows/../helpers.py"]
    )
    assert names_in(package) == ["helpers.py"]


def test_always_excluded_directories_stay_out_whatever_the_patterns(project):
    package = build_code_package(project, includes=["**/*.py", "venv/**", "pkg/**/*.py"])
    assert names_in(package) == ["flows/shipped_flow.py", "shipped_helpers.py"]


def test_digest_depends_on_content_only(project, tmp_path):
    first = build_code_package(project)
    assert build_code_package(project).digest == first.digest
    (project / "shipped_helpers.py").touch()  # A new mtime changes nothing.
    assert build_code_package(project).digest == first.digest
    write(project, "shipped_helpers.py", "VALUE = 2\n")
    assert build_code_package(project).digest != first.digest


def test_package_over_the_limit_is_refused(project, monkeypatch):
    monkeypatch.setattr(code_package, "MAX_PACKAGE_BYTES", 10)
    with pytest.raises(CodePackageError, match="narrow code_includes / code_excludes"):
        build_code_package(project)
