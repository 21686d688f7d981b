"""Noticing code that blocks the event loop, and naming the job that runs it.

A handler that calls blocking code (``time.sleep``, a synchronous HTTP client, a long
computation) holds the worker's trio loop: no other job, progress report or heartbeat moves
until it returns, and nothing says why. A :class:`LoopWatchdog` thread asks the loop to run
a tiny callback every ``threshold / 4`` seconds (``TrioToken.run_sync_soon``). When one has
not run ``threshold`` seconds later, the loop is held: the thread looks at what the loop's
thread is executing (``sys._current_frames()``) and asks ``blame`` who is responsible; if
``blame`` names someone, it logs a warning saying so, and once the loop runs again a line
saying for how long it was held.

The jobs pay nothing for it (no bookkeeping per job or per step): only the thread's wake-ups,
four per ``threshold``, and one callback in the loop each time.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable
from types import FrameType

import trio

logger = logging.getLogger("actors.worker")


class LoopWatchdog:
    """Warns when the trio loop it was started in is held longer than ``threshold`` s.

    Args:
      threshold: seconds the loop may be held before the warning (> 0).
      blame: called in the watchdog's thread with the innermost frame of the loop's
        thread while the loop is held; returns who holds it, in words (``"job 7
        (math.slow), in Slow.handle at slow.py:12"``), or None to say nothing (not ours).
      label: starts each line (``"worker square-0"``).

    Resource handling: :meth:`start` starts a daemon thread; :meth:`stop` ends it and waits
    for it (briefly: it waits on an event). Use both from the loop's thread.
    """

    def __init__(
        self, threshold: float, blame: Callable[[FrameType], str | None], *, label: str
    ) -> None:
        if not threshold > 0:
            raise ValueError(f"blocking_warning must be a number of seconds > 0, got {threshold!r}")
        self.threshold = float(threshold)
        self.interval = self.threshold / 4
        self.label = label
        #: Stalls reported so far.
        self.reported = 0
        self._blame = blame
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._loop_thread = 0
        self._pending = False  # a probe was sent and the loop has not run it yet
        self._answered_at = 0.0

    def start(self) -> None:
        """Start watching the current trio run (call it from inside the run)."""
        self._token = trio.lowlevel.current_trio_token()
        self._loop_thread = threading.get_ident()
        self._stopping.clear()
        self._thread = threading.Thread(
            target=self._watch, name=f"{self.label} watchdog", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop watching; returns once the thread has ended."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _probe_answered(self) -> None:  # runs in the loop
        self._answered_at = time.monotonic()
        self._pending = False

    def _watch(self) -> None:
        assert self._token is not None
        sent_at = 0.0
        checked = False  # this stall was looked at (reported or not ours)
        blamed: str | None = None
        while not self._stopping.wait(self.interval):
            if not self._pending:
                if blamed is not None:
                    held = self._answered_at - sent_at
                    logger.warning(
                        "%s: %s let the event loop go, after holding it for %.1f s or more",
                        self.label, blamed, held,
                    )  # fmt: skip
                checked, blamed = False, None
                sent_at = time.monotonic()
                self._pending = True
                try:
                    self._token.run_sync_soon(self._probe_answered)
                except trio.RunFinishedError:
                    return
            elif not checked and time.monotonic() - sent_at >= self.threshold:
                checked = True
                frame = sys._current_frames().get(self._loop_thread)
                blamed = None if frame is None else self._blame(frame)
                del frame
                if blamed is not None:
                    self.reported += 1
                    logger.warning(
                        "%s: %s has held the event loop for %.1f s or more: no other job, progress "
                        "report or heartbeat of this worker runs meanwhile. Await instead of "
                        "blocking, or write a plain `def handle` (it runs in a thread)",
                        self.label, blamed, time.monotonic() - sent_at,
                    )  # fmt: skip
