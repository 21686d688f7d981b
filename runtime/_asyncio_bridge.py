"""Running asyncio coroutines (nats-py) for Trio code, and waking Trio from asyncio.

Two ways to have an asyncio loop beside a Trio run, picked by :func:`open_asyncio_bridge`:

- ``"guest"``: the program was started with :func:`run_trio_guest`, so Trio runs as a guest
  of an asyncio loop (``trio.lowlevel.start_guest_run``) and both share one thread. The
  fastest way across for one crossing per call (nats request/reply at 32 in flight, one
  crossing each: about 0.6x of native asyncio, a thread about 0.45x; see
  ``bench/bench_bridge.py``).
- ``"thread"``: anywhere else (``trio.run``, pytest-trio): a new event loop runs in a daemon
  thread of its own, stopped and joined when the bridge closes.

The bridge never guesses which one applies: :func:`run_trio_guest` sets a
:class:`trio.lowlevel.RunVar` in its first task, and the bridge reads it.

Crossing costs two wakeups per call (one into the asyncio loop, one back into Trio; the
wakeups back are coalesced per burst), so code that makes many calls should cross once per
batch (``asyncio.gather`` inside one :meth:`AsyncioBridge.run`) and let
:meth:`AsyncioBridge.to_trio` coalesce what comes back.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, Final, Generic, TypeVar

import attrs
import outcome
import trio

T = TypeVar("T")

logger = logging.getLogger("runtime.asyncio_bridge")

#: Seconds a closing bridge waits for its asyncio tasks to end once it has cancelled them
#: (and, in thread mode, for its loop's thread to finish).
BRIDGE_CLOSE_TIMEOUT: Final = 5.0

# Set by run_trio_guest in the first task of its Trio run: the asyncio loop Trio is a guest of.
_HOST_LOOP: trio.lowlevel.RunVar[asyncio.AbstractEventLoop | None] = trio.lowlevel.RunVar(
    "runtime.asyncio_bridge.host_loop", default=None
)


@attrs.define(eq=False)
class AsyncioBridge:
    """Runs asyncio coroutines (nats-py) for trio code.

    Built by :func:`open_asyncio_bridge` only. ``loop`` is the asyncio event loop the
    coroutines run on; ``mode`` is ``"guest"`` (Trio runs as a guest of this thread's asyncio
    loop, see :func:`run_trio_guest`) or ``"thread"`` (a loop in a thread of its own).

    The asyncio side runs in a copy of the calling Trio task's context variables, as
    :func:`trio.to_thread.run_sync` does.
    """

    loop: asyncio.AbstractEventLoop
    mode: str
    _token: trio.lowlevel.TrioToken
    # Every asyncio task started through the bridge and not finished yet. Touched on the
    # loop's thread only.
    _tasks: set[asyncio.Future[Any]] = attrs.field(init=False, factory=set)
    _closed: bool = attrs.field(init=False, default=False)
    # Finished calls on their way to their Trio callers, one run_sync_soon per burst.
    _completions: _Coalescer[tuple[_Call[Any], outcome.Outcome[Any]]] = attrs.field(init=False)

    @_completions.default
    def _new_completions(self) -> _Coalescer[tuple[_Call[Any], outcome.Outcome[Any]]]:
        return _Coalescer(self._token, _deliver_all)

    async def run(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run fn(*args) as an asyncio task on self.loop; return its result (or raise its error).

        The result or exception comes back to the calling trio task as is. Cancelling the trio caller cancels the asyncio task (abort at once; the task is
        cancelled on the loop).

        Raises:
          trio.ClosedResourceError: the bridge is closed, or closed while fn was running
            (closing cancels it).
          RuntimeError: the asyncio task was cancelled by someone else on the asyncio side.
          Exception: whatever fn(*args) raised.
        """
        if self._closed:
            raise trio.ClosedResourceError("the asyncio bridge is closed")
        # Already cancelled: raise before anything is sent, so fn is never called.
        await trio.lowlevel.checkpoint_if_cancelled()
        call = _Call(self, fn, args, trio.lowlevel.current_task())
        self.loop.call_soon_threadsafe(call.start)

        def abort(_: Any) -> trio.lowlevel.Abort:
            call.abandoned = True
            try:
                self.loop.call_soon_threadsafe(call.cancel)
            except RuntimeError:
                pass  # the loop is closed: nothing runs there any more
            return trio.lowlevel.Abort.SUCCEEDED

        result: T = await trio.lowlevel.wait_task_rescheduled(abort)
        return result

    def spawn(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        """Start fn(*args) as an asyncio task and do not wait.

        Exceptions are logged with logging, logger ``'runtime.asyncio_bridge'``. Callable
        from trio code. Tasks still running when the bridge closes are cancelled.

        Raises:
          trio.ClosedResourceError: the bridge is closed.
        """
        if self._closed:
            raise trio.ClosedResourceError("the asyncio bridge is closed")
        self.loop.call_soon_threadsafe(self._start_spawned, fn, args)

    def to_trio(self, fn: Callable[[list[T]], None]) -> Callable[[T], None]:
        """A callable for the asyncio side (any thread) that hands items to ``fn`` in trio.

        Each call appends its item; fn(batch) runs soon in trio (via
        ``TrioToken.run_sync_soon``), once for everything appended since the last run
        (coalesced: one crossing per burst, not per item), in the order appended. fn is
        synchronous trio-side code (it may call ``trio.Event.set``, ``send_nowait`` ...).
        Exceptions from fn are logged, not raised. Items appended after the bridge closed
        are dropped.
        """

        def handle(batch: list[T]) -> None:
            if self._closed:
                return
            try:
                fn(batch)
            except Exception:
                logger.exception("to_trio callback %r failed on a batch of %d", fn, len(batch))

        return _Coalescer(self._token, handle, gate=self).append

    # --- the asyncio side (the loop's thread) ---------------------------------------------

    def _track(
        self, fn: Callable[..., Awaitable[Any]], args: tuple[Any, ...]
    ) -> asyncio.Future[Any]:
        task = asyncio.ensure_future(fn(*args), loop=self.loop)
        self._tasks.add(task)
        return task

    def _start_spawned(self, fn: Callable[..., Awaitable[Any]], args: tuple[Any, ...]) -> None:
        try:
            task = self._track(fn, args)
        except Exception:
            logger.exception("could not start %r on the asyncio loop", fn)
            return
        task.add_done_callback(lambda task: self._spawned_done(fn, task))

    def _spawned_done(self, fn: Callable[..., Awaitable[Any]], task: asyncio.Future[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (error := task.exception()) is not None:
            logger.error("asyncio task %r failed", fn, exc_info=error)

    async def _cancel_tasks(self) -> None:
        """Cancel every task the bridge started (but this one) and wait for them, bounded."""
        tasks = self._tasks - {asyncio.current_task()}
        for task in tasks:
            task.cancel()
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=BRIDGE_CLOSE_TIMEOUT)
        if pending:
            logger.warning(
                "%d asyncio task(s) still running %s s after the bridge cancelled them",
                len(pending),
                BRIDGE_CLOSE_TIMEOUT,
            )

    # --- closing (the trio side) ----------------------------------------------------------

    async def _close(self) -> None:
        """Refuse new work, then cancel and await what is still running (bounded)."""
        self._closed = True
        with trio.CancelScope(shield=True):
            # The loop side bounds its wait; this bound is for a loop that does not answer.
            with trio.move_on_after(BRIDGE_CLOSE_TIMEOUT + 1.0):
                call = _Call(
                    self, AsyncioBridge._cancel_tasks, (self,), trio.lowlevel.current_task()
                )
                self.loop.call_soon_threadsafe(call.start)
                await trio.lowlevel.wait_task_rescheduled(call.abort_when_closing)


class _Call(Generic[T]):
    """One :meth:`AsyncioBridge.run`: its asyncio task and the Trio task waiting for it.

    ``start``, ``cancel`` and ``done`` run on the loop's thread, ``deliver`` in Trio;
    ``abandoned`` (the Trio caller was cancelled and has gone on) is set in Trio.
    """

    __slots__ = ("abandoned", "args", "bridge", "fn", "task", "trio_task")

    def __init__(
        self,
        bridge: AsyncioBridge,
        fn: Callable[..., Awaitable[T]],
        args: tuple[Any, ...],
        trio_task: trio.lowlevel.Task,
    ) -> None:
        self.bridge = bridge
        self.fn = fn
        self.args = args
        self.trio_task = trio_task
        self.task: asyncio.Future[T] | None = None
        self.abandoned = False

    def start(self) -> None:
        if self.abandoned:
            return  # cancelled before it started: fn is never called
        try:
            self.task = task = self.bridge._track(self.fn, self.args)
        except Exception as error:  # fn(*args) raised before returning an awaitable
            self._send(outcome.Error(error))
            return
        task.add_done_callback(self.done)

    def cancel(self) -> None:
        if self.task is not None:
            self.task.cancel()

    def done(self, task: asyncio.Future[T]) -> None:
        self.bridge._tasks.discard(task)
        result: outcome.Outcome[T]
        if task.cancelled():
            result = outcome.Error(self._cancelled_error())
        else:
            error = task.exception()  # retrieved even if abandoned: asyncio logs it otherwise
            result = outcome.Error(error) if error is not None else outcome.Value(task.result())
        if not self.abandoned:
            self._send(result)

    def _cancelled_error(self) -> Exception:
        if self.bridge._closed:
            return trio.ClosedResourceError("the asyncio bridge closed while the call ran")
        return RuntimeError(
            f"the asyncio task running {self.fn!r} was cancelled on the asyncio side"
        )

    def _send(self, result: outcome.Outcome[T]) -> None:
        self.bridge._completions.append((self, result))

    def deliver(self, result: outcome.Outcome[T]) -> None:
        # Checked again here, in Trio: the caller may have been cancelled after `done` ran.
        if not self.abandoned:
            trio.lowlevel.reschedule(self.trio_task, result)

    def abort_when_closing(self, _: Any) -> trio.lowlevel.Abort:
        self.abandoned = True
        return trio.lowlevel.Abort.SUCCEEDED


def _deliver_all(completions: list[tuple[_Call[Any], outcome.Outcome[Any]]]) -> None:
    for call, result in completions:
        call.deliver(result)


class _Coalescer(Generic[T]):
    """Items appended from any thread, handed to ``handle`` in Trio in batches.

    One ``run_sync_soon`` per burst of appends, not per item. For the completions of
    :meth:`AsyncioBridge.run` this gave 1.5x to 1.7x the calls/s at 32 in flight against one
    ``run_sync_soon`` per completion, which writes to Trio's wakeup socket each time
    (``bench/bench_bridge.py``, one crossing per nats request, median of 5 interleaved runs
    on a loaded 2-core machine: guest 6.4k -> 11.0k/s, thread 5.6k -> 9.6k/s; crossings
    alone in thread mode 26.6k -> 40.3k/s; guest 31k -> 38k/s).
    With a ``gate``, items appended once the gate's bridge is closed are dropped.
    """

    __slots__ = ("gate", "handle", "items", "lock", "scheduled", "token")

    def __init__(
        self,
        token: trio.lowlevel.TrioToken,
        handle: Callable[[list[T]], None],
        gate: AsyncioBridge | None = None,
    ) -> None:
        self.token = token
        self.handle = handle
        self.gate = gate
        self.items: list[T] = []
        self.scheduled = False  # a flush is queued in Trio and has not taken the items yet
        self.lock = threading.Lock()

    def append(self, item: T) -> None:
        if self.gate is not None and self.gate._closed:
            return
        with self.lock:
            self.items.append(item)
            if self.scheduled:
                return
            self.scheduled = True
        try:
            self.token.run_sync_soon(self.flush)
        except trio.RunFinishedError:
            pass  # the Trio run is over: nobody is left to hand the items to

    def flush(self) -> None:
        with self.lock:
            batch, self.items = self.items, []
            self.scheduled = False
        self.handle(batch)


@asynccontextmanager
async def open_asyncio_bridge() -> AsyncIterator[AsyncioBridge]:
    """Open a bridge from this Trio run to an asyncio event loop.

    Guest mode when this trio run is a guest of an asyncio loop started by
    :func:`run_trio_guest` (detected with a :class:`trio.lowlevel.RunVar` that
    :func:`run_trio_guest` sets in its first task: explicit, not guessed); otherwise a new
    event loop in a daemon thread named ``asyncio-bridge`` (mode ``"thread"``).

    Resource handling: at exit, every task started through the bridge that is still running
    is cancelled and awaited (bounded: at most :data:`BRIDGE_CLOSE_TIMEOUT` s, even when the
    exit is a cancellation); calls still waiting in :meth:`AsyncioBridge.run` raise
    :exc:`trio.ClosedResourceError`. In thread mode the loop is then stopped, the tasks
    others left on it (a nats client's readers) are cancelled as :func:`asyncio.run` does,
    and the thread is joined and the loop closed. In guest mode the loop is
    :func:`run_trio_guest`'s, which cleans it up when the run ends.
    """
    token = trio.lowlevel.current_trio_token()
    host_loop = _HOST_LOOP.get()
    if host_loop is not None:
        bridge = AsyncioBridge(host_loop, "guest", token)
        try:
            yield bridge
        finally:
            await bridge._close()
        return

    loop = asyncio.new_event_loop()
    thread = threading.Thread(
        target=_run_loop_in_thread, args=(loop,), name="asyncio-bridge", daemon=True
    )
    thread.start()
    bridge = AsyncioBridge(loop, "thread", token)
    try:
        yield bridge
    finally:
        await bridge._close()
        loop.call_soon_threadsafe(loop.stop)
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(thread.join, BRIDGE_CLOSE_TIMEOUT)
        if thread.is_alive():
            logger.warning("the asyncio bridge's thread did not finish; left running (daemon)")


def _run_loop_in_thread(loop: asyncio.AbstractEventLoop) -> None:
    """The thread of a thread-mode bridge: run the loop until stopped, then clean it up."""
    asyncio.set_event_loop(loop)
    try:
        loop.run_forever()
        # What others left running (a nats client that was never closed): cancelled and
        # awaited as asyncio.run does, so that closing the loop destroys no pending task.
        leftovers = asyncio.all_tasks(loop)
        for task in leftovers:
            task.cancel()
        if leftovers:
            loop.run_until_complete(asyncio.wait(leftovers, timeout=BRIDGE_CLOSE_TIMEOUT))
        for task in leftovers:
            if task.done() and not task.cancelled() and task.exception() is not None:
                logger.error("asyncio task %r failed", task, exc_info=task.exception())
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.run_until_complete(loop.shutdown_default_executor())
    finally:
        asyncio.set_event_loop(None)
        loop.close()


def run_trio_guest(async_fn: Callable[..., Awaitable[T]], *args: Any) -> T:
    """Like ``trio.run(async_fn, *args)``, with Trio as a guest on a new asyncio event loop.

    The loop is run by :func:`asyncio.run`; an :class:`AsyncioBridge` opened inside the Trio
    run is in guest mode (it shares the loop's thread: the fastest crossing).

    Returns:
      async_fn's result.

    Raises:
      BaseException: what async_fn raised, the original exception (not wrapped).

    KeyboardInterrupt: handled by Trio, as in :func:`trio.run`
    (``restrict_keyboard_interrupt_to_checkpoints=False``): control-C raises
    :exc:`KeyboardInterrupt` in the running Trio task, or in the main task when Trio (or the
    asyncio side) is busy in protected code, and ``run_trio_guest`` raises it when the run
    ends. For that, Trio must own SIGINT: when SIGINT had Python's default handler before the
    call, the handler :func:`asyncio.run` installs (which would cancel its main task, not
    Trio's) is put back to the default just before the guest run starts, so that Trio
    installs its own, as :func:`trio.run` does; Trio restores the default when its run ends.
    A control-C in the instants before Trio starts or after it ends is asyncio's or Python's
    and also ends in :exc:`KeyboardInterrupt`. Outside the main thread, or with a handler of
    your own installed, neither asyncio nor Trio touches SIGINT (as with :func:`trio.run`).
    """
    default_sigint = _sigint_is_default()
    return asyncio.run(_host(async_fn, args, default_sigint))


def _sigint_is_default() -> bool:
    return (
        threading.current_thread() is threading.main_thread()
        and signal.getsignal(signal.SIGINT) is signal.default_int_handler
    )


def _take_sigint_for_trio(default_sigint: bool) -> None:
    """Take back the SIGINT handler asyncio.run installed, so that Trio installs its own."""
    if default_sigint and not _sigint_is_default():
        signal.signal(signal.SIGINT, signal.default_int_handler)


async def _host(
    async_fn: Callable[..., Awaitable[T]], args: tuple[Any, ...], default_sigint: bool
) -> T:
    """asyncio.run's main task: run Trio as a guest and wait for its outcome."""
    loop = asyncio.get_running_loop()
    finished: asyncio.Future[outcome.Outcome[T]] = loop.create_future()

    def done(trio_outcome: outcome.Outcome[T]) -> None:
        if not finished.done():
            finished.set_result(trio_outcome)

    async def first_task() -> T:
        _HOST_LOOP.set(loop)
        return await async_fn(*args)

    _take_sigint_for_trio(default_sigint)
    trio.lowlevel.start_guest_run(
        first_task,
        run_sync_soon_threadsafe=loop.call_soon_threadsafe,
        run_sync_soon_not_threadsafe=loop.call_soon,
        done_callback=done,
    )
    trio_outcome = await finished
    return trio_outcome.unwrap()
