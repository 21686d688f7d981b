"""The session state machine: which message may come in which state, and heartbeats.

One table (:data:`ALLOWED`) says which kinds each role may send once the session is open;
Hello and Welcome open it. Of those, the kinds in :data:`RESERVED` are defined for later
versions: a leader of this one answers each with Error ``not_permitted`` (and a leader
sends none of its own). Time enters only as arguments (``now``), so heartbeat and
liveness rules are tested with no event loop::

    session = Session(side="server")
    session.receive(hello, now=0.0)          # raises StateViolation if not allowed
    ...
    deadline = session.next_deadline()       # when to call handle_timer
    action = session.handle_timer(now)       # None, SEND_PING or DEAD
"""

from __future__ import annotations

import enum

import attrs

from ._errors import ErrorCode, StateViolation
from ._messages import (
    Ack,
    Assign,
    Bye,
    CacheAck,
    CachePut,
    Cancel,
    Chunk,
    Credit,
    Deliver,
    Error,
    Hello,
    Message,
    Nack,
    Ping,
    Pong,
    Progress,
    Publish,
    Query,
    Result,
    Submit,
    Subscribe,
    Unsubscribe,
    Welcome,
)


class State(enum.Enum):
    """States of a session, seen from one side."""

    AWAITING_HELLO = "awaiting_hello"  #: server side, before the peer's Hello
    AWAITING_WELCOME = "awaiting_welcome"  #: client side, Hello sent, before Welcome
    OPEN = "open"
    CLOSED = "closed"  #: Bye, Error before Welcome or with a closing code, or closed locally


class TimerAction(enum.Enum):
    """What :meth:`Session.handle_timer` asks the I/O layer to do."""

    SEND_PING = "send_ping"
    DEAD = "dead"  #: the peer has been silent too long: close the connection


_ALWAYS: frozenset[type[Message]] = frozenset({Ping, Pong, Error, Bye})

#: What each peer role may send once the session is open (anything else is a
#: :class:`StateViolation`). The ``leader`` entry is what the connecting side accepts from
#: the leader. :data:`RESERVED` says which of these a leader of this version serves.
ALLOWED: dict[str, frozenset[type[Message]]] = {
    "client": _ALWAYS
    | {Submit, Cancel, Publish, Subscribe, Unsubscribe, Ack, CachePut, Chunk, Query},
    "worker": _ALWAYS
    | {Result, Nack, Progress, Credit, Ack, Publish, Subscribe, Unsubscribe, CacheAck, Chunk},
    "observer": _ALWAYS | {Subscribe, Unsubscribe, Query},
    "leader": _ALWAYS | {Assign, Result, Deliver, Progress, Cancel, Ack, CachePut, CacheAck, Chunk},
}
#: Kinds in :data:`ALLOWED` that are reserved: the session accepts them from the role, but
#: a leader of this version does not serve them (it answers each with Error
#: ``not_permitted`` naming the kind, and the session stays open), nor sends those of the
#: ``leader`` entry. The cache and transfer kinds (CachePut, CacheAck, Chunk) have no
#: implementation yet; a client's Ack would acknowledge a QoS 1 Deliver, and the leader
#: delivers with QoS 0; a worker receives published messages through its patterns (Deliver
#: with ``sid`` 0), not through subscriptions.
RESERVED: dict[str, frozenset[type[Message]]] = {
    "client": frozenset({Ack, CachePut, Chunk}),
    "worker": frozenset({Subscribe, Unsubscribe, CacheAck, Chunk}),
    "observer": frozenset(),
    "leader": frozenset({CachePut, CacheAck, Chunk}),
}
#: Kinds a worker may send only when the session was opened with ``worker_may_submit``.
#: The leader of this package never opens one so: a worker's Submit or Cancel is a
#: :class:`StateViolation` there (workers fanning out sub-jobs are for a later version).
WORKER_SUBMIT: frozenset[type[Message]] = frozenset({Submit, Cancel})


# on_setattr=NO_OP: the validator of ``side`` runs once at construction; per-message
# attribute updates (last_received) must not pay for attrs' setattr hooks.
@attrs.define(eq=False, on_setattr=attrs.setters.NO_OP)
class Session:
    """Checks a peer's messages against the protocol's states, and keeps heartbeat time.

    Args:
      side: ``"server"`` (expects Hello first) or ``"client"`` (sent Hello, expects Welcome).
      heartbeat: seconds of hearing nothing from the peer after which this side pings it
        (at most once per heartbeat, whatever it sends meanwhile); None disables heartbeats.
      dead_after: missed heartbeat intervals after which the peer is declared dead.
      worker_may_submit: a worker peer may also Submit and Cancel jobs
        (:data:`WORKER_SUBMIT`). The package's leader never sets it.
    """

    side: str = attrs.field(validator=attrs.validators.in_(("server", "client")))
    heartbeat: float | None = None
    dead_after: int = 3
    worker_may_submit: bool = False
    state: State = attrs.field(init=False)
    peer_role: str | None = attrs.field(init=False, default=None)
    #: The largest frame body the peer accepts, as its Hello (server side) said; None
    #: when it did not say.
    peer_max_frame: int | None = attrs.field(init=False, default=None)
    last_received: float = attrs.field(init=False, default=0.0)
    last_sent: float = attrs.field(init=False, default=0.0)
    #: when this side last sent a Ping (it pings at most once per heartbeat)
    last_pinged: float = attrs.field(init=False, default=float("-inf"))
    _allowed: frozenset[type[Message]] = attrs.field(init=False, default=frozenset())

    def __attrs_post_init__(self) -> None:
        self.state = State.AWAITING_HELLO if self.side == "server" else State.AWAITING_WELCOME
        if self.side == "client":
            self.peer_role = "leader"

    def start(self, now: float) -> None:
        """Start the heartbeat clock (call when the connection opens)."""
        self.last_received = self.last_sent = now

    def receive(self, message: Message, now: float) -> None:
        """Account for a received message; raise if the protocol does not allow it here.

        Raises:
          StateViolation: the message is not allowed in this state or for this role.
        """
        self.last_received = now
        state = self.state
        if state is State.OPEN:
            if type(message) not in self._allowed:
                raise StateViolation(f"a {self.peer_role} may not send {type(message).__name__}")
            if type(message) is Bye or (
                type(message) is Error and ErrorCode.closes_connection(message.code)
            ):
                self.state = State.CLOSED
            return
        if state is State.AWAITING_HELLO:
            if type(message) is not Hello:
                raise StateViolation(
                    f"the first message must be Hello, got {type(message).__name__}"
                )
            self._open(message.role)
            self.peer_max_frame = message.max_frame
            return
        if state is State.AWAITING_WELCOME:
            if type(message) is Welcome:
                self._open("leader")
                return
            if type(message) is Error:
                self.state = State.CLOSED
                return
            raise StateViolation(f"expected Welcome, got {type(message).__name__}")
        raise StateViolation(f"session is closed; got {type(message).__name__}")

    def _open(self, role: str) -> None:
        self.peer_role = role
        allowed = ALLOWED[role]
        if role == "worker" and self.worker_may_submit:
            allowed = allowed | WORKER_SUBMIT
        self._allowed = allowed
        self.state = State.OPEN

    def sent(self, now: float) -> None:
        """Account for a message sent (sending also proves we are alive)."""
        self.last_sent = now

    def close(self) -> None:
        """Mark the session closed locally."""
        self.state = State.CLOSED

    def next_deadline(self) -> float:
        """The time at which :meth:`handle_timer` next has something to do (inf if never)."""
        if self.heartbeat is None or self.state is State.CLOSED:
            return float("inf")
        ping_at = max(self.last_received, self.last_pinged) + self.heartbeat
        dead_at = self.last_received + self.heartbeat * self.dead_after
        return min(ping_at, dead_at)

    def handle_timer(self, now: float) -> TimerAction | None:
        """Decide what the passing of time requires: nothing, a ping, or giving up."""
        if self.heartbeat is None or self.state is State.CLOSED:
            return None
        if now >= self.last_received + self.heartbeat * self.dead_after:
            self.state = State.CLOSED
            return TimerAction.DEAD
        if now >= max(self.last_received, self.last_pinged) + self.heartbeat:
            # Nothing heard for a heartbeat: ask (whatever this side sends meanwhile: a
            # worker that only sends Progress hears nothing else, and must not declare a
            # live leader dead). The answer, or anything, resets the clock.
            self.last_sent = self.last_pinged = now
            return TimerAction.SEND_PING
        return None
