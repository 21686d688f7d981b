"""Runtime acceptance checks beside ``test_actor`` and ``test_supervisor``.

Backpressure without memory growth, no module-level registries, the default restart
backoff (0.1, 0.2, 0.4 s as exact virtual times), seeded jitter in a supervisor, the mailbox
of a sibling restarted by ``one_for_all``, and the documented public API.
"""

from __future__ import annotations

import collections
import importlib
import inspect
import itertools
import pkgutil
import random
import tracemalloc
import weakref
from typing import Any

import pytest
import trio
import trio.testing

import runtime
from runtime import (
    DEFAULT_RESTART_BACKOFF,
    Actor,
    Backoff,
    ChildSpec,
    ChildState,
    Supervisor,
    open_actor_system,
)


def at(value: float) -> Any:
    return pytest.approx(value, abs=1e-9)


def failing_child(starts: list[float], *, runs: int = 0, done: trio.Event | None = None) -> Any:
    """An async-function child that records its start time and fails at once.

    With ``done``, that event is set at the start of run number ``runs``.
    """

    async def child(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        starts.append(trio.current_time())
        if done is not None and len(starts) == runs:
            done.set()
        task_status.started()
        raise ValueError(f"run {len(starts)} failed")

    return child


# --- mailbox backpressure ----------------------------------------------------------------


async def test_backpressure_keeps_memory_flat(autojump_clock: trio.abc.Clock) -> None:
    """A fast producer and a slow actor: memory stays at the bound, not at the backlog."""
    count, size, bound = 2000, 10_000, 8  # a buffered backlog would hold 20 MB
    worst: dict[str, int] = {"queued": 0, "waiting": 0}

    class Slow(Actor):
        async def handle(self, message: bytes) -> None:
            stats = self.ref.statistics()
            worst["queued"] = max(worst["queued"], stats.queued)
            worst["waiting"] = max(worst["waiting"], stats.senders_waiting)
            await trio.sleep(0.01)

    tracemalloc.start()
    try:
        with trio.fail_after(3600):
            async with open_actor_system() as system:
                ref = await system.spawn(Slow(), mailbox_size=bound)
                await trio.testing.wait_all_tasks_blocked()
                tracemalloc.reset_peak()
                baseline = tracemalloc.get_traced_memory()[0]
                for _ in range(count):
                    await ref.tell(bytes(size))  # a fresh 10 kB object each time
                peak = tracemalloc.get_traced_memory()[1] - baseline
                finished = trio.current_time()
    finally:
        tracemalloc.stop()
    # The producer was held back: its last tell got in when the actor took message
    # count - 1 - bound, after handling that many messages for 0.01 s each.
    assert finished == at((count - 1 - bound) * 0.01)
    assert worst == {"queued": bound, "waiting": 1}
    assert peak < 1_000_000, f"memory grew by {peak} bytes"  # ~ (bound + 2) * 10 kB


# --- no module-level registries ----------------------------------------------------------


def test_runtime_modules_hold_no_mutable_state() -> None:
    mutable = (
        dict,
        list,
        set,
        bytearray,
        collections.deque,
        weakref.WeakValueDictionary,
        weakref.WeakKeyDictionary,
        weakref.WeakSet,
    )
    for info in pkgutil.iter_modules(runtime.__path__):
        module = importlib.import_module(f"runtime.{info.name}")
        for name, value in vars(module).items():
            if name.startswith("__"):
                continue
            assert not isinstance(value, mutable), f"runtime.{info.name}.{name} is global state"


async def test_two_systems_own_their_actors_independently() -> None:
    class Echo(Actor):
        def __init__(self, tag: str) -> None:
            self.tag = tag

        async def handle(self, message: Any) -> Any:
            return (self.tag, message)

    with trio.fail_after(5):
        async with open_actor_system(name="one") as one, open_actor_system(name="two") as two:
            a = await one.spawn(Echo("a"), name="same")
            b = await two.spawn(Echo("b"), name="same")  # no clash: nothing is global
            assert await a.ask(1, timeout=1) == ("a", 1)
            assert await b.ask(2, timeout=1) == ("b", 2)
            assert one.lookup("same") is a and two.lookup("same") is b
            await one.stop("same")
            assert await b.ask(3, timeout=1) == ("b", 3)
            with pytest.raises(KeyError):
                one.lookup("same")


# --- restart delays ----------------------------------------------------------------------


async def test_default_restart_backoff_is_0_1_0_2_0_4(autojump_clock: trio.abc.Clock) -> None:
    starts: list[float] = []
    spec = ChildSpec("f", failing_child(starts))  # the default backoff
    assert spec.backoff == DEFAULT_RESTART_BACKOFF
    supervisor = Supervisor([spec], max_restarts=100, within=60)
    with trio.fail_after(60):
        async with open_actor_system() as system:
            await system.spawn(supervisor)
            await trio.sleep(1)
    delays = [b - a for a, b in itertools.pairwise(starts)]
    assert delays == [at(0.1), at(0.2), at(0.4)]
    assert starts == [at(0), at(0.1), at(0.3), at(0.7)]


async def test_supervisor_jitter_is_reproducible_with_a_seeded_rng(
    autojump_clock: trio.abc.Clock,
) -> None:
    backoff = Backoff(base=0.1, factor=2, cap=10, jitter=0.5)
    expected_rng = random.Random(2024)
    expected = [backoff.delay(n, expected_rng) for n in (1, 2, 3, 4)]
    assert expected != [0.1, 0.2, 0.4, 0.8]  # the jitter did something

    async def run_once() -> list[float]:
        starts: list[float] = []
        fifth_run = trio.Event()
        spec = ChildSpec("j", failing_child(starts, runs=5, done=fifth_run), backoff=backoff)
        supervisor = Supervisor([spec], max_restarts=100, within=60, rng=random.Random(2024))
        t0 = trio.current_time()
        async with open_actor_system() as system:
            await system.spawn(supervisor)
            await fifth_run.wait()
        return [t - t0 for t in starts]

    with trio.fail_after(60):
        first, second = await run_once(), await run_once()
    delays = [b - a for a, b in itertools.pairwise(first)]
    assert delays == pytest.approx(expected, abs=1e-9)
    assert second == pytest.approx(first, abs=1e-9)


# --- messages to children restarted with a sibling ---------------------------------------


async def test_one_for_all_keeps_the_mailboxes_of_stopped_siblings(
    autojump_clock: trio.abc.Clock,
) -> None:
    log: list[tuple[str, Any, float]] = []

    class Member(Actor):
        async def handle(self, message: Any) -> Any:
            if message == "crash":
                raise ValueError("crash")
            log.append((self.name, message, trio.current_time()))
            return message

    steady = Backoff(base=1.0, factor=1, cap=1.0)
    specs = [ChildSpec(name, Member, backoff=steady, mailbox_size=2) for name in ("a", "b")]
    supervisor = Supervisor(specs, strategy="one_for_all")
    with trio.fail_after(60):
        async with open_actor_system() as system:
            await system.spawn(supervisor)
            a, b = supervisor.child("a").ref, supervisor.child("b").ref
            assert a is not None and b is not None
            a.tell_nowait("crash")
            await trio.testing.wait_all_tasks_blocked()
            assert [i.state for i in supervisor.children()] == [ChildState.RESTARTING] * 2
            b.tell_nowait("queued while b restarts")
            assert await b.ask("asked while b restarts", timeout=5) == "asked while b restarts"
            assert supervisor.child("b").ref is b
    assert log == [
        ("b", "queued while b restarts", 1.0),
        ("b", "asked while b restarts", 1.0),
    ]


# --- public API --------------------------------------------------------------------------


def test_public_api_is_exported_and_documented() -> None:
    exported = {name for name in vars(runtime) if not name.startswith("_")}
    for name in sorted(exported):
        value = getattr(runtime, name)
        if not (inspect.isclass(value) or inspect.isfunction(value)):
            continue  # constants
        assert value.__module__.startswith("runtime._"), name
        assert inspect.getdoc(value), f"runtime.{name} has no docstring"
        if inspect.isclass(value):
            for attr, member in vars(value).items():
                if attr.startswith("_"):
                    continue
                function = member.fget if isinstance(member, property) else member
                if inspect.isfunction(function):
                    assert inspect.getdoc(function), f"runtime.{name}.{attr} has no docstring"
    # Defaults that appear in public signatures can be imported from the package too.
    for constant in (
        "DEFAULT_MAILBOX_SIZE",
        "DEFAULT_ASK_TIMEOUT",
        "DEFAULT_SHUTDOWN_GRACE",
        "DEFAULT_RESTART_BACKOFF",
        "DEFAULT_MAX_OUTGOING",
        "DEFAULT_SEND_TIMEOUT",
        "DEFAULT_CLOSE_TIMEOUT",
        "DEFAULT_HANDSHAKE_TIMEOUT",
        "FATAL_HANDSHAKE_CODES",
    ):
        assert hasattr(runtime, constant), constant
