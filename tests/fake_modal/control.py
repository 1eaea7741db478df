"""The fake control plane's state and behaviour: registry, calls, execution, observability.

RPC handlers (servicer.py) call into `ControlPlane`; everything async here runs on the
server's event loop. Registration, knobs and counters are plain attributes that the test
thread may set or read at any time.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import shutil
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar

from grpclib import GRPCError, Status
from modal._utils.blob_utils import MAX_ASYNC_OBJECT_SIZE_BYTES, MAX_OBJECT_SIZE_BYTES
from modal_proto import api_pb2

from .blobs import BlobStore
from .records import (
    DEFAULT_TIMEOUT,
    BindRecord,
    CallRecord,
    Fault,
    FaultKind,
    FunctionSpec,
    InputRecord,
    InputState,
    LogLine,
    LogSource,
    Variant,
)
from .volumes import Volumes
from .workers import Stream, Worker, WorkerDied, WorkerPool

Generic = api_pb2.GenericResult
K = TypeVar("K")
V = TypeVar("V")
_DATA_FORMATS = [api_pb2.DATA_FORMAT_PICKLE, api_pb2.DATA_FORMAT_CBOR]
_OutcomeKind = Literal["success", "failure", "timeout", "crash", "internal_failure", "preempted"]
_FILE_DESCRIPTORS: dict[LogSource, api_pb2.FileDescriptor.ValueType] = {
    "stdout": api_pb2.FILE_DESCRIPTOR_STDOUT,
    "stderr": api_pb2.FILE_DESCRIPTOR_STDERR,
    "system": api_pb2.FILE_DESCRIPTOR_INFO,
}


def new_id(prefix: str) -> str:
    """A Modal-looking object id, e.g. "fc-6f1c..."."""
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def _found(table: Mapping[K, V], key: K, message: str) -> V:
    """`table[key]`, or NOT_FOUND with `message`, as the real server answers."""
    value = table.get(key)
    if value is None:
        raise GRPCError(Status.NOT_FOUND, message)
    return value


@dataclasses.dataclass
class NamedObject:
    """A Secret or Volume that `from_name` can find."""

    object_id: str
    name: str
    environment: str
    values: dict[str, str] = dataclasses.field(default_factory=dict)  # a Secret's variables
    entries: dict[bytes, bytes] = dataclasses.field(default_factory=dict)  # a Dict's contents


@dataclasses.dataclass
class RpcFault:
    """Make the next `count` requests of one RPC method fail with a gRPC status."""

    method: str
    status: Status
    message: str
    count: int


@dataclasses.dataclass
class _Outcome:
    """How one attempt of an input ended."""

    kind: _OutcomeKind
    reply: dict[str, Any] | None = None
    message: str = ""
    task_id: str = ""
    started_at: float = 0.0


class ControlPlane:
    """Functions, secrets, volumes, calls and their inputs; runs inputs in worker processes."""

    def __init__(
        self,
        *,
        default_environment: str = "main",
        warm_workers: int = 1,
        max_concurrency: int = 4,
        strict_objects: bool = False,
    ) -> None:
        # Knobs: the test thread may change these at any time.
        self.latency = 0.0  # seconds added to every RPC
        self.retry_delay_scale = 1.0  # multiplies the delays of a function's retry policy
        self.pipeline_inputs = True  # False: FunctionMap takes no inputs, FunctionPutInputs does
        self.blob_multipart_threshold = 64 * 1024**2  # larger uploads are multipart
        self.blob_part_length = 16 * 1024**2
        self.strict_objects = strict_objects  # unknown Secret/Volume names -> NOT_FOUND
        self.default_environment = default_environment
        self.warm_workers = warm_workers
        self.max_concurrency = max_concurrency
        # Observability.
        self.rpc_counts: Counter[str] = Counter()
        self.rpc_log: list[str] = []  # method names, in the order requests arrived
        self.inputs_started = 0
        self.inputs_finished = 0  # inputs that ended with an output other than cancellation
        self.inputs_cancelled = 0
        self.preemptions = 0
        self.executions: Counter[str] = Counter()  # attempts run, by "app/name"
        self.binds: list[BindRecord] = []
        self.calls: dict[str, CallRecord] = {}
        self.inputs: dict[str, InputRecord] = {}
        # Registry.
        self.functions: dict[tuple[str, str, str], FunctionSpec] = {}
        self.variants: dict[str, Variant] = {}
        self.secrets: dict[str, NamedObject] = {}
        self.volumes: dict[str, NamedObject] = {}
        self.dicts: dict[str, NamedObject] = {}
        self.blob_store = BlobStore()
        self._volume_root = Path(tempfile.mkdtemp(prefix="fake-modal-volumes-"))
        self.volume_views = Volumes(Path(tempfile.mkdtemp(prefix="fake-modal-views-")))
        self.mount_files: dict[str, bytes] = {}  # MountPutFile's uploads, by SHA-256
        self._app_ids: dict[tuple[str, str], str] = {}
        self._bound_ids: dict[tuple[str, bytes], str] = {}
        self._faults: list[Fault] = []
        self._rpc_faults: list[RpcFault] = []
        self._lock = threading.Lock()
        self._running = 0
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._conditions: dict[str, asyncio.Condition] = {}
        self._pool: WorkerPool | None = None
        self._slots: asyncio.Semaphore | None = None

    # ----- registration and knobs (any thread) -----

    def register_function(
        self,
        app: str,
        name: str,
        target: str,
        *,
        environment: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        retries: int = 0,
    ) -> FunctionSpec:
        """Deploy `target` ("module:callable") as function `name` of app `app`."""
        environment = environment or self.default_environment
        with self._lock:
            app_id = self._app_ids.setdefault((environment, app), new_id("ap"))
            spec = FunctionSpec(
                app=app,
                name=name,
                target=target,
                environment=environment,
                function_id=new_id("fu"),
                app_id=app_id,
                timeout=timeout,
                retries=retries,
            )
            self.functions[(environment, app, name)] = spec
            self.variants[spec.function_id] = Variant(spec.function_id, spec)
        return spec

    def register_secret(
        self, name: str, values: dict[str, str] | None = None, *, environment: str | None = None
    ) -> str:
        """Create a Secret whose values go into the environment of the inputs that use it."""
        record = NamedObject(
            new_id("st"), name, environment or self.default_environment, dict(values or {})
        )
        self.secrets[record.object_id] = record
        return record.object_id

    def register_volume(self, name: str, *, environment: str | None = None) -> str:
        """Create a Volume (a directory, see `volume_dir`)."""
        record = NamedObject(new_id("vo"), name, environment or self.default_environment)
        self.volumes[record.object_id] = record
        return record.object_id

    def volume_dir(self, volume: str) -> Path:
        """The directory holding a Volume's committed files (by id or name): what the Volume
        API reads and writes. A container that mounts it sees its own view (volumes.py)."""
        object_id = next(
            (key for key, record in self.volumes.items() if volume in (key, record.name)), None
        )
        if object_id is None:
            raise GRPCError(Status.NOT_FOUND, f"Volume '{volume}' not found")
        path = self._volume_root / object_id
        path.mkdir(exist_ok=True)
        return path

    def _mount_volumes(self, variant: Variant, worker: Worker) -> dict[int, str]:
        """Mount the variant's Volumes in the worker: descriptor -> the worker's view, for
        each mount at a path in the temp directory (tests pick unique ones); other mounts
        are recorded only."""
        mounts = variant.options.volume_mounts if variant.options is not None else ()
        views = {}
        for mount in mounts:
            if not Path(mount.mount_path).is_relative_to(tempfile.gettempdir()):
                continue
            committed = self.volume_dir(mount.volume_id)
            fd = self.volume_views.mount(
                mount.mount_path, committed, mount.volume_id, worker.identity
            )
            views[fd] = str(self.volume_views.view_path(mount.volume_id, worker.identity))
        return views

    def inject_fault(
        self,
        kind: FaultKind,
        count: int = 1,
        *,
        function: str | None = None,
        after: float = 0.0,
        on_output: str | None = None,
    ) -> None:
        """Make the next `count` attempts (of `function`, "app/name", or of any) fail.

        "internal_failure": the input ends with GENERIC_STATUS_INTERNAL_FAILURE without running
        (the client raises modal.exception.InternalFailure). "preempt": the worker is killed
        `after` seconds into the attempt and the input runs again, as Modal reschedules a
        preempted input; the caller sees only the final result. "crash": the worker is killed
        `after` seconds in, as when a container dies (the client raises RemoteError).
        With `on_output`, `after` counts from the attempt's first output line that contains
        that text (an attempt that ends or times out before is spared, and the fault used up).
        """
        with self._lock:
            self._faults.extend(Fault(kind, function, after, on_output) for _ in range(count))

    def fail_rpc(
        self, method: str, status: Status = Status.UNAVAILABLE, count: int = 1, message: str = ""
    ) -> None:
        """Make the next `count` requests of RPC `method` (e.g. "FunctionMap") fail."""
        with self._lock:
            self._rpc_faults.append(RpcFault(method, status, message or "injected fault", count))

    @property
    def running(self) -> int:
        """Inputs executing in a worker right now."""
        return self._running

    def live_worker_pids(self) -> set[int]:
        """Worker processes that are alive, idle or busy."""
        return self._pool.pids() if self._pool is not None else set()

    def wait_until(
        self, predicate: Callable[[], object], timeout: float = 10.0, interval: float = 0.02
    ) -> None:
        """Poll `predicate()` from the test thread until it is true; AssertionError on timeout."""
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(f"condition not met within {timeout}s")
            time.sleep(interval)

    # ----- lifecycle (event loop) -----

    async def open(self, worker_env: dict[str, str]) -> None:
        """Start the blob store and the warm workers."""
        self._slots = asyncio.Semaphore(self.max_concurrency)
        await self.blob_store.start()
        self._pool = WorkerPool(warm=self.warm_workers, env=worker_env)
        await self._pool.start()

    async def close(self) -> None:
        """Stop every input and worker, then the blob store."""
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._pool is not None:
            await self._pool.close()
        await self.blob_store.stop()
        self.volume_views.close()
        shutil.rmtree(self._volume_root, ignore_errors=True)
        shutil.rmtree(self.volume_views.root, ignore_errors=True)

    # ----- RPC support (event loop) -----

    def take_rpc_fault(self, method: str) -> RpcFault | None:
        """The injected failure for this request of `method`, if any."""
        with self._lock:
            for fault in self._rpc_faults:
                if fault.method == method and fault.count > 0:
                    fault.count -= 1
                    return fault
        return None

    def environment(self, name: str) -> str:
        """The environment a request means ("" is the default one)."""
        return name or self.default_environment

    def lookup_function(self, environment: str, app: str, name: str) -> FunctionSpec:
        """The deployed function, or NOT_FOUND as the real server answers."""
        environment = self.environment(environment)
        if not any(key[0] == environment for key in self.functions):
            if environment != self.default_environment:
                raise GRPCError(Status.NOT_FOUND, f"Environment '{environment}' not found")
        if not any(key[:2] == (environment, app) for key in self.functions):
            raise GRPCError(
                Status.NOT_FOUND,
                f"App '{app}' not found in environment '{environment}'",
            )
        key = (environment, app, name)
        return _found(self.functions, key, f"Function '{name}' not found in app '{app}'")

    def variant(self, function_id: str) -> Variant:
        """The function (or bound variant) with this id, or NOT_FOUND."""
        return _found(self.variants, function_id, f"Function '{function_id}' not found")

    def handle_metadata(self, variant: Variant) -> api_pb2.FunctionHandleMetadata:
        """What the client hydrates a Function handle with."""
        spec = variant.spec
        return api_pb2.FunctionHandleMetadata(
            function_name=spec.name,
            function_type=api_pb2.Function.FUNCTION_TYPE_FUNCTION,
            app_id=spec.app_id,
            definition_id=f"de-{spec.function_id[3:]}",
            supported_input_formats=_DATA_FORMATS,
            supported_output_formats=_DATA_FORMATS,
            base_function_id="" if variant.function_id == spec.function_id else spec.function_id,
        )

    def function_data(self, variant: Variant) -> api_pb2.FunctionData:
        """The function definition FunctionGet returns (the client needs a ranked function)."""
        spec = variant.spec
        timeout = int(variant.timeout())
        definition = api_pb2.Function(
            function_name=spec.name,
            module_name=spec.target.partition(":")[0],
            app_name=spec.app,
            timeout_secs=timeout,
            function_type=api_pb2.Function.FUNCTION_TYPE_FUNCTION,
            supported_input_formats=_DATA_FORMATS,
            supported_output_formats=_DATA_FORMATS,
        )
        return api_pb2.FunctionData(
            function_name=spec.name,
            module_name=definition.module_name,
            function_type=api_pb2.Function.FUNCTION_TYPE_FUNCTION,
            timeout_secs=timeout,
            ranked_functions=[api_pb2.FunctionData.RankedFunction(rank=0, function=definition)],
            supported_input_formats=_DATA_FORMATS,
            supported_output_formats=_DATA_FORMATS,
        )

    def bind(self, request: api_pb2.FunctionBindParamsRequest) -> Variant:
        """A variant with the request's options: the same request gives the same id."""
        base = self.variant(request.function_id)
        options = request.function_options if request.HasField("function_options") else None
        for secret_id in options.secret_ids if options is not None else ():
            if secret_id not in self.secrets:
                raise GRPCError(Status.NOT_FOUND, f"Secret '{secret_id}' not found")
        for mount in options.volume_mounts if options is not None else ():
            if mount.volume_id not in self.volumes:
                raise GRPCError(Status.NOT_FOUND, f"Volume '{mount.volume_id}' not found")
        key = (base.spec.function_id, request.SerializeToString(deterministic=True))
        bound_id = self._bound_ids.get(key)
        if bound_id is None:
            bound_id = self._bound_ids[key] = new_id("fu")
            self.variants[bound_id] = Variant(bound_id, base.spec, options)
        self.binds.append(
            BindRecord.decode(
                base.spec,
                bound_id,
                options or api_pb2.FunctionOptions(),
                self._name_of,
                self._env_of,
            )
        )
        return self.variants[bound_id]

    def secret(self, request: api_pb2.SecretGetOrCreateRequest) -> NamedObject:
        """Find (or, unless strict, create) a Secret by name; or, for `Secret.from_dict` (an
        `env_dict` and no name, as `with_options(env=...)` sends), a new anonymous one."""
        if not request.deployment_name:
            environment = self.environment(request.environment_name)
            record = NamedObject(new_id("st"), "", environment, dict(request.env_dict))
            self.secrets[record.object_id] = record
            return record
        create = request.object_creation_type in (
            api_pb2.OBJECT_CREATION_TYPE_CREATE_IF_MISSING,
            api_pb2.OBJECT_CREATION_TYPE_EPHEMERAL,
        )
        return self._named(self.secrets, "st", "Secret", request, create)

    def volume(self, request: api_pb2.VolumeGetOrCreateRequest) -> NamedObject:
        """Find (or, unless strict, create) a Volume by name."""
        create = request.object_creation_type in (
            api_pb2.OBJECT_CREATION_TYPE_CREATE_IF_MISSING,
            api_pb2.OBJECT_CREATION_TYPE_EPHEMERAL,
        )
        return self._named(self.volumes, "vo", "Volume", request, create)

    def dict(self, request: api_pb2.DictGetOrCreateRequest) -> NamedObject:
        """Find a Dict by name; create it only if asked (as Modal does, whatever strictness)."""
        environment = self.environment(request.environment_name)
        for record in self.dicts.values():
            if record.name == request.deployment_name and record.environment == environment:
                return record
        if request.object_creation_type not in (
            api_pb2.OBJECT_CREATION_TYPE_CREATE_IF_MISSING,
            api_pb2.OBJECT_CREATION_TYPE_EPHEMERAL,
        ):
            raise GRPCError(
                Status.NOT_FOUND,
                f"Dict '{request.deployment_name}' not found in environment '{environment}'",
            )
        record = NamedObject(new_id("di"), request.deployment_name, environment)
        self.dicts[record.object_id] = record
        return record

    def dict_by_id(self, dict_id: str) -> NamedObject:
        return _found(self.dicts, dict_id, f"Dict {dict_id} not found")

    def _named(
        self,
        table: dict[str, NamedObject],
        prefix: str,
        kind: str,
        request: api_pb2.SecretGetOrCreateRequest | api_pb2.VolumeGetOrCreateRequest,
        create: bool,
    ) -> NamedObject:
        environment = self.environment(request.environment_name)
        for record in table.values():
            if record.name == request.deployment_name and record.environment == environment:
                return record
        if self.strict_objects and not create:
            raise GRPCError(
                Status.NOT_FOUND,
                f"{kind} '{request.deployment_name}' not found in environment '{environment}'",
            )
        record = NamedObject(new_id(prefix), request.deployment_name, environment)
        table[record.object_id] = record
        return record

    def _env_of(self, secret_id: str) -> dict[str, str] | None:
        record = self.secrets.get(secret_id)
        return dict(record.values) if record is not None and not record.name else None

    def _name_of(self, object_id: str) -> str:
        record = self.secrets.get(object_id) or self.volumes.get(object_id)
        return record.name if record is not None else object_id

    # ----- calls -----

    def new_call(self, function_id: str, invocation_type: int) -> CallRecord:
        """Record a function call (FunctionMap)."""
        call = CallRecord(new_id("fc"), self.variant(function_id), invocation_type)
        self.calls[call.call_id] = call
        return call

    def call(self, call_id: str) -> CallRecord:
        """The function call with this id, or NOT_FOUND."""
        return _found(self.calls, call_id, f"Function call '{call_id}' not found")

    def put_inputs(
        self, call: CallRecord, items: Iterable[api_pb2.FunctionPutInputsItem]
    ) -> list[api_pb2.FunctionPutInputsResponseItem]:
        """Queue inputs of a call; each starts as soon as a worker slot is free."""
        if call.cancelled or call.finished_inputs is not None:
            state = "was cancelled" if call.cancelled else "has all its inputs"
            raise GRPCError(Status.FAILED_PRECONDITION, f"Function call {call.call_id} {state}")
        accepted = []
        for item in items:
            record = InputRecord(new_id("in"), call.call_id, item.idx, item.input)
            call.inputs.append(record)
            self.inputs[record.input_id] = record
            task = asyncio.ensure_future(self._run_input(call, record))
            self._tasks[record.input_id] = task
            task.add_done_callback(functools.partial(self._forget_task, record.input_id))
            accepted.append(
                api_pb2.FunctionPutInputsResponseItem(
                    idx=item.idx, input_id=record.input_id, input_jwt=f"jwt-{record.input_id}"
                )
            )
        return accepted

    def finish_inputs(self, call: CallRecord, num_inputs: int) -> None:
        """FunctionFinishInputs: the map call takes no more inputs; it had `num_inputs`."""
        if num_inputs != len(call.inputs):
            counted = f"has {len(call.inputs)} inputs, not {num_inputs}"
            raise GRPCError(Status.INVALID_ARGUMENT, f"Function call {call.call_id} {counted}")
        call.finished_inputs = num_inputs

    async def get_outputs(
        self, request: api_pb2.FunctionGetOutputsRequest
    ) -> api_pb2.FunctionGetOutputsResponse:
        """Outputs, waiting up to request.timeout for one: those in the index range, if the
        request names one (`get(index=...)`); else those after `last_entry_id` in the call's
        output stream, in order of completion (a map's output loop)."""
        call = self.call(request.function_call_id)
        if request.HasField("start_idx") or request.HasField("end_idx"):
            low, high = request.start_idx, max(request.end_idx, request.start_idx)

            def ready() -> list[InputRecord]:
                return [
                    record
                    for record in call.inputs
                    if low <= record.idx <= high and record.finished and not record.cleared
                ]

        else:
            seen = int(request.last_entry_id.partition("-")[0] or 0)
            end = seen + request.max_values if request.max_values else None

            def ready() -> list[InputRecord]:
                return call.outputs[seen:end]

        if request.timeout > 0 and not ready():
            condition = self._condition(call.call_id)
            async with condition:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(
                        condition.wait_for(lambda: bool(ready())), request.timeout
                    )
        records = ready()
        if request.clear_on_success:
            for record in records:
                assert record.output is not None
                if record.output.result.status == Generic.GENERIC_STATUS_SUCCESS:
                    record.cleared = True
        last_entry = max((record.entry for record in records), default=0)
        if not request.HasField("start_idx"):
            last_entry = max(last_entry, int(request.last_entry_id.partition("-")[0] or 0))
        return api_pb2.FunctionGetOutputsResponse(
            outputs=[record.output for record in records if record.output is not None],
            idxs=[record.idx for record in records],
            num_unfinished_inputs=call.unfinished,
            last_entry_id=f"{last_entry}-0",
        )

    async def cancel(self, call_id: str) -> None:
        """Cancel a call: kill its running inputs, wait until their workers are reaped."""
        call = self.call(call_id)
        call.cancelled = True
        ids = [record.input_id for record in call.inputs]
        tasks = [self._tasks[input_id] for input_id in ids if input_id in self._tasks]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def terminate_input(self, input_id: str) -> None:
        """End one input from outside, as when its container is terminated: it gets the
        TERMINATED output a cancelled input gets, and its call's other inputs go on."""
        record = self.inputs[input_id]
        record.terminated = True
        task = self._tasks.get(input_id)
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    # ----- logs -----

    def fetch_logs(self, request: api_pb2.AppFetchLogsRequest) -> api_pb2.AppFetchLogsResponse:
        """AppFetchLogs: of the lines in [since, until) that match the request's filters, the
        newest `limit` (all if 0), oldest first, in one batch per run of lines of one attempt."""
        if request.app_id not in self._app_ids.values():
            raise GRPCError(Status.NOT_FOUND, f"App '{request.app_id}' not found")
        since = request.since.ToNanoseconds() if request.HasField("since") else 0
        until = request.until.ToNanoseconds() if request.HasField("until") else None
        lines: list[tuple[LogLine, str]] = []  # and the function id of its call
        for call in self.calls.values():
            variant = call.variant
            if (
                variant.spec.app_id != request.app_id
                or request.function_call_id not in ("", call.call_id)
                or request.function_id not in ("", variant.function_id, variant.spec.function_id)
                or request.parametrized_function_id not in ("", variant.function_id)
                or request.sandbox_id  # The fake runs no sandboxes.
            ):
                continue
            for line in call.logs:
                if (
                    since <= line.timestamp_ns
                    and (until is None or line.timestamp_ns < until)
                    and request.source
                    in (api_pb2.FILE_DESCRIPTOR_UNSPECIFIED, _FILE_DESCRIPTORS[line.source])
                    and request.task_id in ("", line.task_id)
                    and request.search_text in line.text
                ):
                    lines.append((line, variant.function_id))
        lines.sort(key=lambda item: item[0].timestamp_ns)
        if request.limit:
            lines = lines[-request.limit :]
        response = api_pb2.AppFetchLogsResponse()
        batch: api_pb2.TaskLogsBatch | None = None
        for line, function_id in lines:
            if batch is None or (batch.input_id, batch.task_id) != (line.input_id, line.task_id):
                batch = response.batches.add(
                    task_id=line.task_id, input_id=line.input_id, function_id=function_id
                )
            batch.items.add(
                data=line.text,
                file_descriptor=_FILE_DESCRIPTORS[line.source],
                timestamp=line.timestamp,
                timestamp_ns=line.timestamp_ns,
                function_call_id=line.call_id,
                input_id=line.input_id,
                container_id=line.task_id,
            )
        return response

    # ----- execution -----

    def _forget_task(self, input_id: str, _task: asyncio.Task[None]) -> None:
        self._tasks.pop(input_id, None)

    def _condition(self, call_id: str) -> asyncio.Condition:
        condition = self._conditions.get(call_id)
        if condition is None:
            condition = self._conditions[call_id] = asyncio.Condition()
        return condition

    def _take_fault(self, function: str) -> Fault | None:
        with self._lock:
            for index, fault in enumerate(self._faults):
                if fault.function in (None, function):
                    return self._faults.pop(index)
        return None

    async def _run_input(self, call: CallRecord, record: InputRecord) -> None:
        policy = call.variant.retry_policy()
        user_retries = 0
        try:
            while True:
                outcome = await self._attempt(call, record)
                if outcome.kind == "preempted":
                    record.retry_count += 1
                    self.preemptions += 1
                    continue
                retryable = outcome.kind in ("failure", "timeout", "crash")
                if retryable and user_retries < policy.retries:
                    delay_ms = policy.initial_delay_ms * (
                        (policy.backoff_coefficient or 1.0) ** user_retries
                    )
                    delay_ms = min(delay_ms, policy.max_delay_ms or 60_000)
                    user_retries += 1
                    record.retry_count += 1
                    await asyncio.sleep(delay_ms / 1000 * self.retry_delay_scale)
                    continue
                await self._finish(call, record, outcome)
                return
        except asyncio.CancelledError:
            if not (call.cancelled or record.terminated):
                raise
            await self._finish_cancelled(call, record)

    def _arguments(self, record: InputRecord) -> bytes | None:
        function_input = record.function_input
        if function_input.args_blob_id:
            return self.blob_store.blobs.get(function_input.args_blob_id)
        return function_input.args

    async def _attempt(self, call: CallRecord, record: InputRecord) -> _Outcome:
        spec = call.variant.spec
        fault = self._take_fault(spec.key)
        if fault is not None and fault.kind == "internal_failure":
            return _Outcome("internal_failure", message="Internal failure (injected by the fake)")
        arguments = self._arguments(record)
        if arguments is None:
            message = f"Input blob {record.function_input.args_blob_id} not found"
            return _Outcome("failure", message=message)
        assert self._slots is not None and self._pool is not None
        async with self._slots:
            worker = await self._pool.acquire()
            if record.attempts == 0:
                self.inputs_started += 1
            record.attempts += 1
            record.worker_pids.append(worker.pid)
            record.state = "running"
            self.executions[spec.key] += 1
            self._running += 1
            # Until the attempt ends, what the worker writes is this attempt's log (run()
            # returns, and a killed worker is reaped, only once its output is all read).
            worker.log_sink = functools.partial(self._log, call, record, f"ta-{worker.pid}")
            try:
                outcome = await self._drive(call, record, worker, arguments, fault)
                if outcome.kind in ("crash", "timeout", "preempted"):
                    # Modal's own line in the logs about what ended the attempt.
                    text = outcome.message + "\n"
                    self._log(call, record, outcome.task_id, "system", time.time_ns(), text)
                return outcome
            finally:
                worker.log_sink = None
                self._running -= 1
                record.state = "pending"

    @staticmethod
    def _log(
        call: CallRecord,
        record: InputRecord,
        task_id: str,
        source: LogSource,
        timestamp_ns: int,
        text: str,
    ) -> None:
        """Keep one log line of the current attempt of an input."""
        line = LogLine(
            timestamp_ns, source, text, call.call_id, record.input_id, record.attempts, task_id
        )
        record.logs.append(line)

    async def _drive(
        self,
        call: CallRecord,
        record: InputRecord,
        worker: Worker,
        arguments: bytes,
        fault: Fault | None,
    ) -> _Outcome:
        """Run one attempt in `worker`, enforcing the timeout and any injected fault."""
        assert self._pool is not None
        task_id = f"ta-{worker.pid}"
        started_at = time.time()
        secrets = [self.secrets[secret_id] for secret_id in call.variant.secret_ids()]
        request = {
            "mounts": self._mount_volumes(call.variant, worker),
            "call_id": call.call_id,
            "target": call.variant.spec.target,
            "args": arguments,
            "data_format": record.function_input.data_format,
            "task_id": task_id,
            "input_id": record.input_id,
            "env": {name: value for secret in secrets for name, value in secret.values.items()},
        }
        timeout = call.variant.timeout()
        run = asyncio.ensure_future(worker.run(request))
        try:
            if fault is not None and fault.on_output is not None:
                seen = self._output_seen(worker, fault.on_output)
                try:
                    await asyncio.wait(
                        {run, seen}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
                    )
                    written = seen.done()
                finally:
                    seen.cancel()
                if not written:
                    fault = None  # The attempt ended or timed out first: no fault.
            if fault is not None:
                remaining = max(0.0, timeout - (time.time() - started_at))
                await asyncio.wait({run}, timeout=min(fault.after, remaining))
                if not run.done():
                    await self._stop(worker, run)
                    kind: _OutcomeKind = "preempted" if fault.kind == "preempt" else "crash"
                    message = f"Worker of input {record.input_id} was killed (injected {kind})"
                    return _Outcome(kind, message=message, task_id=task_id, started_at=started_at)
            remaining = max(0.0, timeout - (time.time() - started_at))
            await asyncio.wait({run}, timeout=remaining)
            if not run.done():
                await self._stop(worker, run)
                message = f"Task's current input {record.input_id} hit its timeout of {timeout:g}s"
                return _Outcome("timeout", message=message, task_id=task_id, started_at=started_at)
            reply = run.result()
        except WorkerDied as died:
            await self._pool.discard(worker)
            message = (
                f"Runner for input {record.input_id} terminated unexpectedly "
                f"(exit code {died.returncode})"
            )
            return _Outcome("crash", message=message, task_id=task_id, started_at=started_at)
        except asyncio.CancelledError:
            await self._stop(worker, run)
            raise
        worker.log_sink = None  # Its output is its next input's.
        self._pool.release(worker)
        kind = "success" if reply["ok"] else "failure"
        return _Outcome(kind, reply=reply, task_id=task_id, started_at=started_at)

    @staticmethod
    def _output_seen(worker: Worker, text: str) -> asyncio.Future[None]:
        """A future done as soon as `worker`, in this attempt, writes a line containing `text`
        (its log sink, which keeps the attempt's log, is wrapped for the attempt)."""
        seen: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        keep = worker.log_sink

        def watch(stream: Stream, timestamp_ns: int, line: str) -> None:
            if keep is not None:
                keep(stream, timestamp_ns, line)
            if text in line and not seen.done():
                seen.set_result(None)

        worker.log_sink = watch
        return seen

    async def _stop(self, worker: Worker, run: asyncio.Future[Any]) -> None:
        assert self._pool is not None
        run.cancel()
        await self._pool.discard(worker)
        await asyncio.gather(run, return_exceptions=True)

    def _result(
        self, call: CallRecord, outcome: _Outcome
    ) -> tuple[api_pb2.GenericResult, api_pb2.DataFormat.ValueType]:
        """The GenericResult and data format a container would have reported."""
        if outcome.reply is None:
            status = {
                "failure": Generic.GENERIC_STATUS_FAILURE,
                "crash": Generic.GENERIC_STATUS_FAILURE,
                "timeout": Generic.GENERIC_STATUS_TIMEOUT,
                "internal_failure": Generic.GENERIC_STATUS_INTERNAL_FAILURE,
            }[outcome.kind]
            result = Generic(status=status, exception=outcome.message)
            return result, api_pb2.DATA_FORMAT_UNSPECIFIED
        reply = outcome.reply
        limit = MAX_OBJECT_SIZE_BYTES
        if call.invocation_type == api_pb2.FUNCTION_CALL_INVOCATION_TYPE_ASYNC:
            limit = min(MAX_OBJECT_SIZE_BYTES, MAX_ASYNC_OBJECT_SIZE_BYTES)
        result = Generic()
        data: bytes = reply["data"]
        if len(data) > limit:
            result.data_blob_id = self.blob_store.put(data)
        elif data:
            result.data = data
        if reply["ok"]:
            result.status = Generic.GENERIC_STATUS_SUCCESS
        else:
            result.status = Generic.GENERIC_STATUS_FAILURE
            result.exception = reply["exception"]
            result.traceback = reply["traceback"]
            result.serialized_tb = reply["serialized_tb"]
            result.tb_line_cache = reply["tb_line_cache"]
        return result, reply["data_format"]

    async def _finish(self, call: CallRecord, record: InputRecord, outcome: _Outcome) -> None:
        result, data_format = self._result(call, outcome)
        self._give_output(
            call,
            record,
            "done",
            result,
            data_format=data_format,
            task_id=outcome.task_id,
            input_started_at=outcome.started_at,
        )
        self.inputs_finished += 1
        await self._notify(call)

    async def _finish_cancelled(self, call: CallRecord, record: InputRecord) -> None:
        # What a container reports for a cancelled input (container_io_manager.py):
        # GENERIC_STATUS_TERMINATED with no data; the client raises RemoteError for it.
        terminated = Generic(
            status=Generic.GENERIC_STATUS_TERMINATED,
            exception=f"Input {record.input_id} was cancelled",
        )
        self._give_output(call, record, "cancelled", terminated)
        self.inputs_cancelled += 1
        await self._notify(call)

    @staticmethod
    def _give_output(
        call: CallRecord,
        record: InputRecord,
        state: InputState,
        result: api_pb2.GenericResult,
        **fields: Any,
    ) -> None:
        """The input's output, which FunctionGetOutputs hands out from now on."""
        call.outputs.append(record)
        record.entry = len(call.outputs)
        record.output = api_pb2.FunctionGetOutputsItem(
            result=result,
            idx=record.idx,
            input_id=record.input_id,
            output_created_at=time.time(),
            retry_count=record.retry_count,
            **fields,
        )
        record.state = state

    async def _notify(self, call: CallRecord) -> None:
        condition = self._condition(call.call_id)
        async with condition:
            condition.notify_all()
