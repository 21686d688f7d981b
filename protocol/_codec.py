"""The mapping between message objects and CBOR bodies.

A body is one CBOR map. Key ``"t"`` holds the kind's tag (an int, see
``MESSAGE_TYPES``); every other key is a field's wire key, taken from the field's
``metadata["key"]``. A field equal to its default is left out; a missing key means the
default. Unknown keys are ignored (so later versions may add optional fields).

Decoding refuses what could hurt the process: CBOR tags for shared references (cycles),
regular expressions and MIME messages, maps keyed by anything but str/bytes/numbers
(hash-collision attacks), a key repeated in one map (two readers could take different
values), nesting deeper than ``MAX_DEPTH`` (64; the array of a bundle does not count, see
below), bignums of more than ``MAX_BIGNUM_SIZE`` bytes (1024: Python could not print them),
and trailing bytes after the map. What it accepts can be re-encoded (a leader forwards
payloads) and printed.

Depth: a message's own container, map or bundled array, counts; a bundle's outer array
does not. A payload travels encoded, as a byte string (see :mod:`protocol._payload`): its
own depth is checked when it is decoded, from its value alone (64); only a payload sent
plain (key ``p``) is part of the body, and nests at most 63 deep.

Speed: this is on the hot path of the job broker (every job is several encodes and
decodes), so the per-class work runs in functions generated at import by
:mod:`protocol._fastcodec`, and the cbor2 encoder and decoder objects are reused rather
than built per message (each is taken from a small pool, so that threads or re-entrant
calls never share one, and dropped after a failure). The generic, table-driven version lives
in the tests (``tests/protocol_reference.py``): the tests check that the fast path agrees
with it, and ``bench/bench_protocol.py`` measures the fast path against it.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import cbor2

from ._cbor import DECODER_OPTIONS, decode_error_reason
from ._errors import InvalidField, MalformedFrame, UnknownMessage, safe_repr
from ._fastcodec import FROM_WIRE, TO_WIRE, TO_WIRE_PLAIN
from ._limits import MAX_DEPTH
from ._messages import Message
from ._payload import splice

_DECODER_OPTIONS = DECODER_OPTIONS
#: For a body that is an array (a bundle): one more level, for the bundle's own array.
_BUNDLE_OPTIONS: dict[str, Any] = {**_DECODER_OPTIONS, "max_depth": MAX_DEPTH + 1}

_CBOREncodeError = cbor2.CBOREncodeError
_CBORDecoder = cbor2.CBORDecoder
_BytesIO = io.BytesIO


# ---------------------------------------------------------------------------------------
# Messages to and from wire maps


def to_wire(message: Message) -> dict[str, Any]:
    """Return the CBOR map (as a dict) that stands for ``message`` on the wire."""
    build = TO_WIRE.get(type(message))
    if build is None:
        raise TypeError(f"not a protocol message: {safe_repr(message)}")
    return build(message)


def from_wire(wire: Any) -> Message:
    """Build the message that the decoded CBOR map ``wire`` stands for.

    Raises:
      UnknownMessage: the map's tag names no message kind.
      InvalidField: a field is missing or has a wrong type or value.
      InvalidSubject: a subject or pattern field breaks the subject rules.
    """
    if type(wire) is not dict:
        raise InvalidField(f"a message must be a CBOR map, got {type(wire).__name__}")
    tag = wire.get("t")
    if type(tag) is not int:
        raise InvalidField(f"message type tag 't' must be an int, got {type(tag).__name__}")
    build = FROM_WIRE.get(tag)
    if build is None:
        raise _unknown_kind(tag)
    return build(wire)


def _unknown_kind(tag: int) -> UnknownMessage:
    shown = tag if tag.bit_length() <= 64 else f"of {tag.bit_length()} bits"
    return UnknownMessage(f"unknown message kind {shown}")


# ---------------------------------------------------------------------------------------
# Bodies

#: Reusable encoders (their bound ``encode_to_bytes``). One is popped for each encode and
#: pushed back after a success, so no two calls ever share one.
_ENCODERS: list[Callable[[Any], bytes]] = []
#: Reusable decoders: (reset the BytesIO with a body, decode one item, decode one item as a
#: bundle's body, position after it).
_READERS: list[tuple[Any, Any, Any, Any]] = []
#: Most objects kept in each pool (more exist only while that many calls overlap).
_POOL_SIZE = 4
#: Bodies above this size are decoded by a reader that is then dropped, so that a pooled
#: reader never keeps a large body alive.
POOLED_BODY_LIMIT = 64 * 1024


def _new_encoder() -> Callable[[Any], bytes]:
    # (an Encoded in a value is written as the item it is: see protocol._payload.splice)
    return cbor2.CBOREncoder(_BytesIO(), default=splice).encode_to_bytes


def _new_reader() -> tuple[Any, Any, Any, Any]:
    fp = _BytesIO()
    return (
        # Re-initialising the BytesIO is the cheapest way to give it the next body; mypy
        # calls ``__init__`` of an instance unsound (a subclass could change it): fp is ours.
        fp.__init__,  # type: ignore[misc]
        _CBORDecoder(fp, **_DECODER_OPTIONS).decode,
        _CBORDecoder(fp, **_BUNDLE_OPTIONS).decode,
        fp.tell,
    )


def _is_array(body: bytes) -> bool:
    """Whether ``body`` starts with a CBOR array head (major type 4): a bundle."""
    return bool(body) and 0x80 <= body[0] <= 0x9F


def encode_body(message: Message, *, plain_payloads: bool = False) -> bytes:
    """Encode ``message`` as a CBOR body (no frame header).

    ``plain_payloads``: write a payload plain, under key ``p`` (for a peer of protocol
    version 1, see :mod:`protocol._payload`); an Encoded payload is written as the item
    its bytes are, without being decoded. By default payloads go encoded, under ``e``.
    """
    build = (TO_WIRE_PLAIN if plain_payloads else TO_WIRE).get(type(message))
    if build is None:
        raise TypeError(f"not a protocol message: {safe_repr(message)}")
    return encode_wire(build(message), type(message).__name__)


def encode_wire(wire: Any, name: str) -> bytes:
    """Encode a wire value (a message's map or array) as CBOR; ``name`` is the message
    kind, for the error.

    Raises:
      ValueError: a value (in the payload, say) has no CBOR encoding.
    """
    try:
        encode = _ENCODERS.pop()
    except IndexError:
        encode = _new_encoder()
    try:
        body = encode(wire)
    except _CBOREncodeError as exc:
        raise ValueError(f"cannot encode {name}: {exc}") from exc
    if len(_ENCODERS) < _POOL_SIZE:
        _ENCODERS.append(encode)
    return body


def _malformed(exc: Exception) -> MalformedFrame:
    return MalformedFrame(f"frame body is not valid CBOR: {decode_error_reason(exc)}")


def decode_body(body: bytes) -> Message:
    """Decode one CBOR body into a message.

    Raises:
      MalformedFrame: the bytes are not exactly one acceptable CBOR item.
      UnknownMessage, InvalidField, InvalidSubject: the item is not a valid message.
    """
    reader = take_reader()
    message = decode_with(reader, body)  # on failure the reader is dropped, not pooled
    if len(body) <= POOLED_BODY_LIMIT:
        give_back(reader)
    return message


def take_reader() -> tuple[Any, Any, Any, Any]:
    """A reusable decoder for :func:`decode_with`, from the pool or new."""
    try:
        return _READERS.pop()
    except IndexError:
        return _new_reader()


def give_back(reader: tuple[Any, Any, Any, Any]) -> None:
    """Return a reader to the pool. Only after every :func:`decode_with` call made with it
    succeeded (a failed one may leave unread bytes in it), and only if no body was larger
    than ``POOLED_BODY_LIMIT`` (it keeps a reference to the last body)."""
    if len(_READERS) < _POOL_SIZE:
        _READERS.append(reader)


def decode_with(reader: tuple[Any, Any, Any, Any], body: bytes) -> Message:
    """:func:`decode_body` with a reader from :func:`take_reader` (for a loop over frames)."""
    return from_wire(load_with(reader, body))


def load_with(reader: tuple[Any, Any, Any, Any], body: bytes) -> Any:
    """The one CBOR item ``body`` holds, decoded with a reader from :func:`take_reader`.

    Raises:
      MalformedFrame: the bytes are not exactly one acceptable CBOR item.
    """
    reset, decode, decode_bundle, tell = reader
    reset(body)
    try:
        # (checking the first byte costs about 2% of decoding a small Submit: 40 of 2000 ns)
        wire = decode_bundle() if body and 0x80 <= body[0] <= 0x9F else decode()
    except Exception as exc:
        raise _malformed(exc) from None
    end = tell()
    if end != len(body):
        raise MalformedFrame(f"{len(body) - end} bytes of trailing data after the CBOR item")
    return wire
