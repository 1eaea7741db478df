"""Exact arguments given to the Modal client, with the client mocked (no server at all)."""

from __future__ import annotations

import sys
from unittest import mock

import cloudpickle
import modal
import pytest
import redun

from redun_modal_executor import cli
from redun_modal_executor.backends.modal import app as modal_app
from redun_modal_executor.backends.modal.calls import modal_options
from redun_modal_executor.config import (
    CallOptions,
    ExecutorConfig,
    VolumeMount,
    resolve_call_options,
)

PYTHON = f"{sys.version_info.major}.{sys.version_info.minor}"


def test_no_options_means_the_base_function():
    assert modal_options(CallOptions(), None) == {}


def test_task_options_map_to_with_options_arguments():
    config = ExecutorConfig.from_section("modal", {"environment": "dev", "retries": "2"})
    options = resolve_call_options(
        "wf.train",
        {
            "gpu": "a10g",
            "cpu": 4,
            "memory": 16384,
            "timeout": 3599.5,
            "region": "us-east",
            "cloud": "aws",
            "max_containers": 10,
            "buffer_containers": 1,
            "scaledown_window": 120,
            "secrets": ["hf-token"],
            "volumes": {"/data": "my-volume"},
            "env": {"MODE": "fast", "LOG_LEVEL": "debug"},
        },
        config,
    )
    with (
        mock.patch.object(modal.Secret, "from_name", side_effect=lambda n, **k: ("secret", n, k)),
        mock.patch.object(modal.Volume, "from_name", side_effect=lambda n, **k: ("volume", n, k)),
    ):
        kwargs = modal_options(options, config.environment)
    assert kwargs == {
        "gpu": "A10G",
        "cpu": 4.0,
        "memory": 16384,
        "timeout": 3600,  # Modal takes whole seconds: rounded up, never cut short.
        "retries": 2,
        "region": "us-east",
        "cloud": "aws",
        "max_containers": 10,
        "buffer_containers": 1,
        "scaledown_window": 120,
        "secrets": [("secret", "hf-token", {"environment_name": "dev"})],
        "volumes": {"/data": ("volume", "my-volume", {"environment_name": "dev"})},
        "env": {"LOG_LEVEL": "debug", "MODE": "fast"},
    }


def test_with_options_takes_every_argument_modal_options_gives():
    # Each name checked against the installed client's signature, not against a guess.
    import inspect

    accepted = inspect.signature(modal.Function.with_options).parameters
    options = CallOptions(
        timeout=5,
        gpu="T4",
        cpu=1,
        memory=512,
        retries=1,
        region="us-east",
        cloud="aws",
        max_containers=3,
        buffer_containers=1,
        scaledown_window=30,
        secrets=("s",),
        volumes=(("/d", VolumeMount("v")),),
        env=(("A", "1"),),
    )
    with (
        mock.patch.object(modal.Secret, "from_name"),
        mock.patch.object(modal.Volume, "from_name"),
    ):
        given = modal_options(options, None)
    assert set(given) == set(options.set_options()) - {"image"}
    assert set(given) <= set(accepted)


def test_env_goes_to_with_options_only_when_set():
    assert "env" not in modal_options(CallOptions(timeout=5), None)
    assert modal_options(CallOptions(env=(("A", "1"), ("B", ""))), None) == {
        "env": {"A": "1", "B": ""}
    }


def test_image_spec_pins_python_redun_and_cloudpickle():
    config = ExecutorConfig.from_section(
        "modal",
        {
            "pip": "pandas==2.2",
            "apt": "samtools",
            "image.gpu.registry_image": "nvidia/cuda:12.4.1-runtime-ubuntu22.04",
            "image.gpu.pip": "torch",
        },
    )
    with mock.patch.object(modal, "Image") as image:
        for spec in config.images.values():
            modal_app.build_image(spec)
    pins = [f"redun=={redun.__version__}", f"cloudpickle=={cloudpickle.__version__}"]
    debian = image.debian_slim
    debian.assert_called_once_with(python_version=PYTHON)
    debian.return_value.apt_install.assert_called_once_with("samtools")
    debian.return_value.apt_install.return_value.pip_install.assert_called_once_with(
        *pins, "pandas==2.2"
    )
    debian.return_value.apt_install.return_value.pip_install.return_value.add_local_python_source.assert_called_once_with(  # noqa: E501
        "redun_modal_executor"
    )
    registry = image.from_registry
    registry.assert_called_once_with("nvidia/cuda:12.4.1-runtime-ubuntu22.04", add_python=PYTHON)
    registry.return_value.pip_install.assert_called_once_with(*pins, "torch")


@pytest.mark.parametrize("snapshot, setting", [(True, {}), (False, {"memory_snapshot": "no"})])
def test_app_registers_the_generic_function_once_per_image(snapshot, setting):
    config = ExecutorConfig.from_section(
        "modal", {"app_name": "my-redun", "image.gpu.pip": "torch", **setting}
    )
    with (
        mock.patch.object(modal, "App") as app,
        mock.patch.object(modal_app, "build_image", side_effect=lambda spec: spec.name),
    ):
        modal_app.build_app(config)
    app.assert_called_once_with("my-redun")
    assert app.return_value.function.call_args_list == [
        mock.call(name=name, image=image, serialized=True, enable_memory_snapshot=snapshot)
        for name, image in (("run_job", "default"), ("run_job_gpu", "gpu"))
    ]
    decorated = [call.args[0] for call in app.return_value.function.return_value.call_args_list]
    assert decorated == [modal_app.run_job, modal_app.run_job]


def test_the_container_imports_the_worker_when_it_loads_the_function():
    # Modal pickles run_job by reference: loading it imports backends.modal.app, before the
    # snapshot. The worker must be imported there, at module level, not in run_job.
    import pickletools
    import subprocess

    from modal._serialization import serialize

    opcodes = [(op.name, arg) for op, arg, _ in pickletools.genops(serialize(modal_app.run_job))]
    assert ("SHORT_BINUNICODE", "redun_modal_executor.backends.modal.app") in opcodes
    assert ("SHORT_BINUNICODE", "run_job") in opcodes
    loaded = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; import redun_modal_executor.backends.modal.app; "
            "print('redun_modal_executor.worker.run' in sys.modules, 'redun' in sys.modules)",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert loaded.stdout.split() == ["True", "True"]


def test_deploy_command_deploys_each_app_once(tmp_path, monkeypatch, capsys):
    (tmp_path / ".redun").mkdir()
    (tmp_path / ".redun" / "redun.ini").write_text(
        "[executors.default]\ntype = modal\nenvironment = dev\n"
        "[executors.gpu]\ntype = modal\nenvironment = dev\ngpu = T4\n"
        "[executors.here]\ntype = modal\nbackend = local\n"
        "[executors.other]\ntype = local\n"
    )
    monkeypatch.chdir(tmp_path)
    with (
        mock.patch.object(modal_app, "connect") as connect,
        mock.patch.object(modal_app, "deploy") as deploy,
    ):
        assert cli.main(["deploy"]) == 0
    connect.assert_called_once_with()
    (call,) = deploy.call_args_list
    assert (call.args[0].app_name, call.args[0].environment) == ("redun-modal-executor", "dev")
    assert "Deploying Modal app 'redun-modal-executor' for [executors.default]: run_job" in (
        capsys.readouterr().out
    )


@pytest.mark.parametrize(
    "config, error",
    [
        ("[executors.x]\ntype = local\n", "No executor to deploy"),
        (
            "[executors.m]\ntype = modal\ngpu = V100\n",
            "redun-modal: [executors.m]: gpu has unknown GPU type 'V100'",
        ),
    ],
    ids=["nothing-configured", "bad-config"],
)
def test_deploy_command_explains_what_it_cannot_deploy(
    tmp_path, monkeypatch, capsys, config, error
):
    (tmp_path / ".redun").mkdir()
    (tmp_path / ".redun" / "redun.ini").write_text(config)
    monkeypatch.chdir(tmp_path)
    assert cli.main(["deploy"]) == 2
    assert error in capsys.readouterr().err


@pytest.mark.parametrize("image, name", [("default", "run_job"), ("gpu", "run_job_gpu")])
def test_function_names(image, name):
    assert modal_app.function_name(image) == name


@pytest.mark.parametrize(
    "second, differs", [("pip = torch", "images"), ("memory_snapshot = false", "memory_snapshot")]
)
def test_deploy_command_refuses_two_sections_of_one_app_that_differ(
    tmp_path, monkeypatch, capsys, second, differs
):
    (tmp_path / ".redun").mkdir()
    (tmp_path / ".redun" / "redun.ini").write_text(
        f"[executors.a]\ntype = modal\n[executors.b]\ntype = modal\n{second}\n"
    )
    monkeypatch.chdir(tmp_path)
    with mock.patch.object(modal_app, "deploy") as deploy:
        assert cli.main(["deploy"]) == 2
    deploy.assert_not_called()
    assert (
        "[executors.a] and [executors.b] deploy the same app 'redun-modal-executor' with "
        f"different {differs}"
    ) in capsys.readouterr().err


def test_deploy_deploys_then_records_what_the_images_were_built_with():
    config = ExecutorConfig.from_section("modal", {"app_name": "my-redun", "environment": "dev"})
    with (
        mock.patch.object(modal_app, "build_app") as build_app,
        mock.patch.object(modal, "Dict") as dict_class,
        mock.patch.object(modal, "enable_output"),
    ):
        modal_app.deploy(config)
    build_app.return_value.deploy.assert_called_once_with(name="my-redun", environment_name="dev")
    dict_class.from_name.assert_called_once_with(
        "my-redun-code", environment_name="dev", create_if_missing=True
    )
    key, manifest = dict_class.from_name.return_value.put.call_args.args
    assert key == "deployment"
    assert manifest["python"] == PYTHON and manifest["redun"] == redun.__version__
    assert manifest["cloudpickle"] == cloudpickle.__version__
    assert manifest["payload_format"] == "1" and manifest["functions"] == ["run_job"]
    assert manifest["memory_snapshot"] is True


@pytest.mark.parametrize("db_uri, reattaches", [("sqlite:///:memory:", False), ("file", True)])
def test_reattach_table_only_in_a_database_other_processes_can_open(tmp_path, db_uri, reattaches):
    # In-memory sqlite gives every thread its own empty database: no table there.
    from redun import Scheduler
    from redun.config import Config

    from redun_modal_executor.backends import create_backend

    uri = f"sqlite:///{tmp_path / 'redun.db'}" if db_uri == "file" else db_uri
    scheduler = Scheduler(
        config=Config({"backend": {"db_uri": uri}, "executors.modal": {"type": "modal"}})
    )
    scheduler.load()
    executor = scheduler.executors["modal"]
    backend = create_backend(executor.config)
    assert (executor._open_inflight_calls(backend) is not None) == reattaches


def test_polls_fill_the_default_client_then_one_more_connection_each(monkeypatch):
    import asyncio

    from redun_modal_executor.backends.modal import pollers as transport

    opened: list[object] = []

    async def open_client() -> object:
        opened.append(object())
        return opened[-1]

    async def scenario() -> list:
        pollers = transport.Pollers()
        per = transport.POLLS_PER_CONNECTION
        clients = await asyncio.gather(*(pollers.acquire() for _ in range(2 * per + 1)))
        assert clients.count(None) == per  # The default client first: small runs open none.
        assert clients.count(opened[0]) == per and clients.count(opened[1]) == 1
        for _ in range(per):
            pollers.release(opened[0])
        assert await pollers.acquire() is opened[1]  # The one being filled goes first.
        assert {await pollers.acquire() for _ in range(per)} == set(opened)
        return opened  # Room was found each time: no third connection.

    monkeypatch.setattr(transport, "_open_client", open_client)
    assert len(asyncio.run(scenario())) == 2


def test_without_a_token_every_poll_shares_the_default_client(monkeypatch):
    import asyncio

    from redun_modal_executor.backends.modal import pollers as transport

    async def no_client() -> None:
        return None

    async def scenario() -> list:
        pollers = transport.Pollers()
        return [await pollers.acquire() for _ in range(3 * transport.POLLS_PER_CONNECTION)]

    monkeypatch.setattr(transport, "_open_client", no_client)
    assert set(asyncio.run(scenario())) == {None}


@pytest.mark.parametrize(
    "release, borrowed", [(modal.__version__, True), ("1.99.0", False), ("2.0.0", False)]
)
def test_modals_private_parts_are_borrowed_only_on_tested_releases(monkeypatch, release, borrowed):
    from redun_modal_executor.backends.modal import client

    monkeypatch.setattr(modal, "__version__", release)
    assert (client._borrowed_synchronizer() is not None) == borrowed


def test_without_modals_private_parts_the_public_api_does(monkeypatch):
    """Should a modal release drop what the backend borrows, it still runs (slower)."""
    import modal._utils.async_utils

    from redun_modal_executor.backends.modal import client

    call = modal.FunctionCall.from_id("fc-any")
    monkeypatch.setattr(modal._utils.async_utils, "synchronizer", object())
    access = client.ClientAccess(client._borrowed_synchronizer())
    assert not access.borrows
    loop = access.loop()
    assert loop.is_running() and access.loop() is loop
    assert access.get(call).__qualname__ == call.get.aio.__qualname__
    loop.call_soon_threadsafe(loop.stop)
