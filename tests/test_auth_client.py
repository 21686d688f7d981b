"""The client's and the worker's side of authentication: tokens and token providers, the
typed errors of ``auth_failed`` and ``not_permitted``.

A provider is asked for the token of every connection attempt: a rotated token is picked
up at the next reconnect (the leader's ``set_auth`` closes the connections whose token no
longer holds), and a provider still giving the old one is retried with backoff. A static
token the leader refuses is final, at connect and on a reconnect. Real leaders on loopback
(``memory=True``), real time with a fast backoff; each test is capped with ``fail_after``.
"""

from __future__ import annotations

import logging
import re
import time

import pytest
import trio

from actors import (
    AuthConfig,
    AuthFailed,
    Client,
    ConnectionLost,
    ConnectionRefused,
    ConnectTimeout,
    Leader,
    NotPermitted,
    RemoteError,
    User,
    Worker,
)
from actors._credentials import TokenUnavailable, fetch_token
from actors.worker import WorkerRunner
from protocol import ErrorCode
from runtime import Backoff, HandshakeError
from tests.helpers import wait_until

pytestmark = pytest.mark.e2e

FIRST = "first-token-0123456789"
SECOND = "second-token-0123456789"
#: Reconnects at once or nearly: the tests wait for reconnects in real time.
FAST = Backoff(base=0.01, factor=2.0, cap=0.05)


async def start_leader(nursery: trio.Nursery, **kwargs) -> tuple[Leader, str]:
    leader = Leader(listen=["tcp://127.0.0.1:0"], memory=True, **kwargs)
    [url] = await nursery.start(leader.run)
    return leader, url


class Provider:
    """A token provider that notes each call; gives ``tokens`` in turn, then the last one
    for ever (an exception in the list is raised instead)."""

    def __init__(self, *tokens: str | Exception) -> None:
        self.tokens = list(tokens)
        self.calls: list[str | Exception] = []

    def __call__(self) -> str:
        token = self.tokens.pop(0) if len(self.tokens) > 1 else self.tokens[0]
        self.calls.append(token)
        if isinstance(token, Exception):
            raise token
        return token


class AsyncProvider(Provider):
    async def __call__(self) -> str:  # type: ignore[override]
        await trio.lowlevel.checkpoint()
        return super().__call__()


# --------------------------------------------------------------------------- token providers


@pytest.mark.parametrize("kind", [Provider, AsyncProvider], ids=["plain", "async"])
async def test_the_provider_is_asked_per_connection_and_a_rotated_token_is_picked_up(
    nursery: trio.Nursery, kind: type[Provider]
) -> None:
    leader, url = await start_leader(nursery, token=FIRST)
    provider = kind(FIRST)
    with trio.fail_after(20):
        async with Client.connect(url, token=provider, reconnect_backoff=FAST) as client:
            assert provider.calls == [FIRST]
            await client.publish("events.x", 1, qos=1)
            assert provider.calls == [FIRST]  # (asked per connection, not per call)
            # The rotation: the provider gives the new token, the leader takes only it
            # and closes the connection made with the old one.
            provider.tokens = [SECOND]
            leader.set_auth(AuthConfig.shared_token(SECOND))
            await wait_until(lambda: client.connects == 2, timeout=10)
            await client.publish("events.x", 2, qos=1)
            assert provider.calls == [FIRST, SECOND]


async def test_a_provider_still_giving_the_old_token_is_asked_again_until_it_gives_the_new(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    leader, url = await start_leader(nursery, token=FIRST)
    provider = Provider(FIRST)
    with trio.fail_after(20):
        async with Client.connect(url, token=provider, reconnect_backoff=FAST) as client:
            # The file (say) is rewritten a little after the leader's rotation.
            provider.tokens = [FIRST, FIRST, SECOND]
            leader.set_auth(AuthConfig.shared_token(SECOND))
            await wait_until(lambda: client.connects == 2, timeout=10)
            await client.publish("events.x", 1, qos=1)
    assert provider.calls == [FIRST, FIRST, FIRST, SECOND]
    retries = [r.getMessage() for r in caplog.records if "refused the token" in r.getMessage()]
    assert len(retries) == 2, retries  # one line per refused attempt retried
    assert "the provider gives the same one" in retries[0]
    assert "trying the provider's new one" in retries[-1]
    assert not any(FIRST in line or SECOND in line for line in caplog.messages)


async def test_a_provider_that_raises_fails_that_attempt_which_is_retried(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    _, url = await start_leader(nursery, token=FIRST)
    provider = Provider(RuntimeError("vault unreachable"), FIRST)
    with trio.fail_after(20):
        async with Client.connect(url, token=provider, reconnect_backoff=FAST) as client:
            await client.publish("events.x", 1, qos=1)
    assert [type(call) for call in provider.calls] == [RuntimeError, str]
    [line] = [m for m in caplog.messages if "token provider" in m]
    assert "failed: RuntimeError: vault unreachable" in line
    assert "trying again after the reconnect delay" in line


async def test_a_provider_that_keeps_failing_ends_connect_at_its_timeout_naming_it(
    nursery: trio.Nursery,
) -> None:
    _, url = await start_leader(nursery, token=FIRST)
    provider = Provider(OSError("no such file"))
    with trio.fail_after(10), pytest.raises(ConnectTimeout) as failed:
        async with Client.connect(url, token=provider, reconnect_backoff=FAST, connect_timeout=0.5):
            pass
    assert "token provider" in str(failed.value) and "no such file" in str(failed.value)
    assert len(provider.calls) > 1


async def test_what_a_provider_gives_must_be_a_non_empty_str() -> None:
    assert await fetch_token(None) is None
    assert await fetch_token(FIRST) == FIRST
    for bad, said in ((lambda: "", "an empty str"), (lambda: b"bytes", "a bytes")):
        with pytest.raises(TokenUnavailable, match=said) as failed:
            await fetch_token(bad)
        assert "bytes'" not in str(failed.value)  # (never the value: it may be a secret)


# --------------------------------------------------------------------------- auth_failed


@pytest.mark.parametrize("token", ["not-the-token-XYZ", None])
async def test_a_static_wrong_token_raises_auth_failed_at_once(
    nursery: trio.Nursery, token: str | None
) -> None:
    _, url = await start_leader(nursery, token=FIRST)
    started = time.monotonic()
    with trio.fail_after(10), pytest.raises(AuthFailed) as failed:
        async with Client.connect(url, token=token, connect_timeout=5):
            pass
    assert time.monotonic() - started < 2  # not retried until the connect timeout
    error = failed.value
    assert isinstance(error, ConnectionRefused) and isinstance(error, ConnectionLost)
    assert str(error).startswith(f"could not connect to {url}: the leader refused the credentials")
    assert "auth_failed" in str(error) and error.message in str(error) and error.message
    assert "XYZ" not in str(error)


async def test_a_provider_giving_again_the_token_refused_fails_connect_at_once(
    nursery: trio.Nursery,
) -> None:
    _, url = await start_leader(nursery, token=FIRST)
    provider = Provider("wrong-token-0123456789")
    with trio.fail_after(10), pytest.raises(AuthFailed):
        async with Client.connect(url, token=provider, reconnect_backoff=FAST, connect_timeout=5):
            pass
    assert provider.calls == ["wrong-token-0123456789"] * 2  # asked again: the same one


async def test_a_provider_giving_a_new_token_after_a_refusal_connects(
    nursery: trio.Nursery,
) -> None:
    _, url = await start_leader(nursery, token=FIRST)
    provider = Provider("stale-token-0123456789", FIRST)
    with trio.fail_after(10):
        async with Client.connect(url, token=provider, reconnect_backoff=FAST) as client:
            await client.publish("events.x", 1, qos=1)
    assert provider.calls == ["stale-token-0123456789", FIRST]


async def test_a_static_token_revoked_ends_the_client_with_auth_failed(
    nursery: trio.Nursery,
) -> None:
    leader, url = await start_leader(nursery, token=FIRST)
    with trio.fail_after(20):
        async with Client.connect(url, token=FIRST, reconnect_backoff=FAST) as client:
            await client.publish("events.x", 1, qos=1)
            leader.set_auth(AuthConfig.shared_token(SECOND))

            async def until_refused() -> AuthFailed:
                while True:  # (until the client has tried again, and given up)
                    try:
                        await client.publish("events.x", 2, qos=1)
                    except AuthFailed as exc:
                        return exc
                    await trio.sleep(0.01)

            failed = await until_refused()
            assert str(failed).startswith(f"connection to {url} lost for good")
            assert "auth_failed" in str(failed)
            with pytest.raises(AuthFailed):  # and every later call
                await client.submit("math.square", 1)


# --------------------------------------------------------------------------- not_permitted


async def test_not_permitted_answers_raise_not_permitted_with_the_leaders_words(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    web = User(
        name="web", tokens=(FIRST,), submit=["img.>"], publish=["events.>"], subscribe=["events.>"]
    )
    _, url = await start_leader(nursery, auth=AuthConfig(users=(web,)))
    with trio.fail_after(20):
        async with Client.connect(url, token=FIRST) as client:
            with pytest.raises(NotPermitted) as refused:
                await client.submit("admin.reset", {}, timeout=5)
            assert str(refused.value) == "'web' may not submit to admin.reset"
            assert refused.value.subject == "admin.reset" and refused.value.job_id
            assert refused.value.code == ErrorCode.NOT_PERMITTED
            assert isinstance(refused.value, RemoteError)
            with pytest.raises(NotPermitted, match=re.escape("may not submit to admin.later")):
                await client.enqueue("admin.later", {})
            with pytest.raises(NotPermitted, match=re.escape("may not publish to admin.news")):
                await client.publish("admin.news", 1, qos=1)
            async with client.subscribe("admin.>") as sub:
                with pytest.raises(NotPermitted, match=re.escape("may not subscribe to admin.>")):
                    await sub.receive()
            # A QoS 0 publish waits for no answer: its refusal is counted and logged once.
            await client.publish("admin.news", 2)
            await client.publish("admin.news", 3)
            await client.publish("events.x", 4, qos=1)  # (after the refusals, in order)
            assert client.unanswered_errors == 2
    [line] = [m for m in caplog.messages if "waits for no answer" in m]
    assert "not_permitted: 'web' may not publish to admin.news" in line


async def test_a_subscription_past_max_subscriptions_raises_not_permitted(
    nursery: trio.Nursery,
) -> None:
    _, url = await start_leader(nursery, max_subscriptions=1)
    with trio.fail_after(20):
        async with (
            Client.connect(url) as client,
            client.subscribe("a.>"),
            client.subscribe("b.>") as second,
        ):
            with pytest.raises(NotPermitted) as refused:
                await second.receive()
            assert refused.value.code == ErrorCode.NOT_PERMITTED


# --------------------------------------------------------------------------- the worker


class Echo(Worker):
    subjects = ["echo.x"]

    async def handle(self, job):
        return job.payload


async def test_a_worker_asks_its_provider_per_connection(nursery: trio.Nursery) -> None:
    leader, url = await start_leader(nursery, token=FIRST)
    provider = AsyncProvider(FIRST)
    runner = WorkerRunner(Echo(), url, token=provider, reconnect_backoff=FAST)
    with trio.fail_after(20):
        await nursery.start(runner.run)
        assert provider.calls == [FIRST]
        provider.tokens = [SECOND]
        leader.set_auth(AuthConfig.shared_token(SECOND))
        await wait_until(lambda: runner.connects == 2, timeout=10)
        async with Client.connect(url, token=SECOND) as client:
            assert await client.submit("echo.x", 7, timeout=5) == 7
    assert provider.calls == [FIRST, SECOND]


@pytest.mark.parametrize("token", ["wrong-token-0123456789", Provider("wrong-token-0123456789")])
async def test_a_worker_with_a_wrong_token_fails_to_start(nursery: trio.Nursery, token) -> None:
    _, url = await start_leader(nursery, token=FIRST)
    runner = WorkerRunner(Echo(), url, token=token, reconnect_backoff=FAST)
    with trio.fail_after(10), pytest.raises(HandshakeError) as refused:
        await runner.run()
    assert refused.value.code == ErrorCode.AUTH_FAILED and runner.connects == 0


async def test_auth_failures_are_logged_without_the_token(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    leader, url = await start_leader(nursery, token=FIRST)
    provider = Provider(FIRST)
    runner = WorkerRunner(Echo(), url, name="w", token=provider, reconnect_backoff=FAST)
    with trio.fail_after(20):
        await nursery.start(runner.run)
        provider.tokens = [FIRST, SECOND]
        leader.set_auth(AuthConfig.shared_token(SECOND))
        await wait_until(lambda: runner.connects == 2, timeout=10)
    lines = [m for m in caplog.messages if m.startswith("worker w: ")]
    assert lines and all(FIRST not in m and SECOND not in m for m in caplog.messages)
