"""The shared job store on NATS JetStream: what several leaders keep in common (the NATS
side, asyncio code for nats-py; the leader's trio side is :mod:`actors.leader._shared`).

Everything here runs on the asyncio event loop of a :class:`runtime.AsyncioBridge`; the
leader calls it once per batch (a batch of submits to publish, of messages to fetch, of
results to store), never once per job. The mapping onto JetStream (``docs/scale-out.md``):

- ``<PREFIX>_JOBS``, a work-queue stream on ``<prefix>.jobs.>``: a job accepted is a
  message there (published with ``Nats-Msg-Id`` = its id: JetStream drops a resubmission
  within the stream's duplicate window); a job subject's message goes to
  ``<prefix>.jobs.<subject>``.
- One durable pull consumer per worker pattern (``jobs_<hash>``, filtered on
  ``<prefix>.jobs.<pattern>``), shared by every leader whose workers serve it; each leader
  fetches as many as its workers have free credit. AckWait is the leader's liveness
  timeout (a leader holding a message says ``+WPI`` every third of it); a failed attempt is
  a delayed ``-NAK`` (the job's backoff), a finished one an ``+ACK``.
- ``<prefix>_results``, a KV bucket whose TTL is the dedup window: a finished job's result
  under its id, written create-if-absent (the first result wins; a second run of the same
  job, after a leader died between storing and acknowledging, finds it and runs nothing).
- ``<PREFIX>_DEAD``, a limits stream on ``<prefix>.dead.>``: dead letters.
- Core NATS subjects: ``<prefix>.done.<leader>.<key>`` (a result, to the leader its client
  waits at), ``<prefix>.progress.<leader>``, ``<prefix>.cancel``, ``<prefix>.pub.<subject>``
  (pub/sub between leaders).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import itertools
import json
import logging
import math
import re
import ssl
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import attrs
import cbor2

from protocol import is_valid_subject

log = logging.getLogger("actors.leader.jetstream")

#: Server versions known to lose whole streams when the server process crashes (fixed in
#: 2.10.23): a leader refuses to start on them.
BROKEN_VERSIONS = ((2, 10, 20), (2, 10, 21), (2, 10, 22))
#: The oldest server version served (delayed naks, KV buckets with a TTL, direct gets).
MIN_VERSION = (2, 9, 0)
#: Seconds a publish, a KV read or write or a JetStream API call may take.
API_TIMEOUT = 5.0
#: Pull requests larger than this are cut (a fetch asks for at most this many messages).
MAX_FETCH = 256
#: Seconds a durable consumer nobody pulls from is kept (then JetStream deletes it: a
#: pattern no worker serves any more stops counting as served, and stops overlapping).
CONSUMER_IDLE = 3600.0
#: Stored results larger than this go out as a key only in their notification (the
#: waiting leader reads the result from the KV bucket).
INLINE_RESULT = 64 * 1024

_SAFE_KEY = re.compile(r"[-_=A-Za-z0-9]{1,200}")
_SAFE_TOKEN = re.compile(r"[^-_A-Za-z0-9]")


class StoreError(Exception):
    """The shared store cannot be used: the message says why and what to do."""


@attrs.frozen
class StoreConfig:
    """Where the shared store is and how it is kept.

    Attributes:
      servers: NATS URLs (``nats://host:4222``, ``tls://host:4222``; user and password in
        the URL are passed on).
      prefix: the subjects' first token and the streams' and bucket's name prefix (leaders
        that share jobs share it; two prefixes on one NATS are two separate clusters).
      replicas: the streams' and the bucket's replication factor (1, 3 or 5 on a cluster).
      creds: a NATS credentials file (user JWT and NKey seed).
      tls_ca, tls_cert, tls_key: PEM files for TLS to NATS (a CA to trust; a client
        certificate and key).
      ack_wait: seconds JetStream waits for a leader holding a message before another
        leader may take it (the time a dead leader's jobs take to move elsewhere).
      results_ttl: seconds a result is kept (the dedup window of the shared store).
      duplicate_window: the jobs stream's duplicate window (seconds).
      dead_letter_retention: seconds a dead letter is kept in the dead-letter stream.
      max_ack_pending: messages of one consumer held by all leaders at once, at most.
    """

    servers: tuple[str, ...]
    prefix: str = "actors"
    replicas: int = 1
    creds: str | None = None
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    ack_wait: float = 30.0
    results_ttl: float = 3600.0
    duplicate_window: float = 120.0
    dead_letter_retention: float = 7 * 86400.0
    max_ack_pending: int = 65536

    @property
    def jobs_stream(self) -> str:
        return f"{self.prefix.upper()}_JOBS"

    @property
    def dead_stream(self) -> str:
        return f"{self.prefix.upper()}_DEAD"

    @property
    def results_bucket(self) -> str:
        return f"{self.prefix}_results"

    @property
    def shown_servers(self) -> list[str]:
        """The servers as they may be shown (a password in a URL replaced by ``***``)."""
        return [_shown(url) for url in self.servers]

    def jobs_subject(self, subject: str) -> str:
        return f"{self.prefix}.jobs.{subject}"

    def done_subject(self, leader: str, key: str) -> str:
        return f"{self.prefix}.done.{leader}.{key}"


def parse_store(url: str, **settings: Any) -> StoreConfig:
    """The :class:`StoreConfig` of ``--store nats://host:4222[,host2:4222...]`` (and
    ``settings``: the other fields, from the configuration file or flags).

    Raises:
      ValueError: the URL is not a NATS URL list; the message says what is accepted.
    """
    text = url.strip()
    if not text:
        raise ValueError("--store is empty: give nats://host:4222[,host2:4222...]")
    servers: list[str] = []
    scheme = None
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        if "://" not in part:
            if scheme is None:
                raise ValueError(
                    f"--store {url!r}: the first server needs its scheme (nats:// or tls://)"
                )
            part = f"{scheme}://{part}"
        parsed = urllib.parse.urlsplit(part)
        if parsed.scheme not in ("nats", "tls"):
            raise ValueError(
                f"--store {url!r}: {part!r} is not a NATS URL (nats://host:4222 or"
                " tls://host:4222; the embedded SQLite journal is the default, --memory"
                " keeps jobs in memory)"
            )
        if not parsed.hostname:
            raise ValueError(f"--store {url!r}: {part!r} names no host")
        try:
            parsed.port  # noqa: B018  (raises on a bad port)
        except ValueError as exc:
            raise ValueError(f"--store {url!r}: {part!r}: {exc}") from None
        scheme = parsed.scheme
        servers.append(part)
    if not servers:
        raise ValueError(f"--store {url!r} names no server")
    config = StoreConfig(servers=tuple(servers), **settings)
    check_store_config(config)
    return config


def _shown(url: str) -> str:
    """``url`` with the password of its user part replaced by ``***``."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rpartition("@")
    user = netloc[0].partition(":")[0]
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}:***@{netloc[2]}"))


def check_store_config(config: StoreConfig) -> None:
    """Raise ValueError naming what is wrong with ``config``."""
    if not re.fullmatch(r"[a-z][a-z0-9_]{0,30}", config.prefix):
        raise ValueError(
            f"store prefix {config.prefix!r}: lowercase letters, digits and _ (1 to 31,"
            " starting with a letter)"
        )
    if config.replicas not in (1, 3, 5):
        raise ValueError(f"store replicas {config.replicas}: 1, 3 or 5")
    if not 1 <= config.ack_wait <= 3600:
        raise ValueError(f"store ack_wait {config.ack_wait:g}: from 1 to 3600 seconds")
    if config.results_ttl < config.duplicate_window:
        raise ValueError(
            f"store results_ttl {config.results_ttl:g} s is shorter than the duplicate"
            f" window {config.duplicate_window:g} s"
        )
    if (config.tls_cert is None) != (config.tls_key is None):
        raise ValueError("store TLS: give both a client certificate and its key, or neither")


def result_key(job_id: str) -> str:
    """The KV key (and last subject token) of a job id: the id itself when it is made of
    letters, digits, ``-``, ``_`` and ``=``; else ``x`` and the hex of its UTF-8."""
    if _SAFE_KEY.fullmatch(job_id):
        return "j" + job_id
    return "x" + job_id.encode().hex()


def consumer_name(pattern: str) -> str:
    """The durable consumer of a worker pattern: readable where it can be, unique by a
    hash of the pattern."""
    readable = _SAFE_TOKEN.sub("_", pattern)[:40]
    digest = hashlib.blake2s(pattern.encode(), digest_size=8).hexdigest()
    return f"jobs_{readable}_{digest}"


def leader_token(name: str) -> str:
    """A leader's name as one subject token."""
    return _SAFE_TOKEN.sub("_", name)[:64] or "leader"


def version_problem(version: str) -> str | None:
    """Why a nats-server of ``version`` (``2.10.21``) is refused, or None."""
    match = re.match(r"v?(\d+)\.(\d+)\.(\d+)", version)
    if match is None:
        return f"nats-server version {version!r} is not understood"
    numbers = tuple(int(n) for n in match.groups())
    if numbers in BROKEN_VERSIONS:
        return (
            f"nats-server {version} loses whole streams when its process crashes (fixed in"
            " 2.10.23): upgrade the server before storing jobs on it"
        )
    if numbers < MIN_VERSION:
        return f"nats-server {version} is too old: 2.9.0 or newer is needed"
    return None


def encode(value: Any) -> bytes:
    return cbor2.dumps(value)


def decode(data: bytes) -> Any:
    return cbor2.loads(data)


#: The states a stored result may have.
RESULT_STATES = frozenset(("done", "dead", "cancelled", "expired"))
#: The largest ``max_attempts`` a job message may carry.
MAX_ATTEMPTS = 2**31
_NUMBER = (int, float)


@attrs.frozen
class JobBody:
    """A job as it is stored in the jobs stream (CBOR; short keys): what any leader needs
    to run it and to answer for it.

    Attributes:
      job_id, subject, payload (its CBOR bytes), headers, max_attempts (None: the running
      leader's), identity (its owner), origin (the token of the leader its client waited
      at), submitted / expires / due (wall-clock seconds: when it was accepted, when it
      expires, when it may run; None: never, at once).
    """

    job_id: str
    subject: str
    payload: bytes | None
    headers: dict[str, str]
    max_attempts: int | None
    submitted: float
    expires: float | None
    due: float | None
    identity: str | None
    origin: str

    def encode(self) -> bytes:
        return encode(
            {
                "id": self.job_id, "s": self.subject, "p": self.payload,
                "h": self.headers or None, "ma": self.max_attempts, "t": self.submitted,
                "x": self.expires, "d": self.due, "i": self.identity, "o": self.origin,
            }
        )  # fmt: skip


def _opt(value: Any, kinds: Any) -> bool:
    return value is None or (isinstance(value, kinds) and type(value) is not bool)


def decode_job(data: bytes) -> JobBody | None:
    """The job of a message of the jobs stream, or None when it is not one a leader wrote
    (anyone on the NATS account may publish there: every field is checked)."""
    try:
        body = decode(data)
    except Exception:
        return None
    if type(body) is not dict:
        return None
    job_id, subject, payload = body.get("id"), body.get("s"), body.get("p")
    headers, attempts, origin = body.get("h"), body.get("ma"), body.get("o")
    times = body.get("t"), body.get("x"), body.get("d")
    if not (
        type(job_id) is str
        and 0 < len(job_id) <= 1024
        and is_valid_subject(subject)
        and (payload is None or type(payload) is bytes)
        and (
            headers is None
            or (
                type(headers) is dict
                and all(type(k) is str and type(v) is str for k, v in headers.items())
            )
        )
        and (attempts is None or (type(attempts) is int and 0 < attempts <= MAX_ATTEMPTS))
        and type(times[0]) in _NUMBER
        and _opt(times[1], _NUMBER)
        and _opt(times[2], _NUMBER)
        and _opt(body.get("i"), str)
        and (origin is None or type(origin) is str)
    ):
        return None
    if not all(t is None or math.isfinite(t) for t in times):
        return None
    return JobBody(
        job_id, subject, payload, headers or {}, attempts, float(times[0]),
        None if times[1] is None else float(times[1]),
        None if times[2] is None else float(times[2]),
        body.get("i"), origin or "",
    )  # fmt: skip


def check_result(data: bytes) -> dict[str, Any] | None:
    """A stored result record (see :meth:`~actors.leader._shared.SharedJobs._store`), or
    None when ``data`` is not one a leader wrote."""
    try:
        record = decode(data)
    except Exception:
        return None
    if type(record) is not dict or record.get("st") not in RESULT_STATES:
        return None
    if type(record.get("ok")) is not bool:
        return None
    payload = record.get("p")
    if payload is not None and type(payload) is not bytes:
        return None
    for text in ("et", "em", "tb", "s", "i", "w"):
        if not _opt(record.get(text), str):
            return None
    attempts = record.get("a")
    if not (attempts is None or (type(attempts) is int and 0 <= attempts <= MAX_ATTEMPTS)):
        return None
    if type(record.get("f", False)) is not bool:
        return None
    return record


def patterns_overlap(a: str, b: str) -> bool:
    """Whether some subject matches both patterns (``a.*`` and ``a.b`` do; ``a.b`` and
    ``a.c`` do not)."""
    left, right = a.split("."), b.split(".")
    for x, y in zip(left, right, strict=False):
        if x == ">" or y == ">":
            return True
        if x != y and x != "*" and y != "*":
            return False
    return len(left) == len(right)


@attrs.frozen
class Submitted:
    """A job to store (see :meth:`JetStreamStore.submit_jobs`)."""

    key: str
    msg_id: str
    subject: str
    body: bytes
    #: the claim's value: CBOR ``[identity, wall time]``
    claim: bytes
    force: bool = False


def decode_claim(data: bytes | None) -> list[Any] | None:
    """A claim's ``[identity, wall time]`` (None: no claim, or not one a leader wrote)."""
    if data is None:
        return None
    try:
        claim = decode(data)
    except Exception:
        return None
    if (
        type(claim) is list
        and len(claim) == 2
        and _opt(claim[0], str)
        and type(claim[1]) in _NUMBER
    ):
        return claim
    return None


def _msg_id(msg_id: str) -> str:
    """A message id as a header may carry it (a job id with a line break or a control
    character, which a header cannot hold, as the hex of its UTF-8)."""
    if msg_id.isprintable() and len(msg_id) <= 512:
        return msg_id
    return "x" + msg_id.encode().hex()


def _js_problem(answer: Any) -> int | None:
    """None when ``answer`` (a JetStream API reply, or an exception) says all is well;
    else its error code (0 when it has none)."""
    if isinstance(answer, BaseException):
        return 0
    try:
        reply = json.loads(answer.data)
    except ValueError:
        return 0
    error = reply.get("error") if type(reply) is dict else None
    if error is None:
        return None
    return int(error.get("err_code") or 0) if type(error) is dict else 0


def _as_error(answer: Any, code: int, doing: str) -> BaseException:
    if isinstance(answer, BaseException):
        return answer
    try:
        text = json.loads(answer.data)["error"]["description"]
    except Exception:
        headers = getattr(answer, "headers", None) or {}
        text = f"{headers.get('Status', '?')} {headers.get('Description', '')}".strip()
    return StoreError(f"{doing}: {text} (JetStream error {code})")


@attrs.define(eq=False)
class Fetched:
    """A job message fetched from a consumer."""

    reply: str
    data: bytes
    deliveries: int


class JetStreamStore:
    """The connection to NATS and the JetStream objects of the shared store (asyncio)."""

    def __init__(self, config: StoreConfig, leader: str) -> None:
        self.config = config
        #: This leader's token in the notification subjects.
        self.leader = leader
        self.nc: Any = None
        self.js: Any = None
        self.kv: Any = None
        self.version: str = ""
        #: The largest message the server takes (its ``max_payload``).
        self.max_payload = 1024 * 1024
        self._subs: dict[str, _Puller] = {}
        #: The AckWait of each pattern's consumer (another leader's, when it made it).
        self.ack_waits: dict[str, float] = {}
        self._closing: set[asyncio.Future[None]] = set()  # unsubscribes under way
        self.requests: _Requests = None  # type: ignore[assignment]  # (once connected)
        self._away_since: float | None = None
        self.on_reconnect: Callable[[], None] | None = None

    # ------------------------------------------------------------ connection

    async def connect(self, name: str) -> None:
        """Connect, check the server, and make sure the streams and the bucket exist.

        Raises:
          StoreError: NATS cannot be reached, has no JetStream, or its version is refused.
        """
        try:
            import nats  # (only a leader with a shared store needs nats-py)
        except ImportError:
            raise StoreError(
                "a shared store needs nats-py: pip install 'trio-actors[nats]'"
            ) from None

        config = self.config
        options: dict[str, Any] = {
            "servers": list(config.servers),
            "name": name,
            "no_echo": True,  # (our own publishes never come back to us)
            # (at start, each server is tried twice; once connected, reconnects never stop)
            "max_reconnect_attempts": 2,
            "reconnect_time_wait": 0.5,
            "connect_timeout": API_TIMEOUT,
            "allow_reconnect": True,
            "error_cb": self._error,
            "disconnected_cb": self._disconnected,
            "reconnected_cb": self._reconnected,
            "pending_size": 64 * 1024 * 1024,
        }
        if config.creds is not None:
            options["user_credentials"] = config.creds
        tls = self._tls()
        if tls is not None:
            options["tls"] = tls
        try:
            self.nc = await nats.connect(**options)
        except Exception as exc:
            raise StoreError(
                f"cannot connect to NATS at {', '.join(config.shown_servers)}: {exc or type(exc).__name__}"
            ) from None
        self.nc.options["max_reconnect_attempts"] = -1
        info = self.nc._server_info
        self.version = str(info.get("version", "?"))
        problem = version_problem(self.version)
        if problem is not None:
            await self.close()
            raise StoreError(problem)
        if self._tls() is not None and not info.get("tls_required"):
            where = _shown(self.nc.connected_url.geturl())
            await self.close()
            raise StoreError(
                f"the nats-server at {where} does not require TLS, and this leader is"
                " configured for TLS (tls:// URLs, or store_tls_*): the connection would be in"
                " plain text. Configure TLS on the server (a tls {} block), or use nats:// URLs"
            )
        if not info.get("jetstream"):
            where = self.nc.connected_url.netloc
            await self.close()
            raise StoreError(
                f"the nats-server at {where} has no JetStream (start it with -js, or"
                " jetstream {} in its configuration)"
            )
        self.max_payload = int(info.get("max_payload", self.max_payload))
        self.js = self.nc.jetstream(timeout=API_TIMEOUT)
        self.requests = _Requests(self.nc)
        try:
            await self._ensure()
        except StoreError:
            await self.close()
            raise
        except Exception as exc:
            await self.close()
            raise StoreError(f"cannot set up the JetStream store: {exc!r}") from None

    def _tls(self) -> ssl.SSLContext | None:
        config = self.config
        wants = any(s.startswith("tls://") for s in config.servers)
        if not (wants or config.tls_ca or config.tls_cert):
            return None
        context = ssl.create_default_context(cafile=config.tls_ca)
        if config.tls_cert is not None:
            context.load_cert_chain(config.tls_cert, config.tls_key)
        return context

    async def _error(self, exc: Exception) -> None:
        log.warning("NATS: %s", exc or type(exc).__name__)

    def away_for(self, now: float) -> float:
        """Seconds (``time.monotonic()``) the connection has been down (0.0: it is up)."""
        return 0.0 if self._away_since is None else now - self._away_since

    async def _disconnected(self) -> None:
        if self.nc is None:  # (closing)
            return
        if self._away_since is None:
            self._away_since = time.monotonic()
        log.warning("NATS: disconnected; reconnecting")

    async def _reconnected(self) -> None:
        self._away_since = None
        log.warning("NATS: reconnected to %s", self.nc.connected_url.netloc)
        if self.on_reconnect is not None:
            self.on_reconnect()

    async def _ensure(self) -> None:
        from nats.js import api
        from nats.js.errors import NotFoundError

        config = self.config
        wanted = {
            config.jobs_stream: api.StreamConfig(
                name=config.jobs_stream,
                subjects=[f"{config.prefix}.jobs.>"],
                retention=api.RetentionPolicy.WORK_QUEUE,
                storage=api.StorageType.FILE,
                num_replicas=config.replicas,
                duplicate_window=config.duplicate_window,
                max_msg_size=self.max_payload,
            ),
            config.dead_stream: api.StreamConfig(
                name=config.dead_stream,
                subjects=[f"{config.prefix}.dead.>"],
                retention=api.RetentionPolicy.LIMITS,
                storage=api.StorageType.FILE,
                num_replicas=config.replicas,
                max_age=config.dead_letter_retention,
            ),
        }
        for name, stream in wanted.items():
            try:
                info = await self.js.stream_info(name)
            except NotFoundError:
                try:
                    await self.js.add_stream(stream)
                except Exception as exc:
                    raise StoreError(f"cannot create the stream {name}: {exc}") from None
                continue
            if info.config.num_replicas != config.replicas:
                raise StoreError(
                    f"the stream {name} has {info.config.num_replicas} replicas, this leader"
                    f" is configured for {config.replicas}: change the store's replicas (or"
                    " the stream, with the nats CLI) so that they agree"
                )
        try:
            self.kv = await self.js.key_value(config.results_bucket)
        except Exception:
            self.kv = None
        if self.kv is not None:
            info = await self.js.stream_info(f"KV_{config.results_bucket}")
            if info.config.max_age and abs(info.config.max_age - config.results_ttl) > 1:
                log.warning(
                    "the bucket %s keeps results %g s, this leader is configured for %g s: the"
                    " bucket's holds (change it for every leader with the nats CLI)",
                    config.results_bucket, info.config.max_age, config.results_ttl,
                )  # fmt: skip
            if info.config.num_replicas != config.replicas:
                raise StoreError(
                    f"the bucket {config.results_bucket} has {info.config.num_replicas}"
                    f" replicas, this leader is configured for {config.replicas}: change the"
                    " store's replicas (or the bucket, with the nats CLI) so that they agree"
                )
        else:
            try:
                self.kv = await self.js.create_key_value(
                    bucket=config.results_bucket,
                    ttl=config.results_ttl,
                    history=1,
                    replicas=config.replicas,
                    direct=True,
                )
            except Exception as exc:
                raise StoreError(
                    f"cannot create the results bucket {config.results_bucket}: {exc}"
                ) from None

    async def close(self) -> None:
        """Drain what is buffered and close the connection."""
        nc = self.nc
        if nc is None:
            return
        self.nc = None
        try:
            await asyncio.wait_for(nc.flush(), 2)
        except Exception:
            pass
        try:
            await asyncio.wait_for(nc.close(), 5)
        except Exception:
            pass

    @property
    def connected(self) -> bool:
        return self.nc is not None and self.nc.is_connected

    # ------------------------------------------------------------ jobs in

    def _kv(self, key: str) -> str:
        return f"$KV.{self.config.results_bucket}.{key}"

    async def submit_jobs(self, jobs: Sequence[Submitted]) -> list[Any]:
        """Store jobs: for each, claim its id (``c<key>`` in the bucket, create-if-absent,
        for the bucket's TTL: the dedup window longer than the stream's), then publish its
        message (``Nats-Msg-Id`` = its id). Each one's answer, in order: ``("stored",
        None)``; ``("duplicate", claim)`` (claimed before: ``claim`` is ``[identity,
        wall time]`` of the first submit, or None when it cannot be read); or the
        exception that says why not (nothing may have been stored, or the claim only).

        A duplicate claimed less than the stream's duplicate window ago is published
        again under the same message id: JetStream drops it if the first one was stored,
        and stores it if its leader died between the claim and the publish. ``force``
        (an operator's retry): the claim is overwritten and the message is new.
        """
        expect_none = {"Nats-Expected-Last-Subject-Sequence": "0"}
        claims = await self.requests.many(
            [
                (self._kv("c" + job.key), job.claim, None if job.force else expect_none)
                for job in jobs
            ]
        )
        answers: list[Any] = [None] * len(jobs)
        duplicates: list[int] = []
        for i, answer in enumerate(claims):
            problem = _js_problem(answer)
            if problem is None:
                answers[i] = ("stored", None)
            elif problem == 10071:
                duplicates.append(i)
            else:
                answers[i] = _as_error(answer, problem, "claiming the job id")
        if duplicates:
            read = await self.read_keys(["c" + jobs[i].key for i in duplicates])
            wall = time.time()
            for i, data in zip(duplicates, read, strict=True):
                claim = decode_claim(data)
                # Published again (see above) when claimed lately, or when the claim cannot
                # be read (a replica behind its leader, just after an election): lately.
                if claim is None or wall - claim[1] < self.config.duplicate_window - 10:
                    answers[i] = ("again", claim)
                else:
                    answers[i] = ("duplicate", claim)
        publish = [i for i, answer in enumerate(answers) if answer[0] in ("stored", "again")]
        config = self.config
        stored = await self.requests.many(
            [
                (
                    config.jobs_subject(jobs[i].subject),
                    jobs[i].body,
                    {"Nats-Msg-Id": _msg_id(jobs[i].msg_id)},
                )
                for i in publish
            ]
        )
        for i, answer in zip(publish, stored, strict=True):
            kind, claim = answers[i]
            problem = _js_problem(answer)
            if kind == "again":
                answers[i] = (
                    ("duplicate", claim)
                    if problem is None
                    else _as_error(answer, problem, "storing the job again")
                )
            elif problem is not None:  # (claimed, not stored: the claim goes again)
                answers[i] = _as_error(answer, problem, "storing the job")
                await self._unclaim(jobs[i].key)
        return answers

    async def _unclaim(self, key: str) -> None:
        try:
            await self.kv.purge("c" + key)
        except Exception as exc:
            log.warning("a claim of a job not stored stays (its id waits): %s", exc)

    # ------------------------------------------------------------ jobs out

    async def ensure_consumer(self, pattern: str) -> tuple[str | None, float]:
        """Make sure the durable consumer of worker ``pattern`` exists and is bound.
        Returns why it cannot be (another pattern's consumer, in use, overlaps it), or
        None; and the consumer's AckWait (another leader's, when it made it: it is not
        changed here, so that leaders configured apart never shorten each other's)."""
        from nats.js import api
        from nats.js.errors import NotFoundError

        config = self.config
        durable = consumer_name(pattern)
        if pattern in self._subs:
            return None, self.ack_waits.get(pattern, config.ack_wait)
        try:
            info = await self.js.consumer_info(config.jobs_stream, durable)
        except NotFoundError:
            info = None
        if info is None:
            consumer = api.ConsumerConfig(
                durable_name=durable,
                filter_subject=config.jobs_subject(pattern),
                ack_policy=api.AckPolicy.EXPLICIT,
                deliver_policy=api.DeliverPolicy.ALL,
                ack_wait=config.ack_wait,
                max_deliver=-1,
                max_ack_pending=config.max_ack_pending,
                max_waiting=4096,
                inactive_threshold=CONSUMER_IDLE,
            )
            try:
                info = await self.js.add_consumer(config.jobs_stream, consumer)
            except Exception as exc:
                text = str(exc)
                if not ("10100" in text or "overlap" in text or "unique" in text):
                    return f"cannot create the consumer of {pattern!r}: {exc}", 0.0
                idle = await self._drop_idle_overlapping(pattern)
                try:
                    info = await self.js.add_consumer(config.jobs_stream, consumer)
                except Exception:
                    problem = (
                        f"worker pattern {pattern!r} overlaps the pattern(s) {idle or '?'} of"
                        f" another consumer in use on the shared work queue"
                        f" {config.jobs_stream}: on a shared store, the patterns workers serve"
                        " must not overlap (serve a.b and a.c, or a.*, not both)"
                    )
                    return problem, 0.0
        ack_wait = float(info.config.ack_wait or config.ack_wait)
        if abs(ack_wait - config.ack_wait) > 0.001:
            log.warning(
                "the consumer of %r has an AckWait of %g s, this leader is configured for %g s:"
                " it keeps the consumer's (change it for every leader with `nats consumer"
                " edit`, and the leaders' store_ack_wait)",
                pattern, ack_wait, config.ack_wait,
            )  # fmt: skip
        self.ack_waits[pattern] = ack_wait
        self._subs[pattern] = _Puller(
            self.nc, f"$JS.API.CONSUMER.MSG.NEXT.{config.jobs_stream}.{durable}"
        )
        return None, ack_wait

    async def _drop_idle_overlapping(self, pattern: str) -> list[str]:
        """Delete the consumers whose patterns overlap ``pattern`` and that nobody uses
        (no pull waiting, nothing held): those of patterns no worker serves any more.
        Returns the patterns of the overlapping consumers still in use."""
        config = self.config
        cut = len(config.prefix) + 6
        in_use = []
        for info in await self.js.consumers_info(config.jobs_stream):
            other = (info.config.filter_subject or "")[cut:]
            if not other or not patterns_overlap(other, pattern):
                continue
            if info.num_waiting or info.num_ack_pending:
                in_use.append(other)
                continue
            try:
                await self.js.delete_consumer(config.jobs_stream, info.name)
                log.warning("deleted the idle consumer of %r: it overlaps %r", other, pattern)
            except Exception as exc:
                log.warning("cannot delete the idle consumer of %r: %s", other, exc)
        return in_use

    async def pull(self, pattern: str, count: int, expires: float) -> int:
        """One pull request for up to ``count`` messages of worker ``pattern``'s consumer:
        each is given to the pattern's ``deliver`` (on the loop) as it comes, not once the
        batch is full. Returns how many came, when ``count`` did, the server ended the
        request (no more within ``expires`` seconds), or ``expires`` and a second passed."""
        return await self._subs[pattern].pull(min(count, MAX_FETCH), expires)

    def set_deliver(self, pattern: str, deliver: Callable[[Fetched], None]) -> None:
        """Where the messages of ``pattern``'s pulls go (late ones too)."""
        self._subs[pattern].deliver = deliver

    async def served_patterns(self) -> list[str]:
        """The worker patterns whose consumer is in use now (a pull waiting, or messages
        held) by any leader."""
        infos = await self.js.consumers_info(self.config.jobs_stream)
        prefix = f"{self.config.prefix}.jobs."
        return [
            info.config.filter_subject[len(prefix) :]
            for info in infos
            if (info.config.filter_subject or "").startswith(prefix)
            and (info.num_waiting or info.num_ack_pending)
        ]

    def drop_consumer(self, pattern: str) -> None:
        """Stop fetching for ``pattern`` (the durable consumer stays, for other leaders;
        JetStream deletes it once nobody used it for :data:`CONSUMER_IDLE` seconds)."""
        puller = self._subs.pop(pattern, None)
        if puller is not None:
            task = asyncio.ensure_future(_quietly(puller.close()))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    async def settle(self, acks: Sequence[tuple[str, bytes]]) -> None:
        """Answer fetched messages: ``(reply subject, b"+ACK" / b"+WPI" / b"-NAK {...}"
        / b"+TERM")`` each, buffered and flushed once."""
        nc = self.nc
        for reply, what in acks:
            await nc.publish(reply, what)

    @staticmethod
    def nak(delay: float) -> bytes:
        """A delayed negative acknowledgement: redelivered after ``delay`` seconds."""
        return b'-NAK {"delay": %d}' % max(0, int(delay * 1e9))

    # ------------------------------------------------------------ the bucket

    async def read_keys(self, keys: Sequence[str]) -> list[bytes | None]:
        """The values of ``keys`` in the bucket (None where there is none): direct gets,
        sent together and answered on one inbox."""
        bucket = self.config.results_bucket
        answers = await self.requests.many(
            [(f"$JS.API.DIRECT.GET.KV_{bucket}.$KV.{bucket}.{key}", b"", None) for key in keys]
        )
        out: list[bytes | None] = []
        for answer in answers:
            if isinstance(answer, BaseException):
                raise answer
            headers = answer.headers or {}
            status = headers.get("Status")
            if status == "404":
                out.append(None)
            elif status:
                raise StoreError(f"reading the bucket: {status} {headers.get('Description', '')}")
            elif headers.get("KV-Operation") in ("DEL", "PURGE"):
                out.append(None)
            else:
                out.append(bytes(answer.data))
        return out

    async def put_results(self, results: Sequence[tuple[str, bytes]]) -> list[Any]:
        """Store ``(key, result)`` pairs if absent; for each: None when stored, the bytes
        of the result stored before (the first one wins), or the exception that kept it
        from being stored."""
        answers = await self.requests.many(
            [
                (self._kv(key), value, {"Nats-Expected-Last-Subject-Sequence": "0"})
                for key, value in results
            ]
        )
        out: list[Any] = []
        for (key, value), answer in zip(results, answers, strict=True):
            problem = _js_problem(answer)
            if problem is None:
                out.append(None)
            elif problem == 10071:  # (a result is there, or was deleted)
                try:
                    out.append(await self._put_again(key, value))
                except Exception as exc:
                    out.append(exc)
            else:
                out.append(_as_error(answer, problem, "storing a result"))
        return out

    async def _put_again(self, key: str, value: bytes) -> bytes | None:
        """The slow path of :meth:`put_results` (a second run's result, or the first
        after a purge): nats-py's create, which knows deleted keys."""
        kv = self.kv
        try:
            await kv.create(key, value, validate_keys=False)
        except Exception as exc:
            if type(exc).__name__ != "KeyWrongLastSequenceError":
                raise
            entry = await kv.get(key, validate_keys=False)
            return bytes(entry.value or b"")
        return None

    async def put_values(self, values: Sequence[tuple[str, bytes]]) -> None:
        """Put ``(key, value)`` pairs in the bucket (whatever was there)."""
        answers = await self.requests.many([(self._kv(k), v, None) for k, v in values])
        for answer in answers:
            problem = _js_problem(answer)
            if problem is not None:
                raise _as_error(answer, problem, "writing the bucket")

    async def delete_results(self, keys: Sequence[str]) -> None:
        """Forget the stored results of ``keys`` (jobs submitted again on purpose)."""
        kv = self.kv

        async def one(key: str) -> None:
            try:
                await kv.purge(key)
            except Exception as exc:
                if type(exc).__name__ not in ("KeyNotFoundError", "KeyDeletedError"):
                    raise

        await asyncio.gather(*(one(k) for k in keys))

    async def dead_letter(self, letters: Sequence[tuple[str, str, bytes]]) -> None:
        """Store ``(message id, subject, record)`` dead letters in the dead-letter stream
        (the message id is of this death: a job that dies again has another)."""
        js = self.js
        prefix = self.config.prefix
        await asyncio.gather(
            *(
                js.publish(f"{prefix}.dead.{subject}", body, headers={"Nats-Msg-Id": msg_id})
                for msg_id, subject, body in letters
            )
        )

    async def newest_dead_letters(self, limit: int) -> list[bytes]:
        """The bodies of the newest ``limit`` dead letters of the dead-letter stream,
        oldest first (read together, by sequence)."""
        name = self.config.dead_stream
        info = await self.js.stream_info(name)
        last, first = info.state.last_seq, info.state.first_seq
        if not info.state.messages:
            return []
        seqs = list(range(max(first, last - limit + 1), last + 1))
        answers = await self.requests.many(
            [(f"$JS.API.STREAM.MSG.GET.{name}", b'{"seq":%d}' % seq, None) for seq in seqs]
        )
        out = []
        for answer in answers:
            if _js_problem(answer) is not None:
                continue  # (deleted, or expired meanwhile)
            try:
                message = json.loads(answer.data)["message"]
                out.append(base64.b64decode(message["data"]))
            except Exception:
                continue
        return out

    # ------------------------------------------------------------ core subjects

    async def publish_core(
        self, messages: Sequence[tuple[str, bytes, dict[str, str] | None]]
    ) -> None:
        """Publish core NATS messages (at most once), buffered and flushed once."""
        nc = self.nc
        for subject, data, headers in messages:
            await nc.publish(subject, data, headers=headers or None)

    async def subscribe(self, subject: str, on_message: Callable[[Any], None]) -> None:
        """Call ``on_message(msg)`` (on the loop) for each core message on ``subject``."""

        async def handler(msg: Any) -> None:
            on_message(msg)

        # (nats-py's bounds: 512k messages, 128 MiB waiting for the handler, which only
        # hands each to trio; past them nats-py drops, as core NATS does a slow consumer)
        await self.nc.subscribe(subject, cb=handler)


async def _quietly(awaitable: Awaitable[Any]) -> None:
    try:
        await awaitable
    except Exception:
        pass


class _Puller:
    """Pull requests of one consumer, answered on an inbox of its own: one at a time,
    each delivering its messages as they come (nats-py's ``fetch`` waits for a lingering
    pull to fill its batch or time out, which holds a job for up to its timeout). A
    message that comes after its pull was given up is delivered too (never dropped: it
    would come back only after AckWait, counted as a delivery)."""

    def __init__(self, nc: Any, next_subject: str) -> None:
        self.nc = nc
        self.next_subject = next_subject
        self.inbox = nc.new_inbox()
        self.sub: Any = None
        self.deliver: Callable[[Fetched], None] | None = None
        self._left = 0
        self._done: asyncio.Event = asyncio.Event()

    async def _on_msg(self, msg: Any) -> None:
        headers = msg.headers
        if headers and headers.get("Status"):  # the server ended the pull (408, 404, 409)
            self._done.set()
            return
        deliver = self.deliver
        if deliver is not None:
            try:
                meta = msg.metadata
                deliver(Fetched(msg.reply, msg.data, meta.num_delivered))
            except Exception:
                log.exception("a message of the jobs stream could not be taken")
        self._left -= 1
        if self._left <= 0:
            self._done.set()

    async def pull(self, count: int, expires: float) -> int:
        if self.sub is None:
            self.sub = await self.nc.subscribe(self.inbox, cb=self._on_msg)
        self._left = count
        self._done = asyncio.Event()
        request = b'{"batch":%d,"expires":%d}' % (count, int(expires * 1e9))
        await self.nc.publish(self.next_subject, request, reply=self.inbox)
        try:
            await asyncio.wait_for(self._done.wait(), expires + 1.0)
        except TimeoutError:
            pass
        return count - max(self._left, 0)

    async def close(self) -> None:
        if self.sub is not None:
            await self.sub.unsubscribe()


class _Requests:
    """Requests sent together and answered on one inbox (``<inbox>.<n>``), waited for
    together: nats-py's ``request`` costs a ``wait_for`` (a task) per call, which is most
    of the price of a KV read or a publish acknowledged one by one."""

    def __init__(self, nc: Any) -> None:
        self.nc = nc
        self.prefix = nc.new_inbox()
        self.sub: Any = None
        self.pending: dict[str, asyncio.Future[Any]] = {}
        self.ids = itertools.count()

    async def _on_reply(self, msg: Any) -> None:
        future = self.pending.pop(msg.subject, None)
        if future is not None and not future.done():
            future.set_result(msg)

    async def many(self, requests: Sequence[tuple[str, bytes, dict[str, str] | None]]) -> list[Any]:
        """Send each ``(subject, data, headers)``; return each answer (a message), or the
        exception that took its place (TimeoutError after :data:`API_TIMEOUT`)."""
        if not requests:
            return []
        nc = self.nc
        if self.sub is None:
            self.sub = await nc.subscribe(self.prefix + ".*", cb=self._on_reply)
        loop = asyncio.get_running_loop()
        pending = self.pending
        prefix = self.prefix + "."
        ids = self.ids
        futures: list[tuple[str, Any]] = []
        for subject, data, headers in requests:
            reply = prefix + str(next(ids))
            future = loop.create_future()
            pending[reply] = future
            try:
                await nc.publish(subject, data, reply=reply, headers=headers)
            except Exception as exc:
                pending.pop(reply, None)
                future = exc
            futures.append((reply, future))
        waiting = [f for _r, f in futures if isinstance(f, asyncio.Future)]
        if waiting:
            await asyncio.wait(waiting, timeout=API_TIMEOUT)
        out: list[Any] = []
        for reply, future in futures:
            if not isinstance(future, asyncio.Future):
                out.append(future)
            elif future.done():
                out.append(future.result())
            else:
                pending.pop(reply, None)
                future.cancel()
                out.append(TimeoutError(f"no answer from NATS within {API_TIMEOUT:g} s"))
        return out
