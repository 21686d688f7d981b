"""A leader alone in its process, for the job benchmark.

``python bench/_leader_proc.py [--heartbeat S] [--parent-pid PID]`` listens on a free
loopback port, prints ``leader listening on tcp://127.0.0.1:PORT`` on stdout, and serves
until SIGINT or SIGTERM (or until the process ``PID`` is gone), then exits 0.

Where it keeps its jobs: ``--data-dir DIR`` and ``--sync {full,normal}``: a journal in
``DIR``; without ``--data-dir``, in memory (``--memory``, the default here: what
``bench/bench_jobs.py`` measures, and no journal left in the user's data directory).
It prints ``leader journal: PATH`` (or ``leader journal: none (memory)``) before it listens.

``--auth``: the leader has two users, ``bench-client`` (may submit to ``bench.>``) and
``bench-worker`` (may serve ``bench.>``), whose tokens are the environment variables
``BENCH_CLIENT_TOKEN`` and ``BENCH_WORKER_TOKEN`` (what ``bench_jobs.py --auth`` measures:
every connection authenticated, every submit and worker checked).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from typing import Any

import trio

from actors import Leader


def bench_auth() -> Any:
    """The users of ``--auth`` (tokens from the environment)."""
    from actors import AuthConfig, User

    return AuthConfig(
        users=(
            User(
                name="bench-client", tokens=(os.environ["BENCH_CLIENT_TOKEN"],), submit=["bench.>"]
            ),
            User(
                name="bench-worker", tokens=(os.environ["BENCH_WORKER_TOKEN"],), serve=["bench.>"]
            ),
        )
    )


async def serve(
    heartbeat: float | None,
    parent_pid: int | None,
    storage: dict[str, Any] | None = None,
    auth: Any = None,
) -> None:
    """Run a leader on ``tcp://127.0.0.1:0`` and print its bound URL once it listens.

    ``storage``: the leader's ``memory``, ``data_dir`` and ``sync`` settings (those given).
    Returns on SIGINT / SIGTERM, or when ``parent_pid`` (if given) is no longer our parent.
    """
    leader = Leader(
        name="bench-leader",
        listen=["tcp://127.0.0.1:0"],
        heartbeat=heartbeat,
        auth=auth,
        **(storage or {}),
    )
    print(f"leader journal: {leader.journal_path or 'none (memory)'}", flush=True)
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
    parser.add_argument("--memory", action="store_true", help="no journal (the default)")
    parser.add_argument("--data-dir", help="the journal's directory")
    parser.add_argument("--sync", choices=("full", "normal"), help="the journal's sync tier")
    parser.add_argument("--auth", action="store_true", help="users from BENCH_*_TOKEN")
    args = parser.parse_args(argv)
    if args.memory and args.data_dir is not None:
        parser.error("--memory and --data-dir exclude each other")
    storage: dict[str, Any] = {"memory": True}
    if args.data_dir is not None:
        storage = {"data_dir": args.data_dir}
    if args.sync is not None:
        storage["sync"] = args.sync
    auth = bench_auth() if args.auth else None
    trio.run(serve, args.heartbeat or None, args.parent_pid, storage, auth)
    return 0


if __name__ == "__main__":
    sys.exit(main())
