"""Containment per connection: what fails while serving one peer ends that connection only.

An exception of ours -- in ``serve``'s handler, in a ``dispatch_to`` handler, in the writer
(the wire raising something that is not a lost transport), in the heartbeat -- gets the
peer an ``internal`` Error and a close, is logged once with its traceback, and the
application's handler sees :class:`runtime.ConnectionClosed` with ``code="internal"``;
``serve`` and every other connection go on. Plus: control messages and bundles never raise
in the writer because of a peer's (absurdly small) frame limit.

The client's side of the same rule: a failure of its own dispatch fails the calls waiting
on that connection with ``ConnectionLost`` and it reconnects; a refusal for good fails
every call; nothing escapes into the user's nursery.

Real loopback sockets (real time, each test capped) for ``serve``; memory streams under the
autojump clock for the connection alone.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import attrs
import pytest
import trio
import trio.testing

import actors
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
    Result,
    Session,
    Submit,
    Welcome,
    decode_payload,
)
from runtime._connection import Connection
from runtime._transports import running
from runtime._wire import SocketWire, StreamWire

V2 = protocol.SUPPORTED_VERSIONS
MODES = ["handler", "group", "dispatch", "writer", "flush", "heartbeat"]
#: What a payload carries to make the patched socket wire fail on the way out.
EXPLODE = b"explode!"


class WireBug(Exception):
    """Raised by the patched wire: an exception that is not a lost transport."""


@attrs.define
class Server:
    """Welcomes, echoes each Publish as a Deliver; fails on the connection named "doomed",
    at ``subject == "boom"``, the way ``mode`` says. Records how each handler ended."""

    mode: str
    endings: dict[str, BaseException | str] = attrs.field(factory=dict)
    doomed_sessions: set[int] = attrs.field(factory=set)

    async def __call__(self, conn: runtime.Connection) -> None:
        hello = await conn.receive()
        assert type(hello) is Hello
        name = hello.name or "?"
        doomed = name == "doomed"
        mode = self.mode
        conn.send_nowait(
            Welcome(mid=conn.next_mid(), cid=hello.mid, version=2, heartbeat=conn.session.heartbeat)
        )
        if doomed and mode == "heartbeat":
            self.doomed_sessions.add(id(conn.session))

        def echo(msg: Message) -> None:
            if type(msg) is not Publish:
                return
            payload = msg.payload
            if doomed and msg.subject == "boom":
                if mode in ("handler", "dispatch"):
                    raise ValueError(f"{mode} bug")
                if mode == "group":
                    raise ExceptionGroup("bugs", [ValueError("one"), KeyError("two")])
                payload = EXPLODE  # (writer, flush: only this side ever writes it)
            deliver = Deliver(mid=conn.next_mid(), sid=0, subject=msg.subject, payload=payload)
            if mode == "flush":  # the leader's way: queue, then write at once (try_send)
                conn.queue_nowait(deliver)
                conn.flush()
            else:
                conn.send_nowait(deliver)

        try:
            if mode == "dispatch":
                await conn.dispatch_to(lambda batch: [echo(m) for m in batch])
            else:
                async for msg in conn:
                    echo(msg)
        except runtime.ConnectionClosed as exc:
            self.endings[name] = "clean" if exc.clean else exc  # (dispatch_to always raises)
            raise
        except BaseException as exc:
            self.endings[name] = exc
            raise
        self.endings[name] = "clean"


@pytest.fixture
def patched_wire(monkeypatch: pytest.MonkeyPatch) -> None:
    """The socket wire raises :class:`WireBug` for any write that carries ``EXPLODE``
    (only the server writes it: see :class:`Server`)."""
    send_frames = SocketWire.send_frames
    try_send = SocketWire.try_send

    async def failing_send_frames(self: SocketWire, frames: list[bytes]) -> None:
        if any(EXPLODE in frame for frame in frames):
            raise WireBug("cannot write this")
        await send_frames(self, frames)

    def failing_try_send(self: SocketWire, data: bytes) -> int:
        if EXPLODE in data:
            raise WireBug("cannot write this either")
        return try_send(self, data)

    monkeypatch.setattr(SocketWire, "send_frames", failing_send_frames)
    monkeypatch.setattr(SocketWire, "try_send", failing_try_send)


@pytest.fixture
def patched_heartbeat(monkeypatch: pytest.MonkeyPatch) -> set[int]:
    """Sessions whose id is put in the returned set raise from their heartbeat timer."""
    doomed: set[int] = set()
    handle_timer = Session.handle_timer

    def failing_handle_timer(self: Session, now: float) -> Any:
        if id(self) in doomed:
            raise LookupError("heartbeat bug")
        return handle_timer(self, now)

    monkeypatch.setattr(Session, "handle_timer", failing_handle_timer)
    return doomed


def connect(url: str, name: str) -> Any:
    return runtime.open_connection(url, hello=Hello(mid=0, role="client", name=name, versions=V2))


async def echoes(conn: runtime.Connection, payload: Any) -> None:
    await conn.send(Publish(mid=conn.next_mid(), subject="echo", payload=payload))
    answer = await conn.receive()
    assert type(answer) is Deliver and answer.payload == payload


def runtime_errors(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [
        r for r in caplog.records if r.name.startswith("runtime") and r.levelno >= logging.ERROR
    ]


@pytest.mark.parametrize("mode", MODES)
async def test_a_failure_serving_one_connection_ends_that_connection_only(
    mode: str,
    nursery: trio.Nursery,
    caplog: pytest.LogCaptureFixture,
    patched_wire: None,
    patched_heartbeat: set[int],
) -> None:
    server = Server(mode)
    server.doomed_sessions = patched_heartbeat
    heartbeat = 0.2 if mode == "heartbeat" else None
    url = await nursery.start(
        functools.partial(runtime.serve, "tcp://127.0.0.1:0", server, heartbeat=heartbeat)
    )
    with trio.fail_after(10):
        async with connect(url, "before") as before:
            await echoes(before, 1)
            async with connect(url, "doomed") as doomed:
                await echoes(doomed, 2)  # fine until it fails
                if mode != "heartbeat":  # (its heartbeat fails by itself, soon)
                    await doomed.send(Publish(mid=doomed.next_mid(), subject="boom"))
                error = await doomed.receive()
                assert type(error) is Error and error.code == ErrorCode.INTERNAL
                expected = {
                    "handler": "ValueError",
                    "group": "ExceptionGroup",
                    "dispatch": "ValueError",
                    "writer": "WireBug",
                    "flush": "WireBug",
                    "heartbeat": "LookupError",
                }[mode]
                assert error.message == f"internal error: {expected}"
                with pytest.raises(runtime.ConnectionClosed) as info:
                    await doomed.receive()
                assert info.value.code == ErrorCode.INTERNAL and not info.value.clean
            # The connection opened before goes on; serve accepts new ones.
            await echoes(before, 3)
            async with connect(url, "after") as after:
                await echoes(after, 4)
            await echoes(before, 5)

    ending = server.endings["doomed"]
    if mode in ("handler", "group"):
        assert type(ending).__name__ == expected  # it raised that itself
    else:
        # The application's handler saw its connection end, and its finally-blocks ran.
        assert isinstance(ending, runtime.ConnectionClosed)
        assert ending.code == ErrorCode.INTERNAL and type(ending.__cause__).__name__ == expected
    assert server.endings["after"] == "clean"
    (record,) = runtime_errors(caplog)  # logged exactly once, with its traceback
    assert record.exc_info is not None and type(record.exc_info[1]).__name__ == expected
    assert "tcp://127.0.0.1:" in record.getMessage()


@pytest.mark.parametrize("scheme", ["ws", "tcp"])
async def test_a_handler_that_raises_before_its_welcome(
    scheme: str, nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    async def handler(conn: runtime.Connection) -> None:
        await conn.receive()
        raise RuntimeError("no Welcome for you")

    url = await nursery.start(runtime.serve, f"{scheme}://127.0.0.1:0", handler)
    for _ in range(2):  # and again: serve is still there
        with trio.fail_after(10), pytest.raises(runtime.HandshakeError) as info:
            async with connect(url, "x"):
                pass  # pragma: no cover
        assert info.value.code == ErrorCode.INTERNAL
        assert info.value.message == "internal error: RuntimeError"
    assert len(runtime_errors(caplog)) == 2


async def test_a_group_of_connection_closed_is_the_connection_s_end(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    ended = trio.Event()

    async def handler(conn: runtime.Connection) -> None:
        try:
            hello = await conn.receive()
            conn.send_nowait(Welcome(mid=conn.next_mid(), cid=hello.mid, version=2))
            async with trio.open_nursery() as inner:
                inner.start_soon(conn.receive)  # raises ConnectionClosed when the peer goes
        finally:
            ended.set()

    url = await nursery.start(runtime.serve, "tcp://127.0.0.1:0", handler)
    with trio.fail_after(10):
        async with connect(url, "x"):
            pass
        await ended.wait()
    assert runtime_errors(caplog) == []


# ---------------------------------------------------------------------------------------
# The connection alone, over memory.


class BrokenWire:
    """A wire whose writes always fail with an exception that is not a lost transport."""

    whole_frames = False

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.inner = StreamWire(stream)
        self.attempts = 0

    async def send_frames(self, frames: list[bytes]) -> None:
        self.attempts += 1
        raise WireBug("always")

    async def receive(self) -> bytes | bytearray | None:
        return await self.inner.receive()

    async def aclose(self) -> None:
        await self.inner.aclose()

    async def aclose_forcefully(self) -> None:
        await self.inner.aclose_forcefully()


async def test_a_wire_that_always_fails_closes_the_connection_once(
    caplog: pytest.LogCaptureFixture, autojump_clock: trio.testing.MockClock
) -> None:
    a, b = trio.testing.memory_stream_pair()
    wire = BrokenWire(a)
    conn = Connection(wire, Session(side="server"), "memory://peer", "tcp")
    with trio.fail_after(10):
        async with running(conn):
            await b.send_all(protocol.encode(Hello(mid=0, role="client")))
            hello = await conn.receive()
            conn.send_nowait(Welcome(mid=conn.next_mid(), cid=hello.mid, version=1))
            with pytest.raises(runtime.ConnectionClosed) as info:
                await conn.receive()
    assert info.value.code == ErrorCode.INTERNAL and isinstance(info.value.__cause__, WireBug)
    assert wire.attempts == 2  # the Welcome, then the Error telling so: then it gave up
    assert len(runtime_errors(caplog)) == 1
    assert await b.receive_some(100) == b""  # closed


async def test_a_failure_in_receive_mode_reaches_the_application(
    caplog: pytest.LogCaptureFixture, autojump_clock: trio.testing.MockClock
) -> None:
    # A bug in the reader itself (here: the session) ends the connection the same way.
    a, b = trio.testing.memory_stream_pair()

    class BuggySession(Session):
        def receive(self, message: Message, now: float) -> None:
            if type(message) is Publish:
                raise ZeroDivisionError("reader bug")
            super().receive(message, now)

    conn = Connection(StreamWire(a), BuggySession(side="server"), "memory://peer", "tcp")
    with trio.fail_after(10):
        async with running(conn):
            await b.send_all(protocol.encode(Hello(mid=0, role="client")))
            hello = await conn.receive()
            conn.send_nowait(Welcome(mid=conn.next_mid(), cid=hello.mid, version=1))
            await b.send_all(protocol.encode(Publish(mid=1, subject="a.b")))
            with pytest.raises(runtime.ConnectionClosed) as info:
                await conn.receive()
            received = protocol.FrameDecoder().feed(await b.receive_some(65536))
    assert info.value.code == ErrorCode.INTERNAL
    assert [type(m) for m in received][-2:] == [Error, Bye]
    assert received[-2].code == ErrorCode.INTERNAL
    (record,) = runtime_errors(caplog)
    assert "memory://peer" in record.getMessage()


# ---------------------------------------------------------------------------------------
# A peer whose frame limit is too small for our control messages.


@asynccontextmanager
async def bundling_server(send_limit: int) -> AsyncIterator[tuple[Connection, Any]]:
    """A server connection after a version 2 handshake, whose peer's limit is forced
    below what any protocol floor would allow (the runtime must not rely on one)."""
    a, b = trio.testing.memory_stream_pair()
    conn = Connection(
        StreamWire(a), Session(side="server"), "memory://peer", "tcp", close_timeout=1
    )
    async with running(conn):
        await b.send_all(protocol.encode(Hello(mid=0, role="client", versions=V2)))
        hello = await conn.receive()
        conn.send_nowait(Welcome(mid=conn.next_mid(), cid=hello.mid, version=2))
        assert conn._outgoing.bundling
        conn._outgoing.send_limit = send_limit
        yield conn, b


async def read_frames(stream: trio.abc.Stream) -> list[bytes]:
    """Every frame body until the stream ends."""
    data = b""
    while chunk := await stream.receive_some(65536):
        data += chunk
    bodies = []
    while data:
        size = int.from_bytes(data[:4], "big")
        bodies.append(data[5 : 5 + size])
        data = data[5 + size :]
    return bodies


async def test_control_messages_over_a_tiny_peer_limit_go_alone_and_never_raise(
    caplog: pytest.LogCaptureFixture, autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(10):
        async with bundling_server(send_limit=17) as (conn, peer):
            with pytest.raises(runtime.MessageTooLarge):  # what the application sends: refused
                conn.send_nowait(Publish(mid=conn.next_mid(), subject="a.longer.subject"))
            conn._outgoing.send_control(
                Pong(mid=conn.next_mid(), cid=1)
            )  # 4 bytes as an item, Ping 3
            conn._outgoing.send_control(Ping(mid=conn.next_mid()))
            conn.close_soon(
                Error(mid=conn.next_mid(), code=ErrorCode.BUSY, message="a long reason" * 3)
            )
            bodies = await read_frames(peer)
    frames = b"".join(len(body).to_bytes(4, "big") + b"\x00" + body for body in bodies[1:])
    messages = protocol.FrameDecoder().feed(frames)
    assert [type(m) for m in messages] == [Pong, Ping, Error, Bye]
    # The Pong and Ping share a bundle within the limit; the Error and the Bye (whose
    # reason repeats the Error's) are over it, each alone.
    assert [len(body) <= 17 for body in bodies[1:]] == [True, False, False]
    assert runtime_errors(caplog) == []


# ---------------------------------------------------------------------------------------
# The client side: its background task never raises into the user's code, never hangs.


@attrs.define
class StandIn:
    """A stand-in leader: answers each Submit with its payload, except subject "hold"
    (never answered); refuses Hellos with ``refuse`` once set. Records Errors received."""

    refuse: str | None = None
    errors: list[Error] = attrs.field(factory=list)
    sessions: int = 0

    async def __call__(self, conn: runtime.Connection) -> None:
        hello = await conn.receive()
        if self.refuse is not None:
            await conn.aclose(
                Error(mid=conn.next_mid(), cid=hello.mid, code=self.refuse, message="no")
            )
            return
        self.sessions += 1
        conn.send_nowait(Welcome(mid=conn.next_mid(), cid=hello.mid, version=2))
        async for msg in conn:
            if type(msg) is Error:
                self.errors.append(msg)
            elif type(msg) is Submit and msg.subject != "hold":
                conn.send_nowait(
                    Result(mid=conn.next_mid(), cid=msg.mid, job_id=msg.job_id, payload=msg.payload)
                )


class BuggyClient(actors.Client):
    """A client whose handling of a result fails for the payload "poison"."""

    def _dispatch(self, msg: Any) -> None:
        if type(msg) is Result and decode_payload(msg.payload) == "poison":
            raise ArithmeticError("client bug")
        super()._dispatch(msg)


async def test_a_failure_in_the_client_s_dispatch_fails_the_waiting_calls_and_reconnects(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    leader = StandIn()
    url = await nursery.start(runtime.serve, "tcp://127.0.0.1:0", leader)
    fast = runtime.Backoff(base=0.01, factor=2.0, cap=0.05, jitter=0.0)
    outcomes: dict[str, BaseException] = {}

    async def submit(subject: str, payload: Any) -> None:
        try:
            await client.submit(subject, payload)
        except actors.ConnectionLost as exc:
            outcomes[subject] = exc

    with trio.fail_after(10):
        async with BuggyClient.connect(url, reconnect_backoff=fast) as client:
            assert await client.submit("echo", 1) == 1
            async with trio.open_nursery() as calls:
                calls.start_soon(submit, "hold", None)  # waits: never answered
                await trio.testing.wait_all_tasks_blocked()
                calls.start_soon(submit, "poison", "poison")
            # Every call that waited on that connection failed with a clear error...
            assert set(outcomes) == {"hold", "poison"}
            for error in outcomes.values():
                assert "internal error" in str(error)
                assert isinstance(error.__cause__, runtime.ConnectionClosed)
            # ... the leader was told, and the client reconnected: new calls work.
            assert await client.submit("echo", 2) == 2
    assert [e.code for e in leader.errors] == [ErrorCode.INTERNAL]
    assert leader.sessions == 2
    (record,) = runtime_errors(caplog)
    assert isinstance(record.exc_info[1], ArithmeticError)  # type: ignore[index]


async def test_a_client_refused_for_good_fails_its_calls_without_raising_into_the_user_s_code(
    nursery: trio.Nursery,
) -> None:
    leader = StandIn()
    url = await nursery.start(runtime.serve, "tcp://127.0.0.1:0", leader)
    fast = runtime.Backoff(base=0.01, factor=2.0, cap=0.05, jitter=0.0)
    with trio.fail_after(10):
        async with actors.Client.connect(url, reconnect_backoff=fast) as client:
            async with trio.open_nursery() as calls:
                waiting: list[BaseException] = []

                async def hold() -> None:
                    with pytest.raises(actors.ConnectionLost) as info:
                        await client.submit("hold")
                    waiting.append(info.value)

                calls.start_soon(hold)
                await trio.testing.wait_all_tasks_blocked()
                leader.refuse = ErrorCode.AUTH_FAILED
                client._conn.close_soon()  # type: ignore[union-attr]  # (reconnects: refused)
            assert "auth_failed" in str(waiting[0])
            with pytest.raises(actors.ConnectionLost):  # and every later call, at once
                await client.submit("echo", 1)
            with pytest.raises(actors.ConnectionLost):
                await client.publish("a.b")
        # The block ended normally: nothing came out of the client's own task.
        with pytest.raises(actors.ConnectionLost, match="auth_failed"):  # plain, not a group
            async with actors.Client.connect(url):
                pass  # pragma: no cover
