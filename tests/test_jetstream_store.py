"""The shared store's pure parts (``actors/leader/_jetstream.py``: configuration, keys,
version checks) and a leader facing a hostile or unfit NATS server (a fake one on
loopback that says what the test wants in its INFO line)."""

from __future__ import annotations

import json

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from actors import Leader
from actors.leader._jetstream import (
    StoreError,
    consumer_name,
    parse_store,
    result_key,
    version_problem,
)


def test_parse_store_takes_a_list_of_nats_urls():
    config = parse_store("nats://127.0.0.1:4222, nats://h2:4223,h3:4224", replicas=3)
    assert config.servers == ("nats://127.0.0.1:4222", "nats://h2:4223", "nats://h3:4224")
    assert config.replicas == 3
    assert config.jobs_stream == "ACTORS_JOBS" and config.dead_stream == "ACTORS_DEAD"
    assert config.results_bucket == "actors_results"
    assert config.jobs_subject("img.resize") == "actors.jobs.img.resize"


@pytest.mark.parametrize(
    ("url", "settings", "problem"),
    [
        ("", {}, "empty"),
        ("http://x:4222", {}, "not a NATS URL"),
        ("127.0.0.1:4222", {}, "needs its scheme"),
        ("nats://:4222", {}, "names no host"),
        ("nats://h:99999", {}, "nats://h:99999"),
        ("nats://h:4222", {"replicas": 2}, "1, 3 or 5"),
        ("nats://h:4222", {"prefix": "Bad.Prefix"}, "lowercase"),
        ("nats://h:4222", {"ack_wait": 0.1}, "ack_wait"),
        ("nats://h:4222", {"results_ttl": 10.0}, "shorter than the duplicate window"),
        ("nats://h:4222", {"tls_cert": "c.pem"}, "both a client certificate"),
    ],
)
def test_parse_store_refuses_with_the_reason(url, settings, problem):
    with pytest.raises(ValueError, match=problem):
        parse_store(url, **settings)


@pytest.mark.parametrize(
    ("version", "refused"),
    [
        ("2.9.10", False),
        ("2.10.19", False),
        ("2.10.20", True),
        ("2.10.21", True),
        ("2.10.22", True),
        ("2.10.23", False),
        ("2.15.1", False),
        ("2.8.4", True),
        ("banana", True),
    ],
)
def test_server_versions_known_to_lose_streams_are_refused(version, refused):
    problem = version_problem(version)
    assert (problem is not None) == refused
    if version.startswith("2.10.2"):
        assert problem is None or "2.10.23" in problem


@given(st.text(min_size=1, max_size=300))
def test_result_keys_are_valid_nats_tokens_and_distinct(job_id):
    key = result_key(job_id)
    assert key and all(c.isascii() and (c.isalnum() or c in "-_=") for c in key)
    # different ids never share a key: plain ids keep their text, others are hex
    assert key == ("j" + job_id if key[0] == "j" else "x" + job_id.encode().hex())


def test_consumer_names_are_durable_names_unique_per_pattern():
    names = {consumer_name(p) for p in ("a.b", "a_b", "a.*", "a.>", "ä.b", "a.b.c")}
    assert len(names) == 6
    for name in names:
        assert not set(name) & set(".*> \t")


async def _fake_nats(info: dict, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """A NATS server that sends ``info`` and answers PING with PONG, nothing else."""

    async def serve(stream: trio.SocketStream) -> None:
        await stream.send_all(b"INFO " + json.dumps(info).encode() + b"\r\n")
        buffer = b""
        while True:
            data = await stream.receive_some(4096)
            if not data:
                return
            buffer += data
            while b"\r\n" in buffer:
                line, buffer = buffer.split(b"\r\n", 1)
                if line.startswith(b"PING"):
                    await stream.send_all(b"PONG\r\n")

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    task_status.started(listeners[0].socket.getsockname()[1])
    await trio.serve_listeners(serve, listeners)


@pytest.mark.parametrize(
    ("info", "problem"),
    [
        ({"version": "2.10.21", "jetstream": True}, "loses whole streams"),
        ({"version": "2.9.10"}, "has no JetStream"),
    ],
)
async def test_a_leader_refuses_an_unfit_nats_server_at_start(info, problem):
    base = {"server_id": "fake", "host": "127.0.0.1", "proto": 1, "max_payload": 1048576}
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            port = await nursery.start(_fake_nats, base | info)
            leader = Leader(
                listen=["tcp://127.0.0.1:0"], store=parse_store(f"nats://127.0.0.1:{port}")
            )
            with pytest.raises(StoreError, match=problem):
                await leader.run()
            nursery.cancel_scope.cancel()


async def test_a_leader_whose_nats_does_not_answer_says_so():
    with trio.socket.socket() as sock:  # (a port nobody listens on)
        await sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    leader = Leader(listen=["tcp://127.0.0.1:0"], store=parse_store(f"nats://127.0.0.1:{port}"))
    with trio.fail_after(20), pytest.raises(StoreError, match="cannot connect to NATS"):
        await leader.run()


def test_a_leader_takes_its_store_as_a_url_too():
    leader = Leader(listen=["tcp://127.0.0.1:0"], store="nats://127.0.0.1:4222,nats://h2:4223")
    assert leader.config.store == parse_store("nats://127.0.0.1:4222,nats://h2:4223")
    assert leader.journal is None and leader.shared is not None
    with pytest.raises(ValueError, match="not a NATS URL"):
        Leader(listen=["tcp://127.0.0.1:0"], store="http://x:1")
    with pytest.raises(TypeError, match="StoreConfig or a nats:// URL"):
        Leader(listen=["tcp://127.0.0.1:0"], store=42)
