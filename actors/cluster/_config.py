"""Cluster configuration: a leader and its worker groups, from a TOML file or the command line.

The TOML shape (every key but ``[[groups]]`` name/worker is optional)::

    [leader]
    listen = ["tcp://127.0.0.1:7700", "ws://127.0.0.1:7701"]
    ack_timeout = 30.0        # also: name, max_attempts, max_queued, dedup_window,
                              #       heartbeat, max_connections
    data_dir = "/var/lib/actors"  # the journal (default: per user); or memory = true
    sync = "full"             # or "normal"; also max_journal_bytes, dead_letter_retention
    store = "nats://127.0.0.1:4222,nats://h2:4222"  # or: keep the jobs in a shared NATS
                              #   JetStream store (no journal; not with data_dir or
                              #   memory): leaders with the same store serve the same jobs
    store_replicas = 3        # the streams' and the bucket's replicas: 1, 3 or 5 (default 1)
    store_prefix = "actors"   # subjects' first token, the streams' and bucket's names
    store_creds = "nats.creds"  # a NATS credentials file; also store_tls_ca, and
                              #   store_tls_cert with store_tls_key (TLS to NATS)
    store_ack_wait = 30       # seconds before another leader takes a silent one's jobs
    store_results_ttl = 3600  # seconds a result is kept (the store's dedup window)
    insecure = false          # listen beyond loopback without [auth] (not advised)
    allowed_origins = ["https://app.example"]  # Origin values a browser may send ("*": any)
    handshake_timeout = 10.0  # seconds a connection has to say Hello
    http = "127.0.0.1:7780"   # HTTP: /healthz, /readyz, /metrics, the dashboard at /, the
                              #   JSON API at /api (default: none)
    http_read_only = false    # true: HTTP serves GET and HEAD only (no retry, cancel, scale)
    tls_cert = "leader.pem"   # and tls_key: the certificate of tls:// and wss:// listeners
    tls_key = "leader.key"
    tls_client_ca = "clients-ca.pem"  # check client certificates (mTLS) against this CA
    tls_verify_clients = "optional"   # or "required": no connection without one
    tls_ca = "ca.pem"         # the CA that signed tls_cert, for the cluster's own groups
                              #   (default: tls_cert, self-signed); tls_key may be left out
                              #   when tls_cert's file holds the key
    [leader.retry]            # redelivery backoff: base, factor, cap, jitter
    base = 0.5

    [auth]                    # once present, every connection needs credentials
    max_connections = 256     # defaults for every user: connections, bytes of a payload,
    max_payload = "1MiB"      #   submits per second and their burst (0: no limit)
    submit_rate = 1000
    submit_burst = 2000
    [[auth.users]]
    name = "web"
    token_env = "WEB_TOKEN"   # or token_file = "...", or token = "..." (tests only; warned)
    token_expires = 2030-01-01T00:00:00Z   # or a unix time; the tokens are refused after it
    submit = ["img.>"]        # patterns; a leading "!" denies
    publish = ["events.web.>"]
    subscribe = ["events.>", "!events.audit.>"]
    serve = []
    admin = false             # others' jobs, dead letters, scaling
    [[auth.users]]
    name = "resizer"
    cert_subject = "CN=resizer"  # the identity of a client certificate (mTLS)
    serve = ["img.>"]

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
import is reported at load time, before anything starts; so are the tokens (from their
environment variables and files) and the certificate files. No message or log line ever
shows a token.

Files named in the configuration (``token_file``, ``tls_*``, ``data_dir``, ``store_creds``,
``store_tls_*``) are relative to the working directory; ``~`` is expanded.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import os
import tomllib
import urllib.parse
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import attrs

from protocol import (
    MAX_NAME_LENGTH,
    GroupMode,
    InvalidSubject,
    Permissions,
    is_reserved,
    is_valid_subject,
)

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
from ..leader._auth import MIN_TOKEN_LENGTH, parse_dn
from ..leader._jetstream import StoreConfig, check_store_config, parse_store
from ..leader._journal import SYNC_MODES
from ..leader._routing import SubjectPolicies
from ..worker._loader import load_worker_class
from ._model import (
    VERIFY_CLIENTS_CHOICES,
    ClusterConfig,
    GroupConfig,
    GroupRetryConfig,
    LeaderTable,
    RetryConfig,
)

if TYPE_CHECKING:
    from ..leader import AuthConfig, User

logger = logging.getLogger("actors.cluster")


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
    "insecure": "bool",
    "allowed_origins": "origins",
    "handshake_timeout": "positive",
    "http": "http",
    "http_read_only": "bool",
    "tls_cert": "file",
    "tls_key": "file",
    "tls_client_ca": "file",
    "tls_verify_clients": "verify",
    "tls_ca": "file",
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
    return _load(path, import_workers=import_workers, check_tls=True)


def _load(path: str, *, import_workers: bool, check_tls: bool) -> ClusterConfig:
    config = config_from_mapping(
        _read_toml(path), source=path, import_workers=import_workers, check_tls=check_tls
    )
    return attrs.evolve(config, path=path)


def _read_toml(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as file:
            return tomllib.load(file)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the configuration: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None


def load_auth(path: str) -> AuthConfig | None:
    """Read only the ``[auth]`` table of a cluster configuration file (what the cluster
    does on SIGHUP: the users, their tokens and permissions, again).

    Returns:
      The file's users and limits; None when the file has no ``[auth]`` table.

    Raises:
      ConfigError: as :func:`load_config`, for the file and its ``[auth]`` table.
    """
    data = _read_toml(path)
    if "auth" not in data:
        return None
    return _auth_from_mapping(data["auth"], source=path)


def config_from_mapping(
    data: Mapping[str, Any],
    *,
    source: str = "<config>",
    import_workers: bool = True,
    check_tls: bool = True,
) -> ClusterConfig:
    """Check an already parsed configuration (the dict ``tomllib`` returns).

    Args:
      check_tls: check that ``tls://`` and ``wss://`` listeners have a certificate and
        that the certificate files load (off while options may still add them).

    Raises:
      ConfigError: as :func:`load_config`, naming ``source`` as the file.
    """
    _check_keys(data, ("leader", "groups", "auth"), where=f"{source}: top level")
    leader_data = data.get("leader", {})
    if not isinstance(leader_data, Mapping):
        raise ConfigError(f"{source}: 'leader' must be a table ([leader])")
    leader = _leader_from_mapping(leader_data, source=source)
    if "auth" in data:
        leader = attrs.evolve(leader, auth=_auth_from_mapping(data["auth"], source=source))
    if check_tls:
        check_tls_settings(leader, where=f"{source}: [leader]")
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
    _check_keys(data, (*_LEADER_KEYS, "store", *_STORE_KEYS), where=where)
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
        elif kind in ("path", "file"):
            what = "a directory path" if kind == "path" else "a file path"
            if not isinstance(value, str) or not value:
                raise ConfigError(f"{at}: expected {what} (a non-empty string), got {_show(value)}")
            values[key] = os.path.expanduser(value)
        elif kind == "origins":
            values[key] = check_origins(value, at=at)
        elif kind == "http":
            values[key] = check_http_address(value, at=at)
        elif kind == "verify":
            values[key] = _check_choice(value, VERIFY_CLIENTS_CHOICES, at=at)
        elif kind == "bool":
            if not isinstance(value, bool):
                raise ConfigError(f"{at}: expected true or false, got {_show(value)}")
            values[key] = value
        elif kind == "sync":
            values[key] = _check_choice(value, SYNC_MODES, at=at)
        elif kind == "listen":
            values[key] = check_listen_urls(value, at=at)
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
    table = LeaderTable(**values)
    store = _store_from_mapping(data, where=where)
    if store is None:
        return table
    for key in ("memory", "data_dir"):
        if key in data and data[key] is not False:
            shown = "'memory = true'" if key == "memory" else "'data_dir'"
            raise ConfigError(
                f"{where}: 'store' and {shown}: choose one: the shared store keeps the jobs"
            )
    return with_store(table, store)


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


# --------------------------------------------------------------------------- [auth]


_LIMIT_KEYS = ("max_connections", "max_payload", "submit_rate", "submit_burst")
_AUTH_KEYS = (*_LIMIT_KEYS, "users")
_PERMISSION_KEYS = ("submit", "publish", "subscribe", "serve")
_USER_KEYS = (
    "name",
    "token_env",
    "token_file",
    "token",
    "token_expires",
    "cert_subject",
    *_PERMISSION_KEYS,
    "admin",
    *_LIMIT_KEYS,
)
#: Characters of a token file read at most: a bigger file holds no token.
MAX_TOKEN_FILE = 4096
#: The names of the identities the cluster gives its own groups (``group:<name>``); no
#: user of the file may take one.
GROUP_USER_PREFIX = "group:"


def _auth_from_mapping(data: Any, *, source: str) -> AuthConfig:
    """The ``[auth]`` table: the limits every user gets by default, and the users."""
    from ..leader import AuthConfig

    where = f"{source}: [auth]"
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: 'auth' must be a table ([auth] and [[auth.users]])")
    _check_keys(data, _AUTH_KEYS, where=where)
    defaults = _limits_from_mapping(data, where=where)
    users_data = data.get("users", [])
    if not isinstance(users_data, list):
        raise ConfigError(f"{where} key 'users': must be an array of tables ([[auth.users]])")
    if not users_data:
        raise ConfigError(
            f"{where}: no users: add a [[auth.users]] table per identity (name, token_env or "
            "cert_subject, its permissions), or remove [auth]"
        )
    users: list[User] = []
    names: dict[str, int] = {}
    secrets: dict[str, int] = {}
    cert_subjects: dict[Any, int] = {}
    for number, user_data in enumerate(users_data, start=1):
        at = f"{source}: [[auth.users]] #{number}"
        user, user_secrets = _user_from_mapping(user_data, where=at)
        at = f"{at} {user.name!r}"
        if user.name in names:
            raise ConfigError(
                f"{at}: [[auth.users]] #{names[user.name]} has the same name; names are unique"
            )
        names[user.name] = number
        for secret in user_secrets:
            if secret in secrets:  # (the token itself is never shown)
                raise ConfigError(
                    f"{at}: its token is also [[auth.users]] #{secrets[secret]}'s; a token "
                    "names one user: give each user its own"
                )
            secrets[secret] = number
        if user.cert_names is not None:
            if user.cert_names in cert_subjects:
                raise ConfigError(
                    f"{at} key 'cert_subject': [[auth.users]] #{cert_subjects[user.cert_names]}"
                    f" has the same one ({user.cert_subject!r}); a certificate names one user"
                )
            cert_subjects[user.cert_names] = number
        users.append(user)
    try:
        return AuthConfig(users=users, **defaults)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _user_from_mapping(data: Any, *, where: str) -> tuple[User, list[str]]:
    """One ``[[auth.users]]`` table: the user, and its tokens in clear (to compare them)."""
    from ..leader import Token, User

    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: must be a table")
    if "name" not in data:
        _check_keys(data, _USER_KEYS, where=where)
        raise ConfigError(f"{where}: missing key 'name'")
    name = _check_user_name(data["name"], at=f"{where} key 'name'")
    where = f"{where} {name!r}"
    _check_keys(data, _USER_KEYS, where=where)
    secrets = _user_secrets(data, name=name, where=where)
    expires_at: float | None = None
    if "token_expires" in data:
        at = f"{where} key 'token_expires'"
        if not secrets:
            raise ConfigError(
                f"{at}: {name!r} has no token to expire (token_env, token_file or token)"
            )
        expires_at = _check_expiry(data["token_expires"], at=at)
    cert_subject = None
    if "cert_subject" in data:
        cert_subject = check_cert_subject(data["cert_subject"], at=f"{where} key 'cert_subject'")
    if not secrets and cert_subject is None:
        raise ConfigError(
            f"{where}: no credential: give token_env or token_file (token, for tests), "
            "or cert_subject for a client certificate"
        )
    values: dict[str, Any] = {
        "name": name,
        "tokens": tuple(Token(secret=secret, expires_at=expires_at) for secret in secrets),
        "cert_subject": cert_subject,
    }
    for key in _PERMISSION_KEYS:
        if key in data:
            values[key] = check_permissions(data[key], at=f"{where} key {key!r}", what=key)
    if "admin" in data:
        if not isinstance(data["admin"], bool):
            raise ConfigError(
                f"{where} key 'admin': expected true or false, got {_show(data['admin'])}"
            )
        values["admin"] = data["admin"]
    values.update(_limits_from_mapping(data, where=where))
    try:
        user = User(**values)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{where}: {exc}") from None
    return user, secrets


def _user_secrets(data: Mapping[str, Any], *, name: str, where: str) -> list[str]:
    """The tokens of a user: from ``token_env``, ``token_file`` and ``token`` (each that is
    given; several are accepted at once, so that one can replace another)."""
    secrets: list[str] = []
    if "token_env" in data:
        at = f"{where} key 'token_env'"
        variable = data["token_env"]
        if not isinstance(variable, str) or not variable or "=" in variable:
            raise ConfigError(
                f"{at}: expected the name of an environment variable, got {_show(variable)}"
            )
        secret = os.environ.get(variable, "").strip()
        if not secret:
            raise ConfigError(
                f"{at}: the environment variable {variable!r} is not set (or empty); "
                f"set it to {name!r}'s token before starting the cluster"
            )
        secrets.append(secret)
    if "token_file" in data:
        secrets.append(_read_token_file(data["token_file"], at=f"{where} key 'token_file'"))
    if "token" in data:
        at = f"{where} key 'token'"
        secret = data["token"]
        if not isinstance(secret, str) or not secret.strip():
            # (what it holds is not shown: it may be a token all the same)
            raise ConfigError(f"{at}: expected the token, a non-empty string")
        logger.warning("%s: a token in the file: for tests only; use token_env or token_file", at)
        secrets.append(secret.strip())
    if any(len(secret) < MIN_TOKEN_LENGTH for secret in secrets):
        logger.warning(
            "%s: a token shorter than %d characters is easy to guess; make a longer one "
            "(python -c 'import secrets; print(secrets.token_urlsafe(32))')",
            where,
            MIN_TOKEN_LENGTH,
        )
    return list(dict.fromkeys(secrets))


def _read_token_file(value: Any, *, at: str) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{at}: expected a file path (a non-empty string), got {_show(value)}")
    path = os.path.expanduser(value)
    try:
        with open(path, encoding="utf-8") as file:
            text = file.read(MAX_TOKEN_FILE + 1)
    except OSError as exc:
        raise ConfigError(f"{at}: cannot read {path!r}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(
            f"{at}: {path!r} is not text; a token file holds the token on one line"
        ) from None
    secret = text.strip()
    if len(secret) > MAX_TOKEN_FILE:
        raise ConfigError(
            f"{at}: {path!r} holds more than {MAX_TOKEN_FILE} characters: a token is at most"
            f" {MAX_TOKEN_FILE} (the protocol's limit)"
        )
    if "\n" in secret:
        raise ConfigError(
            f"{at}: {path!r} is not a token file: it should hold the token on one line"
        )
    if not secret:
        raise ConfigError(f"{at}: {path!r} is empty; write the user's token in it")
    return secret


def _check_user_name(value: Any, *, at: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{at}: expected a string, got {_show(value)}")
    if not 0 < len(value) <= MAX_NAME_LENGTH or any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise ConfigError(
            f"{at}: {value[:80]!r} is not a valid user name (1 to {MAX_NAME_LENGTH} "
            "characters, no control characters)"
        )
    if value.startswith(GROUP_USER_PREFIX):
        raise ConfigError(
            f"{at}: names starting with {GROUP_USER_PREFIX!r} are the identities the cluster "
            "gives its own groups; choose another"
        )
    return value


def _check_expiry(value: Any, *, at: str) -> float:
    """A unix time from a TOML date-time (without an offset: local time) or a number."""
    if isinstance(value, dt.datetime):
        expires_at = value.timestamp()
    elif (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value > 0
    ):
        expires_at = float(value)
    else:
        raise ConfigError(
            f"{at}: expected a date and time (2030-01-01T00:00:00Z) or a unix time in "
            f"seconds, got {_show(value)}"
        )
    if expires_at <= dt.datetime.now().timestamp():
        logger.warning("%s: %s is past: these tokens are refused", at, value)
    return expires_at


def check_cert_subject(value: Any, *, at: str) -> str:
    """Check a ``cert_subject``: a distinguished name (``"CN=resizer,O=Acme"``) or a
    subject alternative name (``"DNS:resizer.internal"``, ``"email:a@b"``,
    ``"URI:spiffe://..."``, ``"IP:10.0.0.1"``).

    Raises:
      ConfigError: anything else.
    """
    if not isinstance(value, str):
        raise ConfigError(f"{at}: expected a string such as 'CN=resizer', got {_show(value)}")
    try:
        parse_dn(value)
    except ValueError as exc:
        raise ConfigError(f"{at}: {exc}") from None
    return value


def check_permissions(value: Any, *, at: str, what: str) -> tuple[str, ...]:
    """Check a permission list: subject patterns, a leading ``!`` denying.

    Raises:
      ConfigError: not a list of strings, a bad pattern, or one granting a reserved
        ``$`` subject.
    """
    patterns = _check_str_list(value, at=at)
    for pattern in patterns:
        if is_reserved(pattern):
            raise ConfigError(
                f"{at}: {pattern!r}: subjects starting with '$' are the system's, and no "
                "permission grants them"
            )
    try:
        Permissions.parse(patterns, what=what)
    except InvalidSubject as exc:
        raise ConfigError(
            f"{at}: {str(exc).removeprefix(f'{what}: ')} (tokens separated by '.', '*' for "
            "one token, '>' only as the last token, a leading '!' denies)"
        ) from None
    return tuple(patterns)


def _limits_from_mapping(data: Mapping[str, Any], *, where: str) -> dict[str, Any]:
    """The limits keys of ``[auth]`` or of a user, each checked."""
    values: dict[str, Any] = {}
    for key in _LIMIT_KEYS:
        if key not in data:
            continue
        value, at = data[key], f"{where} key {key!r}"
        if key == "max_payload":
            values[key] = check_size(value, at=at)
        elif key == "submit_rate":  # 0 (or inf): no limit, as elsewhere in a file
            if isinstance(value, float) and value == math.inf:
                values[key] = math.inf
            else:
                values[key] = _check_number(value, at=at, minimum=0.0) or math.inf
        else:
            values[key] = _check_int(value, at=at, minimum=1)
    return values


# --------------------------------------------------------------------------- shared store


#: The ``[leader]`` keys of the shared store (beside ``store``, its URLs), each with the
#: :class:`~actors.leader._jetstream.StoreConfig` field it sets.
_STORE_KEYS = {
    "store_replicas": "replicas",
    "store_prefix": "prefix",
    "store_creds": "creds",
    "store_tls_ca": "tls_ca",
    "store_tls_cert": "tls_cert",
    "store_tls_key": "tls_key",
    "store_ack_wait": "ack_wait",
    "store_results_ttl": "results_ttl",
}
#: What an error about a file of the store names: actors._tls's argument -> the key.
_STORE_TLS_KEYS = {"ca": "store_tls_ca", "cert": "store_tls_cert", "key": "store_tls_key"}
#: A server for checking one setting alone (check_store_config wants a whole StoreConfig).
_ANY_SERVER = "nats://127.0.0.1:4222"
#: Bytes of a NATS credentials file read at most to check it (one holds a JWT and a seed).
MAX_CREDS_FILE = 64 * 1024


def with_store(leader: LeaderTable, store: StoreConfig | None) -> LeaderTable:
    """``leader`` keeping its jobs in ``store`` (None: in its journal, or in memory);
    :meth:`LeaderTable.leader_config` then gives the leader's ``store``."""
    return attrs.evolve(leader, store=store)


def store_of(leader: LeaderTable) -> StoreConfig | None:
    """The shared job store of ``leader`` (None: its journal, or memory, keeps the jobs)."""
    return leader.store


def _store_from_mapping(data: Mapping[str, Any], *, where: str) -> StoreConfig | None:
    """The shared store of a ``[leader]`` table: ``store`` (the NATS URLs) and the
    ``store_*`` keys, each checked; None without ``store``."""
    settings: dict[str, Any] = {}
    for key, field in _STORE_KEYS.items():
        if key in data:
            settings[field] = check_store_setting(field, data[key], at=f"{where} key {key!r}")
    if "store" not in data:
        for key in _STORE_KEYS:
            if key in data:
                raise ConfigError(
                    f"{where} key {key!r}: needs 'store', the NATS servers to keep the jobs "
                    'in (store = "nats://127.0.0.1:4222")'
                )
        return None
    check_store_files(settings, name=lambda key: f"{where} key {key!r}")
    url = data["store"]
    at = f"{where} key 'store'"
    if not isinstance(url, str):
        raise ConfigError(
            f'{at}: expected the NATS servers in a string ("nats://host:4222,nats://host2:4222'
            f'"), got {_show(url)}'
        )
    try:
        return parse_store(url, **settings)
    except ValueError as exc:  # (its text names --store: the file's key is named instead)
        problem = str(exc).removeprefix(f"--store {url!r}: ").removeprefix("--store ")
        raise ConfigError(f"{at}: {problem}") from None


def check_store_setting(field: str, value: Any, *, at: str) -> Any:
    """Check one setting of the shared store (a :class:`StoreConfig` field other than
    ``servers``) as the file or the command line gives it; files get ``~`` expanded and
    the credentials file is read (see :func:`check_store_files` for the TLS files).

    Returns:
      The value for the :class:`StoreConfig` field.

    Raises:
      ConfigError: naming ``at`` and what is expected.
    """
    if field in ("creds", "tls_ca", "tls_cert", "tls_key"):
        if not isinstance(value, str) or not value:
            raise ConfigError(
                f"{at}: expected a file path (a non-empty string), got {_show(value)}"
            )
        path = os.path.expanduser(value)
        if field == "creds":
            _check_creds_file(path, at=at)
        return path
    if field == "replicas":
        value = _check_int(value, at=at, minimum=1)
    elif field == "prefix":
        if not isinstance(value, str):
            raise ConfigError(f"{at}: expected a string, got {_show(value)}")
    else:  # ack_wait, results_ttl: seconds
        value = _check_number(value, at=at, minimum=0.0, exclusive=True)
    try:  # (the store's own rules, on this setting alone)
        check_store_config(StoreConfig(servers=(_ANY_SERVER,), **{field: value}))
    except ValueError as exc:
        raise ConfigError(f"{at}: {exc}") from None
    return value


def _check_creds_file(path: str, *, at: str) -> None:
    try:
        with open(path, "rb") as file:
            data = file.read(MAX_CREDS_FILE + 1)
    except OSError as exc:
        raise ConfigError(f"{at}: cannot read {path!r}: {exc.strerror}") from None
    if not data.strip():
        raise ConfigError(f"{at}: {path!r} is empty: expected a NATS credentials file")
    if len(data) > MAX_CREDS_FILE:
        raise ConfigError(
            f"{at}: {path!r} is over {MAX_CREDS_FILE // 1024} KiB: not a NATS credentials file"
        )


def check_store_files(settings: Mapping[str, Any], *, name: Callable[[str], str]) -> None:
    """Check the TLS files of a shared store's ``settings`` (:class:`StoreConfig` fields)
    together: a client certificate comes with its key, and every file loads.

    Args:
      name: the place of a ``[leader]`` key, for messages (``"cluster.toml: [leader] key
        'store_tls_cert'"``).

    Raises:
      ConfigError: the key, the file and the problem.
    """
    cert, key = settings.get("tls_cert"), settings.get("tls_key")
    if (cert is None) != (key is None):
        given, missing = ("store_tls_cert", "store_tls_key")[:: 1 if cert is not None else -1]
        raise ConfigError(
            f"{name(given)}: needs {missing!r} too: a client certificate to NATS comes with "
            "its private key"
        )
    if cert is None and settings.get("tls_ca") is None:
        return
    from .._tls import TLSConfigError, client_ssl_context

    try:
        client_ssl_context(ca=settings.get("tls_ca"), cert=cert, key=key)
    except TLSConfigError as exc:
        where = name(_STORE_TLS_KEYS.get(exc.option, "store_tls_cert"))
        raise ConfigError(
            f"{where}: {exc.problem}" if exc.path is None else f"{where}: {exc.path}: {exc.problem}"
        ) from None


# --------------------------------------------------------------------------- TLS, origins


#: For each TLS scheme, the plain one with the same address rules.
_PLAIN_SCHEMES = {"tls": "tcp", "wss": "ws"}
TLS_SCHEMES = tuple(_PLAIN_SCHEMES)


def check_listen_urls(value: Any, *, at: str) -> tuple[str, ...]:
    """Check listen URLs as :func:`~actors._checks.check_listen` does, ``tls://`` and
    ``wss://`` included (whose certificate :func:`check_tls_settings` checks).

    Raises:
      ConfigError: naming the first bad URL.
    """
    return check_listen(value, at=at)


#: The LeaderTable key of each argument of actors._tls's functions (what TLSConfigError names).
_TLS_ARGUMENTS = {
    "cert": "tls_cert",
    "key": "tls_key",
    "client_ca": "tls_client_ca",
    "require_client_cert": "tls_verify_clients",
    "ca": "tls_ca",
}


def check_tls_settings(
    leader: LeaderTable, *, where: str, options: Mapping[str, str] | None = None
) -> None:
    """Check the TLS keys of ``leader`` together: what needs a certificate has one, and
    every file loads.

    Args:
      where: the table, for messages (``"cluster.toml: [leader]"``).
      options: for keys that came from the command line, the option to name instead
        (``{"tls_cert": "--tls-cert", "listen": "--listen"}``).

    Raises:
      ConfigError: the key (or option), the file and the problem.
    """
    options = options or {}

    def name(key: str) -> str:
        return options.get(key, f"{where} key {key!r}")

    tls_urls = [url for url in leader.listen if url.partition("://")[0] in TLS_SCHEMES]
    if leader.tls_cert is None:
        for key in ("tls_key", "tls_client_ca", "tls_verify_clients", "tls_ca"):
            if getattr(leader, key) is not None:
                raise ConfigError(
                    f"{name(key)}: needs a certificate: set tls_cert (--tls-cert) too"
                )
        if tls_urls:
            raise ConfigError(
                f"{name('listen')}: {tls_urls[0]!r} needs a certificate: set tls_cert and "
                "tls_key in [leader] (or --tls-cert and --tls-key), or listen on tcp:// or ws://"
            )
        return
    if leader.tls_verify_clients is not None and leader.tls_client_ca is None:
        raise ConfigError(
            f"{name('tls_verify_clients')}: needs tls_client_ca, the CA that signs the client "
            "certificates"
        )
    from .._tls import TLSConfigError, client_ssl_context

    try:
        leader.tls_context()
        if leader.tls_ca is not None:
            client_ssl_context(ca=leader.tls_ca)
    except TLSConfigError as exc:
        key = _TLS_ARGUMENTS.get(exc.option, exc.option)
        where_file = name(key) if exc.path is None else f"{name(key)}: {exc.path}"
        raise ConfigError(f"{where_file}: {exc.problem}") from None


def check_http_address(value: Any, *, at: str) -> str:
    """Check the leader's HTTP address (``HOST:PORT``; see
    :func:`actors.leader._http.parse_http_address`).

    Raises:
      ConfigError: naming what is expected.
    """
    from ..leader._http import parse_http_address

    try:
        parse_http_address(value)
    except ValueError as exc:
        raise ConfigError(f"{at}: {exc}") from None
    return str(value).strip()


def check_origins(value: Any, *, at: str) -> tuple[str, ...]:
    """Check ``allowed_origins``: ``scheme://host[:port]`` values (what a browser sends in
    its ``Origin`` header, such as ``"https://app.example"``), or ``"*"`` for any.

    Raises:
      ConfigError: naming the first value that is no origin.
    """
    origins = _check_str_list(value, at=at)
    for origin in origins:
        if origin == "*":
            continue
        try:
            parsed = urllib.parse.urlsplit(origin)
            parsed.port  # noqa: B018  (raises for a bad port)
        except ValueError:
            parsed = urllib.parse.urlsplit("")
        if (
            not parsed.scheme
            or not parsed.hostname
            or parsed.username is not None
            or parsed.path
            or parsed.query
            or parsed.fragment
        ):
            raise ConfigError(
                f"{at}: {origin!r} is not an origin: expected scheme://host[:port] with no "
                "path, such as 'https://app.example' or 'http://localhost:8080', or '*' for any"
            )
    return tuple(dict.fromkeys(origins))


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
    insecure: bool = False,
    allow_origins: Sequence[str] = (),
    tls_cert: str | None = None,
    tls_key: str | None = None,
    tls_client_ca: str | None = None,
    http: str | None = None,
    http_read_only: bool = False,
    store: str | None = None,
    store_replicas: int | None = None,
    store_prefix: str | None = None,
) -> ClusterConfig:
    """Build the cluster configuration from the ``python -m actors.cluster`` options.

    With ``config_path`` the file is read first; ``listen`` then replaces its listen
    addresses, each ``--worker`` adds a group, and ``in_process`` runs every group in
    process. ``max_memory`` (a size such as ``"512MiB"``) and ``max_jobs``, when given,
    apply to every group, replacing the file's. ``data_dir``, ``memory`` and ``sync``
    replace the file's journal settings (``memory`` and ``data_dir`` together: an error).
    ``insecure`` allows listening beyond loopback without ``[auth]``; ``allow_origins`` are
    added to the file's ``allowed_origins``; ``tls_cert``, ``tls_key`` and
    ``tls_client_ca`` replace the file's; ``http`` replaces its HTTP address;
    ``http_read_only`` makes its HTTP read-only (a file's ``true`` stays).
    ``store`` (NATS URLs: ``"nats://h1:4222,nats://h2:4222"``) keeps the jobs in a shared
    JetStream store instead of the journal, replacing the file's ``store`` (its other
    ``store_*`` settings stay) and its journal settings; ``memory`` or ``data_dir``
    replace a file's store (and ``store`` with either: an error). ``store_replicas`` and
    ``store_prefix`` replace the store's settings (with no store: an error).

    Raises:
      ConfigError: any option or the file is wrong.
    """
    config = (
        _load(config_path, import_workers=import_workers, check_tls=False) if config_path else None
    )
    leader = config.leader if config is not None else LeaderTable()
    if listen:
        leader = attrs.evolve(leader, listen=check_listen_urls(list(listen), at="--listen"))
    if memory and data_dir:
        raise ConfigError("--memory and --data-dir: choose one (--memory keeps no journal)")
    if store is not None and (memory or data_dir):
        other = "--memory" if memory else "--data-dir"
        raise ConfigError(f"--store and {other}: choose one: the shared store keeps the jobs")
    if (memory or data_dir) and store_of(leader) is not None:  # (the command line's choice)
        leader = with_store(leader, None)
    if data_dir:
        leader = attrs.evolve(leader, data_dir=os.path.expanduser(data_dir), memory=False)
    elif memory:
        leader = attrs.evolve(leader, memory=True)
    leader = _store_options(leader, store, replicas=store_replicas, prefix=store_prefix)
    if sync is not None:
        leader = attrs.evolve(leader, sync=_check_choice(sync, SYNC_MODES, at="--sync"))
    if insecure:
        leader = attrs.evolve(leader, insecure=True)
    if http is not None:
        leader = attrs.evolve(leader, http=check_http_address(http, at="--http"))
    if http_read_only:
        leader = attrs.evolve(leader, http_read_only=True)
    if allow_origins:
        origins = check_origins(list(allow_origins), at="--allow-origin")
        leader = attrs.evolve(
            leader, allowed_origins=tuple(dict.fromkeys((*leader.allowed_origins, *origins)))
        )
    tls_options: dict[str, Any] = {
        key: os.path.expanduser(value)
        for key, value in (
            ("tls_cert", tls_cert), ("tls_key", tls_key), ("tls_client_ca", tls_client_ca)
        )
        if value is not None
    }  # fmt: skip
    for key, value in tls_options.items():
        if not value:
            raise ConfigError(f"--{key.replace('_', '-')}: expected a file path, got ''")
    leader = attrs.evolve(leader, **tls_options)
    source = config.source if config is not None else "command line"
    options = {key: f"--{key.replace('_', '-')}" for key in tls_options}
    if listen:
        options["listen"] = "--listen"
    check_tls_settings(
        leader,
        where=f"{source}: [leader]" if config is not None else "command line",
        options=options,
    )
    groups = list(config.groups) if config is not None else []
    for option in workers:
        group = parse_worker_option(option)
        if import_workers:
            check_worker(group, at=f"--worker {option!r}")
        groups.append(group)
    if in_process:
        groups = [attrs.evolve(group, in_process=True) for group in groups]
    limits: dict[str, Any] = {}
    if max_memory is not None:
        limits["max_memory"] = check_size(max_memory, at="--max-memory")
    if max_jobs is not None:
        limits["max_jobs"] = _check_int(max_jobs, at="--max-jobs", minimum=1)
    if limits:
        groups = [attrs.evolve(group, **limits) for group in groups]
    _check_unique_names(groups, source=source)
    _check_policies(groups, source=source, import_workers=import_workers)
    return ClusterConfig(
        leader=leader, groups=tuple(groups), source=source, path=config_path or None
    )


def _store_options(
    leader: LeaderTable, url: str | None, *, replicas: int | None, prefix: str | None
) -> LeaderTable:
    """``leader`` with the store options of the command line (``--store``,
    ``--store-replicas``, ``--store-prefix``) applied."""
    store = store_of(leader)
    if url is not None:
        try:
            servers = parse_store(url).servers
        except ValueError as exc:  # (its text names --store and the URL)
            raise ConfigError(str(exc)) from None
        store = StoreConfig(servers) if store is None else attrs.evolve(store, servers=servers)
        # (no journal settings of the file are left for the leader to mistake)
        leader = attrs.evolve(leader, data_dir=None, memory=None)
    for option, field, value in (
        ("--store-replicas", "replicas", replicas),
        ("--store-prefix", "prefix", prefix),
    ):
        if value is None:
            continue
        if store is None:
            raise ConfigError(
                f"{option}: needs a shared store: --store nats://host:4222 (or [leader] store)"
            )
        store = attrs.evolve(store, **{field: check_store_setting(field, value, at=option)})
    return leader if store is store_of(leader) else with_store(leader, store)


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
