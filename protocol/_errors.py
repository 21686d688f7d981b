"""Errors of the wire protocol, each with a stable code sent back in an Error message.

Whose fault it is shows in the class: a :class:`ProtocolError` is always about *received*
bytes (the remote peer misbehaved); misuse of the API by local code (building a message with a
wrongly typed field) raises the ordinary ``TypeError`` / ``ValueError`` instead.
"""

from __future__ import annotations

from typing import Any, ClassVar


class ErrorCode:
    """The error codes carried by :class:`protocol.Error` messages.

    Codes are short stable strings so that clients in any language can switch on them.
    The first group names protocol errors (the connection is closed after them); the
    second names answers of the application layer, which leave the connection open except
    for those listed in :data:`ErrorCode.CLOSING`.
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
    NOT_PERMITTED = "not_permitted"
    AUTH_FAILED = "auth_failed"
    NO_ROUTE = "no_route"  #: no worker subscribes to the subject (qos 0 only)
    DEAD_LETTER = "dead_letter"  #: the job exhausted its attempts
    TIMEOUT = "timeout"
    CANCELLED = "cancelled"
    SLOW_CONSUMER = "slow_consumer"
    SHUTTING_DOWN = "shutting_down"
    HEARTBEAT_TIMEOUT = "heartbeat_timeout"
    INTERNAL = "internal"

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
