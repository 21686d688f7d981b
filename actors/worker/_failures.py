"""How a job's failure is told: to the leader, in a failed Result, and in the worker's log.

A handler fails its job by raising. The leader retries a failure (it redelivers the job,
up to its attempt limit) unless the failure is *final*, the job's outcome as it stands:
the handler raised :class:`Reject` or an exception type its worker lists in
``never_retry``, the job ran past its deadline (:class:`DeadlineExceeded`), or its result
cannot be sent. A :class:`Failure` is what the worker sends: the exception's type and
message, whether it is final, and its traceback, bounded (:data:`MAX_TRACEBACK`), so that
the client's exception and the dead letter show where it failed.

Every failed attempt logs one line on the worker's side (logger ``actors.worker``): the
job, its subject, the worker, the attempt, the exception type and message. The traceback
comes with the first failure of each (subject, exception type) the :class:`FailureLog`
sees, and at debug level after that, so a job failing a thousand times logs a thousand
short lines and one traceback.
"""

from __future__ import annotations

import hashlib
import logging
import os
import traceback
from typing import TYPE_CHECKING

import attrs

if TYPE_CHECKING:
    from ._job import Job

#: Characters of a failed job's error message sent to the leader, at most (words for
#: people; a huge value in an exception's text could not be sent).
MAX_ERROR_MESSAGE = 2000
#: Characters of a traceback sent to the leader, at most: its last ones (the frames
#: nearest to the error, and the error itself).
MAX_TRACEBACK = 8192
#: (subject, exception type) pairs a :class:`FailureLog` remembers; past this, the oldest
#: is forgotten (its traceback would be logged again): a worker serving ever new subjects
#: must not grow without end.
MAX_SEEN_FAILURES = 1024

logger = logging.getLogger("actors.worker")


class Reject(Exception):
    """Raised by a handler to fail its job for good: the leader does not retry it.

    Use it for a job that can never succeed (a payload that is not valid, a record that
    does not exist): the client gets :class:`~actors.JobFailed` at once, with the error
    type ``"Rejected"`` and ``reason`` as its message, instead of the job running
    ``max_attempts`` times and being dead-lettered.

    Example::

        async def handle(self, job):
            if "n" not in job.payload:
                raise Reject("payload has no 'n'")
    """

    def __init__(self, reason: str = "") -> None:
        super().__init__(reason)
        self.reason = reason


class DeadlineExceeded(Exception):
    """The job ran past its deadline (the submit's timeout): the worker cancelled its
    handler. Final: nobody waits for its result any more."""


@attrs.frozen
class Failure:
    """A failed job, as the worker reports it (the failed Result's fields).

    Attributes:
      error_type: the exception's class name (``"Rejected"`` for :class:`Reject`).
      message: its text, bounded (:data:`MAX_ERROR_MESSAGE`).
      final: not to be retried (see the module's docstring).
      traceback: where it failed, as text (its last :data:`MAX_TRACEBACK` characters),
        or None when there is nothing to show (a rejection, a deadline, an unsendable
        result).
    """

    error_type: str
    message: str
    final: bool = False
    traceback: str | None = None


def failure_of(exc: BaseException, never_retry: tuple[type[BaseException], ...] = ()) -> Failure:
    """The :class:`Failure` a handler's exception ``exc`` makes, for a worker that never
    retries the types in ``never_retry``."""
    if isinstance(exc, Reject):
        return Failure("Rejected", error_text(exc), final=True)
    if isinstance(exc, DeadlineExceeded):
        return Failure("DeadlineExceeded", error_text(exc), final=True)
    final = bool(never_retry) and isinstance(exc, never_retry)
    return Failure(type(exc).__name__, error_text(exc), final=final, traceback=traceback_text(exc))


def error_text(exc: BaseException) -> str:
    """``str(exc)``, bounded (:data:`MAX_ERROR_MESSAGE`), even if its ``__str__`` fails."""
    try:
        text = str(exc)
    except Exception:  # a user's exception with a broken __str__
        text = f"<{type(exc).__name__}, whose str() failed>"
    if len(text) > MAX_ERROR_MESSAGE:
        text = text[: MAX_ERROR_MESSAGE - 3] + "..."
    return text


def traceback_text(exc: BaseException) -> str:
    """``exc``'s traceback as Python prints it, cut to its last :data:`MAX_TRACEBACK`
    characters (a line saying so first), even if formatting it fails."""
    try:
        text = "".join(traceback.format_exception(exc))
    except Exception:  # a broken __str__ again, or a traceback that cannot be formatted
        text = f"{type(exc).__name__}: {error_text(exc)}\n(its traceback could not be formatted)\n"
    if len(text) > MAX_TRACEBACK:
        marker = "... (traceback cut to its last part)\n"
        text = marker + text[len(text) - MAX_TRACEBACK + len(marker) :]
    return text


def check_never_retry(value: object, owner: str) -> tuple[type[BaseException], ...]:
    """A worker's ``never_retry`` as a tuple of exception classes.

    Raises:
      ValueError: ``value`` is not an exception class or a sequence of them.
    """
    classes = (value,) if isinstance(value, type) else value
    if not isinstance(classes, tuple | list) or not all(
        isinstance(cls, type) and issubclass(cls, BaseException) for cls in classes
    ):
        raise ValueError(f"{owner}.never_retry: expected exception classes, got {value!r}")
    return tuple(classes)


#: The environment variable naming the directory the workers of one cluster share, so
#: that a failure's traceback is shown once in the cluster's output (see FailureLog).
FAILURE_DIR_ENV = "ACTORS_FAILURE_DIR"


class FailureLog:
    """Logs failed attempts: one line each, the traceback once per (subject, type).

    One per worker: a traceback logged by one worker says nothing to another's log.
    """

    def __init__(self, worker_name: str, shared_dir: str | None = None) -> None:
        self.worker_name = worker_name
        self._seen: dict[tuple[str, str], None] = {}  # insertion-ordered: oldest first
        #: A directory shared by the workers of one cluster (``ACTORS_FAILURE_DIR``, set by
        #: ``python -m actors.cluster``): the first worker to see a (subject, type) pair
        #: there shows its traceback, so the cluster's output has it once, not per worker.
        self.shared_dir = shared_dir if shared_dir is not None else os.environ.get(FAILURE_DIR_ENV)

    def _first_in_cluster(self, key: tuple[str, str]) -> bool:
        """Whether no other worker of the cluster showed this pair's traceback (claimed
        by creating a file named after it; always True without a shared directory)."""
        if not self.shared_dir:
            return True
        name = hashlib.sha256(repr(key).encode("utf-8", "replace")).hexdigest()[:32]
        try:
            os.close(
                os.open(
                    os.path.join(self.shared_dir, name), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600
                )
            )
        except FileExistsError:
            return False
        except OSError:
            return True  # (the directory went away: show it)
        return True

    def failed(self, job: Job, failure: Failure, exc: BaseException | None = None) -> None:
        """Log that ``job`` failed with ``failure`` (raised as ``exc``, if it was)."""
        if job.published:  # at most once: no attempts, no retries
            what, attempt = "message", ""
        else:
            what = "job"
            of = f"/{job.max_attempts}" if job.max_attempts else ""
            attempt = f", attempt {job.attempt}{of}{', not retried' if failure.final else ''}"
        line = "worker %s: %s %s (%s) failed%s: %s: %s"
        args = (
            self.worker_name, what, job.id, job.subject, attempt, failure.error_type, failure.message,
        )  # fmt: skip
        if exc is None or failure.traceback is None:
            logger.warning(line, *args)
            return
        key = (job.subject, failure.error_type)
        if key not in self._seen:
            if len(self._seen) >= MAX_SEEN_FAILURES:
                del self._seen[next(iter(self._seen))]
            self._seen[key] = None
            if self._first_in_cluster(key):
                logger.warning(line, *args, exc_info=exc)
                return
        logger.warning(line, *args)
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug(
                "worker %s: %s %s: traceback", self.worker_name, what, job.id, exc_info=exc
            )
