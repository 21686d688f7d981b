"""An index of subscription patterns that answers "who wants this subject?".

The patterns live in a trie with one node per token, as in the NATS server's sublist: a node
maps literal tokens to child nodes, has at most one child for ``*``, holds the values of the
patterns that end at it, and holds the values of the patterns that are its prefix followed by
``>``. Finding the matches of a subject walks the subject's tokens once, branching only into
``*`` children, so the cost depends on the patterns that (partly) match, never on how many
others are registered.

The leader asks once per submitted job, so answers are kept in a bounded cache keyed by
subject. Any change to the index clears the cache; when the cache is full it is cleared too,
which keeps memory bounded and costs one miss per cached subject.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator

import attrs

from ._subjects import is_valid_subject, validate_pattern

#: How many subjects :class:`SubjectIndex` remembers the answer for, by default.
DEFAULT_CACHE_CAPACITY = 4096


@attrs.define(eq=False, repr=False)
class _Node:
    """One token position of the trie.

    Registrations are kept in dicts used as insertion-ordered sets (value -> None).
    """

    children: dict[str, _Node] = attrs.field(factory=dict)
    star: _Node | None = None
    here: dict[Hashable, None] = attrs.field(factory=dict)  # patterns that end at this node
    rest: dict[Hashable, None] = attrs.field(factory=dict)  # this node's prefix + ">"

    def is_empty(self) -> bool:
        return not (self.children or self.star is not None or self.here or self.rest)


def _collect(root: _Node, tokens: list[str], out: list) -> None:
    """Append to ``out`` the values of every pattern in the trie at ``root`` matching ``tokens``.

    A walk with an explicit stack, not recursion, so that no subject or trie is deep enough
    to exhaust Python's stack. It visits each trie node at most once (a node sits at one
    depth, and is reached only with the subject's token at that depth), so the work is
    bounded by the number of nodes, whatever the ``*`` patterns. At a node with both a
    ``*`` child and a matching literal child the ``*`` branch is walked first and the
    literal one is kept on the stack: the order of the results is that of a depth-first
    walk, the same for the same index and subject. (Measured against the recursive walk it
    replaced: +40 to +100 ns on an uncached match of 500 ns; answers are cached.)
    """
    count = len(tokens)
    node = root
    position = 0
    pending: list[tuple[_Node, int]] = []  # literal branches left for after a "*" branch
    while True:
        while position < count:
            if node.rest:
                out.extend(node.rest)
            child = node.children.get(tokens[position])
            star = node.star
            if star is not None:
                if child is not None:
                    pending.append((child, position + 1))
                child = star
            if child is None:
                break
            node = child
            position += 1
        else:
            out.extend(node.here)
        if not pending:
            return
        node, position = pending.pop()


@attrs.define(eq=False, repr=False)
class SubjectIndex:
    """Patterns mapped to values (subscriptions, workers, ...), matched against subjects.

    A registration is one ``(pattern, value)`` pair; registering the same pair twice keeps
    one. A value registered under several patterns is returned once for each pattern that
    matches, so callers that want each value once deduplicate themselves.

    Args:
      cache_capacity: how many subjects to remember the answer of :meth:`match` for
        (0 turns the cache off).

    Not thread-safe; it is meant to be owned by one task.
    """

    cache_capacity: int = attrs.field(
        default=DEFAULT_CACHE_CAPACITY,
        kw_only=True,
        validator=[attrs.validators.instance_of(int), attrs.validators.ge(0)],
    )
    _root: _Node = attrs.field(factory=_Node, init=False)
    # pattern -> the very dict its values are kept in inside the trie
    _by_pattern: dict[str, dict[Hashable, None]] = attrs.field(factory=dict, init=False)
    _count: int = attrs.field(default=0, init=False)
    _cache: dict[str, tuple] = attrs.field(factory=dict, init=False)

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
        self._cache.clear()
        return True

    def remove(self, pattern: str, value: Hashable) -> bool:
        """Remove the registration of ``value`` under ``pattern``, if there is one.

        Nodes of the trie left empty are removed, so the index does not grow with churn.

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
        self._cache.clear()
        if not values:
            del self._by_pattern[pattern]
            self._prune(pattern.split("."))
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
        out: list[Hashable] = []
        _collect(self._root, subject.split("."), out)
        found = tuple(out)
        if self.cache_capacity and type(subject) is str:
            if len(self._cache) >= self.cache_capacity:
                self._cache.clear()
            self._cache[subject] = found
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

    def _values_of(self, pattern: str) -> dict[Hashable, None]:
        """The dict holding the values of ``pattern``, creating the trie path as needed."""
        node = self._root
        *init, last = pattern.split(".")
        for token in init:
            node = self._child(node, token)
        if last == ">":
            return node.rest
        return self._child(node, last).here

    @staticmethod
    def _child(node: _Node, token: str) -> _Node:
        if token == "*":
            if node.star is None:
                node.star = _Node()
            return node.star
        child = node.children.get(token)
        if child is None:
            child = node.children[token] = _Node()
        return child

    def _prune(self, tokens: list[str]) -> None:
        """Remove the nodes on the path of a removed pattern that are left empty."""
        if tokens[-1] == ">":
            tokens = tokens[:-1]
        path: list[tuple[_Node, str, _Node]] = []
        node = self._root
        for token in tokens:
            child = node.star if token == "*" else node.children[token]
            assert child is not None
            path.append((node, token, child))
            node = child
        for parent, token, child in reversed(path):
            if not child.is_empty():
                break
            if token == "*":
                parent.star = None
            else:
                del parent.children[token]
