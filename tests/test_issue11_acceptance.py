"""Acceptance tests of issue 11, written as its tester: a new user, black-box.

"Job API that fails fast, says why, and cancels what nobody waits for." Everything goes
through what a user touches: a real ``python -m actors.cluster`` process (worker groups
in their own processes, its stdout and stderr read as a user reads them), the shell
(``python -m actors ...``, the URL from ``ACTORS_URL``), :class:`actors.Client`, and
:class:`actors.Worker` subclasses defined here (the worker processes import them as
``tests.test_issue11_acceptance:Class``). What a worker did is seen from outside: the
handlers append ``start``/``cancelled``/``done`` lines to a file named in the payload.

A test that shows a gap is kept as a strict xfail naming the gap (the suite stays green
until it is closed, and turns red when it is).

Real processes, sockets and time (``e2e``), on 127.0.0.1 only; every test is capped.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

import actors
from actors import (
    Client,
    Conflict,
    ConnectionLost,
    DeadLettered,
    Job,
    JobCancelled,
    JobFailed,
    NoRoute,
    Reject,
    SubmitTimeout,
    Worker,
    WrongProtocol,
)
from tests.helpers import wait_until

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parent.parent
HERE = "tests.test_issue11_acceptance"


# ---------------------------------------------------------------------------------------
# Workers (imported by the cluster's worker processes)


def _append(path: str, line: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


class Slow(Worker):
    """Sleeps ``payload["seconds"]``, logging ``start``/``cancelled``/``done <job id>`` to
    ``payload["log"]``; with ``progress``, reports progress every 0.1 s meanwhile; with
    ``fail``, raises ValueError after the sleep; returns ``payload["n"]`` and the time its
    job had left before its deadline when it started."""

    subjects = ["slow.>"]
    concurrency = 16

    async def handle(self, job: Job) -> Any:
        p = job.payload
        log = p.get("log")
        left = None if job.deadline is None else job.deadline - trio.current_time()
        if log:
            _append(log, f"start {job.id} {left}\n")
        try:
            if p.get("progress"):
                end = trio.current_time() + p["seconds"]
                while trio.current_time() < end:
                    await job.progress(0.5)
                    await trio.sleep(0.1)
            else:
                await trio.sleep(p.get("seconds", 0))
        except trio.Cancelled:
            if log:
                _append(log, f"cancelled {job.id}\n")
            raise
        if log:
            _append(log, f"done {job.id}\n")
        if p.get("fail"):
            raise ValueError(f"asked to fail item {p.get('n')}")
        return {"n": p.get("n"), "left": left}


class Failing(Worker):
    """``fail.value``: raises ValueError (retried); ``fail.reject``: ``Reject``;
    ``fail.never``: KeyError, which ``never_retry`` lists."""

    subjects = ["fail.>"]
    concurrency = 2
    never_retry = (KeyError,)

    async def handle(self, job: Job) -> Any:
        if job.subject == "fail.reject":
            raise Reject("no order id")
        if job.subject == "fail.never":
            raise KeyError("order 42")
        raise ValueError(f"bad item {job.payload!r}")


class SyncSleeper(Worker):
    """A plain ``def handle`` that blocks, as a Celery or RQ user writes it."""

    subjects = ["sync.sleep"]
    concurrency = 2

    def handle(self, job: Job) -> Any:  # type: ignore[override]
        time.sleep(job.payload)
        return "slept"


class Blocker(Worker):
    """An ``async def handle`` that calls blocking code: the event loop stalls."""

    subjects = ["block.sleep"]
    concurrency = 2

    async def handle(self, job: Job) -> Any:
        time.sleep(job.payload)  # noqa: ASYNC251 - the mistake under test
        return "slept"


class BadSetup(Worker):
    """Cannot start: its ``setup()`` raises."""

    subjects = ["bad.work"]

    async def setup(self) -> None:
        raise ConnectionRefusedError("cannot reach the database at db:5432")

    async def handle(self, job: Job) -> Any:  # pragma: no cover
        return None


class Gone(Worker):
    """Served by a worker started by hand, then stopped."""

    subjects = ["gone.work"]

    async def handle(self, job: Job) -> Any:
        return "here"


# ---------------------------------------------------------------------------------------
# A real cluster process


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "ACTORS_URL"}
    env.update(extra)
    return env


class ClusterProcess:
    """A ``python -m actors.cluster`` process, its stdout and stderr in files."""

    def __init__(self, args: list[str], directory: Path) -> None:
        self.directory = directory
        self.out_path = directory / "cluster.out"
        self.err_path = directory / "cluster.err"
        with open(self.out_path, "wb") as out, open(self.err_path, "wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "actors.cluster", "--listen", "tcp://127.0.0.1:0",
                 "--drain-grace", "1", *args],
                stdout=out, stderr=err, stdin=subprocess.DEVNULL, cwd=ROOT, env=_env(),
            )  # fmt: skip
        self.url = ""

    @property
    def out(self) -> str:
        return self.out_path.read_text(errors="replace")

    @property
    def err(self) -> str:
        return self.err_path.read_text(errors="replace")

    def wait_for_line(self, prefix: str, within: float = 30.0) -> str:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            for line in self.out.splitlines():
                if line.startswith(prefix):
                    return line
            if self.proc.poll() is not None and not any(
                line.startswith(prefix) for line in self.out.splitlines()
            ):
                raise AssertionError(
                    f"cluster exited {self.proc.returncode}:\n{self.out}\n{self.err[-3000:]}"
                )
            time.sleep(0.05)
        raise AssertionError(
            f"no line {prefix!r} within {within} s:\n{self.out}\n{self.err[-3000:]}"
        )

    def start(self) -> ClusterProcess:
        listening = self.wait_for_line("leader listening on ", within=20)
        self.url = listening.split()[-1]
        return self

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


MAIN_GROUPS = [
    "--worker", "examples.square:Square=1",
    "--worker", f"slow={HERE}:Slow=1",
    "--worker", f"fail={HERE}:Failing=2",
    "--worker", f"sync={HERE}:SyncSleeper=1",
    "--worker", f"block={HERE}:Blocker=1",
]  # fmt: skip


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterProcess]:
    """The cluster most tests share (each uses subjects of its own)."""
    process = ClusterProcess(MAIN_GROUPS, tmp_path_factory.mktemp("main"))
    try:
        process.start()
        process.wait_for_line("cluster ready", within=30)
        yield process
    finally:
        process.stop()


def _config(directory: Path, text: str) -> str:
    path = directory / "cluster.toml"
    path.write_text(text)
    return str(path)


GRACE_AND_BAD = """
[leader]
name = "grace"  # (its own data directory: the main cluster runs meanwhile)
route_grace = 2.0

[[groups]]
name = "good"
worker = "tests.test_issue11_acceptance:Slow"

[[groups]]
name = "bad"
worker = "tests.test_issue11_acceptance:BadSetup"
instances = 2
max_start_failures = 2
"""


@pytest.fixture(scope="module")
def grace_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterProcess]:
    """A cluster whose leader has a ``route_grace`` and one of whose groups cannot start."""
    directory = tmp_path_factory.mktemp("grace")
    process = ClusterProcess(["--config", _config(directory, GRACE_AND_BAD)], directory)
    try:
        process.start()
        process.wait_for_line("cluster ready", within=30)
        yield process
    finally:
        process.stop()


async def shell(
    *args: str, url: str | None = None, limit: float = 15, **kw: Any
) -> subprocess.CompletedProcess[bytes]:
    """``python -m actors ARGS`` with ``ACTORS_URL`` set to ``url`` (no ``--url``)."""
    env = _env(**({"ACTORS_URL": url} if url else {}))
    with trio.fail_after(limit):
        return await trio.run_process(
            [sys.executable, "-m", "actors", *args], check=False, capture_stdout=True,
            capture_stderr=True, stdin=kw.pop("stdin", subprocess.DEVNULL), cwd=ROOT, env=env, **kw,
        )  # fmt: skip


async def stats(url: str) -> dict[str, Any]:
    result = await shell("status", "--json", url=url)
    assert result.returncode == 0, result.stderr.decode()
    return json.loads(result.stdout)


def log_lines(path: Path, kind: str) -> list[str]:
    if not path.exists():
        return []
    return [
        line.split()[1] for line in path.read_text().splitlines() if line.startswith(kind + " ")
    ]


async def closed_port_url() -> str:
    with trio.socket.socket() as sock:  # bound, never listening: connections are refused
        await sock.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{sock.getsockname()[1]}"


# ---------------------------------------------------------------------------------------
# 1. No route


async def test_1_cli_submit_to_a_typo_exits_non_zero_at_once_and_says_what_was_meant(cluster):
    for extra in ([], ["--count", "200"]):
        started = time.monotonic()
        result = await shell("submit", "math.sqare", '{"n": 1}', *extra, url=cluster.url)
        took = time.monotonic() - started
        err = result.stderr.decode()
        assert result.returncode != 0 and took < 5, (took, err)
        assert "math.sqare" in err and "did you mean math.square?" in err, err
        assert "Traceback" not in err and result.stdout == b""
    # The subject it meant works, in the same cluster.
    result = await shell("submit", "math.square", '{"n": 7}', url=cluster.url)
    assert result.returncode == 0 and json.loads(result.stdout) == {"square": 49}


async def test_1_submit_request_and_map_raise_no_route_naming_the_subject(cluster):
    with trio.fail_after(10):
        async with Client.connect(cluster.url) as client:
            started = trio.current_time()
            with pytest.raises(NoRoute) as info:
                await client.submit("math.sqare", {"n": 3})  # timeout=None: still at once
            assert info.value.subject == "math.sqare"
            assert "math.sqare" in str(info.value) and "did you mean math.square?" in str(
                info.value
            )
            with pytest.raises(NoRoute, match=r"math\.sqare"):
                await client.request("math.sqare", {"n": 3})
            with pytest.raises(NoRoute, match=r"math\.sqare"):
                async for _ in client.map("math.sqare", [{"n": 1}, {"n": 2}], timeout=5):
                    pass  # pragma: no cover
            with pytest.raises(NoRoute) as far:
                await client.submit("nothing.like.it", 1)
            assert "did you mean" not in str(far.value)  # nothing close: no suggestion
            assert trio.current_time() - started < 2


async def test_1_wait_for_worker_queues_instead_and_the_job_expires_with_its_timeout(cluster):
    with trio.fail_after(10):
        async with Client.connect(cluster.url) as client:
            started = trio.current_time()
            with pytest.raises(SubmitTimeout):
                await client.submit("nobody.here", 1, wait_for_worker=True, timeout=0.5)
            assert 0.5 <= trio.current_time() - started < 1.5
    result = await shell(
        "submit", "nobody.here", "1", "--wait-for-worker", "--timeout", "0.5", url=cluster.url
    )
    assert result.returncode != 0
    assert json.loads(result.stdout)["error"]["type"] == "SubmitTimeout"


async def test_1_a_leaders_route_grace_waits_that_long_then_no_route(grace_cluster):
    with trio.fail_after(10):
        async with Client.connect(grace_cluster.url) as client:
            started = trio.current_time()
            with pytest.raises(NoRoute, match=r"nobody\.here"):
                await client.submit("nobody.here", 1)
            assert 1.8 <= trio.current_time() - started < 3.5


async def test_1_a_subject_whose_only_worker_was_stopped_is_no_route_at_once(cluster, tmp_path):
    """A worker started by hand serves gone.work; it is stopped (Ctrl-C: it drains and says
    Bye). A submit to gone.work then should be answered no_route at once, as for any
    subject no connected worker serves."""
    worker = await trio.lowlevel.open_process(
        [sys.executable, "-m", "actors.worker", "--url", cluster.url, f"{HERE}:Gone"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT, env=_env(),
    )  # fmt: skip
    try:
        with trio.fail_after(10):
            async with Client.connect(cluster.url) as client:

                async def served() -> bool:
                    try:
                        return await client.submit("gone.work", 1, timeout=2) == "here"
                    except NoRoute:
                        return False

                await wait_until(served, timeout=8, interval=0.2)
            worker.send_signal(signal.SIGINT)
            assert await worker.wait() == 0
    finally:
        worker.kill()
        await worker.wait()
    started = time.monotonic()
    result = await shell("submit", "gone.work", "1", url=cluster.url, limit=8)
    assert result.returncode != 0 and time.monotonic() - started < 5
    assert "no worker serves subject gone.work" in result.stderr.decode()


# ---------------------------------------------------------------------------------------
# 2. Failures are visible where they happen


def _attempt_lines(text: str, job_id: str) -> list[str]:
    return [
        line
        for line in text.splitlines()
        if job_id in line and " failed" in line and "attempt" in line
    ]


async def test_2_each_failed_attempt_is_one_line_in_the_clusters_output_and_the_client_gets_the_traceback(
    cluster,
):
    with trio.fail_after(20):
        async with (
            Client.connect(cluster.url) as client,
            client.subscribe("$dlq.fail.value") as dlq,
        ):
            with pytest.raises(DeadLettered) as dead:
                await client.submit(
                    "fail.value", {"n": 1}, max_attempts=3, job_id="issue11-dead", timeout=15
                )
            async for message in dlq:  # README: the traceback travels with the dead letter too
                if message.payload.get("job_id") == "issue11-dead":
                    assert "ValueError: bad item" in message.payload["traceback"]
                    break
    error = dead.value
    assert error.error_type == "ValueError" and error.attempts == 3
    assert error.traceback is not None and "Traceback (most recent call last)" in error.traceback
    assert "in handle" in error.traceback and "ValueError: bad item {'n': 1}" in error.traceback
    await wait_until(lambda: len(_attempt_lines(cluster.err, "issue11-dead")) == 3, timeout=5)
    lines = _attempt_lines(cluster.err, "issue11-dead")
    for n, line in enumerate(lines, 1):
        # job id, subject, worker, attempt n/max, exception type and message
        assert re.search(
            rf"worker fail-[01]\b.*issue11-dead.*fail\.value.*attempt {n}/3.*ValueError: bad item",
            line,
        ), line


async def test_2_the_traceback_appears_once_in_the_clusters_output(cluster):
    with trio.fail_after(20):
        async with Client.connect(cluster.url) as client:
            got = [
                r async for r in client.map(
                    "fail.once", [{"i": i} for i in range(6)], max_attempts=2, return_exceptions=True, timeout=15
                )
            ]  # fmt: skip
    assert all(isinstance(r, DeadLettered) for r in got)
    await wait_until(lambda: cluster.err.count("(fail.once) failed, attempt") == 12, timeout=5)
    assert len(_tracebacks_ending(cluster.err, "ValueError: bad item {'i':")) == 1


def _tracebacks_ending(text: str, last_line: str) -> list[str]:
    """The tracebacks in ``text`` whose exception line (the first line after the
    ``Traceback`` header that is not indented) starts with ``last_line``."""
    found = []
    for block in text.split("Traceback (most recent call last):")[1:]:
        end = next((line for line in block.splitlines()[1:] if line and not line[0].isspace()), "")
        if end.startswith(last_line):
            found.append(block)
    return found


async def test_2_reject_and_never_retry_fail_the_job_at_once(cluster):
    with trio.fail_after(10):
        async with Client.connect(cluster.url) as client:
            with pytest.raises(JobFailed) as rejected:
                await client.submit("fail.reject", {}, job_id="issue11-reject", timeout=5)
            with pytest.raises(JobFailed) as never:
                await client.submit("fail.never", {}, job_id="issue11-never", timeout=5)
    assert rejected.value.error_type == "Rejected" and rejected.value.attempts == 1
    assert "no order id" in str(rejected.value)
    assert never.value.error_type == "KeyError" and never.value.attempts == 1
    assert never.value.traceback and "KeyError: 'order 42'" in never.value.traceback
    await wait_until(lambda: len(_attempt_lines(cluster.err, "issue11-never")) == 1, timeout=5)
    await trio.sleep(0.3)
    assert len(_attempt_lines(cluster.err, "issue11-reject")) == 1
    assert len(_attempt_lines(cluster.err, "issue11-never")) == 1


# ---------------------------------------------------------------------------------------
# 3. Abandoned work is cancelled


async def test_3_a_submit_timeout_cancels_the_handler_on_its_worker(cluster, tmp_path):
    log = tmp_path / "jobs.log"
    with trio.fail_after(15):
        async with Client.connect(cluster.url) as client:
            started = trio.current_time()
            with pytest.raises(SubmitTimeout):
                await client.submit(
                    "slow.timeout", {"seconds": 15, "log": str(log)}, timeout=1, job_id="t1"
                )
            assert trio.current_time() - started < 1.5
            await wait_until(lambda: log_lines(log, "cancelled") == ["t1"], timeout=2)
            await wait_until(lambda: _quiet(cluster.url, "slow.timeout"), timeout=3, interval=0.2)
    assert log_lines(log, "done") == []


async def _quiet(url: str, subject: str) -> bool:
    s = (await stats(url))["subjects"].get(subject, {})
    return s.get("in_flight") == 0 and s.get("queued") == 0


async def test_3_the_deadline_reaches_the_worker_and_progress_does_not_extend_it(cluster, tmp_path):
    """detach=True: no Cancel from the client; the worker's own deadline ends it."""
    log = tmp_path / "jobs.log"
    payload = {"seconds": 15, "progress": True, "log": str(log)}
    with trio.fail_after(15):
        async with Client.connect(cluster.url) as client:
            with pytest.raises(SubmitTimeout):
                await client.submit("slow.deadline", payload, timeout=1.5, detach=True, job_id="d1")
            await wait_until(lambda: log_lines(log, "cancelled") == ["d1"], timeout=1.5)
            # README: "the job fails with DeadlineExceeded, not retried".
            with pytest.raises(JobFailed) as failed:
                await client.result("d1", wait=True, timeout=3)
            assert failed.value.error_type == "DeadlineExceeded" and failed.value.attempts == 1
    [start] = [line for line in log.read_text().splitlines() if line.startswith("start ")]
    left = float(start.split()[2])  # job.deadline - now, seen by the handler
    assert 1.0 < left <= 1.5


async def test_3_ctrl_c_on_a_cli_submit_of_200_leaves_no_job_running(cluster, tmp_path):
    log = tmp_path / "jobs.log"
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "actors", "submit", "slow.ctrlc", json.dumps({"seconds": 30, "log": str(log)}),
         "--count", "200", "--no-progress"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=ROOT, env=_env(ACTORS_URL=cluster.url),
    )  # fmt: skip
    try:
        with trio.fail_after(20):
            await wait_until(
                lambda: len(log_lines(log, "start")) == 16, timeout=8
            )  # the worker's window
            process.send_signal(signal.SIGINT)
            assert await process.wait() == 130
            await wait_until(lambda: _quiet(cluster.url, "slow.ctrlc"), timeout=4, interval=0.2)
            await wait_until(lambda: len(log_lines(log, "cancelled")) == 16, timeout=3)
            s = (await stats(cluster.url))["subjects"]["slow.ctrlc"]
            assert s["done"] == 0 and s["cancelled"] == s["submitted"] == 64
    finally:
        process.kill()
        await process.wait()


async def test_3_leaving_a_map_early_cancels_its_jobs_on_the_worker(cluster, tmp_path):
    log = tmp_path / "jobs.log"
    # The first result comes after 0.5 s: by then the four others run on the worker.
    payloads = [{"seconds": 0.5, "log": str(log)}] + [{"seconds": 15, "log": str(log)}] * 4
    with trio.fail_after(10):
        async with Client.connect(cluster.url) as client:
            async for _ in client.map("slow.mapleft", payloads, limit=5):
                break
        started = len(log_lines(log, "start"))  # (a job cancelled before it began never starts)
        assert 1 <= started <= 5
        await wait_until(lambda: len(log_lines(log, "cancelled")) == started - 1, timeout=3)
        await wait_until(lambda: _quiet(cluster.url, "slow.mapleft"), timeout=3, interval=0.2)
    assert len(log_lines(log, "done")) == 1


# ---------------------------------------------------------------------------------------
# 4. Plain exceptions from Client.connect


async def test_4_a_refused_connection_is_a_plain_connection_lost_within_a_second():
    url = await closed_port_url()
    started = trio.current_time()
    caught: BaseException | None = None
    with trio.fail_after(5):
        try:
            async with Client.connect(url):
                pass  # pragma: no cover
        except ConnectionLost as exc:  # the user's except clause, not except*
            caught = exc
    assert caught is not None and not isinstance(caught, BaseExceptionGroup)
    assert trio.current_time() - started < 1.5
    assert "refused" in str(caught) and url in str(caught)


async def test_4_ws_against_the_clusters_tcp_listener_is_the_wrong_protocol(cluster):
    url = "ws://" + cluster.url.split("://", 1)[1]
    started = trio.current_time()
    with trio.fail_after(5), pytest.raises(WrongProtocol) as info:
        async with Client.connect(url):
            pass  # pragma: no cover
    assert trio.current_time() - started < 1.5 and url in str(info.value)


async def test_4_the_square_example_prints_one_line_without_a_cluster_and_works_with_one(cluster):
    url = await closed_port_url()
    with trio.fail_after(15):
        result = await trio.run_process(
            [sys.executable, "-m", "examples.square", url], check=False, capture_stdout=True,
            capture_stderr=True, stdin=subprocess.DEVNULL, cwd=ROOT, env=_env(),
        )  # fmt: skip
    err = result.stderr.decode()
    assert result.returncode != 0 and err.count("\n") == 1 and "Traceback" not in err, err
    with trio.fail_after(15):
        result = await trio.run_process(
            [sys.executable, "-m", "examples.square", cluster.url], check=False, capture_stdout=True,
            capture_stderr=True, stdin=subprocess.DEVNULL, cwd=ROOT, env=_env(),
        )  # fmt: skip
    assert result.returncode == 0, result.stderr.decode()
    assert "7 squared: {'square': 49}" in result.stdout.decode()


# ---------------------------------------------------------------------------------------
# 5. map in input order


async def test_5_map_is_ordered_by_default_unordered_gives_index_pairs_and_failures_in_place(
    cluster,
):
    payloads = [{"n": i, "seconds": (5 - i) * 0.06} for i in range(6)]
    with trio.fail_after(15):
        async with Client.connect(cluster.url) as client:
            got = [r["n"] async for r in client.map("slow.order", payloads)]
            assert got == list(range(6))
            pairs = [
                (i, r["n"]) async for i, r in client.map("slow.order", payloads, ordered=False)
            ]
            assert sorted(pairs) == [(i, i) for i in range(6)]
            assert pairs[0] == (5, 5) and pairs[-1] == (0, 0)  # as they complete
            mixed = [{"n": 0, "seconds": 0.2}, {"n": 1, "fail": True}, {"n": 2}]
            got = [
                r
                async for r in client.map(
                    "slow.order", mixed, return_exceptions=True, max_attempts=1
                )
            ]
            assert got[0]["n"] == 0 and got[2]["n"] == 2
            assert isinstance(got[1], JobFailed) and "asked to fail item 1" in str(got[1])
            async with client.map("slow.order", mixed, max_attempts=1) as results:
                assert (await anext(results))["n"] == 0
                with pytest.raises(JobFailed):
                    await anext(results)


# ---------------------------------------------------------------------------------------
# 6. Workers that cannot start


async def test_6_a_group_that_cannot_start_is_reported_and_the_others_serve(grace_cluster):
    out = grace_cluster.out
    failed = [line for line in out.splitlines() if line.startswith("group bad failed")]
    assert len(failed) == 1 and "failed to start 2 times in a row" in failed[0]
    assert "ConnectionRefusedError: cannot reach the database at db:5432" in failed[0]
    ready = next(line for line in out.splitlines() if line.startswith("cluster ready"))
    assert "bad" in ready  # the cluster says which group is not serving
    err = grace_cluster.err
    starts = [line for line in err.splitlines() if "failed to start" in line]
    assert 2 <= len(starts) <= 4 and all(re.search(r"bad-[01]", line) for line in starts)
    assert err.count("Traceback (most recent call last)") == 1 and "ExceptionGroup" not in err
    with trio.fail_after(10):
        async with Client.connect(grace_cluster.url) as client:
            assert (await client.submit("slow.x", {"n": 3}, timeout=5))["n"] == 3


async def test_6_status_shows_the_failed_group(grace_cluster):
    result = await shell("status", "--sample", "0", url=grace_cluster.url)
    assert result.returncode == 0
    text = result.stdout.decode()
    assert re.search(r"^bad\b.*failed", text, re.MULTILINE) or "bad failed" in text, text


async def test_6_fail_fast_stops_the_cluster_with_status_1(tmp_path):
    config = _config(tmp_path, GRACE_AND_BAD.replace("route_grace = 2.0", "route_grace = 0"))
    process = ClusterProcess(["--config", config, "--fail-fast"], tmp_path)
    try:
        with trio.fail_after(30):  # (the wait in a thread, abandoned if it takes too long)
            returncode = await trio.to_thread.run_sync(process.proc.wait, abandon_on_cancel=True)
        assert returncode == 1
        assert any(line.startswith("group bad failed") for line in process.out.splitlines())
        assert not any(line.startswith("cluster ready") for line in process.out.splitlines())
    finally:
        process.stop()


# ---------------------------------------------------------------------------------------
# 7. Results by id, honest dedup


async def test_7_a_result_by_id_from_python_and_from_the_shell(cluster, tmp_path):
    job_id = f"issue11-result-{os.getpid()}"
    with trio.fail_after(15):
        async with Client.connect(cluster.url) as client:
            assert await client.submit("math.square", {"n": 12}, job_id=job_id) == {"square": 144}
        async with Client.connect(cluster.url) as other:
            assert await other.result(job_id) == {"square": 144}
            async with trio.open_nursery() as nursery:
                nursery.start_soon(
                    lambda: other.submit(
                        "slow.byid", {"n": 5, "seconds": 0.8}, job_id=job_id + "-slow"
                    )
                )
                await trio.sleep(0.2)
                assert (await other.result(job_id + "-slow", wait=True))["n"] == 5
    result = await shell("result", job_id, url=cluster.url)
    assert result.returncode == 0 and json.loads(result.stdout) == {"square": 144}
    result = await shell("result", "no-such-job-11", url=cluster.url)
    assert result.returncode != 0 and "no-such-job-11" in result.stderr.decode()
    assert "Traceback" not in result.stderr.decode()


async def test_7_a_known_job_id_with_another_payload_or_subject_is_a_conflict(cluster):
    job_id = f"issue11-conflict-{os.getpid()}"
    with trio.fail_after(10):
        async with Client.connect(cluster.url) as client:
            assert await client.submit("math.square", {"n": 2}, job_id=job_id) == {"square": 4}
            assert await client.submit("math.square", {"n": 2}, job_id=job_id) == {"square": 4}
            with pytest.raises(Conflict):
                await client.submit("math.square", {"n": 3}, job_id=job_id)
            with pytest.raises(Conflict):
                await client.submit("math.common.add", {"n": 2}, job_id=job_id)
            # And while it runs.
            async with trio.open_nursery() as nursery:
                nursery.start_soon(
                    lambda: client.submit(
                        "slow.conflict", {"n": 1, "seconds": 0.5}, job_id=job_id + "-r"
                    )
                )
                await trio.sleep(0.2)
                with pytest.raises(Conflict):
                    await client.submit(
                        "slow.conflict", {"n": 2, "seconds": 0.5}, job_id=job_id + "-r"
                    )


async def test_7_a_payload_that_differs_only_in_its_type_is_a_conflict(cluster):
    job_id = f"issue11-types-{os.getpid()}"
    with trio.fail_after(10):
        async with Client.connect(cluster.url) as client:
            assert await client.submit("math.square", {"n": 1}, job_id=job_id) == {"square": 1}
            with pytest.raises(Conflict):
                await client.submit("math.square", {"n": 1.0}, job_id=job_id)


# ---------------------------------------------------------------------------------------
# 8. A shell for the cluster


async def test_8_status_with_the_url_from_the_environment(cluster):
    result = await shell("status", "--sample", "0.2", url=cluster.url)
    assert result.returncode == 0, result.stderr.decode()
    text = result.stdout.decode()
    for group in ("square", "slow", "fail", "sync", "block"):
        assert re.search(rf"^{group}\s", text, re.MULTILINE), text
    assert "WINDOW" in text and "IN FLIGHT" in text and "QUEUED" in text and "dead letters" in text
    assert "IN/S" in text or "/s" in text  # rates


async def test_8_status_shows_the_subjects_the_workers_serve(cluster):
    result = await shell("status", "--sample", "0", url=cluster.url)
    text = result.stdout.decode()
    assert "math.common.>" in text and "slow.>" in text and "fail.>" in text, text


async def test_8_publish_subscribe_and_cancel_from_the_shell(cluster, tmp_path):
    sub = await trio.lowlevel.open_process(
        [sys.executable, "-m", "actors", "subscribe", "issue11.>"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=ROOT, env=_env(ACTORS_URL=cluster.url),
    )  # fmt: skip
    try:
        with trio.fail_after(15):
            assert sub.stdout is not None
            got = b""

            async def publish_until_seen() -> None:
                nonlocal got
                # The subscription may not be in place yet: publish until a line arrives.
                while b"\n" not in got:
                    result = await shell("publish", "issue11.order", '{"id": 7}', url=cluster.url)
                    assert result.returncode == 0, result.stderr.decode()
                    with trio.move_on_after(1):
                        got += await sub.stdout.receive_some(4096)

            await publish_until_seen()
            assert got.decode().splitlines()[0] == 'issue11.order {"id": 7}'
            sub.send_signal(signal.SIGINT)
            assert await sub.wait() == 0
    finally:
        sub.kill()
        await sub.wait()

    log = tmp_path / "jobs.log"
    with trio.fail_after(15):
        async with Client.connect(cluster.url) as client:
            errors: list[BaseException] = []

            async def submit() -> None:
                try:
                    await client.submit(
                        "slow.cancel", {"seconds": 15, "log": str(log)}, job_id="issue11-cancel"
                    )
                except JobCancelled as exc:
                    errors.append(exc)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(submit)
                await wait_until(lambda: log_lines(log, "start") == ["issue11-cancel"], timeout=5)
                result = await shell("cancel", "issue11-cancel", url=cluster.url)
                assert result.returncode == 0, result.stderr.decode()
            assert len(errors) == 1
            await wait_until(lambda: log_lines(log, "cancelled") == ["issue11-cancel"], timeout=2)


async def test_8_every_option_shows_its_default_in_help():
    for command, defaults in {
        "submit": [
            "(default: 64)",
            "(default: 30.0)",
            "(default: 10.0)",
            "(default: 1)",
            "ACTORS_URL",
        ],
        "status": ["(default: 1.0)", "ACTORS_URL"],
        "result": ["ACTORS_URL"],
        "subscribe": ["(default: 0)"],
        "publish": ["(default: 1)"],
        "cancel": ["(default: cancelled from the shell)"],
    }.items():
        result = await shell(command, "--help", url="tcp://127.0.0.1:7799")
        text = " ".join(result.stdout.decode().split())
        assert result.returncode == 0
        assert "(default: tcp://127.0.0.1:7799)" in text, (command, text)
        for default in defaults:
            assert default in text, (command, default, text)


async def test_8_cancel_of_an_unknown_job_says_so(cluster):
    result = await shell("cancel", "no-such-job-to-cancel", url=cluster.url)
    assert result.returncode != 0 and "no-such-job-to-cancel" in result.stderr.decode()


async def test_8_a_closed_pipe_on_stdout_is_no_traceback(cluster):
    with trio.fail_after(15):
        result = await trio.run_process(
            ["sh", "-c", f"{sys.executable} -m actors status --sample 0 | true"], check=False,
            capture_stdout=True, capture_stderr=True, cwd=ROOT, env=_env(ACTORS_URL=cluster.url),
        )  # fmt: skip
    assert "Traceback" not in result.stderr.decode(), result.stderr.decode()


# ---------------------------------------------------------------------------------------
# 9. Blocking handlers


async def test_9_a_plain_def_handler_runs_its_jobs_side_by_side(cluster):
    with trio.fail_after(15):
        async with Client.connect(cluster.url) as client:
            await client.submit("sync.sleep", 0, timeout=5)  # warm up
            started = time.monotonic()
            async with trio.open_nursery() as nursery:
                for _ in range(3):
                    nursery.start_soon(lambda: client.submit("sync.sleep", 1, timeout=10))
            took = time.monotonic() - started
    assert 1.9 <= took < 2.7, took  # concurrency 2: two at once, then one (not 3 s)


async def test_9_an_async_handler_that_blocks_the_loop_is_named_in_a_warning(cluster):
    with trio.fail_after(15):
        async with Client.connect(cluster.url) as client:
            assert (
                await client.submit("block.sleep", 1.5, job_id="issue11-block", timeout=10)
                == "slept"
            )
    await wait_until(
        lambda: "issue11-block" in cluster.err and "event loop" in cluster.err, timeout=3
    )
    [line] = [
        line
        for line in cluster.err.splitlines()
        if "issue11-block" in line and "event loop" in line
    ][:1]
    assert "Blocker.handle" in line and "block.sleep" in line


# ---------------------------------------------------------------------------------------
# 10. What survives a crash


async def test_10_a_killed_client_s_job_goes_on_and_its_result_is_readable_by_id(cluster, tmp_path):
    """README, "What survives a crash": a client that dies leaves its jobs running; their
    results can be read by id afterwards."""
    log = tmp_path / "jobs.log"
    job_id = f"issue11-orphan-{os.getpid()}"
    code = (
        "import sys, trio\nfrom actors import Client\n"
        "async def main():\n"
        f"    async with Client.connect({cluster.url!r}) as c:\n"
        f"        await c.submit('slow.orphan', {{'n': 9, 'seconds': 1, 'log': {str(log)!r}}}, job_id={job_id!r})\n"
        "trio.run(main)\n"
    )
    client = await trio.lowlevel.open_process([sys.executable, "-c", code], cwd=ROOT, env=_env())
    try:
        with trio.fail_after(10):
            await wait_until(lambda: log_lines(log, "start") == [job_id], timeout=5)
            client.kill()  # SIGKILL: no goodbye, no cancel
            await client.wait()
            await wait_until(lambda: log_lines(log, "done") == [job_id], timeout=3)
            result = await shell("result", job_id, "--wait", "--timeout", "3", url=cluster.url)
            assert result.returncode == 0, result.stderr.decode()
            assert json.loads(result.stdout)["n"] == 9
    finally:
        client.kill()
        await client.wait()


def test_the_public_names_of_the_issue() -> None:
    for name in ("NoRoute", "Reject", "Conflict", "NotFound", "ConnectionRefused", "ConnectTimeout",
                 "TLSFailed", "WrongProtocol", "JobMap"):  # fmt: skip
        assert hasattr(actors, name), name
