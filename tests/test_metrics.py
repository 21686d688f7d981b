"""The leader's metrics (``actors/leader/_metrics.py``) and latency histograms
(``actors/leader/_stats.py``): ``GET /metrics`` parsed with ``prometheus_client``'s own
parser after real jobs (done, failed, redelivered, dead-lettered), a silent worker counted
stale and not up, authentication, and the bound on exported subjects.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
import trio
import trio.testing
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from actors import Client, DeadLettered, Job, JobFailed, Leader, Worker
from actors.leader._http import HttpApp
from actors.leader._links import GroupStats, SubjectQueue
from actors.leader._metrics import MAX_METRIC_SUBJECTS, SCRAPE_INTERVAL, metrics_registry
from actors.leader._stats import LATENCY_BUCKETS, count_result, latency_quantile
from actors.leader._workers import DEPARTED_TTL
from actors.worker import WorkerRunner
from protocol import Hello, Welcome
from runtime import Backoff
from tests.helpers import RawPeer
from tests.test_http import TOKEN, request

FAST_RETRY = Backoff(base=0.01, factor=2.0, cap=0.05, jitter=0.0)

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    """Every sample of a scrape, by name and labels."""
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = (sample.name, frozenset(sample.labels.items()))
            assert key not in samples, f"{key} twice"
            samples[key] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def scrape(leader: Leader, **limits: int) -> Samples:
    return parse(generate_latest(metrics_registry(leader, **limits)).decode())


# --------------------------------------------------------------------------- histograms


def test_each_latency_is_counted_in_one_bucket_le_its_bound():
    q = SubjectQueue("s")
    for latency in (0.0, 0.001, 0.0011, 60.0, 60.5, 1e9):
        count_result(q, True, latency)
    counts = q.latency_counts
    assert len(counts) == len(LATENCY_BUCKETS) + 1 == 17
    assert counts[0] == 2  # 0 and exactly 0.001 (le)
    assert counts[1] == 1
    assert counts[len(LATENCY_BUCKETS) - 1] == 1  # exactly 60
    assert counts[-1] == 2  # over the last bound: +Inf
    assert sum(counts) == q.done == 6


def test_quantiles_interpolate_within_the_bucket_and_never_pass_the_maximum():
    g = GroupStats()
    assert latency_quantile(g, 0.5) is None
    for _ in range(50):
        count_result(g, True, 0.002)  # (0.001, 0.0025]
    for _ in range(50):
        count_result(g, False, 0.024)  # (0.01, 0.025]
    assert latency_quantile(g, 0.5) == pytest.approx(0.0025)
    assert latency_quantile(g, 0.25) == pytest.approx(0.001 + 0.0015 * 0.5)
    assert latency_quantile(g, 0.9) == pytest.approx(0.01 + 0.015 * 0.8)
    assert latency_quantile(g, 0.99) == pytest.approx(0.024)  # the interpolation says 0.0247
    slow = GroupStats()
    count_result(slow, True, 100.0)
    assert latency_quantile(slow, 0.5) == pytest.approx(80.0)  # +Inf bucket: 60 .. max
    assert latency_quantile(slow, 0.99) == pytest.approx(99.6)


# --------------------------------------------------------------------------- over HTTP


class Work(Worker):
    """``m.ok`` answers; ``m.flaky`` fails its first attempt; ``m.bad`` always fails."""

    subjects = ["m.*"]
    concurrency = 4

    async def handle(self, job: Job) -> Any:
        if job.subject == "m.bad" or (job.subject == "m.flaky" and job.attempt == 1):
            raise ValueError(f"attempt {job.attempt} of {job.subject} fails")
        return job.payload


@pytest.fixture
async def leader(nursery: trio.Nursery) -> Leader:
    leader = Leader(
        listen=["tcp://127.0.0.1:0"],
        http="127.0.0.1:0",
        memory=True,
        retry_backoff=FAST_RETRY,
        max_attempts=2,
    )
    await nursery.start(leader.run)
    return leader


@pytest.mark.e2e
async def test_metrics_count_real_jobs(nursery: trio.Nursery, leader: Leader):
    url = leader.urls[0]
    with trio.fail_after(20):
        await nursery.start(WorkerRunner(Work(), url, name="w0", group="work").run)
        async with Client.connect(url) as client:
            for i in range(3):
                assert await client.submit("m.ok", i, timeout=10) == i
            assert await client.submit("m.flaky", "f", timeout=10) == "f"  # redelivered once
            with pytest.raises(DeadLettered):  # two attempts, then a dead letter
                await client.submit("m.bad", "b", timeout=10)
            with pytest.raises(JobFailed):  # QoS 0: its one failure is final
                await client.request("m.bad", "q", timeout=10)
            reply = await request(leader.http_url, "/metrics")
            stats = leader.stats()
    assert reply.status == 200
    assert reply.headers["content-type"] == CONTENT_TYPE_LATEST
    assert reply.headers["cache-control"] == "no-store"
    m = parse(reply.body.decode())

    expected = {
        "m.ok": {"submitted": 3, "done": 3},
        "m.flaky": {"submitted": 1, "done": 1, "redelivered": 1},
        "m.bad": {"submitted": 2, "failed": 1, "redelivered": 1, "dead": 1},
    }
    words = ("submitted", "done", "failed", "redelivered", "dead", "expired", "cancelled")
    for subject, counts in expected.items():
        for word in words:
            got = value(m, f"actors_jobs_{word}_total", subject=subject)
            assert got == counts.get(word, 0), (subject, word)
        finished = counts.get("done", 0) + counts.get("failed", 0)
        assert value(m, "actors_job_latency_seconds_count", subject=subject) == finished
        assert value(m, "actors_job_latency_seconds_bucket", subject=subject, le="+Inf") == finished
        buckets = [
            value(m, "actors_job_latency_seconds_bucket", subject=subject, le=le)
            for le in [*(str(b) for b in LATENCY_BUCKETS), "+Inf"]
        ]
        assert buckets == sorted(buckets)  # cumulative
        total = value(m, "actors_job_latency_seconds_sum", subject=subject)
        assert 0 < total < 20
        assert value(m, "actors_jobs_queued", subject=subject) == 0
        assert value(m, "actors_jobs_in_flight", subject=subject) == 0
        s = stats["subjects"][subject]
        assert 0 <= s["latency_p50"] <= s["latency_p99"] <= s["latency_max"]

    group = {"done": 4, "failed": 1, "redelivered": 2, "dead": 1}
    for word, count in group.items():
        assert value(m, f"actors_group_jobs_{word}_total", group="work") == count, word
    assert value(m, "actors_group_job_latency_seconds_count", group="work") == 5
    assert stats["groups"]["work"]["latency_p50"] is not None
    assert value(m, "actors_workers", group="work", state="online") == 1
    assert value(m, "actors_workers", group="work", state="stale") == 0
    assert value(m, "actors_workers_up", group="work") == 1
    assert value(m, "actors_group_jobs_in_flight", group="work") == 0
    assert value(m, "actors_connections") == 2  # the worker's and the client's
    assert value(m, "actors_dead_letters") == 1
    assert value(m, "actors_jobs_active") == 0
    assert value(m, "actors_jobs_waiting") == 0
    assert value(m, "actors_subjects_omitted") == 0
    assert value(m, "actors_groups_omitted") == 0
    assert ("actors_journal_bytes", frozenset()) not in m  # (memory: no journal)
    assert (stats["connections"], stats["workers_online"], stats["workers_stale"]) == (2, 1, 0)

    head = await request(leader.http_url, "/metrics", method="HEAD")
    assert head.status == 200 and head.body == b""
    post = await request(leader.http_url, "/metrics", method="POST", body=b"")
    assert post.status == 405


@pytest.mark.e2e
async def test_metrics_need_a_token_when_the_leader_has_users(nursery: trio.Nursery):
    leader = Leader(listen=["tcp://127.0.0.1:0"], http="127.0.0.1:0", memory=True, token=TOKEN)
    await nursery.start(leader.run)
    none = await request(leader.http_url, "/metrics")
    assert none.status == 401 and none.json()["error"] == "auth_failed"
    assert none.headers["www-authenticate"].startswith("Bearer")
    assert b"actors_" not in none.body
    wrong = await request(
        leader.http_url, "/metrics", headers={"Authorization": "Bearer not-the-token-at-all"}
    )
    assert wrong.status == 401
    basic = await request(leader.http_url, "/metrics", headers={"Authorization": f"Basic {TOKEN}"})
    assert basic.status == 401
    good = await request(leader.http_url, "/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert good.status == 200
    assert value(parse(good.body.decode()), "actors_connections") == 0
    # (open: /healthz, for supervisors)
    assert (await request(leader.http_url, "/healthz")).status == 200


async def test_each_leader_exports_only_its_own():
    one, two = Leader(memory=True, name="one"), Leader(memory=True, name="two")
    one.broker._queue("only.one").submitted = 7
    assert value(scrape(one), "actors_jobs_submitted_total", subject="only.one") == 7
    assert not any(labels for _, labels in scrape(two) if ("subject", "only.one") in labels)


async def test_at_most_a_thousand_subjects_are_exported_the_busiest(autojump_clock):
    leader = Leader(memory=True)
    extra = 25
    for i in range(MAX_METRIC_SUBJECTS + extra):
        queue = leader.broker._queue(f"s.{i:05}")
        queue.submitted = i  # the first `extra` are the least busy
        count_result(queue, True, 0.01)
    started = time.perf_counter()
    m = scrape(leader)
    seconds = time.perf_counter() - started
    subjects = {
        dict(labels)["subject"] for name, labels in m if name == "actors_jobs_submitted_total"
    }
    assert len(subjects) == MAX_METRIC_SUBJECTS == 1000
    assert subjects == {f"s.{i:05}" for i in range(extra, MAX_METRIC_SUBJECTS + extra)}
    assert value(m, "actors_subjects_omitted") == extra
    histograms = {
        dict(labels)["subject"] for name, labels in m if name == "actors_job_latency_seconds_count"
    }
    assert histograms == subjects
    assert seconds < 5  # (about 0.2 s here: the scrape runs on the leader's loop)
    # A smaller bound, and groups bounded the same way (in the next statistics snapshot:
    # the leader's readers share one a second).
    for i in range(30):
        leader.broker._group_stats(f"g{i}").done = i
    await trio.sleep(1)
    small = scrape(leader, max_subjects=3, max_groups=2)
    assert value(small, "actors_subjects_omitted") == MAX_METRIC_SUBJECTS + extra - 3
    assert value(small, "actors_groups_omitted") == 28
    assert {
        dict(labels)["group"] for name, labels in small if name == "actors_group_jobs_done_total"
    } == {
        "g29",
        "g28",
    }


async def test_odd_subject_and_group_names_are_escaped():
    leader = Leader(memory=True)
    leader.broker._queue('quote".back\\slash.new\nline').submitted = 1  # (not a valid subject)
    leader.broker._group_stats('g"\n').done = 2
    m = scrape(leader)
    assert value(m, "actors_jobs_submitted_total", subject='quote".back\\slash.new\nline') == 1
    assert value(m, "actors_group_jobs_done_total", group='g"\n') == 2


async def test_a_silent_worker_is_stale_and_not_up(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
):
    leader = Leader(listen=["tcp://127.0.0.1:0"], memory=True, heartbeat=2.0)
    [url] = await nursery.start(leader.run)
    host, port = url.removeprefix("tcp://").rsplit(":", 1)
    async with await trio.open_tcp_stream(host, int(port)) as stream:
        peer = RawPeer(stream)
        await peer.send(Hello(mid=0, role="worker", name="mute", group="g", patterns=("a.b",)))
        assert type(await peer.receive()) is Welcome
        m = scrape(leader)
        assert value(m, "actors_workers", group="g", state="online") == 1
        assert value(m, "actors_workers_up", group="g") == 1
        await trio.sleep(3.5)  # past 1.5 heartbeats, before the leader gives up at 3
        m = scrape(leader)
        assert value(m, "actors_workers", group="g", state="online") == 0
        assert value(m, "actors_workers", group="g", state="stale") == 1
        assert value(m, "actors_workers_up", group="g") == 0
        assert leader.stats()["workers_stale"] == 1
        assert value(m, "actors_workers", group="g", state="offline") == 0
        await trio.sleep(3.0)  # declared dead and gone
        m = scrape(leader)
        assert value(m, "actors_workers", group="g", state="stale") == 0
        assert value(m, "actors_workers_up", group="g") == 0
        # Offline (as /api/workers says) while its departure is remembered: ten minutes.
        assert value(m, "actors_workers", group="g", state="offline") == 1
        assert leader.worker_list(state="offline")["total"] == 1
        await trio.sleep(DEPARTED_TTL)
        m = scrape(leader)
        assert ("actors_workers", frozenset({("group", "g"), ("state", "offline")})) not in m or (
            value(m, "actors_workers", group="g", state="offline") == 0
        )


async def test_a_group_a_cluster_announced_shows_no_workers_up():
    leader = Leader(memory=True)
    leader.set_group_state("never", "starting")
    m = scrape(leader)
    assert value(m, "actors_workers_up", group="never") == 0
    assert ("actors_group_job_latency_seconds_count", frozenset({("group", "never")})) not in m
    stats = leader.stats()["groups"]["never"]
    assert stats["latency_p50"] is None and stats["workers_stale"] == 0


async def test_scrapes_within_the_interval_share_one_rendering(
    autojump_clock: trio.testing.MockClock,
):
    leader = Leader(memory=True)
    app = HttpApp(leader, client_dir=None, examples_dir=None)
    queue = leader.broker._queue("c.x")
    queue.submitted = 1

    async def scrape_http() -> float:
        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        scope = {
            "type": "http",
            "method": "GET",
            "path": "/metrics",
            "raw_path": b"/metrics",
            "query_string": b"",
            "headers": [(b"host", b"127.0.0.1:7780")],
            "client": ("127.0.0.1", 5555),
        }
        response = await app.respond(scope, receive)
        assert response.status == 200 and response.content_type == CONTENT_TYPE_LATEST
        return value(parse(response.body.decode()), "actors_jobs_submitted_total", subject="c.x")

    assert await scrape_http() == 1
    queue.submitted = 5
    assert await scrape_http() == 1  # the same text, within the interval
    await trio.sleep(SCRAPE_INTERVAL)
    assert await scrape_http() == 5
