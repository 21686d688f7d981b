"""Scale-out benchmark: leaders sharing one NATS JetStream job store, against one leader.

::

    python bench/bench_scaleout.py                  # 20,000 jobs per variant, every variant
    python bench/bench_scaleout.py --repeat 3       # the median of 3 runs of each
    python bench/bench_scaleout.py --quick          # a smoke run: 1,000 jobs, under a minute
    python bench/bench_scaleout.py --variants x1,x2,x3 --json /tmp/scaleout.json

No-op QoS 1 jobs (``bench.noop:Noop``) over loopback, each variant in fresh processes:

- **memory**: ``python -m actors.cluster --memory`` with ``--workers`` worker processes;
- **sqlite**: the same with a fresh ``--data-dir`` (its journal, sync full: the default);
- **jetstream x1**, **x2**, **x3**: one, two or three clusters started with ``--store
  NATS_URL --store-prefix P`` (a fresh prefix per run; its streams ``P_JOBS``, ``P_DEAD``
  and its bucket ``p_results`` are deleted at the end of the run), each with its
  ``--workers`` worker processes: every leader serves the jobs of every other;
- **nats-py js**: the nats-py JetStream work-queue baseline of ``bench/bench_durable.py``
  (``bench/_nats_side.py js-worker``, ``--workers`` of them, and ``js-client``).

Our variants get one client process per leader (``bench/_submit_proc.py``, connected to
its own leader), each running ``--inflight`` trio tasks that loop ``await
client.submit("bench.noop", None, qos=1)``; the ``--jobs`` are split evenly between them.
So x2 has twice the jobs in flight of x1: each leader gets the load x1 gets. The baseline's
client runs ``--inflight`` asyncio tasks (publish, PubAck, then the result).

Every client warms up (``--warmup`` jobs, not measured), then all start at once (SIGUSR1).
Per variant: jobs/s (every job, from the first submit to the last result), p50 and p99
latency (submit to result, over every client's jobs), and the CPU time per job of the
leaders, the nats-server on the store's port (found by its command line in ``/proc``),
the workers and the clients, and the cores the machine spent on anything else meanwhile
(``others``, from ``/proc/stat``: near 0 on a quiet machine). Then the ratios of each of ours to nats-py js, and the
scaling of x1 / x2 / x3 (jobs/s, and jobs/s per leader). See ``bench/README.md``.

Every process is in its own process group and stopped on exit (normal, error, Ctrl-C or
SIGTERM); the workers of a cluster exit with it. Streams and buckets of the run are
deleted in a ``finally``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(ROOT) not in sys.path:  # run as a script: make the repository importable
    sys.path.insert(0, str(ROOT))

from bench.bench_jobs import (  # noqa: E402 (after the sys.path line above)
    NATS_DEFAULT_TIMEOUT,
    STOP_TIMEOUT,
    BenchError,
    CpuMeter,
    Processes,
    _check_loopback,
    _log_dir,
    _raise_system_exit,
    median_run,
    nats_reachable,
    ratios,
    summarize,
)

DEFAULT_NATS_URL = "nats://127.0.0.1:4222"
#: Variant keys (``--variants``), in the order of the runs and of the table, with the
#: number of leaders of each (0: the nats-py baseline, no leader).
VARIANTS: dict[str, int] = {"memory": 1, "sqlite": 1, "x1": 1, "x2": 2, "x3": 3, "nats": 0}
#: The names the table shows.
TITLES = {
    "memory": "memory",
    "sqlite": "sqlite",
    "x1": "jetstream x1",
    "x2": "jetstream x2",
    "x3": "jetstream x3",
    "nats": "nats-py js",
}
#: The variants that need the NATS server.
NEEDS_NATS = ("x1", "x2", "x3", "nats")
#: Seconds a cluster gets to say ``cluster ready`` (python start-up of leader and workers
#: on a busy 2-core machine).
READY_TIMEOUT = 60.0
#: Seconds a client's warm-up may take at most (a few at ~1,000 jobs/s: more means a
#: leader is stuck, and waiting for ``--deadline`` would only hide it).
WARMUP_TIMEOUT = 120.0
#: What ``--quick`` sets.
QUICK = {"jobs": 1_000, "warmup": 200, "deadline": 40.0}
#: Seconds the baseline's client pauses after its warm-up (so that the CPU meters, started
#: when it says so, run before its measured phase does).
JS_SETTLE = 0.3


# ---------------------------------------------------------------------- processes


def nats_server_pid(port: int) -> int | None:
    """The pid of the local ``nats-server`` listening on ``port`` (from its command line in
    ``/proc``; one with no port option counts as the default 4222), or None.
    """
    exact, default = [], []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if (proc / "comm").read_text().strip() != "nats-server":
                continue
            argv = [
                a.decode(errors="replace") for a in (proc / "cmdline").read_bytes().split(b"\0")
            ]
        except OSError:
            continue
        ports = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a in ("-p", "--port", "-port")] + [
            a.split("=", 1)[1] for a in argv if a.startswith(("--port=", "-port=", "-p="))
        ]
        if str(port) in ports:
            exact.append(int(proc.name))
        elif not ports and "-c" not in argv and "--config" not in argv:
            default.append(int(proc.name))
    if len(exact) == 1:
        return exact[0]
    if not exact and port == 4222 and len(default) == 1:
        return default[0]
    return None


def children_of(pid: int, marker: str) -> list[int]:
    """The pids of ``pid``'s child processes whose command line contains ``marker``."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text()
            if int(stat.rsplit(")", 1)[1].split()[1]) != pid:  # state, ppid, ...
                continue
            if marker in (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(
                errors="replace"
            ):
                found.append(int(proc.name))
        except (OSError, ValueError, IndexError):
            continue
    return sorted(found)


class MachineMeter:
    """CPU seconds the whole machine spends busy (``/proc/stat``) between :meth:`start` and
    :meth:`stop`, and the wall time: what else ran while a run was measured.
    """

    def __init__(self) -> None:
        self.before = (0.0, 0.0)

    @staticmethod
    def _read() -> tuple[float, float]:
        try:
            fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
        except OSError:
            return math.nan, time.monotonic()
        # user nice system idle iowait irq softirq steal: all but idle and iowait are busy
        ticks = [int(f) for f in fields[:8]]
        busy = sum(ticks) - ticks[3] - ticks[4]
        return busy / os.sysconf("SC_CLK_TCK"), time.monotonic()

    def start(self) -> None:
        """Take the first reading."""
        self.before = self._read()

    def stop(self) -> tuple[float, float]:
        """Busy CPU seconds of the machine and wall seconds since :meth:`start`."""
        busy, wall = self._read()
        return busy - self.before[0], wall - self.before[1]


def others_cores(cpu: dict[str, float], machine: tuple[float, float]) -> float:
    """Cores kept busy by processes the run did not measure (the machine's busy time minus
    the measured processes', over the wall time)."""
    busy, wall = machine
    return max(0.0, busy - sum(cpu.values())) / wall if wall > 0 else math.nan


def stop_together(procs: Processes, names: Iterable[str]) -> None:
    """SIGINT every one of ``names`` first, then wait for each (:meth:`Processes.stop`).

    One SIGINT each: a cluster drains its workers on the first, and kills them on a second.
    """
    names = [name for name in names if name in procs.procs]
    for name in names:
        proc = procs.procs[name]
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGINT)
    deadline = time.monotonic() + STOP_TIMEOUT
    for name in names:
        with contextlib.suppress(subprocess.TimeoutExpired):
            procs.procs[name].wait(max(0.0, deadline - time.monotonic()))
        procs.stop(name)  # (SIGKILLs its group if it is still running)


# ---------------------------------------------------------------------- NATS objects


async def _delete_nats(url: str, streams: Sequence[str], buckets: Sequence[str]) -> list[str]:
    import nats
    from nats.js.errors import NotFoundError

    nc = await nats.connect(url, name="bench-scaleout-cleanup", allow_reconnect=False)
    deleted = []
    try:
        js = nc.jetstream()
        for stream in streams:
            with contextlib.suppress(NotFoundError):
                await js.delete_stream(stream)
                deleted.append(stream)
        for bucket in buckets:
            with contextlib.suppress(NotFoundError):
                await js.delete_key_value(bucket)
                deleted.append(f"KV_{bucket}")
    finally:
        await nc.close()
    return deleted


class NatsLeftovers:
    """What the runs created on the NATS server, to delete once a run is over (and again,
    for whatever is left, when the benchmark ends, however it ends).
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self.streams: list[str] = []
        self.buckets: list[str] = []

    def add_store(self, prefix: str) -> None:
        """The streams and the bucket of a store with ``prefix``."""
        self.streams += [f"{prefix.upper()}_JOBS", f"{prefix.upper()}_DEAD"]
        self.buckets.append(f"{prefix}_results")

    def add_stream(self, stream: str) -> None:
        """A stream of the baseline."""
        self.streams.append(stream)

    def delete(self) -> list[str]:
        """Delete everything recorded (those not found are skipped); what was deleted."""
        import asyncio

        if not (self.streams or self.buckets):
            return []
        deleted = asyncio.run(_delete_nats(self.url, self.streams, self.buckets))
        self.streams.clear()
        self.buckets.clear()
        return deleted


# ---------------------------------------------------------------------- runs


class Runner:
    """Runs the variants; each run starts and stops its own processes."""

    def __init__(self, args: argparse.Namespace, procs: Processes) -> None:
        self.args = args
        self.procs = procs
        self.leftovers = NatsLeftovers(args.nats_url)
        port = urlsplit(args.nats_url).port or 4222
        self.nats_server = nats_server_pid(port)
        self.warmup_timeout = min(args.deadline, WARMUP_TIMEOUT)
        #: The machine's busy CPU seconds and the wall seconds of the last measured phase.
        self.machine = (math.nan, math.nan)

    def run(self, variant: str, number: int) -> dict[str, Any]:
        """One run of ``variant``; its row."""
        try:
            row = self._run_nats(number) if variant == "nats" else self._run_ours(variant, number)
        finally:
            deleted = self.leftovers.delete()
        row["system"] = TITLES[variant]
        row["variant"] = variant
        row["nats_deleted"] = deleted
        return row

    def _cpu_pids(self) -> dict[str, int]:
        return {"nats-server": self.nats_server} if self.nats_server is not None else {}

    # ------------------------------------------------------------ ours

    def _run_ours(self, variant: str, number: int) -> dict[str, Any]:
        args, procs = self.args, self.procs
        leaders = VARIANTS[variant]
        tmp = Path(tempfile.mkdtemp(prefix=f"bench-scaleout-{variant}-", dir=args.data_root))
        storage = ["--memory"]
        prefix = None
        if variant == "sqlite":
            storage = ["--data-dir", str(tmp / "data")]
        elif variant != "memory":
            prefix = "b" + secrets.token_hex(6)
            storage = ["--store", args.nats_url, "--store-prefix", prefix]
            self.leftovers.add_store(prefix)
        clusters = [f"cluster-{variant}-{number}-{i}" for i in range(1, leaders + 1)]
        clients = [f"client-{variant}-{number}-{i}" for i in range(1, leaders + 1)]
        try:
            argv = ["-m", "actors.cluster", "--listen", "tcp://127.0.0.1:0", "--fail-fast",
                    "--start-timeout", str(READY_TIMEOUT / 2),
                    "--worker", f"bench.noop:Noop={args.workers}", *storage]  # fmt: skip
            for name in clusters:
                procs.start(name, [sys.executable, *argv])
            urls, pids = [], self._cpu_pids()
            for i, name in enumerate(clusters, 1):
                urls.append(self._wait_ready(name, variant, tmp))
                pid = procs.procs[name].pid
                pids[f"leader-{i}"] = pid
                workers = children_of(pid, "actors.worker")
                if len(workers) != args.workers:
                    raise BenchError(f"{name}: {len(workers)} worker processes, not {args.workers}")
                for j, worker in enumerate(workers, 1):
                    pids[f"worker-{i}.{j}"] = worker
            shares = [args.jobs // leaders + (i < args.jobs % leaders) for i in range(leaders)]
            for name, url, jobs in zip(clients, urls, shares, strict=True):
                procs.start(name, [sys.executable, str(HERE / "_submit_proc.py"), "--url", url,
                                   "--jobs", str(jobs), "--inflight", str(args.inflight),
                                   "--warmup", str(args.warmup),
                                   "--deadline", str(args.deadline)])  # fmt: skip
            results, cpu = self._measure(clients, clusters, pids)
        finally:
            stop_together(procs, clients)
            stop_together(procs, clusters)
            shutil.rmtree(tmp, ignore_errors=True)
        start = min(r["start"] for r in results)
        end = max(r["end"] for r in results)
        latencies = [x for r in results for x in r["latencies"]]
        for i, result in enumerate(results, 1):
            cpu[f"client-{i}"] = result["cpu_seconds"]
        row = summarize(TITLES[variant], end - start, latencies, args.jobs, cpu)
        row["leaders"] = leaders
        row["others_cores"] = others_cores(cpu, self.machine)
        row["prefix"] = prefix
        row["done_per_leader"] = [self._done(name) for name in clusters]
        return row

    def _wait_ready(self, name: str, variant: str, tmp: Path) -> str:
        """Wait for ``cluster ready``; check where it keeps its jobs; its URL."""
        procs = self.procs
        ready = procs.wait_for(name, "cluster ready", timeout=READY_TIMEOUT)
        if "not ready" in ready:
            raise BenchError(f"{name}: {ready}\n{procs.tail(name)}")
        out = (procs.log_dir / f"{name}.out").read_text(errors="replace")
        url = procs.wait_for(name, "leader listening on ").split("leader listening on ", 1)[1]
        url = url.strip()
        _check_loopback(url, name)
        expected = {
            "memory": "journal: none (--memory)",
            "sqlite": f"journal: {tmp / 'data'}",
        }.get(variant, "store: NATS JetStream")
        if expected not in out or (variant == "sqlite" and "(sync=full)" not in out):
            raise BenchError(f"{name}: does not keep its jobs as {variant} should:\n{out}")
        return url

    def _done(self, cluster: str) -> int | None:
        """The jobs its workers ran (warm-up included), from the statistics it printed when
        it stopped; None if it printed none."""
        path = self.procs.log_dir / f"{cluster}.out"
        with contextlib.suppress(OSError):
            for line in path.read_text(errors="replace").splitlines():
                match = re.search(r"group noop: .*?(\d+) done", line)
                if match:
                    return int(match.group(1))
        return None

    def _measure(
        self, clients: list[str], watched: list[str], pids: dict[str, int]
    ) -> tuple[list[dict[str, Any]], dict[str, float]]:
        """Wait for every client's warm-up, start the meters, start the clients (SIGUSR1),
        wait for them to finish; their JSON results and the CPU seconds of ``pids``.
        """
        procs = self.procs
        for name in clients:
            procs.wait_for(name, "warmed up", stream="err", timeout=self.warmup_timeout)
        meter, machine = CpuMeter(pids), MachineMeter()
        meter.start()
        machine.start()
        for name in clients:
            os.kill(procs.procs[name].pid, signal.SIGUSR1)
        try:
            self._wait_exit(clients, watched)
        finally:
            cpu = meter.stop()
            self.machine = machine.stop()
        return [self._result(name) for name in clients], cpu

    def _wait_exit(self, clients: list[str], watched: list[str]) -> None:
        """Wait until every client exited 0; fail at once if one of ``watched`` dies."""
        procs = self.procs
        deadline = time.monotonic() + self.args.deadline
        for name in clients:
            while True:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    status = procs.procs[name].wait(0.05)
                    break
                for other in watched:
                    if procs.procs[other].poll() is not None:
                        raise BenchError(
                            f"{other} exited with status {procs.procs[other].returncode}:\n"
                            f"{procs.tail(other)}"
                        )
                if time.monotonic() > deadline:
                    raise BenchError(f"{name}: not done within {self.args.deadline} s")
            if status != 0:
                raise BenchError(f"{name} exited with status {status}:\n{procs.tail(name)}")

    def _result(self, name: str) -> dict[str, Any]:
        lines = (self.procs.log_dir / f"{name}.out").read_text().splitlines()
        if not lines:
            raise BenchError(f"{name}: no result:\n{self.procs.tail(name)}")
        result: dict[str, Any] = json.loads(lines[-1])
        return result

    # ------------------------------------------------------------ nats-py js

    def _run_nats(self, number: int) -> dict[str, Any]:
        """The baseline: ``--workers`` js-workers sharing one consumer, and a js-client."""
        args, procs = self.args, self.procs
        tag = secrets.token_hex(6)
        stream, subject = f"BENCH_SCALEOUT_{tag.upper()}", f"bench.scaleout.{tag}"
        self.leftovers.add_stream(stream)
        script = str(HERE / "_nats_side.py")
        workers = [f"js-worker-{number}-{i}" for i in range(1, args.workers + 1)]
        client = f"js-client-{number}"
        try:
            for name in workers:  # one after the other: the first creates the stream
                procs.start(name, [sys.executable, script, "js-worker", "--url", args.nats_url,
                                   "--stream", stream, "--subject", subject,
                                   "--batch", str(args.inflight),
                                   "--parent-pid", str(os.getpid())])  # fmt: skip
                procs.wait_for(name, "ready")
            pids = self._cpu_pids()
            pids.update({name: procs.procs[name].pid for name in workers})
            procs.start(client, [sys.executable, script, "js-client", "--url", args.nats_url,
                                 "--subject", subject, "--jobs", str(args.jobs),
                                 "--inflight", str(args.inflight), "--warmup", str(args.warmup),
                                 "--timeout", str(NATS_DEFAULT_TIMEOUT),
                                 "--settle", str(JS_SETTLE)])  # fmt: skip
            procs.wait_for(client, "warmed up", stream="err", timeout=self.warmup_timeout)
            meter, machine = CpuMeter(pids), MachineMeter()
            meter.start()
            machine.start()
            try:
                self._wait_exit([client], workers)
            finally:
                cpu = meter.stop()
                self.machine = machine.stop()
            result = self._result(client)
        finally:
            stop_together(procs, [client])
            stop_together(procs, workers)
        cpu["client-1"] = result["cpu_seconds"]
        row = summarize(TITLES["nats"], result["seconds"], result["latencies"], args.jobs, cpu)
        row["leaders"] = 0
        row["others_cores"] = others_cores(cpu, self.machine)
        return row


# ---------------------------------------------------------------------- report


def cpu_groups(row: dict[str, Any]) -> dict[str, float | None]:
    """CPU µs per job by kind of process: leaders, nats-server, workers, clients, total."""
    groups: dict[str, float | None] = {}
    jobs = row["jobs"]
    cpu = row["cpu_s"]
    for kind in ("leader", "nats-server", "worker", "client"):
        seconds = [s for name, s in cpu.items() if name.startswith(kind)]
        if kind == "worker":
            seconds += [s for name, s in cpu.items() if name.startswith("js-worker")]
        groups[kind] = sum(seconds) / jobs * 1e6 if seconds else None
    groups["total"] = sum(cpu.values()) / jobs * 1e6
    return groups


def _cell(value: float | None, width: int, fmt: str = ".0f") -> str:
    return f"{'-' if value is None else format(value, fmt):>{width}}"


def format_table(rows: list[dict[str, Any]]) -> str:
    """The results: throughput, latency, and CPU µs per job by kind of process."""
    header = (
        f"{'variant':<13}{'leaders':>8}{'jobs':>7}{'seconds':>8}{'jobs/s':>9}{'p50 ms':>8}"
        f"{'p99 ms':>8} | CPU µs/job:{'leaders':>8}{'nats-srv':>9}{'workers':>8}"
        f"{'clients':>8}{'total':>7}{'cores':>6}{'others':>7}"
    )
    lines = [header]
    for row in rows:
        g = cpu_groups(row)
        cores = sum(row["cpu_s"].values()) / row["seconds"]
        lines.append(
            f"{row['system']:<13}{row['leaders'] or '-':>8}{row['jobs']:>7}{row['seconds']:>8.2f}"
            f"{row['jobs_per_s']:>9,.0f}{row['p50_ms']:>8.2f}{row['p99_ms']:>8.2f} | {'':>11}"
            f"{_cell(g['leader'], 8)}{_cell(g['nats-server'], 9)}{_cell(g['worker'], 8)}"
            f"{_cell(g['client'], 8)}{_cell(g['total'], 7)}{cores:>6.2f}"
            f"{_cell(row.get('others_cores'), 7, '.2f')}"
        )
    return "\n".join(lines)


def compare(median: dict[str, dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Each of ours / nats-py js: throughput, p50 and p99 latency."""
    if "nats" not in median:
        return {}
    return {
        variant: ratios(row, median["nats"]) for variant, row in median.items() if variant != "nats"
    }


def format_ratios(pairs: dict[str, dict[str, float]]) -> str:
    """One line per variant: ours / nats-py js."""
    lines = ["ours / nats-py js (throughput: above 1 is better; latency: below 1 is better)"]
    for variant, r in pairs.items():
        lines.append(
            f"  {TITLES[variant]:<13} throughput {r['jobs_per_s']:.2f}x; "
            f"p50 latency {r['p50_ms']:.2f}x; p99 latency {r['p99_ms']:.2f}x"
        )
    return "\n".join(lines)


def scaling(median: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows of the scaling table: x1, x2, x3 (those run)."""
    rows = []
    base = median.get("x1")
    for variant in ("x1", "x2", "x3"):
        row = median.get(variant)
        if row is None:
            continue
        g = cpu_groups(row)
        rows.append(
            {
                "variant": variant,
                "leaders": row["leaders"],
                "jobs_per_s": row["jobs_per_s"],
                "jobs_per_s_per_leader": row["jobs_per_s"] / row["leaders"],
                "of_x1": row["jobs_per_s"] / base["jobs_per_s"] if base else None,
                "leader_us_per_job": g["leader"],
                "nats_server_us_per_job": g["nats-server"],
                "p99_ms": row["p99_ms"],
            }
        )
    return rows


def format_scaling(rows: list[dict[str, Any]]) -> str:
    """The scaling table."""
    header = (
        f"{'scaling':<13}{'leaders':>8}{'jobs/s':>9}{'per leader':>11}{'of x1':>7}"
        f"{'leader µs/job':>14}{'nats-srv µs/job':>16}{'p99 ms':>8}"
    )
    return "\n".join(
        [header]
        + [
            f"{TITLES[row['variant']]:<13}{row['leaders']:>8}{row['jobs_per_s']:>9,.0f}"
            f"{row['jobs_per_s_per_leader']:>11,.0f}{_cell(row['of_x1'], 7, '.2f')}"
            f"{_cell(row['leader_us_per_job'], 14)}{_cell(row['nats_server_us_per_job'], 16)}"
            f"{row['p99_ms']:>8.2f}"
            for row in rows
        ]
    )


def _progress(row: dict[str, Any]) -> None:
    done = row.get("done_per_leader")
    where = f"  done per leader {done}" if done and len(done) > 1 else ""
    print(
        f"  run: {row['system']:<13} {row['jobs_per_s']:>9,.0f} jobs/s  "
        f"p50 {row['p50_ms']:.2f} ms  p99 {row['p99_ms']:.2f} ms{where}",
        file=sys.stderr,
    )


# ---------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``bench/bench_scaleout.py``."""
    parser = argparse.ArgumentParser(
        prog="bench/bench_scaleout.py",
        description="No-op QoS 1 jobs: one leader (memory, sqlite, JetStream) and 2-3 leaders "
        "sharing a JetStream store, against a nats-py JetStream work queue.",
    )
    parser.add_argument("--jobs", type=int, help="measured jobs per run, split between the "
                        "leaders' clients (20000; --quick 1000)")  # fmt: skip
    parser.add_argument("--inflight", type=int, default=64, help="submit loops per client (64)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes per leader (2)")
    parser.add_argument("--warmup", type=int, help="unmeasured jobs per client first (1000)")
    parser.add_argument("--repeat", type=int, default=1, help="runs per variant; the median")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 1,000 jobs")
    parser.add_argument(
        "--variants",
        default=",".join(VARIANTS),
        help=f"a comma-separated subset of {','.join(VARIANTS)} (default: all)",
    )
    parser.add_argument("--nats-url", default=DEFAULT_NATS_URL, help=f"({DEFAULT_NATS_URL})")
    parser.add_argument(
        "--data-root",
        default=tempfile.gettempdir(),
        help="where the sqlite runs get their fresh data directory (the system temp dir)",
    )
    parser.add_argument("--deadline", type=float, help="seconds per run at most (600)")
    parser.add_argument("--json", metavar="FILE", help="write the runs, medians and ratios here")
    parser.add_argument("--logs", metavar="DIR", help="keep the processes' logs in DIR")
    return parser


def _check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> list[str]:
    """Fill in the defaults (``--quick``'s or the full run's); the variants asked for."""
    full = {"jobs": 20_000, "warmup": 1_000, "deadline": 600.0}
    for name, value in (QUICK if args.quick else full).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    for name in ("jobs", "inflight", "workers", "repeat"):
        if getattr(args, name) < 1:
            parser.error(f"--{name}: expected an integer >= 1")
    if args.warmup < 0 or args.deadline <= 0:
        parser.error("--warmup: expected >= 0; --deadline: expected > 0")
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown or not variants:
        parser.error(f"--variants: expected some of {','.join(VARIANTS)}, got {args.variants!r}")
    if args.jobs < max(VARIANTS[v] for v in variants):
        parser.error("--jobs: at least one job per leader")
    try:
        _check_loopback(args.nats_url, "--nats-url")
    except BenchError as exc:
        parser.error(str(exc))
    if args.logs is not None:
        Path(args.logs).mkdir(parents=True, exist_ok=True)
    return [v for v in VARIANTS if v in variants]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; print the tables and ratios. Exit status 1 on a failure."""
    parser = build_parser()
    args = parser.parse_args(argv)
    variants = _check_args(parser, args)
    signal.signal(signal.SIGTERM, _raise_system_exit)

    results: dict[str, Any] = {
        "jobs": args.jobs,
        "inflight_per_client": args.inflight,
        "workers_per_leader": args.workers,
        "warmup_per_client": args.warmup,
        "repeat": args.repeat,
        "cpus": os.cpu_count(),
        "runs": {},
    }
    if any(v in NEEDS_NATS for v in variants):
        unreachable = nats_reachable(args.nats_url)
        if unreachable is not None:
            print(f"NATS not reachable ({unreachable}): no JetStream variants", file=sys.stderr)
            results["nats_skipped"] = unreachable
            variants = [v for v in variants if v not in NEEDS_NATS]
    if not variants:
        print("bench_scaleout: nothing to run", file=sys.stderr)
        return 1
    print(
        f"{args.jobs} no-op QoS 1 jobs per run, a client of {args.inflight} submit loops per "
        f"leader, {args.workers} worker processes per leader, {args.warmup} warm-up jobs per "
        f"client, median of {args.repeat} run(s); {os.cpu_count()} CPUs",
        file=sys.stderr,
    )
    runner: Runner | None = None
    try:
        with _log_dir(args.logs, "bench-scaleout-") as log_dir, Processes(log_dir) as procs:
            runner = Runner(args, procs)
            results["nats_server_pid"] = runner.nats_server
            if runner.nats_server is None and any(v in NEEDS_NATS for v in variants):
                print("(no nats-server process found for the store's port: its CPU is not "
                      "measured)", file=sys.stderr)  # fmt: skip
            # Runs alternate between the variants, so that load from elsewhere on the
            # machine does not fall on one of them only.
            for number in range(1, args.repeat + 1):
                for variant in variants:
                    row = runner.run(variant, number)
                    _progress(row)
                    results["runs"].setdefault(variant, []).append(row)
    except BenchError as exc:
        print(f"bench_scaleout: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # (every process is stopped by then)
        print("bench_scaleout: interrupted", file=sys.stderr)
        return 130
    finally:
        if runner is not None:
            with contextlib.suppress(Exception):  # (best effort: the run's error comes first)
                runner.leftovers.delete()
    median = {variant: median_run(runs) for variant, runs in results["runs"].items()}
    results["median"] = median
    results["ratio"] = compare(median)
    results["scaling"] = scaling(median)

    print(format_table(list(median.values())))
    if results["ratio"]:
        print(format_ratios(results["ratio"]))
    if results["scaling"]:
        print(format_scaling(results["scaling"]))
    if args.json:
        Path(args.json).write_text(json.dumps(results) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
