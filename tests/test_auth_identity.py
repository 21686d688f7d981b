"""Identities: users, tokens, certificate subjects (unit), and mTLS on a real leader."""

from __future__ import annotations

import math
import ssl
import time
from typing import Any

import pytest
import trio
import trustme

import runtime
from actors import AuthConfig, Leader, Token, User
from actors.leader._auth import Authenticator, AuthFailure, certificate_names, parse_dn
from protocol import SUPPORTED_VERSIONS, ErrorCode, Hello, Query, Result

# --------------------------------------------------------------------------- unit


def test_a_token_never_shows_its_secret():
    token = Token(secret="super-secret-value-123")
    user = User(name="u", tokens=("super-secret-value-123",))
    auth = AuthConfig(users=(user,))
    for text in (repr(token), repr(user), repr(auth), str(auth)):
        assert "super-secret" not in text


def test_users_are_checked():
    with pytest.raises(ValueError, match="two users are named 'a'"):
        AuthConfig(users=(User(name="a"), User(name="a")))
    with pytest.raises(ValueError, match="has a token another user has"):
        AuthConfig(users=(User(name="a", tokens=("t" * 20,)), User(name="b", tokens=("t" * 20,))))
    with pytest.raises(ValueError, match="cert_subject of another user"):
        AuthConfig(
            users=(User(name="a", cert_subject="CN=x,O=y"), User(name="b", cert_subject="O=y,CN=x"))
        )
    with pytest.raises(ValueError, match="name"):
        User(name="")
    with pytest.raises(ValueError, match="name"):
        User(name="a\nb")
    with pytest.raises(ValueError, match="submit_rate"):
        User(name="a", submit_rate=0)
    with pytest.raises(ValueError, match="cert_subject"):
        User(name="a", cert_subject="resizer")


def test_authenticate_by_token_every_token_of_a_user_and_expiry():
    now = time.time()
    auth = Authenticator(
        AuthConfig(
            users=(
                User(name="a", tokens=("old-" * 5, Token(secret="new-" * 5, expires_at=now + 60))),
                User(name="b", tokens=(Token(secret="gone" * 5, expires_at=now - 1),)),
            )
        )
    )
    assert auth.authenticate("old-" * 5, None, now)[0].name == "a"
    principal, expires = auth.authenticate("new-" * 5, None, now)
    assert principal.name == "a" and expires == now + 60
    with pytest.raises(AuthFailure, match="expired"):
        auth.authenticate("gone" * 5, None, now)
    with pytest.raises(AuthFailure, match="wrong token"):
        auth.authenticate("nope", None, now)
    with pytest.raises(AuthFailure, match="needs a token"):
        auth.authenticate(None, None, now)


CERT = {
    "subject": ((("commonName", "resizer"),), (("organizationName", "Acme"),)),
    "subjectAltName": (("DNS", "resizer.internal"), ("URI", "spiffe://acme/resizer")),
    "notAfter": "Jan  1 00:00:00 2100 GMT",
}


def test_certificate_subjects_and_sans():
    names = certificate_names(CERT)
    assert parse_dn("O=Acme, CN=resizer") in names
    assert parse_dn("CN=resizer") <= parse_dn("CN=resizer,O=Acme")
    assert parse_dn("DNS:resizer.internal") in names
    assert parse_dn("URI:spiffe://acme/resizer") in names
    auth = Authenticator(
        AuthConfig(
            users=(
                User(name="r", cert_subject="CN=resizer,O=Acme"),
                User(name="s", cert_subject="URI:spiffe://acme/other"),
            )
        )
    )
    principal, expires = auth.authenticate(None, CERT, time.time())
    assert principal.name == "r" and expires is not None and expires > time.time()
    with pytest.raises(AuthFailure, match="names no user"):
        auth.authenticate(None, {"subject": ((("commonName", "mallory"),),)}, time.time())
    # Every attribute given must be in the subject; a part of it is enough.
    part = Authenticator(AuthConfig(users=(User(name="p", cert_subject="CN=resizer"),)))
    assert part.authenticate(None, CERT, time.time())[0].name == "p"
    other_o = Authenticator(AuthConfig(users=(User(name="p", cert_subject="CN=resizer,O=Evil"),)))
    with pytest.raises(AuthFailure, match="names no user"):
        other_o.authenticate(None, CERT, time.time())
    both = Authenticator(
        AuthConfig(
            users=(User(name="a", cert_subject="CN=resizer"), User(name="b", cert_subject="O=Acme"))
        )
    )
    with pytest.raises(AuthFailure, match="several users"):
        both.authenticate(None, CERT, time.time())
    # A token, when given, decides: a wrong one fails even with a good certificate.
    with pytest.raises(AuthFailure, match="wrong token"):
        auth.authenticate("x" * 20, CERT, time.time())


def test_the_submit_bucket():
    auth = Authenticator(AuthConfig(users=(User(name="u", submit_rate=10.0, submit_burst=2),)))
    p = auth.principals["u"]
    assert p.take_submit(0.0) is None and p.take_submit(0.0) is None
    assert p.take_submit(0.0) == 0.1
    assert p.take_submit(0.1) is None  # one came back in 0.1 s
    assert p.take_submit(0.1) == 0.1
    unlimited = Authenticator(AuthConfig(users=(User(name="v", submit_rate=math.inf),)))
    assert all(unlimited.principals["v"].take_submit(0.0) is None for _ in range(100_000))


# --------------------------------------------------------------------------- mTLS


@pytest.fixture
def pki(tmp_path: Any) -> dict[str, Any]:
    ca = trustme.CA()
    other = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.configure_cert(server_ctx)
    ca.configure_trust(server_ctx)
    server_ctx.verify_mode = ssl.CERT_OPTIONAL

    def client(issuer: trustme.CA | None, cn: str = "resizer") -> ssl.SSLContext:
        ctx = ssl.create_default_context()
        ca.configure_trust(ctx)
        if issuer is not None:
            issuer.issue_cert(f"{cn}.internal", common_name=cn).configure_cert(ctx)
        return ctx

    return {"server": server_ctx, "client": client, "ca": ca, "other": other}


def hello(**kw: Any) -> Hello:
    return Hello(mid=0, role="client", versions=SUPPORTED_VERSIONS, **kw)


@pytest.mark.e2e
async def test_a_client_certificate_is_an_identity_and_a_wrong_one_is_refused(pki):
    auth = AuthConfig(
        users=(
            User(name="resizer", cert_subject="DNS:resizer.internal", serve=["img.>"]),
            User(name="web", tokens=("w" * 20,), submit=["img.>"]),
        )
    )
    leader = Leader(listen=["tls://127.0.0.1:0"], ssl_context=pki["server"], auth=auth, memory=True)
    async with trio.open_nursery() as nursery:
        [url] = await nursery.start(leader.run)
        good = pki["client"](pki["ca"])
        async with runtime.open_connection(
            url,
            hello=Hello(
                mid=0, role="worker", versions=SUPPORTED_VERSIONS, patterns=("img.x",), credit=1
            ),
            ssl_context=good,
        ):
            assert leader.stats()["workers"] == 1
        # a certificate of the right CA that names nobody: auth_failed
        nobody = pki["client"](pki["ca"], cn="mallory")
        with pytest.raises(runtime.HandshakeError) as info:
            async with runtime.open_connection(url, hello=hello(), ssl_context=nobody):
                pass
        assert info.value.code == ErrorCode.AUTH_FAILED and "names no user" in info.value.message
        # a certificate of another CA: refused at the TLS handshake
        with pytest.raises((runtime.ConnectionClosed, ConnectionError, runtime.HandshakeError)):
            async with runtime.open_connection(
                url, hello=hello(), ssl_context=pki["client"](pki["other"]), connect_timeout=5
            ):
                pass
        # no certificate: a token still works on the same listener
        async with runtime.open_connection(
            url, hello=hello(token="w" * 20), ssl_context=pki["client"](None)
        ) as conn:
            q = Query(mid=conn.next_mid(), what="stats")
            await conn.send(q)
            with trio.fail_after(5):
                while True:
                    got = [m for m in await conn.receive_some() if getattr(m, "cid", 0) == q.mid]
                    if got:
                        break
            assert isinstance(got[0], Result)
        nursery.cancel_scope.cancel()
