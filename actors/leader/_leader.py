"""The Leader: listeners, one task per connection, and a timer, around the Broker.

The leader is one trio process. Each connection's task reads a batch of messages
(:meth:`~runtime.Connection.receive_some`), hands each to the :class:`Broker`, whose
answers are queued on the connections' outgoing buffers without awaiting; the
connections' writer tasks then flush them in few ``send_all`` calls. A timer task sleeps
until the broker's next deadline (ack timeouts, backoff) and is re-armed after each batch.
"""

from __future__ import annotations

import contextlib
import ipaddress
import itertools
import logging
import math
import random
import ssl
import sys
import time
import uuid
from collections.abc import Iterator
from functools import partial
from typing import TYPE_CHECKING, Any

import attrs
import trio

from protocol import (
    DEFAULT_MAX_FRAME_SIZE,
    MAX_LISTED,
    MAX_NAME_LENGTH,
    Ack,
    Cancel,
    Credit,
    Error,
    ErrorCode,
    Hello,
    Nack,
    Permissions,
    Progress,
    Publish,
    Query,
    Result,
    Submit,
    Subscribe,
    Unsubscribe,
    UnsupportedVersion,
    Welcome,
    negotiate_version,
)
from runtime import (
    DEFAULT_HANDSHAKE_TIMEOUT,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_CONNECTIONS_PER_ADDRESS,
    DEFAULT_MAX_HANDSHAKES,
    DEFAULT_MAX_HANDSHAKES_PER_ADDRESS,
    DEFAULT_MAX_OUTGOING_TOTAL,
    DEFAULT_WRITE_TIMEOUT,
    Connection,
    ConnectionClosed,
    MessageTooLarge,
    SendBufferFull,
    parse_url,
    serve,
)

from ._admin import (
    MAX_ADMIN_QUERIES,
    RETRY_PAGE,
    AdminError,
    Scaler,
    dead_letter_summary,
    read_journal,
    retry_dead_letters,
)
from ._auth import AuthConfig, Authenticator, AuthFailure, Principal, token_digest
from ._broker import Broker, BrokerConfig, send_to
from ._dashboard import DASHBOARD_SUBJECT, DashboardFeed
from ._jetstream import StoreConfig, StoreError, parse_store
from ._journal import (
    PRUNE_BATCH,
    SYNC_MODES,
    Batch,
    JournalError,
    SqliteJournal,
    default_data_dir,
)
from ._links import ClientLink, Link, WorkerLink, peer_address
from ._sizes import payload_size
from ._workers import DepartedWorkers, count_worker_states, worker_list

if TYPE_CHECKING:
    from ._shared import SharedJobs

#: Messages of one received batch handled before what they queued is written out, so
#: that the next process in the pipeline starts working sooner.
FLUSH_EVERY = 32
#: Subject patterns one worker may serve, by default.
MAX_PATTERNS = 1024
#: Seconds between two statistics answers to one connection (and between two builds).
STATS_INTERVAL = 1.0
#: Subjects listed in a statistics answer at most (the busiest).
MAX_STATS_SUBJECTS = 1000
#: Seconds a readiness answer (``/readyz``) is reused at most, whoever asks.
READINESS_INTERVAL = 0.5
#: Groups a readiness answer names at most (the count says how many are not ready).
MAX_NOT_READY_LISTED = 100
#: Groups a cluster may tell the leader of (their states, their instance counts).
MAX_GROUP_FACTS = 10_000
#: Seconds between two steps of pruning the journal when there is little to prune.
PRUNE_INTERVAL = 1.0
#: Bytes of write-ahead log past which the leader checkpoints it (in a thread).
CHECKPOINT_BYTES = 16 * 2**20

log = logging.getLogger("actors.leader")


#: Where a leader listens unless told otherwise.
DEFAULT_LISTEN = "tcp://127.0.0.1:7700"
#: Seconds between two log lines about refused credentials or denied actions (of one
#: identity); those in between are counted in the next line.
DENIAL_LOG_INTERVAL = 1.0
#: The roles a feed connection (the HTTP server's ``/ws``) may say Hello as.
FEED_ROLES = frozenset({"client", "observer"})
#: How a feed connection's refusals begin.
FEED_ONLY = "this connection (the HTTP server's /ws) carries the dashboard's feed only"
#: The Query kinds that act on dead letters: for admins only.
ADMIN_QUERIES = {
    "dead_letters": "list dead letters",
    "dead_letter": "read a dead letter",
    "retry_dead_letter": "retry dead letters",
    "purge_dead_letters": "purge dead letters",
}


def origin_key(origin: str) -> str:
    """An ``Origin`` as it is compared: lower case, no trailing slash, no default port
    (``https://App.example:443/`` is ``https://app.example``)."""
    key = origin.strip().rstrip("/").lower()
    for scheme, port in (("https://", ":443"), ("http://", ":80")):
        if key.startswith(scheme) and key.endswith(port):
            return key[: -len(port)]
    return key


def _no_workers_group() -> dict[str, Any]:
    """The statistics of a group no worker of which has joined (yet)."""
    return {
        "workers": 0, "in_flight": 0, "window": 0, "assigned": 0, "answered": 0,
        "policy": None, "mode": None, "done": 0, "failed": 0, "redelivered": 0,
        "dead": 0, "latency_avg": None, "latency_max": 0.0, "patterns": [],
        "latency_p50": None, "latency_p99": None,
    }  # fmt: skip


def is_loopback(host: str) -> bool:
    """Whether a listen URL's ``host`` is reachable from this machine only."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@attrs.define(eq=False)
class _Credentials:
    """What a connection proved, kept to check it again when the users change."""

    principal: Principal | None
    digest: bytes | None
    certificate: dict[str, Any] | None
    scope: trio.CancelScope
    link: Link | None = None
    #: why the leader ended it: the code and message of the Error it is closed with
    ended: tuple[str, str] | None = None

    def expire_at(self, expires_at: float | None) -> None:
        """End the connection when its proof expires (Unix time; None: never)."""
        self.scope.deadline = (
            math.inf
            if expires_at is None
            else trio.current_time() + max(0.0, expires_at - time.time())
        )

    def end(self, code: str, message: str) -> None:
        """Close the connection with Error ``code`` (from its handler's task)."""
        self.ended = (code, message)
        self.scope.cancel()


@attrs.frozen
class _AdminFilter:
    """What an admin's subscriptions may receive: the system's subjects, and what its
    subscribe permissions allow."""

    allowed: Permissions

    def allows(self, subject: str) -> bool:
        return subject[0] == "$" or self.allowed.allows(subject)


@attrs.frozen(kw_only=True)
class LeaderConfig:
    """Settings of a leader: its listeners and connections, and (:attr:`broker`) how it
    delivers jobs. Every default of the leader is here or in :class:`BrokerConfig`.

    Args:
      name: the node's name (sent in Welcome, shown in stats).
      listen: URLs to listen on (``tcp://``, ``tls://``, ``ws://``, ``wss://``); port 0
        picks a free port (see :attr:`Leader.urls` once running).
      ssl_context: server context for ``tls://`` and ``wss://`` listeners.
      heartbeat: seconds between heartbeats on idle connections (None: none).
      max_connections: per listener; more are answered ``busy`` and closed.
      max_outgoing: bytes queued for one peer at most before it is disconnected as a slow
        consumer (default four frames of 16 MiB, so that a worker can be sent several
        large jobs at once).
      write_timeout: seconds a write to a peer may wait with no byte taken before that peer
        is disconnected as a slow consumer (default 10 s; a peer that reads, however
        slowly, is not), so that peers that never read cannot each hold ``max_outgoing``
        bytes for as long as they like; ``math.inf``: never.
      max_outgoing_total: bytes queued for all peers of one listener, in all (default
        1 GiB); a peer that would go over it makes room by disconnecting the peers that
        hold the most as slow consumers (so that many peers that stop reading at once
        cannot each hold ``max_outgoing``); ``math.inf``: no bound.
      max_connections_per_address: connections from one peer address at once, per
        listener; more are answered ``busy`` (so that one host cannot lock others out).
      max_handshakes: connections in their TLS/WebSocket handshake or not yet past their
        Hello at once, per listener; more are answered ``busy``.
      max_handshakes_per_address: the same, from one peer address (so that one host's
        silent connections cannot take every handshake slot).
      token: when set, every Hello must carry it (one identity, ``token``, that may do
        everything: ``AuthConfig.shared_token``); give ``auth`` for more.
      auth: the identities the leader accepts and what each may do (see
        :class:`AuthConfig`); every connection must then prove one (``auth_failed``), and
        every action is checked (``not_permitted``). None: anyone who reaches a listener
        may do anything, so a leader without it listens on loopback addresses only
        (unless ``insecure``).
      insecure: allow listening beyond loopback without ``auth`` (anyone who can reach
        the port can then take and submit jobs).
      allowed_origins: the ``Origin`` values (``"https://app.example.com"``) with which a
        browser page may open a WebSocket to the leader; ``"*"``: any. A WebSocket
        upgrade from a page of any other origin is refused (403), against cross-site
        pages and DNS rebinding; clients that send no Origin (not browsers) are let in.
      handshake_timeout: seconds a new connection has for its TLS and WebSocket
        handshakes and its Hello.
      http: where to serve HTTP (``"127.0.0.1:7780"``; ``":7780"`` is loopback; port 0
        picks a free one, see :attr:`Leader.http_url`): ``/healthz``, ``/readyz`` and the
        JavaScript client (``actors/leader/_http.py``), the API and the dashboard's page
        at ``/``. Beyond loopback, as ``listen``: only with ``auth`` or ``insecure``. Its
        own origin is then allowed too (the example pages it serves may open WebSockets to
        the ``ws://`` listeners). The dashboard's page gets its snapshots over a WebSocket on
        the HTTP port itself (``/ws``): a *feed* connection, which may only subscribe to
        ``$sys.dashboard`` (see :meth:`Leader.serve_feed`); no listener is added for it.
        None: no HTTP.
      http_read_only: the HTTP server changes nothing: every request but GET and HEAD is
        answered 403 ``{"error": "read_only"}`` (the API's retry, purge, cancel and scale
        with them), whoever asks; statistics, workers, jobs and dead letters stay readable
        (to those allowed to read them).
      max_patterns: subject patterns one worker may serve; a Hello with more is refused.
      broker: the delivery settings (ack timeout, attempts, backoff, queue limits, route
        grace): see :class:`BrokerConfig`.
      data_dir: where the journal of accepted jobs is kept (``journal.sqlite3`` in it;
        created if missing; one leader at a time). None: the per-user default,
        ``$ACTORS_DATA_DIR/<name>``, else ``$XDG_DATA_HOME/trio-actors/<name>``, else
        ``~/.local/share/trio-actors/<name>`` (see :attr:`Leader.journal_path`).
      memory: keep jobs in memory only, with no journal: a leader that stops loses the
        jobs it accepted (for tests and benchmarks).
      sync: ``"full"`` (default): a job is acknowledged once its commit is on disk, and
        survives power loss; ``"normal"``: it survives a crash of the leader's process
        (kill -9), but the last commits may be lost if the machine loses power.
      max_journal_bytes: the journal's size (its live pages) past which submits are
        answered ``busy`` with the reason (finished jobs are pruned after the dedup window).
      dead_letter_retention: seconds a dead letter is kept in the journal unless purged
        or retried.
      store: a shared job store on NATS JetStream (a
        :class:`~actors.leader._jetstream.StoreConfig`, ``parse_store("nats://...", ...)``,
        or just its URL, ``"nats://h1:4222,nats://h2:4222"``):
        the leader keeps no journal of its own; any number of leaders with the same store
        serve the same jobs (``docs/scale-out.md``). None: the journal (or ``memory``).
    """

    name: str = "leader"
    listen: tuple[str, ...] = attrs.field(default=(DEFAULT_LISTEN,), converter=tuple)
    ssl_context: ssl.SSLContext | None = None
    heartbeat: float | None = 5.0
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    max_outgoing: int = 4 * DEFAULT_MAX_FRAME_SIZE
    write_timeout: float = DEFAULT_WRITE_TIMEOUT
    max_outgoing_total: float = DEFAULT_MAX_OUTGOING_TOTAL
    max_connections_per_address: int = DEFAULT_MAX_CONNECTIONS_PER_ADDRESS
    max_handshakes: int = DEFAULT_MAX_HANDSHAKES
    max_handshakes_per_address: int = DEFAULT_MAX_HANDSHAKES_PER_ADDRESS
    token: str | None = attrs.field(default=None, repr=False)
    auth: AuthConfig | None = None
    insecure: bool = False
    allowed_origins: tuple[str, ...] = attrs.field(default=(), converter=tuple)
    handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT
    http: str | None = None
    http_read_only: bool = False
    max_patterns: int = MAX_PATTERNS
    broker: BrokerConfig = attrs.field(factory=BrokerConfig)
    data_dir: str | None = attrs.field(default=None, converter=attrs.converters.optional(str))
    memory: bool = False
    sync: str = attrs.field(default="full")
    max_journal_bytes: int = 4 * 2**30
    dead_letter_retention: float = 7 * 86400.0
    store: StoreConfig | None = attrs.field(default=None, converter=lambda v: _store_of(v))

    @sync.validator
    def _check_sync(self, attribute: attrs.Attribute[str], value: str) -> None:
        if value not in SYNC_MODES:
            raise ValueError(f"sync must be one of {', '.join(SYNC_MODES)}, got {value!r}")

    @classmethod
    def of(cls, **settings: Any) -> LeaderConfig:
        """The configuration with ``settings`` (fields of this class or of
        :class:`BrokerConfig`, by name, flat) and the defaults for the rest.
        ``retry_backoff=None`` means the default backoff.

        Raises:
          TypeError: a name that is no setting.
        """
        leader: dict[str, Any] = {}
        broker: dict[str, Any] = {}
        for key, value in settings.items():
            if key in _LEADER_FIELDS:
                leader[key] = value
            elif key in _BROKER_FIELDS:
                if key != "retry_backoff" or value is not None:
                    broker[key] = value
            else:
                raise TypeError(
                    f"{key!r} is not a setting of the leader (see LeaderConfig, BrokerConfig)"
                )
        return cls(**leader, broker=BrokerConfig(**broker))


def _store_of(value: Any) -> StoreConfig | None:
    """A leader's ``store``: a :class:`StoreConfig`, or its URL (``"nats://h:4222,..."``,
    read by :func:`~actors.leader._jetstream.parse_store` with the defaults)."""
    if value is None or isinstance(value, StoreConfig):
        return value
    if isinstance(value, str):
        return parse_store(value)
    raise TypeError(
        f"a leader's store is a StoreConfig or a nats:// URL, not {type(value).__name__}"
    )


_LEADER_FIELDS = frozenset(attrs.fields_dict(LeaderConfig)) - {"broker"}
_BROKER_FIELDS = frozenset(attrs.fields_dict(BrokerConfig))


class Leader:
    """The broker and scheduler: accepts clients and workers, routes and tracks jobs.

    Args:
      config: the leader's settings (defaults: ``LeaderConfig()``).
      rng: the random source for backoff jitter.
      settings: instead of ``config``, any of its settings by name, flat: those of
        :class:`LeaderConfig` (``listen``, ``heartbeat``, ...) and of :class:`BrokerConfig`
        (``ack_timeout``, ``retry_backoff``, ``max_queued``, ...); see
        :meth:`LeaderConfig.of`. ``Leader(listen=[...], ack_timeout=5)`` is
        ``Leader(LeaderConfig.of(listen=[...], ack_timeout=5))``.

    Raises:
      TypeError: both ``config`` and settings, or a name that is no setting.
      ValueError: a bad name.

    Resource handling: everything runs inside :meth:`run`; cancelling it closes every
    listener and connection. Jobs held by a closed connection's worker are redelivered.
    """

    def __init__(
        self,
        config: LeaderConfig | None = None,
        *,
        rng: random.Random | None = None,
        **settings: Any,
    ) -> None:
        if settings:
            if config is not None:
                raise TypeError("give the leader a config or settings by name, not both")
            config = LeaderConfig.of(**settings)
        elif config is None:
            config = LeaderConfig()
        elif not isinstance(config, LeaderConfig):
            hint = ""
            if hasattr(config, "leader_config"):  # the cluster file's [leader] table
                hint = " (a cluster's LeaderTable gives one: table.leader_config())"
            raise TypeError(
                f"a Leader takes an actors.LeaderConfig, got {type(config).__name__}{hint}"
            )
        name = config.name
        if not isinstance(name, str) or not 0 < len(name) <= MAX_NAME_LENGTH:
            raise ValueError(
                f"a leader's name must be a str of 1 to {MAX_NAME_LENGTH} characters, got {name!r:.80}"
            )
        self.config = config
        # (read on every connection: plain attributes, copied from the config)
        self.name = name
        self.listen = list(config.listen)
        self.ssl_context = config.ssl_context
        self.heartbeat = config.heartbeat
        self.max_connections = config.max_connections
        self.max_outgoing = config.max_outgoing
        self.write_timeout = config.write_timeout
        self.max_outgoing_total = config.max_outgoing_total
        self.max_connections_per_address = config.max_connections_per_address
        self.max_handshakes = config.max_handshakes
        self.max_handshakes_per_address = config.max_handshakes_per_address
        self.max_patterns = config.max_patterns
        auth = config.auth
        if config.token is not None:
            if auth is not None:
                raise TypeError("give the leader a token or an auth config, not both")
            auth = AuthConfig.shared_token(config.token)
        #: Who may connect, and what each may do (None: anyone, anything).
        self.authenticator: Authenticator | None = None if auth is None else Authenticator(auth)
        if auth is None and not config.insecure:
            for url in self.listen:
                host = parse_url(url).host
                if not is_loopback(host):
                    raise ValueError(
                        f"refusing to listen on {url} without authentication: anyone who can"
                        " reach it could take and submit jobs. Configure users ([auth] in"
                        " cluster.toml, LeaderConfig(auth=...)), listen on 127.0.0.1, or say"
                        " --insecure (insecure=True) to serve everyone who can reach it"
                    )
        #: Where HTTP is served (host, port), and its URL once bound (None: no HTTP).
        self.http_address: tuple[str, int] | None = None
        self.http_url: str | None = None
        if config.http is not None:
            from ._http import parse_http_address  # (the HTTP side loads only when asked)

            self.http_address = parse_http_address(config.http)
            if auth is None and not config.insecure and not is_loopback(self.http_address[0]):
                raise ValueError(
                    f"refusing to serve HTTP on {config.http} without authentication: configure"
                    " users, serve it on 127.0.0.1, or say --insecure (insecure=True)"
                )
        origins = {origin_key(o) for o in config.allowed_origins}
        self._any_origin = "*" in origins
        self._origins = frozenset(origins)
        self._credentials: dict[Connection, _Credentials] = {}
        self._auth_log_at = float("-inf")
        self._auth_unlogged = 0
        #: The journal of accepted jobs (None with ``memory``).
        self.journal: SqliteJournal | None = None
        if not config.memory and config.store is None:
            broker_config = config.broker
            self.journal = SqliteJournal(
                config.data_dir or default_data_dir(name),
                sync=config.sync,
                max_bytes=config.max_journal_bytes,
                dedup_window=broker_config.dedup_window,
                dedup_capacity=broker_config.dedup_capacity,
                dead_letter_retention=config.dead_letter_retention,
                max_dead_letters=broker_config.max_dead_letters,
            )
        self.broker = Broker(config.broker, rng=rng, journal=self.journal)
        self.broker.keeps_group = self.declared
        #: The shared job store's side of this leader (None without ``store``).
        self.shared: SharedJobs | None = None
        if config.store is not None:
            from ._shared import SharedJobs  # (nats-py loads only for a shared store)

            self.shared = SharedJobs(self.broker, config.store, name, batch=self.batch)
        self._journal_wake = trio.Event()
        self._db_lock = trio.Lock()
        # A batch whose write failed, with the answers it holds, to write again first.
        self._unwritten: tuple[Batch, Any] | None = None
        self._admin_queries = 0
        self._checkpointing = False
        self._nursery: trio.Nursery | None = None
        #: What the journal held when the leader started (counts), once it has.
        self.recovered: dict[str, Any] | None = None
        self.urls: list[str] = []
        self._timer_scope: trio.CancelScope | None = None
        self._session_ids = itertools.count(1)
        # While a batch is handled, messages are queued on their connections (``dirty``)
        # and each connection is flushed once at the end: no writer task has to run.
        self._batching = False
        self._dirty: dict[Connection, None] = {}
        self._instance = uuid.uuid4().hex[:8]
        self._doomed: dict[Connection, str] = {}
        # The shared statistics (stats_snapshot) and when they were built.
        self._stats_cache: tuple[float, dict[str, Any] | None] = (float("-inf"), None)
        #: Builds of :meth:`stats_snapshot` so far (at most one per STATS_INTERVAL).
        self.stats_builds = 0
        # What readiness() found of the groups, and when (None: to be found again).
        self._readiness: tuple[float, int, dict[str, str], int, dict[str, str], int] | None = None
        self._group_states: dict[str, str] = {}
        self._group_instances: dict[str, int] = {}
        self.connections = 0
        #: Changes the instance count of a worker group this leader's process runs
        #: (``await scaler(group, instances)`` returns the count it keeps now; see
        #: :data:`actors.leader._admin.Scaler`): a cluster sets it. None: the leader does not
        #: manage its groups (``PUT /api/groups/{name}`` is answered 409 ``not_managed``).
        self.scaler: Scaler | None = None
        #: The workers that left lately (offline in :meth:`worker_list`).
        self.departed_workers = DepartedWorkers()
        #: Sends the dashboard's snapshots on ``$sys.dashboard`` (see ``_dashboard.py``).
        self.dashboard = DashboardFeed(
            self,
            keep_history=self.http_address is not None,
            read_only=config.http_read_only,
            after_send=self._close_doomed,
        )

    async def run(
        self, *, task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Serve every listen URL until cancelled; ``task_status.started(bound_urls)``.

        With a journal, it is opened and read back first (what it holds queues again).

        Raises:
          JournalError: the journal cannot be used (its message names the file and what
            to do: another leader holds the data directory, it is read-only, corrupt...).
        """
        journal = self.journal
        self.broker.clock_offset = time.time() - trio.current_time()
        try:
            if journal is not None:
                await self._recover(journal)
            try:
                async with trio.open_nursery() as nursery:
                    self._nursery = nursery
                    await self._serve(nursery, task_status)
            except BaseExceptionGroup as group:
                # (the shared store could not be used at start: said as itself)
                refused = group.subgroup(StoreError)
                if refused is not None and group.split(StoreError)[1] is None:
                    while isinstance(refused, BaseExceptionGroup):
                        refused = refused.exceptions[0]
                    raise refused from None
                raise
        finally:
            if journal is not None:
                with trio.CancelScope(shield=True):
                    async with self._db_lock:
                        journal.close()

    async def _blocking(self, fn: Any, *args: Any) -> Any:
        """``fn(*args)``, which blocks on the journal's file, in a worker thread; or, under
        a virtual clock (:class:`trio.testing.MockClock`, as tests use), on the event loop:
        trio's clock would otherwise jump ahead while SQLite works, as if it took hours."""
        testing = sys.modules.get("trio.testing")  # (not imported: no MockClock runs)
        if testing is not None and isinstance(trio.lowlevel.current_clock(), testing.MockClock):
            return fn(*args)
        return await trio.to_thread.run_sync(fn, *args)

    @property
    def journal_path(self) -> str | None:
        """The journal's file (None for a leader with ``memory``)."""
        return None if self.journal is None else str(self.journal.path)

    async def _recover(self, journal: SqliteJournal) -> None:
        offset = journal.clock_offset = self.broker.clock_offset
        started = time.perf_counter()
        recovered = await self._blocking(journal.open)
        self.broker.restore(recovered, trio.current_time(), offset)
        recovered.seconds = time.perf_counter() - started  # (reading and queueing again)
        self.recovered = {
            "jobs": len(recovered.jobs),
            "results": len(recovered.results),
            "dead_letters": len(recovered.dead_letters),
            "seconds": round(recovered.seconds, 3),
        }
        if recovered.jobs or recovered.results:
            log.info(
                "leader %s: journal %s: %d unfinished jobs queued again, %d results kept (%.3f s)",
                self.name,
                journal.path,
                len(recovered.jobs),
                len(recovered.results),
                recovered.seconds,
            )

    async def _serve(self, nursery: trio.Nursery, task_status: trio.TaskStatus[list[str]]) -> None:
        if self.journal is not None:
            await nursery.start(self._journal_loop, self.journal)
        if self.shared is not None:
            await nursery.start(self.shared.run)
        await nursery.start(self._timer_loop)
        urls = []
        for url in self.listen:
            bound = await nursery.start(
                partial(
                    serve,
                    url,
                    self._handle_connection,
                    ssl_context=self.ssl_context if parse_url(url).secure else None,
                    heartbeat=self.heartbeat,
                    max_connections=self.max_connections,
                    max_outgoing=self.max_outgoing,
                    write_timeout=self.write_timeout,
                    max_outgoing_total=self.max_outgoing_total,
                    max_connections_per_address=self.max_connections_per_address,
                    max_handshakes=self.max_handshakes,
                    max_handshakes_per_address=self.max_handshakes_per_address,
                    handshake_timeout=self.config.handshake_timeout,
                    allowed_origins=self.origin_allowed,
                    decode_payloads=False,  # forwarded as they came (protocol._payload)
                )
            )
            urls.append(bound)
        self.urls = urls
        await nursery.start(self.dashboard.run)
        if self.http_address is not None:
            from ._api import add_api_routes
            from ._http import HttpApp, serve_http

            host, port = self.http_address
            app = HttpApp(self, host=host)
            add_api_routes(app)
            self.http_url = await nursery.start(serve_http, app, host, port)
            own = {self.http_url}  # (its pages may open WebSockets to the leader)
            if is_loopback(host):
                own.add(f"http://localhost:{self.http_url.rpartition(':')[2]}")
            self._origins = self._origins | {origin_key(o) for o in own}
        task_status.started(urls)

    def set_group_state(self, group: str, state: str | None) -> None:
        """Say what a worker group the leader cannot see is doing (``starting``,
        ``failed: ...``), for :meth:`stats` and :meth:`readiness`; None forgets it. A
        cluster calls this for its groups, so that ``python -m actors status`` shows a
        group that never connected."""
        if state is None:
            self._group_states.pop(group, None)
            self._undeclared(group)
        elif group in self._group_states or len(self._group_states) < MAX_GROUP_FACTS:
            self._group_states[group] = state
        self._readiness = None  # (answered anew)

    def declared(self, group: str) -> bool:
        """Whether a cluster declared ``group`` (named it with :meth:`set_group_state` or
        :meth:`set_group_instances`): :meth:`readiness` waits for those groups only, and
        their statistics are kept while they have no worker. A group the leader only saw
        (ad-hoc workers) counts for neither, and is forgotten once its workers have been
        gone for a while (see :meth:`Broker.group_idle
        <actors.leader._broker.Broker.group_idle>`)."""
        return group in self._group_instances or group in self._group_states

    def _undeclared(self, group: str) -> None:
        # (a group no longer declared, with no worker: forgotten in time like any other)
        if not self.declared(group):
            try:
                now = trio.current_time()
            except RuntimeError:  # (outside trio: from the clock's start)
                now = 0.0
            self.broker.group_idle(group, now)

    def set_group_instances(self, group: str, instances: int | None) -> None:
        """Say how many instances of a worker group its cluster wants running: at start,
        and whenever it scales the group (None forgets it). :meth:`readiness` then waits
        for that many of the group's workers online (none for 0), not for one; the
        group's statistics show it as ``instances``.

        Raises:
          ValueError: not an int from 0 up, nor None.
        """
        if instances is None:
            self._group_instances.pop(group, None)
            self._undeclared(group)
        elif type(instances) is not int or instances < 0:
            raise ValueError(f"instances must be an int from 0 up, got {instances!r:.40}")
        elif group in self._group_instances or len(self._group_instances) < MAX_GROUP_FACTS:
            self._group_instances[group] = instances
        self._readiness = None

    def stats(self) -> dict[str, Any]:
        """The broker's statistics plus connection counts, built now: O(subjects +
        workers). Readers that ask often share :meth:`stats_snapshot` instead."""
        try:
            now = trio.current_time()
        except RuntimeError:  # (outside trio: no clock to measure silence by)
            now = -math.inf
        else:
            self.broker.forget_idle_groups(now)
        stats = self.broker.stats()
        groups = stats["groups"]
        for name, state in self._group_states.items():
            group = groups.get(name)
            if group is None:
                group = groups[name] = _no_workers_group()
            group["state"] = state
        for name, instances in self._group_instances.items():
            group = groups.get(name)
            if group is None:
                group = groups[name] = _no_workers_group()
            group["instances"] = instances
        stats["node"] = self.name
        stats["connections"] = self.connections
        journal = self.journal
        stats["journal"] = (
            None
            if journal is None
            else {
                "path": str(journal.path),
                "sync": journal.sync,
                "bytes": journal.size,
                "max_bytes": journal.max_bytes,
                "commits": journal.commits,
                "rows_written": journal.rows_written,
                "refusal": journal.refusal,
                "recovered": self.recovered,
            }
        )
        if self.shared is not None:
            stats["store"] = self.shared.stats()
        stats["listen"] = list(self.urls)
        states = count_worker_states(self.broker.workers, now, self.heartbeat)
        for name, group in groups.items():
            group["workers_stale"] = states.get(name, {}).get("stale", 0)
        stats["workers_online"] = sum(s["online"] for s in states.values())
        stats["workers_stale"] = sum(s["stale"] for s in states.values())
        return stats

    def stats_snapshot(self, now: float | None = None) -> dict[str, Any]:
        """The statistics that every reader shares (the protocol's stats Query,
        ``/api/stats``, ``/metrics``, the dashboard's feed), built at most once per
        :data:`STATS_INTERVAL` for all of them (``now``: trio's clock; by default the
        current time).

        It is :meth:`stats` with the :data:`MAX_STATS_SUBJECTS` busiest subjects, the
        busiest first (jobs waiting and in flight, then submitted; ``subjects_omitted``
        counts the others), and ``subject_totals``: submitted, done, failed and dead
        summed over every subject. The same dict is handed to every reader until the
        next build (:attr:`stats_builds` counts the builds): read it, never change it
        (copy what you change).
        """
        if now is None:
            now = trio.current_time()
        built, stats = self._stats_cache
        if stats is not None and 0 <= now - built < STATS_INTERVAL:
            return stats
        stats = self.stats()
        subjects: dict[str, dict[str, Any]] = stats["subjects"]
        # (one pass for the sums and the order: keys as tuples, compared in C)
        submitted = done = failed = dead = 0
        keyed: list[tuple[int, int, str]] = []
        add = keyed.append
        for name, s in subjects.items():
            submitted += s["submitted"]
            done += s["done"]
            failed += s["failed"]
            dead += s["dead"]
            add((s["queued"] + s["in_flight"], s["submitted"], name))
        keyed.sort(reverse=True)
        del keyed[MAX_STATS_SUBJECTS:]
        stats["subject_totals"] = {
            "submitted": submitted, "done": done, "failed": failed, "dead": dead,
        }  # fmt: skip
        stats["subjects"] = {name: subjects[name] for _, _, name in keyed}
        stats["subjects_omitted"] = len(subjects) - len(keyed)
        self._stats_cache = (now, stats)
        self.stats_builds += 1
        return stats

    def readiness(self, now: float | None = None) -> tuple[bool, dict[str, Any]]:
        """Whether the leader is ready, and the body of ``/readyz`` saying so, in
        O(groups + workers) at most once per :data:`READINESS_INTERVAL` (``now``: trio's
        clock; a worker joining or leaving, or a cluster saying what a group does, counts
        again at once), without building the statistics.

        Ready: the journal (if any) takes writes (asked each time), and every group a
        cluster declared (named with :meth:`set_group_state` or
        :meth:`set_group_instances`; ``groups`` counts them) has its instances online: as
        many online workers (connected and heard from: not stale) as
        :meth:`set_group_instances` said, or, for a group without that count, at least
        one; a group whose state is ``failed: ...`` never is. ``groups_not_ready`` says
        why of each declared group that is not (its state, then how many of how many
        instances are online, and how many are stale), at most
        :data:`MAX_NOT_READY_LISTED` of them (``groups_not_ready_total``: how many). A
        leader with no declared group is ready when its journal takes writes.

        The groups the leader only saw (workers that joined with a group no cluster
        declared, such as ``python -m actors.worker`` run by hand) never make it not
        ready: ``groups_undeclared`` says how each is doing (``2 online``, ``no worker
        online (1 stale)``, ``no worker connected``), at most
        :data:`MAX_NOT_READY_LISTED` of them (``groups_undeclared_total``: how many).
        """
        if now is None:
            now = trio.current_time()
        cached = self._readiness
        if cached is None or not 0 <= now - cached[0] < READINESS_INTERVAL:
            cached = self._readiness = (now, *self._groups_not_ready(now))
        _, groups, not_ready, not_ready_total, undeclared, undeclared_total = cached
        journal = self.journal
        refusal = None if journal is None else journal.refusal
        shared = self.shared
        store_up = shared is None or shared.store.connected
        ready = not not_ready_total and refusal is None and store_up
        return ready, {
            "status": "ready" if ready else "not ready",
            "node": self.name,
            "groups": groups,
            "groups_not_ready": not_ready,
            "groups_not_ready_total": not_ready_total,
            "groups_undeclared": undeclared,
            "groups_undeclared_total": undeclared_total,
            "journal": (
                None if journal is None else {"writable": refusal is None, "problem": refusal}
            ),
            "store": (
                None
                if shared is None
                else {"connected": store_up, "servers": shared.config.shown_servers}
            ),
        }

    def _groups_not_ready(self, now: float) -> tuple[int, dict[str, str], int, dict[str, str], int]:
        """The groups declared, those of them not ready (the first
        :data:`MAX_NOT_READY_LISTED`, with why) and how many those are; the groups only
        seen, how they are doing (the first :data:`MAX_NOT_READY_LISTED`), and how many
        those are (see :meth:`readiness`)."""
        self.broker.forget_idle_groups(now)
        counts = count_worker_states(self.broker.workers, now, self.heartbeat)
        wanted = self._group_instances
        states = self._group_states
        names = dict.fromkeys(states)
        names.update(dict.fromkeys(wanted))
        undeclared: dict[str, str] = {}
        undeclared_total = 0
        for name in self.broker.group_stats:
            if name in names:
                continue
            undeclared_total += 1
            if len(undeclared) < MAX_NOT_READY_LISTED:
                count = counts.get(name)
                online, stale = (0, 0) if count is None else (count["online"], count["stale"])
                if online:
                    undeclared[name] = f"{online} online" + (f" ({stale} stale)" if stale else "")
                elif stale:
                    undeclared[name] = f"no worker online ({stale} stale)"
                else:
                    undeclared[name] = "no worker connected"
        not_ready: dict[str, str] = {}
        total = 0
        for name in names:
            count = counts.get(name)
            online, stale = (0, 0) if count is None else (count["online"], count["stale"])
            state = states.get(name)
            instances = wanted.get(name)
            if state is not None and state.startswith("failed"):
                problem: str | None = state
            elif instances is not None:
                problem = None
                if online < instances:
                    problem = f"{online} of {instances} instances online"
                    if stale:
                        problem += f" ({stale} stale)"
                    if state is not None:
                        problem = f"{state}: {problem}"
            elif online:
                problem = None
            elif state is not None:
                problem = f"{state} ({stale} stale)" if stale else state
            else:
                problem = f"no worker online ({stale} stale)" if stale else "no worker connected"
            if problem is not None:
                total += 1
                if len(not_ready) < MAX_NOT_READY_LISTED:
                    not_ready[name] = problem
        return len(names), not_ready, total, undeclared, undeclared_total

    def worker_list(
        self,
        *,
        offset: int = 0,
        limit: int = 100,
        group: str | None = None,
        state: str | None = None,
        show_hosts: bool = True,
    ) -> dict[str, Any]:
        """A page of the workers, connected (online or stale) and lately departed
        (offline): see :func:`actors.leader._workers.worker_list` (``show_hosts``: with
        where they run, for admins)."""
        return worker_list(
            self, offset=offset, limit=limit, group=group, state=state, show_hosts=show_hosts
        )

    # ------------------------------------------------------------------ timer

    async def _timer_loop(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        task_status.started()
        while True:
            self.broker.take_soonest()  # next_deadline() covers those
            with trio.CancelScope(deadline=self.broker.next_deadline()) as scope:
                self._timer_scope = scope
                await trio.sleep_forever()
            self._batching = True
            try:
                self.broker.handle_timer(trio.current_time())
            except Exception:
                # A bug, not a peer's doing: say so loudly, and keep the leader serving
                # (after a pause, so that a failure that repeats cannot spin).
                log.exception("leader %s: the broker's timer failed", self.name)
                failed = True
            else:
                failed = False
            finally:
                self._flush()
            self._close_doomed()
            if failed:
                await trio.sleep(1.0)

    # ------------------------------------------------------------------ journal

    async def _journal_loop(
        self,
        journal: SqliteJournal,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Write what the broker journalled, a batch per transaction (group commit: what
        piles up while one commit runs goes in the next), in a worker thread when it waits
        for the disk (``sync="full"``), else on the loop; then release
        the answers and worker slots that waited for it. Between commits, prune finished
        jobs in small steps. A failed write is tried again (every 0.1 s, then less often,
        up to 5 s) until it succeeds; meanwhile submits are answered ``busy`` with the
        reason, and nothing it holds is acknowledged."""
        task_status.started()
        broker = self.broker
        prune_at = 0.0
        more_to_prune = False
        failures = 0
        while True:
            if not (journal.dirty or broker.holding or self._unwritten or more_to_prune):
                with trio.move_on_after(PRUNE_INTERVAL):
                    await self._journal_wake.wait()
                self._journal_wake = trio.Event()
            async with self._db_lock:
                written = await self._commit_once(journal)
            if not written:
                failures += 1
                await trio.sleep(min(5.0, 0.1 * 2 ** min(failures - 1, 6)))
                continue
            failures = 0
            now = trio.current_time()
            if more_to_prune or now >= prune_at:
                prune_at = now + PRUNE_INTERVAL
                async with self._db_lock:
                    try:
                        pruned = await self._blocking(journal.prune, time.time())
                    except JournalError as exc:
                        log.warning("leader %s: pruning the journal failed: %s", self.name, exc)
                        pruned = 0
                more_to_prune = pruned >= PRUNE_BATCH
                # (those kept in memory go with them: statistics count them)
                broker.retries.forget_dead_letters_before(
                    time.time() - journal.dead_letter_retention
                )

    async def _commit_once(self, journal: SqliteJournal) -> bool:
        """Write the pending batch (a failed one first) and release what waited for it;
        False if the write failed (it is kept, to be written again)."""
        if self._unwritten is not None:
            batch, held = self._unwritten
            self._unwritten = None
        else:
            batch, held = journal.take(), self.broker.take_held()
        if len(batch):
            try:
                if journal.sync == "full":  # (the commit waits for the disk: in a thread)
                    await self._blocking(journal.write, batch)
                else:  # (no fsync: on the loop, cheaper than two trips to a thread)
                    journal.write(batch)
            except JournalError as exc:
                if journal.failure != str(exc):
                    log.error("leader %s: %s (submits are refused until it works)", self.name, exc)
                journal.failed(str(exc))
                self._unwritten = (batch, held)
                return False
            if journal.failure is not None:
                log.warning("leader %s: journal %s written again", self.name, journal.path)
                journal.failed(None)
            if journal.wal_bytes > CHECKPOINT_BYTES and not self._checkpointing:
                self._checkpointing = True
                assert self._nursery is not None
                self._nursery.start_soon(self._checkpoint, journal)
        self._batching = True
        try:
            self.broker.release(held, trio.current_time())
        finally:
            self._flush()
        self._end_batch()
        return True

    async def _checkpoint(self, journal: SqliteJournal) -> None:
        """Move the write-ahead log into the file, in a thread, while commits go on."""
        try:
            await self._blocking(journal.checkpoint)
        except JournalError as exc:
            log.warning("leader %s: checkpoint failed: %s", self.name, exc)
        finally:
            self._checkpointing = False

    def _rearm(self) -> None:
        # Only ever brought forward: a timer that fires early finds nothing due and re-arms
        # itself at the true next deadline. (Moving a scope's deadline is a heap operation
        # in trio; deadlines move later after nearly every batch of results.)
        scope = self._timer_scope
        if scope is not None:
            deadline = self.broker.take_soonest()  # O(1), not O(workers), per batch
            if deadline < scope.deadline:
                scope.deadline = deadline

    def _query(self, client: ClientLink, msg: Query, now: float) -> None:
        """Answer a client's Query: a job's result (the broker's), or the statistics.

        Statistics cost O(subjects) to build and encode: they are the shared
        :meth:`stats_snapshot` (built at most once per :data:`STATS_INTERVAL` for every
        reader, listing the :data:`MAX_STATS_SUBJECTS` busiest subjects), and a connection
        is answered at most once per interval (``busy`` before)."""
        if msg.what == "result":
            job = self.broker.jobs.get(msg.job_id or "")
            if self.shared is not None and (job is None or job.leased):
                self.shared.query(client, msg, now)
            else:
                self.broker.query_result(client, msg, now)
            return
        if msg.what != "stats":
            self._dead_letter_query(client, msg, now)
            return

        def refuse(code: str, text: str, **extra: Any) -> None:
            client.send(Error(mid=client.next_mid(), cid=msg.mid, code=code, message=text, **extra))

        wait = client.stats_at + STATS_INTERVAL - now
        if wait > 0:
            refuse(ErrorCode.BUSY, "statistics asked for too often", retry_after=round(wait, 3))
            return
        client.stats_at = now
        stats = self.stats_snapshot(now)
        try:
            client.send(
                Result(mid=client.next_mid(), cid=msg.mid, job_id="stats", ok=True, payload=stats)
            )
        except MessageTooLarge as exc:
            refuse(ErrorCode.TOO_LARGE, f"the statistics do not fit your frame limit: {exc}")

    def _dead_letter_query(self, client: ClientLink, msg: Query, now: float) -> None:
        """Answer a Query about dead letters: from memory, or from the journal (in a task,
        at most :data:`MAX_ADMIN_QUERIES` at once: ``busy`` beyond). For admins only."""
        if not client.admin:  # (checked before too: this one fails closed for new kinds)
            client.refuse(msg, ErrorCode.NOT_PERMITTED, f"{msg.what}: for admins only")
            return
        if msg.what == "dead_letter" and msg.job_id is None:
            client.refuse(msg, ErrorCode.BAD_FIELD, "a dead_letter query names its job_id")
            return
        if self.journal is None:
            letters = list(self.broker.retries.dead_letters)
            if msg.job_id is not None:
                letters = [r for r in letters if r["job_id"] == msg.job_id]
            self._dead_letters_answer(client, msg, now, letters, len(letters))
            return
        if self._admin_queries >= MAX_ADMIN_QUERIES or self._nursery is None:
            client.refuse(
                msg, ErrorCode.BUSY, "too many dead-letter queries at once", retry_after=1.0
            )
            return
        self._admin_queries += 1
        self._nursery.start_soon(self._journal_dead_letter_query, self.journal, client, msg)

    async def _journal_dead_letter_query(
        self, journal: SqliteJournal, client: ClientLink, msg: Query
    ) -> None:
        what = msg.what
        job_id = msg.job_id

        def read(journal: SqliteJournal) -> tuple[list[dict[str, Any]], int]:
            if what == "dead_letters":
                return journal.list_dead_letters(MAX_LISTED), journal.count_dead_letters()
            if what == "purge_dead_letters" and job_id is None:
                return [], journal.purge_dead_letters()
            if what == "retry_dead_letter" and job_id is None:
                # (a page at a time: payloads may be large; the answer says how many are
                # left, and the client asks again)
                total = journal.count_dead_letters()
                return journal.get_dead_letters(None, RETRY_PAGE), total
            letters = journal.get_dead_letters(job_id, MAX_LISTED)
            return letters, len(letters)

        try:
            # (what is pending, dead letters among it, is in the file before it is read)
            letters, total = await read_journal(self, journal, read)
            self._batching = True
            try:
                self._dead_letters_answer(client, msg, trio.current_time(), letters, total)
            finally:
                self._flush()
            self._end_batch()
        except AdminError as exc:
            client.refuse(msg, ErrorCode.BUSY, exc.message, retry_after=1.0)
            self._flush()
        finally:
            self._admin_queries -= 1

    def _dead_letters_answer(
        self,
        client: ClientLink,
        msg: Query,
        now: float,
        letters: list[dict[str, Any]],
        total: int,
    ) -> None:
        """Answer a dead-letter Query with ``letters`` (all those it concerns, or for
        ``dead_letters`` the newest; ``total``: how many there are, or for a purge of all
        in a journal how many went)."""
        broker = self.broker
        what = msg.what

        def answer(payload: Any) -> None:
            broker._answer(
                send_to,
                client,
                Result(mid=client.next_mid(), cid=msg.mid, job_id=what, ok=True, payload=payload),
            )

        if what == "dead_letters":
            newest = sorted(letters, key=lambda r: r.get("dead_at") or 0.0, reverse=True)
            answer(
                {
                    "total": total,
                    "dead_letters": [dead_letter_summary(r) for r in newest[:MAX_LISTED]],
                }
            )
        elif what == "dead_letter":
            if not letters:
                client.refuse(msg, ErrorCode.NOT_FOUND, f"no dead letter {msg.job_id}")
                return
            answer(letters[0])
        elif what == "retry_dead_letter":
            if msg.job_id is not None and not letters:
                client.refuse(msg, ErrorCode.NOT_FOUND, f"no dead letter {msg.job_id}")
                return
            refused: list[str] = []
            retried = retry_dead_letters(broker, letters, now, refused)
            answer({"retried": retried, "refused": refused, "remaining": total - retried})
        else:  # purge_dead_letters
            if msg.job_id is None:
                count = broker.forget_dead_letters(None)
                answer({"purged": total if self.journal is not None else count})
            else:
                broker.forget_dead_letters({msg.job_id})
                answer({"purged": len(letters)})

    # ------------------------------------------------------------------ connections

    def _sender(self, conn: Connection) -> dict[str, Any]:
        """The ``send`` and ``send_item`` of a link on ``conn`` (keyword arguments).

        Each queues on the connection; during a batch the connection is flushed at its end
        (see :meth:`_flush`), otherwise at once.
        """
        doomed = self._doomed
        dirty = self._dirty

        def sending(queue: Any) -> Any:
            def send(message: Any) -> None:
                if doomed and conn in doomed:
                    return  # (too slow already: it is closed after this batch)
                try:
                    queue(message)
                except SendBufferFull as exc:
                    # A slow peer (its own buffer full, or the listener's budget spent):
                    # close it after this batch. What it missed is safe: a worker's jobs
                    # are redelivered, a client resubmits and gets the stored result.
                    doomed[conn] = str(exc) or f"outgoing buffer over {conn.max_outgoing} bytes"
                    return
                except ConnectionClosed:
                    return
                if self._batching:
                    dirty[conn] = None
                else:
                    conn.flush()

            return send

        return {"send": sending(conn.queue_nowait), "send_item": sending(conn.queue_item)}

    def _link_facts(self, conn: Connection, hello: Hello) -> dict[str, Any]:
        """What a link on ``conn`` records of its peer (keyword arguments): when it
        connected, its address, its Hello's ``meta`` (sanitized by the link) and when it
        was last heard from."""
        session = conn.session
        return {
            "connected_at": time.time(),
            "peer": peer_address(conn.peer),
            "meta": hello.meta,
            "last_heard": lambda: session.last_received,
        }

    def _flush(self) -> None:
        """Write out what the batch just handled queued, one flush per connection."""
        self._batching = False
        dirty = self._dirty
        if dirty:
            for conn in dirty:
                conn.flush()
            dirty.clear()
        journal = self.journal
        if journal is not None and (journal.dirty or self.broker.holding):
            self._journal_wake.set()

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """Handle what comes from elsewhere than a peer's connection (the shared store's
        messages) as a batch: what it sends is flushed once per connection at the end."""
        if self._batching:  # (inside a batch already: its end flushes)
            yield
            return
        self._batching = True
        try:
            yield
        finally:
            self._flush()
            self._end_batch()

    def _end_batch(self) -> None:
        self._rearm()
        if self._doomed:
            self._close_doomed()

    def _close_doomed(self) -> None:
        for conn, reason in list(self._doomed.items()):
            del self._doomed[conn]
            conn.close_soon(
                Error(
                    mid=conn.next_mid(),
                    code=ErrorCode.SLOW_CONSUMER,
                    message=f"slow consumer: {reason}",
                )
            )

    def origin_allowed(self, origin: str) -> bool:
        """Whether a browser page of ``origin`` may open a WebSocket to this leader (see
        :attr:`LeaderConfig.allowed_origins`)."""
        return self._any_origin or origin_key(origin) in self._origins

    def set_auth(self, auth: AuthConfig | None) -> None:
        """Change who may connect and what each may do, at once (a rotation of tokens, a
        user added or removed). Connections whose credentials no longer prove the same
        identity are closed with ``auth_failed``; the others take the new permissions and
        limits. None turns authentication off (only if the leader listens on loopback
        addresses, or is ``insecure``).

        Raises:
          ValueError: ``None`` for a leader that listens beyond loopback, not insecure.
        """
        if auth is None:
            hosts = [parse_url(url).host for url in self.listen]
            if self.http_address is not None:
                hosts.append(self.http_address[0])
            if not self.config.insecure and not all(is_loopback(host) for host in hosts):
                raise ValueError("a leader listening beyond loopback keeps its authentication")
            self.authenticator = None
        else:
            self.authenticator = Authenticator(auth)
        authenticator = self.authenticator
        if authenticator is None:
            return  # (connections keep the identities and permissions they had)
        for credentials in list(self._credentials.values()):
            old = credentials.principal
            proof = None
            if old is not None:
                proof = authenticator.still_valid(old, credentials.digest, credentials.certificate)
            if old is None or proof is None:
                credentials.end(
                    ErrorCode.AUTH_FAILED,
                    "credentials revoked: the leader's users changed"
                    if old is not None
                    else "the leader now requires authentication: connect again with credentials",
                )
                continue
            principal, expires_at = proof
            old.connections -= 1
            principal.connections += 1
            credentials.principal = principal
            credentials.expire_at(expires_at)
            link = credentials.link
            if link is None:
                continue
            self._authorize(link, principal)
            # What it holds already must still be allowed: else it goes, and finds out
            # what it may do now when it connects again.
            problem = None
            if isinstance(link, WorkerLink):
                problem = next(
                    (
                        f"{principal.name!r} may no longer serve {p}"
                        for p in link.patterns
                        if not principal.user.serve.covers(p)
                    ),
                    None,
                )
            elif isinstance(link, ClientLink):
                problem = next(
                    (
                        text
                        for sub in link.subscriptions.values()
                        if (text := self._subscription_problem(link, sub.pattern, sub.queue))
                    ),
                    None,
                )
            if problem is not None:
                credentials.end(ErrorCode.NOT_PERMITTED, f"permissions changed: {problem}")
        # (routes worked out with the old delivery filters)
        self.broker.pubsub.forget_routes()

    def _authorize(self, link: Link, principal: Principal | None) -> None:
        """Give ``link`` the identity, admin right and delivery filter of ``principal``."""
        link.principal = principal
        if principal is None:
            link.identity, link.admin = None, True
            return
        link.identity = principal.name
        link.admin = principal.user.admin
        if isinstance(link, ClientLink):
            # What a subscription may receive, filtered by its subscribe permissions (an
            # admin also receives the system's $ subjects, such as dead letters).
            subscribe = principal.user.subscribe
            if not link.admin:
                link.receive_filter = subscribe
            else:
                link.receive_filter = None if subscribe.everything else _AdminFilter(subscribe)

    def _log_refusal(self, principal: Principal | None, text: str, *args: Any) -> None:
        """Log a refused Hello or a denied action, at most once per
        :data:`DENIAL_LOG_INTERVAL` per identity (per leader for refused Hellos)."""
        now = trio.current_time()
        if principal is None:
            if now - self._auth_log_at < DENIAL_LOG_INTERVAL:
                self._auth_unlogged += 1
                return
            self._auth_log_at, more, self._auth_unlogged = now, self._auth_unlogged, 0
        else:
            if now - principal.denied_logged_at < DENIAL_LOG_INTERVAL:
                principal.denied_unlogged += 1
                return
            principal.denied_logged_at, more = now, principal.denied_unlogged
            principal.denied_unlogged = 0
        suffix = f" ({more} more since the last such line)" if more else ""
        log.warning("leader %s: %s%s", self.name, text % args, suffix)

    async def serve_feed(self, conn: Connection) -> None:
        """Serve a *feed* connection (the HTTP server's WebSocket, ``/ws``, hands it
        here): one that may only watch the dashboard.

        Its peer says Hello as a ``client`` or an ``observer`` (a ``worker`` is refused
        ``not_permitted``), with the same token as on any listener, and may then only
        Subscribe to, and Unsubscribe from, exactly ``$sys.dashboard``; anything else
        (Submit, Publish, Cancel, Query, another Subscribe) is answered ``not_permitted``
        saying so, and the connection stays. Whether the HTTP server is read-only does
        not matter: a feed changes nothing. So the HTTP port never does more than
        HTTP does.
        """
        await self._handle_connection(conn, feed=True)

    async def _handle_connection(self, conn: Connection, *, feed: bool = False) -> None:
        self.connections += 1
        credentials: _Credentials | None = None
        try:
            batch = await conn.receive_some()
            hello = batch[0]
            assert isinstance(hello, Hello)  # the connection's Session guarantees it
            accepted = self._accept(conn, hello, feed=feed)
            if accepted is None:
                return
            principal, expires_at = accepted
            scope = trio.CancelScope()
            credentials = self._credentials[conn] = _Credentials(
                principal,
                None if hello.token is None else token_digest(hello.token),
                conn.peer_certificate,
                scope,
            )
            if principal is not None:
                principal.connections += 1
            credentials.expire_at(expires_at)
            with scope:
                if hello.role == "worker":
                    await self._serve_worker(conn, hello, batch[1:], credentials)
                else:
                    await self._serve_client(conn, hello, batch[1:], credentials, feed=feed)
            if scope.cancelled_caught:
                code, why = credentials.ended or (
                    ErrorCode.AUTH_FAILED,
                    f"the credentials of {principal.name if principal else None!r} expired",
                )
                conn.close_soon(Error(mid=conn.next_mid(), code=code, message=why))
        except ConnectionClosed:
            pass
        finally:
            self.connections -= 1
            self._doomed.pop(conn, None)
            if credentials is not None:
                del self._credentials[conn]
                if credentials.principal is not None:
                    credentials.principal.connections -= 1

    def _accept(
        self, conn: Connection, hello: Hello, *, feed: bool = False
    ) -> tuple[Principal | None, float | None] | None:
        """Welcome ``hello``'s peer and say who it is (and when its proof expires); or
        refuse it (None). On a ``feed`` connection only clients and observers."""

        def refuse(code: str, message: str, **extra: Any) -> None:
            conn.close_soon(
                Error(mid=conn.next_mid(), cid=hello.mid, code=code, message=message, **extra)
            )

        try:
            version = negotiate_version(hello.versions)
        except UnsupportedVersion as exc:
            return refuse(exc.code, exc.message)
        if feed and hello.role not in FEED_ROLES:
            return refuse(
                ErrorCode.NOT_PERMITTED,
                f"{FEED_ONLY}: a {hello.role} connects to one of the leader's listen URLs",
            )
        principal: Principal | None = None
        expires_at: float | None = None
        authenticator = self.authenticator
        if authenticator is not None:
            try:
                principal, expires_at = authenticator.authenticate(
                    hello.token, conn.peer_certificate, time.time()
                )
            except AuthFailure as exc:
                self._log_refusal(None, "refused %s: %s", conn.peer, exc)
                return refuse(ErrorCode.AUTH_FAILED, f"authentication failed: {exc}")
            if principal.connections >= principal.max_connections:
                self._log_refusal(
                    principal,
                    "refused %s: %r is at its connection limit",
                    conn.peer,
                    principal.name,
                )
                return refuse(
                    ErrorCode.BUSY,
                    f"{principal.name!r} has {principal.connections} connections, its limit",
                    retry_after=1.0,
                )
        if hello.role == "worker":
            if len(hello.patterns) > self.max_patterns:
                return refuse(
                    ErrorCode.BAD_FIELD,
                    f"a worker may serve at most {self.max_patterns} patterns, not {len(hello.patterns)}",
                )
            for pattern in hello.patterns:
                if pattern.startswith("$"):
                    return refuse(
                        ErrorCode.NOT_PERMITTED,
                        f"{pattern} is reserved for the system: no worker may serve it",
                    )
                if principal is not None and not principal.user.serve.covers(pattern):
                    self._log_refusal(
                        principal,
                        "%r may not serve %s (from %s)",
                        principal.name,
                        pattern,
                        conn.peer,
                    )
                    return refuse(
                        ErrorCode.NOT_PERMITTED, f"{principal.name!r} may not serve {pattern}"
                    )
            # (no checkpoint from here to worker_joined: nobody can take a subject between)
            conflict = self.broker.policy_conflict(
                hello.patterns, hello.policy, hello.mode, hello.group or hello.name or conn.peer
            )
            if conflict is not None:
                return refuse(ErrorCode.CONFLICT, conflict)
        conn.send_nowait(
            Welcome(
                mid=conn.next_mid(),
                cid=hello.mid,
                version=version,
                node=self.name,
                session=f"{self._instance}-{next(self._session_ids)}",
                heartbeat=self.heartbeat,
            )
        )
        return principal, expires_at

    def _subscription_problem(
        self, link: ClientLink, pattern: str, queue: str | None
    ) -> str | None:
        """Why ``link``'s identity may not subscribe to ``pattern`` (in ``queue``), or None.
        (``"!"``: its permissions do not allow the pattern.)"""
        principal = link.principal
        if principal is None:
            return None
        if pattern == DASHBOARD_SUBJECT:
            return None  # (every identity may watch the dashboard: statistics are open to all)
        allowed: Permissions = principal.user.subscribe
        if link.admin and pattern[0] == "$":
            return None  # (an admin may watch the system's subjects: dead letters)
        if not allowed.may_subscribe(pattern):
            return "!"
        if (
            queue is not None
            and link.receive_filter is not None
            and (allowed.filters(pattern) or (not link.admin and pattern[0] in "*>"))
        ):
            # (a queue group shares its messages among connections: one that must not
            # receive some of them cannot be a member)
            return (
                f"{link.identity!r} may not join a queue group on {pattern}: some of what it"
                " matches is denied to it (subscribe to a narrower pattern)"
            )
        return None

    def _subscribe(self, link: ClientLink, msg: Subscribe, now: float) -> None:
        """Take a (permitted) Subscribe; one to exactly ``$sys.dashboard`` is also fed the
        dashboard's snapshots (:class:`DashboardFeed`), and refused in a queue group."""
        if msg.pattern != DASHBOARD_SUBJECT:
            self.broker.subscribe(link, msg, now)
        elif msg.queue is not None:
            link.refuse(
                msg,
                ErrorCode.BAD_FIELD,
                f"{DASHBOARD_SUBJECT} takes no queue group: each subscription gets every snapshot",
            )
        else:
            self.broker.subscribe(link, msg, now)
            sub = link.subscriptions.get(msg.sid)
            if sub is not None and sub.pattern == DASHBOARD_SUBJECT:  # (not refused)
                self.dashboard.watch(link, msg.sid)

    def _deny(self, link: Link, msg: Any, action: str, subject: str) -> None:
        """Answer ``msg`` ``not_permitted``: ``link``'s identity may not ``action``
        ``subject`` (nothing was done)."""
        principal = link.principal
        if subject.startswith("$"):
            text = f"{subject} is reserved for the system: no client may {action} it"
        else:
            text = f"{link.identity!r} may not {action} {subject}"
        if principal is not None:
            self._log_refusal(principal, "denied: %s", text)
        link.refuse(msg, ErrorCode.NOT_PERMITTED, text)

    def _guarded(self, link: Link, handlers: dict[type, Any]) -> dict[type, Any]:
        """``handlers`` with the checks of ``link``'s identity in front of the ones that
        need them: subjects its permissions allow, its payload size and submit rate (and,
        for everyone, that ``$`` subjects are the system's)."""
        deny = self._deny
        guarded = dict(handlers)
        submit = handlers.get(Submit)
        publish = handlers.get(Publish)
        subscribe = handlers.get(Subscribe)
        query = handlers.get(Query)

        if link.principal is None:  # (no authentication: only the reserved subjects)

            def unreserved(handler: Any, action: str) -> Any:
                def check(link: Any, msg: Any, now: float) -> None:
                    if msg.subject[0] == "$":
                        deny(link, msg, action, msg.subject)
                    else:
                        handler(link, msg, now)

                return check

            if submit is not None:
                guarded[Submit] = unreserved(submit, "submit to")
            if publish is not None:
                guarded[Publish] = unreserved(publish, "publish to")
            return guarded

        def too_large(link: Link, msg: Any, what: str) -> bool:
            limit = link.principal.max_payload
            if limit is not None and msg.payload is not None:
                size = payload_size(msg.payload)
                if size > limit:
                    link.refuse(
                        msg,
                        ErrorCode.TOO_LARGE,
                        f"{link.identity!r} may {what} payloads of {limit} bytes at most, not {size}",
                    )
                    return True
            return False

        if submit is not None:

            def checked_submit(link: Any, msg: Submit, now: float) -> None:
                principal = link.principal
                if not principal.user.submit.allows(msg.subject):
                    deny(link, msg, "submit to", msg.subject)
                elif too_large(link, msg, "submit"):
                    pass
                else:
                    wait = principal.take_submit(now)
                    if wait is not None:
                        link.refuse(
                            msg,
                            ErrorCode.BUSY,
                            f"{principal.name!r} submits faster than its rate of"
                            f" {principal.submit_rate:g} per second",
                            retry_after=wait,
                        )
                    else:
                        submit(link, msg, now)

            guarded[Submit] = checked_submit
        if publish is not None:

            def checked_publish(link: Any, msg: Publish, now: float) -> None:
                if not link.principal.user.publish.allows(msg.subject):
                    deny(link, msg, "publish to", msg.subject)
                elif not too_large(link, msg, "publish"):
                    publish(link, msg, now)

            guarded[Publish] = checked_publish
        if subscribe is not None:

            def checked_subscribe(link: Any, msg: Subscribe, now: float) -> None:
                problem = self._subscription_problem(link, msg.pattern, msg.queue)
                if problem is None:
                    subscribe(link, msg, now)
                elif problem.startswith("!"):
                    deny(link, msg, "subscribe to", msg.pattern)
                else:
                    self._log_refusal(link.principal, "denied: %s", problem)
                    link.refuse(msg, ErrorCode.NOT_PERMITTED, problem)

            guarded[Subscribe] = checked_subscribe
        if query is not None:

            def checked_query(link: Any, msg: Query, now: float) -> None:
                if msg.what in ADMIN_QUERIES and not link.admin:
                    link.refuse(
                        msg,
                        ErrorCode.NOT_PERMITTED,
                        f"{link.identity!r} may not {ADMIN_QUERIES[msg.what]}: dead letters are"
                        " for admins",
                    )
                else:
                    query(link, msg, now)

            guarded[Query] = checked_query
        return guarded

    async def _serve_worker(
        self,
        conn: Connection,
        hello: Hello,
        batch: list[Any],
        credentials: _Credentials | None = None,
    ) -> None:
        broker = self.broker
        link = WorkerLink(
            hello.name or conn.peer,
            **self._sender(conn),
            patterns=hello.patterns,
            window=hello.credit,
            group=hello.group or hello.name or conn.peer,
            policy=hello.policy,  # (checked by the protocol layer: a RoutingPolicy value)
            mode=hello.mode,
            next_mid=conn.next_mid,
            **self._link_facts(conn, hello),
        )
        if credentials is not None:
            self._authorize(link, credentials.principal)
            credentials.link = link
        self._batching = True
        try:
            broker.worker_joined(link, trio.current_time())
            self.departed_workers.forget(link.group, link.name)
            self._readiness = None  # (counted again)
        finally:
            self._flush()
        handlers = {
            Result: broker.result,
            Nack: broker.nack,
            Progress: broker.progress,
            Ack: broker.ack,
            Publish: broker.publish,
            Credit: lambda w, m, now: broker.set_window(w, m.credit, now),
        }
        handlers = self._guarded(link, handlers)

        coming_back = True
        try:
            await self._dispatch(conn, link, handlers, batch, role="worker")
        except ConnectionClosed as exc:
            # A worker that said Bye stops for good, unless it is being recycled (its
            # group starts another at once); a lost one may be restarting.
            coming_back = not exc.clean or "recycling" in exc.reason
            raise
        finally:
            self._batching = True
            try:
                broker.worker_left(link, trio.current_time(), coming_back=coming_back)
                self.departed_workers.add(link, trio.current_time(), time.time())
                self._readiness = None
            finally:
                self._flush()
            self._rearm()

    async def _dispatch(
        self,
        conn: Connection,
        link: Any,
        handlers: dict[type, Any],
        batch: list[Any],
        *,
        role: str,
        flush_every: int = 0,
    ) -> None:
        """Hand each message the peer sends to its handler, a batch at a time, in the
        connection's reader task (the first ``batch`` here), until the connection closes.

        What a batch sends is queued and each connection flushed once at its end (and
        after every ``flush_every`` messages, when given, so that workers start sooner).
        The session lets through only the kinds the peer's ``role`` may send; of those, a
        kind with no handler is one this leader reserves (``protocol._session.RESERVED``):
        it is answered ``not_permitted`` naming it, never dropped unanswered. An Error from
        the peer is never answered (a closing one has ended the session already).
        """

        def on_batch(batch: list[Any]) -> None:
            now = trio.current_time()
            self._batching = True
            try:
                for i, msg in enumerate(batch, 1):
                    handler = handlers.get(type(msg))
                    if handler is not None:
                        handler(link, msg, now)
                    elif type(msg) is not Error:
                        link.send(
                            Error(
                                mid=link.next_mid(),
                                cid=msg.mid,
                                code=ErrorCode.NOT_PERMITTED,
                                message=f"{type(msg).__name__} from a {role} is reserved: this leader does not serve it",
                            )
                        )
                    if flush_every and i % flush_every == 0:
                        self._flush()  # the workers can start on these
                        self._batching = True
            finally:
                self._flush()
            self._end_batch()

        if batch:
            on_batch(batch)
        await conn.dispatch_to(on_batch)  # the reader task runs on_batch from now on

    def _feed_handlers(self) -> dict[type, Any]:
        """The handlers of a feed connection (see :meth:`serve_feed`): Subscribe to and
        Unsubscribe from exactly ``$sys.dashboard``; the rest answered ``not_permitted``."""
        broker = self.broker

        def not_here(link: ClientLink, msg: Any, now: float) -> None:
            link.refuse(
                msg,
                ErrorCode.NOT_PERMITTED,
                f"{FEED_ONLY}: no {type(msg).__name__} here (connect to one of the leader's"
                " listen URLs for that)",
            )

        def subscribe(link: ClientLink, msg: Subscribe, now: float) -> None:
            if msg.pattern == DASHBOARD_SUBJECT:
                self._subscribe(link, msg, now)  # (every identity may watch it)
            else:
                link.refuse(
                    msg,
                    ErrorCode.NOT_PERMITTED,
                    f"{FEED_ONLY}: a subscription to {DASHBOARD_SUBJECT} only,"
                    f" not to {msg.pattern!r:.100}",
                )

        return {
            Submit: not_here,
            Cancel: not_here,
            Publish: not_here,
            Query: not_here,
            Subscribe: subscribe,
            Unsubscribe: lambda c, m, now: broker.unsubscribe(c, m),
        }

    async def _serve_client(
        self,
        conn: Connection,
        hello: Hello,
        batch: list[Any],
        credentials: _Credentials | None = None,
        *,
        feed: bool = False,
    ) -> None:
        broker = self.broker
        link = ClientLink(
            hello.name or conn.peer,
            **self._sender(conn),
            next_mid=conn.next_mid,
            **self._link_facts(conn, hello),
        )
        if credentials is not None:
            self._authorize(link, credentials.principal)
            credentials.link = link
        if feed:
            handlers = self._feed_handlers()
        else:
            handlers = self._guarded(
                link,
                {
                    Submit: broker.submit if self.shared is None else self._shared_submit,
                    Cancel: broker.cancel if self.shared is None else self._shared_cancel,
                    Publish: broker.publish,
                    Subscribe: self._subscribe,
                    Unsubscribe: lambda c, m, now: broker.unsubscribe(c, m),
                    Query: self._query,
                },
            )

        try:
            await self._dispatch(
                conn, link, handlers, batch, role=hello.role, flush_every=FLUSH_EVERY
            )
        finally:
            broker.client_left(link)
            if self.shared is not None:
                self.shared.client_left(link)

    def _shared_submit(self, client: ClientLink, msg: Submit, now: float) -> None:
        """A submit on a leader with a shared store: QoS 1 jobs go to the store."""
        shared = self.shared
        assert shared is not None
        if shared.takes(msg):
            shared.submit(client, msg, now)
        else:
            self.broker.submit(client, msg, now)

    def _shared_cancel(self, client: ClientLink, msg: Cancel, now: float) -> None:
        """A cancel on a leader with a shared store: every leader hears of it."""
        shared = self.shared
        assert shared is not None
        job = self.broker.jobs.get(msg.job_id)
        if job is not None and not job.leased:  # (a QoS 0 job of this leader)
            self.broker.cancel(client, msg, now)
        else:
            shared.cancel(client, msg, now)
