"""Issue 2's list of messages and fields, item by item, against the message classes.

The issue names each message kind and what it carries; this module holds the code to that
list (with the Python name of each field), checks that every message has a ``mid`` and
every reply a ``cid``, and that any error raised for received bytes can go back to the peer
as an Error message carrying its code.
"""

from __future__ import annotations

import attrs
import cbor2
import pytest

import protocol
from protocol import (
    MESSAGE_TYPES,
    ROLES,
    ErrorCode,
    FrameDecoder,
    Hello,
    ProtocolError,
    Submit,
)

#: Each kind the issue names, with the fields it asks for (issue wording -> Python name):
#: Hello "protocol version" is ``versions`` (the versions offered; Welcome picks one);
#: Submit "deadline" is ``timeout`` (seconds, relative: peers share no clock);
#: Nack "retry delay" is ``delay``; Subscribe "queue group" is ``queue``; Result "error with
#: type and message" is ``error_type`` / ``error_message``; Error "the id it refers to" is
#: ``cid`` (and ``job_id`` for jobs).
ISSUE_FIELDS: dict[str, set[str]] = {
    "Hello": {"role", "name", "versions", "patterns", "credit", "token"},
    "Welcome": {"version"},
    "Submit": {"job_id", "subject", "payload", "headers", "qos", "timeout"},
    "Assign": {"job_id", "attempt", "subject", "payload", "headers"},
    "Ack": {"cid"},
    "Nack": {"delay", "reason"},
    "Progress": {"job_id", "fraction", "note"},
    "Result": {"job_id", "ok", "error_type", "error_message", "payload"},
    "Credit": {"credit"},
    "Publish": {"subject", "payload", "qos", "retain"},
    "Subscribe": {"pattern", "queue"},
    "Unsubscribe": {"sid"},
    "Deliver": {"subject", "payload"},
    "Cancel": {"job_id"},
    "Ping": set(),
    "Pong": {"cid"},
    "Error": {"code", "message", "cid"},
    "CachePut": set(),
    "CacheAck": set(),
    "Chunk": set(),
}
#: Kinds that answer another message, and so carry its ``mid`` as ``cid``.
REPLIES = {"Welcome", "Ack", "Nack", "Result", "Pong", "Error", "CacheAck"}
#: Wire tags kept free for the DAG workflow messages.
DAG_TAGS = range(30, 40)


def _fields(cls: type) -> set[str]:
    return {f.name for f in attrs.fields(cls)}


@pytest.mark.parametrize("name", sorted(ISSUE_FIELDS))
def test_every_named_kind_exists_with_its_fields(name: str) -> None:
    cls = getattr(protocol, name)
    assert cls in MESSAGE_TYPES.values()
    assert attrs.has(cls) and cls.__setattr__ is not object.__setattr__  # frozen attrs class
    assert ISSUE_FIELDS[name] <= _fields(cls), ISSUE_FIELDS[name] - _fields(cls)


@pytest.mark.parametrize("cls", list(MESSAGE_TYPES.values()), ids=lambda c: c.__name__)
def test_every_message_has_a_mid_and_every_reply_a_cid(cls: type) -> None:
    fields = attrs.fields_dict(cls)
    assert "mid" in fields and fields["mid"].default is attrs.NOTHING  # always required
    if cls.__name__ in REPLIES:
        assert "cid" in fields


def test_room_for_dag_messages() -> None:
    assert not set(DAG_TAGS) & set(MESSAGE_TYPES)


def test_hello_roles_and_version_negotiation() -> None:
    assert {"client", "worker", "leader", "observer"} == ROLES
    for role in sorted(ROLES):
        Hello(mid=1, role=role)
    with pytest.raises(ValueError, match="role"):
        Hello(mid=1, role="admin")
    hello = protocol.decode(protocol.encode(Hello(mid=1, role="client", versions=[1, 2, 7])))
    assert protocol.negotiate_version(hello.versions) == protocol.PROTOCOL_VERSION == 2
    # A peer that speaks only version 1 gets version 1 (and no bundles).
    assert protocol.negotiate_version([1, 7]) == 1
    # A Hello that names no versions offers version 1 (what senders before version 2 meant).
    assert Hello(mid=1, role="client").versions == (1,)
    with pytest.raises(protocol.UnsupportedVersion):
        protocol.negotiate_version([99])


def test_submit_is_validated_on_construction() -> None:
    with pytest.raises(ValueError, match="qos"):
        Submit(mid=1, job_id="j", subject="a", qos=2)
    with pytest.raises(protocol.InvalidSubject):
        Submit(mid=1, job_id="j", subject="a.*")
    with pytest.raises(TypeError, match="headers"):
        Submit(mid=1, job_id="j", subject="a", headers={"k": 1})


def test_payloads_are_arbitrary_cbor_values() -> None:
    payload = [None, True, -(2**70), 1.5, "text", b"\x00bytes", {"k": [1, {"n": b""}]}]
    message = Submit(mid=1, job_id="j", subject="a.b", payload=payload)
    assert protocol.decode(protocol.encode(message)) == message


def test_max_frame_size_default_and_configurable() -> None:
    assert protocol.DEFAULT_MAX_FRAME_SIZE == 16 * 1024 * 1024
    assert FrameDecoder().max_frame_size == protocol.DEFAULT_MAX_FRAME_SIZE
    frame = protocol.encode(Submit(mid=1, job_id="j", subject="a", payload=b"x" * 100))
    body = len(frame) - protocol.HEADER_SIZE
    assert len(FrameDecoder(max_frame_size=body).feed(frame)) == 1
    decoder = FrameDecoder(max_frame_size=body - 1)
    with pytest.raises(protocol.FrameTooLarge):
        decoder.feed(frame[: protocol.HEADER_SIZE])  # the header alone is enough to refuse
    assert decoder.buffered == 0


def test_compression_flag_per_frame() -> None:
    big = Submit(mid=1, job_id="j", subject="a", payload="z" * 10_000)
    small = Submit(mid=2, job_id="k", subject="a")
    packed = protocol.encode(big, compress_threshold=1024)
    plain = protocol.encode(small, compress_threshold=1024)
    assert packed[4] & protocol.FLAG_COMPRESSED and len(packed) < 1000
    assert plain[4] == 0
    assert FrameDecoder().feed(packed + plain) == [big, small]


BAD_INPUTS = [
    bytes([0xFF, 0xFF, 0xFF, 0xFF, 0]),  # oversize
    b"\x00\x00\x00\x01\x00\xff",  # not CBOR
    protocol.encode(protocol.Ping(mid=1))[:4] + b"\x04" + protocol.encode(protocol.Ping(mid=1))[5:],
    b"\x00\x00\x00\x05\x00\xa1\x61t\x18\x63",  # unknown kind 99
    b"\x00\x00\x00\x03\x00\xa1\x61t",  # truncated map: not CBOR
    b"\x00\x00\x00\x05\x00\xa2\x61t\x0f\x61i",  # truncated map inside the frame
    b"\x00\x00\x00\x04\x00\xa1\x61t\x0f",  # Ping without mid: missing field
    b"\x00\x00\x00\x07\x00\xa2\x61t\x0f\x61i\x61x",  # mid of the wrong type
]


@pytest.mark.parametrize("data", BAD_INPUTS)
def test_errors_for_received_bytes_go_back_as_error_messages(data: bytes) -> None:
    with pytest.raises(ProtocolError) as info:
        FrameDecoder().feed(data)
    error = info.value
    assert error.code in ErrorCode.CLOSING and error.message
    reply = protocol.Error(mid=1, code=error.code, message=error.message)
    assert protocol.decode(protocol.encode(reply)) == reply


@pytest.mark.parametrize(
    "value",
    [2**64, 2**8000, -(2**63) - 1, -(2**8000)],
    ids=["2^64", "2^8000", "-2^63-1", "-2^8000"],
)
def test_integer_fields_refuse_values_beyond_64_bits(value: int) -> None:
    # Integer fields hold what CBOR's plain integers hold; a bignum (up to MAX_BIGNUM_SIZE
    # bytes) decodes, and is then refused by the field.
    body = cbor2.dumps({"t": protocol.Ping.KIND, "i": value})
    with pytest.raises(protocol.InvalidField, match=r"Ping\.mid"):
        protocol.decode_body(body)
    with pytest.raises((TypeError, ValueError)):
        protocol.Ping(mid=value)
    body = cbor2.dumps({"t": protocol.Hello.KIND, "i": 0, "role": "client", "v": [1, value]})
    with pytest.raises(protocol.InvalidField, match=r"Hello\.versions"):
        protocol.decode_body(body)


@pytest.mark.parametrize("value", [10**5000, -(10**5000)], ids=["1e5000", "-1e5000"])
def test_bignums_beyond_the_limit_are_refused_anywhere(value: int) -> None:
    # A bignum of 2077 bytes would decode, and then repr() of the message would raise
    # (Python's 4300-digit limit): the decoder refuses it, in a field or in a payload.
    for wire in (
        {"t": protocol.Ping.KIND, "i": value},
        {"t": protocol.Submit.KIND, "i": 1, "j": "j", "s": "a", "p": [value]},
    ):
        with pytest.raises(protocol.MalformedFrame, match="bignum of 2077 bytes exceeds the limit"):
            protocol.decode_body(cbor2.dumps(wire))


def test_integer_fields_accept_the_64_bit_extremes() -> None:
    assert (
        protocol.decode_body(cbor2.dumps({"t": protocol.Ping.KIND, "i": 2**64 - 1})).mid
        == 2**64 - 1
    )
    hello = {"t": protocol.Hello.KIND, "i": 0, "role": "client", "v": [1, -(2**63)]}
    assert protocol.decode_body(cbor2.dumps(hello)).versions == (1, -(2**63))
