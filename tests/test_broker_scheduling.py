"""The broker's bookkeeping of queues, workers and limits, sans-I/O, at exact times.

- A joining worker becomes a candidate of exactly the queues its patterns match, once
  each, asked through a :class:`~actors.leader._links.PatternSet` (which agrees with the subject
  index and shares its work between subjects); a worker that leaves is no one's candidate.
- A worker with room visits only the queues whose jobs found no worker with room
  (``WorkerLink.hungry``), in turn: a flood of Credit or of Nacks of unknown jobs does no
  work, however many queues the worker serves.
- Idle queues are dropped without scanning every worker's queues, and the scan for them
  is made at most once per tenth of ``MAX_SUBJECT_QUEUES`` new queues.
- Every accepted job counts against the job and byte limits (in total, of its subject, of
  its client) from its acceptance until it finishes, whether it waits or a worker holds
  it, through retries, timeouts, workers that leave and cancels.
"""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import actors.leader._broker as broker_module
from actors.leader import Broker, JobState
from actors.leader._links import ClientLink, PatternSet, WorkerLink
from actors.leader._sizes import JOB_OVERHEAD, payload_size
from protocol import Assign, Cancel, Error, ErrorCode, Nack, Result, SubjectIndex, Submit
from tests.test_broker import TClient, TWorker, client, make_broker

_mids = itertools.count(1)


def worker(broker: Broker, name: str, window: int, patterns=("jobs.>",), now=0.0, **kw) -> TWorker:
    link = TWorker(name, print, patterns=tuple(patterns), window=window, group=name, **kw)
    link.send = link.out.append
    broker.worker_joined(link, now)
    return link


def submit(broker: Broker, c: ClientLink, job_id: str, subject="jobs.a", now=0.0, **kw) -> None:
    kw.setdefault("wait_for_worker", True)
    kw.setdefault("payload", job_id)
    broker.submit(c, Submit(mid=next(_mids), job_id=job_id, subject=subject, **kw), now)


def size_of(job_id: str, subject="jobs.a") -> int:
    """What a job of :func:`submit` counts in the byte limits."""
    return payload_size(job_id) + len(subject) + JOB_OVERHEAD


def assigned(link: TWorker) -> list[str]:
    return [m.job_id for m in link.out if isinstance(m, Assign)]


def errors(link: TClient, code: str | None = None) -> list[Error]:
    return [m for m in link.out if isinstance(m, Error) and (code is None or m.code == code)]


def answer(broker: Broker, w: WorkerLink, job_id: str, now: float, ok=True) -> None:
    broker.result(
        w,
        Result(mid=next(_mids), job_id=job_id, ok=ok, payload="done" if ok else None,
               error_type=None if ok else "E", error_message=None if ok else "bad"),
        now,
    )  # fmt: skip


def counts(broker: Broker, c: ClientLink, subject="jobs.a") -> tuple[int, int, int, int, int, int]:
    """(jobs, bytes) in total, of ``subject`` and of client ``c``: what the limits count."""
    queue = broker.queues[subject]
    return len(broker.jobs), broker.job_bytes, queue.jobs, queue.job_bytes, c.jobs, c.job_bytes


def held(broker: Broker, c: ClientLink, *job_ids: str, subject="jobs.a") -> tuple[int, ...]:
    """What :func:`counts` must be while exactly ``job_ids`` (of ``c``, ``subject``) are held."""
    n, total = len(job_ids), sum(size_of(j, subject) for j in job_ids)
    return n, total, n, total, n, total


# ---------------------------------------------------------------------- joining workers


tokens = st.sampled_from(["a", "b", "c"])
patterns = st.lists(st.sampled_from(["a", "b", "*"]), min_size=0, max_size=4).flatmap(
    lambda init: st.sampled_from(["a", "b", "*", ">"]).map(lambda last: ".".join([*init, last]))
)


# Cheap (no I/O, a few microseconds each), and wildcard sets that differ only in a rare
# subject need many examples to meet.
@settings(max_examples=300)
@given(
    st.lists(patterns, max_size=8), st.lists(st.lists(tokens, min_size=1, max_size=6), max_size=30)
)
def test_a_pattern_set_agrees_with_the_subject_index(pattern_list, subjects):
    index = SubjectIndex()
    for pattern in pattern_list:
        index.add(pattern, pattern)
    matcher = PatternSet(pattern_list)  # one for all the subjects: its states are shared
    for subject in (".".join(t) for t in subjects):
        assert matcher.matches(subject) == bool(index.match(subject)), (pattern_list, subject)


def _overlapping(count: int) -> list[str]:
    """``count`` patterns that all match ``a.a.a.a.a.a.a.a.a.a.<anything>`` (as the
    amplification test's worker Hello)."""
    found = [">"]
    for depth in range(1, 10):
        found += [".".join(p) + ".>" for p in itertools.product("a*", repeat=depth)]
    return found[:count]


@pytest.mark.parametrize(
    ("pattern_list", "matches"),
    [
        (_overlapping(1024), True),
        # Every prefix keeps many patterns open, and none matches in the end.
        ([".".join(p) + ".b" for p in itertools.product("a*", repeat=10)], False),
    ],
)
def test_a_pattern_set_shares_the_work_of_subjects_with_common_prefixes(pattern_list, matches):
    matcher = PatternSet(pattern_list)
    subjects = [f"a.a.a.a.a.a.a.a.a.a.s{i}" for i in range(10_000)]
    assert all(matcher.matches(s) is matches for s in subjects)
    assert len(matcher._states) <= 25  # (one per depth, or so: not one per subject)


def test_a_joining_worker_is_a_candidate_of_each_queue_it_serves_once():
    b = make_broker()
    c = client()
    for subject in ["jobs.a", "jobs.b", "other.x", "jobs.a.deep"]:
        submit(b, c, f"j-{subject}", subject=subject)
    w1 = worker(b, "w1", 0, patterns=("jobs.*", "jobs.>", "*.a"))  # jobs.a: three patterns
    w2 = worker(b, "w2", 0, patterns=("other.>",), mode="broadcast")
    w3 = worker(b, "w3", 0, patterns=("nothing.here",))
    assert [q.subject for q in w1.queues] == ["jobs.a", "jobs.b", "jobs.a.deep"]
    assert w2.queues == {} and w3.queues == {}
    assert {s: q.candidates for s, q in b.queues.items()} == {
        "jobs.a": [w1],
        "jobs.b": [w1],
        "other.x": [],
        "jobs.a.deep": [w1],
    }
    # Its queues hold jobs it has no room for: it is to visit them when it has.
    assert list(w1.hungry) == list(w1.queues)
    submit(b, c, "new", subject="jobs.c")  # a new queue lists it, once
    assert b.queues["jobs.c"].candidates == [w1] and list(w1.queues)[-1] is b.queues["jobs.c"]
    b.worker_left(w1, 1.0, coming_back=False)
    assert all(q.candidates == [] for q in b.queues.values())
    assert w1.queues == {} and not w1.hungry


# ---------------------------------------------------------------------- feeding workers


@pytest.fixture
def dispatches(monkeypatch) -> list[str]:
    """The subjects of the queues the broker dispatches, as it does."""
    seen: list[str] = []
    dispatch = Broker._dispatch

    def counting(self, queue, now):
        seen.append(queue.subject)
        dispatch(self, queue, now)

    monkeypatch.setattr(Broker, "_dispatch", counting)
    return seen


def test_a_credit_flood_visits_no_queue_with_nothing_waiting(dispatches):
    b = make_broker(route_grace=0.0)
    c = client()
    for i in range(1000):  # unserved: answered no_route, their queues stay
        submit(b, c, f"q{i}", subject=f"amp.q{i}", wait_for_worker=False)
    assert len(b.queues) == 1000 and len(errors(c, ErrorCode.NO_ROUTE)) == 1000
    w = worker(b, "w", 100, patterns=(">",))
    assert len(w.queues) == 1000 and not w.hungry
    for credit in [100, 0, 100, 5, 100] * 200:
        b.set_window(w, credit, 1.0)
    for i in range(200):  # Nacks of jobs it does not hold
        b.nack(w, Nack(mid=next(_mids), job_id=f"nobody-{i}"), 1.0)
    assert dispatches == []
    # A job that finds no room: the next Credit visits its queue, and that queue only.
    b.set_window(w, 0, 2.0)
    submit(b, c, "late", subject="amp.q500", now=2.0)
    assert list(w.hungry) == [b.queues["amp.q500"]]
    dispatches.clear()
    b.set_window(w, 1, 3.0)
    assert dispatches == ["amp.q500"] and assigned(w) == ["late"] and not w.hungry


def test_a_worker_with_room_takes_from_each_waiting_queue_in_turn():
    b = make_broker()
    c = client()
    w = worker(b, "w", 0)
    for i in range(3):
        submit(b, c, f"a{i}", subject="jobs.a")
        submit(b, c, f"b{i}", subject="jobs.b")
    assert [q.subject for q in w.hungry] == ["jobs.a", "jobs.b"]
    b.set_window(w, 1, 1.0)
    for now in (2.0, 3.0, 4.0, 5.0, 6.0):
        answer(b, w, assigned(w)[-1], now)
    assert assigned(w) == ["a0", "b0", "a1", "b1", "a2", "b2"]
    assert not w.hungry and not any(q.starved for q in b.queues.values())


def test_the_workers_of_a_subject_share_its_waiting_jobs_as_they_free_slots():
    b = make_broker()
    c = client()
    w1, w2 = worker(b, "w1", 1), worker(b, "w2", 1)
    for i in range(5):
        submit(b, c, f"j{i}")
    queue = b.queues["jobs.a"]
    assert (assigned(w1), assigned(w2)) == (["j0"], ["j1"])
    assert queue.starved and queue in w1.hungry and queue in w2.hungry
    answer(b, w2, "j1", 1.0)
    answer(b, w1, "j0", 1.0)
    assert (assigned(w1), assigned(w2)) == (["j0", "j3"], ["j1", "j2"])
    answer(b, w2, "j2", 2.0)  # takes the last one: the queue is empty, nobody starves
    assert assigned(w2)[-1] == "j4" and not queue.pending and not queue.starved
    answer(b, w1, "j3", 3.0)  # w1 lets go of the queue it finds empty
    assert not w1.hungry


# ---------------------------------------------------------------------- idle queues


def test_idle_queues_are_dropped_oldest_first_from_their_workers_too(monkeypatch):
    monkeypatch.setattr(broker_module, "MAX_SUBJECT_QUEUES", 100)
    b = make_broker()
    c = client()
    w = worker(b, "w", 1000, patterns=(">",))
    for i in range(100):
        submit(b, c, f"j{i}", subject=f"s.{i}")
        answer(b, w, f"j{i}", 0.0)
    assert len(b.queues) == len(w.queues) == 100
    submit(b, c, "new", subject="s.new")  # a tenth (and one) of the idle ones go
    assert list(b.queues) == [f"s.{i}" for i in range(11, 100)] + ["s.new"]
    assert list(w.queues) == list(b.queues.values())


def test_new_subjects_scan_for_idle_queues_once_per_tenth_of_the_limit(monkeypatch):
    monkeypatch.setattr(broker_module, "MAX_SUBJECT_QUEUES", 100)
    scans = []
    drop = Broker._drop_idle_queues
    monkeypatch.setattr(
        Broker, "_drop_idle_queues", lambda self: scans.append(len(self.queues)) or drop(self)
    )
    b = make_broker(max_queued_per_client=1000)
    hog, other = client("hog"), client("other")
    w = worker(b, "w", 0, patterns=(">",))
    for i in range(100):  # every queue holds a job: none is idle
        submit(b, hog, f"h{i}", subject=f"s.{i}")
    for i in range(100):  # each leaves one more queue, with a job
        submit(b, other, f"o{i}", subject=f"new.{i}")
    assert scans == [100, 110, 120, 130, 140, 150, 160, 170, 180, 190]
    assert len(b.queues) == 200  # (they all hold jobs: the job limits bound them)
    # A refused submit to a new subject makes no queue.
    b.set_window(w, 0, 1.0)
    hog.jobs = b.config.max_queued_per_client  # (as if it had that many)
    submit(b, hog, "refused", subject="never.made")
    assert errors(hog, ErrorCode.BUSY) and "never.made" not in b.queues


# ---------------------------------------------------------------------- what the limits count


def test_a_job_counts_from_its_acceptance_until_it_finishes():
    b = make_broker()
    c = client()
    w = worker(b, "w", 2)
    submit(b, c, "j1")  # straight to the worker
    submit(b, c, "j2")
    submit(b, c, "j3")  # waits
    assert assigned(w) == ["j1", "j2"]
    assert counts(b, c) == held(b, c, "j1", "j2", "j3")
    assert b.stats()["waiting"] == 1 and b.stats()["subjects"]["jobs.a"]["queued"] == 1
    answer(b, w, "j1", 1.0)  # (j3 goes to the worker)
    assert counts(b, c) == held(b, c, "j2", "j3")
    assert b.stats()["waiting"] == 0 and b.stats()["subjects"]["jobs.a"]["in_flight"] == 2
    answer(b, w, "j2", 2.0)
    answer(b, w, "j3", 2.0)
    assert counts(b, c) == (0, 0, 0, 0, 0, 0)
    answer(b, w, "j3", 3.0)  # (a second answer uncounts nothing)
    assert counts(b, c) == (0, 0, 0, 0, 0, 0)


def test_jobs_workers_hold_count_against_every_limit():
    one = size_of("j0")
    for limits, refusal in [
        ({"max_queued": 3}, "leader queue is full (3 jobs"),
        ({"max_queued_bytes": 3 * one}, "leader queue is full (3 jobs"),
        ({"max_queued_per_subject": 3}, "queue of subject jobs.a is full (3 jobs"),
        ({"max_queued_bytes_per_subject": 3 * one}, "queue of subject jobs.a is full (3 jobs"),
        ({"max_queued_per_client": 3}, "this connection has 3 jobs"),
        ({"max_queued_bytes_per_client": 3 * one}, "this connection has 3 jobs"),
    ]:
        b = make_broker(**limits)
        c = client()
        w = worker(b, "w", 100)  # room for all: nothing waits
        for i in range(4):
            submit(b, c, f"j{i}")
        assert assigned(w) == ["j0", "j1", "j2"], limits
        [busy] = errors(c, ErrorCode.BUSY)
        assert busy.job_id == "j3" and refusal in busy.message, (limits, busy.message)
        assert "queued or running" in busy.message
        answer(b, w, "j0", 1.0)  # one finishes: one more is taken
        submit(b, c, "j4", now=1.0)
        assert assigned(w)[-1] == "j4" and len(errors(c)) == 1, limits


def test_retries_keep_a_job_counted_and_its_end_uncounts_it():
    b = make_broker(max_attempts=2)
    c = client()
    w1 = worker(b, "w1", 1)
    submit(b, c, "j1")
    submit(b, c, "j2", qos=0)
    b.nack(w1, Nack(mid=next(_mids), job_id="j1", delay=5.0), 1.0)  # j2 goes to w1
    assert b.jobs["j1"].state is JobState.RETRY_WAIT and assigned(w1) == ["j1", "j2"]
    assert counts(b, c) == held(b, c, "j1", "j2")
    answer(b, w1, "j2", 2.0, ok=False)  # QoS 0: its failure is its end
    assert counts(b, c) == held(b, c, "j1")
    b.handle_timer(6.0)  # j1 again, second attempt
    assert assigned(w1) == ["j1", "j2", "j1"] and counts(b, c) == held(b, c, "j1")
    b.handle_timer(16.0)  # ack timeout: out of attempts, dead-lettered
    assert b.jobs == {} and counts(b, c) == (0, 0, 0, 0, 0, 0)
    assert [e.job_id for e in errors(c)] == [] and len(b.dead_letters) == 1


def test_a_timed_out_attempt_a_lost_worker_and_a_cancel_keep_the_count_exact():
    b = make_broker()
    c = client()
    w1 = worker(b, "w1", 1)
    submit(b, c, "j1")
    b.handle_timer(10.0)  # no answer in time: w1 keeps the slot, j1 waits its backoff
    w2 = worker(b, "w2", 1, now=10.0)
    b.handle_timer(11.0)
    assert assigned(w2) == ["j1"] and counts(b, c) == held(b, c, "j1")
    answer(b, w1, "j1", 12.0)  # the late answer wins; w2 is told to stop
    assert counts(b, c) == (0, 0, 0, 0, 0, 0)
    answer(b, w2, "j1", 13.0)
    assert counts(b, c) == (0, 0, 0, 0, 0, 0)
    submit(b, c, "j2", now=14.0)
    holder = w1 if "j2" in w1.inflight else w2
    b.worker_left(holder, 15.0)  # redelivered later: counted all along
    assert b.jobs["j2"].state is JobState.RETRY_WAIT and counts(b, c) == held(b, c, "j2")
    b.handle_timer(16.0)
    (other,) = [w for w in (w1, w2) if w is not holder]
    assert assigned(other)[-1] == "j2"
    b.cancel(c, Cancel(mid=next(_mids), job_id="j2"), 17.0)  # running: ends when the worker says
    assert counts(b, c) == held(b, c, "j2")
    b.nack(other, Nack(mid=next(_mids), job_id="j2"), 18.0)
    assert counts(b, c) == (0, 0, 0, 0, 0, 0) and b.jobs == {}


def test_a_worker_with_a_large_window_cannot_make_the_leader_hold_more_than_the_byte_limit():
    payload = b"x" * 512 * 1024
    one = payload_size(payload) + len("jobs.big") + JOB_OVERHEAD
    b = make_broker(max_queued_bytes=8 * 2**20, max_queued_bytes_per_client=4 * 2**20)
    c = client()
    w = worker(b, "w", 10_000)
    for i in range(32):
        submit(b, c, f"b{i}", subject="jobs.big", payload=payload)
    assert len(assigned(w)) == (4 * 2**20) // one == 7
    assert sum(job.size for job in b.jobs.values()) == b.job_bytes == 7 * one <= 4 * 2**20
    assert len(errors(c, ErrorCode.BUSY)) == 25


# ---------------------------------------------------------------------- all of it, at random

STEPS = st.lists(
    st.tuples(
        st.sampled_from(["submit", "submit", "submit", "answer", "join", "leave", "credit"]),
        st.integers(0, 29),  # a subject, or a job to answer
        st.integers(0, 3),  # a worker (by position), or a window
    ),
    min_size=20,
    max_size=100,
)
WORKER_PATTERNS = [(">",), ("s.*",), ("s.1", "s.2", "s.*"), ("t.>",), ("s.1",)]


def _check(b: Broker, workers: list[TWorker], clients: list[TClient]) -> None:
    index = SubjectIndex()
    for w in workers:
        for pattern in w.patterns:
            index.add(pattern, w)
    for subject, queue in b.queues.items():
        assert len(set(queue.candidates)) == len(queue.candidates) and set(queue.candidates) == set(
            index.match(subject)
        ), subject
        live = [job for job in queue.pending if job.state is JobState.QUEUED]
        for w in queue.candidates if live else ():
            assert len(w.inflight) >= w.window and queue in w.hungry, (subject, w.name)
        mine = [job for job in b.jobs.values() if job.subject == subject]
        assert (queue.jobs, queue.job_bytes) == (len(mine), sum(job.size for job in mine)), subject
    for w in workers:
        assert list(w.queues) == [q for q in b.queues.values() if w in q.candidates], w.name
    assert b.job_bytes == sum(job.size for job in b.jobs.values())
    for c in clients:
        mine = [job for job in b.jobs.values() if job.owner is c]
        assert (c.jobs, c.job_bytes) == (len(mine), sum(job.size for job in mine))


# Cheap sans-I/O runs; an idle queue is dropped only when a run fills MAX_SUBJECT_QUEUES,
# which few step sequences do: many examples to reach it often.
@settings(max_examples=300)
@given(STEPS)
def test_queues_workers_and_counters_stay_consistent_as_idle_queues_are_dropped(steps):
    from unittest import mock

    with mock.patch.object(broker_module, "MAX_SUBJECT_QUEUES", 10):
        b = make_broker(max_queued_per_client=12, max_queued_per_subject=3, max_queue_time=5.0)
        clients = [client("c0"), client("c1")]
        workers: list[TWorker] = []
        names = itertools.count()
        for n, (step, a, k) in enumerate(steps):
            now = float(n)
            if step == "submit":
                subject = f"{'st'[a % 2]}.{a // 2}"
                submit(b, clients[k % 2], f"j{n}", subject=subject, now=now, wait_for_worker=k < 2)
            elif step == "answer" and workers:
                w = workers[k % len(workers)]
                if w.inflight:
                    answer(b, w, list(w.inflight)[a % len(w.inflight)], now, ok=a % 3 != 0)
            elif step == "join" and len(workers) < 4:
                workers.append(
                    worker(b, f"w{next(names)}", k, patterns=WORKER_PATTERNS[a % 5], now=now)
                )
            elif step == "leave" and workers:
                b.worker_left(workers.pop(k % len(workers)), now, coming_back=a % 2 == 0)
            elif step == "credit" and workers:
                b.set_window(workers[a % len(workers)], k, now)
            b.handle_timer(now)
            _check(b, workers, clients)
