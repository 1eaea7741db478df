"""The fake Modal control plane (tests/fake_modal), served from a process of its own.

The benchmark's scheduler process talks to it with the real `modal` client, exactly as the
e2e tests do; serving it from another process keeps its CPU, its blobs and its records out
of the scheduler process's time and memory measurements.

Two departures from the fake as the tests use it, both on the server side only:

- Inputs run on the threads of one worker process (`_lane_worker`: a Modal container with
  input concurrency) instead of one process per running input: 500 inputs sleeping at once
  would otherwise need 500 processes of ~100 MB and ~0.7 s of start-up CPU each.
- `max_streams` optionally raises the HTTP/2 concurrent-stream limit the server announces
  (grpclib inherits h2's default of 100 per connection). Every call in flight holds one
  stream for its long-polled `FunctionGetOutputs`, so this limit caps the calls in flight.

python -m benchmarks.fake_server --lanes N [--max-streams S] serves until stdin closes; it
prints the environment that points a client at it as one JSON line, then answers one JSON
command per line (see `_answer`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import pickle
import resource
import struct
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
TESTS = ROOT / "tests"
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))  # the fake is test infrastructure, in tests/fake_modal

APP = "redun-modal-executor"
FUNCTION = "run_job"
TARGET = "redun_modal_executor.backends.modal.app:run_job"
_HEADER = struct.Struct(">Q")


# ---------------------------------------------------------------------------------------------
# Server side (in the fake's process)


class Lane:
    """One input's slot on the lane worker; the fake's `Worker` interface."""

    def __init__(self, pool: LanePool) -> None:
        self._pool = pool
        self.used = False

    @property
    def pid(self) -> int:
        return self._pool.pid

    @property
    def alive(self) -> bool:
        return self._pool.alive

    async def run(self, request: dict[str, Any]) -> dict[str, Any]:
        self.used = True
        return await self._pool.run(request)

    async def kill(self) -> None:
        """A thread cannot be killed: its reply, when it comes, is dropped."""


class LanePool:
    """The fake's `WorkerPool` interface over one process that runs `lanes` inputs at once."""

    def __init__(self, *, lanes: int, env: dict[str, str]) -> None:
        self.lanes = lanes
        self.env = env
        self.started = 0
        self._process: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._ids = itertools.count()

    @property
    def pid(self) -> int:
        assert self._process is not None
        return self._process.pid

    @property
    def alive(self) -> bool:
        return self._process is not None and self._process.returncode is None

    async def start(self) -> None:
        from fake_modal.workers import _python_path

        env = {**os.environ, **self.env, "PYTHONPATH": _python_path()}
        self._process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "benchmarks._lane_worker",
            str(self.lanes),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            env=env,
            cwd=ROOT,
        )
        self.started += 1
        self._reader = asyncio.ensure_future(self._read_replies())

    async def run(self, request: dict[str, Any]) -> dict[str, Any]:
        from fake_modal.workers import WorkerDied

        assert self._process is not None and self._process.stdin is not None
        if not self.alive:
            raise WorkerDied(self._process.returncode)
        request_id = next(self._ids)
        future = self._pending[request_id] = asyncio.get_running_loop().create_future()
        body = pickle.dumps((request_id, request), protocol=pickle.HIGHEST_PROTOCOL)
        self._process.stdin.write(_HEADER.pack(len(body)) + body)
        try:
            await self._process.stdin.drain()
            return await future
        finally:
            self._pending.pop(request_id, None)

    async def _read_replies(self) -> None:
        from fake_modal.workers import WorkerDied

        assert self._process is not None and self._process.stdout is not None
        stdout = self._process.stdout
        try:
            while True:
                (length,) = _HEADER.unpack(await stdout.readexactly(_HEADER.size))
                request_id, reply = pickle.loads(await stdout.readexactly(length))
                future = self._pending.get(request_id)
                if future is not None and not future.done():
                    future.set_result(reply)
        except (asyncio.IncompleteReadError, ConnectionError):
            returncode = await self._process.wait()
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(WorkerDied(returncode))

    async def acquire(self) -> Lane:
        return Lane(self)

    def release(self, worker: Lane) -> None:
        pass

    async def discard(self, worker: Lane) -> None:
        pass

    def pids(self) -> set[int]:
        return {self.pid} if self.alive else set()

    async def close(self) -> None:
        if self._process is not None and self.alive:
            with contextlib.suppress(ProcessLookupError):
                self._process.kill()
            await self._process.wait()
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)


def _lane_fake_class() -> type:
    from fake_modal import FakeModal

    class LaneFake(FakeModal):
        """FakeModal whose inputs run on the lanes of one worker process."""

        async def open(self, worker_env: dict[str, str]) -> None:
            await super().open(worker_env)  # with warm_workers=0 it starts no process
            self._pool = LanePool(lanes=self.max_concurrency, env=worker_env)
            await self._pool.start()

    return LaneFake


def _raise_stream_limit(max_streams: int) -> None:
    """Make every server connection announce `max_streams` concurrent streams."""
    from grpclib.protocol import H2Protocol
    from h2.settings import SettingCodes

    original = H2Protocol.connection_made

    def connection_made(self: H2Protocol, transport: Any) -> None:
        original(self, transport)
        self.connection._connection.update_settings(
            {SettingCodes.MAX_CONCURRENT_STREAMS: max_streams}
        )
        self.connection.flush()

    H2Protocol.connection_made = connection_made  # type: ignore[method-assign]


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a live process, from /proc (0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _answer(fake: Any, command: dict[str, Any]) -> dict[str, Any]:
    """One command: "counts" (counters), "set" (knobs), "reset" (counters and records)."""
    op = command["op"]
    if op == "set":
        for name, value in command["knobs"].items():
            setattr(fake, name, value)
        return {}

    async def on_loop() -> dict[str, Any]:
        # On the fake's event loop, where its counters change.
        if op == "reset":
            fake.rpc_counts.clear()
            fake.rpc_log.clear()
            fake.executions.clear()
            if not fake._tasks:  # nothing running: forget finished calls and their blobs
                fake.calls.clear()
                fake.inputs.clear()
                fake._conditions.clear()
                fake.blob_store.blobs.clear()
            return {}
        if op == "counts":
            return {
                "rpc": dict(fake.rpc_counts),
                "inputs": len(fake.inputs),
                "started": fake.inputs_started,
                "finished": fake.inputs_finished,
                "running": fake.running,
                "maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                "cpu_s": _cpu_seconds(os.getpid()),
                "worker_cpu_s": sum(_cpu_seconds(pid) for pid in fake.live_worker_pids()),
            }
        raise ValueError(f"unknown command {op!r}")

    result: dict[str, Any] = fake._run(on_loop())
    return result


def serve(lanes: int, max_streams: int | None) -> None:
    """Serve the fake; print its environment; answer commands until stdin closes."""
    if max_streams:
        _raise_stream_limit(max_streams)
    with tempfile.TemporaryDirectory(prefix="bench_fake_modal_") as config_dir:
        fake = _lane_fake_class()(
            config_dir=Path(config_dir), max_concurrency=lanes, warm_workers=0
        )
        fake.start()
        try:
            fake.register_function(APP, FUNCTION, TARGET)
            print(json.dumps(fake.env), flush=True)
            for line in sys.stdin:
                print(json.dumps(_answer(fake, json.loads(line))), flush=True)
        finally:
            fake.stop()


# ---------------------------------------------------------------------------------------------
# Client side (in the benchmark's process)


class FakeServer:
    """A fake Modal served from a child process; `env` points a modal client at it."""

    def __init__(self, *, lanes: int, max_streams: int | None = None) -> None:
        command = [sys.executable, "-m", "benchmarks.fake_server", "--lanes", str(lanes)]
        if max_streams:
            command += ["--max-streams", str(max_streams)]
        self._process = subprocess.Popen(
            command, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        self.env: dict[str, str] = json.loads(self._readline())
        self.max_streams = max_streams

    def _readline(self) -> str:
        assert self._process.stdout is not None
        line = self._process.stdout.readline()
        if not line:
            raise RuntimeError(f"the fake Modal server exited ({self._process.wait()})")
        return line

    def _ask(self, command: dict[str, Any]) -> dict[str, Any]:
        assert self._process.stdin is not None
        self._process.stdin.write(json.dumps(command) + "\n")
        self._process.stdin.flush()
        answer: dict[str, Any] = json.loads(self._readline())
        return answer

    def counts(self) -> dict[str, Any]:
        """RPCs by method, inputs received / started / finished / running, the fake's RSS."""
        return self._ask({"op": "counts"})

    def set(self, **knobs: Any) -> None:
        """Set knobs of the fake (`latency`, ...)."""
        self._ask({"op": "set", "knobs": knobs})

    def reset(self) -> None:
        """Zero the counters; forget finished calls when none is running."""
        self._ask({"op": "reset"})

    def point_client(self) -> None:
        """Point this process's modal client at this server, as tests/fake_modal/fixture does."""
        import modal.config
        from fake_modal.fake import CLEARED_ENV, reset_modal_client

        for name in CLEARED_ENV:
            os.environ.pop(name, None)
        os.environ.update(self.env)
        modal.config._user_config = {}
        reset_modal_client()

    def stop(self) -> None:
        from fake_modal.fake import reset_modal_client

        reset_modal_client()
        if self._process.stdin is not None:
            self._process.stdin.close()
        try:
            self._process.wait(30)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()

    def __enter__(self) -> FakeServer:
        self.point_client()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--lanes", type=int, required=True, help="inputs that run at once")
    parser.add_argument("--max-streams", type=int, help="HTTP/2 streams per connection")
    args = parser.parse_args()
    serve(args.lanes, args.max_streams)


if __name__ == "__main__":
    main()
