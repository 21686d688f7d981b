"""The plain-TCP wire that drives its socket directly (``runtime._wire.SocketWire``).

The transport conformance suite (``test_transport.py``) runs over it for ``tcp://``; these
tests cover what only it does: writes larger than the socket buffer (the wait-writable
path), end of stream, a reset or closed socket, and yielding to other tasks when data is
always waiting.
"""

from __future__ import annotations

import socket
import struct

import pytest
import trio

from runtime._wire import READS_BEFORE_YIELD, SocketWire


async def _pair() -> tuple[SocketWire, SocketWire]:
    a, b = socket.socketpair()
    return SocketWire(a), SocketWire(b)


def _tcp_pair() -> tuple[socket.socket, socket.socket]:
    """Two ends of a loopback TCP connection (blocking calls: all return at once here)."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname())
        server, _ = listener.accept()
    return client, server


async def test_a_write_larger_than_the_socket_buffer_arrives_whole() -> None:
    left, right = await _pair()
    data = bytes(range(256)) * 40_000  # 10 MB: far over any socket buffer
    got = bytearray()
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:

            async def read_all() -> None:
                while len(got) < len(data):
                    chunk = await right.receive()
                    assert chunk is not None
                    got.extend(chunk)

            nursery.start_soon(read_all)
            await left.send_frames([data[:7], data[7:]])  # blocks part way: waits writable
    assert got == data
    await left.aclose()
    await right.aclose()


async def test_end_of_stream_is_none_and_closed_socket_raises_closed() -> None:
    left, right = await _pair()
    await left.send_frames([b"last words"])
    await left.aclose()
    assert await right.receive() == b"last words"
    assert await right.receive() is None
    await right.aclose()
    with pytest.raises(trio.ClosedResourceError):
        await right.receive()
    with pytest.raises(trio.ClosedResourceError):
        await right.send_frames([b"x"])
    await right.aclose()  # idempotent


async def test_a_reset_peer_is_a_broken_resource() -> None:
    a, b = _tcp_pair()
    left, right = SocketWire(a), SocketWire(b)
    # Close with unread data pending: the kernel resets the connection.
    await right.send_frames([b"unread"])
    a.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    await left.aclose_forcefully()

    async def send_until_it_fails() -> None:
        for _ in range(100):  # the reset may take a moment to show
            await right.send_frames([b"more" * 1000])
            await trio.sleep(0.01)

    with pytest.raises(trio.BrokenResourceError):
        await send_until_it_fails()
    await right.aclose()


async def test_closing_wakes_a_reader_that_waits() -> None:
    left, right = await _pair()
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            failures: list[BaseException] = []

            async def reader() -> None:
                try:
                    await right.receive()
                except trio.ClosedResourceError as exc:
                    failures.append(exc)

            nursery.start_soon(reader)
            await trio.testing.wait_all_tasks_blocked()
            await right.aclose()
    assert len(failures) == 1
    await left.aclose()


async def test_a_reader_with_data_always_waiting_still_lets_others_run(monkeypatch) -> None:
    monkeypatch.setattr("runtime._wire.READ_SIZE", 10)  # 100 reads for 1000 bytes
    left, right = await _pair()
    await left.send_frames([b"x" * 1000])  # all of it waiting before the first read
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await trio.lowlevel.checkpoint()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(ticker)
        await trio.lowlevel.checkpoint()  # the ticker is running
        before = ticks
        for _ in range(100):
            assert await right.receive() == b"x" * 10
        during = ticks - before
        nursery.cancel_scope.cancel()
    # No schedule point per read that found data, one every READS_BEFORE_YIELD of them.
    assert READS_BEFORE_YIELD == 8
    assert 100 // 9 <= during <= 100 // 8 + 1
    await left.aclose()
    await right.aclose()
