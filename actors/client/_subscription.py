"""Subscriptions from the client's side: what one hands out (published messages, from a
bounded buffer), and the client's table of them (:class:`Subscriptions`).

Delivery is at most once (see :mod:`actors.leader._pubsub`, the leader's side); the client
renews its subscriptions on every reconnect.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import attrs
import trio

from protocol import Deliver, Subscribe, decode_payload


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


#: Payload types whose values cannot change: one decoded value serves every subscription.
_IMMUTABLE = frozenset({type(None), bool, int, float, str, bytes})


class Subscriptions:
    """The subscriptions of one client: by sid, and those whose Subscribe the leader has
    not answered, by that Subscribe's mid (a refusal names it). It numbers them and builds
    their Subscribe messages; the client sends them."""

    def __init__(self) -> None:
        self._by_sid: dict[int, Subscription] = {}
        self._by_mid: dict[int, Subscription] = {}
        self._sids = itertools.count(1)

    def __contains__(self, sid: int) -> bool:
        return sid in self._by_sid

    def open(
        self, pattern: str, queue: str | None, max_pending: int, mid: int
    ) -> tuple[Subscription, Subscribe]:
        """A new subscription, and the Subscribe (of ``mid``) that asks the leader for it."""
        sid = next(self._sids)
        sub = Subscription(sid, pattern, queue, max_pending)
        message = Subscribe(mid=mid, sid=sid, pattern=pattern, queue=queue)
        self._by_sid[sid] = sub
        self._by_mid[mid] = sub
        sub._mid = mid
        return sub, message

    def close(self, sub: Subscription) -> None:
        """``sub`` ended (its ``async with`` block, or a refusal): forget it."""
        self._by_sid.pop(sub.sid, None)
        if sub._mid is not None:
            self._by_mid.pop(sub._mid, None)

    def renewals(self, next_mid: Callable[[], int]) -> Iterator[Subscribe]:
        """A Subscribe for each subscription, for a new connection (each a fresh mid)."""
        for sub in self._by_sid.values():
            message = Subscribe(mid=next_mid(), sid=sub.sid, pattern=sub.pattern, queue=sub.queue)
            if sub._mid is not None:
                self._by_mid.pop(sub._mid, None)
            self._by_mid[message.mid] = sub
            sub._mid = message.mid
            yield message

    def refused(self, mid: int | None, error: Exception) -> bool:
        """The leader refused the Subscribe ``mid`` with ``error``: that subscription ends,
        raising ``error`` to its reader. False if ``mid`` is no Subscribe of ours."""
        sub = self._by_mid.pop(mid, None) if mid is not None else None
        if sub is None:
            return False
        self._by_sid.pop(sub.sid, None)
        sub._fail(error)
        return True

    def targets(self, msg: Deliver) -> list[Subscription]:
        """The subscriptions ``msg`` is for (its ``sid`` and those in ``also``) that this
        client still holds (what the leader still delivers to ended ones is dropped)."""
        get = self._by_sid.get
        first = get(msg.sid)
        subs = [first] if first is not None else []
        if msg.also:
            subs += [sub for sub in map(get, msg.also) if sub is not None]
        return subs

    @staticmethod
    def push(subs: list[Subscription], msg: Deliver, payload: Any) -> None:
        """Hand the message of ``msg`` to ``subs``: ``payload`` (its value, decoded once)
        to the first, and to the others shared when it cannot change, decoded again for each
        when it can (a list, a map), as when each had a Deliver of its own."""
        first, *more = subs
        first._push(Publication(msg.subject, payload, msg.headers, msg.retained))
        if more:
            shared = type(payload) in _IMMUTABLE
            for sub in more:
                value = payload if shared else decode_payload(msg.payload)
                sub._push(Publication(msg.subject, value, dict(msg.headers), msg.retained))
