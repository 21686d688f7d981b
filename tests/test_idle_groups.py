"""Worker groups the leader only saw (ad-hoc workers, no cluster declared them): they never
hold up ``/readyz``, and once their workers are gone they are forgotten (after
``IDLE_GROUP_TTL``, or sooner past ``MAX_IDLE_GROUPS``), so a churn of fresh group names
leaves the statistics, ``/metrics`` and memory bounded. Declared groups are kept."""

from __future__ import annotations

import json

import trio
import trio.testing
from prometheus_client.exposition import generate_latest

from actors.leader import Leader
from actors.leader._broker import IDLE_GROUP_TTL, MAX_IDLE_GROUPS
from actors.leader._metrics import metrics_registry
from actors.leader._workers import DEPARTED_TTL
from tests.test_worker_list import fake_worker


def test_an_idle_group_lives_as_long_as_a_departed_worker():
    assert IDLE_GROUP_TTL == DEPARTED_TTL


async def test_a_group_only_seen_never_holds_up_readiness(
    autojump_clock: trio.testing.MockClock,
):
    leader = Leader(listen=[], memory=True, heartbeat=2.0)
    broker = leader.broker
    ready, body = leader.readiness()
    assert ready and body["groups"] == 0 and body["groups_undeclared"] == {}
    adhoc = fake_worker("w", "square-123", last_heard=trio.current_time)
    broker.worker_joined(adhoc, trio.current_time())
    leader._readiness = None
    ready, body = leader.readiness()
    assert ready, body
    assert body["groups_undeclared"] == {"square-123": "1 online"}
    broker.worker_left(adhoc, trio.current_time())
    leader._readiness = None
    ready, body = leader.readiness()
    assert ready, body  # (it went away: nothing to wait for)
    assert body["groups_not_ready"] == {} and body["groups_not_ready_total"] == 0
    assert body["groups_undeclared"] == {"square-123": "no worker connected"}
    assert body["groups_undeclared_total"] == 1
    # A declared group with no worker is not ready; the one only seen still is not waited for.
    leader.set_group_instances("square", 1)
    ready, body = leader.readiness()
    assert not ready and body["groups_not_ready"] == {"square": "0 of 1 instances online"}
    assert body["groups"] == 1 and "square-123" in body["groups_undeclared"]
    # After its workers' departures are forgotten, so is the group.
    await trio.sleep(IDLE_GROUP_TTL)
    leader._readiness = None
    _, body = leader.readiness()
    assert body["groups_undeclared"] == {} and body["groups_undeclared_total"] == 0
    assert "square-123" not in broker.group_stats
    assert "square-123" not in leader.stats()["groups"]


async def test_a_churn_of_fresh_groups_leaves_the_leader_bounded(
    autojump_clock: trio.testing.MockClock,
):
    leader = Leader(listen=[], memory=True, heartbeat=2.0)
    broker = leader.broker
    leader.set_group_instances("kept", 1)
    kept = fake_worker("k", "kept", last_heard=trio.current_time)
    broker.worker_joined(kept, trio.current_time())
    kept.stats.done = 7
    broker.worker_left(kept, trio.current_time())
    live = fake_worker("l", "live", last_heard=trio.current_time)
    broker.worker_joined(live, trio.current_time())
    for i in range(3000):
        worker = fake_worker(f"w{i}", f"grp-{i}\x1b[2J", last_heard=trio.current_time)
        broker.worker_joined(worker, trio.current_time())
        worker.stats.done = 1
        broker.worker_left(worker, trio.current_time())
        if i % 100 == 0:
            await trio.sleep(1)
    # The newest idle groups (the oldest went first), the declared and the live ones.
    assert len(broker.group_stats) <= MAX_IDLE_GROUPS + 2
    assert len(broker.idle_groups) <= MAX_IDLE_GROUPS
    assert "grp-0\x1b[2J" not in broker.group_stats
    assert "grp-2999\x1b[2J" in broker.group_stats
    assert broker.group_stats["kept"].done == 7 and "live" in broker.group_stats
    stats = leader.stats()
    assert len(stats["groups"]) <= MAX_IDLE_GROUPS + 2
    size = len(json.dumps(leader.stats_snapshot()))
    assert size < 600_000, size
    metrics = generate_latest(metrics_registry(leader))
    assert len(metrics) < 2_000_000
    ready, body = leader.readiness()
    assert ready is False  # (kept: declared, no worker)
    assert body["groups_not_ready"] == {"kept": "0 of 1 instances online"}
    assert body["groups_undeclared_total"] <= MAX_IDLE_GROUPS + 1
    # Ten minutes on, only the declared group and the one with a worker are left.
    await trio.sleep(IDLE_GROUP_TTL)
    leader._readiness = None
    _, body = leader.readiness()
    assert body["groups_undeclared"] == {"live": "1 online"}
    assert set(broker.group_stats) == {"kept", "live"}
    assert set(leader.stats()["groups"]) == {"kept", "live"}
    assert broker.idle_groups == {}
    # A group no longer declared is forgotten in time like the others.
    leader.set_group_instances("kept", None)
    assert "kept" in broker.idle_groups
    await trio.sleep(IDLE_GROUP_TTL)
    assert set(leader.stats()["groups"]) == {"live"}
    assert leader.readiness()[0] is True


async def test_a_worker_back_in_an_idle_group_keeps_it(
    autojump_clock: trio.testing.MockClock,
):
    leader = Leader(listen=[], memory=True)
    broker = leader.broker
    first = fake_worker("a", "g")
    broker.worker_joined(first, trio.current_time())
    first.stats.done = 3
    broker.worker_left(first, trio.current_time())
    assert "g" in broker.idle_groups
    await trio.sleep(IDLE_GROUP_TTL - 1)
    again = fake_worker("a", "g")
    broker.worker_joined(again, trio.current_time())
    assert broker.idle_groups == {}
    await trio.sleep(IDLE_GROUP_TTL * 2)
    assert leader.stats()["groups"]["g"]["done"] == 3
