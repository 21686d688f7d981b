"""A leader with its journal, against real sockets and in-process workers: group commit,
a disk that fills up while it runs, the journal's size limit, and a delayed job across a
restart.

- Group commit: 256 jobs enqueued in one burst are written by a handful of commits, each
  acknowledged once written.
- A full disk (the connection's ``max_page_count`` lowered to just above what the file
  holds: SQLite then answers "database or disk is full", as it does for a full disk):
  new submits are answered ``Busy`` naming the file and saying the disk is full; what was
  accepted before is not acknowledged (an enqueue's Ack, a result) while it cannot be
  written; the leader stays up; once there is room again, the pending batch is written,
  the held answers arrive and submits are accepted again.
- ``max_journal_bytes``: past it, submits are answered ``Busy`` naming the setting.
- A delayed job keeps its due time (wall clock) across a restart of the leader.

Real time (sockets, threads for the commits); each test capped with ``fail_after``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from actors import Busy, Client, Job, Leader, Worker
from actors.leader import JournalError
from actors.worker import WorkerRunner
from tests.helpers import Tally, wait_until

pytestmark = pytest.mark.e2e


@asynccontextmanager
async def cluster(*workers: Worker, **leader_kw: Any) -> AsyncIterator[tuple[Leader, str]]:
    leader = Leader(listen=["tcp://127.0.0.1:0"], **leader_kw)
    async with trio.open_nursery() as nursery:
        [url] = await nursery.start(leader.run)
        for i, worker in enumerate(workers):
            await nursery.start(WorkerRunner(worker, url, name=f"w{i}").run)
        yield leader, url
        nursery.cancel_scope.cancel()


class Gate(Worker):
    """Answers ``{"n": payload["n"]}`` once :attr:`go` is set; counts the jobs it started."""

    subjects = ["jobs.gate"]
    concurrency = 4

    def __init__(self) -> None:
        self.go = trio.Event()
        self.started = Tally()

    async def handle(self, job: Job) -> dict:
        self.started.add()
        await self.go.wait()
        return {"n": job.payload["n"]}


class Stamp(Worker):
    """Records when (trio's clock) each job started."""

    subjects = ["jobs.delayed"]
    concurrency = 4

    def __init__(self) -> None:
        self.started: dict[str, float] = {}
        self.ran = Tally()

    async def handle(self, job: Job) -> str:
        self.started[job.id] = trio.current_time()
        self.ran.add()
        return "ran"


# --------------------------------------------------------------------------- group commit


async def test_a_burst_of_256_enqueues_is_written_by_a_few_commits(tmp_path: Path):
    with trio.fail_after(15):
        async with cluster(data_dir=str(tmp_path)) as (leader, url):
            journal = leader.journal
            assert journal is not None
            assert leader.journal_path == str(tmp_path / "journal.sqlite3")
            async with Client.connect(url) as client:
                commits, rows = journal.commits, journal.rows_written
                acked: list[str] = []

                async def enqueue(i: int) -> None:
                    acked.append(
                        await client.enqueue(
                            "jobs.burst", {"i": i}, job_id=f"b{i}", wait_for_worker=True
                        )
                    )

                async with trio.open_nursery() as nursery:
                    for i in range(256):
                        nursery.start_soon(enqueue, i)
                assert sorted(acked) == sorted(f"b{i}" for i in range(256))
                written = journal.commits - commits
                assert journal.rows_written - rows == 256
                assert 1 <= written <= 8, f"{written} commits for a burst of 256"
                assert journal._db is not None
                [(count,)] = journal._db.execute(
                    "SELECT count(*) FROM jobs WHERE subject = 'jobs.burst'"
                ).fetchall()
                assert count == 256
                stats = leader.stats()["journal"]
                assert stats["commits"] == journal.commits
                assert stats["path"] == str(tmp_path / "journal.sqlite3")
                assert stats["refusal"] is None


async def test_a_second_leader_on_the_same_data_dir_is_refused(tmp_path: Path):
    with trio.fail_after(10):
        async with cluster(data_dir=str(tmp_path)) as (_, url):
            second = Leader(listen=["tcp://127.0.0.1:0"], data_dir=str(tmp_path))
            with pytest.raises(JournalError) as info:
                await second.run()
            assert "in use by another leader" in str(info.value)
            assert str(tmp_path) in str(info.value)
            async with Client.connect(url) as client:  # the first one serves on
                assert await client.enqueue("jobs.x", 1, job_id="x", wait_for_worker=True) == "x"


# --------------------------------------------------------------------------- a full disk


async def _limit_pages(leader: Leader, extra: int | None) -> None:
    """Limit the journal's connection to its current pages plus ``extra`` (None: lift it),
    between two commits (the writer holds the lock while it writes)."""
    journal = leader.journal
    assert journal is not None and journal._db is not None
    async with leader._db_lock:
        db = journal._db
        if extra is None:
            db.execute("PRAGMA max_page_count=1073741823")
        else:
            pages = db.execute("PRAGMA page_count").fetchone()[0]
            db.execute(f"PRAGMA max_page_count={pages + extra}")


async def test_a_full_disk_refuses_submits_and_acknowledges_nothing_unwritten(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    gate = Gate()
    with trio.fail_after(20):
        async with (
            cluster(gate, data_dir=str(tmp_path)) as (leader, url),
            Client.connect(url) as client,
            Client.connect(url) as other,
        ):
            journal = leader.journal
            assert journal is not None
            outcomes: dict[str, Any] = {}

            async def submit_gated() -> None:
                outcomes["gated"] = await client.submit("jobs.gate", {"n": 7}, job_id="gated")

            async def enqueue_big() -> None:
                outcomes["big"] = await client.enqueue(
                    "jobs.later", {"blob": b"x" * 65536}, job_id="big", wait_for_worker=True
                )

            async with trio.open_nursery() as tasks:
                tasks.start_soon(submit_gated)
                await gate.started.reach(1)  # (its row may still be pending: no matter)
                await _limit_pages(leader, extra=2)
                # Accepted by the broker (the journal worked until now), not writable.
                tasks.start_soon(enqueue_big)
                await wait_until(
                    lambda: journal.refusal is not None, timeout=5, what="the write failing"
                )
                refusal = journal.refusal
                assert refusal is not None
                assert str(journal.path) in refusal and "disk is full" in refusal
                assert "big" in leader.broker.jobs

                # New submits are refused, saying why.
                with pytest.raises(Busy) as info:
                    await other.enqueue("jobs.later", {"n": 1}, wait_for_worker=True)
                message = str(info.value)
                assert str(journal.path) in message
                assert "disk is full" in message
                assert info.value.retry_after is not None
                with pytest.raises(Busy, match="disk is full"):
                    await other.submit("jobs.gate", {"n": 2})

                # A result that comes now cannot be written either: nobody hears of it.
                gate.go.set()
                await wait_until(
                    lambda: "gated" not in leader.broker.jobs, timeout=5, what="the result in"
                )
                await trio.sleep(0.3)  # (real time: several write attempts fail meanwhile)
                assert outcomes == {}
                assert journal.failure is not None
                stats = await other.stats(timeout=5)  # (the leader is up: it answers)
                assert stats["journal"]["refusal"] == journal.refusal

                # Room again: the pending batch goes in, the held answers come out (the
                # writer tries again by itself, less often as failures go on).
                await _limit_pages(leader, extra=None)
                lifted = trio.current_time()
            assert trio.current_time() - lifted < 3.0
            assert outcomes == {"gated": {"n": 7}, "big": "big"}
            assert journal.refusal is None and journal.failure is None
            assert journal._db is not None
            rows = dict(journal._db.execute("SELECT job_id, state FROM jobs").fetchall())
            assert rows == {"gated": "done", "big": "queued"}
            # Said once in the log, however many times the write failed.
            failed = [r for r in caplog.records if "disk is full" in r.getMessage()]
            assert [r.levelname for r in failed] == ["ERROR"]
            assert [r.levelname for r in caplog.records if "written again" in r.getMessage()] == [
                "WARNING"
            ]
            # And submits are accepted again.
            assert (
                await other.enqueue("jobs.later", {"n": 3}, job_id="after", wait_for_worker=True)
                == "after"
            )


# --------------------------------------------------------------------------- size limit


async def test_a_journal_over_max_journal_bytes_refuses_submits(tmp_path: Path):
    with trio.fail_after(15):
        async with (
            cluster(data_dir=str(tmp_path), max_journal_bytes=96 * 1024) as (leader, url),
            Client.connect(url) as client,
        ):
            journal = leader.journal
            assert journal is not None
            assert journal.refusal is None and journal.size < 96 * 1024
            accepted = 0
            refused: Busy | None = None
            for i in range(400):  # (the size is measured by the pruning step, every second)
                try:
                    await client.enqueue(
                        "jobs.big", {"blob": bytes(8192)}, job_id=f"j{i}", wait_for_worker=True
                    )
                except Busy as exc:
                    refused = exc
                    break
                accepted += 1
                await trio.sleep(0.02)
            assert refused is not None, f"{accepted} jobs of 8 KiB accepted, none refused"
            assert accepted >= 8  # (96 KiB hold more than 8 jobs of 8 KiB and the schema)
            message = str(refused)
            assert "max_journal_bytes" in message
            assert str(journal.path) in message
            assert "over its limit of 98304" in message
            assert refused.retry_after is not None
            assert journal.size > 96 * 1024
            assert len(leader.broker.jobs) == accepted


# --------------------------------------------------------------------------- delays


async def test_a_delayed_job_runs_at_its_due_time_across_a_restart(tmp_path: Path):
    stamp = Stamp()
    with trio.fail_after(15):
        async with cluster(data_dir=str(tmp_path)) as (_, url), Client.connect(url) as client:
            submitted = trio.current_time()
            await client.enqueue("jobs.delayed", {"n": 1}, job_id="d1", delay=2.0)
        # The leader is stopped: started again half a second later, with a worker.
        await trio.sleep_until(submitted + 0.5)
        restarted = trio.current_time()
        async with cluster(stamp, data_dir=str(tmp_path)) as (leader, url):
            assert leader.recovered is not None and leader.recovered["jobs"] == 1
            async with Client.connect(url) as client:
                assert await client.result("d1", wait=True, timeout=10) == "ran"
    ran = stamp.started["d1"]
    assert ran >= submitted + 2.0 - 0.05, f"ran {ran - submitted:.3f} s after the submit"
    # (Counted from the restart it could not run before restarted + 2.0.)
    assert ran < restarted + 1.9, f"ran {ran - restarted:.3f} s after the restart"
    assert stamp.ran.value == 1
