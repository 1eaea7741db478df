"""Entry point of a local-backend worker process.

``python -m ... <socket fd>``: receives call payloads on the socket, answers each with its
result envelope, exits at EOF. ``python -m ... --detached <dir>``: runs the one call in
``<dir>`` (a detached launch) and leaves its result envelope there.
"""

import os
import sys
from multiprocessing.connection import Connection
from pathlib import Path

from redun_modal_executor.backends.local import (
    CALL_ID_ENV,
    DETACHED_PAYLOAD,
    DETACHED_PID,
    DETACHED_RESULT,
)
from redun_modal_executor.worker import run_call


def serve(connection: Connection) -> None:
    connection.send_bytes(b"")  # Ready: imports are done, the clock for timeouts may start.
    while True:
        try:
            payload = connection.recv_bytes()
        except EOFError:
            return
        connection.send_bytes(run_call(payload))


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
    else:
        serve(Connection(int(sys.argv[1])))
