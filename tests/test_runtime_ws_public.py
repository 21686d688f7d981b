"""The WebSocket transport on trio-websocket's public API only (``runtime._ws``).

Batched WebSocket writes use private attributes of trio-websocket; with another release, a
missing name or ``ACTORS_WS_PUBLIC_ONLY=1``, each frame goes through the public
``send_message`` instead. This module runs the key WebSocket cases of
``tests/test_transport.py`` (connect, frames both ways, a large message, closing, an
oversized frame) with that public path forced, so that the fallback is tested too; and
checks how it is chosen.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import trio
import trio.testing

import protocol
import runtime._ws
from protocol import Publish, Session, Welcome
from runtime._connection import Connection
from runtime._transports import running
from tests.test_transport import Certs, Env
from tests.test_transport import certs as certs  # (the fixture, for the tests below)
from tests.test_transport import (
    test_handshake_and_peer_info as test_handshake_and_peer_info,
)
from tests.test_transport import test_large_message as test_large_message
from tests.test_transport import (
    test_many_messages_round_trip_in_order as test_many_messages_round_trip_in_order,
)
from tests.test_transport import test_oversize_frame_is_refused as test_oversize_frame_is_refused
from tests.test_transport import (
    test_queued_messages_are_flushed_before_a_client_close as test_queued_messages_are_flushed_before_a_client_close,
)
from tests.test_transport import (
    test_server_bye_ends_client_loop_cleanly as test_server_bye_ends_client_loop_cleanly,
)
from tests.test_transport import (
    test_server_error_close_reaches_client as test_server_error_close_reaches_client,
)
from tests.test_ws_batching import _ws_pair


@pytest.fixture(autouse=True)
def public_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every wire made in this module's tests sends through ``send_message`` only."""
    monkeypatch.setattr(runtime._ws, "USE_INTERNALS", False)


@pytest.fixture(params=["ws", "wss"])
def env(request: pytest.FixtureRequest, certs: Certs) -> Env:
    """(Overrides the transport tests' fixture: WebSocket schemes only.)"""
    return Env(request.param, certs)


@pytest.mark.parametrize("scheme", ["ws", "wss"])
async def test_connections_made_here_use_the_public_path(
    scheme: str, certs: Certs, nursery: trio.Nursery
) -> None:
    from tests.test_transport import EchoServer

    env = Env(scheme, certs)
    url = await env.serve(nursery, EchoServer())
    with trio.fail_after(10):
        async with env.connect(url) as conn:
            wire = conn._wire
            assert isinstance(wire, runtime._ws.WebSocketWire) and not wire._batched


async def test_queued_frames_go_out_one_message_and_one_write_each(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            client_wire, server_wire, counting = await _ws_pair(nursery)
            assert not client_wire._batched
            conn = Connection(client_wire, Session(side="client"), "ws://peer", "ws")
            welcome = Welcome(mid=0, version=1)
            conn.session.receive(welcome, 0.0)  # as if the handshake was done
            conn._welcomed(welcome)
            decoder = protocol.FrameDecoder()
            writes_before = counting.writes
            async with running(conn):
                for i in range(100):
                    conn.send_nowait(Publish(mid=conn.next_mid(), subject="a.b", payload=i))
                got = []
                while len(got) < 100:
                    data = await server_wire.receive()
                    assert data is not None
                    messages = decoder.feed(data)
                    assert len(messages) == 1 and not decoder.buffered  # one frame each
                    got += messages
                assert [m.payload for m in got] == list(range(100))
                assert counting.writes - writes_before == 100  # a write per frame
            nursery.cancel_scope.cancel()


@pytest.mark.parametrize(
    ("value", "expected"), [("1", False), ("yes", False), ("", True), ("0", True)]
)
def test_the_environment_variable_forces_the_public_path_at_import(
    value: str, expected: bool
) -> None:
    env = {**os.environ, "ACTORS_WS_PUBLIC_ONLY": value}
    code = "import runtime._ws as ws; print(ws.USE_INTERNALS)"
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert out.stdout.strip() == str(expected)


def test_the_installed_release_is_the_tested_one() -> None:
    # (If this fails, trio-websocket was upgraded past the pin: batched writes are off
    # until INTERNALS are checked against the new release and TESTED_RELEASE is moved.)
    import trio_websocket

    assert trio_websocket.__version__.startswith(runtime._ws.TESTED_RELEASE)
