"""The leader's statistics: counters per subject and per worker group, and totals.

Read on demand (O(subjects + workers + jobs in flight)); the broker only bumps counters on
its hot path (:func:`count_result` for each finished job, which also counts its latency in
a fixed-bucket histogram: a bisection of :data:`LATENCY_BUCKETS` and one list increment).

A subject's or a group's p50 and p99 are estimated from its histogram when it finished
jobs since they were last estimated, else reused (:func:`latency_percentiles`): a snapshot
of 10,000 subjects costs about as much as the counters alone when few of them changed.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Collection, Mapping
from itertools import accumulate
from typing import TYPE_CHECKING, Any

# (the histograms' shape is the counters', defined with them; also imported from here)
from ._jobs import LATENCY_BUCKETS as LATENCY_BUCKETS
from ._jobs import latency_counts as latency_counts
from ._workers import MAX_LISTED_SUBJECTS, listed_subjects

#: Bytes of JSON of the patterns listed per group at most (20 of 256 characters fit).
MAX_GROUP_PATTERN_BYTES = 6 * 1024

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
    cumulative = list(accumulate(counts))
    total = cumulative[-1]
    if not total:
        return None
    rank = q * total
    # (a rank of 0 falls in the first bucket that counted something)
    i = bisect_left(cumulative, rank) if rank > 0 else bisect_right(cumulative, 0)
    return _estimate(cumulative, counts, counters.latency_max, rank, i)


def _estimate(
    cumulative: list[int], counts: list[int], highest: float, rank: float, i: int
) -> float:
    """The latency of ``rank`` (jobs from the fastest), which falls in bucket ``i`` (the
    first whose running total, ``cumulative``, reaches it)."""
    lower = _LOWER[i]
    upper = LATENCY_BUCKETS[i] if i < len(LATENCY_BUCKETS) else max(highest, lower)
    below = cumulative[i - 1] if i else 0
    estimate = lower + (upper - lower) * max(0.0, rank - below) / counts[i]
    return min(estimate, highest)


#: Where each bucket of the histogram starts (the first at 0).
_LOWER = (0.0, *LATENCY_BUCKETS)
_BUCKETS = len(LATENCY_BUCKETS)


def latency_percentiles(counters: SubjectQueue | GroupStats) -> tuple[float | None, float | None]:
    """The p50 and p99 of a subject's or a group's latencies (see
    :func:`latency_quantile`), estimated once per change: they are kept on ``counters``
    (``percentiles``) with the number of jobs they were estimated from, and reused while
    no job finished there (every finished job bumps ``done`` or ``failed``). So a
    snapshot re-estimates only the subjects that finished jobs since the last one: at
    most one estimate (about 1 µs) per finished job, never one per subject per snapshot."""
    finished = counters.done + counters.failed
    seen, p50, p99 = counters.percentiles
    if seen != finished:
        # (latency_quantile's estimate, inlined for both: 1.2 µs instead of 2)
        counts = counters.latency_counts
        cumulative = list(accumulate(counts))
        total = cumulative[-1]
        if total:
            highest = counters.latency_max
            estimates = []
            for rank in (0.5 * total, 0.99 * total):
                i = bisect_left(cumulative, rank)  # (so rank > cumulative[i - 1])
                lower = _LOWER[i]
                upper = LATENCY_BUCKETS[i] if i < _BUCKETS else max(highest, lower)
                below = cumulative[i - 1] if i else 0
                estimate = lower + (upper - lower) * (rank - below) / counts[i]
                estimates.append(min(estimate, highest))
            p50, p99 = estimates
        counters.percentiles = (finished, p50, p99)
    return p50, p99


def add_subject_percentiles(
    subjects: Mapping[str, dict[str, Any]], queues: Mapping[str, SubjectQueue]
) -> None:
    """Set ``latency_p50`` and ``latency_p99`` of the entries of ``subjects`` (those of
    :func:`broker_stats` made without ``subject_percentiles``, or some of them: those a
    caller lists) from their ``queues``."""
    for subject, entry in subjects.items():
        queue = queues.get(subject)
        if queue is not None:
            entry["latency_p50"], entry["latency_p99"] = latency_percentiles(queue)


def broker_stats(
    workers: Collection[WorkerLink],
    queues: Mapping[str, SubjectQueue],
    group_stats: Mapping[str, GroupStats],
    *,
    jobs_active: int,
    results_stored: int,
    dead_letters: int,
    dead_letters_kept: int | None = None,
    retained: int,
    subject_percentiles: bool = True,
) -> dict[str, Any]:
    """Counters per subject and per group, and totals, as :meth:`Broker.stats` returns them.

    Args:
      workers: the connected workers (what they hold is in flight; the rest of the
        active jobs wait).
      queues: the subject queues, by subject.
      group_stats: the counters of each worker group, by name.
      jobs_active: jobs accepted and not finished.
      results_stored: results kept for the dedup window.
      dead_letters: dead letters there are (with a journal: in it, not only those kept
        in memory).
      dead_letters_kept: of those, the ones kept in memory (the newest; default: all).
      retained: retained messages kept.
      subject_percentiles: whether the subjects' ``latency_p50`` and ``latency_p99`` are
        estimated (else None: a caller that lists some of the subjects estimates theirs
        with :func:`add_subject_percentiles`). The groups' always are.
    """
    held: dict[str, int] = {}
    for worker in workers:
        for job in worker.inflight.values():
            if job.worker is worker:
                held[job.subject] = held.get(job.subject, 0) + 1
    subjects = {}
    for subject, q in queues.items():
        finished = q.done + q.failed
        p50, p99 = latency_percentiles(q) if subject_percentiles else (None, None)
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
            "latency_p50": p50,
            "latency_p99": p99,
        }
    groups: dict[str, dict[str, Any]] = {}
    for name, gs in group_stats.items():
        finished = gs.done + gs.failed
        p50, p99 = latency_percentiles(gs)
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
            "latency_p50": p50,
            "latency_p99": p99,
            # (the subjects its workers serve: the first, cut; and how many)
            "patterns": list(
                listed_subjects(gs.patterns, MAX_LISTED_SUBJECTS, MAX_GROUP_PATTERN_BYTES)
            ),
            "patterns_total": len(gs.patterns),
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
    return {
        "jobs_active": jobs_active,
        "waiting": jobs_active - sum(held.values()),
        "in_flight": sum(len(w.inflight) for w in workers),
        "workers": len(workers),
        "results_stored": results_stored,
        "dead_letters": dead_letters,
        "dead_letters_kept": dead_letters if dead_letters_kept is None else dead_letters_kept,
        "retained": retained,
        "subjects": subjects,
        "groups": groups,
    }
