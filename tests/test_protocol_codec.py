"""Messages and their CBOR bodies: round trips, validation when built, bad bodies."""

from __future__ import annotations

import math

import attrs
import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import protocol
from protocol import (
    MESSAGE_TYPES,
    Ack,
    Assign,
    CachePut,
    Chunk,
    Credit,
    Error,
    ErrorCode,
    FrameTooLarge,
    Hello,
    InvalidField,
    InvalidSubject,
    MalformedFrame,
    Message,
    Nack,
    Progress,
    ProtocolError,
    Publish,
    Result,
    StateViolation,
    Submit,
    Subscribe,
    UnknownMessage,
    UnsupportedVersion,
    Welcome,
    decode,
    decode_body,
    encode,
    encode_body,
    from_wire,
    to_wire,
)
from tests import strategies as sts


def _body(wire: object) -> bytes:
    return cbor2.dumps(wire)


SUBMIT = Submit(mid=7, job_id="job-1", subject="math.square", payload={"n": 7})


# ---------------------------------------------------------------------------------------
# The strategies module


def test_strategies_cover_every_message_kind() -> None:
    assert set(sts.MESSAGE_STRATEGIES) == set(MESSAGE_TYPES.values())
    assert len(MESSAGE_TYPES) == 22


def test_tags_are_unique_and_match_kind() -> None:
    for tag, cls in MESSAGE_TYPES.items():
        assert tag == cls.KIND
        assert issubclass(cls, Message)
    assert len({cls.KIND for cls in MESSAGE_TYPES.values()}) == len(MESSAGE_TYPES)


def test_wire_keys_unique_per_class_and_not_t() -> None:
    for cls in MESSAGE_TYPES.values():
        keys = [f.metadata["key"] for f in attrs.fields(cls)]
        assert len(keys) == len(set(keys)), cls
        assert "t" not in keys, cls
        if "payload" in attrs.fields_dict(cls):  # "e" holds the encoded payload
            assert "e" not in keys, cls


@given(sts.subjects)
def test_subject_strategy_is_valid(subject: str) -> None:
    assert protocol.is_valid_subject(subject)


@given(sts.patterns)
def test_pattern_strategy_is_valid(pattern: str) -> None:
    assert protocol.is_valid_pattern(pattern)


@given(st.data())
def test_chunked_joins_back(data: st.DataObject) -> None:
    blob = data.draw(st.binary(max_size=50))
    pieces = data.draw(sts.chunked(blob))
    assert b"".join(pieces) == blob
    assert all(pieces)


# ---------------------------------------------------------------------------------------
# Round trips


@pytest.mark.parametrize("cls", list(MESSAGE_TYPES.values()), ids=lambda c: c.__name__)
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_round_trip_every_kind(cls: type, data: st.DataObject) -> None:
    message = data.draw(sts.MESSAGE_STRATEGIES[cls])
    frame = encode(message)
    assert decode(frame) == message
    # The low-level decoders keep a payload encoded: the bytes to_wire wrote.
    received = sts.with_encoded_payload(message)
    assert from_wire(to_wire(message)) == received
    assert decode_body(encode_body(message)) == received
    assert decode(frame, decode_payloads=False) == received
    assert sts.with_decoded_payload(received) == message
    assert frame[5:] == encode_body(message) == encode_body(received)


@settings(max_examples=200, deadline=None)
@given(sts.messages())
def test_round_trip_compressed(message: Message) -> None:
    frame = encode(message, compress_threshold=0)
    assert decode(frame) == message
    # Compression is used only when it pays.
    plain = encode(message)
    assert len(frame) <= len(plain)
    if frame[4] & protocol.FLAG_COMPRESSED:
        assert len(frame) < len(plain)
    else:
        assert frame == plain


def test_compression_flag_set_for_compressible_body() -> None:
    message = Submit(mid=1, job_id="j", subject="a", payload="x" * 10_000)
    frame = encode(message, compress_threshold=1024)
    assert frame[4] == protocol.FLAG_COMPRESSED
    assert len(frame) < 200
    assert decode(frame) == message
    assert encode(message, compress_threshold=20_000)[4] == 0  # below the threshold
    assert encode(message)[4] == 0  # no threshold, no compression


def test_wire_form_of_a_submit() -> None:
    """The exact bytes, so that other implementations have a fixed point to test against."""
    wire = to_wire(SUBMIT)
    # The payload travels encoded, under key "e": a byte string holding the CBOR of
    # {"n": 7}, a1 61 6e 07.
    assert wire == {"t": 3, "i": 7, "j": "job-1", "s": "math.square", "e": b"\xa1\x61n\x07"}
    assert wire["e"] == cbor2.dumps({"n": 7})
    assert next(iter(wire)) == "t"
    frame = encode(SUBMIT)
    body = cbor2.dumps(
        {"t": 3, "i": 7, "j": "job-1", "s": "math.square", "e": cbor2.dumps({"n": 7})}
    )
    assert frame == len(body).to_bytes(4, "big") + b"\x00" + body
    assert body.endswith(b"\x61e\x44\xa1\x61n\x07")  # key "e", bytes(4): the map


def test_defaults_are_left_out_and_missing_means_default() -> None:
    assert to_wire(Result(mid=1, job_id="j")) == {"t": 8, "i": 1, "j": "j"}
    wire = to_wire(Result(mid=1, job_id="j", ok=False, attempts=3, cid=0))
    assert wire == {"t": 8, "i": 1, "c": 0, "j": "j", "ok": False, "a": 3}
    assert from_wire({"t": 8, "i": 1, "j": "j"}) == Result(mid=1, job_id="j")


def test_explicit_null_for_optional_fields() -> None:
    assert from_wire({"t": 5, "i": 1, "c": None, "j": None}) == Ack(mid=1)


def test_a_payload_sent_plain_is_accepted() -> None:
    """Key "p" holds a payload sent plain, as any CBOR value (protocol version 1 did so):
    encoded on receipt (a decoded message's payload is always Encoded), decoded again when
    payloads are decoded; re-sent, it goes encoded."""
    for value in ({"n": 7}, [1, [2]], "text", 0, -1.5, True, b"raw bytes"):
        wire = {"t": 3, "i": 7, "j": "job-1", "s": "math.square", "p": value}
        body = _body(wire)
        frame = len(body).to_bytes(4, "big") + b"\x00" + body
        assert from_wire(cbor2.loads(body)) == Submit(
            mid=7,
            job_id="job-1",
            subject="math.square",
            payload=protocol.Encoded(cbor2.dumps(value)),
        )
        assert protocol.decode_payload(decode_body(body).payload) == value
        assert decode(frame) == Submit(mid=7, job_id="job-1", subject="math.square", payload=value)
        kept = decode(frame, decode_payloads=False)
        assert kept.payload == protocol.Encoded(cbor2.dumps(value))
        assert "p" not in to_wire(kept) and to_wire(kept)["e"] == cbor2.dumps(value)
    # A plain payload is part of the body: the body's rules apply to it (depth, bignums).
    deep: object = 0
    for _ in range(protocol.MAX_DEPTH):
        deep = [deep]
    with pytest.raises(MalformedFrame, match="depth"):
        decode_body(_body({"t": 3, "i": 7, "j": "j", "s": "a", "p": deep}))
    with pytest.raises(MalformedFrame, match="bignum"):
        decode_body(_body({"t": 3, "i": 7, "j": "j", "s": "a", "p": 2 ** (8 * 1025)}))


def test_unknown_keys_are_ignored() -> None:
    wire = {**to_wire(SUBMIT), "future": [1, 2], "zz": {"a": 1}}
    assert from_wire(wire) == sts.with_encoded_payload(SUBMIT)
    body = _body(wire)
    assert decode(len(body).to_bytes(4, "big") + b"\x00" + body) == SUBMIT


def test_payload_containers_come_back_as_lists_and_dicts() -> None:
    message = Submit(mid=1, job_id="j", subject="a", payload=[(1, 2), {"k": b"v"}])
    assert decode(encode(message)).payload == [[1, 2], {"k": b"v"}]


def test_big_ints_and_special_floats_survive() -> None:
    payload = [2**64, -(2**64) - 1, 2**200, -0.0, math.inf, -math.inf, 1e-310]
    got = decode(encode(Submit(mid=2**64 - 1, job_id="j", subject="a", payload=payload)))
    assert got.payload == payload  # payloads may hold bignums; integer fields may not
    assert got.mid == 2**64 - 1
    assert math.copysign(1, got.payload[3]) == -1


def test_nan_payload_survives_as_nan() -> None:
    got = decode(encode(Submit(mid=1, job_id="j", subject="a", payload=math.nan)))
    assert math.isnan(got.payload)


def test_cache_put_entries_come_back_as_tuples() -> None:
    message = CachePut(mid=1, cache_id="c", target="w.>", entries=[["a", b"1"], ("b", b"2")])
    assert message.entries == (("a", b"1"), ("b", b"2"))
    assert decode(encode(message)) == message


def test_encode_rejects_non_messages_and_unencodable_payloads() -> None:
    with pytest.raises(TypeError):
        to_wire({"t": 3})  # type: ignore[arg-type]
    # A payload is encoded on its own (it travels as the bytes of its encoding): its error.
    bad = Submit(mid=1, job_id="j", subject="a", payload=object())
    for func in (encode, encode_body, to_wire, protocol.encode_item):
        with pytest.raises(ValueError, match=r"^cannot encode the payload <object object"):
            func(bad)
    # Any other field with no CBOR encoding: the message's error.
    with pytest.raises(ValueError, match=r"^cannot encode Hello: "):
        encode(Hello(mid=1, role="client", meta={"k": object()}))


# ---------------------------------------------------------------------------------------
# Validation when built locally: TypeError / ValueError, never a ProtocolError (except
# InvalidSubject, which is also a ValueError)


@pytest.mark.parametrize(
    ("build", "exc"),
    [
        (lambda: Submit(mid=1, job_id="j", subject="a", qos=2), ValueError),
        (lambda: Submit(mid=1, job_id="j", subject="a", qos=True), ValueError),
        (lambda: Submit(mid=1, job_id="j", subject="a", qos="1"), ValueError),
        (lambda: Submit(mid=-1, job_id="j", subject="a"), ValueError),
        (lambda: Submit(mid=1.0, job_id="j", subject="a"), TypeError),
        (lambda: Submit(mid=True, job_id="j", subject="a"), TypeError),
        (lambda: Submit(mid=1, job_id="", subject="a"), ValueError),
        (lambda: Submit(mid=1, job_id=5, subject="a"), TypeError),
        (lambda: Submit(mid=1, job_id="j", subject="a", timeout=-1), ValueError),
        (lambda: Submit(mid=1, job_id="j", subject="a", timeout=math.inf), ValueError),
        (lambda: Submit(mid=1, job_id="j", subject="a", timeout=math.nan), ValueError),
        (lambda: Submit(mid=1, job_id="j", subject="a", timeout="1"), TypeError),
        (lambda: Submit(mid=1, job_id="j", subject="a", timeout=10**400), ValueError),
        (lambda: Submit(mid=1, job_id="j", subject="a", max_attempts=0), ValueError),
        (lambda: Submit(mid=1, job_id="j", subject="a", headers={"k": 1}), TypeError),
        (lambda: Submit(mid=1, job_id="j", subject="a", headers=[("k", "v")]), TypeError),
        (lambda: Credit(mid=1, credit=-1), ValueError),
        (lambda: Credit(mid=1, credit=1.5), TypeError),
        (lambda: Credit(mid=1), TypeError),  # required field missing
        (lambda: Assign(mid=1, job_id="j", subject="a", attempt=0), ValueError),
        (lambda: Result(mid=1, job_id="j", ok=1), TypeError),
        (
            lambda: Result(mid=1, job_id="j", attempts=-1),
            ValueError,
        ),  # 0 is valid: cancelled before any delivery
        (lambda: Progress(mid=1, job_id="j", fraction=1.5), ValueError),
        (lambda: Progress(mid=1, job_id="j", fraction="half"), TypeError),
        (lambda: Hello(mid=1, role="admin"), ValueError),
        (lambda: Hello(mid=1, role="worker", versions=[1, "2"]), TypeError),
        (lambda: Hello(mid=1, role="worker", versions=1), TypeError),
        (lambda: Hello(mid=1, role="worker", meta=[]), TypeError),
        (lambda: Welcome(mid=1, version=0), ValueError),
        (lambda: Welcome(mid=1, version=1, max_frame=0), ValueError),
        (lambda: Error(mid=1, code=""), ValueError),
        (lambda: Nack(mid=1, job_id="j", delay=-0.5), ValueError),
        (lambda: Ack(mid=1, cid=-1), ValueError),
        (lambda: Chunk(mid=1, transfer_id="x", index=0, data="text"), TypeError),
        (lambda: CachePut(mid=1, cache_id="c", target="a", entries=[("a", "notbytes")]), TypeError),
        (lambda: CachePut(mid=1, cache_id="c", target="a", entries=[("a", b"", 1)]), TypeError),
        (lambda: Publish(mid=1, subject="a", retain=None), TypeError),
    ],
)
def test_bad_fields_raise_type_or_value_error(build, exc) -> None:
    with pytest.raises(exc) as info:
        build()
    assert not isinstance(info.value, ProtocolError)


@pytest.mark.parametrize(
    "build",
    [
        lambda: Submit(mid=1, job_id="j", subject="a..b"),
        lambda: Submit(mid=1, job_id="j", subject="math.*"),
        lambda: Submit(mid=1, job_id="j", subject="events.>"),
        lambda: Submit(mid=1, job_id="j", subject=""),
        lambda: Submit(mid=1, job_id="j", subject="a b"),
        lambda: Publish(mid=1, subject=".a"),
        lambda: Subscribe(mid=1, sid=1, pattern="a.>.b"),
        lambda: Subscribe(mid=1, sid=1, pattern="a.."),
        lambda: Hello(mid=1, role="worker", patterns=["ok.*", "bad..one"]),
        lambda: CachePut(mid=1, cache_id="c", target="a.>.b"),
    ],
)
def test_bad_subjects_raise_invalid_subject(build) -> None:
    with pytest.raises(InvalidSubject) as info:
        build()
    assert isinstance(info.value, ValueError)
    assert info.value.code == ErrorCode.BAD_SUBJECT


def test_subject_field_of_wrong_type_is_type_error() -> None:
    with pytest.raises(TypeError):
        Submit(mid=1, job_id="j", subject=b"math")


def test_wildcards_allowed_in_patterns_only() -> None:
    Subscribe(mid=1, sid=1, pattern="math.*.x.>")
    Hello(mid=1, role="worker", patterns=("math.square", "math.common.>"))
    CachePut(mid=1, cache_id="c", target="workers.*")


def test_messages_are_frozen() -> None:
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        SUBMIT.qos = 0  # type: ignore[misc]


# ---------------------------------------------------------------------------------------
# Bad bodies from the wire: each is the right ProtocolError subclass


def _submit_wire(**changes: object) -> dict:
    wire = {"t": 3, "i": 1, "j": "j", "s": "a.b"}
    wire.update(changes)
    return {k: v for k, v in wire.items() if v is not _DROP}


_DROP = object()


@pytest.mark.parametrize(
    ("body", "exc"),
    [
        (b"", MalformedFrame),
        (b"\xff", MalformedFrame),  # a lone "break"
        (b"\xa1", MalformedFrame),  # map of one pair, truncated
        (_body(_submit_wire()) + b"\x00", MalformedFrame),  # trailing bytes
        (_body(_submit_wire()) + _body(_submit_wire()), MalformedFrame),  # two items
        (b"\x9b" + (2**62).to_bytes(8, "big"), MalformedFrame),  # array "of 2**62 items"
        (b"\x5b" + (2**62).to_bytes(8, "big"), MalformedFrame),  # bytes "of 2**62 bytes"
        (b"\x81" * 100 + b"\x00", MalformedFrame),  # nesting deeper than 64
        (b"\x9f" * 100, MalformedFrame),  # indefinite arrays, deep
        (b"\xd8\x1c\x81\x00", MalformedFrame),  # tag 28: shared reference
        (b"\xd8\x1d\x00", MalformedFrame),  # tag 29: reference to a shared value
        (_body({"t": 3, 1: 2}), MalformedFrame),  # int map keys
        (b"\xa5\x61t\x03\x61i\x01\x61i\x02\x61j\x61j\x61s\x61a", MalformedFrame),  # "i" twice
        (_body({**_submit_wire(), "p": {"n": 1}})[:-4] + b"\xa2\x61n\x01\x61n\x02", MalformedFrame),
        (b"\xa2\x61t\x03\x81\x00\x01", MalformedFrame),  # a list used as a map key
        (b"\x7f\x61a\x01\xff", MalformedFrame),  # indefinite text with a non-text piece
        (b"\x62\xc3\x28", MalformedFrame),  # invalid UTF-8
        (_body([3, 1]), InvalidField),  # not a map
        (_body("hello"), InvalidField),
        (_body(None), InvalidField),
        (_body({"i": 1}), InvalidField),  # no tag
        (_body({"t": "3"}), InvalidField),  # tag of the wrong type
        (_body({"t": True}), InvalidField),  # bool is not an int here
        (_body({"t": 3.0}), InvalidField),
        (_body({"t": 99, "i": 1}), UnknownMessage),
        (_body({"t": 0, "i": 1}), UnknownMessage),
        (_body({"t": -1, "i": 1}), UnknownMessage),
        (_body({"t": 2**70, "i": 1}), UnknownMessage),
        (_body(_submit_wire(i=_DROP)), InvalidField),  # missing mid
        (_body(_submit_wire(j=_DROP)), InvalidField),  # missing job id
        (_body(_submit_wire(s=_DROP)), InvalidField),  # missing subject
        (_body(_submit_wire(i=True)), InvalidField),  # bool where int
        (_body(_submit_wire(i=1.0)), InvalidField),  # float where int
        (_body(_submit_wire(i=-5)), InvalidField),
        (_body(_submit_wire(i=None)), InvalidField),  # null for a required field
        (_body(_submit_wire(q=2)), InvalidField),
        (_body(_submit_wire(q=False)), InvalidField),
        (_body(_submit_wire(j=b"j")), InvalidField),  # bytes where text
        (_body(_submit_wire(h=["k", "v"])), InvalidField),
        (_body(_submit_wire(h={"k": 1})), InvalidField),
        (_body(_submit_wire(to=-1)), InvalidField),
        (_body(_submit_wire(to=math.inf)), InvalidField),
        (_body(_submit_wire(to=math.nan)), InvalidField),
        (_body(_submit_wire(to=2**2000)), InvalidField),  # no float can hold it
        (_body(_submit_wire(to=-(2**2000))), InvalidField),
        (_body({"t": 7, "i": 1, "j": "j", "f": 2**2000}), InvalidField),
        (_body({"t": 17, "i": 1, "code": "busy", "ra": 2**1024}), InvalidField),
        (_body(_submit_wire(s=["a"])), InvalidField),  # wrong type for a subject
        (_body(_submit_wire(s="a..b")), InvalidSubject),
        (_body(_submit_wire(s="a.*")), InvalidSubject),
        (_body({"t": 11, "i": 1, "sid": 1, "pat": "a.>.b"}), InvalidSubject),
        (_body({"t": 1, "i": 1, "role": "worker", "pats": ["a", ""]}), InvalidSubject),
        (_body({"t": 1, "i": 1, "role": "worker", "pats": "a.b"}), InvalidField),
        (_body({"t": 1, "i": 1, "role": "worker", "pats": [1]}), InvalidField),
        (_body({"t": 1, "i": 1, "role": "god"}), InvalidField),
        (_body({"t": 1, "i": 1, "role": ["worker"]}), InvalidField),  # unhashable role
        (_body({"t": 1, "i": 1, "role": "worker", "v": {"1": 1}}), InvalidField),
        (_body({"t": 1, "i": 1, "role": "worker", "meta": None}), InvalidField),
        (_body({"t": 9, "i": 1, "cr": -1}), InvalidField),
        (_body({"t": 7, "i": 1, "j": "j", "f": 2}), InvalidField),
        (_body({"t": 20, "i": 1, "cache": "c", "tgt": "a", "e": [["a"]]}), InvalidField),
        (_body({"t": 20, "i": 1, "cache": "c", "tgt": "a", "e": [5]}), InvalidField),
        (_body({"t": 20, "i": 1, "cache": "c", "tgt": "a", "e": {"a": b""}}), InvalidField),
        (_body({"t": 22, "i": 1, "x": "x", "n": 0, "d": "text"}), InvalidField),
        # An encoded payload (key "e") is a byte string (or null): any other value is
        # refused; and a payload is sent encoded or plain (key "p"), not both.
        (_body(_submit_wire(e={"n": 1})), InvalidField),
        (_body(_submit_wire(e=[1])), InvalidField),
        (_body(_submit_wire(e="text")), InvalidField),
        (_body(_submit_wire(e=0)), InvalidField),
        (_body(_submit_wire(e=False)), InvalidField),
        (_body(_submit_wire(e=b"\x01", p=1)), InvalidField),
        (_body(_submit_wire(e=b"\x01", p=b"\x01")), InvalidField),
        (_body({"t": 8, "i": 1, "j": "j", "e": 49}), InvalidField),  # Result
        (_body({"t": 10, "i": 1, "s": "a", "e": []}), InvalidField),  # Publish
        (_body({"t": 4, "i": 1, "j": "j", "s": "a", "e": {}}), InvalidField),  # Assign
        (_body({"t": 13, "i": 1, "sid": 1, "s": "a", "e": "x"}), InvalidField),  # Deliver
    ],
)
def test_bad_bodies(body: bytes, exc: type[ProtocolError]) -> None:
    with pytest.raises(exc) as info:
        decode_body(body)
    assert type(info.value) is exc
    assert info.value.message  # names the problem
    # And the same through a whole frame.
    with pytest.raises(exc):
        decode(len(body).to_bytes(4, "big") + b"\x00" + body)


def test_error_messages_name_the_problem() -> None:
    with pytest.raises(InvalidField, match=r"Submit is missing field 'subject' \(key 's'\)"):
        decode_body(_body(_submit_wire(s=_DROP)))
    with pytest.raises(InvalidField, match="mid must be an int, got bool"):
        decode_body(_body(_submit_wire(i=True)))
    with pytest.raises(UnknownMessage, match="unknown message kind 99"):
        decode_body(_body({"t": 99}))
    with pytest.raises(MalformedFrame, match="trailing"):
        decode_body(_body({"t": 99}) + b"\x00")


@pytest.mark.parametrize(
    "wire",
    [
        {"t": "x" * 100_000},
        {"t": [[[["x" * 100_000]]]]},
        {"t": -(2**100_000)},
        _submit_wire(i=-(2**100_000)),
        _submit_wire(i=-(10**5000)),
        _submit_wire(q="x" * 100_000),
        _submit_wire(q=["x" * 100_000] * 100),
        _submit_wire(s="a..b" + "x" * 100_000),
        _submit_wire(h={"k" * 100_000: 1}),
        _submit_wire(to=-(2**100_000)),
        {"t": 1, "i": 1, "role": "x" * 100_000},
        {"t": 1, "i": 1, "role": "worker", "pats": ["a." * 50_000 + "."]},
        {"t": 20, "i": 1, "cache": "c", "tgt": "a", "e": [["a", "b" * 100_000]]},
        # the same long key twice: cbor2's own message quotes it
        b"\xa2" + _body("k" * 100_000) + b"\x01" + _body("k" * 100_000) + b"\x02",
    ],
)
def test_error_messages_stay_short(wire: dict | bytes) -> None:
    """A field as large as a frame is not copied into the error sent back to the peer."""
    with pytest.raises(ProtocolError) as info:
        decode_body(wire if isinstance(wire, bytes) else _body(wire))
    assert len(info.value.message) < 300, info.value.message


def test_ordinary_cbor_tags_in_payloads_are_kept() -> None:
    """Tags with no special meaning pass through untouched (they re-encode the same)."""
    tag = cbor2.CBORTag(4000, (1, "x"))  # (a tag's array decodes as a tuple)
    encoded = cbor2.dumps(tag)
    body = _body({**_submit_wire(), "e": encoded})
    frame = len(body).to_bytes(4, "big") + b"\x00" + body
    # Kept encoded: the very bytes, forwarded as they came.
    message = decode_body(body)
    assert message.payload == protocol.Encoded(encoded)
    assert encode_body(message) == body
    # Decoded: the tag, which re-encodes to the same bytes.
    for value in (protocol.decode_payload(message.payload), decode(frame).payload):
        assert isinstance(value, cbor2.CBORTag)
        assert value.tag == 4000 and list(value.value) == [1, "x"]
        assert protocol.encode_payload(value) == encoded
    assert encode(decode(frame)) == frame
    # Sent plain (key "p", in the body itself): the tag as it is; kept encoded, the same
    # bytes as if it had come encoded.
    plain = _body({**_submit_wire(), "p": tag})
    assert decode_body(plain).payload == protocol.Encoded(encoded)
    plain_frame = len(plain).to_bytes(4, "big") + b"\x00" + plain
    assert decode(plain_frame).payload == tag
    assert decode(plain_frame, decode_payloads=False).payload == protocol.Encoded(encoded)
    assert encode(decode(plain_frame, decode_payloads=False)) == frame


# ---------------------------------------------------------------------------------------
# Error codes


@pytest.mark.parametrize(
    ("cls", "code"),
    [
        (ProtocolError, "protocol_error"),
        (FrameTooLarge, "frame_too_large"),
        (MalformedFrame, "bad_frame"),
        (UnknownMessage, "unknown_kind"),
        (InvalidField, "bad_field"),
        (InvalidSubject, "bad_subject"),
        (StateViolation, "protocol_violation"),
        (UnsupportedVersion, "unsupported_version"),
        (protocol.InvalidPayload, "bad_field"),
    ],
)
def test_error_codes(cls: type[ProtocolError], code: str) -> None:
    assert cls.code == code
    err = cls("what went wrong")
    assert err.code == code
    assert err.message == "what went wrong"
    assert str(err) == "what went wrong"
    assert err.messages == []
    assert isinstance(err, ProtocolError)
    assert code in ErrorCode.CLOSING
    assert repr(err) == f"{cls.__name__}('what went wrong')"


def test_every_protocol_error_subclass_is_listed() -> None:
    exported = {
        obj
        for name in dir(protocol)
        if isinstance(obj := getattr(protocol, name), type) and issubclass(obj, ProtocolError)
    }
    assert exported == {
        ProtocolError,
        FrameTooLarge,
        MalformedFrame,
        UnknownMessage,
        InvalidField,
        InvalidSubject,
        StateViolation,
        UnsupportedVersion,
        protocol.InvalidPayload,
    }
    # A bad payload is a bad field to the peer: same code, a subclass for the receiver.
    assert issubclass(protocol.InvalidPayload, InvalidField)
    assert protocol.InvalidPayload.code == InvalidField.code == "bad_field"
    # Otherwise distinct codes, so a peer can tell them apart.
    others = exported - {protocol.InvalidPayload}
    assert len({cls.code for cls in others}) == len(others)


def test_error_code_groups() -> None:
    codes = {v for k, v in vars(ErrorCode).items() if k.isupper() and isinstance(v, str)}
    assert codes >= ErrorCode.CLOSING
    assert ErrorCode.BUSY not in ErrorCode.CLOSING
    assert ErrorCode.HEARTBEAT_TIMEOUT in ErrorCode.CLOSING
    assert ErrorCode.closes_connection("bad_frame")
    assert not ErrorCode.closes_connection("busy")
    assert not ErrorCode.closes_connection("some_future_code")
