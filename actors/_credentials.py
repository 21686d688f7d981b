"""What a client or a worker proves itself with: a token, from a string or a provider
asked again on each connection attempt; and the command-line options that name the token
and the TLS files (``--token-env``, ``--token-file``, ``--tls-ca``, ``--tls-cert``,
``--tls-key``), shared by ``python -m actors`` and ``python -m actors.worker``.

A token provider is a callable returning the token, or an awaitable of it; it is called
for the Hello of every connection attempt, so that a rotated token is picked up at the next
reconnect. A provider that raises fails that attempt (:class:`TokenUnavailable`, logged),
which is retried after the reconnect delay like a refused connection.

The leader refusing a token (``auth_failed``) is final for a static token: retrying would
send the same one. With a provider it is retried with backoff, the provider asked again
each time (it may give the new token of a rotation), except before the first connection
when the provider gives again the very token just refused: that is a wrong token, not a
rotation, and it is final too.

No option takes a token in clear: command lines are visible to every user of the host.
"""

from __future__ import annotations

import argparse
import inspect
import logging
import os
import ssl
from collections.abc import Awaitable, Callable, Collection, Sequence
from typing import Any, TypeVar

import attrs
import trio

from protocol import MAX_VALUE_LENGTH, ErrorCode, Hello
from runtime import (
    DEFAULT_RECONNECT_BACKOFF,
    Connection,
    HandshakeError,
    ReconnectEvent,
    parse_url,
    run_reconnecting,
)
from runtime._reconnect import BackoffPolicy
from runtime._url import split_urls

from ._checks import ConfigError, check_url
from ._tls import TLSConfigError, client_ssl_context

T = TypeVar("T")

#: A callable giving the token for a connection attempt (or an awaitable of it).
TokenProvider = Callable[[], str | Awaitable[str]]
#: What ``Client.connect(token=...)`` and ``run_worker(token=...)`` take: a token, a
#: provider of one, or None (no token).
TokenSource = str | TokenProvider | None

#: The environment variable the command lines read the token from when no option names one.
TOKEN_VARIABLE = "ACTORS_TOKEN"
#: Bytes of a token file read at most (a token is a line; a bigger file is the wrong file).
MAX_TOKEN_FILE_BYTES = 64 * 1024


class TokenUnavailable(ConnectionError):
    """The token provider raised, or gave something that is no token: the connection
    attempt fails with this (its ``__cause__`` is the provider's exception) and is retried
    after the reconnect delay. (An ``OSError``, as every failure to connect, so that what
    retries connections retries this one too.)"""


async def fetch_token(token: TokenSource) -> str | None:
    """The token for a connection attempt: ``token`` itself, or what the provider gives.

    Raises:
      TokenUnavailable: the provider raised, or gave no non-empty ``str``.
    """
    if token is None or isinstance(token, str):
        return token
    try:
        value: Any = token()
        if inspect.isawaitable(value):
            value = await value
    except Exception as exc:  # the provider's failure fails this attempt (retried)
        said = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        raise TokenUnavailable(f"the token provider {token!r} failed: {said}") from exc
    if not isinstance(value, str) or not value:
        what = "an empty str" if value == "" else f"a {type(value).__name__}"  # (never its value)
        raise TokenUnavailable(
            f"the token provider {token!r} gave {what}, not a token (a non-empty str)"
        )
    if len(value) > MAX_VALUE_LENGTH:
        raise TokenUnavailable(
            f"the token provider {token!r} gave {len(value)} characters: a token is at most"
            f" {MAX_VALUE_LENGTH} (the protocol's limit)"
        )
    return value


@attrs.frozen
class EnvToken:
    """A token provider: the value of environment variable ``name``, read at each call.

    Raises (when called):
      LookupError: the variable is not set, or empty.
    """

    name: str

    def __call__(self) -> str:
        value = os.environ.get(self.name, "").strip()
        if not value:
            raise LookupError(f"environment variable {self.name} is not set (or empty)")
        return value


@attrs.frozen
class FileToken:
    """A token provider: the first line of file ``path`` (stripped), read at each call, so
    that a token rotated in the file is used from the next connection on.

    Raises (when called):
      OSError: the file cannot be read.
      ValueError: its first line is empty.
    """

    path: str

    def __call__(self) -> str:
        with open(self.path, "rb") as file:
            data = file.read(MAX_TOKEN_FILE_BYTES)
        line = data.split(b"\n", 1)[0].decode("utf-8", "replace").strip()
        if not line:
            raise ValueError(f"{self.path}: its first line is empty: expected the token")
        return line


# --------------------------------------------------------------------------- reconnecting


class _FinalRefusal(Exception):
    """Out of the Hello factory: the provider gave again the token the leader refused
    before any connection was made (a wrong token, not a rotation): ends the loop."""

    def __init__(self, error: HandshakeError) -> None:
        super().__init__(error.message)
        self.error = error


async def reconnecting(
    url: str | Sequence[str],
    session_fn: Callable[[Connection], Awaitable[T]],
    *,
    token: TokenSource,
    hello: Callable[[str | None], Hello],
    fatal_codes: Collection[str],
    logger: logging.Logger,
    who: str,
    on_state: Callable[[ReconnectEvent], object] | None = None,
    backoff: BackoffPolicy = DEFAULT_RECONNECT_BACKOFF,
    **kwargs: Any,
) -> T:
    """:func:`runtime.run_reconnecting` with the Hello's token from ``token``.

    A static token (or None) goes in every Hello, and ``fatal_codes`` apply as given. A
    provider is asked for each attempt's token (see the module docstring): ``auth_failed``
    is then retried with backoff (a line logged per retry), and a failing provider fails
    its attempt with :class:`TokenUnavailable` (logged), retried the same way.

    Args:
      hello: builds the Hello of an attempt from its token.
      logger, who: where and under what name the retried failures are logged.
      url, session_fn, fatal_codes, on_state, backoff, kwargs: as for
        :func:`runtime.run_reconnecting`.

    Raises:
      HandshakeError: as :func:`runtime.run_reconnecting`; with a provider, ``auth_failed``
        before the first connection when the provider gives again the token refused.
    """
    if token is None or isinstance(token, str):
        static = token
        return await run_reconnecting(
            url, session_fn, hello_factory=lambda: hello(static), fatal_codes=fatal_codes,
            on_state=on_state, backoff=backoff, **kwargs,
        )  # fmt: skip
    provider = token
    used: str | None = None  # the token of the last attempt
    # It, if the leader refused it: with the refusal and that leader's URL.
    refused: tuple[str | None, HandshakeError, str | None] | None = None
    welcomed = False

    patience = float(kwargs.get("connect_timeout", 10))

    async def factory() -> Hello:
        nonlocal used
        try:
            with trio.move_on_after(patience) as waited:
                value = await fetch_token(provider)
            if waited.cancelled_caught:
                raise TokenUnavailable(
                    f"the token provider {provider!r} gave no token within {patience:g} s"
                )
        except TokenUnavailable as exc:
            logger.warning("%s: %s; trying again after the reconnect delay", who, exc)
            raise
        if refused is not None:
            token_refused, error, refused_by = refused
            if not welcomed and value == token_refused:
                raise _FinalRefusal(error)  # a wrong token: as final as a static one
            logger.warning(
                "%s: %s refused the token (%s); %s", who, refused_by or url, error.message,
                "trying the provider's new one" if value != token_refused
                else "the provider gives the same one: trying it again (a rotation under way?)",
            )  # fmt: skip
        used = value
        return hello(value)

    def state(event: ReconnectEvent) -> None:
        nonlocal refused, welcomed
        if event.state == "connected":
            welcomed = True
            refused = None
        elif event.state == "disconnected":
            error = event.error
            refused = None
            if isinstance(error, HandshakeError) and error.code == ErrorCode.AUTH_FAILED:
                refused = (used, error, event.url)
        if on_state is not None:
            on_state(event)

    try:
        return await run_reconnecting(
            url, session_fn, hello_factory=factory,
            fatal_codes=frozenset(fatal_codes) - {ErrorCode.AUTH_FAILED}, on_state=state,
            backoff=backoff, **kwargs,
        )  # fmt: skip
    except _FinalRefusal as exc:
        raise exc.error from None


# --------------------------------------------------------------------------- command lines


@attrs.frozen
class Credentials:
    """What the command-line options give a connection: its token and its TLS context."""

    token: TokenSource = None
    ssl_context: ssl.SSLContext | None = None


def add_credential_options(parser: argparse.ArgumentParser) -> None:
    """Add ``--token-env``, ``--token-file``, ``--tls-ca``, ``--tls-cert`` and
    ``--tls-key`` to ``parser`` (see :func:`credentials_from_args`)."""
    group = parser.add_argument_group("authentication and TLS")
    token = group.add_mutually_exclusive_group()
    token.add_argument(
        "--token-env", metavar="NAME",
        help=f"read the token from environment variable NAME (default: {TOKEN_VARIABLE},"
        " when it is set); read again on each reconnect",
    )  # fmt: skip
    token.add_argument(
        "--token-file", metavar="PATH",
        help="read the token from the first line of file PATH; read again on each reconnect,"
        " so that a token rotated in the file is picked up",
    )  # fmt: skip
    group.add_argument(
        "--tls-ca", metavar="FILE",
        help="trust the CA certificates of this PEM file (instead of the system's) for a"
        " tls:// or wss:// leader",
    )  # fmt: skip
    group.add_argument(
        "--tls-cert",
        metavar="FILE",
        help="present this PEM client certificate (mutual TLS); its key in --tls-key",
    )
    group.add_argument(
        "--tls-key", metavar="FILE", help="the PEM private key of --tls-cert (not encrypted)"
    )


#: The option of each argument of :func:`~actors._tls.client_ssl_context`.
_TLS_OPTIONS = {"ca": "--tls-ca", "cert": "--tls-cert", "key": "--tls-key"}


def check_leader_urls(value: str, *, at: str) -> str:
    """Check the value of a command line's leader URL option: one URL, or several
    separated by commas (tried in turn, see :func:`runtime.run_reconnecting`).

    Returns:
      ``value``.

    Raises:
      ConfigError: naming the option and the first URL that is wrong (or empty).
    """
    urls = split_urls(value)
    for url in urls:
        if not url and len(urls) > 1:
            raise ConfigError(f"{at}: an empty URL in {value!r} (a comma too many?)")
        check_url(url, at=at)
    return value


def credentials_from_args(args: argparse.Namespace, *, url: str) -> Credentials:
    """The token and TLS context the options of :func:`add_credential_options` name, for
    connecting to ``url`` (or to each of several, comma-separated).

    The token comes from ``--token-env NAME``, ``--token-file PATH`` or, without either,
    from ``$ACTORS_TOKEN`` when it is set; it is read now (to fail early) and again on each
    connection attempt (a provider: :class:`EnvToken`, :class:`FileToken`).

    Raises:
      ConfigError: the variable is not set or empty, the file cannot be read or its first
        line is empty, a TLS file is wrong (naming the option and the file), or TLS
        options for a URL that does not use TLS (with several, for any of them).
    """
    token: EnvToken | FileToken | None = None
    if args.token_env is not None:
        token = EnvToken(args.token_env)
        option = "--token-env"
    elif args.token_file is not None:
        token = FileToken(args.token_file)
        option = "--token-file"
    elif os.environ.get(TOKEN_VARIABLE, "").strip():
        token = EnvToken(TOKEN_VARIABLE)
        option = f"${TOKEN_VARIABLE}"
    if token is not None:
        try:
            token()
        except LookupError as exc:
            raise ConfigError(f"{option}: {exc.args[0]}: export it with the token") from None
        except OSError as exc:
            raise ConfigError(
                f"{option}: {args.token_file}: cannot be read: {exc.strerror or exc}"
            ) from None
        except ValueError as exc:
            raise ConfigError(f"{option}: {exc}") from None
    files = {name: getattr(args, f"tls_{name}") for name in _TLS_OPTIONS}
    if not any(files.values()):
        return Credentials(token)
    given = ", ".join(_TLS_OPTIONS[name] for name, path in files.items() if path)
    if files["key"] and not files["cert"]:
        raise ConfigError("--tls-key: given without --tls-cert (a client certificate needs both)")
    for each in split_urls(url):
        if not parse_url(each).secure:
            raise ConfigError(
                f"{given}: {each} does not use TLS: connect to a tls:// or wss:// URL, or"
                " leave the TLS options out"
            )
    try:
        context = client_ssl_context(**files)
    except TLSConfigError as exc:
        option = _TLS_OPTIONS.get(exc.option, exc.option)
        where = option if exc.path is None else f"{option}: {exc.path}"
        raise ConfigError(f"{where}: {exc.problem}") from None
    return Credentials(token, context)
