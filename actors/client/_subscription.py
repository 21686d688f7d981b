"""What a subscription hands out: published messages, from a bounded buffer."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import attrs
import trio


@attrs.frozen
class Publication:
    """A published message received by a subscription."""

    subject: str
    payload: Any
    headers: dict[str, str]
    retained: bool = False


class Subscription:
    """An active subscription: iterate it for messages (``async for msg in sub``).

    Messages wait in a bounded buffer (``max_pending``); when it is full, new ones are
    dropped (pub/sub is at most once) and counted in :attr:`dropped`.

    A subscription the leader refuses (``busy`` for a replay of retained messages over
    the connection's allowance, ``not_permitted`` past ``max_subscriptions``...) ends:
    :meth:`receive` and iteration raise the error (:attr:`error`), after any message that
    arrived before it.
    """

    def __init__(self, sid: int, pattern: str, queue: str | None, max_pending: int) -> None:
        self.sid = sid
        self.pattern = pattern
        self.queue = queue
        self.dropped = 0
        #: Why the leader refused this subscription, once it has (see the class docstring).
        self.error: Exception | None = None
        #: The mid of the Subscribe last sent for it (the leader's refusal names it).
        self._mid: int | None = None
        self._send, self._receive = trio.open_memory_channel[Publication](max_pending)

    def _push(self, message: Publication) -> None:
        try:
            self._send.send_nowait(message)
        except trio.WouldBlock:
            self.dropped += 1

    def _fail(self, error: Exception) -> None:
        """The leader refused it: no more messages; receiving raises ``error``."""
        self.error = error
        self._send.close()

    async def receive(self) -> Publication:
        """The next message.

        Raises:
          Busy, RemoteError...: the leader refused the subscription (:attr:`error`).
        """
        try:
            return await self._receive.receive()
        except trio.EndOfChannel:
            if self.error is not None:
                raise self.error from None
            raise

    def __aiter__(self) -> AsyncIterator[Publication]:
        return self

    async def __anext__(self) -> Publication:
        try:
            return await self._receive.receive()
        except trio.EndOfChannel:
            if self.error is not None:
                raise self.error from None
            raise StopAsyncIteration from None
