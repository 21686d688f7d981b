"""The session state machine (Hello first, allowed kinds per role, closing, heartbeats)
and protocol version negotiation. Time is passed in as numbers: no event loop here."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol import (
    ALLOWED,
    MESSAGE_TYPES,
    PROTOCOL_VERSION,
    ROLES,
    SUPPORTED_VERSIONS,
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
    ErrorCode,
    Hello,
    Message,
    Nack,
    Ping,
    Pong,
    Progress,
    Publish,
    Query,
    Result,
    Session,
    State,
    StateViolation,
    Submit,
    Subscribe,
    TimerAction,
    Unsubscribe,
    UnsupportedVersion,
    Welcome,
    negotiate_version,
)

#: One valid message of every kind.
EXAMPLES: dict[type[Message], Message] = {
    Hello: Hello(mid=1, role="client"),
    Welcome: Welcome(mid=1, cid=1, version=1),
    Ping: Ping(mid=2),
    Pong: Pong(mid=2, cid=2),
    Bye: Bye(mid=3, reason="done"),
    Error: Error(mid=4, code=ErrorCode.BAD_FRAME, message="bad"),
    Submit: Submit(mid=5, job_id="j", subject="a.b"),
    Assign: Assign(mid=6, job_id="j", subject="a.b"),
    Ack: Ack(mid=7, cid=6),
    Nack: Nack(mid=8, job_id="j"),
    Progress: Progress(mid=9, job_id="j", fraction=0.5),
    Result: Result(mid=10, job_id="j"),
    Credit: Credit(mid=11, credit=4),
    Cancel: Cancel(mid=12, job_id="j"),
    Publish: Publish(mid=13, subject="a.b"),
    Subscribe: Subscribe(mid=14, sid=1, pattern="a.>"),
    Unsubscribe: Unsubscribe(mid=15, sid=1),
    Deliver: Deliver(mid=16, sid=1, subject="a.b"),
    CachePut: CachePut(mid=17, cache_id="c", target="w.>"),
    CacheAck: CacheAck(mid=18, cache_id="c"),
    Chunk: Chunk(mid=19, transfer_id="x", index=0),
    Query: Query(mid=20, what="stats"),
}
KINDS = list(MESSAGE_TYPES.values())
_by_name = lambda cls: cls.__name__  # noqa: E731


def open_server(role: str, **kwargs: object) -> Session:
    session = Session(side="server", **kwargs)
    session.start(0.0)
    session.receive(Hello(mid=1, role=role), now=0.0)
    assert session.state is State.OPEN
    assert session.peer_role == role
    return session


def test_examples_cover_every_kind() -> None:
    assert set(EXAMPLES) == set(KINDS)


def test_allowed_table_covers_every_role() -> None:
    assert set(ALLOWED) == set(ROLES)
    for role, kinds in ALLOWED.items():
        assert {Ping, Pong, Error, Bye} <= kinds, role
        assert Hello not in kinds and Welcome not in kinds, role


# ---------------------------------------------------------------------------------------
# Opening


@pytest.mark.parametrize("kind", [k for k in KINDS if k is not Hello], ids=_by_name)
def test_server_needs_hello_first(kind: type[Message]) -> None:
    session = Session(side="server")
    assert session.state is State.AWAITING_HELLO
    with pytest.raises(StateViolation, match="first message must be Hello") as info:
        session.receive(EXAMPLES[kind], now=0.0)
    assert info.value.code == ErrorCode.PROTOCOL_VIOLATION
    assert session.state is State.AWAITING_HELLO
    assert session.peer_role is None


def test_hello_opens_with_the_declared_role() -> None:
    for role in sorted(ROLES):
        open_server(role)


def test_hello_or_welcome_after_open_is_a_violation() -> None:
    session = open_server("client")
    with pytest.raises(StateViolation):
        session.receive(Hello(mid=2, role="client"), now=1.0)
    with pytest.raises(StateViolation):
        session.receive(Welcome(mid=3, version=1), now=1.0)


@pytest.mark.parametrize("kind", [k for k in KINDS if k not in (Welcome, Error)], ids=_by_name)
def test_client_side_needs_welcome_first(kind: type[Message]) -> None:
    session = Session(side="client")
    assert session.state is State.AWAITING_WELCOME
    with pytest.raises(StateViolation, match="expected Welcome"):
        session.receive(EXAMPLES[kind], now=0.0)
    assert session.state is State.AWAITING_WELCOME


def test_client_side_welcome_opens_and_leader_rules_apply() -> None:
    session = Session(side="client")
    session.receive(Welcome(mid=1, cid=1, version=1), now=0.0)
    assert session.state is State.OPEN
    assert session.peer_role == "leader"
    session.receive(EXAMPLES[Assign], now=1.0)
    session.receive(EXAMPLES[Result], now=1.0)
    session.receive(EXAMPLES[Deliver], now=1.0)
    with pytest.raises(StateViolation, match="a leader may not send Submit"):
        session.receive(EXAMPLES[Submit], now=1.0)


@pytest.mark.parametrize(
    "code", [ErrorCode.AUTH_FAILED, ErrorCode.UNSUPPORTED_VERSION, ErrorCode.BUSY]
)
def test_client_side_error_instead_of_welcome_closes(code: str) -> None:
    session = Session(side="client")
    session.receive(Error(mid=1, cid=1, code=code), now=0.0)
    assert session.state is State.CLOSED


def test_side_must_be_known() -> None:
    with pytest.raises(
        ValueError, match=r"'side' must be in \('server', 'client'\) \(got 'middle'\)"
    ):
        Session(side="middle")


# ---------------------------------------------------------------------------------------
# What each role may send


@pytest.mark.parametrize("role", sorted(ROLES))
@pytest.mark.parametrize("kind", [k for k in KINDS if k not in (Hello, Welcome)], ids=_by_name)
def test_allowed_kinds_per_role(role: str, kind: type[Message]) -> None:
    session = open_server(role)
    if kind in ALLOWED[role]:
        session.receive(EXAMPLES[kind], now=1.0)
    else:
        with pytest.raises(StateViolation, match=f"a {role} may not send {kind.__name__}"):
            session.receive(EXAMPLES[kind], now=1.0)
        assert session.state is State.OPEN  # the caller decides to close; the table only judges


def test_the_table_for_each_role() -> None:
    """The table itself, spelled out, so that a change to it is a deliberate one."""
    always = {Ping, Pong, Error, Bye}
    assert ALLOWED["client"] == always | {
        Submit,
        Cancel,
        Publish,
        Subscribe,
        Unsubscribe,
        Ack,
        CachePut,
        Chunk,
        Query,
    }
    assert ALLOWED["worker"] == always | {
        Result,
        Nack,
        Progress,
        Credit,
        Ack,
        Publish,
        Subscribe,
        Unsubscribe,
        CacheAck,
        Chunk,
    }
    assert ALLOWED["observer"] == always | {Subscribe, Unsubscribe, Query}
    assert ALLOWED["leader"] == always | {
        Assign,
        Result,
        Deliver,
        Progress,
        Cancel,
        Ack,
        CachePut,
        CacheAck,
        Chunk,
    }


def test_client_may_not_send_result_or_assign_or_credit() -> None:
    session = open_server("client")
    for kind in (Result, Assign, Credit, Deliver, Nack, Progress, CacheAck):
        with pytest.raises(StateViolation):
            session.receive(EXAMPLES[kind], now=1.0)
    session.receive(EXAMPLES[Submit], now=1.0)


def test_worker_submits_only_when_allowed() -> None:
    plain = open_server("worker")
    for kind in (Submit, Cancel):
        with pytest.raises(StateViolation, match=f"a worker may not send {kind.__name__}"):
            plain.receive(EXAMPLES[kind], now=1.0)
    trusted = open_server("worker", worker_may_submit=True)
    trusted.receive(EXAMPLES[Submit], now=1.0)
    trusted.receive(EXAMPLES[Cancel], now=1.0)
    trusted.receive(EXAMPLES[Result], now=1.0)
    # The option is for workers only.
    observer = open_server("observer", worker_may_submit=True)
    with pytest.raises(StateViolation):
        observer.receive(EXAMPLES[Submit], now=1.0)


# ---------------------------------------------------------------------------------------
# Closing


@pytest.mark.parametrize("role", sorted(ROLES))
def test_bye_closes(role: str) -> None:
    session = open_server(role)
    session.receive(Bye(mid=9), now=1.0)
    assert session.state is State.CLOSED
    with pytest.raises(StateViolation, match="session is closed"):
        session.receive(Ping(mid=10), now=2.0)


@pytest.mark.parametrize("code", sorted(ErrorCode.CLOSING))
def test_error_with_a_closing_code_closes(code: str) -> None:
    session = open_server("worker")
    session.receive(Error(mid=9, code=code), now=1.0)
    assert session.state is State.CLOSED
    with pytest.raises(StateViolation):
        session.receive(EXAMPLES[Result], now=2.0)


@pytest.mark.parametrize(
    "code", [ErrorCode.BUSY, ErrorCode.NO_ROUTE, ErrorCode.TIMEOUT, ErrorCode.DEAD_LETTER, "custom"]
)
def test_error_answering_one_request_keeps_the_session_open(code: str) -> None:
    session = Session(side="client")
    session.receive(Welcome(mid=1, version=1), now=0.0)
    session.receive(Error(mid=2, cid=5, code=code, retry_after=1.0), now=1.0)
    assert session.state is State.OPEN
    session.receive(EXAMPLES[Result], now=2.0)


def test_local_close() -> None:
    session = open_server("client", heartbeat=5.0)
    session.close()
    assert session.state is State.CLOSED
    assert session.next_deadline() == math.inf
    assert session.handle_timer(1000.0) is None
    with pytest.raises(StateViolation):
        session.receive(Ping(mid=3), now=1.0)


# ---------------------------------------------------------------------------------------
# Heartbeats: explicit `now` values in, deadlines and actions out


def test_no_heartbeat_means_no_timer() -> None:
    session = open_server("client")
    assert session.next_deadline() == math.inf
    assert session.handle_timer(1e9) is None
    assert session.state is State.OPEN


def test_pings_at_each_interval_then_dead_after_silence() -> None:
    session = Session(side="server", heartbeat=10.0, dead_after=3)
    session.start(100.0)
    session.receive(Hello(mid=1, role="worker"), now=100.0)
    assert session.next_deadline() == 110.0
    assert session.handle_timer(109.9) is None
    assert session.handle_timer(110.0) is TimerAction.SEND_PING
    assert session.next_deadline() == 120.0
    assert session.handle_timer(115.0) is None
    assert session.handle_timer(120.0) is TimerAction.SEND_PING
    assert session.next_deadline() == 130.0
    assert session.handle_timer(129.99) is None
    assert session.handle_timer(130.0) is TimerAction.DEAD  # 3 intervals with nothing heard
    assert session.state is State.CLOSED
    assert session.next_deadline() == math.inf
    assert session.handle_timer(140.0) is None


def test_receiving_resets_the_silence() -> None:
    session = open_server("worker", heartbeat=10.0, dead_after=3)
    assert session.handle_timer(10.0) is TimerAction.SEND_PING
    session.receive(Pong(mid=2, cid=1), now=15.0)
    assert session.next_deadline() == 25.0  # idle again 10 s after the last traffic
    assert session.handle_timer(25.0) is TimerAction.SEND_PING
    assert session.handle_timer(35.0) is TimerAction.SEND_PING
    assert session.next_deadline() == 45.0
    session.receive(EXAMPLES[Result], now=44.0)  # any message proves the peer alive
    assert session.handle_timer(45.0) is None
    assert session.next_deadline() == 54.0
    assert session.handle_timer(54.0) is TimerAction.SEND_PING
    assert session.handle_timer(74.0) is TimerAction.DEAD


def test_sending_postpones_neither_the_ping_nor_death() -> None:
    # A side that only sends (a worker reporting Progress) hears nothing else: it must ask,
    # or it would declare a live peer dead after dead_after heartbeats.
    session = open_server("client", heartbeat=10.0, dead_after=2)
    session.sent(now=8.0)
    assert session.next_deadline() == 10.0
    assert session.handle_timer(10.0) is TimerAction.SEND_PING
    session.sent(now=17.0)
    assert session.next_deadline() == 20.0  # one ping per heartbeat; death at 2 x 10 s
    assert session.handle_timer(20.0) is TimerAction.DEAD


def test_a_ping_answered_keeps_a_one_way_line_alive() -> None:
    session = open_server("client", heartbeat=1.0, dead_after=3)
    now = 0.0
    for _ in range(100):  # the side sends every 0.3 s; the peer answers each ping at once
        now = round(now + 0.3, 6)
        session.sent(now=now)
        action = session.handle_timer(now)
        assert action is not TimerAction.DEAD
        if action is TimerAction.SEND_PING:
            session.receive(Pong(mid=1), now=now)
    assert session.state is not State.CLOSED


def test_late_timer_call_reports_death_not_a_ping() -> None:
    session = open_server("client", heartbeat=1.0, dead_after=3)
    assert session.handle_timer(50.0) is TimerAction.DEAD


@given(
    heartbeat=st.sampled_from([0.5, 1.0, 3.0, 10.0]),
    dead_after=st.integers(1, 5),
    gaps=st.lists(st.floats(min_value=0.0, max_value=40.0), max_size=20),
)
def test_heartbeat_driven_by_its_own_deadlines(
    heartbeat: float, dead_after: int, gaps: list[float]
) -> None:
    """An I/O loop that sleeps until next_deadline(): pings exactly when the line has been
    idle an interval, DEAD exactly when the peer has been silent dead_after intervals."""
    session = open_server("client", heartbeat=heartbeat, dead_after=dead_after)
    now = 0.0
    arrivals = []
    for gap in gaps:
        now += gap
        arrivals.append(now)
    last_heard = 0.0
    last_traffic = 0.0
    pending = list(arrivals)
    while session.state is State.OPEN:
        deadline = session.next_deadline()
        assert deadline < math.inf
        if pending and pending[0] < deadline:
            at = pending.pop(0)
            session.receive(Ping(mid=1), now=at)
            last_heard = last_traffic = max(last_traffic, at)
            continue
        action = session.handle_timer(deadline)
        if action is TimerAction.DEAD:
            assert deadline == pytest.approx(last_heard + heartbeat * dead_after)
            assert not pending or pending[0] >= deadline
        else:
            assert action is TimerAction.SEND_PING
            assert deadline == pytest.approx(last_traffic + heartbeat)
            assert deadline < last_heard + heartbeat * dead_after
            last_traffic = deadline
    assert session.state is State.CLOSED


# ---------------------------------------------------------------------------------------
# Version negotiation


def test_this_version_is_supported() -> None:
    assert PROTOCOL_VERSION in SUPPORTED_VERSIONS
    assert negotiate_version([PROTOCOL_VERSION]) == PROTOCOL_VERSION
    # A Hello naming no versions means version 1 (what senders before version 2 meant);
    # our clients and workers name every version they speak.
    assert Hello(mid=1, role="client").versions == (1,)
    assert negotiate_version(SUPPORTED_VERSIONS) == PROTOCOL_VERSION


@pytest.mark.parametrize(
    ("offered", "supported", "chosen"),
    [
        ([1], (1,), 1),
        ([1, 2, 3], (3, 2, 1), 3),
        ([3, 2, 1], (1, 2), 2),
        ([2, 5, 9], (1, 2, 3), 2),
        ((v for v in [4, 1]), (1,), 1),  # any iterable
    ],
)
def test_negotiate_picks_the_newest_common_version(offered, supported, chosen) -> None:
    assert negotiate_version(offered, supported) == chosen


@pytest.mark.parametrize("offered", [[], [0], [2, 3], [-1]])
def test_negotiate_without_common_version(offered: list[int]) -> None:
    with pytest.raises(UnsupportedVersion, match="no common protocol version") as info:
        negotiate_version(offered, (1,))
    assert info.value.code == ErrorCode.UNSUPPORTED_VERSION


@given(st.sets(st.integers(0, 20)), st.sets(st.integers(0, 20), min_size=1))
def test_negotiate_property(offered: set[int], supported: set[int]) -> None:
    common = offered & supported
    if common:
        assert negotiate_version(list(offered), tuple(supported)) == max(common)
    else:
        with pytest.raises(UnsupportedVersion):
            negotiate_version(list(offered), tuple(supported))
