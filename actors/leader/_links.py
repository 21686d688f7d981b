"""The broker's view of connected peers: workers, clients, subscriptions and queues (and
:class:`PatternSet`, which tells the queues a joining worker serves).

A link holds a ``send`` callable (the connection's ``send_nowait`` in the leader, a list's
``append`` in tests), so the broker itself does no I/O.
"""

from __future__ import annotations

import itertools
import math
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import attrs

from protocol import Error, GroupMode, RoutingPolicy, message_of

from ._jobs import latency_counts

if TYPE_CHECKING:
    from ._jobs import JobRecord

#: The header whose value routes a job of a ``sticky`` subject.
STICKY_HEADER = "key"
#: Characters of a peer's ``host`` (in its Hello's ``meta``) kept at most: a longer one
#: is dropped (a DNS name has 253 at most).
MAX_META_HOST = 255
#: The largest ``pid`` kept from a Hello's ``meta`` (Linux's limit is 2**22; others less
#: than 2**32).
MAX_META_PID = 2**32


def sanitized_meta(meta: Any) -> dict[str, Any]:
    """What the leader keeps of a Hello's free-form ``meta``: ``host`` (a printable str
    of 1 to :data:`MAX_META_HOST` characters) and ``pid`` (an int from 0 to
    :data:`MAX_META_PID`); anything else, and either of those in another shape, is
    dropped. A peer's meta is shown to operators (the dashboard, ``/api/workers``): it is
    never kept raw, whatever its size or content."""
    kept: dict[str, Any] = {}
    if type(meta) is not dict:
        return kept
    host = meta.get("host")
    if type(host) is str and 0 < len(host) <= MAX_META_HOST and host.isprintable():
        kept["host"] = host
    pid = meta.get("pid")
    if type(pid) is int and 0 <= pid <= MAX_META_PID:
        kept["pid"] = pid
    return kept


def peer_address(url: str) -> str | None:
    """A connection's peer as ``host:port`` (``tcp://127.0.0.1:5341`` is
    ``127.0.0.1:5341``); None when its address is unknown."""
    address = url.partition("://")[2]
    return address if address and "?" not in address else None


def _never_silent() -> float:
    # (a link built without a connection, as tests do: nothing to measure its silence by)
    return math.inf


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
    #: builds the message (its payload decoded, as its receiver would see it) and calls
    #: ``send``.
    send_item: Callable[[list[Any]], None] = attrs.field(kw_only=True, default=None)
    #: The identity it proved (None on a leader without authentication): it owns the jobs
    #: it submits; only it (or an admin) may resubmit, read or cancel them.
    identity: str | None = attrs.field(kw_only=True, default=None)
    #: Whether it may act on other identities' jobs and on dead letters.
    admin: bool = attrs.field(kw_only=True, default=True)
    #: Its :class:`~actors.leader._auth.Principal` (permissions, limits), if authenticated.
    principal: Any = attrs.field(kw_only=True, default=None)
    #: When it connected (Unix time; 0.0 for a link built without a connection).
    connected_at: float = attrs.field(kw_only=True, default=0.0)
    #: What its Hello's ``meta`` said of it, as :func:`sanitized_meta` keeps it
    #: (``host``, ``pid``).
    meta: dict[str, Any] = attrs.field(kw_only=True, factory=dict, converter=sanitized_meta)
    #: Its address, ``host:port`` (None when unknown).
    peer: str | None = attrs.field(kw_only=True, default=None)
    #: Returns when (trio's clock) the last frame came from it, a Ping's answer included
    #: (infinity for a link built without a connection: never counted silent).
    last_heard: Callable[[], float] = attrs.field(kw_only=True, default=_never_silent)

    def __attrs_post_init__(self) -> None:
        if self.send_item is None:
            self.send_item = lambda item: self.send(message_of(item, decode_payloads=True))

    def refuse(self, msg: Any, code: str, message: str, **extra: Any) -> None:
        """Answer ``msg`` (a message this peer sent) with an Error of ``code``; ``extra``:
        more Error fields (``retry_after``). Names the message's job, if it has one."""
        self.send(
            Error(
                mid=self.next_mid(), cid=msg.mid, code=code, message=message,
                job_id=getattr(msg, "job_id", None), **extra,
            )
        )  # fmt: skip


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
    #: Finished jobs by latency bucket (see :func:`~actors.leader._stats.count_result`).
    latency_counts: list[int] = attrs.field(factory=latency_counts)
    #: Its p50 and p99 as last estimated, and from how many finished jobs (see
    #: :func:`~actors.leader._stats.latency_percentiles`).
    percentiles: tuple[int, float | None, float | None] = (0, None, None)
    #: The patterns its connected workers serve, with how many of them serve each (the
    #: first served first): kept as workers join and leave, so that the statistics list
    #: a few and count them all without a pass over every worker's patterns.
    patterns: dict[str, int] = attrs.field(factory=dict)
    #: Its workers connected now (when none is left, the broker may forget the group:
    #: see :meth:`Broker.forget_idle_groups <actors.leader._broker.Broker.forget_idle_groups>`).
    connected: int = 0


@attrs.define(eq=False)
class WorkerLink(Link):
    """A worker: its patterns, credit window and the jobs it holds unacknowledged."""

    patterns: tuple[str, ...] = ()
    #: Jobs it may hold at once: its credit (``granted``, within the leader's
    #: ``max_window``) less the slots whose results wait for the journal (``held``).
    window: int = 0
    granted: int = 0
    held: int = 0
    group: str = ""
    policy: str = RoutingPolicy.ROUND_ROBIN.value
    mode: str = GroupMode.ROUND_ROBIN.value
    #: job id -> record, in assignment order (so the first one has the earliest deadline).
    inflight: dict[str, JobRecord] = attrs.field(factory=dict)
    #: ack deadline by job id, parallel to ``inflight``.
    deadlines: dict[str, float] = attrs.field(factory=dict)
    #: sticky jobs routed to this worker that wait for a free slot.
    backlog: deque[JobRecord] = attrs.field(factory=deque)
    #: The subject queues it is a candidate of (a dict as an ordered set: O(1) removal).
    queues: dict[SubjectQueue, None] = attrs.field(factory=dict)
    #: Queues it serves whose jobs found no worker with room (see ``SubjectQueue.starved``),
    #: to visit when it has room again, oldest first: so that a Credit visits the queues
    #: with jobs waiting, not every queue the worker serves.
    hungry: OrderedDict[SubjectQueue, None] = attrs.field(factory=OrderedDict)
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
    subscriptions: dict[int, SubscriptionRecord] = attrs.field(factory=dict)
    #: job ids this client waits on (for clean-up when it goes away)
    waiting: dict[str, None] = attrs.field(factory=dict)
    #: jobs this client submitted that are accepted and not finished (queued, waiting out
    #: a backoff or held by a worker), and their bytes: what its per-client limits count.
    jobs: int = 0
    job_bytes: int = 0
    #: when it was last sent the statistics (a Query), to answer it at most so often
    stats_at: float = float("-inf")
    #: Subjects it may receive (its subscribe permissions) when some of what its patterns
    #: match is denied to it: deliveries are filtered with it. None: no filter.
    receive_filter: Any = None


@attrs.define(eq=False)
class SubscriptionRecord:
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
    #: Jobs of this subject accepted and not finished (queued, in a sticky backlog,
    #: waiting out a backoff or held by a worker), and their bytes: what the per-subject
    #: limits count.
    jobs: int = 0
    job_bytes: int = 0
    #: Entries of ``pending`` that left it early (cancelled, expired, answered by a late
    #: result): skipped when they reach the front, compacted when they are many.
    stale: int = 0
    #: Its jobs found no worker with room, and each of its workers was told so (holds it
    #: in ``WorkerLink.hungry``); cleared when ``pending`` empties or a worker lets go of it.
    starved: bool = False
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
    #: Finished jobs by latency bucket (see :func:`~actors.leader._stats.count_result`).
    latency_counts: list[int] = attrs.field(factory=latency_counts)
    #: Its p50 and p99 as last estimated, and from how many finished jobs (see
    #: :func:`~actors.leader._stats.latency_percentiles`).
    percentiles: tuple[int, float | None, float | None] = (0, None, None)

    @property
    def policy(self) -> str | None:
        """The routing policy of this subject: that of every worker serving it (the first
        one to serve it set it: see :class:`~actors.leader._routing.SubjectPolicies`);
        None while no worker serves it."""
        return self.candidates[0].policy if self.candidates else None


# A trie node of PatternSet: token -> child node; these keys mark a pattern's end.
_END = ""  # (no valid token is empty) the pattern ends here
_REST = ">"  # the pattern is this node's prefix followed by ">"


class _State:
    """Where a subject's tokens so far lead in a :class:`PatternSet`: the trie nodes they
    reach, and (filled in as tokens come) where each next token leads from here."""

    __slots__ = ("end", "literal", "next", "nodes", "rest", "star")

    def __init__(self, nodes: list[dict[str, Any]]) -> None:
        self.nodes = nodes
        #: a pattern ends here / one is this prefix and ">" (it matches one more token or more)
        self.end = any(_END in node for node in nodes)
        self.rest = any(_REST in node for node in nodes)
        #: token -> the child nodes of that literal token
        self.literal: dict[str, list[dict[str, Any]]] = {}
        stars = []
        for node in nodes:
            for token, child in node.items():
                if token == "*":
                    stars.append(child)
                elif token != _END and token != _REST:
                    self.literal.setdefault(token, []).append(child)
        self.star: list[dict[str, Any]] | _State = stars  # (its _State once needed)
        self.next: dict[str, _State] = {}


class PatternSet:
    """Whether any of a set of patterns matches a subject (NATS rules, as
    :class:`protocol.SubjectIndex`): a joining worker's patterns, asked about every queue.

    :class:`protocol.SubjectIndex` answers *which* registrations match, so it visits every
    pattern that does; this answers *whether* one does, walking a lazily built automaton:
    the nodes a subject's first tokens reach are a state, kept with where each next token
    leads, so subjects that share their first tokens share that work, a token that no
    pattern names costs one lookup, and a ``>`` ends the walk. A worker's Hello of 1,024
    overlapping patterns asked about 10,000 queues costs 10,000 short walks, not the
    10 million node visits of matching each queue's subject in the index.
    """

    def __init__(self, patterns: Iterable[str]) -> None:
        root: dict[str, Any] = {}
        for pattern in patterns:
            *init, last = pattern.split(".")
            node = root
            for token in init:
                node = node.setdefault(token, {})
            if last == _REST:
                node[_REST] = None
            else:
                node.setdefault(last, {})[_END] = None
        self._states: dict[frozenset[int], _State] = {}
        self._start = self._state([root])

    def _state(self, nodes: list[dict[str, Any]]) -> _State:
        key = frozenset(map(id, nodes))  # (the nodes live in the trie as long as self)
        state = self._states.get(key)
        if state is None:
            state = self._states[key] = _State(nodes)
        return state

    def matches(self, subject: str) -> bool:
        """Whether one of the patterns matches ``subject`` (a valid subject)."""
        state = self._start
        for token in subject.split("."):
            if state.rest:  # (a pattern "prefix.>", and one token or more left)
                return True
            after = state.next.get(token)
            if after is None:
                children = state.literal.get(token)
                star = state.star
                if type(star) is list:
                    star = state.star = self._state(star)
                if children is None:
                    after = star  # (not remembered: one lookup finds it again)
                else:
                    after = state.next[token] = self._state(children + star.nodes)
            state = after
            if not state.nodes:
                return False
        return state.end
