"""Authentication and authorization on a real leader (loopback, real time, in memory).

Each permission is tried allowed and denied, and a denied action is shown to have had no
effect: the job was not queued nor run, the message not delivered, the worker not
registered, the subscription not made. Peers are raw connections (``runtime``) where the
exact answer matters, and the Python client and worker where a user's view does.
"""

from __future__ import annotations

import functools
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio

import runtime
from actors import AuthConfig, Client, Leader, Token, User, Worker
from actors.worker import WorkerRunner
from protocol import (
    SUPPORTED_VERSIONS,
    Cancel,
    Deliver,
    Error,
    ErrorCode,
    Hello,
    Publish,
    Query,
    Result,
    Submit,
    Subscribe,
)
from tests.helpers import wait_until

pytestmark = pytest.mark.e2e

WEB = "w" * 8 + "-web-token-123456"
RESIZER = "r" * 8 + "-resizer-token-12"
OPS = "o" * 8 + "-ops-token-1234567"
SPY = "s" * 8 + "-spy-token-1234567"


def users(**overrides: Any) -> AuthConfig:
    web = {
        "name": "web",
        "tokens": (WEB,),
        "submit": ["img.>"],
        "publish": ["events.web.>"],
        "subscribe": ["events.>", "!events.audit.>"],
    }
    web.update(overrides)
    return AuthConfig(
        users=(
            User(**web),
            User(name="resizer", tokens=(RESIZER,), serve=["img.>"], publish=["events.>"]),
            User(
                name="ops",
                tokens=(OPS,),
                submit=[">"],
                subscribe=[">"],
                publish=[">"],
                serve=[">"],
                admin=True,
            ),
            User(name="spy", tokens=(SPY,), submit=["img.>"], subscribe=["events.web.>"]),
        )
    )


class Resize(Worker):
    subjects = ["img.resize"]
    concurrency = 4

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[Any] = []
        self.gate: trio.Event | None = None

    async def handle(self, job: Any) -> Any:
        self.seen.append(job.payload)
        if self.gate is not None:
            await self.gate.wait()
        return {"resized": job.payload}


@asynccontextmanager
async def leader_with(
    auth: AuthConfig | None = None, **kw: Any
) -> AsyncIterator[tuple[Leader, str]]:
    kw.setdefault("memory", True)
    kw.setdefault("listen", ["tcp://127.0.0.1:0"])
    leader = Leader(auth=auth, **kw)
    async with trio.open_nursery() as nursery:
        [url] = await nursery.start(leader.run)
        yield leader, url
        nursery.cancel_scope.cancel()


def hello(token: str | None = None, role: str = "client", **kw: Any) -> Hello:
    return Hello(mid=0, role=role, versions=SUPPORTED_VERSIONS, token=token, **kw)


@asynccontextmanager
async def raw(url: str, token: str | None, **kw: Any) -> AsyncIterator[runtime.Connection]:
    async with runtime.open_connection(url, hello=hello(token, **kw)) as conn:
        yield conn


async def answer_to(conn: runtime.Connection, mid: int, timeout: float = 5) -> Any:
    """The message answering ``mid`` (others are skipped)."""
    with trio.fail_after(timeout):
        while True:
            for msg in await conn.receive_some():
                if getattr(msg, "cid", None) == mid:
                    return msg


async def refused_hello(url: str, **kw: Any) -> runtime.HandshakeError:
    with pytest.raises(runtime.HandshakeError) as info:
        async with raw(url, **kw):
            pass
    return info.value


async def nothing_more(conn: runtime.Connection, seconds: float = 0.3) -> list[Any]:
    """What ``conn`` receives in ``seconds`` (an Error that closed it included)."""
    got: list[Any] = []
    with trio.move_on_after(seconds):
        while True:
            try:
                got += await conn.receive_some()
            except runtime.ConnectionClosed as exc:
                if exc.code is not None and not any(isinstance(m, Error) for m in got):
                    got.append(Error(mid=1, code=exc.code, message=exc.reason))
                break
    return got


# --------------------------------------------------------------------------- authentication


async def test_a_hello_without_credentials_or_with_a_wrong_token_gets_auth_failed():
    async with leader_with(users()) as (leader, url):
        for token in (None, "nope", WEB + "x", ""):
            error = await refused_hello(url, token=token) if token != "" else None
            if error is not None:
                assert error.code == ErrorCode.AUTH_FAILED
                assert WEB not in error.message and (
                    token or "<none>"
                ) not in error.message.replace("token", "")
        # The right one is let in, and the leader is still up for everyone.
        async with raw(url, WEB) as conn:
            q = Query(mid=conn.next_mid(), what="stats")
            await conn.send(q)
            assert isinstance(await answer_to(conn, q.mid), Result)
        assert leader.stats()["connections"] == 0 or True


async def test_a_workers_hello_is_authenticated_too():
    async with leader_with(users()) as (leader, url):
        error = await refused_hello(
            url, token=None, role="worker", patterns=("img.resize",), credit=1
        )
        assert error.code == ErrorCode.AUTH_FAILED
        assert leader.stats()["workers"] == 0


async def test_expired_token_is_refused_and_a_connection_ends_when_its_token_expires():
    auth = AuthConfig(
        users=(
            User(
                name="old",
                tokens=(Token(secret="x" * 20, expires_at=time.time() - 1),),
                submit=[">"],
            ),
            User(
                name="short",
                tokens=(Token(secret="y" * 20, expires_at=time.time() + 0.6),),
                submit=[">"],
            ),
        )
    )
    async with leader_with(auth) as (_leader, url):
        error = await refused_hello(url, token="x" * 20)
        assert error.code == ErrorCode.AUTH_FAILED and "expired" in error.message
        async with raw(url, "y" * 20) as conn:
            with trio.fail_after(5):
                got = await nothing_more(conn, 3.0)
            errors = [m for m in got if isinstance(m, Error)]
            assert errors and errors[0].code == ErrorCode.AUTH_FAILED
            assert "expired" in errors[0].message


async def test_rotation_closes_connections_whose_token_went_and_keeps_the_others():
    async with leader_with(users()) as (leader, url):
        async with raw(url, WEB) as web, raw(url, OPS) as ops:
            new_web = "n" * 20
            leader.set_auth(
                AuthConfig(
                    users=(
                        User(name="web", tokens=(new_web,), submit=["img.>"]),
                        User(name="ops", tokens=(OPS,), submit=[">"], admin=True),
                    )
                )
            )
            got = await nothing_more(web, 1.0)
            errors = [m for m in got if isinstance(m, Error)]
            assert errors and errors[0].code == ErrorCode.AUTH_FAILED
            assert "revoked" in errors[0].message
            # ops stays connected and may still ask.
            q = Query(mid=ops.next_mid(), what="stats")
            await ops.send(q)
            assert isinstance(await answer_to(ops, q.mid), Result)
        assert (await refused_hello(url, token=WEB)).code == ErrorCode.AUTH_FAILED
        async with raw(url, "n" * 20):
            pass


async def test_a_token_provider_gives_a_new_token_on_reconnect_after_rotation():
    tokens = iter([WEB, "n" * 20, "n" * 20, "n" * 20])
    calls = 0

    async def provider() -> str:
        nonlocal calls
        calls += 1
        return next(tokens)

    async with leader_with(users(), heartbeat=0.2) as (leader, url):
        async with trio.open_nursery() as nursery:
            await nursery.start(WorkerRunner(Resize(), url, name="r", token=RESIZER).run)
            async with Client.connect(url, token=provider) as client:
                assert await client.submit("img.resize", 1) == {"resized": 1}
                leader.set_auth(attrs_evolve_web(users(), tokens=("n" * 20,)))
                with trio.fail_after(10):
                    while True:  # (the client reconnects with the provider's new token)
                        try:
                            assert await client.submit("img.resize", 2) == {"resized": 2}
                            break
                        except Exception:
                            await trio.sleep(0.1)
            nursery.cancel_scope.cancel()
    assert calls >= 2


def attrs_evolve_web(auth: AuthConfig, **changes: Any) -> AuthConfig:
    import attrs

    return attrs.evolve(
        auth,
        users=tuple(attrs.evolve(u, **changes) if u.name == "web" else u for u in auth.users),
    )


# --------------------------------------------------------------------------- serve


async def test_a_worker_may_serve_only_what_its_identity_may_and_a_denied_one_is_not_registered():
    async with leader_with(users()) as (leader, url):
        for patterns in (("img.>", "secret.x"), (">",), ("img.*.x", "$dlq.>")):
            error = await refused_hello(
                url, token=RESIZER, role="worker", patterns=patterns, credit=1
            )
            assert error.code == ErrorCode.NOT_PERMITTED
            assert leader.stats()["workers"] == 0
        # web may serve nothing at all
        error = await refused_hello(
            url, token=WEB, role="worker", patterns=("img.resize",), credit=1
        )
        assert (
            error.code == ErrorCode.NOT_PERMITTED
            and "'web' may not serve img.resize" in error.message
        )
        async with raw(url, RESIZER, role="worker", patterns=("img.resize", "img.>"), credit=1):
            assert leader.stats()["workers"] == 1


async def test_a_serve_pattern_that_overlaps_a_denied_one_is_refused():
    auth = AuthConfig(users=(User(name="w", tokens=("t" * 20,), serve=["img.>", "!img.secret.>"]),))
    async with leader_with(auth) as (leader, url):
        error = await refused_hello(
            url, token="t" * 20, role="worker", patterns=("img.>",), credit=1
        )
        assert error.code == ErrorCode.NOT_PERMITTED
        async with raw(url, "t" * 20, role="worker", patterns=("img.public.>",), credit=1):
            assert leader.stats()["workers"] == 1


# --------------------------------------------------------------------------- submit


async def test_submit_allowed_and_denied_and_a_denied_job_is_never_queued_nor_run():
    worker = Resize()
    async with leader_with(users()) as (leader, url):
        async with trio.open_nursery() as nursery:
            await nursery.start(WorkerRunner(worker, url, name="r", token=RESIZER).run)
            async with raw(url, WEB) as conn:
                ok = Submit(
                    mid=conn.next_mid(), job_id="j1", subject="img.resize", payload=1, qos=1
                )
                await conn.send(ok)
                assert (await answer_to(conn, ok.mid)).payload == {"resized": 1}
                for subject in ("admin.reset", "$dlq.img.resize", "image.resize"):
                    bad = Submit(
                        mid=conn.next_mid(),
                        job_id=f"x-{subject}",
                        subject=subject,
                        payload=2,
                        qos=1,
                    )
                    await conn.send(bad)
                    error = await answer_to(conn, bad.mid)
                    assert isinstance(error, Error) and error.code == ErrorCode.NOT_PERMITTED
                    assert subject in error.message
            stats = leader.stats()
            assert stats["jobs"]["submitted"] == 1 if "jobs" in stats else True
            assert worker.seen == [1]
            assert set(stats["subjects"]) <= {"img.resize"}
            nursery.cancel_scope.cancel()


async def test_reserved_subjects_are_refused_without_auth_too():
    async with leader_with(None) as (_leader, url):
        async with raw(url, None) as conn:
            for msg in (
                Submit(mid=conn.next_mid(), job_id="a", subject="$sys.x", payload=1, qos=1),
                Publish(mid=conn.next_mid(), subject="$dlq.x", payload=1, qos=1),
            ):
                await conn.send(msg)
                error = await answer_to(conn, msg.mid)
                assert isinstance(error, Error) and error.code == ErrorCode.NOT_PERMITTED
                assert "reserved" in error.message
        error = await refused_hello(url, token=None, role="worker", patterns=("$sys.>",), credit=1)
        assert error.code == ErrorCode.NOT_PERMITTED


# --------------------------------------------------------------------------- publish, subscribe


async def test_publish_and_subscribe_permissions_with_a_denied_sub_tree_filtered():
    async with leader_with(users()) as (_leader, url):
        async with raw(url, WEB) as web, raw(url, OPS) as ops, raw(url, RESIZER) as resizer:
            sub = Subscribe(mid=web.next_mid(), sid=1, pattern="events.>")
            await web.send(sub)
            denied_sub = Subscribe(mid=web.next_mid(), sid=2, pattern="events.audit.>")
            await web.send(denied_sub)
            error = await answer_to(web, denied_sub.mid)
            assert error.code == ErrorCode.NOT_PERMITTED and "events.audit.>" in error.message
            for pattern in (">", "secrets.>", "$dlq.>"):
                bad = Subscribe(mid=web.next_mid(), sid=3, pattern=pattern)
                await web.send(bad)
                assert (await answer_to(web, bad.mid)).code == ErrorCode.NOT_PERMITTED
            await trio.sleep(0.05)
            # resizer may publish events.>; ops everything
            for conn, subject in (
                (resizer, "events.audit.login"),
                (resizer, "events.web.click"),
                (ops, "events.audit.x"),
                (ops, "events.other"),
            ):
                await conn.send(Publish(mid=conn.next_mid(), subject=subject, payload=subject))
            # web may publish only events.web.>
            bad = Publish(mid=web.next_mid(), subject="events.audit.fake", payload="forged", qos=1)
            await web.send(bad)
            got = await nothing_more(web, 0.5)
            delivered = sorted(m.subject for m in got if isinstance(m, Deliver))
            assert delivered == ["events.other", "events.web.click"]
            errors = [m for m in got if isinstance(m, Error) and m.cid == bad.mid]
            assert errors and errors[0].code == ErrorCode.NOT_PERMITTED


async def test_a_denied_publish_is_not_delivered_to_anyone():
    async with leader_with(users()) as (_leader, url):
        async with raw(url, OPS) as ops, raw(url, WEB) as web:
            await ops.send(Subscribe(mid=ops.next_mid(), sid=1, pattern=">"))
            await trio.sleep(0.05)
            bad = Publish(mid=web.next_mid(), subject="img.injected", payload="x", qos=1)
            await web.send(bad)
            assert (await answer_to(web, bad.mid)).code == ErrorCode.NOT_PERMITTED
            assert [m for m in await nothing_more(ops) if isinstance(m, Deliver)] == []


async def test_a_non_admin_subscription_to_wildcards_never_receives_system_subjects():
    auth = AuthConfig(
        users=(
            User(name="all", tokens=("a" * 20,), subscribe=[">"], submit=[">"]),
            User(name="w", tokens=("b" * 20,), serve=["job.>"]),
        )
    )
    async with leader_with(auth, max_attempts=1) as (_leader, url):
        async with raw(url, "a" * 20) as sub:
            await sub.send(Subscribe(mid=sub.next_mid(), sid=1, pattern=">"))
            async with raw(url, "b" * 20, role="worker", patterns=("job.x",), credit=1) as worker:
                s = Submit(mid=sub.next_mid(), job_id="d1", subject="job.x", payload=1, qos=1)
                await sub.send(s)
                with trio.fail_after(5):
                    while True:
                        msgs = await worker.receive_some()
                        assigns = [m for m in msgs if type(m).__name__ == "Assign"]
                        if assigns:
                            break
                from protocol import Nack

                await worker.send(Nack(mid=worker.next_mid(), job_id="d1", reason="no"))
                got = await nothing_more(sub, 1.0)
            assert not [m for m in got if isinstance(m, Deliver) and m.subject.startswith("$")]


# --------------------------------------------------------------------------- job ownership


async def test_job_ids_belong_to_their_submitter():
    worker = Resize()
    worker.gate = trio.Event()
    async with leader_with(users()) as (_leader, url):
        async with trio.open_nursery() as nursery:
            await nursery.start(WorkerRunner(worker, url, name="r", token=RESIZER).run)
            async with raw(url, WEB) as web, raw(url, SPY) as spy, raw(url, OPS) as ops:
                s = Submit(
                    mid=web.next_mid(), job_id="mine", subject="img.resize", payload=7, qos=1
                )
                await web.send(s)
                await wait_until(lambda: bool(worker.seen), timeout=5)
                # Another identity: resubmitting, reading or cancelling the id is refused.
                for msg in (
                    Submit(
                        mid=spy.next_mid(), job_id="mine", subject="img.resize", payload=7, qos=1
                    ),
                    Query(mid=spy.next_mid(), what="result", job_id="mine", wait=True),
                    Cancel(mid=spy.next_mid(), job_id="mine"),
                ):
                    await spy.send(msg)
                    error = await answer_to(spy, msg.mid)
                    assert error.code == ErrorCode.NOT_PERMITTED, msg
                    assert "belongs to another identity" in error.message
                worker.gate.set()
                assert (await answer_to(web, s.mid)).payload == {"resized": 7}
                # Finished: still the owner's alone.
                for msg in (
                    Submit(
                        mid=spy.next_mid(), job_id="mine", subject="img.resize", payload=7, qos=1
                    ),
                    Query(mid=spy.next_mid(), what="result", job_id="mine"),
                ):
                    await spy.send(msg)
                    error = await answer_to(spy, msg.mid)
                    assert error.code == ErrorCode.NOT_PERMITTED
                    assert "resized" not in repr(error)
                q = Query(mid=web.next_mid(), what="result", job_id="mine")
                await web.send(q)
                assert (await answer_to(web, q.mid)).payload == {"resized": 7}
                q = Query(mid=ops.next_mid(), what="result", job_id="mine")
                await ops.send(q)
                assert (await answer_to(ops, q.mid)).payload == {"resized": 7}  # an admin may
            assert worker.seen == [7]
            nursery.cancel_scope.cancel()


async def test_an_admin_may_cancel_another_identitys_job_and_a_denied_cancel_has_no_effect():
    worker = Resize()
    worker.gate = trio.Event()
    async with leader_with(users()) as (_leader, url):
        async with trio.open_nursery() as nursery:
            await nursery.start(WorkerRunner(worker, url, name="r", token=RESIZER).run)
            async with raw(url, WEB) as web, raw(url, SPY) as spy, raw(url, OPS) as ops:
                a = Submit(mid=web.next_mid(), job_id="a", subject="img.resize", payload=1, qos=1)
                b = Submit(mid=web.next_mid(), job_id="b", subject="img.resize", payload=2, qos=1)
                await web.send(a)
                await web.send(b)
                await wait_until(lambda: len(worker.seen) >= 2, timeout=5)
                c = Cancel(mid=spy.next_mid(), job_id="a")
                await spy.send(c)
                assert (await answer_to(spy, c.mid)).code == ErrorCode.NOT_PERMITTED
                await ops.send(Cancel(mid=ops.next_mid(), job_id="b", reason="ops"))
                answer_b = await answer_to(web, b.mid)
                assert isinstance(answer_b, Result) and not answer_b.ok
                worker.gate.set()
                answer_a = await answer_to(web, a.mid)
                assert answer_a.ok and answer_a.payload == {"resized": 1}
            nursery.cancel_scope.cancel()


async def test_dead_letter_queries_are_for_admins():
    async with leader_with(users()) as (_leader, url):
        async with raw(url, WEB) as web, raw(url, OPS) as ops:
            for what in ("dead_letters", "retry_dead_letter", "purge_dead_letters"):
                q = Query(mid=web.next_mid(), what=what)
                await web.send(q)
                error = await answer_to(web, q.mid)
                assert error.code == ErrorCode.NOT_PERMITTED and "admin" in error.message
            q = Query(mid=ops.next_mid(), what="dead_letters")
            await ops.send(q)
            assert isinstance(await answer_to(ops, q.mid), Result)


# --------------------------------------------------------------------------- limits


async def test_connections_per_identity():
    auth = AuthConfig(
        users=(User(name="u", tokens=("u" * 20,), max_connections=2),), max_connections=5
    )
    async with leader_with(auth) as (_leader, url):
        async with raw(url, "u" * 20), raw(url, "u" * 20):
            error = await refused_hello(url, token="u" * 20)
            assert error.code == ErrorCode.BUSY and "'u' has 2 connections" in error.message
        async with raw(url, "u" * 20):  # (the count went down again)
            pass


async def test_submit_rate_per_identity_answers_busy_with_retry_after():
    auth = AuthConfig(
        users=(
            User(name="u", tokens=("u" * 20,), submit=[">"], submit_rate=2.0, submit_burst=3),
            User(name="v", tokens=("v" * 20,), submit=[">"]),
        )
    )
    async with leader_with(auth) as (_leader, url):
        async with raw(url, "u" * 20) as conn, raw(url, "v" * 20) as other:
            for i in range(5):
                s = Submit(
                    mid=conn.next_mid(), job_id=f"r{i}", subject="x.y", payload=i, qos=1, timeout=5
                )
                await conn.send(s)
            got = await nothing_more(conn, 0.5)
            busy = [m for m in got if isinstance(m, Error) and m.code == ErrorCode.BUSY]
            # the burst's 3 went on (no worker: they wait for one), the 2 over it are busy
            assert len(busy) == 2
            for msg in busy:
                assert "rate of 2 per second" in msg.message and 0 < msg.retry_after <= 0.5
            # another identity has its own bucket
            s = Submit(mid=other.next_mid(), job_id="o", subject="x.y", payload=0, qos=1)
            await other.send(s)
            assert not [
                m for m in await nothing_more(other, 0.3) if getattr(m, "code", "") == "busy"
            ]


async def test_payload_size_per_identity():
    auth = AuthConfig(
        users=(User(name="u", tokens=("u" * 20,), submit=[">"], publish=[">"], max_payload=100),)
    )
    async with leader_with(auth) as (_leader, url):
        async with raw(url, "u" * 20) as conn:
            for msg in (
                Submit(mid=conn.next_mid(), job_id="big", subject="a.b", payload=b"x" * 200, qos=1),
                Publish(mid=conn.next_mid(), subject="a.b", payload=b"x" * 200, qos=1),
            ):
                await conn.send(msg)
                error = await answer_to(conn, msg.mid)
                assert error.code == ErrorCode.TOO_LARGE and "100 bytes" in error.message


async def test_the_handshake_deadline_answers_a_silent_connection():
    async with leader_with(None, handshake_timeout=0.3) as (_leader, url):
        host, port = url.removeprefix("tcp://").rsplit(":", 1)
        stream = await trio.open_tcp_stream(host, int(port))
        started = trio.current_time()
        with trio.fail_after(3):
            data = await stream.receive_some()
        assert b"no Hello within 0.3 s" in data
        assert 0.25 <= trio.current_time() - started < 2
        await stream.aclose()


# --------------------------------------------------------------------------- safe defaults


def test_listening_beyond_loopback_without_auth_is_refused_unless_insecure():
    with pytest.raises(ValueError, match="without authentication"):
        Leader(listen=["tcp://0.0.0.0:0"], memory=True)
    with pytest.raises(ValueError, match="without authentication"):
        Leader(listen=["ws://example.com:0"], memory=True)
    Leader(listen=["tcp://0.0.0.0:0"], memory=True, insecure=True)
    Leader(listen=["tcp://0.0.0.0:0"], memory=True, auth=users())
    Leader(listen=["tcp://localhost:0", "tcp://[::1]:0", "tcp://127.0.0.2:0"], memory=True)


async def test_a_websocket_from_a_foreign_origin_is_refused_by_the_leader():
    import trio_websocket

    from tests.test_ws_origin import browser

    async with leader_with(
        None, listen=["ws://127.0.0.1:0"], allowed_origins=["http://app.example/"]
    ) as (leader, url):
        with pytest.raises(trio_websocket.ConnectionRejected) as info:
            await browser(url, "http://evil.example", None, "evil")  # type: ignore[arg-type]
        assert info.value.status_code == 403
        answer = await browser(url, "HTTP://APP.example", None, "app")  # type: ignore[arg-type]
        assert type(answer).__name__ == "Welcome"
        async with Client.connect(url) as client:  # (no Origin: not a browser)
            await client.stats()
        assert not leader.origin_allowed("null")
        assert leader.origin_allowed("http://app.example:80")
        assert not leader.origin_allowed("http://app.example:8080")


# --------------------------------------------------------------------------- restart


async def test_ownership_survives_a_restart_of_a_journalled_leader(tmp_path):
    worker = Resize()
    auth = users()
    async with leader_with(auth, memory=False, data_dir=tmp_path) as (_leader, url):
        async with trio.open_nursery() as nursery:
            await nursery.start(WorkerRunner(worker, url, name="r", token=RESIZER).run)
            async with Client.connect(url, token=WEB) as web:
                assert await web.submit("img.resize", 5, job_id="kept") == {"resized": 5}
            nursery.cancel_scope.cancel()
    async with leader_with(auth, memory=False, data_dir=tmp_path) as (_leader, url):
        async with raw(url, SPY) as spy, raw(url, WEB) as web:
            q = Query(mid=spy.next_mid(), what="result", job_id="kept")
            await spy.send(q)
            assert (await answer_to(spy, q.mid)).code == ErrorCode.NOT_PERMITTED
            q = Query(mid=web.next_mid(), what="result", job_id="kept")
            await web.send(q)
            assert (await answer_to(web, q.mid)).payload == {"resized": 5}
        assert (await refused_hello(url, token=None)).code == ErrorCode.AUTH_FAILED


_ = functools


# --------------------------------------------------------------------------- review findings


async def test_dead_letters_never_reach_workers_through_wildcards():
    from protocol import Assign, Nack

    auth = AuthConfig(
        users=(
            User(name="web", tokens=("a" * 20,), submit=["img.>"]),
            User(name="wild", tokens=("b" * 20,), serve=["*.img.a", ">"]),
            User(name="img", tokens=("c" * 20,), serve=["img.a"]),
        )
    )
    async with leader_with(auth, max_attempts=1) as (_leader, url):
        async with (
            raw(url, "b" * 20, role="worker", patterns=("*.img.a", "zzz.>"), credit=1) as wild,
            raw(url, "c" * 20, role="worker", patterns=("img.a",), credit=1) as img,
            raw(url, "a" * 20) as web,
        ):
            s = Submit(mid=web.next_mid(), job_id="p", subject="img.a", payload={"pw": 1}, qos=1)
            await web.send(s)
            with trio.fail_after(5):
                while not [m for m in await img.receive_some() if isinstance(m, Assign)]:
                    pass
            await img.send(Nack(mid=img.next_mid(), job_id="p", reason="no"))
            answer = await answer_to(web, s.mid)
            assert isinstance(answer, Result) and not answer.ok
            got = await nothing_more(wild, 0.5)
            assert not [m for m in got if isinstance(m, Deliver)]


async def test_rotation_takes_back_serve_rights_from_a_connected_worker():
    async with leader_with(users()) as (leader, url):
        async with raw(url, RESIZER, role="worker", patterns=("img.>",), credit=1) as worker:
            assert leader.stats()["workers"] == 1
            leader.set_auth(attrs_evolve(users(), "resizer", serve=["img.small.>"]))
            got = await nothing_more(worker, 1.0)
            errors = [m for m in got if isinstance(m, Error)]
            assert errors and errors[0].code == ErrorCode.NOT_PERMITTED
            assert "may no longer serve img.>" in errors[0].message
        await wait_until(lambda: leader.stats()["workers"] == 0, timeout=5)


async def test_rotation_filters_what_live_subscriptions_receive_at_once():
    async with leader_with(users()) as (leader, url):
        async with raw(url, WEB) as web, raw(url, OPS) as ops:
            await web.send(Subscribe(mid=web.next_mid(), sid=1, pattern="events.>"))
            await trio.sleep(0.05)
            await ops.send(Publish(mid=ops.next_mid(), subject="events.x", payload=1))
            assert [m.subject for m in await nothing_more(web) if isinstance(m, Deliver)] == [
                "events.x"
            ]
            leader.set_auth(
                attrs_evolve(users(), "web", subscribe=["events.>", "!events.audit.>", "!events.x"])
            )
            await ops.send(Publish(mid=ops.next_mid(), subject="events.x", payload=2))
            await ops.send(Publish(mid=ops.next_mid(), subject="events.y", payload=3))
            got = [m.subject for m in await nothing_more(web) if isinstance(m, Deliver)]
            assert got == ["events.y"]


async def test_an_admins_denied_subjects_are_filtered_too():
    auth = AuthConfig(
        users=(
            User(
                name="boss",
                tokens=("a" * 20,),
                subscribe=["events.>", "!events.audit.>"],
                publish=[">"],
                admin=True,
            ),
        )
    )
    async with leader_with(auth) as (_leader, url):
        async with raw(url, "a" * 20) as boss:
            await boss.send(Subscribe(mid=boss.next_mid(), sid=1, pattern="events.>"))
            await trio.sleep(0.05)
            for subject in ("events.audit.a", "events.b"):
                await boss.send(Publish(mid=boss.next_mid(), subject=subject, payload=1))
            got = [m.subject for m in await nothing_more(boss) if isinstance(m, Deliver)]
            assert got == ["events.b"]


async def test_rotation_that_sets_an_expiry_closes_the_connection_then():
    async with leader_with(users()) as (leader, url):
        async with raw(url, WEB) as web:
            soon = Token(secret=WEB, expires_at=time.time() + 0.4)
            leader.set_auth(attrs_evolve(users(), "web", tokens=(soon,)))
            got = await nothing_more(web, 3.0)
            errors = [m for m in got if isinstance(m, Error)]
            assert errors and errors[0].code == ErrorCode.AUTH_FAILED
            assert "'web' expired" in errors[0].message


def attrs_evolve(auth: AuthConfig, name: str, **changes: Any) -> AuthConfig:
    import attrs

    return attrs.evolve(
        auth,
        users=tuple(attrs.evolve(u, **changes) if u.name == name else u for u in auth.users),
    )


async def test_a_token_provider_that_hangs_cannot_hang_the_connect():
    async def hangs() -> str:
        await trio.sleep_forever()
        return ""

    from actors import ConnectTimeout

    async with leader_with(users()) as (_leader, url):
        with trio.fail_after(10), pytest.raises(ConnectTimeout):
            async with Client.connect(url, token=hangs, connect_timeout=0.3):
                pass


async def test_repeated_denials_are_logged_once_a_second_with_a_count(caplog):
    async with leader_with(users()) as (_leader, url):
        async with raw(url, WEB) as conn:
            with caplog.at_level("WARNING", logger="actors.leader"):
                mids = []
                for i in range(20):
                    s = Submit(
                        mid=conn.next_mid(), job_id=f"d{i}", subject="admin.x", payload=i, qos=1
                    )
                    await conn.send(s)
                    mids.append(s.mid)
                got = await nothing_more(conn, 0.5)  # every one answered
                assert sorted(m.cid for m in got if m.code == ErrorCode.NOT_PERMITTED) == mids
                lines = [r.getMessage() for r in caplog.records if "denied" in r.getMessage()]
                assert len(lines) == 1 and "'web' may not submit to admin.x" in lines[0]
                await trio.sleep(1.05)
                s = Submit(mid=conn.next_mid(), job_id="late", subject="admin.x", payload=0, qos=1)
                await conn.send(s)
                await answer_to(conn, s.mid)
                lines = [r.getMessage() for r in caplog.records if "denied" in r.getMessage()]
                assert len(lines) == 2 and "(19 more since the last such line)" in lines[1]
