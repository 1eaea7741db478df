"""Plain records the fake keeps about functions, binds, calls and inputs; tests read them."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Literal

from modal_proto import api_pb2

FaultKind = Literal["internal_failure", "preempt", "crash"]
InputState = Literal["pending", "running", "done", "cancelled"]
LogSource = Literal["stdout", "stderr", "system"]  # as modal.types.LogSource

DEFAULT_TIMEOUT = 300.0  # Modal's default function timeout, in seconds


@dataclasses.dataclass
class FunctionSpec:
    """A deployed function: where it lives (environment, app, name) and what it runs."""

    app: str
    name: str
    target: str  # "package.module:callable"
    environment: str
    function_id: str
    app_id: str
    timeout: float = DEFAULT_TIMEOUT
    retries: int = 0

    @property
    def key(self) -> str:
        """The "app/name" key that `FakeModal.executions` and faults use."""
        return f"{self.app}/{self.name}"


@dataclasses.dataclass
class Variant:
    """A callable function id: the deployed function itself, or one bound by with_options."""

    function_id: str
    spec: FunctionSpec
    options: api_pb2.FunctionOptions | None = None

    def timeout(self) -> float:
        """Seconds one attempt may run: the bound option, else the function's own."""
        if self.options is not None and self.options.HasField("timeout_secs"):
            return float(self.options.timeout_secs)
        return self.spec.timeout

    def retry_policy(self) -> api_pb2.FunctionRetryPolicy:
        """The bound retry policy, else one made of the function's own retry count."""
        if self.options is not None and self.options.HasField("retry_policy"):
            return self.options.retry_policy
        return api_pb2.FunctionRetryPolicy(
            retries=self.spec.retries, backoff_coefficient=1.0, initial_delay_ms=1000
        )

    def secret_ids(self) -> list[str]:
        """Secrets whose values go into the worker's environment."""
        return list(self.options.secret_ids) if self.options is not None else []


@dataclasses.dataclass(frozen=True)
class BindRecord:
    """One FunctionBindParams request (a `with_options` variant), decoded for assertions."""

    function: str  # "app/name"
    base_function_id: str
    bound_function_id: str
    options: api_pb2.FunctionOptions
    gpu: str | None
    cpu: float | None
    memory: int | None
    timeout: int | None
    retries: int | None
    regions: tuple[str, ...]
    cloud: str | None
    max_containers: int | None
    buffer_containers: int | None
    scaledown_window: int | None
    secrets: tuple[str, ...]  # names of the named secrets
    volumes: dict[str, str]  # mount path -> volume name
    read_only: tuple[str, ...]  # mount paths of the Volumes mounted read-only
    buckets: dict[str, dict[str, object]]  # mount path -> the CloudBucketMount's fields
    env: dict[str, str]  # the values of the anonymous secrets (`with_options(env=...)`)

    @classmethod
    def decode(
        cls,
        spec: FunctionSpec,
        bound_function_id: str,
        options: api_pb2.FunctionOptions,
        name_of: Callable[[str], str],
        env_of: Callable[[str], dict[str, str] | None],
    ) -> BindRecord:
        """Read the options the client sent; `name_of` maps secret and volume ids to names,
        `env_of` an anonymous secret's id to its values (None for a named one)."""
        env: dict[str, str] = {}
        named: list[str] = []
        for secret_id in options.secret_ids:
            values = env_of(secret_id)
            if values is None:
                named.append(name_of(secret_id))
            else:
                env.update(values)
        resources = options.resources
        gpu: str | None = None
        if resources.gpu_config.count:
            gpu_type, count = resources.gpu_config.gpu_type, resources.gpu_config.count
            gpu = gpu_type if count == 1 else f"{gpu_type}:{count}"
        return cls(
            function=spec.key,
            base_function_id=spec.function_id,
            bound_function_id=bound_function_id,
            options=options,
            gpu=gpu,
            cpu=resources.milli_cpu / 1000 if resources.milli_cpu else None,
            memory=resources.memory_mb or None,
            timeout=options.timeout_secs if options.HasField("timeout_secs") else None,
            retries=options.retry_policy.retries if options.HasField("retry_policy") else None,
            regions=tuple(options.scheduler_placement.regions),
            cloud=options.cloud_provider_str if options.HasField("cloud_provider_str") else None,
            max_containers=(
                options.concurrency_limit if options.HasField("concurrency_limit") else None
            ),
            buffer_containers=(
                options.buffer_containers if options.HasField("buffer_containers") else None
            ),
            scaledown_window=(
                options.task_idle_timeout_secs
                if options.HasField("task_idle_timeout_secs")
                else None
            ),
            secrets=tuple(named),
            volumes={
                mount.mount_path: name_of(mount.volume_id) for mount in options.volume_mounts
            },
            read_only=tuple(m.mount_path for m in options.volume_mounts if m.read_only),
            buckets={
                mount.mount_path: {
                    "bucket": mount.bucket_name,
                    "endpoint_url": mount.bucket_endpoint_url,
                    "key_prefix": mount.key_prefix,
                    "read_only": mount.read_only,
                    "secret": name_of(mount.credentials_secret_id)
                    if mount.credentials_secret_id
                    else None,
                }
                for mount in options.cloud_bucket_mounts
            },
            env=env,
        )


@dataclasses.dataclass
class Fault:
    """A failure to inflict on the next input that starts (of one function, or of any)."""

    kind: FaultKind
    function: str | None = None  # "app/name", or None for any function
    after: float = 0.0  # seconds the attempt runs before a preemption or crash
    on_output: str | None = None  # if set, `after` counts from the first line containing it


@dataclasses.dataclass(frozen=True)
class LogLine:
    """One line an attempt of an input wrote (or the fake said about it), as Modal logs it."""

    timestamp_ns: int  # when the fake read it (time.time_ns())
    source: LogSource  # "system": the fake's own word, e.g. why a worker was killed
    text: str  # with its newline, if it had one
    call_id: str
    input_id: str
    attempt: int  # 1 for the first execution, as InputRecord.attempts counts them
    task_id: str  # the "container" (worker) that ran the attempt

    @property
    def timestamp(self) -> float:
        """Seconds since the epoch."""
        return self.timestamp_ns / 1e9


@dataclasses.dataclass
class InputRecord:
    """One input of a function call and what became of it."""

    input_id: str
    call_id: str
    idx: int
    function_input: api_pb2.FunctionInput
    state: InputState = "pending"
    attempts: int = 0  # executions in a worker, retries and preemptions included
    retry_count: int = 0
    worker_pids: list[int] = dataclasses.field(default_factory=list)
    output: api_pb2.FunctionGetOutputsItem | None = None
    cleared: bool = False  # a sync call's output, removed once the client took it
    entry: int = 0  # its output's place in the call's output stream (1, 2, ...), once it has one
    terminated: bool = False  # ended from outside (its container terminated), not by its call
    logs: list[LogLine] = dataclasses.field(default_factory=list)  # all attempts', in order

    @property
    def finished(self) -> bool:
        """True once the input has an output (cancelled inputs have one too)."""
        return self.output is not None

    @property
    def status(self) -> str:
        """The output's status name ("SUCCESS", "FAILURE", ...), or the state while pending."""
        if self.output is None:
            return self.state
        name = str(api_pb2.GenericResult.GenericStatus.Name(self.output.result.status))
        return name.removeprefix("GENERIC_STATUS_")


@dataclasses.dataclass
class CallRecord:
    """A function call (one `spawn` or `remote`) and its inputs."""

    call_id: str
    variant: Variant
    invocation_type: int
    inputs: list[InputRecord] = dataclasses.field(default_factory=list)
    cancelled: bool = False
    outputs: list[InputRecord] = dataclasses.field(default_factory=list)  # in order of completion
    finished_inputs: int | None = None  # FunctionFinishInputs' count: no inputs come after

    @property
    def unfinished(self) -> int:
        """Inputs without an output yet."""
        return sum(1 for record in self.inputs if not record.finished)

    @property
    def logs(self) -> list[LogLine]:
        """The log lines of all its inputs, oldest first."""
        lines = [line for record in self.inputs for line in record.logs]
        return sorted(lines, key=lambda line: line.timestamp_ns)
