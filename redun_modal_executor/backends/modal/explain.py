"""Modal's exceptions turned into this package's, with what happened and what to do."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from redun_modal_executor.config import CallOptions
from redun_modal_executor.errors import (
    AppNotDeployedError,
    CallTimeoutError,
    ModalAuthError,
    RemoteCallError,
)

MODAL_DEFAULT_TIMEOUT = 300
INTERNAL_FAILURE_ATTEMPTS = 3
TRANSIENT_ATTEMPTS = 5
TRANSIENT_BACKOFF_SECONDS = 0.5
LOG_TAIL_ENTRIES = 50
LOG_TAIL_SECONDS = 5.0
DEPLOY_HINT = "run `redun-modal deploy` (once, and after changing images or dependencies)"
TOKEN_HINT = "run `modal token new`, or set MODAL_TOKEN_ID and MODAL_TOKEN_SECRET"
T = TypeVar("T")


def auth_message(error: Exception) -> str:
    return f"Modal could not authenticate ({error}): {TOKEN_HINT}."


async def explain(error: Exception, label: str, options: CallOptions, call: Any) -> BaseException:
    """The exception a job fails with for ``error`` (``call``: its FunctionCall, if spawned),
    with the tail of the call's Modal log as ``logs``."""
    import modal.exception

    if isinstance(error, AppNotDeployedError | ModalAuthError | RemoteCallError):
        return type(error)(f"{label}: {error}")
    if isinstance(error, modal.exception.AuthError):
        return ModalAuthError(f"{label}: {auth_message(error)}")
    call_id = getattr(call, "object_id", None) or "not spawned"
    if isinstance(error, modal.exception.FunctionTimeoutError):
        seconds = math.ceil(options.timeout or MODAL_DEFAULT_TIMEOUT)
        explained: BaseException = CallTimeoutError(
            f"{label}: timed out after {seconds} s on Modal (the `timeout` task option or "
            f"executor setting; Modal's default is {MODAL_DEFAULT_TIMEOUT} s) [call {call_id}]"
        )
    elif isinstance(error, modal.exception.InternalFailure):
        explained = RemoteCallError(
            f"{label}: Modal failed the call {INTERNAL_FAILURE_ATTEMPTS} times with an "
            f"internal error: {error} [call {call_id}]"
        )
    else:
        kind = "" if isinstance(error, modal.exception.RemoteError) else type(error).__name__
        explained = RemoteCallError(
            f"{label}: Modal call {call_id} failed: {kind + ': ' if kind else ''}{error}"
        )
    explained.logs = await log_tail(call)  # type: ignore[attr-defined]
    return explained


async def log_tail(call: Any) -> list[str]:
    """The last lines of a failed call's Modal log; empty if they cannot be had quickly."""
    if call is None:
        return []
    lines: list[str] = []

    async def read() -> None:
        async for entry in call.logs.tail.aio(entries=LOG_TAIL_ENTRIES):
            lines.append(entry.message.rstrip("\n") + "\n")

    try:
        await asyncio.wait_for(read(), LOG_TAIL_SECONDS)
    except Exception:  # Logs are a courtesy: never let them hide the real error.
        pass
    return lines


async def through_transient_errors(request: Callable[[], Awaitable[T]]) -> T:
    """``request()``, tried again (with backoff) while Modal's API is briefly unreachable.

    The client already retries each RPC a few times under one idempotency key; this covers
    outages longer than that. A spawn is retried only after the client gave up on every
    attempt of the previous one, so a duplicate would need all of those to be lost after the
    server acted on one.
    """
    import modal.exception

    transient = (
        modal.exception.ServiceError,
        modal.exception.InternalError,
        modal.exception.ResourceExhaustedError,
        modal.exception.ConnectionError,
    )
    for attempt in range(1, TRANSIENT_ATTEMPTS + 1):
        try:
            return await request()
        except transient:
            if attempt == TRANSIENT_ATTEMPTS:
                raise
            await asyncio.sleep(TRANSIENT_BACKOFF_SECONDS * 2 ** (attempt - 1))
    raise AssertionError("unreachable")
