"""WorkerGroup: keep N instances of a worker running, each in its own OS process by default.

Python runs one thread of bytecode at a time, so a group uses processes to put several
cores to work: instance ``i`` of group ``square`` is ``python -m actors.worker --name
square-i --group square ... module:Class``. The instances are the permanent children of a
one-for-one :class:`runtime.Supervisor`: one that exits or is killed is started again after
a backoff delay (growing while it keeps failing, reset once it ran :data:`STABLE_AFTER`
seconds). :meth:`WorkerGroup.scale` adds and removes children at runtime. With
``in_process=True`` the instances are :func:`~actors.run_worker` tasks in the caller's trio
loop, under the same supervisor.

Stopping an instance drains it: a process gets SIGTERM (its worker finishes the jobs in
hand, says Bye and exits 0) and SIGKILL if it still runs ``stop_timeout`` seconds later;
an in-process worker gets its ``stop`` event and is cancelled after ``stop_timeout``.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import attrs
import trio

from protocol import is_valid_pattern
from runtime import (
    Backoff,
    ChildSpec,
    ChildState,
    Restart,
    Strategy,
    Supervisor,
    open_actor_system,
    process_child,
)

from ._links import MODES, POLICIES
from ._loader import load_worker_class, worker_spec

#: An instance that ran this long before it exited is restarted after the first backoff
#: delay again, instead of the next (longer) one.
STABLE_AFTER = 10.0
#: Seconds a stopping instance gets on top of its drain grace before it is killed.
STOP_MARGIN = 5.0
#: The default restart backoff: 0.1 s, doubling, at most 5 s, with 10 % jitter.
DEFAULT_RESTART_BACKOFF = Backoff(base=0.1, factor=2.0, cap=5.0, jitter=0.1)

logger = logging.getLogger("actors.group")


@attrs.frozen
class InstanceInfo:
    """A snapshot of one instance, for tests, stats and the CLI.

    Attributes:
      index: its number in the group (its name is ``<group>-<index>``).
      name: the worker name it connects with.
      state: its supervisor's view (:class:`runtime.ChildState`).
      pid: the id of its process while it runs (in process: this process's id).
      restarts: how many times it was started again after exiting.
      last_exit: the exit status of its last process (negative: killed by that signal);
        None if none exited yet, and always None in process.
      last_error: the last error it exited with, as its supervisor recorded it.
    """

    index: int
    name: str
    state: ChildState
    pid: int | None
    restarts: int
    last_exit: int | None
    last_error: BaseException | None


@attrs.define(eq=False)
class _Instance:
    """What the group knows of an instance beyond its supervisor's view."""

    index: int
    name: str
    pid: int | None = None
    last_exit: int | None = None
    connected: bool = False  # in process: run_worker was welcomed, so it can drain
    drain: Callable[[], None] | None = None  # asks the running process or task to drain


@attrs.define(eq=False)
class _ProcessStatus:
    """The task_status handed to :func:`runtime.process_child`: records the pid."""

    group: WorkerGroup
    instance: _Instance
    outer: Any
    process: trio.Process | None = None

    def started(self, process: trio.Process) -> None:
        self.process = process
        self.instance.pid = process.pid
        self.instance.drain = partial(process.send_signal, signal.SIGTERM)
        self.group._notify()
        self.outer.started()


@attrs.define(eq=False)
class _Connected:
    """The task_status handed to an in-process run_worker: notes the first Welcome."""

    group: WorkerGroup
    instance: _Instance

    def started(self, value: object = None) -> None:
        self.instance.connected = True
        self.group._notify()


class WorkerGroup:
    """Keeps ``instances`` copies of a worker connected to a leader.

    Args:
      name: the group's name; instances are named ``<name>-0``, ``<name>-1``, ...
      worker: the worker class, or its ``"module:Class"`` name.
      instances: how many to keep running (0 allowed; see :meth:`scale`).
      url: the leader to connect to.
      mode: ``round_robin`` (each job to one instance) or ``broadcast``.
      policy: ``round_robin``, ``least_loaded`` or ``sticky``: how the leader picks an
        instance for a job.
      subjects: patterns overriding the class's ``subjects``.
      concurrency: overrides the class's ``concurrency``.
      in_process: run the instances as tasks in this trio loop instead of processes.
      restart_backoff: delays between restarts of an instance that keeps exiting.
      drain_grace: seconds a stopping worker has to finish the jobs it holds.
      stop_timeout: seconds after which a stopping instance is killed (default
        ``drain_grace`` + :data:`STOP_MARGIN`).
      max_restarts: with ``within``, the supervisor's restart intensity: more restarts
        than this within ``within`` seconds make :meth:`run` fail with
        :class:`runtime.SupervisorEscalation`. None (the default) never gives up.
      within: the intensity period, in seconds.
      python: the interpreter that runs instance processes.

    Raises:
      ValueError: a bad name, count, mode, policy, subject pattern or concurrency.
      ConfigError: ``worker`` is a class that other processes cannot import (defined in
        ``__main__`` or in a function) and ``in_process`` is false.

    Resource handling: everything runs inside :meth:`run`. Cancelling ``run`` stops every
    instance gracefully (SIGTERM, drain, SIGKILL after ``stop_timeout``) before it returns,
    so no process outlives the group; instance processes also drain and exit if this
    process dies without stopping them.
    """

    def __init__(
        self,
        name: str,
        worker: str | type,
        instances: int,
        url: str,
        *,
        mode: str = "round_robin",
        policy: str = "round_robin",
        subjects: Sequence[str] | None = None,
        concurrency: int | None = None,
        in_process: bool = False,
        restart_backoff: Backoff | None = None,
        drain_grace: float = 30.0,
        stop_timeout: float | None = None,
        max_restarts: int | None = None,
        within: float = 60.0,
        python: str = sys.executable,
    ) -> None:
        if not name or not all(ch.isalnum() or ch in "_-" for ch in name):
            raise ValueError(f"group name {name!r}: use letters, digits, '_' and '-' only")
        _check_count(instances)
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; choose from {sorted(MODES)}")
        if policy not in POLICIES:
            raise ValueError(f"unknown policy {policy!r}; choose from {sorted(POLICIES)}")
        if subjects is not None:
            subjects = list(subjects)
            if not subjects or not all(is_valid_pattern(p) for p in subjects):
                raise ValueError(f"group {name!r}: invalid subject patterns {subjects!r}")
        if concurrency is not None and (type(concurrency) is not int or concurrency < 1):
            raise ValueError(f"concurrency must be a positive int, got {concurrency!r}")
        if not drain_grace >= 0:
            raise ValueError(f"drain_grace must be >= 0, got {drain_grace!r}")
        self.name = name
        self.url = url
        self.mode = mode
        self.policy = policy
        self.subjects = subjects
        self.concurrency = concurrency
        self.in_process = in_process
        self.restart_backoff = restart_backoff or DEFAULT_RESTART_BACKOFF
        self.drain_grace = drain_grace
        self.stop_timeout = drain_grace + STOP_MARGIN if stop_timeout is None else stop_timeout
        self.python = python
        self._worker_class: type | None
        if isinstance(worker, str):
            self.worker_spec = worker
            self._worker_class = None
        else:
            self._worker_class = worker
            self.worker_spec = (
                f"{worker.__module__}:{worker.__qualname__}" if in_process else worker_spec(worker)
            )
        self._desired = instances
        self._instances: dict[int, _Instance] = {}
        # Escalation is for trees that should give up; a group keeps its count unless told.
        self.max_restarts = sys.maxsize if max_restarts is None else max_restarts
        self.within = within
        self._supervisor: Supervisor | None = None  # one per run (an actor runs once)
        self._changed = trio.Event()
        self._scaling = trio.Lock()

    # ------------------------------------------------------------------ public view

    @property
    def desired(self) -> int:
        """How many instances the group keeps running."""
        return self._desired

    def states(self) -> list[InstanceInfo]:
        """A snapshot of every instance, by index."""
        if self._supervisor is None:
            return []
        children = {child.name: child for child in self._supervisor.children()}
        infos = []
        for index in sorted(self._instances):
            inst = self._instances[index]
            child = children.get(inst.name)
            if child is None:  # being added or removed right now
                continue
            infos.append(
                InstanceInfo(
                    index, inst.name, child.state, inst.pid, child.restarts, inst.last_exit,
                    child.last_error,
                )
            )
        return infos

    def pids(self) -> list[int]:
        """The process ids of the instances that have a running process, by index."""
        return [
            self._instances[i].pid  # type: ignore[misc]
            for i in sorted(self._instances)
            if self._instances[i].pid is not None
        ]

    async def wait_until(self, predicate: Callable[[WorkerGroup], bool]) -> None:
        """Wait until ``predicate(group)`` holds; it is checked after every pid change."""
        while not predicate(self):
            await self._changed.wait()

    def describe(self) -> str:
        """One line for the CLI: what runs, how many, how."""
        where = "in process" if self.in_process else "processes"
        text = (
            f"group {self.name}: {self._desired} x {self.worker_spec} "
            f"({where}, mode {self.mode}, policy {self.policy}"
        )
        if self.subjects is not None:
            text += f", subjects {','.join(self.subjects)}"
        return text + ")"

    # ------------------------------------------------------------------ lifecycle

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Start the instances and keep them running until cancelled.

        ``task_status.started()`` is called once every instance has started (its process
        is spawned, or its task runs; not necessarily connected yet). Cancelling ``run``
        stops the instances gracefully before it returns.

        Raises:
          ConfigError: in process, the worker class does not load.
          OSError: the first process of an instance could not be started (a bad
            ``python``, say); later failures to start are restarted like exits.
          runtime.SupervisorEscalation: restarts exceeded ``max_restarts`` within
            ``within``.
        """
        if self._supervisor is not None:
            raise RuntimeError(f"group {self.name!r} is running already")
        if self.in_process and self._worker_class is None:
            self._worker_class = load_worker_class(self.worker_spec)
        self._supervisor = Supervisor(
            strategy=Strategy.ONE_FOR_ONE, max_restarts=self.max_restarts, within=self.within
        )
        try:
            async with open_actor_system(name=f"group-{self.name}") as system:
                await system.spawn(self._supervisor, name=f"group-{self.name}")
                async with self._scaling:
                    for index in range(self._desired):
                        await self._start_instance(index)
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._supervisor = None
            self._instances.clear()

    async def scale(self, instances: int) -> None:
        """Change the number of instances; returns when the change is made.

        New instances have started (spawned) and removed ones (the highest indices) have
        drained and exited when it returns. Calls are taken one at a time.

        Raises:
          ValueError: ``instances`` is negative.
          RuntimeError: the group is not running.
        """
        _check_count(instances)
        async with self._scaling:
            if self._supervisor is None:
                raise RuntimeError(f"group {self.name!r} is not running")
            self._desired = instances
            current = sorted(self._instances)
            # The supervisor stops children one at a time; asking them all to drain first
            # lets the drains run side by side.
            for index in current[instances:]:
                drain = self._instances[index].drain
                if drain is not None:
                    drain()
            for index in reversed(current[instances:]):
                await self._stop_instance(index)
            free = (i for i in range(instances + len(current)) if i not in self._instances)
            for _ in range(instances - len(current)):
                await self._start_instance(next(free))

    # ------------------------------------------------------------------ instances

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def _start_instance(self, index: int) -> None:
        inst = _Instance(index, f"{self.name}-{index}")
        self._instances[index] = inst
        child = self._task_child(inst) if self.in_process else self._process_child(inst)
        spec = ChildSpec(
            name=inst.name,
            factory=child,
            restart=Restart.PERMANENT,
            backoff=self.restart_backoff,
            reset_after=STABLE_AFTER,
        )
        assert self._supervisor is not None
        try:
            await self._supervisor.start_child(spec)
        except BaseException:
            del self._instances[index]
            raise
        self._notify()

    async def _stop_instance(self, index: int) -> None:
        # The supervisor cancels the child; the child's own clean-up is the drain.
        assert self._supervisor is not None
        await self._supervisor.terminate_child(self._instances[index].name)
        del self._instances[index]
        self._notify()

    def _process_child(self, inst: _Instance) -> Callable[..., Any]:
        run_command = process_child(
            self.command(inst.index),
            grace=self.stop_timeout,
            check=True,
            env=self._environment(),
            # Its own session: a Ctrl-C at the terminal reaches the cluster only, which
            # then stops the instances in order.
            start_new_session=True,
        )

        async def instance_process(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            status = _ProcessStatus(self, inst, task_status)
            pid: int | None = None
            try:
                await run_command(task_status=status)
                pid = status.process.pid if status.process else None
                logger.warning("group %s: %s (pid %s) exited; restarting", self.name, inst.name, pid)
            except subprocess.CalledProcessError as exc:
                logger.warning(
                    "group %s: %s (pid %s) %s; restarting",
                    self.name, inst.name, inst.pid, _describe_exit(exc.returncode),
                )
                raise
            finally:
                if status.process is not None and status.process.returncode is not None:
                    inst.last_exit = status.process.returncode
                inst.pid = None
                inst.drain = None
                self._notify()

        return instance_process

    def _task_child(self, inst: _Instance) -> Callable[..., Any]:
        async def instance_task(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            from ._worker import run_worker

            assert self._worker_class is not None
            stop = trio.Event()
            # Shielded, so that the supervisor's cancellation becomes a drain (below).
            worker_scope = trio.CancelScope(shield=True)
            inst.connected = False
            inst.pid = os.getpid()
            self._notify()
            task_status.started()
            try:
                async with trio.open_nursery() as nursery:

                    async def work() -> None:
                        with worker_scope:
                            try:
                                await run_worker(
                                    self._worker_class(), self.url, name=inst.name, group=self.name,  # type: ignore[misc]
                                    policy=self.policy, mode=self.mode, subjects=self.subjects,
                                    concurrency=self.concurrency, stop=stop,
                                    drain_grace=self.drain_grace,
                                    task_status=_Connected(self, inst),  # type: ignore[arg-type]
                                )  # fmt: skip
                            except Exception:
                                if not stop.is_set():
                                    raise  # to the supervisor, which restarts the instance
                                # Stopping anyway: a failed drain is reported, not restarted.
                                logger.exception("group %s: %s failed while draining", self.name, inst.name)
                        nursery.cancel_scope.cancel()

                    def drain() -> None:
                        if stop.is_set():
                            return
                        stop.set()
                        if inst.connected:
                            worker_scope.deadline = trio.current_time() + self.stop_timeout
                        else:
                            worker_scope.cancel()  # not connected: nothing to drain

                    inst.drain = drain
                    nursery.start_soon(work)
                    try:
                        await trio.sleep_forever()
                    finally:
                        drain()
            finally:
                inst.pid = None
                inst.drain = None
                self._notify()

        return instance_task

    def command(self, index: int) -> list[str]:
        """The command line of instance ``index`` (a subclass may run something else)."""
        argv = [
            self.python, "-m", "actors.worker",
            "--url", self.url,
            "--name", f"{self.name}-{index}",
            "--group", self.name,
            "--policy", self.policy,
            "--mode", self.mode,
            "--drain-grace", repr(self.drain_grace),
            "--parent-pid", str(os.getpid()),
        ]  # fmt: skip
        if self.subjects is not None:
            argv += ["--subjects", ",".join(self.subjects)]
        if self.concurrency is not None:
            argv += ["--concurrency", str(self.concurrency)]
        argv.append(self.worker_spec)
        return argv

    def _environment(self) -> dict[str, str]:
        """This process's environment, with the directory holding ``actors`` importable."""
        env = dict(os.environ)
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        paths = [root, *(p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p)]
        env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
        return env


def _check_count(instances: Any) -> None:
    if type(instances) is not int or instances < 0:
        raise ValueError(f"instances must be an int >= 0, got {instances!r}")


def _describe_exit(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"was killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"was killed by signal {-returncode}"
    return f"exited with status {returncode}"
