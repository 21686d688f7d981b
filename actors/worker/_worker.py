"""Workers: the class users subclass, and the exit statuses of a worker process.

:func:`~actors.run_worker` (in :mod:`actors.worker._runner`) connects a :class:`Worker` to a
leader, with a :class:`~actors.worker._runner.WorkerRunner` (how jobs are taken, run on
slots and answered).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from ._job import Job

#: The exit status of a worker process that recycled itself (past ``max_memory`` or
#: ``max_jobs``): its group starts a fresh one at once. (EX_TEMPFAIL: "try again".)
RECYCLE_EXIT_STATUS = 75
#: The exit status of a worker process that failed before it first connected (its
#: ``setup()`` raised, say): its group reports why and restarts it with backoff, or gives
#: up. (EX_CONFIG: "configuration error".)
START_FAILED_EXIT_STATUS = 78


class Worker:
    """Base class of user workers.

    Subclass it, set ``subjects`` (patterns; ``*`` and ``>`` wildcards allowed) and
    ``concurrency`` (how many jobs run at once: the credit granted to the leader), and
    implement :meth:`handle`. The return value is the job's result (any CBOR value); an
    exception is a failure, retried by the leader up to its attempt limit, except
    :class:`~actors.Reject` and the exception types listed in ``never_retry``: those fail
    the job at once. A return value that cannot be sent (no CBOR encoding, or over the
    frame limit) fails the job too, at once. Each failed attempt is logged (logger
    ``actors.worker``), with its traceback the first time.

    ``handle`` may be a plain ``def``: it then runs in a worker thread (at most
    ``concurrency`` at once), so blocking code (``time.sleep``, a synchronous client) is
    fine there. An ``async def handle`` must not block: one that holds the event loop for
    over ``blocking_warning`` seconds (None: never) is named in a warning.

    ``max_jobs`` and ``max_memory`` (bytes of resident memory, or a string such as
    ``"512MiB"``) recycle the worker once it handled that many jobs, or when its process
    is over that size after a job: it takes no more jobs, finishes and answers those it
    holds, and exits so that its group starts a fresh one (Celery's
    ``max_tasks_per_child`` and ``max_memory_per_child``). A group's own settings win.

    Example::

        class Square(Worker):
            subjects = ["math.square"]
            concurrency = 4

            async def handle(self, job):
                return {"square": job.payload["n"] ** 2}
    """

    subjects: ClassVar[Sequence[str]] = ()
    concurrency: ClassVar[int] = 1
    max_jobs: ClassVar[int | None] = None
    max_memory: ClassVar[int | str | None] = None
    #: Exception types that fail a job at once, never retried (Celery's ``throws``).
    never_retry: ClassVar[tuple[type[BaseException], ...]] = ()
    #: Seconds an async handler may hold the event loop before a warning names it.
    blocking_warning: ClassVar[float | None] = 1.0

    async def setup(self) -> None:
        """Called once before the worker first connects (open resources here).

        If it raises, the worker does not start: a worker process exits with
        :data:`START_FAILED_EXIT_STATUS`, and its group reports the error and restarts it
        with backoff (see :class:`~actors.WorkerGroup`'s ``max_start_failures``).
        """

    async def teardown(self) -> None:
        """Called once when the worker stops (close resources here)."""

    async def handle(self, job: Job) -> Any:
        """Run one job and return its result."""
        raise NotImplementedError(f"{type(self).__name__} must implement handle(job)")
