"""The children of a supervisor: how they are described, their state, and how one runs.

A child is described by a :class:`ChildSpec`: an actor (a factory makes a new instance for
each start) or a plain async function (:func:`process_child` makes one that runs an OS
process). Its :class:`Restart` type says whether it is restarted, the supervisor's
:class:`Strategy` which children restart with it, and its :class:`Backoff` how long to wait
first. A function child that returns :class:`Recycle` asks to be replaced at once (a
planned replacement, not a failure). :class:`ChildInfo` is a snapshot of one child, in a
:class:`ChildState`. The ``Supervisor`` that acts on all this is in ``_supervisor``.
"""

from __future__ import annotations

import enum
import inspect
import math
import subprocess
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeGuard

import attrs
import trio

from ._actor import Actor, _Lifecycle, check_grace
from ._backoff import Backoff
from ._mailbox import ActorRef, _Mailbox, check_mailbox_size

#: Restart backoff of a child unless its spec says otherwise: 0.1, 0.2, 0.4 ... 10 s.
DEFAULT_RESTART_BACKOFF = Backoff(base=0.1, factor=2.0, cap=10.0)


class Strategy(enum.StrEnum):
    """Which children a supervisor restarts when one of them must be restarted."""

    ONE_FOR_ONE = "one_for_one"  #: only the child that exited
    ONE_FOR_ALL = "one_for_all"  #: all children: the others are stopped first, newest first
    REST_FOR_ONE = "rest_for_one"  #: the child and those started after it


class Restart(enum.StrEnum):
    """When a child that exited is restarted."""

    PERMANENT = "permanent"  #: always
    TRANSIENT = "transient"  #: only after an error (a normal return ends it)
    TEMPORARY = "temporary"  #: never; it is removed from the supervisor when it exits


class ChildState(enum.StrEnum):
    """Where a child is in its life, as reported by :meth:`Supervisor.children`."""

    STARTING = "starting"
    RUNNING = "running"
    RESTARTING = "restarting"  #: waiting for its backoff delay
    STOPPING = "stopping"  #: being stopped by the supervisor (grace period running)
    STOPPED = "stopped"  #: not running and not to be restarted (its mailbox is closed)


@attrs.frozen
class Recycle:
    """What a function child returns to be replaced by a fresh instance at once.

    A worker process past its memory or job limit, say: it finished its work cleanly and
    wants a successor. Unlike an exit, a recycle waits for no backoff, does not count
    toward the supervisor's restart intensity, and restarts only this child whatever the
    strategy (its siblings did nothing wrong). A ``temporary`` child is not replaced.

    Attributes:
      reason: why, in words (for logs and :attr:`ChildInfo.last_recycle`).
    """

    reason: str = ""


def _is_async_function(factory: object) -> TypeGuard[Callable[..., Awaitable[object]]]:
    return inspect.iscoroutinefunction(factory) or inspect.iscoroutinefunction(
        getattr(factory, "__call__", None)  # noqa: B004 - an object with an async __call__
    )


def _accepts_task_status(function: Callable[..., Any]) -> bool:
    try:
        return "task_status" in inspect.signature(function).parameters
    except (TypeError, ValueError):  # no signature to read: assume the plain form
        return False


def _check_name(instance: object, attribute: attrs.Attribute[str], value: str) -> None:
    if not isinstance(value, str) or not value:
        raise ValueError(f"a child needs a non-empty str name, got {value!r}")


def _check_callable(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not callable(value):
        raise TypeError(f"factory must be callable, got {value!r}")


def _check_reset_after(instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not value >= 0:
        raise ValueError(f"reset_after must be >= 0 seconds, got {value!r}")


@attrs.frozen
class ChildSpec:
    """How a supervisor starts, restarts and stops one child.

    Args:
      name: unique among the supervisor's children; also the name of the child's actor.
      factory: either a callable returning a *new* :class:`Actor` at each call (an Actor
        class will do), or an async function to run, ``async def child()`` or
        ``async def child(task_status=trio.TASK_STATUS_IGNORED)``. An async function that
        takes ``task_status`` counts as started when it calls ``task_status.started()``;
        one that does not counts as started at once. Its normal return is a normal exit,
        unless it returns a :class:`Recycle`.
      restart: a :class:`Restart` type (or its string).
      shutdown_grace: seconds an actor child may take to stop gracefully (finish its message
        and ``stopping`` hook) before it is cancelled; ``None`` takes the actor class's
        ``shutdown_grace`` (``math.inf`` for supervisors). An async-function child is
        cancelled at once: its graceful part is its own clean-up (see :func:`process_child`).
      backoff: delays between consecutive restarts of this child; its ``max_attempts``
        (runs in a row that failed) makes the supervisor give up.
      reset_after: a run this long (seconds, from started to exit) resets the backoff.
      mailbox_size: the mailbox bound of an actor child; ``None`` takes the class's.
    """

    name: str = attrs.field(validator=_check_name)
    factory: Callable[[], Actor] | Callable[..., Awaitable[object]] = attrs.field(
        validator=_check_callable
    )
    restart: Restart = attrs.field(default=Restart.PERMANENT, converter=Restart)
    shutdown_grace: float | None = attrs.field(
        default=None, converter=attrs.converters.optional(check_grace)
    )
    backoff: Backoff = attrs.field(
        default=DEFAULT_RESTART_BACKOFF, validator=attrs.validators.instance_of(Backoff)
    )
    reset_after: float = attrs.field(default=10.0, converter=float, validator=_check_reset_after)
    mailbox_size: int | None = attrs.field(
        default=None, converter=attrs.converters.optional(check_mailbox_size)
    )

    def __attrs_post_init__(self) -> None:
        if self.is_function and self.mailbox_size is not None:
            raise ValueError(f"child {self.name!r} is an async function: it has no mailbox")

    @property
    def is_function(self) -> bool:
        """True if the child is an async function rather than an actor."""
        return _is_async_function(self.factory)


@attrs.frozen
class ChildInfo:
    """A snapshot of one child, for statistics and tests.

    Attributes:
      name: the child's name.
      state: a :class:`ChildState`.
      restart: its :class:`Restart` type.
      restarts: how many times it was started again after it exited (recycles apart).
      attempt: failed runs in a row (what the backoff counts); reset by a healthy run.
      last_error: the last error it exited with (original traceback), or None.
      ref: the reference to an actor child (the same across restarts), None for a
        function child.
      recycles: how many times it was replaced at its own request (:class:`Recycle`).
      last_recycle: the reason of the last of those, or None.
    """

    name: str
    state: ChildState
    restart: Restart
    restarts: int
    attempt: int
    last_error: BaseException | None
    ref: ActorRef | None
    recycles: int = 0
    last_recycle: str | None = None


@attrs.define(eq=False)
class _Slot:
    """One child's place in the supervisor; outlives the child's instances."""

    spec: ChildSpec
    state: ChildState = ChildState.STOPPED
    generation: int = 0  # numbers the instances, so a stale exit is recognised
    mailbox: _Mailbox | None = None  # made at the first start, kept across restarts
    lifecycle: _Lifecycle | None = None  # of the current actor instance
    shutdown_grace: float = 0.0
    scope: trio.CancelScope = attrs.field(factory=trio.CancelScope)
    done: trio.Event = attrs.field(factory=trio.Event)
    ready_at: float = 0.0
    restart_at: float = math.inf
    attempt: int = 0
    restarts: int = 0
    last_error: BaseException | None = None
    recycles: int = 0
    last_recycle: str | None = None
    recycling: bool = False  # its restart is due to a Recycle (not counted in restarts)

    def info(self) -> ChildInfo:
        return ChildInfo(
            name=self.spec.name,
            state=self.state,
            restart=self.spec.restart,
            restarts=self.restarts,
            attempt=self.attempt,
            last_error=self.last_error,
            ref=None if self.mailbox is None else self.mailbox.ref,
            recycles=self.recycles,
            last_recycle=self.last_recycle,
        )


@attrs.define(eq=False)
class _ChildStatus:
    """The task_status a child sees: marks the slot running the moment it is ready."""

    slot: _Slot
    outer: trio.TaskStatus[Any]
    ready: bool = False

    def started(self, value: Any = None) -> None:
        self.ready = True
        self.slot.state = ChildState.RUNNING
        self.slot.ready_at = trio.current_time()
        self.outer.started(value)


async def _run_function(
    function: Callable[..., Awaitable[object]], task_status: trio.TaskStatus[Any]
) -> object:
    if _accepts_task_status(function):
        return await function(task_status=task_status)
    task_status.started()
    return await function()


def process_child(
    command: str | Sequence[str],
    *,
    grace: float = 5.0,
    check: bool = True,
    recycle_status: int | None = None,
    **options: Any,
) -> Callable[..., Awaitable[Recycle | None]]:
    """Return an async-function child that runs ``command`` as an OS process.

    The child counts as started once the process is spawned. It exits when the process
    does: normally on exit code 0, with ``subprocess.CalledProcessError`` otherwise (if
    ``check``), so a ``permanent`` spec keeps the process running and a ``transient`` one
    restarts it only after a failure. When the supervisor stops the child, the process gets
    SIGTERM, then SIGKILL if it is still alive after ``grace`` seconds.

    Args:
      command: the program and its arguments, as for :func:`trio.run_process`.
      grace: seconds between SIGTERM and SIGKILL.
      check: raise on a non-zero exit code.
      recycle_status: an exit code by which the process asks to be replaced: the child
        then returns a :class:`Recycle` (restarted at once, see there) instead of failing.
      **options: further keyword arguments of :func:`trio.run_process` (``env``, ``cwd``,
        ``stdin``, ``capture_stdout``...).
    """
    check_grace(grace)

    async def terminate_then_kill(process: trio.Process) -> None:
        process.terminate()
        with trio.move_on_after(grace):
            await process.wait()
            return
        process.kill()

    async def run_command(
        task_status: trio.TaskStatus[trio.Process] = trio.TASK_STATUS_IGNORED,
    ) -> Recycle | None:
        process = await trio.run_process(
            command,
            check=check and recycle_status is None,
            deliver_cancel=terminate_then_kill,
            task_status=task_status,
            **options,
        )
        status = process.returncode
        if recycle_status is not None and status == recycle_status:
            return Recycle(f"exited with status {status} (recycle)")
        if check and status:
            raise subprocess.CalledProcessError(
                status, process.args, process.stdout, process.stderr
            )
        return None

    return run_command
