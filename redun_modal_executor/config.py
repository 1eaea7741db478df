"""Executor configuration (``[executors.<name>]`` in redun.ini) and per-task options.

Both are parsed and validated here, once: the executor section in ``ModalExecutor.__init__``,
a job's task options when it is submitted. The tables below are also the source of the
configuration reference in the docs.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

BACKENDS = ("modal", "local")


class ConfigError(ValueError):
    """A bad ``[executors.<name>]`` section in redun.ini."""


class TaskOptionError(ValueError):
    """A task option that this executor cannot honour."""


@dataclass(frozen=True)
class Setting:
    """One configuration key: how to parse it, its default and what it means."""

    name: str
    parse: Callable[[Any], Any]
    default: str
    doc: str
    task_option: bool = False


def _choice(*choices: str) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        text = str(value).strip()
        if text not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}; got {text!r}")
        return text

    return parse


def _positive_int(value: Any) -> int:
    try:
        number = int(str(value).strip())
    except ValueError:
        raise ValueError(f"must be a whole number; got {value!r}") from None
    if number < 1:
        raise ValueError(f"must be at least 1; got {number}")
    return number


def _seconds(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError(f"must be a number of seconds; got {value!r}")
    try:
        seconds = float(str(value).strip())
    except ValueError:
        raise ValueError(f"must be a number of seconds; got {value!r}") from None
    if not seconds > 0:
        raise ValueError(f"must be a positive number of seconds; got {value!r}")
    return seconds


def _text(value: Any) -> str:
    return str(value).strip()


EXECUTOR_SETTINGS: tuple[Setting, ...] = (
    Setting(
        "backend",
        _choice(*BACKENDS),
        "modal",
        "Where jobs run: ``modal`` (Modal's cloud) or ``local`` (a pool of worker processes on "
        "this machine that runs the same worker code; needs no Modal account).",
    ),
    Setting(
        "max_workers",
        _positive_int,
        "number of CPUs",
        "Most jobs running at once on the ``local`` backend. Workers are separate Python "
        "processes, started on demand and reused across jobs.",
    ),
    Setting(
        "timeout",
        _seconds,
        "none",
        "Seconds a job may run before it is stopped and fails with a timeout error. A task's "
        "own ``timeout`` option wins.",
        task_option=True,
    ),
    Setting(
        "scratch",
        _text,
        "/tmp/redun",
        "Scratch path, used by ``redun launch --code-package``.",
    ),
)

_SETTINGS_BY_NAME = {setting.name: setting for setting in EXECUTOR_SETTINGS}

# Keys redun itself reads from executor sections (`class` from redun 0.46; the code_* keys for
# `redun launch --code-package`).
_REDUN_SECTION_KEYS = frozenset(
    {"type", "class", "code_package", "code_includes", "code_excludes"}
)

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

TASK_OPTIONS = {setting.name: setting for setting in EXECUTOR_SETTINGS if setting.task_option}


def did_you_mean(name: str, candidates: Any) -> str:
    """``"; did you mean 'x'?"`` for the closest candidate, else ``"."``."""
    matches = difflib.get_close_matches(name, sorted(candidates), n=1)
    return f"; did you mean {matches[0]!r}?" if matches else "."


@dataclass(frozen=True)
class ExecutorConfig:
    """The parsed ``[executors.<name>]`` section."""

    name: str
    backend: str = "modal"
    max_workers: int = field(default_factory=lambda: os.cpu_count() or 1)
    timeout: float | None = None
    scratch: str = "/tmp/redun"

    @classmethod
    def from_section(cls, name: str, section: Mapping[str, Any] | None) -> ExecutorConfig:
        """Parse a redun config section; raise ``ConfigError`` naming the key and the fix."""
        values: dict[str, Any] = {}
        for key, raw in (section or {}).items():
            if key in _REDUN_SECTION_KEYS:
                continue
            setting = _SETTINGS_BY_NAME.get(key)
            if setting is None:
                raise ConfigError(
                    f"[executors.{name}]: unknown key {key!r}"
                    f"{did_you_mean(key, _SETTINGS_BY_NAME)} "
                    f"Known keys: {', '.join(sorted(_SETTINGS_BY_NAME))}."
                )
            try:
                values[key] = setting.parse(raw)
            except ValueError as error:
                raise ConfigError(f"[executors.{name}]: {key} {error}") from None
        return cls(name=name, **values)


@dataclass(frozen=True)
class CallOptions:
    """What the transport needs to know about one job, beyond its payload."""

    timeout: float | None = None


def resolve_call_options(
    task_name: str, options: Mapping[str, Any], config: ExecutorConfig
) -> CallOptions:
    """Validate a job's task options; task options win over executor defaults."""
    ours: dict[str, Any] = {}
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
        except ValueError as error:
            raise TaskOptionError(f"Task {task_name}: task option {key} {error}") from None
    return CallOptions(timeout=ours.get("timeout", config.timeout))
