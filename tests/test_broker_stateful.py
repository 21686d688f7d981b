"""The broker under arbitrary sequences of messages, sans-I/O (a Hypothesis state machine).

Several clients and workers come and go, submit (new and repeated job ids, QoS 0 and 1,
timeouts, attempt limits), cancel, answer (results for jobs a worker holds and for jobs it
does not, Nacks, Progress, Acks), change their credit and subscribe while time advances,
past ack deadlines, backoffs and queue deadlines. After every step the invariants below
must hold; they are written against the broker's public behaviour (what it sends, what
its links hold, its counters), so that new limits and parameters only need a line in
:func:`make_config` or a rule.

- Nothing the broker is fed raises.
- Credit: a worker is never sent an Assign that makes its unanswered jobs exceed its
  window at that moment (a window that shrinks below what a worker holds takes nothing
  away: the worker just gets nothing new until it is under the window again).
- Every accepted submit (one not answered at once with a Result or an Error) is waiting
  for exactly one job, which is in exactly one place: queued (once, in its subject's queue
  or a sticky backlog), waiting out a backoff, or assigned to exactly one connected worker.
  Every final answer (Result, or Error with the submit's ``cid``) a client gets answers one
  of its open submits, and each submit gets at most one.
- The broker's counters of the jobs accepted and not finished (``job_bytes``, each
  subject's and each client's ``jobs`` and ``job_bytes``) and its statistics of waiting
  jobs equal a recount from its jobs.
- Each queue lists, once each, the connected workers whose patterns match its subject, and
  each worker the queues that list it; no job waits in a queue or a sticky backlog while
  a worker of it has room, and a queue with jobs waiting is in each of its workers'
  ``hungry`` set (what a worker visits when it has room again).
- Time: the timer the leader keeps (armed at :meth:`Broker.next_deadline` after
  :meth:`Broker.handle_timer`, brought forward to :meth:`Broker.take_soonest` after every
  other call) is never later than the next deadline; after ``handle_timer(now)`` nothing
  is due at ``now`` any more; a QoS 0 job is assigned at most once, a QoS 1 job at most
  its attempt limit.
- Peers that left are sent nothing more.

Three broker bugs it found (now fixed) have regression tests at the end: a job waiting out
a backoff expired late; Progress for an attempt that timed out could delay a worker's other
ack deadlines; a resubmission of a payload holding a NaN was taken for a conflict.
"""

from __future__ import annotations

import itertools
import math
import random
from typing import Any

import attrs
import cbor2
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from actors.leader import Broker, BrokerConfig, JobState
from actors.leader._links import ClientLink, WorkerLink
from protocol import (
    Ack,
    Assign,
    Cancel,
    Error,
    Nack,
    Progress,
    Publish,
    Result,
    SubjectIndex,
    Submit,
    Subscribe,
    Unsubscribe,
    message_of,
)
from runtime import Backoff

JOB_IDS = [f"j{i}" for i in range(6)]
SUBJECTS = ["jobs.a", "jobs.b", "other.x"]
#: A job id names one job: resubmissions repeat its subject and payload (a submit that
#: does not is answered ``conflict``; the machine sends a few of those too).
SUBJECT_OF = {job_id: SUBJECTS[i % 3] for i, job_id in enumerate(JOB_IDS)}
PAYLOAD_OF = {job_id: "x" * 600 if i >= 4 else [i, 0.5] for i, job_id in enumerate(JOB_IDS)}
PATTERNS = [("jobs.>",), ("jobs.a",), ("jobs.*", "other.x"), ("other.>",), ("nothing",)]
POLICIES = ["round_robin", "least_loaded", "sticky"]
#: Mids of the machine's publishes and subscribes (answers to them are not submit answers).
OTHER_MIDS = 10**6
ACTIVE = (JobState.QUEUED, JobState.ASSIGNED, JobState.RETRY_WAIT)
WAITING = (JobState.QUEUED, JobState.RETRY_WAIT)


def make_config(**choices: Any) -> BrokerConfig:
    """A leader's settings for one run: small limits, so that every refusal happens."""
    return BrokerConfig(
        ack_timeout=10.0,
        max_attempts=3,
        retry_backoff=Backoff(base=1.0, factor=2.0, cap=8.0, jitter=choices.pop("jitter")),
        dedup_window=30.0,
        **choices,
    )


@attrs.define(eq=False)
class Peer:
    """What one link was sent, and what it must not be sent."""

    out: list[Any] = attrs.field(factory=list)
    gone_at: int | None = None  # len(out) when it left
    problems: list[str] = attrs.field(factory=list)


@attrs.define(eq=False)
class TClient(ClientLink):
    peer: Peer = attrs.field(factory=Peer)


@attrs.define(eq=False)
class TWorker(WorkerLink):
    peer: Peer = attrs.field(factory=Peer)
    credit: int = 0  # what it last granted (the broker may clamp it)
    #: Jobs it was assigned and has not answered (Result or Nack). A job is held once
    #: by its id: an attempt that timed out and a new attempt of the same job on the same
    #: worker are one job (the worker's runner answers both with one task).
    unanswered: set[str] = attrs.field(factory=set)

    def answered(self, job_id: str) -> None:
        self.unanswered.discard(job_id)


def client_link(name: str) -> TClient:
    link = TClient(name, print)
    link.send = link.peer.out.append
    link.send_item = lambda item: link.send(message_of(item, decode_payloads=True))
    return link


def worker_link(
    name: str, window: int, patterns: tuple[str, ...], policy: str, mode: str
) -> TWorker:
    link = TWorker(name, print, patterns=patterns, window=window, group=f"g-{policy}-{mode}",
                   policy=policy, mode=mode, credit=window)  # fmt: skip

    def send(message: Any) -> None:
        if type(message) is Assign:
            link.unanswered.add(message.job_id)
            held = len(link.unanswered)
            if held > link.window:
                link.peer.problems.append(
                    f"Assign {message.job_id} to {name}: {held} unanswered > window {link.window}"
                )
        link.peer.out.append(message)

    link.send = send
    link.send_item = lambda item: send(message_of(item, decode_payloads=True))
    return link


def is_final(message: Any) -> bool:
    """A message that ends a submit: its Result, or an Error answering it."""
    return type(message) in (Result, Error) and message.cid is not None and message.cid < OTHER_MIDS


#: Which connected client or worker a rule acts on (modulo how many there are), or which
#: of the jobs a worker holds.
picks = st.integers(0, 7)


class BrokerMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0
        self.armed = math.inf  # the leader's timer
        self.mids = itertools.count(1)
        self.other_mids = itertools.count(OTHER_MIDS)
        self.names = itertools.count(1)
        self.links: list[TClient | TWorker] = []  # every link, gone ones too
        self.clients: list[TClient] = []  # connected ones
        self.workers: list[TWorker] = []
        self.seen: dict[int, int] = {}  # id(link) -> messages already looked at
        #: (client, mid) -> job id, for submits not answered yet
        self.open: dict[tuple[TClient, int], str] = {}
        self.problems: list[str] = []
        #: id(job record) -> (record, Assigns of it)
        self.assigned: dict[int, tuple[Any, int]] = {}

    # ------------------------------------------------------------------ set-up

    @initialize(
        max_queued=st.sampled_from([3, 6, 100]),
        per_subject=st.sampled_from([2, 4, 100]),
        per_client=st.sampled_from([2, 3, 100]),
        queued_bytes=st.sampled_from([900, 2000, 10**6]),
        max_queue_time=st.sampled_from([None, 25.0, 120.0]),
        route_grace=st.sampled_from([0.0, 3.0]),
        max_window=st.sampled_from([2, 100]),
        jitter=st.sampled_from([0.0, 0.5]),
        first_workers=st.lists(st.tuples(st.integers(0, 4), st.sampled_from(PATTERNS)), max_size=2),
    )
    def start(self, max_queued, per_subject, per_client, queued_bytes, max_queue_time, route_grace,
              max_window, jitter, first_workers):  # fmt: skip
        config = make_config(
            max_queued=max_queued, max_queued_per_subject=per_subject, max_queued_per_client=per_client,
            max_queued_bytes=queued_bytes, max_queued_bytes_per_subject=queued_bytes,
            max_queued_bytes_per_client=queued_bytes, max_queue_time=max_queue_time,
            route_grace=route_grace, max_window=max_window, jitter=jitter,
        )  # fmt: skip
        self.broker = Broker(config, rng=random.Random(0))
        for _ in range(2):
            self.client_comes()
        for window, patterns in first_workers:
            self.worker_comes(window, patterns, "round_robin", "round_robin")

    def call(self, method: str, *args: Any) -> None:
        """Call the broker as the leader does, then bring the leader's timer forward."""
        getattr(self.broker, method)(*args)
        self.armed = min(self.armed, self.broker.take_soonest())
        self.collect()

    def client(self, pick: int) -> TClient | None:
        return self.clients[pick % len(self.clients)] if self.clients else None

    def worker(self, pick: int) -> TWorker | None:
        return self.workers[pick % len(self.workers)] if self.workers else None

    # ------------------------------------------------------------------ peers

    @rule()
    def client_comes(self) -> None:
        if len(self.clients) < 3:
            link = client_link(f"c{next(self.names)}")
            self.links.append(link)
            self.clients.append(link)

    @rule(pick=picks)
    def client_leaves(self, pick: int) -> None:
        client = self.client(pick)
        if client is not None:
            self.clients.remove(client)
            self.call("client_left", client)
            client.peer.gone_at = len(client.peer.out)
            for key in [k for k in self.open if k[0] is client]:
                del self.open[key]

    @rule(
        window=st.integers(0, 4),
        patterns=st.sampled_from(PATTERNS),
        policy=st.sampled_from(POLICIES),
        mode=st.sampled_from(["round_robin"] * 4 + ["broadcast"]),
    )
    def worker_comes(self, window: int, patterns: tuple[str, ...], policy: str, mode: str) -> None:
        if len(self.workers) < 4:
            link = worker_link(f"w{next(self.names)}", window, patterns, policy, mode)
            self.links.append(link)
            self.workers.append(link)
            self.call("worker_joined", link, self.now)

    @rule(pick=picks)
    def worker_leaves(self, pick: int) -> None:
        worker = self.worker(pick)
        if worker is not None:
            self.workers.remove(worker)
            self.call("worker_left", worker, self.now)
            worker.peer.gone_at = len(worker.peer.out)

    @rule(pick=picks, credit=st.integers(0, 5))
    def credit(self, pick: int, credit: int) -> None:
        worker = self.worker(pick)
        if worker is not None:
            worker.credit = credit
            self.call("set_window", worker, credit, self.now)

    # ------------------------------------------------------------------ clients' messages

    @rule(
        pick=picks,
        job_id=st.sampled_from(JOB_IDS),
        qos=st.integers(0, 1),
        timeout=st.sampled_from([None, None, 0.0, 2.0, 15.0]),
        max_attempts=st.sampled_from([None, 1, 2, 5]),
        wait=st.booleans(),
        key=st.sampled_from([None, "k1", "k2"]),
        other_subject=st.sampled_from([None] * 6 + SUBJECTS),
    )
    def submit(self, pick, job_id, qos, timeout, max_attempts, wait, key, other_subject):
        client = self.client(pick)
        if client is None:
            return
        mid = next(self.mids)
        self.open[(client, mid)] = job_id
        message = Submit(
            mid=mid, job_id=job_id, subject=other_subject or SUBJECT_OF[job_id], payload=PAYLOAD_OF[job_id],
            headers={} if key is None else {"key": key}, qos=qos, timeout=timeout,
            max_attempts=max_attempts, wait_for_worker=wait,
        )  # fmt: skip
        same = self.same_job_known(message)
        before = len(client.peer.out)
        self.call("submit", client, message, self.now)
        if same and any(
            type(m) is Error and m.code == "conflict" for m in client.peer.out[before:]
        ):
            self.problems.append(f"{message!r} repeats its job and was answered conflict")

    def same_job_known(self, message: Submit) -> bool:
        """Whether the broker runs, or has the result of, a job of this id with this
        subject and payload (equal as CBOR: what the client sent twice)."""
        job = self.broker.jobs.get(message.job_id)
        if job is not None:
            return job.subject == message.subject and cbor2.dumps(job.payload) == cbor2.dumps(
                message.payload
            )
        stored = self.broker.finished.get(message.job_id, self.now)
        request = getattr(stored, "request", None)
        return (
            stored is not None
            and getattr(stored, "subject", None) == message.subject
            and (cbor2.dumps(request) == cbor2.dumps(message.payload))
        )

    @rule(
        pick=picks,
        jobs=st.lists(
            st.tuples(st.sampled_from(JOB_IDS), st.integers(0, 1)), min_size=2, max_size=5
        ),
    )
    def submit_several(self, pick: int, jobs: list[tuple[str, int]]) -> None:
        """A burst of plain submits (one rule, so that runs hold more jobs)."""
        for job_id, qos in jobs:
            self.submit(pick, job_id, qos, None, None, True, None, None)

    @rule(pick=picks, job_id=st.sampled_from(JOB_IDS))
    def cancel(self, pick: int, job_id: str) -> None:
        client = self.client(pick)
        if client is not None:
            self.call(
                "cancel",
                client,
                Cancel(mid=next(self.other_mids), job_id=job_id, reason="test"),
                self.now,
            )

    @rule(pick=picks, sid=st.integers(0, 2), pattern=st.sampled_from(["jobs.>", "$dlq.>", "other.*", ">"]),
          queue=st.sampled_from([None, "q"]))  # fmt: skip
    def subscribe(self, pick, sid, pattern, queue):
        client = self.client(pick)
        if client is not None:
            message = Subscribe(mid=next(self.other_mids), sid=sid, pattern=pattern, queue=queue)
            self.call("subscribe", client, message, self.now)

    @rule(pick=picks, sid=st.integers(0, 2))
    def unsubscribe(self, pick: int, sid: int) -> None:
        client = self.client(pick)
        if client is not None:
            self.call("unsubscribe", client, Unsubscribe(mid=next(self.other_mids), sid=sid))

    @rule(
        pick=picks, subject=st.sampled_from(SUBJECTS), retain=st.booleans(), qos=st.integers(0, 1)
    )
    def publish(self, pick, subject, retain, qos):
        client = self.client(pick)
        if client is not None:
            message = Publish(
                mid=next(self.other_mids), subject=subject, payload=1, retain=retain, qos=qos
            )
            self.call("publish", client, message, self.now)

    # ------------------------------------------------------------------ workers' messages

    @staticmethod
    def held(worker: TWorker, job: int) -> str | None:
        """The ``job``-th job id ``worker`` holds (None if it holds none)."""
        ids = list(worker.inflight)
        return ids[job % len(ids)] if ids else None

    @rule(pick=picks, job=picks, ok=st.booleans(), final=st.booleans())
    def result_for_a_held_job(self, pick, job, ok, final):
        worker = self.worker(pick)
        job_id = worker and self.held(worker, job)
        if job_id is not None:
            self.answer(worker, job_id, ok, final)

    @rule(ok=st.booleans())
    def every_worker_answers_its_oldest_job(self, ok: bool) -> None:
        for worker in list(self.workers):
            job_id = self.held(worker, 0)
            if job_id is not None:
                self.answer(worker, job_id, ok, False)

    @rule(pick=picks, job_id=st.sampled_from(JOB_IDS), ok=st.booleans())
    def result_for_any_job(self, pick: int, job_id: str, ok: bool) -> None:
        worker = self.worker(pick)
        if worker is not None:
            self.answer(worker, job_id, ok, False)

    def answer(self, worker: TWorker, job_id: str, ok: bool, final: bool) -> None:
        message = Result(
            mid=next(self.other_mids), job_id=job_id, ok=ok, payload=49 if ok else None,
            error_type=None if ok else "ValueError", error_message=None if ok else "boom", final=final,
        )  # fmt: skip
        worker.answered(job_id)
        self.call("result", worker, message, self.now)

    @rule(pick=picks, job=picks, any_id=st.sampled_from([None, *JOB_IDS]),
          delay=st.sampled_from([None, 0.0, 1.5, 40.0]))  # fmt: skip
    def nack(self, pick, job, any_id, delay):
        worker = self.worker(pick)
        job_id = any_id or (worker and self.held(worker, job))
        if worker is not None and job_id is not None:
            worker.answered(job_id)
            self.call(
                "nack",
                worker,
                Nack(mid=next(self.other_mids), job_id=job_id, delay=delay),
                self.now,
            )

    @rule(pick=picks, job=picks, as_ack=st.booleans())
    def progress(self, pick: int, job: int, as_ack: bool) -> None:
        worker = self.worker(pick)
        if worker is None:
            return
        job_id = self.held(worker, job) or JOB_IDS[job % len(JOB_IDS)]
        if as_ack:
            self.call("ack", worker, Ack(mid=next(self.other_mids), job_id=job_id), self.now)
        else:
            self.call(
                "progress",
                worker,
                Progress(mid=next(self.other_mids), job_id=job_id, fraction=0.5),
                self.now,
            )

    # ------------------------------------------------------------------ time

    @rule(seconds=st.sampled_from([0.5, 1.0, 3.0, 11.0, 31.0]))
    def time_passes(self, seconds: float) -> None:
        """Time passes; the leader's timer fires if it is due (as its timer task would)."""
        self.now += seconds
        if self.armed <= self.now:
            self.fire()

    @rule()
    def timer_fires_at_next_deadline(self) -> None:
        deadline = self.broker.next_deadline()
        if math.isfinite(deadline):
            self.now = max(self.now, deadline)
        self.fire()

    def fire(self) -> None:
        """What the leader's timer task does when it wakes up."""
        self.broker.handle_timer(self.now)
        self.broker.take_soonest()
        self.armed = self.broker.next_deadline()
        due = self.due()
        if due <= self.now:
            self.problems.append(f"after handle_timer({self.now}) something is still due at {due}")
        self.collect()

    def due(self) -> float:
        """When something next has to happen, from the jobs themselves: an ack deadline of
        a job its worker holds, the end of a backoff, a queued job's wait deadline."""
        times = [math.inf]
        for job in self.broker.jobs.values():
            if job.state is JobState.ASSIGNED:
                times.append(job.worker.deadlines.get(job.job_id, math.inf))
            elif job.state is JobState.RETRY_WAIT:
                times.append(min(job.retry_at, job.wait_deadline))
            else:
                times.append(job.wait_deadline)
        return min(times)

    # ------------------------------------------------------------------ bookkeeping

    def collect(self) -> None:
        """Take in what the broker sent since the last look: match final answers to the
        open submits, count Assigns."""
        for link in self.links:
            out = link.peer.out
            start = self.seen.get(id(link), 0)
            self.seen[id(link)] = len(out)
            if link.peer.gone_at is not None and len(out) > link.peer.gone_at:
                self.problems.append(
                    f"{link.name} was sent {out[link.peer.gone_at :]} after it left"
                )
            for message in out[start:]:
                if type(link) is TClient and is_final(message):
                    if self.open.pop((link, message.cid), None) is None:
                        self.problems.append(
                            f"{link.name} got a second or unasked-for answer {message!r}"
                        )
                elif type(message) is Assign:
                    job = self.broker.jobs.get(message.job_id)
                    record, count = self.assigned.get(id(job), (job, 0))
                    self.assigned[id(job)] = (record, count + 1)

    # ------------------------------------------------------------------ invariants

    @invariant()
    def no_problems_seen(self) -> None:
        problems = [p for link in self.links for p in link.peer.problems] + self.problems
        assert not problems, problems

    @invariant()
    def each_open_submit_waits_for_its_active_job(self) -> None:
        jobs = self.broker.jobs
        waiting = {(client, cid) for job in jobs.values() for client, cid in job.waiters}
        assert set(self.open) == waiting, (self.open, waiting)
        for job_id in self.open.values():
            assert job_id in jobs and jobs[job_id].state in ACTIVE

    @invariant()
    def each_active_job_is_in_exactly_one_place(self) -> None:
        broker = self.broker
        connected = self.workers
        in_queues = [
            job
            for queue in broker.queues.values()
            for job in queue.pending
            if job.state is JobState.QUEUED
        ]
        in_queues += [job for w in connected for job in w.backlog if job.state is JobState.QUEUED]
        in_retry = [
            entry[-1]
            for entry in broker.retries._retry_heap
            if entry[-1].state is JobState.RETRY_WAIT
        ]
        for job_id, job in broker.jobs.items():
            assert job.job_id == job_id and job.state in ACTIVE, job
            places = sum(j is job for j in in_queues) + sum(j is job for j in in_retry)
            if job.state is JobState.ASSIGNED:
                assert job.worker in connected, job
                assert job.worker.inflight.get(job_id) is job, job
                assert places == 0, job
            else:
                assert job.worker is None, job
                assert places == 1, (job, places)
        for worker in connected:
            for job_id, job in worker.inflight.items():
                assert job.job_id == job_id
            assert set(worker.deadlines) <= set(worker.inflight)

    @invariant()
    def counters_agree_with_a_recount(self) -> None:
        broker = self.broker
        active = list(broker.jobs.values())
        assert broker.job_bytes == sum(job.size for job in active)
        for subject, queue in broker.queues.items():
            mine = [job for job in active if job.subject == subject]
            assert (queue.jobs, queue.job_bytes) == (len(mine), sum(j.size for j in mine)), subject
        for link in self.links:
            if type(link) is TClient:
                mine = [job for job in active if job.owner is link]
                assert (link.jobs, link.job_bytes) == (len(mine), sum(j.size for j in mine)), (
                    link.name
                )
        waiting = [job for job in active if job.state in WAITING]
        stats = broker.stats()
        assert stats["waiting"] == len(waiting)
        for subject, counters in stats["subjects"].items():
            assert counters["queued"] == sum(job.subject == subject for job in waiting), subject

    @invariant()
    def each_queue_lists_the_workers_that_serve_it_once(self) -> None:
        broker = self.broker
        index = SubjectIndex()
        for worker in self.workers:
            if worker.mode != "broadcast":
                for pattern in worker.patterns:
                    index.add(pattern, worker)
        for subject, queue in broker.queues.items():
            assert len(set(queue.candidates)) == len(queue.candidates), subject
            assert set(queue.candidates) == set(index.match(subject)), subject
        for worker in self.workers:
            assert list(worker.queues) == [
                q for q in broker.queues.values() if worker in q.candidates
            ]

    @invariant()
    def no_job_waits_while_a_worker_of_it_has_room(self) -> None:
        for queue in self.broker.queues.values():
            if any(job.state is JobState.QUEUED for job in queue.pending):
                for worker in queue.candidates:
                    assert len(worker.inflight) >= worker.window, (queue.subject, worker.name)
                    assert queue in worker.hungry, (queue.subject, worker.name)
        for worker in self.workers:
            if any(job.state is JobState.QUEUED for job in worker.backlog):
                assert len(worker.inflight) >= worker.window, worker.name

    @invariant()
    def the_leaders_timer_is_never_late(self) -> None:
        assert self.armed <= self.due()

    @invariant()
    def deliveries_stay_within_the_attempt_limits(self) -> None:
        config = self.broker.config
        for job, count in self.assigned.values():
            if job is None:
                continue
            limit = 1 if job.qos == 0 else (job.submitted_max_attempts or config.max_attempts)
            assert count <= limit, (job, count)

    @invariant()
    def windows_are_the_credit_clamped(self) -> None:
        for worker in self.workers:
            assert worker.window == min(worker.credit, self.broker.config.max_window)


TestBrokerMachine = BrokerMachine.TestCase


# ---------------------------------------------------------------------- bugs it found (fixed)


def test_a_job_nacked_with_a_long_delay_expires_at_max_queue_time() -> None:
    # BrokerConfig.max_queue_time: "seconds a job may wait for a worker (queued, or waiting
    # out a retry backoff) before it expires and its clients get a timeout error".
    broker = Broker(make_config(jitter=0.0, max_queue_time=25.0), rng=random.Random(0))
    worker = worker_link("w", 1, ("jobs.>",), "round_robin", "round_robin")
    broker.worker_joined(worker, 0.0)
    client = client_link("c")
    broker.submit(client, Submit(mid=1, job_id="j0", subject="jobs.a", payload=1), 0.0)
    broker.nack(worker, Nack(mid=1, job_id="j0", delay=1000.0), 1.0)  # waits from t=1
    assert broker.next_deadline() <= 26.0
    broker.handle_timer(26.0)
    assert [m.code for m in client.peer.out if type(m) is Error] == ["timeout"]
    assert broker.jobs == {} and broker.job_bytes == 0 and (client.jobs, client.job_bytes) == (0, 0)


def test_progress_for_a_timed_out_attempt_does_not_delay_other_ack_deadlines() -> None:
    # Found by TestBrokerMachine (the_leaders_timer_is_never_late): ack_timeout 10 s, backoff 1 s.
    broker = Broker(make_config(jitter=0.0), rng=random.Random(0))
    worker = worker_link("w", 3, ("jobs.>",), "round_robin", "round_robin")
    broker.worker_joined(worker, 0.0)
    client = client_link("c")
    broker.submit(client, Submit(mid=1, job_id="a", subject="jobs.a", payload=1), 0.0)  # due at 10
    broker.handle_timer(10.0)  # a times out (retried at 11); the worker keeps its slot
    broker.progress(worker, Progress(mid=1, job_id="a"), 10.0)  # ... and reports on it
    broker.submit(client, Submit(mid=2, job_id="b", subject="jobs.a", payload=1), 10.0)  # due at 20
    broker.handle_timer(11.0)  # a is assigned to the same worker again: due at 21
    assert broker.next_deadline() == 20.0
    broker.handle_timer(20.0)
    assert broker.jobs["b"].state is JobState.RETRY_WAIT  # b's ack timeout, on time


def test_a_resubmission_with_a_nan_in_its_payload_is_not_a_conflict() -> None:
    # Found while fuzzing (the leader answers conflict to resubmissions of NaN payloads).
    broker = Broker(make_config(jitter=0.0), rng=random.Random(0))
    worker = worker_link("w", 1, ("jobs.>",), "round_robin", "round_robin")
    broker.worker_joined(worker, 0.0)
    client = client_link("c")

    def submit(mid: int) -> Submit:  # as decoded from the wire: a new NaN object each time
        return Submit(mid=mid, job_id="j", subject="jobs.a", payload={"x": float("nan")})

    broker.submit(client, submit(1), 0.0)
    broker.submit(client, submit(2), 0.0)  # joins the running job
    broker.result(worker, Result(mid=1, job_id="j", ok=True, payload=1), 1.0)
    broker.submit(client, submit(3), 2.0)  # gets the stored result
    assert [(type(m).__name__, m.cid) for m in client.peer.out] == [
        ("Result", 1),
        ("Result", 2),
        ("Result", 3),
    ]
