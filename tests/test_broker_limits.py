"""The broker's limits, sans-I/O: no one peer can starve the others, nothing grows without
bound, and what cannot be forwarded is refused or fails one delivery (issue 9)."""

from __future__ import annotations

import random

import attrs
import pytest

from actors import DLQ_PREFIX
from actors.leader import Broker, BrokerConfig, JobState
from actors.leader._links import ClientLink, WorkerLink
from actors.leader._sizes import JOB_OVERHEAD, payload_size
from protocol import (
    Assign,
    Credit,
    Deliver,
    Error,
    ErrorCode,
    Publish,
    Result,
    Submit,
    Subscribe,
    message_of,
)
from runtime import Backoff, DedupCache, MessageTooLarge

MIB = 2**20


class _Recording:
    """Records what a link is sent; over ``limit`` bytes of payload it refuses as a
    connection does (MessageTooLarge)."""

    out: list
    limit: int | None

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()  # type: ignore[misc]
        self.send = self._send
        self.send_item = lambda item: self._send(message_of(item, decode_payloads=True))

    def _send(self, message) -> None:
        if self.limit is not None:
            size = payload_size(getattr(message, "payload", None))
            if size > self.limit:
                raise MessageTooLarge(size, self.limit)
        self.out.append(message)


@attrs.define(eq=False)
class Peer(_Recording, ClientLink):
    """A client link that records what it is sent (see _Recording)."""

    out: list = attrs.field(factory=list)
    limit: int | None = None


@attrs.define(eq=False)
class WPeer(_Recording, WorkerLink):
    """A worker link that records what it is sent (see _Recording)."""

    out: list = attrs.field(factory=list)
    limit: int | None = None


def client(name: str, limit: int | None = None) -> Peer:
    return Peer(name, print, limit=limit)


def make_broker(**kw) -> Broker:
    kw.setdefault("ack_timeout", 10.0)
    kw.setdefault("max_attempts", 3)
    kw.setdefault("retry_backoff", Backoff(base=1.0, factor=2.0, cap=60.0, jitter=0.0))
    return Broker(BrokerConfig(**kw), rng=random.Random(1))


def join(broker: Broker, name: str, window: int, patterns=("jobs.>",), now=0.0, **kw) -> WPeer:
    link = WPeer(name, print, patterns=tuple(patterns), window=window, group=name, **kw)
    broker.worker_joined(link, now)
    return link


_mids = iter(range(1, 10**9))


def submit(broker, c, job_id, subject="jobs.a", now=0.0, payload=None, **kw) -> int:
    kw.setdefault("wait_for_worker", True)  # (a flooder would ask for it too)
    mid = next(_mids)
    broker.submit(
        c,
        Submit(
            mid=mid,
            job_id=job_id,
            subject=subject,
            payload=payload if payload is not None else {"id": job_id},
            **kw,
        ),
        now,
    )
    return mid


def errors(link, code=None) -> list[Error]:
    return [m for m in link.out if isinstance(m, Error) and (code is None or m.code == code)]


def results(link) -> list[Result]:
    return [m for m in link.out if isinstance(m, Result)]


def assigns(link) -> list[Assign]:
    return [m for m in link.out if isinstance(m, Assign)]


def answer(broker, w, job_id, now, payload="done", ok=True):
    broker.result(
        w,
        Result(
            mid=next(_mids),
            job_id=job_id,
            ok=ok,
            payload=payload if ok else None,
            error_type=None if ok else "E",
            error_message=None if ok else "bad",
        ),
        now,
    )


# ---------------------------------------------------------------------- queue limits


def test_a_subject_nobody_serves_cannot_fill_the_leader():
    b = make_broker(max_queued=1000, max_queued_per_subject=100)
    flooder, user = client("flooder"), client("user")
    for i in range(150):
        submit(b, flooder, f"dead-{i}", subject="nobody.serves")
    busy = errors(flooder, ErrorCode.BUSY)
    assert len(busy) == 50
    assert "queue of subject nobody.serves is full (100 jobs" in busy[0].message
    assert busy[0].retry_after is not None and busy[0].job_id == "dead-100"
    assert b.stats()["waiting"] == 100
    # Another subject still gets through, queued or run.
    w = join(b, "w", 4)
    submit(b, user, "ok-1", subject="jobs.a")
    assert [a.job_id for a in assigns(w)] == ["ok-1"]
    assert errors(user) == []


def test_one_client_cannot_fill_the_queue_for_the_others():
    b = make_broker(max_queued_per_client=10)
    greedy, polite = client("greedy"), client("polite")
    for i in range(12):
        submit(b, greedy, f"g-{i}")
    assert [e.job_id for e in errors(greedy, ErrorCode.BUSY)] == ["g-10", "g-11"]
    assert "this connection has 10 jobs" in errors(greedy)[0].message
    submit(b, polite, "p-0")
    assert errors(polite) == []
    # A worker takes some: they count still while it runs them (the leader holds them
    # for redelivery), and no longer once they are finished.
    w = join(b, "w", 3)
    assert len(assigns(w)) == 3
    submit(b, greedy, "g-12")
    assert [e.job_id for e in errors(greedy, ErrorCode.BUSY)] == ["g-10", "g-11", "g-12"]
    assert "this connection has 10 jobs" in errors(greedy)[-1].message
    for a in assigns(w):
        answer(b, w, a.job_id, 1.0)
    submit(b, greedy, "g-13", now=1.0)
    assert len(errors(greedy)) == 3 and greedy.jobs == 8


def test_queue_limits_count_bytes():
    payload = b"x" * MIB
    size = payload_size(payload) + len("jobs.a") + JOB_OVERHEAD
    b = make_broker(
        max_queued_bytes=10 * size,
        max_queued_bytes_per_subject=5 * size,
        max_queued_bytes_per_client=3 * size,
    )
    c1, c2, c3 = client("c1"), client("c2"), client("c3")
    for i in range(4):
        submit(b, c1, f"a-{i}", payload=payload)
    assert [e.job_id for e in errors(c1, ErrorCode.BUSY)] == ["a-3"]
    assert "bytes per client" in errors(c1)[0].message
    for i in range(3):
        submit(b, c2, f"b-{i}", payload=payload)
    assert [e.job_id for e in errors(c2, ErrorCode.BUSY)] == ["b-2"]  # subject: 5 at most
    assert "per subject" in errors(c2)[0].message
    assert b.job_bytes == 5 * size
    for i in range(3):
        submit(b, c3, f"c-{i}", subject="jobs.b", payload=payload)
    c4 = client("c4")
    for i in range(3):
        submit(b, c4, f"d-{i}", subject="jobs.c", payload=payload)
    assert b.job_bytes == 10 * size
    [full] = errors(c4, ErrorCode.BUSY)
    assert full.job_id == "d-2" and "leader queue is full" in full.message
    # Jobs a worker holds count still; each is uncounted when it finishes.
    w = join(b, "w", 100, patterns=("jobs.a", "jobs.b"))
    assert len(assigns(w)) == 8
    assert b.job_bytes == 10 * size and c1.job_bytes == 3 * size
    submit(b, c4, "d-3", subject="jobs.c", payload=payload)
    assert [e.job_id for e in errors(c4, ErrorCode.BUSY)] == ["d-2", "d-3"]
    for a in assigns(w):
        answer(b, w, a.job_id, 1.0)
    assert b.job_bytes == 2 * size and c4.job_bytes == 2 * size and c1.job_bytes == 0
    assert (b.queues["jobs.a"].jobs, b.queues["jobs.a"].job_bytes) == (0, 0)


def test_queued_jobs_expire_after_max_queue_time_at_the_exact_time():
    b = make_broker(max_queue_time=60.0)
    c = client("c")
    for i in range(3):
        submit(b, c, f"j-{i}", subject="nobody.home", now=float(i))
    assert b.next_deadline() == 60.0
    b.handle_timer(60.0)
    timeouts = errors(c, ErrorCode.TIMEOUT)
    assert [e.job_id for e in timeouts] == ["j-0"]
    assert "waited 60 s for a worker (the leader's max_queue_time)" in timeouts[0].message
    assert b.next_deadline() == 61.0
    b.handle_timer(62.0)
    assert len(errors(c, ErrorCode.TIMEOUT)) == 3
    assert b.job_bytes == 0 and b.jobs == {} and b.next_deadline() == float("inf")
    assert b.stats()["subjects"]["nobody.home"]["expired"] == 3


def test_a_client_timeout_sooner_than_max_queue_time_expires_the_job_first():
    b = make_broker(max_queue_time=60.0)
    c = client("c")
    submit(b, c, "late", subject="nobody.home", now=0.0)
    submit(b, c, "quick", subject="nobody.home", now=1.0, timeout=5.0)
    assert b.next_deadline() == 6.0
    b.handle_timer(6.0)
    assert [e.job_id for e in errors(c, ErrorCode.TIMEOUT)] == ["quick"]
    assert "its timeout passed" in errors(c)[0].message
    assert b.next_deadline() == 60.0


def test_max_queue_time_none_keeps_jobs_until_a_worker_comes():
    b = make_broker(max_queue_time=None)
    c = client("c")
    submit(b, c, "patient", subject="jobs.later")
    assert b.next_deadline() == float("inf")
    w = join(b, "w", 1, now=10_000.0)
    assert [a.job_id for a in assigns(w)] == ["patient"]


def test_a_job_waiting_out_a_backoff_expires_too():
    b = make_broker(
        max_queue_time=5.0, retry_backoff=Backoff(base=30.0, factor=1.0, cap=30.0, jitter=0.0)
    )
    c = client("c")
    w = join(b, "w", 1)
    submit(b, c, "j")
    answer(b, w, "j", 1.0, ok=False)  # retry in 30 s, but it may wait 5 s only
    b.handle_timer(31.0)
    assert [e.job_id for e in errors(c, ErrorCode.TIMEOUT)] == ["j"]
    assert b.jobs == {} and b.job_bytes == 0 and (c.jobs, c.job_bytes) == (0, 0)


def test_100k_abandoned_jobs_leave_and_the_leader_takes_jobs_again():
    b = make_broker(max_queue_time=600.0)
    flooder = client("flooder")
    for i in range(100_000):
        submit(b, flooder, f"a-{i}", subject="nobody.serves", now=i / 1000)
    assert len(errors(flooder, ErrorCode.BUSY)) == 90_000  # the per-client default: 10,000
    b.handle_timer(700.0)
    assert b.job_bytes == 0 and len(b.jobs) == 0
    assert len(b.queues["nobody.serves"].pending) == 0  # (nothing kept for the dead)
    user = client("user")
    w = join(b, "w", 1, now=700.0)
    submit(b, user, "fresh", now=700.0)
    assert [a.job_id for a in assigns(w)] == ["fresh"] and errors(user) == []


def test_cancelling_many_queued_jobs_compacts_the_queue():
    from protocol import Cancel

    b = make_broker(max_queued_per_client=100_000)
    c = client("c")
    for i in range(20_000):
        submit(b, c, f"j-{i}", subject="jobs.x")
    for i in range(19_000):
        b.cancel(c, Cancel(mid=next(_mids), job_id=f"j-{i}"), 1.0)
    queue = b.queues["jobs.x"]
    assert len(queue.pending) < 2 * 1000 + 100
    assert queue.jobs == 1000 and b.stats()["subjects"]["jobs.x"]["queued"] == 1000
    w = join(b, "w", 5000, now=2.0)
    assert [a.job_id for a in assigns(w)] == [f"j-{i}" for i in range(19_000, 20_000)]


def test_a_worker_cannot_take_more_than_max_window_whatever_credit_it_grants():
    b = make_broker(max_window=100)
    c = client("c")
    for i in range(500):
        submit(b, c, f"j-{i}")
    w = join(b, "w", 10**12)
    assert len(assigns(w)) == 100
    b.set_window(w, 10**15, 1.0)
    assert len(w.inflight) == 100


def test_subjects_with_nothing_waiting_are_forgotten_past_the_limit(monkeypatch):
    import actors.leader._broker as broker_module

    monkeypatch.setattr(broker_module, "MAX_SUBJECT_QUEUES", 100)
    b = make_broker()
    c = client("c")
    w = join(b, "w", 10, patterns=(">",))
    for i in range(1000):
        submit(b, c, f"j-{i}", subject=f"s.{i}")
        answer(b, w, f"j-{i}", 0.0)
    assert len(b.queues) <= 100
    assert len(results(c)) == 1000
    assert len(w.queues) == len(b.queues)


# ---------------------------------------------------------------------- sizes


def test_a_submit_whose_assign_would_not_fit_is_answered_too_large_at_once():
    b = make_broker(max_frame=2 * MIB)
    c = client("c")
    w = join(b, "w", 1)
    submit(b, c, "big", payload=b"x" * (2 * MIB - 100))
    [error] = errors(c)
    assert error.code == ErrorCode.TOO_LARGE and error.job_id == "big"
    assert "frame limit of 2097152 bytes" in error.message
    assert b.jobs == {} and assigns(w) == []
    submit(b, c, "fits", payload=b"x" * (2 * MIB - 4096))
    assert [a.job_id for a in assigns(w)] == ["fits"]


def test_an_assign_over_one_workers_limit_goes_to_another():
    b = make_broker()
    c = client("c")
    small = join(b, "small", 1, limit=1000)
    submit(b, c, "j", payload=b"x" * 5000)  # small is tried first (and fails)
    big = join(b, "big", 1, now=0.5)
    assert assigns(small) == [] and small.inflight == {}
    b.handle_timer(1.0)  # the backoff of the failed delivery
    assert [a.job_id for a in assigns(big)] == ["j"]
    answer(b, big, "j", 2.0)
    assert [r.ok for r in results(c)] == [True]


def test_a_job_no_worker_can_take_is_dead_lettered_with_the_reason():
    b = make_broker(max_attempts=2)
    c = client("c")
    dlq = client("dlq")
    b.subscribe(dlq, Subscribe(mid=1, sid=1, pattern=DLQ_PREFIX + ">"), 0.0)
    small = join(b, "small", 1, limit=1000)
    submit(b, c, "j", payload=b"x" * 5000)
    b.handle_timer(1.0)
    [result] = results(c)
    assert not result.ok and result.error_type == "TooLarge"
    assert "does not fit worker small's frame limit" in result.error_message
    assert small.inflight == {} and b.jobs == {}
    assert len([m for m in dlq.out if isinstance(m, Deliver)]) == 1


def test_a_result_over_a_clients_limit_gets_it_a_too_large_error():
    b = make_broker()
    c = client("c", limit=1000)
    w = join(b, "w", 1)
    mid = submit(b, c, "j")
    answer(b, w, "j", 1.0, payload=b"r" * 5000)
    [error] = errors(c)
    assert error.code == ErrorCode.TOO_LARGE and error.cid == mid and error.job_id == "j"
    assert "does not fit your frame limit" in error.message
    # The result stays stored: a client that can take it gets it.
    other = client("other")
    submit(b, other, "j", now=2.0)
    assert [r.payload for r in results(other)] == [b"r" * 5000]


def test_a_result_over_the_leaders_limit_fails_its_job_and_tells_the_worker():
    b = make_broker(max_frame=2 * MIB)
    c = client("c")
    w = join(b, "w", 1)
    submit(b, c, "j")
    answer(b, w, "j", 1.0, payload=b"r" * (2 * MIB))
    [told] = errors(w)
    assert told.code == ErrorCode.TOO_LARGE and told.job_id == "j"
    [result] = results(c)
    assert not result.ok and result.error_type == "ResultTooLarge"
    assert w.inflight == {}


def test_a_publish_too_large_to_forward_is_refused_and_a_small_subscriber_misses_one():
    b = make_broker(max_frame=2 * MIB)
    pub, small, big = client("pub"), client("small", limit=1000), client("big")
    for sub in (small, big):
        b.subscribe(sub, Subscribe(mid=1, sid=1, pattern="news.>"), 0.0)
    b.publish(pub, Publish(mid=7, subject="news.huge", payload=b"x" * (2 * MIB), qos=1), 0.0)
    [error] = errors(pub)
    assert error.code == ErrorCode.TOO_LARGE and error.cid == 7
    b.publish(pub, Publish(mid=8, subject="news.mid", payload=b"x" * 5000, qos=1), 0.0)
    assert [m.subject for m in big.out if isinstance(m, Deliver)] == ["news.mid"]
    assert [m for m in small.out if isinstance(m, Deliver)] == []
    b.publish(pub, Publish(mid=9, subject="news.small", payload=1, qos=1), 0.0)
    assert [m.subject for m in small.out if isinstance(m, Deliver)] == ["news.small"]


def test_subscriptions_per_client_are_bounded():
    b = make_broker(max_subscriptions=3)
    c = client("c")
    for sid in range(1, 6):
        b.subscribe(c, Subscribe(mid=sid, sid=sid, pattern=f"s.{sid}"), 0.0)
    assert [e.cid for e in errors(c, ErrorCode.NOT_PERMITTED)] == [4, 5]
    b.subscribe(c, Subscribe(mid=6, sid=2, pattern="s.other"), 0.0)  # replacing is fine
    assert len(c.subscriptions) == 3


def test_retained_messages_are_bounded_in_bytes():
    b = make_broker(max_retained_bytes=3 * MIB)
    pub = client("pub")
    for i in range(10):
        b.publish(pub, Publish(mid=i + 1, subject=f"r.{i}", payload=b"x" * MIB, retain=True), 0.0)
    assert list(b.retained) == ["r.8", "r.9"]
    assert b.retained.bytes <= 3 * MIB


def test_dead_letters_are_bounded_in_bytes():
    b = make_broker(max_attempts=1, max_dead_letter_bytes=3 * MIB)
    c = client("c")
    w = join(b, "w", 10)
    for i in range(10):
        submit(b, c, f"j-{i}", payload=b"x" * MIB, now=float(i))
        answer(b, w, f"j-{i}", float(i), ok=False)
    assert [d["job_id"] for d in b.dead_letters] == ["j-8", "j-9"]
    assert b.dead_letter_bytes <= 3 * MIB


def test_stored_results_are_bounded_in_bytes():
    b = make_broker(max_stored_bytes=3 * MIB)
    c = client("c")
    w = join(b, "w", 10)
    for i in range(10):
        submit(b, c, f"j-{i}", now=float(i))
        answer(b, w, f"j-{i}", float(i), payload=b"r" * MIB)
    assert len(b.finished) == 2 and b.finished.bytes <= 3 * MIB
    assert len(results(c)) == 10


def test_dedup_cache_max_bytes_evicts_oldest_and_skips_an_entry_too_large():
    cache = DedupCache(capacity=100, ttl=10.0, max_bytes=100)
    for i in range(5):
        cache.add(i, 0.0, f"v{i}", size=30)
    assert [k for k in range(5) if cache.seen(k, 0.0)] == [2, 3, 4]
    assert cache.bytes == 90
    cache.add("huge", 0.0, "x", size=101)
    assert not cache.seen("huge", 0.0) and cache.bytes == 0
    cache.add(9, 20.0, "late", size=10)  # the rest expired
    assert cache.bytes == 10


@pytest.mark.parametrize("state", [JobState.QUEUED])
def test_a_finished_job_lets_go_of_its_payload(state):
    b = make_broker()
    c = client("c")
    submit(b, c, "j", subject="nobody.home")
    job = b.jobs["j"]
    assert job.state is state
    from protocol import Cancel

    b.cancel(c, Cancel(mid=99, job_id="j"), 1.0)
    assert job.payload is None


def test_credit_message_is_clamped_too():
    b = make_broker(max_window=8)
    w = join(b, "w", 1)
    b.set_window(w, Credit(mid=1, credit=10**9).credit, 0.0)
    assert w.window == 8


# ---------------------------------------------------------------------- no route (issue 11)


def test_a_subject_no_worker_serves_is_answered_no_route_at_once_with_a_suggestion():
    b = make_broker()
    c = client("c")
    join(b, "w", 2, patterns=("math.square", "math.common.>"))
    submit(b, c, "typo", subject="math.sqare", wait_for_worker=False)
    [error] = errors(c)
    assert error.code == ErrorCode.NO_ROUTE and error.job_id == "typo"
    assert error.message == "no worker serves subject math.sqare (did you mean math.square?)"
    submit(b, c, "far", subject="billing.invoice", wait_for_worker=False)
    assert errors(c)[-1].message == "no worker serves subject billing.invoice"
    assert b.jobs == {} and b.job_bytes == 0


def test_route_grace_waits_for_a_worker_that_comes():
    b = make_broker(route_grace=5.0)
    c = client("c")
    submit(b, c, "j", subject="jobs.a", wait_for_worker=False)
    assert errors(c) == [] and b.next_deadline() == 5.0
    w = join(b, "w", 1, now=2.0)
    assert [a.job_id for a in assigns(w)] == ["j"]


def test_route_grace_ends_in_no_route_when_none_comes():
    b = make_broker(route_grace=5.0)
    c = client("c")
    submit(b, c, "j", subject="jobs.a", wait_for_worker=False)
    b.handle_timer(5.0)
    [error] = errors(c)
    assert error.code == ErrorCode.NO_ROUTE
    assert error.message == (
        "no worker serves subject jobs.a; none came within 5 s"
        " (the leader's route_grace is 5 s, its restart_grace 30 s)"
    )
    assert b.job_bytes == 0 and b.jobs == {}


def test_a_job_whose_worker_came_during_the_grace_waits_on_as_any_job():
    b = make_broker(route_grace=5.0, max_queue_time=100.0)
    c = client("c")
    submit(b, c, "j", subject="jobs.a", wait_for_worker=False)
    w = join(b, "w", 0, now=2.0)  # a worker comes, with no credit yet
    b.handle_timer(5.0)  # the grace is over, but a worker came: "j" waits on
    assert errors(c) == [] and b.jobs["j"].state is JobState.QUEUED
    assert b.next_deadline() == 100.0
    b.set_window(w, 1, 50.0)
    assert [a.job_id for a in assigns(w)] == ["j"]


def test_jobs_wait_while_a_departed_worker_may_come_back_and_then_no_route():
    b = make_broker(restart_grace=10.0)
    c = client("c")
    w = join(b, "w", 1, patterns=("jobs.>",))
    b.worker_left(w, 1.0)
    submit(b, c, "during-restart", subject="jobs.a", now=2.0, wait_for_worker=False)
    submit(b, c, "typo", subject="jbos.a", now=2.0, wait_for_worker=False)
    assert [e.job_id for e in errors(c, ErrorCode.NO_ROUTE)] == ["typo"]
    w2 = join(b, "w2", 1, patterns=("jobs.>",), now=3.0)
    assert [a.job_id for a in assigns(w2)] == ["during-restart"]
    b.worker_left(w2, 4.0)
    b.handle_timer(5.0)  # (the job w2 held is queued again, after its backoff)
    submit(b, c, "never", subject="jobs.b", now=5.0, wait_for_worker=False)
    assert b.next_deadline() == 14.0
    b.handle_timer(14.0)
    assert [e.job_id for e in errors(c, ErrorCode.NO_ROUTE)] == ["typo", "never"]


def test_wait_for_worker_queues_until_max_queue_time():
    b = make_broker(max_queue_time=60.0)
    c = client("c")
    submit(b, c, "j", subject="jobs.a", wait_for_worker=True)
    assert b.next_deadline() == 60.0
    w = join(b, "w", 1, now=30.0)
    assert [a.job_id for a in assigns(w)] == ["j"]


# ---------------------------------------------------------------------- results by id, conflicts, abandon


def test_a_job_id_resubmitted_with_another_payload_is_a_conflict():
    b = make_broker()
    c = client("c")
    w = join(b, "w", 1)
    submit(b, c, "order-1", payload={"amount": 10})
    submit(b, c, "order-1", payload={"amount": 99})  # while running
    [conflict] = errors(c, ErrorCode.CONFLICT)
    assert conflict.job_id == "order-1" and "another subject or payload" in conflict.message
    submit(b, c, "order-1", payload={"amount": 10})  # the same job: joins
    answer(b, w, "order-1", 1.0, payload="paid")
    assert [r.payload for r in results(c)] == ["paid", "paid"]
    submit(b, c, "order-1", subject="jobs.other", payload={"amount": 10}, now=2.0)  # finished
    assert len(errors(c, ErrorCode.CONFLICT)) == 2
    submit(b, c, "order-1", payload={"amount": 10}, now=2.0)
    assert [r.payload for r in results(c)] == ["paid", "paid", "paid"]


def test_a_result_is_read_by_id_and_a_running_one_can_be_waited_for():
    from protocol import Query

    b = make_broker()
    c, reader = client("c"), client("reader")
    w = join(b, "w", 1)
    submit(b, c, "j")
    b.query_result(reader, Query(mid=7, what="result", job_id="j"), 0.5)
    [pending] = errors(reader, ErrorCode.NOT_FOUND)
    assert pending.cid == 7 and "has not finished yet (assigned)" in pending.message
    b.query_result(reader, Query(mid=8, what="result", job_id="j", wait=True), 0.5)
    answer(b, w, "j", 1.0, payload=42)
    [result] = results(reader)
    assert result.cid == 8 and result.payload == 42
    b.query_result(reader, Query(mid=9, what="result", job_id="j"), 2.0)
    assert [r.cid for r in results(reader)] == [8, 9]
    b.query_result(reader, Query(mid=10, what="result", job_id="nope"), 2.0)
    assert "no job nope" in errors(reader, ErrorCode.NOT_FOUND)[-1].message


def test_an_abandoned_job_is_cancelled_only_when_nobody_else_waits():
    from protocol import Cancel

    b = make_broker()
    a, other = client("a"), client("other")
    w = join(b, "w", 2)
    submit(b, a, "shared")
    submit(b, other, "shared")
    submit(b, a, "mine")
    b.cancel(a, Cancel(mid=50, job_id="shared", abandon=True), 1.0)
    b.cancel(a, Cancel(mid=51, job_id="mine", abandon=True), 1.0)
    cancels = [m.job_id for m in w.out if type(m).__name__ == "Cancel"]
    assert cancels == ["mine"]  # "shared" goes on for the other client
    answer(b, w, "shared", 2.0, payload="for other")
    assert [r.payload for r in results(other)] == ["for other"]
    assert results(a) == []  # it gave up on both


def test_a_dead_letter_is_logged_with_its_last_error(caplog):
    b = make_broker(max_attempts=1)
    c = client("c")
    w = join(b, "w", 1)
    submit(b, c, "poison")
    with caplog.at_level("WARNING", logger="actors.leader"):
        answer(b, w, "poison", 1.0, ok=False)
    [line] = [r.getMessage() for r in caplog.records if r.name == "actors.leader"]
    assert line == "job poison (jobs.a) dead-lettered on $dlq.jobs.a after 1 attempts: E: bad"


def test_a_flood_of_unserved_submits_gets_suggestions_within_a_budget(monkeypatch):
    import actors.leader._broker as broker_module

    calls = []
    real = broker_module.difflib.get_close_matches
    monkeypatch.setattr(
        broker_module.difflib,
        "get_close_matches",
        lambda *a, **k: calls.append(a[0]) or real(*a, **k),
    )
    b = make_broker()
    c = client("c")
    join(b, "w", 1, patterns=tuple(f"svc.{i}.run" for i in range(300)))
    for i in range(1000):
        submit(b, c, f"f{i}", subject=f"svc.{i}.rnu", now=1.0, wait_for_worker=False)
    assert len(errors(c, ErrorCode.NO_ROUTE)) == 1000
    assert len(calls) == broker_module.SUGGESTIONS_PER_SECOND
    assert errors(c)[0].message == "no worker serves subject svc.0.rnu (did you mean svc.0.run?)"
    assert errors(c)[-1].message == "no worker serves subject svc.999.rnu"  # (over budget)
    submit(b, c, "long", subject="s." + "x" * 4000, now=100.0, wait_for_worker=False)
    submit(b, c, "again", subject="svc.0.rnu", now=100.0, wait_for_worker=False)  # cached
    assert len(calls) == broker_module.SUGGESTIONS_PER_SECOND
    assert errors(c)[-1].message.endswith("(did you mean svc.0.run?)")


def test_retained_messages_are_matched_by_walking_their_tokens():
    from actors.leader._retained import RetainedMessages

    retained = RetainedMessages(max_count=100, max_bytes=10_000)
    for subject in ["a.b.c", "a.b", "a.x.c", "b.b.c", "a.b.c.d"]:
        retained.put(subject, subject, {}, 10)
    assert sorted(retained.matching("a.*.c")) == ["a.b.c", "a.x.c"]
    assert sorted(retained.matching("a.>")) == ["a.b", "a.b.c", "a.b.c.d", "a.x.c"]
    assert sorted(retained.matching("*.b.c")) == ["a.b.c", "b.b.c"]
    assert retained.matching("a.b") == ["a.b"] and retained.matching("a") == []
    assert sorted(retained.matching(">")) == sorted(["a.b.c", "a.b", "a.x.c", "b.b.c", "a.b.c.d"])
    retained.put("a.b.c", "new", {}, 10)  # replaces, moves to the end
    assert list(retained)[-1] == "a.b.c" and retained.get("a.b.c") == ("new", {})
    for subject in ["a.b.c", "a.b", "a.x.c", "b.b.c", "a.b.c.d"]:
        retained._drop(subject)
    assert retained._root == {} and retained.bytes == 0


def test_a_flood_of_subscribes_does_not_scan_every_retained_subject():
    import time

    b = make_broker()
    pub, c = client("pub"), client("c")
    for i in range(10_000):
        b.publish(pub, Publish(mid=i + 1, subject=f"svc.{i}.state", payload=i, retain=True), 0.0)
    started = time.perf_counter()
    for sid in range(1, 2001):
        b.subscribe(c, Subscribe(mid=sid, sid=sid, pattern=f"other.{sid}.>"), 0.0)
    assert time.perf_counter() - started < 2.0  # (a scan each: some 15 s)
    b.subscribe(c, Subscribe(mid=9999, sid=9999, pattern="svc.*.state"), 0.0)
    assert len([m for m in c.out if isinstance(m, Deliver)]) == 10_000


def test_the_calls_waiting_for_one_job_are_bounded():
    import actors.leader._broker as broker_module

    b = make_broker()
    c = client("c")
    join(b, "w", 1)
    for _ in range(broker_module.MAX_WAITERS + 5):
        submit(b, c, "same")
    assert len(b.jobs["same"].waiters) == broker_module.MAX_WAITERS
    assert len(errors(c, ErrorCode.BUSY)) == 5


def test_a_worker_that_stopped_for_good_leaves_no_grace():
    b = make_broker(restart_grace=10.0)
    c = client("c")
    w = join(b, "w", 1, patterns=("jobs.>",))
    b.worker_left(w, 1.0, coming_back=False)
    submit(b, c, "j", subject="jobs.a", now=2.0, wait_for_worker=False)
    assert [e.job_id for e in errors(c, ErrorCode.NO_ROUTE)] == ["j"]


def test_a_resubmission_must_repeat_the_payload_exactly():
    b = make_broker()
    c = client("c")
    w = join(b, "w", 1)
    submit(b, c, "j", payload={"n": 1})
    submit(b, c, "j", payload={"n": 1.0})  # equal in Python, another job on the wire
    submit(b, c, "j", payload={"n": True})
    assert len(errors(c, ErrorCode.CONFLICT)) == 2
    answer(b, w, "j", 1.0)
    submit(b, c, "j", payload={"n": 1.0}, now=2.0)
    assert len(errors(c, ErrorCode.CONFLICT)) == 3
