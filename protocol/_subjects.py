"""Subject and pattern rules, with the semantics of the NATS server.

A *subject* names where a job or message goes: tokens separated by ``.``, such as
``math.square``. A *pattern* names what a subscriber wants and may use two wildcards, each
only as a whole token: ``*`` matches exactly one token, ``>`` matches one or more trailing
tokens and may only be the last token. ``a*b``, ``foo>`` and ``*x`` are ordinary tokens.

Rules shared by both:

- no empty token: not the empty string, no leading or trailing dot, no ``..``;
- no whitespace (space, tab, CR, LF, FF) and no NUL anywhere, as in nats-server (which lets
  the vertical tab through, like every other character);
- every other Unicode character is allowed (the text must be encodable as UTF-8, so lone
  surrogates are refused); comparison is exact and case-sensitive;
- at most ``MAX_SUBJECT_LENGTH`` (4096) bytes of UTF-8 and ``MAX_SUBJECT_TOKENS`` (256)
  tokens, so that what a peer sends is cheap to check, to match and to quote.

``is_valid_subject`` runs once per submitted job, so it is written with ``str`` methods
that run in C rather than a loop over tokens; the slower ``_problem`` below walks the text
to name what is wrong and is only used to build error messages. A property test checks that
both always agree.
"""

from __future__ import annotations

from typing import Any

from ._errors import InvalidSubject, safe_repr
from ._limits import MAX_SUBJECT_LENGTH, MAX_SUBJECT_TOKENS

#: Characters that may appear nowhere in a subject or pattern, with the name used in errors.
_FORBIDDEN_NAMES = {
    " ": "space",
    "\t": "tab",
    "\n": "line feed",
    "\r": "carriage return",
    "\f": "form feed",
    "\0": "NUL",
}
_FORBIDDEN = tuple(_FORBIDDEN_NAMES)

#: Whole tokens a subject may not contain (the empty token and the two wildcards).
_NOT_SUBJECT_TOKENS = frozenset(("", "*", ">"))

#: The shortest text that can hold more than ``MAX_SUBJECT_TOKENS`` tokens (one character
#: each, and the dots). Shorter ones are within both limits, so a common, short subject
#: pays one length comparison for them: 13 ns, 7% of checking ``math.square`` (measured:
#: 177 -> 191 ns); measuring and counting the dots every time would cost 50%.
_LONG = 2 * MAX_SUBJECT_TOKENS + 1


def _over_limits(text: str) -> bool:
    """Whether a text of at least ``_LONG`` characters has too many characters or tokens.

    A character is at least one byte, so more characters than the limit in bytes is too
    long; non-ASCII text is measured in bytes by :func:`_has_forbidden_char`.
    """
    return len(text) > MAX_SUBJECT_LENGTH or text.count(".") >= MAX_SUBJECT_TOKENS


def _has_forbidden_char(text: str) -> bool:
    """Whether ``text`` holds whitespace, NUL or a lone surrogate, or is too long in UTF-8
    (the slow path, for text that is not printable ASCII)."""
    for ch in _FORBIDDEN:
        if ch in text:
            return True
    if not text.isascii():
        try:
            return len(text.encode("utf-8")) > MAX_SUBJECT_LENGTH
        except UnicodeEncodeError:
            return True
    return False


def is_valid_subject(subject: Any) -> bool:
    """Whether ``subject`` is a valid subject: a valid name with no wildcard tokens.

    Never raises: anything that is not a ``str`` is simply not a subject.

    Args:
      subject: the text to check, such as ``"math.square"``.

    Returns:
      True when ``subject`` can be published or submitted to.
    """
    if not isinstance(subject, str) or not subject:
        return False
    if len(subject) >= _LONG and _over_limits(subject):
        return False
    # Printable ASCII holds no control characters, so only the space is left to look for;
    # anything else (other controls, non-ASCII) takes the full check.
    if subject.isascii() and subject.isprintable():
        if " " in subject:
            return False
    elif _has_forbidden_char(subject):
        return False
    if subject[0] == "." or subject[-1] == "." or ".." in subject:
        return False
    if "*" in subject or ">" in subject:
        # Only a whole-token wildcard is refused; "a*b" and "foo>" are literal tokens.
        return _NOT_SUBJECT_TOKENS.isdisjoint(subject.split("."))
    return True


def is_valid_pattern(pattern: Any) -> bool:
    """Whether ``pattern`` is a valid subscription pattern.

    Never raises: anything that is not a ``str`` is simply not a pattern.

    Args:
      pattern: the text to check, such as ``"math.*"`` or ``"events.>"``.

    Returns:
      True when ``pattern`` is a valid subject, or one whose ``*`` tokens stand for any one
      token and whose last token may be ``>``.
    """
    if not isinstance(pattern, str) or not pattern:
        return False
    if len(pattern) >= _LONG and _over_limits(pattern):
        return False
    if pattern.isascii() and pattern.isprintable():
        if " " in pattern:
            return False
    elif _has_forbidden_char(pattern):
        return False
    if pattern[0] == "." or pattern[-1] == "." or ".." in pattern:
        return False
    if ">" in pattern:
        return ">" not in pattern.split(".")[:-1]
    return True


def _problem(text: Any, *, wildcards: bool) -> str | None:
    """Describe the first rule ``text`` breaks, or return None when it breaks none.

    Args:
      text: the subject (``wildcards=False``) or pattern (``wildcards=True``) to check.
    """
    if not isinstance(text, str):
        return f"must be a str, not {type(text).__name__}"
    if not text:
        return "empty string (at least one token is needed)"
    if len(text) > MAX_SUBJECT_LENGTH:  # (before any walk over a text of any length)
        return f"{len(text)} characters, longer than the limit of {MAX_SUBJECT_LENGTH} bytes"
    for index, ch in enumerate(text):
        name = _FORBIDDEN_NAMES.get(ch)
        if name is not None:
            return f"{name} {ch!r} at index {index} (no whitespace or NUL allowed)"
        if "\ud800" <= ch <= "\udfff":
            return f"lone surrogate U+{ord(ch):04X} at index {index} (not encodable as UTF-8)"
    size = len(text.encode("utf-8"))
    if size > MAX_SUBJECT_LENGTH:
        return f"{size} bytes in UTF-8, longer than the limit of {MAX_SUBJECT_LENGTH} bytes"
    tokens = text.split(".")
    last = len(tokens) - 1
    for position, token in enumerate(tokens):
        if not token:
            return f"empty token at position {position}"
        if token in ("*", ">") and not wildcards:
            return f"wildcard {token!r} at position {position} (a subject cannot hold wildcards)"
        if token == ">" and position != last:
            return f"'>' at position {position} must be the last token"
    if len(tokens) > MAX_SUBJECT_TOKENS:
        return f"{len(tokens)} tokens, more than the limit of {MAX_SUBJECT_TOKENS}"
    return None


def validate_subject(subject: Any) -> None:
    """Check that ``subject`` is a valid subject (see :func:`is_valid_subject`).

    Args:
      subject: the text to check.

    Raises:
      InvalidSubject: naming the problem, e.g.
        ``invalid subject 'a..b': empty token at position 1``.
    """
    if is_valid_subject(subject):
        return
    problem = _problem(subject, wildcards=False) or "not a valid subject"
    raise InvalidSubject(f"invalid subject {safe_repr(subject)}: {problem}")


def validate_pattern(pattern: Any) -> None:
    """Check that ``pattern`` is a valid subscription pattern (see :func:`is_valid_pattern`).

    Args:
      pattern: the text to check.

    Raises:
      InvalidSubject: naming the problem, e.g.
        ``invalid pattern 'a.>.b': '>' at position 1 must be the last token``.
    """
    if is_valid_pattern(pattern):
        return
    problem = _problem(pattern, wildcards=True) or "not a valid pattern"
    raise InvalidSubject(f"invalid pattern {safe_repr(pattern)}: {problem}")


def _tokens_match(pattern_tokens: list[str], subject_tokens: list[str]) -> bool:
    """Whether the tokens of a valid pattern match the tokens of a valid subject.

    Neither side is checked here: callers split text they have already validated.
    """
    count = len(subject_tokens)
    for position, token in enumerate(pattern_tokens):
        if token == ">":
            return count > position
        if position >= count:
            return False
        if token != "*" and token != subject_tokens[position]:
            return False
    return len(pattern_tokens) == count


def subject_matches(pattern: Any, subject: Any) -> bool:
    """Whether ``pattern`` matches ``subject``.

    Never raises: an invalid pattern or an invalid subject matches nothing.

    Args:
      pattern: a subscription pattern, such as ``"time.*.east"`` or ``"time.>"``.
      subject: a subject, such as ``"time.us.east"``.

    Returns:
      True when every token of ``subject`` is matched: a literal token by an equal token,
      any single token by ``*``, and one or more trailing tokens by a final ``>``.
    """
    if not is_valid_subject(subject) or not is_valid_pattern(pattern):
        return False
    if pattern == subject:
        return True
    if "*" not in pattern and ">" not in pattern:
        return False
    return _tokens_match(pattern.split("."), subject.split("."))
