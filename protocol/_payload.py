"""Payloads travel encoded: the CBOR encoding of the value, as bytes opaque to the leader.

On the wire a message's payload is sent *encoded*: under key ``e`` of a message's map (in
a bundled array, in the payload's place), a CBOR byte string whose bytes are the CBOR
encoding of the payload value. The sender encodes the value once; a leader keeps and
forwards those bytes as they came, never decoding them; the receiver at the other end (a
worker running the job, a client reading its result or a published message) decodes them.
A peer may instead send a payload *plain*, as any CBOR value under key ``p`` of a map (as
protocol version 1 did; a map may not hold both): a leader encodes it on receipt. Why:

- a leader's cost and memory per payload are its byte length, whatever it holds: one
  Submit of a million empty arrays (1 MiB) would otherwise be a million Python lists in
  the leader (some 74 MiB) and most of a second of decoding before the job is even queued;
- a payload a receiver cannot decode fails the one job or message that carries it (see
  :func:`decode_payload`), not the connection that carries many;
- what a leader stores or sends on (a journal, another leader) is the same bytes.

In Python a payload field holds either a plain value (what a sender builds: it is encoded
when the message is) or an :class:`Encoded` (what a receiver gets from the wire when it
asks for payloads to be kept encoded, and what it forwards unchanged).
"""

from __future__ import annotations

import io
from typing import Any

import cbor2

from ._cbor import DECODER_OPTIONS, decode_error_reason
from ._errors import InvalidField, safe_repr

#: The wire map's key of an encoded payload (``p``, the field's own key, holds one sent plain).
ENCODED_KEY = "e"


class InvalidPayload(InvalidField):
    """A payload's bytes are not one acceptable CBOR item (see :func:`decode_payload`).

    A receiver that keeps payloads encoded meets this only when it decodes one: it fails
    that job or drops that message, and keeps its connection.
    """


class Encoded:
    """A payload as it travels: the CBOR encoding of one value, not decoded.

    ``data`` holds the bytes. Two are equal when their bytes are; an ``Encoded`` is never
    equal to a decoded value (compare :func:`decode_payload` of it instead).
    """

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        if type(data) is not bytes:
            raise TypeError(f"Encoded takes bytes, got {type(data).__name__}")
        self.data = data

    @classmethod
    def of(cls, value: Any) -> Encoded:
        """``value`` encoded (an ``Encoded`` is returned as it is).

        Raises:
          ValueError: the value has no CBOR encoding.
        """
        if type(value) is cls:
            return value
        return cls(encode_payload(value))

    def __eq__(self, other: object) -> bool:
        if type(other) is Encoded:
            return self.data == other.data
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self.data)

    def __len__(self) -> int:
        return len(self.data)

    def __repr__(self) -> str:
        return f"Encoded(<{len(self.data)} bytes>)"

    def decode(self) -> Any:
        """The value (see :func:`decode_payload`)."""
        return _decode(self.data)


# The same refusals as a message body (see protocol._cbor).
_OPTIONS = DECODER_OPTIONS
_dumps = cbor2.dumps
_CBOREncodeError = cbor2.CBOREncodeError


def splice(encoder: Any, value: Any) -> None:
    """cbor2's hook for a type it does not know: an :class:`Encoded` inside a value is
    written as the item its bytes already are (a leader's dead letter holds the job's
    payload so, and a message to a peer of version 1 its plain payload); anything else
    has no encoding."""
    if type(value) is Encoded:
        encoder.write(value.data)
        return
    raise _CBOREncodeError(f"cannot encode type {type(value)!r}")


def encode_payload(value: Any) -> bytes:
    """The CBOR encoding of ``value`` (the bytes a payload field carries). An
    :class:`Encoded` anywhere inside ``value`` stands for the value it encodes.

    Raises:
      ValueError: the value has no CBOR encoding (an object of a class CBOR does not know,
        a cycle).
    """
    try:
        return _dumps(value, default=splice)
    except _CBOREncodeError as exc:
        raise ValueError(f"cannot encode the payload {safe_repr(value)}: {exc}") from exc
    except RecursionError:
        raise ValueError(
            "cannot encode the payload: it nests too deep (or holds a cycle)"
        ) from None


def _decode(data: bytes) -> Any:
    fp = io.BytesIO(data)
    try:
        value = cbor2.CBORDecoder(fp, **_OPTIONS).decode()
    except Exception as exc:
        raise InvalidPayload(f"the payload is not valid CBOR: {decode_error_reason(exc)}") from None
    if fp.tell() != len(data):
        raise InvalidPayload(
            f"the payload has {len(data) - fp.tell()} bytes of trailing data after its CBOR item"
        )
    return value


def decode_payload(payload: Any) -> Any:
    """The value of a payload field: an :class:`Encoded` decoded, anything else as it is.

    Decoding refuses what a message body refuses (shared references, nesting deeper than
    ``MAX_DEPTH``, bignums over ``MAX_BIGNUM_SIZE`` bytes, repeated or unhashable map keys).

    Raises:
      InvalidPayload: the bytes are not exactly one acceptable CBOR item.
    """
    if type(payload) is Encoded:
        return _decode(payload.data)
    return payload


def payload_wire(value: Any) -> bytes | None:
    """What a payload field carries on the wire for ``value`` (a plain value or an
    :class:`Encoded`): the encoded bytes; None (no payload) for None.

    Raises:
      ValueError: the value has no CBOR encoding.
    """
    if type(value) is Encoded:
        return value.data
    if value is None:
        return None
    return encode_payload(value)


def payload_from_map(name: str, plain: Any, encoded_bytes: Any) -> Any:
    """The payload a wire map stands for, from its keys ``p`` (``plain``) and ``e``
    (``encoded_bytes``), each None when absent: an :class:`Encoded`, a value, or None.

    Raises:
      InvalidField: both keys, or ``e`` not a byte string.
    """
    if encoded_bytes is None:
        return plain
    if type(encoded_bytes) is not bytes:
        raise InvalidField(
            f"bad {name}: {name}.payload must be a byte string (its encoding), got {type(encoded_bytes).__name__}"
        )
    if plain is not None:
        raise InvalidField(
            f"{name} has both a plain payload ('p') and an encoded one ({ENCODED_KEY!r})"
        )
    return Encoded(encoded_bytes)


def bad_bundled_payload(name: str, value: Any) -> None:
    """Refuse a bundled payload that is not a byte string (a bundle carries payloads
    encoded only).

    Raises:
      InvalidField: always.
    """
    # (The text of payload_from_map: a bad field gets the same error in a map and a bundle.)
    raise InvalidField(
        f"bad {name}: {name}.payload must be a byte string (its encoding), got {type(value).__name__}"
    )


def encoded(payload: Any) -> Encoded | None:
    """A received payload field kept encoded: an :class:`Encoded` as it is, a value sent
    plain encoded now (so that what is kept costs its bytes), None as it is.

    Raises:
      InvalidPayload: a plain value that cannot be encoded again.
    """
    if payload is None:
        return None
    try:
        return Encoded.of(payload)
    except ValueError as exc:
        raise InvalidPayload(str(exc)) from None
