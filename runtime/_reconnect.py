"""A client connection that comes back: reconnect with exponential backoff and jitter,
to one server or to several in turn (failover between leaders)."""

from __future__ import annotations

import inspect
import random
import ssl
from collections.abc import Awaitable, Callable, Collection, Sequence
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
from ._url import check_urls, parse_url

T = TypeVar("T")

#: The delays between reconnects of a client or worker, by default: 0.1 s doubling up to
#: 5 s, 20 % jitter (so that peers cut off together do not all come back at once).
DEFAULT_RECONNECT_BACKOFF = Backoff(base=0.1, factor=2.0, cap=5.0, jitter=0.2)

#: Handshake refusals that retrying cannot cure: :func:`run_reconnecting` raises them.
FATAL_HANDSHAKE_CODES: frozenset[str] = frozenset(
    {ErrorCode.AUTH_FAILED, ErrorCode.NOT_PERMITTED, ErrorCode.UNSUPPORTED_VERSION}
)

#: Seconds a connection must have lasted for its loss to start a new round of failover:
#: the other servers are then tried at once, before any delay (see
#: :func:`run_reconnecting`). Shorter ones count in the round of the attempts before
#: them, so that servers that welcome a client and drop it at once are not cycled
#: through without a pause.
LASTING_CONNECTION = 5.0


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
      url: the server of the attempt the event is about (for ``waiting``, of the attempt
        that failed last; the next ``connecting`` names the next one); None only for an
        event built by hand.
    """

    state: str
    attempt: int
    error: BaseException | None = None
    delay: float | None = None
    connection: Connection | None = None
    url: str | None = None


def _retryable(exc: BaseException, fatal_codes: Collection[str]) -> bool:
    if isinstance(exc, HandshakeError):
        return exc.code not in fatal_codes
    if isinstance(exc, ConnectionClosed | OSError):
        return True
    if isinstance(exc, BaseExceptionGroup):
        return all(_retryable(e, fatal_codes) for e in exc.exceptions)
    return False


async def run_reconnecting(
    url: str | Sequence[str],
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

    Each attempt opens a connection with a fresh Hello from ``hello_factory()`` and runs
    ``await session_fn(conn)``. When the connection cannot be made or is lost
    (:class:`ConnectionClosed`, ``OSError``, or a :class:`HandshakeError` not in
    ``fatal_codes``, such as ``busy``), it waits ``backoff.delay(n, rng)`` seconds, where
    ``n`` counts the waits since the last successful handshake, and tries again.

    Several servers (``url`` a comma-separated ``str``, or a list or tuple of URLs) are
    tried in turn, from the first: each failure, of an attempt or of a connection, moves
    on to the next (round robin, back to the first after the last). The next is tried at
    once, with no delay, until every server has had an attempt since the last wait (or
    since the loss of a connection that lasted :data:`LASTING_CONNECTION` seconds); then
    it waits as above. So a client whose server died reaches the next one on its first
    retry, and a whole cluster down is tried once round, then waited for with the same
    delays as a single server. With one URL, every failure waits.

    Args:
      url: the server, or several (see above); each is checked before any attempt.
      ssl_context: for ``tls://`` and ``wss://`` URLs: with several, all must use TLS.
      heartbeat, max_frame_size, max_outgoing, connect_timeout, send_timeout,
        close_timeout, decode_payloads: as for :func:`runtime.open_connection`.
      session_fn: the work to do over each connection. Its normal return ends the loop.
        Let :class:`ConnectionClosed` out of it to reconnect (note that ``async for msg
        in conn`` ends quietly when the server says Bye; ``conn.receive()`` raises).
      hello_factory: builds the Hello of each attempt (``mid=0``); may be async (to fetch
        a fresh credential). What it raises fails the attempt: retried if retryable (an
        ``OSError``, say), else raised.
      backoff: the delay policy (default :data:`DEFAULT_RECONNECT_BACKOFF`); when
        ``backoff.exhausted(n)`` the last error is raised (with several servers: after
        ``n`` rounds without a successful handshake).
      rng: the source of jitter (a seeded ``random.Random`` in tests).
      on_state: called with a :class:`ReconnectEvent` at each change of state.
      fatal_codes: handshake refusals raised at once instead of retried.

    Returns:
      What ``session_fn`` returned.

    Raises:
      ValueError: a URL is not a transport URL (naming it), none is given, or an
        ``ssl_context`` comes with a URL that does not use TLS; before any attempt.
      TypeError: ``url`` is not a ``str`` or a list or tuple of them.
      HandshakeError: the server refused the Hello with a code in ``fatal_codes``.
      ConnectionClosed, OSError, HandshakeError: the last error when the backoff is
        exhausted.
      Any other exception from ``session_fn``, which ends the loop.
    """

    urls = check_urls(url)
    if ssl_context is not None and len(urls) > 1:  # (one URL: open_connection says so)
        for each in urls:
            if not parse_url(each).secure:
                raise ValueError(f"an ssl_context was given for {each}, which does not use TLS")

    def report(state: str, attempt: int, **kw: object) -> None:
        if on_state is not None:
            on_state(ReconnectEvent(state, attempt, url=target, **kw))  # type: ignore[arg-type]

    failures = 0  # attempts and connections failed since the last Welcome
    waits = 0  # delays waited since the last Welcome: the backoff's attempt number
    tried = 0  # servers tried since the last wait (or the loss of a lasting connection)
    index = 0
    while True:
        target = urls[index]
        tried += 1
        report("connecting", failures + 1)
        connected_at: float | None = None
        try:
            hello = hello_factory()
            if inspect.isawaitable(hello):
                hello = await hello
            async with open_connection(
                target,
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
                connected_at = trio.current_time()
                failures = waits = 0
                report("connected", 0, connection=conn)
                return await session_fn(conn)
        except BaseException as exc:
            if not _retryable(exc, fatal_codes):
                raise
            error: BaseException = exc
        failures += 1
        report("disconnected", failures, error=error)
        index = (index + 1) % len(urls)
        if connected_at is not None and trio.current_time() - connected_at >= LASTING_CONNECTION:
            tried = 1  # a new round, of which the lost server was the first
        if tried < len(urls):
            continue  # the next server at once: it has not been tried since the last wait
        waits += 1
        if backoff.exhausted(waits):
            report("given_up", failures, error=error)
            raise error
        delay = backoff.delay(waits, rng)
        if connected_at is None and isinstance(error, HandshakeError) and error.retry_after:
            delay = max(delay, error.retry_after)
        report("waiting", failures, error=error, delay=delay)
        await trio.sleep(delay)
        tried = 0
