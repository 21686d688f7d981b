"""Abandoned work is cancelled: a job nobody waits for any more does not run on.

A submit whose timeout fires or whose task is cancelled, and a ``map`` left early (break,
exception, cancellation), send ``Cancel(abandon=True)`` for their jobs; the leader cancels
each one unless another client waits for it. ``detach=True`` keeps the old behaviour. The
cancels are queued without waiting and still go out when the client closes right after.

A real leader and an in-process worker whose handler records when it was cancelled; real
time (sockets), each test capped with ``fail_after``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio

from actors import Client, Job, Leader, SubmitTimeout, Worker
from actors.worker import WorkerRunner
from tests.helpers import Changes, wait_until

pytestmark = pytest.mark.e2e


class Slow(Worker):
    """Sleeps ``payload["seconds"]``; records when each job started, was cancelled, ended."""

    subjects = ["slow.>"]
    concurrency = 16

    def __init__(self) -> None:
        self.started: dict[str, float] = {}
        self.cancelled: dict[str, float] = {}
        self.finished: set[str] = set()
        self.changes = Changes()

    async def handle(self, job: Job) -> str:
        self.started[job.id] = trio.current_time()
        self.changes.notify()
        try:
            await trio.sleep(job.payload["seconds"])
            self.finished.add(job.id)
        finally:
            if job.id not in self.finished:  # cancelled (trio.Cancelled, or the coroutine closed)
                self.cancelled[job.id] = trio.current_time()
            self.changes.notify()
        return "done"


@asynccontextmanager
async def cluster() -> AsyncIterator[tuple[Leader, str, Slow]]:
    slow = Slow()
    leader = Leader(listen=["tcp://127.0.0.1:0"])
    async with trio.open_nursery() as nursery:
        [url] = await nursery.start(leader.run)
        await nursery.start(WorkerRunner(slow, url, name="slow").run)
        yield leader, url, slow
        nursery.cancel_scope.cancel()


def subject_stats(leader: Leader, subject: str = "slow.x") -> dict:
    return leader.stats()["subjects"][subject]


async def test_a_submit_that_times_out_cancels_its_job():
    with trio.fail_after(15):
        async with cluster() as (leader, url, slow), Client.connect(url) as client:
            started = trio.current_time()
            with pytest.raises(SubmitTimeout) as info:
                await client.submit("slow.x", {"seconds": 15}, timeout=0.5, job_id="timed-out")
            assert 0.5 <= trio.current_time() - started < 0.75
            assert info.value.job_id == "timed-out"
            await slow.changes.wait_for(lambda: "timed-out" in slow.cancelled)
            assert slow.cancelled["timed-out"] - started < 1.0
            await wait_until(lambda: leader.stats()["jobs_active"] == 0, timeout=3)


async def test_a_cancelled_submit_cancels_its_job_even_when_the_client_closes_right_after():
    with trio.fail_after(15):
        async with cluster() as (leader, url, slow):
            async with Client.connect(url) as client:
                with trio.move_on_after(0.3):
                    await client.submit("slow.x", {"seconds": 15}, job_id="cancelled")
                assert client.abandoned == 1
            # The client is closed: its cancel went out before the connection closed.
            await slow.changes.wait_for(lambda: "cancelled" in slow.cancelled)
            await wait_until(lambda: subject_stats(leader)["cancelled"] == 1, timeout=3)
            assert leader.stats()["jobs_active"] == 0
            assert "cancelled" not in slow.finished


async def test_a_detached_submit_leaves_its_job_running():
    with trio.fail_after(15):
        async with cluster() as (leader, url, slow):
            async with Client.connect(url) as client:
                with trio.move_on_after(0.2):
                    await client.submit("slow.x", {"seconds": 0.6}, job_id="detached", detach=True)
                assert client.abandoned == 0
            await wait_until(lambda: subject_stats(leader)["done"] == 1, timeout=3)
            assert "detached" in slow.finished and not slow.cancelled


class LeaveEarly(Exception):
    pass


@pytest.mark.parametrize("how", ["break", "exception", "cancel", "aclose"])
async def test_leaving_a_map_early_cancels_its_running_jobs(how: str):
    """The first job ends at once, five run for 15 s: leaving the map after the first
    result cancels those five; then the client closes at once."""
    payloads = [{"seconds": 0}] + [{"seconds": 15}] * 5
    with trio.fail_after(15):
        async with cluster() as (leader, url, slow):
            async with Client.connect(url) as client:
                got = []
                if how == "break":
                    async for result in client.map("slow.x", payloads, limit=6):
                        got.append(result)
                        break
                elif how == "exception":

                    async def leave_by_raising() -> None:
                        async for result in client.map("slow.x", payloads, limit=6):
                            got.append(result)
                            raise LeaveEarly

                    with pytest.raises(LeaveEarly):
                        await leave_by_raising()
                elif how == "cancel":
                    with trio.move_on_after(0.5):
                        async for result in client.map("slow.x", payloads, limit=6):
                            got.append(result)  # noqa: PERF401 - a comprehension would drop what came before the cancel
                else:
                    async with client.map("slow.x", payloads, limit=6) as results:
                        got.append(await results.__anext__())
                assert got == ["done"]
                await slow.changes.wait_for(lambda: len(slow.started) == 6)
            await slow.changes.wait_for(lambda: len(slow.cancelled) == 5)
            await wait_until(lambda: subject_stats(leader)["cancelled"] == 5, timeout=3)
            assert leader.stats()["jobs_active"] == 0


async def test_a_detached_map_left_early_leaves_its_jobs_running():
    payloads = [{"seconds": 0}] + [{"seconds": 0.5}] * 3
    with trio.fail_after(15):
        async with cluster() as (_leader, url, slow):
            async with Client.connect(url) as client:
                async for _ in client.map("slow.x", payloads, limit=4, detach=True):
                    break
            await slow.changes.wait_for(lambda: len(slow.finished) == 4)
            assert not slow.cancelled


async def test_a_job_two_clients_wait_for_goes_on_when_one_abandons_it():
    with trio.fail_after(15):
        async with cluster() as (leader, url, slow):
            async with Client.connect(url) as first, Client.connect(url) as second:
                results = []

                async def wait_too() -> None:
                    results.append(await second.submit("slow.x", {"seconds": 1}, job_id="shared"))

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(wait_too)
                    await slow.changes.wait_for(lambda: "shared" in slow.started)
                    with trio.move_on_after(0.2):
                        await first.submit("slow.x", {"seconds": 1}, job_id="shared")
                    assert first.abandoned == 1
                assert results == ["done"]
            assert not slow.cancelled
            await wait_until(lambda: subject_stats(leader)["done"] == 1, timeout=3)


async def test_two_calls_of_one_client_for_one_job_id_one_abandons():
    """The leader counts waits per client: the client keeps its Cancel to itself while
    another of its calls waits for the same job."""
    with trio.fail_after(15):
        async with cluster() as (_leader, url, slow), Client.connect(url) as client:
            results = []

            async def wait_too() -> None:
                results.append(await client.submit("slow.x", {"seconds": 1}, job_id="twice"))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(wait_too)
                await slow.changes.wait_for(lambda: "twice" in slow.started)
                with trio.move_on_after(0.2):
                    await client.submit("slow.x", {"seconds": 1}, job_id="twice")
            assert results == ["done"]
            assert not slow.cancelled


async def test_a_map_timeout_fails_the_late_job_and_cancels_it():
    payloads = [{"seconds": 0}, {"seconds": 15}, {"seconds": 0}]
    with trio.fail_after(15):
        async with cluster() as (_leader, url, slow), Client.connect(url) as client:
            started = trio.current_time()
            got = [
                r async for r in client.map("slow.x", payloads, timeout=0.5, return_exceptions=True)
            ]
            assert 0.5 <= trio.current_time() - started < 0.75
            assert got[0] == got[2] == "done"
            assert isinstance(got[1], SubmitTimeout) and "within 0.5 s" in str(got[1])
            await slow.changes.wait_for(lambda: len(slow.cancelled) == 1)
