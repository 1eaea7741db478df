"""What a launch call does in its worker: run ``redun run ...`` against a durable database.

For a database on a volume (see ``spec.DatabaseSpec``), the call takes the volume's lock,
copies the sqlite file to local disk (sqlite must not be written on a network volume), runs
the command against the copy, and copies it back every ``sync_interval`` seconds and at the
end, committing the volume each time. A configured database (Postgres) is used as is.
"""

from __future__ import annotations

import configparser
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from redun_modal_executor.backends import open_backend
from redun_modal_executor.errors import WorkerStopped
from redun_modal_executor.launch.spec import DatabaseSpec, LaunchSpec
from redun_modal_executor.worker import code

_STOP_SECONDS = 60.0  # For the scheduler to cancel its own calls when the launch is stopped.
_STOPPED_READ_SECONDS = 0.5
_STDERR_TAIL_LINES = 1000  # Of a failed launch's stderr, for its ScriptError.


def run_launch(command: str, launch: LaunchSpec) -> bytes:
    """Run the launched command; return its stdout, as redun's script tasks do."""
    from redun.scripting import ScriptError

    with (
        _terminate_as_interrupt(),
        tempfile.TemporaryDirectory(prefix="redun-launch-") as scratch_name,
    ):
        scratch = Path(scratch_name)
        workdir = _workdir(launch, scratch)
        config_dir = _write_config(scratch / "config", launch.config_files)
        if launch.database is None:
            returncode, stdout, stderr = _run(command, workdir, config_dir)
        else:
            returncode, stdout, stderr = _run_on_volume(
                command, workdir, config_dir, launch.database, launch.sync_interval, scratch
            )
    if returncode != 0:
        raise ScriptError(stderr)
    return stdout


@contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM (a container or local worker being stopped) ends the run as Ctrl-C does, so
    the scheduler cancels its calls and the database is copied back before the end."""

    def interrupt(signum: int, frame: Any) -> None:
        raise WorkerStopped(f"stopped by signal {signal.Signals(signum).name}")

    try:
        previous = signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # Not the main thread: signals are not ours to handle.
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _run_on_volume(
    command: str,
    workdir: Path,
    config_dir: Path,
    database: DatabaseSpec,
    sync_interval: float,
    scratch: Path,
) -> tuple[int, bytes, bytes]:
    backend = open_backend(database.backend)
    volume = backend.volume(database.volume, database.mount)
    lock = backend.database_lock(volume, database.file)
    lock.acquire(backend.current_call_id())
    try:
        volume.reload()
        shared = Path(volume.path) / database.file
        local = scratch / database.file
        if shared.exists():
            copy_database(shared, local)
        _set_db_uri(config_dir, f"sqlite:///{local}")

        def sync() -> None:
            if local.exists():
                copy_database(local, shared)
                volume.commit()

        def sync_meanwhile() -> None:
            try:
                sync()
            except Exception as error:  # The next sync, or the last, tries again.
                print(f"redun-modal: could not sync the database: {error}", file=sys.stderr)

        try:
            return _run(command, workdir, config_dir, every=(sync_interval, sync_meanwhile))
        finally:
            sync()
    finally:
        lock.release()


def copy_database(source: Path, target: Path) -> None:
    """A consistent copy of a sqlite database (even one being written), put in place at once."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
    reader, writer = sqlite3.connect(source, timeout=60), sqlite3.connect(partial)
    try:
        reader.backup(writer)
    finally:
        reader.close()
        writer.close()
    os.replace(partial, target)


def _workdir(launch: LaunchSpec, scratch: Path) -> Path:
    """Where the command runs: the client's directory (a backend that ships no code), else a
    copy of the code package (so the run's own files do not land in the shared package)."""
    if launch.workdir:
        return Path(launch.workdir)
    workdir = scratch / "work"
    package = code.versions.root
    if package is None:
        workdir.mkdir()
    else:
        shutil.copytree(package, workdir)
    return workdir


def _write_config(config_dir: Path, files: dict[str, str]) -> Path:
    config_dir.mkdir(parents=True)
    for name, text in files.items():
        (config_dir / name).write_text(text)
    return config_dir


def _set_db_uri(config_dir: Path, db_uri: str) -> None:
    path = config_dir / "redun.ini"
    parser = configparser.ConfigParser(interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # Keep keys' case.
    parser.read_string(path.read_text() if path.exists() else "")
    if not parser.has_section("backend"):
        parser.add_section("backend")
    parser.set("backend", "db_uri", db_uri)
    with path.open("w") as file:
        parser.write(file)


def _run(
    command: str,
    workdir: Path,
    config_dir: Path,
    every: tuple[float, Callable[[], None]] | None = None,
) -> tuple[int, bytes, bytes]:
    """Run ``command`` with redun's config in ``config_dir``, its output passed through to
    this process's; call ``every[1]`` every ``every[0]`` seconds while it runs."""
    from redun.scripting import prepare_command

    script = config_dir / "launch.sh"
    script.write_text(prepare_command(command))
    script.chmod(0o755)
    process = subprocess.Popen(
        [str(script)],
        cwd=workdir,
        env={**os.environ, "REDUN_CONFIG": str(config_dir)},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    stdout: list[bytes] = []
    stderr: deque[bytes] = deque(maxlen=_STDERR_TAIL_LINES)
    readers = [
        threading.Thread(target=_pump, args=(process.stdout, sys.stdout, stdout.append)),
        threading.Thread(target=_pump, args=(process.stderr, sys.stderr, stderr.append)),
    ]
    for reader in readers:
        reader.start()
    stopped = False
    try:
        while True:
            try:
                process.wait(timeout=every[0] if every else None)
                break
            except subprocess.TimeoutExpired:
                assert every is not None
                every[1]()
    except BaseException:
        # Stopped (cancelled, or SIGTERM): let the scheduler cancel its calls.
        stopped = True
        _interrupt(process)
        raise
    finally:
        for reader in readers:
            # Once stopped, the command's leftover children may hold its pipes open: the
            # database comes first, their last lines may go.
            reader.join(timeout=_STOPPED_READ_SECONDS if stopped else None)
    return process.returncode, b"".join(stdout), b"".join(stderr)


def _pump(source: IO[bytes] | None, sink: IO[str], keep: Callable[[bytes], None]) -> None:
    assert source is not None
    for line in iter(source.readline, b""):
        keep(line)
        sink.write(line.decode(errors="replace"))
        sink.flush()
    source.close()


def _interrupt(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout=_STOP_SECONDS)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
