"""Redelivery, sans-I/O: when failed attempts are retried, when waiting jobs expire, and
the dead letters kept.

:class:`RetryScheduler` owns the timers of the jobs that wait: a failed attempt waiting out
its backoff (in a heap), a queued job until its wait deadline (``max_queue_time``, its
client's timeout); and the retry policies of worker groups, and the dead letters kept for
inspection (bounded in count and bytes). It decides and answers what is due at ``now``;
the :class:`~actors.leader.Broker` acts on it (requeues, expires or dead-letters the job,
answers its clients). Each worker's ack deadlines stay on its link, in assignment order
(the earliest is always the first): the scheduler reads them there for the next deadline
and takes those that passed.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import random
from collections import deque
from collections.abc import Collection, Iterator, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import attrs

from runtime import Backoff

from ._jobs import JobRecord, JobState

if TYPE_CHECKING:
    from ._links import WorkerLink

#: Prefix of dead-letter subjects: a job of subject ``s`` that runs out of attempts is
#: published on ``$dlq.s``.
DLQ_PREFIX = "$dlq."

log = logging.getLogger("actors.leader")


def _attempts(instance: object, attribute: attrs.Attribute[int | None], value: int | None) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(f"max_attempts must be None or an int >= 1, got {value!r}")


def _waits_until(job: JobRecord, deadline: float) -> bool:
    """Whether an expiry entry for ``deadline`` still stands for queued ``job``."""
    return job.state is JobState.QUEUED and job.wait_deadline == deadline


@attrs.frozen
class GroupRetry:
    """The retry policy of one worker group (``[groups.retry]`` in a cluster file).

    It applies to every failed attempt made on a worker of the group (an exception, a
    Nack, a missed ack deadline, the worker going away), in place of the leader's:

    Attributes:
      max_attempts: deliveries before the job is dead-lettered, instead of the leader's
        ``max_attempts``. A submit that names its own ``max_attempts`` (other than the
        leader's default) keeps it. None: the leader's.
      backoff: the delay before the next delivery, instead of the leader's
        ``retry_backoff``. None: the leader's. (A Nack's own delay still wins.)
    """

    max_attempts: int | None = attrs.field(default=None, validator=_attempts)
    backoff: Backoff | None = attrs.field(
        default=None, validator=attrs.validators.optional(attrs.validators.instance_of(Backoff))
    )


_INF = float("inf")


@attrs.define(eq=False, kw_only=True)
class RetryScheduler:
    """The broker's timers, retry policies and dead letters, at the times it is given.

    It answers when a failed attempt is retried (:meth:`retry_at`: the leader's backoff or
    the :class:`GroupRetry` of the worker's group), holds the jobs that wait
    (:meth:`wait_retry`, :meth:`watch_expiry`) and gives them back when due
    (:meth:`due_retries`, :meth:`due_expiries`), takes the workers' missed ack deadlines
    (:meth:`missed_acks`), tells when something is next due (:meth:`next_deadline`,
    :meth:`take_soonest`) and keeps the dead letters (:meth:`dead_letter`). It never moves
    a job's state: the broker does, and hands it the jobs that begin to wait.

    Args:
      backoff: the delay before a retry, by attempt (the leader's ``retry_backoff``).
      rng: the random source of the backoff's jitter.
      max_queue_time: seconds a job may wait for a worker (None: no limit).
      max_dead_letters: dead letters kept at most (the oldest go first).
      max_dead_letter_bytes: bytes of dead letters kept at most (the oldest go first).
    """

    backoff: Backoff
    rng: random.Random
    max_queue_time: float | None
    max_dead_letters: int
    max_dead_letter_bytes: int
    #: Retry policies by worker group name (see :meth:`set_group_retry`).
    group_retry: Mapping[str, GroupRetry] = attrs.field(
        init=False, factory=lambda: MappingProxyType({})
    )
    #: Dead-lettered jobs kept for inspection, oldest first (see :meth:`dead_letter`).
    dead_letters: deque[dict[str, Any]] = attrs.field(init=False, factory=deque)
    #: Bytes of :attr:`dead_letters`: each one's job size and error texts.
    dead_letter_bytes: int = attrs.field(init=False, default=0)
    #: The earliest deadline made since :meth:`take_soonest` (``inf``: none). The broker
    #: lowers it for each ack deadline it sets (on its per-job path: a comparison, no call).
    soonest: float = attrs.field(init=False, default=_INF)
    _dead_letter_sizes: deque[int] = attrs.field(init=False, factory=deque)
    # Jobs waiting out a backoff, by when they are due: (time, sequence, job).
    _retry_heap: list[tuple[float, int, JobRecord]] = attrs.field(init=False, factory=list)
    # Waiting jobs by their wait deadline: a FIFO for the deadlines that come in order (most
    # of them), a heap for the others. Entries of jobs that stopped waiting are skipped,
    # and compacted in place when many (a due_expiries under way keeps its deque and heap).
    _expiry_fifo: deque[tuple[float, JobRecord]] = attrs.field(init=False, factory=deque)
    _expiry_heap: list[tuple[float, int, JobRecord]] = attrs.field(init=False, factory=list)
    _seq: Iterator[int] = attrs.field(init=False, factory=itertools.count)

    # ------------------------------------------------------------------ retry policies

    def set_group_retry(self, group: str, policy: GroupRetry | None) -> None:
        """Give the workers of ``group`` their own retry policy (None: the leader's again).

        The group is the name workers give in their Hello (``WorkerGroup`` instances and
        ``python -m actors.worker --group`` use the group's name).
        """
        table = dict(self.group_retry)
        if policy is None:
            table.pop(group, None)
        else:
            table[group] = policy
        self.group_retry = MappingProxyType(table)

    def policy(self, job: JobRecord) -> tuple[int, Backoff]:
        """The attempt limit and backoff for a failed attempt of ``job`` (on ``job.worker``):
        those of the worker's group where its :class:`GroupRetry` names them, else the
        job's limit and the leader's backoff."""
        limit = job.max_attempts
        backoff = self.backoff
        worker = job.worker
        if self.group_retry and worker is not None:
            policy = self.group_retry.get(worker.group)
            if policy is not None:
                # A limit named by the submit wins over the group's.
                if policy.max_attempts is not None and job.submitted_max_attempts is None:
                    limit = policy.max_attempts
                if policy.backoff is not None:
                    backoff = policy.backoff
        return limit, backoff

    def retry_at(self, job: JobRecord, now: float, delay: float | None = None) -> float | None:
        """When the attempt of ``job`` (on ``job.worker``) that failed at ``now`` is retried:
        after ``delay`` (a Nack's own) or else the backoff; None if it was the last one."""
        limit, backoff = self.policy(job)
        if job.attempt >= limit:
            return None
        if delay is None:
            delay = backoff.delay(job.attempt, self.rng)
        return now + delay

    # ------------------------------------------------------------------ waiting jobs

    def wait_deadline(self, job: JobRecord, since: float) -> float:
        """When ``job``, waiting for a worker since ``since``, expires: ``max_queue_time``
        later, or at its client's timeout (``expires_at``) if sooner (``inf``: never)."""
        limit = self.max_queue_time
        deadline = _INF if limit is None else since + limit
        expires = job.expires_at
        if expires is not None and expires < deadline:
            deadline = expires
        return deadline

    def wait_retry(self, job: JobRecord, now: float, *, since: float | None = None) -> None:
        """``job``, moved to retry_wait at ``now`` with its ``retry_at`` set, waits out its
        backoff: :meth:`due_retries` gives it back then, or at its wait deadline if that
        comes first (to expire: a long Nack delay cannot outlast it). ``since``: when its
        wait for a worker counts from (default ``now``; a delayed job's: when it is due)."""
        job.wait_deadline = deadline = self.wait_deadline(job, now if since is None else since)
        wake = min(job.retry_at, deadline)
        heapq.heappush(self._retry_heap, (wake, next(self._seq), job))
        if wake < self.soonest:
            self.soonest = wake

    def watch_expiry(self, job: JobRecord, active: int) -> None:
        """Have :meth:`due_expiries` give queued ``job`` back at its ``wait_deadline``.

        ``active``: the jobs the broker holds (accepted, not finished). Once the entries
        outnumber twice as many, those of jobs that stopped waiting are dropped (amortised
        O(1) per entry).
        """
        deadline = job.wait_deadline
        if deadline == _INF:
            return
        fifo = self._expiry_fifo
        if not fifo or fifo[-1][0] <= deadline:
            fifo.append((deadline, job))
        else:
            heapq.heappush(self._expiry_heap, (deadline, next(self._seq), job))
        if deadline < self.soonest:
            self.soonest = deadline
        if len(fifo) + len(self._expiry_heap) > 2 * active + 4096:
            live = [entry for entry in fifo if _waits_until(entry[1], entry[0])]
            fifo.clear()
            fifo.extend(live)
            heap = self._expiry_heap
            heap[:] = [entry for entry in heap if _waits_until(entry[2], entry[0])]
            heapq.heapify(heap)

    def due_retries(self, now: float) -> Iterator[JobRecord]:
        """Take the jobs whose backoff, or wait deadline, is over at ``now``, earliest first.

        Each is still in retry_wait (entries of jobs a late result finished meanwhile are
        dropped): the broker queues it again, or expires it if its ``wait_deadline`` passed.
        """
        heap = self._retry_heap
        while heap and heap[0][0] <= now:
            job = heapq.heappop(heap)[2]
            if job.state is JobState.RETRY_WAIT:
                yield job

    def due_expiries(self, now: float) -> Iterator[JobRecord]:
        """Take the queued jobs whose wait deadline passed at ``now`` (the broker expires
        them, or lets one that was waiting for a route wait on)."""
        fifo = self._expiry_fifo
        heap = self._expiry_heap
        while True:
            if fifo and fifo[0][0] <= now:
                deadline, job = fifo.popleft()
            elif heap and heap[0][0] <= now:
                deadline, _, job = heapq.heappop(heap)
            else:
                return
            if _waits_until(job, deadline):
                yield job

    # ------------------------------------------------------------------ time

    def missed_acks(
        self, workers: Collection[WorkerLink], now: float
    ) -> Iterator[tuple[WorkerLink, str]]:
        """Take the ack deadlines passed at ``now`` from ``workers`` (each keeps its own in
        assignment order, the earliest first): the worker and job id of each. The broker
        fails the attempt if it is still that worker's (who keeps the slot until it answers)."""
        for worker in list(workers):
            deadlines = worker.deadlines
            while deadlines:
                job_id, deadline = next(iter(deadlines.items()))
                if deadline > now:
                    break
                del deadlines[job_id]
                yield worker, job_id

    def next_deadline(self, workers: Collection[WorkerLink]) -> float:
        """When something is next due (``inf`` if nothing): a retry, the expiry of a waiting
        job, or the first ack deadline of one of ``workers``."""
        deadline = _INF
        if self._retry_heap:
            deadline = self._retry_heap[0][0]
        # (Entries of jobs no longer waiting are dropped here: each once, so O(1) amortised.)
        fifo = self._expiry_fifo
        while fifo and not _waits_until(fifo[0][1], fifo[0][0]):
            fifo.popleft()
        if fifo and fifo[0][0] < deadline:
            deadline = fifo[0][0]
        heap = self._expiry_heap
        while heap and not _waits_until(heap[0][2], heap[0][0]):
            heapq.heappop(heap)
        if heap and heap[0][0] < deadline:
            deadline = heap[0][0]
        for worker in workers:
            deadlines = worker.deadlines
            if deadlines:
                first = next(iter(deadlines.values()))
                if first < deadline:
                    deadline = first
        return deadline

    def take_soonest(self) -> float:
        """The earliest deadline made since the last call (``inf`` if none).

        O(1), for after every batch: a timer armed at :meth:`next_deadline` only ever has
        to be brought forward to this (deadlines that move later, by Progress, never need
        an earlier wake-up).
        """
        soonest = self.soonest
        self.soonest = _INF
        return soonest

    # ------------------------------------------------------------------ dead letters

    def dead_letter(self, job: JobRecord, *, keep: bool = True) -> dict[str, Any]:
        """The dead letter of ``job``, out of attempts: the record the broker publishes on
        ``$dlq.<subject>``, kept here within the count and byte limits (the oldest make
        room; one over the byte limit on its own is not kept, and evicts none); with
        ``keep`` false, only built (a shared store keeps it)."""
        error_type, error_message = job.last_error or ("Error", "")
        log.warning(
            "job %s (%s) dead-lettered on %s%s after %d attempts: %s: %s",
            job.job_id,
            job.subject,
            DLQ_PREFIX,
            job.subject,
            job.attempt,
            error_type,
            error_message,
        )
        record = {
            "job_id": job.job_id,
            "subject": job.subject,
            "payload": job.payload,
            "headers": job.headers,
            "attempts": job.attempt,
            "error_type": error_type,
            "error_message": error_message,
            "traceback": job.last_traceback,
            # (the worker whose attempt failed last, when one ran it)
            "worker": getattr(job.worker, "name", None),
        }
        if job.identity is not None:
            record["identity"] = job.identity
        if not keep:
            return record
        size = job.size + len(error_type) + len(error_message) + len(job.last_traceback or "")
        self.keep_dead_letter(record, size)
        return record

    def keep_dead_letter(self, record: dict[str, Any], size: int) -> None:
        """Keep ``record`` (of ``size`` bytes) as the newest dead letter, within the count
        and byte limits."""
        if size <= self.max_dead_letter_bytes and self.max_dead_letters > 0:
            letters = self.dead_letters
            sizes = self._dead_letter_sizes
            while letters and (
                len(letters) >= self.max_dead_letters
                or self.dead_letter_bytes + size > self.max_dead_letter_bytes
            ):
                letters.popleft()
                self.dead_letter_bytes -= sizes.popleft()
            letters.append(record)
            sizes.append(size)
            self.dead_letter_bytes += size

    def forget_dead_letters_before(self, cutoff: float) -> int:
        """Drop the dead letters kept whose ``dead_at`` (wall clock) is before ``cutoff``
        (past the journal's retention); returns how many went."""
        letters = self.dead_letters
        sizes = self._dead_letter_sizes
        count = 0
        while letters and (letters[0].get("dead_at") or 0.0) < cutoff:
            letters.popleft()
            self.dead_letter_bytes -= sizes.popleft()
            count += 1
        return count

    def forget_dead_letters(self, job_ids: set[str] | None) -> int:
        """Drop the dead letters of ``job_ids`` (all when None) from those kept; returns how
        many went."""
        letters = self.dead_letters
        if job_ids is None:
            count = len(letters)
            letters.clear()
            self._dead_letter_sizes.clear()
            self.dead_letter_bytes = 0
            return count
        kept = [
            (record, size)
            for record, size in zip(letters, self._dead_letter_sizes, strict=True)
            if record["job_id"] not in job_ids
        ]
        count = len(letters) - len(kept)
        if count:
            letters.clear()
            self._dead_letter_sizes.clear()
            self.dead_letter_bytes = 0
            for record, size in kept:
                letters.append(record)
                self._dead_letter_sizes.append(size)
                self.dead_letter_bytes += size
        return count
