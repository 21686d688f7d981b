"""The Leader: listeners, one task per connection, and a timer, around the Broker.

The leader is one trio process. Each connection's task reads a batch of messages
(:meth:`~runtime.Connection.receive_some`), hands each to the :class:`Broker`, whose
answers are queued on the connections' outgoing buffers without awaiting; the
connections' writer tasks then flush them in few ``send_all`` calls. A timer task sleeps
until the broker's next deadline (ack timeouts, backoff) and is re-armed after each batch.
"""

from __future__ import annotations

import itertools
import logging
import random
import ssl
import uuid
from collections.abc import Sequence
from functools import partial
from typing import Any

import trio

from protocol import (
    DEFAULT_MAX_FRAME_SIZE,
    MAX_NAME_LENGTH,
    Ack,
    Cancel,
    Credit,
    Error,
    ErrorCode,
    Hello,
    Nack,
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
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_CONNECTIONS_PER_ADDRESS,
    DEFAULT_MAX_HANDSHAKES,
    DEFAULT_MAX_HANDSHAKES_PER_ADDRESS,
    DEFAULT_MAX_OUTGOING_TOTAL,
    DEFAULT_WRITE_TIMEOUT,
    Backoff,
    Connection,
    ConnectionClosed,
    MessageTooLarge,
    SendBufferFull,
    serve,
)

from ._broker import Broker, BrokerConfig
from ._links import ClientLink, WorkerLink

#: Messages of one received batch handled before what they queued is written out, so
#: that the next process in the pipeline starts working sooner.
FLUSH_EVERY = 32
#: Subject patterns one worker may serve, by default.
MAX_PATTERNS = 1024
#: Seconds between two statistics answers to one connection (and between two builds).
STATS_INTERVAL = 1.0
#: Subjects listed in a statistics answer at most (the busiest).
MAX_STATS_SUBJECTS = 1000

log = logging.getLogger("actors.leader")


class _Default:
    """The type of :data:`DEFAULT`: "not given" where None means something (no limit)."""

    def __repr__(self) -> str:
        return "DEFAULT"


#: "Not given": take :class:`BrokerConfig`'s default.
DEFAULT = _Default()


class Leader:
    """The broker and scheduler: accepts clients and workers, routes and tracks jobs.

    Args:
      name: the node's name (sent in Welcome, shown in stats).
      listen: URLs to listen on (``tcp://``, ``tls://``, ``ws://``, ``wss://``); port 0
        picks a free port (see :attr:`urls` once running).
      ssl_context: server context for ``tls://`` and ``wss://`` listeners.
      ack_timeout: seconds a worker has to answer a job before it is redelivered.
      max_attempts: deliveries of a QoS 1 job before it goes to ``$dlq.<subject>``.
      retry_backoff: redelivery delays (default 0.5 s doubling to 30 s, 10 % jitter).
      max_queued: waiting jobs at which submits are answered ``busy``.
      dedup_window: seconds a finished job's result answers resubmissions of its id.
      heartbeat: seconds between heartbeats on idle connections.
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
      token: when set, every Hello must carry it.
      rng: the random source for backoff jitter.
      max_queued_bytes, max_queued_per_subject, max_queued_bytes_per_subject,
      max_queued_per_client, max_queued_bytes_per_client, max_queue_time, max_window,
      max_subscriptions, max_retained_bytes, max_dead_letter_bytes, max_stored_bytes:
        the limits of :class:`BrokerConfig` (None: its default). At a queue limit a
        submit is answered ``busy`` with ``retry_after``; a job that waits longer than
        ``max_queue_time`` for a worker expires and its clients get a ``timeout`` error.
      max_patterns: subject patterns one worker may serve; a Hello with more is refused.
      route_grace, restart_grace: how long a job for a subject no connected worker serves
        waits for one before the ``no_route`` answer: ``route_grace`` always (default 0,
        at once), ``restart_grace`` after a worker serving it went away (default 30 s: it
        may be restarting). See :class:`BrokerConfig`.

    Resource handling: everything runs inside :meth:`run`; cancelling it closes every
    listener and connection. Jobs held by a closed connection's worker are redelivered.
    """

    def __init__(
        self,
        *,
        name: str = "leader",
        listen: Sequence[str] = ("tcp://127.0.0.1:7700",),
        ssl_context: ssl.SSLContext | None = None,
        ack_timeout: float = 30.0,
        max_attempts: int = 5,
        retry_backoff: Backoff | None = None,
        max_queued: int = 100_000,
        dedup_window: float = 600.0,
        heartbeat: float | None = 5.0,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        max_outgoing: int = 4 * DEFAULT_MAX_FRAME_SIZE,
        write_timeout: float = DEFAULT_WRITE_TIMEOUT,
        max_outgoing_total: float = DEFAULT_MAX_OUTGOING_TOTAL,
        max_connections_per_address: int = DEFAULT_MAX_CONNECTIONS_PER_ADDRESS,
        max_handshakes: int = DEFAULT_MAX_HANDSHAKES,
        max_handshakes_per_address: int = DEFAULT_MAX_HANDSHAKES_PER_ADDRESS,
        token: str | None = None,
        rng: random.Random | None = None,
        max_queued_bytes: int | None = None,
        max_queued_per_subject: int | None = None,
        max_queued_bytes_per_subject: int | None = None,
        max_queued_per_client: int | None = None,
        max_queued_bytes_per_client: int | None = None,
        max_queue_time: float | None | _Default = DEFAULT,
        max_window: int | None = None,
        max_subscriptions: int | None = None,
        max_retained_bytes: int | None = None,
        max_dead_letter_bytes: int | None = None,
        max_stored_bytes: int | None = None,
        max_patterns: int = MAX_PATTERNS,
        route_grace: float | None = None,
        restart_grace: float | None = None,
    ) -> None:
        if not isinstance(name, str) or not 0 < len(name) <= MAX_NAME_LENGTH:
            raise ValueError(f"a leader's name must be a str of 1 to {MAX_NAME_LENGTH} characters, got {name!r:.80}")
        self.name = name
        self.listen = list(listen)
        self.ssl_context = ssl_context
        self.heartbeat = heartbeat
        self.max_connections = max_connections
        self.max_outgoing = max_outgoing
        self.write_timeout = write_timeout
        self.max_outgoing_total = max_outgoing_total
        self.max_connections_per_address = max_connections_per_address
        self.max_handshakes = max_handshakes
        self.max_handshakes_per_address = max_handshakes_per_address
        self.token = token
        self.max_patterns = max_patterns
        limits = {
            "max_queued_bytes": max_queued_bytes,
            "max_queued_per_subject": max_queued_per_subject,
            "max_queued_bytes_per_subject": max_queued_bytes_per_subject,
            "max_queued_per_client": max_queued_per_client,
            "max_queued_bytes_per_client": max_queued_bytes_per_client,
            "max_window": max_window,
            "max_subscriptions": max_subscriptions,
            "max_retained_bytes": max_retained_bytes,
            "max_dead_letter_bytes": max_dead_letter_bytes,
            "max_stored_bytes": max_stored_bytes,
            "route_grace": route_grace,
            "restart_grace": restart_grace,
        }
        if not isinstance(max_queue_time, _Default):
            limits["max_queue_time"] = max_queue_time
        config = BrokerConfig(
            ack_timeout=ack_timeout,
            max_attempts=max_attempts,
            max_queued=max_queued,
            dedup_window=dedup_window,
            **{key: value for key, value in limits.items() if value is not None},
        )
        if retry_backoff is not None:
            config.retry_backoff = retry_backoff
        self.broker = Broker(config, rng=rng)
        self.urls: list[str] = []
        self._timer_scope: trio.CancelScope | None = None
        self._session_ids = itertools.count(1)
        # While a batch is handled, messages are queued on their connections (``dirty``)
        # and each connection is flushed once at the end: no writer task has to run.
        self._batching = False
        self._dirty: dict[Connection, None] = {}
        self._instance = uuid.uuid4().hex[:8]
        self._doomed: dict[Connection, str] = {}
        self._stats_cache: tuple[float, dict[str, Any] | None] = (float("-inf"), None)
        self._group_states: dict[str, str] = {}
        self.connections = 0

    async def run(self, *, task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve every listen URL until cancelled; ``task_status.started(bound_urls)``."""
        async with trio.open_nursery() as nursery:
            await nursery.start(self._timer_loop)
            urls = []
            for url in self.listen:
                bound = await nursery.start(
                    partial(
                        serve,
                        url,
                        self._handle_connection,
                        ssl_context=self.ssl_context,
                        heartbeat=self.heartbeat,
                        max_connections=self.max_connections,
                        max_outgoing=self.max_outgoing,
                        write_timeout=self.write_timeout,
                        max_outgoing_total=self.max_outgoing_total,
                        max_connections_per_address=self.max_connections_per_address,
                        max_handshakes=self.max_handshakes,
                        max_handshakes_per_address=self.max_handshakes_per_address,
                        decode_payloads=False,  # forwarded as they came (protocol._payload)
                    )
                )
                urls.append(bound)
            self.urls = urls
            task_status.started(urls)

    def set_group_state(self, group: str, state: str | None) -> None:
        """Say what a worker group the leader cannot see is doing (``starting``,
        ``failed: ...``), for :meth:`stats`; None forgets it. A cluster calls this for its
        groups, so that ``python -m actors status`` shows a group that never connected."""
        if state is None:
            self._group_states.pop(group, None)
        elif group in self._group_states or len(self._group_states) < 10_000:
            self._group_states[group] = state

    def stats(self) -> dict[str, Any]:
        """The broker's statistics plus connection counts."""
        stats = self.broker.stats()
        groups = stats["groups"]
        for name, state in self._group_states.items():
            group = groups.get(name)
            if group is None:
                group = groups[name] = {
                    "workers": 0, "in_flight": 0, "window": 0, "assigned": 0, "answered": 0,
                    "policy": None, "mode": None, "done": 0, "failed": 0, "redelivered": 0,
                    "dead": 0, "latency_avg": None, "latency_max": 0.0, "patterns": [],
                }  # fmt: skip
            group["state"] = state
        stats["node"] = self.name
        stats["connections"] = self.connections
        stats["listen"] = list(self.urls)
        return stats

    # ------------------------------------------------------------------ timer

    async def _timer_loop(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
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

        Statistics cost O(subjects) to build and encode: they are built at most once per
        :data:`STATS_INTERVAL` for everyone, a connection is answered at most once per
        interval (``busy`` before), and they list the :data:`MAX_STATS_SUBJECTS` busiest
        subjects (``subjects_omitted`` counts the others)."""
        if msg.what != "stats":
            self.broker.query_result(client, msg, now)
            return

        def refuse(code: str, text: str, **extra: Any) -> None:
            client.send(Error(mid=client.next_mid(), cid=msg.mid, code=code, message=text, **extra))

        wait = client.stats_at + STATS_INTERVAL - now
        if wait > 0:
            refuse(ErrorCode.BUSY, "statistics asked for too often", retry_after=round(wait, 3))
            return
        client.stats_at = now
        built, stats = self._stats_cache
        if stats is None or now - built >= STATS_INTERVAL:
            stats = self.stats()
            subjects = stats["subjects"]
            if len(subjects) > MAX_STATS_SUBJECTS:
                busiest = sorted(
                    subjects, key=lambda s: (subjects[s]["queued"] + subjects[s]["in_flight"], subjects[s]["submitted"]),
                    reverse=True,
                )[:MAX_STATS_SUBJECTS]
                stats["subjects"] = {name: subjects[name] for name in busiest}
                stats["subjects_omitted"] = len(subjects) - MAX_STATS_SUBJECTS
            self._stats_cache = (now, stats)
        try:
            client.send(Result(mid=client.next_mid(), cid=msg.mid, job_id="stats", ok=True, payload=stats))
        except MessageTooLarge as exc:
            refuse(ErrorCode.TOO_LARGE, f"the statistics do not fit your frame limit: {exc}")

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

    def _flush(self) -> None:
        """Write out what the batch just handled queued, one flush per connection."""
        self._batching = False
        dirty = self._dirty
        if dirty:
            for conn in dirty:
                conn.flush()
            dirty.clear()

    def _end_batch(self) -> None:
        self._rearm()
        if self._doomed:
            self._close_doomed()

    def _close_doomed(self) -> None:
        for conn, reason in list(self._doomed.items()):
            del self._doomed[conn]
            conn.close_soon(Error(mid=conn.next_mid(), code=ErrorCode.SLOW_CONSUMER, message=f"slow consumer: {reason}"))

    async def _handle_connection(self, conn: Connection) -> None:
        self.connections += 1
        try:
            batch = await conn.receive_some()
            hello = batch[0]
            assert isinstance(hello, Hello)  # the connection's Session guarantees it
            if not self._accept(conn, hello):
                return
            if hello.role == "worker":
                await self._serve_worker(conn, hello, batch[1:])
            else:
                await self._serve_client(conn, hello, batch[1:])
        except ConnectionClosed:
            pass
        finally:
            self.connections -= 1
            self._doomed.pop(conn, None)

    def _accept(self, conn: Connection, hello: Hello) -> bool:
        def refuse(code: str, message: str) -> bool:
            conn.close_soon(Error(mid=conn.next_mid(), cid=hello.mid, code=code, message=message))
            return False

        try:
            version = negotiate_version(hello.versions)
        except UnsupportedVersion as exc:
            return refuse(exc.code, exc.message)
        if self.token is not None and hello.token != self.token:
            return refuse(ErrorCode.AUTH_FAILED, "missing or wrong token")
        if hello.role == "worker":
            if len(hello.patterns) > self.max_patterns:
                return refuse(
                    ErrorCode.BAD_FIELD,
                    f"a worker may serve at most {self.max_patterns} patterns, not {len(hello.patterns)}",
                )
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
        return True

    async def _serve_worker(self, conn: Connection, hello: Hello, batch: list[Any]) -> None:
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
        )
        self._batching = True
        try:
            broker.worker_joined(link, trio.current_time())
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

        coming_back = True
        try:
            await self._dispatch(conn, link, handlers, batch, refuse_others=True)
        except ConnectionClosed as exc:
            # A worker that said Bye stops for good, unless it is being recycled (its
            # group starts another at once); a lost one may be restarting.
            coming_back = not exc.clean or "recycling" in exc.reason
            raise
        finally:
            self._batching = True
            try:
                broker.worker_left(link, trio.current_time(), coming_back=coming_back)
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
        flush_every: int = 0,
        refuse_others: bool = False,
    ) -> None:
        """Hand each message the peer sends to its handler, a batch at a time, in the
        connection's reader task (the first ``batch`` here), until the connection closes.

        What a batch sends is queued and each connection flushed once at its end (and
        after every ``flush_every`` messages, when given, so that workers start sooner).
        A kind with no handler is ignored, or answered ``not_permitted`` (``refuse_others``).
        """

        def on_batch(batch: list[Any]) -> None:
            now = trio.current_time()
            self._batching = True
            try:
                for i, msg in enumerate(batch, 1):
                    handler = handlers.get(type(msg))
                    if handler is not None:
                        handler(link, msg, now)
                    elif refuse_others and type(msg) is not Error:
                        link.send(
                            Error(
                                mid=link.next_mid(),
                                cid=msg.mid,
                                code=ErrorCode.NOT_PERMITTED,
                                message=f"workers may not send {type(msg).__name__} here",
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

    async def _serve_client(self, conn: Connection, hello: Hello, batch: list[Any]) -> None:
        broker = self.broker
        link = ClientLink(hello.name or conn.peer, **self._sender(conn), next_mid=conn.next_mid)
        handlers = {
            Submit: broker.submit,
            Cancel: broker.cancel,
            Publish: broker.publish,
            Subscribe: broker.subscribe,
            Unsubscribe: lambda c, m, now: broker.unsubscribe(c, m),
            Query: self._query,
        }

        try:
            await self._dispatch(conn, link, handlers, batch, flush_every=FLUSH_EVERY)
        finally:
            broker.client_left(link)
