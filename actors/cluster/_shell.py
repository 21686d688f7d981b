"""The shell client: ``python -m actors COMMAND``, a shell for the cluster.

::

    python -m actors submit math.square '{"n": 7}'                # prints {"square": 49}
    python -m actors submit math.square '{"n": 7}' --count 1000   # the same job 1000 times
    python -m actors submit math.square --file payloads.jsonl      # one JSON payload a line
    producer | python -m actors submit math.square --file -        # payloads from stdin
    python -m actors status                                        # groups, subjects, totals
    python -m actors status --http                                 # the same from the HTTP API,
                                                                   # with readiness and workers
    python -m actors top                                           # live, until q or Ctrl-C
    python -m actors result JOB_ID --wait                          # a job's result by id
    python -m actors enqueue mail.send '{"to": "a@b"}' --delay 60  # prints the job id once accepted
    python -m actors enqueue report.build --file jobs.jsonl --at 2026-12-08T06:00Z
    python -m actors dlq list                                      # the dead letters, newest first
    python -m actors dlq show JOB_ID                               # one, with payload and traceback
    python -m actors dlq retry JOB_ID                              # queue it again (or --all)
    python -m actors dlq purge --all                               # forget them
    python -m actors cancel JOB_ID
    python -m actors publish events.order '{"id": 1}' --retain
    python -m actors subscribe 'events.>'                          # until Ctrl-C

Every command takes ``--url`` (default: the ``ACTORS_URL`` environment variable, else
``tcp://127.0.0.1:7700``; several leaders sharing one job store may be given,
comma-separated, and are tried in turn) and ``--connect-timeout``; and, for a leader
that asks for a token, ``--token-env NAME`` (the token is in environment variable NAME;
without it, ``$ACTORS_TOKEN`` when set) or ``--token-file PATH`` (its first line) -- never
the token itself, which any user of the host could read off the command line; for a
``tls://`` or ``wss://`` leader, ``--tls-ca FILE`` (a CA to trust instead of the system's),
``--tls-cert FILE`` and ``--tls-key FILE`` (a client certificate).

``submit`` prints the results on stdout as JSON lines, one per job, **in input order** (at
most ``--concurrency`` jobs are in flight or waiting to be printed). A failed job prints
``{"error": {"type": ..., "message": ..., "attempts": ..., "job_id": ...}}`` in its place.
Runs of more than one job show a progress bar on stderr and end with a summary there. A
subject no worker serves stops the run with the leader's reason (``no worker serves subject
math.sqare (did you mean math.square?)``), unless ``--wait-for-worker``. Bytes in results
are printed as ``{"$bytes": "<base64>"}``. ``--delay S`` or ``--at ISO-8601`` (with a UTC
offset, or ``Z``) hold each job back until then; ``--timeout`` must outlast the delay.

``enqueue`` prints the id of each job the leader accepted, one a line, in input order,
without waiting for the jobs to run (``result JOB_ID --wait`` waits for one later). With
``--job-id ID`` one job gets that id, and a run of several gets ``ID-1``, ``ID-2``... in
input order, so that running the same command again enqueues nothing twice. A job the
leader refused is reported on stderr (and the status is 1); the others go on.

``dlq list`` shows the dead letters (``--json``: as the leader lists them), ``dlq show``
one of them whole as JSON, ``dlq retry`` and ``dlq purge`` act on one (``JOB_ID``) or on
every one (``--all``, asked for explicitly, never by default).

Exit status: 0 when the command succeeded (every job, for ``submit`` and ``enqueue``); 1
when a job failed or was refused, a result or a dead letter was not found, the leader
could not be reached or refused the token, or it does not let this identity do that (one
line on stderr says why, in the leader's words),
or stdout was closed early (``| head``: quietly, the jobs still running cancelled); 2 for
bad arguments or input (a token variable that is not set, a token or TLS file that cannot
be read); 130 on Ctrl-C, which cancels the jobs still running (the leader
cancels each one no other client waits for), except for ``subscribe``, which Ctrl-C ends
normally (0). A second Ctrl-C stops at once. ``status --http`` and ``top`` read the
leader's HTTP API instead (see :mod:`actors.cluster._status`): their status is 0 when the
leader is ready, 1 when it is not, 2 when it cannot be reached or refuses the token.
"""

from __future__ import annotations

import argparse
import base64
import collections
import datetime as dt
import itertools
import json
import math
import os
import signal
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, BinaryIO, TypeVar

import attrs
import trio
from tqdm import tqdm

from protocol import (
    MAX_DELAY,
    MAX_LISTED,
    PROTOCOL_VERSION,
    Submit,
    is_valid_pattern,
    is_valid_subject,
)

from .._checks import ConfigError
from .._credentials import add_credential_options, check_leader_urls, credentials_from_args
from ._status import (
    add_http_option,
    add_top_parser,
    check_http_args,
    status_command,
    top_command,
)

#: Where commands connect when neither ``--url`` nor ``ACTORS_URL`` says.
DEFAULT_URL = "tcp://127.0.0.1:7700"
#: The environment variable that gives the default of ``--url``.
URL_VARIABLE = "ACTORS_URL"
#: Longest accepted line of a payload file (a bound on what one line may buffer).
MAX_LINE_BYTES = 64 * 1024 * 1024
#: Bytes read from a payload file at a time (in a worker thread, so stdin cannot stall).
READ_CHUNK = 64 * 1024
#: The exit status after Ctrl-C (128 + SIGINT), as shells report it.
INTERRUPTED = 130
#: Characters of a dead letter's error shown in ``dlq list``'s table.
ERROR_WIDTH = 60

_T = TypeVar("_T")


class InputError(Exception):
    """A payload argument or a line of a payload file is not valid JSON (exit status 2)."""


@attrs.frozen
class Outcome:
    """What one submitted job came to."""

    ok: bool
    result: Any = None
    error_type: str | None = None
    message: str | None = None
    attempts: int = 0
    job_id: str | None = None

    @classmethod
    def of(cls, result: Any) -> Outcome:
        """The outcome of one of ``Client.map``'s results (``return_exceptions=True``)."""
        from ..client._errors import ClientError, JobFailed

        if isinstance(result, JobFailed):
            return cls(False, error_type=result.error_type, message=result.message,
                       attempts=result.attempts, job_id=result.job_id)  # fmt: skip
        if isinstance(result, ClientError):
            return cls(False, error_type=type(result).__name__, message=str(result),
                       job_id=getattr(result, "job_id", None))  # fmt: skip
        return cls(True, result=result)

    def to_json(self) -> str:
        """The line printed for this job."""
        if self.ok:
            return json.dumps(self.result, default=_json_default)
        error = {
            "type": self.error_type,
            "message": self.message,
            "attempts": self.attempts,
            "job_id": self.job_id,
        }
        return json.dumps({"error": error}, default=_json_default)


def _json_default(value: Any) -> Any:
    if isinstance(value, bytes | bytearray):
        return {"$bytes": base64.b64encode(value).decode("ascii")}
    return str(value)


def _dumps(value: Any) -> str:
    return json.dumps(value, default=_json_default)


# --------------------------------------------------------------------------- arguments


class _DefaultsShown(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default in ``--help``, except for flags and options that
    default to nothing."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``python -m actors``."""
    parser = argparse.ArgumentParser(
        prog="python -m actors", description="trio-actors: a shell for the cluster"
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    # Each command's --help shows every option's default.
    connection = argparse.ArgumentParser(add_help=False)
    connection.add_argument(
        "--url", default=os.environ.get(URL_VARIABLE) or DEFAULT_URL,
        help="the leader to connect to, or several comma-separated, tried in turn (the"
        f" default comes from ${URL_VARIABLE} when set)",
    )  # fmt: skip
    connection.add_argument(
        "--connect-timeout",
        type=float,
        default=10.0,
        metavar="S",
        help="seconds to wait for the leader",
    )
    add_credential_options(connection)

    def command(name: str, help: str) -> argparse.ArgumentParser:
        return commands.add_parser(
            name, help=help, description=help, parents=[connection],
            formatter_class=_DefaultsShown,
        )  # fmt: skip

    submit = command("submit", "submit jobs and print their results as JSON lines, in input order")
    submit.add_argument("subject", help="where the jobs go (no wildcards)")
    submit.add_argument("payload", nargs="?", metavar="JSON", help="the payload, as JSON")
    submit.add_argument(
        "--file", metavar="PATH", help="read payloads from a JSON-lines file ('-' for stdin)"
    )
    submit.add_argument(
        "--count", type=int, default=1, metavar="N", help="submit the payload(s) N times"
    )
    submit.add_argument(
        "--qos", type=int, choices=(0, 1), default=1, help="0 at most once, 1 at least once"
    )
    submit.add_argument(
        "--timeout", type=float, default=30.0, metavar="S",
        help="seconds each job may take (then it is cancelled and reported as SubmitTimeout)",
    )  # fmt: skip
    submit.add_argument(
        "--concurrency", type=int, default=64, metavar="N", help="jobs in flight at once"
    )
    submit.add_argument(
        "--wait-for-worker", action="store_true",
        help="when no worker serves the subject, queue the jobs for one still to come"
        " (instead of stopping with the leader's reason)",
    )  # fmt: skip
    _when_options(submit)
    submit.add_argument("--no-progress", action="store_true", help="never show a progress bar")

    enqueue = command(
        "enqueue",
        "enqueue jobs without waiting for them: print each job's id once the leader accepted it",
    )
    enqueue.add_argument("subject", help="where the jobs go (no wildcards)")
    enqueue.add_argument("payload", nargs="?", metavar="JSON", help="the payload, as JSON")
    enqueue.add_argument(
        "--file", metavar="PATH", help="read payloads from a JSON-lines file ('-' for stdin)"
    )
    enqueue.add_argument(
        "--count", type=int, default=1, metavar="N", help="enqueue the payload(s) N times"
    )
    enqueue.add_argument(
        "--job-id", metavar="ID",
        help="the job's id; several jobs get ID-1, ID-2... in input order (enqueueing an id"
        " again adds no job)",
    )  # fmt: skip
    _when_options(enqueue)
    enqueue.add_argument(
        "--timeout", type=float, default=None, metavar="S",
        help="each job's deadline, in seconds from now: it expires if no worker took it by then"
        " (default: none)",
    )  # fmt: skip
    enqueue.add_argument(
        "--accept-timeout", type=float, default=30.0, metavar="S",
        help="seconds to wait for the leader to accept each job",
    )  # fmt: skip
    enqueue.add_argument(
        "--concurrency", type=int, default=64, metavar="N", help="jobs being enqueued at once"
    )
    enqueue.add_argument(
        "--wait-for-worker", action="store_true",
        help="when no worker serves the subject, accept the jobs for one still to come"
        " (instead of stopping with the leader's reason)",
    )  # fmt: skip
    enqueue.add_argument("--no-progress", action="store_true", help="never show a progress bar")

    result = command(
        "result", "print the result of a job by its id (stored by the leader for its dedup window)"
    )
    result.add_argument("job_id", metavar="JOB_ID")
    result.add_argument("--wait", action="store_true", help="wait for a job that is still running")
    result.add_argument(
        "--timeout",
        type=float,
        default=None,
        metavar="S",
        help="seconds to wait (default: as long as it takes)",
    )

    cancel = command("cancel", "cancel a job, whoever waits for it")
    cancel.add_argument("job_id", metavar="JOB_ID")
    cancel.add_argument(
        "--reason", default="cancelled from the shell", help="the reason its waiters are told"
    )

    status = command("status", "show the cluster: totals, worker groups, subjects")
    status.add_argument("--json", action="store_true", help="print the leader's statistics as JSON")
    status.add_argument(
        "--sample", type=float, default=1.0, metavar="S",
        help="seconds between two samples, for the rates (0: one sample, no rates; the leader"
        " answers a connection once a second at most)",
    )  # fmt: skip
    add_http_option(status)

    publish = command("publish", "publish a message to the subscribers of a subject")
    publish.add_argument("subject", help="the message's subject (no wildcards)")
    publish.add_argument(
        "payload", nargs="?", metavar="JSON", default="null", help="the payload, as JSON"
    )
    publish.add_argument(
        "--retain", action="store_true", help="keep it as the subject's last message"
    )
    publish.add_argument(
        "--qos",
        type=int,
        choices=(0, 1),
        default=1,
        help="1: wait until the leader has accepted it",
    )

    subscribe = command(
        "subscribe", "print the messages published on a pattern, one line each, until Ctrl-C"
    )
    subscribe.add_argument("pattern", help="a subject pattern: * one token, > the rest")
    subscribe.add_argument(
        "--queue", default=None, help="a queue group (its subscribers share the messages)"
    )
    subscribe.add_argument(
        "--count", type=int, default=0, metavar="N", help="stop after N messages (0: never)"
    )

    dlq_help = "list, show, retry or purge the dead letters (jobs that used up their attempts)"
    dlq = commands.add_parser("dlq", help=dlq_help, description=dlq_help)
    actions = dlq.add_subparsers(dest="action", metavar="ACTION", required=True)

    def action(name: str, help: str) -> argparse.ArgumentParser:
        return actions.add_parser(
            name, help=help, description=help, parents=[connection],
            formatter_class=_DefaultsShown,
        )  # fmt: skip

    dlq_list = action(
        "list", f"show the dead letters, newest first (at most {MAX_LISTED}): job id, subject,"
        " attempts, last error, when",
    )  # fmt: skip
    dlq_list.add_argument("--json", action="store_true", help="print them as a JSON array")
    dlq_show = action("show", "print a dead letter as JSON: payload, attempts, error, traceback")
    dlq_show.add_argument("job_id", metavar="JOB_ID", help="the dead letter's job id")
    for sub in (dlq_list, dlq_show):
        sub.add_argument(
            "--data-dir", metavar="DIR",
            help="read the journal in the leader's data directory DIR directly (read-only;"
            " no leader needed) instead of asking the leader at --url",
        )  # fmt: skip
    for name, what in (
        ("retry", "queue a dead letter again as a new job under its id, its attempts reset"),
        ("purge", "forget a dead letter for good"),
    ):
        sub = action(name, f"{what} (or every one, with --all)")
        sub.add_argument("job_id", nargs="?", metavar="JOB_ID", help="the dead letter's job id")
        sub.add_argument("--all", action="store_true", help="every dead letter")

    add_top_parser(commands, _DefaultsShown)
    commands.add_parser("version", help="print the protocol version")
    return parser


def _when_options(parser: argparse.ArgumentParser) -> None:
    """``--delay`` and ``--at``, one or the other, of ``submit`` and ``enqueue``."""
    when = parser.add_mutually_exclusive_group()
    when.add_argument(
        "--delay", type=float, default=None, metavar="S",
        help="seconds after its acceptance before each job may run",
    )  # fmt: skip
    when.add_argument(
        "--at", default=None, metavar="ISO-8601",
        help="when the jobs may run, with a UTC offset (2026-12-08T09:30+01:00, or Z for UTC)",
    )  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m actors``; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "version":
        print(f"trio-actors protocol version {PROTOCOL_VERSION}")
        return 0
    try:
        _CHECKS[args.command](args)
    except (ConfigError, InputError) as exc:
        parser.error(str(exc))
    from ..client._errors import ClientError

    status = 1
    # The client's nursery wraps what crosses it in exception groups.
    try:
        status = trio.run(_run_command, args)
    except* InputError as group:
        print(f"python -m actors: error: {_first(group)}", file=sys.stderr)
        status = 2
    except* ClientError as group:  # could not connect, no route, not found...
        print(f"python -m actors: error: {_first(group)}", file=sys.stderr)
        status = 1
    except* KeyboardInterrupt:  # a second Ctrl-C
        print("interrupted", file=sys.stderr)
        status = INTERRUPTED
    except* BrokenPipeError:  # stdout's reader went away (`| head`): stop quietly
        # (and let Python's own flush at exit write nowhere, instead of failing again)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        status = 1
    return status


def _first(error: BaseException) -> BaseException:
    """The first leaf of a (possibly nested) exception group."""
    while isinstance(error, BaseExceptionGroup):
        error = error.exceptions[0]
    return error


def _check_common(args: argparse.Namespace) -> None:
    check_leader_urls(args.url, at="--url")
    if not args.connect_timeout > 0:
        raise ConfigError(f"--connect-timeout: expected a number > 0, got {args.connect_timeout}")
    args.credentials = credentials_from_args(args, url=args.url)


def _check_submit_args(args: argparse.Namespace) -> None:
    if not is_valid_subject(args.subject):
        raise ConfigError(
            f"invalid subject {args.subject!r} (tokens separated by '.', no wildcards)"
        )
    _check_common(args)
    if (args.payload is None) == (args.file is None):
        raise ConfigError("give either a JSON payload or --file (not both)")
    if args.count < 1:
        raise ConfigError(f"--count: expected an integer >= 1, got {args.count}")
    if args.concurrency < 1:
        raise ConfigError(f"--concurrency: expected an integer >= 1, got {args.concurrency}")
    if not args.timeout > 0:
        raise ConfigError(f"--timeout: expected a number > 0, got {args.timeout}")
    _check_when(args)
    _check_payload_args(args)


def _check_payload_args(args: argparse.Namespace) -> None:
    """Parse the JSON payload argument, or check that the ``--file`` exists."""
    if args.payload is not None:
        args.payload = _parse_json(args.payload, where="JSON argument")
    elif args.file != "-" and not os.path.isfile(args.file):
        raise ConfigError(f"--file: {args.file}: no such file")


def _check_when(args: argparse.Namespace) -> None:
    """Check ``--delay`` or ``--at`` (which becomes a datetime) against ``--timeout``."""
    seconds: float | None = None
    if args.delay is not None:
        seconds = args.delay
        if not (seconds >= 0 and math.isfinite(seconds)):
            raise ConfigError(f"--delay: expected a number of seconds >= 0, got {args.delay}")
        if seconds > MAX_DELAY:
            raise ConfigError(
                f"--delay: at most {MAX_DELAY:.0f} s ({MAX_DELAY / 86400:g} days), got {args.delay:g}"
            )
    elif args.at is not None:
        try:
            at = dt.datetime.fromisoformat(args.at)
        except ValueError:
            raise ConfigError(
                f"--at: expected an ISO 8601 time such as 2026-12-08T09:30+01:00, got {args.at!r}"
            ) from None
        if at.tzinfo is None or at.utcoffset() is None:
            raise ConfigError(
                f"--at: {args.at} has no UTC offset: add one (2026-12-08T09:30+01:00, or Z for UTC)"
            )
        seconds = max(0.0, at.timestamp() - time.time())
        if seconds > MAX_DELAY:
            raise ConfigError(f"--at: at most {MAX_DELAY / 86400:g} days ahead, got {args.at}")
        args.at = at
    if seconds is not None and args.timeout is not None and args.timeout <= seconds:
        raise ConfigError(
            f"--timeout ({args.timeout:g} s) must be longer than the delay ({seconds:g} s):"
            " the jobs would expire before they may run"
        )


def _check_enqueue_args(args: argparse.Namespace) -> None:
    if not is_valid_subject(args.subject):
        raise ConfigError(
            f"invalid subject {args.subject!r} (tokens separated by '.', no wildcards)"
        )
    _check_common(args)
    if (args.payload is None) == (args.file is None):
        raise ConfigError("give either a JSON payload or --file (not both)")
    if args.count < 1:
        raise ConfigError(f"--count: expected an integer >= 1, got {args.count}")
    if args.concurrency < 1:
        raise ConfigError(f"--concurrency: expected an integer >= 1, got {args.concurrency}")
    if args.timeout is not None and not args.timeout > 0:
        raise ConfigError(f"--timeout: expected a number > 0, got {args.timeout}")
    if not args.accept_timeout > 0:
        raise ConfigError(f"--accept-timeout: expected a number > 0, got {args.accept_timeout}")
    if args.job_id is not None:
        try:
            Submit(mid=1, job_id=str(_job_id(args, 0)), subject=args.subject)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"--job-id: {exc}") from None
    _check_when(args)
    _check_payload_args(args)


def _job_id(args: argparse.Namespace, index: int) -> str | None:
    """The id of job ``index`` (from 0, in input order) of an ``enqueue``: ``--job-id`` for
    a single job, numbered from 1 for a run of several, None (the client's) without it."""
    if args.job_id is None:
        return None
    if args.file is None and args.count == 1:
        return str(args.job_id)
    return f"{args.job_id}-{index + 1}"


def _check_dlq_args(args: argparse.Namespace) -> None:
    _check_common(args)
    if args.action in ("retry", "purge"):
        if args.job_id is None and not args.all:
            raise ConfigError(f"dlq {args.action}: give the JOB_ID of a dead letter, or --all")
        if args.job_id is not None and args.all:
            raise ConfigError(f"dlq {args.action}: give a JOB_ID or --all, not both")


def _check_result_args(args: argparse.Namespace) -> None:
    _check_common(args)
    if args.timeout is not None and not args.timeout > 0:
        raise ConfigError(f"--timeout: expected a number > 0, got {args.timeout}")


def _check_status_args(args: argparse.Namespace) -> None:
    if args.http is not None:  # (the HTTP API's checks: see actors.cluster._status)
        check_http_args(args)
    else:
        _check_common(args)
    if not args.sample >= 0:
        raise ConfigError(f"--sample: expected a number >= 0, got {args.sample}")


def _check_publish_args(args: argparse.Namespace) -> None:
    if not is_valid_subject(args.subject):
        raise ConfigError(
            f"invalid subject {args.subject!r} (tokens separated by '.', no wildcards)"
        )
    _check_common(args)
    args.payload = _parse_json(args.payload, where="JSON argument")


def _check_subscribe_args(args: argparse.Namespace) -> None:
    if not is_valid_pattern(args.pattern):
        raise ConfigError(
            f"invalid pattern {args.pattern!r} (tokens separated by '.'; * and > wildcards)"
        )
    _check_common(args)
    if args.count < 0:
        raise ConfigError(f"--count: expected an integer >= 0, got {args.count}")


_CHECKS: dict[str, Callable[[argparse.Namespace], None]] = {
    "submit": _check_submit_args,
    "enqueue": _check_enqueue_args,
    "dlq": _check_dlq_args,
    "result": _check_result_args,
    "cancel": _check_common,
    "status": _check_status_args,
    "publish": _check_publish_args,
    "subscribe": _check_subscribe_args,
    "top": check_http_args,
}


def _parse_json(text: str | bytes, *, where: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as exc:  # JSONDecodeError, or bytes that are not UTF-8
        raise InputError(f"{where}: invalid JSON: {exc}") from None


# --------------------------------------------------------------------------- running


async def _run_command(args: argparse.Namespace) -> int:
    """Run the command; the first Ctrl-C cancels it (see :func:`_interruptible`)."""
    run = _COMMANDS[args.command]
    return await _interruptible(lambda stop: run(args, stop))


async def _interruptible(run: Callable[[trio.CancelScope], Awaitable[int]]) -> int:
    """``await run(stop)``, where the first SIGINT cancels ``stop`` (a scope ``run``
    enters around its work; it returns its status, :data:`INTERRUPTED` after a Ctrl-C
    for most commands); a second one raises KeyboardInterrupt.

    Ctrl-C is taken as a signal, not as trio's KeyboardInterrupt, so that it ends the
    work as a cancellation: the jobs in flight are abandoned (their cancels sent) and the
    client closes its connection gracefully.
    """
    stop = trio.CancelScope()
    if threading.current_thread() is not threading.main_thread():
        return await run(stop)  # (run in a thread, as tests do: signals are the main thread's)
    with trio.open_signal_receiver(signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:

            async def watch() -> None:
                async for _ in signals:
                    if stop.cancel_called:
                        raise KeyboardInterrupt
                    stop.cancel()

            nursery.start_soon(watch)
            status = await run(stop)
            nursery.cancel_scope.cancel()
    return status


def _connect(args: argparse.Namespace) -> Any:
    from ..client._client import Client

    return Client.connect(
        args.url, name="shell", connect_timeout=args.connect_timeout,
        token=args.credentials.token, ssl_context=args.credentials.ssl_context,
    )  # fmt: skip


async def _submit_command(args: argparse.Namespace, stop: trio.CancelScope) -> int:
    from ..client._errors import NoRoute, NotPermitted

    total: int | None
    if args.payload is not None:
        total = args.count
    elif args.file == "-":
        total = None
    else:
        total = await _count_payload_lines(args.file) * args.count
    progress = tqdm(
        total=total, unit="job", file=sys.stderr, dynamic_ncols=True,
        disable=args.no_progress or total == 1,
    )  # fmt: skip
    counts: collections.Counter[str] = collections.Counter()

    # Lines and bar share a terminal only when stdout is one: then tqdm must clear its bar
    # around each line; otherwise (stdout piped) the lines go straight out.
    share_terminal = not progress.disable and sys.stdout.isatty() and sys.stderr.isatty()

    def show(outcome: Outcome) -> None:
        counts["ok" if outcome.ok else outcome.error_type or "Error"] += 1
        if share_terminal:
            progress.write(outcome.to_json(), file=sys.stdout)
        else:
            print(outcome.to_json())
        progress.update(1)

    payloads = _Payloads(args)  # (a bad line ends the input there)

    try:
        with stop:
            async with _connect(args) as client:
                async with client.map(
                    args.subject, payloads.read(), limit=args.concurrency, qos=args.qos,
                    timeout=args.timeout, wait_for_worker=args.wait_for_worker,
                    delay=args.delay, at=args.at, return_exceptions=True,
                ) as results:  # fmt: skip
                    async for result in results:
                        if isinstance(result, NoRoute | NotPermitted):
                            raise result  # the same for every job: say it once
                        show(Outcome.of(result))
    finally:
        progress.close()
    sys.stdout.flush()
    jobs = sum(counts.values())
    failed = jobs - counts["ok"]
    if jobs > 1 or failed or stop.cancelled_caught:
        print(_summary(jobs, counts), file=sys.stderr)
    if stop.cancelled_caught:
        print("interrupted: the jobs still running were cancelled", file=sys.stderr)
        return INTERRUPTED
    payloads.check()
    return 1 if failed else 0


def _summary(jobs: int, counts: collections.Counter[str]) -> str:
    failed = jobs - counts["ok"]
    text = f"{jobs} job{'s' if jobs != 1 else ''}: {counts['ok']} ok, {failed} failed"
    kinds = [(kind, n) for kind, n in counts.most_common() if kind != "ok"]
    if kinds:
        text += " (" + ", ".join(f"{kind}: {n}" for kind, n in kinds) + ")"
    return text


async def _result_command(args: argparse.Namespace, stop: trio.CancelScope) -> int:
    from ..client._errors import JobFailed

    with stop:
        async with _connect(args) as client:
            try:
                result = await client.result(args.job_id, wait=args.wait, timeout=args.timeout)
            except JobFailed as exc:
                print(Outcome.of(exc).to_json())
                if exc.traceback:
                    print(exc.traceback.rstrip(), file=sys.stderr)
                return 1
            print(_dumps(result))
            return 0
    return INTERRUPTED


async def _cancel_command(args: argparse.Namespace, stop: trio.CancelScope) -> int:
    from ..client._errors import ClientError, NotFound, NotPermitted

    with stop:
        async with _connect(args) as client:
            # Cancel has no answer: ask first, to say whether there was anything to cancel.
            try:
                await client.result(args.job_id)
            except NotFound as exc:
                if "has not finished yet" not in str(exc):
                    print(f"nothing to cancel: {exc}", file=sys.stderr)
                    return 1
            except NotPermitted:  # another identity's job: said by main()
                raise
            except ClientError as exc:  # it finished, and failed
                print(f"nothing to cancel: job {args.job_id} has finished ({exc})", file=sys.stderr)
                return 1
            else:
                print(f"nothing to cancel: job {args.job_id} has finished", file=sys.stderr)
                return 1
            await client.cancel(args.job_id, reason=args.reason)
            print(f"cancelled job {args.job_id}", file=sys.stderr)
        return 0
    return INTERRUPTED


async def _publish_command(args: argparse.Namespace, stop: trio.CancelScope) -> int:
    with stop:
        async with _connect(args) as client:
            await client.publish(args.subject, args.payload, retain=args.retain, qos=args.qos)
        return 0
    return INTERRUPTED


async def _subscribe_command(args: argparse.Namespace, stop: trio.CancelScope) -> int:
    with stop:
        async with (
            _connect(args) as client,
            client.subscribe(args.pattern, queue=args.queue) as messages,
        ):
            print(f"subscribed to {args.pattern} on {args.url}; Ctrl-C to stop", file=sys.stderr)
            received = 0
            async for message in messages:
                retained = " [retained]" if message.retained else ""
                print(f"{message.subject}{retained} {_dumps(message.payload)}", flush=True)
                received += 1
                if received == args.count:
                    break
            if messages.dropped:
                print(
                    f"{messages.dropped} messages dropped (not read fast enough)", file=sys.stderr
                )
    return 0  # Ctrl-C is how a subscription ends


async def _status_command(args: argparse.Namespace, stop: trio.CancelScope) -> int:
    if args.http is not None:
        return await status_command(args, stop)
    with stop:
        async with _connect(args) as client:
            first = await _stats(client)
            if args.json:
                print(json.dumps(first, indent=2, default=_json_default))
                return 0
            if not args.sample:
                print("\n".join(status_lines(first)))
                return 0
            started = trio.current_time()
            await trio.sleep(args.sample)
            second = await _stats(client)
            print("\n".join(status_lines(second, first, trio.current_time() - started)))
            return 0
    return INTERRUPTED


async def _stats(client: Any) -> dict[str, Any]:
    """The leader's statistics; it answers a connection once per second at most (``busy``
    before, with the time left): then ask again when told."""
    stats: dict[str, Any] = await _patiently(client.stats)
    return stats


async def _patiently(ask: Callable[[], Awaitable[_T]]) -> _T:
    """``await ask()``, asked again after each ``busy`` answer's ``retry_after``."""
    from ..client._errors import Busy

    while True:
        try:
            return await ask()
        except Busy as exc:
            await trio.sleep(exc.retry_after or 1.0)


_BUSY_SAID: set[str] = set()


def _say_busy(exc: BaseException, retry_after: float) -> None:
    """Tell the user, once per reason, that the leader is busy and why."""
    text = str(exc)
    if text not in _BUSY_SAID and len(_BUSY_SAID) < 10:
        _BUSY_SAID.add(text)
        print(f"leader busy: {text}; retrying in {retry_after:g} s", file=sys.stderr)


async def _unless_busy(
    ask: Callable[..., Awaitable[Any]],
    *args: Any,
    give_up_after: float | None = None,
    **kwargs: Any,
) -> Any:
    """What ``await ask(*args, **kwargs)`` (a job's call) returns, or the
    :class:`ClientError` it raises: asked again after a ``busy`` answer's ``retry_after``
    (each reason said once on stderr), until ``give_up_after`` seconds have passed (then
    the Busy is the answer); :class:`NoRoute` and :class:`NotPermitted`, the same for
    every job, are raised."""
    from ..client._errors import Busy, ClientError, NoRoute, NotPermitted

    until = None if give_up_after is None else trio.current_time() + give_up_after
    while True:
        try:
            return await ask(*args, **kwargs)
        except Busy as exc:
            wait = exc.retry_after or 0.1
            if until is not None and trio.current_time() + wait > until:
                return exc
            _say_busy(exc, wait)
            await trio.sleep(wait)
        except (NoRoute, NotPermitted):
            raise
        except ClientError as exc:
            return exc


async def _in_order(
    items: AsyncIterator[Any],
    limit: int,
    work: Callable[[int, Any], Awaitable[_T]],
    emit: Callable[[_T], None],
) -> None:
    """``work(index, item)`` for each of ``items``, at most ``limit`` at once, and
    ``emit`` of each outcome in input order (at most ``limit`` running or held back for an
    earlier one). An exception out of ``work`` or ``emit`` ends it (the rest cancelled)."""
    done: dict[int, _T] = {}
    room = trio.Semaphore(limit)
    head = 0

    async def one(index: int, item: Any) -> None:
        nonlocal head
        done[index] = await work(index, item)
        while head in done:
            outcome = done.pop(head)
            head += 1
            room.release()
            emit(outcome)

    async with trio.open_nursery() as nursery:
        index = 0
        async for item in items:
            await room.acquire()
            nursery.start_soon(one, index, item)
            index += 1


async def _enqueue_command(args: argparse.Namespace, stop: trio.CancelScope) -> int:
    total: int | None
    if args.payload is not None:
        total = args.count
    elif args.file == "-":
        total = None
    else:
        total = await _count_payload_lines(args.file) * args.count
    progress = tqdm(
        total=total, unit="job", file=sys.stderr, dynamic_ncols=True,
        disable=args.no_progress or total == 1,
    )  # fmt: skip
    share_terminal = not progress.disable and sys.stdout.isatty() and sys.stderr.isatty()
    counts: collections.Counter[str] = collections.Counter()

    def show(outcome: tuple[int, Any]) -> None:
        index, answer = outcome
        if isinstance(answer, str):
            counts["ok"] += 1
            if share_terminal:
                progress.write(answer, file=sys.stdout)
            else:
                print(answer)
        else:
            counts[type(answer).__name__] += 1
            job = getattr(answer, "job_id", None) or _job_id(args, index) or f"#{index + 1}"
            line = f"python -m actors: job {job} not enqueued: {type(answer).__name__}: {answer}"
            progress.write(line, file=sys.stderr)
        progress.update(1)

    payloads = _Payloads(args)

    try:
        with stop:
            async with _connect(args) as client:

                async def one(index: int, payload: Any) -> tuple[int, Any]:
                    answer = await _unless_busy(
                        client.enqueue, args.subject, payload, job_id=_job_id(args, index),
                        delay=args.delay, at=args.at, timeout=args.timeout,
                        wait_for_worker=args.wait_for_worker, accept_timeout=args.accept_timeout,
                        give_up_after=args.accept_timeout,
                    )  # fmt: skip
                    return index, answer

                await _in_order(payloads.read(), args.concurrency, one, show)
    finally:
        progress.close()
    sys.stdout.flush()
    jobs = sum(counts.values())
    refused = jobs - counts["ok"]
    if jobs > 1 or refused or stop.cancelled_caught:
        text = f"{jobs} job{'s' if jobs != 1 else ''}: {counts['ok']} enqueued, {refused} refused"
        kinds = [f"{kind}: {n}" for kind, n in counts.most_common() if kind != "ok"]
        print(text + (f" ({', '.join(kinds)})" if kinds else ""), file=sys.stderr)
    if stop.cancelled_caught:
        print(
            "interrupted: the jobs not acknowledged yet may or may not have been accepted",
            file=sys.stderr,
        )
        return INTERRUPTED
    payloads.check()
    return 1 if refused else 0


def _dlq_from_journal(args: argparse.Namespace) -> int:
    """``dlq list|show --data-dir DIR``: from the journal file, without a leader."""
    from ..leader._journal import JournalError, read_dead_letters

    try:
        if args.action == "list":
            letters, total = read_dead_letters(args.data_dir, None, MAX_LISTED)
        else:
            letters, total = read_dead_letters(args.data_dir, args.job_id)
    except JournalError as exc:
        print(f"python -m actors: error: {exc}", file=sys.stderr)
        return 1
    if args.action == "show":
        if not letters:
            print(f"python -m actors: error: no dead letter {args.job_id}", file=sys.stderr)
            return 1
        print(json.dumps(letters[0], indent=2, default=_json_default))
    elif args.json:
        print(json.dumps(letters, indent=2, default=_json_default))
    elif not letters:
        print("no dead letters")
    else:
        print("\n".join(dead_letter_lines(letters)))
        if total > len(letters):
            print(f"(the newest {len(letters)} of {total} dead letters)")
    return 0


async def _dlq_command(args: argparse.Namespace, stop: trio.CancelScope) -> int:
    if getattr(args, "data_dir", None):
        return _dlq_from_journal(args)
    with stop:
        async with _connect(args) as client:
            if args.action == "list":
                letters, total = await _patiently(client.dead_letters_listed)
                if args.json:
                    print(json.dumps(letters, indent=2, default=_json_default))
                elif not letters:
                    print("no dead letters")
                else:
                    print("\n".join(dead_letter_lines(letters)))
                    if total is not None and total > len(letters):
                        print(f"(the newest {len(letters)} of {total} dead letters)")
                return 0
            if args.action == "show":
                letter = await _patiently(lambda: client.dead_letter(args.job_id))
                print(json.dumps(letter, indent=2, default=_json_default))
                return 0
            answer: Any = None
            if args.action == "retry":
                answer = await _patiently(
                    lambda: client._dead_letter_query("retry_dead_letter", args.job_id, None)
                )
                count = int(answer.get("retried", 0)) if answer else 0
                for why in (answer or {}).get("refused") or []:
                    print(f"not retried: {why}", file=sys.stderr)
                done = "retried (queued again)"
            else:
                count = await _patiently(lambda: client.purge_dead_letters(args.job_id))
                done = "purged"
            if args.job_id is not None:
                if not count:
                    if not (answer or {}).get("refused"):  # (else: said why above)
                        print(
                            f"python -m actors: error: no dead letter {args.job_id}",
                            file=sys.stderr,
                        )
                    return 1
                print(f"{done}: dead letter {args.job_id}", file=sys.stderr)
            else:
                print(f"{done}: {count} dead letter{'s' if count != 1 else ''}", file=sys.stderr)
            return 0
    return INTERRUPTED


def dead_letter_lines(letters: list[dict[str, Any]]) -> list[str]:
    """``Client.dead_letters()`` as a table: job id, subject, attempts, error, when."""
    rows = []
    for letter in letters:
        error = f"{letter.get('error_type') or 'Error'}: {letter.get('error_message') or ''}"
        error = " ".join(error.split())  # one line
        if len(error) > ERROR_WIDTH:
            error = error[: ERROR_WIDTH - 1] + "…"
        dead_at = letter.get("dead_at")
        when = (
            dt.datetime.fromtimestamp(dead_at).astimezone().isoformat(sep=" ", timespec="seconds")
            if isinstance(dead_at, int | float)
            else "?"
        )
        rows.append([letter.get("job_id", "?"), letter.get("subject", "?"),
                     letter.get("attempts", 0), error, when])  # fmt: skip
    return _table(["JOB ID", "SUBJECT", "ATTEMPTS", "ERROR", "WHEN"], rows)


_COMMANDS: dict[str, Callable[[argparse.Namespace, trio.CancelScope], Awaitable[int]]] = {
    "submit": _submit_command,
    "enqueue": _enqueue_command,
    "dlq": _dlq_command,
    "result": _result_command,
    "cancel": _cancel_command,
    "status": _status_command,
    "publish": _publish_command,
    "subscribe": _subscribe_command,
    "top": top_command,
}


# --------------------------------------------------------------------------- status


def status_lines(
    stats: dict[str, Any], before: dict[str, Any] | None = None, seconds: float = 0.0
) -> list[str]:
    """The leader's statistics (``Client.stats()``) as a summary and two tables.

    With ``before``, an earlier sample ``seconds`` before, the subjects' table has rates:
    jobs submitted and done per second.
    """
    listen = ", ".join(stats.get("listen", [])) or "?"
    lines = [
        (
            f"leader {stats.get('node', '?')} on {listen}: {stats.get('connections', 0)} connections,"
            f" {stats['workers']} workers"
        ),
        (
            f"jobs: {stats['jobs_active']} active ({stats['waiting']} waiting, {stats['in_flight']} in flight),"
            f" {stats['results_stored']} results stored, {stats['dead_letters']} dead letters,"
            f" {stats.get('retained', 0)} retained messages"
        ),
    ]
    groups = stats["groups"]
    if groups:
        head = ["GROUP", "WORKERS", "WINDOW", "IN FLIGHT", "POLICY", "MODE", "DONE", "FAILED",
                "REDELIVERED", "DEAD", "LATENCY"]  # fmt: skip
        patterns = any("patterns" in g for g in groups.values())  # (when the leader says)
        if patterns:
            head.append("SUBJECTS")
        states = any("state" in g for g in groups.values())  # (a cluster's group states)
        if states:
            head.append("STATE")
        rows = []
        for name, g in sorted(groups.items()):
            row = [name, g["workers"], g["window"], g["in_flight"], g["policy"] or "-", g["mode"] or "-",
                   g["done"], g["failed"], g["redelivered"], g["dead"], _ms(g["latency_avg"])]  # fmt: skip
            if patterns:
                row.append(" ".join(g.get("patterns") or ["-"]))
            if states:
                row.append(g.get("state") or ("serving" if g["workers"] else "-"))
            rows.append(row)
        lines += ["", *_table(head, rows)]
    else:
        lines += ["", "no worker groups"]
    subjects = stats["subjects"]
    if subjects:
        old = before["subjects"] if before else {}
        rows = []
        for name, s in sorted(subjects.items()):
            row = [name, s["workers"], s["queued"], s["in_flight"]]
            if before:
                prior = old.get(name, {})
                row += [_rate(s["submitted"] - prior.get("submitted", 0), seconds),
                        _rate(s["done"] - prior.get("done", 0), seconds)]  # fmt: skip
            row += [s["submitted"], s["done"], s["failed"], s["dead"], s["expired"], s["cancelled"],
                    _ms(s["latency_avg"])]  # fmt: skip
            rows.append(row)
        head = ["SUBJECT", "WORKERS", "QUEUED", "IN FLIGHT"]
        if before:
            head += ["IN/S", "DONE/S"]
        head += ["SUBMITTED", "DONE", "FAILED", "DEAD", "EXPIRED", "CANCELLED", "LATENCY"]
        lines += ["", *_table(head, rows)]
        if stats.get("subjects_omitted"):
            lines.append(f"(and {stats['subjects_omitted']} less busy subjects)")
    else:
        lines += ["", "no subjects yet"]
    return lines


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.1f} ms"


def _rate(count: int, seconds: float) -> float:
    return round(count / seconds, 1) if seconds > 0 else 0.0


def _table(head: list[str], rows: list[list[Any]]) -> list[str]:
    """Columns aligned: text to the left, numbers to the right."""
    cells = [head, *[[str(value) for value in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(head))]
    numeric = [all(isinstance(row[i], int | float) for row in rows) for i in range(len(head))]
    return [
        "  ".join(
            cell.rjust(width) if right else cell.ljust(width)
            for cell, width, right in zip(row, widths, numeric, strict=True)
        ).rstrip()
        for row in cells
    ]


# --------------------------------------------------------------------------- payloads


@attrs.define
class _Payloads:
    """The payloads of a ``submit`` or ``enqueue`` command (:func:`_payloads`), ended at
    the first bad line: the jobs before it finish and are printed first, then
    :meth:`check` raises its :class:`InputError`."""

    args: argparse.Namespace
    error: InputError | None = None

    async def read(self) -> AsyncIterator[Any]:
        try:
            async for payload in _payloads(self.args):
                yield payload
        except InputError as exc:
            self.error = exc

    def check(self) -> None:
        """Raise the bad line's error, if the input had one."""
        if self.error is not None:
            raise self.error


async def _payloads(args: argparse.Namespace) -> AsyncIterator[Any]:
    """The payloads of a ``submit`` command, ``--count`` times over."""
    if args.payload is not None:
        for _ in range(args.count):
            yield args.payload
        return
    for _ in range(args.count):
        async for line_number, line in _file_lines(args.file):
            if line.strip():
                yield _parse_json(line, where=f"{args.file} line {line_number}")


async def _file_lines(path: str) -> AsyncIterator[tuple[int, bytes]]:
    """Numbered lines of ``path`` (or stdin for ``-``), read in chunks in a thread."""
    if path == "-":
        stream: BinaryIO = sys.stdin.buffer
        close = False
    else:
        stream = await trio.to_thread.run_sync(open, path, "rb")
        close = True
    try:
        numbers = itertools.count(1)
        pending = b""
        while True:
            chunk = await trio.to_thread.run_sync(stream.read1, READ_CHUNK)
            if not chunk:
                break
            *lines, pending = (pending + chunk).split(b"\n")
            if len(pending) > MAX_LINE_BYTES:
                raise InputError(f"{path} line {next(numbers)}: longer than {MAX_LINE_BYTES} bytes")
            for line in lines:
                yield next(numbers), line
        if pending:
            yield next(numbers), pending
    finally:
        if close:
            stream.close()


async def _count_payload_lines(path: str) -> int:
    """How many non-blank lines ``path`` holds (for the progress bar's total)."""
    count = 0
    async for _, line in _file_lines(path):
        if line.strip():
            count += 1
    return count


if __name__ == "__main__":
    sys.exit(main())
