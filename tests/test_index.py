"""SubjectIndex: conformance through the trie, registrations, pruning, cache, properties."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, invariant, rule

import protocol._index
from protocol import InvalidSubject, SubjectIndex, subject_matches

CASES = json.loads((Path(__file__).parent / "data" / "nats_subject_cases.json").read_text("utf-8"))


def trie_is_empty(index: SubjectIndex) -> bool:
    # White-box: "remove prunes empty nodes" is only visible inside.
    return index._root.is_empty()


def expected_matches(registrations: set[tuple[str, object]], subject: object) -> Counter:
    return Counter(value for pattern, value in registrations if subject_matches(pattern, subject))


# --- conformance -------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES["match"], ids=lambda case: " ".join(map(repr, case)))
def test_conformance_match_alone(case: list) -> None:
    pattern, subject, expected = case
    index = SubjectIndex()
    index.add(pattern, "v")
    assert index.match(subject) == (("v",) if expected else ())


def test_conformance_all_patterns_in_one_index() -> None:
    index = SubjectIndex()
    for pattern, _subject, _expected in CASES["match"]:
        index.add(pattern, pattern)
    for pattern, subject, expected in CASES["match"]:
        found = index.match(subject)
        assert (pattern in found) is expected, (pattern, subject)
        assert Counter(found) == Counter(p for p in index.patterns() if subject_matches(p, subject))


# --- registrations -----------------------------------------------------------------------


def test_add_match_remove() -> None:
    index = SubjectIndex()
    assert len(index) == 0
    assert index.add("time.*.east", "a") is True
    assert index.add("time.us.>", "b") is True
    assert index.add("time.us.east", "c") is True
    assert index.add(">", "d") is True
    assert len(index) == 4
    assert sorted(index.match("time.us.east")) == ["a", "b", "c", "d"]
    assert sorted(index.match("time.eu.east")) == ["a", "d"]
    assert sorted(index.match("time.us.east.atlanta")) == ["b", "d"]
    assert index.match("time.us") == ("d",)
    assert index.remove("time.us.>", "b") is True
    assert sorted(index.match("time.us.east")) == ["a", "c", "d"]
    assert len(index) == 3


def test_same_registration_twice_is_kept_once() -> None:
    index = SubjectIndex()
    assert index.add("a.*", 1) is True
    assert index.add("a.*", 1) is False
    assert len(index) == 1
    assert index.match("a.b") == (1,)
    assert index.remove("a.*", 1) is True
    assert index.remove("a.*", 1) is False
    assert len(index) == 0


def test_a_value_is_returned_once_per_matching_registration() -> None:
    index = SubjectIndex()
    for pattern in ["math.square", "math.*", "math.>", ">", "other.>"]:
        index.add(pattern, "worker")
    assert index.match("math.square") == ("worker",) * 4
    index.add("math.square", "other worker")
    assert Counter(index.match("math.square")) == {"worker": 4, "other worker": 1}


def test_results_are_tuples_and_empty_when_nothing_matches() -> None:
    index = SubjectIndex()
    index.add("a.b", 1)
    assert index.match("a.b") == (1,)
    assert isinstance(index.match("a.b"), tuple)
    assert index.match("a.c") == ()
    assert index.match("a") == ()
    assert index.match("a.b.c") == ()


def test_gt_needs_at_least_one_more_token() -> None:
    index = SubjectIndex()
    index.add("a.>", 1)
    index.add("a.*.>", 2)
    assert index.match("a") == ()
    assert index.match("a.b") == (1,)
    assert sorted(index.match("a.b.c")) == [1, 2]


def test_wildcard_characters_inside_tokens_are_literal() -> None:
    index = SubjectIndex()
    index.add("a*b", 1)
    index.add("foo.>x", 2)
    assert index.match("axb") == ()
    assert index.match("a*b") == (1,)
    assert index.match("foo.bar") == ()
    assert index.match("foo.>x") == (2,)


@pytest.mark.parametrize(
    "subject", ["", "a..b", ".a", "a.", "a.*", ">", "a b", "a.\0", None, 3, b"a.b", ["a"], {}]
)
def test_invalid_subjects_match_nothing(subject: object) -> None:
    index = SubjectIndex()
    index.add(">", 1)
    index.add("*", 2)
    index.add("a.*", 3)
    assert index.match(subject) == ()
    assert index.match(subject) == ()  # also when asked again (cache)


@pytest.mark.parametrize("pattern", ["", "a..b", "a.>.b", ">.>", "a b", "\t", "x\0", None, 5])
def test_add_refuses_invalid_patterns(pattern: object) -> None:
    index = SubjectIndex()
    with pytest.raises(InvalidSubject, match=r"^invalid pattern "):
        index.add(pattern, 1)
    assert len(index) == 0
    assert list(index.patterns()) == []
    assert trie_is_empty(index)


def test_add_refuses_unhashable_values_without_leaving_a_trace() -> None:
    index = SubjectIndex()
    with pytest.raises(TypeError):
        index.add("a.b.c", [])
    assert len(index) == 0
    assert list(index.patterns()) == []
    assert trie_is_empty(index)


@pytest.mark.parametrize(
    ("pattern", "value"),
    [("a.b", 2), ("a.c", 1), ("a.>.b", 1), ("", 1), (None, 1), (["a"], 1), ("a.b", [1])],
)
def test_remove_of_what_is_not_registered_returns_false(pattern: object, value: object) -> None:
    index = SubjectIndex()
    index.add("a.b", 1)
    assert index.remove(pattern, value) is False
    assert len(index) == 1
    assert index.match("a.b") == (1,)


def test_patterns_lists_each_pattern_once_in_order_of_first_registration() -> None:
    index = SubjectIndex()
    for pattern, value in [("b.>", 1), ("a", 1), ("b.>", 2), ("*", 3), ("a", 4)]:
        index.add(pattern, value)
    assert list(index.patterns()) == ["b.>", "a", "*"]
    index.remove("b.>", 1)
    assert list(index.patterns()) == ["b.>", "a", "*"]
    index.remove("b.>", 2)
    assert list(index.patterns()) == ["a", "*"]


def test_patterns_may_be_iterated_while_the_index_changes() -> None:
    index = SubjectIndex()
    for pattern in ["a", "b", "c"]:
        index.add(pattern, 0)
    for pattern in index.patterns():
        index.remove(pattern, 0)
    assert len(index) == 0


def _edges(index: SubjectIndex) -> dict:
    """The trie's shape, white-box: {edge text: {child edge text: ...}}."""
    shape: dict = {}
    stack = [(index._root, shape)]
    while stack:
        node, out = stack.pop()
        for child in (node.children or {}).values():
            out[child.label] = {}
            stack.append((child, out[child.label]))
    return shape


def test_remove_prunes_nodes_left_empty_and_joins_edges() -> None:
    index = SubjectIndex()
    index.add("a.b.c.d", 1)
    assert _edges(index) == {"a.b.c.d": {}}  # one node for a pattern of four tokens
    index.add("a.b", 2)
    index.add("a.*.>", 3)
    assert _edges(index) == {"a": {"b": {"c.d": {}}, "*": {}}}
    index.remove("a.b.c.d", 1)
    assert _edges(index) == {"a": {"b": {}, "*": {}}}  # "c.d" went
    index.remove("a.*.>", 3)
    assert _edges(index) == {"a.b": {}}  # "a" and "b" joined again: nothing ends between
    index.remove("a.b", 2)
    assert trie_is_empty(index)


def test_edges_are_split_where_patterns_part_and_joined_when_they_go() -> None:
    index = SubjectIndex()
    index.add("a.*.c.d.*.f", 1)
    index.add("a.*.c.x", 2)
    index.add("a.*.c.d.*.f.>", 3)
    index.add("a.*", 4)
    assert _edges(index) == {"a.*": {"c": {"d.*.f": {}, "x": {}}}}
    assert sorted(index.match("a.b.c.d.e.f")) == [1]
    assert sorted(index.match("a.b.c.d.e.f.g")) == [3]
    assert index.match("a.b.c.d.e.g") == ()
    assert index.match("a.b.c.x") == (2,)
    assert index.match("a.b") == (4,)
    index.remove("a.*", 4)
    assert _edges(index) == {"a.*.c": {"d.*.f": {}, "x": {}}}
    index.remove("a.*.c.x", 2)
    assert _edges(index) == {"a.*.c.d.*.f": {}}
    assert index.match("a.b.c.d.e.f") == (1,)
    index.remove("a.*.c.d.*.f", 1)
    assert _edges(index) == {"a.*.c.d.*.f": {}}  # "a.*.c.d.*.f.>" is left
    assert index.match("a.b.c.d.e.f.g") == (3,)
    index.remove("a.*.c.d.*.f.>", 3)
    assert trie_is_empty(index)


def test_repr_is_short() -> None:
    index = SubjectIndex()
    index.add("a.*", 1)
    index.add("a.*", 2)
    assert repr(index) == "<SubjectIndex 1 patterns, 2 registrations>"


# --- cache -------------------------------------------------------------------------------


def test_cache_is_invalidated_by_add_and_remove() -> None:
    index = SubjectIndex()
    assert index.match("a.b") == ()
    index.add("a.b", 1)
    assert index.match("a.b") == (1,)
    index.add("a.*", 2)
    assert sorted(index.match("a.b")) == [1, 2]
    index.add("a.*", 2)  # already there: nothing changes
    assert sorted(index.match("a.b")) == [1, 2]
    index.remove("a.b", 1)
    assert index.match("a.b") == (2,)
    index.remove("a.*", 2)
    assert index.match("a.b") == ()


def test_cache_answers_repeated_lookups_and_stays_bounded() -> None:
    index = SubjectIndex(cache_capacity=3)
    index.add("s.*", 1)
    first = index.match("s.x")
    assert index.match("s.x") is first  # served from the cache, no new tuple
    for n in range(100):
        assert index.match(f"s.{n}") == (1,)
        assert len(index._cache) <= 3


def test_cache_can_be_turned_off() -> None:
    index = SubjectIndex(cache_capacity=0)
    index.add("s.*", 1)
    assert index.match("s.x") == (1,)
    assert index._cache == {}


@pytest.mark.parametrize("capacity", [-1, 1.5, "10"])
def test_cache_capacity_must_be_a_non_negative_int(capacity: object) -> None:
    with pytest.raises((TypeError, ValueError)):
        SubjectIndex(cache_capacity=capacity)


def test_lookup_cost_does_not_grow_with_non_matching_patterns() -> None:
    # Count the trie nodes a lookup touches: 10,000 unrelated patterns add none.
    index = SubjectIndex(cache_capacity=0)
    index.add("svc.*.run", "w")
    before = _nodes_visited(index, "svc.m1.run")
    for n in range(10_000):
        index.add(f"svc.m{n}.other{n}", n)
        index.add(f"other{n}.*.>", n)
    assert index.match("svc.m1.run") == ("w",)
    assert _nodes_visited(index, "svc.m1.run") <= before + 2  # the literal "svc.m1" path


def _nodes_visited(index: SubjectIndex, subject: str) -> int:
    """Nodes walked for ``subject``, counted by a mirror of the lookup (white-box)."""
    tokens = subject.split(".")
    stack = [(index._root, 0)]
    visited = 0
    while stack:
        node, position = stack.pop()
        visited += 1
        if position == len(tokens) or not node.children:
            continue
        for key in (tokens[position], "*"):
            child = node.children.get(key)
            if (
                child is not None
                and protocol._index._end_of(child, tokens, position, len(tokens)) >= 0
            ):
                stack.append((child, position + child.size))
    return visited


# --- properties --------------------------------------------------------------------------

subjects = st.lists(st.sampled_from("abc"), min_size=1, max_size=5).map(".".join)
maybe_invalid_subjects = st.one_of(
    subjects, st.sampled_from(["", "a..b", "a.", "a.*", ">", "a b", "*.a"])
)
patterns = (
    st.builds(
        lambda body, tail: body + tail,
        st.lists(st.sampled_from("ab*"), max_size=4),
        st.sampled_from([[], [], [">"]]),
    )
    .filter(bool)
    .map(".".join)
)
values = st.integers(0, 4)
registrations = st.lists(st.tuples(patterns, values), max_size=25)


@given(registrations, st.lists(maybe_invalid_subjects, min_size=1, max_size=10))
def test_index_agrees_with_subject_matches(regs: list[tuple[str, int]], subs: list[str]) -> None:
    index = SubjectIndex()
    for pattern, value in regs:
        index.add(pattern, value)
    assert len(index) == len(set(regs))
    for subject in subs:
        assert Counter(index.match(subject)) == expected_matches(set(regs), subject)


@given(registrations, st.randoms(use_true_random=False))
def test_adding_then_removing_everything_leaves_the_index_empty(
    regs: list[tuple[str, int]], random: object
) -> None:
    index = SubjectIndex()
    for pattern, value in regs:
        index.add(pattern, value)
    index.match("a.b")  # fill the cache
    unique = list(dict.fromkeys(regs))
    random.shuffle(unique)  # type: ignore[attr-defined]
    for pattern, value in unique:
        assert index.remove(pattern, value) is True
    assert len(index) == 0
    assert list(index.patterns()) == []
    assert trie_is_empty(index)
    assert index.match("a.b") == ()
    assert all(index.remove(pattern, value) is False for pattern, value in unique)


class IndexMachine(RuleBasedStateMachine):
    """Interleaved adds, removes and lookups against a plain set of registrations.

    A tiny cache makes lookups exercise hits, misses, invalidation and overflow.
    """

    registered = Bundle("registered")

    def __init__(self) -> None:
        super().__init__()
        self.index = SubjectIndex(cache_capacity=3)
        self.model: set[tuple[str, int]] = set()

    @rule(target=registered, pattern=patterns, value=values)
    def add(self, pattern: str, value: int) -> tuple[str, int]:
        assert self.index.add(pattern, value) is ((pattern, value) not in self.model)
        self.model.add((pattern, value))
        return (pattern, value)

    @rule(registration=registered)
    def remove_registered(self, registration: tuple[str, int]) -> None:
        assert self.index.remove(*registration) is (registration in self.model)
        self.model.discard(registration)

    @rule(pattern=patterns, value=values)
    def remove_any(self, pattern: str, value: int) -> None:
        assert self.index.remove(pattern, value) is ((pattern, value) in self.model)
        self.model.discard((pattern, value))

    @rule(subject=maybe_invalid_subjects)
    def match(self, subject: str) -> None:
        assert Counter(self.index.match(subject)) == expected_matches(self.model, subject)

    @invariant()
    def sizes_agree(self) -> None:
        assert len(self.index) == len(self.model)
        assert set(self.index.patterns()) == {pattern for pattern, _ in self.model}
        assert trie_is_empty(self.index) is (not self.model)


TestIndexMachine = IndexMachine.TestCase
