"""``python -m actors status --http`` and ``python -m actors top`` (``actors/cluster/_status.py``).

Against a real leader serving HTTP, after real jobs: what the commands print is what the
leader's API says (workers, subjects, counts, dead letters), and the exit status says
whether it is ready. Against a fake server in the test (raw bytes on a real socket), the
answers a leader may not give: stale workers, a 401, a page that is not the API, an answer
too big or too slow, a redirect, ``429``, names made to fool a terminal. ``top`` runs once
in-process and, live, as a real process in a pseudo-terminal, quit with ``q`` and Ctrl-C.

The commands run in-process, ``actors.cluster._shell.main([...])`` in a thread (it runs
its own trio loop), their stdout and stderr captured, as tests/test_dlq_shell.py does.
Real time (``e2e``); each test capped.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st
from rich.console import Console

from actors import Client, DeadLettered, Job, Leader, Worker
from actors._checks import ConfigError
from actors.cluster._shell import main
from actors.cluster._status import (
    BadAnswer,
    Busy,
    HttpApi,
    Limits,
    Snapshot,
    Unreachable,
    _clean,
    parse_http_url,
    rates_between,
    render,
    take_snapshot,
)
from actors.leader import AuthConfig, User
from actors.worker import WorkerRunner
from runtime import Backoff
from tests.helpers import wait_until

pytestmark = pytest.mark.e2e

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAST_RETRY = Backoff(base=0.01, factor=2.0, cap=0.05, jitter=0.0)
ADMIN_TOKEN = "admin-token-0123456789abcdef"
WEB_TOKEN = "web-token-0123456789abcdef"


class Mail(Worker):
    """Answers ``{"sent": n}``; fails with ValueError for payloads with ``"fail"``."""

    subjects = ["mail.send"]
    concurrency = 8

    async def handle(self, job: Job) -> dict:
        if job.payload.get("fail"):
            raise ValueError(f"cannot send {job.payload['n']}")
        return {"sent": job.payload["n"]}


class Shell:
    """Runs ``python -m actors ARGS`` in-process; returns (status, stdout, stderr)."""

    def __init__(self, capsys: pytest.CaptureFixture[str]) -> None:
        self.capsys = capsys

    async def __call__(self, *argv: str) -> tuple[int, str, str]:
        def run() -> int:
            try:
                return main(list(argv))
            except SystemExit as exc:  # bad arguments: argparse exits with 2
                return int(exc.code or 0)

        self.capsys.readouterr()  # (what came before)
        status = await trio.to_thread.run_sync(run, abandon_on_cancel=True)
        captured = self.capsys.readouterr()
        return status, captured.out, captured.err


@pytest.fixture
def shell(capsys: pytest.CaptureFixture[str]) -> Shell:
    return Shell(capsys)


@pytest.fixture(autouse=True)
def _no_token_or_url_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """(A developer's ``$ACTORS_TOKEN`` or ``$ACTORS_HTTP`` would change what is sent.)"""
    monkeypatch.delenv("ACTORS_TOKEN", raising=False)
    monkeypatch.delenv("ACTORS_HTTP", raising=False)


async def start_leader(nursery: trio.Nursery, **settings: Any) -> Leader:
    settings.setdefault("memory", True)
    leader = Leader(
        listen=["tcp://127.0.0.1:0"], http="127.0.0.1:0", retry_backoff=FAST_RETRY, **settings
    )
    await nursery.start(leader.run)
    assert leader.http_url is not None
    return leader


def row(out: str, first: str) -> list[str]:
    """The cells of the table row that starts with ``first`` (split on blanks)."""
    for line in out.splitlines():
        cells = line.split()
        if cells and cells[0] == first:
            return cells
    raise AssertionError(f"no row {first!r} in:\n{out}")


# --------------------------------------------------------------------------- a real leader


async def test_status_shows_a_real_leaders_workers_subjects_and_counts(shell, nursery):
    leader = await start_leader(nursery, name="east", max_attempts=1)
    url = leader.urls[0]
    await nursery.start(WorkerRunner(Mail(), url, name="mail-1", group="mail").run)
    await nursery.start(WorkerRunner(Mail(), url, name="mail-2", group="mail").run)
    async with Client.connect(url) as client:
        for n in range(5):
            assert await client.submit("mail.send", {"n": n}) == {"sent": n}
        with pytest.raises(DeadLettered):
            await client.submit("mail.send", {"n": 9, "fail": True}, job_id="broken-9")
    with trio.fail_after(20):
        status, out, err = await shell("status", "--http", leader.http_url, "--sample", "0.2")
    assert (status, err) == (0, ""), out
    assert f"leader east at {leader.http_url}" in out and "ready" in out
    assert "2 online, 0 stale, 0 offline" in out
    # GROUP STATE ONLINE STALE OFFLINE WINDOW IN-FLIGHT DONE DONE/S FAILED DEAD P50 P99
    group = row(out, "mail")
    assert group[1:8] == ["running", "2", "0", "0", "16", "0", "5"]
    assert group[9:11] == ["0", "1"]  # failed, dead (a dead letter counts as dead)
    # SUBJECT WORKERS QUEUED IN-FLIGHT SUBMITTED IN/S DONE DONE/S FAILED DEAD P50 P99
    subject = row(out, "mail.send")
    assert (
        subject[1:5] == ["2", "0", "0", "6"] and subject[6] == "5" and subject[8:10] == ["0", "1"]
    )
    assert subject[10].replace(".", "").isdigit()  # p50, in ms
    for name in ("mail-1", "mail-2"):
        assert row(out, name)[1:3] == ["mail", "online"]
    assert row(out, "broken-9")[1:3] == ["mail.send", "1"]
    assert "ValueError: cannot send 9" in out
    assert "DEAD LETTERS (1, the newest first)" in out


async def test_status_json_combines_the_apis_answers(shell, nursery):
    leader = await start_leader(nursery)
    await nursery.start(WorkerRunner(Mail(), leader.urls[0], name="mail-1", group="mail").run)
    async with Client.connect(leader.urls[0]) as client:
        await client.submit("mail.send", {"n": 1})
    with trio.fail_after(20):
        status, out, err = await shell("status", "--http", leader.http_url, "--json")
    assert (status, err) == (0, "")
    answer = json.loads(out)
    assert answer["url"] == leader.http_url and answer["ready"] is True
    assert answer["healthz"]["status"] == "ok" and answer["readyz"]["status"] == "ready"
    assert answer["stats"]["subjects"]["mail.send"]["done"] == 1
    assert [w["name"] for w in answer["workers"]["workers"]] == ["mail-1"]
    assert answer["workers_stale"]["total"] == 0 and answer["workers_offline"]["total"] == 0
    assert answer["dead_letters"]["total"] == 0


async def test_a_leader_not_ready_exits_1_naming_the_groups(shell, nursery):
    leader = await start_leader(nursery)
    leader.set_group_state("resize", "starting")
    with trio.fail_after(20):
        status, out, err = await shell("status", "--http", leader.http_url, "--sample", "0")
    assert (status, err) == (1, "")
    assert "NOT READY" in out and "groups with no worker: resize (starting)" in out
    assert row(out, "resize")[1:5] == ["starting", "0", "0", "0"]


async def test_a_worker_that_left_is_shown_offline(shell, nursery):
    leader = await start_leader(nursery)
    url = leader.urls[0]
    await nursery.start(WorkerRunner(Mail(), url, name="stays", group="mail").run)
    with trio.CancelScope() as scope:
        async with trio.open_nursery() as inner:
            await inner.start(WorkerRunner(Mail(), url, name="leaves", group="mail").run)
            scope.cancel()
    await wait_until(lambda: leader.stats()["workers"] == 1, timeout=5)
    with trio.fail_after(20):
        status, out, _ = await shell("status", "--http", leader.http_url, "--sample", "0")
    assert status == 0
    assert "1 online, 0 stale, 1 offline" in out
    assert row(out, "mail")[2:5] == ["1", "0", "1"]  # online, stale, offline
    assert row(out, "leaves")[1:3] == ["mail", "offline"]
    assert row(out, "stays")[1:3] == ["mail", "online"]


async def test_tokens_on_a_leader_with_users(shell, nursery, monkeypatch, tmp_path):
    admin = User(name="ops", tokens=(ADMIN_TOKEN,), admin=True, submit=[">"], serve=[">"])
    web = User(name="web", tokens=(WEB_TOKEN,), submit=["mail.>"])
    leader = await start_leader(nursery, auth=AuthConfig(users=(admin, web)), max_attempts=1)
    await nursery.start(
        partial(WorkerRunner(Mail(), leader.urls[0], name="m", token=ADMIN_TOKEN).run)
    )
    async with Client.connect(leader.urls[0], token=WEB_TOKEN) as client:
        with pytest.raises(DeadLettered):
            await client.submit("mail.send", {"n": 1, "fail": True})
    with trio.fail_after(30):
        status, out, err = await shell("status", "--http", leader.http_url, "--sample", "0")
        assert (status, out) == (2, "")
        assert err.startswith(
            f"python -m actors: error: {leader.http_url}/api/stats: 401 unauthorized: the"
            " leader wants a token: give it with --token-env NAME or --token-file PATH"
        )
        assert err.count("\n") == 1 and ADMIN_TOKEN not in err
        monkeypatch.setenv("OPS_TOKEN", "wrong-token-0123456789")
        status, _, err = await shell("top", "--once", "--http", leader.http_url,
                                     "--token-env", "OPS_TOKEN")  # fmt: skip
        assert status == 2 and "401 unauthorized: the leader refused the token" in err
        # Any identity sees the stats; the dead letters' listing is an admin's.
        (tmp_path / "token").write_text(WEB_TOKEN + "\n")
        status, out, err = await shell("status", "--http", leader.http_url, "--sample", "0",
                                       "--token-file", str(tmp_path / "token"))  # fmt: skip
        assert (status, err) == (0, ""), out
        assert "1 dead letters (listing them needs an admin's token:" in out
        monkeypatch.setenv("OPS_TOKEN", ADMIN_TOKEN)
        status, out, err = await shell("status", "--http", leader.http_url, "--sample", "0",
                                       "--token-env", "OPS_TOKEN")  # fmt: skip
        assert (status, err) == (0, ""), out
        assert "DEAD LETTERS (1, the newest first)" in out and "cannot send 1" in out


async def test_top_once_renders_a_frame(shell, nursery):
    leader = await start_leader(nursery, name="west")
    await nursery.start(WorkerRunner(Mail(), leader.urls[0], name="mail-1", group="mail").run)
    async with Client.connect(leader.urls[0]) as client:
        await client.submit("mail.send", {"n": 1})
    with trio.fail_after(20):
        status, out, err = await shell("top", "--once", "--http", leader.http_url)
    assert (status, err) == (0, "")
    assert f"leader west at {leader.http_url}" in out
    assert "GROUPS" in out and "SUBJECTS" in out and "WORKERS" in out
    assert row(out, "mail-1")[1:3] == ["mail", "online"]
    assert "no dead letters" in out


async def test_the_url_comes_from_the_environment(shell, nursery, monkeypatch):
    leader = await start_leader(nursery)
    monkeypatch.setenv("ACTORS_HTTP", leader.http_url.removeprefix("http://"))
    with trio.fail_after(20):
        status, out, _ = await shell("top", "--once")
    assert status == 0 and f"at {leader.http_url}" in out


# --------------------------------------------------------------------------- top, live


def _in_a_terminal(*args: str) -> tuple[subprocess.Popen[bytes], int]:
    """``python -m actors ARGS`` with a pseudo-terminal as stdin, stdout and stderr."""
    import pty

    parent, child = pty.openpty()
    os.set_blocking(parent, False)
    env = {**os.environ, "COLUMNS": "160", "LINES": "50", "TERM": "xterm"}
    process = subprocess.Popen(
        [sys.executable, "-m", "actors", *args], stdin=child, stdout=child, stderr=child,
        cwd=ROOT, env=env, start_new_session=True,
    )  # fmt: skip
    os.close(child)
    return process, parent


async def _read_until(fd: int, wanted: bytes, seen: bytearray) -> None:
    while wanted not in seen:
        await trio.lowlevel.wait_readable(fd)
        try:
            seen += os.read(fd, 65536)
        except OSError:  # (EIO: the other side closed)
            raise AssertionError(
                f"the terminal closed before {wanted!r}: {bytes(seen)!r}"
            ) from None


@pytest.mark.skipif(sys.platform == "win32", reason="a pseudo-terminal")
@pytest.mark.parametrize("quit_with", ["q", "ctrl-c"])
async def test_top_refreshes_in_a_terminal_until_q_or_ctrl_c(nursery, quit_with):
    leader = await start_leader(nursery)
    await nursery.start(WorkerRunner(Mail(), leader.urls[0], name="mail-1", group="mail").run)
    process, terminal = _in_a_terminal("top", "--http", leader.http_url, "--interval", "0.2")
    try:
        seen = bytearray()
        with trio.fail_after(20):
            await _read_until(terminal, b"mail-1", seen)
            async with Client.connect(leader.urls[0]) as client:
                await client.submit("mail.send", {"n": 1})
            # a later frame shows the job (its counts from the API, refreshed)
            await _read_until(terminal, b"mail.send", seen)
            if quit_with == "q":
                os.write(terminal, b"q")
            else:
                process.send_signal(signal.SIGINT)
            while process.poll() is None:
                try:
                    seen += os.read(terminal, 65536)
                except OSError:
                    pass
                await trio.sleep(0.05)
            # what it wrote last may still wait in the terminal after it exited: read it
            # all (EIO once the terminal is drained and closed)
            for _ in range(100):
                try:
                    chunk = os.read(terminal, 65536)
                except BlockingIOError:
                    await trio.sleep(0.05)
                    continue
                except OSError:
                    break
                if not chunk:
                    break
                seen += chunk
        assert process.returncode == 0, bytes(seen)
        assert b"Traceback" not in seen
        assert b"\x1b[?1049l" in seen  # (the terminal's own screen given back)
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
        os.close(terminal)


# --------------------------------------------------------------------------- a fake server


Reply = Callable[[str, dict[str, str]], Awaitable[bytes]]


def answer(status: int, body: Any = None, *, raw: bytes | None = None,
           content_type: str = "application/json", headers: tuple[str, ...] = ()) -> bytes:  # fmt: skip
    """An HTTP/1.1 response's bytes (``body`` as JSON unless ``raw``)."""
    data = raw if raw is not None else json.dumps(body).encode()
    head = [f"HTTP/1.1 {status} X", f"Content-Type: {content_type}",
            f"Content-Length: {len(data)}", "Connection: close", *headers]  # fmt: skip
    return ("\r\n".join(head) + "\r\n\r\n").encode() + data


class FakeServer:
    """Answers each request with what ``routes[path]`` gives (404 for other paths) and
    records the requests (path with query, headers)."""

    def __init__(self, routes: dict[str, Reply | bytes]) -> None:
        self.routes = routes
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.url = ""

    async def run(self, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.url = f"http://127.0.0.1:{listeners[0].socket.getsockname()[1]}"
        task_status.started(self.url)
        await trio.serve_listeners(self.handle, listeners)

    async def handle(self, stream: trio.SocketStream) -> None:
        async with stream:
            data = b""
            while b"\r\n\r\n" not in data and len(data) < 65536:
                chunk = await stream.receive_some(65536)
                if not chunk:
                    return
                data += chunk
            line, *lines = data.split(b"\r\n\r\n")[0].decode().split("\r\n")
            target = line.split()[1]
            headers = {k.lower(): v.strip() for k, _, v in (h.partition(":") for h in lines)}
            self.requests.append((target, headers))
            reply = self.routes.get(target.split("?")[0])
            if reply is None:
                out = answer(404, {"error": "not_found", "message": "nothing here"})
            elif isinstance(reply, bytes):
                out = reply
            else:
                out = await reply(target, headers)
            try:
                await stream.send_all(out)
            except trio.BrokenResourceError:
                pass


def api_answers(**changes: Any) -> dict[str, Reply | bytes]:
    """The answers of a leader with a group ``img`` (one worker online, one stale, one
    offline), a subject and two dead letters, in the contract's shapes."""
    now = time.time()

    def worker(name: str, state: str, **more: Any) -> dict[str, Any]:
        return {"name": name, "group": "img", "subjects": ["img.>"], "window": 4,
                "in_flight": 1, "host": "box-1", "pid": 4242, "peer": "127.0.0.1:5000",
                "connected_at": now - 3600, "last_heard": now - 2, "state": state,
                "left_at": None, **more}  # fmt: skip

    workers = {"online": [worker("img-1", "online")], "stale": [worker("img-2", "stale")],
               "offline": [worker("img-3", "offline", left_at=now - 120, in_flight=0)]}  # fmt: skip
    stats = {
        "node": "fake", "connections": 3, "workers": 2, "workers_online": 1,
        "workers_stale": 1, "jobs_active": 7, "waiting": 5, "in_flight": 2,
        "dead_letters": 2, "results_stored": 0, "retained": 0, "journal": None,
        "subjects": {"img.resize": {"queued": 5, "in_flight": 2, "submitted": 40, "done": 30,
                                    "failed": 3, "redelivered": 0, "dead": 2, "expired": 0,
                                    "cancelled": 0, "workers": 2, "latency_avg": 0.02,
                                    "latency_max": 0.1, "latency_p50": 0.0125,
                                    "latency_p99": 0.25}},
        "groups": {"img": {"workers": 2, "workers_stale": 1, "in_flight": 2, "window": 8,
                           "done": 30, "failed": 3, "redelivered": 0, "dead": 2,
                           "latency_p50": 0.0125, "latency_p99": 0.25, "policy": None,
                           "mode": None}},
    }  # fmt: skip
    letters = [{"job_id": f"dl-{i}", "subject": "img.resize", "attempts": 3,
                "error_type": "OSError", "error_message": f"disk full {i}",
                "dead_at": now - 60 * i} for i in (1, 2)]  # fmt: skip

    async def workers_page(target: str, headers: dict[str, str]) -> bytes:
        state = target.partition("state=")[2].partition("&")[0]
        page = workers[state]
        return answer(200, {"total": len(page), "offset": 0, "limit": 100, "workers": page})

    routes: dict[str, Reply | bytes] = {
        "/healthz": answer(200, {"status": "ok", "node": "fake"}),
        "/readyz": answer(200, {"status": "ready", "groups_not_ready": {}, "journal": None}),
        "/api/stats": answer(200, stats),
        "/api/workers": workers_page,
        "/api/dead-letters": answer(
            200, {"total": 2, "offset": 0, "limit": 10, "dead_letters": letters}
        ),
    }
    routes.update(changes)
    return routes


async def fake(nursery: trio.Nursery, **changes: Any) -> FakeServer:
    server = FakeServer(api_answers(**changes))
    await nursery.start(server.run)
    return server


async def test_status_shows_stale_and_offline_workers_and_dead_letters(shell, nursery):
    server = await fake(nursery)
    with trio.fail_after(20):
        status, out, err = await shell("status", "--http", server.url, "--sample", "0")
    assert (status, err) == (0, ""), out
    assert "1 online, 1 stale, 1 offline" in out
    assert "jobs 7 active (5 waiting, 2 in flight) · dead letters 2" in out
    group = row(out, "img")
    assert group[1:8] == ["running", "1", "1", "1", "8", "2", "30"]
    assert group[-2:] == ["12.5", "250.0"]  # p50, p99 in ms
    subject = row(out, "img.resize")
    assert subject[1:6] == ["2", "5", "2", "40", "-"]  # workers, queued, in flight, submitted, in/s
    # the stale and the offline worker first
    names = [line.split()[0] for line in out.splitlines() if line.startswith("img-")]
    assert names == ["img-2", "img-3", "img-1"]
    assert row(out, "img-3")[1:3] == ["img", "offline"] and "2m ago" in " ".join(row(out, "img-3"))
    assert row(out, "img-2")[1:7] == ["img", "stale", "1", "4", "box-1", "4242"]
    assert row(out, "dl-1")[1:3] == ["img.resize", "3"] and "OSError: disk full 1" in out
    # the token, when there is one, goes only as a Bearer header: none here
    assert all("authorization" not in headers for _, headers in server.requests)
    assert {target.split("?")[0] for target, _ in server.requests} == {
        "/healthz", "/readyz", "/api/stats", "/api/workers", "/api/dead-letters"}  # fmt: skip


async def test_the_throughput_comes_from_two_samples(nursery):
    server = await fake(nursery)
    api = HttpApi(parse_http_url(server.url))
    first = await take_snapshot(api)
    route = server.routes["/api/stats"]
    assert isinstance(route, bytes)
    stats = json.loads(route.partition(b"\r\n\r\n")[2])
    stats["subjects"]["img.resize"].update(submitted=60, done=50)
    stats["groups"]["img"]["done"] = 50
    server.routes["/api/stats"] = answer(200, stats)
    second = await take_snapshot(api)
    second = Snapshot(**{**second.to_json(), "clock": first.clock + 2.0})  # (2 s later)
    rates = rates_between(first, second)
    assert rates is not None
    assert rates.subjects_in == {"img.resize": 10.0} and rates.subjects_done == {"img.resize": 10.0}
    assert rates.groups_done == {"img": 10.0} and rates.done == 10.0
    out = _text(render(second, rates))
    assert row(out, "img.resize")[5] == "10.0" and "10.0 done/s" in out
    # a counter that went back (the leader restarted) is no rate
    assert rates_between(second, first) is None  # (no time passed, backwards)
    back = rates_between(Snapshot(**{**second.to_json(), "clock": 0.0}), first)
    assert back is not None and back.subjects_done == {"img.resize": None} and back.done is None


async def test_with_a_token_each_request_carries_it_read_again_each_time(shell, nursery, tmp_path):
    server = await fake(nursery)
    token = tmp_path / "token"
    token.write_text("first-token\n")
    api = HttpApi(parse_http_url(server.url), token=lambda: token.read_text().strip())
    await take_snapshot(api)
    token.write_text("rotated-token\n")
    await take_snapshot(api)
    seen = [headers.get("authorization") for _, headers in server.requests]
    half = len(seen) // 2
    assert set(seen[:half]) == {"Bearer first-token"} and set(seen[half:]) == {
        "Bearer rotated-token"
    }
    token.write_text("two words\n")
    status, _, err = await shell("status", "--http", server.url, "--token-file", str(token))
    assert status == 2 and "holds characters an HTTP header cannot carry" in err


async def test_a_dead_letter_listing_refused_still_shows_the_total(shell, nursery):
    server = await fake(nursery, **{"/api/dead-letters": answer(
        403, {"error": "forbidden", "message": "only an admin may read dead letters"})})  # fmt: skip
    status, out, err = await shell("status", "--http", server.url, "--sample", "0")
    assert (status, err) == (0, "")
    assert "2 dead letters (listing them needs an admin's token: only an admin may read" in out


@pytest.mark.parametrize(
    ("changes", "fragment"),
    [
        ({"/api/stats": answer(401, {"error": "unauthorized", "message": "a token, please"})},
         ("/api/stats: 401 unauthorized: the leader wants a token: give it with --token-env"
          " NAME or --token-file PATH (the leader says: a token, please)")),
        ({"/api/stats": answer(403, {"error": "forbidden", "message": "not you"})},
         "/api/stats: 403 forbidden (the leader says: not you)"),
        ({"/api/stats": answer(404, {"error": "not_found", "message": "no"})},
         "/api/stats: 404 not found: this leader has no HTTP API there"),
        ({"/healthz": answer(200, raw=b"<html>hello</html>", content_type="text/html")},
         "/healthz: answered 200 with 'text/html', not JSON: is this the leader's HTTP address?"),
        ({"/healthz": answer(500, {"error": "oops", "message": "x"})},
         "/healthz: answered 500, not 200"),
        ({"/readyz": answer(200, raw=b"{nope")}, "/readyz: answered 200 with a body that is not JSON"),
        ({"/readyz": answer(200, raw=b"[" * 100_000 + b"]" * 100_000)}, "not JSON"),
        ({"/api/stats": answer(200, [1, 2])}, "/api/stats: expected a JSON object, got list"),
        ({"/api/stats": answer(200, {"groups": {}})}, "/api/stats: no 'subjects' object"),
        ({"/api/workers": answer(200, {"workers": "all"})}, "/api/workers: no 'workers' list"),
        ({"/readyz": answer(302, None, headers=("Location: http://evil.example/",))},
         "/readyz: answered 302"),
    ],
)  # fmt: skip
async def test_what_is_not_the_api_exits_2_naming_the_url_and_the_problem(
    shell, nursery, changes, fragment
):
    server = await fake(nursery, **changes)
    with trio.fail_after(20):
        status, out, err = await shell("status", "--http", server.url, "--sample", "0")
    assert status == 2 and out == ""
    assert err.startswith(f"python -m actors: error: {server.url}") and fragment in err, err
    assert err.count("\n") == 1 and "Traceback" not in err


async def test_nothing_listening_exits_2_naming_the_url(shell):
    with trio.socket.socket() as sock:
        await sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        status, out, err = await shell("status", "--http", url)
        assert (status, out) == (2, "")
        assert err == (
            f"python -m actors: error: could not connect to {url}: connection refused"
            " (nothing listens there: is the leader running, with --http?)\n"
        )
        status, _, err = await shell("top", "--once", "--http", url)
        assert status == 2 and "connection refused" in err


async def test_a_server_that_never_answers_times_out(shell, nursery):
    async def never(target: str, headers: dict[str, str]) -> bytes:
        await trio.sleep_forever()
        raise AssertionError

    server = await fake(nursery, **{"/healthz": never})
    with trio.fail_after(10):
        started = trio.current_time()
        status, _, err = await shell("status", "--http", server.url, "--connect-timeout", "0.5")
    assert trio.current_time() - started < 5
    assert status == 2 and f"{server.url}/healthz: no answer within 0.5 s" in err


async def test_a_slow_drip_is_cut_at_the_deadline(nursery):
    async def drip(target: str, headers: dict[str, str]) -> bytes:
        return answer(200, {"status": "ok"}, headers=("X-Pad: " + "a" * 10,))

    server = await fake(nursery, **{"/healthz": drip})
    api = HttpApi(parse_http_url(server.url), timeout=0.5, max_bytes=10)
    with pytest.raises(BadAnswer, match=r"/healthz: an answer over 10 bytes"):
        await api.get("/healthz")

    async def endless(stream: trio.SocketStream) -> None:
        await stream.receive_some(65536)
        await stream.send_all(b"HTTP/1.1 200 X\r\nContent-Type: application/json\r\n"
                              b"Transfer-Encoding: chunked\r\n\r\n")  # fmt: skip
        while True:  # a byte every 0.1 s, forever
            await stream.send_all(b"1\r\n \r\n")
            await trio.sleep(0.1)

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    nursery.start_soon(trio.serve_listeners, endless, listeners)
    api = HttpApi(parse_http_url(f"127.0.0.1:{port}"), timeout=0.5)
    with trio.fail_after(5):
        with pytest.raises(Unreachable, match=r"no answer within 0\.5 s"):
            await api.get("/healthz")


async def test_429_is_waited_out(nursery):
    calls = 0

    async def busy(target: str, headers: dict[str, str]) -> bytes:
        nonlocal calls
        calls += 1
        if calls < 3:
            return answer(429, {"error": "busy", "message": "later"}, headers=("Retry-After: 0.1",))
        return answer(200, {"status": "ok"})

    server = await fake(nursery, **{"/healthz": busy})
    api = HttpApi(parse_http_url(server.url))
    assert (await api.get("/healthz")).body == {"status": "ok"} and calls == 3
    calls = -10
    with pytest.raises(Busy, match="the leader is busy"):
        await api.get("/healthz")


async def test_top_keeps_showing_the_last_frame_while_the_leader_is_away(nursery):
    """(``top``'s loop, driven with a fake Live and a server that goes away.)"""
    from actors.cluster import _status

    server = await fake(nursery)
    api = HttpApi(parse_http_url(server.url), timeout=1)
    frames: list[str] = []

    class FakeLive:
        def update(self, renderable: Any, refresh: bool = False) -> None:
            frames.append(_text(renderable))

        def stop(self) -> None:
            pass

    console = Console(file=io.StringIO(), width=200)
    with trio.move_on_after(10):
        async with trio.open_nursery() as inner:
            inner.start_soon(_status._refresh, api, FakeLive(), console, 0.1)
            await wait_until(lambda: len(frames) >= 2, timeout=5)
            server.routes["/healthz"] = answer(503, {"error": "down", "message": "x"})
            await wait_until(lambda: "since" in frames[-1], timeout=5)
            inner.cancel_scope.cancel()
    assert "img-1" in frames[-1] and "/healthz: answered 503" in frames[-1]
    assert "retrying every 0.1 s" in frames[-1]
    server.routes["/api/stats"] = answer(401, {"error": "unauthorized", "message": "no"})
    server.routes["/healthz"] = api_answers()["/healthz"]
    with trio.fail_after(5):
        assert await _status._refresh(api, FakeLive(), console, 0.1) == 2  # (the token refused)


# --------------------------------------------------------------------------- arguments


@pytest.mark.parametrize(
    ("text", "url"),
    [
        ("http://127.0.0.1:7780", "http://127.0.0.1:7780"),
        ("127.0.0.1:7780", "http://127.0.0.1:7780"),
        (":7781", "http://127.0.0.1:7781"),
        ("http://[::1]:7780/", "http://[::1]:7780"),
        ("https://ops.example.org/actors/", "https://ops.example.org:443/actors"),
        ("HTTP://Box:80", "http://box:80"),
    ],
)
def test_http_urls(text: str, url: str):
    assert parse_http_url(text).url == url


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("ftp://h:1", "expected a URL"),
        ("tcp://127.0.0.1:7700", "expected a URL"),
        ("http://:1", "expected a URL"),
        ("http://h:99999", "expected a URL"),
        ("http://h:x", "expected a URL"),
        ("http://user:secret@h:1", "no user or password in the URL"),
        ("http://h:1/?a=1", "no query or fragment"),
        ("http://h:1/#top", "no query or fragment"),
        ("http://h:1/a b", "expected a URL"),
        ("http://h:1/a\r\nX-Evil: 1", "expected a URL"),
        ("http://h:1/é", "expected a URL"),
        ("", "expected a URL"),
    ],
)
def test_bad_http_urls(text: str, fragment: str):
    with pytest.raises(ConfigError, match=fragment):
        parse_http_url(text)


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["status", "--http", "ftp://x:1"], "--http: expected a URL"),
        (["top", "--http", "http://u:p@x:1"], "--http: no user or password"),
        (["top", "--interval", "0"], "--interval: expected 0.1 to 3600 seconds"),
        (["top", "--interval", "nan"], "--interval: expected 0.1 to 3600 seconds"),
        (["top", "--connect-timeout", "-1"], "--connect-timeout: expected a number > 0"),
        (["status", "--http", "--connect-timeout", "inf"], "--connect-timeout: expected a number > 0"),
        (["top", "--token-env", "NO_SUCH_VARIABLE_HERE"], "--token-env: environment variable NO_SUCH_VARIABLE_HERE is not set"),
        (["top", "--tls-ca", "ca.pem"], "--tls-ca: http://127.0.0.1:7780 does not use TLS"),
        (["top", "--http", "https://127.0.0.1:1", "--tls-ca", "/no/such/ca.pem"], "--tls-ca: /no/such/ca.pem: no such file"),
    ],
)  # fmt: skip
async def test_bad_arguments_exit_2(shell, args, fragment):
    status, out, err = await shell(*args)
    assert (status, out) == (2, "")
    assert fragment in err and "Traceback" not in err


async def test_a_token_over_plain_http_to_another_host_is_warned_about(shell, monkeypatch):
    monkeypatch.setenv("OPS", "t0ken")
    status, _, err = await shell("top", "--once", "--http", "http://192.0.2.1:1", "--token-env",
                                 "OPS", "--connect-timeout", "0.2")  # fmt: skip
    assert status == 2
    assert err.startswith("warning: the token goes in clear over http:// to 192.0.2.1")


async def test_status_without_http_still_asks_the_protocol(shell, nursery):
    leader = await start_leader(nursery)
    status, out, err = await shell("status", "--url", leader.urls[0], "--sample", "0")
    assert (status, err) == (0, "")
    assert out.startswith(f"leader {leader.name} on {leader.urls[0]}")


# --------------------------------------------------------------------------- rendering


def _text(renderable: Any, width: int = 200) -> str:
    out = io.StringIO()
    Console(file=out, width=width, color_system=None).print(renderable)
    return out.getvalue()


def _snapshot(**answers: Any) -> Snapshot:
    fields: dict[str, Any] = {
        "url": "http://127.0.0.1:7780", "at": time.time(), "clock": 0.0,
        "healthz": {"status": "ok"}, "ready": True, "readyz": {"status": "ready"},
        "stats": {"subjects": {}, "groups": {}}, "workers": {"workers": []},
        "workers_stale": {"workers": []}, "workers_offline": {"workers": []},
        "dead_letters": {"dead_letters": []}, "dead_letters_refused": None,
    }  # fmt: skip
    fields.update(answers)
    return Snapshot(**fields)


def test_names_are_shown_as_text_never_as_markup_or_terminal_codes():
    evil = "[bold red]x[/] \x1b[2J\x1b]0;pwned\x07 \u202egnp.exe\r\nnext"
    worker = {"name": evil, "group": "[link=http://e]g", "state": "online", "host": evil}
    snapshot = _snapshot(
        stats={"node": evil, "subjects": {evil: {"queued": 1}}, "groups": {evil: {"workers": 1}}},
        workers={"total": 1, "workers": [worker]},
        dead_letters={"total": 1, "dead_letters": [{"job_id": evil, "error_message": evil}]},
    )
    terminal = io.StringIO()
    Console(file=terminal, width=400, force_terminal=True, color_system="truecolor").print(
        render(snapshot)
    )
    out = terminal.getvalue()
    assert "\x1b[2J" not in out and "\x1b]0;" not in out and "\x07" not in out
    assert "\u202e" not in out and "\r" not in out
    plain = _text(render(snapshot), width=400)
    shown = _clean(evil, 48)
    assert shown.startswith("[bold red]x[/] \\x1b[2J\\x1b]0;pwned\\x07 \\u202eg")
    assert len(shown) == 48 and shown.endswith("…")
    assert shown in plain
    assert "[link=http://e]g" in plain


def test_clean_cuts_long_names():
    assert _clean("a" * 100, 10) == "a" * 9 + "…"
    assert _clean("\x00" * 10_000, 8) == "\\x00\\x0…"
    assert _clean(None, 5) == "?" and _clean(12, 5) == "12"


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)  # fmt: skip
_maps = st.dictionaries(st.text(max_size=5), _json, max_size=3)


@settings(max_examples=150)
@given(
    stats=st.fixed_dictionaries(
        {"subjects": st.dictionaries(st.text(max_size=8), _json, max_size=4),
         "groups": st.dictionaries(st.text(max_size=8), _json, max_size=4)},
        optional={"node": _json, "workers": _json, "workers_stale": _json, "dead_letters": _json,
                  "journal": _json, "connections": _json, "subjects_omitted": _json},
    ),
    workers=st.lists(_json, max_size=4),
    offline=st.lists(_json, max_size=4),
    letters=st.lists(_json, max_size=4),
    readyz=_maps,
    total=_json,
)  # fmt: skip
def test_any_shape_of_the_answers_renders(stats, workers, offline, letters, readyz, total):
    snapshot = _snapshot(
        stats=stats, ready=False, readyz=readyz, workers={"total": total, "workers": workers},
        workers_offline={"total": total, "workers": offline},
        dead_letters={"total": total, "dead_letters": letters},
    )  # fmt: skip
    _text(render(snapshot, rates_between(_snapshot(clock=-1.0, stats=stats), snapshot),
                 limits=Limits(groups=2, subjects=2, workers=2, dead_letters=2, width=40)))  # fmt: skip


def test_long_lists_are_cut_and_counted():
    subjects = {f"s.{i:03}": {"queued": i} for i in range(80)}
    out = _text(
        render(_snapshot(stats={"subjects": subjects, "groups": {}, "subjects_omitted": 5}))
    )
    assert "… and 35 more subjects" in out  # 80 - 50 shown + 5 the leader left out
    assert row(out, "s.079")[2] == "79"  # the busiest first
    assert "s.000" not in out


def test_a_narrow_terminal_drops_the_less_needed_columns_and_never_cuts_numbers():
    subjects = {"a.very.long.subject.name.indeed": {"queued": 123456789, "done": 5,
                                                   "submitted": 7, "workers": 1}}  # fmt: skip
    snapshot = _snapshot(stats={"subjects": subjects, "groups": {}})
    wide = _text(render(snapshot, limits=Limits(width=200)), width=200)
    assert "SUBMITTED" in wide and "WORKERS" in wide
    narrow = _text(render(snapshot, limits=Limits(width=60)), width=60)
    assert "SUBMITTED" not in narrow and "WORKERS" not in narrow and "IN/S" not in narrow
    cells = next(line.split() for line in narrow.splitlines() if line.startswith("a.very."))
    assert cells[0].endswith("…") and cells[1] == "123456789"  # the name cut, the count whole
    assert all(len(line) <= 60 for line in narrow.splitlines())


@pytest.mark.parametrize(
    "group",
    [
        {"workers": 2, "workers_stale": 0},
        {"workers": 2, "workers_stale": 1},
        {"workers": 1, "workers_stale": 1},  # (its only worker stopped answering)
        {"workers": 2, "workers_stale": 2},
        {"workers": 0, "workers_stale": 0},  # (its workers left)
        {"workers": 0, "workers_stale": 0, "state": "starting"},
        {"workers": 1, "workers_stale": 1, "state": "failed: g-0 failed to start"},
    ],
)
def test_the_group_states_shown_are_the_apis(group: dict[str, Any]) -> None:
    # The STATE column of status and top says what GET /api/groups says, in its words.
    from actors.leader._admin import LeaderAdmin

    leader = Leader(memory=True)
    stats = {"subjects": {}, "groups": {"g": group}}
    leader.stats_snapshot = lambda: stats  # type: ignore[method-assign]
    [api] = LeaderAdmin(leader).groups()["groups"]
    out = _text(render(_snapshot(stats=stats)))
    assert row(out, "g")[1] == api["state"].split()[0]
    assert row(out, "g")[1] in ("running", "stale", "idle", "starting", "failed:")


@pytest.mark.parametrize("scheme", ["tcp", "ws"])
async def test_status_pointed_at_a_protocol_listener_says_so_in_one_line(shell, nursery, scheme):
    leader = Leader(listen=[f"{scheme}://127.0.0.1:0"], http="127.0.0.1:0", memory=True)
    await nursery.start(leader.run)
    url = "http://" + leader.urls[0].partition("://")[2].rstrip("/")
    with trio.fail_after(20):
        status, out, err = await shell("status", "--http", url, "--sample", "0")
    assert status == 2 and out == ""
    assert err.startswith(f"python -m actors: error: {url}/healthz: ") and err.count("\n") == 1
    assert "not the leader's HTTP address" in err or "is this the leader's HTTP address" in err
    assert err.isprintable() or err[:-1].isprintable(), err  # (no raw protocol bytes)
    assert "\\x" not in err, err


async def test_a_server_that_closes_without_answering_is_named(shell, nursery):
    server = await fake(nursery, **{"/healthz": b""})
    with trio.fail_after(20):
        status, out, err = await shell("status", "--http", server.url, "--sample", "0")
    assert status == 2 and out == "" and err.count("\n") == 1
    assert "closed the connection without an HTTP answer" in err, err
