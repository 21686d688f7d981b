"""Run a local cluster: ``python -m actors.cluster``, a leader and its worker groups.

::

    python -m actors.cluster --worker examples.square:Square=4
    python -m actors.cluster --listen tcp://127.0.0.1:7700 --listen ws://127.0.0.1:7701 \\
        --worker square=examples.square:Square=4 --worker examples.square:Cube
    python -m actors.cluster --config cluster.toml [--in-process]

``--worker`` takes ``[name=]module:Class[=N]``: N instances (default 1) of the class, in a
group named ``name`` (default: the class name in lower case). ``--listen`` may be repeated;
port 0 picks a free port. With ``--config`` the file is read first, then ``--listen``
replaces its listen addresses and each ``--worker`` adds a group. ``--in-process`` runs
every group's instances inside this process instead of one process each. ``--max-jobs N``
and ``--max-memory SIZE`` set every group's recycling limits (a worker past either is
replaced by a fresh one; a file sets them per group).

``--store nats://host:4222[,host2:4222...]`` (or ``[leader] store``) keeps the jobs in a
shared NATS JetStream store instead of the leader's journal: every leader started with the
same store (and ``--store-prefix``, default ``actors``) serves the same jobs
(``docs/scale-out.md``); ``--store-replicas`` sets its streams' replicas. The cluster then
runs Trio as a guest on an asyncio loop (:func:`runtime.run_trio_guest`), where nats-py
runs, and prints ``store: NATS JetStream URL (R1, stream ACTORS_JOBS)`` instead of its
journal. A store that cannot be used at start (no JetStream, a refused server version,
streams with other replicas) exits 2 with the reason on stderr.

The leader starts first; the groups connect to its first listen address. The program prints
``leader listening on URL`` for every address, a line per group, then ``cluster ready`` once
every group's instances have connected to the leader, or after ``--start-timeout`` seconds
(default 30) naming the groups that are not ready. A worker that fails to start is logged on
stderr, one line per attempt (with the traceback once); a group whose instance failed to
start ``max_start_failures`` times in a row (a ``[[groups]]`` key, default 10) gives up:
``group NAME failed: ...``. The other groups serve on, unless ``--fail-fast``: then a failed
group, or one not ready at the start timeout, stops the cluster with exit status 1 (as does
the failure of the last group).
Ctrl-C or SIGTERM shuts it down gracefully: the workers drain (finish the jobs they hold and
send their results) while the leader still runs, then the leader stops; exit status 0. A
second Ctrl-C kills the workers and exits at once (status 1). A bad configuration exits 2
with a message on stderr; a leader that cannot listen exits 1.

``--http [ADDR]`` (or ``[leader] http``; default: none) serves HTTP on ``ADDR``
(:data:`DEFAULT_HTTP`, ``127.0.0.1:7780``, when ``--http`` names none; ``:0`` picks a free
loopback port): ``/healthz``, ``/readyz``, the live dashboard at ``/``, ``/metrics``, the
JSON API under ``/api`` (see ``actors/leader/_api.py``) and the JavaScript client at
``/actors.js``; it prints ``http listening on URL``. The dashboard's page gets its
updates over a WebSocket on the HTTP port itself. Until its groups have a worker
connected, ``/readyz`` says each is ``starting``; then it waits for as many online workers
as each group is to run. Through the API an admin changes a group's instance count
(``PUT /api/groups/NAME``, 0 to 1,000; 409 while the group starts, after it failed, or
while the cluster stops): the cluster starts the new instances, or drains and stops the
highest-numbered ones, in the background, and says ``group NAME: N instances``; a scaling
that fails is said (``group NAME: not scaled to N: why; it runs M``), shown by
``GET /api/groups`` (``scale_error``) and the group is to run what it runs.
``--http-read-only`` (``[leader] http_read_only = true``) serves GET and HEAD only:
nothing changes over HTTP.

The leader's statistics (per subject and per group: done, failed, redelivered, dead, in
flight, latency) are printed when the cluster stops, and with ``--stats S`` every S seconds
while they change.

Security: without ``[auth]`` users the leader listens on loopback addresses only; another
address is refused (exit status 2) unless ``--insecure``. ``--tls-cert`` and ``--tls-key``
(or ``[leader] tls_cert``/``tls_key``) give ``tls://`` and ``wss://`` listeners their
certificate, ``--tls-client-ca`` checks client certificates; ``--allow-origin`` adds an
``Origin`` a browser page may open a WebSocket from. With users, each group gets an
identity of its own (``group:<name>``, a fresh token that may serve its subjects: see
:func:`group_identities`). A cluster started with ``--config`` re-reads the file's
``[auth]`` on SIGHUP (users added, removed, tokens rotated; the groups' identities stay)
and says ``auth reloaded: N users (...)``, or why not, keeping the users it had.
"""

from __future__ import annotations

import argparse
import logging
import os
import secrets
import signal
import sys
import tempfile
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any, TextIO

import attrs
import trio

from runtime import DEFAULT_MAX_CONNECTIONS_PER_ADDRESS, ActorError, parse_url, run_trio_guest

from .._checks import ConfigError
from ..leader._admin import MAX_INSTANCES
from ..leader._jetstream import StoreConfig, StoreError
from ..leader._journal import JournalError
from ..leader._leader import is_loopback
from ..worker._group import GroupFailed, WorkerGroup
from ..worker._loader import load_worker_class
from ._config import GROUP_USER_PREFIX, config_from_args, load_auth, store_of
from ._model import ClusterConfig, LeaderTable
from ._stats_text import stats_lines

if TYPE_CHECKING:
    from ..leader import AuthConfig, User

PROG = "python -m actors.cluster"
#: Seconds the cluster waits for every worker to connect before it says it is ready anyway.
DEFAULT_START_TIMEOUT = 30.0
#: Where ``--http`` with no address serves (loopback: see docs/security.md).
DEFAULT_HTTP = "127.0.0.1:7780"
#: Seconds between looks at the leader's statistics while waiting for the workers.
READY_POLL_INTERVAL = 0.05
#: Characters of a failed scaling's reason kept at most (for ``GET /api/groups``).
MAX_SCALE_ERROR = 500
#: Connections from the leader's own host left to others (clients, workers started by
#: hand) beside the cluster's groups', when the cluster sets the leader's
#: ``max_connections_per_address`` itself (see :func:`fit_groups`).
LOCAL_MARGIN = DEFAULT_MAX_CONNECTIONS_PER_ADDRESS

logger = logging.getLogger("actors.cluster")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``python -m actors.cluster``."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Run a leader and worker groups until Ctrl-C / SIGTERM.",
    )
    parser.add_argument(
        "--listen",
        action="append",
        metavar="URL",
        help="where the leader listens (repeatable; tcp://, ws://, or tls:// and wss:// "
        "with --tls-cert; port 0 picks a free port; default tcp://127.0.0.1:7700; an address "
        "beyond loopback needs [auth] users or --insecure)",
    )
    parser.add_argument(
        "--worker",
        action="append",
        default=[],
        metavar="[NAME=]MODULE:CLASS[=N]",
        help="a group of N instances of a Worker subclass (repeatable)",
    )
    parser.add_argument("--config", metavar="FILE", help="a cluster.toml file")
    parser.add_argument(
        "--data-dir",
        metavar="DIR",
        help="where the leader journals the jobs it accepts (default: $ACTORS_DATA_DIR/<name>,"
        " else ~/.local/share/trio-actors/<name>; printed at start)",
    )
    parser.add_argument(
        "--memory",
        action="store_true",
        help="keep no journal: accepted jobs are lost when the leader stops (tests, benchmarks)",
    )
    parser.add_argument(
        "--sync",
        choices=("full", "normal"),
        default=None,
        help="full (default): an accepted job survives power loss; normal: it survives a"
        " crash of the process only, and accepting is cheaper",
    )
    parser.add_argument(
        "--store",
        metavar="URL",
        help="keep the jobs in a shared NATS JetStream store instead of a journal:"
        " nats://host:4222[,host2:4222...] (leaders with the same store serve the same jobs;"
        " replaces [leader] store; not with --memory or --data-dir)",
    )
    parser.add_argument(
        "--store-replicas",
        type=int,
        metavar="N",
        help="the store's streams' replicas: 1, 3 or 5 (default 1; [leader] store_replicas)",
    )
    parser.add_argument(
        "--store-prefix",
        metavar="NAME",
        help="the store's subject prefix and stream names (default actors; leaders that share"
        " jobs share it; [leader] store_prefix)",
    )
    parser.add_argument(
        "--in-process", action="store_true", help="run every group's workers in this process"
    )
    security = parser.add_argument_group("security")
    security.add_argument(
        "--insecure",
        action="store_true",
        help="listen beyond loopback without authentication (anyone who can reach the "
        "leader may submit, serve and subscribe); configure [auth] users instead",
    )
    security.add_argument(
        "--allow-origin",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="an Origin a browser page may open a WebSocket from, such as "
        "https://app.example (repeatable; '*': any; added to [leader] allowed_origins)",
    )
    security.add_argument(
        "--tls-cert",
        metavar="FILE",
        help="the certificate (PEM, with its chain) of the tls:// and wss:// listeners",
    )
    security.add_argument("--tls-key", metavar="FILE", help="the private key of --tls-cert (PEM)")
    security.add_argument(
        "--tls-client-ca",
        metavar="FILE",
        help="check client certificates (mTLS) against this CA; a certificate's subject "
        "then proves an [[auth.users]] cert_subject",
    )
    parser.add_argument(
        "--http",
        metavar="ADDR",
        nargs="?",
        const=DEFAULT_HTTP,
        help=f"serve HTTP on ADDR ({DEFAULT_HTTP} when none is given; :0 picks a free loopback"
        " port): /healthz, /readyz, the live dashboard at /, /metrics, the JSON API under /api"
        " and the JavaScript client at /actors.js (default: no HTTP; beyond loopback needs"
        " [auth] users or --insecure)",
    )
    parser.add_argument(
        "--http-read-only",
        action="store_true",
        help="serve GET and HEAD only over HTTP: the API shows, and changes nothing (no"
        " retry, cancel, purge or scaling)",
    )
    parser.add_argument(
        "--stats",
        type=float,
        default=0.0,
        metavar="S",
        help="print the leader's statistics every S seconds when they changed (default: "
        "only once, when the cluster stops)",
    )
    parser.add_argument(
        "--drain-grace",
        type=float,
        default=30.0,
        metavar="S",
        help="seconds workers get to finish their jobs when stopping (default 30)",
    )
    parser.add_argument(
        "--max-memory",
        metavar="SIZE",
        help="replace a worker whose process is over this resident memory after a job "
        "(bytes, or 512MiB, 2GB, ...; every group)",
    )
    parser.add_argument(
        "--max-jobs",
        type=int,
        metavar="N",
        help="replace a worker once it handled N jobs (every group)",
    )
    parser.add_argument(
        "--start-timeout",
        type=float,
        default=DEFAULT_START_TIMEOUT,
        metavar="S",
        help="say 'cluster ready' after S seconds even if some workers have not connected, "
        f"naming their groups (default {DEFAULT_START_TIMEOUT:g})",
    )
    parser.add_argument(
        "--fail-fast",
        action="store_true",
        help="stop (exit status 1) when a group fails, or is not ready at the start timeout",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m actors.cluster``; returns the exit status."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        if args.drain_grace < 0:
            raise ConfigError(f"--drain-grace: expected a number >= 0, got {args.drain_grace}")
        if not args.stats >= 0:
            raise ConfigError(f"--stats: expected a number of seconds >= 0, got {args.stats}")
        if not args.start_timeout >= 0:
            raise ConfigError(
                f"--start-timeout: expected a number of seconds >= 0, got {args.start_timeout}"
            )
        config = config_from_args(
            listen=args.listen,
            workers=args.worker,
            in_process=args.in_process,
            config_path=args.config,
            max_memory=args.max_memory,
            max_jobs=args.max_jobs,
            data_dir=args.data_dir,
            memory=args.memory,
            sync=args.sync,
            insecure=args.insecure,
            allow_origins=args.allow_origin,
            tls_cert=args.tls_cert,
            tls_key=args.tls_key,
            tls_client_ca=args.tls_client_ca,
            http=args.http,
            http_read_only=args.http_read_only,
            store=args.store,
            store_replicas=args.store_replicas,
            store_prefix=args.store_prefix,
        )
    except ConfigError as exc:
        print(f"{PROG}: error: {exc.message}", file=sys.stderr)
        return 2
    status = 1
    cluster = partial(
        run_cluster, config, args.drain_grace, stats_every=args.stats,
        start_timeout=args.start_timeout, fail_fast=args.fail_fast,
    )  # fmt: skip
    try:
        if store_of(config.leader) is not None:
            # Trio as a guest on asyncio's loop: the leader's nats-py calls cross to it
            # without a thread in between (see runtime.open_asyncio_bridge).
            status = run_trio_guest(cluster)
        else:
            status = trio.run(cluster)
    except* ListenError as group:  # e.g. the listen address is in use
        print(f"{PROG}: error: {_first(group)}", file=sys.stderr)
    except* ConfigError as group:  # the leader refused its settings (no auth beyond loopback)
        print(f"{PROG}: error: {_first(group)}", file=sys.stderr)
        status = 2
    except* JournalError as group:  # another leader holds the data dir, a read-only file...
        print(f"{PROG}: error: {_first(group)}", file=sys.stderr)
        status = 2
    except* StoreError as group:  # no JetStream there, a refused server version...
        print(f"{PROG}: error: {_one_line(_first(group))}", file=sys.stderr)
        status = 2
    except* OSError as group:  # a worker process that cannot be started, say
        print(f"{PROG}: error: {_first(group)}", file=sys.stderr)
    return status


def _one_line(error: BaseException) -> str:
    """``error``'s message on one line (a server's answer quoted in it may have several)."""
    return " ".join(str(error).split())


def _store_line(store: StoreConfig) -> str:
    """What the cluster says of its shared store at start."""
    return (
        f"store: NATS JetStream {', '.join(store.shown_servers)} (R{store.replicas}, stream "
        f"{store.jobs_stream})"
    )


def _journal_line(leader: Any) -> str:
    """What the cluster says of where its jobs are kept, at start: the shared store, or
    the journal."""
    if leader.config.store is not None:
        return _store_line(leader.config.store)
    if leader.journal is None:  # (dead letters then live in memory only: a bounded ring)
        kept = leader.broker.config.max_dead_letters
        return (
            "journal: none (--memory): accepted jobs are lost when the leader stops; the "
            f"newest {kept:,} dead letters are kept (older ones are dropped)"
        )
    line = f"journal: {leader.journal_path} (sync={leader.journal.sync})"
    recovered = leader.recovered or {}
    # (all the dead letters it holds: the newest of them are read back into memory)
    dead = leader.journal.dead_letter_count
    if recovered.get("jobs") or recovered.get("results") or dead:
        line += (
            f"; recovered {recovered['jobs']} unfinished jobs, {recovered['results']} results,"
            f" {dead} dead letters in {recovered['seconds']:g} s"
        )
    return line


class ListenError(Exception):
    """The leader could not listen on its addresses (in use, not local, ...)."""


def _first(error: BaseException) -> BaseException:
    """The first leaf of a (possibly nested) exception group."""
    while isinstance(error, BaseExceptionGroup):
        error = error.exceptions[0]
    return error


async def run_cluster(
    config: ClusterConfig,
    drain_grace: float = 30.0,
    *,
    out: TextIO | None = None,
    stats_every: float = 0.0,
    start_timeout: float = DEFAULT_START_TIMEOUT,
    fail_fast: bool = False,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> int:
    """Run the leader and the groups of ``config`` until SIGINT or SIGTERM.

    Args:
      config: the checked configuration.
      drain_grace: seconds each worker gets to finish its jobs when the cluster stops.
      out: where the listen and group lines go (default ``sys.stdout``), flushed at once.
      stats_every: print the leader's statistics every this many seconds, when they
        changed (0: only the final ones, printed when the cluster stops).
      start_timeout: seconds to wait for every group's instances to connect before
        ``cluster ready`` is printed anyway (naming the groups that are not ready).
      fail_fast: stop the cluster when a group fails (see :class:`~actors.GroupFailed`),
        or is not ready at the start timeout, instead of serving on without it.

    Returns:
      The exit status: 0 after a graceful stop, 1 after one that ``fail_fast`` asked for.

    ``task_status.started()`` gets the leader's bound URLs once the cluster is ready (every
    group's instances connected, or the start timeout passed).
    """
    from ..leader._leader import Leader
    from ..worker._failures import FAILURE_DIR_ENV

    def say(line: str) -> None:
        print(line, file=out or sys.stdout, flush=True)

    # The workers (processes inherit it) show a failure's traceback once for the cluster.
    with tempfile.TemporaryDirectory(prefix="actors-failures-") as failures:
        previous = os.environ.get(FAILURE_DIR_ENV)
        os.environ[FAILURE_DIR_ENV] = failures
        try:
            return await _run_cluster(
                config,
                drain_grace,
                say,
                stats_every=stats_every,
                start_timeout=start_timeout,
                fail_fast=fail_fast,
                task_status=task_status,
                leader_class=Leader,
            )
        finally:
            if previous is None:
                os.environ.pop(FAILURE_DIR_ENV, None)
            else:
                os.environ[FAILURE_DIR_ENV] = previous


async def _run_cluster(
    config: ClusterConfig,
    drain_grace: float,
    say: Any,
    *,
    stats_every: float,
    start_timeout: float,
    fail_fast: bool,
    task_status: trio.TaskStatus[list[str]],
    leader_class: Any,
) -> int:
    Leader = leader_class

    auth = config.leader.auth
    # Groups get identities of their own when the leader has users (see group_identities).
    identities = group_identities(config) if auth is not None else {}
    group_url = _group_url(list(config.leader.listen))
    if config.groups and config.leader.tls_verify_clients == "required" and _is_tls(group_url):
        raise ConfigError(
            f"the groups would connect to {group_url}, which requires client certificates "
            '(tls_verify_clients = "required"), and the cluster has none to give them; add a '
            "tcp://127.0.0.1 listener: the groups use it"
        )
    table, capacity = fit_groups(config)
    try:
        leader = Leader(attrs.evolve(table, auth=_with_groups(auth, identities)).leader_config())
    except ValueError as exc:  # no auth beyond loopback, an unreadable certificate, ...
        raise ConfigError(str(exc)) from None
    for group_config in config.groups:
        if group_config.retry is not None:
            leader.broker.set_group_retry(
                group_config.name, group_config.retry.policy(config.leader.retry)
            )
    groups: list[WorkerGroup] = []
    handled = [signal.SIGINT, signal.SIGTERM]
    reload = None
    if config.path is not None:  # SIGHUP re-reads the file's [auth]
        handled.append(signal.SIGHUP)
        reload = partial(_AuthReload(config.path, auth, identities, say).reload, leader)
    with trio.open_signal_receiver(*handled) as signals:
        async with trio.open_nursery() as leader_nursery:
            try:
                urls: list[str] = await leader_nursery.start(leader.run)
            except* OSError as errors:  # from inside the leader's nursery: a group
                where = ", ".join(leader.listen)
                raise ListenError(f"cannot listen on {where}: {_first(errors)}") from None
            for url in urls:
                say(f"leader listening on {url}")
            if leader.http_url is not None:
                say(f"http listening on {leader.http_url}")
            say(_journal_line(leader))
            if stats_every > 0:
                leader_nursery.start_soon(_print_stats, leader, stats_every, say)
            groups = [
                WorkerGroup(
                    group.name,
                    group.worker,  # type: ignore[arg-type]  # command groups are refused at load
                    group.instances,
                    _group_url(urls),
                    mode=group.mode,
                    policy=group.policy,
                    subjects=group.subjects,
                    concurrency=group.concurrency,
                    max_memory=group.max_memory,
                    max_jobs=group.max_jobs,
                    in_process=group.in_process,
                    drain_grace=drain_grace,
                    **_start_failures(group.max_start_failures),
                    **_credentials(identities.get(group.name), config.leader.group_ca),
                    hide_secrets=_secrets(auth),
                )
                for group in config.groups
            ]
            # Until a worker of a group connects, /readyz and `status` say it is starting.
            starting = {group.name for group in groups if group.desired > 0}
            for name in starting:
                leader.set_group_state(name, "starting")
            leader_nursery.start_soon(_clear_starting, leader, starting)
            groups_scope = trio.CancelScope()
            leader_nursery.start_soon(_watch_signals, signals, groups_scope, groups, say, reload)
            status = 0
            failed: dict[str, str] = {}
            # (the API's PUT /api/groups/NAME; scaling runs among the groups' tasks)
            scaler = GroupScaler(
                {group.name: group for group in groups},
                failed,
                say,
                stopping=lambda: groups_scope.cancel_called,
                set_instances=leader.set_group_instances,
                capacity=capacity,
            )
            leader.scaler = scaler
            for group in groups:  # (/readyz waits for as many online)
                leader.set_group_instances(group.name, group.desired)

            def group_failed(group: WorkerGroup, reason: str) -> None:
                nonlocal status
                failed[group.name] = reason
                starting.discard(group.name)  # (its state is its failure from now on)
                leader.set_group_state(group.name, f"failed: {reason}")
                say(f"group {group.name} failed: {reason}")
                if fail_fast and not groups_scope.cancel_called:
                    say("--fail-fast: stopping")
                    status = 1
                    groups_scope.cancel()

            with groups_scope:
                async with trio.open_nursery() as group_nursery:
                    scaler.nursery = group_nursery
                    for group, group_config in zip(groups, config.groups, strict=True):
                        await group_nursery.start(_run_group, group, group_failed)
                        scaler.started(group.name)
                        line = group.describe()
                        if group_config.retry is not None:
                            line = f"{line[:-1]}, {group_config.retry.describe()})"
                        say(line)
                    not_ready = await _wait_for_workers(leader, groups, failed, start_timeout)
                    _forget_starting(leader, starting)
                    if not_ready and fail_fast:
                        for name, connected, desired in not_ready:
                            say(
                                f"group {name} not ready after {start_timeout:g} s: {connected} "
                                f"of {desired} workers connected; --fail-fast: stopping"
                            )
                        status = 1
                        groups_scope.cancel()
                    else:
                        say(_ready_line(groups, not_ready, failed, start_timeout))
                        task_status.started(urls)
                    if not groups:
                        await trio.sleep_forever()  # a bare leader: serve until signalled
                scaler.nursery = None
            if not groups_scope.cancel_called:  # every group's run ended: they all failed
                say("every group failed: stopping")
                status = 1
            # The groups have drained while the leader still ran, so results got through.
            leader_nursery.cancel_scope.cancel()
    for line in stats_lines(leader.stats()):
        say(line)
    say("cluster stopped")
    return status


@attrs.frozen
class Capacity:
    """How many of a cluster's groups' instances its leader admits in all: they all
    connect from this host, so they count against one peer address's connections
    (``max_connections_per_address``) and one listener's (``max_connections``).

    Attributes:
      connections: the lower of the two.
      limit: which setting that is, as the file writes it (for messages).
    """

    connections: int
    limit: str


def fit_groups(config: ClusterConfig) -> tuple[LeaderTable, Capacity]:
    """The ``[leader]`` settings the cluster runs its leader with, and its groups' capacity.

    Unless the configuration sets ``max_connections_per_address``, the cluster raises it
    from the leader's default to its groups' instances in all plus :data:`LOCAL_MARGIN`
    (connections left to the host's other clients, or to scaling the groups up); it never
    lowers it.

    Raises:
      ConfigError: the groups' instances are more than the leader would admit (the
        instances over it would never connect).
    """
    table = config.leader
    total = sum(group.instances for group in config.groups)
    if table.max_connections_per_address is None:
        table = attrs.evolve(
            table,
            max_connections_per_address=max(
                DEFAULT_MAX_CONNECTIONS_PER_ADDRESS, total + LOCAL_MARGIN
            ),
        )
    per_address = table.max_connections_per_address
    assert per_address is not None
    if per_address <= table.max_connections:
        capacity = Capacity(per_address, f"max_connections_per_address = {per_address}")
    else:
        capacity = Capacity(table.max_connections, f"max_connections = {table.max_connections}")
    if total > capacity.connections:
        raise ConfigError(
            f"the groups have {total} instances in all, and the leader admits "
            f"{capacity.connections} connections from one host ([leader] {capacity.limit}): "
            "raise it, or run fewer instances"
        )
    return table, capacity


@attrs.define(eq=False)
class GroupScaler:
    """Changes the instance counts of a cluster's groups, for its leader
    (:attr:`Leader.scaler <actors.leader.Leader>`: the API's ``PUT /api/groups/NAME``).

    ``await scaler(name, n)`` records the count and returns it at once; one task per group
    (in :attr:`nursery`, among the groups' tasks) then scales the group to the latest
    count asked, one change at a time (:meth:`WorkerGroup.scale`: new instances start,
    the highest-numbered ones drain and stop); a count asked while one is made is taken
    next, those in between skipped. :meth:`groups` says the count each group is to have,
    and ``set_instances(name, n)`` is told of every change of it (the cluster's
    :meth:`Leader.set_group_instances <actors.leader.Leader.set_group_instances>`).

    Error handling: a scaling that fails (an instance that cannot start, the group giving
    up or stopping meanwhile: anything but a cancellation) never reaches the groups'
    nursery: the API answered already. It is said (``group NAME: not scaled to N: ...``),
    kept for :meth:`scale_errors` until the next scaling of the group succeeds, and the
    count the group is to have becomes the count it runs.

    ``capacity`` (None: no bound but :data:`MAX_INSTANCES`) bounds the instances of all
    the groups together (see :func:`fit_groups`): more would never connect, so a scaling
    up past it is refused.

    Raises (from a call):
      LookupError: the cluster runs no such group.
      ValueError: a count that is not an int from 0 to :data:`MAX_INSTANCES`.
      RuntimeError: the group is not running: it has not started yet, it failed (restart
        the cluster to run it again), or the cluster stops; or a count up that would take
        the groups past ``capacity`` (the API's 409).
    """

    members: Mapping[str, WorkerGroup]
    failed: Mapping[str, str]
    say: Callable[[str], None]
    stopping: Callable[[], bool] = lambda: False
    #: Told the count a group is to have whenever it changes.
    set_instances: Callable[[str, int], None] = lambda name, instances: None
    #: The connections the leader admits from the groups in all (None: no bound).
    capacity: Capacity | None = None
    #: Where the scaling tasks run (None: not yet, or no more).
    nursery: trio.Nursery | None = None
    _wanted: dict[str, int] = attrs.field(init=False, factory=dict)
    # the count each group was last scaled to (or started with)
    _made: dict[str, int] = attrs.field(init=False, factory=dict)
    _running: set[str] = attrs.field(init=False, factory=set)
    _scaling: set[str] = attrs.field(init=False, factory=set)
    _errors: dict[str, str] = attrs.field(init=False, factory=dict)

    def started(self, name: str) -> None:
        """Group ``name`` runs (its instances started): it may be scaled from now on."""
        self._running.add(name)

    async def __call__(self, name: str, instances: int) -> int:
        group = self.members.get(name)
        if group is None:
            raise LookupError(f"the cluster runs no group {name!r}")
        if type(instances) is not int or not 0 <= instances <= MAX_INSTANCES:
            raise ValueError(f"instances must be an int from 0 to {MAX_INSTANCES}")
        reason = self.failed.get(name) or group.failure
        if reason is not None:  # (given up: its instances may still be draining)
            raise RuntimeError(
                f"group {name} failed ({reason}): restart the cluster to run it again"
            )
        nursery = self.nursery
        if nursery is None or self.stopping():
            raise RuntimeError("the cluster is not running its groups (it starts or stops)")
        if name not in self._running:
            raise RuntimeError(f"group {name} is starting: scale it once it runs")
        before = self._wanted.get(name, group.desired)
        capacity = self.capacity
        if capacity is not None and instances > before:
            total = sum(self.groups().values()) - before + instances
            if total > capacity.connections:
                raise RuntimeError(
                    f"{instances} instances of group {name} would make {total} in all, and "
                    f"the leader admits {capacity.connections} connections from this host "
                    f"([leader] {capacity.limit}): set it higher and restart the cluster"
                )
        self._wanted[name] = instances
        if before != instances:
            self.say(f"group {name}: scaling from {before} to {instances} instances")
            self.set_instances(name, instances)
        if name not in self._scaling:
            self._scaling.add(name)
            nursery.start_soon(self._scale, name, group)
        await trio.lowlevel.checkpoint()
        return instances

    def groups(self) -> dict[str, int]:
        """The instances each group is to have, by name."""
        return {name: self._wanted.get(name, g.desired) for name, g in self.members.items()}

    def scale_errors(self) -> dict[str, str]:
        """Why the last scaling of a group failed, by name (for the groups whose last
        scaling did)."""
        return dict(self._errors)

    async def _scale(self, name: str, group: WorkerGroup) -> None:
        made = self._made
        try:
            while (target := self._wanted[name]) != made.setdefault(name, group.desired):
                try:
                    await group.scale(target)
                except Exception as exc:  # (see the class's text: a side task of the API's)
                    self._failed_scale(name, group, target, exc)
                    continue  # (a count asked meanwhile is tried; else it stops here)
                made[name] = target
                self._errors.pop(name, None)
                self.say(f"group {name}: {target} instance{'s' if target != 1 else ''}")
        finally:
            self._scaling.discard(name)

    def _failed_scale(self, name: str, group: WorkerGroup, target: int, exc: Exception) -> None:
        """Say why ``group`` was not scaled to ``target``; unless another count was asked
        meanwhile, it is to run what it runs."""
        running = len(group.states())  # (none once it stopped)
        error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        error = error[:MAX_SCALE_ERROR]
        self._errors[name] = f"not scaled to {target}: {error}"
        self.say(f"group {name}: not scaled to {target}: {error}; it runs {running}")
        if not isinstance(exc, RuntimeError | OSError | ActorError):  # (a bug: its traceback)
            logger.error("group %s: scaling to %d failed", name, target, exc_info=exc)
        self._made[name] = running
        if self._wanted[name] == target and target != running:
            self._wanted[name] = running
            self.set_instances(name, running)


def _secrets(auth: AuthConfig | None) -> frozenset[bytes]:
    """The digests of the users' tokens, which no worker process may see."""
    if auth is None:
        return frozenset()
    return frozenset(token.digest for user in auth.users for token in user.tokens)


def group_identities(config: ClusterConfig) -> dict[str, User]:
    """The identity of each group of ``config``, by group name, for a leader with users.

    Each is a user ``group:<name>`` with a token of its own, fresh at every start
    (:func:`secrets.token_urlsafe`, 32 bytes), that may serve and publish to the group's
    subjects (its ``subjects``, else its worker class's) and nothing else. The groups'
    instances prove it with that token: in process they are handed it, and processes find
    it in their environment (see :class:`~actors.WorkerGroup`).
    """
    from ..leader import User

    users = {}
    for group in config.groups:
        subjects = group.subjects
        if subjects is None:
            assert group.worker is not None  # (command groups are refused at load)
            subjects = tuple(getattr(load_worker_class(group.worker), "subjects", None) or ())
        users[group.name] = User(
            name=f"{GROUP_USER_PREFIX}{group.name}",
            tokens=(secrets.token_urlsafe(32),),
            serve=subjects,
            publish=subjects,
            # (its instances, as many as it may be scaled to: the leader's limits per
            # address bound them, see fit_groups)
            max_connections=MAX_INSTANCES,
        )
    return users


def _with_groups(auth: AuthConfig | None, identities: Mapping[str, User]) -> AuthConfig | None:
    """``auth`` with the groups' identities added (None stays None: no users, no checks)."""
    return None if auth is None else auth.with_users(*identities.values())


def _credentials(identity: User | None, ca: str | None) -> dict[str, Any]:
    """WorkerGroup's ``token`` and ``tls_ca`` keywords for a group with ``identity``."""
    credentials: dict[str, Any] = {"tls_ca": ca}
    if identity is not None:
        credentials["token"] = identity.tokens[0].secret
    return credentials


def _is_tls(url: str) -> bool:
    return url.partition("://")[0] in ("tls", "wss")


def _group_url(urls: Sequence[str]) -> str:
    """The leader URL the cluster's groups connect to: its first ``tcp://`` listener on a
    loopback address when it has one (the groups run on this machine: no TLS to set up, no
    WebSocket framing), else its first URL (then a ``tls://`` or ``wss://`` one is checked
    with ``[leader] tls_ca``, else ``tls_cert``)."""
    for url in urls:
        parsed = parse_url(url)
        if parsed.scheme == "tcp" and is_loopback(parsed.host):
            return url
    return urls[0]


@attrs.define(eq=False)
class _AuthReload:
    """What SIGHUP does: the file's ``[auth]`` again, with the groups' identities kept."""

    path: str
    current: AuthConfig | None
    identities: Mapping[str, User]
    say: Callable[[str], None]

    def reload(self, leader: Any) -> None:
        """Read the users again and give them to ``leader``; say what changed, or why
        nothing did (the current users stay)."""
        not_reloaded = "SIGHUP: auth not reloaded, the current users stay"
        if self.current is None:
            self.say(
                "SIGHUP: nothing to reload: the cluster started without [auth] "
                "(restart it to turn authentication on)"
            )
            return
        try:
            new = load_auth(self.path)
        except ConfigError as exc:
            self.say(f"{not_reloaded}: {exc.message}")
            return
        if new is None:
            self.say(
                f"{not_reloaded}: {self.path} has no [auth] table any more (restart the "
                "cluster to turn authentication off)"
            )
            return
        try:
            leader.set_auth(_with_groups(new, self.identities))
        except ValueError as exc:
            self.say(f"{not_reloaded}: {exc}")
            return
        old, self.current = self.current, new
        count = len(new.users)
        self.say(f"auth reloaded: {count} user{'s' if count != 1 else ''} ({_changes(old, new)})")


def _changes(old: AuthConfig, new: AuthConfig) -> str:
    """What a reload changed: users added, removed or changed (tokens, rights, limits), by
    name, and the [auth] table's own limits."""
    before = {user.name: user for user in old.users}
    after = {user.name: user for user in new.users}
    parts = []
    for what, names in (
        ("added", [name for name in after if name not in before]),
        ("removed", [name for name in before if name not in after]),
        ("changed", [name for name in after if name in before and after[name] != before[name]]),
    ):
        if names:
            parts.append(f"{what}: {', '.join(names)}")
    if attrs.evolve(old, users=()) != attrs.evolve(new, users=()):
        parts.append("[auth] limits changed")
    return "; ".join(parts) or "no change"


def _start_failures(limit: int | None) -> dict[str, Any]:
    """WorkerGroup's ``max_start_failures`` keyword for a file's value (0: never give up;
    None: the group's default)."""
    if limit is None:
        return {}
    return {"max_start_failures": limit or None}


async def _run_group(
    group: WorkerGroup,
    on_failure: Callable[[WorkerGroup, str], None],
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run ``group``; if it gives up, tell ``on_failure`` why instead of failing the cluster."""
    try:
        await group.run(task_status=task_status)
    except GroupFailed as exc:
        on_failure(group, exc.reason)


async def _wait_for_workers(
    leader: Any, groups: list[WorkerGroup], failed: dict[str, str], timeout: float
) -> list[tuple[str, int, int]]:
    """Wait until every group that has not failed has its instances connected to the
    leader, at most ``timeout`` seconds; return those still short: (name, connected,
    desired)."""
    with trio.move_on_after(timeout):
        # Polled: the leader's view is the one that counts, and it has no event for this.
        while _not_ready(leader, groups, failed):  # noqa: ASYNC110
            await trio.sleep(READY_POLL_INTERVAL)
    return _not_ready(leader, groups, failed)


async def _clear_starting(leader: Any, starting: set[str]) -> None:
    """Forget the ``starting`` state of each group of ``starting`` once a worker of it
    has connected, however late (see :func:`_forget_starting`)."""
    while starting:
        _forget_starting(leader, starting)
        await trio.sleep(READY_POLL_INTERVAL)


def _forget_starting(leader: Any, starting: set[str]) -> None:
    """Forget the ``starting`` state of the groups of ``starting`` that have a worker
    connected, and take them out of it (a group that failed is taken out when it fails:
    its state is its failure, kept)."""
    connected = _connected(leader)
    for name in list(starting):
        if connected.get(name, 0) > 0:
            leader.set_group_state(name, None)
            starting.discard(name)


def _connected(leader: Any) -> dict[str, int]:
    """The leader's connected workers, by group: O(workers), polled while the groups
    start (the statistics would cost O(subjects) every time)."""
    counts: dict[str, int] = {}
    for worker in leader.broker.workers:
        counts[worker.group] = counts.get(worker.group, 0) + 1
    return counts


def _not_ready(
    leader: Any, groups: list[WorkerGroup], failed: dict[str, str]
) -> list[tuple[str, int, int]]:
    connected = _connected(leader)
    return [
        (group.name, connected.get(group.name, 0), group.desired)
        for group in groups
        if group.name not in failed and connected.get(group.name, 0) < group.desired
    ]


def _ready_line(
    groups: list[WorkerGroup],
    not_ready: list[tuple[str, int, int]],
    failed: dict[str, str],
    timeout: float,
) -> str:
    instances = sum(group.desired for group in groups)
    line = (
        f"cluster ready: {len(groups)} group{'s' if len(groups) != 1 else ''}, "
        f"{instances} worker{'s' if instances != 1 else ''} (Ctrl-C to stop)"
    )
    if not_ready:
        line += f"; not ready after {timeout:g} s: " + ", ".join(
            f"{name} ({connected} of {desired} workers connected)"
            for name, connected, desired in not_ready
        )
    if failed:
        line += "; failed: " + ", ".join(failed)
    return line


async def _print_stats(leader: Any, every: float, say: Callable[[str], None]) -> None:
    """Print the leader's statistics every ``every`` seconds, when they changed."""
    last: list[str] = []
    while True:
        await trio.sleep(every)
        lines = stats_lines(leader.stats())
        if lines != last:
            for line in lines:
                say(line)
            last = lines


async def _watch_signals(
    signals: AsyncIterator[int],
    groups_scope: trio.CancelScope,
    groups: list[WorkerGroup],
    say: Callable[[str], None],
    reload: Callable[[], None] | None = None,
) -> None:
    """First SIGINT/SIGTERM: stop the groups (they drain). Second SIGINT: kill and exit.
    SIGHUP: ``reload`` (the users of the file's ``[auth]``)."""
    async for signum in signals:
        if signum == signal.SIGHUP:
            if reload is not None:
                reload()
        elif not groups_scope.cancel_called:
            name = signal.Signals(signum).name
            say(f"{name}: stopping; workers are draining (Ctrl-C again to kill them)")
            groups_scope.cancel()
        elif signum == signal.SIGINT:
            say("second Ctrl-C: killing the workers")
            for group in groups:
                for pid in group.pids():
                    if pid != os.getpid():
                        try:
                            os.kill(pid, signal.SIGKILL)
                        except ProcessLookupError:
                            pass
            os._exit(1)


if __name__ == "__main__":
    sys.exit(main())
