"""The outgoing side of a connection: queueing messages, bundling them, the writer task.

A :class:`SendQueue` owns everything a connection has to send: the queued frames and
bundle items, their bytes, the bounds on them (:attr:`~SendQueue.max_outgoing`, the
shared :class:`OutgoingBudget`, the write deadline), the writer task and the write watch.
:class:`~runtime.Connection` builds one and sends through it (its ``send_nowait``,
``queue_nowait``, ``queue_item`` and ``flush`` *are* the queue's); the queue tells the
connection, through the few methods of :class:`QueueOwner`, when the transport is lost,
when writing failed and when the peer must be cut as a slow consumer. Closing is the
connection's: it tells the queue with :meth:`SendQueue.close`.

Sending never awaits. :meth:`~SendQueue.send_nowait` encodes the message, appends it to
the queue and wakes the writer; the queue is bounded (:attr:`~SendQueue.max_outgoing`
bytes, queued plus being written) and a peer that does not read gets
:class:`SendBufferFull`. Once the session's version allows bundles (:meth:`SendQueue.handshake_done`,
or a Welcome sent), messages are queued as bundle items, each encoded alone (so that a bad
one fails its sender), and bundled into frames when written.

The **writer** task waits until frames are queued, takes *all* of them and writes them
with one ``send_all`` (on a WebSocket: one binary message per frame), so that many small
messages cost one system call; :meth:`~SendQueue.flush` writes them at once instead when
the transport takes them without waiting (plain TCP).

The peer's frame limit (what its Hello or Welcome announced) bounds what the application
sends: a message over it raises :class:`MessageTooLarge` to its sender. Control messages
(Ping, Pong, Bye, Error: what the connection itself must be able to say) are queued past
that check and never raise because of it; one that does not fit the limit -- only a peer
announcing an absurdly small limit makes that happen -- goes alone, in a frame of its own,
over the limit (the peer then refuses it as ``frame_too_large`` and the connection ends,
the peer's own answer to its own limit). Writing never raises for a size.

A failure of ours while writing (an exception from the wire that is not a lost transport)
ends this connection only (:meth:`QueueOwner._internal_failure`): see "Containment" in
:mod:`runtime._connection`.

**The write deadline**: the bound on the queue limits how much a peer that does not read
can hold, not for how long. With a finite :attr:`~SendQueue.write_timeout`, a watch task
(:meth:`SendQueue.watch_writes`) has the connection cut as a slow consumer once a write
has waited that long with no byte taken by the peer. Progress is the end of a write, or what the peer's TCP
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
their queues hold, in all, stays under its limit. A queue that would go over it makes room
by emptying the queues that hold the most (never its own), whose connections are then cut
as slow consumers, in the same way; when that is not enough, its sender gets
:class:`SendBufferFull`.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterable
from typing import Any, Protocol

import attrs
import trio

import protocol
from protocol import Bye, Welcome

from ._transport_errors import ConnectionClosed, MessageTooLarge, SendBufferFull
from ._wire import Wire

#: Default bound of the outgoing buffer, in bytes (queued plus being written).
DEFAULT_MAX_OUTGOING = 8 * 2**20
#: Default number of messages queued by :meth:`SendQueue.send_nowait` after which they
#: are written at once instead of when the writer task next runs (so that a peer starts
#: on the first of a long run of messages while the rest are still being made).
DEFAULT_FLUSH_EVERY = 16
#: Default time :meth:`SendQueue.send` waits for room in the outgoing buffer.
DEFAULT_SEND_TIMEOUT = 10.0
#: Default bound of the bytes queued by all the connections of one server, in all (see
#: :func:`runtime.serve`; a Connection's own default is no bound).
DEFAULT_MAX_OUTGOING_TOTAL = 2**30

_HEADER_SIZE = protocol.HEADER_SIZE


def check_write_timeout(seconds: float) -> None:
    """Raise ValueError unless ``seconds`` is a write timeout (positive; ``math.inf``: none)."""
    if not seconds > 0:
        raise ValueError(f"write_timeout must be positive (math.inf: none), got {seconds!r}")


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


class QueueOwner(Protocol):
    """What a :class:`SendQueue` tells the connection it serves (:class:`runtime.Connection`).

    The queue calls these from its own methods and tasks, never while the owner is in the
    middle of one of its own calls into the queue (except :meth:`SendQueue.close` and
    :meth:`SendQueue.drop`, which call none of them).
    """

    def _transport_lost(self, exc: BaseException) -> None:
        """The transport broke while writing (``exc``): the connection ends, unflushed."""

    def _internal_failure(self, exc: Exception, doing: str) -> None:
        """Writing raised ``exc``, a failure of ours (``doing`` is ``"writing to"``): the
        connection ends (see "Containment" in :mod:`runtime._connection`)."""

    def _write_stalled(self, seconds: float, held: int) -> None:
        """The peer has taken no byte of the write under way for ``seconds`` (at least
        :attr:`SendQueue.write_timeout`), while the queue holds ``held`` bytes for it."""

    def _over_budget(self, held: int, limit: int) -> None:
        """The queue held the most of its full :class:`OutgoingBudget` (``limit`` bytes):
        its ``held`` bytes have been dropped to make room for the other members."""


@attrs.define(eq=False)
class OutgoingBudget:
    """A bound on the bytes queued, in all, by the send queues that share it (a server's).

    Each :class:`SendQueue` counts in :attr:`used` what it queues (what is being written
    included) and takes out what is written or dropped, and :meth:`make_room` before going
    over :attr:`limit` (see the module docstring). By default (a connection's own) there is
    no limit. (A plain int, no converter: :attr:`used` changes once per message queued.)
    """

    limit: int = sys.maxsize
    used: int = attrs.field(init=False, default=0)
    _members: set[SendQueue] = attrs.field(init=False, factory=set, repr=False)

    @classmethod
    def of(cls, limit: float) -> OutgoingBudget:
        """A budget of ``limit`` bytes (``math.inf``: no limit)."""
        return cls(sys.maxsize if limit == math.inf else int(limit))

    def join(self, member: SendQueue) -> None:
        """``member`` runs: it may be emptied to make room for others."""
        self._members.add(member)

    def leave(self, member: SendQueue) -> None:
        """``member`` has ended (it has dropped what it held: :meth:`SendQueue.leave_budget`)."""
        self._members.discard(member)

    def make_room(self, size: int, requester: SendQueue) -> None:
        """Empty the members that hold the most, other than ``requester``, until ``size``
        more bytes fit under the limit (each one's connection is then cut: see
        :meth:`QueueOwner._over_budget`).

        Raises:
          SendBufferFull: even emptying every other member would not make room (then
            none is emptied).
        """
        if requester.held + size > self.limit:
            raise SendBufferFull(self.limit)
        while self.used + size > self.limit:
            victim = max(self._members - {requester}, key=_held, default=None)
            if victim is None or not victim.held:  # (bytes of no member: not ours to cut)
                raise SendBufferFull(self.limit)
            victim.give_up_room(self.limit)


def _held(member: SendQueue) -> int:
    return member.held


@attrs.define(eq=False)
class SendQueue:
    """The outgoing side of one connection (see this module's docstring).

    Built by :class:`~runtime.Connection` for itself (tests build one on a fake wire);
    :attr:`~runtime.Connection.send_nowait` and the other sending methods of a connection
    are this queue's. What it needs from the connection is in :class:`QueueOwner`.

    Attributes:
      max_outgoing: bound of the queue in bytes (queued plus being written); a message
        that would go over it raises :class:`SendBufferFull` (one alone in an empty queue
        never does).
      send_timeout: seconds :meth:`send` waits for room by default.
      write_timeout: seconds a write may wait with no byte taken by the peer before the
        owner is told (:meth:`QueueOwner._write_stalled`); ``math.inf``: never.
      flush_every: messages queued by :meth:`send_nowait` that are written at once.
      receive_limit: the largest frame the connection accepts, told to the peer in a
        Welcome sent without ``max_frame``.
      budget: the :class:`OutgoingBudget` this queue's bytes count in.
      send_limit: the peer's frame limit: what is sent must fit it (:class:`MessageTooLarge`).
      bundling: messages are queued as bundle items (the handshake allowed bundles).
      peer_open: the peer's session is open (a Welcome was sent or received): it may be
        sent a Ping or a Bye.
      bye_sent: a Bye was queued.
      writer_done: set when :meth:`run_writer` has ended.
    """

    _wire: Wire
    _session: protocol.Session
    _owner: QueueOwner = attrs.field(repr=False)
    max_outgoing: int = DEFAULT_MAX_OUTGOING
    send_timeout: float = DEFAULT_SEND_TIMEOUT
    write_timeout: float = attrs.field(default=math.inf)
    flush_every: int = DEFAULT_FLUSH_EVERY
    receive_limit: int = protocol.DEFAULT_MAX_FRAME_SIZE
    budget: OutgoingBudget = attrs.field(factory=OutgoingBudget)
    send_limit: int = attrs.field(init=False)
    bundling: bool = attrs.field(init=False, default=False)
    peer_open: bool = attrs.field(init=False, default=False)
    bye_sent: bool = attrs.field(init=False, default=False)
    writer_done: trio.Event = attrs.field(init=False, factory=trio.Event, repr=False)
    # Frames waiting for the writer (before bundling, or bundles cut by a partial write),
    # and bundle items waiting for it, each encoded alone (so that a bad one fails its
    # sender), bundled into frames when written; their bytes, and the bytes being written.
    _pending: list[bytes] = attrs.field(init=False, factory=list, repr=False)
    _items: list[bytes] = attrs.field(init=False, factory=list, repr=False)
    _queued_bytes: int = attrs.field(init=False, default=0)
    _inflight_bytes: int = attrs.field(init=False, default=0)
    # The wire's way to write without waiting, if it has one (see :meth:`flush`).
    _try_send: Any = attrs.field(init=False, default=None, repr=False)
    # A write without waiting stopped part way: flush leaves the rest to the writer.
    _send_blocked: bool = attrs.field(init=False, default=False)
    # Why the connection closed (reason, code, clean), once it did: sending then raises.
    _close_info: tuple[str, str | None, bool] | None = attrs.field(init=False, default=None)
    # When the writer's write under way began; the write watch, asleep until one begins.
    _write_began: float = attrs.field(init=False, default=0.0, repr=False)
    _watch_idle: bool = attrs.field(init=False, default=False, repr=False)
    _watch_lot: trio.lowlevel.ParkingLot = attrs.field(
        init=False, factory=trio.lowlevel.ParkingLot, repr=False
    )
    _writer_lot: trio.lowlevel.ParkingLot = attrs.field(
        init=False, factory=trio.lowlevel.ParkingLot, repr=False
    )
    _space_lot: trio.lowlevel.ParkingLot = attrs.field(
        init=False, factory=trio.lowlevel.ParkingLot, repr=False
    )

    def __attrs_post_init__(self) -> None:
        check_write_timeout(self.write_timeout)
        # What the peer accepts, until its Hello or Welcome says: the protocol's default,
        # or our own limit if lower (a peer set up like this side).
        self.send_limit = min(self.receive_limit, protocol.DEFAULT_MAX_FRAME_SIZE)
        self._try_send = getattr(self._wire, "try_send", None)

    # ------------------------------------------------------------------ state

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called: sending raises :class:`ConnectionClosed`."""
        return self._close_info is not None

    @property
    def queued_bytes(self) -> int:
        """Bytes queued and not yet taken by the writer (or a flush)."""
        return self._queued_bytes

    @property
    def inflight_bytes(self) -> int:
        """Bytes of the write under way."""
        return self._inflight_bytes

    @property
    def held(self) -> int:
        """Bytes this queue counts in its budget: queued plus being written."""
        return self._queued_bytes + self._inflight_bytes

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
        bundling = self.bundling
        self._enqueue(self._item(message) if bundling else self._frame(message), bundling)
        if type(message) is Bye:
            self.bye_sent = True

    def queue_item(self, item: list[Any]) -> None:
        """Queue a message given as its bundle item (``Result.item(...)``, say) without
        building the message: for a sender of many messages; then :meth:`flush`.

        To a peer that does not take bundles (version 1), the item is turned into its
        message and sent as one, validated as if it had been received.

        Raises:
          The same as :meth:`send_nowait`; ValueError (a value has no CBOR encoding) or a
          ProtocolError (a bad item, version 1 peers only).
        """
        if not self.bundling:
            self.queue_nowait(_message_of(item))
            return
        if self._close_info is not None:
            self._check_open()
        self._enqueue(self._fit(_encode_array(item)), True)
        if item[0] == _BYE_KIND:
            self.bye_sent = True

    def _enqueue(self, data: bytes, bundled: bool) -> None:
        """Queue encoded bytes (a bundle item, or a whole frame) within the bound."""
        size = len(data)
        queued = self._queued_bytes
        used = queued + self._inflight_bytes  # (self.has_room, inline: once per message)
        if used and used + size > self.max_outgoing:
            raise SendBufferFull(self.max_outgoing)
        budget = self.budget  # (self._charge, inline: once per message)
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
        if (
            try_send is not None
            and not self._inflight_bytes
            and self._close_info is None
            and not self._send_blocked
        ):
            batch = self._take_batch()
            data = batch[0] if len(batch) == 1 else b"".join(batch)
            try:
                sent = try_send(data)
            except _LOST as exc:
                self._owner._transport_lost(exc)
                return
            except Exception as exc:  # ours, not the peer's: this connection ends, not the caller
                self.budget.used -= self._queued_bytes
                self._queued_bytes = 0  # (what was taken is dropped)
                self._owner._internal_failure(exc, "writing to")  # (the writer sends the Error)
                return
            self._session.sent(trio.current_time())
            if sent == len(data):
                self.budget.used -= self._queued_bytes
                self._queued_bytes = 0
                if self._space_lot:
                    self._space_lot.unpark_all()
                return
            rest = data[sent:]
            self._send_blocked = True  # the transport is full: the writer waits for room
            self._pending.insert(0, rest)  # before anything queued since (nothing yet)
            self.budget.used += len(rest) - self._queued_bytes  # (in frames now, not items)
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
                bundles = protocol.bundle_frames(items, self.send_limit)
            except ValueError:  # a control message over the peer's limit (see the module doc)
                bundles = self._bundle_oversize(items)
            batch = batch + bundles if batch else bundles
        return batch

    def _bundle_oversize(self, items: list[bytes]) -> list[bytes]:
        """:func:`protocol.bundle_frames` for items some of which do not fit the peer's
        limit: those go alone, each in a frame of its own; the rest as usual, in order."""
        limit = self.send_limit
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
        bundling = self.bundling
        encode = self._item if bundling else self._frame
        frames = [encode(m) for m in messages]
        if not frames:
            return
        size = sum(map(len, frames))
        if not self.has_room(size):
            raise SendBufferFull(self.max_outgoing)
        self._charge(size)
        if bundling:
            self._items += frames
        else:
            self._pending += frames
        self._queued_bytes += size
        if any(type(m) is Bye for m in messages):
            self.bye_sent = True
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
        bundling = self.bundling
        frame = self._item(message) if bundling else self._frame(message)
        encoded_for = self.bundling  # (a Welcome just turned bundling on: it is a frame)
        size = len(frame)
        waited = False
        if not self.has_room(size):
            waited = True
            with trio.move_on_after(self.send_timeout if timeout is None else timeout) as waiting:
                while not self.has_room(size):
                    await self._space_lot.park()
                    self._check_open()
            if waiting.cancelled_caught:
                raise SendBufferFull(self.max_outgoing)
        if encoded_for != self.bundling:  # (the handshake ended while this one waited)
            bundling = self.bundling
            frame = self._item(message)
            size = len(frame)
        self._charge(size)
        (self._items if bundling else self._pending).append(frame)
        self._queued_bytes += size
        if type(message) is Bye:
            self.bye_sent = True
        if self._writer_lot:
            self._writer_lot.unpark_all()
        if not waited:  # a schedule point either way, as trio's own send() does
            await trio.lowlevel.cancel_shielded_checkpoint()

    def _frame(self, message: protocol.Message) -> bytes:
        if self._close_info is not None:
            self._check_open()
        if type(message) is Welcome:
            return self._welcome_frame(message)
        frame = _encode(message)
        if len(frame) - _HEADER_SIZE > self.send_limit:
            raise MessageTooLarge(len(frame) - _HEADER_SIZE, self.send_limit)
        return frame

    def _welcome_frame(self, welcome: Welcome) -> bytes:
        """Server side: the Welcome ends the handshake (:meth:`handshake_done`): what follows
        it may be bundled, if the version it names allows, up to the frame size the
        client's Hello named. One without ``max_frame`` names :attr:`receive_limit`."""
        if welcome.max_frame is None:
            welcome = attrs.evolve(welcome, max_frame=self.receive_limit)
        frame = _encode(welcome)
        if len(frame) - _HEADER_SIZE > self.send_limit:
            raise MessageTooLarge(len(frame) - _HEADER_SIZE, self.send_limit)
        self.handshake_done(welcome.version, self._session.peer_max_frame)
        return frame

    def _item(self, message: protocol.Message) -> bytes:
        if self._close_info is not None:
            self._check_open()
        return self._fit(_encode_item(message))

    def _fit(self, item: bytes) -> bytes:
        """``item`` (an encoded bundle item), if a bundle of it fits the peer's limit."""
        if len(item) + _BUNDLE_OVERHEAD > self.send_limit:
            raise MessageTooLarge(len(item) + _BUNDLE_OVERHEAD, self.send_limit)
        return item

    def _charge(self, size: int) -> None:
        """Count ``size`` more bytes in the budget, making room in it first if need be.

        Raises:
          SendBufferFull: as :meth:`OutgoingBudget.make_room`.
        """
        budget = self.budget
        if budget.used + size > budget.limit:
            budget.make_room(size, self)
        budget.used += size

    def _check_open(self) -> None:
        if self._close_info is not None:
            reason, code, clean = self._close_info
            raise ConnectionClosed(reason, code=code, clean=clean)

    def has_room(self, size: int) -> bool:
        """Whether ``size`` more bytes fit :attr:`max_outgoing` (always, in an empty queue)."""
        used = self._queued_bytes + self._inflight_bytes
        return used == 0 or used + size <= self.max_outgoing

    def send_control(self, message: protocol.Message) -> None:
        """Queue a Ping, Pong, Bye or Error past the bound (they are tiny and few), past the
        peer's frame limit (see the module docstring) and after :meth:`close` (a closing
        connection's last words): never raises for a size or a close."""
        frame = _encode_item(message) if self.bundling else _encode(message)
        (self._items if self.bundling else self._pending).append(frame)
        self._queued_bytes += len(frame)
        self.budget.used += len(frame)
        if type(message) is Bye:
            self.bye_sent = True
        if self._writer_lot:
            self._writer_lot.unpark_all()

    # ------------------------------------------------------------------ the connection's calls

    def handshake_done(self, version: int, peer_max_frame: int | None) -> None:
        """The Welcome has passed (sent, on the server side; received, on a client): the
        peer's session is open; bundle from now on if ``version`` allows; frames up to
        ``peer_max_frame`` (None: the limit stays as it was)."""
        self.peer_open = True
        self.bundling = version >= protocol.BUNDLE_VERSION
        if peer_max_frame is not None:
            self.send_limit = peer_max_frame

    def close(self, reason: str, code: str | None, clean: bool) -> None:
        """The connection is closing: from now on sending raises :class:`ConnectionClosed`
        with these (a second call changes nothing), except :meth:`send_control`; the
        writer writes what is queued, then ends; a :meth:`send` waiting for room wakes."""
        if self._close_info is None:
            self._close_info = (reason, code, clean)
        self._writer_lot.unpark_all()
        self._space_lot.unpark_all()

    def drop(self) -> None:
        """Drop everything queued or being written, taking it out of the budget (the
        connection is being cut: a write under way may stop in the middle of a frame)."""
        self.budget.used -= self._queued_bytes + self._inflight_bytes
        self._pending = []
        self._items = []
        self._queued_bytes = self._inflight_bytes = 0

    def give_up_room(self, limit: int) -> None:
        """The budget (of ``limit`` bytes) is full and this queue holds the most of it: drop
        what it holds and tell the owner (:meth:`QueueOwner._over_budget`)."""
        held = self.held
        self.drop()
        self._owner._over_budget(held, limit)

    def join_budget(self) -> None:
        """The connection runs: count in the budget as a member (which others may empty)."""
        self.budget.join(self)

    def leave_budget(self) -> None:
        """The connection has ended: drop what is still queued and leave the budget."""
        self.drop()
        self.budget.leave(self)

    # ------------------------------------------------------------------ the writer task

    async def run_writer(self) -> None:
        """The writer task: write what is queued, all of it at once, until closed and
        drained (or the transport is lost, or writing fails twice); then set
        :attr:`writer_done`. Lets no :class:`Exception` of the wire out (see
        :class:`QueueOwner`)."""
        wire = self._wire
        session = self._session
        clock = trio.lowlevel.current_clock().current_time  # = trio.current_time, one call deep
        failed = False
        try:
            while True:
                if not self._pending and not self._items:
                    if self._close_info is not None:
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
                    self._owner._transport_lost(exc)
                    return
                except Exception as exc:
                    # Ours, not a lost transport: this connection ends. The batch is
                    # dropped; the Error telling the peer goes next, if the wire still
                    # takes it (a second failure gives up: the close cuts the transport).
                    self.budget.used -= self._inflight_bytes
                    self._inflight_bytes = 0
                    if failed:
                        return
                    failed = True
                    self._owner._internal_failure(exc, "writing to")
                    continue
                self.budget.used -= self._inflight_bytes
                self._inflight_bytes = 0
                session.sent(clock())
                if self._space_lot:
                    self._space_lot.unpark_all()
        finally:
            self.writer_done.set()

    # ------------------------------------------------------------------ the write deadline

    async def watch_writes(self) -> None:
        """The write watch (with a finite :attr:`write_timeout`): tell the owner once a
        write has waited :attr:`write_timeout` seconds with no byte taken
        (:meth:`QueueOwner._write_stalled`, see the module docstring), then end."""
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
                self._owner._write_stalled(now - waited_since, self.held)
                return
            await trio.sleep_until(min(waited_since + timeout, now + timeout / 4))
