"""The leader's HTTP side: health and readiness, and the JavaScript client for pages.

:class:`HttpApp` is a plain ASGI application; :func:`serve_http` serves it with hypercorn's
Trio worker inside the leader's nursery (``LeaderConfig.http``), so that no HTTP parsing
is written here. Routes:

==========================  ============================================================
``GET /healthz``            200 ``{"status": "ok", "node": ...}``: the leader is up
``GET /readyz``             200 when every group the leader knows has its instances
                            online (as many as its cluster wants, else one) and the
                            journal (if any) is writable, else 503 saying what is not
                            ready (:meth:`Leader.readiness`: no statistics built, the
                            answer reused for half a second)
``GET /actors.js``,         the files of ``clients/js`` (an allow-list made at start from
``GET /src/<name>.js``      its listing: nothing else is ever read), with ETag and 304
``GET /examples/<name>``    the browser examples (``examples/browser/*.html``, ``.js``,
                            ``.css``; an allow-list made at start the same way), with a
                            strict ``Content-Security-Policy``: scripts and styles only
                            from this server, WebSockets only to the leader's ``ws://`` and
                            ``wss://`` listeners (see :meth:`HttpApp.content_security_policy`)
``GET /``,                  the dashboard (``actors/leader/dashboard/``: its page, script
``GET /dashboard/<name>``   and stylesheet; an allow-list made at start; public files, as
                            the client's), under a policy that lets it connect to this
                            server only (its API, and ``/ws``); the page is told whether
                            it needs a token, and links to the examples' pages
``/ws`` (WebSocket)         the dashboard's feed on this port (``actors/leader/_feed.py``):
                            the leader's protocol, for subscribing to ``$sys.dashboard``
                            only (:meth:`Leader.serve_feed`), under the checks below
==========================  ============================================================

Anything else is 404; a known path with a method it does not take is 405 with ``Allow``.
A route's path may hold ``{name}`` segments (``/api/jobs/{job_id}/cancel``): each matches
one non-empty segment of the request's path, percent-decoded (so a job id with a ``/`` in
it is ``%2F``), handed to the handler in :attr:`Request.params` (see :class:`PathTemplate`);
exact paths win over templates. The JSON API's routes (``actors/leader/_api.py``) are added
so by the leader.

Security, on every request, before any route runs:

- every response says ``X-Content-Type-Options: nosniff``;
- a server bound to a loopback address answers only requests whose ``Host`` names a
  loopback address, ``localhost`` or an allowed origin's host (403 otherwise: DNS
  rebinding, where a page's own origin resolves to 127.0.0.1);
- then a request with an ``Origin`` is refused 403 unless that origin is allowed
  (:meth:`Leader.origin_allowed`: ``allowed_origins``, and this server's own URL, which
  the leader adds once bound) or is the one the request was sent to, ``http://`` or
  ``https://`` and its ``Host`` (:meth:`HttpApp.same_origin`: the dashboard's page
  browsed by any name or address; on loopback that Host passed the check above; beyond
  loopback without users, ``insecure``, only an IP address, as a name there could be an
  attacker's rebound to this server), except a GET or HEAD of the public files (the
  JavaScript client and the dashboard's page and files: pages of other origins may load
  them; those of allowed origins get ``Access-Control-Allow-Origin``);
- at most :data:`MAX_HEADERS` headers (431), :data:`MAX_HEADER_BYTES` bytes of request line
  and headers (hypercorn's ``h11_max_incomplete_size``), :data:`MAX_BODY` bytes of body
  (413); idle connections close after :data:`KEEP_ALIVE_TIMEOUT` seconds, reads wait at
  most :data:`READ_TIMEOUT`, and at most :data:`BACKLOG` connections wait to be accepted;
- a leader with ``http_read_only`` answers every method but GET and HEAD 403
  ``{"error": "read_only"}`` (after 404 and 405, before anything else is asked);
- a method that may change state (anything but GET and HEAD), and every method of a route
  added with ``authenticated=True`` (the API), is served only to a request that proves an
  identity (:meth:`HttpApp.authenticate`: ``Authorization: Bearer <token>``, checked by
  the leader's :class:`Authenticator` as a Hello's token is), else 401; a leader without
  users needs none, as on its other listeners;
- a WebSocket upgrade is served at ``/ws`` only (404 elsewhere), after the same ``Host``
  and ``Origin`` checks (one without ``Origin``, not from a browser, is let in); its
  peer proves an identity in its Hello, as on any listener, and read-only does not
  apply (a feed changes nothing).
"""

from __future__ import annotations

import hashlib
import html
import ipaddress
import json
import logging
import os
import re
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote

import attrs
import trio

from ._auth import AuthFailure, Principal
from ._leader import is_loopback, origin_key

if TYPE_CHECKING:
    from ._leader import Leader

log = logging.getLogger("actors.leader.http")

#: The JavaScript client's directory (``actors.js`` and ``src/*.js`` are served from it).
CLIENT_JS_DIR = Path(__file__).resolve().parents[2] / "clients" / "js"
#: The browser examples' directory (served at ``/examples/<name>``).
EXAMPLES_DIR = Path(__file__).resolve().parents[2] / "examples" / "browser"
#: The content types of the examples' files, by suffix (other files are not served).
EXAMPLE_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
}
#: In an example page, the tag whose ``content`` is filled with the leader's WebSocket URL
#: (the dashboard has none: it connects to ``/ws`` on the server it came from).
LEADER_META = b'<meta name="actors-leader" content="">'
#: The dashboard's directory (its page served at ``/``, its files at ``/dashboard/<name>``).
DASHBOARD_DIR = Path(__file__).resolve().parent / "dashboard"
#: In the dashboard's page, the tag whose ``content`` says whether the leader asks for a
#: token (``token``) or not (``none``).
AUTH_META = b'<meta name="actors-auth" content="">'
#: In the dashboard's page, the place of the links to the browser examples' pages.
EXAMPLES_MARK = b"<!--examples-->"
#: Headers one request may carry (more: 431).
MAX_HEADERS = 64
#: Bytes of a request's headers (more: 431; hypercorn's ``h11_max_incomplete_size`` too,
#: which refuses a request line and headers that arrive in pieces over this with 400).
MAX_HEADER_BYTES = 16 * 1024
#: Bytes of a request's body (more: 413).
MAX_BODY = 1 * 2**20
#: Connections waiting to be accepted (the listening socket's backlog).
BACKLOG = 128
#: Seconds an idle connection is kept open (no request in progress).
KEEP_ALIVE_TIMEOUT = 5.0
#: Seconds one read from a connection may wait (a request that stalls is dropped).
READ_TIMEOUT = 10.0
#: Streams at once on one HTTP/2 connection.
MAX_H2_STREAMS = 16
#: Bytes of one served file at most (a bigger one is left out of the allow-list).
MAX_FILE_BYTES = 4 * 2**20
#: Seconds between two WebSocket pings of hypercorn's on ``/ws`` (the browser answers
#: each: what keeps a feed that says nothing within the read timeout).
WEBSOCKET_PING_INTERVAL = READ_TIMEOUT / 2
#: The methods that change nothing: served without authentication.
SAFE_METHODS = frozenset({"GET", "HEAD"})
#: The name of a file ``/src/`` serves.
_JS_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]*\.js\Z")
#: The name of a file ``/examples/`` serves.
_EXAMPLE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]*\.(html|js|css)\Z")
_HOSTNAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?\Z")
#: A ``Host`` header that may be written into a policy (a name or address, and a port).
_HOST_HEADER = re.compile(r"([A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(:[0-9]{1,5})?\Z")
#: A ``Host`` header this server reads at all (RFC 9110 ``uri-host [ ":" port ]``, taken
#: strictly): a name or IPv4 address (letters, digits, ``.``, ``-``, ``_``), or an IPv6
#: address in brackets; then maybe ``:`` and up to 5 digits. Anything else is 400.
_HOST_SYNTAX = re.compile(r"(?:[A-Za-z0-9._-]{1,253}|\[([0-9A-Fa-f:.]{2,45})\])(?::[0-9]{0,5})?\Z")
#: A ``{name}`` segment of a route's path.
_PARAM = re.compile(r"\{([a-z_][a-z0-9_]*)\}\Z")
#: Bytes of a request's path matched against the routes' templates at most (longer: 404).
MAX_PATH_BYTES = 4096

Handler = Callable[["Request"], Awaitable["Response"]]


def parse_http_address(text: Any) -> tuple[str, int]:
    """``HOST:PORT`` (``127.0.0.1:7780``, ``[::1]:7780``, ``localhost:0``; ``:PORT`` is
    loopback, ``127.0.0.1:PORT``; an ``http://`` prefix is allowed) as ``(host, port)``.
    Port 0 picks a free port.

    Raises:
      ValueError: not that shape (the message shows what is expected).
    """
    expected = (
        f"http address {text!r:.100}: expected HOST:PORT, such as 127.0.0.1:7780, [::1]:7780"
        " or :7780 (loopback); port 0 picks a free port"
    )
    if not isinstance(text, str):
        raise ValueError(expected)
    rest = text.strip()
    if rest[:7].lower() == "http://":
        rest = rest[7:].rstrip("/")
    host, colon, port_text = rest.rpartition(":")
    if not colon or not port_text.isascii() or not port_text.isdigit() or len(port_text) > 5:
        raise ValueError(expected)
    port = int(port_text)
    if port > 65535:
        raise ValueError(expected)
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            if ipaddress.ip_address(host).version != 6:
                raise ValueError(expected)
        except ValueError:
            raise ValueError(expected) from None
    elif not host:
        host = "127.0.0.1"
    elif not _HOSTNAME.match(host):  # (an IPv6 address goes in brackets)
        raise ValueError(expected)
    return host, port


def url_of(host: str, port: int) -> str:
    """``http://host:port``, with an IPv6 address in brackets."""
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _allowed(folder: str | os.PathLike[str], name: re.Pattern[str], prefix: str) -> dict[str, Path]:
    """``prefix + <file name>`` -> path, for the regular files (not links) of ``folder``
    whose names match ``name`` and whose size is at most :data:`MAX_FILE_BYTES`; empty
    when the folder cannot be read."""
    files: dict[str, Path] = {}
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return files
    for entry in entries:
        try:
            if (
                name.match(entry.name)
                and entry.is_file(follow_symlinks=False)
                and entry.stat(follow_symlinks=False).st_size <= MAX_FILE_BYTES
            ):
                files[prefix + entry.name] = Path(entry.path)
        except OSError:
            continue
    return files


def client_files(directory: str | os.PathLike[str] | None) -> dict[str, Path]:
    """The allow-list of JavaScript files: ``/actors.js`` and ``/src/<name>.js`` by URL
    path, for the regular files (not links) of ``directory`` with such names; empty when
    it is missing (an installed package without the client's sources)."""
    if directory is None:
        return {}
    root = Path(directory)
    files = {
        path: file for path, file in _allowed(root, _JS_NAME, "/").items() if path == "/actors.js"
    }
    files.update(_allowed(root / "src", _JS_NAME, "/src/"))
    return files


def example_files(
    directory: str | os.PathLike[str] | None, *, prefix: str = "/examples/"
) -> dict[str, Path]:
    """The allow-list of the browser examples (or the dashboard's files, with ``prefix``
    ``/dashboard/``): ``/examples/<name>`` by URL path, for the regular files (not links)
    of ``directory`` named ``<name>.html``, ``.js`` or ``.css`` (letters, digits, ``_``
    and ``-``); empty when it is missing (an installed package)."""
    if directory is None:
        return {}
    return _allowed(directory, _EXAMPLE_NAME, prefix)


@attrs.frozen
class Response:
    """What a handler answers: a status, a body and its type, and more headers."""

    status: int
    body: bytes = b""
    content_type: str | None = None
    headers: tuple[tuple[str, str], ...] = ()

    def raw_headers(self) -> list[tuple[bytes, bytes]]:
        """The headers it is sent with: ``nosniff``, its type and length (none for a 304),
        then its own."""
        headers = [(b"x-content-type-options", b"nosniff")]
        if self.content_type is not None:
            headers.append((b"content-type", self.content_type.encode("latin-1")))
        if self.status != 304:
            headers.append((b"content-length", str(len(self.body)).encode()))
        headers.extend(
            (name.encode("latin-1"), value.encode("latin-1")) for name, value in self.headers
        )
        return headers


def json_response(status: int, value: Any, headers: tuple[tuple[str, str], ...] = ()) -> Response:
    """``value`` as a JSON response (not to be cached)."""
    body = json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()
    return Response(status, body, "application/json", (("cache-control", "no-store"), *headers))


def error_response(
    status: int, error: str, message: str, headers: tuple[tuple[str, str], ...] = ()
) -> Response:
    """``{"error": error, "message": message}`` with ``status``."""
    return json_response(status, {"error": error, "message": message}, headers)


def host_name(host: str) -> str:
    """The name or address of a ``Host`` header's value, without its port and brackets."""
    name = host.strip()
    if name.startswith("["):
        return name[1 : name.find("]")] if "]" in name else name
    if name.count(":") == 1:
        return name.partition(":")[0]
    return name


def host_valid(host: str) -> bool:
    """Whether a ``Host`` header's value is ``host [":" port]`` and nothing else (see
    :data:`_HOST_SYNTAX`; an IPv6 address in brackets must be one): no user info
    (``127.0.0.1:80@evil.example``), path, space, or second value."""
    matched = _HOST_SYNTAX.match(host)
    if matched is None:
        return False
    address = matched.group(1)
    if address is None:
        return True
    try:
        ipaddress.IPv6Address(address)
    except ValueError:
        return False
    return True


def _is_address(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


class BodyTooLarge(Exception):
    """A request's body is over the server's limit (answered 413)."""


class HttpError(Exception):
    """What a handler raises to answer ``{"error": code, "message": message}`` with
    ``status`` (and more ``headers``), from however deep it is."""

    def __init__(
        self, status: int, code: str, message: str, headers: tuple[tuple[str, str], ...] = ()
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers

    def response(self) -> Response:
        """The error as a response."""
        return error_response(self.status, self.code, self.message, self.headers)


@attrs.frozen
class PathTemplate:
    """A route's path with ``{name}`` segments: ``/api/jobs/{job_id}``.

    Raises:
      ValueError: not an absolute path, an empty segment, a name used twice, or braces
        that are not a whole ``{name}`` segment.
    """

    path: str
    #: literal segments as they are, parameters as None
    segments: tuple[str | None, ...] = attrs.field(init=False)
    names: tuple[str, ...] = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        if not self.path.startswith("/"):
            raise ValueError(f"a route's path starts with '/': {self.path!r}")
        segments: list[str | None] = []
        names: list[str] = []
        for part in self.path[1:].split("/"):
            match = _PARAM.match(part)
            if match is not None:
                if match[1] in names:
                    raise ValueError(f"{self.path!r} names {match[1]!r} twice")
                names.append(match[1])
                segments.append(None)
            elif not part or "{" in part or "}" in part:
                raise ValueError(f"{self.path!r}: bad segment {part!r}")
            else:
                segments.append(part)
        object.__setattr__(self, "segments", tuple(segments))
        object.__setattr__(self, "names", tuple(names))

    def match(self, parts: Sequence[str]) -> dict[str, str] | None:
        """The parameters of a request path split on ``/`` (its segments percent-decoded
        already), or None when it does not match (a parameter matches one non-empty
        segment)."""
        segments = self.segments
        if len(parts) != len(segments):
            return None
        params: dict[str, str] = {}
        names = iter(self.names)
        for part, segment in zip(parts, segments, strict=True):
            if segment is None:
                if not part:
                    return None
                params[next(names)] = part
            elif part != segment:
                return None
        return params


@attrs.define(eq=False)
class Request:
    """One HTTP request as a handler sees it.

    ``headers`` are by lower-case name (repeated ones joined with ``", "``); ``principal``
    is the identity it proved (None for GET and HEAD, which are not asked, and on a leader
    without users).
    """

    scope: Mapping[str, Any]
    method: str
    path: str
    headers: dict[str, str]
    receive: Callable[[], Awaitable[dict[str, Any]]]
    max_body: int
    principal: Principal | None = None
    #: the values of the route's ``{name}`` segments, percent-decoded
    params: dict[str, str] = attrs.field(factory=dict)

    @property
    def query_string(self) -> bytes:
        """The raw query string (after ``?``; empty when none)."""
        return bytes(self.scope.get("query_string", b""))

    async def body(self, limit: int | None = None) -> bytes:
        """The request's body, read whole.

        Args:
          limit: bytes at most, when below the server's limit (a route's own).

        Raises:
          BodyTooLarge: over the limit (the handler's caller answers 413).
        """
        max_body = self.max_body if limit is None else min(limit, self.max_body)
        declared = self.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > max_body:
            raise BodyTooLarge(f"the body is over {max_body} bytes ({declared})")
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await self.receive()
            if message["type"] != "http.request":  # http.disconnect
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > max_body:
                raise BodyTooLarge(f"the body is over {max_body} bytes")
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks)


@attrs.define(eq=False)
class Route:
    """A path's handlers by method; ``public``: its GETs are served whatever the
    ``Origin`` (public files that pages of other origins load); ``authenticated``: every
    method, GET and HEAD too, asks for an identity (the API's routes)."""

    handlers: dict[str, Handler]
    public: bool = False
    authenticated: bool = False

    @property
    def allow(self) -> str:
        methods = set(self.handlers)
        if "GET" in methods:
            methods.add("HEAD")
        return ", ".join(sorted(methods))


class HttpApp:
    """The leader's ASGI application (see the module's text).

    Args:
      leader: the leader it answers for (its statistics, origins and users).
      host: the address the server listens on (a loopback one turns on the ``Host`` check).
      client_dir: the JavaScript client's directory (None: serve no files).
      examples_dir: the browser examples' directory (None: serve none).
      dashboard_dir: the dashboard's directory (None: serve no dashboard, and nothing at
        ``/``).
      max_body: bytes of a request's body at most.
    """

    def __init__(
        self,
        leader: Leader,
        *,
        host: str = "127.0.0.1",
        client_dir: str | os.PathLike[str] | None = CLIENT_JS_DIR,
        examples_dir: str | os.PathLike[str] | None = EXAMPLES_DIR,
        dashboard_dir: str | os.PathLike[str] | None = DASHBOARD_DIR,
        max_body: int = MAX_BODY,
    ) -> None:
        self.leader = leader
        self.local_only = is_loopback(host)
        self.max_body = max_body
        #: Only GET and HEAD are served (``LeaderConfig.http_read_only``).
        self.read_only = bool(getattr(leader.config, "http_read_only", False))
        # Routes whose path has {name} segments, tried in order after the exact ones.
        self.templates: list[tuple[PathTemplate, Route]] = []
        self.files = client_files(client_dir)
        self._file_cache: dict[str, tuple[tuple[int, int, int], bytes, str]] = {}
        self.routes: dict[str, Route] = {
            "/healthz": Route({"GET": self._healthz}),
            "/readyz": Route({"GET": self._readyz}),
        }
        for path in self.files:
            self.routes[path] = Route({"GET": self._file}, public=True)
        self.examples = example_files(examples_dir)
        for path in self.examples:
            self.routes[path] = Route({"GET": self._example})
        self.dashboard = example_files(dashboard_dir, prefix="/dashboard/")
        for path in self.dashboard:
            self.routes[path] = Route({"GET": self._dashboard_file}, public=True)
        if "/dashboard/index.html" in self.dashboard:
            self.routes["/"] = Route({"GET": self._dashboard_file}, public=True)
        #: ``/ws``: the dashboard's feed (WebSocket upgrades; see ``_feed.py``).
        from ._feed import FeedSocket  # (it names HttpApp: imported here, not at the top)

        self.feed = FeedSocket(self)
        from ._metrics import metrics_handler  # (it loads prometheus_client, and imports this)

        self.add_route("/metrics", {"GET": metrics_handler(self)}, authenticated=True)

    def add_route(
        self,
        path: str,
        handlers: Mapping[str, Handler],
        *,
        public: bool = False,
        authenticated: bool = False,
    ) -> None:
        """Serve ``path``: ``handlers`` by method (``"GET"`` also answers HEAD). Methods
        other than GET and HEAD get an authenticated :class:`Request` (or 401); with
        ``authenticated``, every method does. A path with ``{name}`` segments is a
        :class:`PathTemplate` (its values in :attr:`Request.params`); adding a path again
        replaces its route.

        Raises:
          ValueError: a bad template (see :class:`PathTemplate`).
        """
        route = Route(
            {m.upper(): h for m, h in handlers.items()}, public=public, authenticated=authenticated
        )
        if "{" not in path and "}" not in path:
            self.routes[path] = route
            return
        template = PathTemplate(path)
        self.templates = [(t, r) for t, r in self.templates if t.path != path]
        self.templates.append((template, route))

    def match(self, scope: Mapping[str, Any]) -> tuple[Route, dict[str, str]] | None:
        """The route of a request's path, and the values of its ``{name}`` segments; None
        when no route has that path. The exact paths first, then the templates, against
        the request's raw path split on ``/`` and each segment percent-decoded (a segment
        that is not UTF-8 matches nothing). Of the routes that match, the first that takes
        the request's method (so that ``POST /api/dead-letters/retry`` and ``GET
        /api/dead-letters/{job_id}`` share a path); when none does, the first (405)."""
        method = scope.get("method", "GET")
        wanted = "GET" if method == "HEAD" else method
        first: tuple[Route, dict[str, str]] | None = None
        route = self.routes.get(scope["path"])
        if route is not None:
            if wanted in route.handlers or not self.templates:
                return route, {}
            first = (route, {})
        if not self.templates:
            return None
        raw = scope.get("raw_path")
        if isinstance(raw, bytes):
            raw_path = raw.decode("latin-1").partition("?")[0]
        else:
            raw_path = quote(scope["path"], safe="/:@!$&'()*+,;=")
        if len(raw_path) > MAX_PATH_BYTES or not raw_path.startswith("/"):
            return first
        try:
            parts = [unquote(part, errors="strict") for part in raw_path[1:].split("/")]
        except UnicodeDecodeError:
            return first
        for template, route in self.templates:
            params = template.match(parts)
            if params is not None:
                if wanted in route.handlers:
                    return route, params
                if first is None:
                    first = (route, params)
        return first

    # ------------------------------------------------------------------ ASGI

    async def __call__(
        self,
        scope: Mapping[str, Any],
        receive: Callable[[], Awaitable[dict[str, Any]]],
        send: Callable[[dict[str, Any]], Awaitable[None]],
    ) -> None:
        kind = scope["type"]
        if kind == "http":
            response = await self.respond(scope, receive)
            try:
                await self._send(send, response, head=scope["method"] == "HEAD")
            except (trio.BrokenResourceError, trio.ClosedResourceError, trio.BusyResourceError):
                # The peer went away. (hypercorn closes a connection the peer closed
                # without its send lock: a last write racing that close is "busy".)
                pass
        elif kind == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        elif kind == "websocket":
            await self.feed(scope, receive, send)

    async def _send(
        self, send: Callable[[dict[str, Any]], Awaitable[None]], response: Response, head: bool
    ) -> None:
        headers = response.raw_headers()
        await send({"type": "http.response.start", "status": response.status, "headers": headers})
        body = b"" if head or response.status == 304 else response.body
        await send({"type": "http.response.body", "body": body})

    async def respond(
        self, scope: Mapping[str, Any], receive: Callable[[], Awaitable[dict[str, Any]]]
    ) -> Response:
        """The response to an ``http`` request (its checks, then its route)."""
        method = scope["method"]
        path = scope["path"]
        headers = self._headers(scope)
        if isinstance(headers, Response):
            return headers
        host = headers.get("host")
        matched = self.match(scope)
        route, params = matched if matched is not None else (None, {})
        origin = headers.get("origin")
        safe = method in SAFE_METHODS
        if origin is not None and not (route is not None and route.public and safe):
            refused = self.origin_refusal(origin, host)
            if refused is not None:
                return refused
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body:
            return error_response(
                413, "too_large", f"the body is over {self.max_body} bytes ({length})"
            )
        if route is None:
            return error_response(404, "not_found", f"nothing at {path!r:.200}")
        handler = route.handlers.get("GET" if method == "HEAD" else method)
        if handler is None:
            return error_response(
                405,
                "method_not_allowed",
                f"{path} takes {route.allow}, not {method:.20}",
                (("allow", route.allow),),
            )
        if not safe and self.read_only:
            return error_response(
                403,
                "read_only",
                f"this leader's HTTP is read-only (http_read_only): {method:.20} is not served",
            )
        request = Request(scope, method, path, headers, receive, self.max_body, params=params)
        if not safe or route.authenticated:
            try:
                request.principal = self.authenticate(scope)
            except AuthFailure as exc:
                return error_response(
                    401,
                    "auth_failed",
                    f"authentication failed: {exc}",
                    (("www-authenticate", 'Bearer realm="trio-actors"'),),
                )
        try:
            return await handler(request)
        except HttpError as exc:
            return exc.response()
        except BodyTooLarge as exc:
            return error_response(413, "too_large", str(exc))
        except Exception:
            log.exception("leader %s: HTTP %s %s failed", self.leader.name, method, path)
            return error_response(500, "internal", "the leader failed to answer (see its log)")

    # ------------------------------------------------------------------ checks

    def host_allowed(self, host: str) -> bool:
        """Whether a request's ``Host`` names this server: any, unless it listens on
        loopback; then a loopback address, ``localhost``, or an allowed origin's host."""
        if not self.local_only:
            return True
        if is_loopback(host_name(host).rstrip(".")):
            return True
        allowed = self.leader.origin_allowed
        return allowed(f"http://{host}") or allowed(f"https://{host}")

    def same_origin(self, origin: str, host: str | None) -> bool:
        """Whether ``origin`` is the one a request was sent to: ``http://`` or
        ``https://`` (behind a TLS proxy) and its ``Host`` (a page of this server,
        browsed by whatever name or address reaches it). Asked once the ``Host`` passed
        :meth:`host_allowed` (on loopback, a loopback name: no rebound page's origin is
        ever its own); beyond loopback on a leader without users (``insecure``), for an
        IP address only: a name there may be an attacker's, rebound to this address, and
        nothing else would stop its page."""
        if host is None:
            return False
        key = origin_key(origin)
        if key != origin_key(f"http://{host}") and key != origin_key(f"https://{host}"):
            return False
        if self.local_only or self.leader.authenticator is not None:
            return True
        return _is_address(host_name(host))

    def origin_refusal(self, origin: str, host: str | None) -> Response | None:
        """The 403 answering a request from a page of ``origin`` (sent to ``host``), or
        None when that origin is allowed or is the request's own (:meth:`same_origin`)."""
        if self.leader.origin_allowed(origin) or self.same_origin(origin, host):
            return None
        hint = ""
        if host is not None and origin_key(origin) in (
            origin_key(f"http://{host}"),
            origin_key(f"https://{host}"),
        ):
            hint = (
                ": a leader without users serving beyond loopback takes its own origin by IP"
                " address only (DNS rebinding); browse it by address, or allow this origin"
            )
        return error_response(
            403,
            "forbidden_origin",
            f"requests from pages of {origin!r:.100} are not allowed (allowed_origins){hint}",
        )

    @staticmethod
    def busy_response(message: str, retry_after: float | None) -> Response:
        """503 ``busy`` saying ``message``, with ``Retry-After`` when it is known."""
        retry = () if retry_after is None else (("retry-after", f"{retry_after:g}"),)
        return error_response(503, "busy", message, retry)

    def websocket_refusal(self, scope: Mapping[str, Any]) -> Response | None:
        """Why a WebSocket upgrade is refused (its answer), or None: not at
        :data:`FEED_PATH` (404), too many or too large headers (431), a ``Host`` this
        server does not answer (403), an ``Origin`` that is neither allowed nor the
        request's own (403). One without ``Origin`` (not from a browser) is let in."""
        from ._feed import FEED_PATH

        if scope.get("path") != FEED_PATH:
            return error_response(
                404,
                "not_found",
                f"no WebSocket at {str(scope.get('path'))!r:.200}: only at {FEED_PATH}",
            )
        headers = self._headers(scope)
        if isinstance(headers, Response):
            return headers
        origin = headers.get("origin")
        if origin is not None:
            return self.origin_refusal(origin, headers.get("host"))
        return None

    def _headers(self, scope: Mapping[str, Any]) -> dict[str, str] | Response:
        """A request's headers by lower-case name (repeated ones joined with ``", "``);
        or the answer refusing it: too many or too large headers (431), a ``Host`` that is
        not ``host[:port]`` (400, :func:`host_valid`; two Host headers are not either), a
        ``Host`` this server does not answer (403, :meth:`host_allowed`)."""
        raw_headers = scope["headers"]
        if len(raw_headers) > MAX_HEADERS:
            return error_response(
                431, "too_many_headers", f"at most {MAX_HEADERS} headers, not {len(raw_headers)}"
            )
        # (hypercorn's h11_max_incomplete_size binds only headers that come in pieces)
        size = sum(len(name) + len(value) + 4 for name, value in raw_headers)
        if size > MAX_HEADER_BYTES:
            return error_response(
                431, "headers_too_large", f"at most {MAX_HEADER_BYTES} bytes of headers, not {size}"
            )
        headers: dict[str, str] = {}
        for raw_name, raw_value in raw_headers:
            name = raw_name.decode("latin-1").lower()
            value = raw_value.decode("latin-1")
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        host = headers.get("host")
        if host is not None and not host_valid(host):
            return error_response(
                400, "bad_host", f"not a Host header (host[:port]): {host!r:.100}"
            )
        if host is not None and not self.host_allowed(host):
            return error_response(
                403, "forbidden_host", f"this server does not answer for Host {host!r:.100}"
            )
        return headers

    def authenticate(self, scope: Mapping[str, Any]) -> Principal | None:
        """The identity a request proves with ``Authorization: Bearer <token>`` (checked by
        the leader's :class:`Authenticator`, as a Hello's token); None on a leader without
        users (anyone may do anything, as on its other listeners).

        Raises:
          AuthFailure: no such header, another scheme, a wrong or expired token (the
            message says which, never the token).
        """
        authenticator = self.leader.authenticator
        if authenticator is None:
            return None
        values = [v for n, v in scope["headers"] if n.lower() == b"authorization"]
        try:
            if not values:
                raise AuthFailure("this leader needs a token: Authorization: Bearer <token>")
            if len(values) > 1:
                raise AuthFailure("more than one Authorization header")
            scheme, _, token = values[0].decode("latin-1").strip().partition(" ")
            token = token.strip()
            if scheme.lower() != "bearer" or not token or " " in token:
                raise AuthFailure("expected Authorization: Bearer <token>")
            principal, _expires_at = authenticator.authenticate(token, None, time.time())
        except AuthFailure as exc:
            client = scope.get("client")
            peer = f"{client[0]}:{client[1]}" if client else "?"
            self.leader._log_refusal(None, "refused HTTP %s from %s: %s", scope["path"], peer, exc)
            raise
        return principal

    # ------------------------------------------------------------------ routes

    async def _healthz(self, request: Request) -> Response:
        return json_response(200, {"status": "ok", "node": self.leader.name})

    async def _readyz(self, request: Request) -> Response:
        ready, body = self.leader.readiness()
        return json_response(200 if ready else 503, body)

    async def _file(self, request: Request) -> Response:
        path = request.path
        data_etag = self._read(path)
        if data_etag is None:
            return error_response(404, "not_found", f"nothing at {path!r}")
        data, etag = data_etag
        headers: list[tuple[str, str]] = [
            ("etag", etag),
            ("cache-control", "no-cache"),
            ("vary", "Origin"),
        ]
        origin = request.headers.get("origin")
        if origin is not None and self.leader.origin_allowed(origin):
            headers.append(("access-control-allow-origin", origin))
        if _etag_matches(request.headers.get("if-none-match"), etag):
            return Response(304, headers=tuple(headers))
        return Response(200, data, "text/javascript; charset=utf-8", tuple(headers))

    def leader_ws_urls(self) -> list[str]:
        """The leader's bound ``ws://`` and ``wss://`` listen URLs."""
        return [url for url in self.leader.urls if url.startswith(("ws://", "wss://"))]

    def content_security_policy(self, *, host: str | None = None) -> str:
        """The policy of the pages this server serves: nothing from elsewhere, scripts and
        styles from this server only (no inline ones), and connections: for the example
        pages (no ``host``), WebSockets to the leader's ``ws://`` and ``wss://`` listeners
        only (any host for one bound to an unspecified address); for the dashboard (the
        ``Host`` it was asked by), this server only: its API and ``/ws`` (``'self'``, and
        ``ws://HOST`` and ``wss://HOST``, for browsers whose ``'self'`` is not a
        WebSocket's, when ``host`` is a plain name or address with a port)."""
        sources = []
        if host is None:
            for url in self.leader_ws_urls():
                scheme, _, rest = url.partition("://")
                authority = rest.split("/", 1)[0]
                name, _, port = authority.rpartition(":")
                if name in ("0.0.0.0", "[::]", "::"):
                    authority = f"*:{port}"
                sources.append(f"{scheme}://{authority}")
        else:
            sources.append("'self'")
            if _HOST_HEADER.match(host):
                sources += [f"ws://{host}", f"wss://{host}"]
        connect = " ".join(dict.fromkeys(sources)) or "'none'"
        return (
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:;"
            f" connect-src {connect}; base-uri 'none'; form-action 'none';"
            " frame-ancestors 'none'"
        )

    def _page_headers(self, *, host: str | None = None) -> list[tuple[str, str]]:
        return [
            ("content-security-policy", self.content_security_policy(host=host)),
            ("referrer-policy", "no-referrer"),
            ("cache-control", "no-cache"),
        ]

    async def _example(self, request: Request) -> Response:
        path = request.path
        data_etag = self._read(path)
        if data_etag is None:
            return error_response(404, "not_found", f"nothing at {path!r}")
        data, etag = data_etag
        content_type = EXAMPLE_TYPES[Path(path).suffix]
        if path.endswith(".html"):
            data, etag = self._filled(data, etag)
        headers = [("etag", etag), *self._page_headers()]
        if _etag_matches(request.headers.get("if-none-match"), etag):
            return Response(304, headers=tuple(headers))
        return Response(200, data, content_type, tuple(headers))

    async def _dashboard_file(self, request: Request) -> Response:
        path = "/dashboard/index.html" if request.path == "/" else request.path
        data_etag = self._read(path)
        if data_etag is None:
            return error_response(404, "not_found", f"nothing at {request.path!r}")
        data, etag = data_etag
        if path.endswith(".html"):
            data, etag = self._filled(data, etag)
        host = request.headers.get("host", "")
        headers = [("etag", etag), *self._page_headers(host=host), ("vary", "Host")]
        if _etag_matches(request.headers.get("if-none-match"), etag):
            return Response(304, headers=tuple(headers))
        return Response(200, data, EXAMPLE_TYPES[Path(path).suffix], tuple(headers))

    def _filled(self, page: bytes, etag: str) -> tuple[bytes, str]:
        """``page`` (HTML) with what it is told of this leader, and its ETag: its default
        WebSocket URL (:data:`LEADER_META`, in the examples: the first ``ws://`` or
        ``wss://`` listener), whether it asks for a token (:data:`AUTH_META`), the links
        to the examples' pages (:data:`EXAMPLES_MARK`)."""
        data = page
        urls = self.leader_ws_urls()
        if urls and LEADER_META in data:
            url = html.escape(urls[0], quote=True).encode()
            data = data.replace(LEADER_META, LEADER_META[:-2] + url + b'">', 1)
        if AUTH_META in data:
            auth = b"none" if self.leader.authenticator is None else b"token"
            data = data.replace(AUTH_META, AUTH_META[:-2] + auth + b'">', 1)
        if EXAMPLES_MARK in data:
            links = "".join(
                f'<li><a href="{html.escape(path)}">{html.escape(path.removeprefix("/examples/"))}</a></li>'
                for path in sorted(self.examples)
                if path.endswith(".html")
            )
            data = data.replace(EXAMPLES_MARK, links.encode(), 1)
        if data is page:
            return page, etag
        return data, f'"{hashlib.sha256(data).hexdigest()[:32]}"'

    def _read(self, path: str) -> tuple[bytes, str] | None:
        """An allow-listed file's bytes and ETag, read again only when it changed (a stat
        per request; the files are small)."""
        file = self.files.get(path) or self.examples.get(path) or self.dashboard[path]
        try:
            st = os.stat(file, follow_symlinks=False)
            key = (st.st_mtime_ns, st.st_size, st.st_ino)
            cached = self._file_cache.get(path)
            if cached is not None and cached[0] == key:
                return cached[1], cached[2]
            if st.st_size > MAX_FILE_BYTES:
                return None
            data = file.read_bytes()
        except OSError:
            return None
        etag = f'"{hashlib.sha256(data).hexdigest()[:32]}"'
        self._file_cache[path] = (key, data, etag)
        return data, etag


def _etag_matches(header: str | None, etag: str) -> bool:
    """Whether ``If-None-Match: header`` names ``etag`` (weak comparison, or ``*``)."""
    if header is None:
        return False
    for candidate in header.split(","):
        candidate = candidate.strip()
        if candidate == "*" or candidate.removeprefix("W/") == etag:
            return True
    return False


async def serve_http(
    app: HttpApp,
    host: str,
    port: int,
    *,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app`` on ``host:port`` with hypercorn's Trio worker until cancelled;
    ``task_status.started(url)`` with the bound URL (``http://127.0.0.1:54321``).

    Raises:
      OSError: the address cannot be listened on (in use, not local).
    """
    from hypercorn.config import Config
    from hypercorn.logging import Logger
    from hypercorn.trio import serve

    class _Log(Logger):
        async def info(self, message: str, *args: Any, **kwargs: Any) -> None:
            # ("Running on ...": the leader says where it listens itself)
            if self.error_logger is not None:
                self.error_logger.debug(message, *args, **kwargs)

    config = Config()
    config.bind = [url_of(host, port).removeprefix("http://")]
    config.accesslog = None
    config.errorlog = log
    config.logger_class = _Log
    config.backlog = BACKLOG
    config.keep_alive_timeout = KEEP_ALIVE_TIMEOUT
    config.read_timeout = int(READ_TIMEOUT)
    config.h11_max_incomplete_size = MAX_HEADER_BYTES
    config.h2_max_header_list_size = MAX_HEADER_BYTES
    config.h2_max_concurrent_streams = MAX_H2_STREAMS
    config.include_server_header = False
    config.graceful_timeout = 1.0
    # /ws: a feed's peer sends small frames only; hypercorn pings it, so that a feed that
    # has nothing to say is not closed by the read timeout (and a gone one is).
    from ._feed import FEED_MAX_MESSAGE

    config.websocket_max_message_size = FEED_MAX_MESSAGE
    config.websocket_ping_interval = WEBSOCKET_PING_INTERVAL
    async with trio.open_nursery() as nursery:
        # (an ASGI callable: hypercorn types the scope and events as its TypedDicts)
        asgi: Any = app
        binds: list[str] = await nursery.start(partial(serve, asgi, config, mode="asgi"))
        task_status.started(binds[0])
