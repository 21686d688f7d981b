"""The protocol's limits: how large, long, many and deep what a peer sends may be.

A peer is a boundary of trust: whatever one sends, the receiver must be able to hold it,
print it in an error, re-encode it (a leader forwards payloads) and answer it. So nothing in
a frame is unbounded. Each limit is checked where the value is read; breaking one raises a
:class:`protocol.ProtocolError` subclass naming the limit (``InvalidField``,
``InvalidSubject`` or ``MalformedFrame``), except for the free-text fields listed under
``MAX_REASON_SIZE``, which are cut instead (our own code builds them from peer input).

The frame limit itself (``DEFAULT_MAX_FRAME_SIZE``) lives in :mod:`protocol._framing`.
``docs/protocol.md`` lists every limit (a generated table, held to these names by a test).
"""

from __future__ import annotations

#: The smallest frame limit a peer may announce in ``Hello.max_frame`` or
#: ``Welcome.max_frame``. Every control message (Ping, Pong, Bye, Welcome, an Error with the
#: longest message, code and job id the limits below allow) fits in a frame of this size,
#: so a peer cannot make the other side unable to answer or to send heartbeats.
MIN_MAX_FRAME = 4096

#: Longest subject or pattern, in UTF-8 bytes (nats-server's default control line is 4 KiB).
MAX_SUBJECT_LENGTH = 4096
#: Most tokens in a subject or pattern (``a.b.c`` has 3).
MAX_SUBJECT_TOKENS = 256

#: Longest identifier or name, in characters: job ids, ``Hello.name`` and ``group``,
#: ``Subscribe.queue``, ``Welcome.node`` and ``session``, cache and transfer ids, header
#: names. A leader keeps these as dict keys and prints them.
MAX_NAME_LENGTH = 256
#: Longest ``Hello.token`` and header value, in characters (a JSON web token fits).
MAX_VALUE_LENGTH = 4096
#: Longest ``Error.code``, in characters (the codes of :class:`protocol.ErrorCode` are short).
MAX_CODE_LENGTH = 64
#: Most entries in a ``headers`` map.
MAX_HEADERS = 64
#: Most versions a Hello may offer.
MAX_VERSIONS = 64
#: Most patterns a worker's Hello may name.
MAX_PATTERNS = 4096
#: Most subscription ids one Deliver may name in ``also`` (besides its ``sid``): above the
#: leader's default subscription limit per connection (10,000), so that one Deliver names
#: every matching subscription of a connection; a leader that allows more sends several.
MAX_DELIVER_SIDS = 65_536

#: Longest ``Error.message``, ``Bye.reason``, ``Nack.reason`` and ``Cancel.reason``, in
#: UTF-8 bytes. A longer text is not refused: it is cut to this size, ending in ``...``
#: (these are words for logs, and our own side builds them from what a peer sent).
MAX_REASON_SIZE = 2048

#: Deepest nesting of containers in a body, the message's own map or array included (a
#: bundle's outer array is not counted); tags count as a level too. An encoded payload is
#: held to it on its own when it is decoded (see protocol._payload); one sent plain is
#: part of its body, so nests at most 63 deep.
MAX_DEPTH = 64
#: Largest bignum (CBOR tags 2 and 3), in bytes of magnitude: 8192 bits, about 2,466
#: decimal digits, so that any integer a peer sends can be printed (Python refuses ``str``
#: of an int over 4,300 digits) and compared cheaply.
MAX_BIGNUM_SIZE = 1024
#: Most messages in one bundle. A frame of tiny messages would otherwise decode to millions
#: of objects handled in one batch, starving the receiver's other connections.
MAX_BUNDLE_ITEMS = 4096
