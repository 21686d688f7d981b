"""How a worker calls a job's handler: async or in a thread, stepped by its slot, until
its deadline.

- :func:`handler_of` turns ``Worker.handle`` into an async function: an ``async def`` as it
  is, a plain ``def`` run in a worker thread (blocking code then blocks only its job).
- :func:`stepped` lets a slot task step a handler's coroutine itself (see
  :mod:`actors.worker._runner`): it first sends it ``None`` to see whether the job finishes
  without waiting, then goes on running it in the same task; :func:`awaited` is the
  plain ``await`` beside it (``WorkerRunner(step_jobs=False)``).
- :func:`until_deadline` runs a handler until its job's deadline.
- :func:`must_propagate` tells cancellation (which goes on up) from a handler's failure
  (which fails its job only).
"""

from __future__ import annotations

import inspect
import types
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import trio

from ._failures import DeadlineExceeded

if TYPE_CHECKING:
    from ._job import Job
    from ._worker import Worker

#: The type of a coroutine object (``async def``'s), which a slot may step itself.
CoroutineType = types.CoroutineType


def handler_of(worker: Worker, concurrency: int) -> Callable[[Job], Awaitable[Any]]:
    """``worker.handle`` as an async function: an ``async def`` as it is, a plain ``def``
    run in a worker thread, at most ``concurrency`` at once.

    A cancelled job (the leader's Cancel, its deadline) leaves its thread behind, to end
    when the handler returns (its result is dropped); it keeps its place in the limiter
    until then, so threads never outnumber ``concurrency``.
    """
    handle = worker.handle
    if inspect.iscoroutinefunction(handle) or inspect.iscoroutinefunction(inspect.unwrap(handle)):
        return handle
    limiter = trio.CapacityLimiter(concurrency)

    async def handle_in_thread(job: Job) -> Any:
        value = await trio.to_thread.run_sync(handle, job, limiter=limiter, abandon_on_cancel=True)
        if inspect.isawaitable(value):  # a plain def returning a coroutine (a decorator's)
            value = await value
        return value

    return handle_in_thread


async def until_deadline(job: Job, awaitable: Awaitable[Any]) -> Any:
    """Await the handler's ``awaitable`` until ``job.deadline``.

    Raises:
      DeadlineExceeded: the deadline came first (the handler was cancelled).
    """
    with trio.CancelScope(deadline=job.deadline):  # type: ignore[arg-type]
        return await awaitable
    raise DeadlineExceeded(
        f"job {job.id} ran past its deadline (its submit's timeout): its handler was cancelled"
    )


@types.coroutine
def stepped(coro: Any, before_wait: Callable[[], None]) -> Any:
    """Run the handler's coroutine ``coro`` in the calling task; call ``before_wait()``
    just before it first waits, and not at all if it finishes without waiting.

    A trampoline: ``coro`` is sent ``None`` once here, to see whether it finishes at once;
    if it yields to the event loop instead, what it yielded (trio's trap) is passed up
    and what the loop sends or throws back is passed down, until it returns. So a slot
    learns that a job waits only when it does: a run of jobs that never wait costs
    neither a wake-up of another slot nor a write per job (see :mod:`actors.worker._runner`).

    Why it stays: measured with ``python bench/bench_jobs.py --repeat 5`` (no-op jobs,
    two worker processes, two runs of each on a shared 2-core machine), each worker
    spends 28 and 24 µs of CPU per job with it, 40-43 and 31-32 µs with :func:`awaited`
    (which must wake another slot and write before every job, not knowing whether it
    will wait): 30 to 50 % more. The leader spends less too (77 and 65 µs against 79 and
    78), as the results reach it in fewer frames. That is far more than the few percent a
    trick must pay.
    """
    try:
        trap = coro.send(None)
    except StopIteration as done:
        return done.value
    before_wait()
    return (yield from resume(coro, trap))


@types.coroutine
def resume(coro: Any, trap: Any) -> Any:
    """The trampoline proper: ``coro`` yielded ``trap`` (trio's own, private, objects) to
    the event loop; pass it up, and what the loop sends or throws back down, until ``coro``
    returns. The one place that forwards trio's traps by hand: if trio changed how a task
    waits, this is what would break (the worker tests run with and without it)."""
    while True:
        try:
            sent = yield trap
        except BaseException as exc:
            try:
                trap = coro.throw(exc)
            except StopIteration as done:
                return done.value
        else:
            try:
                trap = coro.send(sent)
            except StopIteration as done:
                return done.value


async def awaited(coro: Awaitable[Any], before_wait: Callable[[], None]) -> Any:
    """The plain way to run a handler's awaitable: ``before_wait()``, then ``await`` it.

    Not knowing whether the job will wait, the slot must assume it will (wake another
    slot, write out the results so far) before every job; :func:`stepped` finds out
    first. Selected by ``WorkerRunner(step_jobs=False)``, for comparison and tests.
    """
    before_wait()
    return await coro


def must_propagate(exc: BaseException) -> bool:
    """Cancellation and Ctrl-C (also inside a group, from a handler's nursery) go on up;
    anything else a handler raises only fails its job."""
    if isinstance(exc, BaseExceptionGroup):
        return exc.subgroup((trio.Cancelled, KeyboardInterrupt)) is not None
    return isinstance(exc, trio.Cancelled | KeyboardInterrupt)
