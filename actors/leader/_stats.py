"""The leader's statistics: counters per subject and per worker group, and totals.

Read on demand (O(subjects + workers + jobs in flight)); the broker only bumps counters on
its hot path (:func:`count_result` for each finished job).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._jobs import Counters
    from ._links import GroupStats, SubjectQueue, WorkerLink


def count_result(counters: Counters, ok: bool, latency: float) -> None:
    """Count a finished job in a subject's or a group's statistics."""
    if ok:
        counters.done += 1
    else:
        counters.failed += 1
    counters.latency_total += latency
    if latency > counters.latency_max:
        counters.latency_max = latency


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
