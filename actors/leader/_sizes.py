"""How many bytes a message will take once the leader forwards it, cheaply.

The leader counts the jobs it queues in bytes as well as in number, and refuses at once
what it could not forward within a frame (``too_large``). Both need a message's size
before the message is encoded again for its receiver; :func:`payload_size` gives it, exact
for containers (the CBOR encoder runs in C), at no cost for the usual scalars.
"""

from __future__ import annotations

from typing import Any

import cbor2

from protocol import Encoded

#: Bytes a job is charged on top of its payload, subject and headers: the leader's own
#: record of it (its Python objects), so that many tiny jobs are not counted as free.
JOB_OVERHEAD = 256
#: Room kept between a submitted, published or returned message and the frame limit, for
#: the fields the leader adds when it forwards it (Assign's attempt and ack timeout, a
#: Result's cid, a Deliver's sid) and the envelope of a version 1 frame.
FORWARD_RESERVE = 1024
#: A message at most this large (as :func:`payload_size` counts it) needs no exact
#: check against the frame limit: it cannot come near it.
SURELY_FITS = 1 << 20

_dumps = cbor2.dumps


def payload_size(payload: Any) -> int:
    """The bytes ``payload`` takes encoded as CBOR (exact for containers; for a plain
    string, its length in characters, or in UTF-8 bytes when it is not ASCII).

    A payload CBOR cannot encode counts as infinitely large (it could not be forwarded).
    """
    kind = type(payload)
    if kind is Encoded:  # as it came from the wire (the leader's case): its bytes
        return len(payload.data) + 9
    if kind is str:
        return (
            len(payload) + 9 if payload.isascii() else len(payload.encode("utf-8", "replace")) + 9
        )
    if kind is bytes:
        return len(payload) + 9
    if payload is None or kind is int or kind is float or kind is bool:
        return 9
    try:
        return len(_dumps(payload))
    except Exception:  # (noqa: BLE001) anything cbor2 refuses: it could not be sent on
        return 1 << 62
