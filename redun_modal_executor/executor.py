"""``ModalExecutor``: redun jobs in, calls to the generic worker out, results back to redun."""

from __future__ import annotations

import os
import threading
from typing import TYPE_CHECKING, Any

from redun.executors.base import Executor, register_executor
from redun.scheduler import Traceback

from redun_modal_executor.code_package import build_code_package
from redun_modal_executor.config import (
    ExecutorConfig,
    TaskOptionError,
    resolve_call_options,
)
from redun_modal_executor.errors import CodePackageError, PayloadError, SerializationError
from redun_modal_executor.inflight import InflightCalls
from redun_modal_executor.payload import CallKind, Success, decode_result, encode_call
from redun_modal_executor.transport import Transport, create_transport

if TYPE_CHECKING:
    from redun.scheduler import Job, Scheduler


@register_executor("modal")
class ModalExecutor(Executor):
    """Runs every job through one generic worker function, on Modal or on local processes.

    Config is parsed here once, without touching the network: redun builds every configured
    executor, even for ``redun log``. Workers start with the first submitted job.
    """

    def __init__(
        self,
        name: str,
        scheduler: Scheduler | None = None,
        config=None,
    ) -> None:
        super().__init__(name, scheduler=scheduler)
        self.config = ExecutorConfig.from_section(name, config)
        self._lock = threading.Lock()
        self._transport: Transport | None = None
        self._code: dict[str, Any] | None = None  # The shipped code package's reference.
        self._code_error: str | None = None
        self._inflight: InflightCalls | None = None
        self._jobs: dict[str, Job] = {}

    def supports_async(self) -> bool:
        return True

    def scratch_root(self) -> str:
        return self.config.scratch

    def submit(self, job: Job) -> None:
        self._submit(job, CallKind.TASK)

    def submit_script(self, job: Job) -> None:
        self._submit(job, CallKind.SCRIPT)

    def stop(self) -> None:
        """Cancel the calls still in flight; the next submission starts afresh."""
        with self._lock:
            transport, self._transport, self._code = self._transport, None, None
            inflight, self._inflight = self._inflight, None
        if transport is not None:
            cancelled = transport.stop()
            if cancelled:
                self.log(f"cancelled {cancelled} call(s) still in flight")
        if inflight is not None:
            inflight.release()
        with self._lock:
            self._jobs.clear()

    def _submit(self, job: Job, kind: CallKind) -> None:
        assert self._scheduler and job.args is not None
        try:
            options = resolve_call_options(job.task.fullname, job.get_options(), self.config)
            transport, code = self._ready_transport()
            args, kwargs = job.args
            payload = encode_call(
                job.task, args, kwargs, kind, job.id, job.eval_hash or "", code=code
            )
        except (TaskOptionError, SerializationError, CodePackageError) as error:
            self._reject(job, error)
            return
        label = f"Task {job.task.fullname}"
        reattach_to = self._inflight.claim(job.eval_hash) if self._inflight else None
        if reattach_to is not None:
            self.log(f"{label}: reattaching to Modal call {reattach_to}, left by an earlier run")
        with self._lock:
            self._jobs[job.id] = job
        transport.spawn(job.id, label, payload, options, reattach_to)

    def _ready_transport(self) -> tuple[Transport, dict[str, Any] | None]:
        """The transport, started on first use, with the code package shipped if it needs one."""
        with self._lock:
            if self._transport is None:
                self._transport = create_transport(self.config, self._on_done, self._on_spawned)
                self._inflight = self._open_inflight_calls(self._transport)
                self._code, self._code_error = None, None
                if self._transport.ships_code and self.config.ship_code:
                    try:
                        self._code = self._ship_code(self._transport)
                    except CodePackageError as error:
                        self._code_error = str(error)  # Fails every job, without a rescan each.
            if self._code_error is not None:
                raise CodePackageError(self._code_error)
            return self._transport, self._code

    def _open_inflight_calls(self, transport: Transport) -> InflightCalls | None:
        """The in-flight call table, where reattaching is on and possible."""
        backend = self._scheduler.backend if self._scheduler else None
        engine = getattr(backend, "engine", None)
        if not (self.config.reattach and transport.reattaches and engine is not None):
            return None
        # redun guards its database with this lock; sharing it keeps sqlite to one writer.
        return InflightCalls(engine, getattr(backend, "_db_lock", None))

    def _on_spawned(self, key: str, call_id: str) -> None:
        """Record a new call for reattaching (from a worker thread; failures only warn)."""
        with self._lock:
            job, inflight = self._jobs.get(key), self._inflight
        if job is None or inflight is None or not job.eval_hash:
            return
        try:
            inflight.record(job.eval_hash, call_id, job.task.fullname)
        except Exception as error:
            self.log(f"could not record Modal call {call_id} for reattaching: {error}")

    def _ship_code(self, transport: Transport) -> dict[str, Any]:
        package = build_code_package(
            os.getcwd(), self.config.code_includes, self.config.code_excludes
        )
        reference = package.reference(transport.upload_code(package))
        self.log(
            f"code package {package.digest[:12]}: {package.files} file(s), "
            f"{len(package.data) / 1024:.0f} KiB"
        )
        return reference

    def _reject(self, job: Job, error: BaseException) -> None:
        assert self._scheduler
        traceback = Traceback(error, [], logs=getattr(error, "logs", None))
        self._scheduler.reject_job(job, error, traceback)

    def _on_done(self, key: str, outcome: bytes | BaseException) -> None:
        """Called from the transport's thread when a call has finished, failed or was cancelled."""
        with self._lock:
            job = self._jobs.pop(key, None)
        if job is None or self._scheduler is None:
            return
        if isinstance(outcome, BaseException):
            self._reject(job, outcome)
            return
        try:
            result = decode_result(outcome)
        except Exception as error:
            self._reject(
                job,
                PayloadError(
                    f"Task {job.task.fullname}: its result envelope could not be loaded here: "
                    f"{type(error).__name__}: {error}"
                ),
            )
            return
        if isinstance(result, Success):
            self._scheduler.done_job(job, result.value)
        else:
            traceback = Traceback(result.error, result.frames, logs=result.logs)
            self._scheduler.reject_job(job, result.error, traceback)
