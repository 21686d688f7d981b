"""Payloads travel encoded (``protocol._payload``): a byte string holding one CBOR item,
under key ``e`` of a map or in the payload's place in a bundle (or, in a map only, sent
plain under key ``p``).

What is checked here: :class:`protocol.Encoded` (equality, hash, repr, ``of``);
``encode_payload`` and ``decode_payload`` on good values and on bad bytes (invalid,
truncated, trailing data, too deep, bignums, refused tags, bad map keys); what a payload
may be on the wire (an encoded one a byte string, the same error in a map and a bundle; a
plain one any value, not both); the ``FrameDecoder`` in both modes (payloads decoded, or
kept ``Encoded``); a bad payload failing only its frame, the messages before it handed out
decoded; and a leader's forward: payloads kept encoded and re-sent, in a map or a bundle
item, byte for byte.
"""

from __future__ import annotations

import math
from typing import Any

import attrs
import cbor2
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import protocol
from protocol import (
    MAX_BIGNUM_SIZE,
    MAX_DEPTH,
    Assign,
    Deliver,
    Encoded,
    FrameDecoder,
    InvalidField,
    InvalidPayload,
    InvalidSubject,
    Message,
    Ping,
    ProtocolError,
    Publish,
    Result,
    Submit,
    bundle_frames,
    decode,
    decode_body,
    decode_payload,
    encode,
    encode_body,
    encode_item,
    encode_payload,
    from_wire,
    message_of,
    to_array,
    to_wire,
)
from protocol._payload import (
    ENCODED_KEY,
    bad_bundled_payload,
    encoded,
    payload_from_map,
    payload_wire,
)
from tests import strategies as sts
from tests.protocol_reference import _reference_from_wire, _reference_to_wire
from tests.strategies import cbor_body, frame_of
from tests.test_protocol_framing import feed_all

BIG = 1 << 24  # a max_body under which everything fits in one bundle frame
#: The kinds that carry a payload.
PAYLOAD_KINDS = [Submit, Assign, Result, Publish, Deliver]
#: A valid message of each payload kind, without its payload.
BASES: dict[type[Message], dict[str, Any]] = {
    Submit: {"mid": 1, "job_id": "j", "subject": "a.b"},
    Assign: {"mid": 1, "job_id": "j", "subject": "a.b"},
    Result: {"mid": 1, "cid": 2, "job_id": "j"},
    Publish: {"mid": 1, "subject": "a.b"},
    Deliver: {"mid": 1, "sid": 1, "subject": "a.b"},
}

payload_messages = st.one_of(*(sts.MESSAGE_STRATEGIES[cls] for cls in PAYLOAD_KINDS))


def nested(depth: int) -> Any:
    """``depth`` arrays around a 0."""
    value: Any = 0
    for _ in range(depth):
        value = [value]
    return value


def map_frame(wire: dict[str, Any]) -> bytes:
    return frame_of(cbor_body(wire))


def test_the_payload_names_are_exported() -> None:
    assert protocol.Encoded is Encoded
    assert protocol.InvalidPayload is InvalidPayload
    assert protocol.decode_payload is decode_payload
    assert protocol.encode_payload is encode_payload
    assert issubclass(InvalidPayload, InvalidField)
    assert InvalidPayload.code == "bad_field"
    fields = {
        cls: [f for f in attrs.fields(cls) if f.metadata.get("payload")]
        for cls in protocol.MESSAGE_TYPES.values()
    }
    assert {cls for cls, found in fields.items() if found} == set(PAYLOAD_KINDS)
    for cls in PAYLOAD_KINDS:
        (field,) = fields[cls]
        assert field.name == "payload" and field.metadata["key"] == "p"
        assert field.default is None


# ---------------------------------------------------------------------------------------
# 1. Encoded


def test_encoded_holds_bytes_only() -> None:
    assert Encoded(b"\x01").data == b"\x01"
    for bad in (bytearray(b"\x01"), memoryview(b"\x01"), "\x01", 1, None, [1]):
        with pytest.raises(TypeError, match="Encoded takes bytes"):
            Encoded(bad)  # type: ignore[arg-type]
    assert not hasattr(Encoded(b""), "__dict__")  # slots: cheap to keep by the million


def test_encoded_equality_and_hash_are_those_of_the_bytes() -> None:
    one, same, other = Encoded(b"\x01"), Encoded(b"\x01"), Encoded(b"\x02")
    assert one == same and (one != same) is False  # both operators, not just __eq__
    assert one != other and (one == other) is False
    assert hash(one) == hash(same) == hash(b"\x01")
    assert len({one, same, other}) == 2
    assert {one: "x"}[same] == "x"
    # Never equal to a decoded value, nor to the raw bytes: compare decode_payload instead.
    assert Encoded(cbor2.dumps(1)) != 1
    assert Encoded(b"\x01") != b"\x01"
    assert Encoded(b"\x01") != b"\x01"
    assert Encoded(cbor2.dumps(None)) != None  # noqa: E711 - the point of the test
    assert decode_payload(Encoded(cbor2.dumps(1))) == 1
    # The same value encoded two ways is two payloads: equality is byte equality.
    assert decode_payload(Encoded(b"\x01")) == decode_payload(Encoded(b"\x18\x01")) == 1
    assert Encoded(b"\x01") != Encoded(b"\x18\x01")
    # Messages compare their payloads the same way.
    assert Submit(**BASES[Submit], payload=Encoded(b"\x01")) == Submit(
        **BASES[Submit], payload=Encoded(b"\x01")
    )
    assert Submit(**BASES[Submit], payload=Encoded(b"\x01")) != Submit(**BASES[Submit], payload=1)


def test_encoded_repr_shows_the_length_not_the_bytes() -> None:
    assert repr(Encoded(b"")) == "Encoded(<0 bytes>)"
    assert repr(Encoded(b"\xa1\x61n\x07")) == "Encoded(<4 bytes>)"
    secret = Encoded(cbor2.dumps("password" * 100_000))
    assert repr(secret) == f"Encoded(<{len(secret.data)} bytes>)"
    assert len(secret) == len(secret.data)
    message = Submit(**BASES[Submit], payload=secret)
    assert "password" not in repr(message)
    assert len(protocol.safe_repr(message)) < 200


@given(sts.payloads)
def test_encoded_of_a_value_is_its_encoding(value: Any) -> None:
    encoded = Encoded.of(value)
    assert type(encoded) is Encoded
    assert encoded.data == encode_payload(value) == cbor2.dumps(value)
    assert Encoded.of(encoded) is encoded  # already encoded: as it is
    assert encoded.decode() == decode_payload(encoded) == value


def test_encoded_of_refuses_what_has_no_encoding() -> None:
    with pytest.raises(ValueError, match=r"^cannot encode the payload <object object"):
        Encoded.of(object())


# ---------------------------------------------------------------------------------------
# 2. encode_payload and decode_payload


@given(sts.payloads)
def test_payloads_round_trip(value: Any) -> None:
    data = encode_payload(value)
    assert type(data) is bytes
    assert decode_payload(Encoded(data)) == value
    # Once decoded, a value encodes to the same bytes again (a receiver can re-send it).
    assert encode_payload(decode_payload(Encoded(data))) == data


def test_decode_payload_leaves_anything_but_encoded_alone() -> None:
    for value in (None, 1, "x", b"\xff", [1], {"k": b"v"}, math.inf):
        assert decode_payload(value) is value


@pytest.mark.parametrize(
    "value",
    [
        None,
        0,
        -1,
        2**64,
        -(2**64) - 1,
        2 ** (8 * MAX_BIGNUM_SIZE) - 1,
        -(2 ** (8 * MAX_BIGNUM_SIZE)),
        1.5,
        -0.0,
        math.inf,
        "",
        "é🚀",
        b"",
        b"\xff" * 100,
        [],
        {},
        {"k": [1, {"b": b"x"}]},
        {b"bytes key": 1},
        nested(MAX_DEPTH),
        cbor2.CBORTag(4000, "kept"),
    ],
    ids=protocol.safe_repr,
)
def test_decode_payload_accepts(value: Any) -> None:
    got = decode_payload(Encoded(encode_payload(value)))
    assert got == value
    assert encode_payload(got) == encode_payload(value)


def test_nan_payload_decodes_to_nan() -> None:
    assert math.isnan(decode_payload(Encoded(encode_payload(math.nan))))


def _tag(tag: int, content: bytes) -> bytes:
    """The CBOR head of ``tag`` (1 or 2 bytes of number) followed by ``content``."""
    return (bytes((0xD8, tag)) if tag < 256 else b"\xd9" + tag.to_bytes(2, "big")) + content


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "premature end of stream"),
        (b"\xff", "break code"),
        (b"\x82\x01", "premature end of stream"),  # an array of 2 with 1 item
        (b"\x9a\x00\x0f\x42\x40", "premature end"),  # "an array of a million", cut short
        (b"\x5a\xff\xff\xff\xff", "premature end"),  # "4 GiB of bytes", cut short
        (b"\x01\x02", "1 bytes of trailing data after its CBOR item"),
        (cbor2.dumps([1]) + cbor2.dumps([2]), "2 bytes of trailing data"),
        (b"\x81" * (MAX_DEPTH + 1) + b"\x00", "depth (64)"),
        (b"\xa1\x61k" * (MAX_DEPTH + 1) + b"\x00", "depth (64)"),
        (b"\xd8\x63" * (MAX_DEPTH + 1) + b"\x00", "depth (64)"),  # tags count too
        (b"\x9f" * 100_000, "depth (64)"),
        (b"\x81" * 100_000 + b"\x00", "depth (64)"),
        (
            b"\xc2\x59\x04\x01" + b"\x01" * (MAX_BIGNUM_SIZE + 1),
            f"a bignum of {MAX_BIGNUM_SIZE + 1} bytes exceeds the limit of {MAX_BIGNUM_SIZE} bytes",
        ),
        (cbor2.dumps([1, 10**9999]), "a bignum of 4152 bytes exceeds"),
        (b"\xc3\x59\x04\x01" + b"\x01" * (MAX_BIGNUM_SIZE + 1), "a bignum of 1025 bytes"),
        (b"\xc2\x01", "a bignum must be a byte string, got int"),
        (_tag(25, b"\x00"), "tag 25: this CBOR tag is not accepted"),  # string reference
        (_tag(28, b"\x81\x00"), "tag 28: this CBOR tag is not accepted"),  # shareable
        (_tag(29, b"\x00"), "tag 29: this CBOR tag is not accepted"),  # shared reference
        (_tag(35, b"\x61a"), "tag 35: this CBOR tag is not accepted"),  # regular expression
        (_tag(36, b"\x61a"), "tag 36: this CBOR tag is not accepted"),  # MIME message
        (_tag(256, b"\x80"), "tag 256: this CBOR tag is not accepted"),  # string refs
        (b"\x81" + _tag(28, b"\x81\x00"), "tag 28"),  # deep inside, too
        (b"\xa2\x61a\x01\x61a\x02", "Duplicate map key"),
        (b"\xa1\x01\x02", "map key must be a text string or byte string"),
        (b"\xa1\x81\x00\x01", "map key must be a text string or byte string"),
        (b"\xa1\xf9\x3c\x00\x01", "map key must be a text string or byte string"),
        (b"\x62\xc3\x28", "error decoding text string"),  # invalid UTF-8
    ],
    ids=lambda v: v[:12].hex() if isinstance(v, bytes) else v[:24],
)
def test_decode_payload_refuses(data: bytes, reason: str) -> None:
    with pytest.raises(InvalidPayload) as info:
        decode_payload(Encoded(data))
    error = info.value
    assert type(error) is InvalidPayload
    assert reason in error.message
    assert error.code == "bad_field"
    assert len(error.message) <= 200, error.message  # it goes back to a peer, and to logs
    # Encoded.decode says the same.
    with pytest.raises(InvalidPayload, match=r"^the payload"):
        Encoded(data).decode()


def test_a_payload_nests_max_depth_deep_on_its_own() -> None:
    # Its depth is counted from its value: the message around it does not count, in a map
    # or in a bundle alike.
    deepest, too_deep = nested(MAX_DEPTH), nested(MAX_DEPTH + 1)
    assert decode_payload(Encoded(encode_payload(deepest))) == deepest
    with pytest.raises(InvalidPayload, match="depth"):
        decode_payload(Encoded(encode_payload(too_deep)))
    message = Assign(**BASES[Assign], payload=deepest)
    (bundle,) = bundle_frames([encode_item(message)], BIG)
    for frame in (encode(message), bundle):
        assert decode(frame) == message
    bad = Assign(**BASES[Assign], payload=too_deep)
    (bundle,) = bundle_frames([encode_item(bad)], BIG)
    for frame in (encode(bad), bundle):
        # Refused once decoded; a leader's decoder takes the frame as it is.
        with pytest.raises(InvalidPayload, match="depth"):
            decode(frame)
        kept = decode(frame, decode_payloads=False)
        assert kept.payload == Encoded(encode_payload(too_deep))


def test_encode_payload_refuses_what_has_no_encoding() -> None:
    cycle: list[Any] = [1]
    cycle.append(cycle)
    for value, shown in (
        (object(), "<object object"),
        ({"x": [1, object()]}, "{'x': [1, <object object"),
        ({1, 2, object()}, "{"),
        (cycle, "[1, [1, "),
    ):
        with pytest.raises(ValueError, match=r"^cannot encode the payload ") as info:
            encode_payload(value)
        assert info.value.args[0].startswith(f"cannot encode the payload {shown}")
        assert len(info.value.args[0]) < 400
    # Through every encoder of a message carrying it: the payload's own error.
    bad = Submit(**BASES[Submit], payload=object())
    for encoder in (encode, encode_body, encode_item, to_wire, to_array, _reference_to_wire):
        with pytest.raises(ValueError, match=r"^cannot encode the payload "):
            encoder(bad)
    with pytest.raises(ValueError, match=r"^cannot encode the payload "):
        Submit.item(**BASES[Submit], payload=object())
    # And the pooled encoders are still fine.
    good = Submit(**BASES[Submit], payload=[1])
    assert decode(encode(good)) == good


# ---------------------------------------------------------------------------------------
# 3. The payload field on the wire: encoded (key "e", a bundle's place) or plain (key "p")


def test_payload_wire_and_payload_from_map() -> None:
    assert ENCODED_KEY == "e"
    assert payload_wire(None) is None
    assert payload_wire(Encoded(b"\xff")) == b"\xff"  # an Encoded as it is, even no CBOR
    assert payload_wire({"n": 7}) == b"\xa1\x61n\x07"
    assert payload_wire(b"x") == b"\x41x"  # a bytes *value* is encoded like any value
    # (plain, encoded): neither, one, or both.
    assert payload_from_map("Submit", None, None) is None
    assert payload_from_map("Submit", None, b"\xa1\x61n\x07") == Encoded(b"\xa1\x61n\x07")
    assert payload_from_map("Submit", None, b"") == Encoded(b"")  # no CBOR: refused if decoded
    assert payload_from_map("Submit", {"n": 7}, None) == {"n": 7}
    assert payload_from_map("Submit", b"\x01", None) == b"\x01"  # plain bytes: a bytes value
    with pytest.raises(InvalidField, match="both a plain payload"):
        payload_from_map("Submit", 1, b"\x01")
    with pytest.raises(InvalidField, match="must be a byte string"):
        payload_from_map("Submit", None, 1)
    with pytest.raises(InvalidField, match="must be a byte string"):
        bad_bundled_payload("Submit", 1)


def test_encoded_keeps_a_received_payload_encoded() -> None:
    assert encoded(None) is None
    kept = Encoded(b"\x01")
    assert encoded(kept) is kept
    assert encoded({"n": 7}) == Encoded(b"\xa1\x61n\x07")  # sent plain: encoded now
    with pytest.raises(InvalidPayload, match="cannot encode the payload"):
        encoded(object())


#: Values that are no encoded payload: refused under key "e" and in a bundle.
NOT_BYTES = [{"n": 7}, [1], "text", 0, 1.5, True, False, cbor2.CBORTag(24, b"\x01")]


@pytest.mark.parametrize("value", NOT_BYTES, ids=protocol.safe_repr)
def test_an_encoded_payload_must_be_a_byte_string(value: Any) -> None:
    expected = None
    # The same error from a map ("e") and from a bundle item, of every kind that has a
    # payload, from the fast decoders and the reference one, in either mode of the decoder.
    for cls in PAYLOAD_KINDS:
        name = cls.__name__
        expected = (
            f"bad {name}: {name}.payload must be a byte string (its encoding),"
            f" got {type(value).__name__}"
        )
        message = cls(**BASES[cls])
        wire = {**to_wire(message), ENCODED_KEY: value}
        fields = attrs.fields(cls)
        array = [cls.KIND, *(sts.wire_value(f, getattr(message, f.name)) for f in fields)]
        array[[f.name for f in fields].index("payload") + 1] = value
        for decoder, arg in ((from_wire, wire), (_reference_from_wire, wire), (message_of, array)):
            with pytest.raises(InvalidField) as info:
                decoder(arg)
            assert type(info.value) is InvalidField  # a bad field, not a bad payload
            assert info.value.message == expected
        for frame in (map_frame(wire), frame_of(cbor_body([array]))):
            for decode_payloads in (True, False):
                with pytest.raises(InvalidField) as info:
                    decode(frame, decode_payloads=decode_payloads)
                assert type(info.value) is InvalidField
                assert info.value.message == expected


@pytest.mark.parametrize("value", [*NOT_BYTES, b"\x01", None], ids=protocol.safe_repr)
def test_a_payload_sent_plain_is_encoded_on_receipt(value: Any) -> None:
    for cls in PAYLOAD_KINDS:
        message = cls(**BASES[cls], payload=value)
        wire = {**to_wire(cls(**BASES[cls])), "p": value}
        for decoder in (from_wire, _reference_from_wire):  # encoded on receipt
            got = decoder(cbor2.loads(cbor2.dumps(wire)))
            assert got.payload == (None if value is None else Encoded(encode_payload(value)))
            assert decode_payload(got.payload) == value
        frame = map_frame(wire)
        assert decode(frame) == message
        kept = decode(frame, decode_payloads=False)
        if value is None:
            assert kept == message
        else:
            # Kept encoded, as if it had come encoded; and sent on encoded.
            assert kept.payload == Encoded(encode_payload(value))
            assert to_wire(kept)[ENCODED_KEY] == encode_payload(value)
            assert "p" not in to_wire(kept)
            assert decode(encode(kept)) == message
        # Never in a bundle (but bytes, which stand for an encoded payload there).
        fields = attrs.fields(cls)
        array = [cls.KIND, *(sts.wire_value(f, getattr(message, f.name)) for f in fields)]
        array[[f.name for f in fields].index("payload") + 1] = value
        if value is None or type(value) is bytes:
            message_of(array)
        else:
            with pytest.raises(InvalidField, match="must be a byte string"):
                message_of(array)
    # Both forms at once are refused.
    for plain in (value, 0):
        if plain is None:
            continue
        wire = {**to_wire(Submit(**BASES[Submit], payload=1)), "p": plain}
        for decoder in (from_wire, _reference_from_wire):
            with pytest.raises(InvalidField, match="both a plain payload") as info:
                decoder(wire)
            assert type(info.value) is InvalidField


def test_low_level_decoders_give_encoded_payloads() -> None:
    data = cbor2.dumps({"n": 7})
    for cls in PAYLOAD_KINDS:
        message = cls(**BASES[cls], payload={"n": 7})
        expected = cls(**BASES[cls], payload=Encoded(data))
        assert to_wire(message)[ENCODED_KEY] == data and "p" not in to_wire(message)
        assert from_wire(cbor2.loads(encode_body(message))) == expected
        assert decode_body(encode_body(message)) == expected
        assert message_of(cbor2.loads(encode_item(message))) == expected
        assert decode(encode(message), decode_payloads=False) == expected
        assert decode(encode(message)) == message
        # A message with no payload has none, in every form.
        bare = cls(**BASES[cls])
        assert "p" not in to_wire(bare) and ENCODED_KEY not in to_wire(bare)
        assert decode_body(encode_body(bare)).payload is None
        assert message_of(to_array(bare)).payload is None


@given(payload_messages)
def test_a_value_and_its_encoded_form_are_sent_alike(message: Message) -> None:
    encoded = sts.with_encoded_payload(message)
    assert encode(encoded) == encode(message)
    assert encode_item(encoded) == encode_item(message)
    assert to_array(encoded) == to_array(message)
    assert to_wire(encoded) == to_wire(message) == _reference_to_wire(encoded)
    fields = {f.name: getattr(encoded, f.name) for f in attrs.fields(type(message))}
    assert type(message).item(**fields) == to_array(message)


def test_a_null_payload_inside_the_bytes_is_not_an_absent_payload() -> None:
    # h'f6' (an encoded null) is a payload; it decodes to None, as an absent one reads.
    message = Submit(**BASES[Submit], payload=Encoded(b"\xf6"))
    assert to_wire(message)[ENCODED_KEY] == b"\xf6"
    assert decode(encode(message), decode_payloads=False) == message
    assert decode(encode(message)).payload is None
    assert decode(encode(message)) == Submit(**BASES[Submit])


# ---------------------------------------------------------------------------------------
# 4. The FrameDecoder: payloads decoded, or kept encoded


def test_frame_decoder_decodes_payloads_by_default() -> None:
    assert FrameDecoder().decode_payloads is True
    assert FrameDecoder(decode_payloads=False).decode_payloads is False


@settings(max_examples=80)  # each example decodes up to 8 messages 4 times, in pieces
@given(st.lists(sts.messages(), min_size=1, max_size=8), st.booleans(), st.data())
def test_frame_decoder_in_both_modes(
    messages: list[Message], bundled: bool, data: st.DataObject
) -> None:
    if bundled:
        stream = b"".join(bundle_frames([encode_item(m) for m in messages], BIG))
    else:
        stream = b"".join(encode(m) for m in messages)
    pieces = data.draw(sts.chunked(stream, max_chunks=6))
    decoded, error = feed_all(FrameDecoder(), pieces)
    assert error is None
    assert decoded == messages
    kept, error = feed_all(FrameDecoder(decode_payloads=False), pieces)
    assert error is None
    assert kept == [sts.with_encoded_payload(m) for m in messages]
    assert [sts.with_decoded_payload(m) for m in kept] == messages
    for message in kept:
        payload = getattr(message, "payload", None)
        assert payload is None or type(payload) is Encoded


def _bad_payload_submit(mid: int, data: bytes = b"\xff") -> dict[str, Any]:
    return {"t": Submit.KIND, "i": mid, "j": "j", "s": "a.b", ENCODED_KEY: data}


def test_a_bad_payload_fails_only_its_frame_in_decode_mode() -> None:
    first = Submit(mid=1, job_id="j", subject="a.b", payload={"n": 1})
    second = Result(mid=2, cid=1, job_id="j", payload=[1, 2])
    after = Publish(mid=5, subject="a.b", payload="x")
    stream = (
        encode(first)
        + frame_of(cbor2.dumps([to_array(second), [Submit.KIND, 3, "j", "a.b", b"\xff"], [15, 4]]))
        + encode(after)
    )
    decoder = FrameDecoder()
    with pytest.raises(InvalidPayload, match="break code") as info:
        decoder.feed(stream)
    # The messages before the bad one, payloads decoded; nothing from it on.
    assert info.value.messages == [first, second]
    with pytest.raises(InvalidPayload, match="decoder failed earlier") as again:
        decoder.feed(encode(Ping(mid=9)))
    assert again.value.messages == []
    # Kept encoded, the same stream is fine: the receiver decides what a bad payload fails.
    kept = FrameDecoder(decode_payloads=False).feed(stream)
    assert [type(m) for m in kept] == [Submit, Result, Submit, Ping, Publish]
    assert kept[2].payload == Encoded(b"\xff")
    with pytest.raises(InvalidPayload):
        decode_payload(kept[2].payload)
    assert [decode_payload(m.payload) for m in (kept[0], kept[1], kept[4])] == [
        {"n": 1},
        [1, 2],
        "x",
    ]


def test_messages_before_a_bad_frame_come_out_decoded() -> None:
    first = Submit(mid=1, job_id="j", subject="a.b", payload={"n": 1})
    second = Result(mid=2, cid=1, job_id="j", payload=[1, 2])
    bad_field = map_frame({"t": Submit.KIND, "i": 3, "j": 5, "s": "a.b"})
    bad_subject = frame_of(cbor2.dumps([to_array(second), [3, 3, "j", "a..b"]]))
    for bad, exc, before in (
        (bad_field, InvalidField, [first, second]),
        (bad_subject, InvalidSubject, [first, second, second]),
    ):
        stream = encode(first) + encode(second) + bad
        with pytest.raises(ProtocolError) as info:
            FrameDecoder().feed(stream)
        assert type(info.value) is exc
        assert info.value.messages == before  # decoded: no Encoded handed out
        with pytest.raises(ProtocolError) as info:
            FrameDecoder(decode_payloads=False).feed(stream)
        assert type(info.value) is exc
        assert info.value.messages == [sts.with_encoded_payload(m) for m in before]


def test_payloads_sent_plain_before_a_bad_frame_come_out_as_asked() -> None:
    plain = map_frame({"t": Submit.KIND, "i": 1, "j": "j", "s": "a.b", "p": [1, 2]})
    bad = map_frame({"t": Submit.KIND, "i": 2, "j": 5, "s": "a.b"})
    for decode_payloads, payload in ((True, [1, 2]), (False, Encoded(cbor2.dumps([1, 2])))):
        assert decode(plain, decode_payloads=decode_payloads).payload == payload
        with pytest.raises(InvalidField) as info:
            FrameDecoder(decode_payloads=decode_payloads).feed(plain + bad)
        (first,) = info.value.messages
        assert first.payload == payload  # kept encoded: encoded, as without the bad frame


def test_a_bad_payload_before_a_bad_frame_is_the_error() -> None:
    # In stream order the bad payload comes first: it is the error, and only the messages
    # before it come out.
    first = Publish(mid=1, subject="a.b", payload=1)
    stream = (
        encode(first)
        + map_frame(_bad_payload_submit(2, b"\x01\x02"))
        + map_frame({"t": Submit.KIND, "i": 3, "j": 5, "s": "a.b"})
    )
    with pytest.raises(ProtocolError) as info:
        FrameDecoder().feed(stream)
    assert type(info.value) is InvalidPayload
    assert "trailing data" in info.value.message
    assert info.value.messages == [first]
    with pytest.raises(ProtocolError) as info:
        FrameDecoder(decode_payloads=False).feed(stream)
    assert type(info.value) is InvalidField
    assert [m.mid for m in info.value.messages] == [1, 2]


@settings(max_examples=60)  # each example decodes two message lists in every mode, in pieces
@given(st.lists(sts.messages(), max_size=5), st.lists(sts.messages(), max_size=5), st.data())
def test_a_bad_payload_cut_anywhere(
    first: list[Message], second: list[Message], data: st.DataObject
) -> None:
    """However the bytes arrive, exactly the messages before the bad payload come out once."""
    bad = data.draw(st.sampled_from([b"", b"\xff", b"\x82\x01", b"\x01\x02", b"\xc2\x01"]))
    stream = (
        b"".join(encode(m) for m in first)
        + frame_of(cbor2.dumps([*map(to_array, second), [3, 1, "j", "a.b", bad], [15, 1]]))
        + encode(Ping(mid=2))
    )
    pieces = data.draw(sts.chunked(stream, max_chunks=8))
    received, error = feed_all(FrameDecoder(), pieces)
    assert type(error) is InvalidPayload
    assert received == [*first, *second]
    kept, error = feed_all(FrameDecoder(decode_payloads=False), pieces)
    assert error is None
    assert kept[: len(first) + len(second)] == [
        sts.with_encoded_payload(m) for m in [*first, *second]
    ]
    assert kept[len(first) + len(second)].payload == Encoded(bad)
    assert kept[-2:] == [Ping(mid=1), Ping(mid=2)]


@st.composite
def payload_frames(draw: st.DrawFn) -> bytes:
    """A frame of one to three valid messages of the kinds with a payload (a map, or a
    bundle), whose payloads are mostly hostile: encoded (:data:`sts.hostile_payloads`
    under key "e" or in the bundled place) or, in a map, sent plain."""
    bundled = draw(st.booleans())
    items: list[Any] = []
    for _ in range(draw(st.integers(1, 3)) if bundled else 1):
        message = draw(payload_messages)
        fields = attrs.fields(type(message))
        if bundled:
            item: Any = [
                message.KIND,
                *(sts.wire_value(f, getattr(message, f.name)) for f in fields),
            ]
            if draw(st.integers(0, 3)):
                item[[f.name for f in fields].index("payload") + 1] = draw(sts.hostile_payloads)
        else:
            item = dict(to_wire(message))
            how = draw(st.sampled_from(["encoded", "encoded", "plain", "as is"]))
            if how == "encoded":
                item[ENCODED_KEY] = draw(sts.hostile_payloads)
            elif how == "plain":
                item.pop(ENCODED_KEY, None)
                item["p"] = draw(sts.hostile_values)
        items.append(item)
    return frame_of(cbor_body(items if bundled else items[0]))


def _canonical(message: Message) -> bytes:
    fields = [getattr(message, f.name) for f in attrs.fields(type(message))]
    return cbor2.dumps([message.KIND, *fields], canonical=True)


# A fuzzer (cheap examples, a wide input space); hostile frames are large by design.
@settings(
    max_examples=200,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
    ],
)
@given(st.lists(st.one_of(payload_frames(), sts.hostile_frames()), min_size=1, max_size=4))
def test_decode_mode_is_keep_mode_then_decode_payload(frames: list[bytes]) -> None:
    """For any stream, decoding payloads in the decoder is the same as keeping them
    encoded and decoding each in turn: the same messages up to the first bad payload,
    which is then the error (or else the same error, or none)."""
    stream = b"".join(frames)

    def run(decode_payloads: bool) -> tuple[list[Message], ProtocolError | None]:
        try:
            return FrameDecoder(decode_payloads=decode_payloads).feed(stream), None
        except ProtocolError as exc:
            return exc.messages, exc

    decoded, error = run(True)
    kept, kept_error = run(False)
    expected: list[Message] = []
    expected_error = kept_error
    for message in kept:
        try:
            expected.append(sts.with_decoded_payload(message))
        except InvalidPayload as exc:
            expected_error = exc
            break
    # Compared by canonical encoding: a payload may hold NaN, which is != itself, or a set
    # (tag 258), whose order may change when it is rebuilt from its own encoding.
    assert [_canonical(m) for m in decoded] == [_canonical(m) for m in expected]
    if expected_error is None:
        assert error is None
        event("accepted")
    else:
        assert type(error) is type(expected_error)
        assert error.message == expected_error.message
        event(type(error).__name__)


# ---------------------------------------------------------------------------------------
# 5. A leader's forward: payloads kept encoded, re-sent byte for byte


@given(
    st.one_of(
        sts.payloads.map(encode_payload),
        sts.payloads.map(encode_payload),
        st.binary(max_size=40),  # not CBOR at all: forwarded all the same
        st.sampled_from([cbor2.dumps(nested(MAX_DEPTH + 1)), cbor2.dumps(10**3000)]),
    ),
    st.booleans(),
)
def test_a_leader_forwards_payload_bytes_unchanged(data: bytes, bundled: bool) -> None:
    # The client's Submit, encoded by hand: its payload field holds exactly ``data``.
    submit_wire = {"t": Submit.KIND, "i": 5, "j": "job", "s": "a.b", ENCODED_KEY: data, "q": 0}
    client_frame = (
        frame_of(cbor2.dumps([[Submit.KIND, 5, "job", "a.b", data, {}, 0]]))
        if bundled
        else map_frame(submit_wire)
    )
    # The leader keeps it encoded ...
    (submit,) = FrameDecoder(decode_payloads=False).feed(client_frame)
    assert submit.payload == Encoded(data)
    # ... and forwards it to a worker as an Assign: built unchecked, or as a bundle item.
    assign = Assign.unchecked(
        mid=9, job_id=submit.job_id, subject=submit.subject, payload=submit.payload, qos=0
    )
    item = Assign.item(mid=9, job_id="job", subject="a.b", payload=submit.payload, qos=0)
    assert item == to_array(assign)
    received = submit.payload.data
    assert item[4] is received  # the very bytes object: no copy, no re-encoding
    assert to_wire(assign)[ENCODED_KEY] is received
    (bundle,) = bundle_frames([protocol.encode_array(item)], BIG)
    for frame in (encode(assign), bundle):
        assert cbor2.loads(frame[5:])  # well-formed CBOR around the payload's bytes
        # A leader further on (or a journal) gets the same bytes again.
        again = decode(frame, decode_payloads=False)
        assert again == assign and again.payload.data == data
        assert encode(again) == encode(assign)
        # The worker decodes them: the client's value, or this payload's failure only.
        try:
            value = decode_payload(Encoded(data))
        except InvalidPayload as exc:
            failure = exc.message
        else:
            failure = None
        if failure is not None:
            with pytest.raises(InvalidPayload) as info:
                decode(frame)
            assert info.value.message == failure
            event("bad payload forwarded")
        else:
            got = decode(frame)
            assert encode_payload(got.payload) == encode_payload(value)
            event("payload forwarded")
    # The worker's Result goes back to the client the same way.
    result_frame = encode(Result(mid=3, cid=9, job_id="job", payload=Encoded(data)))
    (result,) = FrameDecoder(decode_payloads=False).feed(result_frame)
    to_client = Result.item(mid=4, cid=5, job_id="job", payload=result.payload)
    assert to_client[5] is result.payload.data
    assert message_of(cbor2.loads(protocol.encode_array(to_client))).payload == Encoded(data)


def test_a_leader_forwards_a_payload_sent_plain_encoded() -> None:
    value = {"n": [1, 2], "b": b"x"}
    frame = map_frame({"t": Submit.KIND, "i": 5, "j": "job", "s": "a.b", "p": value})
    (submit,) = FrameDecoder(decode_payloads=False).feed(frame)
    assert submit.payload == Encoded(encode_payload(value))  # encoded on receipt
    item = Assign.item(mid=9, job_id="job", subject="a.b", payload=submit.payload)
    assert item[4] is submit.payload.data
    (bundle,) = bundle_frames([protocol.encode_array(item)], BIG)
    assign = Assign.unchecked(mid=9, job_id="job", subject="a.b", payload=submit.payload)
    for sent in (bundle, encode(assign)):
        assert decode(sent).payload == value
        assert decode(sent, decode_payloads=False).payload == submit.payload


@given(payload_messages)
def test_forwarding_a_decoded_message_kept_encoded_is_byte_for_byte(message: Message) -> None:
    frame = encode(message)
    (bundle,) = bundle_frames([encode_item(message)], BIG)
    for sent in (frame, bundle):
        kept = decode(sent, decode_payloads=False)
        # Re-encoded as a map and as a bundle item: the same bytes as the original's.
        assert encode(kept) == frame
        assert encode_item(kept) == encode_item(message)
        # And the receiver at the end gets the value.
        assert decode(encode(kept)) == message
