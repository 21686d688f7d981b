"""Micro-benchmark of the protocol layer: encode/decode rates and subject index lookups.

Run from the repository root::

    python bench/bench_protocol.py            # about 15 s
    python bench/bench_protocol.py --quick    # about 3 s

It prints one table. "encode" builds whole frames with ``protocol.encode``; "decode" feeds
the frames to a ``FrameDecoder`` in batches of ``BATCH`` frames (one ``feed`` call per
batch, as a reader task would with a 64 KiB receive buffer); "round trip" is both, per
message. Lookups go through ``SubjectIndex.match`` against 10,000 registered patterns,
with the answer cache on (a hot subject set, as under steady traffic) and off (every
lookup walks the trie).
"""

from __future__ import annotations

import argparse
import gc
import platform
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import protocol  # noqa: E402
from protocol import Assign, FrameDecoder, Result, SubjectIndex, Submit  # noqa: E402

BATCH = 100
PATTERNS = 10_000


def typical_messages() -> dict[str, protocol.Message]:
    """One typical message of each hot kind: a small job, its assignment, its result."""
    payload = {"n": 7, "user": "u-1042", "items": [1, 2, 3, 4], "opts": {"fast": True}}
    return {
        "Submit": Submit(
            mid=10_001,
            job_id="7f3c9a6e-2b1d-4c8e-9f0a-1b2c3d4e5f60",
            subject="math.square",
            payload=payload,
            headers={"key": "u-1042"},
            timeout=30.0,
        ),
        "Assign": Assign(
            mid=20_002,
            job_id="7f3c9a6e-2b1d-4c8e-9f0a-1b2c3d4e5f60",
            subject="math.square",
            payload=payload,
            headers={"key": "u-1042"},
            attempt=1,
            ack_timeout=30.0,
        ),
        "Result": Result(
            mid=30_003,
            cid=20_002,
            job_id="7f3c9a6e-2b1d-4c8e-9f0a-1b2c3d4e5f60",
            payload={"square": 49},
        ),
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
    args = parser.parse_args()
    seconds = 0.4 if args.quick else 2.0

    print(
        f"Python {platform.python_version()} on {platform.machine()}, "
        f"cbor2 C extension: {_cbor2_is_c()}"
    )
    print()
    print(f"{'message':<10} {'frame B':>8} {'encode/s':>12} {'decode/s':>12} {'round trip/s':>14}")
    for name, message in typical_messages().items():
        size, enc, dec, both = bench_codec(message, seconds)
        print(f"{name:<10} {size:>8} {enc:>12,.0f} {dec:>12,.0f} {both:>14,.0f}")
    print()
    print(f"SubjectIndex with {PATTERNS:,} patterns")
    print(f"{'cache':<28} {'lookups/s':>12} {'matches/lookup':>15}")
    for label, capacity in (("on (4096 hot subjects)", 4096), ("off (every lookup walks)", 0)):
        per_second, matches = bench_index(capacity, seconds)
        print(f"{label:<28} {per_second:>12,.0f} {matches:>15.2f}")


def _cbor2_is_c() -> bool:
    import cbor2  # noqa: F401

    return any(name.endswith("_cbor2") for name in sys.modules)


if __name__ == "__main__":
    main()
