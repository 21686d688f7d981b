"""Writes over WebSocket are batched too: the frames queued together go out as that many
binary WebSocket messages in one ``send_all`` (each frame still one message)."""

from __future__ import annotations

import pytest
import trio
import trio.testing

import protocol
from protocol import Publish, Session, Welcome
from runtime._connection import Connection
from runtime._transports import running
from runtime._url import parse_url
from runtime._ws import WebSocketWire, client_wire, server_wire
from tests.test_transport import CountingStream


async def _ws_pair(nursery: trio.Nursery) -> tuple[WebSocketWire, WebSocketWire, CountingStream]:
    a, b = trio.testing.memory_stream_pair()
    counting = CountingStream(a)
    server: list[WebSocketWire] = []

    async def accept() -> None:
        server.append(await server_wire(nursery, b, max_frame_size=2**20))

    nursery.start_soon(accept)
    client = await client_wire(
        nursery, counting, parse_url("ws://127.0.0.1:1/"), max_frame_size=2**20
    )
    while not server:
        await trio.lowlevel.checkpoint()
    return client, server[0], counting


async def test_queued_frames_go_out_in_one_send_all_as_separate_messages(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            client_wire_, server_wire_, counting = await _ws_pair(nursery)
            assert client_wire_._batched
            conn = Connection(client_wire_, Session(side="client"), "ws://peer", "ws")
            welcome = Welcome(mid=0, version=1)
            conn.session.receive(welcome, 0.0)  # as if the handshake was done
            conn._welcomed(welcome)
            decoder = protocol.FrameDecoder()
            writes_before = counting.writes  # the opening handshake
            async with running(conn):
                for i in range(500):
                    conn.send_nowait(Publish(mid=conn.next_mid(), subject="a.b", payload=i))
                # The server side decodes one frame per WebSocket message (it refuses more).
                got = []
                while len(got) < 500:
                    data = await server_wire_.receive()
                    assert data is not None
                    messages = decoder.feed(data)
                    assert len(messages) == 1 and not decoder.buffered
                    got += messages
                assert [m.payload for m in got] == list(range(500))
                assert counting.writes - writes_before == 1
            nursery.cancel_scope.cancel()


async def test_without_the_internals_each_frame_is_sent_alone(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            client_wire_, server_wire_, counting = await _ws_pair(nursery)
            client_wire_._batched = False  # as with a trio-websocket release that lacks them
            writes_before = counting.writes
            frames = [bytes([0, 0, 0, 1, 0, 0xF6])] * 3  # any bytes: the wire does not look
            await client_wire_.send_frames(frames)
            for frame in frames:
                assert await server_wire_.receive() == frame
            assert counting.writes - writes_before == 3
            nursery.cancel_scope.cancel()


@pytest.mark.e2e
@pytest.mark.parametrize("internals", [True, False], ids=["batched", "public-api-only"])
async def test_a_cluster_over_websocket_works_with_and_without_the_internals(
    monkeypatch: pytest.MonkeyPatch, internals: bool
) -> None:
    """The same jobs, results and published messages over ws://, whether writes use
    trio-websocket's internals or only its public ``send_message`` (as with a release that
    renamed them, or ``ACTORS_WS_PUBLIC_ONLY=1``)."""
    import runtime._ws
    from actors import Client, Leader
    from actors.worker import WorkerRunner
    from tests.test_jobs_e2e import Echo

    monkeypatch.setattr(runtime._ws, "USE_INTERNALS", internals)
    leader = Leader(listen=["ws://127.0.0.1:0"])
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            (url,) = await nursery.start(leader.run)
            runner = WorkerRunner(Echo(), url, name="echo-ws")
            await nursery.start(runner.run)
            async with Client.connect(url) as client:
                assert client._conn is not None
                assert client._conn._wire._batched is internals
                got = [r async for r in client.map("echo.x", range(200), limit=50)]
                assert sorted(g["echo"] for g in got) == list(range(200))
                async with client.subscribe("news.>") as sub:
                    await client.publish("news.a", {"n": 1}, qos=1)
                    assert (await sub.receive()).payload == {"n": 1}
            nursery.cancel_scope.cancel()
