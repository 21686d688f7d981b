"""The client's job API that fails fast and says why, against a real leader.

``NoRoute`` (naming the subject and what it may have meant) from ``submit``, ``request``
and ``map``, unless ``wait_for_worker``; remote tracebacks on ``JobFailed``; ``map`` in
input order by default (``ordered=False``: ``(index, result)`` pairs as they complete),
``return_exceptions`` in place, a timeout per job; results by id (``NotFound``), and
``Conflict`` for a job id reused with another payload; the leader's statistics.

Real time (sockets, in-process workers); each test capped with ``fail_after``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio

from actors import (
    Client,
    Conflict,
    DeadLettered,
    Job,
    JobFailed,
    Leader,
    NoRoute,
    NotFound,
    Worker,
)
from actors.worker import WorkerRunner
from runtime import Backoff

pytestmark = pytest.mark.e2e

FAST_RETRY = Backoff(base=0.01, factor=2.0, cap=0.05, jitter=0.0)


class Square(Worker):
    """Squares ``payload["n"]`` after ``payload.get("sleep", 0)`` seconds; fails on ``fail``."""

    subjects = ["math.square"]
    concurrency = 8

    def __init__(self) -> None:
        self.running = 0
        self.peak = 0

    async def handle(self, job: Job) -> dict:
        self.running += 1
        self.peak = max(self.peak, self.running)
        try:
            await trio.sleep(job.payload.get("sleep", 0))
            if job.payload.get("fail"):
                raise ValueError(f"cannot square {job.payload['n']}")
            return {"square": job.payload["n"] ** 2}
        finally:
            self.running -= 1


@asynccontextmanager
async def cluster(*workers: Worker, **leader_kw) -> AsyncIterator[tuple[Leader, str, trio.Nursery]]:
    leader_kw.setdefault("retry_backoff", FAST_RETRY)
    leader = Leader(listen=["tcp://127.0.0.1:0"], **leader_kw)
    async with trio.open_nursery() as nursery:
        [url] = await nursery.start(leader.run)
        for i, worker in enumerate(workers):
            await nursery.start(WorkerRunner(worker, url, name=f"w{i}").run)
        yield leader, url, nursery
        nursery.cancel_scope.cancel()


# --------------------------------------------------------------------------- no route


async def test_a_subject_no_worker_serves_is_refused_at_once_with_a_suggestion():
    with trio.fail_after(10):
        async with cluster(Square()) as (_, url, _n), Client.connect(url) as client:
            started = trio.current_time()
            with pytest.raises(NoRoute) as info:
                await client.submit("math.sqare", {"n": 3}, timeout=5)
            assert trio.current_time() - started < 1.0  # not after the timeout
            assert info.value.subject == "math.sqare"
            assert (
                str(info.value) == "no worker serves subject math.sqare (did you mean math.square?)"
            )
            with pytest.raises(NoRoute, match=r"math\.sqare"):
                await client.request("math.sqare", {"n": 3})
            with pytest.raises(NoRoute, match=r"did you mean math\.square\?"):
                async for _ in client.map("math.sqare", [{"n": 1}, {"n": 2}]):
                    pass  # pragma: no cover
            # Served subjects still work on the same connection.
            assert await client.submit("math.square", {"n": 3}) == {"square": 9}


async def test_wait_for_worker_queues_the_job_until_a_worker_comes():
    with trio.fail_after(10):
        async with cluster() as (_, url, nursery), Client.connect(url) as client:
            results = []

            async def submit() -> None:
                results.append(
                    await client.submit("math.square", {"n": 4}, wait_for_worker=True, timeout=5)
                )

            async with trio.open_nursery() as waiting:
                waiting.start_soon(submit)
                await trio.sleep(0.2)  # it waits (real time: e2e)
                assert results == []
                await nursery.start(WorkerRunner(Square(), url, name="late").run)
            assert results == [{"square": 16}]
            got = [r async for r in client.map("math.square", [{"n": 2}], wait_for_worker=True)]
            assert got == [{"square": 4}]


# --------------------------------------------------------------------------- failures


async def test_a_failed_job_carries_the_remote_traceback():
    with trio.fail_after(10):
        async with cluster(Square(), max_attempts=2) as (_, url, _n), Client.connect(url) as client:
            with pytest.raises(DeadLettered) as dead:
                await client.submit("math.square", {"n": 3, "fail": True})
            with pytest.raises(JobFailed) as failed:
                await client.request("math.square", {"n": 5, "fail": True})
        for error, n in ((dead.value, 3), (failed.value, 5)):
            assert error.error_type == "ValueError"
            assert error.traceback is not None
            assert "Traceback (most recent call last)" in error.traceback
            assert f"ValueError: cannot square {n}" in error.traceback
            assert "in handle" in error.traceback


# --------------------------------------------------------------------------- map


async def test_map_yields_results_in_input_order_with_up_to_limit_in_flight():
    """Later payloads finish first; the results still come in input order."""
    square = Square()
    payloads = [{"n": i, "sleep": (8 - i % 8) * 0.02} for i in range(40)]
    with trio.fail_after(10):
        async with cluster(square) as (_, url, _n), Client.connect(url) as client:
            got = [r["square"] async for r in client.map("math.square", payloads, limit=8)]
    assert got == [i * i for i in range(40)]
    assert square.peak == 8


async def test_map_unordered_yields_index_and_result_as_they_complete():
    payloads = [{"n": 0, "sleep": 0.3}, {"n": 1}, {"n": 2}]
    with trio.fail_after(10):
        async with cluster(Square()) as (_, url, _n), Client.connect(url) as client:
            got = [pair async for pair in client.map("math.square", payloads, ordered=False)]
    assert sorted(got) == [(0, {"square": 0}), (1, {"square": 1}), (2, {"square": 4})]
    assert got[-1] == (0, {"square": 0})  # the slow one came last


async def test_map_return_exceptions_puts_each_failure_in_its_place():
    payloads = [{"n": 0, "sleep": 0.1}, {"n": 1, "fail": True}, {"n": 2}]
    with trio.fail_after(10):
        async with cluster(Square(), max_attempts=1) as (_, url, _n), Client.connect(url) as client:
            got = [r async for r in client.map("math.square", payloads, return_exceptions=True)]
            assert got[0] == {"square": 0} and got[2] == {"square": 4}
            assert isinstance(got[1], DeadLettered) and "cannot square 1" in got[1].message
            # Without return_exceptions, the failure ends the iteration in its turn.
            async with client.map("math.square", payloads) as results:
                assert await anext(results) == {"square": 0}
                with pytest.raises(DeadLettered):
                    await anext(results)
                assert [r async for r in results] == []  # the map is over


async def test_map_holds_at_most_limit_results_for_an_earlier_one():
    """The first job is slow: the others finish, but no more than ``limit`` wait for it
    (then nothing more is sent until it ends)."""
    square = Square()
    payloads = [{"n": 0, "sleep": 0.5}] + [{"n": i} for i in range(1, 50)]
    with trio.fail_after(10):
        async with cluster(square) as (leader, url, _n), Client.connect(url) as client:
            results = client.map("math.square", payloads, limit=4)
            first = trio.current_time()
            assert await results.__anext__() == {"square": 0}
            assert trio.current_time() - first >= 0.45
            # Sent by then: the slow one, 4 held back, and 3 in flight beside it.
            assert leader.stats()["subjects"]["math.square"]["submitted"] <= 1 + 4 + 3
            assert [r["square"] async for r in results] == [i * i for i in range(1, 50)]


async def test_map_rejects_a_bad_limit_at_once():
    async with cluster() as (_, url, _n), Client.connect(url) as client:
        with pytest.raises(ValueError, match="limit must be at least 1"):
            client.map("math.square", [], limit=0)
        with pytest.raises(ValueError, match="timeout must be a number > 0"):
            client.map("math.square", [], timeout=0)


# --------------------------------------------------------------------------- by id


async def test_a_result_by_id_from_any_client():
    with trio.fail_after(10):
        async with cluster(Square(), max_attempts=1) as (_, url, _n):
            async with Client.connect(url) as first:
                assert await first.submit("math.square", {"n": 6}, job_id="job-6") == {"square": 36}
                with pytest.raises(DeadLettered):
                    await first.submit("math.square", {"n": 7, "fail": True}, job_id="job-7")
            async with Client.connect(url) as second:
                assert await second.result("job-6") == {"square": 36}
                with pytest.raises(JobFailed) as failed:
                    await second.result("job-7")
                assert (
                    failed.value.error_type == "ValueError"
                    and "cannot square 7" in failed.value.traceback
                )
                with pytest.raises(NotFound) as missing:
                    await second.result("no-such-job")
                assert missing.value.job_id == "no-such-job" and "no job no-such-job" in str(
                    missing.value
                )


async def test_a_result_by_id_of_a_running_job():
    with trio.fail_after(10):
        async with cluster(Square()) as (_, url, _n), Client.connect(url) as client:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(
                    lambda: client.submit("math.square", {"n": 8, "sleep": 0.5}, job_id="job-8")
                )
                await trio.sleep(0.1)
                with pytest.raises(NotFound, match="has not finished yet"):
                    await client.result("job-8")
                assert await client.result("job-8", wait=True) == {"square": 64}


async def test_a_job_id_reused_with_another_payload_is_a_conflict():
    with trio.fail_after(10):
        async with cluster(Square()) as (_, url, _n), Client.connect(url) as client:
            assert await client.submit("math.square", {"n": 2}, job_id="same") == {"square": 4}
            assert await client.submit("math.square", {"n": 2}, job_id="same") == {"square": 4}
            with pytest.raises(Conflict) as conflict:
                await client.submit("math.square", {"n": 3}, job_id="same")
            assert conflict.value.job_id == "same" and "another subject or payload" in str(
                conflict.value
            )


async def test_the_leaders_statistics():
    with trio.fail_after(10):
        async with cluster(Square()) as (_leader, url, _n), Client.connect(url) as client:
            await client.submit("math.square", {"n": 2})
            stats = await client.stats()
            assert stats["subjects"]["math.square"]["done"] == 1
            assert stats["workers"] == 1 and stats["connections"] == 2
            assert stats["listen"] == [url]
