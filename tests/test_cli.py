"""The command lines: ``python -m actors.cluster``, ``python -m actors.worker``, ``python -m actors``.

Each runs as a real subprocess (``e2e``: real time, real sockets). The shell-submit tests
run a leader and in-process workers inside the test and point the command at them.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from typing import Any

import pytest
import trio

from protocol import PROTOCOL_VERSION
from tests.helpers import wait_until

pytestmark = pytest.mark.e2e

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def python(*args: str) -> list[str]:
    return [sys.executable, *args]


async def run(
    *args: str, stdin: bytes | None = None, limit: float = 15
) -> subprocess.CompletedProcess[bytes]:
    with trio.fail_after(limit):
        return await trio.run_process(
            python(*args),
            check=False,
            capture_stdout=True,
            capture_stderr=True,
            stdin=stdin,
            cwd=ROOT,
        )


def assert_clean_error(
    result: subprocess.CompletedProcess[bytes], status: int, *fragments: str
) -> str:
    err = result.stderr.decode()
    assert result.returncode == status, err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in err
    return err


class Lines:
    """Reads a subprocess's output line by line."""

    def __init__(self, stream: trio.abc.ReceiveStream) -> None:
        self.stream = stream
        self.buffer = b""
        self.seen: list[str] = []

    async def until(self, predicate) -> str:
        while True:
            while b"\n" in self.buffer:
                raw, self.buffer = self.buffer.split(b"\n", 1)
                line = raw.decode()
                self.seen.append(line)
                if predicate(line):
                    return line
            chunk = await self.stream.receive_some(65536)
            if not chunk:
                raise AssertionError(f"output ended; got {self.seen}")
            self.buffer += chunk


# --------------------------------------------------------------------------- cluster


async def fire(client: Any, subject: str) -> None:
    """Submit a job that sleeps a minute; its connection dies with the process under test."""
    from actors import ClientError

    try:
        await client.submit(subject, {"seconds": 60}, qos=0)
    except ClientError:
        pass


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (
            ["--worker", "tests.workers:Nope=2"],
            ["--worker 'tests.workers:Nope=2': cannot load", "has no attribute 'Nope'"],
        ),
        (["--worker", "tests.workers:Echo=-1"], ["instances must be an integer >= 0, got -1"]),
        (
            ["--listen", "http://127.0.0.1:1"],
            ["--listen: unsupported transport URL 'http://127.0.0.1:1'"],
        ),
        (
            ["--config", "no/such/cluster.toml"],
            ["no/such/cluster.toml: cannot read the configuration"],
        ),
        (["--drain-grace", "-1"], ["--drain-grace: expected a number >= 0"]),
        (["--max-memory", "lots"], ["--max-memory: expected a size in bytes"]),
        (["--max-jobs", "0"], ["--max-jobs: expected an integer >= 1, got 0"]),
        (["--start-timeout", "-1"], ["--start-timeout: expected a number of seconds >= 0, got -1"]),
        (
            ["--listen", "tcp://127.0.0.1:17851", "--listen", "ws://127.0.0.1:17851"],
            ["--listen: 127.0.0.1:17851 is listed twice"],
        ),
        (["--frobnicate"], ["unrecognized arguments: --frobnicate"]),
    ],
)
async def test_cluster_refuses_bad_configuration(args, fragments):
    result = await run("-m", "actors.cluster", *args)
    assert_clean_error(result, 2, "python -m actors.cluster: error: ", *fragments)
    assert result.stdout == b""


async def test_cluster_refuses_a_bad_config_file(tmp_path):
    path = tmp_path / "cluster.toml"
    path.write_text('[[groups]]\nname = "sq"\nworker = "tests.workers:Echo"\nmode = "fanout"\n')
    result = await run("-m", "actors.cluster", "--config", str(path))
    assert_clean_error(
        result, 2, f"{path}: [[groups]] #1 'sq' key 'mode': expected one of round_robin, broadcast"
    )


async def test_cluster_reports_an_address_in_use():
    with trio.socket.socket() as sock:
        await sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        result = await run("-m", "actors.cluster", "--listen", f"tcp://127.0.0.1:{port}")
    assert_clean_error(
        result, 1, f"python -m actors.cluster: error: cannot listen on tcp://127.0.0.1:{port}: "
    )


async def start_cluster(*args: str) -> tuple[trio.Process, Lines, list[str]]:
    process = await trio.lowlevel.open_process(
        python("-m", "actors.cluster", *args), stdout=subprocess.PIPE, cwd=ROOT
    )
    assert process.stdout is not None
    lines = Lines(process.stdout)
    await lines.until(lambda line: line.startswith("cluster ready"))
    urls = [line.split()[-1] for line in lines.seen if line.startswith("leader listening on ")]
    return process, lines, urls


async def test_cluster_runs_workers_serves_the_shell_and_stops_on_sigterm():
    with trio.fail_after(18):
        process, lines, urls = await start_cluster(
            "--listen", "tcp://127.0.0.1:0", "--listen", "ws://127.0.0.1:0",
            "--worker", "e=tests.workers:Echo=2", "--drain-grace", "1",
        )  # fmt: skip
        try:
            assert [url.split(":")[0] for url in urls] == ["tcp", "ws"]
            assert not any(url.endswith(":0") for url in urls)  # the real ports are printed
            assert (
                "group e: 2 x tests.workers:Echo (processes, mode round_robin, policy round_robin)"
                in lines.seen
            )
            for url in urls:  # the shell client works over both transports
                result = await run("-m", "actors", "submit", "test.echo", '{"n": 7}', "--url", url)
                assert result.returncode == 0, result.stderr.decode()
                assert json.loads(result.stdout)["payload"] == {"n": 7}
            process.send_signal(signal.SIGTERM)
            await lines.until(lambda line: line == "cluster stopped")
            assert await process.wait() == 0
        finally:
            process.kill()
            await process.wait()


async def test_cluster_from_a_config_file_stops_on_ctrl_c(tmp_path):
    path = tmp_path / "cluster.toml"
    path.write_text(
        '[leader]\nlisten = ["tcp://127.0.0.1:0"]\n'
        '[[groups]]\nname = "flaky"\nworker = "tests.workers:Flaky"\ninstances = 2\n'
        'in_process = true\nsubjects = ["cfg.flaky"]\n'
    )
    with trio.fail_after(15):
        process, lines, urls = await start_cluster("--config", str(path), "--drain-grace", "1")
        try:
            assert any(
                "group flaky: 2 x tests.workers:Flaky (in process" in line for line in lines.seen
            )
            result = await run("-m", "actors", "submit", "cfg.flaky", "{}", "--url", urls[0])
            assert json.loads(result.stdout) == {"ok": True}
            process.send_signal(signal.SIGINT)
            await lines.until(lambda line: line == "cluster stopped")
            assert await process.wait() == 0
        finally:
            process.kill()
            await process.wait()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
async def test_stopping_the_cluster_drains_the_jobs_in_flight(tmp_path, signum):
    """The README's demo for real: worker processes, a shell client submitting slow jobs,
    then SIGTERM / Ctrl-C mid-run: every job in hand finishes and reaches the shell, the
    workers say they drain, and the cluster exits 0."""
    log = tmp_path / "jobs.log"
    payload = json.dumps({"n": 1, "log": str(log), "seconds": 1.5})
    with trio.fail_after(40):
        process, lines, urls = await start_cluster(
            "--listen", "tcp://127.0.0.1:0", "--worker", "tests.workers:Recorder=2", "--drain-grace", "10",
        )  # fmt: skip
        submit = await trio.lowlevel.open_process(
            python("-m", "actors", "submit", "test.record", payload, "--count", "4", "--no-progress",
                   "--url", urls[0]),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT,
        )  # fmt: skip
        try:
            await wait_until(  # (written by the worker processes)
                lambda: log.exists() and log.read_text().count("start ") >= 4,
                timeout=20,
                interval=0.02,
                what="the four jobs run (2 workers x concurrency 4)",
            )
            process.send_signal(signum)
            name = signal.Signals(signum).name
            await lines.until(
                lambda line: line.startswith(f"{name}: stopping; workers are draining")
            )
            await lines.until(lambda line: line == "cluster stopped")
            assert await process.wait() == 0
            assert submit.stdout is not None
            out = b""
            while chunk := await submit.stdout.receive_some(65536):
                out += chunk
            assert await submit.wait() == 0
            results = [json.loads(line) for line in out.decode().splitlines()]
            assert [r["n"] for r in results] == [1, 1, 1, 1]
            assert log.read_text().count("done ") == 4  # each ran once, finished in the drain
        finally:
            for proc in (process, submit):
                proc.kill()
                await proc.wait()


async def test_a_second_ctrl_c_kills_the_draining_workers():
    with trio.fail_after(15):
        process, lines, urls = await start_cluster(
            "--listen", "tcp://127.0.0.1:0", "--worker", "tests.workers:Sleepy=1"
        )  # fmt: skip
        # A job that outlives the test: the drain would wait for it (grace 30 s). It is sent
        # by a shell client, whose connection may die with the cluster without harm.
        submit = await trio.lowlevel.open_process(
            python("-m", "actors", "submit", "test.sleepy", '{"seconds": 60}', "--qos", "0", "--url", urls[0]),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT,
        )  # fmt: skip
        try:
            await trio.sleep(1)  # let it reach the worker (real time: e2e)
            process.send_signal(signal.SIGINT)
            await lines.until(lambda line: line.startswith("SIGINT: stopping"))
            process.send_signal(signal.SIGINT)
            await lines.until(lambda line: line == "second Ctrl-C: killing the workers")
            assert await process.wait() == 1
        finally:
            for proc in (process, submit):
                proc.kill()
                await proc.wait()


# --------------------------------------------------------------------------- worker process


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["tests.workers:Nope"], ["cannot load 'tests.workers:Nope'"]),
        (["tests.workers:NotAWorker"], ["not a Worker subclass"]),
        (["tests.workers:NoSubjects"], ["declares no subjects; pass --subjects"]),
        (["--url", "udp://x:1", "tests.workers:Echo"], ["--url: unsupported transport URL"]),
        (["--mode", "fanout", "tests.workers:Echo"], ["--mode: expected one of"]),
        (["--policy", "x", "tests.workers:Echo"], ["--policy: expected one of"]),
        (
            ["--subjects", "a..b", "tests.workers:Echo"],
            ["--subjects: invalid subject pattern 'a..b'"],
        ),
        (["--concurrency", "0", "tests.workers:Echo"], ["--concurrency: expected an integer >= 1"]),
        (["--max-memory", "5XB", "tests.workers:Echo"], ["--max-memory: unknown unit 'XB'"]),
        (
            ["--max-jobs", "0", "tests.workers:Echo"],
            ["--max-jobs: expected an integer >= 1, got 0"],
        ),
        ([], ["the following arguments are required: module:Class"]),
    ],
)
async def test_worker_refuses_bad_arguments(args, fragments):
    result = await run("-m", "actors.worker", *args)
    assert_clean_error(result, 2, "python -m actors.worker: error: ", *fragments)


@pytest.fixture
async def leader_url(nursery) -> str:
    """A leader with in-process Echo and Flaky workers, on a free port."""
    from actors import Leader
    from actors.worker._group import WorkerGroup

    leader = Leader(listen=["tcp://127.0.0.1:0"])
    urls = await nursery.start(leader.run)
    for name in ("Echo", "Flaky", "Sleepy"):
        group = WorkerGroup(
            name.lower(), f"tests.workers:{name}", 1, urls[0], in_process=True, drain_grace=1
        )
        await nursery.start(group.run)
    return urls[0]


async def test_worker_process_serves_and_drains_on_sigterm(nursery, leader_url):
    from actors import Client

    process = await trio.lowlevel.open_process(
        python("-m", "actors.worker", "--url", leader_url, "--name", "w-1", "--subjects", "solo.echo",
               "--drain-grace", "2", "tests.workers:Echo"),
        stderr=subprocess.PIPE, cwd=ROOT,
    )  # fmt: skip
    try:
        with trio.fail_after(15):
            assert process.stderr is not None
            err = Lines(process.stderr)
            await err.until(lambda line: line == f"w-1: connected to {leader_url}")
            async with Client.connect(leader_url) as client:
                result = await client.submit("solo.echo", {"x": 1}, timeout=5)
                assert result == {"payload": {"x": 1}, "pid": process.pid}
            process.send_signal(signal.SIGTERM)
            await err.until(lambda line: line == "w-1: SIGTERM, draining")
            assert await process.wait() == 0
    finally:
        process.kill()
        await process.wait()


async def test_worker_process_past_max_jobs_drains_and_exits_to_be_replaced(nursery, leader_url):
    from actors import Client
    from actors.worker._worker import RECYCLE_EXIT_STATUS

    process = await trio.lowlevel.open_process(
        python("-m", "actors.worker", "--url", leader_url, "--name", "w-3", "--group", "solo",
               "--subjects", "solo.recycled", "--max-jobs", "2", "tests.workers:Echo"),
        stderr=subprocess.PIPE, cwd=ROOT,
    )  # fmt: skip
    try:
        with trio.fail_after(15):
            assert process.stderr is not None
            err = Lines(process.stderr)
            await err.until(lambda line: line == f"w-3: connected to {leader_url}")
            async with Client.connect(leader_url) as client:
                for n in range(2):
                    assert (await client.submit("solo.recycled", n, timeout=5))[
                        "pid"
                    ] == process.pid
            await err.until(
                lambda line: line == "group solo: w-3 recycled: handled 2 jobs (max_jobs)"
            )
            assert await process.wait() == RECYCLE_EXIT_STATUS
    finally:
        process.kill()
        await process.wait()


async def test_worker_process_exits_at_once_on_a_second_ctrl_c(nursery, leader_url):
    from actors import Client

    process = await trio.lowlevel.open_process(
        python("-m", "actors.worker", "--url", leader_url, "--name", "w-2", "--subjects", "solo.sleepy",
               "tests.workers:Sleepy"),
        stderr=subprocess.PIPE, cwd=ROOT,
    )  # fmt: skip
    try:
        with trio.fail_after(15):
            assert process.stderr is not None
            err = Lines(process.stderr)
            await err.until(lambda line: line == f"w-2: connected to {leader_url}")
            async with Client.connect(leader_url) as client, trio.open_nursery() as jobs:
                jobs.start_soon(fire, client, "solo.sleepy")
                await trio.sleep(0.5)  # let it reach the worker (real time: e2e)
                process.send_signal(signal.SIGINT)
                await err.until(lambda line: line == "w-2: SIGINT, draining")
                process.send_signal(signal.SIGTERM)  # a supervisor's second SIGTERM: no effect
                process.send_signal(signal.SIGINT)
                await err.until(lambda line: line == "w-2: SIGINT again, exiting without draining")
                assert await process.wait() == 1
                jobs.cancel_scope.cancel()
    finally:
        process.kill()
        await process.wait()


# --------------------------------------------------------------------------- shell submit


async def test_version():
    result = await run("-m", "actors", "version")
    assert result.returncode == 0
    assert result.stdout.decode() == f"trio-actors protocol version {PROTOCOL_VERSION}\n"


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["submit", "math.*", "{}"], ["invalid subject 'math.*'"]),
        (["submit", "math.square", "{n: 7}"], ["JSON argument: invalid JSON"]),
        (["submit", "math.square"], ["give either a JSON payload or --file"]),
        (
            ["submit", "math.square", "{}", "--file", "x.jsonl"],
            ["give either a JSON payload or --file"],
        ),
        (
            ["submit", "math.square", "--file", "no/such.jsonl"],
            ["--file: no/such.jsonl: no such file"],
        ),
        (["submit", "math.square", "{}", "--count", "0"], ["--count: expected an integer >= 1"]),
        (["submit", "math.square", "{}", "--qos", "2"], ["argument --qos: invalid choice"]),
        (
            ["submit", "math.square", "{}", "--url", "http://x:1"],
            ["--url: unsupported transport URL"],
        ),
        ([], ["the following arguments are required: COMMAND"]),
    ],
)
async def test_submit_refuses_bad_arguments(args, fragments):
    result = await run("-m", "actors", *args)
    assert_clean_error(result, 2, *fragments)


async def test_submit_when_no_leader_listens():
    with trio.socket.socket() as sock:  # a port that is certainly closed
        await sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result = await run(
        "-m",
        "actors",
        "submit",
        "a.b",
        "{}",
        "--url",
        f"tcp://127.0.0.1:{port}",
        "--connect-timeout",
        "0.5",
    )
    assert_clean_error(result, 1, "could not connect")


async def test_submit_one_job_prints_its_result(leader_url):
    result = await run("-m", "actors", "submit", "test.echo", '{"n": 7}', "--url", leader_url)
    assert result.returncode == 0, result.stderr.decode()
    assert json.loads(result.stdout) == {"payload": {"n": 7}, "pid": os.getpid()}
    assert result.stderr == b""  # no bar and no summary for a single job


async def test_submit_count_shows_progress_and_a_summary(leader_url):
    result = await run(
        "-m", "actors", "submit", "test.echo", '{"n": 1}', "--url", leader_url, "--count", "50"
    )
    assert result.returncode == 0, result.stderr.decode()
    lines = result.stdout.decode().splitlines()
    assert [json.loads(line)["payload"] for line in lines] == [{"n": 1}] * 50
    err = result.stderr.decode()
    assert "50/50" in err  # tqdm's bar
    assert err.rstrip().endswith("50 jobs: 50 ok, 0 failed")


async def test_submit_a_file_keeps_input_order_and_reports_failures(tmp_path, leader_url):
    payloads = [{"seconds": 0.2 - i * 0.02} for i in range(10)]  # later jobs finish first
    path = tmp_path / "payloads.jsonl"
    path.write_text("\n".join(json.dumps(p) for p in payloads) + "\n\n")
    result = await run(
        "-m",
        "actors",
        "submit",
        "test.sleepy",
        "--file",
        str(path),
        "--url",
        leader_url,
        "--no-progress",
    )
    assert result.returncode == 0, result.stderr.decode()
    assert [json.loads(line)["slept"] for line in result.stdout.decode().splitlines()] == [
        p["seconds"] for p in payloads
    ]
    assert result.stderr.decode() == "10 jobs: 10 ok, 0 failed\n"

    result = await run(
        "-m", "actors", "submit", "test.flaky", "--file", "-", "--url", leader_url, "--no-progress",
        "--qos", "0",  # no redelivery: the failure comes back at once
        stdin=b'{"fail": false}\n{"fail": true}\n{"fail": false}\n',
    )  # fmt: skip
    assert result.returncode == 1
    out: list[Any] = [json.loads(line) for line in result.stdout.decode().splitlines()]
    assert out[0] == out[2] == {"ok": True}
    error = out[1]["error"]
    assert error["type"] == "ValueError" and "asked to fail (attempt 1)" in error["message"]
    assert error["attempts"] == 1 and error["job_id"]
    assert result.stderr.decode() == "3 jobs: 2 ok, 1 failed (ValueError: 1)\n"


async def test_submit_stops_at_a_bad_line(tmp_path, leader_url):
    path = tmp_path / "payloads.jsonl"
    path.write_text('{"n": 1}\n{"n": 2}\nnot json\n{"n": 4}\n')
    result = await run(
        "-m",
        "actors",
        "submit",
        "test.echo",
        "--file",
        str(path),
        "--url",
        leader_url,
        "--no-progress",
    )
    assert_clean_error(result, 2, f"{path} line 3: invalid JSON")
    assert [json.loads(line)["payload"] for line in result.stdout.decode().splitlines()] == [
        {"n": 1},
        {"n": 2},
    ]


async def test_cluster_prints_statistics_while_running_and_when_stopping():
    with trio.fail_after(18):
        process, lines, urls = await start_cluster(
            "--listen", "tcp://127.0.0.1:0", "--worker", "e=tests.workers:Echo=1",
            "--stats", "0.2", "--drain-grace", "1",
        )  # fmt: skip
        try:
            for n in range(3):
                result = await run(
                    "-m", "actors", "submit", "test.echo", f'{{"n": {n}}}', "--url", urls[0]
                )
                assert result.returncode == 0, result.stderr.decode()
            line = await lines.until(
                lambda line: line.startswith("  subject test.echo: 3 submitted")
            )
            assert "3 done, 0 failed, 0 redelivered, 0 dead" in line and "latency avg" in line
            await lines.until(
                lambda line: line.startswith("  group e: 1 workers") and "3 done" in line
            )
            process.send_signal(signal.SIGTERM)
            await lines.until(lambda line: line == "cluster stopped")
            final = lines.seen[-4:]
            assert final[0].startswith("stats: 0 active, 0 waiting, 0 in flight")
            assert final[1].startswith("  subject test.echo: 3 submitted, 3 done")
            assert await process.wait() == 0
        finally:
            process.kill()
            await process.wait()


async def test_cluster_replaces_workers_past_max_jobs():
    with trio.fail_after(25):
        process, lines, urls = await start_cluster(
            "--listen", "tcp://127.0.0.1:0", "--worker", "e=tests.workers:Echo=1", "--max-jobs", "2",
            "--drain-grace", "1",
        )  # fmt: skip
        try:
            line = "group e: 1 x tests.workers:Echo (processes, mode round_robin, policy round_robin, max_jobs 2)"
            assert line in lines.seen
            pids = []
            for n in range(4):
                result = await run(
                    "-m", "actors", "submit", "test.echo", f'{{"n": {n}}}', "--url", urls[0]
                )
                assert result.returncode == 0, result.stderr.decode()
                pids.append(json.loads(result.stdout)["pid"])
            assert pids[0] == pids[1] != pids[2] == pids[3]  # two jobs per worker process
            process.send_signal(signal.SIGTERM)
            await lines.until(lambda line: line == "cluster stopped")
            assert await process.wait() == 0
        finally:
            process.kill()
            await process.wait()


async def test_cluster_refuses_a_negative_stats_interval():
    result = await run("-m", "actors.cluster", "--stats", "-1")
    assert_clean_error(result, 2, "--stats: expected a number of seconds >= 0")


def test_a_cluster_in_memory_says_how_many_dead_letters_it_keeps() -> None:
    # (without a journal the oldest dead letters go past the cap: said at start)
    from actors.cluster._run import _journal_line
    from actors.leader import BrokerConfig, Leader, LeaderConfig

    assert _journal_line(Leader(memory=True)) == (
        "journal: none (--memory): accepted jobs are lost when the leader stops; the newest "
        "1,000 dead letters are kept (older ones are dropped)"
    )
    leader = Leader(LeaderConfig(memory=True, broker=BrokerConfig(max_dead_letters=50)))
    assert "the newest 50 dead letters are kept" in _journal_line(leader)
