"""The protocol's reference codec: generic, table-driven, slow, and what the generated fast
path (:mod:`protocol._fastcodec`) must agree with.

It reads each message class's attrs fields and their wire keys, with none of the fast
path's per-class code generation or pooling. The fast-path tests compare the two on every
kind; ``bench/bench_protocol.py`` measures the fast path against it. Not part of the package:
nothing the leader, workers or clients run calls it.
"""

from __future__ import annotations

from typing import Any

import attrs
import cbor2

from protocol import InvalidField, MalformedFrame, Message, ProtocolError, safe_repr
from protocol._codec import (
    _BUNDLE_OPTIONS,
    _DECODER_OPTIONS,
    _BytesIO,
    _CBORDecoder,
    _is_array,
    _malformed,
    _unknown_kind,
)
from protocol._fields import field_factory
from protocol._messages import MESSAGE_TYPES
from protocol._payload import ENCODED_KEY, encoded, payload_from_map, payload_wire

_NOTHING = attrs.NOTHING


def _field_table(cls: type[Message]) -> tuple[tuple[str, str, Any, bool], ...]:
    rows = []
    for field in attrs.fields(cls):
        factory = field_factory(field)
        default = field.default if factory is None else factory()
        required = default is _NOTHING
        rows.append((field.name, field.metadata["key"], default, required))
    return tuple(rows)


_TABLES: dict[type[Message], tuple[tuple[str, str, Any, bool], ...]] = {
    cls: _field_table(cls) for cls in MESSAGE_TYPES.values()
}


def _reference_to_wire(message: Message) -> dict[str, Any]:
    try:
        table = _TABLES[type(message)]
    except KeyError:
        raise TypeError(f"not a protocol message: {safe_repr(message)}") from None
    wire: dict[str, Any] = {"t": message.KIND}
    for name, key, default, required in table:
        value = getattr(message, name)
        if key == "p":
            if value is not None:
                wire[ENCODED_KEY] = payload_wire(value)
        elif required or value != default:
            wire[key] = value
    return wire


def _reference_from_wire(wire: Any) -> Message:
    if type(wire) is not dict:
        raise InvalidField(f"a message must be a CBOR map, got {type(wire).__name__}")
    tag = wire.get("t")
    if type(tag) is not int:
        raise InvalidField(f"message type tag 't' must be an int, got {type(tag).__name__}")
    cls = MESSAGE_TYPES.get(tag)
    if cls is None:
        raise _unknown_kind(tag)
    kwargs = {}
    for name, key, _default, required in _TABLES[cls]:
        if key == "p":
            kwargs[name] = encoded(
                payload_from_map(cls.__name__, wire.get("p"), wire.get(ENCODED_KEY))
            )
        elif key in wire:
            kwargs[name] = wire[key]
        elif required:
            raise InvalidField(f"{cls.__name__} is missing field {name!r} (key {key!r})")
    try:
        return cls(**kwargs)
    except ProtocolError:
        raise
    except (TypeError, ValueError) as exc:
        raise InvalidField(f"bad {cls.__name__}: {exc}") from None


def _reference_encode_body(message: Message) -> bytes:
    try:
        return cbor2.dumps(_reference_to_wire(message))
    except cbor2.CBOREncodeError as exc:
        raise ValueError(f"cannot encode {type(message).__name__}: {exc}") from exc


def _reference_decode_body(body: bytes) -> Message:
    fp = _BytesIO(body)
    try:
        wire = _CBORDecoder(
            fp, **(_BUNDLE_OPTIONS if _is_array(body) else _DECODER_OPTIONS)
        ).decode()
    except Exception as exc:
        raise _malformed(exc) from None
    if fp.tell() != len(body):
        raise MalformedFrame(f"{len(body) - fp.tell()} bytes of trailing data after the CBOR item")
    return _reference_from_wire(wire)
