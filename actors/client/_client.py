"""The Client: submit jobs, map over many, publish and subscribe, over one connection.

Every call shares one connection and is pipelined: ``submit`` queues a Submit frame and
waits for the Result that carries its ``cid``. The client reconnects with backoff when
the connection drops and then resends every QoS 1 submit still waiting, under the same
job id: the leader merges it with the running job or answers from its stored results,
so each call gets its result exactly once. Subscriptions are renewed too.

``enqueue`` sends the same QoS 1 Submit marked ``enqueue``: the leader answers it with an
Ack once the job is accepted (journalled), and ``result`` (a Query that may wait) fetches
the outcome later, from any client. A job may be delayed (``delay``, ``at``). The dead
letters the leader keeps are listed, shown, retried and purged with Queries too.

Sending never fails for a full outgoing buffer: a message that does not fit right now (a
burst of large payloads) waits for room -- only those; a small submit into a buffer with
room is queued without waiting. A message over the leader's frame limit fails at once
with :class:`TooLarge`. A connection that ended with an ``internal`` error (a failure of
ours or of the leader's, maybe caused by one of the waiting calls) fails the calls waiting
on it with :class:`ConnectionLost` instead of sending them again. The client's background
task never lets an exception out into the user's nursery: when it cannot go on (a
refusal that retrying cannot cure), every waiting and later call raises
:class:`ConnectionLost`.

A call the caller stops waiting for (its timeout fired, its task was cancelled, a ``map``
was left early) is *abandoned*: the client queues ``Cancel(abandon=True)`` for its job,
without waiting, and the leader cancels the job unless another client waits for it too
(``detach=True`` leaves the job running instead). Queued cancels go out before the
connection closes, and after a reconnect if it dropped.

Connecting fails fast with a :class:`ConnectionLost` subclass saying why: nothing listens
(:class:`ConnectionRefused`), the TLS handshake failed (:class:`TLSFailed`), something
else answers there (:class:`WrongProtocol`), the leader refused the token
(:class:`AuthFailed`); other failures are retried until the connect timeout
(:class:`ConnectTimeout`).

The token may come from a provider, asked again for every connection attempt (see
:mod:`actors._credentials`): a rotated token is used from the next reconnect on. What the
leader does not let this client do is refused with :class:`NotPermitted`.
"""

from __future__ import annotations

import collections
import datetime as dt
import itertools
import logging
import math
import random
import ssl
import time
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import attrs
import trio

from protocol import (
    MAX_DELAY,
    SUPPORTED_VERSIONS,
    Ack,
    Cancel,
    Deliver,
    Error,
    ErrorCode,
    Hello,
    InvalidPayload,
    Progress,
    Publish,
    Query,
    Result,
    Submit,
    Unsubscribe,
    decode_payload,
)
from runtime import (
    DEFAULT_RECONNECT_BACKOFF,
    FATAL_HANDSHAKE_CODES,
    Backoff,
    Connection,
    ConnectionClosed,
    HandshakeError,
    MessageTooLarge,
    ReconnectEvent,
    SendBufferFull,
)
from runtime._transports import reraise_alone
from runtime._url import split_urls

from .._credentials import TokenSource, reconnecting
from ._call import Call, until_settled
from ._errors import (
    AuthFailed,
    Busy,
    ClientError,
    Conflict,
    ConnectionLost,
    ConnectTimeout,
    DeadLettered,
    JobCancelled,
    JobFailed,
    NoRoute,
    NotFound,
    NotPermitted,
    RemoteError,
    SubmitTimeout,
    TooLarge,
    connect_failure,
    refused_for_good,
    too_large,
)
from ._map import JobMap
from ._subscription import Subscription, Subscriptions

_log = logging.getLogger("actors.client")

_submit_checked = Submit.checked

#: Seconds :meth:`Client.connect` gives the connection to close gracefully when its block
#: ends (queued messages, abandoned jobs' cancels among them, go out first), even when
#: the block was cancelled.
CLOSE_TIMEOUT = 2.0
#: Cancels of abandoned jobs kept while they cannot be sent (no connection, a full
#: outgoing buffer); past this, the oldest are dropped (those jobs run on).
MAX_QUEUED_CANCELS = 100_000


def delay_of(
    delay: float | dt.timedelta | None,
    at: dt.datetime | None,
    timeout: float | None = None,
) -> float | None:
    """The ``Submit.delay`` for a call's ``delay`` or ``at`` (None: neither).

    ``at`` (a timezone-aware :class:`~datetime.datetime`) becomes the seconds from now
    (``time.time()``) until then, 0 if it has passed.

    Raises:
      TypeError: both given; ``delay`` not a number or timedelta; ``at`` not a datetime.
      ValueError: ``at`` naive (no timezone); a negative or infinite ``delay``; a delay over
        :data:`protocol.MAX_DELAY` (a year); a ``timeout`` that ends before the delay does
        (the job would expire before it may run).
    """
    if at is not None:
        if delay is not None:
            raise TypeError("give delay or at, not both")
        if not isinstance(at, dt.datetime):
            raise TypeError(f"at must be a datetime, got {type(at).__name__}")
        if at.tzinfo is None or at.utcoffset() is None:
            raise ValueError(
                f"at must be a timezone-aware datetime, got the naive {at.isoformat()}"
                " (for example datetime.now(timezone.utc) + timedelta(minutes=5))"
            )
        seconds = max(0.0, at.timestamp() - time.time())
        if seconds > MAX_DELAY:
            raise ValueError(
                f"at must be at most {MAX_DELAY / 86400:g} days ahead, got {at.isoformat()}"
            )
    elif delay is None:
        return None
    else:
        if isinstance(delay, dt.timedelta):
            seconds = delay.total_seconds()
        elif isinstance(delay, int | float) and not isinstance(delay, bool):
            seconds = float(delay)
        else:
            raise TypeError(
                f"delay must be a number of seconds or a timedelta, got {type(delay).__name__}"
            )
        if not (seconds >= 0 and math.isfinite(seconds)):
            raise ValueError(f"delay must be a finite number of seconds >= 0, got {delay!r}")
        if seconds > MAX_DELAY:
            raise ValueError(
                f"delay must be at most {MAX_DELAY:.0f} s ({MAX_DELAY / 86400:g} days), got {delay!r}"
            )
    if timeout is not None and timeout <= seconds:
        raise ValueError(
            f"timeout ({timeout:g} s) ends before the delay ({seconds:g} s): the job would"
            " expire before it may run (the timeout counts from the submit)"
        )
    return seconds


class Client:
    """A connection to a leader for submitting jobs and publishing messages.

    Build it with :meth:`connect`::

        async with Client.connect("tcp://127.0.0.1:7700") as client:
            result = await client.submit("math.square", {"n": 7})

    ``map`` hands its work to :class:`~actors.client._map.JobMap`; the subscriptions are a
    :class:`~actors.client._subscription.Subscriptions` of its own.
    """

    def __init__(
        self,
        url: str | Sequence[str],
        *,
        name: str = "client",
        ssl_context: ssl.SSLContext | None = None,
        token: TokenSource = None,
        reconnect_backoff: Backoff | None = None,
        rng: random.Random | None = None,
        connect_timeout: float = 10.0,
    ) -> None:
        #: The leader's URL, or the leaders' (comma-separated), as given.
        self.url = url if isinstance(url, str) else ",".join(split_urls(url))
        self.name = name
        self.ssl_context = ssl_context
        self.token = token
        self.backoff = reconnect_backoff or DEFAULT_RECONNECT_BACKOFF
        self.rng = rng
        self.connect_timeout = connect_timeout
        #: Connections made so far (more than 1 after a reconnect).
        self.connects = 0
        #: Result frames received, and those that answered no waiting call (a result for
        #: a call already settled or abandoned: counted, never delivered twice).
        self.results_received = 0
        self.stray_results = 0
        #: Published messages dropped because their payload could not be decoded (the
        #: first one is logged, on logger ``actors.client``).
        self.bad_deliveries = 0
        #: Jobs abandoned (see the module docstring): cancels sent or queued, and those
        #: dropped because more than ``MAX_QUEUED_CANCELS`` could not be sent.
        self.abandoned = 0
        self.cancels_dropped = 0
        #: Errors of the leader that answered no waiting call (a QoS 0 publish or a cancel
        #: it refused, ``not_permitted`` say): the first of each code is logged.
        self.unanswered_errors = 0
        self._codes_logged: set[str] = set()
        self._conn: Connection | None = None
        self._connected = trio.Event()  # (also set when the client gives up: see _failure)
        # Why the client cannot go on, once it cannot: every call then raises it.
        self._failure: ClientError | None = None
        # Why the last attempt to connect failed (for connect()'s timeout message).
        self._connect_error: BaseException | None = None
        # The leaders whose last attempt before the first connection failed for a reason
        # retrying cannot cure: connect() raises once it is all of them.
        self._hopeless: set[str | None] = set()
        # Cancels of abandoned jobs waiting to be sent, and the event that wakes their sender.
        self._cancels: collections.deque[Cancel] = collections.deque()
        self._cancels_queued = trio.Event()
        # Closing (connect()'s block has ended), and _keep_connected has returned.
        self._closing = False
        self._stopped = trio.Event()
        # The scope of the background work (see _run), and only connect() cancels it.
        self._background = trio.CancelScope(shield=True)
        self._mids = itertools.count(1)
        self._calls: dict[int, Call] = {}  # by the mid of the frame on the current connection
        self._progress: dict[str, Call] = {}
        self._subs = Subscriptions()
        # Job ids: a random prefix per client and a counter (cheaper than a uuid per job).
        self._id_prefix = uuid.uuid4().hex[:16]
        self._job_numbers = itertools.count(1)

    #: A Submit's delay from a call's ``delay`` or ``at`` (see :func:`delay_of`).
    delay_of = staticmethod(delay_of)

    @classmethod
    @asynccontextmanager
    async def connect(
        cls,
        url: str | Sequence[str],
        *,
        name: str = "client",
        ssl_context: ssl.SSLContext | None = None,
        token: TokenSource = None,
        connect_timeout: float = 10.0,
        reconnect_backoff: Backoff | None = None,
    ) -> AsyncIterator[Client]:
        """Connect to the leader at ``url``; reconnect whenever the connection drops.

        The first connection fails fast when retrying cannot help; its other failures
        (a connection lost in the handshake, ``busy``...) are retried until
        ``connect_timeout``. Once connected, a lost connection is retried for ever.

        Several leaders sharing one job store may be given: a comma-separated ``str``
        (``"tcp://127.0.0.1:7700,tcp://127.0.0.1:7701"``) or a list or tuple of URLs. The
        client connects to the first; when a connection fails or is lost it tries the
        next at once, and so on round the list (see :func:`runtime.run_reconnecting`),
        so a client whose leader died goes on with another. The first connection then
        fails fast only once every leader failed for a reason retrying cannot cure (the
        error is the last one's).

        Args:
          url: the leader (``tcp://``, ``tls://``, ``ws://``, ``wss://``), or several.
          name: this client's name, in the leader's statistics and logs.
          ssl_context: for ``tls://`` and ``wss://``: the system's trust when None (see
            :func:`actors.client_ssl_context` for a CA of your own, or a client
            certificate).
          token: the token the leader asks for: a ``str``, or a token provider, a callable
            returning it (or an awaitable of it), called for every connection attempt, so
            that a rotated token is used from the next reconnect on. A provider that
            raises fails that attempt (logged on ``actors.client``; retried like a lost
            connection, until ``connect_timeout`` for the first one).
          connect_timeout: seconds the first connection may take (and each attempt).
          reconnect_backoff: the delays between reconnects.

        Raises:
          Busy: the leader refused the connection for its connection limits (at once, with
            its ``retry_after``; reconnects later on are retried instead).
          ConnectionRefused: nothing listens at the URL (at once).
          TLSFailed: the TLS handshake failed; the message says why (an untrusted
            certificate, a wrong host name...).
          WrongProtocol: something else answers there: an HTTP server, a WebSocket
            listener reached with ``tcp://``, a TCP one with ``ws://``, a plain one with
            ``tls://`` or ``wss://``...
          AuthFailed: the leader refused the token (at once for a ``str``; for a provider,
            once it gives again the token refused, or at ``connect_timeout``).
          ConnectTimeout: no connection within ``connect_timeout`` (the message gives the
            last attempt's error).
          ConnectionLost: the leader refused the connection for good
            (``unsupported_version``...), or the host name cannot be resolved, or a URL
            is not a transport URL (naming it). (The five above are ConnectionLost too.)

        Exceptions come out as themselves, not in an exception group.

        Resource handling: when the block ends (also by an exception or a cancellation),
        the connection is closed gracefully within ``CLOSE_TIMEOUT`` seconds: what is
        queued, the cancels of the jobs abandoned on the way out among it, goes out first.
        """
        client = cls(
            url, name=name, ssl_context=ssl_context, token=token, reconnect_backoff=reconnect_backoff,
            connect_timeout=connect_timeout,
        )  # fmt: skip
        failure: ClientError | None = None
        try:
            async with trio.open_nursery() as nursery:
                try:
                    nursery.start_soon(client._run)  # (shielded: ended below, only)
                    with trio.move_on_after(connect_timeout):
                        await client._connected.wait()
                    failure = client._failure
                    if failure is None and not client._connected.is_set():
                        failure = client._timed_out()
                    if failure is None:
                        try:
                            yield client
                        finally:
                            with trio.CancelScope(shield=True):
                                await client._close()
                finally:
                    client._background.cancel()
        except BaseExceptionGroup as group:
            if len(group.exceptions) == 1:
                reraise_alone(group.exceptions[0])
            raise
        if failure is not None:
            raise failure

    # ------------------------------------------------------------------ connection

    async def _run(self) -> None:
        """The client's background work, until :meth:`connect` ends it: keep the
        connection going, send the cancels of abandoned jobs.

        Shielded from cancellations from outside: when the block of ``connect()`` is
        cancelled, the calls it was making abandon their jobs on their way out, and that
        needs the connection (``connect()`` then closes it, and ends this).
        """
        with self._background:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._send_cancels)
                await self._keep_connected()
                nursery.cancel_scope.cancel()

    async def _keep_connected(self) -> None:
        """Connect and reconnect until :meth:`_close`; never raises (a failure is
        :meth:`_give_up`)."""
        try:
            await reconnecting(
                self.url,
                self._session,
                token=self.token,
                hello=lambda token: Hello(
                    mid=next(self._mids),
                    role="client",
                    name=self.name,
                    versions=SUPPORTED_VERSIONS,
                    token=token,
                ),
                fatal_codes=FATAL_HANDSHAKE_CODES,
                logger=_log,
                who=f"client {self.name}",
                backoff=self.backoff,
                rng=self.rng,
                ssl_context=self.ssl_context,
                on_state=self._on_state,
                connect_timeout=self.connect_timeout,
                decode_payloads=False,  # each result and message decoded by itself
            )
        except Exception as exc:  # a refusal retrying cannot cure, or a bug: not the user's
            self._give_up(refused_for_good(self.url, exc, connected=self.connects > 0))
        except BaseExceptionGroup as group:
            # Cancelled (connect() is ending) while an attempt failed: only the
            # cancellation matters (its scope takes it; the failure would reach the user).
            cancelled, _ = group.split(trio.Cancelled)
            if cancelled is None:
                raise
            raise cancelled from None
        finally:
            self._stopped.set()

    def _on_state(self, event: ReconnectEvent) -> None:
        if event.state == "disconnected" and self.connects == 0 and event.error is not None:
            # The first connection failed: connect() raises at once what retrying cannot
            # cure (later reconnects wait and retry whatever the failure).
            self._connect_error = event.error
            failure = connect_failure(self.url, event.error)
            if failure is None:
                self._hopeless.discard(event.url)  # (it may answer the next time)
                return
            self._hopeless.add(event.url)
            if len(self._hopeless) >= len(set(split_urls(self.url))):
                self._give_up(failure)

    def _timed_out(self) -> ConnectionLost:
        """connect()'s error when ``connect_timeout`` passed without a connection
        (:class:`AuthFailed` if the leader refused the last attempt's token)."""
        text = f"could not connect to {self.url} within {self.connect_timeout:g} s"
        last = self._connect_error
        if isinstance(last, HandshakeError) and last.code == ErrorCode.AUTH_FAILED:
            failed = AuthFailed(
                f"{text}: the leader refused the credentials (auth_failed): {last.message}",
                last.message,
            )
            failed.__cause__ = last
            return failed
        if last is None:
            text += " (no answer: a wrong address, a firewall, or a server that does not answer the Hello?)"
        else:
            text += f"; the last attempt failed: {last}"
        error = ConnectTimeout(text)
        error.__cause__ = last
        return error

    async def _close(self) -> None:
        """Close the connection gracefully, the queued cancels first, and end :meth:`_run`
        (see :meth:`connect`)."""
        self._closing = True
        conn = self._conn
        if conn is None:
            return  # (the caller cancels _run: it is waiting to reconnect)
        cancels = self._cancels
        while cancels:
            try:
                conn.send_nowait(cancels[0])
            except (SendBufferFull, ConnectionClosed):
                break  # (the close below flushes what is queued; the rest cannot go)
            cancels.popleft()
        with trio.move_on_after(CLOSE_TIMEOUT):
            await conn.aclose()
            await self._stopped.wait()  # (so that no reconnect begins)

    def _give_up(self, error: ClientError) -> None:
        """The client cannot go on: every waiting call, and every later one, gets ``error``."""
        self._failure = error
        calls = list(self._calls.values())
        self._calls = {}
        for call in calls:
            self._settle(call, error=error)
        self._connected.set()  # wakes connect() and whoever waits to send

    async def _session(self, conn: Connection) -> None:
        self.connects += 1
        calls = list(self._calls.values())
        self._calls = {}
        # What does not fit the outgoing buffer now is sent as room comes (below).
        backlog: list[tuple[Call | None, Any]] = []
        for message in list(self._subs.renewals(self._mids.__next__)):
            try:
                conn.send_nowait(message)
            except SendBufferFull:
                backlog.append((None, message))
            except ConnectionClosed:
                pass  # (dispatch_to raises it below; the next session renews it)
        for call in calls:  # resend what is still waiting, under the same job ids
            message = call.message
            if call.sent and type(message) is Submit and not message.wait_for_worker:
                # A leader took it before: one that restarted has no workers yet (they
                # reconnect too), and must not answer no_route for a job that had a route.
                call.message = attrs.evolve(message, wait_for_worker=True)
            try:
                self._transmit(conn, call)
            except SendBufferFull:
                backlog.append((call, call.message))  # (registered under its mid)
            except ConnectionClosed:
                pass  # registered: the clean-up below keeps it for the next session
        self._conn = conn
        self._connected.set()
        internal: ConnectionClosed | None = None
        try:
            if backlog:
                await self._dispatch_with_backlog(conn, backlog)
            else:
                await conn.dispatch_to(self._on_batch)  # the reader task runs it
        except ConnectionClosed as exc:
            if exc.code == ErrorCode.INTERNAL:
                internal = exc
            if not self._closing:
                raise
            # Closed by _close (or while it closes): the end, run_reconnecting returns.
        finally:
            self._conn = None
            self._connected = trio.Event()
            for mid, call in list(self._calls.items()):
                if internal is not None:
                    # A failure (ours or the leader's) one of these may have caused:
                    # sending them again could repeat it for ever.
                    error = ConnectionLost(
                        f"connection to {self.url} ended by an internal error ({internal.reason});"
                        " the call was not sent again"
                    )
                    error.__cause__ = internal
                elif getattr(call.message, "qos", 1) == 0:  # at most once: never sent again
                    # (a Query, which has no qos, is asked again on the next connection)
                    error = ConnectionLost(f"connection to {self.url} lost")
                else:
                    continue
                del self._calls[mid]
                self._settle(call, error=error)

    async def _dispatch_with_backlog(
        self, conn: Connection, backlog: list[tuple[Call | None, Any]]
    ) -> None:
        """:meth:`Connection.dispatch_to` while the messages of ``backlog`` go out as the
        outgoing buffer makes room (results must be read meanwhile)."""

        async def send_backlog() -> None:
            for call, message in backlog:
                if call is not None and (call.done or call.message is not message):
                    continue  # settled, forgotten or sent again meanwhile
                if call is None and message.sid not in self._subs:
                    continue  # unsubscribed meanwhile
                try:
                    await conn.send(message, timeout=math.inf)
                except ConnectionClosed:
                    return

        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(send_backlog)
                await conn.dispatch_to(self._on_batch)
        except BaseExceptionGroup as group:
            if len(group.exceptions) == 1:
                reraise_alone(group.exceptions[0])
            raise

    def _transmit(self, conn: Connection, call: Call) -> None:
        """Queue ``call``'s message on ``conn``, registered under its mid.

        Raises:
          SendBufferFull: no room for it in the outgoing buffer now (it stays registered:
            send it with :meth:`_send_when_room`).
          ConnectionClosed: the connection is closing (it stays registered: the session's
            clean-up settles it or the next session sends it).
        A message over the leader's frame limit settles the call with :class:`TooLarge`.
        """
        if call.sent:  # a resend (reconnect, busy): a fresh mid on this connection
            call.message = attrs.evolve(call.message, mid=next(self._mids))
        call.sent = True
        message = call.message
        self._calls[message.mid] = call
        try:
            conn.send_nowait(message)
        except MessageTooLarge as exc:
            del self._calls[message.mid]
            self._settle(call, error=too_large(message, exc))

    async def _send_when_room(self, conn: Connection, call: Call) -> None:
        """Send the message of ``call``, registered but refused for a full outgoing buffer,
        once there is room (for as long as the caller waits: its own timeout, if any)."""
        try:
            await conn.send(call.message, timeout=math.inf)
        except ConnectionClosed:
            pass  # registered: the session's clean-up settles it or the next one resends it

    # -- publish and subscribe (at most once; see actors.leader._pubsub) ---------------

    async def _send(self, message: Any) -> None:
        """Send ``message`` once connected, and once the outgoing buffer has room for it
        (also :meth:`Client.cancel`'s way out).

        Raises:
          TooLarge: the message is over the leader's frame limit.
          ConnectionLost: the client gave up (see :class:`~actors.Client`).
        """
        while True:
            conn = self._conn
            if conn is None:
                if self._failure is not None:
                    raise self._failure
                await self._connected.wait()
                continue
            try:
                await conn.send(message, timeout=math.inf)
                return
            except ConnectionClosed:
                await trio.lowlevel.checkpoint()
            except MessageTooLarge as exc:
                raise too_large(message, exc) from None

    async def publish(
        self,
        subject: str,
        payload: Any = None,
        *,
        headers: dict[str, str] | None = None,
        retain: bool = False,
        qos: int = 0,
    ) -> None:
        """Publish to every subscriber of ``subject``.

        With ``retain=True`` the leader keeps it as the subject's last message for later
        subscribers. ``qos=1`` waits until the leader has accepted it (and sends it again
        after a reconnect until then); delivery to subscribers is at most once. A message
        that does not fit the outgoing buffer right now waits for room.

        Raises:
          TooLarge: the message is over the leader's frame limit (at once), or (``qos=1``)
            what the leader would forward is over a subscriber's.
        """
        fields = {
            "subject": subject,
            "payload": payload,
            "headers": headers or {},
            "retain": retain,
            "qos": qos,
        }
        if qos == 0:
            await self._send(Publish(mid=next(self._mids), **fields))
            return
        call = Call(Publish(mid=next(self._mids), **fields))
        full = self._start(call)
        if full is not None:
            await self._send_when_room(full, call)
        await until_settled(call)
        if call.error is not None:
            raise call.error

    @asynccontextmanager
    async def subscribe(
        self, pattern: str, *, queue: str | None = None, max_pending: int = 1000
    ) -> AsyncIterator[Subscription]:
        """Subscribe to ``pattern`` for the duration of the ``async with`` block.

        With ``queue``, subscriptions sharing the queue name split the messages (each
        goes to one of them). Retained messages matching the pattern arrive first. If the
        leader refuses the subscription (``max_subscriptions``, or ``busy`` when its replay
        of retained messages is over the connection's allowance), receiving from it raises
        the error (:class:`Busy` with ``retry_after``, or :class:`RemoteError`).
        """
        sub, message = self._subs.open(pattern, queue, max_pending, next(self._mids))
        try:
            await self._send(message)
            yield sub
        finally:
            self._subs.close(sub)  # (already gone if the leader refused it)
            conn = self._conn
            if conn is not None:
                try:
                    conn.send_nowait(Unsubscribe(mid=next(self._mids), sid=sub.sid))
                except (ConnectionClosed, SendBufferFull):
                    pass  # (what the leader still delivers to ``sid`` is dropped here)

    def _on_batch(self, batch: list[Any]) -> None:
        for msg in batch:
            self._dispatch(msg)

    def _dispatch(self, msg: Any) -> None:
        kind = type(msg)
        if kind is Result:
            self.results_received += 1
            call = self._calls.pop(msg.cid, None)
            if call is None:
                self.stray_results += 1
                return
            self._progress.pop(msg.job_id, None)
            if msg.ok:
                try:
                    outcome = decode_payload(msg.payload)
                except InvalidPayload as exc:  # the worker's bytes: this call fails, not the client
                    self._settle(
                        call,
                        error=JobFailed(
                            msg.job_id,
                            "InvalidPayload",
                            f"the job's result could not be decoded: {exc}",
                            msg.attempts,
                            None,
                        ),
                    )
                else:
                    self._settle(call, outcome=outcome)
            else:
                asked = call.message
                if msg.error_code == ErrorCode.CANCELLED:  # the leader's mark, never the handler's
                    error_cls: type[JobFailed] = JobCancelled
                elif type(asked) is Submit and asked.qos == 1 and not msg.final:
                    error_cls = DeadLettered
                else:  # QoS 0, a failure not retried, or a result asked for by id
                    error_cls = JobFailed
                self._settle(
                    call,
                    error=error_cls(
                        msg.job_id,
                        msg.error_type or "Error",
                        msg.error_message or "",
                        msg.attempts,
                        msg.traceback,
                    ),
                )
        elif kind is Deliver:
            # For subscription `sid` and each one in `also`, as if each had its own Deliver.
            subs = self._subs.targets(msg)
            if subs:
                try:
                    payload = decode_payload(msg.payload)
                except InvalidPayload as exc:  # a publisher's bytes: dropped, the rest go on
                    first = not self.bad_deliveries
                    self.bad_deliveries += len(subs)
                    if first:
                        _log.warning(
                            "client %s: dropped a message on %s: %s (logged once)",
                            self.name,
                            msg.subject,
                            exc,
                        )
                    return
                self._subs.push(subs, msg, payload)
        elif kind is Progress:
            call = self._progress.get(msg.job_id)
            if call is not None and call.on_progress is not None:
                try:
                    call.on_progress(msg.fraction, msg.note)
                except Exception as exc:  # the caller's own callback: its submit raises it
                    self._calls.pop(call.message.mid, None)
                    self._progress.pop(msg.job_id, None)
                    self._settle(call, error=exc)
        elif kind is Ack:
            call = self._calls.pop(msg.cid, None) if msg.cid is not None else None
            if call is not None:
                self._settle(call, outcome=None)
        elif kind is Error:
            call = self._calls.pop(msg.cid, None) if msg.cid is not None else None
            if call is None:
                # A Subscribe refused: that subscription ends with it (else: nothing of ours).
                refusal: ClientError
                if msg.code == ErrorCode.BUSY:
                    refusal = Busy(msg.message, msg.retry_after)
                elif msg.code == ErrorCode.NOT_PERMITTED:
                    refusal = NotPermitted(msg.message)
                else:
                    refusal = RemoteError(msg.code, msg.message)
                if not self._subs.refused(msg.cid, refusal) and msg.cid is not None:
                    self._unanswered(msg)
                return
            code = msg.code
            if code == ErrorCode.BUSY:
                error: BaseException = Busy(msg.message, msg.retry_after)
            elif code == ErrorCode.NO_ROUTE:
                error = NoRoute(getattr(call.message, "subject", ""), msg.message)
            elif code == ErrorCode.TIMEOUT:
                error = SubmitTimeout(msg.message, msg.job_id)
            elif code == ErrorCode.TOO_LARGE:
                error = TooLarge(msg.message)
            elif code == ErrorCode.CONFLICT:
                error = Conflict(msg.job_id or call.message.job_id, msg.message)
            elif code == ErrorCode.NOT_FOUND:
                error = NotFound(
                    msg.job_id or getattr(call.message, "job_id", None) or "", msg.message
                )
            elif code == ErrorCode.NOT_PERMITTED:
                error = NotPermitted(
                    msg.message,
                    subject=getattr(call.message, "subject", None),
                    job_id=msg.job_id or getattr(call.message, "job_id", None),
                )
            else:
                error = RemoteError(code, msg.message)
            self._settle(call, error=error)

    def _unanswered(self, msg: Error) -> None:
        """An Error that answers no call waiting (a QoS 0 publish or a cancel the leader
        refused: they wait for no answer): counted, and logged once per code."""
        self.unanswered_errors += 1
        if msg.code not in self._codes_logged and len(self._codes_logged) < 32:
            self._codes_logged.add(msg.code)
            _log.warning(
                "client %s: the leader refused a message that waits for no answer: %s: %s"
                " (logged once per code)",
                self.name, msg.code, msg.message,
            )  # fmt: skip

    @staticmethod
    def _settle(call: Call, *, outcome: Any = None, error: BaseException | None = None) -> None:
        if call.done:
            return
        call.done = True
        call.outcome = outcome
        call.error = error
        task = call.task
        if task is not None:
            call.task = None
            trio.lowlevel.reschedule(task)
        if call.channel is not None:
            call.channel.send_nowait(call)

    def _start(self, call: Call) -> Connection | None:
        """Send ``call`` now (or when the connection is back); without waiting.

        Returns:
          None, or the connection whose outgoing buffer has no room for the message now:
          the caller then awaits :meth:`_send_when_room` (the call is registered).
        """
        conn = self._conn
        if conn is None:  # sent when the connection is back
            if self._failure is not None:
                self._settle(call, error=self._failure)
                return None
            self._calls[-next(self._mids)] = call
            return None
        try:
            self._transmit(conn, call)
        except ConnectionClosed:
            pass  # _session's clean-up or the next session takes it from self._calls
        except SendBufferFull:
            return conn
        return None

    # ------------------------------------------------------------------ jobs

    def _submit_call(
        self,
        subject: str,
        payload: Any,
        *,
        qos: int,
        timeout: float | None,
        job_id: str | None,
        headers: dict[str, str] | None,
        max_attempts: int | None,
        wait_for_worker: bool = False,
        enqueue: bool = False,
        delay: float | None = None,
    ) -> Call:
        return Call(  # the constructor validates the arguments now
            _submit_checked(
                mid=next(self._mids),
                job_id=job_id or f"{self._id_prefix}-{next(self._job_numbers)}",
                subject=subject,
                payload=payload,
                headers=headers or {},
                qos=qos,
                timeout=timeout,
                max_attempts=max_attempts,
                wait_for_worker=wait_for_worker,
                enqueue=enqueue,
                delay=delay,
            )
        )

    async def submit(
        self,
        subject: str,
        payload: Any = None,
        *,
        qos: int = 1,
        timeout: float | None = None,
        job_id: str | None = None,
        headers: dict[str, str] | None = None,
        max_attempts: int | None = None,
        on_progress: Callable[[float | None, str | None], None] | None = None,
        wait_for_worker: bool = False,
        detach: bool = False,
        delay: float | dt.timedelta | None = None,
        at: dt.datetime | None = None,
    ) -> Any:
        """Submit a job and wait for its result.

        Args:
          subject: where to send it (no wildcards).
          payload: any CBOR value.
          qos: 1 (default) at least once, redelivered until it succeeds or runs out of
            attempts; 0 at most once.
          timeout: seconds to wait for the result; also the job's deadline at the leader
            (if no worker took it by then, it is dropped) and on its worker (past it, the
            handler is cancelled).
          job_id: the job's id (default: a random per-client prefix and a counter).
            Submitting an id again returns the stored result of the finished job, or
            joins the running one (with the same subject and payload only: else
            :class:`Conflict`).
          headers: str to str metadata (``key`` routes sticky groups).
          max_attempts: deliveries before the job is dead-lettered.
          on_progress: called with ``(fraction, note)`` when the worker reports progress.
          wait_for_worker: when no connected worker serves ``subject``, queue the job for
            one still to come (until ``timeout``) instead of :class:`NoRoute` at once.
          detach: when this call stops waiting (its timeout, a cancellation, an exception
            from ``on_progress``), leave the job running; by default it is cancelled then,
            unless another client waits for it too.
          delay: seconds (or a :class:`~datetime.timedelta`) after the leader accepts the
            job before it may run, at most :data:`protocol.MAX_DELAY` (a year). A journalled
            leader keeps it across restarts. A delayed job waits for a worker still to come
            (as with ``wait_for_worker``); ``timeout`` counts from the submit, so it must
            be longer than the delay.
          at: when the job may run, a timezone-aware :class:`~datetime.datetime` (a naive
            one is refused): the same as ``delay=at - now`` (0 if it has passed), measured
            with the wall clock (``time.time()``) when the call is made. Not with ``delay``.

        Returns:
          The job's result.

        A submit whose message does not fit the outgoing buffer right now (large payloads
        in a burst) waits for room, within ``timeout``; an exception raised by
        ``on_progress`` is raised by this call.

        Raises:
          JobFailed: the job failed (``DeadLettered`` for QoS 1 after its last attempt;
            ``traceback`` holds the remote one); ``JobCancelled``: it was cancelled.
          NoRoute: no connected worker serves ``subject`` (the message names the subject
            and a served one it may have meant).
          Busy: the leader's queue is full; ``retry_after`` says when to try again.
          Conflict: ``job_id`` names a job with another subject or payload.
          TooLarge: the job's message is over the leader's frame limit (at once), or what
            the leader would forward to a worker is over the worker's.
          SubmitTimeout: no result within ``timeout``.
          ConnectionLost: a QoS 0 job's connection dropped, or the connection ended with
            an internal error.
          ValueError, TypeError: bad subject, headers, qos, ``delay`` or ``at`` (see
            :meth:`enqueue`).
        """
        call = self._submit_call(
            subject, payload, qos=qos, timeout=timeout, job_id=job_id, headers=headers,
            max_attempts=max_attempts, wait_for_worker=wait_for_worker,
            delay=delay_of(delay, at, timeout),
        )  # fmt: skip
        call.on_progress = on_progress
        if on_progress is not None:
            self._progress[call.message.job_id] = call
        full = self._start(call)
        try:
            if timeout is None:
                if full is not None:
                    await self._send_when_room(full, call)
                await until_settled(call)
            else:
                with trio.fail_after(timeout):
                    if full is not None:
                        await self._send_when_room(full, call)
                    await until_settled(call)
        except trio.TooSlowError:
            self._stop_waiting(call, detach, f"its submit timed out after {timeout:g} s")
            job_id = call.message.job_id
            raise SubmitTimeout(
                f"no result for job {job_id} within {timeout:g} s", job_id
            ) from None
        finally:
            if not call.done:  # cancelled (or an error of ours)
                self._stop_waiting(call, detach, "its submit was cancelled")
        error = call.error
        if error is not None:
            if not detach and not isinstance(error, ClientError):  # on_progress raised it
                self._abandon(call, f"on_progress raised {type(error).__name__}")
            raise error
        return call.outcome

    async def enqueue(
        self,
        subject: str,
        payload: Any = None,
        *,
        job_id: str | None = None,
        delay: float | dt.timedelta | None = None,
        at: dt.datetime | None = None,
        timeout: float | None = None,
        headers: dict[str, str] | None = None,
        max_attempts: int | None = None,
        wait_for_worker: bool = False,
        accept_timeout: float | None = None,
    ) -> str:
        """Submit a QoS 1 job without waiting for its outcome: return its id once the
        leader has accepted it (Celery's ``apply_async``).

        *Accepted* means written to the leader's journal (kept in memory, for a leader run
        with ``memory=True``): from then on the job runs to a result, a dead letter, an
        expiry or a cancel, across restarts of the leader. Wait for its outcome later,
        from this client or any other, with :meth:`result` (``wait=True``).

        The call survives reconnects as :meth:`submit` does: it is sent again under the
        same job id until the leader acknowledges it. Enqueueing an id the leader already
        knows (queued, running or finished within its dedup window) is acknowledged
        without a second job: to be sure a job was accepted after an error or a timeout,
        enqueue it again with the same ``job_id``.

        Args:
          subject: where to send it (no wildcards).
          payload: any CBOR value.
          job_id: the job's id (default: a random per-client prefix and a counter); give
            your own to make the call idempotent across processes.
          delay, at: when the job may run: seconds (or a timedelta) after its acceptance,
            or a timezone-aware datetime (not both; see :meth:`submit`).
          timeout: the job's deadline, in seconds from now: if no worker has taken it by
            then it expires, and past it on its worker the handler is cancelled. It is not
            how long this call waits (that is ``accept_timeout``). Default: none.
          headers: str to str metadata (``key`` routes sticky groups).
          max_attempts: deliveries before the job is dead-lettered.
          wait_for_worker: when no connected worker serves ``subject``, accept the job for
            one still to come (until ``timeout`` or the leader's ``max_queue_time``)
            instead of :class:`NoRoute`. A delayed job always waits so.
          accept_timeout: seconds to wait for the leader's acknowledgement (default: as
            long as it takes, across reconnects).

        Returns:
          The job's id.

        Leaving this call early (``accept_timeout``, a cancellation) never cancels the
        job: it may have been accepted already.

        Raises:
          NoRoute: no connected worker serves ``subject`` (and no ``wait_for_worker`` or
            ``delay``).
          Busy: the leader's queue (or journal) is full; ``retry_after`` says when to try
            again.
          Conflict: ``job_id`` names a job with another subject or payload.
          TooLarge: the job's message is over the leader's frame limit.
          SubmitTimeout: no acknowledgement within ``accept_timeout`` (the job may or may
            not have been accepted).
          ConnectionLost: the connection ended with an internal error, or the client gave
            up.
          ValueError, TypeError: bad subject, headers, ``delay`` or ``at`` (naive, both
            given, negative, over a year, or a ``timeout`` that ends before the delay).
        """
        if accept_timeout is not None and not accept_timeout > 0:
            raise ValueError(f"accept_timeout must be a number > 0, got {accept_timeout!r}")
        call = self._submit_call(
            subject, payload, qos=1, timeout=timeout, job_id=job_id, headers=headers,
            max_attempts=max_attempts, wait_for_worker=wait_for_worker, enqueue=True,
            delay=delay_of(delay, at, timeout),
        )  # fmt: skip
        job_id = call.message.job_id
        full = self._start(call)
        try:
            with trio.fail_after(math.inf if accept_timeout is None else accept_timeout):
                if full is not None:
                    await self._send_when_room(full, call)
                await until_settled(call)
        except trio.TooSlowError:
            raise SubmitTimeout(
                f"job {job_id} not acknowledged within {accept_timeout:g} s (it may have been"
                " accepted: enqueue it again with the same job_id to be sure)",
                job_id,
            ) from None
        finally:
            if not call.done:  # (never abandoned: the leader may have accepted it)
                self._forget(call)
        if call.error is not None:
            raise call.error
        return job_id

    def _stop_waiting(self, call: Call, detach: bool, why: str) -> None:
        """The caller stops waiting for ``call``: forget it, and abandon its job unless
        ``detach``."""
        self._forget(call)
        if not detach:
            self._abandon(call, why)

    def _forget(self, call: Call) -> None:
        call.done = True
        mid = call.message.mid
        if self._calls.get(mid) is call:
            del self._calls[mid]
        else:  # registered under another key (waiting for a connection)
            for key, other in list(self._calls.items()):
                if other is call:
                    del self._calls[key]
        job_id = getattr(call.message, "job_id", None)
        if self._progress.get(job_id) is call:
            del self._progress[job_id]

    def _abandon(self, call: Call, why: str) -> None:
        """Tell the leader that this client no longer waits for the job of ``call`` (which
        it forgot): ``Cancel(abandon=True)``, queued without waiting (see
        :meth:`_send_cancels`). The leader cancels the job unless another client waits
        for it."""
        if not call.sent:
            return  # the leader never had it
        job_id = call.message.job_id
        if not job_id.startswith(self._id_prefix):
            # An id of the caller's: another call of this client may wait for the same job
            # (the leader counts waits per client, so the Cancel would end that one's too).
            for other in self._calls.values():
                if getattr(other.message, "job_id", None) == job_id:
                    return
        self.abandoned += 1
        message = Cancel(
            mid=next(self._mids), job_id=job_id, reason=f"abandoned: {why}", abandon=True
        )
        conn = self._conn
        if conn is not None and not self._cancels:
            try:
                conn.send_nowait(message)
                return
            except (SendBufferFull, ConnectionClosed):
                pass
        if len(self._cancels) >= MAX_QUEUED_CANCELS:
            self._cancels.popleft()
            self.cancels_dropped += 1
        self._cancels.append(message)
        self._cancels_queued.set()

    async def _send_cancels(self) -> None:
        """Send the queued cancels of abandoned jobs as the connection takes them (a task
        of :meth:`connect`; across reconnects; :meth:`_close` sends what is left)."""
        cancels = self._cancels
        while True:
            if not cancels:
                self._cancels_queued = trio.Event()
                await self._cancels_queued.wait()
                continue
            conn = self._conn
            if conn is None:
                if self._failure is not None:
                    cancels.clear()  # (no connection will come)
                    continue
                await self._connected.wait()
                continue
            try:
                await conn.send(cancels[0], timeout=math.inf)
            except ConnectionClosed:
                await trio.lowlevel.checkpoint()  # (the next connection takes it)
                continue
            cancels.popleft()

    def map(
        self,
        subject: str,
        payloads: Iterable[Any] | AsyncIterable[Any],
        *,
        limit: int = 64,
        ordered: bool = True,
        return_exceptions: bool = False,
        qos: int = 1,
        timeout: float | None = None,
        headers: dict[str, str] | None = None,
        max_attempts: int | None = None,
        wait_for_worker: bool = False,
        detach: bool = False,
        delay: float | dt.timedelta | None = None,
        at: dt.datetime | None = None,
    ) -> JobMap:
        """Submit a job per payload, at most ``limit`` at once, and iterate their results.

        ``async for result in client.map(subject, payloads): ...`` yields the results in
        input order, as :meth:`concurrent.futures.Executor.map` does, with up to ``limit``
        jobs in flight (and up to ``limit`` results held back for an earlier one).

        Args:
          payloads: an iterable or async iterable of payloads, read as jobs are sent.
          limit: jobs in flight at once.
          ordered: False: yield ``(index, result)`` pairs as the jobs complete (``index``:
            the payload's position in the input).
          return_exceptions: put a failed job's exception in its place instead of raising
            it from the iteration (which ends the map).
          qos, headers, max_attempts, wait_for_worker, detach: as for :meth:`submit`.
          delay, at: as for :meth:`submit`, for every job (``at``: each job's delay is
            worked out when it is sent).
          timeout: seconds each job may take, from when it is sent (as for
            :meth:`submit`); a job past it fails with :class:`SubmitTimeout`.

        A ``Busy`` answer is retried after its ``retry_after``. Leaving the iteration
        early (``break``, an exception, a cancellation) abandons the jobs still
        outstanding: each is cancelled unless another client waits for it (or ``detach``).

        Raises:
          ValueError: ``limit`` below 1 (at once).
          The error of the first failed job, in input order when ``ordered`` (see
          :meth:`submit`), unless ``return_exceptions``.
        """
        return JobMap(
            self, subject, payloads, limit=limit, ordered=ordered, return_exceptions=return_exceptions,
            qos=qos, timeout=timeout, headers=headers, max_attempts=max_attempts,
            wait_for_worker=wait_for_worker, detach=detach, delay=delay, at=at,
        )  # fmt: skip

    async def request(
        self,
        subject: str,
        payload: Any = None,
        *,
        timeout: float = 5.0,
        headers: dict[str, str] | None = None,
    ) -> Any:
        """Request/reply: a QoS 0 job (at most once, no redelivery) with a timeout.

        Raises:
          The same as :meth:`submit` (:class:`NoRoute` when no worker serves ``subject``).
        """
        return await self.submit(subject, payload, qos=0, timeout=timeout, headers=headers)

    async def cancel(self, job_id: str, reason: str = "") -> None:
        """Ask the leader to cancel a job (a running one is cancelled on its worker),
        whoever waits for it."""
        await self._send(Cancel(mid=next(self._mids), job_id=job_id, reason=reason))

    async def result(self, job_id: str, *, wait: bool = False, timeout: float | None = None) -> Any:
        """The result of job ``job_id``, submitted by any client, from the leader's stored
        results (kept for its dedup window): the counterpart of :meth:`enqueue`, as
        Celery's ``AsyncResult.get`` is of ``apply_async``.

        ``await client.result(job_id, wait=True)`` waits for a job that is queued, delayed
        or running, from any client and in any process; the question is asked again after
        a reconnect (a journalled leader that restarted still knows the job). Leaving the
        call early (``timeout``, a cancellation) leaves the job alone.

        Args:
          job_id: the job.
          wait: for a job not finished yet, wait for it to finish (else :class:`NotFound`).
          timeout: seconds to wait for the answer (default: as long as it takes).

        Returns:
          The job's result.

        Raises:
          JobFailed: the job failed (``JobCancelled``: it was cancelled).
          NotFound: the leader does not know the job: unknown, finished longer ago than
            its dedup window, or (without ``wait``) not finished yet.
          SubmitTimeout: no answer within ``timeout``; or the job expired (its own
            ``timeout`` passed before a worker took it).
        """
        call = Call(Query(mid=next(self._mids), what="result", job_id=job_id, wait=wait))
        return await self._ask(call, timeout, f"no result for job {job_id} within {timeout} s")

    async def stats(self, *, timeout: float | None = None) -> dict[str, Any]:
        """The leader's statistics (what :meth:`actors.Leader.stats` returns there): per
        subject (the busiest, if there are very many), per worker group, totals,
        connections, listening addresses. The leader builds them at most once a second.

        Raises:
          Busy: asked again within a second on this connection (``retry_after`` says when
            to ask).
          SubmitTimeout: no answer within ``timeout``.
        """
        call = Call(Query(mid=next(self._mids), what="stats"))
        stats: dict[str, Any] = await self._ask(call, timeout, f"no statistics within {timeout} s")
        return stats

    # ------------------------------------------------------------------ dead letters

    async def dead_letters(self, *, timeout: float | None = None) -> list[dict[str, Any]]:
        """The dead letters the leader keeps (QoS 1 jobs that used up their attempts),
        newest first, at most :data:`protocol.MAX_LISTED` (1000).

        Returns:
          A map per dead letter: ``job_id``, ``subject``, ``attempts``, ``error_type``,
          ``error_message``, ``dead_at`` (when, in seconds since the epoch) and, when the
          leader says, ``size`` (its payload's bytes); no payload or traceback (see
          :meth:`dead_letter`).

        Raises:
          SubmitTimeout: no answer within ``timeout``.
        """
        letters, _ = await self.dead_letters_listed(timeout=timeout)
        return letters

    async def dead_letters_listed(
        self, *, timeout: float | None = None
    ) -> tuple[list[dict[str, Any]], int | None]:
        """:meth:`dead_letters`, and how many dead letters there are in all (more than
        those listed past :data:`protocol.MAX_LISTED`), or None if the leader does not say."""
        answer = await self._dead_letter_query("dead_letters", None, timeout)
        if isinstance(answer, dict):  # {"dead_letters": [...], "total": n}
            letters = answer.get("dead_letters") or []
            total = answer.get("total")
            return letters, total if isinstance(total, int) else None
        return list(answer or []), None

    async def dead_letter(self, job_id: str, *, timeout: float | None = None) -> dict[str, Any]:
        """Dead letter ``job_id`` whole: what :meth:`dead_letters` lists of it, and its
        ``payload`` (decoded), ``headers`` and ``traceback`` (the last attempt's, or None).

        Raises:
          NotFound: there is no dead letter ``job_id`` (never one, retried or purged).
          SubmitTimeout: no answer within ``timeout``.
        """
        letter: dict[str, Any] = await self._dead_letter_query("dead_letter", job_id, timeout)
        return letter

    async def retry_dead_letters(
        self, job_id: str | None = None, *, timeout: float | None = None
    ) -> int:
        """Submit dead letter ``job_id`` again (every dead letter when None), each as a new
        job under its id with its attempts reset; it leaves the dead letters. Wait for its
        outcome with :meth:`result`.

        Returns:
          How many were queued again: 0 when there was no such dead letter, or when the
          leader could not queue it (its id names a job running again, its queue is full).

        Raises:
          SubmitTimeout: no answer within ``timeout``.
        """
        retried = 0
        while True:  # (the leader takes those of a journal a page at a time)
            answer = await self._dead_letter_query("retry_dead_letter", job_id, timeout)
            if answer is None:
                return retried
            now = int(answer.get("retried", 0))
            retried += now
            if job_id is not None or not now or not answer.get("remaining"):
                return retried

    async def purge_dead_letters(
        self, job_id: str | None = None, *, timeout: float | None = None
    ) -> int:
        """Forget dead letter ``job_id`` (every dead letter when None) for good.

        Returns:
          How many were purged (0 when there was no such dead letter).

        Raises:
          SubmitTimeout: no answer within ``timeout``.
        """
        answer = await self._dead_letter_query("purge_dead_letters", job_id, timeout)
        return int(answer.get("purged", 0)) if answer is not None else 0

    async def _dead_letter_query(self, what: str, job_id: str | None, timeout: float | None) -> Any:
        """The leader's answer (the Result's payload, decoded) to a dead-letter Query;
        None for a retry or a purge of a ``job_id`` it has no dead letter of."""
        call = Call(Query(mid=next(self._mids), what=what, job_id=job_id))
        about = f"dead letter {job_id}" if job_id is not None else "the dead letters"
        try:
            return await self._ask(call, timeout, f"no answer about {about} within {timeout} s")
        except NotFound:
            if what == "dead_letter":
                raise
            return None

    async def _ask(self, call: Call, timeout: float | None, too_slow: str) -> Any:
        """Send the Query of ``call`` and return the Result's payload (or raise its error)."""
        full = self._start(call)
        try:
            with trio.fail_after(math.inf if timeout is None else timeout):
                if full is not None:
                    await self._send_when_room(full, call)
                await until_settled(call)
        except trio.TooSlowError:
            raise SubmitTimeout(too_slow) from None
        finally:
            if not call.done:
                self._forget(call)  # (a waiting query's answer will be a stray result)
        if call.error is not None:
            raise call.error
        return call.outcome
