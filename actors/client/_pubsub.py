"""Publish and subscribe, from the client's side: a mixin of :class:`~actors.Client`.

Delivery is at most once (see :mod:`actors.leader._pubsub`, the leader's side); a QoS 1 publish
waits until the leader has accepted it. Subscriptions hand out their messages from a
bounded buffer (:class:`~actors.Subscription`), and the client renews them on every
reconnect.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import trio

from protocol import Deliver, Publish, Subscribe, Unsubscribe, decode_payload
from runtime import Connection, ConnectionClosed, MessageTooLarge, SendBufferFull

from ._call import Call, until_settled
from ._errors import ClientError, too_large
from ._subscription import Publication, Subscription

#: Payload types whose values cannot change: one decoded value serves every subscription.
_IMMUTABLE = frozenset({type(None), bool, int, float, str, bytes})


class ClientPubSub:
    """The publish/subscribe half of the client (see :class:`~actors.Client`)."""

    # The client's state this half reads (see Client).
    _conn: Connection | None
    _connected: trio.Event
    _mids: Any
    _sids: Any
    _subs: dict[int, Subscription]
    _subscribing: dict[int, Subscription]
    _failure: ClientError | None
    _start: Callable[[Call], Connection | None]
    _send_when_room: Callable[[Connection, Call], Awaitable[None]]

    async def _send(self, message: Any) -> None:
        """Send ``message`` once connected, and once the outgoing buffer has room for it
        (also :meth:`Client.cancel`'s way out).

        Raises:
          TooLarge: the message is over the leader's frame limit.
          ConnectionLost: the client gave up (see :class:`~actors.Client`).
        """
        while True:
            conn = self._conn
            if conn is None:
                if self._failure is not None:
                    raise self._failure
                await self._connected.wait()
                continue
            try:
                await conn.send(message, timeout=math.inf)
                return
            except ConnectionClosed:
                await trio.lowlevel.checkpoint()
            except MessageTooLarge as exc:
                raise too_large(message, exc) from None

    async def publish(
        self,
        subject: str,
        payload: Any = None,
        *,
        headers: dict[str, str] | None = None,
        retain: bool = False,
        qos: int = 0,
    ) -> None:
        """Publish to every subscriber of ``subject``.

        With ``retain=True`` the leader keeps it as the subject's last message for later
        subscribers. ``qos=1`` waits until the leader has accepted it (and sends it again
        after a reconnect until then); delivery to subscribers is at most once. A message
        that does not fit the outgoing buffer right now waits for room.

        Raises:
          TooLarge: the message is over the leader's frame limit (at once), or (``qos=1``)
            what the leader would forward is over a subscriber's.
        """
        fields = {
            "subject": subject,
            "payload": payload,
            "headers": headers or {},
            "retain": retain,
            "qos": qos,
        }
        if qos == 0:
            await self._send(Publish(mid=next(self._mids), **fields))
            return
        call = Call(Publish(mid=next(self._mids), **fields))
        full = self._start(call)
        if full is not None:
            await self._send_when_room(full, call)
        await until_settled(call)
        if call.error is not None:
            raise call.error

    def _also_subscriptions(self, msg: Deliver) -> list[Subscription]:
        """The subscriptions named in ``msg.also`` that this client still holds (the
        others ended, and what the leader still delivers to them is dropped)."""
        get = self._subs.get
        return [sub for sub in map(get, msg.also) if sub is not None]

    def _push_copies(self, subs: list[Subscription], msg: Deliver, payload: Any) -> None:
        """Hand the message of ``msg`` to more of its subscriptions, ``payload`` (its value,
        already decoded once) shared when it cannot change, decoded again for each when it
        can (a list, a map): each gets its own, as when each had a Deliver of its own."""
        shared = type(payload) in _IMMUTABLE
        for sub in subs:
            value = payload if shared else decode_payload(msg.payload)
            sub._push(Publication(msg.subject, value, dict(msg.headers), msg.retained))

    @asynccontextmanager
    async def subscribe(
        self, pattern: str, *, queue: str | None = None, max_pending: int = 1000
    ) -> AsyncIterator[Subscription]:
        """Subscribe to ``pattern`` for the duration of the ``async with`` block.

        With ``queue``, subscriptions sharing the queue name split the messages (each
        goes to one of them). Retained messages matching the pattern arrive first. If the
        leader refuses the subscription (``max_subscriptions``, or ``busy`` when its replay
        of retained messages is over the connection's allowance), receiving from it raises
        the error (:class:`Busy` with ``retry_after``, or :class:`RemoteError`).
        """
        sid = next(self._sids)
        sub = Subscription(sid, pattern, queue, max_pending)
        message = Subscribe(mid=next(self._mids), sid=sid, pattern=pattern, queue=queue)
        self._subs[sid] = sub
        self._subscribing[message.mid] = sub
        sub._mid = message.mid
        try:
            await self._send(message)
            yield sub
        finally:
            self._subs.pop(sid, None)  # (already gone if the leader refused it)
            self._subscribing.pop(sub._mid, None)
            conn = self._conn
            if conn is not None:
                try:
                    conn.send_nowait(Unsubscribe(mid=next(self._mids), sid=sid))
                except (ConnectionClosed, SendBufferFull):
                    pass  # (what the leader still delivers to ``sid`` is dropped here)
