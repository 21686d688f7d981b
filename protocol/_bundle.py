"""Bundles: many messages in one frame, each a positional array (protocol version 2).

A frame body is either one message (a CBOR map, see :mod:`protocol._codec`) or a
*bundle*: a CBOR array of messages, each written as an array ``[tag, field, field, ...]``
with its fields in the order of the message class (the order of the tables in
``docs/protocol.md``). Trailing fields equal to their defaults are left out; a field in
the middle is always written, with its value. So a Result to a client is
``[8, mid, cid, job_id]`` where the map would be ``{"t": 8, "i": mid, "c": cid, "j": job_id}``.

A bundle is the same as its messages sent one per frame, in order: the receiver checks
each one as it would a map, and a bad message ends the connection after the good ones
before it were delivered. Why: a busy connection sends many small messages at once, and
one CBOR item for all of them costs less to write and to read than one frame each (no
map keys, one decoder call, one frame header). Bundles are sent only on a session whose
negotiated version is 2 or more; they are accepted at any time.

As in :mod:`protocol._fastcodec`, each class gets generated functions: ``to_array`` (what
:func:`encode_item` writes), ``from_array``, with the same inline checks as ``from_wire``,
falling back to the same validators (so a bad field gets the same error as in a map), and
``item``, the array built from keyword arguments without a message object.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import attrs

from ._codec import _unknown_kind, encode_wire
from ._errors import InvalidField, ProtocolError, safe_repr
from ._fastcodec import (
    _array_payload_lines,
    _check_namespace,
    _checked_new_lines,
    _common_namespace,
    _compile,
    _fields,
    _keyword_params,
    _signature,
    _trimmed_returns,
)
from ._limits import MAX_BUNDLE_ITEMS
from ._messages import MESSAGE_TYPES, Message

#: The first protocol version whose peers may be sent bundles.
BUNDLE_VERSION = 2
#: The most bytes a bundle adds around its messages: the frame header (5) and the CBOR
#: array head (at most 5 bytes for up to 2**32 - 1 items).
BUNDLE_OVERHEAD = 10

_MISSING = object()


# ---------------------------------------------------------------------------------------
# Generated per class


def build_to_array(cls: type[Message]) -> Callable[[Message], list[Any]]:
    """``to_array`` for ``cls``: ``[tag, fields...]`` without the trailing defaults."""
    fields = _fields(cls)
    ns = _common_namespace(cls, fields)
    lines = ["def to_array(m):", *_trimmed_returns(cls, fields, ns, "m.{}")]
    return _compile("\n".join(lines) + "\n", "to_array", ns, cls)


def build_from_array(cls: type[Message]) -> Callable[[list[Any]], Message]:
    """``from_array`` for ``cls``: the message a bundled array (tag checked) stands for,
    or a ProtocolError as the validating constructor would raise."""
    fields = _fields(cls)
    ns = _common_namespace(cls, fields)
    name = cls.__name__
    attributes = {a.name: a for a in attrs.fields(cls)}
    ns.update(InvalidField=InvalidField, ProtocolError=ProtocolError, _MISSING=_MISSING)
    _check_namespace(cls, ns)
    pad = []
    for f in fields:
        if f.required:
            pad.append(_MISSING)
        elif f.factory is not None:
            pad.append(attrs.NOTHING)
        else:
            pad.append(f.default)
    ns["_PAD"] = pad
    count = len(fields)
    too_many = f"{name} has {{n - 1}} fields in a bundle, at most {count}"
    lines = [
        "def from_array(a):",
        "    n = len(a)",
        f"    if n != {count + 1}:",
        f"        if n > {count + 1}:",
        f"            raise InvalidField(f{too_many!r})",
        "        a = a + _PAD[n - 1:]",
        f"    _, {', '.join(f.var for f in fields)}{',' if count == 1 else ''} = a",
    ]
    for f in fields:
        if f.required:
            missing = f"{name} is missing field {f.name!r} (position {f.index + 1})"
            lines.append(f"    if {f.var} is _MISSING:")
            lines.append(f"        raise InvalidField({missing!r})")
    lines += _array_payload_lines(fields, name)
    lines += _checked_new_lines(cls, fields, ns, attributes)
    return _compile("\n".join(lines) + "\n", "from_array", ns, cls)


_ITEM_DOC = """The bundle item ``{name}(...)`` would encode to, built without the message.

``{name}.item(...)`` takes the arguments of ``{name}.unchecked(...)`` and returns what
``to_array({name}.unchecked(...))`` would: the positional array, trailing defaults left
out. It validates nothing (trusted, already-checked values only) and builds no object,
for senders of many messages (a leader's Assign and Result, a worker's Result); send it
with ``Connection.queue_item``.

Signature: ``{name}.item({signature})``.
"""


def build_item(cls: type[Message]) -> Callable[..., list[Any]]:
    """``item`` for ``cls``: keyword arguments as in ``unchecked``, the trimmed array out."""
    fields = _fields(cls)
    ns = _common_namespace(cls, fields)
    params = _keyword_params(fields)
    lines = [f"def item(*, {params}):"]
    for f in fields:  # converters and factories, as the constructor applies them
        if f.factory is not None:
            lines.append(f"    if {f.name} is _NOTHING:")
            lines.append(f"        {f.name} = {'{}' if f.factory is dict else f'_fac{f.index}()'}")
        if f.converter is not None:
            lines.append(f"    {f.name} = _conv{f.index}({f.name})")
    lines += _trimmed_returns(cls, fields, ns, "{}")
    func = _compile("\n".join(lines) + "\n", "item", ns, cls)
    func.__doc__ = _ITEM_DOC.format(name=cls.__name__, signature=_signature(fields))
    func.__module__ = cls.__module__
    return func


#: ``to_array`` by message class.
TO_ARRAY: dict[type, Callable[[Message], list[Any]]] = {
    cls: build_to_array(cls) for cls in MESSAGE_TYPES.values()
}
#: ``from_array`` by wire tag.
FROM_ARRAY: dict[int, Callable[[list[Any]], Message]] = {
    tag: build_from_array(cls) for tag, cls in MESSAGE_TYPES.items()
}


#: ``item`` by message class (also installed as ``cls.item``).
ITEM: dict[type, Callable[..., list[Any]]] = {
    cls: build_item(cls) for cls in MESSAGE_TYPES.values()
}
for _cls, _func in ITEM.items():
    _cls.item = staticmethod(_func)  # type: ignore[attr-defined]
del _cls, _func


# ---------------------------------------------------------------------------------------
# Encoding


def to_array(message: Message) -> list[Any]:
    """The positional array that stands for ``message`` in a bundle."""
    build = TO_ARRAY.get(type(message))
    if build is None:
        raise TypeError(f"not a protocol message: {safe_repr(message)}")
    return build(message)


def encode_item(message: Message) -> bytes:
    """Encode ``message`` as one CBOR array, ready to go in a bundle.

    Raises:
      ValueError: a value (in the payload, say) has no CBOR encoding.
    """
    build = TO_ARRAY.get(type(message))
    if build is None:
        raise TypeError(f"not a protocol message: {safe_repr(message)}")
    return encode_wire(build(message), type(message).__name__)


def encode_array(item: list[Any]) -> bytes:
    """Encode a bundle item (from ``cls.item(...)`` or :func:`to_array`) as CBOR.

    Raises:
      ValueError: a value (in the payload, say) has no CBOR encoding.
    """
    return encode_wire(item, _KIND_NAMES.get(item[0], "message"))


def message_of(item: list[Any], *, decode_payloads: bool = False) -> Message:
    """The message a bundle item stands for, validated as a received one would be: its
    payload an :class:`~protocol.Encoded`, or with ``decode_payloads`` its value.

    Raises:
      InvalidField, UnknownMessage, InvalidSubject: the item is not a valid message
        (InvalidPayload: its payload does not decode).
    """
    out: list[Message] = []
    decode_bundle([item], out)
    if decode_payloads:
        from ._framing import _decode_payloads  # (_framing imports this module)

        _decode_payloads(out)
    return out[0]


_KIND_NAMES = {tag: cls.__name__ for tag, cls in MESSAGE_TYPES.items()}


def _array_head(count: int) -> bytes:
    if count < 24:
        return bytes((0x80 + count,))
    if count < 0x100:
        return bytes((0x98, count))
    if count < 0x10000:
        return b"\x99" + count.to_bytes(2, "big")
    return b"\x9a" + count.to_bytes(4, "big")


def bundle_frames(items: Sequence[bytes], max_body: int) -> list[bytes]:
    """Whole frames carrying ``items`` (from :func:`encode_item`), in order, as few as fit.

    Each frame's body is one bundle of at most ``max_body`` bytes and at most
    ``MAX_BUNDLE_ITEMS`` messages. An item that cannot fit (over
    ``max_body - BUNDLE_OVERHEAD`` bytes) raises ValueError: check sizes on the way in.
    """
    frames = []
    start = 0
    total = len(items)
    while start < total:
        size = 0
        end = start
        room = max_body - BUNDLE_OVERHEAD
        stop = min(total, start + MAX_BUNDLE_ITEMS)
        while end < stop and size + len(items[end]) <= room:
            size += len(items[end])
            end += 1
        if end == start:
            raise ValueError(f"a bundled message of {len(items[start])} bytes exceeds {room} bytes")
        head = _array_head(end - start)
        body_size = len(head) + size
        frames.append(b"".join((body_size.to_bytes(4, "big"), b"\x00", head, *items[start:end])))
        start = end
    return frames


# ---------------------------------------------------------------------------------------
# Decoding


def decode_bundle(wire: list[Any], out: list[Message]) -> None:
    """Append the messages of a decoded bundle to ``out``, in order.

    Raises:
      InvalidField, UnknownMessage, InvalidSubject: an item is not a valid message; those
        before it are already in ``out``. A bundle of more than ``MAX_BUNDLE_ITEMS``
        messages is refused whole (InvalidField), before any of them.
    """
    if not wire:
        raise InvalidField("a bundle must hold at least one message")
    if len(wire) > MAX_BUNDLE_ITEMS:
        raise InvalidField(
            f"a bundle of {len(wire)} messages exceeds the limit of {MAX_BUNDLE_ITEMS} messages"
        )
    append = out.append
    get = FROM_ARRAY.get
    for item in wire:
        if type(item) is not list or not item:
            raise InvalidField("a bundled message must be a non-empty array")
        tag = item[0]
        build = get(tag) if type(tag) is int else None
        if build is None:
            if type(tag) is not int:
                raise InvalidField(
                    f"a bundled message must start with its int tag, got {type(tag).__name__}"
                )
            raise _unknown_kind(tag)
        append(build(item))
