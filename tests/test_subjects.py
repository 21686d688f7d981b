"""Subject and pattern rules: NATS conformance tables, hand-written rules, properties."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol import (
    MAX_SUBJECT_LENGTH,
    MAX_SUBJECT_TOKENS,
    InvalidSubject,
    ProtocolError,
    is_valid_pattern,
    is_valid_subject,
    subject_matches,
    validate_pattern,
    validate_subject,
)
from tests import strategies as sts

# The conformance cases live in the repository (tests/data): a clone is all the tests need.
CASES_FILE = Path(__file__).parent / "data" / "nats_subject_cases.json"
CASES = json.loads(CASES_FILE.read_text(encoding="utf-8"))


def _ids(case: list) -> str:
    return " ".join(repr(x) for x in case)


def test_conformance_file_is_complete() -> None:
    assert sorted(CASES) == ["match", "valid_pattern", "valid_subject"]
    assert sum(len(cases) for cases in CASES.values()) == 215


# --- conformance tables ------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES["match"], ids=_ids)
def test_conformance_match(case: list) -> None:
    pattern, subject, expected = case
    assert is_valid_pattern(pattern)  # the match table holds valid patterns only
    assert subject_matches(pattern, subject) is expected


@pytest.mark.parametrize("case", CASES["valid_subject"], ids=_ids)
def test_conformance_valid_subject(case: list) -> None:
    subject, expected = case
    assert is_valid_subject(subject) is expected
    if expected:
        validate_subject(subject)
    else:
        with pytest.raises(InvalidSubject, match=r"^invalid subject "):
            validate_subject(subject)


@pytest.mark.parametrize("case", CASES["valid_pattern"], ids=_ids)
def test_conformance_valid_pattern(case: list) -> None:
    pattern, expected = case
    assert is_valid_pattern(pattern) is expected
    if expected:
        validate_pattern(pattern)
    else:
        with pytest.raises(InvalidSubject, match=r"^invalid pattern "):
            validate_pattern(pattern)


# --- hand-written rules ------------------------------------------------------------------

FORBIDDEN = {
    " ": "space",
    "\t": "tab",
    "\n": "line feed",
    "\r": "carriage return",
    "\f": "form feed",
    "\0": "NUL",
}


@pytest.mark.parametrize("char", list(FORBIDDEN), ids=list(FORBIDDEN.values()))
@pytest.mark.parametrize(
    "template", ["{}", "{}a", "a{}", "a{}b", "a.{}b", "a.b{}.c", "a.{}.c", "*.{}", "a.{}>"]
)
def test_whitespace_and_nul_are_refused_anywhere(char: str, template: str) -> None:
    text = template.format(char)
    assert not is_valid_subject(text)
    assert not is_valid_pattern(text)
    assert not subject_matches(">", text)
    assert not subject_matches(text, text)
    index = template.index("{}")
    for validate, kind in [(validate_subject, "subject"), (validate_pattern, "pattern")]:
        with pytest.raises(InvalidSubject) as info:
            validate(text)
        assert str(info.value) == (
            f"invalid {kind} {text!r}: {FORBIDDEN[char]} {char!r} at index {index}"
            " (no whitespace or NUL allowed)"
        )


@pytest.mark.parametrize(
    "text",
    [
        "préférences.utilisateur",
        "日本.東京.*x",
        "emoji.🚀.launch",
        "nbsp\u00a0inside",  # only ASCII whitespace is refused, as in nats-server
        "line\u2028separator",
        "control\x01char\x1b",
        "vertical\vtab",  # nats-server refuses only space, tab, CR, LF and FF
        "del\x7f",
        "replacement\ufffd",
        "UPPER.lower.MiXeD",
        "dash-under_score.colon:slash/at@hash#",
        "a*b.foo>.*x.>x.**.>>",  # wildcard characters inside longer tokens are literal
        "x" * MAX_SUBJECT_LENGTH,  # the longest
        "é" * (MAX_SUBJECT_LENGTH // 2),  # as long, in UTF-8 bytes
        ".".join(["t"] * MAX_SUBJECT_TOKENS),  # the most tokens
    ],
)
def test_other_characters_are_allowed(text: str) -> None:
    assert is_valid_subject(text)
    assert is_valid_pattern(text)
    validate_subject(text)
    validate_pattern(text)
    assert subject_matches(text, text)
    assert subject_matches(">", text)


def test_lone_surrogates_are_refused_because_they_cannot_go_on_the_wire() -> None:
    for text in ["a.\ud800", "\udfff", "é\udc80.x"]:
        assert not is_valid_subject(text)
        assert not is_valid_pattern(text)
    with pytest.raises(InvalidSubject, match=r"lone surrogate U\+D800 at index 2"):
        validate_subject("a.\ud800")


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "empty string (at least one token is needed)"),
        (".", "empty token at position 0"),
        (".a", "empty token at position 0"),
        ("a.", "empty token at position 1"),
        ("a..b", "empty token at position 1"),
        ("a.b..", "empty token at position 2"),
        ("*", "wildcard '*' at position 0 (a subject cannot hold wildcards)"),
        ("a.>", "wildcard '>' at position 1 (a subject cannot hold wildcards)"),
        ("a.*.c", "wildcard '*' at position 1 (a subject cannot hold wildcards)"),
    ],
)
def test_invalid_subjects_name_the_problem(text: str, problem: str) -> None:
    assert not is_valid_subject(text)
    with pytest.raises(InvalidSubject) as info:
        validate_subject(text)
    assert str(info.value) == f"invalid subject {text!r}: {problem}"
    assert info.value.message == str(info.value)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "empty string (at least one token is needed)"),
        ("a..b", "empty token at position 1"),
        (">.a", "'>' at position 0 must be the last token"),
        ("a.>.*", "'>' at position 1 must be the last token"),
        (">.>", "'>' at position 0 must be the last token"),
        ("a.>.", "'>' at position 1 must be the last token"),  # first problem, left to right
    ],
)
def test_invalid_patterns_name_the_problem(text: str, problem: str) -> None:
    assert not is_valid_pattern(text)
    with pytest.raises(InvalidSubject) as info:
        validate_pattern(text)
    assert str(info.value) == f"invalid pattern {text!r}: {problem}"


@pytest.mark.parametrize("pattern", ["*", ">", "*.*", "*.>", "a.*.>", "a.*.b.>", "a.b", "a*.b>"])
def test_wildcards_as_whole_tokens_make_valid_patterns(pattern: str) -> None:
    assert is_valid_pattern(pattern)
    assert is_valid_subject(pattern) is (
        "*" not in pattern.split(".") and ">" not in pattern.split(".")
    )


def test_the_error_is_a_protocol_error_and_a_value_error() -> None:
    with pytest.raises(InvalidSubject) as info:
        validate_subject("a..b")
    assert isinstance(info.value, ProtocolError)
    assert isinstance(info.value, ValueError)
    assert info.value.code == "bad_subject"
    assert str(info.value) == "invalid subject 'a..b': empty token at position 1"


def test_long_texts_are_shortened_in_error_messages() -> None:
    text = "a" * 4000 + ".."
    with pytest.raises(InvalidSubject) as info:
        validate_subject(text)
    message = str(info.value)
    assert len(message) < 200
    assert message.endswith("(4002 characters): empty token at position 1")


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("x" * (MAX_SUBJECT_LENGTH + 1), "4097 characters, longer than the limit of 4096 bytes"),
        ("é" * 2049, "4098 bytes in UTF-8, longer than the limit of 4096 bytes"),
        (".".join(["t"] * (MAX_SUBJECT_TOKENS + 1)), "257 tokens, more than the limit of 256"),
        (".".join(["*"] * (MAX_SUBJECT_TOKENS + 1)), "257 tokens, more than the limit of 256"),
        # 100,000 tokens: refused for its length, before any walk over its tokens
        (".".join(["a"] * 100_000), "199999 characters, longer than the limit of 4096 bytes"),
        (
            ".".join(["*"] * 100_000) + ".>",
            "200001 characters, longer than the limit of 4096 bytes",
        ),
        ("a" * 10**7, "10000000 characters, longer than the limit of 4096 bytes"),
    ],
)
def test_subjects_and_patterns_are_bounded(text: str, problem: str) -> None:
    for kind, is_valid, validate in [
        ("pattern", is_valid_pattern, validate_pattern),
        ("subject", is_valid_subject, validate_subject),
    ]:
        assert not is_valid(text)
        assert not subject_matches(text, text) and not subject_matches(">", text)
        with pytest.raises(InvalidSubject) as info:
            validate(text)
        message = str(info.value)
        assert len(message) < 200, message
        if kind == "pattern" or "*" not in text:
            assert message.endswith(f": {problem}"), message


def test_non_strings_are_quoted_safely() -> None:
    # repr() of an int over 4300 digits raises; the error must still be an InvalidSubject.
    for value in (10**5000, [10**5000] * 1000, {"k": "v" * 10**6}):
        with pytest.raises(InvalidSubject, match=r"must be a str, not") as info:
            validate_subject(value)
        assert len(str(info.value)) < 200
        with pytest.raises(InvalidSubject, match=r"must be a str, not"):
            validate_pattern(value)


@pytest.mark.parametrize(
    "value", [None, 1, 1.5, b"foo", bytearray(b"foo"), ["foo"], ("foo",), {"a": 1}, object()]
)
def test_non_strings_are_neither_subjects_nor_patterns(value: object) -> None:
    assert is_valid_subject(value) is False
    assert is_valid_pattern(value) is False
    assert subject_matches(value, "foo") is False
    assert subject_matches(">", value) is False
    assert subject_matches(value, value) is False
    with pytest.raises(
        InvalidSubject, match=rf"^invalid subject .*: must be a str, not {type(value).__name__}$"
    ):
        validate_subject(value)
    with pytest.raises(
        InvalidSubject, match=rf"^invalid pattern .*: must be a str, not {type(value).__name__}$"
    ):
        validate_pattern(value)


def test_str_subclasses_are_checked_like_str() -> None:
    class Name(str):
        pass

    assert is_valid_subject(Name("a.b"))
    assert not is_valid_subject(Name("a..b"))
    assert subject_matches(Name("a.*"), Name("a.b"))


@pytest.mark.parametrize(
    ("pattern", "subject", "expected"),
    [
        # case-sensitive, exact tokens
        ("foo", "Foo", False),
        ("FOO.*", "FOO.bar", True),
        ("FOO.*", "foo.bar", False),
        ("é", "e\u0301", False),  # no Unicode normalisation
        # "*" is exactly one token
        ("*", "a", True),
        ("*", "a.b", False),
        ("a.*", "a", False),
        ("*.*", "a.b", True),
        ("*.b", "a.c", False),
        # ">" is one or more trailing tokens
        (">", "a", True),
        (">", "a.b.c.d", True),
        ("a.>", "a", False),
        ("a.>", "a.b", True),
        ("a.*.>", "a.b", False),
        ("a.*.>", "a.b.c", True),
        # wildcard characters inside a token are literal
        ("a*b", "a*b", True),
        ("a*b", "axb", False),
        ("foo>", "foo.bar", False),
        ("foo>", "foo>", True),
        ("*x", "yx", False),
        ("a.*x", "a.*x", True),
        # an invalid side matches nothing
        ("a.>.b", "a.x.b", False),
        ("a..b", "a..b", False),
        ("*", "*", False),
        (">", ">", False),
        ("a.*", "a.*", False),
        ("a b", "a b", False),
        ("", "", False),
        (">", "", False),
    ],
)
def test_matching_rules(pattern: str, subject: str, expected: bool) -> None:
    assert subject_matches(pattern, subject) is expected


# --- properties against a straightforward reference --------------------------------------


def reference_valid(text: object, *, wildcards: bool) -> bool:
    """The rules written down as plainly as possible, one token at a time."""
    if not isinstance(text, str):
        return False
    try:
        if len(text.encode("utf-8")) > MAX_SUBJECT_LENGTH:
            return False
    except UnicodeEncodeError:
        return False
    tokens = text.split(".")
    if len(tokens) > MAX_SUBJECT_TOKENS:
        return False
    for position, token in enumerate(tokens):
        if token == "":
            return False
        for ch in token:
            if ch in " \t\n\r\f\0" or 0xD800 <= ord(ch) <= 0xDFFF:
                return False
        if token in ("*", ">") and not wildcards:
            return False
        if token == ">" and position != len(tokens) - 1:
            return False
    return True


def reference_match(pattern: list[str], subject: list[str]) -> bool:
    """Recursive token matcher for already valid token lists."""
    if not pattern:
        return not subject
    head, rest = pattern[0], pattern[1:]
    if head == ">":
        return len(subject) >= 1
    if not subject:
        return False
    return (head == "*" or head == subject[0]) and reference_match(rest, subject[1:])


def reference_subject_matches(pattern: str, subject: str) -> bool:
    if not reference_valid(pattern, wildcards=True) or not reference_valid(
        subject, wildcards=False
    ):
        return False
    return reference_match(pattern.split("."), subject.split("."))


# Characters that exercise every rule, including the fast-path branches (ASCII printable,
# other controls, non-ASCII, surrogates).
ALPHABET = "..*>abA \t\n\r\f\v\0\x01é\u00a0\ud800"
texts = st.lists(st.sampled_from(ALPHABET), max_size=10).map("".join)
subject_tokens = st.lists(st.sampled_from(["a", "b", "c"]), min_size=1, max_size=5)
pattern_tokens = st.builds(
    lambda body, tail: body + tail,
    st.lists(st.sampled_from(["a", "b", "*"]), max_size=4),
    st.sampled_from([[], [], [">"]]),
).filter(bool)


#: Texts near the limits: about MAX_SUBJECT_TOKENS tokens, about MAX_SUBJECT_LENGTH bytes.
_near_limit_tokens = st.lists(
    st.sampled_from(["a", "é", "*", ">", "", " ", "ab" * 7, "\ud800"]),
    min_size=MAX_SUBJECT_TOKENS - 3,
    max_size=MAX_SUBJECT_TOKENS + 3,
)
long_texts = st.one_of(
    _near_limit_tokens.map(".".join),
    st.builds(
        lambda n, tail: "x" * n + tail,
        st.integers(MAX_SUBJECT_LENGTH - 8, MAX_SUBJECT_LENGTH + 2),
        st.sampled_from(["", "é", ".a", ".*", ".>", "..", " "]),
    ),
)


@given(st.one_of(texts, long_texts))
def test_validity_agrees_with_reference(text: str) -> None:
    assert is_valid_subject(text) is reference_valid(text, wildcards=False)
    assert is_valid_pattern(text) is reference_valid(text, wildcards=True)


@given(st.one_of(texts, long_texts))
def test_validate_raises_exactly_when_invalid(text: str) -> None:
    # The fast check and the one that names the problem must never disagree.
    for is_valid, validate in [
        (is_valid_subject, validate_subject),
        (is_valid_pattern, validate_pattern),
    ]:
        if is_valid(text):
            validate(text)
        else:
            with pytest.raises(InvalidSubject) as info:
                validate(text)
            assert "not a valid" not in str(info.value)  # a specific problem was named


@given(texts, texts)
def test_matching_arbitrary_text_agrees_with_reference(pattern: str, subject: str) -> None:
    assert subject_matches(pattern, subject) is reference_subject_matches(pattern, subject)


@given(pattern_tokens, subject_tokens)
def test_matching_tokens_agrees_with_reference(pattern: list[str], subject: list[str]) -> None:
    assert subject_matches(".".join(pattern), ".".join(subject)) is reference_match(
        pattern, subject
    )


@given(st.lists(sts.tokens, min_size=1, max_size=5), st.data())
def test_valid_subject_matched_by_itself_and_its_wildcard_forms(
    tokens: list[str], data: st.DataObject
) -> None:
    subject = ".".join(tokens)
    assert is_valid_subject(subject)
    assert subject_matches(subject, subject)
    assert subject_matches(">", subject)
    star_at = data.draw(st.integers(0, len(tokens) - 1))
    starred = [*tokens[:star_at], "*", *tokens[star_at + 1 :]]
    assert subject_matches(".".join(starred), subject)
    cut = data.draw(st.integers(0, len(tokens) - 1))
    assert subject_matches(".".join([*tokens[:cut], ">"]), subject)
    assert not subject_matches(".".join([*tokens, ">"]), subject)
    assert not subject_matches(".".join([*tokens, "*"]), subject)


@given(sts.subjects, sts.patterns)
def test_shared_strategies_build_valid_subjects_and_patterns(subject: str, pattern: str) -> None:
    # tests/strategies.py feeds the message tests; its subjects must obey these rules.
    assert is_valid_subject(subject)
    assert is_valid_pattern(pattern)
    validate_subject(subject)
    validate_pattern(pattern)
