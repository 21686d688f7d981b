"""Micro-benchmark of the protocol layer: encode/decode rates and subject index lookups.

Run from the repository root::

    python bench/bench_protocol.py            # about 15 s
    python bench/bench_protocol.py --quick    # about 3 s

It prints three tables. "encode" builds whole frames with ``protocol.encode``; "decode" feeds
the frames to a ``FrameDecoder`` in batches of ``BATCH`` frames (one ``feed`` call per
batch, as a reader task would with a 64 KiB receive buffer); "round trip" is both, per
message. The bundled table does the same with ``BATCH`` messages per frame, as version 2
connections send them (``encode_item`` for each, ``bundle_frames`` for the lot). Lookups go through ``SubjectIndex.match`` against 10,000 registered patterns,
with the answer cache on (a hot subject set, as under steady traffic) and off (every
lookup walks the trie).

``--micro`` adds a table of microseconds per call for each hot kind: ``encode_body`` and
``decode_body`` (the fast path), the same through the generic reference implementation kept
in ``protocol._codec`` (what the codec did before the generated per-class code), and what
cbor2 alone costs (``dumps`` of the wire map, ``loads`` of the body): the floor under both.
"""

from __future__ import annotations

import argparse
import gc
import importlib.metadata
import platform
import random
import sys
import time
import timeit
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import cbor2  # noqa: E402

import protocol  # noqa: E402
from protocol import (  # noqa: E402
    Ack,
    Assign,
    Credit,
    FrameDecoder,
    Nack,
    Progress,
    Result,
    SubjectIndex,
    Submit,
)
from tests.protocol_reference import _reference_decode_body, _reference_encode_body  # noqa: E402

BATCH = 100
PATTERNS = 10_000


JOB_ID = "7f3c9a6e-2b1d-4c8e-9f0a-1b2c3d4e5f60"


def typical_messages(*, all_hot: bool = False) -> dict[str, protocol.Message]:
    """One typical message of each hot kind: a small job, its assignment, its result (and
    with ``all_hot``, the small replies a worker sends: Ack, Nack, Credit, Progress)."""
    payload = {"n": 7, "user": "u-1042", "items": [1, 2, 3, 4], "opts": {"fast": True}}
    small: dict[str, protocol.Message] = {
        "Ack": Ack(mid=40_004, cid=20_002, job_id=JOB_ID),
        "Nack": Nack(mid=40_005, cid=20_002, job_id=JOB_ID, delay=1.5, reason="busy"),
        "Credit": Credit(mid=40_006, credit=16),
        "Progress": Progress(mid=40_007, job_id=JOB_ID, fraction=0.5, note="half"),
    }
    return {
        "Submit": Submit(
            mid=10_001,
            job_id=JOB_ID,
            subject="math.square",
            payload=payload,
            headers={"key": "u-1042"},
            timeout=30.0,
        ),
        "Assign": Assign(
            mid=20_002,
            job_id=JOB_ID,
            subject="math.square",
            payload=payload,
            headers={"key": "u-1042"},
            attempt=1,
            ack_timeout=30.0,
        ),
        "Result": Result(
            mid=30_003,
            cid=20_002,
            job_id=JOB_ID,
            payload={"square": 49},
        ),
        **(small if all_hot else {}),
    }


def rate(work: Callable[[], int], seconds: float) -> float:
    """Operations per second of ``work`` (which returns how many it did), best of 3."""
    best = 0.0
    for _ in range(3):
        gc.collect()
        done = 0
        start = time.perf_counter()
        deadline = start + seconds / 3
        while True:
            done += work()
            now = time.perf_counter()
            if now >= deadline:
                break
        best = max(best, done / (now - start))
    return best


def bench_codec(message: protocol.Message, seconds: float) -> tuple[int, float, float, float]:
    frame = protocol.encode(message)
    batch = frame * BATCH

    def encode() -> int:
        enc = protocol.encode
        for _ in range(BATCH):
            enc(message)
        return BATCH

    def decode() -> int:
        decoder = FrameDecoder()
        out = decoder.feed(batch)
        assert len(out) == BATCH
        return BATCH

    def round_trip() -> int:
        enc = protocol.encode
        decoder = FrameDecoder()
        out = decoder.feed(b"".join([enc(message) for _ in range(BATCH)]))
        assert out[-1] == message
        return BATCH

    return len(frame), rate(encode, seconds), rate(decode, seconds), rate(round_trip, seconds)


def bench_bundled(message: protocol.Message, seconds: float) -> tuple[float, float, float]:
    """Per message: item bytes in a bundle of ``BATCH``, items encoded per second (as a
    bundling connection does: each alone, then one frame for all), decoded per second."""
    items = [protocol.encode_item(message)] * BATCH
    (frame,) = protocol.bundle_frames(items, protocol.DEFAULT_MAX_FRAME_SIZE)

    def encode() -> int:
        enc = protocol.encode_item
        protocol.bundle_frames(
            [enc(message) for _ in range(BATCH)], protocol.DEFAULT_MAX_FRAME_SIZE
        )
        return BATCH

    def decode() -> int:
        out = FrameDecoder().feed(frame)
        assert len(out) == BATCH
        return BATCH

    return len(items[0]), rate(encode, seconds), rate(decode, seconds)


def per_call_us(funcs: list[Callable[[], object]], seconds: float) -> list[float]:
    """Microseconds per call of each of ``funcs``: the best of many short timeit runs, taken
    in turns (so that a burst of load elsewhere does not fall on one of them only)."""
    # Runs of about 2 ms each: short enough to fall between bursts of load from elsewhere.
    numbers = [max(10, int(0.002 / (timeit.timeit(f, number=100) / 100))) for f in funcs]
    best = [float("inf")] * len(funcs)
    deadline = time.perf_counter() + seconds * len(funcs)
    rounds = 0
    while rounds < 5 or time.perf_counter() < deadline:
        rounds += 1
        for i, (func, number) in enumerate(zip(funcs, numbers, strict=True)):
            best[i] = min(best[i], timeit.timeit(func, number=number) / number * 1e6)
    return best


def bench_micro(seconds: float) -> None:
    """Per kind: fast path, reference path and cbor2 alone, in microseconds per call."""
    options = protocol._codec._DECODER_OPTIONS
    dumps, loads = cbor2.dumps, cbor2.loads
    print(
        f"{'us per call':<11} {'encode':>7} {'(ref)':>7} {'dumps':>7}"
        f" {'decode':>7} {'(ref)':>7} {'loads':>7}"
    )
    for name, message in typical_messages(all_hot=True).items():
        body = protocol.encode_body(message)
        wire = protocol.to_wire(message)
        figures = per_call_us(
            [
                lambda m=message: protocol.encode_body(m),
                lambda m=message: _reference_encode_body(m),
                lambda w=wire: dumps(w),
                lambda b=body: protocol.decode_body(b),
                lambda b=body: _reference_decode_body(b),
                lambda b=body: loads(b, **options),
            ],
            seconds,
        )
        print(f"{name:<11} " + " ".join(f"{f:>7.2f}" for f in figures))
    print(
        "(ref) = the generic reference path (the codec before the generated code);"
        " dumps/loads = cbor2 alone, the floor."
    )


def build_index(cache_capacity: int) -> tuple[SubjectIndex, list[str]]:
    """10,000 patterns in the shapes workers use, and subjects that hit them."""
    rng = random.Random(42)
    index = SubjectIndex(cache_capacity=cache_capacity)
    services = [f"svc{i}" for i in range(100)]
    subjects = []
    for i in range(PATTERNS):
        service = services[i % len(services)]
        shape = i % 10
        if shape < 6:  # literal: svcN.opM
            pattern = f"{service}.op{i}"
            subjects.append(pattern)
        elif shape < 8:  # one wildcard: svcN.*.opM
            pattern = f"{service}.*.op{i}"
            subjects.append(f"{service}.eu.op{i}")
        elif shape < 9:  # tail wildcard: svcN.groupM.>
            pattern = f"{service}.group{i}.>"
            subjects.append(f"{service}.group{i}.a.b")
        else:  # wildcard first: *.eventM
            pattern = f"*.event{i}"
            subjects.append(f"{rng.choice(services)}.event{i}")
        index.add(pattern, f"worker-{i}")
    subjects += [f"{rng.choice(services)}.nothing.here{i}" for i in range(1000)]  # misses
    rng.shuffle(subjects)
    return index, subjects


def bench_index(cache_capacity: int, seconds: float) -> tuple[float, float]:
    index, subjects = build_index(cache_capacity)
    hot = subjects[: min(len(subjects), cache_capacity or len(subjects))]
    matches = sum(len(index.match(s)) for s in hot) / len(hot)

    def lookups() -> int:
        match = index.match
        for subject in hot:
            match(subject)
        return len(hot)

    return rate(lookups, seconds), matches


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="shorter runs (noisier numbers)")
    parser.add_argument(
        "--micro", action="store_true", help="also time each hot kind's encode/decode per call"
    )
    parser.add_argument(
        "--all-kinds", action="store_true", help="table rows for Ack, Nack, Credit, Progress too"
    )
    args = parser.parse_args()
    seconds = 0.4 if args.quick else 2.0

    print(
        f"Python {platform.python_version()} on {platform.machine()}, "
        f"cbor2 {_cbor2_version()} (compiled extension: {_cbor2_is_c()})"
    )
    print()
    print("one message per frame (protocol version 1, and any Hello/Welcome)")
    print(f"{'message':<10} {'frame B':>8} {'encode/s':>12} {'decode/s':>12} {'round trip/s':>14}")
    for name, message in typical_messages(all_hot=args.all_kinds).items():
        size, enc, dec, both = bench_codec(message, seconds)
        print(f"{name:<10} {size:>8} {enc:>12,.0f} {dec:>12,.0f} {both:>14,.0f}")
    print()
    print(f"bundled, {BATCH} messages per frame (version 2): per message")
    print(f"{'message':<10} {'item B':>8} {'encode/s':>12} {'decode/s':>12}")
    for name, message in typical_messages(all_hot=args.all_kinds).items():
        size, enc, dec = bench_bundled(message, seconds)
        print(f"{name:<10} {size:>8} {enc:>12,.0f} {dec:>12,.0f}")
    print()
    if args.micro:
        bench_micro(0.1 if args.quick else 0.3)
        print()
    print(f"SubjectIndex with {PATTERNS:,} patterns")
    print(f"{'cache':<28} {'lookups/s':>12} {'matches/lookup':>15}")
    for label, capacity in (("on (4096 hot subjects)", 4096), ("off (every lookup walks)", 0)):
        per_second, matches = bench_index(capacity, seconds)
        print(f"{label:<28} {per_second:>12,.0f} {matches:>15.2f}")


def _cbor2_is_c() -> bool:
    return any(name.endswith("_cbor2") for name in sys.modules)


def _cbor2_version() -> str:
    """cbor2's version: its encoder and decoder are most of the codec's time, and differ a
    lot between releases (5.x is C, 6.x is Rust), so figures from two machines only compare
    with the same one."""
    try:
        return importlib.metadata.version("cbor2")
    except importlib.metadata.PackageNotFoundError:
        return "(unknown version)"


if __name__ == "__main__":
    main()
