"""Supervision trees: Erlang/OTP semantics, with Akka-style backoff between restarts.

A :class:`Supervisor` is an actor that starts its children in order, watches them, restarts
them according to its :class:`Strategy` and each child's :class:`Restart` type, waits an
exponential :class:`Backoff` before every restart, and gives up (:class:`SupervisorEscalation`)
when restarts come too often, which makes *its* supervisor handle the failure. Children are
described by :class:`ChildSpec`; they are actors (a factory makes a new instance for each
start) or plain async functions. A function child that returns :class:`Recycle` is replaced
at once, outside all of that (no backoff, no intensity, no strategy): it asked for it.
Supervisors nest. See ``docs/supervision.md``.

All changes to the children (start, exit handling, restart, terminate) happen under one
lock, one at a time: the control loop reacts to child exits and due restarts, and
:meth:`Supervisor.start_child` / :meth:`Supervisor.terminate_child` wait their turn.
"""

from __future__ import annotations

import collections
import functools
import inspect
import math
import random
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, ClassVar

import trio

from ._actor import Actor, _Lifecycle, check_grace, run_actor
from ._child import (
    ChildInfo,
    ChildSpec,
    ChildState,
    Recycle,
    Restart,
    Strategy,
    _ChildStatus,
    _is_async_function,
    _run_function,
    _Slot,
)
from ._errors import ActorStopped, SupervisorEscalation
from ._mailbox import ActorRef, _Mailbox


class Supervisor(Actor):
    """An actor that starts, watches, restarts and stops its children.

    Children start in order (each once ready before the next) and stop in reverse order,
    each with its grace period. When a child exits, its :class:`Restart` type decides
    whether it is restarted; if so, the :class:`Strategy` picks which children restart with
    it (the others are stopped, newest first), and all of them start again, in order, after
    the failing child's backoff delay. The mailbox of an actor child survives its restarts:
    its :class:`ActorRef` stays valid and messages sent meanwhile queue up to the bound.
    A function child that returns a :class:`Recycle` is started again at once, alone, and
    that counts as a recycle (:attr:`ChildInfo.recycles`), not as a restart.

    More than ``max_restarts`` restarts within ``within`` seconds, or a child exhausting its
    backoff's ``max_attempts``, makes the supervisor stop all children and raise
    :class:`SupervisorEscalation` (the child's error as ``__cause__``) to its own parent.
    A child that fails to start while the supervisor starts has the same effect.

    A graceful stop of the supervisor stops its children in reverse order; the supervisor's
    own grace defaults to ``math.inf`` (as in OTP), since its children have theirs.

    Its ``started`` hook runs once the initial children are up, and may add more with
    :meth:`start_child`. Its mailbox is served like any actor's: the base class handles no
    messages, a subclass may (and may call :meth:`start_child` from ``handle``).

    Args:
      children: the child specs, in start order.
      strategy: a :class:`Strategy` (or its string).
      max_restarts: restart intensity: restarts allowed within ``within`` seconds (>= 0).
      within: the intensity period in seconds.
      rng: the source of backoff jitter (seed it for reproducible delays).

    Error handling: this is the one place that catches a child's ``Exception`` (including an
    ``ExceptionGroup`` from the child's own nursery), keeps it unchanged as the child's
    ``last_error`` and decides. ``trio.Cancelled`` and other ``BaseException`` s are never
    caught: they tear the supervisor down with its children.
    """

    shutdown_grace: ClassVar[float] = math.inf

    def __init__(
        self,
        children: Iterable[ChildSpec] = (),
        *,
        strategy: Strategy | str = Strategy.ONE_FOR_ONE,
        max_restarts: int = 3,
        within: float = 5.0,
        rng: random.Random | None = None,
    ) -> None:
        if isinstance(max_restarts, bool) or not isinstance(max_restarts, int) or max_restarts < 0:
            raise ValueError(f"max_restarts must be an int >= 0, got {max_restarts!r}")
        if not 0 < within < math.inf:
            raise ValueError(f"within must be a finite number of seconds > 0, got {within!r}")
        self.strategy = Strategy(strategy)
        self.max_restarts = max_restarts
        self.within = float(within)
        self._rng = rng
        self._slots: list[_Slot] = []
        for spec in children:
            self._check_new_name(spec)
            self._slots.append(_Slot(spec))
        self._lock = trio.Lock()
        self._nursery: trio.Nursery | None = None
        self._accepting = False
        self._pending_exits: collections.deque[
            tuple[_Slot, int, Exception | None, Recycle | None]
        ] = collections.deque()  # at most one per running child
        self._restart_times: collections.deque[float] = collections.deque()
        self._wakeup = trio.Event()

    # -- public API ---------------------------------------------------------------------

    def children(self) -> list[ChildInfo]:
        """Return a snapshot of every child, in start order."""
        return [slot.info() for slot in self._slots]

    def child(self, name: str) -> ChildInfo:
        """Return a snapshot of the child called ``name``.

        Raises:
          KeyError: no such child.
        """
        return self._find(name).info()

    async def start_child(self, spec: ChildSpec) -> ActorRef | None:
        """Add a child after the others and start it; return its reference once ready.

        Returns:
          The child's :class:`ActorRef`, or None for an async-function child.

        Raises:
          ValueError: a child with this name exists already.
          ActorStopped: the supervisor is not running.
          Exception: whatever the child raised while starting (it is then not added).
        """
        async with self._lock:
            if not self._accepting:
                raise ActorStopped(self._own_name())
            self._check_new_name(spec)
            slot = _Slot(spec)
            self._slots.append(slot)
            try:
                await self._start_slot(slot)
            except BaseException:  # not added after all; the error goes to the caller
                self._slots.remove(slot)
                self._close(slot)
                raise
        return None if slot.mailbox is None else slot.mailbox.ref

    async def terminate_child(self, name: str) -> None:
        """Stop the child called ``name`` (with its grace period) and remove it.

        Its mailbox is closed: its references raise :class:`ActorStopped` from now on.

        Raises:
          KeyError: no such child.
        """
        async with self._lock:
            slot = self._find(name)
            self._slots.remove(slot)
            try:
                await self._stop_slot(slot)
            finally:
                self._close(slot)

    # -- life of the supervisor ---------------------------------------------------------

    async def _main(self, task_status: trio.TaskStatus[None]) -> None:
        failure: Exception | None = None
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                self._accepting = True
                try:
                    failure = await self._start_initial_children()
                    if failure is None:
                        await self.started()
                        task_status.started()
                        failure = await self._supervise()
                except Exception as exc:  # raised below, bare, once the children are stopped
                    failure = exc
                await self._stop_all()
        finally:
            self._accepting = False
            for slot in self._slots:  # whatever happened, no child runs any more
                self._close(slot)
        if failure is not None:
            raise failure
        await self.stopping()

    async def _start_initial_children(self) -> SupervisorEscalation | None:
        async with self._lock:
            for slot in list(self._slots):
                try:
                    await self._start_slot(slot)
                except Exception as exc:  # the child's failure to start: give up, as OTP
                    slot.last_error = exc
                    return self._escalation(slot, exc, "it failed to start")
        return None

    async def _supervise(self) -> SupervisorEscalation | None:
        async with trio.open_nursery() as helpers:
            helpers.start_soon(self._serve_mailbox)
            helpers.start_soon(self._wake_on_stop_request)
            escalation = await self._control_loop()
            if escalation is not None:  # else: stopping gracefully, run() ends by itself
                helpers.cancel_scope.cancel()
        return escalation

    async def _serve_mailbox(self) -> None:
        await self.run()  # the supervisor's own messages (subclasses may handle some)
        self.request_stop()  # as for any actor: when run() returns, the actor ends

    async def _wake_on_stop_request(self) -> None:
        await self.wait_stop_requested()
        self._wakeup.set()

    async def _control_loop(self) -> SupervisorEscalation | None:
        while True:
            self._wakeup = trio.Event()  # fresh before looking, so no wake-up is missed
            if self.stop_requested:
                return None
            async with self._lock:
                escalation = await self._handle_exits() or await self._restart_due()
            if escalation is not None:
                return escalation
            next_restart = min(
                (s.restart_at for s in self._slots if s.state is ChildState.RESTARTING),
                default=math.inf,
            )
            with trio.move_on_at(next_restart):
                await self._wakeup.wait()

    async def _stop_all(self) -> None:
        self._accepting = False
        async with self._lock:
            for slot in reversed(self._slots):
                await self._stop_slot(slot)
                self._close(slot)

    # -- children -----------------------------------------------------------------------

    async def _start_slot(self, slot: _Slot) -> None:
        """Start a new instance of the slot's child; raises what the child raised."""
        assert self._nursery is not None
        spec = slot.spec
        slot.generation += 1
        slot.state = ChildState.STARTING
        slot.scope = trio.CancelScope()
        slot.done = trio.Event()
        factory = spec.factory
        target: Callable[[trio.TaskStatus[Any]], Awaitable[object]]
        if _is_async_function(factory):  # (spec.is_function, narrowing the factory's type)
            slot.lifecycle = None
            target = functools.partial(_run_function, factory)
        else:
            actor = factory()
            if not isinstance(actor, Actor):
                if inspect.iscoroutine(actor):
                    actor.close()
                raise TypeError(
                    f"the factory of child {spec.name!r} returned {actor!r}, not an Actor "
                    "(an async function child must be given as the function itself)"
                )
            if slot.mailbox is None:
                size = actor.mailbox_size if spec.mailbox_size is None else spec.mailbox_size
                slot.mailbox = _Mailbox.open(spec.name, size)
            grace = actor.shutdown_grace if spec.shutdown_grace is None else spec.shutdown_grace
            slot.shutdown_grace = check_grace(grace)
            slot.lifecycle = _Lifecycle()
            target = functools.partial(run_actor, actor, slot.mailbox, slot.lifecycle)
        await self._nursery.start(self._child_task, slot, slot.generation, target)

    async def _child_task(
        self,
        slot: _Slot,
        generation: int,
        target: Callable[[trio.TaskStatus[Any]], Awaitable[object]],
        task_status: trio.TaskStatus[Any],
    ) -> None:
        status = _ChildStatus(slot, task_status)
        scope, done = slot.scope, slot.done
        error: Exception | None = None
        outcome: object = None
        try:
            with scope:
                outcome = await target(status)
        except Exception as exc:  # the child failed: the supervisor decides what follows
            if not status.ready:
                raise  # failed while starting: nursery.start() raises it to the starter
            error = exc
        finally:
            done.set()
        if slot.state is ChildState.RUNNING and slot.generation == generation:
            recycle = outcome if isinstance(outcome, Recycle) else None
            self._pending_exits.append((slot, generation, error, recycle))
            self._wakeup.set()
        elif error is not None:  # failed while being stopped: keep it for the record
            slot.last_error = error

    async def _handle_exits(self) -> SupervisorEscalation | None:
        while self._pending_exits:
            slot, generation, error, recycle = self._pending_exits.popleft()
            current = slot.generation == generation and slot.state is ChildState.RUNNING
            if current and slot in self._slots:
                if recycle is not None:
                    self._recycle(slot, recycle)
                    continue
                escalation = await self._child_exited(slot, error)
                if escalation is not None:
                    return escalation
        return None

    async def _child_exited(
        self, slot: _Slot, error: Exception | None
    ) -> SupervisorEscalation | None:
        """Apply the restart type, intensity, backoff and strategy to one exit."""
        spec = slot.spec
        now = trio.current_time()
        if error is not None:
            slot.last_error = error
        if spec.restart is Restart.TEMPORARY or (
            spec.restart is Restart.TRANSIENT and error is None
        ):
            self._retire(slot)
            return None
        self._restart_times.append(now)
        while now - self._restart_times[0] >= self.within:
            self._restart_times.popleft()
        if len(self._restart_times) > self.max_restarts:
            return self._escalation(
                slot, error, f"more than {self.max_restarts} restarts within {self.within} s"
            )
        if now - slot.ready_at >= spec.reset_after:
            slot.attempt = 0
        slot.attempt += 1
        if spec.backoff.exhausted(slot.attempt):
            return self._escalation(slot, error, f"{slot.attempt} failed runs in a row")
        delay = spec.backoff.delay(slot.attempt, self._rng)
        group = self._restart_group(slot)
        for sibling in reversed(group):
            if sibling is not slot:
                await self._stop_slot(sibling)
        restart_at = trio.current_time() + delay
        for member in group:
            if member is not slot and member.spec.restart is Restart.TEMPORARY:
                self._retire(member)
            else:
                member.state = ChildState.RESTARTING
                member.restart_at = restart_at
                member.recycling = False  # (a sibling's recycle, if due, is a restart now)
        return None

    def _recycle(self, slot: _Slot, recycle: Recycle) -> None:
        """The child asked to be replaced: start it again at once (see :class:`Recycle`)."""
        if slot.spec.restart is Restart.TEMPORARY:
            self._retire(slot)
            return
        slot.recycles += 1
        slot.last_recycle = recycle.reason
        slot.attempt = 0  # it ran as it should: a later crash starts the backoff over
        slot.recycling = True
        slot.state = ChildState.RESTARTING
        slot.restart_at = trio.current_time()

    def _restart_group(self, slot: _Slot) -> Sequence[_Slot]:
        if self.strategy is Strategy.ONE_FOR_ONE:
            return [slot]
        start = 0 if self.strategy is Strategy.ONE_FOR_ALL else self._slots.index(slot)
        return [s for s in self._slots[start:] if s is slot or s.state is not ChildState.STOPPED]

    async def _restart_due(self) -> SupervisorEscalation | None:
        """Start, in order, the children whose restart time has come."""
        now = trio.current_time()
        for slot in list(self._slots):
            if slot.state is ChildState.RESTARTING and slot.restart_at <= now:
                if slot.recycling:
                    slot.recycling = False
                else:
                    slot.restarts += 1
                try:
                    await self._start_slot(slot)
                except Exception as exc:  # failed to start again: an exit like any other
                    slot.ready_at = trio.current_time()
                    # Return to the loop, which starts the rest in order on its next turn.
                    return await self._child_exited(slot, exc)
        return None

    async def _stop_slot(self, slot: _Slot) -> None:
        """Stop a running child: gracefully within its grace period, then by cancellation."""
        if slot.state is not ChildState.RUNNING or slot.done.is_set():
            return
        slot.state = ChildState.STOPPING
        if slot.lifecycle is None:
            slot.scope.cancel()  # a function child's graceful part is its own clean-up
        else:
            slot.lifecycle.request_stop()
            slot.scope.deadline = min(
                slot.scope.deadline, trio.current_time() + slot.shutdown_grace
            )
        await slot.done.wait()

    def _retire(self, slot: _Slot) -> None:
        """A child that is not restarted: temporary ones leave, others stay as stopped."""
        self._close(slot)
        if slot.spec.restart is Restart.TEMPORARY:
            self._slots.remove(slot)

    def _close(self, slot: _Slot) -> None:
        slot.state = ChildState.STOPPED
        if slot.mailbox is not None:
            slot.mailbox.close()

    def _escalation(
        self, slot: _Slot, error: BaseException | None, reason: str
    ) -> SupervisorEscalation:
        escalation = SupervisorEscalation(self.name, slot.spec.name, reason)
        escalation.__cause__ = error
        return escalation

    def _find(self, name: str) -> _Slot:
        for slot in self._slots:
            if slot.spec.name == name:
                return slot
        raise KeyError(name)

    def _check_new_name(self, spec: ChildSpec) -> None:
        if not isinstance(spec, ChildSpec):
            raise TypeError(f"expected a ChildSpec, got {spec!r}")
        if any(slot.spec.name == spec.name for slot in self._slots):
            raise ValueError(f"a child named {spec.name!r} exists already")

    def _own_name(self) -> str:
        return self.name if self._binding is not None else type(self).__name__
