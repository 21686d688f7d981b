"""When a worker should be replaced by a fresh one: past ``max_jobs``, over ``max_memory``.

Celery's ``max_tasks_per_child`` and ``max_memory_per_child``: a worker that handled
``max_jobs`` jobs, or whose process's resident memory (RSS) is over ``max_memory`` bytes
after a job, recycles itself (the runner drains it; its group starts a fresh one).
:class:`RecycleLimits` counts the jobs and says when; :func:`current_rss` reads the memory.
"""

from __future__ import annotations

import os
import sys

from .._checks import format_size, parse_size


class RecycleLimits:
    """A worker's recycling limits, and the jobs it handled.

    Args:
      max_jobs: recycle once this many jobs (and published messages) were handled.
      max_memory: recycle when the process's RSS is over this after a job (bytes, or a
        string such as ``"512MiB"``).

    Raises:
      ValueError: ``max_jobs`` is not a positive int, or ``max_memory`` not a size.
    """

    def __init__(self, max_jobs: int | None = None, max_memory: int | str | None = None) -> None:
        if max_jobs is not None and (type(max_jobs) is not int or max_jobs < 1):
            raise ValueError(f"max_jobs must be a positive int, got {max_jobs!r}")
        self.max_jobs = max_jobs
        self.max_memory = None if max_memory is None else parse_size(max_memory)
        #: Jobs and published messages handled (what ``max_jobs`` counts).
        self.handled = 0
        self._limited = max_jobs is not None or self.max_memory is not None

    def count(self) -> str | None:
        """Count one handled job; return why the worker should recycle now, if it should."""
        self.handled += 1
        if not self._limited:
            return None
        if self.max_jobs is not None and self.handled >= self.max_jobs:
            return f"handled {self.handled} jobs (max_jobs)"
        if self.max_memory is not None:
            rss = current_rss()
            if rss is not None and rss > self.max_memory:
                return f"RSS {format_size(rss)} over max_memory {format_size(self.max_memory)}"
        return None


def current_rss() -> int | None:
    """This process's resident memory in bytes: the current size (``/proc/self/statm``,
    Linux), else the peak so far (``getrusage``), else None (no limit can be checked)."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        pass
    try:
        import resource
    except ImportError:  # (Windows)
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, else KiB
