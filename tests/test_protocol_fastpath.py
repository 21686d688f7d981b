"""The codec's fast path (generated per-class code, reused cbor2 objects) against the
generic reference implementation kept in ``protocol._codec``: the same bytes, the same
messages, the same exceptions with the same messages; and ``Message.unchecked``."""

from __future__ import annotations

import threading
import zlib

import attrs
import cbor2
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import protocol
from protocol import (
    MESSAGE_TYPES,
    Assign,
    CachePut,
    Credit,
    FrameDecoder,
    Hello,
    InvalidField,
    InvalidSubject,
    MalformedFrame,
    Message,
    ProtocolError,
    Result,
    Submit,
    _codec,
    _fields,
    decode_body,
    encode,
    encode_body,
    from_wire,
    to_wire,
)
from tests import strategies as sts
from tests.protocol_reference import (
    _reference_decode_body,
    _reference_encode_body,
    _reference_from_wire,
    _reference_to_wire,
)

KINDS = list(MESSAGE_TYPES.values())


def outcome(func, arg):
    """What ``func(arg)`` gives: ("ok", the message's encoding) or ("error", class, text)."""
    try:
        message = func(arg)
    except ProtocolError as exc:
        return ("error", type(exc), exc.message)
    # Compare encodings, not objects: a fuzzed payload may hold NaN, which is != itself.
    return ("ok", type(message), _reference_encode_body(message))


def fields_of(message: Message) -> dict:
    return {f.name: getattr(message, f.name) for f in attrs.fields(type(message))}


def required_fields(message: Message) -> dict:
    return {
        f.name: getattr(message, f.name)
        for f in attrs.fields(type(message))
        if f.default is attrs.NOTHING
    }


# ---------------------------------------------------------------------------------------
# Valid messages: the same wire maps, bytes and messages


@pytest.mark.parametrize("cls", KINDS, ids=lambda c: c.__name__)
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_fast_encode_and_decode_match_the_reference(cls: type, data: st.DataObject) -> None:
    message = data.draw(sts.MESSAGE_STRATEGIES[cls])
    wire = to_wire(message)
    reference = _reference_to_wire(message)
    assert wire == reference
    assert list(wire) == list(reference)  # the same key order, so the same bytes
    body = encode_body(message)
    assert body == _reference_encode_body(message) == cbor2.dumps(reference)
    # Both decoders keep the payload encoded: the bytes to_wire wrote.
    received = sts.with_encoded_payload(message)
    assert decode_body(body) == _reference_decode_body(body) == received
    assert from_wire(cbor2.loads(body)) == _reference_from_wire(cbor2.loads(body)) == received
    assert sts.with_decoded_payload(received) == message
    # And both encoders write an Encoded payload as its own bytes.
    assert encode_body(received) == _reference_encode_body(received) == body
    assert to_wire(received) == _reference_to_wire(received) == wire


def test_to_wire_and_encode_body_refuse_non_messages() -> None:
    for thing in ({"t": 3}, None, Message()):
        with pytest.raises(TypeError, match="not a protocol message"):
            to_wire(thing)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="not a protocol message"):
            encode_body(thing)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------
# Bad wire maps and bad bodies: the same exception class and the same text

_odd = sts.odd_values  # (every CBOR type, valid for some fields and not others)


@st.composite
def bad_wires(draw: st.DrawFn) -> object:
    message = draw(sts.messages())
    wire = dict(_reference_to_wire(message))
    cls = type(message)
    keys = [f.metadata["key"] for f in attrs.fields(cls)]
    if "payload" in attrs.fields_dict(cls):
        keys.append("e")  # the encoded payload ("p" holds one sent plain)
    for _ in range(draw(st.integers(1, 4))):
        action = draw(
            st.sampled_from(["drop", "set", "set", "set", "add", "tag", "subject", "shape"])
        )
        if action == "subject":
            text = draw(
                st.sampled_from(
                    ["a..b", ".a", "a.", "a.>.b", "", "a b", "x\x00", "*", "a.>", "ok.x"]
                )
            )
            for key in ("s", "pat", "tgt"):
                if key in keys:
                    wire[key] = text
            if "pats" in keys:
                wire["pats"] = [text]
        elif action == "drop":
            wire.pop(draw(st.sampled_from(keys)), None)
        elif action == "set":
            wire[draw(st.sampled_from(keys))] = draw(_odd)
        elif action == "add":
            wire[draw(sts.texts)] = draw(_odd)
        elif action == "tag":
            wire["t"] = draw(st.one_of(st.sampled_from(list(MESSAGE_TYPES)), _odd))
        else:
            return draw(st.sampled_from([list(wire.items()), "map", 3, None, (1, 2)]))
    return wire


@settings(max_examples=800, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(bad_wires())
def test_from_wire_matches_the_reference_on_bad_maps(wire: object) -> None:
    fast = outcome(from_wire, wire)
    assert fast == outcome(_reference_from_wire, wire)
    event(fast[0] if fast[0] == "ok" else fast[1].__name__)


@pytest.mark.parametrize(
    "wire",
    [
        {"t": 3, "i": -1, "j": 5, "s": "a..b", "q": 7},  # several bad fields: the first one
        {"t": 3, "j": "", "s": "a"},  # a missing field beats a bad one
        {"t": 1, "i": 1, "role": "x", "v": "12", "pats": ["a.."]},  # converter before validator
        {"t": 1, "i": 1, "role": "worker", "pats": ["ok", "a..b"]},
        {"t": 20, "i": 1, "cache": "c", "tgt": "a", "e": [["a", "b"]], "sha": {"k": 1}},
        {"t": 3, "i": 1, "j": "j", "s": "a", "h": {"k": "v", "n": 1}},
        {"t": 3, "i": 1, "j": "j", "s": "a", "h": None},
        {"t": 3, "i": 1, "j": "j", "s": "a", "to": 2**60},  # an int no float holds exactly
        {"t": 3, "i": 1, "j": "j", "s": "a", "to": 10**400},
        {"t": 7, "i": 1, "j": "j", "f": True},
        {"t": 8, "i": 1, "j": "j", "ok": 1},
        {"t": 22, "i": 1, "x": "x", "n": 0, "d": bytearray(b"x")},
        {"t": 2, "i": 1, "v": 1, "hb": -0.0, "mf": None},
        # Payloads: encoded (key "e"), a byte string (kept encoded, even if it is no CBOR)
        # or null, else refused; or plain (key "p"), any value; not both.
        {"t": 3, "i": 1, "j": "j", "s": "a", "e": b"\xff\xff"},
        {"t": 3, "i": 1, "j": "j", "s": "a", "e": None},
        {"t": 3, "i": 1, "j": "j", "s": "a", "e": None, "p": [1]},
        {"t": 3, "i": 1, "j": "j", "s": "a", "e": [1]},
        {"t": 3, "i": 1, "j": "j", "s": "a", "e": bytearray(b"\x01")},
        {"t": 3, "i": -1, "j": "j", "s": "a", "e": 5},  # a bad payload and a bad mid
        {"t": 8, "i": 1, "j": "j", "ok": 1, "e": "x"},
        {"t": 3, "i": 1, "j": "j", "s": "a", "p": [1]},
        {"t": 3, "i": 1, "j": "j", "s": "a", "p": b"\x01"},  # plain bytes: a bytes value
        {"t": 3, "i": 1, "j": "j", "s": "a", "p": 1, "e": b"\x01"},
        {"t": 3, "i": 1, "j": "j", "s": "a", "p": None, "e": b"\x01"},
        {"t": 3, "i": -1, "j": "j", "s": "a", "p": 1, "e": b"\x01"},
    ],
)
def test_from_wire_matches_the_reference_on_chosen_maps(wire: dict) -> None:
    assert outcome(from_wire, wire) == outcome(_reference_from_wire, wire)


def test_error_texts_are_those_of_the_validators() -> None:
    with pytest.raises(InvalidField, match=r"^bad Submit: Submit.mid must be >= 0, got -1$"):
        from_wire({"t": 3, "i": -1, "j": "j", "s": "a"})
    with pytest.raises(InvalidField, match=r"^bad Hello: expected a list, got str$"):
        from_wire({"t": 1, "i": 1, "role": "worker", "v": "1"})
    with pytest.raises(InvalidSubject, match=r"invalid subject 'a\.\.b': empty token"):
        from_wire({"t": 4, "i": 1, "j": "j", "s": "a..b"})


_good_bodies = sts.messages().map(_reference_encode_body)


@st.composite
def bad_bodies(draw: st.DrawFn) -> bytes:
    body = bytearray(draw(_good_bodies))
    for _ in range(draw(st.integers(1, 3))):
        if not body:
            break
        at = draw(st.integers(0, len(body) - 1))
        kind = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate", "append"]))
        if kind == "flip":
            body[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "set":
            body[at] = draw(st.sampled_from([0x00, 0x18, 0x1B, 0x5F, 0x9F, 0xBF, 0xD8, 0xF7, 0xFF]))
        elif kind == "insert":
            body[at:at] = draw(st.binary(min_size=1, max_size=4))
        elif kind == "delete":
            del body[at : at + draw(st.integers(1, 4))]
        elif kind == "truncate":
            del body[at:]
        else:
            body += draw(st.binary(min_size=1, max_size=3))
    return bytes(body)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(bad_bodies(), _good_bodies, st.binary(max_size=40)), max_size=5))
def test_decode_body_matches_the_reference_on_any_bytes(bodies: list[bytes]) -> None:
    # Several in a row, so that pooled decoders are reused after good and bad bodies.
    for body in bodies:
        fast = outcome(decode_body, body)
        assert fast == outcome(_reference_decode_body, body)
        event(fast[0] if fast[0] == "ok" else fast[1].__name__)


@pytest.mark.parametrize(
    "bad",
    [
        b"\xd8\x1c\x81\x00",  # refused tag, mid-item
        b"\xa2\x61t\x03\x61i",  # truncated
        cbor2.dumps({"t": 15, "i": 1}) + b"\x00\x00",  # trailing bytes
        b"\x81" * 100 + b"\x00",  # too deep
        b"\xa5\x61t\x03\x61i\x01\x61i\x02\x61j\x61j\x61s\x61a",  # duplicate key
    ],
)
def test_a_failed_decode_leaves_no_state_behind(bad: bytes) -> None:
    good = encode_body(Submit(mid=1, job_id="j", subject="a.b", payload=list(range(30))))
    for _ in range(3):
        with pytest.raises(MalformedFrame):
            decode_body(bad)
        assert decode_body(good) == _reference_decode_body(good)


def test_large_bodies_and_other_buffer_types() -> None:
    message = Submit(mid=1, job_id="j", subject="a", payload=b"x" * (_codec.POOLED_BODY_LIMIT + 10))
    body = encode_body(message)
    received = sts.with_encoded_payload(message)
    assert decode_body(body) == received
    assert decode_body(bytearray(body)) == received
    assert decode_body(memoryview(body)) == received
    assert protocol.decode_payload(decode_body(memoryview(body)).payload) == message.payload
    with pytest.raises(MalformedFrame, match="1 bytes of trailing data"):
        decode_body(body + b"\x00")
    small = encode_body(Credit(mid=1, credit=2))
    assert decode_body(bytearray(small)) == Credit(mid=1, credit=2)


def test_a_failed_encode_leaves_no_state_behind() -> None:
    good = Result(mid=1, job_id="j", payload={"a": [1, 2, {"b": b"c"}]})
    for _ in range(3):
        with pytest.raises(ValueError, match="cannot encode the payload"):
            encode_body(Submit(mid=1, job_id="j", subject="a", payload=[1, {"x": object()}]))
        assert encode_body(good) == _reference_encode_body(good)
        with pytest.raises(ValueError, match="cannot encode Hello"):
            encode_body(Hello(mid=1, role="client", meta={"x": object()}))
        assert encode_body(good) == _reference_encode_body(good)


def test_threads_share_no_encoder_or_decoder() -> None:
    messages = [
        Submit(mid=i, job_id=f"j{i}", subject="a.b", payload={"n": list(range(i % 7))})
        for i in range(200)
    ]
    frames = [encode(m) for m in messages]
    failures: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(5):
                assert [encode(m) for m in messages] == frames
                assert FrameDecoder().feed(b"".join(frames)) == messages
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures


# ---------------------------------------------------------------------------------------
# The subject cache


def test_only_valid_subjects_are_remembered() -> None:
    for bad in ("a..b", "a.*", "x y"):
        with pytest.raises(InvalidSubject):
            from_wire({"t": 3, "i": 1, "j": "j", "s": bad})
        assert bad not in _fields.SUBJECTS_OK
    from_wire({"t": 3, "i": 1, "j": "j", "s": "fresh.subject"})
    assert "fresh.subject" in _fields.SUBJECTS_OK
    # The validating constructor shares the cache, and refuses bad subjects all the same.
    Submit(mid=1, job_id="j", subject="built.subject")
    assert "built.subject" in _fields.SUBJECTS_OK
    for bad in ("a..b", "a.*", "x y", ""):
        with pytest.raises(InvalidSubject):
            Submit(mid=1, job_id="j", subject=bad)
        assert bad not in _fields.SUBJECTS_OK


def test_the_subject_cache_is_bounded() -> None:
    for i in range(_fields.SUBJECTS_OK_LIMIT + 10):
        assert from_wire({"t": 3, "i": 1, "j": "j", "s": f"s.{i}"}).subject == f"s.{i}"
    assert len(_fields.SUBJECTS_OK) <= _fields.SUBJECTS_OK_LIMIT


# ---------------------------------------------------------------------------------------
# Message.unchecked


@pytest.mark.parametrize("cls", KINDS, ids=lambda c: c.__name__)
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_unchecked_builds_what_the_constructor_builds(cls: type, data: st.DataObject) -> None:
    message = data.draw(sts.MESSAGE_STRATEGIES[cls])
    full = fields_of(message)
    assert cls.unchecked(**full) == cls(**full) == message
    required = required_fields(message)
    assert cls.unchecked(**required) == cls(**required)


def test_unchecked_defaults_are_fresh_and_converters_apply() -> None:
    a = Submit.unchecked(mid=1, job_id="j", subject="a")
    b = Submit.unchecked(mid=1, job_id="j", subject="a")
    assert a.headers == {} and a.headers is not b.headers
    assert Hello.unchecked(mid=1, role="worker", versions=[1, 2]).versions == (1, 2)
    entries = CachePut.unchecked(mid=1, cache_id="c", target="a", entries=[["n", b"x"]]).entries
    assert entries == (("n", b"x"),)


def test_unchecked_checks_nothing() -> None:
    message = Assign.unchecked(mid=-1, job_id="", subject="not..valid", attempt=0)
    assert message.mid == -1 and message.subject == "not..valid"
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        message.mid = 2  # type: ignore[misc]
    with pytest.raises(ValueError, match=r"^Assign\.mid must be >= 0, got -1$"):
        Assign(mid=-1, job_id="", subject="not..valid", attempt=0)  # the constructor does


def test_unchecked_from_a_decoded_submit() -> None:
    """The leader's use: an Assign from a decoded Submit, a Result forwarded."""
    submit = decode_body(
        encode_body(
            Submit(mid=5, job_id="j", subject="a.b", payload=[1], headers={"k": "v"}, qos=0)
        )
    )
    assign = Assign.unchecked(
        mid=9,
        job_id=submit.job_id,
        subject=submit.subject,
        payload=submit.payload,
        headers=submit.headers,
        attempt=1,
        qos=submit.qos,
        ack_timeout=30.0,
    )
    # The payload is forwarded as it came: still encoded, the same bytes.
    assert submit.payload == protocol.Encoded(cbor2.dumps([1]))
    assert assign == Assign(
        mid=9,
        job_id="j",
        subject="a.b",
        payload=protocol.Encoded.of([1]),
        headers={"k": "v"},
        qos=0,
        ack_timeout=30.0,
    )
    assert to_wire(assign)["e"] == cbor2.dumps([1])
    assert decode_body(encode_body(assign)) == assign
    # The worker decodes it.
    assert protocol.decode(encode(assign)) == Assign(
        mid=9, job_id="j", subject="a.b", payload=[1], headers={"k": "v"}, qos=0, ack_timeout=30.0
    )


def test_unchecked_wants_the_required_fields_and_no_others() -> None:
    with pytest.raises(TypeError, match=r"Credit.unchecked\(\) missing argument 'credit'"):
        Credit.unchecked(mid=1)
    with pytest.raises(TypeError, match=r"Credit.unchecked\(\) got unexpected \['extra'\]"):
        Credit.unchecked(mid=1, credit=1, extra=2)


# ---------------------------------------------------------------------------------------
# Framing: the feed loop over bytes, bytearray and memoryview, compressed or not


@settings(max_examples=100, deadline=None)
@given(
    st.lists(sts.messages(), max_size=6), st.sampled_from([bytes, bytearray, memoryview]), st.data()
)
def test_feed_any_buffer_type(messages: list[Message], kind: type, data: st.DataObject) -> None:
    stream = b"".join(
        encode(m, compress_threshold=data.draw(st.sampled_from([None, 0]))) for m in messages
    )
    pieces = data.draw(sts.chunked(stream, max_chunks=5))
    decoder = FrameDecoder()
    out: list[Message] = []
    for piece in pieces:
        out.extend(decoder.feed(kind(piece)))
    assert [encode(m) for m in out] == [encode(m) for m in messages]
    assert decoder.buffered == 0


def test_compressed_frame_between_plain_ones() -> None:
    big = Submit(mid=2, job_id="j", subject="a", payload="x" * 5000)
    frames = (
        encode(Credit(mid=1, credit=1))
        + encode(big, compress_threshold=100)
        + encode(Credit(mid=3, credit=0))
    )
    assert frames[5 + len(encode_body(Credit(mid=1, credit=1))) + 4] == protocol.FLAG_COMPRESSED
    assert FrameDecoder().feed(frames) == [Credit(mid=1, credit=1), big, Credit(mid=3, credit=0)]
    assert zlib.decompress(encode(big, compress_threshold=100)[5:]) == encode_body(big)


def test_a_large_frame_in_small_pieces() -> None:
    """Buffered bytes are only joined once the frame is complete (no copy per piece)."""
    big = Submit(mid=1, job_id="j", subject="a", payload=b"x" * (1 << 20))
    stream = encode(big) + encode(Credit(mid=2, credit=1))
    decoder = FrameDecoder()
    out: list[Message] = []
    for i in range(0, len(stream), 4096):
        out.extend(decoder.feed(stream[i : i + 4096]))
        assert decoder.buffered == (0 if out and len(out) == 2 else decoder.buffered)
    assert out == [big, Credit(mid=2, credit=1)]
    assert decoder.buffered == 0


def test_a_bad_header_behind_buffered_bytes_is_still_refused_at_once() -> None:
    decoder = FrameDecoder(max_frame_size=100)
    assert decoder.feed(b"\x00\x00") == []
    with pytest.raises(protocol.FrameTooLarge):
        decoder.feed(b"\x01\x00\x00")  # the header now announces 65,536 bytes
    assert decoder.buffered == 0
    decoder = FrameDecoder()
    assert decoder.feed(b"\x00\x00\x00") == []
    with pytest.raises(MalformedFrame, match="unknown frame flags"):
        decoder.feed(b"\x09\x80")


# ---------------------------------------------------------------------------------------
# Message.checked: the validating constructor, faster


def _built_by(func, kwargs: dict):
    """What ``func(**kwargs)`` gives: ("ok", encoding) or ("error", class, text)."""
    try:
        message = func(**kwargs)
    except (TypeError, ValueError) as exc:
        # Python names the function in argument errors: "Submit.checked() missing ...".
        text = str(exc).replace(".checked()", "()").replace(".__init__()", "()")
        return ("error", type(exc), text)
    return ("ok", type(message), _reference_encode_body(message))


def _kwargs_of(wire: dict) -> tuple[type, dict] | None:
    """The class and constructor arguments that a (possibly bad) wire map stands for."""
    cls = MESSAGE_TYPES.get(wire.get("t")) if type(wire.get("t")) is int else None
    if cls is None:
        return None
    by_key = {f.metadata["key"]: f.name for f in attrs.fields(cls)}
    return cls, {by_key.get(k, k): v for k, v in wire.items() if k != "t"}


@pytest.mark.parametrize("cls", KINDS, ids=lambda c: c.__name__)
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_checked_builds_what_the_constructor_builds(cls: type, data: st.DataObject) -> None:
    message = data.draw(sts.MESSAGE_STRATEGIES[cls])
    full = fields_of(message)
    assert cls.checked(**full) == cls(**full) == message
    required = required_fields(message)
    assert cls.checked(**required) == cls(**required)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(bad_wires())
def test_checked_raises_what_the_constructor_raises(wire: object) -> None:
    found = _kwargs_of(wire) if type(wire) is dict else None
    if found is None:
        return
    cls, kwargs = found
    assert _built_by(cls.checked, kwargs) == _built_by(cls, kwargs)


def test_checked_error_texts_and_fresh_defaults() -> None:
    with pytest.raises(ValueError, match=r"^Submit.mid must be >= 0, got -1$"):
        Submit.checked(mid=-1, job_id="j", subject="a")
    with pytest.raises(InvalidSubject):
        Submit.checked(mid=1, job_id="j", subject="a..b")
    with pytest.raises(TypeError, match=r"Submit\.headers"):
        Submit.checked(mid=1, job_id="j", subject="a", headers={"k": 1})
    a, b = (
        Submit.checked(mid=1, job_id="j", subject="a"),
        Submit.checked(mid=1, job_id="j", subject="a"),
    )
    assert a.headers == {} and a.headers is not b.headers
    assert Hello.checked(mid=1, role="worker", versions=[1, 2]).versions == (1, 2)
