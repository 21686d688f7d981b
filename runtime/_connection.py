"""One protocol connection over any transport: framing, batching, heartbeats, closing.

A :class:`Connection` sits on a *wire* (a byte stream such as TCP or TLS, or a WebSocket
carrying one frame per message) and runs three background tasks in a nursery owned by the
factory that built it (:func:`runtime.open_connection`, :func:`runtime.serve`):

- the **reader** (:mod:`runtime._reader`) reads up to 64 KiB at a time, decodes the frames,
  checks every message with the connection's :class:`protocol.Session`, answers Ping with
  Pong, and queues the rest as one batch for :meth:`Connection.receive_some`;
- the **writer** (here) waits until frames are queued, takes *all* of them and writes them
  with one ``send_all`` (on a WebSocket: one binary message per frame), so that many small
  messages cost one system call;
- the **heartbeat** (:mod:`runtime._heartbeat`) sleeps until the session's next deadline,
  pings an idle line and declares a silent peer dead.

Closing is an exchange: the side that closes sends Bye (or an Error), flushes, and lingers
until the peer, told to go, closes its side (at most ``close_timeout``), so that nothing in
flight is lost to a reset.

Sending never awaits (:meth:`Connection.send_nowait` encodes, appends and wakes the writer);
the outgoing buffer is bounded and a peer that does not read gets :class:`SendBufferFull`.
"""

from __future__ import annotations

import collections
import itertools
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NoReturn

import attrs
import trio

import protocol
from protocol import Bye, Error, ErrorCode, State, Welcome

from ._heartbeat import run_heartbeat, watch_for_hello
from ._reader import run_reader
from ._transport_errors import ConnectionClosed, MessageTooLarge, SendBufferFull
from ._wire import Wire

#: Default bound of the outgoing buffer, in bytes (queued plus being written).
DEFAULT_MAX_OUTGOING = 8 * 2**20
#: Default bound of received wire bytes decoded but not yet taken by the application.
DEFAULT_MAX_INBOX = 2**20
#: Default time for closing: flush what is queued, let the peer close, close the transport.
DEFAULT_CLOSE_TIMEOUT = 5.0
#: Default number of messages queued by :meth:`Connection.send_nowait` after which they
#: are written at once instead of when the writer task next runs (so that a peer starts
#: on the first of a long run of messages while the rest are still being made).
DEFAULT_FLUSH_EVERY = 16
#: Default time :meth:`Connection.send` waits for room in the outgoing buffer.
DEFAULT_SEND_TIMEOUT = 10.0

_HEADER_SIZE = protocol.HEADER_SIZE
_encode = protocol.encode
_encode_item = protocol.encode_item
_encode_array = protocol.encode_array
_message_of = protocol.message_of
_BYE_KIND = Bye.KIND
_BUNDLE_OVERHEAD = protocol.BUNDLE_OVERHEAD
_LOST = (trio.BrokenResourceError, trio.ClosedResourceError)


@attrs.define(eq=False)
class Connection:
    """A protocol connection: send and receive messages, heartbeats, an orderly close.

    Built only by :func:`runtime.open_connection` and :func:`runtime.serve`. The first
    message a server-side connection receives is the peer's Hello (its session enforces
    it); a client-side connection has completed the Hello/Welcome exchange when handed out.

    Attributes:
      peer: the peer's address as a URL, e.g. ``tcp://127.0.0.1:53412``.
      scheme: ``tcp``, ``tls``, ``ws`` or ``wss``.
      session: the protocol state machine every received message goes through.
      closed: True once the connection is closing or closed; sending then raises
        :class:`ConnectionClosed`.
      welcome: on the client side, the server's Welcome.
      max_outgoing: bound of the outgoing buffer in bytes.
      send_timeout: seconds :meth:`send` waits for room before :class:`SendBufferFull`.
      flush_every: messages queued by :meth:`send_nowait` that are written at once
        (without waiting for the writer task), once the session bundles.
      close_timeout: seconds a graceful close may take before the transport is cut.
      next_mid: ``conn.next_mid()`` returns this connection's next message id (1, 2, ...);
        build every message sent on this connection with it (Hello conventionally uses 0).
    """

    _wire: Wire
    session: protocol.Session
    peer: str
    scheme: str
    max_frame_size: int = protocol.DEFAULT_MAX_FRAME_SIZE
    max_outgoing: int = DEFAULT_MAX_OUTGOING
    send_timeout: float = DEFAULT_SEND_TIMEOUT
    close_timeout: float = DEFAULT_CLOSE_TIMEOUT
    max_inbox: int = DEFAULT_MAX_INBOX
    flush_every: int = DEFAULT_FLUSH_EVERY
    hello_timeout: float | None = None
    welcome: Welcome | None = attrs.field(default=None, init=False)
    closed: bool = attrs.field(default=False, init=False)
    next_mid: Any = attrs.field(init=False, factory=lambda: itertools.count(1).__next__)
    # The peer's frame limit for what we send (its Welcome may lower it).
    _send_limit: int = attrs.field(init=False, default=0)
    _decoder: protocol.FrameDecoder = attrs.field(init=False)
    # Outgoing: frames waiting for the writer, their bytes, and bytes being written.
    _pending: list[bytes] = attrs.field(init=False, factory=list)
    # Once the session's version allows bundles: messages waiting for the writer, each
    # encoded alone (so that a bad one fails its sender), bundled into frames when written.
    _bundling: bool = attrs.field(init=False, default=False)
    _items: list[bytes] = attrs.field(init=False, factory=list)
    # The wire's way to write without waiting, if it has one (see :meth:`flush`).
    _try_send: Any = attrs.field(init=False, default=None)
    _queued_bytes: int = attrs.field(init=False, default=0)
    _inflight_bytes: int = attrs.field(init=False, default=0)
    _writer_lot: trio.lowlevel.ParkingLot = attrs.field(init=False, factory=trio.lowlevel.ParkingLot)
    _space_lot: trio.lowlevel.ParkingLot = attrs.field(init=False, factory=trio.lowlevel.ParkingLot)
    # Incoming: decoded messages not yet taken, the wire bytes they came from.
    _inbox: list[protocol.Message] = attrs.field(init=False, factory=list)
    _inbox_bytes: int = attrs.field(init=False, default=0)
    _ready: collections.deque[protocol.Message] = attrs.field(init=False, factory=collections.deque)
    _receive_lot: trio.lowlevel.ParkingLot = attrs.field(init=False, factory=trio.lowlevel.ParkingLot)
    _inbox_lot: trio.lowlevel.ParkingLot = attrs.field(init=False, factory=trio.lowlevel.ParkingLot)
    _reader_stalled: bool = attrs.field(init=False, default=False)
    # Set by :meth:`dispatch_to`: the reader hands each batch to it instead of the inbox.
    _handler: Any = attrs.field(init=False, default=None)
    # Closing: why (reason, code, clean), whether to flush, and the lifecycle events.
    _close_info: tuple[str, str | None, bool] | None = attrs.field(init=False, default=None)
    _flush_on_close: bool = attrs.field(init=False, default=True)
    _linger: bool = attrs.field(init=False, default=False)
    _close_requested: trio.Event = attrs.field(init=False, factory=trio.Event)
    _writer_done: trio.Event = attrs.field(init=False, factory=trio.Event)
    _reader_done: trio.Event = attrs.field(init=False, factory=trio.Event)
    _finished: trio.Event = attrs.field(init=False, factory=trio.Event)
    _linger_scope: trio.CancelScope = attrs.field(init=False, factory=trio.CancelScope)
    # The peer's session is open (it may be sent Ping or Bye) once the Welcome passed:
    # received on the client side, sent on the server side.
    _peer_open: bool = attrs.field(init=False, default=False)
    _bye_sent: bool = attrs.field(init=False, default=False)
    _nursery: trio.Nursery | None = attrs.field(init=False, default=None)

    def __attrs_post_init__(self) -> None:
        self._decoder = protocol.FrameDecoder(max_frame_size=self.max_frame_size)
        # What the peer accepts, until its Hello or Welcome says: the protocol's default,
        # or our own limit if lower (a peer set up like this side).
        self._send_limit = min(self.max_frame_size, protocol.DEFAULT_MAX_FRAME_SIZE)
        self._try_send = getattr(self._wire, "try_send", None)

    # ------------------------------------------------------------------ sending

    def send_nowait(self, message: protocol.Message) -> None:
        """Queue ``message`` for the writer without waiting.

        Raises:
          ConnectionClosed: the connection is closing or closed.
          SendBufferFull: the outgoing buffer would go over :attr:`max_outgoing` bytes.
          MessageTooLarge: the message encodes to a frame larger than the peer accepts.
        """
        self.queue_nowait(message)
        if len(self._items) >= self.flush_every:
            self.flush()
        elif self._writer_lot:
            self._writer_lot.unpark_all()

    def queue_nowait(self, message: protocol.Message) -> None:
        """Queue ``message`` as :meth:`send_nowait` does, but leave it queued until
        :meth:`flush` (for a loop that sends many messages, to many connections, and then
        flushes each once: the writer task need not run at all).

        Raises:
          The same as :meth:`send_nowait`.
        """
        bundling = self._bundling
        frame = self._item(message) if bundling else self._frame(message)
        size = len(frame)
        used = self._queued_bytes + self._inflight_bytes
        if used + size > self.max_outgoing and used:
            raise SendBufferFull(self.max_outgoing)
        (self._items if bundling else self._pending).append(frame)
        self._queued_bytes += size
        if type(message) is Bye:
            self._bye_sent = True

    def queue_item(self, item: list[Any]) -> None:
        """Queue a message given as its bundle item (``Result.item(...)``, say) without
        building the message: for a sender of many messages; then :meth:`flush`.

        To a peer that does not take bundles (version 1), the item is turned into its
        message and sent as one, validated as if it had been received.

        Raises:
          The same as :meth:`send_nowait`; ValueError (a value has no CBOR encoding) or a
          ProtocolError (a bad item, version 1 peers only).
        """
        if not self._bundling:
            self.queue_nowait(_message_of(item))
            return
        if self.closed:
            self._check_open()
        data = _encode_array(item)
        size = len(data)
        if size + _BUNDLE_OVERHEAD > self._send_limit:
            raise MessageTooLarge(size + _BUNDLE_OVERHEAD, self._send_limit)
        used = self._queued_bytes + self._inflight_bytes
        if used + size > self.max_outgoing and used:
            raise SendBufferFull(self.max_outgoing)
        self._items.append(data)
        self._queued_bytes += size
        if item[0] == _BYE_KIND:
            self._bye_sent = True

    def flush(self) -> None:
        """Write what is queued: at once, when the transport takes it all without waiting
        (plain TCP); the writer task writes the rest. Never waits."""
        if not (self._pending or self._items):
            return
        try_send = self._try_send
        if try_send is not None and not self._inflight_bytes and not self.closed:
            batch = self._take_batch()
            data = batch[0] if len(batch) == 1 else b"".join(batch)
            try:
                sent = try_send(data)
            except _LOST as exc:
                self._request_close(f"connection to {self.peer} lost: {exc!r}", flush=False)
                return
            self.session.sent(trio.current_time())
            if sent == len(data):
                self._queued_bytes = 0
                if self._space_lot:
                    self._space_lot.unpark_all()
                return
            rest = data[sent:]
            self._pending.insert(0, rest)  # before anything queued since (nothing yet)
            self._queued_bytes = len(rest)
        if self._writer_lot:
            self._writer_lot.unpark_all()

    def _take_batch(self) -> list[bytes]:
        """Everything queued, as frames (bundling the items), in order; the queue empties."""
        batch = self._pending
        items = self._items
        self._pending = []
        if items:
            self._items = []
            bundles = protocol.bundle_frames(items, self._send_limit)
            batch = batch + bundles if batch else bundles
        return batch

    def send_many_nowait(self, messages: Iterable[protocol.Message]) -> None:
        """Queue several messages at once: all of them or, on an error, none.

        Raises:
          The same as :meth:`send_nowait`.
        """
        messages = list(messages)
        bundling = self._bundling
        encode = self._item if bundling else self._frame
        frames = [encode(m) for m in messages]
        if not frames:
            return
        size = sum(map(len, frames))
        used = self._queued_bytes + self._inflight_bytes
        if used + size > self.max_outgoing and used:
            raise SendBufferFull(self.max_outgoing)
        if bundling:
            self._items += frames
        else:
            self._pending += frames
        self._queued_bytes += size
        if any(type(m) is Bye for m in messages):
            self._bye_sent = True
        if self._writer_lot:
            self._writer_lot.unpark_all()

    async def send(self, message: protocol.Message) -> None:
        """Queue ``message``, waiting while the outgoing buffer is over its bound.

        Raises:
          SendBufferFull: no room came within :attr:`send_timeout` seconds.
          ConnectionClosed: the connection is closing or closed.
          MessageTooLarge: the message encodes to a frame larger than the peer accepts.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        bundling = self._bundling
        frame = self._item(message) if bundling else self._frame(message)
        encoded_for = self._bundling  # (a Welcome just turned bundling on: it is a frame)
        size = len(frame)
        waited = False
        if not self._has_room(size):
            waited = True
            with trio.move_on_after(self.send_timeout) as waiting:
                while not self._has_room(size):
                    await self._space_lot.park()
                    self._check_open()
            if waiting.cancelled_caught:
                raise SendBufferFull(self.max_outgoing)
        if encoded_for != self._bundling:  # (the handshake ended while this one waited)
            bundling = self._bundling
            frame = self._item(message)
            size = len(frame)
        (self._items if bundling else self._pending).append(frame)
        self._queued_bytes += size
        if type(message) is Bye:
            self._bye_sent = True
        if self._writer_lot:
            self._writer_lot.unpark_all()
        if not waited:  # a schedule point either way, as trio's own send() does
            await trio.lowlevel.cancel_shielded_checkpoint()

    def _frame(self, message: protocol.Message) -> bytes:
        if self.closed:
            self._check_open()
        kind = type(message)
        if kind is Welcome and message.max_frame is None:
            message = attrs.evolve(message, max_frame=self.max_frame_size)  # (see _item)
        frame = _encode(message)
        if len(frame) - _HEADER_SIZE > self._send_limit:
            raise MessageTooLarge(len(frame) - _HEADER_SIZE, self._send_limit)
        if kind is Welcome:
            self._peer_open = True
            # What follows the Welcome may be bundled, if the version it names allows,
            # up to the frame size the client's Hello named.
            self._bundling = message.version >= protocol.BUNDLE_VERSION
            peer_limit = self.session.peer_max_frame
            if peer_limit is not None:
                self._send_limit = peer_limit
        return frame

    def _item(self, message: protocol.Message) -> bytes:
        if self.closed:
            self._check_open()
        item = _encode_item(message)
        if len(item) + _BUNDLE_OVERHEAD > self._send_limit:
            raise MessageTooLarge(len(item) + _BUNDLE_OVERHEAD, self._send_limit)
        return item

    def _use_bundles(self, version: int) -> None:
        """Client side: the Welcome received names ``version``; bundle from now on if it
        allows (on the server side, sending the Welcome decides)."""
        self._bundling = version >= protocol.BUNDLE_VERSION

    def _has_room(self, size: int) -> bool:
        used = self._queued_bytes + self._inflight_bytes
        return used == 0 or used + size <= self.max_outgoing

    def _check_open(self) -> None:
        if self.closed:
            assert self._close_info is not None
            reason, code, clean = self._close_info
            raise ConnectionClosed(reason, code=code, clean=clean)

    def _send_control(self, message: protocol.Message) -> None:
        """Queue a Ping, Pong, Bye or Error past the bound (they are tiny and few)."""
        frame = _encode_item(message) if self._bundling else _encode(message)
        (self._items if self._bundling else self._pending).append(frame)
        self._queued_bytes += len(frame)
        if self._writer_lot:
            self._writer_lot.unpark_all()

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
                    reason, code, clean = self._close_info
                    raise ConnectionClosed(reason, code=code, clean=clean)
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
        task. ``handler`` must not block: it runs synchronously in the reader (an exception
        from it ends the connection's tasks). Use either this or the ``receive`` methods.

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
                handler(waiting)  # before anything the reader gets from now on
            while self._close_info is None:
                await self._receive_lot.park()
            reason, code, clean = self._close_info
            raise ConnectionClosed(reason, code=code, clean=clean)
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
        # Bye only to a peer whose session is open (it would reject it before Welcome).
        bye = self.session.state is State.OPEN and self._peer_open and not self._bye_sent
        final: list[protocol.Message] = []
        if error is not None:
            reason = f"closed locally with error {error.code}: {error.message}"
            final.append(error)
            if bye and not ErrorCode.closes_connection(error.code):
                # The peer's session outlives this Error (``busy``...): Bye ends it.
                final.append(Bye(mid=self.next_mid(), reason=error.message))
        else:
            reason = "closed locally"
            if bye:
                final.append(Bye(mid=self.next_mid(), reason="closing"))
        code = error.code if error is not None else None
        linger = bool(final) or self._bye_sent
        self._request_close(reason, code=code, clean=True, final=final, linger=linger)

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
        for message in final:
            self._send_control(message)
        self._close_requested.set()
        for lot in (self._writer_lot, self._space_lot, self._receive_lot, self._inbox_lot):
            lot.unpark_all()

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
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(run_reader, self)
                nursery.start_soon(self._writer)
                if self.session.heartbeat:
                    nursery.start_soon(run_heartbeat, self)
                if self.hello_timeout is not None:
                    nursery.start_soon(watch_for_hello, self)
                task_status.started()
                await self._close_requested.wait()
                self._linger_scope.deadline = trio.current_time() + self.close_timeout
                with self._linger_scope:
                    if self._flush_on_close:
                        # Drain the queue, linger until the peer (told Bye or Error) closes
                        # its side, then close the transport gracefully (TLS, WebSocket).
                        await self._writer_done.wait()
                        if self._linger:
                            await self._reader_done.wait()
                        await self._wire.aclose()
                nursery.cancel_scope.cancel()
        finally:
            self.closed = True
            if self._close_info is None:
                self._close_info = ("connection cancelled", None, False)
            await self._wire.aclose_forcefully()
            self._finished.set()
            for lot in (self._space_lot, self._receive_lot):
                lot.unpark_all()

    def _abort(self, reason: str) -> None:
        """Close now: no flushing, no lingering (the application gave up on the connection)."""
        self._request_close(reason, flush=False)
        self._flush_on_close = self._linger = False
        self._linger_scope.cancel()

    def _start_heartbeat(self, interval: float) -> None:
        """Start heartbeats after the handshake (client side: interval from Welcome)."""
        if self.closed or self._nursery is None:
            return
        self.session.heartbeat = interval
        self._nursery.start_soon(run_heartbeat, self)

    async def _writer(self) -> None:
        wire = self._wire
        session = self.session
        clock = trio.lowlevel.current_clock().current_time  # = trio.current_time, one call deep
        try:
            while True:
                if not self._pending and not self._items:
                    if self.closed:
                        return
                    await self._writer_lot.park()
                    continue
                batch = self._take_batch()
                self._inflight_bytes = self._queued_bytes
                self._queued_bytes = 0
                try:
                    await wire.send_frames(batch)
                except _LOST as exc:
                    self._request_close(f"connection to {self.peer} lost: {exc!r}", flush=False)
                    return
                self._inflight_bytes = 0
                session.sent(clock())
                if self._space_lot:
                    self._space_lot.unpark_all()
        finally:
            self._writer_done.set()
