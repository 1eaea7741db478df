"""Entry point of a local-backend worker process: ``python -m ... <socket fd>``.

Receives call payloads on the socket, answers each with its result envelope, exits at EOF.
"""

import sys
from multiprocessing.connection import Connection

from redun_modal_executor.worker import run_call


def serve(connection: Connection) -> None:
    connection.send_bytes(b"")  # Ready: imports are done, the clock for timeouts may start.
    while True:
        try:
            payload = connection.recv_bytes()
        except EOFError:
            return
        connection.send_bytes(run_call(payload))


if __name__ == "__main__":
    serve(Connection(int(sys.argv[1])))
