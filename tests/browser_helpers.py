"""Helpers for the Chromium tests (``tests/test_browser.py``): a cluster subprocess whose
printed URLs are read, and the worker classes it runs (importable by name).

Nothing here imports playwright: the cluster subprocess imports this module for its workers.
"""

from __future__ import annotations

import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

from actors.worker._job import Job
from actors.worker._worker import Worker

ROOT = Path(__file__).resolve().parent.parent
#: Debian's chromium (the package ``chromium``); never a browser downloaded by playwright.
CHROMIUM = "/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else shutil.which("chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


class Square(Worker):
    """``{"i": i, "sleep": s}`` -> ``{"i": i, "square": i * i, "attempt": ...}`` after ``s`` s."""

    subjects = ["browser.square"]
    concurrency = 32

    async def handle(self, job: Job) -> Any:
        seconds = job.payload.get("sleep", 0)
        if seconds:
            await trio.sleep(seconds)
        i = job.payload["i"]
        return {"i": i, "square": i * i, "attempt": job.attempt}


class Cluster:
    """``python -m actors.cluster ARGS`` as a subprocess (stdout and stderr merged), with the
    URLs it prints: ``ws_url`` (its first ``ws://`` listener) and ``http_url``."""

    def __init__(self, *args: str, timeout: float = 20) -> None:
        self.args = args
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "actors.cluster", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=ROOT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            text=True,
            errors="replace",
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        try:
            self.until(lambda line: line.startswith("cluster ready"), timeout)
        except BaseException:
            self.kill()
            raise
        self.ws_url = self._url("leader listening on ws://")
        self.http_url = self._url("http listening on ").rstrip("/")

    def _url(self, prefix: str) -> str:
        for line in self.lines:
            if line.startswith(prefix):
                return line.split()[-1]
        raise AssertionError(f"the cluster printed no {prefix!r} line:\n{self.output()}")

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def output(self) -> str:
        """What the cluster printed so far (the last 60 lines)."""
        self._drain()
        return "\n".join(self.lines[-60:])

    def _drain(self) -> None:
        while True:
            try:
                line = self._queue.get_nowait()
            except queue.Empty:
                return
            if line is not None:
                self.lines.append(line)

    def until(self, predicate: Callable[[str], bool], timeout: float) -> str:
        """The first line (from now on) for which ``predicate`` holds."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(
                    f"the cluster did not print the line awaited in {timeout} s:\n{self.output()}"
                )
            try:
                line = self._queue.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                raise AssertionError(
                    f"the cluster exited ({self.process.wait()}) first:\n{self.output()}"
                )
            self.lines.append(line)
            if predicate(line):
                return line

    def stop(self, signum: int = signal.SIGTERM, timeout: float = 10) -> int:
        """Send ``signum`` and wait for the process to end (killed past ``timeout``)."""
        if self.process.poll() is None:
            self.process.send_signal(signum)
        try:
            status = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            status = self.process.wait()
        self._reader.join(5)
        if self.process.stdout is not None:
            self.process.stdout.close()
        return status

    def kill(self) -> int:
        return self.stop(signal.SIGKILL)
