"""The pub/sub router alone, sans-I/O: queue groups, one Deliver per connection naming
every subscription a Publish is for, retained replay and its allowance; exact counts and
times, no event loop."""

from __future__ import annotations

import random

import attrs
import pytest

from actors.leader import _pubsub
from actors.leader._links import ClientLink, WorkerLink
from actors.leader._pubsub import REPLAY_REFILL, PubSubRouter, _SidSet
from actors.leader._retained import RetainedMessages
from protocol import (
    BUNDLE_OVERHEAD,
    Ack,
    Deliver,
    Error,
    ErrorCode,
    Publish,
    SubjectIndex,
    Subscribe,
    Unsubscribe,
    encode_array,
    message_of,
)
from runtime import MessageTooLarge


@pytest.fixture(autouse=True)
def _one_deliver_per_connection(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests are of the Deliver that names many subscriptions: every connection gets
    it, however few its subscriptions (the leader's default sends up to
    SEPARATE_DELIVERS Delivers apart: see test_few_subscriptions_get_a_deliver_each)."""
    monkeypatch.setattr(_pubsub, "SEPARATE_DELIVERS", 0)


MIB = 2**20


class _Recording:
    """Records the messages a link is sent and, apart, the Deliver items."""

    sent: list
    items: list
    limit: int | None
    refused: int

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()  # type: ignore[misc]
        self.send = self.sent.append
        self.send_item = self._send_item

    def _send_item(self, item: list) -> None:
        message = message_of(item)  # (a valid message, as a receiver would decode it)
        size = len(encode_array(item)) + BUNDLE_OVERHEAD  # (as a connection measures it)
        if self.limit is not None and size > self.limit:
            self.refused += 1
            raise MessageTooLarge(size, self.limit)
        assert type(message) is Deliver
        self.items.append(item)


@attrs.define(eq=False)
class Client(_Recording, ClientLink):
    sent: list = attrs.field(factory=list)
    items: list = attrs.field(factory=list)
    limit: int | None = None
    refused: int = 0


@attrs.define(eq=False)
class Worker(_Recording, WorkerLink):
    sent: list = attrs.field(factory=list)
    items: list = attrs.field(factory=list)
    limit: int | None = None
    refused: int = 0


def make_router(workers: SubjectIndex | None = None, **kw) -> PubSubRouter:
    kw.setdefault("max_frame", 16 * MIB)
    kw.setdefault("max_subscriptions", 10_000)
    kw.setdefault("max_retained", 10_000)
    kw.setdefault("max_retained_bytes", 64 * MIB)
    return PubSubRouter(workers if workers is not None else SubjectIndex(), **kw)


def client(name: str = "c", limit: int | None = None) -> Client:
    return Client(name, print, limit=limit)


def sub(
    router: PubSubRouter,
    link: Client,
    sid: int,
    pattern: str,
    queue: str | None = None,
    now: float = 0.0,
) -> None:
    router.subscribe(link, Subscribe(mid=1000 + sid, sid=sid, pattern=pattern, queue=queue), now)


def pub(
    router: PubSubRouter,
    subject: str,
    payload=None,
    *,
    retain: bool = False,
    qos: int = 0,
    mid: int = 1,
) -> Client:
    publisher = client("publisher")
    router.publish(
        publisher, Publish(mid=mid, subject=subject, payload=payload, retain=retain, qos=qos), 0.0
    )
    return publisher


def delivers(link: Client) -> list[Deliver]:
    """The Delivers ``link`` got, as its peer decodes them."""
    return [message_of(item) for item in link.items]


def named(link: Client) -> list[list[int]]:
    """The sids each Deliver ``link`` got names (``sid``, then ``also``), sorted."""
    return [sorted((d.sid, *d.also)) for d in delivers(link)]


def sids(link: Client) -> list[int]:
    """Every sid the Delivers ``link`` got name, Deliver after Deliver."""
    return [sid for each in named(link) for sid in each]


def errors(link: Client) -> list[Error]:
    return [m for m in link.sent if isinstance(m, Error)]


# ---------------------------------------------------------------------------------------
# Queue groups


def test_a_queue_group_of_many_members_is_one_route_entry_and_one_delivery() -> None:
    router = make_router()
    member = client("member")
    for i in range(10_000):
        sub(router, member, i, ">", queue="q")
    for _ in range(5):
        pub(router, "amp.x")
    assert sids(member) == [0, 1, 2, 3, 4]  # one Deliver per publish, members in turn
    route = router._route_of("amp.x")  # what a publish walks: one group, no member
    assert route.targets == () and [len(same_name) for same_name in route.groups] == [1]


def test_queue_group_members_on_several_connections_take_turns() -> None:
    router = make_router()
    a, b, c = client("a"), client("b"), client("c")
    for link, first in ((a, 10), (b, 20), (c, 30)):
        sub(router, link, first, "jobs.>", queue="workers")
        sub(router, link, first + 1, "jobs.>", queue="workers")
    for _ in range(12):
        pub(router, "jobs.x")
    # six members, each picked twice in twelve publishes, one Deliver each
    assert sorted(sids(a) + sids(b) + sids(c)) == sorted([10, 11, 20, 21, 30, 31] * 2)
    assert [len(d) for d in named(a) + named(b) + named(c)] == [1] * 12  # one sid each
    route = router._route_of("jobs.x")  # one group, not six members
    assert route.targets == () and [len(same_name) for same_name in route.groups] == [1]


def test_a_queue_group_under_two_matching_patterns_delivers_once() -> None:
    # NATS merges the queue subscriptions of one name across the patterns that match.
    router = make_router()
    a, b = client("a"), client("b")
    sub(router, a, 1, "orders.>", queue="q")
    sub(router, b, 2, "orders.*", queue="q")
    for _ in range(4):
        pub(router, "orders.new")
    assert sorted(sids(a) + sids(b)) == [1, 1, 2, 2]
    pub(router, "orders.new.eu")  # only "orders.>" matches
    assert sids(a)[-1] == 1 and len(sids(a) + sids(b)) == 5


def test_members_leaving_keep_the_group_served_and_an_empty_group_leaves_the_index() -> None:
    router = make_router()
    a = client("a")
    for sid in range(4):
        sub(router, a, sid, "t.>", queue="q")
    router.unsubscribe(a, Unsubscribe(mid=1, sid=1))  # the last member takes its place
    for _ in range(3):
        pub(router, "t.x")
    assert sorted(sids(a)) == [0, 2, 3]
    for sid in (0, 2, 3):
        router.unsubscribe(a, Unsubscribe(mid=1, sid=sid))
    assert router._groups == {} and router._entries == {} and len(router._index) == 0
    pub(router, "t.x")
    assert len(sids(a)) == 3


def test_plain_subscriptions_and_queue_groups_are_served_side_by_side() -> None:
    router = make_router()
    plain, q1, q2 = client("plain"), client("q1"), client("q2")
    sub(router, plain, 1, "events.>")
    sub(router, plain, 2, "events.*.created")
    sub(router, q1, 3, "events.>", queue="q")
    sub(router, q2, 4, "events.>", queue="q")
    pub(router, "events.order.created")
    pub(router, "events.order.created")
    assert named(plain) == [[1, 2], [1, 2]]  # two matching subscriptions: one Deliver each time
    assert sids(q1) == [3] and sids(q2) == [4]


def test_a_member_picked_on_a_connection_is_named_in_its_one_deliver() -> None:
    router = make_router()
    a, b = client("a"), client("b")
    sub(router, a, 1, "t.>")
    sub(router, a, 2, "t.*", queue="q")
    sub(router, a, 3, "t.>", queue="q")  # (the same name under another pattern: one group)
    sub(router, a, 4, "t.>", queue="r")
    sub(router, b, 5, "t.>", queue="q")
    for _ in range(6):
        pub(router, "t.x")
    assert len(a.items) == 6  # one Deliver per publish, whatever it names
    for each in named(a):
        assert 1 in each and 4 in each  # the plain one, and "r"'s only member
        assert len(set(each) & {2, 3}) <= 1  # at most one of "q"
    q = [sid for sid in sids(a) + sids(b) if sid in (2, 3, 5)]
    assert sorted(q) == [2, 2, 3, 3, 5, 5]  # one of "q" per publish, each in turn


# ---------------------------------------------------------------------------------------
# One Publish, one connection: one Deliver, naming every subscription it is for


def test_one_publish_makes_one_deliver_per_connection_naming_all_its_subscriptions() -> None:
    router = make_router()
    many, one = client("many"), client("one")
    for sid in range(100):
        sub(router, many, sid, ">")
    sub(router, one, 7, "amp.*")
    pub(router, "amp.x", payload=5, mid=1)
    assert named(many) == [list(range(100))] and named(one) == [[7]]
    [deliver] = delivers(many)
    built = Deliver.item(mid=1, sid=0, subject="amp.x", payload=5)  # type: ignore[attr-defined]
    assert (deliver.mid, deliver.subject, deliver.payload.data) == (1, "amp.x", built[4])
    assert len(one.items[0]) == len(built)  # one sid: no ``also`` on the wire


def test_every_pattern_and_queue_group_of_a_connection_is_in_its_one_deliver() -> None:
    router = make_router()
    hog, other = client("hog"), client("other")
    patterns = ["a.b.c", "a.b.*", "a.*.c", "*.b.c", "a.*.*", "*.*.c", "*.*.*", "a.>", ">"]
    for sid, pattern in enumerate(patterns):
        sub(router, hog, sid, pattern)
    for sid in range(100, 150):
        sub(router, hog, sid, "a.>", queue=f"group{sid}")
    sub(router, other, 1, "a.>", queue="group100")  # shares a group with the hog
    sub(router, other, 2, ">")
    pub(router, "a.b.c")
    pub(router, "a.b.c")
    assert len(hog.items) == len(other.items) == 2  # one Deliver each, per publish
    for each in named(hog):
        assert set(each) >= {*range(9), *range(101, 150)}  # 9 plain ones, 49 groups its own
        assert len(each) == len(set(each))  # each named once
    assert all(2 in each for each in named(other))
    group100 = [sid for sid in sids(hog) if sid == 100] + [sid for sid in sids(other) if sid == 1]
    assert sorted(group100) == [1, 100]  # one member per publish, in turn


def test_a_connection_over_its_own_frame_limit_misses_the_message_on_all_its_subscriptions() -> (
    None
):
    router = make_router()
    small, big = client("small", limit=60), client("big")
    for sid in range(3):
        sub(router, small, sid, "news.>")
        sub(router, big, sid, "news.>")
    pub(router, "news.x", payload=b"x" * 100)
    assert sids(small) == [] and named(big) == [[0, 1, 2]]
    assert small.refused == 2  # all three, then one alone: then no more tries
    pub(router, "news.x", payload=1)
    assert named(small) == [[0, 1, 2]]


def test_a_deliver_over_a_connections_frame_limit_is_sent_as_smaller_ones_that_fit() -> None:
    router = make_router()
    payload = b"x" * 100
    widest = Deliver.item(mid=2**32, sid=2**32, subject="news.x", payload=payload)  # type: ignore[attr-defined]
    limit = len(encode_array(widest)) + BUNDLE_OVERHEAD + 60  # some sids beside it, not 1,000
    small, big = client("small", limit=limit), client("big")
    for sid in range(1000):
        sub(router, small, sid, "news.>")
        sub(router, big, sid, "news.>")
    sub(router, small, 5000, "news.*", queue="q")  # (a member picked: in its Deliver too)
    for mid in (1, 2):
        pub(router, "news.x", payload=payload, mid=mid)
    assert named(big) == [list(range(1000))] * 2
    assert sorted(sids(small)) == sorted([*range(1000), 5000] * 2)  # each one, once a publish
    assert 10 < len(small.items) < 200
    assert all(len(encode_array(item)) + BUNDLE_OVERHEAD <= limit for item in small.items)
    assert small.refused == 2  # learnt from one refusal a publish, not by trying sizes


def test_over_max_deliver_sids_a_connection_gets_several_delivers(monkeypatch) -> None:
    monkeypatch.setattr(_pubsub, "MAX_DELIVER_SIDS", 3)
    router = make_router()
    c = client()
    for sid in range(10):
        sub(router, c, sid, "s.>")
    pub(router, "s.x")
    assert [len(each) for each in named(c)] == [4, 4, 2]  # a sid and 3 more each at most
    for sid in range(10, 13):
        sub(router, c, sid, "s.*", queue=f"g{sid}")
    pub(router, "s.x")
    assert [len(each) for each in named(c)[3:]] == [4, 4, 4, 1]
    assert sorted(sids(c)) == sorted([*range(10), *range(13)])


def test_routes_follow_subscription_changes() -> None:
    router = make_router()
    a = client("a")
    sub(router, a, 1, "x.>")
    pub(router, "x.y")
    assert named(a) == [[1]]
    sub(router, a, 2, "x.*")
    sub(router, a, 3, "x.y")
    pub(router, "x.y")
    assert named(a)[1:] == [[1, 2, 3]]
    router.unsubscribe(a, Unsubscribe(mid=1, sid=1))
    router.unsubscribe(a, Unsubscribe(mid=1, sid=2))
    pub(router, "x.y")
    assert named(a)[2:] == [[3]]


def test_a_sid_set_keeps_one_encoding_of_each_sid_through_adds_and_removes() -> None:
    rng = random.Random(7)
    pool = [*range(30), *range(250, 260), 65_535, 65_536, 2**32 - 1, 2**32, 2**64 - 1]
    kept, held = _SidSet(), set()
    for _ in range(3000):
        sid = rng.choice(pool)
        if sid in held and rng.random() < 0.6:
            kept.remove(sid)
            held.discard(sid)
        else:
            kept.add(sid)
            held.add(sid)
        assert set(kept) == held and len(kept) == len(held)
        parts = list(_pubsub._parts(kept.segments(), len(pool)))
        if held:
            [(sid, also, count)] = parts
            rest = also.decode() if also is not None else []
            assert count == len(rest) and sorted([sid, *rest]) == sorted(held)
        else:
            assert parts == []


@pytest.mark.parametrize("per", [0, 1, 2, 5, 100])
def test_parts_split_the_sids_anywhere_and_skip_those_sent(per: int) -> None:
    segments = _pubsub._segments_of([3, 300, 30, 70_000, 4]) + _SidSet().segments()
    for skip in range(6):
        parts = list(_pubsub._parts(segments, per, skip))
        got = [[sid, *(also.decode() if also else [])] for sid, also, _ in parts]
        assert [sid for each in got for sid in each] == [3, 300, 30, 70_000, 4][skip:]
        assert all(len(each) <= per + 1 for each in got)


def test_workers_get_published_messages_one_per_round_robin_group() -> None:
    workers = SubjectIndex()
    router = make_router(workers)
    linked = []
    for name, group, mode in [("b1", "audit", "broadcast"), ("b2", "audit", "broadcast"),
                              ("r1", "svc", "round_robin"), ("r2", "svc", "round_robin")]:  # fmt: skip
        worker = Worker(name, print, patterns=("ev.>", "ev.*"), group=group, mode=mode)
        for pattern in worker.patterns:
            workers.add(pattern, worker)
        linked.append(worker)
    b1, b2, r1, r2 = linked
    for _ in range(4):
        pub(router, "ev.x")
    assert sids(b1) == sids(b2) == [0] * 4  # every broadcast worker, once per publish
    assert len(r1.items) == len(r2.items) == 2  # round robin: one worker each time


def test_a_qos_1_publish_is_acked_after_routing() -> None:
    router = make_router()
    publisher = pub(router, "nobody.listens", qos=1, mid=9)
    [ack] = publisher.sent
    assert type(ack) is Ack and ack.cid == 9


# ---------------------------------------------------------------------------------------
# Retained replay


def retain(router: PubSubRouter, count: int, prefix: str = "r") -> None:
    for i in range(count):
        pub(router, f"{prefix}.{i}", payload=i, retain=True)


def test_a_subscribe_replays_the_retained_messages_it_matches() -> None:
    router = make_router()
    retain(router, 3)
    late = client("late")
    sub(router, late, 5, "r.*")
    replayed = [message_of(item) for item in late.items]
    assert sorted(m.subject for m in replayed) == ["r.0", "r.1", "r.2"]
    assert all(m.sid == 5 and m.also == () and m.retained for m in replayed)  # the new one only


def test_a_repeated_identical_subscribe_changes_nothing_and_replays_nothing() -> None:
    router = make_router()
    retain(router, 3)
    c = client()
    for _ in range(100):
        sub(router, c, 1, ">")
    assert len(c.items) == 3 and errors(c) == []
    assert list(c.subscriptions) == [1]
    sub(router, c, 1, ">", queue="q")  # another queue: a new subscription, replayed
    assert len(c.items) == 6 and c.subscriptions[1].queue == "q"
    sub(router, c, 1, "r.0", queue="q")  # another pattern: likewise
    assert len(c.items) == 7


def test_a_connections_replays_are_bounded_by_an_allowance_that_comes_back_in_time() -> None:
    router = make_router(max_retained=8)  # (eighths of REPLAY_REFILL: exact times)
    retain(router, 8)
    c = client()
    sub(router, c, 1, ">", now=100.0)
    assert len(c.items) == 8  # the whole allowance
    sub(router, c, 2, "r.*", now=100.0)
    [busy] = errors(c)
    assert busy.code == ErrorCode.BUSY and busy.cid == 1002
    assert busy.retry_after == REPLAY_REFILL  # when the allowance is full again
    assert list(c.subscriptions) == [1] and len(c.items) == 8  # refused: nothing changed
    one_back = 100.0 + REPLAY_REFILL / 8
    sub(router, c, 3, "r.1", now=one_back)  # one came back: enough for one
    assert len(c.items) == 9 and list(c.subscriptions) == [1, 3]
    sub(router, c, 4, "r.*", now=one_back)  # none left
    assert errors(c)[-1].retry_after == REPLAY_REFILL
    sub(router, c, 4, "nothing.retained.here", now=one_back)
    assert 4 in c.subscriptions  # a Subscribe that replays nothing costs nothing
    sub(router, c, 5, "r.*", now=one_back + REPLAY_REFILL)
    assert len(c.items) == 17 and 5 in c.subscriptions
    other = client("other")  # the allowance is per connection
    sub(router, other, 1, ">", now=one_back + REPLAY_REFILL)
    assert len(other.items) == 8


def test_a_refused_resubscribe_keeps_the_subscription_it_would_have_replaced() -> None:
    router = make_router(max_retained=4)
    retain(router, 4)
    c = client()
    sub(router, c, 1, "r.*")
    sub(router, c, 1, ">")  # the same sid, another pattern: refused, "r.*" stays
    assert errors(c)[0].code == ErrorCode.BUSY
    pub(router, "r.9")
    assert c.subscriptions[1].pattern == "r.*" and sids(c)[-1] == 1


def test_the_subscription_limit_still_applies() -> None:
    router = make_router(max_subscriptions=2)
    c = client()
    for sid in (1, 2, 3):
        sub(router, c, sid, f"s.{sid}")
    [refused] = errors(c)
    assert refused.code == ErrorCode.NOT_PERMITTED and list(c.subscriptions) == [1, 2]
    sub(router, c, 2, "s.other")  # replacing one is fine
    assert c.subscriptions[2].pattern == "s.other"


def test_a_client_leaving_takes_its_subscriptions_and_allowance_along() -> None:
    router = make_router(max_retained=5)
    retain(router, 5)
    c, d = client("c"), client("d")
    sub(router, c, 1, ">")
    sub(router, c, 2, ">", queue="q", now=REPLAY_REFILL)  # (its allowance back in full)
    sub(router, d, 1, ">", queue="q")
    router.client_left(c)
    assert c.subscriptions == {} and c not in router._replays
    assert list(router._entries) == [d]
    assert [g.members for g in router._groups.values()] == [[d.subscriptions[1]]]
    pub(router, "z")
    assert sids(d)[-1] == 1 and len(c.items) == 10


def test_matching_retained_subjects_stops_at_its_limit() -> None:
    retained = RetainedMessages(max_count=100, max_bytes=100_000)
    for i in range(50):
        retained.put(f"a.{i}", i, {}, 10)
    assert len(retained.matching(">")) == 50
    assert len(retained.matching(">", limit=7)) == 7
    assert len(retained.matching("a.*", limit=3)) == 3
    assert retained.matching("a.4", limit=1) == ["a.4"]
    assert retained.matching(">", limit=0) == []


def test_the_routes_kept_are_bounded() -> None:
    from actors.leader._pubsub import MAX_ROUTE_ENTRIES, MAX_ROUTES

    router = make_router()
    c = client()
    sub(router, c, 1, ">")
    for i in range(MAX_ROUTES + 10):
        pub(router, f"s.{i}")
    assert len(c.items) == MAX_ROUTES + 10
    assert len(router._routes) <= MAX_ROUTES and router._routes_size <= MAX_ROUTE_ENTRIES


def test_the_routes_kept_count_the_sids_they_name() -> None:
    from actors.leader._pubsub import MAX_ROUTE_ENTRIES

    router = make_router()
    c = client()
    for sid in range(10_000):
        sub(router, c, sid, ">")
    for i in range(12):
        pub(router, f"s.{i % 8}")
    assert named(c) == [list(range(10_000))] * 12
    assert len(router._routes) <= MAX_ROUTE_ENTRIES // 10_000
    assert router._routes_size <= MAX_ROUTE_ENTRIES


def test_few_subscriptions_get_a_deliver_each_and_more_one_naming_them_all(monkeypatch) -> None:
    """The leader's default: up to SEPARATE_DELIVERS subscriptions of a connection get a
    Deliver each (as NATS sends them); one more, and one Deliver names them all."""
    monkeypatch.setattr(_pubsub, "SEPARATE_DELIVERS", 16)
    router = make_router()
    few, many = client("few"), client("many")
    for i in range(16):
        sub(router, few, i, "f.>")
    for i in range(17):
        sub(router, many, i, "m.>")
    pub(router, "f.x")
    pub(router, "m.x")
    assert [len(d) for d in named(few)] == [1] * 16 and sorted(sids(few)) == list(range(16))
    assert [sorted(d) for d in named(many)] == [list(range(17))]


def test_a_retained_subject_is_charged_for_its_tokens() -> None:
    """Each token of a retained subject is a trie node of the leader's: charged NODE_COST,
    so that max_bytes bounds the memory held, not only the payloads."""
    from actors.leader._retained import NODE_COST

    retained = RetainedMessages(max_count=1000, max_bytes=17 * NODE_COST)
    long = ".".join(["t"] * 16)
    retained.put(long, None, {}, 9)
    assert retained.bytes == 9 + 16 * NODE_COST
    retained.put("a.b", None, {}, 9)  # over max_bytes with the first: the oldest goes
    assert list(retained) == ["a.b"] and retained.bytes == 9 + 2 * NODE_COST
    retained.put(".".join(["t"] * 21), None, {}, 1)  # over max_bytes by itself: not kept
    assert list(retained) == ["a.b"]
