"""A worker group's own retry policy: ``[groups.retry]`` in a cluster file.

The broker applies a group's policy (attempt limit, backoff) to the attempts that fail on
that group's workers; the leader's settings stay for everyone else. Checked sans-I/O at
exact times, through the configuration loader, and through ``run_cluster`` end to end.
"""

from __future__ import annotations

import io
import random
from functools import partial
from pathlib import Path

import pytest
import trio

from actors import (
    DLQ_PREFIX,
    Client,
    ConfigError,
    DeadLettered,
    GroupRetry,
    GroupRetryConfig,
)
from actors.cluster import run_cluster
from actors.cluster._config import config_from_args, load_config
from actors.cluster._model import RetryConfig
from actors.leader import Broker, BrokerConfig
from protocol import Deliver, Subscribe
from runtime import Backoff
from tests.test_broker import assigns, client, finish, results, submit, worker

NO_JITTER = Backoff(base=1.0, factor=2.0, cap=60.0, jitter=0.0)


def broker() -> Broker:
    return Broker(
        BrokerConfig(ack_timeout=10.0, max_attempts=3, retry_backoff=NO_JITTER),
        rng=random.Random(1),
    )


def fail_until_dead(b: Broker, w, job_id: str, start: float = 0.0) -> list[float]:
    """Fail every attempt of ``job_id`` at once; return the times of its assignments,
    relative to ``start`` (when it was submitted)."""
    now, times = start, [0.0]
    while True:
        finish(b, w, job_id, now, ok=False)
        if job_id not in b.jobs:
            return times
        now = b.next_deadline()
        b.handle_timer(now)
        times.append(now - start)


def test_a_group_policy_sets_the_limit_and_backoff_of_its_own_workers_only():
    b = broker()
    b.set_group_retry(
        "patient", GroupRetry(max_attempts=5, backoff=Backoff(base=4.0, factor=1.0, cap=4.0))
    )
    patient = worker(b, "p", 1, patterns=("slow.>",), group="patient")
    plain = worker(b, "q", 1, patterns=("fast.>",), group="plain")
    c = client()
    submit(b, c, "p1", subject="slow.a")
    assert fail_until_dead(b, patient, "p1") == [0.0, 4.0, 8.0, 12.0, 16.0]  # 5 attempts, 4 s apart
    submit(b, c, "q1", subject="fast.a", now=20.0)
    assert fail_until_dead(b, plain, "q1", start=20.0) == [
        0.0,
        1.0,
        3.0,
    ]  # the leader's: 3 attempts, 1 s, 2 s
    [p_res, q_res] = results(c)
    assert (p_res.attempts, q_res.attempts) == (5, 3)
    assert "dead-lettered after 5 attempts" in p_res.error_message


def test_a_submits_own_limit_wins_over_the_groups():
    b = broker()
    b.set_group_retry("g", GroupRetry(max_attempts=5))
    w = worker(b, "w", 1, group="g")
    c = client()
    submit(b, c, "j", max_attempts=2)
    assert fail_until_dead(b, w, "j") == [
        0.0,
        1.0,
    ]  # its own 2; the group's backoff is the leader's
    assert results(c)[0].attempts == 2


def test_the_policy_follows_the_worker_that_failed_the_attempt():
    """An ack timeout, a worker that goes away: each attempt is counted by its group's rule."""
    b = broker()
    b.set_group_retry("g", GroupRetry(max_attempts=2, backoff=Backoff(base=0.5, cap=0.5)))
    dlq = client("dlq")
    b.subscribe(dlq, Subscribe(mid=1, sid=1, pattern=DLQ_PREFIX + ">"), 0.0)
    w1 = worker(b, "w1", 1, group="g")
    c = client()
    submit(b, c, "j")
    b.worker_left(w1, 1.0)  # attempt 1 lost with its worker: retry after 0.5 s
    assert b.next_deadline() == 1.5
    w2 = worker(b, "w2", 1, group="g", now=1.2)
    b.handle_timer(1.5)
    assert [a.attempt for a in assigns(w2)] == [2]
    b.handle_timer(11.5)  # attempt 2 misses its ack deadline: out of the group's 2 attempts
    [res] = results(c)
    assert not res.ok and res.attempts == 2 and res.error_type == "AckTimeout"
    [dead] = [m for m in dlq.out if isinstance(m, Deliver)]
    assert dead.payload["attempts"] == 2 and dead.payload["error_type"] == "AckTimeout"
    b.set_group_retry("g", None)
    assert dict(b.group_retry) == {}


def test_group_retry_rejects_bad_values():
    with pytest.raises(ValueError, match="max_attempts"):
        GroupRetry(max_attempts=0)
    with pytest.raises(TypeError):
        GroupRetry(backoff=3)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- configuration


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "cluster.toml"
    path.write_text(text)
    return str(path)


GROUP = '[[groups]]\nname = "flaky"\nworker = "tests.workers:Flaky"\n'


def test_groups_retry_table_is_read_on_top_of_the_leaders(tmp_path):
    path = write(
        tmp_path,
        "[leader]\nmax_attempts = 4\n[leader.retry]\nbase = 0.2\ncap = 8.0\n"
        + GROUP
        + "[groups.retry]\nmax_attempts = 7\nbase = 0.5\n",
    )
    config = load_config(path)
    [group] = config.groups
    assert group.retry == GroupRetryConfig(max_attempts=7, base=0.5)
    policy = group.retry.policy(config.leader.retry)
    assert policy.max_attempts == 7
    assert policy.backoff == Backoff(
        base=0.5, factor=2.0, cap=8.0, jitter=0.1
    )  # cap is the leader's
    assert GroupRetryConfig(max_attempts=2).policy(RetryConfig()) == GroupRetry(max_attempts=2)
    assert group.retry.describe() == "retry max_attempts 7, base 0.5"


@pytest.mark.parametrize(
    ("retry", "fragment"),
    [
        (
            "[groups.retry]\nmax_attempts = 0\n",
            "[groups.retry] key 'max_attempts': expected an integer >= 1, got 0",
        ),
        ("[groups.retry]\ntries = 3\n", "[groups.retry]: unknown key 'tries'"),
        (
            "[groups.retry]\njitter = 2\n",
            "[groups.retry] key 'jitter': expected a number >= 0 and <= 1, got 2",
        ),
        ("[groups.retry]\nbase = 100.0\n", "cap (30.0) must be >= base (100.0)"),
        ('retry = "fast"\n', "[groups.retry]: must be a table"),
        (
            'mode = "broadcast"\n[groups.retry]\nmax_attempts = 2\n',
            "a broadcast group takes no jobs",
        ),
    ],
)
def test_bad_groups_retry_tables_are_named(tmp_path, retry, fragment):
    path = write(tmp_path, GROUP + retry)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert f"{path}: [[groups]] #1 'flaky'" in info.value.message
    assert fragment in info.value.message


async def test_the_cluster_applies_each_groups_policy(tmp_path):
    """``run_cluster`` registers the file's group policies with its leader."""
    path = write(
        tmp_path,
        '[leader]\nlisten = ["tcp://127.0.0.1:0"]\nmax_attempts = 5\n'
        "[leader.retry]\nbase = 0.01\ncap = 0.05\njitter = 0.0\n"
        + GROUP
        + 'in_process = true\nsubjects = ["retry.flaky"]\n'
        "[groups.retry]\nmax_attempts = 2\n"
        '[[groups]]\nname = "other"\nworker = "tests.workers:Flaky"\nin_process = true\n'
        'subjects = ["retry.other"]\n',
    )
    config = config_from_args(config_path=path)
    out = io.StringIO()
    with trio.fail_after(15):
        async with trio.open_nursery() as nursery:
            [url] = await nursery.start(partial(run_cluster, config, 1.0, out=out))
            assert (
                "group flaky: 1 x tests.workers:Flaky (in process, mode round_robin, policy round_robin, "
                "subjects retry.flaky, retry max_attempts 2)" in out.getvalue().splitlines()
            )
            async with Client.connect(url) as client:
                with pytest.raises(DeadLettered) as flaky:
                    await client.submit("retry.flaky", {"fail": True}, timeout=10)
                with pytest.raises(DeadLettered) as other:
                    await client.submit("retry.other", {"fail": True}, timeout=10)
            assert (flaky.value.attempts, other.value.attempts) == (2, 5)
            assert flaky.value.error_type == "ValueError"
            nursery.cancel_scope.cancel()
