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
- HTTP: ``/`` is the dashboard under a strict policy, told the leader's WebSocket URL and
  whether it needs a token; its files are an allow-list; a leader serving HTTP with no
  ``ws://`` listener gets one.
"""

from __future__ import annotations

import io
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

from actors import AuthConfig, Leader, User
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
from actors.leader._http import DASHBOARD_DIR, HttpApp, example_files
from actors.leader._links import ClientLink, GroupStats, WorkerLink
from actors.leader._stats import count_result
from protocol import (
    Assign,
    Deliver,
    Encoded,
    Error,
    ErrorCode,
    Hello,
    Publish,
    Result,
    Session,
    Submit,
    Subscribe,
    Unsubscribe,
    Welcome,
)
from runtime._connection import Connection
from runtime._transports import running
from runtime._wire import StreamWire
from tests.helpers import RawPeer, Stopwatch
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
    leader = Leader(http="127.0.0.1:0", **settings)
    await nursery.start(leader.run)
    assert leader.http_url is not None
    return leader


async def test_the_dashboard_is_served_at_the_root_under_a_strict_policy(nursery):
    leader = await start_http(nursery)
    http = leader.http_url
    assert http is not None
    ws = next(url for url in leader.urls if url.startswith("ws://"))
    page = await request(http, "/")
    assert page.status == 200 and page.headers["content-type"] == "text/html; charset=utf-8"
    csp = page.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src 'self';" in csp
    assert "style-src 'self';" in csp and "unsafe" not in csp
    assert f"connect-src 'self' {ws.rstrip('/')};" in csp  # its API, the leader's WebSocket
    assert "frame-ancestors 'none'" in csp
    assert page.headers["x-content-type-options"] == "nosniff"
    body = page.body.decode()
    assert f'<meta name="actors-leader" content="{ws}">' in body
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
    foreign = await request(http, "/", headers={"Origin": "http://evil.example"})
    assert foreign.status == 403
    posted = await request(http, "/", method="POST", body=b"")
    assert posted.status == 405


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


async def test_http_without_a_websocket_listener_gets_one_for_the_page(nursery, caplog):
    caplog.set_level(logging.INFO, logger="actors.leader")
    leader = await start_http(nursery)
    assert leader.dashboard_listener == "ws://127.0.0.1:0"
    [tcp, ws] = leader.urls
    assert tcp.startswith("tcp://") and re.fullmatch(r"ws://127\.0\.0\.1:\d+/", ws)
    assert any(
        "for the dashboard's page" in r.getMessage() and ws in r.getMessage()
        for r in caplog.records
    )
    # One given: none added; no HTTP: none added.
    given = Leader(listen=["ws://127.0.0.1:0"], http="127.0.0.1:0", memory=True)
    assert given.listen == ["ws://127.0.0.1:0"] and given.dashboard_listener is None
    assert Leader(listen=["tcp://127.0.0.1:0"], memory=True).listen == ["tcp://127.0.0.1:0"]
    six = Leader(listen=["tcp://[::1]:0"], http="[::1]:0", memory=True)
    assert six.listen == ["tcp://[::1]:0", "ws://[::1]:0"]
    tls = Leader(listen=["wss://127.0.0.1:0"], http="127.0.0.1:0", memory=True)
    assert tls.dashboard_listener is None
    # Beyond loopback only where HTTP may be (users or insecure): the same host.
    wide = Leader(listen=["tcp://127.0.0.1:0"], http="0.0.0.0:0", memory=True, insecure=True)
    assert wide.listen[-1] == "ws://0.0.0.0:0"


async def test_the_cluster_prints_the_added_websocket_listener():
    config = config_from_args(
        listen=["tcp://127.0.0.1:0"], in_process=True, memory=True, http="127.0.0.1:0"
    )
    out = io.StringIO()
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            await nursery.start(partial(run_cluster, config, 1.0, out=out))
            lines = out.getvalue().splitlines()
            assert any(
                re.fullmatch(r"leader listening on ws://127\.0\.0\.1:\d+/", x) for x in lines
            )
            nursery.cancel_scope.cancel()
