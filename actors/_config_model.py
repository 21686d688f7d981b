"""The cluster configuration's values: the leader's settings, its worker groups, the whole.

They are plain frozen classes with defaults; ``_config`` builds them from a TOML file or
the command line and checks every value on the way.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import attrs

if TYPE_CHECKING:
    import runtime

    from ._redelivery import GroupRetry

#: Where the leader listens when nothing says otherwise.
DEFAULT_LISTEN = "tcp://127.0.0.1:7700"


@attrs.frozen
class RetryConfig:
    """Backoff between redeliveries of an unacknowledged job (``[leader.retry]``).

    The n-th retry waits about ``min(cap, base * factor ** n)``, spread by ``jitter``
    (a fraction of the delay).
    """

    base: float = 0.5
    factor: float = 2.0
    cap: float = 30.0
    jitter: float = 0.1

    def backoff(self) -> runtime.Backoff:
        """The :class:`runtime.Backoff` policy these settings describe."""
        from runtime import Backoff

        return Backoff(base=self.base, factor=self.factor, cap=self.cap, jitter=self.jitter)


@attrs.frozen
class GroupRetryConfig:
    """A group's own retry policy (``[groups.retry]``); unset keys fall back to the leader's.

    ``max_attempts`` replaces the leader's ``max_attempts`` for jobs that fail on the
    group's workers; ``base``, ``factor``, ``cap`` and ``jitter`` replace the matching keys
    of ``[leader.retry]`` in the backoff before their redelivery.
    """

    max_attempts: int | None = None
    base: float | None = None
    factor: float | None = None
    cap: float | None = None
    jitter: float | None = None

    def policy(self, leader_retry: RetryConfig | None) -> GroupRetry:
        """The broker's :class:`~actors.GroupRetry`, on top of the leader's backoff settings."""
        from ._redelivery import GroupRetry

        backoff = None
        overrides = {
            key: value
            for key in ("base", "factor", "cap", "jitter")
            if (value := getattr(self, key)) is not None
        }
        if overrides:
            backoff = attrs.evolve(leader_retry or RetryConfig(), **overrides).backoff()
        return GroupRetry(max_attempts=self.max_attempts, backoff=backoff)

    def describe(self) -> str:
        """A short phrase for the CLI's group line."""
        parts = [] if self.max_attempts is None else [f"max_attempts {self.max_attempts}"]
        parts += [
            f"{key} {getattr(self, key):g}"
            for key in ("base", "factor", "cap", "jitter")
            if getattr(self, key) is not None
        ]
        return "retry " + ", ".join(parts)


@attrs.frozen
class LeaderConfig:
    """Settings of the leader (``[leader]``); see :class:`actors.Leader` for their meaning."""

    name: str = "leader"
    listen: tuple[str, ...] = (DEFAULT_LISTEN,)
    ack_timeout: float = 30.0
    max_attempts: int = 5
    max_queued: int = 100_000
    dedup_window: float = 600.0
    heartbeat: float = 5.0
    max_connections: int = 1024
    retry: RetryConfig | None = None

    def leader_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for :class:`actors.Leader` built from these settings."""
        kwargs = attrs.asdict(self, recurse=False)
        retry = kwargs.pop("retry")
        kwargs["retry_backoff"] = retry.backoff() if retry is not None else None
        return kwargs


@attrs.frozen
class GroupConfig:
    """One worker group (``[[groups]]``): ``instances`` copies of a worker class."""

    name: str
    worker: str | None = None
    command: tuple[str, ...] | None = None
    instances: int = 1
    mode: str = "round_robin"
    policy: str = "round_robin"
    subjects: tuple[str, ...] | None = None
    concurrency: int | None = None
    in_process: bool = False
    retry: GroupRetryConfig | None = None


@attrs.frozen
class ClusterConfig:
    """A whole cluster: one leader and its groups.

    Attributes:
      source: where the configuration came from (a file name or ``"command line"``), for
        messages.
    """

    leader: LeaderConfig = LeaderConfig()
    groups: tuple[GroupConfig, ...] = ()
    source: str = "command line"
