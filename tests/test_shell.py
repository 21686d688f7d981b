"""The shell for the cluster: ``python -m actors submit|result|cancel|status|publish|subscribe``.

Each command runs as a real subprocess against a leader and in-process workers inside the
test (``e2e``: real time, real sockets). What the commands print is checked, and what they
did is checked on the leader and the workers.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
import trio

from actors import Client, Job, JobCancelled, Leader, Worker
from actors.worker import WorkerRunner
from tests.helpers import Changes, wait_until

pytestmark = pytest.mark.e2e

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Square(Worker):
    """Squares ``payload["n"]``; sleeps ``payload["sleep"]`` first; records cancellations."""

    subjects = ["math.square"]
    concurrency = 16

    def __init__(self) -> None:
        self.started = 0
        self.cancelled = 0
        self.changes = Changes()

    async def handle(self, job: Job) -> dict:
        self.started += 1
        self.changes.notify()
        slept = False
        try:
            await trio.sleep(job.payload.get("sleep", 0))
            slept = True
        finally:
            if not slept:  # cancelled (trio.Cancelled, or the coroutine closed)
                self.cancelled += 1
        return {"square": job.payload["n"] ** 2}


class Cluster:
    def __init__(self, leader: Leader, url: str, square: Square) -> None:
        self.leader = leader
        self.url = url
        self.square = square


@pytest.fixture
async def cluster(nursery: trio.Nursery) -> Cluster:
    leader = Leader(listen=["tcp://127.0.0.1:0"])
    [url] = await nursery.start(leader.run)
    square = Square()
    await nursery.start(WorkerRunner(square, url, name="square-1", group="square").run)
    return Cluster(leader, url, square)


def command(*args: str) -> list[str]:
    return [sys.executable, "-m", "actors", *args]


async def run(
    *args: str, env: dict[str, str] | None = None, limit: float = 15
) -> subprocess.CompletedProcess[bytes]:
    with trio.fail_after(limit):
        return await trio.run_process(
            command(*args), check=False, capture_stdout=True, capture_stderr=True,
            stdin=subprocess.DEVNULL, cwd=ROOT, env=env,
        )  # fmt: skip


def out(result: subprocess.CompletedProcess[bytes]) -> str:
    return result.stdout.decode()


def err(result: subprocess.CompletedProcess[bytes]) -> str:
    return result.stderr.decode()


class Lines:
    """Reads a subprocess's output line by line."""

    def __init__(self, stream: trio.abc.ReceiveStream) -> None:
        self.stream = stream
        self.buffer = b""

    async def next(self) -> str:
        while b"\n" not in self.buffer:
            chunk = await self.stream.receive_some(65536)
            if not chunk:
                raise AssertionError(f"output ended; left: {self.buffer!r}")
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return line.decode()


# --------------------------------------------------------------------------- submit


async def test_submit_to_a_subject_no_worker_serves_says_why_at_once(cluster):
    started = trio.current_time()
    result = await run("submit", "math.sqare", '{"n": 3}', "--url", cluster.url, "--count", "5")
    assert trio.current_time() - started < 5  # not after the 30 s job timeout
    assert result.returncode == 1
    assert err(result).strip().splitlines()[-1] == (
        "python -m actors: error: no worker serves subject math.sqare (did you mean math.square?)"
    )
    assert "Traceback" not in err(result) and out(result) == ""


async def test_submit_wait_for_worker_waits_and_times_out(cluster):
    result = await run(
        "submit",
        "math.cube",
        '{"n": 3}',
        "--url",
        cluster.url,
        "--wait-for-worker",
        "--timeout",
        "0.5",
    )
    assert result.returncode == 1
    error = json.loads(out(result))["error"]
    assert error["type"] == "SubmitTimeout" and error["job_id"]


async def test_submit_prints_results_in_input_order(cluster):
    payloads = "".join(json.dumps({"n": i, "sleep": (5 - i) * 0.05}) + "\n" for i in range(6))
    with trio.fail_after(15):
        result = await trio.run_process(
            command("submit", "math.square", "--file", "-", "--url", cluster.url, "--no-progress"),
            stdin=payloads.encode(), capture_stdout=True, capture_stderr=True, check=False, cwd=ROOT,
        )  # fmt: skip
    assert result.returncode == 0, err(result)
    assert [json.loads(line)["square"] for line in out(result).splitlines()] == [
        i * i for i in range(6)
    ]
    assert err(result) == "6 jobs: 6 ok, 0 failed\n"


async def test_ctrl_c_during_submit_cancels_the_running_jobs(cluster):
    process = await trio.lowlevel.open_process(
        command("submit", "math.square", '{"n": 2, "sleep": 60}', "--count", "200", "--url", cluster.url,
                "--no-progress"),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=ROOT,
    )  # fmt: skip
    try:
        with trio.fail_after(15):
            await cluster.square.changes.wait_for(
                lambda: cluster.square.started == 16
            )  # the worker's window is full
            await wait_until(
                lambda: cluster.leader.stats()["jobs_active"] == 64, timeout=5
            )  # --concurrency
            process.send_signal(signal.SIGINT)
            assert await process.wait() == 130
            assert process.stderr is not None
            text = b""
            while chunk := await process.stderr.receive_some(65536):
                text += chunk
            assert "interrupted: the jobs still running were cancelled" in text.decode()
            assert "Traceback" not in text.decode()
            # No job is left: the 16 running were cancelled on the worker, the rest in the queue.
            await wait_until(lambda: cluster.leader.stats()["jobs_active"] == 0, timeout=3)
            assert cluster.leader.stats()["subjects"]["math.square"]["cancelled"] == 64
            assert cluster.square.cancelled == cluster.square.started == 16
    finally:
        process.kill()
        await process.wait()


async def test_output_piped_into_head_ends_quietly_and_cancels_the_rest(cluster):
    shell = (
        f'{sys.executable} -m actors submit math.square \'{{"n": 2, "sleep": 0.05}}\''
        f" --count 2000 --no-progress --url {cluster.url} | head -2"
    )
    with trio.fail_after(15):
        result = await trio.run_process(
            ["sh", "-c", shell], check=False, capture_stdout=True, capture_stderr=True, cwd=ROOT
        )
    assert out(result) == '{"square": 4}\n{"square": 4}\n'
    assert err(result) == ""
    await wait_until(lambda: cluster.leader.stats()["jobs_active"] == 0, timeout=3)
    assert cluster.leader.stats()["subjects"]["math.square"]["cancelled"] > 0


# --------------------------------------------------------------------------- result, cancel


async def test_result_by_job_id(cluster):
    async with Client.connect(cluster.url) as client:
        assert await client.submit("math.square", {"n": 9}, job_id="job-9") == {"square": 81}
    result = await run("result", "job-9", "--url", cluster.url)
    assert result.returncode == 0, err(result)
    assert json.loads(out(result)) == {"square": 81}

    result = await run("result", "job-10", "--url", cluster.url)
    assert result.returncode == 1
    assert err(result).startswith("python -m actors: error: no job job-10: unknown here")


async def test_result_wait_for_a_running_job(cluster, nursery):
    async with Client.connect(cluster.url) as client:
        nursery.start_soon(
            lambda: client.submit("math.square", {"n": 5, "sleep": 1}, job_id="job-5")
        )
        with trio.fail_after(5):
            await cluster.square.changes.wait_for(lambda: cluster.square.started == 1)
        result = await run("result", "job-5", "--url", cluster.url)
        assert result.returncode == 1 and "has not finished yet" in err(result)
        result = await run("result", "job-5", "--wait", "--url", cluster.url)
        assert result.returncode == 0, err(result)
        assert json.loads(out(result)) == {"square": 25}


async def test_cancel_a_job_by_id(cluster):
    async with Client.connect(cluster.url) as client:
        errors: list[BaseException] = []

        async def submit() -> None:
            try:
                await client.submit("math.square", {"n": 1, "sleep": 60}, job_id="long")
            except JobCancelled as exc:
                errors.append(exc)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(submit)
            with trio.fail_after(5):
                await cluster.square.changes.wait_for(lambda: cluster.square.started == 1)
            result = await run("cancel", "long", "--url", cluster.url, "--reason", "not needed")
            assert result.returncode == 0, err(result)
        [error] = errors
        assert error.message == "not needed"
        assert cluster.square.cancelled == 1


# --------------------------------------------------------------------------- status


async def test_status_shows_groups_and_subjects(cluster):
    async with Client.connect(cluster.url) as client:
        await client.submit("math.square", {"n": 2})
    result = await run("status", "--url", cluster.url, "--sample", "0.2")
    assert result.returncode == 0, err(result)
    text = out(result)
    lines = text.splitlines()
    assert lines[0].startswith(f"leader leader on {cluster.url}: ") and "1 workers" in lines[0]
    assert "0 dead letters" in lines[1]
    group_head = next(line for line in lines if line.startswith("GROUP"))
    assert "WINDOW" in group_head and "IN FLIGHT" in group_head
    square = next(line for line in lines if line.startswith("square "))
    assert square.split()[1:3] == ["1", "16"]  # workers, window
    subject_head = next(line for line in lines if line.startswith("SUBJECT"))
    assert "QUEUED" in subject_head and "DONE/S" in subject_head
    assert any(line.startswith("math.square ") for line in lines)


async def test_status_json_and_the_url_from_the_environment(cluster):
    env = {**os.environ, "ACTORS_URL": cluster.url}
    result = await run("status", "--json", env=env)
    assert result.returncode == 0, err(result)
    stats = json.loads(out(result))
    assert stats["workers"] == 1 and stats["groups"]["square"]["window"] == 16
    assert stats["listen"] == [cluster.url]


async def test_help_shows_each_default_and_the_url_variable():
    env = {**os.environ, "ACTORS_URL": "ws://example.org:7701"}
    result = await run("submit", "--help", env=env)
    text = " ".join(out(result).split())
    assert "(default: ws://example.org:7701)" in text and "$ACTORS_URL" in text
    for default in ("(default: 64)", "(default: 30.0)", "(default: 10.0)", "(default: 1)"):
        assert default in text
    result = await run("status", "--help")
    assert "(default: 1.0)" in " ".join(out(result).split())


async def test_a_command_without_a_leader_says_so_in_one_line():
    with trio.socket.socket() as sock:
        await sock.bind(("127.0.0.1", 0))
        url = f"tcp://127.0.0.1:{sock.getsockname()[1]}"
        result = await run("status", "--url", url, limit=5)
    assert result.returncode == 1
    assert err(result) == (
        f"python -m actors: error: could not connect to {url}: connection refused"
        " (nothing listens there: is the leader running?)\n"
    )


# --------------------------------------------------------------------------- publish, subscribe


async def test_publish_and_subscribe_until_ctrl_c(cluster):
    async with Client.connect(cluster.url) as client:
        await client.publish("events.config", {"v": 1}, retain=True, qos=1)
    process = await trio.lowlevel.open_process(
        command("subscribe", "events.>", "--url", cluster.url),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT,
    )  # fmt: skip
    try:
        with trio.fail_after(15):
            assert process.stdout is not None and process.stderr is not None
            lines, errs = Lines(process.stdout), Lines(process.stderr)
            assert (await errs.next()).startswith("subscribed to events.> on ")
            assert await lines.next() == 'events.config [retained] {"v": 1}'
            result = await run("publish", "events.order", '{"id": 7}', "--url", cluster.url)
            assert result.returncode == 0, err(result)
            assert await lines.next() == 'events.order {"id": 7}'
            result = await run("publish", "events.later", "--retain", "--url", cluster.url)
            assert await lines.next() == "events.later null"
            process.send_signal(signal.SIGINT)
            assert await process.wait() == 0
    finally:
        process.kill()
        await process.wait()
    # --retain kept it for later subscribers.
    result = await run("subscribe", "events.later", "--count", "1", "--url", cluster.url)
    assert result.returncode == 0 and out(result) == "events.later [retained] null\n"


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["publish", "events.*", "{}"], "invalid subject 'events.*'"),
        (["publish", "events.x", "{nope"], "JSON argument: invalid JSON"),
        (["subscribe", "a..b"], "invalid pattern 'a..b'"),
        (["status", "--sample", "-1"], "--sample: expected a number >= 0"),
        (["result", "x", "--url", "http://h:1"], "--url: unsupported transport URL"),
    ],
)
async def test_bad_arguments_exit_2(args: list[str], fragment: str):
    result = await run(*args)
    assert result.returncode == 2
    assert fragment in err(result) and "Traceback" not in err(result)
