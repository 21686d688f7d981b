"""The Trio <-> asyncio bridge (``runtime._asyncio_bridge``) in both of its modes.

Every scenario opens its own bridge and runs twice: as a pytest-trio test (``trio.run``, so
the bridge is in thread mode) and as a sync test under :func:`run_trio_guest` (guest mode).
Each is bounded by :data:`SCENARIO_TIMEOUT`; ordering comes from events, never from sleeps.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import signal
import socket
import threading
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import trio
import trio.lowlevel
import trio.testing

from runtime import AsyncioBridge, _asyncio_bridge, open_asyncio_bridge, run_trio_guest

#: Seconds one scenario may take (the 10,000 calls take about one).
SCENARIO_TIMEOUT = 30
NATS_ADDRESS = ("127.0.0.1", 4222)
NATS_URL = "nats://127.0.0.1:4222"
LOGGER = "runtime.asyncio_bridge"

Scenario = Callable[[pytest.LogCaptureFixture], Awaitable[None]]
SCENARIOS: list[Scenario] = []


def scenario(fn: Scenario) -> Scenario:
    """Register ``fn`` to run in both modes."""
    SCENARIOS.append(fn)
    return fn


async def _bounded(fn: Callable[..., Awaitable[Any]], *args: Any) -> Any:
    with trio.fail_after(SCENARIO_TIMEOUT):
        return await fn(*args)


async def _echo(value: Any) -> Any:
    """An asyncio coroutine function that returns its argument after a pass of the loop."""
    await asyncio.sleep(0)
    return value


def _signal(event: trio.Event) -> Callable[[list[Any]], None]:
    """A ``to_trio`` callback that sets ``event``."""
    return lambda _batch: event.set()


# --- the scenarios ----------------------------------------------------------------------


@scenario
async def results_cross(caplog: pytest.LogCaptureFixture) -> None:
    async def add(a: int, b: int) -> int:
        await asyncio.sleep(0)
        return a + b

    async with open_asyncio_bridge() as bridge:
        assert await bridge.run(add, 2, 3) == 5
        assert await bridge.run(_echo, "value") == "value"


@scenario
async def exceptions_cross(caplog: pytest.LogCaptureFixture) -> None:
    error = ValueError("raised on the asyncio side")

    async def fail() -> None:
        await asyncio.sleep(0)
        raise error

    def fail_at_once() -> Awaitable[None]:
        raise KeyError("raised before any awaitable")

    async with open_asyncio_bridge() as bridge:
        with pytest.raises(ValueError, match="asyncio side") as info:
            await bridge.run(fail)
        assert info.value is error  # the original exception, not a copy or a wrapper
        with pytest.raises(KeyError, match="before any awaitable"):
            await bridge.run(fail_at_once)
        assert await bridge.run(_echo, "still working") == "still working"


@scenario
async def cancelling_the_caller_cancels_the_asyncio_task(
    caplog: pytest.LogCaptureFixture,
) -> None:
    started, saw_cancel = trio.Event(), trio.Event()
    async with open_asyncio_bridge() as bridge:
        report_started = bridge.to_trio(_signal(started))
        report_cancel = bridge.to_trio(_signal(saw_cancel))

        async def forever() -> None:
            report_started(None)
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                report_cancel(None)
                raise

        with trio.CancelScope() as scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(bridge.run, forever)
                await started.wait()
                scope.cancel()
        assert scope.cancelled_caught
        await saw_cancel.wait()  # the asyncio task saw CancelledError
        assert await bridge.run(_echo, "after") == "after"


@scenario
async def a_call_cancelled_before_it_starts_never_runs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    ran: list[str] = []

    async def record() -> None:
        ran.append("ran")

    async with open_asyncio_bridge() as bridge:
        with trio.CancelScope() as scope:
            scope.cancel()
            await bridge.run(record)
        # A call made after the cancelled one runs after it on the loop (FIFO).
        assert await bridge.run(_echo, "next") == "next"
    assert ran == []


@scenario
async def spawned_tasks_are_cancelled_and_awaited_at_close(
    caplog: pytest.LogCaptureFixture,
) -> None:
    started = trio.Event()
    seen: list[str] = []
    async with open_asyncio_bridge() as bridge:
        report_started = bridge.to_trio(_signal(started))

        async def forever() -> None:
            report_started(None)
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                await asyncio.sleep(0.01)  # cleanup that takes a while is waited for
                seen.append("cancelled, cleaned up")
                raise

        async def quick() -> None:
            seen.append("quick")

        bridge.spawn(quick)
        bridge.spawn(forever)
        await started.wait()
    assert seen == ["quick", "cancelled, cleaned up"]
    assert not [r for r in caplog.records if r.name == LOGGER]


@scenario
async def a_close_during_a_cancellation_still_cancels_and_awaits(
    caplog: pytest.LogCaptureFixture,
) -> None:
    started = trio.Event()
    seen: list[str] = []
    with trio.CancelScope() as scope:
        async with open_asyncio_bridge() as bridge:
            report_started = bridge.to_trio(_signal(started))

            async def forever() -> None:
                report_started(None)
                try:
                    await asyncio.sleep(3600)
                except asyncio.CancelledError:
                    await asyncio.sleep(0.01)
                    seen.append("cleaned up")
                    raise

            bridge.spawn(forever)
            await started.wait()
            scope.cancel()
            await trio.sleep_forever()
    assert scope.cancelled_caught
    assert seen == ["cleaned up"]


@scenario
async def a_failing_spawned_task_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger=LOGGER)

    async def fail() -> None:
        raise RuntimeError("spawned and failed")

    async with open_asyncio_bridge() as bridge:
        bridge.spawn(fail)
        # The failure is logged on the loop before this later call comes back.
        assert await bridge.run(_echo, "later") == "later"
    [record] = [r for r in caplog.records if r.name == LOGGER]
    assert record.levelno == logging.ERROR
    assert record.exc_info is not None and str(record.exc_info[1]) == "spawned and failed"


@scenario
async def a_call_running_at_close_raises_closed(caplog: pytest.LogCaptureFixture) -> None:
    started = trio.Event()
    outcomes: list[type[BaseException]] = []
    async with trio.open_nursery() as nursery:
        async with open_asyncio_bridge() as bridge:
            report_started = bridge.to_trio(_signal(started))

            async def forever() -> None:
                report_started(None)
                await asyncio.sleep(3600)

            async def caller() -> None:
                try:
                    await bridge.run(forever)
                except trio.ClosedResourceError as error:
                    outcomes.append(type(error))

            nursery.start_soon(caller)
            await started.wait()
    assert outcomes == [trio.ClosedResourceError]


@scenario
async def a_closed_bridge_refuses_work_and_drops_items(
    caplog: pytest.LogCaptureFixture,
) -> None:
    batches: list[list[int]] = []
    async with open_asyncio_bridge() as bridge:
        push = bridge.to_trio(batches.append)
    push(1)  # the asyncio side's callable after the close: dropped, not raised
    await trio.testing.wait_all_tasks_blocked()
    assert batches == []
    with pytest.raises(trio.ClosedResourceError):
        await bridge.run(asyncio.sleep, 0)
    with pytest.raises(trio.ClosedResourceError):
        bridge.spawn(asyncio.sleep, 0)


@scenario
async def to_trio_coalesces_a_burst(caplog: pytest.LogCaptureFixture) -> None:
    count = 1000
    batches: list[list[int]] = []
    all_in = trio.Event()

    def take(batch: list[int]) -> None:
        batches.append(batch)
        if sum(map(len, batches)) == count:
            all_in.set()

    async with open_asyncio_bridge() as bridge:
        push = bridge.to_trio(take)

        async def burst() -> None:
            for item in range(count):
                push(item)

        await bridge.run(burst)
        await all_in.wait()
    assert [item for batch in batches for item in batch] == list(range(count))
    assert len(batches) <= count // 20, len(batches)  # far fewer crossings than items


@scenario
async def to_trio_from_a_foreign_thread(caplog: pytest.LogCaptureFixture) -> None:
    count = 500
    received: list[int] = []
    all_in = trio.Event()

    def take(batch: list[int]) -> None:
        received.extend(batch)
        if len(received) == count:
            all_in.set()

    async with open_asyncio_bridge() as bridge:
        push = bridge.to_trio(take)
        thread = threading.Thread(target=lambda: [push(i) for i in range(count)])
        thread.start()
        await all_in.wait()
        thread.join()
    assert received == list(range(count))


@scenario
async def a_failing_to_trio_callback_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger=LOGGER)
    good = trio.Event()

    def take(batch: list[str]) -> None:
        if batch == ["bad"]:
            raise ValueError("bad batch")
        good.set()

    async with open_asyncio_bridge() as bridge:
        push = bridge.to_trio(take)
        await bridge.run(_call_soon_async, push, "bad")
        # Each push below is its own burst: the bad batch was taken before "good" came.
        await trio.testing.wait_all_tasks_blocked()
        await bridge.run(_call_soon_async, push, "good")
        await good.wait()
    [record] = [r for r in caplog.records if r.name == LOGGER]
    assert record.exc_info is not None and str(record.exc_info[1]) == "bad batch"


async def _call_soon_async(fn: Callable[[Any], None], item: Any) -> None:
    fn(item)


@scenario
async def ten_thousand_concurrent_calls(caplog: pytest.LogCaptureFixture) -> None:
    count = 10_000
    results = [-1] * count
    async with open_asyncio_bridge() as bridge:

        async def call(i: int) -> None:
            results[i] = await bridge.run(_echo, i)

        async with trio.open_nursery() as nursery:
            for i in range(count):
                nursery.start_soon(call, i)
        assert bridge._tasks == set()  # nothing left behind on the loop side
    assert results == list(range(count))


# --- both modes ---------------------------------------------------------------------------


async def _a_task_that_ignores_cancellation_delays_close_boundedly() -> None:
    started = trio.Event()
    async with open_asyncio_bridge() as bridge:
        report_started = bridge.to_trio(_signal(started))

        async def stubborn() -> None:
            report_started(None)
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                pass  # ignores the bridge's cancellation; asyncio's own clean-up ends it
            await asyncio.sleep(3600)

        bridge.spawn(stubborn)
        await started.wait()
        closing_started = trio.current_time()
    assert trio.current_time() - closing_started < SCENARIO_TIMEOUT / 2


def _check_the_close_warning(caplog: pytest.LogCaptureFixture) -> None:
    [record] = [r for r in caplog.records if r.name == LOGGER]
    assert record.levelno == logging.WARNING
    assert "1 asyncio task(s) still running" in record.getMessage()


@pytest.mark.e2e
async def test_close_is_bounded_in_thread_mode(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_asyncio_bridge, "BRIDGE_CLOSE_TIMEOUT", 0.2)
    await _bounded(_a_task_that_ignores_cancellation_delays_close_boundedly)
    _check_the_close_warning(caplog)


@pytest.mark.e2e
def test_close_is_bounded_in_guest_mode(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_asyncio_bridge, "BRIDGE_CLOSE_TIMEOUT", 0.2)
    run_trio_guest(_bounded, _a_task_that_ignores_cancellation_delays_close_boundedly)
    _check_the_close_warning(caplog)


def _name(fn: Scenario) -> str:
    return fn.__name__


@pytest.mark.parametrize("scenario", SCENARIOS, ids=_name)
async def test_thread_mode(scenario: Scenario, caplog: pytest.LogCaptureFixture) -> None:
    await _bounded(scenario, caplog)


@pytest.mark.parametrize("scenario", SCENARIOS, ids=_name)
def test_guest_mode(scenario: Scenario, caplog: pytest.LogCaptureFixture) -> None:
    run_trio_guest(_bounded, scenario, caplog)


async def _where_things_run() -> tuple[AsyncioBridge, dict[str, Any]]:
    async def on_the_loop() -> dict[str, Any]:
        return {"loop": asyncio.get_running_loop(), "thread": threading.current_thread()}

    async with open_asyncio_bridge() as bridge:
        seen = await bridge.run(on_the_loop)
    return bridge, seen


async def test_thread_mode_runs_a_loop_in_a_thread_of_its_own() -> None:
    bridge, seen = await _bounded(_where_things_run)
    assert bridge.mode == "thread"
    assert seen["loop"] is bridge.loop
    assert seen["thread"] is not threading.current_thread()
    assert seen["thread"].name == "asyncio-bridge" and seen["thread"].daemon
    assert not seen["thread"].is_alive()  # joined at exit
    assert bridge.loop.is_closed()


def test_guest_mode_shares_the_thread_and_the_loop_of_run_trio_guest() -> None:
    def check() -> None:
        bridge, seen = trio_result
        assert bridge.mode == "guest"
        assert seen["loop"] is bridge.loop
        assert seen["thread"] is threading.current_thread()

    trio_result = run_trio_guest(_bounded, _where_things_run)
    check()


def test_run_trio_guest_returns_the_result() -> None:
    async def main(a: int, b: int) -> int:
        await trio.lowlevel.checkpoint()
        return a * b

    assert run_trio_guest(main, 6, 7) == 42


def test_run_trio_guest_raises_the_original_exception() -> None:
    error = ValueError("from trio")

    async def main() -> None:
        await trio.lowlevel.checkpoint()
        raise error

    with pytest.raises(ValueError, match="from trio") as info:
        run_trio_guest(main)
    assert info.value is error


def test_run_trio_guest_raises_a_nursery_group_as_trio_run_does() -> None:
    async def fail() -> None:
        raise KeyError("in a child task")

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(fail)

    with pytest.raises(ExceptionGroup) as info:
        run_trio_guest(main)
    assert info.group_contains(KeyError, match="in a child task")


@pytest.mark.skipif(
    signal.getsignal(signal.SIGINT) is not signal.default_int_handler
    or threading.current_thread() is not threading.main_thread(),
    reason="needs Python's default SIGINT handler in the main thread",
)
def test_control_c_reaches_trio_and_ends_the_run_with_keyboard_interrupt() -> None:
    cleaned_up: list[str] = []

    async def main() -> None:
        async with open_asyncio_bridge() as bridge:
            # The signal arrives while the asyncio side runs: Trio delivers it to its main
            # task, which is blocked in sleep_forever (as trio.run would).
            bridge.spawn(_raise_sigint)
            try:
                with trio.fail_after(SCENARIO_TIMEOUT):
                    await trio.sleep_forever()
            finally:
                cleaned_up.append("finally ran in trio")

    with pytest.raises(KeyboardInterrupt):
        run_trio_guest(main)
    assert cleaned_up == ["finally ran in trio"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


async def _raise_sigint() -> None:
    signal.raise_signal(signal.SIGINT)


# --- nats-py through the bridge ------------------------------------------------------------


def _nats_answers() -> bool:
    try:
        with socket.create_connection(NATS_ADDRESS, timeout=1.0) as sock:
            sock.settimeout(1.0)
            return sock.recv(4) == b"INFO"
    except OSError:
        return False


needs_nats = pytest.mark.skipif(
    not _nats_answers(), reason="no nats-server answers on 127.0.0.1:4222"
)


async def _nats_request_reply() -> None:
    import nats

    async with open_asyncio_bridge() as bridge:
        connect = functools.partial(
            nats.connect, NATS_URL, allow_reconnect=False, connect_timeout=2
        )
        nc = await bridge.run(connect)
        try:
            subject = f"test.asyncio_bridge.{uuid.uuid4().hex}"

            async def answer(msg: Any) -> None:
                await msg.respond(b"pong:" + msg.data)

            await bridge.run(functools.partial(nc.subscribe, subject, cb=answer))
            for payload in (b"one", b"two"):
                reply = await bridge.run(nc.request, subject, payload, 5.0)
                assert reply.data == b"pong:" + payload
        finally:
            await bridge.run(nc.close)


@pytest.mark.e2e
@pytest.mark.nats
@needs_nats
async def test_nats_request_reply_in_thread_mode() -> None:
    await _bounded(_nats_request_reply)


@pytest.mark.e2e
@pytest.mark.nats
@needs_nats
def test_nats_request_reply_in_guest_mode() -> None:
    run_trio_guest(_bounded, _nats_request_reply)
