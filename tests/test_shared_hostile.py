"""Regression tests for the review of the shared job store (NATS JetStream): what is
published on the store's subjects by someone who is not a leader, and the corner cases of
waits, attempts, consumers and results that the review found (``/tmp/s16/review_report.md``).

Each test runs leaders in-process against the nats-server on 127.0.0.1:4222 (skipped when
nothing answers there), on a store prefix of its own (deleted at the end), and reaches the
store directly with nats-py where a hostile or stale party is needed.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import attrs
import cbor2
import pytest
import trio

from actors import (
    AuthConfig,
    Client,
    DeadLettered,
    Job,
    JobCancelled,
    JobFailed,
    Leader,
    NotFound,
    RemoteError,
    SubmitTimeout,
    User,
    Worker,
)
from actors.leader._jetstream import StoreConfig, consumer_name, result_key
from actors.leader._shared import SharedJobs
from actors.worker import WorkerRunner
from protocol import ErrorCode
from tests.helpers import wait_until
from tests.test_shared_store import FAST_RETRY, leaders
from tests.test_shared_store import store as store  # (the fixture: a store prefix of its own)

pytestmark = [pytest.mark.e2e, pytest.mark.nats]


# --------------------------------------------------------------------------- helpers


async def on_nats(config: StoreConfig, fn: Callable[[Any, Any], Awaitable[Any]]) -> Any:
    """``await fn(nc, js)`` on a nats-py connection of its own (asyncio, in a thread)."""
    import nats

    async def go() -> Any:
        nc = await nats.connect(list(config.servers))
        try:
            return await fn(nc, nc.jetstream())
        finally:
            await nc.close()

    return await trio.to_thread.run_sync(asyncio.run, go())


async def publish_raw(config: StoreConfig, messages: list[tuple[str, bytes]]) -> None:
    """Publish ``(subject, data)`` on core NATS, in order, as someone who is no leader."""

    async def go(nc: Any, _js: Any) -> None:
        for subject, data in messages:
            await nc.publish(subject, data)
        await nc.flush()

    await on_nats(config, go)


async def jobs_in_stream(config: StoreConfig) -> int:
    """The messages in the store's jobs stream now."""

    async def go(_nc: Any, js: Any) -> int:
        return int((await js.stream_info(config.jobs_stream)).state.messages)

    return int(await on_nats(config, go))


async def consumer_of(config: StoreConfig, pattern: str) -> Any:
    """The consumer info of worker ``pattern`` (None when there is none)."""
    from nats.js.errors import NotFoundError

    async def go(_nc: Any, js: Any) -> Any:
        try:
            return await js.consumer_info(config.jobs_stream, consumer_name(pattern))
        except NotFoundError:
            return None

    return await on_nats(config, go)


async def start_worker(
    nursery: trio.Nursery, worker: Worker, url: str, name: str, **kw: Any
) -> trio.CancelScope:
    """Connect ``worker`` to ``url``; cancelling the returned scope makes it leave."""
    scope = trio.CancelScope()
    runner = WorkerRunner(worker, url, name=name, **kw)

    async def run(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with scope:
            await runner.run(task_status=task_status)

    await nursery.start(run)
    return scope


class Echo(Worker):
    """Answers ``ran <payload>``; counts its runs per job id."""

    subjects = ["echo.>"]
    concurrency = 8

    def __init__(self) -> None:
        self.runs: Counter[str] = Counter()

    async def handle(self, job: Job) -> Any:
        self.runs[job.id] += 1
        return f"ran {job.payload}"


class Sleeper(Worker):
    """Sleeps ``payload`` seconds, then answers ``slept``; counts runs and cancellations."""

    subjects = ["sleep.>"]
    concurrency = 4

    def __init__(self) -> None:
        self.runs: Counter[str] = Counter()
        self.started = trio.Event()
        self.cancelled = 0

    async def handle(self, job: Job) -> Any:
        self.runs[job.id] += 1
        self.started.set()
        try:
            await trio.sleep(job.payload)
        except trio.Cancelled:
            self.cancelled += 1
            raise
        return "slept"


class OneAtATime(Sleeper):
    """A :class:`Sleeper` that runs one job at a time."""

    concurrency = 1


class AlwaysFails(Worker):
    """Fails every attempt; counts its runs per job id."""

    subjects = ["bad.>"]
    concurrency = 4

    def __init__(self) -> None:
        self.runs: Counter[str] = Counter()

    async def handle(self, job: Job) -> Any:
        self.runs[job.id] += 1
        raise ValueError(f"attempt {job.attempt} fails")


def shared(leader: Leader) -> SharedJobs:
    """The shared-store side of ``leader`` (one with ``store=``)."""
    assert leader.shared is not None
    return leader.shared


def calls_waiting(leader: Leader, job_id: str) -> int:
    """The clients' calls waiting at ``leader`` for job ``job_id``'s result (with the
    store's waits, or on the job while it is leased there: not its lessee, the store)."""
    side = shared(leader)
    wait = side.waits.get(result_key(job_id))
    held = leader.broker.jobs.get(job_id)
    on_job = 0 if held is None else sum(1 for c, _ in held.waiters if c is not side.lessee)
    return (len(wait.calls) if wait is not None else 0) + on_job


def total(store_leaders: list[tuple[Leader, str]], counter: str) -> int:
    """The sum of a store counter over leaders."""
    return sum(leader.stats()["store"][counter] for leader, _url in store_leaders)


# --------------------------------------------------------------------------- 1. poison


async def test_a_message_in_the_jobs_stream_that_is_no_job_is_dropped_and_no_leader_dies(
    store: StoreConfig,
) -> None:
    bodies = [
        cbor2.dumps({"id": "x"}),  # no subject
        b"\xff\x00 not CBOR at all",
        cbor2.dumps({"id": "evil", "s": "a.b", "t": "tomorrow"}),  # a time that is text
        cbor2.dumps({"id": "evil2", "s": "echo.x", "t": 1.0, "d": "tomorrow"}),
        cbor2.dumps([1, 2, 3]),
    ]
    with trio.fail_after(15):
        echo_a, echo_b = Echo(), Echo()
        async with leaders(store, (echo_a,), (echo_b,)) as both:
            [(_a, url_a), (_b, url_b)] = both

            async def consumed() -> bool:
                info = await consumer_of(store, "echo.>")
                return info is not None and info.num_waiting > 0

            await wait_until(consumed, timeout=5)
            await publish_raw(store, [(store.jobs_subject("echo.x"), body) for body in bodies])

            async def stream_empty() -> bool:
                return await jobs_in_stream(store) == 0

            await wait_until(stream_empty, timeout=5)
            await wait_until(lambda: total(both, "malformed") >= len(bodies), timeout=5)
            # Every leader is up and serves jobs (the malformed ones were dropped, not run).
            for url in (url_a, url_b):
                async with Client.connect(url) as client:
                    assert await client.submit("echo.ok", 1) == "ran 1"
            assert total(both, "fetched") >= len(bodies)
            assert sum(echo_a.runs.values()) + sum(echo_b.runs.values()) == 2
            assert await jobs_in_stream(store) == 0


# --------------------------------------------------------------------------- 2. garbage result


async def test_a_result_in_the_bucket_that_is_no_result_answers_an_error(
    store: StoreConfig,
) -> None:
    with trio.fail_after(15):
        async with leaders(store, (Echo(),)) as [(leader, url)]:
            async with Client.connect(url) as client:
                # Stored and claimed; no worker serves held.* (so no real result comes).
                await client.enqueue("held.x", 1, job_id="victim", wait_for_worker=True)
                async with trio.open_nursery() as nursery:
                    outcome: list[BaseException | Any] = []

                    async def waiter() -> None:
                        try:
                            outcome.append(await client.result("victim", wait=True))
                        except RemoteError as exc:
                            outcome.append(exc)

                    nursery.start_soon(waiter)
                    await wait_until(lambda: calls_waiting(leader, "victim") == 1, timeout=5)

                    async def plant(_nc: Any, js: Any) -> None:
                        kv = await js.key_value(store.results_bucket)
                        await kv.put(result_key("victim"), cbor2.dumps([1, 2]))

                    await on_nats(store, plant)
                [error] = outcome
                assert isinstance(error, RemoteError) and error.code == ErrorCode.INTERNAL
                assert "is not one a leader wrote" in error.message
                assert calls_waiting(leader, "victim") == 0
                assert await client.submit("echo.after", 2) == "ran 2"  # (the leader is up)


# --------------------------------------------------------------------------- 3. query, then submit


async def test_a_submit_after_a_result_query_of_its_id_is_stored_and_answered(
    store: StoreConfig,
) -> None:
    with trio.fail_after(15):
        echo = Echo()
        async with leaders(store, (echo,)) as [(leader, url)]:
            async with Client.connect(url) as watcher, Client.connect(url) as producer:
                outcome: list[Any] = []

                async def watch() -> None:
                    try:
                        outcome.append(await watcher.result("report-7", wait=True))
                    except NotFound as exc:
                        outcome.append(exc)

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(watch)
                    # The query comes first: answered, or waiting at the leader.
                    await wait_until(
                        lambda: bool(outcome) or calls_waiting(leader, "report-7") == 1,
                        timeout=5,
                    )
                    assert await producer.submit("echo.x", 7, job_id="report-7") == "ran 7"
                # Nothing knew the id when it was asked: not_found (as a single leader says),
                # never a wait the submit is swallowed by.
                [answer] = outcome
                assert isinstance(answer, NotFound)
                assert await watcher.result("report-7", wait=True) == "ran 7"
                assert echo.runs["report-7"] == 1
                assert leader.stats()["store"]["published"] == 1
                assert calls_waiting(leader, "report-7") == 0


async def test_a_submit_after_a_waiting_query_of_a_stored_job_gets_its_result_once(
    store: StoreConfig,
) -> None:
    with trio.fail_after(15):
        echo = Echo()
        async with (
            leaders(store, (), ()) as [(a, url_a), (_b, url_b)],
            trio.open_nursery() as nursery,
        ):
            async with (
                Client.connect(url_b) as enqueuer,
                Client.connect(url_a) as watcher,
                Client.connect(url_a) as producer,
            ):
                await enqueuer.enqueue("echo.x", 8, job_id="report-8", wait_for_worker=True)
                outcome: dict[str, Any] = {}

                async def watch() -> None:
                    outcome["query"] = await watcher.result("report-8", wait=True)

                async def submit() -> None:
                    outcome["submit"] = await producer.submit("echo.x", 8, job_id="report-8")

                async with trio.open_nursery() as calls:
                    calls.start_soon(watch)
                    await wait_until(lambda: calls_waiting(a, "report-8") == 1, timeout=5)
                    calls.start_soon(submit)
                    await wait_until(lambda: calls_waiting(a, "report-8") == 2, timeout=5)
                    await start_worker(nursery, echo, url_b, "echo-b")
                assert outcome == {"query": "ran 8", "submit": "ran 8"}
                assert echo.runs["report-8"] == 1
            nursery.cancel_scope.cancel()


# --------------------------------------------------------------------------- 4. worker leaves


class Once(Worker):
    """Notes each job it runs in a list shared by its instances."""

    subjects = ["once.>"]

    def __init__(self, runs: list[str]) -> None:
        self.ran = runs

    async def handle(self, job: Job) -> Any:
        self.ran.append(job.id)
        return "ran"


async def test_a_job_leased_as_the_last_worker_leaves_runs_at_another_leader(
    store: StoreConfig,
) -> None:
    ran: list[str] = []
    with trio.fail_after(15):
        async with (
            leaders(store, (), ()) as [(a, url_a), (_b, url_b)],
            trio.open_nursery() as nursery,
        ):
            leaves = await start_worker(nursery, Once(ran), url_a, "once-a")

            async def pulling() -> bool:
                info = await consumer_of(store, "once.>")
                return info is not None and info.num_waiting > 0

            await wait_until(pulling, timeout=5)  # (A's pull request is outstanding)
            async with Client.connect(url_b) as client:
                leaves.cancel()
                await wait_until(lambda: not a.broker.workers, timeout=5)
                job = await client.enqueue(
                    "once.x", 1, job_id="one-shot", max_attempts=1, wait_for_worker=True
                )
                await start_worker(nursery, Once(ran), url_b, "once-b")
                assert await client.result(job, wait=True) == "ran"
            assert ran == ["one-shot"]
            nursery.cancel_scope.cancel()


# --------------------------------------------------------------------------- 5. delayed attempts


async def test_a_delayed_job_that_always_fails_runs_max_attempts_times(store: StoreConfig) -> None:
    with trio.fail_after(15):
        failing = AlwaysFails()
        async with leaders(store, ()) as [(_leader, url)], trio.open_nursery() as nursery:
            async with Client.connect(url) as client:
                outcome: dict[str, BaseException] = {}

                async def submit(job_id: str) -> None:
                    with pytest.raises(DeadLettered) as info:
                        await client.submit(
                            "bad.x", 1, job_id=job_id, delay=1.0, max_attempts=2,
                            wait_for_worker=True,
                        )  # fmt: skip
                    outcome[job_id] = info.value

                async with trio.open_nursery() as calls:
                    # "late" is first fetched after it was due; "early" before (given back).
                    calls.start_soon(submit, "late")
                    await trio.sleep(1.3)  # (real time: its due time is the wall clock's)
                    await start_worker(nursery, failing, url, "fails")
                    calls.start_soon(submit, "early")
                for job_id in ("late", "early"):
                    error = outcome[job_id]
                    assert isinstance(error, DeadLettered) and error.attempts == 2, error
                    assert "dead-lettered after 2 attempts" in error.message
                assert failing.runs == {"late": 2, "early": 2}
            nursery.cancel_scope.cancel()


# --------------------------------------------------------------------------- 6. AckWait drift


async def test_a_leader_configured_for_a_longer_ack_wait_keeps_the_consumers(
    store: StoreConfig,
) -> None:
    longer = attrs.evolve(store, ack_wait=30.0)
    with trio.fail_after(15):
        async with (
            leaders(store, ()) as [(_a, url_a)],
            leaders(longer, ()) as [(b, url_b)],
            trio.open_nursery() as nursery,
        ):
            # A (AckWait 3 s) makes the consumer of echo.>; then B (30 s) fetches from it too.
            await start_worker(nursery, Echo(), url_a, "echo-a")

            def pulls(leaders: int) -> Callable[[], Awaitable[bool]]:
                async def pulling() -> bool:
                    info = await consumer_of(store, "echo.>")
                    return info is not None and info.num_waiting >= leaders

                return pulling

            await wait_until(pulls(1), timeout=5)
            await start_worker(nursery, Echo(), url_b, "echo-b")
            await wait_until(pulls(2), timeout=5)  # (a pull of each leader waits)
            info = await consumer_of(store, "echo.>")
            assert info.config.ack_wait == 3.0
            assert shared(b).store.ack_waits["echo.>"] == 3.0  # (what B keeps jobs alive by)
            async with Client.connect(url_b) as client:
                assert await client.submit("echo.x", 1) == "ran 1"
            nursery.cancel_scope.cancel()


# --------------------------------------------------------------------------- 7. big result


class Big(Worker):
    """Answers 2 MB: more than the local nats-server's max_payload (1 MiB)."""

    subjects = ["big.>"]

    async def handle(self, job: Job) -> Any:
        return b"x" * 2_000_000


async def test_a_result_larger_than_the_store_takes_fails_its_job_saying_so(
    store: StoreConfig,
) -> None:
    with trio.fail_after(15):
        async with (
            leaders(store, (Big(), Echo())) as [(leader, url)],
            Client.connect(url) as client,
        ):
            with trio.fail_after(5):
                with pytest.raises(JobFailed) as info:
                    await client.submit("big.x", 0, job_id="big")
            assert info.value.error_type == "TooLarge"
            assert "over what the shared store takes" in info.value.message
            assert not isinstance(info.value, DeadLettered)
            # Its neighbours are stored as usual.
            got = [r async for r in client.map("echo.x", range(20), limit=20)]
            assert sorted(got) == sorted(f"ran {i}" for i in range(20))
            assert leader.stats()["store"]["store_failures"] == 0
            assert await jobs_in_stream(store) == 0


# --------------------------------------------------------------------------- 8. abandon


async def test_a_client_that_gives_up_does_not_cancel_a_job_another_waits_for(
    store: StoreConfig,
) -> None:
    with trio.fail_after(15):
        sleeper = Sleeper()
        async with (
            leaders(store, (sleeper,)) as [(leader, url)],
            Client.connect(url) as patient,
            Client.connect(url) as hasty,
        ):
            outcome: dict[str, Any] = {}

            async def wait_patiently() -> None:
                try:
                    outcome["patient"] = await patient.submit("sleep.a", 1.5, job_id="shared-j")
                except JobFailed as exc:
                    outcome["patient"] = exc

            async with trio.open_nursery() as nursery:
                nursery.start_soon(wait_patiently)
                await sleeper.started.wait()
                with pytest.raises(SubmitTimeout):
                    await hasty.submit("sleep.a", 1.5, job_id="shared-j", timeout=0.3)
            assert outcome == {"patient": "slept"}
            assert sleeper.runs == {"shared-j": 1} and sleeper.cancelled == 0
            assert calls_waiting(leader, "shared-j") == 0


# --------------------------------------------------------------------------- 9. query of a retry


class FailsFirst(Worker):
    """Attempt 1 waits for :attr:`release`, then fails; attempt 2 succeeds."""

    subjects = ["first.>"]

    def __init__(self) -> None:
        self.started = trio.Event()
        self.release = trio.Event()
        self.attempts: list[int] = []

    async def handle(self, job: Job) -> Any:
        self.attempts.append(job.attempt)
        if job.attempt == 1:
            self.started.set()
            await self.release.wait()
            raise ValueError("the first attempt fails")
        return f"ok on attempt {job.attempt}"


async def test_a_result_query_at_the_leader_holding_the_job_outlives_a_failed_attempt(
    store: StoreConfig,
) -> None:
    with trio.fail_after(15):
        worker = FailsFirst()
        async with (
            leaders(store, (worker,), max_attempts=3) as [(leader, url)],
            Client.connect(url) as client,
        ):
            job = await client.enqueue("first.x", 1, job_id="fails-once")
            await worker.started.wait()
            assert job in leader.broker.jobs  # (leased here while asked)
            async with trio.open_nursery() as nursery:
                outcome: list[Any] = []

                async def ask() -> None:
                    outcome.append(await client.result(job, wait=True))

                nursery.start_soon(ask)
                await wait_until(lambda: calls_waiting(leader, job) == 1, timeout=5)
                worker.release.set()
            assert outcome == ["ok on attempt 2"]
            assert worker.attempts == [1, 2]


# --------------------------------------------------------------------------- 10. dedup window


async def test_a_running_job_resubmitted_after_the_duplicate_window_runs_once(
    store: StoreConfig,
) -> None:
    short = attrs.evolve(store, duplicate_window=1.0, results_ttl=60.0)
    with trio.fail_after(15):
        first, second = OneAtATime(), OneAtATime()
        async with (
            leaders(short, (first,), (second,)) as [(_a, url_a), (_b, url_b)],
            Client.connect(url_a) as c1,
            Client.connect(url_b) as c2,
        ):
            outcome: dict[str, Any] = {}

            async def submit(name: str, client: Client) -> None:
                outcome[name] = await client.submit("sleep.x", 3.0, job_id="idem-key")

            async with trio.open_nursery() as nursery:
                nursery.start_soon(submit, "first", c1)
                await trio.sleep(1.5)  # (real time: past the stream's duplicate window)
                nursery.start_soon(submit, "again", c2)
            assert outcome == {"first": "slept", "again": "slept"}
            assert first.runs["idem-key"] + second.runs["idem-key"] == 1


# --------------------------------------------------------------------------- 11. stale consumer


class Resize(Worker):
    """Serves img.resize only (an earlier deployment served img.>)."""

    subjects = ["img.resize"]

    async def handle(self, job: Job) -> Any:
        return "resized"


async def test_an_idle_overlapping_consumer_of_an_earlier_deployment_is_replaced(
    store: StoreConfig,
) -> None:
    with trio.fail_after(15):
        async with leaders(store, ()) as [(leader, url)], trio.open_nursery() as nursery:

            async def stale(_nc: Any, js: Any) -> None:
                from nats.js import api

                await js.add_consumer(
                    store.jobs_stream,
                    api.ConsumerConfig(
                        durable_name=consumer_name("img.>"),
                        filter_subject=store.jobs_subject("img.>"),
                        ack_policy=api.AckPolicy.EXPLICIT,
                        ack_wait=3.0,
                    ),
                )

            await on_nats(store, stale)
            await start_worker(nursery, Resize(), url, "resize")
            async with Client.connect(url) as client:
                assert await client.submit("img.resize", 1) == "resized"
            assert await consumer_of(store, "img.>") is None
            assert leader.stats()["store"]["problems"] == {}
            nursery.cancel_scope.cancel()


# --------------------------------------------------------------------------- 12. unknown id


async def test_a_result_query_of_an_id_never_submitted_is_not_found_at_once(
    store: StoreConfig,
) -> None:
    with trio.fail_after(15):
        async with leaders(store, (Echo(),)) as [(leader, url)], Client.connect(url) as client:
            with trio.fail_after(2), pytest.raises(NotFound):
                await client.result("never-submitted", wait=True)
            assert calls_waiting(leader, "never-submitted") == 0


# --------------------------------------------------------------------------- 13. forged messages


async def test_garbage_notifications_leave_the_leader_up_and_reach_no_one(
    store: StoreConfig,
) -> None:
    with trio.fail_after(15):
        async with (
            leaders(store, ()) as [(leader, url)],
            trio.open_nursery() as nursery,
            Client.connect(url) as client,
            client.subscribe("$sys.>") as system,
            client.subscribe("news.>") as news,
        ):
            token = shared(leader).token
            prefix = store.prefix
            outcome: list[Any] = []

            async def submit() -> None:
                outcome.append(
                    await client.submit("echo.x", "real", job_id="waited", wait_for_worker=True)
                )

            nursery.start_soon(submit)
            await wait_until(lambda: calls_waiting(leader, "waited") == 1, timeout=5)
            done = store.done_subject(token, result_key("waited"))
            garbage = [
                (done, b"\x01"),  # CBOR 1
                (done, b"\xff\x00"),  # not CBOR
                (done, cbor2.dumps([1, 2])),
                (done, cbor2.dumps({"ok": "yes", "st": "done"})),
                (f"{prefix}.cancel", b"\xff\xfe"),
                (f"{prefix}.cancel", cbor2.dumps([1, 2, 3, 4])),
                (f"{prefix}.cancel", cbor2.dumps({"job": "waited"})),
                (f"{prefix}.cancel", cbor2.dumps(["waited", None, "yes", "r"])),
                (f"{prefix}.cancel", cbor2.dumps(["waited"])),
                (f"{prefix}.progress.{token}", b"\xff"),
                (f"{prefix}.progress.{token}", cbor2.dumps(["waited", 5, None])),
                (f"{prefix}.progress.{token}", cbor2.dumps(["waited", 0.5, 7])),
                (f"{prefix}.progress.{token}", cbor2.dumps(3)),
                (f"{prefix}.pub.$sys.x", cbor2.dumps({"forged": True})),
                (f"{prefix}.pub.$dlq.echo.x", cbor2.dumps({"job_id": "forged"})),
            ]
            await publish_raw(store, [*garbage, (f"{prefix}.pub.news.ok", cbor2.dumps(1))])
            # (published after the garbage, on the same subscription: it comes after)
            msg = await news.receive()
            assert (msg.subject, msg.payload) == ("news.ok", 1)
            with trio.move_on_after(0.1):
                got = await system.receive()
                pytest.fail(f"a $ subject came from NATS: {got}")
            await wait_until(
                lambda: leader.stats()["store"]["malformed"] == len(garbage), timeout=5
            )
            assert not outcome  # (no garbage answered the waiting submit, nor cancelled it)
            assert "waited" not in shared(leader).cancels
            await start_worker(nursery, Echo(), url, "echo")
            await wait_until(lambda: outcome == ["ran real"], timeout=5)
            assert await client.submit("echo.y", 2) == "ran 2"
            nursery.cancel_scope.cancel()


# --------------------------------------------------------------------------- 14. cancels


async def test_a_non_owners_cancel_does_not_hide_the_owners(store: StoreConfig) -> None:
    users = (
        User(name="owner", tokens=("owner-token-0123456789",), submit=[">"]),
        User(name="other", tokens=("other-token-0123456789",), submit=[">"]),
        User(name="worker", tokens=("worker-token-012345678",), serve=[">"]),
    )
    # (attrs' converter=tuple leaves mypy a generic parameter to infer: it cannot)
    auth = AuthConfig(users=users)  # type: ignore[arg-type]
    with trio.fail_after(15):
        leader = Leader(
            name="L0", listen=["tcp://127.0.0.1:0"], store=store, auth=auth,
            retry_backoff=FAST_RETRY,
        )  # fmt: skip
        async with trio.open_nursery() as nursery:
            [url] = await nursery.start(leader.run)
            async with (
                Client.connect(url, token="owner-token-0123456789") as owner,
                Client.connect(url, token="other-token-0123456789") as other,
            ):
                echo = Echo()
                job = await owner.enqueue("echo.x", 1, job_id="owned", wait_for_worker=True)
                await owner.cancel(job, "the owner changed its mind")
                await wait_until(lambda: job in shared(leader).cancels, timeout=5)
                await other.cancel(job, "not mine to cancel")
                await wait_until(
                    lambda: "other" in shared(leader).cancels.get(job, ((), False))[0], timeout=5
                )
                await start_worker(nursery, echo, url, "echo", token="worker-token-012345678")
                with pytest.raises(JobCancelled):
                    await owner.result(job, wait=True)
                assert echo.runs[job] == 0
            nursery.cancel_scope.cancel()
