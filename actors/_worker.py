"""Workers: the class users subclass, and :func:`run_worker`, which serves one.

:func:`run_worker` connects a :class:`Worker` to a leader, with a
:class:`~actors._runner.WorkerRunner` (how jobs are taken, run on slots and answered:
see :mod:`actors._runner`).
"""

from __future__ import annotations

import ssl
from collections.abc import Sequence
from typing import Any, ClassVar

import trio

from ._job import Job
from ._runner import WorkerRunner as WorkerRunner  # (re-exported: tests, embedding)


class Worker:
    """Base class of user workers.

    Subclass it, set ``subjects`` (patterns; ``*`` and ``>`` wildcards allowed) and
    ``concurrency`` (how many jobs run at once: the credit granted to the leader), and
    implement :meth:`handle`. The return value is the job's result (any CBOR value); an
    exception is a failure, retried by the leader up to its attempt limit.

    Example::

        class Square(Worker):
            subjects = ["math.square"]
            concurrency = 4

            async def handle(self, job):
                return {"square": job.payload["n"] ** 2}
    """

    subjects: ClassVar[Sequence[str]] = ()
    concurrency: ClassVar[int] = 1

    async def setup(self) -> None:
        """Called once before the worker first connects (open resources here)."""

    async def teardown(self) -> None:
        """Called once when the worker stops (close resources here)."""

    async def handle(self, job: Job) -> Any:
        """Run one job and return its result."""
        raise NotImplementedError(f"{type(self).__name__} must implement handle(job)")


async def run_worker(
    worker: Worker,
    url: str,
    *,
    name: str | None = None,
    group: str | None = None,
    policy: str = "round_robin",
    mode: str = "round_robin",
    subjects: Sequence[str] | None = None,
    concurrency: int | None = None,
    ssl_context: ssl.SSLContext | None = None,
    token: str | None = None,
    stop: trio.Event | None = None,
    drain_grace: float = 30.0,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Connect ``worker`` to the leader at ``url`` and serve jobs.

    Reconnects with backoff whenever the leader goes away. ``task_status.started()`` is
    called after the first Welcome. Returns after ``stop`` is set and the worker drained
    (see :meth:`WorkerRunner.run`); runs until cancelled otherwise.

    Raises:
      ValueError: bad subjects, concurrency, policy or mode.
    """
    runner = WorkerRunner(
        worker, url, name=name, group=group, policy=policy, mode=mode, subjects=subjects,
        concurrency=concurrency, ssl_context=ssl_context, token=token,
    )
    await runner.run(stop=stop, drain_grace=drain_grace, task_status=task_status)
