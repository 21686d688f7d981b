"""How long a leader takes to come back with 100,000 queued jobs in its journal.

```
. .venv/bin/activate
python bench/bench_recovery.py                      # 100,000 jobs, sync=full, 3 restarts
python bench/bench_recovery.py --jobs 20000 --sync normal --restarts 5
```

1. A leader alone (``python -m actors.cluster`` with no workers, a journal in a fresh data
   directory, its queue limits raised above ``--jobs`` by a ``cluster.toml``) accepts
   ``--jobs`` jobs through ``Client.enqueue`` (``--clients`` connections, ``--in-flight``
   calls each; ``wait_for_worker``: no worker serves the subject, so they all stay
   queued). The enqueue rate is printed too.
2. The leader is SIGKILLed, and started again on the same data directory and port,
   ``--restarts`` times (SIGKILLed again after each measurement). Each time:

   - **listening**: seconds from the spawn of the process until a TCP connection to its
     port is accepted (polled every 2 ms);
   - **ready**: until a ``Client`` connected to it has the answer of ``client.stats()``
     and that answer counts every job (``jobs_active``, all of them waiting);
   - **replay**: what the leader itself logs its recovery took (reading the journal and
     queueing the jobs again);
   - the leader's resident memory once ready.

3. For comparison, the same start measured on an empty data directory (**empty**).

The numbers depend on the machine; compare them within one run.
"""

from __future__ import annotations

import argparse
import itertools
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from actors import Client  # noqa: E402 (after the path is set)
from runtime import Backoff  # noqa: E402

SUBJECT = "bench.recovery"
FAST = Backoff(base=0.01, factor=2.0, cap=0.1, jitter=0.1)
_REPLAY = re.compile(r"in ([0-9.]+) s")


def free_port() -> int:
    """A TCP port free on the loopback now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_config(path: Path, jobs: int) -> None:
    """A cluster.toml whose queue limits let ``jobs`` jobs of one subject and one client
    connection wait (the defaults stop at 100,000 in all, 25,000 per subject)."""
    limit = jobs + 1000
    path.write_text(
        "[leader]\n"
        f"max_queued = {limit}\n"
        f"max_queued_per_subject = {limit}\n"
        f"max_queued_per_client = {limit}\n"
    )


def rss_mib(pid: int) -> float | None:
    """The resident memory of process ``pid`` in MiB (Linux), or None."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


class LeaderProcess:
    """``python -m actors.cluster`` alone, its output in a file (every life)."""

    def __init__(self, argv: list[str], log: Path) -> None:
        self.argv = argv
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0
        self._offset = 0

    def start(self) -> None:
        self._offset = self.log.stat().st_size if self.log.exists() else 0
        with self.log.open("ab") as out:
            self.started_at = time.perf_counter()
            self.process = subprocess.Popen(
                [sys.executable, "-m", "actors.cluster", *self.argv],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=ROOT,
                start_new_session=True,
            )

    def output(self) -> str:
        with self.log.open("rb") as f:
            f.seek(self._offset)
            return f.read().decode(errors="replace")

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def stop(self) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=60)

    def check_alive(self) -> None:
        assert self.process is not None
        if self.process.poll() is not None:
            raise SystemExit(
                f"the leader exited with {self.process.returncode}:\n{self.output()[-3000:]}"
            )


async def wait_listening(leader: LeaderProcess, port: int, timeout: float = 600) -> float:
    """Seconds from the spawn until a connection to ``port`` is accepted."""
    with trio.fail_after(timeout):
        while True:
            try:
                stream = await trio.open_tcp_stream("127.0.0.1", port)
            except OSError:
                leader.check_alive()
                await trio.sleep(0.002)
                continue
            elapsed = time.perf_counter() - leader.started_at
            await stream.aclose()
            return elapsed


async def wait_counted(
    leader: LeaderProcess, url: str, jobs: int, timeout: float = 600
) -> tuple[float, dict[str, Any]]:
    """Seconds from the spawn until ``client.stats()`` counts ``jobs`` active jobs, and
    those statistics."""
    with trio.fail_after(timeout):
        async with Client.connect(url, reconnect_backoff=FAST) as client:
            while True:
                stats = await client.stats()
                if stats["jobs_active"] >= jobs:
                    return time.perf_counter() - leader.started_at, stats
                leader.check_alive()
                await trio.sleep(1.05)  # (statistics: once a second per connection)


async def fill(url: str, jobs: int, clients: int, in_flight: int) -> float:
    """Enqueue ``jobs`` jobs; return the seconds it took."""
    numbers = itertools.count()

    async def one_client(index: int) -> None:
        async with Client.connect(url, name=f"filler-{index}") as client:

            async def loop() -> None:
                while (i := next(numbers)) < jobs:
                    await client.enqueue(SUBJECT, {"n": i}, job_id=f"rec-{i}", wait_for_worker=True)

            async with trio.open_nursery() as nursery:
                for _ in range(in_flight):
                    nursery.start_soon(loop)

    started = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for index in range(clients):
            nursery.start_soon(one_client, index)
    return time.perf_counter() - started


def replay_seconds(output: str) -> float | None:
    """The recovery time the leader logged (``... recovered ... in X s``), if it did."""
    for line in output.splitlines():
        if "recovered" in line:
            match = _REPLAY.search(line)
            if match:
                return float(match.group(1))
    return None


async def measure_start(leader: LeaderProcess, port: int, url: str, jobs: int) -> dict[str, Any]:
    """Start ``leader``; measure until it listens and until its statistics count ``jobs``."""
    leader.start()
    listening = await wait_listening(leader, port)
    ready, stats = await wait_counted(leader, url, jobs)
    assert leader.process is not None
    return {
        "listening": listening,
        "ready": ready,
        "replay": replay_seconds(leader.output()),
        "rss": rss_mib(leader.process.pid),
        "active": stats["jobs_active"],
        "waiting": stats["waiting"],
    }


def show(label: str, m: dict[str, Any]) -> None:
    replay = "-" if m["replay"] is None else f"{m['replay']:.3f}"
    rss = "-" if m["rss"] is None else f"{m['rss']:.0f}"
    print(
        f"{label:<10} {m['active']:>8,} {m['listening']:>10.3f} {m['ready']:>8.3f}"
        f" {replay:>8} {rss:>8}",
        flush=True,
    )


async def main(args: argparse.Namespace) -> None:
    work = Path(tempfile.mkdtemp(prefix="bench-recovery-"))
    data = Path(args.data_dir) if args.data_dir else work / "data"
    config = work / "cluster.toml"
    write_config(config, args.jobs)
    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    base = ["--config", str(config), "--listen", url, "--sync", args.sync]
    leader = LeaderProcess([*base, "--data-dir", str(data)], work / "leader.log")
    empty = LeaderProcess([*base, "--data-dir", str(work / "empty")], work / "empty.log")
    print(f"journal {data / 'journal.sqlite3'} (sync={args.sync}); leader output in {work}")
    if not args.keep:
        print("(removed at the end; --keep keeps it)")
    try:
        # The same start on an empty journal, for comparison.
        print(
            f"{'start':<10} {'jobs':>8} {'listening':>10} {'ready':>8} {'replay':>8} {'RSS MiB':>8}"
        )
        for _ in range(args.restarts):
            show("empty", await measure_start(empty, port, url, 0))
            empty.kill()

        leader.start()
        await wait_listening(leader, port)
        seconds = await fill(url, args.jobs, args.clients, args.in_flight)
        _, stats = await wait_counted(leader, url, args.jobs)
        size = sum(f.stat().st_size for f in data.iterdir() if f.name.startswith("journal"))
        print(
            f"enqueued {args.jobs:,} jobs in {seconds:.2f} s ({args.jobs / seconds:,.0f}/s;"
            f" {args.clients} clients x {args.in_flight} in flight); {stats['jobs_active']:,}"
            f" active; journal files {size / 2**20:.1f} MiB",
            flush=True,
        )
        leader.kill()
        results = []
        for _ in range(args.restarts):
            m = await measure_start(leader, port, url, args.jobs)
            show("recovery", m)
            results.append(m)
            leader.kill()
        if results:
            print(
                f"median of {len(results)}: listening"
                f" {statistics.median(r['listening'] for r in results):.3f} s, ready"
                f" {statistics.median(r['ready'] for r in results):.3f} s with"
                f" {args.jobs:,} queued jobs"
            )
    finally:
        for proc in (leader, empty):
            if proc.process is not None and proc.process.poll() is None:
                proc.process.kill()
                proc.process.wait()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=100_000, help="queued jobs (100,000)")
    parser.add_argument("--sync", choices=("full", "normal"), default="full")
    parser.add_argument("--restarts", type=int, default=3, help="measured restarts (3)")
    parser.add_argument("--clients", type=int, default=4, help="enqueueing clients (4)")
    parser.add_argument("--in-flight", type=int, default=256, help="enqueues at once each")
    parser.add_argument("--data-dir", help="the journal's directory (default: a new one)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    return parser.parse_args(argv)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    trio.run(main, parse_args())
