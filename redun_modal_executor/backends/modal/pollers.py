"""Modal clients for the long-polled gets, each over its own connection.

Each long-poll holds an HTTP/2 stream for as long as its call runs. Servers cap the streams of
a connection (h2's default is 100), and h2's bookkeeping per new stream grows with the streams
already open, so the gets are spread over several clients, each with its own connection.
"""

from __future__ import annotations

import asyncio
from typing import Any

# Long-polls per connection: well under h2's default cap of 100 streams, which spawns share.
POLLS_PER_CONNECTION = 50
_FULL = object()  # No client has room for another poll.


class Pollers:
    """Modal clients for the long-polled gets, each over its own connection (on the loop thread).

    ``None`` stands for the default client, which also spawns; it takes the first
    ``POLLS_PER_CONNECTION`` polls, so small runs open no connection of their own. Another
    client is opened whenever every one is full.
    """

    def __init__(self) -> None:
        self._polls: dict[Any, int] = {None: 0}  # client -> polls it holds now
        self._current: Any = None  # The client filled first.
        self._opening: asyncio.Future[Any] | None = None
        self._can_open = True

    async def acquire(self) -> Any:
        """A client with room for one more poll (``None``: the default one)."""
        while True:
            client = self._with_room()
            if client is not _FULL:
                self._polls[client] += 1
                return client
            if self._opening is None:
                self._opening = asyncio.ensure_future(_open_client())
            opening = self._opening
            try:
                client = await asyncio.shield(opening)
            finally:
                if self._opening is opening and opening.done():
                    self._opening = None
            if client is None:  # No credentials to open one with: the default client it is.
                self._can_open = False
            elif client not in self._polls:
                self._polls[client] = 0
                self._current = client

    def release(self, client: Any) -> None:
        if client in self._polls:
            self._polls[client] -= 1

    async def close(self) -> None:
        """Close the clients opened here (not the default one)."""
        clients = [client for client in self._polls if client is not None]
        self._polls = {None: 0}
        self._current = None
        for client in clients:
            await client.close.aio()

    def _with_room(self) -> Any:
        """A client with fewer than ``POLLS_PER_CONNECTION`` polls, or ``_FULL``."""
        if self._polls.get(self._current, POLLS_PER_CONNECTION) < POLLS_PER_CONNECTION:
            return self._current
        for client, polls in self._polls.items():
            if polls < POLLS_PER_CONNECTION:
                self._current = client
                return client
        return _FULL if self._can_open else None


async def _open_client() -> Any:
    """A new Modal client with the default one's token, or None if it was not made from one
    (OAuth credentials, or inside a Modal container)."""
    import modal
    import modal.config

    token_id, token_secret = modal.config.config["token_id"], modal.config.config["token_secret"]
    if not (token_id and token_secret) or not modal.is_local():
        return None
    return await modal.Client.from_credentials.aio(token_id, token_secret)
