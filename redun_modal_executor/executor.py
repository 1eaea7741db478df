"""``ModalExecutor``: redun jobs in, calls to the generic worker out, results back to redun."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from redun.executors.base import Executor, register_executor
from redun.scheduler import Traceback

from redun_modal_executor.backends import Backend, BackendRef, backend_class, create_backend
from redun_modal_executor.calls import Burst, Call, CallAddress, Reports
from redun_modal_executor.code_package import build_code_package
from redun_modal_executor.config import (
    CallOptions,
    ExecutorConfig,
    resolve_call_options,
)
from redun_modal_executor.errors import (
    JOB_ERRORS,
    AppNotDeployedError,
    CallCancelledError,
    CodePackageError,
    ModalAuthError,
    RemoteCallError,
    VolumeFileError,
    as_exception,
    is_retriable,
    recordable,
)
from redun_modal_executor.files.binding import volume_backend
from redun_modal_executor.files.call_volumes import call_access
from redun_modal_executor.files.stores import forget_listings
from redun_modal_executor.inflight import InflightCalls, open_inflight_calls
from redun_modal_executor.launch.spec import LaunchSpec
from redun_modal_executor.launch.submit import (
    build_launch,
    check_launch,
    checked_encode,
    follow_hint,
    is_launch,
    launch_options,
)
from redun_modal_executor.payload import (
    CallKind,
    CodeReference,
    Failure,
    Success,
    decode_outcome,
    encode_call,
)
from redun_modal_executor.progress import Progress
from redun_modal_executor.tags import address_tags, where_tags

if TYPE_CHECKING:
    from redun.scheduler import Job, Scheduler


@dataclass
class _Job:
    """A submitted job: how to encode its call, and what it takes to run it again."""

    job: Job
    label: str
    options: CallOptions
    encode: Callable[[], bytes]
    retries_left: int
    # Not written yet: they go with the call id once spawned (one transaction per job), or with
    # the outcome if the job ends first.
    tags: list[tuple[str, Any]]


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
        # Reentrant: a backend may finish a call inside spawn() (a payload it cannot take),
        # and report it on the same thread.
        self._lock = threading.RLock()
        self._backend: Backend | None = None
        self._code: CodeReference | None = None  # The shipped code package's reference.
        self._code_error: str | None = None
        self._inflight: InflightCalls | None = None
        self._tagging = False  # Whether jobs get tags (``job_tags``), once the backend is up.
        self._burst: Burst | None = None  # Calls held for a backend that batches.
        self._jobs: dict[Call, _Job] = {}  # Calls in flight, and their jobs.
        self._reports = Reports()
        self._progress = Progress(self.config.progress_interval)
        self._volume_files: BackendRef | None = None  # Resolved on first use.

    def volume_files_backend(self) -> BackendRef | None:
        """The backend that serves ``modalvol://`` Files to this executor's scheduler, unless
        ``volume_files = false`` (see ``files.binding``)."""
        if self.config.volume_files and self._volume_files is None:
            self._volume_files = backend_class(self.config.backend).ref_for(self.config)
        return self._volume_files

    def _volumes_of(self) -> BackendRef | None:
        """The backend whose Volumes this scheduler's ``modalvol://`` Files name, if one does
        (sections that disagree leave each call to its own backend's)."""
        try:
            return volume_backend(self._scheduler.executors.values() if self._scheduler else [])
        except VolumeFileError:
            return None

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
            backend, self._backend, self._code = self._backend, None, None
            inflight, self._inflight = self._inflight, None
            burst, self._burst = self._burst, None
        for call in burst.drop() if burst is not None else []:
            call.finish(CallCancelledError(f"{call.label}: cancelled before it ran"))
        if backend is not None:
            cancelled = backend.stop()
            if cancelled:
                self.log(f"cancelled {cancelled} call(s) still in flight")
        self._reports.drain()  # redun has every outcome once this returns.
        if inflight is not None:
            inflight.release()
        with self._lock:
            self._jobs.clear()
            summary = self._progress.finish()
        if summary:
            self.log(f"{self.config.backend} calls: {summary}")

    def _prepare(self, job: Job, kind: CallKind) -> tuple[Backend, _Job, LaunchSpec | None]:
        """The job's call: where it goes, how it is encoded and, for a launch, what it
        carries. Raises one of ``JOB_ERRORS`` when the job cannot be sent as it is."""
        job_options = job.get_options()
        options = resolve_call_options(job.task.fullname, job_options, self.config)
        backend, code = self._ready_backend()
        launch = None
        if kind == CallKind.LAUNCH:
            launch = build_launch(self.config, backend)
            options = launch_options(options, self.config, backend, launch, job_options)
        assert job.args is not None
        args, kwargs = job.args
        options, volumes = call_access(
            options, [args, kwargs], backend, self._volumes_of(), self.config.volume_files_mount
        )

        def encode() -> bytes:
            return encode_call(
                job.task, args, kwargs, kind, job.id, job.eval_hash or "", code, launch, volumes
            )

        label = f"Task {job.task.fullname}"
        return backend, _Job(job, label, options, encode, options.retries or 0, []), launch

    def _launch_detached(self, job: Job) -> None:
        """`redun launch` without --wait: start the scheduler's call, say how to follow it,
        and leave it running (redun stops this executor right after)."""
        try:
            backend, entry, launch = self._prepare(job, CallKind.LAUNCH)
            assert launch is not None
            check_launch(backend, launch, self.log)
            call = Call(entry.label, entry.options, entry.encode, entry.encode())
            call_id = backend.spawn_detached(call)
        except (*JOB_ERRORS, AppNotDeployedError, ModalAuthError, RemoteCallError) as error:
            raise _launch_failed(error) from None
        self.log(follow_hint(call_id, launch))

    def _submit(self, job: Job, kind: CallKind) -> None:
        assert self._scheduler
        try:
            backend, entry, launch = self._prepare(job, kind)
            payload: bytes | None = None
            if launch is None:
                payload = entry.encode()
            else:  # Encoded by the backend, off this thread: the check may ask Modal.
                entry.encode = checked_encode(backend, launch, entry.encode, self.log)
        except JOB_ERRORS as error:
            self._reject(job, error)
            return
        tags = where_tags(backend, entry.options) if self._tagging else []
        claimed = self._inflight.claim(job.eval_hash) if self._inflight else None
        reattach_to = CallAddress.parse(claimed) if claimed is not None else None
        if reattach_to is not None:
            self.log(
                f"{entry.label}: reattaching to Modal call {reattach_to.words()}, left by an "
                "earlier run"
            )
            tags.extend(address_tags(reattach_to))
        if tags and (reattach_to is not None or not backend.reattaches):
            # No call id to wait for (the call is known, or the backend has none): write now.
            # Not with the outcome: redun 0.44 queries a job's tags twice when it ends.
            self._scheduler.add_job_tags(job, tags)
            tags = []
        entry.tags = tags
        self._send(backend, entry, payload, reattach_to)

    def _send(
        self,
        backend: Backend,
        entry: _Job,
        payload: bytes | None,
        reattach_to: CallAddress | None = None,
    ) -> None:
        """Hand the job's call to the backend; its reports come back through ``_reports``."""
        report = _now if backend.reports_on_own_thread else self._reports.put
        call = Call(
            entry.label,
            entry.options,
            entry.encode,
            payload,
            reattach_to,
            on_spawned=lambda call: report(lambda: self._spawned(entry, call)),
            on_done=lambda call: report(lambda: self._finished(entry, call)),
        )
        with self._lock:
            # Under the lock: a retry racing stop() either reaches the backend before stop()
            # takes it (and is cancelled with the rest) or finds it gone, never a stopped one.
            if self._backend is not backend:
                return
            self._jobs[call] = entry
            if self._burst is None:
                backend.spawn([call])
            else:
                self._burst.add(call)

    def _spawn_burst(self, backend: Backend, calls: list[Call]) -> None:
        with self._lock:
            if self._backend is backend:  # Else stop() has cancelled them.
                backend.spawn(calls)

    def _ready_backend(self) -> tuple[Backend, CodeReference | None]:
        """The backend, started on first use, with the code package shipped if it needs one."""
        with self._lock:
            if self._backend is None:
                self._backend = create_backend(self.config)
                self._tagging = self.config.job_tags
                if self._tagging is None:  # Tags lead somewhere where jobs run elsewhere.
                    self._tagging = self._backend.remote
                self._inflight = self._open_inflight_calls(self._backend)
                self._burst = self._new_burst(self._backend)
                self._code, self._code_error = None, None
                if self._backend.ships_code and self.config.ship_code:
                    try:
                        self._code = self._ship_code(self._backend)
                    except CodePackageError as error:
                        self._code_error = str(error)  # Fails every job, without a rescan each.
            if self._code_error is not None:
                raise CodePackageError(self._code_error)
            return self._backend, self._code

    def _new_burst(self, backend: Backend) -> Burst | None:
        """Where a backend that batches takes its calls, a burst at a time."""
        scheduler = self._scheduler
        if not (backend.batches and scheduler and scheduler.is_running):
            return None
        return Burst(scheduler.events_queue.put, lambda calls: self._spawn_burst(backend, calls))

    def _open_inflight_calls(self, backend: Backend) -> InflightCalls | None:
        """The in-flight call table, where reattaching is on and possible."""
        if not (self.config.reattach and backend.reattaches and self._scheduler):
            return None
        return open_inflight_calls(self._scheduler.backend, self.log)

    def _ship_code(self, backend: Backend) -> CodeReference:
        package = build_code_package(
            os.getcwd(), self.config.code_includes, self.config.code_excludes
        )
        backend.upload_code(package)
        self.log(
            f"code package {package.digest[:12]}: {package.files} file(s), "
            f"{len(package.data) / 1024:.0f} KiB"
        )
        return CodeReference(package.digest, package.import_paths, backend.ref)

    # On the reports thread.

    def _spawned(self, entry: _Job, call: Call) -> None:
        """Tag the job with its call (and its other tags not written yet) and queue the call's
        record for reattaching."""
        assert call.address is not None
        with self._lock:
            if call not in self._jobs or self._scheduler is None:
                return
            tags, entry.tags = entry.tags, []
            if self._tagging:
                tags = [*tags, *address_tags(call.address)]
            inflight = self._inflight
        job = entry.job
        if inflight is not None and job.eval_hash:  # The tags go in the ledger's batches.
            inflight.record(job.eval_hash, str(call.address), job.task.fullname, job.id, tags)
        elif tags:
            self._scheduler.add_job_tags(job, tags)

    def _finished(self, entry: _Job, call: Call) -> None:
        """A call has finished, failed or was cancelled: tell redun, or run it again."""
        forget_listings()  # The job may have written to Volumes that the client listed.
        with self._lock:
            known = self._jobs.pop(call, None) is not None
            backend = self._backend
        if not known or self._scheduler is None or backend is None:
            return
        task = entry.job.task.fullname
        # Taken, not kept: the envelope is gone before redun stores the value.
        result = decode_outcome(call.take_outcome(), entry.label, task)
        if isinstance(result, Success):
            self._report_progress(failed=False)
            self._scheduler.done_job(entry.job, result.value, job_tags=entry.tags)
            return
        if isinstance(result, Failure):
            error, frames, logs = result.error, result.frames, result.logs
        else:
            error, frames, logs = result, [], getattr(result, "logs", None)
        error = as_exception(error, task)
        if entry.retries_left and is_retriable(error):
            self._retry(backend, entry, error)
            return
        self._fail(entry, error, Traceback(recordable(error, task), frames, logs=logs))

    def _retry(self, backend: Backend, entry: _Job, error: BaseException) -> None:
        entry.retries_left -= 1
        left = entry.retries_left
        self.log(
            f"{entry.label} failed ({type(error).__name__}: {error}); running it again "
            f"({left} more retr{'y' if left == 1 else 'ies'} left)"
        )
        try:
            payload = entry.encode()
        except JOB_ERRORS as encode_error:
            self._fail(entry, encode_error, Traceback(encode_error, []))
            return
        self._send(backend, entry, payload)

    def _fail(self, entry: _Job, error: BaseException, traceback: Traceback) -> None:
        assert self._scheduler
        self._report_progress(failed=True)
        self._scheduler.reject_job(entry.job, error, traceback, job_tags=entry.tags)

    def _report_progress(self, failed: bool) -> None:
        with self._lock:
            line = self._progress.count(failed, in_flight=len(self._jobs))
        if line:
            self.log(line)

    def _reject(self, job: Job, error: BaseException) -> None:
        assert self._scheduler
        traceback = Traceback(error, [], logs=getattr(error, "logs", None))
        self._scheduler.reject_job(job, error, traceback)


def _now(report: Callable[[], None]) -> None:
    report()


def _launch_failed(error: Exception) -> Exception:
    """What `redun launch` shows for an error (one line, exit status 1), not a traceback."""
    from redun.cli import RedunClientError

    return RedunClientError(f"redun launch: {error}")
