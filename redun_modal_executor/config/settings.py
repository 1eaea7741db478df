"""The keys of an ``[executors.<name>]`` section, each declared once, and their parsing.

A key is a field made with ``setting()``: of ``ExecutorConfig`` (keys of the executor only),
``ImageSpec`` (the image keys) or ``CallOptions`` (task options, which in the section are the
executor's defaults; see ``task_options.py``). The field holds its default, its parser and its
documentation. The tables at the end, the parsing here and the configuration reference in the
docs are derived from those fields.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from redun_modal_executor.config import parsers
from redun_modal_executor.config.fields import Setting, setting, settings_from, settings_of
from redun_modal_executor.config.parsers import did_you_mean
from redun_modal_executor.config.task_options import DEFAULT_IMAGE, CallOptions

BACKENDS = ("modal", "local")
DEFAULT_APP_NAME = "redun-modal-executor"


class ConfigError(ValueError):
    """A bad ``[executors.<name>]`` section in redun.ini."""


def redun_config_dir() -> Path:
    """The redun config directory, found as redun finds it (``REDUN_CONFIG``, then upwards)."""
    from redun.cli import get_config_dir

    return Path(get_config_dir()).resolve()


@dataclass(frozen=True)
class ImageSpec:
    """One image the generic function is deployed with."""

    name: str
    pip: tuple[str, ...] = setting(
        (),
        parsers.requirements,
        "Extra pip packages for the default image, separated by spaces or new lines "
        "(redun, cloudpickle and this package are always installed, at the client's versions).",
    )
    apt: tuple[str, ...] = setting(
        (), parsers.requirements, "Debian packages for the default image."
    )
    registry_image: str | None = setting(
        None,
        parsers.text,
        "Base the default image on this registry image (for example "
        "``nvidia/cuda:12.4.1-runtime-ubuntu22.04``) instead of Modal's debian_slim; Python "
        "is added at the client's version.",
        shown="Modal's debian_slim",
    )


@dataclass(frozen=True)
class ExecutorConfig:
    """The parsed ``[executors.<name>]`` section."""

    name: str
    backend: str = setting(
        "modal",
        parsers.choice(*BACKENDS),
        "Where jobs run: ``modal`` (Modal's cloud, through the deployed app) or ``local`` (a "
        "pool of worker processes on this machine running the same worker code; needs no "
        "Modal account).",
    )
    max_workers: int | None = setting(
        None,
        parsers.positive_int,
        "Most jobs running at once on the ``local`` backend. Workers are separate Python "
        "processes, started on demand and reused across jobs. (On Modal, use "
        "``max_containers``.) The local backend honours the ``timeout``, ``retries`` and "
        "``env`` task options; it accepts and checks the others, so a GPU task runs on the "
        "CPU there.",
        shown="number of CPUs",
    )
    app_name: str = setting(
        DEFAULT_APP_NAME,
        parsers.text,
        "Name of the deployed Modal app that holds the generic worker function.",
    )
    environment: str | None = setting(
        None,
        parsers.text,
        "Modal environment the app is deployed in and looked up from.",
        shown="the Modal profile's",
    )
    # The section's pip, apt and registry_image keys, and image.<name>.* for more images.
    images: Mapping[str, ImageSpec] = settings_from(
        ImageSpec, lambda: {DEFAULT_IMAGE: ImageSpec(DEFAULT_IMAGE)}
    )
    memory_snapshot: bool = setting(
        True,
        parsers.flag,
        "Deploy the generic function with Modal's memory snapshots: a new container starts "
        "from a snapshot taken after redun and the worker were imported, instead of importing "
        "them. Takes effect at ``redun-modal deploy``.",
    )
    ship_code: bool = setting(
        True,
        parsers.flag,
        "Upload the workflow's Python files (a content-hashed package, once per version) so "
        "edited code runs remotely without a redeploy.",
    )
    reattach: bool = setting(
        True,
        parsers.flag,
        "Record each Modal call in the redun database as it is spawned, so that a scheduler "
        "killed mid-run and started again waits for the calls still running (or finished) "
        "instead of running them again.",
    )
    job_tags: bool | None = setting(
        None,
        parsers.flag,
        "Tag each job in the redun database with where and how it ran, for `redun log` and "
        "`redun console`: on Modal, ``modal_app``, ``modal_call`` and ``modal_input`` (the "
        "job's input in its batched call), and the task options redun does not record "
        "itself (``modal_gpu``, ``modal_memory``, ...). Unset, it is on for the modal backend "
        "and off for local, whose jobs then read in `redun log` as under redun's own "
        "LocalExecutor.",
        shown="on for modal, off for local",
    )
    code_includes: tuple[str, ...] = setting(
        ("**/*.py",),
        parsers.patterns,
        "Glob patterns (relative to the directory ``redun`` runs in) of the files in the code "
        "package. Same key and meaning as in redun's code packaging: patterns are separated "
        "by spaces and quoted as in a shell, and ``**`` matches any number of directories.",
    )
    code_excludes: tuple[str, ...] = setting(
        (),
        parsers.patterns,
        "Glob patterns, written as ``code_includes``, of files to leave out of the code "
        "package: a file is left out if a pattern matches it, as in redun (``flows/*`` leaves "
        "out the files in ``flows``, ``flows/**`` also those below it). Directories named "
        "``__pycache__``, ``site-packages``, ``node_modules``, ``venv``, ``env``, ``build`` or "
        "``dist``, and virtualenvs, are always left out.",
    )
    progress_interval: float = setting(
        30.0,
        parsers.seconds,
        "Seconds between progress lines in redun's log while jobs are in flight (jobs in "
        "flight, done and failed on this executor).",
    )
    scratch: str = setting(
        "/tmp/redun", parsers.text, "Scratch path, used by ``redun launch --code-package``."
    )
    scheduler_volume: str | None = setting(
        None,
        parsers.text,
        "Modal Volume that keeps the sqlite database of schedulers started with ``redun "
        "launch`` (when the project's ``db_uri`` is a sqlite file). One launch at a time "
        "writes it; ``redun-modal pull`` merges it into the local database.",
        shown="``<app_name>-scheduler``",
    )
    scheduler_mount: str = setting(
        "/redun-scheduler",
        parsers.mount_path,
        "Where a launched scheduler's container mounts ``scheduler_volume``.",
    )
    scheduler_sync_interval: float = setting(
        60.0,
        parsers.seconds,
        "Seconds between copies of a launched scheduler's sqlite database to its volume "
        "while it runs (it is always copied when the run ends).",
    )
    scheduler_timeout: float = setting(
        86400.0,
        parsers.seconds,
        "Seconds a launched scheduler may run, unless ``redun launch -o timeout=...`` says "
        "otherwise (the executor's ``timeout`` is for its jobs, not for launches).",
        shown="86400 (24 h, Modal's longest)",
    )
    scheduler_secrets: tuple[str, ...] = setting(
        (),
        parsers.words,
        "Modal Secrets for launched schedulers, besides ``secrets``: for example the "
        "``REDUN_DB_USERNAME`` and ``REDUN_DB_PASSWORD`` of a Postgres ``db_uri``.",
    )
    local_dir: str | None = setting(
        None,
        parsers.text,
        "Where the ``local`` backend keeps what Modal keeps in the cloud: volumes (as "
        "directories) and detached launches (their output and result).",
        shown="``modal-local`` in the redun config directory",
    )
    volume_files: bool = setting(
        True,
        parsers.flag,
        "Serve ``modalvol://<volume>/<path>`` Files in the scheduler through this section's "
        "backend: the local backend's volume directories, or Modal's Volume API in "
        "``environment``. Set it to false in all but one of several sections whose backends "
        "differ.",
    )
    volume_files_mount: str = setting(
        "/modalvol",
        parsers.mount_path,
        "Where a job's container mounts each Volume that its ``modalvol://`` arguments name "
        "and its task does not mount: at ``<volume_files_mount>/<volume>``.",
    )
    # The task options set in the section: the defaults of this executor's tasks.
    task_defaults: Mapping[str, Any] = settings_from(CallOptions, dict, task_options=True)

    @classmethod
    def from_section(cls, name: str, section: Mapping[str, Any] | None) -> ExecutorConfig:
        """Parse a redun config section; raise ``ConfigError`` naming the key and the fix."""
        values: dict[str, Any] = {}
        task_defaults: dict[str, Any] = {}
        images: dict[str, dict[str, Any]] = {DEFAULT_IMAGE: {}}
        for key, raw in (section or {}).items():
            if key in _REDUN_SECTION_KEYS:
                continue
            image_name, image_key = _split_image_key(name, key)
            known = _SETTINGS_BY_NAME.get(image_key or key)
            if known is None:
                raise ConfigError(
                    f"[executors.{name}]: unknown key {key!r}"
                    f"{did_you_mean(key, _SETTINGS_BY_NAME)} "
                    f"Known keys: {', '.join(sorted(_SETTINGS_BY_NAME))}, and "
                    "image.<name>.pip / .apt / .registry_image for more images."
                )
            try:
                value = known.parse(raw)
            except ValueError as error:
                raise ConfigError(f"[executors.{name}]: {key} {error}") from None
            if image_key:
                images.setdefault(image_name, {})[image_key] = value
            elif key in IMAGE_KEYS:
                images[DEFAULT_IMAGE][key] = value
            elif known.task_option:
                task_defaults[key] = value
            else:
                values[key] = value
        config = cls(
            name=name,
            images={image: ImageSpec(image, **spec) for image, spec in images.items()},
            task_defaults=task_defaults,
            **values,
        )
        if "image" in task_defaults:
            try:
                config._check_image(task_defaults["image"], f"[executors.{name}]: image")
            except ValueError as error:
                raise ConfigError(str(error)) from None
        return config

    @property
    def scheduler_volume_name(self) -> str:
        """The volume that keeps launched schedulers' sqlite database."""
        return self.scheduler_volume or f"{self.app_name}-scheduler"

    def _check_image(self, image: str, where: str) -> None:
        if image not in self.images:
            raise ValueError(
                f"{where}{' ' if where else ''}{image!r} is not configured"
                f"{did_you_mean(image, self.images)} "
                f"Configured images: {', '.join(sorted(self.images))}."
            )


# Derived from the fields above: the section's keys in field order (the docs list them so,
# task options last) and the image keys.
EXECUTOR_SETTINGS: tuple[Setting, ...] = settings_of(ExecutorConfig)
_SETTINGS_BY_NAME = {known.name: known for known in EXECUTOR_SETTINGS}
IMAGE_KEYS = tuple(known.name for known in settings_of(ImageSpec))

# Keys only redun reads from executor sections (`class` from redun 0.46; `code_package` for
# `redun launch --code-package`, which also reads our code_includes / code_excludes).
_REDUN_SECTION_KEYS = frozenset({"type", "class", "code_package"})


def _split_image_key(section: str, key: str) -> tuple[str, str | None]:
    """``image.gpu.pip`` -> ``("gpu", "pip")``; other keys -> ``("", None)``."""
    if not key.startswith("image."):
        return "", None
    image_name, _, image_key = key[len("image.") :].rpartition(".")
    if not image_name or image_key not in IMAGE_KEYS:
        raise ConfigError(
            f"[executors.{section}]: {key!r} should be image.<name>.pip, image.<name>.apt or "
            "image.<name>.registry_image"
        )
    return image_name, image_key
