"""Leaders sharing one job store on NATS JetStream, in-process, against the nats-server on
127.0.0.1:4222 (skipped when nothing answers there). Each test uses a store prefix of its
own (streams and bucket deleted at the end). Kill -9 failover between leader processes and
a 3-node NATS cluster are in ``test_shared_failover.py``.
"""

from __future__ import annotations

import secrets
from collections import Counter
from contextlib import asynccontextmanager

import pytest
import trio

from actors import Client, DeadLettered, Job, Leader, Worker
from actors.leader._jetstream import StoreConfig, parse_store
from actors.worker import WorkerRunner
from runtime import Backoff
from tests.helpers import wait_until

from .nats_servers import LOCAL_NATS, drop_store, require_local_nats

pytestmark = [pytest.mark.e2e, pytest.mark.nats]

FAST_RETRY = Backoff(base=0.02, factor=2.0, cap=0.2, jitter=0.0)


class Echo(Worker):
    subjects = ["echo.>", "math.square"]
    concurrency = 16

    def __init__(self) -> None:
        self.seen: Counter[str] = Counter()

    async def handle(self, job: Job):
        self.seen[job.id] += 1
        if job.subject == "math.square":
            await job.progress(0.5, "half way")
            return {"square": job.payload["n"] ** 2}
        return {"echo": job.payload, "attempt": job.attempt}


class Flaky(Worker):
    subjects = ["flaky.*"]
    concurrency = 4
    fail_times = 2

    async def handle(self, job: Job):
        if job.attempt <= self.fail_times:
            raise ValueError(f"attempt {job.attempt} fails")
        return job.attempt


@pytest.fixture
async def store():
    require_local_nats()
    config = parse_store(LOCAL_NATS, prefix="t" + secrets.token_hex(4), ack_wait=3.0)
    try:
        yield config
    finally:
        await trio.to_thread.run_sync(drop_store, LOCAL_NATS, config.prefix)


@asynccontextmanager
async def leaders(store: StoreConfig, *worker_sets, **leader_kw):
    """One leader per entry of ``worker_sets`` (each a tuple of workers connected to it)."""
    leader_kw.setdefault("retry_backoff", FAST_RETRY)
    async with trio.open_nursery() as nursery:
        out = []
        for n, workers in enumerate(worker_sets):
            leader = Leader(name=f"L{n}", listen=["tcp://127.0.0.1:0"], store=store, **leader_kw)
            urls = await nursery.start(leader.run)
            for i, w in enumerate(workers):
                runner = WorkerRunner(w, urls[0], name=f"{type(w).__name__.lower()}-{n}-{i}")
                await nursery.start(runner.run)
            out.append((leader, urls[0]))
        yield out
        nursery.cancel_scope.cancel()


async def test_submit_result_and_progress_through_the_store(store):
    with trio.fail_after(20):
        echo = Echo()
        async with leaders(store, (echo,)) as [(leader, url)], Client.connect(url) as client:
            progress = []
            r = await client.submit(
                "math.square", {"n": 7}, on_progress=lambda f, n: progress.append((f, n))
            )
            assert r == {"square": 49}
            assert progress == [(0.5, "half way")]
            got = [res async for res in client.map("echo.x", range(300), limit=64)]
            assert sorted(g["echo"] for g in got) == list(range(300))
            stats = leader.stats()["store"]
            assert stats["published"] == 301 and stats["completed"] == 301
            assert sum(echo.seen.values()) == 301


async def test_a_job_submitted_at_one_leader_runs_at_another(store):
    with trio.fail_after(20):
        echo = Echo()
        async with leaders(store, (), (echo,)) as [(_a, url_a), (_b, _url_b)]:
            async with Client.connect(url_a) as client:
                got = [r async for r in client.map("echo.y", range(50), limit=16)]
                assert sorted(g["echo"] for g in got) == list(range(50))
            assert len(echo.seen) == 50 and set(echo.seen.values()) == {1}


async def test_resubmit_is_answered_from_the_store_not_run_again(store):
    with trio.fail_after(20):
        echo = Echo()
        async with leaders(store, (echo,), ()) as [(_a, url_a), (_b, url_b)]:
            async with Client.connect(url_a) as client:
                first = await client.submit("echo.z", 1, job_id="same-id")
            async with Client.connect(url_b) as client:
                again = await client.submit("echo.z", 1, job_id="same-id")
            assert first == again
            assert echo.seen["same-id"] == 1


async def test_retries_then_dead_letter_through_the_store(store):
    with trio.fail_after(30):
        async with (
            leaders(store, (Flaky(),), max_attempts=3) as [(_leader, url)],
            Client.connect(url) as client,
        ):
            assert await client.submit("flaky.ok") == 3
            Flaky.fail_times = 10
            try:
                async with client.subscribe("$dlq.>") as dlq:
                    with pytest.raises(DeadLettered) as info:
                        await client.submit("flaky.bad", {"x": 1}, job_id="poison")
                    assert info.value.attempts == 3 and info.value.error_type == "ValueError"
                    msg = await dlq.receive()
                    assert msg.payload["job_id"] == "poison" and msg.payload["attempts"] == 3
            finally:
                Flaky.fail_times = 2


async def test_publish_at_one_leader_reaches_subscribers_at_another(store):
    with trio.fail_after(20):
        async with leaders(store, (), ()) as [(_a, url_a), (_b, url_b)]:
            async with Client.connect(url_a) as pub, Client.connect(url_b) as sub:
                async with sub.subscribe("news.>") as inbox:
                    await trio.sleep(0.2)  # (the subscription is local: nothing to wait for)
                    await pub.publish("news.x", {"n": 1})
                    msg = await inbox.receive()
                    assert msg.subject == "news.x" and msg.payload == {"n": 1}


class Sleeper(Worker):
    subjects = ["sleep.>"]
    concurrency = 4

    def __init__(self) -> None:
        self.started = trio.Event()
        self.cancelled = 0

    async def handle(self, job: Job):
        self.started.set()
        try:
            await trio.sleep(job.payload)
        except trio.Cancelled:
            self.cancelled += 1
            raise
        return "slept"


async def test_cancel_at_one_leader_stops_the_job_running_at_another(store):
    from actors import JobCancelled

    with trio.fail_after(20):
        sleeper = Sleeper()
        async with leaders(store, (), (sleeper,)) as [(_a, url_a), (_b, url_b)]:
            async with Client.connect(url_a) as submitter, Client.connect(url_b) as other:
                async with trio.open_nursery() as nursery:
                    outcome = []

                    async def submit() -> None:
                        try:
                            await submitter.submit("sleep.long", 30, job_id="long-one")
                        except JobCancelled as exc:
                            outcome.append(exc)

                    nursery.start_soon(submit)
                    await sleeper.started.wait()
                    await other.cancel("long-one", "no longer wanted")
                assert len(outcome) == 1 and sleeper.cancelled == 1


async def test_enqueue_at_one_leader_result_at_another(store):
    with trio.fail_after(20):
        echo = Echo()
        async with leaders(store, (echo,), ()) as [(_a, url_a), (_b, url_b)]:
            async with Client.connect(url_b) as client:
                job_id = await client.enqueue("echo.q", "hello", job_id="enq-1")
                assert job_id == "enq-1"
                assert await client.result("enq-1", wait=True) == {"echo": "hello", "attempt": 1}
            async with Client.connect(url_a) as client:
                assert await client.result("enq-1") == {"echo": "hello", "attempt": 1}


async def test_a_job_that_expires_in_the_store_is_answered_timeout(store):
    from actors import SubmitTimeout

    with trio.fail_after(20):
        async with leaders(store, ()) as [(_leader, url)], Client.connect(url) as client:
            with pytest.raises(SubmitTimeout):
                await client.submit("nobody.here", 1, timeout=0.5, wait_for_worker=True)


async def test_a_subject_no_leader_serves_is_refused_no_route(store):
    from actors import NoRoute

    with trio.fail_after(20):
        async with leaders(store, (Echo(),), ()) as [_a, (_b, url_b)]:
            async with Client.connect(url_b) as client:
                assert (await client.submit("echo.ok", 1))["echo"] == 1  # served at a
                with pytest.raises(NoRoute, match="no worker of any leader"):
                    await client.submit("nobody.serves.this", 1)


async def test_overlapping_worker_patterns_are_reported_not_fatal(store):
    class Narrow(Worker):
        subjects = ["echo.narrow"]

        async def handle(self, job: Job):
            return "narrow"

    with trio.fail_after(20):
        async with leaders(store, (Echo(),), (Narrow(),)) as [(_a, url_a), (b, _url_b)]:
            async with Client.connect(url_a) as client:
                assert (await client.submit("echo.x", 2))["echo"] == 2

            def reported() -> bool:
                return any("overlaps" in p for p in b.stats()["store"]["problems"].values())

            await wait_until(reported, timeout=10)


async def test_a_dead_letter_retried_by_an_operator_runs_again_through_the_store(store):
    with trio.fail_after(30):
        async with (
            leaders(store, (Flaky(),), max_attempts=2) as [(leader, url)],
            Client.connect(url) as client,
        ):
            Flaky.fail_times = 2
            with pytest.raises(DeadLettered):
                await client.submit("flaky.later", None, job_id="retry-me")
            assert [d["job_id"] for d in leader.broker.dead_letters] == ["retry-me"]
            Flaky.fail_times = 0
            assert (
                leader.broker.requeue_dead_letter(
                    leader.broker.dead_letters[0], trio.current_time()
                )
                is None
            )
            assert await client.result("retry-me", wait=True) == 1
            Flaky.fail_times = 2


async def test_tls_urls_refuse_a_server_that_does_not_require_tls():
    from actors.leader._jetstream import StoreError

    require_local_nats()
    config = parse_store("tls://127.0.0.1:4222", prefix="t" + secrets.token_hex(4))
    leader = Leader(listen=["tcp://127.0.0.1:0"], store=config)
    with trio.fail_after(20), pytest.raises(StoreError, match="does not require TLS"):
        await leader.run()


async def test_a_password_in_the_store_url_is_never_shown(store):
    import attrs

    # (the local nats-server has no users: it lets any in)
    secret = attrs.evolve(store, servers=("nats://someone:s3cret@127.0.0.1:4222",))
    leader = Leader(listen=["tcp://127.0.0.1:0"], store=secret)
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            await nursery.start(leader.run)
            shown = repr(leader.stats()["store"]) + repr(leader.readiness()[1]["store"])
            assert "s3cret" not in shown and "someone:***@" in shown
            nursery.cancel_scope.cancel()


async def test_a_job_id_with_a_line_break_is_stored_and_answered(store):
    with trio.fail_after(20):
        async with leaders(store, (Echo(),)) as [(_leader, url)], Client.connect(url) as client:
            assert (await client.submit("echo.nl", 7, job_id="a\nb"))["echo"] == 7
            assert (await client.result("a\nb"))["echo"] == 7


async def test_dead_letters_are_listed_at_every_leader_and_after_a_restart(store):
    with trio.fail_after(30):
        async with leaders(store, (Flaky(),), (), max_attempts=2) as [(_a, url_a), (b, _url_b)]:
            Flaky.fail_times = 5
            try:
                async with Client.connect(url_a) as client:
                    with pytest.raises(DeadLettered):
                        await client.submit("flaky.dies", None, job_id="dies-once")
            finally:
                Flaky.fail_times = 2
            await wait_until(
                lambda: any(d["job_id"] == "dies-once" for d in b.broker.dead_letters), timeout=10
            )
        async with leaders(store, ()) as [(fresh, _url)]:  # (a leader started later)
            assert [d["job_id"] for d in fresh.broker.dead_letters] == ["dies-once"]
