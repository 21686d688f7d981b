"""The mapping between message objects and CBOR bodies.

A body is one CBOR map. Key ``"t"`` holds the kind's tag (an int, see
``MESSAGE_TYPES``); every other key is a field's wire key, taken from the field's
``metadata["key"]``. A field equal to its default is left out; a missing key means the
default. Unknown keys are ignored (so later versions may add optional fields).

Decoding refuses what could hurt the process: CBOR tags for shared references (cycles),
regular expressions and MIME messages, maps keyed by anything but str/bytes/numbers
(hash-collision attacks), a key repeated in one map (two readers could take different
values), nesting deeper than 64, and trailing bytes after the map.
"""

from __future__ import annotations

import io
from typing import Any

import attrs
import cbor2

from ._errors import InvalidField, MalformedFrame, ProtocolError, UnknownMessage
from ._messages import MESSAGE_TYPES, Message

_NOTHING = attrs.NOTHING

#: Deepest nesting of containers accepted in a body (payloads included).
MAX_DEPTH = 64
#: Longest decoder message quoted in a MalformedFrame error.
_REASON_LIMIT = 160


def _refuse_tag(decoder: Any) -> None:
    raise ValueError("this CBOR tag is not accepted")


# Tags 28/29: shared references (cyclic values); 35: regex; 36: MIME; 256/25: string refs.
_SEMANTIC_REFUSED = {tag: _refuse_tag for tag in (25, 28, 29, 35, 36, 256)}


def _field_table(cls: type[Message]) -> tuple[tuple[str, str, Any, bool], ...]:
    rows = []
    for field in attrs.fields(cls):
        default = field.default
        if isinstance(default, attrs.Factory):  # type: ignore[arg-type]
            default = default.factory()
        required = default is _NOTHING
        rows.append((field.name, field.metadata["key"], default, required))
    return tuple(rows)


_TABLES: dict[type[Message], tuple[tuple[str, str, Any, bool], ...]] = {
    cls: _field_table(cls) for cls in MESSAGE_TYPES.values()
}
_DECODE: dict[int, tuple[type[Message], tuple[tuple[str, str, Any, bool], ...]]] = {
    tag: (cls, _TABLES[cls]) for tag, cls in MESSAGE_TYPES.items()
}


def to_wire(message: Message) -> dict[str, Any]:
    """Return the CBOR map (as a dict) that stands for ``message`` on the wire."""
    try:
        table = _TABLES[type(message)]
    except KeyError:
        raise TypeError(f"not a protocol message: {message!r}") from None
    wire: dict[str, Any] = {"t": message.KIND}
    for name, key, default, required in table:
        value = getattr(message, name)
        if required or value != default:
            wire[key] = value
    return wire


def encode_body(message: Message) -> bytes:
    """Encode ``message`` as a CBOR body (no frame header)."""
    try:
        return cbor2.dumps(to_wire(message))
    except cbor2.CBOREncodeError as exc:
        raise ValueError(f"cannot encode {type(message).__name__}: {exc}") from exc


def from_wire(wire: Any) -> Message:
    """Build the message that the decoded CBOR map ``wire`` stands for.

    Raises:
      UnknownMessage: the map's tag names no message kind.
      InvalidField: a field is missing or has a wrong type or value.
    """
    if type(wire) is not dict:
        raise InvalidField(f"a message must be a CBOR map, got {type(wire).__name__}")
    tag = wire.get("t")
    if type(tag) is not int:
        raise InvalidField(f"message type tag 't' must be an int, got {type(tag).__name__}")
    try:
        cls, table = _DECODE[tag]
    except KeyError:
        shown = tag if tag.bit_length() <= 64 else f"of {tag.bit_length()} bits"
        raise UnknownMessage(f"unknown message kind {shown}") from None
    kwargs = {}
    for name, key, _default, required in table:
        if key in wire:
            kwargs[name] = wire[key]
        elif required:
            raise InvalidField(f"{cls.__name__} is missing field {name!r} (key {key!r})")
    try:
        return cls(**kwargs)
    except ProtocolError:
        raise
    except (TypeError, ValueError) as exc:
        raise InvalidField(f"bad {cls.__name__}: {exc}") from None


def decode_body(body: bytes) -> Message:
    """Decode one CBOR body into a message.

    Raises:
      MalformedFrame: the bytes are not exactly one acceptable CBOR item.
      UnknownMessage, InvalidField, InvalidSubject: the item is not a valid message.
    """
    fp = io.BytesIO(body)
    try:
        wire = cbor2.CBORDecoder(
            fp,
            semantic_decoders=_SEMANTIC_REFUSED,
            strict_hashable_types=True,
            allow_duplicate_keys=False,
            max_depth=MAX_DEPTH,
        ).decode()
    except Exception as exc:  # noqa: BLE001 - any failure of untrusted bytes is malformed
        # cbor2's message may quote the input (a duplicated key): keep it short.
        reason = str(exc)
        if len(reason) > _REASON_LIMIT:
            reason = reason[: _REASON_LIMIT - 3] + "..."
        raise MalformedFrame(f"frame body is not valid CBOR: {reason}") from None
    if fp.tell() != len(body):
        raise MalformedFrame(f"{len(body) - fp.tell()} bytes of trailing data after the CBOR item")
    return from_wire(wire)
