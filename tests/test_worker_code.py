"""Code shipping, the worker's side: each version fetched once, switched cleanly."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

from redun_modal_executor.backends import BackendRef
from redun_modal_executor.code_package import CodePackage, build_code_package
from redun_modal_executor.errors import CodePackageError
from redun_modal_executor.payload import CodeReference
from redun_modal_executor.worker.code import CodeVersions

STORE = BackendRef("modal", "app")


def write(root: Path, relative: str, text: str) -> None:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def reference(package: CodePackage) -> CodeReference:
    return CodeReference(package.digest, package.import_paths, STORE)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "project"
    write(root, "flows/shipped_flow.py", "from shipped_helpers import VALUE\n")
    write(root, "shipped_helpers.py", "VALUE = 1\n")
    return root


@pytest.fixture
def versions(tmp_path):
    versions = CodeVersions(tmp_path / "unpacked")
    yield versions
    versions.deactivate()


def test_worker_fetches_each_version_once_and_imports_the_new_code(project, versions):
    fetched: list[str] = []
    store: dict[str, bytes] = {}

    def fetch(digest: str) -> bytes:
        fetched.append(digest)
        return store[digest]

    first = build_code_package(project, search_path=[str(project), str(project / "flows")])
    store[first.digest] = first.data
    versions.activate(reference(first), fetch)
    versions.activate(reference(first), fetch)
    assert importlib.import_module("shipped_flow").VALUE == 1
    assert fetched == [first.digest]
    assert versions.root == versions.unpack_root / first.digest

    write(project, "shipped_helpers.py", "VALUE = 2\n")
    second = build_code_package(project, search_path=[str(project), str(project / "flows")])
    store[second.digest] = second.data
    versions.activate(reference(second), fetch)
    assert importlib.import_module("shipped_flow").VALUE == 2
    assert fetched == [first.digest, second.digest]
    assert not any(str(first.digest) in entry for entry in sys.path)

    versions.deactivate()  # A call without a package: the image's code again.
    assert versions.root is None and "shipped_flow" not in sys.modules


def test_corrupted_package_is_refused(project, versions):
    package = build_code_package(project)
    with pytest.raises(CodePackageError, match="arrived corrupted"):
        versions.activate(reference(package), lambda digest: package.data + b"tampered")
