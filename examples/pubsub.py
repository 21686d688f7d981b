"""Publish/subscribe: a broadcast group, a plain subscription, a queue group, a retained event.

Who gets a published message:

- every plain subscription whose pattern matches it (``client.subscribe("events.>")``);
- one member of each queue group (``client.subscribe(..., queue="billing")``): the members
  split the load between them;
- every instance of a worker group in ``broadcast`` mode (the :class:`Audit` workers here:
  each instance gets its own copy of every event);
- one instance of each ordinary (``round_robin``) group whose subjects match.

A message published with ``retain=True`` is also kept as its subject's last message and
replayed to subscriptions made later (``Publication.retained`` is then true).

A group is put in broadcast mode with ``mode = "broadcast"`` in its ``[[groups]]`` table
(see ``examples/cluster.toml``), with ``python -m actors.worker --mode broadcast`` for a
worker attached by hand, or in process with ``WorkerRunner(..., mode="broadcast")``.

Run the cluster in one terminal (each Audit instance prints what it receives there)::

    python -m actors.cluster --config examples/cluster.toml

or attach two broadcast Audit workers by hand to a cluster that is already running::

    python -m actors.worker --group audit --mode broadcast examples.pubsub:Audit &
    python -m actors.worker --group audit --mode broadcast examples.pubsub:Audit &

and the client in another::

    python -m examples.pubsub
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import Any

import attrs
import trio

from actors import Client, Job, Publication, Subscription, Worker
from protocol import subject_matches

#: The retained event: published before anyone subscribes, replayed to each subscription.
RETAINED = ("events.config", {"version": 3})
#: The live events, published after the subscriptions are made.
EVENTS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("events.order.created", {"order": 1}),
    ("events.order.created", {"order": 2}),
    ("events.order.paid", {"order": 1}),
    ("events.user.signup", {"user": "ada"}),
    ("events.order.created", {"order": 3}),
    ("events.order.paid", {"order": 2}),
)
#: What the plain subscription subscribes to (every event).
ALL_PATTERN = "events.>"
#: What the queue group subscribes to (the order events only).
QUEUE_PATTERN = "events.order.*"


class Audit(Worker):
    """Records (and prints) every event; meant for a group in ``broadcast`` mode.

    In broadcast mode every instance receives every published message that matches its
    subjects, and takes no jobs. ``handle``'s return value goes nowhere for a published
    message, so an audit trail is kept in :attr:`seen` (and printed, so that it shows in
    the cluster's terminal).
    """

    subjects = [ALL_PATTERN]
    concurrency = 8

    def __init__(self) -> None:
        self.seen: list[tuple[str, Any]] = []
        self._grew = trio.Event()

    async def handle(self, job: Job) -> None:
        self.seen.append((job.subject, job.payload))
        print(f"[audit pid {os.getpid()}] {job.subject} {job.payload}", flush=True)
        self._grew.set()
        self._grew = trio.Event()

    async def wait_seen(self, count: int) -> None:
        """Return once at least ``count`` events were seen (tests cap this with a timeout)."""
        while len(self.seen) < count:
            await self._grew.wait()


@attrs.frozen
class PubSubReport:
    """What each subscription of the client received.

    Attributes:
      everything: ``(subject, payload, retained)`` for each message the ``events.>``
        subscription got, in arrival order.
      queue_members: per queue-group member, the ``(subject, payload)`` it got.
      complete: every expected message arrived before the timeout.
    """

    everything: tuple[tuple[str, Any, bool], ...]
    queue_members: tuple[tuple[tuple[str, Any], ...], ...]
    complete: bool


async def main(
    url: str = "tcp://127.0.0.1:7700",
    events: Sequence[tuple[str, Any]] = EVENTS,
    receive_within: float = 5.0,
) -> PubSubReport:
    """Publish a retained event, subscribe, publish ``events``, and show who got what.

    Args:
      url: the leader.
      events: ``(subject, payload)`` pairs to publish after subscribing.
      receive_within: seconds to wait for every expected message to arrive.
    """
    # The retained event is replayed to the plain subscription; it does not match the queue's.
    expected = 1 + sum(1 for subject, _ in events if subject_matches(ALL_PATTERN, subject))
    queued = sum(1 for subject, _ in events if subject_matches(QUEUE_PATTERN, subject))
    async with Client.connect(url) as client:
        subject, payload = RETAINED
        # qos=1 waits for the leader's ack: the message is retained before we subscribe.
        await client.publish(subject, payload, retain=True, qos=1)
        async with (
            client.subscribe(ALL_PATTERN) as everything,
            client.subscribe(QUEUE_PATTERN, queue="billing") as billing_a,
            client.subscribe(QUEUE_PATTERN, queue="billing") as billing_b,
        ):
            for subject, payload in events:
                await client.publish(subject, payload)
            got_all: list[Publication] = []
            got_queue: tuple[list[Publication], list[Publication]] = ([], [])
            with trio.move_on_after(receive_within) as waited:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(_collect, everything, got_all, expected)
                    nursery.start_soon(_collect_shared, (billing_a, billing_b), got_queue, queued)
    report = PubSubReport(
        everything=tuple((m.subject, m.payload, m.retained) for m in got_all),
        queue_members=tuple(tuple((m.subject, m.payload) for m in member) for member in got_queue),
        complete=not waited.cancelled_caught,
    )
    print(f"{ALL_PATTERN!r} got {len(report.everything)} messages:")
    for subject, payload, retained in report.everything:
        print(f"  {subject:<22} {payload}{'  (retained)' if retained else ''}")
    for name, member in zip("ab", report.queue_members, strict=True):
        print(f"queue 'billing' member {name} got {len(member)}: {[p for _, p in member]}")
    if not report.complete:
        print(f"(gave up waiting after {receive_within} s: some messages did not arrive)")
    print("and each instance of a broadcast Audit group printed every event (cluster terminal)")
    return report


async def _collect(sub: Subscription, into: list[Publication], count: int) -> None:
    while len(into) < count:
        into.append(await sub.receive())


async def _collect_shared(
    members: tuple[Subscription, Subscription],
    into: tuple[list[Publication], list[Publication]],
    count: int,
) -> None:
    """Receive from every member until ``count`` messages came in across all of them."""
    if count == 0:
        return
    async with trio.open_nursery() as nursery:

        async def drain(sub: Subscription, got: list[Publication]) -> None:
            while True:
                got.append(await sub.receive())
                if sum(map(len, into)) >= count:
                    nursery.cancel_scope.cancel()

        for sub, got in zip(members, into, strict=True):
            nursery.start_soon(drain, sub, got)


if __name__ == "__main__":
    trio.run(main, *sys.argv[1:2])
