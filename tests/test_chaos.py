"""Hostile conditions while jobs run: garbage on other connections, and the client's and a
worker's connections cut mid-run. Every accepted job completes, each ``submit`` call gets
its own result once, and the leader keeps serving.

Real loopback sockets (TCP and WebSocket), workers in process so that connections can be
cut at exact points; worker processes and SIGKILL are in ``test_reliability.py``.
"""

from __future__ import annotations

import random
import struct
from collections import Counter
from typing import Any

import cbor2
import pytest
import trio

from actors import Client, Job, Leader, Worker
from actors.worker import WorkerRunner
from protocol import Error, FrameDecoder, Hello, Result, Submit, encode
from runtime import Backoff
from tests.helpers import wait_until

pytestmark = pytest.mark.e2e

JOBS = 300
FAST = Backoff(base=0.02, factor=2.0, cap=0.2, jitter=0.1)


class Tally(Worker):
    """Doubles its input after a short, random pause; counts every run by job id."""

    subjects = ["chaos.double"]
    concurrency = 8

    def __init__(self, runs: Counter[str], seed: int) -> None:
        self.runs = runs
        self.rng = random.Random(seed)

    async def handle(self, job: Job) -> Any:
        self.runs[job.id] += 1
        await trio.sleep(self.rng.uniform(0.0, 0.01))
        return {"n": job.payload["n"], "double": 2 * job.payload["n"]}


async def _raw(url: str, data: bytes) -> list[Any]:
    """Send ``data`` on a new TCP connection; return the frames that came back, up to the
    first Error (then hang up, as a peer told to go does) or the close."""
    host, port = url.removeprefix("tcp://").rsplit(":", 1)
    decoder = FrameDecoder()
    got: list[Any] = []
    async with await trio.open_tcp_stream(host, int(port)) as stream:
        await stream.send_all(data)
        with trio.move_on_after(5):
            while chunk := await stream.receive_some(65536):
                got += decoder.feed(chunk)
                if any(type(m) is Error for m in got):
                    break
    return got


def _frame(body: bytes) -> bytes:
    return struct.pack(">IB", len(body), 0) + body


def _garbage(rng: random.Random) -> list[bytes]:
    hello = encode(Hello(mid=0, role="worker", name="rogue", patterns=["chaos.>"], credit=4))
    return [
        bytes(rng.randrange(256) for _ in range(64)),  # noise
        struct.pack(">IB", 2**31, 0),  # a frame far over the size limit
        struct.pack(">IB", 3, 0) + b"\xff\xff\xff",  # not CBOR
        hello + struct.pack(">IB", 2, 0) + b"\xa1\x00",  # Hello, then a map with an int key
        # A rogue worker that says Hello, then answers with a Result missing its job id.
        hello + _frame(cbor2.dumps({"t": Result.KIND, "i": 1})),
        # ... or sends a Submit, which workers may not.
        hello + encode(Submit(mid=1, job_id="j", subject="chaos.double", payload={"n": 0})),
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",  # HTTP on the TCP port
    ]


@pytest.mark.parametrize("scheme", ["tcp", "ws"])
async def test_jobs_survive_garbage_and_cut_connections(scheme: str) -> None:
    runs: Counter[str] = Counter()
    rng = random.Random(7)
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            leader = Leader(
                listen=["tcp://127.0.0.1:0", "ws://127.0.0.1:0"],
                ack_timeout=2.0,
                retry_backoff=FAST,
            )
            tcp_url, ws_url = await nursery.start(leader.run)
            url = tcp_url if scheme == "tcp" else ws_url
            runners = [
                WorkerRunner(Tally(runs, seed=i), url, name=f"w{i}", reconnect_backoff=FAST)
                for i in range(2)
            ]
            for runner in runners:
                await nursery.start(runner.run)

            async with Client.connect(url, reconnect_backoff=FAST) as client:
                results: dict[int, list[Any]] = {i: [] for i in range(JOBS)}

                async def one(i: int) -> None:
                    results[i].append(
                        await client.submit("chaos.double", {"n": i}, job_id=f"job-{i}")
                    )

                async def chaos() -> None:
                    for data in _garbage(rng):
                        answer = await _raw(tcp_url, data)
                        # Bad bytes get an Error frame naming the problem, then the close.
                        errors = [m for m in answer if type(m) is Error]
                        assert errors and errors[0].message, f"no Error frame for {data[:20]!r}"
                        await trio.sleep(0.01)

                    def four_in_flight() -> bool:
                        return leader.broker.stats()["in_flight"] >= 4

                    await wait_until(
                        four_in_flight, timeout=10, interval=0.005, what="4 jobs in flight"
                    )
                    assert client._conn is not None
                    client._conn._abort("test: client connection cut")
                    await wait_until(
                        four_in_flight, timeout=10, interval=0.005, what="4 jobs in flight again"
                    )
                    assert runners[0]._conn is not None
                    runners[0]._conn._abort("test: worker connection cut")

                async with trio.open_nursery() as jobs:
                    jobs.start_soon(chaos)
                    for i in range(JOBS):
                        jobs.start_soon(one, i)

                # Every submit call got exactly its own result, once.
                assert all(r == [{"n": i, "double": 2 * i}] for i, r in results.items())
                assert client.results_received == JOBS and client.stray_results == 0
                assert client.connects >= 2 and runners[0].connects >= 2
                # Every job ran; the cut ones may have run twice (at least once), no more
                # often than they were delivered.
                assert set(runs) == {f"job-{i}" for i in range(JOBS)}
                stats = leader.stats()
                assert stats["jobs_active"] == 0 and stats["dead_letters"] == 0
                assert stats["subjects"]["chaos.double"]["done"] == JOBS
                # And the leader still serves.
                assert await client.submit("chaos.double", {"n": -1}) == {"n": -1, "double": -2}
            nursery.cancel_scope.cancel()
