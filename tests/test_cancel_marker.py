"""A cancelled job is told by its own mark, never by a name a handler could raise.

The leader marks the Result of a job a client cancelled with ``error_code`` ``cancelled``
(to the clients waiting for it, and to later resubmissions and queries of it); the client
raises :class:`~actors.JobCancelled` for that mark only. A handler that raises an exception
class of its own named ``Cancelled`` fails its job like any other exception: the client
gets :class:`~actors.JobFailed` (or :class:`~actors.DeadLettered`) with ``error_type``
``Cancelled``, never ``JobCancelled``; and a worker cannot forge the mark.
"""

from __future__ import annotations

import pytest
import trio

from actors import Client, DeadLettered, Job, JobCancelled, JobFailed, Leader, Worker
from actors.worker import WorkerRunner
from protocol import Cancel, ErrorCode, Nack, Query, Result
from tests.helpers import wait_until
from tests.test_broker import client, make_broker, results, submit, worker


class Cancelled(Exception):
    """A user's exception that happens to be named like the cancellation."""


class Named(Worker):
    """Raises the user's ``Cancelled`` for ``named.raise``; sleeps long for ``named.wait``."""

    subjects = ["named.*"]
    concurrency = 4

    async def handle(self, job: Job):
        if job.subject == "named.raise":
            raise Cancelled("my own exception, not a cancellation")
        await trio.sleep(60)
        return "too late"


async def start(nursery: trio.Nursery) -> tuple[Leader, str]:
    leader = Leader(listen=["tcp://127.0.0.1:0"])
    [url] = await nursery.start(leader.run)
    await nursery.start(WorkerRunner(Named(), url, name="w", group="named").run)
    return leader, url


# ---------------------------------------------------------------------------------------
# End to end


@pytest.mark.e2e
@pytest.mark.parametrize(("qos", "error_class"), [(0, JobFailed), (1, DeadLettered)])
async def test_a_handlers_own_cancelled_exception_is_a_failure_not_a_cancel(
    nursery, qos, error_class
):
    with trio.fail_after(15):
        _, url = await start(nursery)
        async with Client.connect(url) as c:
            with pytest.raises(JobFailed) as info:
                await c.submit("named.raise", {}, qos=qos, max_attempts=1, timeout=10)
    error = info.value
    assert type(error) is error_class and not isinstance(error, JobCancelled)
    assert error.error_type == "Cancelled"
    assert "my own exception" in error.message


@pytest.mark.e2e
async def test_a_cancelled_job_raises_job_cancelled_for_every_caller_and_after(nursery):
    """Cancelled while it runs: JobCancelled for its submit; then again for a resubmission
    of its id and for a query of its result (the leader stores the mark with it)."""
    with trio.fail_after(15):
        leader, url = await start(nursery)
        async with Client.connect(url) as c:
            errors: list[BaseException] = []

            async def submit_it() -> None:
                try:
                    await c.submit("named.wait", {}, job_id="stop-me")
                except JobCancelled as exc:
                    errors.append(exc)

            async with trio.open_nursery() as inner:
                inner.start_soon(submit_it)
                await wait_until(
                    lambda: leader.stats()["in_flight"] == 1, timeout=10, what="the job running"
                )
                await c.cancel("stop-me", reason="changed my mind")
            [error] = errors
            assert (error.error_type, error.message) == ("Cancelled", "changed my mind")
            with pytest.raises(JobCancelled):
                await c.submit("named.wait", {}, job_id="stop-me", timeout=5)
            with pytest.raises(JobCancelled):
                await c.result("stop-me", timeout=5)


# ---------------------------------------------------------------------------------------
# The leader's mark, sans-I/O


def test_the_leader_marks_cancelled_results_and_only_those():
    b = make_broker()
    c = client()
    submit(b, c, "queued", mid=1)
    b.cancel(c, Cancel(mid=2, job_id="queued"), 1.0)
    w = worker(b, "w", 2, now=1.0)
    submit(b, c, "running", mid=3, now=1.0)
    b.cancel(c, Cancel(mid=4, job_id="running", reason="user"), 2.0)
    b.nack(w, Nack(mid=1, job_id="running", reason="cancelled"), 3.0)  # the worker stopped it
    submit(b, c, "failing", mid=5, now=3.0, qos=0)
    b.result(
        w,
        Result(mid=2, job_id="failing", ok=False, error_type="Cancelled", error_message="mine"),
        4.0,
    )
    submit(b, c, "fine", mid=6, now=4.0)
    b.result(w, Result(mid=3, job_id="fine", payload=7), 5.0)
    by_cid = {r.cid: r for r in results(c)}
    assert by_cid[1].error_code == by_cid[3].error_code == ErrorCode.CANCELLED
    assert by_cid[1].error_type == by_cid[3].error_type == "Cancelled" and not by_cid[3].ok
    assert by_cid[5].error_type == "Cancelled" and by_cid[5].error_code is None
    assert by_cid[6].ok and by_cid[6].error_code is None


def test_a_worker_cannot_forge_the_mark():
    """A worker's Result carrying ``error_code`` is not forwarded as such: the code is the
    leader's word on the job, not the worker's."""
    b = make_broker()
    c = client()
    w = worker(b, "w", 1)
    submit(b, c, "j", mid=1, qos=0)
    forged = Result(
        mid=1, job_id="j", ok=False, error_type="Cancelled", error_code=ErrorCode.CANCELLED
    )
    b.result(w, forged, 1.0)
    [answer] = results(c)
    assert not answer.ok and answer.error_code is None
    b.query_result(c, Query(mid=2, what="result", job_id="j"), 2.0)
    assert results(c)[-1].error_code is None


def test_resubmitting_or_querying_a_cancelled_job_keeps_the_mark():
    b = make_broker()
    c = client()
    submit(b, c, "j", mid=1)
    b.cancel(c, Cancel(mid=2, job_id="j", reason="no"), 1.0)
    submit(b, c, "j", mid=3, now=2.0)
    b.query_result(c, Query(mid=4, what="result", job_id="j"), 3.0)
    assert [(r.cid, r.error_code) for r in results(c)] == [
        (1, "cancelled"),
        (3, "cancelled"),
        (4, "cancelled"),
    ]
