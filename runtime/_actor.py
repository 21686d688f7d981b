"""Actors, and the system object that owns them.

An :class:`Actor` handles one message at a time from its mailbox (see ``_mailbox``: the
bounded channel and the :class:`ActorRef` that sends to it). A restarted actor is a new
instance on the same mailbox; each instance gets its own stop request.

Nothing is global: actors run in an :class:`ActorSystem` opened with
:func:`open_actor_system`, or as children of a ``Supervisor``.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any, ClassVar

import attrs
import trio

from ._errors import ActorCrashed, ActorStopped
from ._mailbox import DEFAULT_MAILBOX_SIZE, ActorRef, _Envelope, _Mailbox

#: Seconds a stopping actor gets to finish its current message and ``stopping`` hook.
DEFAULT_SHUTDOWN_GRACE = 5.0


def check_grace(value: float) -> float:
    """Return ``value`` as a float if it is a valid grace period, else raise ``ValueError``."""
    if not value >= 0:
        raise ValueError(f"shutdown_grace must be >= 0 seconds (math.inf allowed), got {value!r}")
    return float(value)


@attrs.define(eq=False)
class _Lifecycle:
    """The stop request of one actor instance (a restarted instance gets a fresh one)."""

    stop_requested: bool = False
    _stop_event: trio.Event = attrs.field(factory=trio.Event)
    _idle_scope: trio.CancelScope | None = None

    def request_stop(self) -> None:
        self.stop_requested = True
        self._stop_event.set()
        if self._idle_scope is not None:
            self._idle_scope.cancel()  # only interrupts waiting for a message

    async def wait_stop_requested(self) -> None:
        await self._stop_event.wait()

    async def next_envelope(self, mailbox: _Mailbox) -> _Envelope | None:
        """Wait for the next envelope; None if a stop is requested or the mailbox ended."""
        if self.stop_requested:
            return None
        with trio.CancelScope() as scope:
            self._idle_scope = scope
            try:
                return await mailbox.get()
            finally:
                self._idle_scope = None
        return None


@attrs.frozen
class _Binding:
    mailbox: _Mailbox
    lifecycle: _Lifecycle


class Actor:
    """Base class of actors: subclass it and implement :meth:`handle` (or :meth:`run`).

    An instance runs once: it is bound to a mailbox when spawned (by
    :meth:`ActorSystem.spawn` or by a ``Supervisor`` through a ``ChildSpec`` factory,
    which makes a new instance for every restart). Its life is::

        await started()      # spawn() / start returns after this
        await run()          # by default: handle messages one at a time
        await stopping()     # only if run() returned (a graceful stop), not on error or cancel

    A graceful stop (from the owner, or :meth:`request_stop`) lets the message being
    handled finish, then ``run`` returns and ``stopping`` runs; the owner cancels the
    instance if that takes longer than its shutdown grace. An exception raised by
    ``handle`` (or any hook) ends the instance and goes, unchanged, to the supervisor; use
    ``try``/``finally`` in ``run`` for clean-up that must happen whatever the outcome.

    Class attributes:
      mailbox_size: the default mailbox bound for this class.
      shutdown_grace: the default seconds a graceful stop may take before cancellation.
    """

    mailbox_size: ClassVar[int] = DEFAULT_MAILBOX_SIZE
    shutdown_grace: ClassVar[float] = DEFAULT_SHUTDOWN_GRACE

    _binding: _Binding | None = None

    def __repr__(self) -> str:
        name = self._binding.mailbox.name if self._binding else "unspawned"
        return f"<{type(self).__name__} {name!r}>"

    def _bound(self) -> _Binding:
        if self._binding is None:
            raise RuntimeError(f"{type(self).__name__} is not spawned yet")
        return self._binding

    @property
    def name(self) -> str:
        """The actor's name (available from :meth:`started` on)."""
        return self._bound().mailbox.name

    @property
    def ref(self) -> ActorRef:
        """The reference to this actor's mailbox (available from :meth:`started` on)."""
        return self._bound().mailbox.ref

    @property
    def stop_requested(self) -> bool:
        """True once a graceful stop of this instance has been requested."""
        return self._bound().lifecycle.stop_requested

    def request_stop(self) -> None:
        """Stop this instance gracefully: ``run`` returns after the current message.

        To its supervisor this is a normal exit (a ``permanent`` child is restarted, a
        ``transient`` or ``temporary`` one is not).
        """
        self._bound().lifecycle.request_stop()

    async def wait_stop_requested(self) -> None:
        """Wait until a graceful stop is requested (for actors that override :meth:`run`)."""
        await self._bound().lifecycle.wait_stop_requested()

    async def started(self) -> None:
        """Hook: called before the actor takes its first message. Does nothing by default."""

    async def stopping(self) -> None:
        """Hook: called after ``run`` returned on a graceful stop. Does nothing by default.

        It runs within the shutdown grace period; use it to flush or hand work over.
        """

    async def handle(self, message: Any) -> Any:
        """Handle one message; the return value is the reply to an ``ask``.

        Raising crashes the actor: the error goes to its supervisor (an asker gets
        :class:`ActorCrashed`).
        """
        raise NotImplementedError(f"{type(self).__name__} does not handle messages")

    async def run(self) -> None:
        """Handle messages one at a time until a graceful stop is requested.

        Override it to run other tasks beside the mailbox, for example::

            async def run(self):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self.heartbeat)
                    await super().run()
                    nursery.cancel_scope.cancel()
        """
        binding = self._bound()
        while (envelope := await binding.lifecycle.next_envelope(binding.mailbox)) is not None:
            await self._deliver(envelope)

    async def _deliver(self, envelope: _Envelope) -> None:
        reply = envelope.reply
        if reply is None:
            await self.handle(envelope.message)
            return
        try:
            result = await self.handle(envelope.message)
        except Exception as exc:
            reply.fail(ActorCrashed(self.name), exc)
            raise
        except BaseException:  # cancelled mid-request: tell the asker, never swallow
            reply.fail(ActorStopped(self.name))
            raise
        reply.succeed(result)

    def _bind(self, mailbox: _Mailbox, lifecycle: _Lifecycle) -> None:
        if self._binding is not None:
            raise RuntimeError(
                f"{self!r} was spawned already; an Actor instance runs once "
                "(a ChildSpec factory must return a new instance on every call)"
            )
        self._binding = _Binding(mailbox, lifecycle)

    async def _main(self, task_status: trio.TaskStatus[None]) -> None:
        await self.started()
        task_status.started()
        await self.run()
        await self.stopping()


async def run_actor(
    actor: Actor,
    mailbox: _Mailbox,
    lifecycle: _Lifecycle,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run one instance of ``actor`` on ``mailbox`` (for ``nursery.start``); internal."""
    if not isinstance(actor, Actor):
        raise TypeError(f"expected an Actor instance, got {actor!r}")
    actor._bind(mailbox, lifecycle)
    await actor._main(task_status)


@attrs.define(eq=False)
class _Running:
    """A top-level actor of a system."""

    mailbox: _Mailbox
    shutdown_grace: float
    lifecycle: _Lifecycle = attrs.field(factory=_Lifecycle)
    scope: trio.CancelScope = attrs.field(factory=trio.CancelScope)
    done: trio.Event = attrs.field(factory=trio.Event)


@attrs.define(eq=False)
class ActorSystem:
    """Owns a set of top-level actors; made by :func:`open_actor_system`.

    Error handling: the system is a nursery. An actor that raises makes the whole system
    fail (the error leaves the ``async with`` block in an ``ExceptionGroup``, as from any
    trio nursery); to have failures restarted, spawn a ``Supervisor`` and put the actors
    under it.
    """

    name: str
    _nursery: trio.Nursery
    _running: dict[str, _Running] = attrs.field(init=False, factory=dict)  # in spawn order
    _serial: Iterator[int] = attrs.field(init=False, factory=lambda: itertools.count(1))
    _closed: bool = attrs.field(init=False, default=False)

    async def spawn(
        self,
        actor: Actor,
        *,
        name: str | None = None,
        mailbox_size: int | None = None,
        shutdown_grace: float | None = None,
    ) -> ActorRef:
        """Start ``actor`` in this system; return its reference once ``started`` is done.

        Args:
          actor: a fresh actor instance.
          name: unique among this system's actors; by default the class name and a number.
          mailbox_size: the mailbox bound; by default ``actor.mailbox_size``.
          shutdown_grace: seconds a graceful stop may take; by default
            ``actor.shutdown_grace``.

        Raises:
          ValueError: the name is taken, or a bound or grace is invalid.
          ActorStopped: the system is shutting down.
          Exception: whatever the actor's ``started`` hook raised.
        """
        if self._closed:
            raise ActorStopped(self.name)
        if name is None:
            name = f"{type(actor).__name__.lower()}-{next(self._serial)}"
        if name in self._running:
            raise ValueError(f"an actor named {name!r} runs in system {self.name!r} already")
        running = _Running(
            _Mailbox.open(name, actor.mailbox_size if mailbox_size is None else mailbox_size),
            check_grace(actor.shutdown_grace if shutdown_grace is None else shutdown_grace),
        )
        self._running[name] = running
        await self._nursery.start(self._run, actor, running)
        return running.mailbox.ref

    async def _run(
        self, actor: Actor, running: _Running, task_status: trio.TaskStatus[None]
    ) -> None:
        try:
            with running.scope:
                await run_actor(actor, running.mailbox, running.lifecycle, task_status)
        finally:
            running.mailbox.close()
            if self._running.get(running.mailbox.name) is running:
                del self._running[running.mailbox.name]
            running.done.set()

    def lookup(self, name: str) -> ActorRef:
        """Return the reference of the running top-level actor called ``name``.

        Raises:
          KeyError: no such actor runs in this system.
        """
        return self._running[name].mailbox.ref

    async def stop(self, actor: ActorRef | str) -> None:
        """Stop a top-level actor gracefully, cancelling it after its grace period.

        Returns once it has ended; its mailbox is then closed. Stopping an actor that has
        ended already does nothing. (An actor stops itself with :meth:`Actor.request_stop`;
        awaiting this from inside it would wait for its own end.)
        """
        name = actor if isinstance(actor, str) else actor.name
        running = self._running.get(name)
        if running is None:
            return
        running.lifecycle.request_stop()
        running.scope.deadline = min(
            running.scope.deadline, trio.current_time() + running.shutdown_grace
        )
        await running.done.wait()

    async def shutdown(self) -> None:
        """Stop every top-level actor, the last spawned first, and refuse new spawns."""
        self._closed = True
        for name in reversed(list(self._running)):
            await self.stop(name)


@asynccontextmanager
async def open_actor_system(*, name: str = "system") -> AsyncIterator[ActorSystem]:
    """Open an :class:`ActorSystem`; leaving the block stops its actors, newest first.

    Example::

        async with open_actor_system() as system:
            ref = await system.spawn(Counter(), name="counter")
            await ref.tell("increment")
            assert await ref.ask("get", timeout=1) == 1

    If the block raises, or an actor fails, the remaining actors are cancelled (no graceful
    stop) and the error propagates in an ``ExceptionGroup``.
    """
    async with trio.open_nursery() as nursery:
        system = ActorSystem(name, nursery)
        yield system
        await system.shutdown()
