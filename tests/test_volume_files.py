"""``modalvol://`` Files in one process: URLs, the Volume API on the fake Modal (the process
outside any scheduler uses it, in the profile's environment), the local backend's
directories, a call's mounted Volumes, and what a hash costs."""

from __future__ import annotations

import io
import os
import time
from types import SimpleNamespace

import modal
import pytest
from redun import Dir, File
from redun.scheduler import set_current_scheduler

from redun_modal_executor.backends import BackendRef
from redun_modal_executor.errors import VolumeFileError
from redun_modal_executor.files import stores
from redun_modal_executor.files.binding import volume_backend
from redun_modal_executor.files.call_volumes import VolumeAccess, in_call
from redun_modal_executor.files.paths import VolumePath, parse


@pytest.fixture(autouse=True)
def fresh_stores(monkeypatch):
    """No Volume handle or listing of an earlier test (and its fake server) is kept."""
    monkeypatch.setattr(stores, "_stores", {})


def test_urls_name_a_volume_and_a_path_inside_it():
    assert parse("modalvol://data/a/./b//c.txt") == VolumePath("data", "a/b/c.txt")
    assert parse("modalvol://data/a/../b") == VolumePath("data", "b")
    assert parse("modalvol://data") == VolumePath("data", "")
    with pytest.raises(VolumeFileError, match="leads outside the Volume 'data'"):
        File("modalvol://data/../other/x").exists()
    with pytest.raises(VolumeFileError, match="is not a Modal Volume name"):
        parse("modalvol://bad name/x")


def test_files_on_the_modal_api_read_write_list_and_copy(fake_modal, tmp_path):
    fake_modal.register_volume("data")
    table = File("modalvol://data/tables/one.csv")
    assert not table.exists()
    table.write("a,b\n1,2\n")
    assert table.read() == "a,b\n1,2\n"
    assert (fake_modal.volume_dir("data") / "tables" / "one.csv").read_text() == "a,b\n1,2\n"
    assert table.exists() and table.isfile() and table.size() == 8
    assert File("modalvol://data/tables").isdir()
    with File("modalvol://data/tables/one.csv").open("a") as more:
        more.write("3,4\n")
    assert table.read() == "a,b\n1,2\n3,4\n"

    local = File(str(tmp_path / "local.csv"))
    table.copy_to(local)
    assert local.read() == "a,b\n1,2\n3,4\n"
    local.write("from here\n")
    back = local.copy_to(File("modalvol://data/tables/two.csv"))
    assert back.read() == "from here\n"
    same_volume = back.copy_to(File("modalvol://data/copies/two.csv"))
    assert same_volume.read() == "from here\n" and fake_modal.rpc_counts["VolumeCopyFiles"] == 1
    assert sorted(file.basename() for file in Dir("modalvol://data/tables").files()) == [
        "one.csv",
        "two.csv",
    ]
    assert Dir("modalvol://data").filesystem.glob("modalvol://data/*/two.csv") == [
        "modalvol://data/copies/two.csv",
        "modalvol://data/tables/two.csv",
    ]
    back.remove()
    assert not File("modalvol://data/tables/two.csv").exists()
    with pytest.raises(FileNotFoundError, match="modalvol://data/nothing"):
        File("modalvol://data/nothing").read()


def test_hashing_many_files_costs_one_listing(fake_modal):
    fake_modal.register_volume("data")
    volume = modal.Volume.from_name("data")
    with volume.batch_upload() as batch:
        for index in range(50):
            batch.put_file(io.BytesIO(b"x" * index), f"/shards/{index}.bin")
    files = [File(f"modalvol://data/shards/{index}.bin") for index in range(50)]
    fake_modal.rpc_counts.clear()
    hashes = {file.hash for file in files}
    assert len(hashes) == 50
    # One lookup of the Volume (per process) and one listing of the directory.
    assert dict(fake_modal.rpc_counts) == {"VolumeGetOrCreate": 1, "VolumeListFiles": 1}
    fake_modal.rpc_counts.clear()
    assert Dir("modalvol://data/shards").hash
    assert dict(fake_modal.rpc_counts) == {"VolumeListFiles": 1}  # One recursive listing.


def test_a_changed_file_hashes_anew_once_its_listing_is_dropped(fake_modal):
    fake_modal.register_volume("data")
    file = File("modalvol://data/f.txt")
    file.write("one")
    before = File("modalvol://data/f.txt").hash
    path = fake_modal.volume_dir("data") / "f.txt"
    path.write_text("two")
    os.utime(path, (time.time() + 10, time.time() + 10))
    assert File("modalvol://data/f.txt").hash == before  # The listing of the burst is kept.
    assert file.is_valid()
    stores.forget_listings()  # As the executor does when a job ends.
    assert not file.is_valid()


def test_a_volume_that_does_not_exist_is_named(fake_modal):
    fake_modal.strict_objects = True
    with pytest.raises(VolumeFileError) as raised:
        File("modalvol://nowhere/x.txt").exists()
    assert "modalvol://nowhere/x.txt: the Modal Volume 'nowhere' does not exist" in str(
        raised.value
    )
    assert "modal volume create nowhere" in str(raised.value)


@pytest.fixture
def local_backend(tmp_path):
    """A scheduler whose one modal section is on the local backend, under tmp_path."""
    ref = BackendRef("local", "app", local_dir=str(tmp_path))
    executor = SimpleNamespace(name="default", volume_files_backend=lambda: ref)
    set_current_scheduler(SimpleNamespace(executors={"default": executor}))
    yield ref
    set_current_scheduler(None)


def test_in_a_local_scheduler_files_are_the_local_backend_s_volume_directories(
    local_backend, tmp_path
):
    File("modalvol://data/a/b.txt").write("hello")
    on_disk = tmp_path / "volumes" / "data" / "a" / "b.txt"
    assert on_disk.read_text() == "hello"
    status = on_disk.stat()
    entry = File("modalvol://data/a/b.txt")
    assert entry.size() == 5 and entry.hash == File("modalvol://data/a/b.txt").hash
    os.utime(on_disk, (status.st_atime, status.st_mtime + 5))
    assert not entry.is_valid()


def sections(**refs: BackendRef) -> list[SimpleNamespace]:
    return [
        SimpleNamespace(name=name, volume_files_backend=lambda ref=ref: ref)
        for name, ref in refs.items()
    ]


def test_a_section_on_modal_wins_and_two_environments_are_an_error(tmp_path):
    here = BackendRef("local", "app", local_dir=str(tmp_path))
    dev, prod = BackendRef("modal", "app", "dev"), BackendRef("modal", "app", "prod")
    assert volume_backend(sections(default=here)) == here
    assert volume_backend(sections(default=here, gpu=dev, more=dev)) == dev
    assert volume_backend([SimpleNamespace(name="other")]) is None  # not a modal executor
    with pytest.raises(VolumeFileError) as raised:
        volume_backend(sections(default=here, a=dev, b=prod))
    assert str(raised.value) == (
        "modalvol:// Files would name the Volumes of several backends ([executors.a]: the "
        "modal backend, environment dev; [executors.b]: the modal backend, environment prod). "
        "Set volume_files = false in all of these sections but one."
    )


def test_a_call_cannot_write_a_volume_it_mounts_read_only(tmp_path):
    ref = BackendRef("local", "app", local_dir=str(tmp_path))
    access = VolumeAccess(ref, ref, (("ref", "/ref", True), ("out", "/out", False)))
    with in_call("wf.copy_genome", access) as volumes:
        with pytest.raises(VolumeFileError) as raised:
            File("modalvol://ref/genome.fa").write("ACGT")
        File("modalvol://out/genome.fa").write("ACGT")
        assert volumes is not None and volumes.written == set()  # nothing mounted locally
    message = str(raised.value)
    assert message.startswith("Task wf.copy_genome: cannot write modalvol://ref/genome.fa")
    assert "mounted read-only at /ref" in message
    assert (tmp_path / "volumes" / "out" / "genome.fa").read_text() == "ACGT"


def test_the_filesystem_is_registered_with_redun():
    from redun.file import get_filesystem_class

    from redun_modal_executor.files.filesystem import ModalVolumeFileSystem

    assert get_filesystem_class(url="modalvol://v/x") is ModalVolumeFileSystem
    assert isinstance(File("modalvol://v/x").filesystem, ModalVolumeFileSystem)


def test_a_job_s_file_arguments_mount_their_volumes_where_the_backend_mounts():
    from redun.file import StagingFile

    from redun_modal_executor.backends.local import LocalBackend
    from redun_modal_executor.backends.modal import ModalBackend
    from redun_modal_executor.config import CallOptions, VolumeMount
    from redun_modal_executor.files.call_volumes import call_access

    args = (
        [File("modalvol://tables/a.parquet"), {"ref": Dir("modalvol://genomes/hg38")}],
        StagingFile("local.txt", "modalvol://staged/x.txt"),
        File("/tmp/local.txt"),
        File("modalvol://../bad"),  # names no Volume: its task fails on it, naming it
    )
    options = CallOptions(volumes=(("/g", VolumeMount("genomes", read_only=True)),))
    modal_backend = ModalBackend(BackendRef("modal", "app", "dev"))
    mounted, access = call_access(options, [args, {}], modal_backend, None, "/modalvol")
    assert mounted.volumes == (
        ("/g", VolumeMount("genomes", read_only=True)),
        ("/modalvol/staged", VolumeMount("staged")),
        ("/modalvol/tables", VolumeMount("tables")),
    )
    assert access.mounts == (
        ("genomes", "/g", True),
        ("staged", "/modalvol/staged", False),
        ("tables", "/modalvol/tables", False),
    )
    assert access.store == access.backend == modal_backend.ref
    # The local backend mounts nothing: the options stay, and Volumes are the scheduler's.
    local = LocalBackend(BackendRef("local", "app", local_dir="/tmp/x", max_workers=1))
    scheduler_volumes = BackendRef("modal", "app", "dev")
    same, local_access = call_access(options, [args, {}], local, scheduler_volumes, "/modalvol")
    assert same == options and local_access.store == scheduler_volumes
    assert local_access.mounts == (("genomes", "/g", True),)
