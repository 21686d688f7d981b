"""The NATS half of the job benchmark: nats-py request/reply to a queue group.

Run by ``bench/bench_jobs.py`` as subprocesses (nats-py is asyncio, our side is trio)::

    python bench/_nats_side.py worker --url nats://127.0.0.1:4222
    python bench/_nats_side.py client --url nats://127.0.0.1:4222 --jobs 20000 --inflight 64

A worker subscribes to ``bench.noop`` in the queue group ``workers`` and answers every
request with an empty reply; it prints ``ready`` once the server has its subscription,
and runs until SIGTERM / SIGINT.

The client sends ``--warmup`` requests (not measured), prints ``warmed up`` on stderr,
pauses ``--settle`` seconds (time for profilers to attach), then sends ``--jobs`` requests from
``--inflight`` concurrent tasks, each timing its own requests with
:func:`time.perf_counter`, and prints one JSON line: ``{"seconds": wall, "cpu_seconds": own CPU,
"latencies": [...]}`` (all in seconds). The parent computes the statistics, the same way
for both systems.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time

#: The subject and queue group of the benchmark's no-op jobs.
SUBJECT = "bench.noop"
QUEUE = "workers"
DEFAULT_URL = "nats://127.0.0.1:4222"


async def run_worker(url: str, parent_pid: int | None) -> None:
    """Answer every request on :data:`SUBJECT` (queue group :data:`QUEUE`) until a signal.

    With ``parent_pid``, also stop when that process goes away (the benchmark was killed).
    """
    import nats

    nc = await nats.connect(url, name="bench-worker", allow_reconnect=False)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)

    async def watch_parent() -> None:
        while os.getppid() == parent_pid:  # noqa: ASYNC110 (no event for a parent's exit)
            await asyncio.sleep(1.0)
        stop.set()

    watcher = asyncio.create_task(watch_parent()) if parent_pid is not None else None

    async def answer(msg) -> None:
        await msg.respond(b"")

    # Pending limits high enough that 64 in flight never hit the slow-consumer limits.
    await nc.subscribe(SUBJECT, queue=QUEUE, cb=answer, pending_msgs_limit=1_000_000)
    await nc.flush()  # the server has the subscription: requests will reach us
    print("ready", flush=True)
    await stop.wait()
    if watcher is not None:
        watcher.cancel()
    await nc.drain()


async def run_client(
    url: str, jobs: int, inflight: int, warmup: int, per_request: float, settle: float = 0.0
) -> dict:
    """Send ``warmup`` then ``jobs`` requests, ``inflight`` at a time; the measurements."""
    import nats

    nc = await nats.connect(url, name="bench-client", allow_reconnect=False)
    try:
        await _drive(nc, warmup, inflight, per_request, None)
        latencies: list[float] = []
        print("warmed up", file=sys.stderr, flush=True)  # profilers may attach now
        await asyncio.sleep(settle)
        cpu = time.process_time()
        start = time.perf_counter()
        await _drive(nc, jobs, inflight, per_request, latencies)
        seconds = time.perf_counter() - start
        cpu = time.process_time() - cpu
    finally:
        await nc.close()
    return {"seconds": seconds, "cpu_seconds": cpu, "latencies": latencies}


async def _drive(
    nc, jobs: int, inflight: int, per_request: float, latencies: list[float] | None
) -> None:
    remaining = jobs
    clock = time.perf_counter
    request = nc.request

    async def one_task() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            t0 = clock()
            await request(SUBJECT, b"", timeout=per_request)
            if latencies is not None:
                latencies.append(clock() - t0)

    await asyncio.gather(*(one_task() for _ in range(min(inflight, max(jobs, 1)))))


def main(argv: list[str] | None = None) -> int:
    """Entry point: ``worker`` or ``client`` mode."""
    parser = argparse.ArgumentParser(prog="bench/_nats_side.py")
    parser.add_argument("mode", choices=("worker", "client"))
    parser.add_argument("--url", default=DEFAULT_URL)
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--inflight", type=int, default=64)
    parser.add_argument("--warmup", type=int, default=1_000)
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds per request")
    parser.add_argument("--settle", type=float, default=0.0, help="client: pause after warm-up")
    parser.add_argument("--parent-pid", type=int, help="worker: exit when this process is gone")
    args = parser.parse_args(argv)
    if args.mode == "worker":
        asyncio.run(run_worker(args.url, args.parent_pid))
        return 0
    result = asyncio.run(
        run_client(args.url, args.jobs, args.inflight, args.warmup, args.timeout, args.settle)
    )
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
