"""The leader's brain, sans-I/O: queues, credit, routing, acks, redelivery, dedup.

The broker never awaits and never reads a clock: every method takes ``now``, and messages
leave through each link's ``send`` callable. The :class:`~actors.Leader` feeds it what
connections receive and calls :meth:`Broker.handle_timer` at :meth:`Broker.next_deadline`.
So every delivery rule (credit, ack deadlines, backoff, dead letters, dedup) is tested
without an event loop, at exact times.

Per job the work is O(1) in the number of jobs: a dict lookup for dedup, a deque per
subject, a dict per worker for what it holds (in assignment order, so with one ack timeout
the first entry has the earliest deadline), and a heap only for jobs waiting out a backoff.
"""

from __future__ import annotations

import itertools
import random
from collections import deque
from typing import Any

import attrs

from protocol import (
    Ack,
    Assign,
    Cancel,
    Error,
    ErrorCode,
    Nack,
    Progress,
    Result,
    SubjectIndex,
    Submit,
)
from runtime import Backoff, DedupCache

from ._jobs import JobRecord, JobState, Journal, StoredResult
from ._links import ClientLink, GroupStats, SubjectQueue, WorkerLink
from ._pubsub import PubSub
from ._redelivery import Redelivery
from ._routing import EXACT_LEAST_LOADED as EXACT_LEAST_LOADED  # (re-exported: tests)
from ._routing import LEAST_LOADED_SAMPLES as LEAST_LOADED_SAMPLES
from ._routing import pick_worker
from ._stats import broker_stats, count_result

#: Groups whose statistics are kept at most; past it, those of a group with no worker
#: connected are dropped, oldest first.
MAX_GROUP_STATS = 10_000

_assign_item = Assign.item  # type: ignore[attr-defined]
_result_item = Result.item  # type: ignore[attr-defined]


@attrs.define(eq=False)
class BrokerConfig:
    """Delivery settings of a leader.

    Args:
      ack_timeout: seconds a worker has to answer a job (Progress extends it).
      max_attempts: deliveries of a QoS 1 job before it is dead-lettered.
      retry_backoff: delay before redelivery, by attempt number.
      max_queued: jobs waiting (queued or in backoff) before submits are answered ``busy``.
      dedup_window: seconds a finished job's result is kept for resubmissions.
      dedup_capacity: results kept at most (the oldest go first).
      max_retained: subjects whose last published message is retained, at most.
      max_dead_letters: dead-lettered jobs kept for inspection.
    """

    ack_timeout: float = 30.0
    max_attempts: int = 5
    retry_backoff: Backoff = attrs.field(
        factory=lambda: Backoff(base=0.5, factor=2.0, cap=30.0, jitter=0.1)
    )
    max_queued: int = 100_000
    dedup_window: float = 600.0
    dedup_capacity: int = 100_000
    max_retained: int = 10_000
    max_dead_letters: int = 1_000


class Broker(Redelivery, PubSub):
    """Queues jobs per subject and hands them to workers against their credit.

    Retry and timers come from :class:`~actors._redelivery.Redelivery`, publish/subscribe
    from :class:`~actors._pubsub.PubSub`, the choice of a worker for each job from
    :func:`~actors._routing.pick_worker`.

    Args:
      config: delivery settings.
      rng: the random source of backoff jitter (seed it in tests).
      journal: called on every job state transition (for persistence).
    """

    def __init__(
        self,
        config: BrokerConfig | None = None,
        *,
        rng: random.Random | None = None,
        journal: Journal | None = None,
    ) -> None:
        self.config = config or BrokerConfig()
        self.rng = rng or random.Random()
        self.journal = journal
        self.jobs: dict[str, JobRecord] = {}
        self.finished = DedupCache(
            capacity=self.config.dedup_capacity, ttl=self.config.dedup_window
        )
        self.queues: dict[str, SubjectQueue] = {}
        self.workers: dict[WorkerLink, None] = {}
        self.worker_index = SubjectIndex()
        self.sub_index = SubjectIndex()
        self.retained: dict[str, tuple[Any, dict[str, str]]] = {}
        self.dead_letters: deque[dict[str, Any]] = deque(maxlen=self.config.max_dead_letters)
        self.group_stats: dict[str, GroupStats] = {}
        self.waiting_count = 0  # queued + retry_wait
        self._retry_heap: list[tuple[float, int, JobRecord]] = []
        self._soonest = float("inf")  # earliest deadline made since take_soonest()
        self._seq = itertools.count()
        self._queue_rr: dict[str, int] = {}
        self._done_window_start = 0.0
        self._done_in_window = 0
        self._done_rate = 0.0

    # ------------------------------------------------------------------ workers

    def worker_joined(self, worker: WorkerLink, now: float) -> None:
        """A worker said Hello: index its patterns and give it work."""
        self.workers[worker] = None
        worker.stats = self._group_stats(worker.group)
        for pattern in worker.patterns:
            self.worker_index.add(pattern, worker)
        if worker.mode == "broadcast":
            return
        for queue in self.queues.values():
            if self._serves(worker, queue.subject):
                queue.candidates.append(worker)
                worker.queues.append(queue)
        self._feed(worker, now)

    def _group_stats(self, group: str) -> GroupStats:
        stats = self.group_stats.get(group)
        if stats is None:
            if len(self.group_stats) >= MAX_GROUP_STATS:
                live = {w.group for w in self.workers}
                for name in [g for g in self.group_stats if g not in live][: len(self.group_stats) // 10 + 1]:
                    del self.group_stats[name]
            stats = self.group_stats[group] = GroupStats()
        return stats

    def worker_left(self, worker: WorkerLink, now: float) -> None:
        """A worker went away: whatever it held is redelivered (each counts as an attempt)."""
        if worker not in self.workers:
            return
        del self.workers[worker]
        for pattern in worker.patterns:
            self.worker_index.remove(pattern, worker)
        for queue in worker.queues:
            queue.candidates.remove(worker)
        worker.queues.clear()
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
                self.waiting_count -= 1  # counted again by _enqueue
                self._enqueue(job, now, front=True)

    def set_window(self, worker: WorkerLink, credit: int, now: float) -> None:
        """A worker changed its credit window (0 = send nothing more)."""
        worker.window = credit
        self._feed(worker, now)

    def _serves(self, worker: WorkerLink, subject: str) -> bool:
        return worker in self.worker_index.match(subject)

    # ------------------------------------------------------------------ clients

    def client_left(self, client: ClientLink) -> None:
        """A client went away: forget its waits (the jobs go on) and subscriptions."""
        for job_id in client.waiting:
            job = self.jobs.get(job_id)
            if job is not None:
                job.waiters = [w for w in job.waiters if w[0] is not client]
        client.waiting.clear()
        for sub in client.subscriptions.values():
            self.sub_index.remove(sub.pattern, sub)
        client.subscriptions.clear()

    # ------------------------------------------------------------------ jobs in

    def submit(self, client: ClientLink, msg: Submit, now: float) -> None:
        """A client submitted a job: dedup it, queue it, maybe assign it at once."""
        job_id = msg.job_id
        job = self.jobs.get(job_id)
        if job is not None:  # in flight already: merge the waits
            job.waiters.append((client, msg.mid))
            client.waiting[job_id] = None
            return
        stored = self.finished.get(job_id, now)
        if stored is not None:
            self._reply(client, msg.mid, job_id, stored)
            return
        if self.waiting_count >= self.config.max_queued:
            client.send(
                Error(
                    mid=client.next_mid(),
                    cid=msg.mid,
                    code=ErrorCode.BUSY,
                    message=f"leader queue is full ({self.config.max_queued} jobs waiting)",
                    job_id=job_id,
                    retry_after=self._retry_after(),
                )
            )
            return
        job = JobRecord(
            job_id=job_id,
            subject=msg.subject,
            payload=msg.payload,
            headers=msg.headers,
            qos=msg.qos,
            max_attempts=msg.max_attempts or self.config.max_attempts,
            submitted_at=now,
            expires_at=None if msg.timeout is None else now + msg.timeout,
            submitted_max_attempts=msg.max_attempts,
        )
        job.waiters.append((client, msg.mid))
        client.waiting[job_id] = None
        self.jobs[job_id] = job
        if self.journal is not None:
            self.journal(job, JobState.QUEUED, JobState.QUEUED)
        queue = self._queue(msg.subject)
        queue.submitted += 1
        if not queue.pending and job.expires_at is None:
            # Nothing queued ahead of it: straight to a worker with room, if there is one
            # (what _dispatch would do, without the trip through the queue).
            worker = pick_worker(queue, job, self.rng)
            if worker is not None and len(worker.inflight) < worker.window:
                self._assign(job, worker, now)
                return
            self.waiting_count += 1
            if worker is not None:  # sticky target is busy: wait for it
                worker.backlog.append(job)
            else:
                queue.pending.append(job)
            return
        self.waiting_count += 1
        queue.pending.append(job)
        self._dispatch(queue, now)

    def cancel(self, client: ClientLink, msg: Cancel, now: float) -> None:
        """A client cancels a job: a waiting job ends at once, a running one is cancelled
        on its worker (whose answer then finishes it)."""
        job = self.jobs.get(msg.job_id)
        if job is None or job.state.final:
            return
        if job.state is JobState.ASSIGNED:
            if job.worker is not None:
                # The worker's answer ends the job (see Redelivery._failed_attempt); a result
                # that comes first still wins.
                job.cancel_reason = msg.reason or "cancelled by client"
                job.worker.send(Cancel(mid=job.worker.next_mid(), job_id=job.job_id, reason=msg.reason))
            return
        self._leave_waiting(job)
        self._cancelled(job, msg.reason or "cancelled by client", now)

    # ------------------------------------------------------------------ routing

    def _queue(self, subject: str) -> SubjectQueue:
        queue = self.queues.get(subject)
        if queue is None:
            queue = SubjectQueue(subject)
            for worker in self.worker_index.match(subject):
                if worker.mode != "broadcast" and worker not in queue.candidates:
                    queue.candidates.append(worker)
                    worker.queues.append(queue)
            self.queues[subject] = queue
        return queue

    def _dispatch(self, queue: SubjectQueue, now: float) -> None:
        pending = queue.pending
        while pending:
            job = pending[0]
            if job.expires_at is not None and job.expires_at <= now:
                pending.popleft()
                self.waiting_count -= 1
                queue.expired += 1
                self._finish(job, JobState.EXPIRED, None, now)
                continue
            worker = pick_worker(queue, job, self.rng)
            if worker is None:
                return
            pending.popleft()
            if len(worker.inflight) >= worker.window:  # sticky target is busy: wait for it
                worker.backlog.append(job)
                continue
            self.waiting_count -= 1
            self._assign(job, worker, now)

    def _feed(self, worker: WorkerLink, now: float) -> None:
        """Give a worker with free credit the jobs waiting for it."""
        backlog = worker.backlog
        while backlog and len(worker.inflight) < worker.window:
            job = backlog.popleft()
            if job.state is JobState.QUEUED:
                self.waiting_count -= 1
                self._assign(job, worker, now)
        for queue in worker.queues:
            if len(worker.inflight) >= worker.window:
                return
            if queue.pending:
                self._dispatch(queue, now)

    def _assign(self, job: JobRecord, worker: WorkerLink, now: float) -> None:
        job.move(JobState.ASSIGNED, self.journal)
        job.attempt += 1
        job.worker = worker
        job.assigned_at = now
        deadline = now + self.config.ack_timeout
        job.ack_deadline = deadline
        worker.inflight[job.job_id] = job
        worker.deadlines[job.job_id] = deadline
        if deadline < self._soonest:
            self._soonest = deadline
        worker.assigned_total += 1
        # Every field comes from a validated Submit (or the config): no need to check again.
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
            )
        )

    def _enqueue(self, job: JobRecord, now: float, *, front: bool = False) -> None:
        queue = self._queue(job.subject)
        self.waiting_count += 1
        if front:
            queue.pending.appendleft(job)
        else:
            queue.pending.append(job)
        self._dispatch(queue, now)

    def _remove_pending(self, job: JobRecord) -> None:
        queue = self.queues.get(job.subject)
        if queue is not None and job in queue.pending:
            queue.pending.remove(job)

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
        if job is not None and not job.state.final:
            worker.done_total += 1
            if msg.ok or job.qos == 0:
                if job.state is not JobState.ASSIGNED:
                    self._leave_waiting(job)
                if job.worker is not None and job.worker is not worker:
                    self._release_other(job)
                latency = now - job.submitted_at
                count_result(self._queue(job.subject), msg.ok, latency)
                count_result(worker.stats, msg.ok, latency)
                self._finish(
                    job,
                    JobState.DONE,
                    StoredResult(msg.ok, msg.payload, msg.error_type, msg.error_message, job.attempt),
                    now,
                )
            elif job.state is JobState.ASSIGNED and job.worker is worker:
                self._failed_attempt(job, (msg.error_type or "Error", msg.error_message or ""), now)
        if self.waiting_count:  # (it counts every queued job, backlogs included)
            self._feed(worker, now)

    def nack(self, worker: WorkerLink, msg: Nack, now: float) -> None:
        """A worker gave a job back: redeliver after its delay (or the backoff)."""
        job = self._release(worker, msg.job_id)
        if job is not None and job.state is JobState.ASSIGNED and job.worker is worker:
            self._failed_attempt(job, ("Nack", msg.reason), now, delay=msg.delay)
        self._feed(worker, now)

    def progress(self, worker: WorkerLink, msg: Progress, now: float) -> None:
        """A worker reported progress: extend the ack deadline, tell the waiting clients."""
        job = worker.inflight.get(msg.job_id)
        if job is None:
            return
        # Move to the end: its deadline is now the latest, which keeps the order.
        del worker.inflight[msg.job_id]
        worker.deadlines.pop(msg.job_id, None)
        worker.inflight[msg.job_id] = job
        deadline = now + self.config.ack_timeout
        worker.deadlines[msg.job_id] = deadline
        if job.worker is worker:
            job.ack_deadline = deadline
        for client, _cid in job.waiters:
            client.send(
                Progress(mid=client.next_mid(), job_id=job.job_id, fraction=msg.fraction, note=msg.note)
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
        self.waiting_count -= 1

    def _finish(self, job: JobRecord, state: JobState, stored: StoredResult | None, now: float) -> None:
        job.move(state, self.journal)
        job.worker = None
        self.jobs.pop(job.job_id, None)
        if stored is not None:
            self.finished.add(job.job_id, now, stored)
            self._count_done(now)
        for client, cid in job.waiters:
            client.waiting.pop(job.job_id, None)
            if stored is None:
                client.send(
                    Error(
                        mid=client.next_mid(),
                        cid=cid,
                        code=ErrorCode.TIMEOUT,
                        message=f"job {job.job_id} expired before a worker took it",
                        job_id=job.job_id,
                    )
                )
            else:
                self._reply(client, cid, job.job_id, stored)
        job.waiters = []

    @staticmethod
    def _reply(client: ClientLink, cid: int, job_id: str, stored: StoredResult) -> None:
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
            )
        )

    # ------------------------------------------------------------------ statistics

    def stats(self) -> dict[str, Any]:
        """Counters per subject and per group, and totals (see :func:`broker_stats`)."""
        return broker_stats(self)
