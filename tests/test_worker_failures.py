"""Failures a worker tells, and failures it does not retry; deadlines it enforces.

- Each failed attempt logs one line (job, subject, worker, attempt, type and message); the
  traceback comes the first time a (subject, type) pair is seen, at debug level after.
- The failed Result carries the traceback (bounded) and ``final`` for the failures the
  leader must not retry: :class:`actors.Reject` (error type ``Rejected``), a type listed in
  the worker's ``never_retry``, a job past its deadline.
- ``job.deadline`` comes from the Assign; past it the handler is cancelled and the job fails
  with ``DeadlineExceeded`` (final); ``job.progress`` does not move it.

The first tests run a runner alone in virtual time (its connection is a list); the ``e2e``
ones run it against a real leader over loopback sockets.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from typing import Any

import pytest
import trio
import trio.testing

from actors import Client, DeadLettered, Job, JobFailed, Leader, Worker
from actors.worker import WorkerRunner
from actors.worker._failures import MAX_ERROR_MESSAGE, MAX_TRACEBACK, Reject
from protocol import Assign, Result
from runtime import Backoff
from tests.test_worker_slots import _Sink

FAST = Backoff(base=0.02, factor=2.0, cap=0.1, jitter=0.0)


class Picky(Worker):
    """Fails by subject: ``picky.value`` (ValueError, never retried), ``picky.key``
    (KeyError, never retried), ``picky.reject`` (Reject), ``picky.flaky`` (RuntimeError,
    retried), ``picky.long`` (a RuntimeError with a long message); counts calls."""

    subjects = ["picky.>"]
    concurrency = 8
    never_retry = (ValueError, KeyError)

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()

    async def handle(self, job: Job) -> Any:
        self.calls[job.id] += 1
        what = job.subject.split(".")[1]
        if what == "value":
            raise ValueError(f"bad value {job.payload!r}")
        if what == "key":
            raise KeyError("no_such_key")
        if what == "reject":
            raise Reject("no such customer")
        if what == "flaky":
            raise RuntimeError(f"flaky, attempt {job.attempt}")
        if what == "long":
            raise RuntimeError("x" * 20_000)
        return "ok"


def _assign(
    i: int,
    subject: str,
    *,
    attempt: int = 1,
    deadline: float | None = None,
    max_attempts: int | None = 3,
) -> Assign:
    return Assign(
        mid=i,
        job_id=f"j{i}",
        subject=subject,
        payload=i,
        attempt=attempt,
        deadline=deadline,
        max_attempts=max_attempts,
    )


def _runner(worker: Worker, nursery: trio.Nursery) -> tuple[WorkerRunner, _Sink]:
    runner = WorkerRunner(worker, "tcp://127.0.0.1:1", name="w")
    sink = _Sink()
    runner._conn = sink  # type: ignore[assignment]
    runner._nursery = nursery
    return runner, sink


def _results(sink: _Sink) -> dict[str, Result]:
    return {m.job_id: m for _, m in sink.sent if isinstance(m, Result)}


def _failure_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.name == "actors.worker" and re.search(r"\) failed(, attempt \d+)?", r.getMessage())
    ]


# --------------------------------------------------------------------------- one runner


async def test_failed_results_say_whether_to_retry_and_carry_the_traceback(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with trio.open_nursery() as nursery:
        runner, sink = _runner(Picky(), nursery)
        for i, subject in enumerate(
            ["picky.value", "picky.key", "picky.reject", "picky.flaky", "picky.ok"]
        ):
            runner._on_assign(_assign(i, subject), trio.current_time())
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    got = _results(sink)
    assert [(got[f"j{i}"].ok, got[f"j{i}"].error_type, got[f"j{i}"].final) for i in range(5)] == [
        (False, "ValueError", True),
        (False, "KeyError", True),
        (False, "Rejected", True),
        (False, "RuntimeError", False),
        (True, None, False),
    ]
    assert got["j2"].error_message == "no such customer" and got["j2"].traceback is None
    for i, line in [(0, "ValueError: bad value 0"), (3, "RuntimeError: flaky, attempt 1")]:
        text = got[f"j{i}"].traceback
        assert text.startswith("Traceback (most recent call last):") and text.endswith(line + "\n")
        assert "in handle" in text and "test_worker_failures.py" in text
    assert got["j4"].traceback is None
    # A final failure is remembered, to answer a redelivery without running again.
    assert runner.finished.get("j0", trio.current_time()) is not None
    assert runner.finished.get("j3", trio.current_time()) is None


async def test_a_long_traceback_is_cut_to_its_last_part(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with trio.open_nursery() as nursery:
        runner, sink = _runner(Picky(), nursery)
        runner._on_assign(_assign(0, "picky.long"), trio.current_time())
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    result = _results(sink)["j0"]
    assert result.error_type == "RuntimeError" and len(result.error_message) == MAX_ERROR_MESSAGE
    assert len(result.traceback) == MAX_TRACEBACK
    assert result.traceback.startswith("... (traceback cut to its last part)\n")
    assert result.traceback.endswith("x" * 1000 + "\n")


async def test_each_failed_attempt_logs_one_line_and_the_traceback_once_per_subject_and_type(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="actors.worker")
    async with trio.open_nursery() as nursery:
        runner, _ = _runner(Picky(), nursery)
        assigns = [
            _assign(0, "picky.flaky", attempt=1),
            _assign(1, "picky.flaky", attempt=2),
            _assign(2, "picky.flaky", attempt=3),
            _assign(3, "picky.value"),  # another subject and type: its traceback too
            _assign(4, "picky.value"),
            _assign(5, "picky.reject"),  # a rejection has no traceback to show
        ]
        for msg in assigns:
            runner._on_assign(msg, trio.current_time())
            await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    lines = _failure_lines(caplog)
    assert [r.getMessage() for r in lines] == [
        "worker w: job j0 (picky.flaky) failed, attempt 1/3: RuntimeError: flaky, attempt 1",
        "worker w: job j1 (picky.flaky) failed, attempt 2/3: RuntimeError: flaky, attempt 2",
        "worker w: job j2 (picky.flaky) failed, attempt 3/3: RuntimeError: flaky, attempt 3",
        "worker w: job j3 (picky.value) failed, attempt 1/3, not retried: ValueError: bad value 3",
        "worker w: job j4 (picky.value) failed, attempt 1/3, not retried: ValueError: bad value 4",
        "worker w: job j5 (picky.reject) failed, attempt 1/3, not retried: Rejected: no such customer",
    ]
    assert all(r.levelno == logging.WARNING for r in lines)
    assert [r.exc_info is not None for r in lines] == [True, False, False, True, False, False]
    # After the first, the traceback is at debug level only.
    debug = [r for r in caplog.records if r.levelno == logging.DEBUG and r.exc_info is not None]
    assert [r.getMessage() for r in debug] == [
        "worker w: job j1: traceback",
        "worker w: job j2: traceback",
        "worker w: job j4: traceback",
    ]


async def test_a_failing_published_message_is_logged(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    from protocol import Deliver

    async with trio.open_nursery() as nursery:
        runner, _ = _runner(Picky(), nursery)
        runner._on_deliver(Deliver(mid=7, sid=1, subject="picky.flaky", payload=None))
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    [line] = _failure_lines(caplog)
    assert (
        line.getMessage()
        == "worker w: message deliver-7 (picky.flaky) failed: RuntimeError: flaky, attempt 1"
    )
    assert runner.failed == 1


@pytest.mark.parametrize(
    ("never_retry", "expected"),
    [(ValueError, (ValueError,)), ([KeyError, OSError], (KeyError, OSError)), ((), ())],
)
def test_never_retry_takes_exception_classes(never_retry: Any, expected: tuple[type, ...]) -> None:
    worker = Picky()
    worker.never_retry = never_retry  # type: ignore[misc]
    assert WorkerRunner(worker, "tcp://127.0.0.1:1").never_retry == expected


@pytest.mark.parametrize("never_retry", ["ValueError", [ValueError, 3], int])
def test_never_retry_refuses_anything_else(never_retry: Any) -> None:
    worker = Picky()
    worker.never_retry = never_retry  # type: ignore[misc]
    with pytest.raises(ValueError, match=r"Picky.never_retry: expected exception classes"):
        WorkerRunner(worker, "tcp://127.0.0.1:1")


# --------------------------------------------------------------------------- deadlines


class Slow(Worker):
    """Reports progress every 0.1 s for ``payload`` seconds; notes its deadline and when it
    was cancelled."""

    subjects = ["slow.>"]
    concurrency = 2

    def __init__(self) -> None:
        self.deadlines: dict[str, float | None] = {}
        self.started: dict[str, float] = {}
        self.cancelled: dict[str, float] = {}
        self.running = trio.Event()
        self.cancel_seen = trio.Event()  # set when a job first sees its cancellation

    async def handle(self, job: Job) -> Any:
        self.deadlines[job.id] = job.deadline
        self.started[job.id] = trio.current_time()
        self.running.set()
        try:
            for _ in range(int(job.payload * 10)):
                await job.progress(note="still here")  # does not move the deadline
                await trio.sleep(0.1)
        except trio.Cancelled:
            self.cancelled[job.id] = trio.current_time()
            self.cancel_seen.set()
            raise
        return "done"


async def test_the_handler_is_cancelled_at_its_deadline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    worker = Slow()
    async with trio.open_nursery() as nursery:
        runner, sink = _runner(worker, nursery)
        runner._on_assign(
            Assign(mid=1, job_id="late", subject="slow.x", payload=15, deadline=0.5), 0.0
        )
        runner._on_assign(Assign(mid=2, job_id="free", subject="slow.x", payload=1), 0.0)
        await trio.sleep(20)
        nursery.cancel_scope.cancel()
    assert worker.deadlines == {"late": 0.5, "free": None}
    assert worker.cancelled == {"late": 0.5}  # exactly at its deadline, progress or not
    got = _results(sink)
    assert (got["late"].ok, got["late"].error_type, got["late"].final) == (
        False,
        "DeadlineExceeded",
        True,
    )
    assert "ran past its deadline" in got["late"].error_message
    assert (got["free"].ok, got["free"].payload) == (True, "done")
    assert [t for t, m in sink.sent if isinstance(m, Result) and m.job_id == "late"] == [0.5]


async def test_a_deadline_already_past_cancels_at_the_first_wait(
    autojump_clock: trio.testing.MockClock,
) -> None:
    worker = Slow()
    async with trio.open_nursery() as nursery:
        runner, sink = _runner(worker, nursery)
        await trio.sleep(1)
        runner._on_assign(
            Assign(mid=1, job_id="j", subject="slow.x", payload=1, deadline=0.0),
            trio.current_time(),
        )
        await trio.sleep(5)
        nursery.cancel_scope.cancel()
    assert worker.cancelled == {"j": 1.0}
    assert _results(sink)["j"].error_type == "DeadlineExceeded"


# --------------------------------------------------------------------------- with a leader


async def _serve(
    nursery: trio.Nursery, worker: Worker, **leader_kw: Any
) -> tuple[Leader, str, WorkerRunner]:
    leader = Leader(listen=["tcp://127.0.0.1:0"], retry_backoff=FAST, **leader_kw)
    [url] = await nursery.start(leader.run)
    runner = WorkerRunner(worker, url, name="w")
    await nursery.start(runner.run)
    return leader, url, runner


@pytest.mark.e2e
async def test_a_never_retried_exception_fails_the_job_at_once_with_its_traceback() -> None:
    worker = Picky()
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            leader, url, _ = await _serve(nursery, worker, max_attempts=5)
            async with Client.connect(url) as client:
                with pytest.raises(JobFailed) as info:
                    await client.submit("picky.value", 7, job_id="v1", timeout=10)
                with pytest.raises(JobFailed) as rejected:
                    await client.submit("picky.reject", 7, job_id="r1", timeout=10)
            stored = leader.broker.finished.get("v1", trio.current_time())
            nursery.cancel_scope.cancel()
    # Not retried: failed at the first attempt. (The client still calls a failed QoS 1
    # job DeadLettered; a final failure is not one, once the leader forwards ``final``.)
    assert (info.value.error_type, info.value.attempts) == ("ValueError", 1)
    assert worker.calls["v1"] == 1
    assert (rejected.value.error_type, rejected.value.message, rejected.value.attempts) == (
        "Rejected", "no such customer", 1,
    )  # fmt: skip
    assert worker.calls["r1"] == 1
    # The leader has the worker's traceback, for the client and the dead letters.
    assert (
        stored.traceback.endswith("ValueError: bad value 7\n") and "in handle" in stored.traceback
    )
    if hasattr(info.value, "traceback"):  # (the client's side of it)
        assert info.value.traceback == stored.traceback


@pytest.mark.e2e
async def test_other_exceptions_are_retried_and_dead_lettered_with_their_traceback() -> None:
    worker = Picky()
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            _, url, _ = await _serve(nursery, worker, max_attempts=3)
            async with Client.connect(url) as client, client.subscribe("$dlq.>") as dlq:
                with pytest.raises(DeadLettered) as info:
                    await client.submit("picky.flaky", None, job_id="f1", timeout=10)
                letter = await dlq.receive()
            nursery.cancel_scope.cancel()
    assert (info.value.error_type, info.value.attempts) == ("RuntimeError", 3)
    assert worker.calls["f1"] == 3
    assert letter.payload["traceback"].endswith("RuntimeError: flaky, attempt 3\n")


@pytest.mark.e2e
async def test_a_submit_timeout_cancels_the_handler_at_its_deadline() -> None:
    from actors import ClientError

    worker = Slow()
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            leader, url, _ = await _serve(nursery, worker)
            async with Client.connect(url) as client:
                sent = trio.current_time()
                with pytest.raises(ClientError):
                    await client.submit("slow.x", 15, job_id="s1", timeout=0.5)
                with trio.fail_after(3):
                    await worker.cancel_seen.wait()
                assert list(worker.cancelled) == ["s1"]
            nursery.cancel_scope.cancel()
    deadline = worker.deadlines["s1"]
    assert deadline is not None and sent + 0.4 < deadline < sent + 0.6  # (+ the way there)
    assert deadline <= worker.cancelled["s1"] < deadline + 0.5
    assert leader.stats()["subjects"]["slow.x"]["redelivered"] == 0
