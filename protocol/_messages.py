"""The protocol's messages: one frozen attrs class per kind, validated when built.

Every message carries ``mid``, a message id unique per sender and connection (a counter is
enough). A reply carries ``cid``, the ``mid`` of the message it answers. Field types are
checked on construction, so a message that exists is a valid one; the codec
(:mod:`protocol._codec`) maps each class to CBOR through an explicit table of wire keys.

Payloads are arbitrary CBOR values (None, bool, int, float, str, bytes, lists, maps);
``headers`` are maps of str to str. Mappings inside messages are plain dicts for speed:
treat them as read-only.
"""

from __future__ import annotations

from typing import Any, ClassVar, Self

import attrs

from ._fields import (
    _any_map,
    _bool,
    _bytes,
    _code,
    _cut_text,
    _entries,
    _entry_tuple,
    _id,
    _key,
    _mode,
    _opt_delay,
    _opt_fraction,
    _opt_frame_limit,
    _opt_pos_int,
    _opt_seconds,
    _opt_short_str,
    _opt_str,
    _opt_token,
    _opt_uint,
    _pattern,
    _patterns,
    _plain_str,
    _policy,
    _pos_int,
    _qos,
    _query_what,
    _role,
    _short_str,
    _sid_tuple,
    _sids,
    _str,
    _str_map,
    _subject,
    _tuple,
    _uint,
    _versions,
    cid_field,
    field_factory,
    headers_field,
    mid_field,
    payload_field,
)


class Message:
    """Base of every message class. ``KIND`` is the wire type tag (see the tag table)."""

    KIND: ClassVar[int] = 0
    #: Set by ``@attrs.frozen`` on each message class (declared so that type checkers
    #: take any ``type[Message]`` for an attrs class).
    __attrs_attrs__: ClassVar[tuple[attrs.Attribute[Any], ...]]
    #: The message id, a field of every message class.
    mid: int
    __slots__ = ()

    @classmethod
    def checked(cls, **fields: Any) -> Self:
        """Build a message, validating every field: the same as ``cls(**fields)`` (same
        arguments, defaults, exceptions and messages), and faster for the message classes,
        which each have a generated version with inline checks (see
        :mod:`protocol._fastcodec`). A client builds every Submit with it."""
        return cls(**fields)

    @classmethod
    def unchecked(cls, **fields: Any) -> Self:
        """Build a message from values that are already valid, skipping validation.

        Only for values that were validated already: the fields of a message that was
        decoded or built with validation (a leader turning a decoded Submit into an
        Assign, or forwarding a decoded Result). Nothing is checked, so a wrong value is
        sent to peers as is; build anything else with the normal, validating constructor.

        It takes the same keyword arguments and defaults as the class and applies the
        same converters, so for valid input ``Submit.unchecked(**kw) == Submit(**kw)``.
        No hot path builds messages this way (senders of many messages build bundle items
        with the generated ``cls.item(...)``), so it has no generated version.
        """
        self = object.__new__(cls)
        for field in attrs.fields(cls):
            if field.name in fields:
                value = fields.pop(field.name)
            elif (factory := field_factory(field)) is not None:
                value = factory()
            elif field.default is attrs.NOTHING:
                raise TypeError(f"{cls.__name__}.unchecked() missing argument {field.name!r}")
            else:
                value = field.default
            if field.converter is not None:
                value = field.converter(value)
            object.__setattr__(self, field.name, value)
        if fields:
            raise TypeError(f"{cls.__name__}.unchecked() got unexpected {sorted(fields)}")
        return self


# ---------------------------------------------------------------------------------------
# Session


@attrs.frozen
class Hello(Message):
    """First message of every connection: who the sender is and what it offers.

    Args:
      role: ``client``, ``worker``, ``leader`` or ``observer``.
      name: a name for logs and statistics (worker ``square-3``, client ``cli``).
      versions: the protocol versions the sender speaks; the receiver picks one.
      patterns: for a worker, the subject patterns it serves.
      credit: for a worker, how many unacknowledged jobs it may hold at once.
      group: for a worker, the worker group it belongs to (statistics, retry policies).
      token: an authentication token, when the leader asks for one.
      meta: free-form facts (process id, host, library version).
      max_frame: the largest frame body, in bytes, the sender accepts (so that the
        receiver never bundles more than that into one frame); at least
        :data:`protocol.MIN_MAX_FRAME`.
      policy: for a worker, how the leader picks a worker for a job of its subjects (a
        subject has one policy: a Hello asking for another is refused, ``conflict``): a
        :class:`protocol.RoutingPolicy` value (``round_robin``, ``least_loaded``, ``sticky``).
      mode: for a worker, what its group does: a :class:`protocol.GroupMode` value
        (``round_robin`` takes jobs, ``broadcast`` receives every published message).
    """

    KIND: ClassVar[int] = 1
    mid: int = mid_field()
    role: str = attrs.field(validator=_role, metadata=_key("role"), kw_only=True)
    name: str = attrs.field(default="", validator=_short_str, metadata=_key("name"), kw_only=True)
    versions: tuple[int, ...] = attrs.field(
        default=(1,), converter=_tuple, validator=_versions, metadata=_key("v"), kw_only=True
    )
    patterns: tuple[str, ...] = attrs.field(
        default=(), converter=_tuple, validator=_patterns, metadata=_key("pats"), kw_only=True
    )
    credit: int = attrs.field(default=0, validator=_uint, metadata=_key("cr"), kw_only=True)
    group: str | None = attrs.field(
        default=None, validator=_opt_short_str, metadata=_key("g"), kw_only=True
    )
    token: str | None = attrs.field(
        default=None, validator=_opt_token, metadata=_key("tok"), kw_only=True
    )
    meta: dict[str, Any] = attrs.field(
        factory=dict, validator=_any_map, metadata=_key("meta"), kw_only=True
    )
    max_frame: int | None = attrs.field(
        default=None, validator=_opt_frame_limit, metadata=_key("mf"), kw_only=True
    )
    policy: str = attrs.field(
        default="round_robin",
        converter=_plain_str,
        validator=_policy,
        metadata=_key("pol"),
        kw_only=True,
    )
    mode: str = attrs.field(
        default="round_robin",
        converter=_plain_str,
        validator=_mode,
        metadata=_key("mode"),
        kw_only=True,
    )


@attrs.frozen
class Welcome(Message):
    """The answer to Hello: the chosen protocol version and the session's parameters.

    Args:
      version: the protocol version both sides now speak.
      node: the name of the answering node (the leader).
      session: an id for this session, for logs.
      heartbeat: seconds between heartbeats the sender expects (0 = none).
      max_frame: the largest frame body, in bytes, the sender accepts; at least
        :data:`protocol.MIN_MAX_FRAME`.
    """

    KIND: ClassVar[int] = 2
    mid: int = mid_field()
    cid: int | None = cid_field()
    version: int = attrs.field(validator=_pos_int, metadata=_key("v"), kw_only=True)
    node: str = attrs.field(default="", validator=_short_str, metadata=_key("node"), kw_only=True)
    session: str = attrs.field(
        default="", validator=_short_str, metadata=_key("sess"), kw_only=True
    )
    heartbeat: float | None = attrs.field(
        default=None, validator=_opt_seconds, metadata=_key("hb"), kw_only=True
    )
    max_frame: int | None = attrs.field(
        default=None, validator=_opt_frame_limit, metadata=_key("mf"), kw_only=True
    )


@attrs.frozen
class Ping(Message):
    """A heartbeat; the peer answers with Pong carrying this ``mid`` as ``cid``."""

    KIND: ClassVar[int] = 15
    mid: int = mid_field()


@attrs.frozen
class Pong(Message):
    """The answer to Ping."""

    KIND: ClassVar[int] = 16
    mid: int = mid_field()
    cid: int | None = cid_field()


@attrs.frozen
class Bye(Message):
    """An orderly end of the session: the sender will send nothing more and then close.

    Args:
      reason: why, in words; cut to :data:`protocol.MAX_REASON_SIZE` bytes of UTF-8.
    """

    KIND: ClassVar[int] = 18
    mid: int = mid_field()
    reason: str = attrs.field(
        default="", converter=_cut_text, validator=_str, metadata=_key("why"), kw_only=True
    )


@attrs.frozen
class Error(Message):
    """An error answer. After a code in ``ErrorCode.CLOSING`` the sender closes the connection.

    Any other code answers the one request named by ``cid`` and the session stays open.

    Args:
      code: an :class:`protocol.ErrorCode` string (at most
        :data:`protocol.MAX_CODE_LENGTH` characters).
      message: what went wrong, in words; cut to :data:`protocol.MAX_REASON_SIZE` bytes of
        UTF-8, so that an Error always fits in the smallest frame a peer may announce.
      cid: the ``mid`` of the message this answers, when there is one.
      job_id: the job concerned, when there is one.
      retry_after: for ``busy``, seconds after which a retry may succeed.
    """

    KIND: ClassVar[int] = 17
    mid: int = mid_field()
    cid: int | None = cid_field()
    code: str = attrs.field(validator=_code, metadata=_key("code"), kw_only=True)
    message: str = attrs.field(
        default="", converter=_cut_text, validator=_str, metadata=_key("msg"), kw_only=True
    )
    job_id: str | None = attrs.field(
        default=None, validator=_opt_short_str, metadata=_key("j"), kw_only=True
    )
    retry_after: float | None = attrs.field(
        default=None, validator=_opt_seconds, metadata=_key("ra"), kw_only=True
    )


# ---------------------------------------------------------------------------------------
# Jobs


@attrs.frozen
class Submit(Message):
    """A client submits a job to whichever worker serves its subject.

    Args:
      job_id: the job's id; submitting the same id again is idempotent.
      subject: where it goes (no wildcards).
      payload: any CBOR value.
      headers: str to str metadata (``key`` routes sticky groups).
      qos: 0 at most once (no redelivery), 1 at least once.
      timeout: seconds after which the client no longer wants the result.
      max_attempts: overrides the leader's redelivery limit for this job.
      wait_for_worker: when no worker serves the subject, queue the job for one that
        will come (until its timeout or the leader's ``max_queue_time``) instead of the
        leader's ``no_route`` answer.
      enqueue: answer with an Ack (``cid`` = this ``mid``, the ``job_id``) as soon as the
        job is accepted (written to the leader's journal, when it has one) instead of with
        its Result; the submitter does not wait for the job (a Query ``result`` with
        ``wait`` does). QoS 1 only.
      delay: seconds after its acceptance before the job may run (at most
        :data:`MAX_DELAY`); a delayed job waits for a worker that is yet to come, as with
        ``wait_for_worker``, and its ``timeout`` counts from the submit.
    """

    KIND: ClassVar[int] = 3
    mid: int = mid_field()
    job_id: str = attrs.field(validator=_id, metadata=_key("j"), kw_only=True)
    subject: str = attrs.field(validator=_subject, metadata=_key("s"), kw_only=True)
    payload: Any = payload_field()  # noqa: RUF009 - an attrs.field() specifier, not a value
    headers: dict[str, str] = headers_field()  # noqa: RUF009 - an attrs.field(factory=dict)
    qos: int = attrs.field(default=1, validator=_qos, metadata=_key("q"), kw_only=True)
    timeout: float | None = attrs.field(
        default=None, validator=_opt_seconds, metadata=_key("to"), kw_only=True
    )
    max_attempts: int | None = attrs.field(
        default=None, validator=_opt_pos_int, metadata=_key("ma"), kw_only=True
    )
    wait_for_worker: bool = attrs.field(
        default=False, validator=_bool, metadata=_key("ww"), kw_only=True
    )
    enqueue: bool = attrs.field(default=False, validator=_bool, metadata=_key("enq"), kw_only=True)
    delay: float | None = attrs.field(
        default=None, validator=_opt_delay, metadata=_key("dl"), kw_only=True
    )


@attrs.frozen
class Assign(Message):
    """The leader hands a job to a worker, against the worker's credit.

    Args:
      attempt: 1 for the first delivery, then 2, 3, ... on redelivery.
      ack_timeout: seconds the worker has to answer (Result, Nack or Progress) before the
        job is redelivered elsewhere.
      deadline: seconds the job may still run, when its submit named a timeout: past
        them nobody waits for its result, and the worker cancels the handler.
      max_attempts: the deliveries the job may take in all (for logs: "attempt 2/5").
    """

    KIND: ClassVar[int] = 4
    mid: int = mid_field()
    job_id: str = attrs.field(validator=_id, metadata=_key("j"), kw_only=True)
    subject: str = attrs.field(validator=_subject, metadata=_key("s"), kw_only=True)
    payload: Any = payload_field()  # noqa: RUF009 - an attrs.field() specifier, not a value
    headers: dict[str, str] = headers_field()  # noqa: RUF009 - an attrs.field(factory=dict)
    attempt: int = attrs.field(default=1, validator=_pos_int, metadata=_key("a"), kw_only=True)
    qos: int = attrs.field(default=1, validator=_qos, metadata=_key("q"), kw_only=True)
    ack_timeout: float | None = attrs.field(
        default=None, validator=_opt_seconds, metadata=_key("at"), kw_only=True
    )
    deadline: float | None = attrs.field(
        default=None, validator=_opt_seconds, metadata=_key("dl"), kw_only=True
    )
    max_attempts: int | None = attrs.field(
        default=None, validator=_opt_pos_int, metadata=_key("ma"), kw_only=True
    )


@attrs.frozen
class Ack(Message):
    """Acknowledges a message (a QoS 1 Deliver, or a job taken without a result yet)."""

    KIND: ClassVar[int] = 5
    mid: int = mid_field()
    cid: int | None = cid_field()
    job_id: str | None = attrs.field(
        default=None, validator=_opt_short_str, metadata=_key("j"), kw_only=True
    )


@attrs.frozen
class Nack(Message):
    """A worker gives a job back: redeliver it after ``delay`` seconds (or the backoff)."""

    KIND: ClassVar[int] = 6
    mid: int = mid_field()
    cid: int | None = cid_field()
    job_id: str = attrs.field(validator=_id, metadata=_key("j"), kw_only=True)
    delay: float | None = attrs.field(
        default=None, validator=_opt_seconds, metadata=_key("d"), kw_only=True
    )
    reason: str = attrs.field(
        default="", converter=_cut_text, validator=_str, metadata=_key("why"), kw_only=True
    )


@attrs.frozen
class Progress(Message):
    """A worker reports progress on a job; this also extends the job's ack deadline."""

    KIND: ClassVar[int] = 7
    mid: int = mid_field()
    job_id: str = attrs.field(validator=_id, metadata=_key("j"), kw_only=True)
    fraction: float | None = attrs.field(
        default=None, validator=_opt_fraction, metadata=_key("f"), kw_only=True
    )
    note: str | None = attrs.field(
        default=None, validator=_opt_str, metadata=_key("n"), kw_only=True
    )


@attrs.frozen
class Result(Message):
    """The outcome of a job: from worker to leader (it acknowledges the Assign) and from
    leader to client (answering the Submit, ``cid`` = the Submit's ``mid``).

    Args:
      ok: True when ``payload`` is the job's return value; False when it failed, with
        ``error_type`` and ``error_message`` saying how.
      attempts: how many deliveries the job took.
      final: for a failure (from a worker): it is the job's outcome, not to be retried
        (the handler rejected the job, raised an exception its worker never retries, or
        returned a result that cannot be sent).
      traceback: for a failure, the remote traceback as text (for logs and the client's
        exception), if there is one.
      error_code: for a failure the leader decided rather than the job's handler, its
        :class:`~protocol.ErrorCode`: ``cancelled`` when a client cancelled the job. Set by
        the leader only, never copied from a worker's Result, so that a handler's own
        exception (even one named ``Cancelled``) cannot pass for it.
    """

    KIND: ClassVar[int] = 8
    mid: int = mid_field()
    cid: int | None = cid_field()
    job_id: str = attrs.field(validator=_id, metadata=_key("j"), kw_only=True)
    ok: bool = attrs.field(default=True, validator=_bool, metadata=_key("ok"), kw_only=True)
    payload: Any = payload_field()  # noqa: RUF009 - an attrs.field() specifier, not a value
    error_type: str | None = attrs.field(
        default=None, validator=_opt_str, metadata=_key("et"), kw_only=True
    )
    error_message: str | None = attrs.field(
        default=None, validator=_opt_str, metadata=_key("em"), kw_only=True
    )
    attempts: int = attrs.field(default=1, validator=_uint, metadata=_key("a"), kw_only=True)
    final: bool = attrs.field(default=False, validator=_bool, metadata=_key("fin"), kw_only=True)
    traceback: str | None = attrs.field(
        default=None, validator=_opt_str, metadata=_key("tb"), kw_only=True
    )
    error_code: str | None = attrs.field(
        default=None, validator=_opt_short_str, metadata=_key("ec"), kw_only=True
    )


@attrs.frozen
class Credit(Message):
    """A worker sets its window: the most unacknowledged jobs it may hold at once.

    Every Result (or Nack) frees one slot of the window, so a worker that keeps its
    concurrency sends Credit only to change it; ``credit=0`` asks for no more jobs (drain).
    """

    KIND: ClassVar[int] = 9
    mid: int = mid_field()
    credit: int = attrs.field(validator=_uint, metadata=_key("cr"), kw_only=True)


@attrs.frozen
class Cancel(Message):
    """Cancel a job: client to leader (by job id), leader to the worker running it.

    Args:
      abandon: from a client: it no longer waits for the job (its submit timed out or
        was cancelled); the job is cancelled only if no other client waits for it.
    """

    KIND: ClassVar[int] = 14
    mid: int = mid_field()
    job_id: str = attrs.field(validator=_id, metadata=_key("j"), kw_only=True)
    reason: str = attrs.field(
        default="", converter=_cut_text, validator=_str, metadata=_key("why"), kw_only=True
    )
    abandon: bool = attrs.field(default=False, validator=_bool, metadata=_key("ab"), kw_only=True)


@attrs.frozen
class Query(Message):
    """A client asks the leader about the cluster, answered with a Result (``cid`` = this
    ``mid``) or an Error.

    Args:
      what: ``result``: the result of job ``job_id`` (stored within the dedup window);
        answered ``not_found`` when the leader has no such job, or, for a job still
        running, its Result when it finishes (``wait``) or ``not_found`` at once.
        ``stats``: the leader's statistics as the Result's payload.
        ``dead_letters``: the dead letters kept (newest first, at most
        :data:`MAX_LISTED`), as a list of maps without payloads or tracebacks.
        ``dead_letter``: dead letter ``job_id`` whole (its payload as the leader keeps it,
        attempts, last error and traceback); ``not_found`` if there is none.
        ``retry_dead_letter``: submit dead letter ``job_id`` again (every one when
        ``job_id`` is None) as a new job under the same id, with its attempts reset; the
        payload is ``{"retried": n}``.
        ``purge_dead_letters``: forget dead letter ``job_id`` (every one when None); the
        payload is ``{"purged": n}``.
      job_id: the job, for ``result`` and the dead-letter queries.
      wait: for ``result``: wait for a job that is still running.
    """

    KIND: ClassVar[int] = 23
    mid: int = mid_field()
    what: str = attrs.field(validator=_query_what, metadata=_key("w"), kw_only=True)
    job_id: str | None = attrs.field(
        default=None, validator=_opt_short_str, metadata=_key("j"), kw_only=True
    )
    wait: bool = attrs.field(default=False, validator=_bool, metadata=_key("wait"), kw_only=True)


# ---------------------------------------------------------------------------------------
# Publish / subscribe


@attrs.frozen
class Publish(Message):
    """Broadcast a message to every subscriber whose pattern matches ``subject``.

    Args:
      retain: keep it as the subject's last message, replayed to later subscribers.
    """

    KIND: ClassVar[int] = 10
    mid: int = mid_field()
    subject: str = attrs.field(validator=_subject, metadata=_key("s"), kw_only=True)
    payload: Any = payload_field()  # noqa: RUF009 - an attrs.field() specifier, not a value
    headers: dict[str, str] = headers_field()  # noqa: RUF009 - an attrs.field(factory=dict)
    qos: int = attrs.field(default=0, validator=_qos, metadata=_key("q"), kw_only=True)
    retain: bool = attrs.field(default=False, validator=_bool, metadata=_key("r"), kw_only=True)


@attrs.frozen
class Subscribe(Message):
    """Subscribe to a pattern; deliveries name ``sid``. With ``queue``, subscribers of the
    same queue group share the messages (each goes to one of them)."""

    KIND: ClassVar[int] = 11
    mid: int = mid_field()
    sid: int = attrs.field(validator=_uint, metadata=_key("sid"), kw_only=True)
    pattern: str = attrs.field(validator=_pattern, metadata=_key("pat"), kw_only=True)
    queue: str | None = attrs.field(
        default=None, validator=_opt_short_str, metadata=_key("qg"), kw_only=True
    )


@attrs.frozen
class Unsubscribe(Message):
    """End the subscription ``sid``."""

    KIND: ClassVar[int] = 12
    mid: int = mid_field()
    sid: int = attrs.field(validator=_uint, metadata=_key("sid"), kw_only=True)


@attrs.frozen
class Deliver(Message):
    """A published message delivered to subscription ``sid`` and to each one in ``also``.

    Args:
      retained: True when this is a subject's retained message replayed on subscribe.
      also: more subscriptions of the receiving connection that the message is for (at
        most :data:`protocol.MAX_DELIVER_SIDS`): the receiver hands it to ``sid`` and to
        each of these, once each, as if it had come in a Deliver of its own (a sid it
        does not know is ignored, as ``sid`` is). A leader names every matching
        subscription of a connection in one Deliver, each once. Given as a list or tuple,
        or as an :class:`~protocol.Encoded` of a list (what a leader keeps, to encode it
        once); held as a tuple.
    """

    KIND: ClassVar[int] = 13
    mid: int = mid_field()
    sid: int = attrs.field(validator=_uint, metadata=_key("sid"), kw_only=True)
    subject: str = attrs.field(validator=_subject, metadata=_key("s"), kw_only=True)
    payload: Any = payload_field()  # noqa: RUF009 - an attrs.field() specifier, not a value
    headers: dict[str, str] = headers_field()  # noqa: RUF009 - an attrs.field(factory=dict)
    qos: int = attrs.field(default=0, validator=_qos, metadata=_key("q"), kw_only=True)
    retained: bool = attrs.field(default=False, validator=_bool, metadata=_key("r"), kw_only=True)
    also: tuple[int, ...] = attrs.field(
        default=(), converter=_sid_tuple, validator=_sids, metadata=_key("ss"), kw_only=True
    )


# ---------------------------------------------------------------------------------------
# Cache prewarming and large transfers (used by the "process jobs and files" issue)


@attrs.frozen
class CachePut(Message):
    """Prewarm worker caches: every worker whose pattern matches ``target`` stores the
    entries under ``cache_id`` (idempotently) and answers CacheAck.

    Args:
      entries: ``(name, bytes)`` pairs; large entries travel as Chunk transfers instead.
      sha256: optional hex digests by entry name, checked by the receiver.
    """

    KIND: ClassVar[int] = 20
    mid: int = mid_field()
    cache_id: str = attrs.field(validator=_id, metadata=_key("cache"), kw_only=True)
    target: str = attrs.field(validator=_pattern, metadata=_key("tgt"), kw_only=True)
    entries: tuple[tuple[str, bytes], ...] = attrs.field(
        default=(), converter=_entry_tuple, validator=_entries, metadata=_key("e"), kw_only=True
    )
    sha256: dict[str, str] = attrs.field(
        factory=dict, validator=_str_map, metadata=_key("sha"), kw_only=True
    )


@attrs.frozen
class CacheAck(Message):
    """A worker's answer to CachePut: per entry ``OK``, ``SKIPPED`` or ``FAILED``."""

    KIND: ClassVar[int] = 21
    mid: int = mid_field()
    cid: int | None = cid_field()
    cache_id: str = attrs.field(validator=_id, metadata=_key("cache"), kw_only=True)
    worker: str = attrs.field(default="", validator=_short_str, metadata=_key("w"), kw_only=True)
    statuses: dict[str, str] = attrs.field(
        factory=dict, validator=_str_map, metadata=_key("st"), kw_only=True
    )
    error: str | None = attrs.field(
        default=None, validator=_opt_str, metadata=_key("err"), kw_only=True
    )


@attrs.frozen
class Chunk(Message):
    """One piece of a large transfer; the last piece carries the whole's SHA-256."""

    KIND: ClassVar[int] = 22
    mid: int = mid_field()
    transfer_id: str = attrs.field(validator=_id, metadata=_key("x"), kw_only=True)
    index: int = attrs.field(validator=_uint, metadata=_key("n"), kw_only=True)
    data: bytes = attrs.field(default=b"", validator=_bytes, metadata=_key("d"), kw_only=True)
    last: bool = attrs.field(default=False, validator=_bool, metadata=_key("last"), kw_only=True)
    total_size: int | None = attrs.field(
        default=None, validator=_opt_uint, metadata=_key("size"), kw_only=True
    )
    sha256: str | None = attrs.field(
        default=None, validator=_opt_str, metadata=_key("sha"), kw_only=True
    )


#: Every message class by its wire tag. Tags 30-39 are reserved for DAG workflow messages.
MESSAGE_TYPES: dict[int, type[Message]] = {
    cls.KIND: cls
    for cls in (
        Hello,
        Welcome,
        Submit,
        Assign,
        Ack,
        Nack,
        Progress,
        Result,
        Credit,
        Publish,
        Subscribe,
        Unsubscribe,
        Deliver,
        Cancel,
        Ping,
        Pong,
        Error,
        Bye,
        CachePut,
        CacheAck,
        Chunk,
        Query,
    )
}
