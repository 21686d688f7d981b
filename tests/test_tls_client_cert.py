"""Client certificates: a ``tls://`` or ``wss://`` listener whose ``ssl_context`` verifies
them hands the verified one to its handler as ``Connection.peer_certificate``, and refuses
one it cannot verify in the TLS handshake, serving on."""

from __future__ import annotations

import functools
import logging
import ssl
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
import trustme

import runtime
from protocol import Hello, Welcome

SECURE = ["tls", "wss"]


@attrs.frozen
class PKI:
    """The server's CA and certificate, the CA of the clients, and another CA."""

    server_ca: trustme.CA
    server_cert: trustme.LeafCert
    client_ca_file: Path
    client_ca: trustme.CA
    other_ca: trustme.CA

    def server(self, verify_mode: ssl.VerifyMode) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.server_cert.configure_cert(context)
        context.verify_mode = verify_mode
        context.load_verify_locations(cafile=str(self.client_ca_file))
        return context

    def client(self, issuer: trustme.CA | None) -> ssl.SSLContext:
        """A client context trusting the server, presenting a certificate of ``issuer``."""
        context = ssl.create_default_context()
        self.server_ca.configure_trust(context)
        if issuer is not None:
            issuer.issue_cert("resizer.internal", common_name="resizer").configure_cert(context)
        return context


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    server_ca, client_ca = trustme.CA(), trustme.CA()
    client_ca_file = tmp_path_factory.mktemp("pki") / "clients-ca.pem"
    client_ca.cert_pem.write_to_path(str(client_ca_file))
    return PKI(
        server_ca=server_ca,
        server_cert=server_ca.issue_cert("127.0.0.1"),
        client_ca_file=client_ca_file,
        client_ca=client_ca,
        other_ca=trustme.CA(),
    )


@attrs.define
class Server:
    """Records each connection's ``peer_certificate`` and welcomes it."""

    certificates: list[dict[str, Any] | None] = attrs.field(factory=list)

    async def __call__(self, conn: runtime.Connection) -> None:
        hello = await conn.receive()
        assert type(hello) is Hello
        self.certificates.append(conn.peer_certificate)
        conn.send_nowait(
            Welcome(mid=conn.next_mid(), cid=hello.mid, version=1, heartbeat=conn.session.heartbeat)
        )
        while True:
            await conn.receive()  # (until ConnectionClosed: the peer went)


async def start(
    nursery: trio.Nursery, scheme: str, server: Server, ssl_context: ssl.SSLContext | None
) -> str:
    serve = functools.partial(
        runtime.serve, f"{scheme}://127.0.0.1:0", server, ssl_context=ssl_context
    )
    url: str = await nursery.start(serve)
    return url


async def connect(url: str, ssl_context: ssl.SSLContext | None) -> None:
    hello = Hello(mid=0, role="client", name="resizer")
    with trio.fail_after(10):
        async with runtime.open_connection(url, hello=hello, ssl_context=ssl_context) as conn:
            assert conn.welcome is not None
            assert conn.peer_certificate is None  # (the client side has none)


def subject(certificate: dict[str, Any]) -> dict[str, str]:
    return {name: value for rdn in certificate["subject"] for name, value in rdn}


@pytest.mark.parametrize("scheme", SECURE)
async def test_a_verified_client_certificate_reaches_the_handler(
    scheme: str, pki: PKI, nursery: trio.Nursery
) -> None:
    server = Server()
    url = await start(nursery, scheme, server, pki.server(ssl.CERT_OPTIONAL))
    await connect(url, pki.client(pki.client_ca))
    (certificate,) = server.certificates
    assert certificate is not None
    assert subject(certificate)["commonName"] == "resizer"
    assert certificate["subjectAltName"] == (("DNS", "resizer.internal"),)


@pytest.mark.parametrize("scheme", SECURE)
async def test_no_client_certificate_is_none_when_optional(
    scheme: str, pki: PKI, nursery: trio.Nursery
) -> None:
    server = Server()
    url = await start(nursery, scheme, server, pki.server(ssl.CERT_OPTIONAL))
    await connect(url, pki.client(None))
    assert server.certificates == [None]


@pytest.mark.parametrize("scheme", SECURE)
async def test_a_server_that_asks_for_none_gets_none(
    scheme: str, pki: PKI, nursery: trio.Nursery
) -> None:
    server = Server()
    url = await start(nursery, scheme, server, pki.server(ssl.CERT_NONE))
    await connect(url, pki.client(pki.client_ca))
    assert server.certificates == [None]


@pytest.mark.parametrize("scheme", ["tcp", "ws"])
async def test_plain_transports_have_none(scheme: str, nursery: trio.Nursery) -> None:
    server = Server()
    url = await start(nursery, scheme, server, None)
    await connect(url, None)
    assert server.certificates == [None]


@pytest.mark.parametrize("scheme", SECURE)
@pytest.mark.parametrize(
    ("verify_mode", "issuer"),
    [
        pytest.param(ssl.CERT_REQUIRED, "other", id="required-other-ca"),
        pytest.param(ssl.CERT_REQUIRED, None, id="required-none"),
        pytest.param(ssl.CERT_OPTIONAL, "other", id="optional-other-ca"),
    ],
)
async def test_an_unverified_client_is_refused_in_the_handshake_and_the_server_serves_on(
    scheme: str,
    verify_mode: ssl.VerifyMode,
    issuer: str | None,
    pki: PKI,
    nursery: trio.Nursery,
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = Server()
    url = await start(nursery, scheme, server, pki.server(verify_mode))
    # (Under TLS 1.3 the client's handshake ends before the server checks its
    # certificate: the refusal is the connection closed at once, with no answer.)
    with pytest.raises((runtime.ConnectionClosed, ConnectionError)) as info:
        await connect(url, pki.client(pki.other_ca if issuer == "other" else None))
    if scheme == "wss":
        assert "if it verifies client certificates, it refused this one" in str(info.value)
    assert server.certificates == []  # the handler never saw it
    await connect(url, pki.client(pki.client_ca))
    assert len(server.certificates) == 1 and server.certificates[0] is not None
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []
