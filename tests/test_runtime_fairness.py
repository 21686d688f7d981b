"""The reader's fairness (``runtime._reader``): a batch is handed over in slices
(``_dispatch_fairly``), doubling while quick, shrinking in proportion while slow; never a
message twice, never one dropped, never out of order. A connection's first slice is small
until it has passed FAIR_TRUST quick batches, a number that doubles after each slow slice
(``Fairness``).

Time is faked: the handler advances a counter that stands for ``time.perf_counter``.
"""

from __future__ import annotations

import attrs
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

import runtime._reader as reader
from runtime._reader import (
    FAIR_FIRST,
    FAIR_SLICE,
    FAIR_TRUST,
    FAIR_TURN,
    Fairness,
    _dispatch_fairly,
)


@attrs.define
class FakeConn:
    closed: bool = False


@attrs.define
class Costly:
    """A handler whose message ``i`` costs ``costs[i]`` seconds of the fake clock."""

    costs: list[float]
    now: float = 0.0
    slices: list[list[int]] = attrs.field(factory=list)
    slow: bool = False

    def clock(self) -> float:
        return self.now

    def __call__(self, batch: list[int]) -> None:
        self.slices.append(list(batch))
        for i in batch:
            self.now += self.costs[i]


async def run(costs: list[float], size: int, monkeypatch) -> tuple[Costly, int, int]:
    handler = Costly(costs)
    monkeypatch.setattr(reader, "_perf_counter", handler.clock)
    checkpoints = 0
    real_checkpoint = trio.lowlevel.checkpoint

    async def counting() -> None:
        nonlocal checkpoints
        checkpoints += 1
        await real_checkpoint()

    monkeypatch.setattr(trio.lowlevel, "checkpoint", counting)
    out = list(range(len(costs)))
    size, slow = await _dispatch_fairly(FakeConn(), handler, out, size)  # type: ignore[arg-type]
    handler.slow = slow
    return handler, size, checkpoints


@given(
    costs=st.lists(st.sampled_from([0.0, 1e-5, 1e-4, 2e-3, 1e-2]), min_size=1, max_size=300),
    size=st.integers(1, FAIR_SLICE),
)
async def test_every_message_is_handed_over_once_in_order(costs, size) -> None:
    with _patched() as monkeypatch:
        handler, new_size, _ = await run(costs, size, monkeypatch)
    assert [i for s in handler.slices for i in s] == list(range(len(costs)))
    assert all(handler.slices)
    assert 1 <= new_size <= FAIR_SLICE


async def test_quick_messages_grow_the_slice_to_its_maximum(monkeypatch) -> None:
    handler, size, checkpoints = await run([0.0] * 200, FAIR_FIRST, monkeypatch)
    assert [len(s) for s in handler.slices] == [FAIR_FIRST, 16, 32, 64, 64, 16]
    assert size == FAIR_SLICE and checkpoints == 0 and not handler.slow
    handler, size, _ = await run([0.0] * 200, FAIR_SLICE, monkeypatch)
    assert [len(s) for s in handler.slices] == [64, 64, 64, 8]


async def test_costly_messages_shrink_the_slice_in_proportion(monkeypatch) -> None:
    cost = FAIR_TURN / 2  # each message alone is over a quarter of a turn (the slow mark)
    handler, size, checkpoints = await run([cost] * 40, FAIR_FIRST, monkeypatch)
    # 8 messages took 4 turns: the next slices hold one message each.
    assert [len(s) for s in handler.slices] == [FAIR_FIRST] + [1] * 32
    assert size == 1 and handler.slow
    assert checkpoints >= 1 + 32 // 3


async def test_a_slow_connection_starts_its_next_batch_with_small_slices(monkeypatch) -> None:
    cost = FAIR_TURN / 2
    handler, size, checkpoints = await run([cost] * 10, 1, monkeypatch)
    assert [len(s) for s in handler.slices] == [1] * 10  # never more than one costly message
    assert size == 1
    assert checkpoints == 3  # after 3, 6 and 9 messages (each turn just over FAIR_TURN)


def test_a_connection_is_trusted_with_whole_batches_after_quick_ones() -> None:
    fair = Fairness()
    firsts = []
    for _ in range(FAIR_TRUST + 1):
        firsts.append(fair.first_slice())
        fair.passed(FAIR_SLICE, slow=False)
    assert firsts == [FAIR_FIRST] * FAIR_TRUST + [FAIR_SLICE]
    fair.passed(1, slow=True)  # a slow slice: small first slices again, trust twice as dear
    assert fair.first_slice() == 1
    for _ in range(2 * FAIR_TRUST):
        fair.passed(FAIR_SLICE, slow=False)
        assert fair.first_slice() in (FAIR_FIRST, FAIR_SLICE)
    assert fair.first_slice() == FAIR_SLICE and fair.trust_after == 2 * FAIR_TRUST


async def test_cheap_batches_between_costly_ones_buy_ever_fewer_long_slices(monkeypatch) -> None:
    """A peer alternating runs of cheap batches and a costly one: a long first slice only
    once it has passed twice as many cheap batches as the time before."""
    fair = Fairness()
    long_slices = []
    for cheap_run in range(40):
        for _ in range(3):  # three cheap batches, then a costly one
            _, size, _ = await run([0.0] * 64, fair.first_slice(), monkeypatch)
            fair.passed(size, slow=False)
        costly, size, _ = await run([0.005] * 64, fair.first_slice(), monkeypatch)
        fair.passed(size, costly.slow)
        if len(costly.slices[0]) > FAIR_FIRST:
            long_slices.append(cheap_run)
    # Trusted after 4 quick batches, then 8, 16, 32...: 3 per round buys only a few.
    assert len(long_slices) <= 3, long_slices


class _patched:
    """A MonkeyPatch usable inside a Hypothesis example (the fixture is function-scoped)."""

    def __enter__(self):
        import pytest

        self.mp = pytest.MonkeyPatch()
        return self.mp

    def __exit__(self, *exc) -> None:
        self.mp.undo()
