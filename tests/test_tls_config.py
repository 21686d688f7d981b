"""TLS contexts from files: :func:`actors.client_ssl_context` and
:func:`actors.server_ssl_context`.

Every wrong file or combination raises :class:`actors.TLSConfigError` naming the option,
the file and the problem; the contexts built from good files connect a client to a leader
over ``tls://``, with a client certificate (how a leader refuses one is
tests/test_tls_client_cert.py's). Files are made with trustme in
``tmp_path``.
"""

from __future__ import annotations

import builtins
import ssl
from pathlib import Path

import pytest
import trio
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from actors import (
    Client,
    Leader,
    TLSConfigError,
    client_ssl_context,
    server_ssl_context,
)


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def files(tmp_path: Path, ca: trustme.CA) -> dict[str, str]:
    """Good and bad PEM files, by role."""
    server = ca.issue_cert("127.0.0.1", "localhost")
    client = ca.issue_cert("client@example.org")
    other = trustme.CA().issue_cert("localhost")
    key = serialization.load_pem_private_key(server.private_key_pem.bytes(), None)
    certificate = x509.load_pem_x509_certificate(server.cert_chain_pems[0].bytes())
    made = {
        "ca": ca.cert_pem.bytes(),
        "cert": server.cert_chain_pems[0].bytes(),
        "key": server.private_key_pem.bytes(),
        "both": server.private_key_and_cert_chain_pem.bytes(),
        "client_cert": client.cert_chain_pems[0].bytes(),
        "client_key": client.private_key_pem.bytes(),
        "other_key": other.private_key_pem.bytes(),
        "encrypted_key": key.private_bytes(  # type: ignore[union-attr]
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"passphrase"),
        ),
        "der": certificate.public_bytes(serialization.Encoding.DER),
        "damaged": b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        "damaged_key": b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        "text": b"hello, not a certificate\n",
        "empty": b"",
    }
    paths = {}
    for name, data in made.items():
        path = tmp_path / f"{name}.pem"
        path.write_bytes(data)
        paths[name] = str(path)
    paths["missing"] = str(tmp_path / "missing.pem")
    paths["directory"] = str(tmp_path)
    return paths


def refused(build, **kwargs) -> TLSConfigError:
    with pytest.raises(TLSConfigError) as failed:
        build(**kwargs)
    error = failed.value
    assert isinstance(error, ValueError)
    assert str(error).startswith(f"{error.option}: {error.path}: " if error.path else error.option)
    return error


@pytest.mark.parametrize(
    ("option", "name", "problem"),
    [
        ("ca", "missing", "no such file"),
        ("ca", "directory", "is a directory, not a PEM file"),
        ("ca", "empty", "is empty: expected a PEM certificate"),
        ("ca", "text", "is not PEM: expected a PEM certificate"),
        ("ca", "der", "is not PEM (binary, DER perhaps)"),
        ("ca", "key", "holds no certificate: its PEM block is -----BEGIN"),
        ("ca", "damaged", "its certificate cannot be read (a damaged or truncated PEM file?)"),
        ("cert", "missing", "no such file"),
        ("cert", "key", "holds no certificate"),
        ("cert", "damaged", "its certificate cannot be read"),
    ],
)
def test_a_wrong_ca_or_cert_file_names_the_option_the_file_and_the_problem(
    files: dict[str, str], option: str, name: str, problem: str
) -> None:
    kwargs = {option: files[name]}
    if option == "cert":
        kwargs["key"] = files["key"]
    error = refused(client_ssl_context, **kwargs)
    assert (error.option, error.path) == (option, files[name])
    assert problem in error.problem


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("missing", "no such file"),
        ("cert", "holds no private key: its PEM block is -----BEGIN CERTIFICATE-----"),
        ("other_key", "does not match the certificate"),
        ("encrypted_key", "is encrypted (it has a passphrase)"),
        ("damaged_key", "its private key cannot be read"),
    ],
)
@pytest.mark.parametrize("side", ["client", "server"])
def test_a_wrong_key_names_the_key_file(
    files: dict[str, str], name: str, problem: str, side: str
) -> None:
    if side == "client":
        error = refused(client_ssl_context, cert=files["cert"], key=files[name])
    else:
        error = refused(server_ssl_context, cert=files["cert"], key=files[name])
    assert (error.option, error.path) == ("key", files[name])
    assert problem in error.problem
    if name == "other_key":
        assert files["cert"] in error.problem


def test_a_file_that_cannot_be_read_says_so(
    files: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def denied(path, *args, **kwargs):
        if str(path) == files["ca"]:
            raise PermissionError(13, "Permission denied", str(path))
        return builtins.open(path, *args, **kwargs)

    # (tests may run as root, who reads any file: the refusal is simulated)
    monkeypatch.setattr("actors._tls.open", denied, raising=False)
    error = refused(client_ssl_context, ca=files["ca"])
    assert error.option == "ca" and "cannot be read: permission denied" in error.problem


def test_a_key_without_a_certificate_and_a_certificate_without_a_key(
    files: dict[str, str],
) -> None:
    error = refused(client_ssl_context, key=files["key"])
    assert (error.option, error.path) == ("key", None)
    assert "given without cert" in str(error)
    error = refused(client_ssl_context, cert=files["cert"])
    assert (error.option, error.path) == ("cert", files["cert"])
    assert "holds no private key, and no key file was given" in error.problem
    error = refused(server_ssl_context, cert=files["cert"], key=None)
    assert error.option == "cert"
    # A file holding both is enough.
    assert client_ssl_context(cert=files["both"]).verify_mode == ssl.CERT_REQUIRED
    server_ssl_context(cert=files["both"], key=None)


def test_the_server_contexts_client_checks(files: dict[str, str]) -> None:
    plain = server_ssl_context(cert=files["cert"], key=files["key"])
    assert plain.verify_mode == ssl.CERT_NONE
    optional = server_ssl_context(cert=files["cert"], key=files["key"], client_ca=files["ca"])
    assert optional.verify_mode == ssl.CERT_OPTIONAL
    required = server_ssl_context(
        cert=files["cert"], key=files["key"], client_ca=files["ca"], require_client_cert=True
    )
    assert required.verify_mode == ssl.CERT_REQUIRED
    error = refused(
        server_ssl_context, cert=files["cert"], key=files["key"], require_client_cert=True
    )
    assert error.option == "require_client_cert" and "needs client_ca" in str(error)
    error = refused(
        server_ssl_context, cert=files["cert"], key=files["key"], client_ca=files["text"]
    )
    assert (error.option, error.path) == ("client_ca", files["text"])


def test_the_client_context_trusts_only_the_ca_given(files: dict[str, str]) -> None:
    context = client_ssl_context(ca=files["ca"])
    assert context.check_hostname and context.verify_mode == ssl.CERT_REQUIRED
    assert len(context.get_ca_certs()) == 1
    assert client_ssl_context().verify_mode == ssl.CERT_REQUIRED  # (the system's trust)


@pytest.mark.e2e
async def test_contexts_from_files_connect_a_client_to_a_leader(
    nursery: trio.Nursery, files: dict[str, str]
) -> None:
    server = server_ssl_context(
        cert=files["cert"], key=files["key"], client_ca=files["ca"], require_client_cert=True
    )
    leader = Leader(listen=["tls://127.0.0.1:0"], memory=True, ssl_context=server)
    [url] = await nursery.start(leader.run)
    with trio.fail_after(20):
        mutual = client_ssl_context(
            ca=files["ca"], cert=files["client_cert"], key=files["client_key"]
        )
        async with Client.connect(url, ssl_context=mutual) as client:
            await client.publish("events.x", 1, qos=1)
