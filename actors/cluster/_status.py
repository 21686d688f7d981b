"""``python -m actors status --http`` and ``python -m actors top``: the leader's HTTP API
in the terminal.

::

    python -m actors status --http                        # one snapshot (http://127.0.0.1:7780)
    python -m actors status --http http://10.0.0.5:7780 --token-env OPS_TOKEN --json
    python -m actors top                                  # the same, live; q or Ctrl-C quits

Both read the leader's ``/healthz``, ``/readyz``, ``/api/stats``, ``/api/workers`` and
``/api/dead-letters`` and show: whether the leader is up and ready (and if not, why);
connections, workers online, stale (connected, silent for longer than 1.5 heartbeats)
and offline (left in the last minutes); a table of the worker groups (workers by state,
window, in flight, done, failed, dead, latency p50/p99), one of the subjects (queued, in
flight, submitted, done, failed, dead, throughput, latency), one of the workers (the
stale and offline ones first), and the dead letters' total with the newest ones (their
listing needs an admin's token on a leader with users; without one, only the total).

``status`` takes two samples ``--sample`` seconds apart for the throughput (0: one, no
throughput); ``--json`` prints the API's answers of one sample, combined in one object
(``healthz``, ``readyz``, ``stats``, ``workers``, ``workers_stale``, ``workers_offline``,
``dead_letters``). ``top`` refreshes every ``--interval`` seconds, the throughput from
successive snapshots, and keeps showing the last one with the error while the leader
cannot be reached (it retries each interval); ``--once`` prints one frame and exits.

The URL is ``--http URL`` (``http://`` or ``https://``, ``HOST:PORT`` meaning
``http://HOST:PORT``, an optional path prefix for a leader behind a proxy), else
``$ACTORS_HTTP``, else ``http://127.0.0.1:7780``. The token, for a leader with users:
``--token-env NAME``, ``--token-file PATH``, else ``$ACTORS_TOKEN`` when set (never on the
command line), read again for each snapshot, sent as ``Authorization: Bearer`` to that
URL only: redirects are not followed and no proxy is used. For ``https://``,
``--tls-ca``, ``--tls-cert`` and ``--tls-key`` as for the protocol's URLs.

Bounds: each answer is read up to :data:`MAX_ANSWER_BYTES` (more is an error, not a
truncation), each request takes at most ``--connect-timeout`` seconds; the tables show at
most :data:`MAX_ROWS` rows each (``top``: what fits the terminal), the stale and offline
workers counted from at most :data:`MAX_WORKERS_PAGE` of each. What the leader names
(workers, hosts, subjects, errors) is shown as text, never as terminal markup: control
characters are escaped and long names cut.

Exit status (``status --http``, ``top --once``): 0 when the leader is ready, 1 when it is
up but not ready, 2 when it cannot be reached, refuses the token (401) or this identity
(403), answers something that is not the API (one line on stderr says which URL and what
failed), and for bad arguments; 130 after Ctrl-C during ``status``. ``top`` ends with 0
on ``q`` or Ctrl-C, 2 when the token is refused.
"""

from __future__ import annotations

import argparse
import collections
import datetime as dt
import http.client
import json
import math
import os
import re
import ssl
import sys
import time
import unicodedata
import urllib.parse
from collections.abc import Mapping
from typing import Any

import attrs
import trio
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from .._checks import ConfigError
from .._credentials import (
    TokenSource,
    TokenUnavailable,
    add_credential_options,
    credentials_from_args,
    fetch_token,
)

#: Where ``status --http`` and ``top`` look when neither ``--http URL`` nor the variable says.
DEFAULT_HTTP_URL = "http://127.0.0.1:7780"
#: The environment variable that gives the default of ``--http``.
HTTP_URL_VARIABLE = "ACTORS_HTTP"
#: Bytes of one answer at most (a bigger one is an error: not the API, or a hostile server).
MAX_ANSWER_BYTES = 8 * 2**20
#: Bytes read from the socket at a time.
READ_CHUNK = 64 * 1024
#: Rows of each table at most (``status``; ``top`` shows what fits the terminal).
MAX_ROWS = 50
#: Workers shown by ``status`` at most (the stale and offline ones first).
STATUS_WORKERS = 20
#: Dead letters shown: the newest ones.
NEWEST_DEAD_LETTERS = 10
#: Workers asked for per state (the API's own cap): the stale and offline ones are counted
#: per group from these pages.
MAX_WORKERS_PAGE = 1000
#: Characters of a name (worker, group, subject, host) shown at most.
NAME_WIDTH = 48
#: Characters of a dead letter's error shown at most.
ERROR_WIDTH = 60
#: Times a ``429 Too Many Requests`` is waited out (its ``Retry-After``, capped) per request.
BUSY_RETRIES = 3
#: Seconds one ``Retry-After`` is waited at most.
MAX_BUSY_WAIT = 5.0
#: Seconds between two frames of ``top`` at least and at most.
MIN_INTERVAL, MAX_INTERVAL = 0.1, 3600.0
#: Samples of the total throughput ``top`` keeps for its sparkline (2 min at 1 s).
HISTORY = 120
#: The exit statuses: ready, up but not ready, not reachable (or refused, or not the API).
READY, NOT_READY, UNREACHABLE = 0, 1, 2
#: After Ctrl-C (128 + SIGINT), as the rest of the shell.
INTERRUPTED = 130

_PATH = re.compile(r"(/[!-~]*)?\Z")
_HEADER_VALUE = re.compile(r"[!-~]+\Z")
_SPARKS = "▁▂▃▄▅▆▇█"


# --------------------------------------------------------------------------- errors


class ApiError(Exception):
    """The leader's HTTP API could not answer: the message names the URL and the problem
    (exit status 2)."""


class Unreachable(ApiError):
    """Nothing answered at the URL (refused, timed out, TLS failed, connection dropped)."""


class Refused(ApiError):
    """The leader refused the token (401) or this identity (403)."""


class BadAnswer(ApiError):
    """What answered is not the leader's API: an unexpected status, not JSON, too big, or
    not the expected shape."""


class Busy(ApiError):
    """The leader said ``429 Too Many Requests``; ``retry_after`` seconds to wait."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


# --------------------------------------------------------------------------- the URL


@attrs.frozen
class HttpTarget:
    """Where the leader's HTTP API is: ``scheme://host:port`` and a path prefix."""

    scheme: str
    host: str
    port: int
    prefix: str = ""

    @property
    def url(self) -> str:
        """The URL, as the messages show it."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}{self.prefix}"

    @property
    def https(self) -> bool:
        """Whether it is ``https://``."""
        return self.scheme == "https"


def parse_http_url(text: str) -> HttpTarget:
    """``--http``'s value as an :class:`HttpTarget`: ``http://HOST:PORT[/prefix]``,
    ``https://...``, ``HOST:PORT`` (http) or ``:PORT`` (``127.0.0.1``).

    Raises:
      ConfigError: not such a URL; a user name or password, a query or a fragment in it.
    """
    expected = (
        f"--http: expected a URL such as {DEFAULT_HTTP_URL} (http:// or https://, or"
        f" HOST:PORT), got {text!r:.200}"
    )
    raw = text.strip()
    if "://" not in raw:
        raw = "http://" + (f"127.0.0.1{raw}" if raw.startswith(":") else raw)
    try:
        parts = urllib.parse.urlsplit(raw)
        port = parts.port
        host = parts.hostname
    except ValueError:
        raise ConfigError(expected) from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not host:
        raise ConfigError(expected)
    if parts.username is not None or parts.password is not None:
        raise ConfigError(
            "--http: no user or password in the URL (it would be visible to every user of"
            " the host): give the token with --token-env NAME or --token-file PATH"
        )
    if parts.query or parts.fragment or "?" in raw or "#" in raw:
        raise ConfigError(f"--http: no query or fragment: {text!r:.200}")
    path = parts.path.rstrip("/")
    if not _PATH.match(path) or any(ord(c) > 126 or c.isspace() for c in host):
        raise ConfigError(expected)
    if port is None:
        port = 443 if scheme == "https" else 80
    return HttpTarget(scheme, host, port, path)


# --------------------------------------------------------------------------- the client


@attrs.frozen
class Answer:
    """One answer of the API: its status and its JSON body (None when it had none)."""

    status: int
    body: Any
    headers: Mapping[str, str] = attrs.field(factory=dict)


@attrs.frozen
class HttpApi:
    """A client of the leader's HTTP API (GET only), for ``status`` and ``top``.

    Each request is a fresh connection made in a worker thread (``http.client``): no
    redirect is followed and no proxy used, so that the token goes to ``target`` only.

    Args:
      target: where the API is.
      token: the token (or a provider, asked for each request), None for none.
      timeout: seconds one request may take (connect, send, read) at most.
      ssl_context: for ``https://`` (None: the system's CAs).
      max_bytes: bytes of an answer at most.
    """

    target: HttpTarget
    token: TokenSource = None
    timeout: float = 10.0
    ssl_context: ssl.SSLContext | None = None
    max_bytes: int = MAX_ANSWER_BYTES

    async def get(self, path: str, **query: str | int | None) -> Answer:
        """``GET path?query`` (parameters that are None left out); a ``429`` waited out
        (at most :data:`BUSY_RETRIES` times).

        Raises:
          Unreachable: no answer within ``timeout`` seconds, or no connection.
          BadAnswer: an answer over ``max_bytes``, not HTTP, or a body that is not JSON.
          Busy: still 429 after the retries.
          TokenUnavailable: the token's provider failed (its variable unset, its file
            gone).
        """
        params = {k: str(v) for k, v in query.items() if v is not None}
        target = path + ("?" + urllib.parse.urlencode(params) if params else "")
        for attempt in range(BUSY_RETRIES + 1):
            headers = {"Accept": "application/json", "User-Agent": "trio-actors-shell"}
            token = await fetch_token(self.token)
            if token is not None:
                if not _HEADER_VALUE.match(token):
                    raise TokenUnavailable(
                        "the token holds characters an HTTP header cannot carry (spaces,"
                        " control or non-ASCII characters)"
                    )
                headers["Authorization"] = f"Bearer {token}"
            url = self.target.url + target
            try:
                # (the thread keeps its own deadline too: it ends by itself when abandoned)
                with trio.fail_after(self.timeout + 1):
                    status, answer_headers, body = await trio.to_thread.run_sync(
                        self._fetch, target, headers, abandon_on_cancel=True
                    )
            except trio.TooSlowError:
                raise Unreachable(
                    f"{url}: no answer within {self.timeout:g} s (--connect-timeout)"
                ) from None
            if status == 429 and attempt < BUSY_RETRIES:
                await trio.sleep(_retry_after(answer_headers))
                continue
            if status == 429:
                raise Busy(f"{url}: the leader is busy (429)", _retry_after(answer_headers))
            return Answer(status, _json_of(url, status, answer_headers, body), answer_headers)
        raise AssertionError("unreachable")  # (the loop returns or raises)

    def _fetch(self, target: str, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        """One request, in a worker thread: ``(status, headers, body)``."""
        url = self.target.url + target
        deadline = time.monotonic() + self.timeout
        connection: http.client.HTTPConnection
        if self.target.https:
            context = self.ssl_context or ssl.create_default_context()
            connection = http.client.HTTPSConnection(
                self.target.host, self.target.port, timeout=self.timeout, context=context
            )
        else:
            connection = http.client.HTTPConnection(
                self.target.host, self.target.port, timeout=self.timeout
            )
        try:
            try:
                connection.request("GET", self.target.prefix + target, headers=headers)
                response = connection.getresponse()
                try:
                    body = self._read(response, url, deadline)
                finally:
                    response.close()
            except ConnectionRefusedError:
                raise Unreachable(
                    f"could not connect to {self.target.url}: connection refused (nothing"
                    " listens there: is the leader running, with --http?)"
                ) from None
            except TimeoutError:
                raise Unreachable(
                    f"{url}: no answer within {self.timeout:g} s (--connect-timeout)"
                ) from None
            except ssl.SSLError as exc:
                raise Unreachable(f"{url}: TLS failed: {exc.reason or exc}") from None
            except http.client.RemoteDisconnected:  # (before BadStatusLine: it is one)
                raise Unreachable(
                    f"{url}: the server closed the connection without an HTTP answer: is "
                    "this the leader's HTTP address (--http), not a protocol listener?"
                ) from None
            except (http.client.BadStatusLine, http.client.LineTooLong):
                # (the leader's tcp:// listener answers a request with a protocol Error
                # frame: binary, never shown)
                raise BadAnswer(
                    f"{url}: what answers does not speak HTTP: this is not the leader's "
                    "HTTP address (--http), maybe one of its protocol listeners (tcp://)"
                ) from None
            except (OSError, http.client.HTTPException) as exc:
                said = str(exc) or type(exc).__name__
                raise Unreachable(f"{url}: {_clean(said, 200)}") from None
            return response.status, {k.lower(): v for k, v in response.getheaders()}, body
        finally:
            connection.close()

    def _read(self, response: http.client.HTTPResponse, url: str, deadline: float) -> bytes:
        """The body of ``response``, at most ``max_bytes``, read by ``deadline``.

        Raises:
          BadAnswer: over ``max_bytes``.
          TimeoutError: still reading at ``deadline`` (a server that drips).
        """
        chunks: list[bytes] = []
        size = 0
        while chunk := response.read1(READ_CHUNK):
            size += len(chunk)
            if size > self.max_bytes:
                raise BadAnswer(f"{url}: an answer over {self.max_bytes} bytes")
            chunks.append(chunk)
            if time.monotonic() > deadline:
                raise TimeoutError
        return b"".join(chunks)


def _retry_after(headers: Mapping[str, str]) -> float:
    """The seconds a 429's ``Retry-After`` asks for (1 when it says nothing usable),
    capped at :data:`MAX_BUSY_WAIT`."""
    try:
        seconds = float(headers.get("retry-after", "1"))
    except ValueError:
        seconds = 1.0
    return min(max(seconds, 0.0), MAX_BUSY_WAIT) if math.isfinite(seconds) else 1.0


def _json_of(url: str, status: int, headers: Mapping[str, str], body: bytes) -> Any:
    """The JSON of an answer, None for an empty body.

    Raises:
      BadAnswer: a body that is not JSON (the server is not the leader's API).
    """
    if not body:
        return None
    if "json" not in headers.get("content-type", ""):
        raise BadAnswer(
            f"{url}: answered {status} with {headers.get('content-type', 'no content type')!r:.80},"
            " not JSON: is this the leader's HTTP address?"
        )
    try:
        return json.loads(body)
    except (ValueError, RecursionError):  # (also bytes that are not UTF-8)
        raise BadAnswer(f"{url}: answered {status} with a body that is not JSON") from None


# --------------------------------------------------------------------------- a snapshot


@attrs.frozen
class Snapshot:
    """What the API said at one time (the raw answers, checked only for their shape).

    ``clock`` is a monotonic time for rates; ``at`` the local wall clock, for ages.
    """

    url: str
    at: float
    clock: float
    healthz: dict[str, Any]
    ready: bool
    readyz: dict[str, Any]
    stats: dict[str, Any]
    workers: dict[str, Any]
    workers_stale: dict[str, Any]
    workers_offline: dict[str, Any]
    dead_letters: dict[str, Any] | None
    dead_letters_refused: str | None

    def to_json(self) -> dict[str, Any]:
        """The answers combined (``status --json``)."""
        return {
            "url": self.url,
            "at": self.at,
            "ready": self.ready,
            "healthz": self.healthz,
            "readyz": self.readyz,
            "stats": self.stats,
            "workers": self.workers,
            "workers_stale": self.workers_stale,
            "workers_offline": self.workers_offline,
            "dead_letters": self.dead_letters,
            "dead_letters_refused": self.dead_letters_refused,
        }


async def take_snapshot(api: HttpApi, *, workers: int = STATUS_WORKERS) -> Snapshot:
    """Ask the API for a :class:`Snapshot` (about 7 requests, one after the other).

    Args:
      workers: online workers to list (the stale and offline ones are listed up to
        :data:`MAX_WORKERS_PAGE`, to count them per group).

    Raises:
      ApiError: the leader cannot be reached (:class:`Unreachable`), refused the token
        (:class:`Refused`), or what answers is not its API (:class:`BadAnswer`).
      TokenUnavailable: the token's provider failed.
    """
    at, clock = time.time(), trio.current_time()
    url = api.target.url
    health = await api.get("/healthz")
    if health.status != 200:
        raise BadAnswer(
            f"{url}/healthz: answered {health.status}, not 200: is this the leader's HTTP"
            f" address?{_said(health.body)}"
        )
    healthz = _object(url + "/healthz", health.body)
    ready_answer = await api.get("/readyz")
    if ready_answer.status not in (200, 503):
        raise BadAnswer(f"{url}/readyz: answered {ready_answer.status}{_said(ready_answer.body)}")
    readyz = _object(url + "/readyz", ready_answer.body)
    stats = _object(url + "/api/stats", await _api(api, "/api/stats"))
    for key in ("subjects", "groups"):
        if not isinstance(stats.get(key), dict):
            raise BadAnswer(f"{url}/api/stats: no {key!r} object in the answer")
    pages = []
    for state, limit in (("online", workers), ("stale", MAX_WORKERS_PAGE),
                         ("offline", MAX_WORKERS_PAGE)):  # fmt: skip
        page = _object(
            url + "/api/workers",
            await _api(api, "/api/workers", state=state, limit=max(1, limit)),
        )
        if not isinstance(page.get("workers"), list):
            raise BadAnswer(f"{url}/api/workers: no 'workers' list in the answer")
        pages.append(page)
    dead_letters: dict[str, Any] | None = None
    refused: str | None = None
    answer = await api.get("/api/dead-letters", limit=NEWEST_DEAD_LETTERS)
    if answer.status == 403:  # (listing them is an admin's: the total is in the stats)
        refused = _message(answer.body) or "forbidden"
    else:
        dead_letters = _object(
            url + "/api/dead-letters", _checked(api, "/api/dead-letters", answer)
        )
        if not isinstance(dead_letters.get("dead_letters"), list):
            raise BadAnswer(f"{url}/api/dead-letters: no 'dead_letters' list in the answer")
    return Snapshot(
        url=url, at=at, clock=clock, healthz=healthz, ready=ready_answer.status == 200,
        readyz=readyz, stats=stats, workers=pages[0], workers_stale=pages[1],
        workers_offline=pages[2], dead_letters=dead_letters, dead_letters_refused=refused,
    )  # fmt: skip


async def _api(api: HttpApi, path: str, **query: str | int | None) -> Any:
    """The body of a 200 answer to an ``/api/`` GET."""
    return _checked(api, path, await api.get(path, **query))


def _checked(api: HttpApi, path: str, answer: Answer) -> Any:
    """``answer``'s body when it is a 200.

    Raises:
      Refused: 401 or 403 (saying what to do).
      BadAnswer: any other status.
    """
    url = api.target.url + path
    if answer.status == 200:
        return answer.body
    said = _said(answer.body)
    if answer.status == 401:
        hint = (
            "the leader refused the token"
            if api.token is not None
            else "the leader wants a token: give it with --token-env NAME or --token-file PATH"
        )
        raise Refused(f"{url}: 401 unauthorized: {hint}{said}")
    if answer.status == 403:
        raise Refused(f"{url}: 403 forbidden{said}")
    if answer.status == 404:
        raise BadAnswer(
            f"{url}: 404 not found: this leader has no HTTP API there (an older version, or"
            f" not the leader's HTTP address?){said}"
        )
    raise BadAnswer(f"{url}: answered {answer.status}{said}")


def _message(body: Any) -> str | None:
    """The ``message`` of an error answer (``{"error": ..., "message": ...}``), cleaned."""
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        return _clean(body["message"], 200)
    return None


def _said(body: Any) -> str:
    message = _message(body)
    return f" (the leader says: {message})" if message else ""


def _object(url: str, body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise BadAnswer(f"{url}: expected a JSON object, got {type(body).__name__}")
    return body


# --------------------------------------------------------------------------- throughput


@attrs.frozen
class Rates:
    """Jobs per second between two snapshots, by subject (submitted, done) and by group
    (done), and in all (done); None where a counter went back (the leader restarted)."""

    subjects_in: dict[str, float | None] = attrs.field(factory=dict)
    subjects_done: dict[str, float | None] = attrs.field(factory=dict)
    groups_done: dict[str, float | None] = attrs.field(factory=dict)
    done: float | None = None


def rates_between(before: Snapshot | None, after: Snapshot) -> Rates | None:
    """The :class:`Rates` from ``before`` to ``after`` (None without ``before``, or when
    no time passed)."""
    if before is None or after.clock <= before.clock:
        return None
    seconds = after.clock - before.clock

    def rate(new: Any, old: Any) -> float | None:
        now, then = _int(new), _int(old)
        if now is None or then is None or now < then:
            return None
        return (now - then) / seconds

    def counters(table: Any, key: str) -> dict[str, Any]:
        rows = table.get(key) if isinstance(table, dict) else None
        return rows if isinstance(rows, dict) else {}

    subjects_in, subjects_done, groups_done = {}, {}, {}
    old_subjects = counters(before.stats, "subjects")
    for name, row in counters(after.stats, "subjects").items():
        old = old_subjects.get(name)
        old = old if isinstance(old, dict) else {}
        if isinstance(row, dict):
            subjects_in[name] = rate(row.get("submitted"), old.get("submitted", 0))
            subjects_done[name] = rate(row.get("done"), old.get("done", 0))
    old_groups = counters(before.stats, "groups")
    for name, row in counters(after.stats, "groups").items():
        old = old_groups.get(name)
        old = old if isinstance(old, dict) else {}
        if isinstance(row, dict):
            groups_done[name] = rate(row.get("done"), old.get("done", 0))
    known = [r for r in subjects_done.values() if r is not None]
    return Rates(subjects_in, subjects_done, groups_done, sum(known) if known else None)


# --------------------------------------------------------------------------- rendering


@attrs.frozen
class Limits:
    """Rows of each table at most, and the width they must fit (None: any), for which
    the less needed columns are left out (a table's ``Column.drop``)."""

    groups: int = MAX_ROWS
    subjects: int = MAX_ROWS
    workers: int = STATUS_WORKERS
    dead_letters: int = NEWEST_DEAD_LETTERS
    width: int | None = None


def render(
    snapshot: Snapshot,
    rates: Rates | None = None,
    *,
    limits: Limits | None = None,
    history: collections.deque[float] | None = None,
    problem: str | None = None,
) -> RenderableType:
    """The snapshot as a header and four tables: groups, subjects, workers, dead letters.

    Args:
      rates: the throughput since the snapshot before (None: shown as ``-``).
      limits: rows of each table at most (the rest is counted below it).
      history: the total throughput of the snapshots before (``top``'s sparkline).
      problem: said in red at the top (``top``: the leader cannot be reached now).
    """
    limits = limits or Limits()
    parts: list[RenderableType] = []
    if problem is not None:
        parts.append(Text(problem, style="bold red"))
    parts += _header(snapshot, rates, history)
    parts += _groups_table(snapshot, rates, limits)
    parts += _subjects_table(snapshot, rates, limits)
    parts += _workers_table(snapshot, limits)
    parts += _dead_letters_table(snapshot, limits)
    return Group(*parts)


def _header(
    snapshot: Snapshot, rates: Rates | None, history: collections.deque[float] | None
) -> list[RenderableType]:
    stats, readyz = snapshot.stats, snapshot.readyz
    node = _clean(stats.get("node") or snapshot.healthz.get("node") or "?", NAME_WIDTH)
    when = dt.datetime.fromtimestamp(snapshot.at).astimezone().strftime("%H:%M:%S")
    first = Text.assemble(
        ("leader ", "bold"), (node, "bold"), f" at {snapshot.url} ({when}): up, ",
        ("ready", "bold green") if snapshot.ready else ("NOT READY", "bold red"),
    )  # fmt: skip
    lines: list[RenderableType] = [first]
    if not snapshot.ready:
        why = []
        not_ready = readyz.get("groups_not_ready")
        if isinstance(not_ready, dict) and not_ready:
            shown = ", ".join(
                f"{_clean(name, NAME_WIDTH)} ({_clean(state, 40)})"
                for name, state in list(not_ready.items())[:10]
            )
            total = _int(readyz.get("groups_not_ready_total")) or len(not_ready)
            more = f" and {total - 10} more" if total > 10 else ""
            why.append(f"groups with no worker: {shown}{more}")
        journal = readyz.get("journal")
        if isinstance(journal, dict) and journal.get("writable") is False:
            why.append(f"the journal refuses writes: {_clean(journal.get('problem'), 200)}")
        lines.append(Text("  " + ("; ".join(why) or _clean(readyz.get("status"), 80)), "red"))
    offline = _int(snapshot.workers_offline.get("total")) or 0
    stale = _int(stats.get("workers_stale"))
    if stale is None:
        stale = _int(snapshot.workers_stale.get("total")) or 0
    online = _int(stats.get("workers_online"))
    if online is None:
        online = max(0, (_int(stats.get("workers")) or 0) - stale)
    workers = Text.assemble(
        f"connections {_num(stats.get('connections'))} · workers ",
        (f"{online} online", "green"), ", ",
        (f"{stale} stale", "yellow" if stale else ""), ", ",
        (f"{offline} offline", "red" if offline else ""),
        f" · jobs {_num(stats.get('jobs_active'))} active ({_num(stats.get('waiting'))} waiting,"
        f" {_num(stats.get('in_flight'))} in flight) · dead letters {_num(stats.get('dead_letters'))}",
    )  # fmt: skip
    if rates is not None and rates.done is not None:
        workers.append(f" · {rates.done:.1f} done/s")
    if history:
        workers.append(f"  {_sparkline(history)}", "cyan")
    lines.append(workers)
    journal = stats.get("journal")
    if isinstance(journal, dict):
        size, limit = _int(journal.get("bytes")), _int(journal.get("max_bytes"))
        used = f"{_bytes(size)} of {_bytes(limit)}" if limit else _bytes(size)
        lines.append(Text(f"journal {_clean(journal.get('path'), 120)}: {used}", "dim"))
    return lines


def _groups_table(snapshot: Snapshot, rates: Rates | None, limits: Limits) -> list[RenderableType]:
    groups = snapshot.stats["groups"]
    if not groups:
        return [Text("no worker groups", "dim")]
    stale = _per_group(snapshot.workers_stale)
    offline = _per_group(snapshot.workers_offline)
    columns = [Column("GROUP", text=True), Column("STATE", text=True), Column("ONLINE"),
               Column("STALE"), Column("OFFLINE"), Column("WINDOW", drop=4),
               Column("IN\nFLIGHT", drop=3), Column("DONE"), Column("DONE/S", drop=2),
               Column("FAILED"), Column("DEAD"), Column("P50\nms", drop=1), Column("P99\nms")]  # fmt: skip
    rows: list[list[Text | str]] = []
    names = sorted(groups, key=str)
    for name in names[: limits.groups]:
        g = groups[name] if isinstance(groups[name], dict) else {}
        connected = _int(g.get("workers")) or 0
        silent = _int(g.get("workers_stale"))  # (the leader's count; else from the page)
        if silent is None:
            silent = stale.get(name, 0)
        state = group_state(g.get("state"), connected, silent)
        rate = rates.groups_done.get(name) if rates else None
        rows.append([
            _cell(name), _cell(state), _count(max(0, connected - silent), "green"),
            _count(silent, "yellow"), _count(offline.get(name, 0), "red"),
            _num(g.get("window")), _num(g.get("in_flight")), _num(g.get("done")),
            _per_second(rate), _count(g.get("failed"), "red"), _count(g.get("dead"), "red"),
            _ms(g.get("latency_p50")), _ms(g.get("latency_p99")),
        ])  # fmt: skip
    table = _table("GROUPS", columns, rows, limits.width)
    return [table, *_more(len(names) - limits.groups, "groups")]


def group_state(said: Any, workers: int, stale: int) -> str:
    """A group's state as ``GET /api/groups`` words it (``LeaderAdmin.groups``), from its
    statistics: what the cluster says (``starting``, ``failed: ...``), else ``idle`` with
    no worker connected, ``stale`` when those connected are all stale, else ``running``."""
    if isinstance(said, str) and said:
        return said
    return "idle" if workers <= 0 else "stale" if stale >= workers else "running"


def _subjects_table(
    snapshot: Snapshot, rates: Rates | None, limits: Limits
) -> list[RenderableType]:
    subjects = snapshot.stats["subjects"]
    if not subjects:
        return [Text("no subjects yet", "dim")]

    def busy(name: str) -> tuple[int, int, str]:
        s = subjects[name] if isinstance(subjects[name], dict) else {}
        waiting = (_int(s.get("queued")) or 0) + (_int(s.get("in_flight")) or 0)
        return (-waiting, -(_int(s.get("submitted")) or 0), str(name))

    columns = [Column("SUBJECT", text=True), Column("WORKERS", drop=4), Column("QUEUED"),
               Column("IN\nFLIGHT"), Column("SUBMITTED", drop=2), Column("IN/S", drop=3),
               Column("DONE"), Column("DONE/S"), Column("FAILED"), Column("DEAD"),
               Column("P50\nms", drop=1), Column("P99\nms")]  # fmt: skip
    rows: list[list[Text | str]] = []
    names = sorted(subjects, key=busy)  # the busiest first
    for name in names[: limits.subjects]:
        s = subjects[name] if isinstance(subjects[name], dict) else {}
        rows.append([
            _cell(name), _num(s.get("workers")), _num(s.get("queued")), _num(s.get("in_flight")),
            _num(s.get("submitted")), _per_second(rates.subjects_in.get(name) if rates else None),
            _num(s.get("done")), _per_second(rates.subjects_done.get(name) if rates else None),
            _count(s.get("failed"), "red"), _count(s.get("dead"), "red"),
            _ms(s.get("latency_p50")), _ms(s.get("latency_p99")),
        ])  # fmt: skip
    table = _table("SUBJECTS", columns, rows, limits.width)
    omitted = len(names) - limits.subjects + (_int(snapshot.stats.get("subjects_omitted")) or 0)
    return [table, *_more(omitted, "subjects")]


def _workers_table(snapshot: Snapshot, limits: Limits) -> list[RenderableType]:
    listed = [
        w
        for page in (snapshot.workers_stale, snapshot.workers_offline, snapshot.workers)
        for w in page["workers"]
        if isinstance(w, dict)
    ]
    total = sum(
        _int(page.get("total")) or 0
        for page in (snapshot.workers_stale, snapshot.workers_offline, snapshot.workers)
    )
    if not listed:
        return [Text("no workers", "dim")]
    columns = [Column("WORKER", text=True), Column("GROUP", text=True),
               Column("STATE", text=True), Column("IN\nFLIGHT"), Column("WINDOW", drop=2),
               Column("HOST", text=True, drop=1), Column("PID", drop=4),
               Column("CONNECTED", text=True, drop=3), Column("LAST\nHEARD", text=True)]  # fmt: skip
    styles = {"online": "green", "stale": "yellow", "offline": "red"}
    rows: list[list[Text | str]] = []
    for w in listed[: limits.workers]:
        state = _clean(w.get("state"), 16)
        left = _float(w.get("left_at"))
        rows.append([
            _cell(w.get("name")), _cell(w.get("group")), Text(state, styles.get(state, "")),
            _num(w.get("in_flight")), _num(w.get("window")), _cell(w.get("host") or w.get("peer")),
            _num(w.get("pid")), _ago(snapshot.at, w.get("connected_at")),
            _ago(snapshot.at, left) if left is not None else _ago(snapshot.at, w.get("last_heard")),
        ])  # fmt: skip
    table = _table("WORKERS", columns, rows, limits.width)
    return [table, *_more(total - min(limits.workers, len(listed)), "workers")]


def _dead_letters_table(snapshot: Snapshot, limits: Limits) -> list[RenderableType]:
    total = _int(snapshot.stats.get("dead_letters")) or 0
    page = snapshot.dead_letters
    if page is None:
        return [Text(f"{total} dead letters (listing them needs an admin's token:"
                     f" {snapshot.dead_letters_refused})", "dim")]  # fmt: skip
    total = _int(page.get("total")) or total
    letters = [d for d in page["dead_letters"] if isinstance(d, dict)][: limits.dead_letters]
    if not letters:
        return [Text("no dead letters", "dim")]
    columns = [Column("JOB ID", text=True), Column("SUBJECT", text=True),
               Column("ATTEMPTS", drop=1), Column("ERROR", text=True), Column("WHEN", text=True)]  # fmt: skip
    rows: list[list[Text | str]] = []
    for d in letters:
        error = d.get("error")
        if isinstance(error, dict):
            kind, message = error.get("code") or error.get("type"), error.get("message")
        else:
            kind, message = d.get("error_type"), d.get("error_message")
        said = f"{_clean(kind or 'Error', 40)}: {_clean(message or '', ERROR_WIDTH)}"
        rows.append([
            _cell(d.get("job_id")), _cell(d.get("subject")), _num(d.get("attempts")),
            Text(_clean(said, ERROR_WIDTH)), _ago(snapshot.at, d.get("dead_at") or d.get("at")),
        ])  # fmt: skip
    title = f"DEAD LETTERS ({total}, the newest first)"
    return [
        _table(title, columns, rows, limits.width),
        *_more(total - len(letters), "dead letters"),
    ]


@attrs.frozen
class Column:
    """A table's column: its header (lines split by ``\\n``); ``text`` columns are
    left-aligned and cut (``…``) when the table is too wide, numbers never are; ``drop``
    (> 0) says the column may be left out when the table does not fit, the highest
    first."""

    header: str
    text: bool = False
    drop: int = 0

    @property
    def header_width(self) -> int:
        """The width of its header's longest line."""
        return max(len(line) for line in self.header.split("\n"))


#: Characters a text column may be cut to when its table is too wide.
MIN_TEXT_WIDTH = 8


def _table(
    title: str, columns: list[Column], rows: list[list[Text | str]], width: int | None
) -> Table:
    """A table of ``rows``, fitted to ``width``: the columns that may go (``drop``)
    left out, the highest first, until the numbers fit uncut and each text column has
    :data:`MIN_TEXT_WIDTH` characters (rich then cuts the text columns to fit)."""
    cells = [[cell if isinstance(cell, Text) else Text(cell) for cell in row] for row in rows]
    for row in cells:
        for cell, column in zip(row, columns, strict=True):
            if column.text:  # (cut, not wrapped, when rich narrows its column)
                cell.no_wrap, cell.overflow = True, "ellipsis"
    kept = list(range(len(columns)))

    def needs(i: int) -> int:
        natural = max([columns[i].header_width, *(row[i].cell_len for row in cells)])
        return min(natural, MIN_TEXT_WIDTH) if columns[i].text else natural

    if width is not None:
        while sum(needs(i) + 1 for i in kept) - 1 > width:
            droppable = [i for i in kept if columns[i].drop > 0]
            if not droppable:
                break
            kept.remove(max(droppable, key=lambda i: columns[i].drop))
    table = Table(title=title, title_justify="left", title_style="bold", box=None,
                  header_style="bold", pad_edge=False, expand=False, padding=(0, 1, 0, 0))  # fmt: skip
    for i in kept:
        column = columns[i]
        table.add_column(
            column.header, justify="left" if column.text else "right",
            no_wrap=not column.text, overflow="ellipsis",
            min_width=min(needs(i), MIN_TEXT_WIDTH) if column.text else needs(i),
        )  # fmt: skip
    for row in cells:
        table.add_row(*(row[i] for i in kept))
    return table


def _more(count: int, what: str) -> list[RenderableType]:
    return [Text(f"… and {count} more {what}", "dim")] if count > 0 else []


def _per_group(page: dict[str, Any]) -> dict[str, int]:
    counts: dict[str, int] = collections.Counter()
    for w in page["workers"]:
        if isinstance(w, dict) and isinstance(w.get("group"), str):
            counts[w["group"]] += 1
    return counts


# ------------------------------------------------------------ cells (hostile-proof)


def _clean(value: Any, width: int) -> str:
    """``value`` as one line of at most ``width`` characters, its control and format
    characters (escapes, bidi overrides, line breaks) written as ``\\x1b``, ``\\u202e``."""
    text = value if isinstance(value, str) else "?" if value is None else str(value)
    if len(text) > 4 * width:  # (no need to look at more than is shown)
        text = text[: 4 * width]
    if any(unicodedata.category(c)[0] in "CZ" and c != " " for c in text):
        text = "".join(
            c.encode("unicode_escape").decode("ascii")
            if unicodedata.category(c)[0] in "CZ" and c != " "
            else c
            for c in text
        )
    return text if len(text) <= width else text[: width - 1] + "…"


def _cell(value: Any) -> Text:
    """A name as a table cell: plain text (never markup), cleaned, cut."""
    return Text(_clean(value, NAME_WIDTH))


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _float(value: Any) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def _num(value: Any) -> str:
    number = _int(value)
    return "-" if number is None else str(number)


def _count(value: Any, style: str) -> Text:
    """A count, in ``style`` when it is not 0."""
    number = _int(value)
    return Text("-" if number is None else str(number), style if number else "")


def _per_second(rate: float | None) -> str:
    return "-" if rate is None else f"{rate:.1f}"


def _ms(seconds: Any) -> str:
    """Seconds as milliseconds (the column says ``ms``)."""
    value = _float(seconds)
    return "-" if value is None else f"{value * 1000:.1f}"


def _bytes(size: int | None) -> str:
    if size is None:
        return "?"
    if size < 1024:
        return f"{size} B"
    value, units = size / 1024, ["KiB", "MiB", "GiB"]
    while value >= 1024 and len(units) > 1:
        value /= 1024
        units.pop(0)
    return f"{value:.1f} {units[0]}"


def _ago(now: float, when: Any) -> str:
    """How long before ``now`` the unix time ``when`` was (``-`` when it is no time)."""
    value = _float(when)
    if value is None:
        return "-"
    seconds = max(0.0, now - value)
    if seconds < 60:
        return f"{seconds:.0f}s ago"
    if seconds < 3600:
        return f"{seconds // 60:.0f}m ago"
    if seconds < 86400:
        return f"{seconds // 3600:.0f}h ago"
    return f"{seconds // 86400:.0f}d ago"


def _sparkline(values: collections.deque[float]) -> str:
    top = max(values, default=0.0)
    if top <= 0:
        return _SPARKS[0] * len(values)
    return "".join(_SPARKS[min(7, int(v / top * 7.999))] for v in values)


# --------------------------------------------------------------------------- arguments


def http_url_default() -> str:
    """``--http``'s default: ``$ACTORS_HTTP``, else :data:`DEFAULT_HTTP_URL`."""
    return os.environ.get(HTTP_URL_VARIABLE) or DEFAULT_HTTP_URL


def add_http_option(parser: argparse.ArgumentParser) -> None:
    """Add ``--http [URL]`` to ``status``: ask the leader's HTTP API instead of its
    protocol listener (``--url``)."""
    parser.add_argument(
        "--http", nargs="?", const=http_url_default(), default=None, metavar="URL",
        help="ask the leader's HTTP API at URL instead of --url: readiness, workers online,"
        f" stale and offline, latency p50/p99, the newest dead letters (URL: ${HTTP_URL_VARIABLE}"
        f" when set, else {DEFAULT_HTTP_URL}); exit status 0 ready, 1 not ready, 2 unreachable",
    )  # fmt: skip


def add_top_parser(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    formatter_class: type[argparse.HelpFormatter],
) -> argparse.ArgumentParser:
    """Add the ``top`` command to ``commands`` (the shell's subparsers)."""
    text = "the cluster live, from the leader's HTTP API: readiness, groups, subjects, workers, dead letters (q quits)"
    top = commands.add_parser("top", help=text, description=text, formatter_class=formatter_class)
    top.add_argument(
        "--http", default=http_url_default(), metavar="URL",
        help=f"the leader's HTTP address (the default comes from ${HTTP_URL_VARIABLE} when set)",
    )  # fmt: skip
    top.add_argument(
        "--interval", type=float, default=1.0, metavar="S", help="seconds between two refreshes"
    )
    top.add_argument(
        "--once", action="store_true",
        help="print one frame and exit (status 0 ready, 1 not ready, 2 unreachable)",
    )  # fmt: skip
    top.add_argument(
        "--connect-timeout", type=float, default=10.0, metavar="S",
        help="seconds each request to the leader may take",
    )  # fmt: skip
    add_credential_options(top)
    return top


def check_http_args(args: argparse.Namespace) -> None:
    """Check the options of ``status --http`` and ``top``; set ``args.api`` (an
    :class:`HttpApi`).

    Raises:
      ConfigError: a bad URL, timeout or interval; the token's variable unset or its file
        unreadable; TLS options for an ``http://`` URL, or a TLS file that is wrong.
    """
    target = parse_http_url(args.http)
    timeout = args.connect_timeout
    if not (timeout > 0 and math.isfinite(timeout)):
        raise ConfigError(f"--connect-timeout: expected a number > 0, got {timeout}")
    interval = getattr(args, "interval", None)
    if interval is not None and not MIN_INTERVAL <= interval <= MAX_INTERVAL:
        raise ConfigError(
            f"--interval: expected {MIN_INTERVAL:g} to {MAX_INTERVAL:g} seconds, got {interval}"
        )
    tls = [f"--tls-{name}" for name in ("ca", "cert", "key") if getattr(args, f"tls_{name}")]
    if tls and not target.https:
        raise ConfigError(
            f"{', '.join(tls)}: {target.url} does not use TLS: give an https:// URL to --http,"
            " or leave the TLS options out"
        )
    # (the protocol's checks, with the URL of the same host for the TLS context)
    credentials = credentials_from_args(args, url=f"tls://{target.url.split('://', 1)[1]}")
    if credentials.token is not None and not target.https and not _is_local(target.host):
        print(
            f"warning: the token goes in clear over http:// to {target.host}: prefer https://"
            " (a proxy in front of the leader) or a loopback address",
            file=sys.stderr,
        )
    args.api = HttpApi(target, credentials.token, timeout, credentials.ssl_context)


def _is_local(host: str) -> bool:
    from ..leader._leader import is_loopback

    return is_loopback(host)


# --------------------------------------------------------------------------- commands


async def status_command(args: argparse.Namespace, stop: trio.CancelScope) -> int:
    """``status --http``: one snapshot (two, ``--sample`` seconds apart, for the
    throughput), printed; the exit status says whether the leader is ready."""
    api: HttpApi = args.api
    with stop:
        try:
            first = await take_snapshot(api)
            if args.json:
                print(json.dumps(first.to_json(), indent=2))
                return READY if first.ready else NOT_READY
            shown, rates = first, None
            if args.sample:
                await trio.sleep(args.sample)
                shown = await take_snapshot(api)
                rates = rates_between(first, shown)
        except (ApiError, TokenUnavailable) as exc:
            print(f"python -m actors: error: {exc}", file=sys.stderr)
            return UNREACHABLE
        console = _console()
        console.print(render(shown, rates, limits=Limits(width=console.width)))
        return READY if shown.ready else NOT_READY
    return INTERRUPTED


async def top_command(args: argparse.Namespace, stop: trio.CancelScope) -> int:
    """``top``: :func:`render` refreshed every ``--interval`` seconds until ``q`` or
    Ctrl-C (``--once``: one frame, printed)."""
    api: HttpApi = args.api
    console = _console()
    if args.once:
        with stop:
            try:
                snapshot = await take_snapshot(api, workers=_limits(console).workers)
            except (ApiError, TokenUnavailable) as exc:
                print(f"python -m actors: error: {exc}", file=sys.stderr)
                return UNREACHABLE
            console.print(render(snapshot, limits=_limits(console)))
            return READY if snapshot.ready else NOT_READY
        return INTERRUPTED
    status = 0  # (q or Ctrl-C: a clean end)
    with stop:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_quit_on_q, stop)
            with Live(console=console, screen=console.is_terminal, auto_refresh=False,
                      redirect_stdout=False, redirect_stderr=False,
                      vertical_overflow="crop") as live:  # fmt: skip
                status = await _refresh(api, live, console, args.interval)
            nursery.cancel_scope.cancel()
    return status


async def _refresh(api: HttpApi, live: Live, console: Console, interval: float) -> int:
    """Show a new frame every ``interval`` seconds, forever; returns 2 when the leader
    refuses the token (said on stderr once the view is gone)."""
    last: Snapshot | None = None
    history: collections.deque[float] = collections.deque(maxlen=HISTORY)
    rates: Rates | None = None
    failing_since: str | None = None
    while True:
        started = trio.current_time()
        limits = _limits(console)
        try:
            snapshot = await take_snapshot(api, workers=limits.workers)
        except Refused as exc:
            live.stop()
            print(f"python -m actors: error: {exc}", file=sys.stderr)
            return UNREACHABLE
        except (ApiError, TokenUnavailable) as exc:
            failing_since = failing_since or time.strftime("%H:%M:%S")
            problem = f"since {failing_since}: {exc} (retrying every {interval:g} s)"
            if last is None:
                live.update(Text(problem, style="bold red"), refresh=True)
            else:
                live.update(render(last, rates, limits=limits, history=history, problem=problem),
                            refresh=True)  # fmt: skip
        else:
            failing_since = None
            rates = rates_between(last, snapshot)
            if rates is not None and rates.done is not None:
                history.append(rates.done)
            last = snapshot
            live.update(render(snapshot, rates, limits=limits, history=history), refresh=True)
        await trio.sleep_until(started + interval)


def _limits(console: Console) -> Limits:
    """Rows of each table that fit the terminal (its height shared out)."""
    if not console.is_terminal:
        return Limits(width=console.width)
    rows = max(console.size.height - 12, 8)
    return Limits(
        groups=max(2, rows // 5),
        subjects=max(2, rows // 3),
        workers=max(2, rows // 4),
        dead_letters=max(1, min(NEWEST_DEAD_LETTERS, rows // 6)),
        width=console.width,
    )


def _console() -> Console:
    """stdout as a rich console: wide when it is not a terminal (a pipe, a file), so
    that the tables are not squeezed to 80 columns."""
    console = Console(highlight=False, soft_wrap=False)
    if not console.is_terminal:
        console = Console(highlight=False, soft_wrap=False, width=max(console.width, 200))
    return console


async def _quit_on_q(stop: trio.CancelScope) -> None:
    """Cancel ``stop`` when ``q`` is typed (stdin a terminal, put in cbreak mode for it
    and restored after); without a terminal, Ctrl-C alone quits."""
    try:
        import termios
        import tty
    except ImportError:  # (not on Windows: Ctrl-C quits)
        return
    fd = sys.stdin.fileno() if sys.stdin is not None else -1
    if fd < 0 or not os.isatty(fd):
        return
    saved = termios.tcgetattr(fd)
    try:
        tty.setcbreak(fd)  # (keys one at a time, no echo; Ctrl-C still a signal)
        while True:
            await trio.lowlevel.wait_readable(fd)
            try:
                typed = os.read(fd, 64)
            except OSError:  # (the terminal went away: Ctrl-C still quits)
                return
            if not typed or b"q" in typed.lower():
                stop.cancel()
                return
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)
