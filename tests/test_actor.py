"""Actors, references and the actor system: tell/ask, backpressure, timeouts, lifecycle."""

from __future__ import annotations

import traceback
from typing import Any

import pytest
import trio
import trio.testing

from runtime import (
    Actor,
    ActorCrashed,
    ActorError,
    ActorRef,
    ActorStopped,
    AskTimeout,
    MailboxFull,
    open_actor_system,
)


class Counter(Actor):
    """Counts "inc" messages; answers anything else with the count; "boom" raises."""

    def __init__(self) -> None:
        self.count = 0

    async def handle(self, message: Any) -> Any:
        if message == "inc":
            self.count += 1
        elif message == "boom":
            raise ValueError("boom in handle")
        return self.count


class Gate(Actor):
    """Handles a message only when the test lets it through; records what it handled."""

    def __init__(self, log: list[Any] | None = None) -> None:
        self.log = log if log is not None else []
        self.permits: trio.MemorySendChannel[None]
        self._permits: trio.MemoryReceiveChannel[None]
        self.permits, self._permits = trio.open_memory_channel[None](100)

    async def handle(self, message: Any) -> Any:
        await self._permits.receive()
        self.log.append(message)
        return message


class Recorder(Actor):
    """Records its lifecycle hooks with their virtual times."""

    def __init__(self, events: list[tuple[str, str, float]], *, slow_stop: bool = False) -> None:
        self.events = events
        self.slow_stop = slow_stop

    def record(self, what: str) -> None:
        self.events.append((self.name, what, trio.current_time()))

    async def started(self) -> None:
        self.record("started")

    async def handle(self, message: Any) -> Any:
        if isinstance(message, float):
            await trio.sleep(message)
        self.record(f"handled {message}")

    async def stopping(self) -> None:
        self.record("stopping")
        if self.slow_stop:
            try:
                await trio.sleep_forever()
            finally:
                self.record("cancelled in stopping")


async def test_tell_then_ask_returns_the_reply() -> None:
    with trio.fail_after(5):
        async with open_actor_system() as system:
            ref = await system.spawn(Counter(), name="counter")
            await ref.tell("inc")
            ref.tell_nowait("inc")
            assert await ref.ask("get", timeout=1) == 2
            assert ref.name == "counter"
            assert system.lookup("counter") is ref
            assert isinstance(ref, ActorRef)


async def test_spawn_names_and_duplicates() -> None:
    with trio.fail_after(5):
        async with open_actor_system() as system:
            first = await system.spawn(Counter())
            second = await system.spawn(Counter())
            assert first.name == "counter-1" and second.name == "counter-2"
            with pytest.raises(ValueError, match="counter-1"):
                await system.spawn(Counter(), name="counter-1")
            with pytest.raises(KeyError):
                system.lookup("nobody")


async def test_an_actor_instance_runs_once() -> None:
    with trio.fail_after(5):
        async with open_actor_system() as system:
            actor = Counter()
            await system.spawn(actor)
            with pytest.raises(RuntimeError, match="runs once"):
                await system.spawn(actor, name="again")
    with pytest.raises(RuntimeError, match="not spawned"):
        _ = Counter().ref


async def test_invalid_mailbox_size_is_refused() -> None:
    async with open_actor_system() as system:
        with pytest.raises(ValueError, match="mailbox_size"):
            await system.spawn(Counter(), mailbox_size=-1)


async def test_slow_actor_holds_the_sender_at_the_bound(autojump_clock: trio.abc.Clock) -> None:
    with trio.fail_after(5):
        async with open_actor_system() as system:
            gate = Gate()
            ref = await system.spawn(gate, mailbox_size=2)
            sent: list[int] = []

            async def producer() -> None:
                for i in range(10):
                    await ref.tell(i)
                    sent.append(i)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(producer)
                await trio.testing.wait_all_tasks_blocked()
                # One message in handle(), two queued, the producer blocked on the fourth.
                assert sent == [0, 1, 2]
                stats = ref.statistics()
                assert (stats.queued, stats.bound, stats.senders_waiting) == (2, 2, 1)
                for handled in range(1, 11):
                    gate.permits.send_nowait(None)
                    await trio.testing.wait_all_tasks_blocked()
                    assert len(gate.log) == handled
                    assert ref.statistics().queued <= 2  # never more than the bound
                    assert len(sent) == min(10, handled + 3)
            assert gate.log == list(range(10))
            assert trio.current_time() == 0  # nothing slept


async def test_tell_nowait_on_a_full_mailbox_raises_mailbox_full() -> None:
    with trio.fail_after(5):
        async with open_actor_system() as system:
            gate = Gate()
            ref = await system.spawn(gate, name="gate", mailbox_size=1)
            ref.tell_nowait("a")
            await trio.testing.wait_all_tasks_blocked()  # "a" is being handled
            ref.tell_nowait("b")  # fills the mailbox
            with pytest.raises(MailboxFull) as info:
                ref.tell_nowait("c")
            assert (info.value.name, info.value.bound) == ("gate", 1)
            assert isinstance(info.value, ActorError)
            with pytest.raises(MailboxFull):
                await ref.ask("d", block=False)
            for _ in range(2):
                gate.permits.send_nowait(None)
            await trio.testing.wait_all_tasks_blocked()
            assert gate.log == ["a", "b"]  # the refused messages were not queued


async def test_ask_times_out_at_exactly_its_timeout(autojump_clock: trio.abc.Clock) -> None:
    with trio.fail_after(60):
        async with open_actor_system() as system:
            gate = Gate()
            ref = await system.spawn(gate, name="gate")
            with pytest.raises(AskTimeout) as info:
                await ref.ask("never", timeout=1.5)
            assert trio.current_time() == 1.5
            assert (info.value.name, info.value.timeout, info.value.correlation_id) == (
                "gate",
                1.5,
                1,
            )
            # The late request is still handled; its reply is dropped; later asks work.
            gate.permits.send_nowait(None)
            gate.permits.send_nowait(None)
            assert await ref.ask("next", timeout=1) == "next"
            assert gate.log == ["never", "next"]


async def test_ask_timeout_covers_waiting_for_room(autojump_clock: trio.abc.Clock) -> None:
    with trio.fail_after(60):
        async with open_actor_system() as system:
            ref = await system.spawn(Gate(), mailbox_size=1)
            ref.tell_nowait("busy")
            await trio.testing.wait_all_tasks_blocked()
            ref.tell_nowait("queued")
            with pytest.raises(AskTimeout):
                await ref.ask("no room", timeout=2)
            assert trio.current_time() == 2
            assert ref.statistics().queued == 1


async def test_a_crash_during_ask_reaches_the_asker_and_the_owner() -> None:
    caught: list[BaseException] = []
    with trio.fail_after(5), pytest.RaisesGroup(pytest.RaisesExc(ValueError, match="boom")):
        async with open_actor_system() as system:
            ref = await system.spawn(Counter(), name="counter")
            try:
                await ref.ask("boom", timeout=1)
            except ActorCrashed as crashed:
                caught.append(crashed)
            await trio.sleep_forever()  # the crash tears the system down
    [crashed] = caught
    assert crashed.name == "counter"
    assert isinstance(crashed.__cause__, ValueError)
    assert "handle" in [
        frame.name for frame in traceback.extract_tb(crashed.__cause__.__traceback__)
    ]


async def test_graceful_stop_finishes_the_current_message(autojump_clock: trio.abc.Clock) -> None:
    events: list[tuple[str, str, float]] = []
    with trio.fail_after(60):
        async with open_actor_system() as system:
            ref = await system.spawn(Recorder(events), name="r")
            await ref.tell(1.0)  # handling takes 1 s
            await ref.tell("left over")
            await trio.sleep(0.5)
            await system.stop(ref)
            assert trio.current_time() == 1.0
            stats = ref.statistics()
            assert stats.closed and stats.dropped == 1  # counted, not silently lost
            with pytest.raises(ActorStopped):
                await ref.tell("late")
            with pytest.raises(ActorStopped):
                ref.tell_nowait("late")
            with pytest.raises(ActorStopped):
                await ref.ask("late")
            await system.stop(ref)  # stopping again does nothing
    assert events == [("r", "started", 0), ("r", "handled 1.0", 1.0), ("r", "stopping", 1.0)]


async def test_stop_cancels_after_the_grace_period(autojump_clock: trio.abc.Clock) -> None:
    events: list[tuple[str, str, float]] = []
    with trio.fail_after(60):
        async with open_actor_system() as system:
            ref = await system.spawn(Recorder(events, slow_stop=True), shutdown_grace=2.5)
            await system.stop(ref)
            assert trio.current_time() == 2.5
    assert [(what, at) for _, what, at in events] == [
        ("started", 0),
        ("stopping", 0),
        ("cancelled in stopping", 2.5),
    ]


async def test_leaving_the_system_stops_actors_newest_first(autojump_clock: trio.abc.Clock) -> None:
    events: list[tuple[str, str, float]] = []
    with trio.fail_after(60):
        async with open_actor_system() as system:
            for name in ("a", "b", "c"):
                await system.spawn(Recorder(events), name=name)
    assert [(name, what) for name, what, _ in events] == [
        ("a", "started"),
        ("b", "started"),
        ("c", "started"),
        ("c", "stopping"),
        ("b", "stopping"),
        ("a", "stopping"),
    ]
    with pytest.raises(ActorStopped):
        await system.spawn(Counter())


async def test_queued_asks_and_blocked_senders_learn_the_actor_stopped(
    autojump_clock: trio.abc.Clock,
) -> None:
    outcomes: dict[str, str] = {}
    with trio.fail_after(60):
        async with open_actor_system() as system:
            ref = await system.spawn(Gate(), name="gate", mailbox_size=1, shutdown_grace=1)

            async def ask(label: str) -> None:
                try:
                    await ref.ask(label, timeout=None)
                except ActorStopped:
                    outcomes[label] = "stopped"

            async with trio.open_nursery() as nursery:
                nursery.start_soon(ask, "in handle")
                await trio.testing.wait_all_tasks_blocked()
                nursery.start_soon(ask, "queued")
                await trio.testing.wait_all_tasks_blocked()
                nursery.start_soon(ask, "blocked sender")
                await trio.testing.wait_all_tasks_blocked()
                assert ref.statistics().senders_waiting == 1
                await system.stop(ref)  # handle() never finishes: cancelled after 1 s
                assert trio.current_time() == 1
    assert outcomes == {"in handle": "stopped", "queued": "stopped", "blocked sender": "stopped"}


async def test_an_actor_can_stop_itself() -> None:
    class OneShot(Actor):
        async def handle(self, message: Any) -> Any:
            self.request_stop()
            return message * 2

    with trio.fail_after(5):
        async with open_actor_system() as system:
            ref = await system.spawn(OneShot())
            assert await ref.ask(21, timeout=1) == 42
            await trio.testing.wait_all_tasks_blocked()
            with pytest.raises(ActorStopped):
                await ref.tell(1)
            with pytest.raises(KeyError):
                system.lookup(ref.name)


async def test_run_can_be_extended_with_background_tasks(autojump_clock: trio.abc.Clock) -> None:
    class Ticker(Actor):
        ticks = 0

        async def tick(self) -> None:
            while True:
                await trio.sleep(1)
                self.ticks += 1

        async def handle(self, message: Any) -> Any:
            return self.ticks

        async def run(self) -> None:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self.tick)
                await super().run()
                nursery.cancel_scope.cancel()

    with trio.fail_after(60):
        async with open_actor_system() as system:
            ref = await system.spawn(Ticker())
            await trio.sleep(3.5)
            assert await ref.ask("ticks?", timeout=1) == 3
        assert trio.current_time() == 3.5  # the graceful stop did not wait for the ticker


async def test_started_failure_is_raised_by_spawn() -> None:
    class Broken(Actor):
        async def started(self) -> None:
            raise OSError("no port")

    with trio.fail_after(5):
        async with open_actor_system() as system:
            with pytest.raises(OSError, match="no port"):
                await system.spawn(Broken(), name="broken")
            with pytest.raises(KeyError):
                system.lookup("broken")


async def test_cancellation_is_never_swallowed(autojump_clock: trio.abc.Clock) -> None:
    with trio.fail_after(60):
        with trio.move_on_after(1) as scope:
            async with open_actor_system() as system:
                ref = await system.spawn(Gate())
                await ref.ask("blocks for ever", timeout=None)
        assert scope.cancelled_caught
        assert trio.current_time() == 1


def test_public_names_are_exported_from_runtime() -> None:
    import runtime

    names = [
        "Actor", "ActorRef", "ActorSystem", "open_actor_system", "MailboxStatistics",
        "ActorError", "ActorCrashed", "ActorStopped", "AskTimeout", "MailboxFull",
        "SupervisorEscalation", "Supervisor", "ChildSpec", "ChildInfo", "ChildState",
        "Restart", "Strategy", "process_child", "Backoff", "DedupCache",
    ]  # fmt: skip
    for name in names:
        value = getattr(runtime, name)
        assert value.__module__.startswith("runtime._"), name
        assert value.__doc__, name
