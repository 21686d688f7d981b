"""Wires: what a connection needs from a transport, and the byte-stream wire.

A wire moves whole frames. :class:`StreamWire` writes a batch of frames with one
``send_all`` and reads up to 64 KiB at a time (TLS, in-memory streams); :class:`SocketWire`
does the same on a plain TCP socket with less overhead; the WebSocket wire
(:mod:`runtime._ws`) sends each frame as one binary message.
"""

from __future__ import annotations

import errno
import socket
import sys
from typing import Protocol

import attrs
import trio

#: Bytes asked of the transport per read.
READ_SIZE = 64 * 1024


class Wire(Protocol):
    """What a connection needs from a transport (private; one class per transport kind).

    ``send_frames`` and ``receive`` raise ``trio.BrokenResourceError`` when the transport
    breaks; ``receive`` returns None at end of stream and may raise :class:`ConnectionClosed`
    (a close with a known reason) or :class:`protocol.ProtocolError` (bad input).
    """

    #: True when each received chunk must hold exactly one whole frame (WebSocket).
    whole_frames: bool

    async def send_frames(self, frames: list[bytes]) -> None: ...

    async def receive(self) -> bytes | bytearray | None: ...

    async def aclose(self) -> None: ...

    async def aclose_forcefully(self) -> None: ...

    def bytes_acked(self) -> int | None:
        """How many bytes the peer has taken so far (its TCP acknowledged them), or None
        when the transport cannot say (not TCP, or not Linux). Only changes matter: a
        count that moves shows that the peer reads (see ``Connection.write_timeout``)."""
        ...


def socket_under(stream: trio.abc.Stream) -> trio.socket.SocketType | None:
    """The TCP socket under ``stream`` (a SocketStream, or a TLS stream over one)."""
    while not isinstance(stream, trio.SocketStream):
        inner = getattr(stream, "transport_stream", None)
        if inner is None:
            return None
        stream = inner
    return stream.socket


#: Linux's ``struct tcp_info``: where ``tcpi_bytes_acked`` (a u64, Linux 4.2 and later) is
#: (other systems' ``tcp_info`` differ: they get None).
_BYTES_ACKED = slice(120, 128)
_TCP_INFO = getattr(socket, "TCP_INFO", None) if sys.platform == "linux" else None


def tcp_bytes_acked(sock: socket.socket | trio.socket.SocketType | None) -> int | None:
    """The bytes of this socket that its peer's TCP acknowledged (Linux), else None."""
    if sock is None or _TCP_INFO is None:
        return None
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, _TCP_INFO, _BYTES_ACKED.stop)
    except OSError:  # closed, or not TCP
        return None
    if len(info) < _BYTES_ACKED.stop:
        return None
    return int.from_bytes(info[_BYTES_ACKED], sys.byteorder)


@attrs.define(eq=False)
class StreamWire:
    """A byte stream (TCP, TLS, memory) carrying back-to-back frames."""

    stream: trio.abc.Stream
    whole_frames: bool = attrs.field(default=False, init=False)

    async def send_frames(self, frames: list[bytes]) -> None:
        await self.stream.send_all(frames[0] if len(frames) == 1 else b"".join(frames))

    async def receive(self) -> bytes | bytearray | None:
        return (await self.stream.receive_some(READ_SIZE)) or None

    async def aclose(self) -> None:
        await self.stream.aclose()

    async def aclose_forcefully(self) -> None:
        await trio.aclose_forcefully(self.stream)

    def bytes_acked(self) -> int | None:
        return tcp_bytes_acked(socket_under(self.stream))


#: Reads in a row that found data waiting, after which the socket wire yields to the
#: scheduler once (so that a peer that never pauses cannot starve other tasks).
READS_BEFORE_YIELD = 8
_BLOCKED = (BlockingIOError, InterruptedError)


class SocketWire:
    """A plain TCP socket carrying back-to-back frames, driven directly.

    What :class:`StreamWire` over a ``trio.SocketStream`` does, with less work per read and
    write: trio's socket methods add a schedule point to every call that succeeded at once
    (and a few context managers); here a ``send``/``recv`` that succeeds returns at once,
    and only one that would block waits, with :func:`trio.lowlevel.wait_writable` /
    :func:`trio.lowlevel.wait_readable`. The connection's tasks still yield: the writer
    parks when its queue is empty, the reader waits when no data is in, and yields once
    after every ``READS_BEFORE_YIELD`` reads in a row that found data waiting.

    The socket is taken over from a ``trio.SocketStream`` (see :meth:`take`), which then
    must not be used any more.
    """

    whole_frames = False

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self._sock = sock
        self._reads_in_a_row = 0

    @classmethod
    def take(cls, stream: trio.SocketStream) -> SocketWire:
        """Take the socket of ``stream`` (its options, e.g. TCP_NODELAY, stay as set)."""
        trio_sock = stream.socket
        family, kind, proto = trio_sock.family, trio_sock.type, trio_sock.proto
        return cls(socket.socket(family, kind, proto, fileno=trio_sock.detach()))

    async def send_frames(self, frames: list[bytes]) -> None:
        sock = self._sock
        view = memoryview(frames[0] if len(frames) == 1 else b"".join(frames))
        while True:
            try:
                sent = sock.send(view)
            except _BLOCKED:
                sent = 0
            except OSError as exc:
                raise _broken(exc) from exc
            view = view[sent:]
            if not view:
                return  # sent at once: no wait, no schedule point
            await trio.lowlevel.wait_writable(sock)

    def try_send(self, data: bytes) -> int:
        """Send what the socket takes now, without waiting; return how many bytes that was
        (0 when it would block). Never call it while a ``send_frames`` is under way."""
        try:
            return self._sock.send(data)
        except _BLOCKED:
            return 0
        except OSError as exc:
            raise _broken(exc) from exc

    async def receive(self) -> bytes | bytearray | None:
        sock = self._sock
        if self._reads_in_a_row >= READS_BEFORE_YIELD:
            self._reads_in_a_row = 0
            await trio.lowlevel.checkpoint()
        while True:
            try:
                data = sock.recv(READ_SIZE)
            except _BLOCKED:
                self._reads_in_a_row = 0
                await trio.lowlevel.wait_readable(sock)
                continue
            except OSError as exc:
                raise _broken(exc) from exc
            self._reads_in_a_row += 1
            return data or None

    async def aclose(self) -> None:
        self._close()
        await trio.lowlevel.checkpoint()

    async def aclose_forcefully(self) -> None:
        self._close()

    def bytes_acked(self) -> int | None:
        return tcp_bytes_acked(self._sock)

    def _close(self) -> None:
        sock = self._sock
        if sock.fileno() != -1:
            trio.lowlevel.notify_closing(sock)  # wakes a task waiting on it
            sock.close()


def _broken(exc: OSError) -> trio.ClosedResourceError | trio.BrokenResourceError:
    if exc.errno == errno.EBADF:
        return trio.ClosedResourceError("the socket was closed")
    return trio.BrokenResourceError(f"socket error: {exc!r}")
