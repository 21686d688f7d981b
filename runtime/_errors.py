"""Errors of the actor runtime: mailboxes, asks and supervision.

Every error the actor machinery raises on its own account is an :class:`ActorError`, so
callers can tell "the actor system said no" apart from errors of their own code. Errors
raised *inside* an actor are never wrapped on their way to the supervisor; they keep their
class and traceback.
"""

from __future__ import annotations


class ActorError(Exception):
    """Base class of the errors raised by actors, references and supervisors."""


class MailboxFull(ActorError):
    """A message was refused because the actor's mailbox holds ``bound`` messages already.

    Raised by :meth:`ActorRef.tell_nowait` and by :meth:`ActorRef.ask` with ``block=False``.
    Nothing was queued: the caller still owns the message and may retry later.

    Attributes:
      name: the name of the actor whose mailbox is full.
      bound: the mailbox capacity.
    """

    def __init__(self, name: str, bound: int) -> None:
        super().__init__(f"mailbox of actor {name!r} is full ({bound} messages)")
        self.name = name
        self.bound = bound


class ActorStopped(ActorError):
    """The actor is stopped for good: its mailbox is closed and takes no more messages.

    Raised by ``tell``/``ask`` on a reference whose actor has ended (and will not be
    restarted), to senders that were blocked on a full mailbox when it closed, and to askers
    whose request was still queued or being handled when the actor was stopped or cancelled.

    Attributes:
      name: the name of the stopped actor.
    """

    def __init__(self, name: str) -> None:
        super().__init__(f"actor {name!r} is stopped")
        self.name = name


class ActorCrashed(ActorError):
    """The actor raised while handling this ask; the original error is ``__cause__``.

    The error itself goes on to the actor's supervisor (the actor crashes); the asker gets
    this error so that it does not wait for a reply that will never come.

    Attributes:
      name: the name of the actor that crashed.
    """

    def __init__(self, name: str) -> None:
        super().__init__(f"actor {name!r} crashed while handling the request")
        self.name = name


class AskTimeout(ActorError):
    """No reply to an ask arrived within its timeout.

    The request may still be handled later (it may already sit in the mailbox); its reply
    is then dropped.

    Attributes:
      name: the name of the asked actor.
      timeout: the timeout in seconds.
      correlation_id: the correlation id of the request (unique per reference's mailbox).
    """

    def __init__(self, name: str, timeout: float, correlation_id: int) -> None:
        super().__init__(
            f"actor {name!r} did not answer request #{correlation_id} within {timeout} s"
        )
        self.name = name
        self.timeout = timeout
        self.correlation_id = correlation_id


class SupervisorEscalation(ActorError):
    """A supervisor gave up: it stopped all its children and fails to its own parent.

    Raised when restarts exceed the supervisor's intensity (more than ``max_restarts``
    within ``within`` seconds), when a child exhausts its restart backoff, or when a child
    fails to start while the supervisor itself starts. The last child error is
    ``__cause__``, with its original traceback; a parent supervisor treats this error like
    any other child failure, so escalation climbs the tree.

    Attributes:
      supervisor: the name of the supervisor that gave up.
      child: the name of the child whose failure made it give up.
      reason: what limit was hit, in words.
    """

    def __init__(self, supervisor: str, child: str, reason: str) -> None:
        super().__init__(f"supervisor {supervisor!r} gave up on child {child!r}: {reason}")
        self.supervisor = supervisor
        self.child = child
        self.reason = reason
