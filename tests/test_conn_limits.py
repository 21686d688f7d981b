"""Connection limits of ``runtime.serve``: in all, per peer address, and in handshake (in
all and per peer address).

A connection over a limit is refused as soon as it is accepted, with a ``busy`` answer
that ``runtime.open_connection`` raises as ``HandshakeError(code="busy")`` and
``actors.Client.connect`` as ``actors.Busy``, at once. Real loopback sockets (real time,
each test capped); on Linux all of 127.0.0.0/8 is loopback, so a client bound to
127.0.0.2 is another peer address.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import attrs
import pytest
import trio

import actors
import protocol
import runtime
from protocol import Error, ErrorCode, Hello, Welcome
from tests import test_transport
from tests.test_transport import Certs

SCHEMES = ["tcp", "tls", "ws", "wss"]
certs = test_transport.certs  # (the fixture: throwaway certificates for tls and wss)


@attrs.define
class Welcomer:
    """Welcomes every Hello and holds the connection until the peer goes."""

    hellos: list[str] = attrs.field(factory=list)
    ended: list[str] = attrs.field(factory=list)

    async def __call__(self, conn: runtime.Connection) -> None:
        hello = await conn.receive()
        self.hellos.append(hello.name)
        try:
            conn.send_nowait(Welcome(mid=conn.next_mid(), cid=hello.mid, version=1))
            async for _ in conn:
                pass
        finally:
            self.ended.append(hello.name)


async def serve(nursery: trio.Nursery, scheme: str, certs: Certs, **kw: Any) -> str:
    ssl_context = certs.server if scheme in ("tls", "wss") else None
    return await nursery.start(
        functools.partial(
            runtime.serve, f"{scheme}://127.0.0.1:0", Welcomer(), ssl_context=ssl_context, **kw
        )
    )


def connect(url: str, certs: Certs, name: str = "c") -> Any:
    secure = url.startswith(("tls", "wss"))
    return runtime.open_connection(
        url,
        hello=Hello(mid=0, role="client", name=name),
        ssl_context=certs.client if secure else None,
    )


@asynccontextmanager
async def from_address(monkeypatch: pytest.MonkeyPatch, local: str) -> AsyncIterator[None]:
    """Within the block, every TCP connection is made from the local address ``local``."""
    open_tcp_stream = trio.open_tcp_stream
    with monkeypatch.context() as patch:
        patch.setattr(
            trio, "open_tcp_stream", functools.partial(open_tcp_stream, local_address=local)
        )
        yield


async def refused(url: str, certs: Certs) -> runtime.HandshakeError:
    """The busy refusal of a connection to ``url``; it comes at once."""
    start = trio.current_time()
    with pytest.raises(runtime.HandshakeError) as info:
        async with connect(url, certs, name="refused"):
            pass  # pragma: no cover
    assert trio.current_time() - start < 2
    assert info.value.code == ErrorCode.BUSY
    return info.value


@pytest.mark.parametrize("scheme", SCHEMES)
async def test_one_address_over_its_limit_is_refused_while_others_get_in(
    scheme: str, certs: Certs, nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = await serve(nursery, scheme, certs, max_connections_per_address=3)
    with trio.fail_after(20):
        async with connect(url, certs, "a1"), connect(url, certs, "a2") as a2:
            async with connect(url, certs, "a3"):
                error = await refused(url, certs)
                assert error.message == "too many connections from 127.0.0.1"
                assert error.retry_after == runtime.BUSY_RETRY_AFTER
                # Another peer address still gets in.
                async with from_address(monkeypatch, "127.0.0.2"), connect(url, certs, "b1") as b1:
                    assert b1.welcome is not None
            # A slot freed when a connection closed.
            async with connect(url, certs, "a4") as a4:
                assert a4.welcome is not None
                await refused(url, certs)
            assert not a2.closed


async def test_client_connect_reports_busy_at_once(
    certs: Certs, nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = await serve(nursery, "tcp", certs, max_connections_per_address=1)
    with trio.fail_after(20):
        async with actors.Client.connect(url, name="first"):
            start = trio.current_time()
            with pytest.raises(actors.Busy) as info:  # not a group, not ConnectionLost
                async with actors.Client.connect(url, name="second", connect_timeout=30):
                    pass  # pragma: no cover
            assert trio.current_time() - start < 2
            assert info.value.retry_after == runtime.BUSY_RETRY_AFTER
            assert "too many connections from 127.0.0.1" in str(info.value)
            async with (
                from_address(monkeypatch, "127.0.0.2"),
                actors.Client.connect(url, name="other"),
            ):
                pass


async def test_the_busy_answer_comes_before_any_hello(certs: Certs, nursery: trio.Nursery) -> None:
    url = await serve(nursery, "tcp", certs, max_connections=1)
    port = runtime.parse_url(url).port
    with trio.fail_after(10):
        async with connect(url, certs):
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            async with stream:
                data = b""
                while chunk := await stream.receive_some(65536):  # (the server then closes)
                    data += chunk
    (error,) = protocol.FrameDecoder().feed(data)
    assert type(error) is Error and error.code == ErrorCode.BUSY
    assert error.message == "too many connections" and error.retry_after == runtime.BUSY_RETRY_AFTER


@pytest.mark.parametrize("scheme", SCHEMES)
async def test_handshakes_over_their_limit_are_refused(
    scheme: str, certs: Certs, nursery: trio.Nursery
) -> None:
    url = await serve(nursery, scheme, certs, max_handshakes=2)
    port = runtime.parse_url(url).port
    with trio.fail_after(20):
        # Two peers that connect and say nothing hold both handshake slots.
        silent = [await trio.open_tcp_stream("127.0.0.1", port) for _ in range(2)]
        try:
            error = await refused(url, certs)
            assert error.message == "too many connections in their handshake"
            assert error.retry_after == runtime.HANDSHAKE_BUSY_RETRY_AFTER
        finally:
            for stream in silent:
                await stream.aclose()
        # Once they are gone, handshakes are let in again; and a connection past its Hello
        # no longer holds a slot.
        for _ in range(50):  # (the server notices the closed sockets a moment later)
            try:
                async with connect(url, certs, "one"), connect(url, certs, "two"):
                    async with connect(url, certs, "three") as three:
                        assert three.welcome is not None
                break
            except runtime.HandshakeError:
                await trio.sleep(0.05)
        else:
            pytest.fail("the handshake slots never came free")


async def test_a_silent_peer_frees_its_handshake_slot_at_its_timeout(
    certs: Certs, nursery: trio.Nursery
) -> None:
    url = await serve(nursery, "tcp", certs, max_handshakes=1, handshake_timeout=0.5)
    port = runtime.parse_url(url).port
    with trio.fail_after(10):
        async with await trio.open_tcp_stream("127.0.0.1", port) as silent:
            await refused(url, certs)
            (error,) = protocol.FrameDecoder().feed(await silent.receive_some(65536))
            assert error.code == ErrorCode.TIMEOUT  # told, then closed: the slot is free
            async with connect(url, certs) as conn:
                assert conn.welcome is not None


@pytest.mark.parametrize("scheme", SCHEMES)
async def test_one_address_over_its_handshake_limit_is_refused_while_others_get_in(
    scheme: str, certs: Certs, nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = await serve(nursery, scheme, certs, max_handshakes=4, max_handshakes_per_address=2)
    port = runtime.parse_url(url).port
    with trio.fail_after(20):
        # One address's two silent peers hold its handshake slots, not everyone's.
        silent = [await trio.open_tcp_stream("127.0.0.1", port) for _ in range(2)]
        try:
            error = await refused(url, certs)
            assert error.message == "too many connections from 127.0.0.1 in their handshake"
            assert error.retry_after == runtime.HANDSHAKE_BUSY_RETRY_AFTER
            async with from_address(monkeypatch, "127.0.0.2"), connect(url, certs, "b1") as b1:
                assert b1.welcome is not None
        finally:
            for stream in silent:
                await stream.aclose()
        # Once they are gone, that address is let in again.
        for _ in range(50):  # (the server notices the closed sockets a moment later)
            try:
                async with connect(url, certs, "a1") as a1:
                    assert a1.welcome is not None
                break
            except runtime.HandshakeError:
                await trio.sleep(0.05)
        else:
            pytest.fail("the address's handshake slots never came free")


async def test_limits_must_be_positive(certs: Certs) -> None:
    for name in (
        "max_connections",
        "max_connections_per_address",
        "max_handshakes",
        "max_handshakes_per_address",
    ):
        with pytest.raises(ValueError, match=name):
            await runtime.serve("tcp://127.0.0.1:0", Welcomer(), **{name: 0})


@pytest.mark.parametrize("scheme", SCHEMES)
async def test_a_refused_peer_that_speaks_garbage_is_just_closed(
    scheme: str, certs: Certs, nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    url = await serve(nursery, scheme, certs, max_connections=1)
    port = runtime.parse_url(url).port
    with trio.fail_after(10):
        async with connect(url, certs) as first:
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            async with stream:
                await stream.send_all(b"\x00\xff garbage \r\n\r\n" * 10)
                while await stream.receive_some(65536):  # until the server closes
                    pass
            assert not first.closed
            await refused(url, certs)  # and refusals still work
    assert [r for r in caplog.records if r.levelname == "ERROR"] == []
