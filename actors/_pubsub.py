"""Publish/subscribe routing, sans-I/O: subscriptions, queue groups, retained messages.

A mixin of :class:`~actors.Broker`. Delivery is at most once: a message goes to every
plain subscription, to one member of each queue group, to every broadcast-mode worker
and to one worker of each round-robin group; the last message of a subject can be
retained and is replayed to later subscribers.
"""

from __future__ import annotations

from typing import Any

from protocol import (
    BUNDLE_OVERHEAD,
    Ack,
    Deliver,
    Error,
    ErrorCode,
    Publish,
    Subscribe,
    Unsubscribe,
    encode_item,
)
from runtime import MessageTooLarge

from ._links import ClientLink, Subscription, WorkerLink
from ._retained import RetainedMessages
from ._sizes import FORWARD_RESERVE, SURELY_FITS, payload_size

#: Round-robin turn counters of queue groups kept at most (then they start again).
MAX_TURNS = 10_000


class PubSub:
    """The publish/subscribe half of the broker (see :class:`~actors.Broker`)."""

    config: Any
    retained: RetainedMessages
    sub_index: Any
    worker_index: Any
    _queue_rr: dict[str, int]

    def publish(self, client: ClientLink | WorkerLink, msg: Publish, now: float) -> None:
        """Broadcast a message: every plain subscription, one member per queue group,
        every broadcast-mode worker, one worker of each round-robin group.

        A message whose Deliver would be over the leader's frame limit is answered
        ``too_large`` and not routed; a subscriber whose own limit it does not fit misses
        it (delivery is at most once)."""
        size = payload_size(msg.payload) + len(msg.subject)
        if msg.headers:
            for key, value in msg.headers.items():
                size += len(key) + len(value) + 2
        if size > SURELY_FITS and not self._deliver_fits(msg):
            client.send(
                Error(
                    mid=client.next_mid(),
                    cid=msg.mid,
                    code=ErrorCode.TOO_LARGE,
                    message=(
                        f"message to {msg.subject} is too large to forward: over the"
                        f" leader's frame limit of {self.config.max_frame} bytes"
                    ),
                )
            )
            return
        if msg.retain:
            self._retain(msg, size)
        self._route_publish(msg.subject, msg.payload, msg.headers, now)
        if msg.qos == 1:
            client.send(Ack(mid=client.next_mid(), cid=msg.mid))

    def _deliver_fits(self, msg: Publish) -> bool:
        try:
            encoded = len(
                encode_item(
                    Deliver(mid=2**32, sid=2**32, subject=msg.subject, payload=msg.payload,
                            headers=msg.headers, retained=True)
                )
            )
        except Exception:  # (noqa: BLE001) it could not be forwarded at all
            return False
        return encoded + BUNDLE_OVERHEAD + FORWARD_RESERVE <= self.config.max_frame

    def _retain(self, msg: Publish, size: int) -> None:
        """Keep ``msg`` as its subject's last message, within the count and byte limits."""
        self.retained.put(msg.subject, msg.payload, msg.headers, size)

    def _route_publish(self, subject: str, payload: Any, headers: dict[str, str], now: float) -> None:
        groups: dict[str, list[Any]] = {}
        for sub in self.sub_index.match(subject):
            if sub.queue is None:
                self._deliver(sub.link, sub.sid, subject, payload, headers)
            else:
                groups.setdefault("q:" + sub.queue, []).append(sub)
        for worker in dict.fromkeys(self.worker_index.match(subject)):  # once per worker
            if worker.mode == "broadcast":
                self._deliver(worker, 0, subject, payload, headers)
            else:
                groups.setdefault("g:" + worker.group, []).append(worker)
        turns = self._queue_rr
        for name, members in groups.items():
            i = turns.get(name, 0) % len(members)
            if len(turns) >= MAX_TURNS and name not in turns:
                turns.clear()  # (a turn counter is only a fairness hint)
            turns[name] = i + 1
            chosen = members[i]
            if isinstance(chosen, Subscription):
                self._deliver(chosen.link, chosen.sid, subject, payload, headers)
            else:
                self._deliver(chosen, 0, subject, payload, headers)

    @staticmethod
    def _deliver(link: Any, sid: int, subject: str, payload: Any, headers: dict[str, str], retained: bool = False) -> None:
        try:
            link.send(
                Deliver(
                    mid=link.next_mid(), sid=sid, subject=subject, payload=payload, headers=headers, retained=retained
                )
            )
        except MessageTooLarge:
            pass  # over this subscriber's own frame limit: it misses this message

    def subscribe(self, client: ClientLink, msg: Subscribe, now: float) -> None:
        """Add a subscription and replay the retained messages it matches.

        A client at :attr:`BrokerConfig.max_subscriptions` is answered ``not_permitted``."""
        old = client.subscriptions.pop(msg.sid, None)
        if old is not None:
            self.sub_index.remove(old.pattern, old)
        elif len(client.subscriptions) >= self.config.max_subscriptions:
            client.send(
                Error(
                    mid=client.next_mid(),
                    cid=msg.mid,
                    code=ErrorCode.NOT_PERMITTED,
                    message=f"subscription limit reached ({self.config.max_subscriptions} per connection)",
                )
            )
            return
        sub = Subscription(client, msg.sid, msg.pattern, msg.queue)
        client.subscriptions[msg.sid] = sub
        self.sub_index.add(msg.pattern, sub)
        retained = self.retained
        if retained:
            for subject in retained.matching(msg.pattern):
                payload, headers = retained.get(subject)  # type: ignore[misc]
                self._deliver(client, msg.sid, subject, payload, headers, retained=True)

    def unsubscribe(self, client: ClientLink, msg: Unsubscribe) -> None:
        """End a subscription (unknown sids are ignored)."""
        sub = client.subscriptions.pop(msg.sid, None)
        if sub is not None:
            self.sub_index.remove(sub.pattern, sub)
