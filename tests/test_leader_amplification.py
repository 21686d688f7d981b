"""Denial of service by amplification: frames that cost the leader far more than their size.

Each test builds, over real sockets to a real :class:`actors.Leader` (in this process),
state a hostile peer can build within every limit the leader has (subscriptions, retained
messages, waiters, queues, workers), then sends one trigger frame of at most 1 MiB and
measures what it cost:

- a **stall**: a well-behaved client that connects 50 ms after the trigger was sent must
  get its Welcome within :data:`STALL_LIMIT` (0.5 s); the leader is one trio process, so
  while it handles one frame, every other connection waits;
- **memory**: what the leader keeps must stay within its configured bounds (or a small
  multiple of what the peer sent).

Every vector found is fixed, and each test is a plain one (a vector found later goes in as
``xfail(strict=True)`` first, its reason saying by how much it fails). Each docstring says
what the vector was; ``STALLS`` keeps what each measured at full scale before its fix.
Fixed: conflicting resubmits, stored failures and dead letters counting their texts
(da84a52); Progress to many waiters (c7c89e1); the rest in the session of 2026-12-07: the
pub/sub router (queue groups, one Deliver naming many subscriptions, replay allowance),
the subject index (a path-compressed trie, its cache bounded in bytes), the broker
(worker joins, credit, idle queues, jobs in flight counted in the byte limits), payloads
kept encoded by the leader (never decoded), and the runtime (write deadline, outgoing
budget, no quadratic flush, the reader's fair slices). Each test takes under 5 s.

Run as a script for the figures at a larger scale (one vector, or all)::

    python tests/test_leader_amplification.py                   # every vector
    python tests/test_leader_amplification.py fanout_queue_group progress_fanout
    python tests/test_leader_amplification.py --list
"""

from __future__ import annotations

import contextlib
import gc
import itertools
import random
import sys
import time
import tracemalloc
from collections.abc import Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

if __name__ == "__main__":  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from actors import Leader
from protocol import (
    Assign,
    Credit,
    FrameDecoder,
    Hello,
    Message,
    Ping,
    Pong,
    Progress,
    Publish,
    Result,
    Submit,
    Subscribe,
    Welcome,
    bundle_frames,
    encode,
    encode_item,
)

pytestmark = pytest.mark.e2e

MiB = 1 << 20
#: Seconds a well-behaved client may wait for its Welcome while the leader handles a frame.
STALL_LIMIT = 0.5
#: The probe connects this long after the trigger was sent (so that the leader has it).
PROBE_DELAY = 0.05
#: Largest trigger frame (the hunt's rule: one frame of at most 1 MiB).
TRIGGER_BODY = MiB


# ---------------------------------------------------------------------------------------
# A hand-driven peer and a leader in this process


class Peer:
    """A raw protocol connection: sends bundles of messages built here, reads what it asks
    for (or everything, thrown away, in :meth:`discard`), or nothing at all."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.decoder = FrameDecoder(max_frame_size=64 * MiB)
        self.mids = itertools.count(1)
        self.read_bytes = 0
        self.closed_by_leader = False

    @classmethod
    async def connect(cls, url: str) -> Peer:
        host, port = url.removeprefix("tcp://").rsplit(":", 1)
        return cls(await trio.open_tcp_stream(host, int(port)))

    @classmethod
    async def open(cls, url: str, role: str = "client", **hello: Any) -> Peer:
        peer = await cls.connect(url)
        try:
            await peer.stream.send_all(encode(Hello(mid=0, role=role, versions=(1, 2), **hello)))
            await peer.expect(Welcome)
        except BaseException:
            await peer.aclose()
            raise
        return peer

    def mid(self) -> int:
        return next(self.mids)

    async def send(self, messages: list[Message], max_body: int = TRIGGER_BODY) -> int:
        """Send ``messages`` as bundles of at most ``max_body`` bytes; the bytes sent."""
        data = frames(messages, max_body)
        await self.stream.send_all(data)
        return len(data)

    async def expect(self, kind: type, count: int = 1) -> list[Any]:
        """Read until ``count`` messages of ``kind`` came (others are dropped)."""
        found: list[Any] = []
        while len(found) < count:
            data = await self.stream.receive_some(1 << 20)
            if not data:
                raise EOFError(f"the leader closed the connection before {count} {kind.__name__}")
            self.read_bytes += len(data)
            found += [m for m in self.decoder.feed(data) if type(m) is kind]
        return found

    async def ping(self) -> None:
        """Ping and wait for the Pong: the leader has handled everything sent before."""
        mid = self.mid()
        await self.stream.send_all(encode(Ping(mid=mid)))
        while True:
            (pong,) = await self.expect(Pong)
            if pong.cid == mid:
                return

    async def discard(self) -> None:
        """Read and drop everything until the leader closes (a fast, careless reader)."""
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            while data := await self.stream.receive_some(4 * MiB):
                self.read_bytes += len(data)
            self.closed_by_leader = True

    async def aclose(self) -> None:
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await self.stream.aclose()


def frames(messages: list[Message], max_body: int = TRIGGER_BODY) -> bytes:
    """``messages`` as version-2 bundles of at most ``max_body`` bytes each."""
    return b"".join(bundle_frames([encode_item(m) for m in messages], max_body))


class Harness:
    """A running leader, its URL, and the peers of one test (closed at the end)."""

    def __init__(
        self, leader: Leader, url: str, nursery: trio.Nursery, stack: contextlib.AsyncExitStack
    ) -> None:
        self.leader = leader
        self.url = url
        self.nursery = nursery
        self.stack = stack

    async def peer(self, role: str = "client", **hello: Any) -> Peer:
        peer = await Peer.open(self.url, role, **hello)
        self.stack.push_async_callback(peer.aclose)
        return peer

    async def raw(self) -> Peer:
        peer = await Peer.connect(self.url)
        self.stack.push_async_callback(peer.aclose)
        return peer

    def discard(self, peer: Peer) -> None:
        self.nursery.start_soon(peer.discard)

    async def probe_wait(self, send_trigger: Callable[[], Awaitable[Any]]) -> float:
        """Send the trigger; :data:`PROBE_DELAY` later a new client says Hello. Returns the
        seconds it waited for its Welcome, from when it meant to connect."""
        start = trio.current_time() + PROBE_DELAY
        await send_trigger()
        await trio.sleep_until(start)
        probe = await Peer.open(self.url)
        waited = trio.current_time() - start
        await probe.aclose()
        return waited


@asynccontextmanager
async def running(**leader_kw: Any):
    leader_kw.setdefault("heartbeat", None)
    leader = Leader(name="amp", listen=["tcp://127.0.0.1:0"], **leader_kw)
    async with trio.open_nursery() as nursery:
        (url,) = await nursery.start(leader.run)
        try:
            async with contextlib.AsyncExitStack() as stack:
                yield Harness(leader, url, nursery, stack)
        finally:
            nursery.cancel_scope.cancel()


async def traced(build: Callable[[], Awaitable[Any]]) -> int:
    """Bytes allocated (in this process, the leader's included) by ``build`` and still
    alive after it, by tracemalloc."""
    gc.collect()
    tracemalloc.start()
    try:
        await build()
        gc.collect()
        return tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()


# ---------------------------------------------------------------------------------------
# The vectors: each sets up, sends its trigger, and returns what it measured


async def fanout_queue_group(h: Harness, subs: int = 5000, publishes: int = 4096) -> float:
    """A Publish matching N subscriptions of one queue group delivers one message, but
    looped over all N (the router grouped them first): O(N) per Publish, before the router
    kept one index entry per connection and pattern."""
    member = await h.peer(name="member")
    await member.send(
        [Subscribe(mid=member.mid(), sid=i, pattern=">", queue="q") for i in range(subs)]
    )
    await member.ping()
    h.discard(member)
    publisher = await h.peer(name="publisher")
    trigger = [
        Publish(mid=publisher.mid(), subject="amp.x", payload=None) for _ in range(publishes)
    ]
    return await h.probe_wait(lambda: publisher.send(trigger))


async def fanout_slow_subscriber(h: Harness, subs: int = 1000, publishes: int = 800) -> float:
    """A Publish is built into a Deliver for every matching subscription (N per connection,
    all on ``>``), also for a subscriber that reads nothing (a doomed slow consumer still
    costs a validated Deliver each)."""
    sleeper = await h.peer(name="sleeper")
    await sleeper.send([Subscribe(mid=sleeper.mid(), sid=i, pattern=">") for i in range(subs)])
    await sleeper.ping()
    publisher = await h.peer(name="publisher")
    trigger = [
        Publish(mid=publisher.mid(), subject="amp.x", payload=None) for _ in range(publishes)
    ]
    return await h.probe_wait(lambda: publisher.send(trigger))


async def retained_replay(h: Harness, retained: int = 1500, subscribes: int = 500) -> float:
    """Each Subscribe replays every retained message its pattern matches: a Subscribe ``>``
    (the same sid again and again, so no subscription limit) costs R Delivers."""
    publisher = await h.peer(name="publisher")
    await publisher.send(
        [
            Publish(mid=publisher.mid(), subject=f"amp.r.{i}", payload=None, retain=True)
            for i in range(retained)
        ]
    )
    await publisher.ping()
    subscriber = await h.peer(name="subscriber")  # reads nothing
    trigger = [Subscribe(mid=subscriber.mid(), sid=1, pattern=">") for _ in range(subscribes)]
    return await h.probe_wait(lambda: subscriber.send(trigger))


async def progress_fanout(h: Harness, waiters: int = 1000, progress: int = 700) -> float:
    """A worker's Progress is sent to every call waiting for the job (up to MAX_WAITERS,
    1000, all from one client): one Progress of 16 bytes makes 1000 messages."""
    worker = await h.peer("worker", name="w", patterns=("amp.>",), credit=10)
    client = await h.peer(name="c")
    await client.send(
        [
            Submit(mid=client.mid(), job_id="j1", subject="amp.x", payload=None)
            for _ in range(waiters)
        ]
    )
    await client.ping()
    await worker.expect(Assign)
    trigger = [Progress(mid=worker.mid(), job_id="j1", fraction=0.5) for _ in range(progress)]
    return await h.probe_wait(lambda: worker.send(trigger))


async def conflict_resubmit(h: Harness, items: int = 700_000, resubmits: int = 100) -> float:
    """A resubmission whose payload differs from the job's: told apart, before da84a52, by
    encoding both payloads canonically, each 20-byte conflicting Submit re-encoding the
    stored payload (up to 16 MiB); now by comparing the bytes (``Broker._same_request``:
    the leader keeps payloads encoded)."""
    client = await h.peer(name="c")
    big = [0] * items
    await client.send(
        [
            Submit(
                mid=client.mid(),
                job_id="big",
                subject="amp.nobody",
                payload=big,
                wait_for_worker=True,
            )
        ],
        max_body=16 * MiB,
    )
    await client.ping()
    h.discard(client)
    trigger = [
        Submit(
            mid=client.mid(), job_id="big", subject="amp.nobody", payload=i, wait_for_worker=True
        )
        for i in range(resubmits)
    ]
    return await h.probe_wait(lambda: client.send(trigger))


def _overlapping_patterns(count: int) -> tuple[str, ...]:
    """``count`` patterns that all match ``a.a.a.a.a.a.a.a.a.a.<anything>``."""
    patterns = [">"]
    for depth in range(1, 10):
        patterns += [".".join(p) + ".>" for p in itertools.product("a*", repeat=depth)]
    patterns.append("a.a.a.a.a.a.a.a.a.a.*")
    return tuple(patterns[:count])


async def worker_hello(h: Harness, queues: int = 10_000, patterns: int = 1024) -> float:
    """A worker's Hello is matched against every subject queue (``worker_joined`` calls the
    uncached ``worker_index.match`` for each of up to 10,000 queues, and each match walks
    and returns its up to 1024 patterns): an 18 KiB Hello, repeatable by reconnecting."""
    client = await h.peer(name="c")  # unserved submits: answered no_route, but their queues stay
    await client.send(
        [
            Submit(
                mid=client.mid(), job_id=f"q{i}", subject=f"a.a.a.a.a.a.a.a.a.a.s{i}", payload=None
            )
            for i in range(queues)
        ]
    )
    await client.ping()
    hello = encode(
        Hello(
            mid=0,
            role="worker",
            name="w",
            versions=(1, 2),
            patterns=_overlapping_patterns(patterns),
            credit=1,
        )
    )
    worker = await h.raw()
    return await h.probe_wait(lambda: worker.stream.send_all(hello))


async def credit_flood(h: Harness, queues: int = 10_000, credits: int = 4096) -> float:
    """Every Credit (and Nack, even of an unknown job, and Result while anything waits)
    runs ``Broker._feed``, which visits every queue the worker serves: a worker serving
    ``>`` with 10,000 subject queues makes each 6-byte Credit cost 10,000 steps."""
    client = await h.peer(name="c")
    await client.send(
        [
            Submit(mid=client.mid(), job_id=f"q{i}", subject=f"amp.q{i}", payload=None)
            for i in range(queues)
        ]
    )
    await client.ping()
    worker = await h.peer("worker", name="w", patterns=(">",), credit=100)
    await worker.ping()
    trigger = [Credit(mid=worker.mid(), credit=100) for _ in range(credits)]
    return await h.probe_wait(lambda: worker.send(trigger))


async def new_subjects_many_workers(
    h: Harness, workers: int = 50, queued: int = 10_000, submits: int = 400
) -> float:
    """With 10,000 subject queues (the most kept) that all hold a waiting job, a submit to
    a new subject refused ``busy`` leaves an idle queue, which the next one drops:
    ``worker.queues.remove(queue)`` for each of the W workers serving ``>``, each a scan of
    their 10,000 queues (the new queue is last). O(W x 10,000) per 30-byte Submit."""
    for i in range(workers):
        await h.peer("worker", name=f"w{i}", patterns=(">",), credit=0)
    client = await h.peer(name="c")  # its queued jobs: max_queued_per_client (10,000)
    await client.send(
        [
            Submit(mid=client.mid(), job_id=f"q{i}", subject=f"amp.q{i}", payload=None)
            for i in range(queued)
        ]
    )
    await client.ping()
    h.discard(client)
    trigger = [
        Submit(mid=client.mid(), job_id=f"n{i}", subject=f"amp.new{i}", payload=None)
        for i in range(submits)
    ]
    return await h.probe_wait(lambda: client.send(trigger))


async def trie_walk(h: Harness, subs: int = 1000, depth: int = 256, publishes: int = 100) -> float:
    """A subject is matched by walking the subscription trie; every node a ``*`` or a
    literal token keeps open is visited. Subscriptions of random ``a``/``*`` patterns
    ``depth`` tokens long ending in ``.b`` match nothing, yet a Publish to ``a.a...a.x<i>``
    (uncached: a new subject each time) visits all of their nodes (about subs x depth)."""
    rng = random.Random(1)
    patterns: set[str] = set()
    while len(patterns) < subs:
        patterns.add(".".join(rng.choice("a*") for _ in range(depth - 1)) + ".b")
    subscriber = await h.peer(name="s")
    await subscriber.send(
        [Subscribe(mid=subscriber.mid(), sid=i, pattern=p) for i, p in enumerate(sorted(patterns))]
    )
    await subscriber.ping()
    publisher = await h.peer(name="p")
    prefix = "a." * (depth - 1)
    trigger = [
        Publish(mid=publisher.mid(), subject=f"{prefix}x{i}", payload=None)
        for i in range(publishes)
    ]
    return await h.probe_wait(lambda: publisher.send(trigger))


async def stored_result_resend(h: Harness, items: int = 1_000_000, resubmits: int = 100) -> float:
    """A resubmission of a finished job is answered with its stored result, encoded anew
    each time: a 30-byte Submit costs the encoding of a result of up to 16 MiB."""
    worker = await h.peer("worker", name="w", patterns=("amp.>",), credit=10)
    client = await h.peer(name="c")
    await client.send([Submit(mid=client.mid(), job_id="r1", subject="amp.x", payload=None)])
    (_assign,) = await worker.expect(Assign)
    await worker.send(
        [Result(mid=worker.mid(), job_id="r1", payload=[0] * items)], max_body=16 * MiB
    )
    await client.expect(Result)
    h.discard(client)
    trigger = [
        Submit(mid=client.mid(), job_id="r1", subject="amp.x", payload=None)
        for _ in range(resubmits)
    ]
    return await h.probe_wait(lambda: client.send(trigger))


STALLS: dict[str, tuple[Callable[..., Awaitable[float]], dict[str, int], str]] = {
    # name: (scenario, its arguments at full scale, what it measured at full scale on the
    # 2-core development machine, 2026-12-07, leader in its own process)
    "fanout_queue_group": (
        fanout_queue_group,
        {"subs": 10_000, "publishes": 4096},
        "36 KiB frame: 3.5 s with one member connection of 10,000 subscriptions (4.4 s to new subjects, and the match cache then holds 310 MiB), 12.6 s with three connections",
    ),
    "fanout_slow_subscriber": (
        fanout_slow_subscriber,
        {"subs": 10_000, "publishes": 4096},
        "36 KiB frame: 85 s (a subscriber that reads nothing); 1 KiB frame of 100 publishes to one that reads: 3.9 s",
    ),
    "retained_replay": (
        retained_replay,
        {"retained": 10_000, "subscribes": 4096},
        "32 KiB frame of 4,096 Subscribe '>' against 10,000 retained messages: 112 s",
    ),
    "progress_fanout": (
        progress_fanout,
        {"waiters": 1000, "progress": 4096},
        "68 KiB frame of 4,096 Progress, 1,000 waiters: 10.9 s before c7c89e1, 0.01 s since",
    ),
    "conflict_resubmit": (
        conflict_resubmit,
        {"items": 1_000_000, "resubmits": 200},
        "6 KiB frame of 200 conflicting resubmits of a job of 1 MiB: 6.2 s before da84a52, 0.05 s since",
    ),
    "worker_hello": (
        worker_hello,
        {"queues": 10_000, "patterns": 1024},
        "one 18 KiB worker Hello against 10,000 queues: 1.6 s, again at every reconnection",
    ),
    "credit_flood": (
        credit_flood,
        {"queues": 10_000, "credits": 4096},
        "28 KiB frame of 4,096 Credit: 1.4 s (59 KiB of 4,096 Nacks of unknown jobs: 1.4 s)",
    ),
    "new_subjects_many_workers": (
        new_subjects_many_workers,
        {"workers": 200, "queued": 10_000, "submits": 4096},
        "a 130 KiB frame of 4,096 submits to new subjects, 200 workers serving '>': 47 s once 10,000 queues hold waiting jobs; 1.0 s before (each new queue checks `worker not in candidates` for each of the 200 workers: O(W^2))",
    ),
    "trie_walk": (
        trie_walk,
        {"subs": 10_000, "depth": 256, "publishes": 10},
        "5 KiB frame of 10 publishes against 10,000 subscriptions of 256 tokens: 1.9 s (0.19 s a publish; those subscriptions take 800 MiB)",
    ),
    "stored_result_resend": (
        stored_result_resend,
        {"items": 1_000_000, "resubmits": 100},
        "3 KiB frame of 100 resubmits of a job whose result is 1 MiB of small ints: 2.3 s",
    ),
}


# ---------------------------------------------------------------------------------------
# Memory


async def inflight_bytes(h: Harness, jobs: int = 32, size: int = 512 * 1024) -> int:
    """Bytes of the unfinished jobs the leader holds, after a client submitted ``jobs`` of
    ``size`` bytes to a worker with a large window that never answers (the queue limits
    count only jobs waiting for a worker: an assigned job's payload is kept, uncounted, for
    redelivery)."""
    worker = await h.peer("worker", name="w", patterns=("amp.>",), credit=10_000)
    h.discard(worker)
    client = await h.peer(name="c")
    payload = b"x" * size
    for i in range(jobs):
        await client.send(
            [Submit(mid=client.mid(), job_id=f"b{i}", subject="amp.big", payload=payload)],
            max_body=16 * MiB,
        )
        if i % 4 == 3:
            await client.ping()
            await trio.sleep(0.01)  # (the worker's reader keeps up: no slow-consumer close)
    await client.ping()
    return sum(job.size for job in h.leader.broker.jobs.values())


async def _failed_results(h: Harness, jobs: int, *, final: bool, text: int) -> list[str]:
    worker = await h.peer("worker", name="w", patterns=("amp.>",), credit=jobs)
    client = await h.peer(name="c")
    h.discard(client)
    ids = [f"f{i}" for i in range(jobs)]
    await client.send(
        [Submit(mid=client.mid(), job_id=job_id, subject="amp.f", payload=None) for job_id in ids]
    )
    assigns = await worker.expect(Assign, jobs)
    for assign in assigns:
        await worker.send(
            [
                Result(
                    mid=worker.mid(),
                    job_id=assign.job_id,
                    ok=False,
                    final=final,
                    error_type="E" * text,
                    error_message="M" * text,
                    traceback="T" * text,
                )
            ],
            max_body=16 * MiB,
        )
    await worker.ping()
    return ids


def _text_bytes(*texts: str | None) -> int:
    return sum(len(t) for t in texts if t)


async def stored_failures(h: Harness, jobs: int = 32, text: int = 128 * 1024) -> int:
    """Bytes of the error texts and tracebacks the results store holds after ``jobs``
    failed results of 3 x ``text`` bytes each (``max_stored_bytes`` counts the error message
    but not ``error_type`` nor ``traceback``)."""
    ids = await _failed_results(h, jobs, final=True, text=text)
    now = trio.current_time()
    held = 0
    for job_id in ids:
        stored = h.leader.broker.finished.get(job_id, now)
        if stored is not None:
            held += _text_bytes(stored.error_type, stored.error_message, stored.traceback)
    return held


async def dead_letter_texts(h: Harness, jobs: int = 32, text: int = 128 * 1024) -> int:
    """Bytes of the error texts and tracebacks the dead letters hold after ``jobs`` jobs
    failed their last attempt with texts of ``text`` bytes (``max_dead_letter_bytes``
    counts each dead letter as its job's size only)."""
    await _failed_results(h, jobs, final=False, text=text)
    return sum(
        _text_bytes(d["error_type"], d["error_message"], d["traceback"])
        for d in h.leader.broker.dead_letters
    )


async def payload_objects(h: Harness, jobs: int = 2, items: int = 400_000) -> tuple[int, int]:
    """(bytes sent, bytes the leader keeps) for ``jobs`` queued submits whose payload is
    ``items`` empty arrays: one byte each on the wire (and in the queue limits, which count
    the encoded size), a list object of 56 bytes and a pointer each once decoded."""
    client = await h.peer(name="c")
    data = frames(
        [
            Submit(
                mid=client.mid(),
                job_id=f"o{i}",
                subject="amp.nobody",
                payload=[[]] * items,
                wait_for_worker=True,
            )
            for i in range(jobs)
        ],
        max_body=16 * MiB,
    )

    async def build() -> None:
        await client.stream.send_all(data)
        await client.ping()

    return len(data), await traced(build)


async def subscription_trie(h: Harness, subs: int = 1000, tokens: int = 256) -> tuple[int, int]:
    """(bytes sent, bytes the leader keeps) for ``subs`` Subscribes whose patterns have
    ``tokens`` distinct tokens: each token is a node of the subscription index (an object
    and three dicts), some 450 bytes for the 9 or so bytes of the token."""
    subscriber = await h.peer(name="s")
    data = frames(
        [
            Subscribe(
                mid=subscriber.mid(), sid=i, pattern=".".join(f"s{i}t{j}" for j in range(tokens))
            )
            for i in range(subs)
        ]
    )

    async def build() -> None:
        await subscriber.stream.send_all(data)
        await subscriber.ping()

    return len(data), await traced(build)


async def match_cache(h: Harness, subs: int = 600, publishes: int = 4096) -> tuple[int, int]:
    """(bytes sent, bytes the leader keeps) for ``publishes`` Publishes to new subjects
    matching ``subs`` subscriptions (of one queue group: one delivery each): the index keeps
    the answer of each of the last 4,096 subjects, a tuple of every matching subscription."""
    member = await h.peer(name="member")
    await member.send(
        [Subscribe(mid=member.mid(), sid=i, pattern=">", queue="q") for i in range(subs)]
    )
    await member.ping()
    h.discard(member)
    publisher = await h.peer(name="p")
    data = frames(
        [Publish(mid=publisher.mid(), subject=f"amp.{i}", payload=None) for i in range(publishes)]
    )

    async def build() -> None:
        await publisher.stream.send_all(data)
        await publisher.ping()

    return len(data), await traced(build)


async def pinned_outgoing(
    h: Harness, peers: int = 4, retained: int = 8, seconds: float = 2.5
) -> int:
    """Peers that never read, but ping every 0.25 s, each after one Subscribe ``>`` that
    made the leader queue every retained message (``retained`` MiB) for it. Returns how
    many of them the leader had closed after ``seconds``. Before the write deadline: none,
    each holding up to ``max_outgoing`` (64 MiB) of the leader's memory for as long as it
    liked (1,024 such connections, ``max_connections``, would have held 64 GiB)."""
    publisher = await h.peer(name="p")
    blob = b"r" * (MiB - 1024)
    for i in range(retained):
        await publisher.send(
            [Publish(mid=publisher.mid(), subject=f"amp.r{i}", payload=blob, retain=True)]
        )
    await publisher.ping()
    sleepers = [await h.peer(name=f"z{i}") for i in range(peers)]
    for sleeper in sleepers:
        await sleeper.send([Subscribe(mid=sleeper.mid(), sid=1, pattern=">")])
    ping = encode(Ping(mid=1))
    deadline = trio.current_time() + seconds
    while trio.current_time() < deadline:
        for sleeper in sleepers:
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await sleeper.stream.send_all(ping)
        await trio.sleep(0.25)
    closed = 0
    for sleeper in sleepers:  # read what is there: then the end of the stream, or silence
        with trio.move_on_after(0.5):
            await sleeper.discard()
        closed += sleeper.closed_by_leader
    return closed


# ---------------------------------------------------------------------------------------
# The tests (small scale: each fails in under 5 s)


def _stall_reason(name: str, at_test_scale: str) -> str:
    return f"{at_test_scale}; full scale: {STALLS[name][2]}"


async def test_publish_to_a_large_queue_group_costs_its_one_delivery() -> None:
    async with running() as h:
        waited = await fanout_queue_group(h)
    assert waited < STALL_LIMIT


async def test_publish_fan_out_to_a_subscriber_that_does_not_read_is_bounded() -> None:
    async with running() as h:
        waited = await fanout_slow_subscriber(h)
    assert waited < STALL_LIMIT


async def test_subscribe_replay_of_retained_messages_is_bounded() -> None:
    async with running() as h:
        waited = await retained_replay(h)
    assert waited < STALL_LIMIT


async def test_progress_to_many_waiters_is_bounded() -> None:
    async with running() as h:
        waited = await progress_fanout(h)
    assert waited < STALL_LIMIT


async def test_conflicting_resubmits_do_not_reencode_the_stored_payload() -> None:
    async with running() as h:
        waited = await conflict_resubmit(h)
    assert waited < STALL_LIMIT


async def test_worker_hello_with_many_patterns_against_many_queues_is_cheap() -> None:
    async with running() as h:
        waited = await worker_hello(h)
    assert waited < STALL_LIMIT


async def test_credit_flood_does_not_scan_every_queue_of_the_worker() -> None:
    async with running() as h:
        waited = await credit_flood(h)
    assert waited < STALL_LIMIT


async def test_dropping_an_idle_queue_does_not_scan_every_workers_queues() -> None:
    async with running() as h:
        waited = await new_subjects_many_workers(h)
    assert waited < STALL_LIMIT


async def test_matching_a_new_subject_does_not_walk_every_wildcard_node() -> None:
    async with running() as h:
        waited = await trie_walk(h)
    assert waited < STALL_LIMIT


async def test_resubmits_of_a_large_finished_job_are_bounded() -> None:
    async with running() as h:
        waited = await stored_result_resend(h)
    assert waited < STALL_LIMIT


async def test_jobs_held_by_workers_count_against_the_byte_limits() -> None:
    limit = 8 * MiB
    async with running(max_queued_bytes=limit, max_queued_bytes_per_client=limit // 2) as h:
        held = await inflight_bytes(h)
    assert held <= limit


async def test_stored_results_count_error_type_and_traceback() -> None:
    limit = 2 * MiB
    async with running(max_stored_bytes=limit) as h:
        held = await stored_failures(h)
    assert held <= limit


async def test_dead_letters_count_their_error_texts() -> None:
    limit = 2 * MiB
    async with running(max_dead_letter_bytes=limit, max_attempts=1) as h:
        held = await dead_letter_texts(h)
    assert held <= limit


async def test_queued_payloads_cost_memory_in_proportion_to_their_bytes() -> None:
    async with running(max_queued_bytes_per_client=MiB) as h:
        sent, kept = await payload_objects(h)
    assert kept <= 8 * sent


async def test_subscriptions_cost_memory_in_proportion_to_their_bytes() -> None:
    async with running() as h:
        sent, kept = await subscription_trie(h)
    assert kept <= 10 * sent


async def test_the_match_cache_is_bounded_in_bytes() -> None:
    async with running() as h:
        _sent, kept = await match_cache(h)
    assert kept <= 8 * MiB


async def test_peers_that_never_read_do_not_pin_outgoing_memory() -> None:
    # Fixed by the write deadline: a peer that takes no byte of a write for write_timeout
    # (default 10 s, 1 s here) is cut as a slow consumer, however often it pings.
    peers = 4
    async with running(heartbeat=1.0, write_timeout=1.0) as h:
        closed = await pinned_outgoing(h, peers=peers)
    assert closed == peers


# ---------------------------------------------------------------------------------------
# As a script: the stalls at full scale


async def _run(names: list[str]) -> None:
    for name in names:
        scenario, kwargs, measured = STALLS[name]
        async with running() as h:
            t0 = time.perf_counter()
            waited = await scenario(h, **kwargs)
            setup = time.perf_counter() - t0 - waited
        print(
            f"{name} ({', '.join(f'{k}={v:,}' for k, v in kwargs.items())}): a client waited {waited:.2f} s"
            f" for its Welcome (setup {setup:.1f} s); measured before: {measured}",
            flush=True,
        )


def main(argv: list[str]) -> int:
    if "--list" in argv:
        for name, (scenario, _, measured) in STALLS.items():
            print(f"{name}: {(scenario.__doc__ or '').split(chr(10))[0]} ({measured})")
        return 0
    names = argv or list(STALLS)
    unknown = [n for n in names if n not in STALLS]
    if unknown:
        print(f"unknown: {', '.join(unknown)}; --list lists them", file=sys.stderr)
        return 2
    trio.run(_run, names)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
