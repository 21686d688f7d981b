"""The cluster configuration's values: the leader's settings, its worker groups, the whole.

They are plain frozen classes with defaults; ``_config`` builds them from a TOML file or
the command line and checks every value on the way.
"""

from __future__ import annotations

import ssl
from typing import TYPE_CHECKING, Any

import attrs

from protocol import GroupMode, RoutingPolicy

from ..leader import LeaderConfig as LeaderSettings
from ..leader._broker import DEFAULT_RETRY_BACKOFF
from ..leader._leader import DEFAULT_LISTEN as DEFAULT_LISTEN

if TYPE_CHECKING:
    import runtime

    from ..leader import AuthConfig
    from ..leader._jetstream import StoreConfig
    from ..leader._redelivery import GroupRetry

# The defaults below are the leader's own (one home: actors.leader's config classes).
_LEADER_DEFAULTS = LeaderSettings()
_BROKER_DEFAULTS = _LEADER_DEFAULTS.broker


@attrs.frozen
class RetryConfig:
    """Backoff between redeliveries of an unacknowledged job (``[leader.retry]``).

    The n-th retry waits about ``min(cap, base * factor ** n)``, spread by ``jitter``
    (a fraction of the delay).
    """

    base: float = DEFAULT_RETRY_BACKOFF.base
    factor: float = DEFAULT_RETRY_BACKOFF.factor
    cap: float = DEFAULT_RETRY_BACKOFF.cap
    jitter: float = DEFAULT_RETRY_BACKOFF.jitter

    def backoff(self) -> runtime.Backoff:
        """The :class:`runtime.Backoff` policy these settings describe."""
        from runtime import Backoff

        return Backoff(base=self.base, factor=self.factor, cap=self.cap, jitter=self.jitter)


@attrs.frozen
class GroupRetryConfig:
    """A group's own retry policy (``[groups.retry]``); unset keys fall back to the leader's.

    ``max_attempts`` replaces the leader's ``max_attempts`` for jobs that fail on the
    group's workers; ``base``, ``factor``, ``cap`` and ``jitter`` replace the matching keys
    of ``[leader.retry]`` in the backoff before their redelivery.
    """

    max_attempts: int | None = None
    base: float | None = None
    factor: float | None = None
    cap: float | None = None
    jitter: float | None = None

    def policy(self, leader_retry: RetryConfig | None) -> GroupRetry:
        """The broker's :class:`~actors.GroupRetry`, on top of the leader's backoff settings."""
        from ..leader._redelivery import GroupRetry

        backoff = None
        overrides = {
            key: value
            for key in ("base", "factor", "cap", "jitter")
            if (value := getattr(self, key)) is not None
        }
        if overrides:
            backoff = attrs.evolve(leader_retry or RetryConfig(), **overrides).backoff()
        return GroupRetry(max_attempts=self.max_attempts, backoff=backoff)

    def describe(self) -> str:
        """A short phrase for the CLI's group line."""
        parts = [] if self.max_attempts is None else [f"max_attempts {self.max_attempts}"]
        parts += [
            f"{key} {getattr(self, key):g}"
            for key in ("base", "factor", "cap", "jitter")
            if getattr(self, key) is not None
        ]
        return "retry " + ", ".join(parts)


#: LeaderTable keys whose None means "the leader's default".
_OPTIONAL_LIMITS = (
    "max_connections_per_address",
    "max_handshakes",
    "max_handshakes_per_address",
    "max_queued_bytes",
    "max_queued_per_subject",
    "max_queued_bytes_per_subject",
    "max_queued_per_client",
    "max_queued_bytes_per_client",
    "max_queue_time",
    "max_window",
    "max_subscriptions",
    "max_patterns",
    "max_retained_bytes",
    "max_dead_letter_bytes",
    "max_stored_bytes",
    "route_grace",
    "restart_grace",
    "write_timeout",
    "max_outgoing_total",
    "data_dir",
    "memory",
    "sync",
    "max_journal_bytes",
    "dead_letter_retention",
    "store",
    "auth",
    "handshake_timeout",
)
#: LeaderTable keys that describe the TLS listeners: :meth:`LeaderTable.tls_context` turns
#: them into the leader's ``ssl_context`` (``tls_ca`` is for the cluster's own groups).
_TLS_KEYS = ("tls_cert", "tls_key", "tls_client_ca", "tls_verify_clients", "tls_ca")
#: How a TLS listener checks client certificates (``tls_verify_clients``).
VERIFY_CLIENTS_CHOICES = ("optional", "required")


@attrs.frozen
class LeaderTable:
    """The ``[leader]`` table: settings of the leader, flat as a file writes them.

    Their meaning and defaults are those of :class:`actors.leader.LeaderConfig` and
    :class:`actors.leader.BrokerConfig` (whose defaults these are);
    :meth:`leader_config` builds the leader's configuration from them.
    """

    name: str = _LEADER_DEFAULTS.name
    listen: tuple[str, ...] = _LEADER_DEFAULTS.listen
    ack_timeout: float = _BROKER_DEFAULTS.ack_timeout
    max_attempts: int = _BROKER_DEFAULTS.max_attempts
    max_queued: int = _BROKER_DEFAULTS.max_queued
    dedup_window: float = _BROKER_DEFAULTS.dedup_window
    heartbeat: float | None = _LEADER_DEFAULTS.heartbeat
    max_connections: int = _LEADER_DEFAULTS.max_connections
    retry: RetryConfig | None = None
    # The limits below: None leaves the leader's default (see actors.leader.LeaderConfig
    # and BrokerConfig).
    max_connections_per_address: int | None = None
    max_handshakes: int | None = None
    max_handshakes_per_address: int | None = None
    max_queued_bytes: int | None = None
    max_queued_per_subject: int | None = None
    max_queued_bytes_per_subject: int | None = None
    max_queued_per_client: int | None = None
    max_queued_bytes_per_client: int | None = None
    max_queue_time: float | None = None  # (math.inf: no limit; ``0`` in a file)
    max_window: int | None = None
    max_subscriptions: int | None = None
    max_patterns: int | None = None
    max_retained_bytes: int | None = None
    max_dead_letter_bytes: int | None = None
    max_stored_bytes: int | None = None
    route_grace: float | None = None
    restart_grace: float | None = None
    write_timeout: float | None = None  # (math.inf: never; ``0`` in a file)
    max_outgoing_total: int | None = None
    # The journal (see LeaderConfig): None leaves the leader's default.
    data_dir: str | None = None
    memory: bool | None = None
    sync: str | None = None
    max_journal_bytes: int | None = None
    dead_letter_retention: float | None = None
    # A shared job store on NATS JetStream instead of the journal (see LeaderConfig).
    store: StoreConfig | None = None
    # Security (see LeaderConfig). ``auth`` is the file's top-level [auth] table.
    auth: AuthConfig | None = None
    insecure: bool = False
    allowed_origins: tuple[str, ...] = ()
    handshake_timeout: float | None = None
    # HTTP: /healthz, /readyz, the JavaScript client ("127.0.0.1:7780"; None: none).
    http: str | None = None
    # Only GET and HEAD over HTTP (the API reads, and changes nothing).
    http_read_only: bool = False
    # The certificate of tls:// and wss:// listeners (files; see tls_context()).
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_client_ca: str | None = None
    tls_verify_clients: str | None = None  # "optional" (the default) or "required"
    tls_ca: str | None = None  # the CA that signed tls_cert, for the cluster's groups

    @property
    def group_ca(self) -> str | None:
        """The CA file with which the cluster's groups check a TLS listener's certificate:
        ``tls_ca``, else ``tls_cert`` itself (a self-signed certificate is its own CA)."""
        return self.tls_ca or self.tls_cert

    def tls_context(self) -> ssl.SSLContext | None:
        """The server context of the ``tls://`` and ``wss://`` listeners: ``tls_cert`` and
        ``tls_key`` (None: the key is in ``tls_cert``'s file), and with ``tls_client_ca`` the check of client certificates (optional,
        or required with ``tls_verify_clients = "required"``). None without ``tls_cert``.

        Raises:
          actors.TLSConfigError: a file is missing, unreadable or not what it should be
            (named in the message).
        """
        if self.tls_cert is None:
            return None
        from .._tls import server_ssl_context

        return server_ssl_context(
            cert=self.tls_cert,
            key=self.tls_key,
            client_ca=self.tls_client_ca,
            require_client_cert=self.tls_verify_clients == "required",
        )

    def leader_config(self) -> LeaderSettings:
        """The :class:`actors.leader.LeaderConfig` these settings describe (for
        ``Leader(config)``)."""
        return LeaderSettings.of(**self.leader_kwargs())

    def leader_kwargs(self) -> dict[str, Any]:
        """These settings as keyword arguments of :class:`actors.Leader` (the limits left
        unset are left out: the leader's defaults apply; the TLS files become its
        ``ssl_context``, read now).

        Raises:
          actors.TLSConfigError: see :meth:`tls_context`.
        """
        kwargs = attrs.asdict(self, recurse=False)
        retry = kwargs.pop("retry")
        kwargs["retry_backoff"] = retry.backoff() if retry is not None else None
        for key in _OPTIONAL_LIMITS:
            if kwargs[key] is None:
                del kwargs[key]
        for key in _TLS_KEYS:
            del kwargs[key]
        context = self.tls_context()
        if context is not None:
            kwargs["ssl_context"] = context
        if not kwargs["insecure"]:
            del kwargs["insecure"]
        if not kwargs["allowed_origins"]:
            del kwargs["allowed_origins"]
        if kwargs["http"] is None:
            del kwargs["http"]
        if not kwargs["http_read_only"]:
            del kwargs["http_read_only"]
        return kwargs


@attrs.frozen
class GroupConfig:
    """One worker group (``[[groups]]``): ``instances`` copies of a worker class.

    ``max_memory`` (bytes of RSS) and ``max_jobs`` (jobs handled) recycle an instance past
    them; None leaves the class's own setting (see :class:`~actors.WorkerGroup`).
    ``max_start_failures``: the group fails once an instance failed to start this many
    times in a row (0: it never gives up; None: the group's default).
    """

    name: str
    worker: str | None = None
    command: tuple[str, ...] | None = None
    instances: int = 1
    mode: str = GroupMode.ROUND_ROBIN.value
    policy: str = RoutingPolicy.ROUND_ROBIN.value
    subjects: tuple[str, ...] | None = None
    concurrency: int | None = None
    in_process: bool = False
    retry: GroupRetryConfig | None = None
    max_memory: int | None = None
    max_jobs: int | None = None
    max_start_failures: int | None = None


@attrs.frozen
class ClusterConfig:
    """A whole cluster: one leader and its groups.

    Attributes:
      source: where the configuration came from (a file name or ``"command line"``), for
        messages.
      path: the file it was read from (None: built otherwise); the cluster re-reads its
        ``[auth]`` table on SIGHUP.
    """

    leader: LeaderTable = LeaderTable()
    groups: tuple[GroupConfig, ...] = ()
    source: str = "command line"
    path: str | None = attrs.field(default=None, eq=False)
