"""Heartbeats: idle connections ping, Ping gets Pong, a silent peer is declared dead.

Most tests run a real :class:`runtime.Connection` over an in-memory stream against a raw
peer that speaks frames by hand, under the autojump clock, and assert exact virtual times.
One test does the same over real loopback TCP.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable

import pytest
import trio
import trio.testing

import runtime
from protocol import Bye, Error, ErrorCode, Hello, Ping, Pong, Publish, Session, Welcome
from runtime._connection import Connection
from runtime._transports import client_handshake, running
from runtime._wire import StreamWire
from tests.helpers import RawPeer


def make_connection(
    stream: trio.abc.Stream, side: str, heartbeat: float | None, **kw
) -> Connection:
    return Connection(
        StreamWire(stream), Session(side=side, heartbeat=heartbeat), f"memory://{side}", "tcp", **kw
    )


async def open_server_side(peer: RawPeer, conn: Connection) -> None:
    """Hello from the raw peer, Welcome from the connection: the session is open."""
    await peer.send(Hello(mid=0, role="worker"))
    hello = await conn.receive()
    assert type(hello) is Hello
    conn.send_nowait(
        Welcome(mid=conn.next_mid(), cid=0, version=1, heartbeat=conn.session.heartbeat)
    )
    assert type(await peer.receive()) is Welcome


ServerSide = Callable[..., Awaitable[tuple[RawPeer, Connection]]]


@pytest.fixture
def now(autojump_clock: trio.testing.MockClock) -> Callable[[], float]:
    """Virtual seconds since the test began. (The test names ``autojump_clock`` too:
    pytest-trio runs a test under the clocks among its own arguments only.)"""
    start = autojump_clock.current_time()
    return lambda: autojump_clock.current_time() - start


@pytest.fixture
def server_side(nursery: trio.Nursery) -> ServerSide:
    """``await server_side(heartbeat, welcome=True, **connection_options)``: a running
    server-side connection over a memory stream and the raw peer at its other end, the
    session opened (Hello, Welcome) unless ``welcome=False``. It runs in the test's nursery
    until the test ends."""

    async def open_one(
        heartbeat: float | None, *, welcome: bool = True, **kw: object
    ) -> tuple[RawPeer, Connection]:
        local, remote = trio.testing.memory_stream_pair()
        peer = RawPeer(remote)
        conn = make_connection(local, "server", heartbeat=heartbeat, **kw)

        async def run(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            async with running(conn):
                task_status.started()
                await trio.sleep_forever()

        await nursery.start(run)
        if welcome:
            await open_server_side(peer, conn)
        return peer, conn

    return open_one


async def test_idle_server_pings_then_declares_silent_peer_dead(
    autojump_clock: trio.testing.MockClock, now: Callable[[], float], server_side: ServerSide
) -> None:
    with trio.fail_after(60):
        peer, conn = await server_side(heartbeat=1.0)
        assert now() == 0

        ping1 = await peer.receive()
        assert type(ping1) is Ping and now() == 1.0
        ping2 = await peer.receive()
        assert type(ping2) is Ping and now() == 2.0
        error = await peer.receive()
        assert now() == 3.0  # 3 silent intervals
        assert type(error) is Error and error.code == ErrorCode.HEARTBEAT_TIMEOUT
        await peer.expect_eof()

        with pytest.raises(runtime.ConnectionClosed) as info:
            await conn.receive()
        assert info.value.code == ErrorCode.HEARTBEAT_TIMEOUT
        assert not info.value.clean
        assert conn.closed


async def test_application_sees_death_at_the_exact_time(
    autojump_clock: trio.testing.MockClock, now: Callable[[], float], server_side: ServerSide
) -> None:
    _, conn = await server_side(heartbeat=2.0)
    with trio.fail_after(60), pytest.raises(runtime.ConnectionClosed) as info:
        await conn.receive()
    assert now() == 6.0
    assert info.value.code == ErrorCode.HEARTBEAT_TIMEOUT


async def test_ping_is_answered_with_pong_and_never_reaches_the_application(
    autojump_clock: trio.testing.MockClock, server_side: ServerSide
) -> None:
    peer, conn = await server_side(heartbeat=None)
    await peer.send(Ping(mid=41), Publish(mid=42, subject="a.b", payload=1))
    pong = await peer.receive()
    assert type(pong) is Pong and pong.cid == 41
    # Only the Publish comes out; the Ping stayed inside the connection.
    assert [type(m) for m in await conn.receive_some()] == [Publish]
    await peer.send(Pong(mid=43, cid=1))
    await peer.send(Publish(mid=44, subject="a.b", payload=2))
    assert [m.mid for m in await conn.receive_some()] == [44]


async def test_peer_that_answers_pings_stays_alive(
    autojump_clock: trio.testing.MockClock, now: Callable[[], float], server_side: ServerSide
) -> None:
    peer, conn = await server_side(heartbeat=1.0)
    with trio.move_on_after(100):
        while True:
            ping = await peer.receive()
            assert type(ping) is Ping
            await peer.send(Pong(mid=ping.mid + 1000, cid=ping.mid))
    assert not conn.closed
    assert now() == 100


async def test_traffic_from_the_peer_postpones_pings(
    autojump_clock: trio.testing.MockClock, now: Callable[[], float], server_side: ServerSide
) -> None:
    peer, conn = await server_side(heartbeat=1.0)
    for i in range(10):
        await trio.sleep(0.5)
        await peer.send(Publish(mid=i + 1, subject="a.b"))
        await conn.receive()
    # No Ping while the peer talked every half interval; the first one a second after.
    ping = await peer.receive()
    assert type(ping) is Ping
    assert now() == 6.0


async def test_no_ping_before_the_server_sent_welcome(
    autojump_clock: trio.testing.MockClock, now: Callable[[], float], server_side: ServerSide
) -> None:
    # A client waiting for Welcome may not be pinged: the session would reject it.
    peer, conn = await server_side(heartbeat=1.0, welcome=False)
    await peer.send(Hello(mid=0, role="client"))
    assert type(await conn.receive()) is Hello
    error = await peer.receive()  # nothing but the death notice, at 3 intervals
    assert type(error) is Error and error.code == ErrorCode.HEARTBEAT_TIMEOUT
    assert now() == 3.0


async def test_two_idle_connections_keep_each_other_alive(
    autojump_clock: trio.testing.MockClock, now: Callable[[], float]
) -> None:
    a, b = trio.testing.memory_stream_pair()
    server = make_connection(a, "server", heartbeat=1.0)
    client = make_connection(b, "client", heartbeat=None)
    async with running(server), running(client):
        async with trio.open_nursery() as nursery:

            async def welcome() -> None:
                hello = await server.receive()
                server.send_nowait(
                    Welcome(mid=server.next_mid(), cid=hello.mid, version=1, heartbeat=1.0)
                )

            nursery.start_soon(welcome)
            answer = await client_handshake(client, Hello(mid=0, role="client"), heartbeat=None)
        assert answer.heartbeat == 1.0
        assert client.session.heartbeat == 1.0  # taken from the Welcome
        await trio.sleep(1000)
        assert not server.closed and not client.closed
    assert now() == 1000


async def test_client_uses_its_own_heartbeat_over_the_welcome(
    autojump_clock: trio.testing.MockClock, now: Callable[[], float]
) -> None:
    a, b = trio.testing.memory_stream_pair()
    peer = RawPeer(a)
    client = make_connection(b, "client", heartbeat=None)
    async with running(client):
        async with trio.open_nursery() as nursery:

            async def welcome() -> None:
                assert type(await peer.receive()) is Hello
                await peer.send(Welcome(mid=1, cid=0, version=1, heartbeat=100.0))

            nursery.start_soon(welcome)
            await client_handshake(client, Hello(mid=0, role="client"), heartbeat=0.5)
        ping = await peer.receive()
        assert type(ping) is Ping and now() == 0.5
        with pytest.raises(runtime.ConnectionClosed) as info:
            await client.receive()
        assert info.value.code == ErrorCode.HEARTBEAT_TIMEOUT
        assert now() == 1.5


async def test_stalled_application_does_not_blame_the_peer(
    autojump_clock: trio.testing.MockClock, now: Callable[[], float], server_side: ServerSide
) -> None:
    # The application stops reading; the inbox fills and the reader stops. The peer's
    # silence since then is ours, so the connection must not declare it dead.
    peer, conn = await server_side(heartbeat=1.0, max_inbox=1000)
    big = Publish(mid=1, subject="a.b", payload=b"x" * 2000)
    await peer.send(big, big)  # over the inbox bound: the reader stalls
    await trio.testing.wait_all_tasks_blocked()
    assert conn._reader_stalled
    pings = 0
    with trio.move_on_after(50):
        while True:
            assert type(await peer.receive()) is Ping  # we still ping the peer
            pings += 1
    assert not conn.closed
    assert pings >= 40
    assert len(await conn.receive_some()) == 2
    # Reading again: now real silence counts, and kills within 3 intervals.
    with pytest.raises(runtime.ConnectionClosed) as info:
        await conn.receive()
    assert info.value.code == ErrorCode.HEARTBEAT_TIMEOUT
    assert 50 < now() <= 53


async def test_peer_bye_is_a_clean_close(
    autojump_clock: trio.testing.MockClock, now: Callable[[], float], server_side: ServerSide
) -> None:
    peer, conn = await server_side(heartbeat=1.0)
    await peer.send(Publish(mid=1, subject="a.b"), Bye(mid=2, reason="done"))
    received = [m async for m in conn]
    assert [type(m) for m in received] == [Publish]
    with pytest.raises(runtime.ConnectionClosed) as info:
        await conn.receive()
    assert info.value.clean and info.value.code is None
    assert "done" in info.value.reason
    await peer.expect_eof()
    assert now() == 0


async def test_heartbeat_death_over_tcp(
    autojump_clock: trio.testing.MockClock, now: Callable[[], float]
) -> None:
    # A server that welcomes and then never says a word, not even Pong.
    async def silent_server(stream: trio.SocketStream) -> None:
        peer = RawPeer(stream)
        hello = await peer.receive()
        await peer.send(Welcome(mid=1, cid=hello.mid, version=1, heartbeat=2.0))
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(
            functools.partial(trio.serve_tcp, silent_server, 0, host="127.0.0.1")
        )
        port = listeners[0].socket.getsockname()[1]
        with trio.fail_after(60):
            async with runtime.open_connection(
                f"tcp://127.0.0.1:{port}", hello=Hello(mid=0, role="worker")
            ) as conn:
                start = now()
                with pytest.raises(runtime.ConnectionClosed) as info:
                    await conn.receive()
                assert info.value.code == ErrorCode.HEARTBEAT_TIMEOUT
                assert now() - start == pytest.approx(6.0, abs=1e-6)
        nursery.cancel_scope.cancel()


@pytest.mark.e2e
async def test_a_worker_that_only_sends_progress_is_not_declared_dead():
    """A long job reporting progress more often than the heartbeat: the worker hears
    nothing but must not give up on the leader (it pings when it has heard nothing for a
    heartbeat, whatever it sends), and the job completes on its first attempt."""
    from actors import Client, Leader, Worker
    from actors.worker import WorkerRunner

    class Chatty(Worker):
        subjects = ["long.job"]

        async def handle(self, job):
            for _ in range(12):
                await job.progress(note="working")
                await trio.sleep(0.25)
            return job.attempt

    leader = Leader(listen=["tcp://127.0.0.1:0"], memory=True, heartbeat=0.5, ack_timeout=2.0)
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            [url] = await nursery.start(leader.run)
            await nursery.start(WorkerRunner(Chatty(), url, name="chatty").run)
            async with Client.connect(url) as client:
                assert await client.submit("long.job", None) == 1
            nursery.cancel_scope.cancel()
