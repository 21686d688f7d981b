"""Durable-job benchmark: our leader in memory and journalled, against NATS JetStream.

::

    python bench/bench_durable.py                   # 20,000 jobs, 64 in flight, every variant
    python bench/bench_durable.py --repeat 3        # the median of 3 runs of each
    python bench/bench_durable.py --only ours       # memory, full and normal; no JetStream

No-op QoS 1 jobs, ``--inflight`` at a time from one client, one worker process, over
loopback. Four variants, each run in fresh processes (and a fresh journal or stream):

- **memory**: a leader alone in its process (``bench/_leader_proc.py --memory``), one
  ``python -m actors.worker bench.noop:Noop`` (a window of 64), and the client in this
  process: ``--inflight`` trio tasks, each looping ``await client.submit("bench.noop",
  None, qos=1)``;
- **full** and **normal**: the same with the leader's journal (``--data-dir`` a fresh
  temporary directory under ``--data-root``, ``--sync full`` or ``normal``): a submit is
  answered once the job's row and then its result are committed;
- **jetstream**: the nats-server on 127.0.0.1:4222, a fresh work-queue stream with file
  storage per run (deleted at its end), a worker process with a durable pull consumer and
  explicit acks, and a client process with ``--inflight`` asyncio tasks, each publishing a
  job with its PubAck awaited (accepted once stored) and then awaiting the job's result,
  which the worker publishes on a core NATS subject before it acks the message
  (``bench/_nats_side.py js-worker`` and ``js-client``, nats-py). Skipped, with the
  reason, when no NATS server with JetStream answers.

Every job's latency is submit to result, timed with :func:`time.perf_counter`. Each run
sends ``--warmup`` jobs first (not measured). The table shows the median run (by jobs/s)
of ``--repeat`` runs of each variant, then the CPU time per job of each process and the
ratios full/memory, normal/memory, full/jetstream and normal/jetstream against the goals
of issue 12 (at least 0.70 of memory; at least JetStream). See ``bench/README.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(ROOT) not in sys.path:  # run as a script: make the repository importable
    sys.path.insert(0, str(ROOT))

from bench.bench_jobs import (  # noqa: E402 (after the sys.path line above)
    NATS_DEFAULT_TIMEOUT,
    BenchError,
    CpuMeter,
    Processes,
    _check_loopback,
    _describe,
    _drive,
    _log_dir,
    _raise_system_exit,
    find_nats_server,
    format_cpu,
    median_run,
    nats_reachable,
    ratios,
    summarize,
)

DEFAULT_NATS_URL = "nats://127.0.0.1:4222"
#: Every variant, in the order of the runs and of the table.
VARIANTS = ("memory", "full", "normal", "jetstream")
#: Our variants (``--only ours``).
OURS = ("memory", "full", "normal")
#: The goals of issue 12: journalled throughput at least this share of memory's ...
GOAL_OF_MEMORY = 0.70
#: ... and at least this multiple of JetStream's.
GOAL_OF_JETSTREAM = 1.0


# ---------------------------------------------------------------------- ours


async def _watch(procs: Processes, names: Sequence[str]) -> None:
    """Fail the run at once when the leader or the worker dies (rather than time out)."""
    import trio

    while True:
        for name in names:
            proc = procs.procs.get(name)
            if proc is not None and proc.poll() is not None:
                raise BenchError(
                    f"{name} exited with status {proc.returncode}:\n{procs.tail(name)}"
                )
        await trio.sleep(0.2)


async def _ours_client(url: str, args: argparse.Namespace, pids: dict[str, int]) -> dict[str, Any]:
    """Warm up, then time ``args.jobs`` submits; the row, with the leader's journal figures."""
    from actors import Client

    async with Client.connect(url, name="bench-durable") as client:
        await _drive(client, args.warmup, args.inflight, None, None)
        meter = CpuMeter(pids)
        latencies: list[float] = []
        meter.start()
        start = time.perf_counter()
        await _drive(client, args.jobs, args.inflight, None, latencies)
        seconds = time.perf_counter() - start
        cpu = meter.stop()
        stats = await client.stats(timeout=10)
    row = summarize("", seconds, latencies, args.jobs, cpu)
    row["journal"] = stats.get("journal")
    return row


def run_ours(
    variant: str, args: argparse.Namespace, procs: Processes, number: int
) -> dict[str, Any]:
    """One run of ``variant`` (memory, full or normal): a fresh leader, worker and data dir."""
    import trio

    tmp = Path(tempfile.mkdtemp(prefix=f"bench-durable-{variant}-", dir=args.data_root))
    leader, worker = f"leader-{variant}-{number}", f"worker-{variant}-{number}"
    parent = ["--parent-pid", str(os.getpid())]
    storage = ["--memory"]
    if variant != "memory":
        storage = ["--data-dir", str(tmp / "data"), "--sync", variant]
    try:
        argv = [str(HERE / "_leader_proc.py"), "--heartbeat", str(args.heartbeat), *parent]
        procs.start(leader, [sys.executable, *argv, *storage])
        url = procs.wait_for(leader, "leader listening on ").split("leader listening on ", 1)[1]
        url = url.strip()
        _check_loopback(url, "leader")
        journal_line = procs.wait_for(leader, "leader journal: ")
        argv = ["-m", "actors.worker", "--url", url, "--name", "noop", *parent]
        procs.start(worker, [sys.executable, *argv, "bench.noop:Noop"])
        procs.wait_for(worker, "connected to", stream="err")
        pids = {
            "leader": procs.procs[leader].pid,
            "worker": procs.procs[worker].pid,
            "client": os.getpid(),
        }
        row: dict[str, Any] = {}

        async def client() -> None:
            with trio.fail_after(args.deadline):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(_watch, procs, [leader, worker])
                    row.update(await _ours_client(url, args, pids))
                    nursery.cancel_scope.cancel()

        try:
            trio.run(client)
        except Exception as exc:
            raise BenchError(f"{variant}: the run failed: {_describe(exc)}") from None
        _check_storage(variant, journal_line, row.get("journal"), tmp)
    finally:
        for name in (worker, leader):
            if name in procs.procs:
                procs.stop(name)
        shutil.rmtree(tmp, ignore_errors=True)
    row["system"] = variant
    return row


def _check_storage(variant: str, journal_line: str, journal: Any, tmp: Path) -> None:
    """Make sure the leader kept its jobs where the variant says (memory, or a journal of
    the right sync tier in the run's directory); a BenchError if not.
    """
    if variant == "memory":
        if "none (memory)" not in journal_line or journal is not None:
            raise BenchError(f"memory: the leader is not in memory ({journal_line!r})")
        return
    path = tmp / "data" / "journal.sqlite3"
    if not isinstance(journal, dict) or journal.get("sync") != variant:
        raise BenchError(f"{variant}: the leader's statistics show no such journal: {journal!r}")
    if not path.exists() or str(path) not in journal_line or not journal.get("commits"):
        raise BenchError(f"{variant}: no journal was written at {path} ({journal_line!r})")


# ---------------------------------------------------------------------- jetstream


class JetStreamRuns:
    """The JetStream variant: per run, a worker process that creates a fresh stream and
    deletes it when stopped, and a client process that measures.
    """

    def __init__(self, args: argparse.Namespace, procs: Processes) -> None:
        self.args = args
        self.procs = procs
        self.script = str(HERE / "_nats_side.py")
        self.server = find_nats_server()
        self.leftover: list[str] = []  # streams whose worker did not say it deleted them

    def run(self, number: int) -> dict[str, Any]:
        """One run on a fresh stream; the row."""
        args, procs = self.args, self.procs
        tag = uuid.uuid4().hex[:12]
        stream, subject = f"BENCH_DURABLE_{tag.upper()}", f"bench.durable.{tag}"
        worker, client = f"js-worker-{number}", f"js-client-{number}"
        self.leftover.append(stream)
        try:
            argv = [self.script, "js-worker", "--url", args.nats_url, "--stream", stream,
                    "--subject", subject, "--batch", str(args.inflight),
                    "--parent-pid", str(os.getpid())]  # fmt: skip
            procs.start(worker, [sys.executable, *argv])
            procs.wait_for(worker, "ready")
            argv = [self.script, "js-client", "--url", args.nats_url, "--subject", subject,
                    "--jobs", str(args.jobs), "--inflight", str(args.inflight),
                    "--warmup", str(args.warmup), "--timeout", str(NATS_DEFAULT_TIMEOUT)]  # fmt: skip
            proc = procs.start(client, [sys.executable, *argv])
            procs.wait_for(client, "warmed up", stream="err", timeout=args.deadline)
            pids = {"js-worker": procs.procs[worker].pid}
            if self.server is not None:
                pids["nats-server"] = self.server
            meter = CpuMeter(pids)
            meter.start()
            try:
                status = proc.wait(args.deadline)
            except subprocess.TimeoutExpired:
                raise BenchError(f"{client}: not done within {args.deadline} s") from None
            finally:
                cpu = meter.stop()
            if status != 0:
                raise BenchError(f"{client} exited with status {status}:\n{procs.tail(client)}")
            procs.stop(client)
            result = json.loads((procs.log_dir / f"{client}.out").read_text().splitlines()[-1])
        finally:
            for name in (client, worker):
                if name in procs.procs:
                    procs.stop(name)
            if f"deleted stream {stream}" in procs.tail(worker):
                self.leftover.remove(stream)
        cpu["js-client"] = result["cpu_seconds"]
        return summarize("jetstream", result["seconds"], result["latencies"], args.jobs, cpu)

    def clean_up(self) -> None:
        """Delete the streams a worker left behind (it was killed, or failed)."""
        if not self.leftover:
            return
        argv = [sys.executable, self.script, "js-delete", "--url", self.args.nats_url]
        for stream in self.leftover:
            argv += ["--stream", stream]
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            subprocess.run(argv, cwd=ROOT, capture_output=True, timeout=30, check=False)
        self.leftover.clear()


# ---------------------------------------------------------------------- report


def format_table(rows: list[dict[str, Any]]) -> str:
    """The results: variant, jobs, seconds, jobs/s, p50 ms, p99 ms, journal commits."""
    header = f"{'variant':<10} {'jobs':>7} {'seconds':>8} {'jobs/s':>9} {'p50 ms':>8} {'p99 ms':>8}"
    lines = [f"{header}  journal"]
    for row in rows:
        journal = row.get("journal")
        note = "-"
        if journal:
            commits = journal.get("commits") or 0
            rows_written = journal.get("rows_written") or 0
            per = f"{rows_written / commits:.1f}" if commits else "-"
            note = f"{commits:,} commits, {per} rows each (warm-up included)"
        lines.append(
            f"{row['system']:<10} {row['jobs']:>7} {row['seconds']:>8.2f} "
            f"{row['jobs_per_s']:>9,.0f} {row['p50_ms']:>8.2f} {row['p99_ms']:>8.2f}  {note}"
        )
    return "\n".join(lines)


def compare(median: dict[str, dict[str, Any]]) -> dict[str, dict[str, float]]:
    """The ratios of journalled to memory and to JetStream that both sides were run for."""
    pairs = {}
    for other in ("memory", "jetstream"):
        for journalled in ("full", "normal"):
            if journalled in median and other in median:
                pairs[f"{journalled}/{other}"] = ratios(median[journalled], median[other])
    return pairs


def format_ratios(pairs: dict[str, dict[str, float]]) -> str:
    """One line per ratio, with the goal it is held to."""
    lines = []
    for name, r in pairs.items():
        goal = GOAL_OF_MEMORY if name.endswith("/memory") else GOAL_OF_JETSTREAM
        verdict = "meets" if r["jobs_per_s"] >= goal else "BELOW"
        lines.append(
            f"{name + ':':<17} throughput {r['jobs_per_s']:.3f}x ({verdict} the goal >= "
            f"{goal:.2f}x); p50 latency {r['p50_ms']:.2f}x; p99 latency {r['p99_ms']:.2f}x"
        )
    if lines:
        lines.append("(latency ratios: below 1 is better)")
    return "\n".join(lines)


def _progress(row: dict[str, Any]) -> None:
    print(
        f"  run: {row['system']:<10} {row['jobs_per_s']:>9,.0f} jobs/s  "
        f"p50 {row['p50_ms']:.2f} ms  p99 {row['p99_ms']:.2f} ms",
        file=sys.stderr,
    )


def filesystem_of(path: str) -> str:
    """The type of the file system ``path`` is on (from ``/proc/mounts``), or ``?``."""
    best, kind = "", "?"
    with contextlib.suppress(OSError):
        real = os.path.realpath(path)
        for line in Path("/proc/mounts").read_text().splitlines():
            fields = line.split()
            if len(fields) < 3:
                continue
            mount = fields[1]
            inside = real == mount or real.startswith(mount.rstrip("/") + "/")
            if inside and len(mount) > len(best):
                best, kind = mount, fields[2]
    return kind


# ---------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``bench/bench_durable.py``."""
    parser = argparse.ArgumentParser(
        prog="bench/bench_durable.py",
        description="No-op QoS 1 jobs: our leader in memory and journalled vs NATS JetStream.",
    )
    parser.add_argument("--jobs", type=int, default=20_000, help="measured jobs per run (20000)")
    parser.add_argument("--inflight", type=int, default=64, help="jobs in flight at once (64)")
    parser.add_argument("--warmup", type=int, default=1_000, help="unmeasured jobs first (1000)")
    parser.add_argument(
        "--repeat", type=int, default=1, help="runs per variant; the median is shown"
    )
    parser.add_argument(
        "--only",
        choices=("ours", "jetstream"),
        help="ours: memory, full and normal; jetstream: JetStream alone",
    )
    parser.add_argument(
        "--variants",
        help=f"a comma-separated subset of {','.join(VARIANTS)} (instead of --only)",
    )
    parser.add_argument(
        "--data-root",
        default=tempfile.gettempdir(),
        help="where each journalled run gets its fresh data directory (the system temp dir)",
    )
    parser.add_argument("--nats-url", default=DEFAULT_NATS_URL, help=f"({DEFAULT_NATS_URL})")
    parser.add_argument("--heartbeat", type=float, default=5.0, help="leader heartbeat s (0: none)")
    parser.add_argument("--deadline", type=float, default=600.0, help="seconds per run at most")
    parser.add_argument("--json", action="store_true", help="end with one JSON line of the results")
    parser.add_argument("--logs", metavar="DIR", help="keep the processes' logs in DIR")
    return parser


def _variants(parser: argparse.ArgumentParser, args: argparse.Namespace) -> list[str]:
    if args.variants is not None:
        if args.only is not None:
            parser.error("--only and --variants exclude each other")
        chosen = [v.strip() for v in args.variants.split(",") if v.strip()]
        unknown = [v for v in chosen if v not in VARIANTS]
        if unknown or not chosen:
            parser.error(f"--variants: expected some of {','.join(VARIANTS)}, got {unknown}")
        return [v for v in VARIANTS if v in chosen]
    if args.only == "ours":
        return list(OURS)
    if args.only == "jetstream":
        return ["jetstream"]
    return list(VARIANTS)


def _check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> list[str]:
    for name in ("jobs", "inflight", "repeat"):
        if getattr(args, name) < 1:
            parser.error(f"--{name}: expected an integer >= 1")
    if args.warmup < 0:
        parser.error("--warmup: expected an integer >= 0")
    if not Path(args.data_root).is_dir():
        parser.error(f"--data-root: {args.data_root} is not a directory")
    if args.logs is not None:
        Path(args.logs).mkdir(parents=True, exist_ok=True)
    try:
        _check_loopback(args.nats_url, "--nats-url")
    except BenchError as exc:
        parser.error(str(exc))
    return _variants(parser, args)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; print the table, CPU per job and the ratios. Exit 1 on a failure."""
    parser = build_parser()
    args = parser.parse_args(argv)
    variants = _check_args(parser, args)
    signal.signal(signal.SIGTERM, _raise_system_exit)

    results: dict[str, Any] = {
        "jobs": args.jobs,
        "inflight": args.inflight,
        "warmup": args.warmup,
        "repeat": args.repeat,
        "cpus": os.cpu_count(),
        "data_root": args.data_root,
        "filesystem": filesystem_of(args.data_root),
        "runs": {},
        "median": {},
    }
    if "jetstream" in variants:
        unreachable = nats_reachable(args.nats_url)
        if unreachable is not None:
            print(f"JetStream skipped: NATS not reachable ({unreachable})", file=sys.stderr)
            results["jetstream_skipped"] = unreachable
            variants.remove("jetstream")
    print(
        f"{args.jobs} no-op QoS 1 jobs, {args.inflight} in flight, 1 worker process, "
        f"{args.warmup} warm-up jobs, median of {args.repeat} run(s); {os.cpu_count()} CPUs; "
        f"journals under {args.data_root} ({results['filesystem']}); "
        f"variants: {', '.join(variants) or 'none'}",
        file=sys.stderr,
    )
    try:
        with _log_dir(args.logs, "bench-durable-logs-") as log_dir, Processes(log_dir) as procs:
            jetstream = JetStreamRuns(args, procs)
            try:
                # Runs alternate between the variants, so that load from elsewhere on the
                # machine does not fall on one of them only.
                for number in range(1, args.repeat + 1):
                    for variant in variants:
                        if variant == "jetstream":
                            row = jetstream.run(number)
                        else:
                            row = run_ours(variant, args, procs, number)
                        _progress(row)
                        results["runs"].setdefault(variant, []).append(row)
            finally:
                jetstream.clean_up()
        results["children"] = procs.started
    except BenchError as exc:
        print(f"bench_durable: error: {exc}", file=sys.stderr)
        return 1
    median = {variant: median_run(runs) for variant, runs in results["runs"].items()}
    results["median"] = median
    results["ratio"] = compare(median)

    print(format_table(list(median.values())))
    print(format_cpu(list(median.values())))
    if results["ratio"]:
        print(format_ratios(results["ratio"]))
    if args.json:
        print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
