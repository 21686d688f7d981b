"""Workers that misbehave are contained: per job, per connection, never the process.

- A handler that raises anything but cancellation (``SystemExit``, ``GeneratorExit``, a
  ``BaseException`` of its own) fails its job; the worker serves the next one.
- A result that cannot be sent (no CBOR encoding, over the frame limit) fails its job with
  a message that names the job and the type, and the handler runs once.
- A failure while serving the leader's messages (Assign, Cancel) or answering a job ends
  that connection, logged once with its traceback; the worker reconnects and serves on.
- A worker whose connection is cut cancels the jobs it held (the leader gives them to
  someone else), waits for them to end, and reconnects with its whole window.

In process, over real loopback sockets (real time, ``e2e``); the first tests run the
runner alone in virtual time.
"""

from __future__ import annotations

import logging
from functools import partial
from typing import Any

import pytest
import trio
import trio.testing

from actors import Client, Job, JobCancelled, JobFailed, Leader, Worker
from actors.worker import WorkerRunner
from actors.worker._failures import MAX_ERROR_MESSAGE
from protocol import Cancel, Nack
from runtime import Backoff
from tests.helpers import Changes, wait_until
from tests.test_worker_slots import _assign, _Sink

FAST = Backoff(base=0.05, factor=2.0, cap=0.2, jitter=0.0)


class Misbehaving(Worker):
    """Does what the payload says: raise some BaseException, return something unsendable,
    sleep (``sleep-once``: on its first attempt only), or answer (``late-``: after a wait);
    counts its calls per job."""

    subjects = ["bad.>"]
    concurrency = 2

    def __init__(self) -> None:
        self.calls: dict[str, int] = {}
        self.cancelled: list[tuple[str, float]] = []
        self.running = trio.Event()
        self.cancel_seen = trio.Event()  # set when a job first sees its cancellation

    async def handle(self, job: Job) -> Any:
        self.calls[job.id] = self.calls.get(job.id, 0) + 1
        what = job.payload
        if what.startswith("late-"):  # the same, after a wait (the slot resumes the job)
            await trio.sleep(0.5)
            what = what[5:]
        if what == "exit":
            raise SystemExit(3)
        if what == "generator-exit":
            raise GeneratorExit("misused")
        if what == "base":
            raise _Custom("a BaseException of its own")
        if what == "long":
            raise ValueError("x" * 100_000)
        if what == "bad-str":
            raise _Unprintable()
        if what == "object":
            return object()
        if what == "huge":
            return b"x" * (17 << 20)  # over the 16 MiB frame limit
        if what == "nursery-sleep":  # cancelled: Cancelled comes out of a nursery, grouped
            async with trio.open_nursery() as nursery:
                nursery.start_soon(trio.sleep, 60)
                await trio.sleep(60)
        if what == "sleep" or (what == "sleep-once" and job.attempt == 1):
            self.running.set()
            try:
                await trio.sleep(60)
            except trio.Cancelled:
                self.cancelled.append((job.id, trio.current_time()))
                self.cancel_seen.set()
                raise
        return {"id": job.id, "attempt": job.attempt}


class _Custom(BaseException):
    pass


class _Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no words")


# --------------------------------------------------------------------------- one runner


async def test_anything_a_handler_raises_fails_only_its_job(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with trio.open_nursery() as nursery:
        runner = WorkerRunner(Misbehaving(), "tcp://127.0.0.1:1")
        sink = _Sink()
        runner._conn = sink  # type: ignore[assignment]
        runner._nursery = nursery
        for i, what in enumerate(["exit", "late-generator-exit", "base", "fine"]):
            runner._on_assign(_assign(i, "bad.x", what), trio.current_time())
            await trio.sleep(1)
        # A Cancel whose Cancelled leaves the handler inside an exception group: a Nack.
        runner._on_assign(_assign(4, "bad.x", "nursery-sleep"), trio.current_time())
        await trio.sleep(1)
        runner._on_cancel(Cancel(mid=9, job_id="j4"))
        runner._on_cancel(Cancel(mid=10, job_id="unknown"))  # ignored
        await trio.sleep(1)
        runner._on_assign(_assign(5, "bad.x", "fine"), trio.current_time())
        runner._on_assign(_assign(6, "bad.x", "long"), trio.current_time())
        await trio.testing.wait_all_tasks_blocked()
        runner._on_assign(_assign(7, "bad.x", "bad-str"), trio.current_time())
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    answers = {m.job_id: m for _, m in sink.sent}
    assert [(answers[f"j{i}"].ok, answers[f"j{i}"].error_type) for i in range(3)] == [
        (False, "SystemExit"), (False, "GeneratorExit"), (False, "_Custom"),
    ]  # fmt: skip
    assert (
        answers["j0"].error_message == "3"
        and answers["j2"].error_message == "a BaseException of its own"
    )
    assert answers["j3"].ok and answers["j5"].ok
    assert type(answers["j4"]) is Nack
    long, unprintable = answers["j6"].error_message, answers["j7"].error_message
    assert len(long) == MAX_ERROR_MESSAGE and long.endswith("...")  # bounded
    assert (answers["j7"].error_type, unprintable) == (
        "_Unprintable",
        "<_Unprintable, whose str() failed>",
    )
    assert (runner.completed, runner.failed, runner.running) == (2, 5, {})


# --------------------------------------------------------------------------- with a leader


async def _serve(
    leader: Leader, nursery: trio.Nursery, worker: Worker, **kwargs: Any
) -> tuple[str, WorkerRunner]:
    [url] = await nursery.start(leader.run)
    runner = WorkerRunner(worker, url, name="w", reconnect_backoff=FAST, **kwargs)
    await nursery.start(runner.run)
    return url, runner


def _errors(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "actors.worker" and r.levelno >= logging.ERROR]


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("what", "error_type", "fragment"),
    [
        ("object", "ResultNotSerializable", "its result, of type object, has no CBOR encoding"),
        ("huge", "ResultTooLarge", "its result, of type bytes, encodes to"),
    ],
)
async def test_a_result_that_cannot_be_sent_fails_its_job_and_runs_once(
    what: str, error_type: str, fragment: str
) -> None:
    worker = Misbehaving()
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            leader = Leader(listen=["tcp://127.0.0.1:0"], retry_backoff=FAST)
            url, runner = await _serve(leader, nursery, worker)
            async with Client.connect(url) as client:
                with pytest.raises(JobFailed) as info:
                    await client.submit("bad.result", what, job_id="r1", timeout=15)
                assert await client.submit("bad.result", "fine", job_id="r2", timeout=5) == {
                    "id": "r2",
                    "attempt": 1,
                }
            nursery.cancel_scope.cancel()
    assert info.value.error_type == error_type
    assert f"job r1: {fragment}" in info.value.message
    # The leader may deliver it again (a failed attempt), but the worker answers from its
    # cache: running it again would only fail the same way.
    assert worker.calls["r1"] == 1 and runner.connects == 1


@pytest.mark.e2e
async def test_a_handler_raising_system_exit_fails_the_job_not_the_worker() -> None:
    worker = Misbehaving()
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            url, runner = await _serve(Leader(listen=["tcp://127.0.0.1:0"]), nursery, worker)
            async with Client.connect(url) as client:
                for what, error_type in [
                    ("exit", "SystemExit"),
                    ("generator-exit", "GeneratorExit"),
                    ("base", "_Custom"),
                ]:
                    with pytest.raises(JobFailed) as info:
                        await client.submit("bad.raise", what, max_attempts=1, timeout=5)
                    assert info.value.error_type == error_type
                assert (await client.submit("bad.raise", "fine", job_id="after", timeout=5))[
                    "id"
                ] == "after"
            nursery.cancel_scope.cancel()
    assert runner.connects == 1


@pytest.mark.e2e
async def test_a_failure_handling_an_assign_ends_the_connection_not_the_worker(
    caplog: pytest.LogCaptureFixture,
) -> None:
    worker = Misbehaving()
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            leader = Leader(listen=["tcp://127.0.0.1:0"], retry_backoff=FAST)
            url, runner = await _serve(leader, nursery, worker)
            on_assign = runner._on_assign
            failures = iter([RuntimeError("injected: an Assign the runner cannot handle")])

            def failing_once(msg: Any, now: float) -> None:
                error = next(failures, None)
                if error is not None:
                    raise error
                on_assign(msg, now)

            runner._on_assign = failing_once  # type: ignore[method-assign]
            async with Client.connect(url) as client:
                # The Assign was lost with the connection: the leader gives it again.
                assert await client.submit("bad.x", "fine", job_id="a1", timeout=10) == {
                    "id": "a1",
                    "attempt": 2,
                }
                assert await client.submit("bad.x", "fine", job_id="a2", timeout=5) == {
                    "id": "a2",
                    "attempt": 1,
                }
            nursery.cancel_scope.cancel()
    assert runner.connects == 2 and worker.calls == {"a1": 1, "a2": 1}
    [record] = _errors(caplog)  # logged once, with its traceback
    assert "handling Assign from the leader failed; ending the connection" in record.getMessage()
    assert record.exc_info is not None and "injected" in str(record.exc_info[1])


@pytest.mark.e2e
async def test_a_failure_handling_a_cancel_ends_the_connection_not_the_worker(
    caplog: pytest.LogCaptureFixture,
) -> None:
    worker = Misbehaving()
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            leader = Leader(listen=["tcp://127.0.0.1:0"], retry_backoff=FAST)
            url, runner = await _serve(leader, nursery, worker)

            def failing(msg: Any) -> None:
                raise KeyError(f"injected: no such job {msg.job_id}")

            runner._on_cancel = failing  # type: ignore[method-assign]
            async with Client.connect(url) as client:
                outcome: list[BaseException] = []

                async def submit() -> None:
                    try:
                        await client.submit("bad.x", "sleep", job_id="c1", timeout=15)
                    except JobCancelled as exc:
                        outcome.append(exc)

                async with trio.open_nursery() as jobs:
                    jobs.start_soon(submit)
                    await worker.running.wait()
                    await client.cancel("c1")
                # The connection ended; the job it held is cancelled on the worker too.
                await worker.cancel_seen.wait()
                assert len(outcome) == 1 and [job for job, _ in worker.cancelled] == ["c1"]
                assert await client.submit("bad.x", "fine", job_id="c2", timeout=5) == {
                    "id": "c2",
                    "attempt": 1,
                }
            nursery.cancel_scope.cancel()
    assert runner.connects == 2 and runner.running == {}
    [record] = _errors(caplog)
    assert "handling Cancel from the leader failed" in record.getMessage()


@pytest.mark.e2e
async def test_a_failure_answering_a_job_ends_the_connection_and_frees_the_slot(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    import actors.worker._runner

    result_item = actors.worker._runner._result_item
    failures = iter([ValueError("injected: a bug on the result path")])

    def failing_once(**fields: Any) -> Any:
        error = next(failures, None)
        if error is not None:
            raise error
        return result_item(**fields)

    monkeypatch.setattr(actors.worker._runner, "_result_item", failing_once)
    worker = Misbehaving()
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            leader = Leader(listen=["tcp://127.0.0.1:0"], retry_backoff=FAST)
            url, runner = await _serve(leader, nursery, worker)
            async with Client.connect(url) as client:
                # Its answer was lost with the connection: it runs again, once.
                assert await client.submit("bad.x", "fine", job_id="f1", timeout=10) == {
                    "id": "f1",
                    "attempt": 2,
                }
                for _ in range(3):  # the slots serve on
                    assert (await client.submit("bad.x", "fine", timeout=5))["attempt"] == 1
            nursery.cancel_scope.cancel()
    assert worker.calls["f1"] == 2 and runner.connects == 2
    [record] = _errors(caplog)
    assert "answering job f1 failed; ending the connection" in record.getMessage()


# --------------------------------------------------------------------------- a cut connection


class CuttableProxy:
    """Forwards TCP connections to a port; :meth:`cut` closes those open now (each side sees
    its connection end without Bye); later ones are forwarded as usual."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.scopes: list[trio.CancelScope] = []

    async def run(self, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        task_status.started(f"tcp://127.0.0.1:{listeners[0].socket.getsockname()[1]}")
        await trio.serve_listeners(self._forward, listeners)

    def cut(self) -> None:
        for scope in self.scopes:
            scope.cancel()
        self.scopes.clear()

    async def _forward(self, downstream: trio.SocketStream) -> None:
        async with downstream, await trio.open_tcp_stream("127.0.0.1", self.port) as upstream:
            with trio.CancelScope() as scope:
                self.scopes.append(scope)
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._pump, downstream, upstream, scope)
                    nursery.start_soon(self._pump, upstream, downstream, scope)

    @staticmethod
    async def _pump(
        source: trio.SocketStream, sink: trio.SocketStream, scope: trio.CancelScope
    ) -> None:
        try:
            async for chunk in source:
                await sink.send_all(chunk)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        scope.cancel()


class _HelloCredits(list[int]):
    """The credit of each Hello the runner sent, in order."""

    def __init__(self) -> None:
        super().__init__()
        self._changes = Changes()

    def append(self, credit: int) -> None:
        super().append(credit)
        self._changes.notify()

    async def wait_for(self, count: int) -> None:
        """Return once the runner has said Hello ``count`` times."""
        await self._changes.wait_for(lambda: len(self) >= count)


async def _through_proxy(
    nursery: trio.Nursery, worker: Worker, **kwargs: Any
) -> tuple[Leader, str, CuttableProxy, WorkerRunner, list[int]]:
    leader = Leader(listen=["tcp://127.0.0.1:0"], retry_backoff=FAST)
    [url] = await nursery.start(leader.run)
    proxy = CuttableProxy(int(url.rsplit(":", 1)[1]))
    via = await nursery.start(proxy.run)
    runner = WorkerRunner(worker, via, name="w", reconnect_backoff=FAST, **kwargs)
    credits = _HelloCredits()
    hello = runner._hello

    def noting_credit(token: str | None) -> Any:
        message = hello(token)
        credits.append(message.credit)
        return message

    runner._hello = noting_credit  # type: ignore[method-assign]
    await nursery.start(runner.run)
    return leader, url, proxy, runner, credits


@pytest.mark.e2e
async def test_a_worker_that_loses_its_connection_cancels_its_jobs_and_reconnects_with_its_window() -> (
    None
):
    worker = Misbehaving()
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            leader, url, proxy, runner, credits = await _through_proxy(nursery, worker)
            async with Client.connect(url) as client:
                answers: list[Any] = []

                async def submit() -> None:
                    answers.append(
                        await client.submit("bad.x", "sleep-once", job_id="long", timeout=15)
                    )

                async with trio.open_nursery() as jobs:
                    jobs.start_soon(submit)
                    await worker.running.wait()
                    cut_at = trio.current_time()
                    proxy.cut()
            stats = leader.stats()["subjects"]["bad.x"]
            nursery.cancel_scope.cancel()
    # The first attempt saw the cancellation at once (it was not run to no one); the
    # leader gave the job again, to the worker back with its whole window (2, not the one
    # slot left free), and the client got exactly one result, from that new attempt.
    [(job, cancelled_at)] = worker.cancelled
    assert job == "long" and cancelled_at - cut_at < 1.0
    assert answers == [{"id": "long", "attempt": 2}] and worker.calls == {"long": 2}
    assert (stats["done"], stats["redelivered"]) == (1, 1)
    assert credits == [2, 2] and runner.connects == 2 and runner.running == {}


class Stubborn(Worker):
    """Ignores cancellation for a while (a shielded clean-up), then ends."""

    subjects = ["stubborn.x"]
    concurrency = 2

    def __init__(self) -> None:
        self.running = trio.Event()

    async def handle(self, job: Job) -> Any:
        if job.attempt == 1:
            self.running.set()
            with trio.CancelScope(shield=True):
                await trio.sleep(1.0)
        return job.attempt


@pytest.mark.e2e
async def test_a_job_that_ignores_the_cancellation_keeps_its_slot_out_of_the_window() -> None:
    worker = Stubborn()
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            leader, url, proxy, runner, credits = await _through_proxy(
                nursery, worker, cancel_grace=0.2
            )
            async with Client.connect(url) as client:
                async with trio.open_nursery() as jobs:
                    jobs.start_soon(
                        partial(client.submit, "stubborn.x", None, job_id="s", timeout=15)
                    )
                    await worker.running.wait()
                    proxy.cut()
                    await credits.wait_for(2)  # back, after the grace period
                    assert runner.running.keys() == {"s"}  # past the grace period, still running
                # When the job ends at last, a Credit gives its slot back.
                await wait_until(
                    lambda: leader.stats()["groups"]["w"]["window"] == 2,
                    timeout=5,
                    what="the leader sees the worker's whole window again",
                )
            nursery.cancel_scope.cancel()
    assert credits == [2, 1]  # the slot it held was left out of the second Hello
