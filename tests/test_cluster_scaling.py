"""Scaling a cluster's groups (``actors/cluster/_run.py`` GroupScaler, behind
``PUT /api/groups/NAME``): a scaling that fails never reaches the groups' nursery (the
cluster, its leader included, serves on), is said and shown (``scale_error``), and the
count the group is to have becomes the count it runs; a group that gives up, one that has
not started and a cluster that stops are refused (409).
"""

from __future__ import annotations

from functools import partial
from typing import Any

import pytest
import trio
import trio.testing

from actors._checks import ConfigError
from actors.cluster._model import ClusterConfig, GroupConfig, LeaderTable
from actors.cluster._run import LOCAL_MARGIN, Capacity, GroupScaler, _run_group, fit_groups
from actors.leader import Leader
from actors.leader._admin import AdminError, LeaderAdmin
from actors.worker._group import WorkerGroup
from runtime import ActorStopped
from tests.workers import Echo


class StubGroup:
    """A group whose scaling fails as told (``error``), running ``running`` instances."""

    def __init__(self, name: str, desired: int, error: BaseException | None = None) -> None:
        self.name = name
        self.desired = desired
        self.failure: str | None = None
        self.error = error
        self.running = desired
        self.scaled: list[int] = []
        self.gate: trio.Event | None = None  # (when set: each scaling waits for it)
        self.failures: int | None = None  # (scalings that fail: None, all of them)

    def states(self) -> list[Any]:
        return [object()] * self.running

    async def scale(self, instances: int) -> None:
        await trio.lowlevel.checkpoint()
        if self.gate is not None:
            await self.gate.wait()
        self.scaled.append(instances)
        self.desired = instances
        if self.error is not None and self.failures != 0:
            if self.failures is not None:
                self.failures -= 1
            self.running = min(instances, self.running + 1)  # (one started, then it failed)
            raise self.error
        self.running = instances


def scaler_of(*groups: StubGroup, **kw: Any) -> tuple[GroupScaler, list[str], list[Any]]:
    said: list[str] = []
    wanted: list[tuple[str, int]] = []
    scaler = GroupScaler(
        {g.name: g for g in groups},  # type: ignore[misc]
        {},
        said.append,
        set_instances=lambda name, n: wanted.append((name, n)),
        **kw,
    )
    for group in groups:
        scaler.started(group.name)
    return scaler, said, wanted


@pytest.mark.parametrize(
    "error",
    [
        ActorStopped("actor 'group-g' is stopped"),  # (the group gave up meanwhile)
        ValueError("a child named 'g-1' exists already"),
        RuntimeError("group 'g' is not running"),
        OSError(24, "Too many open files"),
        KeyError("a bug"),
    ],
    ids=lambda e: type(e).__name__,
)
async def test_a_failed_scaling_is_said_and_the_group_is_to_run_what_it_runs(error, caplog):
    group = StubGroup("g", 1, error)
    other = StubGroup("h", 2)
    scaler, said, wanted = scaler_of(group, other)
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            scaler.nursery = nursery
            assert await scaler("g", 4) == 4
            assert await scaler("h", 3) == 3
            await trio.testing.wait_all_tasks_blocked()
            # The nursery (the cluster's groups, its leader with them) is still there.
            assert not nursery.cancel_scope.cancel_called
            nursery.cancel_scope.cancel()
    assert group.scaled == [4] and other.scaled == [3]
    assert scaler.groups() == {"g": 2, "h": 3}  # (g: one more started before it failed)
    assert wanted == [("g", 4), ("h", 3), ("g", 2)]
    [error_text] = scaler.scale_errors().values()
    assert list(scaler.scale_errors()) == ["g"]
    assert error_text.startswith(f"not scaled to 4: {type(error).__name__}")
    assert f"group g: not scaled to 4: {type(error).__name__}" in said[-2] + said[-1]
    assert any(line.endswith("it runs 2") for line in said)
    assert "group h: 3 instances" in said
    # A bug (not what a group meets when it stops or cannot start a process) is logged
    # with its traceback.
    logged = [r for r in caplog.records if r.exc_info]
    assert bool(logged) == isinstance(error, KeyError | ValueError)


async def test_a_later_scaling_that_works_clears_the_error():
    group = StubGroup("g", 1, OSError("no more processes"))
    scaler, said, _ = scaler_of(group)
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            scaler.nursery = nursery
            await scaler("g", 3)
            await trio.testing.wait_all_tasks_blocked()
            assert scaler.groups() == {"g": 2} and "g" in scaler.scale_errors()
            group.error = None
            await scaler("g", 3)  # (asked again: tried again, from what it runs)
            await trio.testing.wait_all_tasks_blocked()
            assert scaler.groups() == {"g": 3} and scaler.scale_errors() == {}
            await scaler("g", 3)  # (what it has: nothing to do)
            await trio.testing.wait_all_tasks_blocked()
            nursery.cancel_scope.cancel()
    assert group.scaled == [3, 3]
    assert said[-1] == "group g: 3 instances"


async def test_a_count_asked_while_a_scaling_fails_is_tried_next():
    group = StubGroup("g", 1, OSError("no more processes"))
    group.gate = trio.Event()
    group.failures = 1
    scaler, said, wanted = scaler_of(group)
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            scaler.nursery = nursery
            await scaler("g", 5)
            await trio.testing.wait_all_tasks_blocked()  # (scaling to 5: it will fail)
            await scaler("g", 3)  # (asked meanwhile)
            group.gate.set()
            await trio.testing.wait_all_tasks_blocked()
            nursery.cancel_scope.cancel()
    assert group.scaled == [5, 3] and scaler.groups() == {"g": 3}
    assert scaler.scale_errors() == {} and wanted == [("g", 5), ("g", 3)]
    assert said[-2:] == ["group g: not scaled to 5: OSError: no more processes; it runs 2",
                         "group g: 3 instances"]  # fmt: skip


async def test_what_cannot_be_scaled_now_is_refused_409():
    group = StubGroup("g", 1)
    stopping = False
    scaler, _, _ = scaler_of(group, stopping=lambda: stopping)
    leader = Leader(memory=True)
    leader.scaler = scaler
    admin = LeaderAdmin(leader)

    async def refused(match: str) -> None:
        with pytest.raises(AdminError) as info:
            await admin.scale("g", 2)
        assert info.value.status == 409 and info.value.code == "conflict"
        assert match in info.value.message

    await refused("starts or stops")  # (no nursery: the groups are not running yet)
    async with trio.open_nursery() as nursery:
        scaler.nursery = nursery
        scaler._running.clear()
        await refused("group g is starting")
        scaler.started("g")
        group.failure = "g-0 failed to start 10 times in a row: ImportError: x"
        await refused("group g failed (g-0 failed to start")  # (giving up: draining)
        group.failure = None
        stopping = True
        await refused("starts or stops")  # (the cluster shuts down)
        stopping = False
        assert (await admin.scale("g", 2)) == {"group": "g", "instances": 2}
    assert group.scaled == [2]


async def test_scaling_past_the_connections_the_leader_admits_is_refused_409():
    # (the groups' instances all connect from this host: past the leader's limit per
    # address they would retry for ever, unseen)
    a, b = StubGroup("a", 2), StubGroup("b", 1)
    capacity = Capacity(5, "max_connections_per_address = 5")
    scaler, said, wanted = scaler_of(a, b, capacity=capacity)
    leader = Leader(memory=True)
    leader.scaler = scaler
    admin = LeaderAdmin(leader)
    async with trio.open_nursery() as nursery:
        scaler.nursery = nursery
        assert (await admin.scale("a", 4)) == {"group": "a", "instances": 4}  # 4 + 1: fits
        with pytest.raises(AdminError) as info:
            await admin.scale("b", 2)  # 4 + 2
        assert (info.value.status, info.value.code) == (409, "conflict")
        assert info.value.message == (
            "2 instances of group b would make 6 in all, and the leader admits 5 "
            "connections from this host ([leader] max_connections_per_address = 5): set it "
            "higher and restart the cluster"
        )
        assert (await admin.scale("a", 0)) == {"group": "a", "instances": 0}  # (down: fine)
        assert (await admin.scale("b", 5)) == {"group": "b", "instances": 5}
        await trio.testing.wait_all_tasks_blocked()
    assert scaler.groups() == {"a": 0, "b": 5} and ("b", 2) not in wanted
    assert not any("b" in line and "to 2" in line for line in said)


def test_the_cluster_raises_the_leaders_limit_per_address_to_fit_its_groups():
    groups = (GroupConfig("a", "x:Y", instances=300), GroupConfig("b", "x:Y", instances=5))
    table, capacity = fit_groups(ClusterConfig(groups=groups))
    assert table.max_connections_per_address == 305 + LOCAL_MARGIN
    assert capacity == Capacity(561, "max_connections_per_address = 561")
    assert table.leader_config().max_connections_per_address == 561
    # Few instances: the default stays; max_connections, when lower, is the bound.
    table, capacity = fit_groups(ClusterConfig(groups=groups[1:]))
    assert table.max_connections_per_address == 256 + 5
    table, capacity = fit_groups(
        ClusterConfig(leader=LeaderTable(max_connections=400), groups=groups)
    )
    assert capacity == Capacity(400, "max_connections = 400")
    # Set in the file: kept, and the groups must fit.
    table, capacity = fit_groups(
        ClusterConfig(leader=LeaderTable(max_connections_per_address=305), groups=groups)
    )
    assert (table.max_connections_per_address, capacity.connections) == (305, 305)
    with pytest.raises(ConfigError) as info:
        fit_groups(ClusterConfig(leader=LeaderTable(max_connections_per_address=2), groups=groups))
    assert str(info.value) == (
        "the groups have 305 instances in all, and the leader admits 2 connections from one "
        "host ([leader] max_connections_per_address = 2): raise it, or run fewer instances"
    )
    with pytest.raises(ConfigError, match=r"admits 1024 .*max_connections = 1024"):
        fit_groups(ClusterConfig(groups=(GroupConfig("a", "x:Y", instances=1000),) * 2))


async def test_a_scale_asked_while_its_group_gives_up_does_not_crash_the_cluster():
    # The review's scenario, with a real group: a scale is accepted, then the group gives
    # up (as after max_start_failures) before the scaling task runs; its supervisor stops
    # while the scaling starts instances (ActorStopped then, or "not running").
    for attempt in range(4):
        with trio.fail_after(20):
            async with trio.open_nursery() as outer:
                leader = Leader(listen=["tcp://127.0.0.1:0"], memory=True)
                urls = await outer.start(leader.run)
                group = WorkerGroup("g", Echo, 1, urls[0], in_process=True, drain_grace=1.0)
                failed: dict[str, str] = {}
                said: list[str] = []

                def give_up(name: str, instances: int, group: WorkerGroup = group) -> None:
                    group.failure = "simulated: g-0 failed to start 10 times in a row"
                    group._failed.set()

                scaler = GroupScaler({"g": group}, failed, said.append, set_instances=give_up)
                async with trio.open_nursery() as group_nursery:
                    scaler.nursery = group_nursery
                    await group_nursery.start(_run_group, group, partial(record_failure, failed))
                    scaler.started("g")
                    for _ in range(attempt):
                        await trio.lowlevel.checkpoint()
                    assert await scaler("g", 3) == 3
                # (the group nursery ended on its own: the group's run and the scaling)
                assert failed == {"g": "simulated: g-0 failed to start 10 times in a row"}
                with pytest.raises(RuntimeError, match="group g failed"):
                    await scaler("g", 2)
                # (here: ActorStopped, each time; "not running" or done are fine too)
                assert said[-1].startswith(("group g: not scaled to 3: ", "group g: 3 instances"))
                outer.cancel_scope.cancel()


def record_failure(failed: dict[str, str], group: WorkerGroup, reason: str) -> None:
    failed[group.name] = reason
