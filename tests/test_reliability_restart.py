"""Reliability with worker processes: a leader restart, and a poison job that kills its worker.

- The leader goes away while worker processes hold jobs and a client waits on them, and a
  new leader comes up on the same address: the workers and the client reconnect by
  themselves, the waiting submits get their results (each once), and the cluster goes on
  serving with the same processes.
- A job that kills the worker process running it (``os._exit``) counts an attempt each
  time; after ``max_attempts`` it is dead-lettered with ``WorkerLost``, while the group
  restarts each killed instance and other jobs keep being served.

In process (real sockets): a worker answers the redelivery of a job it finished while the
leader was away from its dedup cache; and a worker reconnecting with jobs in hand (handlers
that ignored the cancellation of the lost connection's jobs) grants only its free slots
(the rest as those jobs end).

Real time and processes (end to end); every test is capped with ``fail_after``.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio

from actors import DLQ_PREFIX, Client, DeadLettered, Job, Leader, Worker, WorkerGroup
from actors.worker import WorkerRunner
from runtime import Backoff
from tests.helpers import Tally, wait_until
from tests.test_reliability import read_log, workers_connected

pytestmark = pytest.mark.e2e

FAST = Backoff(base=0.05, factor=2.0, cap=0.5, jitter=0.1)


async def _live(
    scope: trio.CancelScope, leader: Leader, task_status=trio.TASK_STATUS_IGNORED
) -> None:
    with scope:
        await leader.run(task_status=task_status)


async def test_leader_restart_worker_processes_and_client_reconnect_and_finish(
    tmp_path: Path,
) -> None:
    log = tmp_path / "jobs.log"
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            first_life = trio.CancelScope()
            first = Leader(listen=["tcp://127.0.0.1:0"], retry_backoff=FAST, heartbeat=1.0)
            [url] = await nursery.start(_live, first_life, first)
            group = WorkerGroup(
                "rec", "tests.workers:Recorder", 2, url, restart_backoff=FAST, drain_grace=1.0
            )
            await nursery.start(group.run)
            await workers_connected(first, 2)
            pids = group.pids()

            results: dict[str, list[Any]] = {}
            async with Client.connect(url, reconnect_backoff=FAST) as client:

                async def submit(i: int, seconds: float) -> None:
                    job_id = f"job-{i}"
                    payload = {"n": i, "log": str(log), "seconds": seconds}
                    results.setdefault(job_id, []).append(
                        await client.submit("test.record", payload, job_id=job_id, timeout=30)
                    )

                async with trio.open_nursery() as jobs:
                    for i in range(6):
                        jobs.start_soon(submit, i, 1.0)
                    await wait_until(
                        lambda: len(read_log(log)[0]) == 6, timeout=15, what="all six jobs running"
                    )
                    first_life.cancel()  # the leader goes away mid-job
                    await trio.sleep(0.3)
                    second = Leader(listen=[url], retry_backoff=FAST, heartbeat=1.0)
                    await nursery.start(_live, trio.CancelScope(), second)
                # Every waiting submit got its own result once, through the new leader.
                assert sorted(results) == [f"job-{i}" for i in range(6)]
                assert all(len(r) == 1 and r[0]["n"] == int(j[4:]) for j, r in results.items())
                assert client.connects == 2 and client.stray_results == 0
                _started, done = read_log(log)
                # Each finished where it ran. (A redelivery that the new leader happens to
                # route to the other process runs there too, at least once; the first
                # answer wins and the other run is cancelled. The one that reaches the
                # process that ran it is answered from its cache or joins its run.)
                assert set(done) == {f"job-{i}" for i in range(6)}

                # Not wedged: the same worker processes (reconnected) take new work.
                await workers_connected(second, 2)
                assert group.pids() == pids
                async with trio.open_nursery() as jobs:
                    for i in range(6, 30):
                        jobs.start_soon(submit, i, 0.01)
                assert len(results) == 30
                stats = second.stats()["subjects"]["test.record"]
                assert stats["dead"] == 0 and stats["done"] >= 24
            nursery.cancel_scope.cancel()


async def test_a_job_that_kills_its_worker_process_is_dead_lettered(tmp_path: Path) -> None:
    leader = Leader(listen=["tcp://127.0.0.1:0"], retry_backoff=FAST, max_attempts=3, heartbeat=1.0)
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            [url] = await nursery.start(leader.run)
            group = WorkerGroup(
                "crash", "tests.workers:Crasher", 2, url, restart_backoff=FAST, drain_grace=1.0
            )
            await nursery.start(group.run)
            await workers_connected(leader, 2)
            async with Client.connect(url) as client, client.subscribe(DLQ_PREFIX + ">") as dlq:
                served: list[Any] = []

                async def keep_serving() -> None:  # other jobs go on while the poison loops
                    while True:
                        served.append(
                            await client.submit("test.crash", {"crash": False}, timeout=30)
                        )
                        await trio.sleep(0.05)

                async with trio.open_nursery() as side:
                    side.start_soon(keep_serving)
                    with pytest.raises(DeadLettered) as info:
                        await client.submit(
                            "test.crash", {"crash": True}, job_id="poison", timeout=45
                        )
                    side.cancel_scope.cancel()
                assert info.value.attempts == 3 and info.value.error_type == "WorkerLost"
                record = (await dlq.receive()).payload
                assert record["job_id"] == "poison" and record["attempts"] == 3
                assert record["error_type"] == "WorkerLost"
                assert served, "the healthy jobs were served meanwhile"

                # Each attempt killed a process; the group replaced every one.
                await group.wait_until(
                    lambda g: sum(s.restarts for s in g.states()) == 3 and len(g.pids()) == 2
                )
                assert {s.last_exit for s in group.states() if s.restarts} == {3}
                await workers_connected(leader, 2)
                answer = await client.submit("test.crash", {"crash": False}, timeout=30)
                assert answer["pid"] in group.pids()
                stats = leader.stats()["subjects"]["test.crash"]
                # Two redeliveries of the poison job, plus any healthy job its crashes cut short.
                assert stats["dead"] == 1 and stats["redelivered"] >= 2
            nursery.cancel_scope.cancel()


class _Slow(Worker):
    subjects = ["slow.x"]
    concurrency = 2

    def __init__(self) -> None:
        self.started = Tally()

    async def handle(self, job: Job) -> Any:
        self.started.add()
        with trio.CancelScope(shield=True):  # ignores the cancel of a lost connection
            await trio.sleep(job.payload)
        return job.id


async def test_a_worker_reconnecting_with_jobs_in_hand_grants_only_its_free_slots() -> None:
    """A worker still running jobs of the leader that went away (handlers that ignore
    the cancellation a lost connection brings) must not claim its whole concurrency from
    the new one (which would send it jobs it can only Nack)."""
    fast = Backoff(base=0.05, factor=2.0, cap=0.2, jitter=0.0)
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            first_life = trio.CancelScope()
            # (in memory: the jobs of the first leader are not the second one's to redeliver)
            first = Leader(listen=["tcp://127.0.0.1:0"], retry_backoff=fast, memory=True)
            [url] = await nursery.start(_live, first_life, first)
            worker = _Slow()
            runner = WorkerRunner(worker, url, name="w", reconnect_backoff=fast)
            await nursery.start(runner.run)
            async with Client.connect(url) as gone, trio.open_nursery() as old_jobs:
                for i in range(2):  # the worker is full; their client will not come back
                    old_jobs.start_soon(partial(gone.submit, "slow.x", 1.0, job_id=f"old-{i}"))
                await worker.started.reach(2)
                old_jobs.cancel_scope.cancel()
            first_life.cancel()
            await trio.sleep(0.2)
            second = Leader(listen=[url], retry_backoff=fast, memory=True)
            await nursery.start(_live, trio.CancelScope(), second)
            await workers_connected(second, 1)
            async with Client.connect(url) as client, trio.open_nursery() as jobs:
                for _ in range(2):
                    jobs.start_soon(client.submit, "slow.x", 0.1)
            assert runner.credit_violations == 0
            assert second.stats()["subjects"]["slow.x"]["redelivered"] == 0
            nursery.cancel_scope.cancel()


class _Counting(Worker):
    subjects = ["count.x"]
    concurrency = 2

    def __init__(self) -> None:
        self.calls = 0
        self.started = Tally()
        self.finished = Tally()

    async def handle(self, job: Job) -> Any:
        self.calls += 1
        self.started.add()
        with trio.CancelScope(shield=True):  # finishes although its connection is lost
            await trio.sleep(job.payload)
        self.finished.add()
        return {"id": job.id}


async def test_a_worker_answers_a_redelivered_finished_job_from_its_dedup_cache() -> None:
    """The job finishes while the leader is away (its Result is lost); the new leader
    delivers it again (the client resubmitted it) and the worker answers from its cache."""
    fast = Backoff(base=0.05, factor=2.0, cap=0.2, jitter=0.0)
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            first_life = trio.CancelScope()
            first = Leader(listen=["tcp://127.0.0.1:0"], retry_backoff=fast)
            [url] = await nursery.start(_live, first_life, first)
            worker = _Counting()
            runner = WorkerRunner(worker, url, name="w", reconnect_backoff=fast)
            await nursery.start(runner.run)
            async with Client.connect(url, reconnect_backoff=fast) as client:
                answers: list[Any] = []

                async def submit() -> None:
                    answers.append(await client.submit("count.x", 0.3, job_id="once", timeout=15))

                async with trio.open_nursery() as jobs:
                    jobs.start_soon(submit)
                    await worker.started.reach(1)
                    first_life.cancel()  # the leader goes away while the job runs
                    await worker.finished.reach(1)  # finished, its Result lost
                    second = Leader(listen=[url], retry_backoff=fast)
                    await nursery.start(_live, trio.CancelScope(), second)
                assert answers == [{"id": "once"}]
                assert worker.calls == 1 and runner.duplicates == 1  # not run again
                assert runner.connects == 2
            nursery.cancel_scope.cancel()
