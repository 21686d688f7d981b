"""The shell's ``enqueue``, ``submit --delay/--at`` and ``dlq list|show|retry|purge``.

The commands run in-process, ``actors.cluster._shell.main([...])`` in a thread (it runs
its own trio loop; off the main thread it takes no signals), against a real leader and an
in-process worker in the test's loop; stdout and stderr are captured. One test runs
``python -m actors`` as a real process. Real time (``e2e``); each test capped.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio

from actors import Client, DeadLettered, Job, Leader, Worker
from actors.cluster._shell import main
from actors.worker import WorkerRunner
from runtime import Backoff

pytestmark = pytest.mark.e2e

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAST_RETRY = Backoff(base=0.01, factor=2.0, cap=0.05, jitter=0.0)


class Mail(Worker):
    """Answers ``{"sent": payload["n"]}``; holds each job until ``gate`` is set (when
    ``hold``); fails with ValueError for payloads with ``"fail"`` while ``failing``."""

    subjects = ["mail.send"]
    concurrency = 8

    def __init__(self) -> None:
        self.gate = trio.Event()
        self.hold = False
        self.failing = True
        self.runs: list[tuple[Any, float]] = []  # (payload, wall-clock time it started)

    async def handle(self, job: Job) -> dict:
        self.runs.append((job.payload, time.time()))
        if self.hold:
            await self.gate.wait()
        if job.payload.get("fail") and self.failing:
            raise ValueError(f"cannot send {job.payload['n']}")
        return {"sent": job.payload["n"]}


@asynccontextmanager
async def cluster(mail: Mail, **leader_kw: Any) -> AsyncIterator[str]:
    leader_kw.setdefault("memory", True)
    leader = Leader(listen=["tcp://127.0.0.1:0"], retry_backoff=FAST_RETRY, **leader_kw)
    async with trio.open_nursery() as nursery:
        [url] = await nursery.start(leader.run)
        await nursery.start(WorkerRunner(mail, url, name="mail-1").run)
        yield url
        nursery.cancel_scope.cancel()


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


# --------------------------------------------------------------------------- enqueue


async def test_enqueue_prints_the_job_id_once_accepted_without_waiting_for_the_job(shell):
    mail = Mail()
    mail.hold = True  # the job cannot finish while the command runs
    with trio.fail_after(15):
        async with cluster(mail) as url:
            status, out, err = await shell("enqueue", "mail.send", '{"n": 1}', "--url", url)
            assert (status, out, err) == (0, out, "")
            [job_id] = out.splitlines()
            assert job_id
            status, out, err = await shell("enqueue", "mail.send", '{"n": 2}', "--job-id", "m-2",
                                           "--url", url)  # fmt: skip
            assert (status, out) == (0, "m-2\n"), err
            async with Client.connect(url) as client:
                mail.gate.set()
                assert await client.result(job_id, wait=True) == {"sent": 1}
                assert await client.result("m-2", wait=True) == {"sent": 2}


async def test_several_jobs_get_numbered_ids_and_a_second_run_enqueues_nothing_twice(
    shell, tmp_path
):
    mail = Mail()
    payloads = tmp_path / "jobs.jsonl"
    payloads.write_text('{"n": 1}\n\n{"n": 2}\n{"n": 3}\n')
    with trio.fail_after(15):
        async with cluster(mail) as url:
            args = ("enqueue", "mail.send", "--file", str(payloads), "--job-id", "batch",
                    "--no-progress", "--url", url)  # fmt: skip
            status, out, err = await shell(*args)
            assert status == 0, err
            assert out == "batch-1\nbatch-2\nbatch-3\n"
            assert err == "3 jobs: 3 enqueued, 0 refused\n"
            async with Client.connect(url) as client:
                for i in (1, 2, 3):
                    assert await client.result(f"batch-{i}", wait=True) == {"sent": i}
            status, out, err = await shell(*args)
            assert (status, out) == (0, "batch-1\nbatch-2\nbatch-3\n"), err
            status, out, err = await shell("enqueue", "mail.send", '{"n": 4}', "--count", "2",
                                           "--no-progress", "--url", url)  # fmt: skip
            assert status == 0 and len(set(out.split())) == 2, err
            async with Client.connect(url) as client:
                for job_id in out.split():
                    assert await client.result(job_id, wait=True) == {"sent": 4}
    assert sorted(payload["n"] for payload, _ in mail.runs) == [1, 2, 3, 4, 4]


async def test_enqueue_with_a_delay_or_at_does_not_run_before_then(shell):
    mail = Mail()
    with trio.fail_after(15):
        async with cluster(mail) as url:
            before = time.time()
            status, out, err = await shell("enqueue", "mail.send", '{"n": 1}', "--delay", "0.3",
                                           "--url", url)  # fmt: skip
            assert status == 0, err
            [delayed] = out.split()
            at = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=0.4)
            text = at.isoformat().replace("+00:00", "Z")
            status, out, err = await shell("enqueue", "mail.send", '{"n": 2}', "--at", text,
                                           "--url", url)  # fmt: skip
            assert status == 0, err
            [scheduled] = out.split()
            async with Client.connect(url) as client:
                assert await client.result(delayed, wait=True) == {"sent": 1}
                assert await client.result(scheduled, wait=True) == {"sent": 2}
    starts = {payload["n"]: when for payload, when in mail.runs}
    assert starts[1] - before >= 0.29
    assert starts[2] >= at.timestamp() - 0.01


async def test_submit_with_a_delay_prints_the_results_after_it(shell):
    mail = Mail()
    with trio.fail_after(15):
        async with cluster(mail) as url:
            started = time.time()
            status, out, err = await shell("submit", "mail.send", '{"n": 3}', "--count", "2",
                                           "--delay", "0.3", "--no-progress", "--url", url)  # fmt: skip
            assert status == 0, err
            assert out == '{"sent": 3}\n{"sent": 3}\n'
            assert time.time() - started >= 0.3
            status, out, err = await shell("submit", "mail.send", '{"n": 4, "fail": true}',
                                           "--delay", "0", "--url", url)  # fmt: skip
            assert status == 1
            assert json.loads(out)["error"]["type"] == "ValueError"
    assert all(when - started >= 0.29 for payload, when in mail.runs if payload["n"] == 3)


async def test_enqueue_to_a_subject_no_worker_serves_says_why(shell):
    with trio.fail_after(15):
        async with cluster(Mail()) as url:
            status, out, err = await shell("enqueue", "mail.sned", '{"n": 1}', "--url", url)
    assert status == 1 and out == ""
    assert err.splitlines()[-1] == (
        "python -m actors: error: no worker serves subject mail.sned (did you mean mail.send?)"
    )


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["enqueue", "a.b", "1", "--at", "2030-01-01T09:00"], "has no UTC offset"),
        (["enqueue", "a.b", "1", "--at", "tomorrow"], "expected an ISO 8601 time"),
        (["enqueue", "a.b", "1", "--delay", "-1"], "--delay: expected a number of seconds >= 0"),
        (["enqueue", "a.b", "1", "--delay", "1e9"], "--delay: at most 31622400 s"),
        (["enqueue", "a.b", "1", "--delay", "1", "--at", "2030-01-01T09:00Z"], "not allowed"),
        (
            ["enqueue", "a.b", "1", "--delay", "5", "--timeout", "2"],
            "must be longer than the delay",
        ),
        (["enqueue", "a.b", "1", "--accept-timeout", "0"], "--accept-timeout: expected"),
        (["enqueue", "a.*", "1"], "invalid subject 'a.*'"),
        (["enqueue", "a.b"], "give either a JSON payload or --file"),
        (["submit", "a.b", "1", "--delay", "40"], "--timeout (30 s) must be longer"),
        (["dlq", "retry"], "give the JOB_ID of a dead letter, or --all"),
        (["dlq", "purge"], "give the JOB_ID of a dead letter, or --all"),
        (["dlq", "purge", "x", "--all"], "give a JOB_ID or --all, not both"),
        (["dlq", "show"], "the following arguments are required: JOB_ID"),
        (["dlq"], "the following arguments are required: ACTION"),
    ],
)
async def test_bad_arguments_exit_2(shell, args, fragment):
    status, out, err = await shell(*args)
    assert status == 2 and out == ""
    assert fragment in err and "Traceback" not in err


# --------------------------------------------------------------------------- dlq


async def make_dead_letters(url: str, *ns: int) -> None:
    async with Client.connect(url) as client:
        for n in ns:
            with pytest.raises(DeadLettered):
                await client.submit("mail.send", {"n": n, "fail": True}, job_id=f"d-{n}")


@pytest.fixture(params=["memory", "journal"])
def leader_kw(request: pytest.FixtureRequest, tmp_path: Any) -> dict[str, Any]:
    if request.param == "memory":
        return {"memory": True}
    return {"memory": False, "data_dir": str(tmp_path / "leader")}


async def test_dlq_list_show_retry_and_purge(shell, leader_kw):
    mail = Mail()
    with trio.fail_after(20):
        async with cluster(mail, max_attempts=2, **leader_kw) as url:
            status, out, err = await shell("dlq", "list", "--url", url)
            assert (status, out, err) == (0, "no dead letters\n", "")
            status, out, err = await shell("dlq", "list", "--json", "--url", url)
            assert (status, json.loads(out)) == (0, [])

            await make_dead_letters(url, 1, 2)
            status, out, err = await shell("dlq", "list", "--url", url)
            assert status == 0, err
            head, *rows = out.splitlines()
            assert head.split() == ["JOB", "ID", "SUBJECT", "ATTEMPTS", "ERROR", "WHEN"]
            assert [row.split()[:3] for row in rows] == [
                ["d-2", "mail.send", "2"],
                ["d-1", "mail.send", "2"],
            ]
            assert "ValueError: cannot send 2" in rows[0]
            today = dt.datetime.now().astimezone().date().isoformat()
            assert today in rows[0] or today in rows[1]  # (local time; midnight may pass)

            status, out, err = await shell("dlq", "list", "--json", "--url", url)
            listed = json.loads(out)
            assert [x["job_id"] for x in listed] == ["d-2", "d-1"]
            assert listed[1]["error_message"] == "cannot send 1"

            status, out, err = await shell("dlq", "show", "d-1", "--url", url)
            assert status == 0, err
            letter = json.loads(out)
            assert letter["job_id"] == "d-1" and letter["attempts"] == 2
            assert letter["payload"] == {"n": 1, "fail": True}
            assert "ValueError: cannot send 1" in letter["traceback"]
            status, out, err = await shell("dlq", "show", "d-9", "--url", url)
            assert status == 1 and out == ""
            assert err.startswith("python -m actors: error: ") and "d-9" in err

            mail.failing = False
            status, out, err = await shell("dlq", "retry", "d-1", "--url", url)
            assert (status, err) == (0, "retried (queued again): dead letter d-1\n")
            async with Client.connect(url) as client:
                assert await client.result("d-1", wait=True) == {"sent": 1}
            status, out, err = await shell("dlq", "retry", "d-1", "--url", url)
            assert (status, err) == (1, "python -m actors: error: no dead letter d-1\n")

            status, out, err = await shell("dlq", "purge", "d-9", "--url", url)
            assert (status, err) == (1, "python -m actors: error: no dead letter d-9\n")
            mail.failing = True
            await make_dead_letters(url, 3)
            status, out, err = await shell("dlq", "purge", "--all", "--url", url)
            assert (status, err) == (0, "purged: 2 dead letters\n")
            status, out, err = await shell("dlq", "list", "--url", url)
            assert out == "no dead letters\n"
            status, out, err = await shell("dlq", "retry", "--all", "--url", url)
            assert (status, err) == (0, "retried (queued again): 0 dead letters\n")


async def test_dlq_retry_all_queues_every_dead_letter_again(shell):
    mail = Mail()
    with trio.fail_after(20):
        async with cluster(mail, max_attempts=1) as url:
            await make_dead_letters(url, 1, 2, 3)
            mail.failing = False
            status, _out, err = await shell("dlq", "retry", "--all", "--url", url)
            assert (status, err) == (0, "retried (queued again): 3 dead letters\n")
            async with Client.connect(url) as client:
                for n in (1, 2, 3):
                    assert await client.result(f"d-{n}", wait=True) == {"sent": n}
                assert await client.dead_letters() == []


async def test_dlq_list_and_show_read_a_stopped_leaders_journal(shell, tmp_path):
    mail = Mail()
    with trio.fail_after(20):
        async with cluster(mail, max_attempts=1, memory=False, data_dir=str(tmp_path)) as url:
            await make_dead_letters(url, 1, 2)
        # The leader is gone: the journal is read directly.
        status, out, err = await shell("dlq", "list", "--data-dir", str(tmp_path))
        assert status == 0, err
        assert "d-1" in out and "d-2" in out and "ValueError: cannot send" in out
        status, out, err = await shell("dlq", "show", "d-2", "--data-dir", str(tmp_path))
        assert status == 0, err
        letter = json.loads(out)
        assert letter["payload"] == {"n": 2, "fail": True}
        assert letter["attempts"] == 1 and "ValueError" in letter["traceback"]
        status, out, err = await shell("dlq", "show", "nope", "--data-dir", str(tmp_path))
        assert status == 1 and "no dead letter nope" in err
        status, out, err = await shell("dlq", "list", "--data-dir", str(tmp_path / "elsewhere"))
        assert status == 1 and "no journal at" in err


async def test_the_real_command_line(tmp_path):
    """``python -m actors dlq list`` and ``enqueue`` as processes (signals, exit codes)."""
    mail = Mail()
    with trio.fail_after(30):
        async with cluster(mail, max_attempts=1) as url:
            await make_dead_letters(url, 5)
            result = await trio.run_process(
                [sys.executable, "-m", "actors", "dlq", "list", "--url", url],
                capture_stdout=True, capture_stderr=True, check=False, cwd=ROOT,
                stdin=subprocess.DEVNULL,
            )  # fmt: skip
            assert result.returncode == 0, result.stderr.decode()
            assert result.stdout.decode().splitlines()[1].split()[:3] == ["d-5", "mail.send", "1"]
            result = await trio.run_process(
                [sys.executable, "-m", "actors", "enqueue", "mail.send", '{"n": 6}', "--job-id",
                 "p-6", "--url", url],
                capture_stdout=True, capture_stderr=True, check=False, cwd=ROOT,
                stdin=subprocess.DEVNULL,
            )  # fmt: skip
            assert (result.returncode, result.stdout) == (0, b"p-6\n"), result.stderr.decode()
            async with Client.connect(url) as client:
                assert await client.result("p-6", wait=True) == {"sent": 6}


async def test_enqueue_gives_up_on_a_full_journal_after_its_accept_timeout(shell, tmp_path):
    """A leader whose journal is over ``max_journal_bytes`` answers ``busy``: the shell says
    why once, retries within ``--accept-timeout``, then counts the job refused (exit 1)."""
    with trio.fail_after(30):
        leader = Leader(listen=["tcp://127.0.0.1:0"], data_dir=str(tmp_path), max_journal_bytes=1)
        async with trio.open_nursery() as nursery:
            [url] = await nursery.start(leader.run)
            started = trio.current_time()
            status, out, err = await shell(
                "enqueue", "mail.send", '{"n": 1}', "--wait-for-worker", "--accept-timeout", "1",
                "--url", url,
            )  # fmt: skip
            assert trio.current_time() - started < 20
            assert status == 1 and out == ""
            assert "max_journal_bytes" in err
            nursery.cancel_scope.cancel()
