"""Journal settings that contradict each other, and dead letters past their retention."""

from __future__ import annotations

import random

import pytest

from actors.cluster._config import ConfigError, config_from_mapping
from actors.leader._redelivery import RetryScheduler
from runtime import Backoff


def test_a_cluster_file_with_memory_and_a_data_dir_is_refused():
    with pytest.raises(ConfigError, match=r"\[leader\]: 'memory = true' and 'data_dir'"):
        config_from_mapping({"leader": {"memory": True, "data_dir": "/tmp/x"}}, source="c.toml")
    table = config_from_mapping({"leader": {"memory": False, "data_dir": "/tmp/x"}}).leader
    assert table.data_dir == "/tmp/x" and table.memory is False


def test_dead_letters_kept_in_memory_go_with_the_journals_retention():
    retries = RetryScheduler(
        backoff=Backoff(base=1.0, factor=2.0, cap=10.0, jitter=0.0),
        rng=random.Random(0),
        max_queue_time=None,
        max_dead_letters=10,
        max_dead_letter_bytes=10_000,
    )
    for i, at in enumerate((100.0, 200.0, 300.0)):
        retries.keep_dead_letter({"job_id": f"d{i}", "dead_at": at}, 10)
    assert retries.forget_dead_letters_before(250.0) == 2
    assert [r["job_id"] for r in retries.dead_letters] == ["d2"]
    assert retries.dead_letter_bytes == 10
    assert retries.forget_dead_letters_before(250.0) == 0
