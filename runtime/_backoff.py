"""An exponential backoff policy: how long to wait before the next attempt, and when to stop.

One policy serves every retry loop of the project: the leader's redelivery of unacknowledged
jobs, a client's reconnect, a supervisor's restart of a failing child. It is a value with no
clock and no state; the caller counts attempts and passes the count in.
"""

from __future__ import annotations

import math
import random

import attrs


def _non_negative(instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not value >= 0 or math.isinf(value):
        raise ValueError(f"{attribute.name} must be a finite number >= 0, got {value!r}")


def _at_least_one(instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not 1 <= value < math.inf:
        raise ValueError(f"{attribute.name} must be a finite number >= 1, got {value!r}")


def _fraction(instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not 0 <= value <= 1:
        raise ValueError(f"{attribute.name} must be between 0 and 1, got {value!r}")


def _max_attempts(
    instance: object, attribute: attrs.Attribute[int | None], value: int | None
) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(f"max_attempts must be None or an int >= 1, got {value!r}")


@attrs.frozen
class Backoff:
    """Exponential backoff with a cap, optional jitter and an optional limit of attempts.

    Attempts are counted from 1: after attempt ``n`` failed, wait :meth:`delay` ``(n)``
    before attempt ``n + 1``, unless :meth:`exhausted` ``(n)`` says to give up. Without
    jitter the delays are exactly ``base``, ``base * factor``, ``base * factor**2``, ...,
    never more than ``cap``: with the defaults 1, 2, 4, 8, ... 60 seconds.

    Jitter is a *plus-or-minus fraction*: with ``jitter=0.1`` each delay is drawn uniformly
    from ``[d * 0.9, d * 1.1]`` around the exponential value ``d``, then capped at ``cap``
    (``jitter=1`` spreads it over ``[0, 2d]``). It uses exactly one ``rng.random()`` call
    per delay, so a seeded :class:`random.Random` gives the same delays every time.

    Args:
      base: the first delay, in seconds (>= 0).
      factor: the growth per attempt (>= 1).
      cap: the largest delay, in seconds (>= base).
      jitter: the fraction of random spread, between 0 and 1.
      max_attempts: how many attempts in all (the first one included) before giving up;
        ``None`` never gives up.
    """

    base: float = attrs.field(default=1.0, converter=float, validator=_non_negative)
    factor: float = attrs.field(default=2.0, converter=float, validator=_at_least_one)
    cap: float = attrs.field(default=60.0, converter=float, validator=_non_negative)
    jitter: float = attrs.field(default=0.0, converter=float, validator=_fraction)
    max_attempts: int | None = attrs.field(default=None, validator=_max_attempts)

    def __attrs_post_init__(self) -> None:
        if self.cap < self.base:
            raise ValueError(f"cap ({self.cap}) must be >= base ({self.base})")

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Return how long to wait after failed attempt number ``attempt``.

        Args:
          attempt: the number of the attempt that just failed, from 1.
          rng: the source of jitter; ``None`` uses the :mod:`random` module. Not consulted
            when ``jitter`` is 0.

        Returns:
          The delay in seconds, between 0 and ``cap``.

        Raises:
          ValueError: if ``attempt`` is less than 1.
        """
        if attempt < 1:
            raise ValueError(f"attempt counts from 1, got {attempt!r}")
        try:
            exponential = self.base * self.factor ** (attempt - 1)
        except OverflowError:  # factor ** (attempt - 1) beyond float range
            exponential = math.inf if self.base else 0.0
        delay = min(exponential, self.cap)
        if self.jitter:
            spread = (rng or random).random() * 2 - 1  # uniform in [-1, 1)
            delay = min(delay * (1 + self.jitter * spread), self.cap)
        return delay

    def exhausted(self, attempt: int) -> bool:
        """Return True if no attempt may follow failed attempt number ``attempt``."""
        return self.max_attempts is not None and attempt >= self.max_attempts
