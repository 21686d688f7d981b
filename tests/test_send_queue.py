"""The send queue alone (``runtime._outgoing.SendQueue``): no Connection, a fake wire and a
fake owner, virtual time.

The fake wire records each write (the frames of one ``send_frames``) when it begins and
holds it until the test opens its gate; the owner records what the queue tells it. Times
are asserted exactly under the autojump clock.
"""

from __future__ import annotations

import math
from typing import Any

import attrs
import pytest
import trio
import trio.testing

import protocol
import runtime
from protocol import Bye, Hello, Ping, Publish, Session, Welcome
from runtime._outgoing import OutgoingBudget, SendQueue


@attrs.define(eq=False)
class FakeWire:
    """A wire whose writes wait for :attr:`gate` (None: they end at once)."""

    whole_frames: bool = False
    writes: list[list[bytes]] = attrs.field(factory=list)
    gate: trio.Event | None = None
    acked: int | None = None  # what the peer's TCP acknowledged (None: cannot say)
    fail_with: BaseException | None = None

    async def send_frames(self, frames: list[bytes]) -> None:
        if self.fail_with is not None:
            raise self.fail_with
        self.writes.append(list(frames))
        if self.gate is not None:
            await self.gate.wait()

    async def receive(self) -> bytes | None:
        await trio.sleep_forever()

    async def aclose(self) -> None:
        pass

    async def aclose_forcefully(self) -> None:
        pass

    def bytes_acked(self) -> int | None:
        return self.acked

    def sent(self) -> bytes:
        return b"".join(b"".join(frames) for frames in self.writes)


@attrs.define(eq=False)
class TryWire(FakeWire):
    """A wire that also writes without waiting: :attr:`room` bytes at most (a full socket)."""

    room: int = 2**62
    tried: list[bytes] = attrs.field(factory=list)
    taken: list[bytes] = attrs.field(factory=list)

    def try_send(self, data: bytes) -> int:
        if self.fail_with is not None:
            raise self.fail_with
        self.tried.append(data)
        taken = min(self.room, len(data))
        self.room -= taken
        self.taken.append(data[:taken])
        return taken

    def sent(self) -> bytes:
        """What was taken without waiting, then what the writer wrote."""
        return b"".join(self.taken) + super().sent()


@attrs.define(eq=False)
class FakeOwner:
    """Records what the queue tells its connection (with the virtual time)."""

    calls: list[tuple[Any, ...]] = attrs.field(factory=list)

    def _transport_lost(self, exc: BaseException) -> None:
        self.calls.append(("lost", type(exc)))

    def _internal_failure(self, exc: Exception, doing: str) -> None:
        self.calls.append(("failure", type(exc), doing))

    def _write_stalled(self, seconds: float, held: int) -> None:
        self.calls.append(("stalled", trio.current_time(), seconds, held))

    def _over_budget(self, held: int, limit: int) -> None:
        self.calls.append(("over_budget", held, limit))


def make_queue(
    wire: FakeWire | None = None,
    *,
    session: Session | None = None,
    bundling: bool = True,
    **kw: Any,
) -> tuple[SendQueue, FakeWire, FakeOwner]:
    wire = FakeWire() if wire is None else wire
    owner = FakeOwner()
    queue = SendQueue(wire, Session(side="client") if session is None else session, owner, **kw)
    if bundling:
        queue.handshake_done(protocol.BUNDLE_VERSION, None)
    return queue, wire, owner


def publish(mid: int, size: int = 10) -> Publish:
    return Publish(mid=mid, subject="a.b", payload=b"x" * size)


def decode(data: bytes) -> list[protocol.Message]:
    return protocol.FrameDecoder(decode_payloads=True).feed(data)


# ---------------------------------------------------------------------------------------
# Queueing and writing


async def test_queued_messages_go_out_in_one_bundle_in_one_write(
    autojump_clock: trio.testing.MockClock,
) -> None:
    session = Session(side="client")
    queue, wire, owner = make_queue(session=session)
    messages = [publish(i) for i in range(1, 6)]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(queue.run_writer)
        await trio.sleep(2)
        for message in messages:
            queue.queue_nowait(message)
        await trio.testing.wait_all_tasks_blocked()
        assert wire.writes == []  # queued, not flushed: the writer was not woken
        assert queue.queued_bytes == queue.budget.used > 0
        await trio.sleep(1)
        written_at = trio.current_time()
        queue.flush()  # no try_send: the writer writes
        await trio.testing.wait_all_tasks_blocked()
        assert [len(frames) for frames in wire.writes] == [1]  # one frame: a bundle of five
        assert decode(wire.sent()) == messages
        assert queue.held == queue.budget.used == 0
        assert session.last_sent == written_at  # (the heartbeat counts from it)
        nursery.cancel_scope.cancel()
    assert owner.calls == []


async def test_send_nowait_wakes_the_writer_and_writes_every_flush_every_messages(
    autojump_clock: trio.testing.MockClock,
) -> None:
    await trio.sleep(7)
    session = Session(side="client")
    queue, wire, _ = make_queue(TryWire(), session=session, flush_every=3)
    queue.send_nowait(publish(1))
    queue.send_nowait(publish(2))
    assert wire.writes == [] and isinstance(wire, TryWire) and wire.tried == []
    queue.send_nowait(publish(3))  # the third: written at once, without the writer
    assert decode(wire.sent()) == [publish(1), publish(2), publish(3)]
    assert queue.held == queue.budget.used == 0
    assert session.last_sent == trio.current_time() > 0


async def test_a_partial_write_without_waiting_is_finished_by_the_writer_in_order() -> None:
    wire = TryWire(room=20)
    queue, _, owner = make_queue(wire)
    first = [publish(i, 100) for i in range(1, 4)]
    for message in first:
        queue.queue_nowait(message)
    queue.flush()
    assert wire.taken == [wire.tried[0][:20]] and queue.queued_bytes == len(wire.tried[0]) - 20
    second = [publish(i) for i in range(4, 6)]
    for message in second:
        queue.queue_nowait(message)
    queue.flush()  # not tried again past the unfinished write: left to the writer
    assert len(wire.tried) == 1
    async with trio.open_nursery() as nursery:
        nursery.start_soon(queue.run_writer)
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    assert decode(wire.sent()) == first + second
    assert [len(frames) for frames in wire.writes] == [2]  # the rest, then the second bundle
    assert queue.held == queue.budget.used == 0 and owner.calls == []


async def test_max_outgoing_bounds_queued_plus_written_bytes() -> None:
    queue, _wire, _ = make_queue(max_outgoing=1000)
    queue.queue_nowait(publish(1, 2000))  # alone in an empty queue: always taken
    with pytest.raises(runtime.SendBufferFull) as info:
        queue.queue_nowait(publish(2, 10))
    assert info.value.limit == 1000
    assert not queue.has_room(1)
    with pytest.raises(runtime.SendBufferFull):
        queue.send_many_nowait([publish(3), publish(4)])
    queue.send_control(Ping(mid=5))  # past the bound
    assert decode(b"".join(protocol.bundle_frames(queue._items, 2**20))) == [
        publish(1, 2000),
        Ping(mid=5),
    ]


async def test_send_waits_for_room_then_times_out_at_send_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    wire = FakeWire(gate=trio.Event())
    queue, _, _ = make_queue(wire, max_outgoing=1000, send_timeout=3.0)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(queue.run_writer)
        await queue.send(publish(1, 900))
        await trio.testing.wait_all_tasks_blocked()
        assert queue.inflight_bytes > 900  # being written: the gate holds it
        start = trio.current_time()
        with pytest.raises(runtime.SendBufferFull):
            await queue.send(publish(2, 900))
        assert trio.current_time() - start == 3.0

        async def open_gate_at(at: float) -> None:
            await trio.sleep_until(at)
            assert wire.gate is not None
            wire.gate.set()

        nursery.start_soon(open_gate_at, start + 5.0)
        await queue.send(publish(3, 900), timeout=math.inf)  # waits for the write to end
        assert trio.current_time() - start == 5.0
        nursery.cancel_scope.cancel()


async def test_a_welcome_sent_ends_the_handshake() -> None:
    session = Session(side="server")
    session.receive(Hello(mid=0, role="client", versions=(1, 2), max_frame=70_000), 0.0)
    wire = TryWire()
    queue = SendQueue(wire, session, FakeOwner(), receive_limit=50_000)
    assert (queue.bundling, queue.peer_open, queue.send_limit) == (False, False, 50_000)
    queue.send_nowait(Welcome(mid=1, cid=0, version=2))
    queue.flush()
    (welcome,) = decode(wire.sent())
    assert type(welcome) is Welcome and welcome.max_frame == 50_000  # ours, filled in
    assert (queue.bundling, queue.peer_open, queue.send_limit) == (True, True, 70_000)
    with pytest.raises(runtime.MessageTooLarge):
        queue.queue_item(Publish.item(mid=2, subject="a.b", payload=b"x" * 70_000))


# ---------------------------------------------------------------------------------------
# The write deadline


async def test_a_write_that_takes_nothing_is_reported_write_timeout_after_it_began(
    autojump_clock: trio.testing.MockClock,
) -> None:
    wire = FakeWire(gate=trio.Event())
    queue, _, owner = make_queue(wire, write_timeout=5.0)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(queue.run_writer)
        nursery.start_soon(queue.watch_writes)
        await trio.sleep(100)  # idle: the watch sleeps, nothing is due
        assert owner.calls == []
        began = trio.current_time()
        queue.send_nowait(publish(1, 1000))
        await trio.sleep(60)
        held = queue.held
        nursery.cancel_scope.cancel()
    assert owner.calls == [("stalled", began + 5.0, 5.0, held)]
    assert held > 1000  # (the queue drops nothing itself: cutting is the owner's)


async def test_progress_the_peer_acknowledged_postpones_the_report(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # The watch looks every second (a quarter of the deadline): it sees the progress made
    # at 2.5 s and 6.5 s at 3 s and 7 s, and reports at 11 s.
    wire = FakeWire(gate=trio.Event(), acked=0)
    queue, _, owner = make_queue(wire, write_timeout=4.0)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(queue.run_writer)
        nursery.start_soon(queue.watch_writes)
        await trio.testing.wait_all_tasks_blocked()
        began = trio.current_time()
        queue.send_nowait(publish(1, 1000))
        for at in (2.5, 6.5):
            await trio.sleep_until(began + at)
            wire.acked = (wire.acked or 0) + 100
        await trio.sleep(60)
        nursery.cancel_scope.cancel()
    assert [call[:3] for call in owner.calls] == [("stalled", began + 11.0, 4.0)]


async def test_writes_that_end_in_time_are_never_reported(
    autojump_clock: trio.testing.MockClock,
) -> None:
    wire = FakeWire()
    queue, _, owner = make_queue(wire, write_timeout=5.0)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(queue.run_writer)
        nursery.start_soon(queue.watch_writes)
        for i in range(10):
            wire.gate = trio.Event()
            queue.send_nowait(publish(i))
            await trio.sleep(4.5)  # each write waits 4.5 s, under the deadline
            wire.gate.set()
            await trio.testing.wait_all_tasks_blocked()
        await trio.sleep(100)
        nursery.cancel_scope.cancel()
    assert len(wire.writes) == 10 and owner.calls == []


# ---------------------------------------------------------------------------------------
# The shared budget


async def test_a_full_budget_empties_the_queue_that_holds_the_most() -> None:
    budget = OutgoingBudget(1000)
    (big, _, big_owner), (small, _, small_owner), (me, _, me_owner) = (
        make_queue(budget=budget) for _ in range(3)
    )
    for queue in (big, small, me):
        queue.join_budget()
    big.queue_nowait(publish(1, 500))
    small.queue_nowait(publish(2, 200))
    held_big = big.held
    me.queue_nowait(publish(3, 300))  # over: the biggest other member makes room
    assert big_owner.calls == [("over_budget", held_big, 1000)]
    assert big.held == 0 and small.held > 0 and me.held > 0
    assert budget.used == small.held + me.held
    assert small_owner.calls == me_owner.calls == []
    with pytest.raises(runtime.SendBufferFull):  # more than emptying every other one frees
        me.queue_nowait(publish(4, 900))
    assert small_owner.calls == [] and small.held > 0
    for queue in (big, small, me):
        queue.leave_budget()
    assert budget.used == 0 and not budget._members


async def test_a_closing_queue_that_holds_the_most_is_emptied_too() -> None:
    # (Its connection is closing already: the owner is told, the bytes go either way.)
    budget = OutgoingBudget(1000)
    (closing, _, owner), (me, _, _) = (make_queue(budget=budget) for _ in range(2))
    closing.join_budget()
    me.join_budget()
    closing.queue_nowait(publish(1, 700))
    closing.close("closed locally", None, True)
    me.queue_nowait(publish(2, 500))
    assert closing.held == 0 and budget.used == me.held
    assert [call[0] for call in owner.calls] == ["over_budget"]


# ---------------------------------------------------------------------------------------
# Closing, losing the transport, failing


async def test_after_close_sending_raises_and_the_writer_drains_then_ends() -> None:
    queue, wire, _ = make_queue()
    queue.queue_nowait(publish(1))
    queue.close("closed locally", "shutting_down", True)
    with pytest.raises(runtime.ConnectionClosed) as info:
        queue.send_nowait(publish(2))
    assert (info.value.reason, info.value.code, info.value.clean) == (
        "closed locally",
        "shutting_down",
        True,
    )
    with pytest.raises(runtime.ConnectionClosed):
        queue.queue_item(Publish.item(mid=3, subject="a.b"))
    with pytest.raises(runtime.ConnectionClosed):
        await queue.send(publish(4))
    queue.send_control(Bye(mid=5, reason="closing"))  # the last words still go
    assert queue.bye_sent
    with trio.fail_after(1):
        await queue.run_writer()  # returns once drained
    assert queue.writer_done.is_set()
    assert decode(wire.sent()) == [publish(1), Bye(mid=5, reason="closing")]


@pytest.mark.parametrize("where", ["flush", "writer"])
async def test_a_lost_transport_is_told_to_the_owner(where: str) -> None:
    wire = (
        TryWire(fail_with=trio.BrokenResourceError("gone"))
        if where == "flush"
        else FakeWire(fail_with=trio.ClosedResourceError())
    )
    queue, _, owner = make_queue(wire)
    queue.queue_nowait(publish(1))
    queue.flush()
    if where == "writer":
        with trio.fail_after(1):
            await queue.run_writer()  # ends at once
    expected = trio.BrokenResourceError if where == "flush" else trio.ClosedResourceError
    assert owner.calls == [("lost", expected)]


@attrs.define(eq=False)
class ClosingOwner(FakeOwner):
    """An owner that answers a failure as a connection does: an Error, and close."""

    queue: SendQueue | None = None

    def _internal_failure(self, exc: Exception, doing: str) -> None:
        super()._internal_failure(exc, doing)
        assert self.queue is not None
        self.queue.send_control(protocol.Error(mid=2, code="internal", message="internal error"))
        self.queue.close("internal error", "internal", False)


async def test_a_failure_of_ours_while_writing_is_told_once_then_the_writer_gives_up() -> None:
    wire = FakeWire(fail_with=RuntimeError("bug"))
    owner = ClosingOwner()
    queue = owner.queue = SendQueue(wire, Session(side="client"), owner)
    queue.queue_nowait(publish(1))
    queue.flush()
    with trio.fail_after(1):
        await queue.run_writer()  # the Error fails as well: the writer gives up
    assert owner.calls == [("failure", RuntimeError, "writing to")]
    assert queue.held == queue.budget.used == 0  # both batches dropped, counted out
    assert queue.writer_done.is_set()
