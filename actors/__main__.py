"""The shell client: ``python -m actors submit SUBJECT JSON`` and ``python -m actors version``.

::

    python -m actors submit math.square '{"n": 7}'                # prints {"square": 49}
    python -m actors submit math.square '{"n": 7}' --count 1000   # the same job 1000 times
    python -m actors submit math.square --file payloads.jsonl      # one JSON payload a line
    producer | python -m actors submit math.square --file -        # payloads from stdin

Results are printed on stdout as JSON lines, one per job, **in input order** (at most
``--concurrency`` jobs are in flight or waiting to be printed). A failed job prints
``{"error": {"type": ..., "message": ..., "attempts": ..., "job_id": ...}}`` in its place.
Runs of more than one job show a progress bar on stderr and end with a summary there. The
exit status is 0 when every job succeeded, 1 when any failed or the leader could not be
reached, 2 for bad arguments or input, 130 on Ctrl-C. Bytes in results are printed as
``{"$bytes": "<base64>"}``.
"""

from __future__ import annotations

import argparse
import base64
import collections
import itertools
import json
import math
import os
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, BinaryIO

import attrs
import trio
from tqdm import tqdm

from protocol import PROTOCOL_VERSION, is_valid_subject

from ._config_checks import check_url
from ._loader import ConfigError

#: Where ``submit`` connects when ``--url`` is not given.
DEFAULT_URL = "tcp://127.0.0.1:7700"
#: Longest accepted line of a payload file (a bound on what one line may buffer).
MAX_LINE_BYTES = 64 * 1024 * 1024
#: Bytes read from a payload file at a time (in a worker thread, so stdin cannot stall).
READ_CHUNK = 64 * 1024


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


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``python -m actors``."""
    parser = argparse.ArgumentParser(prog="python -m actors", description="trio-actors shell client")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    submit = commands.add_parser("submit", help="submit jobs and print their results as JSON lines")
    submit.add_argument("subject", help="where the jobs go (no wildcards)")
    submit.add_argument("payload", nargs="?", metavar="JSON", help="the payload, as JSON")
    submit.add_argument("--url", default=DEFAULT_URL, help=f"the leader (default {DEFAULT_URL})")
    submit.add_argument(
        "--file", metavar="PATH", help="read payloads from a JSON-lines file ('-' for stdin)"
    )
    submit.add_argument(
        "--count", type=int, default=1, metavar="N", help="submit the payload(s) N times"
    )
    submit.add_argument("--qos", type=int, choices=(0, 1), default=1, help="0 at most once, 1 at least once")
    submit.add_argument(
        "--timeout", type=float, default=30.0, metavar="S",
        help="seconds to wait for each job's result (default 30)",
    )
    submit.add_argument(
        "--concurrency", type=int, default=64, metavar="N", help="jobs in flight at once (default 64)"
    )
    submit.add_argument(
        "--connect-timeout", type=float, default=10.0, metavar="S",
        help="seconds to wait for the leader (default 10)",
    )
    submit.add_argument("--no-progress", action="store_true", help="never show a progress bar")

    commands.add_parser("version", help="print the protocol version")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m actors``; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "version":
        print(f"trio-actors protocol version {PROTOCOL_VERSION}")
        return 0
    try:
        _check_submit_args(args)
    except (ConfigError, InputError) as exc:
        parser.error(str(exc))
    from ._client_errors import ClientError

    status = 1
    # The client's nursery wraps what crosses it in exception groups.
    try:
        status = trio.run(_submit_command, args)
    except* InputError as group:
        print(f"python -m actors: error: {_first(group)}", file=sys.stderr)
        status = 2
    except* ClientError as group:  # could not connect (ConnectionLost)
        print(f"python -m actors: error: {_first(group)}", file=sys.stderr)
        status = 1
    except* KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        status = 130
    return status


def _first(error: BaseException) -> BaseException:
    """The first leaf of a (possibly nested) exception group."""
    while isinstance(error, BaseExceptionGroup):
        error = error.exceptions[0]
    return error


def _check_submit_args(args: argparse.Namespace) -> None:
    if not is_valid_subject(args.subject):
        raise ConfigError(f"invalid subject {args.subject!r} (tokens separated by '.', no wildcards)")
    check_url(args.url, at="--url")
    if (args.payload is None) == (args.file is None):
        raise ConfigError("give either a JSON payload or --file (not both)")
    if args.count < 1:
        raise ConfigError(f"--count: expected an integer >= 1, got {args.count}")
    if args.concurrency < 1:
        raise ConfigError(f"--concurrency: expected an integer >= 1, got {args.concurrency}")
    if not args.timeout > 0:
        raise ConfigError(f"--timeout: expected a number > 0, got {args.timeout}")
    if not args.connect_timeout > 0:
        raise ConfigError(f"--connect-timeout: expected a number > 0, got {args.connect_timeout}")
    if args.payload is not None:
        args.payload = _parse_json(args.payload, where="JSON argument")
    elif args.file != "-" and not os.path.isfile(args.file):
        raise ConfigError(f"--file: {args.file}: no such file")


def _parse_json(text: str | bytes, *, where: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as exc:  # JSONDecodeError, or bytes that are not UTF-8
        raise InputError(f"{where}: invalid JSON: {exc}") from None


async def _submit_command(args: argparse.Namespace) -> int:
    from ._client import Client

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
    )
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

    try:
        async with Client.connect(
            args.url, name="shell", connect_timeout=args.connect_timeout
        ) as client:
            await submit_in_order(
                client,
                args.subject,
                _payloads(args),
                show,
                qos=args.qos,
                job_timeout=args.timeout,
                concurrency=args.concurrency,
            )
    finally:
        progress.close()
    sys.stdout.flush()
    jobs = sum(counts.values())
    failed = jobs - counts["ok"]
    if jobs > 1 or failed:
        print(_summary(jobs, counts), file=sys.stderr)
    return 1 if failed else 0


def _summary(jobs: int, counts: collections.Counter[str]) -> str:
    failed = jobs - counts["ok"]
    text = f"{jobs} job{'s' if jobs != 1 else ''}: {counts['ok']} ok, {failed} failed"
    kinds = [(kind, n) for kind, n in counts.most_common() if kind != "ok"]
    if kinds:
        text += " (" + ", ".join(f"{kind}: {n}" for kind, n in kinds) + ")"
    return text


async def submit_in_order(
    client: Any,
    subject: str,
    payloads: AsyncIterator[Any],
    on_outcome: Callable[[Outcome], None],
    *,
    qos: int = 1,
    job_timeout: float | None = 30.0,
    concurrency: int = 64,
) -> None:
    """Submit every payload and hand the outcomes to ``on_outcome`` in input order.

    At most ``concurrency`` jobs are in flight or finished but waiting for an earlier one,
    so memory stays bounded however long the input is. A ``Busy`` answer is retried after
    its ``retry_after`` until the job's ``job_timeout`` (each job's own time limit).

    Raises:
      InputError: from ``payloads``, after the jobs already submitted have finished.
    """
    done: dict[int, Outcome] = {}
    next_index = 0  # the next outcome to hand over
    room = trio.Event()  # set (and replaced) whenever outcomes were handed over

    async def run(index: int, payload: Any) -> None:
        nonlocal next_index, room
        done[index] = await submit_one(client, subject, payload, qos=qos, job_timeout=job_timeout)
        if next_index in done:
            while next_index in done:
                on_outcome(done.pop(next_index))
                next_index += 1
            room.set()
            room = trio.Event()

    input_error: InputError | None = None
    async with trio.open_nursery() as nursery:
        submitted = 0
        try:
            async for payload in payloads:
                while submitted >= next_index + concurrency:
                    await room.wait()
                nursery.start_soon(run, submitted, payload)
                submitted += 1
        except InputError as exc:  # finish what was submitted, then report
            input_error = exc
    if input_error is not None:
        raise input_error


async def submit_one(
    client: Any, subject: str, payload: Any, *, qos: int, job_timeout: float | None
) -> Outcome:
    """Submit one job (retrying ``Busy`` answers) and describe how it ended."""
    from ._client_errors import Busy, ClientError, JobFailed, SubmitTimeout

    job_id = uuid.uuid4().hex  # the same id across Busy retries
    deadline = trio.current_time() + (job_timeout if job_timeout is not None else math.inf)
    while True:
        remaining = deadline - trio.current_time()
        try:
            result = await client.submit(
                subject, payload, qos=qos, timeout=remaining if job_timeout is not None else None,
                job_id=job_id,
            )
        except Busy as exc:
            await trio.sleep(min(exc.retry_after or 0.1, max(remaining, 0.0)))
            if trio.current_time() >= deadline:
                return Outcome(False, error_type="Busy", message=str(exc), job_id=job_id)
            continue
        except JobFailed as exc:
            return Outcome(
                False, error_type=exc.error_type, message=exc.message, attempts=exc.attempts,
                job_id=job_id,
            )
        except SubmitTimeout:
            return Outcome(
                False, error_type="SubmitTimeout", message=f"no result within {job_timeout} s",
                job_id=job_id,
            )
        except ClientError as exc:  # connection lost (qos 0), an error code from the leader
            return Outcome(False, error_type=type(exc).__name__, message=str(exc), job_id=job_id)
        return Outcome(True, result=result, job_id=job_id)


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
