"""A leader's part in a cluster of leaders sharing one job store on NATS JetStream (the
trio side; the NATS side is :mod:`actors.leader._jetstream`).

With ``--store nats://...`` the leader keeps no job of its own for long: a QoS 1 submit is
claimed and published to the shared jobs stream and answered "accepted" once JetStream
acknowledged it; this leader's workers take jobs from the stream (whoever accepted them)
as fast as their credit allows; the result is stored in the shared bucket and sent to the
leader the submitting client waits at. A leader that dies holds nothing that is not in
JetStream: its unacknowledged messages go to the other leaders after the consumers'
AckWait, and its clients, reconnecting to another leader, submit again under the same ids
and get the results (``docs/scale-out.md``).

What stays local: QoS 0 jobs (never stored), retained messages, subscriptions (messages
published at one leader are passed to every other one over core NATS).

Every NATS operation is a call across :class:`runtime.AsyncioBridge`, once per batch: a
task per direction drains what the broker's handlers queued (submits to store, results
to store, acknowledgements, notifications) and crosses once for all of it. Whatever comes
from NATS is checked before it changes anything: anyone on the NATS account may publish on
the store's subjects (``docs/scale-out.md``: the account is the trust boundary).
"""

from __future__ import annotations

import logging
import math
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import attrs
import trio

from protocol import (
    Ack,
    Cancel,
    Encoded,
    Error,
    ErrorCode,
    Progress,
    Query,
    Result,
    Submit,
    is_valid_subject,
    message_of,
    subject_matches,
)
from runtime import AsyncioBridge, open_asyncio_bridge

from ._broker import Broker
from ._jetstream import (
    INLINE_RESULT,
    Fetched,
    JetStreamStore,
    JobBody,
    StoreConfig,
    StoreError,
    Submitted,
    check_result,
    decode,
    decode_claim,
    decode_job,
    encode,
    leader_token,
    result_key,
)
from ._jobs import CancelledResult, DeadResult, JobRecord, StoredResult
from ._journal import _blob  # (a payload as its CBOR bytes: the journal's)
from ._links import ClientLink

log = logging.getLogger("actors.leader.shared")

#: Submits stored in JetStream per crossing, at most.
PUBLISH_BATCH = 512
#: Results, acknowledgements and notifications per crossing, at most.
OUT_BATCH = 1024
#: Seconds between two looks at the results of jobs waited for here that this leader
#: will not hear of (accepted by another leader, or notified while NATS was away): the
#: first, then twice as long each time, up to :data:`POLL_MAX`.
POLL_INTERVAL = 0.25
POLL_MAX = 5.0
#: Jobs polled per crossing.
POLL_BATCH = 512
#: Cancelled job ids remembered (each leader hears of every cancel; the oldest go first).
MAX_CANCELS = 10_000
#: Calls (submits and result queries) waiting at one leader, at most (more: busy).
MAX_WAITING = 100_000
#: Calls waiting for one job at one leader, at most.
MAX_CALLS_PER_JOB = 1000
#: Submits accepted here and not yet handed to JetStream, at most (more: busy).
MAX_UNPUBLISHED = 10_000
#: Core NATS messages (published messages for the other leaders, notifications) waiting to
#: be sent, at most: published messages beyond it are not passed on (counted).
MAX_UNSENT = 100_000
#: Seconds a submit to a subject no worker of any leader serves waits for one, at least.
ROUTE_WAIT = 2.0
#: Seconds a submit or a result is tried again when storing it fails, at most (a NATS
#: node lost: its streams elect new leaders in 4 to 9 s), and the pause between tries.
STORE_RETRY = 20.0
RETRY_PAUSE = 0.5
#: Seconds a pull request waits for messages before the server ends it.
PULL_EXPIRES = 1.0
#: Bytes a stored result's record may take beyond its payload (the rest of the record,
#: the headers of the message that carries it).
RECORD_OVERHEAD = 1024


@attrs.define(eq=False)
class Lease:
    """A job message this leader fetched and holds (queued for or run by its workers)."""

    job: JobBody
    key: str
    pattern: str
    reply: str
    #: JetStream's count of its deliveries, and how many of them were given back without
    #: an attempt (see :meth:`SharedJobs._give_back`): its attempts are the difference.
    deliveries: int
    givebacks: int


@attrs.define(eq=False)
class _Call:
    client: ClientLink
    mid: int
    #: a submit (else a ``result(..., wait=True)``)
    submit: bool


@attrs.define(eq=False)
class _Wait:
    """The calls waiting here for one job's result."""

    job_id: str
    calls: list[_Call] = attrs.Factory(list)
    #: the job is stored (by this leader or another); a submit of it is being stored
    stored: bool = False
    publishing: bool = False
    #: when its result is looked for next in the bucket, and how often (None: not polled)
    poll_at: float | None = None
    poll_every: float = POLL_INTERVAL


@attrs.define(eq=False)
class _Pending:
    """A submit to store."""

    client: ClientLink
    msg: Submit
    key: str
    body: bytes
    #: an operator's retry of a dead letter: the claim is overwritten, the message new
    force: bool = False
    #: when storing it first failed (trio's clock; None: it has not)
    failed_at: float | None = None


#: The client of submits nobody waits for (an operator's retry of a dead letter).
_NOBODY = ClientLink("nobody", lambda message: None)


def stored_of(record: dict[str, Any]) -> StoredResult:
    """The broker's result of a stored result record (as :func:`check_result` passed
    it)."""
    kind = {"dead": DeadResult, "cancelled": CancelledResult}.get(record["st"], StoredResult)
    payload = record.get("p")
    return kind(
        record["ok"],
        None if payload is None else Encoded(payload),
        record.get("et"),
        record.get("em"),
        record.get("a") or 0,
        record.get("tb"),
        record.get("s"),
        None,
        bool(record.get("f")),
        record.get("i"),
        record.get("w"),
    )


class SharedJobs:
    """The shared-store side of a :class:`~actors.leader.Leader` (see the module)."""

    def __init__(
        self,
        broker: Broker,
        config: StoreConfig,
        name: str,
        *,
        batch: Callable[[], AbstractContextManager[None]] = nullcontext,
    ) -> None:
        self.broker = broker
        #: Handles what comes from NATS as one batch of the leader's (one flush per
        #: connection at its end).
        self.batch = batch
        self.config = config
        self.name = name
        #: This leader's token in the subjects of the store (unique per process).
        self.token = leader_token(f"{name}-{secrets.token_hex(3)}")
        self.store = JetStreamStore(config, self.token)
        self.bridge: AsyncioBridge | None = None
        #: Calls waiting here for a result, by result key; how many in all.
        self.waits: dict[str, _Wait] = {}
        self.calls = 0
        #: Keys of the waits whose result is looked for in the bucket (see _Wait.poll_at).
        self.polled: dict[str, None] = {}
        #: Messages held here, by job id; by worker pattern; pulled and not yet taken.
        self.leases: dict[str, Lease] = {}
        self.held: dict[str, int] = {}
        self.incoming: dict[str, int] = {}
        #: Cancelled job ids: the identities that cancelled each, and whether an admin did.
        self.cancels: OrderedDict[str, tuple[frozenset[str | None], bool]] = OrderedDict()
        self.problems: dict[str, str] = {}  # why a pattern's consumer could not be made
        self._to_publish: list[_Pending] = []
        self._forget: list[str] = []  # results to delete before what is published next
        self._retrying: dict[str, None] = {}  # their keys, until published: not read
        self._publish_wake = trio.Event()
        self._results: list[tuple[Lease, bytes]] = []
        #: results whose storing failed, to try again: their data, when it first failed
        self._unstored: dict[Lease, tuple[bytes, float]] = {}
        self._dead: list[tuple[str, str, bytes]] = []
        self._givebacks: list[tuple[str, bytes, str, bytes]] = []
        self._acks: list[tuple[str, bytes]] = []
        self._core: list[tuple[str, bytes, dict[str, str] | None]] = []
        self._out_wake = trio.Event()
        self._credit = trio.Event()
        self._feeders: dict[str, trio.CancelScope] = {}
        self._served: set[str] = set()  # patterns whose consumer is in use (any leader's)
        self._routes: dict[str, None] = {}  # subjects known routable (cleared at each look)
        self._routes_at = float("-inf")
        self._routing = 0  # submits waiting for a route (see _route_later)
        self._nursery: trio.Nursery | None = None
        self._malformed_logged_at = float("-inf")
        self.lessee = ClientLink(
            f"store:{self.token}", self._lessee_message, send_item=self._lessee_item
        )
        # counters
        self.published = 0
        self.duplicates = 0
        self.fetched = 0
        self.completed = 0
        self.retried = 0
        self.given_back = 0
        self.dead_lettered = 0
        self.store_failures = 0
        self.forwards_dropped = 0
        self.malformed = 0

    # ------------------------------------------------------------------ running

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Connect to the store and serve it until cancelled.

        Raises:
          StoreError: the store cannot be used (the message says why), before
            ``task_status.started``.
        """
        async with open_asyncio_bridge() as bridge:
            self.bridge = bridge
            store = self.store
            await bridge.run(store.connect, f"trio-actors leader {self.name}")
            prefix = self.config.prefix
            try:
                for subject, handler in (
                    (f"{prefix}.done.{self.token}.>", self._on_done),
                    (f"{prefix}.progress.{self.token}", self._on_progress),
                    (f"{prefix}.cancel", self._on_cancel),
                    (f"{prefix}.pub.>", self._on_publish),
                    (f"{prefix}.dead.>", self._on_dead),
                ):
                    await bridge.run(store.subscribe, subject, bridge.to_trio(self._each(handler)))
                await self._load_dead_letters()
                reconnected = bridge.to_trio(self._on_reconnect)
                store.on_reconnect = lambda: reconnected(None)
                self.broker.lease_failed = self._lease_failed
                self.broker.requeue_shared = self._requeue
                self.broker.pubsub.forward = self._forward
                log.info(
                    "leader %s: jobs shared on NATS JetStream %s (nats-server %s, %d replicas,"
                    " stream %s)",
                    self.name, ", ".join(self.config.shown_servers), store.version,
                    self.config.replicas, self.config.jobs_stream,
                )  # fmt: skip
                async with trio.open_nursery() as nursery:
                    self._nursery = nursery
                    nursery.start_soon(self._publish_loop)
                    nursery.start_soon(self._out_loop)
                    nursery.start_soon(self._keep_loop)
                    nursery.start_soon(self._poll_loop)
                    nursery.start_soon(self._feeders_loop, nursery)
                    task_status.started()
            finally:
                self.broker.pubsub.forward = None
                # What is held here goes back at once (not after AckWait) to the others.
                for lease in list(self.leases.values()):
                    if self.broker.withdraw(lease.job.job_id):  # (queued: no attempt made)
                        self._release(lease.job.job_id)
                        self._give_back(lease, 0.0)
                    else:
                        self._acks.append((lease.reply, store.nak(0.0)))
                with trio.CancelScope(shield=True):
                    with trio.move_on_after(5):
                        await self._flush_out()
                    with trio.move_on_after(5):
                        await bridge.run(store.close)

    async def _load_dead_letters(self) -> None:
        """Keep the newest dead letters of the shared stream in memory, as a journal's
        are read back at start (the dead-letter views and retries read them there)."""
        assert self.bridge is not None
        limit = self.broker.config.max_dead_letters
        try:
            bodies = await self.bridge.run(self.store.newest_dead_letters, limit)
        except Exception as exc:
            log.warning("reading the dead letters of the shared store failed: %s", exc)
            return
        for body in bodies:
            record = _dead_record(body)
            if record is not None:
                self.broker.retries.keep_dead_letter(record, len(body))

    def _on_dead(self, msg: Any) -> None:
        """A dead letter stored by another leader: kept here too, and published on
        ``$dlq.<subject>`` to this leader's subscribers."""
        record = _dead_record(msg.data)
        if record is None:
            raise ValueError("not a dead letter")
        self.broker.retries.keep_dead_letter(record, len(msg.data))
        self.broker.pubsub.route("$dlq." + record["subject"], record, {})

    def _each(self, handler: Callable[[Any], None]) -> Callable[[list[Any]], None]:
        """A handler of a batch of NATS messages, one ``handler(msg)`` each, as one batch
        of the leader's: a message that makes it fail is logged and costs only itself."""

        def each(msgs: list[Any]) -> None:
            with self.batch():
                for msg in msgs:
                    try:
                        handler(msg)
                    except Exception:
                        self._malformed(f"a message on {msg.subject!r} could not be handled")

        return each

    def _malformed(self, what: str) -> None:
        """Count (and now and then log) something from NATS that no leader wrote."""
        self.malformed += 1
        now = time.monotonic()
        if now - self._malformed_logged_at > 10:  # (at most one line per 10 s)
            self._malformed_logged_at = now
            log.warning(
                "leader %s: %s (%d malformed so far: someone on the NATS account publishes on"
                " the store's subjects?)",
                self.name, what, self.malformed,
            )  # fmt: skip

    def stats(self) -> dict[str, Any]:
        """What the store side has done, for the leader's statistics."""
        return {
            "kind": "jetstream",
            "servers": self.config.shown_servers,
            "server_version": self.store.version,
            "connected": self.store.connected,
            "replicas": self.config.replicas,
            "stream": self.config.jobs_stream,
            "leader_token": self.token,
            "published": self.published,
            "duplicates": self.duplicates,
            "fetched": self.fetched,
            "completed": self.completed,
            "retried": self.retried,
            "given_back": self.given_back,
            "dead_lettered": self.dead_lettered,
            "store_failures": self.store_failures,
            "forwards_dropped": self.forwards_dropped,
            "malformed": self.malformed,
            "held": len(self.leases),
            "waiting": self.calls,
            "problems": dict(self.problems),
        }

    # ------------------------------------------------------------------ waits

    def _wait_for(self, key: str, job_id: str) -> _Wait:
        wait = self.waits.get(key)
        if wait is None:
            wait = self.waits[key] = _Wait(job_id)
        return wait

    def _add_call(self, wait: _Wait, client: ClientLink, mid: int, *, submit: bool) -> None:
        wait.calls.append(_Call(client, mid, submit))
        client.waiting[wait.job_id] = None
        self.calls += 1

    def _drop_calls(self, key: str, keep: Callable[[_Call], bool]) -> list[_Call]:
        """Remove the calls of ``key``'s wait that ``keep`` says no to (the wait too, when
        none is left); returns them."""
        wait = self.waits.get(key)
        if wait is None:
            return []
        dropped = [call for call in wait.calls if not keep(call)]
        if dropped:
            wait.calls = [call for call in wait.calls if keep(call)]
            self.calls -= len(dropped)
            for call in dropped:
                if not any(c.client is call.client for c in wait.calls):
                    call.client.waiting.pop(wait.job_id, None)
        if not wait.calls:
            del self.waits[key]
            self.polled.pop(key, None)
        return dropped

    def _poll(self, key: str, wait: _Wait) -> None:
        """Look for ``key``'s result in the bucket soon, and then less and less often."""
        if wait.poll_at is None:
            wait.poll_every = POLL_INTERVAL
        wait.poll_at = trio.current_time()
        self.polled[key] = None

    def _busy(self, client: ClientLink, msg: Any, text: str) -> None:
        client.refuse(msg, ErrorCode.BUSY, text, retry_after=1.0)

    def client_left(self, client: ClientLink) -> None:
        """A client went away: its calls stop waiting (the jobs go on)."""
        for job_id in list(client.waiting):
            self._drop_calls(result_key(job_id), lambda call: call.client is not client)

    # ------------------------------------------------------------------ submits

    def takes(self, msg: Submit) -> bool:
        """Whether a submit goes to the shared store (QoS 1, not a system subject)."""
        return msg.qos == 1 and msg.subject[0] != "$"

    def submit(self, client: ClientLink, msg: Submit, now: float) -> None:
        """A client submitted a QoS 1 job: store it (answered once JetStream has it)."""
        job_id = msg.job_id
        key = result_key(job_id)
        wait = self.waits.get(key)
        if not msg.enqueue and wait is not None and (wait.stored or wait.publishing):
            # (stored, or being stored, by a submit here: this call waits with it)
            if len(wait.calls) >= MAX_CALLS_PER_JOB:
                self._busy(client, msg, f"{MAX_CALLS_PER_JOB} calls already wait for job {job_id}")
            elif self.calls >= MAX_WAITING:
                self._busy(client, msg, f"{MAX_WAITING} calls wait for results at this leader")
            else:
                self._add_call(wait, client, msg.mid, submit=True)
            return
        if not msg.enqueue and self.calls >= MAX_WAITING:
            self._busy(client, msg, f"{MAX_WAITING} calls wait for results at this leader")
            return
        if self.store.away_for(time.monotonic()) > STORE_RETRY:
            self._busy(
                client, msg,
                f"the shared store is out of reach (NATS at {', '.join(self.config.shown_servers)}):"
                f" job {job_id} was not stored",
            )  # fmt: skip
            return
        if len(self._to_publish) >= MAX_UNPUBLISHED:
            self._busy(
                client, msg,
                f"{MAX_UNPUBLISHED} submits wait to be stored: the shared store is not keeping"
                f" up (NATS at {', '.join(self.config.shown_servers)})",
            )  # fmt: skip
            return
        wall = time.time()
        body = JobBody(
            job_id=job_id,
            subject=msg.subject,
            payload=_blob(msg.payload),
            headers=dict(msg.headers),
            max_attempts=msg.max_attempts,
            submitted=wall,
            expires=None if msg.timeout is None else wall + msg.timeout,
            due=wall + msg.delay if msg.delay else None,
            identity=client.identity,
            origin=self.token,
        ).encode()
        if len(body) + RECORD_OVERHEAD > self.store.max_payload:
            client.refuse(
                msg,
                ErrorCode.TOO_LARGE,
                f"job {job_id} is too large for the shared store: {len(body)} bytes, and the"
                f" nats-server takes messages of {self.store.max_payload} bytes at most (its"
                " max_payload)",
            )
            return
        if not msg.enqueue:
            wait = self._wait_for(key, job_id)
            self._add_call(wait, client, msg.mid, submit=True)
            wait.publishing = True
        self._to_publish.append(_Pending(client, msg, key, body))
        self._publish_wake.set()

    def _requeue(self, record: Mapping[str, Any]) -> str | None:
        """Submit dead letter ``record`` again, as a new job under its id, to the shared
        store (an operator's retry): its earlier result is deleted first."""
        if len(self._to_publish) >= MAX_UNPUBLISHED:
            return "the shared store is not keeping up with submits here"
        payload = record.get("payload")
        msg = Submit(
            mid=1,
            job_id=record["job_id"],
            subject=record["subject"],
            payload=payload if type(payload) is Encoded else Encoded.of(payload),
            headers=dict(record.get("headers") or {}),
            qos=1,
            max_attempts=record.get("max_attempts"),
            enqueue=True,
            wait_for_worker=True,
        )
        body = JobBody(
            job_id=msg.job_id, subject=msg.subject, payload=_blob(msg.payload),
            headers=msg.headers, max_attempts=msg.max_attempts, submitted=time.time(),
            expires=None, due=None, identity=record.get("identity"), origin=self.token,
        ).encode()  # fmt: skip
        key = result_key(msg.job_id)
        self._forget.append(key)
        self._retrying[key] = None
        self._to_publish.append(_Pending(_NOBODY, msg, key, body, force=True))
        self._publish_wake.set()
        return None

    def _routable(self, subject: str) -> bool:
        """Whether a worker of some leader serves ``subject`` (as of the last look at the
        stream's consumers in use, or here now)."""
        if subject in self._routes:
            return True
        known = any(subject_matches(p, subject) for p in self._served) or any(
            subject_matches(p, subject) for w in self.broker.workers for p in w.patterns
        )
        if known:  # (only what is served is remembered: a worker may come for the rest)
            if len(self._routes) >= 10_000:
                self._routes.clear()
            self._routes[subject] = None
        return known

    async def _refresh_routes(self) -> None:
        assert self.bridge is not None
        now = trio.current_time()
        if now - self._routes_at < 0.2:
            return
        self._routes_at = now
        try:
            self._served = set(await self.bridge.run(self.store.served_patterns))
        except Exception as exc:
            log.warning("listing the shared store's consumers failed: %s", exc)
            return
        self._routes.clear()

    def _refuse_pending(self, pending: _Pending, code: str, text: str) -> None:
        """Refuse a submit not stored (with the other submits that wait with it)."""
        msg = pending.msg
        if msg.enqueue:
            pending.client.refuse(
                msg, code, text, retry_after=1.0 if code == ErrorCode.BUSY else None
            )
            return
        wait = self.waits.get(pending.key)
        if wait is not None and not wait.stored:
            # (the calls that wait with it: the submits refused as it is, the result
            # queries that came while it was being stored told it is not there)
            for call in self._drop_calls(pending.key, lambda call: False):
                call.client.send(
                    Error(
                        mid=call.client.next_mid(), cid=call.mid, job_id=msg.job_id,
                        code=code if call.submit else ErrorCode.NOT_FOUND, message=text,
                        retry_after=1.0 if call.submit and code == ErrorCode.BUSY else None,
                    )
                )  # fmt: skip

    async def _route_later(self, batch: list[_Pending]) -> None:
        """Submits to subjects no worker was known to serve: stored once one is (a worker
        of another leader joined, its consumer is in use), refused ``no_route`` after the
        leader's ``route_grace`` (at least :data:`ROUTE_WAIT`)."""
        deadline = trio.current_time() + max(ROUTE_WAIT, self.broker.config.route_grace)
        count = len(batch)
        try:
            while True:
                await self._refresh_routes()
                routed = [p for p in batch if self._routable(p.msg.subject)]
                if routed:
                    self._to_publish.extend(routed)
                    self._publish_wake.set()
                    batch = [p for p in batch if not self._routable(p.msg.subject)]
                if not batch or trio.current_time() >= deadline:
                    break
                await trio.sleep(0.25)
            with self.batch():
                for pending in batch:
                    self._refuse_pending(
                        pending,
                        ErrorCode.NO_ROUTE,
                        f"no worker of any leader sharing this store serves"
                        f" {pending.msg.subject} (say wait_for_worker to queue it until one"
                        " does)",
                    )
        finally:
            self._routing -= count

    async def _publish_loop(self) -> None:
        bridge = self.bridge
        assert bridge is not None
        store = self.store
        while True:
            await self._publish_wake.wait()
            self._publish_wake = trio.Event()
            while self._to_publish:
                batch = self._to_publish[:PUBLISH_BATCH]
                del self._to_publish[:PUBLISH_BATCH]
                later = [
                    p
                    for p in batch
                    if not (p.msg.wait_for_worker or p.msg.delay or p.force)
                    and not self._routable(p.msg.subject)
                ]
                if later:  # (a worker may have joined another leader a moment ago)
                    moved = {id(p) for p in later}
                    batch = [p for p in batch if id(p) not in moved]
                    if self._routing + len(later) > MAX_UNPUBLISHED:
                        with self.batch():
                            for pending in later:
                                self._refuse_pending(
                                    pending, ErrorCode.NO_ROUTE,
                                    f"no worker of any leader serves {pending.msg.subject}",
                                )  # fmt: skip
                    else:
                        self._routing += len(later)
                        self._spawn(self._route_later, later)
                    if not batch:
                        continue
                if not store.connected:  # (held, nothing sent: see STORE_RETRY)
                    self._to_publish[:0] = self._expired(batch, "the shared store is out of reach")
                    await trio.sleep(RETRY_PAUSE)
                    continue
                if self._forget:  # (dead letters retried: their dead results go first)
                    forget, self._forget = self._forget, []
                    try:
                        await bridge.run(store.delete_results, forget)
                    except Exception as exc:
                        log.warning("deleting retried jobs' results failed: %s", exc)
                wall = time.time()
                jobs = [
                    Submitted(
                        p.key,
                        # (a retried dead letter is a new message: not a duplicate)
                        f"{p.msg.job_id}#{secrets.token_hex(4)}" if p.force else p.msg.job_id,
                        p.msg.subject,
                        p.body,
                        encode([p.client.identity if not p.force else None, wall]),
                        p.force,
                    )
                    for p in batch
                ]
                try:
                    answers = await bridge.run(store.submit_jobs, jobs)
                except Exception as exc:  # (the connection is down: every one failed)
                    answers = [exc] * len(batch)
                # A failure is tried again (the same claim and message id: never stored
                # twice) for STORE_RETRY seconds: a NATS node lost, its streams' leaders
                # elected again, takes a few; then the submit is answered busy.
                now = trio.current_time()
                again = []
                with self.batch():
                    for pending, answer in zip(batch, answers, strict=True):
                        if isinstance(answer, BaseException):
                            if pending.failed_at is None:
                                pending.failed_at = now
                            if now - pending.failed_at < STORE_RETRY:
                                again.append(pending)
                                continue
                        self._published(pending, answer)
                if again:
                    self._to_publish[:0] = again
                    await trio.sleep(RETRY_PAUSE)

    def _expired(self, batch: list[_Pending], why: str) -> list[_Pending]:
        """``batch`` less the submits held for :data:`STORE_RETRY` already, which are
        refused busy (nothing of them was sent)."""
        now = trio.current_time()
        kept = []
        with self.batch():
            for pending in batch:
                if pending.failed_at is None:
                    pending.failed_at = now
                if now - pending.failed_at < STORE_RETRY:
                    kept.append(pending)
                else:
                    self._refuse_pending(
                        pending, ErrorCode.BUSY,
                        f"{why} (NATS at {', '.join(self.config.shown_servers)}): job"
                        f" {pending.msg.job_id} was not stored",
                    )  # fmt: skip
        return kept

    def _published(self, pending: _Pending, answer: Any) -> None:
        client, msg, key = pending.client, pending.msg, pending.key
        if pending.force:
            self._retrying.pop(key, None)
        if isinstance(answer, BaseException):
            self.store_failures += 1
            if isinstance(answer, TimeoutError):
                text = (
                    f"the shared store did not answer in time: job {msg.job_id} may or may not"
                    " be stored (submit it again under the same id)"
                )
            else:
                text = f"the shared store did not take job {msg.job_id}: {answer}"
            self._refuse_pending(pending, ErrorCode.BUSY, text)
            return
        kind, claim = answer
        wait = self.waits.get(key)
        if kind == "duplicate":
            self.duplicates += 1
            owner = claim[0] if claim is not None else client.identity
            if owner != client.identity and not client.admin:
                text = f"job {msg.job_id} belongs to another identity: {client.identity!r} may not resubmit it"
                if msg.enqueue:
                    client.refuse(msg, ErrorCode.NOT_PERMITTED, text)
                    return
                mine = [
                    c
                    for c in (wait.calls if wait else ())
                    if c.client is client and c.mid == msg.mid
                ]
                self._drop_calls(key, lambda call: call not in mine)
                client.refuse(msg, ErrorCode.NOT_PERMITTED, text)
                wait = self.waits.get(key)
            if wait is not None:  # (accepted by another leader, or finished: looked for)
                wait.stored = True
                wait.publishing = False
                self._poll(key, wait)
        else:
            self.published += 1
            if wait is not None:
                wait.stored = True
                wait.publishing = False
        if msg.enqueue and not pending.force:
            client.send(Ack(mid=client.next_mid(), cid=msg.mid, job_id=msg.job_id))

    # ------------------------------------------------------------------ queries, cancels

    def query(self, client: ClientLink, msg: Query, now: float) -> None:
        """A client asks for a job's result: from the bucket (``wait``: or when it
        comes)."""
        if msg.wait:
            wait = self.waits.get(result_key(msg.job_id or ""))
            if wait is not None and len(wait.calls) >= MAX_CALLS_PER_JOB:
                self._busy(
                    client, msg, f"{MAX_CALLS_PER_JOB} calls already wait for job {msg.job_id}"
                )
                return
            if self.calls >= MAX_WAITING:
                self._busy(client, msg, f"{MAX_WAITING} calls wait for results at this leader")
                return
            if (
                wait is not None
                and wait.publishing
                and any(
                    call.client.identity == client.identity or client.admin for call in wait.calls
                )
            ):  # (being stored by a submit here, of its identity: it waits with it)
                self._add_call(wait, client, msg.mid, submit=False)
                return
        self._spawn(self._query, client, msg)

    async def _query(self, client: ClientLink, msg: Query) -> None:
        assert self.bridge is not None
        job_id = msg.job_id or ""
        key = result_key(job_id)
        retrying = key in self._retrying
        try:
            data, claim_data = await self.bridge.run(self.store.read_keys, [key, "c" + key])
        except Exception as exc:
            with self.batch():
                self._busy(client, msg, f"the shared store cannot be read: {exc}")
            return
        if retrying or key in self._retrying:  # (its old result goes: not an answer)
            data = None
        with self.batch():
            if data is not None:
                record = check_result(data)
                if record is not None:
                    self._reply(client, msg.mid, job_id, record)
                    return
                self._malformed(f"the stored result of job {job_id} is not one a leader wrote")
            claim = decode_claim(claim_data)
            if claim_data is None and data is None:
                client.refuse(
                    msg,
                    ErrorCode.NOT_FOUND,
                    f"no job {job_id}: unknown, or finished more than"
                    f" {self.config.results_ttl:g} s ago (the shared store's results_ttl)",
                )
            elif claim is not None and claim[0] != client.identity and not client.admin:
                client.refuse(
                    msg, ErrorCode.NOT_PERMITTED,
                    f"job {job_id} belongs to another identity: {client.identity!r} may not read it",
                )  # fmt: skip
            elif not msg.wait:
                client.refuse(msg, ErrorCode.NOT_FOUND, f"job {job_id} has not finished yet")
            elif self.calls >= MAX_WAITING:
                self._busy(client, msg, f"{MAX_WAITING} calls wait for results at this leader")
            else:
                wait = self._wait_for(key, job_id)
                self._add_call(wait, client, msg.mid, submit=False)
                wait.stored = True
                self._poll(key, wait)

    def cancel(self, client: ClientLink, msg: Cancel, now: float) -> None:
        """A client cancels a job: every leader hears of it; the one that holds it
        cancels it, and one that fetches it later ends it at once. A client that only
        stops waiting (``abandon``: its submit timed out) stops waiting here, and the job
        goes on: on a shared store a leader does not see who waits at the others (the
        job's own timeout, if it has one, ends it if no worker took it in time)."""
        key = result_key(msg.job_id)
        if msg.abandon:
            self._drop_calls(key, lambda call: call.client is not client)
            return
        reason = msg.reason or "cancelled by its client"
        self._core.append(
            (f"{self.config.prefix}.cancel",
             encode([msg.job_id, client.identity, client.admin, reason]), None)
        )  # fmt: skip
        self._out_wake.set()
        self._cancelled(msg.job_id, client.identity, client.admin, reason, now)

    def _cancelled(
        self, job_id: str, identity: str | None, admin: bool, reason: str, now: float
    ) -> None:
        cancels = self.cancels
        who, by_admin = cancels.pop(job_id, (frozenset(), False))
        if len(who) < 8:
            who = who | {identity}
        cancels[job_id] = (who, by_admin or admin)
        while len(cancels) > MAX_CANCELS:
            cancels.popitem(last=False)
        lease = self.leases.get(job_id)
        if lease is not None and (admin or identity == lease.job.identity):
            self.broker.cancel_job(job_id, reason, now)

    def _on_cancel(self, msg: Any) -> None:
        job_id, identity, admin, reason = decode(msg.data)
        if not (
            type(job_id) is str
            and (identity is None or type(identity) is str)
            and type(admin) is bool
            and type(reason) is str
        ):
            raise ValueError("not a cancel")
        self._cancelled(job_id, identity, admin, reason, trio.current_time())

    # ------------------------------------------------------------------ results here

    def _on_done(self, msg: Any) -> None:
        key = msg.subject.rpartition(".")[2]
        wait = self.waits.get(key)
        if wait is None:
            return
        if msg.data and check_result(msg.data) is not None:
            self._answer_key(key, msg.data)
        else:  # (too large to come inline, or not one a leader wrote: read the bucket)
            if msg.data:
                self._malformed(f"a result notification for job {wait.job_id} does not decode")
            self._poll(key, wait)

    def _answer_key(self, key: str, data: bytes) -> None:
        """The result of ``key`` is ``data``: answer every call waiting for it."""
        wait = self.waits.get(key)
        if wait is None:
            return
        record = check_result(data)
        for call in self._drop_calls(key, lambda call: False):
            if record is None:
                call.client.send(
                    Error(
                        mid=call.client.next_mid(), cid=call.mid, code=ErrorCode.INTERNAL,
                        job_id=wait.job_id,
                        message=f"the stored result of job {wait.job_id} is not one a leader wrote",
                    )
                )  # fmt: skip
            else:
                self._reply(call.client, call.mid, wait.job_id, record)

    def _reply(self, client: ClientLink, mid: int, job_id: str, record: dict[str, Any]) -> None:
        identity = record.get("i")
        if identity != client.identity and not client.admin:
            client.send(
                Error(
                    mid=client.next_mid(), cid=mid, code=ErrorCode.NOT_PERMITTED, job_id=job_id,
                    message=f"job {job_id} belongs to another identity: {client.identity!r} may not read it",
                )
            )  # fmt: skip
            return
        if record["st"] == "expired":
            client.send(
                Error(
                    mid=client.next_mid(), cid=mid, code=ErrorCode.TIMEOUT, job_id=job_id,
                    message=str(record.get("em") or f"job {job_id} expired"),
                )
            )  # fmt: skip
            return
        Broker._reply(client, mid, job_id, stored_of(record))

    def _on_progress(self, msg: Any) -> None:
        job_id, fraction, note = decode(msg.data)
        if not (
            type(job_id) is str
            and (fraction is None or (type(fraction) in (int, float) and 0 <= fraction <= 1))
            and (note is None or (type(note) is str and len(note) <= 1024))
        ):
            raise ValueError("not a progress")
        self._progress(job_id, fraction, note)

    def _progress(self, job_id: str, fraction: Any, note: Any) -> None:
        wait = self.waits.get(result_key(job_id))
        if wait is None:
            return
        for call in wait.calls:
            call.client.send(
                Progress(
                    mid=call.client.next_mid(), job_id=wait.job_id, fraction=fraction, note=note
                )
            )

    def _on_reconnect(self, _items: list[Any]) -> None:
        # Notifications sent while this leader was away from NATS are lost: the results of
        # every job waited for here are looked for in the bucket instead.
        for key, wait in self.waits.items():
            self._poll(key, wait)

    async def _poll_loop(self) -> None:
        bridge = self.bridge
        assert bridge is not None
        while True:
            await trio.sleep(POLL_INTERVAL)
            now = trio.current_time()
            due = []
            for key in self.polled:
                wait = self.waits.get(key)
                if (
                    wait is not None
                    and wait.poll_at is not None
                    and wait.poll_at <= now
                    and key not in self._retrying
                ):
                    due.append(key)
            for start in range(0, len(due), POLL_BATCH):
                batch = due[start : start + POLL_BATCH]
                try:
                    found = await bridge.run(self.store.read_keys, batch)
                except Exception as exc:
                    log.warning("reading results from the shared store failed: %s", exc)
                    break
                now = trio.current_time()
                with self.batch():
                    for key, data in zip(batch, found, strict=True):
                        wait = self.waits.get(key)
                        if wait is None:
                            continue
                        if data is not None and key not in self._retrying:
                            self._answer_key(key, data)
                        else:
                            wait.poll_every = min(POLL_MAX, wait.poll_every * 2)
                            wait.poll_at = now + wait.poll_every

    # ------------------------------------------------------------------ jobs for workers here

    async def _feeders_loop(self, nursery: trio.Nursery) -> None:
        """Keep a fetching task for each pattern this leader's workers serve; when the
        last worker of a pattern leaves, give back the jobs of it queued here."""
        while True:
            patterns: set[str] = set()
            for worker in self.broker.workers:
                patterns.update(worker.patterns)
            for pattern in patterns - self._feeders.keys():
                scope = trio.CancelScope()
                self._feeders[pattern] = scope
                nursery.start_soon(self._feed, pattern, scope)
            for pattern in self._feeders.keys() - patterns:
                self._feeders.pop(pattern).cancel()
                self._withdraw(pattern)
            with trio.move_on_after(0.2):
                await self._credit.wait()
            if self._credit.is_set():
                self._credit = trio.Event()

    def _withdraw(self, pattern: str) -> None:
        """Give back the jobs of ``pattern`` queued here (no worker here serves it now)."""
        with self.batch():
            for lease in [lease for lease in self.leases.values() if lease.pattern == pattern]:
                if self.broker.withdraw(lease.job.job_id):
                    self._release(lease.job.job_id)
                    self._give_back(lease, 0.0)

    def _free(self, pattern: str) -> int:
        """Jobs of ``pattern`` to fetch now: the credit of the workers serving it (a
        worker serving several patterns counts its share for each), less what is held
        here or on its way."""
        window = 0
        for worker in self.broker.workers:
            patterns = worker.patterns
            if pattern in patterns:
                window += math.ceil(worker.window / len(patterns))
        return window - self.held.get(pattern, 0) - self.incoming.get(pattern, 0)

    async def _feed(self, pattern: str, scope: trio.CancelScope) -> None:
        bridge = self.bridge
        nursery = self._nursery
        assert bridge is not None and nursery is not None
        store = self.store
        with scope:
            while True:
                try:
                    problem, _ack_wait = await bridge.run(store.ensure_consumer, pattern)
                except Exception as exc:
                    problem = f"cannot reach the shared store: {exc}"
                if problem is None:
                    self.problems.pop(pattern, None)
                    break
                if self.problems.get(pattern) != problem:
                    log.error("leader %s: %s", self.name, problem)
                self.problems[pattern] = problem
                await trio.sleep(5)

            def fetched(items: list[Fetched]) -> None:
                self.incoming[pattern] = self.incoming.get(pattern, 0) + len(items)
                nursery.start_soon(self._take, pattern, items)

            deliver = bridge.to_trio(fetched)
            bridge.loop.call_soon_threadsafe(store.set_deliver, pattern, deliver)
            try:
                while True:
                    if self._free(pattern) <= 0:
                        with trio.move_on_after(0.05):
                            await self._credit.wait()
                        continue
                    try:
                        await bridge.run(store.pull, pattern, self._free(pattern), PULL_EXPIRES)
                    except Exception as exc:
                        log.warning("fetching jobs of %s failed: %s", pattern, exc)
                        await trio.sleep(0.5)
            finally:
                bridge.loop.call_soon_threadsafe(store.drop_consumer, pattern)

    async def _take(self, pattern: str, fetched: list[Fetched]) -> None:
        """Messages fetched for ``pattern``: each runs here, unless it is not a job a
        leader wrote, its result is stored already (a run that finished on a leader that
        died before acknowledging it), it was cancelled, it expired, it is not due yet,
        or it is out of attempts."""
        assert self.bridge is not None
        try:
            self.fetched += len(fetched)
            jobs: list[tuple[Fetched, JobBody, str]] = []
            for item in fetched:
                job = decode_job(item.data)
                if job is None:
                    self._malformed("a message of the jobs stream is not a job: dropped (+TERM)")
                    self._acks.append((item.reply, b"+TERM"))
                else:
                    jobs.append((item, job, result_key(job.job_id)))
            # A job delivered before may have a result already, or deliveries given back.
            again = [entry for entry in jobs if entry[0].deliveries > 1]
            known: dict[str, tuple[bytes | None, int]] = {}
            if again:
                keys = [k for _i, _j, key in again for k in (key, "g" + key)]
                try:
                    values = await self.bridge.run(self.store.read_keys, keys)
                except Exception as exc:
                    log.warning("reading results from the shared store failed: %s", exc)
                    for item, _job, _key in again:
                        self._acks.append((item.reply, self.store.nak(1.0)))
                    jobs = [entry for entry in jobs if entry[0].deliveries == 1]
                    values = []
                for n, (_item, _job, key) in enumerate(again):
                    if 2 * n + 1 < len(values):
                        known[key] = (values[2 * n], _count(values[2 * n + 1]))
            now = trio.current_time()
            wall = time.time()
            with self.batch():
                for item, job, key in jobs:
                    stored, givebacks = known.get(key, (None, 0))
                    try:
                        self._take_one(pattern, item, job, key, stored, givebacks, now, wall)
                    except Exception:
                        log.exception("job %s could not be taken: given back", job.job_id)
                        self._acks.append((item.reply, self.store.nak(1.0)))
        finally:
            self.incoming[pattern] = self.incoming.get(pattern, 0) - len(fetched)
            self._out_wake.set()

    def _take_one(
        self,
        pattern: str,
        item: Fetched,
        job: JobBody,
        key: str,
        stored: bytes | None,
        givebacks: int,
        now: float,
        wall: float,
    ) -> None:
        job_id = job.job_id
        if stored is not None and check_result(stored) is not None:
            # done before (its leader died before acknowledging): answered again, not run
            self._acks.append((item.reply, b"+ACK"))
            self._notify(job.origin, key, stored)
            return
        held = self.leases.get(job_id)
        if held is not None:  # (redelivered to us while we hold it: the newest reply counts)
            held.reply = item.reply
            held.deliveries = item.deliveries
            return
        lease = Lease(job, key, pattern, item.reply, item.deliveries, givebacks)
        if job.due is not None and job.due > wall + 0.01:  # (not due yet: no attempt)
            self._give_back(lease, job.due - wall)
            return
        cancel = self.cancels.get(job_id)
        if cancel is not None and (cancel[1] or job.identity in cancel[0]):
            self._store(lease, {"ok": False, "st": "cancelled", "et": "Cancelled",
                                "em": "cancelled by its client", "a": self._attempts(lease)})  # fmt: skip
            return
        if job.expires is not None and job.expires <= wall:
            self._store(lease, {"ok": False, "st": "expired", "et": "Timeout",
                                "em": f"job {job_id} expired before a worker took it (its timeout passed)",
                                "a": self._attempts(lease)})  # fmt: skip
            return
        before = self._attempts(lease)
        max_attempts = job.max_attempts or self.broker.config.max_attempts
        if before >= max_attempts:
            record = {
                "job_id": job_id, "subject": job.subject, "payload": _value(job.payload),
                "headers": job.headers, "attempts": before, "error_type": "LeaderLost",
                "error_message": f"its {before} attempts were held by leaders that stopped",
                "traceback": None, "worker": None, "dead_at": wall,
            }  # fmt: skip
            if job.identity is not None:
                record["identity"] = job.identity
            self._dead_letter(lease, record)
            return
        refusal = self.broker.lease(
            self.lessee,
            job_id=job_id,
            subject=job.subject,
            payload=None if job.payload is None else Encoded(job.payload),
            headers=job.headers,
            max_attempts=job.max_attempts,
            attempt=before,
            submitted_at=now - max(0.0, wall - job.submitted),
            expires_at=None if job.expires is None else now + (job.expires - wall),
            identity=job.identity,
            now=now,
        )
        if refusal is not None:  # (full, or no worker here serves it now: no attempt)
            self._give_back(lease, 1.0 if "full" in refusal else 0.0)
            return
        self.leases[job_id] = lease
        self.held[pattern] = self.held.get(pattern, 0) + 1

    @staticmethod
    def _attempts(lease: Lease) -> int:
        """The attempts ``lease``'s job had before this delivery: its deliveries less
        those given back unrun (one held by a leader that died counts: it may have run)."""
        return max(0, lease.deliveries - 1 - lease.givebacks)

    def _give_back(self, lease: Lease, delay: float) -> None:
        """Hand ``lease``'s message back to JetStream unrun (redelivered after ``delay``),
        its count of such deliveries written first, so that no attempt is counted for it."""
        self.given_back += 1
        self._givebacks.append(
            ("g" + lease.key, str(lease.givebacks + 1).encode(), lease.reply, self.store.nak(delay))
        )
        self._out_wake.set()

    def _release(self, job_id: str) -> Lease | None:
        lease = self.leases.pop(job_id, None)
        if lease is not None:
            left = self.held.get(lease.pattern, 1) - 1
            if left > 0:
                self.held[lease.pattern] = left
            else:
                self.held.pop(lease.pattern, None)
            self._credit.set()
        return lease

    def _lessee_item(self, item: list[Any]) -> None:
        self._lessee_message(message_of(item))

    def _lessee_message(self, msg: Any) -> None:
        """What the broker says of a leased job: its result, its progress, its expiry."""
        kind = type(msg)
        if kind is Result:
            lease = self._release(msg.job_id)
            if lease is None:
                return
            st = "cancelled" if msg.error_code == ErrorCode.CANCELLED else "done"
            record = {
                "ok": msg.ok, "p": _blob(msg.payload), "et": msg.error_type,
                "em": msg.error_message, "a": msg.attempts, "tb": msg.traceback,
                "f": msg.final, "st": st,
            }  # fmt: skip
            stored = self.broker.finished.peek(msg.job_id)
            if stored is not None:
                record["w"] = stored.worker
            self._store(lease, record)
        elif kind is Progress:
            lease = self.leases.get(msg.job_id)
            if lease is None:
                return
            self._acks.append((lease.reply, b"+WPI"))
            self._out_wake.set()
            if lease.job.origin == self.token:
                self._progress(msg.job_id, msg.fraction, msg.note)
            elif lease.job.origin:
                self._core.append(
                    (f"{self.config.prefix}.progress.{lease.job.origin}",
                     encode([msg.job_id, msg.fraction, msg.note]), None)
                )  # fmt: skip
        elif kind is Error:
            lease = self._release(msg.job_id or "")
            if lease is None:
                return
            expires = lease.job.expires
            if msg.code == ErrorCode.TIMEOUT and expires is not None and expires <= time.time():
                self._store(lease, {"ok": False, "st": "expired", "et": "Timeout",
                                    "em": msg.message, "a": self._attempts(lease)})  # fmt: skip
            else:  # (waited here too long for a worker: another leader may take it)
                self._give_back(lease, 0.0)

    def _lease_failed(
        self, job: JobRecord, delay: float | None, record: dict[str, Any] | None
    ) -> None:
        lease = self._release(job.job_id)
        if lease is None:
            return
        if delay is not None:  # (an attempt failed: JetStream redelivers it, to any leader)
            self.retried += 1
            self._acks.append((lease.reply, self.store.nak(delay)))
        else:
            assert record is not None
            record = dict(record)
            record["payload"] = _value(lease.job.payload)
            self._dead_letter(lease, record)
        self._out_wake.set()

    def _dead_letter(self, lease: Lease, record: dict[str, Any]) -> None:
        self.dead_lettered += 1
        if record.get("error_type") == "LeaderLost":  # (not through the broker: kept here)
            self.broker.retries.keep_dead_letter(dict(record), len(lease.job.payload or b"") + 256)
        death = f"dead-{lease.key}-{lease.deliveries}-{secrets.token_hex(3)}"
        self._dead.append((death[:500], lease.job.subject, encode(record)))
        attempts = record.get("attempts", 0)
        self._store(
            lease,
            {
                "ok": False, "st": "dead", "et": record.get("error_type"),
                "em": f"dead-lettered after {attempts} attempts: {record.get('error_message')}",
                "a": attempts, "tb": record.get("traceback"), "w": record.get("worker"),
            },
        )  # fmt: skip
        self.broker.pubsub.route("$dlq." + lease.job.subject, record, {})

    def _store(self, lease: Lease, record: dict[str, Any]) -> None:
        """Store ``lease``'s result, then acknowledge its message and tell its origin. A
        result too large for the store is stored as a failure that says so."""
        record["s"] = lease.job.subject
        if lease.job.identity is not None:
            record["i"] = lease.job.identity
        data = encode(record)
        limit = self.store.max_payload - RECORD_OVERHEAD
        if len(data) > limit:
            record = {
                "ok": False, "st": "done", "f": True, "et": "TooLarge",
                "em": f"the result of job {lease.job.job_id} is {len(data)} bytes: over what the"
                f" shared store takes ({limit} bytes: the nats-server's max_payload less"
                f" {RECORD_OVERHEAD})",
                "a": record.get("a"), "s": record["s"], "i": record.get("i"), "w": record.get("w"),
            }  # fmt: skip
            data = encode(record)
        self._results.append((lease, data))
        self._out_wake.set()

    def _notify(self, origin: str, key: str, data: bytes) -> None:
        if not origin:
            return
        if origin == self.token:
            self._answer_key(key, data)
            return
        inline = data if len(data) <= INLINE_RESULT else b""
        self._core.append((self.config.done_subject(origin, key), inline, None))

    async def _keep_loop(self) -> None:
        """Tell JetStream, every third of AckWait (the shortest of this leader's consumers'),
        that the messages held here are alive: in a crossing of its own, so that no slow
        write delays it."""
        bridge = self.bridge
        assert bridge is not None
        while True:
            ack_wait = min([self.config.ack_wait, *self.store.ack_waits.values()])
            await trio.sleep(ack_wait / 3)
            alive = [(lease.reply, b"+WPI") for lease in self.leases.values()]
            alive += [(lease.reply, b"+WPI") for lease in self._unstored]
            if alive:
                try:
                    await bridge.run(self.store.settle, alive)
                except Exception as exc:
                    log.warning("telling the shared store that jobs are alive failed: %s", exc)

    async def _out_loop(self) -> None:
        while True:
            if self._unstored:  # (results to try storing again, after a pause)
                with trio.move_on_after(RETRY_PAUSE):
                    await self._out_wake.wait()
                self._results.extend((lease, data) for lease, (data, _t) in self._unstored.items())
            else:
                await self._out_wake.wait()
            self._out_wake = trio.Event()
            await self._flush_out()

    async def _flush_out(self) -> None:
        bridge = self.bridge
        assert bridge is not None
        store = self.store
        while self._results or self._dead or self._acks or self._core or self._givebacks:
            givebacks, self._givebacks = self._givebacks, []
            if givebacks:
                try:
                    await bridge.run(store.put_values, [(k, v) for k, v, _r, _n in givebacks])
                except Exception as exc:  # (then that delivery counts as an attempt)
                    log.warning("counting %d jobs given back failed: %s", len(givebacks), exc)
                self._acks.extend((reply, nak) for _k, _v, reply, nak in givebacks)
            dead, self._dead = self._dead, []
            if dead:
                try:
                    await bridge.run(store.dead_letter, dead)
                except Exception as exc:  # (the result still ends the job: logged)
                    log.error("storing %d dead letters failed: %s", len(dead), exc)
            results = self._results[:OUT_BATCH]
            del self._results[:OUT_BATCH]
            if results:
                try:
                    earlier = await bridge.run(
                        store.put_results, [(lease.key, data) for lease, data in results]
                    )
                except Exception as exc:
                    earlier = [exc] * len(results)
                now = trio.current_time()
                with self.batch():
                    for (lease, data), before in zip(results, earlier, strict=True):
                        if isinstance(before, BaseException):
                            # Not stored: tried again for STORE_RETRY seconds (the message
                            # kept alive meanwhile), then left: not acknowledged, JetStream
                            # gives it to a leader again after AckWait (it runs again).
                            self.store_failures += 1
                            first = self._unstored.pop(lease, (data, now))[1]
                            if now - first < STORE_RETRY:
                                self._unstored[lease] = (data, first)
                            else:
                                log.error(
                                    "storing the result of job %s failed: %s",
                                    lease.job.job_id, before,
                                )  # fmt: skip
                            continue
                        self._unstored.pop(lease, None)
                        self.completed += 1
                        self._acks.append((lease.reply, b"+ACK"))
                        if before is not None and check_result(before) is not None:
                            data = before  # (the first result stored wins)
                        self._notify(lease.job.origin, lease.key, data)
            acks, self._acks = self._acks, []
            core, self._core = self._core, []
            if acks or core:
                try:
                    await bridge.run(_send_all, store, acks, core)
                except Exception as exc:
                    log.warning("acknowledgements to the shared store failed: %s", exc)

    # ------------------------------------------------------------------ publish/subscribe

    def _forward(self, subject: str, payload: Any, headers: dict[str, str]) -> None:
        data = _blob(payload) or b""
        if len(self._core) >= MAX_UNSENT or len(data) + RECORD_OVERHEAD > self.store.max_payload:
            # (NATS is away, or it is over NATS's max_payload: the other leaders' subscribers
            # miss it; at most once, as pub/sub is)
            self.forwards_dropped += 1
            self._malformed(
                f"a message to {subject} was not passed to the other leaders ({len(data)} bytes;"
                f" NATS takes {self.store.max_payload})"
            )
            return
        self._core.append((f"{self.config.prefix}.pub.{subject}", data, headers or None))
        self._out_wake.set()

    def _on_publish(self, msg: Any) -> None:
        subject = msg.subject[len(self.config.prefix) + 5 :]
        if not is_valid_subject(subject) or subject[0] == "$":  # (the system's are local)
            raise ValueError(f"not a subject to pass on: {subject!r}")
        headers = msg.headers or {}
        if not all(type(k) is str and type(v) is str for k, v in headers.items()):
            raise ValueError("bad headers")
        payload = Encoded(bytes(msg.data)) if msg.data else None
        self.broker.pubsub.route(subject, payload, dict(headers))

    def _spawn(self, fn: Callable[..., Any], *args: Any) -> None:
        assert self._nursery is not None
        self._nursery.start_soon(_logged, fn, *args)


async def _logged(fn: Callable[..., Any], *args: Any) -> None:
    try:
        await fn(*args)
    except Exception:
        log.exception("a shared-store task failed")


async def _send_all(
    store: JetStreamStore,
    acks: list[tuple[str, bytes]],
    core: list[tuple[str, bytes, dict[str, str] | None]],
) -> None:
    await store.settle(acks)
    await store.publish_core(core)


def _value(data: bytes | None) -> Any:
    if data is None:
        return None
    try:
        return decode(data)
    except Exception:
        return None


def _dead_record(data: bytes) -> dict[str, Any] | None:
    """A dead letter's record from the dead-letter stream (None: not one a leader wrote)."""
    try:
        record = decode(data)
    except Exception:
        return None
    if (
        type(record) is not dict
        or type(record.get("job_id")) is not str
        or not is_valid_subject(record.get("subject"))
        or not all(type(k) is str for k in record)
    ):
        return None
    return record


def _count(data: bytes | None) -> int:
    """A count written in the bucket (0 when there is none, or it is not one)."""
    if data is None or len(data) > 12:
        return 0
    try:
        return max(0, int(data))
    except ValueError:
        return 0


__all__ = ["SharedJobs", "StoreError"]
