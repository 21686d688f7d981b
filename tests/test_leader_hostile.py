"""Well-formed hostile frames against a running leader (issue 9): each one ends at most
the connection that sent it, with an Error naming the problem; the leader, its other
connections and its accepted jobs go on.

Real sockets and real time (each test is capped): the frames are built by hand, as a
hostile peer would, past the validation of our own message classes.
"""

from __future__ import annotations

import struct
from contextlib import asynccontextmanager

import cbor2
import pytest
import trio

import protocol
from actors import Client, Job, Leader, Worker
from actors.worker import WorkerRunner
from protocol import ErrorCode, FrameDecoder

pytestmark = pytest.mark.e2e

MIN_FRAME = getattr(protocol, "MIN_MAX_FRAME", 4096)


class Echo(Worker):
    subjects = ["echo.>"]
    concurrency = 4

    async def handle(self, job: Job):
        return job.payload


@asynccontextmanager
async def leader_with_worker(**leader_kw):
    leader = Leader(listen=["tcp://127.0.0.1:0"], **leader_kw)
    async with trio.open_nursery() as nursery:
        urls = await nursery.start(leader.run)
        runner = WorkerRunner(Echo(), urls[0], name="echo-0")
        await nursery.start(runner.run)
        yield leader, urls[0]
        nursery.cancel_scope.cancel()


def frame(wire: dict) -> bytes:
    body = cbor2.dumps(wire)
    return struct.pack(">IB", len(body), 0) + body


class RawPeer:
    """A hand-driven connection: sends raw frames, reads decoded messages."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.decoder = FrameDecoder()
        self.got: list = []

    @classmethod
    @asynccontextmanager
    async def connect(cls, url: str):
        host, port = url.removeprefix("tcp://").rsplit(":", 1)
        stream = await trio.open_tcp_stream(host, int(port))
        async with stream:
            yield cls(stream)

    async def send(self, *wires: dict) -> None:
        await self.stream.send_all(b"".join(frame(w) for w in wires))

    async def until_closed(self) -> list:
        """Read every message until the leader closes the connection."""
        while True:
            try:
                data = await self.stream.receive_some(1 << 16)
            except trio.BrokenResourceError:
                return self.got
            if not data:
                return self.got
            self.got += self.decoder.feed(data)

    async def next_message(self):
        while not self.got:
            data = await self.stream.receive_some(1 << 16)
            assert data, "closed before an answer"
            self.got += self.decoder.feed(data)
        return self.got.pop(0)


def errors(messages) -> list[protocol.Error]:
    return [m for m in messages if isinstance(m, protocol.Error)]


async def still_serves(url: str) -> None:
    async with Client.connect(url) as client:
        assert await client.submit("echo.ok", {"n": 1}, timeout=10) == {"n": 1}


HOSTILE_HELLOS = {
    "policy of a list": {"role": "worker", "pats": ["echo.>"], "cr": 1, "meta": {"policy": [1, 2]}},
    "policy of an enormous int": {
        "role": "worker",
        "pats": ["echo.>"],
        "cr": 1,
        "meta": {"policy": 10**5000},
    },
    "mode of an enormous int": {
        "role": "worker",
        "pats": ["echo.>"],
        "cr": 1,
        "meta": {"mode": 10**5000},
    },
    "typed policy of an enormous int": {
        "role": "worker",
        "pats": ["echo.>"],
        "cr": 1,
        "pol": 10**5000,
    },
    "typed mode of a map": {"role": "worker", "pats": ["echo.>"], "cr": 1, "mode": {"a": 1}},
    "tiny frame limit": {"role": "client", "mf": 1},
    "a worker of a million patterns": {
        "role": "worker",
        "pats": [f"p.{i}" for i in range(20_000)],
        "cr": 1,
    },
    "a pattern of 100,000 tokens": {"role": "worker", "pats": ["a." * 100_000 + ">"], "cr": 1},
    "a huge credit": {"role": "worker", "pats": ["echo.>"], "cr": 2**63 - 1},
}


@pytest.mark.parametrize("name", list(HOSTILE_HELLOS))
async def test_a_hostile_hello_ends_only_its_connection(name):
    with trio.fail_after(30):
        async with leader_with_worker(heartbeat=0.2) as (leader, url):
            hello = {"t": 1, "i": 0, "v": [1], **HOSTILE_HELLOS[name]}
            async with RawPeer.connect(url) as peer:
                await peer.send(hello)
                with trio.move_on_after(0.6):  # (an accepted one idles past a heartbeat)
                    await peer.until_closed()
            await still_serves(url)
            assert leader.stats()["subjects"]["echo.ok"]["done"] == 1


async def test_a_tiny_announced_frame_limit_is_refused_before_it_can_hurt():
    with trio.fail_after(30):
        async with leader_with_worker(heartbeat=0.2) as (_, url):
            async with RawPeer.connect(url) as peer:
                await peer.send(
                    {"t": 1, "i": 0, "v": [1], "role": "client", "mf": 1},
                    {"t": 10, "i": 1, "s": "echo.x", "p": "x" * 1000},
                )
                got = await peer.until_closed()
            [error] = errors(got)
            assert error.code == ErrorCode.BAD_FIELD
            assert "mf" in error.message or "max_frame" in error.message
            await still_serves(url)


async def test_very_long_subjects_and_patterns_are_refused_with_a_clear_error():
    with trio.fail_after(30):
        async with leader_with_worker() as (_, url):
            long = ".".join(["t"] * 100_000)
            for message in (
                {"t": 11, "i": 1, "sid": 1, "pat": long + ".>"},
                {"t": 11, "i": 1, "sid": 1, "pat": ".".join(["*"] * 50_000)},
                {"t": 10, "i": 1, "s": long, "p": 1},
                {"t": 3, "i": 1, "j": "x", "s": long, "p": 1},
            ):
                async with RawPeer.connect(url) as peer:
                    await peer.send({"t": 1, "i": 0, "v": [1], "role": "client"}, message)
                    got = await peer.until_closed()
                [error] = errors(got)
                assert error.code == ErrorCode.BAD_SUBJECT, error
                assert len(error.message) < 1000
            await still_serves(url)


async def test_a_payload_just_under_the_frame_limit_is_answered_too_large():
    with trio.fail_after(60):
        async with leader_with_worker() as (leader, url):
            async with RawPeer.connect(url) as peer:
                await peer.send({"t": 1, "i": 0, "v": [1], "role": "client"})
                welcome = await peer.next_message()
                assert isinstance(welcome, protocol.Welcome)
                limit = protocol.DEFAULT_MAX_FRAME_SIZE
                submit = {"t": 3, "i": 5, "j": "huge", "s": "echo.big", "p": b""}
                room = limit - len(cbor2.dumps(submit)) - 8
                submit["p"] = b"x" * room
                assert len(cbor2.dumps(submit)) <= limit
                await peer.send(submit)
                answer = await peer.next_message()
                assert isinstance(answer, protocol.Error), answer
                assert (
                    answer.code == ErrorCode.TOO_LARGE
                    and answer.cid == 5
                    and answer.job_id == "huge"
                )
                # The connection stays open and serves the next submit.
                await peer.send({"t": 3, "i": 6, "j": "small", "s": "echo.small", "p": 7})
                result = await peer.next_message()
                assert isinstance(result, protocol.Result) and result.payload == 7
            await still_serves(url)
            assert leader.stats()["in_flight"] == 0


async def test_a_result_over_the_clients_own_limit_fails_that_call_only():
    with trio.fail_after(30):
        async with leader_with_worker() as (_, url):
            async with RawPeer.connect(url) as peer:
                await peer.send({"t": 1, "i": 0, "v": [1], "role": "client", "mf": MIN_FRAME})
                assert isinstance(await peer.next_message(), protocol.Welcome)
                await peer.send(
                    {"t": 3, "i": 5, "j": "r1", "s": "echo.big", "p": b"x" * (MIN_FRAME * 2)}
                )
                answer = await peer.next_message()
                assert isinstance(answer, protocol.Error), answer
                assert answer.code == ErrorCode.TOO_LARGE and answer.cid == 5
                await peer.send({"t": 3, "i": 6, "j": "r2", "s": "echo.small", "p": 1})
                result = await peer.next_message()
                assert isinstance(result, protocol.Result) and result.payload == 1
            await still_serves(url)


async def test_a_deliver_over_a_subscribers_limit_is_skipped_for_it_only():
    with trio.fail_after(30):
        async with leader_with_worker() as (_, url):
            async with RawPeer.connect(url) as small, Client.connect(url) as big:
                await small.send(
                    {"t": 1, "i": 0, "v": [1], "role": "client", "mf": MIN_FRAME},
                    {"t": 11, "i": 1, "sid": 1, "pat": "news.>"},
                )
                assert isinstance(await small.next_message(), protocol.Welcome)
                async with big.subscribe("news.>") as sub:
                    await big.publish("news.big", b"x" * (MIN_FRAME * 2), qos=1)
                    await big.publish("news.small", 1, qos=1)
                    assert (await sub.receive()).subject == "news.big"
                    assert (await sub.receive()).subject == "news.small"
                deliver = await small.next_message()
                assert isinstance(deliver, protocol.Deliver) and deliver.subject == "news.small"
            await still_serves(url)


async def test_statistics_queries_are_answered_at_most_once_a_second_and_fit_or_say_too_large():
    with trio.fail_after(30):
        async with leader_with_worker() as (_leader, url):
            async with RawPeer.connect(url) as noisy:  # many subjects: big statistics
                await noisy.send(
                    {"t": 1, "i": 0, "v": [1], "role": "client"},
                    *(
                        {"t": 3, "i": i + 1, "j": f"n{i}", "s": f"nobody.{i}", "p": i}
                        for i in range(1300)
                    ),
                )
                for _ in range(1301):
                    await noisy.next_message()  # (the Welcome, then a no_route each)
            async with RawPeer.connect(url) as peer:
                await peer.send({"t": 1, "i": 0, "v": [1], "role": "client"})
                assert isinstance(await peer.next_message(), protocol.Welcome)
                # One frame asking 4,096 times (a bundle would do the same): one answer,
                # 4,095 busy refusals, and the leader is not held up building them.
                started = trio.current_time()
                await peer.send(*({"t": 23, "i": 10 + i, "w": "stats"} for i in range(4096)))
                answers = [await peer.next_message() for _ in range(4096)]
                assert trio.current_time() - started < 5
                [stats] = [a for a in answers if isinstance(a, protocol.Result)]
                assert stats.cid == 10 and len(stats.payload["subjects"]) <= 1000
                assert stats.payload["subjects_omitted"] >= 300
                busy = [a for a in answers if isinstance(a, protocol.Error)]
                assert len(busy) == 4095 and {b.code for b in busy} == {ErrorCode.BUSY}
            # A peer whose frame limit the statistics do not fit is told so.
            async with RawPeer.connect(url) as small:
                await small.send(
                    {"t": 1, "i": 0, "v": [1], "role": "client", "mf": MIN_FRAME},
                    {"t": 23, "i": 5, "w": "stats"},
                )
                assert isinstance(await small.next_message(), protocol.Welcome)
                answer = await small.next_message()
                assert isinstance(answer, protocol.Error) and answer.code == ErrorCode.TOO_LARGE
            await still_serves(url)
