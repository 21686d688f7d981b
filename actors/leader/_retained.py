"""Retained messages: the last message of each subject, for subscribers that come later.

A subscription's pattern is matched against the retained subjects by walking a trie of
their tokens, so that a Subscribe costs what it matches (and the nodes its wildcards open),
not a scan of every retained subject: a flood of Subscribes must not stall the leader.
Bounded in count and bytes; past a bound the oldest message goes. Each message is charged
its size as the caller counted it plus :data:`NODE_COST` per token of its subject (the
trie's nodes: a subject of 256 tokens costs some 60 KiB of the leader's memory, whatever
its payload), so that ``max_bytes`` bounds what the leader holds.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

#: The key under which a trie node keeps the subject that ends at it.
_END = ""
#: Bytes charged per token of a retained subject: what its trie node costs (a dict and
#: its key; measured some 241 bytes a token for subjects of 256 tokens).
NODE_COST = 256


class RetainedMessages:
    """The retained message of each subject, at most ``max_count`` and ``max_bytes``.

    Args:
      max_count: subjects retained at most.
      max_bytes: bytes of retained messages at most (each as its caller counted it).
    """

    def __init__(self, max_count: int, max_bytes: int) -> None:
        self.max_count = max_count
        self.max_bytes = max_bytes
        self.bytes = 0
        #: subject -> (payload, headers, size), oldest first
        self._messages: dict[str, tuple[Any, dict[str, str], int]] = {}
        self._root: dict[str, Any] = {}

    def __len__(self) -> int:
        return len(self._messages)

    def __bool__(self) -> bool:
        return bool(self._messages)

    def __iter__(self) -> Iterator[str]:
        return iter(self._messages)

    def put(self, subject: str, payload: Any, headers: dict[str, str], size: int) -> None:
        """Retain ``payload`` as ``subject``'s last message (dropping the oldest others
        past the bounds; a message over ``max_bytes`` by itself is not kept, and drops no
        other). It is charged
        ``size`` plus :data:`NODE_COST` per token of ``subject``."""
        size += NODE_COST * (subject.count(".") + 1)
        if subject in self._messages:
            self._drop(subject)  # (stale even if the new one is not kept)
        if size > self.max_bytes or self.max_count < 1:
            return  # not kept, and the others stay
        while self._messages and (
            len(self._messages) >= self.max_count or self.bytes + size > self.max_bytes
        ):
            self._drop(next(iter(self._messages)))
        self._messages[subject] = (payload, headers, size)
        self.bytes += size
        node = self._root
        for token in subject.split("."):
            node = node.setdefault(token, {})
        node[_END] = subject

    def get(self, subject: str) -> tuple[Any, dict[str, str]] | None:
        entry = self._messages.get(subject)
        return None if entry is None else (entry[0], entry[1])

    def _drop(self, subject: str) -> None:
        self.bytes -= self._messages.pop(subject)[2]
        path = [self._root]
        tokens = subject.split(".")
        for token in tokens:
            path.append(path[-1][token])
        del path[-1][_END]
        for depth in range(len(tokens), 0, -1):  # prune the nodes left empty
            if path[depth]:
                break
            del path[depth - 1][tokens[depth - 1]]

    def matching(self, pattern: str, limit: int | None = None) -> list[str]:
        """The retained subjects ``pattern`` matches (``*`` one token, ``>`` the rest), at
        most ``limit`` of them (None: all); the walk stops when it has found them."""
        tokens = pattern.split(".")
        last = len(tokens)
        found: list[str] = []
        if limit is not None and limit < 1:
            return found
        stack: list[tuple[dict[str, Any], int]] = [(self._root, 0)]
        while stack:
            node, position = stack.pop()
            if position == last:
                subject = node.get(_END)
                if subject is not None:
                    found.append(subject)
                    if len(found) == limit:
                        break
                continue
            token = tokens[position]
            if token == ">":  # one or more tokens: every subject below a child
                below = [child for key, child in node.items() if key != _END]
                while below:
                    child = below.pop()
                    for key, grandchild in child.items():
                        if key == _END:
                            found.append(grandchild)
                            if len(found) == limit:
                                return found
                        else:
                            below.append(grandchild)
            elif token == "*":
                stack.extend((child, position + 1) for key, child in node.items() if key != _END)
            else:
                child = node.get(token)
                if child is not None:
                    stack.append((child, position + 1))
        return found
