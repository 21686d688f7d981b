"""Wires: what a connection needs from a transport, and the byte-stream wire.

A wire moves whole frames. :class:`StreamWire` writes a batch of frames with one
``send_all`` and reads up to 64 KiB at a time; the WebSocket wire (:mod:`runtime._ws`)
sends each frame as one binary message.
"""

from __future__ import annotations

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
