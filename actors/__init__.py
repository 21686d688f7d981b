"""trio-actors: what users touch — workers, clients, the leader and worker groups.

Write a worker by subclassing :class:`Worker`; submit jobs with :class:`Client`; run a
cluster with ``python -m actors.cluster``.

The package has a subpackage per role (see the README's "Architecture"):
:mod:`actors.leader` (the broker and the leader process), :mod:`actors.worker` (workers,
their runner and groups), :mod:`actors.client` (the client) and :mod:`actors.cluster`
(configuration and the command lines). What users write against is re-exported here; the
leader's internals (``Broker``, ``BrokerConfig``, ``JobState``) and ``WorkerRunner`` stay in
their subpackages.
"""

from ._checks import ConfigError as ConfigError
from ._tls import TLSConfigError as TLSConfigError
from ._tls import client_ssl_context as client_ssl_context
from ._tls import server_ssl_context as server_ssl_context
from .client import AuthFailed as AuthFailed
from .client import Busy as Busy
from .client import Client as Client
from .client import ClientError as ClientError
from .client import Conflict as Conflict
from .client import ConnectionLost as ConnectionLost
from .client import ConnectionRefused as ConnectionRefused
from .client import ConnectTimeout as ConnectTimeout
from .client import DeadLettered as DeadLettered
from .client import JobCancelled as JobCancelled
from .client import JobFailed as JobFailed
from .client import JobMap as JobMap
from .client import NoRoute as NoRoute
from .client import NotFound as NotFound
from .client import NotPermitted as NotPermitted
from .client import Publication as Publication
from .client import RemoteError as RemoteError
from .client import SubmitTimeout as SubmitTimeout
from .client import Subscription as Subscription
from .client import TLSFailed as TLSFailed
from .client import TooLarge as TooLarge
from .client import WrongProtocol as WrongProtocol
from .cluster import ClusterConfig as ClusterConfig
from .cluster import GroupConfig as GroupConfig
from .cluster import GroupRetryConfig as GroupRetryConfig
from .cluster import LeaderTable as LeaderTable
from .cluster import load_config as load_config
from .cluster import run_cluster as run_cluster
from .leader import DLQ_PREFIX as DLQ_PREFIX
from .leader import AuthConfig as AuthConfig
from .leader import GroupRetry as GroupRetry
from .leader import Leader as Leader
from .leader import LeaderConfig as LeaderConfig
from .leader import Token as Token
from .leader import User as User
from .worker import DeadlineExceeded as DeadlineExceeded
from .worker import GroupFailed as GroupFailed
from .worker import InstanceInfo as InstanceInfo
from .worker import Job as Job
from .worker import Reject as Reject
from .worker import Worker as Worker
from .worker import WorkerGroup as WorkerGroup
from .worker import run_worker as run_worker

#: Names ``actors`` exported before it had a subpackage per role, and where they live now.
_MOVED = {
    "Broker": "actors.leader.Broker",
    "BrokerConfig": "actors.leader.BrokerConfig",
    "JobState": "actors.leader.JobState",
    "WorkerRunner": "actors.worker.WorkerRunner",
    "StartFailed": "actors.worker.StartFailed",
    "Message": "actors.Publication (what a subscription yields)",
}


def __getattr__(name: str) -> object:
    """Say where a name that moved lives now (an AttributeError, as for any missing name)."""
    if name in _MOVED:
        raise AttributeError(f"actors.{name} moved: use {_MOVED[name]}")
    raise AttributeError(f"module 'actors' has no attribute {name!r}")
