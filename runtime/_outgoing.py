"""The outgoing side of a connection: queueing messages, bundling them, the writer task.

A mixin of :class:`~runtime.Connection` (the state it reads is the connection's): sending
never awaits. :meth:`~runtime.Connection.send_nowait` encodes the message, appends it to
the queue and wakes the writer; the queue is bounded (:attr:`~runtime.Connection.max_outgoing`
bytes, queued plus being written) and a peer that does not read gets
:class:`SendBufferFull`. Once the session's version allows bundles, messages are queued
as bundle items, each encoded alone (so that a bad one fails its sender), and bundled into
frames when written.

The **writer** task waits until frames are queued, takes *all* of them and writes them
with one ``send_all`` (on a WebSocket: one binary message per frame), so that many small
messages cost one system call; :meth:`~runtime.Connection.flush` writes them at once
instead when the transport takes them without waiting (plain TCP).

The peer's frame limit (what its Hello or Welcome announced) bounds what the application
sends: a message over it raises :class:`MessageTooLarge` to its sender. Control messages
(Ping, Pong, Bye, Error: what the connection itself must be able to say) are queued past
that check and never raise because of it; one that does not fit the limit -- only a peer
announcing an absurdly small limit makes that happen -- goes alone, in a frame of its own,
over the limit (the peer then refuses it as ``frame_too_large`` and the connection ends,
the peer's own answer to its own limit). Writing never raises for a size.

A failure of ours while writing (an exception from the wire that is not a lost transport)
ends this connection only: see "Containment" in :mod:`runtime._connection`.

**The write deadline**: the bound on the queue limits how much a peer that does not read
can hold, not for how long. With a finite :attr:`~runtime.Connection.write_timeout`, a
watch task closes the connection as a slow consumer once a write has waited that long with
no byte taken by the peer. Progress is the end of a write, or what the peer's TCP
acknowledged (:meth:`Wire.bytes_acked`, Linux): a peer that reads, however slowly, and a
large write over a slow link that moves are never cut. The watch task sleeps while
nothing is being written (the writer wakes it when a write begins: no timer runs on an idle
connection), then reads that count four times per ``write_timeout``, so it sees progress
late, never early: a peer is cut exactly ``write_timeout`` after a write began if it took
nothing of it, else between ``write_timeout`` and 1.25 times that after it last took a
byte. A transport that cannot say what its peer acknowledged (a memory stream) shows
progress only when a write ends. The connection is then cut without a word: the write it stopped
may end in the middle of a frame, so no Error can follow it (the peer was not reading it
anyway).

**The budget**: the deadline bounds for how long, not how much at once: a thousand peers
that stop reading together could each hold ``max_outgoing`` until then. The connections
of one server share an :class:`OutgoingBudget` (``serve(max_outgoing_total=...)``): what
they have queued, in all, stays under its limit. A connection that would go over it makes
room by cutting as slow consumers, in the same way, the connections that hold the most
(never itself); when that is not enough, it gets :class:`SendBufferFull`.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterable
from typing import Any

import attrs
import trio

import protocol
from protocol import Bye, Welcome

from ._transport_errors import ConnectionClosed, MessageTooLarge, SendBufferFull
from ._wire import Wire

_HEADER_SIZE = protocol.HEADER_SIZE


def _encode(message: protocol.Message) -> bytes:
    """A message alone in a frame: before bundling, so for a peer of protocol version 1
    (or a handshake), whose payloads go plain (see :mod:`protocol._payload`)."""
    return protocol.encode(message, plain_payloads=True)


_encode_item = protocol.encode_item
_encode_array = protocol.encode_array
_message_of = protocol.message_of
_BYE_KIND = Bye.KIND
_BUNDLE_OVERHEAD = protocol.BUNDLE_OVERHEAD
_LOST = (trio.BrokenResourceError, trio.ClosedResourceError)


@attrs.define(eq=False)
class OutgoingBudget:
    """A bound on the bytes queued, in all, by the connections that share it (a server's).

    Each connection counts in :attr:`used` what it queues (what is being written included)
    and takes out what is written or dropped, and :meth:`make_room` before going over
    :attr:`limit` (see the module docstring). By default (a connection's own) there is no
    limit. (A plain int, no converter: :attr:`used` changes once per message queued.)
    """

    limit: int = sys.maxsize
    used: int = attrs.field(init=False, default=0)
    _members: set[Outgoing] = attrs.field(init=False, factory=set, repr=False)

    @classmethod
    def of(cls, limit: float) -> OutgoingBudget:
        """A budget of ``limit`` bytes (``math.inf``: no limit)."""
        return cls(sys.maxsize if limit == math.inf else int(limit))

    def join(self, member: Outgoing) -> None:
        """``member`` runs: it may be cut to make room for others."""
        self._members.add(member)

    def leave(self, member: Outgoing) -> None:
        """``member`` has ended: what it still counts (queued, unwritten) goes."""
        self._members.discard(member)
        self.used -= member._drop_queue()

    def charge(self, size: int, member: Outgoing) -> None:
        """Count ``size`` more bytes queued by ``member``, making room first if need be.

        Raises:
          SendBufferFull: as :meth:`make_room`.
        """
        if self.used + size > self.limit:
            self.make_room(size, member)
        self.used += size

    def make_room(self, size: int, requester: Outgoing) -> None:
        """Cut the members that hold the most, other than ``requester``, until ``size``
        more bytes fit under the limit.

        Raises:
          SendBufferFull: even cutting every other member would not make room (then
            none is cut).
        """
        if _held(requester) + size > self.limit:
            raise SendBufferFull(self.limit)
        while self.used + size > self.limit:
            victim = max(self._members - {requester}, key=_held, default=None)
            if victim is None or not _held(victim):  # (bytes of no member: not ours to cut)
                raise SendBufferFull(self.limit)
            victim._over_budget(_held(victim), self.limit)


def _held(member: Outgoing) -> int:
    return member._queued_bytes + member._inflight_bytes


class Outgoing:
    """The sending half of :class:`~runtime.Connection` (see this module's docstring).

    Holds no state of its own (``__slots__ = ()``: the connection's attrs fields, in its
    slots, are the state, listed below for reference); its methods are the connection's,
    and a lost transport goes to the connection's ``_request_close``, a failure of ours to
    its ``_internal_failure``.
    """

    __slots__ = ()

    # The connection's state this half reads and writes (see Connection for each one).
    _wire: Wire
    session: protocol.Session
    peer: str
    closed: bool
    max_frame_size: int
    max_outgoing: int
    send_timeout: float
    write_timeout: float
    flush_every: int
    _send_limit: int
    _pending: list[bytes]
    _bundling: bool
    _items: list[bytes]
    _try_send: Any
    _send_blocked: bool
    _queued_bytes: int
    _inflight_bytes: int
    _budget: OutgoingBudget
    _write_began: float
    _watch_idle: bool
    _watch_lot: trio.lowlevel.ParkingLot
    _writer_lot: trio.lowlevel.ParkingLot
    _space_lot: trio.lowlevel.ParkingLot
    _close_info: tuple[str, str | None, bool] | None
    _peer_open: bool
    _bye_sent: bool
    _writer_done: trio.Event

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
        self._enqueue(self._item(message) if bundling else self._frame(message), bundling)
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
        self._enqueue(self._fit(_encode_array(item)), True)
        if item[0] == _BYE_KIND:
            self._bye_sent = True

    def _enqueue(self, data: bytes, bundled: bool) -> None:
        """Queue encoded bytes (a bundle item, or a whole frame) within the bound."""
        size = len(data)
        queued = self._queued_bytes
        used = queued + self._inflight_bytes  # (self._has_room, inline: once per message)
        if used and used + size > self.max_outgoing:
            raise SendBufferFull(self.max_outgoing)
        budget = self._budget  # (budget.charge, inline: once per message)
        if budget.used + size > budget.limit:
            budget.make_room(size, self)
        budget.used += size
        (self._items if bundled else self._pending).append(data)
        self._queued_bytes = queued + size

    def flush(self) -> None:
        """Write what is queued: at once, when the transport takes it all without waiting
        (plain TCP); the writer task writes the rest. Never waits."""
        if not (self._pending or self._items):
            return
        try_send = self._try_send
        # (not again after a partial write until the writer has taken the rest: each try
        # would join the whole backlog again, quadratic in a peer that does not read)
        if try_send is not None and not self._inflight_bytes and not self.closed and not self._send_blocked:
            batch = self._take_batch()
            data = batch[0] if len(batch) == 1 else b"".join(batch)
            try:
                sent = try_send(data)
            except _LOST as exc:
                self._request_close(f"connection to {self.peer} lost: {exc!r}", flush=False)
                return
            except Exception as exc:  # ours, not the peer's: this connection ends, not the caller
                self._budget.used -= self._queued_bytes
                self._queued_bytes = 0  # (what was taken is dropped)
                self._internal_failure(exc, "writing to")  # (the writer sends the Error)
                return
            self.session.sent(trio.current_time())
            if sent == len(data):
                self._budget.used -= self._queued_bytes
                self._queued_bytes = 0
                if self._space_lot:
                    self._space_lot.unpark_all()
                return
            rest = data[sent:]
            self._send_blocked = True  # the transport is full: the writer waits for room
            self._pending.insert(0, rest)  # before anything queued since (nothing yet)
            self._budget.used += len(rest) - self._queued_bytes  # (in frames now, not items)
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
            try:
                bundles = protocol.bundle_frames(items, self._send_limit)
            except ValueError:  # a control message over the peer's limit (see the module doc)
                bundles = self._bundle_oversize(items)
            batch = batch + bundles if batch else bundles
        return batch

    def _bundle_oversize(self, items: list[bytes]) -> list[bytes]:
        """:func:`protocol.bundle_frames` for items some of which do not fit the peer's
        limit: those go alone, each in a frame of its own; the rest as usual, in order."""
        limit = self._send_limit
        frames: list[bytes] = []
        run: list[bytes] = []
        for item in items:
            alone = len(item) + _BUNDLE_OVERHEAD
            if alone <= limit:
                run.append(item)
                continue
            if run:
                frames += protocol.bundle_frames(run, limit)
                run = []
            frames += protocol.bundle_frames([item], alone)
        if run:
            frames += protocol.bundle_frames(run, limit)
        return frames

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
        if not self._has_room(size):
            raise SendBufferFull(self.max_outgoing)
        self._budget.charge(size, self)
        if bundling:
            self._items += frames
        else:
            self._pending += frames
        self._queued_bytes += size
        if any(type(m) is Bye for m in messages):
            self._bye_sent = True
        if self._writer_lot:
            self._writer_lot.unpark_all()

    async def send(self, message: protocol.Message, *, timeout: float | None = None) -> None:
        """Queue ``message``, waiting while the outgoing buffer is over its bound.

        A message larger than the whole buffer is queued once the buffer is empty.

        Args:
          timeout: seconds to wait for room; None: :attr:`send_timeout`; ``math.inf``:
            as long as it takes (until the connection closes, or the caller's own
            cancel scope ends the wait).

        Raises:
          SendBufferFull: no room came within the timeout.
          ConnectionClosed: the connection is closing or closed.
          MessageTooLarge: the message encodes to a frame larger than the peer accepts
            (at once, without waiting).
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        bundling = self._bundling
        frame = self._item(message) if bundling else self._frame(message)
        encoded_for = self._bundling  # (a Welcome just turned bundling on: it is a frame)
        size = len(frame)
        waited = False
        if not self._has_room(size):
            waited = True
            with trio.move_on_after(self.send_timeout if timeout is None else timeout) as waiting:
                while not self._has_room(size):
                    await self._space_lot.park()
                    self._check_open()
            if waiting.cancelled_caught:
                raise SendBufferFull(self.max_outgoing)
        if encoded_for != self._bundling:  # (the handshake ended while this one waited)
            bundling = self._bundling
            frame = self._item(message)
            size = len(frame)
        self._budget.charge(size, self)
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
        return self._fit(_encode_item(message))

    def _fit(self, item: bytes) -> bytes:
        """``item`` (an encoded bundle item), if a bundle of it fits the peer's limit."""
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

    def _drop_queue(self) -> int:
        """Drop everything queued or being written (the connection is being cut); return
        how many bytes that was (still in the budget: the caller takes them out)."""
        dropped = self._queued_bytes + self._inflight_bytes
        self._pending = []
        self._items = []
        self._queued_bytes = self._inflight_bytes = 0
        return dropped

    def _send_control(self, message: protocol.Message) -> None:
        """Queue a Ping, Pong, Bye or Error past the bound (they are tiny and few) and past
        the peer's frame limit (see the module docstring): never raises for a size."""
        frame = _encode_item(message) if self._bundling else _encode(message)
        (self._items if self._bundling else self._pending).append(frame)
        self._queued_bytes += len(frame)
        self._budget.used += len(frame)
        if self._writer_lot:
            self._writer_lot.unpark_all()

    # ------------------------------------------------------------------ the writer task

    async def _writer(self) -> None:
        wire = self._wire
        session = self.session
        clock = trio.lowlevel.current_clock().current_time  # = trio.current_time, one call deep
        failed = False
        try:
            while True:
                if not self._pending and not self._items:
                    if self.closed:
                        return
                    await self._writer_lot.park()
                    continue
                batch = self._take_batch()
                self._send_blocked = False
                self._inflight_bytes = self._queued_bytes
                self._queued_bytes = 0
                self._write_began = clock()
                if self._watch_idle:  # (it sleeps until a write begins)
                    self._watch_idle = False
                    self._watch_lot.unpark_all()
                try:
                    await wire.send_frames(batch)
                except _LOST as exc:
                    self._request_close(f"connection to {self.peer} lost: {exc!r}", flush=False)
                    return
                except Exception as exc:
                    # Ours, not a lost transport: this connection ends. The batch is
                    # dropped; the Error telling the peer goes next, if the wire still
                    # takes it (a second failure gives up: the close cuts the transport).
                    self._budget.used -= self._inflight_bytes
                    self._inflight_bytes = 0
                    if failed:
                        return
                    failed = True
                    self._internal_failure(exc, "writing to")
                    continue
                self._budget.used -= self._inflight_bytes
                self._inflight_bytes = 0
                session.sent(clock())
                if self._space_lot:
                    self._space_lot.unpark_all()
        finally:
            self._writer_done.set()

    # ------------------------------------------------------------------ the write deadline

    async def _watch_writes(self) -> None:
        """Close the connection as a slow consumer once a write has waited
        :attr:`write_timeout` seconds with no byte taken (see the module docstring)."""
        timeout = self.write_timeout
        bytes_acked = self._wire.bytes_acked
        acked = None
        acked_moved = -math.inf
        while True:
            while not self._inflight_bytes:
                self._watch_idle = True
                await self._watch_lot.park()  # until the writer begins a write
            now = trio.current_time()
            latest = bytes_acked()
            if latest != acked:  # the peer took bytes since the last look: count it now
                acked, acked_moved = latest, now
            waited_since = max(self._write_began, acked_moved)
            if now - waited_since >= timeout:
                self._write_stalled(now - waited_since)
                return
            await trio.sleep_until(min(waited_since + timeout, now + timeout / 4))
