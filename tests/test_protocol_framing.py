"""Frames and the incremental decoder: arbitrary chunking, fuzzing, limits, failure."""

from __future__ import annotations

import tracemalloc
import zlib

import cbor2
import pytest
from hypothesis import assume, event, given, settings
from hypothesis import strategies as st

from protocol import (
    DEFAULT_MAX_FRAME_SIZE,
    FLAG_COMPRESSED,
    HEADER_SIZE,
    FrameDecoder,
    FrameTooLarge,
    InvalidField,
    InvalidSubject,
    MalformedFrame,
    Message,
    Ping,
    ProtocolError,
    Submit,
    UnknownMessage,
    decode,
    encode,
    to_wire,
)
from tests import strategies as sts


def frame_of(body: bytes, flags: int = 0) -> bytes:
    return len(body).to_bytes(4, "big") + bytes([flags]) + body


def feed_all(
    decoder: FrameDecoder, pieces: list[bytes]
) -> tuple[list[Message], ProtocolError | None]:
    """Feed ``pieces`` in turn; return every message out and the error that stopped it."""
    out: list[Message] = []
    for piece in pieces:
        try:
            out.extend(decoder.feed(piece))
        except ProtocolError as exc:
            out.extend(exc.messages)
            return out, exc
    return out, None


def byte_at_a_time(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


message_lists = st.lists(sts.messages(), min_size=1, max_size=6)


# ---------------------------------------------------------------------------------------
# Arbitrary chunking


@given(message_lists, st.booleans(), st.data())
def test_any_chunking_gives_the_same_messages(
    messages: list[Message], compress: bool, data: st.DataObject
) -> None:
    frames = [encode(m, compress_threshold=0 if compress else None) for m in messages]
    stream = b"".join(frames)
    pieces = data.draw(sts.chunked(stream))
    decoder = FrameDecoder()
    received: list[Message] = []
    fed = 0
    ends = [sum(map(len, frames[: i + 1])) for i in range(len(frames))]
    for piece in pieces:
        received.extend(decoder.feed(piece))
        fed += len(piece)
        # A message comes out as soon as its last byte is in, and nothing else is kept.
        complete = sum(1 for end in ends if end <= fed)
        assert len(received) == complete
        assert decoder.buffered == fed - (ends[complete - 1] if complete else 0)
    assert received == messages
    assert decoder.buffered == 0


@settings(max_examples=30)  # fed a byte at a time: each example runs the decoder ~1000 times
@given(message_lists)
def test_byte_at_a_time_and_all_at_once(messages: list[Message]) -> None:
    stream = b"".join(encode(m) for m in messages)
    one = FrameDecoder()
    assert one.feed(stream) == messages  # several frames in one chunk
    slow = FrameDecoder()
    got: list[Message] = []
    for piece in byte_at_a_time(stream):
        got.extend(slow.feed(piece))
    assert got == messages
    assert slow.buffered == 0


def test_empty_feed_and_buffer_types() -> None:
    frame = encode(Ping(mid=1))
    decoder = FrameDecoder()
    assert decoder.feed(b"") == []
    assert decoder.feed(bytearray(frame[:3])) == []
    assert decoder.buffered == 3
    assert decoder.feed(memoryview(frame)[3:]) == [Ping(mid=1)]
    assert decoder.buffered == 0


def test_decode_wants_exactly_one_frame() -> None:
    frame = encode(Ping(mid=1))
    assert decode(frame) == Ping(mid=1)
    for bad in (frame + frame, frame[:-1], frame + b"\x00", b""):
        with pytest.raises(MalformedFrame, match="exactly one whole frame"):
            decode(bad)


def test_decoder_rejects_bad_limit() -> None:
    with pytest.raises(ValueError, match="max_frame_size must be positive"):
        FrameDecoder(max_frame_size=0)
    assert FrameDecoder().max_frame_size == DEFAULT_MAX_FRAME_SIZE == 16 * 1024 * 1024


# ---------------------------------------------------------------------------------------
# Any bytes: messages or ProtocolError, and the same outcome however they are cut


def check_outcome_independent_of_chunking(
    data: bytes, pieces: list[bytes], max_frame_size: int
) -> None:
    whole, whole_error = feed_all(FrameDecoder(max_frame_size=max_frame_size), [data])
    event(type(whole_error).__name__)
    cut, cut_error = feed_all(FrameDecoder(max_frame_size=max_frame_size), pieces)
    slow, slow_error = feed_all(FrameDecoder(max_frame_size=max_frame_size), byte_at_a_time(data))
    assert _same(whole, cut) and _same(whole, slow)
    assert type(whole_error) is type(cut_error) is type(slow_error)


def _same(a: list[Message], b: list[Message]) -> bool:
    # Compare encodings, not objects: a fuzzed payload may hold NaN, which is != itself.
    return [encode(m) for m in a] == [encode(m) for m in b]


#: Bytes shaped like frames (sane lengths, mostly known flags) with arbitrary bodies.
fuzzy_frames = st.lists(
    st.tuples(st.sampled_from([0, 0, 0, 1, 2, 0x80, 0xFF]), st.binary(max_size=40)).map(
        lambda fb: frame_of(
            zlib.compress(fb[1]) if fb[0] == 1 and fb[1][:1] == b"z" else fb[1], fb[0]
        )
    ),
    max_size=4,
).map(b"".join)


@settings(max_examples=300)  # a fuzzer: cheap examples over a wide input space
@given(st.one_of(st.binary(max_size=200), fuzzy_frames), st.data())
def test_arbitrary_bytes_parse_or_raise_protocol_error(data: bytes, draw: st.DataObject) -> None:
    pieces = draw.draw(sts.chunked(data, max_chunks=8))
    check_outcome_independent_of_chunking(data, pieces, max_frame_size=1000)


# Mutations of valid frames. Byte-level ones mostly break the header; body-level ones keep
# a header that fits, so the CBOR decoder and the message validation get the bad input.

_mutations = st.sampled_from(["flip", "set", "insert", "delete", "truncate"])


@st.composite
def mutated_bytes(draw: st.DrawFn, data: bytes, start: int = 0) -> bytes:
    data = bytearray(data)
    for _ in range(draw(st.integers(1, 3))):
        if len(data) <= start:
            break
        kind = draw(_mutations)
        at = draw(st.integers(start, len(data) - 1))
        if kind == "flip":
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "set":
            data[at] = draw(
                st.sampled_from(
                    [0x00, 0x18, 0x1B, 0x40, 0x5F, 0x7F, 0x9F, 0xBF, 0xC1, 0xD8, 0xF7, 0xFF]
                )
            )
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=4))
        elif kind == "delete":
            del data[at : at + draw(st.integers(1, 4))]
        else:
            del data[at:]
    return bytes(data)


@settings(max_examples=300)  # a fuzzer: cheap examples over a wide input space
@given(message_lists, st.data())
def test_mutated_frames(messages: list[Message], data: st.DataObject) -> None:
    stream = b"".join(encode(m) for m in messages)
    bad = data.draw(mutated_bytes(stream))
    pieces = data.draw(sts.chunked(bad, max_chunks=6))
    check_outcome_independent_of_chunking(bad, pieces, max_frame_size=DEFAULT_MAX_FRAME_SIZE)


@settings(max_examples=400)  # a fuzzer: cheap examples over a wide input space
@given(sts.messages(), st.booleans(), st.data())
def test_mutated_bodies_behind_valid_headers(
    message: Message, compress: bool, data: st.DataObject
) -> None:
    body = data.draw(mutated_bytes(encode(message)[HEADER_SIZE:]))
    frame = frame_of(zlib.compress(body), FLAG_COMPRESSED) if compress else frame_of(body)
    good = encode(Ping(mid=1))
    stream = good + frame + good
    try:
        out = FrameDecoder().feed(stream)
    except ProtocolError as exc:
        refusal = exc
    else:
        event("decoded")
        assert out[0] == out[-1] == Ping(mid=1) and len(out) == 3
        assert_reencodes(out[1])
        return
    event(type(refusal).__name__)
    assert refusal.messages == [Ping(mid=1)]


def assert_reencodes(message: Message) -> None:
    """Whatever decodes can be sent on (a leader forwards payloads it received)."""
    again = encode(message)
    assert encode(decode(again)) == again


# Structured mutations of the CBOR map itself.

_odd_values = st.one_of(sts.odd_values, sts.tagged_values)


@st.composite
def mutated_wire(draw: st.DrawFn, message: Message) -> object:
    wire: dict = dict(to_wire(message))
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["drop", "replace", "add", "tag", "subject", "retype"]))
        keys = sorted(wire, key=str)
        if kind == "subject":
            bad = draw(
                st.sampled_from(["a..b", ".a", "a.", "a.>.b", "", "a b", "x\x00", "\t", "*", "a.>"])
            )
            for key in ("s", "pat", "tgt"):
                if key in wire:
                    wire[key] = bad
            if "pats" in wire or draw(st.booleans()):
                wire["pats"] = [bad]
        elif kind == "drop" and keys:
            del wire[draw(st.sampled_from(keys))]
        elif kind == "replace" and keys:
            wire[draw(st.sampled_from(keys))] = draw(_odd_values)
        elif kind == "add":
            wire[draw(sts.texts)] = draw(_odd_values)
        elif kind == "tag":
            wire["t"] = draw(st.one_of(st.integers(-5, 40), st.just(2**64), _odd_values))
        else:
            return draw(st.sampled_from([list(wire.items()), list(wire.values()), "map", 3, None]))
    return wire


@settings(max_examples=500)  # a fuzzer: cheap examples over a wide input space
@given(sts.messages(), st.data())
def test_mutated_wire_maps(message: Message, data: st.DataObject) -> None:
    wire = data.draw(mutated_wire(message))
    body = cbor2.dumps(wire)
    if data.draw(st.integers(0, 3)) == 0:
        body += data.draw(st.binary(min_size=1, max_size=3))  # trailing bytes
    try:
        got = decode(frame_of(body))
    except ProtocolError as exc:
        refusal = exc
    else:
        event("decoded")
        assert_reencodes(got)
        return
    event(type(refusal).__name__)
    assert len(refusal.message) < 400  # it goes back to the peer and into logs


# ---------------------------------------------------------------------------------------
# Hand-written cases


def test_oversize_header_rejected_before_body_is_buffered() -> None:
    decoder = FrameDecoder()
    header = (2 * 1024**3).to_bytes(4, "big") + b"\x00"  # announces 2 GiB
    with pytest.raises(FrameTooLarge, match="exceeds the limit") as info:
        decoder.feed(header)
    assert info.value.code == "frame_too_large"
    assert decoder.buffered == 0


def test_oversize_header_rejected_when_body_follows_in_same_chunk() -> None:
    decoder = FrameDecoder(max_frame_size=100)
    good = encode(Ping(mid=1))
    with pytest.raises(FrameTooLarge) as info:
        decoder.feed(good + (101).to_bytes(4, "big") + b"\x00" + b"x" * 50)
    assert info.value.messages == [Ping(mid=1)]
    assert decoder.buffered == 0


def test_frame_at_the_limit_is_accepted() -> None:
    message = Submit(mid=1, job_id="j", subject="a", payload="x" * 200)
    frame = encode(message)
    limit = len(frame) - HEADER_SIZE
    assert FrameDecoder(max_frame_size=limit).feed(frame) == [message]
    with pytest.raises(FrameTooLarge):
        FrameDecoder(max_frame_size=limit - 1).feed(frame[:HEADER_SIZE])


def test_partial_header_waits() -> None:
    decoder = FrameDecoder(max_frame_size=10)
    assert decoder.feed(b"\xff\xff\xff\xff") == []  # 4 of 5 header bytes: nothing known yet
    with pytest.raises(FrameTooLarge):
        decoder.feed(b"\x00")


def test_zip_bomb_is_frame_too_large() -> None:
    limit = 1024 * 1024
    message = Submit(mid=1, job_id="j", subject="a", payload=b"\x00" * (64 * limit))
    frame = encode(message, compress_threshold=0)
    assert frame[4] == FLAG_COMPRESSED and len(frame) < limit // 4
    decoder = FrameDecoder(max_frame_size=limit)
    tracemalloc.start()
    try:
        with pytest.raises(FrameTooLarge, match="inflates beyond the limit"):
            decoder.feed(frame)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * limit  # never inflated past the limit
    # The same frame is fine for a decoder that allows it.
    assert FrameDecoder(max_frame_size=65 * limit).feed(frame) == [message]


def test_compressed_body_inflating_to_exactly_the_limit() -> None:
    message = Submit(mid=1, job_id="j", subject="a", payload="x" * 5000)
    body = encode(message)[HEADER_SIZE:]
    frame = frame_of(zlib.compress(body), FLAG_COMPRESSED)
    assert FrameDecoder(max_frame_size=len(body)).feed(frame) == [message]
    with pytest.raises(FrameTooLarge):
        FrameDecoder(max_frame_size=len(body) - 1).feed(frame)


@pytest.mark.parametrize("flags", [0x02, 0x04, 0x80, 0x03, 0xFF])
def test_unknown_flags(flags: int) -> None:
    body = encode(Ping(mid=1))[HEADER_SIZE:]
    with pytest.raises(MalformedFrame, match="unknown frame flags"):
        FrameDecoder().feed(frame_of(body, flags)[:HEADER_SIZE])  # known from the header alone


@pytest.mark.parametrize(
    ("body", "match"),
    [
        (b"not zlib at all", "does not inflate"),
        (zlib.compress(cbor2.dumps({"t": 15, "i": 1}))[:-3], "truncated"),
        (zlib.compress(cbor2.dumps({"t": 15, "i": 1})) + b"extra", "trailing data"),
        (b"", "truncated"),
    ],
)
def test_bad_compressed_bodies(body: bytes, match: str) -> None:
    with pytest.raises(MalformedFrame, match=match):
        FrameDecoder().feed(frame_of(body, FLAG_COMPRESSED))


@pytest.mark.parametrize(
    ("body", "exc"),
    [
        (b"", MalformedFrame),  # an empty frame
        (cbor2.dumps({"t": 15, "i": 1}) + b"\xf6", MalformedFrame),  # trailing bytes
        (cbor2.dumps([15, 1]), InvalidField),  # not a map
        (cbor2.dumps({"t": 77, "i": 1}), UnknownMessage),
        (cbor2.dumps({"t": 3, "i": 1, "s": "a"}), InvalidField),  # no job id
        (cbor2.dumps({"t": 3, "i": 1, "j": "j", "s": "a", "q": True}), InvalidField),
        (cbor2.dumps({"t": 9, "i": 1, "cr": False}), InvalidField),  # bool where int
        (cbor2.dumps({"t": 3, "i": 1, "j": "j", "s": "a.>"}), InvalidSubject),
    ],
)
def test_bad_frames_after_good_ones(body: bytes, exc: type[ProtocolError]) -> None:
    good = [Ping(mid=1), Submit(mid=2, job_id="j", subject="a.b")]
    stream = b"".join(encode(m) for m in good) + frame_of(body) + encode(Ping(mid=3))
    decoder = FrameDecoder()
    with pytest.raises(exc) as info:
        decoder.feed(stream)
    assert type(info.value) is exc
    assert info.value.messages == good  # the good ones that came before, not the one after
    assert decoder.buffered == 0
    # The decoder stays failed, even for good bytes, and hands out no message twice.
    with pytest.raises(exc) as again:
        decoder.feed(encode(Ping(mid=4)))
    assert again.value.messages == []
    assert "decoder failed earlier" in again.value.message
    with pytest.raises(exc):
        decoder.feed(b"")


def test_messages_before_a_bad_frame_in_earlier_feeds_are_not_repeated() -> None:
    decoder = FrameDecoder()
    assert decoder.feed(encode(Ping(mid=1))) == [Ping(mid=1)]
    with pytest.raises(MalformedFrame) as info:
        decoder.feed(encode(Ping(mid=2)) + frame_of(b"\xff"))
    assert info.value.messages == [Ping(mid=2)]


def test_frame_split_between_header_and_body() -> None:
    frame = encode(Submit(mid=1, job_id="j", subject="a", payload=list(range(50))))
    decoder = FrameDecoder()
    assert decoder.feed(frame[:HEADER_SIZE]) == []
    assert decoder.buffered == HEADER_SIZE
    assert decoder.feed(frame[HEADER_SIZE:-1]) == []
    assert len(decoder.feed(frame[-1:])) == 1


@given(st.binary(min_size=1, max_size=64))
def test_decode_of_junk_raises_protocol_error_only(junk: bytes) -> None:
    assume(len(junk) != 0)
    try:
        decode(junk)
    except ProtocolError:
        pass
