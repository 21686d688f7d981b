"""One protocol connection over any transport: framing, batching, heartbeats, closing.

A :class:`Connection` sits on a *wire* (a byte stream such as TCP or TLS, or a WebSocket
carrying one frame per message) and runs three background tasks in a nursery owned by the
factory that built it (:func:`runtime.open_connection`, :func:`runtime.serve`):

- the **reader** (:mod:`runtime._reader`) reads up to 64 KiB at a time, decodes the frames,
  checks every message with the connection's :class:`protocol.Session`, answers Ping with
  Pong, and queues the rest as one batch for :meth:`Connection.receive_some` (or, after
  :meth:`Connection.dispatch_to`, hands the batch to the application's handler itself);
- the **writer** (:meth:`runtime._outgoing.SendQueue.run_writer`) waits until frames are
  queued, takes *all* of them and writes them with one ``send_all`` (on a WebSocket: one
  binary message per frame), so that many small messages cost one system call;
- the **heartbeat** (:mod:`runtime._heartbeat`) sleeps until the session's next deadline,
  pings an idle line and declares a silent peer dead;
- with a finite ``write_timeout``, the **write watch** (:meth:`runtime._outgoing.SendQueue.watch_writes`)
  has the connection cut as a slow consumer once a write has waited that long with no
  byte taken.

Closing is an exchange: the side that closes sends Bye (or an Error), flushes, and lingers
until the peer, told to go, closes its side (at most ``close_timeout``), so that nothing in
flight is lost to a reset.

Containment: a connection is a boundary of trust. An exception of ours (not the peer's bad
bytes, which get their protocol error, nor a lost transport) raised while serving it -- in
the reader, in a :meth:`Connection.dispatch_to` handler, in the writer, in the heartbeat --
ends this connection only: it is logged once with its traceback (logger
``runtime.connection``), the peer is sent ``Error(code="internal")`` (and Bye) when it can
still be told, and the application sees :class:`ConnectionClosed` with ``code="internal"``
(its ``__cause__`` the exception; also in :attr:`Connection.failure`). No task of a
connection lets an :class:`Exception` out into its nursery.

Sending never awaits (``Connection.send_nowait`` encodes, appends and wakes the writer);
the outgoing buffer is bounded and a peer that does not read gets :class:`SendBufferFull`
(or, with a finite ``write_timeout``, is cut once it has taken nothing for that long).
All of that is the connection's :class:`runtime._outgoing.SendQueue`, which owns the
outgoing buffers, their bounds and the writer; the connection owns the rest (the inbox,
the session, closing) and is the queue's :class:`~runtime._outgoing.QueueOwner`.

The connection's tasks (the reader, the heartbeat) and :mod:`runtime._transports` use
the connection through the package-internal methods listed under "The connection's
tasks" in the class, never its fields.
"""

from __future__ import annotations

import collections
import itertools
import logging
import math
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, NoReturn

import attrs
import trio

import protocol
from protocol import Bye, Error, ErrorCode, Ping, Pong, State, Welcome

from ._heartbeat import run_heartbeat, watch_for_hello
from ._outgoing import DEFAULT_FLUSH_EVERY as DEFAULT_FLUSH_EVERY
from ._outgoing import DEFAULT_MAX_OUTGOING as DEFAULT_MAX_OUTGOING
from ._outgoing import DEFAULT_MAX_OUTGOING_TOTAL as DEFAULT_MAX_OUTGOING_TOTAL
from ._outgoing import DEFAULT_SEND_TIMEOUT as DEFAULT_SEND_TIMEOUT
from ._outgoing import OutgoingBudget, SendQueue
from ._outgoing import check_write_timeout as check_write_timeout
from ._reader import run_reader
from ._transport_errors import ConnectionClosed
from ._wire import Wire

#: Where a connection's internal failures are logged (with the peer's address).
logger = logging.getLogger("runtime.connection")
_LOST = (trio.BrokenResourceError, trio.ClosedResourceError)

#: Default bound of received wire bytes decoded but not yet taken by the application.
DEFAULT_MAX_INBOX = 2**20
#: Default time for closing: flush what is queued, let the peer close, close the transport.
DEFAULT_CLOSE_TIMEOUT = 5.0
#: Default time a server-side write may wait with no byte taken by the peer before the
#: peer is cut as a slow consumer (see :func:`runtime.serve`; a Connection's own default
#: is no limit).
DEFAULT_WRITE_TIMEOUT = 10.0


def check_max_frame_size(n: int) -> None:
    """Raise ValueError unless ``n`` is a frame limit a peer may be told (see
    ``protocol.MIN_MAX_FRAME``: a smaller one in our Hello or Welcome would be refused)."""
    if n < protocol.MIN_MAX_FRAME:
        raise ValueError(
            "max_frame_size must be at least protocol.MIN_MAX_FRAME"
            f" ({protocol.MIN_MAX_FRAME}), got {n}"
        )


@attrs.define(eq=False)
class Connection:
    """A protocol connection: send and receive messages, heartbeats, an orderly close.

    Built only by :func:`runtime.open_connection` and :func:`runtime.serve`. The first
    message a server-side connection receives is the peer's Hello (its session enforces
    it); a client-side connection has completed the Hello/Welcome exchange when handed out.

    Sending: :meth:`send`, :meth:`send_many_nowait`, and ``send_nowait(message)``,
    ``queue_nowait(message)``, ``queue_item(item)`` and ``flush()``, which are the methods
    of the connection's send queue themselves (see :class:`runtime._outgoing.SendQueue`
    for each), bound when the connection is built: the leader and the workers call them
    once per message, and a method of the connection that called the queue's would cost a
    call more each time.

    Attributes:
      peer: the peer's address as a URL, e.g. ``tcp://127.0.0.1:53412``.
      scheme: ``tcp``, ``tls``, ``ws`` or ``wss``.
      session: the protocol state machine every received message goes through.
      closed: True once the connection is closing or closed; sending then raises
        :class:`ConnectionClosed`.
      welcome: on the client side, the server's Welcome.
      max_frame_size: largest frame body accepted from the peer; at least
        ``protocol.MIN_MAX_FRAME`` (a smaller one raises ValueError at construction).
      max_outgoing: bound of the outgoing buffer in bytes.
      send_timeout: seconds :meth:`send` waits for room before :class:`SendBufferFull`.
      write_timeout: seconds a write may wait with no byte taken by the peer before the
        connection is cut as a slow consumer (:class:`ConnectionClosed` with
        ``code="slow_consumer"``; see :mod:`runtime._outgoing`); ``math.inf``: never.
      budget: the :class:`runtime._outgoing.OutgoingBudget` its queued bytes count in,
        shared with the other connections of a server (by default its own, unbounded).
      flush_every: messages queued by ``send_nowait`` that are written at once
        (without waiting for the writer task), once the session bundles.
        (These five are the send queue's settings, given to it when the connection is
        built: they cannot be changed afterwards.)
      close_timeout: seconds a graceful close may take before the transport is cut.
      next_mid: ``conn.next_mid()`` returns this connection's next message id (1, 2, ...);
        build every message sent on this connection with it (Hello conventionally uses 0).
      decode_payloads: False keeps received payloads :class:`protocol.Encoded` (see
        :class:`protocol.FrameDecoder`).
      on_hello: server side: called once, from the reader, when the peer's Hello has passed
        the session (:func:`runtime.serve` frees the connection's handshake slot with it).
      failure: the exception of ours that ended the connection (see the module docstring,
        "Containment"), or None.
      foreign_answer: client side, before the Welcome: the first bytes the server sent
        when they were not frames of this protocol (``b""``: it closed without a word), for
        :func:`runtime.open_connection` to say what answered; None otherwise.
      peer_certificate: server side, ``tls`` and ``wss``: the certificate the peer
        presented and the server's ``ssl_context`` verified, as
        :meth:`ssl.SSLSocket.getpeercert` gives it (``subject``, ``subjectAltName``,
        ``notAfter``...); None when the peer presented none, the context asks for none
        (``CERT_NONE``), or over ``tcp`` and ``ws`` (and on the client side). Keyword only.
    """

    _wire: Wire
    session: protocol.Session
    peer: str
    scheme: str
    max_frame_size: int = protocol.DEFAULT_MAX_FRAME_SIZE
    max_outgoing: int = attrs.field(default=DEFAULT_MAX_OUTGOING, on_setattr=attrs.setters.frozen)
    send_timeout: float = attrs.field(default=DEFAULT_SEND_TIMEOUT, on_setattr=attrs.setters.frozen)
    close_timeout: float = DEFAULT_CLOSE_TIMEOUT
    write_timeout: float = attrs.field(default=math.inf, on_setattr=attrs.setters.frozen)
    max_inbox: int = DEFAULT_MAX_INBOX
    flush_every: int = attrs.field(default=DEFAULT_FLUSH_EVERY, on_setattr=attrs.setters.frozen)
    hello_timeout: float | None = None
    on_hello: Callable[[], object] | None = None
    decode_payloads: bool = True
    peer_certificate: dict[str, Any] | None = attrs.field(default=None, kw_only=True)
    welcome: Welcome | None = attrs.field(default=None, init=False)
    failure: Exception | None = attrs.field(default=None, init=False)
    foreign_answer: bytes | None = attrs.field(default=None, init=False)
    closed: bool = attrs.field(default=False, init=False)
    next_mid: Any = attrs.field(init=False, factory=lambda: itertools.count(1).__next__)
    # What the send queue's bytes count in, shared with the other connections of a server.
    _budget: OutgoingBudget = attrs.field(factory=OutgoingBudget, on_setattr=attrs.setters.frozen)
    # The outgoing side (built from the settings above), and its methods that are ours.
    _outgoing: SendQueue = attrs.field(init=False, repr=False)
    send_nowait: Callable[[protocol.Message], None] = attrs.field(init=False, repr=False)
    queue_nowait: Callable[[protocol.Message], None] = attrs.field(init=False, repr=False)
    queue_item: Callable[[list[Any]], None] = attrs.field(init=False, repr=False)
    flush: Callable[[], None] = attrs.field(init=False, repr=False)
    # Incoming: decoded messages not yet taken, the wire bytes they came from.
    _inbox: list[protocol.Message] = attrs.field(init=False, factory=list)
    _inbox_bytes: int = attrs.field(init=False, default=0)
    _ready: collections.deque[protocol.Message] = attrs.field(init=False, factory=collections.deque)
    _receive_lot: trio.lowlevel.ParkingLot = attrs.field(
        init=False, factory=trio.lowlevel.ParkingLot
    )
    _inbox_lot: trio.lowlevel.ParkingLot = attrs.field(init=False, factory=trio.lowlevel.ParkingLot)
    # The reader waits for the application to take from a full inbox (the heartbeat reads it).
    _reader_stalled: bool = attrs.field(init=False, default=False)
    # Set by :meth:`dispatch_to`: the reader hands each batch to it instead of the inbox.
    _handler: Callable[[list[protocol.Message]], None] | None = attrs.field(
        init=False, default=None
    )
    # Closing: why (reason, code, clean), whether to flush, and the lifecycle events.
    _close_info: tuple[str, str | None, bool] | None = attrs.field(init=False, default=None)
    _flush_on_close: bool = attrs.field(init=False, default=True)
    _linger: bool = attrs.field(init=False, default=False)
    _close_requested: trio.Event = attrs.field(init=False, factory=trio.Event)
    _reader_done: trio.Event = attrs.field(init=False, factory=trio.Event)
    _finished: trio.Event = attrs.field(init=False, factory=trio.Event)
    _linger_scope: trio.CancelScope = attrs.field(init=False, factory=trio.CancelScope)
    _nursery: trio.Nursery | None = attrs.field(init=False, default=None)

    def __attrs_post_init__(self) -> None:
        check_max_frame_size(self.max_frame_size)
        outgoing = self._outgoing = SendQueue(
            self._wire,
            self.session,
            self,
            max_outgoing=self.max_outgoing,
            send_timeout=self.send_timeout,
            write_timeout=self.write_timeout,
            flush_every=self.flush_every,
            receive_limit=self.max_frame_size,
            budget=self._budget,
        )
        self.send_nowait = outgoing.send_nowait
        self.queue_nowait = outgoing.queue_nowait
        self.queue_item = outgoing.queue_item
        self.flush = outgoing.flush

    # ------------------------------------------------------------------ sending

    def send_many_nowait(self, messages: Iterable[protocol.Message]) -> None:
        """Queue several messages at once: all of them or, on an error, none.

        Raises:
          ConnectionClosed: the connection is closing or closed.
          SendBufferFull: the outgoing buffer would go over :attr:`max_outgoing` bytes.
          MessageTooLarge: a message encodes to a frame larger than the peer accepts.
        """
        self._outgoing.send_many_nowait(messages)

    async def send(self, message: protocol.Message, *, timeout: float | None = None) -> None:
        """Queue ``message``, waiting while the outgoing buffer is over its bound (``timeout``:
        seconds, None for :attr:`send_timeout`, ``math.inf`` for as long as it takes).

        The send queue's :meth:`~runtime._outgoing.SendQueue.send` documents the rules and
        what it raises (SendBufferFull, ConnectionClosed, MessageTooLarge).
        """
        await self._outgoing.send(message, timeout=timeout)

    # ------------------------------------------------------------------ receiving

    async def receive_some(self) -> list[protocol.Message]:
        """Wait for the next messages and return all that have arrived (never empty).

        Ping, Pong and Bye are handled by the connection and never returned (a Bye's
        reason shows in the :class:`ConnectionClosed` that follows); Error messages are
        returned (the session then ends, and :class:`ConnectionClosed` carries their code).

        Raises:
          ConnectionClosed: the connection closed (messages that arrived before are
            returned first) or failed: at EOF, on a protocol error in what the peer sent
            (``code`` says which), on heartbeat death, after :meth:`aclose`.
        """
        if self._ready:
            await trio.lowlevel.checkpoint()
            batch = list(self._ready)
            self._ready.clear()
            return batch
        if self._inbox:
            await trio.lowlevel.checkpoint()
        else:
            while not self._inbox:
                if self._close_info is not None:
                    raise self._closed_error()
                await self._receive_lot.park()
        batch = self._inbox
        self._inbox = []
        self._inbox_bytes = 0
        if self._inbox_lot:
            self._inbox_lot.unpark_all()
        return batch

    async def dispatch_to(self, handler: Callable[[list[protocol.Message]], None]) -> NoReturn:
        """Hand every batch of received messages to ``handler``, until the connection closes.

        The reader task calls ``handler(batch)`` itself as soon as a batch is decoded (what
        :meth:`receive_some` would return, in the same order, never empty), so no other task
        has to wake up for it; messages that were already waiting go to it first, from this
        task. ``handler`` must not block: it runs synchronously in the reader. An
        :class:`Exception` from it is an internal failure that ends this connection (logged,
        the peer told ``internal``): this method then raises :class:`ConnectionClosed` with
        ``code="internal"``, the exception as its ``__cause__``. Use either this or the
        ``receive`` methods.

        Raises:
          ConnectionClosed: always, in the end, as :meth:`receive_some` would.
        """
        self._handler = handler
        try:
            waiting = list(self._ready) + self._inbox if self._ready else self._inbox
            if waiting:
                self._ready.clear()
                self._inbox = []
                self._inbox_bytes = 0
                if self._inbox_lot:
                    self._inbox_lot.unpark_all()
                try:
                    handler(waiting)  # before anything the reader gets from now on
                except Exception as exc:
                    self._internal_failure(exc, "in the dispatch_to handler of")
            while self._close_info is None:
                await self._receive_lot.park()
            raise self._closed_error()
        finally:
            self._handler = None

    async def receive(self) -> protocol.Message:
        """Return the next message, one at a time.

        Messages come off the batch :meth:`receive_some` returned without a schedule point
        for each (only a cancellation check), so that ``async for`` stays fast.

        Raises:
          ConnectionClosed: as :meth:`receive_some`.
        """
        ready = self._ready
        if ready:
            await trio.lowlevel.checkpoint_if_cancelled()
            return ready.popleft()
        batch = await self.receive_some()
        ready.extend(batch)
        return ready.popleft()

    def __aiter__(self) -> Connection:
        return self

    async def __anext__(self) -> protocol.Message:
        try:
            return await self.receive()
        except ConnectionClosed as exc:
            if exc.clean:
                raise StopAsyncIteration from None
            raise

    # ------------------------------------------------------------------ closing

    async def aclose(self, error: protocol.Error | None = None) -> None:
        """Close the connection: send what is queued, then ``error`` (or Bye), then close.

        Waits at most :attr:`close_timeout` seconds for the queue to drain and the peer to
        close its side, then cuts the transport. Idempotent: a second call waits for the
        first close to finish.

        Args:
          error: an Error message to send last, telling the peer why (for instance
            ``slow_consumer`` or ``shutting_down``); a Bye follows it when its code does
            not end the session by itself. Without it a Bye is sent when the session is
            open. The peer's :class:`ConnectionClosed` carries the error's code.
        """
        self.close_soon(error)
        if self._nursery is None:  # never ran: nothing to drain
            self._finished.set()
            await self._wire.aclose_forcefully()
        await self._finished.wait()

    def close_soon(self, error: protocol.Error | None = None) -> None:
        """Start closing as :meth:`aclose` does, without waiting for the close to finish.

        For code that may not await (a callback, a loop over a batch); the connection's
        own tasks carry the close out. Does nothing if the connection is already closing.
        """
        if self.closed:
            return
        final = self._last_words(error)
        if error is not None:
            reason = f"closed locally with error {error.code}: {error.message}"
        else:
            reason = "closed locally"
        code = error.code if error is not None else None
        linger = bool(final) or self._outgoing.bye_sent
        self._request_close(reason, code=code, clean=True, final=final, linger=linger)

    def _last_words(self, error: protocol.Error | None) -> list[protocol.Message]:
        """What closing sends last: ``error`` if given, then Bye if the peer's session is
        open and ``error`` does not end it by itself (``busy``, ``internal``...)."""
        # Bye only to a peer whose session is open (it would reject it before Welcome).
        outgoing = self._outgoing
        bye = self.session.state is State.OPEN and outgoing.peer_open and not outgoing.bye_sent
        if error is None:
            return [Bye(mid=self.next_mid(), reason="closing")] if bye else []
        if bye and not ErrorCode.closes_connection(error.code):
            # The peer's session outlives this Error: Bye ends it.
            return [error, Bye(mid=self.next_mid(), reason=error.message)]
        return [error]

    def _internal_failure(self, exc: Exception, doing: str) -> None:
        """Our own code raised ``exc`` while serving this connection (``doing``, e.g.
        "in the dispatch_to handler of", is followed by the peer's address): log it once
        with its traceback, tell the peer ``internal`` if it can still be told, and close
        this connection only (see the module docstring, "Containment")."""
        logger.error(
            "internal error %s %s; closing that connection", doing, self.peer, exc_info=exc
        )
        if self.failure is None:
            self.failure = exc
        if self.closed:
            return  # already closing: that close goes on (the peer may miss what failed)
        error = Error(
            mid=self.next_mid(),
            code=ErrorCode.INTERNAL,
            message=f"internal error: {type(exc).__name__}",
        )
        self._request_close(
            f"internal error {doing} {self.peer}: {exc!r}",
            code=ErrorCode.INTERNAL,
            final=self._last_words(error),
        )

    def _closed_error(self) -> ConnectionClosed:
        """The :class:`ConnectionClosed` that receiving raises once closed (its cause: our
        own failure, if one closed it)."""
        assert self._close_info is not None
        reason, code, clean = self._close_info
        error = ConnectionClosed(reason, code=code, clean=clean)
        error.__cause__ = self.failure
        return error

    def _request_close(
        self,
        reason: str,
        *,
        code: str | None = None,
        clean: bool = False,
        final: Sequence[protocol.Message] = (),
        flush: bool = True,
        linger: bool | None = None,
    ) -> None:
        """Start closing (once): no more sending or delivering; ``final`` goes out last.

        ``flush`` lets the writer drain the queue first; ``linger`` (by default: when
        ``final`` messages tell the peer to go) then waits for the peer to close its side,
        so that it reads everything before the transport goes.
        """
        if self.closed:
            return
        self.closed = True
        self._close_info = (reason, code, clean)
        self._flush_on_close = flush
        self._linger = flush and (bool(final) if linger is None else linger)
        self.session.close()
        outgoing = self._outgoing
        for message in final:
            outgoing.send_control(message)
        outgoing.close(reason, code, clean)
        self._close_requested.set()
        for lot in (self._receive_lot, self._inbox_lot):
            lot.unpark_all()

    # ------------------------------------------------------------------ the send queue's calls
    # (runtime._outgoing.QueueOwner)

    def _transport_lost(self, exc: BaseException) -> None:
        """The transport broke (``exc``, while reading or writing): close, unflushed."""
        self._request_close(f"connection to {self.peer} lost: {exc!r}", flush=False)

    def _write_stalled(self, seconds: float, held: int) -> None:
        """The peer has taken no byte of the write under way for ``seconds`` (at least
        :attr:`write_timeout`; ``held`` bytes wait for it): cut it as a slow consumer."""
        if self.closed:
            return  # (closing already: close_timeout bounds that)
        self._cut_slow_consumer(
            f"slow consumer: {self.peer} took no bytes for {seconds:g} s ({held} bytes queued for it)"
        )
        self._outgoing.drop()

    def _over_budget(self, held: int, limit: int) -> None:
        """The server's :class:`OutgoingBudget` is full and this connection held the most of
        it (``held`` bytes, dropped by the queue): cut it as a slow consumer."""
        self._cut_slow_consumer(
            f"slow consumer: {self.peer} held the most of the outgoing budget of {limit} bytes"
            f" ({held} bytes queued for it)"
        )

    def _cut_slow_consumer(self, reason: str) -> None:
        """Log ``reason`` once and close without a word (a write may have stopped in the
        middle of a frame: no Error can follow it)."""
        if self.closed:
            return
        logger.warning("%s; closing that connection", reason)
        self._request_close(reason, code=ErrorCode.SLOW_CONSUMER, flush=False)

    def _fail(self, exc: protocol.ProtocolError) -> None:
        """The peer broke the protocol: tell it, then close."""
        self._request_close(
            f"protocol error from {self.peer}: {exc.message}",
            code=exc.code,
            final=[Error(mid=self.next_mid(), code=exc.code, message=exc.message)],
        )

    # ------------------------------------------------------------------ background tasks

    async def _run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the reader, writer and heartbeat until closed, then close the transport."""
        try:
            self.session.start(trio.current_time())
            outgoing = self._outgoing
            outgoing.join_budget()
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._read)
                nursery.start_soon(self._contained, "writing to", outgoing.run_writer)
                if self.session.heartbeat:
                    nursery.start_soon(self._contained, "in the heartbeat of", run_heartbeat, self)
                if self.hello_timeout is not None:
                    nursery.start_soon(
                        self._contained, "waiting for the Hello of", watch_for_hello, self
                    )
                if self.write_timeout < math.inf:
                    nursery.start_soon(
                        self._contained, "watching the writes to", outgoing.watch_writes
                    )
                task_status.started()
                await self._close_requested.wait()
                self._linger_scope.deadline = trio.current_time() + self.close_timeout
                with self._linger_scope:
                    if self._flush_on_close:
                        # Drain the queue, linger until the peer (told Bye or Error) closes
                        # its side, then close the transport gracefully (TLS, WebSocket).
                        await outgoing.writer_done.wait()
                        if self._linger:
                            await self._reader_done.wait()
                        await self._contained("closing the connection to", self._wire.aclose)
                nursery.cancel_scope.cancel()
        finally:
            self.closed = True
            if self._close_info is None:
                self._close_info = ("connection cancelled", None, False)
            self._outgoing.close(*self._close_info)  # (a sender waiting for room wakes)
            self._outgoing.leave_budget()  # (what is still queued is dropped)
            await self._contained("closing the connection to", self._wire.aclose_forcefully)
            self._finished.set()
            self._receive_lot.unpark_all()

    async def _read(self) -> None:
        """The reader task (it contains its own failures); then the peer may be gone."""
        try:
            await run_reader(self, self._wire)
        finally:
            self._reader_done.set()

    async def _contained(
        self, doing: str, fn: Callable[..., Awaitable[object]], *args: object
    ) -> None:
        """``await fn(*args)``, one of this connection's tasks or steps: a lost transport
        ends the connection, any other :class:`Exception` is an internal failure of this
        connection (``doing`` says where, for the log); nothing escapes."""
        try:
            await fn(*args)
        except _LOST as exc:
            self._transport_lost(exc)
        except Exception as exc:
            self._internal_failure(exc, doing)

    def _abort(self, reason: str) -> None:
        """Close now: no flushing, no lingering (the application gave up on the connection)."""
        self._request_close(reason, flush=False)
        self._flush_on_close = self._linger = False
        self._linger_scope.cancel()

    # ------------------------------------------------------------------ the connection's tasks
    # What the reader (runtime._reader), the heartbeat (runtime._heartbeat) and the
    # factories (runtime._transports) use, besides the public attributes and the closing
    # methods above (_request_close, _transport_lost, _fail, _internal_failure, _abort).

    def _welcomed(self, welcome: Welcome) -> None:
        """Client side: ``welcome`` answered our Hello; what we send follows what it names
        (the version: bundles or not; the largest frame it accepts)."""
        self.welcome = welcome
        self._outgoing.handshake_done(welcome.version, welcome.max_frame)

    def _start_heartbeat(self, interval: float) -> None:
        """Start heartbeats after the handshake (client side: interval from Welcome)."""
        if self.closed or self._nursery is None:
            return
        self.session.heartbeat = interval
        self._nursery.start_soon(self._contained, "in the heartbeat of", run_heartbeat, self)

    def _ping(self) -> None:
        """Send a Ping, if the peer's session is open (one still waiting for the Welcome
        would reject it)."""
        if self._outgoing.peer_open:
            self._outgoing.send_control(Ping(mid=self.next_mid()))

    def _answer_ping(self, ping: Ping) -> None:
        """Answer ``ping`` with a Pong, unless the outgoing buffer is full (a peer that pings
        without reading gets no Pong)."""
        if self._outgoing.has_room(16):
            self._outgoing.send_control(Pong(mid=self.next_mid(), cid=ping.mid))

    @property
    def _dispatch_handler(self) -> Callable[[list[protocol.Message]], None] | None:
        """The handler :meth:`dispatch_to` installed (the reader calls it with each batch,
        see :mod:`runtime._reader`), or None: batches go to :meth:`_deliver`."""
        return self._handler

    def _deliver(self, batch: list[protocol.Message], size: int) -> bool:
        """Queue ``batch`` (never empty), decoded from ``size`` wire bytes, for
        :meth:`receive_some`; wake a receiver waiting for it. Return True if the inbox is
        now full (:attr:`max_inbox` bytes or more): the reader is to wait for room
        (:meth:`_wait_for_inbox_room`) before it reads on."""
        self._inbox += batch
        self._inbox_bytes += size
        if self._receive_lot:
            self._receive_lot.unpark_all()
        return self._inbox_bytes >= self.max_inbox

    async def _wait_for_inbox_room(self) -> None:
        """Wait while the inbox holds :attr:`max_inbox` bytes or more (until the application
        takes them, or the connection closes). Meanwhile :attr:`_reader_stalled` is True:
        the peer's silence is ours then, and the heartbeat does not count it."""
        while self._inbox_bytes >= self.max_inbox and not self.closed:
            self._reader_stalled = True
            try:
                await self._inbox_lot.park()
            finally:
                self._reader_stalled = False
