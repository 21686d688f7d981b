"""Jobs from a browser page against the Python client: the same cluster, in one run.

::

    python bench/bench_browser.py                    # 5,000 jobs, 64 in flight, each side
    python bench/bench_browser.py --repeat 3 --map   # median of 3 runs, plus client.map rows
    python bench/bench_browser.py --json             # ends with one JSON line of every figure

One cluster (``python -m actors.cluster --memory``: the leader, listening on ``tcp://``
and ``ws://`` loopback ports with ``--http``, and 2 worker processes of
``bench.noop:Noop``) serves both clients; runs alternate between them:

- **python**: ``actors.Client`` in this process over ``tcp://`` (``--python-transport
  ws`` for the WebSocket listener): ``--inflight`` trio tasks, each looping ``await
  client.submit("bench.noop", None, qos=1)``, the code of ``bench/bench_jobs.py``.
- **page**: a headless Chromium page (Debian's ``/usr/bin/chromium`` driven by
  playwright with ``executable_path``; playwright never downloads a browser) of the
  leader's HTTP origin, which imports ``/actors.js`` from it and, over ``ws://``, runs
  ``--inflight`` loops of ``await client.submit("bench.noop", null, {qos: 1})``, timed
  inside the page with ``performance.now()``.

``--map`` adds, on each side, the same jobs through ``client.map(..., limit=--inflight)``
(throughput only). Each run has a fresh connection (and a fresh page) and sends
``--warmup`` unmeasured jobs first. The table shows the median run (by jobs/s) of
``--repeat`` runs, then the ratio page / python. See ``bench/README.md``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(ROOT) not in sys.path:  # run as a script: make the repository importable
    sys.path.insert(0, str(ROOT))

from bench.bench_jobs import (  # noqa: E402 (after the sys.path line above)
    SUBJECT,
    BenchError,
    CpuMeter,
    Processes,
    _check_loopback,
    _describe,
    _drive,
    _log_dir,
    _raise_system_exit,
    format_cpu,
    median_run,
    summarize,
)

#: Debian's chromium (the package ``chromium``); never a browser downloaded by playwright.
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
#: Seconds the cluster gets to say ``cluster ready``.
CLUSTER_TIMEOUT = 30.0


def js(body: str) -> str:
    """An async function of ``arg`` for ``page.evaluate``: ``body``, failed after
    ``arg.deadline`` ms (``page.evaluate`` itself waits for ever)."""
    return f"""async (arg) => {{
  let timer;
  const limit = new Promise((_, reject) => {{
    timer = setTimeout(() => reject(new Error(`not done within ${{arg.deadline}} ms`)), arg.deadline);
  }});
  try {{
    return await Promise.race([(async () => {{ {body} }})(), limit]);
  }} finally {{
    clearTimeout(timer);
  }}
}}"""


#: The page's side (``window.bench`` holds the module and the client between calls).
JS_CONNECT = js("""
  const m = await import("/actors.js");
  window.bench = { m, client: await m.Client.connect(arg.url) };
""")

#: ``arg.inflight`` loops of ``await client.submit(...)``; the latencies in ms, if asked.
JS_SUBMIT_LOOPS = js("""
  const { client } = window.bench;
  let remaining = arg.jobs;
  const latencies = arg.timed ? [] : null;
  const options = { qos: 1 };
  async function loop() {
    while (remaining > 0) {
      remaining -= 1;
      const t0 = performance.now();
      await client.submit(arg.subject, null, options);
      if (latencies !== null) latencies.push(performance.now() - t0);
    }
  }
  const start = performance.now();
  await Promise.all(Array.from({ length: Math.min(arg.inflight, arg.jobs) }, loop));
  return { ms: performance.now() - start, latencies };
""")

#: The same jobs through ``client.map(subject, payloads, {limit})``.
JS_MAP = js("""
  const { client } = window.bench;
  function* nulls(n) { for (let i = 0; i < n; i++) yield null; }
  let done = 0;
  const start = performance.now();
  for await (const _ of client.map(arg.subject, nulls(arg.jobs), { limit: arg.inflight, qos: 1 })) {
    done += 1;
  }
  return { ms: performance.now() - start, done };
""")

JS_CLOSE = js("await window.bench.client.close();")


# ---------------------------------------------------------------------- processes


def descendants(pid: int) -> dict[int, str]:
    """Every process below ``pid`` (Linux ``/proc``), by pid: its ``comm``."""
    parents: dict[int, list[int]] = {}
    comms: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        head, tail = stat.rsplit(")", 1)
        child = int(entry.name)
        comms[child] = head.split("(", 1)[1]
        parents.setdefault(int(tail.split()[1]), []).append(child)
    found: dict[int, str] = {}
    todo = [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found[child] = comms[child]
            todo.append(child)
    return found


class TreeMeter:
    """CPU seconds of named groups of processes between :meth:`start` and :meth:`stop`.

    ``groups`` maps a name to a function giving the group's pids at :meth:`start` (the
    browser's processes come and go); a process that ends in between is left out.
    """

    def __init__(self, groups: dict[str, Any]) -> None:
        self.groups = groups
        self.meters: dict[str, CpuMeter] = {}

    def start(self) -> None:
        self.meters = {}
        for name, pids in self.groups.items():
            meter = CpuMeter({str(pid): pid for pid in pids()})
            meter.start()
            self.meters[name] = meter

    def stop(self) -> dict[str, float]:
        return {name: sum(meter.stop().values()) for name, meter in self.meters.items()}


class Cluster:
    """``python -m actors.cluster``: the leader (tcp, ws, http) and the no-op workers."""

    def __init__(self, args: argparse.Namespace, procs: Processes) -> None:
        self.args = args
        self.procs = procs
        self.tcp_url = self.ws_url = self.http_url = ""
        self.pid = 0

    def start(self) -> None:
        argv = [
            sys.executable, "-m", "actors.cluster", "--memory",
            "--listen", "tcp://127.0.0.1:0", "--listen", "ws://127.0.0.1:0",
            "--http", "127.0.0.1:0", "--worker", f"bench.noop:Noop={self.args.workers}",
            "--drain-grace", "1", "--fail-fast",
        ]  # fmt: skip
        self.pid = self.procs.start("cluster", argv).pid
        self.procs.wait_for("cluster", "cluster ready", timeout=CLUSTER_TIMEOUT)
        lines = (self.procs.log_dir / "cluster.out").read_text().splitlines()
        for line in lines:
            if line.startswith("leader listening on tcp://"):
                self.tcp_url = line.split()[-1]
            elif line.startswith("leader listening on ws://"):
                self.ws_url = line.split()[-1]
            elif line.startswith("http listening on "):
                self.http_url = line.split()[-1].rstrip("/")
        if not (self.tcp_url and self.ws_url and self.http_url):
            raise BenchError(f"the cluster did not print its URLs:\n{self.procs.tail('cluster')}")
        for url, what in ((self.tcp_url, "tcp"), (self.ws_url, "ws"), (self.http_url, "http")):
            _check_loopback(url, what)

    def alive(self) -> None:
        proc = self.procs.procs["cluster"]
        if proc.poll() is not None:
            raise BenchError(
                f"the cluster exited with status {proc.returncode}:\n{self.procs.tail('cluster')}"
            )

    def workers(self) -> list[int]:
        """The pids of the worker processes (the cluster's Python children)."""
        return [pid for pid, comm in descendants(self.pid).items() if comm.startswith("python")]


# ---------------------------------------------------------------------- the two sides


class PythonSide:
    """``actors.Client`` in this process: ``--inflight`` tasks looping ``submit``."""

    def __init__(self, args: argparse.Namespace, cluster: Cluster) -> None:
        self.args = args
        self.cluster = cluster
        self.url = cluster.tcp_url if args.python_transport == "tcp" else cluster.ws_url
        self.name = "python"

    def run_once(self) -> list[dict[str, Any]]:
        import trio

        from actors import Client

        args, cluster = self.args, self.cluster
        meter = TreeMeter(
            {
                "leader": lambda: [cluster.pid],
                "workers": cluster.workers,
                "client": lambda: [os.getpid()],
            }
        )
        rows: list[dict[str, Any]] = []

        async def watch() -> None:
            while True:
                cluster.alive()
                await trio.sleep(0.2)

        async def run() -> None:
            async with Client.connect(self.url, name="bench-python") as client:
                await _drive(client, args.warmup, args.inflight, None, None)
                latencies: list[float] = []
                meter.start()
                start = time.perf_counter()
                await _drive(client, args.jobs, args.inflight, None, latencies)
                seconds = time.perf_counter() - start
                rows.append(summarize("python", seconds, latencies, args.jobs, meter.stop()))
                if args.map:
                    done = 0
                    meter.start()
                    start = time.perf_counter()
                    payloads = itertools.repeat(None, args.jobs)
                    async for _ in client.map(SUBJECT, payloads, limit=args.inflight, qos=1):
                        done += 1
                    seconds = time.perf_counter() - start
                    rows.append(summarize("python (map)", seconds, [], done, meter.stop()))

        async def main() -> None:
            with trio.fail_after(args.deadline):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(watch)
                    await run()
                    nursery.cancel_scope.cancel()

        try:
            trio.run(main)
        except Exception as exc:
            raise BenchError(f"python: the run failed: {_describe(exc)}") from None
        return rows


class PageSide:
    """A Chromium page of the leader's HTTP origin: ``--inflight`` loops of ``submit``."""

    def __init__(self, args: argparse.Namespace, cluster: Cluster) -> None:
        self.args = args
        self.cluster = cluster
        self.name = "page"
        self._playwright: Any = None
        self.browser: Any = None

    def start(self) -> None:
        """Launch Chromium (headless, Debian's binary)."""
        from playwright.sync_api import sync_playwright

        self._playwright = sync_playwright().start()
        self.browser = self._playwright.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS, timeout=30_000
        )

    def stop(self) -> None:
        if self.browser is not None:
            self.browser.close()
        if self._playwright is not None:
            self._playwright.stop()

    def browser_pids(self) -> list[int]:
        """Chromium's processes (below the playwright driver, below this process)."""
        return [pid for pid, comm in descendants(os.getpid()).items() if "chrom" in comm]

    def run_once(self) -> list[dict[str, Any]]:
        args, cluster = self.args, self.cluster
        meter = TreeMeter(
            {
                "leader": lambda: [cluster.pid],
                "workers": cluster.workers,
                "chromium": self.browser_pids,
            }
        )
        context = self.browser.new_context()
        context.set_default_timeout(args.deadline * 1000)
        errors: list[str] = []
        rows: list[dict[str, Any]] = []
        try:
            page = context.new_page()
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            response = page.goto(cluster.http_url + "/healthz")
            if response is None or not response.ok:
                raise BenchError(f"GET {cluster.http_url}/healthz: {response and response.status}")
            common = {
                "subject": SUBJECT,
                "inflight": args.inflight,
                "deadline": int(args.deadline * 1000),
            }
            page.evaluate(JS_CONNECT, {**common, "url": cluster.ws_url})
            if args.warmup:
                page.evaluate(JS_SUBMIT_LOOPS, {**common, "jobs": args.warmup, "timed": False})
            meter.start()
            out = page.evaluate(JS_SUBMIT_LOOPS, {**common, "jobs": args.jobs, "timed": True})
            latencies = [ms / 1e3 for ms in out["latencies"]]
            rows.append(summarize("page", out["ms"] / 1e3, latencies, args.jobs, meter.stop()))
            if args.map:
                meter.start()
                out = page.evaluate(JS_MAP, {**common, "jobs": args.jobs})
                rows.append(summarize("page (map)", out["ms"] / 1e3, [], out["done"], meter.stop()))
            page.evaluate(JS_CLOSE, common)
        except BenchError:
            raise
        except Exception as exc:
            cluster.alive()
            raise BenchError(
                f"page: the run failed: {_describe(exc)}; page errors: {errors}"
            ) from None
        finally:
            context.close()
        if errors:
            raise BenchError(f"page: errors in the page: {errors}")
        return rows


# ---------------------------------------------------------------------- report


def format_table(rows: list[dict[str, Any]]) -> str:
    """The results table: system, jobs, seconds, jobs/s, p50 ms, p99 ms."""
    lines = [f"{'system':<13} {'jobs':>7} {'seconds':>8} {'jobs/s':>9} {'p50 ms':>8} {'p99 ms':>8}"]
    for row in rows:
        timed = row["p50_ms"] == row["p50_ms"]  # (not NaN: the map rows have no latencies)
        p50 = f"{row['p50_ms']:.2f}" if timed else "-"
        p99 = f"{row['p99_ms']:.2f}" if timed else "-"
        lines.append(
            f"{row['system']:<13} {row['jobs']:>7} {row['seconds']:>8.2f} "
            f"{row['jobs_per_s']:>9,.0f} {p50:>8} {p99:>8}"
        )
    return "\n".join(lines)


def page_ratios(median: dict[str, dict[str, Any]]) -> dict[str, float]:
    """page / python throughput, for the submit loops and (if measured) for map."""
    out = {}
    for page, python, key in (("page", "python", "submit"), ("page (map)", "python (map)", "map")):
        if page in median and python in median:
            out[key] = median[page]["jobs_per_s"] / median[python]["jobs_per_s"]
    return out


# ---------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``bench/bench_browser.py``."""
    parser = argparse.ArgumentParser(
        prog="bench/bench_browser.py",
        description="No-op QoS 1 jobs from a Chromium page (actors.js) against the Python client.",
    )
    parser.add_argument("--jobs", type=int, default=5_000, help="measured jobs per run (5000)")
    parser.add_argument("--inflight", type=int, default=64, help="jobs in flight at once (64)")
    parser.add_argument("--workers", type=int, default=2, help="no-op worker processes (2)")
    parser.add_argument("--warmup", type=int, default=500, help="unmeasured jobs first (500)")
    parser.add_argument("--repeat", type=int, default=1, help="runs per side; the median is shown")
    parser.add_argument("--map", action="store_true", help="also time client.map on each side")
    parser.add_argument(
        "--python-transport",
        choices=("tcp", "ws"),
        default="tcp",
        help="the Python client's listener (tcp; the page always uses ws)",
    )
    parser.add_argument("--deadline", type=float, default=300.0, help="seconds per run at most")
    parser.add_argument("--json", action="store_true", help="end with one JSON line of the results")
    parser.add_argument("--logs", metavar="DIR", help="keep the cluster's logs in DIR")
    return parser


def browser_missing() -> str | None:
    """``None`` when Chromium and playwright are installed, else why the page cannot run."""
    if not os.path.exists(CHROMIUM):
        return f"{CHROMIUM} is not installed (Debian: apt-get install chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install -e '.[test]')"
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; print the table and the ratio. Exit status 1 on a failure."""
    parser = build_parser()
    args = parser.parse_args(argv)
    for name in ("jobs", "inflight", "workers", "repeat"):
        if getattr(args, name) < 1:
            parser.error(f"--{name}: expected an integer >= 1")
    if args.warmup < 0:
        parser.error("--warmup: expected an integer >= 0")
    missing = browser_missing()
    if missing is not None:
        print(f"bench_browser: error: {missing}", file=sys.stderr)
        return 1
    if args.logs is not None:
        Path(args.logs).mkdir(parents=True, exist_ok=True)
    signal.signal(signal.SIGTERM, _raise_system_exit)

    results: dict[str, Any] = {
        "jobs": args.jobs,
        "inflight": args.inflight,
        "workers": args.workers,
        "warmup": args.warmup,
        "repeat": args.repeat,
        "python_transport": args.python_transport,
        "cpus": os.cpu_count(),
        "runs": {},
    }
    print(
        f"{args.jobs} no-op QoS 1 jobs, {args.inflight} in flight, {args.workers} worker "
        f"processes, {args.warmup} warm-up jobs, median of {args.repeat} run(s); "
        f"python over {args.python_transport}, the page over ws; {os.cpu_count()} CPUs",
        file=sys.stderr,
    )
    page = None
    try:
        with _log_dir(args.logs, "bench-browser-") as log_dir, Processes(log_dir) as procs:
            cluster = Cluster(args, procs)
            cluster.start()
            page = PageSide(args, cluster)
            page.start()
            results["chromium"] = page.browser.version
            sides = [PythonSide(args, cluster), page]
            # Runs alternate, so that load from elsewhere does not fall on one side only.
            for _ in range(args.repeat):
                for side in sides:
                    for row in side.run_once():
                        print(
                            f"  run: {row['system']:<13} {row['jobs_per_s']:>9,.0f} jobs/s",
                            file=sys.stderr,
                        )
                        results["runs"].setdefault(row["system"], []).append(row)
            page.stop()
            page = None
        results["children"] = procs.started
    except BenchError as exc:
        print(f"bench_browser: error: {exc}", file=sys.stderr)
        return 1
    finally:
        if page is not None:
            page.stop()
    results["median"] = {system: median_run(runs) for system, runs in results["runs"].items()}
    median = list(results["median"].values())
    print(format_table(median))
    print(format_cpu(median))
    results["ratio"] = page_ratios(results["median"])
    parts = [f"{key} {value:.2f}x" for key, value in results["ratio"].items()]
    print(f"page / python: throughput {', '.join(parts)} (chromium {results['chromium']})")
    if args.json:
        print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
