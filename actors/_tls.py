"""TLS contexts from certificate files, checked: what a client, a worker or a leader needs
for ``tls://`` and ``wss://``.

:func:`client_ssl_context` trusts a CA of your own (instead of the system's) and may
present a client certificate (mutual TLS); :func:`server_ssl_context` holds a leader's
certificate and may check its clients' certificates. Every file is checked before OpenSSL
sees it, so that a wrong path or a wrong file says which option and what is wrong with it
(:class:`TLSConfigError`), instead of OpenSSL's ``[X509] PEM lib``.
"""

from __future__ import annotations

import os
import ssl
from typing import NoReturn

#: A file name as the functions below take it.
StrPath = str | os.PathLike[str]

_CERTIFICATE = b"-----BEGIN CERTIFICATE-----"
_PRIVATE_KEY = b"PRIVATE KEY-----"  # (BEGIN PRIVATE KEY, RSA PRIVATE KEY, EC PRIVATE KEY...)
#: Bytes of a certificate or key file read at most (they are a few KiB; a CA bundle a few
#: hundred): a bigger file is the wrong file.
MAX_PEM_BYTES = 16 * 1024 * 1024


class TLSConfigError(ValueError):
    """A TLS option names a file that is missing, unreadable or not what it should be,
    or the options do not go together (a key without a certificate...).

    The message says which option, which file and what is wrong: ``cert: leader.pem: no
    such file``. Callers with options of their own names (``--tls-cert``, ``tls_cert``)
    rebuild it from the attributes.

    Attributes:
      option: the argument of :func:`client_ssl_context` or :func:`server_ssl_context`
        (``ca``, ``cert``, ``key``, ``client_ca``, ``require_client_cert``).
      path: the file, when the problem is a file's.
      problem: what is wrong, and what to do.
    """

    def __init__(self, option: str, problem: str, path: StrPath | None = None) -> None:
        self.option = option
        self.path = None if path is None else os.fspath(path)
        self.problem = problem
        where = option if self.path is None else f"{option}: {self.path}"
        super().__init__(f"{where}: {problem}")


def client_ssl_context(
    *, ca: StrPath | None = None, cert: StrPath | None = None, key: StrPath | None = None
) -> ssl.SSLContext:
    """A TLS context for connecting to a leader (``Client.connect(ssl_context=...)``,
    ``run_worker(ssl_context=...)``).

    The leader's certificate is verified, its host name included.

    Args:
      ca: a PEM file of the CA certificates to trust instead of the system's (a private
        CA, or a self-signed leader certificate). None: the system's.
      cert: a PEM client certificate to present (mutual TLS), for leaders that check them;
        its private key in ``key``, or in the same file.
      key: the PEM private key of ``cert`` (not encrypted).

    Raises:
      TLSConfigError: a file is missing, unreadable, not PEM or holds no certificate (no
        key); ``key`` does not match ``cert``; ``key`` given without ``cert``.
    """
    if key is not None and cert is None:
        raise TLSConfigError(
            "key", "given without cert: a client certificate needs both cert and key"
        )
    context = _context(ssl.Purpose.SERVER_AUTH, "ca", ca)
    if cert is not None:
        _load_certificate(context, cert, key)
    return context


def server_ssl_context(
    *,
    cert: StrPath,
    key: StrPath | None,
    client_ca: StrPath | None = None,
    require_client_cert: bool = False,
) -> ssl.SSLContext:
    """A TLS context for a leader's ``tls://`` and ``wss://`` listeners
    (``Leader(ssl_context=...)``).

    Args:
      cert: the leader's PEM certificate (its chain after it, if any); it must name the
        host clients connect to.
      key: the PEM private key of ``cert`` (not encrypted); None: it is in ``cert``'s file.
      client_ca: a PEM file of the CAs that sign client certificates: a client that
        presents one signed by another CA is refused at the handshake; one that presents
        none is let in (to prove itself with a token) unless ``require_client_cert``.
      require_client_cert: refuse clients without a certificate (needs ``client_ca``).

    Raises:
      TLSConfigError: a file is missing, unreadable, not PEM or holds no certificate (no
        key); ``key`` does not match ``cert``; ``require_client_cert`` without
        ``client_ca``.
    """
    if require_client_cert and client_ca is None:
        raise TLSConfigError(
            "require_client_cert",
            "needs client_ca: the CA file that signs the client certificates",
        )
    context = _context(ssl.Purpose.CLIENT_AUTH, "client_ca", client_ca)
    _load_certificate(context, cert, key)
    if client_ca is not None:
        context.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_OPTIONAL
    return context


def _read(option: str, path: StrPath) -> bytes:
    """The bytes of file ``path`` (at most :data:`MAX_PEM_BYTES`), named ``option``.

    Raises:
      TLSConfigError: no such file, a directory, not readable, or too big.
    """
    try:
        with open(path, "rb") as file:
            data = file.read(MAX_PEM_BYTES + 1)
    except FileNotFoundError:
        _fail(option, path, "no such file")
    except IsADirectoryError:
        _fail(option, path, "is a directory, not a PEM file")
    except PermissionError:
        _fail(option, path, "cannot be read: permission denied (check its owner and mode)")
    except OSError as exc:
        _fail(option, path, f"cannot be read: {exc.strerror or exc}")
    if len(data) > MAX_PEM_BYTES:
        _fail(option, path, f"is over {MAX_PEM_BYTES >> 20} MiB: not a certificate or key file")
    return data


def _check_pem(option: str, path: StrPath, data: bytes, marker: bytes, what: str) -> None:
    """Check that ``data`` (file ``path``) holds a PEM block of ``what`` (``marker``)."""
    if marker in data:
        return
    if not data.strip():
        _fail(option, path, f"is empty: expected a PEM {what}")
    if b"-----BEGIN " not in data:
        if b"\x00" in data or data[:1] == b"\x30":  # (DER starts with a SEQUENCE, 0x30)
            _fail(
                option, path,
                f"is not PEM (binary, DER perhaps): expected a PEM {what}; convert it with"
                " `openssl x509 -inform der -in FILE -out FILE.pem` (`openssl pkey` for a key)",
            )  # fmt: skip
        _fail(option, path, f"is not PEM: expected a PEM {what} (-----BEGIN ...-----)")
    found = data[data.index(b"-----BEGIN ") :].split(b"\n", 1)[0].decode("ascii", "replace")
    _fail(option, path, f"holds no {what}: its PEM block is {found.strip()}")


def _context(purpose: ssl.Purpose, option: str, trust: StrPath | None) -> ssl.SSLContext:
    """:func:`ssl.create_default_context` for ``purpose``, trusting only the CA
    certificates of file ``trust`` (option ``option``) when given (else the system's, for
    a client; none, for a server)."""
    if trust is None:
        return ssl.create_default_context(purpose)
    _check_pem(option, trust, _read(option, trust), _CERTIFICATE, "certificate")
    try:
        return ssl.create_default_context(purpose, cafile=os.fspath(trust))
    except ssl.SSLError as exc:
        _fail(option, trust, _damaged("certificate", exc))


def _load_certificate(context: ssl.SSLContext, cert: StrPath, key: StrPath | None) -> None:
    """Load certificate ``cert`` and its private key (file ``key``, or in ``cert``'s)."""
    data = _read("cert", cert)
    _check_pem("cert", cert, data, _CERTIFICATE, "certificate")
    if key is None:
        if _PRIVATE_KEY not in data:
            _fail("cert", cert, "holds no private key, and no key file was given: give its key")
    else:
        _check_pem("key", key, _read("key", key), _PRIVATE_KEY, "private key")

    def no_password() -> NoReturn:  # (else OpenSSL would prompt on the terminal)
        _fail(
            "key", key if key is not None else cert,
            "is encrypted (it has a passphrase): give an unencrypted key"
            " (`openssl pkey -in KEY -out PLAIN.key`), readable only by its user",
        )  # fmt: skip

    try:
        context.load_cert_chain(
            os.fspath(cert), None if key is None else os.fspath(key), password=no_password
        )
    except ssl.SSLError as exc:
        holder = key if key is not None else cert
        if exc.reason in ("KEY_VALUES_MISMATCH", "KEY_TYPE_MISMATCH"):
            _fail(
                "key", holder,
                f"does not match the certificate {os.fspath(cert)} (another certificate's key?)",
            )  # fmt: skip
        try:  # which of the two is damaged?
            ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_verify_locations(
                cafile=os.fspath(cert)
            )
        except ssl.SSLError as cert_exc:
            _fail("cert", cert, _damaged("certificate", cert_exc))
        _fail("key", holder, _damaged("private key", exc))


def _damaged(what: str, exc: ssl.SSLError) -> str:
    """The problem of a file whose PEM ``what`` OpenSSL could not load (``exc``)."""
    text = str(exc.args[1]) if len(exc.args) > 1 else str(exc)
    reason = text.split("] ", 1)[-1].split(" (_ssl.c", 1)[0]
    return f"its {what} cannot be read (a damaged or truncated PEM file?); OpenSSL says: {reason}"


def _fail(option: str, path: StrPath, problem: str) -> NoReturn:
    raise TLSConfigError(option, problem, path)
