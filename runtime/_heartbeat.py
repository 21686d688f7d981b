"""Liveness of a connection: ping an idle line, declare a silent peer dead, and give a
new server-side connection a bounded time to say Hello.

The rules themselves (when to ping, when the peer is dead) are the session's
(:meth:`protocol.Session.handle_timer`); these tasks only sleep until its deadlines and act,
through the connection's public attributes and its package-internal methods for its tasks
(``_ping``, ``_request_close``, and ``_reader_stalled``: see :class:`runtime.Connection`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import trio

from protocol import Error, ErrorCode, State, TimerAction

if TYPE_CHECKING:
    from ._connection import Connection


async def run_heartbeat(conn: Connection) -> None:
    """Sleep until the session's next deadline; ping, or close the connection as dead."""
    session = conn.session
    while True:
        await trio.sleep_until(session.next_deadline())
        now = trio.current_time()
        heartbeat = session.heartbeat
        if heartbeat and conn._reader_stalled:
            # Our application is not reading, so the peer's silence is ours: do not count
            # it against the peer (we still ping so that the peer does not give up on us).
            session.last_received = max(session.last_received, now - heartbeat)
        action = session.handle_timer(now)
        if action is TimerAction.SEND_PING:
            conn._ping()
        elif action is TimerAction.DEAD:
            message = f"no message from the peer for {now - session.last_received:g} s"
            conn._request_close(
                f"{conn.peer} declared dead: {message}",
                code=ErrorCode.HEARTBEAT_TIMEOUT,
                final=[
                    Error(mid=conn.next_mid(), code=ErrorCode.HEARTBEAT_TIMEOUT, message=message)
                ],
                linger=False,
            )
            return


async def watch_for_hello(conn: Connection) -> None:
    """Close a server-side connection whose peer has not said Hello in ``hello_timeout``."""
    timeout = conn.hello_timeout
    assert timeout is not None
    await trio.sleep(timeout)
    if conn.session.state is State.AWAITING_HELLO:
        message = f"no Hello within {timeout:g} s"
        conn._request_close(
            f"{conn.peer}: {message}",
            code=ErrorCode.TIMEOUT,
            final=[Error(mid=conn.next_mid(), code=ErrorCode.TIMEOUT, message=message)],
        )
