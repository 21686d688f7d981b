"""Fan out 10,000 jobs with a progress bar, then print a summary (jobs/s, failures).

Each job hashes a short string with SHA-256 on a :class:`Hash` worker; the client checks
every digest it gets back against its own. ``client.map`` keeps at most ``limit`` jobs
outstanding, so memory stays flat however many jobs are fed in.

Run the cluster (leader + 4 worker processes) in one terminal::

    python -m actors.cluster --worker examples.fanout:Hash=4

and the client in another::

    python -m examples.fanout                      # 10,000 jobs
    python -m examples.fanout tcp://127.0.0.1:7700 50000
"""

from __future__ import annotations

import hashlib
import sys

import attrs
import trio
from tqdm import tqdm

from actors import Client, Job, JobFailed, Worker

SUBJECT = "fanout.hash"


class Hash(Worker):
    """Returns the SHA-256 hex digest of ``payload["text"]``, with the job's index."""

    subjects = [SUBJECT]
    concurrency = 32  # 4 instances x 32 = 128 jobs in flight, the client's map limit

    async def handle(self, job: Job) -> dict:
        return {"i": job.payload["i"], "sha256": digest(job.payload["text"])}


@attrs.frozen
class FanoutSummary:
    """What a fan-out run did.

    Attributes:
      count: jobs submitted.
      ok: jobs whose digest came back and matched the client's own.
      failures: jobs that failed (after their retries) at the leader or the worker.
      mismatches: results that came back with a wrong digest or an unknown index.
      seconds: wall-clock time of the whole fan-out.
    """

    count: int
    ok: int
    failures: int
    mismatches: int
    seconds: float

    @property
    def jobs_per_second(self) -> float:
        """Finished jobs (ok or failed) per second."""
        return (self.ok + self.failures + self.mismatches) / self.seconds if self.seconds else 0.0


def text_of(i: int) -> str:
    """The string job ``i`` hashes."""
    return f"item-{i}"


def digest(text: str) -> str:
    """The SHA-256 hex digest of ``text`` (UTF-8)."""
    return hashlib.sha256(text.encode()).hexdigest()


async def main(
    url: str = "tcp://127.0.0.1:7700", count: int = 10_000, limit: int = 128
) -> FanoutSummary:
    """Map ``count`` hashing jobs over the cluster, ``limit`` at a time, with a progress bar."""
    count, limit = int(count), int(limit)
    payloads = ({"i": i, "text": text_of(i)} for i in range(count))
    expected_left = set(range(count))
    ok = failures = mismatches = 0
    async with Client.connect(url) as client:
        start = trio.current_time()
        with tqdm(total=count, unit="job", desc=SUBJECT, smoothing=0.1) as bar:
            async for res in client.map(SUBJECT, payloads, limit=limit, return_exceptions=True):
                if isinstance(res, JobFailed):
                    failures += 1
                    bar.write(f"failed: {res}")
                elif res["i"] in expected_left and res["sha256"] == digest(text_of(res["i"])):
                    expected_left.discard(res["i"])
                    ok += 1
                else:
                    mismatches += 1
                bar.update()
        seconds = trio.current_time() - start
    summary = FanoutSummary(
        count=count, ok=ok, failures=failures, mismatches=mismatches, seconds=seconds
    )
    print(
        f"{summary.count} jobs in {summary.seconds:.2f} s: {summary.jobs_per_second:,.0f} jobs/s, "
        f"{summary.ok} ok, {summary.failures} failed, {summary.mismatches} wrong"
    )
    return summary


if __name__ == "__main__":
    trio.run(main, *sys.argv[1:3])
