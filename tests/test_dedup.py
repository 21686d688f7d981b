"""DedupCache: TTL boundary, refresh, capacity eviction, stored values, a model check."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from runtime import DedupCache


def test_add_reports_whether_the_key_is_new() -> None:
    cache: DedupCache[str, None] = DedupCache(capacity=10, ttl=5)
    assert cache.add("job-1", now=0.0)
    assert not cache.add("job-1", now=1.0)
    assert cache.seen("job-1", now=1.0)
    assert not cache.seen("job-2", now=1.0)


def test_an_entry_lives_exactly_ttl_seconds() -> None:
    cache: DedupCache[str, None] = DedupCache(capacity=10, ttl=10)
    cache.add("a", now=100.0)
    assert cache.seen("a", now=109.999)
    assert not cache.seen("a", now=110.0)
    assert len(cache) == 0  # the expired entry was dropped, not just hidden
    assert cache.add("a", now=110.0)  # new again


def test_add_refreshes_the_ttl_and_the_eviction_order() -> None:
    cache: DedupCache[str, None] = DedupCache(capacity=2, ttl=10)
    cache.add("a", now=0.0)
    cache.add("b", now=1.0)
    cache.add("a", now=2.0)  # refresh: "b" is now the oldest
    cache.add("c", now=3.0)
    assert [cache.seen(k, now=3.0) for k in "abc"] == [True, False, True]
    assert cache.seen("a", now=11.9)  # lives 10 s from the refresh at 2.0
    assert not cache.seen("a", now=12.0)


def test_capacity_evicts_the_oldest_and_counts_it() -> None:
    cache: DedupCache[int, None] = DedupCache(capacity=3, ttl=60)
    for key in range(5):
        cache.add(key, now=float(key))
        assert len(cache) <= 3
    assert [cache.seen(k, now=5.0) for k in range(5)] == [False, False, True, True, True]
    assert cache.evicted == 2


def test_expired_entries_make_room_without_eviction() -> None:
    cache: DedupCache[int, None] = DedupCache(capacity=2, ttl=1)
    cache.add(1, now=0.0)
    cache.add(2, now=0.5)
    cache.add(3, now=1.0)  # 1 has expired: no live entry is evicted
    assert cache.evicted == 0
    assert cache.seen(2, now=1.0) and cache.seen(3, now=1.0)


def test_stored_values_come_back_until_expiry() -> None:
    cache: DedupCache[str, dict] = DedupCache(capacity=10, ttl=30)
    cache.add("job-7", now=0.0)
    assert cache.get("job-7", now=1.0, default="absent") is None  # seen, no result yet
    cache.add("job-7", now=2.0, value={"square": 49})
    assert cache.get("job-7", now=3.0) == {"square": 49}
    assert cache.get("job-8", now=3.0, default="absent") == "absent"
    assert cache.get("job-7", now=32.0, default="absent") == "absent"


def test_discard_and_purge() -> None:
    cache: DedupCache[str, None] = DedupCache(capacity=10, ttl=5)
    for i, key in enumerate("abcd"):
        cache.add(key, now=float(i))
    cache.discard("b")
    cache.discard("missing")
    assert len(cache) == 3
    assert cache.purge(now=7.0) == 2  # a (0) and c (2) have expired; d (3) lives until 8
    assert len(cache) == 1


def test_time_going_backwards_is_refused() -> None:
    cache: DedupCache[str, None] = DedupCache(capacity=10, ttl=5)
    cache.add("a", now=10.0)
    with pytest.raises(ValueError, match="backwards"):
        cache.seen("a", now=9.0)


@pytest.mark.parametrize(
    ("capacity", "ttl", "match"),
    [
        (0, 1, "capacity must be an int >= 1, got 0"),
        (-1, 1, "capacity must be an int >= 1, got -1"),
        (True, 1, "capacity must be an int >= 1, got True"),
        (1.5, 1, "capacity must be an int >= 1, got 1.5"),
        (10, 0, "ttl must be > 0, got 0"),
        (10, -1, "ttl must be > 0, got -1"),
    ],
)
def test_invalid_limits_are_refused(capacity: object, ttl: float, match: str) -> None:
    with pytest.raises(ValueError, match=re.escape(match)):
        DedupCache(capacity=capacity, ttl=ttl)  # type: ignore[arg-type]


operations = st.lists(
    st.tuples(
        st.sampled_from(["add", "seen", "get"]),
        st.integers(0, 6),  # keys
        st.floats(0, 3, allow_nan=False),  # time step
    ),
    max_size=60,
)


@given(capacity=st.integers(1, 5), ttl=st.floats(0.5, 5), ops=operations)
def test_behaves_like_a_naive_model(capacity: int, ttl: float, ops: list) -> None:
    cache: DedupCache[int, int] = DedupCache(capacity=capacity, ttl=ttl)
    model: dict[int, tuple[float, int | None]] = {}  # key -> (added at, value), by age
    now = 0.0
    for index, (op, key, step) in enumerate(ops):
        now += step
        model = {k: v for k, v in model.items() if v[0] + ttl > now}
        if op == "add":
            fresh = key not in model
            model.pop(key, None)
            if fresh and len(model) >= capacity:
                del model[min(model, key=lambda k: model[k][0])]
            model[key] = (now, index)
            assert cache.add(key, now, value=index) == fresh
        elif op == "seen":
            assert cache.seen(key, now) == (key in model)
        else:
            assert cache.get(key, now, default=-1) == model.get(key, (0, -1))[1]
        assert len(cache) == len(model) <= capacity
