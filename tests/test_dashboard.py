"""The dashboard's feed (``actors/leader/_dashboard.py``), its permission, its page's files.

- :class:`History`: a ring of per-second samples, bounded, differences of the groups'
  counters and histograms, started again after a gap.
- :func:`build_snapshot`: bounded whatever the leader holds (1,000 subjects of 4,000
  characters, 300 groups and workers of long names and patterns).
- :class:`DashboardFeed` on a leader over memory streams (``autojump_clock``: times are
  exact): a subscription's first snapshot carries the history, the next ones come a
  second apart with the newest sample; snapshots are built at most once a second for
  everyone and only while someone subscribes; one Deliver names all of a connection's
  subscriptions; subscribing again and again gets no more; a connection that cannot take
  a snapshot misses it and stays.
- The permission: every identity may subscribe to exactly ``$sys.dashboard``; ``$sys.>``,
  ``$>`` and the other ``$`` patterns stay refused to non-admins; ``>`` never delivers
  ``$sys.dashboard`` (not even to an admin: only exact subscriptions are fed).
- HTTP: ``/`` is the dashboard under a strict policy (connections to its own server
  only), told whether it needs a token; its files are an allow-list, public; no listener
  is added for it.
- ``/ws`` on the HTTP port (``actors/leader/_feed.py``): a feed connection that gets the
  snapshots and may do nothing else (Submit, Publish, Cancel, Query, other subscriptions,
  a worker's Hello: ``not_permitted``), read-only or not; with the Host and Origin checks
  of HTTP (a foreign origin 403, DNS rebinding 403, its own origin by any name beyond
  loopback with users), the leader's tokens, its admission bounds (503) and frame limit,
  a text message or a silent peer closed.
"""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from types import SimpleNamespace
from typing import Any

import cbor2
import pytest
import trio
import trio.testing
import trio_websocket

import protocol
import runtime
from actors import AuthConfig, Leader, User
from actors.client import Client
from actors.cluster import run_cluster
from actors.cluster._config import config_from_args
from actors.leader._dashboard import (
    DASHBOARD_SUBJECT,
    MAX_PATTERN_CHARS,
    MAX_SNAPSHOT_BYTES,
    MAX_SNAPSHOT_GROUPS,
    MAX_SNAPSHOT_PATTERNS,
    MAX_SNAPSHOT_SUBJECTS,
    MAX_SNAPSHOT_WORKERS,
    MAX_WATCHING_SIDS,
    History,
    build_snapshot,
)
from actors.leader._feed import FEED_MAX_FRAME, FEED_MAX_MESSAGE, FORCED_CLOSE_WAIT, AsgiWire
from actors.leader._http import DASHBOARD_DIR, HttpApp, example_files
from actors.leader._leader import FEED_ONLY
from actors.leader._links import ClientLink, GroupStats, WorkerLink
from actors.leader._stats import count_result
from protocol import (
    Assign,
    Cancel,
    Deliver,
    Encoded,
    Error,
    ErrorCode,
    Hello,
    Publish,
    Query,
    Result,
    Session,
    Submit,
    Subscribe,
    Unsubscribe,
    Welcome,
)
from runtime import HandshakeError
from runtime._connection import Connection
from runtime._transports import running
from runtime._wire import StreamWire
from tests.helpers import RawPeer, Stopwatch, wait_until
from tests.test_http import request

ADMIN = "a" * 12 + "-admin-token-0001"
VIEWER = "v" * 12 + "-viewer-token-001"
EVERYTHING = "e" * 12 + "-everything-tok-1"


def users() -> AuthConfig:
    return AuthConfig(
        users=(
            User(name="ops", tokens=(ADMIN,), subscribe=[">"], submit=[">"], admin=True),
            # may subscribe to events only: the dashboard is open to it all the same
            User(name="viewer", tokens=(VIEWER,), subscribe=["events.>"]),
            User(name="all", tokens=(EVERYTHING,), subscribe=[">"], submit=[">"], serve=[">"]),
        )
    )


@asynccontextmanager
async def feed_leader(
    *, keep_history: bool = False, **kw: Any
) -> AsyncIterator[tuple[Leader, Any]]:
    """A leader served over memory streams (its timer and dashboard feed running, no
    listener; the history kept as with HTTP if ``keep_history``), and
    ``connect(hello)`` giving a :class:`RawPeer` past its Welcome."""
    kw.setdefault("heartbeat", None)
    leader = Leader(listen=[], memory=True, **kw)
    leader.dashboard.keep_history = keep_history
    async with trio.open_nursery() as nursery:
        await nursery.start(leader._timer_loop)
        await nursery.start(leader.dashboard.run)

        async def connect(hello: Hello) -> RawPeer:
            local, remote = trio.testing.memory_stream_pair()
            conn = Connection(
                StreamWire(local), Session(side="server", heartbeat=None), "memory://peer", "tcp"
            )

            async def serve() -> None:
                async with running(conn):
                    await leader._handle_connection(conn)

            nursery.start_soon(serve)
            peer = RawPeer(remote)
            await peer.send(hello)
            welcome = await peer.receive()
            assert type(welcome) is Welcome, welcome
            return peer

        yield leader, connect
        nursery.cancel_scope.cancel()


def client(token: str | None = None, **kw: Any) -> Hello:
    return Hello(mid=0, role="client", name="c", versions=(1, 2), token=token, **kw)


def value(payload: Any) -> Any:
    return cbor2.loads(payload.data) if isinstance(payload, Encoded) else payload


async def next_deliver(peer: RawPeer) -> Deliver:
    while True:
        msg = await peer.receive()
        if isinstance(msg, Deliver):
            return msg
        assert not isinstance(msg, Error), msg


async def quiet(peer: RawPeer, seconds: float) -> list[Any]:
    """What ``peer`` receives in ``seconds``."""
    got: list[Any] = []
    with trio.move_on_after(seconds):
        while True:
            got.append(await peer.receive())
    return got


async def subscribe(peer: RawPeer, sid: int, pattern: str, queue: str | None = None) -> None:
    await peer.send(Subscribe(mid=sid, sid=sid, pattern=pattern, queue=queue))
    await trio.testing.wait_all_tasks_blocked()


# --------------------------------------------------------------------------- history


def fake_broker(groups: dict[str, GroupStats], held: int = 0, jobs: int = 0) -> Any:
    worker = WorkerLink("w", send=print, window=held)
    worker.inflight = dict.fromkeys(map(str, range(held)))  # type: ignore[arg-type]
    return SimpleNamespace(
        group_stats=groups, workers={worker: None}, jobs=dict.fromkeys(range(jobs))
    )


def test_the_history_is_a_bounded_ring_of_per_second_differences():
    stats = GroupStats()
    broker = fake_broker({"g": stats}, held=2, jobs=5)
    history = History(length=5)
    first = history.sample(broker, 0.0, 1000.0)
    assert (first.queued, first.in_flight, first.done, first.p50) == (3, 2, 0, None)
    for _ in range(98):
        count_result(stats, True, 0.02)
    count_result(stats, False, 3.0)
    count_result(stats, False, 3.0)
    second = history.sample(broker, 1.0, 1001.0)
    assert (second.done, second.failed, second.at) == (98, 2, 1001.0)
    assert second.p50 is not None and 0.01 < second.p50 <= 0.025  # (its bucket)
    assert second.p99 is not None and 2.5 < second.p99 <= 3.0  # (never over the largest)
    third = history.sample(broker, 2.0, 1002.0)
    assert (third.done, third.failed, third.p50, third.p99) == (0, 0, None, None)
    for t in range(3, 13):
        history.sample(broker, float(t), 1000.0 + t)
    assert len(history) == 5 and [s.at for s in history.samples] == [
        1008.0, 1009.0, 1010.0, 1011.0, 1012.0
    ]  # fmt: skip
    columns = history.series()
    assert columns["full"] is True and columns["interval"] == 1.0
    assert all(len(columns[name]) == 5 for name in ("at", "queued", "done", "p50", "p99"))
    newest = history.series(newest_only=True)
    assert newest["full"] is False and newest["at"] == [1012.0]
    # A gap (nobody sampled for a while): the history starts again, with no rate.
    count_result(stats, True, 0.02)
    after = history.sample(broker, 100.0, 1100.0)
    assert len(history) == 1 and after.done == 0
    # A group forgotten: its counters are not a negative rate.
    broker.group_stats = {}
    assert history.sample(broker, 101.0, 1101.0).done == 0
    with pytest.raises(ValueError, match="length must be >= 1"):
        History(length=0)
    with pytest.raises(ValueError, match="interval > 0"):
        History(interval=0)


# --------------------------------------------------------------------------- bounds


async def test_a_snapshot_is_bounded_whatever_the_leader_holds(nursery):
    leader = Leader(
        listen=["tcp://127.0.0.1:0"], memory=True, heartbeat=None, max_queued=10**6,
        route_grace=3600.0,
    )  # fmt: skip
    await nursery.start(leader.run)
    broker = leader.broker
    sink: list[Any] = []
    now = trio.current_time()
    long = "x" * 3990
    # 1,000 subjects of 4,000 characters with jobs queued (one more on the busiest)
    client_link = ClientLink("c", send=sink.append)
    for i in range(1000):
        for k in range(2 if i % 10 == 0 else 1):
            broker.submit(
                client_link,
                Submit(mid=i, job_id=f"j{i}-{k}", subject=f"s{i:04d}.{long}", payload=None),
                now,
            )
    # 300 workers, each its own group, with names and patterns as long as allowed
    for i in range(300):
        patterns = tuple(f"w{i}.{k}.{long}" for k in range(20))
        worker = WorkerLink(
            f"{i:03d}" + "n" * 250, send=sink.append, patterns=patterns, window=1,
            group=f"{i:03d}" + "g" * 250, meta={"host": "h" * 255, "pid": 2**31},
        )  # fmt: skip
        broker.worker_joined(worker, now)
    snapshot = build_snapshot(leader, leader.dashboard.history, read_only=True, unix_now=1.0)
    stats = snapshot["stats"]
    assert len(stats["subjects"]) == MAX_SNAPSHOT_SUBJECTS
    assert stats["subjects_omitted"] == 1000 - MAX_SNAPSHOT_SUBJECTS
    assert all(name.startswith("s") and int(name[1:5]) % 10 == 0 for name in stats["subjects"])
    assert len(stats["groups"]) == MAX_SNAPSHOT_GROUPS and stats["groups_omitted"] == 100
    for group in stats["groups"].values():
        assert len(group["patterns"]) <= MAX_SNAPSHOT_PATTERNS and group["patterns_total"] == 20
        assert all(len(p) <= MAX_PATTERN_CHARS for p in group["patterns"])
    workers = snapshot["workers"]
    assert workers["total"] == 300 and len(workers["workers"]) == MAX_SNAPSHOT_WORKERS
    for worker in workers["workers"]:
        assert len(worker["subjects"]) <= MAX_SNAPSHOT_PATTERNS
        assert worker["subjects_total"] == 20
        assert all(len(p) <= MAX_PATTERN_CHARS for p in worker["subjects"])
    totals = snapshot["totals"]
    assert totals["subjects"] == 1000 and totals["groups"] == 300
    assert totals["waiting"] == 1100 - totals["in_flight"] and totals["workers_online"] == 300
    assert snapshot["read_only"] is True and snapshot["scalable"] is False
    size = len(Encoded.of({**snapshot, "history": leader.dashboard.history.series()}).data)
    assert size < MAX_SNAPSHOT_BYTES, size


# --------------------------------------------------------------------------- the feed


async def test_a_subscriber_gets_the_history_first_then_a_snapshot_a_second(autojump_clock):
    async with feed_leader() as (leader, connect):
        feed = leader.dashboard
        watcher = await connect(client())
        await trio.sleep(5.5)
        assert feed.builds == 0 and len(feed.history) == 0  # nobody watched, no HTTP
        clock = Stopwatch()
        await subscribe(watcher, 1, DASHBOARD_SUBJECT)
        first = await next_deliver(watcher)
        assert clock() == 0.0  # at once
        assert first.subject == DASHBOARD_SUBJECT and first.sid == 1 and first.also == ()
        snapshot = value(first.payload)
        assert snapshot["history"]["full"] is True and len(snapshot["history"]["at"]) == 1
        assert {"at", "node", "read_only", "scalable", "stats", "workers", "totals"} <= set(
            snapshot
        )
        times = []
        for _ in range(3):
            later = await next_deliver(watcher)
            times.append(clock())
            history = value(later.payload)["history"]
            assert history["full"] is False and len(history["at"]) == 1
        assert times == [1.0, 2.0, 3.0]
        assert len(feed.history) == 4 and feed.builds == 4
        # Unsubscribed: nothing more, and the connection is forgotten.
        await watcher.send(Unsubscribe(mid=9, sid=1))
        assert not [m for m in await quiet(watcher, 3.0) if isinstance(m, Deliver)]
        assert feed.watching == 0


async def test_one_who_subscribes_between_rounds_never_gets_the_same_snapshot_twice(
    autojump_clock,
):
    # (a leader serving HTTP: its rounds run a second apart whether anyone watches or not)
    async with feed_leader(keep_history=True) as (leader, connect):
        watcher = await connect(client())
        await trio.sleep(2.4)
        clock = Stopwatch()
        await subscribe(watcher, 1, DASHBOARD_SUBJECT)
        first = value((await next_deliver(watcher)).payload)
        assert clock() == 0.0 and first["history"]["full"] is True
        builds = [leader.dashboard.builds]
        for _ in range(3):
            later = value((await next_deliver(watcher)).payload)
            assert later["history"]["full"] is False
            builds.append(leader.dashboard.builds)
        assert clock() == pytest.approx(2.6)  # (the rounds at 3, 4 and 5)
        assert builds == [1, 2, 3, 4]  # (each a snapshot of its own)


async def test_a_late_round_does_not_put_off_the_next_update(autojump_clock):
    # A round runs a little after its time (the loop is busy): the next, an interval after
    # the first's time, is less than an interval after the late one, and still sends.
    async with feed_leader() as (leader, connect):
        feed = leader.dashboard
        watcher = await connect(client())
        await subscribe(watcher, 1, DASHBOARD_SUBJECT)
        await next_deliver(watcher)  # (the whole history, at once)
        now = trio.current_time()
        feed.send_round(now + 0.05)  # late
        feed.send_round(now + 1.0)  # on time
        updates = [m for m in await quiet(watcher, 0.001) if isinstance(m, Deliver)]
        assert len(updates) == 2
        assert [value(m.payload)["history"]["full"] for m in updates] == [False, False]


async def test_snapshots_are_built_once_a_second_for_every_subscriber(autojump_clock):
    async with feed_leader() as (leader, connect):
        peers = [await connect(client()) for _ in range(5)]
        for peer in peers:
            await subscribe(peer, 1, DASHBOARD_SUBJECT)
        await trio.sleep(3.2)
        assert leader.dashboard.builds == 4  # at 0 (the first subscriber), 1, 2 and 3
        seen = []
        for peer in peers:
            delivers = [m for m in await quiet(peer, 0.01) if isinstance(m, Deliver)]
            assert len(delivers) == 4
            seen.append([value(m.payload) for m in delivers[1:]])
        assert all(payloads == seen[0] for payloads in seen)  # (the same snapshots for all)


async def test_a_connection_gets_one_deliver_and_no_more_however_it_subscribes(autojump_clock):
    async with feed_leader() as (_leader, connect):
        peer = await connect(client())
        # Subscriptions in a burst: more than are fed, and one in a queue group (refused).
        await peer.send(
            *(
                Subscribe(mid=sid, sid=sid, pattern=DASHBOARD_SUBJECT)
                for sid in range(1, MAX_WATCHING_SIDS + 10)
            ),
            Subscribe(mid=500, sid=500, pattern=DASHBOARD_SUBJECT, queue="q"),
        )
        got = await quiet(peer, 0.5)
        refused = [m for m in got if isinstance(m, Error)]
        assert [(m.cid, m.code) for m in refused] == [(500, ErrorCode.BAD_FIELD)]
        delivers = [m for m in got if isinstance(m, Deliver)]
        assert len(delivers) == 1  # one Deliver, naming every sid fed
        named = {delivers[0].sid, *delivers[0].also}
        assert len(named) == MAX_WATCHING_SIDS and named <= set(range(1, MAX_WATCHING_SIDS + 10))
        # Subscribing again and again (new sids, within the bound) is fed at most once a
        # second with the history, and once with the update.
        for sid in range(1, 30):
            await peer.send(Unsubscribe(mid=1000 + sid, sid=sid))
        for round_ in range(20):
            sid = 2000 + round_
            await peer.send(Subscribe(mid=sid, sid=sid, pattern=DASHBOARD_SUBJECT))
            await trio.sleep(0.1)
        delivers = [m for m in await quiet(peer, 0.01) if isinstance(m, Deliver)]
        assert 2 <= len(delivers) <= 2 * 3  # (two rounds and a bit: full + update each)


async def test_a_connection_that_cannot_take_a_snapshot_misses_it_and_stays(autojump_clock):
    async with feed_leader(route_grace=3600.0) as (leader, connect):
        submitter = await connect(client())
        for i in range(200):  # subjects enough to be over 4 KiB
            await submitter.send(
                Submit(mid=i + 1, job_id=f"j{i}", subject=f"subject.{i}.{'z' * 40}", payload=1)
            )
        small = await connect(client(max_frame=4096))
        await subscribe(small, 1, DASHBOARD_SUBJECT)
        got = await quiet(small, 2.5)
        assert not [m for m in got if isinstance(m, Deliver | Error)]
        # It is still connected and served.
        await small.send(Publish(mid=2, subject="events.x", payload=1, qos=1))
        assert type(await small.receive()).__name__ == "Ack"
        assert leader.dashboard.watching == 1


async def test_jobs_show_in_the_history_and_the_snapshot(autojump_clock):
    async with feed_leader(keep_history=True) as (leader, connect):
        worker = await connect(
            Hello(mid=0, role="worker", name="w1", patterns=["jobs.>"], credit=10, group="g")
        )
        submitter = await connect(client())
        await trio.sleep(1.0)
        for i in range(10):
            await submitter.send(Submit(mid=i + 1, job_id=f"j{i}", subject="jobs.a", payload=i))
        answered = 0
        while answered < 10:
            msg = await worker.receive()
            if isinstance(msg, Assign):
                await trio.sleep(0.05)
                await worker.send(Result(mid=100 + answered, job_id=msg.job_id, payload=1))
                answered += 1
        await trio.sleep(2.0)
        samples = list(leader.dashboard.history.samples)
        assert len(samples) >= 3  # kept with nobody watching (a leader serving HTTP)
        assert sum(s.done for s in samples) == 10
        assert any(s.p50 is not None and 0.05 <= s.p50 <= 1.0 for s in samples)
        watcher = await connect(client())
        await subscribe(watcher, 1, DASHBOARD_SUBJECT)
        snapshot = value((await next_deliver(watcher)).payload)
        assert sum(snapshot["history"]["done"]) == 10
        assert snapshot["stats"]["subjects"]["jobs.a"]["done"] == 10
        assert snapshot["totals"]["done"] == 10
        assert [w["name"] for w in snapshot["workers"]["workers"]] == ["w1"]
        assert snapshot["stats"]["groups"]["g"]["latency_p50"] is not None


# --------------------------------------------------------------------------- permission


async def test_every_identity_may_watch_the_dashboard_and_no_other_system_subject(
    autojump_clock,
):
    async with feed_leader(auth=users()) as (_leader, connect):
        viewer = await connect(client(VIEWER))
        for sid, pattern in enumerate(
            ["$sys.>", "$>", "$sys.*", "$dlq.>", "$sys.dashboard.x", "*.dashboard", ">"], 10
        ):
            await viewer.send(Subscribe(mid=sid, sid=sid, pattern=pattern))
            error = await viewer.receive()
            assert isinstance(error, Error) and error.cid == sid, (pattern, error)
            assert error.code == ErrorCode.NOT_PERMITTED, (pattern, error)
        await subscribe(viewer, 1, DASHBOARD_SUBJECT)
        snapshot = await next_deliver(viewer)
        assert snapshot.sid == 1 and value(snapshot.payload)["stats"] is not None
        # Nobody publishes or submits to it.
        for token in (VIEWER, ADMIN):
            peer = await connect(client(token))
            await peer.send(Publish(mid=7, subject=DASHBOARD_SUBJECT, payload=1, qos=1))
            await peer.send(Submit(mid=8, job_id="x", subject=DASHBOARD_SUBJECT, payload=1))
            codes = set()
            while len(codes) < 2:
                msg = await peer.receive()
                if isinstance(msg, Error):
                    codes.add((msg.cid, msg.code))
            assert codes == {(7, ErrorCode.NOT_PERMITTED), (8, ErrorCode.NOT_PERMITTED)}


async def test_only_admins_are_told_where_the_workers_run(autojump_clock):
    async with feed_leader(auth=users()) as (_leader, connect):
        worker = await connect(
            Hello(
                mid=0, role="worker", name="w1", group="g", patterns=("any.thing",),
                versions=(1, 2), token=EVERYTHING, meta={"host": "box-7", "pid": 4242},
            )
        )  # fmt: skip
        assert worker is not None
        watchers = {}
        for token in (ADMIN, VIEWER):
            watchers[token] = await connect(client(token))
            await subscribe(watchers[token], 1, DASHBOARD_SUBJECT)
        for _ in range(2):  # (the full snapshot, then an update)
            seen = {}
            for token, peer in watchers.items():
                [entry] = value((await next_deliver(peer)).payload)["workers"]["workers"]
                seen[token] = (entry["name"], entry["host"], entry["pid"], entry["peer"])
            assert seen[ADMIN] == ("w1", "box-7", 4242, "peer")
            assert seen[VIEWER] == ("w1", None, None, None)


async def test_a_wildcard_never_delivers_the_dashboard(autojump_clock):
    async with feed_leader(auth=users()) as (_leader, connect):
        everything = await connect(client(EVERYTHING))  # may subscribe to > (not an admin)
        admin = await connect(client(ADMIN))
        for peer in (everything, admin):
            await subscribe(peer, 1, ">")
            await subscribe(peer, 2, "*.dashboard")
        await subscribe(admin, 3, "$sys.>")
        await subscribe(admin, 4, "$>")
        watcher = await connect(client(VIEWER))
        await subscribe(watcher, 1, DASHBOARD_SUBJECT)
        await trio.sleep(2.5)
        assert len([m for m in await quiet(watcher, 0.01) if isinstance(m, Deliver)]) == 3
        for peer in (everything, admin):
            got = await quiet(peer, 0.01)
            assert not [m for m in got if isinstance(m, Deliver | Error)], got
        # One connection with both: only its exact subscription is named.
        await subscribe(everything, 5, DASHBOARD_SUBJECT)
        await trio.sleep(1.5)
        delivers = [m for m in await quiet(everything, 0.01) if isinstance(m, Deliver)]
        assert delivers and all(m.sid == 5 and m.also == () for m in delivers)


async def test_the_dashboard_subscription_survives_a_change_of_users(autojump_clock):
    async with feed_leader(auth=users()) as (leader, connect):
        viewer = await connect(client(VIEWER))
        await subscribe(viewer, 1, DASHBOARD_SUBJECT)
        await next_deliver(viewer)
        leader.set_auth(users())
        await trio.sleep(1.0)
        assert (await next_deliver(viewer)).sid == 1


# --------------------------------------------------------------------------- HTTP


async def start_http(nursery: trio.Nursery, **settings: Any) -> Leader:
    settings.setdefault("memory", True)
    settings.setdefault("listen", ["tcp://127.0.0.1:0"])
    settings.setdefault("http", "127.0.0.1:0")
    leader = Leader(**settings)
    await nursery.start(leader.run)
    assert leader.http_url is not None
    return leader


async def test_the_dashboard_is_served_at_the_root_under_a_strict_policy(nursery):
    leader = await start_http(nursery)
    http = leader.http_url
    assert http is not None
    host = http.removeprefix("http://")
    page = await request(http, "/")
    assert page.status == 200 and page.headers["content-type"] == "text/html; charset=utf-8"
    csp = page.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src 'self';" in csp
    assert "style-src 'self';" in csp and "unsafe" not in csp
    # its API and /ws on this server, by the name it was asked by: nothing else
    assert f"connect-src 'self' ws://{host} wss://{host};" in csp
    assert "frame-ancestors 'none'" in csp
    assert page.headers["x-content-type-options"] == "nosniff"
    body = page.body.decode()
    assert "actors-leader" not in body  # (no listener to be told of: it uses /ws)
    assert '<meta name="actors-auth" content="none">' in body
    assert '<script type="module" src="/dashboard/dashboard.js"></script>' in body
    assert "<script>" not in body and "<style" not in body and " style=" not in body
    assert not re.search(r"\son[a-z]+=", body)  # no inline handlers
    assert "http://" not in body and "https://" not in body  # no external resource
    assert 'href="/examples/submit.html"' in body  # the examples, linked
    again = await request(http, "/", headers={"If-None-Match": page.headers["etag"]})
    assert again.status == 304
    head = await request(http, "/", method="HEAD")
    assert head.status == 200 and head.body == b""
    for name, kind in (("dashboard.js", "text/javascript"), ("dashboard.css", "text/css")):
        reply = await request(http, f"/dashboard/{name}")
        assert reply.status == 200 and reply.headers["content-type"] == f"{kind}; charset=utf-8"
    for path in (
        "/dashboard/",
        "/dashboard/nope.js",
        "/dashboard/../_leader.py",
        "/dashboard/%2e%2e/_leader.py",
        "/dashboard/..%2f_http.py",
        "/dashboard//etc/passwd",
        "/dashboard/dashboard.js/",
        "/index.html",
    ):
        assert (await request(http, path)).status == 404, path
    # Public code, as the client's: its files load whatever the Origin (a module script
    # is fetched with one), nothing else does.
    for path in ("/", "/dashboard/dashboard.js"):
        foreign = await request(http, path, headers={"Origin": "http://evil.example"})
        assert foreign.status == 200 and "access-control-allow-origin" not in foreign.headers
    foreign = await request(http, "/api/stats", headers={"Origin": "http://evil.example"})
    assert foreign.status == 403
    posted = await request(http, "/", method="POST", body=b"")
    assert posted.status == 405
    posted = await request(http, "/", method="POST", body=b"", headers={"Origin": "http://e.x"})
    assert posted.status == 403  # (public for GET and HEAD only)
    # A Host that could not be a policy's source is not read at all.
    odd = await request(http, "/", headers={"Host": "127.0.0.1:1; script-src *"})
    assert odd.status == 400 and odd.json()["error"] == "bad_host"


async def test_the_page_is_told_that_the_leader_asks_for_a_token(nursery):
    leader = await start_http(nursery, auth=users())
    assert leader.http_url is not None
    page = await request(leader.http_url, "/")  # (the page is open: the API is not)
    assert page.status == 200
    assert b'<meta name="actors-auth" content="token">' in page.body


def test_the_page_files_are_an_allow_list_and_write_no_markup(tmp_path):
    assert sorted(example_files(DASHBOARD_DIR, prefix="/dashboard/")) == [
        "/dashboard/dashboard.css",
        "/dashboard/dashboard.js",
        "/dashboard/index.html",
    ]
    (tmp_path / "index.html").write_text("<p>x</p>")
    (tmp_path / "evil.html").symlink_to(DASHBOARD_DIR / "index.html")
    (tmp_path / "notes.md").write_text("")
    assert sorted(example_files(tmp_path, prefix="/dashboard/")) == ["/dashboard/index.html"]
    script = (DASHBOARD_DIR / "dashboard.js").read_text()
    # Data from the leader goes in as text: no markup written from the script at all.
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
        assert sink not in script, sink
    assert 'from "/actors.js"' in script  # the project's own client


async def test_no_dashboard_files_serve_nothing_at_the_root(nursery):
    leader = Leader(listen=["tcp://127.0.0.1:0"], memory=True)
    await nursery.start(leader.run)
    assert "/" not in HttpApp(leader, dashboard_dir=None).routes
    assert "/" in HttpApp(leader, examples_dir=None).routes


async def test_no_listener_is_added_for_the_page(nursery, caplog):
    caplog.set_level(logging.INFO, logger="actors.leader")
    leader = await start_http(nursery)
    assert leader.listen == ["tcp://127.0.0.1:0"]
    [tcp] = leader.urls
    assert tcp.startswith("tcp://")
    assert not any("dashboard" in r.getMessage() for r in caplog.records)
    wide = Leader(listen=["tcp://127.0.0.1:0"], http="0.0.0.0:0", memory=True, insecure=True)
    assert wide.listen == ["tcp://127.0.0.1:0"]  # (the protocol stays on loopback)
    assert not hasattr(wide, "dashboard_listener")


# --------------------------------------------------------------------------- /ws: the feed


def feed_url(leader: Leader) -> str:
    assert leader.http_url is not None
    return leader.http_url.replace("http://", "ws://", 1) + "/ws"


@asynccontextmanager
async def websocket(
    leader: Leader, *, path: str = "/ws", origin: str | None = None, host: str | None = None
) -> AsyncIterator[trio_websocket.WebSocketConnection]:
    """A WebSocket to the leader's HTTP port as a browser opens one (``Origin``; ``Host``
    as given); trio-websocket's ``ConnectionRejected`` when the upgrade is refused."""
    assert leader.http_url is not None
    address = leader.http_url.removeprefix("http://")
    name, port = address.rsplit(":", 1)
    headers = [] if origin is None else [(b"Origin", origin.encode())]
    stream = await trio.open_tcp_stream(name, int(port))
    try:
        async with trio.open_nursery() as nursery:
            ws = await trio_websocket.wrap_client_stream(
                nursery, stream, host or address, path, extra_headers=headers
            )
            yield ws
            await ws.aclose()
    except BaseExceptionGroup as group:  # (the rejection, from trio-websocket's reader)
        if len(group.exceptions) == 1:
            raise group.exceptions[0] from None
        raise
    finally:
        await trio.aclose_forcefully(stream)


async def refused(leader: Leader, **kw: Any) -> tuple[int, dict[str, Any]]:
    """The status and JSON body of a refused upgrade."""
    with pytest.raises(trio_websocket.ConnectionRejected) as caught:
        async with websocket(leader, **kw):
            pass
    rejection = caught.value
    headers = {name.lower(): value for name, value in rejection.headers}
    assert headers[b"content-type"] == b"application/json"
    return rejection.status_code, json.loads(rejection.body or b"{}")


async def ws_send(ws: trio_websocket.WebSocketConnection, *messages: Any) -> None:
    for message in messages:
        await ws.send_message(protocol.encode(message))


async def ws_receive(ws: trio_websocket.WebSocketConnection) -> Any:
    (message,) = protocol.FrameDecoder().feed(await ws.get_message())
    return message


async def closed_with(ws: trio_websocket.WebSocketConnection) -> Any:
    """The reason ``ws`` closed with (what comes before is dropped)."""
    while True:
        try:
            await ws.get_message()
        except trio_websocket.ConnectionClosed as exc:
            return exc.reason


async def feed_deliver(conn: runtime.Connection) -> Deliver:
    while True:
        message = await conn.receive()
        if isinstance(message, Deliver):
            return message
        assert not isinstance(message, Error), message


async def test_the_feed_on_the_http_port_delivers_the_snapshots(nursery):
    leader = await start_http(nursery, name="feeder")
    for role in ("client", "observer"):
        hello = Hello(mid=0, role=role, name=f"page-{role}")
        async with runtime.open_connection(feed_url(leader), hello=hello) as conn:
            assert conn.welcome is not None and conn.welcome.node == "feeder"
            assert conn.welcome.max_frame == FEED_MAX_FRAME  # (a feed's peer sends little)
            conn.send_nowait(Subscribe(mid=conn.next_mid(), sid=7, pattern=DASHBOARD_SUBJECT))
            first = await feed_deliver(conn)
            assert first.sid == 7 and first.subject == DASHBOARD_SUBJECT
            snapshot = value(first.payload)
            assert snapshot["node"] == "feeder" and snapshot["history"]["full"] is True
            assert snapshot["totals"]["connections"] >= 1
            later = await feed_deliver(conn)
            assert value(later.payload)["history"]["full"] is False
    # The project's Python client, as any program may use it there.
    async with Client.connect(feed_url(leader)) as client:
        async with client.subscribe(DASHBOARD_SUBJECT) as sub:
            message = await sub.__anext__()
            assert value(message.payload)["node"] == "feeder"


async def test_the_feed_does_nothing_else(nursery, caplog):
    leader = await start_http(nursery)
    hello = Hello(mid=0, role="client", name="nosy")
    async with runtime.open_connection(feed_url(leader), hello=hello) as conn:
        asked = [
            Submit(mid=conn.next_mid(), job_id="j1", subject="any.thing", payload=1),
            Publish(mid=conn.next_mid(), subject="any.thing", payload=1),
            Cancel(mid=conn.next_mid(), job_id="j1"),
            Query(mid=conn.next_mid(), what="stats"),
            Query(mid=conn.next_mid(), what="purge_dead_letters"),
            Subscribe(mid=conn.next_mid(), sid=1, pattern=">"),
            Subscribe(mid=conn.next_mid(), sid=2, pattern="$sys.>"),
            Subscribe(mid=conn.next_mid(), sid=3, pattern="any.thing"),
        ]
        conn.send_many_nowait(asked)
        answers = [await conn.receive() for _ in asked]
        for msg, answer in zip(asked, answers, strict=True):
            assert type(answer) is Error and answer.cid == msg.mid, (msg, answer)
            assert answer.code == ErrorCode.NOT_PERMITTED
            assert answer.message.startswith(FEED_ONLY), answer.message
        assert "no Submit here" in answers[0].message
        assert "'any.thing'" in answers[7].message
        # Nothing was done, and the connection stays: it may still watch.
        assert leader.broker.stats()["jobs_active"] == 0
        assert not leader.broker.pubsub._entries  # (no subscription)
        conn.send_nowait(Subscribe(mid=conn.next_mid(), sid=5, pattern=DASHBOARD_SUBJECT))
        assert (await feed_deliver(conn)).sid == 5
    # A worker (or a leader) is told where to go.
    for role in ("worker", "leader"):
        hello = Hello(
            mid=0, role=role, name="w", patterns=("any.thing",) if role == "worker" else ()
        )
        with pytest.raises(HandshakeError) as caught:
            async with runtime.open_connection(feed_url(leader), hello=hello):
                pass
        assert caught.value.code == ErrorCode.NOT_PERMITTED
        assert "listen URLs" in caught.value.message
    assert not leader.broker.workers


async def test_a_read_only_leader_still_feeds(nursery):
    leader = await start_http(nursery, http_read_only=True)
    assert (await request(leader.http_url, "/api/dead-letters", method="DELETE")).status == 403
    async with Client.connect(feed_url(leader)) as client:
        async with client.subscribe(DASHBOARD_SUBJECT) as sub:
            assert value((await sub.__anext__()).payload)["read_only"] is True
        with pytest.raises(Exception, match="feed only"):
            await client.purge_dead_letters()


async def test_the_feed_takes_the_leaders_tokens(nursery):
    leader = await start_http(nursery, auth=users())
    with pytest.raises(HandshakeError) as caught:
        async with runtime.open_connection(feed_url(leader), hello=client()):
            pass
    assert caught.value.code == ErrorCode.AUTH_FAILED
    with pytest.raises(HandshakeError) as caught:
        async with runtime.open_connection(feed_url(leader), hello=client("not-a-token-at-all")):
            pass
    assert caught.value.code == ErrorCode.AUTH_FAILED
    # A viewer, whom no subscription of its own allows $: the dashboard's feed.
    async with runtime.open_connection(feed_url(leader), hello=client(VIEWER)) as conn:
        conn.send_nowait(Subscribe(mid=conn.next_mid(), sid=1, pattern=DASHBOARD_SUBJECT))
        assert (await feed_deliver(conn)).sid == 1
        # An admin may do no more here than anyone.
    async with runtime.open_connection(feed_url(leader), hello=client(ADMIN)) as conn:
        conn.send_nowait(Subscribe(mid=conn.next_mid(), sid=1, pattern="$dlq.>"))
        answer = await conn.receive()
        assert type(answer) is Error and answer.code == ErrorCode.NOT_PERMITTED


async def test_the_feed_checks_the_origin_and_the_host(nursery):
    leader = await start_http(nursery, allowed_origins=["https://app.example"])
    assert leader.http_url is not None
    address = leader.http_url.removeprefix("http://")
    port = address.rsplit(":", 1)[1]
    status, body = await refused(leader, origin="https://evil.example")
    assert status == 403 and body["error"] == "forbidden_origin"
    assert "https://evil.example" in body["message"]
    # DNS rebinding: the page's own origin, by a name that is not loopback's.
    status, body = await refused(
        leader, origin=f"http://evil.example:{port}", host=f"evil.example:{port}"
    )
    assert status == 403 and body["error"] == "forbidden_host"
    status, body = await refused(leader, path="/elsewhere")
    assert status == 404 and "/ws" in body["message"]
    # Its own origin (by any loopback name), an allowed one, or none (not a browser).
    for origin, host in (
        (f"http://localhost:{port}", f"localhost:{port}"),
        (f"http://127.0.0.1:{port}", address),
        ("https://app.example", address),
        (None, address),
    ):
        async with websocket(leader, origin=origin, host=host) as ws:
            await ws_send(ws, client(), Subscribe(mid=1, sid=1, pattern=DASHBOARD_SUBJECT))
            assert type(await ws_receive(ws)) is Welcome
            assert type(await ws_receive(ws)) is Deliver


async def test_the_feed_is_bounded_like_a_listener(nursery):
    leader = await start_http(
        nursery, max_connections_per_address=2, handshake_timeout=0.5, heartbeat=None
    )
    async with websocket(leader) as first, websocket(leader) as second:
        # Over the bound: 503 with Retry-After, as a ws:// listener answers.
        with pytest.raises(trio_websocket.ConnectionRejected) as caught:
            async with websocket(leader):
                pass
        assert caught.value.status_code == 503
        assert (b"retry-after", b"1") in [(n.lower(), v) for n, v in caught.value.headers]
        with pytest.raises(HandshakeError) as busy:
            async with runtime.open_connection(feed_url(leader), hello=client()):
                pass
        assert busy.value.code == ErrorCode.BUSY
        # Silent: no Hello within the handshake timeout, told so and closed (their slots
        # freed: others may connect).
        for silent in (first, second):
            with trio.fail_after(5):
                timeout = await ws_receive(silent)
            assert type(timeout) is Error and timeout.code == ErrorCode.TIMEOUT
            await silent.aclose()
    await wait_until(lambda: leader.connections == 0, timeout=5)
    # A text message is no frame: a protocol error closes that connection.
    async with websocket(leader) as texting:
        await ws_send(texting, client())
        assert type(await ws_receive(texting)) is Welcome
        await texting.send_message("hello")
        error = await ws_receive(texting)
        assert type(error) is Error and error.code == ErrorCode.BAD_FRAME
        assert "text WebSocket message" in error.message
    # One over the frame limit: closed by hypercorn with 1009 (message too big).
    async with websocket(leader) as big:
        await ws_send(big, client())
        assert type(await ws_receive(big)) is Welcome
        await big.send_message(b"\0" * (FEED_MAX_MESSAGE + 1))
        with trio.fail_after(5):
            reason = await closed_with(big)
        assert reason.code == 1009
    await wait_until(lambda: leader.connections == 0, timeout=5)
    async with runtime.open_connection(feed_url(leader), hello=client()) as conn:
        assert conn.welcome is not None  # (every slot is free again)


async def test_its_own_origin_by_any_name_beyond_loopback(nursery):
    # (a leader serving HTTP on every address, reached by a name: the page, its feed and
    # its API calls are the page's own origin)
    leader = await start_http(nursery, http="0.0.0.0:0", auth=users())
    assert leader.http_url is not None
    port = leader.http_url.rsplit(":", 1)[1]
    host = f"dash.example:{port}"
    page = await request(leader.http_url, "/", headers={"Host": host})
    assert page.status == 200
    assert f"ws://{host} wss://{host};" in page.headers["content-security-policy"]
    own = {"Host": host, "Origin": f"http://{host}", "Authorization": f"Bearer {ADMIN}"}
    reply = await request(leader.http_url, "/api/dead-letters/retry", method="POST", headers=own)
    assert reply.status == 200, reply.body
    assert (await request(leader.http_url, "/api/stats", headers=own)).status == 200
    # (behind a TLS proxy the page's origin is https://: the same host)
    proxied = {**own, "Origin": f"https://{host}"}
    assert (await request(leader.http_url, "/api/stats", headers=proxied)).status == 200
    foreign = {**own, "Origin": f"http://other.example:{port}"}
    reply = await request(leader.http_url, "/api/stats", headers=foreign)
    assert reply.status == 403 and reply.json()["error"] == "forbidden_origin"
    async with websocket(leader, origin=f"http://{host}", host=host) as ws:
        await ws_send(ws, client(VIEWER), Subscribe(mid=1, sid=1, pattern=DASHBOARD_SUBJECT))
        assert type(await ws_receive(ws)) is Welcome
        assert type(await ws_receive(ws)) is Deliver
    status, _ = await refused(leader, origin=f"http://other.example:{port}", host=host)
    assert status == 403


async def test_without_users_beyond_loopback_its_own_origin_is_an_address(nursery):
    # (insecure: no token stops a page of a name rebound to this address, so a name is
    # not taken as the page's own origin; an address is, and allowed_origins)
    leader = await start_http(nursery, http="0.0.0.0:0", insecure=True)
    assert leader.http_url is not None
    port = leader.http_url.rsplit(":", 1)[1]
    for name, status in (("dash.example", 403), ("127.0.0.1", 200), ("[::1]", 200)):
        host = f"{name}:{port}"
        headers = {"Host": host, "Origin": f"http://{host}"}
        reply = await request(leader.http_url, "/api/stats", headers=headers)
        assert reply.status == status, (name, reply.body)
        if status == 403:
            assert "by IP address only" in reply.json()["message"]
            code, _ = await refused(leader, origin=f"http://{host}", host=host)
            assert code == 403
    page = await request(leader.http_url, "/", headers={"Host": f"dash.example:{port}"})
    assert page.status == 200  # (the page itself is public)


async def test_the_cluster_feeds_its_groups_instance_counts():
    config = config_from_args(
        listen=["tcp://127.0.0.1:0"],
        workers=["echo=tests.workers:Echo=2"],
        in_process=True,
        memory=True,
        http="127.0.0.1:0",
    )
    out = io.StringIO()
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            await nursery.start(partial(run_cluster, config, 1.0, out=out))
            [line] = [x for x in out.getvalue().splitlines() if x.startswith("http listening")]
            url = line.split()[-1].replace("http://", "ws://") + "/ws"
            async with Client.connect(url) as watcher:
                async with watcher.subscribe(DASHBOARD_SUBJECT) as sub:
                    snapshot = value((await sub.__anext__()).payload)
            group = snapshot["stats"]["groups"]["echo"]
            assert group["instances"] == 2 and group["workers"] == 2
            nursery.cancel_scope.cancel()


class FakeAsgi:
    """The server's side of an ASGI ``websocket`` (what hypercorn does), in memory."""

    def __init__(self, *, blocked: bool = False) -> None:
        self.inbound, self._receive = trio.open_memory_channel[dict[str, Any]](100)
        self.sent: list[dict[str, Any]] = []
        self.blocked = blocked  # (its send never returns: a socket nobody reads)

    async def receive(self) -> dict[str, Any]:
        return await self._receive.receive()

    async def send(self, message: dict[str, Any]) -> None:
        if self.blocked:
            await trio.sleep_forever()
        self.sent.append(message)


async def test_the_asgi_wire_is_bounded_and_strict(autojump_clock):
    server = FakeAsgi()
    wire = AsgiWire(server.receive, server.send, max_buffered=100)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(wire.pump)
        await server.inbound.send({"type": "websocket.receive", "bytes": b"a" * 60})
        await server.inbound.send({"type": "websocket.receive", "text": "hi"})
        await server.inbound.send({"type": "websocket.other"})  # (ignored)
        assert await wire.receive() == b"a" * 60
        with pytest.raises(protocol.MalformedFrame, match="text WebSocket message"):
            await wire.receive()
        # Unread past the bound: the wire is broken (what it held is dropped).
        for _ in range(3):
            await server.inbound.send({"type": "websocket.receive", "bytes": b"b" * 40})
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(trio.BrokenResourceError, match="over 100 bytes"):
            await wire.receive()
        await wire.send_frames([b"x", b"y"])
        assert server.sent == [
            {"type": "websocket.send", "bytes": b"x"},
            {"type": "websocket.send", "bytes": b"y"},
        ]
        await wire.aclose()
        await wire.aclose()  # (once)
        assert server.sent[-1] == {"type": "websocket.close", "code": 1000}
        assert len(server.sent) == 3
        with pytest.raises(trio.BrokenResourceError):
            await wire.send_frames([b"z"])
        with pytest.raises(trio.BrokenResourceError):
            await wire.receive()  # (broken it stays)
        # Closed, it still takes what comes (discarded) until the peer is gone.
        for _ in range(50):
            await server.inbound.send({"type": "websocket.receive", "bytes": b"c" * 90})
        await server.inbound.send({"type": "websocket.disconnect", "code": 1000})
    assert wire.disconnected.is_set()


async def test_a_forced_close_of_the_asgi_wire_waits_a_bounded_time(autojump_clock):
    server = FakeAsgi(blocked=True)
    wire = AsgiWire(server.receive, server.send, max_buffered=100)
    clock = Stopwatch()
    with trio.CancelScope() as scope:
        scope.cancel()  # (even when cancelled: it tries to say goodbye, briefly)
        await wire.aclose_forcefully()
    assert clock() == FORCED_CLOSE_WAIT and wire.closed
    await server.inbound.send({"type": "websocket.disconnect"})
    with trio.fail_after(1):
        await wire.pump()
    assert await wire.receive() is None
