"""The JavaScript client and worker (``clients/js/``) against real Python leaders.

The Node unit tests (``clients/js/test/*.test.js``: backoff, frames and bundles, error
mapping, reconnect with a fake WebSocket) run under ``node --test``; then each script of
``clients/js/test/e2e/`` runs against a real leader listening on a WebSocket, with Python
workers and clients in this process, the leader's URL in ``ACTORS_URL``. A script exits 0
and prints ``OK ...`` when everything it checks held.

Skipped, with the reason, when ``node`` (20 or later) is not installed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import cbor2
import pytest
import trio

import protocol
from actors import AuthFailed, Client, Job, JobFailed, Leader, Worker
from actors.worker import WorkerRunner
from runtime import Backoff

ROOT = Path(__file__).resolve().parent.parent
JS = ROOT / "clients" / "js"
E2E = JS / "test" / "e2e"
FAST_RETRY = Backoff(base=0.01, factor=2.0, cap=0.05, jitter=0.0)
NODE = shutil.which("node")


def _node_major() -> int:
    if NODE is None:
        return 0
    out = subprocess.run([NODE, "--version"], capture_output=True, text=True, check=False).stdout
    try:
        return int(out.strip().lstrip("v").split(".")[0])
    except ValueError:
        return 0


pytestmark = pytest.mark.skipif(
    _node_major() < 20,
    reason="node 20 or later is not installed: the JavaScript client cannot be tested",
)


class Square(Worker):
    subjects = ["math.square"]
    concurrency = 16

    async def handle(self, job: Job) -> int:
        n: int = job.payload["n"]
        return n * n


class Slow(Worker):
    subjects = ["math.slow"]
    concurrency = 32

    async def handle(self, job: Job) -> int:
        await trio.sleep(0.01)
        n: int = job.payload["n"]
        return n * n


def _node_cmd(script: str) -> list[str]:
    return [NODE or "node", "--experimental-websocket", "--no-warnings", str(E2E / script)]


async def _run_node(script: str, timeout: float = 60, **env: str) -> str:
    """Run an e2e script to its end; returns its output (fails the test on a bad exit)."""
    with trio.fail_after(timeout):
        done = await trio.run_process(
            _node_cmd(script),
            env={**os.environ, **env},
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    out = done.stdout.decode()
    err = done.stderr.decode()
    assert done.returncode == 0, f"{script} exited {done.returncode}\n{out}\n{err}"
    return out


@asynccontextmanager
async def cluster(*workers: Worker, **leader_kw: Any) -> AsyncIterator[tuple[Leader, str]]:
    leader_kw.setdefault("retry_backoff", FAST_RETRY)
    leader_kw.setdefault("listen", ["ws://127.0.0.1:0"])
    leader_kw.setdefault("memory", True)
    leader = Leader(**leader_kw)
    async with trio.open_nursery() as nursery:
        [url] = await nursery.start(leader.run)
        for i, worker in enumerate(workers):
            kw = {"token": leader_kw["token"]} if "token" in leader_kw else {}
            await nursery.start(WorkerRunner(worker, url, name=f"w{i}", **kw).run)
        yield leader, url
        nursery.cancel_scope.cancel()


def test_node_unit_tests() -> None:
    done = subprocess.run(
        [
            NODE or "node",
            "--test",
            "--experimental-websocket",
            "--no-warnings",
            *sorted(str(p) for p in (JS / "test").glob("*.test.js")),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


TSC = JS / "node_modules" / ".bin" / "tsc"


def test_bundle_items_read_by_the_python_side() -> None:
    """Every message of the golden vectors (each kind), re-encoded by the JavaScript client
    as a bundle item, is the same message to Python's bundle decoder, trimmed alike."""
    vectors = json.loads((ROOT / "tests" / "data" / "cbor_vectors.json").read_text("utf-8"))
    bodies = [
        bytes.fromhex(v["hex"]) for v in vectors["vectors"] if v["name"].startswith("message ")
    ]
    messages = [protocol.decode_body(body) for body in bodies]
    assert {type(m) for m in messages} == set(protocol.MESSAGE_TYPES.values())
    frames = [(len(body).to_bytes(4, "big") + b"\0" + body).hex() for body in bodies]
    done = subprocess.run(
        [NODE or "node", str(E2E / "reencode.mjs")],
        env={**os.environ, "FRAMES": json.dumps(frames)},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    items = [cbor2.loads(bytes.fromhex(h)) for h in json.loads(done.stdout)]
    for message, item in zip(messages, items, strict=True):
        assert protocol.message_of(item) == message
        assert len(item) == len(protocol.to_array(message)), (item, message)
    [frame] = protocol.bundle_frames([cbor2.dumps(item) for item in items[:2]], 4096)
    assert protocol.FrameDecoder(decode_payloads=False).feed(frame) == messages[:2]


@pytest.mark.skipif(
    not TSC.exists(),
    reason="TypeScript is not installed: run `npm ci --prefix clients/js` (as .ci/run does)",
)
def test_typecheck() -> None:
    """``tsc --checkJs`` (clients/js/tsconfig.json) finds no error in the JSDoc types."""
    done = subprocess.run(
        [str(TSC), "-p", str(JS / "tsconfig.json")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.e2e
async def test_a_thousand_jobs_with_64_in_flight_each_once() -> None:
    async with cluster(Square(), Square()) as (_leader, url):
        out = await _run_node("jobs.mjs", ACTORS_URL=url)
    assert "OK 1000 jobs" in out


@pytest.mark.e2e
async def test_a_js_worker_serves_a_python_client() -> None:
    async with cluster() as (_leader, url):
        async with trio.open_nursery() as nursery:
            outs: list[str] = []

            async def node() -> None:
                outs.append(await _run_node("worker.mjs", ACTORS_URL=url, JOBS="201"))

            nursery.start_soon(node)
            async with Client.connect(url) as client:
                progress: list[tuple[float | None, str | None]] = []
                results: list[Any] = [None] * 200

                async def one(i: int) -> None:
                    results[i] = await client.submit(
                        "js.echo",
                        {"i": i, "b": b"\x00\xff"},
                        wait_for_worker=True,
                        timeout=30,
                        on_progress=lambda f, n: progress.append((f, n)),
                    )

                async with trio.open_nursery() as jobs:
                    for i in range(200):
                        jobs.start_soon(one, i)
                assert results == [
                    {"echo": {"i": i, "b": b"\x00\xff"}, "attempt": 1, "by": "js"}
                    for i in range(200)
                ]
                assert (0.5, "halfway") in progress
                with pytest.raises(JobFailed) as failed:
                    await client.submit("js.fail", {"n": 3}, max_attempts=1, timeout=30)
                assert failed.value.error_type == "RangeError"
                assert "no 3" in failed.value.message
                assert failed.value.traceback and "handle" in failed.value.traceback
    assert "OK served" in outs[0]


@pytest.mark.e2e
async def test_the_js_client_carries_on_across_a_leader_restart(tmp_path: Path) -> None:
    with trio.socket.socket() as probe:  # a free port, to start the leader again on
        await probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"ws://127.0.0.1:{port}"

    def leader() -> Leader:
        return Leader(listen=[url], memory=False, data_dir=str(tmp_path), retry_backoff=FAST_RETRY)

    with trio.fail_after(90):
        async with trio.open_nursery() as outer:
            first = trio.CancelScope()

            async def run_first() -> None:
                with first:
                    await leader().run()

            outer.start_soon(run_first)
            await trio.sleep(0.3)
            await outer.start(
                WorkerRunner(Slow(), url, name="slow", reconnect_backoff=FAST_RETRY).run
            )
            process = await trio.lowlevel.open_process(
                _node_cmd("restart.mjs"),
                env={**os.environ, "ACTORS_URL": url},
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
            assert process.stdout is not None and process.stderr is not None
            out = b""
            while b"progress 100" not in out:
                chunk = await process.stdout.receive_some()
                assert chunk, f"restart.mjs ended early: {out!r}"
                out += chunk
            first.cancel()  # the leader stops mid-run...
            await trio.sleep(0.5)
            outer.start_soon(leader().run)  # ...and starts again on the same port
            while chunk := await process.stdout.receive_some():
                out += chunk
            err = await process.stderr.receive_some(1 << 20)
            code = await process.wait()
            assert code == 0, f"{out.decode()}\n{err.decode()}"
            assert b"OK 400 jobs" in out
            outer.cancel_scope.cancel()


@pytest.mark.e2e
async def test_publish_and_subscribe_both_ways() -> None:
    async with cluster() as (_leader, url):
        async with Client.connect(url) as client:
            await client.publish("py.hello", {"from": "python"}, retain=True, qos=1)
            async with client.subscribe("js.>") as sub:
                out = await _run_node("pubsub.mjs", ACTORS_URL=url)
                with trio.fail_after(5):
                    message = await sub.receive()
    assert "OK pubsub" in out
    assert message.subject == "js.hello"
    assert message.payload == {"from": "js"}


@pytest.mark.e2e
async def test_token_auth_static_provider_and_wrong() -> None:
    async with cluster(Square(), token="s3cret-token") as (_leader, url):
        out = await _run_node("auth.mjs", ACTORS_URL=url, ACTORS_TOKEN="s3cret-token")
        with pytest.raises(AuthFailed):
            async with Client.connect(url, token="nope"):
                pass
    assert "OK auth" in out
    assert "s3cret" not in out and "refused: could not connect" in out


async def _http_server(task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
    """A loopback HTTP server answering 404 to everything (an upgrade included)."""

    async def answer(stream: trio.SocketStream) -> None:
        with trio.move_on_after(5):
            await stream.receive_some()
            await stream.send_all(
                b"HTTP/1.1 404 Not Found\r\ncontent-length: 9\r\nconnection: close\r\n\r\nnot found"
            )
        await stream.aclose()

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    task_status.started(listeners[0].socket.getsockname()[1])
    await trio.serve_listeners(answer, listeners)


@pytest.mark.e2e
async def test_a_url_that_is_not_a_leaders_websocket_says_so() -> None:
    async with cluster(listen=["tcp://127.0.0.1:0"]) as (_leader, tcp_url):
        async with trio.open_nursery() as nursery:
            http_port = await nursery.start(_http_server)
            with trio.socket.socket() as probe:
                await probe.bind(("127.0.0.1", 0))
                closed_port = probe.getsockname()[1]
            out = await _run_node(
                "wrongurl.mjs",
                ACTORS_TCP_URL=tcp_url.replace("tcp://", "ws://"),
                ACTORS_HTTP_URL=f"ws://127.0.0.1:{http_port}/",
                ACTORS_CLOSED_URL=f"ws://127.0.0.1:{closed_port}/",
            )
            nursery.cancel_scope.cancel()
    assert "OK wrong urls" in out
    assert "HTTP 404" in out
    assert "tcp:// listener" in out
    assert "connection refused" in out
