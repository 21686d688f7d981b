"""Owners in the journal: a journal written before jobs had owners (schema version 1) is
read offline and migrated by the leader; and the environment of a group's worker
processes holds no user's token."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import trio

from actors import AuthConfig, Leader, User
from actors.leader._journal import JOURNAL_FILE, SCHEMA_VERSION, read_dead_letters
from actors.worker._group import GROUP_TOKEN_ENV, WorkerGroup
from tests.workers import Echo

#: The tables as schema version 1 had them (before the ``identity`` columns).
SCHEMA_1 = """
CREATE TABLE jobs (
    job_id TEXT PRIMARY KEY, subject TEXT NOT NULL, payload BLOB, headers BLOB,
    qos INTEGER NOT NULL, max_attempts INTEGER NOT NULL, submitted_max_attempts INTEGER,
    submitted_at REAL NOT NULL, expires_at REAL, state TEXT NOT NULL, attempt INTEGER NOT NULL,
    retry_at REAL, error_type TEXT, error_message TEXT, traceback TEXT, finished_at REAL,
    ok INTEGER, result BLOB, final INTEGER, size INTEGER NOT NULL
);
CREATE TABLE dead_letters (
    job_id TEXT PRIMARY KEY, subject TEXT NOT NULL, payload BLOB, headers BLOB,
    submitted_max_attempts INTEGER, attempts INTEGER NOT NULL, error_type TEXT,
    error_message TEXT, traceback TEXT, dead_at REAL NOT NULL, size INTEGER NOT NULL
);
"""


def old_journal(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path / JOURNAL_FILE)
    db.executescript(SCHEMA_1)
    db.execute(
        "INSERT INTO dead_letters VALUES ('d1', 'img.a', NULL, NULL, NULL, 3, 'E', 'bad',"
        " NULL, ?, 100)",
        (time.time(),),
    )
    db.execute("PRAGMA user_version=1")
    db.commit()
    db.close()


def test_a_version_1_journal_is_read_offline_as_it_is(tmp_path):
    old_journal(tmp_path)
    letters, total = read_dead_letters(tmp_path)
    assert total == 1 and letters[0]["job_id"] == "d1" and "identity" not in letters[0]
    [whole], _ = read_dead_letters(tmp_path, "d1")
    assert whole["error_message"] == "bad"


async def test_a_leader_migrates_a_version_1_journal_and_its_jobs_have_no_owner(tmp_path):
    old_journal(tmp_path)
    leader = Leader(listen=["tcp://127.0.0.1:0"], data_dir=tmp_path)
    async with trio.open_nursery() as nursery:
        await nursery.start(leader.run)
        assert leader.recovered is not None and leader.recovered["dead_letters"] == 1
        nursery.cancel_scope.cancel()
    db = sqlite3.connect(tmp_path / JOURNAL_FILE)
    assert db.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
    columns = {row[1] for row in db.execute("PRAGMA table_info(jobs)")}
    assert "identity" in columns
    db.close()
    letters, _ = read_dead_letters(tmp_path)
    assert letters[0]["job_id"] == "d1"


def test_group_processes_get_their_token_and_no_users(monkeypatch):
    admin = "admin-secret-token-123456"
    web = "web-secret-token-1234567"
    auth = AuthConfig(users=(User(name="ops", tokens=(admin,)), User(name="web", tokens=(web,))))
    monkeypatch.setenv("OPS_TOKEN", admin)
    monkeypatch.setenv("ACTORS_TOKEN", web + "\n")
    monkeypatch.setenv("HARMLESS", "keep me")
    group = WorkerGroup(
        "echo",
        Echo,
        1,
        "tcp://127.0.0.1:1",
        token="group-token-abcdefghijk",
        hide_secrets={t.digest for u in auth.users for t in u.tokens},
    )
    env = group._environment()
    assert "OPS_TOKEN" not in env and "ACTORS_TOKEN" not in env
    assert env["HARMLESS"] == "keep me"
    assert env[GROUP_TOKEN_ENV] == "group-token-abcdefghijk"
    assert admin not in " ".join(group.command(0)) and "group-token" not in " ".join(
        group.command(0)
    )
