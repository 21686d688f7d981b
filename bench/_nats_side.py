"""The NATS half of the job benchmark: nats-py request/reply to a queue group.

Run by ``bench/bench_jobs.py`` as subprocesses (nats-py is asyncio, our side is trio)::

    python bench/_nats_side.py worker --url nats://127.0.0.1:4222
    python bench/_nats_side.py client --url nats://127.0.0.1:4222 --jobs 20000 --inflight 64

A worker subscribes to ``bench.noop`` in the queue group ``workers`` and answers every
request with an empty reply; it prints ``ready`` once the server has its subscription,
and runs until SIGTERM / SIGINT.

``js-worker``, ``js-client`` and ``js-delete`` are the JetStream half of
``bench/bench_durable.py`` (a work-queue stream with file storage, a pull consumer with
explicit acks; see :func:`run_js_worker` and :func:`run_js_client`)::

    python bench/_nats_side.py js-worker --stream BENCH_X --subject bench.durable.x
    python bench/_nats_side.py js-client --subject bench.durable.x --jobs 20000 --inflight 64
    python bench/_nats_side.py js-delete --stream BENCH_X

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
import contextlib
import itertools
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


# ---------------------------------------------------------------------- JetStream
#
# The JetStream half of ``bench/bench_durable.py``: a job is a message on a work-queue
# stream with file storage, accepted once its PubAck says it is stored; a worker takes it
# with a pull consumer (explicit acks), "runs" it, publishes the result on the core NATS
# subject the job names, then acks it. The client times submit -> result, as ours.

#: The durable pull consumer the JetStream workers share.
JS_CONSUMER = "workers"
#: Seconds a worker's fetch waits for messages before it asks again.
JS_FETCH_TIMEOUT = 1.0


async def run_js_worker(
    url: str, stream: str, subject: str, batch: int, parent_pid: int | None
) -> None:
    """Create ``stream`` and its consumer, serve its jobs until a signal, delete the stream.

    The stream: ``subjects=[subject]``, work-queue retention, file storage (what makes a job
    durable on JetStream). The consumer: durable, pull, explicit acks. One task loops
    ``fetch(batch)`` (fetches of one pull subscription must not overlap in nats-py: two
    loops took turns of a whole fetch timeout); for every message the worker publishes an
    empty result on the subject the message's payload names, then acks the message
    (``ack()``, not waiting for the server's reply). Prints ``ready`` once the consumer
    exists.
    """
    import nats
    from nats.errors import TimeoutError as NatsTimeoutError
    from nats.js.api import (
        AckPolicy,
        ConsumerConfig,
        RetentionPolicy,
        StorageType,
        StreamConfig,
    )

    nc = await nats.connect(url, name="bench-js-worker", allow_reconnect=False)
    js = nc.jetstream()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        await js.add_stream(
            StreamConfig(
                name=stream,
                subjects=[subject],
                retention=RetentionPolicy.WORK_QUEUE,
                storage=StorageType.FILE,
                num_replicas=1,
            )
        )
        psub = await js.pull_subscribe(
            subject,
            durable=JS_CONSUMER,
            stream=stream,
            config=ConsumerConfig(
                durable_name=JS_CONSUMER,
                ack_policy=AckPolicy.EXPLICIT,
                max_ack_pending=max(1_000, 4 * batch),
            ),
            pending_msgs_limit=1_000_000,
        )
        publish = nc.publish

        async def fetch_loop() -> None:
            while True:
                try:
                    msgs = await psub.fetch(batch, timeout=JS_FETCH_TIMEOUT)
                except (TimeoutError, NatsTimeoutError):
                    continue
                for msg in msgs:
                    await publish(msg.data.decode(), b"")  # the job's (empty) result
                    await msg.ack()

        async def watch_parent() -> None:
            while os.getppid() == parent_pid:  # noqa: ASYNC110 (no event for a parent's exit)
                await asyncio.sleep(1.0)
            stop.set()

        tasks = [asyncio.create_task(fetch_loop())]
        if parent_pid is not None:
            tasks.append(asyncio.create_task(watch_parent()))
        await nc.flush()
        print("ready", flush=True)
        waiter = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait([waiter, *tasks], return_when=asyncio.FIRST_COMPLETED)
        for task in [waiter, *tasks]:
            task.cancel()
        for task in done:  # a fetch loop that failed: say why
            if task is not waiter and not task.cancelled() and task.exception() is not None:
                raise task.exception()
    finally:
        with contextlib.suppress(Exception):
            await js.delete_stream(stream)
            print(f"deleted stream {stream}", flush=True)
        await nc.close()


async def run_js_client(
    url: str,
    subject: str,
    jobs: int,
    inflight: int,
    warmup: int,
    per_request: float,
    settle: float = 0.0,
) -> dict:
    """Submit ``warmup`` then ``jobs`` jobs to the stream on ``subject``, ``inflight`` at a
    time, each awaiting its PubAck (stored) and then its result; the measurements.
    """
    import nats

    nc = await nats.connect(url, name="bench-js-client", allow_reconnect=False)
    try:
        js = nc.jetstream(timeout=per_request)
        inbox = nc.new_inbox()
        waiters: dict[str, asyncio.Future[None]] = {}

        async def on_result(msg) -> None:
            future = waiters.pop(msg.subject, None)
            if future is not None and not future.done():
                future.set_result(None)

        await nc.subscribe(f"{inbox}.*", cb=on_result, pending_msgs_limit=1_000_000)
        await nc.flush()
        await _drive_js(js, subject, inbox, waiters, warmup, inflight, None)
        latencies: list[float] = []
        print("warmed up", file=sys.stderr, flush=True)  # profilers may attach now
        await asyncio.sleep(settle)
        cpu = time.process_time()
        start = time.perf_counter()
        await _drive_js(js, subject, inbox, waiters, jobs, inflight, latencies)
        seconds = time.perf_counter() - start
        cpu = time.process_time() - cpu
    finally:
        await nc.close()
    return {"seconds": seconds, "cpu_seconds": cpu, "latencies": latencies}


_js_job_numbers = itertools.count()


async def _drive_js(
    js,
    subject: str,
    inbox: str,
    waiters: dict[str, asyncio.Future[None]],
    jobs: int,
    inflight: int,
    latencies: list[float] | None,
) -> None:
    remaining = jobs
    clock = time.perf_counter
    publish = js.publish
    loop = asyncio.get_running_loop()

    async def one_task() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            t0 = clock()
            reply = f"{inbox}.{next(_js_job_numbers)}"
            waiters[reply] = result = loop.create_future()
            await publish(subject, reply.encode())  # returns once the stream stored it
            await result
            if latencies is not None:
                latencies.append(clock() - t0)

    await asyncio.gather(*(one_task() for _ in range(min(inflight, max(jobs, 1)))))


async def delete_js_streams(url: str, streams: list[str]) -> None:
    """Delete the benchmark's streams that are still there (a worker that was killed)."""
    import nats
    from nats.js.errors import NotFoundError

    nc = await nats.connect(url, name="bench-js-cleanup", allow_reconnect=False)
    try:
        js = nc.jetstream()
        for stream in streams:
            try:
                await js.delete_stream(stream)
            except NotFoundError:
                continue
            print(f"deleted stream {stream}", flush=True)
    finally:
        await nc.close()


def main(argv: list[str] | None = None) -> int:
    """Entry point: ``worker`` or ``client`` mode (NATS request/reply); ``js-worker``,
    ``js-client`` or ``js-delete`` (JetStream, for ``bench/bench_durable.py``).
    """
    parser = argparse.ArgumentParser(prog="bench/_nats_side.py")
    parser.add_argument("mode", choices=("worker", "client", "js-worker", "js-client", "js-delete"))
    parser.add_argument("--url", default=DEFAULT_URL)
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--inflight", type=int, default=64)
    parser.add_argument("--warmup", type=int, default=1_000)
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds per request")
    parser.add_argument("--settle", type=float, default=0.0, help="client: pause after warm-up")
    parser.add_argument("--parent-pid", type=int, help="worker: exit when this process is gone")
    parser.add_argument(
        "--stream", action="append", default=[], help="js-*: the stream (js-delete: repeatable)"
    )
    parser.add_argument("--subject", default="bench.durable", help="js-*: the jobs' subject")
    parser.add_argument("--batch", type=int, default=64, help="js-worker: messages per fetch")
    args = parser.parse_args(argv)
    if args.mode == "js-worker":
        (stream,) = args.stream
        asyncio.run(run_js_worker(args.url, stream, args.subject, args.batch, args.parent_pid))
        return 0
    if args.mode == "js-delete":
        asyncio.run(delete_js_streams(args.url, args.stream))
        return 0
    if args.mode == "js-client":
        result = asyncio.run(
            run_js_client(
                args.url,
                args.subject,
                args.jobs,
                args.inflight,
                args.warmup,
                args.timeout,
                args.settle,
            )
        )
        sys.stdout.write(json.dumps(result) + "\n")
        sys.stdout.flush()
        return 0
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
