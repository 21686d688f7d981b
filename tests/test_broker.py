"""The broker's delivery rules, sans-I/O: no event loop, exact times."""

from __future__ import annotations

import random

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from actors import DLQ_PREFIX
from actors.leader import Broker, BrokerConfig, JobState
from actors.leader._jobs import IllegalTransition, JobRecord
from actors.leader._links import ClientLink, WorkerLink
from protocol import (
    Assign,
    Cancel,
    Deliver,
    Error,
    Nack,
    Progress,
    Publish,
    Result,
    Submit,
    Subscribe,
)
from runtime import Backoff


@attrs.define(eq=False)
class TWorker(WorkerLink):
    """A worker link that records what the broker sends it."""

    out: list = attrs.field(factory=list)


@attrs.define(eq=False)
class TClient(ClientLink):
    """A client link that records what the broker sends it."""

    out: list = attrs.field(factory=list)


def make_broker(**kw) -> Broker:
    config = BrokerConfig(
        ack_timeout=kw.pop("ack_timeout", 10.0),
        max_attempts=kw.pop("max_attempts", 3),
        retry_backoff=kw.pop("retry_backoff", Backoff(base=1.0, factor=2.0, cap=60.0, jitter=0.0)),
        **kw,
    )
    return Broker(config, rng=random.Random(1))


def worker(
    broker: Broker, name: str, window: int, patterns=("jobs.>",), now=0.0, **kw
) -> WorkerLink:
    link = TWorker(
        name, print, patterns=tuple(patterns), window=window, group=kw.pop("group", "g"), **kw
    )
    link.send = link.out.append
    broker.worker_joined(link, now)
    return link


def client(name: str = "c") -> ClientLink:
    link = TClient(name, print)
    link.send = link.out.append
    return link


def submit(broker, c, job_id, subject="jobs.a", now=0.0, mid=None, **kw):
    kw.setdefault("wait_for_worker", True)  # (these tests often submit before workers come)
    broker.submit(
        c,
        Submit(
            mid=mid or abs(hash(job_id)) % 10**6,
            job_id=job_id,
            subject=subject,
            payload={"id": job_id},
            **kw,
        ),
        now,
    )


def assigns(link) -> list[Assign]:
    return [m for m in link.out if isinstance(m, Assign)]


def results(link) -> list[Result]:
    return [m for m in link.out if isinstance(m, Result)]


def finish(broker, w, job_id, now, ok=True, payload="done"):
    broker.result(
        w,
        Result(
            mid=1,
            job_id=job_id,
            ok=ok,
            payload=payload if ok else None,
            error_type=None if ok else "ValueError",
            error_message=None if ok else "boom",
        ),
        now,
    )


def test_credit_window_is_never_exceeded_and_freed_by_results():
    b = make_broker()
    w = worker(b, "w", window=2)
    c = client()
    for i in range(5):
        submit(b, c, f"j{i}")
    assert [a.job_id for a in assigns(w)] == ["j0", "j1"]
    assert b.stats()["waiting"] == 3 and len(b.jobs) == 5
    finish(b, w, "j0", 1.0)
    assert [a.job_id for a in assigns(w)] == ["j0", "j1", "j2"]
    assert len(w.inflight) == 2
    assert [r.job_id for r in results(c)] == ["j0"]
    # A window of 0 (drain) stops the flow; raising it restarts it.
    b.set_window(w, 0, 2.0)
    finish(b, w, "j1", 2.0)
    assert len(assigns(w)) == 3
    b.set_window(w, 3, 3.0)
    assert [a.job_id for a in assigns(w)] == ["j0", "j1", "j2", "j3", "j4"]


def test_round_robin_spreads_over_workers():
    # Small windows (under 8): one job per turn, strict alternation.
    b = make_broker()
    w1, w2 = worker(b, "w1", 4), worker(b, "w2", 4)
    c = client()
    for i in range(6):
        submit(b, c, f"j{i}")
    assert [a.job_id for a in assigns(w1)] == ["j0", "j2", "j4"]
    assert [a.job_id for a in assigns(w2)] == ["j1", "j3", "j5"]


def test_round_robin_turns_are_a_quarter_of_the_window_at_most_16():
    # A window of 10: turns of 2 jobs.
    b = make_broker()
    w1, w2 = worker(b, "w1", 10), worker(b, "w2", 10)
    c = client()
    for i in range(6):
        submit(b, c, f"j{i}")
    assert [a.job_id for a in assigns(w1)] == ["j0", "j1", "j4", "j5"]
    assert [a.job_id for a in assigns(w2)] == ["j2", "j3"]
    # Windows of 64 (and more): turns of ROUND_ROBIN_TURN = 16 jobs, so that a burst
    # reaches each worker as a batch.
    b = make_broker()
    big = [worker(b, f"w{k}", 100) for k in range(3)]
    for i in range(40):
        submit(b, c, f"k{i}")
    assert [a.job_id for a in assigns(big[0])] == [f"k{i}" for i in range(16)]
    assert [a.job_id for a in assigns(big[1])] == [f"k{i}" for i in range(16, 32)]
    assert [a.job_id for a in assigns(big[2])] == [f"k{i}" for i in range(32, 40)]
    for i in range(40, 50):  # the third worker's turn goes on, then the first's again
        submit(b, c, f"k{i}")
    assert [a.job_id for a in assigns(big[2])][-8:] == [f"k{i}" for i in range(40, 48)]
    assert [a.job_id for a in assigns(big[0])][16:] == ["k48", "k49"]


def test_round_robin_a_worker_that_fills_up_passes_its_turn():
    b = make_broker()
    w1, w2 = worker(b, "w1", 12), worker(b, "w2", 12)  # turns of 3
    c = client()
    finish_later = []
    for i in range(3):
        submit(b, c, f"a{i}")  # w1's turn: a0-a2
        finish_later.append(f"a{i}")
    b.set_window(w1, 4, 0.0)  # w1 shrinks to 4: it has room for one more only
    for i in range(4):
        submit(b, c, f"b{i}")
    # w2's turn (b0-b2), then w1's: one job fills it (b3), and its turn ends there.
    assert [a.job_id for a in assigns(w2)] == ["b0", "b1", "b2"]
    assert [a.job_id for a in assigns(w1)] == ["a0", "a1", "a2", "b3"]
    submit(b, c, "c0")
    assert [a.job_id for a in assigns(w2)] == ["b0", "b1", "b2", "c0"]


def test_least_loaded_picks_most_free_credit():
    b = make_broker()
    w1 = worker(b, "w1", 4, policy="least_loaded")
    w2 = worker(b, "w2", 1, policy="least_loaded")
    c = client()
    for i in range(4):
        submit(b, c, f"j{i}")
    assert len(assigns(w1)) == 3 and len(assigns(w2)) == 1


def test_sticky_routes_same_key_to_same_worker_and_waits_for_it():
    b = make_broker()
    w1 = worker(b, "w1", 1, policy="sticky")
    w2 = worker(b, "w2", 1, policy="sticky")
    c = client()
    for i in range(3):
        submit(b, c, f"k{i}", headers={"key": "customer-7"})
    got1 = assigns(w1)
    target, other = (w1, w2) if got1 else (w2, w1)
    assert len(assigns(target)) == 1 and assigns(other) == []
    assert len(target.backlog) == 2
    finish(b, target, "k0", 1.0)
    assert [a.job_id for a in assigns(target)] == ["k0", "k1"]
    assert assigns(other) == []


def test_ack_timeout_redelivers_with_exact_backoff_then_dead_letters():
    b = make_broker(max_attempts=3)
    w = worker(b, "w", 10)
    c = client()
    dlq = client("dlq")
    b.subscribe(dlq, Subscribe(mid=1, sid=9, pattern=DLQ_PREFIX + ">"), 0.0)
    submit(b, c, "slow")
    times = []
    now = 0.0
    for _ in range(10):
        deadline = b.next_deadline()
        if deadline == float("inf"):
            break
        now = deadline
        b.handle_timer(now)
        times.append(now)
    # assigned at 0; ack timeout at 10; backoff 1 s -> attempt 2 at 11; timeout at 21;
    # backoff 2 s -> attempt 3 at 23; timeout at 33 -> dead (3 attempts).
    assert times == [10.0, 11.0, 21.0, 23.0, 33.0]
    assert [a.attempt for a in assigns(w)] == [1, 2, 3]
    [res] = results(c)
    assert not res.ok and res.attempts == 3 and res.error_type == "AckTimeout"
    assert "dead-lettered after 3 attempts" in res.error_message
    [dead] = [m for m in dlq.out if isinstance(m, Deliver)]
    assert dead.subject == "$dlq.jobs.a" and dead.payload["attempts"] == 3
    assert b.stats()["subjects"]["jobs.a"]["dead"] == 1
    # The worker was told to stop each timed-out attempt.
    assert [m.job_id for m in w.out if isinstance(m, Cancel)] == ["slow"] * 3


def test_progress_extends_the_ack_deadline():
    b = make_broker()
    w = worker(b, "w", 1)
    c = client()
    submit(b, c, "long")
    assert b.next_deadline() == 10.0
    b.progress(w, Progress(mid=5, job_id="long", fraction=0.5), 7.0)
    assert b.next_deadline() == 17.0
    b.handle_timer(10.0)
    assert len(assigns(w)) == 1
    assert [m.fraction for m in c.out if isinstance(m, Progress)] == [0.5]
    finish(b, w, "long", 16.0)
    assert results(c)[0].ok


def test_worker_loss_redelivers_elsewhere_and_counts_an_attempt():
    b = make_broker()
    w1 = worker(b, "w1", 1)
    c = client()
    submit(b, c, "j")
    b.worker_left(w1, 2.0)
    assert b.jobs["j"].state is JobState.RETRY_WAIT
    w2 = worker(b, "w2", 1, now=2.5)
    b.handle_timer(3.0)  # backoff 1 s after attempt 1
    [a] = assigns(w2)
    assert a.attempt == 2
    finish(b, w2, "j", 4.0)
    assert results(c)[0].attempts == 2


def test_failure_is_retried_and_nack_delay_is_honoured():
    b = make_broker(max_attempts=5)
    w = worker(b, "w", 1)
    c = client()
    submit(b, c, "j")
    finish(b, w, "j", 1.0, ok=False)
    assert b.next_deadline() == 2.0  # backoff 1 s
    b.handle_timer(2.0)
    b.nack(w, Nack(mid=3, job_id="j", delay=5.0, reason="not now"), 2.5)
    assert b.next_deadline() == 7.5
    b.handle_timer(7.5)
    assert [a.attempt for a in assigns(w)] == [1, 2, 3]
    finish(b, w, "j", 8.0)
    assert results(c)[0].ok and results(c)[0].attempts == 3


def test_qos0_failure_is_not_retried():
    b = make_broker()
    w = worker(b, "w", 1)
    c = client()
    submit(b, c, "j", qos=0)
    finish(b, w, "j", 1.0, ok=False)
    [r] = results(c)
    assert not r.ok and r.error_type == "ValueError"
    assert b.next_deadline() == float("inf")


def test_dedup_returns_stored_result_and_merges_in_flight_duplicates():
    b = make_broker()
    w = worker(b, "w", 1)
    c1, c2 = client("c1"), client("c2")
    submit(b, c1, "j", mid=11)
    submit(b, c2, "j", mid=22)  # in flight: merged, not run twice
    assert len(assigns(w)) == 1
    finish(b, w, "j", 1.0, payload=42)
    assert [(r.cid, r.payload) for r in results(c1)] == [(11, 42)]
    assert [(r.cid, r.payload) for r in results(c2)] == [(22, 42)]
    submit(b, c1, "j", now=5.0, mid=33)  # finished: answered from the store
    assert len(assigns(w)) == 1
    assert [(r.cid, r.payload) for r in results(c1)] == [(11, 42), (33, 42)]
    # After the dedup window it runs again.
    submit(b, c1, "j", now=5.0 + b.config.dedup_window + 1, mid=44)
    assert len(assigns(w)) == 2


def test_busy_answer_at_the_queue_limit():
    b = make_broker(max_queued=2)
    c = client()
    for i in range(3):
        submit(b, c, f"j{i}")
    [err] = [m for m in c.out if isinstance(m, Error)]
    assert err.code == "busy" and err.job_id == "j2" and err.retry_after > 0


def test_late_result_from_timed_out_worker_wins_and_frees_its_slot():
    b = make_broker()
    w1, w2 = worker(b, "w1", 1), worker(b, "w2", 1)
    c = client()
    submit(b, c, "j")
    slow = w1 if assigns(w1) else w2
    fast = w2 if slow is w1 else w1
    b.handle_timer(10.0)
    assert len(slow.inflight) == 1  # keeps its slot: it may still be running the job
    b.handle_timer(11.0)
    assert [a.attempt for a in assigns(fast)] == [2]
    finish(b, slow, "j", 12.0, payload="slow")
    assert [r.payload for r in results(c)] == ["slow"]
    assert any(isinstance(m, Cancel) for m in fast.out)
    finish(b, fast, "j", 13.0, payload="fast")  # too late: ignored
    assert [r.payload for r in results(c)] == ["slow"]
    assert len(slow.inflight) == len(fast.inflight) == 0


def test_expired_job_is_dropped_before_assignment():
    b = make_broker()
    c = client()
    submit(b, c, "j", timeout=2.0)
    w = worker(b, "w", 1, now=3.0)
    assert assigns(w) == []
    [err] = [m for m in c.out if isinstance(m, Error)]
    assert err.code == "timeout"


def test_cancel_queued_and_running_jobs():
    b = make_broker()
    c = client()
    submit(b, c, "queued")
    b.cancel(c, Cancel(mid=2, job_id="queued"), 1.0)
    [r] = results(c)
    assert not r.ok and r.error_type == "Cancelled"
    w = worker(b, "w", 1, now=2.0)
    submit(b, c, "running", now=2.0)
    b.cancel(c, Cancel(mid=3, job_id="running", reason="user"), 3.0)
    assert [m.job_id for m in w.out if isinstance(m, Cancel)] == ["running"]
    assert b.stats()["waiting"] == 0 and list(b.jobs) == ["running"]  # (until its worker answers)


def test_client_leaving_keeps_the_job_and_stores_the_result():
    b = make_broker()
    w = worker(b, "w", 1)
    c = client()
    submit(b, c, "j")
    b.client_left(c)
    finish(b, w, "j", 1.0)
    assert results(c) == []
    c2 = client()
    submit(b, c2, "j", now=2.0)
    assert results(c2)[0].payload == "done"


def test_pubsub_broadcast_queue_groups_and_retained():
    b = make_broker()
    c1, c2, q1, q2 = client("c1"), client("c2"), client("q1"), client("q2")
    b.subscribe(c1, Subscribe(mid=1, sid=1, pattern="events.>"), 0.0)
    b.subscribe(c2, Subscribe(mid=1, sid=2, pattern="events.*.created"), 0.0)
    b.subscribe(q1, Subscribe(mid=1, sid=3, pattern="events.>", queue="q"), 0.0)
    b.subscribe(q2, Subscribe(mid=1, sid=4, pattern="events.>", queue="q"), 0.0)
    bw1 = worker(b, "bw1", 1, patterns=("events.>",), mode="broadcast", group="audit")
    bw2 = worker(b, "bw2", 1, patterns=("events.>",), mode="broadcast", group="audit")
    pub = client("pub")
    for i in range(2):
        b.publish(
            pub, Publish(mid=i + 1, subject="events.order.created", payload=i, retain=True), 1.0
        )

    def delivered(link):
        return [m.payload for m in link.out if isinstance(m, Deliver)]

    assert delivered(c1) == delivered(c2) == [0, 1]
    assert delivered(bw1) == delivered(bw2) == [0, 1]
    assert sorted(delivered(q1) + delivered(q2)) == [0, 1] and delivered(q1) and delivered(q2)
    late = client("late")
    b.subscribe(late, Subscribe(mid=1, sid=5, pattern="events.order.*"), 2.0)
    [replayed] = [m for m in late.out if isinstance(m, Deliver)]
    assert replayed.payload == 1 and replayed.retained


def test_transition_table_refuses_illegal_moves():
    job = JobRecord("j", "s", None, {}, 1, 3, 0.0)
    job.move(JobState.ASSIGNED)
    job.move(JobState.DONE)
    with pytest.raises(IllegalTransition):
        job.move(JobState.QUEUED)


class RecordingJournal:
    """A :class:`~actors.leader._journal.JobJournal` that lists the calls it gets."""

    refusal = None
    dead_letter_count = 0

    def __init__(self) -> None:
        self.seen: list[tuple[str, ...]] = []

    def accept(self, job, now):
        self.seen.append(("accept", job.job_id, job.state.value))

    def assign(self, job):
        self.seen.append(("assign", job.job_id, str(job.attempt)))

    def retry(self, job):
        self.seen.append(("retry", job.job_id, str(job.attempt)))

    def finish(self, job, state, stored, now):
        self.seen.append(("finish", job.job_id, state.value))

    def dead_letter(self, job, record, now):
        self.seen.append(("dead_letter", job.job_id, record["error_type"]))

    def forget_dead_letters(self, job_ids):
        self.seen.append(("forget", *sorted(job_ids)))

    def purge_dead_letters_later(self):
        self.seen.append(("purge",))


def test_the_journal_is_told_of_every_change_and_answers_wait_for_it():
    journal = RecordingJournal()
    b = Broker(BrokerConfig(), rng=random.Random(0), journal=journal)
    w = worker(b, "w", 1)
    c = client()
    submit(b, c, "j")
    finish(b, w, "j", 1.0)
    assert journal.seen == [
        ("accept", "j", "queued"),
        ("assign", "j", "1"),
        ("finish", "j", "done"),
    ]
    assert not c.out  # the result waits for the journal's commit
    held = b.take_held()
    assert w.window == 0  # (and so does the worker's slot)
    b.release(held, 1.0)
    assert [type(m).__name__ for m in c.out] == ["Result"]
    assert w.window == 1


def checked_worker(broker: Broker, name: str, window: int, now: float) -> WorkerLink:
    """A worker whose send checks the credit invariant at the moment of every Assign."""
    link = TWorker(name, print, patterns=("jobs.>",), window=window, group="g")

    def send(message):
        if isinstance(message, Assign):
            assert message.job_id in link.inflight
            assert len(link.inflight) <= link.window, "credit exceeded"
        link.out.append(message)

    link.send = send
    broker.worker_joined(link, now)
    return link


@given(
    st.lists(
        st.tuples(st.sampled_from("swrftlc"), st.integers(0, 3), st.integers(0, 30)), max_size=80
    )
)
def test_random_schedules_keep_credit_and_answer_every_submit_once(ops):
    """Credit is never exceeded, and every accepted submit gets exactly one answer."""
    b = make_broker(max_attempts=4, max_queued=1000)
    c = client()
    workers: list[WorkerLink] = []
    now = 0.0
    submitted = []
    for i, (op, n, k) in enumerate(ops):
        now += 0.5
        if op == "s":
            submit(b, c, f"j{k}", now=now, mid=1000 + i)
            submitted.append(1000 + i)
        elif op == "w" and len(workers) < 4:
            workers.append(checked_worker(b, f"w{i}", n + 1, now))
        elif op in "rf" and workers:
            w = workers[n % len(workers)]
            if w.inflight:
                job_id = list(w.inflight)[k % len(w.inflight)]
                finish(b, w, job_id, now, ok=(op == "r"))
        elif op == "t":
            now += k
            b.handle_timer(now)
        elif op == "l" and workers:
            b.worker_left(workers.pop(n % len(workers)), now)
        elif op == "c" and workers:
            b.set_window(workers[n % len(workers)], n, now)
    # Drain: one healthy worker answers everything.
    final = checked_worker(b, "final", 1000, now)
    for _ in range(300):
        for w in [*workers, final]:
            for job_id in list(w.inflight):
                finish(b, w, job_id, now)
        if not b.jobs:
            break
        now = max(now + 1, min(b.next_deadline(), now + 100))
        b.handle_timer(now)
    assert not b.jobs
    answered = [m.cid for m in c.out if isinstance(m, (Result, Error))]
    assert sorted(answered) == sorted(submitted)
    assert b.job_bytes == 0 and c.jobs == 0 and c.job_bytes == 0


def test_take_soonest_reports_the_earliest_new_deadline_once() -> None:
    """What the leader's timer is brought forward to after each batch, in O(1)."""
    b = make_broker(ack_timeout=10.0)
    assert b.take_soonest() == float("inf")
    w = worker(b, "w", window=2)
    c = client()
    submit(b, c, "j1", now=1.0)
    submit(b, c, "j2", now=3.0)
    assert b.take_soonest() == 11.0  # j1's ack deadline, the earlier of the two
    assert b.take_soonest() == float("inf")  # reported once
    assert b.next_deadline() == 11.0  # the full scan agrees
    b.nack(w, Nack(mid=1, job_id="j2", delay=0.5), 4.0)
    assert b.take_soonest() == 4.5  # a retry wait counts too
    assert b.next_deadline() == 4.5


def test_least_loaded_in_a_large_group_stays_even_and_looks_at_few_workers():
    """Beyond 16 workers, least_loaded takes the less loaded of two random workers with a
    free slot: O(1) per job, and the load still ends up even."""
    from actors.leader._broker import EXACT_LEAST_LOADED, LEAST_LOADED_SAMPLES

    b = make_broker()
    workers = [worker(b, f"w{i}", 10, policy="least_loaded") for i in range(100)]
    assert len(workers) > EXACT_LEAST_LOADED
    c = client()
    looked = []
    real_randrange = b.rng.randrange

    def counting_randrange(n):
        looked[-1] += 1
        return real_randrange(n)

    b.rng.randrange = counting_randrange
    for i in range(600):  # 60 % of the total credit
        looked.append(0)
        submit(b, c, f"j{i}")
    held = sorted(len(w.inflight) for w in workers)
    assert sum(held) == 600
    assert held[0] >= 2 and held[-1] <= 9  # even: no worker idle, none full
    assert min(looked) >= 1 and max(looked) <= LEAST_LOADED_SAMPLES  # sampled, not scanned
    # Credit is never exceeded; once every slot is taken, jobs wait.
    for i in range(600, 1100):
        looked.append(0)
        submit(b, c, f"j{i}")
    assert all(len(w.inflight) == 10 for w in workers)
    assert b.stats()["waiting"] == 100
