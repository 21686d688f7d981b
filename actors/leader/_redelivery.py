"""Redelivery, sans-I/O: failed attempts, backoff, dead letters, ack deadlines.

A mixin of :class:`~actors.leader.Broker` (the state it reads is the broker's): a failed
attempt waits out its backoff in a heap and is requeued by :meth:`handle_timer`; a QoS 1
job out of attempts is dead-lettered on ``$dlq.<subject>``; each worker's ack deadlines
sit in assignment order, so the earliest is always the first.
"""

from __future__ import annotations

import heapq
import logging
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import attrs

from protocol import Cancel
from runtime import Backoff

from ._jobs import JobRecord, JobState, StoredResult

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


class Redelivery:
    """The retry and timer half of the broker (see :class:`~actors.leader.Broker`)."""

    config: Any
    rng: Any
    journal: Any
    workers: dict[Any, None]
    jobs: dict[str, JobRecord]
    dead_letters: Any
    dead_letter_bytes: int
    _dead_letter_sizes: Any
    _expiry_fifo: Any
    _expiry_heap: list[tuple[float, int, JobRecord]]
    _retry_heap: list[tuple[float, int, JobRecord]]
    _seq: Any
    _done_window_start: float
    _done_in_window: int
    _done_rate: float
    _soonest: float
    #: Retry policies by worker group name (see :meth:`set_group_retry`).
    group_retry: Mapping[str, GroupRetry] = MappingProxyType({})

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

    def _retry_policy(self, job: JobRecord) -> tuple[int, Backoff]:
        """The attempt limit and backoff for a failed attempt of ``job`` (on ``job.worker``)."""
        limit = job.max_attempts
        backoff = self.config.retry_backoff
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

    def _failed_attempt(
        self, job: JobRecord, error: tuple[str, str], now: float, *, delay: float | None = None,
        traceback: str | None = None,
    ) -> None:
        job.last_error = error
        job.last_traceback = traceback
        if job.cancel_reason is not None:  # a client cancelled it: over, not retried
            self._cancelled(job, job.cancel_reason, now)
            return
        queue = self._queue(job.subject)
        group = job.worker.stats if job.worker is not None else None
        if job.qos == 0:
            queue.failed += 1
            if group is not None:
                group.failed += 1
            self._finish(
                job, JobState.DONE,
                StoredResult(
                    False, None, error[0], error[1], job.attempt, job.last_traceback, job.subject, job.payload
                ),
                now,
            )
            return
        limit, backoff = self._retry_policy(job)
        if job.attempt >= limit:
            if group is not None:
                group.dead += 1
            self._dead_letter(job, now)
            return
        if delay is None:
            delay = backoff.delay(job.attempt, self.rng)
        queue.redelivered += 1
        if group is not None:
            group.redelivered += 1
        job.move(JobState.RETRY_WAIT, self.journal)
        job.worker = None
        job.retry_at = now + delay
        self._start_waiting(job, now)  # (the limits count it still: it is not finished)
        # It leaves the heap at its retry time, or when its wait deadline (max_queue_time,
        # its timeout) comes first: then it expires (a long Nack delay cannot outlast it).
        wake = min(job.retry_at, job.wait_deadline)
        heapq.heappush(self._retry_heap, (wake, next(self._seq), job))
        if wake < self._soonest:
            self._soonest = wake

    def _cancelled(self, job: JobRecord, reason: str, now: float) -> None:
        """End ``job`` as cancelled by a client: its waiters get a "Cancelled" failure."""
        self._queue(job.subject).cancelled += 1
        self._finish(
            job, JobState.CANCELLED,
            StoredResult(False, None, "Cancelled", reason, job.attempt, None, job.subject, job.payload), now,
        )

    def _dead_letter(self, job: JobRecord, now: float) -> None:
        queue = self._queue(job.subject)
        queue.dead += 1
        error_type, error_message = job.last_error or ("Error", "")
        log.warning(
            "job %s (%s) dead-lettered on %s%s after %d attempts: %s: %s",
            job.job_id, job.subject, DLQ_PREFIX, job.subject, job.attempt, error_type, error_message,
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
        }
        texts = len(error_type) + len(error_message) + len(job.last_traceback or "")
        self._keep_dead_letter(record, job.size + texts)
        self._finish(
            job,
            JobState.DEAD,
            StoredResult(
                False,
                None,
                error_type,
                f"dead-lettered after {job.attempt} attempts: {error_message}",
                job.attempt,
                job.last_traceback,
                job.subject,
                job.payload,
            ),
            now,
        )
        self._route_publish(DLQ_PREFIX + job.subject, record, {}, now)

    def _keep_dead_letter(self, record: dict[str, Any], size: int) -> None:
        """Keep ``record`` for inspection, dropping the oldest past the count and byte limits."""
        letters = self.dead_letters
        sizes = self._dead_letter_sizes
        while letters and (
            len(letters) >= self.config.max_dead_letters
            or self.dead_letter_bytes + size > self.config.max_dead_letter_bytes
        ):
            letters.popleft()
            self.dead_letter_bytes -= sizes.popleft()
        if size <= self.config.max_dead_letter_bytes:
            letters.append(record)
            sizes.append(size)
            self.dead_letter_bytes += size

    # ------------------------------------------------------------------ time

    def take_soonest(self) -> float:
        """The earliest deadline (ack or retry) made since the last call (``inf`` if none).

        O(1), for after every batch: a timer armed at :meth:`next_deadline` only ever has
        to be brought forward to this (deadlines that move later, by Progress, never need
        an earlier wake-up).
        """
        soonest = self._soonest
        self._soonest = float("inf")
        return soonest

    def next_deadline(self) -> float:
        """When :meth:`handle_timer` next has something to do (``inf`` if nothing)."""
        deadline = float("inf")
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
        for worker in self.workers:
            deadlines = worker.deadlines
            if deadlines:
                first = next(iter(deadlines.values()))
                if first < deadline:
                    deadline = first
        return deadline

    def handle_timer(self, now: float) -> None:
        """Redeliver what missed its ack deadline; requeue what waited out its backoff."""
        for worker in list(self.workers):
            deadlines = worker.deadlines
            while deadlines:
                job_id, deadline = next(iter(deadlines.items()))
                if deadline > now:
                    break
                job = worker.inflight[job_id]
                if job.state is JobState.ASSIGNED and job.worker is worker:
                    # The worker keeps the slot (it may still be running the job) but the
                    # deadline is dropped; the job goes out again after its backoff.
                    del deadlines[job_id]
                    self._failed_attempt(
                        job,
                        ("AckTimeout", f"no answer from {worker.name} within {self.config.ack_timeout} s"),
                        now,
                    )
                    worker.send(Cancel(mid=worker.next_mid(), job_id=job_id, reason="ack timeout"))
                else:
                    del deadlines[job_id]
        heap = self._retry_heap
        while heap and heap[0][0] <= now:
            _, _, job = heapq.heappop(heap)
            if job.state is not JobState.RETRY_WAIT:
                continue
            if job.wait_deadline <= now:
                self._expire(job, now)
                continue
            job.move(JobState.QUEUED, self.journal)
            self._enqueue(job, now)
        self._expire_waiting(now)

    def _expire_waiting(self, now: float) -> None:
        """Expire the queued jobs whose wait deadline passed (max_queue_time, timeouts)."""
        fifo = self._expiry_fifo
        heap = self._expiry_heap
        while True:
            if fifo and fifo[0][0] <= now:
                deadline, job = fifo.popleft()
            elif heap and heap[0][0] <= now:
                deadline, _, job = heapq.heappop(heap)
            else:
                return
            if _waits_until(job, deadline) and not self._route_came(job, now):
                self._leave_waiting(job)
                self._queue(job.subject).expired += 1
                self._finish(job, JobState.EXPIRED, None, now)

    def _count_done(self, now: float) -> None:
        if now - self._done_window_start >= 1.0:
            elapsed = now - self._done_window_start
            self._done_rate = self._done_in_window / elapsed if elapsed > 0 else 0.0
            self._done_window_start = now
            self._done_in_window = 0
        self._done_in_window += 1

    def _retry_after(self) -> float:
        rate = max(self._done_rate, 1.0)
        return min(30.0, max(0.1, round(len(self.jobs) / rate / 2, 3)))
