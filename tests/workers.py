"""Tiny worker classes for tests that run workers in other processes (``tests.workers:Echo``).

They live in an importable module, not in a test file, because a worker process started by
a WorkerGroup or ``python -m actors.worker`` imports its class by name.
"""

from __future__ import annotations

import os
from typing import Any

import trio

from actors.worker._job import Job
from actors.worker._worker import Worker


class Echo(Worker):
    """Returns the payload, with the pid of the process that ran it."""

    subjects = ["test.echo"]
    concurrency = 4

    async def handle(self, job: Job) -> Any:
        return {"payload": job.payload, "pid": os.getpid()}


class Sleepy(Worker):
    """Sleeps ``payload["seconds"]`` (default 0.2), then answers; for drain tests."""

    subjects = ["test.sleepy"]
    concurrency = 2

    async def handle(self, job: Job) -> Any:
        seconds = job.payload.get("seconds", 0.2) if isinstance(job.payload, dict) else 0.2
        await trio.sleep(seconds)
        return {"slept": seconds, "pid": os.getpid()}


class Flaky(Worker):
    """Fails with ``ValueError`` whenever the payload says ``{"fail": true}``."""

    subjects = ["test.flaky"]
    concurrency = 4

    async def handle(self, job: Job) -> Any:
        if isinstance(job.payload, dict) and job.payload.get("fail"):
            raise ValueError(f"asked to fail (attempt {job.attempt})")
        return {"ok": True}


class NoSubjects(Worker):
    """Declares no subjects: a configuration must give them."""

    async def handle(self, job: Job) -> Any:
        return None


class NotAWorker:
    """An ordinary class, to check that the loader refuses it."""


def not_a_class() -> None:
    """An ordinary function, to check that the loader refuses it."""


INSTANCE = Echo()


class Recorder(Worker):
    """Logs ``start``/``done`` lines to ``payload["log"]`` around a sleep; for kill tests.

    Each line is one small ``O_APPEND`` write, so lines from several processes never mix.
    """

    subjects = ["test.record"]
    concurrency = 4

    async def handle(self, job: Job) -> Any:
        log = job.payload["log"]
        pid = os.getpid()
        _append(log, f"start {job.id} {pid} {job.attempt}\n")
        await trio.sleep(job.payload.get("seconds", 0.05))
        _append(log, f"done {job.id} {pid} {job.attempt}\n")
        return {"n": job.payload["n"], "pid": pid}


def _append(path: str, line: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


class Crasher(Worker):
    """Kills its own process (``os._exit(3)``) on a job whose payload says ``{"crash": true}``,
    as a poison job might; answers the others with its pid."""

    subjects = ["test.crash"]
    concurrency = 2

    async def handle(self, job: Job) -> Any:
        if isinstance(job.payload, dict) and job.payload.get("crash"):
            os._exit(3)
        return {"pid": os.getpid(), "attempt": job.attempt}


class BadSetup(Worker):
    """Cannot start: its ``setup()`` raises, as one whose database is unreachable would."""

    subjects = ["test.bad_setup"]

    async def setup(self) -> None:
        raise ConnectionRefusedError("cannot reach the database at db:5432")

    async def handle(self, job: Job) -> Any:
        return None


class SlowSetup(Worker):
    """Takes ``TEST_SETUP_SECONDS`` (default 1.5) seconds to set up, then echoes."""

    subjects = ["test.slow_setup"]

    async def setup(self) -> None:
        await trio.sleep(float(os.environ.get("TEST_SETUP_SECONDS", "1.5")))

    async def handle(self, job: Job) -> Any:
        return {"payload": job.payload, "pid": os.getpid()}
