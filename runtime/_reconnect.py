"""A client connection that comes back: reconnect with exponential backoff and jitter."""

from __future__ import annotations

import inspect
import random
import ssl
from collections.abc import Awaitable, Callable, Collection
from typing import Protocol, TypeVar

import attrs
import trio

import protocol
from protocol import ErrorCode

from ._backoff import Backoff
from ._connection import (
    DEFAULT_CLOSE_TIMEOUT,
    DEFAULT_MAX_OUTGOING,
    DEFAULT_SEND_TIMEOUT,
    Connection,
)
from ._transport_errors import ConnectionClosed, HandshakeError
from ._transports import open_connection

T = TypeVar("T")

#: The delays between reconnects of a client or worker, by default: 0.1 s doubling up to
#: 5 s, 20 % jitter (so that peers cut off together do not all come back at once).
DEFAULT_RECONNECT_BACKOFF = Backoff(base=0.1, factor=2.0, cap=5.0, jitter=0.2)

#: Handshake refusals that retrying cannot cure: :func:`run_reconnecting` raises them.
FATAL_HANDSHAKE_CODES: frozenset[str] = frozenset(
    {ErrorCode.AUTH_FAILED, ErrorCode.NOT_PERMITTED, ErrorCode.UNSUPPORTED_VERSION}
)


class BackoffPolicy(Protocol):
    """What :func:`run_reconnecting` needs of a backoff (:class:`runtime.Backoff` fits)."""

    def delay(self, attempt: int, rng: random.Random | None = None) -> float: ...

    def exhausted(self, attempt: int) -> bool: ...


@attrs.frozen
class ReconnectEvent:
    """What :func:`run_reconnecting` reports to its ``on_state`` callback.

    Attributes:
      state: ``"connecting"`` (attempt starts), ``"connected"`` (Welcome received),
        ``"disconnected"`` (attempt or session failed; ``error`` says why), ``"waiting"``
        (sleeping ``delay`` seconds before the next attempt) or ``"given_up"`` (the
        backoff is exhausted; the error is raised next).
      attempt: the failed attempts since the last successful handshake (``connecting``:
        the number of this attempt, from 1).
      error: the exception that ended the attempt, if any.
      delay: seconds until the next attempt (``waiting`` only).
      connection: the open connection (``connected`` only).
    """

    state: str
    attempt: int
    error: BaseException | None = None
    delay: float | None = None
    connection: Connection | None = None


def _retryable(exc: BaseException, fatal_codes: Collection[str]) -> bool:
    if isinstance(exc, HandshakeError):
        return exc.code not in fatal_codes
    if isinstance(exc, ConnectionClosed | OSError):
        return True
    if isinstance(exc, BaseExceptionGroup):
        return all(_retryable(e, fatal_codes) for e in exc.exceptions)
    return False


async def run_reconnecting(
    url: str,
    session_fn: Callable[[Connection], Awaitable[T]],
    *,
    hello_factory: Callable[[], protocol.Hello | Awaitable[protocol.Hello]],
    backoff: BackoffPolicy = DEFAULT_RECONNECT_BACKOFF,
    rng: random.Random | None = None,
    ssl_context: ssl.SSLContext | None = None,
    heartbeat: float | None = None,
    on_state: Callable[[ReconnectEvent], object] | None = None,
    fatal_codes: Collection[str] = FATAL_HANDSHAKE_CODES,
    max_frame_size: int = protocol.DEFAULT_MAX_FRAME_SIZE,
    max_outgoing: int = DEFAULT_MAX_OUTGOING,
    connect_timeout: float = 10,
    send_timeout: float = DEFAULT_SEND_TIMEOUT,
    close_timeout: float = DEFAULT_CLOSE_TIMEOUT,
    decode_payloads: bool = True,
) -> T:
    """Keep a session with a server going: connect, run ``session_fn``, reconnect on loss.

    Each round opens a connection with a fresh Hello from ``hello_factory()`` and runs
    ``await session_fn(conn)``. When the connection cannot be made or is lost
    (:class:`ConnectionClosed`, ``OSError``, or a :class:`HandshakeError` not in
    ``fatal_codes``, such as ``busy``), it waits ``backoff.delay(n, rng)`` seconds, where
    ``n`` counts the failures since the last successful handshake, and tries again.

    Args:
      url, ssl_context, heartbeat, max_frame_size, max_outgoing, connect_timeout,
        send_timeout, close_timeout, decode_payloads: as for :func:`runtime.open_connection`.
      session_fn: the work to do over each connection. Its normal return ends the loop.
        Let :class:`ConnectionClosed` out of it to reconnect (note that ``async for msg
        in conn`` ends quietly when the server says Bye; ``conn.receive()`` raises).
      hello_factory: builds the Hello of each attempt (``mid=0``); may be async (to fetch
        a fresh credential). What it raises fails the attempt: retried if retryable (an
        ``OSError``, say), else raised.
      backoff: the delay policy (default :data:`DEFAULT_RECONNECT_BACKOFF`); when
        ``backoff.exhausted(n)`` the last error is raised.
      rng: the source of jitter (a seeded ``random.Random`` in tests).
      on_state: called with a :class:`ReconnectEvent` at each change of state.
      fatal_codes: handshake refusals raised at once instead of retried.

    Returns:
      What ``session_fn`` returned.

    Raises:
      HandshakeError: the server refused the Hello with a code in ``fatal_codes``.
      ConnectionClosed, OSError, HandshakeError: the last error when the backoff is
        exhausted.
      Any other exception from ``session_fn``, which ends the loop.
    """

    def report(state: str, attempt: int, **kw: object) -> None:
        if on_state is not None:
            on_state(ReconnectEvent(state, attempt, **kw))  # type: ignore[arg-type]

    failures = 0
    while True:
        report("connecting", failures + 1)
        connected = False
        try:
            hello = hello_factory()
            if inspect.isawaitable(hello):
                hello = await hello
            async with open_connection(
                url,
                hello=hello,
                ssl_context=ssl_context,
                heartbeat=heartbeat,
                max_frame_size=max_frame_size,
                max_outgoing=max_outgoing,
                connect_timeout=connect_timeout,
                send_timeout=send_timeout,
                close_timeout=close_timeout,
                decode_payloads=decode_payloads,
            ) as conn:
                connected = True
                failures = 0
                report("connected", 0, connection=conn)
                return await session_fn(conn)
        except BaseException as exc:
            if not _retryable(exc, fatal_codes):
                raise
            error: BaseException = exc
        failures += 1
        report("disconnected", failures, error=error)
        if backoff.exhausted(failures):
            report("given_up", failures, error=error)
            raise error
        delay = backoff.delay(failures, rng)
        if not connected and isinstance(error, HandshakeError) and error.retry_after:
            delay = max(delay, error.retry_after)
        report("waiting", failures, error=error, delay=delay)
        await trio.sleep(delay)
