"""The broker's view of connected peers: workers, clients, subscriptions and queues.

A link holds a ``send`` callable (the connection's ``send_nowait`` in the leader, a list's
``append`` in tests), so the broker itself does no I/O.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import attrs

from protocol import GroupMode, RoutingPolicy, message_of

if TYPE_CHECKING:
    from ._jobs import JobRecord

#: Routing policies inside a worker group (the protocol's :class:`~protocol.RoutingPolicy`).
POLICIES = frozenset(policy.value for policy in RoutingPolicy)
#: Group modes (:class:`~protocol.GroupMode`): ``round_robin`` takes jobs (one worker each);
#: ``broadcast`` receives every published message (each member gets a copy), no jobs.
MODES = frozenset(mode.value for mode in GroupMode)
#: The header whose value routes a job in a ``sticky`` group.
STICKY_HEADER = "key"


@attrs.define(eq=False)
class Link:
    """A connected peer."""

    name: str
    send: Callable[[Any], None]
    #: Returns the next message id for this peer's connection.
    next_mid: Callable[[], int] = attrs.field(
        kw_only=True, factory=lambda: itertools.count(1).__next__
    )
    #: Sends a message given as its bundle item (``Result.item(...)``); by default it
    #: builds the message and calls ``send``.
    send_item: Callable[[list[Any]], None] = attrs.field(kw_only=True, default=None)

    def __attrs_post_init__(self) -> None:
        if self.send_item is None:
            self.send_item = lambda item: self.send(message_of(item))


@attrs.define(eq=False)
class GroupStats:
    """Counters of one worker group, kept while its workers come and go.

    ``done``/``failed`` count final answers from the group's workers (a failure at QoS 0,
    or one that used up the attempts); ``redelivered`` the failed attempts that were retried
    (an error, a Nack, a missed ack deadline, a worker lost); ``dead`` the jobs whose last
    attempt failed there. Latency is from submit to result, of jobs finished there.
    """

    done: int = 0
    failed: int = 0
    redelivered: int = 0
    dead: int = 0
    latency_total: float = 0.0
    latency_max: float = 0.0


@attrs.define(eq=False)
class WorkerLink(Link):
    """A worker: its patterns, credit window and the jobs it holds unacknowledged."""

    patterns: tuple[str, ...] = ()
    window: int = 0
    group: str = ""
    policy: str = "round_robin"
    mode: str = "round_robin"
    #: job id -> record, in assignment order (so the first one has the earliest deadline).
    inflight: dict[str, JobRecord] = attrs.field(factory=dict)
    #: ack deadline by job id, parallel to ``inflight``.
    deadlines: dict[str, float] = attrs.field(factory=dict)
    #: sticky jobs routed to this worker that wait for a free slot.
    backlog: deque[JobRecord] = attrs.field(factory=deque)
    queues: list[SubjectQueue] = attrs.field(factory=list)
    assigned_total: int = 0
    done_total: int = 0
    #: The counters of this worker's group (set by the broker when the worker joins).
    stats: GroupStats = attrs.field(factory=GroupStats)

    @property
    def free(self) -> int:
        """Jobs this worker may still be sent."""
        return self.window - len(self.inflight)


@attrs.define(eq=False)
class ClientLink(Link):
    """A client (or an observer): the submits waiting on it and its subscriptions."""

    #: sid -> subscription
    subscriptions: dict[int, Subscription] = attrs.field(factory=dict)
    #: job ids this client waits on (for clean-up when it goes away)
    waiting: dict[str, None] = attrs.field(factory=dict)
    #: jobs this client submitted that wait for a worker (queued or waiting out a
    #: backoff), and their bytes: what its per-client queue limits count.
    queued: int = 0
    queued_bytes: int = 0
    #: when it was last sent the statistics (a Query), to answer it at most so often
    stats_at: float = float("-inf")


@attrs.define(eq=False)
class Subscription:
    """A client's subscription to a pattern (optionally in a queue group)."""

    link: ClientLink
    sid: int
    pattern: str
    queue: str | None = None


@attrs.define(eq=False)
class SubjectQueue:
    """The pending jobs of one subject and the workers that can take them."""

    subject: str
    pending: deque[JobRecord] = attrs.field(factory=deque)
    candidates: list[WorkerLink] = attrs.field(factory=list)
    rr: int = 0
    #: Jobs of this subject that wait for a worker (queued, in a sticky backlog or waiting
    #: out a backoff), and their bytes: what the per-subject queue limits count.
    queued: int = 0
    queued_bytes: int = 0
    #: Entries of ``pending`` that left it early (cancelled, expired, answered by a late
    #: result): skipped when they reach the front, compacted when they are many.
    stale: int = 0
    #: Jobs the worker whose turn it is (``rr``) took in this turn.
    turn: int = 0
    run: int = 0
    # statistics
    submitted: int = 0
    done: int = 0
    failed: int = 0
    redelivered: int = 0
    dead: int = 0
    expired: int = 0
    cancelled: int = 0
    latency_total: float = 0.0
    latency_max: float = 0.0

    @property
    def policy(self) -> str:
        return self.candidates[0].policy if self.candidates else "round_robin"
