"""The outgoing side's bounds in time and in all: a peer that takes no byte of a write for
``write_timeout`` is cut as a slow consumer (one that takes bytes, however slowly, is not),
and the connections of a server share a budget of bytes queued (``max_outgoing_total``).

Most tests run a server-side :class:`runtime.Connection` over an in-memory lockstep stream
(a write ends only when the peer has read all of it) against a raw peer, under the
autojump clock, and assert exact virtual times. The others run over loopback TCP, in real
time: there the peer's progress inside one large write is what its TCP acknowledged.
"""

from __future__ import annotations

import functools
import logging
import math
import socket
import sys
from pathlib import Path

import attrs
import pytest
import trio
import trio.testing

import protocol
import runtime
from actors import Leader
from actors.cluster._config import load_config
from protocol import (
    Deliver,
    ErrorCode,
    Hello,
    Ping,
    Publish,
    Session,
    Subscribe,
    Welcome,
    bundle_frames,
    encode_item,
)
from runtime._connection import Connection
from runtime._outgoing import OutgoingBudget
from runtime._transports import running
from runtime._wire import SocketWire, StreamWire, socket_under, tcp_bytes_acked
from tests import test_heartbeat

LINUX = sys.platform == "linux"


class RawPeer(test_heartbeat.RawPeer):
    """The other end of the connection's stream, speaking frames by hand (frames up to
    64 MiB)."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        super().__init__(stream)
        self.decoder = protocol.FrameDecoder(max_frame_size=64 * 2**20)

    async def read_until_eof(self) -> None:
        while await self.stream.receive_some(65536):
            pass


def server_connection(
    wire: runtime._wire.Wire, *, heartbeat: float | None = None, **kw: object
) -> Connection:
    return Connection(
        wire, Session(side="server", heartbeat=heartbeat), "memory://peer", "tcp", **kw
    )


async def open_session(peer: RawPeer, conn: Connection) -> None:
    """Hello from the peer, Welcome from the connection (read by the peer)."""
    await peer.send(Hello(mid=0, role="client"))
    assert type(await conn.receive()) is Hello
    conn.send_nowait(
        Welcome(mid=conn.next_mid(), cid=0, version=1, heartbeat=conn.session.heartbeat)
    )
    assert type(await peer.receive()) is Welcome


def publish(conn: Connection, size: int) -> Publish:
    return Publish(mid=conn.next_mid(), subject="a.b", payload=b"x" * size)


def slow_consumer_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.name == "runtime.connection" and "slow consumer" in r.getMessage()
    ]


# ---------------------------------------------------------------------------------------
# In memory, virtual time


async def test_a_peer_that_takes_nothing_is_cut_write_timeout_after_the_write_began(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    a, b = trio.testing.lockstep_stream_pair()
    peer = RawPeer(b)
    conn = server_connection(StreamWire(a), write_timeout=5.0)
    with trio.fail_after(60):
        async with running(conn):
            await open_session(peer, conn)
            await trio.sleep(3)  # idle: nothing to write, nothing due
            began = trio.current_time()
            conn.send_nowait(publish(conn, 1000))  # the peer never reads it
            with pytest.raises(runtime.ConnectionClosed) as info:
                await conn.receive()
            assert trio.current_time() - began == 5.0
            await peer.read_until_eof()  # cut: what was written, then the end
    assert info.value.code == ErrorCode.SLOW_CONSUMER and not info.value.clean
    assert "took no bytes for 5 s" in info.value.reason
    assert conn._outgoing.held == 0  # dropped at once
    (record,) = slow_consumer_records(caplog)  # logged once
    assert record.levelno == logging.WARNING


async def test_pings_from_a_peer_that_does_not_read_do_not_postpone_the_cut(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # The peer pings (so the heartbeat keeps it alive) and sends, but reads nothing.
    a, b = trio.testing.lockstep_stream_pair()
    peer = RawPeer(b)
    conn = server_connection(StreamWire(a), heartbeat=1.0, write_timeout=4.0)
    with trio.fail_after(60):
        async with running(conn), trio.open_nursery() as nursery:
            await open_session(peer, conn)
            began = trio.current_time()
            conn.send_nowait(publish(conn, 1000))

            async def ping_forever() -> None:
                for mid in range(1, 1000):
                    await peer.send(Ping(mid=mid), Publish(mid=10_000 + mid, subject="a.b"))
                    await trio.sleep(0.5)

            async def receive_until_closed() -> None:
                while True:
                    await conn.receive()

            nursery.start_soon(ping_forever)
            with pytest.raises(runtime.ConnectionClosed) as info:
                await receive_until_closed()
            assert trio.current_time() - began == 4.0
            nursery.cancel_scope.cancel()
    assert info.value.code == ErrorCode.SLOW_CONSUMER


@attrs.define(eq=False)
class AckedWire(StreamWire):
    """A memory wire whose peer's TCP acknowledged ``acked`` bytes (set by the test)."""

    acked: int = 0

    def bytes_acked(self) -> int | None:
        return self.acked


async def test_progress_inside_one_write_postpones_the_cut(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # One write the peer takes slowly (its TCP acknowledges bytes every 3 s, under the 4 s
    # deadline) until 11.5 s, then nothing: the watch looks every second (a quarter of the
    # deadline), last sees progress at 12 s, and cuts at 16 s.
    a, b = trio.testing.lockstep_stream_pair()
    peer = RawPeer(b)
    wire = AckedWire(a)
    conn = server_connection(wire, write_timeout=4.0)
    with trio.fail_after(60):
        async with running(conn), trio.open_nursery() as nursery:
            await open_session(peer, conn)
            began = trio.current_time()
            conn.send_nowait(publish(conn, 1000))

            async def acknowledge() -> None:
                for at in (2.5, 5.5, 8.5, 11.5):
                    await trio.sleep_until(began + at)
                    wire.acked += 1000

            nursery.start_soon(acknowledge)
            with pytest.raises(runtime.ConnectionClosed) as info:
                await conn.receive()
            assert trio.current_time() - began == 16.0
    assert (
        info.value.code == ErrorCode.SLOW_CONSUMER and "took no bytes for 4 s" in info.value.reason
    )


async def test_writes_that_end_in_time_never_reach_the_deadline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Each write waits 4 s for the peer (under the 5 s deadline), one after the other, for
    # 48 s in all: the deadline is per write, not per stretch of slow writes.
    a, b = trio.testing.lockstep_stream_pair()
    peer = RawPeer(b)
    conn = server_connection(StreamWire(a), write_timeout=5.0)
    with trio.fail_after(200):
        async with running(conn), trio.open_nursery() as nursery:
            await open_session(peer, conn)

            async def slow_reader() -> None:
                for _ in range(12):
                    await trio.sleep(4)
                    await peer.receive()

            nursery.start_soon(slow_reader)
            for _ in range(12):
                conn.send_nowait(publish(conn, 100))
                await trio.sleep(4)
            await trio.sleep(10)  # and idle after it
            assert not conn.closed


async def test_no_deadline_by_default(autojump_clock: trio.testing.MockClock) -> None:
    a, b = trio.testing.lockstep_stream_pair()
    peer = RawPeer(b)
    conn = server_connection(StreamWire(a))
    assert conn.write_timeout == math.inf
    with trio.fail_after(10_000):
        async with running(conn):
            await open_session(peer, conn)
            conn.send_nowait(publish(conn, 1000))
            await trio.sleep(3600)
            assert not conn.closed and conn._outgoing.inflight_bytes > 0
            conn._abort("test over")


@pytest.mark.parametrize("bad", [0, -1.0, math.nan])
async def test_a_write_timeout_must_be_positive(bad: float) -> None:
    a, _b = trio.testing.memory_stream_pair()
    with pytest.raises(ValueError, match="write_timeout"):
        server_connection(StreamWire(a), write_timeout=bad)
    with pytest.raises(ValueError, match="write_timeout"):
        await runtime.serve("tcp://127.0.0.1:0", lambda conn: None, write_timeout=bad)  # type: ignore[arg-type, return-value]


# ---------------------------------------------------------------------------------------
# Over loopback TCP, real time: progress inside one large write


async def connected_tcp() -> tuple[trio.SocketStream, trio.SocketStream]:
    """(server side, client side) of a loopback TCP connection, with small buffers (so
    that little of a large write fits in the kernel)."""
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    try:
        port = listener.socket.getsockname()[1]
        client = await trio.open_tcp_stream("127.0.0.1", port)
        server = await listener.accept()
    finally:
        await listener.aclose()
    server.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 32 * 1024)
    client.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 * 1024)
    return server, client


@pytest.mark.e2e
@pytest.mark.skipif(
    not LINUX, reason="the peer's progress inside a write is read from Linux's TCP_INFO"
)
@pytest.mark.parametrize("kind", ["socket", "stream"])
async def test_a_slow_steady_reader_of_a_large_write_is_not_cut_until_it_stops(kind: str) -> None:
    server, client = await connected_tcp()
    wire = SocketWire.take(server) if kind == "socket" else StreamWire(server)
    conn = server_connection(wire, write_timeout=0.5, max_outgoing=64 * 2**20)
    peer = RawPeer(client)
    with trio.fail_after(30):
        async with client, running(conn):
            await open_session(peer, conn)
            for _ in range(32):
                conn.send_nowait(publish(conn, 256 * 1024))  # 8 MiB: one long write
            # 4 KiB every 20 ms (200 KB/s): the write would take 40 s; 2 s of it here,
            # four times the deadline, and the connection stays.
            start = trio.current_time()
            while trio.current_time() - start < 2.0:
                assert await client.receive_some(4096)
                await trio.sleep(0.02)
            assert not conn.closed and conn._outgoing.inflight_bytes > 0
            stopped = trio.current_time()
            with pytest.raises(runtime.ConnectionClosed) as info:
                await conn.receive()
            waited = trio.current_time() - stopped
    assert info.value.code == ErrorCode.SLOW_CONSUMER
    assert 0.5 <= waited < 3.0  # (at most twice the deadline, plus a loaded machine's delays)


@pytest.mark.skipif(not LINUX, reason="Linux's TCP_INFO")
async def test_bytes_acked_counts_what_the_peer_took() -> None:
    server, client = await connected_tcp()
    try:
        assert socket_under(server) is server.socket
        before = tcp_bytes_acked(server.socket)
        assert before is not None
        await server.send_all(b"x" * 1000)
        assert await client.receive_some(1000)
        with trio.fail_after(5):
            while tcp_bytes_acked(server.socket) == before:  # noqa: ASYNC110 (an ACK: no event)
                await trio.sleep(0.001)
        assert tcp_bytes_acked(server.socket) == before + 1000
        assert StreamWire(server).bytes_acked() == before + 1000
    finally:
        await server.aclose()
        await client.aclose()
    assert tcp_bytes_acked(server.socket) is None  # closed
    a, _b = trio.testing.memory_stream_pair()
    assert StreamWire(a).bytes_acked() is None  # not TCP


# ---------------------------------------------------------------------------------------
# The budget shared by the connections of a server


def deliver(conn: Connection, size: int) -> Deliver:
    return Deliver(mid=conn.next_mid(), sid=1, subject="a.b", payload=b"x" * size)


def held(conn: Connection) -> int:
    return conn._outgoing.held


async def test_a_full_budget_cuts_the_connection_that_holds_the_most(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    budget = OutgoingBudget(100_000)
    pairs = [trio.testing.lockstep_stream_pair() for _ in range(3)]
    big, mid, small = conns = [server_connection(StreamWire(a), budget=budget) for a, _ in pairs]
    peers = [RawPeer(b) for _, b in pairs]  # they read the Welcome, then nothing
    with trio.fail_after(60):
        async with running(big), running(mid), running(small):
            for peer, conn in zip(peers, conns, strict=True):
                await open_session(peer, conn)
            await trio.testing.wait_all_tasks_blocked()
            assert budget.used == 0  # (the Welcomes were written)
            big.send_nowait(publish(big, 60_000))
            mid.send_nowait(publish(mid, 30_000))
            assert budget.used == held(big) + held(mid) < 100_000
            small.send_nowait(publish(small, 20_000))  # over: room is made
            assert big.closed and not mid.closed and not small.closed
            assert budget.used == held(mid) + held(small) and held(big) == 0
            with pytest.raises(runtime.ConnectionClosed) as info:
                await big.receive()
            assert info.value.code == ErrorCode.SLOW_CONSUMER
            assert "held the most of the outgoing budget of 100000 bytes" in info.value.reason

            # More than cutting every other connection would free: refused, nobody cut.
            with pytest.raises(runtime.SendBufferFull) as full:
                small.send_nowait(publish(small, 90_000))
            assert full.value.limit == 100_000 and not mid.closed
            mid.send_nowait(publish(mid, 40_000))  # fits (30 + 20 + 40 KB)
            assert not mid.closed and not small.closed
            for conn in (mid, small):
                conn._abort("test over")
    assert budget.used == 0 and not budget._members  # what they held went with them
    assert len(slow_consumer_records(caplog)) == 1


async def test_the_budget_counts_back_to_zero_after_traffic() -> None:
    # Over TCP: writes at once (flush), in part (the rest by the writer task), in bundles;
    # queued by queue_nowait, send_nowait, send_many_nowait and send.
    budgets: list[OutgoingBudget] = []
    finished = trio.Event()

    async def handler(conn: Connection) -> None:
        hello = await conn.receive()
        conn.send_nowait(Welcome(mid=conn.next_mid(), cid=hello.mid, version=2))
        budgets.append(conn._outgoing.budget)
        for size in (10, 3 * 2**20, 100, 5 * 2**20, 1):
            for _ in range(20):
                conn.queue_nowait(deliver(conn, size // 20 + 1))
            conn.flush()
            conn.send_nowait(deliver(conn, size))
        conn.send_many_nowait([deliver(conn, 1000) for _ in range(5)])
        await conn.send(deliver(conn, 2**20))
        await conn.receive()  # the client's Publish: it has read everything
        assert conn._outgoing.budget.used == 0
        finished.set()
        await conn.receive()

    serve = functools.partial(runtime.serve, "tcp://127.0.0.1:0", handler, max_outgoing=64 * 2**20)
    hello = Hello(mid=0, role="client", versions=(1, 2))
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            url = await nursery.start(serve)
            async with runtime.open_connection(
                url, hello=hello, max_frame_size=16 * 2**20
            ) as client:
                for _ in range(5 * 21 + 6):
                    assert type(await client.receive()) is Deliver
                await client.send(Publish(mid=client.next_mid(), subject="done"))
                await finished.wait()
            nursery.cancel_scope.cancel()
    assert budgets[0].used == 0 and not budgets[0]._members
    assert budgets[0].limit == runtime.DEFAULT_MAX_OUTGOING_TOTAL == 2**30


async def raw_client(url: str, name: str) -> trio.SocketStream:
    """A client of the leader that says Hello (version 2) and reads its Welcome, no more."""
    host, port = url.removeprefix("tcp://").rsplit(":", 1)
    stream = await trio.open_tcp_stream(host, int(port))
    await stream.send_all(protocol.encode(Hello(mid=0, role="client", name=name, versions=(1, 2))))
    peer = RawPeer(stream)
    assert type(await peer.receive()) is Welcome
    return stream


@pytest.mark.e2e
async def test_the_leader_s_budget_cuts_subscribers_that_hold_the_most(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Four subscribers that read nothing are each replayed 24 MiB of retained messages
    # (the kernel takes a few MiB of it): the leader holds at most its 48 MiB.
    mib = 2**20
    leader = Leader(
        listen=["tcp://127.0.0.1:0"],
        heartbeat=None,
        write_timeout=math.inf,
        max_outgoing_total=48 * mib,
    )
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            (url,) = await nursery.start(leader.run)
            publisher = await raw_client(url, "publisher")
            blob = b"r" * (mib - 1024)
            items = [
                encode_item(Publish(mid=i, subject=f"r.{i}", payload=blob, retain=True))
                for i in range(1, 25)
            ]
            await publisher.send_all(b"".join(bundle_frames(items, 16 * mib)))
            sleepers = [await raw_client(url, f"z{i}") for i in range(4)]
            for sleeper in sleepers:
                await sleeper.send_all(protocol.encode(Subscribe(mid=1, sid=1, pattern="r.>")))
                await trio.sleep(0.2)  # (its replay queued before the next one subscribes)
            cut = [
                r
                for r in slow_consumer_records(caplog)
                if "outgoing budget of 50331648 bytes" in r.getMessage()
            ]
            assert len(cut) >= 2  # (at 19 MiB or more each, at most two fit)
            assert leader.connections == 5 - len(cut)
            for stream in (publisher, *sleepers):
                await stream.aclose()
            nursery.cancel_scope.cancel()


# ---------------------------------------------------------------------------------------
# The leader's settings


def test_the_leader_takes_write_timeout_and_max_outgoing_total_from_its_config(
    tmp_path: Path,
) -> None:
    leader = Leader()
    assert leader.write_timeout == runtime.DEFAULT_WRITE_TIMEOUT == 10.0
    assert leader.max_outgoing_total == runtime.DEFAULT_MAX_OUTGOING_TOTAL
    for text, expected in (("2.5", 2.5), ("0", math.inf)):
        path = tmp_path / f"c{text}.toml"
        path.write_text(f'[leader]\nwrite_timeout = {text}\nmax_outgoing_total = "256MiB"\n')
        config = load_config(str(path), import_workers=False)
        assert config.leader.write_timeout == expected
        leader = Leader(**config.leader.leader_kwargs())
        assert leader.write_timeout == expected
        assert leader.max_outgoing_total == 256 * 2**20
