"""The WebSocket wire: one binary WebSocket message per protocol frame (trio-websocket).

Writes are batched as on a byte stream: the frames queued together become as many
WebSocket messages, encoded by trio-websocket's wsproto connection and written with one
``send_all`` under trio-websocket's own send lock (its public ``send_message`` writes one
message per call). If a trio-websocket release lacks those internals, each frame goes
through ``send_message`` instead: slower, the same bytes on the wire.

trio-websocket's own reader task runs in the connection's nursery under a cancel scope of
ours, so that a failed opening handshake (rejected, garbage instead of HTTP, dropped) wakes
the side waiting for it at once instead of at its timeout, and so that closing the wire
always ends that task.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import trio
import trio_websocket
from wsproto.events import BytesMessage

import protocol

from ._transport_errors import ConnectionClosed
from ._url import Url, format_host

#: Messages trio-websocket may hold between its reader task and ours.
MESSAGE_QUEUE_SIZE = 4
#: Bytes trio-websocket asks of the socket per read.
RECEIVE_BUFFER_SIZE = 64 * 1024
_MESSAGE_TOO_BIG = 1009


class _ReaderGuard:
    """Stands in for a nursery when trio-websocket starts its reader task.

    The task runs in ``nursery`` inside :attr:`task_scope` (cancelled when the wire is cut);
    when it ends, :attr:`handshake_scope` is cancelled, waking a handshake still waiting.
    """

    def __init__(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery
        self.handshake_scope = trio.CancelScope()
        self.task_scope = trio.CancelScope()
        self.error: trio_websocket.HandshakeError | None = None

    def start_soon(self, fn: Callable[..., Awaitable[Any]], *args: Any, name: object = None) -> None:
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
        self._batched = all(
            hasattr(ws, name)
            for name in ("_wsproto", "_stream_lock", "_stream", "_close_reason", "_abort_web_socket")
        )

    async def send_frames(self, frames: list[bytes]) -> None:
        ws = self._ws
        try:
            if len(frames) == 1 or not self._batched:
                for frame in frames:
                    await ws.send_message(frame)
                return
            # What send_message does for each frame, with one send_all for all of them.
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


async def client_wire(
    nursery: trio.Nursery, stream: trio.abc.Stream, url: Url, *, max_frame_size: int
) -> WebSocketWire:
    """Run the client side of the WebSocket opening handshake over ``stream``.

    Raises:
      ConnectionError: the server rejected the handshake or closed the connection.
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
            return WebSocketWire(ws, stream, guard)
    guard.task_scope.cancel()
    why = f"rejected: {guard.error!r}" if guard.error is not None else "connection closed"
    raise ConnectionError(f"WebSocket handshake with {url} failed ({why})")


async def server_wire(
    nursery: trio.Nursery, stream: trio.abc.Stream, *, max_frame_size: int
) -> WebSocketWire:
    """Run the server side of the WebSocket opening handshake (any path is accepted).

    Raises:
      ConnectionError: the peer did not complete a WebSocket handshake.
    """
    guard = _ReaderGuard(nursery)
    with guard.handshake_scope, guard.cancel_on_error():
        try:
            request = await trio_websocket.wrap_server_stream(
                guard,  # type: ignore[arg-type]  # only its start_soon is used
                stream,
                message_queue_size=MESSAGE_QUEUE_SIZE,
                max_message_size=max_frame_size + protocol.HEADER_SIZE,
                receive_buffer_size=RECEIVE_BUFFER_SIZE,
            )
            ws = await request.accept()
        except trio_websocket.ConnectionClosed:
            pass
        else:
            return WebSocketWire(ws, stream, guard)
    guard.task_scope.cancel()
    raise ConnectionError("the peer did not complete a WebSocket handshake")
