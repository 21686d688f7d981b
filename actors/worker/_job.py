"""What a worker's ``handle`` receives: the job and a way to report progress."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
import trio


@attrs.define(eq=False)
class Job:
    """One job, as a worker sees it.

    Attributes:
      id: the job id (stable across redeliveries; use it for idempotent side effects).
      subject: the subject it was submitted (or published) on.
      payload: the submitted value.
      headers: str to str metadata.
      attempt: 1 on first delivery, 2, 3, ... on redelivery.
      max_attempts: the deliveries the job may take in all (None: not told, for a
        published message or an older leader).
      qos: 0 (at most once) or 1 (at least once).
      published: True for a published message (pub/sub): its return value goes nowhere.
      deadline: when nobody waits for the result any more (the submit's timeout), as a
        trio time (compare with ``trio.current_time()``), or None. The worker cancels the
        handler past it and fails the job (``DeadlineExceeded``, not retried);
        ``progress`` does not move it.
    """

    id: str
    subject: str
    payload: Any
    headers: dict[str, str]
    attempt: int = 1
    qos: int = 1
    published: bool = False
    deadline: float | None = None
    max_attempts: int | None = None
    _report: Callable[[str, float | None, str | None], None] | None = attrs.field(
        default=None, repr=False, alias="report"
    )
    # Set by the worker while a slot runs the job: cancelling it cancels the job.
    _scope: trio.CancelScope | None = attrs.field(default=None, init=False, repr=False)
    _cancelled: bool = attrs.field(default=False, init=False, repr=False)

    def _cancel(self) -> None:
        """Cancel the job: at once if it runs, before it starts if it is queued."""
        self._cancelled = True
        if self._scope is not None:
            self._scope.cancel()

    async def progress(self, fraction: float | None = None, note: str | None = None) -> None:
        """Report progress (``fraction`` between 0 and 1, and/or a note).

        This also tells the leader the worker is alive, extending the job's ack deadline,
        so a long job should call it more often than the leader's ack timeout (it does not
        move :attr:`deadline`). The waiting clients receive it too. From a plain ``def
        handle`` (which runs in a thread), call ``trio.from_thread.run(job.progress, 0.5)``.

        Raises:
          ValueError: ``fraction`` is outside 0..1.
        """
        if fraction is not None and not 0.0 <= fraction <= 1.0:
            raise ValueError(f"progress fraction must be between 0 and 1, got {fraction!r}")
        if self._report is not None and not self.published:
            self._report(self.id, fraction, note)
        await trio.lowlevel.checkpoint()
