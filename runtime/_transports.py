"""Opening and serving connections over TCP, TLS, WebSocket and secure WebSocket.

The URL's scheme picks the transport (see :mod:`runtime._url`); everything above the wire
is the same :class:`runtime.Connection`.
"""

from __future__ import annotations

import math
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import NoReturn

import attrs
import trio

import protocol
from protocol import Error, ErrorCode, Welcome

from . import _ws
from ._connection import (
    DEFAULT_CLOSE_TIMEOUT,
    DEFAULT_MAX_OUTGOING,
    DEFAULT_SEND_TIMEOUT,
    Connection,
)
from ._transport_errors import ConnectionClosed, HandshakeError
from ._url import Url, format_host, parse_url
from ._wire import SocketWire, StreamWire, Wire

#: Default seconds a server gives a new connection for its TLS/WebSocket handshake and Hello.
DEFAULT_HANDSHAKE_TIMEOUT = 10.0

Handler = Callable[[Connection], Awaitable[object]]


def _peer_name(scheme: str, stream: trio.abc.Stream) -> str:
    """``scheme://host:port`` of the socket under ``stream``."""
    inner = stream.transport_stream if isinstance(stream, trio.SSLStream) else stream
    if isinstance(inner, trio.SocketStream):
        try:
            host, port = inner.socket.getpeername()[:2]
        except OSError:
            return f"{scheme}://?"
        return f"{scheme}://{format_host(host)}:{port}"
    return f"{scheme}://{type(inner).__name__}"


def _check_ssl(url: Url, ssl_context: ssl.SSLContext | None, *, server: bool) -> None:
    if ssl_context is not None and not url.secure:
        raise ValueError(f"an ssl_context was given for {url}, which does not use TLS")
    if server and url.secure and ssl_context is None:
        raise ValueError(f"serving {url} needs an ssl_context holding the server's certificate")


@asynccontextmanager
async def open_connection(
    url: str,
    *,
    hello: protocol.Hello,
    ssl_context: ssl.SSLContext | None = None,
    heartbeat: float | None = None,
    max_frame_size: int = protocol.DEFAULT_MAX_FRAME_SIZE,
    max_outgoing: int = DEFAULT_MAX_OUTGOING,
    connect_timeout: float = 10,
    send_timeout: float = DEFAULT_SEND_TIMEOUT,
    close_timeout: float = DEFAULT_CLOSE_TIMEOUT,
) -> AsyncIterator[Connection]:
    """Connect to a server, exchange Hello and Welcome, and yield the open connection.

    Args:
      url: ``tcp://``, ``tls://``, ``ws://`` or ``wss://`` + ``host:port[/path]``.
      hello: the Hello to send (build it with ``mid=0``; the connection numbers its own
        messages from 1, see :attr:`Connection.next_mid`).
      ssl_context: for ``tls://`` and ``wss://``; the system's default trust when None.
      heartbeat: seconds between pings on an idle line; None takes the Welcome's value.
      max_frame_size: largest frame body accepted from the server.
      max_outgoing: bound of the outgoing buffer in bytes (see :class:`SendBufferFull`).
      connect_timeout: seconds for connecting, the TLS/WebSocket handshake and the Welcome.
      send_timeout: seconds :meth:`Connection.send` waits for room in the buffer.
      close_timeout: seconds a graceful close may take.

    Raises:
      OSError: the server could not be reached (``ConnectionRefusedError``, ...), a TLS or
        WebSocket handshake failed (``ConnectionError``), or ``TimeoutError`` when the
        connection and handshake took longer than ``connect_timeout``.
      HandshakeError: the server answered the Hello with an Error (``busy``, ...).
      ConnectionClosed: the server closed the connection before answering.

    Resource handling: the connection's tasks run in a nursery of this context manager.
    Leaving the block normally closes the connection gracefully (Bye, then a close bounded
    by ``close_timeout``); leaving it with an exception cuts the connection at once and
    lets the exception through unwrapped.
    """
    parsed = parse_url(url)
    _check_ssl(parsed, ssl_context, server=False)
    try:
        async with trio.open_nursery() as nursery:
            try:
                with trio.fail_after(connect_timeout):
                    wire, peer = await _dial(parsed, nursery, ssl_context, max_frame_size)
            except trio.TooSlowError:
                raise TimeoutError(
                    f"could not connect to {url} within {connect_timeout:g} s"
                ) from None
            conn = Connection(
                wire,
                protocol.Session(side="client"),
                peer,
                parsed.scheme,
                max_frame_size=max_frame_size,
                max_outgoing=max_outgoing,
                send_timeout=send_timeout,
                close_timeout=close_timeout,
            )
            async with running(conn):
                try:
                    with trio.fail_after(connect_timeout):
                        await client_handshake(conn, hello, heartbeat=heartbeat)
                except trio.TooSlowError:
                    raise TimeoutError(
                        f"no Welcome from {peer} within {connect_timeout:g} s"
                    ) from None
                yield conn
    except BaseExceptionGroup as group:
        if len(group.exceptions) == 1:
            reraise_alone(group.exceptions[0])
        raise


# ---------------------------------------------------------------------------------------
# Helpers of the factories (also used by tests over in-memory streams).


@asynccontextmanager
async def running(conn: Connection) -> AsyncIterator[Connection]:
    """Run ``conn``'s background tasks around the body; close it when the body exits.

    A normal exit closes gracefully (Bye); an exception or cancellation cuts the transport
    and propagates as itself, not wrapped in an exception group.
    """
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(conn._run)
            try:
                yield conn
            except BaseException:
                conn._abort("closed by an exception in the application")
                raise
            await conn.aclose()
    except BaseExceptionGroup as group:
        if len(group.exceptions) == 1:
            reraise_alone(group.exceptions[0])
        raise


def reraise_alone(exc: BaseException) -> NoReturn:
    """Raise ``exc``, the only member of an exception group, keeping its own context."""
    __tracebackhide__ = True
    context = exc.__context__
    try:
        raise exc
    finally:
        exc.__context__ = context
        del exc, context


async def client_handshake(
    conn: Connection, hello: protocol.Hello, *, heartbeat: float | None
) -> protocol.Welcome:
    """Send ``hello``, wait for the Welcome and start heartbeats (the caller bounds the time).

    Args:
      heartbeat: the interval to use; None takes the Welcome's.

    Raises:
      HandshakeError: the server answered with an Error.
      ConnectionClosed: the connection closed before the answer.
    """
    if hello.max_frame is None:  # tell the server how big a frame (a bundle) may be
        hello = attrs.evolve(hello, max_frame=conn.max_frame_size)
    try:
        conn.send_nowait(hello)
    except ConnectionClosed:
        pass  # the server spoke first and closed (busy...): its Error is read below
    answer = await conn.receive()
    if type(answer) is Error:
        raise HandshakeError(answer.code, answer.message, answer.retry_after)
    assert type(answer) is Welcome  # the session allows nothing else here
    conn.welcome = answer
    conn._peer_open = True
    conn._use_bundles(answer.version)
    if answer.max_frame is not None:
        conn._send_limit = answer.max_frame
    interval = heartbeat if heartbeat is not None else answer.heartbeat
    if interval and math.isfinite(interval):
        conn._start_heartbeat(interval)
    return answer


async def _dial(
    url: Url, nursery: trio.Nursery, ssl_context: ssl.SSLContext | None, max_frame_size: int
) -> tuple[Wire, str]:
    tcp = await trio.open_tcp_stream(url.host, url.port)
    stream: trio.abc.Stream = tcp
    try:
        if url.secure:
            tls = trio.SSLStream(
                tcp,
                ssl_context or ssl.create_default_context(),
                server_hostname=url.host,
                https_compatible=True,
            )
            try:
                await tls.do_handshake()
            except trio.BrokenResourceError as exc:
                raise ConnectionError(
                    f"TLS handshake with {url} failed: {exc.__cause__ or exc!r}"
                ) from exc
            stream = tls
        peer = _peer_name(url.scheme, stream)
        if url.websocket:
            return await _ws.client_wire(nursery, stream, url, max_frame_size=max_frame_size), peer
        if stream is tcp:
            return SocketWire.take(tcp), peer
        return StreamWire(stream), peer
    except BaseException:
        await trio.aclose_forcefully(tcp)
        raise


async def serve(
    url: str,
    handler: Handler,
    *,
    ssl_context: ssl.SSLContext | None = None,
    heartbeat: float | None = None,
    max_connections: int = 1024,
    max_frame_size: int = protocol.DEFAULT_MAX_FRAME_SIZE,
    max_outgoing: int = DEFAULT_MAX_OUTGOING,
    handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
    send_timeout: float = DEFAULT_SEND_TIMEOUT,
    close_timeout: float = DEFAULT_CLOSE_TIMEOUT,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Listen on ``url`` and run ``await handler(conn)`` for each accepted connection.

    The first message ``handler`` receives is the peer's Hello (the session enforces it);
    the handler answers with a Welcome itself, or with an Error followed by
    ``conn.aclose()``. It should put ``heartbeat=conn.session.heartbeat`` in the Welcome,
    so that the client pings at the same pace.

    Args:
      url: where to listen, e.g. ``tcp://127.0.0.1:0`` (port 0: any free port).
      handler: ``async def handler(conn)``, run once per connection.
      ssl_context: the server's TLS context (with its certificate); needed for ``tls://``
        and ``wss://``.
      heartbeat: seconds between pings on an idle connection; a peer silent for 3
        intervals is declared dead. None disables heartbeats.
      max_connections: connections served at once; one more is accepted, answered with
        ``Error(code="busy")`` and closed.
      max_frame_size: largest frame body accepted from a peer.
      max_outgoing: bound of each connection's outgoing buffer in bytes.
      handshake_timeout: seconds a new connection has for its TLS/WebSocket handshake,
        and again for its Hello.
      send_timeout, close_timeout: as for :func:`open_connection`.
      task_status: receives the URL actually bound (with the real port) once listening.

    Error handling: a peer's bad bytes, failed handshakes and lost connections close that
    connection only. When the handler returns or raises :class:`ConnectionClosed`, the
    connection is closed; any other exception from the handler propagates and ends
    ``serve`` (its supervisor decides what happens next).
    """
    parsed = parse_url(url)
    _check_ssl(parsed, ssl_context, server=True)
    listeners = await trio.open_tcp_listeners(parsed.port, host=parsed.host)
    port = listeners[0].socket.getsockname()[1]
    active = 0

    async def serve_stream(stream: trio.SocketStream) -> None:
        nonlocal active
        peer = _peer_name(parsed.scheme, stream)
        # The nursery holds the connection's tasks (and trio-websocket's reader); every one
        # of them ends when the connection is closed.
        async with trio.open_nursery() as nursery:
            wire = await _accept(parsed, stream, nursery, ssl_context, max_frame_size, handshake_timeout)
            if wire is None:
                return
            conn = Connection(
                wire,
                protocol.Session(side="server", heartbeat=heartbeat),
                peer,
                parsed.scheme,
                max_frame_size=max_frame_size,
                max_outgoing=max_outgoing,
                send_timeout=send_timeout,
                close_timeout=close_timeout,
                hello_timeout=handshake_timeout,
            )
            async with running(conn):
                if active >= max_connections:
                    await conn.aclose(
                        Error(mid=conn.next_mid(), code=ErrorCode.BUSY, message="too many connections")
                    )
                    return
                active += 1
                try:
                    await handler(conn)
                except* ConnectionClosed:
                    pass
                finally:
                    active -= 1

    async with trio.open_nursery() as nursery:
        await nursery.start(trio.serve_listeners, serve_stream, listeners)
        task_status.started(str(parsed.with_port(port)))


async def _accept(
    url: Url,
    tcp: trio.SocketStream,
    nursery: trio.Nursery,
    ssl_context: ssl.SSLContext | None,
    max_frame_size: int,
    handshake_timeout: float,
) -> Wire | None:
    """The TLS and WebSocket handshakes of an accepted socket; None if they failed."""
    stream: trio.abc.Stream = tcp
    with trio.move_on_after(handshake_timeout):
        try:
            if url.secure:
                assert ssl_context is not None
                stream = trio.SSLStream(tcp, ssl_context, server_side=True, https_compatible=True)
                await stream.do_handshake()
            if url.websocket:
                return await _ws.server_wire(nursery, stream, max_frame_size=max_frame_size)
            if stream is tcp:
                return SocketWire.take(tcp)
            return StreamWire(stream)
        except (trio.BrokenResourceError, ConnectionError):
            pass
    await trio.aclose_forcefully(tcp)
    return None
