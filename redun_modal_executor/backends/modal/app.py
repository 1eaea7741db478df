"""What is deployed to Modal: one app holding the generic worker function, once per image.

``run_job`` wraps ``worker.run_call`` (bytes in, bytes out). Each configured image registers it
under its own name (``run_job`` for the default image, ``run_job_<image>`` for the others), so
"more images" means "more names for the same function", and a task picks one with its
``image`` option. Resources (GPU, CPU, memory, timeout, ...) are not fixed here: the client
asks for them per task with ``Function.with_options``.

**Memory snapshots.** With ``memory_snapshot`` (the default) the function is deployed with
``enable_memory_snapshot=True``. A container loads a serialized function by unpickling it,
and ``run_job`` pickles by reference (this module and its name), so unpickling imports this
module and its package. The modal client does that before it takes the snapshot
(``modal/_container_entrypoint.py``: ``run_function`` calls ``hydrate_function``, then
``function_execution_context``, whose ``lifecycle_context`` calls ``maybe_snapshot``, in
``modal/_runtime/user_code_imports.py``), so every module-level import here (redun,
cloudpickle, the worker) is in the snapshot, and a container restored from it does not import
them again. No code of ours runs in between: ``@enter(snap=True)`` hooks are for classes only.
So these imports must not start threads, open connections or read the environment (the
variables of Secrets and ``env`` are set again after a restore, ``memory_restore`` in
``modal/_runtime/task_lifecycle_manager.py``).
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Iterator
from typing import Any

import cloudpickle
import redun

from redun_modal_executor.config import DEFAULT_IMAGE, ExecutorConfig, ImageSpec

# Imported here, not in run_job: module-level imports are in the memory snapshot (see above).
from redun_modal_executor.worker import run_call

FUNCTION_NAME = "run_job"
# How long `redun-modal` commands wait for Modal to answer before they say it is unreachable.
COMMAND_REACH_SECONDS = 8.0
CODE_DICT_SUFFIX = "-code"
# Key, in the code Dict, of what the deployed images were built with (digests never clash).
MANIFEST_KEY = "deployment"


def function_name(image: str) -> str:
    """The deployed name of the generic function for one image."""
    return FUNCTION_NAME if image == DEFAULT_IMAGE else f"{FUNCTION_NAME}_{image}"


def code_dict_name(app_name: str) -> str:
    """The Modal Dict that holds an app's code packages, by digest."""
    return app_name + CODE_DICT_SUFFIX


def run_job(payload: bytes) -> bytes:
    """The generic Modal function: run one redun job's call payload."""
    return run_call(payload)


def python_version() -> str:
    """The client's Python major.minor: pickles of code objects only load on the same one."""
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def pinned_requirements() -> list[str]:
    """Packages whose versions must match the client's for payloads to load."""
    return [f"redun=={redun.__version__}", f"cloudpickle=={cloudpickle.__version__}"]


def build_image(spec: ImageSpec) -> Any:
    """The Modal image for one ``ImageSpec``: Python and pickling libraries as on the client."""
    import modal

    if spec.registry_image:
        image = modal.Image.from_registry(spec.registry_image, add_python=python_version())
    else:
        image = modal.Image.debian_slim(python_version=python_version())
    if spec.apt:
        image = image.apt_install(*spec.apt)
    image = image.pip_install(*pinned_requirements(), *spec.pip)
    # Last, as Modal requires for local files: this package, as installed on the client.
    return image.add_local_python_source("redun_modal_executor")


def build_app(config: ExecutorConfig) -> Any:
    """The ``modal.App`` with one generic function per configured image."""
    import modal

    app = modal.App(config.app_name)
    for spec in config.images.values():
        # serialized=True: the app is built from redun.ini at deploy time, so a container
        # could not rebuild it by importing this module; it unpickles the function instead.
        app.function(
            name=function_name(spec.name),
            image=build_image(spec),
            serialized=True,
            enable_memory_snapshot=config.memory_snapshot,
        )(run_job)
    return app


def deployment_manifest(config: ExecutorConfig) -> dict[str, Any]:
    """What the images are built with: `redun-modal doctor` compares it with the client."""
    from redun_modal_executor import __version__
    from redun_modal_executor.payload import FORMAT_VERSION, runtime_versions

    return {
        **runtime_versions(),
        "payload_format": str(FORMAT_VERSION),
        "redun_modal_executor": __version__,
        "functions": [function_name(image) for image in config.images],
        "memory_snapshot": config.memory_snapshot,
    }


def connect() -> None:
    """Connect the modal client, within ``COMMAND_REACH_SECONDS``: ``ModalAuthError`` without
    credentials, ``ModalUnreachableError`` if Modal cannot be reached."""
    import modal
    import modal.exception

    from redun_modal_executor.backends.modal.explain import auth_message, wait_within_reach
    from redun_modal_executor.errors import ModalAuthError

    try:
        wait_within_reach(modal.Client.from_env.aio, COMMAND_REACH_SECONDS)
    except modal.exception.AuthError as error:
        raise ModalAuthError(auth_message(error)) from None


def deploy(config: ExecutorConfig) -> None:
    """Deploy (or redeploy) the app; safe to repeat, Modal replaces the previous version."""
    import modal
    import modal.exception

    from redun_modal_executor.backends.modal.explain import commands_errors

    with commands_errors():
        with modal.enable_output():
            build_app(config).deploy(name=config.app_name, environment_name=config.environment)
        manifests = modal.Dict.from_name(
            code_dict_name(config.app_name),
            environment_name=config.environment,
            create_if_missing=True,
        )
        manifests.put(MANIFEST_KEY, deployment_manifest(config))


def check_deployment(config: ExecutorConfig) -> Iterator[tuple[str, bool, str]]:
    """What `redun-modal doctor` reports for one executor: (check, ok, detail) each."""
    import modal
    import modal.exception

    from redun_modal_executor.backends.modal.explain import wait_within_reach
    from redun_modal_executor.errors import ModalUnreachableError

    for image in config.images:
        name = function_name(image)
        function = modal.Function.from_name(
            config.app_name, name, environment_name=config.environment
        )
        try:
            wait_within_reach(function.hydrate.aio, COMMAND_REACH_SECONDS)
        except ModalUnreachableError as error:
            yield "connection", False, str(error)
            return
        except modal.exception.AuthError as error:
            yield (
                "credentials",
                False,
                f"{error}: run `modal token new`, or set MODAL_TOKEN_ID and MODAL_TOKEN_SECRET",
            )
            return
        except modal.exception.NotFoundError:
            yield f"function {name}", False, "not deployed: run `redun-modal deploy`"
            continue
        yield f"function {name}", True, "deployed"
    try:
        manifests = modal.Dict.from_name(
            code_dict_name(config.app_name), environment_name=config.environment
        )
        read = functools.partial(manifests.get.aio, MANIFEST_KEY)
        deployed = wait_within_reach(read, COMMAND_REACH_SECONDS)
    except modal.exception.NotFoundError:
        deployed = None
    except ModalUnreachableError as error:
        yield "connection", False, str(error)
        return
    if deployed is None:
        yield (
            "versions",
            False,
            (
                "no deployment record (never deployed with this package, or unused longer than "
                "Modal keeps Dict entries): run `redun-modal deploy`"
            ),
        )
        return
    ours = deployment_manifest(config)
    for key in ("python", "redun", "cloudpickle", "payload_format", "redun_modal_executor"):
        same = deployed.get(key) == ours[key]
        detail = (
            ours[key]
            if same
            else (
                f"image has {deployed.get(key)}, client has {ours[key]}: redeploy with "
                "`redun-modal deploy` from this environment"
            )
        )
        yield key, same, detail
    yield _snapshot_check(deployed.get("memory_snapshot"), config.memory_snapshot)


def _snapshot_check(deployed: bool | None, configured: bool) -> tuple[str, bool, str]:
    """Whether the deployed function was deployed with memory snapshots as configured."""
    if deployed is None:
        return "memory snapshots", False, "not recorded: redeploy with `redun-modal deploy`"

    def on(value: bool) -> str:
        return "on" if value else "off"

    if deployed == configured:
        return "memory snapshots", True, on(deployed)
    return (
        "memory snapshots",
        False,
        f"deployed {on(deployed)}, memory_snapshot says {on(configured)}: redeploy with "
        "`redun-modal deploy`",
    )
