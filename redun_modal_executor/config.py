"""Executor configuration (``[executors.<name>]`` in redun.ini) and per-task options.

Both are parsed and validated here, once: the executor section in ``ModalExecutor.__init__``,
a job's task options when it is submitted. The tables below are also the source of the
configuration reference in the docs.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

BACKENDS = ("modal", "local")
DEFAULT_APP_NAME = "redun-modal-executor"
DEFAULT_IMAGE = "default"

# Modal's GPU types (https://modal.com/docs/guide/gpu), upper-cased as Modal compares them.
GPU_TYPES = (
    "T4",
    "L4",
    "A10",
    "A10G",
    "L40S",
    "A100",
    "A100-40GB",
    "A100-80GB",
    "RTX-PRO-6000",
    "H100",
    "H100!",
    "H200",
    "B200",
    "B200+",
    "ANY",
)
MAX_GPUS_PER_CONTAINER = 8
# Modal counts memory in MiB; a request below this is almost surely GiB written as MiB.
MIN_MEMORY_MIB = 128


class ConfigError(ValueError):
    """A bad ``[executors.<name>]`` section in redun.ini."""


class TaskOptionError(ValueError):
    """A task option that this executor cannot honour."""


def redun_config_dir() -> Path:
    """The redun config directory, found as redun finds it (``REDUN_CONFIG``, then upwards)."""
    from redun.cli import get_config_dir

    return Path(get_config_dir()).resolve()


def did_you_mean(name: str, candidates: Any) -> str:
    """``"; did you mean 'x'?"`` for the closest candidate, else ``"."``."""
    matches = difflib.get_close_matches(name, sorted(candidates), n=1)
    return f"; did you mean {matches[0]!r}?" if matches else "."


# ---------------------------------------------------------------------------------------------
# Value parsers: each takes an ini string or a Python value and raises ValueError saying why.


def _choice(*choices: str) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        text = str(value).strip()
        if text not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}; got {text!r}")
        return text

    return parse


def _number(value: Any, kind: Callable[[str], Any], what: str) -> Any:
    if isinstance(value, bool):
        raise ValueError(f"must be {what}; got {value!r}")
    try:
        return kind(str(value).strip())
    except ValueError:
        raise ValueError(f"must be {what}; got {value!r}") from None


def _positive_int(value: Any) -> int:
    number = _number(value, int, "a whole number")
    if number < 1:
        raise ValueError(f"must be at least 1; got {number}")
    return number


def _count(value: Any) -> int:
    number = _number(value, int, "a whole number")
    if number < 0:
        raise ValueError(f"must be 0 or more; got {number}")
    return number


def _seconds(value: Any) -> float:
    seconds = _number(value, float, "a number of seconds")
    if not seconds > 0:
        raise ValueError(f"must be a positive number of seconds; got {value!r}")
    return seconds


def _cpu(value: Any) -> float:
    cores = _number(value, float, "a number of CPU cores")
    if not cores > 0:
        raise ValueError(f"must be a positive number of CPU cores; got {value!r}")
    return cores


def _memory(value: Any) -> int:
    mebibytes = _number(value, int, "a whole number of MiB")
    if mebibytes < MIN_MEMORY_MIB:
        raise ValueError(
            f"is in MiB, as in Modal: {mebibytes} means {mebibytes} MiB. For {mebibytes} GiB "
            f"write memory={mebibytes * 1024}."
        )
    return mebibytes


def _gpu(value: Any) -> str:
    text = str(value).strip()
    gpu_type, _, count = text.partition(":")
    if gpu_type.upper() not in GPU_TYPES:
        raise ValueError(
            f"has unknown GPU type {gpu_type!r}{did_you_mean(gpu_type.upper(), GPU_TYPES)} "
            f"Modal's GPU types: {', '.join(GPU_TYPES)}; add ':N' for N GPUs."
        )
    if count:
        number = _number(count, int, "a GPU type, optionally with ':count'")
        if not 1 <= number <= MAX_GPUS_PER_CONTAINER:
            raise ValueError(f"asks for {number} GPUs; Modal allows 1 to 8 per container")
        return f"{gpu_type.upper()}:{number}"
    return gpu_type.upper()


def _text(value: Any) -> str:
    return str(value).strip()


def _words(value: Any) -> tuple[str, ...]:
    """Names from a list, or from an ini string separated by commas or whitespace."""
    items = value.replace(",", " ").split() if isinstance(value, str) else list(value)
    if not all(isinstance(item, str) and item for item in items):
        raise ValueError(f"must be a list of names; got {value!r}")
    return tuple(items)


def _requirements(value: Any) -> tuple[str, ...]:
    """Package specs from a list, or from an ini string separated by whitespace or newlines
    (not commas: ``numpy>=1.26,<2`` is one requirement)."""
    items = value.split() if isinstance(value, str) else list(value)
    if not all(isinstance(item, str) and item for item in items):
        raise ValueError(f"must be a list of packages; got {value!r}")
    return tuple(items)


def _volumes(value: Any) -> tuple[tuple[str, str], ...]:
    """``{"/path": "volume-name"}``, or ``/path=volume-name, ...`` in redun.ini."""
    if isinstance(value, str):
        pairs = []
        for item in value.replace(",", " ").split():
            path, equals, name = item.partition("=")
            if not equals or not name:
                raise ValueError(f"must be written /mount/path=volume-name; got {item!r}")
            pairs.append((path, name))
    elif isinstance(value, Mapping):
        pairs = list(value.items())
    else:
        raise ValueError(f"must map mount paths to volume names; got {value!r}")
    for path, name in pairs:
        if not (isinstance(path, str) and path.startswith("/")):
            raise ValueError(f"needs absolute mount paths; got {path!r}")
        if not (isinstance(name, str) and name):
            raise ValueError(f"needs a volume name for {path!r}")
    return tuple(sorted(pairs))


def _mount_path(value: Any) -> str:
    path = str(value).strip()
    if not path.startswith("/") or path == "/":
        raise ValueError(f"must be an absolute path below /; got {value!r}")
    return path.rstrip("/")


def _flag(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "yes", "on", "1"):
        return True
    if text in ("false", "no", "off", "0"):
        return False
    raise ValueError(f"must be true or false; got {value!r}")


# ---------------------------------------------------------------------------------------------
# The settings


@dataclass(frozen=True)
class Setting:
    """One configuration key: how to parse it, its default (as shown) and what it means."""

    name: str
    parse: Callable[[Any], Any]
    default: str
    doc: str
    task_option: bool = False


EXECUTOR_SETTINGS: tuple[Setting, ...] = (
    Setting(
        "backend",
        _choice(*BACKENDS),
        "modal",
        "Where jobs run: ``modal`` (Modal's cloud, through the deployed app) or ``local`` (a "
        "pool of worker processes on this machine running the same worker code; needs no "
        "Modal account).",
    ),
    Setting(
        "max_workers",
        _positive_int,
        "number of CPUs",
        "Most jobs running at once on the ``local`` backend. Workers are separate Python "
        "processes, started on demand and reused across jobs. (On Modal, use "
        "``max_containers``.) The local backend honours the ``timeout`` and ``retries`` task "
        "options; it accepts and checks the others, so a GPU task runs on the CPU there.",
    ),
    Setting(
        "app_name",
        _text,
        DEFAULT_APP_NAME,
        "Name of the deployed Modal app that holds the generic worker function.",
    ),
    Setting(
        "environment",
        _text,
        "the Modal profile's",
        "Modal environment the app is deployed in and looked up from.",
    ),
    Setting(
        "pip",
        _requirements,
        "none",
        "Extra pip packages for the default image, separated by spaces or new lines "
        "(redun, cloudpickle and this package are always installed, at the client's versions).",
    ),
    Setting(
        "apt",
        _requirements,
        "none",
        "Debian packages for the default image.",
    ),
    Setting(
        "registry_image",
        _text,
        "Modal's debian_slim",
        "Base the default image on this registry image (for example "
        "``nvidia/cuda:12.4.1-runtime-ubuntu22.04``) instead of Modal's debian_slim; Python "
        "is added at the client's version.",
    ),
    Setting(
        "ship_code",
        _flag,
        "true",
        "Upload the workflow's Python files (a content-hashed package, once per version) so "
        "edited code runs remotely without a redeploy.",
    ),
    Setting(
        "reattach",
        _flag,
        "true",
        "Record each Modal call in the redun database as it is spawned, so that a scheduler "
        "killed mid-run and started again waits for the calls still running (or finished) "
        "instead of running them again.",
    ),
    Setting(
        "code_includes",
        _words,
        "**/*.py",
        "Glob patterns (relative to the directory ``redun`` runs in) of the files in the code "
        "package. Same key as redun's code packaging.",
    ),
    Setting(
        "code_excludes",
        _words,
        "none",
        "Glob patterns to leave out of the code package (directories named ``__pycache__``, "
        "``site-packages``, ``node_modules``, ``venv``, ``env``, ``build`` or ``dist``, and "
        "virtualenvs, always are).",
    ),
    Setting(
        "progress_interval",
        _seconds,
        "30",
        "Seconds between progress lines in redun's log while jobs are in flight (jobs in "
        "flight, done and failed on this executor).",
    ),
    Setting(
        "scratch",
        _text,
        "/tmp/redun",
        "Scratch path, used by ``redun launch --code-package``.",
    ),
    Setting(
        "scheduler_volume",
        _text,
        "``<app_name>-scheduler``",
        "Modal Volume that keeps the sqlite database of schedulers started with ``redun "
        "launch`` (when the project's ``db_uri`` is a sqlite file). One launch at a time "
        "writes it; ``redun-modal pull`` merges it into the local database.",
    ),
    Setting(
        "scheduler_mount",
        _mount_path,
        "/redun-scheduler",
        "Where a launched scheduler's container mounts ``scheduler_volume``.",
    ),
    Setting(
        "scheduler_sync_interval",
        _seconds,
        "60",
        "Seconds between copies of a launched scheduler's sqlite database to its volume "
        "while it runs (it is always copied when the run ends).",
    ),
    Setting(
        "scheduler_timeout",
        _seconds,
        "86400 (24 h, Modal's longest)",
        "Seconds a launched scheduler may run, unless ``redun launch -o timeout=...`` says "
        "otherwise (the executor's ``timeout`` is for its jobs, not for launches).",
    ),
    Setting(
        "scheduler_secrets",
        _words,
        "none",
        "Modal Secrets for launched schedulers, besides ``secrets``: for example the "
        "``REDUN_DB_USERNAME`` and ``REDUN_DB_PASSWORD`` of a Postgres ``db_uri``.",
    ),
    Setting(
        "local_dir",
        _text,
        "``modal-local`` in the redun config directory",
        "Where the ``local`` backend keeps what Modal keeps in the cloud: volumes (as "
        "directories) and detached launches (their output and result).",
    ),
    Setting(
        "timeout",
        _seconds,
        "none (Modal: 300)",
        "Seconds a job may run before it is stopped and fails with a timeout error.",
        task_option=True,
    ),
    Setting(
        "gpu",
        _gpu,
        "none",
        "GPU type for the job's container, as in Modal (``T4``, ``A10G``, ``L40S``, "
        "``A100-80GB``, ``H100`` ...), with ``:N`` for N GPUs.",
        task_option=True,
    ),
    Setting(
        "cpu",
        _cpu,
        "Modal's default",
        "CPU cores to reserve for the job's container.",
        task_option=True,
    ),
    Setting(
        "memory",
        _memory,
        "Modal's default",
        "Memory to reserve, in MiB as in Modal (16 GiB is 16384).",
        task_option=True,
    ),
    Setting(
        "retries",
        _count,
        "0",
        "How many more times a failed job runs: after the task raised (run again by the "
        "executor), or its container or worker died (on Modal, run again by Modal itself). "
        "Timeouts and cancellations are never retried.",
        task_option=True,
    ),
    Setting(
        "region",
        _text,
        "any",
        "Modal region to run in.",
        task_option=True,
    ),
    Setting(
        "cloud",
        _text,
        "any",
        "Cloud provider to run in (``aws``, ``gcp``, ``oci`` ...).",
        task_option=True,
    ),
    Setting(
        "secrets",
        _words,
        "none",
        "Names of Modal Secrets whose values the job's container gets as environment variables.",
        task_option=True,
    ),
    Setting(
        "volumes",
        _volumes,
        "none",
        "Modal Volumes to mount: ``{'/data': 'my-volume'}`` in a task, "
        "``/data=my-volume`` in redun.ini.",
        task_option=True,
    ),
    Setting(
        "image",
        _text,
        DEFAULT_IMAGE,
        "Which configured image the job runs in (see ``image.<name>.*`` keys).",
        task_option=True,
    ),
    Setting(
        "max_containers",
        _positive_int,
        "no limit",
        "Most containers Modal runs at once for jobs with these options.",
        task_option=True,
    ),
)

_SETTINGS_BY_NAME = {setting.name: setting for setting in EXECUTOR_SETTINGS}
TASK_OPTIONS = {setting.name: setting for setting in EXECUTOR_SETTINGS if setting.task_option}
IMAGE_KEYS = ("pip", "apt", "registry_image")

# Keys only redun reads from executor sections (`class` from redun 0.46; `code_package` for
# `redun launch --code-package`, which also reads our code_includes / code_excludes).
_REDUN_SECTION_KEYS = frozenset({"type", "class", "code_package"})

# Task options redun's scheduler interprets, whatever the executor.
REDUN_TASK_OPTIONS = frozenset(
    {
        "_context_override",
        "allowed_cache_results",
        "cache",
        "cache_scope",
        "check_valid",
        "config_args",
        "debug",
        "executor",
        "limits",
        "load_module",
        "nout",
        "tags",
        "use_wrapper_signature",
        "wrapped_task",
    }
)


# ---------------------------------------------------------------------------------------------
# Parsed configuration


@dataclass(frozen=True)
class ImageSpec:
    """One image the generic function is deployed with."""

    name: str
    pip: tuple[str, ...] = ()
    apt: tuple[str, ...] = ()
    registry_image: str | None = None


@dataclass(frozen=True)
class CallOptions:
    """How one job runs: its limits and, on Modal, its container. Hashable: one variant each."""

    timeout: float | None = None
    gpu: str | None = None
    cpu: float | None = None
    memory: int | None = None
    retries: int | None = None
    region: str | None = None
    cloud: str | None = None
    secrets: tuple[str, ...] = ()
    volumes: tuple[tuple[str, str], ...] = ()
    image: str = DEFAULT_IMAGE
    max_containers: int | None = None

    def set_options(self) -> dict[str, Any]:
        """The options that differ from their defaults, for display and tags."""
        return {
            spec.name: getattr(self, spec.name)
            for spec in fields(self)
            if getattr(self, spec.name) != spec.default
        }


@dataclass(frozen=True)
class ExecutorConfig:
    """The parsed ``[executors.<name>]`` section."""

    name: str
    backend: str = "modal"
    max_workers: int | None = None
    app_name: str = DEFAULT_APP_NAME
    environment: str | None = None
    ship_code: bool = True
    reattach: bool = True
    code_includes: tuple[str, ...] = ("**/*.py",)
    code_excludes: tuple[str, ...] = ()
    progress_interval: float = 30.0
    scratch: str = "/tmp/redun"
    scheduler_volume: str | None = None
    scheduler_mount: str = "/redun-scheduler"
    scheduler_sync_interval: float = 60.0
    scheduler_timeout: float = 86400.0
    scheduler_secrets: tuple[str, ...] = ()
    local_dir: str | None = None
    images: Mapping[str, ImageSpec] = field(
        default_factory=lambda: {DEFAULT_IMAGE: ImageSpec(DEFAULT_IMAGE)}
    )
    task_defaults: Mapping[str, Any] = field(default_factory=dict)

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
            setting = _SETTINGS_BY_NAME.get(image_key or key)
            if setting is None:
                raise ConfigError(
                    f"[executors.{name}]: unknown key {key!r}"
                    f"{did_you_mean(key, _SETTINGS_BY_NAME)} "
                    f"Known keys: {', '.join(sorted(_SETTINGS_BY_NAME))}, and "
                    "image.<name>.pip / .apt / .registry_image for more images."
                )
            try:
                value = setting.parse(raw)
            except ValueError as error:
                raise ConfigError(f"[executors.{name}]: {key} {error}") from None
            if image_key:
                images.setdefault(image_name, {})[image_key] = value
            elif key in IMAGE_KEYS:
                images[DEFAULT_IMAGE][key] = value
            elif setting.task_option:
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

    def local_root(self) -> Path:
        """The local backend's stand-in for Modal's storage (volumes, detached calls)."""
        if self.local_dir:
            return Path(self.local_dir).expanduser().resolve()
        return redun_config_dir() / "modal-local"

    def _check_image(self, image: str, where: str) -> None:
        if image not in self.images:
            raise ValueError(
                f"{where}{' ' if where else ''}{image!r} is not configured"
                f"{did_you_mean(image, self.images)} "
                f"Configured images: {', '.join(sorted(self.images))}."
            )


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


def resolve_call_options(
    task_name: str, options: Mapping[str, Any], config: ExecutorConfig
) -> CallOptions:
    """Validate a job's task options; task options win over executor defaults."""
    ours: dict[str, Any] = dict(config.task_defaults)
    for key, value in options.items():
        if key in REDUN_TASK_OPTIONS:
            continue
        setting = TASK_OPTIONS.get(key)
        if setting is None:
            raise TaskOptionError(
                f"Task {task_name}: unknown task option {key!r} for executor "
                f"{config.name!r}{did_you_mean(key, TASK_OPTIONS)} "
                f"Options this executor understands: {', '.join(sorted(TASK_OPTIONS))}."
            )
        if value is None:
            continue
        try:
            ours[key] = setting.parse(value)
            if key == "image":
                config._check_image(ours[key], "")
        except ValueError as error:
            raise TaskOptionError(f"Task {task_name}: task option {key} {error}") from None
    return CallOptions(**ours)
