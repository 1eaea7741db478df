"""The ``volumes`` option's mounts: Volumes (read-only or not) and cloud buckets, as written
in a task and in redun.ini, what Modal is given for them, and the local backend's refusal."""

from __future__ import annotations

import dataclasses
from unittest import mock

import modal
import pytest
from helpers import APP, final_line, job_tags
from modal.cloud_bucket_mount import _CloudBucketMount

from redun_modal_executor import BucketMount, VolumeMount
from redun_modal_executor.backends.modal.calls import modal_options
from redun_modal_executor.config import ExecutorConfig, TaskOptionError, resolve_call_options

CONFIG = ExecutorConfig.from_section("modal", {})


def volumes(value):
    return resolve_call_options("wf.t", {"volumes": value}, CONFIG).volumes


def test_ini_mounts_volumes_and_buckets():
    config = ExecutorConfig.from_section(
        "modal",
        {
            "volumes": "/data=reads, /ref=genomes?read_only=true, "
            "/raw=s3://my-bucket/raw?secret=aws-creds&read_only=yes, /gcs=gs://open-data, "
            "/r2=r2://acct123/lake/2024/"
        },
    )
    assert config.task_defaults["volumes"] == (
        ("/data", VolumeMount("reads")),
        ("/gcs", BucketMount("open-data", endpoint_url="https://storage.googleapis.com")),
        (
            "/r2",
            BucketMount(
                "lake",
                key_prefix="2024/",
                endpoint_url="https://acct123.r2.cloudflarestorage.com",
            ),
        ),
        ("/raw", BucketMount("my-bucket", key_prefix="raw/", secret="aws-creds", read_only=True)),
        ("/ref", VolumeMount("genomes", read_only=True)),
    )


def test_task_mounts_take_names_dicts_and_mount_classes():
    assert volumes(
        {
            "/a": "plain",
            "/b": {"volume": "ref", "read_only": True},
            "/c": {"bucket": "b", "key_prefix": "x/", "secret": "creds"},
            "/d": BucketMount("d", read_only=True),
        }
    ) == (
        ("/a", VolumeMount("plain")),
        ("/b", VolumeMount("ref", read_only=True)),
        ("/c", BucketMount("b", key_prefix="x/", secret="creds")),
        ("/d", BucketMount("d", read_only=True)),
    )


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"/c": {"bucket": "b", "key_prefix": "x"}}, "key_prefix 'x' for '/c': Modal prefixes"),
        (
            {"/c": {"bucket": "b", "region": "eu"}},
            "takes a Volume (read_only, volume) or a bucket",
        ),
        ({"/c": "ftp://host/x"}, "a bucket URL starts with s3://, gs:// or r2://"),
        ({"/c": "bad name"}, "needs a Volume name for '/c'"),
        ({"/c": {"volume": "v", "read_only": "maybe"}}, "needs read_only true or false for '/c'"),
        ({"/c": {"bucket": "b", "secret": 7}}, "needs secret as a string for '/c'; got 7"),
        ({"/c": 3}, "needs a Volume name, a bucket or a dict for '/c'"),
    ],
)
def test_bad_mounts_are_rejected_naming_the_path(value, message):
    with pytest.raises(TaskOptionError, match="Task wf.t: task option volumes") as raised:
        volumes(value)
    assert message in str(raised.value)


def test_modal_gets_read_only_volumes_and_cloud_bucket_mounts():
    options = resolve_call_options(
        "wf.t",
        {
            "volumes": {
                "/ref": {"volume": "genomes", "read_only": True},
                "/raw": "s3://my-bucket/raw/?secret=aws-creds&read_only=true",
            }
        },
        CONFIG,
    )
    with (
        mock.patch.object(modal.Secret, "from_name", side_effect=lambda n, **k: ("secret", n, k)),
        mock.patch.object(modal, "CloudBucketMount", side_effect=lambda **k: ("bucket", k)),
    ):
        given = modal_options(options, "dev")["volumes"]
    assert given["/raw"] == (
        "bucket",
        {
            "bucket_name": "my-bucket",
            "bucket_endpoint_url": None,
            "key_prefix": "raw/",
            "secret": ("secret", "aws-creds", {"environment_name": "dev"}),
            "read_only": True,
        },
    )
    # Each name checked against the installed client's CloudBucketMount, not a guess.
    accepted = {field.name for field in dataclasses.fields(_CloudBucketMount)}
    assert set(given["/raw"][1]) <= accepted
    assert isinstance(given["/ref"], modal.Volume)  # read-only: see the e2e test below


@pytest.mark.e2e
def test_a_bucket_and_a_read_only_volume_reach_modal(modal_project, fake_modal):
    fake_modal.register_secret("aws-creds", {"AWS_ACCESS_KEY_ID": "id"})
    modal_project.write(
        "wf.py",
        """\
        from redun import task

        @task(volumes={"/raw": "s3://my-bucket/raw/?secret=aws-creds&read_only=true",
                       "/ref": {"volume": "my-volume", "read_only": True}})
        def main() -> str:
            return "mounted"
        """,
    )
    assert final_line(modal_project.redun("run", "wf.py", "main").stdout) == "'mounted'"
    (bind,) = fake_modal.binds
    assert bind.buckets == {
        "/raw": {
            "bucket": "my-bucket",
            "endpoint_url": "",
            "key_prefix": "raw/",
            "read_only": True,
            "secret": "aws-creds",
        }
    }
    assert bind.volumes == {"/ref": "my-volume"} and bind.read_only == ("/ref",)
    assert fake_modal.executions[f"{APP}/run_job"] == 1
    assert job_tags(modal_project, "main")["modal_volumes"] == {
        "/raw": {
            "bucket": "my-bucket",
            "key_prefix": "raw/",
            "secret": "aws-creds",
            "read_only": True,
        },
        "/ref": {"volume": "my-volume", "read_only": True},
    }


@pytest.mark.e2e
def test_the_local_backend_refuses_a_bucket_mount(project):
    project.write(
        "wf.py",
        """\
        from redun import task

        @task(volumes={"/raw": "s3://my-bucket/raw/"})
        def main() -> str:
            return "ran"
        """,
    )
    output = project.redun("run", "wf.py", "main", check=False).stdout
    assert "Task main: mounts the bucket 'my-bucket' at /raw, and the local backend" in output
    assert "File('s3://...')" in output
