"""The leader's retry scheduler alone, sans-I/O, at exact times: backoff, attempt limits,
group policies, dead letters and their bounds, the expiry of waiting jobs, the deadlines.

The broker moves a job's state and the scheduler keeps its timers; the helpers below do
the broker's part (``assign``, ``fail``) so that each rule is seen with nothing else."""

from __future__ import annotations

import random

import pytest

from actors.leader import DLQ_PREFIX, GroupRetry, JobState
from actors.leader._jobs import JobRecord
from actors.leader._links import WorkerLink
from actors.leader._redelivery import RetryScheduler
from runtime import Backoff

INF = float("inf")
NO_JITTER = Backoff(base=1.0, factor=2.0, cap=60.0, jitter=0.0)


def scheduler(
    *,
    backoff: Backoff = NO_JITTER,
    max_queue_time: float | None = None,
    max_dead_letters: int = 1000,
    max_dead_letter_bytes: int = 2**20,
) -> RetryScheduler:
    return RetryScheduler(
        backoff=backoff,
        rng=random.Random(1),
        max_queue_time=max_queue_time,
        max_dead_letters=max_dead_letters,
        max_dead_letter_bytes=max_dead_letter_bytes,
    )


def worker(name: str = "w", group: str = "") -> WorkerLink:
    return WorkerLink(name, lambda message: None, group=group or name)


def job(
    job_id: str = "j",
    *,
    max_attempts: int = 3,
    submitted_max_attempts: int | None = None,
    expires_at: float | None = None,
    size: int = 100,
    subject: str = "s",
) -> JobRecord:
    return JobRecord(
        job_id=job_id,
        subject=subject,
        payload=b"p",
        headers={},
        qos=1,
        max_attempts=max_attempts,
        submitted_at=0.0,
        expires_at=expires_at,
        submitted_max_attempts=submitted_max_attempts,
        size=size,
    )


def assign(record: JobRecord, on: WorkerLink) -> None:
    record.move(JobState.ASSIGNED)
    record.attempt += 1
    record.worker = on


def fail(
    s: RetryScheduler, record: JobRecord, now: float, delay: float | None = None
) -> float | None:
    """The broker's part of a failed attempt: when it is retried (None: out of attempts)."""
    at = s.retry_at(record, now, delay)
    if at is not None:
        record.move(JobState.RETRY_WAIT)
        record.worker = None
        record.retry_at = at
        s.wait_retry(record, now)
    return at


def requeue(s: RetryScheduler, record: JobRecord, now: float) -> None:
    """The broker's part when a retry is due: the job is queued again."""
    record.move(JobState.QUEUED)
    record.wait_deadline = s.wait_deadline(record, now)
    s.watch_expiry(record, active=1)


def test_failed_attempts_wait_out_the_backoff_1_2_4_then_are_out_of_attempts() -> None:
    s, w, j = scheduler(), worker(), job(max_attempts=4)
    now, retried = 0.0, []
    while True:
        assign(j, w)
        at = fail(s, j, now)
        if at is None:
            break
        assert s.next_deadline([]) == at
        assert list(s.due_retries(at - 0.001)) == []  # not a moment early
        assert list(s.due_retries(at)) == [j]
        retried.append(at - now)
        now = at
        j.move(JobState.QUEUED)
    assert retried == [1.0, 2.0, 4.0] and j.attempt == 4
    assert s.next_deadline([]) == INF


def test_a_nack_delay_replaces_the_backoff_and_jitter_is_drawn_from_the_rng() -> None:
    s, w, j = scheduler(), worker(), job()
    assign(j, w)
    assert fail(s, j, 10.0, delay=0.25) == 10.25
    jittered = scheduler(backoff=Backoff(base=1.0, factor=2.0, cap=60.0, jitter=0.5))
    delays = set()
    for i in range(20):
        k = job(f"k{i}")
        assign(k, w)
        at = fail(jittered, k, 0.0)
        assert at is not None and 0.5 <= at <= 1.5
        delays.add(at)
    assert len(delays) > 1


def test_entries_of_jobs_that_left_retry_wait_are_dropped() -> None:
    s, w = scheduler(), worker()
    a, b = job("a"), job("b")
    for record in (a, b):
        assign(record, w)
        fail(s, record, 0.0)
    b.move(JobState.DONE)  # a late result finished it while it waited
    assert list(s.due_retries(1.0)) == [a]
    assert s.next_deadline([]) == INF


def test_a_retry_wait_ends_at_the_wait_deadline_if_that_comes_first() -> None:
    s, w = scheduler(max_queue_time=100.0), worker()
    timed = job("t", expires_at=3.5)
    assign(timed, w)
    assert fail(s, timed, 3.0, delay=30.0) == 33.0
    assert timed.wait_deadline == 3.5 and s.next_deadline([]) == 3.5
    assert list(s.due_retries(3.5)) == [timed]  # (the broker expires it: its wait is over)
    long_nack = job("n")
    assign(long_nack, w)
    fail(s, long_nack, 0.0, delay=500.0)
    assert long_nack.wait_deadline == 100.0 and s.next_deadline([]) == 100.0


def test_a_group_policy_overrides_the_limit_and_backoff_on_its_own_workers_only() -> None:
    s = scheduler()
    patient, other = worker("p", group="patient"), worker("o", group="other")
    s.set_group_retry(
        "patient", GroupRetry(max_attempts=5, backoff=Backoff(base=4.0, factor=1.0, cap=4.0))
    )
    j = job("j", max_attempts=3)
    j.worker = patient
    assert s.policy(j) == (5, Backoff(base=4.0, factor=1.0, cap=4.0))
    j.worker = other
    assert s.policy(j) == (3, NO_JITTER)
    named = job("named", max_attempts=2, submitted_max_attempts=2)  # the submit's own limit wins
    named.worker = patient
    assert s.policy(named)[0] == 2
    s.set_group_retry("other", GroupRetry(backoff=Backoff(base=0.5, cap=0.5)))
    assign(j, other)
    assert fail(s, j, 10.0) == 10.5  # the group's backoff, the leader's limit
    assert s.policy(named) == (2, Backoff(base=4.0, factor=1.0, cap=4.0))
    s.set_group_retry("patient", None)
    assert dict(s.group_retry) == {"other": GroupRetry(backoff=Backoff(base=0.5, cap=0.5))}
    assert s.policy(named) == (2, NO_JITTER)


def test_the_last_attempt_under_a_group_limit_is_not_retried() -> None:
    s, w = scheduler(), worker("w", group="g")
    s.set_group_retry("g", GroupRetry(max_attempts=1))
    j = job(max_attempts=5)
    assign(j, w)
    assert fail(s, j, 0.0) is None and j.state is JobState.ASSIGNED  # (the broker's to end)


def test_a_dead_letter_records_the_job_and_its_last_error() -> None:
    s, w = scheduler(), worker()
    j = job("j", subject="orders.new", size=50)
    assign(j, w)
    j.last_error = ("ValueError", "bad")
    j.last_traceback = "Traceback ..."
    record = s.dead_letter(j)
    assert record == {
        "job_id": "j",
        "subject": "orders.new",
        "payload": b"p",
        "headers": {},
        "attempts": 1,
        "error_type": "ValueError",
        "error_message": "bad",
        "traceback": "Traceback ...",
        "worker": "w",  # (the one that failed it last)
    }
    assert list(s.dead_letters) == [record]
    assert s.dead_letter_bytes == 50 + len("ValueError") + len("bad") + len("Traceback ...")
    assert DLQ_PREFIX + j.subject == "$dlq.orders.new"


def _letter(s: RetryScheduler, job_id: str, size: int) -> None:
    record = job(job_id, size=size)
    record.last_error = ("E", "")  # one byte of text
    s.dead_letter(record)


def test_dead_letters_are_bounded_in_bytes_the_oldest_going_first() -> None:
    s = scheduler(max_dead_letter_bytes=1000)
    for i in range(5):
        _letter(s, f"d{i}", 299)  # 300 bytes each
    assert [d["job_id"] for d in s.dead_letters] == ["d2", "d3", "d4"]
    assert s.dead_letter_bytes == 900
    _letter(s, "big", 599)  # room made for it: two of the oldest go
    assert [d["job_id"] for d in s.dead_letters] == ["d4", "big"] and s.dead_letter_bytes == 900
    _letter(s, "huge", 1000)  # over the limit on its own: not kept, and evicts nothing
    assert [d["job_id"] for d in s.dead_letters] == ["d4", "big"] and s.dead_letter_bytes == 900


def test_dead_letters_are_bounded_in_count() -> None:
    s = scheduler(max_dead_letters=2)
    for i in range(4):
        _letter(s, f"d{i}", 9)
    assert [d["job_id"] for d in s.dead_letters] == ["d2", "d3"] and s.dead_letter_bytes == 20
    none_kept = scheduler(max_dead_letters=0)
    _letter(none_kept, "d", 9)
    assert list(none_kept.dead_letters) == [] and none_kept.dead_letter_bytes == 0


def test_the_wait_deadline_is_max_queue_time_or_the_clients_timeout_if_sooner() -> None:
    s = scheduler(max_queue_time=60.0)
    assert s.wait_deadline(job(), 5.0) == 65.0
    assert s.wait_deadline(job(expires_at=30.0), 5.0) == 30.0
    assert s.wait_deadline(job(expires_at=90.0), 5.0) == 65.0
    unlimited = scheduler(max_queue_time=None)
    assert unlimited.wait_deadline(job(), 5.0) == INF
    assert unlimited.wait_deadline(job(expires_at=7.0), 5.0) == 7.0


def test_waiting_jobs_are_due_at_their_wait_deadline_in_order_unless_they_stopped_waiting() -> None:
    s = scheduler(max_queue_time=60.0)
    a, b, c, d = job("a"), job("b"), job("c", expires_at=10.0), job("d")
    for record, since in ((a, 0.0), (b, 1.0), (c, 2.0), (d, 3.0)):  # c's comes first: the heap
        record.wait_deadline = s.wait_deadline(record, since)
        s.watch_expiry(record, active=4)
    assert s.next_deadline([]) == 10.0
    assert list(s.due_expiries(9.999)) == []
    assert list(s.due_expiries(10.0)) == [c]
    assert s.next_deadline([]) == 60.0
    a.move(JobState.ASSIGNED)  # a worker took it: its entry no longer stands
    assert s.next_deadline([]) == 61.0
    b.wait_deadline = 200.0  # it waits on (a worker for its subject came): its old entry is void
    assert list(s.due_expiries(63.0)) == [d]
    assert s.next_deadline([]) == INF
    never = job("never")
    s.watch_expiry(never, active=1)  # (an infinite wait deadline: nothing to watch)
    assert s.next_deadline([]) == INF


def test_the_expiry_entries_of_jobs_that_stopped_waiting_are_compacted() -> None:
    s = scheduler(max_queue_time=10.0)
    gone = []
    for i in range(5000):
        record = job(f"g{i}")
        record.wait_deadline = s.wait_deadline(record, float(i % 7))  # some out of order
        s.watch_expiry(record, active=1)
        record.move(JobState.ASSIGNED)
        gone.append(record)
    live = job("live")
    live.wait_deadline = 12.0
    s.watch_expiry(live, active=1)
    assert len(s._expiry_fifo) + len(s._expiry_heap) <= 2 * 1 + 4096 + 1
    assert list(s.due_expiries(100.0)) == [live]


def test_a_retry_due_again_is_watched_as_a_queued_job() -> None:
    s, w = scheduler(max_queue_time=20.0), worker()
    j = job()
    assign(j, w)
    assert fail(s, j, 0.0) == 1.0
    assert list(s.due_retries(1.0)) == [j]
    requeue(s, j, 1.0)
    assert s.next_deadline([]) == 21.0 and list(s.due_expiries(21.0)) == [j]


def test_the_next_deadline_counts_each_workers_first_ack_deadline() -> None:
    s = scheduler(max_queue_time=50.0)
    w1, w2 = worker("w1"), worker("w2")
    w1.deadlines.update({"a": 30.0, "b": 40.0})  # in assignment order
    w2.deadlines.update({"c": 25.0})
    assert s.next_deadline([w1, w2]) == 25.0
    waiting = job("q")
    waiting.wait_deadline = s.wait_deadline(waiting, 0.0)
    s.watch_expiry(waiting, active=1)
    retry = job("r")
    assign(retry, w1)
    fail(s, retry, 0.0, delay=20.0)
    assert s.next_deadline([w1, w2]) == 20.0
    assert s.next_deadline([]) == 20.0


def test_missed_acks_are_taken_in_order_and_later_ones_stay() -> None:
    s = scheduler()
    w1, w2 = worker("w1"), worker("w2")
    w1.deadlines.update({"a": 10.0, "b": 11.0, "c": 12.0})
    w2.deadlines.update({"d": 10.5})
    assert list(s.missed_acks([w1, w2], 9.0)) == []
    assert list(s.missed_acks([w1, w2], 11.0)) == [(w1, "a"), (w1, "b"), (w2, "d")]
    assert w1.deadlines == {"c": 12.0} and w2.deadlines == {}
    assert s.next_deadline([w1, w2]) == 12.0


def test_take_soonest_reports_the_earliest_new_deadline_once() -> None:
    s, w = scheduler(max_queue_time=100.0), worker()
    assert s.take_soonest() == INF
    waiting = job("q")
    waiting.wait_deadline = s.wait_deadline(waiting, 0.0)
    s.watch_expiry(waiting, active=1)
    retry = job("r")
    assign(retry, w)
    fail(s, retry, 5.0)
    s.soonest = min(s.soonest, 30.0)  # (the broker's part when it sets an ack deadline)
    assert s.take_soonest() == 6.0
    assert s.take_soonest() == INF


@pytest.mark.parametrize("bad", [0, -1, True, 1.5, "3"])
def test_a_group_policy_refuses_a_bad_attempt_limit(bad: object) -> None:
    with pytest.raises(ValueError, match="max_attempts"):
        GroupRetry(max_attempts=bad)  # type: ignore[arg-type]
