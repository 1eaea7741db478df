"""Modal's exceptions turned into this package's, with what happened and what to do."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from redun_modal_executor.calls import CallAddress
from redun_modal_executor.config import CallOptions
from redun_modal_executor.errors import (
    AppNotDeployedError,
    CallTimeoutError,
    ModalAuthError,
    ModalUnreachableError,
    RemoteCallError,
)

MODAL_DEFAULT_TIMEOUT = 300
INTERNAL_FAILURE_ATTEMPTS = 3
TRANSIENT_ATTEMPTS = 5
TRANSIENT_BACKOFF_SECONDS = 0.5
# How long a job keeps trying to reach Modal before its call is spawned (connecting, the
# look-up, the code upload, the spawn's retries). The client alone would try to connect for
# 63 s, and wait minutes for an answer that never comes. 20 s rides out an outage of about
# 15 s (the client's own connection attempts, 5 s apart by then) and all five attempts of
# the backoff above (about 11 s), and leaves time for redun to start and stop within 45 s,
# even on a busy machine.
UNREACHABLE_SECONDS = 20.0
REACH_HINT = "check the network, MODAL_SERVER_URL, proxy settings"
LOG_TAIL_ENTRIES = 50
BATCH_LOG_TAIL_ENTRIES = 2000  # A batch's newest lines, searched for one input's.
LOG_TAIL_SECONDS = 5.0
DEPLOY_HINT = "run `redun-modal deploy` (once, and after changing images or dependencies)"
TOKEN_HINT = "run `modal token new`, or set MODAL_TOKEN_ID and MODAL_TOKEN_SECRET"
T = TypeVar("T")


def auth_message(error: Exception) -> str:
    return f"Modal could not authenticate ({error}): {TOKEN_HINT}."


def server_url() -> str:
    """The address the modal client connects to (``MODAL_SERVER_URL``, or the profile's)."""
    import modal.config

    return str(modal.config.config.get("server_url"))


def unreachable_message(reason: str) -> str:
    return f"cannot reach Modal at {server_url()} ({reason}); {REACH_HINT}"


def _connection_errors() -> tuple[type[Exception], ...]:
    """What the client raises once it gave up reaching the server: it could not connect, or
    the connection was lost (grpclib's error, which the client lets through)."""
    import modal.exception
    from grpclib.exceptions import StreamTerminatedError

    return (modal.exception.ConnectionError, StreamTerminatedError)


def unreachable(error: BaseException) -> ModalUnreachableError | None:
    """``error`` as a ``ModalUnreachableError``, if it says the server could not be reached."""
    if isinstance(error, ModalUnreachableError):
        return error
    if isinstance(error, _connection_errors()):
        return ModalUnreachableError(unreachable_message(f"{type(error).__name__}: {error}"))
    return None


@contextmanager
def commands_errors() -> Iterator[None]:
    """Modal's credential and connection errors as this package's (one line each), for the
    commands that ask Modal directly."""
    import modal.exception

    try:
        yield
    except modal.exception.AuthError as error:
        raise ModalAuthError(auth_message(error)) from None
    except Exception as error:
        lost = unreachable(error)
        if lost is None:
            raise
        raise lost from None


async def explain(
    error: Exception,
    label: str,
    options: CallOptions,
    call: Any,
    address: CallAddress | None = None,
    input_id: str | None = None,
) -> BaseException:
    """The exception a job fails with for ``error`` (``call``: its FunctionCall, if spawned;
    ``address`` and ``input_id``: its input, in a batch), with the tail of its Modal log as
    ``logs``."""
    import modal.exception

    call_id = getattr(call, "object_id", None)
    if address is not None:
        call_id = address.words()
    lost = unreachable(error)
    if lost is not None:
        return ModalUnreachableError(f"{label}: {lost}{f' [call {call_id}]' if call_id else ''}")
    if isinstance(error, AppNotDeployedError | ModalAuthError | RemoteCallError):
        return type(error)(f"{label}: {error}")
    if isinstance(error, modal.exception.AuthError):
        return ModalAuthError(f"{label}: {auth_message(error)}")
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
        what = f"Modal call {call_id} failed" if call_id else "the Modal call could not be spawned"
        explained = RemoteCallError(f"{label}: {what}: {kind + ': ' if kind else ''}{error}")
    explained.logs = await log_tail(call, input_id)  # type: ignore[attr-defined]
    return explained


async def log_tail(call: Any, input_id: str | None = None) -> list[str]:
    """The last lines of a failed call's Modal log (of one of its inputs, if ``input_id``);
    empty if they cannot be had quickly."""
    if call is None:
        return []
    lines: list[str] = []
    # Modal filters logs by call, not input: an input's lines are found among the call's.
    entries = LOG_TAIL_ENTRIES if input_id is None else BATCH_LOG_TAIL_ENTRIES

    async def read() -> None:
        async for entry in call.logs.tail.aio(entries=entries):
            if input_id is None or input_id in entry.context_ids:
                lines.append(entry.message.rstrip("\n") + "\n")
        del lines[:-LOG_TAIL_ENTRIES]

    try:
        await asyncio.wait_for(read(), LOG_TAIL_SECONDS)
    except Exception:  # Logs are a courtesy: never let them hide the real error.
        pass
    return lines


async def through_transient_errors(
    request: Callable[[], Awaitable[T]], deadline: float | None = None
) -> T:
    """``request()``, tried again (with backoff) while Modal's API is briefly unreachable.

    The client already retries each RPC a few times under one idempotency key; this covers
    outages longer than that: up to ``TRANSIENT_ATTEMPTS`` attempts, ``TRANSIENT_BACKOFF_SECONDS``
    apart at first and doubling (0.5, 1, 2, 4 s), and none that would start after
    ``deadline`` (event-loop time), if given. An attempt in progress is never cut short here.
    A spawn is retried only after the client gave up on every attempt of the previous one, so
    a duplicate would need all of those to be lost after the server acted on one.
    """
    import modal.exception

    transient = (
        modal.exception.ServiceError,
        modal.exception.InternalError,
        modal.exception.ResourceExhaustedError,
        *_connection_errors(),
    )
    loop = asyncio.get_running_loop()
    for attempt in range(1, TRANSIENT_ATTEMPTS + 1):
        try:
            return await request()
        except transient:
            delay = TRANSIENT_BACKOFF_SECONDS * 2 ** (attempt - 1)
            if attempt == TRANSIENT_ATTEMPTS or (
                deadline is not None and loop.time() + delay >= deadline
            ):
                raise
            await asyncio.sleep(delay)
    raise AssertionError("unreachable")


async def within_reach(
    request: Callable[[], Awaitable[T]], seconds: float = UNREACHABLE_SECONDS
) -> T:
    """``request()`` (a small one, safe to repeat or abandon), through transient errors, if it
    is answered within ``seconds``; else ``ModalUnreachableError``, as when the client gives
    up connecting or loses the connection for good."""
    attempt = asyncio.ensure_future(
        through_transient_errors(request, asyncio.get_running_loop().time() + seconds)
    )
    try:
        done, _ = await asyncio.wait({attempt}, timeout=seconds)
    finally:
        if not attempt.done():
            attempt.cancel()
    if not done:
        raise ModalUnreachableError(unreachable_message(f"no answer in {seconds:g} s"))
    error = attempt.exception()
    if error is None:
        return attempt.result()
    raise unreachable(error) or error


def wait_within_reach(
    request: Callable[[], Awaitable[T]], seconds: float = UNREACHABLE_SECONDS
) -> T:
    """``within_reach``, from a thread other than the client's loop (the commands)."""
    from redun_modal_executor.backends.modal.client import access

    return asyncio.run_coroutine_threadsafe(
        within_reach(request, seconds), access().loop()
    ).result()
