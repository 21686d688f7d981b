"""The leader's statistics: counters per subject and per worker group, and totals.

Read on demand (O(subjects + workers + jobs in flight)); the broker only bumps counters on
its hot path (:func:`count_result` for each finished job, which also counts its latency in
a fixed-bucket histogram: a bisection of :data:`LATENCY_BUCKETS` and one list increment).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Collection, Mapping
from typing import TYPE_CHECKING, Any

# (the histograms' shape is the counters', defined with them; also imported from here)
from ._jobs import LATENCY_BUCKETS as LATENCY_BUCKETS
from ._jobs import latency_counts as latency_counts

if TYPE_CHECKING:
    from ._jobs import Counters
    from ._links import GroupStats, SubjectQueue, WorkerLink


def count_result(counters: Counters, ok: bool, latency: float) -> None:
    """Count a finished job in a subject's or a group's statistics (and its latency in
    their histogram)."""
    if ok:
        counters.done += 1
    else:
        counters.failed += 1
    counters.latency_total += latency
    if latency > counters.latency_max:
        counters.latency_max = latency
    counters.latency_counts[bisect_left(LATENCY_BUCKETS, latency)] += 1


def latency_quantile(counters: Counters, q: float) -> float | None:
    """The ``q``-quantile (0 to 1) of the latencies ``counters`` counted, estimated from
    their histogram as Prometheus' ``histogram_quantile`` does: linearly within the bucket
    it falls in (from 0 for the first; the ``+Inf`` bucket ends at the largest latency
    seen), and never over that largest latency. None when nothing was counted."""
    counts = counters.latency_counts
    total = sum(counts)
    if not total:
        return None
    highest = counters.latency_max
    rank = q * total
    below = 0
    for i, count in enumerate(counts):
        if count and below + count >= rank:
            lower = LATENCY_BUCKETS[i - 1] if i else 0.0
            upper = LATENCY_BUCKETS[i] if i < len(LATENCY_BUCKETS) else max(highest, lower)
            estimate = lower + (upper - lower) * max(0.0, rank - below) / count
            return min(estimate, highest)
        below += count
    return highest  # (not reached: rank <= total)


def broker_stats(
    workers: Collection[WorkerLink],
    queues: Mapping[str, SubjectQueue],
    group_stats: Mapping[str, GroupStats],
    *,
    jobs_active: int,
    results_stored: int,
    dead_letters: int,
    retained: int,
) -> dict[str, Any]:
    """Counters per subject and per group, and totals, as :meth:`Broker.stats` returns them.

    Args:
      workers: the connected workers (what they hold is in flight; the rest of the
        active jobs wait).
      queues: the subject queues, by subject.
      group_stats: the counters of each worker group, by name.
      jobs_active: jobs accepted and not finished.
      results_stored: results kept for the dedup window.
      dead_letters: dead letters kept.
      retained: retained messages kept.
    """
    held: dict[str, int] = {}
    for worker in workers:
        for job in worker.inflight.values():
            if job.worker is worker:
                held[job.subject] = held.get(job.subject, 0) + 1
    subjects = {}
    for subject, q in queues.items():
        finished = q.done + q.failed
        subjects[subject] = {
            # waiting: queued, in a sticky backlog, or in backoff (its jobs not held)
            "queued": q.jobs - held.get(subject, 0),
            "in_flight": held.get(subject, 0),
            "submitted": q.submitted,
            "done": q.done,
            "failed": q.failed,
            "redelivered": q.redelivered,
            "dead": q.dead,
            "expired": q.expired,
            "cancelled": q.cancelled,
            "workers": len(q.candidates),
            "latency_avg": q.latency_total / finished if finished else None,
            "latency_max": q.latency_max,
            "latency_p50": latency_quantile(q, 0.5),
            "latency_p99": latency_quantile(q, 0.99),
        }
    groups: dict[str, dict[str, Any]] = {}
    for name, gs in group_stats.items():
        finished = gs.done + gs.failed
        groups[name] = {
            "workers": 0,
            "in_flight": 0,
            "window": 0,
            "assigned": 0,
            "answered": 0,
            "policy": None,
            "mode": None,
            "done": gs.done,
            "failed": gs.failed,
            "redelivered": gs.redelivered,
            "dead": gs.dead,
            "latency_avg": gs.latency_total / finished if finished else None,
            "latency_max": gs.latency_max,
            "latency_p50": latency_quantile(gs, 0.5),
            "latency_p99": latency_quantile(gs, 0.99),
        }
    for worker in workers:
        g = groups[worker.group]
        g["workers"] += 1
        g["in_flight"] += len(worker.inflight)
        g["window"] += worker.window
        g["assigned"] += worker.assigned_total
        g["answered"] += worker.done_total
        g["policy"] = worker.policy
        g["mode"] = worker.mode
        g.setdefault("patterns", {}).update(dict.fromkeys(worker.patterns))
    for g in groups.values():
        g["patterns"] = list(g.get("patterns", ()))  # the subjects its workers serve
    return {
        "jobs_active": jobs_active,
        "waiting": jobs_active - sum(held.values()),
        "in_flight": sum(len(w.inflight) for w in workers),
        "workers": len(workers),
        "results_stored": results_stored,
        "dead_letters": dead_letters,
        "retained": retained,
        "subjects": subjects,
        "groups": groups,
    }
