"""Helpers shared by the test modules: virtual time, a hand-driven peer, bounded waits.

- :class:`Stopwatch`: seconds since it was made, for exact virtual times under the
  autojump clock (whose time need not start at 0).
- :class:`RawPeer`: the far end of a stream, speaking frames by hand.
- :class:`Changes`, :class:`Tally`: a test double's notice of its own changes (jobs
  started, finished ...) that a test waits on, instead of polling the code under test.
- :func:`wait_until`: the one bounded wait for a condition that nothing signals (the state
  of another process, or a leader's statistics in a real-time end-to-end test). Where the
  code under test or a test double can signal, a test waits for that signal instead, or
  for :func:`trio.testing.wait_all_tasks_blocked` under the mock clock.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable

import trio

import protocol

#: How often :func:`wait_until` looks (real time: short enough to add little latency).
POLL_INTERVAL = 0.01


class Stopwatch:
    """Virtual seconds since it was made (the test's clock may not start at 0)."""

    def __init__(self) -> None:
        self.start = trio.current_time()

    def __call__(self) -> float:
        return trio.current_time() - self.start


class RawPeer:
    """The other end of a stream, speaking frames by hand."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.decoder = protocol.FrameDecoder()
        self.backlog: list[protocol.Message] = []

    async def send(self, *messages: protocol.Message) -> None:
        await self.stream.send_all(b"".join(protocol.encode(m) for m in messages))

    async def receive(self) -> protocol.Message:
        while not self.backlog:
            data = await self.stream.receive_some(65536)
            if not data:
                raise EOFError
            self.backlog += self.decoder.feed(data)
        return self.backlog.pop(0)

    async def expect_eof(self) -> None:
        try:
            message = await self.receive()
        except EOFError:
            return
        raise AssertionError(f"expected EOF, got {message!r}")


class Changes:
    """Notice of the changes a test double makes to its own state: the double calls
    ``changes.notify()`` after each, the test ``await changes.wait_for(predicate)``."""

    def __init__(self) -> None:
        self._event = trio.Event()

    def notify(self) -> None:
        self._event.set()
        self._event = trio.Event()

    async def wait_for(self, predicate: Callable[[], bool]) -> None:
        """Return once ``predicate()`` is true (checked now and after each notice)."""
        while not predicate():
            await self._event.wait()


class Tally:
    """A count that a test can wait for: ``tally.add()`` in a test double (a worker's
    handler, a fake connection), ``await tally.reach(n)`` in the test."""

    def __init__(self) -> None:
        self.value = 0
        self._changes = Changes()

    def add(self, n: int = 1) -> None:
        self.value += n
        self._changes.notify()

    async def reach(self, count: int) -> None:
        """Return once the count is ``count`` or more."""
        await self._changes.wait_for(lambda: self.value >= count)


async def wait_until(
    predicate: Callable[[], bool | Awaitable[bool]],
    *,
    timeout: float,
    what: str | None = None,
    interval: float = POLL_INTERVAL,
) -> None:
    """Wait until ``predicate()`` (a plain or an async function) is true, looking every
    ``interval`` seconds.

    Only for conditions that no event announces: another process's doing, or a leader's
    statistics seen from an end-to-end test.

    Raises:
      AssertionError: not true after ``timeout`` seconds; the message names ``what`` (or
        the predicate's source) and the time waited.
    """
    deadline = trio.current_time() + timeout
    while True:
        outcome = predicate()
        if inspect.isawaitable(outcome):
            outcome = await outcome
        if outcome:
            return
        if trio.current_time() >= deadline:
            raise AssertionError(
                f"still not true after {timeout} s: {what or _describe(predicate)}"
            )
        await trio.sleep(interval)


def _describe(predicate: Callable[..., object]) -> str:
    try:
        return inspect.getsource(predicate).strip()
    except (OSError, TypeError):
        return repr(predicate)
