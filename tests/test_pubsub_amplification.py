"""Publish fan-out to many queue groups of one connection: each Publish costs the leader
O(groups) (one member picked per group), so a frame of 4,096 of them is seconds of work.
It cannot starve the others: the reader hands the batch to the leader in slices and lets
every other connection in once it has taken a few milliseconds (``runtime._reader``,
fairness). Same harness and rule as
``tests/test_leader_amplification.py`` (a client connecting 50 ms after a trigger frame
must get its Welcome within 0.5 s).

Run as a script for the figure at full scale::

    python tests/test_pubsub_amplification.py
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest
import trio

if __name__ == "__main__":  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from protocol import Publish, Subscribe
from tests.test_leader_amplification import STALL_LIMIT, Harness, running

pytestmark = pytest.mark.e2e


async def fanout_many_queue_groups(h: Harness, groups: int = 4000, publishes: int = 1000) -> float:
    """A connection's subscriptions each in a queue group of its own, all on ``>``: every
    Publish picks a member of each group (one per group, in turn), in Python, O(groups)."""
    member = await h.peer(name="member")
    subscribes = [
        Subscribe(mid=member.mid(), sid=i, pattern=">", queue=f"q{i}") for i in range(groups)
    ]
    for start in range(0, groups, 4000):
        await member.send(subscribes[start : start + 4000])
    await member.ping()
    h.discard(member)
    publisher = await h.peer(name="publisher")
    trigger = [
        Publish(mid=publisher.mid(), subject="amp.x", payload=None) for _ in range(publishes)
    ]
    return await h.probe_wait(lambda: publisher.send(trigger))


async def test_publish_to_many_queue_groups_of_one_connection_is_bounded() -> None:
    async with running() as h:
        waited = await fanout_many_queue_groups(h)
    assert waited < STALL_LIMIT


async def _main() -> None:
    async with running() as h:
        t0 = time.perf_counter()
        waited = await fanout_many_queue_groups(h, groups=10_000, publishes=4096)
        print(
            f"fanout_many_queue_groups (10,000 groups, 4,096 publishes): a client waited"
            f" {waited:.2f} s for its Welcome (in all {time.perf_counter() - t0:.1f} s)"
        )


if __name__ == "__main__":
    trio.run(_main)
