"""Task options: how one job runs, declared once each as a field of ``CallOptions``.

The same keys in an ``[executors.<name>]`` section set the executor's defaults for them
(``ExecutorConfig.task_defaults``); ``resolve_call_options`` merges a job's own options in.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

from redun_modal_executor.config import mounts, parsers
from redun_modal_executor.config.fields import setting, settings_of
from redun_modal_executor.config.mounts import Mount
from redun_modal_executor.config.parsers import did_you_mean

if TYPE_CHECKING:
    from redun_modal_executor.config.settings import ExecutorConfig

DEFAULT_IMAGE = "default"


class TaskOptionError(ValueError):
    """A task option that this executor cannot honour."""


@dataclass(frozen=True)
class CallOptions:
    """How one job runs: its limits and, on Modal, its container. Hashable: one variant each."""

    timeout: float | None = setting(
        None,
        parsers.seconds,
        "Seconds a job may run before it is stopped and fails with a timeout error.",
        shown="none (Modal: 300)",
    )
    gpu: str | None = setting(
        None,
        parsers.gpu,
        "GPU type for the job's container, as in Modal (``T4``, ``A10G``, ``L40S``, "
        "``A100-80GB``, ``H100`` ...), with ``:N`` for N GPUs.",
        passthrough=True,
    )
    cpu: float | None = setting(
        None,
        parsers.cpu,
        "CPU cores to reserve for the job's container.",
        shown="Modal's default",
        passthrough=True,
    )
    memory: int | None = setting(
        None,
        parsers.memory,
        "Memory to reserve, in MiB as in Modal (16 GiB is 16384).",
        shown="Modal's default",
        passthrough=True,
    )
    retries: int | None = setting(
        None,
        parsers.count,
        "How many more times a failed job runs: after the task raised (run again by the "
        "executor), or its container or worker died (on Modal, run again by Modal itself). "
        "Timeouts and cancellations are never retried.",
        shown="0",
        passthrough=True,
    )
    region: str | None = setting(
        None, parsers.text, "Modal region to run in.", shown="any", passthrough=True
    )
    cloud: str | None = setting(
        None,
        parsers.text,
        "Cloud provider to run in (``aws``, ``gcp``, ``oci`` ...).",
        shown="any",
        passthrough=True,
    )
    secrets: tuple[str, ...] = setting(
        (),
        parsers.words,
        "Names of Modal Secrets whose values the job's container gets as environment variables.",
    )
    volumes: tuple[tuple[str, Mount], ...] = setting(
        (),
        mounts.volumes,
        "Modal Volumes and cloud buckets to mount: ``{'/data': 'my-volume'}`` in a task, "
        "``/data=my-volume`` in redun.ini. A Volume may be mounted read-only "
        "(``{'volume': 'ref', 'read_only': True}``, ``/ref=ref?read_only=true``); a bucket "
        "is a dict with ``bucket``, ``key_prefix``, ``endpoint_url``, ``secret`` and "
        "``read_only``, or a URL in redun.ini: ``/raw=s3://my-bucket/raw/?secret=aws-creds"
        "&read_only=true`` (``gs://bucket/``, ``r2://<account id>/bucket/`` for GCS and R2). "
        "The local backend runs no job that mounts a bucket.",
    )
    image: str = setting(
        DEFAULT_IMAGE,
        parsers.text,
        "Which configured image the job runs in (see ``image.<name>.*`` keys).",
    )
    max_containers: int | None = setting(
        None,
        parsers.positive_int,
        "Most containers Modal runs at once for jobs with these options.",
        shown="no limit",
        passthrough=True,
    )
    buffer_containers: int | None = setting(
        None,
        parsers.count,
        "Idle containers Modal keeps ready, beyond those busy, while jobs with these options "
        "are running: later jobs start without a cold start, at the cost of the idle "
        "containers.",
        shown="0",
        passthrough=True,
    )
    scaledown_window: int | None = setting(
        None,
        parsers.scaledown_seconds,
        "Seconds, 2 to 3600, that an idle container waits for the next job with these "
        "options before Modal stops it.",
        shown="Modal's default",
        passthrough=True,
    )
    env: tuple[tuple[str, str], ...] = setting(
        (),
        parsers.env_vars,
        "Environment variables for the job: ``{'LOG_LEVEL': 'debug'}`` in a task, "
        "``LOG_LEVEL=debug, MODE=fast`` in redun.ini (quote a value with a space or a comma, "
        "as in a shell). A task's ``env`` replaces the executor's. Not for credentials: use "
        "``secrets``.",
    )

    def set_options(self) -> dict[str, Any]:
        """The options that differ from their defaults, for display and tags."""
        return {
            spec.name: getattr(self, spec.name)
            for spec in fields(self)
            if getattr(self, spec.name) != spec.default
        }


# Derived from the fields above: the task options, and the names of those whose values
# Modal's Function.with_options takes as they are.
TASK_OPTIONS = {known.name: known for known in settings_of(CallOptions, task_option=True)}
PASSTHROUGH_MODAL_OPTIONS = tuple(
    name for name, known in TASK_OPTIONS.items() if known.passthrough
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


def resolve_call_options(
    task_name: str, options: Mapping[str, Any], config: ExecutorConfig
) -> CallOptions:
    """Validate a job's task options; task options win over executor defaults."""
    ours: dict[str, Any] = dict(config.task_defaults)
    for key, value in options.items():
        if key in REDUN_TASK_OPTIONS:
            continue
        option = TASK_OPTIONS.get(key)
        if option is None:
            raise TaskOptionError(
                f"Task {task_name}: unknown task option {key!r} for executor "
                f"{config.name!r}{did_you_mean(key, TASK_OPTIONS)} "
                f"Options this executor understands: {', '.join(sorted(TASK_OPTIONS))}."
            )
        if value is None:
            continue
        try:
            ours[key] = option.parse(value)
            if key == "image":
                config._check_image(ours[key], "")
        except ValueError as error:
            raise TaskOptionError(f"Task {task_name}: task option {key} {error}") from None
    return CallOptions(**ours)
