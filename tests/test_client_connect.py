"""``Client.connect`` fails with one plain exception that says which failure it was.

Refused (at once, not after the connect timeout), timed out, TLS handshake failed (with the
certificate problem), and the wrong protocol on the port: an HTTP server, ``ws://`` against
a TCP listener, ``wss://`` against a WebSocket one, ``tcp://`` against a WebSocket or TLS
one. Each is a :class:`ConnectionLost` subclass whose message names the URL and the cause.
Real sockets on loopback; each test is capped with ``fail_after``.
"""

from __future__ import annotations

import ssl
import subprocess
import sys

import pytest
import trio
import trustme

from actors import (
    Client,
    ClientError,
    ConnectionLost,
    ConnectionRefused,
    ConnectTimeout,
    Leader,
    TLSFailed,
    WrongProtocol,
)

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def server_context(ca: trustme.CA, *names: str) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(*(names or ("127.0.0.1", "localhost"))).configure_cert(context)
    return context


def client_context(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


@pytest.fixture
async def urls(nursery: trio.Nursery, ca: trustme.CA) -> dict[str, str]:
    """Leaders listening on each scheme, by scheme (one plain, one secure)."""
    plain = Leader(name="plain", listen=["tcp://127.0.0.1:0", "ws://127.0.0.1:0"])
    secure = Leader(
        name="secure",
        listen=["tls://127.0.0.1:0", "wss://127.0.0.1:0"],
        ssl_context=server_context(ca),
    )  # (two names: two data directories)
    found = [*await nursery.start(plain.run), *await nursery.start(secure.run)]
    return {url.split(":", 1)[0]: url for url in found}


async def serve_tcp(nursery: trio.Nursery, handler) -> int:
    listeners = await nursery.start(trio.serve_tcp, handler, 0)
    return listeners[0].socket.getsockname()[1]


async def http_server(stream: trio.SocketStream) -> None:
    """A tiny web server: whatever it is asked, ``200 OK`` and a page."""
    async with stream:
        await stream.receive_some(4096)
        await stream.send_all(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 13\r\n\r\n<p>hello</p>\n"
        )


async def silent_server(stream: trio.SocketStream) -> None:
    """Accepts, reads, never answers."""
    async with stream:
        while await stream.receive_some(4096):
            pass


def swap(url: str, scheme: str) -> str:
    return scheme + url[url.index(":") :]


async def connect_fails(
    url: str, error: type[BaseException], *fragments: str, **kw
) -> BaseException:
    """Connect to ``url``: ``error`` must come, as itself (no exception group), naming the URL
    and every fragment, within about a second."""
    started = trio.current_time()
    with trio.fail_after(5), pytest.raises(error) as info:
        async with Client.connect(url, **kw):
            pass  # pragma: no cover
    assert trio.current_time() - started < 1.5
    assert type(info.value) is error
    assert isinstance(info.value, ConnectionLost) and isinstance(info.value, ClientError)
    text = str(info.value)
    assert url in text
    for fragment in fragments:
        assert fragment in text, text
    return info.value


async def test_nothing_listening_is_refused_at_once():
    with trio.socket.socket() as sock:  # bound, not listening: connections are refused
        await sock.bind(("127.0.0.1", 0))
        url = f"tcp://127.0.0.1:{sock.getsockname()[1]}"
        # Within a second, not after the 10 s connect timeout (no retrying a refusal).
        await connect_fails(url, ConnectionRefused, "connection refused", "is the leader running?")


async def test_a_server_that_never_answers_times_out(nursery):
    port = await serve_tcp(nursery, silent_server)
    url = f"tcp://127.0.0.1:{port}"
    error = await connect_fails(url, ConnectTimeout, "within 0.5 s", connect_timeout=0.5)
    assert isinstance(error, TimeoutError)


async def test_an_untrusted_certificate_fails_the_tls_handshake(urls):
    error = await connect_fails(
        urls["tls"],
        TLSFailed,
        "TLS handshake",
        "certificate verify failed",
        "unable to get local issuer certificate",
    )
    assert isinstance(error.__cause__, OSError)
    await connect_fails(urls["wss"], TLSFailed, "certificate verify failed")


async def test_a_certificate_for_another_host_fails_the_tls_handshake(nursery, ca):
    leader = Leader(listen=["tls://127.0.0.1:0"], ssl_context=server_context(ca, "example.org"))
    [url] = await nursery.start(leader.run)
    await connect_fails(
        url, TLSFailed, "certificate verify failed", "mismatch", ssl_context=client_context(ca)
    )


async def test_a_trusted_certificate_connects(urls, ca):
    for scheme in ("tls", "wss"):
        with trio.fail_after(5):
            async with Client.connect(urls[scheme], ssl_context=client_context(ca)) as client:
                assert client.connects == 1


async def test_an_http_server_is_the_wrong_protocol(nursery):
    port = await serve_tcp(nursery, http_server)
    await connect_fails(
        f"tcp://127.0.0.1:{port}", WrongProtocol, "answered in HTTP", "HTTP/1.1 200 OK"
    )
    await connect_fails(
        f"ws://127.0.0.1:{port}", WrongProtocol, "WebSocket upgrade with HTTP 200", "a web server"
    )


@pytest.mark.parametrize(
    ("scheme", "listener", "fragments"),
    [
        ("ws", "tcp", ["did not answer the WebSocket upgrade in HTTP", "tcp://"]),
        ("tcp", "ws", ["answered in HTTP", "ws://"]),
        ("wss", "ws", ["does not answer in TLS", "ws://"]),
        ("tls", "tcp", ["does not answer in TLS", "tcp://"]),
        ("tcp", "tls", ["closed the connection without answering the Hello", "tls://"]),
        ("ws", "wss", ["closed the connection without answering the WebSocket upgrade", "wss://"]),
    ],
)
async def test_the_wrong_scheme_for_the_listener_is_the_wrong_protocol(
    urls, ca, scheme, listener, fragments
):
    kw = {"ssl_context": client_context(ca)} if scheme in ("tls", "wss") else {}
    await connect_fails(swap(urls[listener], scheme), WrongProtocol, *fragments, **kw)
    # The leader is unharmed and serves the right scheme.
    with trio.fail_after(5):
        context = {"ssl_context": client_context(ca)} if listener in ("tls", "wss") else {}
        async with Client.connect(urls[listener], **context) as client:
            assert client.connects == 1


async def test_except_connection_lost_catches_them_all():
    for error in (ConnectionRefused, ConnectTimeout, TLSFailed, WrongProtocol):
        assert issubclass(error, ConnectionLost)


async def test_the_square_example_without_a_cluster_prints_one_line():
    with trio.socket.socket() as sock:
        await sock.bind(("127.0.0.1", 0))
        url = f"tcp://127.0.0.1:{sock.getsockname()[1]}"
        with trio.fail_after(15):
            result = await trio.run_process(
                [sys.executable, "-m", "examples.square", url], check=False,
                capture_stdout=True, capture_stderr=True, stdin=subprocess.DEVNULL,
            )  # fmt: skip
    assert result.returncode == 1
    err = result.stderr.decode()
    assert err.count("\n") == 1 and "Traceback" not in err
    assert (
        err.startswith("examples.square: could not connect to " + url)
        and "connection refused" in err
    )
