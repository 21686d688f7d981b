"""Errors a :class:`~actors.Client` raises, and which one a failure to connect is."""

from __future__ import annotations

import socket
from typing import Any

from protocol import ErrorCode, Submit
from runtime import HandshakeError, TLSHandshakeFailed
from runtime import WrongProtocol as WrongTransportProtocol


class ClientError(Exception):
    """Base of every error raised by :class:`~actors.Client` calls."""


class JobFailed(ClientError):
    """The job ran and failed (for QoS 1: on its last attempt, then it was dead-lettered).

    Attributes:
      job_id: the job.
      error_type: the remote exception's class name (``ValueError``, ``WorkerLost``,
        ``AckTimeout``, ...; ``Cancelled`` for a :class:`JobCancelled`). It is the
        handler's word: a handler may raise a class of any name, so tell a cancelled job
        by its class, :class:`JobCancelled`, never by this name.
      message: the remote error message.
      attempts: how many deliveries were made.
      traceback: the remote traceback as text, when the worker sent one (the handler's
        exception); None otherwise.
    """

    def __init__(
        self,
        job_id: str,
        error_type: str,
        message: str,
        attempts: int,
        traceback: str | None = None,
    ) -> None:
        super().__init__(
            f"job {job_id} failed after {attempts} attempt(s): {error_type}: {message}"
        )
        self.job_id = job_id
        self.error_type = error_type
        self.message = message
        self.attempts = attempts
        self.traceback = traceback


class DeadLettered(JobFailed):
    """A QoS 1 job used up its attempts; it now sits on ``$dlq.<subject>``."""


class JobCancelled(JobFailed):
    """The job was cancelled (:meth:`~actors.Client.cancel`) before it finished: a waiting
    job at once, a running one once its worker stopped it. It is not retried.

    Raised only for a Result the leader marked cancelled (``error_code`` ``cancelled``):
    a handler that raises an exception of its own named ``Cancelled`` fails its job with
    :class:`JobFailed` (or :class:`DeadLettered`) like any other exception."""


class Busy(ClientError):
    """The leader's queue is full: try again after ``retry_after`` seconds."""

    def __init__(self, message: str, retry_after: float | None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class TooLarge(ClientError):
    """A submit or publish is too large to be sent: its message is over the leader's frame
    limit (raised at once, nothing was sent), or the message the leader would forward (a
    job to a worker, a publish to a subscriber) would be over that peer's limit (the
    leader's ``too_large`` answer).

    Attributes:
      size: the message's size in bytes (its frame body), when known.
      limit: the frame limit it is over, in bytes, when known.
    """

    def __init__(self, message: str, *, size: int | None = None, limit: int | None = None) -> None:
        super().__init__(message)
        self.size = size
        self.limit = limit


def too_large(message: Any, exc: Any) -> TooLarge:
    """The :class:`TooLarge` for a Submit or Publish ``message`` that the connection
    refused with ``exc`` (a :class:`runtime.MessageTooLarge`)."""
    what = f"job {message.job_id}" if type(message) is Submit else f"publish to {message.subject}"
    return TooLarge(
        f"{what}: its message is {exc.size} bytes, over the leader's frame limit of {exc.limit} bytes",
        size=exc.size,
        limit=exc.limit,
    )


class SubmitTimeout(ClientError, TimeoutError):
    """No result arrived within the submit's ``timeout``: the job was cancelled unless
    another client waits for it too (or the submit was made with ``detach=True``); also
    the leader's ``timeout`` answer, for a job no worker took in time.

    Attributes:
      job_id: the job, when known.
    """

    def __init__(self, message: str, job_id: str | None = None) -> None:
        super().__init__(message)
        self.job_id = job_id


class NoRoute(ClientError):
    """No connected worker serves the job's subject (the leader's ``no_route`` answer).

    The leader answers at once, unless a worker for the subject left within its
    ``restart_grace`` or it has a ``route_grace``: then the job waited that long for one.
    Submit with ``wait_for_worker=True`` to queue the job for a worker still to come.

    Attributes:
      subject: the job's subject.
      message: the leader's words, naming the subject and a served one it may have meant
        (``no worker serves subject math.sqare (did you mean math.square?)``).
    """

    def __init__(self, subject: str, message: str) -> None:
        super().__init__(message)
        self.subject = subject
        self.message = message


class _JobAnswer(ClientError):
    """The leader's refusal of a call about one job (its ``job_id``, and its words)."""

    def __init__(self, job_id: str, message: str) -> None:
        super().__init__(message)
        self.job_id = job_id
        self.message = message


class Conflict(_JobAnswer):
    """The job id names another job: it was submitted before with another subject or
    payload (the leader's ``conflict`` answer). A resubmission must repeat both.

    Attributes:
      job_id: the job id.
      message: the leader's words.
    """


class NotFound(_JobAnswer):
    """:meth:`~actors.Client.result`: the leader has no result for this job id: unknown,
    finished longer ago than its dedup window, or (without ``wait``) not finished yet.

    Attributes:
      job_id: the job id.
      message: the leader's words.
    """


class ConnectionLost(ClientError):
    """The connection dropped while a QoS 0 job (at most once) was outstanding; or it
    ended with an ``internal`` error (a failure of the client's or of the leader's that may
    have been caused by one of the calls waiting: none is sent again); or the client could
    not connect (one of the subclasses below says why, else the message), or was not
    allowed to reconnect."""


class ConnectionRefused(ConnectionLost):
    """:meth:`~actors.Client.connect`: nothing listens at the URL's host and port (the
    leader is not running, or listens elsewhere). Raised at once, not retried."""


class AuthFailed(ConnectionRefused):
    """The leader refused the client's credentials (``auth_failed``): a missing, wrong or
    expired token, or a client certificate it does not know. The message is the leader's
    (it never echoes the token).

    :meth:`~actors.Client.connect` raises it at once for a static token (sending it again
    cannot help), and for a token provider that gives again the token just refused. Once
    connected, a static token refused on a reconnect (revoked by a rotation) ends the
    client: every waiting and later call raises this. A provider is asked again instead,
    with backoff, for as long as the client runs.

    Attributes:
      message: the leader's words (``missing or wrong token``, ``token expired``...).
    """

    def __init__(self, text: str, message: str) -> None:
        super().__init__(text)
        self.message = message


class ConnectTimeout(ConnectionLost, TimeoutError):
    """:meth:`~actors.Client.connect`: no connection within ``connect_timeout`` (no answer
    at all: a firewall, a wrong address; or no Welcome: an overloaded leader). The message
    gives the last attempt's error."""


class TLSFailed(ConnectionLost):
    """:meth:`~actors.Client.connect`: the TLS handshake failed; the message says why in
    OpenSSL's words (``certificate verify failed: unable to get local issuer certificate``:
    the leader's certificate is not signed by a CA the ``ssl_context`` trusts; ``Hostname
    mismatch``: it does not name the URL's host...)."""


class WrongProtocol(ConnectionLost):
    """:meth:`~actors.Client.connect`: what answered at the URL does not speak the protocol
    its scheme names: a web server, a WebSocket listener reached with ``tcp://`` (or the
    reverse), a plain listener reached with ``tls://`` or ``wss://``. The message says
    what answered."""


def connect_failure(url: str, exc: BaseException) -> ClientError | None:
    """The error :meth:`~actors.Client.connect` raises at once for the first connection
    attempt's failure ``exc``, or None when another attempt may succeed (a lost
    connection, a ``busy`` refusal...: those are retried until the connect timeout)."""
    error: ClientError
    if isinstance(exc, HandshakeError):
        if exc.code == ErrorCode.BUSY:
            return Busy(f"{url} refused the connection: {exc.message}", exc.retry_after)
        return None  # (a refusal for good is raised by run_reconnecting itself)
    if isinstance(exc, WrongTransportProtocol):
        error = WrongProtocol(f"could not connect to {url}: {exc}")
    elif isinstance(exc, TLSHandshakeFailed):
        error = TLSFailed(f"could not connect to {url}: {exc}")
    elif isinstance(exc, socket.gaierror):
        error = ConnectionLost(
            f"could not connect to {url}: cannot resolve its host ({exc.strerror})"
        )
    elif _refused(exc):
        error = ConnectionRefused(
            f"could not connect to {url}: connection refused (nothing listens there: is the leader running?)"
        )
    else:
        return None
    error.__cause__ = exc
    return error


def _refused(exc: BaseException) -> bool:
    """Whether ``exc`` (trio's OSError for a failed connect, whose cause groups the error
    of each address tried) says that every address refused the connection."""
    if isinstance(exc, ConnectionRefusedError):
        return True
    cause = exc.__cause__
    if isinstance(exc, OSError) and isinstance(cause, BaseExceptionGroup):
        return all(_refused(e) for e in cause.exceptions)
    if isinstance(exc, BaseExceptionGroup):
        return all(_refused(e) for e in exc.exceptions)
    return False


class RemoteError(ClientError):
    """The leader answered with an error code (see :class:`protocol.ErrorCode`)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class NotPermitted(RemoteError):
    """The leader does not let this client do that (``not_permitted``): its identity may
    not submit, publish or subscribe to the subject, the job belongs to another identity,
    or (for a subscription) the connection is at its ``max_subscriptions``. The message is
    the leader's, naming the identity, the action and the subject
    (``"web" may not submit to admin.reset``). Not retried: the same call would be refused
    again.

    Attributes:
      code: ``not_permitted``.
      message: the leader's words (also ``str()`` of the error).
      subject: the subject or pattern of the call refused, when it had one.
      job_id: the job of the call refused, when it had one.
    """

    def __init__(
        self, message: str, *, subject: str | None = None, job_id: str | None = None
    ) -> None:
        super().__init__(ErrorCode.NOT_PERMITTED, message)
        self.args = (message,)  # (str() is the leader's words, without the code)
        self.subject = subject
        self.job_id = job_id


def refused_for_good(url: str, exc: BaseException, *, connected: bool) -> ConnectionLost:
    """The error of a client that :func:`runtime.run_reconnecting` gave up on with ``exc``
    (a refusal retrying cannot cure, or a bug), before its first connection or after."""
    error: ConnectionLost
    if isinstance(exc, HandshakeError) and exc.code == ErrorCode.AUTH_FAILED:
        if connected:
            text = f"connection to {url} lost for good: the leader refused the credentials on reconnecting (auth_failed): {exc.message}"
        else:
            text = f"could not connect to {url}: the leader refused the credentials (auth_failed): {exc.message}"
        error = AuthFailed(text, exc.message)
    elif connected:
        error = ConnectionLost(f"connection to {url} lost for good: {exc}")
    else:
        error = ConnectionLost(f"could not connect to {url}: {exc}")
    error.__cause__ = exc
    return error
