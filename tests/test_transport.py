"""Transports: the same conformance suite over tcp, tls, ws and wss on loopback, plus unit
tests of the connection (batching, bounds, closing) over in-memory streams."""

from __future__ import annotations

import contextlib
import functools
import math
import re
import ssl
import struct
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import attrs
import pytest
import trio
import trio.testing
import trustme

import protocol
import runtime
from protocol import (
    Bye,
    Deliver,
    Error,
    ErrorCode,
    Hello,
    Message,
    Publish,
    Session,
    Welcome,
)
from runtime._connection import Connection
from runtime._transports import _dial, client_handshake, running
from runtime._url import parse_url
from runtime._wire import StreamWire

SCHEMES = ["tcp", "tls", "ws", "wss"]


# ---------------------------------------------------------------------------------------
# Fixtures: a server per scheme, and a raw client that writes bytes by hand.


@attrs.frozen
class Certs:
    server: ssl.SSLContext
    client: ssl.SSLContext


@pytest.fixture(scope="module")
def certs() -> Certs:
    ca = trustme.CA()
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(server)
    client = ssl.create_default_context()
    ca.configure_trust(client)
    return Certs(server, client)


@attrs.frozen
class Env:
    """One scheme: how to serve it and how to connect to it."""

    scheme: str
    certs: Certs

    @property
    def secure(self) -> bool:
        return self.scheme in ("tls", "wss")

    async def serve(
        self, nursery: trio.Nursery, handler: Callable[..., Awaitable[Any]], **kw: Any
    ) -> str:
        ssl_context = self.certs.server if self.secure else None
        serve = functools.partial(
            runtime.serve, f"{self.scheme}://127.0.0.1:0", handler, ssl_context=ssl_context, **kw
        )
        return await nursery.start(serve)

    def connect(self, url: str, name: str = "test", **kw: Any) -> Any:
        ssl_context = self.certs.client if self.secure else None
        return runtime.open_connection(
            url, hello=Hello(mid=0, role="client", name=name), ssl_context=ssl_context, **kw
        )

    @asynccontextmanager
    async def raw(self, url: str) -> AsyncIterator[RawClient]:
        """A client that bypasses the protocol layer (TCP, TLS or WebSocket only)."""
        ssl_context = self.certs.client if self.secure else None
        async with trio.open_nursery() as nursery:
            wire, _ = await _dial(
                parse_url(url), nursery, ssl_context, protocol.DEFAULT_MAX_FRAME_SIZE
            )
            try:
                yield RawClient(wire)
            finally:
                await wire.aclose_forcefully()


@attrs.define
class RawClient:
    wire: Any
    decoder: protocol.FrameDecoder = attrs.field(factory=protocol.FrameDecoder)
    backlog: list[Message] = attrs.field(factory=list)

    async def send_bytes(self, *chunks: bytes) -> None:
        await self.wire.send_frames(list(chunks))

    async def send(self, *messages: Message) -> None:
        await self.send_bytes(*(protocol.encode(m) for m in messages))

    async def next_message(self) -> Message | None:
        """The next message from the server; None once it closed the connection."""
        while not self.backlog:
            try:
                data = await self.wire.receive()
            except (trio.BrokenResourceError, runtime.ConnectionClosed):
                return None
            if data is None:
                return None
            self.backlog += self.decoder.feed(data)
        return self.backlog.pop(0)

    async def read_until_closed(self) -> list[Message]:
        """Everything the server sends until it closes the connection."""
        received: list[Message] = []
        while (message := await self.next_message()) is not None:
            received.append(message)
        return received


@pytest.fixture(params=SCHEMES)
def env(request: pytest.FixtureRequest, certs: Certs) -> Env:
    return Env(request.param, certs)


def welcome_for(conn: runtime.Connection, hello: Hello) -> Welcome:
    return Welcome(
        mid=conn.next_mid(),
        cid=hello.mid,
        version=1,
        node="test-leader",
        heartbeat=conn.session.heartbeat,
    )


@attrs.define
class EchoServer:
    """Welcomes, echoes each Publish as a Deliver, obeys ``ctl.*`` subjects; records."""

    hellos: list[Hello] = attrs.field(factory=list)
    peers: list[str] = attrs.field(factory=list)
    endings: list[BaseException | str] = attrs.field(factory=list)
    ended: trio.Event = attrs.field(factory=trio.Event)

    async def __call__(self, conn: runtime.Connection) -> None:
        try:
            hello = await conn.receive()
            assert type(hello) is Hello
            self.hellos.append(hello)
            self.peers.append(conn.peer)
            conn.send_nowait(welcome_for(conn, hello))
            async for msg in conn:
                if type(msg) is not Publish:
                    continue
                if msg.subject == "ctl.bye":
                    await conn.aclose()
                    return
                if msg.subject == "ctl.error":
                    await conn.aclose(
                        Error(mid=conn.next_mid(), code=ErrorCode.BUSY, message="go away")
                    )
                    return
                conn.send_nowait(
                    Deliver(mid=conn.next_mid(), sid=0, subject=msg.subject, payload=msg.payload)
                )
            self.endings.append("clean")
        except runtime.ConnectionClosed as exc:
            self.endings.append(exc)
            raise
        finally:
            self.ended.set()


def publish(conn: runtime.Connection, subject: str = "a.b", payload: Any = None) -> Publish:
    return Publish(mid=conn.next_mid(), subject=subject, payload=payload)


# ---------------------------------------------------------------------------------------
# Conformance: every test here runs over tcp, tls, ws and wss.


async def test_handshake_and_peer_info(env: Env, nursery: trio.Nursery) -> None:
    server = EchoServer()
    url = await env.serve(nursery, server)
    assert url.startswith(f"{env.scheme}://127.0.0.1:") and not url.endswith(":0")
    with trio.fail_after(10):
        async with env.connect(url, name="alice") as conn:
            assert conn.scheme == env.scheme
            assert conn.peer == f"{env.scheme}://127.0.0.1:{parse_url(url).port}"
            assert conn.welcome is not None and conn.welcome.node == "test-leader"
            assert not conn.closed
        await server.ended.wait()
    assert [h.name for h in server.hellos] == ["alice"]
    assert server.peers[0].startswith(f"{env.scheme}://127.0.0.1:")
    assert server.endings == ["clean"]  # our Bye ended the server's loop quietly


async def test_many_messages_round_trip_in_order(env: Env, nursery: trio.Nursery) -> None:
    url = await env.serve(nursery, EchoServer())
    with trio.fail_after(20):
        async with env.connect(url) as conn:
            count = 3000
            for i in range(count):
                conn.send_nowait(publish(conn, payload=i))
            received: list[Message] = []
            while len(received) < count:
                batch = await conn.receive_some()
                assert batch
                received += batch
            assert [m.payload for m in received] == list(range(count))
            assert all(type(m) is Deliver for m in received)


async def test_large_message(env: Env, nursery: trio.Nursery) -> None:
    url = await env.serve(nursery, EchoServer())
    payload = bytes(range(256)) * 8192  # 2 MiB
    with trio.fail_after(20):
        async with env.connect(url) as conn:
            await conn.send(publish(conn, payload=payload))
            echo = await conn.receive()
            assert echo.payload == payload


async def test_queued_messages_are_flushed_before_a_client_close(
    env: Env, nursery: trio.Nursery
) -> None:
    received: list[Message] = []
    done = trio.Event()

    async def handler(conn: runtime.Connection) -> None:
        hello = await conn.receive()
        conn.send_nowait(welcome_for(conn, hello))
        received.extend([msg async for msg in conn])
        done.set()

    url = await env.serve(nursery, handler)
    with trio.fail_after(10):
        async with env.connect(url) as conn:
            conn.send_many_nowait([publish(conn, payload=i) for i in range(500)])
        await done.wait()
    assert [m.payload for m in received] == list(range(500))


async def test_server_bye_ends_client_loop_cleanly(env: Env, nursery: trio.Nursery) -> None:
    url = await env.serve(nursery, EchoServer())
    with trio.fail_after(10):
        async with env.connect(url) as conn:
            conn.send_nowait(publish(conn, payload=1))
            conn.send_nowait(publish(conn, "ctl.bye"))
            received = [msg async for msg in conn]
            assert [m.payload for m in received] == [1]
            with pytest.raises(runtime.ConnectionClosed) as info:
                await conn.receive()
            assert info.value.clean and info.value.code is None
            assert conn.closed
            with pytest.raises(runtime.ConnectionClosed):
                conn.send_nowait(publish(conn))


async def test_server_error_close_reaches_client(env: Env, nursery: trio.Nursery) -> None:
    url = await env.serve(nursery, EchoServer())
    with trio.fail_after(10):
        async with env.connect(url) as conn:
            conn.send_nowait(publish(conn, "ctl.error"))
            error = await conn.receive()
            assert type(error) is Error and error.code == ErrorCode.BUSY
            with pytest.raises(runtime.ConnectionClosed) as info:
                await conn.receive()
            assert info.value.code == ErrorCode.BUSY and not info.value.clean


async def test_bad_bytes_get_an_error_and_a_close_and_the_server_lives_on(
    env: Env, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    server = EchoServer()
    url = await env.serve(nursery, server)
    garbage = struct.pack(">IB", 4, 0) + b"\xff\xfe\xfd\xfc"  # a frame whose body is not CBOR
    with trio.fail_after(10):
        async with env.raw(url) as raw:
            await raw.send_bytes(protocol.encode(Hello(mid=0, role="client")), garbage)
            received = await raw.read_until_closed()
        assert type(received[-1]) is Error
        assert received[-1].code == ErrorCode.BAD_FRAME
        assert received[-1].message  # names the problem
        await server.ended.wait()
        # The Hello before the bad frame still reached the handler.
        assert [h.mid for h in server.hellos] == [0]
        assert isinstance(server.endings[0], runtime.ConnectionClosed)
        assert server.endings[0].code == ErrorCode.BAD_FRAME

        # The listener keeps serving.
        async with env.connect(url) as conn:
            await conn.send(publish(conn, payload="still here"))
            assert (await conn.receive()).payload == "still here"


async def test_first_message_must_be_hello(
    env: Env, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    url = await env.serve(nursery, EchoServer())
    with trio.fail_after(10):
        async with env.raw(url) as raw:
            await raw.send(Publish(mid=1, subject="a.b"))
            received = await raw.read_until_closed()
    assert [type(m) for m in received] == [Error]
    assert received[0].code == ErrorCode.PROTOCOL_VIOLATION
    assert "Hello" in received[0].message


async def test_oversize_frame_is_refused(
    env: Env, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    server = EchoServer()
    url = await env.serve(nursery, server, max_frame_size=protocol.MIN_MAX_FRAME)
    big = protocol.encode(Hello(mid=0, role="client", token="x" * protocol.MAX_VALUE_LENGTH))
    assert len(big) - protocol.HEADER_SIZE > protocol.MIN_MAX_FRAME
    with trio.fail_after(10):
        async with env.raw(url) as raw:
            await raw.send_bytes(big)
            received = await raw.read_until_closed()
        if env.scheme in ("tcp", "tls"):
            # Refused from the header alone, before the body is buffered.
            assert [(type(m), m.code) for m in received] == [(Error, ErrorCode.FRAME_TOO_LARGE)]
        else:
            # trio-websocket refuses the message itself: close code 1009, no frame.
            assert received == []
        await server.ended.wait()
    assert server.hellos == []
    assert isinstance(server.endings[0], runtime.ConnectionClosed)
    assert server.endings[0].code == ErrorCode.FRAME_TOO_LARGE


async def test_over_max_connections_is_busy(env: Env, nursery: trio.Nursery) -> None:
    url = await env.serve(nursery, EchoServer(), max_connections=1)
    with trio.fail_after(10):
        async with env.connect(url) as first:
            with pytest.raises(runtime.HandshakeError) as info:
                async with env.connect(url):
                    pass  # pragma: no cover
            assert info.value.code == ErrorCode.BUSY
            assert info.value.message == "too many connections"
            await first.send(publish(first, payload=1))
            assert (await first.receive()).payload == 1
        # The slot is free again once the first connection is gone.
        async with env.connect(url) as again:
            await again.send(publish(again, payload=2))
            assert (await again.receive()).payload == 2


async def test_handler_errors_end_that_connection_only(env: Env, nursery: trio.Nursery) -> None:
    # (tests/test_containment.py has the rest: the log, other connections, every task.)
    async def broken(conn: runtime.Connection) -> None:
        hello = await conn.receive()
        if hello.name == "doomed":
            raise ValueError("handler bug")
        conn.send_nowait(welcome_for(conn, hello))
        await conn.receive()

    url = await env.serve(nursery, broken)
    with trio.fail_after(10):
        with pytest.raises(runtime.HandshakeError) as info:
            async with env.connect(url, name="doomed"):
                pass  # pragma: no cover
        assert info.value.code == ErrorCode.INTERNAL
        assert info.value.message == "internal error: ValueError"
        async with env.connect(url, name="fine") as conn:  # serve goes on
            assert conn.welcome is not None


async def test_a_peer_that_never_reads_is_cut_as_a_slow_consumer(
    env: Env, nursery: trio.Nursery
) -> None:
    # (tests/test_outgoing.py has the rest: exact times, slow readers that are not cut.)
    ended: list[runtime.ConnectionClosed] = []
    acked: list[int | None] = []
    done = trio.Event()

    async def handler(conn: runtime.Connection) -> None:
        hello = await conn.receive()
        conn.send_nowait(welcome_for(conn, hello))
        acked.append(conn._wire.bytes_acked())  # (the TCP under TLS and WebSocket too)
        try:
            for _ in range(256):  # 16 MiB: more than the kernel's buffers hold
                conn.send_nowait(publish(conn, payload=b"x" * 65536))
            await conn.receive()
        except runtime.ConnectionClosed as exc:
            ended.append(exc)
        finally:
            done.set()

    url = await env.serve(nursery, handler, write_timeout=0.3, max_outgoing=64 * 2**20)
    with trio.fail_after(20):
        async with env.raw(url) as raw:
            await raw.send(Hello(mid=0, role="client"))
            await done.wait()  # the raw client reads nothing
    (closed,) = ended
    assert closed.code == ErrorCode.SLOW_CONSUMER and "took no bytes" in closed.reason
    if sys.platform == "linux":
        assert isinstance(acked[0], int)


async def test_silent_client_gets_hello_timeout(
    env: Env, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    url = await env.serve(nursery, EchoServer(), handshake_timeout=7, close_timeout=2)
    with trio.fail_after(60):
        async with env.raw(url) as raw:
            start = trio.current_time()
            error = await raw.next_message()
            assert trio.current_time() - start == pytest.approx(7, abs=1e-6)
            assert type(error) is Error and error.code == ErrorCode.TIMEOUT
            # The server lingers for the peer to close, at most close_timeout, then cuts.
            assert await raw.next_message() is None
            assert trio.current_time() - start == pytest.approx(9, abs=1e-6)


async def test_exception_in_client_body_propagates_unwrapped(
    env: Env, nursery: trio.Nursery
) -> None:
    server = EchoServer()
    url = await env.serve(nursery, server)
    with trio.fail_after(10):
        with pytest.raises(KeyError):
            async with env.connect(url):
                raise KeyError("mine")
        await server.ended.wait()
    assert isinstance(server.endings[0], runtime.ConnectionClosed)  # cut, no Bye


# ---------------------------------------------------------------------------------------
# Failures to connect.


async def test_refused_connection_is_an_oserror() -> None:
    with trio.socket.socket() as sock:
        await sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound but not listening: connections are refused
        # (the message names the address; trio's error for all the attempts that failed)
        with trio.fail_after(10), pytest.raises(OSError, match=re.escape(f"127.0.0.1:{port}")):
            async with runtime.open_connection(
                f"tcp://127.0.0.1:{port}", hello=Hello(mid=0, role="client")
            ):
                pass  # pragma: no cover


@pytest.mark.parametrize("scheme", ["tls", "wss"])
async def test_untrusted_certificate_fails_fast(
    scheme: str, certs: Certs, nursery: trio.Nursery
) -> None:
    url = await Env(scheme, certs).serve(nursery, EchoServer())
    with trio.fail_after(10), pytest.raises(runtime.TLSHandshakeFailed) as info:
        async with runtime.open_connection(
            url, hello=Hello(mid=0, role="client"), ssl_context=ssl.create_default_context()
        ):
            pass  # pragma: no cover
    assert isinstance(info.value, ConnectionError)  # (retried like any failure to connect)
    assert str(info.value) == (
        f"TLS handshake with {url} failed: certificate verify failed: unable to get local issuer certificate"
    )
    # The server is unharmed.
    async with Env(scheme, certs).connect(url) as conn:
        assert conn.welcome is not None


@pytest.mark.parametrize(
    ("scheme", "listener", "answer"),
    [
        ("tcp", "ws", "the server answered in HTTP ('HTTP/1.1 400 ')"),
        ("tcp", "tls", "the server closed the connection without answering the Hello"),
        ("tls", "tcp", "the server does not answer in TLS (WRONG_VERSION_NUMBER)"),
        ("ws", "tcp", "the server did not answer the WebSocket upgrade in HTTP"),
        ("wss", "ws", "the server does not answer in TLS (WRONG_VERSION_NUMBER)"),
        ("ws", "wss", "the server closed the connection without answering the WebSocket upgrade"),
    ],
)
async def test_the_wrong_scheme_for_a_listener_says_what_answered(
    scheme: str, listener: str, answer: str, certs: Certs, nursery: trio.Nursery
) -> None:
    url = await Env(listener, certs).serve(nursery, EchoServer())
    wrong = scheme + url[url.index(":") :]
    ssl_context = certs.client if scheme in ("tls", "wss") else None
    with trio.fail_after(10), pytest.raises(runtime.WrongProtocol) as info:
        async with runtime.open_connection(
            wrong, hello=Hello(mid=0, role="client"), ssl_context=ssl_context
        ):
            pass  # pragma: no cover
    assert isinstance(info.value, ConnectionError)
    assert info.value.answer == answer
    assert str(info.value).startswith(f"{scheme}://127.0.0.1:{parse_url(url).port}")
    # The server is unharmed.
    async with Env(listener, certs).connect(url) as conn:
        assert conn.welcome is not None


@pytest.mark.parametrize("scheme", ["tls", "ws", "wss"])
async def test_plain_tcp_garbage_to_other_schemes_does_not_hurt_the_server(
    scheme: str, certs: Certs, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    env = Env(scheme, certs)
    url = await env.serve(nursery, EchoServer(), handshake_timeout=5)
    port = parse_url(url).port
    with trio.fail_after(10):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            start = trio.current_time()
            await stream.send_all(b"GARBAGE\r\n\r\n" * 10)
            with contextlib.suppress(trio.BrokenResourceError):
                while await stream.receive_some(1000):
                    pass
            assert trio.current_time() - start < 1  # refused at once, not timed out
        async with env.connect(url) as conn:
            assert conn.welcome is not None


async def test_ws_text_message_is_a_protocol_error(
    certs: Certs, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    url = await Env("ws", certs).serve(nursery, EchoServer())
    with trio.fail_after(10):
        async with Env("ws", certs).raw(url) as raw:
            await raw.wire._ws.send_message("hello")
            received = await raw.read_until_closed()
    assert [(type(m), m.code) for m in received] == [(Error, ErrorCode.BAD_FRAME)]


async def test_bad_url_and_misplaced_ssl_context(certs: Certs) -> None:
    with pytest.raises(ValueError, match="scheme"):
        async with runtime.open_connection("http://127.0.0.1:1", hello=Hello(mid=0, role="client")):
            pass  # pragma: no cover
    with pytest.raises(ValueError, match="TLS"):
        async with runtime.open_connection(
            "tcp://127.0.0.1:1", hello=Hello(mid=0, role="client"), ssl_context=certs.client
        ):
            pass  # pragma: no cover
    with pytest.raises(ValueError, match="ssl_context"):
        await runtime.serve("tls://127.0.0.1:0", EchoServer())


# ---------------------------------------------------------------------------------------
# URLs.


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("tcp://127.0.0.1:7700", ("tcp", "127.0.0.1", 7700, "")),
        ("TLS://Leader:443", ("tls", "leader", 443, "")),
        ("ws://localhost:0", ("ws", "localhost", 0, "/")),
        ("wss://h:1/actors/v1", ("wss", "h", 1, "/actors/v1")),
        ("tcp://[::1]:5", ("tcp", "::1", 5, "")),
    ],
)
def test_parse_url(text: str, expected: tuple[str, str, int, str]) -> None:
    url = runtime.parse_url(text)
    assert (url.scheme, url.host, url.port, url.path) == expected
    assert runtime.parse_url(str(url)) == url


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("http://h:1", "the scheme must be one of tcp, tls, ws, wss"),
        ("h:1", "the scheme must be one of tcp, tls, ws, wss"),
        ("tcp://h", "has no port (write tcp://host:port)"),
        ("tcp://:1", "has no host"),
        ("tcp://h:1/path", "only ws:// and wss:// URLs may have a path"),
        ("tcp://h:99999", "has an invalid port"),
        ("ws://h:1/?q=1", "may not have a query, fragment or user info"),
        ("tcp://u@h:1", "may not have a query, fragment or user info"),
    ],
)
def test_parse_url_rejects(text: str, problem: str) -> None:
    with pytest.raises(ValueError, match=re.escape(f"{text!r}") + ".*" + re.escape(problem)):
        runtime.parse_url(text)


def test_url_properties() -> None:
    url = runtime.parse_url("wss://[::1]:0/x")
    assert url.secure and url.websocket
    assert str(url.with_port(9)) == "wss://[::1]:9/x"
    assert not runtime.parse_url("tcp://a:1").secure


# ---------------------------------------------------------------------------------------
# The connection itself, over in-memory streams.


class CountingStream(trio.abc.Stream):
    """Wraps a stream and counts ``send_all`` calls."""

    def __init__(self, inner: trio.abc.Stream) -> None:
        self.inner = inner
        self.writes = 0

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        self.writes += 1
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self.inner.receive_some(max_bytes)

    async def aclose(self) -> None:
        await self.inner.aclose()


def memory_connection(stream: trio.abc.Stream, side: str = "client", **kw: Any) -> Connection:
    conn = Connection(StreamWire(stream), Session(side=side), f"memory://{side}", "tcp", **kw)
    if side == "client":
        welcome = Welcome(mid=0, version=1)
        conn.session.receive(welcome, 0.0)  # as if the handshake was done
        conn._welcomed(welcome)
    return conn


async def read_frames(stream: trio.abc.Stream, count: int) -> list[Message]:
    decoder = protocol.FrameDecoder()
    messages: list[Message] = []
    while len(messages) < count:
        data = await stream.receive_some(65536)
        assert data, "unexpected EOF"
        messages += decoder.feed(data)
    return messages


async def test_small_messages_are_coalesced_into_few_writes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    a, b = trio.testing.memory_stream_pair()
    counting = CountingStream(a)
    conn = memory_connection(counting)
    with trio.fail_after(10):
        async with running(conn):
            for i in range(1000):
                conn.send_nowait(Publish(mid=conn.next_mid(), subject="a.b", payload=i))
            received = await read_frames(b, 1000)
            assert [m.payload for m in received] == list(range(1000))
            assert counting.writes == 1  # all 1000 frames in one send_all


async def test_writes_batch_while_the_writer_is_busy(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # With a peer reading in lockstep, each send_all blocks; everything queued meanwhile
    # goes out together in the next one.
    a, b = trio.testing.lockstep_stream_pair()
    counting = CountingStream(a)
    conn = memory_connection(counting)
    with trio.fail_after(10):
        async with running(conn), trio.open_nursery() as nursery:
            received: list[Message] = []

            async def reader() -> None:
                received.extend(await read_frames(b, 2000))

            nursery.start_soon(reader)
            for i in range(2000):
                conn.send_nowait(Publish(mid=conn.next_mid(), subject="a.b", payload=i))
                if i % 100 == 0:
                    await trio.lowlevel.checkpoint()
    assert [m.payload for m in received] == list(range(2000))
    assert counting.writes <= 40


async def test_slow_peer_fills_the_buffer_then_send_buffer_full() -> None:
    a, _b = trio.testing.lockstep_stream_pair()  # nobody reads _b: send_all blocks
    conn = memory_connection(a, max_outgoing=10_000)
    async with running(conn):
        payload = b"x" * 1000

        async def send_until_full() -> None:
            for _ in range(100):
                conn.send_nowait(Publish(mid=conn.next_mid(), subject="a.b", payload=payload))
                await trio.lowlevel.checkpoint()

        with pytest.raises(runtime.SendBufferFull) as info:
            await send_until_full()
        assert info.value.limit == 10_000
        assert info.value.code == ErrorCode.SLOW_CONSUMER
        assert conn._outgoing.held <= 10_000
        conn._abort("test over")


async def test_send_waits_for_room_and_times_out(autojump_clock: trio.testing.MockClock) -> None:
    a, b = trio.testing.lockstep_stream_pair()
    conn = memory_connection(a, max_outgoing=5000, send_timeout=4)
    big = Publish(mid=1, subject="a.b", payload=b"x" * 2000)
    async with running(conn):
        await conn.send(big)
        await trio.testing.wait_all_tasks_blocked()  # the writer took it, blocked in send_all
        assert conn._outgoing.inflight_bytes > 2000
        await conn.send(big)  # queued: 2 frames fit in 5000 bytes
        start = trio.current_time()
        with pytest.raises(runtime.SendBufferFull):
            await conn.send(big)
        assert trio.current_time() - start == 4

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_frames, b, 3)
            await conn.send(big)  # waits until the reader drained the first frames
        conn._abort("test over")


async def test_send_many_nowait_is_all_or_nothing() -> None:
    a, _b = trio.testing.lockstep_stream_pair()
    conn = memory_connection(a, max_outgoing=5000)
    async with running(conn):
        conn.send_nowait(Publish(mid=1, subject="a.b", payload=b"x" * 1000))
        await trio.testing.wait_all_tasks_blocked()  # the writer holds it
        messages = [Publish(mid=i, subject="a.b", payload=b"x" * 1000) for i in range(2, 10)]
        with pytest.raises(runtime.SendBufferFull):
            conn.send_many_nowait(messages)
        assert conn._outgoing.queued_bytes == 0
        conn.send_many_nowait(messages[:3])
        frames = [protocol.encode(m, plain_payloads=True) for m in messages[:3]]
        assert conn._outgoing.queued_bytes == sum(map(len, frames))
        conn._abort("test over")


async def test_message_too_large_for_the_peer() -> None:
    a, _b = trio.testing.memory_stream_pair()
    conn = memory_connection(a, max_frame_size=protocol.MIN_MAX_FRAME)
    async with running(conn):
        payload = b"x" * 2 * protocol.MIN_MAX_FRAME
        with pytest.raises(runtime.MessageTooLarge) as info:
            conn.send_nowait(Publish(mid=1, subject="a.b", payload=payload))
        assert info.value.limit == protocol.MIN_MAX_FRAME
        assert info.value.size > 2 * protocol.MIN_MAX_FRAME
        assert isinstance(info.value, ValueError)
        conn._abort("test over")


@pytest.mark.parametrize("limit", [0, 100, protocol.MIN_MAX_FRAME - 1])
async def test_a_frame_limit_below_the_protocol_minimum_is_refused_at_construction(
    limit: int,
) -> None:
    a, _b = trio.testing.memory_stream_pair()
    message = (
        f"max_frame_size must be at least protocol.MIN_MAX_FRAME ({protocol.MIN_MAX_FRAME}),"
        f" got {limit}"
    )
    exactly = f"^{re.escape(message)}$"
    with pytest.raises(ValueError, match=exactly):
        memory_connection(a, max_frame_size=limit)
    # serve and open_connection refuse it before listening or connecting.
    with pytest.raises(ValueError, match=exactly):
        await runtime.serve("tcp://127.0.0.1:0", EchoServer(), max_frame_size=limit)
    with pytest.raises(ValueError, match=exactly):
        async with runtime.open_connection(
            "tcp://127.0.0.1:1", hello=Hello(mid=0, role="client"), max_frame_size=limit
        ):
            pass  # pragma: no cover
    # The minimum itself is fine.
    assert memory_connection(a, max_frame_size=protocol.MIN_MAX_FRAME).max_frame_size == 4096


async def test_messages_before_a_bad_frame_are_delivered_first(
    autojump_clock: trio.testing.MockClock,
) -> None:
    a, b = trio.testing.memory_stream_pair()
    conn = memory_connection(a, side="server")
    async with running(conn):
        good = [Hello(mid=0, role="client"), Publish(mid=1, subject="a.b", payload=1)]
        garbage = struct.pack(">IB", 1, 0x80) + b"\x00"  # unknown flag bits
        await b.send_all(b"".join(protocol.encode(m) for m in good) + garbage)
        assert await conn.receive_some() == good
        with pytest.raises(runtime.ConnectionClosed) as info:
            await conn.receive_some()
        assert info.value.code == ErrorCode.BAD_FRAME
        (error,) = await read_frames(b, 1)
        assert type(error) is Error and error.code == ErrorCode.BAD_FRAME
        assert "flags" in error.message


async def test_aclose_sends_queued_then_bye_and_waits_for_the_peer(
    autojump_clock: trio.testing.MockClock,
) -> None:
    a, b = trio.testing.memory_stream_pair()
    conn = memory_connection(a, close_timeout=3)
    async with running(conn):
        conn.send_nowait(Publish(mid=1, subject="a.b"))
        start = trio.current_time()
        await conn.aclose()
        # The peer never closed its side: the linger ended at close_timeout.
        assert trio.current_time() - start == 3
    received = await read_frames(b, 2)
    assert [type(m) for m in received] == [Publish, Bye]
    assert await b.receive_some(100) == b""


async def test_close_soon_from_code_that_cannot_await(
    autojump_clock: trio.testing.MockClock,
) -> None:
    a, b = trio.testing.memory_stream_pair()
    conn = memory_connection(a, close_timeout=3)
    async with running(conn):
        conn.send_nowait(Publish(mid=1, subject="a.b"))
        conn.close_soon(Error(mid=2, code=ErrorCode.SLOW_CONSUMER, message="too slow"))
        assert conn.closed
        with pytest.raises(runtime.ConnectionClosed) as info:
            conn.send_nowait(Publish(mid=3, subject="a.b"))
        assert info.value.code == ErrorCode.SLOW_CONSUMER
        conn.close_soon()  # already closing: nothing more
        received = await read_frames(b, 2)
        # slow_consumer ends the peer's session by itself: no Bye after it.
        assert [type(m) for m in received] == [Publish, Error]
        await b.aclose()  # the peer, told to go, goes
        await conn.aclose()


async def test_error_that_keeps_sessions_open_is_followed_by_bye(
    autojump_clock: trio.testing.MockClock,
) -> None:
    a, b = trio.testing.memory_stream_pair()
    conn = memory_connection(a)
    async with running(conn):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(conn.aclose, Error(mid=1, code=ErrorCode.BUSY, message="full"))
            received = await read_frames(b, 2)
            await b.aclose()
    assert [(type(m), getattr(m, "code", None)) for m in received] == [(Error, "busy"), (Bye, None)]


async def test_a_bye_sent_by_the_application_is_not_repeated(
    autojump_clock: trio.testing.MockClock,
) -> None:
    a, b = trio.testing.memory_stream_pair()
    conn = memory_connection(a, close_timeout=2)
    async with running(conn):
        conn.send_nowait(Bye(mid=1, reason="draining"))
        start = trio.current_time()
        await conn.aclose()
        assert trio.current_time() - start == 2  # still lingers for the peer to close
    data = b""
    while chunk := await b.receive_some(1000):
        data += chunk
    assert protocol.FrameDecoder().feed(data) == [Bye(mid=1, reason="draining")]


async def handshaken_pair() -> tuple[Connection, Connection, Any]:
    """A server and a client connection over memory, not yet running."""
    a, b = trio.testing.memory_stream_pair()
    server = Connection(StreamWire(a), Session(side="server"), "memory://server", "tcp")
    client = Connection(StreamWire(b), Session(side="client"), "memory://client", "tcp")
    return server, client, b


@asynccontextmanager
async def connected_pair() -> AsyncIterator[tuple[Connection, Connection]]:
    server, client, _ = await handshaken_pair()
    async with running(server), running(client), trio.open_nursery() as nursery:

        async def welcome() -> None:
            hello = await server.receive()
            server.send_nowait(Welcome(mid=server.next_mid(), cid=hello.mid, version=1))

        nursery.start_soon(welcome)
        await client_handshake(client, Hello(mid=0, role="client"), heartbeat=None)
        yield server, client


async def test_an_error_closing_one_end_closes_the_other(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with connected_pair() as (server, client):
        start = trio.current_time()
        await server.aclose(Error(mid=9, code=ErrorCode.SHUTTING_DOWN, message="restart"))
        assert trio.current_time() == start  # the client closed at once: no linger needed
        error = await client.receive()
        assert type(error) is Error and error.code == ErrorCode.SHUTTING_DOWN
        with pytest.raises(runtime.ConnectionClosed) as info:
            await client.receive()
        assert info.value.code == ErrorCode.SHUTTING_DOWN and not info.value.clean


async def test_both_ends_closing_at_once_do_not_wait_for_each_other(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with connected_pair() as (server, client):
        start = trio.current_time()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.aclose)
            nursery.start_soon(client.aclose)
        assert trio.current_time() == start


async def test_closed_connection_raises_on_every_use() -> None:
    a, b = trio.testing.memory_stream_pair()
    conn = memory_connection(a)
    async with running(conn):
        await b.aclose()  # the peer goes away without Bye
        with pytest.raises(runtime.ConnectionClosed) as info:
            await conn.receive()
        assert not info.value.clean and "without Bye" in info.value.reason
        with pytest.raises(runtime.ConnectionClosed):
            conn.send_nowait(Publish(mid=1, subject="a.b"))
        with pytest.raises(runtime.ConnectionClosed):
            await conn.send(Publish(mid=1, subject="a.b"))
        with pytest.raises(runtime.ConnectionClosed):
            async for _ in conn:
                pass  # pragma: no cover
        await conn.aclose()  # idempotent


async def test_receive_is_cancellable_without_losing_messages(
    autojump_clock: trio.testing.MockClock,
) -> None:
    a, b = trio.testing.memory_stream_pair()
    conn = memory_connection(a, side="server")
    async with running(conn):
        with trio.move_on_after(0.01):
            await conn.receive()
        await b.send_all(protocol.encode(Hello(mid=0, role="client")))
        assert type(await conn.receive()) is Hello


def test_public_names_are_exported() -> None:
    for name in [
        "Connection",
        "ConnectionClosed",
        "HandshakeError",
        "MessageTooLarge",
        "SendBufferFull",
        "ReconnectEvent",
        "run_reconnecting",
        "open_connection",
        "serve",
        "Url",
        "parse_url",
    ]:
        assert getattr(runtime, name).__module__.startswith("runtime."), name
        assert getattr(runtime, name).__doc__, name
    from runtime import _connection

    assert _connection.DEFAULT_MAX_OUTGOING == 8 * 2**20
    assert math.isfinite(_connection.DEFAULT_CLOSE_TIMEOUT)
