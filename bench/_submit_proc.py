"""A client process of the scale-out benchmark: submits no-op jobs to one leader.

Run by ``bench/bench_scaleout.py``, one per leader::

    python bench/_submit_proc.py --url tcp://127.0.0.1:PORT --jobs 10000 --inflight 64

It connects, sends ``--warmup`` jobs (not measured), prints ``warmed up`` on stderr and
waits for SIGUSR1: the parent starts every client's measured phase at once that way, and
its CPU meters just before. It then submits ``--jobs`` no-op QoS 1 jobs from ``--inflight``
trio tasks, each looping ``await client.submit("bench.noop", None, qos=1)`` and timing its
own calls with :func:`time.perf_counter`, and prints one JSON line on stdout::

    {"start": ..., "end": ..., "seconds": ..., "cpu_seconds": ..., "latencies": [...]}

``start`` and ``end`` are :func:`time.monotonic` readings (one clock for every process of
the machine), taken before the first submit and after the last result: the parent takes the
wall time of a run with several clients from the earliest start to the latest end.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(ROOT) not in sys.path:  # run as a script: make the repository importable
    sys.path.insert(0, str(ROOT))

import trio  # noqa: E402 (after the sys.path line above)

from bench.bench_jobs import _drive  # noqa: E402

#: The signal that starts the measured phase.
GO_SIGNAL = signal.SIGUSR1


async def run(url: str, jobs: int, inflight: int, warmup: int, deadline: float) -> dict[str, Any]:
    """Warm up, wait for :data:`GO_SIGNAL`, time ``jobs`` submits; the measurements.

    Raises:
      trio.TooSlowError: the whole run (the wait for the signal included) took longer than
        ``deadline`` seconds.
    """
    from actors import Client

    with trio.fail_after(deadline), trio.open_signal_receiver(GO_SIGNAL) as signals:
        async with Client.connect(url, name="bench-scaleout") as client:
            await _drive(client, warmup, inflight, None, None)
            print("warmed up", file=sys.stderr, flush=True)
            async for _ in signals:
                break
            latencies: list[float] = []
            cpu = time.process_time()
            start = time.monotonic()
            await _drive(client, jobs, inflight, None, latencies)
            end = time.monotonic()
            cpu = time.process_time() - cpu
    return {
        "start": start,
        "end": end,
        "seconds": end - start,
        "cpu_seconds": cpu,
        "latencies": latencies,
    }


def main(argv: list[str] | None = None) -> int:
    """Entry point: run one client, print its JSON line."""
    parser = argparse.ArgumentParser(prog="bench/_submit_proc.py")
    parser.add_argument("--url", required=True, help="the leader's tcp:// URL")
    parser.add_argument("--jobs", type=int, default=10_000, help="measured jobs (10000)")
    parser.add_argument("--inflight", type=int, default=64, help="submit loops (64)")
    parser.add_argument("--warmup", type=int, default=500, help="unmeasured jobs first (500)")
    parser.add_argument("--deadline", type=float, default=600.0, help="seconds at most (600)")
    args = parser.parse_args(argv)
    result = trio.run(run, args.url, args.jobs, args.inflight, args.warmup, args.deadline)
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
