"""The leader: the broker (sans-I/O queues, credit, routing, redelivery, pub/sub) and the
trio process around it that serves connections.

=================  ==========================================================
module             concept
=================  ==========================================================
``_leader``        :class:`Leader`: listeners, one task per connection, timers
``_broker``        :class:`Broker`: jobs, queues, credit, acks (sans-I/O)
``_http``          the HTTP side: health, readiness, the JS client (hypercorn)
``_api``           the JSON API under ``/api`` and its OpenAPI document
``_admin``         an operator's actions: job lookup, dead letters, cancel, scale
``_jobs``          a job's record and its state machine
``_journal``       the journal: accepted jobs and outcomes in SQLite, group commit
``_links``         the broker's view of connected peers and subject queues
``_routing``       which worker of a queue takes the next job
``_redelivery``    the retry scheduler: backoff, expiry, ack deadlines, dead letters
``_pubsub``        the pub/sub router: subscriptions, fan-out, retained replay
``_retained``      retained messages, bounded
``_sizes``         what a forwarded message will cost in bytes
``_stats``         counters per subject and group, latency histograms
``_workers``       workers online, stale and offline (the departed, bounded)
``_metrics``       ``/metrics``: the statistics in Prometheus text
``_dashboard``     the dashboard's feed: snapshots on ``$sys.dashboard``, history
``_feed``          ``/ws`` on the HTTP port: the feed's connections, subscribe only
``_jetstream``     the shared store on NATS JetStream: streams, consumers, bucket
``_shared``        a leader's part in a cluster of leaders sharing that store
=================  ==========================================================
"""

from ._admin import AdminError as AdminError
from ._admin import LeaderAdmin as LeaderAdmin
from ._auth import AuthConfig as AuthConfig
from ._auth import Token as Token
from ._auth import User as User
from ._broker import Broker as Broker
from ._broker import BrokerConfig as BrokerConfig
from ._jetstream import StoreConfig as StoreConfig
from ._jetstream import StoreError as StoreError
from ._jetstream import parse_store as parse_store
from ._jobs import JobState as JobState
from ._journal import JournalError as JournalError
from ._journal import SqliteJournal as SqliteJournal
from ._journal import default_data_dir as default_data_dir
from ._leader import Leader as Leader
from ._leader import LeaderConfig as LeaderConfig
from ._redelivery import DLQ_PREFIX as DLQ_PREFIX
from ._redelivery import GroupRetry as GroupRetry
