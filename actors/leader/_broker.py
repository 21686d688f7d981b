"""The leader's brain, sans-I/O: queues, credit, routing, acks, redelivery, dedup.

The broker never awaits and never reads a clock: every method takes ``now``, and messages
leave through each link's ``send`` callable. The :class:`~actors.Leader` feeds it what
connections receive and calls :meth:`Broker.handle_timer` at :meth:`Broker.next_deadline`.
So every delivery rule (credit, ack deadlines, backoff, dead letters, dedup) is tested
without an event loop, at exact times.

Per job the work is O(1) in the number of jobs: a dict lookup for dedup, a deque per
subject, a dict per worker for what it holds (in assignment order, so with one ack timeout
the first entry has the earliest deadline), and a heap only for jobs waiting out a backoff.
Nor does one message cost the leader in proportion to the queues: a worker with room
visits only the queues whose jobs found none (``WorkerLink.hungry``), a joining worker's
patterns are asked about each queue once (:class:`~actors.leader._links.PatternSet`), and idle
queues are dropped by dict, a scan at most every thousand new subjects.
"""

from __future__ import annotations

import difflib
import logging
import random
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs
import cbor2

from protocol import (
    BUNDLE_OVERHEAD,
    DEFAULT_MAX_FRAME_SIZE,
    Ack,
    Assign,
    Cancel,
    Encoded,
    Error,
    ErrorCode,
    GroupMode,
    Nack,
    Progress,
    Publish,
    Query,
    Result,
    SubjectIndex,
    Submit,
    Subscribe,
    Unsubscribe,
    encode_array,
)
from runtime import Backoff, DedupCache, MessageTooLarge

from ._jobs import CancelledResult as CancelledResult  # (re-exported)
from ._jobs import DeadResult, JobRecord, JobState, StoredResult, Submitter
from ._journal import JobJournal, Recovered
from ._links import ClientLink, GroupStats, PatternSet, SubjectQueue, WorkerLink
from ._pubsub import PubSubRouter
from ._redelivery import DLQ_PREFIX, GroupRetry, RetryScheduler
from ._routing import EXACT_LEAST_LOADED as EXACT_LEAST_LOADED  # (re-exported: tests)
from ._routing import LEAST_LOADED_SAMPLES as LEAST_LOADED_SAMPLES
from ._routing import MAX_POLICY_LOOKS, PolicyCheckTooCostly, SubjectPolicies, pick_worker
from ._sizes import FORWARD_RESERVE, JOB_OVERHEAD, SURELY_FITS, payload_size
from ._stats import broker_stats, count_result

#: The fields of a StoredResult its makers give (those after it _finish fills in).
_STORED_OWN_FIELDS = StoredResult._fields.index("identity")
#: Groups whose statistics are kept at most; past it, those of a group with no worker
#: connected are dropped, oldest first.
MAX_GROUP_STATS = 10_000
#: Groups with no worker connected whose statistics are kept at most (those the leader
#: keeps for good, :attr:`Broker.keeps_group`, aside); past it, the one whose last worker
#: left first is forgotten.
MAX_IDLE_GROUPS = 1000
#: Seconds the statistics of a group are kept after its last worker left (as long as the
#: leader remembers a departed worker: ``actors.leader._workers.DEPARTED_TTL``), unless
#: the leader keeps the group for good (:attr:`Broker.keeps_group`).
IDLE_GROUP_TTL = 600.0
#: Subjects whose queue (and statistics) are kept at most; past it, the queues of subjects
#: with nothing waiting are dropped, oldest first.
MAX_SUBJECT_QUEUES = 10_000
#: Served patterns compared with a subject nobody serves, for "did you mean ...?".
MAX_SUGGESTIONS = 200
#: Calls (submits of the same id, result queries) waiting for one job at most.
MAX_WAITERS = 1000
#: Seconds between two Progress messages of one job forwarded to its clients (more
#: extend the ack deadline, but are not fanned out to every waiting call).
PROGRESS_INTERVAL = 0.05
#: Patterns of departed workers remembered for ``restart_grace`` at most.
MAX_DEPARTED = 1024
#: "Did you mean ...?" suggestions computed per second at most (each compares the subject
#: with up to MAX_SUGGESTIONS patterns); subjects longer than this get none.
SUGGESTIONS_PER_SECOND = 50
MAX_SUGGESTED_LENGTH = 128

#: Delays before the redeliveries of a job, by default: 0.5 s doubling up to 30 s, 10 %
#: jitter (``[leader.retry]`` of a cluster file starts from these).
DEFAULT_RETRY_BACKOFF = Backoff(base=0.5, factor=2.0, cap=30.0, jitter=0.1)

log = logging.getLogger("actors.leader")

_assign_item = Assign.item  # type: ignore[attr-defined]
_result_item = Result.item  # type: ignore[attr-defined]


def job_size(payload: Any, subject: str, headers: Mapping[str, str]) -> int:
    """Bytes a job is charged in the queue limits: its payload, subject and headers as
    encoded, plus :data:`JOB_OVERHEAD` for the leader's record of it."""
    size = (9 if payload is None else payload_size(payload)) + len(subject) + JOB_OVERHEAD
    if headers:
        for key, value in headers.items():
            size += len(key) + len(value) + 2
    return size


def send_to(client: Submitter, message: Any) -> None:
    """Send ``message`` (an answer with a ``cid``) to ``client``; one over the client's
    own frame limit is answered ``too_large`` instead."""
    try:
        client.send(message)
    except MessageTooLarge as exc:
        client.send(
            Error(
                mid=client.next_mid(),
                cid=message.cid,
                code=ErrorCode.TOO_LARGE,
                message=f"the answer does not fit your frame limit: {exc}",
            )
        )


@attrs.define
class BrokerConfig:
    """Delivery settings of a leader.

    Args:
      ack_timeout: seconds a worker has to answer a job (Progress extends it).
      max_attempts: deliveries of a QoS 1 job before it is dead-lettered.
      retry_backoff: delay before redelivery, by attempt number.
      max_queued: jobs accepted and not finished (queued, in backoff or held by a worker)
        before submits are answered ``busy``.
      dedup_window: seconds a finished job's result is kept for resubmissions.
      dedup_capacity: results kept at most (the oldest go first).
      max_retained: subjects whose last published message is retained, at most.
      max_dead_letters: dead-lettered jobs kept for inspection.
      max_queued_bytes: bytes of those jobs (payload, subject, headers and a fixed
        overhead of :data:`JOB_OVERHEAD` each), in total, before submits are answered
        ``busy``. A job counts from its acceptance until it finishes, running or not (the
        leader keeps its payload for redelivery): a worker with a large window cannot
        make the leader hold more.
      max_queued_per_subject, max_queued_bytes_per_subject: the same limits for the jobs
        of one subject (so that a subject nobody serves cannot fill the leader).
      max_queued_per_client, max_queued_bytes_per_client: the same limits for the jobs one
        client connection submitted.
      max_queue_time: seconds a job may wait for a worker (queued, or waiting out a retry
        backoff) before it expires and its clients get a ``timeout`` error; None: no limit.
      max_window: the most jobs one worker may hold at once, whatever credit it grants.
      max_frame: the largest frame body the leader forwards: a submit, publish or result
        whose forwarded message would not fit is answered ``too_large`` at once.
      max_subscriptions: subscriptions one client connection may hold.
      max_retained_bytes: bytes of retained messages kept (the oldest go first).
      max_dead_letter_bytes: bytes of dead-lettered jobs kept (the oldest go first).
      max_stored_bytes: bytes of finished jobs' results kept for the dedup window (the
        oldest go first).
      route_grace: seconds a job for a subject no connected worker serves waits for one
        before it is answered ``no_route`` (0: at once, as NATS answers "no responders").
        A submit with ``wait_for_worker`` waits for one anyway (up to ``max_queue_time``).
      restart_grace: seconds after the last worker serving a pattern went away during
        which a job for it waits for a worker (one restarting, or being replaced) instead
        of the ``no_route`` answer.
    """

    ack_timeout: float = 30.0
    max_attempts: int = 5
    retry_backoff: Backoff = DEFAULT_RETRY_BACKOFF
    max_queued: int = 100_000
    dedup_window: float = 600.0
    dedup_capacity: int = 100_000
    max_retained: int = 10_000
    max_dead_letters: int = 1_000
    max_queued_bytes: int = 256 * 2**20
    max_queued_per_subject: int = 25_000
    # (128 MiB: the jobs its workers run count too, e.g. 8 of 10 MB at once, 4 running)
    max_queued_bytes_per_subject: int = 128 * 2**20
    max_queued_per_client: int = 10_000
    max_queued_bytes_per_client: int = 128 * 2**20
    max_queue_time: float | None = 3600.0
    max_window: int = 10_000
    max_frame: int = DEFAULT_MAX_FRAME_SIZE
    max_subscriptions: int = 10_000
    max_retained_bytes: int = 64 * 2**20
    max_dead_letter_bytes: int = 64 * 2**20
    max_stored_bytes: int = 256 * 2**20
    route_grace: float = 0.0
    restart_grace: float = 30.0


class Broker:
    """Queues jobs per subject and hands them to workers against their credit.

    Backoff, expiry and dead letters are kept by its
    :class:`~actors.leader._redelivery.RetryScheduler` (:attr:`retries`), publish/subscribe
    by its :class:`~actors.leader._pubsub.PubSubRouter` (:attr:`pubsub`); the choice of a
    worker for each job is :func:`~actors.leader._routing.pick_worker`'s.

    Args:
      config: delivery settings.
      rng: the random source of backoff jitter (seed it in tests).
      journal: where accepted jobs, their attempts and outcomes are written (None: they
        live in memory only). With one, what the broker says to clients about a job (its
        acceptance, its result) is held (:meth:`take_held`) until the journal has written
        what it reports, and a worker's slot frees once its result is written.
    """

    def __init__(
        self,
        config: BrokerConfig | None = None,
        *,
        rng: random.Random | None = None,
        journal: JobJournal | None = None,
    ) -> None:
        self.config = config or BrokerConfig()
        self.rng = rng or random.Random()
        self.journal = journal
        # Answers held until the journal's next commit (see take_held), and the workers
        # whose slots it frees then (one entry per result).
        self._held: list[tuple[Any, tuple[Any, ...]]] = []
        self._held_slots: list[WorkerLink] = []
        #: Wall-clock time minus the ``now`` the broker is given (set by the leader): the
        #: ``dead_at`` of dead letters.
        self.clock_offset = 0.0
        self.jobs: dict[str, JobRecord] = {}
        self.finished = DedupCache(
            capacity=self.config.dedup_capacity,
            ttl=self.config.dedup_window,
            max_bytes=self.config.max_stored_bytes,
        )
        self.queues: dict[str, SubjectQueue] = {}
        self.workers: dict[WorkerLink, None] = {}
        self.worker_index = SubjectIndex()
        #: The routing policy of each subject served (set by its first worker).
        self.policies = SubjectPolicies()
        self.pubsub = PubSubRouter(
            self.worker_index,
            max_frame=self.config.max_frame,
            max_subscriptions=self.config.max_subscriptions,
            max_retained=self.config.max_retained,
            max_retained_bytes=self.config.max_retained_bytes,
        )
        self.retained = self.pubsub.retained  # (the router's: statistics read it here)
        # Patterns whose last worker went away, with when that stops counting as "a
        # worker for it will be back" (see restart_grace), oldest first.
        self._departed: dict[str, float] = {}
        self._departed_index = SubjectIndex()
        # "did you mean ...?": answers by subject (for the routes of _routes_version, which
        # changes as workers come and go), and a token bucket bounding their cost.
        self._routes_version = 0
        self._suggestions: dict[str, tuple[int, str | None]] = {}
        self._suggest_tokens = float(SUGGESTIONS_PER_SECOND)
        self._suggest_at = 0.0
        self.group_stats: dict[str, GroupStats] = {}
        #: Groups (of group_stats) with no worker connected, with when their last worker
        #: left (trio's clock), the first to have been left first.
        self.idle_groups: dict[str, float] = {}
        #: Whether the statistics of a group with no worker connected are kept for good
        #: (a leader says so of the groups its cluster declared); others are forgotten
        #: (see :meth:`forget_idle_groups`).
        self.keeps_group: Callable[[str], bool] = lambda group: False
        # Bytes of the accepted, unfinished jobs (those of self.jobs): the byte limits
        # count a job from its acceptance to its end, queued or held by a worker.
        self.job_bytes = 0
        # When the queues reach this many, idle ones are dropped (_drop_idle_queues).
        self._drop_queues_at = MAX_SUBJECT_QUEUES
        #: Backoff and expiry timers, group retry policies, dead letters.
        self.retries = RetryScheduler(
            backoff=self.config.retry_backoff,
            rng=self.rng,
            max_queue_time=self.config.max_queue_time,
            max_dead_letters=self.config.max_dead_letters,
            max_dead_letter_bytes=self.config.max_dead_letter_bytes,
        )
        #: Told of each failed attempt of a leased job (see :meth:`lease`): ``(job, delay,
        #: dead letter)``: retry it after ``delay`` seconds, or (``delay`` None) dead-letter
        #: it with that record. Set by the leader of a shared store.
        self.lease_failed: Callable[[JobRecord, float | None, dict[str, Any] | None], None] = (
            _no_lease_failed
        )
        #: Submits a dead letter again to a shared store (returns why not, or None); set
        #: by the leader of a shared store (None: requeued here).
        self.requeue_shared: Callable[[Mapping[str, Any]], str | None] | None = None
        # Finished jobs per second, over the last second or so (for busy's retry_after).
        self._done_window_start = 0.0
        self._done_in_window = 0
        self._done_rate = 0.0

    # ------------------------------------------------------------------ workers

    def policy_conflict(
        self, patterns: Sequence[str], policy: str, mode: str, group: str
    ) -> str | None:
        """Why a worker of ``group`` with these may not join: the message of the
        ``conflict`` Error that refuses its Hello (it asks for another routing policy for a
        subject than the one the workers serving it have; see
        :class:`~actors.leader._routing.SubjectPolicies`); None if it may."""
        if mode == GroupMode.BROADCAST:
            return None  # (takes no jobs: it has no say in their routing)
        try:
            conflict = self.policies.conflict(patterns, policy)
        except PolicyCheckTooCostly:
            return (
                f"cannot check this worker's {len(patterns)} patterns against the subjects "
                f"served by other routing policies within {MAX_POLICY_LOOKS} looks: serve "
                f"fewer or narrower patterns, or the routing policy of the workers serving them"
            )
        return None if conflict is None else conflict.message(group)

    def worker_joined(self, worker: WorkerLink, now: float) -> None:
        """A worker said Hello: index its patterns and give it work.

        Its Hello was checked with :meth:`policy_conflict` first (the leader refuses a
        conflicting one); a worker that joins anyway shares the policy of the workers
        already in the queues of its subjects.
        """
        if worker.mode != GroupMode.BROADCAST:
            self.policies.add(worker.patterns, worker.policy, worker.group)
        self.workers[worker] = None
        self._routes_version += 1
        worker.window = worker.granted = min(worker.window, self.config.max_window)
        worker.stats = self._group_stats(worker.group)
        worker.stats.connected += 1
        self.idle_groups.pop(worker.group, None)
        served = worker.stats.patterns
        for pattern in worker.patterns:
            self.worker_index.add(pattern, worker)
            served[pattern] = served.get(pattern, 0) + 1
        if worker.mode == GroupMode.BROADCAST:
            return
        # Each queue's subject is asked once of the worker's own patterns (not of the
        # index, which would list every registration that matches it): a Hello of many
        # patterns costs about one short walk per queue.
        serves = PatternSet(worker.patterns).matches
        queues = worker.queues
        hungry = worker.hungry
        for queue in self.queues.values():
            if serves(queue.subject):
                queue.candidates.append(worker)
                queues[queue] = None
                if queue.pending or queue.starved:
                    hungry[queue] = None
        self._feed(worker, now)

    def _group_stats(self, group: str) -> GroupStats:
        stats = self.group_stats.get(group)
        if stats is None:
            if len(self.group_stats) >= MAX_GROUP_STATS:
                for name in [g for g, s in self.group_stats.items() if not s.connected][
                    : len(self.group_stats) // 10 + 1
                ]:
                    del self.group_stats[name]
                    self.idle_groups.pop(name, None)
            stats = self.group_stats[group] = GroupStats()
        return stats

    def group_idle(self, group: str, now: float) -> None:
        """Note that ``group`` has no worker connected since ``now`` (trio's clock): its
        statistics are forgotten after :data:`IDLE_GROUP_TTL` seconds, or sooner when more
        than :data:`MAX_IDLE_GROUPS` groups have no worker (the longest idle first), unless
        :attr:`keeps_group` says to keep them. Nothing for a group with workers or
        without statistics."""
        stats = self.group_stats.get(group)
        if stats is None or stats.connected:
            return
        idle = self.idle_groups
        idle.pop(group, None)
        idle[group] = now
        while len(idle) > MAX_IDLE_GROUPS:
            self._forget_group(next(iter(idle)))

    def forget_idle_groups(self, now: float) -> None:
        """Forget the statistics of the groups with no worker connected for
        :data:`IDLE_GROUP_TTL` seconds by ``now`` (trio's clock), those of
        :attr:`keeps_group` aside: O(groups forgotten)."""
        idle = self.idle_groups
        while idle:
            name, since = next(iter(idle.items()))
            if now - since < IDLE_GROUP_TTL:
                break
            self._forget_group(name)

    def _forget_group(self, name: str) -> None:
        del self.idle_groups[name]
        if not self.keeps_group(name):
            self.group_stats.pop(name, None)

    def worker_left(self, worker: WorkerLink, now: float, *, coming_back: bool = True) -> None:
        """A worker went away: whatever it held is redelivered (each counts as an attempt).

        ``coming_back``: it may (it crashed, lost its connection, or is being recycled):
        for ``restart_grace``, jobs for its patterns wait for a worker rather than being
        answered ``no_route``. False for a worker that said it stops for good."""
        if worker not in self.workers:
            return
        del self.workers[worker]
        if worker.mode != GroupMode.BROADCAST:
            self.policies.remove(worker.patterns, worker.policy, worker.group)
        departed = self._departed
        grace = self.config.restart_grace
        self._routes_version += 1
        worker.stats.connected -= 1
        if not worker.stats.connected:
            self.group_idle(worker.group, now)
        self.forget_idle_groups(now)
        served = worker.stats.patterns
        for pattern in worker.patterns:
            self.worker_index.remove(pattern, worker)
            if served[pattern] > 1:
                served[pattern] -= 1
            else:
                del served[pattern]
            if grace and coming_back and worker.mode != GroupMode.BROADCAST:
                if departed.pop(pattern, None) is None:
                    if len(departed) >= MAX_DEPARTED:
                        oldest = next(iter(departed))
                        del departed[oldest]
                        self._departed_index.remove(oldest, oldest)
                    self._departed_index.add(pattern, pattern)
                departed[pattern] = now + grace
        for queue in worker.queues:
            queue.candidates.remove(worker)
        worker.queues.clear()
        worker.hungry.clear()
        held = list(worker.inflight.values())
        worker.inflight.clear()
        worker.deadlines.clear()
        for job in held:
            if job.state is JobState.ASSIGNED and job.worker is worker:
                self._failed_attempt(job, ("WorkerLost", f"worker {worker.name} went away"), now)
        backlog = list(worker.backlog)
        worker.backlog.clear()
        for job in reversed(backlog):
            if job.state is JobState.QUEUED:
                self._enqueue(job, now, front=True)

    def set_window(self, worker: WorkerLink, credit: int, now: float) -> None:
        """A worker changed its credit window (0 = send nothing more)."""
        worker.granted = min(credit, self.config.max_window)
        worker.window = max(0, worker.granted - worker.held)
        self._feed(worker, now)

    # ------------------------------------------------------------------ clients

    def client_left(self, client: ClientLink) -> None:
        """A client went away: forget its waits (the jobs go on) and subscriptions."""
        for job_id in client.waiting:
            job = self.jobs.get(job_id)
            if job is not None:
                job.waiters = [w for w in job.waiters if w[0] is not client]
        client.waiting.clear()
        self.pubsub.client_left(client)

    # ------------------------------------------------------------------ publish/subscribe

    def publish(self, client: ClientLink | WorkerLink, msg: Publish, now: float) -> None:
        """A client or worker published ``msg`` (see :meth:`PubSubRouter.publish`)."""
        self.pubsub.publish(client, msg, now)

    def subscribe(self, client: ClientLink, msg: Subscribe, now: float) -> None:
        """A client subscribed (see :meth:`PubSubRouter.subscribe`)."""
        self.pubsub.subscribe(client, msg, now)

    def unsubscribe(self, client: ClientLink, msg: Unsubscribe) -> None:
        """A client ended a subscription (unknown sids are ignored)."""
        self.pubsub.unsubscribe(client, msg)

    # ------------------------------------------------------------------ jobs in

    def submit(self, client: ClientLink, msg: Submit, now: float) -> None:
        """A client submitted a job: dedup it, check the limits, queue it, maybe assign
        it at once.

        Refused, with an Error answering the submit: ``too_large`` when the Assign that
        carries it could not be forwarded within :attr:`BrokerConfig.max_frame`; ``busy``
        (with ``retry_after``) when the jobs accepted and not finished (queued or running)
        in total, of its subject or from this client are at their limit in count or bytes.
        """
        job_id = msg.job_id
        enqueue = msg.enqueue
        if enqueue and msg.qos != 1:
            self._refuse(
                client,
                msg,
                ErrorCode.BAD_FIELD,
                "enqueue is for QoS 1 jobs (qos 0 is never stored)",
            )
            return
        job = self.jobs.get(job_id)
        if job is not None:  # in flight already: merge the waits
            if job.identity != client.identity and not client.admin:
                self._not_owner(client, msg, "resubmit")
                return
            if job.subject != msg.subject or not self._same_request(
                job_id, job.payload, msg.payload
            ):
                self._conflict(client, msg)
                return
            if enqueue:  # accepted before: told so (once what accepted it is written)
                self._accepted_ack(client, msg)
                return
            if len(job.waiters) >= MAX_WAITERS:
                self._refuse_busy(
                    client, msg, f"{MAX_WAITERS} submits already wait for job {job_id}"
                )
                return
            job.waiters.append((client, msg.mid))
            client.waiting[job_id] = None
            return
        stored = self.finished.get(job_id, now)
        if stored is not None:
            if stored.identity != client.identity and not client.admin:
                self._not_owner(client, msg, "resubmit")
                return
            if stored.subject is not None and (
                stored.subject != msg.subject
                or not self._same_request(job_id, stored.request, msg.payload)
            ):
                self._conflict(client, msg)
                return
            if enqueue:
                self._accepted_ack(client, msg)
            else:
                self._answer(self._reply, client, msg.mid, job_id, stored)
            return
        journal = self.journal
        if journal is not None and journal.refusal is not None:
            self._refuse_busy(client, msg, journal.refusal)
            return
        payload = msg.payload
        subject = msg.subject
        headers = msg.headers
        size = job_size(payload, subject, headers)
        if size > SURELY_FITS and not self._fits(msg, size):
            self._refuse(
                client,
                msg,
                ErrorCode.TOO_LARGE,
                f"job {job_id} is too large to forward: its Assign would be over the"
                f" leader's frame limit of {self.config.max_frame} bytes",
            )
            return
        # Every accepted job counts against the limits until it finishes, whether it
        # waits or a worker holds it (the leader keeps its payload for redelivery). They
        # are checked first: a refused submit to a new subject makes no queue.
        queue = self.queues.get(subject)
        if self._over_limits(client, msg, queue, size):
            return
        if queue is None:
            queue = self._queue(subject)
        config = self.config
        route_until = 0.0
        delay = msg.delay
        if not queue.candidates and not msg.wait_for_worker and not delay:
            route_until = self._route_expected_until(subject, now)
            if route_until <= now:
                self._refuse(client, msg, ErrorCode.NO_ROUTE, self._no_route_text(subject, now))
                return
        timeout = msg.timeout
        job = JobRecord(
            job_id=job_id,
            subject=subject,
            payload=payload,
            headers=headers,
            qos=msg.qos,
            max_attempts=msg.max_attempts or config.max_attempts,
            submitted_at=now,
            expires_at=None if timeout is None else now + timeout,
            submitted_max_attempts=msg.max_attempts,
            size=size,
            owner=client,
            queue=queue,
            identity=client.identity,
        )
        retries = self.retries
        if delay:  # it waits as a retry does, and for its worker from when it is due
            job.state = JobState.RETRY_WAIT
            job.retry_at = now + delay
            self._accepted(job, client, msg, queue, now)
            retries.wait_retry(job, now, since=job.retry_at)
            return
        self._accepted(job, client, msg, queue, now)
        worker = None
        if not route_until and not queue.pending:
            # Nothing queued ahead of it: straight to a worker with room, if there is one
            # (what _dispatch would do, without the trip through the queue).
            worker = pick_worker(queue, job, self.rng)
            if worker is not None and len(worker.inflight) < worker.window:
                self._assign(job, worker, now)
                return
        job.wait_deadline = retries.wait_deadline(job, now)
        if route_until:  # no worker yet, but one may come: it waits that long for one
            job.awaiting_route = True
            job.wait_deadline = min(job.wait_deadline, route_until)
            retries.watch_expiry(job, len(self.jobs))
            queue.pending.append(job)
            return
        retries.watch_expiry(job, len(self.jobs))
        if worker is not None:  # sticky target is busy: wait for it
            worker.backlog.append(job)
            return
        queue.pending.append(job)
        if len(queue.pending) == 1 and queue.candidates:
            # (pick_worker found no room just now: nothing to dispatch; its workers look
            # here when they have room)
            if not queue.starved:
                self._starve(queue)
            return
        self._dispatch(queue, now)

    def _accepted(
        self, job: JobRecord, client: ClientLink, msg: Submit, queue: SubjectQueue, now: float
    ) -> None:
        """Register a job just accepted: its first waiter (or, for an ``enqueue``, the Ack
        that says it is accepted), the journal, the counters (the limits count it until it
        finishes: see :meth:`_finish`)."""
        if self.journal is not None:
            self.journal.accept(job, now)
        if msg.enqueue:
            self._accepted_ack(client, msg)
        else:
            job.waiters.append((client, msg.mid))
            client.waiting[job.job_id] = None
        self._count_in(job, queue)
        client.jobs += 1
        client.job_bytes += job.size
        queue.submitted += 1

    def _count_in(self, job: JobRecord, queue: SubjectQueue) -> None:
        """Hold ``job`` as accepted and not finished: the limits in total and of its
        subject's ``queue`` count it until :meth:`_finish` (its client's, the caller's)."""
        self.jobs[job.job_id] = job
        size = job.size
        self.job_bytes += size
        queue.jobs += 1
        queue.job_bytes += size

    def _accepted_ack(self, client: ClientLink, msg: Submit) -> None:
        """Tell the client of an ``enqueue`` submit that its job is accepted (once written)."""
        self._answer(send_to, client, Ack(mid=client.next_mid(), cid=msg.mid, job_id=msg.job_id))

    def _answer(self, send: Any, *args: Any) -> None:
        """``send(*args)``: at once without a journal, else once the journal has written
        what is pending now (so that no client hears of an acceptance or a result that a
        crash could undo)."""
        if self.journal is None:
            send(*args)
        else:
            self._held.append((send, args))

    @property
    def holding(self) -> bool:
        """Whether answers or worker slots wait for the journal's next commit."""
        return bool(self._held or self._held_slots)

    def take_held(self) -> tuple[list[tuple[Any, tuple[Any, ...]]], list[WorkerLink]]:
        """The answers and worker slots held so far, to release with :meth:`release` once
        the journal has written what was pending when they were taken."""
        held, slots = self._held, self._held_slots
        self._held = []
        self._held_slots = []
        return held, slots

    def release(
        self, held: tuple[list[tuple[Any, tuple[Any, ...]]], list[WorkerLink]], now: float
    ) -> None:
        """The journal has written what these wait for: send the answers, free the slots
        (and give those workers more work)."""
        answers, slots = held
        for send, args in answers:
            try:
                send(*args)
            except Exception:  # (a bug: the other answers and the slots must go on)
                log.exception("an answer held for the journal could not be sent")
        freed: dict[WorkerLink, None] = {}
        for worker in slots:
            worker.held -= 1
            freed[worker] = None
        workers = self.workers
        for worker in freed:
            worker.window = max(0, worker.granted - worker.held)
            if worker in workers and (worker.hungry or worker.backlog):
                self._feed(worker, now)

    def _over_limits(
        self, client: ClientLink, msg: Submit, queue: SubjectQueue | None, size: int
    ) -> bool:
        """Whether one more job of ``size`` bytes is over a limit of the jobs accepted and
        not finished (queued or held by a worker), in total, of its subject (``queue``;
        None: a subject with none) or of its client (then its submit is answered
        ``busy``, naming the limit)."""
        config = self.config
        jobs = len(self.jobs)
        if jobs >= config.max_queued or self.job_bytes + size > config.max_queued_bytes:
            self._refuse_busy(
                client,
                msg,
                f"leader queue is full ({jobs} jobs, {self.job_bytes} bytes queued or running;"
                f" limits {config.max_queued} jobs, {config.max_queued_bytes} bytes)",
            )
            return True
        if queue is None:
            subject_jobs = subject_bytes = 0
        else:
            subject_jobs = queue.jobs
            subject_bytes = queue.job_bytes
        if (
            subject_jobs >= config.max_queued_per_subject
            or subject_bytes + size > config.max_queued_bytes_per_subject
        ):
            self._refuse_busy(
                client,
                msg,
                f"queue of subject {msg.subject} is full ({subject_jobs} jobs,"
                f" {subject_bytes} bytes queued or running; limits {config.max_queued_per_subject}"
                f" jobs, {config.max_queued_bytes_per_subject} bytes per subject)",
            )
            return True
        if (
            client.jobs >= config.max_queued_per_client
            or client.job_bytes + size > config.max_queued_bytes_per_client
        ):
            self._refuse_busy(
                client,
                msg,
                f"this connection has {client.jobs} jobs ({client.job_bytes} bytes)"
                f" queued or running; limits {config.max_queued_per_client} jobs,"
                f" {config.max_queued_bytes_per_client} bytes per client",
            )
            return True
        return False

    def _same_request(self, job_id: str, known: Any, payload: Any) -> bool:
        """Whether ``payload`` is the payload ``known`` of job ``job_id``.

        Payloads from the wire are :class:`~protocol.Encoded` (the leader never decodes
        one): the same when their bytes are, a comparison of bytes however often a large
        job is resubmitted. Values (a broker driven in-process) are the same once encoded
        canonically (a NaN is not equal to itself, but encodes the same; 1 and 1.0 are
        equal, but do not)."""
        if known is payload:
            return True
        if type(known) is Encoded and type(payload) is Encoded:
            return known.data == payload.data
        try:
            return cbor2.dumps(known, canonical=True) == cbor2.dumps(payload, canonical=True)
        except Exception:  # (noqa: BLE001) not encodable: nothing is the same
            return False

    def _not_owner(self, client: ClientLink, msg: Any, action: str) -> None:
        """Refuse ``msg``: its job belongs to another identity (nothing about the job is
        told, not even whether it runs)."""
        self._refuse(
            client,
            msg,
            ErrorCode.NOT_PERMITTED,
            f"{client.identity!r} may not {action} job {msg.job_id}: it belongs to another identity",
        )

    def _conflict(self, client: ClientLink, msg: Submit) -> None:
        self._refuse(
            client,
            msg,
            ErrorCode.CONFLICT,
            f"job id {msg.job_id} names another job: submitted before with another subject or"
            f" payload (a resubmission must repeat both to get the job's result)",
        )

    def query_result(self, client: ClientLink, msg: Query, now: float) -> None:
        """A client asks for the result of a job by id (see :class:`protocol.Query`)."""
        job_id = msg.job_id or ""
        job = self.jobs.get(job_id)
        if job is not None:
            if job.identity != client.identity and not client.admin:
                self._not_owner(client, msg, "read")
            elif msg.wait and len(job.waiters) >= MAX_WAITERS:
                self._refuse(
                    client,
                    msg,
                    ErrorCode.BUSY,
                    f"{MAX_WAITERS} calls already wait for job {job_id}",
                    retry_after=1.0,
                )
            elif msg.wait:
                job.waiters.append((client, msg.mid))
                client.waiting[job_id] = None
            else:
                self._refuse(
                    client,
                    msg,
                    ErrorCode.NOT_FOUND,
                    f"job {job_id} has not finished yet ({job.state.value})",
                )
            return
        stored = self.finished.get(job_id, now)
        if stored is not None:
            if stored.identity != client.identity and not client.admin:
                self._not_owner(client, msg, "read")
                return
            self._answer(self._reply, client, msg.mid, job_id, stored)
            return
        self._refuse(
            client,
            msg,
            ErrorCode.NOT_FOUND,
            f"no job {job_id}: unknown here, or finished more than {self.config.dedup_window:g} s ago"
            f" (the leader's dedup_window)",
        )

    def describe_job(self, job_id: str, now: float) -> dict[str, Any] | None:
        """What the broker knows of job ``job_id``, for an operator: an unfinished job, or
        the result of one finished within the dedup window; None when neither.

        Returns a dict: ``job_id``, ``subject``, ``state`` (``queued``, ``running`` or
        ``retrying``, a job submitted with a delay being ``queued``; ``done``, ``failed``,
        ``dead`` or ``cancelled``), ``attempts``, ``max_attempts`` (None for a finished job),
        ``worker`` (the name of the one running it), ``submitted_at``, ``started_at`` (of
        its attempt that runs or ran last), ``retry_at`` (when it is next queued),
        ``finished_at`` (all wall-clock times, None when unknown), ``cancelling`` (the
        reason a running job was asked to stop with), ``ok``, ``result`` (the payload as
        it is kept: usually :class:`~protocol.Encoded`), ``error`` (``(type, message)`` of
        its failure, or of its last failed attempt), ``traceback`` and ``identity`` (its
        owner). Payloads are not copied: show them, do not keep them.
        """
        offset = self.clock_offset
        job = self.jobs.get(job_id)
        if job is not None:
            state = job.state
            if state is JobState.ASSIGNED:
                shown = "running"
            elif state is JobState.RETRY_WAIT and job.attempt:
                shown = "retrying"
            else:
                shown = "queued"
            worker = job.worker
            return {
                "job_id": job_id,
                "subject": job.subject,
                "state": shown,
                "attempts": job.attempt,
                "max_attempts": self.retries.policy(job)[0],
                "worker": getattr(worker, "name", None) if state is JobState.ASSIGNED else None,
                "submitted_at": job.submitted_at + offset,
                "started_at": job.assigned_at + offset if job.attempt else None,
                "retry_at": job.retry_at + offset if state is JobState.RETRY_WAIT else None,
                "finished_at": None,
                "cancelling": job.cancel_reason if state is JobState.ASSIGNED else None,
                "ok": None,
                "result": None,
                "error": job.last_error,
                "traceback": job.last_traceback,
                "identity": job.identity,
            }
        stored = self.finished.get(job_id, now)
        if stored is None:
            return None
        if type(stored) is CancelledResult:
            shown = "cancelled"
        elif type(stored) is DeadResult:
            shown = "dead"
        else:
            shown = "done" if stored.ok else "failed"
        submitted_at, started_at, finished_at = (
            stored.submitted_at,
            stored.started_at,
            stored.finished_at,
        )
        return {
            "job_id": job_id,
            "subject": stored.subject,
            "state": shown,
            "attempts": stored.attempts,
            "max_attempts": None,
            "worker": stored.worker,
            "submitted_at": None if submitted_at is None else submitted_at + offset,
            "started_at": None if started_at is None else started_at + offset,
            "retry_at": None,
            "finished_at": None if finished_at is None else finished_at + offset,
            "cancelling": None,
            "ok": stored.ok,
            "result": stored.payload,
            "error": None if stored.ok else (stored.error_type, stored.error_message),
            "traceback": stored.traceback,
            "identity": stored.identity,
        }

    def _fits(self, msg: Submit, size: int) -> bool:
        """Whether the Assign of a large submit fits the frame limit (encoded exactly)."""
        if size >= 1 << 62:
            return False
        try:
            item = _assign_item(
                mid=2**32,
                job_id=msg.job_id,
                subject=msg.subject,
                payload=msg.payload,
                headers=msg.headers,
                attempt=2**16,
                qos=msg.qos,
                ack_timeout=self.config.ack_timeout,
            )
            encoded = len(encode_array(item))
        except Exception:  # (noqa: BLE001) it could not be forwarded at all
            return False
        return encoded + BUNDLE_OVERHEAD + FORWARD_RESERVE <= self.config.max_frame

    def _refuse(self, client: ClientLink, msg: Any, code: str, message: str, **extra: Any) -> None:
        client.refuse(msg, code, message, **extra)

    def _refuse_busy(self, client: ClientLink, msg: Submit, message: str) -> None:
        self._refuse(client, msg, ErrorCode.BUSY, message, retry_after=self._retry_after())

    def _retry_after(self) -> float:
        """The ``retry_after`` of a ``busy`` answer: about the time to finish half the jobs
        held, at the recent rate (0.1 to 30 s)."""
        rate = max(self._done_rate, 1.0)
        return min(30.0, max(0.1, round(len(self.jobs) / rate / 2, 3)))

    def _count_done(self, now: float) -> None:
        if now - self._done_window_start >= 1.0:
            elapsed = now - self._done_window_start
            self._done_rate = self._done_in_window / elapsed if elapsed > 0 else 0.0
            self._done_window_start = now
            self._done_in_window = 0
        self._done_in_window += 1

    # ------------------------------------------------------------------ retries and timers

    @property
    def group_retry(self) -> Mapping[str, GroupRetry]:
        """Retry policies by worker group name (see :meth:`set_group_retry`)."""
        return self.retries.group_retry

    def set_group_retry(self, group: str, policy: GroupRetry | None) -> None:
        """Give the workers of ``group`` their own retry policy (None: the leader's again).

        The group is the name workers give in their Hello (``WorkerGroup`` instances and
        ``python -m actors.worker --group`` use the group's name).
        """
        self.retries.set_group_retry(group, policy)

    @property
    def dead_letters(self) -> deque[dict[str, Any]]:
        """Dead-lettered jobs kept for inspection, oldest first (at most
        ``max_dead_letters`` of ``max_dead_letter_bytes`` in all)."""
        return self.retries.dead_letters

    @property
    def dead_letter_bytes(self) -> int:
        """Bytes of :attr:`dead_letters` (their jobs and error texts)."""
        return self.retries.dead_letter_bytes

    def take_soonest(self) -> float:
        """The earliest deadline (ack, retry or expiry) made since the last call (``inf``
        if none): see :meth:`RetryScheduler.take_soonest`."""
        return self.retries.take_soonest()

    def next_deadline(self) -> float:
        """When :meth:`handle_timer` next has something to do (``inf`` if nothing)."""
        return self.retries.next_deadline(self.workers)

    def handle_timer(self, now: float) -> None:
        """Redeliver what missed its ack deadline, requeue what waited out its backoff,
        expire what waited for a worker too long."""
        retries = self.retries
        for worker, job_id in retries.missed_acks(self.workers, now):
            job = worker.inflight[job_id]
            if job.state is JobState.ASSIGNED and job.worker is worker:
                # The worker keeps the slot (it may still be running the job) but the
                # deadline is dropped; the job goes out again after its backoff.
                self._failed_attempt(
                    job,
                    (
                        "AckTimeout",
                        f"no answer from {worker.name} within {self.config.ack_timeout} s",
                    ),
                    now,
                )
                worker.send(Cancel(mid=worker.next_mid(), job_id=job_id, reason="ack timeout"))
        for job in retries.due_retries(now):
            if job.wait_deadline <= now:
                self._expire(job, now)
                continue
            job.move(JobState.QUEUED)
            self._enqueue(job, now)
        for job in retries.due_expiries(now):
            if not self._route_came(job, now):
                self._leave_waiting(job)
                self._expire(job, now)

    def _failed_attempt(
        self,
        job: JobRecord,
        error: tuple[str, str],
        now: float,
        *,
        delay: float | None = None,
        traceback: str | None = None,
    ) -> None:
        """An attempt of ``job`` failed (an error, a Nack, a missed ack deadline, its worker
        gone): a job a client cancelled ends, one of QoS 0 fails, one of QoS 1 is retried
        after ``delay`` or its backoff, or is dead-lettered when out of attempts."""
        job.last_error = error
        job.last_traceback = traceback
        if job.cancel_reason is not None:  # a client cancelled it: over, not retried
            self._cancelled(job, job.cancel_reason, now)
            return
        queue = self._queue(job.subject)
        group = job.worker.stats if job.worker is not None else None
        if job.leased:  # (the shared store retries it, on any leader, or dead-letters it)
            self._lease_ended(job, queue, group, delay, now)
            return
        if job.qos == 0:
            count_result(queue, False, now - job.submitted_at)
            if group is not None:
                count_result(group, False, now - job.submitted_at)
            self._finish(
                job,
                JobState.DONE,
                StoredResult(
                    False,
                    None,
                    error[0],
                    error[1],
                    job.attempt,
                    job.last_traceback,
                    job.subject,
                    job.payload,
                ),
                now,
            )
            return
        retry_at = self.retries.retry_at(job, now, delay)
        if retry_at is None:
            if group is not None:
                group.dead += 1
            self._dead_letter(job, now)
            return
        queue.redelivered += 1
        if group is not None:
            group.redelivered += 1
        job.move(JobState.RETRY_WAIT)
        job.worker = None
        job.retry_at = retry_at
        self.retries.wait_retry(job, now)  # (the limits count it still: it is not finished)
        if self.journal is not None:
            self.journal.retry(job)

    def _lease_ended(
        self,
        job: JobRecord,
        queue: SubjectQueue,
        group: GroupStats | None,
        delay: float | None,
        now: float,
    ) -> None:
        """A failed attempt of a leased job: it ends here (no result is stored: the shared
        store's message is what outlives it), and :attr:`lease_failed` is told whether to
        retry it, when (its backoff, or the Nack's delay), or to dead-letter it."""
        limit, backoff = self.retries.policy(job)
        record = None
        if job.attempt >= limit:
            queue.dead += 1
            if group is not None:
                group.dead += 1
            record = self.retries.dead_letter(job)  # (kept here too: this leader's view)
            record["dead_at"] = now + self.clock_offset
            delay = None
        else:
            queue.redelivered += 1
            if group is not None:
                group.redelivered += 1
            if delay is None:
                delay = backoff.delay(job.attempt, self.rng)
        job.waiters = []  # (its lessee hears of it here, not by a Result)
        try:
            self.lease_failed(job, delay, record)
        finally:
            self._finish(job, JobState.DONE, None, now)

    def lease(
        self,
        lessee: ClientLink,
        *,
        job_id: str,
        subject: str,
        payload: Any,
        headers: dict[str, str],
        max_attempts: int | None,
        attempt: int,
        submitted_at: float,
        expires_at: float | None,
        identity: str | None,
        now: float,
    ) -> str | None:
        """Take a job from a shared store (JetStream) to run here: queued at once for this
        leader's workers, its result (or expiry) answered to ``lessee``, a failed attempt
        handed to :attr:`lease_failed` instead of retried here. ``attempt``: the attempts
        made before (on any leader). Returns why it cannot be taken (the leader's own
        limits, or the id is held here already), or None."""
        if job_id in self.jobs:
            return f"job {job_id} is held here already"
        if not self._queue(subject).candidates:
            return f"no worker here serves {subject} now"
        job = self._admit(
            job_id, subject, payload, headers, max_attempts, submitted_at, identity,
            expires_at=expires_at, attempt=attempt, leased=True,
        )  # fmt: skip
        if type(job) is str:
            return job
        job.waiters.append((lessee, 0))
        self._queue_again(job, now)
        return None

    def withdraw(self, job_id: str) -> bool:
        """Take back leased job ``job_id`` if it waits here for a worker (queued, none
        holds it): it ends here, unanswered (its shared store gives it to another leader).
        Returns whether it did."""
        job = self.jobs.get(job_id)
        if job is None or not job.leased or job.state is not JobState.QUEUED:
            return False
        job.waiters = []
        self._remove_pending(job)
        self._finish(job, JobState.CANCELLED, None, job.submitted_at)  # (unanswered: no time)
        return True

    def _admit(
        self,
        job_id: str,
        subject: str,
        payload: Any,
        headers: dict[str, str],
        max_attempts: int | None,
        submitted_at: float,
        identity: str | None,
        *,
        expires_at: float | None = None,
        attempt: int = 0,
        leased: bool = False,
    ) -> JobRecord | str:
        """A QoS 1 job coming from elsewhere than a submit (a dead letter retried, a
        shared store's message), within the leader's limits; or why not."""
        size = job_size(payload, subject, headers)
        config = self.config
        if len(self.jobs) >= config.max_queued or self.job_bytes + size > config.max_queued_bytes:
            return f"the leader's queue is full ({len(self.jobs)} jobs)"
        self.finished.discard(job_id)
        return JobRecord(
            job_id=job_id,
            subject=subject,
            payload=payload,
            headers=headers,
            qos=1,
            max_attempts=max_attempts or config.max_attempts,
            submitted_at=submitted_at,
            expires_at=expires_at,
            submitted_max_attempts=max_attempts,
            attempt=attempt,
            size=size,
            queue=self._queue(subject),
            identity=identity,
            leased=leased,
        )

    def _queue_again(self, job: JobRecord, now: float) -> None:
        """Count an admitted job in and queue it (see :meth:`_admit`)."""
        queue = job.queue
        assert queue is not None
        self._count_in(job, queue)
        queue.submitted += 1
        job.wait_deadline = self.retries.wait_deadline(job, now)
        self._enqueue(job, now)

    def _cancelled(self, job: JobRecord, reason: str, now: float) -> None:
        """End ``job`` as cancelled by a client: its waiters get a failure marked
        ``cancelled`` (a :class:`CancelledResult`)."""
        self._queue(job.subject).cancelled += 1
        self._finish(
            job,
            JobState.CANCELLED,
            CancelledResult(
                False, None, "Cancelled", reason, job.attempt, None, job.subject, job.payload
            ),
            now,
        )

    def _dead_letter(self, job: JobRecord, now: float) -> None:
        """``job`` is out of attempts: it ends, and its dead letter is kept and published
        on ``$dlq.<subject>``."""
        self._queue(job.subject).dead += 1
        record = self.retries.dead_letter(job)
        record["dead_at"] = now + self.clock_offset
        if self.journal is not None:
            self.journal.dead_letter(job, record, now)
        self._finish(
            job,
            JobState.DEAD,
            DeadResult(
                False,
                None,
                record["error_type"],
                f"dead-lettered after {job.attempt} attempts: {record['error_message']}",
                job.attempt,
                job.last_traceback,
                job.subject,
                job.payload,
            ),
            now,
        )
        self.pubsub.route(DLQ_PREFIX + job.subject, record, {})

    # ------------------------------------------------------------------ cancelling

    def cancel(self, client: ClientLink, msg: Cancel, now: float) -> None:
        """A client cancels a job: a waiting job ends at once, a running one is cancelled
        on its worker (whose answer then finishes it)."""
        job = self.jobs.get(msg.job_id)
        if job is None or job.state.final:
            return
        if job.identity != client.identity and not client.admin:
            self._not_owner(client, msg, "cancel")
            return
        if msg.abandon:  # this client no longer waits: the job ends only if nobody does
            client.waiting.pop(job.job_id, None)
            job.waiters = [w for w in job.waiters if w[0] is not client]
            if job.waiters:
                return
            msg = Cancel(
                mid=msg.mid,
                job_id=msg.job_id,
                reason=msg.reason or "abandoned: nobody waits for it",
            )
        self._cancel(job, msg.reason, now)

    def cancel_job(self, job_id: str, reason: str | None, now: float) -> JobState | None:
        """Cancel job ``job_id`` as a client's Cancel does, for a caller with no link (an
        operator over HTTP), who has checked that it may (its owner, or an admin).

        Returns:
          The job's state after: ``CANCELLED`` (it ended: its waiters are answered),
          ``ASSIGNED`` (its worker is asked to stop, and its answer ends it; a result that
          comes first still wins), or None when no unfinished job has that id.
        """
        job = self.jobs.get(job_id)
        if job is None or job.state.final:
            return None
        self._cancel(job, reason, now)
        return job.state

    def _cancel(self, job: JobRecord, reason: str | None, now: float) -> None:
        """End ``job`` (unfinished) as cancelled, or ask its worker to stop it."""
        if job.state is JobState.ASSIGNED:
            if job.worker is not None:
                # The worker's answer ends the job (see _failed_attempt); a result
                # that comes first still wins.
                job.cancel_reason = reason or "cancelled by client"
                job.worker.send(Cancel(mid=job.worker.next_mid(), job_id=job.job_id, reason=reason))
            return
        self._leave_waiting(job)
        self._cancelled(job, reason or "cancelled by client", now)

    # ------------------------------------------------------------------ routing

    def _queue(self, subject: str) -> SubjectQueue:
        queue = self.queues.get(subject)
        if queue is None:
            if len(self.queues) >= self._drop_queues_at:
                self._drop_idle_queues()
            queue = SubjectQueue(subject)
            # (dict.fromkeys: a worker that serves the subject by several patterns is
            # listed once, without a scan of the candidates for each)
            queue.candidates = [
                worker
                for worker in dict.fromkeys(self.worker_index.match(subject))
                if worker.mode != GroupMode.BROADCAST
            ]
            for worker in queue.candidates:
                worker.queues[queue] = None
            self.queues[subject] = queue
        return queue

    def _drop_idle_queues(self) -> None:
        """Forget the oldest tenth of the subjects with no job (and their statistics), so
        that submits to ever new subjects cannot grow the leader.

        This scans the queues, so when too few are idle to drop a tenth (most hold jobs,
        which the job limits bound), the next scan waits for a tenth of
        :data:`MAX_SUBJECT_QUEUES` new queues (which may outnumber it by that much): each
        new subject costs O(1) amortised, not a scan."""
        queues = self.queues
        wanted = len(queues) // 10 + 1
        idle = []
        for queue in queues.values():
            if not queue.jobs and not queue.pending:
                idle.append(queue)
                if len(idle) == wanted:
                    break
        for queue in idle:
            del queues[queue.subject]
            for worker in queue.candidates:
                del worker.queues[queue]
                worker.hungry.pop(queue, None)
        if len(idle) < wanted:
            self._drop_queues_at = len(queues) + MAX_SUBJECT_QUEUES // 10
        else:
            self._drop_queues_at = MAX_SUBJECT_QUEUES

    def _dispatch(self, queue: SubjectQueue, now: float) -> None:
        """Give the jobs of ``queue`` to its workers with room, in order; when none has
        room, its workers are to look here once they have (see :meth:`_starve`)."""
        pending = queue.pending
        while pending:
            job = pending[0]
            if job.state is not JobState.QUEUED:  # left the queue early (see _leave_waiting)
                pending.popleft()
                if queue.stale:
                    queue.stale -= 1
                continue
            if job.wait_deadline <= now and not self._route_came(job, now):
                pending.popleft()
                self._expire(job, now)
                continue
            worker = pick_worker(queue, job, self.rng)
            if worker is None:
                if not queue.starved:
                    self._starve(queue)
                return
            pending.popleft()
            if len(worker.inflight) >= worker.window:  # sticky target is busy: wait for it
                worker.backlog.append(job)
                continue
            self._assign(job, worker, now)
        queue.starved = False

    def _starve(self, queue: SubjectQueue) -> None:
        """Jobs of ``queue`` wait and none of its workers has room: each is to look here
        once it has (:meth:`_feed` visits only such queues, not every queue a worker
        serves). O(workers of the subject), once until the queue empties."""
        queue.starved = True
        for worker in queue.candidates:
            worker.hungry[queue] = None

    def _expire(self, job: JobRecord, now: float) -> None:
        """A waiting job's time is up (taken out of its queue or backlog by the caller)."""
        self._queue(job.subject).expired += 1
        self._finish(job, JobState.EXPIRED, None, now)

    def _route_came(self, job: JobRecord, now: float) -> bool:
        """For a job whose wait deadline passed: if it was waiting out the route grace and
        a worker for its subject has come since, it waits on as any job (True)."""
        if not job.awaiting_route or not self._queue(job.subject).candidates:
            return False
        job.awaiting_route = False
        deadline = self.retries.wait_deadline(job, job.submitted_at)
        if deadline <= now:
            return False
        job.wait_deadline = deadline
        self.retries.watch_expiry(job, len(self.jobs))
        return True

    def _route_expected_until(self, subject: str, now: float) -> float:
        """Until when a job for ``subject``, which no connected worker serves, may wait
        for one: the leader's ``route_grace``, or longer while a worker that served it
        went away less than ``restart_grace`` ago (0.0: no worker is expected)."""
        until = now + self.config.route_grace if self.config.route_grace else 0.0
        departed = self._departed
        if departed:
            for pattern in list(self._departed_index.match(subject)):
                gone_until = departed[pattern]  # type: ignore[index]
                if gone_until <= now:
                    del departed[pattern]  # type: ignore[arg-type]
                    self._departed_index.remove(pattern, pattern)  # type: ignore[arg-type]
                elif gone_until > until:
                    until = gone_until
        return until

    def _no_route_text(self, subject: str, now: float) -> str:
        """``no_route``'s words: the subject, and the served pattern it may have meant."""
        text = f"no worker serves subject {subject}"
        close = self._suggestion(subject, now)
        if close:
            text += f" (did you mean {close}?)"
        return text

    def _suggestion(self, subject: str, now: float) -> str | None:
        """The served pattern closest to ``subject``, if one is close; None too when
        finding it would cost too much (a long subject, or past a budget of
        :data:`SUGGESTIONS_PER_SECOND`: a flood of unserved submits stays cheap)."""
        if len(subject) > MAX_SUGGESTED_LENGTH:
            return None
        cache = self._suggestions
        cached = cache.get(subject)
        if cached is not None and cached[0] == self._routes_version:
            return cached[1]
        tokens = min(
            SUGGESTIONS_PER_SECOND,
            self._suggest_tokens + (now - self._suggest_at) * SUGGESTIONS_PER_SECOND,
        )
        self._suggest_at = now
        if tokens < 1:
            self._suggest_tokens = tokens
            return None
        self._suggest_tokens = tokens - 1
        served: dict[str, None] = {}
        for worker in self.workers:
            if worker.mode == GroupMode.BROADCAST:
                continue
            for pattern in worker.patterns:
                if len(pattern) <= MAX_SUGGESTED_LENGTH:
                    served[pattern] = None
            if len(served) >= MAX_SUGGESTIONS:
                break
        close = difflib.get_close_matches(subject, list(served)[:MAX_SUGGESTIONS], n=1, cutoff=0.6)
        if len(cache) >= MAX_SUGGESTIONS * 5:
            cache.clear()
        suggestion = close[0] if close else None
        cache[subject] = (self._routes_version, suggestion)
        return suggestion

    def _feed(self, worker: WorkerLink, now: float) -> None:
        """Give a worker with free credit the jobs waiting for it: its sticky backlog,
        then those of the queues whose jobs found no worker with room (``worker.hungry``,
        each in turn). Queues with nothing waiting are not visited, however many the
        worker serves: a flood of Credit costs O(1) each."""
        backlog = worker.backlog
        inflight = worker.inflight
        while backlog and len(inflight) < worker.window:
            job = backlog.popleft()
            if job.state is JobState.QUEUED:
                if job.wait_deadline <= now:
                    self._expire(job, now)
                else:
                    self._assign(job, worker, now)
        hungry = worker.hungry
        while hungry and len(inflight) < worker.window:
            queue = next(iter(hungry))
            if queue.pending:
                self._dispatch(queue, now)
                if queue.pending and len(inflight) >= worker.window:
                    hungry.move_to_end(queue)  # (the other queues' turn first, next time)
                    return
            hungry.pop(queue, None)
            queue.starved = False  # (so that its next jobs with no room tell every worker)

    def _assign(self, job: JobRecord, worker: WorkerLink, now: float) -> None:
        job.move(JobState.ASSIGNED)
        job.attempt += 1
        if self.journal is not None:
            self.journal.assign(job)
        job.worker = worker
        job.assigned_at = now
        deadline = now + self.config.ack_timeout
        job.ack_deadline = deadline
        inflight = worker.inflight
        if job.job_id in inflight:  # (its earlier attempt timed out on this very worker)
            del inflight[job.job_id]
            worker.deadlines.pop(job.job_id, None)
        inflight[job.job_id] = job
        worker.deadlines[job.job_id] = deadline  # (last: the order of the deadlines)
        retries = self.retries
        if deadline < retries.soonest:
            retries.soonest = deadline
        worker.assigned_total += 1
        # Every field comes from a validated Submit (or the config): no need to check again.
        try:
            worker.send_item(
                _assign_item(
                    mid=worker.next_mid(),
                    job_id=job.job_id,
                    subject=job.subject,
                    payload=job.payload,
                    headers=job.headers,
                    attempt=job.attempt,
                    qos=job.qos,
                    ack_timeout=self.config.ack_timeout,
                    deadline=None if job.expires_at is None else max(job.expires_at - now, 0.001),
                    max_attempts=retries.policy(job)[0]
                    if retries.group_retry
                    else job.max_attempts,
                )
            )
        except MessageTooLarge as exc:
            # Over this worker's own frame limit: this delivery fails (the job is
            # retried, maybe on another worker, until its attempts run out).
            self._release(worker, job.job_id)
            self._failed_attempt(
                job,
                ("TooLarge", f"the job does not fit worker {worker.name}'s frame limit: {exc}"),
                now,
            )

    def _enqueue(self, job: JobRecord, now: float, *, front: bool = False) -> None:
        """Put a job that is counted as waiting into its subject's queue."""
        queue = self._queue(job.subject)
        if front:
            queue.pending.appendleft(job)
        else:
            queue.pending.append(job)
            self.retries.watch_expiry(job, len(self.jobs))
        self._dispatch(queue, now)

    def _remove_pending(self, job: JobRecord) -> None:
        """``job`` (queued) leaves its queue early: its entry stays, skipped later by its
        state, and the queue is compacted once such entries are half of it."""
        queue = self.queues.get(job.subject)
        if queue is None:
            return
        queue.stale += 1
        pending = queue.pending
        if queue.stale > 64 and 2 * queue.stale > len(pending):
            live = [j for j in pending if j.state is JobState.QUEUED and j is not job]
            pending.clear()  # (in place: a _dispatch further up may hold it)
            pending.extend(live)
            queue.stale = 0

    # ------------------------------------------------------------------ answers from workers

    def _release(self, worker: WorkerLink, job_id: str) -> JobRecord | None:
        job = worker.inflight.pop(job_id, None)
        if job is not None:
            worker.deadlines.pop(job_id, None)
        return job

    def result(self, worker: WorkerLink, msg: Result, now: float) -> None:
        """A worker finished a job (or failed it). The first answer wins; a late one from
        a worker whose attempt already timed out still frees its slot."""
        job = self._release(worker, msg.job_id)
        if job is not None and self.journal is not None:
            # Its slot frees once the result is written (see release).
            worker.held += 1
            worker.window = max(0, worker.granted - worker.held)
            self._held_slots.append(worker)
        if job is not None and not job.state.final:
            worker.done_total += 1
            if msg.ok or job.qos == 0 or msg.final:
                if job.state is not JobState.ASSIGNED:
                    self._leave_waiting(job)
                if job.worker is not None and job.worker is not worker:
                    self._release_other(job)
                    job.worker = worker  # (its answer ends the job: the job says it ran it)
                latency = now - job.submitted_at
                result = msg.payload
                size = (9 if result is None else payload_size(result)) + JOB_OVERHEAD
                if not msg.ok:  # (its texts are kept too)
                    size += (
                        len(msg.error_type or "")
                        + len(msg.error_message or "")
                        + len(msg.traceback or "")
                    )
                ok = msg.ok
                stored = StoredResult(
                    ok,
                    msg.payload,
                    msg.error_type,
                    msg.error_message,
                    job.attempt,
                    msg.traceback,
                    job.subject,
                    job.payload,
                    msg.final,
                )
                size += job.size
                if size > SURELY_FITS and not self._result_fits(job.job_id, stored):
                    # Nobody could be sent it: the worker is told, the job fails (the same
                    # result would come again from a retry).
                    text = (
                        f"the result of job {job.job_id} is too large to forward: over the"
                        f" leader's frame limit of {self.config.max_frame} bytes"
                    )
                    self._refuse(worker, msg, ErrorCode.TOO_LARGE, text)
                    ok = False
                    stored = StoredResult(
                        False,
                        None,
                        "ResultTooLarge",
                        text,
                        job.attempt,
                        None,
                        job.subject,
                        job.payload,
                        True,
                    )
                    size = job.size + len(text)
                count_result(job.queue or self._queue(job.subject), ok, latency)
                count_result(worker.stats, ok, latency)
                self._finish(job, JobState.DONE, stored, now, size)
            elif job.state is JobState.ASSIGNED and job.worker is worker:
                self._failed_attempt(
                    job,
                    (msg.error_type or "Error", msg.error_message or ""),
                    now,
                    traceback=msg.traceback,
                )
        if worker.hungry or worker.backlog:
            self._feed(worker, now)

    def _result_fits(self, job_id: str, stored: StoredResult) -> bool:
        """Whether the Result of a large answer fits the frame limit (encoded exactly)."""
        try:
            item = _result_item(
                mid=2**32,
                cid=2**32,
                job_id=job_id,
                ok=stored.ok,
                payload=stored.payload,
                error_type=stored.error_type,
                error_message=stored.error_message,
                attempts=stored.attempts,
            )
            encoded = len(encode_array(item))
        except Exception:  # (noqa: BLE001) it could not be forwarded at all
            return False
        return encoded + BUNDLE_OVERHEAD + FORWARD_RESERVE <= self.config.max_frame

    def nack(self, worker: WorkerLink, msg: Nack, now: float) -> None:
        """A worker gave a job back: redeliver after its delay (or the backoff)."""
        job = self._release(worker, msg.job_id)
        if job is None:
            return  # (not a job it holds: no slot freed, nothing to feed)
        if job.state is JobState.ASSIGNED and job.worker is worker:
            self._failed_attempt(job, ("Nack", msg.reason), now, delay=msg.delay)
        self._feed(worker, now)

    def progress(self, worker: WorkerLink, msg: Progress, now: float) -> None:
        """A worker reported progress: extend the ack deadline, tell the waiting clients."""
        job = worker.inflight.get(msg.job_id)
        if job is None or job.worker is not worker or job.state is not JobState.ASSIGNED:
            return  # (a slot whose attempt timed out: it has no deadline, and tells nobody)
        # Move to the end: its deadline is now the latest, which keeps the order.
        del worker.inflight[msg.job_id]
        worker.deadlines.pop(msg.job_id, None)
        worker.inflight[msg.job_id] = job
        deadline = now + self.config.ack_timeout
        worker.deadlines[msg.job_id] = deadline
        job.ack_deadline = deadline
        if now - job.progress_at < PROGRESS_INTERVAL and msg.fraction != 1.0:
            return  # (told its clients just now: a flood of Progress is not fanned out)
        job.progress_at = now
        for client, _cid in job.waiters:
            client.send(
                Progress(
                    mid=client.next_mid(), job_id=job.job_id, fraction=msg.fraction, note=msg.note
                )
            )

    def ack(self, worker: WorkerLink, msg: Ack, now: float) -> None:
        """An Ack of a job counts like Progress: the worker has it and is alive."""
        if msg.job_id is not None and msg.job_id in worker.inflight:
            self.progress(worker, Progress(mid=msg.mid, job_id=msg.job_id), now)

    def _release_other(self, job: JobRecord) -> None:
        """Another worker's attempt is moot now: ask it to stop (its slot frees when it answers)."""
        other = job.worker
        if other is not None and job.job_id in other.inflight:
            other.send(Cancel(mid=other.next_mid(), job_id=job.job_id, reason="finished elsewhere"))

    # ------------------------------------------------------------------ finishing

    def _leave_waiting(self, job: JobRecord) -> None:
        """A queued or retry-waiting job is taken out of waiting (the heap entry or sticky
        backlog entry it leaves behind is skipped later by its state)."""
        if job.state is JobState.QUEUED:
            self._remove_pending(job)

    def _finish(
        self,
        job: JobRecord,
        state: JobState,
        stored: StoredResult | None,
        now: float,
        size: int | None = None,
    ) -> None:
        """End ``job``: uncount it from the limits, store its result (``size`` bytes, for
        the stored results' limit; by default the job's own size) and answer every client
        waiting for it."""
        job.move(state)
        if self.journal is not None:
            self.journal.finish(job, state, stored, now)
        ran_by = job.worker
        job.worker = None
        job.payload = None  # (entries of the expiry queues may keep the record a while)
        self.jobs.pop(job.job_id, None)
        job_size = job.size
        self.job_bytes -= job_size
        queue = job.queue
        if queue is not None:
            queue.jobs -= 1
            queue.job_bytes -= job_size
            if not queue.jobs and queue.pending:
                queue.pending.clear()  # only entries that left early: none of them waits
                queue.stale = 0
        owner = job.owner
        if owner is not None:
            owner.jobs -= 1
            owner.job_bytes -= job_size
        if stored is not None:
            # (who ran it and when, with its owner: one tuple, built here for every end)
            stored = stored._make(
                (
                    *stored[:_STORED_OWN_FIELDS],
                    stored.identity if job.identity is None else job.identity,
                    getattr(ran_by, "name", None),
                    job.submitted_at,
                    job.assigned_at if job.attempt else None,
                    now,
                )
            )
            self.finished.add(
                job.job_id, now, stored, job.size + JOB_OVERHEAD if size is None else size
            )
            self._count_done(now)
        answer = self._answer
        for client, cid in job.waiters:
            client.waiting.pop(job.job_id, None)
            if stored is None:
                answer(
                    send_to,
                    client,
                    Error(
                        mid=client.next_mid(),
                        cid=cid,
                        code=ErrorCode.NO_ROUTE if job.awaiting_route else ErrorCode.TIMEOUT,
                        message=self._expired_text(job, now),
                        job_id=job.job_id,
                    ),
                )
            else:
                answer(self._reply, client, cid, job.job_id, stored)
        job.waiters = []

    @staticmethod
    def _reply(client: Submitter, cid: int, job_id: str, stored: StoredResult) -> None:
        try:
            client.send_item(
                _result_item(  # the fields come from a validated Result (or the broker)
                    mid=client.next_mid(),
                    cid=cid,
                    job_id=job_id,
                    ok=stored.ok,
                    payload=stored.payload,
                    error_type=stored.error_type,
                    error_message=stored.error_message,
                    attempts=stored.attempts,
                    traceback=stored.traceback,
                    final=stored.final,
                    error_code=ErrorCode.CANCELLED if type(stored) is CancelledResult else None,
                )
            )
        except MessageTooLarge as exc:
            # Over this client's own frame limit: it is told so (the result stays stored
            # for the dedup window, for a client that can take it).
            client.send(
                Error(
                    mid=client.next_mid(),
                    cid=cid,
                    code=ErrorCode.TOO_LARGE,
                    message=f"the result of job {job_id} does not fit your frame limit: {exc}",
                    job_id=job_id,
                )
            )

    def _expired_text(self, job: JobRecord, now: float) -> str:
        if job.awaiting_route:
            return (
                f"{self._no_route_text(job.subject, now)}; none came within"
                f" {now - job.submitted_at:g} s (the leader's route_grace is"
                f" {self.config.route_grace:g} s, its restart_grace {self.config.restart_grace:g} s)"
            )
        if job.expires_at is not None and job.expires_at <= now:
            return f"job {job.job_id} expired before a worker took it (its timeout passed)"
        return (
            f"job {job.job_id} expired: it waited {self.config.max_queue_time:g} s for a"
            f" worker (the leader's max_queue_time)"
        )

    # ------------------------------------------------------------------ restarts

    def restore(self, recovered: Recovered, now: float, offset: float) -> None:
        """Take back what the journal held when the leader started (``offset``: wall-clock
        time minus the broker's clock): unfinished jobs queue again (those waiting for a
        retry or their delay wait on; those a worker held when the leader stopped count
        that attempt and are redelivered, or dead-lettered when it was their last), results
        finished within the dedup window answer resubmissions and queries again, and the
        newest dead letters are kept in memory. Nobody waits for a restored job until a
        client submits its id again or asks for its result."""
        finished = self.finished
        for job_id, finished_at, stored, size in recovered.results:
            finished.add(job_id, min(now, finished_at - offset), stored, size)
        retries = self.retries
        for record in recovered.dead_letters:
            size = record.get("size", 0)
            record = dict(record)
            record.pop("size", None)
            record.pop("max_attempts", None)
            retries.keep_dead_letter(record, size)
        jobs = self.jobs
        for rec in recovered.jobs:
            queue = self._queue(rec.subject)
            job = JobRecord(
                job_id=rec.job_id,
                subject=rec.subject,
                payload=rec.payload,
                headers=rec.headers,
                qos=rec.qos,
                max_attempts=rec.max_attempts,
                submitted_at=rec.submitted_at - offset,
                expires_at=None if rec.expires_at is None else rec.expires_at - offset,
                submitted_max_attempts=rec.submitted_max_attempts,
                attempt=rec.attempt,
                last_error=rec.last_error,
                last_traceback=rec.last_traceback,
                size=rec.size,
                queue=queue,
                identity=rec.identity,
            )
            self._count_in(job, queue)
            if rec.state is JobState.ASSIGNED:
                job.state = JobState.ASSIGNED
                self._failed_attempt(
                    job,
                    ("LeaderRestarted", "the leader stopped while a worker held the job"),
                    now,
                )
            elif rec.state is JobState.RETRY_WAIT and rec.retry_at is not None:
                job.state = JobState.RETRY_WAIT
                job.retry_at = rec.retry_at - offset
                retries.wait_retry(job, now, since=max(now, job.retry_at))
            else:
                job.wait_deadline = retries.wait_deadline(job, now)
                queue.pending.append(job)
                retries.watch_expiry(job, len(jobs))
                if queue.candidates and not queue.starved:
                    self._starve(queue)

    # ------------------------------------------------------------------ dead letters

    def requeue_dead_letter(
        self, record: Mapping[str, Any], now: float, *, forget: bool = True
    ) -> str | None:
        """Submit dead letter ``record`` (a whole one, with its payload) again as a new job
        under its id, its attempts reset, and forget the dead letter (unless ``forget`` is
        false: the caller forgets a page of them at once, with :meth:`forget_dead_letters`,
        which costs a pass over those kept in memory). Returns why it could not (its id
        names a job still running, or the leader's queue is full), or None."""
        job_id = record["job_id"]
        if job_id in self.jobs:
            return f"job {job_id} is running again already"
        if self.requeue_shared is not None:  # (into the shared store, for any leader)
            refusal = self.requeue_shared(record)
            if refusal is None and forget:
                self.forget_dead_letters({job_id})
            return refusal
        if self.journal is not None and self.journal.refusal is not None:
            return self.journal.refusal
        job = self._admit(
            job_id, record["subject"], record.get("payload"), dict(record.get("headers") or {}),
            record.get("max_attempts"), now, record.get("identity"),
        )  # fmt: skip
        if type(job) is str:
            return job
        if self.journal is not None:
            self.journal.accept(job, now)
        if forget:
            self.forget_dead_letters({job_id})
        self._queue_again(job, now)
        return None

    def forget_dead_letters(self, job_ids: set[str] | None) -> int:
        """Forget the dead letters of ``job_ids`` (every one when None) kept in memory and
        in the journal (in its next write: all of them at once when None, those written
        and those pending, so that memory and file agree on what died since). Returns
        how many of those kept in memory went."""
        count = self.retries.forget_dead_letters(job_ids)
        if self.journal is not None:
            if job_ids is None:
                self.journal.purge_dead_letters_later()
            else:
                self.journal.forget_dead_letters(job_ids)
        return count

    @property
    def dead_letter_count(self) -> int:
        """How many dead letters there are: with a journal, those it holds (all of them,
        as of its last write: see :attr:`SqliteJournal.dead_letter_count
        <actors.leader._journal.SqliteJournal.dead_letter_count>`), else those kept in
        memory."""
        if self.journal is not None:
            return self.journal.dead_letter_count
        return len(self.retries.dead_letters)

    # ------------------------------------------------------------------ statistics

    def stats(self, *, subject_percentiles: bool = True) -> dict[str, Any]:
        """Counters per subject and per group, and totals (see :func:`broker_stats`;
        without ``subject_percentiles``, the caller estimates the latency percentiles of
        the subjects it lists: :func:`~actors.leader._stats.add_subject_percentiles`)."""
        return broker_stats(
            self.workers,
            self.queues,
            self.group_stats,
            jobs_active=len(self.jobs),
            results_stored=len(self.finished),
            dead_letters=self.dead_letter_count,
            dead_letters_kept=len(self.retries.dead_letters),
            retained=len(self.retained),
            subject_percentiles=subject_percentiles,
        )


def _no_lease_failed(job: JobRecord, delay: float | None, record: dict[str, Any] | None) -> None:
    raise RuntimeError(f"job {job.job_id} is leased, and no shared store takes it back")
