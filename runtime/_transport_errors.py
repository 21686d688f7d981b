"""Errors of connections: closed, slow peer, message too large, handshake refused, and
the connect failures that retrying cannot cure (wrong protocol, TLS)."""

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
    """The server answered the Hello with an Error instead of a Welcome, or refused the
    connection before it (``busy``: over its connection limits; see :func:`runtime.serve`).

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


class WrongProtocol(ConnectionError):
    """What answered at the URL does not speak the protocol the URL's scheme names: a web
    server, a WebSocket listener reached with ``tcp://``, a plain listener reached with
    ``tls://`` or ``wss://``, a TCP listener reached with ``ws://``... An ``OSError`` (as
    every failure to connect), so that whoever retries connections retries this one too.

    Attributes:
      url: the URL connected to.
      answer: what came back, in words (``"HTTP/1.1 400 Bad Request"``...).
    """

    def __init__(self, url: str, answer: str, hint: str) -> None:
        super().__init__(f"{url}: {answer}; {hint}")
        self.url = url
        self.answer = answer


class TLSHandshakeFailed(ConnectionError):
    """The TLS handshake with the server failed: its certificate was not trusted, did not
    name the host, had expired... (``reason`` says which, in OpenSSL's words).

    Attributes:
      url: the URL connected to.
      reason: why, e.g. ``certificate verify failed: unable to get local issuer certificate``.
    """

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"TLS handshake with {url} failed: {reason}")
        self.url = url
        self.reason = reason
