"""A bounded cache of recently seen ids, with a time to live; time comes in as an argument.

Used wherever a redelivered message must not be acted on twice: a worker remembers the job
ids it ran, a leader remembers finished jobs together with their results so that a
resubmission gets the stored result. The cache reads no clock: every call takes ``now``
(``trio.current_time()`` in the runtime, any number in a test), so it works sans-I/O.
"""

from __future__ import annotations

import collections
from typing import Any, Generic, TypeVar

import attrs

K = TypeVar("K")
V = TypeVar("V")


def _positive_int(instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{attribute.name} must be an int >= 1, got {value!r}")


def _positive(instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not value > 0:
        raise ValueError(f"{attribute.name} must be > 0, got {value!r}")


_INF = float("inf")


# on_setattr=NO_OP: validators check the settings once; every operation updates
# ``_last_now`` and must stay cheap (the leader calls this once per job).
@attrs.define(eq=False, on_setattr=attrs.setters.NO_OP)
class DedupCache(Generic[K, V]):
    """Remember up to ``capacity`` keys, each for ``ttl`` seconds after it was last added.

    Every operation is O(1) (expiry amortised): entries sit in an ordered dict in the order
    they were added, which is also the order in which they expire because the TTL is the
    same for all, so expired entries are always at the front.

    A key is alive while ``now < added_at + ttl``. When a new key arrives and the cache is
    full, the oldest entry is evicted (counted in ``evicted``): a bounded cache can forget
    an id early, and the capacity should cover the ids expected within one TTL.

    ``now`` must never go backwards between calls (use one monotonic clock).

    Args:
      capacity: the most entries held at once.
      ttl: how long an entry lives after its last :meth:`add`, in seconds.
      max_bytes: the most bytes held at once, counting the ``size`` given to each
        :meth:`add` (None: no limit); past it the oldest entries are evicted.

    Attributes:
      evicted: how many live entries were dropped early because the cache was full.
      bytes: the sizes of the entries held, added up.
    """

    capacity: int = attrs.field(validator=_positive_int)
    ttl: float = attrs.field(converter=float, validator=_positive)
    max_bytes: int | None = attrs.field(default=None, kw_only=True)
    evicted: int = attrs.field(default=0, init=False)
    bytes: int = attrs.field(default=0, init=False)
    _entries: collections.OrderedDict[K, tuple[float, V | None, int]] = attrs.field(
        init=False, factory=collections.OrderedDict
    )
    _last_now: float = attrs.field(default=float("-inf"), init=False)
    # No entry expires before this time (a lower bound: removing or refreshing the oldest
    # entry leaves it early, and purge then finds the true one), so most calls return at once.
    _next_expiry: float = attrs.field(default=float("inf"), init=False)

    def add(self, key: K, now: float, value: V | None = None, size: int = 0) -> bool:
        """Add ``key`` (with an optional ``value`` of ``size`` bytes), or refresh it.

        Refreshing restarts the key's TTL at ``now`` and replaces its value. An entry
        larger than ``max_bytes`` by itself is not kept (its key is forgotten).

        Returns:
          True if the key was new (absent or expired), False if it was alive already.

        Raises:
          ValueError: if ``now`` is earlier than the ``now`` of a previous call.
        """
        if now >= self._next_expiry or now < self._last_now:
            self.purge(now)
        else:
            self._last_now = now  # (purge's own fast path, without the call: once per job)
        entries = self._entries
        old = entries.pop(key, None)
        fresh = old is None
        if old is not None:
            self.bytes -= old[2]
        if fresh and len(entries) >= self.capacity:
            self.bytes -= entries.popitem(last=False)[1][2]
            self.evicted += 1
        if self.max_bytes is not None and self.bytes + size > self.max_bytes:
            while entries and self.bytes + size > self.max_bytes:
                self.bytes -= entries.popitem(last=False)[1][2]
                self.evicted += 1
            if size > self.max_bytes:
                return fresh
        entries[key] = (now, value, size)
        self.bytes += size
        if self._next_expiry == _INF:
            self._next_expiry = now + self.ttl
        return fresh

    def seen(self, key: K, now: float) -> bool:
        """Return True if ``key`` was added less than ``ttl`` seconds before ``now``."""
        self.purge(now)
        return key in self._entries

    def get(self, key: K, now: float, default: Any = None) -> V | Any:
        """Return the value stored with ``key``, or ``default`` if it is absent or expired.

        A key added without a value returns ``None``; use :meth:`seen` to tell a key
        stored with no value from an absent one.
        """
        if now >= self._next_expiry or now < self._last_now:
            self.purge(now)
        else:
            self._last_now = now
        entry = self._entries.get(key)
        return default if entry is None else entry[1]

    def peek(self, key: K, default: Any = None) -> V | Any:
        """The value stored with ``key`` (expired or not: no time is given, nothing is
        purged), or ``default``."""
        entry = self._entries.get(key)
        return default if entry is None else entry[1]

    def discard(self, key: K) -> None:
        """Forget ``key`` if present."""
        entry = self._entries.pop(key, None)
        if entry is not None:
            self.bytes -= entry[2]

    def purge(self, now: float) -> int:
        """Drop every entry expired at ``now``; return how many were dropped.

        The other methods call this themselves; call it directly only to free memory
        early or before reading ``len()``.

        Raises:
          ValueError: if ``now`` is earlier than the ``now`` of a previous call.
        """
        if now < self._last_now:
            raise ValueError(f"time went backwards: now={now!r} after {self._last_now!r}")
        self._last_now = now
        if now < self._next_expiry:
            return 0
        entries = self._entries
        ttl = self.ttl
        dropped = 0
        while entries:
            expires = next(iter(entries.values()))[0] + ttl
            if expires > now:
                self._next_expiry = expires
                return dropped
            self.bytes -= entries.popitem(last=False)[1][2]
            dropped += 1
        self._next_expiry = _INF
        return dropped

    def __len__(self) -> int:
        """The number of entries held, including expired ones not purged yet."""
        return len(self._entries)
