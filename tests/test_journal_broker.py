"""The broker with a journal, sans-I/O, at exact virtual times: what it holds until the
journal's commit, delayed jobs, and what it makes of a journal when it starts again.

The broker is driven by hand with the fake links of :mod:`tests.test_broker`, and a real
:class:`~actors.leader.SqliteJournal` in a temporary directory. :func:`commit` does what
the leader's writer task does after each batch: take what is pending and what waits for
it, write the batch, release the answers and worker slots.

- Held answers: a Result reaches the waiting client, an enqueue's Ack its client, and a
  worker's slot frees, only once the commit holding what they report is written; a take
  made before a Result does not release it.
- Delays: a job submitted with ``delay=10`` at t=0 is assigned at exactly t=10, its
  ``max_queue_time`` counts from t=10, and it keeps its due time across a restart.
- Recovery: a job a worker held when the leader stopped counts that attempt: redelivered
  with the next attempt number, or dead-lettered when it was its last.
"""

from __future__ import annotations

import itertools
import random
from pathlib import Path
from typing import Any

import pytest

from actors.leader import Broker, BrokerConfig, JobState, SqliteJournal
from protocol import Ack, Assign, Encoded, Error, ErrorCode, Result, Submit, decode_payload
from runtime import Backoff
from tests.test_broker import TClient, TWorker

#: The wall-clock time of the first broker's t=0.
T0 = 1_700_000_000.0

_mids = itertools.count(1)


def open_journal(path: Path, offset: float = T0, **kw: Any) -> SqliteJournal:
    journal = SqliteJournal(path, **kw)
    journal.clock_offset = offset
    return journal


def make_broker(journal: SqliteJournal, offset: float = T0, **kw: Any) -> Broker:
    config = BrokerConfig(
        ack_timeout=kw.pop("ack_timeout", 30.0),
        max_attempts=kw.pop("max_attempts", 3),
        retry_backoff=Backoff(base=1.0, factor=2.0, cap=60.0, jitter=0.0),
        **kw,
    )
    broker = Broker(config, rng=random.Random(1), journal=journal)
    broker.clock_offset = offset
    return broker


@pytest.fixture
def journal(tmp_path: Path):
    j = open_journal(tmp_path)
    j.open(now_wall=T0)
    yield j
    j.close()


def worker(broker: Broker, name: str = "w", window: int = 1, now: float = 0.0) -> TWorker:
    link = TWorker(name, print, patterns=("jobs.>",), window=window, group="g")
    link.send = link.out.append
    broker.worker_joined(link, now)
    return link


def client(name: str = "c") -> TClient:
    link = TClient(name, print)
    link.send = link.out.append
    return link


def submit(broker: Broker, c: TClient, job_id: str, now: float = 0.0, **kw: Any) -> int:
    mid = next(_mids)
    kw.setdefault("wait_for_worker", True)
    # (encoded, as the leader takes payloads from the wire: a restored job's payload is)
    payload = Encoded.of({"id": job_id})
    broker.submit(c, Submit(mid=mid, job_id=job_id, subject="jobs.a", payload=payload, **kw), now)
    return mid


def answer(broker: Broker, w: TWorker, job_id: str, now: float, ok: bool = True) -> None:
    broker.result(
        w,
        Result(mid=next(_mids), job_id=job_id, ok=ok, payload={"done": job_id} if ok else None,
               error_type=None if ok else "ValueError", error_message=None if ok else "boom"),
        now,
    )  # fmt: skip


def commit(broker: Broker, journal: SqliteJournal, now: float) -> None:
    """What the leader's writer task does: take, write (a thread there), release."""
    batch, held = journal.take(), broker.take_held()
    journal.write(batch)
    broker.release(held, now)


def assigns(w: TWorker) -> list[tuple[str, int]]:
    return [(m.job_id, m.attempt) for m in w.out if isinstance(m, Assign)]


def results(c: TClient) -> list[Result]:
    return [m for m in c.out if isinstance(m, Result)]


def state_in_file(journal: SqliteJournal, job_id: str) -> tuple[Any, ...] | None:
    assert journal._db is not None
    return journal._db.execute(
        "SELECT state, attempt FROM jobs WHERE job_id = ?", (job_id,)
    ).fetchone()


# --------------------------------------------------------------------------- held answers


def test_a_result_reaches_its_client_and_frees_the_slot_only_after_the_commit(journal):
    broker = make_broker(journal)
    w = worker(broker, window=1)
    c = client()
    mid1 = submit(broker, c, "j1")
    submit(broker, c, "j2")
    assert assigns(w) == [("j1", 1)]  # (a window of one: j2 waits)
    assert c.out == []  # a plain submit is answered by its result, nothing before
    commit(broker, journal, 0.0)
    assert state_in_file(journal, "j1") == ("assigned", 1)

    answer(broker, w, "j1", 1.0)
    assert c.out == []  # not yet written: not said
    assert (w.granted, w.held, w.window) == (1, 1, 0)  # the slot waits for the commit too
    assert assigns(w) == [("j1", 1)]  # so j2 is not sent yet
    assert broker.holding

    batch, held = journal.take(), broker.take_held()
    assert not broker.holding
    assert c.out == []  # taken is not written
    journal.write(batch)
    assert state_in_file(journal, "j1") == ("done", 1)
    assert c.out == []
    broker.release(held, 1.5)
    [result] = results(c)
    assert (result.cid, result.job_id, result.ok) == (mid1, "j1", True)
    assert decode_payload(result.payload) == {"done": "j1"}
    assert (w.granted, w.held, w.window) == (1, 0, 1)
    assert assigns(w) == [("j1", 1), ("j2", 1)]  # fed at once with its slot back


def test_a_result_that_came_after_the_take_waits_for_the_next_commit(journal):
    broker = make_broker(journal)
    w = worker(broker, window=2)
    c = client()
    submit(broker, c, "j1")
    submit(broker, c, "j2")
    commit(broker, journal, 0.0)
    answer(broker, w, "j1", 1.0)
    batch, held = journal.take(), broker.take_held()
    answer(broker, w, "j2", 1.1)  # while the commit of j1's batch is under way
    journal.write(batch)
    broker.release(held, 1.2)
    assert [r.job_id for r in results(c)] == ["j1"]
    assert state_in_file(journal, "j2") == ("assigned", 1)
    assert (w.held, w.window) == (1, 1)
    commit(broker, journal, 1.3)
    assert [r.job_id for r in results(c)] == ["j1", "j2"]
    assert state_in_file(journal, "j2") == ("done", 1)
    assert (w.held, w.window) == (0, 2)


def test_a_credit_change_while_a_slot_is_held_keeps_the_slot_counted(journal):
    broker = make_broker(journal)
    w = worker(broker, window=2)
    c = client()
    for j in ("j1", "j2", "j3", "j4"):
        submit(broker, c, j)
    answer(broker, w, "j1", 1.0)
    broker.set_window(w, 3, 1.0)
    assert (w.granted, w.held, w.window) == (3, 1, 2)
    assert [j for j, _ in assigns(w)] == ["j1", "j2", "j3"]
    commit(broker, journal, 1.0)
    assert (w.granted, w.held, w.window) == (3, 0, 3)
    assert [j for j, _ in assigns(w)] == ["j1", "j2", "j3", "j4"]


def test_an_enqueue_ack_waits_for_the_commit_of_the_job(journal):
    broker = make_broker(journal)
    c = client()
    mid = submit(broker, c, "e1", enqueue=True)
    assert c.out == []
    assert broker.jobs["e1"].state is JobState.QUEUED
    batch, held = journal.take(), broker.take_held()
    assert state_in_file(journal, "e1") is None
    journal.write(batch)
    assert state_in_file(journal, "e1") == ("queued", 0)
    assert c.out == []
    broker.release(held, 0.0)
    assert c.out == [Ack(mid=c.out[0].mid, cid=mid, job_id="e1")]
    # Enqueued again: acknowledged again (once the commit is), no second job.
    mid2 = submit(broker, c, "e1", enqueue=True)
    assert len(c.out) == 1
    commit(broker, journal, 0.0)
    assert [(m.cid, m.job_id) for m in c.out if isinstance(m, Ack)] == [(mid, "e1"), (mid2, "e1")]
    assert len(broker.jobs) == 1


def test_a_refusing_journal_answers_new_submits_busy_with_its_reason(journal):
    broker = make_broker(journal)
    c = client()
    journal.failed("journal /x/journal.sqlite3: database or disk is full: the disk is full")
    submit(broker, c, "j1", enqueue=True)
    [error] = [m for m in c.out if isinstance(m, Error)]
    assert error.code == ErrorCode.BUSY
    assert "the leader cannot write its journal" in error.message
    assert "disk is full" in error.message
    assert "j1" not in broker.jobs and not journal.dirty


# --------------------------------------------------------------------------- delays


def test_a_delayed_job_is_assigned_exactly_when_it_is_due(journal):
    broker = make_broker(journal)
    w = worker(broker, window=4)
    c = client()
    submit(broker, c, "d1", now=0.0, delay=10.0, enqueue=True)
    assert assigns(w) == []
    assert broker.jobs["d1"].state is JobState.RETRY_WAIT
    assert broker.next_deadline() == 10.0
    commit(broker, journal, 0.0)
    assert [m.job_id for m in c.out if isinstance(m, Ack)] == ["d1"]
    assert journal._db is not None
    assert journal._db.execute("SELECT state, retry_at FROM jobs").fetchall() == [
        ("retry_wait", T0 + 10.0)
    ]
    broker.handle_timer(9.999)
    assert assigns(w) == []
    broker.handle_timer(10.0)
    assert assigns(w) == [("d1", 1)]


def test_a_delayed_job_needs_no_worker_at_submit(journal):
    broker = make_broker(journal)
    c = client()
    submit(broker, c, "d1", delay=5.0, wait_for_worker=False, enqueue=True)
    commit(broker, journal, 0.0)
    assert [type(m) for m in c.out] == [Ack]


def test_the_max_queue_time_of_a_delayed_job_counts_from_when_it_is_due(journal):
    broker = make_broker(journal, max_queue_time=5.0)
    c = client()
    mid = submit(broker, c, "d1", delay=10.0)  # no worker serves it, ever
    broker.handle_timer(5.0)  # 5 s after the submit: not expired (it was not due)
    assert "d1" in broker.jobs
    assert broker.next_deadline() == 10.0
    broker.handle_timer(10.0)
    assert broker.jobs["d1"].state is JobState.QUEUED
    assert broker.next_deadline() == 15.0
    broker.handle_timer(14.999)
    commit(broker, journal, 14.999)
    assert c.out == [] and "d1" in broker.jobs
    broker.handle_timer(15.0)
    assert "d1" not in broker.jobs
    assert c.out == []  # the expiry too is said once written
    commit(broker, journal, 15.0)
    [error] = c.out
    assert isinstance(error, Error)
    assert (error.cid, error.code, error.job_id) == (mid, ErrorCode.TIMEOUT, "d1")
    assert "max_queue_time" in error.message
    assert state_in_file(journal, "d1") == ("expired", 0)


def test_a_delayed_job_keeps_its_due_time_across_a_restart(tmp_path):
    first = open_journal(tmp_path)
    first.open(now_wall=T0)
    broker = make_broker(first)
    submit(broker, client(), "d1", now=0.0, delay=10.0, enqueue=True)
    commit(broker, first, 0.0)
    first.close()
    # Started again 3 s later (wall clock), its own clock at 0 again.
    offset = T0 + 3.0
    second = open_journal(tmp_path, offset=offset)
    recovered = second.open(now_wall=offset)
    try:
        broker = make_broker(second, offset=offset)
        broker.restore(recovered, 0.0, offset)
        w = worker(broker, window=4)
        assert broker.next_deadline() == 7.0
        broker.handle_timer(6.999)
        assert assigns(w) == []
        broker.handle_timer(7.0)
        assert assigns(w) == [("d1", 1)]
    finally:
        second.close()


# --------------------------------------------------------------------------- recovery


def _leave_assigned(path: Path, max_attempts: int) -> None:
    """A journal whose job ``j1`` was held by a worker (attempt 1) when the leader died."""
    journal = open_journal(path)
    journal.open(now_wall=T0)
    broker = make_broker(journal)
    w = worker(broker)
    submit(broker, client(), "j1", max_attempts=max_attempts, enqueue=True)
    assert assigns(w) == [("j1", 1)]
    commit(broker, journal, 0.0)
    journal.close()  # (no more: as a kill -9 would leave it)


def test_a_job_held_on_its_last_attempt_when_the_leader_died_is_dead_lettered(tmp_path):
    _leave_assigned(tmp_path, max_attempts=1)
    offset = T0 + 5.0
    journal = open_journal(tmp_path, offset=offset)
    recovered = journal.open(now_wall=offset)
    assert [(r.job_id, r.state, r.attempt) for r in recovered.jobs] == [
        ("j1", JobState.ASSIGNED, 1)
    ]
    try:
        broker = make_broker(journal, offset=offset)
        broker.restore(recovered, 0.0, offset)
        w = worker(broker)
        assert "j1" not in broker.jobs
        assert assigns(w) == []
        [letter] = broker.retries.dead_letters
        assert (letter["job_id"], letter["attempts"], letter["error_type"]) == (
            "j1",
            1,
            "LeaderRestarted",
        )
        # Its outcome answers whoever asks again (the dedup store) ...
        stored = broker.finished.get("j1", 0.0)
        assert stored is not None and not stored.ok and stored.error_type == "LeaderRestarted"
        # ... and the dead letter is in the file for the next start.
        commit(broker, journal, 0.0)
        assert [r["job_id"] for r in journal.list_dead_letters(10)] == ["j1"]
        assert state_in_file(journal, "j1") == ("dead", 1)
    finally:
        journal.close()
    again = open_journal(tmp_path, offset=offset)
    recovered = again.open(now_wall=offset + 1.0)
    again.close()
    assert recovered.jobs == []
    assert [r["job_id"] for r in recovered.dead_letters] == ["j1"]


def test_a_job_held_with_attempts_left_is_redelivered_with_its_attempt_counted(tmp_path):
    _leave_assigned(tmp_path, max_attempts=3)
    offset = T0 + 5.0
    journal = open_journal(tmp_path, offset=offset)
    recovered = journal.open(now_wall=offset)
    try:
        broker = make_broker(journal, offset=offset)
        broker.restore(recovered, 0.0, offset)
        job = broker.jobs["j1"]
        assert (job.state, job.attempt) == (JobState.RETRY_WAIT, 1)
        assert job.last_error == (
            "LeaderRestarted",
            "the leader stopped while a worker held the job",
        )
        w = worker(broker)
        assert broker.next_deadline() == 1.0  # the backoff of a first failed attempt
        broker.handle_timer(0.999)
        assert assigns(w) == []
        broker.handle_timer(1.0)
        assert assigns(w) == [("j1", 2)]
        commit(broker, journal, 1.0)
        assert state_in_file(journal, "j1") == ("assigned", 2)
        # A client that submits the id again joins the job and gets its one result.
        c = client()
        mid = submit(broker, c, "j1", now=1.5, max_attempts=3)
        answer(broker, w, "j1", 2.0)
        commit(broker, journal, 2.0)
        [result] = results(c)
        assert (result.cid, result.ok, result.attempts) == (mid, True, 2)
    finally:
        journal.close()


def test_queued_jobs_and_results_come_back_after_a_restart(tmp_path):
    first = open_journal(tmp_path)
    first.open(now_wall=T0)
    broker = make_broker(first)
    c = client()
    submit(broker, c, "q1", enqueue=True)
    submit(broker, c, "q2", enqueue=True)
    w = worker(broker, window=1)  # takes q1
    answer(broker, w, "q1", 1.0)
    commit(broker, first, 1.0)
    first.close()
    offset = T0 + 2.0
    second = open_journal(tmp_path, offset=offset)
    recovered = second.open(now_wall=offset)
    try:
        broker = make_broker(second, offset=offset)
        broker.restore(recovered, 0.0, offset)
        assert set(broker.jobs) == {"q2"}
        stored = broker.finished.get("q1", 0.0)
        assert stored is not None and stored.ok
        assert decode_payload(stored.payload) == {"done": "q1"}
        w = worker(broker, window=4)
        assert assigns(w) == [("q2", 1)]
        # Resubmitting the finished one is answered from the store, once written.
        c = client()
        mid = submit(broker, c, "q1")
        assert results(c) == []
        commit(broker, second, 0.0)
        [result] = results(c)
        assert (result.cid, result.job_id, result.ok) == (mid, "q1", True)
    finally:
        second.close()
