"""Subject permissions: allow and deny lists of patterns, with the semantics of NATS.

A permission list is a list of patterns; one with a leading ``!`` denies what it matches.
A subject is allowed when an allow pattern matches it and no deny pattern does, so a deny
always wins: ``["events.>", "!events.audit.>"]`` allows ``events.web.click`` and not
``events.audit.login``. An empty list allows nothing.

Three questions are asked of a list, one per kind of right:

- :meth:`Permissions.allows` — may this identity submit or publish to this *subject*?
- :meth:`Permissions.covers` — may it serve this *pattern* as a worker? Only if every
  subject the pattern matches is allowed (its jobs would otherwise reach it).
- :meth:`Permissions.may_subscribe` — may it subscribe to this *pattern*? If an allow
  pattern covers it and no deny pattern covers it whole; what it then receives is filtered
  with :meth:`Permissions.allows` (as nats-server does), so a subscription to ``events.>``
  with ``!events.audit.>`` denied stands and never delivers an audit event.

Subjects whose first token starts with ``$`` are reserved for the system
(:func:`is_reserved`): no permission grants them to a peer.

Sans-I/O like the rest of the package: patterns in, booleans out.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import ClassVar

import attrs

from ._errors import InvalidSubject, safe_repr
from ._subjects import is_valid_pattern, is_valid_subject, subject_matches, validate_pattern

#: Subjects one :class:`Permissions` remembers the answer for (a dict, cleared when full).
CACHE_SIZE = 4096
#: Patterns one permission list may hold.
MAX_PERMISSION_PATTERNS = 1000


def is_reserved(subject: str) -> bool:
    """Whether ``subject`` (or a pattern) is the system's: its first token starts with ``$``."""
    return subject.startswith("$")


def pattern_covers(outer: str, inner: str) -> bool:
    """Whether every subject the valid pattern ``inner`` matches is matched by the valid
    pattern ``outer`` (a subject is a pattern without wildcards)."""
    outer_tokens = outer.split(".")
    inner_tokens = inner.split(".")
    for position, token in enumerate(outer_tokens):
        if token == ">":
            return len(inner_tokens) > position
        if position >= len(inner_tokens):
            return False
        other = inner_tokens[position]
        if other == ">":
            return False  # (outer has no > here: it ends, or matches one token only)
        if token != "*" and token != other:
            return False  # (a literal covers only the same literal, not a *)
    return len(outer_tokens) == len(inner_tokens)


def patterns_overlap(a: str, b: str) -> bool:
    """Whether some subject is matched by both valid patterns ``a`` and ``b``."""
    a_tokens = a.split(".")
    b_tokens = b.split(".")
    for position in range(max(len(a_tokens), len(b_tokens))):
        if position >= len(a_tokens) or position >= len(b_tokens):
            return False
        x, y = a_tokens[position], b_tokens[position]
        if x == ">" or y == ">":
            return True
        if x != "*" and y != "*" and x != y:
            return False
    return True


@attrs.frozen
class Permissions:
    """Patterns an identity may use (``allow``) and may not (``deny``), for one kind of
    right (submit, publish, subscribe or serve). Build one with :meth:`parse`.

    Attributes:
      allow: patterns granted.
      deny: patterns refused, whatever ``allow`` says.
    """

    allow: tuple[str, ...] = ()
    deny: tuple[str, ...] = ()
    _cache: dict[str, bool] = attrs.field(factory=dict, eq=False, repr=False)

    #: Everything (``[">"]``).
    ALL: ClassVar[Permissions]
    #: Nothing (``[]``).
    NONE: ClassVar[Permissions]

    @classmethod
    def parse(cls, patterns: Iterable[str], *, what: str = "permission") -> Permissions:
        """The permissions a list of patterns gives (a leading ``!`` denies).

        Args:
          patterns: such as ``["events.>", "!events.audit.>"]``.
          what: the list's name, for error messages (``"subscribe"``).

        Raises:
          InvalidSubject: an entry is not a valid pattern (named), or the list is longer
            than :data:`MAX_PERMISSION_PATTERNS`.
          TypeError: ``patterns`` is a string, or holds something other than strings.
        """
        if isinstance(patterns, str):
            raise TypeError(f"{what}: expected a list of patterns, got the string {patterns!r}")
        allow: list[str] = []
        deny: list[str] = []
        for entry in patterns:
            if not isinstance(entry, str):
                raise TypeError(f"{what}: expected patterns (strings), got {safe_repr(entry)}")
            target, pattern = (deny, entry[1:]) if entry.startswith("!") else (allow, entry)
            try:
                validate_pattern(pattern)
            except InvalidSubject as exc:
                raise InvalidSubject(f"{what}: {exc}") from None
            if len(allow) + len(deny) >= MAX_PERMISSION_PATTERNS:
                raise InvalidSubject(
                    f"{what}: more than {MAX_PERMISSION_PATTERNS} patterns in one list"
                )
            if pattern not in target:
                target.append(pattern)
        return cls(tuple(allow), tuple(deny))

    def allows(self, subject: str) -> bool:
        """Whether a valid concrete ``subject`` is allowed: an allow pattern matches it,
        no deny pattern does, and it is not reserved (``$...``)."""
        cache = self._cache
        known = cache.get(subject)
        if known is not None:
            return known
        answer = (
            not is_reserved(subject)
            and is_valid_subject(subject)
            and any(subject_matches(p, subject) for p in self.allow)
            and not any(subject_matches(p, subject) for p in self.deny)
        )
        if len(cache) >= CACHE_SIZE:
            cache.clear()
        cache[subject] = answer
        return answer

    def covers(self, pattern: str) -> bool:
        """Whether every subject the valid ``pattern`` matches is allowed (an allow pattern
        covers it, and it shares no subject with a deny pattern); what serving needs."""
        return (
            not is_reserved(pattern)
            and is_valid_pattern(pattern)
            and any(pattern_covers(p, pattern) for p in self.allow)
            and not any(patterns_overlap(p, pattern) for p in self.deny)
        )

    def may_subscribe(self, pattern: str) -> bool:
        """Whether a subscription to the valid ``pattern`` may stand: an allow pattern
        covers it and no deny pattern covers it whole (deliveries to it are then filtered
        with :meth:`allows`)."""
        return (
            not is_reserved(pattern)
            and is_valid_pattern(pattern)
            and any(pattern_covers(p, pattern) for p in self.allow)
            and not any(pattern_covers(p, pattern) for p in self.deny)
        )

    def filters(self, pattern: str) -> bool:
        """Whether some subject ``pattern`` matches is denied (so that what a subscription
        to it receives must be filtered with :meth:`allows`)."""
        return any(patterns_overlap(p, pattern) for p in self.deny)

    @property
    def everything(self) -> bool:
        """Whether these permissions allow every subject (``>`` and no deny)."""
        return ">" in self.allow and not self.deny

    def __bool__(self) -> bool:
        return bool(self.allow)

    def as_list(self) -> list[str]:
        """The patterns, denied ones with their ``!`` (what :meth:`parse` takes)."""
        return [*self.allow, *(f"!{p}" for p in self.deny)]


Permissions.ALL = Permissions((">",))
Permissions.NONE = Permissions()
