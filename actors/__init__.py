"""trio-actors: what users touch — workers, clients, the leader and worker groups.

Write a worker by subclassing :class:`Worker`; submit jobs with :class:`Client`; run a
cluster with ``python -m actors.cluster``.
"""

from ._broker import Broker as Broker
from ._broker import BrokerConfig as BrokerConfig
from ._client import Client as Client
from ._client_errors import Busy as Busy
from ._client_errors import ClientError as ClientError
from ._client_errors import Conflict as Conflict
from ._client_errors import ConnectionLost as ConnectionLost
from ._client_errors import ConnectionRefused as ConnectionRefused
from ._client_errors import ConnectTimeout as ConnectTimeout
from ._client_errors import DeadLettered as DeadLettered
from ._client_errors import JobCancelled as JobCancelled
from ._client_errors import JobFailed as JobFailed
from ._client_errors import NoRoute as NoRoute
from ._client_errors import NotFound as NotFound
from ._client_errors import RemoteError as RemoteError
from ._client_errors import SubmitTimeout as SubmitTimeout
from ._client_errors import TLSFailed as TLSFailed
from ._client_errors import TooLarge as TooLarge
from ._client_errors import WrongProtocol as WrongProtocol
from ._client_map import JobMap as JobMap
from ._config import load_config as load_config
from ._config_model import ClusterConfig as ClusterConfig
from ._config_model import GroupConfig as GroupConfig
from ._config_model import GroupRetryConfig as GroupRetryConfig
from ._config_model import LeaderConfig as LeaderConfig
from ._failures import Reject as Reject
from ._group import GroupFailed as GroupFailed
from ._group import InstanceInfo as InstanceInfo
from ._group import WorkerGroup as WorkerGroup
from ._job import Job as Job
from ._jobs import JobState as JobState
from ._leader import Leader as Leader
from ._loader import ConfigError as ConfigError
from ._redelivery import DLQ_PREFIX as DLQ_PREFIX
from ._redelivery import GroupRetry as GroupRetry
from ._runner import WorkerRunner as WorkerRunner
from ._subscription import Message as Message
from ._subscription import Subscription as Subscription
from ._worker import Worker as Worker
from ._worker import run_worker as run_worker
