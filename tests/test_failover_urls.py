"""Clients and workers that know several leaders: failover between them.

A leader URL may be several, comma-separated or in a list: each is checked up front (the bad
one named), the reconnect loop tries them round robin from the first, moves on to the next
at once after a failed attempt or a lost connection, and backs off only once every leader
has had an attempt since the last wait.

The loop's order and delays are asserted as exact virtual times over a fake
``open_connection`` (``runtime._reconnect`` looks it up at each attempt); the end-to-end
tests (real time, marked ``e2e``) run two in-memory leaders in process and stop the first.
"""

from __future__ import annotations

import argparse
import ssl
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import attrs
import pytest
import trio
import trio.lowlevel
import trio.testing

import runtime
import runtime._reconnect
from actors import Client, ConnectionRefused, Job, Leader, Worker
from actors._checks import ConfigError
from actors._credentials import check_leader_urls, credentials_from_args
from actors.worker import WorkerRunner
from protocol import ErrorCode, Hello
from runtime._url import check_urls, split_urls

A, B, C = "tcp://127.0.0.1:7001", "tcp://127.0.0.1:7002", "tcp://127.0.0.1:7003"
#: Delays without jitter: 1, 2, 4 ... seconds, asserted as exact virtual times.
EXACT = runtime.Backoff(base=1, factor=2, cap=60)


# --------------------------------------------------------------------------- the loop


@attrs.define
class FakeLeaders:
    """Stands in for ``open_connection``: answers each attempt as the URL's script says
    and notes (URL, virtual seconds since the start) of each.

    Actions: ``refuse`` (``ConnectionRefusedError``; also when the script is used up),
    ``busy`` (a ``busy`` refusal with ``retry_after``) and ``welcome`` (a connection, of
    which the session decides the fate).
    """

    scripts: dict[str, list[str]]
    retry_after: float | None = None
    attempts: list[tuple[str, float]] = attrs.field(factory=list)
    start: float = attrs.field(factory=trio.current_time)

    @asynccontextmanager
    async def open(self, url: str, *, hello: Hello, **_: Any) -> AsyncIterator[str]:
        self.attempts.append((url, trio.current_time() - self.start))
        script = self.scripts.get(url, [])
        action = script.pop(0) if script else "refuse"
        await trio.lowlevel.checkpoint()  # (a checkpoint, as a real attempt has)
        if action == "refuse":
            raise ConnectionRefusedError(f"{url}: connection refused")
        if action == "busy":
            raise runtime.HandshakeError(ErrorCode.BUSY, "full", retry_after=self.retry_after)
        assert action == "welcome", action
        yield url  # the "connection": the session is told which leader it has


@pytest.fixture
def leaders(monkeypatch: pytest.MonkeyPatch) -> Callable[..., FakeLeaders]:
    def make(scripts: dict[str, list[str]], **kw: Any) -> FakeLeaders:
        fake = FakeLeaders(scripts, **kw)
        monkeypatch.setattr(runtime._reconnect, "open_connection", fake.open)
        return fake

    return make


def hello() -> Hello:
    return Hello(mid=0, role="client", name="failover")


async def run(url: Any, session: Callable[[Any], Any], **kw: Any) -> Any:
    kw.setdefault("backoff", EXACT)
    with trio.fail_after(1000):
        return await runtime.run_reconnecting(url, session, hello_factory=hello, **kw)


async def welcomed(conn: str) -> str:
    return conn


async def test_round_robin_backs_off_only_after_every_leader_failed_in_a_row(
    leaders: Callable[..., FakeLeaders], autojump_clock: trio.testing.MockClock
) -> None:
    fake = leaders({B: ["refuse", "refuse", "welcome"]})
    events: list[runtime.ReconnectEvent] = []
    assert await run(f"{A},{B}, {C}", welcomed, on_state=events.append) == B
    # A whole round at once, then the delays of one URL between rounds: 1 s, 2 s.
    assert fake.attempts == [(A, 0), (B, 0), (C, 0), (A, 1), (B, 1), (C, 1), (A, 3), (B, 3)]
    assert [(e.url, e.delay) for e in events if e.state == "waiting"] == [(C, 1.0), (C, 2.0)]
    assert [e.url for e in events if e.state == "connecting"] == [u for u, _ in fake.attempts]
    assert [e.attempt for e in events if e.state == "disconnected"] == [1, 2, 3, 4, 5, 6, 7]
    assert (events[-1].state, events[-1].url, events[-1].attempt) == ("connected", B, 0)


async def test_a_lost_connection_moves_to_the_next_leader_at_once(
    leaders: Callable[..., FakeLeaders], autojump_clock: trio.testing.MockClock
) -> None:
    fake = leaders({A: ["welcome", "refuse", "welcome"], B: ["welcome", "refuse"]})
    sessions: list[tuple[str, float]] = []

    async def session(conn: str) -> str:
        sessions.append((conn, trio.current_time() - fake.start))
        if len(sessions) == 3:
            return "done"
        await trio.sleep(10)  # a lasting connection, then its leader dies
        raise runtime.ConnectionClosed("leader died")

    assert await run([A, B], session) == "done"
    # A dies at 10: B at once. B dies at 20: A at once (refused); B and A have then both
    # failed since B's lasting connection: 1 s to B (refused), then A at once.
    assert fake.attempts == [(A, 0), (B, 10), (A, 20), (B, 21), (A, 21)]
    assert sessions == [(A, 0), (B, 10), (A, 21)]


async def test_leaders_that_drop_each_connection_at_once_are_not_cycled_without_a_pause(
    leaders: Callable[..., FakeLeaders], autojump_clock: trio.testing.MockClock
) -> None:
    fake = leaders({A: ["welcome"] * 3, B: ["welcome"] * 3})
    sessions = 0

    async def session(conn: str) -> str:
        nonlocal sessions
        sessions += 1
        if sessions == 5:
            return "done"
        raise runtime.ConnectionClosed("welcomed, then dropped")

    assert await run([A, B], session) == "done"
    # Each Welcome starts the delays again (1 s), but a round of short connections waits.
    assert fake.attempts == [(A, 0), (B, 0), (A, 1), (B, 1), (A, 2)]


async def test_one_url_waits_after_every_failure_as_before(
    leaders: Callable[..., FakeLeaders], autojump_clock: trio.testing.MockClock
) -> None:
    fake = leaders({A: ["refuse", "refuse", "refuse", "welcome"]})
    events: list[runtime.ReconnectEvent] = []
    assert await run(A, welcomed, on_state=events.append) == A
    assert fake.attempts == [(A, 0), (A, 1), (A, 3), (A, 7)]
    assert [(e.attempt, e.delay) for e in events if e.state == "waiting"] == [
        (1, 1.0),
        (2, 2.0),
        (3, 4.0),
    ]
    assert {e.url for e in events} == {A}


@pytest.mark.parametrize(
    ("urls", "attempts"),
    [
        (A, [(A, 0), (A, 1), (A, 3)]),
        ([A, B], [(A, 0), (B, 0), (A, 1), (B, 1), (A, 3), (B, 3)]),
    ],
)
async def test_max_attempts_counts_rounds(
    urls: Any,
    attempts: list[tuple[str, float]],
    leaders: Callable[..., FakeLeaders],
    autojump_clock: trio.testing.MockClock,
) -> None:
    fake = leaders({})
    events: list[runtime.ReconnectEvent] = []
    with pytest.raises(ConnectionRefusedError):
        await run(
            urls, welcomed, backoff=attrs.evolve(EXACT, max_attempts=3), on_state=events.append
        )
    assert fake.attempts == attempts
    assert events[-1].state == "given_up" and events[-1].url == attempts[-1][0]


async def test_busy_moves_on_and_its_retry_after_holds_the_round(
    leaders: Callable[..., FakeLeaders], autojump_clock: trio.testing.MockClock
) -> None:
    fake = leaders({A: ["busy"], B: ["busy", "welcome"]}, retry_after=10)
    assert await run([A, B], welcomed) == B
    assert fake.attempts == [(A, 0), (B, 0), (A, 10), (B, 10)]


async def test_the_jitter_of_a_round_comes_from_the_given_rng(
    leaders: Callable[..., FakeLeaders], autojump_clock: trio.testing.MockClock
) -> None:
    import random

    backoff = runtime.Backoff(base=1, factor=2, jitter=0.5)
    expected = random.Random(7)
    first, second = backoff.delay(1, expected), backoff.delay(2, expected)
    fake = leaders({B: ["refuse", "refuse", "welcome"]})
    await run([A, B], welcomed, backoff=backoff, rng=random.Random(7))
    times = [t for _, t in fake.attempts]
    assert times == pytest.approx([0, 0, first, first, first + second, first + second])


# --------------------------------------------------------------------------- checks


@pytest.mark.parametrize(
    ("urls", "bad"),
    [
        (f"{A},http://127.0.0.1:1", "http://127.0.0.1:1"),
        ([A, "tcp://127.0.0.1"], "tcp://127.0.0.1"),
        ((A, f"{B},udp://x:1"), "udp://x:1"),
        (f"{A},", "a comma too many"),
        ([], "no transport URL"),
    ],
)
async def test_every_url_is_checked_before_any_attempt(
    urls: Any, bad: str, leaders: Callable[..., FakeLeaders]
) -> None:
    fake = leaders({A: ["welcome"]})
    with pytest.raises(ValueError, match=bad):
        await run(urls, welcomed)
    assert fake.attempts == []


async def test_an_ssl_context_needs_every_url_to_use_tls(
    leaders: Callable[..., FakeLeaders],
) -> None:
    fake = leaders({})
    context = ssl.create_default_context()
    with pytest.raises(ValueError, match=f"given for {B}, which does not use TLS"):
        await run(["tls://127.0.0.1:1", B], welcomed, ssl_context=context)
    assert fake.attempts == []


def test_split_and_check_urls() -> None:
    assert split_urls(A) == (A,)
    assert split_urls(f" {A} ,{B}") == (A, B)
    assert split_urls([A, f"{B},{C}"]) == (A, B, C)
    assert check_urls((A, B)) == (A, B)
    with pytest.raises(TypeError, match="got int"):
        split_urls([A, 7])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="got set"):
        split_urls({A})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unsupported transport URL ''"):
        check_urls("")  # (a lone empty URL: said as before)


def test_the_command_lines_check_each_url() -> None:
    assert check_leader_urls(f"{A},{B}", at="--url") == f"{A},{B}"
    with pytest.raises(ConfigError, match="--url: unsupported transport URL 'udp://x:1'"):
        check_leader_urls(f"{A},udp://x:1", at="--url")
    with pytest.raises(ConfigError, match=r"--url: an empty URL in .*a comma too many"):
        check_leader_urls(f"{A},,{B}", at="--url")
    args = argparse.Namespace(token_env=None, token_file=None, tls_ca="ca.pem", tls_cert=None)
    args.tls_key = None
    with pytest.raises(ConfigError, match=f"--tls-ca: {B} does not use TLS"):
        credentials_from_args(args, url=f"tls://127.0.0.1:1,{B}")


def test_the_url_options_take_several(capsys: pytest.CaptureFixture[str]) -> None:
    from actors.cluster._shell import main as shell
    from actors.worker.__main__ import parse_args as worker_args

    urls = f"{A},ws://127.0.0.1:1/x,http://h:1"
    for run_command in (
        lambda: worker_args(["--url", urls, "tests.workers:Echo"]),
        lambda: shell(["result", "x", "--url", urls]),
    ):
        with pytest.raises(SystemExit) as info:
            run_command()
        assert info.value.code == 2
        assert "--url: unsupported transport URL 'http://h:1'" in capsys.readouterr().err
    args, _ = worker_args(["--url", f"{A},{B}", "tests.workers:Echo"])
    assert args.url == f"{A},{B}"


# --------------------------------------------------------------------------- end to end


class WhoServes(Worker):
    """Answers each job with its label: which worker (so which leader) served it."""

    subjects = ["who"]

    def __init__(self, label: str) -> None:
        self.label = label

    async def handle(self, job: Job) -> str:
        return self.label


async def start_leader(nursery: trio.Nursery, name: str) -> tuple[str, trio.CancelScope]:
    """An in-memory leader on a free port; cancelling the scope stops it."""
    leader = Leader(name=name, listen=["tcp://127.0.0.1:0"], memory=True)
    scope = trio.CancelScope()

    async def run(task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED) -> None:
        with scope:
            await leader.run(task_status=task_status)

    [url] = await nursery.start(run)
    return url, scope


async def refused_url() -> tuple[str, trio.socket.SocketType]:
    """A URL where connections are refused (a socket bound, not listening); keep it open."""
    sock = trio.socket.socket()
    await sock.bind(("127.0.0.1", 0))
    return f"tcp://127.0.0.1:{sock.getsockname()[1]}", sock


@pytest.mark.e2e
async def test_a_client_goes_on_with_the_second_leader_when_the_first_stops() -> None:
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            first, first_scope = await start_leader(nursery, "first")
            second, _ = await start_leader(nursery, "second")
            await nursery.start(WorkerRunner(WhoServes("first"), first, name="w1").run)
            await nursery.start(WorkerRunner(WhoServes("second"), second, name="w2").run)
            async with Client.connect([first, second]) as client:
                assert client.url == f"{first},{second}"
                assert [await client.submit("who") for _ in range(3)] == ["first"] * 3
                first_scope.cancel()  # the first leader stops; its worker stays behind
                assert await client.submit("who", timeout=5) == "second"
                assert await client.submit("who") == "second"
                assert client.connects == 2
            nursery.cancel_scope.cancel()


@pytest.mark.e2e
async def test_a_worker_reconnects_to_the_second_leader_when_the_first_stops() -> None:
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            first, first_scope = await start_leader(nursery, "first")
            second, _ = await start_leader(nursery, "second")
            runner = WorkerRunner(WhoServes("both"), f"{first},{second}", name="w")
            await nursery.start(runner.run)
            async with Client.connect(first) as client:
                assert await client.submit("who") == "both"
            first_scope.cancel()
            async with Client.connect(second) as client:
                # (waits at the second leader until the worker has come over)
                assert await client.submit("who", wait_for_worker=True, timeout=5) == "both"
            assert runner.connects == 2
            nursery.cancel_scope.cancel()


@pytest.mark.e2e
async def test_a_first_leader_that_refuses_does_not_stop_the_client_connecting() -> None:
    down, sock = await refused_url()
    with sock, trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            up, _ = await start_leader(nursery, "up")
            await nursery.start(WorkerRunner(WhoServes("up"), up, name="w").run)
            async with Client.connect(f"{down},{up}", connect_timeout=5) as client:
                assert await client.submit("who") == "up"
            nursery.cancel_scope.cancel()


@pytest.mark.e2e
async def test_the_client_fails_at_once_when_every_leader_refuses() -> None:
    (one, sock1), (two, sock2) = await refused_url(), await refused_url()
    with sock1, sock2, trio.fail_after(20):
        started = trio.current_time()
        with pytest.raises(ConnectionRefused, match="connection refused"):
            async with Client.connect([one, two], connect_timeout=10):
                pass  # pragma: no cover
        assert trio.current_time() - started < 5  # at once, not after connect_timeout


@pytest.mark.e2e
async def test_the_client_names_the_bad_url() -> None:
    with trio.fail_after(10), pytest.raises(Exception, match="'http://h:1'"):
        async with Client.connect(["tcp://127.0.0.1:1", "http://h:1"]):
            pass  # pragma: no cover
