"""The dashboard's WebSocket on the HTTP port: ``/ws``, served by hypercorn, fed by the leader.

A page served by the leader's HTTP server (the dashboard) gets its snapshots over a
WebSocket to the same origin, ``ws://HOST:PORT/ws`` (``wss:`` behind TLS), so that it needs
no other port, no other origin and no listener that ``listen`` does not name. hypercorn
accepts the upgrade (its ASGI ``websocket`` scope) and :class:`FeedSocket` runs the
leader's protocol over it: a :class:`runtime.Connection` on an :class:`AsgiWire` (one
protocol frame per binary message, as on the ``ws://`` listeners), handed to
:meth:`Leader.serve_feed <actors.leader.Leader.serve_feed>`. What the peer may do there is
a *feed*'s: say Hello as a client or an observer (with the token of the leader's users),
then subscribe to ``$sys.dashboard`` only; everything else is answered ``not_permitted``.
The HTTP port thus never does more than HTTP does (read-only or not).

Before the upgrade is accepted it passes the checks of every HTTP request
(:meth:`HttpApp.websocket_refusal <actors.leader._http.HttpApp.websocket_refusal>`: the
path, the ``Host`` on loopback, the ``Origin``: this server's own or an allowed one), then
the leader's admission bounds, as on its listeners: connections in all and per peer
address (``max_connections``, ``max_connections_per_address``), and those not past their
Hello (``max_handshakes``, ``..._per_address``; ``handshake_timeout``). A refused upgrade
is answered in HTTP (403, 404; 503 with ``Retry-After`` when over a bound) with the JSON
error body of the other routes. Accepted, the connection has the leader's heartbeat, its
outgoing bounds (``max_outgoing``, ``write_timeout``, ``max_outgoing_total`` shared by the
feed's connections) and a frame limit of :data:`FEED_MAX_FRAME` bytes from the peer (a
feed's peer sends small messages only; hypercorn closes the WebSocket with 1009 past it).

Resource handling: what the peer sends is taken from hypercorn by a task of its own
(:meth:`AsgiWire.pump`) into a buffer of :data:`FEED_MAX_BUFFERED` bytes at most (more:
the connection is closed as broken); once the connection is over the task goes on
discarding until the peer is gone, so that hypercorn keeps reading (and closes a peer
silent for its read timeout), and the connection's slot is held until then. A peer that
stops reading is cut by the write watch (``write_timeout``); hypercorn writes without a
timeout of its own, so that peer's socket, and its slot, stay until it reads, goes, or
falls silent for hypercorn's read timeout: one peer address holds at most
``max_connections_per_address`` of them.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

import trio

import protocol
from protocol import Error
from runtime import Connection
from runtime._outgoing import OutgoingBudget
from runtime._transports import Admission, _handler_failed, running

if TYPE_CHECKING:
    from ._http import HttpApp, Response

log = logging.getLogger("actors.leader.http")

#: The path of the dashboard's WebSocket on the HTTP server.
FEED_PATH = "/ws"
#: Bytes of a frame a feed's peer may send at most (its Hello, Subscribe...).
FEED_MAX_FRAME = 64 * 1024
#: The largest WebSocket message hypercorn takes from a feed's peer (one frame).
FEED_MAX_MESSAGE = FEED_MAX_FRAME + protocol.HEADER_SIZE
#: Bytes taken from hypercorn and not yet read by the connection, at most.
FEED_MAX_BUFFERED = 4 * FEED_MAX_MESSAGE
#: Seconds a forced close waits to tell the peer (a WebSocket close frame) at most.
FORCED_CLOSE_WAIT = 1.0

Receive = Callable[[], Awaitable[Mapping[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


class AsgiWire:
    """A runtime wire over an ASGI ``websocket`` connection (hypercorn's): one whole
    protocol frame per binary WebSocket message.

    :meth:`pump` must run beside the connection (see the module's text): it takes the
    peer's messages from the server into a buffer of ``max_buffered`` bytes at most, which
    :meth:`receive` reads; more than that unread breaks the wire (the connection closes).
    """

    whole_frames = True

    def __init__(self, receive: Receive, send: Send, *, max_buffered: int) -> None:
        self._receive = receive
        self._send = send
        self._max_buffered = max_buffered
        self._messages: collections.deque[bytes | str] = collections.deque()
        self._buffered = 0
        self._lot = trio.lowlevel.ParkingLot()
        self._overflow: str | None = None
        #: The peer is gone (the server said ``websocket.disconnect``).
        self.disconnected = trio.Event()
        #: Our side is closed, or given up (nothing more is sent or read).
        self.closed = False

    async def pump(self) -> None:
        """Take the peer's messages until it is gone (then return): into the buffer
        while the connection reads them, discarded once it is over."""
        try:
            while True:
                message = await self._receive()
                kind = message.get("type")
                if kind == "websocket.disconnect":
                    return
                if kind != "websocket.receive" or self.closed or self._overflow is not None:
                    continue
                data = message.get("bytes")
                item: bytes | str = data if data is not None else str(message.get("text") or "")
                if self._buffered + len(item) > self._max_buffered:
                    self._overflow = (
                        f"the peer sent over {self._max_buffered} bytes that were not read yet"
                    )
                    self._messages.clear()
                    self._buffered = 0
                else:
                    self._messages.append(item)
                    self._buffered += len(item)
                self._lot.unpark_all()
        finally:
            self.disconnected.set()
            self._lot.unpark_all()

    # ------------------------------------------------------------------ the Wire

    async def receive(self) -> bytes | None:
        """The next frame; None once the peer is gone or our side closed.

        Raises:
          trio.BrokenResourceError: the peer sent more than the buffer holds.
          protocol.MalformedFrame: a text message (frames are binary messages).
        """
        while not self._messages:
            if self._overflow is not None:
                raise trio.BrokenResourceError(self._overflow)
            if self.disconnected.is_set() or self.closed:
                return None
            await self._lot.park()
        await trio.lowlevel.checkpoint()
        item = self._messages.popleft()
        self._buffered -= len(item)
        if isinstance(item, str):
            raise protocol.MalformedFrame(
                "text WebSocket message; frames travel as binary messages"
            )
        return item

    async def send_frames(self, frames: list[bytes]) -> None:
        """Send each frame as one binary message.

        Raises:
          trio.BrokenResourceError: the peer is gone, or our side closed.
        """
        send = self._send
        for frame in frames:
            if self.closed or self.disconnected.is_set():
                raise trio.BrokenResourceError("the WebSocket is closed")
            await send({"type": "websocket.send", "bytes": frame})

    async def aclose(self) -> None:
        """Close our side: a close frame (1000) to a peer still there."""
        if self.closed:
            return
        self.closed = True
        self._lot.unpark_all()
        if not self.disconnected.is_set():
            await self._send({"type": "websocket.close", "code": 1000})

    async def aclose_forcefully(self) -> None:
        """Close our side at once: a close frame (1001) if the server takes it within
        :data:`FORCED_CLOSE_WAIT` (even while cancelled)."""
        if self.closed:
            return
        self.closed = True
        self._lot.unpark_all()
        if not self.disconnected.is_set():
            with trio.move_on_after(FORCED_CLOSE_WAIT, shield=True):
                await self._send({"type": "websocket.close", "code": 1001})

    def bytes_acked(self) -> int | None:
        """None: the server's socket is not ours to ask (a write that takes no byte for
        ``write_timeout`` counts from when it began)."""
        return None


class FeedSocket:
    """``/ws`` on ``app``'s server: each WebSocket upgrade checked, admitted and served
    as a feed connection of its leader (see the module's text)."""

    def __init__(self, app: HttpApp) -> None:
        self.app = app
        leader = app.leader
        self.admission = Admission(
            leader.max_connections,
            leader.max_connections_per_address,
            leader.max_handshakes,
            leader.max_handshakes_per_address,
        )
        self.budget = OutgoingBudget.of(leader.max_outgoing_total)

    async def __call__(self, scope: Mapping[str, Any], receive: Receive, send: Send) -> None:
        """Serve one ASGI ``websocket`` scope until the connection is over."""
        message = await receive()
        if message.get("type") != "websocket.connect":
            return
        app = self.app
        refusal = app.websocket_refusal(scope)
        if refusal is not None:
            await _reject(send, refusal)
            return
        client = scope.get("client")
        address = str(client[0]) if client else "?"
        ticket = self.admission.admit(address)
        if isinstance(ticket, Error):
            await _reject(send, app.busy_response(ticket.message, ticket.retry_after))
            return
        try:
            await send({"type": "websocket.accept"})
            wire = AsgiWire(receive, send, max_buffered=FEED_MAX_BUFFERED)
            leader = app.leader
            host = address if ":" not in address else f"[{address}]"
            conn = Connection(
                wire,
                protocol.Session(side="server", heartbeat=leader.heartbeat),
                f"ws://{host}:{client[1]}" if client else "ws://?",
                "ws",
                max_frame_size=FEED_MAX_FRAME,
                max_outgoing=leader.max_outgoing,
                write_timeout=leader.write_timeout,
                budget=self.budget,
                hello_timeout=leader.config.handshake_timeout,
                on_hello=ticket.hello_passed,
                decode_payloads=False,
            )
            # (the pump returns once the peer is gone: after our close frame, or once
            # hypercorn's read timeout finds it silent; its slot is held until then)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(wire.pump)
                async with running(conn):
                    try:
                        await leader.serve_feed(conn)
                    except Exception as exc:
                        _handler_failed(conn, exc)
        finally:
            ticket.leave()


async def _reject(send: Send, response: Response) -> None:
    """Answer a WebSocket upgrade with ``response`` (in HTTP: ASGI's
    ``websocket.http.response``)."""
    await send(
        {
            "type": "websocket.http.response.start",
            "status": response.status,
            "headers": response.raw_headers(),
        }
    )
    await send({"type": "websocket.http.response.body", "body": response.body})
