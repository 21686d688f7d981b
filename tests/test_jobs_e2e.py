"""The job system end to end over real loopback sockets, workers in-process.

Real time (sockets); each test is capped with ``fail_after``. Worker processes and
SIGKILL are in ``test_reliability.py``.
"""

from __future__ import annotations

import struct
from collections import Counter
from contextlib import asynccontextmanager
from functools import partial

import pytest
import trio

from actors import (
    Busy,
    Client,
    ClientError,
    DeadLettered,
    Job,
    JobFailed,
    Leader,
    Worker,
)
from actors.worker import WorkerRunner
from protocol import Error, FrameDecoder
from runtime import Backoff

pytestmark = pytest.mark.e2e

FAST_RETRY = Backoff(base=0.02, factor=2.0, cap=0.2, jitter=0.0)


class Echo(Worker):
    subjects = ["echo.>", "math.square"]
    concurrency = 8

    def __init__(self) -> None:
        self.seen: Counter[str] = Counter()

    async def handle(self, job: Job):
        self.seen[job.id] += 1
        if job.subject == "math.square":
            await job.progress(0.5, "half way")
            return {"square": job.payload["n"] ** 2}
        return {"echo": job.payload, "attempt": job.attempt}


class Flaky(Worker):
    """Fails the first ``fail_times`` attempts of every job."""

    subjects = ["flaky.*"]
    concurrency = 4
    fail_times = 2

    async def handle(self, job: Job):
        if job.attempt <= self.fail_times:
            raise ValueError(f"attempt {job.attempt} fails")
        return job.attempt


class Blocker(Worker):
    """Never finishes a job until released."""

    subjects = ["block.>"]
    concurrency = 2

    def __init__(self) -> None:
        self.started = trio.Event()
        self.release = trio.Event()

    async def handle(self, job: Job):
        self.started.set()
        await self.release.wait()
        return "released"


@asynccontextmanager
async def cluster(*workers: Worker, listen=("tcp://127.0.0.1:0",), **leader_kw):
    leader_kw.setdefault("retry_backoff", FAST_RETRY)
    leader = Leader(listen=list(listen), **leader_kw)
    async with trio.open_nursery() as nursery:
        urls = await nursery.start(leader.run)
        runners = []
        for i, w in enumerate(workers):
            runner = WorkerRunner(w, urls[0], name=f"{type(w).__name__.lower()}-{i}")
            await nursery.start(runner.run)
            runners.append(runner)
        leader.runners = runners
        yield leader, urls
        nursery.cancel_scope.cancel()


async def test_submit_map_and_progress_over_tcp():
    with trio.fail_after(20):
        echo = Echo()
        async with cluster(echo) as (leader, urls), Client.connect(urls[0]) as client:
            progress = []
            r = await client.submit(
                "math.square", {"n": 7}, on_progress=lambda f, n: progress.append((f, n))
            )
            assert r == {"square": 49}
            assert progress == [(0.5, "half way")]
            got = [res async for res in client.map("echo.x", range(300), limit=64)]
            assert sorted(g["echo"] for g in got) == list(range(300))
            stats = leader.stats()
            assert stats["subjects"]["echo.x"]["done"] == 300
            assert stats["in_flight"] == 0


async def test_websocket_listener_serves_the_same_api():
    with trio.fail_after(20):
        async with cluster(Echo(), listen=("tcp://127.0.0.1:0", "ws://127.0.0.1:0")) as (_, urls):
            assert urls[1].startswith("ws://")
            async with Client.connect(urls[1]) as client:
                assert await client.submit("math.square", {"n": 3}) == {"square": 9}


async def test_failures_are_retried_then_succeed_or_dead_letter():
    with trio.fail_after(20):
        async with (
            cluster(Flaky(), max_attempts=3) as (leader, urls),
            Client.connect(urls[0]) as client,
        ):
            assert await client.submit("flaky.ok") == 3  # third attempt succeeds
            Flaky.fail_times = 10
            try:
                async with client.subscribe("$dlq.>") as dlq:
                    with pytest.raises(DeadLettered) as info:
                        await client.submit("flaky.bad", {"x": 1}, job_id="poison")
                    assert info.value.attempts == 3 and info.value.error_type == "ValueError"
                    msg = await dlq.receive()
                    assert msg.subject == "$dlq.flaky.bad"
                    assert msg.payload["job_id"] == "poison" and msg.payload["attempts"] == 3
            finally:
                Flaky.fail_times = 2
            assert leader.stats()["subjects"]["flaky.bad"]["dead"] == 1


async def test_qos0_failure_is_reported_once_without_retry():
    with trio.fail_after(20):
        async with cluster(Flaky()) as (_, urls), Client.connect(urls[0]) as client:
            with pytest.raises(JobFailed) as info:
                await client.request("flaky.x", None)
            assert not isinstance(info.value, DeadLettered) and info.value.attempts == 1


async def test_resubmitted_job_id_returns_stored_result_without_rerunning():
    with trio.fail_after(20):
        echo = Echo()
        async with cluster(echo) as (_, urls), Client.connect(urls[0]) as client:
            first = await client.submit("echo.once", "a", job_id="same-id")
            again = await client.submit("echo.once", "a", job_id="same-id")
            assert first == again == {"echo": "a", "attempt": 1}
            assert echo.seen["same-id"] == 1
            # The same id for another job is refused, not answered with this one's result.
            with pytest.raises(ClientError, match="job id same-id names another job"):
                await client.submit("echo.once", "b", job_id="same-id")
            # Concurrent duplicates while it runs are merged.
            async with trio.open_nursery() as nursery:
                for _ in range(5):
                    nursery.start_soon(partial(client.submit, "echo.once", "c", job_id="dup"))
            assert echo.seen["dup"] == 1


async def test_worker_going_away_mid_job_gets_the_job_redelivered():
    with trio.fail_after(20):
        blocker, echo = Blocker(), Echo()
        Echo.subjects = ["echo.>", "math.square", "block.>"]
        try:
            leader = Leader(listen=["tcp://127.0.0.1:0"], retry_backoff=FAST_RETRY)
            async with trio.open_nursery() as nursery:
                [url] = await nursery.start(leader.run)
                blocker_scope = trio.CancelScope()
                if True:
                    runner = WorkerRunner(blocker, url, name="blocker")
                    nursery.start_soon(_run_in, blocker_scope, runner)
                    async with Client.connect(url) as client:
                        results = []
                        answered = trio.Event()

                        async def submit():
                            results.append(await client.submit("block.job", 1, job_id="j1"))
                            answered.set()

                        nursery.start_soon(submit)
                        await blocker.started.wait()
                        # The blocker holds j1; kill it and bring up a healthy worker.
                        blocker_scope.cancel()
                        await nursery.start(WorkerRunner(echo, url, name="echo").run)
                        await answered.wait()
                        assert results == [{"echo": 1, "attempt": 2}]
                        assert leader.stats()["subjects"]["block.job"]["redelivered"] == 1
                nursery.cancel_scope.cancel()
        finally:
            Echo.subjects = ["echo.>", "math.square"]


async def _run_in(scope: trio.CancelScope, runner: WorkerRunner) -> None:
    with scope:
        await runner.run()


async def test_busy_answer_when_the_queue_is_full():
    with trio.fail_after(20):
        async with cluster(max_queued=3) as (_, urls), Client.connect(urls[0]) as client:
            async with trio.open_nursery() as nursery:
                for i in range(3):  # no worker: these wait in the queue, as they ask
                    nursery.start_soon(
                        partial(client.submit, "nobody.home", i, wait_for_worker=True)
                    )
                await trio.sleep(0.2)
                with pytest.raises(Busy) as info:
                    await client.submit("nobody.home", 99, wait_for_worker=True)
                assert info.value.retry_after > 0
                nursery.cancel_scope.cancel()


async def test_pubsub_queue_groups_and_retained_messages():
    with trio.fail_after(20):
        async with cluster() as (_, urls), Client.connect(urls[0]) as client:
            await client.publish("events.config", {"v": 1}, retain=True, qos=1)
            async with (
                client.subscribe("events.>") as all_events,
                client.subscribe("events.*", queue="q") as q1,
                client.subscribe("events.*", queue="q") as q2,
            ):
                first = await all_events.receive()
                assert first.retained and first.payload == {"v": 1}
                for i in range(10):
                    await client.publish("events.order", i)
                got = [(await all_events.receive()).payload for _ in range(10)]
                assert got == list(range(10))
                await trio.sleep(0.2)
                shared = []
                for sub in (q1, q2):
                    while True:
                        try:
                            shared.append(sub._receive.receive_nowait().payload)
                        except trio.WouldBlock:
                            break
                # The retained message was replayed to each queue member once, then the
                # ten were split between them.
                assert sorted(p for p in shared if p != {"v": 1}) == list(range(10))


async def test_garbage_bytes_get_an_error_frame_and_the_leader_keeps_serving():
    with trio.fail_after(20):
        async with cluster(Echo()) as (_, urls):
            host, port = urls[0].removeprefix("tcp://").rsplit(":", 1)
            async with await trio.open_tcp_stream(host, int(port)) as stream:
                await stream.send_all(struct.pack(">IB", 3, 0) + b"\xff\xff\xff")
                data = b""
                while True:
                    chunk = await stream.receive_some(65536)
                    if not chunk:
                        break
                    data += chunk
            [err] = FrameDecoder().feed(data)
            assert isinstance(err, Error) and err.code == "bad_frame"
            async with Client.connect(urls[0]) as client:
                assert await client.submit("math.square", {"n": 4}) == {"square": 16}


async def test_leader_restart_workers_and_clients_reconnect():
    with trio.fail_after(30):
        echo = Echo()
        async with trio.open_nursery() as nursery:
            leader = Leader(listen=["tcp://127.0.0.1:0"])
            first_life = trio.CancelScope()

            async def live(scope, leader, task_status=trio.TASK_STATUS_IGNORED):
                with scope:
                    await leader.run(task_status=task_status)

            [url] = await nursery.start(live, first_life, leader)
            runner = WorkerRunner(
                echo, url, name="echo", reconnect_backoff=Backoff(base=0.05, cap=0.2)
            )
            await nursery.start(runner.run)
            async with Client.connect(url, reconnect_backoff=Backoff(base=0.05, cap=0.2)) as client:
                assert (await client.submit("echo.a", 1))["echo"] == 1
                first_life.cancel()  # the leader goes away
                await trio.sleep(0.3)
                second = Leader(listen=[url])
                await nursery.start(live, trio.CancelScope(), second)
                assert (await client.submit("echo.a", 2, timeout=10))["echo"] == 2
                assert runner.connects >= 2 and client.connects >= 2
            nursery.cancel_scope.cancel()
