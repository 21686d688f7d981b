"""Heartbeat death and reconnect over every transport: tcp, tls, ws and wss on loopback.

``test_transport`` runs its conformance suite (handshake, ordering, garbage bytes, ...) over
the four schemes; ``test_heartbeat`` and ``test_reconnect`` check the finer rules over memory
streams and tcp/ws. Here the two behaviours that depend on the transport actually closing
and reopening run over all four, under the autojump clock, with exact virtual times.
"""

from __future__ import annotations

import functools
import ssl
from typing import Any

import attrs
import pytest
import trio
import trio.testing
import trustme

import protocol
import runtime
from protocol import Error, ErrorCode, Hello, Ping, Welcome
from runtime._transports import _dial
from runtime._url import parse_url

SCHEMES = ["tcp", "tls", "ws", "wss"]


@attrs.frozen
class Contexts:
    server: ssl.SSLContext
    client: ssl.SSLContext


@pytest.fixture(scope="module")
def contexts() -> Contexts:
    ca = trustme.CA()
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server)
    client = ssl.create_default_context()
    ca.configure_trust(client)
    return Contexts(server, client)


def server_context(scheme: str, contexts: Contexts) -> ssl.SSLContext | None:
    return contexts.server if scheme in ("tls", "wss") else None


def client_context(scheme: str, contexts: Contexts) -> ssl.SSLContext | None:
    return contexts.client if scheme in ("tls", "wss") else None


# ---------------------------------------------------------------------------------------
# Heartbeat death: the server pings an idle client at 1 s and 2 s, and at 3 s (three silent
# intervals) sends Error(heartbeat_timeout) and closes. The client is raw: it never Pongs.


@pytest.mark.parametrize("scheme", SCHEMES)
async def test_silent_peer_is_declared_dead_at_three_intervals(
    scheme: str, contexts: Contexts, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    endings: list[runtime.ConnectionClosed] = []
    ended = trio.Event()

    async def handler(conn: runtime.Connection) -> None:
        hello = await conn.receive()
        conn.send_nowait(
            Welcome(mid=conn.next_mid(), cid=hello.mid, version=1, heartbeat=conn.session.heartbeat)
        )
        try:
            while True:
                await conn.receive()
        except runtime.ConnectionClosed as exc:
            endings.append(exc)
            raise
        finally:
            ended.set()

    url = await nursery.start(
        functools.partial(
            runtime.serve,
            f"{scheme}://127.0.0.1:0",
            handler,
            ssl_context=server_context(scheme, contexts),
            heartbeat=1.0,
            close_timeout=2,
        )
    )
    with trio.fail_after(60):
        async with trio.open_nursery() as raw_nursery:
            wire, _ = await _dial(
                parse_url(url),
                raw_nursery,
                client_context(scheme, contexts),
                protocol.DEFAULT_MAX_FRAME_SIZE,
            )
            decoder = protocol.FrameDecoder()
            seen: list[tuple[float, Any]] = []
            start = trio.current_time()
            await wire.send_frames([protocol.encode(Hello(mid=0, role="worker"))])
            while True:
                try:
                    data = await wire.receive()
                except (trio.BrokenResourceError, runtime.ConnectionClosed):
                    data = None
                if data is None:
                    seen.append((trio.current_time() - start, "closed"))
                    break
                now = trio.current_time() - start
                seen.extend((now, message) for message in decoder.feed(data))
            await wire.aclose_forcefully()
        await ended.wait()

    times_and_kinds = [(t, m if m == "closed" else type(m)) for t, m in seen]
    assert times_and_kinds[:4] == [
        (pytest.approx(0, abs=1e-6), Welcome),
        (pytest.approx(1, abs=1e-6), Ping),
        (pytest.approx(2, abs=1e-6), Ping),
        (pytest.approx(3, abs=1e-6), Error),
    ]
    assert seen[3][1].code == ErrorCode.HEARTBEAT_TIMEOUT
    # Then the server closes at once: it does not linger for a peer it declared dead.
    assert times_and_kinds[4:] == [(pytest.approx(3, abs=1e-6), "closed")]
    [ending] = endings
    assert ending.code == ErrorCode.HEARTBEAT_TIMEOUT and not ending.clean


# ---------------------------------------------------------------------------------------
# Reconnect: refused (busy), welcomed then dropped, refused again, welcomed. Every attempt
# carries a fresh Hello; delays follow the backoff and restart after a good handshake.


@attrs.define
class Scripted:
    script: list[str]
    hellos: list[tuple[float, str, str]] = attrs.field(factory=list)

    async def __call__(self, conn: runtime.Connection) -> None:
        hello = await conn.receive()
        assert type(hello) is Hello
        self.hellos.append((trio.current_time(), hello.name, conn.scheme))
        action = self.script.pop(0) if self.script else "welcome"
        if action == "busy":
            await conn.aclose(Error(mid=conn.next_mid(), code=ErrorCode.BUSY, message="busy"))
            return
        conn.send_nowait(Welcome(mid=conn.next_mid(), cid=hello.mid, version=1))
        if action == "drop":
            await conn.aclose(
                Error(mid=conn.next_mid(), code=ErrorCode.SHUTTING_DOWN, message="restart")
            )
            return
        async for _ in conn:
            pass


@pytest.mark.parametrize("scheme", SCHEMES)
async def test_reconnect_with_backoff_and_a_fresh_hello(
    scheme: str, contexts: Contexts, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    server = Scripted(["busy", "drop", "busy", "welcome"])
    url = await nursery.start(
        functools.partial(
            runtime.serve,
            f"{scheme}://127.0.0.1:0",
            server,
            ssl_context=server_context(scheme, contexts),
        )
    )
    names = iter(f"try-{n}" for n in range(1, 100))
    sessions: list[str] = []
    events: list[runtime.ReconnectEvent] = []

    async def session(conn: runtime.Connection) -> str:
        assert conn.scheme == scheme and conn.welcome is not None
        sessions.append(conn.peer)
        if len(sessions) == 1:
            while True:
                await conn.receive()  # Error(shutting_down), then ConnectionClosed
        return "done"

    t0 = trio.current_time()
    with trio.fail_after(100):
        result = await runtime.run_reconnecting(
            url,
            session,
            hello_factory=lambda: Hello(mid=0, role="worker", name=next(names)),
            backoff=runtime.Backoff(base=1, factor=2, cap=60),
            ssl_context=client_context(scheme, contexts),
            on_state=events.append,
        )
    assert result == "done" and len(sessions) == 2
    # 0 busy -> wait 1; 1 welcome + drop (attempts reset) -> wait 1; 2 busy -> wait 2; 4 ok.
    assert [(pytest.approx(t - t0, abs=1e-6), name) for t, name, _ in server.hellos] == [
        (0, "try-1"),
        (1, "try-2"),
        (2, "try-3"),
        (4, "try-4"),
    ]
    assert {s for _, _, s in server.hellos} == {scheme}
    assert [(e.attempt, e.delay) for e in events if e.state == "waiting"] == [
        (1, 1.0),
        (1, 1.0),
        (2, 2.0),
    ]
    dropped = [e.error for e in events if e.state == "disconnected"][1]
    assert isinstance(dropped, runtime.ConnectionClosed)
    assert dropped.code == ErrorCode.SHUTTING_DOWN
