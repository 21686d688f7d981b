"""The WebSocket wire: one binary WebSocket message per protocol frame (trio-websocket).

Writes are batched as on a byte stream: the frames queued together become as many
WebSocket messages, encoded by trio-websocket's wsproto connection and written with one
``send_all`` under trio-websocket's own send lock (its public ``send_message`` writes one
message per call). That uses five private attributes of ``WebSocketConnection``
(:data:`INTERNALS`), tested with trio-websocket 0.12 (``pyproject.toml`` pins
``>=0.12,<0.13``). Two guards keep a change of them from doing harm: another release than
the tested one (:data:`TESTED_RELEASE`) turns them off at import, and if one of the names is
missing each wire sees it when it is made (``hasattr``); either way frames go through the
public ``send_message`` instead: the same bytes on the wire, one write per frame instead
of one per batch (slower under load, nothing else). Setting the environment variable
``ACTORS_WS_PUBLIC_ONLY=1`` forces that public path; the suite runs the WebSocket
transport tests and a cluster over WebSocket both ways (``tests/test_runtime_ws_public.py``,
``tests/test_ws_batching.py``).

trio-websocket's own reader task runs in the connection's nursery under a cancel scope of
ours, so that a failed opening handshake (rejected, garbage instead of HTTP, dropped) wakes
the side waiting for it at once instead of at its timeout, and so that closing the wire
always ends that task.

A server over its connection limits answers the HTTP upgrade with ``503 Service
Unavailable``, a ``Retry-After`` header and the reason as the body (:func:`refuse`); the
client turns that answer into ``HandshakeError(code="busy")``, as a ``busy`` Error frame
would be over TCP.

A server given an :class:`OriginPolicy` answers an upgrade whose ``Origin`` header the
policy refuses with ``403 Forbidden`` and a plain-text body naming the origin and how to
allow it (:func:`server_wire`): a web page in a browser, which always sends the page's
origin, cannot open a WebSocket to a listener that did not allow it. An upgrade without
``Origin`` (any client that is not a browser) is not checked.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Any

import attrs
import trio
import trio_websocket
from wsproto.events import BytesMessage

import protocol

from ._transport_errors import ConnectionClosed, HandshakeError, WrongProtocol
from ._url import Url, format_host
from ._wire import socket_under, tcp_bytes_acked

#: The private attributes of ``trio_websocket.WebSocketConnection`` that batched writes use
#: (see :meth:`WebSocketWire.send_frames` for what each one is used for).
INTERNALS = ("_wsproto", "_stream_lock", "_stream", "_close_reason", "_abort_web_socket")
#: The trio-websocket release whose internals :data:`INTERNALS` were read from and tested
#: with (a version prefix): with any other, batched writes are off.
TESTED_RELEASE = "0.12."
#: Whether batched writes may use them (see the module docstring); tests may set it False.
USE_INTERNALS = trio_websocket.__version__.startswith(TESTED_RELEASE) and os.environ.get(
    "ACTORS_WS_PUBLIC_ONLY", ""
) not in ("1", "true", "yes")

#: Messages trio-websocket may hold between its reader task and ours.
MESSAGE_QUEUE_SIZE = 4
#: Bytes trio-websocket asks of the socket per read.
RECEIVE_BUFFER_SIZE = 64 * 1024
_MESSAGE_TOO_BIG = 1009
#: The HTTP status of an upgrade refused for the server's connection limits.
BUSY_STATUS = 503
#: The HTTP status of an upgrade refused for its ``Origin`` (see :class:`OriginPolicy`).
FORBIDDEN_STATUS = 403
#: What the body of a ``403`` says to do about a refused origin.
ALLOW_ORIGIN_HINT = "allow it with --allow-origin or [leader] allowed_origins"
#: Seconds between two log lines about refused origins on one listener (the refusals in
#: between are counted, and the next line says how many).
ORIGIN_LOG_INTERVAL = 1.0
# How much of a refused Origin is quoted back (h11 bounds the whole request anyway).
_ORIGIN_QUOTED = 200

#: Where refused origins are logged (the logger of the connections).
logger = logging.getLogger("runtime.connection")


class OriginRefused(ConnectionError):
    """A WebSocket upgrade was answered ``403``: its ``Origin`` is not allowed.

    Attributes:
      origin: the refused ``Origin`` header's value.
    """

    def __init__(self, origin: str) -> None:
        super().__init__(f"the WebSocket upgrade's Origin {origin!r} is not allowed")
        self.origin = origin


@attrs.define(eq=False)
class OriginPolicy:
    """Which browser origins may open a WebSocket on one listener; logs the refusals.

    Attributes:
      allowed: ``allowed(origin)`` is True for an ``Origin`` header value that may open a
        WebSocket (e.g. ``"http://localhost:8080"``).
      listener: the listening URL, named in the log.
    """

    allowed: Callable[[str], bool]
    listener: str = ""
    # The trio time before which no refusal is logged, and the refusals not logged since.
    _quiet_until: float = attrs.field(default=-math.inf, init=False)
    _suppressed: int = attrs.field(default=0, init=False)

    def refused(self, headers: Sequence[tuple[bytes, bytes]]) -> str | None:
        """The first ``Origin`` among an upgrade request's ``headers`` that is not allowed,
        or None (none refused, or no ``Origin`` at all: not a browser)."""
        for name, value in headers:
            if name.lower() == b"origin":
                origin = value.decode("utf-8", "replace")
                if not self.allowed(origin):
                    return origin
        return None

    def log_refusal(self, origin: str, peer: str) -> None:
        """Log that ``peer``'s upgrade carrying ``origin`` was refused: at most once per
        :data:`ORIGIN_LOG_INTERVAL` (a line then counts the refusals not logged since)."""
        now = trio.current_time()
        if now < self._quiet_until:
            self._suppressed += 1
            return
        self._quiet_until = now + ORIGIN_LOG_INTERVAL
        suppressed, self._suppressed = self._suppressed, 0
        logger.warning(
            "%s: refused a WebSocket upgrade from %s: Origin %r is not allowed (%s)%s",
            self.listener or "listener",
            peer,
            origin[:_ORIGIN_QUOTED],
            ALLOW_ORIGIN_HINT,
            f"; {suppressed} more refused since the last such line" if suppressed else "",
        )


def forbidden_body(origin: str) -> bytes:
    """The body of the ``403`` answering an upgrade whose ``origin`` is refused."""
    quoted = origin if len(origin) <= _ORIGIN_QUOTED else origin[:_ORIGIN_QUOTED] + "..."
    return (
        f"WebSocket connections from origin {quoted!r} are not allowed here; {ALLOW_ORIGIN_HINT}\n"
    ).encode()


class _ReaderGuard:
    """Stands in for a nursery when trio-websocket starts its reader task.

    The task runs in ``nursery`` inside :attr:`task_scope` (cancelled when the wire is cut);
    when it ends, :attr:`handshake_scope` is cancelled, waking a handshake still waiting.
    """

    def __init__(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery
        self.handshake_scope = trio.CancelScope()
        self.task_scope = trio.CancelScope()
        # Why the handshake failed: the server's rejection, or (an exception of h11 or
        # wsproto) an answer that is not HTTP at all.
        self.error: Exception | None = None
        self.handshaking = True  # (an exception after the handshake is not caught here)

    def start_soon(
        self, fn: Callable[..., Awaitable[Any]], *args: Any, name: object = None
    ) -> None:
        self._nursery.start_soon(self._guard, fn, *args, name=name)

    @contextlib.contextmanager
    def cancel_on_error(self) -> Iterator[None]:
        """Stop the reader task if the handshake fails or is cancelled."""
        try:
            yield
        except BaseException:
            self.task_scope.cancel()
            raise

    async def _guard(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        try:
            with self.task_scope:
                await fn(*args)
        except trio_websocket.HandshakeError as exc:  # rejected by the server
            self.error = exc
        except Exception as exc:
            if not self.handshaking:
                raise
            self.error = exc  # what came back was not HTTP (h11 or wsproto says so)
        finally:
            self.handshake_scope.cancel()


class WebSocketWire:
    """A WebSocket connection carrying one whole frame per binary message."""

    whole_frames = True

    def __init__(
        self, ws: trio_websocket.WebSocketConnection, stream: trio.abc.Stream, guard: _ReaderGuard
    ) -> None:
        self._ws = ws
        self._stream = stream
        self._guard = guard
        # A release without one of the names: the public path (see the module docstring).
        self._batched = USE_INTERNALS and all(hasattr(ws, name) for name in INTERNALS)

    async def send_frames(self, frames: list[bytes]) -> None:
        ws = self._ws
        try:
            if len(frames) == 1 or not self._batched:
                for frame in frames:
                    await ws.send_message(frame)
                return
            # What send_message does for each frame (trio-websocket 0.12's
            # WebSocketConnection._send, read with TESTED_RELEASE), with one send_all for
            # all of them. The private names, and what a change of each would break:
            # - _close_reason (None, or the CloseReason once closing): sending after a
            #   close must raise, not write into a closed WebSocket;
            # - _wsproto (its wsproto.WSConnection; send() is wsproto's public API, which
            #   returns the bytes of an event): the framing of each message;
            # - _stream_lock (a trio.Lock held around every write): our write must not
            #   interleave with its own (a Pong, a close frame) in the middle of a message;
            # - _stream (the underlying trio stream): where the bytes go;
            # - _abort_web_socket() (marks the connection closed, 1006, and closes the
            #   stream): what send_message does when the stream breaks.
            # A missing name sends through the public path (hasattr, in __init__); a name
            # kept with another meaning (a release past TESTED_RELEASE turns this path off
            # at import) would raise here (TypeError, AttributeError...): an internal
            # failure of this connection, logged, never bytes sent out of order.
            if ws._close_reason:
                raise trio_websocket.ConnectionClosed(ws._close_reason)
            encode = ws._wsproto.send
            data = b"".join([encode(BytesMessage(data=frame)) for frame in frames])
            async with ws._stream_lock:
                try:
                    await ws._stream.send_all(data)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    await ws._abort_web_socket()
                    raise trio_websocket.ConnectionClosed(ws._close_reason) from None
        except trio_websocket.ConnectionClosed as exc:
            raise trio.BrokenResourceError(f"WebSocket closed: {exc.reason}") from None

    async def receive(self) -> bytes | bytearray | None:
        try:
            data = await self._ws.get_message()
        except trio_websocket.ConnectionClosed as exc:
            reason = exc.reason
            if reason is not None and reason.code == _MESSAGE_TOO_BIG:
                raise ConnectionClosed(
                    f"WebSocket closed with 1009 (message too big): {reason.reason}",
                    code=protocol.ErrorCode.FRAME_TOO_LARGE,
                ) from None
            return None
        if isinstance(data, str):
            raise protocol.MalformedFrame(
                "text WebSocket message; frames travel as binary messages"
            )
        return data

    async def aclose(self) -> None:
        await self._ws.aclose()
        await trio.aclose_forcefully(self._stream)

    async def aclose_forcefully(self) -> None:
        self._guard.task_scope.cancel()
        await trio.aclose_forcefully(self._stream)

    def bytes_acked(self) -> int | None:
        return tcp_bytes_acked(socket_under(self._stream))


async def client_wire(
    nursery: trio.Nursery, stream: trio.abc.Stream, url: Url, *, max_frame_size: int
) -> WebSocketWire:
    """Run the client side of the WebSocket opening handshake over ``stream``.

    Raises:
      HandshakeError: the server answered ``503`` (``busy``: over its connection limits).
      WrongProtocol: the server answered the upgrade with another HTTP status (a web
        server), or not in HTTP at all (a ``tcp://`` listener), or closed the connection
        without a word (a ``wss://`` or ``tls://`` one).
    """
    guard = _ReaderGuard(nursery)
    with guard.handshake_scope, guard.cancel_on_error():
        try:
            ws = await trio_websocket.wrap_client_stream(
                guard,  # type: ignore[arg-type]  # only its start_soon is used
                stream,  # type: ignore[arg-type]
                f"{format_host(url.host)}:{url.port}",
                url.path or "/",
                message_queue_size=MESSAGE_QUEUE_SIZE,
                max_message_size=max_frame_size + protocol.HEADER_SIZE,
                receive_buffer_size=RECEIVE_BUFFER_SIZE,
            )
        except trio_websocket.ConnectionClosed:
            pass
        else:
            guard.handshaking = False
            return WebSocketWire(ws, stream, guard)
    guard.task_scope.cancel()
    error = guard.error
    if isinstance(error, trio_websocket.ConnectionRejected):
        body = (error.body or b"")[:1024].decode("utf-8", "replace")
        if error.status_code == BUSY_STATUS:
            raise HandshakeError(
                protocol.ErrorCode.BUSY, body or "service unavailable", _retry_after(error.headers)
            )
        raise WrongProtocol(
            str(url),
            f"the server answered the WebSocket upgrade with HTTP {error.status_code}"
            + (f" ({body[:80]!r})" if body else ""),
            "a web server, not a trio-actors ws:// listener (check the port and the path)",
        )
    if error is not None:
        plain = "tcp" if url.scheme == "ws" else "tls"
        raise WrongProtocol(
            str(url),
            "the server did not answer the WebSocket upgrade in HTTP",
            f"a {plain}:// listener? use {plain}:// for it",
        )
    if url.secure:
        # Past the TLS handshake: a TLS listener, which closed at once. A server verifying
        # client certificates refuses one only then (under TLS 1.3, without a word).
        hint = (
            "if it verifies client certificates, it refused this one (none given, or not"
            " issued by a CA it trusts); else not a trio-actors wss:// listener"
        )
    else:
        hint = "not a trio-actors ws:// listener (a wss:// or tls:// one?)"
    raise WrongProtocol(
        str(url), "the server closed the connection without answering the WebSocket upgrade", hint
    )


def _retry_after(headers: tuple[tuple[bytes, bytes], ...]) -> float | None:
    """The seconds of a ``Retry-After`` header, if there is one (a date is ignored)."""
    for name, value in headers:
        if name.lower() == b"retry-after":
            try:
                seconds = float(value)
            except ValueError:
                return None
            return seconds if math.isfinite(seconds) and seconds >= 0 else None
    return None


async def server_wire(
    nursery: trio.Nursery,
    stream: trio.abc.Stream,
    *,
    max_frame_size: int,
    origins: OriginPolicy | None = None,
) -> WebSocketWire:
    """Run the server side of the WebSocket opening handshake (any path is accepted).

    Args:
      origins: which ``Origin`` headers are allowed; an upgrade carrying one it refuses is
        answered ``403`` with :func:`forbidden_body` (the caller logs it, see
        :meth:`OriginPolicy.log_refusal`). None: any.

    Raises:
      OriginRefused: the upgrade was answered ``403`` for its ``Origin``.
      ConnectionError: the peer did not complete a WebSocket handshake.
    """
    guard = _ReaderGuard(nursery)
    refused: str | None = None  # (known before the answer: a cancelled one still counts)
    with guard.handshake_scope, guard.cancel_on_error():
        try:
            request = await trio_websocket.wrap_server_stream(
                guard,  # type: ignore[arg-type]  # only its start_soon is used
                stream,
                message_queue_size=MESSAGE_QUEUE_SIZE,
                max_message_size=max_frame_size + protocol.HEADER_SIZE,
                receive_buffer_size=RECEIVE_BUFFER_SIZE,
            )
            if origins is not None:
                refused = origins.refused(request.headers)
            if refused is None:
                ws = await request.accept()
            else:
                await request.reject(
                    FORBIDDEN_STATUS,
                    extra_headers=[(b"Content-Type", b"text/plain; charset=utf-8")],
                    body=forbidden_body(refused),
                )
        except trio_websocket.ConnectionClosed:
            pass
        else:
            if refused is None:
                guard.handshaking = False
                return WebSocketWire(ws, stream, guard)
    guard.task_scope.cancel()
    if refused is not None:
        raise OriginRefused(refused)
    raise ConnectionError("the peer did not complete a WebSocket handshake")


async def refuse(
    nursery: trio.Nursery, stream: trio.abc.Stream, *, reason: str, retry_after: float | None
) -> None:
    """Read a client's WebSocket upgrade request and answer it ``503`` with ``reason``.

    The caller bounds the time and closes ``stream`` afterwards.

    Raises:
      ConnectionError: the peer did not send a WebSocket upgrade request.
    """
    guard = _ReaderGuard(nursery)
    headers = [] if retry_after is None else [(b"Retry-After", f"{retry_after:g}".encode())]
    try:
        with guard.handshake_scope, guard.cancel_on_error():
            try:
                request = await trio_websocket.wrap_server_stream(
                    guard,  # type: ignore[arg-type]  # only its start_soon is used
                    stream,
                    message_queue_size=1,
                    max_message_size=1,
                    receive_buffer_size=RECEIVE_BUFFER_SIZE,
                )
                await request.reject(BUSY_STATUS, extra_headers=headers, body=reason.encode())
                return
            except trio_websocket.ConnectionClosed:
                pass
        raise ConnectionError("the peer did not send a WebSocket upgrade request")
    finally:
        guard.task_scope.cancel()
