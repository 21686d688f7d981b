"""The no-op worker of the job benchmark: answers every ``bench.noop`` job with ``None``.

Run by ``bench/bench_jobs.py`` as ``python -m actors.worker --url URL bench.noop:Noop``.
"""

from __future__ import annotations

from actors import Job, Worker


class Noop(Worker):
    """Does nothing, as fast as it can; 64 jobs at once so one worker can hold all in flight."""

    subjects = ["bench.noop"]
    concurrency = 64

    async def handle(self, job: Job) -> None:
        return None
