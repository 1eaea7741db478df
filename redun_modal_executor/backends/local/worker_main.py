"""Entry point of the local backend's worker processes.

``python -m ... --template <socket fd>``: the pool's worker template (see ``template``). Its
forks are the workers: each receives call payloads on its socket, answers each with its result
envelope, and exits at EOF. ``python -m ... --detached <dir>``: runs the one call in ``<dir>``
(a detached launch) and leaves its result envelope there.
"""

import atexit
import os
import sys
import threading
from multiprocessing.connection import Connection
from pathlib import Path

from redun_modal_executor.backends.local import (
    CALL_ID_ENV,
    DETACHED_PAYLOAD,
    DETACHED_PID,
    DETACHED_RESULT,
)
from redun_modal_executor.backends.local.template import TEMPLATE_FLAG, run_template
from redun_modal_executor.worker import run_call


def serve(connection: Connection) -> None:
    connection.send_bytes(b"")  # Ready: imports are done, the clock for timeouts may start.
    while True:
        try:
            payload = connection.recv_bytes()
        except EOFError:
            return
        connection.send_bytes(run_call(payload))


def exit_quickly() -> None:
    """Exit as the interpreter would, less tearing down the modules and objects left: with
    redun loaded that takes about half a second, and in a fork of the template it first
    copies most of the template's memory (each object touched is a page copied)."""
    for thread in threading.enumerate():
        if thread is not threading.main_thread() and not thread.daemon:
            thread.join()  # As the interpreter waits for non-daemon threads.
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def run_detached(call_dir: Path) -> None:
    (call_dir / DETACHED_PID).write_text(str(os.getpid()))
    os.environ[CALL_ID_ENV] = call_dir.name
    result = run_call((call_dir / DETACHED_PAYLOAD).read_bytes())
    partial = call_dir / f".{DETACHED_RESULT}.partial"
    partial.write_bytes(result)
    partial.replace(call_dir / DETACHED_RESULT)  # Whoever sees the result sees all of it.


if __name__ == "__main__":
    if sys.argv[1] == "--detached":
        run_detached(Path(sys.argv[2]))
    elif sys.argv[1] == TEMPLATE_FLAG:
        worker_fd = run_template(int(sys.argv[2]))
        if worker_fd is not None:
            serve(Connection(worker_fd))  # In a worker forked by the template.
        exit_quickly()  # The template's exit, or a worker's.
