"""Transport URLs: ``scheme://host:port[/path]`` where the scheme picks the transport.

=========  ==========================================  ===========
scheme     transport                                   encrypted
=========  ==========================================  ===========
``tcp``    length-prefixed frames over TCP             no
``tls``    the same over TLS (``trio.SSLStream``)      yes
``ws``     one binary WebSocket message per frame      no
``wss``    the same over TLS                           yes
=========  ==========================================  ===========
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Sequence

import attrs

#: The schemes :func:`parse_url` accepts.
SCHEMES = ("tcp", "tls", "ws", "wss")
_SECURE = frozenset({"tls", "wss"})
_WEBSOCKET = frozenset({"ws", "wss"})


@attrs.frozen
class Url:
    """A parsed transport URL.

    Build one with :func:`parse_url`; ``str(url)`` gives the canonical text back.

    Attributes:
      scheme: ``tcp``, ``tls``, ``ws`` or ``wss``.
      host: a host name or an IP address (IPv6 without brackets).
      port: the TCP port; 0 asks a server for any free port.
      path: the WebSocket resource path (``/`` when absent); always ``""`` for tcp and tls.
    """

    scheme: str
    host: str
    port: int
    path: str = ""

    @property
    def secure(self) -> bool:
        """True for the TLS schemes (``tls``, ``wss``)."""
        return self.scheme in _SECURE

    @property
    def websocket(self) -> bool:
        """True for the WebSocket schemes (``ws``, ``wss``)."""
        return self.scheme in _WEBSOCKET

    def with_port(self, port: int) -> Url:
        """The same URL with another port (the real one once a server has bound port 0)."""
        return attrs.evolve(self, port=port)

    def __str__(self) -> str:
        return f"{self.scheme}://{format_host(self.host)}:{self.port}{self.path}"


def format_host(host: str) -> str:
    """Put brackets around an IPv6 address so that ``host:port`` stays unambiguous."""
    return f"[{host}]" if ":" in host else host


def parse_url(url: str) -> Url:
    """Parse a transport URL such as ``tcp://127.0.0.1:7700`` or ``wss://leader:443/actors``.

    Args:
      url: ``scheme://host:port[/path]``; the scheme is one of :data:`SCHEMES`. A path is
        allowed only for ``ws`` and ``wss``. Query strings, fragments and user info are not.

    Returns:
      The parsed :class:`Url`.

    Raises:
      ValueError: the text is not such a URL; the message names what is wrong.
    """
    if not isinstance(url, str):
        raise TypeError(f"a transport URL must be a str, got {type(url).__name__}")
    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        raise ValueError(
            f"unsupported transport URL {url!r}: the scheme must be one of {', '.join(SCHEMES)}"
        )
    if parts.query or parts.fragment or parts.username is not None:
        raise ValueError(f"transport URL {url!r} may not have a query, fragment or user info")
    host = parts.hostname
    if not host:
        raise ValueError(f"transport URL {url!r} has no host")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"transport URL {url!r} has an invalid port") from None
    if port is None:
        raise ValueError(f"transport URL {url!r} has no port (write {scheme}://host:port)")
    path = parts.path
    if scheme in _WEBSOCKET:
        path = path or "/"
    elif path not in ("", "/"):
        raise ValueError(f"transport URL {url!r}: only ws:// and wss:// URLs may have a path")
    else:
        path = ""
    return Url(scheme=scheme, host=host, port=port, path=path)


def split_urls(urls: str | Sequence[str]) -> tuple[str, ...]:
    """The URLs of several servers to try in turn, from ``"tcp://a:7700,tcp://b:7700"``
    or a list or tuple of URLs (each of which may hold several, comma-separated too).

    Each URL is stripped of surrounding white space; none is checked (see
    :func:`check_urls`). A URL with a comma in it (a WebSocket path) cannot be listed.

    Raises:
      TypeError: ``urls`` is not a ``str``, or a list or tuple of them.
    """
    if isinstance(urls, str):
        return tuple(part.strip() for part in urls.split(","))
    if not isinstance(urls, list | tuple):
        raise TypeError(
            f"transport URLs must be a str or a list or tuple of str, got {type(urls).__name__}"
        )
    split: list[str] = []
    for url in urls:
        if not isinstance(url, str):
            raise TypeError(f"a transport URL must be a str, got {type(url).__name__}")
        split += split_urls(url)
    return tuple(split)


def check_urls(urls: str | Sequence[str]) -> tuple[str, ...]:
    """Split ``urls`` as :func:`split_urls` does and check each with :func:`parse_url`.

    Returns:
      The URLs, in their order (at least one).

    Raises:
      TypeError: as :func:`split_urls`.
      ValueError: no URL, an empty one (a comma too many), or one that is not a transport
        URL: the message names it.
    """
    split = split_urls(urls)
    if not split:
        raise ValueError("no transport URL given")
    for url in split:
        if not url and len(split) > 1:  # (a lone one is said as parse_url says it)
            raise ValueError(f"an empty transport URL in {urls!r} (a comma too many?)")
        parse_url(url)
    return split
