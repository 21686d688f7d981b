"""Errors a :class:`~actors.Client` raises."""

from __future__ import annotations


class ClientError(Exception):
    """Base of every error raised by :class:`~actors.Client` calls."""


class JobFailed(ClientError):
    """The job ran and failed (for QoS 1: on its last attempt, then it was dead-lettered).

    Attributes:
      job_id: the job.
      error_type: the remote exception's class name (``ValueError``, ``WorkerLost``,
        ``AckTimeout``, ``Cancelled``, ...).
      message: the remote error message.
      attempts: how many deliveries were made.
    """

    def __init__(self, job_id: str, error_type: str, message: str, attempts: int) -> None:
        super().__init__(f"job {job_id} failed after {attempts} attempt(s): {error_type}: {message}")
        self.job_id = job_id
        self.error_type = error_type
        self.message = message
        self.attempts = attempts


class DeadLettered(JobFailed):
    """A QoS 1 job used up its attempts; it now sits on ``$dlq.<subject>``."""


class JobCancelled(JobFailed):
    """The job was cancelled (:meth:`~actors.Client.cancel`) before it finished: a waiting
    job at once, a running one once its worker stopped it. It is not retried."""


class Busy(ClientError):
    """The leader's queue is full: try again after ``retry_after`` seconds."""

    def __init__(self, message: str, retry_after: float | None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class SubmitTimeout(ClientError, TimeoutError):
    """No result arrived within the submit's ``timeout`` (the job may still run)."""


class ConnectionLost(ClientError):
    """The connection dropped while a QoS 0 job (at most once) was outstanding, or the
    client was not allowed to reconnect."""


class RemoteError(ClientError):
    """The leader answered with an error code (see :class:`protocol.ErrorCode`)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
