"""Blocking handlers: a plain ``def handle`` runs in a thread; an async one that blocks the
event loop is named in a warning.

Real time (blocking is the point), against a real leader over loopback (``e2e``).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import pytest
import trio

from actors import Client, Job, Leader, Worker
from actors.worker import WorkerRunner
from actors.worker._failures import Reject

pytestmark = pytest.mark.e2e


class Blocking(Worker):
    """An async handler that calls ``time.sleep``: it holds the event loop."""

    subjects = ["block.>"]
    concurrency = 2
    blocking_warning = 0.2

    async def handle(self, job: Job) -> Any:
        time.sleep(job.payload)  # noqa: ASYNC251 - the mistake under test
        return "slept"


class Threaded(Worker):
    """A plain ``def handle``: it runs in a thread, and may block."""

    subjects = ["sync.>"]
    concurrency = 2
    blocking_warning = 0.2

    def handle(self, job: Job) -> Any:  # type: ignore[override]
        if job.subject == "sync.reject":
            raise Reject("not this one")
        trio.from_thread.run(job.progress, 0.5, "half way")
        time.sleep(job.payload)
        return {"slept": job.payload}


async def _serve(nursery: trio.Nursery, worker: Worker) -> tuple[str, WorkerRunner]:
    leader = Leader(listen=["tcp://127.0.0.1:0"])
    [url] = await nursery.start(leader.run)
    runner = WorkerRunner(worker, url, name="w")
    await nursery.start(runner.run)
    return url, runner


class Ticker:
    """Measures how responsive the event loop is: the longest gap between its ticks."""

    def __init__(self) -> None:
        self.longest = 0.0

    async def run(self) -> None:
        last = time.monotonic()
        while True:
            await trio.sleep(0.01)
            now = time.monotonic()
            self.longest = max(self.longest, now - last)
            last = now


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "actors.worker"
        and r.levelno == logging.WARNING
        and "event loop" in r.getMessage()
    ]


async def test_an_async_handler_that_blocks_the_loop_is_named(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            url, runner = await _serve(nursery, Blocking())
            async with Client.connect(url) as client:
                assert await client.submit("block.x", 0.7, job_id="b1", timeout=10) == "slept"
                await trio.sleep(0.3)  # the watchdog's next look
                assert await client.submit("block.x", 0.05, job_id="b2", timeout=10) == "slept"
                await trio.sleep(0.3)
            nursery.cancel_scope.cancel()
    [held, released] = _warnings(caplog)  # one stall, and under the threshold nothing
    assert held.startswith(
        "worker w: job b1 (block.x), in Blocking.handle at "
        f"{__file__}:{Blocking.handle.__code__.co_firstlineno + 1} (handle), has held the event loop for "
    )
    assert "write a plain `def handle` (it runs in a thread)" in held
    assert released.startswith("worker w: job b1 (block.x), in Blocking.handle at ")
    held_for = float(released.split("holding it for ")[1].split(" s")[0])
    assert 0.5 <= held_for <= 0.7
    assert runner._watchdog is not None and runner._watchdog.reported == 1


async def test_blocking_warning_none_turns_the_watchdog_off() -> None:
    class Quiet(Blocking):
        blocking_warning = None

    runner = WorkerRunner(Quiet(), "tcp://127.0.0.1:1")
    assert runner._watchdog is None

    class Bad(Blocking):
        blocking_warning = 0

    with pytest.raises(ValueError, match="blocking_warning must be a number of seconds > 0"):
        WorkerRunner(Bad(), "tcp://127.0.0.1:1")


async def test_a_plain_def_handler_runs_in_threads_side_by_side(
    caplog: pytest.LogCaptureFixture,
) -> None:
    ticker = Ticker()
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            url, _ = await _serve(nursery, Threaded())
            async with Client.connect(url) as client:
                progress: list[tuple[float | None, str | None]] = []
                nursery.start_soon(ticker.run)
                started = time.monotonic()
                async with trio.open_nursery() as jobs:
                    for i in range(3):
                        jobs.start_soon(
                            lambda i=i: client.submit(
                                "sync.sleep", 0.5, job_id=f"s{i}", timeout=10,
                                on_progress=lambda f, n: progress.append((f, n)),
                            )
                        )  # fmt: skip
                took = time.monotonic() - started
                with pytest.raises(Exception, match="not this one"):
                    await client.submit("sync.reject", 0, timeout=10)
            nursery.cancel_scope.cancel()
    # Two at once (concurrency 2), then the third: 1 s, not 1.5 s as on the event loop.
    assert 0.95 < took < 1.4
    assert ticker.longest < 0.2  # the loop served everything else meanwhile
    assert progress == [(0.5, "half way")] * 3  # job.progress from the thread
    assert _warnings(caplog) == []


async def test_sync_threads_never_outnumber_the_concurrency() -> None:
    running = 0
    most = 0
    lock = threading.Lock()

    class Counting(Worker):
        subjects = ["count"]
        concurrency = 3

        def handle(self, job: Job) -> Any:  # type: ignore[override]
            nonlocal running, most
            with lock:
                running += 1
                most = max(most, running)
            time.sleep(0.05)
            with lock:
                running -= 1
            return job.payload

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            url, _ = await _serve(nursery, Counting())
            async with Client.connect(url) as client:
                got = [r async for r in client.map("count", range(12), limit=12)]
            nursery.cancel_scope.cancel()
    assert sorted(got) == list(range(12))
    assert most == 3
