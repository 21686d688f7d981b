"""Run one worker in this process: ``python -m actors.worker [options] module:Class``.

This is what each instance of a :class:`~actors.WorkerGroup` runs, and what a user runs to
attach a worker to a leader by hand::

    python -m actors.worker --url tcp://127.0.0.1:7700 examples.square:Square

``--url`` may list several leaders sharing one job store, comma-separated
(``--url tcp://127.0.0.1:7700,tcp://127.0.0.1:7701``): the worker connects to the first and
moves on to the next whenever it cannot connect or loses the connection.

The worker connects (and reconnects, with backoff) to the leader and serves jobs. SIGTERM or
SIGINT (Ctrl-C) makes it drain: it takes no more work, finishes the jobs in hand within the
drain grace, and exits 0. A second Ctrl-C exits at once (status 1); a second SIGTERM changes
nothing. Bad arguments, or a class that does not load, exit 2 with a message on stderr.

A worker that fails before it first connects (its ``setup()`` raised, say) logs the error
once, with its traceback, and exits with :data:`~actors.worker._worker.START_FAILED_EXIT_STATUS`
(78); started by a group (``--start-report FILE``), it writes the error to that file for
the group to report instead.

Logging goes to stderr at level INFO (a group's processes share the cluster's stderr): the
worker's lines, among them one per failed job attempt.

``--max-jobs N`` and ``--max-memory SIZE`` (bytes of RSS, or ``512MiB``, ``2GB``...) recycle
the worker: past either, it drains the same way and exits with
:data:`~actors.worker._worker.RECYCLE_EXIT_STATUS` (75), which tells its group to start a fresh one
at once.

The token the leader may ask for comes from ``--token-env NAME`` (an environment variable;
``$ACTORS_TOKEN`` by default, when set) or ``--token-file PATH`` (its first line), read
again on each reconnect so that a rotated token is picked up; never from an option's value
(command lines are visible to every user of the host). ``--tls-ca``, ``--tls-cert`` and
``--tls-key`` name the PEM files of a ``tls://`` or ``wss://`` connection. A variable that
is not set, a file that cannot be read, or a wrong TLS file exits 2 naming it. The leader
refusing the token before the worker first connected is a failure to start (status 78,
one line); refusing it on a reconnect (a static token revoked) ends the worker with one
line and status 1.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import types
from collections.abc import Sequence
from typing import Any

import trio

from protocol import GroupMode, RoutingPolicy

from .._checks import (
    MODE_CHOICES,
    POLICY_CHOICES,
    ConfigError,
    check_size,
    check_subjects,
)
from .._credentials import add_credential_options, check_leader_urls, credentials_from_args
from ._loader import load_worker_class

#: Where a worker connects when ``--url`` is not given.
DEFAULT_URL = "tcp://127.0.0.1:7700"
#: The values of ``--mode`` and ``--policy`` (the default first).
#: Seconds between checks that the parent process (a cluster) is still alive.
PARENT_POLL_INTERVAL = 1.0
#: Seconds past the drain grace after which a draining worker is cancelled outright.
DRAIN_MARGIN = 2.0

logger = logging.getLogger("actors.worker")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``python -m actors.worker``."""
    parser = argparse.ArgumentParser(
        prog="python -m actors.worker",
        description="Connect one worker to a leader and serve jobs until SIGTERM / Ctrl-C.",
    )
    parser.add_argument("worker", metavar="module:Class", help="the Worker subclass to run")
    parser.add_argument(
        "--url", default=DEFAULT_URL,
        help=f"the leader, or several comma-separated, tried in turn (default {DEFAULT_URL})",
    )  # fmt: skip
    parser.add_argument("--name", help="this worker's name (default: chosen by the leader)")
    parser.add_argument("--group", help="the group it belongs to (default: its own)")
    parser.add_argument(
        "--policy",
        default=RoutingPolicy.ROUND_ROBIN.value,
        help=f"routing policy of its subjects: {', '.join(POLICY_CHOICES)}",
    )
    parser.add_argument(
        "--mode",
        default=GroupMode.ROUND_ROBIN.value,
        help=f"{' (takes jobs) or '.join(MODE_CHOICES)}",
    )
    parser.add_argument(
        "--subjects", help="comma-separated patterns, overriding the class's subjects"
    )
    parser.add_argument(
        "--concurrency", type=int, help="jobs at once, overriding the class's concurrency"
    )
    parser.add_argument(
        "--drain-grace",
        type=float,
        default=30.0,
        help="seconds to finish in-flight jobs after SIGTERM (default 30)",
    )
    parser.add_argument(
        "--max-memory",
        metavar="SIZE",
        help="recycle past this resident memory after a job (bytes, or 512MiB, 2GB, ...)",
    )
    parser.add_argument("--max-jobs", type=int, metavar="N", help="recycle after handling N jobs")
    add_credential_options(parser)
    # Set by WorkerGroup: exit (draining) when the cluster that started us goes away.
    parser.add_argument("--parent-pid", type=int, help=argparse.SUPPRESS)
    # Set by WorkerGroup: where to say why the worker could not start (see the docstring).
    parser.add_argument("--start-report", metavar="FILE", help=argparse.SUPPRESS)
    return parser


def parse_args(argv: Sequence[str] | None = None) -> tuple[argparse.Namespace, Any]:
    """Parse and check the arguments, load the worker class and build the worker.

    Returns:
      The parsed arguments and the worker instance.

    Raises:
      SystemExit: with status 2 and a message on stderr, on any bad argument.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        check_leader_urls(args.url, at="--url")
        args.credentials = credentials_from_args(args, url=args.url)
        if args.mode not in MODE_CHOICES:
            raise ConfigError(
                f"--mode: expected one of {', '.join(MODE_CHOICES)}; got {args.mode!r}"
            )
        if args.policy not in POLICY_CHOICES:
            raise ConfigError(
                f"--policy: expected one of {', '.join(POLICY_CHOICES)}; got {args.policy!r}"
            )
        if args.subjects is not None:
            args.subjects = list(check_subjects(args.subjects.split(","), at="--subjects"))
        if args.concurrency is not None and args.concurrency < 1:
            raise ConfigError(f"--concurrency: expected an integer >= 1, got {args.concurrency}")
        if args.drain_grace < 0:
            raise ConfigError(f"--drain-grace: expected a number >= 0, got {args.drain_grace}")
        if args.max_memory is not None:
            args.max_memory = check_size(args.max_memory, at="--max-memory")
        if args.max_jobs is not None and args.max_jobs < 1:
            raise ConfigError(f"--max-jobs: expected an integer >= 1, got {args.max_jobs}")
        cls = load_worker_class(args.worker)
        if args.subjects is None and not list(getattr(cls, "subjects", None) or ()):
            raise ConfigError(f"{args.worker!r} declares no subjects; pass --subjects")
        worker = cls()
    except ConfigError as exc:
        parser.error(exc.message)
    return args, worker


async def serve(args: argparse.Namespace, worker: Any) -> int:
    """Run the worker until a signal (or the parent's exit), then drain.

    Draining sets :func:`run_worker`'s ``stop`` event; if the worker is not connected yet,
    or the drain overruns ``drain_grace`` by :data:`DRAIN_MARGIN`, it is cancelled instead
    (the leader redelivers whatever was running).

    Returns:
      The exit status: 0 after a drain, :data:`RECYCLE_EXIT_STATUS` after a recycle,
      :data:`START_FAILED_EXIT_STATUS` when it failed before it first connected (the
      leader refusing its token among the reasons), 1 when the leader refused it for good
      on a reconnect (a static token revoked, say).
    """
    from runtime import HandshakeError

    from ._runner import run_worker
    from ._worker import RECYCLE_EXIT_STATUS, START_FAILED_EXIT_STATUS

    label = args.name or args.worker
    stop = trio.Event()
    work_scope = trio.CancelScope()
    connected = False
    recycled: str | None = None
    start_error: Exception | None = None
    refused: HandshakeError | None = None  # on a reconnect, for good

    async def work(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        nonlocal recycled, start_error, refused
        welcomed = False

        def started(value: object = None) -> None:
            nonlocal welcomed
            welcomed = True
            task_status.started()

        try:
            recycled = await run_worker(
                worker,
                args.url,
                name=args.name,
                group=args.group,
                policy=args.policy,
                mode=args.mode,
                subjects=args.subjects,
                concurrency=args.concurrency,
                max_memory=args.max_memory,
                max_jobs=args.max_jobs,
                ssl_context=args.credentials.ssl_context,
                token=args.credentials.token,
                stop=stop,
                drain_grace=args.drain_grace,
                task_status=types.SimpleNamespace(started=started),  # type: ignore[arg-type]
            )
        except HandshakeError as exc:
            if not welcomed:
                start_error = exc
                raise _NotStarted from None
            refused = exc  # (said below, in one line: no traceback helps)
        except Exception as exc:
            if welcomed:
                raise
            start_error = exc  # caught here, its traceback starts here: no trio frames
            raise _NotStarted from None

    def request_stop(reason: str, *, force_if_repeated: bool = False) -> None:
        if stop.is_set():
            if force_if_repeated:
                logger.warning("%s: %s again, exiting without draining", label, reason)
                sys.stderr.flush()
                os._exit(1)
            return  # a supervisor may well send SIGTERM twice; the drain goes on
        logger.info("%s: %s, draining", label, reason)
        stop.set()
        if connected:
            work_scope.deadline = trio.current_time() + args.drain_grace + DRAIN_MARGIN
        else:
            work_scope.cancel()

    async def stop_on_signals(signals: Any) -> None:
        async for signum in signals:
            # A second Ctrl-C means "now"; a second SIGTERM changes nothing.
            request_stop(signal.Signals(signum).name, force_if_repeated=signum == signal.SIGINT)

    async def stop_with_parent(parent_pid: int) -> None:
        # Polling: no event tells a process that its parent died (portably).
        while os.getppid() == parent_pid:  # noqa: ASYNC110
            await trio.sleep(PARENT_POLL_INTERVAL)
        request_stop(f"parent {parent_pid} went away")

    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(stop_on_signals, signals)
            if args.parent_pid is not None:
                nursery.start_soon(stop_with_parent, args.parent_pid)
            with work_scope:
                async with trio.open_nursery() as worker_nursery:
                    try:
                        await worker_nursery.start(work)
                    except _NotStarted:  # before the first Welcome: setup() raised, say
                        pass
                    else:
                        connected = True
                        logger.info("%s: connected to %s", label, args.url)
            if work_scope.cancelled_caught and connected:
                logger.warning("%s: drain overran its grace period, stopped", label)
            nursery.cancel_scope.cancel()
    if start_error is not None:
        report_start_failure(start_error, label, args.start_report)
        return START_FAILED_EXIT_STATUS
    if refused is not None:
        logger.error(
            "%s: the leader refused the worker on reconnecting, for good: %s", label, refused
        )
        return 1
    return 0 if recycled is None else RECYCLE_EXIT_STATUS


def _refusal(error: BaseException) -> bool:
    """Whether ``error`` is the leader refusing the worker's Hello (a wrong token...)."""
    from runtime import HandshakeError

    return isinstance(error, HandshakeError)


class _NotStarted(Exception):
    """The worker failed before its first Welcome (the error is kept aside)."""


def report_start_failure(error: Exception, label: str, path: str | None) -> None:
    """Say why the worker could not start: in the log, or in the group's report file."""
    from ._failures import error_text, traceback_text

    if path is None:
        logger.error(
            "%s: failed to start: %s: %s",
            label,
            type(error).__name__,
            error_text(error),
            exc_info=None if _refusal(error) else error,  # (a refusal's traceback is noise)
        )
        return
    report = {
        "type": type(error).__name__,
        "message": error_text(error),
        "traceback": traceback_text(error),
    }
    try:
        with open(path, "w", encoding="utf-8") as file:
            json.dump(report, file)
    except OSError as exc:  # the group then says it failed, not why: say it here
        logger.error(
            "%s: failed to start: %s: %s (and cannot write %s: %s)",
            label, report["type"], report["message"], path, exc.strerror, exc_info=error,
        )  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m actors.worker``; returns the exit status."""
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    args, worker = parse_args(argv)
    return trio.run(serve, args, worker)


if __name__ == "__main__":
    sys.exit(main())
