"""Protocol version 2 on real connections: bundles on the wire, the frame limit,
``queue_nowait`` + ``flush``, ``send_nowait``'s ``flush_every``, ``dispatch_to``, and
closing while bundling.

What travels is observed at the wire: a raw peer (a server or a client that speaks the
handshake with plain frames by hand) splits the bytes it receives into frames itself, so
that it sees how many frames carried the messages and whether each body is a CBOR map (one
message, version 1) or a CBOR array (a bundle, version 2).
"""

from __future__ import annotations

import functools
import socket
import struct
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import attrs
import pytest
import trio
import trio.testing

import protocol
import runtime
from protocol import (
    Bye,
    Deliver,
    Error,
    ErrorCode,
    Hello,
    Message,
    Ping,
    Pong,
    Publish,
    Session,
    Welcome,
)
from runtime import _ws
from runtime._connection import DEFAULT_FLUSH_EVERY, Connection
from runtime._transports import _dial, running
from runtime._url import parse_url
from runtime._wire import StreamWire

SCHEMES = ["tcp", "ws"]
V2 = protocol.SUPPORTED_VERSIONS
_HEADER = struct.Struct(">IB")


def is_map(body: bytes) -> bool:
    """A plain frame: the body is one message, a CBOR map."""
    return 0xA0 <= body[0] <= 0xBF


def is_array(body: bytes) -> bool:
    """A bundle: the body is a CBOR array of messages."""
    return 0x80 <= body[0] <= 0x9F


# ---------------------------------------------------------------------------------------
# A raw peer: frames by hand, and a record of every frame received.


@attrs.define
class RawPeer:
    """One end of a connection that writes frames by hand and records the frames it gets.

    ``whole_frames``: the wire is a WebSocket, where every message must be one frame (the
    peer checks that each chunk it receives is exactly one).
    """

    wire: Any
    whole_frames: bool = False
    buffer: bytearray = attrs.field(factory=bytearray)
    #: The body of every frame received since the last :meth:`clear`, in order.
    bodies: list[bytes] = attrs.field(factory=list)
    #: How many messages each of those frames carried.
    per_frame: list[int] = attrs.field(factory=list)
    #: Every message received since the last :meth:`clear`, in order.
    messages: list[Message] = attrs.field(factory=list)

    def clear(self) -> None:
        self.bodies.clear()
        self.per_frame.clear()
        self.messages.clear()

    async def send(self, *messages: Message) -> None:
        """Send each message as a plain frame (a map), all in one write."""
        await self.wire.send_frames([protocol.encode(m) for m in messages])

    async def send_bundle(self, *messages: Message) -> None:
        """Send the messages as one bundle (one frame)."""
        frames = protocol.bundle_frames([protocol.encode_item(m) for m in messages], 2**20)
        assert len(frames) == 1
        await self.wire.send_frames(frames)

    async def read_chunk(self) -> bool:
        """Read once and record the frames completed; False at the end of the stream."""
        try:
            data = await self.wire.receive()
        except (trio.BrokenResourceError, runtime.ConnectionClosed):
            data = None
        if data is None:
            return False
        self.buffer += data
        frames = 0
        while len(self.buffer) >= _HEADER.size:
            length, flags = _HEADER.unpack_from(self.buffer)
            end = _HEADER.size + length
            if len(self.buffer) < end:
                break
            frame = bytes(self.buffer[:end])
            del self.buffer[:end]
            assert flags == 0
            messages = protocol.FrameDecoder().feed(frame)
            assert messages
            self.bodies.append(frame[_HEADER.size :])
            self.per_frame.append(len(messages))
            self.messages += messages
            frames += 1
        if self.whole_frames:
            assert frames == 1 and not self.buffer, "a WebSocket message must hold one frame"
        return True

    async def read_messages(self, count: int) -> list[Message]:
        """Read until ``count`` messages were received (since the last clear)."""
        while len(self.messages) < count:
            assert await self.read_chunk(), "unexpected end of stream"
        assert len(self.messages) == count, "more messages than expected"
        return list(self.messages)

    async def read_until_closed(self) -> list[Message]:
        while await self.read_chunk():
            pass
        assert not self.buffer, "the stream ended in the middle of a frame"
        return list(self.messages)


@asynccontextmanager
async def raw_client(url: str) -> AsyncIterator[RawPeer]:
    """A raw client connected to ``url`` (tcp or ws), before any Hello."""
    async with trio.open_nursery() as nursery:
        parsed = parse_url(url)
        wire, _ = await _dial(parsed, nursery, None, protocol.DEFAULT_MAX_FRAME_SIZE)
        try:
            yield RawPeer(wire, whole_frames=parsed.websocket)
        finally:
            await wire.aclose_forcefully()


@asynccontextmanager
async def client_to_raw_server(
    scheme: str,
    *,
    version: int = 2,
    max_frame: int | None = None,
    versions: Sequence[int] = V2,
    **kw: Any,
) -> AsyncIterator[tuple[Connection, RawPeer]]:
    """A real client (``runtime.open_connection``, its Hello offering ``versions``)
    connected to a raw server that answers with a plain Welcome naming ``version``."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    peers: list[RawPeer] = []
    async with trio.open_nursery() as nursery:

        async def accept() -> None:
            stream = await listeners[0].accept()
            for listener in listeners:
                await listener.aclose()
            wire: Any
            if scheme == "ws":
                wire = await _ws.server_wire(
                    nursery, stream, max_frame_size=protocol.DEFAULT_MAX_FRAME_SIZE
                )
            else:
                wire = StreamWire(stream)
            peer = RawPeer(wire, whole_frames=scheme == "ws")
            (hello,) = await peer.read_messages(1)
            assert type(hello) is Hello and hello.versions == tuple(versions)
            assert is_map(peer.bodies[0])
            peer.clear()
            peers.append(peer)
            await peer.send(Welcome(mid=1, cid=hello.mid, version=version, max_frame=max_frame))

        nursery.start_soon(accept)
        hello = Hello(mid=0, role="client", versions=tuple(versions))
        url = f"{scheme}://127.0.0.1:{port}"
        async with runtime.open_connection(url, hello=hello, **kw) as conn:
            (peer,) = peers
            try:
                yield conn, peer
            finally:
                await peer.wire.aclose_forcefully()  # (the client then closes at once)


def spy_on_writes(conn: Connection) -> list[int]:
    """Record each write of the connection's writer task (the frames it wrote at once).

    :meth:`Connection.flush` writes with ``try_send``, not through here.
    """
    wire = conn._wire
    writes: list[int] = []
    send_frames = wire.send_frames

    async def counting(frames: list[bytes]) -> None:
        writes.append(len(frames))
        await send_frames(frames)

    wire.send_frames = counting
    return writes


def publish(conn: Connection, payload: Any = None, subject: str = "a.b") -> Publish:
    return Publish(mid=conn.next_mid(), subject=subject, payload=payload)


# ---------------------------------------------------------------------------------------
# A real server that negotiates the version and sends bursts.


@attrs.define
class BurstServer:
    """Welcomes with the version negotiated from the Hello; for a Publish on ``burst``
    (payload n) sends n Delivers with ``send_nowait`` in one go, then flushes
    (``burst.close``: then closes; ``burst.queued``: queues them all with ``queue_nowait``
    before the one ``flush``, as the leader does); echoes ``echo``; records every message
    received and how its session ended."""

    max_frame: int | None = None
    hellos: list[Hello] = attrs.field(factory=list)
    received: list[Message] = attrs.field(factory=list)
    endings: list[Any] = attrs.field(factory=list)
    ended: trio.Event = attrs.field(factory=trio.Event)

    async def __call__(self, conn: runtime.Connection) -> None:
        try:
            hello = await conn.receive()
            assert type(hello) is Hello
            self.hellos.append(hello)
            version = protocol.negotiate_version(hello.versions)
            conn.send_nowait(
                Welcome(
                    mid=conn.next_mid(), cid=hello.mid, version=version, max_frame=self.max_frame
                )
            )
            async for msg in conn:
                self.received.append(msg)
                if type(msg) is not Publish:
                    continue
                if msg.subject in ("burst", "burst.close", "burst.queued"):
                    send = conn.queue_nowait if msg.subject == "burst.queued" else conn.send_nowait
                    for i in range(msg.payload):
                        send(Deliver(mid=conn.next_mid(), sid=0, subject="burst", payload=i))
                    conn.flush()
                    if msg.subject == "burst.close":
                        await conn.aclose()
                        self.endings.append("closed")
                        return
                elif msg.subject == "echo":
                    conn.send_nowait(
                        Deliver(mid=conn.next_mid(), sid=0, subject="echo", payload=msg.payload)
                    )
            self.endings.append("clean")
        except runtime.ConnectionClosed as exc:
            self.endings.append(exc)
            raise
        finally:
            self.ended.set()


async def serve(nursery: trio.Nursery, scheme: str, handler: Any, **kw: Any) -> str:
    return await nursery.start(
        functools.partial(runtime.serve, f"{scheme}://127.0.0.1:0", handler, **kw)
    )


# ---------------------------------------------------------------------------------------
# 1. Bundles on the wire, and plain frames for a version 1 peer.


@pytest.mark.parametrize("scheme", SCHEMES)
async def test_a_v2_peer_gets_a_burst_bundled_in_order(scheme: str, nursery: trio.Nursery) -> None:
    server = BurstServer()
    url = await serve(nursery, scheme, server)
    count = 1000
    with trio.fail_after(10):
        async with raw_client(url) as raw:
            await raw.send(Hello(mid=0, role="client", versions=V2))
            (welcome,) = await raw.read_messages(1)
            assert type(welcome) is Welcome and welcome.version == 2
            assert is_map(raw.bodies[0])  # the Welcome itself is a plain frame
            raw.clear()
            # A v2 peer may bundle too: three messages in one frame (one WebSocket message).
            await raw.send_bundle(
                Publish(mid=1, subject="note", payload="a"),
                Publish(mid=2, subject="note", payload="b"),
                Publish(mid=3, subject="burst", payload=count),
            )
            messages = await raw.read_messages(count)
            assert [(type(m), m.payload) for m in messages] == [(Deliver, i) for i in range(count)]
            assert all(map(is_array, raw.bodies))
            # At most one frame per flush_every messages (over tcp each flush writes one
            # bundle at once; over ws the writer bundles them all).
            assert len(raw.bodies) <= count // DEFAULT_FLUSH_EVERY + 1
            assert sum(raw.per_frame) == count
            raw.clear()
            await raw.send_bundle(Bye(mid=4, reason="done"))
            assert await raw.read_until_closed() == []  # the server closes without a word
        await server.ended.wait()
    assert server.endings == ["clean"]
    assert [m.payload for m in server.received] == ["a", "b", count]


@pytest.mark.parametrize("scheme", SCHEMES)
async def test_a_v2_client_bundles_what_it_sends(scheme: str) -> None:
    count = 1000
    with trio.fail_after(10):
        async with client_to_raw_server(scheme) as (conn, raw):
            assert conn.welcome is not None and conn.welcome.version == 2
            for i in range(count):
                conn.send_nowait(publish(conn, i))
            messages = await raw.read_messages(count)
            assert [m.payload for m in messages] == list(range(count))
            assert all(type(m) is Publish for m in messages)
            assert all(map(is_array, raw.bodies))
            assert len(raw.bodies) <= count // DEFAULT_FLUSH_EVERY + 1


@pytest.mark.parametrize("scheme", SCHEMES)
async def test_a_v1_peer_gets_only_plain_frames(scheme: str, nursery: trio.Nursery) -> None:
    server = BurstServer()
    url = await serve(nursery, scheme, server)
    count = 300
    with trio.fail_after(10):
        async with raw_client(url) as raw:
            await raw.send(Hello(mid=0, role="client"))  # versions: (1,) by default
            (welcome,) = await raw.read_messages(1)
            assert type(welcome) is Welcome and welcome.version == 1
            raw.clear()
            await raw.send(Publish(mid=1, subject="burst", payload=count))
            messages = await raw.read_messages(count)
            assert [m.payload for m in messages] == list(range(count))
            assert all(map(is_map, raw.bodies))
            assert raw.per_frame == [1] * count
            raw.clear()
            await raw.send(Bye(mid=2, reason="done"))
            assert await raw.read_until_closed() == []
        await server.ended.wait()
    assert server.endings == ["clean"]
    assert server.hellos[0].versions == (1,)


@pytest.mark.parametrize("scheme", SCHEMES)
async def test_a_v1_client_sends_plain_frames_and_everything_works(
    scheme: str, nursery: trio.Nursery
) -> None:
    count = 300
    with trio.fail_after(10):
        # To a server answering version 1: one map per frame, nothing written at once.
        async with client_to_raw_server(scheme, version=1, versions=(1,)) as (conn, raw):
            assert conn.welcome is not None and conn.welcome.version == 1
            for i in range(50):
                conn.send_nowait(publish(conn, i))
            assert (
                len(conn._outgoing._pending) == 50 and conn._outgoing._items == []
            )  # flush_every: bundles only
            messages = await raw.read_messages(50)
            assert [m.payload for m in messages] == list(range(50))
            assert all(map(is_map, raw.bodies)) and raw.per_frame == [1] * 50

        # To a real server: the whole round trip, and a clean close.
        server = BurstServer()
        url = await serve(nursery, scheme, server)
        async with runtime.open_connection(url, hello=Hello(mid=0, role="client")) as conn:
            assert conn.welcome is not None and conn.welcome.version == 1
            conn.send_nowait(publish(conn, count, subject="burst"))
            received: list[Message] = []
            while len(received) < count:
                received += await conn.receive_some()
            assert [m.payload for m in received] == list(range(count))
            for i in range(20):
                conn.send_nowait(publish(conn, i, subject="echo"))
            echoes = [await conn.receive() for _ in range(20)]
            assert [m.payload for m in echoes] == list(range(20))
        await server.ended.wait()
    assert server.endings == ["clean"]


# ---------------------------------------------------------------------------------------
# 2. The frame limit.


def publish_with_item_size(size: int) -> Publish:
    """A Publish whose bundle item (see ``protocol.encode_item``) is ``size`` bytes."""
    for n in range(size):
        message = Publish(mid=1000, subject="big", payload=b"x" * n)
        if len(protocol.encode_item(message)) == size:
            return message
    raise AssertionError(f"no Publish encodes to {size} bytes")


@pytest.mark.parametrize("scheme", SCHEMES)
async def test_bundles_fit_the_frame_limit_the_welcome_names(scheme: str) -> None:
    limit = protocol.MIN_MAX_FRAME  # (the smallest a peer may announce)
    with trio.fail_after(10):
        async with client_to_raw_server(scheme, max_frame=limit) as (conn, raw):
            assert conn._outgoing.send_limit == limit
            messages = [publish(conn, b"x" * 40 + i.to_bytes(2, "big")) for i in range(300)]
            conn.send_many_nowait(messages)
            received = await raw.read_messages(len(messages))
            assert received == messages
            assert all(map(is_array, raw.bodies))
            assert max(map(len, raw.bodies)) <= limit
            # As few frames as fit (one batch of the writer): each nearly full.
            items = [protocol.encode_item(m) for m in messages]
            assert len(raw.bodies) == len(protocol.bundle_frames(items, limit))
            assert sum(map(len, items)) / limit <= len(raw.bodies) < len(messages) / 10
            assert all(len(body) > limit - 100 for body in raw.bodies[:-1])
            raw.clear()

            # A message that cannot fit in a bundle is refused when it is sent.
            fits = publish_with_item_size(limit - protocol.BUNDLE_OVERHEAD)
            too_big = publish_with_item_size(limit - protocol.BUNDLE_OVERHEAD + 1)
            small = publish(conn, "small")
            refusals: list[Callable[[Message], Any]] = [
                conn.send_nowait,
                conn.queue_nowait,
                lambda m: conn.send_many_nowait([small, m]),  # all or nothing
            ]
            for send in refusals:
                with pytest.raises(runtime.MessageTooLarge) as info:
                    send(too_big)
                assert info.value.limit == limit and info.value.size == limit + 1
            with pytest.raises(runtime.MessageTooLarge):
                await conn.send(too_big)
            assert (
                conn._outgoing._items == [] and conn._outgoing.queued_bytes == 0
            )  # nothing was queued

            # The largest that fits goes alone in a frame within the limit; all still works.
            conn.send_nowait(fits)
            conn.send_nowait(small)
            assert await raw.read_messages(2) == [fits, small]
            assert raw.per_frame == [1, 1]
            assert len(raw.bodies[0]) == limit - protocol.BUNDLE_OVERHEAD + 1  # array head + item
            raw.clear()

            # Two that fill a bundle exactly share a frame; a byte more and they do not
            # (the bundle would pass the limit once its head is added).
            tail = publish_with_item_size(30)
            for total, frames in [(limit - protocol.BUNDLE_OVERHEAD, [2]), (limit, [1, 1])]:
                head = publish_with_item_size(total - 30)
                conn.send_many_nowait([head, tail])
                assert await raw.read_messages(2) == [head, tail]
                assert raw.per_frame == frames
                assert max(map(len, raw.bodies)) <= limit
                raw.clear()
            assert not conn.closed


def both_versions(reason: str) -> list[Any]:
    """Version 1 and version 2 sessions; ``reason`` says what the test guards against."""
    return [pytest.param((1,), id="v1"), pytest.param(V2, id="v2")]


@pytest.mark.parametrize(
    "versions",
    both_versions(
        "a server must bundle only up to the client's limit, which the client's Hello names "
        "(max_frame), not up to its own, or a burst of small messages queued together "
        "arrives as one frame the client refuses (frame_too_large)"
    ),
)
async def test_a_client_with_a_small_frame_limit_gets_a_burst_of_small_messages(
    versions: tuple[int, ...], nursery: trio.Nursery
) -> None:
    url = await serve(nursery, "tcp", BurstServer())  # the server's limit: the default
    count = 2000  # about 40 kB of Delivers, queued then flushed once
    with trio.fail_after(10):
        hello = Hello(mid=0, role="client", versions=versions)
        async with runtime.open_connection(url, hello=hello, max_frame_size=4096) as conn:
            conn.send_nowait(publish(conn, count, subject="burst.queued"))
            received: list[Message] = []
            try:
                while len(received) < count:
                    received += await conn.receive_some()
            except runtime.ConnectionClosed as exc:
                pytest.fail(f"the burst did not arrive: {exc!r}")
            assert [m.payload for m in received] == list(range(count))


@pytest.mark.parametrize(
    "versions",
    both_versions(
        "a client must bundle only up to the server's limit: a Welcome that does not name "
        "max_frame gets the server's own limit filled in by the connection"
    ),
)
async def test_a_server_with_a_small_frame_limit_gets_a_burst_of_small_messages(
    versions: tuple[int, ...], nursery: trio.Nursery
) -> None:
    server = BurstServer()  # its Welcome does not name max_frame
    url = await serve(nursery, "tcp", server, max_frame_size=4096)
    count = 2000
    with trio.fail_after(10):
        hello = Hello(mid=0, role="client", versions=versions)
        async with runtime.open_connection(url, hello=hello) as conn:
            conn.send_many_nowait([publish(conn, i, subject="note") for i in range(count)])
            conn.send_nowait(publish(conn, "end", subject="echo"))
            try:
                echo = await conn.receive()
            except runtime.ConnectionClosed as exc:
                pytest.fail(f"the burst did not arrive: {exc!r}")
            assert type(echo) is Deliver, f"the burst did not arrive: {echo!r}"
            assert echo.payload == "end"
    assert [m.payload for m in server.received] == [*range(count), "end"]


# ---------------------------------------------------------------------------------------
# 3. queue_nowait and flush.


@pytest.mark.parametrize("scheme", SCHEMES)
async def test_queued_messages_wait_for_flush(scheme: str) -> None:
    with trio.fail_after(10):
        async with client_to_raw_server(scheme) as (conn, raw):
            writes = spy_on_writes(conn)
            await trio.testing.wait_all_tasks_blocked()
            assert len(conn._outgoing._writer_lot) == 1  # the writer task waits for work
            conn.flush()  # nothing queued: nothing to do
            assert len(conn._outgoing._writer_lot) == 1

            messages = [publish(conn, i) for i in range(5)]
            for message in messages:
                conn.queue_nowait(message)
            assert len(conn._outgoing._items) == 5
            assert len(conn._outgoing._writer_lot) == 1  # not woken
            with trio.move_on_after(0.2):
                await raw.read_chunk()
                pytest.fail("the peer received queued messages before flush")
            assert raw.bodies == [] and len(conn._outgoing._items) == 5

            conn.flush()
            if scheme == "tcp":
                # Written at once by this call: the writer task was neither woken nor used.
                assert (
                    conn._outgoing._items == []
                    and conn._outgoing._pending == []
                    and conn._outgoing.queued_bytes == 0
                )
                assert len(conn._outgoing._writer_lot) == 1
            else:
                # A WebSocket has no direct write: flush wakes the writer.
                assert len(conn._outgoing._writer_lot) == 0
            assert await raw.read_messages(5) == messages
            assert raw.per_frame == [5]  # one bundle
            assert writes == ([] if scheme == "tcp" else [1])


async def test_a_flush_larger_than_the_socket_takes_is_finished_by_the_writer_in_order() -> None:
    with trio.fail_after(10):
        async with client_to_raw_server("tcp") as (conn, raw):
            # A small send buffer, and a peer that does not read yet: the socket takes only
            # a small part of 4 MiB at once.
            conn._wire._sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 256 * 1024)
            writes = spy_on_writes(conn)
            await trio.testing.wait_all_tasks_blocked()
            big = [publish(conn, i.to_bytes(2, "big") * 16 * 1024) for i in range(128)]
            for message in big:
                conn.queue_nowait(message)
            total = conn._outgoing.queued_bytes
            assert total > 4 * 2**20

            conn.flush()
            # Part went out; the rest (cut anywhere in a frame) is left for the writer, woken.
            assert conn._outgoing._items == [] and len(conn._outgoing._pending) == 1
            assert 0 < conn._outgoing.queued_bytes == len(conn._outgoing._pending[0]) < total
            assert len(conn._outgoing._writer_lot) == 0 and writes == []

            # Queued and flushed before the writer ran: not tried again while the socket is
            # full (each try would join the whole backlog again), left for the writer.
            second = [publish(conn, ["second", i]) for i in range(10)]
            for message in second:
                conn.queue_nowait(message)
            conn.flush()
            assert len(conn._outgoing._items) == 10 and len(conn._outgoing._pending) == 1

            # The writer takes both, in one write (the rest, then the second's bundle), and
            # waits for room; what is flushed now waits for it.
            await trio.testing.wait_all_tasks_blocked()
            assert (
                writes == [2]
                and conn._outgoing.inflight_bytes > 0
                and conn._outgoing._pending == []
            )
            assert conn._outgoing._items == []
            third = [publish(conn, ["third", i]) for i in range(10)]
            for message in third:
                conn.send_nowait(message)
            conn.flush()
            assert (
                len(conn._outgoing._items) == 10
            )  # not written past the writer's unfinished write

            # The peer reads, slowly: every byte arrives, in order.
            while len(raw.messages) < len(big) + 20:
                assert await raw.read_chunk()
                await trio.lowlevel.checkpoint()
            assert raw.messages == big + second + third
            await trio.testing.wait_all_tasks_blocked()
            assert writes == [2, 1]  # the rest and the second, then what was queued behind them
            assert conn._outgoing.queued_bytes == conn._outgoing.inflight_bytes == 0


# ---------------------------------------------------------------------------------------
# 4. send_nowait writes at once every flush_every messages.


@pytest.mark.parametrize("every", [4, DEFAULT_FLUSH_EVERY])
async def test_send_nowait_writes_at_once_every_flush_every_messages(every: int) -> None:
    with trio.fail_after(10):
        async with client_to_raw_server("tcp") as (conn, raw):
            if every != DEFAULT_FLUSH_EVERY:
                conn._outgoing.flush_every = (
                    every  # (the connection keeps the setting it was built with)
                )
            assert conn._outgoing.flush_every == every
            writes = spy_on_writes(conn)
            await trio.testing.wait_all_tasks_blocked()
            count = 2 * every + 2
            messages = [publish(conn, i) for i in range(count)]
            for i, message in enumerate(messages):
                conn.send_nowait(message)
                # Queued until the every-th, which writes them all at once.
                assert len(conn._outgoing._items) == (i + 1) % every
            # The last two wait for the writer (woken by the first message).
            assert conn._outgoing.queued_bytes == sum(map(len, conn._outgoing._items))
            assert writes == [] and len(conn._outgoing._writer_lot) == 0
            assert await raw.read_messages(count) == messages
            assert raw.per_frame == [every, every, 2]
            assert writes == [1]


# ---------------------------------------------------------------------------------------
# 5. dispatch_to, on a server connection fed by a raw client over memory.


@asynccontextmanager
async def server_with_raw_client(**kw: Any) -> AsyncIterator[tuple[Connection, RawPeer]]:
    """A server connection after the handshake (version 2) and the raw client it talks to."""
    a, b = trio.testing.memory_stream_pair()
    conn = Connection(StreamWire(a), Session(side="server"), "memory://client", "tcp", **kw)
    peer = RawPeer(StreamWire(b))
    with trio.fail_after(10):  # (virtual seconds: these tests run on the autojump clock)
        async with running(conn):
            await peer.send(Hello(mid=0, role="client", versions=V2))
            hello = await conn.receive()
            assert type(hello) is Hello
            conn.send_nowait(Welcome(mid=conn.next_mid(), cid=hello.mid, version=2))
            (welcome,) = await peer.read_messages(1)
            assert type(welcome) is Welcome and is_map(peer.bodies[0])
            peer.clear()
            yield conn, peer


@attrs.define
class Dispatch:
    """Runs ``conn.dispatch_to`` and records the batches handed over and how it ended."""

    close_on_first: bool = False
    batches: list[list[Message]] = attrs.field(factory=list)
    ending: runtime.ConnectionClosed | None = None
    done: trio.Event = attrs.field(factory=trio.Event)

    async def run(self, conn: Connection) -> None:
        def handler(batch: list[Message]) -> None:
            self.batches.append(list(batch))
            if self.close_on_first:
                conn.close_soon()

        try:
            await conn.dispatch_to(handler)
        except runtime.ConnectionClosed as exc:
            self.ending = exc
        finally:
            self.done.set()


def publishes(count: int) -> list[Publish]:
    return [Publish(mid=i, subject="a.b", payload=i) for i in range(1, count + 1)]


async def test_dispatch_to_hands_over_what_waits_then_each_batch_in_order(
    autojump_clock: trio.testing.MockClock,
) -> None:
    pubs = publishes(9)
    dispatch = Dispatch()
    async with server_with_raw_client() as (conn, peer), trio.open_nursery() as nursery:
        await peer.send_bundle(*pubs[0:3])
        await trio.testing.wait_all_tasks_blocked()
        assert await conn.receive() == pubs[0]  # the other two wait in conn._ready
        await peer.send_bundle(pubs[3], Ping(mid=100), pubs[4], Pong(mid=101, cid=1))
        await trio.testing.wait_all_tasks_blocked()
        assert conn._ready and conn._inbox  # messages wait in both places

        nursery.start_soon(dispatch.run, conn)
        await trio.testing.wait_all_tasks_blocked()
        assert dispatch.batches == [pubs[1:5]]  # everything that waited, first, in order
        assert not conn._ready and not conn._inbox

        await peer.send_bundle(pubs[5], Ping(mid=102), pubs[6])
        await trio.testing.wait_all_tasks_blocked()
        await peer.send(pubs[7])  # a plain frame
        await trio.testing.wait_all_tasks_blocked()
        assert dispatch.batches == [pubs[1:5], pubs[5:7], [pubs[7]]]
        assert not dispatch.done.is_set()
        assert not conn._inbox and not conn._ready  # handed over, not kept as well

        await peer.send_bundle(pubs[8], Bye(mid=103, reason="done"))
        await dispatch.done.wait()
        rest = await peer.read_until_closed()  # the server, told Bye, closes

    assert dispatch.batches[-1] == [pubs[8]]
    assert all(dispatch.batches)
    assert [m for batch in dispatch.batches for m in batch] == pubs[1:]
    ending = dispatch.ending
    assert ending is not None and ending.clean and ending.code is None
    assert "Bye" in ending.reason and "done" in ending.reason
    # The pings were answered (bundled), not handed over; no Bye comes back.
    assert [(type(m), m.cid) for m in rest] == [(Pong, 100), (Pong, 102)]
    assert all(map(is_array, peer.bodies))


async def test_dispatch_to_raises_when_the_peer_goes_without_bye(
    autojump_clock: trio.testing.MockClock,
) -> None:
    pubs = publishes(2)
    dispatch = Dispatch()
    async with server_with_raw_client() as (conn, peer), trio.open_nursery() as nursery:
        nursery.start_soon(dispatch.run, conn)
        await trio.testing.wait_all_tasks_blocked()
        assert dispatch.batches == []  # nothing waited: no empty batch
        await peer.send_bundle(*pubs)
        await peer.wire.aclose()
        await dispatch.done.wait()
    assert dispatch.batches == [pubs]
    assert dispatch.ending is not None and not dispatch.ending.clean
    assert "without Bye" in dispatch.ending.reason


async def test_dispatch_to_after_the_close_hands_over_what_waits_then_raises(
    autojump_clock: trio.testing.MockClock,
) -> None:
    pubs = publishes(2)
    async with server_with_raw_client() as (conn, peer):
        await peer.send_bundle(*pubs, Bye(mid=9, reason="done"))
        assert await peer.read_until_closed() == []
        assert conn.closed
        first, again = Dispatch(), Dispatch()
        await first.run(conn)
        await again.run(conn)
    assert first.batches == [pubs]
    assert again.batches == []
    for dispatch in (first, again):
        assert dispatch.ending is not None and dispatch.ending.clean


@pytest.mark.parametrize("when", ["waiting", "live"])
async def test_a_handler_that_closes_the_connection_stops_dispatch(
    when: str, autojump_clock: trio.testing.MockClock
) -> None:
    pubs = publishes(4)
    dispatch = Dispatch(close_on_first=True)
    async with (
        server_with_raw_client(close_timeout=3) as (conn, peer),
        trio.open_nursery() as nursery,
    ):
        if when == "waiting":
            await peer.send_bundle(*pubs[:2])
            await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(dispatch.run, conn)
        if when == "live":
            await trio.testing.wait_all_tasks_blocked()
            await peer.send_bundle(*pubs[:2])
        await dispatch.done.wait()
        assert dispatch.batches == [pubs[:2]]
        assert dispatch.ending is not None and dispatch.ending.clean
        assert dispatch.ending.reason == "closed locally"
        # What arrives now is not handed over.
        await peer.send_bundle(*pubs[2:])
        await trio.testing.wait_all_tasks_blocked()
        assert dispatch.batches == [pubs[:2]]
        # The client is told Bye (bundled) and goes; the server does not linger.
        (bye,) = await peer.read_messages(1)
        assert type(bye) is Bye and is_array(peer.bodies[0])
        await peer.wire.aclose()
        with trio.fail_after(1):  # under close_timeout
            await conn.aclose()


# ---------------------------------------------------------------------------------------
# 6. Bye while bundling.


@pytest.mark.parametrize("scheme", SCHEMES)
async def test_a_client_closing_after_a_burst_closes_cleanly_on_both_sides(
    scheme: str, nursery: trio.Nursery
) -> None:
    server = BurstServer()
    url = await serve(nursery, scheme, server)
    count = 500
    with trio.fail_after(10):
        hello = Hello(mid=0, role="client", versions=V2)
        async with runtime.open_connection(url, hello=hello, close_timeout=5) as conn:
            assert conn._outgoing.bundling
            for i in range(count):
                conn.send_nowait(publish(conn, i))
            start = trio.current_time()
        # The Bye went after them; the server closed at once, so no linger to the timeout.
        assert trio.current_time() - start < 2
        await server.ended.wait()
    assert server.endings == ["clean"]
    assert [m.payload for m in server.received] == list(range(count))
    with pytest.raises(runtime.ConnectionClosed) as info:
        await conn.receive()
    assert info.value.clean


@pytest.mark.parametrize("scheme", SCHEMES)
async def test_a_server_closing_after_a_burst_closes_cleanly_on_both_sides(
    scheme: str, nursery: trio.Nursery
) -> None:
    server = BurstServer()
    url = await serve(nursery, scheme, server)
    count = 500
    with trio.fail_after(10):
        hello = Hello(mid=0, role="client", versions=V2)
        async with runtime.open_connection(url, hello=hello) as conn:
            conn.send_nowait(publish(conn, count, subject="burst.close"))
            received = [m async for m in conn]  # ends only on a clean close
            assert [m.payload for m in received] == list(range(count))
            with pytest.raises(runtime.ConnectionClosed) as info:
                await conn.receive()
            assert info.value.clean and info.value.code is None
            assert "Bye" in info.value.reason
        await server.ended.wait()
    assert server.endings == ["closed"]


async def test_an_application_bye_while_bundling_is_sent_once_after_the_rest() -> None:
    with trio.fail_after(10):
        async with client_to_raw_server("tcp") as (conn, raw):
            messages = [publish(conn, i) for i in range(20)]
            for message in messages:
                conn.send_nowait(message)
            bye = Bye(mid=conn.next_mid(), reason="draining")
            conn.send_nowait(bye)
            queued = list(conn._outgoing._items)
            conn.close_soon()  # the application said Bye already: nothing more to send
            assert conn.closed and conn._outgoing._items == queued
            # (a second Bye would come in the same bundle as the first)
            assert await raw.read_messages(21) == [*messages, bye]
            assert all(map(is_array, raw.bodies))
            # The client lingers for the peer, told Bye, to go; then the close ends.
            await raw.wire.aclose()
            with trio.fail_after(1):  # under close_timeout
                await conn.aclose()
            assert raw.messages == [*messages, bye]


# ---------------------------------------------------------------------------------------
# The WebSocket reader: one frame per message (a bundle is one frame).


@pytest.mark.parametrize("bad", ["two frames", "half a frame", "a frame and a half"])
async def test_a_websocket_message_must_hold_exactly_one_frame(
    bad: str, nursery: trio.Nursery
) -> None:
    server = BurstServer()
    url = await serve(nursery, "ws", server)
    with trio.fail_after(10):
        async with raw_client(url) as raw:
            await raw.send(Hello(mid=0, role="client", versions=V2))
            await raw.read_messages(1)
            raw.clear()
            # One bundle of twenty messages is one frame: fine.
            await raw.send_bundle(
                *[Publish(mid=i, subject="echo", payload=i) for i in range(1, 21)]
            )
            echoes = await raw.read_messages(20)
            assert [m.payload for m in echoes] == list(range(1, 21))
            raw.clear()
            frame = protocol.encode(Publish(mid=21, subject="echo", payload=21))
            data = {
                "two frames": frame + frame,
                "half a frame": frame[:-1],
                "a frame and a half": frame + frame[:-1],
            }[bad]
            await raw.wire._ws.send_message(data)
            (error,) = await raw.read_messages(1)
            assert type(error) is Error and error.code == ErrorCode.BAD_FRAME
        # (the server lingers until the client, told the error, goes)

        await server.ended.wait()
    assert isinstance(server.endings[0], runtime.ConnectionClosed)
    assert server.endings[0].code == ErrorCode.BAD_FRAME


# ---------------------------------------------------------------------------------------
# The Welcome itself is a plain frame, however it is sent.


@pytest.mark.parametrize(
    "how",
    [
        "send_nowait",
        # (send() once re-encoded the Welcome as a bundle item: the Welcome itself turns
        # bundling on, which looked like "the handshake ended while waiting")
        "send",
    ],
)
async def test_the_welcome_is_a_plain_frame(
    how: str, autojump_clock: trio.testing.MockClock
) -> None:
    a, b = trio.testing.memory_stream_pair()
    conn = Connection(StreamWire(a), Session(side="server"), "memory://client", "tcp")
    peer = RawPeer(StreamWire(b))
    with trio.fail_after(10):
        async with running(conn):
            await peer.send(Hello(mid=0, role="client", versions=V2))
            hello = await conn.receive()
            welcome = Welcome(mid=conn.next_mid(), cid=hello.mid, version=2)
            if how == "send":
                await conn.send(welcome)
            else:
                conn.send_nowait(welcome)
            conn.send_nowait(Deliver(mid=conn.next_mid(), sid=0, subject="a.b"))
            assert [type(m) for m in await peer.read_messages(2)] == [Welcome, Deliver]
            assert conn._outgoing.bundling
            assert peer.per_frame == [1, 1]
            assert is_map(peer.bodies[0]) and is_array(peer.bodies[1])
            conn._abort("test over")


# ---------------------------------------------------------------------------------------
# A handler that raises is a failure of the application, whatever it raises: it ends
# this connection (an internal error), never anything else.


@pytest.mark.parametrize(
    "error",
    [
        ValueError("bug"),
        runtime.ConnectionClosed("not this connection's"),
        protocol.InvalidField("not from this peer"),
        trio.BrokenResourceError("some other stream"),
    ],
    ids=lambda e: type(e).__name__,
)
async def test_a_handler_that_raises_ends_the_connection_with_an_internal_error(
    error: Exception, caplog: pytest.LogCaptureFixture, autojump_clock: trio.testing.MockClock
) -> None:
    # Even exceptions the reader would take for the connection's own end (closed, a
    # protocol error, a broken stream) are the handler's failure: the peer is told
    # "internal" and the application sees the connection end, the exception its cause.
    a, b = trio.testing.memory_stream_pair()
    conn = Connection(StreamWire(a), Session(side="server"), "memory://client", "tcp")
    peer = RawPeer(StreamWire(b))

    def handler(batch: list[Message]) -> None:
        raise error

    async def peer_side() -> None:
        await peer.send(Publish(mid=1, subject="a.b"))
        await peer.read_until_closed()  # (the server lingers until its close_timeout)

    with trio.fail_after(10):
        async with running(conn):
            await peer.send(Hello(mid=0, role="client", versions=V2))
            hello = await conn.receive()
            conn.send_nowait(Welcome(mid=conn.next_mid(), cid=hello.mid, version=2))
            async with trio.open_nursery() as nursery:
                nursery.start_soon(peer_side)
                with pytest.raises(runtime.ConnectionClosed) as info:
                    await conn.dispatch_to(handler)
    assert info.value.code == ErrorCode.INTERNAL and not info.value.clean
    assert info.value.__cause__ is error and conn.failure is error
    assert [type(m) for m in peer.messages] == [Welcome, Error, Bye]
    assert peer.messages[1].code == ErrorCode.INTERNAL
    assert peer.messages[1].message == f"internal error: {type(error).__name__}"
    (record,) = [r for r in caplog.records if r.name == "runtime.connection"]
    assert record.exc_info is not None and record.exc_info[1] is error
    assert "memory://client" in record.getMessage()
