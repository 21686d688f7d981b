"""Which workers the leader has, and in what state: online, stale or offline.

A connected worker is ``online`` while it is heard from (any frame, a Ping's answer
included: the leader pings a connection idle for a heartbeat), ``stale`` once nothing came
from it for more than :data:`STALE_AFTER` heartbeats (it may be stuck, or its network gone:
the connection is declared dead after three), and ``offline`` once it left.
:class:`DepartedWorkers` remembers those that left, bounded in count and age, so that an
operator sees a worker that went away instead of nothing.

Read on demand: :func:`worker_list` costs O(workers + departed) and builds entries only for
the page it returns.

Bounded in bytes, not only in count: a worker may serve 1,024 patterns of 4,096
characters, so neither a departed worker's record nor a page lists them all. A record
keeps :data:`MAX_DEPARTED_SUBJECTS` of them (1,000 records: a few MB at most, whatever
their workers served), a page lists :data:`MAX_LISTED_SUBJECTS` per worker within
:data:`MAX_LISTED_SUBJECT_BYTES` of JSON; each pattern is cut to
:data:`MAX_SUBJECT_CHARS` characters (``…`` ends a cut one) and ``subjects_total`` says
how many the worker serves. A page of 1,000 workers with names, groups and hosts as long
as allowed and hostile patterns is about 2.7 MB of JSON, built in about 30 ms; under 5 MB
when every character of them needs an escape.
"""

from __future__ import annotations

import json
import math
import time
from collections import OrderedDict, deque
from collections.abc import Iterable
from itertools import islice
from typing import TYPE_CHECKING, Any, Protocol

import attrs
import trio

if TYPE_CHECKING:
    from ._links import WorkerLink

#: Heartbeats of silence after which a connected worker counts as stale.
STALE_AFTER = 1.5
#: Departed workers remembered at most (the oldest are forgotten first).
MAX_DEPARTED_WORKERS = 1000
#: Seconds a departed worker is remembered.
DEPARTED_TTL = 600.0
#: Workers one :func:`worker_list` page holds at most.
MAX_WORKER_PAGE = 1000
#: Subject patterns listed per worker at most (``subjects_total`` says how many it serves).
MAX_LISTED_SUBJECTS = 20
#: Bytes of JSON (quotes and escapes included) of one worker's listed patterns at most:
#: the patterns past it are not listed.
MAX_LISTED_SUBJECT_BYTES = 2048
#: Characters of a pattern listed at most (a longer one is cut, and ends with ``…``).
MAX_SUBJECT_CHARS = 256
#: Subject patterns a departed worker's record keeps at most (cut as listed ones are).
MAX_DEPARTED_SUBJECTS = 5
#: The states a worker may be in.
WORKER_STATES = ("online", "stale", "offline")


@attrs.frozen
class DepartedWorker:
    """What is remembered of a worker that left (its entry in :func:`worker_list`)."""

    name: str
    group: str
    subjects: tuple[str, ...]
    subjects_total: int
    window: int
    host: str | None
    pid: int | None
    peer: str | None
    connected_at: float
    last_heard: float
    left_at: float
    #: when it left, on trio's clock (its age is measured on it)
    left_clock: float

    def entry(self, *, show_hosts: bool = True) -> dict[str, Any]:
        """Its :func:`worker_list` entry (``host``, ``pid`` and ``peer`` None unless
        ``show_hosts``)."""
        return {
            "name": self.name,
            "group": self.group,
            "subjects": list(self.subjects),
            "subjects_total": self.subjects_total,
            "window": self.window,
            "in_flight": 0,
            "host": self.host if show_hosts else None,
            "pid": self.pid if show_hosts else None,
            "peer": self.peer if show_hosts else None,
            "connected_at": self.connected_at,
            "last_heard": self.last_heard,
            "state": "offline",
            "left_at": self.left_at,
        }


class DepartedWorkers:
    """The workers that left in the last :data:`DEPARTED_TTL` seconds, at most
    :data:`MAX_DEPARTED_WORKERS` (the oldest go first), each departure a record of its
    own, with :data:`MAX_DEPARTED_SUBJECTS` of its patterns. Workers may share a name and
    group (two processes started alike): each connection that ends is remembered, and a
    worker that connects with a name and group forgets the latest departure of that name
    and group only (:meth:`forget`: it came back), not the others'.

    Args:
      capacity: workers remembered at most.
      ttl: seconds one is remembered.
    """

    def __init__(self, *, capacity: int = MAX_DEPARTED_WORKERS, ttl: float = DEPARTED_TTL) -> None:
        if capacity < 0 or not ttl >= 0:
            raise ValueError(f"capacity and ttl must be >= 0, got {capacity!r}, {ttl!r}")
        self.capacity = capacity
        self.ttl = ttl
        # departure number -> its record, oldest departure first
        self._entries: OrderedDict[int, DepartedWorker] = OrderedDict()
        # (group, name) -> the numbers of its departures remembered, oldest first
        self._by_name: dict[tuple[str, str], deque[int]] = {}
        self._departures = 0

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, worker: WorkerLink, now: float, unix_now: float) -> None:
        """Remember ``worker``, which left at ``now`` (trio's clock; ``unix_now``: the same
        moment in Unix time)."""
        self.expire(now)
        if not self.capacity:
            return
        while len(self._entries) >= self.capacity:
            self._drop_oldest()
        meta = worker.meta
        number = self._departures
        self._departures += 1
        self._entries[number] = DepartedWorker(
            name=worker.name,
            group=worker.group,
            subjects=listed_subjects(worker.patterns, MAX_DEPARTED_SUBJECTS),
            subjects_total=len(worker.patterns),
            window=worker.window,
            host=meta.get("host"),
            pid=meta.get("pid"),
            peer=worker.peer,
            connected_at=worker.connected_at,
            last_heard=_unix_time(worker.last_heard(), now, unix_now),
            left_at=unix_now,
            left_clock=now,
        )
        self._by_name.setdefault((worker.group, worker.name), deque()).append(number)

    def forget(self, group: str, name: str) -> None:
        """A worker of this name and group connected: the latest departure of that name
        and group is not offline any more (it came back)."""
        key = (group, name)
        numbers = self._by_name.get(key)
        if numbers:
            del self._entries[numbers.pop()]
            if not numbers:
                del self._by_name[key]

    def expire(self, now: float) -> None:
        """Forget the workers that left more than ``ttl`` seconds before ``now``."""
        entries = self._entries
        horizon = now - self.ttl
        while entries:
            oldest = next(iter(entries.values()))
            if oldest.left_clock >= horizon:
                break
            self._drop_oldest()

    def _drop_oldest(self) -> None:
        _, record = self._entries.popitem(last=False)
        key = (record.group, record.name)
        numbers = self._by_name[key]
        numbers.popleft()  # (the oldest departure of all is the oldest of its name)
        if not numbers:
            del self._by_name[key]

    def by_group(self, now: float) -> dict[str, int]:
        """How many are remembered at ``now``, by group: O(those remembered)."""
        self.expire(now)
        counts: dict[str, int] = {}
        for departed in self._entries.values():
            counts[departed.group] = counts.get(departed.group, 0) + 1
        return counts

    def newest_first(self, now: float) -> list[DepartedWorker]:
        """Those remembered at ``now``, the last to leave first."""
        self.expire(now)
        return list(reversed(self._entries.values()))


def listed_subjects(
    patterns: Iterable[str],
    count: int = MAX_LISTED_SUBJECTS,
    max_bytes: int = MAX_LISTED_SUBJECT_BYTES,
) -> tuple[str, ...]:
    """The first ``count`` of ``patterns`` as a listing shows them: each cut to
    :data:`MAX_SUBJECT_CHARS` characters (a cut one ends with ``…``), and no more of them
    than fit in ``max_bytes`` of JSON (quotes, commas and escapes counted)."""
    listed = []
    spent = 1  # (the brackets; each pattern adds its comma)
    for pattern in islice(patterns, count):
        if len(pattern) > MAX_SUBJECT_CHARS:
            pattern = pattern[:MAX_SUBJECT_CHARS] + "…"
        if (
            pattern.isascii()
            and pattern.isprintable()
            and '"' not in pattern
            and "\\" not in pattern
        ):
            size = len(pattern) + 3
        else:  # (escapes, UTF-8: up to 6 bytes a character; rare, so measured)
            size = len(json.dumps(pattern, ensure_ascii=False).encode()) + 1
        spent += size
        if spent > max_bytes:
            break
        listed.append(pattern)
    return tuple(listed)


def _unix_time(clock_time: float, now: float, unix_now: float) -> float:
    """A time of trio's clock as Unix time (``now`` and ``unix_now`` being the same
    moment); one that is not finite (a link without a connection) as ``unix_now``."""
    return unix_now - (now - clock_time) if math.isfinite(clock_time) else unix_now


def worker_state(worker: WorkerLink, now: float, heartbeat: float | None) -> str:
    """``"stale"`` if nothing came from connected ``worker`` for more than
    :data:`STALE_AFTER` heartbeats at ``now`` (trio's clock), else ``"online"`` (always,
    without heartbeats: silence then says nothing)."""
    if heartbeat and now - worker.last_heard() > STALE_AFTER * heartbeat:
        return "stale"
    return "online"


def count_worker_states(
    workers: Iterable[WorkerLink], now: float, heartbeat: float | None
) -> dict[str, dict[str, int]]:
    """The connected workers by group: ``{group: {"online": n, "stale": m}}``."""
    counts: dict[str, dict[str, int]] = {}
    for worker in workers:
        group = counts.get(worker.group)
        if group is None:
            group = counts[worker.group] = {"online": 0, "stale": 0}
        group[worker_state(worker, now, heartbeat)] += 1
    return counts


class _Workers(Protocol):
    """The broker, as :func:`worker_list` reads it."""

    @property
    def workers(self) -> Iterable[WorkerLink]: ...


class WorkerSource(Protocol):
    """A :class:`~actors.leader.Leader`, as :func:`worker_list` reads it (described here:
    the leader imports this module)."""

    @property
    def heartbeat(self) -> float | None: ...

    @property
    def broker(self) -> _Workers: ...

    @property
    def departed_workers(self) -> DepartedWorkers: ...


def _live_entry(
    worker: WorkerLink, state: str, now: float, unix_now: float, show_hosts: bool
) -> dict[str, Any]:
    meta = worker.meta
    return {
        "name": worker.name,
        "group": worker.group,
        "subjects": list(listed_subjects(worker.patterns)),
        "subjects_total": len(worker.patterns),
        "window": worker.window,
        "in_flight": len(worker.inflight),
        "host": meta.get("host") if show_hosts else None,
        "pid": meta.get("pid") if show_hosts else None,
        "peer": worker.peer if show_hosts else None,
        "connected_at": worker.connected_at,
        "last_heard": _unix_time(worker.last_heard(), now, unix_now),
        "state": state,
        "left_at": None,
    }


def worker_list(
    leader: WorkerSource,
    *,
    offset: int = 0,
    limit: int = 100,
    group: str | None = None,
    state: str | None = None,
    show_hosts: bool = True,
) -> dict[str, Any]:
    """A page of ``leader``'s workers: the connected ones by group and name, then those
    that left (:class:`DepartedWorkers`), the last to leave first.

    Args:
      leader: the leader (its broker's workers, its departed workers, its heartbeat).
      offset: entries of the whole (filtered) list to skip.
      limit: entries at most (capped at :data:`MAX_WORKER_PAGE`).
      group: only the workers of this group.
      state: only those in this state (``"online"``, ``"stale"`` or ``"offline"``).
      show_hosts: whether the entries say where the workers run (``host``, ``pid``,
        ``peer``): for admins; for other identities they are None.

    Returns:
      ``{"total": n, "offset": offset, "limit": limit, "workers": [...]}``: ``total``
      counts the entries that pass the filters; each entry has the worker's ``name``,
      ``group``, ``subjects`` (its first patterns, cut: see :func:`listed_subjects`;
      ``subjects_total``: how many it serves), ``window``, ``in_flight``, ``host`` and
      ``pid`` (as its Hello said), ``peer`` (``host:port``), ``connected_at`` and
      ``last_heard`` (Unix times), ``state`` and ``left_at`` (Unix time; None while
      connected).

    Raises:
      ValueError: a negative ``offset`` or ``limit``, or an unknown ``state``.
      TypeError: arguments of another type.
    """
    if type(offset) is not int or type(limit) is not int:
        raise TypeError(f"offset and limit must be ints, got {offset!r:.40}, {limit!r:.40}")
    if offset < 0 or limit < 0:
        raise ValueError(f"offset and limit must be >= 0, got {offset}, {limit}")
    if group is not None and type(group) is not str:
        raise TypeError(f"group must be a str, got {type(group).__name__}")
    if state is not None and state not in WORKER_STATES:
        raise ValueError(f"state must be one of {', '.join(WORKER_STATES)}, got {state!r:.40}")
    limit = min(limit, MAX_WORKER_PAGE)
    now = trio.current_time()
    unix_now = time.time()
    heartbeat = leader.heartbeat
    live: list[tuple[WorkerLink, str]] = []
    if state != "offline":
        for worker in leader.broker.workers:
            if group is not None and worker.group != group:
                continue
            worker_is = worker_state(worker, now, heartbeat)
            if state is None or worker_is == state:
                live.append((worker, worker_is))
        live.sort(key=lambda pair: (pair[0].group, pair[0].name))
    departed: list[DepartedWorker] = []
    if state is None or state == "offline":
        departed = [
            d
            for d in leader.departed_workers.newest_first(now)
            if group is None or d.group == group
        ]
    page: list[dict[str, Any]] = [
        _live_entry(worker, worker_is, now, unix_now, show_hosts)
        for worker, worker_is in live[offset : offset + limit]
    ]
    if len(page) < limit:
        start = max(0, offset - len(live))
        page.extend(
            d.entry(show_hosts=show_hosts) for d in departed[start : start + limit - len(page)]
        )
    return {
        "total": len(live) + len(departed),
        "offset": offset,
        "limit": limit,
        "workers": page,
    }
