"""Opening and serving connections over TCP, TLS, WebSocket and secure WebSocket.

The URL's scheme picks the transport (see :mod:`runtime._url`); everything above the wire
is the same :class:`runtime.Connection`.

A server admits each accepted socket against four limits (:func:`serve`): connections in
all, connections from the same peer address, connections still in their handshake, and
those from the same peer address still in their handshake. One over a limit is refused
at once, as cheaply as its transport allows, with a ``busy`` answer that
:func:`open_connection` raises as ``HandshakeError(code="busy")``.
"""

from __future__ import annotations

import errno
import math
import os
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, NoReturn

import attrs
import trio

import protocol
from protocol import Error, ErrorCode, Welcome

from . import _ws
from ._connection import (
    DEFAULT_CLOSE_TIMEOUT,
    DEFAULT_MAX_OUTGOING,
    DEFAULT_MAX_OUTGOING_TOTAL,
    DEFAULT_SEND_TIMEOUT,
    DEFAULT_WRITE_TIMEOUT,
    Connection,
    check_max_frame_size,
    check_write_timeout,
    logger,
)
from ._outgoing import OutgoingBudget
from ._transport_errors import ConnectionClosed, HandshakeError, TLSHandshakeFailed, WrongProtocol
from ._url import Url, format_host, parse_url
from ._wire import READ_SIZE, SocketWire, StreamWire, Wire

#: Default seconds a server gives a new connection for its TLS/WebSocket handshake and Hello.
DEFAULT_HANDSHAKE_TIMEOUT = 10.0
#: Default bound of the connections :func:`serve` serves at once (per listening URL).
DEFAULT_MAX_CONNECTIONS = 1024
#: Default bound of the connections from one peer address (IP) at once: a quarter of
#: :data:`DEFAULT_MAX_CONNECTIONS`, so that one host (one process gone wrong) cannot lock
#: every other one out, while a cluster of up to 255 worker processes on the leader's own
#: host (all of them 127.0.0.1) still fits beside a client.
DEFAULT_MAX_CONNECTIONS_PER_ADDRESS = 256
#: Default bound of the connections at once in their TLS/WebSocket handshake or waiting for
#: their Hello (a slow or silent peer holds one for up to the handshake timeout).
DEFAULT_MAX_HANDSHAKES = 128
#: Default bound of the connections from one peer address (IP) at once in their handshake:
#: a quarter of :data:`DEFAULT_MAX_HANDSHAKES`, so that one host's silent connections
#: cannot take every handshake slot and lock every other host out.
DEFAULT_MAX_HANDSHAKES_PER_ADDRESS = 32
#: The ``retry_after`` of a refusal for too many connections (in all or from one address).
BUSY_RETRY_AFTER = 1.0
#: The ``retry_after`` of a refusal for too many handshakes (these end quickly).
HANDSHAKE_BUSY_RETRY_AFTER = 0.25
# accept(2) errors that say the system is overloaded: wait a moment and accept again.
_ACCEPT_CAPACITY_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})
_ACCEPT_RETRY_DELAY = 0.1
_LOST = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)

Handler = Callable[[Connection], Awaitable[object]]


def _peer_address(stream: trio.SocketStream) -> str:
    """The peer's IP address (what :func:`serve` counts connections per)."""
    try:
        return str(stream.socket.getpeername()[0])
    except OSError:
        return "?"


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
    decode_payloads: bool = True,
) -> AsyncIterator[Connection]:
    """Connect to a server, exchange Hello and Welcome, and yield the open connection.

    Args:
      url: ``tcp://``, ``tls://``, ``ws://`` or ``wss://`` + ``host:port[/path]``.
      hello: the Hello to send (build it with ``mid=0``; the connection numbers its own
        messages from 1, see :attr:`Connection.next_mid`).
      ssl_context: for ``tls://`` and ``wss://``; the system's default trust when None.
      heartbeat: seconds between pings on an idle line; None takes the Welcome's value.
      max_frame_size: largest frame body accepted from the server (at least
        ``protocol.MIN_MAX_FRAME``).
      max_outgoing: bound of the outgoing buffer in bytes (see :class:`SendBufferFull`).
      connect_timeout: seconds for connecting, the TLS/WebSocket handshake and the Welcome.
      send_timeout: seconds :meth:`Connection.send` waits for room in the buffer.
      close_timeout: seconds a graceful close may take.
      decode_payloads: False keeps received payloads :class:`protocol.Encoded` (see
        :class:`protocol.FrameDecoder`): the receiver decodes each itself.

    Raises:
      WrongProtocol: what answered does not speak the protocol of the URL's scheme (an
        HTTP server, a WebSocket listener reached with ``tcp://``, a plain one with
        ``tls://``, a TCP listener with ``ws://``...); the message says what answered.
      TLSHandshakeFailed: the TLS handshake failed (an untrusted or wrong certificate...).
      OSError: otherwise, the server could not be reached (``ConnectionRefusedError``,
        ...), a WebSocket handshake failed (``ConnectionError``), or ``TimeoutError`` when
        the connection and handshake took longer than ``connect_timeout``. (The two above
        are ``ConnectionError`` too.)
      HandshakeError: the server answered the Hello with an Error, or refused the
        connection for its limits (``busy``, with ``retry_after``; over WebSocket its
        HTTP 503 answer), ...
      ConnectionClosed: the server closed the connection before answering.

    Resource handling: the connection's tasks run in a nursery of this context manager.
    Leaving the block normally closes the connection gracefully (Bye, then a close bounded
    by ``close_timeout``); leaving it with an exception cuts the connection at once and
    lets the exception through unwrapped.
    """
    check_max_frame_size(max_frame_size)
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
                decode_payloads=decode_payloads,
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
    try:
        answer = await conn.receive()
    except ConnectionClosed as exc:
        wrong = _wrong_protocol(conn)
        if wrong is None:
            raise
        raise wrong from exc
    if type(answer) is Error:
        raise HandshakeError(answer.code, answer.message, answer.retry_after)
    assert type(answer) is Welcome  # the session allows nothing else here
    conn._welcomed(answer)
    interval = heartbeat if heartbeat is not None else answer.heartbeat
    if interval and math.isfinite(interval):
        conn._start_heartbeat(interval)
    return answer


def _wrong_protocol(conn: Connection) -> WrongProtocol | None:
    """What the server said instead of a Welcome, if it does not speak this protocol (from
    :attr:`Connection.foreign_answer`); None if it may (then its close says what happened)."""
    answer = conn.foreign_answer
    if answer is None:
        return None
    scheme = conn.scheme
    if not answer:
        if scheme != "tcp":
            return None  # past a TLS or WebSocket handshake: a server of ours, closing
        return WrongProtocol(
            conn.peer,
            "the server closed the connection without answering the Hello",
            "not a trio-actors listener over tcp:// (a tls:// one?)",
        )
    if answer.startswith(b"HTTP/"):
        status = answer.split(b"\r\n", 1)[0].decode("ascii", "replace")
        return WrongProtocol(
            conn.peer,
            f"the server answered in HTTP ({status!r})",
            "a web server, or a WebSocket listener: use ws:// or wss:// for one of ours",
        )
    if answer[:1] in (b"\x15", b"\x16") and answer[1:2] == b"\x03":  # a TLS record
        return WrongProtocol(
            conn.peer,
            "the server answered in TLS",
            f"use {'wss' if scheme == 'ws' else 'tls'}:// for a TLS listener",
        )
    return WrongProtocol(
        conn.peer,
        f"the server's answer is not trio-actors frames (it began {answer[:16]!r})",
        "check the port and the scheme",
    )


def _tls_failure(url: Url, exc: trio.BrokenResourceError) -> ConnectionError:
    """The error for a TLS handshake with ``url`` that failed with ``exc``."""
    cause = exc.__cause__
    if isinstance(cause, ssl.SSLCertVerificationError):
        return TLSHandshakeFailed(str(url), f"certificate verify failed: {cause.verify_message}")
    if isinstance(cause, ssl.SSLError):
        reason = cause.reason or str(cause)
        if reason in _NOT_TLS_REASONS:
            plain = "ws" if url.websocket else "tcp"
            return WrongProtocol(
                str(url),
                f"the server does not answer in TLS ({reason})",
                f"a {plain}:// listener? use {plain}:// for it",
            )
        return TLSHandshakeFailed(str(url), f"{reason} ({cause})")
    return TLSHandshakeFailed(str(url), "the server closed the connection during the handshake")


# OpenSSL's reasons for an answer to a ClientHello that is not TLS at all.
_NOT_TLS_REASONS = frozenset(
    {
        "WRONG_VERSION_NUMBER",
        "HTTP_REQUEST",
        "PACKET_LENGTH_TOO_LONG",
        "RECORD_LAYER_FAILURE",
        "UNKNOWN_PROTOCOL",
    }
)


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
                raise _tls_failure(url, exc) from exc
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
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
    max_connections_per_address: int = DEFAULT_MAX_CONNECTIONS_PER_ADDRESS,
    max_handshakes: int = DEFAULT_MAX_HANDSHAKES,
    max_handshakes_per_address: int = DEFAULT_MAX_HANDSHAKES_PER_ADDRESS,
    max_frame_size: int = protocol.DEFAULT_MAX_FRAME_SIZE,
    max_outgoing: int = DEFAULT_MAX_OUTGOING,
    handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
    send_timeout: float = DEFAULT_SEND_TIMEOUT,
    close_timeout: float = DEFAULT_CLOSE_TIMEOUT,
    decode_payloads: bool = True,
    write_timeout: float = DEFAULT_WRITE_TIMEOUT,
    max_outgoing_total: float = DEFAULT_MAX_OUTGOING_TOTAL,
    allowed_origins: Callable[[str], bool] | None = None,
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
      max_connections: connections served at once, counted from when they are accepted
        until their handler returns (or their handshake fails).
      max_connections_per_address: the same, from any one peer IP address.
      max_handshakes: connections at once in their TLS/WebSocket handshake or not yet
        past their Hello.
      max_handshakes_per_address: the same, from any one peer IP address.
      max_frame_size: largest frame body accepted from a peer (at least
        ``protocol.MIN_MAX_FRAME``).
      max_outgoing: bound of each connection's outgoing buffer in bytes.
      handshake_timeout: seconds a new connection has for its TLS/WebSocket handshake,
        and again for its Hello.
      send_timeout, close_timeout, decode_payloads: as for :func:`open_connection` (a
        broker passes ``decode_payloads=False``: it forwards payloads undecoded).
      write_timeout: seconds a write to a peer may wait with no byte taken (its TCP
        acknowledged none) before that peer is cut as a slow consumer (logged once; the
        handler sees :class:`ConnectionClosed` with ``code="slow_consumer"``), so that a
        peer that never reads cannot hold ``max_outgoing`` bytes for as long as it likes;
        a peer that reads, however slowly, is not cut. ``math.inf``: never.
      max_outgoing_total: bound of the bytes queued for all the connections of this
        listener, in all (1 GiB): a connection that would go over it makes room by cutting
        the connections that hold the most as slow consumers (logged once each, as for
        ``write_timeout``), or gets :class:`SendBufferFull` if that is not enough; so that
        many peers that stop reading at once cannot each hold ``max_outgoing``.
        ``math.inf``: no bound.
      allowed_origins: ``ws://`` and ``wss://``: ``allowed_origins(origin)`` says whether
        a WebSocket upgrade carrying that ``Origin`` header (which browsers send: the
        origin of the page, e.g. ``"http://localhost:8080"``) is accepted. One refused is
        answered ``403 Forbidden`` with a plain-text body naming the origin and how to
        allow it, logged (a warning, at most one line a second per listener, counting
        those not logged) and closed; the listener serves on. An upgrade without
        ``Origin`` (a client that is not a browser) is always accepted. None: no check.
        Not used by ``tcp://`` and ``tls://``.
      task_status: receives the URL actually bound (with the real port) once listening.

    A ``tls://`` or ``wss://`` listener whose ``ssl_context`` asks for client certificates
    (``verify_mode`` ``CERT_OPTIONAL`` or ``CERT_REQUIRED``, with the CAs that issue them
    loaded) verifies them in the TLS handshake: one that fails is refused there (the
    handler never sees it), and a verified one is the connection's
    :attr:`Connection.peer_certificate`.

    A connection over one of the limits is refused as soon as it is accepted, before any
    handshake of its own: over TCP it is sent ``Error(code="busy", retry_after=...)`` at
    once and closed (after a brief wait for the peer to read it and go); over WebSocket the
    HTTP upgrade is answered ``503`` with ``Retry-After`` and the reason; over TLS (and
    wss) the TLS handshake is completed first, then the same. Refusals in progress are
    bounded by ``max_handshakes`` too; beyond that a connection is closed unanswered.
    :func:`open_connection` raises ``HandshakeError(code="busy")`` for all of these.

    Error handling: whatever happens on one connection ends that connection only. A
    peer's bad bytes get their protocol error; failed handshakes and lost connections are
    closed quietly. An :class:`Exception` raised by ``handler`` (other than
    :class:`ConnectionClosed`, or an exception group of nothing else), or by the
    connection's own tasks, is an internal failure: logged once with its traceback (logger
    ``runtime.connection``, naming the peer), answered ``Error(code="internal")`` when the
    peer can still be told, and that connection is closed; ``serve`` goes on serving the
    others. A failure in the connection's tasks reaches ``handler`` as
    :class:`ConnectionClosed` with ``code="internal"``. BaseExceptions (cancellation,
    KeyboardInterrupt) propagate.
    """
    for name, value in (
        ("max_connections", max_connections),
        ("max_connections_per_address", max_connections_per_address),
        ("max_handshakes", max_handshakes),
        ("max_handshakes_per_address", max_handshakes_per_address),
    ):
        if value < 1:
            raise ValueError(f"{name} must be at least 1, got {value}")
    check_write_timeout(write_timeout)
    if not max_outgoing_total > 0:
        raise ValueError(
            f"max_outgoing_total must be positive (math.inf: none), got {max_outgoing_total!r}"
        )
    budget = OutgoingBudget.of(max_outgoing_total)
    check_max_frame_size(max_frame_size)
    parsed = parse_url(url)
    _check_ssl(parsed, ssl_context, server=True)
    admission = Admission(
        max_connections, max_connections_per_address, max_handshakes, max_handshakes_per_address
    )
    listeners = await trio.open_tcp_listeners(parsed.port, host=parsed.host)
    port = listeners[0].socket.getsockname()[1]
    bound = str(parsed.with_port(port))
    origins = None
    if parsed.websocket and allowed_origins is not None:
        origins = _ws.OriginPolicy(allowed_origins, listener=bound)

    async def serve_admitted(stream: trio.SocketStream, ticket: Ticket) -> None:
        peer = _peer_name(parsed.scheme, stream)
        try:
            # The nursery holds the connection's tasks (and trio-websocket's reader);
            # every one of them ends when the connection is closed.
            async with trio.open_nursery() as nursery:
                accepted = await _accept(
                    parsed, stream, nursery, ssl_context, max_frame_size, handshake_timeout, origins
                )
                if accepted is None:
                    return
                wire, peer_certificate = accepted
                conn = Connection(
                    wire,
                    protocol.Session(side="server", heartbeat=heartbeat),
                    peer,
                    parsed.scheme,
                    max_frame_size=max_frame_size,
                    max_outgoing=max_outgoing,
                    send_timeout=send_timeout,
                    close_timeout=close_timeout,
                    write_timeout=write_timeout,
                    budget=budget,
                    hello_timeout=handshake_timeout,
                    on_hello=ticket.hello_passed,
                    decode_payloads=decode_payloads,
                    peer_certificate=peer_certificate,
                )
                async with running(conn):
                    try:
                        await handler(conn)
                    except Exception as exc:
                        _handler_failed(conn, exc)
                    finally:
                        ticket.leave()
        except Exception as exc:  # a bug of ours outside the connection: still this one only
            logger.error("internal error serving %s; closing that connection", peer, exc_info=exc)
        finally:
            ticket.leave()
            await trio.aclose_forcefully(stream)  # (a no-op when a wire took its socket)

    async def refuse(stream: trio.SocketStream, error: Error) -> None:
        peer = _peer_name(parsed.scheme, stream)
        try:
            if admission.start_refusal():
                try:
                    with trio.move_on_after(handshake_timeout):
                        await _say_busy(parsed, stream, error, ssl_context, close_timeout)
                except (*_LOST, trio.TooSlowError):
                    pass  # (a peer that went, or failed its handshake: nothing to tell)
                except Exception as exc:
                    logger.error("internal error refusing %s", peer, exc_info=exc)
                finally:
                    admission.end_refusal()
        finally:
            await trio.aclose_forcefully(stream)

    def admit(stream: trio.SocketStream, nursery: trio.Nursery) -> None:
        ticket = admission.admit(_peer_address(stream))
        if isinstance(ticket, Error):
            nursery.start_soon(refuse, stream, ticket)
        else:
            nursery.start_soon(serve_admitted, stream, ticket)

    async with trio.open_nursery() as nursery:
        for listener in listeners:
            nursery.start_soon(_accept_loop, listener, admit, nursery)
        task_status.started(bound)


@attrs.define(eq=False)
class Admission:
    """The connections of one :func:`serve`: how many, from which address, how many in
    their handshake; who is let in (a :class:`Ticket`) and who is refused (an Error)."""

    max_connections: int
    max_per_address: int
    max_handshakes: int
    max_handshakes_per_address: int
    connections: int = 0
    per_address: dict[str, int] = attrs.field(factory=dict)
    handshakes: int = 0
    handshakes_per_address: dict[str, int] = attrs.field(factory=dict)
    refusals: int = 0

    def admit(self, address: str) -> Ticket | Error:
        """Let a new connection from ``address`` in (counted, in its handshake), or the
        ``busy`` Error that refuses it."""
        if self.connections >= self.max_connections:
            reason, retry_after = "too many connections", BUSY_RETRY_AFTER
        elif self.per_address.get(address, 0) >= self.max_per_address:
            reason, retry_after = f"too many connections from {address}", BUSY_RETRY_AFTER
        elif self.handshakes_per_address.get(address, 0) >= self.max_handshakes_per_address:
            reason = f"too many connections from {address} in their handshake"
            retry_after = HANDSHAKE_BUSY_RETRY_AFTER
        elif self.handshakes >= self.max_handshakes:
            reason, retry_after = (
                "too many connections in their handshake",
                HANDSHAKE_BUSY_RETRY_AFTER,
            )
        else:
            self.connections += 1
            self.per_address[address] = self.per_address.get(address, 0) + 1
            self.handshakes += 1
            self.handshakes_per_address[address] = self.handshakes_per_address.get(address, 0) + 1
            return Ticket(self, address)
        return Error(mid=1, code=ErrorCode.BUSY, message=reason, retry_after=retry_after)

    def start_refusal(self) -> bool:
        """Whether one more refusal may be answered (they are bounded like handshakes);
        if so, it counts until :meth:`end_refusal`."""
        if self.refusals >= self.max_handshakes:
            return False
        self.refusals += 1
        return True

    def end_refusal(self) -> None:
        self.refusals -= 1


@attrs.define(eq=False)
class Ticket:
    """One admitted connection's place in its :class:`Admission`."""

    admission: Admission
    address: str
    handshaking: bool = True
    inside: bool = True

    def hello_passed(self) -> None:
        """The peer's Hello has passed: its handshake slot is free (once)."""
        if self.handshaking:
            self.handshaking = False
            admission = self.admission
            admission.handshakes -= 1
            left = admission.handshakes_per_address[self.address] - 1
            if left:
                admission.handshakes_per_address[self.address] = left
            else:
                del admission.handshakes_per_address[self.address]

    def leave(self) -> None:
        """The connection is over (or its handler done): free its slots (once)."""
        self.hello_passed()
        if self.inside:
            self.inside = False
            admission = self.admission
            admission.connections -= 1
            left = admission.per_address[self.address] - 1
            if left:
                admission.per_address[self.address] = left
            else:
                del admission.per_address[self.address]


def _handler_failed(conn: Connection, exc: Exception) -> None:
    """``serve``'s handler raised ``exc``: the end of its connection (ConnectionClosed, or a
    group of nothing else), else an internal failure of that connection only."""
    if isinstance(exc, ConnectionClosed):
        return
    if isinstance(exc, ExceptionGroup) and exc.split(ConnectionClosed)[1] is None:
        return
    conn._internal_failure(exc, "in the handler of")


async def _accept_loop(
    listener: trio.SocketListener,
    admit: Callable[[trio.SocketStream, trio.Nursery], None],
    nursery: trio.Nursery,
) -> NoReturn:
    """Accept connections for ever, each admitted (or refused) in the order accepted."""
    async with listener:
        while True:
            try:
                stream = await listener.accept()
            except OSError as exc:
                if exc.errno not in _ACCEPT_CAPACITY_ERRNOS:
                    raise
                logger.error(
                    "accept returned %s (%s); retrying in %g s",
                    errno.errorcode[exc.errno],
                    os.strerror(exc.errno),
                    _ACCEPT_RETRY_DELAY,
                )
                await trio.sleep(_ACCEPT_RETRY_DELAY)
                continue
            admit(stream, nursery)


async def _say_busy(
    url: Url,
    tcp: trio.SocketStream,
    error: Error,
    ssl_context: ssl.SSLContext | None,
    linger: float,
) -> None:
    """Tell a refused peer ``busy`` the way its transport allows (see :func:`serve`)."""
    stream: trio.abc.Stream = tcp
    if url.secure:
        assert ssl_context is not None
        stream = trio.SSLStream(tcp, ssl_context, server_side=True, https_compatible=True)
        await stream.do_handshake()
    if url.websocket:
        try:
            async with trio.open_nursery() as nursery:  # (for trio-websocket's reader task)
                await _ws.refuse(
                    nursery, stream, reason=error.message, retry_after=error.retry_after
                )
        except BaseExceptionGroup as group:
            if len(group.exceptions) == 1:
                reraise_alone(group.exceptions[0])
            raise
        return
    await stream.send_all(protocol.encode(error))
    if stream is tcp:
        await tcp.send_eof()
    # Let the peer read the answer and go: closing with its Hello unread would reset the
    # connection, and a reset may destroy the answer before the peer has read it.
    with trio.move_on_after(linger):
        while await stream.receive_some(READ_SIZE):
            pass


async def _accept(
    url: Url,
    tcp: trio.SocketStream,
    nursery: trio.Nursery,
    ssl_context: ssl.SSLContext | None,
    max_frame_size: int,
    handshake_timeout: float,
    origins: _ws.OriginPolicy | None = None,
) -> tuple[Wire, dict[str, Any] | None] | None:
    """The TLS and WebSocket handshakes of an accepted socket: the wire and the peer's
    verified certificate (None without one, or without TLS); None if they failed."""
    stream: trio.abc.Stream = tcp
    peer_certificate: dict[str, Any] | None = None
    with trio.move_on_after(handshake_timeout):
        try:
            if url.secure:
                assert ssl_context is not None
                tls = trio.SSLStream(tcp, ssl_context, server_side=True, https_compatible=True)
                await tls.do_handshake()
                # ({} when the context did not verify it: CERT_NONE asks for none.)
                peer_certificate = tls.getpeercert() or None
                stream = tls
            if url.websocket:
                wire: Wire = await _ws.server_wire(
                    nursery, stream, max_frame_size=max_frame_size, origins=origins
                )
            elif stream is tcp:
                wire = SocketWire.take(tcp)
            else:
                wire = StreamWire(stream)
            return wire, peer_certificate
        except _ws.OriginRefused as exc:
            assert origins is not None
            origins.log_refusal(exc.origin, _peer_name(url.scheme, tcp))
        except (trio.BrokenResourceError, ConnectionError):
            pass
    await trio.aclose_forcefully(tcp)
    return None
