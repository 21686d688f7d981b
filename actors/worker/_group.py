"""WorkerGroup: keep N instances of a worker running, each in its own OS process by default.

Python runs one thread of bytecode at a time, so a group uses processes to put several
cores to work: instance ``i`` of group ``square`` is ``python -m actors.worker --name
square-i --group square ... module:Class``. The instances are the permanent children of a
one-for-one :class:`runtime.Supervisor`: one that exits or is killed is started again after
a backoff delay (growing while it keeps failing, reset once it ran :data:`STABLE_AFTER`
seconds). :meth:`WorkerGroup.scale` adds and removes children at runtime. With
``in_process=True`` the instances are :func:`~actors.run_worker` tasks in the caller's trio
loop, under the same supervisor.

An instance past ``max_memory`` or ``max_jobs`` drains (as below) and asks to be replaced:
a process exits with :data:`~actors.worker._worker.RECYCLE_EXIT_STATUS`, a task returns the reason,
and the supervisor starts a fresh instance at once (:class:`runtime.Recycle`: no backoff,
not counted toward ``max_restarts``).

An instance that fails to start (its worker's ``setup()`` raises, or anything else before
it first connects) is reported in one line, ``group square: square-0 failed to start (1 of
10 in a row): OSError: ...``, with the traceback the first time the group meets that type
of error; a worker process writes what it failed with to a report file the group reads
(``--start-report``) and exits with :data:`~actors.worker._worker.START_FAILED_EXIT_STATUS`. It
is restarted with backoff like any exit, until it has failed ``max_start_failures`` times
in a row: then the group gives up (:class:`GroupFailed`), since a worker that cannot start
will not serve by trying faster.

With a ``token`` (the identity the cluster gives the group when its leader has users), an
instance process finds it in its environment, :data:`GROUP_TOKEN_ENV`, named by
``--token-env``: never on its command line, which other users of the machine can read. A
group connecting to a ``tls://`` or ``wss://`` URL checks the leader's certificate with
``tls_ca`` (``--tls-ca``).

Stopping an instance drains it: a process gets SIGTERM (its worker finishes the jobs in
hand, says Bye and exits 0) and SIGKILL if it still runs ``stop_timeout`` seconds later;
an in-process worker gets its ``stop`` event and is cancelled after ``stop_timeout``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
from collections.abc import Callable, Collection, Sequence
from functools import partial
from typing import Any

import attrs
import trio

from protocol import MODE_VALUES as MODES
from protocol import POLICY_VALUES as POLICIES
from protocol import GroupMode, RoutingPolicy, is_valid_pattern
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
from runtime._child import Recycle
from runtime._url import split_urls

from .._checks import format_size, parse_size
from ._failures import error_text
from ._loader import load_worker_class, worker_spec
from ._worker import RECYCLE_EXIT_STATUS, START_FAILED_EXIT_STATUS

#: An instance that ran this long before it exited is restarted after the first backoff
#: delay again, instead of the next (longer) one.
STABLE_AFTER = 10.0
#: Seconds a stopping instance gets on top of its drain grace before it is killed.
STOP_MARGIN = 5.0
#: The default restart backoff: 0.1 s, doubling, at most 5 s, with 10 % jitter.
DEFAULT_RESTART_BACKOFF = Backoff(base=0.1, factor=2.0, cap=5.0, jitter=0.1)
#: Failed starts in a row of one instance after which its group gives up, by default:
#: with the default backoff, some 25 seconds of trying.
DEFAULT_MAX_START_FAILURES = 10
#: Bytes of a start report read, at most (the worker bounds what it writes well below).
MAX_START_REPORT = 64 * 1024
#: Error types whose traceback a group logs once each, at most; later new ones get the
#: one line only (the first tracebacks are the ones that explain).
MAX_TRACEBACK_TYPES = 64
#: The environment variable that carries a group's token to its instance processes.
GROUP_TOKEN_ENV = "ACTORS_GROUP_TOKEN"
#: URL schemes whose connections are TLS (the leader's certificate is checked with ``tls_ca``).
_TLS_SCHEMES = ("tls", "wss")

logger = logging.getLogger("actors.group")


class GroupFailed(Exception):
    """A worker group gave up: one of its instances failed to start
    ``max_start_failures`` times in a row (:meth:`WorkerGroup.run` raises it, once the
    group's other instances are stopped).

    Attributes:
      group: the group's name.
      reason: why, in words (the instance, how many times, the last error).
    """

    def __init__(self, group: str, reason: str) -> None:
        super().__init__(f"group {group} failed: {reason}")
        self.group = group
        self.reason = reason


class StartFailed(Exception):
    """What an instance process that failed to start exited with (from its start report):
    its supervisor's ``last_error``.

    Attributes:
      error_type: the class name of the error the worker raised.
      message: its message.
    """

    def __init__(self, error_type: str, message: str) -> None:
        super().__init__(f"{error_type}: {message}")
        self.error_type = error_type
        self.message = message


@attrs.frozen
class InstanceInfo:
    """A snapshot of one instance, for tests, stats and the CLI.

    Attributes:
      index: its number in the group (its name is ``<group>-<index>``).
      name: the worker name it connects with.
      state: its supervisor's view (:class:`runtime.ChildState`).
      pid: the id of its process while it runs (in process: this process's id).
      restarts: how many times it was started again after exiting (recycles apart).
      last_exit: the exit status of its last process (negative: killed by that signal);
        None if none exited yet, and always None in process.
      last_error: the last error it exited with, as its supervisor recorded it.
      recycles: how many times it was replaced for going past ``max_memory`` or
        ``max_jobs`` (a planned replacement, not a failure).
    """

    index: int
    name: str
    state: ChildState
    pid: int | None
    restarts: int
    last_exit: int | None
    last_error: BaseException | None
    recycles: int = 0


@attrs.define(eq=False)
class _Instance:
    """What the group knows of an instance beyond its supervisor's view."""

    index: int
    name: str
    pid: int | None = None
    last_exit: int | None = None
    connected: bool = False  # in process: run_worker was welcomed, so it can drain
    drain: Callable[[], None] | None = None  # asks the running process or task to drain
    start_failures: int = 0  # failed starts in a row


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
        self.instance.start_failures = 0
        self.group._notify()


class WorkerGroup:
    """Keeps ``instances`` copies of a worker connected to a leader.

    Args:
      name: the group's name; instances are named ``<name>-0``, ``<name>-1``, ...
      worker: the worker class, or its ``"module:Class"`` name.
      instances: how many to keep running (0 allowed; see :meth:`scale`).
      url: the leader to connect to, or several sharing one job store (a
        comma-separated ``str``, or a list or tuple of URLs) tried in turn (see
        :func:`~actors.run_worker`).
      mode: ``round_robin`` (each job to one instance) or ``broadcast``.
      policy: ``round_robin``, ``least_loaded`` or ``sticky``: how the leader picks an
        instance for a job. A subject has one policy, whichever group serves it: while
        another group's workers serve a subject of this one by another policy, the leader
        refuses its instances (each fails to start, with the leader's ``conflict``
        message).
      subjects: patterns overriding the class's ``subjects``.
      concurrency: overrides the class's ``concurrency``.
      max_memory: recycle an instance whose process's resident memory (RSS) is over this
        many bytes after a job (an int, or a string such as ``"512MiB"``); overrides the
        class's ``max_memory``. In process every instance shares this process's memory, so
        set it for worker processes.
      max_jobs: recycle an instance once it handled this many jobs; overrides the
        class's ``max_jobs``.
      in_process: run the instances as tasks in this trio loop instead of processes.
      restart_backoff: delays between restarts of an instance that keeps exiting.
      drain_grace: seconds a stopping worker has to finish the jobs it holds.
      stop_timeout: seconds after which a stopping instance is killed (default
        ``drain_grace`` + :data:`STOP_MARGIN`).
      max_restarts: with ``within``, the supervisor's restart intensity: more restarts
        than this within ``within`` seconds make :meth:`run` fail with
        :class:`runtime.SupervisorEscalation`. None (the default) never gives up.
      within: the intensity period, in seconds.
      max_start_failures: give up (:meth:`run` raises :class:`GroupFailed`) once an
        instance failed to start this many times in a row; None never gives up. A run
        that connected to the leader, or (a process) exited any other way, starts the
        count again.
      python: the interpreter that runs instance processes.
      token: the token its instances prove their identity with (processes get it in
        their environment, :data:`GROUP_TOKEN_ENV`, never in their arguments).
      hide_secrets: SHA-256 digests of tokens (the leader's users'): a variable of this
        process's environment holding one is not passed to instance processes, so that a
        worker cannot take an identity other than its group's (``token_env`` of an admin).
      tls_ca: a CA certificate file to check the leader's certificate with, when ``url``
        is ``tls://`` or ``wss://`` (None: the system's CAs).

    Raises:
      ValueError: a bad name, count, mode, policy, subject pattern, concurrency,
        max_memory or max_jobs.
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
        url: str | Sequence[str],
        *,
        mode: str = GroupMode.ROUND_ROBIN,
        policy: str = RoutingPolicy.ROUND_ROBIN,
        subjects: Sequence[str] | None = None,
        concurrency: int | None = None,
        max_memory: int | str | None = None,
        max_jobs: int | None = None,
        in_process: bool = False,
        restart_backoff: Backoff | None = None,
        drain_grace: float = 30.0,
        stop_timeout: float | None = None,
        max_restarts: int | None = None,
        within: float = 60.0,
        max_start_failures: int | None = DEFAULT_MAX_START_FAILURES,
        python: str = sys.executable,
        token: str | None = None,
        tls_ca: str | None = None,
        hide_secrets: Collection[bytes] = (),
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
        memory_limit = None if max_memory is None else parse_size(max_memory)
        if max_jobs is not None and (type(max_jobs) is not int or max_jobs < 1):
            raise ValueError(f"max_jobs must be a positive int, got {max_jobs!r}")
        if not drain_grace >= 0:
            raise ValueError(f"drain_grace must be >= 0, got {drain_grace!r}")
        if max_start_failures is not None and (
            type(max_start_failures) is not int or max_start_failures < 1
        ):
            raise ValueError(
                f"max_start_failures must be a positive int or None, got {max_start_failures!r}"
            )
        self.name = name
        self.url = url if isinstance(url, str) else ",".join(split_urls(url))
        self.mode = mode
        self.policy = policy
        self.subjects = subjects
        self.concurrency = concurrency
        self.max_memory = memory_limit
        self.max_jobs = max_jobs
        self.in_process = in_process
        self.restart_backoff = restart_backoff or DEFAULT_RESTART_BACKOFF
        self.drain_grace = drain_grace
        self.stop_timeout = drain_grace + STOP_MARGIN if stop_timeout is None else stop_timeout
        self.python = python
        self.token = token
        self.tls_ca = tls_ca
        self.hide_secrets = frozenset(hide_secrets)
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
        self.max_start_failures = max_start_failures
        #: Why the group gave up (see :class:`GroupFailed`), once it has; else None.
        self.failure: str | None = None
        self._failed = trio.Event()
        self._traceback_types: set[str] = set()  # error types whose traceback was logged
        self._report_dir: str | None = None  # where instance processes write start reports
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
                    index,
                    inst.name,
                    child.state,
                    inst.pid,
                    child.restarts,
                    inst.last_exit,
                    child.last_error,
                    child.recycles,
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
        if self.max_memory is not None:
            text += f", max_memory {format_size(self.max_memory)}"
        if self.max_jobs is not None:
            text += f", max_jobs {self.max_jobs}"
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
          GroupFailed: an instance failed to start ``max_start_failures`` times in a
            row (the others are stopped first, gracefully).
        """
        if self._supervisor is not None:
            raise RuntimeError(f"group {self.name!r} is running already")
        if self.in_process and self._worker_class is None:
            self._worker_class = load_worker_class(self.worker_spec)
        if self.in_process and self.max_memory is not None:
            logger.warning(
                "group %s: max_memory counts this whole process's memory when in process",
                self.name,
            )
        self._supervisor = Supervisor(
            strategy=Strategy.ONE_FOR_ONE, max_restarts=self.max_restarts, within=self.within
        )
        self.failure = None
        self._failed = trio.Event()
        if not self.in_process:
            self._report_dir = tempfile.mkdtemp(prefix=f"actors-{self.name}-")
        try:
            async with open_actor_system(name=f"group-{self.name}") as system:
                await system.spawn(self._supervisor, name=f"group-{self.name}")
                async with self._scaling:
                    for index in range(self._desired):
                        await self._start_instance(index)
                task_status.started()
                await self._failed.wait()
                # Leaving the block stops the supervisor: the instances that run drain.
        finally:
            self._supervisor = None
            self._instances.clear()
            if self._report_dir is not None:
                shutil.rmtree(self._report_dir, ignore_errors=True)
                self._report_dir = None
        raise GroupFailed(self.name, self.failure or "")

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
            try:
                current = sorted(self._instances)
                # The supervisor stops children one at a time; asking them all to drain
                # first lets the drains run side by side.
                for index in current[instances:]:
                    drain = self._instances[index].drain
                    if drain is not None:
                        drain()
                for index in reversed(current[instances:]):
                    await self._stop_instance(index)
                free = (i for i in range(instances + len(current)) if i not in self._instances)
                for _ in range(instances - len(current)):
                    await self._start_instance(next(free))
            except BaseException:
                # (a scaling that failed half-way: the group wants what it has)
                self._desired = len(self._instances)
                raise

    # ------------------------------------------------------------------ instances

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def _start_failed(
        self, inst: _Instance, error_type: str, message: str, *, exc: BaseException | None = None,
        traceback: str | None = None,
    ) -> None:  # fmt: skip
        """Report a failed start of ``inst`` (the error raised in process as ``exc``, or
        a process's ``traceback`` text); give up once it failed too often in a row."""
        inst.start_failures += 1
        limit = self.max_start_failures
        count = f"{inst.start_failures} in a row"
        if limit is not None:
            count = f"{inst.start_failures} of {limit} in a row"
        giving_up = limit is not None and inst.start_failures >= limit
        line = (
            f"group {self.name}: {inst.name} failed to start ({count}): {error_type}: {message}; "
            + ("giving up" if giving_up else "restarting")
        )
        show = (
            error_type not in self._traceback_types
            and len(self._traceback_types) < MAX_TRACEBACK_TYPES
        )
        if show:
            self._traceback_types.add(error_type)
        if exc is not None:
            logger.error("%s", line, exc_info=exc if show else None)
        elif show and traceback:
            logger.error("%s\n%s", line, traceback.rstrip("\n"))
        else:
            logger.error("%s", line)
        if giving_up and self.failure is None:
            self.failure = (
                f"{inst.name} failed to start {inst.start_failures} times in a row: "
                f"{error_type}: {message}"
            )
            self._failed.set()

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
            recycle_status=RECYCLE_EXIT_STATUS,
            env=self._environment(),
            # Its own session: a Ctrl-C at the terminal reaches the cluster only, which
            # then stops the instances in order.
            start_new_session=True,
        )

        async def instance_process(
            task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
        ) -> Recycle | None:
            status = _ProcessStatus(self, inst, task_status)
            pid: int | None = None
            report = self._report_path(inst.name)
            if report is not None:
                with contextlib.suppress(FileNotFoundError):
                    os.remove(report)  # an earlier run's
            try:
                recycle = await run_command(task_status=status)
                if recycle is not None:  # the worker logged why; the supervisor replaces it
                    return recycle
                inst.start_failures = 0
                pid = status.process.pid if status.process else None
                logger.warning(
                    "group %s: %s (pid %s) exited; restarting", self.name, inst.name, pid
                )
            except subprocess.CalledProcessError as exc:
                if exc.returncode == START_FAILED_EXIT_STATUS:
                    error_type, message, traceback = _read_start_report(report)
                    self._start_failed(inst, error_type, message, traceback=traceback)
                    raise StartFailed(error_type, message) from None
                inst.start_failures = 0
                logger.warning(
                    "group %s: %s (pid %s) %s; restarting",
                    self.name,
                    inst.name,
                    inst.pid,
                    _describe_exit(exc.returncode),
                )
                raise
            finally:
                if status.process is not None and status.process.returncode is not None:
                    inst.last_exit = status.process.returncode
                inst.pid = None
                inst.drain = None
                self._notify()
            return None

        return instance_process

    def _task_child(self, inst: _Instance) -> Callable[..., Any]:
        async def instance_task(
            task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
        ) -> Recycle | None:
            from ._runner import run_worker

            assert self._worker_class is not None
            stop = trio.Event()
            recycled: str | None = None
            # Shielded, so that the supervisor's cancellation becomes a drain (below).
            worker_scope = trio.CancelScope(shield=True)
            inst.connected = False
            inst.pid = os.getpid()
            self._notify()
            task_status.started()
            try:
                async with trio.open_nursery() as nursery:

                    async def work() -> None:
                        nonlocal recycled
                        with worker_scope:
                            try:
                                recycled = await run_worker(
                                    self._worker_class(), self.url, name=inst.name, group=self.name,  # type: ignore[misc]
                                    policy=self.policy, mode=self.mode, subjects=self.subjects,
                                    concurrency=self.concurrency, max_memory=self.max_memory,
                                    max_jobs=self.max_jobs, stop=stop,
                                    drain_grace=self.drain_grace, token=self.token,
                                    ssl_context=self._ssl_context(),
                                    task_status=_Connected(self, inst),  # type: ignore[arg-type]
                                )  # fmt: skip
                            except Exception as exc:
                                if not stop.is_set():
                                    if not inst.connected:
                                        self._start_failed(
                                            inst, type(exc).__name__, error_text(exc), exc=exc
                                        )
                                    raise  # to the supervisor, which restarts the instance
                                # Stopping anyway: a failed drain is reported, not restarted.
                                logger.exception(
                                    "group %s: %s failed while draining", self.name, inst.name
                                )
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
            return None if recycled is None else Recycle(recycled)

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
        if self.max_memory is not None:
            argv += ["--max-memory", str(self.max_memory)]
        if self.max_jobs is not None:
            argv += ["--max-jobs", str(self.max_jobs)]
        if self.token is not None:  # (the token itself is in the environment)
            argv += ["--token-env", GROUP_TOKEN_ENV]
        if self.tls_ca is not None and self._uses_tls():
            argv += ["--tls-ca", self.tls_ca]
        report = self._report_path(f"{self.name}-{index}")
        if report is not None:
            argv += ["--start-report", report]
        argv.append(self.worker_spec)
        return argv

    def _uses_tls(self) -> bool:
        # (Any: a list that mixes TLS and not fails at the worker's start, naming the URL.)
        return any(url.partition("://")[0] in _TLS_SCHEMES for url in split_urls(self.url))

    def _ssl_context(self) -> ssl.SSLContext | None:
        """In process: the client context that checks the leader's certificate with
        ``tls_ca`` (None: not TLS, or the runner's default, the system's CAs)."""
        if self.tls_ca is None or not self._uses_tls():
            return None
        from .._tls import client_ssl_context

        return client_ssl_context(ca=self.tls_ca)

    def _report_path(self, name: str) -> str | None:
        """Where instance ``name``'s process writes why it failed to start (while running)."""
        if self._report_dir is None:
            return None
        return os.path.join(self._report_dir, f"{name}.json")

    def _environment(self) -> dict[str, str]:
        """This process's environment, with the directory holding ``actors`` importable
        and the group's token in :data:`GROUP_TOKEN_ENV`."""
        env = dict(os.environ)
        env.pop(GROUP_TOKEN_ENV, None)  # (not another group's, from an outer cluster)
        if self.hide_secrets:  # (the users' tokens, from token_env: not the workers')
            hidden = self.hide_secrets
            env = {
                name: value
                for name, value in env.items()
                if hashlib.sha256(value.strip().encode("utf-8", "surrogateescape")).digest()
                not in hidden
            }
        if self.token is not None:
            env[GROUP_TOKEN_ENV] = self.token
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        paths = [root, *(p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p)]
        env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
        return env


def _read_start_report(path: str | None) -> tuple[str, str, str | None]:
    """What a worker process that failed to start wrote: error type, message, traceback."""
    unknown = (
        "StartFailed",
        f"exited with status {START_FAILED_EXIT_STATUS} before it connected",
        None,
    )
    if path is None:
        return unknown
    try:
        with open(path, "rb") as file:
            report = json.loads(file.read(MAX_START_REPORT))
        error_type, message = report["type"], report["message"]
        traceback = report.get("traceback")
    except (OSError, ValueError, KeyError, TypeError):
        return unknown
    if not (isinstance(error_type, str) and isinstance(message, str)):
        return unknown
    return error_type, message, traceback if isinstance(traceback, str) else None


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
