"""``Client.enqueue`` (return once the leader accepted the job), ``result`` from another
client, ``delay`` and ``at``, and the dead letters in Python.

Three parts:

- ``delay_of``: how ``delay`` and ``at`` become ``Submit.delay`` and what is refused (no
  network).
- Against a scripted leader (``runtime.serve``, real loopback sockets, real time): what the
  client sends and how it takes the answers: the Submit of an ``enqueue``, sent again
  under the same job id after a reconnect; an ``accept_timeout`` that never cancels the
  job; the dead-letter queries' answers decoded.
- Against a real leader (``e2e``): in memory, and journalled for what must survive it.
  Delays are real time (a leader's delays are wall-clock times): small ones (0.3 s),
  asserting that the job did not run before.
"""

from __future__ import annotations

import datetime as dt
import functools
import math
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio

import runtime
from actors import (
    Busy,
    Client,
    Conflict,
    DeadLettered,
    Job,
    Leader,
    NoRoute,
    NotFound,
    SubmitTimeout,
    Worker,
)
from actors.client._client import delay_of
from actors.worker import WorkerRunner
from protocol import (
    MAX_DELAY,
    SUPPORTED_VERSIONS,
    Ack,
    Cancel,
    Encoded,
    Error,
    ErrorCode,
    Hello,
    Query,
    Result,
    Submit,
    Welcome,
)
from runtime import Backoff

FAST_RETRY = Backoff(base=0.01, factor=2.0, cap=0.05, jitter=0.0)
UTC = dt.UTC


# --------------------------------------------------------------------------- delay, at


def test_delay_of_a_number_or_a_timedelta():
    assert delay_of(None, None) is None
    assert delay_of(2, None) == 2.0
    assert delay_of(0.25, None) == 0.25
    assert delay_of(dt.timedelta(minutes=2), None) == 120.0
    assert delay_of(MAX_DELAY, None) == MAX_DELAY
    assert delay_of(5, None, timeout=6) == 5.0


def test_at_becomes_the_seconds_until_then_from_the_wall_clock():
    seconds = delay_of(None, dt.datetime.now(UTC) + dt.timedelta(seconds=100))
    assert seconds is not None and 99 <= seconds <= 100
    # Another time zone: the same instant.
    tz = dt.timezone(dt.timedelta(hours=-7))
    seconds = delay_of(None, dt.datetime.now(tz) + dt.timedelta(hours=1))
    assert seconds is not None and 3599 <= seconds <= 3600
    assert delay_of(None, dt.datetime.now(UTC) - dt.timedelta(days=1)) == 0.0  # passed: now


def test_a_naive_at_is_refused():
    with pytest.raises(ValueError, match="timezone-aware") as info:
        delay_of(None, dt.datetime.now())
    assert "datetime.now(timezone.utc)" in str(info.value)


@pytest.mark.parametrize(
    ("delay", "at", "timeout", "error", "words"),
    [
        (1, dt.datetime.now(UTC), None, TypeError, "not both"),
        (-1, None, None, ValueError, "finite number of seconds >= 0"),
        (math.nan, None, None, ValueError, "finite number"),
        (math.inf, None, None, ValueError, "finite number"),
        (MAX_DELAY + 1, None, None, ValueError, r"at most 31622400 s \(366 days\)"),
        (None, dt.datetime.now(UTC) + dt.timedelta(days=400), None, ValueError, "366 days ahead"),
        ("5", None, None, TypeError, "number of seconds or a timedelta"),
        (True, None, None, TypeError, "number of seconds"),
        (None, "2026-01-01T00:00Z", None, TypeError, "at must be a datetime"),
        (10, None, 5, ValueError, "would expire before it may run"),
        (10, None, 10, ValueError, "would expire before it may run"),
    ],
)
def test_bad_delays_are_refused_with_a_clear_message(delay, at, timeout, error, words):
    with pytest.raises(error, match=words):
        delay_of(delay, at, timeout)


# --------------------------------------------------------------------------- a scripted leader


class ScriptedLeader:
    """A leader that welcomes each connection, records what it receives (with the number of
    the connection it came on), and answers each message with ``answer(conn_number, msg)``:
    a list of messages to send back, or ``"drop"`` to close the connection."""

    def __init__(self, answer: Callable[[int, Any], Any]) -> None:
        self.answer = answer
        self.received: list[tuple[int, Any]] = []
        self.connections = 0
        self.closed = trio.Event()

    async def __call__(self, conn: runtime.Connection) -> None:
        hello = await conn.receive()
        assert type(hello) is Hello
        self.connections += 1
        number = self.connections
        conn.send_nowait(
            Welcome(mid=conn.next_mid(), cid=hello.mid, version=max(SUPPORTED_VERSIONS))
        )
        try:
            async for msg in conn:
                self.received.append((number, msg))
                answer = self.answer(number, msg)
                if answer == "drop":
                    await conn.aclose(
                        Error(mid=conn.next_mid(), code=ErrorCode.SHUTTING_DOWN, message="restart")
                    )
                    return
                for reply in answer or []:
                    conn.send_nowait(reply)
        except runtime.ConnectionClosed:
            pass
        finally:
            self.closed.set()

    def of(self, kind: type) -> list[Any]:
        return [msg for _, msg in self.received if type(msg) is kind]


@asynccontextmanager
async def scripted(
    answer: Callable[[int, Any], Any],
) -> AsyncIterator[tuple[ScriptedLeader, Client]]:
    leader = ScriptedLeader(answer)
    async with trio.open_nursery() as nursery:
        url = await nursery.start(functools.partial(runtime.serve, "tcp://127.0.0.1:0", leader))
        async with Client.connect(url, reconnect_backoff=FAST_RETRY) as client:
            yield leader, client
        nursery.cancel_scope.cancel()


def ack(msg: Any) -> Ack:
    return Ack(mid=1_000_000 + msg.mid, cid=msg.mid, job_id=msg.job_id)


async def test_enqueue_sends_a_qos1_submit_marked_enqueue_and_returns_on_the_ack():
    with trio.fail_after(10):
        async with scripted(lambda _n, msg: [ack(msg)]) as (leader, client):
            job_id = await client.enqueue(
                "mail.send", {"to": "a@b"}, job_id="mail-1", delay=1.5, timeout=60,
                headers={"key": "a"}, max_attempts=3,
            )  # fmt: skip
            auto = await client.enqueue("mail.send", {"to": "c@d"})
    assert job_id == "mail-1"
    first, second = leader.of(Submit)
    assert first.enqueue and first.qos == 1 and first.delay == 1.5 and first.timeout == 60
    assert first.job_id == "mail-1" and first.payload is not None
    assert first.headers == {"key": "a"} and first.max_attempts == 3
    assert not first.wait_for_worker
    assert second.job_id == auto and auto and second.delay is None and second.enqueue


async def test_enqueue_is_sent_again_under_the_same_id_after_a_reconnect():
    # The first connection drops with the Submit unanswered; the second acknowledges it.
    def answer(number: int, msg: Any) -> Any:
        if type(msg) is Submit:
            return "drop" if number == 1 else [ack(msg)]
        return None

    with trio.fail_after(10):
        async with scripted(answer) as (leader, client):
            at = dt.datetime.now(UTC) + dt.timedelta(seconds=30)
            job_id = await client.enqueue("mail.send", {"n": 1}, at=at)
    first, again = leader.of(Submit)
    assert leader.connections == 2 and client.connects == 2
    assert again.job_id == first.job_id == job_id
    assert again.enqueue and again.payload == first.payload and again.delay == first.delay
    assert again.mid != first.mid
    assert 29 <= first.delay <= 30
    assert again.wait_for_worker  # (a restarted leader has no workers yet)


async def test_enqueue_errors_are_those_of_submit():
    def answer(_number: int, msg: Any) -> Any:
        code = {"a": ErrorCode.NO_ROUTE, "b": ErrorCode.BUSY, "c": ErrorCode.CONFLICT}
        return [
            Error(
                mid=1_000_000 + msg.mid, cid=msg.mid, code=code[msg.subject], message="no",
                job_id=msg.job_id, retry_after=0.5 if msg.subject == "b" else None,
            )
        ]  # fmt: skip

    with trio.fail_after(10):
        async with scripted(answer) as (_leader, client):
            with pytest.raises(NoRoute):
                await client.enqueue("a", 1)
            with pytest.raises(Busy) as busy:
                await client.enqueue("b", 1)
            assert busy.value.retry_after == 0.5
            with pytest.raises(Conflict) as conflict:
                await client.enqueue("c", 1, job_id="taken")
            assert conflict.value.job_id == "taken"


async def test_an_accept_timeout_raises_and_never_cancels_the_job():
    with trio.fail_after(10):
        async with scripted(lambda _n, _msg: None) as (leader, client):
            started = trio.current_time()
            with pytest.raises(SubmitTimeout) as info:
                await client.enqueue("mail.send", 1, job_id="slow", accept_timeout=0.2)
            assert 0.2 <= trio.current_time() - started < 2
            assert info.value.job_id == "slow"
            assert "enqueue it again with the same job_id" in str(info.value)
            with trio.move_on_after(0.2):  # a cancelled enqueue leaves the job alone too
                await client.enqueue("mail.send", 2, job_id="cancelled")
        await leader.closed.wait()  # (the client closed: everything it sent is in)
    assert [m.job_id for m in leader.of(Submit)] == ["slow", "cancelled"]
    assert leader.of(Cancel) == [] and client.abandoned == 0


async def test_bad_arguments_are_refused_before_anything_is_sent():
    with trio.fail_after(10):
        async with scripted(lambda _n, msg: [ack(msg)]) as (leader, client):
            with pytest.raises(ValueError, match="timezone-aware"):
                await client.enqueue("a", 1, at=dt.datetime(2030, 1, 1))
            with pytest.raises(TypeError, match="not both"):
                await client.enqueue("a", 1, delay=1, at=dt.datetime.now(UTC))
            with pytest.raises(ValueError, match="at most"):
                await client.submit("a", 1, delay=MAX_DELAY * 2)
            with pytest.raises(ValueError, match="would expire"):
                await client.submit("a", 1, delay=5, timeout=1)
            with pytest.raises(ValueError, match="accept_timeout"):
                await client.enqueue("a", 1, accept_timeout=0)
            assert await client.enqueue("a", 1, job_id="fine") == "fine"
    assert [m.job_id for m in leader.of(Submit)] == ["fine"]


async def test_submit_sends_its_delay_and_waits_for_the_result():
    def answer(_number: int, msg: Any) -> Any:
        return [Result(mid=1_000_000 + msg.mid, cid=msg.mid, job_id=msg.job_id, payload=42)]

    with trio.fail_after(10):
        async with scripted(answer) as (leader, client):
            at = dt.datetime.now(UTC) + dt.timedelta(seconds=5)
            assert await client.submit("a", 1, at=at) == 42
            assert await client.submit("a", 1, delay=dt.timedelta(milliseconds=250)) == 42
    first, second = leader.of(Submit)
    assert not first.enqueue and 4 <= first.delay <= 5
    assert second.delay == 0.25


async def test_dead_letter_answers_are_decoded():
    letter = {
        "job_id": "j1", "subject": "mail.send", "attempts": 3, "error_type": "ValueError",
        "error_message": "bad", "dead_at": 1_700_000_000.5, "size": 9,
    }  # fmt: skip

    def answer(_number: int, msg: Any) -> Any:
        def result(payload: Any) -> list[Any]:
            return [Result(mid=1_000_000 + msg.mid, cid=msg.mid, job_id=msg.what, payload=payload)]

        if msg.what == "dead_letters":
            return result({"dead_letters": [letter], "total": 7})
        if msg.what == "dead_letter":
            if msg.job_id != "j1":
                return [
                    Error(mid=1_000_000 + msg.mid, cid=msg.mid, code=ErrorCode.NOT_FOUND,
                          message=f"no dead letter {msg.job_id}", job_id=msg.job_id)
                ]  # fmt: skip
            # The job's payload as a leader keeps it: encoded, spliced into the answer.
            whole = {**letter, "payload": Encoded.of({"to": b"\x00"}), "traceback": "Traceback..."}
            return result(whole)
        if msg.what == "retry_dead_letter":
            return result({"retried": 0 if msg.job_id == "none" else 2, "refused": []})
        return result({"purged": 5})

    with trio.fail_after(10):
        async with scripted(answer) as (leader, client):
            assert await client.dead_letters() == [letter]
            assert await client.dead_letters_listed() == ([letter], 7)
            whole = await client.dead_letter("j1")
            assert whole["payload"] == {"to": b"\x00"} and whole["traceback"] == "Traceback..."
            with pytest.raises(NotFound, match="no dead letter j2") as info:
                await client.dead_letter("j2")
            assert info.value.job_id == "j2"
            assert await client.retry_dead_letters() == 2
            assert await client.retry_dead_letters("none") == 0
            assert await client.purge_dead_letters("j1") == 5
    queries = [(q.what, q.job_id) for q in leader.of(Query)]
    assert queries == [
        ("dead_letters", None),
        ("dead_letters", None),
        ("dead_letter", "j1"),
        ("dead_letter", "j2"),
        ("retry_dead_letter", None),
        ("retry_dead_letter", "none"),
        ("purge_dead_letters", "j1"),
    ]


async def test_a_bare_list_of_dead_letters_and_a_not_found_retry_are_taken_too():
    def answer(_number: int, msg: Any) -> Any:
        if msg.what == "dead_letters":
            return [Result(mid=1_000_000 + msg.mid, cid=msg.mid, job_id="x", payload=[])]
        return [Error(mid=1_000_000 + msg.mid, cid=msg.mid, code=ErrorCode.NOT_FOUND, message="no")]

    with trio.fail_after(10):
        async with scripted(answer) as (_leader, client):
            assert await client.dead_letters_listed() == ([], None)
            assert await client.retry_dead_letters("gone") == 0
            assert await client.purge_dead_letters("gone") == 0


# --------------------------------------------------------------------------- a real leader


class Mail(Worker):
    """Answers ``{"sent": payload["n"]}``; holds each job until ``gate`` is set (when
    ``hold``); fails with ValueError while ``failing`` (payloads with ``"fail"``)."""

    subjects = ["mail.send"]
    concurrency = 8

    def __init__(self) -> None:
        self.gate = trio.Event()
        self.hold = False
        self.failing = True
        self.runs: list[tuple[Any, float]] = []  # (payload, wall-clock time it started)
        self.changed = trio.Event()

    async def handle(self, job: Job) -> dict:
        self.runs.append((job.payload, time.time()))
        self.changed.set()
        self.changed = trio.Event()
        if self.hold:
            await self.gate.wait()
        if job.payload.get("fail") and self.failing:
            raise ValueError(f"cannot send {job.payload['n']}")
        return {"sent": job.payload["n"]}

    async def ran(self, count: int) -> None:
        while len(self.runs) < count:
            await self.changed.wait()


@asynccontextmanager
async def real_cluster(
    *workers: Worker, **leader_kw: Any
) -> AsyncIterator[tuple[Leader, str, trio.Nursery]]:
    leader_kw.setdefault("retry_backoff", FAST_RETRY)
    leader_kw.setdefault("listen", ["tcp://127.0.0.1:0"])
    leader = Leader(**leader_kw)
    async with trio.open_nursery() as nursery:
        [url] = await nursery.start(leader.run)
        for i, worker in enumerate(workers):
            await nursery.start(WorkerRunner(worker, url, name=f"w{i}").run)
        yield leader, url, nursery
        nursery.cancel_scope.cancel()


@pytest.mark.e2e
async def test_enqueue_returns_once_accepted_and_another_client_gets_the_result():
    mail = Mail()
    mail.hold = True
    with trio.fail_after(15):
        async with real_cluster(mail, memory=True) as (_leader, url, _n):
            async with Client.connect(url) as producer:
                job_id = await producer.enqueue("mail.send", {"n": 1}, job_id="m-1")
                assert job_id == "m-1"
                auto = await producer.enqueue("mail.send", {"n": 2})
            # The producer is gone; the jobs are held on the worker, not finished.
            await mail.ran(2)
            async with Client.connect(url) as consumer:
                with pytest.raises(NotFound, match="not finished yet"):
                    await consumer.result("m-1")
                async with trio.open_nursery() as nursery:
                    got: dict[str, Any] = {}

                    async def wait_for(job: str) -> None:
                        got[job] = await consumer.result(job, wait=True)

                    nursery.start_soon(wait_for, "m-1")
                    nursery.start_soon(wait_for, auto)
                    await trio.sleep(0.05)
                    assert got == {}
                    mail.gate.set()
                assert got == {"m-1": {"sent": 1}, auto: {"sent": 2}}
                # Enqueueing a known id again is acknowledged, and runs nothing again.
                assert await consumer.enqueue("mail.send", {"n": 1}, job_id="m-1") == "m-1"
                assert await consumer.result("m-1") == {"sent": 1}
    assert sorted(payload["n"] for payload, _ in mail.runs) == [1, 2]


@pytest.mark.e2e
async def test_enqueue_to_a_subject_no_worker_serves():
    with trio.fail_after(15):
        async with real_cluster(Mail(), memory=True) as (_leader, url, nursery):
            async with Client.connect(url) as client:
                with pytest.raises(NoRoute, match=r"mail\.sent"):
                    await client.enqueue("mail.sent", {"n": 1})
                # Accepted for a worker still to come: with wait_for_worker, or a delay.
                waiting = await client.enqueue("news.send", {"n": 1}, wait_for_worker=True)
                delayed = await client.enqueue("news.send", {"n": 2}, delay=0.05)

                class News(Mail):
                    subjects = ["news.send"]

                await nursery.start(WorkerRunner(News(), url, name="news").run)
                assert await client.result(waiting, wait=True) == {"sent": 1}
                assert await client.result(delayed, wait=True) == {"sent": 2}


@pytest.mark.e2e
async def test_a_delayed_job_does_not_run_before_its_time():
    mail = Mail()
    with trio.fail_after(15):
        async with real_cluster(mail, memory=True) as (_leader, url, _n):
            async with Client.connect(url) as client:
                before = time.time()
                job_id = await client.enqueue("mail.send", {"n": 1}, delay=0.3)
                at = dt.datetime.now(UTC) + dt.timedelta(seconds=0.3)
                at_id = await client.enqueue("mail.send", {"n": 2}, at=at)
                assert await client.result(job_id, wait=True) == {"sent": 1}
                assert await client.result(at_id, wait=True) == {"sent": 2}
                # submit with a delay waits for the delay and the job.
                started = time.time()
                assert await client.submit("mail.send", {"n": 3}, delay=0.3, timeout=10) == {
                    "sent": 3
                }
                assert time.time() - started >= 0.29
    starts = {payload["n"]: when for payload, when in mail.runs}
    assert starts[1] - before >= 0.29
    assert starts[2] >= at.timestamp() - 0.01
    assert starts[3] - started >= 0.29


@pytest.mark.e2e
async def test_map_delays_every_job():
    mail = Mail()
    with trio.fail_after(15):
        async with real_cluster(mail, memory=True) as (_leader, url, _n):
            async with Client.connect(url) as client:
                before = time.time()
                results = [
                    r async for r in client.map("mail.send", [{"n": 1}, {"n": 2}], delay=0.3)
                ]
                assert results == [{"sent": 1}, {"sent": 2}]
                at = dt.datetime.now(UTC) + dt.timedelta(seconds=0.3)
                results = [r async for r in client.map("mail.send", [{"n": 3}], at=at)]
                assert results == [{"sent": 3}]
                with pytest.raises(ValueError, match="delay"):
                    client.map("mail.send", [{"n": 4}], delay=-1)
                with pytest.raises(TypeError, match="not both"):
                    client.map("mail.send", [{"n": 4}], delay=1, at=at)
    starts = {payload["n"]: when for payload, when in mail.runs}
    assert min(starts[1], starts[2]) - before >= 0.29
    assert starts[3] >= at.timestamp() - 0.01
    assert 4 not in starts


@pytest.mark.e2e
async def test_a_journalled_leader_keeps_an_enqueued_job_across_a_restart(tmp_path):
    """Accepted by one leader, which stops before any worker comes; run by the next one on
    the same data directory, and its result asked for from a new client."""
    data_dir = str(tmp_path / "leader")
    with trio.fail_after(20):
        async with real_cluster(data_dir=data_dir) as (leader, url, _n):
            assert leader.journal_path is not None
            async with Client.connect(url) as client:
                job_id = await client.enqueue(
                    "mail.send", {"n": 7}, job_id="durable-7", wait_for_worker=True
                )
                delayed = await client.enqueue("mail.send", {"n": 8}, delay=0.5)
        mail = Mail()
        async with real_cluster(mail, data_dir=data_dir) as (_leader, url, _n):
            async with Client.connect(url) as client:
                assert await client.result(job_id, wait=True) == {"sent": 7}
                assert await client.result(delayed, wait=True) == {"sent": 8}
    assert sorted(payload["n"] for payload, _ in mail.runs) == [7, 8]


@pytest.mark.e2e
async def test_an_enqueue_made_while_the_leader_is_down_is_sent_when_it_is_back(tmp_path):
    """The leader stops; an enqueue waits for it, and a new leader on the same address and
    data directory acknowledges it; the job is not lost and runs once."""
    data_dir = str(tmp_path / "leader")
    with trio.socket.socket() as sock:  # a free port, for both leaders
        await sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    listen = [f"tcp://127.0.0.1:{port}"]
    mail = Mail()
    with trio.fail_after(20):
        async with trio.open_nursery() as outer:
            first = trio.CancelScope()

            async def run_first(task_status: trio.TaskStatus[str]) -> None:
                with first:
                    await Leader(listen=listen, data_dir=data_dir).run(task_status=task_status)

            [url] = await outer.start(run_first)
            async with Client.connect(url, reconnect_backoff=FAST_RETRY) as client:
                assert await client.enqueue("mail.send", {"n": 1}, wait_for_worker=True)
                first.cancel()
                await trio.sleep(0.1)  # (the client has lost its connection)
                assert client._conn is None
                got: list[str] = []
                acknowledged = trio.Event()

                async def enqueue() -> None:
                    got.append(await client.enqueue("mail.send", {"n": 2}, job_id="while-down",
                                                    wait_for_worker=True))  # fmt: skip
                    acknowledged.set()

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(enqueue)
                    await trio.sleep(0.2)
                    assert got == []
                    async with real_cluster(mail, listen=listen, data_dir=data_dir) as (_l, _u, _n):
                        with trio.fail_after(5):
                            await acknowledged.wait()
                        assert got == ["while-down"] and client.connects == 2
                        assert await client.result("while-down", wait=True) == {"sent": 2}
                        await mail.ran(2)
    assert sorted(payload["n"] for payload, _ in mail.runs) == [1, 2]


@pytest.fixture(params=["memory", "journal"])
def leader_kw(request: pytest.FixtureRequest, tmp_path: Any) -> dict[str, Any]:
    if request.param == "memory":
        return {"memory": True}
    return {"data_dir": str(tmp_path / "leader")}


@pytest.mark.e2e
async def test_dead_letters_list_show_retry_and_purge(leader_kw):
    mail = Mail()
    with trio.fail_after(20):
        async with real_cluster(mail, max_attempts=2, **leader_kw) as (_leader, url, _n):
            async with Client.connect(url) as client:
                assert await client.dead_letters() == []
                for n in (1, 2, 3):
                    with pytest.raises(DeadLettered):
                        await client.submit("mail.send", {"n": n, "fail": True}, job_id=f"d-{n}")
                letters = await client.dead_letters()
                assert [letter["job_id"] for letter in letters] == ["d-3", "d-2", "d-1"]
                first = letters[-1]
                assert first["subject"] == "mail.send" and first["attempts"] == 2
                assert first["error_type"] == "ValueError"
                assert first["error_message"] == "cannot send 1"
                assert abs(first["dead_at"] - time.time()) < 60  # epoch seconds
                assert "payload" not in first and "traceback" not in first

                whole = await client.dead_letter("d-1")
                assert whole["payload"] == {"n": 1, "fail": True}
                assert "ValueError: cannot send 1" in whole["traceback"]
                assert whole["attempts"] == 2 and whole["job_id"] == "d-1"
                with pytest.raises(NotFound):
                    await client.dead_letter("d-9")

                # Retried: a new job under its id, which now succeeds.
                mail.failing = False
                assert await client.retry_dead_letters("d-1") == 1
                assert await client.result("d-1", wait=True) == {"sent": 1}
                assert [x["job_id"] for x in await client.dead_letters()] == ["d-3", "d-2"]
                assert await client.retry_dead_letters("d-9") == 0

                assert await client.purge_dead_letters("d-2") == 1
                assert await client.purge_dead_letters("d-2") == 0
                assert [x["job_id"] for x in await client.dead_letters()] == ["d-3"]
                assert await client.purge_dead_letters() == 1
                assert await client.dead_letters() == []
