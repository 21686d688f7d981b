"""One outstanding call of a :class:`~actors.Client`, and waiting for it to settle.

A submit (or a QoS 1 publish, or a query) is a :class:`Call` from when it is made until the leader's
answer settles it (``Client._settle``); the caller waits in :func:`until_settled`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
import trio


@attrs.define(eq=False)
class Call:
    """One outstanding submit (or qos 1 publish, or query)."""

    message: Any  # Submit, Publish or Query as last sent (its mid changes on each transmission)
    sent: bool = False  # ``message`` went out once: a resend needs a new mid
    task: trio.lowlevel.Task | None = None  # the caller parked until the call settles
    channel: trio.MemorySendChannel | None = None
    on_progress: Callable[[float | None, str | None], None] | None = None
    outcome: Any = None
    error: BaseException | None = None
    done: bool = False
    index: int = 0  # a ``map`` call: its payload's position in the input
    deadline: float | None = None  # a ``map`` call with a timeout: when it gives up


async def until_settled(call: Call) -> None:
    """Wait until ``call`` settles: what ``trio.Event().wait()`` does, without building an
    Event and its parking lot for every call."""
    if call.done:
        await trio.lowlevel.checkpoint()
        return
    call.task = trio.lowlevel.current_task()

    def abort(_raise_cancel: Any) -> trio.lowlevel.Abort:
        call.task = None
        return trio.lowlevel.Abort.SUCCEEDED

    await trio.lowlevel.wait_task_rescheduled(abort)
