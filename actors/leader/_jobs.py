"""The leader's job records and their states, as an explicit transition table.

A job moves ``queued -> assigned -> done``; a missed ack deadline, a Nack, a failure or a
worker that goes away sends it to ``retry_wait`` (then back to ``queued``) until its
attempts run out and it is ``dead``. A queued job whose client deadline passed is
``expired``. Every change goes through :meth:`JobRecord.move`, which checks the table and
the broker tells its journal (:mod:`actors.leader._journal`) of each change that matters
after a restart.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Callable
from typing import Any, NamedTuple, Protocol

import attrs


class JobState(enum.Enum):
    """Where a job is in its life."""

    QUEUED = "queued"  #: waiting in its subject's queue (or a sticky worker's backlog)
    ASSIGNED = "assigned"  #: sent to a worker, waiting for its Result
    RETRY_WAIT = "retry_wait"  #: waiting out a backoff delay before it is queued again
    DONE = "done"  #: finished (successfully, or failed at QoS 0); the result is stored
    DEAD = "dead"  #: out of attempts; published to the dead-letter subject
    EXPIRED = "expired"  #: its deadline passed before any worker took it
    CANCELLED = "cancelled"  #: a client cancelled it (a running one: once its worker stopped)


#: Allowed transitions. A late Result (from a worker whose ack deadline passed) may finish
#: a job that waits for its retry, or is queued again for it.
TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    JobState.QUEUED: frozenset(
        {JobState.ASSIGNED, JobState.DONE, JobState.EXPIRED, JobState.CANCELLED}
    ),
    JobState.ASSIGNED: frozenset(
        {JobState.DONE, JobState.RETRY_WAIT, JobState.DEAD, JobState.CANCELLED}
    ),
    JobState.RETRY_WAIT: frozenset(
        {JobState.QUEUED, JobState.DONE, JobState.DEAD, JobState.EXPIRED, JobState.CANCELLED}
    ),
    JobState.DONE: frozenset(),
    JobState.DEAD: frozenset(),
    JobState.EXPIRED: frozenset(),
    JobState.CANCELLED: frozenset(),
}

FINAL_STATES = frozenset({JobState.DONE, JobState.DEAD, JobState.EXPIRED, JobState.CANCELLED})

# The table again as bit masks on the members, for the per-job hot path: an Enum's hash
# is a Python-level call, so set and dict lookups keyed by states cost more than ``&``.
for _i, _state in enumerate(JobState):
    _state._bit = 1 << _i  # type: ignore[attr-defined]
for _state in JobState:
    _state._allowed = sum(1 << list(JobState).index(s) for s in TRANSITIONS[_state])  # type: ignore[attr-defined]
    #: True for the states a job never leaves (done, dead, expired).
    _state.final = _state in FINAL_STATES  # type: ignore[attr-defined]
del _i, _state


class IllegalTransition(RuntimeError):
    """A bug: code tried to move a job along a transition the table does not allow."""


#: The upper bounds (seconds, inclusive: Prometheus' ``le``) of the latency histograms'
#: buckets, from submit to result; one more bucket counts what is over the last (``+Inf``).
LATENCY_BUCKETS: tuple[float, ...] = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
    0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0,
)  # fmt: skip


def latency_counts() -> list[int]:
    """An empty latency histogram: a count per bucket of :data:`LATENCY_BUCKETS`, and
    one for ``+Inf``."""
    return [0] * (len(LATENCY_BUCKETS) + 1)


# What a job refers to, as the broker reaches it through the job. The links and queues
# (actors.leader._links) hold jobs, so they import this module and not the other way round:
# these describe them structurally, each by the members used through a job.


class Counters(Protocol):
    """Counters of finished and failed jobs (a subject's queue, a worker group's stats)."""

    done: int
    failed: int
    redelivered: int
    dead: int
    latency_total: float
    latency_max: float
    #: Finished jobs by latency bucket (see :data:`LATENCY_BUCKETS`).
    latency_counts: list[int]


class Holder(Protocol):
    """The worker a job is assigned to (a :class:`~actors.leader._links.WorkerLink`)."""

    group: str
    send: Callable[[Any], None]
    next_mid: Callable[[], int]
    inflight: dict[str, JobRecord]

    @property
    def stats(self) -> Counters: ...


class Submitter(Protocol):
    """A client that submitted a job or waits for it (a
    :class:`~actors.leader._links.ClientLink`)."""

    send: Callable[[Any], None]
    send_item: Callable[[list[Any]], None]
    next_mid: Callable[[], int]
    waiting: dict[str, None]
    jobs: int
    job_bytes: int


class Queue(Counters, Protocol):
    """A job's subject queue (a :class:`~actors.leader._links.SubjectQueue`)."""

    pending: deque[JobRecord]
    jobs: int
    job_bytes: int
    stale: int


@attrs.define(eq=False, slots=True)
class JobRecord:
    """A job the leader has accepted and not yet finished.

    Attributes:
      max_attempts: deliveries before dead-lettering (the submit's, else the leader's).
      waiters: ``(client link, cid)`` of every Submit waiting for this job's result; a
        duplicate submission while the job runs joins this list instead of running again.
      holders: workers holding this job unacknowledged (usually one; after an ack timeout
        the slow worker keeps its slot until it answers, while another attempt runs).
    """

    job_id: str
    subject: str
    payload: Any
    headers: dict[str, str]
    qos: int
    max_attempts: int
    submitted_at: float
    expires_at: float | None = None
    #: When the job, waiting for a worker, expires: ``max_queue_time`` after it began to
    #: wait, or ``expires_at`` if sooner (infinity: never).
    wait_deadline: float = float("inf")
    state: JobState = JobState.QUEUED
    attempt: int = 0
    waiters: list[tuple[Submitter, int]] = attrs.field(factory=list)
    worker: Holder | None = None
    assigned_at: float = 0.0
    ack_deadline: float = 0.0
    retry_at: float = 0.0
    last_error: tuple[str, str] | None = None
    #: the traceback text of the last failed attempt, when its worker sent one
    last_traceback: str | None = None
    #: The submit's own attempt limit (None: it named none, so a group's policy may apply).
    submitted_max_attempts: int | None = None
    #: Set when a client cancelled the job while a worker ran it: the worker's answer
    #: (its Nack, or an error) then ends the job as cancelled instead of retrying it.
    cancel_reason: str | None = None
    #: Bytes the job is charged in the queue limits (its payload, subject and headers as
    #: encoded, plus a fixed overhead for the record itself).
    size: int = 0
    #: The client whose submit created the job (its per-client limits count it).
    owner: Submitter | None = None
    #: Its subject's queue (its per-subject limits count it; a queue with unfinished jobs
    #: is never dropped, so this is the one in ``Broker.queues`` as long as the job runs).
    queue: Queue | None = None
    #: No worker served the subject when the job came: it waits out the leader's
    #: ``route_grace`` for one, and is answered ``no_route`` if none comes.
    awaiting_route: bool = False
    #: When a Progress of it was last forwarded to its clients.
    progress_at: float = float("-inf")
    #: The identity that submitted it (None without authentication): who may resubmit,
    #: read or cancel it, besides admins.
    identity: str | None = None
    #: Taken from a shared store (JetStream) that owns its retries: a failed attempt ends
    #: it here and is handed to the broker's ``lease_failed`` (see
    #: :meth:`Broker.lease <actors.leader._broker.Broker.lease>`).
    leased: bool = False

    def move(self, new: JobState) -> None:
        """Change state along an allowed transition."""
        old = self.state
        if not old._allowed & new._bit:  # type: ignore[attr-defined]  # TRANSITIONS, as masks
            raise IllegalTransition(f"job {self.job_id}: {old.value} -> {new.value} is not allowed")
        self.state = new


class StoredResult(NamedTuple):
    """A finished job's outcome, kept for the dedup window to answer resubmissions.

    A named tuple (immutable, and built once per job on the leader's hot path, where an
    attrs frozen class costs a ``object.__setattr__`` per field).
    """

    ok: bool
    payload: Any
    error_type: str | None
    error_message: str | None
    attempts: int
    #: for a failure, the remote traceback's text (if the worker sent one)
    traceback: str | None = None
    #: the job's subject and payload, to tell a resubmission of the same job (answered
    #: with this result) from another job under the same id (answered ``conflict``)
    subject: str | None = None
    request: Any = None
    #: a failure that is the job's outcome by the worker's word (not retried): the
    #: client gets JobFailed rather than DeadLettered
    final: bool = False
    #: the identity that submitted the job (None without authentication)
    identity: str | None = None
    #: the name of the worker whose answer (or failed attempt, or cancellation) ended it,
    #: None when no worker ran it
    worker: str | None = None
    #: when it was submitted, its last attempt began (None: no attempt) and it finished,
    #: on the leader's trio clock (None: not known, as after a restart)
    submitted_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None


class CancelledResult(StoredResult):
    """The stored result of a job a client cancelled: its Result, to the waiting clients
    and to later resubmissions and queries, carries ``error_code`` ``cancelled``. The
    type is the mark, so that a worker's failure (whatever its ``error_type``) never
    carries it, and the results of other jobs cost nothing more."""

    __slots__ = ()


class DeadResult(StoredResult):
    """The stored result of a job that ran out of attempts (its dead letter was kept):
    a failure that an operator's lookup shows as ``dead``, and that cannot be cancelled
    (it is retried from the dead letters). The type is the mark, as with
    :class:`CancelledResult`."""

    __slots__ = ()
