"""The reader task of a connection: bytes in, checked messages out to the application.

It reads a chunk (up to 64 KiB, or one WebSocket message), decodes every frame it
completes, checks each message with the session, answers Ping at once, and hands the rest
to :meth:`Connection.receive_some` as one batch (or to the :meth:`Connection.dispatch_to`
handler). Bad input or a protocol violation: the messages before it are delivered, the
peer is sent an Error and the connection closes. When the application does not keep up,
the reader stops (the inbox is bounded). An exception of ours -- the handler's, or a bug
here -- ends this connection as an internal failure (see :mod:`runtime._connection`).

Fairness: one frame may hold thousands of messages (a bundle), and what one message costs
the handler is the application's business. A batch is handed to a ``dispatch_to``
handler in slices; once a batch has taken :data:`FAIR_TURN` seconds of the process, the
reader lets every other task run (a checkpoint) before its next slice. Slices double while
quick, up to :data:`FAIR_SLICE`, and shrink in proportion when one takes more than a turn. A batch's first slice
is small (:data:`FAIR_FIRST` messages) until the connection has earned trust: a new
connection's first :data:`FAIR_TRUST` batches of more than one message, and again after any
slow slice, when the batches it must pass before its next full first slice double. So a peer
whose messages cost much (a Publish fanned out to thousands of queue groups) delays the
others by about one turn, not by its whole batch; cheap batches cannot buy it more than one
long slice, each time dearer; and a peer whose messages are cheap has its batches handed over
whole (the process is one thread: while a handler runs, every other connection
waits).

The reader uses the connection through its public attributes (``closed``, ``peer``,
``session``, ``on_hello``, ``foreign_answer``, ``max_frame_size``, ``decode_payloads``) and
the package-internal methods it offers its tasks (see :class:`runtime.Connection`,
"the connection's tasks": ``_deliver``, ``_dispatch_handler``, ``_wait_for_inbox_room``,
``_answer_ping``, and for closing ``_request_close``, ``_transport_lost``, ``_fail``,
``_internal_failure``); it owns the frame decoder.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, cast

import trio

import protocol
from protocol import Bye, Error, ErrorCode, Ping, Pong, State

from ._transport_errors import ConnectionClosed
from ._wire import Wire

if TYPE_CHECKING:
    from ._connection import Connection

_LOST = (trio.BrokenResourceError, trio.ClosedResourceError)
#: Bytes kept of a server's answer that is not this protocol (see ``foreign_answer``).
FOREIGN_ANSWER_SIZE = 256
#: Seconds of the process one batch may take before the reader lets others run.
FAIR_TURN = 0.005
#: Messages handed to a ``dispatch_to`` handler at once, at most (fewer while slow).
FAIR_SLICE = 64
#: The first slice of a batch, at most, while the connection is not trusted (see the module
#: docstring): what its messages cost is seen before many of them have run.
FAIR_FIRST = 8
#: Batches (of more than one message) a new connection passes quick before its batches are
#: handed over whole; doubled after each slow slice.
FAIR_TRUST = 4
#: A slice longer than a whole turn is slow: the next ones shrink in proportion (to what
#: would take ``_SLOW_SLICE``); one quicker than ``_QUICK_SLICE`` lets the next one double.
_SLOW_SLICE = FAIR_TURN / 4
_QUICK_SLICE = FAIR_TURN / 32
_MAX_TRUST_AFTER = 1 << 30

_perf_counter = time.perf_counter


class Fairness:
    """One connection's share of the reader's turns (see the module docstring): the size of
    its slices, and the quick batches it passed since its last slow slice against those it
    takes to be trusted with a full first slice."""

    __slots__ = ("quick", "size", "trust_after")

    def __init__(self) -> None:
        self.size = FAIR_SLICE
        self.quick = 0
        self.trust_after = FAIR_TRUST

    def first_slice(self) -> int:
        """The first slice of the next batch."""
        return self.size if self.quick >= self.trust_after else min(self.size, FAIR_FIRST)

    def passed(self, size: int, slow: bool) -> None:
        """A batch was handed over: it ended with slices of ``size``, ``slow`` or not."""
        self.size = size
        if slow:
            self.quick = 0
            self.trust_after = min(2 * self.trust_after, _MAX_TRUST_AFTER)
        else:
            self.quick += 1


async def _dispatch_fairly(
    conn: Connection,
    handler: Callable[[list[protocol.Message]], None],
    out: list[protocol.Message],
    size: int,
) -> tuple[int, bool]:
    """``handler(out)`` in slices, the first of ``size`` messages, with a checkpoint whenever
    the batch has taken :data:`FAIR_TURN` seconds (see the module docstring). Returns the
    slice size it ended with and whether a slice was slow. Stops early if the connection
    closes meanwhile (what it had not handled is dropped with the connection)."""
    start = _perf_counter()
    position = 0
    count = len(out)
    slow = False
    while position < count:
        began = _perf_counter()
        handler(out if not position and size >= count else out[position : position + size])
        position += size
        now = _perf_counter()
        took = now - began
        if took > FAIR_TURN:  # (a full slice of cheap messages takes about a millisecond)
            size = max(1, int(size * _SLOW_SLICE / took))
            slow = True
        elif took < _QUICK_SLICE and size < FAIR_SLICE:
            size = min(2 * size, FAIR_SLICE)
        if position >= count:
            break
        if now - start > FAIR_TURN:
            await trio.lowlevel.checkpoint()
            if conn.closed:
                break
            start = _perf_counter()
    return size, slow


async def run_reader(conn: Connection, wire: Wire) -> None:
    """The reader task of ``conn``, on its ``wire``: deliver messages until closing, then
    drain until the peer closes.

    Never lets an :class:`Exception` out: whatever ends it ends the connection (a no-op
    once it is closing).
    """
    decoder = protocol.FrameDecoder(
        max_frame_size=conn.max_frame_size, decode_payloads=conn.decode_payloads
    )
    try:
        rest = await _read_messages(conn, wire, decoder)
        if rest is not None:
            await _read_while_closing(wire, decoder, rest)
    except _LOST as exc:
        conn._transport_lost(exc)
    except ConnectionClosed as exc:
        conn._request_close(exc.reason, code=exc.code, clean=exc.clean, flush=False)
    except protocol.ProtocolError as exc:
        conn._fail(exc)
    except Exception as exc:
        conn._internal_failure(exc, "reading from")


async def _read_messages(
    conn: Connection, wire: Wire, decoder: protocol.FrameDecoder
) -> bytes | bytearray | None:
    """Read and deliver until closed.

    Returns None when the wire has ended, else what arrived once closing had begun
    (maybe nothing), for :func:`_read_while_closing`.
    """
    session = conn.session
    receive = session.receive
    whole_frames = wire.whole_frames
    clock = trio.lowlevel.current_clock().current_time  # = trio.current_time, one call deep
    last_error: Error | None = None  # the last message received, when it was an Error
    # Server side: the Hello is still to come (conn.on_hello is told when it has passed).
    awaiting_hello = session.state is State.AWAITING_HELLO
    fairness = Fairness()
    while not conn.closed:
        try:
            data = await wire.receive()
        except _LOST as exc:
            conn._transport_lost(exc)
            return None
        except ConnectionClosed as exc:
            conn._request_close(exc.reason, code=exc.code, clean=exc.clean, flush=False)
            return None
        except protocol.ProtocolError as exc:
            conn._fail(exc)
            return b""
        if conn.closed:
            return data
        if data is None:
            code = None
            if decoder.buffered:
                why = f"{conn.peer} closed the connection in the middle of a frame"
            elif last_error is not None:
                # An Error then the end: the peer closed because of it.
                why = (
                    f"{conn.peer} closed the connection after error"
                    f" {last_error.code}: {last_error.message}"
                )
                code = last_error.code
            else:
                why = f"{conn.peer} closed the connection without Bye"
                if session.state is State.AWAITING_WELCOME:
                    conn.foreign_answer = b""  # (client_handshake says what that means)
            conn._request_close(why, code=code, flush=False)
            return None
        failure: protocol.ProtocolError | None = None
        try:
            messages = decoder.feed(data)
            if whole_frames and (decoder.frames != 1 or decoder.buffered):
                raise protocol.MalformedFrame(
                    "each WebSocket message must hold exactly one whole frame"
                )
        except protocol.ProtocolError as exc:
            messages = exc.messages
            failure = exc
            if not messages and session.state is State.AWAITING_WELCOME:
                # The server's first bytes are not our frames (an HTTP answer, a TLS
                # alert...): kept for client_handshake, which says what answered.
                conn.foreign_answer = bytes(data[:FOREIGN_ANSWER_SIZE])
        now = clock()
        inbox_full = False
        out: list[protocol.Message] = []
        bye = None
        for message in messages:
            try:
                receive(message, now)
            except protocol.StateViolation as exc:
                failure = exc
                break
            kind = type(message)
            if kind is Ping:
                conn._answer_ping(cast(Ping, message))
            elif kind is Bye:
                bye = message
            elif kind is not Pong:
                out.append(message)
        if out:
            last_error = out[-1] if type(out[-1]) is Error else None
            if awaiting_hello and session.state is not State.AWAITING_HELLO:
                awaiting_hello = False
                if conn.on_hello is not None:
                    conn.on_hello()
            handler = conn._dispatch_handler
            if handler is not None:
                try:
                    if len(out) == 1:
                        handler(out)  # (Connection.dispatch_to) one message: no slicing
                    else:
                        fairness.passed(
                            *await _dispatch_fairly(conn, handler, out, fairness.first_slice())
                        )
                except Exception as exc:
                    # Whatever it raises (even a ConnectionClosed or a ProtocolError of
                    # some other connection's) is the application's failure: this
                    # connection ends with an internal error; nothing escapes.
                    conn._internal_failure(exc, "in the dispatch_to handler of")
                    return b""
            else:
                inbox_full = conn._deliver(out, len(data))
        if failure is not None:
            conn._fail(failure)
            return b""
        if session.state is State.CLOSED:
            _peer_ended(conn, bye or (out[-1] if out else None), last_error)
            return b""
        if inbox_full:
            await conn._wait_for_inbox_room()
    return b""


def _peer_ended(conn: Connection, last: protocol.Message | None, error: Error | None) -> None:
    """The peer sent Bye or a closing Error: the session is over.

    A Bye right after an Error (how :meth:`Connection.aclose` closes for a code that does
    not end sessions by itself, such as ``busy``) closes for that Error: not clean, its code.
    """
    if type(last) is Error:
        conn._request_close(f"{conn.peer} sent error {last.code}: {last.message}", code=last.code)
    elif type(last) is Bye and error is not None:
        conn._request_close(
            f"{conn.peer} closed the session after error {error.code}: {error.message}",
            code=error.code,
        )
    elif type(last) is Bye:
        conn._request_close(f"{conn.peer} said Bye: {last.reason}", clean=True)
    else:
        conn._request_close(f"{conn.peer} ended the session")


async def _read_while_closing(
    wire: Wire, decoder: protocol.FrameDecoder, data: bytes | bytearray | None
) -> None:
    """Drop what still arrives until the peer closes its side or says it closes too."""
    while data is not None:
        try:
            messages = decoder.feed(data)
        except protocol.ProtocolError:
            messages = []  # the decoder is spent after bad input: just drain
        for message in messages:
            if type(message) is Bye:
                return  # both sides are closing: nobody needs to wait for the other
            if type(message) is Error and ErrorCode.closes_connection(message.code):
                return
        data = await wire.receive()
