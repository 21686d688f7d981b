"""Cluster configuration: a leader and its worker groups, from a TOML file or the command line.

The TOML shape (every key but ``[[groups]]`` name/worker is optional)::

    [leader]
    listen = ["tcp://127.0.0.1:7700", "ws://127.0.0.1:7701"]
    ack_timeout = 30.0        # also: name, max_attempts, max_queued, dedup_window,
                              #       heartbeat, max_connections
    data_dir = "/var/lib/actors"  # the journal (default: per user); or memory = true
    sync = "full"             # or "normal"; also max_journal_bytes, dead_letter_retention
    [leader.retry]            # redelivery backoff: base, factor, cap, jitter
    base = 0.5

    [[groups]]
    name = "square"
    worker = "examples.square:Square"   # or command = [...] (process workers: not yet)
    instances = 4
    mode = "round_robin"                # or "broadcast"
    policy = "round_robin"              # round_robin | least_loaded | sticky
    subjects = ["math.square"]          # overrides the class's subjects
    concurrency = 8                     # overrides the class's concurrency
    in_process = false                  # run the instances inside the cluster process
    max_memory = "512MiB"               # recycle an instance past this RSS (or bytes)
    max_jobs = 1000                     # recycle an instance after this many jobs
    max_start_failures = 10             # the group fails when an instance fails to start
                                        #   this many times in a row (0: never gives up)
    [groups.retry]                      # this group's retry policy (else the leader's):
    max_attempts = 3                    #   deliveries before $dlq.<subject>
    base = 1.0                          #   backoff keys as in [leader.retry]; unset
                                        #   ones are the leader's

Every mistake raises :class:`ConfigError` with a message that names the file, the table and
the key (``cluster.toml: [[groups]] #1 'square': key 'instances': expected an integer >= 0,
got -1``). Worker classes are imported while the file is read, so a name that does not
import is reported at load time, before anything starts.
"""

from __future__ import annotations

import math
import os
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import attrs

from protocol import GroupMode, is_valid_subject

from .._checks import (
    MODE_CHOICES,
    POLICY_CHOICES,
    ConfigError,
    _check_choice,
    _check_int,
    _check_keys,
    _check_name,
    _check_number,
    _check_str_list,
    _show,
    check_listen,
    check_size,
    check_subjects,
)
from ..leader._journal import SYNC_MODES
from ..leader._routing import SubjectPolicies
from ..worker._loader import load_worker_class
from ._model import ClusterConfig, GroupConfig, GroupRetryConfig, LeaderTable, RetryConfig

#: Delivery modes of a group and routing policies of its subjects, in the order messages
#: list them (the enums', the default first).


# --------------------------------------------------------------------------- TOML files


_LEADER_KEYS = {
    "name": "str",
    "listen": "listen",
    "ack_timeout": "positive",
    "max_attempts": "count",
    "max_queued": "count",
    "dedup_window": "positive",
    "heartbeat": "positive",
    "max_connections": "count",
    "max_connections_per_address": "count",
    "max_handshakes": "count",
    "max_handshakes_per_address": "count",
    "max_queued_bytes": "size",
    "max_queued_per_subject": "count",
    "max_queued_bytes_per_subject": "size",
    "max_queued_per_client": "count",
    "max_queued_bytes_per_client": "size",
    "max_queue_time": "seconds_or_off",
    "max_window": "count",
    "max_subscriptions": "count",
    "max_patterns": "count",
    "max_retained_bytes": "size",
    "max_dead_letter_bytes": "size",
    "max_stored_bytes": "size",
    "route_grace": "seconds",
    "restart_grace": "seconds",
    "write_timeout": "seconds_or_off",
    "max_outgoing_total": "size",
    "data_dir": "path",
    "memory": "bool",
    "sync": "sync",
    "max_journal_bytes": "size",
    "dead_letter_retention": "positive",
    "retry": "table",
}
_RETRY_KEYS = ("base", "factor", "cap", "jitter")
_GROUP_KEYS = (
    "name",
    "worker",
    "command",
    "instances",
    "mode",
    "policy",
    "subjects",
    "concurrency",
    "in_process",
    "retry",
    "max_memory",
    "max_jobs",
    "max_start_failures",
)
_GROUP_RETRY_KEYS = ("max_attempts", *_RETRY_KEYS)


def load_config(path: str, *, import_workers: bool = True) -> ClusterConfig:
    """Read and check a cluster configuration file.

    Args:
      path: the TOML file.
      import_workers: import every group's worker class to check that it loads and is a
        :class:`~actors.Worker` subclass (turn off only to check the shape of a file).

    Returns:
      The checked configuration.

    Raises:
      ConfigError: the file cannot be read, is not valid TOML, or any table or key is
        wrong; the message names the file, the table and the key.
    """
    try:
        with open(path, "rb") as file:
            data = tomllib.load(file)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the configuration: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    return config_from_mapping(data, source=path, import_workers=import_workers)


def config_from_mapping(
    data: Mapping[str, Any], *, source: str = "<config>", import_workers: bool = True
) -> ClusterConfig:
    """Check an already parsed configuration (the dict ``tomllib`` returns).

    Raises:
      ConfigError: as :func:`load_config`, naming ``source`` as the file.
    """
    _check_keys(data, ("leader", "groups"), where=f"{source}: top level")
    leader_data = data.get("leader", {})
    if not isinstance(leader_data, Mapping):
        raise ConfigError(f"{source}: 'leader' must be a table ([leader])")
    leader = _leader_from_mapping(leader_data, source=source)
    groups_data = data.get("groups", [])
    if not isinstance(groups_data, list):
        raise ConfigError(f"{source}: 'groups' must be an array of tables ([[groups]])")
    groups = []
    for number, group_data in enumerate(groups_data, start=1):
        where = f"{source}: [[groups]] #{number}"
        if not isinstance(group_data, Mapping):
            raise ConfigError(f"{where}: must be a table")
        groups.append(
            _group_from_mapping(
                group_data, where=where, import_workers=import_workers, leader_retry=leader.retry
            )
        )
    _check_unique_names(groups, source=source)
    _check_policies(groups, source=source, import_workers=import_workers)
    return ClusterConfig(leader=leader, groups=tuple(groups), source=source)


def _leader_from_mapping(data: Mapping[str, Any], *, source: str) -> LeaderTable:
    where = f"{source}: [leader]"
    _check_keys(data, _LEADER_KEYS, where=where)
    if data.get("memory") is True and "data_dir" in data:
        raise ConfigError(
            f"{where}: 'memory = true' and 'data_dir': choose one (memory keeps no journal)"
        )
    values: dict[str, Any] = {}
    for key, kind in _LEADER_KEYS.items():
        if key not in data:
            continue
        value = data[key]
        at = f"{where} key {key!r}"
        if kind == "str":
            values[key] = _check_name(value, at=at)
        elif kind == "path":
            if not isinstance(value, str) or not value:
                raise ConfigError(
                    f"{at}: expected a directory path (a non-empty string), got {_show(value)}"
                )
            values[key] = os.path.expanduser(value)
        elif kind == "bool":
            if not isinstance(value, bool):
                raise ConfigError(f"{at}: expected true or false, got {_show(value)}")
            values[key] = value
        elif kind == "sync":
            values[key] = _check_choice(value, SYNC_MODES, at=at)
        elif kind == "listen":
            values[key] = check_listen(value, at=at)
        elif kind == "positive":
            values[key] = _check_number(value, at=at, minimum=0.0, exclusive=True)
        elif kind == "count":
            values[key] = _check_int(value, at=at, minimum=1)
        elif kind == "size":
            values[key] = check_size(value, at=at)
        elif kind == "seconds":
            values[key] = _check_number(value, at=at, minimum=0.0, exclusive=False)
        elif kind == "seconds_or_off":  # 0: no limit
            seconds = _check_number(value, at=at, minimum=0.0, exclusive=False)
            values[key] = seconds or math.inf
        else:  # the [leader.retry] table
            values[key] = _retry_from_mapping(value, where=f"{source}: [leader.retry]")
    return LeaderTable(**values)


def _retry_from_mapping(data: Any, *, where: str) -> RetryConfig:
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: must be a table")
    _check_keys(data, _RETRY_KEYS, where=where)
    retry = RetryConfig(**_backoff_values(data, where=where))
    if retry.cap < retry.base:
        raise ConfigError(f"{where} key 'cap': must be >= base ({retry.base}), got {retry.cap}")
    return retry


def _backoff_values(data: Mapping[str, Any], *, where: str) -> dict[str, float]:
    """The backoff keys (base, factor, cap, jitter) present in ``data``, each checked."""
    values: dict[str, float] = {}
    for key in _RETRY_KEYS:
        if key in data:
            at = f"{where} key {key!r}"
            if key == "jitter":
                values[key] = _check_number(data[key], at=at, minimum=0.0, maximum=1.0)
            elif key == "factor":
                values[key] = _check_number(data[key], at=at, minimum=1.0)
            else:
                values[key] = _check_number(data[key], at=at, minimum=0.0)
    return values


def _group_retry_from_mapping(
    data: Any, *, where: str, leader_retry: RetryConfig | None
) -> GroupRetryConfig:
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: must be a table")
    _check_keys(data, _GROUP_RETRY_KEYS, where=where)
    values: dict[str, Any] = {}
    if "max_attempts" in data:
        values["max_attempts"] = _check_int(
            data["max_attempts"], at=f"{where} key 'max_attempts'", minimum=1
        )
    values.update(_backoff_values(data, where=where))
    retry = GroupRetryConfig(**values)
    try:
        retry.policy(leader_retry)
    except ValueError as exc:  # the group's base above the leader's cap, say
        raise ConfigError(f"{where}: {exc} (keys not set here are [leader.retry]'s)") from None
    return retry


def _group_from_mapping(
    data: Mapping[str, Any],
    *,
    where: str,
    import_workers: bool,
    leader_retry: RetryConfig | None = None,
) -> GroupConfig:
    if "name" not in data:
        _check_keys(data, _GROUP_KEYS, where=where)
        raise ConfigError(f"{where}: missing key 'name'")
    name = _check_name(data["name"], at=f"{where} key 'name'")
    where = f"{where} {name!r}"
    _check_keys(data, _GROUP_KEYS, where=where)
    has_worker, has_command = "worker" in data, "command" in data
    if has_worker == has_command:
        raise ConfigError(
            f"{where}: exactly one of 'worker' (\"module:Class\") or 'command' is needed"
        )
    values: dict[str, Any] = {"name": name}
    if has_command:
        command = _check_str_list(data["command"], at=f"{where} key 'command'")
        if not command:
            raise ConfigError(f"{where} key 'command': must not be empty")
        # Process workers (external commands over stdio) arrive with a later issue.
        raise ConfigError(
            f"{where} key 'command': command workers are not supported yet; "
            'use worker = "module:Class"'
        )
    worker = data["worker"]
    if not isinstance(worker, str):
        raise ConfigError(
            f"{where} key 'worker': expected a string \"module:Class\", got {_show(worker)}"
        )
    values["worker"] = worker
    if "instances" in data:
        values["instances"] = _check_int(
            data["instances"], at=f"{where} key 'instances'", minimum=0
        )
    for key, choices in (("mode", MODE_CHOICES), ("policy", POLICY_CHOICES)):
        if key in data:
            values[key] = _check_choice(data[key], choices, at=f"{where} key {key!r}")
    if "subjects" in data:
        values["subjects"] = check_subjects(data["subjects"], at=f"{where} key 'subjects'")
    if "concurrency" in data:
        values["concurrency"] = _check_int(
            data["concurrency"], at=f"{where} key 'concurrency'", minimum=1
        )
    if "in_process" in data:
        if not isinstance(data["in_process"], bool):
            raise ConfigError(
                f"{where} key 'in_process': expected true or false, got {_show(data['in_process'])}"
            )
        values["in_process"] = data["in_process"]
    if "max_memory" in data:
        values["max_memory"] = check_size(data["max_memory"], at=f"{where} key 'max_memory'")
    if "max_jobs" in data:
        values["max_jobs"] = _check_int(data["max_jobs"], at=f"{where} key 'max_jobs'", minimum=1)
    if "max_start_failures" in data:
        values["max_start_failures"] = _check_int(
            data["max_start_failures"], at=f"{where} key 'max_start_failures'", minimum=0
        )
    if "retry" in data:
        if values.get("mode") == GroupMode.BROADCAST:
            raise ConfigError(
                f"{where} key 'retry': a broadcast group takes no jobs, so it has nothing to "
                "retry; remove [groups.retry] or the mode"
            )
        values["retry"] = _group_retry_from_mapping(
            data["retry"], where=f"{where} [groups.retry]", leader_retry=leader_retry
        )
    group = GroupConfig(**values)
    if import_workers:
        check_worker(group, at=f"{where} key 'worker'")
    return group


def check_worker(group: GroupConfig, *, at: str) -> None:
    """Import ``group.worker`` and check that the group ends up with subjects.

    Raises:
      ConfigError: the class does not load, is not a Worker subclass, or neither the class
        nor the group names any subject.
    """
    assert group.worker is not None
    try:
        cls = load_worker_class(group.worker)
    except ConfigError as exc:
        raise ConfigError(f"{at}: {exc.message}") from None
    if group.subjects is None and not list(getattr(cls, "subjects", None) or ()):
        raise ConfigError(
            f"{at}: {group.worker!r} declares no subjects; set 'subjects' in the group "
            "or the class attribute"
        )


# --------------------------------------------------------------------------- command line


def parse_worker_option(option: str) -> GroupConfig:
    """Parse one ``--worker`` value: ``[name=]module:Class[=N]``.

    The group is named ``name`` when given, else the class name in lower case; ``N`` is the
    number of instances (1 when omitted).

    Raises:
      ConfigError: the value does not have that shape.
    """
    at = f"--worker {option!r}"
    parts = option.split("=")
    name: str | None = None
    count = "1"
    if len(parts) == 1:
        spec = parts[0]
    elif len(parts) == 2:
        if ":" in parts[0]:
            spec, count = parts
        else:
            name, spec = parts
    elif len(parts) == 3:
        name, spec, count = parts
    else:
        raise ConfigError(f"{at}: expected [name=]module:Class[=N]")
    if ":" not in spec:
        raise ConfigError(f"{at}: expected [name=]module:Class[=N], got no 'module:Class'")
    try:
        instances = int(count)
    except ValueError:
        raise ConfigError(f"{at}: instances must be an integer >= 0, got {count!r}") from None
    if instances < 0:
        raise ConfigError(f"{at}: instances must be an integer >= 0, got {instances}")
    if name is None:
        name = spec.rpartition(":")[2].rpartition(".")[2].lower()
    name = _check_name(name, at=f"{at} group name")
    return GroupConfig(name=name, worker=spec, instances=instances)


def config_from_args(
    *,
    listen: Sequence[str] | None = None,
    workers: Sequence[str] = (),
    in_process: bool = False,
    config_path: str | None = None,
    import_workers: bool = True,
    max_memory: str | None = None,
    max_jobs: int | None = None,
    data_dir: str | None = None,
    memory: bool = False,
    sync: str | None = None,
) -> ClusterConfig:
    """Build the cluster configuration from the ``python -m actors.cluster`` options.

    With ``config_path`` the file is read first; ``listen`` then replaces its listen
    addresses, each ``--worker`` adds a group, and ``in_process`` runs every group in
    process. ``max_memory`` (a size such as ``"512MiB"``) and ``max_jobs``, when given,
    apply to every group, replacing the file's. ``data_dir``, ``memory`` and ``sync``
    replace the file's journal settings (``memory`` and ``data_dir`` together: an error).

    Raises:
      ConfigError: any option or the file is wrong.
    """
    config = load_config(config_path, import_workers=import_workers) if config_path else None
    leader = config.leader if config is not None else LeaderTable()
    if listen:
        leader = attrs.evolve(leader, listen=check_listen(list(listen), at="--listen"))
    if memory and data_dir:
        raise ConfigError("--memory and --data-dir: choose one (--memory keeps no journal)")
    if data_dir:
        leader = attrs.evolve(leader, data_dir=os.path.expanduser(data_dir), memory=False)
    elif memory:
        leader = attrs.evolve(leader, memory=True)
    if sync is not None:
        leader = attrs.evolve(leader, sync=_check_choice(sync, SYNC_MODES, at="--sync"))
    groups = list(config.groups) if config is not None else []
    for option in workers:
        group = parse_worker_option(option)
        if import_workers:
            check_worker(group, at=f"--worker {option!r}")
        groups.append(group)
    if in_process:
        groups = [attrs.evolve(group, in_process=True) for group in groups]
    limits: dict[str, int] = {}
    if max_memory is not None:
        limits["max_memory"] = check_size(max_memory, at="--max-memory")
    if max_jobs is not None:
        limits["max_jobs"] = _check_int(max_jobs, at="--max-jobs", minimum=1)
    if limits:
        groups = [attrs.evolve(group, **limits) for group in groups]
    source = config.source if config is not None else "command line"
    _check_unique_names(groups, source=source)
    _check_policies(groups, source=source, import_workers=import_workers)
    return ClusterConfig(leader=leader, groups=tuple(groups), source=source)


# --------------------------------------------------------------------------- value checks


def _check_policies(groups: Iterable[GroupConfig], *, source: str, import_workers: bool) -> None:
    """Two groups that take jobs of a subject must route it by the same policy: the leader
    refuses the workers of the second group to connect (a subject has one policy,
    whichever group serves it). Groups whose subjects are their class's are checked only
    when the classes are imported (``import_workers``)."""
    policies = SubjectPolicies()
    for group in groups:
        if group.mode == GroupMode.BROADCAST:
            continue  # (takes no jobs)
        subjects = group.subjects
        if subjects is None and import_workers and group.worker is not None:
            subjects = tuple(getattr(load_worker_class(group.worker), "subjects", None) or ())
        if not subjects:
            continue
        conflict = policies.conflict(subjects, group.policy)
        if conflict is not None:
            wild = not is_valid_subject(conflict.subjects)
            what = f"subjects {conflict.subjects!r}" if wild else f"subject {conflict.subjects!r}"
            raise ConfigError(
                f"{source}: groups {conflict.group!r} and {group.name!r} both serve {what} "
                f"with different routing policies ({conflict.their_policy!r} and "
                f"{group.policy!r}); a subject has one policy, whichever group serves it: "
                "give them the same policy, or subjects that do not overlap"
            )
        policies.add(subjects, group.policy, group.name)


def _check_unique_names(groups: Iterable[GroupConfig], *, source: str) -> None:
    seen: set[str] = set()
    for group in groups:
        if group.name in seen:
            raise ConfigError(f"{source}: two groups are named {group.name!r}")
        seen.add(group.name)
