"""Smoke tests of ``examples/``: each example's ``main`` against a real leader and workers.

A Leader on a free loopback port plus in-process WorkerRunners (the mode and group each
example's README section asks for), then the example's own client code; the assertions are
on what ``main`` returns and on the leader's and runners' counters. Real time (sockets):
each test is capped with ``fail_after``.
"""

from __future__ import annotations

import io
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio

from actors import Leader, Worker
from actors.cluster import load_config, run_cluster
from actors.cluster._config import config_from_args
from actors.worker import WorkerRunner
from examples import fanout, flaky, pubsub, square
from runtime import Backoff

pytestmark = pytest.mark.e2e

FAST_RETRY = Backoff(base=0.02, factor=2.0, cap=0.2, jitter=0.0)
CLUSTER_TOML = Path(__file__).resolve().parent.parent / "examples" / "cluster.toml"


@asynccontextmanager
async def cluster(
    *workers: tuple[Worker, dict[str, Any]], **leader_kw: Any
) -> AsyncIterator[tuple[Leader, str, list[WorkerRunner]]]:
    """A leader on port 0 and a runner per ``(worker, WorkerRunner keyword arguments)``."""
    leader_kw.setdefault("retry_backoff", FAST_RETRY)
    leader = Leader(listen=["tcp://127.0.0.1:0"], **leader_kw)
    async with trio.open_nursery() as nursery:
        [url] = await nursery.start(leader.run)
        runners = []
        for i, (worker, runner_kw) in enumerate(workers):
            runner_kw.setdefault("name", f"{type(worker).__name__.lower()}-{i}")
            runner = WorkerRunner(worker, url, **runner_kw)
            await nursery.start(runner.run)
            runners.append(runner)
        yield leader, url, runners
        nursery.cancel_scope.cancel()


def group_of(
    n: int, worker_class: type[Worker], **runner_kw: Any
) -> list[tuple[Worker, dict[str, Any]]]:
    """``n`` instances of ``worker_class`` in one group, like ``--worker module:Class=n``."""
    group = worker_class.__name__.lower()
    return [(worker_class(), {"group": group, **runner_kw}) for _ in range(n)]


# --------------------------------------------------------------------------- square


async def test_square_example_submits_maps_and_publishes():
    with trio.fail_after(15):
        async with cluster(*group_of(2, square.Square)) as (leader, url, runners):
            results = await square.main(url)
            assert results[0] == {"square": 49}
            assert sorted(r["square"] for r in results[1:]) == [i * i for i in range(100)]
            stats = leader.stats()["subjects"]["math.square"]
            assert stats["done"] == 101 and stats["failed"] == 0 and stats["redelivered"] == 0
            assert sum(r.completed for r in runners) == 101
            assert all(r.completed > 0 for r in runners)  # round robin used both


# --------------------------------------------------------------------------- fanout


async def _run_fanout(count: int | None = None) -> fanout.FanoutSummary:
    """``fanout.main`` over four Hash workers: ``count`` jobs, or the example's own default."""
    async with cluster(*group_of(4, fanout.Hash)) as (leader, url, runners):
        if count is None:
            summary = await fanout.main(url)
            count = summary.count
        else:
            summary = await fanout.main(url, count=count)
        assert summary == fanout.FanoutSummary(
            count=count, ok=count, failures=0, mismatches=0, seconds=summary.seconds
        )
        assert summary.jobs_per_second > 0
        stats = leader.stats()
        assert stats["subjects"][fanout.SUBJECT]["done"] == count
        assert stats["in_flight"] == 0 and stats["jobs_active"] == 0
        assert sum(r.completed for r in runners) == count
        for runner in runners:
            assert 0 < runner.max_running <= fanout.Hash.concurrency
            assert runner.credit_violations == 0
        return summary


async def test_fanout_example_2000_jobs():
    with trio.fail_after(15):
        await _run_fanout(2_000)


async def test_fanout_example_as_shipped_runs_the_full_10000_jobs():
    # The example with no arguments does the 10,000 jobs, all of them done, through
    # one process (leader, 4 workers and the client): about 3 s here; with worker processes
    # (python -m actors.cluster) about 1.3 s.
    with trio.fail_after(30):
        summary = await _run_fanout()
        assert summary.count == 10_000


def test_fanout_digest_is_sha256():
    # The FIPS 180-2 test vector.
    abc = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert fanout.digest("abc") == abc


# --------------------------------------------------------------------------- pub/sub


async def test_pubsub_example_broadcast_queue_group_and_retained():
    with trio.fail_after(15):
        audits = group_of(2, pubsub.Audit, mode="broadcast")
        async with cluster(*audits) as (leader, url, runners):
            report = await pubsub.main(url)
            assert report.complete
            # The plain subscription: the retained event first, then every event in order.
            assert report.everything[0] == (*pubsub.RETAINED, True)
            assert list(report.everything[1:]) == [(s, p, False) for s, p in pubsub.EVENTS]
            # The queue group: each order event went to exactly one member, both had some.
            orders = sorted(
                (e for e in pubsub.EVENTS if e[0].startswith("events.order.")), key=repr
            )
            assert len(orders) == 5
            a, b = report.queue_members
            assert sorted(a + b, key=repr) == orders
            assert a and b
            # Broadcast mode: every Audit instance saw every event (live, not retained).
            expected = sorted([pubsub.RETAINED, *pubsub.EVENTS], key=repr)
            for worker, _ in audits:
                with trio.move_on_after(5):
                    await worker.wait_seen(len(expected))
                assert sorted(worker.seen, key=repr) == expected
            assert [r.deliveries for r in runners] == [len(expected)] * 2
            assert leader.stats()["groups"]["audit"]["mode"] == "broadcast"


async def test_pubsub_example_counts_only_what_its_patterns_match():
    # An event outside ``events.>`` reaches no subscription, and main does not wait for it.
    with trio.fail_after(15):
        async with cluster() as (_, url, _runners):
            events = [("events.order.paid", {"order": 9}), ("other.thing", {})]
            report = await pubsub.main(url, events=events)
            assert report.complete
            assert report.everything == (
                (*pubsub.RETAINED, True),
                ("events.order.paid", {"order": 9}, False),
            )
            assert sorted(map(len, report.queue_members)) == [0, 1]


# --------------------------------------------------------------------------- flaky


async def test_flaky_example_retries_then_dead_letters():
    with trio.fail_after(15):
        workers = [(flaky.Flaky(), {"name": "flaky"}), (flaky.Poison(), {"name": "poison"})]
        async with cluster(*workers) as (leader, url, (flaky_runner, poison_runner)):
            report = await flaky.main(url, max_attempts=3)
            # Two failed attempts, then success on the third.
            assert report.result == {"n": 21, "doubled": 42, "attempts": 3}
            assert (flaky_runner.failed, flaky_runner.completed) == (2, 1)
            # The poison job used its three attempts and was dead-lettered.
            dead = report.dead
            assert dead is not None
            assert dead.attempts == 3 and dead.error_type == "ValueError"
            assert "cannot process {'order': 7} (attempt 3)" in dead.message
            assert (poison_runner.failed, poison_runner.completed) == (3, 0)
            record = dict(report.dead_letter)
            assert "ValueError: cannot process {'order': 7}" in record.pop("traceback")
            assert abs(record.pop("dead_at") - time.time()) < 60  # (wall clock)
            assert record == {
                "job_id": dead.job_id,
                "subject": flaky.POISON_SUBJECT,
                "payload": {"order": 7},
                "headers": {},
                "attempts": 3,
                "error_type": "ValueError",
                "error_message": "cannot process {'order': 7} (attempt 3)",
                "worker": "poison",  # (the worker that failed it last)
            }
            stats = leader.stats()
            assert stats["subjects"][flaky.FLAKY_SUBJECT]["redelivered"] == 2
            assert stats["subjects"][flaky.FLAKY_SUBJECT]["done"] == 1
            assert stats["subjects"][flaky.POISON_SUBJECT]["dead"] == 1
            assert stats["dead_letters"] == 1


# --------------------------------------------------------------------------- cluster.toml


def test_cluster_toml_parses_with_every_example_group():
    config = load_config(str(CLUSTER_TOML))  # also imports every worker class
    leader = config.leader
    assert leader.listen == ("tcp://127.0.0.1:7700", "ws://127.0.0.1:7701")
    assert leader.max_attempts == 4
    assert leader.retry is not None and leader.retry.base == 0.2
    groups = {g.name: g for g in config.groups}
    assert list(groups) == ["square", "hash", "audit", "flaky", "poison"]
    assert groups["square"].worker == "examples.square:Square"
    assert (groups["square"].instances, groups["square"].mode, groups["square"].policy) == (
        4,
        "round_robin",
        "round_robin",
    )
    assert groups["square"].subjects == tuple(square.Square.subjects)
    assert groups["hash"].worker == "examples.fanout:Hash"
    assert (groups["audit"].worker, groups["audit"].mode) == ("examples.pubsub:Audit", "broadcast")
    assert groups["audit"].instances >= 2  # broadcast shows only with several instances
    assert groups["flaky"].worker == "examples.flaky:Flaky"
    assert groups["flaky"].retry is not None and groups["flaky"].retry.base == 0.1  # [groups.retry]
    assert groups["poison"].worker == "examples.flaky:Poison"


async def test_cluster_toml_runs_every_example_in_process():
    """The whole file, as ``python -m actors.cluster --config examples/cluster.toml
    --in-process`` runs it (on free ports), serves each example, over tcp and ws."""
    with trio.fail_after(20):
        config = config_from_args(
            listen=["tcp://127.0.0.1:0", "ws://127.0.0.1:0"],
            config_path=str(CLUSTER_TOML),
            in_process=True,
        )
        out = io.StringIO()
        async with trio.open_nursery() as nursery:
            tcp_url, ws_url = await nursery.start(partial(run_cluster, config, 1.0, out=out))
            assert "cluster ready: 5 groups, 13 workers" in out.getvalue()
            results = await square.main(ws_url)
            assert results[0] == {"square": 49} and len(results) == 101
            summary = await fanout.main(tcp_url, count=500)
            assert (summary.ok, summary.failures, summary.mismatches) == (500, 0, 0)
            report = await pubsub.main(tcp_url)
            assert report.complete and len(report.everything) == 1 + len(pubsub.EVENTS)
            outcome = await flaky.main(tcp_url)  # the file's max_attempts = 4
            assert outcome.result["attempts"] == 3
            assert outcome.dead is not None and outcome.dead.attempts == 4
            assert outcome.dead_letter is not None and outcome.dead_letter["attempts"] == 4
            nursery.cancel_scope.cancel()
