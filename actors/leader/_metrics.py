"""The leader's statistics for Prometheus: ``GET /metrics`` in its text format.

:class:`LeaderCollector` is a ``prometheus_client`` custom collector that reads the leader
when scraped (nothing is counted twice: the counters are the broker's own, as
:meth:`Leader.stats` reports them). Each leader has its own registry
(:func:`metrics_registry`), never the process-wide default one, so that several leaders in
one process (tests, a cluster's tools) each export only their own.

Exported (``subject`` and ``group`` are label values):

- counters per subject ``actors_jobs_{submitted,done,failed,redelivered,dead,expired,
  cancelled}_total{subject}`` and per group ``actors_group_jobs_{done,failed,redelivered,
  dead}_total{group}``;
- gauges ``actors_jobs_queued{subject}``, ``actors_jobs_in_flight{subject}``,
  ``actors_workers{group,state}`` (``online``, ``stale``: connected but silent for more than
  1.5 heartbeats, ``offline``: left in the last 10 minutes, as ``/api/workers`` lists
  them), ``actors_workers_up{group}`` (online ones only: a worker that stopped
  answering heartbeats is not up), ``actors_group_jobs_in_flight{group}``,
  ``actors_connections``, ``actors_dead_letters``, ``actors_jobs_active``,
  ``actors_jobs_waiting``, and with a journal ``actors_journal_bytes`` and
  ``actors_journal_writable``;
- histograms ``actors_job_latency_seconds{subject}`` and
  ``actors_group_job_latency_seconds{group}`` (submit to result, the buckets of
  :data:`~actors.leader._stats.LATENCY_BUCKETS`).

The labels are bounded: at most :data:`MAX_METRIC_SUBJECTS` subjects (the busiest, as the
leader's shared statistics snapshot lists them, then the most submitted) and
:data:`MAX_METRIC_GROUPS` groups (those with workers first, then the busiest);
``actors_subjects_omitted`` and ``actors_groups_omitted`` count the others.

What a scrape costs the leader: :meth:`LeaderCollector.snapshot` reads the statistics
snapshot the leader's readers share (:meth:`Leader.stats_snapshot`: built at most once a
second, O(subjects + groups + workers + jobs in flight), about 10 ms for 10,000 subjects)
and copies the exported histograms, on its loop; turning them into text (about 0.5 s for
the 55,000 lines of 1,000 subjects and 1,000 groups) runs in a worker thread, one scrape
at a time, and a scrape within :data:`SCRAPE_INTERVAL` of the last one gets the same text.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import attrs
import trio
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.utils import floatToGoString

from ._http import Response
from ._stats import LATENCY_BUCKETS

if TYPE_CHECKING:
    from ._http import Handler, HttpApp, Request
    from ._jobs import Counters
    from ._leader import Leader

#: Subjects exported at most (the busiest); ``actors_subjects_omitted`` counts the others.
MAX_METRIC_SUBJECTS = 1000
#: Worker groups exported at most; ``actors_groups_omitted`` counts the others.
MAX_METRIC_GROUPS = 1000
#: Seconds a scrape's text is served again to the next scrapes (so that many scrapers,
#: or a hostile one, cost at most one rendering per interval).
SCRAPE_INTERVAL = 1.0

#: The counters kept per subject, by the word in their metric's name: what each counts.
SUBJECT_COUNTERS = {
    "submitted": "Jobs accepted",
    "done": "Jobs finished with a successful result",
    "failed": "Jobs finished failed (at QoS 0, or by a failure the worker said is final)",
    "redelivered": "Failed attempts that were retried",
    "dead": "Jobs out of attempts, dead-lettered",
    "expired": "Jobs whose deadline passed before a worker took them",
    "cancelled": "Jobs cancelled by a client",
}
#: The counters kept per worker group.
GROUP_COUNTERS = {
    "done": "Jobs finished with a successful result by the group's workers",
    "failed": "Jobs finished failed by the group's workers",
    "redelivered": "Failed attempts at the group's workers that were retried",
    "dead": "Jobs whose last attempt failed at the group's workers",
}
_BUCKET_BOUNDS = [floatToGoString(bound) for bound in LATENCY_BUCKETS] + ["+Inf"]


@attrs.frozen
class MetricsSnapshot:
    """The numbers of one scrape, copied from the leader (plain values: they may be read
    in another thread while the leader goes on).

    Attributes:
      stats: :meth:`Leader.stats_snapshot` (shared: never changed; its ``groups`` all
        there, its ``subjects`` the busiest, ``subjects_omitted`` counting the others).
      subjects: the subjects exported, by name (entries of ``stats["subjects"]``).
      groups: the groups exported, by name (entries of ``stats["groups"]``).
      subject_latency: of the subjects exported, their latency histogram's counts (one
        per bucket of :data:`~actors.leader._stats.LATENCY_BUCKETS`, then ``+Inf``) and
        sum.
      group_latency: the same for the groups exported that have counters.
      offline: of the groups exported, how many of their workers left lately (those
        :attr:`Leader.departed_workers` remembers: at most 1,000, for 10 minutes).
    """

    stats: dict[str, Any]
    subjects: dict[str, dict[str, Any]]
    groups: dict[str, dict[str, Any]]
    subject_latency: dict[str, tuple[list[int], float]]
    group_latency: dict[str, tuple[list[int], float]]
    offline: dict[str, int] = attrs.field(factory=dict)


def _latency(counters: Counters) -> tuple[list[int], float]:
    return list(counters.latency_counts), counters.latency_total


def _histogram(family: HistogramMetricFamily, label: str, latency: tuple[list[int], float]) -> None:
    counts, total = latency
    cumulative = 0
    buckets = []
    for bound, count in zip(_BUCKET_BOUNDS, counts, strict=True):
        cumulative += count
        buckets.append((bound, float(cumulative)))
    family.add_metric([label], buckets, total)


def metric_families(snapshot: MetricsSnapshot) -> Iterator[Metric]:
    """The metrics of ``snapshot`` (see the module's text for what they are)."""
    stats = snapshot.stats
    subjects = snapshot.subjects
    groups = snapshot.groups
    for word, text in SUBJECT_COUNTERS.items():
        counter = CounterMetricFamily(
            f"actors_jobs_{word}", f"{text}, by subject", labels=["subject"]
        )
        for name, s in subjects.items():
            counter.add_metric([name], s[word])
        yield counter
    queued = GaugeMetricFamily(
        "actors_jobs_queued",
        "Jobs waiting for a worker (queued, in a sticky backlog or a retry's backoff), by subject",
        labels=["subject"],
    )
    in_flight = GaugeMetricFamily(
        "actors_jobs_in_flight", "Jobs held by workers, by subject", labels=["subject"]
    )
    latency = HistogramMetricFamily(
        "actors_job_latency_seconds",
        "Seconds from submit to result of finished jobs, by subject",
        labels=["subject"],
    )
    for name, s in subjects.items():
        queued.add_metric([name], s["queued"])
        in_flight.add_metric([name], s["in_flight"])
        histogram = snapshot.subject_latency.get(name)
        if histogram is not None:
            _histogram(latency, name, histogram)
    yield queued
    yield in_flight
    yield latency

    for word, text in GROUP_COUNTERS.items():
        counter = CounterMetricFamily(f"actors_group_jobs_{word}", text, labels=["group"])
        for name, g in groups.items():
            counter.add_metric([name], g[word])
        yield counter
    workers = GaugeMetricFamily(
        "actors_workers",
        "Workers by group and state (stale: connected, silent for over 1.5 heartbeats;"
        " offline: left in the last 10 minutes)",
        labels=["group", "state"],
    )
    up = GaugeMetricFamily(
        "actors_workers_up", "Connected workers that answer heartbeats, by group", labels=["group"]
    )
    group_in_flight = GaugeMetricFamily(
        "actors_group_jobs_in_flight", "Jobs held by the group's workers", labels=["group"]
    )
    group_latency = HistogramMetricFamily(
        "actors_group_job_latency_seconds",
        "Seconds from submit to result of jobs finished by the group's workers",
        labels=["group"],
    )
    for name, g in groups.items():
        stale = g.get("workers_stale", 0)
        online = g["workers"] - stale
        workers.add_metric([name, "online"], online)
        workers.add_metric([name, "stale"], stale)
        workers.add_metric([name, "offline"], snapshot.offline.get(name, 0))
        up.add_metric([name], online)
        group_in_flight.add_metric([name], g["in_flight"])
        histogram = snapshot.group_latency.get(name)
        if histogram is not None:
            _histogram(group_latency, name, histogram)
    yield workers
    yield up
    yield group_in_flight
    yield group_latency

    # (the snapshot lists the busiest subjects already: those it left out are omitted too)
    omitted_subjects = stats.get("subjects_omitted", 0) + len(stats["subjects"]) - len(subjects)
    omitted_groups = len(stats["groups"]) - len(groups)
    for name, text, value in (
        ("actors_connections", "Open protocol connections", stats["connections"]),
        ("actors_jobs_active", "Jobs accepted and not finished", stats["jobs_active"]),
        ("actors_jobs_waiting", "Jobs accepted and not held by a worker", stats["waiting"]),
        (
            "actors_dead_letters",
            "Dead letters (with a journal: all it holds)",
            stats["dead_letters"],
        ),
        ("actors_subjects_omitted", "Subjects not exported (the least busy)", omitted_subjects),
        ("actors_groups_omitted", "Worker groups not exported (the least busy)", omitted_groups),
    ):
        yield GaugeMetricFamily(name, text, value=value)
    journal = stats["journal"]
    if journal is not None:
        yield GaugeMetricFamily(
            "actors_journal_bytes", "Bytes of the journal's live pages", value=journal["bytes"]
        )
        yield GaugeMetricFamily(
            "actors_journal_writable",
            "1 while the journal takes writes, 0 while submits are refused for it",
            value=0 if journal["refusal"] else 1,
        )


class _Snapshot(Collector):
    """A collector of one snapshot's metrics (rendered away from the leader's loop)."""

    def __init__(self, snapshot: MetricsSnapshot) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        return metric_families(self._snapshot)


def render(snapshot: MetricsSnapshot) -> bytes:
    """``snapshot`` in Prometheus' text format (:data:`CONTENT_TYPE_LATEST`); it reads
    only the snapshot, so it may run in a worker thread."""
    return generate_latest(_Snapshot(snapshot))


class LeaderCollector(Collector):
    """Reads ``leader``'s statistics when scraped, as Prometheus metrics (see the module's
    text for what is exported).

    Args:
      leader: the leader to read (on its own loop).
      max_subjects: subjects exported at most.
      max_groups: groups exported at most.
    """

    def __init__(
        self,
        leader: Leader,
        *,
        max_subjects: int = MAX_METRIC_SUBJECTS,
        max_groups: int = MAX_METRIC_GROUPS,
    ) -> None:
        self.leader = leader
        self.max_subjects = max_subjects
        self.max_groups = max_groups

    def describe(self) -> list[Metric]:
        """Nothing: the registry then asks :meth:`collect` only when scraped."""
        return []

    def snapshot(self) -> MetricsSnapshot:
        """The numbers of a scrape, read now (on the leader's loop): those of the busiest
        subjects and groups, within the bounds."""
        leader = self.leader
        stats = leader.stats_snapshot()  # (shared with the leader's other readers)
        subjects: dict[str, dict[str, Any]] = stats["subjects"]
        groups: dict[str, dict[str, Any]] = stats["groups"]
        listed = subjects
        if len(subjects) > self.max_subjects:
            busiest = heapq.nlargest(
                self.max_subjects,
                subjects,
                key=lambda s: (
                    subjects[s]["queued"] + subjects[s]["in_flight"],
                    subjects[s]["submitted"],
                ),
            )
            listed = {name: subjects[name] for name in busiest}
        listed_groups = groups
        if len(groups) > self.max_groups:
            busiest = heapq.nlargest(
                self.max_groups,
                groups,
                key=lambda g: (groups[g]["workers"], groups[g]["done"] + groups[g]["failed"]),
            )
            listed_groups = {name: groups[name] for name in busiest}
        queues = leader.broker.queues
        group_stats = leader.broker.group_stats
        departed = leader.departed_workers.by_group(trio.current_time())
        return MetricsSnapshot(
            stats=stats,
            subjects=listed,
            groups=listed_groups,
            subject_latency={name: _latency(queues[name]) for name in listed if name in queues},
            group_latency={
                name: _latency(group_stats[name]) for name in listed_groups if name in group_stats
            },
            offline={name: departed[name] for name in listed_groups if name in departed},
        )

    def collect(self) -> Iterator[Metric]:
        """The leader's metrics, read now."""
        return metric_families(self.snapshot())


def metrics_registry(leader: Leader, **limits: int) -> CollectorRegistry:
    """A registry of its own holding a :class:`LeaderCollector` of ``leader`` (``limits``:
    its ``max_subjects``, ``max_groups``): to export a leader's metrics some other way
    (``/metrics`` renders snapshots itself, see :func:`metrics_handler`)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(LeaderCollector(leader, **limits))
    return registry


def metrics_handler(app: HttpApp, **limits: int) -> Handler:
    """The handler of ``GET /metrics`` on ``app``: its leader's metrics in Prometheus'
    text format. (``app`` adds it with ``authenticated=True``: on a leader with users a
    scrape needs ``Authorization: Bearer <token>`` of any identity, as ``/api/`` does.)

    Each scrape takes a :meth:`LeaderCollector.snapshot` on the loop and renders it in a
    worker thread (:func:`render`), one at a time; scrapes within :data:`SCRAPE_INTERVAL`
    of the last rendering get its text.
    """
    leader = app.leader
    collector = LeaderCollector(leader, **limits)
    lock = trio.Lock()
    rendered: tuple[float, bytes] | None = None

    async def metrics(request: Request) -> Response:
        nonlocal rendered
        async with lock:
            now = trio.current_time()
            if rendered is None or now - rendered[0] >= SCRAPE_INTERVAL:
                text = await leader._blocking(render, collector.snapshot())
                rendered = (trio.current_time(), text)
            text = rendered[1]
        return Response(200, text, CONTENT_TYPE_LATEST, (("cache-control", "no-store"),))

    return metrics
