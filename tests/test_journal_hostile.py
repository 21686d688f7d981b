"""What a peer sends never takes down a journalled leader, and a job id used again is a
new job in the journal: the findings of issue 12's review, as tests.

- a count the protocol allows but SQLite cannot store (``max_attempts`` of 2**63) is
  written, capped, and the leader serves on;
- a held answer over the asking client's frame limit (a dead letter's payload, to a client
  that announced a 4 KiB limit) is answered ``too_large``; the leader serves on;
- a job id that expired and is enqueued again before the next commit is one queued job in
  the file (the expired job's pending update does not overwrite the new job's row).
"""

from __future__ import annotations

import pytest
import trio

from actors import Client, DeadLettered, Job, Leader, Worker
from actors.worker import WorkerRunner
from protocol import SUPPORTED_VERSIONS, Ack, Error, ErrorCode, Hello, Query
from tests.helpers import RawPeer
from tests.test_journal_broker import (
    T0,
    client,
    commit,
    make_broker,
    open_journal,
    state_in_file,
    submit,
)

pytestmark = pytest.mark.e2e


class Fail(Worker):
    subjects = ["jobs.fail"]

    async def handle(self, job: Job) -> None:
        raise ValueError("boom")


async def test_a_count_sqlite_cannot_store_is_capped_and_the_leader_serves_on(tmp_path):
    with trio.fail_after(20):
        leader = Leader(listen=["tcp://127.0.0.1:0"], data_dir=str(tmp_path))
        async with trio.open_nursery() as nursery:
            [url] = await nursery.start(leader.run)
            async with Client.connect(url) as c:
                job_id = await c.enqueue(
                    "x.y", 1, job_id="huge", max_attempts=2**63, wait_for_worker=True
                )
                assert job_id == "huge"
                # still serving, and the job is in the file
                assert await c.enqueue("x.y", 2, job_id="next", wait_for_worker=True) == "next"
            assert leader.journal is not None and leader.journal.refusal is None
            nursery.cancel_scope.cancel()
        # read back after a restart
        again = Leader(listen=["tcp://127.0.0.1:0"], data_dir=str(tmp_path))
        async with trio.open_nursery() as nursery:
            await nursery.start(again.run)
            assert again.recovered is not None and again.recovered["jobs"] == 2
            assert again.broker.jobs["huge"].max_attempts == 2**62
            nursery.cancel_scope.cancel()


async def test_a_held_answer_over_the_clients_frame_limit_is_answered_too_large(tmp_path):
    with trio.fail_after(20):
        leader = Leader(listen=["tcp://127.0.0.1:0"], data_dir=str(tmp_path), max_attempts=1)
        async with trio.open_nursery() as nursery:
            [url] = await nursery.start(leader.run)
            await nursery.start(WorkerRunner(Fail(), url, name="w").run)
            async with Client.connect(url) as c:
                with pytest.raises(DeadLettered):
                    await c.submit("jobs.fail", "x" * 8000, job_id="big")
            host, port = url.removeprefix("tcp://").rsplit(":", 1)
            stream = await trio.open_tcp_stream(host, int(port))
            peer = RawPeer(stream)
            await peer.send(
                Hello(
                    mid=0, role="client", name="small", versions=list(SUPPORTED_VERSIONS),
                    max_frame=4096,
                )
            )  # fmt: skip
            await peer.receive()  # Welcome
            await peer.send(Query(mid=1, what="dead_letter", job_id="big"))
            answer = await peer.receive()
            assert isinstance(answer, Error) and answer.code == ErrorCode.TOO_LARGE
            assert answer.cid == 1
            await stream.aclose()
            # the leader serves on
            async with Client.connect(url) as c:
                letter = await c.dead_letter("big")
                assert letter["payload"] == "x" * 8000
            nursery.cancel_scope.cancel()


def test_an_id_enqueued_again_after_it_expired_is_one_queued_job_in_the_file(tmp_path):
    journal = open_journal(tmp_path)
    journal.open(now_wall=T0)
    broker = make_broker(journal)
    first, second = client("a"), client("b")
    submit(broker, first, "X", 0.0, timeout=1.0)
    commit(broker, journal, 0.0)
    broker.handle_timer(1.5)  # X expires: an update waits for the next commit
    submit(broker, second, "X", 1.5, enqueue=True)  # a new job under the same id
    commit(broker, journal, 1.6)
    assert [m for m in second.out if isinstance(m, Ack)]
    assert state_in_file(journal, "X")[0] == "queued"
    journal.close()
    again = open_journal(tmp_path)
    recovered = again.open(now_wall=T0 + 2)
    try:
        assert [r.job_id for r in recovered.jobs] == ["X"]
        assert again.prune(T0 + 700) == 0  # (an unfinished job is never pruned)
    finally:
        again.close()
