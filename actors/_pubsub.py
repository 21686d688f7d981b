"""Publish/subscribe routing, sans-I/O: subscriptions, queue groups, retained messages.

A mixin of :class:`~actors.Broker`. Delivery is at most once: a message goes to every
plain subscription, to one member of each queue group, to every broadcast-mode worker
and to one worker of each round-robin group; the last message of a subject can be
retained and is replayed to later subscribers.
"""

from __future__ import annotations

from typing import Any

from protocol import Ack, Deliver, Publish, Subscribe, Unsubscribe, subject_matches

from ._links import ClientLink, Subscription, WorkerLink


class PubSub:
    """The publish/subscribe half of the broker (see :class:`~actors.Broker`)."""

    config: Any
    retained: dict[str, tuple[Any, dict[str, str]]]
    sub_index: Any
    worker_index: Any
    _queue_rr: dict[str, int]

    def publish(self, client: ClientLink | WorkerLink, msg: Publish, now: float) -> None:
        """Broadcast a message: every plain subscription, one member per queue group,
        every broadcast-mode worker, one worker of each round-robin group."""
        if msg.retain:
            retained = self.retained
            retained.pop(msg.subject, None)
            if len(retained) >= self.config.max_retained:
                del retained[next(iter(retained))]
            retained[msg.subject] = (msg.payload, msg.headers)
        self._route_publish(msg.subject, msg.payload, msg.headers, now)
        if msg.qos == 1:
            client.send(Ack(mid=client.next_mid(), cid=msg.mid))

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
        for name, members in groups.items():
            i = self._queue_rr.get(name, 0) % len(members)
            self._queue_rr[name] = i + 1
            chosen = members[i]
            if isinstance(chosen, Subscription):
                self._deliver(chosen.link, chosen.sid, subject, payload, headers)
            else:
                self._deliver(chosen, 0, subject, payload, headers)

    @staticmethod
    def _deliver(link: Any, sid: int, subject: str, payload: Any, headers: dict[str, str], retained: bool = False) -> None:
        link.send(
            Deliver(
                mid=link.next_mid(), sid=sid, subject=subject, payload=payload, headers=headers, retained=retained
            )
        )

    def subscribe(self, client: ClientLink, msg: Subscribe, now: float) -> None:
        """Add a subscription and replay the retained messages it matches."""
        old = client.subscriptions.pop(msg.sid, None)
        if old is not None:
            self.sub_index.remove(old.pattern, old)
        sub = Subscription(client, msg.sid, msg.pattern, msg.queue)
        client.subscriptions[msg.sid] = sub
        self.sub_index.add(msg.pattern, sub)
        if self.retained:
            for subject, (payload, headers) in list(self.retained.items()):
                if subject_matches(msg.pattern, subject):
                    self._deliver(client, msg.sid, subject, payload, headers, retained=True)

    def unsubscribe(self, client: ClientLink, msg: Unsubscribe) -> None:
        """End a subscription (unknown sids are ignored)."""
        sub = client.subscriptions.pop(msg.sid, None)
        if sub is not None:
            self.sub_index.remove(sub.pattern, sub)
