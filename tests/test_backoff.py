"""Backoff: exact exponential delays, the cap, jitter bounds and determinism, attempts."""

from __future__ import annotations

import random

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from runtime import Backoff


class NoRandom(random.Random):
    def random(self) -> float:
        raise AssertionError("the rng must not be consulted without jitter")


def test_delays_double_from_base_up_to_the_cap_exactly() -> None:
    backoff = Backoff()  # base 1, factor 2, cap 60
    assert [backoff.delay(n) for n in range(1, 9)] == [1, 2, 4, 8, 16, 32, 60, 60]


def test_restart_style_delays_are_exact_and_do_not_touch_the_rng() -> None:
    backoff = Backoff(base=0.1, factor=2, cap=0.5)
    assert [backoff.delay(n, NoRandom()) for n in range(1, 6)] == [0.1, 0.2, 0.4, 0.5, 0.5]


def test_factor_one_gives_a_constant_delay() -> None:
    assert {Backoff(base=3, factor=1).delay(n) for n in range(1, 50)} == {3.0}


def test_huge_attempt_numbers_are_capped_not_overflowing() -> None:
    assert Backoff(base=1, factor=10, cap=30).delay(10_000) == 30
    assert Backoff(base=0, factor=10, cap=30).delay(10_000) == 0


@pytest.mark.parametrize("attempt", [0, -1])
def test_attempts_count_from_one(attempt: int) -> None:
    with pytest.raises(ValueError, match="attempt counts from 1"):
        Backoff().delay(attempt)


def test_exhausted_counts_all_attempts_including_the_first() -> None:
    backoff = Backoff(max_attempts=3)
    assert [backoff.exhausted(n) for n in (1, 2, 3, 4)] == [False, False, True, True]
    assert not Backoff().exhausted(10**9)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"base": -1}, "base"),
        ({"base": float("nan")}, "base"),
        ({"factor": 0.5}, "factor"),
        ({"cap": float("inf")}, "cap"),
        ({"base": 10, "cap": 5}, "cap"),
        ({"jitter": 1.5}, "jitter"),
        ({"jitter": -0.1}, "jitter"),
        ({"max_attempts": 0}, "max_attempts"),
        ({"max_attempts": True}, "max_attempts"),
        ({"max_attempts": 2.5}, "max_attempts"),
    ],
)
def test_invalid_policies_are_refused(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Backoff(**kwargs)


def test_policy_is_a_frozen_value() -> None:
    backoff = Backoff(base=0.5)
    assert backoff == Backoff(base=0.5)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        backoff.base = 2  # type: ignore[misc]


def test_jitter_is_deterministic_given_a_seeded_rng() -> None:
    backoff = Backoff(base=1, cap=100, jitter=0.5)
    first = [backoff.delay(n, random.Random(42)) for n in range(1, 8)]
    again = [backoff.delay(n, random.Random(42)) for n in range(1, 8)]
    other = [backoff.delay(n, random.Random(43)) for n in range(1, 8)]
    assert first == again
    assert first != other


def test_jitter_draws_exactly_one_number_per_delay() -> None:
    backoff = Backoff(base=2, factor=3, cap=1000, jitter=0.25)
    rng, mirror = random.Random(7), random.Random(7)
    for attempt in range(1, 6):
        expected = 2 * 3 ** (attempt - 1) * (1 + 0.25 * (mirror.random() * 2 - 1))
        assert backoff.delay(attempt, rng) == pytest.approx(expected, rel=1e-12)


@given(
    base=st.floats(0.001, 10),
    factor=st.floats(1, 4),
    cap_over_base=st.floats(1, 1000),
    jitter=st.floats(0, 1),
    attempt=st.integers(1, 200),
    seed=st.integers(0, 2**32),
)
def test_jittered_delay_stays_within_the_fraction_and_the_cap(
    base: float, factor: float, cap_over_base: float, jitter: float, attempt: int, seed: int
) -> None:
    backoff = Backoff(base=base, factor=factor, cap=base * cap_over_base, jitter=jitter)
    plain = attrs.evolve(backoff, jitter=0).delay(attempt)
    delay = backoff.delay(attempt, random.Random(seed))
    assert plain * (1 - jitter) - 1e-9 <= delay <= min(plain * (1 + jitter), backoff.cap) + 1e-9
    assert 0 <= delay <= backoff.cap


@given(
    base=st.floats(0, 10),
    factor=st.floats(1, 4),
    cap_over_base=st.floats(1, 1000),
    attempts=st.integers(1, 300),
)
def test_delays_without_jitter_never_decrease(
    base: float, factor: float, cap_over_base: float, attempts: int
) -> None:
    backoff = Backoff(base=base, factor=factor, cap=base * cap_over_base)
    delays = [backoff.delay(n) for n in range(1, attempts + 1)]
    assert delays == sorted(delays)
    assert delays[0] == base
    assert max(delays) <= backoff.cap
