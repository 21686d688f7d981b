"""Subject permissions (``protocol.Permissions``): allow and deny lists, as NATS has them.

The set questions (does one pattern cover another, do two overlap) are checked against
brute force over a small universe of subjects, with hypothesis.
"""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import (
    InvalidSubject,
    Permissions,
    is_reserved,
    pattern_covers,
    patterns_overlap,
    subject_matches,
)

TOKENS = ["a", "b", "$x"]
#: every subject of one to three tokens from TOKENS
SUBJECTS = [".".join(t) for n in (1, 2, 3) for t in itertools.product(TOKENS, repeat=n)]
#: four-token subjects, so that ``>`` is seen to match more than three
LONG = [".".join(t) for t in itertools.product(["a", "b"], repeat=4)]

pattern_token = st.sampled_from(["a", "b", "*"])


@st.composite
def patterns(draw: st.DrawFn) -> str:
    tokens = draw(st.lists(pattern_token, min_size=1, max_size=3))
    if draw(st.booleans()):
        tokens[-1] = ">"
    return ".".join(tokens)


def matched(pattern: str) -> set[str]:
    return {s for s in SUBJECTS + LONG if subject_matches(pattern, s)}


@settings(max_examples=400, deadline=None)
@given(patterns(), patterns())
def test_covers_and_overlap_agree_with_the_subjects_they_match(outer, inner):
    assert pattern_covers(outer, inner) == (matched(inner) <= matched(outer))
    assert patterns_overlap(outer, inner) == bool(matched(inner) & matched(outer))
    assert patterns_overlap(outer, inner) == patterns_overlap(inner, outer)


@settings(max_examples=300, deadline=None)
@given(st.lists(patterns(), max_size=3), st.lists(patterns(), max_size=2), patterns())
def test_allows_covers_and_may_subscribe_follow_allow_and_deny(allow, deny, pattern):
    perms = Permissions.parse([*allow, *(f"!{p}" for p in deny)])
    allowed = {
        s
        for s in SUBJECTS + LONG
        if any(subject_matches(p, s) for p in allow)
        and not any(subject_matches(p, s) for p in deny)
    }
    for subject in SUBJECTS + LONG:
        assert perms.allows(subject) == (subject in allowed and not is_reserved(subject))
    # serving needs every subject of the pattern allowed: nothing of it denied
    if perms.covers(pattern):
        assert matched(pattern) <= allowed
    if any(pattern_covers(p, pattern) for p in allow) and matched(pattern) <= allowed:
        assert perms.covers(pattern)
    # a subscription stands unless nothing of it could be delivered by the lists' shape
    if perms.may_subscribe(pattern):
        assert any(pattern_covers(p, pattern) for p in allow)
        assert not any(pattern_covers(p, pattern) for p in deny)


def test_the_issue_example():
    perms = Permissions.parse(["events.>", "!events.audit.>"], what="subscribe")
    assert perms.allows("events.web.click")
    assert not perms.allows("events.audit.login")
    assert not perms.allows("other")
    assert perms.may_subscribe("events.>")  # stands, filtered
    assert perms.filters("events.>")
    assert not perms.may_subscribe("events.audit.>")
    assert not perms.may_subscribe(">")
    assert perms.covers("events.web.>")
    assert not perms.covers("events.>")  # (a worker would be sent audit jobs)
    assert perms.as_list() == ["events.>", "!events.audit.>"]


def test_empty_allows_nothing_and_all_allows_everything_but_reserved():
    assert not Permissions.NONE.allows("a")
    assert not Permissions.parse([]).covers("a")
    assert Permissions.ALL.allows("a.b.c") and Permissions.ALL.everything
    assert not Permissions.ALL.allows("$dlq.a")
    assert not Permissions.ALL.covers("$dlq.>")
    assert not Permissions.ALL.may_subscribe("$dlq.>")


@pytest.mark.parametrize("bad", [["a..b"], ["!"], ["a b"], ["a.>.b"], ["!a.>.b"], [""]])
def test_a_bad_pattern_is_named(bad):
    with pytest.raises(InvalidSubject, match="serve"):
        Permissions.parse(bad, what="serve")


def test_a_string_is_not_a_list():
    with pytest.raises(TypeError, match="list of patterns"):
        Permissions.parse("img.>", what="submit")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        Permissions.parse([1], what="submit")  # type: ignore[list-item]


def test_the_answer_cache_is_bounded():
    perms = Permissions.parse(["a.*"])
    for i in range(10_000):
        perms.allows(f"a.{i}")
    assert len(perms._cache) <= 4096
