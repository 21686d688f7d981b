"""The Trio <-> asyncio bridge (``runtime.AsyncioBridge``) against native asyncio, with nats-py.

::

    python bench/bench_bridge.py                 # 20,000 requests and 40,960 publishes, median of 3
    python bench/bench_bridge.py --quick         # a smoke run of a few hundred operations
    python bench/bench_bridge.py --repeat 5      # the median of 5 runs of each variant
    python bench/bench_bridge.py --only guest    # the variants whose "kind: variant" has "guest"

Needs the nats-server on 127.0.0.1:4222 (``--nats-url``); says so and exits 0 when none
answers (the JetStream rows are skipped the same way when the server has no JetStream).
Everything runs in this process, one variant at a time, each on a fresh event loop with
fresh connections:

- **request/reply** (core NATS): a responder subscription on a second connection of the
  same loop answers every request with an empty reply; ``--inflight`` requests at a time:
  - ``native``: plain asyncio, ``--inflight`` tasks each awaiting ``nc.request``;
  - ``native batched``: plain asyncio, one task awaiting batches of ``--inflight`` requests
    (``asyncio.gather``): what batching costs without any crossing;
  - ``guest`` / ``thread``: ``--inflight`` Trio tasks, each crossing once per request
    (``await bridge.run(nc.request, ...)``), with Trio a guest of the asyncio loop
    (:func:`runtime.run_trio_guest`) or the loop in a thread of its own (``trio.run``);
  - ``guest batched`` / ``thread batched``: one Trio task crossing once per batch of
    ``--inflight`` requests (``asyncio.gather`` inside the crossing).
- **JetStream publish**: a file-storage stream on a unique subject, created by the benchmark
  and deleted at its end; batches of ``--js-batch`` publishes, each batch one
  ``asyncio.gather`` of ``js.publish`` (PubAcks awaited): ``native`` awaits each batch in
  asyncio, ``guest batched`` / ``thread batched`` cross once per batch.
- **crossing only**: ``bridge.run(asyncio.sleep, 0)`` from ``--inflight`` Trio tasks, no I/O:
  what one crossing costs in each mode.

Each run sends a warm-up first (not measured); each round of runs starts at another
variant. The table shows the median run (by operations/s) of ``--repeat`` runs and the ratio
to the native row of the same kind.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import socket
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import trio

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(ROOT) not in sys.path:  # run as a script: make the repository importable
    sys.path.insert(0, str(ROOT))

from runtime import AsyncioBridge, open_asyncio_bridge, run_trio_guest  # noqa: E402

DEFAULT_NATS_URL = "nats://127.0.0.1:4222"
#: Seconds a single request or publish may take before the run fails.
OP_TIMEOUT = 10.0
PAYLOAD = b"x" * 256


# --- the asyncio side: connections, a responder, a stream ---------------------------------


class NatsSide:
    """The connections of one run, opened on the loop the run uses."""

    def __init__(self, url: str, with_stream: str | None) -> None:
        self.url = url
        self.subject = f"bench.bridge.req.{uuid.uuid4().hex}"
        self.js_subject = f"bench.bridge.js.{with_stream}" if with_stream else ""
        self.stream = with_stream
        self.nc: Any = None
        self.responder: Any = None
        self.js: Any = None

    async def open(self) -> None:
        """Connect, subscribe the responder, and make sure the server has the subscription."""
        import nats

        connect = functools.partial(nats.connect, self.url, allow_reconnect=False)
        self.nc = await connect(name="bench-bridge")
        self.responder = await connect(name="bench-bridge-responder")

        async def answer(msg: Any) -> None:
            await msg.respond(b"")

        await self.responder.subscribe(self.subject, cb=answer, pending_msgs_limit=1_000_000)
        await self.responder.flush()
        await self._wait_for_the_responder()
        if self.stream:
            self.js = self.nc.jetstream()

    async def _wait_for_the_responder(self, attempts: int = 20) -> None:
        """A first request answered: the server routes the subject (once it answered 503)."""
        import nats

        for _ in range(attempts - 1):
            try:
                await self.request()
            except nats.errors.NoRespondersError:
                await asyncio.sleep(0.05)
            else:
                return
        await self.request()

    async def close(self) -> None:
        """Close both connections."""
        for nc in (self.nc, self.responder):
            if nc is not None:
                await nc.close()

    async def request(self) -> None:
        """One request, its reply awaited."""
        await self.nc.request(self.subject, PAYLOAD, OP_TIMEOUT)

    async def requests(self, count: int) -> None:
        """``count`` requests at once (one crossing's worth)."""
        await asyncio.gather(*(self.request() for _ in range(count)))

    async def publishes(self, count: int) -> None:
        """``count`` JetStream publishes at once, every PubAck awaited."""
        js, subject = self.js, self.js_subject
        await asyncio.gather(
            *(js.publish(subject, PAYLOAD, timeout=OP_TIMEOUT) for _ in range(count))
        )


def _split(total: int, parts: int) -> list[int]:
    """``total`` as ``parts`` nearly equal counts (none empty)."""
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts) if base or i < extra]


def _chunks(total: int, size: int) -> Iterator[int]:
    while total > 0:
        yield min(size, total)
        total -= size


# --- the variants ---------------------------------------------------------------------------
# Each one is (kind, name, runner); a runner is given (url, stream, ops, args) and returns the
# seconds the measured part took.


async def _native_requests(side: NatsSide, ops: int, args: argparse.Namespace) -> None:
    async def worker(count: int) -> None:
        for _ in range(count):
            await side.request()

    await asyncio.gather(*(worker(count) for count in _split(ops, args.inflight)))


async def _native_batched_requests(side: NatsSide, ops: int, args: argparse.Namespace) -> None:
    for count in _chunks(ops, args.inflight):
        await side.requests(count)


async def _native_publishes(side: NatsSide, ops: int, args: argparse.Namespace) -> None:
    for count in _chunks(ops, args.js_batch):
        await side.publishes(count)


async def _bridged_requests(
    bridge: AsyncioBridge, side: NatsSide, ops: int, args: argparse.Namespace
) -> None:
    async def worker(count: int) -> None:
        for _ in range(count):
            await bridge.run(side.request)

    async with trio.open_nursery() as nursery:
        for count in _split(ops, args.inflight):
            nursery.start_soon(worker, count)


async def _batched_requests(
    bridge: AsyncioBridge, side: NatsSide, ops: int, args: argparse.Namespace
) -> None:
    for count in _chunks(ops, args.inflight):
        await bridge.run(side.requests, count)


async def _batched_publishes(
    bridge: AsyncioBridge, side: NatsSide, ops: int, args: argparse.Namespace
) -> None:
    for count in _chunks(ops, args.js_batch):
        await bridge.run(side.publishes, count)


async def _crossings(
    bridge: AsyncioBridge, side: NatsSide | None, ops: int, args: argparse.Namespace
) -> None:
    async def worker(count: int) -> None:
        for _ in range(count):
            await bridge.run(asyncio.sleep, 0)

    async with trio.open_nursery() as nursery:
        for count in _split(ops, args.inflight):
            nursery.start_soon(worker, count)


NativeBody = Callable[[NatsSide, int, argparse.Namespace], Awaitable[None]]
BridgedBody = Callable[[AsyncioBridge, Any, int, argparse.Namespace], Awaitable[None]]


def run_native(
    body: NativeBody, url: str, stream: str | None, ops: int, args: argparse.Namespace
) -> float:
    """Run ``body`` on a fresh asyncio loop; the seconds its measured part took."""

    async def main() -> float:
        side = NatsSide(url, stream)
        await side.open()
        try:
            await body(side, args.warmup_for(ops), args)
            start = time.perf_counter()
            await body(side, ops, args)
            return time.perf_counter() - start
        finally:
            await side.close()

    return asyncio.run(main())


def run_bridged(
    mode: str,
    body: BridgedBody,
    url: str,
    stream: str | None,
    ops: int,
    args: argparse.Namespace,
    nats: bool = True,
) -> float:
    """Run ``body`` in Trio with a bridge in ``mode``; the seconds its measured part took."""

    async def main() -> float:
        async with open_asyncio_bridge() as bridge:
            assert bridge.mode == mode, bridge.mode
            side = NatsSide(url, stream) if nats else None
            if side is not None:
                await bridge.run(side.open)
            try:
                await body(bridge, side, args.warmup_for(ops), args)
                start = time.perf_counter()
                await body(bridge, side, ops, args)
                return time.perf_counter() - start
            finally:
                if side is not None:
                    await bridge.run(side.close)

    return run_trio_guest(main) if mode == "guest" else trio.run(main)


@functools.cache
def _variants() -> list[tuple[str, str, Callable[..., float]]]:
    p = functools.partial
    return [
        ("request/reply", "native", p(run_native, _native_requests)),
        ("request/reply", "native batched", p(run_native, _native_batched_requests)),
        ("request/reply", "guest", p(run_bridged, "guest", _bridged_requests)),
        ("request/reply", "thread", p(run_bridged, "thread", _bridged_requests)),
        ("request/reply", "guest batched", p(run_bridged, "guest", _batched_requests)),
        ("request/reply", "thread batched", p(run_bridged, "thread", _batched_requests)),
        ("JetStream publish", "native", p(run_native, _native_publishes)),
        ("JetStream publish", "guest batched", p(run_bridged, "guest", _batched_publishes)),
        ("JetStream publish", "thread batched", p(run_bridged, "thread", _batched_publishes)),
        ("crossing only", "guest", p(run_bridged, "guest", _crossings, nats=False)),
        ("crossing only", "thread", p(run_bridged, "thread", _crossings, nats=False)),
    ]


# --- the server: is it there, has it JetStream --------------------------------------------


def nats_answers(url: str) -> bool:
    """Whether a NATS server answers at ``url`` (its INFO line), within a second."""
    parts = urlsplit(url)
    try:
        with socket.create_connection(
            (parts.hostname or "127.0.0.1", parts.port or 4222), 1.0
        ) as s:
            s.settimeout(1.0)
            return s.recv(4) == b"INFO"
    except OSError:
        return False


async def _create_stream(url: str, stream: str) -> str | None:
    """Create the benchmark's stream; None, or why JetStream cannot be used."""
    import nats
    from nats.js.errors import Error as JetStreamError

    nc = await nats.connect(url, allow_reconnect=False)
    try:
        await nc.jetstream().add_stream(name=stream, subjects=[f"bench.bridge.js.{stream}"])
    except (JetStreamError, nats.errors.Error) as error:
        return f"{type(error).__name__}: {error}"
    finally:
        await nc.close()
    return None


async def _delete_stream(url: str, stream: str) -> None:
    import nats

    nc = await nats.connect(url, allow_reconnect=False)
    try:
        await nc.jetstream().delete_stream(stream)
    finally:
        await nc.close()


# --- the command line -------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The command line (see the module's text)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=20_000, help="measured requests (20000)")
    parser.add_argument("--publishes", type=int, default=40_960, help="measured publishes (40960)")
    parser.add_argument("--crossings", type=int, default=50_000, help="measured crossings (50000)")
    parser.add_argument("--inflight", type=int, default=32, help="requests at once (32)")
    parser.add_argument("--js-batch", type=int, default=256, help="publishes per crossing (256)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each variant (3)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: a few hundred ops, once")
    parser.add_argument(
        "--only", metavar="TEXT", help="only the variants whose 'kind: variant' contains TEXT"
    )
    parser.add_argument("--nats-url", default=DEFAULT_NATS_URL, help=f"({DEFAULT_NATS_URL})")
    return parser


def _ops(kind: str, args: argparse.Namespace) -> int:
    counts: dict[str, int] = {
        "request/reply": args.requests,
        "JetStream publish": args.publishes,
        "crossing only": args.crossings,
    }
    return counts[kind]


def main(argv: Sequence[str] | None = None) -> int:
    """Run every variant ``--repeat`` times, interleaved, and print the table."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.quick:
        args.requests, args.publishes, args.crossings, args.repeat = 320, 512, 320, 1
    counts = (args.requests, args.publishes, args.crossings, args.inflight, args.js_batch)
    if min(*counts, args.repeat) < 1:
        parser.error("every count must be at least 1")
    # A tenth as warm-up, at least one batch of each kind.
    args.warmup_for = lambda ops: max(ops // 10, args.inflight, args.js_batch)
    variants = [v for v in _variants() if args.only is None or args.only in f"{v[0]}: {v[1]}"]
    if not variants:
        parser.error(f"no variant matches --only {args.only!r}")

    if not nats_answers(args.nats_url):
        print(f"skipped: no NATS server answers at {args.nats_url}")
        return 0
    stream: str | None = None
    if any(kind == "JetStream publish" for kind, _, _ in variants):
        stream = f"BENCH_BRIDGE_{uuid.uuid4().hex[:12]}"
        why_not = asyncio.run(_create_stream(args.nats_url, stream))
        if why_not is not None:
            print(f"JetStream rows skipped: cannot create a stream ({why_not})")
            stream = None
            variants = [v for v in variants if v[0] != "JetStream publish"]

    rates: dict[tuple[str, str], list[float]] = {(kind, name): [] for kind, name, _ in variants}
    try:
        for round_number in range(args.repeat):
            # Each round starts at another variant: no variant always runs first (cold).
            start = round_number % len(variants)
            for kind, name, run in variants[start:] + variants[:start]:
                ops = _ops(kind, args)
                seconds = run(args.nats_url, stream, ops, args)
                rates[kind, name].append(ops / seconds)
    finally:
        if stream is not None:
            asyncio.run(_delete_stream(args.nats_url, stream))
    _print_table(rates, args)
    return 0


def _print_table(rates: dict[tuple[str, str], list[float]], args: argparse.Namespace) -> None:
    print(
        f"{args.requests} requests at {args.inflight} in flight, {args.publishes} publishes in "
        f"batches of {args.js_batch}, {args.crossings} crossings; median of {args.repeat} run(s)"
    )
    print(f"{'kind':<18} {'variant':<15} {'ops':>7} {'ops/s':>9} {'µs/op':>7} {'ratio':>7}")
    for (kind, name), runs in rates.items():
        rate = statistics.median(runs)
        native = rates.get((kind, "native"))
        ratio = f"{rate / statistics.median(native):.2f}x" if native else "-"
        ops = _ops(kind, args)
        print(f"{kind:<18} {name:<15} {ops:>7} {rate:>9,.0f} {1e6 / rate:>7.1f} {ratio:>7}")
    print("ratio: the variant's operations/s over native asyncio's (1.00x = as fast as native)")


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
