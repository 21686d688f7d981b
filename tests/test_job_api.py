"""The job system's public API as users write it, over real loopback sockets.

What a worker sees of a job (id, subject, payload, headers, attempt, progress), the named
errors a client gets, pipelining of concurrent submits on one connection, the default
attempt limit and the dead-letter record, and the leader's statistics per subject and group.
Workers run in process here; worker processes are in ``test_reliability*.py``.
"""

from __future__ import annotations

import math
from functools import partial

import pytest
import trio

from actors import (
    DLQ_PREFIX,
    Busy,
    Client,
    DeadLettered,
    Job,
    JobCancelled,
    JobFailed,
    Leader,
    NoRoute,
    SubmitTimeout,
    Worker,
    WorkerGroup,
)
from actors.worker import WorkerRunner
from runtime import Backoff
from tests.helpers import Tally, wait_until

pytestmark = pytest.mark.e2e

FAST_RETRY = Backoff(base=0.01, factor=2.0, cap=0.05, jitter=0.0)


def test_the_public_names():
    import actors

    for name in ("Worker", "Job", "Client", "Leader", "WorkerGroup"):
        assert getattr(actors, name).__module__.startswith("actors.")
    assert issubclass(actors.DeadLettered, actors.JobFailed)
    assert issubclass(actors.JobFailed, actors.ClientError)
    assert issubclass(actors.Busy, actors.ClientError)
    assert issubclass(actors.SubmitTimeout, actors.ClientError)
    assert Leader().broker.config.max_attempts == 5  # the default


class Inspect(Worker):
    """Returns what it saw of the job; fails the first attempt when asked to."""

    subjects = ["inspect.*", "inspect.deep.>"]
    concurrency = 2

    def __init__(self) -> None:
        self.started = Tally()

    async def handle(self, job: Job):
        self.started.add()
        await job.progress(0.25, "started")
        if job.payload.get("fail_first") and job.attempt == 1:
            raise RuntimeError("first attempt fails")
        if job.payload.get("fail_always"):
            raise KeyError(f"attempt {job.attempt}")
        if job.payload.get("sleep"):
            await trio.sleep(job.payload["sleep"])
        await job.progress(1.0)
        return {
            "id": job.id,
            "subject": job.subject,
            "payload": job.payload,
            "headers": job.headers,
            "attempt": job.attempt,
        }


class Gate(Worker):
    """Holds every job until ``size`` of them run at once, then answers them all."""

    subjects = ["gate.x"]
    concurrency = 16
    size = 16

    def __init__(self) -> None:
        self.running = 0
        self.peak = 0
        self.full = trio.Event()

    async def handle(self, job: Job):
        self.running += 1
        self.peak = max(self.peak, self.running)
        if self.running >= self.size:
            self.full.set()
        await self.full.wait()
        self.running -= 1
        return job.payload


async def start(nursery: trio.Nursery, *workers: Worker, **leader_kw) -> tuple[Leader, str]:
    leader_kw.setdefault("retry_backoff", FAST_RETRY)
    leader = Leader(listen=["tcp://127.0.0.1:0"], **leader_kw)
    [url] = await nursery.start(leader.run)
    for i, worker in enumerate(workers):
        await nursery.start(
            WorkerRunner(worker, url, name=f"w{i}", group=type(worker).__name__.lower()).run
        )
    return leader, url


async def test_a_worker_sees_id_subject_payload_headers_attempt_and_reports_progress(nursery):
    with trio.fail_after(15):
        _leader, url = await start(nursery, Inspect())
        async with Client.connect(url) as client:
            progress: list[tuple[float | None, str | None]] = []
            seen = await client.submit(
                "inspect.deep.a.b",
                {"fail_first": True},
                job_id="job-42",
                headers={"tenant": "acme", "key": "k1"},
                timeout=10,
                on_progress=lambda fraction, note: progress.append((fraction, note)),
            )
        assert seen == {
            "id": "job-42",
            "subject": "inspect.deep.a.b",
            "payload": {"fail_first": True},
            "headers": {"tenant": "acme", "key": "k1"},
            "attempt": 2,  # the first attempt raised: redelivered, counted
        }
        assert (0.25, "started") in progress and progress[-1] == (1.0, None)


async def test_named_errors_carry_the_remote_error(nursery):
    with trio.fail_after(15):
        _leader, url = await start(nursery, Inspect(), max_attempts=3, max_queued=2)
        async with Client.connect(url) as client, client.subscribe(DLQ_PREFIX + ">") as dlq:
            # QoS 1: retried, then dead-lettered, with the last error.
            with pytest.raises(DeadLettered) as dead:
                await client.submit("inspect.x", {"fail_always": True}, job_id="poison", timeout=10)
            assert (dead.value.job_id, dead.value.error_type, dead.value.attempts) == (
                "poison",
                "KeyError",
                3,
            )
            assert "attempt 3" in dead.value.message
            record = (await dlq.receive()).payload
            assert record["attempts"] == 3 and record["error_type"] == "KeyError"
            assert "attempt 3" in record["error_message"] and record["payload"] == {
                "fail_always": True
            }
            # QoS 0 (request): at most once, the first failure is the answer.
            with pytest.raises(JobFailed) as failed:
                await client.request("inspect.x", {"fail_always": True}, timeout=5)
            assert type(failed.value) is JobFailed and failed.value.attempts == 1
            # No result in time.
            with pytest.raises(SubmitTimeout):
                await client.submit("inspect.x", {"sleep": 5}, timeout=0.2)
            # Nobody serves "nobody.*": answered at once, naming the subject.
            with pytest.raises(NoRoute) as no_route:
                await client.submit("nobody.home", 1)
            assert no_route.value.subject == "nobody.home"
            assert "no worker serves subject nobody.home" in str(no_route.value)
            # Unless told to wait for a worker: two wait, the third is told to come back later.
            async with trio.open_nursery() as waiting:
                for i in range(2):
                    waiting.start_soon(
                        partial(client.submit, "nobody.home", i, wait_for_worker=True)
                    )
                await trio.sleep(0.2)
                with pytest.raises(Busy) as busy:
                    await client.submit("nobody.home", 3, wait_for_worker=True)
                assert 0 < busy.value.retry_after <= 30
                waiting.cancel_scope.cancel()


async def test_concurrent_submits_share_one_connection_and_are_pipelined(nursery):
    """Sixteen submits are outstanding at once on one connection: the worker holds each
    until all sixteen run side by side, which only happens if none waited for another."""
    with trio.fail_after(15):
        gate = Gate()
        leader, url = await start(nursery, gate)
        async with Client.connect(url) as client:
            results: list[int] = []

            async def one(i: int) -> None:
                results.append(await client.submit("gate.x", i, timeout=10))

            async with trio.open_nursery() as calls:
                for i in range(Gate.size):
                    calls.start_soon(one, i)
                await gate.full.wait()
                assert leader.connections == 2  # the worker's and this client's, nothing more
            assert sorted(results) == list(range(Gate.size))
            assert gate.peak == Gate.size
            assert client.connects == 1 and client.results_received == Gate.size


async def test_map_yields_results_in_input_order_within_its_limit(nursery):
    with trio.fail_after(15):
        gate = Gate()
        gate.size = 8
        _leader, url = await start(nursery, gate)
        async with Client.connect(url) as client:
            got = [r async for r in client.map("gate.x", range(64), limit=8)]
            assert got == list(range(64))
            assert gate.peak == 8  # never more than the limit in flight
            pairs = [p async for p in client.map("gate.x", range(64), limit=8, ordered=False)]
            assert sorted(pairs) == [(i, i) for i in range(64)]


async def test_statistics_per_subject_and_group(nursery):
    with trio.fail_after(15):
        leader, url = await start(nursery, Inspect(), max_attempts=2)
        async with Client.connect(url) as client:
            for i in range(3):
                await client.submit("inspect.ok", {"i": i})
            await client.submit("inspect.retry", {"fail_first": True})
            with pytest.raises(DeadLettered):
                await client.submit("inspect.dead", {"fail_always": True})
        stats = leader.stats()
        ok, retry, dead = (
            stats["subjects"][s] for s in ("inspect.ok", "inspect.retry", "inspect.dead")
        )
        assert (ok["submitted"], ok["done"], ok["queued"], ok["redelivered"]) == (3, 3, 0, 0)
        assert (retry["done"], retry["redelivered"]) == (1, 1)
        assert (dead["dead"], dead["redelivered"]) == (1, 1)
        assert ok["latency_avg"] > 0 and ok["latency_max"] >= ok["latency_avg"]
        assert math.isfinite(ok["latency_max"])
        group = stats["groups"]["inspect"]
        assert (group["workers"], group["in_flight"], group["window"]) == (1, 0, 2)
        # "answered" counts every answer its workers gave (failed attempts too).
        assert group["assigned"] == group["answered"] == 3 + 2 + 2
        assert (group["done"], group["failed"], group["redelivered"], group["dead"]) == (4, 0, 2, 1)
        assert 0 < group["latency_avg"] <= group["latency_max"]
        assert ok["in_flight"] == retry["in_flight"] == dead["in_flight"] == 0
        assert (stats["in_flight"], stats["waiting"], stats["dead_letters"]) == (0, 0, 1)


async def test_a_worker_group_in_process_serves_and_scales(nursery):
    """WorkerGroup's in-process option against a real leader (processes: test_group.py)."""
    with trio.fail_after(15):
        leader, url = await start(nursery)
        group = WorkerGroup("insp", Inspect, 1, url, in_process=True, drain_grace=1.0)
        await nursery.start(group.run)
        async with Client.connect(url) as client:
            assert (await client.submit("inspect.a", {}, timeout=5))["attempt"] == 1
            await group.scale(3)
            # (in-process workers, but each connects over TCP in its own time)
            await wait_until(lambda: leader.stats()["workers"] == 3, timeout=10, what="3 workers")
            assert leader.stats()["groups"]["insp"]["workers"] == 3
            await group.scale(1)
            assert leader.stats()["groups"]["insp"]["workers"] == 1
            assert (await client.submit("inspect.b", {}, timeout=5))["subject"] == "inspect.b"


async def test_cancelling_a_running_job_stops_it_and_raises_job_cancelled(nursery):
    with trio.fail_after(15):
        worker = Inspect()
        leader, url = await start(nursery, worker)
        async with Client.connect(url) as client:
            errors: list[BaseException] = []

            async def submit() -> None:
                try:
                    await client.submit("inspect.slow", {"sleep": 30}, job_id="long-one")
                except JobCancelled as exc:
                    errors.append(exc)

            async with trio.open_nursery() as inner:
                inner.start_soon(submit)
                await worker.started.reach(1)
                await client.cancel("long-one", reason="not needed")
        [error] = errors
        assert (error.error_type, error.message, error.attempts) == ("Cancelled", "not needed", 1)
        stats = leader.stats()["subjects"]["inspect.slow"]
        assert (stats["cancelled"], stats["redelivered"], stats["done"]) == (1, 0, 0)
        assert leader.stats()["in_flight"] == 0


async def test_map_retries_busy_answers_and_loses_nothing(nursery):
    """With a queue limit below map's limit, some submits are answered Busy: map waits the
    retry_after and sends them again; every payload's result comes back exactly once."""
    with trio.fail_after(30):
        leader, url = await start(nursery, Inspect(), max_queued=3)
        async with Client.connect(url) as client:
            got = [
                r["payload"]["i"]
                async for r in client.map(
                    "inspect.busy", ({"sleep": 0.01, "i": i} for i in range(40)), limit=12
                )
            ]
        assert sorted(got) == list(range(40))
        assert leader.stats()["subjects"]["inspect.busy"]["done"] == 40
        assert client.results_received == 40


async def test_map_failure_raises_or_is_yielded(nursery):
    with trio.fail_after(15):
        _leader, url = await start(nursery, Inspect(), max_attempts=1)
        payloads = [{"i": 0}, {"fail_always": True}, {"i": 2}]
        async with Client.connect(url) as client:
            got = [
                r async for r in client.map("inspect.m", payloads, limit=1, return_exceptions=True)
            ]
            assert [type(g) for g in got] == [dict, DeadLettered, dict]
            with pytest.raises(DeadLettered):
                async for _ in client.map("inspect.m", payloads, limit=1):
                    pass
