"""The leader's statistics as a few lines of text, for the cluster's console."""

from __future__ import annotations

from typing import Any


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.1f} ms"


def stats_lines(stats: dict[str, Any]) -> list[str]:
    """Summarize :meth:`actors.Leader.stats`: totals, then a line per subject and per group.

    Example::

        stats: 12 active, 0 waiting, 4 in flight; 2 workers; 0 dead letters; 3 connections
          subject math.square: 1000 submitted, 996 done, 0 failed, 1 redelivered, 0 dead,
            0 queued, 4 in flight; latency avg 2.1 ms, max 9.8 ms
          group square: 2 workers, window 8, 4 in flight, 996 done, 0 failed, 1 redelivered, 0 dead
    """
    lines = [
        (
            f"stats: {stats['jobs_active']} active, {stats['waiting']} waiting, "
            f"{stats['in_flight']} in flight; {stats['workers']} workers; "
            f"{stats['dead_letters']} dead letters; {stats.get('connections', 0)} connections"
        )
    ]
    for subject, s in sorted(stats["subjects"].items()):
        lines.append(
            f"  subject {subject}: {s['submitted']} submitted, {s['done']} done, "
            f"{s['failed']} failed, {s['redelivered']} redelivered, {s['dead']} dead, "
            f"{s['cancelled']} cancelled, {s['queued']} queued, {s['in_flight']} in flight; "
            f"latency avg {_ms(s['latency_avg'])}, max {_ms(s['latency_max'] if s['done'] + s['failed'] else None)}"
        )
    for name, g in sorted(stats["groups"].items()):
        lines.append(
            f"  group {name}: {g['workers']} workers, window {g['window']}, "
            f"{g['in_flight']} in flight, {g['done']} done, {g['failed']} failed, "
            f"{g['redelivered']} redelivered, {g['dead']} dead"
        )
    return lines
