"""Routing, sans-I/O: which worker of a subject's queue takes the next job.

A subject has one policy, whichever group serves it: the first job-taking worker that
serves it sets it, and a worker that asks for another one for it is refused while it has
workers (:class:`SubjectPolicies`), so all the workers of a queue share it.
``round_robin`` gives each worker with room a turn of a few jobs in a row,
``least_loaded`` picks the worker with the lowest share of its credit window in use, and
``sticky`` the worker the job's ``key`` header hashes to (a job whose sticky worker is busy
waits for it, in its backlog). The :class:`~actors.leader.Broker` calls :func:`pick_worker`
for every job it hands out (a plain function, called directly: this is the per-job hot
path).
"""

from __future__ import annotations

import itertools
import random
import zlib
from collections.abc import Iterable, Iterator

import attrs

from protocol import RoutingPolicy, is_valid_subject

from ._jobs import JobRecord
from ._links import STICKY_HEADER, SubjectQueue, WorkerLink

# (plain str constants: compared once per job, cheaper than the enum's attributes)
_STICKY = RoutingPolicy.STICKY.value
_LEAST_LOADED = RoutingPolicy.LEAST_LOADED.value

#: Up to this many workers for a subject, ``least_loaded`` picks the exact least loaded one
#: (a scan); beyond, the less loaded of two random ones with a free slot, so that routing
#: stays O(1) per job in large groups.
EXACT_LEAST_LOADED = 16
#: In ``round_robin``, the most jobs in a row one worker takes before the next worker's
#: turn (and at most a quarter of its credit window: a worker of concurrency 1 to 7 takes
#: one job per turn).
ROUND_ROBIN_TURN = 16
#: Random draws the two-choice pick makes at most before it falls back to the scan.
LEAST_LOADED_SAMPLES = 8


def _least_loaded(workers: Iterable[WorkerLink], enough: int | None = None) -> WorkerLink | None:
    """The worker with the lowest share of its window in use, among ``workers`` with a
    free slot; stop looking once ``enough`` such workers were seen (None: look at all)."""
    best = None
    best_load = 2.0
    found = 0
    for worker in workers:
        held = len(worker.inflight)
        if held < worker.window:
            load = held / worker.window
            if load < best_load:
                best, best_load = worker, load
            found += 1
            if found == enough:
                break
    return best


def _two_choices(candidates: list[WorkerLink], rng: random.Random) -> WorkerLink | None:
    """The less loaded of two random workers with a free slot ("power of two choices":
    nearly as even as the exact minimum, in O(1) per job); None if the draws found none.

    (A function of its own: a generator inside :func:`pick_worker` would turn its locals
    into closure cells and slow down every pick.)"""
    randrange = rng.randrange
    n = len(candidates)
    draws = (candidates[randrange(n)] for _ in range(LEAST_LOADED_SAMPLES))
    return _least_loaded(draws, enough=2)


def pick_worker(queue: SubjectQueue, job: JobRecord, rng: random.Random) -> WorkerLink | None:
    """The worker of ``queue`` to take ``job``, by the policy of its subject (that of all
    its workers); None if no worker has room. A ``sticky`` job's worker is returned even when busy (the
    caller checks its room and puts the job in its backlog); round robin advances the
    queue's turn."""
    candidates = queue.candidates
    n = len(candidates)
    if n == 0:
        return None
    policy = candidates[0].policy
    if policy == _STICKY:
        key = job.headers.get(STICKY_HEADER)
        if key is not None:
            return candidates[zlib.crc32(key.encode()) % n]
    elif policy == _LEAST_LOADED:
        if n > EXACT_LEAST_LOADED:
            best = _two_choices(candidates, rng)
            if best is not None:
                return best
        return _least_loaded(candidates)
    start = queue.rr
    if start >= n:
        start = 0
    worker = candidates[start]
    held = len(worker.inflight)
    if held < worker.window:  # the usual case: the worker whose turn it is has room
        # Its turn lasts up to a quarter of its window (at most ROUND_ROBIN_TURN jobs),
        # so that a burst of jobs wakes few workers, each with a batch.
        queue.turn += 1
        if queue.turn >= min(ROUND_ROBIN_TURN, worker.window >> 2) or held + 1 >= worker.window:
            queue.turn = 0
            queue.rr = start + 1
        return worker
    queue.turn = 0
    for i in range(1, n):
        worker = candidates[(start + i) % n]
        if len(worker.inflight) < worker.window:
            queue.rr = (start + i + 1) % n
            return worker
    return None


# ---------------------------------------------------------------------------------------
# The policy of each subject


@attrs.define(eq=False)
class _Claim:
    """A pattern served by connected job-taking workers, all with one ``policy``."""

    pattern: str
    policy: str
    #: when it was first claimed (a count): the oldest claim of a subject set its policy
    since: int
    #: workers serving it, by group, in the order the groups came (the first set it)
    groups: dict[str, int] = attrs.field(factory=dict)


class _Node:
    """A trie node of :class:`SubjectPolicies`: a token's children, the claims of the
    pattern that ends here (by policy: one, unless a caller skipped the check), and how
    many claims lie at or below it, by policy (to skip the subtrees holding no other
    policy than the one a Hello asks for)."""

    __slots__ = ("children", "claims", "policies")

    def __init__(self) -> None:
        self.children: dict[str, _Node] = {}
        self.claims: dict[str, _Claim] = {}
        self.policies: dict[str, int] = {}


@attrs.frozen
class PolicyConflict:
    """A worker asks for ``policy`` for subjects (``subjects``, a pattern: those its own
    ``pattern`` shares with ``their_pattern``) that workers of ``group`` serve by
    ``their_policy``."""

    subjects: str
    pattern: str
    policy: str
    their_pattern: str
    their_policy: str
    group: str

    def message(self, group: str) -> str:
        """The text of the ``conflict`` Error that refuses the worker of ``group``."""
        exact = is_valid_subject(self.subjects)
        what = f"subject {self.subjects!r}" if exact else f"subjects {self.subjects!r}"
        patterns = ""
        if self.pattern != self.subjects or self.their_pattern != self.subjects:
            patterns = f" (its pattern {self.pattern!r}, theirs {self.their_pattern!r})"
        return (
            f"routing policy conflict on {what}: group {self.group!r} set it to "
            f"{self.their_policy!r}, and this worker of group {group!r} asks for "
            f"{self.policy!r}{patterns}; a subject has one policy, whichever group serves it"
        )


#: Trie nodes one Hello's policy check may visit (tens of milliseconds), past which
#: the worker is refused (:class:`PolicyCheckTooCostly`) instead of holding every other
#: connection: only patterns with ``*`` or ``>`` over many served subjects of other
#: policies come near it.
MAX_POLICY_LOOKS = 20_000


class PolicyCheckTooCostly(Exception):
    """A worker's patterns would take more than :data:`MAX_POLICY_LOOKS` looks to check
    against the subjects served by other routing policies."""


class SubjectPolicies:
    """The routing policy of every subject that connected job-taking workers serve.

    The first worker that serves a subject sets its policy; while any worker serves it,
    one that asks for another policy for it is refused (:meth:`conflict`); once the last
    one left, the policy is free again. Workers name subjects by patterns, so "serve the
    same subject" is "have overlapping patterns": some subject matches both.

    The patterns are kept in a trie, each with its policy and its workers by group, and
    each node counts the patterns below it by policy: a check walks only the subtrees
    holding another policy, so a Hello of the policy every worker has costs one look at
    the root per pattern, however many workers there are.
    """

    def __init__(self) -> None:
        self._root = _Node()
        self._claims = itertools.count()

    def conflict(self, patterns: Iterable[str], policy: str) -> PolicyConflict | None:
        """Whether some of ``patterns`` share subjects with patterns served by another
        policy than ``policy``: for the first such pattern, the subjects it shares with the
        oldest of those (whose first group set their policy); None if there is none.

        Raises:
          PolicyCheckTooCostly: the check visited :data:`MAX_POLICY_LOOKS` nodes of the
            trie (patterns with ``*`` over many served subjects of other policies) without
            an answer: the Hello is refused rather than holding the leader.
        """
        root = self._root
        looks = [MAX_POLICY_LOOKS]  # (the trie nodes this check may still visit)
        for pattern in patterns:
            if not _other(root, policy):
                return None
            found = min(
                _overlapping(root, pattern.split("."), 0, [], policy, looks),
                key=lambda pair: pair[0].since,
                default=None,
            )
            if found is not None:
                claim, subjects = found
                return PolicyConflict(
                    subjects=".".join(subjects), pattern=pattern, policy=policy,
                    their_pattern=claim.pattern, their_policy=claim.policy,
                    group=next(iter(claim.groups)),
                )  # fmt: skip
        return None

    def add(self, patterns: Iterable[str], policy: str, group: str) -> None:
        """A worker of ``group`` serves ``patterns`` by ``policy`` (checked first with
        :meth:`conflict`; if not, a pattern is kept with each policy, and the leader
        still works)."""
        for pattern in dict.fromkeys(patterns):
            path = [self._root]
            for token in pattern.split("."):
                node = path[-1].children.get(token)
                if node is None:
                    node = path[-1].children[token] = _Node()
                path.append(node)
            claim = path[-1].claims.get(policy)
            if claim is None:
                claim = path[-1].claims[policy] = _Claim(pattern, policy, next(self._claims))
                for node in path:
                    node.policies[policy] = node.policies.get(policy, 0) + 1
            claim.groups[group] = claim.groups.get(group, 0) + 1

    def remove(self, patterns: Iterable[str], policy: str, group: str) -> None:
        """A worker :meth:`add` saw left: the patterns nobody serves any more are free."""
        for pattern in dict.fromkeys(patterns):
            path = [self._root]
            tokens = pattern.split(".")
            for token in tokens:
                path.append(path[-1].children[token])
            claim = path[-1].claims[policy]
            left = claim.groups[group] - 1
            if left:
                claim.groups[group] = left
                continue
            del claim.groups[group]
            if claim.groups:
                continue
            del path[-1].claims[claim.policy]
            for node in path:
                count = node.policies[claim.policy] - 1
                if count:
                    node.policies[claim.policy] = count
                else:
                    del node.policies[claim.policy]
            for depth in range(len(tokens), 0, -1):  # drop the nodes left empty
                if path[depth].policies:
                    break
                del path[depth - 1].children[tokens[depth - 1]]


def _other(node: _Node, policy: str) -> bool:
    """Whether patterns of another policy than ``policy`` lie at or below ``node``."""
    policies = node.policies
    return len(policies) > 1 or (bool(policies) and policy not in policies)


def _overlapping(
    node: _Node, tokens: list[str], i: int, subjects: list[str], policy: str, looks: list[int]
) -> Iterator[tuple[_Claim, list[str]]]:
    """The claims of another policy than ``policy`` at or below ``node`` whose patterns
    (from this depth) share a subject with ``tokens[i:]``, each with the shared subjects
    as a pattern (``subjects`` holds its first tokens). Each node visited costs one of
    ``looks``; past the last, :class:`PolicyCheckTooCostly`."""
    looks[0] -= 1
    if looks[0] < 0:
        raise PolicyCheckTooCostly
    if i == len(tokens):
        for claim in node.claims.values():
            if claim.policy != policy:
                yield claim, subjects
        return
    token = tokens[i]
    if token == ">":  # one token or more: every pattern that goes on from here
        for key, child in node.children.items():
            if _other(child, policy):
                yield from _below(child, [*subjects, key], policy, looks)
        return
    children = node.children
    rest = children.get(">")  # theirs: one token or more, and ours has tokens[i:]
    if rest is not None:
        for claim in rest.claims.values():
            if claim.policy != policy:
                yield claim, subjects + tokens[i:]
    if token == "*":
        for key, child in children.items():
            if key != ">" and _other(child, policy):
                yield from _overlapping(child, tokens, i + 1, [*subjects, key], policy, looks)
        return
    for key in (token, "*"):
        child = children.get(key)
        if child is not None and _other(child, policy):
            yield from _overlapping(child, tokens, i + 1, [*subjects, token], policy, looks)


def _below(
    node: _Node, subjects: list[str], policy: str, looks: list[int]
) -> Iterator[tuple[_Claim, list[str]]]:
    """Every claim of another policy than ``policy`` at or below ``node`` (``subjects``:
    the tokens that lead to it), a look each node (see :func:`_overlapping`)."""
    looks[0] -= 1
    if looks[0] < 0:
        raise PolicyCheckTooCostly
    for claim in node.claims.values():
        if claim.policy != policy:
            yield claim, subjects
    for key, child in node.children.items():
        if _other(child, policy):
            yield from _below(child, [*subjects, key], policy, looks)
