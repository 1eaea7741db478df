"""Executor configuration (``[executors.<name>]`` in redun.ini) and per-task options.

Both are parsed and validated here, once: the executor section in ``ModalExecutor.__init__``,
a job's task options when it is submitted. Each key is declared once, as a dataclass field
(``settings.py`` for the section, ``task_options.py`` for task options, ``parsers.py`` for
their value parsers); the tables here, and the configuration reference in the docs, are
derived from those fields.
"""

from redun_modal_executor.config.fields import Setting
from redun_modal_executor.config.mounts import BucketMount, Mount, VolumeMount
from redun_modal_executor.config.parsers import (
    GPU_TYPES,
    MAX_GPUS_PER_CONTAINER,
    MIN_MEMORY_MIB,
    did_you_mean,
)
from redun_modal_executor.config.settings import (
    BACKENDS,
    DEFAULT_APP_NAME,
    EXECUTOR_SETTINGS,
    IMAGE_KEYS,
    ConfigError,
    ExecutorConfig,
    ImageSpec,
    redun_config_dir,
)
from redun_modal_executor.config.task_options import (
    DEFAULT_IMAGE,
    PASSTHROUGH_MODAL_OPTIONS,
    REDUN_TASK_OPTIONS,
    TASK_OPTIONS,
    CallOptions,
    TaskOptionError,
    resolve_call_options,
)

# Raised to users and recorded by redun: named where they are documented, not by submodule.
ConfigError.__module__ = __name__
TaskOptionError.__module__ = __name__

__all__ = [
    "BACKENDS",
    "BucketMount",
    "Mount",
    "VolumeMount",
    "DEFAULT_APP_NAME",
    "DEFAULT_IMAGE",
    "EXECUTOR_SETTINGS",
    "GPU_TYPES",
    "IMAGE_KEYS",
    "MAX_GPUS_PER_CONTAINER",
    "MIN_MEMORY_MIB",
    "PASSTHROUGH_MODAL_OPTIONS",
    "REDUN_TASK_OPTIONS",
    "TASK_OPTIONS",
    "CallOptions",
    "ConfigError",
    "ExecutorConfig",
    "ImageSpec",
    "Setting",
    "TaskOptionError",
    "did_you_mean",
    "redun_config_dir",
    "resolve_call_options",
]
