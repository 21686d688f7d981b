"""The Leader's retry, backoff and dead-letter timing, in virtual time.

A real :class:`actors.Leader` (its connection handling and timer task) serves peers over
in-memory streams under ``autojump_clock``; the peers speak frames by hand, so every
Assign, Cancel and Result is seen with the exact virtual time it was sent at.

Leader settings in every test: ack timeout 10 s, 3 attempts, backoff 1 s doubling, no
jitter. So a job nobody answers goes out at 0, 11 (10 + 1) and 23 (21 + 2) and is
dead-lettered at 33.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio
import trio.testing

from actors import DLQ_PREFIX, Leader
from protocol import (
    Assign,
    Cancel,
    Credit,
    Deliver,
    Hello,
    Nack,
    Progress,
    Result,
    Session,
    Submit,
    Subscribe,
    Welcome,
)
from runtime import Backoff
from runtime._connection import Connection
from runtime._transports import running
from runtime._wire import StreamWire
from tests.helpers import RawPeer, Stopwatch


@asynccontextmanager
async def leader_over_memory(**kw) -> AsyncIterator[tuple[Leader, object]]:
    kw = {
        "ack_timeout": 10.0,
        "max_attempts": 3,
        "retry_backoff": Backoff(base=1.0, factor=2.0, cap=30.0, jitter=0.0),
        "heartbeat": None,
        **kw,
    }
    if kw["max_attempts"] is None:  # the Leader's own default
        del kw["max_attempts"]
    leader = Leader(listen=[], memory=True, **kw)  # (its run() is not used: no journal)
    async with trio.open_nursery() as nursery:
        await nursery.start(leader._timer_loop)

        async def connect(hello: Hello) -> RawPeer:
            local, remote = trio.testing.memory_stream_pair()
            conn = Connection(
                StreamWire(local), Session(side="server", heartbeat=None), "memory://peer", "tcp"
            )

            async def serve() -> None:
                async with running(conn):
                    await leader._handle_connection(conn)

            nursery.start_soon(serve)
            peer = RawPeer(remote)
            await peer.send(hello)
            assert type(await peer.receive()) is Welcome
            return peer

        yield leader, connect
        nursery.cancel_scope.cancel()


async def worker(connect, credit: int = 3) -> RawPeer:
    return await connect(Hello(mid=0, role="worker", name="w", patterns=["jobs.>"], credit=credit))


async def client(connect) -> RawPeer:
    return await connect(Hello(mid=0, role="client", name="c"))


async def test_unanswered_job_is_redelivered_with_backoff_then_dead_lettered(autojump_clock):
    async with leader_over_memory() as (leader, connect):
        w = await worker(connect)
        c = await client(connect)
        watcher = await client(connect)
        await watcher.send(Subscribe(mid=1, sid=7, pattern=DLQ_PREFIX + ">"))
        await trio.testing.wait_all_tasks_blocked()  # the leader has the subscription
        now = Stopwatch()
        await c.send(Submit(mid=1, job_id="j", subject="jobs.a", payload=1))

        seen = []
        for _ in range(5):  # 3 Assigns and 2 Cancels (after the first two deadlines)
            msg = await w.receive()
            seen.append((type(msg).__name__, getattr(msg, "attempt", None), now()))
        assert seen == [
            ("Assign", 1, 0.0),
            ("Cancel", None, 10.0),  # ack timeout: the worker is told to stop
            ("Assign", 2, 11.0),  # after the 1 s backoff
            ("Cancel", None, 21.0),
            ("Assign", 3, 23.0),  # after the 2 s backoff
        ]
        result = await c.receive()
        assert now() == 33.0  # the third deadline: out of attempts
        assert type(result) is Result and result.cid == 1 and not result.ok
        assert result.attempts == 3 and result.error_type is not None
        dead = await watcher.receive()
        assert type(dead) is Deliver and dead.subject == f"{DLQ_PREFIX}jobs.a" and now() == 33.0
        stats = leader.stats()["subjects"]["jobs.a"]
        assert stats["dead"] == 1 and stats["redelivered"] == 2


async def test_nack_delay_and_backoff_are_exact(autojump_clock):
    async with leader_over_memory() as (_leader, connect):
        w = await worker(connect)
        c = await client(connect)
        now = Stopwatch()
        await c.send(Submit(mid=1, job_id="j", subject="jobs.b", payload=2))
        first = await w.receive()
        assert type(first) is Assign and first.attempt == 1 and now() == 0.0
        await w.send(Nack(mid=1, cid=first.mid, job_id="j", delay=4.0, reason="later"))
        second = await w.receive()
        assert type(second) is Assign and second.attempt == 2 and now() == 4.0  # the Nack's delay
        await w.send(Nack(mid=2, cid=second.mid, job_id="j", reason="no delay given"))
        third = await w.receive()
        assert type(third) is Assign and third.attempt == 3 and now() == 6.0  # backoff(2) = 2 s
        await w.send(Result(mid=3, cid=third.mid, job_id="j", payload="finally", attempts=3))
        result = await c.receive()
        assert type(result) is Result and result.ok and result.payload == "finally" and now() == 6.0


async def test_progress_extends_the_ack_deadline(autojump_clock):
    async with leader_over_memory() as (leader, connect):
        w = await worker(connect)
        c = await client(connect)
        now = Stopwatch()
        await c.send(Submit(mid=1, job_id="j", subject="jobs.c", payload=3))
        job = await w.receive()
        assert type(job) is Assign
        await trio.sleep(8)
        await w.send(Progress(mid=1, job_id="j", fraction=0.5))  # deadline now 18
        await trio.sleep(9)  # t = 17: past the first deadline, before the new one
        progress = await c.receive()  # forwarded to the client as it came
        assert type(progress) is Progress and progress.fraction == 0.5
        await w.send(Result(mid=2, cid=job.mid, job_id="j", payload="done"))
        result = await c.receive()
        assert type(result) is Result and result.ok and now() == 17.0
        with trio.move_on_after(30):
            extra = await w.receive()
            raise AssertionError(f"no Cancel or redelivery expected, got {extra!r}")
        assert leader.stats()["subjects"]["jobs.c"]["redelivered"] == 0


async def test_late_result_after_redelivery_is_delivered_once(autojump_clock):
    """The first result wins; the slow worker's late one does not reach the client again."""
    async with leader_over_memory() as (_leader, connect):
        slow = await worker(connect, credit=1)
        c = await client(connect)
        now = Stopwatch()
        await c.send(Submit(mid=1, job_id="j", subject="jobs.d", payload=4))
        first = await slow.receive()
        assert type(first) is Assign and now() == 0.0
        fast = await worker(connect, credit=1)
        cancel = await slow.receive()
        assert type(cancel) is Cancel and now() == 10.0
        second = await fast.receive()
        assert type(second) is Assign and second.attempt == 2 and now() == 11.0
        await fast.send(Result(mid=1, cid=second.mid, job_id="j", payload="fast"))
        result = await c.receive()
        assert result.payload == "fast" and now() == 11.0
        await slow.send(Result(mid=1, cid=first.mid, job_id="j", payload="slow"))
        with trio.move_on_after(60):
            extra = await c.receive()
            raise AssertionError(f"the client got a second answer: {extra!r}")


async def test_by_default_a_job_is_dead_lettered_after_five_attempts(autojump_clock):
    """The Leader's defaults: 5 attempts; the default backoff (0.5 s doubling, 10 % jitter)."""
    async with leader_over_memory(max_attempts=None, retry_backoff=None, ack_timeout=1.0) as (
        leader,
        connect,
    ):
        assert leader.broker.config.max_attempts == 5
        w = await worker(connect)
        c = await client(connect)
        now = Stopwatch()
        await c.send(Submit(mid=1, job_id="j", subject="jobs.e", payload=5))
        assigned = []
        for _ in range(5):
            msg = await w.receive()
            assert type(msg) is Assign
            assigned.append((msg.attempt, now()))
            await w.send(
                Result(
                    mid=msg.attempt,
                    cid=msg.mid,
                    job_id="j",
                    ok=False,
                    error_type="OSError",
                    error_message=f"try {msg.attempt}",
                )
            )
        assert [a for a, _ in assigned] == [1, 2, 3, 4, 5]
        gaps = [b - a for (_, a), (_, b) in itertools.pairwise(assigned)]
        for gap, nominal in zip(gaps, [0.5, 1.0, 2.0, 4.0], strict=True):
            assert nominal * 0.9 <= gap <= nominal * 1.1  # backoff with jitter
        result = await c.receive()
        assert type(result) is Result and not result.ok and result.attempts == 5
        assert result.error_type == "OSError" and "try 5" in result.error_message


async def test_redelivery_delays_are_jittered(autojump_clock):
    """With jitter, the delays spread around the exponential values (seeded: repeatable)."""

    backoff = Backoff(base=2.0, factor=2.0, cap=30.0, jitter=0.5)
    gaps_by_seed = []
    for seed in (1, 2):
        async with leader_over_memory(
            max_attempts=4, retry_backoff=backoff, rng=random.Random(seed)
        ) as (_leader, connect):
            w = await worker(connect)
            c = await client(connect)
            now = Stopwatch()
            await c.send(Submit(mid=1, job_id="j", subject="jobs.f", payload=6))
            times = []
            for _ in range(4):
                msg = await w.receive()
                times.append(now())
                await w.send(Nack(mid=msg.attempt, cid=msg.mid, job_id="j", reason="again"))
            gaps = [b - a for a, b in itertools.pairwise(times)]
            for gap, nominal in zip(gaps, [2.0, 4.0, 8.0], strict=True):
                assert nominal * 0.5 <= gap <= nominal * 1.5
            gaps_by_seed.append(gaps)
            assert type(await c.receive()) is Result  # dead-lettered after the 4th
    assert gaps_by_seed[0] != gaps_by_seed[1]
    assert any(g not in (2.0, 4.0, 8.0) for g in gaps_by_seed[0])


async def test_a_client_cancel_of_a_running_job_ends_it_without_a_retry(autojump_clock):
    async with leader_over_memory() as (leader, connect):
        w = await worker(connect)
        c = await client(connect)
        now = Stopwatch()
        await c.send(Submit(mid=1, job_id="j", subject="jobs.e", payload=5))
        job = await w.receive()
        assert type(job) is Assign and job.attempt == 1
        await trio.sleep(2)
        await c.send(Cancel(mid=2, job_id="j", reason="changed my mind"))
        cancel = await w.receive()
        assert type(cancel) is Cancel and cancel.job_id == "j" and now() == 2.0
        await trio.sleep(1)
        await w.send(Nack(mid=1, job_id="j", reason="cancelled"))  # what a worker answers
        result = await c.receive()
        assert type(result) is Result and result.cid == 1 and not result.ok and now() == 3.0
        assert (result.error_type, result.error_message) == ("Cancelled", "changed my mind")
        with trio.move_on_after(60):
            extra = await w.receive()
            raise AssertionError(f"no redelivery expected, got {extra!r}")
        stats = leader.stats()["subjects"]["jobs.e"]
        assert (stats["cancelled"], stats["redelivered"], stats["dead"]) == (1, 0, 0)
        # Resubmitting the id returns the stored outcome (the dedup window), not a new run.
        await c.send(Submit(mid=3, job_id="j", subject="jobs.e", payload=5))
        again = await c.receive()
        assert type(again) is Result and again.cid == 3 and again.error_type == "Cancelled"


async def test_a_result_that_beats_the_cancel_still_wins(autojump_clock):
    async with leader_over_memory() as (leader, connect):
        w = await worker(connect)
        c = await client(connect)
        await c.send(Submit(mid=1, job_id="j", subject="jobs.f", payload=6))
        job = await w.receive()
        await c.send(Cancel(mid=2, job_id="j"))
        assert type(await w.receive()) is Cancel
        await w.send(Result(mid=1, cid=job.mid, job_id="j", payload="made it"))
        result = await c.receive()
        assert type(result) is Result and result.ok and result.payload == "made it"
        assert leader.stats()["subjects"]["jobs.f"]["cancelled"] == 0


async def test_credit_sets_the_window_it_does_not_add_to_it(autojump_clock):
    """A Credit message is the worker's window (docs/protocol.md), not an increment: sent
    twice, it still allows that many jobs in flight, and 0 stops the flow."""
    async with leader_over_memory() as (leader, connect):
        w = await worker(connect, credit=1)
        c = await client(connect)
        await c.send(
            *[Submit(mid=i, job_id=f"j{i}", subject="jobs.g", payload=i) for i in range(8)]
        )

        async def assigned() -> list[str]:
            """The job ids the worker is assigned in the next (virtual) second."""
            got = []
            with trio.move_on_after(1):
                while True:
                    got.append(await w.receive())
            return [m.job_id for m in got if type(m) is Assign]

        assert await assigned() == ["j0"]
        await w.send(Credit(mid=1, credit=3), Credit(mid=2, credit=3))
        assert await assigned() == ["j1", "j2"]  # three in flight, not 1 + 3 + 3
        await w.send(Credit(mid=3, credit=0))
        await w.send(*[Result(mid=10 + i, job_id=f"j{i}", payload=i) for i in range(3)])
        assert await assigned() == []  # window 0: the results free no slot
        assert leader.stats()["in_flight"] == 0
        await w.send(Credit(mid=4, credit=2))
        assert await assigned() == ["j3", "j4"]
