"""Payloads end to end: encoded by the sender, forwarded undecoded by the leader, decoded
by the receiver; a payload nobody can decode fails its own job or message, never a
connection (see :mod:`protocol._payload`).

Real sockets and real time (each test is capped); the hostile frames are built by hand.
"""

from __future__ import annotations

import attrs
import cbor2
import pytest
import trio

import protocol
from actors import Client, Job, JobFailed, Leader, Worker
from actors.worker import WorkerRunner
from protocol import Encoded

from .test_leader_hostile import RawPeer

pytestmark = pytest.mark.e2e

HELLO = {"t": 1, "i": 0, "v": [1, 2], "role": "client"}
NOT_CBOR = b"\x1c"  # a reserved initial byte: no CBOR item starts so


async def answer(peer: RawPeer) -> protocol.Message:
    """The next message that is not a heartbeat."""
    while True:
        message = await peer.next_message()
        if not isinstance(message, (protocol.Ping, protocol.Pong)):
            return message


class Seen(Worker):
    """Echoes each payload, and notes what it saw (type and value)."""

    subjects = ["see.>"]
    concurrency = 4

    def __init__(self) -> None:
        self.seen: list[object] = []

    async def handle(self, job: Job):
        self.seen.append(job.payload)
        return job.payload


async def _cluster(
    nursery: trio.Nursery, worker: Worker, **leader_kw
) -> tuple[Leader, str, WorkerRunner]:
    leader = Leader(listen=["tcp://127.0.0.1:0"], **leader_kw)
    (url,) = await nursery.start(leader.run)
    runner = WorkerRunner(worker, url, name="see-0")
    await nursery.start(runner.run)
    return leader, url, runner


async def test_the_leader_keeps_payloads_encoded_and_workers_and_clients_see_values(
    nursery: trio.Nursery,
) -> None:
    worker = Seen()
    leader, url, _ = await _cluster(nursery, worker)
    value = {"n": [1, 2.5, None, "x", b"raw"], "nested": {"a": [[]] * 3}}
    with trio.fail_after(20):
        async with Client.connect(url) as client:
            assert await client.submit("see.x", value, job_id="v1", timeout=10) == value
    assert worker.seen == [value]
    stored = leader.broker.finished.get("v1", trio.current_time())
    assert stored is not None and type(stored.payload) is Encoded  # the bytes, not the objects
    assert cbor2.loads(stored.payload.data) == value


async def test_a_payload_sent_plain_by_a_hand_built_peer_reaches_the_worker_as_its_value(
    nursery: trio.Nursery,
) -> None:
    worker = Seen()
    _, url, _ = await _cluster(nursery, worker)
    with trio.fail_after(20):
        async with RawPeer.connect(url) as peer:
            await peer.send(HELLO)
            assert isinstance(await answer(peer), protocol.Welcome)
            # A plain byte string is a bytes value (key "p"), not an encoding.
            await peer.send({"t": 3, "i": 1, "j": "p1", "s": "see.x", "p": b"\x05"})
            result = await answer(peer)
            assert isinstance(result, protocol.Result) and result.ok and result.payload == b"\x05"
            await peer.send({"t": 3, "i": 2, "j": "p2", "s": "see.x", "p": {"k": [1, 2]}})
            result = await answer(peer)
            assert result.payload == {"k": [1, 2]}
    assert worker.seen == [b"\x05", {"k": [1, 2]}]


async def test_a_job_whose_payload_cannot_be_decoded_fails_for_good_and_the_worker_goes_on(
    nursery: trio.Nursery,
) -> None:
    worker = Seen()
    _, url, runner = await _cluster(nursery, worker)
    with trio.fail_after(20):
        async with RawPeer.connect(url) as peer:
            await peer.send(HELLO)
            assert isinstance(await answer(peer), protocol.Welcome)
            await peer.send({"t": 3, "i": 1, "j": "bad", "s": "see.x", "e": NOT_CBOR})
            result = await answer(peer)
            assert isinstance(result, protocol.Result) and not result.ok, result
            assert result.error_type == "InvalidPayload" and result.final
            assert result.attempts == 1  # not retried: it would only fail the same way
            assert "not valid CBOR" in (result.error_message or "")
        await still_serves_see(url)
    assert worker.seen == ["ok"] and runner.connects == 1  # never ran, same connection


async def still_serves_see(url: str) -> None:
    async with Client.connect(url) as client:
        assert await client.submit("see.ok", "ok", timeout=10) == "ok"


async def test_a_result_the_client_cannot_decode_fails_that_call_only(
    nursery: trio.Nursery,
) -> None:
    """A worker answers a job with bytes that are not CBOR: the leader forwards them as
    they are; the client's call fails with JobFailed, and its next call works."""
    leader = Leader(listen=["tcp://127.0.0.1:0"])
    (url,) = await nursery.start(leader.run)
    with trio.fail_after(20):
        async with RawPeer.connect(url) as rogue:
            await rogue.send(
                {"t": 1, "i": 0, "v": [1, 2], "role": "worker", "pats": ["rogue.>"], "cr": 4}
            )
            assert isinstance(await answer(rogue), protocol.Welcome)
            async with Client.connect(url) as client:
                async with trio.open_nursery() as calls:
                    failures: list[BaseException] = []

                    async def call() -> None:
                        try:
                            await client.submit("rogue.x", 1, job_id="r1", timeout=10)
                        except JobFailed as exc:
                            failures.append(exc)

                    calls.start_soon(call)
                    assign = await answer(rogue)
                    assert isinstance(assign, protocol.Assign) and assign.payload == 1
                    await rogue.send({"t": 8, "i": 5, "j": "r1", "e": NOT_CBOR})
                (failure,) = failures
                assert failure.error_type == "InvalidPayload"
                assert "could not be decoded" in str(failure)
                # The client's connection is the same one: a good answer goes through.
                calls_done: list[object] = []

                async def good() -> None:
                    calls_done.append(await client.submit("rogue.y", 2, job_id="r2", timeout=10))

                async with trio.open_nursery() as calls:
                    calls.start_soon(good)
                    assign = await answer(rogue)
                    while not isinstance(assign, protocol.Assign):
                        assign = await answer(rogue)
                    await rogue.send({"t": 8, "i": 6, "j": "r2", "e": cbor2.dumps("fine")})
                assert calls_done == ["fine"] and client.connects == 1


async def test_a_published_message_nobody_can_decode_is_dropped_and_the_next_one_arrives(
    nursery: trio.Nursery,
) -> None:
    leader = Leader(listen=["tcp://127.0.0.1:0"])
    (url,) = await nursery.start(leader.run)
    with trio.fail_after(20):
        async with Client.connect(url) as client, client.subscribe("news.>") as sub:
            async with RawPeer.connect(url) as rogue:
                await rogue.send(
                    HELLO,
                    {"t": 10, "i": 1, "s": "news.bad", "e": NOT_CBOR, "q": 1},
                    {"t": 10, "i": 2, "s": "news.good", "e": cbor2.dumps({"ok": 1}), "q": 1},
                )
                assert isinstance(await answer(rogue), protocol.Welcome)
                message = await sub.receive()
            assert (message.subject, message.payload) == ("news.good", {"ok": 1})
            assert client.bad_deliveries == 1 and client.connects == 1


async def test_a_dead_letter_carries_the_jobs_payload_as_its_value(nursery: trio.Nursery) -> None:
    class Fails(Worker):
        subjects = ["doom.>"]

        async def handle(self, job: Job):
            raise RuntimeError("always")

    leader = Leader(listen=["tcp://127.0.0.1:0"], max_attempts=1)
    (url,) = await nursery.start(leader.run)
    runner = WorkerRunner(Fails(), url, name="doom-0")
    await nursery.start(runner.run)
    with trio.fail_after(20):
        async with Client.connect(url) as client, client.subscribe("$dlq.>") as letters:
            with pytest.raises(JobFailed):
                await client.submit("doom.x", {"keep": [1, 2]}, timeout=10)
            letter = await letters.receive()
    assert letter.payload["payload"] == {"keep": [1, 2]}
    assert letter.payload["error_type"] == "RuntimeError"


def test_both_payload_keys_in_one_map_are_refused() -> None:
    body = cbor2.dumps({"t": 3, "i": 1, "j": "x", "s": "a", "p": 1, "e": b"\x01"})
    with pytest.raises(protocol.InvalidField, match="both a plain payload"):
        protocol.decode(len(body).to_bytes(4, "big") + b"\x00" + body)


async def test_the_leader_still_serves_after_every_payload_refusal(nursery: trio.Nursery) -> None:
    worker = Seen()
    _, url, _ = await _cluster(nursery, worker)
    with trio.fail_after(20):
        for wire in (
            {"t": 3, "i": 1, "j": "x", "s": "see.x", "e": 5},
            {"t": 3, "i": 1, "j": "x", "s": "see.x", "p": 1, "e": b"\x01"},
        ):
            async with RawPeer.connect(url) as peer:
                await peer.send(HELLO, wire)
                messages = await peer.until_closed()
                (error,) = [m for m in messages if isinstance(m, protocol.Error)]
                assert error.code == protocol.ErrorCode.BAD_FIELD and "payload" in error.message
        await still_serves_see(url)


async def _raw_maps(stream: trio.SocketStream, count: int) -> list[dict]:
    """The next ``count`` messages that are not heartbeats, decoded as plain CBOR (a map,
    or a bundled message's array)."""
    buffer = b""
    maps: list[dict] = []
    while len(maps) < count:
        data = await stream.receive_some(1 << 16)
        assert data, "closed"
        buffer += data
        while len(buffer) >= 5 and len(buffer) >= 5 + int.from_bytes(buffer[:4], "big"):
            size = int.from_bytes(buffer[:4], "big")
            body, buffer = buffer[5 : 5 + size], buffer[5 + size :]
            decoded = cbor2.loads(body)
            for item in decoded if isinstance(decoded, list) else [decoded]:  # a bundle: its items
                kind = item.get("t") if isinstance(item, dict) else item[0]
                if kind not in (protocol.Ping.KIND, protocol.Pong.KIND):
                    maps.append(item)
    return maps


@pytest.mark.parametrize("versions", [[1], [2, 1]])
async def test_a_version_1_peer_gets_payloads_plain_and_a_version_2_peer_encoded(
    nursery: trio.Nursery, versions: list[int]
) -> None:
    """Version 1 put payloads plain under ``p``; a leader still answers a version-1 peer so,
    with the payload's bytes spliced in (never decoded); from version 2 on, under ``e``."""
    worker = Seen()
    _, url, _ = await _cluster(nursery, worker)
    value = {"deep": [[[1]]], "s": "x"}
    with trio.fail_after(20):
        async with RawPeer.connect(url) as peer:
            await peer.send(
                {**HELLO, "v": versions}, {"t": 3, "i": 1, "j": "v", "s": "see.x", "p": value}
            )
            welcome, result = await _raw_maps(peer.stream, 2)
    assert welcome["t"] == protocol.Welcome.KIND
    if versions == [1]:
        assert result["t"] == protocol.Result.KIND and result["p"] == value and "e" not in result
    else:  # bundled: [8, mid, cid, job_id, ok, the payload encoded, ...]
        place = 1 + [f.name for f in attrs.fields(protocol.Result)].index("payload")
        assert result[0] == protocol.Result.KIND and cbor2.loads(result[place]) == value
