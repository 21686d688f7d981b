"""Who may connect to a leader, and what each identity may do.

An :class:`AuthConfig` lists the :class:`User` identities a leader knows. A peer proves
one in its Hello with a token (:class:`Token`: a secret, perhaps with an expiry), or on a
``tls://``/``wss://`` listener with a client certificate whose subject or subject
alternative name is a user's ``cert_subject``. Each user has NATS-style permission lists
(:class:`protocol.Permissions`) for the subjects it may submit jobs to, publish to,
subscribe to and serve as a worker, an ``admin`` flag (others' jobs, dead letters,
scaling), and limits (connections, payload size, submit rate).

Secrets are kept as their SHA-256 digests only and compared in constant time
(:func:`hmac.compare_digest`, against every known digest, so that the time taken does not
tell which user, if any, was close). A secret is never logged or put in an error message.

:class:`Authenticator` turns an AuthConfig into what the leader asks on each connection;
:class:`Principal` is an identity at run time (its permissions, its connections, its
submit-rate bucket), shared by all of its connections.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import time
from collections.abc import Iterable, Mapping
from typing import Any

import attrs

from protocol import MAX_NAME_LENGTH, Permissions

#: Tokens shorter than this are accepted, with a warning from the cluster's loader.
MIN_TOKEN_LENGTH = 16
#: Default connections one identity may hold at once.
DEFAULT_MAX_CONNECTIONS_PER_IDENTITY = 256
#: Default submits per second per identity (a token bucket), and its burst: above what one
#: leader accepts in all (20,000 to 35,000 a second measured here), so that it binds only
#: an identity given a lower rate; a runaway identity is then stopped by the leader's own
#: queue limits. Set lower rates per user to share a leader fairly.
DEFAULT_SUBMIT_RATE = 100_000.0
DEFAULT_SUBMIT_BURST = 100_000

#: The long names of certificate subject attributes, as :meth:`ssl.SSLSocket.getpeercert`
#: gives them, by the short names a ``cert_subject`` uses.
_DN_NAMES = {
    "commonName": "CN",
    "organizationName": "O",
    "organizationalUnitName": "OU",
    "countryName": "C",
    "stateOrProvinceName": "ST",
    "localityName": "L",
    "emailAddress": "EMAILADDRESS",
    "domainComponent": "DC",
    "serialNumber": "SERIALNUMBER",
    "userId": "UID",
    "streetAddress": "STREET",
}
#: The subject alternative name kinds a ``cert_subject`` may name, by getpeercert's names.
_SAN_KINDS = {"DNS": "DNS", "email": "EMAIL", "URI": "URI", "IP Address": "IP"}


def token_digest(secret: str) -> bytes:
    """The SHA-256 digest a token is kept and compared as."""
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).digest()


def _check_name(inst: Any, attribute: attrs.Attribute[str], value: str) -> None:
    if (
        not isinstance(value, str)
        or not 0 < len(value) <= MAX_NAME_LENGTH
        or any(ord(c) < 32 or ord(c) == 127 for c in value)
    ):
        raise ValueError(
            f"a user's name must be 1 to {MAX_NAME_LENGTH} printable characters, got {value!r:.80}"
        )


@attrs.frozen(kw_only=True)
class Token:
    """A secret that proves a :class:`User`'s identity.

    Args:
      secret: the token (kept as its SHA-256 digest; never shown by ``repr``).
      expires_at: Unix time after which it is refused; a connection that proved itself
        with it is closed then (``auth_failed``: its client reconnects with a new one, from
        its token provider). None: never.
    """

    secret: str = attrs.field(repr=False)
    expires_at: float | None = None
    digest: bytes = attrs.field(init=False, repr=False, eq=False)

    def __attrs_post_init__(self) -> None:
        if not isinstance(self.secret, str) or not self.secret:
            raise ValueError("a token must be a non-empty string")
        if self.expires_at is not None and not isinstance(self.expires_at, int | float):
            raise TypeError(f"expires_at must be a Unix time, got {self.expires_at!r:.80}")
        object.__setattr__(self, "digest", token_digest(self.secret))


def _tokens(value: Iterable[Token | str] | Token | str) -> tuple[Token, ...]:
    if isinstance(value, Token | str):
        value = (value,)
    return tuple(t if isinstance(t, Token) else Token(secret=t) for t in value)


def _permissions(what: str) -> Any:
    def convert(value: Iterable[str] | Permissions) -> Permissions:
        if isinstance(value, Permissions):
            return value
        return Permissions.parse(value, what=what)

    return convert


def _positive_or_none(inst: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is not None and not (isinstance(value, int | float) and value > 0):
        raise ValueError(f"{attribute.name} must be a positive number, got {value!r:.80}")


def parse_dn(text: str) -> frozenset[tuple[str, str]] | tuple[str, str]:
    """A ``cert_subject`` as what it is compared with: a distinguished name (``CN=x,O=y``,
    in any order) as a set of ``(ATTRIBUTE, value)``, or a subject alternative name
    (``DNS:x``, ``email:x``, ``URI:x``, ``IP:x``) as ``(KIND, value)``.

    Raises:
      ValueError: neither form.
    """
    kind, colon, rest = text.partition(":")
    if colon and kind.upper() in {"DNS", "EMAIL", "URI", "IP"} and "=" not in kind:
        return (kind.upper(), rest)
    parts: list[tuple[str, str]] = []
    current = ""
    escaped = False
    for char in text + ",":
        if escaped:
            current += char
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == ",":
            key, equals, value = current.partition("=")
            if not equals or not key.strip() or not value.strip():
                raise ValueError(
                    f"cert_subject {text!r:.200}: expected ATTRIBUTE=value pairs separated by"
                    " commas (CN=resizer,O=Acme) or a subject alternative name (DNS:host,"
                    " email:addr, URI:uri, IP:addr)"
                )
            parts.append((key.strip().upper(), value.strip()))
            current = ""
        else:
            current += char
    return frozenset(parts)


def certificate_names(
    cert: Mapping[str, Any],
) -> list[frozenset[tuple[str, str]] | tuple[str, str]]:
    """What a peer certificate (``getpeercert()``'s dict) may be known by: its subject as
    a distinguished name, and each subject alternative name (see :func:`parse_dn`)."""
    names: list[frozenset[tuple[str, str]] | tuple[str, str]] = []
    subject = []
    for rdn in cert.get("subject", ()):
        for key, value in rdn:
            subject.append((_DN_NAMES.get(key, key).upper(), str(value)))
    if subject:
        names.append(frozenset(subject))
    for kind, value in cert.get("subjectAltName", ()):
        short = _SAN_KINDS.get(kind)
        if short is not None:
            names.append((short, str(value)))
    return names


@attrs.frozen(kw_only=True)
class User:
    """An identity a leader knows, what proves it, and what it may do.

    Args:
      name: the identity (in logs, ``not_permitted`` messages, and as the owner of the
        jobs it submits).
      tokens: secrets that prove it (several during a rotation); a string is a
        :class:`Token` that never expires.
      cert_subject: a TLS client certificate proves it when its subject has every
        attribute of this distinguished name (``"CN=resizer"`` matches ``CN=resizer,
        O=Acme,OU=ops``; ``"CN=resizer,O=Acme"`` needs both) or one of its subject
        alternative names is this (``"DNS:resizer.internal"``,
        ``"email:ops@example.com"``, ``"URI:spiffe://example/resizer"``, ``"IP:10.0.0.5"``).
      submit: subject patterns it may submit jobs to (a leading ``!`` denies).
      publish: subject patterns it may publish messages to.
      subscribe: subject patterns it may subscribe to (what a denied pattern matches is
        never delivered to it).
      serve: subject patterns it may serve as a worker (every pattern a worker names must
        be wholly allowed).
      admin: it may cancel, read and resubmit other identities' jobs, and act on dead
        letters.
      max_connections: connections it may hold at once (None: the AuthConfig's).
      max_payload: bytes of one submitted or published payload (None: the AuthConfig's).
      submit_rate: submits per second, on average (None: the AuthConfig's; ``math.inf``:
        no limit); beyond it submits are answered ``busy`` with ``retry_after``.
      submit_burst: submits it may make at once above the rate (None: the AuthConfig's).
    """

    name: str = attrs.field(validator=_check_name)
    tokens: tuple[Token, ...] = attrs.field(default=(), converter=_tokens)
    cert_subject: str | None = None
    submit: Permissions = attrs.field(default=(), converter=_permissions("submit"))
    publish: Permissions = attrs.field(default=(), converter=_permissions("publish"))
    subscribe: Permissions = attrs.field(default=(), converter=_permissions("subscribe"))
    serve: Permissions = attrs.field(default=(), converter=_permissions("serve"))
    admin: bool = False
    max_connections: int | None = attrs.field(default=None, validator=_positive_or_none)
    max_payload: int | None = attrs.field(default=None, validator=_positive_or_none)
    submit_rate: float | None = attrs.field(default=None, validator=_positive_or_none)
    submit_burst: int | None = attrs.field(default=None, validator=_positive_or_none)
    cert_names: Any = attrs.field(init=False, repr=False, eq=False)

    def __attrs_post_init__(self) -> None:
        names = None if self.cert_subject is None else parse_dn(self.cert_subject)
        object.__setattr__(self, "cert_names", names)


@attrs.frozen(kw_only=True)
class AuthConfig:
    """The identities a leader accepts, and the default limits of each.

    Once a leader has an AuthConfig, every connection must prove one of its users (else
    ``auth_failed``), and every action is checked against that user's permissions (else
    ``not_permitted``, with no effect).

    Args:
      users: the identities (names unique; no token or certificate subject shared).
      max_connections: connections one identity may hold at once, unless its user says.
      max_payload: bytes of one payload an identity may submit or publish, unless its user
        says (None: the leader's frame limit only).
      submit_rate: submits per second one identity may make, on average (a token bucket;
        ``math.inf``: no limit), unless its user says.
      submit_burst: submits above the rate one identity may make at once.

    Raises:
      ValueError: two users with one name, token or certificate subject.
    """

    users: tuple[User, ...] = attrs.field(converter=tuple)
    max_connections: int = attrs.field(
        default=DEFAULT_MAX_CONNECTIONS_PER_IDENTITY, validator=_positive_or_none
    )
    max_payload: int | None = attrs.field(default=None, validator=_positive_or_none)
    submit_rate: float = attrs.field(default=DEFAULT_SUBMIT_RATE, validator=_positive_or_none)
    submit_burst: int = attrs.field(default=DEFAULT_SUBMIT_BURST, validator=_positive_or_none)

    def __attrs_post_init__(self) -> None:
        names: set[str] = set()
        digests: set[bytes] = set()
        subjects: set[Any] = set()
        for user in self.users:
            if not isinstance(user, User):
                raise TypeError(f"AuthConfig.users holds Users, got {type(user).__name__}")
            if user.name in names:
                raise ValueError(f"two users are named {user.name!r}")
            names.add(user.name)
            for token in user.tokens:
                if token.digest in digests:
                    raise ValueError(f"user {user.name!r} has a token another user has too")
                digests.add(token.digest)
            if user.cert_names is not None:
                if user.cert_names in subjects:
                    raise ValueError(
                        f"user {user.name!r} has the cert_subject of another user"
                        f" ({user.cert_subject!r})"
                    )
                subjects.add(user.cert_names)

    @classmethod
    def shared_token(cls, secret: str) -> AuthConfig:
        """One identity, ``token``, proved by ``secret``, that may do everything (what
        ``Leader(token=...)`` means)."""
        return cls(
            users=(
                User(
                    name="token",
                    tokens=(secret,),
                    submit=Permissions.ALL,
                    publish=Permissions.ALL,
                    subscribe=Permissions.ALL,
                    serve=Permissions.ALL,
                    admin=True,
                    submit_rate=math.inf,
                    max_connections=10**9,
                ),
            )
        )

    def with_users(self, *users: User) -> AuthConfig:
        """This configuration with ``users`` added."""
        return attrs.evolve(self, users=(*self.users, *users))


@attrs.define(eq=False)
class Principal:
    """An identity at run time: its user, its connections, its submit-rate bucket.

    One per user, shared by that user's connections (so that its limits count all of
    them), and replaced when :meth:`Authenticator` is rebuilt (a rotation keeps nothing
    but the name)."""

    user: User
    max_connections: int
    max_payload: int | None
    submit_rate: float
    submit_burst: float
    connections: int = 0
    _bucket: float = 0.0
    _bucket_at: float = float("-inf")
    #: when a denial of this identity was last logged, and how many since were not
    denied_logged_at: float = float("-inf")
    denied_unlogged: int = 0

    def __attrs_post_init__(self) -> None:
        self._bucket = self.submit_burst

    @property
    def name(self) -> str:
        return self.user.name

    def take_submit(self, now: float) -> float | None:
        """Charge one submit at ``now``; None if it may go, else the seconds until it may
        (its ``retry_after``)."""
        rate = self.submit_rate
        if rate == math.inf:
            return None
        bucket = min(self.submit_burst, self._bucket + (now - self._bucket_at) * rate)
        self._bucket_at = now
        if bucket >= 1.0:
            self._bucket = bucket - 1.0
            return None
        self._bucket = bucket
        return max(0.001, round((1.0 - bucket) / rate, 3))


class AuthFailure(Exception):
    """A Hello's credentials prove no identity (the message says why, without secrets)."""


class Authenticator:
    """What a leader asks of an :class:`AuthConfig` on each connection."""

    def __init__(self, config: AuthConfig) -> None:
        self.config = config
        self.principals: dict[str, Principal] = {}
        self._tokens: list[tuple[bytes, Token, Principal]] = []
        self._certs: list[tuple[Any, Principal]] = []
        for user in config.users:
            principal = Principal(
                user,
                max_connections=user.max_connections or config.max_connections,
                max_payload=user.max_payload or config.max_payload,
                submit_rate=user.submit_rate or config.submit_rate,
                submit_burst=float(user.submit_burst or config.submit_burst),
            )
            self.principals[user.name] = principal
            for token in user.tokens:
                self._tokens.append((token.digest, token, principal))
            if user.cert_names is not None:
                self._certs.append((user.cert_names, principal))

    def authenticate(
        self, token: str | None, certificate: Mapping[str, Any] | None, now_wall: float
    ) -> tuple[Principal, float | None]:
        """The identity a Hello's ``token`` (or else the TLS client ``certificate``)
        proves, and when that proof expires (Unix time, or None).

        A token, when given, decides: a wrong one fails even with a good certificate.

        Raises:
          AuthFailure: nothing given, a token that no user has or that has expired, a
            certificate that names no user.
        """
        return self.authenticate_digest(
            None if token is None else token_digest(token), certificate, now_wall
        )

    def authenticate_digest(
        self, presented: bytes | None, certificate: Mapping[str, Any] | None, now_wall: float
    ) -> tuple[Principal, float | None]:
        """:meth:`authenticate` with the token's SHA-256 digest (what a connection keeps)."""
        if presented is not None:
            found: tuple[Token, Principal] | None = None
            for digest, known, principal in self._tokens:  # every one: constant time
                if hmac.compare_digest(digest, presented):
                    found = (known, principal)
            if found is None:
                raise AuthFailure("wrong token")
            known, principal = found
            if known.expires_at is not None and known.expires_at <= now_wall:
                raise AuthFailure("the token has expired")
            return principal, known.expires_at
        if certificate:
            names = certificate_names(certificate)
            subject = next((n for n in names if isinstance(n, frozenset)), frozenset())
            found_by_cert = [
                principal
                for cert_names, principal in self._certs
                if (
                    cert_names <= subject
                    if isinstance(cert_names, frozenset)
                    else cert_names in names
                )
            ]
            if len(found_by_cert) == 1:
                return found_by_cert[0], _not_after(certificate)
            if found_by_cert:
                raise AuthFailure(
                    "the client certificate matches the cert_subject of several users: "
                    + ", ".join(repr(p.name) for p in found_by_cert)
                )
            subject = ",".join(f"{k}={v}" for k, v in sorted(next(iter(names), frozenset()) or ()))
            raise AuthFailure(f"the client certificate ({subject or 'no subject'}) names no user")
        raise AuthFailure("this leader needs a token or a client certificate")

    def still_valid(
        self,
        principal: Principal,
        digest: bytes | None,
        certificate: Mapping[str, Any] | None,
    ) -> tuple[Principal, float | None] | None:
        """After a rotation: the principal the same credentials (the token's ``digest``)
        prove now, and when that proof expires; None if they prove no longer the same."""
        try:
            found, expires_at = self.authenticate_digest(digest, certificate, time.time())
        except AuthFailure:
            return None
        return (found, expires_at) if found.name == principal.name else None


def _not_after(certificate: Mapping[str, Any]) -> float | None:
    import ssl

    text = certificate.get("notAfter")
    if not text:
        return None
    try:
        return float(ssl.cert_time_to_seconds(text))
    except ValueError:
        return None
