"""The slot's two ways of running a job's coroutine give the same outcomes.

A slot steps a handler's coroutine itself (:func:`actors.worker._handlers.stepped`, the
default), to learn whether a job waits before it wakes another slot and writes out the
results; :func:`~actors.worker._handlers.awaited` is the plain ``await`` beside it
(``WorkerRunner(step_jobs=False)``, or :data:`actors.worker._runner.STEP_JOBS`). The worker
tests imported here (slots, deadlines, cancellation, failures) run with each; the last
test shows what stepping saves, so that it cannot pass with the flag ignored.
"""

from __future__ import annotations

import pytest
import trio
import trio.testing

import actors.worker._runner as runner_module
from actors.worker import WorkerRunner
from actors.worker._handlers import awaited, stepped
from protocol import Result

from .test_job_api import (
    test_cancelling_a_running_job_stops_it_and_raises_job_cancelled as test_cancel_e2e,
)
from .test_worker_containment import (
    test_anything_a_handler_raises_fails_only_its_job as test_raises,
)
from .test_worker_failures import (
    test_a_deadline_already_past_cancels_at_the_first_wait as test_past_deadline,
)
from .test_worker_failures import test_the_handler_is_cancelled_at_its_deadline as test_deadline
from .test_worker_slots import Instant, _assign, _runner_with
from .test_worker_slots import test_a_job_that_waits_keeps_its_scopes_and_task as test_scopes
from .test_worker_slots import (
    test_a_job_that_waits_then_fails_or_is_cancelled_is_reported as test_wait_then_fail,
)
from .test_worker_slots import test_jobs_arriving_while_slots_run_are_picked_up as test_arrivals
from .test_worker_slots import (
    test_waiting_jobs_run_side_by_side_up_to_concurrency as test_side_by_side,
)

__all__ = [
    "test_arrivals", "test_cancel_e2e", "test_deadline", "test_past_deadline",
    "test_raises", "test_scopes", "test_side_by_side", "test_wait_then_fail",
]  # fmt: skip


@pytest.fixture(autouse=True, params=[True, False], ids=["stepped", "awaited"])
def step_jobs(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool:
    """Every test of this module runs once with each way (the runners it builds take the
    module's default)."""
    monkeypatch.setattr(runner_module, "STEP_JOBS", request.param)
    return request.param


def test_the_flag_and_the_option_select_the_function(step_jobs: bool) -> None:
    runner = WorkerRunner(Instant(), "tcp://127.0.0.1:1", name="w")
    assert runner._run_job is (stepped if step_jobs else awaited)
    assert (
        WorkerRunner(Instant(), "tcp://127.0.0.1:1", name="w", step_jobs=False)._run_job is awaited
    )
    assert (
        WorkerRunner(Instant(), "tcp://127.0.0.1:1", name="w", step_jobs=True)._run_job is stepped
    )


async def test_only_the_stepped_slot_knows_a_job_will_not_wait(
    step_jobs: bool, autojump_clock: trio.testing.MockClock
) -> None:
    """Eight jobs that never wait, in one batch: stepped, one slot runs them all and their
    results go out in one write; awaited, each job wakes another slot (unless one is on
    its way) and writes what finished before it."""
    async with trio.open_nursery() as nursery:
        runner, sink = await _runner_with(Instant(), nursery)
        for i in range(8):
            runner._on_assign(_assign(i, "instant", i), trio.current_time())
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    assert {m.job_id: m.payload for _, m in sink.sent if type(m) is Result} == {
        f"j{i}": 2 * i for i in range(8)
    }
    if step_jobs:
        assert (runner._slots, sink.flushes) == (1, 1)
    else:
        # (a second slot woken for the first job; it finds the queue empty when it runs)
        assert (runner._slots, sink.flushes) == (2, 8)
