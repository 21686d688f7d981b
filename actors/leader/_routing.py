"""Routing, sans-I/O: which worker of a subject's queue takes the next job.

The policy is that of the subject's first worker: ``round_robin`` gives each worker with
room a turn of a few jobs in a row, ``least_loaded`` picks the worker with the lowest
share of its credit window in use, and ``sticky`` the worker the job's ``key`` header
hashes to (a job whose sticky worker is busy waits for it, in its backlog). The
:class:`~actors.leader.Broker` calls :func:`pick_worker` for every job it hands out (a plain
function, called directly: this is the per-job hot path).
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Iterable

from ._jobs import JobRecord
from ._links import STICKY_HEADER, SubjectQueue, WorkerLink

#: Up to this many workers for a subject, ``least_loaded`` picks the exact least loaded one
#: (a scan); beyond, the less loaded of two random ones with a free slot, so that routing
#: stays O(1) per job in large groups.
EXACT_LEAST_LOADED = 16
#: In ``round_robin``, the most jobs in a row one worker takes before the next worker's
#: turn (and at most a quarter of its credit window: a worker of concurrency 1 to 7 takes
#: one job per turn).
ROUND_ROBIN_TURN = 16
#: Random draws the two-choice pick makes at most before it falls back to the scan.
LEAST_LOADED_SAMPLES = 8


def _least_loaded(workers: Iterable[WorkerLink], enough: int | None = None) -> WorkerLink | None:
    """The worker with the lowest share of its window in use, among ``workers`` with a
    free slot; stop looking once ``enough`` such workers were seen (None: look at all)."""
    best = None
    best_load = 2.0
    found = 0
    for worker in workers:
        held = len(worker.inflight)
        if held < worker.window:
            load = held / worker.window
            if load < best_load:
                best, best_load = worker, load
            found += 1
            if found == enough:
                break
    return best


def _two_choices(candidates: list[WorkerLink], rng: random.Random) -> WorkerLink | None:
    """The less loaded of two random workers with a free slot ("power of two choices":
    nearly as even as the exact minimum, in O(1) per job); None if the draws found none.

    (A function of its own: a generator inside :func:`pick_worker` would turn its locals
    into closure cells and slow down every pick.)"""
    randrange = rng.randrange
    n = len(candidates)
    draws = (candidates[randrange(n)] for _ in range(LEAST_LOADED_SAMPLES))
    return _least_loaded(draws, enough=2)


def pick_worker(queue: SubjectQueue, job: JobRecord, rng: random.Random) -> WorkerLink | None:
    """The worker of ``queue`` to take ``job``, by the policy of the queue's first worker;
    None if no worker has room. A ``sticky`` job's worker is returned even when busy (the
    caller checks its room and puts the job in its backlog); round robin advances the
    queue's turn."""
    candidates = queue.candidates
    n = len(candidates)
    if n == 0:
        return None
    policy = candidates[0].policy
    if policy == "sticky":
        key = job.headers.get(STICKY_HEADER)
        if key is not None:
            return candidates[zlib.crc32(key.encode()) % n]
    elif policy == "least_loaded":
        if n > EXACT_LEAST_LOADED:
            best = _two_choices(candidates, rng)
            if best is not None:
                return best
        return _least_loaded(candidates)
    start = queue.rr
    if start >= n:
        start = 0
    worker = candidates[start]
    held = len(worker.inflight)
    if held < worker.window:  # the usual case: the worker whose turn it is has room
        # Its turn lasts up to a quarter of its window (at most ROUND_ROBIN_TURN jobs),
        # so that a burst of jobs wakes few workers, each with a batch.
        queue.turn += 1
        if queue.turn >= min(ROUND_ROBIN_TURN, worker.window >> 2) or held + 1 >= worker.window:
            queue.turn = 0
            queue.rr = start + 1
        return worker
    queue.turn = 0
    for i in range(1, n):
        worker = candidates[(start + i) % n]
        if len(worker.inflight) < worker.window:
            queue.rr = (start + i + 1) % n
            return worker
    return None
