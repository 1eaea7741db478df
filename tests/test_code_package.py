"""Code shipping, the client's side: what goes in the package."""

from __future__ import annotations

from pathlib import Path

import pytest

from redun_modal_executor import code_package
from redun_modal_executor.code_package import CodePackageError, build_code_package


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
