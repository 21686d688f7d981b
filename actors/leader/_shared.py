"""A leader's part in a cluster of leaders sharing one job store on NATS JetStream (the
trio side; the NATS side is :mod:`actors.leader._jetstream`).

With ``--store nats://...`` the leader keeps no job of its own for long: a QoS 1 submit is
published to the shared jobs stream and answered "accepted" once JetStream acknowledged it;
this leader's workers take jobs from the stream (whoever accepted them) as fast as their
credit allows; the result is stored in the shared results bucket and sent to the leader
the submitting client waits at. A leader that dies holds nothing that is not in JetStream:
its unacknowledged messages go to the other leaders after the consumers' AckWait, and its
clients, reconnecting to another leader, submit again under the same ids and get the
results (``docs/scale-out.md``).

What stays local: QoS 0 jobs (never stored), retained messages, subscriptions (messages
published at one leader are passed to every other one over core NATS).

Every NATS operation is a call across :class:`runtime.AsyncioBridge`, once per batch: a
task per direction drains what the broker's handlers queued (submits to publish, results
to store, acknowledgements, notifications) and crosses once for all of it.
"""

from __future__ import annotations

import logging
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
    message_of,
    subject_matches,
)
from runtime import AsyncioBridge, open_asyncio_bridge

from ._broker import Broker
from ._jetstream import (
    INLINE_RESULT,
    Fetched,
    JetStreamStore,
    StoreConfig,
    StoreError,
    decode,
    encode,
    leader_token,
    result_key,
)
from ._jobs import CancelledResult, DeadResult, JobRecord, StoredResult
from ._links import ClientLink

log = logging.getLogger("actors.leader.shared")

#: Submits published to JetStream per crossing, at most.
PUBLISH_BATCH = 512
#: Results, acknowledgements and notifications per crossing, at most.
OUT_BATCH = 1024
#: Seconds between two polls of the results of jobs waited for here that another leader
#: accepted (a client that came over from a leader that died).
POLL_INTERVAL = 0.25
#: Jobs polled per crossing.
POLL_BATCH = 512
#: Cancelled job ids remembered (each leader hears of every cancel; the oldest go first).
MAX_CANCELS = 10_000
#: Submits waiting at one leader for a result, at most (further ones are answered busy).
MAX_WAITING = 100_000
#: Submits accepted here and not yet handed to JetStream, at most (more: busy).
MAX_UNPUBLISHED = 10_000
#: Core NATS messages (published messages for the other leaders, notifications) waiting to
#: be sent, at most: published messages beyond it are not passed on (counted).
MAX_UNSENT = 100_000
#: Seconds a submit to a subject no worker of any leader serves waits for one, at least.
ROUTE_WAIT = 2.0
#: Seconds a pull request waits for messages before the server ends it.
PULL_EXPIRES = 1.0


@attrs.define(eq=False)
class Lease:
    """A job message this leader fetched and holds (queued for or run by its workers)."""

    job_id: str
    key: str
    pattern: str
    reply: str
    deliveries: int
    origin: str
    subject: str
    identity: str | None
    payload: bytes | None


@attrs.define(eq=False)
class _Wait:
    job_id: str
    calls: list[tuple[ClientLink, int]] = attrs.Factory(list)


#: The client of submits nobody waits for (an operator's retry of a dead letter).
_NOBODY = ClientLink("nobody", lambda message: None)


def stored_of(record: dict[str, Any]) -> StoredResult:
    """The broker's result of a stored result record (see :meth:`SharedJobs._record`)."""
    kind = {"dead": DeadResult, "cancelled": CancelledResult}.get(
        record.get("st", ""), StoredResult
    )
    payload = record.get("p")
    return kind(
        bool(record.get("ok")),
        None if payload is None else Encoded(payload),
        record.get("et"),
        record.get("em"),
        int(record.get("a") or 0),
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
        #: Submits waiting here for a result, by result key.
        self.waits: dict[str, _Wait] = {}
        #: Keys of waits for jobs accepted by another leader: polled in the results bucket.
        self.adopted: dict[str, None] = {}
        #: Messages held here, by job id.
        self.leases: dict[str, Lease] = {}
        self.held: dict[str, int] = {}  # leases by worker pattern
        #: Messages pulled for a pattern that its _take has not registered yet.
        self.incoming: dict[str, int] = {}
        self.cancels: OrderedDict[str, tuple[str | None, bool]] = OrderedDict()
        self.problems: dict[str, str] = {}  # why a pattern's consumer could not be made
        self._to_publish: list[tuple[ClientLink, Submit, str, bytes]] = []
        self._forget: list[str] = []  # results to delete before what is published next
        self._retrying: dict[str, None] = {}  # their keys, until deleted: not read
        self._publish_wake = trio.Event()
        self._results: list[tuple[Lease, dict[str, Any]]] = []
        self._dead: list[tuple[str, str, bytes]] = []
        self._acks: list[tuple[str, bytes]] = []
        self._core: list[tuple[str, bytes, dict[str, str] | None]] = []
        self._out_wake = trio.Event()
        self._credit = trio.Event()
        self._feeders: dict[str, trio.CancelScope] = {}
        self._served: set[str] = set()  # patterns with a consumer (any leader's)
        self._routes: dict[str, None] = {}  # subjects known routable (cleared at each look)
        self._routes_at = float("-inf")
        self._routing = 0  # submits waiting for a route (see _route_later)
        self._nursery: trio.Nursery | None = None
        self.lessee = ClientLink(
            f"store:{self.token}", self._lessee_message, send_item=self._lessee_item
        )
        # counters
        self.published = 0
        self.duplicates = 0
        self.fetched = 0
        self.completed = 0
        self.retried = 0
        self.dead_lettered = 0
        self.store_failures = 0
        self.forwards_dropped = 0

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
            config = self.config
            prefix = config.prefix
            try:
                await bridge.run(
                    store.subscribe,
                    f"{prefix}.done.{self.token}.>",
                    bridge.to_trio(self._batched(self._on_done)),
                )
                await bridge.run(
                    store.subscribe,
                    f"{prefix}.progress.{self.token}",
                    bridge.to_trio(self._batched(self._on_progress)),
                )
                await bridge.run(
                    store.subscribe,
                    f"{prefix}.cancel",
                    bridge.to_trio(self._batched(self._on_cancel)),
                )
                await bridge.run(
                    store.subscribe,
                    f"{prefix}.pub.>",
                    bridge.to_trio(self._batched(self._on_publish)),
                )
                reconnected = bridge.to_trio(self._on_reconnect)
                store.on_reconnect = lambda: reconnected(None)
                self.broker.lease_failed = self._lease_failed
                self.broker.requeue_shared = self._requeue
                self.broker.pubsub.forward = self._forward
                log.info(
                    "leader %s: jobs shared on NATS JetStream %s (nats-server %s, %d replicas,"
                    " stream %s)",
                    self.name,
                    ", ".join(config.servers),
                    store.version,
                    config.replicas,
                    config.jobs_stream,
                )
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
                self._acks.extend((lease.reply, store.nak(0.0)) for lease in self.leases.values())
                with trio.CancelScope(shield=True):
                    with trio.move_on_after(5):
                        await self._flush_out()
                    with trio.move_on_after(5):
                        await bridge.run(store.close)

    def _batched(self, fn: Callable[[list[Any]], None]) -> Callable[[list[Any]], None]:
        def batched(items: list[Any]) -> None:
            with self.batch():
                fn(items)

        return batched

    def stats(self) -> dict[str, Any]:
        """What the store side has done, for the leader's statistics."""
        return {
            "kind": "jetstream",
            "servers": list(self.config.servers),
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
            "dead_lettered": self.dead_lettered,
            "store_failures": self.store_failures,
            "forwards_dropped": self.forwards_dropped,
            "held": len(self.leases),
            "waiting": len(self.waits),
            "problems": dict(self.problems),
        }

    # ------------------------------------------------------------------ submits

    def takes(self, msg: Submit) -> bool:
        """Whether a submit goes to the shared store (QoS 1, not a system subject)."""
        return msg.qos == 1 and msg.subject[0] != "$"

    def submit(self, client: ClientLink, msg: Submit, now: float) -> None:
        """A client submitted a QoS 1 job: publish it (answered once JetStream has it)."""
        job_id = msg.job_id
        key = result_key(job_id)
        wait = self.waits.get(key)
        if wait is not None and not msg.enqueue:  # (in flight here already: one more call)
            if len(wait.calls) >= 1000:
                client.refuse(msg, ErrorCode.BUSY, f"1000 submits already wait for job {job_id}",
                              retry_after=1.0)  # fmt: skip
                return
            wait.calls.append((client, msg.mid))
            client.waiting[job_id] = None
            return
        if len(self.waits) >= MAX_WAITING:
            client.refuse(
                msg, ErrorCode.BUSY,
                f"{MAX_WAITING} submits wait for results at this leader", retry_after=1.0,
            )  # fmt: skip
            return
        if len(self._to_publish) >= MAX_UNPUBLISHED:
            client.refuse(
                msg, ErrorCode.BUSY,
                f"{MAX_UNPUBLISHED} submits wait to be stored: the shared store is not keeping"
                f" up (NATS at {', '.join(self.config.servers)})", retry_after=1.0,
            )  # fmt: skip
            return
        wall = time.time()
        body = {
            "id": job_id,
            "s": msg.subject,
            "p": _bytes(msg.payload),
            "h": dict(msg.headers) if msg.headers else None,
            "ma": msg.max_attempts,
            "t": wall,
            "x": None if msg.timeout is None else wall + msg.timeout,
            "d": wall + msg.delay if msg.delay else None,
            "i": client.identity,
            "o": self.token,
        }
        data = encode(body)
        if len(data) + 512 > self.store.max_payload:
            client.refuse(
                msg,
                ErrorCode.TOO_LARGE,
                f"job {job_id} is too large for the shared store: {len(data)} bytes, and the"
                f" nats-server takes messages of {self.store.max_payload} bytes at most (its"
                " max_payload)",
            )
            return
        if not msg.enqueue:
            self._wait(key, job_id, client, msg.mid)
        self._to_publish.append((client, msg, key, data))
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
        wall = time.time()
        body = {
            "id": msg.job_id, "s": msg.subject, "p": _bytes(msg.payload), "h": msg.headers or None,
            "ma": msg.max_attempts, "t": wall, "x": None, "d": None,
            "i": record.get("identity"), "o": self.token,
        }  # fmt: skip
        key = result_key(msg.job_id)
        self._forget.append(key)
        self._retrying[key] = None
        self._to_publish.append((_NOBODY, msg, key, encode(body)))
        self._publish_wake.set()
        return None

    def _wait(self, key: str, job_id: str, client: ClientLink, mid: int) -> _Wait:
        wait = self.waits.get(key)
        if wait is None:
            wait = self.waits[key] = _Wait(job_id)
        wait.calls.append((client, mid))
        client.waiting[job_id] = None
        return wait

    def _unwait(self, key: str, client: ClientLink, mid: int) -> None:
        wait = self.waits.get(key)
        if wait is None:
            return
        wait.calls = [c for c in wait.calls if c != (client, mid)]
        if not wait.calls:
            del self.waits[key]
            self.adopted.pop(key, None)

    def _routable(self, subject: str) -> bool:
        """Whether a worker of some leader serves ``subject`` (as of the last look at the
        stream's consumers, or here now)."""
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

    def _no_route(self, batch: list[Any]) -> None:
        """Refuse the submits of ``batch`` ``no_route``."""
        for entry in batch:
            client, msg, key, _data = entry
            if not msg.enqueue:
                self._unwait(key, client, msg.mid)
                client.waiting.pop(msg.job_id, None)
            client.refuse(
                msg,
                ErrorCode.NO_ROUTE,
                f"no worker of any leader sharing this store serves {msg.subject} (say"
                " wait_for_worker to queue it until one does)",
            )

    async def _route_later(self, batch: list[Any]) -> None:
        """Submits to subjects no worker was known to serve: published once one is (a
        worker of another leader joined, its consumer is listed), refused ``no_route``
        after the leader's ``route_grace`` (at least :data:`ROUTE_WAIT`)."""
        deadline = trio.current_time() + max(ROUTE_WAIT, self.broker.config.route_grace)
        count = len(batch)
        try:
            await self._wait_for_routes(batch, deadline)
        finally:
            self._routing -= count

    async def _wait_for_routes(self, batch: list[Any], deadline: float) -> None:
        while True:
            await self._refresh_routes()
            routed = [entry for entry in batch if self._routable(entry[1].subject)]
            if routed:
                self._to_publish.extend(routed)
                self._publish_wake.set()
                moved = {id(entry) for entry in routed}
                batch = [entry for entry in batch if id(entry) not in moved]
            if not batch or trio.current_time() >= deadline:
                break
            await trio.sleep(0.25)
        self._no_route(batch)

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
                    entry
                    for entry in batch
                    if not (entry[1].wait_for_worker or entry[1].delay)
                    and not self._routable(entry[1].subject)
                ]
                if later:  # (a worker may have joined another leader a moment ago)
                    moved = {id(entry) for entry in later}
                    batch = [entry for entry in batch if id(entry) not in moved]
                    if self._routing + len(later) > MAX_UNPUBLISHED:
                        self._no_route(later)
                    else:
                        self._routing += len(later)
                        self._nursery_soon(self._route_later, later)
                    if not batch:
                        continue
                jobs = [
                    # (a retried dead letter is a new message: not a duplicate of the first)
                    (msg.job_id if c is not _NOBODY else f"{msg.job_id}#{secrets.token_hex(4)}",
                     msg.subject, data)
                    for c, msg, _k, data in batch
                ]  # fmt: skip
                if self._forget:  # (dead letters retried: their dead results go first)
                    forget, self._forget = self._forget, []
                    try:
                        await bridge.run(store.delete_results, forget)
                    except Exception as exc:
                        log.warning("deleting retried jobs' results failed: %s", exc)
                    for key in forget:
                        self._retrying.pop(key, None)
                try:
                    answers = await bridge.run(store.publish_jobs, jobs)
                except Exception as exc:  # (the connection is down: every one refused)
                    answers = [exc] * len(batch)
                with self.batch():
                    for (client, msg, key, _data), answer in zip(batch, answers, strict=True):
                        self._published(client, msg, key, answer)

    def _published(self, client: Any, msg: Submit, key: str, answer: Any) -> None:
        if isinstance(answer, BaseException):
            self.store_failures += 1
            if not msg.enqueue:
                self._unwait(key, client, msg.mid)
                client.waiting.pop(msg.job_id, None)
            client.refuse(
                msg,
                ErrorCode.BUSY,
                f"the shared store did not take job {msg.job_id}:"
                f" {answer or type(answer).__name__} (NATS at {', '.join(self.config.servers)})",
                retry_after=1.0,
            )
            return
        if answer:
            self.published += 1
        else:  # stored before (a resubmit): maybe by another leader, maybe finished
            self.duplicates += 1
            if not msg.enqueue and key in self.waits:
                self.adopted[key] = None
        if msg.enqueue:
            client.send(Ack(mid=client.next_mid(), cid=msg.mid, job_id=msg.job_id))

    def client_left(self, client: ClientLink) -> None:
        """A client went away: its submits stop waiting (the jobs go on)."""
        for job_id in list(client.waiting):
            wait = self.waits.get(result_key(job_id))
            if wait is None:
                continue
            wait.calls = [c for c in wait.calls if c[0] is not client]
            if not wait.calls:
                key = result_key(job_id)
                del self.waits[key]
                self.adopted.pop(key, None)

    def query(self, client: ClientLink, msg: Query, now: float) -> None:
        """A client asks for a job's result: from the results bucket (``wait``: or when it
        comes)."""
        job_id = msg.job_id or ""
        key = result_key(job_id)
        if msg.wait:
            self._wait(key, job_id, client, msg.mid)
        self._nursery_soon(self._query, client, msg, key)

    async def _query(self, client: ClientLink, msg: Query, key: str) -> None:
        assert self.bridge is not None
        try:
            (data,) = await self.bridge.run(self.store.get_results, [key])
        except Exception as exc:
            if msg.wait:
                self._unwait(key, client, msg.mid)
            client.refuse(msg, ErrorCode.BUSY, f"the shared store cannot be read: {exc}",
                          retry_after=1.0)  # fmt: skip
            return
        if key in self._retrying:  # (its old result goes: not an answer)
            data = None
        if data is not None:
            self._answer_waits(key, data)
            if not msg.wait:
                self._reply(client, msg.mid, msg.job_id or "", decode(data))
            return
        if msg.wait:
            self.adopted[key] = None  # (polled: it may be accepted anywhere)
            return
        client.refuse(
            msg,
            ErrorCode.NOT_FOUND,
            f"job {msg.job_id} has no result yet (or finished more than"
            f" {self.config.results_ttl:g} s ago: the shared store's results_ttl)",
        )

    def cancel(self, client: ClientLink, msg: Cancel, now: float) -> None:
        """A client cancels a job: every leader hears of it; the one that holds it
        cancels it, and one that fetches it later ends it at once."""
        reason = msg.reason or "cancelled by its client"
        record = encode([msg.job_id, client.identity, client.admin, reason])
        self._core.append((f"{self.config.prefix}.cancel", record, None))
        self._out_wake.set()
        self._cancelled(msg.job_id, client.identity, client.admin, reason, now)

    def _cancelled(
        self, job_id: str, identity: str | None, admin: bool, reason: str, now: float
    ) -> None:
        cancels = self.cancels
        cancels[job_id] = (identity, admin)
        cancels.move_to_end(job_id)
        while len(cancels) > MAX_CANCELS:
            cancels.popitem(last=False)
        lease = self.leases.get(job_id)
        if lease is not None and (admin or identity == lease.identity):
            self.broker.cancel_job(job_id, reason, now)

    def _on_cancel(self, msgs: list[Any]) -> None:
        now = trio.current_time()
        for msg in msgs:
            try:
                job_id, identity, admin, reason = decode(msg.data)
                self._cancelled(str(job_id), identity, bool(admin), str(reason), now)
            except Exception:
                log.warning("a cancel on the store that does not decode was ignored")

    # ------------------------------------------------------------------ results here

    def _on_done(self, msgs: list[Any]) -> None:
        missing = []
        for msg in msgs:
            key = msg.subject.rpartition(".")[2]
            if key not in self.waits:
                continue
            if msg.data:
                self._answer_waits(key, msg.data)
            else:  # (too large to come inline: read from the bucket)
                missing.append(key)
        for key in missing:
            self.adopted[key] = None

    def _answer_waits(self, key: str, data: bytes) -> None:
        wait = self.waits.pop(key, None)
        self.adopted.pop(key, None)
        if wait is None:
            return
        try:
            record = decode(data)
        except Exception:
            log.exception("the stored result of job %s does not decode", wait.job_id)
            return
        for client, mid in wait.calls:
            client.waiting.pop(wait.job_id, None)
            self._reply(client, mid, wait.job_id, record)

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
        if record.get("st") == "expired":
            client.send(
                Error(
                    mid=client.next_mid(), cid=mid, code=ErrorCode.TIMEOUT, job_id=job_id,
                    message=str(record.get("em") or f"job {job_id} expired"),
                )
            )  # fmt: skip
            return
        Broker._reply(client, mid, job_id, stored_of(record))

    def _on_progress(self, msgs: list[Any]) -> None:
        for msg in msgs:
            try:
                job_id, fraction, note = decode(msg.data)
                self._progress(str(job_id), fraction, note)
            except Exception:
                continue

    def _progress(self, job_id: str, fraction: Any, note: Any) -> None:
        wait = self.waits.get(result_key(job_id))
        if wait is None:
            return
        for client, _mid in wait.calls:
            try:
                client.send(
                    Progress(
                        mid=client.next_mid(), job_id=wait.job_id, fraction=fraction, note=note
                    )
                )
            except Exception:
                pass

    def _on_reconnect(self, _items: list[Any]) -> None:
        # Notifications sent while this leader was away from NATS are lost: the results of
        # every job waited for here are read from the bucket instead.
        for key in self.waits:
            self.adopted[key] = None

    async def _poll_loop(self) -> None:
        bridge = self.bridge
        assert bridge is not None
        while True:
            await trio.sleep(POLL_INTERVAL)
            keys = [key for key in self.adopted if key not in self._retrying]
            for start in range(0, len(keys), POLL_BATCH):
                batch = keys[start : start + POLL_BATCH]
                try:
                    found = await bridge.run(self.store.get_results, batch)
                except Exception as exc:
                    log.warning("reading results from the shared store failed: %s", exc)
                    break
                with self.batch():
                    for key, data in zip(batch, found, strict=True):
                        if data is not None:
                            self._answer_waits(key, data)

    # ------------------------------------------------------------------ jobs for workers here

    async def _feeders_loop(self, nursery: trio.Nursery) -> None:
        """Keep a fetching task for each pattern this leader's workers serve."""
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
            with trio.move_on_after(0.2):
                await self._credit.wait()
            if self._credit.is_set():
                self._credit = trio.Event()

    def _free(self, pattern: str) -> int:
        window = 0
        for worker in self.broker.workers:
            if pattern in worker.patterns:
                window += worker.window
        return window - self.held.get(pattern, 0) - self.incoming.get(pattern, 0)

    async def _feed(self, pattern: str, scope: trio.CancelScope) -> None:
        bridge = self.bridge
        assert bridge is not None
        store = self.store
        with scope:
            while True:
                try:
                    problem = await bridge.run(store.ensure_consumer, pattern)
                except Exception as exc:
                    problem = f"cannot reach the shared store: {exc}"
                if problem is None:
                    self.problems.pop(pattern, None)
                    break
                if self.problems.get(pattern) != problem:
                    log.error("leader %s: %s", self.name, problem)
                self.problems[pattern] = problem
                await trio.sleep(5)
            nursery = self._nursery
            assert nursery is not None

            def fetched(items: list[Fetched]) -> None:
                nursery.start_soon(self._take, pattern, items)

            deliver = bridge.to_trio(fetched)
            try:
                while True:
                    free = self._free(pattern)
                    if free <= 0:
                        with trio.move_on_after(0.05):
                            await self._credit.wait()
                        continue
                    try:
                        came = await bridge.run(store.pull, pattern, free, PULL_EXPIRES, deliver)
                    except Exception as exc:
                        log.warning("fetching jobs of %s failed: %s", pattern, exc)
                        await trio.sleep(0.5)
                        continue
                    if came:  # (counted as coming until _take has them)
                        self.incoming[pattern] = self.incoming.get(pattern, 0) + came
            finally:
                store_drop = store.drop_consumer
                bridge.loop.call_soon_threadsafe(store_drop, pattern)

    async def _take(self, pattern: str, fetched: list[Fetched]) -> None:
        """Messages fetched for ``pattern``: run each here, unless its result is stored
        already (a run that finished on a leader that died before acknowledging it), it
        was cancelled, it expired, it is not due yet, or it is out of attempts."""
        assert self.bridge is not None
        self.fetched += len(fetched)
        self.incoming[pattern] = self.incoming.get(pattern, 0) - len(fetched)
        jobs = []
        for item in fetched:
            try:
                body = decode(item.data)
                jobs.append((item, body, result_key(str(body["id"]))))
            except Exception:
                log.error("a message of the jobs stream does not decode: dropped (+TERM)")
                self._acks.append((item.reply, b"+TERM"))
        try:
            stored = await self.bridge.run(self.store.get_results, [k for _i, _b, k in jobs])
        except Exception as exc:
            log.warning("reading results from the shared store failed: %s", exc)
            self._acks.extend((item.reply, self.store.nak(1.0)) for item, _b, _k in jobs)
            self._out_wake.set()
            return
        now = trio.current_time()
        wall = time.time()
        with self.batch():
            for (item, body, key), data in zip(jobs, stored, strict=True):
                self._take_one(pattern, item, body, key, data, now, wall)
        self._out_wake.set()

    def _take_one(
        self,
        pattern: str,
        item: Fetched,
        body: dict[str, Any],
        key: str,
        stored: bytes | None,
        now: float,
        wall: float,
    ) -> None:
        job_id = str(body["id"])
        origin = str(body.get("o") or "")
        if stored is not None:  # done before: answer again, run nothing
            self._acks.append((item.reply, b"+ACK"))
            self._notify(origin, key, stored)
            return
        held = self.leases.get(job_id)
        if held is not None:  # (redelivered to us while we hold it: the newest reply counts)
            held.reply = item.reply
            held.deliveries = item.deliveries
            return
        due = body.get("d")
        if due is not None and due > wall + 0.01:
            self._acks.append((item.reply, self.store.nak(due - wall)))
            return
        lease = Lease(
            job_id, key, pattern, item.reply, item.deliveries, origin, str(body["s"]),
            body.get("i"), body.get("p"),
        )  # fmt: skip
        cancel = self.cancels.get(job_id)
        if cancel is not None and (cancel[1] or cancel[0] == lease.identity):
            self._store(lease, {"ok": False, "st": "cancelled", "et": "Cancelled",
                                "em": "cancelled by its client", "a": item.deliveries - 1})  # fmt: skip
            return
        expires = body.get("x")
        if expires is not None and expires <= wall:
            self._store(lease, {"ok": False, "st": "expired", "et": "Timeout",
                                "em": f"job {job_id} expired before a worker took it (its timeout passed)",
                                "a": item.deliveries - 1})  # fmt: skip
            return
        # Attempts made before: deliveries that did not come back (their leader died), and
        # one early delivery of a delayed job.
        before = item.deliveries - 1 - (due is not None and item.deliveries > 1)
        max_attempts = body.get("ma") or self.broker.config.max_attempts
        if before >= max_attempts:
            record = {
                "job_id": job_id, "subject": lease.subject, "payload": _value(lease.payload),
                "headers": body.get("h") or {}, "attempts": before,
                "error_type": "LeaderLost",
                "error_message": f"its {before} attempts were held by leaders that stopped",
                "traceback": None, "worker": None, "dead_at": wall,
            }  # fmt: skip
            if lease.identity is not None:
                record["identity"] = lease.identity
            self._dead_letter(lease, record)
            return
        refusal = self.broker.lease(
            self.lessee,
            job_id=job_id,
            subject=lease.subject,
            payload=None if lease.payload is None else Encoded(lease.payload),
            headers=body.get("h") or {},
            max_attempts=body.get("ma"),
            attempt=before,
            submitted_at=now - max(0.0, wall - float(body.get("t") or wall)),
            expires_at=None if expires is None else now + (expires - wall),
            identity=lease.identity,
            now=now,
        )
        if refusal is not None:
            self._acks.append((item.reply, self.store.nak(1.0)))
            return
        self.leases[job_id] = lease
        self.held[pattern] = self.held.get(pattern, 0) + 1

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
            payload = msg.payload
            st = "done"
            if msg.error_code == ErrorCode.CANCELLED:
                st = "cancelled"
            record = {
                "ok": msg.ok, "p": _bytes(payload), "et": msg.error_type, "em": msg.error_message,
                "a": msg.attempts, "tb": msg.traceback, "f": msg.final, "st": st,
            }  # fmt: skip
            stored = self.broker.finished.peek(msg.job_id)
            if stored is not None:
                record["w"] = stored.worker
            self._store(lease, record)
            self._out_wake.set()
        elif kind is Progress:
            lease = self.leases.get(msg.job_id)
            if lease is None:
                return
            self._acks.append((lease.reply, b"+WPI"))
            self._out_wake.set()
            if lease.origin == self.token:
                self._progress(msg.job_id, msg.fraction, msg.note)
            elif lease.origin:
                self._core.append(
                    (f"{self.config.prefix}.progress.{lease.origin}",
                     encode([msg.job_id, msg.fraction, msg.note]), None)
                )  # fmt: skip
        elif kind is Error:
            lease = self._release(msg.job_id or "")
            if lease is None:
                return
            if msg.code == ErrorCode.TIMEOUT and "timeout passed" in msg.message:
                self._store(lease, {"ok": False, "st": "expired", "et": "Timeout",
                                    "em": msg.message, "a": lease.deliveries - 1})  # fmt: skip
            else:  # (waited here too long for a worker: another leader may take it)
                self._acks.append((lease.reply, self.store.nak(0.0)))
            self._out_wake.set()

    def _lease_failed(
        self, job: JobRecord, delay: float | None, record: dict[str, Any] | None
    ) -> None:
        lease = self._release(job.job_id)
        if lease is None:
            return
        if delay is not None:
            self.retried += 1
            self._acks.append((lease.reply, self.store.nak(delay)))
        else:
            assert record is not None
            record = dict(record)
            record["payload"] = _value(lease.payload)
            self._dead_letter(lease, record)
        self._out_wake.set()

    def _dead_letter(self, lease: Lease, record: dict[str, Any]) -> None:
        self.dead_lettered += 1
        if record.get("error_type") == "LeaderLost":  # (not through the broker: kept here)
            self.broker.retries.keep_dead_letter(dict(record), len(lease.payload or b"") + 256)
        self._dead.append((lease.job_id, lease.subject, encode(record)))
        attempts = record.get("attempts", 0)
        self._store(
            lease,
            {
                "ok": False, "st": "dead", "et": record.get("error_type"),
                "em": f"dead-lettered after {attempts} attempts: {record.get('error_message')}",
                "a": attempts, "tb": record.get("traceback"), "w": record.get("worker"),
            },
        )  # fmt: skip
        self.broker.pubsub.route("$dlq." + lease.subject, record, {})

    def _store(self, lease: Lease, record: dict[str, Any]) -> None:
        """Store ``lease``'s result, then acknowledge its message and tell its origin."""
        record["s"] = lease.subject
        if lease.identity is not None:
            record["i"] = lease.identity
        self._results.append((lease, record))
        self._out_wake.set()

    def _notify(self, origin: str, key: str, data: bytes) -> None:
        if not origin:
            return
        if origin == self.token:
            self._answer_waits(key, data)
            return
        inline = data if len(data) <= INLINE_RESULT else b""
        self._core.append((self.config.done_subject(origin, key), inline, None))

    async def _keep_loop(self) -> None:
        """Tell JetStream every third of AckWait that the messages held here are alive."""
        interval = self.config.ack_wait / 3
        while True:
            await trio.sleep(interval)
            self._acks.extend((lease.reply, b"+WPI") for lease in self.leases.values())
            self._out_wake.set()

    async def _out_loop(self) -> None:
        while True:
            await self._out_wake.wait()
            self._out_wake = trio.Event()
            await self._flush_out()

    async def _flush_out(self) -> None:
        bridge = self.bridge
        assert bridge is not None
        store = self.store
        while self._results or self._dead or self._acks or self._core:
            results = self._results[:OUT_BATCH]
            del self._results[:OUT_BATCH]
            dead, self._dead = self._dead, []
            if dead:
                try:
                    await bridge.run(store.dead_letter, dead)
                except Exception as exc:  # (the result still ends the job: logged)
                    log.error("storing %d dead letters failed: %s", len(dead), exc)
            if results:
                encoded = [(lease.key, encode(record)) for lease, record in results]
                try:
                    earlier = await bridge.run(store.put_results, encoded)
                except Exception as exc:
                    # Not stored: not acknowledged either; JetStream gives the messages
                    # to a leader again after AckWait (the jobs run again).
                    self.store_failures += 1
                    log.error("storing %d results failed: %s", len(results), exc)
                    earlier = None
                if earlier is not None:
                    with self.batch():
                        for (lease, _r), (key, data), before in zip(
                            results, encoded, earlier, strict=True
                        ):
                            self.completed += 1
                            self._acks.append((lease.reply, b"+ACK"))
                            self._notify(lease.origin, key, data if before is None else before)
            acks, self._acks = self._acks, []
            core, self._core = self._core, []
            if acks or core:
                try:
                    await bridge.run(_send_all, store, acks, core)
                except Exception as exc:
                    log.warning("acknowledgements to the shared store failed: %s", exc)

    # ------------------------------------------------------------------ publish/subscribe

    def _forward(self, subject: str, payload: Any, headers: dict[str, str]) -> None:
        if len(self._core) >= MAX_UNSENT:  # (NATS is away: at most once, as pub/sub is)
            self.forwards_dropped += 1
            return
        self._core.append(
            (f"{self.config.prefix}.pub.{subject}", _bytes(payload) or b"", headers or None)
        )
        self._out_wake.set()

    def _on_publish(self, msgs: list[Any]) -> None:
        route = self.broker.pubsub.route
        cut = len(self.config.prefix) + 5
        for msg in msgs:
            try:
                payload = Encoded(msg.data) if msg.data else None
                route(msg.subject[cut:], payload, dict(msg.headers or {}))
            except Exception:
                log.exception("a message from another leader could not be routed")

    def _nursery_soon(self, fn: Callable[..., Any], *args: Any) -> None:
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


def _bytes(payload: Any) -> bytes | None:
    """A payload as the CBOR bytes of its value (one from the wire is kept as it came)."""
    if payload is None:
        return None
    if type(payload) is Encoded:
        return payload.data
    return encode(payload)


def _value(data: bytes | None) -> Any:
    if data is None:
        return None
    try:
        return decode(data)
    except Exception:
        return None


__all__ = ["SharedJobs", "StoreError"]
