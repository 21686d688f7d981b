"""Hypothesis strategies for the wire protocol, in one place, with size caps.

Every strategy here builds *valid* values: a message drawn from :func:`messages` can always
be encoded, and decoding its frame gives back an equal message. Sizes are capped so that a
test of a few hundred examples stays well under a second or two.

- :data:`payloads`: recursive CBOR values (None, bool, ints including bignums, finite floats,
  text, bytes, lists, maps keyed by text), at most ``MAX_LEAVES`` leaves deep and wide.
- :data:`subjects`, :data:`patterns`: valid subjects and patterns (see ``protocol._subjects``).
- one strategy per message class (:data:`MESSAGE_STRATEGIES`) and :func:`messages`.
- :func:`chunked`: a byte string cut at arbitrary points.
"""

from __future__ import annotations

import itertools
from typing import Any

from hypothesis import strategies as st

import protocol
from protocol import (
    Ack,
    Assign,
    Bye,
    CacheAck,
    CachePut,
    Cancel,
    Chunk,
    Credit,
    Deliver,
    Error,
    ErrorCode,
    Hello,
    Nack,
    Ping,
    Pong,
    Progress,
    Publish,
    Result,
    Submit,
    Subscribe,
    Unsubscribe,
    Welcome,
)

#: Most leaves in one payload (the recursion depth is bounded by it too).
MAX_LEAVES = 12
#: Longest text / bytes drawn for a field or a payload leaf.
MAX_TEXT = 16


def _opt(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.none() | strategy


# ---------------------------------------------------------------------------------------
# Scalars and payloads

#: Any text CBOR can carry (UTF-8 encodable: no lone surrogates).
texts = st.text(st.characters(codec="utf-8"), max_size=MAX_TEXT)
non_empty_texts = st.text(st.characters(codec="utf-8"), min_size=1, max_size=MAX_TEXT)

#: Integers across every CBOR integer encoding: 1/2/4/8-byte heads, and bignums (tags 2, 3).
_BOUNDARIES = [0, 23, 24, 255, 256, 2**16 - 1, 2**16, 2**32 - 1, 2**32, 2**64 - 1, 2**64]
cbor_ints = st.one_of(
    st.integers(min_value=-1000, max_value=1000),
    st.sampled_from(_BOUNDARIES + [-1 - b for b in _BOUNDARIES]),
    st.integers(min_value=-(2**130), max_value=2**130),
)
#: Non-negative ints, as used for ids and counters (``mid``, ``cid``, ``sid`` ...): integer
#: fields hold at most 2**64 - 1 (payloads may hold bignums, fields may not).
uints = st.one_of(
    st.integers(min_value=0, max_value=2**32), st.sampled_from(_BOUNDARIES[:-1])
)
positive_ints = uints.map(lambda n: max(n, 1))

#: Finite floats (NaN would break ``==`` in round-trip checks; inf is not a payload value
#: anyone sends, though CBOR can carry it, so allow it).
cbor_floats = st.floats(allow_nan=False)

_leaves = st.one_of(
    st.none(),
    st.booleans(),
    cbor_ints,
    cbor_floats,
    texts,
    st.binary(max_size=MAX_TEXT),
)

#: Recursive CBOR values with text keys, capped in size and depth.
payloads: st.SearchStrategy[Any] = st.recursive(
    _leaves,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(texts, children, max_size=4),
    max_leaves=MAX_LEAVES,
)

headers = st.dictionaries(texts, texts, max_size=4)
str_maps = headers

#: Seconds (timeouts, delays): ints or finite floats >= 0.
seconds = st.one_of(
    st.integers(min_value=0, max_value=10**6),
    st.floats(min_value=0, max_value=1e9, allow_nan=False, allow_infinity=False),
)
fractions = st.floats(min_value=0.0, max_value=1.0)

# ---------------------------------------------------------------------------------------
# Subjects and patterns

#: One literal token: no dot, no whitespace or NUL, not a bare wildcard. Mostly short ASCII
#: (the common case), sometimes any Unicode (other whitespace, like U+2028, is allowed).
_token_chars = st.one_of(
    st.sampled_from("abcdefghijklmnopqrstuvwxyz0123456789-_*>$"),
    st.characters(codec="utf-8", exclude_characters=" \t\n\r\f\0."),
)
tokens = st.text(_token_chars, min_size=1, max_size=8).filter(lambda t: t not in ("*", ">"))

#: Valid subjects: one to six literal tokens joined by dots.
subjects = st.lists(tokens, min_size=1, max_size=6).map(".".join)


@st.composite
def _patterns(draw: st.DrawFn) -> str:
    parts = draw(st.lists(tokens | st.just("*"), min_size=1, max_size=6))
    if draw(st.booleans()):
        parts.append(">")
    return ".".join(parts)


#: Valid patterns: literal and ``*`` tokens, optionally ending in ``>``.
patterns = _patterns()

# ---------------------------------------------------------------------------------------
# One strategy per message class

mids = uints
cids = _opt(uints)
job_ids = non_empty_texts

hellos = st.builds(
    Hello,
    mid=mids,
    role=st.sampled_from(sorted(protocol.ROLES)),
    name=texts,
    versions=st.lists(st.integers(min_value=0, max_value=1000), max_size=4),
    patterns=st.lists(patterns, max_size=4),
    credit=uints,
    group=_opt(texts),
    token=_opt(texts),
    meta=st.dictionaries(texts, payloads, max_size=3),
)
welcomes = st.builds(
    Welcome,
    mid=mids,
    cid=cids,
    version=positive_ints,
    node=texts,
    session=texts,
    heartbeat=_opt(seconds),
    max_frame=_opt(positive_ints),
)
pings = st.builds(Ping, mid=mids)
pongs = st.builds(Pong, mid=mids, cid=cids)
byes = st.builds(Bye, mid=mids, reason=texts)
_codes = (
    st.sampled_from(
        sorted(v for k, v in vars(ErrorCode).items() if k.isupper() and isinstance(v, str))
    )
    | non_empty_texts
)
errors = st.builds(
    Error,
    mid=mids,
    cid=cids,
    code=_codes,
    message=texts,
    job_id=_opt(texts),
    retry_after=_opt(seconds),
)
submits = st.builds(
    Submit,
    mid=mids,
    job_id=job_ids,
    subject=subjects,
    payload=payloads,
    headers=headers,
    qos=st.sampled_from([0, 1]),
    timeout=_opt(seconds),
    max_attempts=_opt(positive_ints),
)
assigns = st.builds(
    Assign,
    mid=mids,
    job_id=job_ids,
    subject=subjects,
    payload=payloads,
    headers=headers,
    attempt=positive_ints,
    qos=st.sampled_from([0, 1]),
    ack_timeout=_opt(seconds),
)
acks = st.builds(Ack, mid=mids, cid=cids, job_id=_opt(texts))
nacks = st.builds(Nack, mid=mids, cid=cids, job_id=job_ids, delay=_opt(seconds), reason=texts)
progresses = st.builds(
    Progress, mid=mids, job_id=job_ids, fraction=_opt(fractions), note=_opt(texts)
)
results = st.builds(
    Result,
    mid=mids,
    cid=cids,
    job_id=job_ids,
    ok=st.booleans(),
    payload=payloads,
    error_type=_opt(texts),
    error_message=_opt(texts),
    attempts=positive_ints,
)
credits = st.builds(Credit, mid=mids, credit=uints)
cancels = st.builds(Cancel, mid=mids, job_id=job_ids, reason=texts)
publishes = st.builds(
    Publish,
    mid=mids,
    subject=subjects,
    payload=payloads,
    headers=headers,
    qos=st.sampled_from([0, 1]),
    retain=st.booleans(),
)
subscribes = st.builds(Subscribe, mid=mids, sid=uints, pattern=patterns, queue=_opt(texts))
unsubscribes = st.builds(Unsubscribe, mid=mids, sid=uints)
delivers = st.builds(
    Deliver,
    mid=mids,
    sid=uints,
    subject=subjects,
    payload=payloads,
    headers=headers,
    qos=st.sampled_from([0, 1]),
    retained=st.booleans(),
)
cache_puts = st.builds(
    CachePut,
    mid=mids,
    cache_id=non_empty_texts,
    target=patterns,
    entries=st.lists(st.tuples(texts, st.binary(max_size=64)), max_size=3),
    sha256=str_maps,
)
cache_acks = st.builds(
    CacheAck,
    mid=mids,
    cid=cids,
    cache_id=non_empty_texts,
    worker=texts,
    statuses=st.dictionaries(texts, st.sampled_from(["OK", "SKIPPED", "FAILED"]), max_size=4),
    error=_opt(texts),
)
chunks = st.builds(
    Chunk,
    mid=mids,
    transfer_id=non_empty_texts,
    index=uints,
    data=st.binary(max_size=256),
    last=st.booleans(),
    total_size=_opt(uints),
    sha256=_opt(texts),
)

#: The strategy for each message class; a test checks that it covers ``MESSAGE_TYPES``.
MESSAGE_STRATEGIES: dict[type, st.SearchStrategy[Any]] = {
    Hello: hellos,
    Welcome: welcomes,
    Ping: pings,
    Pong: pongs,
    Bye: byes,
    Error: errors,
    Submit: submits,
    Assign: assigns,
    Ack: acks,
    Nack: nacks,
    Progress: progresses,
    Result: results,
    Credit: credits,
    Cancel: cancels,
    Publish: publishes,
    Subscribe: subscribes,
    Unsubscribe: unsubscribes,
    Deliver: delivers,
    CachePut: cache_puts,
    CacheAck: cache_acks,
    Chunk: chunks,
}


def messages() -> st.SearchStrategy[Any]:
    """Any valid message, of any kind."""
    return st.one_of(*MESSAGE_STRATEGIES.values())


@st.composite
def chunked(draw: st.DrawFn, data: bytes, *, max_chunks: int | None = None) -> list[bytes]:
    """``data`` cut at arbitrary points: non-empty pieces that join back to ``data``.

    Args:
      data: the byte stream to cut.
      max_chunks: most pieces (default: as many as there are bytes).
    """
    if not data:
        return []
    limit = len(data) - 1 if max_chunks is None else min(len(data) - 1, max_chunks - 1)
    cuts = draw(
        st.lists(
            st.integers(min_value=1, max_value=max(1, len(data) - 1)),
            unique=True,
            max_size=limit,
        )
        if len(data) > 1
        else st.just([])
    )
    bounds = [0, *sorted(cuts), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]
