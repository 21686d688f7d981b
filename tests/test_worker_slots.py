"""How a worker spreads assigned jobs over its slot tasks, in virtual time.

The runner's connection is replaced by a list that collects what it would send; Assign
messages are fed to it as its session loop would. Slots are woken one at a time, in a
chain: jobs that wait still run side by side (up to ``concurrency``), and a batch of jobs
that never wait is run by one slot instead of waking one task per job. Results are
queued and flushed: once for a batch of jobs that never wait, and before any job waits.
"""

from __future__ import annotations

import trio
import trio.testing

from actors import Worker
from actors.worker import WorkerRunner
from protocol import Assign, Nack, Result, bundle_frames, decode, encode_array
from tests.helpers import Changes


class _Sink:
    """Stands in for the worker's Connection: keeps what is sent (written out: sent at
    once, or queued and then flushed), with the virtual time it went out."""

    def __init__(self) -> None:
        self.sent: list[tuple[float, object]] = []
        self.queued: list[object] = []
        self.flushes = 0  # flushes that wrote something
        self._changes = Changes()

    def send_nowait(self, message: object) -> None:
        self.queued.append(message)
        self.flush()

    def queue_nowait(self, message: object) -> None:
        self.queued.append(message)

    def queue_item(self, item: list) -> None:
        # Encoded as a connection does (a value with no CBOR encoding raises here), and
        # read back as the leader's peer would see it, payload decoded.
        (frame,) = bundle_frames([encode_array(item)], 1 << 25)
        self.queued.append(decode(frame))

    def flush(self) -> None:
        if self.queued:
            self.flushes += 1
            now = trio.current_time()
            self.sent += [(now, m) for m in self.queued]
            self.queued.clear()
            self._changes.notify()

    async def wait_sent(self, count: int) -> None:
        """Return once ``count`` messages have gone out."""
        await self._changes.wait_for(lambda: len(self.sent) >= count)


class Sleeper(Worker):
    subjects = ["sleep"]
    concurrency = 4
    started: list[float]

    async def handle(self, job):
        self.started.append(trio.current_time())
        await trio.sleep(job.payload)
        return job.payload


class Instant(Worker):
    subjects = ["instant"]
    concurrency = 8

    async def handle(self, job):
        return job.payload * 2


def _assign(i: int, subject: str, payload: object) -> Assign:
    return Assign(mid=i, job_id=f"j{i}", subject=subject, payload=payload)


async def _runner_with(worker: Worker, nursery: trio.Nursery) -> tuple[WorkerRunner, _Sink]:
    runner = WorkerRunner(worker, "tcp://127.0.0.1:1")
    sink = _Sink()
    runner._conn = sink  # type: ignore[assignment]
    runner._nursery = nursery
    return runner, sink


async def test_waiting_jobs_run_side_by_side_up_to_concurrency(
    autojump_clock: trio.testing.MockClock,
) -> None:
    worker = Sleeper()
    worker.started = []
    async with trio.open_nursery() as nursery:
        runner, sink = await _runner_with(worker, nursery)
        t0 = trio.current_time()
        for i in range(4):  # concurrency 4: four jobs of 1 s take 1 s
            runner._on_assign(_assign(i, "sleep", 1), trio.current_time())
        await sink.wait_sent(4)
        t1 = trio.current_time() - t0
        for i in range(4, 8):  # and four more, on the same slots
            runner._on_assign(_assign(i, "sleep", 2), trio.current_time())
        await sink.wait_sent(8)
        nursery.cancel_scope.cancel()
    assert [t - t0 for t in worker.started] == [0, 0, 0, 0, t1, t1, t1, t1]
    assert [t - t0 for t, _ in sink.sent] == [1, 1, 1, 1, t1 + 2, t1 + 2, t1 + 2, t1 + 2]
    assert all(type(m) is Result and m.ok for _, m in sink.sent)
    assert runner.max_running == 4
    assert runner._slots == 4  # never more slot tasks than the concurrency


async def test_a_batch_of_jobs_that_never_wait_runs_on_few_slots(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with trio.open_nursery() as nursery:
        runner, sink = await _runner_with(Instant(), nursery)
        for i in range(8):
            runner._on_assign(_assign(i, "instant", i), trio.current_time())
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    results = {m.job_id: m.payload for _, m in sink.sent}
    assert results == {f"j{i}": 2 * i for i in range(8)}
    # One slot ran the whole batch: no job waited, so no other slot was started.
    assert runner._slots == 1
    assert runner.completed == 8
    assert sink.flushes == 1  # eight results, one write


class Mixed(Worker):
    """Payload = seconds to wait (0: returns without waiting)."""

    subjects = ["mixed"]
    concurrency = 8

    async def handle(self, job):
        if job.payload:
            await trio.sleep(job.payload)
        return job.payload


async def test_results_are_not_held_back_by_a_job_that_waits(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with trio.open_nursery() as nursery:
        runner, sink = await _runner_with(Mixed(), nursery)
        t0 = trio.current_time()
        # Two instant jobs, one of 5 s, one instant: one slot runs the first two, and
        # flushes their results when the third is about to wait (not 5 s later).
        for i, wait in enumerate([0, 0, 5, 0]):
            runner._on_assign(_assign(i, "mixed", wait), trio.current_time())
        await sink.wait_sent(4)
        nursery.cancel_scope.cancel()
    done = {m.job_id: t - t0 for t, m in sink.sent}
    assert done == {"j0": 0, "j1": 0, "j2": 5, "j3": 0}
    assert [m.job_id for _, m in sink.sent][:2] == ["j0", "j1"]
    assert sink.flushes == 3  # j0+j1 before j2 waits, j3 when its slot ran dry, j2 at 5 s


class Failing(Worker):
    subjects = ["fail"]
    concurrency = 2

    async def handle(self, job):
        if job.payload:
            await trio.sleep(job.payload)
        raise ValueError(f"no {job.payload}")


async def test_a_job_that_waits_then_fails_or_is_cancelled_is_reported(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with trio.open_nursery() as nursery:
        runner, sink = await _runner_with(Failing(), nursery)
        runner._on_assign(_assign(0, "fail", 0), trio.current_time())
        runner._on_assign(_assign(1, "fail", 2), trio.current_time())
        await trio.sleep(1)
        assert [(m.job_id, m.ok, m.error_message) for _, m in sink.sent] == [("j0", False, "no 0")]
        await trio.sleep(2)
        assert [(m.job_id, m.ok) for _, m in sink.sent] == [("j0", False), ("j1", False)]
        assert sink.sent[1][1].error_message == "no 2"
        # A job cancelled while it waits (the leader's Cancel) is given back with a Nack.
        runner._on_assign(_assign(2, "fail", 10), trio.current_time())
        await trio.sleep(1)
        runner.running["j2"]._cancel()
        await trio.sleep(0.5)
        nursery.cancel_scope.cancel()
    assert type(sink.sent[-1][1]) is Nack and sink.sent[-1][1].job_id == "j2"
    assert sink.sent[-1][0] == 4  # when cancelled (t = 4), not at the end of its 10 s


async def test_credit_overrun_is_refused_not_queued(autojump_clock: trio.testing.MockClock) -> None:
    worker = Sleeper()
    worker.started = []
    async with trio.open_nursery() as nursery:
        runner, sink = await _runner_with(worker, nursery)
        for i in range(5):
            runner._on_assign(_assign(i, "sleep", 1), trio.current_time())
        nacks = [m for _, m in sink.sent if type(m) is Nack]
        assert [m.job_id for m in nacks] == ["j4"]
        assert runner.credit_violations == 1
        await sink.wait_sent(5)  # the Nack and the four results
        nursery.cancel_scope.cancel()
    assert runner.completed == 4
    assert sorted(m.job_id for _, m in sink.sent if type(m) is Result) == ["j0", "j1", "j2", "j3"]


async def test_jobs_arriving_while_slots_run_are_picked_up(
    autojump_clock: trio.testing.MockClock,
) -> None:
    worker = Sleeper()
    worker.started = []
    async with trio.open_nursery() as nursery:
        runner, sink = await _runner_with(worker, nursery)
        t0 = trio.current_time()
        runner._on_assign(_assign(0, "sleep", 3), trio.current_time())
        await trio.sleep(1)
        runner._on_assign(_assign(1, "sleep", 1), trio.current_time())
        runner._on_assign(_assign(2, "sleep", 1), trio.current_time())
        await trio.sleep(0.5)
        runner._on_assign(_assign(3, "sleep", 1), trio.current_time())
        await sink.wait_sent(4)
        nursery.cancel_scope.cancel()
    assert [t - t0 for t in worker.started] == [0, 1, 1, 1.5]
    done = {m.job_id: t - t0 for t, m in sink.sent}
    assert done == {"j0": 3, "j1": 2, "j2": 2, "j3": 2.5}


class Returns(Worker):
    """Returns what the payload names: a value CBOR cannot encode, or a nested one."""

    subjects = ["ret"]
    concurrency = 2

    async def handle(self, job):
        return object() if job.payload == "object" else {"nested": [1, {"a": [2.5, None]}]}


async def test_a_result_cbor_cannot_encode_is_reported_as_a_failure(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with trio.open_nursery() as nursery:
        runner, sink = await _runner_with(Returns(), nursery)
        runner._on_assign(_assign(0, "ret", "object"), trio.current_time())
        runner._on_assign(_assign(1, "ret", "nested"), trio.current_time())
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    bad, good = (m for _, m in sink.sent)
    assert (bad.job_id, bad.ok, bad.error_type, bad.final) == (
        "j0",
        False,
        "ResultNotSerializable",
        True,
    )
    assert bad.error_message.startswith("job j0: its result, of type object, has no CBOR encoding")
    assert "cannot encode type <class 'object'>" in bad.error_message and bad.payload is None
    assert (good.job_id, good.ok, good.payload) == ("j1", True, {"nested": [1, {"a": [2.5, None]}]})
    # Both are remembered for redeliveries: running the bad one again would fail the same way.
    assert runner.finished.get("j1", trio.current_time()) is not None
    ok, failure = runner.finished.get("j0", trio.current_time())
    assert (ok, failure.error_type, failure.final) == (False, "ResultNotSerializable", True)
    assert (runner.completed, runner.failed) == (1, 1)


class Scoped(Worker):
    """Uses cancel scopes, a nursery and the current task across its waits."""

    subjects = ["scoped"]
    concurrency = 2

    async def handle(self, job):
        task = trio.lowlevel.current_task()
        with trio.move_on_after(1) as scope:  # opened before the first wait
            await trio.sleep(5)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.sleep, 0.5)
        assert trio.lowlevel.current_task() is task  # still the slot's task
        return (scope.cancelled_caught, trio.current_time())


async def test_a_job_that_waits_keeps_its_scopes_and_task(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # The slot steps the job's coroutine once itself, then lets it go on in the same task:
    # scopes and nurseries the job opened before its first wait work as usual.
    async with trio.open_nursery() as nursery:
        runner, sink = await _runner_with(Scoped(), nursery)
        t0 = trio.current_time()
        runner._on_assign(_assign(0, "scoped", None), t0)
        await sink.wait_sent(1)
        nursery.cancel_scope.cancel()
    ((t, result),) = sink.sent
    assert result.ok, result.error_message
    assert list(result.payload) == [True, t0 + 1.5] and t == t0 + 1.5
