"""Job-system benchmark: no-op QoS 1 jobs through our cluster against NATS request/reply.

::

    python bench/bench_jobs.py                      # 20,000 jobs, 64 in flight, 2 workers
    python bench/bench_jobs.py --repeat 3 --map     # median of 3 runs, plus a client.map row
    python bench/bench_jobs.py --only ours --py-spy /tmp/prof   # flame graphs of every process

Both systems run on this machine, over loopback, side by side in one run, with the same
job count, jobs in flight, worker processes and (empty) payloads:

- **ours**: a leader alone in its process (``bench/_leader_proc.py``), ``--workers``
  processes of ``python -m actors.worker bench.noop:Noop``, and the client in this
  process: ``--inflight`` trio tasks, each looping ``await client.submit("bench.noop",
  None, qos=1)``.
- **nats**: the nats-server on 127.0.0.1:4222, ``--workers`` nats-py processes answering
  ``bench.noop`` in a queue group, and a nats-py client process with ``--inflight``
  asyncio tasks, each looping ``await nc.request("bench.noop", b"")``
  (``bench/_nats_side.py``). Skipped, with a message, when the server does not answer.

Each run sends ``--warmup`` jobs (not measured) first; every job's latency is timed with
:func:`time.perf_counter` around its call. The table shows the median run (by jobs/s)
of ``--repeat`` runs, then the ratios ours / nats. See ``bench/README.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import ipaddress
import itertools
import json
import math
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(ROOT) not in sys.path:  # run as a script: make the repository importable
    sys.path.insert(0, str(ROOT))

SUBJECT = "bench.noop"
DEFAULT_NATS_URL = "nats://127.0.0.1:4222"
#: Seconds a child process gets to start (print its ready line).
START_TIMEOUT = 20.0
#: Seconds a child process gets to exit after SIGINT before its group is killed.
STOP_TIMEOUT = 5.0
#: The per-request timeout of nats-py without ``--timeout`` (nats-py always has one).
NATS_DEFAULT_TIMEOUT = 5.0
#: Seconds given to profilers (py-spy, perf) to attach before the measured phase.
PROFILER_SETTLE = 1.0


class BenchError(Exception):
    """A process of the benchmark failed to start or to finish."""


# ---------------------------------------------------------------------- statistics


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The nearest-rank ``q`` quantile (0 < q <= 1) of already sorted values."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q * len(sorted_values)))
    return sorted_values[rank - 1]


def summarize(
    system: str,
    seconds: float,
    latencies: list[float],
    jobs: int,
    cpu: dict[str, float] | None = None,
) -> dict[str, Any]:
    """One row of the table: throughput, latency quantiles (ms) and CPU seconds of one run."""
    ordered = sorted(latencies)
    return {
        "system": system,
        "jobs": jobs,
        "seconds": seconds,
        "jobs_per_s": jobs / seconds if seconds > 0 else math.nan,
        "p50_ms": percentile(ordered, 0.50) * 1e3,
        "p99_ms": percentile(ordered, 0.99) * 1e3,
        "cpu_s": cpu or {},
    }


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run whose throughput is the median (the lower middle one for an even count)."""
    ordered = sorted(runs, key=lambda run: run["jobs_per_s"])
    return ordered[(len(ordered) - 1) // 2]


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds used so far by process ``pid`` (Linux ``/proc``), or None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()  # after "pid (comm)": state is fields[0]
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS  # utime, stime


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


class CpuMeter:
    """CPU seconds that named processes spend between :meth:`start` and :meth:`stop`."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.before: dict[str, float | None] = {}

    def start(self) -> None:
        """Take the first reading."""
        self.before = {name: cpu_seconds(pid) for name, pid in self.pids.items()}

    def stop(self) -> dict[str, float]:
        """CPU seconds per process since :meth:`start` (processes that vanished are left out)."""
        used = {}
        for name, pid in self.pids.items():
            after, before = cpu_seconds(pid), self.before.get(name)
            if after is not None and before is not None:
                used[name] = after - before
        return used


def find_nats_server() -> int | None:
    """The pid of a local ``nats-server`` process, to account its CPU time (or None)."""
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if (proc / "comm").read_text().strip() == "nats-server":
                    return int(proc.name)
            except OSError:
                continue
    return None


# ---------------------------------------------------------------------- processes


class Processes:
    """The child processes of a benchmark: each in its own process group, logs in files.

    Resource handling: use it as a context manager; on exit every child still running
    gets SIGINT (they all drain and exit on it), and its whole group SIGKILL after
    :data:`STOP_TIMEOUT`.
    """

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.started: list[int] = []  # every pid, for the record
        self.env = dict(os.environ)
        self.env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p
        )
        self.env["PYTHONUNBUFFERED"] = "1"

    def __enter__(self) -> Processes:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop_all()

    def start(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        """Start ``argv`` as ``name``; stdout and stderr go to ``<log_dir>/<name>.out|err``."""
        with (
            open(self.log_dir / f"{name}.out", "wb") as out,
            open(self.log_dir / f"{name}.err", "wb") as err,
        ):
            proc = subprocess.Popen(
                argv,
                stdout=out,
                stderr=err,
                stdin=subprocess.DEVNULL,
                cwd=ROOT,
                env=self.env,
                start_new_session=True,
            )
        self.procs[name] = proc
        self.started.append(proc.pid)
        return proc

    def wait_for(
        self, name: str, marker: str, *, stream: str = "out", timeout: float = START_TIMEOUT
    ) -> str:
        """Wait until ``name``'s stdout (or stderr) has a line containing ``marker``; that line."""
        proc = self.procs[name]
        path = self.log_dir / f"{name}.{stream}"
        deadline = time.monotonic() + timeout
        while True:
            for line in path.read_text(errors="replace").splitlines():
                if marker in line:
                    return line
            if proc.poll() is not None:
                raise BenchError(f"{name} exited with status {proc.returncode}:\n{self.tail(name)}")
            if time.monotonic() > deadline:
                raise BenchError(f"{name}: no {marker!r} within {timeout} s:\n{self.tail(name)}")
            time.sleep(0.02)

    def tail(self, name: str, lines: int = 20) -> str:
        """The last lines of ``name``'s stderr and stdout, for error messages."""
        text = []
        for stream in ("err", "out"):
            path = self.log_dir / f"{name}.{stream}"
            if path.exists():
                text.extend(path.read_text(errors="replace").splitlines()[-lines:])
        return "\n".join(text)

    def stop(self, name: str) -> int | None:
        """SIGINT ``name``, then SIGKILL its process group if it outlives :data:`STOP_TIMEOUT`."""
        proc = self.procs.pop(name)
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGINT)
            try:
                proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                pass
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)  # whatever it started, too
        return proc.wait()

    def stop_all(self) -> None:
        """Stop every child, the latest started first."""
        for name in reversed(list(self.procs)):
            self.stop(name)


# ---------------------------------------------------------------------- profiling


#: What ``--perf`` counts: CPU time, context switches and the I/O system calls.
PERF_EVENTS = [
    "task-clock",
    "context-switches",
    *(
        f"syscalls:sys_enter_{call}"
        for call in (
            "sendto", "recvfrom", "sendmsg", "recvmsg", "write", "read", "writev",
            "epoll_wait", "epoll_pwait", "epoll_ctl", "futex", "nanosleep",
        )
    ),
]  # fmt: skip


class Profilers:
    """Profilers attached to the benchmark's processes for its measured phase.

    ``--py-spy DIR`` samples each process with ``py-spy record``; ``--perf DIR`` counts
    CPU time, context switches and system calls with ``perf stat`` (reported per job);
    ``--pyinstrument DIR`` runs our processes under pyinstrument.
    """

    def __init__(self, args: argparse.Namespace, procs: Processes) -> None:
        self.args = args
        self.procs = procs
        self.attached: list[str] = []
        self.perf_files: dict[str, Path] = {}

    @property
    def active(self) -> bool:
        """True when a profiler attaches to running processes (they then need a moment)."""
        return self.args.py_spy is not None or self.args.perf is not None

    def python_prefix(self, name: str) -> list[str]:
        """The interpreter command for child ``name`` (under pyinstrument when asked)."""
        if self.args.pyinstrument is None:
            return [sys.executable]
        out = Path(self.args.pyinstrument) / f"{name}.txt"
        return [sys.executable, "-m", "pyinstrument", "-r", "text", "--show-all", "-o", str(out)]

    def attach(self, name: str, pid: int, *, python: bool = True) -> None:
        """Start the asked-for profilers on process ``pid``, reporting under ``name``."""
        if self.args.py_spy is not None and python:
            fmt = self.args.py_spy_format
            suffix = {"flamegraph": "svg", "speedscope": "json", "raw": "txt"}[fmt]
            out = Path(self.args.py_spy) / f"{name}.{suffix}"
            argv = ["py-spy", "record", "--pid", str(pid), "--rate", str(self.args.py_spy_rate),
                    "--format", fmt, "-o", str(out)]  # fmt: skip
            # --gil: only samples holding the GIL, i.e. running Python. Without it, a process
            # preempted right after waking its peer (a send on loopback) shows as busy in
            # the send; --py-spy-idle shows everything, waiting included.
            argv.append("--idle" if self.args.py_spy_idle else "--gil")
            self._start(f"py-spy-{name}", argv)
        if self.args.perf is not None:
            out = Path(self.args.perf) / f"{name}.perf"
            self.perf_files[name] = out
            argv = ["perf", "stat", "-x", ",", "-e", ",".join(PERF_EVENTS), "-p", str(pid),
                    "-o", str(out)]  # fmt: skip
            self._start(f"perf-{name}", argv)

    def _start(self, label: str, argv: list[str]) -> None:
        self.procs.start(label, argv)
        self.attached.append(label)

    def detach(self) -> dict[str, dict[str, float]]:
        """Stop every profiler (SIGINT makes them write their output); the perf counts."""
        for label in self.attached:
            self.procs.stop(label)
        self.attached.clear()
        counts = {name: read_perf(path) for name, path in self.perf_files.items()}
        self.perf_files.clear()
        return counts


def _frame_name(frame: str) -> tuple[str, str]:
    """``func (path:line)`` of py-spy's raw format -> (``func (short path)``, short path)."""
    func, _, where = frame.rpartition(" (")
    path = where.rsplit(":", 1)[0].split("site-packages/")[-1].replace(str(ROOT) + "/", "")
    return f"{func} ({path})", path


def _area(path: str) -> str:
    top = path.split("/", 1)[0]
    if top in ("protocol", "runtime", "actors", "bench", "trio", "nats", "asyncio"):
        return top
    return "attrs" if "attrs" in path or top == "attr" else "other"


def summarize_raw_profile(path: Path, top: int = 15) -> str:
    """Where a process's time went, from a ``py-spy record --format raw`` file.

    Self time (the innermost frame of each sample) by area (our packages, trio, attrs, ...)
    and by function, as percentages of the samples.
    """
    by_function: dict[str, int] = {}
    by_area: dict[str, int] = {}
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        name, where = _frame_name(stack.rsplit(";", 1)[-1])
        by_function[name] = by_function.get(name, 0) + int(count)
        by_area[_area(where)] = by_area.get(_area(where), 0) + int(count)
        total += int(count)
    if not total:
        return f"{path.stem}: no samples"
    areas = ", ".join(
        f"{a} {n / total:.0%}" for a, n in sorted(by_area.items(), key=lambda x: -x[1])
    )
    lines = [f"{path.stem}: {total} samples; self time by area: {areas}"]
    for name, n in sorted(by_function.items(), key=lambda x: -x[1])[:top]:
        lines.append(f"  {n / total:6.1%}  {name}")
    return "\n".join(lines)


def read_perf(path: Path) -> dict[str, float]:
    """The counters of a ``perf stat -x ,`` output file (event name to value)."""
    counts: dict[str, float] = {}
    if not path.exists():
        return counts
    for line in path.read_text().splitlines():
        fields = line.split(",")
        if len(fields) < 3 or line.startswith("#"):
            continue
        try:
            value = float(fields[0])
        except ValueError:  # "<not counted>", "<not supported>"
            continue
        counts[fields[2].removeprefix("syscalls:sys_enter_")] = value
    return counts


def format_perf(row: dict[str, Any]) -> str:
    """Per-job counts of each process's context switches and system calls (``--perf``)."""
    perf = row.get("perf") or {}
    if not perf:
        return ""
    jobs = row["jobs"]
    events = sorted({event for counts in perf.values() for event in counts} - {"task-clock"})
    events = [e for e in events if any(counts.get(e, 0) for counts in perf.values())]
    lines = [f"{row['system']}: per job (perf stat)",
             f"  {'process':<14}" + "".join(f"{e[:12]:>13}" for e in ["cpu-µs", *events])]  # fmt: skip
    for name, counts in perf.items():
        values = [counts.get("task-clock", math.nan) * 1e3 / jobs]  # msec -> µs
        values += [counts.get(event, 0) / jobs for event in events]
        lines.append(f"  {name:<14}" + "".join(f"{v:>13.2f}" for v in values))
    return "\n".join(lines)


# ---------------------------------------------------------------------- ours


async def _drive(
    client: Any, jobs: int, inflight: int, per_job: float | None, latencies: list[float] | None
) -> None:
    import trio

    remaining = jobs
    clock = time.perf_counter
    submit = client.submit

    async def one_task() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            t0 = clock()
            await submit(SUBJECT, None, qos=1, timeout=per_job)
            if latencies is not None:
                latencies.append(clock() - t0)

    async with trio.open_nursery() as nursery:
        for _ in range(min(inflight, jobs)):
            nursery.start_soon(one_task)


async def _ours_client(
    url: str, args: argparse.Namespace, profilers: Profilers, pids: dict[str, int]
) -> list[dict[str, Any]]:
    import trio

    from actors import Client

    rows = []
    token = os.environ.get("BENCH_CLIENT_TOKEN") if args.auth else None
    async with Client.connect(url, name="bench", token=token) as client:
        await _drive(client, args.warmup, args.inflight, args.timeout or None, None)
        for name, pid in pids.items():
            profilers.attach(name, pid)
        if profilers.active:
            await trio.sleep(PROFILER_SETTLE)
        meter = CpuMeter(pids)
        latencies: list[float] = []
        meter.start()
        start = time.perf_counter()
        await _drive(client, args.jobs, args.inflight, args.timeout or None, latencies)
        seconds = time.perf_counter() - start
        rows.append(summarize("ours", seconds, latencies, args.jobs, meter.stop()))
        rows[-1]["perf"] = profilers.detach()
        if args.map:
            done = 0
            meter.start()
            start = time.perf_counter()
            async for _ in client.map(
                SUBJECT, itertools.repeat(None, args.jobs), limit=args.inflight, qos=1
            ):
                done += 1
            seconds = time.perf_counter() - start
            rows.append(summarize("ours (map)", seconds, [], done, meter.stop()))
    return rows


class OursSide:
    """Our cluster: a leader process, worker processes, and the client in this process."""

    name = "ours"

    def __init__(self, args: argparse.Namespace, procs: Processes) -> None:
        self.args = args
        self.procs = procs
        self.profilers = Profilers(args, procs)
        self.url = ""
        self.pids: dict[str, int] = {}

    def start(self) -> None:
        """Start the leader, then the workers; return once every worker is connected."""
        args, procs = self.args, self.procs
        python = self.profilers.python_prefix
        parent = ["--parent-pid", str(os.getpid())]
        leader = [str(HERE / "_leader_proc.py"), "--heartbeat", str(args.heartbeat), *parent]
        if args.auth:  # (tokens in the environment, never on a command line)
            leader.append("--auth")
            procs.env.setdefault("BENCH_CLIENT_TOKEN", secrets.token_urlsafe(24))
            procs.env.setdefault("BENCH_WORKER_TOKEN", secrets.token_urlsafe(24))
            os.environ["BENCH_CLIENT_TOKEN"] = procs.env["BENCH_CLIENT_TOKEN"]
        procs.start("leader", [*python("leader"), *leader])
        line = procs.wait_for("leader", "leader listening on ")
        self.url = line.split("leader listening on ", 1)[1].strip()
        _check_loopback(self.url, "leader")
        names = [f"worker-{i}" for i in range(1, args.workers + 1)]
        for i, name in enumerate(names, 1):
            worker = ["-m", "actors.worker", "--url", self.url, "--name", f"noop-{i}", *parent]
            if args.auth:
                worker += ["--token-env", "BENCH_WORKER_TOKEN"]
            procs.start(name, [*python(name), *worker, "bench.noop:Noop"])
        for name in names:
            procs.wait_for(name, "connected to", stream="err")
        self.pids = {name: procs.procs[name].pid for name in ["leader", *names]}
        self.pids["client"] = os.getpid()

    def run_once(self, repeat: int) -> list[dict[str, Any]]:
        """One run of the client (a fresh connection and warm-up); its rows."""
        import trio

        args = self.args

        rows: list[dict[str, Any]] = []

        async def client() -> None:
            with trio.fail_after(args.deadline):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._watch)
                    rows.extend(await _ours_client(self.url, args, self.profilers, self.pids))
                    nursery.cancel_scope.cancel()

        try:
            if args.pyinstrument is None:
                trio.run(client)
                return rows
            from pyinstrument import Profiler

            profiler = Profiler(async_mode="disabled")
            with profiler:
                trio.run(client)
            report = profiler.output_text(show_all=True)
            (Path(args.pyinstrument) / "client.txt").write_text(report)
            return rows
        except Exception as exc:
            raise BenchError(f"ours: the run failed: {_describe(exc)}") from None
        finally:
            self.profilers.detach()

    async def _watch(self) -> None:
        """Fail the run at once when the leader or a worker dies (rather than time out)."""
        import trio

        while True:
            for name, proc in self.procs.procs.items():
                if name in self.pids and proc.poll() is not None:
                    raise BenchError(
                        f"{name} exited with status {proc.returncode}:\n{self.procs.tail(name)}"
                    )
            await trio.sleep(0.2)


def _describe(exc: BaseException) -> str:
    """The distinct messages of an exception (of the leaves of an exception group)."""
    if isinstance(exc, BaseExceptionGroup):
        seen: dict[str, None] = {}
        for leaf in exc.exceptions:
            seen[_describe(leaf)] = None
        return "; ".join(list(seen)[:3])
    if isinstance(exc, BenchError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


# ---------------------------------------------------------------------- nats


def nats_reachable(url: str, timeout: float = 1.0) -> str | None:
    """``None`` when nats-py is installed and a NATS server answers at ``url``, else why not."""
    if importlib.util.find_spec("nats") is None:
        return 'nats-py is not installed (pip install -e ".[bench]")'
    parts = urlsplit(url)
    try:
        with socket.create_connection(
            (parts.hostname, parts.port or 4222), timeout=timeout
        ) as sock:
            sock.settimeout(timeout)
            greeting = sock.recv(4)
    except OSError as exc:
        return f"{parts.hostname}:{parts.port or 4222}: {exc}"
    if greeting != b"INFO":
        return f"{parts.hostname}:{parts.port or 4222} is not a NATS server (it said {greeting!r})"
    return None


class NatsSide:
    """NATS: the nats-server, nats-py worker processes, and a nats-py client process per run."""

    name = "nats"

    def __init__(self, args: argparse.Namespace, procs: Processes) -> None:
        self.args = args
        self.procs = procs
        self.profilers = Profilers(args, procs)
        self.script = str(HERE / "_nats_side.py")
        self.pids: dict[str, int] = {}

    def start(self) -> None:
        """Start the workers; return once each has its subscription in place."""
        args, procs = self.args, self.procs
        names = [f"nats-worker-{i}" for i in range(1, args.workers + 1)]
        for name in names:
            worker = [self.script, "worker", "--url", args.nats_url]
            procs.start(name, [sys.executable, *worker, "--parent-pid", str(os.getpid())])
        for name in names:
            procs.wait_for(name, "ready")
        self.pids = {name: procs.procs[name].pid for name in names}
        server = find_nats_server()
        if server is not None:
            self.pids["nats-server"] = server

    def run_once(self, repeat: int) -> list[dict[str, Any]]:
        """One run of a fresh client process (it warms up first); its rows."""
        args, procs, profilers = self.args, self.procs, self.profilers
        name = f"nats-client-{repeat + 1}"
        options = {
            "--url": args.nats_url,
            "--jobs": args.jobs,
            "--inflight": args.inflight,
            "--warmup": args.warmup,
            "--timeout": args.timeout or NATS_DEFAULT_TIMEOUT,
            "--settle": PROFILER_SETTLE if profilers.active else 0,
        }
        argv = [sys.executable, self.script, "client"]
        for option, value in options.items():
            argv += [option, str(value)]
        client = procs.start(name, argv)
        # The client prints "warmed up" after its warm-up, then waits --settle seconds
        # (time for the profilers to attach): start the meters then (the client measures
        # its own CPU time).
        procs.wait_for(name, "warmed up", stream="err", timeout=args.deadline)
        meter = CpuMeter(self.pids)
        meter.start()
        profilers.attach("nats-client", client.pid)
        for other, pid in self.pids.items():
            profilers.attach(other, pid, python=other != "nats-server")
        try:
            status = client.wait(args.deadline)
        except subprocess.TimeoutExpired:
            raise BenchError(f"{name}: not done within {args.deadline} s") from None
        finally:
            cpu = meter.stop()
            perf = profilers.detach()
        if status != 0:
            raise BenchError(f"{name} exited with status {status}:\n{procs.tail(name)}")
        procs.stop(name)
        result = json.loads((procs.log_dir / f"{name}.out").read_text().splitlines()[-1])
        cpu["nats-client"] = result["cpu_seconds"]
        row = summarize("nats", result["seconds"], result["latencies"], args.jobs, cpu)
        row["perf"] = perf
        return [row]


# ---------------------------------------------------------------------- report


def _progress(rows: list[dict[str, Any]]) -> None:
    for row in rows:
        latency = ""
        if not math.isnan(row["p50_ms"]):
            latency = f"  p50 {row['p50_ms']:.2f} ms  p99 {row['p99_ms']:.2f} ms"
        print(
            f"  run: {row['system']:<11} {row['jobs_per_s']:>9,.0f} jobs/s{latency}",
            file=sys.stderr,
        )


def format_table(rows: list[dict[str, Any]]) -> str:
    """The results table: system, jobs, seconds, jobs/s, p50 ms, p99 ms."""
    lines = [f"{'system':<12} {'jobs':>8} {'seconds':>8} {'jobs/s':>9} {'p50 ms':>8} {'p99 ms':>8}"]
    for row in rows:
        p50 = "-" if math.isnan(row["p50_ms"]) else f"{row['p50_ms']:.2f}"
        p99 = "-" if math.isnan(row["p99_ms"]) else f"{row['p99_ms']:.2f}"
        lines.append(
            f"{row['system']:<12} {row['jobs']:>8} {row['seconds']:>8.2f} "
            f"{row['jobs_per_s']:>9,.0f} {p50:>8} {p99:>8}"
        )
    return "\n".join(lines)


def format_cpu(rows: list[dict[str, Any]]) -> str:
    """CPU time per job of each process during the measured phase, and the cores kept busy."""
    lines = []
    for row in rows:
        cpu = row["cpu_s"]
        if not cpu:
            continue
        total = sum(cpu.values())
        parts = ", ".join(
            f"{name} {seconds / row['jobs'] * 1e6:.0f}" for name, seconds in cpu.items()
        )
        lines.append(
            f"{row['system']:<12} CPU µs/job: {parts}; total {total / row['jobs'] * 1e6:.0f} "
            f"({total / row['seconds']:.2f} of {os.cpu_count()} cores busy)"
        )
    return "\n".join(lines)


def ratios(ours: dict[str, Any], nats: dict[str, Any]) -> dict[str, float]:
    """ours / nats for throughput (above 1 is better) and latencies (below 1 is better)."""
    return {
        "jobs_per_s": ours["jobs_per_s"] / nats["jobs_per_s"],
        "p50_ms": ours["p50_ms"] / nats["p50_ms"],
        "p99_ms": ours["p99_ms"] / nats["p99_ms"],
    }


def _check_loopback(url: str, what: str) -> None:
    host = urlsplit(url).hostname or ""
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise BenchError(
            f"{what}: {url} is not a loopback address; this benchmark stays on loopback"
        )


# ---------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``bench/bench_jobs.py``."""
    parser = argparse.ArgumentParser(
        prog="bench/bench_jobs.py",
        description="No-op QoS 1 jobs through trio-actors vs NATS request/reply (nats-py).",
    )
    parser.add_argument("--jobs", type=int, default=20_000, help="measured jobs per run (20000)")
    parser.add_argument("--inflight", type=int, default=64, help="jobs in flight at once (64)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes per system (2)")
    parser.add_argument("--warmup", type=int, default=1_000, help="unmeasured jobs first (1000)")
    parser.add_argument(
        "--repeat", type=int, default=1, help="runs per system; the median is shown"
    )
    parser.add_argument("--only", choices=("ours", "nats"), help="run one system only")
    parser.add_argument("--map", action="store_true", help="also time client.map (throughput only)")
    parser.add_argument(
        "--auth",
        action="store_true",
        help="ours with users: every connection authenticated, every submit checked",
    )
    parser.add_argument("--nats-url", default=DEFAULT_NATS_URL, help=f"({DEFAULT_NATS_URL})")
    parser.add_argument("--heartbeat", type=float, default=5.0, help="leader heartbeat s (0: none)")
    parser.add_argument(
        "--timeout",
        type=float,
        default=0.0,
        help="per-job timeout; default 0: none for ours (the API default), 5 s for nats-py "
        "(its request() always has one)",
    )
    parser.add_argument("--deadline", type=float, default=600.0, help="seconds per run at most")
    parser.add_argument("--json", action="store_true", help="end with one JSON line of the results")
    parser.add_argument("--logs", metavar="DIR", help="keep the processes' logs in DIR")
    prof = parser.add_argument_group("profiling (the timings are then not comparable)")
    prof.add_argument("--py-spy", metavar="DIR", help="py-spy record every process into DIR")
    prof.add_argument(
        "--perf", metavar="DIR", help="count syscalls and context switches per job (perf stat)"
    )
    prof.add_argument(
        "--py-spy-format", choices=("flamegraph", "speedscope", "raw"), default="flamegraph"
    )
    prof.add_argument("--py-spy-rate", type=int, default=250, help="samples per second (250)")
    prof.add_argument(
        "--py-spy-idle",
        action="store_true",
        help="sample waiting too, not only Python holding the GIL",
    )
    prof.add_argument(
        "--pyinstrument",
        metavar="DIR",
        help="run our leader, workers and client under pyinstrument; text reports in DIR",
    )
    return parser


def _check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    for name in ("jobs", "inflight", "workers", "repeat"):
        if getattr(args, name) < 1:
            parser.error(f"--{name}: expected an integer >= 1")
    if args.warmup < 0:
        parser.error("--warmup: expected an integer >= 0")
    if args.timeout < 0:
        parser.error("--timeout: expected a number >= 0")
    for name in ("py_spy", "perf", "pyinstrument", "logs"):
        if getattr(args, name) is not None:
            Path(getattr(args, name)).mkdir(parents=True, exist_ok=True)
    try:
        _check_loopback(args.nats_url, "--nats-url")
    except BenchError as exc:
        parser.error(str(exc))


@contextlib.contextmanager
def _log_dir(keep: str | None, prefix: str = "bench-jobs-") -> Iterator[Path]:
    """The directory of the processes' logs: ``keep``, or a temporary one (deleted)."""
    if keep is not None:
        yield Path(keep)
        return
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        yield Path(tmp)


def _raise_system_exit(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # runs the finally blocks: every child is stopped


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; print the table and the ratios. Exit status 1 on a failure."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _check_args(parser, args)
    signal.signal(signal.SIGTERM, _raise_system_exit)

    results: dict[str, Any] = {
        "jobs": args.jobs,
        "inflight": args.inflight,
        "workers": args.workers,
        "repeat": args.repeat,
        "cpus": os.cpu_count(),
        "runs": {},
        "median": {},
    }
    print(
        f"{args.jobs} no-op jobs, {args.inflight} in flight, {args.workers} worker processes, "
        f"{args.warmup} warm-up jobs, median of {args.repeat} run(s); {os.cpu_count()} CPUs",
        file=sys.stderr,
    )
    try:
        with _log_dir(args.logs) as log_dir, Processes(log_dir) as procs:
            sides: list[OursSide | NatsSide] = []
            if args.only in (None, "ours"):
                sides.append(OursSide(args, procs))
            if args.only in (None, "nats"):
                unreachable = nats_reachable(args.nats_url)
                if unreachable is None:
                    sides.append(NatsSide(args, procs))
                else:
                    print(f"NATS not reachable ({unreachable}): only our side is measured",
                          file=sys.stderr)  # fmt: skip
                    results["nats_skipped"] = unreachable
            for side in sides:
                side.start()
            # Runs alternate between the systems, so that a burst of load from elsewhere
            # on the machine does not fall on one system only.
            for repeat in range(args.repeat):
                for side in sides:
                    rows = side.run_once(repeat)
                    _progress(rows)
                    for row in rows:
                        results["runs"].setdefault(row["system"], []).append(row)
        results["children"] = procs.started
    except BenchError as exc:
        print(f"bench_jobs: error: {exc}", file=sys.stderr)
        return 1
    results["median"] = {system: median_run(runs) for system, runs in results["runs"].items()}

    print(format_table(list(results["median"].values())))
    print(format_cpu(list(results["median"].values())))
    for row in results["median"].values():
        if row.get("perf"):
            print(format_perf(row))
    if args.py_spy is not None and args.py_spy_format == "raw":
        for path in sorted(Path(args.py_spy).glob("*.txt")):
            print(summarize_raw_profile(path))
    if "ours" in results["median"] and "nats" in results["median"]:
        r = ratios(results["median"]["ours"], results["median"]["nats"])
        results["ratio"] = r
        verdict = "meets the bar (>= 1x)" if r["jobs_per_s"] >= 1 else "BELOW the bar (< 1x)"
        if r["jobs_per_s"] >= 2:
            verdict = "meets the goal (>= 2x)"
        print(
            f"ours / nats: throughput {r['jobs_per_s']:.2f}x ({verdict}); "
            f"p50 latency {r['p50_ms']:.2f}x; p99 latency {r['p99_ms']:.2f}x (below 1 is better)"
        )
    if args.json:
        print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
