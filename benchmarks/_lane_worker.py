"""One fake worker process that runs many inputs at once, each on a thread of its own.

Run as `python -m benchmarks._lane_worker LANES` by `fake_server.LanePool`. It plays a Modal
container with input concurrency: inputs are decoded, run and encoded by the fake's own
`_worker_main._call` (the client's serialization code, as in the fake's one-input-per-process
workers), so only the process model differs. Requests are `(request id, request)` and
replies `(request id, reply)`, each an 8-byte big-endian length and a pickle, on the stdin
and stdout the process started with.
"""

from __future__ import annotations

import os
import pickle
import struct
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, BinaryIO

_HEADER = struct.Struct(">Q")


def _read(stream: BinaryIO) -> tuple[int, dict[str, Any]] | None:
    header = stream.read(_HEADER.size)
    if len(header) < _HEADER.size:
        return None
    (length,) = _HEADER.unpack(header)
    message: tuple[int, dict[str, Any]] = pickle.loads(stream.read(length))
    return message


def main() -> None:
    """Serve requests on `lanes` threads until stdin closes."""
    from fake_modal._worker_main import _call

    lanes = int(sys.argv[1])
    requests = os.fdopen(os.dup(0), "rb")
    replies = os.fdopen(os.dup(1), "wb")
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    os.dup2(2, 1)
    write_lock = threading.Lock()

    def serve(request_id: int, request: dict[str, Any]) -> None:
        body = pickle.dumps((request_id, _call(request)), protocol=pickle.HIGHEST_PROTOCOL)
        with write_lock:
            replies.write(_HEADER.pack(len(body)) + body)
            replies.flush()

    with ThreadPoolExecutor(lanes, thread_name_prefix="lane") as pool:
        while (message := _read(requests)) is not None:
            pool.submit(serve, *message)


if __name__ == "__main__":
    main()
