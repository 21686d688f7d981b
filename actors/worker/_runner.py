"""The worker runner: connects one :class:`~actors.Worker` to a leader and runs its jobs.

It connects (and reconnects, with backoff) to the leader, says Hello with the worker's
patterns and its credit (``concurrency``), and runs the jobs it is assigned on a pool of
at most ``concurrency`` slot tasks (started as needed, then reused: no task is spawned per
job). A finished job's result is kept in a dedup cache, so a redelivery of a job it
already finished (after a reconnect, say) is answered from the cache instead of running
again.

Cancelling one job (the leader's Cancel) cancels the scope of the slot running it; the
slot reports the job cancelled and goes on with a new scope.

Results are queued on the connection and written out together: when a slot runs out of
jobs, and before a job first waits (the slot steps the job's coroutine once itself to
find out), so that a batch of jobs that never wait costs one write, and a job that waits
never holds back the results finished before it.

Failures: whatever a handler raises (but cancellation and Ctrl-C) fails its job, and so
does a result that cannot be sent (no CBOR encoding, over the frame limit). Each failed
attempt is logged, and the failed Result carries the traceback and whether the failure is
final (not to be retried): see :mod:`actors.worker._failures`. A job whose Assign has a deadline
(its submit's timeout) gets ``job.deadline``, and its handler is cancelled past it (a final
``DeadlineExceeded``: nobody waits for the result any more).

Handlers: an ``async def handle`` runs in the slot's task; a plain ``def handle`` runs in a
worker thread (at most ``concurrency`` at once), so that blocking code blocks only its job.
An async handler that blocks the loop anyway is named in a warning (see
:mod:`actors.worker._watchdog`, the worker's ``blocking_warning``).

Containment: a bug met while serving the connection (handling a message of the leader,
answering a job) is logged once and ends that connection, not the worker. When a
connection ends that way or is lost, the leader gives the jobs it brought to other workers:
the runner cancels them, waits (at most ``cancel_grace``) for them to end, and connects
again.

Recycling: past ``max_jobs`` jobs, or over ``max_memory`` bytes of RSS after a job, the
worker drains as for a stop (credit 0 first, so the leader sends nothing more; the jobs in
hand finish and are answered; Bye) and :meth:`WorkerRunner.run` returns, with the reason
in :attr:`WorkerRunner.recycled`, for a fresh worker to take over.
"""

from __future__ import annotations

import collections
import logging
import math
import os
import random
import socket
import ssl
import types
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import attrs
import trio

from protocol import MODE_VALUES as MODES
from protocol import POLICY_VALUES as POLICIES
from protocol import (
    SUPPORTED_VERSIONS,
    Assign,
    Bye,
    Cancel,
    Credit,
    Deliver,
    Encoded,
    Error,
    ErrorCode,
    GroupMode,
    Hello,
    InvalidPayload,
    Nack,
    Progress,
    Result,
    RoutingPolicy,
    decode_payload,
    is_valid_pattern,
    message_of,
)
from runtime import (
    DEFAULT_RECONNECT_BACKOFF,
    FATAL_HANDSHAKE_CODES,
    Backoff,
    Connection,
    ConnectionClosed,
    DedupCache,
    HandshakeError,
    MessageTooLarge,
    ReconnectEvent,
    SendBufferFull,
    TLSHandshakeFailed,
)
from runtime._url import split_urls

from .._credentials import TokenSource, reconnecting
from ._failures import Failure, FailureLog, check_never_retry, error_text, failure_of
from ._handlers import (
    CoroutineType,
    awaited,
    handler_of,
    must_propagate,
    resume,
    stepped,
    until_deadline,
)
from ._job import Job
from ._limits import RecycleLimits
from ._watchdog import LoopWatchdog

if TYPE_CHECKING:
    from ._worker import Worker

_result_item = Result.item  # type: ignore[attr-defined]

#: Published messages waiting for a free slot on a worker, at most; more are dropped
#: (pub/sub is at most once) and counted in ``WorkerRunner.dropped``.
MAX_PENDING_DELIVERIES = 1000
#: Seconds the jobs of a lost connection get to end once cancelled, by default, before the
#: worker connects again anyway (granting only the slots they left free).
CANCEL_GRACE = 5.0
#: How a slot runs a job's coroutine, unless ``WorkerRunner(step_jobs=...)`` says: True,
#: stepped by the slot itself (:func:`~actors.worker._handlers.stepped`, which measurably
#: pays: see its docstring); False, a plain ``await``
#: (:func:`~actors.worker._handlers.awaited`).
STEP_JOBS = True
#: Refusals of the Hello that retrying cannot cure: raised from :meth:`WorkerRunner.run`
#: (a failure to start, before the first Welcome), not retried. ``conflict``: the worker
#: asks for another routing policy for a subject than the workers serving it have.
#: (``auth_failed`` is retried with a token provider, which may give a new token: see
#: :mod:`actors._credentials`.)
FATAL_CODES = FATAL_HANDSHAKE_CODES | {ErrorCode.CONFLICT}
#: Seconds the leader refuses a worker's connections (``busy``: over its connection
#: limits) before the worker says so (once, until it is welcomed again).
REFUSED_PATIENCE = 5.0
logger = logging.getLogger("actors.worker")


class WorkerRunner:
    """Connects one :class:`Worker` to a leader and runs its jobs.

    Users normally call :func:`~actors.run_worker`; the runner is exposed for tests and for
    embedding (its counters show what happened). ``max_memory`` (bytes, or ``"512MiB"``)
    and ``max_jobs`` override the worker class's (see the module's "Recycling");
    ``cancel_grace`` bounds the wait for the cancelled jobs of a lost connection.
    ``step_jobs`` (default :data:`STEP_JOBS`): whether a slot steps a job's coroutine
    itself, to learn whether it waits (see :func:`~actors.worker._handlers.stepped`), or
    awaits it plainly. ``token``: a ``str``, or a token provider called for every
    connection attempt (as for :meth:`actors.Client.connect`). ``url``: the leader, or
    several tried in turn (as for :func:`run_worker`).
    """

    def __init__(
        self,
        worker: Worker,
        url: str | Sequence[str],
        *,
        name: str | None = None,
        group: str | None = None,
        policy: str = RoutingPolicy.ROUND_ROBIN,
        mode: str = GroupMode.ROUND_ROBIN,
        subjects: Sequence[str] | None = None,
        concurrency: int | None = None,
        ssl_context: ssl.SSLContext | None = None,
        token: TokenSource = None,
        reconnect_backoff: Backoff | None = None,
        dedup_capacity: int = 10_000,
        dedup_ttl: float = 600.0,
        rng: random.Random | None = None,
        max_memory: int | str | None = None,
        max_jobs: int | None = None,
        cancel_grace: float = CANCEL_GRACE,
        step_jobs: bool | None = None,
    ) -> None:
        self.worker = worker
        #: The leader's URL, or the leaders' (comma-separated), as given.
        self.url = url if isinstance(url, str) else ",".join(split_urls(url))
        self.subjects = tuple(subjects if subjects is not None else worker.subjects)
        for pattern in self.subjects:
            if not is_valid_pattern(pattern):
                raise ValueError(f"{type(worker).__name__}: invalid subject pattern {pattern!r}")
        if not self.subjects:
            raise ValueError(f"{type(worker).__name__} serves no subjects: set `subjects`")
        self.concurrency = concurrency if concurrency is not None else worker.concurrency
        if type(self.concurrency) is not int or self.concurrency < 1:
            raise ValueError(f"concurrency must be a positive int, got {self.concurrency!r}")
        if policy not in POLICIES:
            raise ValueError(f"unknown policy {policy!r}; choose from {sorted(POLICIES)}")
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; choose from {sorted(MODES)}")
        self.limits = RecycleLimits(
            max_jobs if max_jobs is not None else getattr(worker, "max_jobs", None),
            max_memory if max_memory is not None else getattr(worker, "max_memory", None),
        )
        kind = type(worker).__name__
        self.never_retry = check_never_retry(getattr(worker, "never_retry", ()), kind)
        self._handle = handler_of(worker, self.concurrency)
        self._run_job = stepped if (STEP_JOBS if step_jobs is None else step_jobs) else awaited
        self.cancel_grace = cancel_grace
        self.name = name or f"{kind.lower()}-{os.getpid()}"
        self._failure_log = FailureLog(self.name)
        threshold = getattr(worker, "blocking_warning", None)
        self._watchdog = (
            None
            if threshold is None
            else LoopWatchdog(threshold, self._blame, label=f"worker {self.name}")
        )
        self.group = group
        self.policy = policy
        self.mode = mode
        self.ssl_context = ssl_context
        self.token = token
        self.backoff = reconnect_backoff or DEFAULT_RECONNECT_BACKOFF
        self.rng = rng
        self.finished = DedupCache(capacity=dedup_capacity, ttl=dedup_ttl)
        #: Jobs taken and not finished (queued for a slot or running), by job id.
        self.running: dict[str, Job] = {}
        #: Jobs still running from an earlier connection, unknown to the leader of this one:
        #: they take slots it cannot see, so the credit granted leaves them out.
        self._orphans: set[str] = set()
        self._queue: collections.deque[tuple[Job, int]] = collections.deque()
        self._slot_lot = trio.lowlevel.ParkingLot()
        self._slots = 0  # slot tasks started
        self._idle_slots = 0
        self._waking = False  # a slot was woken (or started) and has not run yet
        self._clock = trio.current_time  # the run's clock, once running (see run())
        self.deliveries = 0
        self.dropped = 0
        self.completed = 0
        self.failed = 0
        self.duplicates = 0
        self.connects = 0
        self.max_running = 0
        self.credit_violations = 0
        self._conn: Connection | None = None
        self._mid = 0
        self._nursery: trio.Nursery | None = None
        self._draining = False
        self._idle: trio.Event | None = None  # set when the last job ended (for a waiter)
        self._stop = trio.Event()  # drain and return: run()'s stop, or a recycle
        #: Why the worker recycled itself (past ``max_jobs`` or ``max_memory``), if it did.
        self.recycled: str | None = None
        self._session_scope: trio.CancelScope | None = None
        self._failure: BaseException | None = None  # what ended the current connection

    @property
    def handled(self) -> int:
        """Jobs and published messages handled (what ``max_jobs`` counts)."""
        return self.limits.handled

    @property
    def max_jobs(self) -> int | None:
        """Recycle past this many jobs handled (None: no limit)."""
        return self.limits.max_jobs

    @property
    def max_memory(self) -> int | None:
        """Recycle over this many bytes of RSS after a job (None: no limit)."""
        return self.limits.max_memory

    # ------------------------------------------------------------------ lifecycle

    async def run(
        self,
        *,
        stop: trio.Event | None = None,
        drain_grace: float = 30.0,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve until cancelled, or until ``stop`` is set and the worker has drained.

        Draining: the worker sets its credit to 0 (the leader sends nothing more), lets
        the running jobs finish within ``drain_grace`` seconds and sends their results,
        says Bye and returns. Cancelling instead stops at once; the leader redelivers
        whatever was running. A recycle (see the module's docstring) drains the same way
        and returns, with :attr:`recycled` set.
        """
        # trio.current_time() is three calls deep; the run's clock answers the same in one.
        self._clock = trio.lowlevel.current_clock().current_time
        await self.worker.setup()
        if self._watchdog is not None:
            self._watchdog.start()
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                if stop is not None:
                    nursery.start_soon(self._stop_on, stop)
                started = False
                refused: HandshakeError | None = None
                # Since when the leader refuses the connection (None: it welcomed the last
                # one), and the refusals said since (each once, not once per retry).
                refused_since: float | None = None
                said: set[str] = set()

                async def session(conn: Connection) -> None:
                    nonlocal started
                    self._conn = conn
                    self.connects += 1
                    if not started:
                        started = True
                        task_status.started()
                    try:
                        await self._session(conn, drain_grace)
                    finally:
                        self._conn = None

                def on_state(event: ReconnectEvent) -> None:
                    nonlocal refused_since
                    if event.state == "connected":
                        refused_since = None
                        said.clear()
                    if event.state != "disconnected" or event.error is None:
                        return
                    error = event.error
                    if isinstance(error, TLSHandshakeFailed) and not started:
                        raise error  # (a certificate not trusted: retrying cannot help)
                    if isinstance(error, HandshakeError):
                        # Final refusals are raised; a retried one (``busy``: over the
                        # leader's connection limits) is said once it lasts (not the
                        # moments of a crowd of workers starting at once), once.
                        now = trio.current_time()
                        if refused_since is None:
                            refused_since = now
                        if (
                            error.code not in FATAL_CODES
                            and error.code not in said
                            and now - refused_since >= REFUSED_PATIENCE
                        ):
                            said.add(error.code)
                            logger.warning(
                                "worker %s: %s has refused the connection for %.0f s (%s: "
                                "%r); trying again until it admits it",
                                self.name,
                                event.url or self.url,
                                now - refused_since,
                                error.code,
                                error.message[:300],  # (%r: the leader's words, escaped)
                            )
                    else:
                        logger.warning(
                            "worker %s: cannot %s %s: %s (trying again)",
                            self.name,
                            "reach" if not started else "reconnect to",
                            event.url or self.url,
                            error,
                        )

                try:
                    await reconnecting(
                        self.url,
                        session,
                        token=self.token,
                        hello=self._hello,
                        on_state=on_state,
                        logger=logger,
                        who=f"worker {self.name}",
                        backoff=self.backoff,
                        rng=self.rng,
                        ssl_context=self.ssl_context,
                        decode_payloads=False,  # each job's payload decoded by itself
                        fatal_codes=FATAL_CODES,
                    )
                except HandshakeError as exc:  # raised alone below, not in an exception group
                    refused = exc
                nursery.cancel_scope.cancel()
            if refused is not None:
                raise refused
        finally:
            if self._watchdog is not None:
                self._watchdog.stop()
            with trio.CancelScope(shield=True):
                await self.worker.teardown()

    def _hello(self, token: str | None) -> Hello:
        # Whatever runs now was taken on an earlier connection (each Hello starts one).
        self._orphans = set(self.running)
        return Hello(
            mid=self._next_mid(),
            role="worker",
            name=self.name,
            versions=SUPPORTED_VERSIONS,
            patterns=self.subjects,
            credit=0 if self._draining else self._free_credit(),
            group=self.group,
            token=token,
            policy=self.policy,
            mode=self.mode,
            meta={"pid": os.getpid(), "host": socket.gethostname()},
        )

    def _free_credit(self) -> int:
        return max(0, self.concurrency - len(self._orphans))

    def _orphan_settled(self, job_id: str) -> None:
        """An orphan ended or was assigned again (the leader counts it now): its slot is
        the leader's to fill again."""
        self._orphans.discard(job_id)
        if not self._draining:
            self._send(Credit(mid=self._next_mid(), credit=self._free_credit()))

    def _next_mid(self) -> int:
        self._mid += 1
        return self._mid

    async def _session(self, conn: Connection, drain_grace: float) -> None:
        """Serve one connection until it ends; then, unless draining, cancel the jobs it
        brought and raise :class:`ConnectionClosed` (run_reconnecting connects again)."""
        self._failure = None
        lost: ConnectionClosed | None = None
        try:
            async with trio.open_nursery() as nursery:
                self._session_scope = nursery.cancel_scope
                nursery.start_soon(self._drain_on, conn, drain_grace, nursery.cancel_scope)
                try:
                    await conn.dispatch_to(self._on_batch)  # the reader task runs it
                except ConnectionClosed as exc:
                    if self._draining:
                        return  # (_drain_on closes it and ends the session)
                    lost = exc
                    nursery.cancel_scope.cancel()
        finally:
            self._session_scope = None
        if self._draining:
            return
        if lost is None:  # ended by a failure (see _connection_failed, which logged it)
            lost = ConnectionClosed(f"worker {self.name} failed: {self._failure!r}")
            with trio.move_on_after(1.0):
                await conn.aclose(
                    Error(
                        mid=conn.next_mid(), code=ErrorCode.INTERNAL,
                        message=f"worker {self.name}: internal error, reconnecting",
                    )
                )  # fmt: skip
        self._conn = None  # nothing more goes out on it
        await self._cancel_held_jobs()
        if self._stop.is_set():
            return  # stopping anyway: no job is left to answer
        raise lost

    async def _cancel_held_jobs(self) -> None:
        """The leader gives the jobs of a lost connection to other workers: cancel them
        (their handlers see ``trio.Cancelled``), and wait at most ``cancel_grace`` seconds
        for them to end. One still running then keeps its slot out of the next Hello's
        credit until it ends (see :meth:`_hello`)."""
        while self._queue:
            job, cid = self._queue.popleft()
            self._finish(job, cid, None)
        for job in list(self.running.values()):
            if job._scope is None:  # in no slot and not queued: lost on its way in (a bug)
                self._finish(job, 0, None)
            else:
                job._cancel()
        if not self.running:
            return
        self._idle = trio.Event()
        with trio.move_on_after(self.cancel_grace):
            await self._idle.wait()

    def _on_batch(self, batch: list[Any]) -> None:
        if self._failure is not None:
            return  # this connection is ending (see _connection_failed)
        now = self._clock()  # one reading for the batch: nothing runs meanwhile
        msg: Any = None
        try:
            for msg in batch:
                kind = type(msg)
                if kind is Assign:
                    self._on_assign(msg, now)
                elif kind is Cancel:
                    self._on_cancel(msg)
                elif kind is Deliver:
                    self._on_deliver(msg)
        except Exception as exc:  # this connection's boundary (STYLE rule 9)
            self._connection_failed(exc, f"handling {type(msg).__name__} from the leader")

    def _on_cancel(self, msg: Cancel) -> None:
        job = self.running.get(msg.job_id)
        if job is not None:
            job._cancel()

    def _connection_failed(self, exc: BaseException, doing: str) -> None:
        """A bug met while serving the connection (``doing`` failed): log it once, with
        its traceback, and end the connection (the session then cancels the jobs it
        brought and reconnects). The worker and its slots go on."""
        if self._session_scope is None:  # between connections: there is none to end
            logger.error("worker %s: %s failed", self.name, doing, exc_info=exc)
            return
        if self._failure is not None:
            return
        self._failure = exc
        logger.error(
            "worker %s: %s failed; ending the connection to the leader",
            self.name, doing, exc_info=exc,
        )  # fmt: skip
        self._session_scope.cancel()

    async def _stop_on(self, stop: trio.Event) -> None:
        await stop.wait()
        self._stop.set()

    async def _drain_on(
        self, conn: Connection, grace: float, session_scope: trio.CancelScope
    ) -> None:
        await self._stop.wait()
        self._begin_drain()
        if self.running:
            self._idle = trio.Event()
            with trio.move_on_after(grace):
                await self._idle.wait()
        for job in list(self.running.values()):
            job._cancel()  # past the grace period: the leader redelivers these
        reason = f"worker recycling: {self.recycled}" if self.recycled else "worker draining"
        with trio.move_on_after(1.0):
            try:
                await conn.send(Bye(mid=self._next_mid(), reason=reason))
            except (ConnectionClosed, SendBufferFull):
                pass  # lost meanwhile, or the leader does not read: closing anyway
        await conn.aclose()
        session_scope.cancel()

    def _begin_drain(self) -> None:
        """Take no more jobs: credit 0 (those in hand still run and are answered)."""
        if not self._draining:
            self._draining = True
            self._send(Credit(mid=self._next_mid(), credit=0))

    def _recycle(self, reason: str) -> None:
        """Drain and end, for a fresh worker to take over (a group starts one at once)."""
        self.recycled = reason
        where = f"group {self.group}: {self.name}" if self.group else f"worker {self.name}"
        logger.info("%s recycled: %s", where, reason)
        self._begin_drain()  # before the Result of the job that went over (see _finish)
        self._stop.set()

    def _count_handled(self) -> None:
        reason = self.limits.count()
        if reason is not None and not self._draining:
            self._recycle(reason)

    # ------------------------------------------------------------------ jobs

    def _send(self, message: Any, *, now: bool = True) -> bool:
        """Send ``message``; with ``now=False`` it waits for the next :meth:`_flush`."""
        conn = self._conn
        if conn is None:
            return False
        try:
            if now:
                conn.send_nowait(message)
            else:
                conn.queue_nowait(message)
        except (ConnectionClosed, SendBufferFull):
            return False
        return True

    def _flush(self) -> None:
        conn = self._conn
        if conn is not None:
            conn.flush()

    def _on_assign(self, msg: Assign, now: float) -> None:
        job_id = msg.job_id
        if job_id in self.running:
            # Redelivered while still running here (e.g. across a reconnect): the running
            # task answers for both.
            self.duplicates += 1
            if job_id in self._orphans:
                self._orphan_settled(job_id)
            return
        stored = self.finished.get(job_id, now)
        if stored is not None:
            self.duplicates += 1
            conn = self._conn
            if conn is not None:
                try:
                    conn.queue_item(
                        _outcome_item(self._next_mid(), msg.mid, job_id, msg.attempt, stored)
                    )
                    conn.flush()
                except (ConnectionClosed, SendBufferFull, MessageTooLarge):
                    pass  # lost meanwhile, or the leader's limit changed: it asks again
            return
        if len(self.running) >= self.concurrency:
            self.credit_violations += 1
            self._send(
                Nack(
                    mid=self._next_mid(),
                    cid=msg.mid,
                    job_id=job_id,
                    delay=0.0,
                    reason="no free slot",
                )
            )
            return
        deadline = msg.deadline
        try:
            payload, bad = decode_payload(msg.payload), None
        except InvalidPayload as exc:  # the submitter's bytes: this job fails for good, at once
            payload, bad = None, exc
        job = Job(
            job_id,
            msg.subject,
            payload,
            msg.headers,
            attempt=msg.attempt,
            qos=msg.qos,
            deadline=None if deadline is None else now + deadline,
            max_attempts=msg.max_attempts,
            report=self._report_progress,
        )
        self.running[job_id] = job
        if len(self.running) > self.max_running:
            self.max_running = len(self.running)
        if bad is not None:
            failure = Failure("InvalidPayload", error_text(bad), final=True)
            self._failure_log.failed(job, failure)
            self._finish(job, msg.mid, (False, failure))
            return
        self._queue.append((job, msg.mid))
        if not self._waking:
            self._wake_slot()

    def _wake_slot(self) -> None:
        """Get one more slot going for the queue: an idle one, or a new one.

        One slot at a time is woken: it takes the next job and, if more are queued when
        that job is about to wait, wakes the next slot (a chain). A batch of jobs that
        finish without waiting so costs one task switch instead of one per job, and jobs
        that do wait still each get a slot, one scheduling round later.
        """
        if self._idle_slots:
            self._waking = True
            self._slot_lot.unpark()
        elif self._slots < self.concurrency:
            self._waking = True
            self._slots += 1
            assert self._nursery is not None
            self._nursery.start_soon(self._slot)

    async def _slot(self) -> None:
        """Run queued jobs, one at a time, until cancelled with the worker."""
        queue = self._queue
        handle = self._handle
        run_job = self._run_job
        before_wait = self._before_wait
        self._waking = False  # this slot was the one started
        while True:
            while not queue:
                self._flush()  # what this run of jobs finished goes out now
                self._idle_slots += 1
                try:
                    await self._slot_lot.park()
                finally:
                    self._idle_slots -= 1
                self._waking = False  # this slot was the one woken
            # One scope for a run of jobs; cancelling a job ends it, the next gets a new one.
            with trio.CancelScope() as scope:
                while queue:
                    job, cid = queue.popleft()
                    if job._cancelled:  # cancelled while queued
                        self._finish(job, cid, None)
                        continue
                    job._scope = scope
                    outcome: tuple[bool, Any] | None = None
                    try:
                        coro = handle(job)
                        if job.deadline is not None:
                            # In a scope of its own, that its deadline cancels: awaited
                            # whole, as a job that waits is (its submit named a timeout).
                            before_wait()
                            value = await until_deadline(job, coro)
                        elif type(coro) is CoroutineType:
                            # (stepped: a job that finishes without waiting needs neither
                            # another slot nor a flush; see _handlers.stepped, whose first
                            # step is written out here: most jobs end in it, and a
                            # generator per job would cost them about 4 % of the worker)
                            if run_job is stepped:
                                try:
                                    trap = coro.send(None)
                                except StopIteration as done:
                                    value = done.value
                                else:
                                    before_wait()
                                    value = await resume(coro, trap)
                            else:
                                value = await run_job(coro, before_wait)
                        else:  # in a thread: it waits
                            before_wait()
                            value = await coro
                    except BaseException as exc:  # the user's code failed: the job, not the worker
                        if must_propagate(exc):
                            raise
                        outcome = (False, self._job_failed(job, exc))
                    else:
                        outcome = (True, value)
                    finally:
                        job._scope = None
                        self._finish(job, cid, outcome)
                    if job._cancelled:  # its scope may be cancelled: not the next job's scope
                        break

    def _before_wait(self) -> None:
        """The job of a slot is about to wait: the next queued job gets a slot, and the
        results finished so far are written out (not held back while it waits)."""
        if self._queue and not self._waking:
            self._wake_slot()
        self._flush()

    def _finish(self, job: Job, cid: int, outcome: tuple[bool, Any] | None) -> None:
        """A job ended (``outcome``: ``(True, value)``, ``(False, Failure)``, or None for
        cancelled): free its place, check the limits, answer the leader. Never raises: a
        bug here ends the connection, not the slot."""
        del self.running[job.id]
        if self._idle is not None and not self.running:
            self._idle.set()
        try:
            if self._orphans and job.id in self._orphans:
                self._orphan_settled(job.id)
            self._count_handled()  # a recycle sends its Credit 0 before this job's answer
            self._answer(job, cid, outcome)
        except Exception as exc:  # a bug: see _connection_failed
            self._connection_failed(exc, f"answering job {job.id}")

    def _job_failed(self, job: Job, exc: BaseException) -> Failure:
        """The handler of ``job`` raised ``exc``: log it, and say how the job failed."""
        failure = failure_of(exc, self.never_retry)
        self._failure_log.failed(job, failure, exc)
        return failure

    def _answer(self, job: Job, cid: int, outcome: tuple[bool, Any] | None) -> None:
        if outcome is None:  # cancelled by the leader (ack timeout, finished elsewhere)
            self._send(Nack(mid=self._next_mid(), job_id=job.id, reason="cancelled"), now=False)
            return
        ok, value = outcome
        kind = type(value).__name__  # (the return value's, for a failure to send it)
        if ok:
            try:
                # Encoded once, here: a return value with no CBOR encoding fails here, and
                # only here; the finished cache keeps the bytes (a redelivery re-sends them).
                value = Encoded.of(value)
            except ValueError as exc:
                ok, value = False, self._unsendable(job, outcome, exc, kind)
            outcome = (ok, value)
        mid = self._next_mid()
        conn = self._conn
        if ok:  # (the common case, without a call: as _outcome_item does)
            item = _result_item(
                mid=mid, cid=cid, job_id=job.id, payload=value, attempts=job.attempt
            )
        else:
            item = _outcome_item(mid, cid, job.id, job.attempt, outcome)
        try:
            if conn is not None:
                conn.queue_item(item)  # flushed by the slot (see the module's docstring)
        except ConnectionClosed:
            pass  # (the leader redelivers it; the finished cache below answers then)
        except SendBufferFull:
            # A large result while the buffer holds others: sent once there is room (a
            # task of its own: this slot goes on), not dropped to an ack timeout.
            if self._nursery is not None:
                self._nursery.start_soon(self._send_when_room, conn, item)
        except MessageTooLarge as exc:
            ok, value = False, self._unsendable(job, outcome, exc, kind)
            outcome = (False, value)
            if conn is not None:
                try:
                    conn.queue_item(_outcome_item(mid, cid, job.id, job.attempt, outcome))
                except (ConnectionClosed, SendBufferFull, MessageTooLarge):
                    pass
        if ok:
            self.completed += 1
        else:
            self.failed += 1
            if not value.final:
                return  # it runs again when redelivered
        # Remembered, to answer a redelivery: a success, and a final failure (running the
        # job again would only fail the same way, or nobody waits for it any more).
        self.finished.add(job.id, self._clock(), outcome)

    @staticmethod
    async def _send_when_room(conn: Any, item: list[Any]) -> None:
        """Send a Result that found the outgoing buffer full, waiting for room as long
        as the connection lives (a connection that ends loses it: it is redelivered)."""
        try:
            await conn.send(message_of(item), timeout=math.inf)
        except (ConnectionClosed, SendBufferFull):
            pass

    def _unsendable(
        self, job: Job, outcome: tuple[bool, Any], exc: Exception, kind: str
    ) -> Failure:
        """The failure to send instead of ``outcome``, whose Result queueing refused with
        ``exc`` (a :class:`MessageTooLarge`, or a ``ValueError``: no CBOR encoding);
        ``kind`` names the type of the job's return value."""
        ok, value = outcome
        if not ok:  # a failure, too large with its traceback for the leader's frame limit
            return attrs.evolve(value, traceback=None)
        if isinstance(exc, MessageTooLarge):
            failure = Failure(
                "ResultTooLarge",
                f"job {job.id}: its result, of type {kind}, encodes to {exc.size} bytes, "
                f"over the frame limit of {exc.limit} bytes",
                final=True,
            )
        else:
            failure = Failure(
                "ResultNotSerializable",
                f"job {job.id}: its result, of type {kind}, has no CBOR encoding ({exc})",
                final=True,
            )
        self._failure_log.failed(job, failure)
        return failure

    def _report_progress(self, job_id: str, fraction: float | None, note: str | None) -> None:
        self._send(Progress(mid=self._next_mid(), job_id=job_id, fraction=fraction, note=note))

    def _on_deliver(self, msg: Deliver) -> None:
        if len(self.running) >= self.concurrency + MAX_PENDING_DELIVERIES:
            self.dropped += 1
            return
        try:
            payload, bad = decode_payload(msg.payload), None
        except InvalidPayload as exc:
            payload, bad = None, exc
        job = Job(f"deliver-{msg.mid}", msg.subject, payload, msg.headers, qos=0, published=True)
        if bad is not None:  # a publisher's bytes: dropped (at most once), logged
            self.dropped += 1
            self._failure_log.failed(job, Failure("InvalidPayload", error_text(bad), final=True))
            return
        self.deliveries += 1
        assert self._nursery is not None
        self._nursery.start_soon(self._run_delivery, job)

    async def _run_delivery(self, job: Job) -> None:
        try:
            await self._handle(job)
        except BaseException as exc:  # at most once: a failing subscriber does not stop the worker
            if must_propagate(exc):
                raise
            self.failed += 1
            self._job_failed(job, exc)
        self._count_handled()

    def _blame(self, frame: types.FrameType) -> str | None:
        """Which of this runner's jobs the loop's thread is running (``frame`` is its
        innermost frame), in words for the watchdog; None if none is.

        Called in the watchdog's thread while the loop is held: it only reads frames.
        """
        where = frame
        while frame is not None:
            if frame.f_code in _JOB_RUNNERS:
                found = frame.f_locals
                if found.get("self") is not self:
                    return None  # another worker's job (workers in process share a loop)
                job = found.get("job")
                if not isinstance(job, Job):
                    return None
                code = where.f_code
                return (
                    f"job {job.id} ({job.subject}), in {type(self.worker).__qualname__}.handle "
                    f"at {code.co_filename}:{where.f_lineno} ({code.co_name}),"
                )
            frame = frame.f_back  # type: ignore[assignment]
        return None


#: The runner's frames whose ``job`` local is the job they run (see WorkerRunner._blame).
_JOB_RUNNERS = frozenset({WorkerRunner._slot.__code__, WorkerRunner._run_delivery.__code__})


def _outcome_item(
    mid: int, cid: int | None, job_id: str, attempts: int, outcome: tuple[bool, Any]
) -> list[Any]:
    """The Result bundle item that answers a job with ``outcome`` (``(True, value)`` or
    ``(False, Failure)``). Every field is of a checked type (the job's from a validated
    Assign): no checks, and no Result object either."""
    ok, value = outcome
    if ok:
        return _result_item(mid=mid, cid=cid, job_id=job_id, payload=value, attempts=attempts)  # type: ignore[no-any-return]
    return _result_item(  # type: ignore[no-any-return]
        mid=mid, cid=cid, job_id=job_id, ok=False, error_type=value.error_type,
        error_message=value.message, attempts=attempts, final=value.final, traceback=value.traceback,
    )  # fmt: skip


async def run_worker(
    worker: Worker,
    url: str | Sequence[str],
    *,
    name: str | None = None,
    group: str | None = None,
    policy: str = RoutingPolicy.ROUND_ROBIN,
    mode: str = GroupMode.ROUND_ROBIN,
    subjects: Sequence[str] | None = None,
    concurrency: int | None = None,
    max_memory: int | str | None = None,
    max_jobs: int | None = None,
    ssl_context: ssl.SSLContext | None = None,
    token: TokenSource = None,
    stop: trio.Event | None = None,
    drain_grace: float = 30.0,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> str | None:
    """Connect ``worker`` to the leader at ``url`` and serve jobs.

    Reconnects with backoff whenever the leader goes away. ``url`` may name several
    leaders sharing one job store (a comma-separated ``str``, or a list or tuple of
    URLs): the worker connects to the first and, when it cannot or loses the connection,
    tries the next at once, round the list (see :func:`runtime.run_reconnecting`). ``task_status.started()`` is
    called after the first Welcome. Returns after ``stop`` is set and the worker drained,
    or after it recycled itself (past ``max_memory`` or ``max_jobs``, which override the
    class's) and drained (see :meth:`WorkerRunner.run`); runs until cancelled otherwise.

    ``token`` is a ``str``, or a token provider (a callable returning the token, or an
    awaitable of it) called for every connection attempt, so that a rotated token is used
    from the next reconnect on; a provider that raises fails that attempt, logged and
    retried with backoff. ``ssl_context``: see :func:`actors.client_ssl_context`.

    Returns:
      Why the worker recycled itself (``"handled 1000 jobs (max_jobs)"``), or None after
      a drain that ``stop`` asked for.

    Raises:
      ValueError: bad subjects, concurrency, policy, mode, max_memory or max_jobs; a URL
        that is not a transport URL (naming it, before any attempt).
      runtime.HandshakeError: the leader refused the Hello for good: ``auth_failed`` for
        a static token (for a provider: before the first Welcome, when it gives again the
        token refused), ``not_permitted`` (subjects this identity may not serve),
        ``conflict``...
    """
    runner = WorkerRunner(
        worker,
        url,
        name=name,
        group=group,
        policy=policy,
        mode=mode,
        subjects=subjects,
        concurrency=concurrency,
        max_memory=max_memory,
        max_jobs=max_jobs,
        ssl_context=ssl_context,
        token=token,
    )
    await runner.run(stop=stop, drain_grace=drain_grace, task_status=task_status)
    return runner.recycled
