"""A subject has one routing policy, whichever group serves it.

The first job-taking worker that serves a subject sets its policy; a worker of any group
that asks for another one for a subject workers still serve is refused at its Hello
(``conflict``, naming the subject, both policies and the group that set it), never
silently routed by the other policy; once the last of them left, the policy is free
again. Broadcast workers take no jobs and have no say. The broker's rules are tested
sans-I/O at exact times, the leader's refusal with two real workers, and a cluster
configuration that would run into it is refused when it is read.
"""

from __future__ import annotations

import itertools
import time

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from actors import Client, Worker
from actors._checks import ConfigError
from actors.cluster._config import config_from_mapping
from actors.leader import Leader
from actors.leader._routing import SubjectPolicies
from actors.worker._runner import WorkerRunner, run_worker
from protocol import ErrorCode, Hello, RoutingPolicy, subject_matches
from runtime import HandshakeError, open_connection
from tests.helpers import wait_until

from .test_broker import assigns, client, finish, make_broker, submit, worker

# --------------------------------------------------------------------------- the table


@pytest.mark.parametrize(
    ("theirs", "ours", "shared"),
    [
        ("jobs.resize", "jobs.resize", "jobs.resize"),
        ("jobs.*", "jobs.resize", "jobs.resize"),
        ("jobs.resize", "jobs.*", "jobs.resize"),
        ("jobs.>", "jobs.a.b", "jobs.a.b"),
        ("jobs.a.b", "jobs.>", "jobs.a.b"),
        ("*.resize", "jobs.*", "jobs.resize"),
        ("jobs.*.x", "jobs.>", "jobs.*.x"),
        (">", "a.b", "a.b"),
        ("jobs.>", "jobs.*", "jobs.*"),
    ],
)
def test_overlapping_patterns_of_another_policy_conflict(
    theirs: str, ours: str, shared: str
) -> None:
    policies = SubjectPolicies()
    policies.add([theirs], "sticky", "first")
    others = [] if theirs == ">" else ["other.thing"]  # (a pattern that shares no subject)
    conflict = policies.conflict([*others, ours], "round_robin")
    assert conflict is not None
    assert (conflict.subjects, conflict.pattern, conflict.their_pattern) == (shared, ours, theirs)
    assert (conflict.policy, conflict.their_policy, conflict.group) == (
        "round_robin",
        "sticky",
        "first",
    )
    assert policies.conflict([ours], "sticky") is None  # the same policy is welcome


@pytest.mark.parametrize(
    ("theirs", "ours"),
    [
        ("jobs.resize", "jobs.crop"),
        ("jobs.*", "jobs.a.b"),
        ("jobs.>", "jobs"),
        ("jobs.*", "jobs"),
        ("a.*.c", "a.b.d"),
        ("a.>", "b.>"),
    ],
)
def test_patterns_that_share_no_subject_do_not_conflict(theirs: str, ours: str) -> None:
    policies = SubjectPolicies()
    policies.add([theirs], "sticky", "first")
    assert policies.conflict([ours], "round_robin") is None


_TOKENS = st.sampled_from(["a", "b", "*"])
_PATTERNS = st.builds(
    lambda tokens, rest: ".".join(tokens + ([">"] if rest else [])),
    st.lists(_TOKENS, min_size=0, max_size=3),
    st.booleans(),
).filter(bool)


def _share_a_subject(p: str, q: str) -> bool:
    """By brute force: a subject of the tokens a, b, c ("c": one neither names) of the
    length of the longer pattern, or one more, matches both."""
    longest = max(len(p.split(".")), len(q.split("."))) + 1
    subjects = (
        ".".join(tokens)
        for n in range(1, longest + 1)
        for tokens in itertools.product("abc", repeat=n)
    )
    return any(subject_matches(p, s) and subject_matches(q, s) for s in subjects)


@given(theirs=st.lists(_PATTERNS, min_size=1, max_size=4), ours=_PATTERNS)
def test_a_conflict_is_found_exactly_when_patterns_share_a_subject(
    theirs: list[str], ours: str
) -> None:
    policies = SubjectPolicies()
    for i, pattern in enumerate(theirs):
        policies.add([pattern], "sticky", f"g{i}")
    conflict = policies.conflict([ours], "round_robin")
    expected = [p for p in theirs if _share_a_subject(p, ours)]
    if not expected:
        assert conflict is None
        return
    assert conflict is not None
    assert conflict.their_pattern == expected[0]  # the oldest of them
    # What it names as shared is exactly what both match.
    for n in range(1, 6):
        for tokens in itertools.product("abc", repeat=n):
            subject = ".".join(tokens)
            both = subject_matches(ours, subject) and subject_matches(
                conflict.their_pattern, subject
            )
            assert subject_matches(conflict.subjects, subject) == both, (subject, conflict)


def test_a_pattern_is_free_again_once_its_last_worker_left() -> None:
    policies = SubjectPolicies()
    policies.add(["jobs.a", "jobs.b"], "sticky", "g1")
    policies.add(["jobs.a"], "sticky", "g2")
    policies.add(["jobs.a"], "sticky", "g1")
    conflict = policies.conflict(["jobs.a"], "least_loaded")
    assert conflict is not None and conflict.group == "g1"  # the group that set it
    policies.remove(["jobs.a", "jobs.b"], "sticky", "g1")
    assert policies.conflict(["jobs.a"], "least_loaded") is not None  # two workers left
    policies.remove(["jobs.a"], "sticky", "g1")
    conflict = policies.conflict(["jobs.a"], "least_loaded")
    assert conflict is not None and conflict.group == "g2"  # the one still serving it
    assert policies.conflict(["jobs.b"], "least_loaded") is None  # nobody serves it
    policies.remove(["jobs.a"], "sticky", "g2")
    assert policies.conflict([">"], "least_loaded") is None
    assert policies._root.children == {} and policies._root.policies == {}  # nothing kept


# --------------------------------------------------------------------------- the broker


def test_the_first_worker_sets_the_policy_and_another_is_refused_until_it_leaves() -> None:
    b = make_broker()
    c = client()
    sticky = worker(b, "s1", 4, patterns=("jobs.a",), group="resizers", policy="sticky")
    assert b.policy_conflict(("jobs.a",), "sticky", "round_robin", "others") is None  # same policy
    message = b.policy_conflict(("jobs.*",), "round_robin", "round_robin", "thumbs")
    assert message is not None
    for fragment in ("'jobs.a'", "'sticky'", "'round_robin'", "'resizers'", "'thumbs'"):
        assert fragment in message, message
    assert (
        b.policy_conflict(("jobs.b",), "round_robin", "round_robin", "thumbs") is None
    )  # other subject
    assert (
        b.policy_conflict(("jobs.a",), "round_robin", "broadcast", "watchers") is None
    )  # takes no jobs
    # Its jobs are routed by its key, at once.
    for i, key in enumerate(["k1", "k2", "k1"]):
        submit(b, c, f"j{i}", subject="jobs.a", now=1.0, headers={"key": key})
    assert [a.job_id for a in assigns(sticky)] == ["j0", "j1", "j2"]
    assert b.queues["jobs.a"].policy == "sticky"
    for i in range(3):
        finish(b, sticky, f"j{i}", 2.0)
    # It leaves at 5.0: the subject is free; a round robin worker sets it now.
    b.worker_left(sticky, 5.0)
    assert b.queues["jobs.a"].policy is None
    assert b.policy_conflict(("jobs.*",), "round_robin", "round_robin", "thumbs") is None
    w1 = worker(b, "r1", 1, patterns=("jobs.*",), group="thumbs", now=6.0)
    w2 = worker(b, "r2", 1, patterns=("jobs.a",), group="other", now=6.0)
    assert b.queues["jobs.a"].policy == "round_robin"
    message = b.policy_conflict(("jobs.a",), "sticky", "round_robin", "resizers")
    assert message is not None and "'thumbs'" in message
    submit(b, c, "k-a", subject="jobs.a", now=7.0, headers={"key": "k1"})
    submit(b, c, "k-b", subject="jobs.a", now=7.0, headers={"key": "k1"})
    # Round robin, not sticky: same key, two workers.
    assert [a.job_id for a in assigns(w1)] == ["k-a"]
    assert [a.job_id for a in assigns(w2)] == ["k-b"]


def test_a_broadcast_worker_neither_sets_nor_holds_a_policy() -> None:
    b = make_broker()
    watcher = worker(
        b, "b1", 4, patterns=("jobs.a",), group="watchers", policy="sticky", mode="broadcast"
    )
    assert b.policy_conflict(("jobs.a",), "least_loaded", "round_robin", "g") is None
    b.worker_left(watcher, 1.0)
    w = worker(b, "w", 4, patterns=("jobs.a",), group="g", policy="least_loaded", now=2.0)
    assert b.policy_conflict(("jobs.a",), "sticky", "broadcast", "watchers") is None
    b.worker_left(w, 3.0)
    assert b.policy_conflict(("jobs.a",), "sticky", "round_robin", "h") is None


# --------------------------------------------------------------------------- the leader


class _Sticky(Worker):
    subjects = ["policy.a"]
    concurrency = 2

    async def handle(self, job):
        return ["sticky", job.payload]


class _Plain(Worker):
    subjects = ["policy.*"]
    concurrency = 2

    async def handle(self, job):
        return ["plain", job.payload]


@pytest.mark.e2e
async def test_the_leader_refuses_a_worker_asking_for_another_policy(nursery: trio.Nursery) -> None:
    with trio.fail_after(20):
        leader = Leader(listen=["tcp://127.0.0.1:0"])
        [url] = await nursery.start(leader.run)
        sticky_stop = trio.Event()
        first = WorkerRunner(
            _Sticky(), url, name="s1", group="resizers", policy=RoutingPolicy.STICKY
        )
        await nursery.start(
            lambda task_status: first.run(stop=sticky_stop, task_status=task_status)
        )

        # The second worker's start fails with the leader's message; it does not retry.
        with pytest.raises(HandshakeError) as info:
            await run_worker(_Plain(), url, name="p1", group="thumbs")
        assert info.value.code == ErrorCode.CONFLICT
        message = info.value.message
        for fragment in ("'policy.a'", "'sticky'", "'round_robin'", "'resizers'", "'thumbs'"):
            assert fragment in message, message
        assert "policy.*" in message  # its pattern, as it differs from the subject
        # Its connection was closed: the leader holds only the first worker.
        assert [w.name for w in leader.broker.workers] == ["s1"]

        # A Hello of the same policy (another group) is welcome; jobs keep their policy.
        async with open_connection(
            url,
            hello=Hello(
                mid=0,
                role="worker",
                name="s2",
                patterns=("policy.a",),
                credit=0,
                group="more",
                policy="sticky",
            ),
        ):
            assert len(leader.broker.workers) == 2
        async with Client.connect(url) as client:
            assert await client.submit("policy.a", 1, headers={"key": "k"}) == ["sticky", 1]

        # Once the sticky worker has left, the subject is free: the other one starts.
        sticky_stop.set()
        # (the leader has no event for a worker's leaving, and this is real time)
        await wait_until(lambda: not leader.broker.workers, timeout=5, what="the worker left")
        second_stop = trio.Event()
        second = WorkerRunner(_Plain(), url, name="p1", group="thumbs")
        await nursery.start(
            lambda task_status: second.run(stop=second_stop, task_status=task_status)
        )
        async with Client.connect(url) as client:
            assert await client.submit("policy.a", 2) == ["plain", 2]
        assert leader.broker.queues["policy.a"].policy == "round_robin"
        second_stop.set()


@pytest.mark.e2e
async def test_a_refused_group_instance_fails_to_start_with_the_leaders_message(
    nursery: trio.Nursery,
) -> None:
    from actors.worker._group import GroupFailed, WorkerGroup

    with trio.fail_after(20):
        leader = Leader(listen=["tcp://127.0.0.1:0"])
        [url] = await nursery.start(leader.run)
        first = WorkerRunner(_Sticky(), url, name="s1", group="resizers", policy="sticky")
        await nursery.start(first.run)
        group = WorkerGroup("thumbs", _Plain, 1, url, in_process=True, max_start_failures=1)
        with pytest.raises(GroupFailed) as info:
            await group.run()
        reason = info.value.reason
        assert "thumbs-0 failed to start 1 times in a row: HandshakeError:" in reason, reason
        assert (
            "routing policy conflict on subject 'policy.a': group 'resizers' set it to 'sticky'"
            in reason
        )


# --------------------------------------------------------------------------- the configuration


def _groups(*groups: dict) -> dict:
    return {"groups": [{"worker": "tests.workers:Echo", **group} for group in groups]}


def test_the_configuration_refuses_two_groups_of_one_subject_with_different_policies() -> None:
    data = _groups(
        {"name": "resize", "subjects": ["img.resize"], "policy": "sticky"},
        {"name": "other", "subjects": ["img.crop"]},
        {"name": "thumbs", "subjects": ["img.*"]},
    )
    with pytest.raises(ConfigError) as info:
        config_from_mapping(data, source="c.toml")
    message = info.value.message
    assert message.startswith(
        "c.toml: groups 'resize' and 'thumbs' both serve subject 'img.resize'"
    ), message
    assert "'sticky'" in message and "'round_robin'" in message


def test_the_configuration_accepts_one_policy_per_subject() -> None:
    config = config_from_mapping(
        _groups(
            {"name": "a", "subjects": ["img.resize"], "policy": "sticky"},
            {"name": "b", "subjects": ["img.*"], "policy": "sticky"},  # the same policy
            {
                "name": "c",
                "subjects": ["img.>"],
                "policy": "least_loaded",
                "mode": "broadcast",
            },  # no jobs
            {"name": "d", "subjects": ["doc.>"], "policy": "least_loaded"},  # other subjects
        ),
        source="c.toml",
    )
    assert [g.name for g in config.groups] == ["a", "b", "c", "d"]


def test_the_configuration_checks_the_class_subjects_too() -> None:
    from tests.workers import Echo

    [subject] = Echo.subjects[:1]
    data = _groups({"name": "echo"}, {"name": "sticky", "subjects": [subject], "policy": "sticky"})
    with pytest.raises(ConfigError, match="groups 'echo' and 'sticky' both serve"):
        config_from_mapping(data, source="c.toml")
    # Without importing the classes, their subjects are unknown: not checked.
    config_from_mapping(data, source="c.toml", import_workers=False)


def test_a_hello_too_costly_to_check_is_refused_at_once() -> None:
    """Patterns with ``*`` over many subjects served by another policy: the check stops after
    MAX_POLICY_LOOKS looks of the trie and refuses the worker, instead of holding the leader
    (20 workers of 1,000 patterns and one Hello of 1,024 ``a.*.qK`` took 25 s before)."""
    from actors.leader._routing import MAX_POLICY_LOOKS

    b = make_broker()
    for w in range(20):
        b.policies.add([f"a.x{w}_{j}.z" for j in range(1000)], "sticky", f"g{w}")
    patterns = [f"a.*.q{k}" for k in range(1024)]
    started = time.perf_counter()
    why = b.policy_conflict(patterns, "round_robin", "round_robin", "late")
    assert time.perf_counter() - started < 2.0
    assert why is not None and f"within {MAX_POLICY_LOOKS} looks" in why
    # A narrow Hello that shares nothing is still let in, and one that conflicts is named.
    assert b.policy_conflict(["b.*"], "round_robin", "round_robin", "late") is None
    why = b.policy_conflict(["a.x3_7.z"], "round_robin", "round_robin", "late")
    assert why is not None and "group 'g3'" in why
