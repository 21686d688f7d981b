"""WorkerGroup: supervision, restarts with backoff, scaling, graceful stops.

The first part runs in-process groups against a stand-in for ``run_worker`` on a virtual
clock, so restart and drain times are asserted exactly. The ``e2e`` part runs real
processes: dummy commands first, then real workers against a real leader.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

import attrs
import pytest
import trio

from actors.worker._group import STABLE_AFTER, WorkerGroup
from actors.worker._loader import ConfigError
from runtime import Backoff, ChildState, SupervisorEscalation
from tests import workers
from tests.helpers import wait_until

URL = "tcp://127.0.0.1:1"  # never connected to by the stand-in
EXACT = Backoff(base=1.0, factor=2.0, cap=4.0)  # no jitter: 1, 2, 4, 4, ... seconds


@attrs.define
class FakeRunWorker:
    """Stands in for ``run_worker``: records what it was asked to do and when."""

    crash_after: float | None = None  # raise this long after each start
    drain_for: float = 0.0  # seconds a drain takes after ``stop`` is set
    connect: bool = True  # call task_status.started() (the first Welcome)
    ignore_stop: bool = False
    starts: list[tuple[str, float]] = attrs.Factory(list)
    drained: list[tuple[str, float]] = attrs.Factory(list)
    calls: list[dict[str, Any]] = attrs.Factory(list)

    async def __call__(self, worker, url, *, stop, task_status, **kwargs):
        self.calls.append({"worker": worker, "url": url, **kwargs})
        self.starts.append((kwargs["name"], trio.current_time()))
        if self.connect:
            task_status.started()
        if self.crash_after is not None:
            await trio.sleep(self.crash_after)
            raise RuntimeError("worker crashed")
        await stop.wait()
        if self.ignore_stop:
            await trio.sleep_forever()
        await trio.sleep(self.drain_for)
        self.drained.append((kwargs["name"], trio.current_time()))

    def start_times(self, name: str) -> list[float]:
        return [t for n, t in self.starts if n == name]


@pytest.fixture
def fake(monkeypatch):
    fake = FakeRunWorker()
    monkeypatch.setattr("actors.worker._runner.run_worker", fake)
    return fake


def in_process_group(instances: int = 2, **kwargs: Any) -> WorkerGroup:
    kwargs.setdefault("restart_backoff", EXACT)
    return WorkerGroup("g", workers.Echo, instances, URL, in_process=True, **kwargs)


async def test_in_process_instances_start_and_drain_when_cancelled(fake, autojump_clock):
    fake.drain_for = 1.5
    group = in_process_group(3, policy="sticky", subjects=["a.*"], concurrency=3, drain_grace=2.0)
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            await nursery.start(group.run)
            assert [s.name for s in group.states()] == ["g-0", "g-1", "g-2"]
            assert all(s.state is ChildState.RUNNING for s in group.states())
            assert group.pids() == [os.getpid()] * 3
            await trio.sleep(10)
            nursery.cancel_scope.cancel()
    assert trio.current_time() == 11.5  # each drained for 1.5 s before run returned
    assert sorted(fake.drained) == [("g-0", 11.5), ("g-1", 11.5), ("g-2", 11.5)]
    call = fake.calls[0]
    assert isinstance(call["worker"], workers.Echo)
    assert call["url"] == URL
    assert (call["group"], call["policy"], call["mode"]) == ("g", "sticky", "round_robin")
    assert (call["subjects"], call["concurrency"], call["drain_grace"]) == (["a.*"], 3, 2.0)
    assert group.pids() == [] and group.states() == []


async def test_a_crashing_instance_is_restarted_with_backoff(fake, autojump_clock):
    fake.crash_after = 0.5
    group = in_process_group(1)
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            await nursery.start(group.run)
            await trio.sleep(13.1)
            nursery.cancel_scope.cancel()
    # crash at +0.5 each time; then wait 1, 2, 4, 4 (the cap)
    assert fake.start_times("g-0") == [0.0, 1.5, 4.0, 8.5, 13.0]


async def test_restart_backoff_starts_over_after_a_stable_run(fake, autojump_clock):
    fake.crash_after = STABLE_AFTER + 10
    group = in_process_group(1)
    with trio.fail_after(100):
        async with trio.open_nursery() as nursery:
            await nursery.start(group.run)
            await trio.sleep(45)
            state = group.states()[0]
            nursery.cancel_scope.cancel()
    assert fake.start_times("g-0") == [0.0, 21.0, 42.0]  # always the first delay, 1 s
    assert state.restarts == 2
    assert isinstance(state.last_error, BaseExceptionGroup)
    assert state.last_error.subgroup(RuntimeError) is not None


async def test_too_many_restarts_escalate_when_a_limit_is_set(fake, autojump_clock):
    fake.crash_after = 0.5
    group = in_process_group(1, max_restarts=2, within=60.0)
    with trio.fail_after(60), pytest.raises(BaseExceptionGroup) as info:
        async with trio.open_nursery() as nursery:
            await nursery.start(group.run)
    assert info.group_contains(SupervisorEscalation, depth=None)
    assert fake.start_times("g-0") == [0.0, 1.5, 4.0]


async def test_a_drain_that_overruns_is_cancelled_after_stop_timeout(fake, autojump_clock):
    fake.ignore_stop = True
    group = in_process_group(2, stop_timeout=3.0)
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            await nursery.start(group.run)
            await trio.sleep(1)
            nursery.cancel_scope.cancel()
    assert trio.current_time() == 4.0


async def test_an_instance_that_never_connected_stops_at_once(fake, autojump_clock):
    fake.connect = False
    group = in_process_group(2)
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            await nursery.start(group.run)
            await trio.sleep(1)
            nursery.cancel_scope.cancel()
    assert trio.current_time() == 1.0


async def test_scale_up_and_down(fake, autojump_clock):
    fake.drain_for = 0.5
    group = in_process_group(1)
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            await nursery.start(group.run)
            await trio.sleep(1)
            await group.scale(3)
            assert trio.current_time() == 1.0
            assert [s.name for s in group.states()] == ["g-0", "g-1", "g-2"]
            assert group.desired == 3
            await trio.sleep(1)
            await group.scale(1)  # the highest ones drain, and are gone when it returns
            assert trio.current_time() == 2.5
            assert [s.name for s in group.states()] == ["g-0"]
            assert sorted(fake.drained) == [("g-1", 2.5), ("g-2", 2.5)]
            await group.scale(0)
            assert group.states() == []
            await group.scale(2)
            assert [s.name for s in group.states()] == ["g-0", "g-1"]
            nursery.cancel_scope.cancel()
    assert fake.start_times("g-0") == [0.0, 3.0]
    assert fake.start_times("g-1") == [1.0, 3.0]


async def test_scale_needs_a_running_group_and_a_valid_count(fake):
    group = in_process_group(1)
    with pytest.raises(RuntimeError, match="not running"):
        await group.scale(2)
    with pytest.raises(ValueError, match="instances must be an int >= 0, got -1"):
        await group.scale(-1)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "a b"}, "group name 'a b'"),
        ({"instances": -1}, "instances must be an int >= 0"),
        ({"mode": "fanout"}, "unknown mode 'fanout'"),
        ({"policy": "random"}, "unknown policy 'random'"),
        ({"subjects": ["a..b"]}, "invalid subject patterns"),
        ({"subjects": []}, "invalid subject patterns"),
        ({"concurrency": 0}, "concurrency must be a positive int"),
    ],
)
def test_bad_arguments(kwargs, message):
    arguments = {"name": "g", "worker": "tests.workers:Echo", "instances": 1, "url": URL, **kwargs}
    with pytest.raises(ValueError, match=message):
        WorkerGroup(**arguments)


def test_a_class_other_processes_cannot_import_runs_in_process_only():
    class Local(workers.Echo):
        pass

    with pytest.raises(ConfigError, match="cannot be imported by another process"):
        WorkerGroup("g", Local, 1, URL)
    assert "Local" in WorkerGroup("g", Local, 1, URL, in_process=True).worker_spec


def test_instance_command_line():
    group = WorkerGroup(
        "sq",
        workers.Echo,
        2,
        "ws://127.0.0.1:7701",
        mode="broadcast",
        policy="least_loaded",
        subjects=["a.b", "c.>"],
        concurrency=8,
        drain_grace=3.0,
        python="/py",
    )
    assert group.command(1) == [
        "/py", "-m", "actors.worker",
        "--url", "ws://127.0.0.1:7701",
        "--name", "sq-1",
        "--group", "sq",
        "--policy", "least_loaded",
        "--mode", "broadcast",
        "--drain-grace", "3.0",
        "--parent-pid", str(os.getpid()),
        "--subjects", "a.b,c.>",
        "--concurrency", "8",
        "tests.workers:Echo",
    ]  # fmt: skip
    assert group.describe() == (
        "group sq: 2 x tests.workers:Echo (processes, mode broadcast, policy least_loaded, subjects a.b,c.>)"
    )


# --------------------------------------------------------------------------- real processes

SLEEP = "import time; time.sleep(60)"
EXIT_ON_TERM = "import signal, sys, time; signal.signal(signal.SIGTERM, lambda *a: sys.exit(0)); time.sleep(60)"
# Tells the test (its parent) with SIGUSR1 once SIGTERM is ignored.
IGNORE_TERM = (
    "import os, signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
    "os.kill(os.getppid(), signal.SIGUSR1); time.sleep(60)"
)


class DummyGroup(WorkerGroup):
    """Runs a small Python script instead of a worker, to test supervision alone."""

    def __init__(self, instances: int, script: str = SLEEP, **kwargs: Any) -> None:
        kwargs.setdefault("restart_backoff", Backoff(base=0.05, cap=0.05))
        super().__init__("d", "tests.workers:Echo", instances, URL, **kwargs)
        self.script = script

    def command(self, index: int) -> list[str]:
        return [sys.executable, "-c", self.script]


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.mark.e2e
async def test_a_killed_process_is_restarted_with_a_new_pid():
    group = DummyGroup(2, stop_timeout=2.0)
    with trio.fail_after(15):
        async with trio.open_nursery() as nursery:
            await nursery.start(group.run)
            first = group.pids()
            assert len(first) == 2
            os.kill(first[0], signal.SIGKILL)
            await group.wait_until(lambda g: len(g.pids()) == 2 and first[0] not in g.pids())
            states = group.states()
            assert states[1].pid == first[1]  # the other one was left alone
            assert (states[0].restarts, states[0].last_exit) == (1, -signal.SIGKILL)
            assert states[1].restarts == 0
            running = group.pids()
            nursery.cancel_scope.cancel()
    assert all(gone(pid) for pid in running)


@pytest.mark.e2e
async def test_processes_scale_up_and_down():
    group = DummyGroup(1, script=EXIT_ON_TERM)
    with trio.fail_after(15):
        async with trio.open_nursery() as nursery:
            await nursery.start(group.run)
            await group.scale(3)
            pids = group.pids()
            assert len(set(pids)) == 3
            await group.scale(1)
            assert group.pids() == pids[:1]
            assert gone(pids[1]) and gone(pids[2])
            nursery.cancel_scope.cancel()
    assert gone(pids[0])


@pytest.mark.e2e
async def test_a_process_that_ignores_sigterm_is_killed_after_stop_timeout():
    group = DummyGroup(1, script=IGNORE_TERM, stop_timeout=0.5)
    with trio.fail_after(15), trio.open_signal_receiver(signal.SIGUSR1) as ready:
        async with trio.open_nursery() as nursery:
            await nursery.start(group.run)
            await ready.__anext__()
            pid = group.pids()[0]
            began = trio.current_time()
            nursery.cancel_scope.cancel()
    assert 0.5 <= trio.current_time() - began < 3
    assert gone(pid)


# --------------------------------------------------------------------------- with a leader


async def wait_for_workers(leader: Any, count: int, *, timeout: float = 30) -> None:
    # Real processes connect in their own time; nothing to wait on but the leader's view.
    await wait_until(
        lambda: leader.stats()["workers"] == count,
        timeout=timeout,
        what=f"{count} workers connected to the leader",
    )


async def pids_serving(client: Any, want: set[int], *, limit: int = 200) -> set[int]:
    """Submit echo jobs until every pid in ``want`` has answered one; return all seen."""
    seen: set[int] = set()
    for i in range(limit):
        seen.add((await client.submit("test.echo", {"i": i}, timeout=5))["pid"])
        if want <= seen:
            return seen
    raise AssertionError(f"pids {sorted(want - seen)} never answered; saw {sorted(seen)}")


@pytest.mark.e2e
async def test_worker_processes_serve_a_real_leader_and_come_back_after_kill():
    from actors import Client, Leader

    leader = Leader(listen=["tcp://127.0.0.1:0"])
    with trio.fail_after(18):
        async with trio.open_nursery() as nursery:
            urls = await nursery.start(leader.run)
            group = WorkerGroup("echo", "tests.workers:Echo", 2, urls[0], drain_grace=1.0)
            await nursery.start(group.run)
            await wait_for_workers(leader, 2)
            async with Client.connect(urls[0]) as client:
                first = group.pids()
                assert await pids_serving(client, set(first)) == set(first)

                os.kill(first[0], signal.SIGKILL)
                await group.wait_until(lambda g: len(g.pids()) == 2 and first[0] not in g.pids())
                await wait_for_workers(leader, 2)
                replacement = group.pids()[0]
                await pids_serving(client, {replacement, first[1]})

                await group.scale(3)
                await wait_for_workers(leader, 3)
                await pids_serving(client, set(group.pids()))
                await group.scale(1)
                assert leader.stats()["workers"] == 1  # the others said Bye while draining
                assert await pids_serving(client, {replacement}, limit=20) == {replacement}
            nursery.cancel_scope.cancel()
