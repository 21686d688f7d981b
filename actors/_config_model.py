"""The cluster configuration's values: the leader's settings, its worker groups, the whole.

They are plain frozen classes with defaults; ``_config`` builds them from a TOML file or
the command line and checks every value on the way.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import attrs

if TYPE_CHECKING:
    import runtime

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
