"""Retries and the dead-letter subject: a job that succeeds on its third try, one that never does.

A worker that raises fails the attempt; the leader redelivers a QoS 1 job after an
exponential backoff (``[leader.retry]`` in a cluster file, or the group's own
``[groups.retry]``) and counts its attempts. After
``max_attempts`` deliveries (the leader's ``max_attempts``, or per job with
``client.submit(..., max_attempts=N)``) the job is dead-lettered: the leader publishes a
record of it (id, subject, payload, attempts, last error) on ``$dlq.<subject>`` and the
waiting client gets :class:`~actors.DeadLettered`.

Run the cluster in one terminal::

    python -m actors.cluster --worker examples.flaky:Flaky=2 --worker examples.flaky:Poison

and the client in another::

    python -m examples.flaky
"""

from __future__ import annotations

import sys
from typing import Any

import attrs
import trio

from actors import DLQ_PREFIX, Client, DeadLettered, Job, Worker

FLAKY_SUBJECT = "flaky.work"
POISON_SUBJECT = "flaky.poison"


class Flaky(Worker):
    """Fails the first ``payload["fail_first"]`` attempts of a job, then succeeds.

    Deterministic: whether an attempt fails depends only on ``job.attempt``, which the
    leader increments at every redelivery.
    """

    subjects = [FLAKY_SUBJECT]
    concurrency = 4

    async def handle(self, job: Job) -> dict:
        fail_first = job.payload.get("fail_first", 2)
        if job.attempt <= fail_first:
            print(f"[flaky] job {job.id[:8]}: attempt {job.attempt} fails", flush=True)
            raise ConnectionError(f"upstream not ready (attempt {job.attempt})")
        print(f"[flaky] job {job.id[:8]}: attempt {job.attempt} succeeds", flush=True)
        return {"n": job.payload["n"], "doubled": 2 * job.payload["n"], "attempts": job.attempt}


class Poison(Worker):
    """Always fails: its jobs end on ``$dlq.flaky.poison``."""

    subjects = [POISON_SUBJECT]
    concurrency = 4

    async def handle(self, job: Job) -> Any:
        raise ValueError(f"cannot process {job.payload!r} (attempt {job.attempt})")


@attrs.frozen
class FlakyReport:
    """What the two submissions came to.

    Attributes:
      result: the flaky job's result (it says on which attempt it succeeded).
      dead: the :class:`~actors.DeadLettered` error the poison job's submit raised.
      dead_letter: the record published on ``$dlq.flaky.poison`` (None if it did not
        arrive within the timeout).
    """

    result: dict
    dead: DeadLettered | None
    dead_letter: dict | None


async def main(
    url: str = "tcp://127.0.0.1:7700", max_attempts: int = 4, submit_timeout: float = 60.0
) -> FlakyReport:
    """Submit a job that fails twice before succeeding, then one that is dead-lettered.

    Args:
      url: the leader.
      max_attempts: deliveries of each job before it is dead-lettered.
      submit_timeout: seconds each submit waits for its result.
    """
    max_attempts = int(max_attempts)
    async with Client.connect(url) as client, client.subscribe(DLQ_PREFIX + ">") as dlq:
        result = await client.submit(
            FLAKY_SUBJECT,
            {"n": 21, "fail_first": 2},
            max_attempts=max_attempts,
            timeout=submit_timeout,
        )
        print(f"flaky job: {result} (succeeded on attempt {result['attempts']})")
        dead: DeadLettered | None = None
        try:
            value = await client.submit(
                POISON_SUBJECT, {"order": 7}, max_attempts=max_attempts, timeout=submit_timeout
            )
        except DeadLettered as exc:
            dead = exc
            print(f"poison job: DeadLettered, {exc.error_type}: {exc.message}")
        else:
            print(f"poison job: succeeded?! {value}")
        dead_letter = None
        with trio.move_on_after(5 if dead is not None else 0):
            async for message in dlq:  # other jobs may be dead-lettered too: find ours
                if dead is not None and message.payload.get("job_id") == dead.job_id:
                    dead_letter = message.payload
                    print(f"on {message.subject}: {dead_letter}")
                    break
    return FlakyReport(result=result, dead=dead, dead_letter=dead_letter)


if __name__ == "__main__":
    trio.run(main, *sys.argv[1:3])
