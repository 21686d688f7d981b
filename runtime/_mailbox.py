"""Bounded mailboxes, the references that send to them, and the replies that asks wait on.

An actor handles one message at a time from its mailbox, a trio memory channel with a
fixed bound. Other tasks hold an :class:`ActorRef`: ``tell`` queues a message,
waiting for room when the mailbox is full (``tell_nowait`` raises :class:`MailboxFull`
instead); ``ask`` queues a request in an envelope with a correlation id and a reply slot,
and waits for the reply up to a timeout (:class:`AskTimeout`).

The mailbox belongs to the *place* an actor runs in, not to the actor instance: when a
supervisor restarts a child, the new instance reads the same mailbox, so references stay
valid and queued messages are kept. The mailbox closes only when the actor stops for good.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from typing import Any

import attrs
import trio

from ._errors import ActorStopped, AskTimeout, MailboxFull

#: Mailbox bound used when neither the actor class nor the caller sets one.
DEFAULT_MAILBOX_SIZE = 64
#: Seconds an ask waits for its reply unless told otherwise.
DEFAULT_ASK_TIMEOUT = 30.0


def check_mailbox_size(value: int) -> int:
    """Return ``value`` if it is a valid mailbox bound, else raise ``ValueError``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"mailbox_size must be an int >= 0, got {value!r}")
    return value


@attrs.define(eq=False)
class _Reply:
    """The one-shot slot an ask waits on; filled by the actor, read by the asker."""

    _event: trio.Event = attrs.field(factory=trio.Event)
    _value: Any = None
    _error: Exception | None = None
    _cause: BaseException | None = None

    @property
    def done(self) -> bool:
        return self._event.is_set()

    def succeed(self, value: Any) -> None:
        self._value = value
        self._event.set()

    def fail(self, error: Exception, cause: BaseException | None = None) -> None:
        self._error, self._cause = error, cause
        self._event.set()

    async def wait(self) -> None:
        await self._event.wait()

    def unwrap(self) -> Any:
        if self._error is not None:
            raise self._error from self._cause
        return self._value


@attrs.frozen
class _Envelope:
    message: Any
    correlation_id: int = 0
    reply: _Reply | None = None  # None for a tell


@attrs.frozen
class MailboxStatistics:
    """A snapshot of a mailbox, for metrics and tests.

    Attributes:
      name: the actor's name.
      queued: messages waiting in the mailbox (never more than ``bound``).
      bound: the mailbox capacity.
      senders_waiting: tasks blocked in ``tell``/``ask`` because the mailbox is full.
      dropped: messages (tells) still queued when the mailbox closed for good.
      closed: True once the actor has stopped for good.
    """

    name: str
    queued: int
    bound: int
    senders_waiting: int
    dropped: int
    closed: bool


@attrs.define(eq=False)
class _Mailbox:
    """A bounded memory channel with the translations to the runtime's typed errors."""

    name: str
    bound: int
    _send: trio.MemorySendChannel[_Envelope]
    _receive: trio.MemoryReceiveChannel[_Envelope]
    dropped: int = 0
    closed: bool = False
    _correlation_ids: Iterator[int] = attrs.field(factory=lambda: itertools.count(1))
    ref: ActorRef = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self.ref = ActorRef(self)

    @classmethod
    def open(cls, name: str, bound: int) -> _Mailbox:
        send, receive = trio.open_memory_channel[_Envelope](check_mailbox_size(bound))
        return cls(name, bound, send, receive)

    def next_correlation_id(self) -> int:
        return next(self._correlation_ids)

    def put_nowait(self, envelope: _Envelope) -> None:
        try:
            self._send.send_nowait(envelope)
        except trio.WouldBlock:
            raise MailboxFull(self.name, self.bound) from None
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            raise ActorStopped(self.name) from None

    async def put(self, envelope: _Envelope) -> None:
        try:
            await self._send.send(envelope)
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            raise ActorStopped(self.name) from None

    async def get(self) -> _Envelope | None:
        """The next envelope, or None once the mailbox is closed and empty."""
        try:
            return await self._receive.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            return None

    def close(self) -> None:
        """Close for good: wake blocked senders with ActorStopped, fail queued asks."""
        if self.closed:
            return
        self.closed = True
        self._send.close()
        while True:
            try:
                envelope = self._receive.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel):
                break
            if envelope.reply is not None:
                envelope.reply.fail(ActorStopped(self.name))
            else:
                self.dropped += 1
        self._receive.close()

    def statistics(self) -> MailboxStatistics:
        stats = self._send.statistics()
        return MailboxStatistics(
            name=self.name,
            queued=stats.current_buffer_used,
            bound=self.bound,
            senders_waiting=stats.tasks_waiting_send,
            dropped=self.dropped,
            closed=self.closed,
        )


@attrs.frozen(eq=False, repr=False)
class ActorRef:
    """A handle for sending messages to an actor; stays valid across restarts.

    References are made by the runtime (:meth:`ActorSystem.spawn`, ``Supervisor``), one per
    mailbox, so two references are equal exactly when they reach the same mailbox.

    A full mailbox holds the sender back (``tell``, ``ask``) or refuses at once
    (``tell_nowait``, ``ask(block=False)``) with :class:`MailboxFull`; the caller chooses
    per call. Once the actor has stopped for good every send raises :class:`ActorStopped`.
    While a supervised actor is being restarted its mailbox stays open: messages queue up
    to the bound and are handled by the new instance.
    """

    _mailbox: _Mailbox

    def __repr__(self) -> str:
        return f"<ActorRef {self.name!r}>"

    @property
    def name(self) -> str:
        """The actor's name, unique among the actors of its system or supervisor."""
        return self._mailbox.name

    @property
    def bound(self) -> int:
        """The mailbox capacity."""
        return self._mailbox.bound

    def statistics(self) -> MailboxStatistics:
        """Return a snapshot of the mailbox (queued messages, waiting senders, ...)."""
        return self._mailbox.statistics()

    def tell_nowait(self, message: Any) -> None:
        """Queue ``message`` if there is room, without waiting.

        Raises:
          MailboxFull: the mailbox holds ``bound`` messages; nothing was queued.
          ActorStopped: the actor has stopped for good.
        """
        self._mailbox.put_nowait(_Envelope(message))

    async def tell(self, message: Any) -> None:
        """Queue ``message``, waiting while the mailbox is full (backpressure).

        Raises:
          ActorStopped: the actor has stopped for good (also raised to a sender that was
            waiting for room when that happened).
        """
        await self._mailbox.put(_Envelope(message))

    async def ask(
        self,
        message: Any,
        *,
        timeout: float | None = DEFAULT_ASK_TIMEOUT,
        block: bool = True,
    ) -> Any:
        """Send ``message`` as a request and return the actor's reply.

        The reply is what the actor's ``handle`` returns for this message. The timeout
        covers both waiting for room in the mailbox and waiting for the reply. A request
        that timed out may still be handled later; its reply is then dropped. An actor that
        asks itself waits for its own timeout.

        Args:
          message: the request.
          timeout: seconds to wait for the reply; ``None`` waits for ever.
          block: if False, raise :class:`MailboxFull` at once instead of waiting for room.

        Raises:
          AskTimeout: no reply within ``timeout`` seconds.
          MailboxFull: ``block=False`` and the mailbox is full.
          ActorCrashed: the actor raised while handling the request (the actor's error is
            ``__cause__``; the error itself went on to the actor's supervisor).
          ActorStopped: the actor stopped for good, or was cancelled, before replying.
        """
        mailbox = self._mailbox
        reply = _Reply()
        envelope = _Envelope(message, mailbox.next_correlation_id(), reply)
        if not block:
            mailbox.put_nowait(envelope)
        timeout = math.inf if timeout is None else timeout
        with trio.move_on_after(timeout):
            if block:
                await mailbox.put(envelope)  # checkpoints
            if not reply.done:  # (waiting on a set Event would checkpoint again)
                await reply.wait()
        if not reply.done:
            raise AskTimeout(self.name, timeout, envelope.correlation_id)
        return reply.unwrap()
