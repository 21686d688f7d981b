"""Errors of connections: closed, slow peer, message too large, handshake refused."""

from __future__ import annotations

from protocol import ErrorCode


class ConnectionClosed(Exception):
    """The connection is closed (or closing) and no more messages will pass.

    Attributes:
      reason: what closed it, in words.
      code: the :class:`protocol.ErrorCode` when it was closed for an error (a protocol
        error in what the peer sent, a heartbeat timeout, an Error message from the peer or
        given to :meth:`Connection.aclose`); None otherwise.
      clean: True when the close was intended: the peer said Bye, or this side called
        :meth:`Connection.aclose`. ``async for`` over a connection ends quietly on a clean
        close and raises this exception otherwise (EOF without Bye, reset, errors).
    """

    def __init__(self, reason: str, *, code: str | None = None, clean: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code
        self.clean = clean

    def __repr__(self) -> str:
        return f"ConnectionClosed({self.reason!r}, code={self.code!r}, clean={self.clean})"


class SendBufferFull(Exception):
    """The outgoing buffer holds more than its limit: the peer does not read fast enough.

    Attributes:
      limit: the bound of the outgoing buffer, in bytes.
      code: :attr:`protocol.ErrorCode.SLOW_CONSUMER`, for an Error sent to the peer.
    """

    code = ErrorCode.SLOW_CONSUMER

    def __init__(self, limit: int) -> None:
        super().__init__(
            f"outgoing buffer over its limit of {limit} bytes: the peer is not reading fast enough"
        )
        self.limit = limit


class MessageTooLarge(ValueError):
    """A message to send encodes to a frame larger than the peer accepts.

    Attributes:
      size: the frame body's size in bytes.
      limit: the largest frame body the peer accepts.
    """

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"message encodes to {size} bytes, over the frame limit of {limit} bytes")
        self.size = size
        self.limit = limit


class HandshakeError(Exception):
    """The server answered the Hello with an Error instead of a Welcome.

    Attributes:
      code: the Error's :class:`protocol.ErrorCode` (``busy``, ``auth_failed``, ...).
      message: the Error's text.
      retry_after: seconds the server asks us to wait before retrying, if it said.
    """

    def __init__(self, code: str, message: str, retry_after: float | None = None) -> None:
        super().__init__(f"handshake refused ({code}): {message}")
        self.code = code
        self.message = message
        self.retry_after = retry_after
