"""The leader's journal: accepted jobs, their attempts and outcomes, and dead letters, in
SQLite (the stdlib :mod:`sqlite3`, WAL mode), so that an accepted job outlives the process.

The broker tells the journal of each change as it makes it (:meth:`SqliteJournal.accept`,
:meth:`~SqliteJournal.assign`, :meth:`~SqliteJournal.retry`, :meth:`~SqliteJournal.finish`,
:meth:`~SqliteJournal.dead_letter`): O(1) each, on the event loop, no I/O. The changes of a
job are merged while they wait (a job accepted, assigned and finished between two commits
is one row written once). The leader's writer task then takes what is pending
(:meth:`~SqliteJournal.take`) and commits it in one transaction, in a worker thread when
the commit waits for the disk (:meth:`~SqliteJournal.write`): group commit, one fsync for a batch of any size. What the
broker must not say before it is stored (a job's acceptance, a result) waits for that
commit (see :class:`~actors.leader.Leader`).

Times in the file are wall-clock seconds (``time.time()``), so that they mean something
after a restart; the broker's are trio's clock, converted with :attr:`clock_offset`.

The file's schema and the choices behind it are described in ``docs/durability.md``. This
class is the one interface the broker sees (:class:`JobJournal`), so that another store (the
JetStream backend of a later issue) can take its place.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import sqlite3
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol

import attrs
import cbor2

from protocol import Encoded

from ._jobs import CancelledResult, DeadResult, JobRecord, JobState, StoredResult

log = logging.getLogger("actors.leader.journal")

#: The journal's file name in its data directory.
JOURNAL_FILE = "journal.sqlite3"
#: The lock file that keeps a second leader off the same data directory.
LOCK_FILE = "leader.lock"
#: The schema's version (stored in ``PRAGMA user_version``).
SCHEMA_VERSION = 2
#: Finished rows deleted at most per pruning step (each a short transaction).
PRUNE_BATCH = 2000
#: The largest integer written (SQLite's are signed 64-bit; a protocol count may be larger,
#: and no job makes that many attempts).
MAX_STORED_INT = 2**62
#: Sync tiers: ``full`` survives power loss, ``normal`` a process crash only.
SYNC_MODES = ("full", "normal")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    job_id TEXT PRIMARY KEY,
    subject TEXT NOT NULL,
    payload BLOB,
    headers BLOB,
    qos INTEGER NOT NULL,
    max_attempts INTEGER NOT NULL,
    submitted_max_attempts INTEGER,
    submitted_at REAL NOT NULL,
    expires_at REAL,
    state TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    retry_at REAL,
    error_type TEXT,
    error_message TEXT,
    traceback TEXT,
    finished_at REAL,
    ok INTEGER,
    result BLOB,
    final INTEGER,
    size INTEGER NOT NULL,
    identity TEXT
);
CREATE INDEX IF NOT EXISTS jobs_finished ON jobs (finished_at) WHERE finished_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS dead_letters (
    job_id TEXT PRIMARY KEY,
    subject TEXT NOT NULL,
    payload BLOB,
    headers BLOB,
    submitted_max_attempts INTEGER,
    attempts INTEGER NOT NULL,
    error_type TEXT,
    error_message TEXT,
    traceback TEXT,
    dead_at REAL NOT NULL,
    size INTEGER NOT NULL,
    identity TEXT
);
CREATE INDEX IF NOT EXISTS dead_letters_at ON dead_letters (dead_at);
CREATE INDEX IF NOT EXISTS dead_letters_subject ON dead_letters (subject, dead_at);
"""

_INSERT = (
    "INSERT OR REPLACE INTO jobs (job_id, subject, payload, headers, qos, max_attempts,"
    " submitted_max_attempts, submitted_at, expires_at, state, attempt, retry_at, error_type,"
    " error_message, traceback, finished_at, ok, result, final, size, identity)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_UPDATE = (
    "UPDATE jobs SET state = ?, attempt = ?, retry_at = ?, error_type = ?, error_message = ?,"
    " traceback = ?, finished_at = ?, ok = ?, result = ?, final = ? WHERE job_id = ?"
)
_INSERT_DEAD = (
    "INSERT OR REPLACE INTO dead_letters (job_id, subject, payload, headers,"
    " submitted_max_attempts, attempts, error_type, error_message, traceback, dead_at, size,"
    " identity) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_DEAD_COLUMNS = (
    "job_id, subject, payload, headers, submitted_max_attempts, attempts, error_type,"
    " error_message, traceback, dead_at, size, identity"
)
_DEAD_NEWEST = f"SELECT {_DEAD_COLUMNS} FROM dead_letters ORDER BY dead_at DESC LIMIT ?"
_DEAD_OLDEST = f"SELECT {_DEAD_COLUMNS} FROM dead_letters ORDER BY dead_at LIMIT ?"
_DEAD_BY_ID = f"SELECT {_DEAD_COLUMNS} FROM dead_letters WHERE job_id = ?"
_DEAD_COUNT = "SELECT count(*) FROM dead_letters"
# Pages of summaries (no payload, headers or traceback read), newest first, by an index
# (whose entries hold the rowid: the order of ties, without a sort).
_SUMMARY_COLUMNS = "job_id, subject, attempts, error_type, error_message, dead_at, size, identity"
_DEAD_PAGE = (
    f"SELECT {_SUMMARY_COLUMNS} FROM dead_letters ORDER BY dead_at DESC, rowid DESC"
    " LIMIT ? OFFSET ?"
)
_DEAD_PAGE_OF_SUBJECT = (
    f"SELECT {_SUMMARY_COLUMNS} FROM dead_letters WHERE subject = ?"
    " ORDER BY dead_at DESC, rowid DESC LIMIT ? OFFSET ?"
)
_DEAD_COUNT_OF_SUBJECT = "SELECT count(*) FROM dead_letters WHERE subject = ?"
_DEAD_OLDEST_FROM = f"SELECT {_DEAD_COLUMNS} FROM dead_letters ORDER BY dead_at LIMIT ? OFFSET ?"
# One dead letter or job to show, with the first bytes of its blobs, the last characters
# of its traceback (where the exception is) and their lengths: a payload or result of
# megabytes is not read to show a few kilobytes of it.
_DEAD_VIEW = (
    "SELECT job_id, subject, substr(payload, 1, ?), length(payload), headers,"
    " submitted_max_attempts, attempts, error_type, error_message, substr(traceback, -?),"
    " length(traceback), dead_at, size, identity FROM dead_letters WHERE job_id = ?"
)
_JOB_VIEW = (
    "SELECT job_id, subject, qos, max_attempts, submitted_at, expires_at, state, attempt,"
    " retry_at, error_type, error_message, substr(traceback, -?), length(traceback),"
    " finished_at, ok, substr(result, 1, ?), length(result), final, identity FROM jobs"
    " WHERE job_id = ?"
)

# Positions in a pending row (the _INSERT order; an update uses the mutable tail).
_STATE, _ATTEMPT, _RETRY_AT, _ERR_TYPE, _ERR_MSG, _TB, _FINISHED, _OK, _RESULT, _FINAL = range(
    9, 19
)


class JournalError(Exception):
    """The journal cannot be opened or written: the message names the file, what went
    wrong and what to do about it."""


class JobJournal(Protocol):
    """What the broker needs of a journal (see :class:`SqliteJournal`)."""

    #: Why submits are refused now (the journal is full or failing), or None.
    refusal: str | None

    def accept(self, job: JobRecord, now: float) -> None: ...
    def assign(self, job: JobRecord) -> None: ...
    def retry(self, job: JobRecord) -> None: ...
    def finish(
        self, job: JobRecord, state: JobState, stored: StoredResult | None, now: float
    ) -> None: ...
    def dead_letter(self, job: JobRecord, record: dict[str, Any], now: float) -> None: ...
    def forget_dead_letters(self, job_ids: Iterable[str]) -> None: ...
    def purge_dead_letters_later(self) -> None: ...

    #: How many dead letters it holds (as of its last write).
    @property
    def dead_letter_count(self) -> int: ...


@attrs.define
class RecoveredJob:
    """An unfinished job read back from the journal (times are wall-clock)."""

    job_id: str
    subject: str
    payload: Any
    headers: dict[str, str]
    qos: int
    max_attempts: int
    submitted_max_attempts: int | None
    submitted_at: float
    expires_at: float | None
    state: JobState
    attempt: int
    retry_at: float | None
    last_error: tuple[str, str] | None
    last_traceback: str | None
    size: int
    identity: str | None = None


@attrs.define
class Recovered:
    """What a journal holds when the leader starts."""

    #: unfinished jobs, in the order they were accepted
    jobs: list[RecoveredJob] = attrs.Factory(list)
    #: ``(job_id, finished_at, result, size)`` of the jobs finished within the dedup
    #: window, oldest first
    results: list[tuple[str, float, StoredResult, int]] = attrs.Factory(list)
    #: the newest dead letters (records as the broker keeps them), oldest first
    dead_letters: list[dict[str, Any]] = attrs.Factory(list)
    #: seconds the reading took
    seconds: float = 0.0


@attrs.define
class Batch:
    """Changes taken from a journal, to be written in one transaction."""

    inserts: list[list[Any]]
    updates: list[list[Any]]
    dead: list[tuple[Any, ...]]
    forget: list[str]
    #: every dead letter written before goes first (those of ``dead`` came after)
    purge_dead: bool = False

    def __len__(self) -> int:
        changes = len(self.inserts) + len(self.updates) + len(self.dead) + len(self.forget)
        return changes + self.purge_dead


def _blob(value: Any) -> bytes | None:
    """A payload as CBOR bytes (a payload from the wire is kept as it came)."""
    if value is None:
        return None
    if type(value) is Encoded:
        return value.data
    return cbor2.dumps(value)


def _value(blob: bytes | None) -> Any:
    """A payload read back: the CBOR bytes as :class:`~protocol.Encoded`, forwarded as
    they are (the leader never decodes a payload)."""
    return None if blob is None else Encoded(bytes(blob))


def default_data_dir(name: str) -> Path:
    """The data directory of a leader called ``name`` when none is given:
    ``$ACTORS_DATA_DIR/<name>``, else ``$XDG_DATA_HOME/trio-actors/<name>``, else
    ``~/.local/share/trio-actors/<name>``."""
    base = os.environ.get("ACTORS_DATA_DIR")
    if base:
        return Path(base) / name
    xdg = os.environ.get("XDG_DATA_HOME")
    root = Path(xdg) if xdg else Path.home() / ".local" / "share"
    return root / "trio-actors" / name


def read_dead_letters(
    data_dir: str | os.PathLike[str], job_id: str | None = None, limit: int = 1000
) -> tuple[list[dict[str, Any]], int]:
    """The dead letters of the journal in ``data_dir``, read directly and read-only (for
    ``python -m actors dlq list --data-dir``, with the leader stopped or running): dead
    letter ``job_id`` whole (payload decoded), or the newest ``limit`` without payloads;
    and how many there are in all.

    Raises:
      JournalError: no journal there, or one that cannot be read.
    """
    path = Path(data_dir) / JOURNAL_FILE
    if not path.exists():
        raise JournalError(f"no journal at {path} (is DIR the leader's data directory?)")
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5.0)
        try:
            db.execute(_DEAD_COUNT).fetchone()
        except sqlite3.OperationalError:
            db.close()
            # (a read-only directory: SQLite cannot make the -shm file a WAL reader needs;
            # a journal nobody writes can be read as it is)
            db = sqlite3.connect(f"file:{path}?mode=ro&immutable=1", uri=True, timeout=5.0)
        try:
            total = int(db.execute(_DEAD_COUNT).fetchone()[0])
            newest, by_id = _DEAD_NEWEST, _DEAD_BY_ID
            if db.execute("PRAGMA user_version").fetchone()[0] == 1:
                # (written before jobs had owners, and not migrated: read-only here)
                newest, by_id = (
                    sql.replace(", identity FROM", ", NULL AS identity FROM")
                    for sql in (newest, by_id)
                )
            if job_id is None:
                rows = db.execute(newest, (limit,)).fetchall()
                return [SqliteJournal._dead_record(row, whole=False) for row in rows], total
            rows = db.execute(by_id, (job_id,)).fetchall()
        finally:
            db.close()
        letters = [SqliteJournal._dead_record(row, whole=True) for row in rows]
        for letter in letters:
            payload = letter["payload"]
            letter["payload"] = None if payload is None else cbor2.loads(payload.data)
        return letters, total
    except (sqlite3.Error, ValueError, cbor2.CBORDecodeError) as exc:
        raise JournalError(explain(exc, path)) from exc


def explain(error: BaseException, path: Path | str) -> str:
    """The words of a journal failure: the file, what SQLite or the OS said, what to do."""
    text = str(error) or type(error).__name__
    low = text.lower()
    if "full" in low or getattr(error, "errno", None) == errno.ENOSPC:
        advice = (
            "the disk is full (or the journal reached SQLite's page limit): free space on it"
            " or move data_dir; nothing not written was acknowledged"
        )
    elif "readonly" in low or "read-only" in low or "permission" in low:
        advice = (
            "the leader may not write it: make the file, its -wal/-shm files and its"
            " directory writable by the leader's user"
        )
    elif "malformed" in low or "not a database" in low or "corrupt" in low:
        advice = (
            "the file is corrupt: stop the leader, move the file aside (keep it: `sqlite3"
            " FILE .recover` may save its jobs) and start again with an empty journal, or"
            " restore a backup"
        )
    elif "locked" in low or "busy" in low:
        advice = "another process holds the file: is another leader using this data_dir?"
    else:
        advice = "check the file and its directory"
    return f"journal {path}: {text}: {advice}"


def _dead_summary(
    job_id: str,
    subject: str,
    attempts: int,
    error_type: str | None,
    error_message: str | None,
    dead_at: float,
    size: int,
    identity: str | None,
) -> dict[str, Any]:
    """A dead letter without its payload, headers and traceback (the ``identity`` key
    only when it has one)."""
    record: dict[str, Any] = {
        "job_id": job_id,
        "subject": subject,
        "attempts": attempts,
        "error_type": error_type,
        "error_message": error_message,
        "dead_at": dead_at,
        "size": size,
    }
    if identity is not None:
        record["identity"] = identity
    return record


class SqliteJournal:
    """The journal of a leader, in ``<data_dir>/journal.sqlite3``.

    Args:
      data_dir: the directory (created if missing); a lock file in it keeps a second
        leader out.
      sync: ``"full"`` (default: a commit survives power loss) or ``"normal"`` (survives a
        crash of the process; the last commits may roll back on power loss).
      max_bytes: the size of the file's live pages past which submits are refused
        (:attr:`refusal`; finished jobs are pruned after the dedup window).
      dedup_window: seconds a finished job is kept (for resubmissions and queries).
      dedup_capacity: finished jobs read back at start, at most (the newest).
      dead_letter_retention: seconds a dead letter is kept unless purged.
      max_dead_letters: dead letters read back into memory at start (the newest).

    Raises:
      JournalError: from :meth:`open`, when the directory or file cannot be used.
    """

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        *,
        sync: str = "full",
        max_bytes: int = 4 * 2**30,
        dedup_window: float = 600.0,
        dedup_capacity: int = 100_000,
        dead_letter_retention: float = 7 * 86400.0,
        max_dead_letters: int = 1000,
    ) -> None:
        if sync not in SYNC_MODES:
            raise ValueError(f"sync must be one of {', '.join(SYNC_MODES)}, got {sync!r}")
        self.data_dir = Path(data_dir)
        self.path = self.data_dir / JOURNAL_FILE
        self.sync = sync
        self.max_bytes = max_bytes
        self.dedup_window = dedup_window
        self.dedup_capacity = dedup_capacity
        self.dead_letter_retention = dead_letter_retention
        self.max_dead_letters = max_dead_letters
        #: wall-clock time minus the broker's clock (set by the leader when it starts)
        self.clock_offset = 0.0
        #: why submits are refused now: the journal is over ``max_bytes`` or its last
        #: write failed (None: they are not)
        self.refusal: str | None = None
        self.full = False
        self.failure: str | None = None
        #: bytes of live pages, as of the last write
        self.size = 0
        self.commits = 0
        self.rows_written = 0
        self._db: sqlite3.Connection | None = None
        self._checkpointer: sqlite3.Connection | None = None
        self._lock_fd: int | None = None
        self._inserts: dict[str, list[Any]] = {}
        self._updates: dict[str, list[Any]] = {}
        self._dead: dict[str, tuple[Any, ...]] = {}
        self._forget: dict[str, None] = {}
        self._purge_dead = False
        self._dead_letter_count = 0

    # ------------------------------------------------------------------ opening

    def open(self, now_wall: float | None = None) -> Recovered:
        """Lock the data directory, open (or create) the file and read back what it holds
        (blocking: the leader calls it in a thread).

        Raises:
          JournalError: the directory cannot be made or locked (another leader uses it),
            the file is read-only, corrupt or of an unknown schema.
        """
        started = time.perf_counter()
        now_wall = time.time() if now_wall is None else now_wall
        try:
            self.data_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise JournalError(
                f"cannot create the data directory {self.data_dir}: {exc}"
                " (give the leader another data_dir, or --memory)"
            ) from exc
        self._lock()
        try:
            recovered = self._open_db(now_wall)
        except sqlite3.Error as exc:
            self.close()
            raise JournalError(explain(exc, self.path)) from exc
        except (ValueError, TypeError, cbor2.CBORDecodeError) as exc:  # a row it cannot read
            self.close()
            corrupt = sqlite3.DatabaseError(f"corrupt row: {exc}")
            raise JournalError(explain(corrupt, self.path)) from exc
        except BaseException:
            self.close()
            raise
        recovered.seconds = time.perf_counter() - started
        return recovered

    def _lock(self) -> None:
        lock_path = self.data_dir / LOCK_FILE
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise JournalError(f"cannot open the lock file {lock_path}: {exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            try:
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            finally:
                os.close(fd)
            raise JournalError(
                f"the data directory {self.data_dir} is in use by another leader (pid {holder}):"
                " stop it, or give this one another data_dir"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd

    def _open_db(self, now_wall: float) -> Recovered:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=5.0)
        self._db = db
        mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise sqlite3.OperationalError(f"cannot use WAL mode (journal_mode is {mode})")
        db.execute(f"PRAGMA synchronous={self.sync.upper()}")
        db.execute("PRAGMA temp_store=MEMORY")
        db.execute("PRAGMA journal_size_limit=67108864")
        # Checkpoints are the leader's (see checkpoint): on its own connection, in a
        # thread, so that no commit ever copies the WAL into the file (and fsyncs it).
        db.execute("PRAGMA wal_autocheckpoint=0")
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version not in (0, 1, SCHEMA_VERSION):
            raise JournalError(
                f"journal {self.path} has schema version {version}; this leader reads"
                f" version {SCHEMA_VERSION}: use the trio-actors release that wrote it, or"
                " another data_dir"
            )
        db.execute("BEGIN IMMEDIATE")
        try:
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    db.execute(statement)
            if version == 1:  # (written before jobs had owners: they have none)
                db.execute("ALTER TABLE jobs ADD COLUMN identity TEXT")
                db.execute("ALTER TABLE dead_letters ADD COLUMN identity TEXT")
            db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        self._prune_all(now_wall)
        self._dead_letter_count = int(db.execute(_DEAD_COUNT).fetchone()[0])
        recovered = self._read(now_wall)
        self._measure()
        return recovered

    def _read(self, now_wall: float) -> Recovered:
        db = self._db
        assert db is not None
        recovered = Recovered()
        rows = db.execute(
            "SELECT job_id, subject, payload, headers, qos, max_attempts, submitted_max_attempts,"
            " submitted_at, expires_at, state, attempt, retry_at, error_type, error_message,"
            " traceback, size, identity FROM jobs WHERE finished_at IS NULL ORDER BY rowid"
        )
        for (
            job_id,
            subject,
            payload,
            headers,
            qos,
            max_attempts,
            submitted_max,
            submitted_at,
            expires_at,
            state,
            attempt,
            retry_at,
            error_type,
            error_message,
            traceback,
            size,
            identity,
        ) in rows:
            recovered.jobs.append(
                RecoveredJob(
                    job_id=job_id,
                    subject=subject,
                    payload=_value(payload),
                    headers=cbor2.loads(headers) if headers else {},
                    qos=qos,
                    max_attempts=max_attempts,
                    submitted_max_attempts=submitted_max,
                    submitted_at=submitted_at,
                    expires_at=expires_at,
                    state=JobState(state),
                    attempt=attempt,
                    retry_at=retry_at,
                    last_error=None if error_type is None else (error_type, error_message or ""),
                    last_traceback=traceback,
                    size=size,
                    identity=identity,
                )
            )
        rows = db.execute(
            "SELECT * FROM (SELECT job_id, finished_at, state, ok, result, error_type,"
            " error_message, traceback, attempt, subject, payload, final, size, identity FROM jobs"
            " WHERE finished_at >= ? AND state != 'expired' ORDER BY finished_at DESC LIMIT ?)"
            " ORDER BY finished_at",
            (now_wall - self.dedup_window, self.dedup_capacity),
        )
        for (
            job_id,
            finished_at,
            state,
            ok,
            result,
            error_type,
            error_message,
            traceback,
            attempt,
            subject,
            payload,
            final,
            size,
            identity,
        ) in rows:
            kind = (
                CancelledResult
                if state == JobState.CANCELLED.value
                else DeadResult
                if state == JobState.DEAD.value
                else StoredResult
            )
            stored = kind(
                bool(ok),
                _value(result),
                error_type,
                error_message,
                attempt,
                traceback,
                subject,
                _value(payload),
                bool(final),
                identity,
            )
            recovered.results.append((job_id, finished_at, stored, size))
        rows = db.execute(
            f"SELECT * FROM (SELECT {_DEAD_COLUMNS} FROM dead_letters ORDER BY dead_at DESC"
            " LIMIT ?) ORDER BY dead_at",
            (self.max_dead_letters,),
        )
        recovered.dead_letters = [self._dead_record(row, whole=True) for row in rows]
        return recovered

    @staticmethod
    def _dead_record(row: Sequence[Any], *, whole: bool) -> dict[str, Any]:
        (
            job_id,
            subject,
            payload,
            headers,
            submitted_max,
            attempts,
            error_type,
            error_message,
            traceback,
            dead_at,
            size,
            identity,
        ) = row
        record = _dead_summary(
            job_id, subject, attempts, error_type, error_message, dead_at, size, identity
        )
        if whole:
            record["payload"] = _value(payload)
            record["headers"] = cbor2.loads(headers) if headers else {}
            record["traceback"] = traceback
            record["max_attempts"] = submitted_max
        return record

    @property
    def wal_bytes(self) -> int:
        """The size of the write-ahead log (what a :meth:`checkpoint` moves into the file)."""
        try:
            return os.stat(f"{self.path}-wal").st_size
        except OSError:
            return 0

    def checkpoint(self) -> None:
        """Copy the write-ahead log into the file (blocking: in a thread), on a connection
        of its own so that commits go on meanwhile (SQLite's passive checkpoint). The log is
        then reused from its start, and truncated to 64 MiB at most."""
        db = self._checkpointer
        if db is None:
            db = self._checkpointer = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, timeout=5.0
            )
            db.execute(f"PRAGMA synchronous={self.sync.upper()}")
            db.execute("PRAGMA journal_size_limit=67108864")
        try:
            db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        except sqlite3.Error as exc:
            raise JournalError(explain(exc, self.path)) from exc

    def close(self) -> None:
        """Close the file and release the data directory (what is pending is not written)."""
        checkpointer, self._checkpointer = self._checkpointer, None
        if checkpointer is not None:
            with contextlib.suppress(sqlite3.Error):
                checkpointer.close()
        db, self._db = self._db, None
        if db is not None and self._lock_fd is not None:
            with contextlib.suppress(sqlite3.Error):
                db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        if db is not None:
            with contextlib.suppress(sqlite3.Error):
                db.close()
        fd, self._lock_fd = self._lock_fd, None
        if fd is not None:
            os.close(fd)

    # ------------------------------------------------------------------ changes (event loop)

    @property
    def dirty(self) -> bool:
        """Whether changes wait to be written."""
        return bool(
            self._inserts or self._updates or self._dead or self._forget or self._purge_dead
        )

    @property
    def dead_letter_count(self) -> int:
        """How many dead letters the file holds, as of the last write: counted once when
        it opens, then kept exact by every write (those written, less those they replace
        or delete), prune and purge; no ``count(*)`` per read. (Those pending join at the
        next commit, a few milliseconds later.)"""
        return self._dead_letter_count

    def accept(self, job: JobRecord, now: float) -> None:
        """``job`` was accepted at ``now`` (the broker's clock). QoS 0 jobs are not written
        (at most once: a crash may drop them), here and in the methods below."""
        if not job.qos:
            return
        offset = self.clock_offset
        headers = job.headers
        submitted_max = job.submitted_max_attempts
        job_id = job.job_id
        self._updates.pop(job_id, None)  # (of an earlier job under this id: this one is new)
        self._inserts[job_id] = [
            job_id,
            job.subject,
            _blob(job.payload),
            cbor2.dumps(headers) if headers else None,
            job.qos,
            min(job.max_attempts, MAX_STORED_INT),
            None if submitted_max is None else min(submitted_max, MAX_STORED_INT),
            now + offset,
            None if job.expires_at is None else job.expires_at + offset,
            job.state.value,
            job.attempt,
            job.retry_at + offset if job.state is JobState.RETRY_WAIT else None,
            None,
            None,
            None,
            None,
            None,
            None,
            None,
            job.size,
            job.identity,
        ]

    def _row(self, job_id: str) -> list[Any]:
        """The pending row of ``job_id``: its insert (accepted since the last take) or its
        update, made on first use."""
        row = self._inserts.get(job_id)
        if row is None:
            row = self._updates.get(job_id)
            if row is None:
                row = self._updates[job_id] = [None] * 9 + [None] * 10 + [job_id]
        return row

    def assign(self, job: JobRecord) -> None:
        """``job`` was sent to a worker (its ``attempt`` counted)."""
        if not job.qos:
            return
        row = self._row(job.job_id)
        row[_STATE] = "assigned"
        row[_ATTEMPT] = job.attempt
        row[_RETRY_AT] = None

    def retry(self, job: JobRecord) -> None:
        """An attempt of ``job`` failed: it waits until its ``retry_at``."""
        if not job.qos:
            return
        row = self._row(job.job_id)
        row[_STATE] = "retry_wait"
        row[_ATTEMPT] = job.attempt
        row[_RETRY_AT] = job.retry_at + self.clock_offset
        error = job.last_error
        if error is not None:
            row[_ERR_TYPE], row[_ERR_MSG] = error
        row[_TB] = job.last_traceback

    def finish(
        self, job: JobRecord, state: JobState, stored: StoredResult | None, now: float
    ) -> None:
        """``job`` ended (``stored``: its outcome; None for an expired job)."""
        if not job.qos:
            return
        row = self._row(job.job_id)
        row[_STATE] = state.value
        row[_ATTEMPT] = job.attempt
        row[_RETRY_AT] = None
        row[_FINISHED] = now + self.clock_offset
        if stored is None:
            row[_OK] = 0
            row[_ERR_TYPE] = "Expired"
            row[_ERR_MSG] = row[_TB] = row[_RESULT] = None
            row[_FINAL] = 1
        else:
            row[_OK] = 1 if stored.ok else 0
            row[_RESULT] = _blob(stored.payload)
            row[_ERR_TYPE] = stored.error_type
            row[_ERR_MSG] = stored.error_message
            row[_TB] = stored.traceback
            row[_FINAL] = 1 if stored.final else 0

    def dead_letter(self, job: JobRecord, record: dict[str, Any], now: float) -> None:
        """``job`` ran out of attempts: keep its dead letter (until purged or retried, or
        past ``dead_letter_retention``)."""
        job_id = job.job_id
        self._forget.pop(job_id, None)
        headers = job.headers
        self._dead[job_id] = (
            job_id,
            job.subject,
            _blob(job.payload),
            cbor2.dumps(headers) if headers else None,
            job.submitted_max_attempts,
            record["attempts"],
            record["error_type"],
            record["error_message"],
            record["traceback"],
            now + self.clock_offset,
            job.size,
            job.identity,
        )

    def forget_dead_letters(self, job_ids: Iterable[str]) -> None:
        """Delete these dead letters (purged, or retried as new jobs)."""
        for job_id in job_ids:
            self._dead.pop(job_id, None)
            self._forget[job_id] = None

    @property
    def pending_dead_letters(self) -> int:
        """Dead letters journalled and not written yet."""
        return len(self._dead)

    def purge_dead_letters_later(self) -> None:
        """Delete every dead letter there is now, in the next write: those written and
        those pending (a dead letter journalled after this call stays). Unlike
        :meth:`purge_dead_letters`, it runs on the loop, at the moment the broker forgets
        those it keeps in memory: the file and the memory cannot disagree about what
        died in between."""
        self._dead = {}
        self._forget = {}
        self._purge_dead = True

    def take(self) -> Batch:
        """What is pending, for :meth:`write`; the journal starts a new batch."""
        batch = Batch(
            list(self._inserts.values()),
            list(self._updates.values()),
            list(self._dead.values()),
            list(self._forget),
            self._purge_dead,
        )
        self._inserts = {}
        self._updates = {}
        self._dead = {}
        self._forget = {}
        self._purge_dead = False
        return batch

    # ------------------------------------------------------------------ writing (thread)

    def write(self, batch: Batch) -> None:
        """Commit ``batch`` in one transaction (blocking: with ``sync = "full"`` it waits for
        the disk), then measure the file's size.

        Raises:
          JournalError: it could not be written (nothing of it is then stored; the caller
            keeps it and tries again).
        """
        db = self._checked_db()
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                if batch.inserts:
                    db.executemany(_INSERT, batch.inserts)
                if batch.updates:
                    db.executemany(_UPDATE, [row[9:] for row in batch.updates])
                # (counted exactly: the rows deleted, a dead letter's earlier row under its
                # id among them, then each one inserted)
                removed = 0
                if batch.purge_dead:
                    removed += db.execute("DELETE FROM dead_letters").rowcount
                gone = batch.forget + [row[0] for row in batch.dead]
                if gone:
                    removed += db.executemany(
                        "DELETE FROM dead_letters WHERE job_id = ?", [(i,) for i in gone]
                    ).rowcount
                if batch.dead:
                    db.executemany(_INSERT_DEAD, batch.dead)
                db.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    db.execute("ROLLBACK")
                raise
            self._dead_letter_count += len(batch.dead) - removed
            self.commits += 1
            self.rows_written += len(batch)
            self._measure()  # (past max_bytes, the next submits are refused)
        except (sqlite3.Error, OverflowError, ValueError, TypeError) as exc:
            raise JournalError(explain(exc, self.path)) from exc

    def prune(self, now_wall: float) -> int:
        """Delete up to :data:`PRUNE_BATCH` finished jobs older than the dedup window, and
        expired dead letters, in one short transaction (blocking: in a thread); update
        :attr:`size`. Returns how many rows went."""
        db = self._db
        if db is None:
            return 0
        try:
            cursor = db.execute(
                "DELETE FROM jobs WHERE job_id IN (SELECT job_id FROM jobs WHERE finished_at < ?"
                " LIMIT ?)",
                (now_wall - self.dedup_window, PRUNE_BATCH),
            )
            deleted = cursor.rowcount
            cursor = db.execute(
                "DELETE FROM dead_letters WHERE job_id IN (SELECT job_id FROM dead_letters"
                " WHERE dead_at < ? LIMIT ?)",
                (now_wall - self.dead_letter_retention, PRUNE_BATCH),
            )
            deleted += cursor.rowcount
            self._dead_letter_count -= cursor.rowcount
            self._measure()
        except sqlite3.Error as exc:
            raise JournalError(explain(exc, self.path)) from exc
        return deleted

    def _prune_all(self, now_wall: float) -> None:
        while self.prune(now_wall) >= PRUNE_BATCH:
            pass

    def _measure(self) -> None:
        """Read the size of the live pages; past ``max_bytes``, submits are refused."""
        db = self._db
        assert db is not None
        pages, free, page_size = (
            db.execute("PRAGMA page_count").fetchone()[0],
            db.execute("PRAGMA freelist_count").fetchone()[0],
            db.execute("PRAGMA page_size").fetchone()[0],
        )
        self.size = (pages - free) * page_size
        self.full = self.size > self.max_bytes
        self._set_refusal()

    def failed(self, message: str | None) -> None:
        """Record that writing fails (``message``) or works again (None)."""
        self.failure = message
        self._set_refusal()

    def _set_refusal(self) -> None:
        if self.failure is not None:
            self.refusal = f"the leader cannot write its journal: {self.failure}"
        elif self.full:
            self.refusal = (
                f"the leader's journal {self.path} holds {self.size} bytes, over its limit of"
                f" {self.max_bytes} (max_journal_bytes): finished jobs are pruned after the"
                " dedup window; retry later, or raise the limit"
            )
        else:
            self.refusal = None

    # ------------------------------------------------------------------ dead letters (thread)

    def purge_dead_letters(self) -> int:
        """Delete every dead letter written (blocking); returns how many went. (The
        leader's own purges use :meth:`purge_dead_letters_later`.)"""
        db = self._checked_db()
        try:
            purged = int(db.execute("DELETE FROM dead_letters").rowcount)
        except sqlite3.Error as exc:
            raise JournalError(explain(exc, self.path)) from exc
        self._dead_letter_count -= purged
        return purged

    def list_dead_letters(
        self, limit: int, offset: int = 0, subject: str | None = None
    ) -> list[dict[str, Any]]:
        """The newest ``limit`` dead letters after the newest ``offset`` (of ``subject``
        only, when given), without payloads, headers or tracebacks (blocking). Newest
        first (ties: the later written first): a page costs its size plus the rows
        skipped, in an index, never the table's payloads."""
        if subject is None:
            sql, args = _DEAD_PAGE, (limit, offset)
        else:
            sql, args = _DEAD_PAGE_OF_SUBJECT, (subject, limit, offset)
        db = self._checked_db()
        try:
            rows = db.execute(sql, args).fetchall()
        except (sqlite3.Error, OverflowError) as exc:
            raise JournalError(explain(exc, self.path)) from exc
        return [_dead_summary(*row) for row in rows]

    def count_dead_letters(self, subject: str | None = None) -> int:
        """How many dead letters the journal holds (of ``subject`` only, when given;
        blocking)."""
        db = self._checked_db()
        try:
            if subject is None:
                return int(db.execute(_DEAD_COUNT).fetchone()[0])
            return int(db.execute(_DEAD_COUNT_OF_SUBJECT, (subject,)).fetchone()[0])
        except sqlite3.Error as exc:
            raise JournalError(explain(exc, self.path)) from exc

    def get_dead_letters(
        self, job_id: str | None, limit: int, offset: int = 0
    ) -> list[dict[str, Any]]:
        """Dead letter ``job_id`` whole (a list of one, or empty), or the oldest ``limit``
        of them after the oldest ``offset`` when ``job_id`` is None (blocking)."""
        if job_id is None:
            if offset:
                return self._select_dead(_DEAD_OLDEST_FROM, (limit, offset), whole=True)
            return self._select_dead(_DEAD_OLDEST, (limit,), whole=True)
        return self._select_dead(_DEAD_BY_ID, (job_id,), whole=True)

    def view_dead_letter(self, job_id: str, max_bytes: int) -> dict[str, Any] | None:
        """Dead letter ``job_id`` to show (blocking): as :meth:`get_dead_letters` gives
        it whole, but its payload cut to its first ``max_bytes`` (``payload``: those
        bytes of its CBOR, ``payload_bytes``: its length) and its traceback to its last
        ``max_bytes`` characters (``traceback_chars``: its length); None when there is
        none. (``max_bytes`` at least 1: SQLite reads 0 as "all" from the end.)"""
        db = self._checked_db()
        try:
            row = db.execute(_DEAD_VIEW, (max_bytes, max_bytes, job_id)).fetchone()
            if row is None:
                return None
            (
                job_id,
                subject,
                payload,
                payload_bytes,
                headers,
                submitted_max,
                attempts,
                error_type,
                error_message,
                traceback,
                traceback_chars,
                dead_at,
                size,
                identity,
            ) = row
            record: dict[str, Any] = {
                "job_id": job_id,
                "subject": subject,
                "payload": None if payload is None else bytes(payload),
                "payload_bytes": payload_bytes,
                "headers": cbor2.loads(headers) if headers else {},
                "max_attempts": submitted_max,
                "attempts": attempts,
                "error_type": error_type,
                "error_message": error_message,
                "traceback": traceback,
                "traceback_chars": traceback_chars,
                "dead_at": dead_at,
                "size": size,
            }
        except (sqlite3.Error, ValueError, cbor2.CBORDecodeError) as exc:
            raise JournalError(explain(exc, self.path)) from exc
        if identity is not None:
            record["identity"] = identity
        return record

    def view_job(self, job_id: str, max_bytes: int) -> dict[str, Any] | None:
        """Job ``job_id`` as its row holds it (blocking; QoS 1 jobs, unfinished or
        finished within the dedup window): its state, attempts and times (wall clock),
        its error, its result cut to its first ``max_bytes`` (``result``: those bytes of
        its CBOR, ``result_bytes``: its length) and its traceback to its last
        ``max_bytes`` characters (``traceback_chars``: its length); None when there is no
        such row."""
        db = self._checked_db()
        try:
            row = db.execute(_JOB_VIEW, (max_bytes, max_bytes, job_id)).fetchone()
        except sqlite3.Error as exc:
            raise JournalError(explain(exc, self.path)) from exc
        if row is None:
            return None
        (
            job_id,
            subject,
            qos,
            max_attempts,
            submitted_at,
            expires_at,
            state,
            attempt,
            retry_at,
            error_type,
            error_message,
            traceback,
            traceback_chars,
            finished_at,
            ok,
            result,
            result_bytes,
            final,
            identity,
        ) = row
        return {
            "job_id": job_id,
            "subject": subject,
            "qos": qos,
            "max_attempts": max_attempts,
            "submitted_at": submitted_at,
            "expires_at": expires_at,
            "state": state,
            "attempt": attempt,
            "retry_at": retry_at,
            "error_type": error_type,
            "error_message": error_message,
            "traceback": traceback,
            "traceback_chars": traceback_chars,
            "finished_at": finished_at,
            "ok": None if ok is None else bool(ok),
            "result": None if result is None else bytes(result),
            "result_bytes": result_bytes,
            "final": bool(final),
            "identity": identity,
        }

    def _checked_db(self) -> sqlite3.Connection:
        db = self._db
        if db is None:
            raise JournalError(f"journal {self.path} is closed")
        return db

    def _select_dead(self, sql: str, args: tuple[Any, ...], *, whole: bool) -> list[dict[str, Any]]:
        db = self._checked_db()
        try:
            rows = db.execute(sql, args).fetchall()
        except sqlite3.Error as exc:
            raise JournalError(explain(exc, self.path)) from exc
        return [self._dead_record(row, whole=whole) for row in rows]
