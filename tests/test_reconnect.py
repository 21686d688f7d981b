"""Client reconnect: exponential backoff with jitter, a fresh Hello each time, the attempt
count reset by a successful handshake, fatal refusals and giving up. Real loopback sockets
under the autojump clock: delays are asserted as exact virtual times."""

from __future__ import annotations

import functools
import itertools
import random
import re

import attrs
import pytest
import trio
import trio.testing

import runtime
from protocol import Error, ErrorCode, Hello, Welcome

pytestmark = pytest.mark.filterwarnings("error")


@attrs.define
class ScriptedServer:
    """Answers each connection as its script says, and notes when each Hello came.

    Actions: ``busy`` / ``auth`` (refuse the Hello), ``drop`` (welcome, then close with
    ``shutting_down``), ``welcome`` (welcome and serve until the client leaves).
    """

    script: list[str]
    retry_after: float | None = None
    hellos: list[tuple[float, str]] = attrs.field(factory=list)

    async def __call__(self, conn: runtime.Connection) -> None:
        hello = await conn.receive()
        assert type(hello) is Hello
        self.hellos.append((trio.current_time(), hello.name))
        action = self.script.pop(0) if self.script else "welcome"
        if action in ("busy", "auth"):
            code = ErrorCode.BUSY if action == "busy" else ErrorCode.AUTH_FAILED
            await conn.aclose(
                Error(mid=conn.next_mid(), code=code, message=action, retry_after=self.retry_after)
            )
            return
        conn.send_nowait(Welcome(mid=conn.next_mid(), cid=hello.mid, version=1))
        if action == "drop":
            await conn.aclose(
                Error(mid=conn.next_mid(), code=ErrorCode.SHUTTING_DOWN, message="restart")
            )
            return
        async for _ in conn:
            pass


def hello_factory() -> functools.partial[Hello]:
    counter = iter(range(1, 1000))
    return lambda: Hello(mid=0, role="worker", name=f"try-{next(counter)}")  # type: ignore[return-value]


async def start(nursery: trio.Nursery, server: ScriptedServer, scheme: str = "tcp") -> str:
    return await nursery.start(functools.partial(runtime.serve, f"{scheme}://127.0.0.1:0", server))


async def stay_until_closed(conn: runtime.Connection) -> str:
    while True:
        await conn.receive()  # raises ConnectionClosed when the server goes


@pytest.mark.parametrize("scheme", ["tcp", "ws"])
async def test_backoff_delays_and_a_fresh_hello_each_attempt(
    scheme: str, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    server = ScriptedServer(["busy", "busy", "busy", "welcome"])
    url = await start(nursery, server, scheme)
    events: list[runtime.ReconnectEvent] = []

    async def session(conn: runtime.Connection) -> str:
        assert conn.welcome is not None
        return "done"

    t0 = trio.current_time()
    with trio.fail_after(100):
        result = await runtime.run_reconnecting(
            url,
            session,
            hello_factory=hello_factory(),
            backoff=runtime.Backoff(base=1, factor=2, cap=60),
            on_state=events.append,
        )
    assert result == "done"
    assert [(t - t0, name) for t, name in server.hellos] == [
        (0, "try-1"),
        (1, "try-2"),
        (3, "try-3"),
        (7, "try-4"),
    ]
    waits = [(e.attempt, e.delay) for e in events if e.state == "waiting"]
    assert waits == [(1, 1.0), (2, 2.0), (3, 4.0)]
    assert [e.state for e in events[-2:]] == ["connecting", "connected"]
    errors = [e.error for e in events if e.state == "disconnected"]
    assert all(isinstance(e, runtime.HandshakeError) and e.code == ErrorCode.BUSY for e in errors)


async def test_a_successful_handshake_resets_the_attempts(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    server = ScriptedServer(["busy", "busy", "drop", "busy", "welcome"])
    url = await start(nursery, server)
    sessions = 0

    async def session(conn: runtime.Connection) -> None:
        nonlocal sessions
        sessions += 1
        if sessions == 1:
            with pytest.raises(runtime.ConnectionClosed) as info:
                async for _ in conn:
                    pass  # pragma: no cover
            assert info.value.code == ErrorCode.SHUTTING_DOWN and not info.value.clean
            raise info.value

    t0 = trio.current_time()
    with trio.fail_after(100):
        await runtime.run_reconnecting(
            url, session, hello_factory=hello_factory(), backoff=runtime.Backoff(base=1, factor=2)
        )
    # 0 busy, +1 busy, +2 welcome then dropped; counting restarts: +1 busy, +2 welcome.
    assert [t - t0 for t, _ in server.hellos] == [0, 1, 3, 4, 6]
    assert sessions == 2


async def test_fatal_refusal_is_raised_at_once(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    server = ScriptedServer(["auth"])
    url = await start(nursery, server)
    with trio.fail_after(100), pytest.raises(runtime.HandshakeError) as info:
        await runtime.run_reconnecting(
            url, stay_until_closed, hello_factory=hello_factory(), backoff=runtime.Backoff()
        )
    assert info.value.code == ErrorCode.AUTH_FAILED
    assert len(server.hellos) == 1


async def test_gives_up_when_the_backoff_is_exhausted(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.socket.socket() as sock:
        await sock.bind(("127.0.0.1", 0))  # bound, not listening: connections are refused
        address = f"127.0.0.1:{sock.getsockname()[1]}"
        events: list[runtime.ReconnectEvent] = []
        t0 = trio.current_time()
        with trio.fail_after(100), pytest.raises(OSError, match=re.escape(address)):
            await runtime.run_reconnecting(
                f"tcp://{address}",
                stay_until_closed,
                hello_factory=hello_factory(),
                backoff=runtime.Backoff(base=0.5, factor=3, max_attempts=3),
                on_state=events.append,
            )
        assert trio.current_time() - t0 == pytest.approx(0.5 + 1.5)
        assert [e.state for e in events].count("connecting") == 3
        assert events[-1].state == "given_up" and isinstance(events[-1].error, OSError)


async def test_jitter_comes_from_the_given_rng(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    server = ScriptedServer(["busy", "busy", "busy"])
    url = await start(nursery, server)
    backoff = runtime.Backoff(base=1, factor=2, jitter=0.5)
    expected_rng = random.Random(1234)
    expected = [backoff.delay(n, expected_rng) for n in (1, 2, 3)]
    assert len(set(expected)) == 3 and expected != [1.0, 2.0, 4.0]

    async def session(conn: runtime.Connection) -> None:
        return None

    t0 = trio.current_time()
    with trio.fail_after(100):
        await runtime.run_reconnecting(
            url, session, hello_factory=hello_factory(), backoff=backoff, rng=random.Random(1234)
        )
    times = [t - t0 for t, _ in server.hellos]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert gaps == pytest.approx(expected, abs=1e-9)


async def test_retry_after_from_the_server_is_respected(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    server = ScriptedServer(["busy"], retry_after=10)
    url = await start(nursery, server)

    async def session(conn: runtime.Connection) -> None:
        return None

    t0 = trio.current_time()
    with trio.fail_after(100):
        await runtime.run_reconnecting(
            url, session, hello_factory=hello_factory(), backoff=runtime.Backoff(base=1)
        )
    assert [t - t0 for t, _ in server.hellos] == [0, 10]


async def test_other_errors_from_the_session_end_the_loop(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    server = ScriptedServer([])
    url = await start(nursery, server)

    async def session(conn: runtime.Connection) -> None:
        raise LookupError("bug in the session")

    with trio.fail_after(100), pytest.raises(LookupError):
        await runtime.run_reconnecting(
            url, session, hello_factory=hello_factory(), backoff=runtime.Backoff()
        )
    assert len(server.hellos) == 1


async def test_reconnects_after_the_server_restarts(autojump_clock: trio.testing.MockClock) -> None:
    # The server goes away entirely (connections refused), then comes back on the same port.
    events: list[runtime.ReconnectEvent] = []
    connected = trio.Event()
    async with trio.open_nursery() as outer:
        server_scope = trio.CancelScope()

        async def first_server(task_status: trio.TaskStatus[str]) -> None:
            with server_scope:
                await runtime.serve(
                    "tcp://127.0.0.1:0", ScriptedServer([]), task_status=task_status
                )

        url = await outer.start(first_server)

        async def session(conn: runtime.Connection) -> str:
            connected.set()
            if sum(e.state == "connected" for e in events) == 1:
                await stay_until_closed(conn)
            return "second session"

        async def client() -> None:
            result = await runtime.run_reconnecting(
                url,
                session,
                hello_factory=hello_factory(),
                backoff=runtime.Backoff(base=1, factor=2),
                on_state=events.append,
            )
            assert result == "second session"

        with trio.fail_after(100):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(client)
                await connected.wait()
                server_scope.cancel()  # the server dies: the connection drops, refused after
                await trio.sleep(5)
                await outer.start(functools.partial(runtime.serve, url, ScriptedServer([])))
        outer.cancel_scope.cancel()
    states = [e.state for e in events]
    assert states.count("connected") == 2
    errors = [e.error for e in events if e.state == "disconnected"]
    assert isinstance(errors[0], runtime.ConnectionClosed)  # the drop
    assert len(errors) >= 2 and all(isinstance(e, OSError) for e in errors[1:])  # refused
