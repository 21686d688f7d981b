"""Workers that cannot start are reported, and a cluster is ready when its workers are.

- A failed start (``setup()`` raises) is one log line per attempt: group, instance, how
  many in a row, exception type and message; the traceback comes once per group and type.
  A worker process says why in a report file and exits 78; by hand, it logs it itself.
- It is restarted with backoff; after ``max_start_failures`` failed starts in a row the
  group gives up (``GroupFailed``). A run that connected starts the count again.
- ``python -m actors.cluster`` says ``group X failed: ...`` and serves on, or with
  ``--fail-fast`` stops with status 1; it says ``cluster ready`` once every group's workers
  are connected, or at ``--start-timeout`` naming those that are not.

The group tests run in process on a virtual clock; the others run real processes (``e2e``).
"""

from __future__ import annotations

import functools
import logging
import os
import re
import signal
import subprocess
import time
from typing import Any

import pytest
import trio

from actors.worker._group import GroupFailed, StartFailed, WorkerGroup
from runtime import Backoff
from tests import workers
from tests.test_cli import ROOT, Lines, python, run
from tests.test_group import EXACT, fake  # noqa: F401 - a fixture

DB_ERROR = "ConnectionRefusedError: cannot reach the database at db:5432"


def _start_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.name == "actors.group" and "failed to start" in r.getMessage()
    ]


# --------------------------------------------------------------------------- in process


async def test_a_group_whose_worker_cannot_start_gives_up_after_its_limit(
    autojump_clock: Any, caplog: pytest.LogCaptureFixture
) -> None:
    group = WorkerGroup(
        "db", workers.BadSetup, 1, "tcp://127.0.0.1:1", in_process=True, restart_backoff=EXACT,
        max_start_failures=3,
    )  # fmt: skip
    with trio.fail_after(60), pytest.raises(GroupFailed) as info:
        await group.run()
    assert trio.current_time() == 3.0  # starts at 0, 1 and 3: the backoff's 1 and 2 s
    assert str(info.value) == f"group db failed: db-0 failed to start 3 times in a row: {DB_ERROR}"
    assert group.failure == info.value.reason
    lines = _start_lines(caplog)
    assert [r.getMessage() for r in lines] == [
        f"group db: db-0 failed to start (1 of 3 in a row): {DB_ERROR}; restarting",
        f"group db: db-0 failed to start (2 of 3 in a row): {DB_ERROR}; restarting",
        f"group db: db-0 failed to start (3 of 3 in a row): {DB_ERROR}; giving up",
    ]
    assert [r.exc_info is not None for r in lines] == [True, False, False]  # the traceback once


async def test_a_worker_that_connected_starts_the_count_again(
    fake: Any,  # noqa: F811 - the fixture imported from test_group
    autojump_clock: Any,
) -> None:
    fake.crash_after = 0.5  # connects, then crashes: a failure of its run, not of its start
    group = WorkerGroup(
        "g", workers.Echo, 1, "tcp://127.0.0.1:1", in_process=True, restart_backoff=EXACT,
        max_start_failures=1,
    )  # fmt: skip
    async with trio.open_nursery() as nursery:
        await nursery.start(group.run)
        await trio.sleep(30)
        [state] = group.states()
        nursery.cancel_scope.cancel()
    assert state.restarts >= 5 and group.failure is None


def test_max_start_failures_must_be_positive_or_none() -> None:
    with pytest.raises(
        ValueError, match="max_start_failures must be a positive int or None, got 0"
    ):
        WorkerGroup("g", workers.Echo, 1, "tcp://127.0.0.1:1", max_start_failures=0)
    assert (
        WorkerGroup(
            "g", workers.Echo, 1, "tcp://127.0.0.1:1", max_start_failures=None
        ).max_start_failures
        is None
    )


# --------------------------------------------------------------------------- processes


@pytest.mark.e2e
async def test_worker_processes_that_cannot_start_are_reported_once_each_and_the_group_gives_up(
    caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    group = WorkerGroup(
        "db", "tests.workers:BadSetup", 2, "tcp://127.0.0.1:1",
        restart_backoff=Backoff(base=0.05, factor=2.0, cap=0.2, jitter=0.0), max_start_failures=2,
    )  # fmt: skip
    with trio.fail_after(30), pytest.raises(GroupFailed) as info:
        await group.run()
    assert re.fullmatch(rf"db-[01] failed to start 2 times in a row: {DB_ERROR}", info.value.reason)
    lines = [r.getMessage() for r in _start_lines(caplog)]
    assert 3 <= len(lines) <= 4  # the other instance failed once or twice meanwhile
    assert all(
        re.fullmatch(
            rf"group db: db-[01] failed to start \([12] of 2 in a row\): {DB_ERROR}; .*",
            line.split("\n")[0],
        )
        for line in lines
    )
    # The traceback once, with the first line: the worker's own frames, no trio internals.
    assert ["Traceback" in line for line in lines] == [True] + [False] * (len(lines) - 1)
    traceback = lines[0].split("\n", 1)[1]
    assert traceback.startswith("Traceback (most recent call last):") and traceback.endswith(
        DB_ERROR
    )
    assert (
        'tests/workers.py", line' in traceback
        and "in setup" in traceback
        and "trio" not in traceback
    )
    assert "Traceback" not in capfd.readouterr().err  # the processes themselves said nothing
    assert group.states() == []  # (stopped)


@pytest.mark.e2e
async def test_a_worker_process_by_hand_that_cannot_start_says_why_once() -> None:
    result = await run(
        "-m", "actors.worker", "--url", "tcp://127.0.0.1:1", "tests.workers:BadSetup"
    )
    err = result.stderr.decode()
    assert result.returncode == 78, err
    assert err.startswith(
        f"tests.workers:BadSetup: failed to start: {DB_ERROR}\nTraceback (most recent call last):"
    )
    assert err.count("Traceback") == 1 and "ExceptionGroup" not in err and "+-+" not in err


# --------------------------------------------------------------------------- the cluster


class Cluster:
    """A ``python -m actors.cluster`` process with both output streams read line by line."""

    def __init__(self, process: trio.Process) -> None:
        assert process.stdout is not None and process.stderr is not None
        self.process = process
        self.out = Lines(process.stdout)
        self.err = Lines(process.stderr)

    async def drain_stderr(self) -> None:  # keep the pipe from filling up
        try:
            await self.err.until(lambda line: False)
        except AssertionError:  # (output ended)
            pass


async def _cluster(nursery: trio.Nursery, *args: str, env: dict[str, str] | None = None) -> Cluster:
    process = await trio.lowlevel.open_process(
        python("-m", "actors.cluster", "--listen", "tcp://127.0.0.1:0", "--drain-grace", "1", *args),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT, env={**os.environ, **(env or {})},
    )  # fmt: skip
    cluster = Cluster(process)
    nursery.start_soon(cluster.drain_stderr)
    return cluster


async def _stop(cluster: Cluster) -> int:
    cluster.process.send_signal(signal.SIGTERM)
    await cluster.out.until(lambda line: line == "cluster stopped")
    return await cluster.process.wait()


def _config(tmp_path: Any, *groups: str) -> str:
    path = tmp_path / "cluster.toml"
    path.write_text("".join(f"[[groups]]\n{group}\n" for group in groups))
    return str(path)


BAD = 'name = "bad"\nworker = "tests.workers:BadSetup"\ninstances = 2\nmax_start_failures = 2'
ECHO = 'name = "echo"\nworker = "tests.workers:Echo"'


@pytest.mark.e2e
async def test_with_fail_fast_a_group_that_cannot_start_stops_the_cluster(tmp_path: Any) -> None:
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            cluster = await _cluster(
                nursery, "--config", _config(tmp_path, BAD, ECHO), "--fail-fast"
            )
            failed = await cluster.out.until(lambda line: line.startswith("group bad failed: "))
            assert re.fullmatch(
                rf"group bad failed: bad-[01] failed to start 2 times in a row: {DB_ERROR}", failed
            )
            await cluster.out.until(lambda line: line == "cluster stopped")
            assert await cluster.process.wait() == 1
    assert not any(line.startswith("cluster ready") for line in cluster.out.seen)
    err = "\n".join(cluster.err.seen)
    assert re.search(
        rf"group bad: bad-[01] failed to start \(1 of 2 in a row\): {DB_ERROR}; restarting", err
    )
    assert err.count("Traceback") == 1 and "ExceptionGroup" not in err


@pytest.mark.e2e
async def test_without_fail_fast_the_other_groups_serve_on(tmp_path: Any) -> None:
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            cluster = await _cluster(nursery, "--config", _config(tmp_path, BAD, ECHO))
            try:
                await cluster.out.until(lambda line: line.startswith("group bad failed: "))
                ready = await cluster.out.until(lambda line: line.startswith("cluster ready"))
                assert ready == "cluster ready: 2 groups, 3 workers (Ctrl-C to stop); failed: bad"
                url = next(
                    line.split()[-1]
                    for line in cluster.out.seen
                    if line.startswith("leader listening on ")
                )
                result = await run("-m", "actors", "submit", "test.echo", '{"n": 7}', "--url", url)
                assert result.returncode == 0, result.stderr.decode()
                assert await _stop(cluster) == 0
            finally:
                cluster.process.kill()


@pytest.mark.e2e
async def test_a_cluster_whose_every_group_failed_stops(tmp_path: Any) -> None:
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            cluster = await _cluster(nursery, "--config", _config(tmp_path, BAD))
            await cluster.out.until(lambda line: line == "every group failed: stopping")
            await cluster.out.until(lambda line: line == "cluster stopped")
            assert await cluster.process.wait() == 1
    assert "cluster ready: 1 group, 2 workers (Ctrl-C to stop); failed: bad" in cluster.out.seen


@pytest.mark.e2e
async def test_cluster_ready_waits_for_the_workers_to_connect() -> None:
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            cluster = await _cluster(
                nursery, "--worker", "tests.workers:SlowSetup=2", env={"TEST_SETUP_SECONDS": "1.5"}
            )
            try:
                await cluster.out.until(lambda line: line.startswith("group slowsetup: "))
                shown = time.monotonic()
                ready = await cluster.out.until(lambda line: line.startswith("cluster ready"))
                assert time.monotonic() - shown >= 1.2
                assert ready == "cluster ready: 1 group, 2 workers (Ctrl-C to stop)"
                url = next(
                    line.split()[-1]
                    for line in cluster.out.seen
                    if line.startswith("leader listening on ")
                )
                result = await run("-m", "actors", "submit", "test.slow_setup", "1", "--url", url)
                assert result.returncode == 0, result.stderr.decode()  # served at once
                assert await _stop(cluster) == 0
            finally:
                cluster.process.kill()


@pytest.mark.e2e
@pytest.mark.parametrize("fail_fast", [False, True])
async def test_cluster_ready_after_the_start_timeout_names_the_groups_not_ready(
    fail_fast: bool,
) -> None:
    args = ["--worker", "tests.workers:SlowSetup", "--start-timeout", "0.5"]
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            cluster = await _cluster(
                nursery,
                *args,
                *(["--fail-fast"] if fail_fast else []),
                env={"TEST_SETUP_SECONDS": "10"},
            )
            try:
                if fail_fast:
                    line = await cluster.out.until(
                        lambda line: line.startswith("group slowsetup not ready")
                    )
                    assert (
                        line
                        == "group slowsetup not ready after 0.5 s: 0 of 1 workers connected; --fail-fast: stopping"
                    )
                    await cluster.out.until(lambda line: line == "cluster stopped")
                    assert await cluster.process.wait() == 1
                else:
                    ready = await cluster.out.until(lambda line: line.startswith("cluster ready"))
                    assert ready == (
                        "cluster ready: 1 group, 1 worker (Ctrl-C to stop); "
                        "not ready after 0.5 s: slowsetup (0 of 1 workers connected)"
                    )
                    assert await _stop(cluster) == 0
            finally:
                cluster.process.kill()


@pytest.mark.e2e
async def test_the_workers_failure_lines_reach_the_clusters_stderr() -> None:
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            cluster = await _cluster(nursery, "--worker", "tests.workers:Flaky")
            try:
                await cluster.out.until(lambda line: line.startswith("cluster ready"))
                url = next(
                    line.split()[-1]
                    for line in cluster.out.seen
                    if line.startswith("leader listening on ")
                )
                result = await run(
                    "-m", "actors", "submit", "test.flaky", '{"fail": true}', "--url", url
                )
                assert result.returncode != 0
                assert await _stop(cluster) == 0
            finally:
                cluster.process.kill()
    err = "\n".join(cluster.err.seen)
    assert re.search(
        r"worker flaky-0: job \S+ \(test.flaky\) failed, attempt 1/\d+: ValueError: asked to fail \(attempt 1\)",
        err,
    )
    assert err.count("Traceback (most recent call last):") == 1  # the first failure only
    assert 'tests/workers.py", line' in err


def test_start_failed_says_the_remote_error() -> None:
    assert str(StartFailed("OSError", "no disk")) == "OSError: no disk"


async def test_a_worker_the_leader_keeps_refusing_says_why_once(
    nursery: trio.Nursery, autojump_clock: Any, caplog: pytest.LogCaptureFixture
) -> None:
    # (the leader answers ``busy`` while over its connection limits: the worker retries,
    # and says why once it lasts, once, not once per attempt, nor never)
    from actors.worker._runner import REFUSED_PATIENCE, run_worker
    from tests.test_reconnect import ScriptedServer, start

    server = ScriptedServer(["busy"] * 8 + ["welcome"])
    url = await start(nursery, server)
    with trio.fail_after(600):
        await nursery.start(functools.partial(run_worker, workers.Echo(), url, name="w-0"))
    assert len(server.hellos) == 9
    refused = [t for t, _ in server.hellos[:8]]
    assert refused[-1] - refused[0] > REFUSED_PATIENCE
    said = [
        r.getMessage()
        for r in caplog.records
        if r.name == "actors.worker" and "refused" in r.getMessage()
    ]
    assert len(said) == 1
    assert re.fullmatch(
        rf"worker w-0: {re.escape(url)} has refused the connection for \d+ s \(busy: 'busy'\);"
        " trying again until it admits it",
        said[0],
    )
    nursery.cancel_scope.cancel()


async def test_a_worker_refused_for_moments_says_nothing(
    nursery: trio.Nursery, autojump_clock: Any, caplog: pytest.LogCaptureFixture
) -> None:
    # (a crowd of workers starting at once is refused for moments: not worth a line each)
    from actors.worker._runner import REFUSED_PATIENCE, run_worker
    from tests.test_reconnect import ScriptedServer, start

    server = ScriptedServer(["busy", "busy"], retry_after=0.25)
    url = await start(nursery, server)
    with trio.fail_after(600):
        await nursery.start(functools.partial(run_worker, workers.Echo(), url, name="w-0"))
    assert server.hellos[-1][0] - server.hellos[0][0] < REFUSED_PATIENCE
    assert not [r for r in caplog.records if "refused" in r.getMessage()]
    nursery.cancel_scope.cancel()
