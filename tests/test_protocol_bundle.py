"""Bundles (protocol version 2): many messages in one frame, each a positional array.

What is checked here: ``to_array`` / ``from_array`` round trips for every kind, trailing
defaults left out and middle fields written, ``bundle_frames`` splitting and its CBOR
array heads, the FrameDecoder expanding bundles (cut anywhere, compressed or not, counting
frames, not messages), the same errors for a bad item as for the same bad field in a map,
the messages before a bad item handed over, and what ``decode`` / ``decode_body`` make of a
bundle body (they still mean one message).
"""

from __future__ import annotations

import itertools
import re
import zlib
from typing import Any

import attrs
import cbor2
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import protocol
from protocol import (
    BUNDLE_OVERHEAD,
    BUNDLE_VERSION,
    FLAG_COMPRESSED,
    HEADER_SIZE,
    MESSAGE_TYPES,
    PROTOCOL_VERSION,
    Chunk,
    FrameDecoder,
    Hello,
    InvalidField,
    InvalidSubject,
    MalformedFrame,
    Message,
    Ping,
    ProtocolError,
    Result,
    Submit,
    UnknownMessage,
    Welcome,
    bundle_frames,
    decode,
    decode_body,
    encode,
    encode_item,
    from_wire,
    to_array,
    to_wire,
)
from protocol._bundle import FROM_ARRAY, TO_ARRAY, _array_head
from tests import strategies as sts

KINDS = list(MESSAGE_TYPES.values())
BIG = 1 << 24  # a max_body under which everything fits in one frame


def frame_of(body: bytes, flags: int = 0) -> bytes:
    return len(body).to_bytes(4, "big") + bytes([flags]) + body


def bundle_frame(items: list[Any]) -> bytes:
    """One frame whose body is the bundle of ``items`` (arbitrary values, via cbor2)."""
    return frame_of(cbor2.dumps(items))


def full_array(message: Message) -> list[Any]:
    """``[tag, every field]``: the array with nothing left out (a payload as the bytes of
    its encoding, as it travels)."""
    return [
        message.KIND,
        *(sts.wire_value(f, getattr(message, f.name)) for f in attrs.fields(type(message))),
    ]


def field_default(field: attrs.Attribute) -> Any:
    default = field.default
    if isinstance(default, attrs.Factory):  # type: ignore[arg-type]
        return default.factory()
    return default


def feed_all(decoder: FrameDecoder, pieces: list[bytes]) -> tuple[list[Message], Any]:
    """Feed ``pieces`` in turn; every message out, and the error that stopped it (or None)."""
    out: list[Message] = []
    for piece in pieces:
        try:
            out.extend(decoder.feed(piece))
        except ProtocolError as exc:
            out.extend(exc.messages)
            return out, exc
    return out, None


def outcome_of(func: Any, arg: Any) -> tuple[Any, ...]:
    """("ok", message bytes) or ("error", class, text without the "(key ...)" part)."""
    try:
        message = func(arg)
    except ProtocolError as exc:
        return ("error", type(exc), exc.message)
    return ("ok", type(message), protocol.encode_body(message))


_WHERE = re.compile(r" \((key '[^']*'|position \d+)\)$")


def strip_where(outcome: tuple[Any, ...]) -> tuple[Any, ...]:
    """A missing-field error names the key in a map and the position in an array."""
    if outcome[0] == "error":
        return (*outcome[:2], _WHERE.sub("", outcome[2]))
    return outcome


message_lists = st.lists(sts.messages(), min_size=1, max_size=12)


# ---------------------------------------------------------------------------------------
# Constants and coverage


def test_constants_and_strategies_cover_every_kind() -> None:
    assert BUNDLE_VERSION == 2
    assert PROTOCOL_VERSION >= BUNDLE_VERSION
    assert BUNDLE_OVERHEAD == HEADER_SIZE + 5  # frame header + longest array head used
    assert set(sts.MESSAGE_STRATEGIES) == set(KINDS)
    assert set(TO_ARRAY) == set(KINDS)
    assert set(FROM_ARRAY) == set(MESSAGE_TYPES)


# ---------------------------------------------------------------------------------------
# 1. Round trips


@pytest.mark.parametrize("cls", KINDS, ids=lambda c: c.__name__)
@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_array_round_trip_per_kind(cls: type[Message], data: st.DataObject) -> None:
    message = data.draw(sts.MESSAGE_STRATEGIES[cls])
    # What from_array gives back: the payload still encoded (the bytes of the array).
    received = sts.with_encoded_payload(message)
    array = TO_ARRAY[cls](message)
    assert array == to_array(message) == to_array(received)
    assert array[0] == cls.KIND
    assert FROM_ARRAY[cls.KIND](array) == received
    item = encode_item(message)
    assert item == cbor2.dumps(array) == encode_item(received)
    decoded = cbor2.loads(item)  # tuples are now lists, as a peer's would be
    rebuilt = FROM_ARRAY[cls.KIND](decoded)
    assert type(rebuilt) is cls
    assert rebuilt == received
    assert sts.with_decoded_payload(rebuilt) == message
    # The same message as the map codec gives.
    assert from_wire(cbor2.loads(protocol.encode_body(message))) == rebuilt
    # Alone in a bundle, through the decoder: one frame, one message.
    decoder = FrameDecoder()
    frames = bundle_frames([item], BIG)
    assert len(frames) == 1
    assert decoder.feed(frames[0]) == [message]
    assert decoder.frames == 1


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(message_lists, st.data())
def test_bundles_cut_anywhere_give_the_messages_in_order(
    messages: list[Message], data: st.DataObject
) -> None:
    items = [encode_item(m) for m in messages]
    largest = max(map(len, items))
    max_body = data.draw(
        st.integers(largest + BUNDLE_OVERHEAD, sum(map(len, items)) + BUNDLE_OVERHEAD + 8),
        label="max_body",
    )
    frames = bundle_frames(items, max_body)
    event(f"{len(frames)} frame(s)")
    stream = b"".join(frames)
    # Which messages each frame carries: count them from the bodies themselves.
    per_frame = [len(cbor2.loads(f[HEADER_SIZE:])) for f in frames]
    assert sum(per_frame) == len(messages)
    frame_ends = list(itertools.accumulate(map(len, frames)))
    pieces = data.draw(sts.chunked(stream), label="pieces")
    decoder = FrameDecoder()
    received: list[Message] = []
    frames_seen = 0
    fed = 0
    for piece in pieces:
        out = decoder.feed(piece)
        received.extend(out)
        fed += len(piece)
        frames_seen += decoder.frames
        complete = sum(1 for end in frame_ends if end <= fed)
        # ``frames`` counts whole frames; messages come out a whole frame at a time.
        assert frames_seen == complete
        assert len(received) == sum(per_frame[:complete])
    assert received == messages
    assert frames_seen == len(frames)
    assert decoder.buffered == 0


def test_frames_counts_frames_not_messages() -> None:
    messages = [Ping(mid=i) for i in range(5)]
    frame = bundle_frames([encode_item(m) for m in messages], BIG)
    assert len(frame) == 1
    decoder = FrameDecoder()
    assert decoder.feed(frame[0]) == messages
    assert decoder.frames == 1
    # Two bundles and a plain map frame in one feed: three frames, eight messages.
    stream = frame[0] + encode(Ping(mid=99)) + bundle_frames([encode_item(Ping(mid=7))] * 2, BIG)[0]
    out = decoder.feed(stream)
    assert out == [*messages, Ping(mid=99), Ping(mid=7), Ping(mid=7)]
    assert decoder.frames == 3
    # A feed that completes nothing resets the count.
    assert decoder.feed(frame[0][:3]) == []
    assert decoder.frames == 0
    assert decoder.feed(frame[0][3:]) == messages
    assert decoder.frames == 1


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(message_lists, message_lists, st.data())
def test_map_frames_and_bundles_mix_in_one_stream(
    first: list[Message], second: list[Message], data: st.DataObject
) -> None:
    stream = (
        b"".join(encode(m) for m in first)
        + b"".join(bundle_frames([encode_item(m) for m in second], BIG))
        + b"".join(encode(m) for m in first)
    )
    received, error = feed_all(FrameDecoder(), data.draw(sts.chunked(stream, max_chunks=8)))
    assert error is None
    assert received == [*first, *second, *first]


# ---------------------------------------------------------------------------------------
# 2. Trailing defaults left out, middle fields written


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        # A plain Result to a client: no ok / payload / error / attempts.
        (Result(mid=5, cid=4, job_id="j1"), [8, 5, 4, "j1"]),
        # cid is in the middle (job_id is required after it): written even when None.
        (Result(mid=5, job_id="j1"), [8, 5, None, "j1"]),
        # attempts at the end differs: every field before it is written, defaults too.
        (
            Result(mid=5, cid=4, job_id="j1", attempts=3),
            [8, 5, 4, "j1", True, None, None, None, 3],
        ),
        (Result(mid=5, cid=4, job_id="j1", ok=False), [8, 5, 4, "j1", False]),
        (Submit(mid=1, job_id="j", subject="a.b"), [3, 1, "j", "a.b"]),
        # The payload travels as the bytes of its encoding: cbor2.dumps([1]) == b"\x81\x01".
        (Submit(mid=1, job_id="j", subject="a.b", payload=[1]), [3, 1, "j", "a.b", b"\x81\x01"]),
        (Submit(mid=1, job_id="j", subject="a.b", qos=0), [3, 1, "j", "a.b", None, {}, 0]),
        (Submit(mid=1, job_id="j", subject="a.b", qos=1), [3, 1, "j", "a.b"]),
        (Ping(mid=7), [15, 7]),
        (Welcome(mid=1, version=2), [2, 1, None, 2]),
        (Hello(mid=1, role="client"), [1, 1, "client"]),
        (Hello(mid=1, role="client", versions=[1]), [1, 1, "client"]),  # (1,) is the default
        (
            Hello(mid=1, role="client", meta={"pid": 3}),
            [1, 1, "client", "", (1,), (), 0, None, None, {"pid": 3}],
        ),
        (Chunk(mid=1, transfer_id="x", index=0), [22, 1, "x", 0]),
        (Chunk(mid=1, transfer_id="x", index=0, last=True), [22, 1, "x", 0, b"", True]),
    ],
    ids=repr,
)
def test_trailing_defaults_are_left_out(message: Message, expected: list[Any]) -> None:
    assert to_array(message) == expected
    assert encode_item(message) == cbor2.dumps(expected)
    received = FROM_ARRAY[message.KIND](cbor2.loads(encode_item(message)))
    assert received == sts.with_encoded_payload(message)
    assert sts.with_decoded_payload(received) == message


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sts.messages())
def test_array_is_the_shortest_prefix_of_the_fields(message: Message) -> None:
    fields = attrs.fields(type(message))
    array = to_array(message)
    full = full_array(message)
    written = len(array) - 1
    # A prefix, in field order.
    assert array == full[: len(array)]
    # Every required field is written; everything left out is at its default.
    last_required = max(i for i, f in enumerate(fields) if f.default is attrs.NOTHING)
    assert written >= last_required + 1
    for f in fields[written:]:
        assert getattr(message, f.name) == field_default(f)
    # And it is the shortest such prefix: the last optional field written is not a default.
    if written > last_required + 1:
        last = fields[written - 1]
        assert getattr(message, last.name) != field_default(last)
    # A payload, written or not, is a byte string (the encoding of its value) or null.
    for f, value in zip(fields, array[1:], strict=False):
        if f.name == "payload":
            assert (value is None) is (message.payload is None)
            if value is not None:
                assert type(value) is bytes
                assert cbor2.loads(value) == message.payload


def test_to_array_and_encode_item_refuse_non_messages() -> None:
    for thing in ({"t": 3}, None, Message(), [15, 1]):
        with pytest.raises(TypeError, match="not a protocol message"):
            to_array(thing)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="not a protocol message"):
            encode_item(thing)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------
# 3. Bad items: the same errors as in a map; the messages before are handed over


def bad_pair(message: Message, name: str, value: Any) -> tuple[dict[str, Any], list[Any]]:
    """The map and the full array of ``message`` with field ``name`` set to ``value``."""
    fields = attrs.fields(type(message))
    index = [f.name for f in fields].index(name)
    wire = dict(to_wire(message))
    wire[sts.wire_key(fields[index])] = value  # a payload: its encoded form, key "e"
    array = full_array(message)
    array[index + 1] = value
    return wire, array


def item_error(array: list[Any]) -> ProtocolError:
    """The error the decoder raises for a bundle of ``array`` (through real bytes)."""
    with pytest.raises(ProtocolError) as info:
        FrameDecoder().feed(bundle_frame([array]))
    return info.value


def map_error(wire: dict[str, Any]) -> ProtocolError:
    """The error ``from_wire`` raises for ``wire`` (through real bytes)."""
    with pytest.raises(ProtocolError) as info:
        from_wire(cbor2.loads(cbor2.dumps(wire)))
    return info.value


_SUBMIT = Submit(mid=1, job_id="j", subject="a.b", payload={"x": 1}, headers={"k": "v"})


@pytest.mark.parametrize(
    ("message", "name", "value", "exc"),
    [
        (_SUBMIT, "job_id", 5, InvalidField),
        (_SUBMIT, "job_id", "", InvalidField),
        (_SUBMIT, "subject", "a..b", InvalidSubject),
        (_SUBMIT, "subject", "a.>", InvalidSubject),
        (_SUBMIT, "qos", 2, InvalidField),
        (_SUBMIT, "qos", True, InvalidField),
        (_SUBMIT, "headers", {"k": 1}, InvalidField),
        (_SUBMIT, "headers", None, InvalidField),
        (_SUBMIT, "timeout", -1, InvalidField),
        (_SUBMIT, "mid", 2**64, InvalidField),
        (_SUBMIT, "mid", -1, InvalidField),
        # A payload travels encoded (key "e" in a map, its place in a bundle): bytes or null.
        (_SUBMIT, "payload", 5, InvalidField),
        (_SUBMIT, "payload", "text", InvalidField),
        (_SUBMIT, "payload", {"x": 1}, InvalidField),
        (Result(mid=1, job_id="j"), "payload", [1], InvalidField),
        (Result(mid=1, job_id="j"), "ok", 1, InvalidField),
        (Result(mid=1, job_id="j"), "cid", "x", InvalidField),
        (Welcome(mid=1, version=2), "version", 0, InvalidField),
        (Hello(mid=1, role="client"), "role", "king", InvalidField),
        (Hello(mid=1, role="client"), "versions", "12", InvalidField),  # the converter
        (Hello(mid=1, role="worker"), "patterns", ["ok", "a..b"], InvalidSubject),
        (Hello(mid=1, role="client"), "meta", [], InvalidField),
        (Chunk(mid=1, transfer_id="x", index=0), "data", "text", InvalidField),
        (
            protocol.CachePut(mid=1, cache_id="c", target="a.*"),
            "entries",
            [["a", "not bytes"]],
            InvalidField,
        ),
        (protocol.Subscribe(mid=1, sid=1, pattern="a"), "pattern", "a.>.b", InvalidSubject),
    ],
    ids=lambda v: v if isinstance(v, str) else type(v).__name__,
)
def test_bad_field_same_error_as_in_a_map(
    message: Message, name: str, value: Any, exc: type[ProtocolError]
) -> None:
    wire, array = bad_pair(message, name, value)
    from_map = map_error(wire)
    from_item = item_error(array)
    assert type(from_map) is exc
    assert type(from_item) is exc
    assert from_item.message == from_map.message
    if exc is not InvalidSubject and name != "versions":  # (a converter's text names no field)
        assert f".{name} " in from_item.message
    # The generated function alone says the same.
    with pytest.raises(exc) as direct:
        FROM_ARRAY[message.KIND](array)
    assert direct.value.message == from_map.message


@pytest.mark.parametrize(
    ("array", "name"),
    [
        ([3, 1, "j"], "subject"),  # Submit without its subject
        ([3, 1], "job_id"),
        ([3], "mid"),
        ([2, 1], "version"),  # Welcome: cid (optional) padded, version missing
        ([2, 1, None], "version"),
        ([8, 1, 2], "job_id"),  # Result
        ([11, 1, 2], "pattern"),  # Subscribe
        ([22, 1, "x"], "index"),  # Chunk
    ],
)
def test_missing_required_field_names_it(array: list[Any], name: str) -> None:
    error = item_error(array)
    assert type(error) is InvalidField
    cls = MESSAGE_TYPES[array[0]]
    position = [f.name for f in attrs.fields(cls)].index(name) + 1
    assert error.message == f"{cls.__name__} is missing field {name!r} (position {position})"
    # The map with that key (and the ones after it) left out: the same class, same field.
    wire = {"t": array[0]}
    for f, value in zip(attrs.fields(cls), array[1:], strict=False):
        wire[f.metadata["key"]] = value
    from_map = map_error(wire)
    assert type(from_map) is InvalidField
    assert f"missing field {name!r}" in from_map.message


# Values of every type, valid for some fields and not others.
_odd = sts.odd_values  # (every CBOR type, valid for some fields and not others)


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sts.messages(), st.data())
def test_any_field_value_same_outcome_as_in_a_map(message: Message, data: st.DataObject) -> None:
    fields = attrs.fields(type(message))
    name = data.draw(st.sampled_from([f.name for f in fields]), label="field")
    value = data.draw(_odd, label="value")
    wire, array = bad_pair(message, name, value)
    # Through real CBOR bytes, as a peer would send them.
    from_map = outcome_of(from_wire, cbor2.loads(cbor2.dumps(wire)))
    from_item = outcome_of(FROM_ARRAY[message.KIND], cbor2.loads(cbor2.dumps(array)))
    assert from_item == from_map
    event(from_map[0] if from_map[0] == "ok" else from_map[1].__name__)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sts.messages(), st.data())
def test_a_short_array_is_the_map_without_the_keys_after_it(
    message: Message, data: st.DataObject
) -> None:
    fields = attrs.fields(type(message))
    written = data.draw(st.integers(0, len(fields)), label="fields written")
    array = full_array(message)[: written + 1]
    wire = {"t": message.KIND}
    for f in fields[:written]:
        wire[sts.wire_key(f)] = sts.wire_value(f, getattr(message, f.name))
    from_map = outcome_of(from_wire, cbor2.loads(cbor2.dumps(wire)))
    from_item = outcome_of(FROM_ARRAY[message.KIND], cbor2.loads(cbor2.dumps(array)))
    assert strip_where(from_item) == strip_where(from_map)


@pytest.mark.parametrize(
    ("bundle", "exc", "match"),
    [
        ([[99, 1]], UnknownMessage, "unknown message kind 99"),
        ([[-1]], UnknownMessage, "unknown message kind -1"),
        ([[2**70, 1]], UnknownMessage, "unknown message kind of 71 bits"),
        ([["15", 1]], InvalidField, "must start with its int tag, got str"),
        ([[True, 1]], InvalidField, "must start with its int tag, got bool"),
        ([[15.0, 1]], InvalidField, "must start with its int tag, got float"),
        ([[None, 1]], InvalidField, "must start with its int tag, got NoneType"),
        ([{"t": 15, "i": 1}], InvalidField, "must be a non-empty array"),  # a map item
        ([15], InvalidField, "must be a non-empty array"),
        (["x"], InvalidField, "must be a non-empty array"),
        ([[]], InvalidField, "must be a non-empty array"),
        ([], InvalidField, "at least one message"),
        ([[15, 1, 2]], InvalidField, "Ping has 2 fields in a bundle, at most 1"),
        (
            [[3, 1, "j", "a", None, {}, 1, *[None] * (len(attrs.fields(Submit)) - 5)]],
            InvalidField,
            (
                f"Submit has {len(attrs.fields(Submit)) + 1} fields in a bundle,"
                f" at most {len(attrs.fields(Submit))}"
            ),
        ),
    ],
    ids=repr,
)
def test_bad_bundle_shapes(bundle: list[Any], exc: type[ProtocolError], match: str) -> None:
    with pytest.raises(ProtocolError) as info:
        FrameDecoder().feed(bundle_frame(bundle))
    assert type(info.value) is exc
    assert match in info.value.message
    assert info.value.messages == []


def test_an_item_at_the_field_limit_is_accepted() -> None:
    message = Submit(mid=1, job_id="j", subject="a", timeout=1.5, max_attempts=2)
    array = full_array(message)
    assert len(array) == len(attrs.fields(Submit)) + 1
    assert FrameDecoder().feed(bundle_frame([array])) == [message]


@pytest.mark.parametrize(
    ("bad", "exc"),
    [
        ([3, 1, 5, "a"], InvalidField),  # job_id of the wrong type
        ([3, 1, "j", "a b"], InvalidSubject),
        ([3, 1, "j", "a", None, {}, 2], InvalidField),  # qos 2
        ([3, 1, "j"], InvalidField),  # missing subject
        ([77, 1], UnknownMessage),
        ("x", InvalidField),
        (["15", 1], InvalidField),
    ],
    ids=repr,
)
def test_messages_before_a_bad_item_are_handed_over(bad: Any, exc: type[ProtocolError]) -> None:
    earlier = [Ping(mid=1), Submit(mid=2, job_id="j", subject="a.b")]
    before = [Result(mid=3, job_id="j"), Ping(mid=4)]
    after = [Ping(mid=5)]
    stream = (
        encode(earlier[0])  # a map frame
        + bundle_frames([encode_item(earlier[1])], BIG)[0]  # a bundle of one
        + bundle_frame([*map(to_array, before), bad, *map(to_array, after)])
        + encode(Ping(mid=6))  # a frame after the bad one
    )
    decoder = FrameDecoder()
    with pytest.raises(ProtocolError) as info:
        decoder.feed(stream)
    assert type(info.value) is exc
    # Earlier frames and the earlier items of the same bundle; nothing after the bad item.
    assert info.value.messages == [*earlier, *before]
    # The decoder is spent: every later feed fails the same way, handing out nothing again.
    for more in (encode(Ping(mid=7)), b"", bundle_frames([encode_item(Ping(mid=8))], BIG)[0]):
        with pytest.raises(exc) as again:
            decoder.feed(more)
        assert again.value.messages == []
        assert "decoder failed earlier" in again.value.message


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(message_lists, message_lists, st.data())
def test_bad_item_cut_anywhere(
    first: list[Message], second: list[Message], data: st.DataObject
) -> None:
    """However the bytes arrive, exactly the messages before the bad item come out once."""
    stream = b"".join(bundle_frames([encode_item(m) for m in first], BIG)) + bundle_frame(
        [*map(to_array, second), [3, 1, "j", "a..b"], [15, 1]]
    )
    decoder = FrameDecoder()
    received, error = feed_all(decoder, data.draw(sts.chunked(stream, max_chunks=10)))
    assert type(error) is InvalidSubject
    assert received == [*first, *second]
    with pytest.raises(InvalidSubject):
        decoder.feed(b"")


# ---------------------------------------------------------------------------------------
# 4. bundle_frames: splitting, limits and array heads


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(sts.messages(), min_size=0, max_size=30), st.data())
def test_bundle_frames_splits_within_max_body(messages: list[Message], data: st.DataObject) -> None:
    items = [encode_item(m) for m in messages]
    largest = max(map(len, items), default=1)
    max_body = data.draw(st.integers(largest + BUNDLE_OVERHEAD, largest * 4 + 64), label="max")
    frames = bundle_frames(items, max_body)
    if not items:
        assert frames == []
        return
    room = max_body - BUNDLE_OVERHEAD
    position = 0
    for i, frame in enumerate(frames):
        length = int.from_bytes(frame[:4], "big")
        assert frame[4] == 0  # flags: plain
        body = frame[HEADER_SIZE:]
        assert length == len(body)
        assert len(body) <= max_body
        assert len(frame) <= max_body  # BUNDLE_OVERHEAD covers the header too
        bundled = cbor2.loads(body)
        count = len(bundled)
        assert count >= 1
        own = items[position : position + count]
        # The items themselves, unchanged and in order, after the array head.
        assert body.endswith(b"".join(own))
        assert bundled == [cbor2.loads(it) for it in own]
        assert sum(map(len, own)) <= room
        position += count
        if i < len(frames) - 1:
            # As few frames as fit: the next item would not have fitted in this one.
            assert sum(map(len, own)) + len(items[position]) > room
    assert position == len(items)
    assert FrameDecoder().feed(b"".join(frames)) == messages


def test_bundle_frames_refuses_an_item_that_cannot_fit() -> None:
    item = encode_item(Chunk(mid=1, transfer_id="x", index=0, data=b"z" * 100))
    exact = len(item) + BUNDLE_OVERHEAD
    frames = bundle_frames([item], exact)
    assert len(frames) == 1
    assert FrameDecoder(max_frame_size=exact).feed(frames[0])[0].data == b"z" * 100
    small = encode_item(Ping(mid=1))
    for items in ([item], [small, item], [small, small, item, small]):
        with pytest.raises(ValueError, match=f"{len(item)} bytes exceeds {len(item) - 1} bytes"):
            bundle_frames(items, exact - 1)
    with pytest.raises(ValueError, match=f"{len(small)} bytes exceeds 0 bytes"):
        bundle_frames([small], BUNDLE_OVERHEAD)
    # An item at the limit after others goes into a frame of its own.
    frames = bundle_frames([small, item, small], exact)
    assert [len(cbor2.loads(f[HEADER_SIZE:])) for f in frames] == [1, 1, 1]


@pytest.mark.parametrize(
    ("count", "head"),
    [
        (1, b"\x81"),
        (23, b"\x97"),
        (24, b"\x98\x18"),
        (255, b"\x98\xff"),
        (256, b"\x99\x01\x00"),
        (protocol.MAX_BUNDLE_ITEMS, b"\x99\x10\x00"),
    ],
)
def test_array_heads_are_valid_cbor(count: int, head: bytes) -> None:
    messages = [Ping(mid=i % 24) for i in range(count)]  # 3 bytes each: [15, n]
    items = [encode_item(m) for m in messages]
    frames = bundle_frames(items, BIG)
    assert len(frames) == 1
    body = frames[0][HEADER_SIZE:]
    assert body.startswith(head)
    assert len(body) == len(head) + 3 * count
    assert cbor2.loads(body) == [[15, i % 24] for i in range(count)]
    decoder = FrameDecoder()
    assert decoder.feed(frames[0]) == messages
    assert decoder.frames == 1


@pytest.mark.parametrize(
    ("count", "head"), [(65535, b"\x99\xff\xff"), (65536, b"\x9a\x00\x01\x00\x00")]
)
def test_wide_array_heads_are_valid_cbor(count: int, head: bytes) -> None:
    # Wider than any bundle we send (MAX_BUNDLE_ITEMS), still valid CBOR heads.
    assert _array_head(count) == head
    assert cbor2.loads(head + b"\x00" * count) == [0] * count


def test_bundle_frames_put_at_most_max_bundle_items_in_a_frame() -> None:
    limit = protocol.MAX_BUNDLE_ITEMS
    items = [encode_item(Ping(mid=i % 24)) for i in range(2 * limit + 1)]
    frames = bundle_frames(items, BIG)
    assert [len(cbor2.loads(f[HEADER_SIZE:])) for f in frames] == [limit, limit, 1]
    decoder = FrameDecoder()
    assert len(decoder.feed(b"".join(frames))) == 2 * limit + 1


def test_a_bundle_of_more_than_max_bundle_items_is_refused_whole() -> None:
    count = protocol.MAX_BUNDLE_ITEMS + 1
    body = _array_head(count) + encode_item(Ping(mid=1)) * count
    frame = len(body).to_bytes(4, "big") + b"\x00" + body
    with pytest.raises(
        InvalidField, match=f"a bundle of {count} messages exceeds the limit"
    ) as info:
        FrameDecoder().feed(encode(Ping(mid=0)) + frame)
    assert info.value.messages == [Ping(mid=0)]  # the frames before it are still handed out


# ---------------------------------------------------------------------------------------
# 5. Compressed bundles


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(message_lists, st.data())
def test_compressed_bundle_is_accepted(messages: list[Message], data: st.DataObject) -> None:
    (plain,) = bundle_frames([encode_item(m) for m in messages], BIG)
    packed = zlib.compress(plain[HEADER_SIZE:], 6)
    frame = frame_of(packed, FLAG_COMPRESSED)
    decoder = FrameDecoder()
    received, error = feed_all(decoder, data.draw(sts.chunked(frame, max_chunks=6)))
    assert error is None
    assert received == messages


def test_compressed_bundle_with_a_bad_item_hands_over_the_good_ones() -> None:
    body = cbor2.dumps([[15, 1], [15, 2], [3, 1, "j", "a", None, {}, 2], [15, 3]])
    decoder = FrameDecoder()
    with pytest.raises(InvalidField, match="qos must be 0 or 1") as info:
        decoder.feed(encode(Ping(mid=0)) + frame_of(zlib.compress(body), FLAG_COMPRESSED))
    assert info.value.messages == [Ping(mid=0), Ping(mid=1), Ping(mid=2)]


def test_compressed_bundle_inflating_past_the_limit_is_refused() -> None:
    (plain,) = bundle_frames([encode_item(Ping(mid=1))] * 1000, BIG)
    body = plain[HEADER_SIZE:]
    packed = zlib.compress(body)
    assert len(packed) < 100 < len(body)
    with pytest.raises(protocol.FrameTooLarge):
        FrameDecoder(max_frame_size=len(body) - 1).feed(frame_of(packed, FLAG_COMPRESSED))
    assert len(FrameDecoder(max_frame_size=len(body)).feed(frame_of(packed, 1))) == 1000


# ---------------------------------------------------------------------------------------
# 6. decode / decode_body still mean one message


def test_decode_body_refuses_any_bundle() -> None:
    # decode_body decodes one message, a CBOR map: a bundle body, even of one message,
    # is refused as "not a map" (InvalidField), never expanded.
    for count in (1, 2):
        (frame,) = bundle_frames([encode_item(Ping(mid=1))] * count, BIG)
        with pytest.raises(InvalidField, match="a message must be a CBOR map, got list"):
            decode_body(frame[HEADER_SIZE:])


def test_decode_of_a_bundle_frame_wants_exactly_one_message() -> None:
    # decode() goes through a FrameDecoder, so a bundle of exactly one message is
    # accepted and gives that message (unlike decode_body on the same body)...
    message = Result(mid=3, cid=2, job_id="j", payload=[1, 2])
    (frame,) = bundle_frames([encode_item(message)], BIG)
    assert decode(frame) == message
    assert decode(encode(message)) == message
    # ... while a bundle of two is refused as a whole (MalformedFrame), none handed out;
    # the text counts frames and messages apart.
    (frame,) = bundle_frames([encode_item(Ping(mid=1)), encode_item(Ping(mid=2))], BIG)
    with pytest.raises(MalformedFrame, match=r"got 1 frame\(s\) of 2 message\(s\)") as info:
        decode(frame)
    assert info.value.messages == []
    # A bad item in a bundle of one: the item's own error.
    with pytest.raises(InvalidSubject):
        decode(bundle_frame([[3, 1, "j", "a..b"]]))


# ---------------------------------------------------------------------------------------
# 7. Values with no CBOR encoding


@pytest.mark.parametrize(
    "message",
    [
        Submit(mid=1, job_id="j", subject="a", payload=object()),
        Submit(mid=1, job_id="j", subject="a", payload={"x": [1, object()]}),
        Result(mid=1, job_id="j", payload={1, 2, object()}),
        Hello(mid=1, role="client", meta={"k": object()}),
        protocol.Publish(mid=1, subject="a", payload=object()),
    ],
    ids=lambda m: type(m).__name__,
)
def test_encode_item_refuses_values_with_no_cbor_encoding(message: Message) -> None:
    name = type(message).__name__
    if isinstance(message, Hello):
        expected = f"^cannot encode {name}: "
    else:
        # A payload is encoded on its own, before the item: its own error.
        expected = "^cannot encode the payload "
        with pytest.raises(ValueError, match=expected):
            protocol.encode_payload(message.payload)
        with pytest.raises(ValueError, match=expected):
            to_array(message)
        with pytest.raises(ValueError, match=expected):
            type(message).item(**attrs.asdict(message, recurse=False))
    with pytest.raises(ValueError, match=expected):
        encode_item(message)
    # The pooled encoder is still fine afterwards.
    assert cbor2.loads(encode_item(Ping(mid=1))) == [15, 1]
