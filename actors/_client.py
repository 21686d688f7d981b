"""The Client: submit jobs, map over many, publish and subscribe, over one connection.

Every call shares one connection and is pipelined: ``submit`` queues a Submit frame and
waits for the Result that carries its ``cid``. The client reconnects with backoff when
the connection drops and then resends every QoS 1 submit still waiting, under the same
job id: the leader merges it with the running job or answers from its stored results,
so each call gets its result exactly once. Subscriptions are renewed too.
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
import ssl
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator
from contextlib import asynccontextmanager
from typing import Any

import attrs
import trio

from protocol import (
    SUPPORTED_VERSIONS,
    Ack,
    Cancel,
    Deliver,
    Error,
    ErrorCode,
    Hello,
    Progress,
    Result,
    Submit,
    Subscribe,
)
from runtime import Backoff, Connection, ConnectionClosed, run_reconnecting

from ._call import Call, until_settled
from ._client_errors import (
    Busy,
    ConnectionLost,
    DeadLettered,
    JobCancelled,
    JobFailed,
    RemoteError,
    SubmitTimeout,
)
from ._client_pubsub import ClientPubSub
from ._subscription import Message, Subscription

_submit_checked = Submit.checked


class Client(ClientPubSub):
    """A connection to a leader for submitting jobs and publishing messages.

    Build it with :meth:`connect`::

        async with Client.connect("tcp://127.0.0.1:7700") as client:
            result = await client.submit("math.square", {"n": 7})

    Publish and subscribe come from :class:`~actors._client_pubsub.ClientPubSub`.
    """

    def __init__(
        self,
        url: str,
        *,
        name: str = "client",
        ssl_context: ssl.SSLContext | None = None,
        token: str | None = None,
        reconnect_backoff: Backoff | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.url = url
        self.name = name
        self.ssl_context = ssl_context
        self.token = token
        self.backoff = reconnect_backoff or Backoff(base=0.1, factor=2.0, cap=5.0, jitter=0.2)
        self.rng = rng
        #: Connections made so far (more than 1 after a reconnect).
        self.connects = 0
        #: Result frames received, and those that answered no waiting call (a result for
        #: a call already settled or abandoned: counted, never delivered twice).
        self.results_received = 0
        self.stray_results = 0
        self._conn: Connection | None = None
        self._connected = trio.Event()
        self._mids = itertools.count(1)
        self._calls: dict[int, Call] = {}  # by the mid of the frame on the current connection
        self._progress: dict[str, Call] = {}
        self._subs: dict[int, Subscription] = {}
        self._sids = itertools.count(1)
        # Job ids: a random prefix per client and a counter (cheaper than a uuid per job).
        self._id_prefix = uuid.uuid4().hex[:16]
        self._job_numbers = itertools.count(1)

    @classmethod
    @asynccontextmanager
    async def connect(
        cls,
        url: str,
        *,
        name: str = "client",
        ssl_context: ssl.SSLContext | None = None,
        token: str | None = None,
        connect_timeout: float = 10.0,
        reconnect_backoff: Backoff | None = None,
    ) -> AsyncIterator[Client]:
        """Connect to the leader at ``url``; reconnect whenever the connection drops.

        Raises:
          ConnectionLost: no connection could be made within ``connect_timeout``.
        """
        client = cls(url, name=name, ssl_context=ssl_context, token=token, reconnect_backoff=reconnect_backoff)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client._run)
            with trio.move_on_after(connect_timeout):
                await client._connected.wait()
            if not client._connected.is_set():
                nursery.cancel_scope.cancel()
                raise ConnectionLost(f"could not connect to {url} within {connect_timeout} s")
            try:
                yield client
            finally:
                nursery.cancel_scope.cancel()

    # ------------------------------------------------------------------ connection

    async def _run(self) -> None:
        await run_reconnecting(
            self.url,
            self._session,
            hello_factory=lambda: Hello(
                mid=next(self._mids),
                role="client",
                name=self.name,
                versions=SUPPORTED_VERSIONS,
                token=self.token,
            ),
            backoff=self.backoff,
            rng=self.rng,
            ssl_context=self.ssl_context,
        )

    async def _session(self, conn: Connection) -> None:
        self.connects += 1
        calls = list(self._calls.values())
        self._calls = {}
        for call in calls:  # resend what is still waiting, under the same job ids
            self._transmit(conn, call)
        for sub in self._subs.values():
            conn.send_nowait(Subscribe(mid=next(self._mids), sid=sub.sid, pattern=sub.pattern, queue=sub.queue))
        self._conn = conn
        self._connected.set()
        try:
            await conn.dispatch_to(self._on_batch)  # the reader task runs it
        finally:
            self._conn = None
            self._connected = trio.Event()
            for mid, call in list(self._calls.items()):
                if call.message.qos == 0:  # at most once: never sent again
                    del self._calls[mid]
                    self._settle(call, error=ConnectionLost(f"connection to {self.url} lost"))

    def _transmit(self, conn: Connection, call: Call) -> None:
        if call.sent:  # a resend (reconnect, busy): a fresh mid on this connection
            call.message = attrs.evolve(call.message, mid=next(self._mids))
        call.sent = True
        message = call.message
        self._calls[message.mid] = call
        conn.send_nowait(message)

    def _on_batch(self, batch: list[Any]) -> None:
        for msg in batch:
            self._dispatch(msg)

    def _dispatch(self, msg: Any) -> None:
        kind = type(msg)
        if kind is Result:
            self.results_received += 1
            call = self._calls.pop(msg.cid, None)
            if call is None:
                self.stray_results += 1
                return
            self._progress.pop(msg.job_id, None)
            if msg.ok:
                self._settle(call, outcome=msg.payload)
            else:
                if msg.error_type == "Cancelled":  # the leader's word for a cancelled job
                    error_cls = JobCancelled
                else:
                    error_cls = DeadLettered if call.message.qos == 1 else JobFailed
                self._settle(
                    call,
                    error=error_cls(msg.job_id, msg.error_type or "Error", msg.error_message or "", msg.attempts),
                )
        elif kind is Deliver:
            sub = self._subs.get(msg.sid)
            if sub is not None:
                sub._push(Message(msg.subject, msg.payload, msg.headers, msg.retained))
        elif kind is Progress:
            call = self._progress.get(msg.job_id)
            if call is not None and call.on_progress is not None:
                call.on_progress(msg.fraction, msg.note)
        elif kind is Ack:
            call = self._calls.pop(msg.cid, None) if msg.cid is not None else None
            if call is not None:
                self._settle(call, outcome=None)
        elif kind is Error:
            call = self._calls.pop(msg.cid, None) if msg.cid is not None else None
            if call is None:
                return
            if msg.code == ErrorCode.BUSY:
                error: BaseException = Busy(msg.message, msg.retry_after)
            elif msg.code == ErrorCode.TIMEOUT:
                error = SubmitTimeout(msg.message)
            else:
                error = RemoteError(msg.code, msg.message)
            self._settle(call, error=error)

    @staticmethod
    def _settle(call: Call, *, outcome: Any = None, error: BaseException | None = None) -> None:
        if call.done:
            return
        call.done = True
        call.outcome = outcome
        call.error = error
        task = call.task
        if task is not None:
            call.task = None
            trio.lowlevel.reschedule(task)
        if call.channel is not None:
            call.channel.send_nowait(call)

    def _start(self, call: Call) -> None:
        conn = self._conn
        if conn is None:  # sent when the connection is back
            self._calls[-next(self._mids)] = call
            return
        try:
            self._transmit(conn, call)
        except ConnectionClosed:
            pass  # _session's clean-up or the next session takes it from self._calls

    # ------------------------------------------------------------------ jobs

    def _submit_call(
        self,
        subject: str,
        payload: Any,
        *,
        qos: int,
        timeout: float | None,
        job_id: str | None,
        headers: dict[str, str] | None,
        max_attempts: int | None,
    ) -> Call:
        return Call(  # the constructor validates the arguments now
            _submit_checked(
                mid=next(self._mids),
                job_id=job_id or f"{self._id_prefix}-{next(self._job_numbers)}",
                subject=subject,
                payload=payload,
                headers=headers or {},
                qos=qos,
                timeout=timeout,
                max_attempts=max_attempts,
            )
        )

    async def submit(
        self,
        subject: str,
        payload: Any = None,
        *,
        qos: int = 1,
        timeout: float | None = None,
        job_id: str | None = None,
        headers: dict[str, str] | None = None,
        max_attempts: int | None = None,
        on_progress: Callable[[float | None, str | None], None] | None = None,
    ) -> Any:
        """Submit a job and wait for its result.

        Args:
          subject: where to send it (no wildcards).
          payload: any CBOR value.
          qos: 1 (default) at least once, redelivered until it succeeds or runs out of
            attempts; 0 at most once.
          timeout: seconds to wait for the result (also the job's deadline at the leader:
            if no worker took it by then, it is dropped).
          job_id: the job's id (default: a random per-client prefix and a counter). Submitting an id again returns
            the stored result of the finished job, or joins the running one.
          headers: str to str metadata (``key`` routes sticky groups).
          max_attempts: deliveries before the job is dead-lettered.
          on_progress: called with ``(fraction, note)`` when the worker reports progress.

        Returns:
          The job's result.

        Raises:
          JobFailed: the job failed (``DeadLettered`` for QoS 1 after its last attempt).
          Busy: the leader's queue is full; ``retry_after`` says when to try again.
          SubmitTimeout: no result within ``timeout``.
          ConnectionLost: a QoS 0 job's connection dropped.
          ValueError, TypeError: bad subject, headers or qos.
        """
        call = self._submit_call(
            subject, payload, qos=qos, timeout=timeout, job_id=job_id, headers=headers, max_attempts=max_attempts
        )
        call.on_progress = on_progress
        if on_progress is not None:
            self._progress[call.message.job_id] = call
        self._start(call)
        try:
            if timeout is None:
                await until_settled(call)
            else:
                with trio.fail_after(timeout):
                    await until_settled(call)
        except trio.TooSlowError:
            raise SubmitTimeout(f"no result for job {call.message.job_id} within {timeout} s") from None
        finally:
            if not call.done:
                self._forget(call)
        if call.error is not None:
            raise call.error
        return call.outcome

    def _forget(self, call: Call) -> None:
        call.done = True
        for mid, other in list(self._calls.items()):
            if other is call:
                del self._calls[mid]
        self._progress.pop(call.message.job_id, None)

    async def request(self, subject: str, payload: Any = None, *, timeout: float = 5.0, headers: dict[str, str] | None = None) -> Any:
        """Request/reply: a QoS 0 job (at most once, no redelivery) with a timeout."""
        return await self.submit(subject, payload, qos=0, timeout=timeout, headers=headers)

    async def cancel(self, job_id: str, reason: str = "") -> None:
        """Ask the leader to cancel a job (a running one is cancelled on its worker)."""
        await self._send(Cancel(mid=next(self._mids), job_id=job_id, reason=reason))

    async def map(
        self,
        subject: str,
        payloads: Iterable[Any] | AsyncIterable[Any],
        *,
        limit: int = 64,
        qos: int = 1,
        headers: dict[str, str] | None = None,
        max_attempts: int | None = None,
        return_exceptions: bool = False,
    ) -> AsyncIterator[Any]:
        """Submit a job per payload, at most ``limit`` at once; yield results as they complete.

        A ``Busy`` answer is retried after its ``retry_after``. A failed job raises its
        :class:`JobFailed` from the iteration, or with ``return_exceptions=True`` is
        yielded as the exception object instead.
        """
        if limit < 1:
            raise ValueError("limit must be at least 1")
        send, receive = trio.open_memory_channel[Call](limit)
        # A plain iterable is read directly (an async generator around it would be left
        # unfinished, for the garbage collector, whenever map stops early).
        source: AsyncIterator[Any] | None = None
        items: Iterator[Any] | None = None
        if isinstance(payloads, AsyncIterable):
            source = payloads.__aiter__()
        else:
            items = iter(payloads)
        outstanding = 0  # submitted, no answer yet
        exhausted = False
        # Calls answered Busy, waiting out their retry_after: (when, tie-break, call).
        delayed: list[tuple[float, int, Call]] = []
        order = itertools.count()

        async def fill() -> None:
            nonlocal outstanding, exhausted
            while not exhausted and outstanding + len(delayed) < limit:
                try:
                    payload = next(items) if items is not None else await source.__anext__()  # type: ignore[union-attr]
                except (StopIteration, StopAsyncIteration):
                    exhausted = True
                    return
                call = self._submit_call(
                    subject, payload, qos=qos, timeout=None, job_id=None, headers=headers, max_attempts=max_attempts
                )
                call.channel = send
                self._start(call)
                outstanding += 1

        try:
            await fill()
            while outstanding or delayed:
                # Take every result that is in, with one wait (a channel receive is a
                # schedule point per item), start their replacements, then hand them out.
                ready: list[Call] = []
                with trio.move_on_at(delayed[0][0] if delayed else math.inf):
                    ready.append(await receive.receive())
                while True:
                    try:
                        ready.append(receive.receive_nowait())
                    except trio.WouldBlock:
                        break
                outstanding -= len(ready)
                now = trio.current_time()
                while delayed and delayed[0][0] <= now:
                    call = heapq.heappop(delayed)[2]
                    call.done = False
                    call.error = None
                    self._start(call)
                    outstanding += 1
                finished = []
                for call in ready:
                    if isinstance(call.error, Busy):  # sent again after its retry_after
                        retry_at = now + (call.error.retry_after or 0.1)
                        heapq.heappush(delayed, (retry_at, next(order), call))
                    else:
                        finished.append(call)
                await fill()
                for call in finished:
                    if call.error is not None:
                        if not return_exceptions:
                            raise call.error
                        yield call.error
                    else:
                        yield call.outcome
        finally:
            # Results of abandoned calls are not wanted any more.
            for mid, call in list(self._calls.items()):
                if call.channel is send:
                    del self._calls[mid]
