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
"""

from __future__ import annotations

import collections
import os
import random
import ssl
import types
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import trio

from protocol import (
    SUPPORTED_VERSIONS,
    Assign,
    Bye,
    Cancel,
    Credit,
    Deliver,
    Hello,
    Nack,
    Progress,
    Result,
    encode_array,
    is_valid_pattern,
)
from runtime import (
    Backoff,
    Connection,
    ConnectionClosed,
    DedupCache,
    MessageTooLarge,
    SendBufferFull,
    run_reconnecting,
)

from ._job import Job
from ._links import MODES, POLICIES

if TYPE_CHECKING:
    from ._worker import Worker

_result_item = Result.item  # type: ignore[attr-defined]

#: Published messages waiting for a free slot on a worker, at most; more are dropped
#: (pub/sub is at most once) and counted in ``WorkerRunner.dropped``.
MAX_PENDING_DELIVERIES = 1000


class WorkerRunner:
    """Connects one :class:`Worker` to a leader and runs its jobs.

    Users normally call :func:`~actors.run_worker`; the runner is exposed for tests and for
    embedding (its counters show what happened).
    """

    def __init__(
        self,
        worker: Worker,
        url: str,
        *,
        name: str | None = None,
        group: str | None = None,
        policy: str = "round_robin",
        mode: str = "round_robin",
        subjects: Sequence[str] | None = None,
        concurrency: int | None = None,
        ssl_context: ssl.SSLContext | None = None,
        token: str | None = None,
        reconnect_backoff: Backoff | None = None,
        dedup_capacity: int = 10_000,
        dedup_ttl: float = 600.0,
        rng: random.Random | None = None,
    ) -> None:
        self.worker = worker
        self.url = url
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
        self.name = name or f"{type(worker).__name__.lower()}-{os.getpid()}"
        self.group = group
        self.policy = policy
        self.mode = mode
        self.ssl_context = ssl_context
        self.token = token
        self.backoff = reconnect_backoff or Backoff(base=0.1, factor=2.0, cap=5.0, jitter=0.2)
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
        self._idle: trio.Event | None = None  # set when draining and the last job ended

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
        whatever was running.
        """
        # trio.current_time() is three calls deep; the run's clock answers the same in one.
        self._clock = trio.lowlevel.current_clock().current_time
        await self.worker.setup()
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                started = False

                async def session(conn: Connection) -> None:
                    nonlocal started
                    self._conn = conn
                    self.connects += 1
                    if not started:
                        started = True
                        task_status.started()
                    try:
                        await self._session(conn, stop, drain_grace)
                    finally:
                        self._conn = None

                await run_reconnecting(
                    self.url,
                    session,
                    hello_factory=self._hello,
                    backoff=self.backoff,
                    rng=self.rng,
                    ssl_context=self.ssl_context,
                )
                nursery.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                await self.worker.teardown()

    def _hello(self) -> Hello:
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
            token=self.token,
            meta={"policy": self.policy, "mode": self.mode, "pid": os.getpid()},
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

    async def _session(self, conn: Connection, stop: trio.Event | None, drain_grace: float) -> None:
        async with trio.open_nursery() as nursery:
            if stop is not None:
                nursery.start_soon(self._drain_on, stop, conn, drain_grace, nursery.cancel_scope)
            try:
                await conn.dispatch_to(self._on_batch)  # the reader task runs it
            except ConnectionClosed:
                if self._draining:
                    return
                raise

    def _on_batch(self, batch: list[Any]) -> None:
        now = self._clock()  # one reading for the batch: nothing runs meanwhile
        for msg in batch:
            kind = type(msg)
            if kind is Assign:
                self._on_assign(msg, now)
            elif kind is Cancel:
                job = self.running.get(msg.job_id)
                if job is not None:
                    job._cancel()
            elif kind is Deliver:
                self._on_deliver(msg)

    async def _drain_on(
        self, stop: trio.Event, conn: Connection, grace: float, session_scope: trio.CancelScope
    ) -> None:
        await stop.wait()
        self._draining = True
        self._send(Credit(mid=self._next_mid(), credit=0))
        if self.running:
            self._idle = trio.Event()
            with trio.move_on_after(grace):
                await self._idle.wait()
        for job in list(self.running.values()):
            job._cancel()  # past the grace period: the leader redelivers these
        with trio.move_on_after(1.0):
            await conn.send(Bye(mid=self._next_mid(), reason="worker draining"))
        await conn.aclose()
        session_scope.cancel()

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
            ok, payload, error_type, error_message = stored
            self._send(
                Result(
                    mid=self._next_mid(), cid=msg.mid, job_id=job_id, ok=ok, payload=payload,
                    error_type=error_type, error_message=error_message, attempts=msg.attempt,
                )
            )
            return
        if len(self.running) >= self.concurrency:
            self.credit_violations += 1
            self._send(Nack(mid=self._next_mid(), cid=msg.mid, job_id=job_id, delay=0.0, reason="no free slot"))
            return
        job = Job(
            job_id, msg.subject, msg.payload, msg.headers, attempt=msg.attempt, qos=msg.qos,
            report=self._report_progress,
        )
        self.running[job_id] = job
        if len(self.running) > self.max_running:
            self.max_running = len(self.running)
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
        handle = self.worker.handle
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
                    outcome: tuple[bool, Any, str | None, str | None] | None = None
                    try:
                        coro = handle(job)
                        if type(coro) is _Coroutine:
                            # One step here: a job that finishes without waiting needs
                            # neither another slot nor a flush; one that is about to wait
                            # gets the next job a slot and the finished results written
                            # first, then waits (still in this task).
                            try:
                                trap = coro.send(None)
                            except StopIteration as done:
                                value = done.value
                            else:
                                if queue and not self._waking:
                                    self._wake_slot()
                                self._flush()
                                value = await _resume(coro, trap)
                        else:
                            if queue and not self._waking:
                                self._wake_slot()
                            value = await coro
                    except Exception as exc:  # the user's code failed: report it, the leader retries
                        outcome = (False, None, type(exc).__name__, str(exc))
                    else:
                        outcome = (True, value, None, None)
                    finally:
                        job._scope = None
                        self._finish(job, cid, outcome)
                    if job._cancelled:  # its scope may be cancelled: not the next job's scope
                        break

    def _finish(self, job: Job, cid: int, outcome: tuple[bool, Any, str | None, str | None] | None) -> None:
        del self.running[job.id]
        if self._orphans and job.id in self._orphans:
            self._orphan_settled(job.id)
        if self._idle is not None and not self.running:
            self._idle.set()
        if outcome is None:  # cancelled by the leader (ack timeout, finished elsewhere)
            self._send(Nack(mid=self._next_mid(), job_id=job.id, reason="cancelled"), now=False)
            return
        ok, payload, error_type, error_message = outcome
        mid = self._next_mid()
        # Every field is of a checked type (the job's from a validated Assign): no checks,
        # and no Result object either (its bundle item goes straight to the connection).
        item = _result_item(
            mid=mid, cid=cid, job_id=job.id, ok=ok, payload=payload,
            error_type=error_type, error_message=error_message, attempts=job.attempt,
        )
        conn = self._conn
        try:
            try:
                if conn is not None:
                    # Flushed by the slot (see the module's docstring). Queueing encodes it:
                    # a return value with no CBOR encoding fails here, and only here.
                    conn.queue_item(item)
                elif not _plain(payload):
                    encode_array(item)  # not sent now: a trial run, to know the outcome
            except MessageTooLarge:
                raise
            except ValueError as exc:
                ok, payload = False, None
                error_type, error_message = "ResultNotSerializable", str(exc)
                item = Result.item(  # type: ignore[attr-defined]
                    mid=mid, cid=cid, job_id=job.id, ok=False,
                    error_type=error_type, error_message=error_message, attempts=job.attempt,
                )
                if conn is not None:
                    conn.queue_item(item)
        except (ConnectionClosed, SendBufferFull):
            pass
        if ok:
            self.completed += 1
            # Only successes are remembered: a failure must run again when redelivered.
            self.finished.add(job.id, self._clock(), (ok, payload, error_type, error_message))
        else:
            self.failed += 1

    def _report_progress(self, job_id: str, fraction: float | None, note: str | None) -> None:
        self._send(Progress(mid=self._next_mid(), job_id=job_id, fraction=fraction, note=note))

    def _on_deliver(self, msg: Deliver) -> None:
        if len(self.running) >= self.concurrency + MAX_PENDING_DELIVERIES:
            self.dropped += 1
            return
        self.deliveries += 1
        job = Job(f"deliver-{msg.mid}", msg.subject, msg.payload, msg.headers, qos=0, published=True)
        assert self._nursery is not None
        self._nursery.start_soon(self._run_delivery, job)

    async def _run_delivery(self, job: Job) -> None:
        try:
            await self.worker.handle(job)
        except Exception:  # at most once: a failing subscriber does not stop the worker
            self.failed += 1


_Coroutine = types.CoroutineType


@types.coroutine
def _resume(coro: Any, trap: Any) -> Any:
    """Go on running ``coro``, which yielded ``trap`` to the event loop, in the calling
    task: what the loop sends or throws back goes to ``coro``; returns what it returns."""
    while True:
        try:
            sent = yield trap
        except BaseException as exc:  # noqa: BLE001 - Cancelled and the like go to the job
            try:
                trap = coro.throw(exc)
            except StopIteration as done:
                return done.value
        else:
            try:
                trap = coro.send(sent)
            except StopIteration as done:
                return done.value


def _plain(value: Any) -> bool:
    """True for values that certainly encode to CBOR (skips the trial encoding)."""
    kind = type(value)
    if kind in (int, float, str, bytes, bool) or value is None:
        return True
    if kind is dict:
        return all(type(k) is str and type(v) in (int, float, str, bytes, bool) for k, v in value.items())
    return False

