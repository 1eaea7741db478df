"""``ModalExecutor``: redun jobs in, calls to the generic worker out, results back to redun."""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from redun.executors.base import Executor, register_executor
from redun.scheduler import Traceback

from redun_modal_executor.code_package import build_code_package
from redun_modal_executor.config import (
    CallOptions,
    ExecutorConfig,
    TaskOptionError,
    resolve_call_options,
)
from redun_modal_executor.db_lock import busy_message, open_lock
from redun_modal_executor.errors import (
    AppNotDeployedError,
    CallCancelledError,
    CallTimeoutError,
    CodePackageError,
    CodeSkewError,
    DatabaseBusyError,
    LaunchError,
    ModalAuthError,
    PayloadError,
    RemoteCallError,
    SerializationError,
)
from redun_modal_executor.inflight import InflightCalls
from redun_modal_executor.launch import (
    build_launch,
    create_volume,
    follow_hint,
    is_launch,
    launch_options,
)
from redun_modal_executor.payload import CallKind, Success, decode_result, encode_call
from redun_modal_executor.transport import Transport, create_transport

if TYPE_CHECKING:
    from redun.scheduler import Job, Scheduler


# Errors that fail one job before it is sent (options, arguments, code, launch database).
_JOB_ERRORS = (
    TaskOptionError,
    SerializationError,
    CodePackageError,
    LaunchError,
    DatabaseBusyError,
)


@dataclass
class _InFlight:
    """A submitted job, and what it takes to run it again if it may be retried."""

    job: Job
    kind: CallKind
    label: str
    options: CallOptions
    retries_left: int
    launch: dict[str, Any] | None  # A launch's database (see launch), for each encoding.
    # Not written yet: they go with the call id once spawned (one transaction per job), or with
    # the outcome if the job ends first.
    tags: list[tuple[str, Any]]


class _Progress:
    """Counts finished calls; says so in the log at most every ``interval`` seconds."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.done = self.failed = 0
        self._last = time.monotonic()

    def count(self, failed: bool, in_flight: int) -> str | None:
        self.failed += failed
        self.done += not failed
        now = time.monotonic()
        if now - self._last < self.interval:
            return None
        self._last = now
        return f"{in_flight} job(s) in flight, {self.done} done, {self.failed} failed"

    def finish(self) -> str | None:
        """Reset for the next run; the summary of this one, if it ran anything."""
        summary = None
        if self.done or self.failed:
            summary = f"{self.done} done, {self.failed} failed"
        self.done = self.failed = 0
        self._last = time.monotonic()
        return summary


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
        self._jobs: dict[str, _InFlight] = {}
        self._progress = _Progress(self.config.progress_interval)

    def supports_async(self) -> bool:
        return True

    def scratch_root(self) -> str:
        return self.config.scratch

    def submit(self, job: Job) -> None:
        self._submit(job, CallKind.TASK)

    def submit_script(self, job: Job) -> None:
        assert self._scheduler
        if not is_launch(job):
            self._submit(job, CallKind.SCRIPT)
        elif self._scheduler.is_running:  # `redun launch --wait`: an ordinary job.
            self._submit(job, CallKind.LAUNCH)
        else:  # `redun launch`: submitted to a scheduler that never runs, then stopped.
            self._launch_detached(job)

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
            summary = self._progress.finish()
        if summary:
            self.log(f"{self.config.backend} calls: {summary}")

    def _prepare(
        self, job: Job, kind: CallKind
    ) -> tuple[Transport, bytes, CallOptions, dict[str, Any] | None]:
        """The job's call: where it goes, its payload, its options and, for a launch, its
        database. Raises one of ``_JOB_ERRORS`` when the job cannot be sent as it is."""
        job_options = job.get_options()
        options = resolve_call_options(job.task.fullname, job_options, self.config)
        launch = None
        if kind == CallKind.LAUNCH:
            launch = build_launch(self.config)
            options = launch_options(options, self.config, launch, job_options)
            self._prepare_database(launch)
        transport, code = self._ready_transport()
        return transport, _encode(job, kind, code, launch), options, launch

    def _launch_detached(self, job: Job) -> None:
        """`redun launch` without --wait: start the scheduler's call, say how to follow it,
        and leave it running (redun stops this executor right after)."""
        try:
            transport, payload, options, launch = self._prepare(job, CallKind.LAUNCH)
            call_id = transport.spawn_detached(f"Task {job.task.fullname}", payload, options)
        except (*_JOB_ERRORS, AppNotDeployedError, ModalAuthError, RemoteCallError) as error:
            raise _launch_failed(error) from None
        assert launch is not None
        self.log(follow_hint(call_id, launch))

    def _submit(self, job: Job, kind: CallKind) -> None:
        assert self._scheduler
        try:
            transport, payload, options, launch = self._prepare(job, kind)
        except _JOB_ERRORS as error:
            self._reject(job, error)
            return
        label = f"Task {job.task.fullname}"
        tags = self._where_tags(options)
        reattach_to = self._inflight.claim(job.eval_hash) if self._inflight else None
        if reattach_to is not None:
            self.log(f"{label}: reattaching to Modal call {reattach_to}, left by an earlier run")
            tags.append(("modal_call", reattach_to))
        if reattach_to is not None or not transport.reattaches:
            # No call id to wait for (the call is known, or the transport has none): write now.
            # Not with the outcome: redun 0.44 queries a job's tags twice when it ends.
            self._scheduler.add_job_tags(job, tags)
            tags = []
        retries = options.retries or 0
        entry = _InFlight(job, kind, label, options, retries, launch, tags)
        with self._lock:
            self._jobs[job.id] = entry
        transport.spawn(job.id, label, payload, options, reattach_to)

    def _ready_transport(self) -> tuple[Transport, dict[str, Any] | None]:
        """The transport, started on first use, with the code package shipped if it needs one."""
        with self._lock:
            if self._transport is None:
                self._transport = create_transport(
                    self.config, self._on_done, self._on_spawned, self._reencode
                )
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

    def _prepare_database(self, launch: dict[str, Any]) -> None:
        """Create the launch's Volume if missing, and refuse a launch whose sqlite database
        another launched scheduler is writing (the launched call checks again, under the
        lock; this says so before anything starts)."""
        database = launch["database"]
        if database["kind"] != "volume":
            return
        lock = open_lock(database)
        try:
            create_volume(database)
            holder = lock.holder()
        except Exception as error:  # Modal unreachable: the spawn, or the call, will tell.
            self.log(f"could not check who uses {lock.where}: {type(error).__name__}: {error}")
            return
        if holder is not None:
            raise DatabaseBusyError(busy_message(lock.where, holder))

    def _open_inflight_calls(self, transport: Transport) -> InflightCalls | None:
        """The in-flight call table, where reattaching is on and possible."""
        backend = self._scheduler.backend if self._scheduler else None
        engine = getattr(backend, "engine", None)
        if not (self.config.reattach and transport.reattaches and engine is not None):
            return None
        if engine.dialect.name == "sqlite" and engine.url.database in (None, "", ":memory:"):
            # Each thread would see its own empty in-memory database, and no later process
            # could reattach from it anyway.
            return None
        # redun guards its database with this lock; sharing it keeps sqlite to one writer.
        return InflightCalls(engine, getattr(backend, "_db_lock", None), self.log)

    def _where_tags(self, options: CallOptions) -> list[tuple[str, Any]]:
        """Job tags saying where and how a job runs, for `redun log` and `redun console`."""
        tags: list[tuple[str, Any]] = [("modal_backend", self.config.backend)]
        if self.config.backend == "modal":
            tags.append(("modal_app", self.config.app_name))
        for name, value in options.set_options().items():
            if name == "volumes":
                value = dict(value)
            elif isinstance(value, tuple):
                value = list(value)
            tags.append((f"modal_{name}", value))
        return tags

    def _on_spawned(self, key: str, call_id: str) -> None:
        """Tag the job with its call (and its other tags not written yet) and queue the call's
        record for reattaching."""
        with self._lock:
            entry, inflight = self._jobs.get(key), self._inflight
            if entry is None or self._scheduler is None:
                return
            tags, entry.tags = [*entry.tags, ("modal_call", call_id)], []
        self._scheduler.add_job_tags(entry.job, tags)
        if inflight is None or not entry.job.eval_hash:
            return
        inflight.record(entry.job.eval_hash, call_id, entry.job.task.fullname)

    def _reencode(self, key: str) -> bytes:
        """A job's payload once more, to send it again (payloads are not kept: they can be big)."""
        with self._lock:
            entry, code = self._jobs[key], self._code
        return _encode(entry.job, entry.kind, code, entry.launch)

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

    def _report_progress(self, failed: bool) -> None:
        with self._lock:
            line = self._progress.count(failed, in_flight=len(self._jobs))
        if line:
            self.log(line)

    def _reject(
        self, job: Job, error: BaseException, tags: list[tuple[str, Any]] | None = None
    ) -> None:
        assert self._scheduler
        traceback = Traceback(error, [], logs=getattr(error, "logs", None))
        self._scheduler.reject_job(job, error, traceback, job_tags=tags or [])

    def _on_done(self, key: str, outcome: bytes | BaseException) -> None:
        """Called from the transport's thread when a call has finished, failed or was cancelled."""
        with self._lock:
            entry = self._jobs.pop(key, None)
            transport = self._transport
        if entry is None or self._scheduler is None or transport is None:
            return
        job = entry.job
        if isinstance(outcome, BaseException):
            error, traceback = outcome, Traceback(outcome, [], logs=getattr(outcome, "logs", None))
        else:
            try:
                result = decode_result(outcome)
            except Exception as unreadable:
                self._report_progress(failed=True)
                self._reject(
                    job,
                    PayloadError(
                        f"{entry.label}: its result envelope could not be loaded here: "
                        f"{type(unreadable).__name__}: {unreadable}"
                    ),
                    entry.tags,
                )
                return
            if isinstance(result, Success):
                self._report_progress(failed=False)
                self._scheduler.done_job(job, result.value, job_tags=entry.tags)
                return
            error = result.error
            traceback = Traceback(result.error, result.frames, logs=result.logs)
        if entry.retries_left and _retriable(error):
            entry.retries_left -= 1
            self.log(
                f"{entry.label} failed ({type(error).__name__}: {error}); running it again "
                f"({entry.retries_left} more retr{'y' if entry.retries_left == 1 else 'ies'} left)"
            )
            with self._lock:
                self._jobs[key] = entry
                code = self._code
            payload = _encode(job, entry.kind, code, entry.launch)
            transport.spawn(key, entry.label, payload, entry.options)
            return
        self._report_progress(failed=True)
        self._scheduler.reject_job(job, error, traceback, job_tags=entry.tags)


def _encode(
    job: Job, kind: CallKind, code: dict[str, Any] | None, launch: dict[str, Any] | None
) -> bytes:
    """The call payload of ``job``; raises ``SerializationError`` naming a bad argument."""
    assert job.args is not None
    args, kwargs = job.args
    return encode_call(
        job.task, args, kwargs, kind, job.id, job.eval_hash or "", code=code, launch=launch
    )


def _launch_failed(error: Exception) -> Exception:
    """What `redun launch` shows for an error (one line, exit status 1), not a traceback."""
    from redun.cli import RedunClientError

    return RedunClientError(f"redun launch: {error}")


def _retriable(error: BaseException) -> bool:
    """A task's own exception, or a local worker that died: worth another run if asked for.

    Not: timeouts (reported, never silently rerun), cancellations, problems of configuration or
    code that would fail the same way again, and Modal call failures (Modal's own ``retries``
    has already rerun those).
    """
    deterministic = (
        CallTimeoutError,
        CallCancelledError,
        RemoteCallError,
        AppNotDeployedError,
        ModalAuthError,
        PayloadError,
        CodeSkewError,
        CodePackageError,
        SerializationError,
    )
    return not isinstance(error, deterministic)
