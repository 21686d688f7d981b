"""The Origin check of WebSocket listeners: ``serve(..., allowed_origins=...)``.

A browser sends the page's origin with every WebSocket upgrade; a listener given
``allowed_origins`` answers one it refuses ``403`` with a plain-text body, logs it (at
most a line a second) and serves on. Clients that are not browsers send no Origin and are
never refused. Browsers are played by trio-websocket with an ``Origin`` header.
"""

from __future__ import annotations

import functools
import logging
import ssl
from collections.abc import Callable

import attrs
import pytest
import trio
import trio.testing
import trio_websocket
import trustme

import protocol
import runtime
from protocol import Hello, Message, Welcome
from runtime._ws import ALLOW_ORIGIN_HINT, FORBIDDEN_STATUS, OriginPolicy

GOOD = "http://localhost:8080"
EVIL = "https://evil.example"


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


@pytest.fixture(params=["ws", "wss"])
def scheme(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@attrs.define
class Server:
    """Welcomes every Hello and records it, then waits for the peer to go."""

    hellos: list[Hello] = attrs.field(factory=list)

    async def __call__(self, conn: runtime.Connection) -> None:
        hello = await conn.receive()
        assert type(hello) is Hello
        self.hellos.append(hello)
        conn.send_nowait(
            Welcome(mid=conn.next_mid(), cid=hello.mid, version=1, heartbeat=conn.session.heartbeat)
        )
        while True:
            await conn.receive()  # (until ConnectionClosed: the peer went)


async def start(
    nursery: trio.Nursery,
    scheme: str,
    contexts: Contexts,
    server: Server,
    allowed_origins: Callable[[str], bool] | None,
) -> str:
    ssl_context = contexts.server if scheme in ("tls", "wss") else None
    serve = functools.partial(
        runtime.serve,
        f"{scheme}://127.0.0.1:0",
        server,
        ssl_context=ssl_context,
        allowed_origins=allowed_origins,
    )
    url: str = await nursery.start(serve)
    return url


async def browser(url: str, origin: str | None, contexts: Contexts, name: str) -> Message:
    """Open a WebSocket as a browser would (with ``Origin``), say Hello; the answer.

    (Over a stream of our own, closed here: trio-websocket's ``open_websocket_url`` leaves
    its socket open when the upgrade is rejected.)
    """
    headers = [] if origin is None else [(b"Origin", origin.encode())]
    parsed = runtime.parse_url(url)
    stream: trio.abc.Stream = await trio.open_tcp_stream(parsed.host, parsed.port)
    try:
        if parsed.secure:
            stream = trio.SSLStream(
                stream, contexts.client, server_hostname=parsed.host, https_compatible=True
            )
        try:
            async with trio.open_nursery() as nursery:
                ws = await trio_websocket.wrap_client_stream(
                    nursery, stream, f"{parsed.host}:{parsed.port}", "/", extra_headers=headers
                )
                await ws.send_message(protocol.encode(Hello(mid=0, role="client", name=name)))
                data = await ws.get_message()
                await ws.aclose()
        except BaseExceptionGroup as group:  # (the rejection, from trio-websocket's reader)
            if len(group.exceptions) == 1:
                raise group.exceptions[0] from None
            raise
    finally:
        await trio.aclose_forcefully(stream)
    assert isinstance(data, bytes)
    (answer,) = protocol.FrameDecoder().feed(data)
    return answer


async def client(url: str, contexts: Contexts, name: str) -> None:
    """Connect with the runtime's own client (no Origin header) and leave."""
    ssl_context = contexts.client if url.startswith(("tls:", "wss:")) else None
    hello = Hello(mid=0, role="client", name=name)
    async with runtime.open_connection(url, hello=hello, ssl_context=ssl_context) as conn:
        assert conn.welcome is not None


def refusals(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and "refused a WebSocket upgrade" in r.getMessage()
    ]


async def test_an_allowed_origin_connects(
    scheme: str, contexts: Contexts, nursery: trio.Nursery
) -> None:
    seen: list[str] = []

    def allowed(origin: str) -> bool:
        seen.append(origin)
        return origin == GOOD

    server = Server()
    url = await start(nursery, scheme, contexts, server, allowed)
    with trio.fail_after(10):
        answer = await browser(url, GOOD, contexts, "page")
    assert type(answer) is Welcome
    assert seen == [GOOD]
    assert [h.name for h in server.hellos] == ["page"]


async def test_a_refused_origin_gets_403_and_the_listener_serves_on(
    scheme: str, contexts: Contexts, nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    server = Server()
    url = await start(nursery, scheme, contexts, server, {GOOD}.__contains__)
    with trio.fail_after(10):
        with pytest.raises(trio_websocket.ConnectionRejected) as info:
            await browser(url, EVIL, contexts, "evil")
        rejected = info.value
        assert rejected.status_code == FORBIDDEN_STATUS
        body = (rejected.body or b"").decode()
        assert repr(EVIL) in body and "not allowed" in body
        assert "allow it with --allow-origin or [leader] allowed_origins" in body
        assert (b"content-type", b"text/plain; charset=utf-8") in [
            (name.lower(), value) for name, value in rejected.headers
        ]
        # The handler never saw it; the listener serves browsers and clients on.
        assert server.hellos == []
        assert type(await browser(url, GOOD, contexts, "page")) is Welcome
        await client(url, contexts, "cli")
    assert [h.name for h in server.hellos] == ["page", "cli"]
    (line,) = refusals(caplog)
    assert repr(EVIL) in line and ALLOW_ORIGIN_HINT in line and url in line


async def test_no_origin_is_not_checked(
    scheme: str, contexts: Contexts, nursery: trio.Nursery
) -> None:
    def allowed(origin: str) -> bool:
        raise AssertionError(f"asked about {origin!r}")

    server = Server()
    url = await start(nursery, scheme, contexts, server, allowed)
    with trio.fail_after(10):
        assert type(await browser(url, None, contexts, "tool")) is Welcome
        await client(url, contexts, "cli")
    assert [h.name for h in server.hellos] == ["tool", "cli"]


async def test_without_allowed_origins_any_origin_connects(
    scheme: str, contexts: Contexts, nursery: trio.Nursery
) -> None:
    server = Server()
    url = await start(nursery, scheme, contexts, server, None)
    with trio.fail_after(10):
        assert type(await browser(url, EVIL, contexts, "any")) is Welcome


@pytest.mark.parametrize("plain", ["tcp", "tls"])
async def test_tcp_and_tls_listeners_do_not_use_it(
    plain: str, contexts: Contexts, nursery: trio.Nursery
) -> None:
    server = Server()
    url = await start(nursery, plain, contexts, server, lambda origin: False)
    with trio.fail_after(10):
        await client(url, contexts, "cli")
    assert [h.name for h in server.hellos] == ["cli"]


async def test_refusals_are_logged_at_most_once_a_second(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    policy = OriginPolicy(lambda origin: False, listener="ws://127.0.0.1:1")
    for n in range(4):
        policy.log_refusal(f"http://x{n}", "ws://127.0.0.1:5000")
        await trio.sleep(0.2)
    assert len(refusals(caplog)) == 1
    await trio.sleep(0.3)  # a second after the first line
    policy.log_refusal("http://late", "ws://127.0.0.1:5001")
    first, second = refusals(caplog)
    assert "'http://x0'" in first and "more refused" not in first
    assert "'http://late'" in second and "3 more refused since the last such line" in second
    await trio.sleep(1)
    policy.log_refusal("http://later", "ws://127.0.0.1:5002")
    assert "more refused" not in refusals(caplog)[-1]


def test_the_first_refused_origin_of_the_headers_is_named() -> None:
    policy = OriginPolicy({GOOD}.__contains__)
    assert policy.refused([(b"host", b"x"), (b"origin", GOOD.encode())]) is None
    assert policy.refused([(b"host", b"x")]) is None
    assert policy.refused([(b"Origin", GOOD.encode()), (b"origin", b"null")]) == "null"
