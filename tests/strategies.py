"""Hypothesis strategies for the wire protocol, in one place, with size caps.

Every strategy here builds *valid* values: a message drawn from :func:`messages` can always
be encoded, and decoding its frame gives back an equal message. Sizes are capped so that a
test of a few hundred examples stays well under a second or two.

- :data:`payloads`: recursive CBOR values (None, bool, ints including bignums, finite floats,
  text, bytes, lists, maps keyed by text), at most ``MAX_LEAVES`` leaves deep and wide.
- :data:`odd_values`, :data:`tagged_values`: values of every type (and CBOR tags) for a
  field that expects one of them.
- :data:`subjects`, :data:`patterns`: valid subjects and patterns (see ``protocol._subjects``).
- one strategy per message class (:data:`MESSAGE_STRATEGIES`) and :func:`messages`.
- :func:`chunked`: a byte string cut at arbitrary points.
- :func:`wire_value`, :func:`with_encoded_payload`, :func:`with_decoded_payload`: payloads
  as they travel, a byte string holding their CBOR encoding (see ``protocol._payload``).
- :data:`hostile_values` and :func:`hostile_frames`: *well-formed* CBOR that a careless
  receiver would choke on (huge and negative ints, NaN, deep nesting, long texts, many
  tokens, tags), put in the fields of otherwise valid messages; :class:`RawCBOR` and
  :func:`cbor_body` to build bodies that cbor2 cannot write (nesting 100,000 deep).
"""

from __future__ import annotations

import itertools
import math
import zlib
from typing import Any

import attrs
import cbor2
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
from protocol._payload import ENCODED_KEY, payload_wire

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
uints = st.one_of(st.integers(min_value=0, max_value=2**32), st.sampled_from(_BOUNDARIES[:-1]))
positive_ints = uints.map(lambda n: max(n, 1))
#: Frame limits a peer may announce: at least ``protocol.MIN_MAX_FRAME``.
frame_limits = uints.map(lambda n: max(n, protocol.MIN_MAX_FRAME))

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


def _nested_lists(depth: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(depth):
        value = [value]
    return value


#: Values of every CBOR type, each right for some field and wrong for others: what a
#: decoder meets in place of a field's value (bad subjects, bignums, nesting past the depth
#: limit, ``undefined``). Each survives ``cbor2.loads(cbor2.dumps(value))``.
odd_values: st.SearchStrategy[Any] = st.one_of(
    payloads,
    st.sampled_from(
        [
            True, False, None, -1, 0, 1, 2, 2**64, -(2**70), 2**2000, -(2**2000),
            1.5, -0.5, math.nan, math.inf, -math.inf,
            "", "x", "worker", "a..b", ".a", "a.", "a.*", "a.>", "a.>.b", "*", ">", "a b",
            "x\x00", "\t",
            b"", b"x", [], ["a"], [["a", b"b"]], [1, "2"], {}, {"k": 1}, {"k": "v"}, {1: "v"},
        ]
    ),
    st.integers(min_value=50, max_value=120).map(_nested_lists),
    st.just(cbor2.undefined),
)  # fmt: skip

#: CBOR tags, ones cbor2 knows (dates, bignums, decimals, sets ...) and one it does not,
#: around payloads: for a decoder fed the bytes (``cbor2.loads`` itself refuses many).
tagged_values: st.SearchStrategy[Any] = st.builds(
    cbor2.CBORTag,
    st.sampled_from(
        [0, 1, 2, 3, 4, 5, 25, 28, 29, 30, 35, 36, 37, 256, 258, 260, 261, 55799, 999999]
    ),
    payloads,
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
    max_frame=_opt(frame_limits),
    policy=st.sampled_from(sorted(protocol.RoutingPolicy)),
    mode=st.sampled_from(sorted(protocol.GroupMode)),
)
welcomes = st.builds(
    Welcome,
    mid=mids,
    cid=cids,
    version=positive_ints,
    node=texts,
    session=texts,
    heartbeat=_opt(seconds),
    max_frame=_opt(frame_limits),
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
    wait_for_worker=st.booleans(),
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
    deadline=_opt(seconds),
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
    final=st.booleans(),
    traceback=_opt(texts),
)
credits = st.builds(Credit, mid=mids, credit=uints)
cancels = st.builds(Cancel, mid=mids, job_id=job_ids, reason=texts, abandon=st.booleans())
queries = st.builds(
    protocol.Query,
    mid=mids,
    what=st.sampled_from(protocol._fields.QUERIES),
    job_id=_opt(job_ids),
    wait=st.booleans(),
)
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
    protocol.Query: queries,
}


def messages() -> st.SearchStrategy[Any]:
    """Any valid message, of any kind."""
    return st.one_of(*MESSAGE_STRATEGIES.values())


# ---------------------------------------------------------------------------------------
# Payloads as they travel (see protocol._payload): a byte string holding their encoding


def wire_key(field: Any) -> str:
    """The key under which ``to_wire`` writes the attrs ``field``: for a payload the key of
    its encoded form (``e``; its own key ``p`` holds a payload sent plain)."""
    if field.metadata.get("payload"):
        return ENCODED_KEY
    return field.metadata["key"]


def wire_value(field: Any, value: Any) -> Any:
    """What the attrs ``field`` holding ``value`` puts on the wire (under :func:`wire_key`
    in a map, in its place in a bundle): for a payload the bytes of its CBOR encoding
    (None for no payload), for any other field the value itself."""
    if field.metadata.get("payload"):
        return payload_wire(value)
    return value


def with_encoded_payload(message: Any) -> Any:
    """``message`` as the low-level decoders (``from_wire``, ``from_array``, ``decode_body``,
    a ``FrameDecoder(decode_payloads=False)``) give it back: its payload an ``Encoded``."""
    payload = getattr(message, "payload", None)
    if payload is None:
        return message
    return attrs.evolve(message, payload=protocol.Encoded.of(payload))


def with_decoded_payload(message: Any) -> Any:
    """``message`` with an ``Encoded`` payload decoded (what ``decode_payloads=True`` does)."""
    payload = getattr(message, "payload", None)
    if type(payload) is not protocol.Encoded:
        return message
    return attrs.evolve(message, payload=protocol.decode_payload(payload))


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


# ---------------------------------------------------------------------------------------
# Hostile input: well-formed frames whose fields hold what a careless receiver chokes on


class RawCBOR:
    """Bytes that :func:`cbor_body` splices in as they are: one CBOR item (or a broken
    one) that cbor2 would not write, such as arrays nested 100,000 deep."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data

    def __repr__(self) -> str:
        return f"RawCBOR({self.data[:16]!r}{'...' if len(self.data) > 16 else ''}, {len(self.data)} bytes)"


def _head(major: int, count: int) -> bytes:
    if count < 24:
        return bytes((major << 5 | count,))
    if count < 0x100:
        return bytes((major << 5 | 24, count))
    if count < 0x10000:
        return bytes((major << 5 | 25,)) + count.to_bytes(2, "big")
    return bytes((major << 5 | 26,)) + count.to_bytes(4, "big")


def cbor_body(value: Any) -> bytes:
    """The CBOR of ``value``, with every :class:`RawCBOR` in its maps and arrays spliced in."""
    if type(value) is RawCBOR:
        return value.data
    if type(value) is dict:
        return _head(5, len(value)) + b"".join(
            cbor_body(k) + cbor_body(v) for k, v in value.items()
        )
    if type(value) in (list, tuple):
        return _head(4, len(value)) + b"".join(cbor_body(v) for v in value)
    return cbor2.dumps(value)


def frame_of(body: bytes, *, compress: bool = False) -> bytes:
    """A whole frame around ``body`` (compressed with zlib when asked)."""
    flags = 0
    if compress:
        body, flags = zlib.compress(body), protocol.FLAG_COMPRESSED
    return len(body).to_bytes(4, "big") + bytes((flags,)) + body


def _nested(prefix: bytes) -> st.SearchStrategy[RawCBOR]:
    """``prefix`` (an array, map or tag head) repeated up to 100,000 times around a 0."""
    depths = st.one_of(st.integers(1, 200), st.sampled_from([62, 63, 64, 65, 100_000]))
    return depths.map(lambda n: RawCBOR(prefix * n + b"\x00"))


#: Integers at and beyond every limit of a field and of a bignum (MAX_BIGNUM_SIZE).
HOSTILE_INTS = [
    -1,
    0,
    1,
    2,
    2**53,
    2**63 - 1,
    2**63,
    -(2**63),
    -(2**63) - 1,
    2**64 - 1,
    2**64,
    -(2**64) - 1,
    2**1000,
    -(2**1000),
    10**400,
    2**8191,
    2**8192,
    -(2**8192),
    10**5000,
    10**10_000 - 1,
]
hostile_ints = st.one_of(
    st.sampled_from(HOSTILE_INTS), st.integers(min_value=-(2**70), max_value=2**70)
)

#: Texts at and beyond the length limits, and subjects at and beyond the token limits.
hostile_texts = st.one_of(
    st.builds(
        lambda n, ch: ch * n,
        st.sampled_from([64, 65, 256, 257, 2048, 4096, 4097, 5000, 100_000]),
        st.sampled_from(["x", "é", "🚀", "."]),
    ),
    st.builds(
        lambda n, token: ".".join([token] * n),
        st.sampled_from([255, 256, 257, 2000, 100_000]),
        st.sampled_from(["a", "*", ">", "ab"]),
    ),
    st.sampled_from(
        ["", "a..b", "a.>.b", "*", ">", "a b", "\x00", "worker", "sticky", "broadcast", "busy"]
    ),
    texts,
)

#: Fixed hostile values of every sort, for tests that try each one.
HOSTILE_SAMPLES: list[Any] = [
    *HOSTILE_INTS,
    None,
    True,
    False,
    math.nan,
    math.inf,
    -math.inf,
    -0.0,
    1e308,
    5e-324,
    "",
    "a..b",
    "a.>.b",
    "*",
    ">",
    "a b",
    "\x00",
    "sticky",
    "broadcast",
    "x" * 257,
    "é" * 4097,
    "🚀" * 5000,
    ".".join(["a"] * 257),
    ".".join(["*"] * 100_000),
    b"",
    b"x" * 5000,
    [],
    {},
    [None],
    {"": None},
    [[[[[["deep"]]]]]],
    list(range(65)),
    {f"k{i}": "v" for i in range(65)},
    [10**5000],
    {"k": 10**5000},
    cbor2.undefined,
    cbor2.CBORSimpleValue(0),
    cbor2.CBORSimpleValue(255),
    cbor2.CBORTag(99, 1),
    cbor2.CBORTag(2**64 - 1, [1]),
    cbor2.CBORTag(55799, 1),
    cbor2.CBORTag(1, 10**400),
    cbor2.CBORTag(4, [2**63 - 1, 1]),
    cbor2.CBORTag(5, [-(2**63), 1]),
    cbor2.CBORTag(30, [1, 0]),
    cbor2.CBORTag(258, ["a", "a"]),
    RawCBOR(b"\xf9\x7e\x00"),  # a half-precision NaN
    RawCBOR(b"\x9f\x01\x02\xff"),  # an indefinite-length array
    RawCBOR(b"\x7f\x61a\x61b\xff"),  # an indefinite-length text
    RawCBOR(b"\x62\xc3\x28"),  # invalid UTF-8
    RawCBOR(b"\xa2\x61a\x01\x61a\x02"),  # a key twice
    RawCBOR(b"\xa1\x01\x02"),  # an int key
    RawCBOR(b"\xd8\x1c\x80"),  # a shared-reference tag
    RawCBOR(b"\x9a\x00\x0f\x42\x40"),  # an array "of a million items", cut short
    *(
        RawCBOR(head * depth + b"\x00")
        for head in (b"\x81", b"\xa1\x61k", b"\xd8\x63")
        for depth in (62, 63, 64, 100_000)
    ),
]

#: Well-formed (and a few malformed) CBOR values that a careless receiver chokes on.
hostile_values: st.SearchStrategy[Any] = st.one_of(
    # (by index: hypothesis hashes what it samples, and a CBORTag of a list refuses)
    st.sampled_from(range(len(HOSTILE_SAMPLES))).map(HOSTILE_SAMPLES.__getitem__),
    hostile_ints,
    hostile_texts,
    st.floats(),  # NaN and the infinities included
    payloads,
    _nested(b"\x81"),  # arrays
    _nested(b"\xa1\x61k"),  # maps
    _nested(b"\xd8\x63"),  # tag 99 around tag 99 ...
    st.integers(60, 70).map(lambda n: {f"k{i}": "v" for i in range(n)}),  # about MAX_HEADERS
    st.integers(60, 70).map(lambda n: list(range(n))),  # about MAX_VERSIONS
    st.builds(
        cbor2.CBORTag,
        st.sampled_from([0, 1, 2, 3, 4, 5, 30, 37, 99, 258, 260, 261, 55799, 2**64 - 1]),
        st.one_of(payloads, hostile_ints),
    ),
)


#: A hostile encoded payload (key ``e``, or a bundled payload's place): mostly a hostile
#: value encoded, as a payload travels (its decoder then meets it), or arbitrary bytes;
#: sometimes a value itself (not a byte string: refused whatever it holds).
hostile_payloads: st.SearchStrategy[Any] = st.one_of(
    hostile_values.map(cbor_body),
    hostile_values.map(cbor_body),
    st.binary(max_size=32),
    hostile_values,
)


@st.composite
def hostile_frames(draw: st.DrawFn) -> bytes:
    """A frame of one to three otherwise valid messages (a map, or a bundle of arrays)
    whose fields are partly replaced by :data:`hostile_values` (a payload by
    :data:`hostile_payloads`), in a frame that may be compressed."""
    bundled = draw(st.booleans())
    items = []
    for _ in range(draw(st.integers(1, 3)) if bundled else 1):
        message = draw(messages())
        fields = type(message).__attrs_attrs__  # type: ignore[attr-defined]
        if bundled:
            # Every field written (not only up to the last one off its default), so that
            # any may be hit.
            wire: Any = [message.KIND, *(wire_value(f, getattr(message, f.name)) for f in fields)]
            for _ in range(draw(st.integers(0, 3))):
                index = draw(st.integers(1, len(fields)))
                payload = fields[index - 1].metadata.get("payload")
                wire[index] = draw(hostile_payloads if payload else hostile_values)
        else:
            wire = dict(protocol.to_wire(message))
            for _ in range(draw(st.integers(0, 3))):
                field = draw(st.sampled_from(fields))
                if not field.metadata.get("payload"):
                    wire[field.metadata["key"]] = draw(hostile_values)
                elif draw(st.booleans()):
                    wire[ENCODED_KEY] = draw(hostile_payloads)
                else:
                    # Sent plain (key ``p``), its encoded form mostly dropped (not both).
                    wire[field.metadata["key"]] = draw(hostile_values)
                    if draw(st.integers(0, 3)):
                        wire.pop(ENCODED_KEY, None)
            if draw(st.integers(0, 4)) == 0:
                wire[draw(texts)] = draw(hostile_values)  # an unknown key
        items.append(wire)
    body = cbor_body(items if bundled else items[0])
    return frame_of(body, compress=draw(st.integers(0, 9)) == 0)
