"""Large payloads from one Python client, against a real leader and worker on loopback.

A burst of submits larger than the connection's outgoing buffer waits for room instead of
failing with ``SendBufferFull``; a payload over the leader's frame limit fails at once with
:class:`actors.TooLarge`, and so does the leader's ``too_large`` answer for one call.
Real time (sockets); each test is capped with ``fail_after``.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio

import actors
import protocol
import runtime
from actors import Client, Job, Leader, Worker
from actors.worker import WorkerRunner
from protocol import Error, ErrorCode, Submit, Welcome

pytestmark = pytest.mark.e2e

MB = 10 * 1000 * 1000


class Digest(Worker):
    """Answers each job with its payload's size and digest (results stay small)."""

    subjects = ["big.digest"]
    concurrency = 4

    async def handle(self, job: Job):
        return {"size": len(job.payload), "sha": hashlib.sha256(job.payload).hexdigest()}


@asynccontextmanager
async def cluster() -> AsyncIterator[str]:
    leader = Leader(listen=["tcp://127.0.0.1:0"])
    async with trio.open_nursery() as nursery:
        (url,) = await nursery.start(leader.run)
        await nursery.start(WorkerRunner(Digest(), url, name="digest").run)
        yield url
        nursery.cancel_scope.cancel()


async def test_eight_ten_megabyte_submits_at_once_all_succeed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    payloads = [bytes([i]) * MB for i in range(8)]
    results: dict[int, object] = {}
    waited = []
    send_when_room = Client._send_when_room

    async def spy(self: Client, conn: runtime.Connection, call: object) -> None:
        waited.append(call)
        await send_when_room(self, conn, call)  # type: ignore[arg-type]

    monkeypatch.setattr(Client, "_send_when_room", spy)
    with trio.fail_after(60):
        async with cluster() as url, Client.connect(url) as client:
            assert client._conn is not None and client._conn.max_outgoing < MB  # (8 MiB)

            async def submit(i: int) -> None:
                results[i] = await client.submit("big.digest", payloads[i])

            async with trio.open_nursery() as nursery:
                for i in range(8):
                    nursery.start_soon(submit, i)
            # Small ones still go straight out afterwards.
            assert await client.submit("big.digest", b"x") == {
                "size": 1,
                "sha": hashlib.sha256(b"x").hexdigest(),
            }
    assert results == {
        i: {"size": MB, "sha": hashlib.sha256(payloads[i]).hexdigest()} for i in range(8)
    }
    assert len(waited) == 7  # all but the first waited for room (the small one did not)


async def test_a_payload_over_the_frame_limit_fails_at_once() -> None:
    limit = protocol.DEFAULT_MAX_FRAME_SIZE
    with trio.fail_after(30):
        async with cluster() as url, Client.connect(url) as client:
            start = trio.current_time()
            with pytest.raises(actors.TooLarge) as info:
                await client.submit("big.digest", b"x" * (limit + 1))
            assert trio.current_time() - start < 1
            assert info.value.limit == limit and info.value.size > limit
            assert "over the leader's frame limit" in str(info.value)
            with pytest.raises(actors.TooLarge):
                await client.publish("big.news", b"x" * (limit + 1))
            with pytest.raises(actors.TooLarge):
                await client.publish("big.news", b"x" * (limit + 1), qos=1)
            # Nothing was sent; the connection goes on.
            assert await client.submit("big.digest", b"y") == {
                "size": 1,
                "sha": hashlib.sha256(b"y").hexdigest(),
            }


async def test_the_leader_s_too_large_answer_is_too_large(nursery: trio.Nursery) -> None:
    # A stand-in leader that answers every submit as the leader does when the job would
    # not fit its worker's frame limit.
    async def leader(conn: runtime.Connection) -> None:
        hello = await conn.receive()
        conn.send_nowait(Welcome(mid=conn.next_mid(), cid=hello.mid, version=2))
        async for msg in conn:
            if type(msg) is Submit:
                conn.send_nowait(
                    Error(
                        mid=conn.next_mid(),
                        cid=msg.mid,
                        job_id=msg.job_id,
                        code=ErrorCode.TOO_LARGE,
                        message="the job is over the frame limit of every worker for big.digest",
                    )
                )

    url = await nursery.start(runtime.serve, "tcp://127.0.0.1:0", leader)
    with trio.fail_after(10):
        async with Client.connect(url) as client:
            with pytest.raises(actors.TooLarge) as info:
                await client.submit("big.digest", b"z" * 1000)
            assert "frame limit of every worker" in str(info.value)
            assert info.value.size is None and info.value.limit is None
