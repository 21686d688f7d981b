"""Errors of the wire protocol, each with a stable code sent back in an Error message.

Whose fault it is shows in the class: a :class:`ProtocolError` is always about *received*
bytes (the remote peer misbehaved); misuse of the API by local code (building a message with a
wrongly typed field) raises the ordinary ``TypeError`` / ``ValueError`` instead.

Every value a message quotes may come from the peer: it is quoted with :func:`safe_repr`.
"""

from __future__ import annotations

import reprlib
from typing import Any, ClassVar

# ---------------------------------------------------------------------------------------
# Quoting received values in error messages


class _ShortRepr(reprlib.Repr):
    """reprlib, two levels deep and a few items wide, that never sorts (sorting the keys of
    a map of a million entries, as reprlib does, takes a second)."""

    def __init__(self) -> None:
        super().__init__()
        self.maxstring = self.maxother = self.maxlong = 40
        self.maxlist = self.maxtuple = self.maxdict = self.maxset = self.maxfrozenset = 3
        self.maxlevel = 2

    def repr_dict(self, x: dict[Any, Any], level: int) -> str:
        if not x:
            return "{}"
        if level <= 0:
            return "{...}"
        items = []
        for n, (key, value) in enumerate(x.items()):
            if n == self.maxdict:
                items.append("...")
                break
            items.append(f"{self.repr1(key, level - 1)}: {self.repr1(value, level - 1)}")
        return "{" + ", ".join(items) + "}"

    def repr_set(self, x: set[Any] | frozenset[Any], level: int) -> str:
        if not x:
            return f"{type(x).__name__}()"
        if level <= 0:
            return "{...}"
        items = []
        for n, item in enumerate(x):
            if n == self.maxset:
                items.append("...")
                break
            items.append(self.repr1(item, level - 1))
        return "{" + ", ".join(items) + "}"

    repr_frozenset = repr_set

    def repr_int(self, x: int, level: int) -> str:
        if x.bit_length() > 64:
            return f"<int of {x.bit_length()} bits>"
        return repr(x)


_SHORT_REPR = _ShortRepr()


def safe_repr(value: Any, limit: int = 64) -> str:
    """A short ``repr`` of ``value`` for an error message or a log line. Never raises.

    Values quoted in errors may come from a remote peer and be as large as a frame, so:

    - text longer than ``limit`` shows its first ``limit`` characters and its length,
      ``'aaaa'... (5002 characters)``;
    - an integer wider than 64 bits shows its width, ``<int of 33220 bits>`` (Python
      refuses ``str`` of an int over 4,300 digits, and a long one is slow to print);
    - containers show their first 3 items, 2 levels deep;
    - a value whose ``repr`` fails shows its type, ``<Decimal>``.

    Args:
      value: anything.
      limit: the most characters shown of a text; any other result is cut to ``limit``.

    Returns:
      At most about ``limit`` + 30 characters.
    """
    try:
        if isinstance(value, str):
            if len(value) <= limit:
                return str.__repr__(value)
            return f"{str.__repr__(value[:limit])}... ({len(value)} characters)"
        if type(value) is int and value.bit_length() > 64:
            return f"<int of {value.bit_length()} bits>"
        text = _SHORT_REPR.repr(value)
    except Exception:
        return f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: max(limit - 3, 0)] + "..."


class ErrorCode:
    """The error codes carried by :class:`protocol.Error` messages (and, for ``cancelled``,
    by a failed :class:`protocol.Result`'s ``error_code``).

    Codes are short stable strings so that clients in any language can switch on them.
    The first group names protocol errors (the connection is closed after them); the
    second names answers of the application layer, which leave the connection open except
    for those listed in :data:`ErrorCode.CLOSING`. The codes in :data:`ErrorCode.RESERVED`
    are defined for peers of later versions and sent by no part of this implementation.
    """

    # Protocol errors: the sender broke the protocol; the connection is closed.
    PROTOCOL_ERROR = "protocol_error"
    FRAME_TOO_LARGE = "frame_too_large"
    BAD_FRAME = "bad_frame"
    UNKNOWN_KIND = "unknown_kind"
    BAD_FIELD = "bad_field"
    BAD_SUBJECT = "bad_subject"
    PROTOCOL_VIOLATION = "protocol_violation"
    UNSUPPORTED_VERSION = "unsupported_version"

    # Application answers: the request was understood but not served.
    BUSY = "busy"  #: a queue or mailbox is full; ``retry_after`` says when to try again
    #: not done: the sender's identity may not (a subject its permissions deny, a job of
    #: another identity), a ``$`` subject, a kind reserved for the sender's role, or a
    #: Subscribe past the connection's subscription limit
    NOT_PERMITTED = "not_permitted"
    AUTH_FAILED = "auth_failed"
    NO_ROUTE = "no_route"  #: no worker serves the job's subject (nor came within the grace)
    DEAD_LETTER = "dead_letter"  #: reserved: the job exhausted its attempts
    TIMEOUT = "timeout"
    #: a client cancelled the job: the ``error_code`` of its failed Result, set by the leader
    CANCELLED = "cancelled"
    SLOW_CONSUMER = "slow_consumer"
    SHUTTING_DOWN = "shutting_down"  #: reserved: the node takes no new work
    HEARTBEAT_TIMEOUT = "heartbeat_timeout"
    INTERNAL = "internal"
    #: a submit, publish or result whose forwarded message would be over a frame limit
    TOO_LARGE = "too_large"
    #: a job id submitted again with another subject or payload than the job it names
    CONFLICT = "conflict"
    #: a Query names a job the leader does not know (or no longer remembers)
    NOT_FOUND = "not_found"

    #: Codes after which the sender closes the connection: every protocol error, plus the
    #: answers that end the session (failed authentication, a peer too slow to keep up, a
    #: peer silent past its heartbeat). Any other code answers one request; the session
    #: stays open.
    CLOSING: ClassVar[frozenset[str]] = frozenset(
        {
            PROTOCOL_ERROR,
            FRAME_TOO_LARGE,
            BAD_FRAME,
            UNKNOWN_KIND,
            BAD_FIELD,
            BAD_SUBJECT,
            PROTOCOL_VIOLATION,
            UNSUPPORTED_VERSION,
            AUTH_FAILED,
            SLOW_CONSUMER,
            HEARTBEAT_TIMEOUT,
        }
    )

    #: Codes no part of this implementation sends (reserved for later versions; a
    #: receiver still knows them): ``protocol_error``, the code of the base class
    #: :class:`ProtocolError` (every error raised is a subclass with its own code);
    #: ``dead_letter`` (a dead-lettered job is answered with a failed Result);
    #: ``shutting_down`` (a node that stops closes its connections instead).
    RESERVED: ClassVar[frozenset[str]] = frozenset({PROTOCOL_ERROR, DEAD_LETTER, SHUTTING_DOWN})

    @staticmethod
    def closes_connection(code: str) -> bool:
        """Whether an Error with ``code`` ends the session (see :data:`ErrorCode.CLOSING`).

        Unknown codes (from a newer peer) do not: a peer that means to close also closes
        the transport.
        """
        return code in ErrorCode.CLOSING


class ProtocolError(Exception):
    """Received bytes or messages that break the protocol.

    Every failure to decode or to accept what a peer sent is raised as this class or a
    subclass, whatever the input. ``code`` is the :class:`ErrorCode` to send back to the
    peer in an :class:`protocol.Error` message before closing the connection.

    Attributes:
      message: what was wrong, in words that name the problem.
      code: a stable :class:`ErrorCode` string.
      messages: the complete messages decoded from the same chunk *before* the bad one
        (set by :class:`protocol.FrameDecoder`); the caller should still process them,
        so that nothing already accepted is lost.
    """

    code: ClassVar[str] = ErrorCode.PROTOCOL_ERROR

    def __init__(self, message: str, *, messages: list[Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.messages: list[Any] = messages if messages is not None else []

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r})"


class FrameTooLarge(ProtocolError):
    """A frame header announced (or decompressed to) more bytes than the limit allows."""

    code = ErrorCode.FRAME_TOO_LARGE


class MalformedFrame(ProtocolError):
    """A frame body is not one well-formed CBOR item, or its header flags are unknown."""

    code = ErrorCode.BAD_FRAME


class UnknownMessage(ProtocolError):
    """A frame holds a message kind this protocol version does not define."""

    code = ErrorCode.UNKNOWN_KIND


class InvalidField(ProtocolError):
    """A message field is missing, of the wrong type or out of range."""

    code = ErrorCode.BAD_FIELD


class InvalidSubject(ProtocolError, ValueError):
    """A subject or pattern breaks the subject rules (empty token, whitespace, ...).

    It is also a ``ValueError``, so that local code building a message with a bad subject
    gets the ordinary exception for a bad argument.
    """

    code = ErrorCode.BAD_SUBJECT


class StateViolation(ProtocolError):
    """A message arrived that is not allowed in the session's current state or role."""

    code = ErrorCode.PROTOCOL_VIOLATION


class UnsupportedVersion(ProtocolError):
    """The peer offered no protocol version that this side speaks."""

    code = ErrorCode.UNSUPPORTED_VERSION
