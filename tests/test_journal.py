"""The leader's SQLite journal on its own (:class:`~actors.leader.SqliteJournal`), no event
loop: what it merges before a write, what a fresh open reads back, pruning, and the errors
it raises (their words name the file and say what to do).

Times are explicit wall-clock seconds (``clock_offset`` maps the broker's clock onto
them), so that what counts as inside the dedup window or past the dead letters' retention
is exact.
"""

from __future__ import annotations

import errno
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from actors.leader import JobState, JournalError, SqliteJournal
from actors.leader._jobs import CancelledResult, JobRecord, StoredResult
from actors.leader._journal import (
    JOURNAL_FILE,
    LOCK_FILE,
    PRUNE_BATCH,
    SCHEMA_VERSION,
    explain,
)
from protocol import Encoded, decode_payload

#: The wall-clock time the broker's t=0 stands for in these tests.
T0 = 1_700_000_000.0


def job(job_id: str, *, qos: int = 1, **kw: Any) -> JobRecord:
    kw.setdefault("payload", {"id": job_id})
    return JobRecord(
        job_id=job_id,
        subject=kw.pop("subject", "jobs.a"),
        headers=kw.pop("headers", {}),
        qos=qos,
        max_attempts=kw.pop("max_attempts", 3),
        submitted_at=kw.pop("submitted_at", 0.0),
        size=kw.pop("size", 100),
        **kw,
    )


def opened(path: Path, **kw: Any) -> SqliteJournal:
    journal = SqliteJournal(path, **kw)
    journal.open(now_wall=T0)
    journal.clock_offset = T0
    return journal


@pytest.fixture
def journal(tmp_path: Path):
    j = opened(tmp_path)
    yield j
    j.close()


def assign(j: SqliteJournal, record: JobRecord) -> None:
    record.state = JobState.ASSIGNED
    record.attempt += 1
    j.assign(record)


def done(j: SqliteJournal, record: JobRecord, now: float, result: Any = "ok") -> StoredResult:
    stored = StoredResult(True, result, None, None, record.attempt, None, record.subject)
    record.state = JobState.DONE
    j.finish(record, JobState.DONE, stored, now)
    return stored


def commit(j: SqliteJournal) -> int:
    batch = j.take()
    j.write(batch)
    return len(batch)


def rows(j: SqliteJournal, sql: str = "SELECT job_id, state, attempt FROM jobs ORDER BY rowid"):
    assert j._db is not None
    return j._db.execute(sql).fetchall()


# --------------------------------------------------------------------------- merging


def test_a_job_accepted_assigned_and_finished_between_two_takes_is_one_insert(journal):
    record = job("j1")
    journal.accept(record, 1.0)
    assign(journal, record)
    done(journal, record, 2.0, result={"square": 4})
    assert journal.dirty
    batch = journal.take()
    assert not journal.dirty
    assert (len(batch.inserts), len(batch.updates), len(batch.dead)) == (1, 0, 0)
    journal.write(batch)
    assert (journal.commits, journal.rows_written) == (1, 1)
    assert rows(
        journal, "SELECT job_id, state, attempt, ok, submitted_at, finished_at FROM jobs"
    ) == [("j1", "done", 1, 1, T0 + 1.0, T0 + 2.0)]


def test_changes_after_a_take_are_updates_of_the_written_row(journal):
    record = job("j1")
    journal.accept(record, 1.0)
    assert commit(journal) == 1
    assign(journal, record)
    batch = journal.take()
    assert (len(batch.inserts), len(batch.updates)) == (0, 1)
    journal.write(batch)
    assert rows(journal) == [("j1", "assigned", 1)]
    # An update merges too: a retry and the next assignment are one update.
    record.state = JobState.RETRY_WAIT
    record.retry_at = 5.0
    record.last_error = ("ValueError", "boom")
    journal.retry(record)
    assign(journal, record)
    batch = journal.take()
    assert (len(batch.inserts), len(batch.updates)) == (0, 1)
    journal.write(batch)
    assert rows(journal, "SELECT state, attempt, retry_at, error_type FROM jobs") == [
        ("assigned", 2, None, "ValueError")
    ]
    assert (journal.commits, journal.rows_written) == (3, 3)


def test_a_batch_of_many_jobs_is_one_commit(journal):
    for i in range(256):
        journal.accept(job(f"j{i}"), 1.0)
    assert commit(journal) == 256
    assert (journal.commits, journal.rows_written) == (1, 256)
    assert rows(journal, "SELECT count(*) FROM jobs") == [(256,)]


def test_qos_0_jobs_are_not_written(journal):
    record = job("q0", qos=0)
    journal.accept(record, 1.0)
    assign(journal, record)
    done(journal, record, 2.0)
    journal.retry(record)
    assert not journal.dirty
    assert len(journal.take()) == 0


def test_writing_an_empty_batch_changes_nothing_visible(journal):
    journal.write(journal.take())
    assert rows(journal) == []


# --------------------------------------------------------------------------- reading back


def test_a_fresh_open_reads_back_unfinished_jobs_results_and_dead_letters(tmp_path):
    j = opened(tmp_path)
    queued = job(
        "queued",
        headers={"key": "k1"},
        payload={"n": 1},
        max_attempts=5,
        submitted_max_attempts=5,
        expires_at=100.0,
        size=123,
    )
    j.accept(queued, 1.0)
    waiting = job("waiting")
    j.accept(waiting, 1.5)
    assign(j, waiting)
    waiting.state = JobState.RETRY_WAIT
    waiting.retry_at = 30.0
    waiting.last_error = ("ValueError", "boom")
    waiting.last_traceback = "Traceback: boom"
    j.retry(waiting)
    running = job("running")
    j.accept(running, 2.0)
    assign(j, running)
    commit(j)
    finished = job("finished")
    j.accept(finished, 2.5)
    assign(j, finished)
    done(j, finished, 3.0, result={"square": 9})
    cancelled = job("cancelled")
    j.accept(cancelled, 3.5)
    cancelled.state = JobState.CANCELLED
    j.finish(
        cancelled,
        JobState.CANCELLED,
        CancelledResult(False, None, "Cancelled", "by a test", 0, None, "jobs.a", None),
        4.0,
    )
    expired = job("expired")
    j.accept(expired, 4.5)
    expired.state = JobState.EXPIRED
    j.finish(expired, JobState.EXPIRED, None, 5.0)
    j.accept(job("qos0", qos=0), 5.0)
    dead = job("dead", headers={"h": "v"}, payload=[1, 2], submitted_max_attempts=2)
    dead.attempt = 2
    j.dead_letter(
        dead,
        {
            "attempts": 2,
            "error_type": "KeyError",
            "error_message": "nope",
            "traceback": "Traceback: nope",
        },
        6.0,
    )
    commit(j)
    j.close()

    again = SqliteJournal(tmp_path)
    recovered = again.open(now_wall=T0 + 10.0)
    try:
        assert [r.job_id for r in recovered.jobs] == ["queued", "waiting", "running"]
        q, w, r = recovered.jobs
        assert q.state is JobState.QUEUED
        assert isinstance(q.payload, Encoded) and decode_payload(q.payload) == {"n": 1}
        assert q.headers == {"key": "k1"}
        assert (q.max_attempts, q.submitted_max_attempts, q.size) == (5, 5, 123)
        assert (q.submitted_at, q.expires_at, q.attempt) == (T0 + 1.0, T0 + 100.0, 0)
        assert w.state is JobState.RETRY_WAIT
        assert (w.retry_at, w.attempt) == (T0 + 30.0, 1)
        assert w.last_error == ("ValueError", "boom")
        assert w.last_traceback == "Traceback: boom"
        assert (r.state, r.attempt, r.retry_at) == (JobState.ASSIGNED, 1, None)

        by_id = {job_id: (at, stored) for job_id, at, stored, _size in recovered.results}
        assert set(by_id) == {"finished", "cancelled"}  # (an expiry is no result)
        at, stored = by_id["finished"]
        assert at == T0 + 3.0
        assert type(stored) is StoredResult
        assert stored.ok and decode_payload(stored.payload) == {"square": 9}
        assert (stored.attempts, stored.subject) == (1, "jobs.a")
        assert decode_payload(stored.request) == {"id": "finished"}
        at, stored = by_id["cancelled"]
        assert type(stored) is CancelledResult
        assert (stored.ok, stored.error_type, stored.error_message) == (
            False,
            "Cancelled",
            "by a test",
        )

        [letter] = recovered.dead_letters
        assert decode_payload(letter.pop("payload")) == [1, 2]
        assert letter == {
            "job_id": "dead",
            "subject": "jobs.a",
            "attempts": 2,
            "error_type": "KeyError",
            "error_message": "nope",
            "dead_at": T0 + 6.0,
            "size": 100,
            "headers": {"h": "v"},
            "traceback": "Traceback: nope",
            "max_attempts": 2,
        }
    finally:
        again.close()


def test_results_past_the_dedup_window_are_pruned_at_open(tmp_path):
    j = opened(tmp_path, dedup_window=60.0)
    for name, at in (("old", 1.0), ("new", 50.0)):
        record = job(name)
        j.accept(record, at)
        done(j, record, at)
    commit(j)
    j.close()
    again = SqliteJournal(tmp_path, dedup_window=60.0)
    recovered = again.open(now_wall=T0 + 100.0)
    try:
        assert [r[0] for r in recovered.results] == ["new"]
        assert rows(again, "SELECT job_id FROM jobs") == [("new",)]
    finally:
        again.close()


def test_a_retried_dead_letter_is_forgotten(journal):
    dead = job("d")
    record = {"attempts": 1, "error_type": "E", "error_message": "m", "traceback": None}
    journal.dead_letter(dead, record, 1.0)
    journal.accept(job("other"), 1.0)
    journal.dead_letter(job("other"), record, 1.0)
    commit(journal)
    journal.forget_dead_letters(["d"])
    batch = journal.take()
    assert batch.forget == ["d"]
    journal.write(batch)
    assert [r["job_id"] for r in journal.list_dead_letters(10)] == ["other"]
    # Forgotten before it was written: neither inserted nor left behind.
    journal.dead_letter(job("x"), record, 2.0)
    journal.forget_dead_letters(["x"])
    batch = journal.take()
    assert batch.dead == [] and batch.forget == ["x"]
    journal.write(batch)
    assert journal.count_dead_letters() == 1


def counted(j: SqliteJournal) -> int:
    """The journal's own count of its dead letters, checked against the file's."""
    assert j.dead_letter_count == j.count_dead_letters()
    return j.dead_letter_count


def test_the_dead_letter_count_is_exact_without_counting_each_time(tmp_path):
    # Counted once when it opens, then changed by every write, prune and purge: dead
    # letters written, those that replace one under their id, forgotten ones (written
    # or not), pending ones forgotten, purges of everything.
    record = {"attempts": 1, "error_type": "E", "error_message": "m", "traceback": None}
    j = opened(tmp_path, dead_letter_retention=3600.0)
    try:
        assert counted(j) == 0
        for i in range(5):
            j.dead_letter(job(f"d{i}"), record, 1.0)
        assert j.pending_dead_letters == 5 and j.dead_letter_count == 0  # (not written yet)
        commit(j)
        assert counted(j) == 5 and j.pending_dead_letters == 0
        j.dead_letter(job("d0"), record, 2.0)  # the same id dead again: its row replaced
        j.forget_dead_letters(["d1", "nothing"])  # (one that is not there: no change)
        j.dead_letter(job("x"), record, 2.0)
        j.forget_dead_letters(["x"])  # forgotten before it was written
        commit(j)
        assert counted(j) == 4
        j.dead_letter(job("old"), record, -5000.0)
        commit(j)
        assert counted(j) == 5
        assert j.prune(T0 + 100.0) == 1 and counted(j) == 4  # past the retention
        assert j.purge_dead_letters() == 4 and counted(j) == 0
        for i in range(3):
            j.dead_letter(job(f"e{i}"), record, 3.0)
        commit(j)
    finally:
        j.close()
    again = opened(tmp_path)
    try:
        assert counted(again) == 3  # (counted at open)
    finally:
        again.close()


def test_a_purge_later_takes_what_is_written_and_pending_and_keeps_what_dies_after(journal):
    record = {"attempts": 1, "error_type": "E", "error_message": "m", "traceback": None}
    for i in range(3):
        journal.dead_letter(job(f"w{i}"), record, 1.0)
    commit(journal)
    journal.dead_letter(job("pending"), record, 2.0)
    journal.forget_dead_letters(["w0"])
    journal.purge_dead_letters_later()
    assert journal.dirty and journal.pending_dead_letters == 0
    journal.dead_letter(job("after"), record, 3.0)  # died after the purge: it stays
    batch = journal.take()
    assert batch.purge_dead and batch.forget == [] and len(batch) == 2
    journal.write(batch)
    assert [r["job_id"] for r in journal.list_dead_letters(10)] == ["after"]
    assert counted(journal) == 1
    assert not journal.take().purge_dead  # (once)
    # A write that fails changes no count (rolled back; it is tried again whole).
    journal.purge_dead_letters_later()
    failing = journal.take()
    failing.dead.append(("bad", object()))  # (a row SQLite cannot take)
    with pytest.raises(JournalError):
        journal.write(failing)
    assert counted(journal) == 1
    failing.dead.pop()
    journal.write(failing)
    assert counted(journal) == 0


# --------------------------------------------------------------------------- pruning


def test_prune_deletes_old_finished_jobs_in_batches_and_keeps_unfinished_ones(tmp_path):
    j = opened(tmp_path, dedup_window=60.0)
    old = PRUNE_BATCH + 500
    for i in range(old):
        record = job(f"old{i}")
        j.accept(record, 0.0)
        done(j, record, 1.0)
    for i in range(10):
        record = job(f"recent{i}")
        j.accept(record, 0.0)
        done(j, record, 90.0)
    for i in range(10):
        j.accept(job(f"open{i}"), 0.0)  # unfinished, however old
    commit(j)
    now = T0 + 100.0  # finished before T0 + 40 are past the window
    try:
        assert j.prune(now) == PRUNE_BATCH
        assert rows(j, "SELECT count(*) FROM jobs")[0][0] == old - PRUNE_BATCH + 20
        assert j.prune(now) == 500
        assert j.prune(now) == 0
        left = {r[0] for r in rows(j, "SELECT job_id FROM jobs")}
        assert left == {f"recent{i}" for i in range(10)} | {f"open{i}" for i in range(10)}
        # Once the recent ones age past the window they go too; unfinished ones never.
        assert j.prune(T0 + 1000.0) == 10
        assert {r[0] for r in rows(j, "SELECT job_id FROM jobs")} == {f"open{i}" for i in range(10)}
    finally:
        j.close()


def test_prune_deletes_dead_letters_past_their_retention(tmp_path):
    j = opened(tmp_path, dead_letter_retention=3600.0)
    record = {"attempts": 1, "error_type": "E", "error_message": "m", "traceback": None}
    j.dead_letter(job("old"), record, 0.0)
    j.dead_letter(job("new"), record, 3000.0)
    commit(j)
    try:
        assert j.prune(T0 + 3500.0) == 0
        assert j.prune(T0 + 3601.0) == 1
        assert [r["job_id"] for r in j.list_dead_letters(10)] == ["new"]
    finally:
        j.close()


# --------------------------------------------------------------------------- size limit


def test_a_journal_over_max_bytes_refuses_with_the_reason(tmp_path):
    j = opened(tmp_path, max_bytes=1)  # the empty schema alone is over one byte
    try:
        assert j.full and j.size > 1
        refusal = j.refusal
        assert refusal is not None
        assert str(j.path) in refusal
        assert "max_journal_bytes" in refusal and "over its limit of 1" in refusal
        # A write failure takes precedence, and its end brings the size reason back.
        j.failed("disk trouble")
        assert j.refusal == "the leader cannot write its journal: disk trouble"
        j.failed(None)
        assert j.refusal == refusal
    finally:
        j.close()


def test_the_refusal_follows_the_size_as_pruning_measures_it(tmp_path):
    j = opened(tmp_path, dedup_window=10.0)
    base = j.size
    j.max_bytes = base + 64 * 1024
    assert j.refusal is None
    for i in range(64):
        record = job(f"big{i}", payload=b"x" * 4096)
        j.accept(record, 0.0)
        done(j, record, 1.0)
    commit(j)
    try:
        assert j.full and j.size > j.max_bytes  # (each write measures)
        assert j.prune(T0 + 5.0) == 0  # within the window: nothing goes
        assert j.full and j.size > j.max_bytes
        assert "max_journal_bytes" in (j.refusal or "")
        assert j.prune(T0 + 20.0) == 64
        assert not j.full and j.refusal is None
    finally:
        j.close()


# --------------------------------------------------------------------------- sync tiers


@pytest.mark.parametrize(("sync", "level"), [("full", 2), ("normal", 1)])
def test_sync_sets_sqlite_synchronous(tmp_path, sync, level):
    j = opened(tmp_path, sync=sync)
    try:
        assert rows(j, "PRAGMA synchronous") == [(level,)]
        assert rows(j, "PRAGMA journal_mode") == [("wal",)]
    finally:
        j.close()


def test_an_unknown_sync_mode_is_refused(tmp_path):
    with pytest.raises(ValueError, match="sync must be one of full, normal, got 'off'"):
        SqliteJournal(tmp_path, sync="off")


# --------------------------------------------------------------------------- refusals


def test_a_second_open_of_the_same_directory_is_refused_while_the_first_is_open(tmp_path):
    first = opened(tmp_path)
    second = SqliteJournal(tmp_path)
    try:
        with pytest.raises(JournalError) as info:
            second.open()
        text = str(info.value)
        assert "in use by another leader" in text
        assert str(tmp_path) in text
        assert "(pid " in text
    finally:
        first.close()
    # Once the first lets go, the directory can be used again.
    again = opened(tmp_path)
    again.close()
    assert (tmp_path / LOCK_FILE).exists()


def test_a_corrupt_file_is_refused_naming_it_and_what_to_do(tmp_path):
    path = tmp_path / JOURNAL_FILE
    path.write_bytes(b"this is not a database, only garbage bytes " * 200)
    journal = SqliteJournal(tmp_path)
    with pytest.raises(JournalError) as info:
        journal.open()
    text = str(info.value)
    assert str(path) in text
    assert "corrupt" in text
    assert "move the file aside" in text and ".recover" in text
    # The refusal let go of the directory (a second try says the same, not "in use").
    with pytest.raises(JournalError, match="corrupt"):
        SqliteJournal(tmp_path).open()


def test_a_journal_of_a_future_schema_is_refused(tmp_path):
    path = tmp_path / JOURNAL_FILE
    db = sqlite3.connect(path)
    db.execute("PRAGMA user_version=99")
    db.close()
    with pytest.raises(JournalError) as info:
        SqliteJournal(tmp_path).open()
    text = str(info.value)
    assert str(path) in text
    assert f"schema version 99; this leader reads version {SCHEMA_VERSION}" in text
    assert "another data_dir" in text
    with pytest.raises(JournalError, match="schema version 99"):  # (not "in use")
        SqliteJournal(tmp_path).open()
    # The file was not touched.
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA user_version").fetchone() == (99,)
    db.close()


def test_a_data_directory_that_cannot_be_made_is_refused(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(JournalError, match="cannot create the data directory"):
        SqliteJournal(blocker / "sub").open()


def test_writing_a_closed_journal_raises_journal_error(tmp_path):
    j = opened(tmp_path)
    j.accept(job("j"), 0.0)
    j.close()
    with pytest.raises(JournalError, match="is closed"):
        j.write(j.take())


# --------------------------------------------------------------------------- explain


def test_explain_words_a_full_disk():
    text = explain(sqlite3.OperationalError("database or disk is full"), "/data/journal.sqlite3")
    assert text.startswith("journal /data/journal.sqlite3: database or disk is full: ")
    assert "the disk is full" in text and "free space" in text
    assert "nothing not written was acknowledged" in text
    error = OSError(errno.ENOSPC, "No space left on device")
    assert "the disk is full" in explain(error, "/j")


def test_explain_words_a_read_only_journal():
    # The tests run as root, for whom chmod cannot make a file read-only: SQLite's error
    # is synthesized here (the words are what sqlite3 raises for a read-only file).
    text = explain(
        sqlite3.OperationalError("attempt to write a readonly database"), "/data/journal.sqlite3"
    )
    assert text.startswith("journal /data/journal.sqlite3: attempt to write a readonly database")
    assert "writable by the leader's user" in text
    assert "-wal/-shm" in text
    assert "writable" in explain(PermissionError(errno.EACCES, "Permission denied"), "/j")


def test_explain_words_corruption_and_locks_and_the_rest():
    assert "corrupt" in explain(sqlite3.DatabaseError("database disk image is malformed"), "/j")
    assert "another leader" in explain(sqlite3.OperationalError("database is locked"), "/j")
    assert explain(sqlite3.OperationalError("something else"), "/j") == (
        "journal /j: something else: check the file and its directory"
    )


# --------------------------------------------------------------------------- checkpoints


def test_commits_never_checkpoint_and_checkpoint_moves_the_log_into_the_file(tmp_path):
    """The leader checkpoints on a connection of its own (in a thread): a commit only
    appends to the write-ahead log, whatever its size; :meth:`checkpoint` moves it into
    the file, and the next commits reuse the log from its start."""
    j = opened(tmp_path)
    try:
        before = j.path.stat().st_size
        for i in range(2000):
            j.accept(job(f"c{i}", payload=b"x" * 512), 0.0)
        commit(j)
        assert j.wal_bytes > 1_000_000  # all in the log (no automatic checkpoint)
        assert j.path.stat().st_size == before
        j.checkpoint()
        assert j.path.stat().st_size > before + 1_000_000
        size = j.wal_bytes
        for i in range(10):
            j.accept(job(f"d{i}"), 0.0)
        commit(j)
        assert j.wal_bytes == size  # (reused from its start: it did not grow)
    finally:
        j.close()
    assert not (tmp_path / "journal.sqlite3-wal").exists() or (
        (tmp_path / "journal.sqlite3-wal").stat().st_size == 0
    )
