"""Each default of the leader and of reconnects has one home.

The leader's settings are :class:`actors.leader.LeaderConfig` (connections) and
:class:`actors.leader.BrokerConfig` (delivery); ``Leader(**settings)`` is a thin way to
build them, and a cluster file's ``[leader]`` table starts from their defaults. The
reconnect backoff of workers is :data:`runtime._reconnect.DEFAULT_RECONNECT_BACKOFF`.
"""

from __future__ import annotations

import math
import random

import attrs
import pytest

from actors import Worker
from actors.cluster import LeaderTable
from actors.cluster._model import GroupConfig, RetryConfig
from actors.leader import BrokerConfig, Leader, LeaderConfig
from actors.leader._broker import DEFAULT_RETRY_BACKOFF
from actors.worker._runner import WorkerRunner
from protocol import GroupMode, RoutingPolicy
from runtime import Backoff
from runtime._reconnect import DEFAULT_RECONNECT_BACKOFF


def test_the_leader_takes_one_config_object() -> None:
    config = LeaderConfig(
        name="n", listen=["tcp://127.0.0.1:0"], broker=BrokerConfig(ack_timeout=3.0)
    )
    leader = Leader(config, rng=random.Random(1))
    assert leader.config is config and leader.broker.config is config.broker
    assert (leader.name, leader.listen, leader.broker.config.ack_timeout) == (
        "n",
        ["tcp://127.0.0.1:0"],
        3.0,
    )
    assert config.listen == ("tcp://127.0.0.1:0",)  # (kept as a tuple)
    assert Leader().config == LeaderConfig()


def test_keyword_settings_build_the_same_config() -> None:
    backoff = Backoff(base=0.01, cap=0.01)
    leader = Leader(
        name="k",
        heartbeat=None,
        ack_timeout=2.0,
        retry_backoff=backoff,
        max_queue_time=None,
        write_timeout=math.inf,
    )
    config = leader.config
    assert (config.name, config.heartbeat, config.write_timeout) == ("k", None, math.inf)
    assert config.broker == attrs.evolve(
        BrokerConfig(), ack_timeout=2.0, retry_backoff=backoff, max_queue_time=None
    )
    # retry_backoff=None (what a cluster file without [leader.retry] gives): the default.
    assert Leader(retry_backoff=None).broker.config.retry_backoff is DEFAULT_RETRY_BACKOFF
    with pytest.raises(TypeError, match="'ack_timout' is not a setting"):
        Leader(ack_timout=2.0)
    with pytest.raises(TypeError, match="not both"):
        Leader(LeaderConfig(), name="x")
    with pytest.raises(ValueError, match="name"):
        Leader(name="")


def test_the_cluster_table_starts_from_the_leaders_defaults() -> None:
    table = LeaderTable()
    leader, broker = LeaderConfig(), BrokerConfig()
    for key in ("name", "listen", "heartbeat", "max_connections"):
        assert getattr(table, key) == getattr(leader, key), key
    for key in ("ack_timeout", "max_attempts", "max_queued", "dedup_window"):
        assert getattr(table, key) == getattr(broker, key), key
    assert RetryConfig().backoff() == DEFAULT_RETRY_BACKOFF == broker.retry_backoff
    assert table.leader_config() == leader
    set_ = LeaderTable(
        name="c", ack_timeout=7.0, max_window=3, retry=RetryConfig(base=1.0, cap=2.0)
    )
    built = set_.leader_config()
    assert (built.name, built.broker.ack_timeout, built.broker.max_window) == ("c", 7.0, 3)
    assert built.broker.retry_backoff == Backoff(base=1.0, factor=2.0, cap=2.0, jitter=0.1)


def test_policy_and_mode_defaults_are_the_enums() -> None:
    group = GroupConfig(name="g", worker="tests.workers:Echo")
    assert (group.policy, group.mode) == (RoutingPolicy.ROUND_ROBIN, GroupMode.ROUND_ROBIN)
    assert type(group.policy) is str  # (plain values, as on the wire)


class _Echo(Worker):
    subjects = ["d.echo"]


def test_workers_reconnect_by_the_one_default_backoff() -> None:
    runner = WorkerRunner(_Echo(), "tcp://127.0.0.1:1")
    assert runner.backoff is DEFAULT_RECONNECT_BACKOFF
    assert Backoff(base=0.1, factor=2.0, cap=5.0, jitter=0.2) == DEFAULT_RECONNECT_BACKOFF
    assert (runner.policy, runner.mode) == ("round_robin", "round_robin")


def test_the_leader_takes_the_exported_config_and_refuses_the_clusters_table() -> None:
    import actors

    assert actors.LeaderConfig is LeaderConfig
    leader = actors.Leader(actors.LeaderConfig(listen=["tcp://127.0.0.1:0"], name="one"))
    assert leader.config.listen == ("tcp://127.0.0.1:0",) and leader.name == "one"
    with pytest.raises(TypeError, match=r"table\.leader_config\(\)"):
        actors.Leader(actors.LeaderTable())  # type: ignore[arg-type]
    assert actors.Leader(actors.LeaderTable(name="two").leader_config()).name == "two"
