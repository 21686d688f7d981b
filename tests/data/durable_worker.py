"""A worker for the durability end-to-end tests (``tests/test_durability_e2e.py``) that
records every run it starts.

Run by worker processes (``python -m actors.worker tests.data.durable_worker:DurableSquare``
or a cluster's ``--worker``), so it lives in an importable module, not in the test file.
"""

from __future__ import annotations

import os
from typing import Any

import trio

from actors import Job, Worker

#: The subject it serves.
SUBJECT = "durable.square"


class DurableSquare(Worker):
    """Squares ``payload["n"]``, after ``payload["sleep"]`` seconds (default none).

    When ``payload["log"]`` names a file, each run first appends one line
    ``<job id> <attempt> <pid>`` to it (one small ``O_APPEND`` write, so lines written by
    several processes never mix): the test reads which jobs ran, and how often.
    """

    subjects = [SUBJECT]
    concurrency = 8

    async def handle(self, job: Job) -> Any:
        payload = job.payload
        log = payload.get("log")
        if log:
            fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, f"{job.id} {job.attempt} {os.getpid()}\n".encode())
            finally:
                os.close(fd)
        seconds = payload.get("sleep")
        if seconds:
            await trio.sleep(seconds)
        n = payload["n"]
        return {"n": n, "square": n * n}
