"""What an operator does to a running leader: look a job up, list, show, retry and purge
dead letters, cancel a job, change a worker group's instance count.

:class:`LeaderAdmin` holds these operations for one leader; the JSON API
(``actors/leader/_api.py``) calls them, and so may Python code that runs a leader. Each
says who asks (the :class:`~actors.leader._auth.Principal` a request proved, None on a
leader without users) and checks what that identity may do, as the protocol does: a job
is visible to and cancellable by its owner or an admin (to anyone else it does not exist),
dead letters and scaling are for admins. A refusal is an :class:`AdminError` that carries
its HTTP status and error code.

What they read from the journal, they read as the leader's dead-letter queries do: under
its database lock, after writing what is pending (so that what the broker did is in the
file), in a worker thread (:func:`read_journal`), at most
:data:`MAX_ADMIN_QUERIES` at once for every caller. What they change, they change in the
broker as a batch of the leader's, and answer once the journal has written it (so that a
restart cannot undo what an operator was told is done).

Payloads and results are shown, never returned as they are: decoded when their CBOR is at
most :data:`MAX_DECODED` bytes, made JSON-safe (bytes as ``{"base64": ...}``, anything JSON
has no word for as text) and cut to :data:`MAX_SHOWN` bytes of JSON (:func:`show_payload`).
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import json
import math
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Reversible
from itertools import islice
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import trio
from cbor2 import CBORSimpleValue, CBORTag

from protocol import Encoded, InvalidPayload, decode_payload

from ._jobs import JobState
from ._journal import JournalError, SqliteJournal

if TYPE_CHECKING:
    from ._auth import Principal
    from ._broker import Broker

T = TypeVar("T")

#: Changes a worker group's instance count: ``await scaler(group, instances)`` returns the
#: count the group keeps from now on. It raises :class:`LookupError` for a group it does
#: not run, :class:`ValueError` for a count it refuses, :class:`RuntimeError` for a group
#: that cannot change now (it failed, or the cluster stops). A scaler may also have a
#: ``groups()`` method: the groups it runs and the instances each is to have (shown by
#: :meth:`LeaderAdmin.groups`), and a ``scale_errors()`` one: why the last scaling of a
#: group failed, by name.
Scaler = Callable[[str, int], Awaitable[int]]

#: Journal queries (dead letters, job lookups) answered at once, protocol and HTTP
#: together; more are refused ``busy``.
MAX_ADMIN_QUERIES = 4
#: Job lookups of identities that are not admins read the journal at most this many at
#: once, apart from :data:`MAX_ADMIN_QUERIES` (more: 429): any token may look a job up,
#: and must not keep the admins' dead-letter operations waiting.
MAX_USER_QUERIES = 2
#: Dead letters requeued per journal read by a retry of them all.
RETRY_PAGE = 100
#: Dead letters one retry of them all requeues at most (it says how many remain: ask again).
MAX_RETRY_ALL = 10_000
#: The fields of a dead letter in a listing.
DEAD_LETTER_SUMMARY = ("job_id", "subject", "attempts", "error_type", "error_message", "dead_at")
#: Bytes of a payload's or result's JSON shown at most (more: cut, with ``truncated``).
MAX_SHOWN = 4096
#: Bytes of a payload's or result's CBOR decoded to show it at most (more: its first bytes
#: are shown in hex, with its size).
MAX_DECODED = 64 * 1024
#: Characters of an error message or traceback shown at most (a traceback keeps its end).
MAX_TEXT = 4096
#: Characters of an error message in a listing of dead letters at most.
MAX_SUMMARY_TEXT = 500
#: Items of a plain (never encoded) value made JSON-safe at most.
MAX_SHOWN_ITEMS = 10_000
#: A worker group's instances, at most, as an operator may set them.
MAX_INSTANCES = 1000
#: The states of an unfinished job.
ACTIVE_STATES = frozenset({"queued", "running", "retrying"})


class Leader(Protocol):
    """What these operations use of an :class:`actors.leader.Leader` (described, not
    imported: the leader imports this module), its journal's lock and writer among it."""

    name: str
    broker: Broker
    journal: SqliteJournal | None
    scaler: Scaler | None
    _db_lock: trio.Lock
    _admin_queries: int
    _batching: bool

    def stats(self) -> dict[str, Any]: ...

    def stats_snapshot(self, now: float | None = None) -> dict[str, Any]: ...

    async def _commit_once(self, journal: SqliteJournal) -> bool: ...

    async def _blocking(self, fn: Any, *args: Any) -> Any: ...

    def _flush(self) -> None: ...

    def _end_batch(self) -> None: ...


class AdminError(Exception):
    """An operation refused, with the HTTP status and error code of the answer.

    Attributes:
      status: 400 (bad arguments), 403 (not allowed), 404 (no such thing, or not the
        caller's), 409 (not in a state that allows it, or that the leader cannot do), 429
        (too many queries at once), 503 (the journal cannot be read or written).
      code: the error code (``not_found``, ``forbidden``, ``conflict``, ``busy``, ...).
      message: what happened, for a person.
      retry_after: seconds to wait before asking again, when it is worth it.
    """

    def __init__(
        self, status: int, code: str, message: str, *, retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.retry_after = retry_after


def is_admin(principal: Principal | None) -> bool:
    """Whether ``principal`` may act on anyone's jobs and on dead letters (everyone may on
    a leader without users: None)."""
    return principal is None or principal.user.admin


def may_see(principal: Principal | None, identity: str | None) -> bool:
    """Whether ``principal`` may see a job owned by ``identity``: its owner or an admin."""
    return is_admin(principal) or (principal is not None and principal.name == identity)


def require_admin(principal: Principal | None, action: str) -> None:
    """Raise 403 unless ``principal`` is an admin.

    Raises:
      AdminError: it is not.
    """
    if not is_admin(principal):
        assert principal is not None
        raise AdminError(403, "forbidden", f"{principal.name!r} may not {action}: for admins only")


# --------------------------------------------------------------------------- showing values


class _Budget:
    """Items left to make JSON-safe."""

    def __init__(self, items: int) -> None:
        self.items = items
        self.cut = False


def json_safe(value: Any, *, max_items: int = MAX_SHOWN_ITEMS) -> tuple[Any, bool]:
    """``value`` (a decoded payload) as something :func:`json.dumps` writes as strict JSON,
    and whether some of it was left out (past ``max_items`` items, or deeper than 100).

    Bytes become ``{"base64": ...}``, a CBOR tag ``{"tag": n, "value": ...}``, map keys
    that are not strings their ``repr``, floats that JSON cannot hold (NaN, infinities)
    and anything else JSON has no word for (dates, decimals, ...) text.
    """
    budget = _Budget(max_items)
    return _safe(value, budget, 0), budget.cut


def _safe(value: Any, budget: _Budget, depth: int) -> Any:
    budget.items -= 1
    if budget.items < 0 or depth > 100:
        budget.cut = True
        return "…"
    kind = type(value)
    if value is None or kind is bool or kind is str:
        return value
    if kind is int:
        return value
    if kind is float:
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return {"base64": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, list | tuple | set | frozenset):
        return [_safe(item, budget, depth + 1) for item in value]
    if isinstance(value, dict):
        return {
            key if type(key) is str else repr(key)[:MAX_TEXT]: _safe(item, budget, depth + 1)
            for key, item in value.items()
        }
    if isinstance(value, CBORTag):
        return {"tag": value.tag, "value": _safe(value.value, budget, depth + 1)}
    if type(value) is Encoded:
        return _safe(_decoded(value.data, len(value.data)), budget, depth + 1)
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    if isinstance(value, CBORSimpleValue):
        return {"simple": value.value}
    return str(value)[:MAX_TEXT] if isinstance(value, int | float) else repr(value)[:MAX_TEXT]


def _decoded(data: bytes, total: int) -> Any:
    """The value of CBOR ``data`` (the first bytes of ``total``), or what shows it when it
    is too large or not valid: ``{"cbor_bytes": total, "hex": first bytes}``."""
    if total <= len(data) <= MAX_DECODED:
        try:
            return decode_payload(Encoded(bytes(data)))
        except InvalidPayload:
            pass
    return {"cbor_bytes": total, "hex": bytes(data[: MAX_SHOWN // 4]).hex()}


def show_payload(payload: Any, total_bytes: int | None = None) -> tuple[Any, bool]:
    """A payload or result to show, and whether it was cut.

    Args:
      payload: an :class:`~protocol.Encoded` (as the leader keeps them), the first bytes
        of one's CBOR (read from the journal: then ``total_bytes`` is its length), or a
        plain value (a broker driven in-process).

    Returns:
      The value made JSON-safe (see :func:`json_safe`) when its JSON is at most
      :data:`MAX_SHOWN` bytes; else the first :data:`MAX_SHOWN` bytes of that JSON, as a
      string, and True. CBOR over :data:`MAX_DECODED` bytes, or not valid, is shown as
      ``{"cbor_bytes": n, "hex": "<its first bytes>"}`` (cut, unless it is small and
      invalid).
    """
    if payload is None:
        return None, False
    cut = False
    if type(payload) is Encoded:
        value = _decoded(payload.data, len(payload.data))
        cut = len(payload.data) > MAX_DECODED
    elif isinstance(payload, bytes) and total_bytes is not None:
        value = _decoded(payload, total_bytes)
        cut = total_bytes > len(payload) or total_bytes > MAX_DECODED
    else:
        value = payload
    safe, left_out = json_safe(value)
    text = json.dumps(safe, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    data = text.encode()
    if len(data) > MAX_SHOWN:
        return data[:MAX_SHOWN].decode("utf-8", errors="ignore"), True
    return safe, cut or left_out


def cut_text(
    text: str | None, limit: int = MAX_TEXT, *, tail: bool = False
) -> tuple[str | None, bool]:
    """``text`` cut to ``limit`` characters (its end, with ``tail``: a traceback's
    exception), and whether it was."""
    if text is None or len(text) <= limit:
        return text, False
    return ("…" + text[-limit:]) if tail else (text[:limit] + "…"), True


def show_error(
    error_type: str | None,
    message: str | None,
    traceback: str | None = None,
    traceback_chars: int | None = None,
) -> tuple[dict[str, Any], bool]:
    """An error to show, ``{"code", "message", "traceback"}``, and whether a text was cut
    (``traceback_chars``: the traceback's length, when ``traceback`` is its end only)."""
    shown_message, message_cut = cut_text(message or "")
    shown_traceback, traceback_cut = cut_text(traceback, tail=True)
    if traceback_chars is not None and traceback is not None and traceback_chars > len(traceback):
        shown_traceback, traceback_cut = "…" + traceback, True
    error = {"code": error_type or "Error", "message": shown_message, "traceback": shown_traceback}
    return error, message_cut or traceback_cut


def dead_letter_summary(record: Mapping[str, Any], max_text: int | None = None) -> dict[str, Any]:
    """A dead letter as a listing shows it (:data:`DEAD_LETTER_SUMMARY`: no payload), its
    error message cut to ``max_text`` characters when given."""
    summary = {key: record.get(key) for key in DEAD_LETTER_SUMMARY}
    if max_text is not None:
        summary["error_message"] = cut_text(summary["error_message"], max_text)[0]
    return summary


# --------------------------------------------------------------------------- shared paths


async def read_journal(
    leader: Leader, journal: SqliteJournal, read: Callable[[SqliteJournal], T]
) -> T:
    """``read(journal)`` in a worker thread, under the leader's database lock, once what
    is pending is written (so that it sees what the broker did).

    The caller counts itself in ``leader._admin_queries`` (see :data:`MAX_ADMIN_QUERIES`).

    Raises:
      AdminError: 503 ``busy``: the journal cannot be written or read (its words).
    """
    try:
        async with leader._db_lock:
            if not await leader._commit_once(journal):
                raise AdminError(
                    503, "busy", journal.refusal or "the journal cannot be written", retry_after=1.0
                )
            result: T = await leader._blocking(read, journal)
            return result
    except JournalError as exc:
        raise AdminError(503, "busy", str(exc), retry_after=1.0) from None


def retry_dead_letters(
    broker: Broker, records: Iterable[Mapping[str, Any]], now: float, refused: list[str]
) -> int:
    """Requeue dead letters (whole ones, with their payloads) as new jobs, and forget those
    requeued (in one pass over those kept in memory); returns how many were. The reasons of
    those that could not be are added to ``refused``, ten at most."""
    requeued: set[str] = set()
    for record in records:
        why = broker.requeue_dead_letter(record, now, forget=False)
        if why is None:
            requeued.add(record["job_id"])
        elif len(refused) < 10:
            refused.append(why)
    if requeued:
        broker.forget_dead_letters(requeued)
    return len(requeued)


@contextlib.contextmanager
def leader_batch(leader: Leader) -> Iterator[float]:
    """Change the broker as a batch of the leader's: what it sends is flushed, the journal
    woken and the timer re-armed at the end. Yields ``now``."""
    leader._batching = True
    try:
        yield trio.current_time()
    finally:
        leader._flush()
    leader._end_batch()


# --------------------------------------------------------------------------- operations


class LeaderAdmin:
    """The operations of the module's text on ``leader`` (one per leader: it counts the
    job lookups of identities that are not admins, see :data:`MAX_USER_QUERIES`)."""

    def __init__(self, leader: Leader) -> None:
        self.leader = leader
        self._user_queries = 0  # (see MAX_USER_QUERIES)

    # ----------------------------------------------------------------- reading

    def stats(self) -> dict[str, Any]:
        """The leader's shared statistics snapshot (:meth:`Leader.stats_snapshot
        <actors.leader.Leader.stats_snapshot>`: built at most once a second for every
        reader, the busiest subjects; ``subjects_omitted``: how many more there are).
        Read it, never change it."""
        return self.leader.stats_snapshot()

    def groups(self, *, offset: int = 0, limit: int = 100) -> dict[str, Any]:
        """A page of the worker groups (by name): those the leader has seen, and those its
        scaler runs. Each: ``name``, ``state`` (what the cluster says, such as
        ``starting`` or ``failed: ...``; else ``running`` with a worker online, ``stale``
        when its connected workers are all stale, ``idle`` without any), ``instances``
        (how many it is to have, when the leader manages it, else None), ``workers``
        (connected), ``workers_stale`` (of those, silent for more than 1.5 heartbeats),
        ``in_flight``, ``done``, ``failed``, ``redelivered``, ``dead``, ``latency_p50``,
        ``latency_p99``, ``patterns`` (the first its workers serve, cut as the statistics
        list them), ``patterns_total`` (how many) and ``scale_error`` (why its last
        scaling failed, while it is the last; else None)."""
        stats = self.stats()["groups"]
        wanted = self._wanted()
        errors = self._scale_errors()
        names = sorted(set(stats) | set(wanted))
        page = []
        for name in names[offset : offset + limit]:
            group = stats.get(name, {})
            workers = group.get("workers", 0)
            stale = group.get("workers_stale", 0)
            state = group.get("state") or (
                "idle" if not workers else "stale" if stale >= workers else "running"
            )
            page.append(
                {
                    "name": name,
                    "state": state,
                    "instances": wanted.get(name),
                    "workers": workers,
                    "workers_stale": stale,
                    "in_flight": group.get("in_flight", 0),
                    "done": group.get("done", 0),
                    "failed": group.get("failed", 0),
                    "redelivered": group.get("redelivered", 0),
                    "dead": group.get("dead", 0),
                    "latency_p50": group.get("latency_p50"),
                    "latency_p99": group.get("latency_p99"),
                    "patterns": list(group.get("patterns", ())),
                    "patterns_total": group.get("patterns_total", 0),
                    "scale_error": errors.get(name),
                }
            )
        return {
            "total": len(names),
            "offset": offset,
            "limit": limit,
            "managed": self.leader.scaler is not None,
            "groups": page,
        }

    def _wanted(self) -> dict[str, int]:
        listing = getattr(self.leader.scaler, "groups", None)
        return dict(listing()) if callable(listing) else {}

    def _scale_errors(self) -> dict[str, str]:
        listing = getattr(self.leader.scaler, "scale_errors", None)
        return dict(listing()) if callable(listing) else {}

    async def job(self, job_id: str, principal: Principal | None = None) -> dict[str, Any]:
        """Job ``job_id`` as an operator sees it: ``job_id``, ``subject``, ``state``
        (``queued``, ``running``, ``retrying``, ``done``, ``failed``, ``dead``,
        ``cancelled``, ``expired``), ``attempts``, ``max_attempts``, ``worker``,
        ``submitted_at``, ``started_at``, ``retry_at``, ``finished_at`` (Unix times, None
        when not known), ``cancelling`` (a running job asked to stop: why), ``result``
        and ``error`` (``{"code", "message", "traceback"}``) shown as :func:`show_payload`
        and :func:`show_error` do, and ``truncated``.

        Found among the unfinished jobs, then in the journal (QoS 1 jobs finished within
        the dedup window, and dead letters), then among the results and dead letters kept
        in memory.

        Raises:
          AdminError: 404 when there is no such job, or it is not ``principal``'s (and
            ``principal`` is no admin); 429/503 when the journal cannot be read now.
        """
        leader = self.leader
        broker = leader.broker
        info = broker.describe_job(job_id, trio.current_time())
        if info is not None and info["state"] in ACTIVE_STATES:
            return self._visible(_job_from_broker(info), info["identity"], principal, job_id)
        journal = leader.journal
        if journal is not None:
            row, letter = await self._journal(
                lambda j: (
                    j.view_job(job_id, MAX_DECODED),
                    j.view_dead_letter(job_id, MAX_DECODED),
                ),
                admin=is_admin(principal),
            )
            again = broker.describe_job(job_id, trio.current_time())  # (it may have moved on)
            if again is not None and again["state"] in ACTIVE_STATES:
                return self._visible(_job_from_broker(again), again["identity"], principal, job_id)
            if row is not None and row["finished_at"] is not None:
                view = _with_known(_job_from_row(row), again)
                return self._visible(view, row["identity"], principal, job_id)
            if letter is not None:
                letter.setdefault("worker", _kept_worker(broker.dead_letters, job_id))
                view = _with_known(_job_from_dead_letter(letter), again)
                return self._visible(view, letter.get("identity"), principal, job_id)
            info = again
        else:
            letter = None
            if info is None or not info["ok"]:
                letter = _find(broker.dead_letters, job_id)
            if letter is not None:
                view = _with_known(_job_from_dead_letter(letter), info)
                if info is not None:
                    view["attempts"] = info["attempts"]
                return self._visible(view, letter.get("identity"), principal, job_id)
        if info is None:
            raise _no_job(job_id)
        return self._visible(_job_from_broker(info), info["identity"], principal, job_id)

    @staticmethod
    def _visible(
        view: dict[str, Any], identity: str | None, principal: Principal | None, job_id: str
    ) -> dict[str, Any]:
        if not may_see(principal, identity):
            raise _no_job(job_id)  # (another identity's job is not there, for this one)
        return view

    async def dead_letters(
        self,
        principal: Principal | None = None,
        *,
        offset: int = 0,
        limit: int = 100,
        subject: str | None = None,
    ) -> dict[str, Any]:
        """A page of the dead letters, newest first (of ``subject`` only, when given):
        ``{"total", "offset", "limit", "dead_letters": [summary, ...]}`` (summaries: see
        :func:`dead_letter_summary`, error messages cut to :data:`MAX_SUMMARY_TEXT`).
        From the journal, else from those kept in memory. For admins.

        Raises:
          AdminError: 403 for a non-admin; 429/503 when the journal cannot be read now.
        """
        require_admin(principal, "list dead letters")
        journal = self.leader.journal
        if journal is not None:
            letters, total = await self._journal(
                lambda j: (
                    j.list_dead_letters(limit, offset, subject),
                    # (the journal's exact count, as the statistics say it: no count(*))
                    j.dead_letter_count if subject is None else j.count_dead_letters(subject),
                )
            )
        else:
            kept = self.leader.broker.dead_letters
            newest: Iterable[dict[str, Any]] = reversed(kept)
            if subject is None:
                total = len(kept)
            else:
                total = sum(1 for record in kept if record["subject"] == subject)
                newest = (record for record in newest if record["subject"] == subject)
            letters = list(islice(newest, offset, offset + limit))
        return {
            "total": total,
            "offset": offset,
            "limit": limit,
            "dead_letters": [dead_letter_summary(r, MAX_SUMMARY_TEXT) for r in letters],
        }

    async def dead_letter(self, job_id: str, principal: Principal | None = None) -> dict[str, Any]:
        """Dead letter ``job_id``: its summary's fields and ``max_attempts``, ``headers``,
        ``traceback``, ``identity`` (the job's owner), ``payload`` (shown as
        :func:`show_payload` does) and ``truncated``. For admins.

        Raises:
          AdminError: 403 for a non-admin, 404 when there is none; 429/503 as above.
        """
        require_admin(principal, "read dead letters")
        journal = self.leader.journal
        if journal is not None:
            record = await self._journal(lambda j: j.view_dead_letter(job_id, MAX_DECODED))
            if record is None:
                raise _no_dead_letter(job_id)
            payload, payload_cut = show_payload(record["payload"], record["payload_bytes"] or 0)
            traceback_chars = record.get("traceback_chars")
            record["worker"] = _kept_worker(self.leader.broker.dead_letters, job_id)
        else:
            record = _find(self.leader.broker.dead_letters, job_id)
            if record is None:
                raise _no_dead_letter(job_id)
            payload, payload_cut = show_payload(record.get("payload"))
            traceback_chars = None
        error, error_cut = show_error(
            record.get("error_type"),
            record.get("error_message"),
            record.get("traceback"),
            traceback_chars,
        )
        return {
            "job_id": record["job_id"],
            "subject": record["subject"],
            "attempts": record["attempts"],
            "max_attempts": record.get("max_attempts"),
            "error_type": error["code"],
            "error_message": error["message"],
            "traceback": error["traceback"],
            "dead_at": record.get("dead_at"),
            "worker": record.get("worker"),
            "identity": record.get("identity"),
            "headers": dict(record.get("headers") or {}),
            "payload": payload,
            "truncated": payload_cut or error_cut,
        }

    # ----------------------------------------------------------------- changing

    async def retry_dead_letter(
        self, job_id: str, principal: Principal | None = None
    ) -> dict[str, Any]:
        """Requeue dead letter ``job_id`` as a new job under its id (attempts reset);
        answers ``{"retried": 1, "refused": [], "remaining": n}`` once the journal has
        written it, ``n`` being how many dead letters there were (all of them, of every
        subject) less this one: a count to show, not a page to ask for. For admins.

        Raises:
          AdminError: 403 for a non-admin; 404 when there is no such dead letter; 409
            when a job with its id runs again already; 503 when the leader's queue is
            full or the journal refuses writes.
        """
        require_admin(principal, "retry dead letters")
        leader = self.leader
        broker = leader.broker
        journal = leader.journal
        if journal is not None:
            found, total = await self._journal(
                lambda j: (j.get_dead_letters(job_id, 1), j.dead_letter_count)
            )
            record = found[0] if found else None
        else:
            record = _find(broker.dead_letters, job_id)
            total = len(broker.dead_letters)
        if record is None:
            raise _no_dead_letter(job_id)
        if job_id in broker.jobs:
            raise AdminError(409, "conflict", f"job {job_id} is running again already")
        with leader_batch(leader) as now:
            why = broker.requeue_dead_letter(record, now)
        if why is not None:
            raise AdminError(503, "busy", why, retry_after=1.0)
        await self._written()
        return {"retried": 1, "refused": [], "remaining": max(0, total - 1)}

    async def retry_all_dead_letters(
        self, principal: Principal | None = None, *, max_jobs: int = MAX_RETRY_ALL
    ) -> dict[str, Any]:
        """Requeue the dead letters there are when it starts, oldest first,
        :data:`RETRY_PAGE` at a time, up to ``max_jobs`` of them (or until a whole page is
        refused: the queue is full); answers ``{"retried", "refused": [up to ten
        reasons], "remaining"}`` once the journal has written them. (A requeued job that
        fails for good again while it runs is a new dead letter: not retried again.)
        ``remaining`` is how many dead letters there are when it answers: those it did
        not reach (past ``max_jobs``, or refused) and those that died after it started,
        including retried jobs that failed again. Ask again when ``retried`` was
        ``max_jobs`` (it stopped short); ``remaining`` above 0 alone means some died
        again, and another pass would retry those. For admins.

        Raises:
          AdminError: 403 for a non-admin; 429/503 as above.
        """
        require_admin(principal, "retry dead letters")
        leader = self.leader
        broker = leader.broker
        journal = leader.journal
        retried = 0
        skipped = 0  # (refused ones stay, oldest: the next page starts after them)
        refused: list[str] = []
        # (what died since it started died again, or first: those are newer than this)
        started = trio.current_time() + broker.clock_offset
        while retried + skipped < max_jobs:
            size = min(RETRY_PAGE, max_jobs - retried - skipped)
            if journal is not None:

                def oldest(j: SqliteJournal, size: int = size, after: int = skipped) -> list[Any]:
                    return j.get_dead_letters(None, size, after)

                page = await self._journal(oldest)
            else:
                page = list(islice(broker.dead_letters, skipped, skipped + size))
            older = [r for r in page if (r.get("dead_at") or 0.0) <= started]
            if not older:
                break
            with leader_batch(leader) as now:
                count = retry_dead_letters(broker, older, now, refused)
            retried += count
            skipped += len(older) - count
            if not count or len(older) < len(page):
                break  # (every one refused: the queue is full, or they all run again)
            await trio.lowlevel.checkpoint()
        if journal is not None:
            remaining = await self._journal(lambda j: j.dead_letter_count)
        else:
            remaining = len(broker.dead_letters)
        return {"retried": retried, "refused": refused, "remaining": remaining}

    async def purge_dead_letter(
        self, job_id: str, principal: Principal | None = None
    ) -> dict[str, Any]:
        """Forget dead letter ``job_id``: ``{"purged": 1}`` once written. For admins.

        Raises:
          AdminError: 403 for a non-admin, 404 when there is none; 429/503 as above.
        """
        require_admin(principal, "purge dead letters")
        leader = self.leader
        journal = leader.journal
        if journal is not None:
            found = await self._journal(lambda j: j.view_dead_letter(job_id, 1)) is not None
        else:
            found = _find(leader.broker.dead_letters, job_id) is not None
        if not found:
            raise _no_dead_letter(job_id)
        with leader_batch(leader):
            leader.broker.forget_dead_letters({job_id})
        await self._written()
        return {"purged": 1}

    async def purge_dead_letters(self, principal: Principal | None = None) -> dict[str, Any]:
        """Forget every dead letter: ``{"purged": n}``. For admins.

        Raises:
          AdminError: 403 for a non-admin; 429/503 as above.
        """
        require_admin(principal, "purge dead letters")
        leader = self.leader
        broker = leader.broker
        journal = leader.journal
        if journal is None:
            with leader_batch(leader):
                purged = broker.forget_dead_letters(None)
            return {"purged": purged}
        with self._slot(admin=True):
            async with leader._db_lock:
                if not await leader._commit_once(journal):
                    raise AdminError(
                        503, "busy", journal.refusal or "the journal cannot be written",
                        retry_after=1.0,
                    )  # fmt: skip
                # Those written, and those dead since (during that write), are forgotten
                # in memory and in the file at one moment: what dies after stays in both.
                purged = journal.dead_letter_count + journal.pending_dead_letters
                with leader_batch(leader):
                    broker.forget_dead_letters(None)
        await self._written()
        return {"purged": purged}

    async def cancel(
        self, job_id: str, principal: Principal | None = None, reason: str | None = None
    ) -> dict[str, Any]:
        """Cancel job ``job_id`` as a client's Cancel does: a waiting job ends at once
        (``"state": "cancelled"``), a running one is asked to stop (``"cancelling"``: its
        worker's answer ends it). Answers ``{"job_id", "state"}`` once written. For its
        owner and admins.

        Raises:
          AdminError: 404 when there is no such job or it is not ``principal``'s; 409
            when it has finished; 503 when the journal refuses writes.
        """
        leader = self.leader
        broker = leader.broker
        job = broker.jobs.get(job_id)
        if job is None:
            info = broker.describe_job(job_id, trio.current_time())
            if info is None or not may_see(principal, info["identity"]):
                raise _no_job(job_id)
            if info["state"] == "dead":
                raise AdminError(
                    409,
                    "conflict",
                    f"job {job_id} has finished (dead): it is in the dead letters, retry it"
                    " from there",
                )
            raise AdminError(409, "conflict", f"job {job_id} has finished ({info['state']})")
        if not may_see(principal, job.identity):
            raise _no_job(job_id)
        if reason is None:
            who = "an operator" if principal is None else repr(principal.name)
            reason = f"cancelled over HTTP by {who}"
        with leader_batch(leader) as now:
            state = broker.cancel_job(job_id, reason, now)
        await self._written()
        return {
            "job_id": job_id,
            "state": "cancelling" if state is JobState.ASSIGNED else "cancelled",
        }

    async def scale(
        self, group: str, instances: int, principal: Principal | None = None
    ) -> dict[str, Any]:
        """Have worker group ``group`` run ``instances`` instances (0 to
        :data:`MAX_INSTANCES`), through the leader's :attr:`~Leader.scaler`: answers
        ``{"group", "instances"}`` (the count the group is to have from now on; the
        instances start or drain in the background). For admins.

        Raises:
          AdminError: 400 for a count out of bounds, 403 for a non-admin, 404 for a group
            the leader does not run, 409 for a group that cannot change now and when the
            leader manages no groups (no scaler: ``not_managed``).
        """
        require_admin(principal, "scale groups")
        if type(instances) is not int or not 0 <= instances <= MAX_INSTANCES:
            raise AdminError(
                400, "bad_request", f"instances must be an integer from 0 to {MAX_INSTANCES}"
            )
        scaler = self.leader.scaler
        if scaler is None:
            raise AdminError(
                409,
                "not_managed",
                "this leader does not manage its groups (a cluster's leader does)",
            )
        try:
            kept = await scaler(group, instances)
        except LookupError:
            raise AdminError(404, "not_found", f"no group {group!r} runs here") from None
        except ValueError as exc:
            raise AdminError(400, "bad_request", str(exc)) from None
        except RuntimeError as exc:
            raise AdminError(409, "conflict", str(exc)) from None
        return {"group": group, "instances": kept}

    # ----------------------------------------------------------------- journal

    async def _journal(self, read: Callable[[SqliteJournal], T], *, admin: bool = True) -> T:
        """``read`` of the journal (see :func:`read_journal`), counted among the
        :data:`MAX_ADMIN_QUERIES` (``admin``), else the :data:`MAX_USER_QUERIES`."""
        leader = self.leader
        journal = leader.journal
        assert journal is not None
        with self._slot(admin=admin):
            return await read_journal(leader, journal, read)

    @contextlib.contextmanager
    def _slot(self, *, admin: bool) -> Iterator[None]:
        """Count a journal query among the admins' (shared with the protocol's) or the
        other identities' (this leader's HTTP job lookups).

        Raises:
          AdminError: 429: as many run already.
        """
        leader = self.leader
        if admin:
            if leader._admin_queries >= MAX_ADMIN_QUERIES:
                raise AdminError(429, "busy", "too many journal queries at once", retry_after=1.0)
            leader._admin_queries += 1
        else:
            if self._user_queries >= MAX_USER_QUERIES:
                raise AdminError(429, "busy", "too many job lookups at once", retry_after=1.0)
            self._user_queries += 1
        try:
            yield
        finally:
            if admin:
                leader._admin_queries -= 1
            else:
                self._user_queries -= 1

    async def _written(self) -> None:
        """Return once the journal has written what the broker just did.

        Raises:
          AdminError: 503: it cannot now (the change is made, and is written once the
            journal works again).
        """
        leader = self.leader
        journal = leader.journal
        if journal is None:
            return
        async with leader._db_lock:
            if not await leader._commit_once(journal):
                raise AdminError(
                    503,
                    "busy",
                    f"done, but not written yet: {journal.refusal} (it is written once the"
                    " journal works again)",
                    retry_after=1.0,
                )


# --------------------------------------------------------------------------- job views


def _no_job(job_id: str) -> AdminError:
    return AdminError(
        404,
        "not_found",
        f"no job {job_id!r:.300}: unknown here, or finished longer ago than the leader keeps results",
    )


def _no_dead_letter(job_id: str) -> AdminError:
    return AdminError(404, "not_found", f"no dead letter {job_id!r:.300}")


def _find(letters: Reversible[Mapping[str, Any]], job_id: str) -> dict[str, Any] | None:
    """The newest dead letter of ``job_id`` among those kept in memory (a copy)."""
    for record in reversed(letters):
        if record["job_id"] == job_id:
            return dict(record)
    return None


#: What a job's view takes from the broker's record of its end when the journal's row or
#: dead letter does not say it (the journal keeps neither its worker nor when it started).
_KNOWN_FIELDS = ("worker", "submitted_at", "started_at", "finished_at")


def _with_known(view: dict[str, Any], info: Mapping[str, Any] | None) -> dict[str, Any]:
    """``view`` with the fields of :data:`_KNOWN_FIELDS` it lacks taken from ``info``
    (:meth:`Broker.describe_job <actors.leader._broker.Broker.describe_job>` of the same
    job, finished: its stored result) when it has them."""
    if info is not None and info["state"] not in ACTIVE_STATES:
        for key in _KNOWN_FIELDS:
            if view[key] is None:
                view[key] = info[key]
    return view


def _kept_worker(letters: Reversible[Mapping[str, Any]], job_id: str) -> str | None:
    """The worker of dead letter ``job_id`` as kept in memory (the journal does not keep
    it), None when it is not kept there."""
    record = _find(letters, job_id)
    return None if record is None else record.get("worker")


def _job_from_broker(info: Mapping[str, Any]) -> dict[str, Any]:
    result, result_cut = show_payload(info["result"])
    error: dict[str, Any] | None = None
    error_cut = False
    if info["error"] is not None:
        error, error_cut = show_error(info["error"][0], info["error"][1], info["traceback"])
    return {
        "job_id": info["job_id"],
        "subject": info["subject"],
        "state": info["state"],
        "attempts": info["attempts"],
        "max_attempts": info["max_attempts"],
        "worker": info["worker"],
        "submitted_at": info["submitted_at"],
        "started_at": info["started_at"],
        "retry_at": info["retry_at"],
        "finished_at": info["finished_at"],
        "cancelling": info["cancelling"],
        "result": result,
        "error": error,
        "truncated": result_cut or error_cut,
    }


#: A finished row's state in the journal, as the API names it (``done`` rows that failed
#: are ``failed``).
_ROW_STATES = {"done": "done", "dead": "dead", "expired": "expired", "cancelled": "cancelled"}


def _job_from_row(row: Mapping[str, Any]) -> dict[str, Any]:
    state = _ROW_STATES.get(row["state"], row["state"])
    if state == "done" and not row["ok"]:
        state = "failed"
    result, result_cut = show_payload(row["result"], row["result_bytes"] or 0)
    error: dict[str, Any] | None = None
    error_cut = False
    if state == "expired":
        error = {
            "code": "Expired",
            "message": "it waited for a worker longer than allowed",
            "traceback": None,
        }
    elif not row["ok"] and (row["error_type"] is not None or row["error_message"] is not None):
        error, error_cut = show_error(
            row["error_type"], row["error_message"], row["traceback"], row["traceback_chars"]
        )
    return {
        "job_id": row["job_id"],
        "subject": row["subject"],
        "state": state,
        "attempts": row["attempt"],
        "max_attempts": row["max_attempts"],
        "worker": None,
        "submitted_at": row["submitted_at"],
        "started_at": None,
        "retry_at": None,
        "finished_at": row["finished_at"],
        "cancelling": None,
        "result": result,
        "error": error,
        "truncated": result_cut or error_cut,
    }


def _job_from_dead_letter(letter: Mapping[str, Any]) -> dict[str, Any]:
    error, error_cut = show_error(
        letter.get("error_type"),
        letter.get("error_message"),
        letter.get("traceback"),
        letter.get("traceback_chars"),
    )
    return {
        "job_id": letter["job_id"],
        "subject": letter["subject"],
        "state": "dead",
        "attempts": letter["attempts"],
        "max_attempts": letter.get("max_attempts"),
        "worker": letter.get("worker"),
        "submitted_at": None,
        "started_at": None,
        "retry_at": None,
        "finished_at": letter.get("dead_at"),
        "cancelling": None,
        "result": None,
        "error": error,
        "truncated": error_cut,
    }
