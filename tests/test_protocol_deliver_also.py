"""``Deliver.also``: the other subscriptions of the receiving connection one Deliver is for.

Round trips as a map and in a bundle, left out of the wire when empty, validated (a list of
uints, at most ``MAX_DELIVER_SIDS``) the same way by every path (the constructor, the
generated ``checked`` and decoders, the reference codec), and an :class:`Encoded` list in
a bundle item written as the list it encodes."""

from __future__ import annotations

import cbor2
import pytest
from hypothesis import given
from hypothesis import strategies as st

import protocol
from actors.leader._broker import BrokerConfig
from protocol import (
    MAX_DELIVER_SIDS,
    Deliver,
    Encoded,
    FrameDecoder,
    InvalidField,
    ProtocolError,
    bundle_frames,
    decode,
    decode_body,
    encode,
    encode_array,
    encode_item,
    from_wire,
    message_of,
    to_array,
    to_wire,
)
from tests import strategies as sts
from tests.protocol_reference import _reference_from_wire

delivers_to_many = st.builds(
    Deliver,
    mid=sts.mids,
    sid=sts.uints,
    subject=sts.subjects,
    payload=sts.payloads,
    headers=sts.headers,
    qos=st.sampled_from([0, 1]),
    retained=st.booleans(),
    also=st.lists(sts.uints, max_size=40),
)


@given(delivers_to_many)
def test_a_deliver_naming_several_sids_round_trips_as_a_map_and_in_a_bundle(
    message: Deliver,
) -> None:
    received = sts.with_encoded_payload(message)
    assert decode(encode(message), decode_payloads=False) == received
    assert decode_body(protocol.encode_body(message)) == received
    [frame] = bundle_frames([encode_item(message)], 1 << 24)
    assert FrameDecoder(decode_payloads=False).feed(frame) == [received]
    assert message_of(to_array(message)) == received
    assert type(received.also) is tuple and received.also == message.also


def test_also_is_left_out_of_the_wire_when_empty_and_keyed_ss_otherwise() -> None:
    one = Deliver(mid=1, sid=2, subject="a.b", payload=5)
    assert "ss" not in to_wire(one) and len(to_array(one)) == 5  # [13, mid, sid, s, payload]
    assert one.also == () and Deliver.item(mid=1, sid=2, subject="a.b", payload=5) == to_array(one)  # type: ignore[attr-defined]
    many = Deliver(mid=1, sid=2, subject="a.b", also=[3, 4])
    assert to_wire(many)["ss"] == (3, 4) and to_array(many)[-1] == (3, 4)
    assert many == Deliver(mid=1, sid=2, subject="a.b", also=(3, 4))  # a list is held as a tuple
    assert cbor2.loads(protocol.encode_body(many))["ss"] == [3, 4]


def test_an_encoded_list_in_a_bundle_item_is_written_as_the_list() -> None:
    sids = [0, 23, 24, 255, 256, 65_535, 65_536, 2**32 - 1, 2**32, 2**64 - 1]
    plain = Deliver.item(mid=9, sid=1, subject="a", payload=b"x", also=sids)  # type: ignore[attr-defined]
    spliced = Deliver.item(mid=9, sid=1, subject="a", payload=b"x", also=(0,))  # type: ignore[attr-defined]
    spliced[-1] = Encoded(cbor2.dumps(sids))
    assert encode_array(spliced) == encode_array(plain)
    # A peer of version 1 is sent the message the item stands for: the same sids.
    assert (
        message_of(spliced)
        == message_of(plain)
        == Deliver(mid=9, sid=1, subject="a", payload=Encoded(cbor2.dumps(b"x")), also=sids)
    )
    assert Deliver(mid=9, sid=1, subject="a", also=Encoded(cbor2.dumps(sids))).also == tuple(sids)


BAD_ALSO = [
    (5, r"Deliver\.also must be a list of subscription ids, got int"),
    ("12", r"Deliver\.also must be a list of subscription ids, got str"),
    ({"a": 1}, r"Deliver\.also must be a list of subscription ids, got dict"),
    (None, r"Deliver\.also must be a list of subscription ids, got NoneType"),
    ([1, "2"], r"Deliver\.also must be an int, got str"),
    ([1, True], r"Deliver\.also must be an int, got bool"),
    ([1.0], r"Deliver\.also must be an int, got float"),
    ([[1]], r"Deliver\.also must be an int, got list"),
    ([-1], r"Deliver\.also must be >= 0, got -1"),
    ([2**64], r"Deliver\.also must be between"),
    (Encoded(cbor2.dumps({"not": "a list"})), r"got Encoded"),
]


@pytest.mark.parametrize(("also", "error"), BAD_ALSO)
def test_a_bad_also_is_refused_alike_by_every_path(also: object, error: str) -> None:
    fields = {"mid": 1, "sid": 2, "subject": "a.b", "also": also}
    with pytest.raises((TypeError, ValueError), match=error):
        Deliver(**fields)  # type: ignore[arg-type]
    with pytest.raises((TypeError, ValueError), match=error):
        Deliver.checked(**fields)  # type: ignore[arg-type]
    if type(also) is Encoded:
        return  # (no wire holds one: a leader's own, in a bundle item)
    wire = {"t": Deliver.KIND, "i": 1, "sid": 2, "s": "a.b", "ss": also}
    with pytest.raises(InvalidField, match=error):
        from_wire(wire)
    with pytest.raises(InvalidField, match=error) as fast:
        message_of([Deliver.KIND, 1, 2, "a.b", None, {}, 0, False, also])
    with pytest.raises(ProtocolError) as reference:
        _reference_from_wire(wire)
    assert reference.value.message.removeprefix("bad Deliver: ") in fast.value.message


def test_also_holds_at_most_max_deliver_sids() -> None:
    assert BrokerConfig().max_subscriptions < MAX_DELIVER_SIDS  # one Deliver names them all
    full = Deliver(mid=1, sid=0, subject="a", also=list(range(1, MAX_DELIVER_SIDS + 1)))
    assert decode(encode(full)) == full
    over = {"t": Deliver.KIND, "i": 1, "sid": 0, "s": "a", "ss": list(range(MAX_DELIVER_SIDS + 1))}
    message = f"must hold at most {MAX_DELIVER_SIDS} subscription ids, got {MAX_DELIVER_SIDS + 1}"
    with pytest.raises(InvalidField, match=message):
        decode_body(cbor2.dumps(over))
    with pytest.raises(InvalidField, match=message):
        message_of([Deliver.KIND, 1, 0, "a", None, {}, 0, False, over["ss"]])
    with pytest.raises(ValueError, match=message):
        Deliver(mid=1, sid=0, subject="a", also=over["ss"])
