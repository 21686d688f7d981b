"""Length-prefixed frames and an incremental decoder.

A frame is a 5-byte header then the body::

    +----------------------+---------+------------------------------+
    | length: uint32, BE   | flags   | body: `length` bytes          |
    +----------------------+---------+------------------------------+

``length`` counts the body only. ``flags`` bit 0 set means the body is zlib-compressed
CBOR; every other bit must be 0. The body is one CBOR map, one message (see
:mod:`protocol._codec`), or a CBOR array of messages, a bundle (see :mod:`protocol._bundle`).
A header announcing more than the decoder's ``max_frame_size`` is rejected before any of
the body is buffered, and a compressed body may not inflate beyond that size either.
"""

from __future__ import annotations

import struct
import zlib

import attrs

from ._bundle import decode_bundle
from ._codec import POOLED_BODY_LIMIT, encode_body, from_wire, give_back, load_with, take_reader
from ._errors import FrameTooLarge, MalformedFrame, ProtocolError
from ._messages import MESSAGE_TYPES, Message
from ._payload import Encoded, decode_payload

#: Largest frame body accepted by default: 16 MiB.
DEFAULT_MAX_FRAME_SIZE = 16 * 1024 * 1024
#: Bytes of the frame header (length + flags).
HEADER_SIZE = 5
#: Flag bit: the body is compressed with zlib.
FLAG_COMPRESSED = 0x01
_KNOWN_FLAGS = FLAG_COMPRESSED

_HEADER = struct.Struct(">IB")
_pack_header = _HEADER.pack
_unpack_header = _HEADER.unpack_from


def encode(
    message: Message, *, compress_threshold: int | None = None, plain_payloads: bool = False
) -> bytes:
    """Encode ``message`` as one whole frame.

    Args:
      message: any protocol message.
      compress_threshold: when given, a body of at least this many bytes is compressed
        with zlib (and sent compressed only if that makes it smaller).
      plain_payloads: a payload written plain, for a peer of protocol version 1 (see
        :func:`protocol.encode_body`).

    Returns:
      The frame's bytes, header included.
    """
    body = encode_body(message, plain_payloads=plain_payloads)
    flags = 0
    if compress_threshold is not None and len(body) >= compress_threshold:
        packed = zlib.compress(body, 6)
        if len(packed) < len(body):
            body, flags = packed, FLAG_COMPRESSED
    return _pack_header(len(body), flags) + body


def decode(
    frame: bytes, *, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE, decode_payloads: bool = True
) -> Message:
    """Decode exactly one whole frame (header included) holding one message: a map, or
    a bundle of one. ``decode_payloads`` as for :class:`FrameDecoder`.

    Raises:
      ProtocolError: the bytes are not exactly one valid frame of one message.
    """
    decoder = FrameDecoder(max_frame_size=max_frame_size, decode_payloads=decode_payloads)
    messages = decoder.feed(frame)
    if decoder.frames != 1 or len(messages) != 1 or decoder.buffered:
        raise MalformedFrame(
            f"expected exactly one whole frame of one message, got {decoder.frames} frame(s)"
            f" of {len(messages)} message(s) and {decoder.buffered} bytes left over"
        )
    return messages[0]


class FrameDecoder:
    """Turns a byte stream cut at any points into messages.

    Feed it bytes as they arrive; it returns every message completed by them, in order,
    and keeps the remainder of an incomplete frame for the next call. It buffers at most
    one frame (plus its header), never more than ``max_frame_size + 5`` bytes of it.

    Payloads: with ``decode_payloads`` (the default) each message's payload is decoded to
    its value, and a payload that is not valid CBOR fails the frame like any bad field
    (:class:`~protocol.InvalidPayload`). With ``decode_payloads=False`` payloads stay
    :class:`~protocol.Encoded`, undecoded (one a peer sent plain is encoded on receipt): what a leader wants (it forwards them, see
    :mod:`protocol._payload`), and what a worker or client wants that decodes each one
    itself, so that a bad payload fails its job and not the connection.

    Error handling: on bad input ``feed`` raises :class:`protocol.ProtocolError` (or a
    subclass) whose ``messages`` attribute holds the complete messages that preceded the
    bad frame in that call; process them before closing. After an error the decoder is
    spent: every later ``feed`` raises an error of the same class again (with no messages).
    """

    __slots__ = ("_buffer", "_error", "decode_payloads", "frames", "max_frame_size")

    def __init__(
        self, *, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE, decode_payloads: bool = True
    ) -> None:
        if max_frame_size < 1:
            raise ValueError("max_frame_size must be positive")
        self.max_frame_size = max_frame_size
        self.decode_payloads = decode_payloads
        self._buffer = bytearray()
        self._error: ProtocolError | None = None
        #: Whole frames the last ``feed`` completed (a bundle is one frame, many messages).
        self.frames = 0

    @property
    def buffered(self) -> int:
        """Bytes received but not yet part of a complete frame."""
        return len(self._buffer)

    def feed(self, data: bytes | bytearray | memoryview) -> list[Message]:
        """Add received bytes; return the messages they complete (maybe none)."""
        if self._error is not None:
            # A fresh copy: the first raise carried the messages preceding the bad frame,
            # which must not be handed out (and processed) twice.
            error = self._error
            raise type(error)(f"decoder failed earlier: {error.message}")
        # Work on one bytes object: the new data itself when nothing is buffered (no copy),
        # else the buffered bytes and the new ones together. Each body is then one slice.
        buffer = self._buffer
        max_size = self.max_frame_size
        self.frames = 0
        if buffer:
            buffer += data
            if len(buffer) < HEADER_SIZE:
                return []
            length, flags = _unpack_header(buffer, 0)
            if (
                HEADER_SIZE + length > len(buffer)
                and length <= max_size
                and not flags & ~_KNOWN_FLAGS
            ):
                return []  # a large frame still arriving: no copy of what is buffered
            data = bytes(buffer)
            buffer.clear()
        elif type(data) is not bytes:
            data = bytes(data)
        messages: list[Message] = []
        append = messages.append
        pos = 0
        available = len(data)
        reader = None  # one reusable CBOR decoder for every frame of this call
        pooled = True
        frames = 0
        try:
            while available - pos >= HEADER_SIZE:
                length, flags = _unpack_header(data, pos)
                if length > max_size:
                    raise FrameTooLarge(
                        f"frame of {length} bytes exceeds the limit of {max_size} bytes"
                    )
                if flags and flags & ~_KNOWN_FLAGS:
                    raise MalformedFrame(f"unknown frame flags 0x{flags:02x}")
                start = pos + HEADER_SIZE
                end = start + length
                if end > available:
                    break
                pos = end
                if reader is None:
                    reader = take_reader()
                frames += 1
                if flags:
                    body = self._inflate(data[start:end])
                    pooled = pooled and len(body) <= POOLED_BODY_LIMIT
                    wire = load_with(reader, body)
                else:
                    pooled = pooled and length <= POOLED_BODY_LIMIT
                    wire = load_with(reader, data[start:end])
                if type(wire) is list:
                    decode_bundle(wire, messages)
                else:
                    append(from_wire(wire))
            if self.decode_payloads:
                _decode_payloads(messages)
        except ProtocolError as exc:
            error = exc
            # The messages before a bad frame are handed out with their payloads decoded
            # too: a no-op after a bad payload, those before it are done already.
            try:
                if self.decode_payloads:
                    _decode_payloads(messages)
            except ProtocolError as bad:
                error = bad  # a payload before the bad frame: the first error in order
            error.messages = messages
            self._error = error
            self.frames = frames
            if error is not exc:
                raise error from None
            raise
        self.frames = frames
        if reader is not None and pooled:
            give_back(reader)
        if pos < available:
            buffer += data[pos:] if pos else data
        return messages

    def _inflate(self, body: bytes) -> bytes:
        inflater = zlib.decompressobj()
        try:
            data = inflater.decompress(body, self.max_frame_size)
        except zlib.error as exc:
            raise MalformedFrame(f"compressed frame body does not inflate: {exc}") from None
        if not inflater.eof:
            # Output stopped at the limit with input (or output zlib holds back) left over.
            if inflater.unconsumed_tail or len(data) >= self.max_frame_size:
                raise FrameTooLarge(
                    f"compressed frame inflates beyond the limit of {self.max_frame_size} bytes"
                )
            raise MalformedFrame("compressed frame body is truncated")
        if inflater.unused_data:
            raise MalformedFrame("compressed frame body has trailing data after the zlib stream")
        return data


#: The slot setter of the payload field, by message class (the classes that have one).
_PAYLOAD_SETTERS = {
    cls: next(vars(k)["payload"] for k in cls.__mro__ if "payload" in vars(k)).__set__
    for cls in MESSAGE_TYPES.values()
    if "payload" in attrs.fields_dict(cls)
}


def _decode_payloads(messages: list[Message]) -> None:
    """Replace each Encoded payload of ``messages`` by its value, in place. On a bad one,
    the messages before it are kept in the list and the rest dropped, then it raises."""
    get = _PAYLOAD_SETTERS.get
    for i, message in enumerate(messages):
        setter = get(type(message))
        if setter is not None:
            payload = message.payload  # type: ignore[attr-defined]
            if type(payload) is Encoded:
                try:
                    setter(message, decode_payload(payload))
                except ProtocolError:
                    del messages[i:]
                    raise
