"""Reliability with real worker processes: SIGKILL mid-job, nothing accepted is lost.

A leader runs in the test's process; a WorkerGroup runs two ``tests.workers:Recorder``
processes that log ``start``/``done`` lines to a file around each job. While a client
waits on 200 QoS 1 jobs, each original worker process is SIGKILLed while it holds
unfinished jobs. Then: every job returned its own result to its own ``submit`` call, no
Result frame reached the client twice, the jobs cut short were run again (by another
process) and the group replaced both processes.

Real time and processes (end to end); every test is capped with ``fail_after``.
"""

from __future__ import annotations

import os
import signal
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
import trio

from actors import Client, Leader, WorkerGroup
from runtime import Backoff
from tests.helpers import wait_until

pytestmark = pytest.mark.e2e

JOBS = 200
FAST = Backoff(base=0.05, factor=2.0, cap=0.5, jitter=0.1)


def read_log(path: Path) -> tuple[dict[str, set[int]], dict[str, set[int]]]:
    """``(started, done)``: for each job id, the pids that started / finished it."""
    started: dict[str, set[int]] = defaultdict(set)
    done: dict[str, set[int]] = defaultdict(set)
    if path.exists():
        for line in path.read_text().splitlines():
            event, job_id, pid, _attempt = line.split()
            (started if event == "start" else done)[job_id].add(int(pid))
    return started, done


def unfinished_on(pid: int, path: Path) -> set[str]:
    started, done = read_log(path)
    return {job for job, pids in started.items() if pid in pids and pid not in done.get(job, ())}


async def kill_mid_job(pid: int, path: Path, *, after_done: int) -> None:
    """SIGKILL ``pid`` once ``after_done`` jobs finished and it holds unfinished jobs."""

    def mid_job() -> bool:
        _, done = read_log(path)
        return len(done) >= after_done and len(unfinished_on(pid, path)) >= 2

    # The log is written by the worker processes: nothing to wait on but the file.
    await wait_until(
        mid_job, timeout=30, interval=0.005, what=f"process {pid} in the middle of its jobs"
    )
    os.kill(pid, signal.SIGKILL)


async def workers_connected(leader: Leader, count: int, *, timeout: float = 30) -> None:
    """Until the leader counts ``count`` workers (processes connect in their own time)."""
    await wait_until(
        lambda: leader.stats()["workers"] == count,
        timeout=timeout,
        what=f"{count} workers connected to the leader",
    )


@pytest.mark.parametrize("scheme", ["tcp", "ws"])
async def test_sigkilled_workers_lose_no_accepted_job(tmp_path: Path, scheme: str) -> None:
    log = tmp_path / "jobs.log"
    leader = Leader(
        listen=["tcp://127.0.0.1:0", "ws://127.0.0.1:0"],
        retry_backoff=FAST,
        ack_timeout=10.0,
        heartbeat=1.0,
    )
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            urls = await nursery.start(leader.run)
            url = next(u for u in urls if u.startswith(scheme + "://"))
            group = WorkerGroup(
                "rec", "tests.workers:Recorder", 2, url, restart_backoff=FAST, drain_grace=1.0
            )
            await nursery.start(group.run)
            await workers_connected(leader, 2)
            originals = group.pids()
            assert len(set(originals)) == 2

            results: dict[str, list[Any]] = defaultdict(list)
            async with Client.connect(url) as client:

                async def submit(i: int) -> None:
                    job_id = f"job-{i}"
                    payload = {"n": i, "log": str(log), "seconds": 0.1}
                    results[job_id].append(
                        await client.submit("test.record", payload, job_id=job_id)
                    )

                held: dict[int, set[str]] = {}
                async with trio.open_nursery() as jobs:
                    for i in range(JOBS):
                        jobs.start_soon(submit, i)
                    await kill_mid_job(originals[0], log, after_done=20)
                    await group.wait_until(
                        lambda g: len(g.pids()) == 2 and originals[0] not in g.pids()
                    )
                    # Dead and reaped: its part of the log is final.
                    held[originals[0]] = unfinished_on(originals[0], log)
                    await workers_connected(leader, 2)  # the replacement is in
                    await kill_mid_job(originals[1], log, after_done=80)
                    await group.wait_until(lambda g: originals[1] not in g.pids())
                    held[originals[1]] = unfinished_on(originals[1], log)

                # Every accepted job answered its submit call once, with its own result.
                assert sorted(results) == sorted(f"job-{i}" for i in range(JOBS))
                for i in range(JOBS):
                    [answer] = results[f"job-{i}"]
                    assert answer["n"] == i
                assert client.stray_results == 0
                assert client.results_received == JOBS

            started, done = read_log(log)
            for pid, jobs_held in held.items():
                assert jobs_held, "the kill must land while the process holds jobs"
                for job in jobs_held:
                    # Cut short on the killed process, finished by a live one.
                    assert pid not in done[job]
                    assert done[job] - {pid}
                    assert results[job][0]["pid"] != pid
            assert set(done) == set(started) == {f"job-{i}" for i in range(JOBS)}

            stats = leader.stats()
            total = stats["subjects"]["test.record"]
            assert total["done"] == JOBS and total["dead"] == 0
            assert total["redelivered"] >= sum(len(h) for h in held.values())

            # The group replaced both killed processes.
            await group.wait_until(
                lambda g: len(g.pids()) == 2 and not set(originals) & set(g.pids())
            )
            states = group.states()
            assert [s.restarts for s in states] == [1, 1]
            assert all(s.last_exit == -signal.SIGKILL for s in states)
            nursery.cancel_scope.cancel()
