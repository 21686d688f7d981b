"""One Deliver for many subscriptions of one connection (``Deliver.also``), end to end: a
real :class:`actors.Client` with overlapping subscriptions gets a published message on each
of them, once; raw peers of protocol versions 1 and 2 see the one Deliver the leader sends;
and the client hands a Deliver to each subscription it names (sans-I/O)."""

from __future__ import annotations

from contextlib import AsyncExitStack

import cbor2
import pytest
import trio

import actors
import protocol
from actors import Client, Leader
from actors.client._subscription import Subscription
from actors.leader import _pubsub
from protocol import Deliver, Encoded

from .test_leader_hostile import RawPeer


async def _leader(nursery: trio.Nursery) -> str:
    leader = Leader(listen=["tcp://127.0.0.1:0"], heartbeat=None)
    (url,) = await nursery.start(leader.run)
    return url


@pytest.mark.e2e
async def test_a_client_gets_a_message_once_on_each_of_40_overlapping_subscriptions(
    nursery: trio.Nursery,
) -> None:
    url = await _leader(nursery)
    with trio.fail_after(20):
        async with Client.connect(url) as client, AsyncExitStack() as stack:
            wide = [await stack.enter_async_context(client.subscribe("news.>")) for _ in range(20)]
            narrow = [
                await stack.enter_async_context(client.subscribe("news.*")) for _ in range(20)
            ]
            # qos 1: acked once routed, after the Subscribes sent before it took effect.
            await client.publish("news.x", {"n": 1}, qos=1)
            await client.publish("news.a.b", {"n": 2}, qos=1)  # "news.>" only
            await client.publish("news.x", {"n": 3}, qos=1)
            for sub in wide:
                got = [(await sub.receive()).payload["n"] for _ in range(3)]
                assert got == [1, 2, 3]  # each once, in order: no second copy of 1 before 2
            firsts = []
            for sub in narrow:
                first, second = await sub.receive(), await sub.receive()
                assert (first.subject, first.payload, second.payload) == (
                    "news.x",
                    {"n": 1},
                    {"n": 3},
                )
                firsts.append(first.payload)
            assert len({id(payload) for payload in firsts}) == 20  # each its own value
            assert all(sub.dropped == 0 for sub in wide + narrow)


@pytest.mark.e2e
@pytest.mark.parametrize("separate", [16, 0], ids=["a-deliver-each", "one-deliver-naming-all"])
@pytest.mark.parametrize("versions", [[1], [1, 2]])
async def test_a_peer_of_either_version_gets_each_subscription_named_once(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch, versions: list[int], separate: int
) -> None:
    """Up to SEPARATE_DELIVERS (16) subscriptions of a connection that a message is for
    get a Deliver each, as NATS sends them; past it, one Deliver names them all."""
    monkeypatch.setattr(_pubsub, "SEPARATE_DELIVERS", separate)
    url = await _leader(nursery)
    with trio.fail_after(20):
        async with RawPeer.connect(url) as peer:
            await peer.send(
                {"t": 1, "i": 0, "v": versions, "role": "client"},
                {"t": 11, "i": 1, "sid": 1, "pat": "a.>"},
                {"t": 11, "i": 2, "sid": 2, "pat": "a.*"},
                {"t": 11, "i": 3, "sid": 3, "pat": "a.b"},
                {"t": 11, "i": 4, "sid": 4, "pat": "a.b", "qg": "q"},
                {"t": 11, "i": 5, "sid": 5, "pat": "other"},
                {"t": 10, "i": 6, "s": "a.b", "p": "hi", "q": 1},  # acked after it is routed
            )
            got = []
            while not got or type(got[-1]) is not protocol.Ack:
                got.append(await peer.next_message())
    delivers = [m for m in got if type(m) is Deliver]
    assert len(delivers) == (4 if separate else 1)
    assert sorted(sid for d in delivers for sid in (d.sid, *d.also)) == [1, 2, 3, 4]
    assert all(d.payload == "hi" for d in delivers)


async def test_the_client_hands_a_deliver_to_each_subscription_it_names() -> None:
    client = Client("tcp://127.0.0.1:1")
    subs = {sid: Subscription(sid, ">", None, max_pending=2) for sid in (5, 6, 7)}
    client._subs._by_sid.update(subs)
    payload = Encoded(cbor2.dumps({"k": [1]}))
    # sid 4 and 99 are not (or no longer) the client's: ignored; 6 is named for itself.
    client._dispatch(
        Deliver(mid=1, sid=4, subject="a.b", payload=payload, headers={"h": "v"}, also=[6, 99, 5])
    )
    client._dispatch(
        Deliver(mid=2, sid=6, subject="a.b", payload=Encoded(cbor2.dumps(3)), also=[7])
    )
    client._dispatch(Deliver(mid=3, sid=6, subject="a.b", payload=Encoded(cbor2.dumps(4))))
    five = subs[5]._receive.receive_nowait()
    six = [subs[6]._receive.receive_nowait() for _ in range(2)]
    seven = subs[7]._receive.receive_nowait()
    assert five.payload == six[0].payload == {"k": [1]} and five.payload is not six[0].payload
    assert five.headers == six[0].headers == {"h": "v"} and five.headers is not six[0].headers
    assert six[1].payload == seven.payload == 3
    assert subs[6].dropped == 1  # its buffer (2) was full: the third is dropped, as before
    assert subs[5].dropped == subs[7].dropped == 0
    with pytest.raises(trio.WouldBlock):
        subs[7]._receive.receive_nowait()
    # A payload nobody can decode is dropped, for every subscription it named.
    client._dispatch(Deliver(mid=4, sid=5, subject="a.b", payload=Encoded(b"\x1c"), also=[7, 99]))
    assert client.bad_deliveries == 2


@pytest.mark.e2e
async def test_a_subscription_the_leader_refuses_raises_its_error_and_the_others_go_on(
    nursery: trio.Nursery,
) -> None:
    """Past max_subscriptions the leader answers the Subscribe ``not_permitted``: that
    subscription's receive raises it; the client and its other subscriptions go on."""
    leader = Leader(listen=["tcp://127.0.0.1:0"], max_subscriptions=2)
    (url,) = await nursery.start(leader.run)
    with trio.fail_after(20):
        async with Client.connect(url) as client, AsyncExitStack() as stack:
            first = await stack.enter_async_context(client.subscribe("a.>"))
            second = await stack.enter_async_context(client.subscribe("b.>"))
            third = await stack.enter_async_context(client.subscribe("c.>"))
            with pytest.raises(actors.RemoteError) as refused:
                await third.receive()
            assert refused.value.code == protocol.ErrorCode.NOT_PERMITTED
            assert third.error is refused.value
            with pytest.raises(actors.RemoteError):  # and stays so
                async for _ in third:
                    pass
            await client.publish("a.x", 1, qos=1)
            await client.publish("b.x", 2, qos=1)
            assert (await first.receive()).payload == 1
            assert (await second.receive()).payload == 2
            assert client.connects == 1
