"""SubjectIndex against hostile shapes: what its trie costs (nodes, walk, bytes), what its
cache costs (bytes, shared answers), and agreement with a plain matcher for long patterns
that share prefixes and part anywhere (edges split and joined again).

The trie checks are white-box (they read ``_root`` and its nodes): path compression is only
visible inside.
"""

from __future__ import annotations

import gc
import random
import tracemalloc
from collections import Counter
from collections.abc import Callable, Iterable

import pytest
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, initialize, invariant, rule

from protocol import MAX_SUBJECT_TOKENS, SubjectIndex, is_valid_subject
from protocol._index import DEFAULT_CACHE_BYTES, _Node
from tests.test_index import _nodes_visited

KiB = 1024


def reference_matches(pattern: str, subject: str) -> bool:
    """The plainest reading of the rules: ``*`` one token, a final ``>`` one or more."""
    if not is_valid_subject(subject):
        return False
    want, have = pattern.split("."), subject.split(".")
    if want[-1] == ">":
        want = want[:-1]
        if len(have) <= len(want):
            return False
        have = have[: len(want)]
    return len(want) == len(have) and all(w in ("*", h) for w, h in zip(want, have, strict=True))


def expected(registrations: Iterable[tuple[str, object]], subject: str) -> Counter:
    return Counter(value for pattern, value in registrations if reference_matches(pattern, subject))


def check_trie(index: SubjectIndex) -> int:
    """Check the compressed trie's invariants; return its number of nodes (root included).

    - each node's edge check is the one a fresh node with its tokens and depth would have;
    - children are keyed by the first token of their edge;
    - no empty dicts are kept;
    - a node other than the root holds values or has two children or more (edges are
      joined where nothing keeps them apart), so there are at most two nodes a pattern.
    """
    nodes = 0
    stack: list[tuple[_Node, int]] = [(index._root, 0)]
    while stack:
        node, start = stack.pop()
        nodes += 1
        for held in (node.children, node.here, node.rest):
            assert held is None or held, "an empty dict is kept"
        if node is not index._root:
            tokens = node.label.split(".")
            assert len(tokens) == node.size
            fresh = _Node(tokens, start)
            assert (node.kind, node.literals, node.last) == (fresh.kind, fresh.literals, fresh.last)
            assert repr(node.getter) == repr(fresh.getter)  # the same positions
            if node.here is None and node.rest is None:
                assert node.children is not None and len(node.children) >= 2, node
        for key, child in (node.children or {}).items():
            assert child.label.split(".")[0] == key
            stack.append((child, start + node.size))
    assert nodes <= 2 * len(list(index.patterns())) + 1
    return nodes


def traced(build: Callable[[], object]) -> int:
    """Bytes allocated by ``build()`` and still alive after it (what it returns is kept
    alive until measured)."""
    gc.collect()
    tracemalloc.start()
    try:
        kept = build()
        gc.collect()
        size = tracemalloc.get_traced_memory()[0]
        del kept
        return size
    finally:
        tracemalloc.stop()


# --- agreement on long patterns ----------------------------------------------------------


def _mutated(base: list[str], rng: random.Random, choices: str, changes: int) -> list[str]:
    tokens = list(base)
    for _ in range(changes):
        tokens[rng.randrange(len(tokens))] = rng.choice(choices)
    return tokens


def test_long_patterns_that_part_anywhere_agree_with_the_plain_matcher() -> None:
    rng = random.Random(7)
    base = [rng.choice("ab") for _ in range(MAX_SUBJECT_TOKENS)]
    registrations = set()
    for value in range(300):
        tokens = _mutated(base, rng, "ab*", rng.randrange(1, 6))[
            : rng.choice([MAX_SUBJECT_TOKENS, 200, 17, 3])
        ]
        if rng.random() < 0.3:
            tokens[-1] = ">"
        registrations.add((".".join(tokens), value % 40))
    subjects = [
        ".".join(_mutated(base, rng, "abc", rng.randrange(0, 3))[: rng.choice([256, 201, 18, 4])])
        for _ in range(200)
    ]
    subjects += [".".join(base), ".".join(base[:200]), ".".join(base[:201])]
    index = SubjectIndex(cache_capacity=0)
    for pattern, value in registrations:
        index.add(pattern, value)
    check_trie(index)
    for subject in subjects:
        assert Counter(index.match(subject)) == expected(registrations, subject)
    gone = sorted(registrations)[::2]
    for registration in gone:
        assert index.remove(*registration)
    registrations -= set(gone)
    check_trie(index)
    for subject in subjects:
        assert Counter(index.match(subject)) == expected(registrations, subject)
    for registration in registrations:
        assert index.remove(*registration)
    assert index._root.is_empty()


patterns = (
    st.builds(
        lambda body, tail: body + tail,
        st.lists(st.sampled_from(["a", "a", "b", "*", "ab"]), max_size=9),
        st.sampled_from([[], [], [">"]]),
    )
    .filter(bool)
    .map(".".join)
)
subjects = st.one_of(
    st.lists(st.sampled_from(["a", "a", "b", "ab", "c"]), min_size=1, max_size=10).map(".".join),
    st.sampled_from(["", "a..b", "a.*", ">"]),
)


class LongPatternsMachine(RuleBasedStateMachine):
    """Adds, removes and lookups of patterns up to ten tokens that share prefixes (so that
    edges are split and joined again), with caches small in entries and in bytes, and
    values enough for answers that are shared between subjects."""

    registered = Bundle("registered")

    def __init__(self) -> None:
        super().__init__()
        self.model: set[tuple[str, int]] = set()
        self.index = SubjectIndex()

    @initialize(
        capacity=st.sampled_from([0, 2, 4096]),
        budget=st.sampled_from([0, 400, 3000, DEFAULT_CACHE_BYTES]),
    )
    def make(self, capacity: int, budget: int) -> None:
        self.index = SubjectIndex(cache_capacity=capacity, cache_bytes=budget)

    @rule(target=registered, pattern=patterns, value=st.integers(0, 3))
    def add(self, pattern: str, value: int) -> tuple[str, int]:
        assert self.index.add(pattern, value) is ((pattern, value) not in self.model)
        self.model.add((pattern, value))
        return (pattern, value)

    @rule(pattern=patterns, count=st.integers(16, 40))
    def add_many(self, pattern: str, count: int) -> None:
        for value in range(100, 100 + count):
            self.index.add(pattern, value)
            self.model.add((pattern, value))

    @rule(registration=registered)
    def remove(self, registration: tuple[str, int]) -> None:
        assert self.index.remove(*registration) is (registration in self.model)
        self.model.discard(registration)

    @rule(pattern=patterns)
    def remove_pattern(self, pattern: str) -> None:
        for registration in [r for r in self.model if r[0] == pattern]:
            assert self.index.remove(*registration)
            self.model.discard(registration)

    @rule(subject=subjects)
    def match(self, subject: str) -> None:
        found = self.index.match(subject)
        assert Counter(found) == expected(self.model, subject)
        assert self.index.match(subject) == found

    @invariant()
    def trie_and_cache_hold(self) -> None:
        assert len(self.index) == len(self.model)
        check_trie(self.index)
        assert self.index._cache_used <= self.index.cache_bytes
        assert len(self.index._cache) <= self.index.cache_capacity
        for subject, found in self.index._cache.items():
            assert Counter(found) == expected(self.model, subject)


TestLongPatternsMachine = LongPatternsMachine.TestCase


# --- the trie: nodes, walk, bytes --------------------------------------------------------


def _wildcard_patterns(count: int, mismatch_at: int, seed: int = 1) -> list[str]:
    """``count`` patterns of 256 random ``a``/``*`` tokens with a ``b`` at ``mismatch_at``
    (the shape of ``trie_walk`` in test_leader_amplification: they match ``a.a...a``
    everywhere but there)."""
    rng = random.Random(seed)
    found: set[str] = set()
    while len(found) < count:
        tokens = [rng.choice("a*") for _ in range(MAX_SUBJECT_TOKENS)]
        tokens[mismatch_at] = "b"
        found.add(".".join(tokens))
    return sorted(found)


@pytest.mark.parametrize("mismatch_at", [MAX_SUBJECT_TOKENS - 1, MAX_SUBJECT_TOKENS // 2])
def test_a_lookup_walks_at_most_two_nodes_a_pattern_whatever_their_wildcards(
    mismatch_at: int,
) -> None:
    # Uncompressed, each of these 1,000 patterns was 256 nodes, and a lookup of
    # "a.a...a.x" walked some 250,000 of them, one Python step each.
    index = SubjectIndex(cache_capacity=0)
    for value, pattern in enumerate(_wildcard_patterns(1000, mismatch_at)):
        index.add(pattern, value)
    nodes = check_trie(index)
    assert nodes <= 2 * 1000 + 1
    subject = ".".join(["a"] * (MAX_SUBJECT_TOKENS - 1) + ["x"])
    assert index.match(subject) == ()
    assert _nodes_visited(index, subject) <= nodes


def test_the_trie_costs_memory_in_proportion_to_the_patterns_bytes() -> None:
    # Measured before path compression: 52x (distinct tokens), 157x (a/*), 145x (2-char).
    rng = random.Random(3)
    shapes = {
        "distinct tokens": ([".".join(f"s{i}t{j}" for j in range(256)) for i in range(300)], 2),
        "a/* tokens": ([".".join(rng.choice("a*") for _ in range(256)) for _ in range(300)], 6),
        "2-char tokens": (
            [
                ".".join(rng.choice("abcd") + rng.choice("abcd") for _ in range(256))
                for _ in range(300)
            ],
            3,
        ),
    }
    for name, (pattern_list, bound) in shapes.items():
        sent = sum(len(p) for p in pattern_list)

        def build(pattern_list: list[str] = pattern_list) -> SubjectIndex:
            index = SubjectIndex()
            for value, pattern in enumerate(pattern_list):
                index.add(pattern, value)
            return index

        kept = traced(build)
        assert kept <= bound * sent, (name, kept / sent)


# --- the cache: bytes and shared answers -------------------------------------------------


def test_subjects_with_the_same_matches_share_one_answer() -> None:
    index = SubjectIndex()
    for value in range(600):
        index.add(">", value)
    first = index.match("amp.1")
    assert len(first) == 600
    assert all(index.match(f"amp.{n}") is first for n in range(100))
    index.add("amp.7", "mine")  # a change clears the cache: new answers
    assert Counter(index.match("amp.7")) == Counter([*range(600), "mine"])
    assert index.match("amp.1") is index.match("amp.2") is not first


def test_an_answer_larger_than_the_whole_budget_is_not_cached() -> None:
    index = SubjectIndex(cache_bytes=1000)
    for value in range(200):
        index.add("big.>", value)
    assert len(index.match("big.b")) == 200
    assert index._cache == {}
    index.add("small", 1)
    assert index.match("small") == (1,)
    assert list(index._cache) == ["small"]


def _cached_bytes(index: SubjectIndex, subjects: Iterable[str]) -> tuple[int, int]:
    """(largest bytes the cache held, by tracemalloc, its largest estimate) while
    ``subjects`` are looked up (each made here, so that only the cache keeps it)."""
    gc.collect()  # (which empties the free lists of tuples: fill them again, untraced, so
    # that the tuples a lookup makes and drops are not counted as kept while they wait there)
    spare = [(*range(size), object()) for size in range(20) for _ in range(2000)]
    del spare
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        largest = estimate = 0
        for subject in subjects:
            index.match(subject)
            largest = max(largest, tracemalloc.get_traced_memory()[0] - base)
            estimate = max(estimate, index._cache_used)
        return largest, estimate
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize(
    "shape",
    [
        "no match",
        "one match",
        "three patterns",
        "600 shared",
        "101 each its own",
        "16 each its own",
    ],
)
@pytest.mark.parametrize("width", [4, 1000])
def test_the_cache_keeps_within_its_bytes(shape: str, width: int) -> None:
    budget = 256 * KiB
    index = SubjectIndex(cache_capacity=10**9, cache_bytes=budget)
    own = {"101 each its own": 100, "16 each its own": 15}.get(shape)
    if shape == "one match":
        index.add("amp.*", 1)
    elif shape == "three patterns":
        for value, pattern in enumerate(["amp.*", ">", "*.*"]):
            index.add(pattern, value)
    elif shape == "600 shared":
        for value in range(600):
            index.add(">", value)
    elif own is not None:
        for value in range(own):
            index.add(">", value)
        for n in range(3000):
            index.add(f"amp.{n:0{width}}", n)
    largest, estimate = _cached_bytes(index, (f"amp.{n:0{width}}" for n in range(3000)))
    assert estimate <= budget
    assert largest <= 1.1 * budget, largest / budget


@pytest.mark.parametrize("budget", [-1, 1.5, "10"])
def test_cache_bytes_must_be_a_non_negative_int(budget: object) -> None:
    with pytest.raises((TypeError, ValueError)):
        SubjectIndex(cache_bytes=budget)
