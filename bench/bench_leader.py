"""The leader's Python work per job, without I/O: a replay of what its connections hand it.

Run from the repository root::

    python bench/bench_leader.py               # about 5 s
    python bench/bench_leader.py --profile     # the same under cProfile, top functions

Bundles of Submits (as a client sends them) and of Results (as a worker answers) are
encoded once; then each round feeds one of each through what a leader does with them:
a ``FrameDecoder`` per connection, the session check of every message, the broker
(``submit``, then ``result``), and the bundle items the broker sends, encoded and packed
into frames as a connection does. No sockets, no trio: the figure is the floor under the
leader's CPU per job in ``bench_jobs.py`` (the rest there is system calls and scheduling).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import protocol  # noqa: E402
from actors.leader._broker import Broker  # noqa: E402
from actors.leader._links import ClientLink, WorkerLink  # noqa: E402
from protocol import FrameDecoder, Hello, Result, Session, Submit  # noqa: E402

SUBJECT = "bench.noop"
LIMIT = protocol.DEFAULT_MAX_FRAME_SIZE


def bundles(rounds: int, batch: int) -> tuple[list[bytes], list[bytes]]:
    """For each round, a frame of ``batch`` Submits and one of their Results."""
    submits, results = [], []
    mid = 0
    for _ in range(rounds):
        items, answers = [], []
        for _ in range(batch):
            mid += 1
            job_id = f"c1-{mid}"
            items.append(protocol.encode_item(Submit(mid=mid, job_id=job_id, subject=SUBJECT)))
            answers.append(protocol.encode_item(Result(mid=mid, cid=mid, job_id=job_id)))
        submits.append(b"".join(protocol.bundle_frames(items, LIMIT)))
        results.append(b"".join(protocol.bundle_frames(answers, LIMIT)))
    return submits, results


def replay(submits: list[bytes], results: list[bytes]) -> tuple[int, float]:
    """Feed every round through a fresh leader's work; return (jobs, seconds)."""
    broker = Broker()
    to_worker: list[bytes] = []
    to_client: list[bytes] = []

    def queue_to(out: list[bytes]):
        encode = protocol.encode_array
        return lambda item: out.append(encode(item))

    worker = WorkerLink("w", None, patterns=(SUBJECT,), window=2**62, send_item=queue_to(to_worker))
    client = ClientLink("c", None, send_item=queue_to(to_client))
    broker.worker_joined(worker, 0.0)
    sides = []
    for role, handle, link in (
        ("client", broker.submit, client),
        ("worker", broker.result, worker),
    ):
        session = Session(side="server")
        session.receive(Hello(mid=0, role=role), 0.0)
        sides.append((FrameDecoder(decode_payloads=False), session.receive, handle, link))
    (c_decoder, c_receive, submit, _), (w_decoder, w_receive, result, _) = sides
    jobs = 0
    start = time.perf_counter()
    for r, (submit_frame, result_frame) in enumerate(zip(submits, results, strict=True)):
        now = 1.0 + r
        for decoder, receive, handle, link, frame, out in (
            (c_decoder, c_receive, submit, client, submit_frame, to_worker),
            (w_decoder, w_receive, result, worker, result_frame, to_client),
        ):
            batch = decoder.feed(frame)
            for message in batch:
                receive(message, now)
            for message in batch:
                handle(link, message, now)
            if len(out) != len(batch):  # an Assign per Submit, a Result per Result
                raise AssertionError(f"round {r}: {len(batch)} messages in, {len(out)} out")
            protocol.bundle_frames(out, LIMIT)
            out.clear()
        jobs += len(batch)
    return jobs, time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3000, help="rounds per replay (3000)")
    parser.add_argument("--batch", type=int, default=32, help="messages per bundle (32)")
    parser.add_argument("--repeat", type=int, default=5, help="replays; the best is shown (5)")
    parser.add_argument("--profile", action="store_true", help="one replay under cProfile")
    args = parser.parse_args(argv)
    submits, results = bundles(args.rounds, args.batch)
    if args.profile:
        import cProfile
        import pstats

        profiler = cProfile.Profile()
        profiler.runcall(replay, submits, results)
        pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
        return 0
    best = min(
        seconds / jobs for jobs, seconds in (replay(submits, results) for _ in range(args.repeat))
    )
    print(
        f"leader work per job, without I/O: {best * 1e6:.2f} µs"
        f" (best of {args.repeat} replays of {args.rounds} rounds x {args.batch} jobs)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
