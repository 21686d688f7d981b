"""``Client.map``: a job per payload, at most ``limit`` in flight, results in input order.

:class:`JobMap` is the iterator :meth:`actors.Client.map` returns. It keeps up to ``limit``
jobs outstanding; each wait takes every result that is in, sends the jobs that replace
them, then hands the results out: in input order through a reorder buffer (at most
``limit`` results waiting for an earlier one), or as they complete, as ``(index,
result)`` pairs. A ``Busy`` answer is sent again after its ``retry_after``; a job past
its ``timeout`` fails with :class:`SubmitTimeout`.

A map left early -- ``break``, an exception, a cancellation, :meth:`JobMap.aclose` --
abandons its outstanding jobs at once (``Cancel(abandon=True)``, queued without waiting;
see :mod:`actors.client._client`). It is an iterator object rather than an async generator for
that: dropping it (``break``) runs its clean-up there and then, where a generator's would
wait for trio's finalizer, maybe until after the client closed.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator
from typing import Any, Protocol

import attrs
import trio

from ._call import Call
from ._errors import Busy, SubmitTimeout


class MapClient(Protocol):
    """What a :class:`JobMap` uses of its :class:`~actors.Client` (the client's own
    bookkeeping of outstanding calls; the map imports no client module)."""

    _calls: dict[int, Call]

    #: ``Client._submit_call``: a submit Call built and checked, not started yet.
    _submit_call: Callable[..., Call]

    def _start(self, call: Call) -> Any: ...

    #: :func:`actors.client._client.delay_of`: a Submit's delay from ``delay`` or ``at``.
    delay_of: Callable[..., float | None]

    async def _send_when_room(self, conn: Any, call: Call) -> None: ...

    def _forget(self, call: Call) -> None: ...

    def _abandon(self, call: Call, why: str) -> None: ...


#: Entries of the deadline heap (of a map with a timeout), per unit of ``limit``, past
#: which those of finished jobs are dropped.
_COMPACT_FACTOR = 4


class JobMap:
    """The results of :meth:`actors.Client.map`: ``async for`` over it.

    Also an async context manager (``async with client.map(...) as results:``) and
    :meth:`aclose`, to end it explicitly; ``break`` does the same when the map is dropped.
    An exception raised out of the iteration (a failed job, a cancellation...) ends it too.
    """

    _closed = True  # (until __init__ has run through: __del__ finds nothing to do before)

    def __init__(
        self,
        client: MapClient,
        subject: str,
        payloads: Iterable[Any] | AsyncIterable[Any],
        *,
        limit: int,
        ordered: bool,
        return_exceptions: bool,
        qos: int,
        timeout: float | None,
        headers: dict[str, str] | None,
        max_attempts: int | None,
        wait_for_worker: bool,
        detach: bool,
        delay: Any = None,
        at: Any = None,
    ) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        if timeout is not None and not timeout > 0:
            raise ValueError(f"timeout must be a number > 0, got {timeout}")
        self._client = client
        self._subject = subject
        self._limit = limit
        self._ordered = ordered
        self._return_exceptions = return_exceptions
        self._qos = qos
        self._timeout = timeout
        self._headers = headers
        self._max_attempts = max_attempts
        self._wait_for_worker = wait_for_worker
        self._detach = detach
        # The delay, checked now (``at``: a moment, so each job's delay is worked out as it
        # is sent).
        self._job_delay = delay
        self._job_at = at
        client.delay_of(delay, at, timeout)
        # A plain iterable is read directly; an async one through its iterator.
        self._items: Iterator[Any] | None = None
        self._source: AsyncIterator[Any] | None = None
        if isinstance(payloads, AsyncIterable):
            self._source = payloads.__aiter__()
        else:
            self._items = iter(payloads)
        # Settled calls arrive here (Client._settle); never more than are outstanding.
        self._send, self._receive = trio.open_memory_channel[Call](limit)
        self._outstanding = 0  # sent, not settled
        self._next_index = 0
        self._exhausted = False
        self._started = False
        # Calls answered Busy, waiting out their retry_after: (when, tie-break, call).
        self._delayed: list[tuple[float, int, Call]] = []
        # With a timeout: (deadline, tie-break, call) of the calls sent (finished ones too,
        # dropped when they come up, or compacted).
        self._expiring: list[tuple[float, int, Call]] = []
        self._order = itertools.count()
        # Ordered: finished calls waiting for an earlier one, by index; the next index due.
        self._buffer: dict[int, Call] = {}
        self._head = 0
        # Results ready to be handed out, in the order they go.
        self._ready: deque[Call] = deque()
        self._closed = False

    def __aiter__(self) -> JobMap:
        return self

    async def __anext__(self) -> Any:
        ready = self._ready
        if not ready:
            if self._closed:
                raise StopAsyncIteration
            try:
                await self._refill()
            except BaseException:
                self.close()
                raise
            if not ready:
                self.close()
                raise StopAsyncIteration
        call = ready.popleft()
        error = call.error
        if error is None:
            result = call.outcome
        elif self._return_exceptions:
            result = error
        else:
            self.close()
            raise error
        return result if self._ordered else (call.index, result)

    async def __aenter__(self) -> JobMap:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """End the map: abandon its outstanding jobs (unless ``detach``); see :meth:`close`."""
        self.close()
        await trio.lowlevel.checkpoint()

    def close(self) -> None:
        """End the map without waiting: forget its outstanding jobs and, unless it was
        made with ``detach=True``, abandon them (the leader cancels each one that no
        other client waits for). Idempotent; what was not handed out is dropped."""
        if self._closed:
            return
        self._closed = True
        self._ready.clear()
        self._buffer.clear()
        self._delayed.clear()
        self._expiring.clear()
        if not self._outstanding:
            return
        client = self._client
        send = self._send
        # Newest first: those are likely still queued at the leader, and cancelled there
        # before the running ones free their workers' slots for them.
        for key, call in reversed(list(client._calls.items())):
            if call.channel is send:
                del client._calls[key]
                call.done = True
                if not self._detach:
                    client._abandon(call, "its map was left early")

    def __del__(self) -> None:
        # ``break`` drops the map: its clean-up runs now (see the module docstring).
        if not self._closed:
            self.close()

    # ------------------------------------------------------------------ the work

    async def _refill(self) -> None:
        """Wait until some results can be handed out (in :attr:`_ready`), sending jobs to
        keep ``limit`` outstanding; return with none when every job has been handed out."""
        if not self._started:
            self._started = True
            await self._fill()
        ready = self._ready
        while not ready and (self._outstanding or self._delayed):
            await self._step()

    async def _fill(self) -> None:
        """Send jobs until ``limit`` are outstanding (or the reorder buffer is full)."""
        if self._exhausted:
            return
        room = self._limit - self._outstanding - len(self._delayed)
        held = self._limit - len(self._buffer)
        if held < room:
            room = held
        items = self._items
        client = self._client
        submit_call = client._submit_call
        timeout = self._timeout
        send = self._send
        subject, qos, headers = self._subject, self._qos, self._headers
        max_attempts, wait_for_worker = self._max_attempts, self._wait_for_worker
        at = self._job_at
        delay = None if at is not None else client.delay_of(self._job_delay, None, timeout)
        for _ in range(room):
            try:
                payload = next(items) if items is not None else await self._source.__anext__()  # type: ignore[union-attr]
            except (StopIteration, StopAsyncIteration):
                self._exhausted = True
                return
            call = submit_call(
                subject, payload, qos=qos, timeout=timeout, job_id=None, headers=headers,
                max_attempts=max_attempts, wait_for_worker=wait_for_worker,
                delay=delay if at is None else client.delay_of(None, at, timeout),
            )  # fmt: skip
            call.channel = send
            call.index = self._next_index
            self._next_index += 1
            if timeout is not None:
                call.deadline = trio.current_time() + timeout
                self._watch(call)
            full = client._start(call)
            self._outstanding += 1
            if full is not None:
                await client._send_when_room(full, call)

    async def _step(self) -> None:
        """One wait: take every result that is in (with one wait: a channel receive is a
        schedule point per item), send the jobs that replace them, queue them to go out."""
        delayed = self._delayed
        expiring = self._expiring
        wake = delayed[0][0] if delayed else math.inf
        if expiring and expiring[0][0] < wake:
            wake = expiring[0][0]
        settled: list[Call] = []
        receive = self._receive
        with trio.move_on_at(wake):
            settled.append(await receive.receive())
        while True:
            try:
                settled.append(receive.receive_nowait())
            except trio.WouldBlock:
                break
        now = trio.current_time()
        if expiring and expiring[0][0] <= now:
            self._expire(now, settled)
        self._outstanding -= len(settled)
        if delayed and delayed[0][0] <= now:
            await self._send_again(now, settled)
        ready = self._ready
        if self._ordered:
            buffer = self._buffer
            head = self._head
            for call in settled:
                error = call.error
                if error is not None and type(error) is Busy:
                    self._delay(call, error, now)
                elif call.index == head and not buffer:  # (in order: the common case)
                    ready.append(call)
                    head += 1
                else:
                    buffer[call.index] = call
            while buffer and head in buffer:
                ready.append(buffer.pop(head))
                head += 1
            self._head = head
        else:
            for call in settled:
                error = call.error
                if error is not None and type(error) is Busy:
                    self._delay(call, error, now)
                else:
                    ready.append(call)
        await self._fill()

    def _delay(self, call: Call, busy: Busy, now: float) -> None:
        """``call`` was answered Busy: send it again after its ``retry_after``."""
        heapq.heappush(self._delayed, (now + (busy.retry_after or 0.1), next(self._order), call))

    async def _send_again(self, now: float, settled: list[Call]) -> None:
        """Send again the calls answered Busy whose ``retry_after`` has passed (those past
        their deadline fail instead, into ``settled``)."""
        delayed = self._delayed
        client = self._client
        while delayed and delayed[0][0] <= now:
            call = heapq.heappop(delayed)[2]
            if call.deadline is not None:
                remaining = call.deadline - now
                if remaining <= 0:
                    call.error = self._timed_out(call)
                    settled.append(call)
                    continue
                call.message = attrs.evolve(call.message, timeout=remaining)
                self._watch(call)
            call.done = False
            call.error = None
            full = client._start(call)
            self._outstanding += 1
            if full is not None:
                await client._send_when_room(full, call)

    def _watch(self, call: Call) -> None:
        """Have :meth:`_expire` fail ``call`` at its deadline, unless settled by then."""
        expiring = self._expiring
        heapq.heappush(expiring, (call.deadline, next(self._order), call))  # type: ignore[arg-type]
        if len(expiring) > _COMPACT_FACTOR * self._limit + 64:
            self._expiring = [entry for entry in expiring if not entry[2].done]
            heapq.heapify(self._expiring)

    def _expire(self, now: float, settled: list[Call]) -> None:
        """Fail the outstanding calls whose deadline has passed (into ``settled``)."""
        expiring = self._expiring
        client = self._client
        while expiring and expiring[0][0] <= now:
            call = heapq.heappop(expiring)[2]
            if call.done:
                continue  # settled in time (or waiting out a Busy: see _step)
            client._forget(call)
            if not self._detach:
                client._abandon(call, f"its map's timeout of {self._timeout:g} s passed")
            call.error = self._timed_out(call)
            settled.append(call)

    def _timed_out(self, call: Call) -> SubmitTimeout:
        job_id = call.message.job_id
        return SubmitTimeout(f"no result for job {job_id} within {self._timeout:g} s", job_id)
