"""The CBOR this protocol accepts, for message bodies and payloads alike.

Decoding refuses what could hurt the process: CBOR tags for shared references (cycles),
regular expressions, MIME messages and string references, maps keyed by anything but
hashable scalars (hash-collision attacks), a key repeated in one map (two readers could
take different values), nesting deeper than ``MAX_DEPTH``, and bignums of more than
``MAX_BIGNUM_SIZE`` bytes (Python could not print them).
"""

from __future__ import annotations

from typing import Any

from ._limits import MAX_BIGNUM_SIZE, MAX_DEPTH


def _refuse_tag(*_args: Any) -> None:
    raise ValueError("this CBOR tag is not accepted")


def _bignum(value: Any, *_args: Any) -> int:
    """Tag 2, an unsigned bignum: its magnitude as bytes, at most ``MAX_BIGNUM_SIZE``."""
    if type(value) is not bytes:
        raise ValueError(f"a bignum must be a byte string, got {type(value).__name__}")
    if len(value) > MAX_BIGNUM_SIZE:
        raise ValueError(
            f"a bignum of {len(value)} bytes exceeds the limit of {MAX_BIGNUM_SIZE} bytes"
        )
    return int.from_bytes(value, "big")


def _negative_bignum(value: Any, *args: Any) -> int:
    """Tag 3, a negative bignum: -1 - n."""
    return -1 - _bignum(value, *args)


# Tags 28/29: shared references (cyclic values); 35: regex; 36: MIME; 256/25: string refs.
# Tags 2/3, bignums: bounded in size.
SEMANTIC_DECODERS: dict[int, Any] = dict.fromkeys((25, 28, 29, 35, 36, 256), _refuse_tag)
SEMANTIC_DECODERS.update({2: _bignum, 3: _negative_bignum})
#: Keyword arguments of ``cbor2.CBORDecoder`` for one item (a body, or a payload).
DECODER_OPTIONS: dict[str, Any] = {
    "semantic_decoders": SEMANTIC_DECODERS,
    "strict_hashable_types": True,
    "allow_duplicate_keys": False,
    "max_depth": MAX_DEPTH,
}

#: Longest decoder message quoted in an error (MalformedFrame, InvalidPayload).
REASON_LIMIT = 160


def decode_error_reason(exc: Exception) -> str:
    """What cbor2's decoding error ``exc`` says, cut short: its message may quote the input
    (a duplicated key); for a tag refused by one of our decoders it says only "error
    decoding semantic tag 2", so the refusal's own reason is added."""
    reason = str(exc)
    cause = exc.__cause__
    if (
        type(cause) is ValueError
        and cause.args
        and type(cause.args[0]) is str
        and cause.args[0] not in reason
    ):
        reason = f"{reason}: {cause.args[0]}"
    if len(reason) > REASON_LIMIT:
        reason = reason[: REASON_LIMIT - 3] + "..."
    return reason
