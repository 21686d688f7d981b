"""Supervision: strategies, restart types, intensity, backoff times, shutdown, escalation.

Times are virtual (``autojump_clock``) and asserted exactly: a restart delay of 0.1 s shows
as a start at t=0.1, never as a real sleep.
"""

from __future__ import annotations

import math
import sys
import traceback
from collections.abc import Callable
from typing import Any

import pytest
import trio
import trio.testing

from runtime import (
    Actor,
    ActorStopped,
    Backoff,
    ChildSpec,
    ChildState,
    MailboxFull,
    Restart,
    Strategy,
    Supervisor,
    SupervisorEscalation,
    open_actor_system,
    process_child,
)

Events = list[tuple[str, str, float]]
STEADY = Backoff(base=0.1, factor=1, cap=0.1)  # restart after exactly 0.1 s, every time


def at(value: float) -> Any:
    """A virtual time, compared exactly up to float summation (0.1 + 0.2 ...)."""
    return pytest.approx(value, abs=1e-9)


class Member(Actor):
    """Records start/stop with times; "crash" makes it raise; other messages are logged."""

    def __init__(self, events: Events, *, slow_stop: bool = False) -> None:
        self.events = events
        self.slow_stop = slow_stop

    def record(self, what: str) -> None:
        self.events.append((self.name, what, trio.current_time()))

    async def started(self) -> None:
        self.record("start")

    async def handle(self, message: Any) -> Any:
        if message == "crash":
            raise ValueError(f"{self.name} crashed")
        if message == "exit":
            self.request_stop()
        self.record(f"got {message}")
        return message

    async def stopping(self) -> None:
        self.record("stop")
        if self.slow_stop:
            try:
                await trio.sleep_forever()
            finally:
                self.record("cancelled")


def member(events: Events, **kwargs: Any) -> Callable[[], Member]:
    return lambda: Member(events, **kwargs)


def flaky(starts: list[float], *, run_for: float | list[float] = 0.0, error: type = ValueError):
    """An async-function child that records its start time, runs a while, then raises."""

    async def flaky_child(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        starts.append(trio.current_time())
        task_status.started()
        duration = run_for if isinstance(run_for, float) else run_for[len(starts) - 1]
        await trio.sleep(duration)
        raise error(f"run {len(starts)} failed")

    return flaky_child


def only_escalation(**kwargs: Any) -> pytest.RaisesGroup[SupervisorEscalation]:
    return pytest.RaisesGroup(pytest.RaisesExc(SupervisorEscalation, **kwargs))


# --- backoff between restarts ------------------------------------------------------------


async def test_restart_delays_grow_exactly_0_1_0_2_0_4(autojump_clock: trio.abc.Clock) -> None:
    starts: list[float] = []
    spec = ChildSpec("flaky", flaky(starts), backoff=Backoff(base=0.1, factor=2, cap=10))
    supervisor = Supervisor([spec], max_restarts=100, within=60)
    with trio.fail_after(60):
        async with open_actor_system() as system:
            await system.spawn(supervisor)
            await trio.sleep(2)
            assert starts == [at(0), at(0.1), at(0.3), at(0.7), at(1.5)]
            info = supervisor.child("flaky")
            assert (info.state, info.restarts, info.attempt) == (ChildState.RESTARTING, 4, 5)
            assert isinstance(info.last_error, ValueError)


async def test_backoff_resets_after_a_healthy_run(autojump_clock: trio.abc.Clock) -> None:
    starts: list[float] = []
    child = flaky(starts, run_for=[0.0, 2.0, 0.0, 0.0, 60.0])
    spec = ChildSpec("flaky", child, backoff=Backoff(base=0.1, factor=2, cap=10), reset_after=1)
    with trio.fail_after(60):
        async with open_actor_system() as system:
            await system.spawn(Supervisor([spec], max_restarts=100, within=60))
            await trio.sleep(3)
    # 0 fails -> 0.1; runs 2 s (healthy): the delay is back to 0.1 -> 2.2; then it grows
    # again: 0.2 -> 2.4, 0.4 -> 2.8.
    assert starts == [at(0), at(0.1), at(2.2), at(2.4), at(2.8)]


# --- strategies --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("strategy", "failing", "stopped", "restarted"),
    [
        (Strategy.ONE_FOR_ONE, "b", [], ["b"]),
        (Strategy.ONE_FOR_ALL, "b", ["c", "a"], ["a", "b", "c"]),
        (Strategy.ONE_FOR_ALL, "a", ["c", "b"], ["a", "b", "c"]),
        (Strategy.REST_FOR_ONE, "b", ["c"], ["b", "c"]),
        (Strategy.REST_FOR_ONE, "a", ["c", "b"], ["a", "b", "c"]),
        (Strategy.REST_FOR_ONE, "c", [], ["c"]),
    ],
)
async def test_strategy_decides_which_siblings_restart(
    autojump_clock: trio.abc.Clock,
    strategy: Strategy,
    failing: str,
    stopped: list[str],
    restarted: list[str],
) -> None:
    events: Events = []
    specs = [ChildSpec(name, member(events), backoff=STEADY) for name in "abc"]
    supervisor = Supervisor(specs, strategy=strategy)
    with trio.fail_after(60):
        async with open_actor_system() as system:
            await system.spawn(supervisor)
            await trio.sleep(1)
            del events[:]
            await supervisor.child(failing).ref.tell("crash")
            await trio.sleep(1)
            # Siblings stop newest first at once; all restart in start order after 0.1 s.
            assert events == [(name, "stop", 1.0) for name in stopped] + [
                (name, "start", at(1.1)) for name in restarted
            ]
            for name in "abc":
                info = supervisor.child(name)
                assert info.state is ChildState.RUNNING
                assert info.restarts == (1 if name in restarted else 0)


async def test_one_for_all_rebuilds_a_group_whose_restart_fails(
    autojump_clock: trio.abc.Clock,
) -> None:
    events: Events = []
    starts: list[float] = []

    async def unlucky(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        starts.append(trio.current_time())
        if len(starts) == 2:
            raise OSError("cannot start now")  # before started(): a failed restart
        task_status.started()
        await trio.sleep_forever()

    specs = [
        ChildSpec("a", member(events), backoff=STEADY),
        ChildSpec("b", unlucky, backoff=STEADY),
        ChildSpec("c", member(events), backoff=STEADY),
    ]
    supervisor = Supervisor(specs, strategy="one_for_all")
    with trio.fail_after(60):
        async with open_actor_system() as system:
            await system.spawn(supervisor)
            await supervisor.child("a").ref.tell("crash")
            await trio.sleep(1)
    # t=0.1: a starts, b fails to start -> a stops again -> t=0.2: a, b, c start, in order.
    assert starts == [at(0), at(0.1), at(0.2)]
    assert events == [
        ("a", "start", 0),
        ("c", "start", 0),
        ("c", "stop", 0),  # a crashed: c stops (b, a function, is cancelled)
        ("a", "start", at(0.1)),
        ("a", "stop", at(0.1)),
        ("a", "start", at(0.2)),
        ("c", "start", at(0.2)),
        ("c", "stop", 1),  # leaving the system
        ("a", "stop", 1),
    ]
    assert isinstance(supervisor.child("b").last_error, OSError)


# --- restart types -----------------------------------------------------------------------


async def test_restart_types_after_normal_exit_and_after_error(
    autojump_clock: trio.abc.Clock,
) -> None:
    runs: dict[str, int] = {}

    def child(name: str, fail: bool) -> Callable[[], Any]:
        async def run() -> None:
            runs[name] = runs.get(name, 0) + 1
            await trio.sleep(1)
            if fail:
                raise RuntimeError(name)

        return run

    specs = [
        ChildSpec(
            f"{restart}-{outcome}",
            child(f"{restart}-{outcome}", outcome == "error"),
            restart=restart,
            backoff=STEADY,
        )
        for restart in ("permanent", "transient", "temporary")
        for outcome in ("normal", "error")
    ]
    supervisor = Supervisor(specs, max_restarts=100)
    with trio.fail_after(60):
        async with open_actor_system() as system:
            await system.spawn(supervisor)
            await trio.sleep(3)  # runs at 0, 1.1, 2.2 for the restarted ones
            states = {info.name: info.state for info in supervisor.children()}
    assert runs == {
        "permanent-normal": 3,
        "permanent-error": 3,
        "transient-normal": 1,
        "transient-error": 3,
        "temporary-normal": 1,
        "temporary-error": 1,
    }
    assert states == {
        "permanent-normal": ChildState.RUNNING,
        "permanent-error": ChildState.RUNNING,
        "transient-normal": ChildState.STOPPED,  # kept, not restarted
        "transient-error": ChildState.RUNNING,
    }  # temporary children are removed once they exit


async def test_a_transient_actor_that_stops_normally_closes_its_mailbox() -> None:
    events: Events = []
    supervisor = Supervisor([ChildSpec("t", member(events), restart=Restart.TRANSIENT)])
    with trio.fail_after(5):
        async with open_actor_system() as system:
            await system.spawn(supervisor)
            ref = supervisor.child("t").ref
            assert ref is not None
            assert await ref.ask("exit", timeout=1) == "exit"
            await trio.testing.wait_all_tasks_blocked()
            assert supervisor.child("t").state is ChildState.STOPPED
            with pytest.raises(ActorStopped):
                await ref.tell("hello")
    assert [what for _, what, _ in events] == ["start", "got exit", "stop"]


# --- restart intensity and escalation ----------------------------------------------------


async def test_too_many_restarts_stop_the_children_and_escalate(
    autojump_clock: trio.abc.Clock,
) -> None:
    events: Events = []
    starts: list[float] = []
    specs = [
        ChildSpec("a", member(events)),
        ChildSpec("b", flaky(starts), backoff=STEADY),
        ChildSpec("c", member(events)),
    ]
    supervisor = Supervisor(specs, max_restarts=2, within=1.0)
    with trio.fail_after(60), only_escalation() as group:
        async with open_actor_system() as system:
            await system.spawn(supervisor, name="sup")
            await trio.sleep_forever()
    assert trio.current_time() == at(0.2)
    assert starts == [at(0), at(0.1), at(0.2)]  # the third failure is one restart too many
    assert events[-2:] == [("c", "stop", at(0.2)), ("a", "stop", at(0.2))]  # newest first
    escalation = group.value.exceptions[0]
    assert (escalation.supervisor, escalation.child) == ("sup", "b")
    assert "more than 2 restarts within 1.0 s" in str(escalation)
    cause = escalation.__cause__
    assert isinstance(cause, ValueError) and str(cause) == "run 3 failed"
    assert "flaky_child" in [frame.name for frame in traceback.extract_tb(cause.__traceback__)]
    assert all(info.state is ChildState.STOPPED for info in supervisor.children())


async def test_restarts_spread_over_time_stay_within_the_intensity(
    autojump_clock: trio.abc.Clock,
) -> None:
    starts: list[float] = []
    spec = ChildSpec("b", flaky(starts, run_for=0.5), backoff=STEADY)
    supervisor = Supervisor([spec], max_restarts=2, within=1.0)
    with trio.fail_after(60):
        async with open_actor_system() as system:
            await system.spawn(supervisor)
            await trio.sleep(5)
            assert supervisor.child("b").restarts == 8  # runs every 0.6 s: never 3 within 1 s


async def test_exhausted_backoff_escalates(autojump_clock: trio.abc.Clock) -> None:
    starts: list[float] = []
    spec = ChildSpec("b", flaky(starts), backoff=Backoff(base=0.1, max_attempts=3))
    with trio.fail_after(60), only_escalation(match="3 failed runs in a row"):
        async with open_actor_system() as system:
            await system.spawn(Supervisor([spec], max_restarts=100))
            await trio.sleep_forever()
    assert starts == [at(0), at(0.1), at(0.3)]
    assert trio.current_time() == at(0.3)


async def test_escalation_climbs_nested_supervisors(autojump_clock: trio.abc.Clock) -> None:
    starts: list[float] = []
    middle = ChildSpec(
        "middle",
        lambda: Supervisor([ChildSpec("leaf", flaky(starts), backoff=STEADY)], max_restarts=1),
        backoff=STEADY,
    )
    root = Supervisor([middle], max_restarts=1)
    with trio.fail_after(60), only_escalation() as group:
        async with open_actor_system() as system:
            await system.spawn(root, name="root")
            await trio.sleep_forever()
    # leaf fails at 0 and 0.1: middle gives up; root restarts middle at 0.2, which gives up
    # again at 0.3; that is the root's second restart: too many.
    assert starts == [at(0), at(0.1), at(0.2), at(0.3)]
    assert trio.current_time() == at(0.3)
    from_root = group.value.exceptions[0]
    from_middle = from_root.__cause__
    assert (from_root.supervisor, from_root.child) == ("root", "middle")
    assert isinstance(from_middle, SupervisorEscalation)
    assert (from_middle.supervisor, from_middle.child) == ("middle", "leaf")
    assert isinstance(from_middle.__cause__, ValueError)


async def test_a_child_failing_at_first_start_fails_the_supervisor_start() -> None:
    events: Events = []

    class Broken(Actor):
        async def started(self) -> None:
            raise OSError("no port")

    specs = [
        ChildSpec("a", member(events)),
        ChildSpec("b", member(events)),
        ChildSpec("broken", Broken),
        ChildSpec("d", member(events)),
    ]
    with trio.fail_after(5):
        async with open_actor_system() as system:
            with pytest.raises(SupervisorEscalation, match="failed to start") as info:
                await system.spawn(Supervisor(specs))
    assert isinstance(info.value.__cause__, OSError)
    assert [(name, what) for name, what, _ in events] == [
        ("a", "start"),
        ("b", "start"),
        ("b", "stop"),
        ("a", "stop"),
    ]


# --- failures as they reach the supervisor -----------------------------------------------


async def test_the_supervisor_keeps_the_original_error_and_traceback(
    autojump_clock: trio.abc.Clock,
) -> None:
    events: Events = []
    supervisor = Supervisor([ChildSpec("a", member(events), backoff=STEADY)])
    with trio.fail_after(60):
        async with open_actor_system() as system:
            await system.spawn(supervisor)
            await supervisor.child("a").ref.tell("crash")
            await trio.sleep(1)
            error = supervisor.child("a").last_error
    assert isinstance(error, ValueError) and str(error) == "a crashed"
    assert "handle" in [frame.name for frame in traceback.extract_tb(error.__traceback__)]


async def test_an_exception_group_from_a_child_nursery_is_a_child_failure(
    autojump_clock: trio.abc.Clock,
) -> None:
    runs: list[float] = []

    async def with_nursery() -> None:
        runs.append(trio.current_time())
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.sleep_forever)
            await trio.sleep(1)
            raise KeyError("inner")

    supervisor = Supervisor([ChildSpec("n", with_nursery, backoff=STEADY)])
    with trio.fail_after(60):
        async with open_actor_system() as system:
            await system.spawn(supervisor)
            await trio.sleep(1.5)
            error = supervisor.child("n").last_error
    assert runs == [at(0), at(1.1)]
    assert isinstance(error, ExceptionGroup) and isinstance(error.exceptions[0], KeyError)


async def test_outer_cancellation_is_not_taken_for_a_child_failure(
    autojump_clock: trio.abc.Clock,
) -> None:
    starts: list[float] = []
    supervisor = Supervisor([ChildSpec("f", flaky(starts, run_for=100.0))])
    with trio.fail_after(60):
        with trio.move_on_after(1) as scope:
            async with open_actor_system() as system:
                await system.spawn(supervisor)
                await trio.sleep_forever()
    assert scope.cancelled_caught
    assert trio.current_time() == 1
    assert starts == [0]  # cancelled, not restarted
    assert supervisor.child("f").last_error is None


# --- mailboxes of restarting children ----------------------------------------------------


async def test_messages_for_a_restarting_child_wait_in_its_mailbox(
    autojump_clock: trio.abc.Clock,
) -> None:
    events: Events = []
    spec = ChildSpec("a", member(events), backoff=Backoff(base=1.0), mailbox_size=2)
    supervisor = Supervisor([spec])
    with trio.fail_after(60):
        async with open_actor_system() as system:
            await system.spawn(supervisor)
            ref = supervisor.child("a").ref
            assert ref is not None
            ref.tell_nowait("crash")
            await trio.testing.wait_all_tasks_blocked()
            assert supervisor.child("a").state is ChildState.RESTARTING
            ref.tell_nowait("x")
            ref.tell_nowait("y")
            with pytest.raises(MailboxFull):
                ref.tell_nowait("z")
            await ref.tell("z")  # waits for room: the new instance frees it at t=1
            assert trio.current_time() == 1
            assert await ref.ask("w", timeout=1) == "w"
            assert supervisor.child("a").ref is ref
    assert [(what, t) for _, what, t in events] == [
        ("start", 0),
        ("start", 1),
        ("got x", 1),
        ("got y", 1),
        ("got z", 1),
        ("got w", 1),
        ("stop", 1),
    ]


# --- shutdown ----------------------------------------------------------------------------


async def test_shutdown_is_in_reverse_order_with_grace_then_cancellation(
    autojump_clock: trio.abc.Clock,
) -> None:
    events: Events = []

    async def function_child() -> None:
        try:
            await trio.sleep_forever()
        finally:
            events.append(("d", "cancelled", trio.current_time()))

    specs = [
        ChildSpec("a", member(events, slow_stop=True), shutdown_grace=1),
        ChildSpec("b", member(events, slow_stop=True), shutdown_grace=2),
        ChildSpec("c", member(events)),
        ChildSpec("d", function_child, shutdown_grace=10),  # cancelled at once
    ]
    with trio.fail_after(60):
        async with open_actor_system() as system:
            await system.spawn(Supervisor(specs))
    assert [event for event in events if event[1] != "start"] == [
        ("d", "cancelled", 0),
        ("c", "stop", 0),
        ("b", "stop", 0),
        ("b", "cancelled", 2),
        ("a", "stop", 2),
        ("a", "cancelled", 3),
    ]


async def test_an_error_raised_while_being_cancelled_is_recorded_not_raised(
    autojump_clock: trio.abc.Clock,
) -> None:
    class Stubborn(Actor):
        async def stopping(self) -> None:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self.fail_when_cancelled)
                await trio.sleep_forever()

        async def fail_when_cancelled(self) -> None:
            try:
                await trio.sleep_forever()
            finally:
                raise ValueError("clean-up failed")

    supervisor = Supervisor([ChildSpec("s", Stubborn, shutdown_grace=1)])
    with trio.fail_after(60):
        async with open_actor_system() as system:
            await system.spawn(supervisor)
    assert trio.current_time() == 1
    # The supervisor's own cancellation was absorbed by its scope; the error is kept.
    info = supervisor.child("s")
    assert info.state is ChildState.STOPPED
    assert isinstance(info.last_error, ExceptionGroup)
    assert [str(e) for e in info.last_error.exceptions] == ["clean-up failed"]


# --- children added and removed at run time ----------------------------------------------


async def test_start_and_terminate_children_at_run_time(autojump_clock: trio.abc.Clock) -> None:
    events: Events = []

    async def slow_to_start(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        await trio.sleep(1)
        task_status.started()
        await trio.sleep_forever()

    supervisor = Supervisor([ChildSpec("a", member(events))])
    with trio.fail_after(60):
        async with open_actor_system() as system:
            await system.spawn(supervisor)
            ref = await supervisor.start_child(ChildSpec("worker-1", member(events)))
            assert ref is not None and await ref.ask("hi", timeout=1) == "hi"
            assert await supervisor.start_child(ChildSpec("slow", slow_to_start)) is None
            assert trio.current_time() == 1  # returned once the child was ready
            assert [info.name for info in supervisor.children()] == ["a", "worker-1", "slow"]
            with pytest.raises(ValueError, match="exists already"):
                await supervisor.start_child(ChildSpec("a", member(events)))
            await supervisor.terminate_child("worker-1")
            with pytest.raises(ActorStopped):
                await ref.tell("anyone?")
            with pytest.raises(KeyError):
                await supervisor.terminate_child("worker-1")
            await supervisor.terminate_child("slow")
            assert [info.name for info in supervisor.children()] == ["a"]
    with pytest.raises(ActorStopped):
        await supervisor.start_child(ChildSpec("late", member(events)))


async def test_a_child_that_fails_to_start_is_not_added() -> None:
    supervisor = Supervisor()
    with trio.fail_after(5):
        async with open_actor_system() as system:
            await system.spawn(supervisor)
            with pytest.raises(TypeError, match="not an Actor"):
                await supervisor.start_child(ChildSpec("bad", lambda: "not an actor"))
            assert supervisor.children() == []


async def test_a_supervisor_subclass_scales_through_its_own_mailbox(
    autojump_clock: trio.abc.Clock,
) -> None:
    events: Events = []

    class Pool(Supervisor):
        async def handle(self, message: Any) -> Any:
            size = len(self.children())
            for index in range(size, message):
                await self.start_child(ChildSpec(f"w{index}", member(events)))
            for index in reversed(range(message, size)):
                await self.terminate_child(f"w{index}")
            return [info.name for info in self.children()]

    with trio.fail_after(60):
        async with open_actor_system() as system:
            pool = await system.spawn(Pool())
            assert await pool.ask(3, timeout=1) == ["w0", "w1", "w2"]
            assert await pool.ask(1, timeout=1) == ["w0"]


async def test_a_stopping_supervisor_finishes_its_message_then_stops_its_children(
    autojump_clock: trio.abc.Clock,
) -> None:
    events: Events = []

    class Slow(Supervisor):
        async def handle(self, message: Any) -> Any:
            await trio.sleep(1)
            events.append(("sup", f"handled {message}", trio.current_time()))

    with trio.fail_after(60):
        async with open_actor_system() as system:
            ref = await system.spawn(Slow([ChildSpec("a", member(events))]))
            await ref.tell("job")
            await trio.sleep(0.5)
    assert events == [("a", "start", 0), ("sup", "handled job", 1), ("a", "stop", 1)]


def test_invalid_specs_and_settings_are_refused() -> None:
    async def function_child() -> None: ...

    with pytest.raises(ValueError, match="no mailbox"):
        ChildSpec("f", function_child, mailbox_size=3)
    with pytest.raises(ValueError, match="'sometimes' is not a valid Restart"):
        ChildSpec("x", Actor, restart="sometimes")
    with pytest.raises(ValueError, match="name"):
        ChildSpec("", Actor)
    with pytest.raises(TypeError):
        ChildSpec("x", Actor())  # an instance, not a factory
    with pytest.raises(ValueError, match="exists already"):
        Supervisor([ChildSpec("x", Actor), ChildSpec("x", Actor)])
    with pytest.raises(ValueError, match="'all_for_one' is not a valid Strategy"):
        Supervisor(strategy="all_for_one")
    with pytest.raises(ValueError, match="max_restarts"):
        Supervisor(max_restarts=-1)
    assert ChildSpec("x", Actor, restart="transient").restart is Restart.TRANSIENT
    assert Supervisor.shutdown_grace == math.inf


# --- OS processes (real time) ------------------------------------------------------------


@pytest.mark.e2e
async def test_process_children_restart_on_exit_and_stop_on_terminate() -> None:
    runs: list[int] = []
    three_runs = trio.Event()
    exits = process_child([sys.executable, "-c", "raise SystemExit(3)"])

    async def exiting(task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
        runs.append(len(runs))
        if len(runs) == 3:
            three_runs.set()
        await exits(task_status=task_status)

    sleeper = process_child([sys.executable, "-c", "import time; time.sleep(60)"], grace=5)
    fast = Backoff(base=0.01, factor=1, cap=0.01)
    supervisor = Supervisor(
        [ChildSpec("exiting", exiting, backoff=fast), ChildSpec("sleeper", sleeper)],
        max_restarts=100,
    )
    with trio.fail_after(20):
        async with open_actor_system() as system:
            await system.spawn(supervisor)
            await three_runs.wait()
            error = supervisor.child("exiting").last_error
            assert error is not None and error.returncode == 3  # CalledProcessError
            started = trio.current_time()
            await supervisor.terminate_child("sleeper")  # SIGTERM: ends it at once
            assert trio.current_time() - started < 5
