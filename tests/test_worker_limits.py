"""Recycling: a worker past ``max_jobs`` or ``max_memory`` drains and is replaced at once.

- The runner (virtual time, its connection replaced by a list): the job that reaches a
  limit is answered after a Credit 0, so the leader sends nothing more; the runner stops
  with the reason in ``recycled`` and logs it once.
- The supervisor and the group (virtual time): a child that returns ``Recycle`` is started
  again at once, counted as a recycle, never as a restart (``max_restarts=0`` holds).
- End to end (real time): worker processes of a group answer every job exactly once while
  they are replaced (several pids answer); a worker that leaks memory is replaced once its
  resident memory is over ``max_memory``.
"""

from __future__ import annotations

import logging
import mmap
import os
from typing import Any

import pytest
import trio
import trio.testing

from actors import Client, Job, Leader, Worker, WorkerGroup
from actors._checks import format_size, parse_size
from actors.worker._limits import current_rss
from actors.worker._runner import WorkerRunner
from actors.worker._worker import RECYCLE_EXIT_STATUS
from protocol import Credit, Result
from runtime import Backoff, ChildSpec, ChildState, Restart, Supervisor, open_actor_system
from runtime._child import Recycle
from tests.test_group import wait_for_workers
from tests.test_worker_slots import _assign, _Sink

URL = "tcp://127.0.0.1:1"  # never connected to
FAST = Backoff(base=0.05, factor=2.0, cap=0.2, jitter=0.0)


class Counted(Worker):
    """Answers its payload; recycled after three jobs."""

    subjects = ["count.x"]
    concurrency = 1
    max_jobs = 3

    async def handle(self, job: Job) -> Any:
        return job.payload


def _runner(worker: Worker, nursery: trio.Nursery, **kwargs: Any) -> tuple[WorkerRunner, _Sink]:
    runner = WorkerRunner(worker, URL, **kwargs)
    sink = _Sink()
    runner._conn = sink  # type: ignore[assignment]
    runner._nursery = nursery
    return runner, sink


# --------------------------------------------------------------------------- the runner


async def test_past_max_jobs_the_worker_asks_for_nothing_more_and_stops(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="actors.worker")
    async with trio.open_nursery() as nursery:
        runner, sink = _runner(Counted(), nursery, name="count-0", group="count")
        for i in range(3):
            assert not runner._stop.is_set()
            runner._on_assign(_assign(i, "count.x", i), trio.current_time())
            await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    sent = [m for _, m in sink.sent]
    # The Credit 0 goes out before the third Result: the leader never sends a fourth job.
    assert [type(m) for m in sent] == [Result, Result, Credit, Result]
    assert sent[2].credit == 0 and [m.payload for m in sent if type(m) is Result] == [0, 1, 2]
    assert runner.recycled == "handled 3 jobs (max_jobs)" and runner._stop.is_set()
    assert (runner.handled, runner.completed) == (3, 3)
    lines = [r.getMessage() for r in caplog.records if r.name == "actors.worker"]
    assert lines == ["group count: count-0 recycled: handled 3 jobs (max_jobs)"]


async def test_over_max_memory_after_a_job_the_worker_recycles(
    autojump_clock: trio.testing.MockClock,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="actors.worker")
    sizes = iter([500 * 2**20, 530 * 2**20])  # below, then over the limit
    monkeypatch.setattr("actors.worker._limits.current_rss", lambda: next(sizes))
    async with trio.open_nursery() as nursery:
        # The argument wins over the class's max_jobs (3) and max_memory (none).
        runner, sink = _runner(Counted(), nursery, name="w", max_memory="512MiB", max_jobs=100)
        runner._on_assign(_assign(0, "count.x", 0), trio.current_time())
        await trio.testing.wait_all_tasks_blocked()
        assert runner.recycled is None
        runner._on_assign(_assign(1, "count.x", 1), trio.current_time())
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    assert [type(m) for _, m in sink.sent] == [Result, Credit, Result]
    assert runner.recycled == "RSS 530 MiB over max_memory 512 MiB"
    assert [r.getMessage() for r in caplog.records] == [
        "worker w recycled: RSS 530 MiB over max_memory 512 MiB"
    ]


def test_limits_come_from_the_class_or_the_arguments() -> None:
    runner = WorkerRunner(Counted(), URL)
    assert (runner.max_jobs, runner.max_memory) == (3, None)

    class Leaky(Counted):
        max_jobs = None
        max_memory = "1.5GiB"

    runner = WorkerRunner(Leaky(), URL, max_jobs=7)
    assert (runner.max_jobs, runner.max_memory) == (7, 3 * 2**29)
    with pytest.raises(ValueError, match="max_jobs must be a positive int, got 0"):
        WorkerRunner(Counted(), URL, max_jobs=0)
    with pytest.raises(ValueError, match="unknown unit 'XB'"):
        WorkerRunner(Counted(), URL, max_memory="5XB")
    with pytest.raises(ValueError, match="max_jobs must be a positive int"):
        WorkerGroup("g", Counted, 1, URL, in_process=True, max_jobs=-1)
    with pytest.raises(ValueError, match="expected a size"):
        WorkerGroup("g", Counted, 1, URL, in_process=True, max_memory="lots")


@pytest.mark.parametrize(
    ("text", "size"),
    [
        (1000, 1000),
        ("512MiB", 512 * 2**20),
        ("2GB", 2 * 10**9),
        ("1.5G", 3 * 2**29),
        (" 64 kb ", 64_000),
        ("7", 7),
    ],
)
def test_sizes(text: Any, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize(
    ("text", "match"),
    [
        (0, r"at least 1 byte, got 0$"),
        (-5, r"at least 1 byte, got -5$"),
        ("0MiB", r"at least 1 byte, got '0MiB'$"),
        (True, r"^expected a size in bytes such as .*, got True$"),
        (1.5, r"^expected a size in bytes such as .*, got 1\.5$"),
        ("", r"^expected a size in bytes such as .*, got ''$"),
        ("MiB", r"^expected a size in bytes such as .*, got 'MiB'$"),
        ("1 2 MB", r"^expected a size in bytes such as .*, got '1 2 MB'$"),
        ("5XB", r"^unknown unit 'XB' in '5XB'"),
    ],
)
def test_bad_sizes(text: Any, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        parse_size(text)


def test_format_size() -> None:
    assert [format_size(n) for n in (900, 2048, 530 * 2**20, 3 * 2**29)] == [
        "900 B",
        "2 KiB",
        "530 MiB",
        "1.5 GiB",
    ]


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="reads /proc (Linux)")
def test_current_rss_follows_allocations() -> None:
    before = current_rss()
    assert before is not None and before > 1 << 20
    with mmap.mmap(-1, 50 << 20) as block:  # fresh pages (a bytes object may reuse freed ones)
        for offset in range(0, len(block), mmap.PAGESIZE):
            block[offset] = 1  # written, so resident
        assert current_rss() >= before + (45 << 20)


def test_the_group_passes_its_limits_to_its_processes() -> None:
    group = WorkerGroup(
        "sq", "tests.workers:Echo", 1, URL, max_memory="256MiB", max_jobs=1000, python="/py"
    )
    argv = group.command(0)
    assert argv[argv.index("--max-memory") + 1] == str(256 * 2**20)
    assert argv[argv.index("--max-jobs") + 1] == "1000"
    assert argv[-1] == "tests.workers:Echo"
    assert group.describe().endswith("policy round_robin, max_memory 256 MiB, max_jobs 1000)")
    assert "--max-jobs" not in WorkerGroup("sq", "tests.workers:Echo", 1, URL).command(0)


# --------------------------------------------------------------------------- supervision


async def test_a_child_that_returns_recycle_is_replaced_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    starts: list[float] = []
    runs = iter([1.0, 1.0, 1.0, 0.5, 100.0])

    async def child() -> Recycle | None:
        starts.append(trio.current_time())
        await trio.sleep(next(runs))
        if len(starts) < 4:
            return Recycle("tired")
        raise ValueError("a real crash")

    spec = ChildSpec("c", child, backoff=Backoff(base=5.0, factor=1.0, cap=5.0))
    supervisor = Supervisor([spec], max_restarts=1, within=60)  # one restart allowed
    with trio.fail_after(60):
        async with open_actor_system() as system:
            await system.spawn(supervisor)
            await trio.sleep(3.2)
            info = supervisor.child("c")
            assert (info.recycles, info.restarts, info.last_recycle, info.attempt) == (
                3,
                0,
                "tired",
                0,
            )
            await trio.sleep(10)
            info = supervisor.child("c")
    # Recycled at once three times (no backoff, no intensity: max_restarts=1 holds); the
    # crash then waits its backoff (5 s) and is the one restart counted.
    assert starts == [0.0, 1.0, 2.0, 3.0, 8.5]
    assert (info.recycles, info.restarts, info.state) == (3, 1, ChildState.RUNNING)
    assert isinstance(info.last_error, ValueError)


async def test_a_temporary_child_that_recycles_is_not_replaced(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def child() -> Recycle:
        return Recycle()

    supervisor = Supervisor([ChildSpec("t", child, restart=Restart.TEMPORARY)])
    with trio.fail_after(60):
        async with open_actor_system() as system:
            await system.spawn(supervisor)
            await trio.sleep(1)
            assert supervisor.children() == []


class _RecyclingRunWorker:
    """Stands in for ``run_worker``: each run handles ``jobs`` jobs (a second each), then
    returns its recycle reason, as the real one does past ``max_jobs``."""

    def __init__(self) -> None:
        self.starts: list[float] = []
        self.calls: list[dict[str, Any]] = []

    async def __call__(self, worker, url, *, stop, task_status, **kwargs):
        self.calls.append(kwargs)
        self.starts.append(trio.current_time())
        task_status.started()
        with trio.move_on_after(kwargs["max_jobs"]):
            await stop.wait()
            return None
        return f"handled {kwargs['max_jobs']} jobs (max_jobs)"


async def test_an_in_process_group_replaces_a_recycled_instance_at_once(
    monkeypatch: pytest.MonkeyPatch, autojump_clock: trio.testing.MockClock
) -> None:
    fake = _RecyclingRunWorker()
    monkeypatch.setattr("actors.worker._runner.run_worker", fake)
    group = WorkerGroup(
        "g", Counted, 1, URL, in_process=True, max_jobs=2, max_memory="1GiB", max_restarts=0,
        restart_backoff=Backoff(base=10.0, factor=1.0, cap=10.0),
    )  # fmt: skip
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            await nursery.start(group.run)
            await trio.sleep(7)
            [state] = group.states()
            nursery.cancel_scope.cancel()
    assert fake.starts == [0.0, 2.0, 4.0, 6.0]  # no 10 s backoff; max_restarts=0 holds
    assert (state.recycles, state.restarts, state.last_error) == (3, 0, None)
    assert (fake.calls[0]["max_jobs"], fake.calls[0]["max_memory"]) == (2, 2**30)


# --------------------------------------------------------------------------- end to end


class Hog(Worker):
    """Keeps 40 MiB more after each job (a leak), and answers with its pid and RSS."""

    subjects = ["test.hog"]
    concurrency = 1

    def __init__(self) -> None:
        self.leak: list[bytes] = []

    async def handle(self, job: Job) -> Any:
        self.leak.append(b"x" * (40 << 20))  # written: resident at once
        return {"n": job.payload, "pid": os.getpid(), "rss": current_rss()}


@pytest.mark.e2e
async def test_worker_processes_recycled_by_max_jobs_answer_every_job_once() -> None:
    with trio.fail_after(40):
        async with trio.open_nursery() as nursery:
            leader = Leader(listen=["tcp://127.0.0.1:0"], retry_backoff=FAST)
            [url] = await nursery.start(leader.run)
            group = WorkerGroup(
                "echo", "tests.workers:Echo", 1, url, max_jobs=3, max_restarts=0, drain_grace=1.0
            )
            await nursery.start(group.run)
            await wait_for_workers(leader, 1)
            async with Client.connect(url) as client:
                answers = [await client.submit("test.echo", n, timeout=15) for n in range(10)]
            [state] = group.states()
            nursery.cancel_scope.cancel()
    assert [a["payload"] for a in answers] == list(range(10))
    pids = [a["pid"] for a in answers]
    # Three jobs per process, each a new one: the Credit 0 came before the third answer.
    assert len(set(pids)) == 4
    assert pids == [pids[0]] * 3 + [pids[3]] * 3 + [pids[6]] * 3 + [pids[9]]
    assert (state.recycles, state.restarts) == (3, 0)
    stats = leader.stats()["subjects"]["test.echo"]
    assert (stats["done"], stats["failed"], stats["redelivered"]) == (10, 0, 0)


@pytest.mark.e2e
async def test_a_worker_process_over_max_memory_is_replaced() -> None:
    limit = 200 * 2**20
    with trio.fail_after(40):
        async with trio.open_nursery() as nursery:
            leader = Leader(listen=["tcp://127.0.0.1:0"], retry_backoff=FAST)
            [url] = await nursery.start(leader.run)
            group = WorkerGroup(
                "hog", "tests.test_worker_limits:Hog", 1, url, max_memory="200MiB", max_restarts=0,
                drain_grace=1.0,
            )  # fmt: skip
            await nursery.start(group.run)
            await wait_for_workers(leader, 1)
            async with Client.connect(url) as client:
                answers = [await client.submit("test.hog", n, timeout=15) for n in range(8)]
            [state] = group.states()
            nursery.cancel_scope.cancel()
    assert [a["n"] for a in answers] == list(range(8))
    by_pid: dict[int, list[int]] = {}
    for answer in answers:
        by_pid.setdefault(answer["pid"], []).append(answer["rss"])
    assert len(by_pid) >= 2 and state.restarts == 0
    # (the last process may be going over the limit, and away, as the group is read)
    assert len(by_pid) - 1 <= state.recycles <= len(by_pid)
    *recycled, last = by_pid.values()
    for sizes in recycled:  # each process served until a job left it over the limit
        assert all(size <= limit for size in sizes[:-1]) and sizes[-1] > limit
    assert all(size <= limit for size in last[:-1])


def test_the_recycle_status_is_not_a_crash_status() -> None:
    assert RECYCLE_EXIT_STATUS not in (0, 1, 2)
