"""The leader's JSON API (``actors/leader/_api.py``, ``_admin.py``) as an operator uses it:
over real loopback HTTP, against a leader that runs real jobs. What it shows of jobs and
dead letters (and how it cuts what is long), what it changes (cancel, retry, purge,
scale), who may do which, the read-only mode, hostile parameters and bodies, pages of
100,000 dead letters, and the cluster's scaling of its groups.

The OpenAPI document is checked against the server by ``test_api_schema.py``."""

from __future__ import annotations

import base64
import json
import math
import time
from functools import partial
from typing import Any

import cbor2
import pytest
import trio
from cbor2 import CBORTag

from actors import AuthConfig, Client, Leader, User, Worker
from actors.cluster import run_cluster
from actors.cluster._config import config_from_args, config_from_mapping
from actors.cluster._run import GroupScaler, build_parser
from actors.leader._admin import (
    MAX_DECODED,
    MAX_SHOWN,
    MAX_USER_QUERIES,
    AdminError,
    LeaderAdmin,
    json_safe,
    show_error,
    show_payload,
)
from actors.leader._api import answer, openapi_document
from actors.leader._http import HttpApp, PathTemplate, Request, Response, json_response
from actors.leader._journal import _INSERT_DEAD, SqliteJournal
from actors.worker import Job, WorkerRunner
from protocol import Encoded
from runtime import Backoff
from tests.helpers import wait_until
from tests.test_http import Reply, request

pytestmark = pytest.mark.e2e

FAST_RETRY = Backoff(base=0.01, factor=2.0, cap=0.05, jitter=0.0)
OPS = "ops-token-0123456789abcdefghij"
WEB = "web-token-0123456789abcdefghij"
OTHER = "other-token-0123456789abcdefgh"
SERVER = "server-token-0123456789abcdefg"


class Steer(Worker):
    """Answers by its payload: ``fail`` raises, ``big``/``bytes`` return that many
    characters/bytes, ``block`` waits until released (or cancelled), else the payload."""

    subjects = ["api.*"]
    concurrency = 8

    def __init__(self) -> None:
        self.release = trio.Event()
        self.running: dict[str, trio.Event] = {}

    async def handle(self, job: Job) -> Any:
        payload = job.payload if isinstance(job.payload, dict) else {}
        if payload.get("fail"):
            raise ValueError(f"boom {'x' * payload.get('long', 0)}")
        if "big" in payload:
            return "é" * payload["big"]
        if "bytes" in payload:
            return b"\x00\xff" * (payload["bytes"] // 2)
        if payload.get("block"):
            self.running.setdefault(job.id, trio.Event()).set()
            await self.release.wait()
        return job.payload


def users() -> AuthConfig:
    return AuthConfig(
        users=(
            User(name="ops", tokens=(OPS,), admin=True, submit=[">"], subscribe=[">"]),
            User(name="web", tokens=(WEB,), submit=["api.>"]),
            User(name="other", tokens=(OTHER,), submit=["api.>"]),
            User(name="server", tokens=(SERVER,), serve=["api.>"], publish=["api.>"]),
        )
    )


async def start(
    nursery: trio.Nursery, *workers: Worker, token: str | None = None, **settings: Any
) -> Leader:
    settings.setdefault("memory", True)
    settings.setdefault("retry_backoff", FAST_RETRY)
    leader = Leader(listen=["tcp://127.0.0.1:0"], http="127.0.0.1:0", **settings)
    await nursery.start(leader.run)
    for i, worker in enumerate(workers):
        runner = WorkerRunner(worker, leader.urls[0], name=f"w{i}", group="steer", token=token)
        await nursery.start(runner.run)
    return leader


async def call(
    leader: Leader,
    method: str,
    path: str,
    *,
    token: str | None = None,
    body: Any = None,
    headers: dict[str, str] | None = None,
) -> Reply:
    """One API request; ``body``: a value sent as JSON (bytes: as they are)."""
    sent = dict(headers or {})
    if token is not None:
        sent["Authorization"] = f"Bearer {token}"
    data = None
    if body is not None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        sent.setdefault("Content-Type", "application/json")
    elif method in ("POST", "PUT", "DELETE"):
        data = b""
    assert leader.http_url is not None
    return await request(leader.http_url, path, method=method, headers=sent, body=data)


async def ok(leader: Leader, method: str, path: str, **kw: Any) -> Any:
    reply = await call(leader, method, path, **kw)
    assert reply.status == 200, (method, path, reply.status, reply.body[:300])
    return reply.json()


async def error(leader: Leader, method: str, path: str, status: int, **kw: Any) -> str:
    """The error code of a request expected to fail with ``status``."""
    reply = await call(leader, method, path, **kw)
    assert reply.status == status, (method, path, reply.status, reply.body[:300])
    body = reply.json()
    assert set(body) == {"error", "message"}
    return body["error"]


# --------------------------------------------------------------------------- reading


async def test_stats_and_workers_are_what_the_leader_says(nursery):
    with trio.fail_after(20):
        leader = await start(nursery, Steer(), Steer())
        async with Client.connect(leader.urls[0]) as client:
            assert await client.submit("api.echo", {"n": 1}, timeout=10) == {"n": 1}
        stats = await ok(leader, "GET", "/api/stats")
        assert stats["subjects"]["api.echo"]["done"] == 1
        assert stats["groups"]["steer"]["workers"] == 2
        assert stats["node"] == leader.name and stats["subjects_omitted"] == 0
        assert {k for k in leader.stats() if k != "listen"} <= set(stats)
        page = await ok(leader, "GET", "/api/workers")
        assert page["total"] == 2 and page["offset"] == 0 and page["limit"] == 100
        assert [w["name"] for w in page["workers"]] == ["w0", "w1"]
        worker = page["workers"][0]
        assert worker["group"] == "steer" and worker["subjects"] == ["api.*"]
        assert worker["state"] == "online" and worker["window"] == 8
        assert worker["connected_at"] <= time.time()
        second = await ok(leader, "GET", "/api/workers?offset=1&limit=1&group=steer&state=online")
        assert [w["name"] for w in second["workers"]] == ["w1"] and second["total"] == 2
        none = await ok(leader, "GET", "/api/workers?group=nobody")
        assert none == {"total": 0, "offset": 0, "limit": 100, "workers": []}
        head = await call(leader, "HEAD", "/api/stats")
        assert head.status == 200 and head.body == b""


async def test_stats_list_the_busiest_thousand_subjects(nursery):
    leader = await start(nursery)
    for i in range(1005):
        leader.broker._queue(f"api.s{i}").submitted = i
    stats = await ok(leader, "GET", "/api/stats")
    assert len(stats["subjects"]) == 1000 and stats["subjects_omitted"] == 5
    assert "api.s1004" in stats["subjects"] and "api.s0" not in stats["subjects"]


async def test_a_job_is_seen_through_its_life(nursery):
    with trio.fail_after(20):
        steer = Steer()
        leader = await start(nursery, steer, max_attempts=2)
        async with Client.connect(leader.urls[0]) as client:
            # Queued: nobody serves its subject yet.
            await client.enqueue("api2.none", {"a": 1}, job_id="waiting", wait_for_worker=True)
            job = await ok(leader, "GET", "/api/jobs/waiting")
            assert job["state"] == "queued" and job["attempts"] == 0 and job["worker"] is None
            assert job["subject"] == "api2.none" and job["max_attempts"] == 2
            assert abs(job["submitted_at"] - time.time()) < 5 and job["started_at"] is None
            assert job["result"] is None and job["error"] is None and not job["truncated"]
            # Running, on the worker that holds it.
            await client.enqueue("api.x", {"block": True}, job_id="busy")
            await wait_until(lambda: "busy" in steer.running, timeout=5)
            job = await ok(leader, "GET", "/api/jobs/busy")
            assert (job["state"], job["attempts"], job["worker"]) == ("running", 1, "w0")
            assert job["started_at"] >= job["submitted_at"]
            steer.release.set()
            await wait_until(lambda: "busy" not in leader.broker.jobs, timeout=5)
            job = await ok(leader, "GET", "/api/jobs/busy")
            assert job["state"] == "done" and job["result"] == {"block": True}
            # (finished: who ran it and when are kept with its result)
            assert job["worker"] == "w0"
            assert job["submitted_at"] <= job["started_at"] <= job["finished_at"] <= time.time()
            # Failed for good: dead, with the error and the traceback's end.
            with pytest.raises(Exception, match="boom"):
                await client.submit("api.x", {"fail": True}, job_id="bad", timeout=10)
            job = await ok(leader, "GET", "/api/jobs/bad")
            assert job["state"] == "dead" and job["attempts"] == 2
            assert job["error"]["code"] == "ValueError" and "boom" in job["error"]["message"]
            assert "raise ValueError" in job["error"]["traceback"]
            assert job["finished_at"] is not None and job["worker"] == "w0"
            assert job["submitted_at"] <= job["started_at"] <= job["finished_at"]
            # A QoS 0 job that failed: failed, not dead.
            with pytest.raises(Exception, match="boom"):
                await client.submit("api.x", {"fail": True}, qos=0, job_id="once", timeout=10)
            job = await ok(leader, "GET", "/api/jobs/once")
            assert job["state"] == "failed" and job["error"]["code"] == "ValueError"
        assert await error(leader, "GET", "/api/jobs/nothing", 404) == "not_found"
        assert await error(leader, "GET", "/api/jobs/" + "x" * 257, 400) == "bad_request"


async def test_long_results_and_errors_are_cut(nursery):
    with trio.fail_after(20):
        leader = await start(nursery, Steer(), max_attempts=1)
        async with Client.connect(leader.urls[0]) as client:
            await client.submit("api.x", {"big": 10_000}, job_id="long", timeout=10)
            await client.submit("api.x", {"big": 100_000}, job_id="huge", timeout=10)
            await client.submit("api.x", {"bytes": 1000}, job_id="bytes", timeout=10)
            with pytest.raises(Exception, match="boom"):
                await client.submit("api.x", {"fail": True, "long": 5000}, job_id="e", timeout=10)
        long = await ok(leader, "GET", "/api/jobs/long")  # decoded, its JSON cut
        assert long["truncated"] and long["result"] == '"' + "é" * ((MAX_SHOWN - 1) // 2)
        huge = await ok(leader, "GET", "/api/jobs/huge")  # not even decoded
        assert huge["truncated"] and huge["result"]["cbor_bytes"] == 200_005
        assert huge["result"]["hex"].startswith("7a00030d40c3a9")
        raw = await ok(leader, "GET", "/api/jobs/bytes")
        assert not raw["truncated"]
        assert raw["result"] == {"base64": base64.b64encode(b"\x00\xff" * 500).decode()}
        failed = await ok(leader, "GET", "/api/jobs/e")
        assert failed["truncated"] and failed["error"]["traceback"].startswith("…")
        assert len(failed["error"]["traceback"]) == 4097  # (its end, where the error is)


async def test_a_journal_keeps_finished_jobs_with_their_times(nursery, tmp_path):
    with trio.fail_after(20):
        leader = await start(nursery, Steer(), memory=False, data_dir=str(tmp_path), max_attempts=1)
        async with Client.connect(leader.urls[0]) as client:
            await client.submit("api.x", {"v": "é"}, job_id="kept", timeout=10)
            with pytest.raises(Exception, match="boom"):
                await client.submit("api.x", {"fail": True}, job_id="dead", timeout=10)
            await client.submit("api.x", {"big": 50_000}, job_id="big", timeout=10)
        job = await ok(leader, "GET", "/api/jobs/kept")
        assert job["state"] == "done" and job["result"] == {"v": "é"}
        assert job["submitted_at"] <= job["finished_at"] <= time.time()
        assert job["worker"] == "w0" and job["started_at"] is not None  # (kept in memory)
        dead = await ok(leader, "GET", "/api/jobs/dead")
        assert dead["state"] == "dead" and dead["error"]["code"] == "ValueError"
        assert dead["worker"] == "w0" and dead["started_at"] is not None
        assert (await ok(leader, "GET", "/api/dead-letters/dead"))["worker"] == "w0"
        big = await ok(leader, "GET", "/api/jobs/big")  # (its result's first bytes read)
        assert big["truncated"] and big["result"]["cbor_bytes"] == 100_005
        # An expired job (in the journal only: it has no result).
        job_id = "late"
        leader.broker.config.max_queue_time = 0.01
        leader.broker.retries.max_queue_time = 0.01
        async with Client.connect(leader.urls[0]) as client:
            await client.enqueue("api2.none", 1, job_id=job_id, wait_for_worker=True)
        await wait_until(lambda: job_id not in leader.broker.jobs, timeout=5)
        expired = await ok(leader, "GET", f"/api/jobs/{job_id}")
        assert expired["state"] == "expired" and expired["error"]["code"] == "Expired"


# --------------------------------------------------------------------------- cancel


async def test_cancel_ends_a_waiting_job_and_stops_a_running_one(nursery):
    with trio.fail_after(20):
        steer = Steer()
        leader = await start(nursery, steer)
        async with Client.connect(leader.urls[0]) as client:
            await client.enqueue("api2.none", 1, job_id="w", wait_for_worker=True)
            done = await ok(leader, "POST", "/api/jobs/w/cancel", body={"reason": "not needed"})
            assert done == {"job_id": "w", "state": "cancelled"}
            job = await ok(leader, "GET", "/api/jobs/w")
            assert job["state"] == "cancelled" and job["error"]["message"] == "not needed"
            assert job["worker"] is None and job["started_at"] is None  # (never ran)
            assert job["submitted_at"] <= job["finished_at"]
            assert await error(leader, "POST", "/api/jobs/w/cancel", 409) == "conflict"
            await client.enqueue("api.x", {"block": True}, job_id="r")
            await wait_until(lambda: "r" in steer.running, timeout=5)
            asked = await ok(leader, "POST", "/api/jobs/r/cancel")
            assert asked == {"job_id": "r", "state": "cancelling"}
            await wait_until(lambda: "r" not in leader.broker.jobs, timeout=5)
            job = await ok(leader, "GET", "/api/jobs/r")
            assert job["state"] == "cancelled"
            assert "cancelled over HTTP by an operator" in job["error"]["message"]
        assert await error(leader, "POST", "/api/jobs/nothing/cancel", 404) == "not_found"


# --------------------------------------------------------------------------- dead letters


async def dead_letters(
    leader: Leader, count: int, subject: str = "api.x", prefix: str = "d"
) -> None:
    async with Client.connect(leader.urls[0]) as client:
        for i in range(count):
            with pytest.raises(Exception, match="boom"):
                await client.submit(
                    subject, {"fail": True, "i": i}, job_id=f"{prefix}{i}", max_attempts=1
                )


@pytest.mark.parametrize("memory", [True, False])
async def test_dead_letters_are_listed_shown_retried_and_purged(nursery, tmp_path, memory):
    with trio.fail_after(30):
        steer = Steer()
        leader = await start(
            nursery, steer, memory=memory, data_dir=None if memory else str(tmp_path)
        )
        await dead_letters(leader, 5)
        await dead_letters(leader, 1, subject="api.y", prefix="y")
        page = await ok(leader, "GET", "/api/dead-letters?limit=2")
        assert page["total"] == 6 and page["offset"] == 0 and page["limit"] == 2
        assert [d["job_id"] for d in page["dead_letters"]] == ["y0", "d4"]  # newest first
        assert set(page["dead_letters"][0]) == {
            "job_id", "subject", "attempts", "error_type", "error_message", "dead_at",
        }  # fmt: skip
        page = await ok(leader, "GET", "/api/dead-letters?offset=2&limit=10&subject=api.x")
        assert page["total"] == 5 and [d["job_id"] for d in page["dead_letters"]] == [
            "d2",
            "d1",
            "d0",
        ]
        shown = await ok(leader, "GET", "/api/dead-letters/d3")
        assert shown["payload"] == {"fail": True, "i": 3} and shown["subject"] == "api.x"
        assert shown["error_type"] == "ValueError" and "raise ValueError" in shown["traceback"]
        assert shown["attempts"] == 1 and not shown["truncated"]
        assert shown["worker"] == "w0"  # (the last worker that failed it)
        job = await ok(leader, "GET", "/api/jobs/d3")
        assert job["state"] == "dead" and job["worker"] == "w0"
        # Cancelling it says where it is (as its lookup says: dead).
        reply = await call(leader, "POST", "/api/jobs/d3/cancel")
        assert reply.status == 409 and "in the dead letters" in reply.json()["message"]
        assert await error(leader, "GET", "/api/dead-letters/none", 404) == "not_found"
        # Retry one: it runs again (and fails again: a dead letter again).
        retried = await ok(leader, "POST", "/api/dead-letters/d3/retry")
        assert retried == {"retried": 1, "refused": [], "remaining": 5}
        await wait_until(lambda: "d3" not in leader.broker.jobs, timeout=5)
        assert await error(leader, "POST", "/api/dead-letters/none/retry", 404) == "not_found"
        # Purge one, then retry all (that pass this time), then purge all.
        assert await ok(leader, "DELETE", "/api/dead-letters/d0") == {"purged": 1}
        assert await error(leader, "DELETE", "/api/dead-letters/d0", 404) == "not_found"
        page = await ok(leader, "GET", "/api/dead-letters")
        assert page["total"] == 5 and "d0" not in {d["job_id"] for d in page["dead_letters"]}
        every = await ok(leader, "POST", "/api/dead-letters/retry")
        assert every["retried"] == 5 and every["refused"] == []
        assert 0 <= every["remaining"] <= 5  # (they may have failed again already)
        await wait_until(lambda: not leader.broker.jobs, timeout=10)
        assert (await ok(leader, "GET", "/api/dead-letters"))["total"] == 5  # (failed again)
        assert await ok(leader, "DELETE", "/api/dead-letters") == {"purged": 5}
        assert (await ok(leader, "GET", "/api/dead-letters"))["total"] == 0


async def test_a_dead_letter_whose_job_runs_again_is_not_retried(nursery):
    with trio.fail_after(20):
        steer = Steer()
        leader = await start(nursery, steer)
        async with Client.connect(leader.urls[0]) as client:
            await client.enqueue("api.x", {"block": True}, job_id="again")
            await wait_until(lambda: "again" in steer.running, timeout=5)
        record = {"job_id": "again", "subject": "api.x", "payload": 1, "headers": {},
                  "attempts": 5, "error_type": "E", "error_message": "m", "traceback": None,
                  "dead_at": time.time()}  # fmt: skip
        leader.broker.retries.keep_dead_letter(record, 100)
        assert await error(leader, "POST", "/api/dead-letters/again/retry", 409) == "conflict"
        every = await ok(leader, "POST", "/api/dead-letters/retry")
        assert every == {
            "retried": 0, "refused": ["job again is running again already"], "remaining": 1
        }  # fmt: skip
        steer.release.set()


async def test_retrying_them_all_goes_by_pages_and_stops_at_a_full_queue(nursery):
    leader = await start(nursery, max_queued=150)
    retries = leader.broker.retries
    for i in range(260):
        record = {"job_id": f"j{i}", "subject": "api2.none", "payload": i, "headers": {},
                  "attempts": 5, "error_type": "E", "error_message": "m", "traceback": None,
                  "dead_at": 1000.0 + i}  # fmt: skip
        retries.keep_dead_letter(record, 100)
    admin = LeaderAdmin(leader)
    first = await admin.retry_all_dead_letters(max_jobs=120)
    assert first == {"retried": 120, "refused": [], "remaining": 140}
    assert [f"j{i}" for i in range(120)] == list(leader.broker.jobs)  # the oldest first
    second = await admin.retry_all_dead_letters()
    assert second["retried"] == 30 and second["remaining"] == 110
    assert len(second["refused"]) == 10 and "queue is full" in second["refused"][0]


@pytest.mark.parametrize("where", ["journal", "memory"])
async def test_a_page_of_100000_dead_letters_is_quick(nursery, tmp_path, where):
    count = 100_000
    now = time.time()
    if where == "journal":
        journal = SqliteJournal(tmp_path, sync="normal")
        journal.open()
        rows = [
            (f"job-{i:06d}", f"api.s{i % 10}", cbor2.dumps({"i": i, "pad": "x" * 200}), None,
             None, 5, "ValueError", f"failure {i}", "Traceback...", now - (count - i) * 1e-3,
             300, None)
            for i in range(count)
        ]  # fmt: skip
        assert journal._db is not None
        with journal._db:
            journal._db.execute("BEGIN")
            journal._db.executemany(_INSERT_DEAD, rows)
        journal.close()
        leader = await start(nursery, memory=False, data_dir=str(tmp_path))
    else:
        leader = await start(nursery, max_dead_letters=count)
        keep = leader.broker.retries.keep_dead_letter
        for i in range(count):
            keep({"job_id": f"job-{i:06d}", "subject": f"api.s{i % 10}", "payload": i,
                  "headers": {}, "attempts": 5, "error_type": "ValueError",
                  "error_message": f"failure {i}", "traceback": None,
                  "dead_at": now - (count - i) * 1e-3}, 100)  # fmt: skip
    for path, first in (
        ("/api/dead-letters?limit=500", "job-099999"),
        ("/api/dead-letters?offset=50000&limit=500", "job-049999"),
        ("/api/dead-letters?offset=99900&limit=500", "job-000099"),
        ("/api/dead-letters?offset=5000&limit=500&subject=api.s3", "job-049993"),
    ):
        started = time.perf_counter()
        page = await ok(leader, "GET", path)
        took = time.perf_counter() - started
        assert took < 0.5, (where, path, took)
        assert page["dead_letters"][0]["job_id"] == first, (where, path)
        assert page["total"] == (count if "subject" not in path else count // 10)
        assert len(page["dead_letters"]) == (100 if "99900" in path else 500)
    shown = await ok(leader, "GET", "/api/dead-letters/job-012345")
    assert shown["error_message"] == "failure 12345"
    # The statistics (so the dashboard and /metrics) count them all, not those in memory.
    stats = await ok(leader, "GET", "/api/stats")
    assert stats["dead_letters"] == count
    assert stats["dead_letters_kept"] == (1000 if where == "journal" else count)


def fill_journal(path: Any, count: int, now: float) -> None:
    """``count`` dead letters of ``api.x`` written to the journal in ``path`` (the leader
    stopped), the oldest first."""
    journal = SqliteJournal(path, sync="normal")
    journal.open()
    rows = [
        (f"old-{i:06d}", "api.x", cbor2.dumps({"i": i}), None, None, 5, "ValueError",
         f"failure {i}", None, now - (count - i) * 1e-3, 100, None)
        for i in range(count)
    ]  # fmt: skip
    assert journal._db is not None
    with journal._db:
        journal._db.execute("BEGIN")
        journal._db.executemany(_INSERT_DEAD, rows)
    journal.close()


async def dead_letter_totals(leader: Leader) -> dict[str, float]:
    """What each view says is the number of dead letters (the statistics are those of a
    new snapshot: the leader's readers share one a second)."""
    await trio.sleep(1.05)
    listing = await ok(leader, "GET", "/api/dead-letters?limit=1")
    stats = await ok(leader, "GET", "/api/stats")
    metrics = (await call(leader, "GET", "/metrics")).body.decode()
    [gauge] = [line for line in metrics.splitlines() if line.startswith("actors_dead_letters ")]
    journal = leader.journal
    assert journal is not None
    async with leader._db_lock:  # (the file's own count, to check the kept one)
        in_file = journal.count_dead_letters()
    return {
        "/api/dead-letters": listing["total"],
        "/api/stats": stats["dead_letters"],
        "/metrics": float(gauge.split()[1]),
        "dashboard": leader.stats_snapshot()["dead_letters"],  # (what its feed shows)
        "file": in_file,
    }


async def test_every_view_counts_every_dead_letter_of_the_journal(nursery, tmp_path):
    # 2,000 dead letters in the journal, 1,000 kept in memory: every view says 2,000
    # (the journal's exact count), and follows dead letters, retries and purges.
    fill_journal(tmp_path, 2000, time.time())
    with trio.fail_after(60):
        leader = await start(nursery, Steer(), memory=False, data_dir=str(tmp_path))

        async def same(expected: int) -> None:
            totals = await dead_letter_totals(leader)
            assert set(totals.values()) == {expected}, totals

        await same(2000)
        stats = await ok(leader, "GET", "/api/stats")
        assert stats["dead_letters_kept"] == 1000  # (the newest, in memory)
        await dead_letters(leader, 3)
        await same(2003)
        retried = await ok(leader, "POST", "/api/dead-letters/old-000000/retry")
        assert retried == {"retried": 1, "refused": [], "remaining": 2002}
        await same(2002)  # (it ran again, and worked)
        assert await ok(leader, "DELETE", "/api/dead-letters/old-000001") == {"purged": 1}
        await same(2001)
        assert await ok(leader, "DELETE", "/api/dead-letters") == {"purged": 2001}
        await same(0)
        assert len(leader.broker.dead_letters) == 0
        await dead_letters(leader, 2, prefix="again")
        await same(2)


async def test_a_purge_of_all_agrees_with_memory_about_what_died_meanwhile(nursery, tmp_path):
    # Dead letters that die while the purge writes what was pending are purged from
    # memory and from the file alike; those that die after it stay in both.
    with trio.fail_after(30):
        leader = await start(nursery, Steer(), memory=False, data_dir=str(tmp_path))
        await dead_letters(leader, 3)
        journal = leader.journal
        assert journal is not None
        broker = leader.broker
        commit_once = leader._commit_once
        meanwhile = trio.Event()

        async def commit_then_one_more(journal: SqliteJournal) -> bool:
            written = await commit_once(journal)
            if not meanwhile.is_set():  # (while the purge's own commit ran: one more died)
                record = {"job_id": "meanwhile", "subject": "api.x", "payload": 1,
                          "headers": {}, "attempts": 1, "error_type": "E",
                          "error_message": "m", "traceback": None, "dead_at": time.time()}  # fmt: skip
                broker.retries.keep_dead_letter(record, 10)
                journal.dead_letter(broker_job("meanwhile"), record, trio.current_time())
                meanwhile.set()
            return written

        leader._commit_once = commit_then_one_more  # type: ignore[method-assign]
        try:
            purged = await ok(leader, "DELETE", "/api/dead-letters")
        finally:
            leader._commit_once = commit_once  # type: ignore[method-assign]
        assert meanwhile.is_set()
        assert purged == {"purged": 4}
        assert len(broker.dead_letters) == 0
        await dead_letters(leader, 1, prefix="after")
        assert (await ok(leader, "GET", "/api/dead-letters"))["total"] == 1
        assert [d["job_id"] for d in broker.dead_letters] == ["after0"]
        async with leader._db_lock:
            assert journal.count_dead_letters() == journal.dead_letter_count == 1


def broker_job(job_id: str) -> Any:
    from actors.leader._jobs import JobRecord

    return JobRecord(job_id, "api.x", 1, {}, 1, 1, 0.0, size=10)


async def test_where_workers_run_is_shown_to_admins_only(nursery):
    with trio.fail_after(30):
        leader = await start(nursery, Steer(), token=SERVER, auth=users())
        [admin_view] = (await ok(leader, "GET", "/api/workers", token=OPS))["workers"]
        assert admin_view["host"] and admin_view["pid"] and admin_view["peer"]
        [user_view] = (await ok(leader, "GET", "/api/workers", token=WEB))["workers"]
        assert (user_view["host"], user_view["pid"], user_view["peer"]) == (None, None, None)
        assert {k: v for k, v in user_view.items() if k not in ("host", "pid", "peer")} == {
            k: v for k, v in admin_view.items() if k not in ("host", "pid", "peer", "last_heard")
        } | {"last_heard": user_view["last_heard"]}


async def test_job_lookups_of_other_identities_leave_the_admins_their_queries(nursery, tmp_path):
    with trio.fail_after(30):
        leader = await start(
            nursery, Steer(), memory=False, data_dir=str(tmp_path), token=SERVER, auth=users()
        )
        admin = LeaderAdmin(leader)
        assert leader.authenticator is not None
        web = leader.authenticator.principals["web"]
        ops = leader.authenticator.principals["ops"]
        release = trio.Event()
        read = leader._blocking

        async def held_read(fn: Any, *args: Any) -> Any:
            await release.wait()
            return await read(fn, *args)

        leader._blocking = held_read  # type: ignore[method-assign]
        try:
            async with trio.open_nursery() as lookups:
                for i in range(MAX_USER_QUERIES):
                    lookups.start_soon(lookup, admin, f"unknown-{i}", web)
                await trio.testing.wait_all_tasks_blocked()
                with pytest.raises(AdminError) as info:  # (the users' slots are taken)
                    await admin.job("one-more", web)
                assert info.value.status == 429 and "job lookups" in info.value.message
                assert leader._admin_queries == 0  # (not the admins')
                lookups.start_soon(lookup, admin, "unknown-ops", ops)
                await trio.testing.wait_all_tasks_blocked()
                assert leader._admin_queries == 1
                release.set()
        finally:
            leader._blocking = read  # type: ignore[method-assign]
        assert leader._admin_queries == 0 and admin._user_queries == 0


async def lookup(admin: LeaderAdmin, job_id: str, principal: Any) -> None:
    with pytest.raises(AdminError) as info:
        await admin.job(job_id, principal)
    assert info.value.status == 404


# --------------------------------------------------------------------------- who may


async def test_with_users_every_route_asks_a_token_and_checks_its_rights(nursery):
    with trio.fail_after(30):
        steer = Steer()
        leader = await start(nursery, steer, token=SERVER, auth=users())
        for path in ("/api/stats", "/api/workers", "/api/dead-letters", "/api/groups",
                     "/api/jobs/x", "/openapi.json"):  # fmt: skip
            reply = await call(leader, "GET", path)
            assert reply.status == 401 and reply.json()["error"] == "auth_failed", path
            assert reply.headers["www-authenticate"] == 'Bearer realm="trio-actors"'
            assert (await call(leader, "GET", path, token="wrong")).status == 401
        assert (await request(leader.http_url, "/healthz")).status == 200  # (open)
        assert (await ok(leader, "GET", "/api/stats", token=WEB))["groups"]["steer"]["workers"] == 1
        # Dead letters and scaling: admins only.
        async with Client.connect(leader.urls[0], token=WEB) as web:
            with pytest.raises(Exception, match="boom"):
                await web.submit("api.x", {"fail": True}, job_id="webs", max_attempts=1, timeout=10)
            await web.enqueue("api.x", {"block": True}, job_id="mine")
            await wait_until(lambda: "mine" in steer.running, timeout=5)
        for method, path in (
            ("GET", "/api/dead-letters"),
            ("GET", "/api/dead-letters/webs"),
            ("POST", "/api/dead-letters/webs/retry"),
            ("POST", "/api/dead-letters/retry"),
            ("DELETE", "/api/dead-letters/webs"),
            ("DELETE", "/api/dead-letters"),
        ):
            assert await error(leader, method, path, 403, token=WEB) == "forbidden", path
        code = await error(
            leader, "PUT", "/api/groups/steer", 403, token=WEB, body={"instances": 1}
        )
        assert code == "forbidden"
        assert (await ok(leader, "GET", "/api/dead-letters", token=OPS))["total"] == 1
        # A job: its owner and admins see and cancel it; to others it does not exist.
        assert (await ok(leader, "GET", "/api/jobs/mine", token=WEB))["state"] == "running"
        assert (await ok(leader, "GET", "/api/jobs/webs", token=WEB))["state"] == "dead"
        assert (await ok(leader, "GET", "/api/jobs/mine", token=OPS))["state"] == "running"
        assert await error(leader, "GET", "/api/jobs/mine", 404, token=OTHER) == "not_found"
        assert await error(leader, "GET", "/api/jobs/webs", 404, token=OTHER) == "not_found"
        assert await error(leader, "POST", "/api/jobs/mine/cancel", 404, token=OTHER) == "not_found"
        assert await error(leader, "POST", "/api/jobs/mine/cancel", 401) == "auth_failed"
        cancelled = await ok(leader, "POST", "/api/jobs/mine/cancel", token=WEB)
        assert cancelled["state"] == "cancelling"
        await wait_until(lambda: "mine" not in leader.broker.jobs, timeout=5)
        job = await ok(leader, "GET", "/api/jobs/mine", token=OPS)
        assert job["state"] == "cancelled" and "'web'" in job["error"]["message"]
        # The document says a token is needed.
        document = await ok(leader, "GET", "/openapi.json", token=WEB)
        assert document["security"] == [{"bearer": []}]


#: Every route that changes something: (method, path, body, admins only).
CHANGES = [
    ("POST", "/api/jobs/{id}/cancel", {"reason": "r"}, False),
    ("POST", "/api/dead-letters/{id}/retry", None, True),
    ("POST", "/api/dead-letters/retry", None, True),
    ("DELETE", "/api/dead-letters/{id}", None, True),
    ("DELETE", "/api/dead-letters", None, True),
    ("PUT", "/api/groups/{id}", {"instances": 1}, True),
]


async def test_every_change_is_guarded(nursery):
    """For each route that changes something: 401 without a token, 403 for a non-admin
    (the cancel of another's job: 404), 404 for an unknown id, 413 for a body over 16 KiB,
    400 for a body where none is taken, 405 for another method (403 read-only: below)."""
    leader = await start(nursery, auth=users())
    leader.scaler = FakeScaler({"steer": 1})
    big = b"{" + b" " * 20_000 + b"}"
    for method, template, body, admin_only in CHANGES:
        path = template.replace("{id}", "unknown")
        assert await error(leader, method, path, 401, body=body) == "auth_failed", path
        code = await error(leader, method, path, 403 if admin_only else 404, token=WEB, body=body)
        assert code == ("forbidden" if admin_only else "not_found"), path
        if "{id}" in template:
            assert await error(leader, method, path, 404, token=OPS, body=body) == "not_found"
        assert await error(leader, method, path, 413, token=OPS, body=big) == "too_large"
        if body is None:
            code = await error(leader, method, path, 400, token=OPS, body={"x": 1})
            assert code == "bad_request", path
        assert await error(leader, "PATCH", path, 405, token=OPS) == "method_not_allowed"


async def test_the_read_only_mode_changes_nothing(nursery):
    with trio.fail_after(20):
        steer = Steer()
        leader = await start(nursery, steer, http_read_only=True)
        await dead_letters(leader, 1)
        for method, template, body, _admin in CHANGES:
            path = template.replace("{id}", "d0" if "groups" not in template else "steer")
            assert await error(leader, method, path, 403, body=body) == "read_only", path
        assert (await ok(leader, "GET", "/api/dead-letters"))["total"] == 1
        assert (await ok(leader, "GET", "/api/jobs/d0"))["state"] == "dead"
        assert await error(leader, "PATCH", "/api/stats", 405) == "method_not_allowed"


async def test_a_foreign_origin_changes_nothing(nursery):
    leader = await start(nursery)
    foreign = {"Origin": "https://evil.example"}
    for method, path in (("POST", "/api/dead-letters/retry"), ("GET", "/api/stats")):
        reply = await call(leader, method, path, headers=foreign)
        assert reply.status == 403 and reply.json()["error"] == "forbidden_origin"


# --------------------------------------------------------------------------- hostile input


@pytest.mark.parametrize(
    "query",
    [
        "offset=-1", "limit=1000000000", "limit=501", "offset=1000000001", "limit=abc",
        "limit=1.5", "limit=", "limit=%2B1", "limit=%201", "offset=99999999999999999999",
        "subject=", "bogus=1", "limit=1&limit=2", "subject=%ff", "%ff=1",
        "&".join(f"f{i}=1" for i in range(40)),
    ],
)  # fmt: skip
async def test_bad_parameters_are_refused(nursery, query):
    leader = await start(nursery)
    assert await error(leader, "GET", f"/api/dead-letters?{query}", 400) == "bad_request"


async def test_bad_parameters_of_each_route(nursery):
    leader = await start(nursery)
    for path in (
        "/api/workers?state=asleep",
        "/api/workers?limit=1001",
        "/api/workers?group=" + "g" * 257,
        "/api/groups?offset=-5",
        "/api/stats?x=1",
        "/openapi.json?x=1",
        "/api/jobs/x?verbose=1",
        "/api/dead-letters/" + "j" * 257,
    ):
        assert await error(leader, "GET", path, 400) == "bad_request", path


async def test_bodies_are_bounded_and_checked(nursery):
    leader = await start(nursery)
    leader.scaler = FakeScaler({"steer": 1})
    put = partial(error, leader, "PUT", "/api/groups/steer")
    for body in (
        {"instances": -1}, {"instances": 1001}, {"instances": 2.5}, {"instances": True},
        {"instances": "3"}, {}, {"instances": 1, "more": 2}, [1], b"{not json", b"[" * 100_00,
    ):  # fmt: skip
        assert await put(400, body=body) == "bad_request", body
    assert await put(400) == "bad_request"  # (none)
    assert await put(415, body=b'{"instances": 1}', headers={"Content-Type": "text/plain"}) == (
        "unsupported_media_type"
    )
    assert await put(413, body=b" " * 20_000) == "too_large"
    reply = await request(
        leader.http_url,
        "/api/groups/steer",
        method="PUT",
        body=b" " * 20_000,
        headers={"Content-Type": "application/json"},
        chunked=True,
    )
    assert reply.status == 413
    cancel = partial(error, leader, "POST", "/api/jobs/x/cancel")
    for body in ({"reason": 5}, {"reason": "r" * 1001}, {"why": "x"}, b'{"reason": "\\ud800"}'):
        assert await cancel(400, body=body) == "bad_request", body
    assert await cancel(404, body={"reason": "fine"}) == "not_found"


async def test_paths_name_ids_percent_encoded(nursery):
    with trio.fail_after(20):
        leader = await start(nursery, Steer())
        async with Client.connect(leader.urls[0]) as client:
            for job_id in ("a/b", "é ?#%", "retry", ".."):
                await client.submit("api.x", {"id": job_id}, job_id=job_id, timeout=10)
        assert (await ok(leader, "GET", "/api/jobs/a%2Fb"))["result"] == {"id": "a/b"}
        assert (await ok(leader, "GET", "/api/jobs/%C3%A9%20%3F%23%25"))["job_id"] == "é ?#%"
        assert (await ok(leader, "GET", "/api/jobs/retry"))["job_id"] == "retry"
        assert (await ok(leader, "GET", "/api/jobs/%2E%2E"))["job_id"] == ".."
        assert await error(leader, "GET", "/api/jobs/a/b", 404) == "not_found"
        assert await error(leader, "GET", "/api/jobs/%ff", 404) == "not_found"
        assert await error(leader, "GET", "/api/jobs/", 404) == "not_found"
        # "retry" is a dead letter's id too, by GET and DELETE; POST retries them all.
        assert await error(leader, "GET", "/api/dead-letters/retry", 404) == "not_found"
        assert (await ok(leader, "POST", "/api/dead-letters/retry"))["retried"] == 0
        assert await error(leader, "PUT", "/api/dead-letters/retry", 405) == "method_not_allowed"


def test_path_templates():
    template = PathTemplate("/api/jobs/{job_id}/cancel")
    assert template.segments == ("api", "jobs", None, "cancel") and template.names == ("job_id",)
    assert template.match(["api", "jobs", "x/y", "cancel"]) == {"job_id": "x/y"}
    for parts in (
        ["api", "jobs", "", "cancel"],
        ["api", "jobs", "x"],
        ["api", "job", "x", "cancel"],
    ):
        assert template.match(parts) is None
    for bad in ("api/x", "/api//x", "/api/{a}/{a}", "/api/x{a}", "/api/{A}", "/api/{a"):
        with pytest.raises(ValueError, match=r"segment|twice|starts"):
            PathTemplate(bad)


async def test_templates_in_the_app(nursery):
    app = HttpApp(Leader(memory=True), client_dir=None, examples_dir=None)
    seen: list[Any] = []

    async def handler(request: Request) -> Response:
        seen.append(request.params)
        return json_response(200, request.params)

    app.add_route("/t/{a}", {"GET": handler})
    app.add_route("/t/{a}/{b}", {"GET": handler, "DELETE": handler})
    app.add_route("/t/{a}", {"PUT": handler})  # (replaces the first)
    assert app.match({"path": "/t/1", "raw_path": b"/t/1", "method": "PUT"})[1] == {"a": "1"}
    assert app.match({"path": "/t/1", "raw_path": b"/t/1", "method": "GET"})[0].allow == "PUT"
    route, params = app.match({"path": "/t/x/y", "raw_path": b"/t/x%2Fz/y?q", "method": "HEAD"})
    assert params == {"a": "x/z", "b": "y"} and route.allow == "DELETE, GET, HEAD"
    assert app.match({"path": "/t", "raw_path": b"/t", "method": "GET"}) is None
    assert app.match({"path": "/t/" + "a" * 5000, "method": "GET"}) is None


# --------------------------------------------------------------------------- showing values


def test_values_are_shown_json_safe():
    value = {
        "nan": math.nan, "inf": -math.inf, "bytes": b"\x01\x02", 3: "int key",
        "tag": CBORTag(4242, [1, 2]), "set": frozenset({1}), "nested": [[[]]],
        "text": "é", "none": None, "big": 2**70,
    }  # fmt: skip
    shown, cut = json_safe(value)
    assert not cut
    assert json.loads(json.dumps(shown, allow_nan=False)) == {
        "nan": "nan", "inf": "-inf", "bytes": {"base64": "AQI="}, "3": "int key",
        "tag": {"tag": 4242, "value": [1, 2]}, "set": [1], "nested": [[[]]], "text": "é",
        "none": None, "big": 2**70,
    }  # fmt: skip
    shown, cut = json_safe(list(range(20_000)))
    assert cut and shown[-1] == "…"
    deep: Any = []
    for _ in range(500):
        deep = [deep]
    assert json_safe(deep)[1]
    assert show_payload(Encoded(cbor2.dumps({"a": 1}))) == ({"a": 1}, False)
    # Not CBOR, trailing bytes, or too large to decode: its size and first bytes in hex.
    assert show_payload(Encoded(b"\xff\xff")) == ({"cbor_bytes": 2, "hex": "ffff"}, False)
    assert show_payload(Encoded(cbor2.dumps(1) + b"\x00"))[0]["cbor_bytes"] == 2
    huge = Encoded(cbor2.dumps(b"x" * (MAX_DECODED + 1)))
    shown, cut = show_payload(huge)
    assert cut and shown["cbor_bytes"] == len(huge.data) and len(shown["hex"]) == MAX_SHOWN // 2
    prefix, cut = show_payload(huge.data[:100], len(huge.data))
    assert cut and prefix["cbor_bytes"] == len(huge.data)
    text, cut = show_payload(Encoded(cbor2.dumps("x" * 10_000)))
    assert cut and text == '"' + "x" * (MAX_SHOWN - 1)
    assert show_payload(None) == (None, False)
    assert answer(200, {"x": math.nan, "b": b"\x01"}).body == b'{"x":"nan","b":{"base64":"AQ=="}}'

    error, cut = show_error("E", "m" * 5000, "t" * 5000)
    assert cut and error["message"].endswith("…") and error["traceback"].startswith("…")
    assert len(error["traceback"]) == 4097
    error, cut = show_error(None, None, "tail", traceback_chars=10)
    assert cut and error == {"code": "Error", "message": "", "traceback": "…tail"}


# --------------------------------------------------------------------------- scaling


class FakeScaler:
    """A scaler as a cluster's: keeps the counts; refuses what the cluster refuses."""

    def __init__(self, counts: dict[str, int]) -> None:
        self.counts = dict(counts)
        self.calls: list[tuple[str, int]] = []

    async def __call__(self, group: str, instances: int) -> int:
        self.calls.append((group, instances))
        if group == "broken":
            raise RuntimeError("group broken failed")
        if group not in self.counts:
            raise LookupError(group)
        self.counts[group] = instances
        return instances

    def groups(self) -> dict[str, int]:
        return dict(self.counts)


async def test_groups_are_listed_and_scaled_through_the_scaler(nursery):
    with trio.fail_after(20):
        leader = await start(nursery, Steer())
        page = await ok(leader, "GET", "/api/groups")
        assert page["managed"] is False and [g["name"] for g in page["groups"]] == ["steer"]
        assert page["groups"][0]["instances"] is None and page["groups"][0]["state"] == "running"
        code = await error(leader, "PUT", "/api/groups/steer", 409, body={"instances": 2})
        assert code == "not_managed"
        leader.scaler = scaler = FakeScaler({"steer": 1, "idle": 0, "broken": 1})
        scaled = await ok(leader, "PUT", "/api/groups/steer", body={"instances": 3})
        assert scaled == {"group": "steer", "instances": 3}
        page = await ok(leader, "GET", "/api/groups")
        assert page["managed"] and page["total"] == 3
        by_name = {g["name"]: g for g in page["groups"]}
        assert by_name["steer"]["instances"] == 3 and by_name["steer"]["workers"] == 1
        assert by_name["idle"]["state"] == "idle" and by_name["idle"]["workers"] == 0
        assert (await ok(leader, "GET", "/api/groups?offset=1&limit=1"))["groups"][0][
            "name"
        ] == "idle"
        assert await error(leader, "PUT", "/api/groups/none", 404, body={"instances": 1}) == (
            "not_found"
        )
        assert await error(leader, "PUT", "/api/groups/broken", 409, body={"instances": 1}) == (
            "conflict"
        )
        assert scaler.calls == [("steer", 3), ("none", 1), ("broken", 1)]
        # A group its cluster runs with no instance is not waited for by /readyz (the
        # cluster says how many each is to run, as its scaler does on every change).
        leader.set_group_instances("idle", 0)
        leader.set_group_state("idle", "starting")
        leader.set_group_state("broken", "starting")
        reply = await request(leader.http_url, "/readyz")
        assert reply.status == 503 and reply.json()["groups_not_ready"] == {"broken": "starting"}


async def test_admin_refuses_a_count_out_of_bounds():
    leader = Leader(memory=True)
    leader.scaler = FakeScaler({"g": 1})
    with pytest.raises(AdminError) as info:
        await LeaderAdmin(leader).scale("g", 1001)
    assert info.value.status == 400


async def test_a_cluster_scales_its_groups_over_http():
    config = config_from_args(
        listen=["tcp://127.0.0.1:0"],
        workers=["echo=tests.workers:Echo=1"],
        in_process=True,
        memory=True,
        http="127.0.0.1:0",
    )
    out: list[str] = []

    class Out:
        def write(self, text: str) -> None:
            out.extend(line for line in text.splitlines() if line)

        def flush(self) -> None:
            pass

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            await nursery.start(partial(run_cluster, config, 1.0, out=Out()))
            [line] = [line for line in out if line.startswith("http listening on ")]
            url = line.removeprefix("http listening on ")

            async def workers() -> int:
                reply = await request(url, "/api/workers?state=online")
                return reply.json()["total"]

            reply = await request(
                url,
                "/api/groups/echo",
                method="PUT",
                body=b'{"instances": 3}',
                headers={"Content-Type": "application/json"},
            )
            assert reply.status == 200 and reply.json() == {"group": "echo", "instances": 3}
            await wait_until(lambda: workers(), timeout=10)
            await wait_until(_count(workers, 3), timeout=10)
            groups = (await request(url, "/api/groups")).json()
            assert groups["managed"] and groups["groups"][0]["instances"] == 3
            assert groups["groups"][0]["scale_error"] is None
            assert "group echo: scaling from 1 to 3 instances" in out
            await wait_until(lambda: "group echo: 3 instances" in out, timeout=10)
            reply = await request(
                url,
                "/api/groups/echo",
                method="PUT",
                body=b'{"instances": 0}',
                headers={"Content-Type": "application/json"},
            )
            assert reply.status == 200
            await wait_until(_count(workers, 0), timeout=10)
            await wait_until(lambda: "group echo: 0 instances" in out, timeout=10)
            assert (await request(url, "/readyz")).status == 200  # (it is to run none)

            async def wanted() -> Any:
                return (await request(url, "/api/stats")).json()["groups"]["echo"]["instances"]

            await wait_until(_count(wanted, 0), timeout=5)  # (what the cluster told its leader)
            reply = await request(
                url,
                "/api/groups/nope",
                method="PUT",
                body=b'{"instances": 1}',
                headers={"Content-Type": "application/json"},
            )
            assert reply.status == 404
            nursery.cancel_scope.cancel()


def _count(probe: Any, expected: int) -> Any:
    async def check() -> bool:
        return await probe() == expected

    return check


async def test_the_group_scaler_refuses_what_it_cannot_do():
    said: list[str] = []
    group = type("G", (), {"desired": 1, "name": "g", "failure": None})()
    failed: dict[str, str] = {}
    scaler = GroupScaler({"g": group}, failed, said.append)  # type: ignore[dict-item]
    with pytest.raises(RuntimeError, match="not running its groups"):
        await scaler("g", 2)  # (no nursery yet)
    with pytest.raises(LookupError):
        await scaler("h", 2)
    for bad in (-1, 1001, 2.5, True):
        with pytest.raises(ValueError, match="from 0 to 1000"):
            await scaler("g", bad)  # type: ignore[arg-type]
    failed["g"] = "it could not start"
    with pytest.raises(RuntimeError, match="failed"):
        await scaler("g", 2)
    assert scaler.groups() == {"g": 1} and said == []


# --------------------------------------------------------------------------- configuration


def test_read_only_from_the_file_and_the_command_line(tmp_path):
    assert config_from_mapping({"leader": {"http_read_only": True}}).leader.http_read_only
    with pytest.raises(Exception, match="true or false"):
        config_from_mapping({"leader": {"http_read_only": "yes"}})
    args = build_parser().parse_args(["--http", ":0", "--http-read-only"])
    assert args.http_read_only
    config = config_from_args(http=":0", http_read_only=True)
    assert config.leader.leader_config().http_read_only
    assert "http_read_only" not in config_from_args(http=":0").leader.leader_kwargs()
    assert HttpApp(Leader(memory=True, http_read_only=True), client_dir=None).read_only


def test_the_document_lists_every_route_and_its_errors():
    document = openapi_document(secured=False)
    assert "security" not in document
    paths = document["paths"]
    assert set(paths) == {
        "/openapi.json", "/api/stats", "/api/workers", "/api/jobs/{job_id}",
        "/api/jobs/{job_id}/cancel", "/api/dead-letters", "/api/dead-letters/retry",
        "/api/dead-letters/{job_id}", "/api/dead-letters/{job_id}/retry", "/api/groups",
        "/api/groups/{name}",
    }  # fmt: skip
    for operations in paths.values():
        for operation in operations.values():
            responses = operation["responses"]
            assert {"200", "403", "default"} <= set(responses) and "401" not in responses
            if "requestBody" in operation:
                assert {"400", "413", "415"} <= set(responses)
            if any(p["in"] == "path" for p in operation.get("parameters", ())):
                assert {"400", "404"} <= set(responses)
    limits = {p["name"]: p["schema"] for p in paths["/api/dead-letters"]["get"]["parameters"]}
    assert limits["limit"]["maximum"] == 500 and limits["offset"]["minimum"] == 0
    secured = openapi_document(secured=True)
    assert all("401" in op["responses"] for ops in secured["paths"].values() for op in ops.values())


async def test_sqlite_reads_a_page_by_an_index(tmp_path):
    journal = SqliteJournal(tmp_path)
    journal.open()
    assert journal._db is not None
    for sql, args in (
        ("SELECT job_id FROM dead_letters ORDER BY dead_at DESC, rowid DESC LIMIT 5 OFFSET 9", ()),
        (
            (
                "SELECT job_id FROM dead_letters WHERE subject = ?"
                " ORDER BY dead_at DESC, rowid DESC LIMIT 5 OFFSET 9"
            ),
            ("s",),
        ),
    ):
        plan = " ".join(row[-1] for row in journal._db.execute("EXPLAIN QUERY PLAN " + sql, args))
        assert "USING INDEX" in plan and "TEMP B-TREE" not in plan, plan
    journal.close()
