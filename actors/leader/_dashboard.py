"""The dashboard's feed: the leader's state pushed on ``$sys.dashboard`` once a second.

The dashboard page (``actors/leader/dashboard/``, served at ``/``) subscribes to
:data:`DASHBOARD_SUBJECT` through the project's JavaScript client, over the HTTP port's
WebSocket (``/ws``, ``actors/leader/_feed.py``); any program may do the
same (every authenticated identity may subscribe to exactly that subject, see
``Leader._subscription_problem``). :class:`DashboardFeed` sends each such subscription a
*snapshot* (:func:`build_snapshot`) once a second, while there is one:

- a snapshot is built at most once per :data:`SNAPSHOT_INTERVAL` for all subscribers, and
  encoded once (every Deliver carries the same bytes), from the statistics the leader
  shares with its other readers (``Leader.stats_snapshot``: not built again for it);
- it is bounded whatever the leader holds: the :data:`MAX_SNAPSHOT_SUBJECTS` busiest
  subjects, the :data:`MAX_SNAPSHOT_GROUPS` busiest groups, the first
  :data:`MAX_SNAPSHOT_WORKERS` workers (the page asks ``/api/workers`` for the others), at
  most :data:`MAX_SNAPSHOT_PATTERNS` patterns of a worker or a group, each cut to
  :data:`MAX_PATTERN_CHARS` characters; counts say what was left out. With the protocol's
  own limits on names (a subject of 4,096 bytes at most) it stays under
  :data:`MAX_SNAPSHOT_BYTES`;
- :class:`History` keeps, in ring buffers, a sample a second of the last
  :data:`HISTORY_LENGTH` seconds (jobs waiting and in flight, jobs finished, latency p50
  and p99 of the jobs finished in that second): a subscription's first snapshot carries
  all of it, the later ones only the newest sample. It is kept while the leader serves
  HTTP (a page that opens shows the last minutes at once), otherwise only while someone
  subscribes.

Only subscriptions to exactly ``$sys.dashboard`` (not in a queue group) receive it, never
a wildcard one such as an admin's ``>`` or ``$sys.>``: a snapshot a second is not what a
subscription to everything asks for. A connection with several such subscriptions gets
one Deliver naming them all (:data:`MAX_WATCHING_SIDS` at most), at most one full snapshot
and one update per second however often it subscribes; a connection that cannot take it
(a smaller frame limit) misses it; one that does not read is a slow consumer, as for any
message.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import attrs
import trio

from protocol import Deliver, Encoded
from runtime import MessageTooLarge

from ._broker import Broker
from ._links import ClientLink, GroupStats
from ._stats import latency_counts, latency_quantile

log = logging.getLogger("actors.leader.dashboard")

#: The subject the snapshots are delivered on.
DASHBOARD_SUBJECT = "$sys.dashboard"
#: Seconds between two snapshots (and two samples of the history).
SNAPSHOT_INTERVAL = 1.0
#: Samples the history keeps (one a second: the last ten minutes).
HISTORY_LENGTH = 600
#: Subjects in a snapshot at most (the busiest: waiting and in flight, then submitted).
MAX_SNAPSHOT_SUBJECTS = 100
#: Worker groups in a snapshot at most (the busiest: workers, in flight, finished).
MAX_SNAPSHOT_GROUPS = 200
#: Workers in a snapshot at most (the first page of ``Leader.worker_list``).
MAX_SNAPSHOT_WORKERS = 200
#: Patterns listed for one worker or group in a snapshot at most.
MAX_SNAPSHOT_PATTERNS = 5
#: Characters of a listed pattern (a longer one is cut, ending with an ellipsis).
MAX_PATTERN_CHARS = 200
#: Characters of a group's state as a cluster said it (``failed: ...``).
MAX_STATE_CHARS = 200
#: Bytes of an encoded snapshot at most, whatever the leader holds (see the module's text).
MAX_SNAPSHOT_BYTES = 2 * 2**20
#: Subscriptions of one connection to ``$sys.dashboard`` that are fed at most.
MAX_WATCHING_SIDS = 64
#: The history's series, in the order of a :class:`Sample`'s fields after ``at``.
HISTORY_SERIES = ("queued", "in_flight", "done", "failed", "p50", "p99")


class DashboardSource(Protocol):
    """What the feed reads of a leader (a :class:`~actors.leader.Leader` is one)."""

    broker: Broker
    scaler: Any

    def stats_snapshot(self, now: float | None = None) -> dict[str, Any]: ...

    def worker_list(
        self,
        *,
        offset: int = 0,
        limit: int = 100,
        group: str | None = None,
        state: str | None = None,
        show_hosts: bool = True,
    ) -> dict[str, Any]: ...


@attrs.frozen
class Sample:
    """One second of the leader's history.

    Attributes:
      at: when (Unix time).
      queued: jobs accepted and not held by a worker (queued, or waiting out a backoff).
      in_flight: jobs held by workers.
      done, failed: jobs finished (by workers) in the second before ``at``.
      p50, p99: latency quantiles (seconds, submit to result) of those jobs, estimated
        from the groups' histograms; None when none finished.
    """

    at: float
    queued: int
    in_flight: int
    done: int
    failed: int
    p50: float | None
    p99: float | None


class History:
    """The last :data:`HISTORY_LENGTH` samples, one a second (ring buffers: the oldest go).

    :meth:`sample` reads the broker's counters, O(groups + workers); the finished jobs and
    latencies of a second are the differences of the groups' counters and histograms
    from one sample to the next. A sample that comes more than two intervals after the
    previous one starts the history again (nothing is drawn across a gap).

    Args:
      length: samples kept at most.
      interval: seconds between samples.
    """

    def __init__(self, length: int = HISTORY_LENGTH, interval: float = SNAPSHOT_INTERVAL) -> None:
        if length < 1 or not interval > 0:
            raise ValueError(f"length must be >= 1 and interval > 0, got {length!r}, {interval!r}")
        self.interval = interval
        self.samples: deque[Sample] = deque(maxlen=length)
        # The counters as of the last sample: (trio time, done, failed, latency counts).
        self._last: tuple[float, int, int, list[int]] | None = None

    def __len__(self) -> int:
        return len(self.samples)

    def sample(self, broker: Broker, now: float, unix_now: float) -> Sample:
        """Add (and return) the sample of ``broker`` at ``now`` (trio's clock;
        ``unix_now``: the same moment in Unix time)."""
        done = failed = 0
        counts = latency_counts()
        highest = 0.0
        for stats in broker.group_stats.values():
            done += stats.done
            failed += stats.failed
            for i, count in enumerate(stats.latency_counts):
                counts[i] += count
            highest = max(highest, stats.latency_max)
        in_flight = sum(len(worker.inflight) for worker in broker.workers)
        queued = max(0, len(broker.jobs) - in_flight)
        last = self._last
        window = GroupStats()
        if last is None or now - last[0] > 2 * self.interval:
            self.samples.clear()  # (a gap: the rates of the first sample are not known)
        else:
            # (a group's counters never go down; a negative difference is a group forgotten)
            window.done = max(0, done - last[1])
            window.failed = max(0, failed - last[2])
            window.latency_counts = [max(0, c - p) for c, p in zip(counts, last[3], strict=True)]
            window.latency_max = highest
        self._last = (now, done, failed, counts)
        sample = Sample(
            at=round(unix_now, 3),
            queued=queued,
            in_flight=in_flight,
            done=window.done,
            failed=window.failed,
            p50=_rounded(latency_quantile(window, 0.5)),
            p99=_rounded(latency_quantile(window, 0.99)),
        )
        self.samples.append(sample)
        return sample

    def series(self, newest_only: bool = False) -> dict[str, Any]:
        """The samples as columns: ``{"interval": s, "at": [...], "queued": [...], ...}``
        (see :data:`HISTORY_SERIES`), the oldest first; only the newest with
        ``newest_only``."""
        samples = list(self.samples)[-1:] if newest_only else list(self.samples)
        columns: dict[str, Any] = {"interval": self.interval, "full": not newest_only}
        columns["at"] = [s.at for s in samples]
        for name in HISTORY_SERIES:
            columns[name] = [getattr(s, name) for s in samples]
        return columns


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 6)


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _patterns(patterns: list[str], total: int | None = None) -> tuple[list[str], int]:
    """At most :data:`MAX_SNAPSHOT_PATTERNS` of ``patterns``, cut, and how many in all."""
    listed = [_cut(p, MAX_PATTERN_CHARS) for p in patterns[:MAX_SNAPSHOT_PATTERNS]]
    return listed, len(patterns) if total is None else total


def _busiest(
    entries: Mapping[str, dict[str, Any]], limit: int, key: Callable[[dict[str, Any]], Any]
) -> dict[str, dict[str, Any]]:
    if len(entries) <= limit:
        return dict(entries)
    names = heapq.nlargest(limit, entries, key=lambda name: key(entries[name]))
    return {name: entries[name] for name in names}


#: What a worker's entry says of where it runs: for admins only.
HOST_FIELDS = ("host", "pid", "peer")


def _without_hosts(listing: dict[str, Any]) -> dict[str, Any]:
    """A page of workers (``worker_list``'s) with :data:`HOST_FIELDS` None."""
    hidden = dict.fromkeys(HOST_FIELDS)
    return dict(listing, workers=[{**w, **hidden} for w in listing["workers"]])


def build_snapshot(
    source: DashboardSource,
    history: History,
    *,
    read_only: bool,
    unix_now: float,
    now: float | None = None,
) -> dict[str, Any]:
    """The dashboard's view of ``source`` (its history left out: see
    :meth:`DashboardFeed.payload`), from the statistics every reader shares
    (``source.stats_snapshot(now)``: its subjects the busiest first), which it copies
    where it cuts them.

    Returns:
      ``{"at": unix time, "node": name, "read_only": bool, "scalable": bool,
      "stats": ..., "workers": ..., "totals": ...}``: ``stats`` are the statistics with
      the :data:`MAX_SNAPSHOT_SUBJECTS` busiest subjects (``subjects_omitted``: how many
      others) and the :data:`MAX_SNAPSHOT_GROUPS` busiest groups (``groups_omitted``),
      each group's ``patterns`` listed in part (``patterns_total``) and its
      ``instances`` (how many its cluster wants) when known; ``workers`` is the first
      page of ``source.worker_list`` (``total`` counts them all), each worker's
      ``subjects`` listed in part, with where it runs (``host``, ``pid``, ``peer``: the
      feed hides them from identities that are not admins, see
      :meth:`DashboardFeed.payload`); ``totals`` sums what was cut (jobs, workers by
      state, subjects and groups in all).
    """
    stats = dict(source.stats_snapshot(now))  # (shared with other readers: not changed)
    subjects: dict[str, dict[str, Any]] = stats["subjects"]
    groups: dict[str, dict[str, Any]] = stats["groups"]
    subjects_total = len(subjects) + stats.get("subjects_omitted", 0)
    sums = stats.get("subject_totals") or {
        key: sum(s[key] for s in subjects.values())
        for key in ("submitted", "done", "failed", "dead")
    }
    totals: dict[str, Any] = {
        "jobs_active": stats["jobs_active"],
        "waiting": stats["waiting"],
        "in_flight": stats["in_flight"],
        "dead_letters": stats["dead_letters"],
        "connections": stats.get("connections", 0),
        "subjects": subjects_total,
        "groups": len(groups),
        "submitted": sums["submitted"],
        "done": sums["done"],
        "failed": sums["failed"],
        "dead": sums["dead"],
        "workers_online": stats.get("workers_online", stats["workers"]),
        "workers_stale": stats.get("workers_stale", 0),
    }
    # (the busiest first already: waiting and in flight, then submitted)
    stats["subjects"] = dict(itertools.islice(subjects.items(), MAX_SNAPSHOT_SUBJECTS))
    stats["subjects_omitted"] = subjects_total - len(stats["subjects"])
    stats.pop("subject_totals", None)
    kept_groups = _busiest(
        groups,
        MAX_SNAPSHOT_GROUPS,
        lambda g: (g["workers"], g["in_flight"], g["done"] + g["failed"]),
    )
    for name, shared in kept_groups.items():
        group = kept_groups[name] = dict(shared)
        group["patterns"], group["patterns_total"] = _patterns(list(group.get("patterns", ())))
        if isinstance(group.get("state"), str):
            group["state"] = _cut(group["state"], MAX_STATE_CHARS)
    stats["groups"] = kept_groups
    stats["groups_omitted"] = len(groups) - len(kept_groups)
    workers = source.worker_list(limit=MAX_SNAPSHOT_WORKERS)
    for worker in workers["workers"]:
        worker["subjects"], worker["subjects_total"] = _patterns(
            worker["subjects"], worker.get("subjects_total")
        )
    totals["workers_offline"] = max(
        0, workers["total"] - totals["workers_online"] - totals["workers_stale"]
    )
    return {
        "at": round(unix_now, 3),
        "node": stats.get("node"),
        "read_only": read_only,
        "scalable": source.scaler is not None,
        "stats": stats,
        "workers": workers,
        "totals": totals,
    }


@attrs.define(eq=False)
class _Watcher:
    """A connection with subscriptions to ``$sys.dashboard``."""

    #: its subscriptions' sids, and whether each was sent the whole history yet
    sids: dict[int, bool] = attrs.field(factory=dict)
    #: when (trio's clock) it was last sent a whole history
    full_at: float = -math.inf


class DashboardFeed:
    """Sends the snapshots of ``source`` to the subscriptions to ``$sys.dashboard`` (see
    the module's text).

    Args:
      source: the leader.
      keep_history: sample the history every second even while nobody subscribes (a
        leader serving HTTP: a page that opens shows the last minutes).
      read_only: say so in the snapshots (the page hides what it could not do).
      after_send: called after a round of sends (the leader closes the connections that
        proved slow consumers).

    Resource handling: :meth:`run` sends and samples until cancelled; what it holds is
    bounded by the connections that subscribe (:data:`MAX_WATCHING_SIDS` sids each), one
    snapshot in two encodings, and the history.
    """

    def __init__(
        self,
        source: DashboardSource,
        *,
        keep_history: bool,
        read_only: bool = False,
        after_send: Callable[[], None] = lambda: None,
        interval: float = SNAPSHOT_INTERVAL,
        history_length: int = HISTORY_LENGTH,
    ) -> None:
        self.source = source
        self.keep_history = keep_history
        self.read_only = read_only
        self.after_send = after_send
        self.interval = interval
        self.history = History(history_length, interval)
        #: snapshots built (for tests: at most one per interval)
        self.builds = 0
        self._watchers: dict[ClientLink, _Watcher] = {}
        self._wake = trio.Event()
        # The last snapshot: when built (trio's clock), encoded with the whole history
        # and with the newest sample only (each encoded when first needed).
        self._built_at = -math.inf
        self._snapshot: dict[str, Any] | None = None
        self._payloads: dict[tuple[bool, bool], Encoded] = {}

    @property
    def watching(self) -> int:
        """Connections subscribed to ``$sys.dashboard`` (as of the last round)."""
        return len(self._watchers)

    def watch(self, link: ClientLink, sid: int) -> None:
        """``link`` subscribed ``sid`` to ``$sys.dashboard`` (its Subscribe was taken): feed
        it from the next round, which comes at once if it is new."""
        watcher = self._watchers.get(link)
        if watcher is None:
            watcher = self._watchers[link] = _Watcher()
        elif sid not in watcher.sids and len(watcher.sids) >= MAX_WATCHING_SIDS:
            self._prune(link, watcher)
            if len(watcher.sids) >= MAX_WATCHING_SIDS:
                return  # (it holds that many already: this one is not fed)
        watcher.sids[sid] = False
        self._wake.set()

    def _prune(self, link: ClientLink, watcher: _Watcher) -> None:
        """Forget ``watcher``'s sids that are no longer plain subscriptions to the subject."""
        subscriptions = link.subscriptions
        for sid in list(watcher.sids):
            sub = subscriptions.get(sid)
            if sub is None or sub.pattern != DASHBOARD_SUBJECT or sub.queue is not None:
                del watcher.sids[sid]

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Sample the history and send the snapshots, every interval, until cancelled."""
        task_status.started()
        next_round = trio.current_time()
        while True:
            now = trio.current_time()
            if now >= next_round:
                next_round = max(next_round + self.interval, now)  # (no burst after a stall)
                if self.keep_history or self._watchers:
                    self.history.sample(self.source.broker, now, time.time())
                self.send_round(now)
            else:
                self.send_round(now, newcomers_only=True)
            self._wake = trio.Event()
            if self.keep_history or self._watchers:
                with trio.move_on_at(next_round):
                    await self._wake.wait()
            else:  # nobody to send to, nothing to keep: wait for a subscriber
                await self._wake.wait()
                next_round = trio.current_time()

    def send_round(self, now: float, *, newcomers_only: bool = False) -> None:
        """Send every subscription its snapshot: the whole history to those that have not
        had it (at most once an interval per connection), the newest sample to the others
        (unless ``newcomers_only``). Connections with no such subscription left are
        forgotten.

        A round (not ``newcomers_only``: :meth:`run` makes one an interval) builds a
        snapshot of its own, so each update is new to every subscriber: one that came in
        between rounds got a snapshot then, never the same one again. Its updates are not
        held back by when the last ones went (a round a little late, as they all are, would
        put off the next one by a whole interval)."""
        if not newcomers_only:
            self._snapshot = None  # (this round's own)
        sent = False
        for link, watcher in list(self._watchers.items()):
            self._prune(link, watcher)
            if not watcher.sids:
                del self._watchers[link]
                continue
            new = [sid for sid, fed in watcher.sids.items() if not fed]
            old = [sid for sid, fed in watcher.sids.items() if fed]
            if new and now - watcher.full_at >= self.interval:
                watcher.full_at = now
                if self._deliver(link, new, self.payload(now, full=True, hosts=link.admin)):
                    for sid in new:
                        watcher.sids[sid] = True
                sent = True
            if old and not newcomers_only:
                self._deliver(link, old, self.payload(now, full=False, hosts=link.admin))
                sent = True
        if sent:
            self.after_send()

    def payload(self, now: float, *, full: bool, hosts: bool = True) -> Encoded:
        """The snapshot, encoded (with the whole history if ``full``, else the newest
        sample; with where the workers run if ``hosts``, for admins: else their
        ``host``, ``pid`` and ``peer`` are None); built again when the last one is an
        interval old."""
        if self._snapshot is None or now - self._built_at >= self.interval:
            self._snapshot = build_snapshot(
                self.source,
                self.history,
                read_only=self.read_only,
                unix_now=time.time(),
                now=now,
            )
            self._built_at = now
            self._payloads = {}
            self.builds += 1
        payload = self._payloads.get((full, hosts))
        if payload is None:
            snapshot = dict(self._snapshot, history=self.history.series(newest_only=not full))
            if not hosts:
                snapshot["workers"] = _without_hosts(snapshot["workers"])
            payload = self._payloads[full, hosts] = Encoded.of(snapshot)
        return payload

    def _deliver(self, link: ClientLink, sids: list[int], payload: Encoded) -> bool:
        """Send ``link`` one Deliver of ``payload`` naming ``sids``; False if it does not
        fit the connection's frame limit (it misses it)."""
        first, *also = sids
        try:
            link.send(
                Deliver(
                    mid=link.next_mid(),
                    sid=first,
                    subject=DASHBOARD_SUBJECT,
                    payload=payload,
                    also=tuple(also),
                )
            )
        except MessageTooLarge as exc:
            log.debug("%s misses the dashboard's snapshot: %s", link.name, exc)
            return False
        return True
