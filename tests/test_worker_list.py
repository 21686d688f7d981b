"""Which workers a leader has and in what state (``actors/leader/_workers.py``):
``Leader.worker_list`` pages and filters, online / stale / offline, the bounded memory of
departed workers, and what is kept of a Hello's ``meta`` (never a hostile peer's raw text).

The states are checked over real loopback TCP under the autojump clock, against raw peers
that speak frames by hand: one answers the leader's Pings, one says Hello and falls silent.
"""

from __future__ import annotations

import gc
import json
import os
import socket
import time
import tracemalloc
from collections.abc import AsyncIterator, Callable
from functools import partial
from typing import Any

import pytest
import trio
import trio.testing

from actors.leader import Leader
from actors.leader._api import answer
from actors.leader._links import (
    MAX_META_HOST,
    WorkerLink,
    peer_address,
    sanitized_meta,
)
from actors.leader._workers import (
    DEPARTED_TTL,
    MAX_DEPARTED_SUBJECTS,
    MAX_DEPARTED_WORKERS,
    MAX_LISTED_SUBJECT_BYTES,
    MAX_LISTED_SUBJECTS,
    MAX_SUBJECT_CHARS,
    MAX_WORKER_PAGE,
    DepartedWorkers,
    listed_subjects,
    worker_list,
    worker_state,
)
from actors.worker import WorkerRunner
from protocol import MAX_SUBJECT_LENGTH, Error, Hello, Ping, Pong, Welcome
from tests.helpers import RawPeer, Stopwatch
from tests.workers import Echo

HEARTBEAT = 2.0
W_KEYS = {
    "name", "group", "subjects", "subjects_total", "window", "in_flight", "host", "pid",
    "peer", "connected_at", "last_heard", "state", "left_at",
}  # fmt: skip


def fake_worker(
    name: str, group: str, *, heard: Callable[[], float] | None = None, **kw: Any
) -> WorkerLink:
    """A worker link without a connection (``heard``: its last_heard)."""
    if heard is not None:
        kw["last_heard"] = heard
    kw.setdefault("patterns", (f"{group}.job",))
    return WorkerLink(name, [].append, group=group, window=4, **kw)


# --------------------------------------------------------------------------- meta


@pytest.mark.parametrize(
    ("meta", "kept"),
    [
        ({"host": "box-1", "pid": 42}, {"host": "box-1", "pid": 42}),
        (
            {"host": "box-1", "pid": 42, "version": "1.0", "extra": {"a": 1}},
            {"host": "box-1", "pid": 42},
        ),
        ({"host": "h" * MAX_META_HOST}, {"host": "h" * MAX_META_HOST}),
        ({"host": "h" * (MAX_META_HOST + 1)}, {}),  # too long: dropped, not cut
        ({"host": "x" * 10_000_000, "pid": 1}, {"pid": 1}),
        ({"host": ""}, {}),
        ({"host": "evil\x1b[2J\nhost"}, {}),  # control characters: dropped
        ({"host": b"box"}, {}),
        ({"host": ["box"]}, {}),
        ({"pid": True}, {}),  # a bool is no pid
        ({"pid": -1}, {}),
        ({"pid": 2**64}, {}),
        ({"pid": "42"}, {}),
        ({"pid": 4.2}, {}),
        ("not a map", {}),
        (None, {}),
        ({1: "x", "host": "ok"}, {"host": "ok"}),
    ],
)
def test_only_a_host_and_a_pid_of_the_right_shape_are_kept(meta: Any, kept: dict[str, Any]):
    assert sanitized_meta(meta) == kept
    link = fake_worker("w", "g", meta=meta)
    assert link.meta == kept


def test_a_peer_address_is_host_and_port():
    assert peer_address("tcp://127.0.0.1:5341") == "127.0.0.1:5341"
    assert peer_address("wss://[::1]:443") == "[::1]:443"
    assert peer_address("tcp://?") is None
    assert peer_address("") is None


# --------------------------------------------------------------------------- departed


def test_departed_workers_are_bounded_and_the_oldest_go_first():
    departed = DepartedWorkers()
    for i in range(MAX_DEPARTED_WORKERS + 5):
        departed.add(fake_worker(f"w{i}", "g"), i / 100, 1000.0 + i)
    assert len(departed) == MAX_DEPARTED_WORKERS == 1000
    names = [d.name for d in departed.newest_first(11.0)]
    assert names[0] == f"w{MAX_DEPARTED_WORKERS + 4}" and names[-1] == "w5"


def test_departed_workers_age_out_and_a_return_forgets_its_departure():
    departed = DepartedWorkers(capacity=10, ttl=600.0)
    departed.add(fake_worker("a", "g"), 0.0, 1000.0)
    departed.add(fake_worker("a", "other"), 1.0, 1001.0)
    departed.forget("g", "a")  # it connected again
    assert [d.group for d in departed.newest_first(2.0)] == ["other"]
    departed.forget("g", "a")  # (nothing more of it: nothing happens)
    assert len(departed.newest_first(601.0)) == 1
    assert departed.newest_first(601.5) == []  # (1.0 + 600 has passed)
    with pytest.raises(ValueError, match="capacity and ttl"):
        DepartedWorkers(capacity=-1)
    off = DepartedWorkers(capacity=0)
    off.add(fake_worker("a", "g"), 0.0, 0.0)
    assert len(off) == 0


def test_workers_sharing_a_name_and_group_each_have_their_departure():
    # Two processes started alike (same name, same group): each connection that ends is
    # remembered on its own, and a return forgets one departure (the latest), not both.
    departed = DepartedWorkers(capacity=10, ttl=600.0)
    first = fake_worker("twin", "g", peer="10.0.0.1:1000")
    second = fake_worker("twin", "g", peer="10.0.0.2:2000")
    departed.add(first, 0.0, 1000.0)
    departed.add(second, 1.0, 1001.0)
    assert [d.peer for d in departed.newest_first(1.0)] == ["10.0.0.2:2000", "10.0.0.1:1000"]
    departed.forget("g", "twin")  # one of them came back
    assert [d.peer for d in departed.newest_first(1.0)] == ["10.0.0.1:1000"]
    departed.add(second, 2.0, 1002.0)  # it left again
    departed.forget("g", "twin")
    departed.forget("g", "twin")
    assert departed.newest_first(2.0) == []
    # Evicted departures leave no trace in the index by name (the oldest go first).
    small = DepartedWorkers(capacity=2, ttl=600.0)
    for i in range(5):
        small.add(fake_worker("twin", "g", peer=f"10.0.0.{i}:1"), float(i), 1000.0 + i)
    assert [d.peer for d in small.newest_first(5.0)] == ["10.0.0.4:1", "10.0.0.3:1"]
    small.forget("g", "twin")
    small.forget("g", "twin")
    small.forget("g", "twin")
    assert len(small) == 0 and small._by_name == {}
    small.add(fake_worker("twin", "g"), 5.0, 1005.0)
    assert small.newest_first(700.0) == [] and small._by_name == {}  # (aged out)


async def test_a_live_twin_and_a_departed_one_are_both_listed():
    leader = Leader(memory=True)
    now = trio.current_time()
    stays = fake_worker("twin", "g", peer="10.0.0.1:1")
    leaves = fake_worker("twin", "g", peer="10.0.0.2:2")
    for worker in (stays, leaves):
        leader.broker.worker_joined(worker, now)
    leader.broker.worker_left(leaves, now)
    leader.departed_workers.add(leaves, now, 1000.0)
    listing = leader.worker_list()
    assert [(w["state"], w["peer"]) for w in listing["workers"]] == [
        ("online", "10.0.0.1:1"),
        ("offline", "10.0.0.2:2"),
    ]


def test_a_departed_worker_keeps_a_few_cut_subjects():
    patterns = tuple(f"s.{i}" for i in range(1024))
    departed = DepartedWorkers()
    departed.add(fake_worker("many", "g", patterns=patterns), 0.0, 1.0)
    [entry] = [d.entry() for d in departed.newest_first(0.0)]
    assert (
        entry["subjects"] == list(patterns[:MAX_DEPARTED_SUBJECTS]) and MAX_DEPARTED_SUBJECTS == 5
    )
    assert entry["subjects_total"] == 1024
    assert entry["state"] == "offline" and entry["left_at"] == 1.0 and entry["in_flight"] == 0


def hostile_patterns(tag: str, count: int = 1024) -> tuple[str, ...]:
    """As many patterns as a worker may serve, each of MAX_SUBJECT_LENGTH characters."""
    return tuple(f"{tag}.p{k:04d}." + "x" * (MAX_SUBJECT_LENGTH - 16) for k in range(count))


def test_departed_workers_keep_a_few_megabytes_whatever_their_workers_served():
    # 1,000 departures of workers with 1,024 patterns of 4,096 characters each (and
    # names of 256): the records hold what a listing shows, not what the workers served.
    # (Each worker's first patterns are its own: a record that kept them would count.)
    others = hostile_patterns("shared", 1024 - 8)
    gc.collect()
    tracemalloc.start()
    try:
        departed = DepartedWorkers()
        for w in range(MAX_DEPARTED_WORKERS):
            link = fake_worker(
                "n" * 250 + f"{w:06d}",
                "g" * 256,
                patterns=hostile_patterns(f"w{w:04d}", 8) + others,
                meta={"host": "h" * 255, "pid": 1},
                peer="[2001:db8::1]:65535",
            )
            departed.add(link, 0.0, 0.0)
            del link
        gc.collect()
        retained, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(departed) == MAX_DEPARTED_WORKERS
    assert retained < 5 * 2**20, f"{retained / 2**20:.1f} MiB"  # (was 396 MiB)
    [entry] = [d.entry() for d in departed.newest_first(0.0)[:1]]
    assert len(entry["subjects"]) == MAX_DEPARTED_SUBJECTS
    assert all(len(s) == MAX_SUBJECT_CHARS + 1 and s.endswith("…") for s in entry["subjects"])
    assert entry["subjects_total"] == 1024


@pytest.mark.parametrize(
    "pattern",
    [
        "a." + "x" * (MAX_SUBJECT_LENGTH - 2),  # long, plain
        "a." + '"' * 300,  # escaped: two bytes each
        "a." + "\x01" * 300,  # control characters: six bytes each in JSON
        "a." + "é" * 300,  # two bytes of UTF-8 each
        "a." + "\U0001f600" * 300,  # four
    ],
)
def test_listed_subjects_are_cut_and_within_their_bytes(pattern):
    listed = listed_subjects([pattern] * 1024)
    assert 0 < len(listed) <= MAX_LISTED_SUBJECTS
    assert all(s == pattern[:MAX_SUBJECT_CHARS] + "…" for s in listed)
    size = len(json.dumps(list(listed), ensure_ascii=False, separators=(",", ":")).encode())
    assert size <= MAX_LISTED_SUBJECT_BYTES
    short = [f"s.{i}" for i in range(100)]
    assert (
        listed_subjects(short) == tuple(short[:MAX_LISTED_SUBJECTS]) and MAX_LISTED_SUBJECTS == 20
    )
    assert listed_subjects(()) == ()


async def test_a_page_of_a_thousand_hostile_workers_is_a_few_megabytes_built_quickly():
    leader = Leader(memory=True)
    now = trio.current_time()
    patterns = hostile_patterns("w", 100)
    for w in range(MAX_WORKER_PAGE):
        leader.broker.worker_joined(
            fake_worker(
                "n" * 250 + f"{w:06d}",
                "g" * 256,
                patterns=patterns,
                meta={"host": "h" * 255, "pid": 2**31},
                peer="[2001:db8::1]:65535",
            ),
            now,
        )
    started = time.perf_counter()
    body = answer(200, leader.worker_list(limit=MAX_WORKER_PAGE)).body
    seconds = time.perf_counter() - started
    page = json.loads(body)
    assert len(page["workers"]) == MAX_WORKER_PAGE
    assert len(body) < 4 * 2**20, f"{len(body) / 2**20:.1f} MiB"  # (was 390 MiB)
    assert seconds < 0.1, f"{seconds:.3f} s"  # (about 25 ms here)
    entry = page["workers"][0]
    assert entry["subjects_total"] == 100 and 0 < len(entry["subjects"]) <= MAX_LISTED_SUBJECTS


async def test_a_groups_patterns_in_the_statistics_are_a_few_cut_and_all_counted():
    # The statistics list a group's first patterns (cut) and count them all, kept as
    # workers join and leave: no pass over every worker's patterns, no megabytes.
    leader = Leader(memory=True)
    broker = leader.broker
    now = trio.current_time()

    def patterns(tag: str) -> tuple[str, ...]:  # (1,024 of 300 characters)
        return tuple(f"{tag}.p{k:04d}." + "x" * 288 for k in range(1024))

    workers = [fake_worker(f"w{w}", "many", patterns=patterns(f"w{w:04d}")) for w in range(50)]
    for worker in workers:
        broker.worker_joined(worker, now)
    shared = fake_worker("s", "many", patterns=patterns("w0000")[:10])
    broker.worker_joined(shared, now)
    started = time.perf_counter()
    group = leader.stats()["groups"]["many"]
    seconds = time.perf_counter() - started
    assert group["patterns_total"] == 50 * 1024
    assert len(group["patterns"]) == MAX_LISTED_SUBJECTS
    assert all(len(p) == MAX_SUBJECT_CHARS + 1 for p in group["patterns"])
    assert len(json.dumps(group)) < 8 * 1024 and seconds < 0.5
    broker.worker_left(workers[0], now)  # (its first ten patterns are still served)
    assert leader.stats()["groups"]["many"]["patterns_total"] == 49 * 1024 + 10
    broker.worker_left(shared, now)
    for worker in workers[1:]:
        broker.worker_left(worker, now)
    left = leader.stats()["groups"]["many"]
    assert left["patterns"] == [] and left["patterns_total"] == 0
    assert broker.group_stats["many"].patterns == {}


async def test_where_workers_run_is_for_admins():
    leader = Leader(memory=True)
    now = trio.current_time()
    leader.broker.worker_joined(
        fake_worker("w", "g", meta={"host": "box", "pid": 7}, peer="10.1.2.3:4567"), now
    )
    gone = fake_worker("v", "g", meta={"host": "box2", "pid": 8}, peer="10.1.2.4:1")
    leader.departed_workers.add(gone, now, 1000.0)
    shown = worker_list(leader)["workers"]
    assert [(w["host"], w["pid"], w["peer"]) for w in shown] == [
        ("box", 7, "10.1.2.3:4567"),
        ("box2", 8, "10.1.2.4:1"),
    ]
    hidden = worker_list(leader, show_hosts=False)["workers"]
    assert [(w["host"], w["pid"], w["peer"]) for w in hidden] == [(None, None, None)] * 2
    assert [w["name"] for w in hidden] == ["w", "v"]


def test_stale_is_more_than_one_and_a_half_heartbeats_of_silence():
    heard = 10.0
    worker = fake_worker("w", "g", heard=lambda: heard)
    assert worker_state(worker, 10.0 + 3.0, HEARTBEAT) == "online"
    assert worker_state(worker, 10.0 + 3.01, HEARTBEAT) == "stale"
    assert worker_state(worker, 1e9, None) == "online"  # no heartbeats: silence says nothing
    assert worker_state(fake_worker("x", "g"), 1e9, HEARTBEAT) == "online"  # no connection


# --------------------------------------------------------------------------- paging


async def test_pages_and_filters():
    leader = Leader(memory=True, heartbeat=HEARTBEAT)
    now = trio.current_time()
    broker = leader.broker
    for i in range(250):
        group = ("alpha", "beta", "gamma")[i % 3]
        heard = now - 10.0 if i % 10 == 0 else now  # every tenth is silent
        broker.worker_joined(fake_worker(f"w{i:03}", group, heard=lambda h=heard: h), now)
    for i in range(7):
        leader.departed_workers.add(fake_worker(f"gone{i}", "alpha"), now, 5000.0 + i)

    everything = leader.worker_list(limit=1000)
    assert everything["total"] == 257 and len(everything["workers"]) == 257
    entries = everything["workers"]
    assert all(set(w) == W_KEYS for w in entries)
    live = entries[:250]
    assert [(w["group"], w["name"]) for w in live] == sorted((w["group"], w["name"]) for w in live)
    assert [w["name"] for w in entries[250:]] == [f"gone{i}" for i in reversed(range(7))]
    assert sum(w["state"] == "stale" for w in entries) == 25
    assert sum(w["state"] == "offline" for w in entries) == 7

    # Pages cover the list once, in order, across the connected/departed boundary.
    seen = []
    offset = 0
    while True:
        page = leader.worker_list(offset=offset, limit=40)
        assert page["total"] == 257 and page["offset"] == offset and page["limit"] == 40
        if not page["workers"]:
            break
        seen += page["workers"]
        offset += 40
    assert [w["name"] for w in seen] == [w["name"] for w in entries]

    alpha = leader.worker_list(group="alpha", limit=1000)
    assert alpha["total"] == 84 + 7
    assert {w["group"] for w in alpha["workers"]} == {"alpha"}
    stale = leader.worker_list(state="stale")
    assert stale["total"] == 25 and {w["state"] for w in stale["workers"]} == {"stale"}
    offline = leader.worker_list(state="offline", offset=5)
    assert offline["total"] == 7 and [w["name"] for w in offline["workers"]] == ["gone1", "gone0"]
    online_beta = leader.worker_list(state="online", group="beta", limit=5)
    assert online_beta["total"] == 83 - 8 and len(online_beta["workers"]) == 5
    assert leader.worker_list(group="nobody") == {
        "total": 0,
        "offset": 0,
        "limit": 100,
        "workers": [],
    }
    assert leader.worker_list(offset=10_000)["workers"] == []
    assert leader.worker_list(limit=0)["workers"] == []
    assert leader.worker_list(limit=10**9)["limit"] == MAX_WORKER_PAGE == 1000

    stats = leader.stats()
    assert (stats["workers_online"], stats["workers_stale"]) == (225, 25)
    assert stats["groups"]["alpha"]["workers_stale"] == 9


@pytest.mark.parametrize(
    ("kw", "error"),
    [
        ({"offset": -1}, ValueError),
        ({"limit": -1}, ValueError),
        ({"state": "up"}, ValueError),
        ({"state": "x" * 10_000}, ValueError),
        ({"offset": "0"}, TypeError),
        ({"limit": 1.5}, TypeError),
        ({"limit": True}, TypeError),
        ({"group": 3}, TypeError),
    ],
)
async def test_bad_arguments_are_refused(kw: dict[str, Any], error: type[Exception]):
    leader = Leader(memory=True)
    with pytest.raises(error) as info:
        leader.worker_list(**kw)
    assert len(str(info.value)) < 300


# --------------------------------------------------------------------------- over TCP


@pytest.fixture
async def opened() -> AsyncIterator[list[trio.abc.Stream]]:
    """The streams a test opened, closed when it ends."""
    streams: list[trio.abc.Stream] = []
    yield streams
    for stream in streams:
        await stream.aclose()


async def raw_worker(url: str, name: str, opened: list[trio.abc.Stream], **hello: Any) -> RawPeer:
    """A worker's connection, spoken by hand: Hello, Welcome, then nothing unless the
    test says."""
    host, port = url.removeprefix("tcp://").rsplit(":", 1)
    stream = await trio.open_tcp_stream(host, int(port))
    opened.append(stream)
    peer = RawPeer(stream)
    hello.setdefault("patterns", ("jobs.x",))
    await peer.send(Hello(mid=0, role="worker", name=name, group="raw", credit=1, **hello))
    answer = await peer.receive()
    assert type(answer) is Welcome, answer
    return peer


async def answer_pings(peer: RawPeer) -> None:
    """What a live worker does when idle: answer each Ping."""
    mid = 1
    while True:
        try:
            message = await peer.receive()
        except (EOFError, trio.BrokenResourceError, trio.ClosedResourceError):
            return
        if type(message) is Ping:
            await peer.send(Pong(mid=mid, cid=message.mid))
            mid += 1


def by_name(leader: Leader) -> dict[str, dict[str, Any]]:
    return {w["name"]: w for w in leader.worker_list(limit=1000)["workers"]}


async def test_a_silent_worker_goes_stale_then_offline_then_is_forgotten(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock, opened: list[trio.abc.Stream]
):
    leader = Leader(listen=["tcp://127.0.0.1:0"], memory=True, heartbeat=HEARTBEAT)
    [url] = await nursery.start(leader.run)
    clock = Stopwatch()
    live = await raw_worker(url, "live", opened, meta={"host": "box-1", "pid": 4242})
    nursery.start_soon(answer_pings, live)
    silent = await raw_worker(
        url, "silent", opened, meta={"host": "x" * 100_000, "pid": "7", "junk": [1] * 1000}
    )
    joined = clock()
    workers = by_name(leader)
    assert workers["live"]["state"] == workers["silent"]["state"] == "online"
    assert (workers["live"]["host"], workers["live"]["pid"]) == ("box-1", 4242)
    assert (workers["silent"]["host"], workers["silent"]["pid"]) == (None, None)  # dropped
    assert workers["live"]["peer"].startswith("127.0.0.1:")
    assert workers["live"]["subjects"] == ["jobs.x"] and workers["live"]["window"] == 1
    assert workers["live"]["group"] == "raw" and workers["live"]["left_at"] is None

    # Past 1.5 heartbeats the silent one (which answered no Ping) is stale; the other not.
    await trio.sleep(joined + 1.5 * HEARTBEAT + 0.5 - clock())
    workers = by_name(leader)
    assert (workers["live"]["state"], workers["silent"]["state"]) == ("online", "stale")
    assert leader.stats()["workers_stale"] == 1 and leader.stats()["workers_online"] == 1
    assert workers["silent"]["last_heard"] < workers["live"]["last_heard"]

    # At three heartbeats the leader declares it dead and closes it: offline.
    while True:
        try:
            message = await silent.receive()
        except EOFError:
            break
        if type(message) is Error:
            assert message.code == "heartbeat_timeout"
    await trio.testing.wait_all_tasks_blocked()
    workers = by_name(leader)
    assert workers["silent"]["state"] == "offline"
    assert workers["silent"]["left_at"] is not None and workers["silent"]["in_flight"] == 0
    assert leader.worker_list(state="offline")["total"] == 1

    # Remembered for ten minutes.
    await trio.sleep(DEPARTED_TTL - 10)
    assert "silent" in by_name(leader)
    await trio.sleep(20)
    assert "silent" not in by_name(leader)
    assert by_name(leader)["live"]["state"] == "online"


async def test_a_worker_that_comes_back_replaces_its_offline_entry(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock, opened: list[trio.abc.Stream]
):
    leader = Leader(listen=["tcp://127.0.0.1:0"], memory=True, heartbeat=HEARTBEAT)
    [url] = await nursery.start(leader.run)
    first = await raw_worker(url, "w", opened)
    await first.stream.aclose()
    await trio.testing.wait_all_tasks_blocked()
    assert [w["state"] for w in leader.worker_list()["workers"]] == ["offline"]
    second = await raw_worker(url, "w", opened)
    nursery.start_soon(answer_pings, second)
    assert [w["state"] for w in leader.worker_list()["workers"]] == ["online"]


@pytest.mark.e2e
async def test_a_real_worker_says_its_host_and_pid(nursery: trio.Nursery):
    leader = Leader(listen=["tcp://127.0.0.1:0"], memory=True)
    [url] = await nursery.start(leader.run)
    with trio.fail_after(10):
        await nursery.start(partial(WorkerRunner(Echo(), url, name="echo-1", group="echo").run))
        [worker] = leader.worker_list()["workers"]
    assert worker["name"] == "echo-1" and worker["group"] == "echo"
    assert worker["pid"] == os.getpid()
    expected_host = socket.gethostname()
    assert worker["host"] == (expected_host if len(expected_host) <= MAX_META_HOST else None)
    assert worker["subjects"] == ["test.echo"] and worker["state"] == "online"
