"""A leader alone in its process, for the job benchmark.

``python bench/_leader_proc.py [--heartbeat S] [--parent-pid PID]`` listens on a free
loopback port, prints ``leader listening on tcp://127.0.0.1:PORT`` on stdout, and serves
until SIGINT or SIGTERM (or until the process ``PID`` is gone), then exits 0.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys

import trio

from actors import Leader


async def serve(heartbeat: float | None, parent_pid: int | None) -> None:
    """Run a leader on ``tcp://127.0.0.1:0`` and print its bound URL once it listens.

    Returns on SIGINT / SIGTERM, or when ``parent_pid`` (if given) is no longer our parent.
    """
    leader = Leader(name="bench-leader", listen=["tcp://127.0.0.1:0"], heartbeat=heartbeat)
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            urls = await nursery.start(leader.run)
            print(f"leader listening on {urls[0]}", flush=True)

            async def watch_parent() -> None:
                while os.getppid() == parent_pid:  # noqa: ASYNC110 (no event for a parent's exit)
                    await trio.sleep(1.0)
                nursery.cancel_scope.cancel()

            if parent_pid is not None:
                nursery.start_soon(watch_parent)
            async for _ in signals:
                break
            nursery.cancel_scope.cancel()


def main(argv: list[str] | None = None) -> int:
    """Entry point; exits 0 after a signal."""
    parser = argparse.ArgumentParser(prog="bench/_leader_proc.py")
    parser.add_argument(
        "--heartbeat", type=float, default=5.0, help="seconds between heartbeats (0: none)"
    )
    parser.add_argument("--parent-pid", type=int, help="exit when this process is gone")
    args = parser.parse_args(argv)
    trio.run(serve, args.heartbeat or None, args.parent_pid)
    return 0


if __name__ == "__main__":
    sys.exit(main())
