"""An index of subscription patterns that answers "who wants this subject?".

The patterns live in a trie of tokens, as in the NATS server's sublist, but path-compressed
(a radix trie): a node is entered through an *edge* of one or more tokens (``a.*.b``), kept
as one string, and a node exists only where patterns part ways, end (their values), or
continue with ``>`` (the values of "this node's prefix followed by ``>``"). The children of
a node are keyed by the first token of their edge, ``*`` included.

Why compressed: a trie of one node per token let a peer make the leader pay for each token
it sent, twice over. In memory, a node of some 450 bytes for a token of a few bytes; in
time, a subject walked every node that ``*`` tokens kept open, one Python step each, so
1,000 patterns of 256 random ``a``/``*`` tokens ending in ``b`` made every publish to
``a.a...a.x`` take 250,000 steps. Now a node costs some 100 bytes plus its edge's text, and
there are at most two nodes per pattern; matching visits each node at most once and checks
a whole edge at once in C (its last literal token alone first, then one ``join`` and one
string comparison), so its Python steps are bounded by twice the number of patterns that
(partly) match, whatever their length. What is left is linear in those patterns (10,000
of 256 tokens that agree with a subject up to their middle: 30 to 40 ms a lookup, measured
on a busy 2-core machine, against 220 ms before), so their number is for the leader's
limits to bound.

The leader asks once per submitted job, so answers are kept in a cache keyed by subject,
bounded both in entries and in (estimated) bytes, and subjects whose matches come from the
same trie nodes share one result tuple: a thousand subjects matching the same ``>``
subscriptions hold one tuple of them. Any change to the index clears the cache; when the
cache is full it is cleared too, which keeps memory bounded and costs one miss per cached
subject. An answer bigger than the whole budget is not cached.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator
from itertools import chain
from operator import itemgetter
from typing import Any

import attrs

from ._subjects import is_valid_subject, validate_pattern

#: How many subjects :class:`SubjectIndex` remembers the answer for, by default.
DEFAULT_CACHE_CAPACITY = 4096
#: How many bytes (estimated) the answers :class:`SubjectIndex` remembers may take, by default:
#: room for the default number of subjects with a few matches each.
DEFAULT_CACHE_BYTES = 2 * 1024 * 1024

# Estimated bytes of the cache, close to what tracemalloc counts (a test checks it): a cached
# subject costs its dict slot and the str object's header, plus one byte a character; an
# answer, its tuple and a pointer a value; one shared between subjects, also the key it is
# shared under (a tuple of ids) and that dict's slot.
_SUBJECT_COST = 100
_TUPLE_COST = 64
_ANSWER_COST = _SUBJECT_COST + _TUPLE_COST  # a subject and its own answer (or the empty one)
_VALUE_COST = 8
_SHARED_COST = 120
_PART_COST = 40
#: Answers of at least this many values are shared between subjects (smaller ones cost
#: about as much as the key they would be shared under).
_SHARED_FROM = 16

# How a node checks the tokens of its edge after the first (the parent's dict matched that):
_ONE = 0  # nothing to check: a one-token edge, or one whose other tokens are all "*"
_TEXT = 1  # no "*" token: the subject's tokens joined must equal the edge's text
_TOKEN = 2  # one literal after the first, the rest "*": one token compared (getter, literals)
_TOKENS = 3  # several literals and some "*": the subject's tokens at those positions, joined


class _Node:
    """A node of the trie and the edge that leads to it.

    Registrations are kept in dicts used as insertion-ordered sets (value -> None), created
    when the first value comes and dropped with the last (``None`` otherwise), like the dict
    of children: a node that holds nothing costs no empty dicts.
    """

    __slots__ = ("children", "getter", "here", "kind", "label", "last", "literals", "rest", "size")

    def __init__(self, tokens: list[str], start: int) -> None:
        self.children: dict[str, _Node] | None = None
        self.here: dict[Hashable, None] | None = None  # patterns that end at this node
        self.rest: dict[Hashable, None] | None = None  # this node's prefix + ">"
        self.reshape(tokens, start)

    @classmethod
    def root(cls) -> _Node:
        """The root: an edge of no tokens."""
        node = cls([""], 0)
        node.size = 0
        return node

    def reshape(self, tokens: list[str], start: int) -> None:
        """Make ``tokens`` this node's edge, its first token at position ``start``.

        The literal tokens after the first are checked by their absolute positions in the
        subject (a node sits at one depth), with one ``itemgetter`` call; the last of them
        first, alone, as patterns that share a long prefix with a subject tend to part from
        it at their end.
        """
        self.label = ".".join(tokens)
        self.size = len(tokens)
        self.getter: Any = None
        self.literals = ""  # (read for the kinds _TOKEN and _TOKENS only)
        self.last = start + self.size - 1
        if self.size == 1:
            self.kind = _ONE
        elif "*" not in tokens:
            self.kind = _TEXT
        else:
            positions = [start + i for i in range(1, self.size) if tokens[i] != "*"]
            if not positions:
                self.kind = _ONE
            elif len(positions) == 1:
                self.kind = _TOKEN
                self.getter = itemgetter(positions[0])
                self.literals = tokens[positions[0] - start]
            else:
                self.kind = _TOKENS
                self.getter = itemgetter(*positions)
                self.literals = ".".join(tokens[p - start] for p in positions)
                self.last = positions[-1]

    def tokens(self) -> list[str]:
        return self.label.split(".") if self.size > 1 else [self.label]

    def is_empty(self) -> bool:
        return not (self.children or self.here or self.rest)

    def __repr__(self) -> str:
        return f"<_Node {self.label!r}>"


def _end_of(node: _Node, tokens: list[str], start: int, count: int) -> int:
    """Where in ``tokens`` the edge of ``node`` ends if it matches from ``start`` (its first
    token already matched), or -1."""
    end = start + node.size
    if end > count:
        return -1
    kind = node.kind
    if kind == _TEXT:
        # (``endswith`` may pass for a mere suffix of the last token: the join decides)
        if not node.label.endswith(tokens[end - 1]) or ".".join(tokens[start:end]) != node.label:
            return -1
    elif kind == _TOKEN:
        if node.getter(tokens) != node.literals:
            return -1
    elif kind == _TOKENS and (
        not node.literals.endswith(tokens[node.last])
        or ".".join(node.getter(tokens)) != node.literals
    ):
        return -1
    return end


def _collect(root: _Node, tokens: list[str], parts: list[dict[Hashable, None]]) -> None:
    """Append to ``parts`` the value dicts of every pattern in the trie at ``root`` that
    matches ``tokens``.

    A walk with an explicit stack, not recursion, so that no subject or trie is deep enough
    to exhaust Python's stack. It visits each node at most once (a node sits at one depth,
    and is reached only through its parent's entry for the subject's token there, or
    ``*``), so the work is bounded by the number of nodes, at most two per pattern, and an
    edge of many tokens is checked at once. At a node with both a ``*`` child and a
    matching literal child the ``*`` branch is walked first and the literal one is kept on
    the stack: the order of the results is that of a depth-first walk, the same for the
    same index and subject.
    """
    count = len(tokens)
    node = root
    position = 0
    pending: list[tuple[_Node, int]] = []  # literal branches left for after a "*" branch
    while True:
        while position < count:
            if node.rest is not None:
                parts.append(node.rest)
            children = node.children
            if children is None:
                break
            child = children.get(tokens[position])
            if child is not None:
                end = position + 1 if child.size == 1 else _end_of(child, tokens, position, count)
                if end < 0:
                    child = None
            star = children.get("*")
            if star is not None:
                star_end = (
                    position + 1 if star.size == 1 else _end_of(star, tokens, position, count)
                )
                if star_end >= 0:
                    if child is not None:
                        pending.append((child, end))
                    child, end = star, star_end
            if child is None:
                break
            node = child
            position = end
        else:
            if node.here is not None:
                parts.append(node.here)
        if not pending:
            return
        node, position = pending.pop()


# (No validation on setattr: the cache's byte count changes on every miss, and attrs' hook
# would cost a microsecond each time; the settings are validated when the index is made.)
@attrs.define(eq=False, repr=False, on_setattr=attrs.setters.NO_OP)
class SubjectIndex:
    """Patterns mapped to values (subscriptions, workers, ...), matched against subjects.

    A registration is one ``(pattern, value)`` pair; registering the same pair twice keeps
    one. A value registered under several patterns is returned once for each pattern that
    matches, so callers that want each value once deduplicate themselves.

    Args:
      cache_capacity: how many subjects to remember the answer of :meth:`match` for
        (0 turns the cache off).
      cache_bytes: how many bytes, estimated, the remembered answers may take at most
        (their subjects, and their tuples, each counted once however many subjects share
        it); an answer that does not fit alone is not remembered.

    Not thread-safe; it is meant to be owned by one task.
    """

    cache_capacity: int = attrs.field(
        default=DEFAULT_CACHE_CAPACITY,
        kw_only=True,
        validator=[attrs.validators.instance_of(int), attrs.validators.ge(0)],
    )
    cache_bytes: int = attrs.field(
        default=DEFAULT_CACHE_BYTES,
        kw_only=True,
        validator=[attrs.validators.instance_of(int), attrs.validators.ge(0)],
    )
    _root: _Node = attrs.field(factory=lambda: _Node.root(), init=False)
    # pattern -> the very dict its values are kept in inside the trie
    _by_pattern: dict[str, dict[Hashable, None]] = attrs.field(factory=dict, init=False)
    _count: int = attrs.field(default=0, init=False)
    # subject -> its answer, and (ids of the value dicts an answer is made of) -> the answer
    _cache: dict[str, tuple[Hashable, ...]] = attrs.field(factory=dict, init=False)
    _results: dict[tuple[int, ...], tuple[Hashable, ...]] = attrs.field(factory=dict, init=False)
    _cache_used: int = attrs.field(default=0, init=False)

    def add(self, pattern: str, value: Hashable) -> bool:
        """Register ``value`` under ``pattern``.

        Args:
          pattern: a valid pattern (see :func:`protocol.is_valid_pattern`).
          value: any hashable object, returned by :meth:`match` for matching subjects.

        Returns:
          True if the registration is new, False if it was already there.

        Raises:
          InvalidSubject: ``pattern`` is not a valid pattern.
          TypeError: ``value`` is not hashable.
        """
        validate_pattern(pattern)
        hash(value)  # fail before touching the trie
        values = self._by_pattern.get(pattern)
        if values is None:
            values = self._values_of(pattern)
            self._by_pattern[pattern] = values
        elif value in values:
            return False
        values[value] = None
        self._count += 1
        self._clear_cache()
        return True

    def remove(self, pattern: str, value: Hashable) -> bool:
        """Remove the registration of ``value`` under ``pattern``, if there is one.

        Nodes of the trie left empty are removed, and edges left without a reason to be
        apart are joined again, so the index does not grow with churn.

        Returns:
          True if it was registered and is now removed, False otherwise (including for an
          invalid pattern or an unhashable value, which can never be registered).
        """
        if not isinstance(pattern, str):
            return False
        values = self._by_pattern.get(pattern)
        try:
            if values is None or value not in values:
                return False
        except TypeError:  # unhashable value
            return False
        del values[value]
        self._count -= 1
        self._clear_cache()
        if not values:
            del self._by_pattern[pattern]
            self._prune(pattern)
        return True

    def match(self, subject: str) -> tuple[Hashable, ...]:
        """Return the values of every registration whose pattern matches ``subject``.

        Args:
          subject: a subject; an invalid one (or a non-str) matches nothing.

        Returns:
          A tuple with each value once per matching registration, in no particular order
          (but the same order for the same index and subject). Empty when nothing matches.
        """
        try:
            found = self._cache.get(subject)
        except TypeError:  # unhashable, so not a subject
            return ()
        if found is not None:
            return found
        if not is_valid_subject(subject):
            return ()
        parts: list[dict[Hashable, None]] = []
        _collect(self._root, subject.split("."), parts)
        if len(parts) == 1 and len(parts[0]) < _SHARED_FROM:  # the common case
            found = tuple(parts[0])
        elif not parts:
            found = ()
        elif not self.cache_capacity or type(subject) is not str:
            return tuple(chain.from_iterable(parts))
        elif sum(map(len, parts)) >= _SHARED_FROM:
            return self._shared(subject, parts)
        else:
            found = tuple(chain.from_iterable(parts))
        if self.cache_capacity and type(subject) is str:
            cost = _ANSWER_COST + len(subject) + _VALUE_COST * len(found)
            if (
                self._cache_used + cost <= self.cache_bytes
                and len(self._cache) < self.cache_capacity
            ):
                self._cache[subject] = found
                self._cache_used += cost
            else:
                self._remember(subject, found, cost)
        return found

    def patterns(self) -> Iterator[str]:
        """Iterate over the registered patterns, each once, in order of first registration.

        The iterator works on a snapshot, so the index may change while it is consumed.
        """
        return iter(tuple(self._by_pattern))

    def __len__(self) -> int:
        """The number of registrations (``(pattern, value)`` pairs)."""
        return self._count

    def __repr__(self) -> str:
        return f"<SubjectIndex {len(self._by_pattern)} patterns, {self._count} registrations>"

    # --- the cache ---------------------------------------------------------------------

    def _shared(self, subject: str, parts: list[dict[Hashable, None]]) -> tuple[Hashable, ...]:
        """The answer made of ``parts``, the very tuple already cached for the subjects whose
        answer is made of the same value dicts, and cached for ``subject`` if it fits."""
        key = tuple(map(id, parts))  # the dicts stay alive, unchanged, while cached
        found = self._results.get(key)
        cost = _SUBJECT_COST + len(subject)
        if found is None:
            found = tuple(chain.from_iterable(parts))
        elif self._cache_used + cost <= self.cache_bytes and len(self._cache) < self.cache_capacity:
            self._cache[subject] = found
            self._cache_used += cost
            return found
        # A new tuple, or one that goes with the rest when the cache is cleared: counted anew.
        cost += _TUPLE_COST + _VALUE_COST * len(found) + _SHARED_COST + _PART_COST * len(key)
        if self._remember(subject, found, cost):
            self._results[key] = found
        return found

    def _remember(self, subject: str, found: tuple[Hashable, ...], cost: int) -> bool:
        """Cache ``found`` as the answer for ``subject``, counted as ``cost`` bytes, clearing
        the cache first if it is full. False if it does not fit even in an empty cache."""
        if self._cache_used + cost > self.cache_bytes or len(self._cache) >= self.cache_capacity:
            self._clear_cache()
            if cost > self.cache_bytes:
                return False
        self._cache[subject] = found
        self._cache_used += cost
        return True

    def _clear_cache(self) -> None:
        self._cache.clear()
        self._results.clear()
        self._cache_used = 0

    # --- the trie ----------------------------------------------------------------------

    def _values_of(self, pattern: str) -> dict[Hashable, None]:
        """The dict holding the values of ``pattern``, creating the trie path as needed."""
        tokens = pattern.split(".")
        rest = tokens[-1] == ">"
        if rest:
            del tokens[-1]
        count = len(tokens)
        node = self._root
        position = 0
        while position < count:
            children = node.children
            if children is None:
                children = node.children = {}
            first = tokens[position]
            child = children.get(first)
            if child is None:
                child = children[first] = _Node(tokens[position:], position)
                node, position = child, count
                break
            edge = child.tokens()
            common = 1
            limit = min(child.size, count - position)
            while common < limit and edge[common] == tokens[position + common]:
                common += 1
            if common < child.size:  # the pattern leaves the edge: split it where it does
                middle = _Node(edge[:common], position)
                middle.children = {edge[common]: child}
                child.reshape(edge[common:], position + common)
                children[first] = child = middle
            node = child
            position += common
        if rest:
            if node.rest is None:
                node.rest = {}
            return node.rest
        if node.here is None:
            node.here = {}
        return node.here

    def _prune(self, pattern: str) -> None:
        """Drop the emptied value dict of a removed pattern, then its node if it was left
        empty, and join an edge with its only child where no pattern ends between them."""
        tokens = pattern.split(".")
        rest = tokens[-1] == ">"
        if rest:
            del tokens[-1]
        path: list[tuple[_Node, str, int]] = []  # (parent, key, where the node's edge starts)
        node = self._root
        position = 0
        while position < len(tokens):
            assert node.children is not None
            path.append((node, tokens[position], position))
            node = node.children[tokens[position]]
            position += node.size
        if rest:
            node.rest = None
        else:
            node.here = None
        if not path or node.here is not None or node.rest is not None:
            return
        parent, key, start = path[-1]
        assert parent.children is not None
        if node.children is None:
            del parent.children[key]
            if not parent.children:
                parent.children = None
            if len(path) > 1:
                self._join(*path[-2], parent)
        else:
            self._join(parent, key, start, node)

    @staticmethod
    def _join(parent: _Node, key: str, start: int, node: _Node) -> None:
        """Replace ``node`` by its only child, their edges joined, if it holds no values
        (a node with values, or with several children, stays)."""
        children = node.children
        if node.here is not None or node.rest is not None or children is None or len(children) != 1:
            return
        (child,) = children.values()
        child.reshape(node.tokens() + child.tokens(), start)
        assert parent.children is not None
        parent.children[key] = child
