"""Durability end to end, with real processes (issue 12, "shown, not claimed").

- A whole cluster (``python -m actors.cluster`` and its worker processes) running 3,000
  QoS 1 jobs is SIGKILLed three times at random moments (seeded: ``DURABILITY_SEED``) and
  restarted on the same data directory and port.
- A leader run on its own (a bare ``python -m actors.cluster``) is SIGKILLed three times
  while worker processes of its own (``python -m actors.worker``, never killed) and two
  clients go on: one submits 2,000 jobs and enqueues 1,000 (``Client.enqueue``), the other
  collects the enqueued jobs' outcomes with ``Client.result(..., wait=True)`` from the
  first kill on.
- SIGTERM of a cluster with jobs in flight and 32 queued behind them (the issue's opening
  complaint: the queued ones were dropped): they are still there for a leader started
  alone on the directory, and complete once a worker is back, each run once.

Of the three kills, the first and the last come after 10 to 30 % more of the work each,
the second 0 to 0.3 s after the first restart listens (while workers and clients
reconnect and resend). After each kill, before the restart, the dead leader's journal
is read: every result and every enqueue acknowledgement a client had received is in it
(a leader answers only what it has committed).

At the end: every submit, enqueue and result call returned exactly once, with the right
value; no result reached a call twice (the clients' ``stray_results`` and
``results_received``); every job ran; the journal passes ``PRAGMA integrity_check`` and
holds each job once, done with its result.

Real time and processes (``e2e``); each test is capped with ``fail_after``, and a test that
runs out of time says which jobs got no outcome and shows the processes' output.
"""

from __future__ import annotations

import math
import os
import random
import signal
import socket
import sqlite3
import subprocess
import sys
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import cbor2
import pytest
import trio

from actors import Client
from runtime import Backoff
from tests.data.durable_worker import SUBJECT
from tests.helpers import Tally, wait_until

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parent.parent
WORKER = "tests.data.durable_worker:DurableSquare"
#: The clients' reconnect backoff: a restarted leader is back within a second.
FAST = Backoff(base=0.02, factor=2.0, cap=0.25, jitter=0.1)
#: SIGKILLs per test.
KILLS = 3
#: The seed of the kills' moments (set DURABILITY_SEED to try others).
SEED = int(os.environ.get("DURABILITY_SEED", "1207"))
#: Jobs a client keeps in flight.
IN_FLIGHT = 64
#: Seconds a process gets to say it is ready, and to exit after SIGTERM.
START_TIMEOUT = 15.0
STOP_TIMEOUT = 15.0


def free_port() -> int:
    """A TCP port free on the loopback now (the leader binds it again after each restart)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def square(i: int) -> dict[str, int]:
    """What the worker answers for ``{"n": i}``."""
    return {"n": i, "square": i * i}


async def kill_at_random_moments(
    rng: random.Random,
    proc: Proc,
    progress: Tally,
    total: int,
    kills: list[int],
    *,
    with_workers: bool = False,
    killed: trio.Event | None = None,
    check: Callable[[], None] | None = None,
) -> None:
    """SIGKILL ``proc`` :data:`KILLS` times, starting it again each time: after 10 to 30 %
    more of the ``total`` steps of ``progress`` each time, except the second kill, which
    comes 0 to 0.3 s after the first restart listens (the leader has replayed its journal;
    its workers and clients are reconnecting, the clients resending what they wait for).
    ``kills`` gets the progress at each kill; ``killed`` is set at the first; ``check`` is
    called after each kill, before the restart (the journal is the dead leader's)."""
    at = 0.0
    for kill in range(KILLS):
        at += rng.uniform(0.1, 0.3)
        if kill == 1:
            await trio.sleep(rng.uniform(0.0, 0.3))
        else:
            await progress.reach(int(at * total))
            await trio.sleep(rng.uniform(0.0, 0.05))
        await proc.kill(with_workers=with_workers)
        kills.append(progress.value)
        if killed is not None:
            killed.set()
        if check is not None:
            check()
        await proc.start(ready="leader listening on")


def worker_processes_of(parent: int) -> list[int]:
    """The worker processes a cluster started (they run in sessions of their own, so the
    cluster's process group does not hold them; their command line names the cluster)."""
    marker = f"\0--parent-pid\0{parent}\0".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        if marker in b"\0" + cmdline:
            found.append(int(entry))
    return found


class Proc:
    """A ``python -m ...`` process of the test, in a session of its own, started again as
    often as the test asks; its output (stdout and stderr, every life) goes to one file."""

    def __init__(self, argv: list[str], log: Path) -> None:
        self.argv = argv
        self.log = log
        self.process: trio.Process | None = None
        self.pids: list[int] = []  # one per life
        self._offset = 0

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    async def start(self, ready: str | None = None) -> None:
        """Start a new life; with ``ready``, wait until its output has a line containing
        ``ready``."""
        self._offset = self.log.stat().st_size if self.log.exists() else 0
        with self.log.open("ab") as out:
            self.process = await trio.lowlevel.open_process(
                [sys.executable, *self.argv],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=ROOT,
                start_new_session=True,
            )
        self.pids.append(self.process.pid)
        if ready is not None:
            await self.wait_for(ready)

    def output(self) -> str:
        """What the current life wrote so far."""
        if not self.log.exists():
            return ""
        with self.log.open("rb") as f:
            f.seek(self._offset)
            return f.read().decode(errors="replace")

    async def wait_for(self, text: str, timeout: float = START_TIMEOUT) -> None:
        def seen() -> bool:
            if text in self.output():
                return True
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(
                    f"{self.argv} exited with {self.process.returncode} before saying"
                    f" {text!r}:\n{self.output()}"
                )
            return False

        await wait_until(seen, timeout=timeout, interval=0.02, what=f"{text!r} in {self.log}")

    async def kill(self, *, with_workers: bool = False) -> None:
        """SIGKILL this life (and, ``with_workers``, the worker processes it started, right
        after it: then it can start no more) and reap it."""
        assert self.process is not None
        os.kill(self.pid, signal.SIGKILL)
        if with_workers:
            for pid in worker_processes_of(self.pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        with trio.fail_after(STOP_TIMEOUT):
            assert await self.process.wait() == -signal.SIGKILL

    async def stop(self, signum: int = signal.SIGTERM) -> int:
        """Send ``signum`` and return the exit status."""
        assert self.process is not None
        self.process.send_signal(signum)
        with trio.fail_after(STOP_TIMEOUT):
            return await self.process.wait()

    def cleanup(self) -> None:
        """Kill whatever is left of it (the test failed)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
        for pid in self.pids:
            for child in worker_processes_of(pid):
                try:
                    os.kill(child, signal.SIGKILL)
                except ProcessLookupError:
                    pass


@contextmanager
def explained(seconds: float, missing: Any, *procs: Proc) -> Iterator[None]:
    """``trio.fail_after(seconds)``, but running out of time fails with what is missing
    (``missing()``) and the tail of each process's output."""
    try:
        with trio.fail_after(seconds):
            yield
    except trio.TooSlowError:
        tails = "\n".join(
            f"--- {proc.log.name} (last life):\n{proc.output()[-3000:]}" for proc in procs
        )
        raise AssertionError(
            f"out of time after {seconds} s; missing: {missing()}\n{tails}"
        ) from None
    finally:
        for proc in procs:
            proc.cleanup()


def runs_of(log: Path) -> Counter[str]:
    """How often each job started on a worker (from the workers' run log)."""
    if not log.exists():
        return Counter()
    return Counter(line.split()[0] for line in log.read_text().splitlines())


def read_journal(data_dir: Path) -> tuple[dict[str, tuple[Any, ...]], int]:
    """The jobs in the journal of a leader that is not running (stopped, or killed: then
    read with its write-ahead log, read-only), after ``PRAGMA integrity_check`` said ok:
    ``(state, ok, result, finished_at)`` by job id, and the number of dead letters."""
    path = data_dir / "journal.sqlite3"
    assert path.exists(), f"no journal at {path}"
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        rows = db.execute("SELECT job_id, state, ok, result, finished_at FROM jobs").fetchall()
        dead = db.execute("SELECT count(*) FROM dead_letters").fetchone()[0]
    finally:
        db.close()
    jobs: dict[str, tuple[Any, ...]] = {}
    for job_id, state, ok, result, finished_at in rows:
        assert job_id not in jobs, f"job {job_id} has two rows"
        value = cbor2.loads(result) if isinstance(result, bytes) else result
        jobs[job_id] = (state, ok, value, finished_at)
    return jobs, dead


def check_finished(jobs: dict[str, tuple[Any, ...]], expected: dict[str, Any]) -> None:
    """Every job of ``expected`` (job id -> result) is in ``jobs`` (see
    :func:`read_journal`), done with that result."""
    missing = sorted(set(expected) - set(jobs))
    assert not missing, f"{len(missing)} jobs not in the journal, e.g. {missing[:5]}"
    wrong = [
        (job_id, jobs[job_id])
        for job_id, want in expected.items()
        if jobs[job_id][:3] != ("done", 1, want) or jobs[job_id][3] is None
    ]
    assert not wrong, f"{len(wrong)} jobs not finished with their result, e.g. {wrong[:3]}"


def check_journal(data_dir: Path, expected: dict[str, Any]) -> None:
    """The journal of a stopped leader: ``PRAGMA integrity_check`` is ok, and it holds
    every job of ``expected`` (job id -> result) once, finished with that result, and no
    other; no dead letters."""
    jobs, dead = read_journal(data_dir)
    check_finished(jobs, expected)
    assert set(jobs) == set(expected), f"unexpected rows: {sorted(set(jobs) - set(expected))[:5]}"
    assert dead == 0


def check_outcomes(
    outcomes: dict[str, list[Any]], expected: dict[str, Any], what: str = "submit"
) -> None:
    """Each call got exactly one outcome, the right one."""
    missing = sorted(set(expected) - set(outcomes))
    assert not missing, f"{len(missing)} {what} calls never returned, e.g. {missing[:5]}"
    twice = {k: v for k, v in outcomes.items() if len(v) != 1}
    assert not twice, f"{what} calls that returned more than once: {list(twice.items())[:3]}"
    wrong = {k: v[0] for k, v in outcomes.items() if v[0] != expected[k]}
    assert not wrong, f"{what} calls with a wrong outcome: {list(wrong.items())[:3]}"
    assert set(outcomes) == set(expected)


# --------------------------------------------------------------------------- whole cluster

CLUSTER_JOBS = 3000


@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="needs /proc (Linux)")
async def test_the_whole_cluster_sigkilled_at_random_moments_loses_and_repeats_nothing(
    tmp_path: Path,
) -> None:
    rng = random.Random(SEED)
    url = f"tcp://127.0.0.1:{free_port()}"
    data = tmp_path / "data"
    runs = tmp_path / "runs.log"
    cluster = Proc(
        ["-m", "actors.cluster", "--listen", url, "--data-dir", str(data),
         "--worker", f"{WORKER}=2", "--drain-grace", "5"],
        tmp_path / "cluster.log",
    )  # fmt: skip
    expected = {f"job-{i}": square(i) for i in range(CLUSTER_JOBS)}
    outcomes: dict[str, list[Any]] = defaultdict(list)
    finished = Tally()
    kills: list[int] = []  # results in when each kill came

    def missing() -> str:
        left = sorted(set(expected) - set(outcomes), key=lambda j: int(j[4:]))
        return f"{len(left)} submits (seed {SEED}, kills after {kills}), e.g. {left[:10]}"

    with explained(50, missing, cluster):
        await cluster.start(ready="cluster ready")
        async with Client.connect(url, reconnect_backoff=FAST) as client:
            slots = trio.Semaphore(IN_FLIGHT)

            def results_were_committed() -> None:
                # Every result a client has seen was in the journal before it was sent.
                check_finished(read_journal(data)[0], {j: expected[j] for j in outcomes})

            async def one(i: int) -> None:
                async with slots:
                    outcome = await client.submit(
                        SUBJECT, {"n": i, "log": str(runs)}, job_id=f"job-{i}",
                        wait_for_worker=True,
                    )  # fmt: skip
                outcomes[f"job-{i}"].append(outcome)
                finished.add()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(
                    partial(
                        kill_at_random_moments, rng, cluster, finished, CLUSTER_JOBS, kills,
                        with_workers=True, check=results_were_committed,
                    )
                )  # fmt: skip
                for i in range(CLUSTER_JOBS):
                    nursery.start_soon(one, i)
            assert len(kills) == KILLS and kills[-1] < CLUSTER_JOBS
            check_outcomes(outcomes, expected)
            # No Result frame reached a call twice, nor one that was not waiting.
            assert client.stray_results == 0
            assert client.results_received == CLUSTER_JOBS
            assert 2 <= client.connects <= KILLS + 1  # (a short life may see no client)
        assert await cluster.stop() == 0
        assert "cluster stopped" in cluster.output()
    # The killed lives' workers died with them; the last ones drained and exited.
    assert not [p for pid in cluster.pids for p in worker_processes_of(pid)]
    ran = runs_of(runs)
    assert set(ran) == set(expected)  # every job ran, some twice (redelivered after a kill)
    check_journal(data, expected)
    print(f"killed after {kills} of {CLUSTER_JOBS} results; {sum(ran.values())} runs")


# --------------------------------------------------------------------------- leader alone

SUBMITTED = 2000
ENQUEUED = 1000


async def test_the_leader_alone_sigkilled_while_workers_and_two_clients_go_on(
    tmp_path: Path,
) -> None:
    rng = random.Random(SEED + 1)
    url = f"tcp://127.0.0.1:{free_port()}"
    data = tmp_path / "data"
    runs = tmp_path / "runs.log"
    leader = Proc(
        ["-m", "actors.cluster", "--listen", url, "--data-dir", str(data)],
        tmp_path / "leader.log",
    )
    workers = [
        Proc(["-m", "actors.worker", "--url", url, "--name", f"w{i}", WORKER],
             tmp_path / f"worker-{i}.log")
        for i in range(2)
    ]  # fmt: skip
    submit_expected = {f"sub-{i}": square(i) for i in range(SUBMITTED)}
    enqueue_expected = {f"enq-{i}": square(10_000 + i) for i in range(ENQUEUED)}
    expected = submit_expected | enqueue_expected
    submitted: dict[str, list[Any]] = defaultdict(list)
    enqueued: dict[str, list[Any]] = defaultdict(list)
    collected: dict[str, list[Any]] = defaultdict(list)
    progress = Tally()  # submit results + enqueue acks + collected results
    total = SUBMITTED + 2 * ENQUEUED
    submits_done = Tally()
    first_kill = trio.Event()
    kills: list[int] = []

    def missing() -> str:
        return (
            f"seed {SEED}, kills after {kills} of {total} steps;"
            f" submits {len(submitted)}/{SUBMITTED}, enqueues {len(enqueued)}/{ENQUEUED}, collected {len(collected)}/{ENQUEUED};"
            f" e.g. submits {sorted(set(submit_expected) - set(submitted))[:5]}, collected"
            f" {sorted(set(enqueue_expected) - set(collected))[:5]}"
        )

    with explained(50, missing, leader, *workers):
        await leader.start(ready="cluster ready")
        for i, worker in enumerate(workers):
            await worker.start(ready=f"w{i}: connected to")
        send_ids, receive_ids = trio.open_memory_channel[str](math.inf)
        async with (
            Client.connect(url, reconnect_backoff=FAST, name="producer") as producer,
            Client.connect(url, reconnect_backoff=FAST, name="collector") as collector,
        ):
            submit_slots = trio.Semaphore(IN_FLIGHT - 16)

            def answers_were_committed() -> None:
                # Every result and every acceptance a client has seen was in the journal
                # before it was sent.
                jobs, _ = read_journal(data)
                seen = submitted.keys() | collected.keys()
                check_finished(jobs, {j: expected[j] for j in seen})
                missing = sorted(enqueued.keys() - jobs.keys())
                assert not missing, f"enqueues acknowledged, not journalled: {missing[:5]}"

            enqueue_slots = trio.Semaphore(16)

            async def submit_one(i: int) -> None:
                async with submit_slots:
                    outcome = await producer.submit(
                        SUBJECT, {"n": i, "log": str(runs)}, job_id=f"sub-{i}",
                        wait_for_worker=True,
                    )  # fmt: skip
                submitted[f"sub-{i}"].append(outcome)
                submits_done.add()
                progress.add()

            async def enqueue_one(i: int) -> None:
                # Spread over the run, so that some are sent while the leader is down.
                await submits_done.reach(i * SUBMITTED // ENQUEUED)
                async with enqueue_slots:
                    job_id = await producer.enqueue(
                        SUBJECT, {"n": 10_000 + i, "log": str(runs)}, job_id=f"enq-{i}",
                        wait_for_worker=True,
                    )  # fmt: skip
                enqueued[f"enq-{i}"].append(job_id)
                progress.add()
                send_ids.send_nowait(job_id)

            async def collect() -> None:
                # The other client waits for the outcomes, from the first kill on.
                await first_kill.wait()
                slots = trio.Semaphore(IN_FLIGHT)

                async def one(job_id: str) -> None:
                    async with slots:
                        outcome = await collector.result(job_id, wait=True)
                    collected[job_id].append(outcome)
                    progress.add()

                async with trio.open_nursery() as nursery:
                    for _ in range(ENQUEUED):
                        nursery.start_soon(one, await receive_ids.receive())

            async with trio.open_nursery() as nursery:
                nursery.start_soon(
                    partial(
                        kill_at_random_moments, rng, leader, progress, total, kills,
                        killed=first_kill, check=answers_were_committed,
                    )
                )  # fmt: skip
                nursery.start_soon(collect)
                for i in range(SUBMITTED):
                    nursery.start_soon(submit_one, i)
                for i in range(ENQUEUED):
                    nursery.start_soon(enqueue_one, i)
            assert len(kills) == KILLS
            check_outcomes(submitted, submit_expected)
            check_outcomes(enqueued, {job_id: job_id for job_id in enqueue_expected}, "enqueue")
            check_outcomes(collected, enqueue_expected, "result")
            for client in (producer, collector):
                assert client.stray_results == 0
                assert 2 <= client.connects <= KILLS + 1  # (a short life may see no client)
            assert producer.results_received == SUBMITTED
            assert collector.results_received == ENQUEUED
        # The worker processes were never killed: the same ones served every life.
        for worker in workers:
            assert worker.process is not None and worker.process.poll() is None
            assert len(worker.pids) == 1
            assert await worker.stop() == 0
        assert await leader.stop() == 0
    ran = runs_of(runs)
    assert set(ran) == set(expected)
    check_journal(data, expected)
    print(f"killed after {kills} of {total} steps; {sum(ran.values())} runs of {len(ran)} jobs")


# --------------------------------------------------------------------------- SIGTERM

IN_HAND = 8  # the worker's concurrency
QUEUED = 32


async def test_sigterm_drains_the_jobs_in_flight_and_keeps_the_queued_ones(
    tmp_path: Path,
) -> None:
    """The issue's opening complaint: SIGTERM on a cluster with 32 jobs queued behind the 8
    in flight delivered the 8 and dropped the 32."""
    url = f"tcp://127.0.0.1:{free_port()}"
    data = tmp_path / "data"
    runs = tmp_path / "runs.log"
    base = ["-m", "actors.cluster", "--listen", url, "--data-dir", str(data)]
    cluster = Proc([*base, "--worker", f"{WORKER}=1", "--drain-grace", "10"], tmp_path / "c.log")
    bare = Proc(base, tmp_path / "bare.log")
    expected = {f"job-{i}": square(i) for i in range(IN_HAND + QUEUED)}
    outcomes: dict[str, list[Any]] = defaultdict(list)

    def missing() -> str:
        return str(sorted(set(expected) - set(outcomes), key=lambda j: int(j[4:])))

    with explained(40, missing, cluster, bare):
        await cluster.start(ready="cluster ready")
        async with Client.connect(url, reconnect_backoff=FAST) as client, trio.open_nursery() as n:

            async def one(i: int, seconds: float) -> None:
                payload = {"n": i, "log": str(runs), "sleep": seconds}
                outcome = await client.submit(
                    SUBJECT, payload, job_id=f"job-{i}", wait_for_worker=True
                )
                outcomes[f"job-{i}"].append(outcome)

            for i in range(IN_HAND):  # these fill the worker for a second
                n.start_soon(one, i, 1.0)
            await wait_until(lambda: len(runs_of(runs)) == IN_HAND, timeout=10, what="8 running")
            for i in range(IN_HAND, IN_HAND + QUEUED):  # and these queue behind them
                n.start_soon(one, i, 0.0)
            async with Client.connect(url) as observer:

                async def all_accepted() -> bool:
                    return (await observer.stats())["jobs_active"] == IN_HAND + QUEUED

                # (the leader answers statistics once a second on a connection)
                await wait_until(all_accepted, timeout=5, interval=1.1)
            assert await cluster.stop() == 0  # drains: the 8 in flight finish
            assert "cluster stopped" in cluster.output()
            ran = runs_of(runs)
            assert set(ran) >= {f"job-{i}" for i in range(IN_HAND)}

            # A leader alone on the same directory: the queued ones are there (all 32, unless
            # the worker took some while it drained), and none ran twice.
            await bare.start(ready="cluster ready")
            async with Client.connect(url) as observer:
                stats = await observer.stats()
            assert stats["jobs_active"] == IN_HAND + QUEUED - len(ran)
            assert await bare.stop() == 0

            # With a worker again, every one of them completes.
            await cluster.start(ready="cluster ready")
        check_outcomes(outcomes, expected)
        assert client.stray_results == 0
        async with Client.connect(url) as late:  # and any client can ask for them
            for job_id, result in expected.items():
                assert await late.result(job_id) == result
        assert await cluster.stop() == 0
    assert runs_of(runs) == Counter(expected.keys())  # each ran once: none was redelivered
    check_journal(data, expected)
    print(f"{len(ran)} ran before the SIGTERM stop, {IN_HAND + QUEUED - len(ran)} after")
