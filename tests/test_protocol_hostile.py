"""Well-formed hostile input: frames that parse as CBOR but hold what a careless receiver
chokes on. Whatever a peer sends, the protocol layer either hands out messages that can be
re-encoded, printed and answered, or raises a ProtocolError with a short message; never
RecursionError, MemoryError, ValueError, OverflowError or any other exception.

Sections: typed routing options in Hello; quoting peer values (``safe_repr``); the floor of
a peer's frame limit and the texts cut to fit it; bounded names; bounded subjects and an
index that cannot recurse; bounded decoding; and a property over hostile frames of every
kind.
"""

from __future__ import annotations

import ast
import inspect
import math
import sys
from pathlib import Path
from typing import Any

import attrs
import cbor2
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import protocol
from protocol import (
    BUNDLE_OVERHEAD,
    MAX_BUNDLE_ITEMS,
    MAX_CODE_LENGTH,
    MAX_HEADERS,
    MAX_NAME_LENGTH,
    MAX_PATTERNS,
    MAX_REASON_SIZE,
    MAX_SUBJECT_TOKENS,
    MAX_VALUE_LENGTH,
    MAX_VERSIONS,
    MESSAGE_TYPES,
    MIN_MAX_FRAME,
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
    FrameDecoder,
    GroupMode,
    Hello,
    InvalidField,
    InvalidSubject,
    MalformedFrame,
    Message,
    Nack,
    Ping,
    Pong,
    Progress,
    ProtocolError,
    Publish,
    Result,
    RoutingPolicy,
    SubjectIndex,
    Submit,
    Subscribe,
    Unsubscribe,
    Welcome,
    decode_body,
    encode,
    encode_item,
    safe_repr,
    to_wire,
)
from tests import strategies as sts
from tests.strategies import RawCBOR, cbor_body, frame_of

ROOT = Path(__file__).resolve().parent.parent

#: The fewest fields that make a valid message of each kind.
MINIMAL: dict[type[Message], dict[str, Any]] = {
    Hello: {"mid": 1, "role": "worker"},
    Welcome: {"mid": 1, "version": 1},
    Ping: {"mid": 1},
    Pong: {"mid": 1},
    Bye: {"mid": 1},
    Error: {"mid": 1, "code": "busy"},
    Submit: {"mid": 1, "job_id": "j", "subject": "a.b"},
    Assign: {"mid": 1, "job_id": "j", "subject": "a.b"},
    Ack: {"mid": 1},
    Nack: {"mid": 1, "job_id": "j"},
    Progress: {"mid": 1, "job_id": "j"},
    Result: {"mid": 1, "job_id": "j"},
    Credit: {"mid": 1, "credit": 1},
    Cancel: {"mid": 1, "job_id": "j"},
    Publish: {"mid": 1, "subject": "a.b"},
    Subscribe: {"mid": 1, "sid": 1, "pattern": "a.*"},
    Unsubscribe: {"mid": 1, "sid": 1},
    Deliver: {"mid": 1, "sid": 1, "subject": "a.b"},
    CachePut: {"mid": 1, "cache_id": "c", "target": "a.*"},
    CacheAck: {"mid": 1, "cache_id": "c"},
    Chunk: {"mid": 1, "transfer_id": "x", "index": 0},
}
if hasattr(protocol, "Query"):  # (a kind being added as this is written)
    MINIMAL[protocol.Query] = {"mid": 1, "what": "stats"}
#: The kinds tried below: those of MINIMAL (a test checks that it covers every kind).
KINDS = list(MINIMAL)

#: Longest message of a ProtocolError raised for any input (it goes back to the peer in an
#: Error, and into logs).
MESSAGE_LIMIT = 400


def test_minimal_messages_cover_every_kind() -> None:
    assert set(MINIMAL) == set(MESSAGE_TYPES.values())
    for cls, fields in MINIMAL.items():
        cls(**fields)


def check_survives(message: Message) -> None:
    """What a leader does with a received message must work: re-encode it as a map and
    as a bundle item (it forwards payloads), decode that again (its payload kept encoded
    as a leader keeps it; decoded too, if it came decoded), and print it."""
    frame = encode(message)
    item = encode_item(message)
    bundle = protocol.bundle_frames([item], 2**31)
    kept = type(getattr(message, "payload", None)) is protocol.Encoded
    modes = [False] if kept else [False, True]
    for decode_payloads in modes:
        for sent in (frame, bundle[0]):
            decoder = FrameDecoder(max_frame_size=2**31, decode_payloads=decode_payloads)
            again = decoder.feed(sent)
            assert [type(m) for m in again] == [type(message)]
            if not decode_payloads and hasattr(message, "payload"):
                # Kept encoded, a payload is the bytes it was sent as (forwarded as they are).
                original = message.payload  # type: ignore[attr-defined]
                payload = again[0].payload  # type: ignore[attr-defined]
                assert payload == (None if original is None else protocol.Encoded.of(original))
    assert len(safe_repr(message)) < 200
    repr(message)


def check_refusal(exc: ProtocolError) -> None:
    """A refusal names the problem briefly, and can be answered with an Error that fits
    in the smallest frame limit."""
    assert exc.message and len(exc.message) <= MESSAGE_LIMIT, exc.message
    answer = Error(mid=2**64 - 1, cid=2**64 - 1, code=exc.code, message=exc.message)
    assert len(encode(answer)) <= MIN_MAX_FRAME
    repr(exc)
    str(exc)


def feed(data: bytes) -> list[Message] | ProtocolError:
    """Messages, or the ProtocolError raised, for ``data`` fed to a fresh decoder; any
    other exception fails the test."""
    try:
        return FrameDecoder().feed(data)
    except ProtocolError as exc:
        return exc


# ---------------------------------------------------------------------------------------
# 1. Hello's routing options are typed fields


def test_hello_policy_and_mode_default_to_round_robin() -> None:
    hello = Hello(mid=0, role="worker")
    assert hello.policy == "round_robin" and hello.mode == "round_robin"
    assert "pol" not in to_wire(hello) and "mode" not in to_wire(hello)


@pytest.mark.parametrize("policy", list(RoutingPolicy))
@pytest.mark.parametrize("mode", list(GroupMode))
def test_hello_policy_and_mode_round_trip(policy: RoutingPolicy, mode: GroupMode) -> None:
    hello = Hello(mid=0, role="worker", policy=policy, mode=mode)
    # Enum members become plain strings: what the wire carries and a decoder gives.
    assert type(hello.policy) is str and type(hello.mode) is str
    assert hello.policy == policy and hello.mode == mode
    assert Hello(mid=0, role="worker", policy=policy.value, mode=mode.value) == hello
    assert Hello.checked(mid=0, role="worker", policy=policy, mode=mode) == hello
    assert protocol.decode(encode(hello)) == hello
    assert protocol.message_of(protocol.to_array(hello)) == hello
    wire = to_wire(hello)
    assert wire.get("pol", "round_robin") == policy and wire.get("mode", "round_robin") == mode


def test_routing_enums_compare_equal_to_their_strings() -> None:
    assert RoutingPolicy.STICKY == "sticky" and "least_loaded" in set(RoutingPolicy)
    assert GroupMode.BROADCAST == "broadcast"
    assert {p.value for p in RoutingPolicy} == {"round_robin", "least_loaded", "sticky"}
    assert {m.value for m in GroupMode} == {"round_robin", "broadcast"}


@pytest.mark.parametrize(
    ("key", "value", "shown"),
    [
        ("pol", "random", "'random'"),
        ("pol", 10**400, "<int of 1329 bits>"),
        ("pol", [1, 2], "[1, 2]"),
        ("pol", {"a": 1}, "{'a': 1}"),
        ("pol", None, "None"),
        ("pol", "x" * 100_000, "(100000 characters)"),
        ("mode", "fanout", "'fanout'"),
        ("mode", 2**64, "<int of 65 bits>"),
        ("mode", "sticky", "'sticky'"),
    ],
)
def test_hello_refuses_unknown_policy_or_mode_with_a_clear_message(
    key: str, value: Any, shown: str
) -> None:
    name, allowed = (
        ("policy", "round_robin, least_loaded, sticky")
        if key == "pol"
        else ("mode", "round_robin, broadcast")
    )
    with pytest.raises(InvalidField) as info:
        decode_body(cbor2.dumps({"t": Hello.KIND, "i": 0, "role": "worker", key: value}))
    assert info.value.message.startswith(f"bad Hello: Hello.{name} must be one of {allowed}, got ")
    assert shown in info.value.message
    check_refusal(info.value)
    with pytest.raises(ValueError, match=f"Hello.{name} must be one of {allowed}"):
        Hello(mid=0, role="worker", **{name: value})


def test_policy_in_meta_is_just_meta() -> None:
    # The old place of the routing options: now free-form facts, never read as options.
    hello = decode_body(
        cbor2.dumps({"t": Hello.KIND, "i": 0, "role": "worker", "meta": {"policy": 10**400}})
    )
    assert hello.policy == "round_robin" and hello.meta["policy"] == 10**400
    check_survives(hello)


# ---------------------------------------------------------------------------------------
# 2. Quoting what a peer sent


class _BadRepr:
    def __repr__(self) -> str:
        raise RuntimeError("no")


@pytest.mark.parametrize(
    "value",
    [
        10**5000,
        -(10**5000),
        [10**5000] * 10,
        {"k": 10**5000},
        "x" * 10**6,
        b"x" * 10**6,
        {f"k{i}": i for i in range(100_000)},
        set(range(100_000)),
        frozenset(),
        _BadRepr(),
        [_BadRepr()],
        cbor2.CBORTag(2**64 - 1, [10**5000]),
        math.nan,
    ],
    ids=safe_repr,
)
def test_safe_repr_never_raises_and_stays_short(value: Any) -> None:
    text = safe_repr(value)
    assert isinstance(text, str) and 0 < len(text) <= 64 + 30


def test_safe_repr_of_deep_structures() -> None:
    deep: Any = 0
    for _ in range(100_000):
        deep = [deep]
    assert safe_repr(deep) == "[[[...]]]"


def test_safe_repr_formats() -> None:
    assert safe_repr("abc") == "'abc'"
    assert safe_repr("a" * 100) == repr("a" * 64) + "... (100 characters)"
    assert safe_repr(2**64) == "<int of 65 bits>"
    assert safe_repr(2**64 - 1) == "18446744073709551615"
    assert safe_repr(_BadRepr()).startswith("<_BadRepr")
    assert safe_repr([1, 2, 3, 4, 5]) == "[1, 2, 3, ...]"


#: Python values that no careless message-building survives (no CBOR needed to pass them
#: to from_wire, which sees only what a decoder gives, so these are a superset).
_NASTY = [
    10**5000,
    -(10**5000),
    "x" * 10**6,
    [10**5000],
    {"x" * 10**5: 10**5000},
    [[[[["deep"]]]]],
    math.nan,
    -math.inf,
    _BadRepr(),
    [_BadRepr()],
    {"k": _BadRepr()},
]


@pytest.mark.parametrize("cls", KINDS, ids=lambda c: c.__name__)
def test_every_field_quotes_any_bad_value_safely(cls: type[Message]) -> None:
    """Every validator, and every error message built from a peer's value: either the
    value is accepted, or a short ProtocolError (from_wire) or TypeError/ValueError
    (constructors) says why; nothing else escapes."""
    base = to_wire(cls(**MINIMAL[cls]))
    for field in attrs.fields(cls):
        for value in _NASTY:
            wire = {**base, field.metadata["key"]: value}
            try:
                protocol.from_wire(wire)
            except ProtocolError as exc:
                check_refusal(exc)
            for build in (cls, cls.checked):
                refusal = ""  # (none: the value is accepted)
                try:
                    build(**{**MINIMAL[cls], field.name: value})
                except (TypeError, ValueError) as exc:
                    refusal = str(exc)
                assert len(refusal) <= MESSAGE_LIMIT, (cls, field.name, refusal[:500])


def test_version_refusal_quotes_the_offer_briefly() -> None:
    with pytest.raises(protocol.UnsupportedVersion) as info:
        protocol.negotiate_version(range(1000, 1000 + MAX_VERSIONS))
    check_refusal(info.value)
    assert "1000, 1001, 1002, ..." in info.value.message


# ---------------------------------------------------------------------------------------
# 3. A peer's frame limit has a floor; the texts of control messages are cut to fit it


@pytest.mark.parametrize("cls", [Hello, Welcome])
@pytest.mark.parametrize("limit", [1, 100, MIN_MAX_FRAME - 1])
def test_a_frame_limit_below_the_floor_is_refused(cls: type[Message], limit: int) -> None:
    wire = {**to_wire(cls(**MINIMAL[cls])), "mf": limit}
    with pytest.raises(
        InvalidField, match=rf"{cls.__name__}.max_frame must be at least 4096 bytes"
    ):
        decode_body(cbor2.dumps(wire))
    with pytest.raises(ValueError, match="must be at least 4096 bytes"):
        cls(**MINIMAL[cls], max_frame=limit)
    assert cls(**MINIMAL[cls], max_frame=MIN_MAX_FRAME).max_frame == MIN_MAX_FRAME


def _widest_text(size: int) -> str:
    return "🚀" * (size // 4)  # 4 bytes of UTF-8 each


def _largest_control_messages() -> list[Message]:
    top = 2**64 - 1
    name = _widest_text(4 * MAX_NAME_LENGTH)
    return [
        Ping(mid=top),
        Pong(mid=top, cid=top),
        Bye(mid=top, reason="🚀" * 10**5),
        Welcome(
            mid=top,
            cid=top,
            version=top,
            node=name,
            session=name,
            heartbeat=1e300,
            max_frame=top,
        ),
        Error(
            mid=top,
            cid=top,
            code=_widest_text(4 * MAX_CODE_LENGTH),
            message="🚀" * 10**5,
            job_id=name,
            retry_after=1e300,
        ),
        Error(mid=top, code="x", message="é" * 10**5 + "\x00"),
    ]


@pytest.mark.parametrize("message", _largest_control_messages(), ids=lambda m: type(m).__name__)
def test_every_control_message_fits_the_smallest_frame_limit(message: Message) -> None:
    assert len(protocol.encode_body(message)) <= MIN_MAX_FRAME
    assert len(encode_item(message)) + BUNDLE_OVERHEAD <= MIN_MAX_FRAME
    (frame,) = protocol.bundle_frames([encode_item(message)], MIN_MAX_FRAME)
    assert FrameDecoder(max_frame_size=MIN_MAX_FRAME).feed(frame) == [message]


@pytest.mark.parametrize(
    ("cls", "field"),
    [(Error, "message"), (Bye, "reason"), (Nack, "reason"), (Cancel, "reason")],
)
def test_reasons_are_cut_not_refused(cls: type[Message], field: str) -> None:
    long_text = "é" * 5000
    message = cls(**MINIMAL[cls], **{field: long_text})
    text = getattr(message, field)
    assert text.endswith("...") and long_text.startswith(text[:-3])
    assert len(text.encode()) <= MAX_REASON_SIZE
    # The same when built unchecked, checked, or received.
    assert cls.unchecked(**MINIMAL[cls], **{field: long_text}) == message
    assert cls.checked(**MINIMAL[cls], **{field: long_text}) == message
    key = attrs.fields_dict(cls)[field].metadata["key"]
    received = decode_body(cbor2.dumps({**to_wire(cls(**MINIMAL[cls])), key: long_text}))
    assert received == message
    short = cls(**MINIMAL[cls], **{field: "é" * (MAX_REASON_SIZE // 2)})
    assert getattr(short, field) == "é" * (MAX_REASON_SIZE // 2)  # exactly the limit: kept
    with pytest.raises(TypeError):
        cls(**MINIMAL[cls], **{field: 10**5000})


@given(st.text(st.characters(codec="utf-8"), min_size=MAX_REASON_SIZE // 4 - 2, max_size=3000))
def test_cut_texts_stay_within_the_limit_and_whole_characters(text: str) -> None:
    message = Error(mid=1, code="x", message=text).message
    data = message.encode("utf-8")
    assert len(data) <= MAX_REASON_SIZE
    if len(text.encode("utf-8")) <= MAX_REASON_SIZE:
        assert message == text
    else:
        assert message.endswith("...") and text.startswith(message[:-3])


def test_an_error_from_any_protocol_error_fits() -> None:
    # The refusal of a frame of any size fits in an Error under the floor.
    frame = frame_of(cbor_body({"t": Submit.KIND, "i": 1, "j": "j", "s": "a." * 2000 + "."}))
    (error,) = [feed(frame)]
    assert isinstance(error, InvalidSubject)
    check_refusal(error)


# ---------------------------------------------------------------------------------------
# 4. Names, ids, headers and lists are bounded


_LONG_NAME = "n" * (MAX_NAME_LENGTH + 1)


@pytest.mark.parametrize(
    ("cls", "field", "at_limit", "over"),
    [
        (Submit, "job_id", "j" * MAX_NAME_LENGTH, _LONG_NAME),
        (Assign, "job_id", "j" * MAX_NAME_LENGTH, _LONG_NAME),
        (Result, "job_id", "j" * MAX_NAME_LENGTH, _LONG_NAME),
        (Nack, "job_id", "j" * MAX_NAME_LENGTH, _LONG_NAME),
        (Progress, "job_id", "j" * MAX_NAME_LENGTH, _LONG_NAME),
        (Cancel, "job_id", "j" * MAX_NAME_LENGTH, _LONG_NAME),
        (Ack, "job_id", "j" * MAX_NAME_LENGTH, _LONG_NAME),
        (Error, "job_id", "j" * MAX_NAME_LENGTH, _LONG_NAME),
        (Error, "code", "c" * MAX_CODE_LENGTH, "c" * (MAX_CODE_LENGTH + 1)),
        (Hello, "name", "n" * MAX_NAME_LENGTH, _LONG_NAME),
        (Hello, "group", "g" * MAX_NAME_LENGTH, _LONG_NAME),
        (Hello, "token", "t" * MAX_VALUE_LENGTH, "t" * (MAX_VALUE_LENGTH + 1)),
        (Welcome, "node", "n" * MAX_NAME_LENGTH, _LONG_NAME),
        (Welcome, "session", "s" * MAX_NAME_LENGTH, _LONG_NAME),
        (Subscribe, "queue", "q" * MAX_NAME_LENGTH, _LONG_NAME),
        (CachePut, "cache_id", "c" * MAX_NAME_LENGTH, _LONG_NAME),
        (CacheAck, "cache_id", "c" * MAX_NAME_LENGTH, _LONG_NAME),
        (CacheAck, "worker", "w" * MAX_NAME_LENGTH, _LONG_NAME),
        (Chunk, "transfer_id", "x" * MAX_NAME_LENGTH, _LONG_NAME),
    ],
)
def test_names_and_ids_are_bounded(
    cls: type[Message], field: str, at_limit: str, over: str
) -> None:
    assert getattr(cls(**{**MINIMAL[cls], field: at_limit}), field) == at_limit
    key = attrs.fields_dict(cls)[field].metadata["key"]
    wire = {**to_wire(cls(**MINIMAL[cls])), key: over}
    with pytest.raises(
        InvalidField,
        match=rf"{cls.__name__}.{field} must be at most \d+ characters long, got {len(over)}",
    ):
        decode_body(cbor2.dumps(wire))
    with pytest.raises(ValueError, match="characters long"):
        cls(**{**MINIMAL[cls], field: over})


@pytest.mark.parametrize(
    ("headers", "problem"),
    [
        ({f"k{i}": "v" for i in range(MAX_HEADERS + 1)}, "must hold at most 64 entries, got 65"),
        ({_LONG_NAME: "v"}, "names must be at most 256 characters long"),
        ({"k": "v" * (MAX_VALUE_LENGTH + 1)}, "values must be at most 4096 characters long"),
    ],
)
@pytest.mark.parametrize("cls", [Submit, Assign, Publish, Deliver])
def test_headers_are_bounded(cls: type[Message], headers: dict, problem: str) -> None:
    wire = {**to_wire(cls(**MINIMAL[cls])), "h": headers}
    with pytest.raises(InvalidField, match=problem) as info:
        decode_body(cbor2.dumps(wire))
    check_refusal(info.value)
    with pytest.raises(ValueError, match=problem):
        cls(**MINIMAL[cls], headers=headers)
    most = {f"{i:0256d}": "v" * MAX_VALUE_LENGTH for i in range(MAX_HEADERS)}
    assert cls(**MINIMAL[cls], headers=most).headers == most


def test_hello_lists_are_bounded() -> None:
    hello = {"t": Hello.KIND, "i": 0, "role": "worker"}
    with pytest.raises(
        InvalidField, match=r"Hello\.versions must hold at most 64 versions, got 65"
    ):
        decode_body(cbor2.dumps({**hello, "v": list(range(MAX_VERSIONS + 1))}))
    with pytest.raises(
        InvalidField, match=r"Hello\.patterns must hold at most 4096 patterns, got 4097"
    ):
        decode_body(cbor2.dumps({**hello, "pats": ["a"] * (MAX_PATTERNS + 1)}))
    assert len(Hello(mid=0, role="worker", patterns=["a"] * MAX_PATTERNS).patterns) == MAX_PATTERNS


# ---------------------------------------------------------------------------------------
# 5. Subjects are bounded; matching cannot recurse


def test_a_subject_of_100000_tokens_is_refused_with_a_clear_error() -> None:
    subject = ".".join(["a"] * 100_000)
    result = feed(frame_of(cbor_body({"t": Submit.KIND, "i": 1, "j": "j", "s": subject})))
    assert isinstance(result, InvalidSubject)
    assert result.message.endswith(": 199999 characters, longer than the limit of 4096 bytes")
    check_refusal(result)
    # Under the length limit, the token limit: 257 one-character tokens.
    subject = ".".join(["a"] * (MAX_SUBJECT_TOKENS + 1))
    result = feed(frame_of(cbor_body({"t": Publish.KIND, "i": 1, "s": subject})))
    assert isinstance(result, InvalidSubject)
    assert result.message.endswith(": 257 tokens, more than the limit of 256")


def test_a_pattern_of_many_wildcards_is_refused_with_a_clear_error() -> None:
    for count, problem in [
        (100_000, "199999 characters, longer than the limit of 4096 bytes"),
        (MAX_SUBJECT_TOKENS + 1, "257 tokens, more than the limit of 256"),
    ]:
        pattern = ".".join(["*"] * count)
        for wire in (
            {"t": Subscribe.KIND, "i": 1, "sid": 1, "pat": pattern},
            {"t": Hello.KIND, "i": 0, "role": "worker", "pats": ["ok.>", pattern]},
            {"t": CachePut.KIND, "i": 1, "cache": "c", "tgt": pattern},
        ):
            result = feed(frame_of(cbor_body(wire)))
            assert isinstance(result, InvalidSubject), result
            assert result.message.endswith(problem)
            check_refusal(result)
        with pytest.raises(InvalidSubject, match=problem):
            SubjectIndex().add(pattern, "x")
        assert SubjectIndex().match(pattern.replace("*", "a")) == ()


def _deep_star_index() -> SubjectIndex:
    """Patterns that branch at every level (a ``*`` and a literal child everywhere), as
    deep as a pattern may be."""
    index = SubjectIndex(cache_capacity=0)
    depth = MAX_SUBJECT_TOKENS
    for star_at in range(depth):
        tokens = ["a"] * depth
        tokens[star_at] = "*"
        index.add(".".join(tokens), star_at)
        if star_at < depth - 1:
            index.add(".".join([*tokens[: star_at + 1], ">"]), ("rest", star_at))
    index.add(".".join(["*"] * depth), "stars")
    index.add(".".join(["*"] * (depth - 1) + [">"]), "stars>")
    return index


def test_many_deep_star_patterns_match_long_subjects() -> None:
    index = _deep_star_index()
    subject = ".".join(["a"] * MAX_SUBJECT_TOKENS)
    found = index.match(subject)
    # Each of the 256 "a...*...a" patterns, the 255 "a...*.>" ones, "*.*...*" and "*...*.>".
    assert len(found) == 2 * MAX_SUBJECT_TOKENS + 1
    assert "stars" in found and "stars>" in found
    for subject in (".".join(["b"] * MAX_SUBJECT_TOKENS), ".".join(["a"] * 200 + ["b"] * 56)):
        index.match(subject)  # finishes; the work is bounded by the trie's size
    # Each match walks each trie node at most once: repeating it stays cheap.
    for _ in range(20):
        assert len(index.match(".".join(["a"] * MAX_SUBJECT_TOKENS))) == len(found)


def test_matching_uses_no_recursion() -> None:
    index = _deep_star_index()
    subject = ".".join(["a"] * MAX_SUBJECT_TOKENS)
    expected = index.match(subject)
    limit = sys.getrecursionlimit()
    # Room for this test's own frames and a few calls, far less than 256 recursive ones.
    sys.setrecursionlimit(len(inspect.stack(0)) + 40)
    try:
        assert index.match(subject) == expected
    finally:
        sys.setrecursionlimit(limit)


def _self_calls(path: Path) -> list[str]:
    """Functions of ``path`` that call themselves by name (``f(...)``, ``self.f(...)``)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        for call in ast.walk(node):
            if not isinstance(call, ast.Call):
                continue
            func = call.func
            if (isinstance(func, ast.Name) and func.id == node.name) or (
                isinstance(func, ast.Attribute)
                and func.attr == node.name
                and isinstance(func.value, ast.Name)
                and func.value.id in ("self", "cls")
            ):
                found.append(f"{path.name}:{node.name}")
    return found


def test_the_protocol_layer_has_no_recursive_function() -> None:
    # Recursion over what a peer sent (tokens, nesting) is bounded by Python's stack, not
    # by us: the protocol layer walks with loops and explicit stacks instead.
    found = [
        name for path in sorted((ROOT / "protocol").glob("*.py")) for name in _self_calls(path)
    ]
    assert found == []


def _check_the_scan(n: int) -> int:  # a recursive function the scan must find
    return n if n < 1 else _check_the_scan(n - 1)


def test_the_recursion_scan_would_notice() -> None:
    assert _check_the_scan(3) == 0
    assert _self_calls(Path(__file__)) == ["test_protocol_hostile.py:_check_the_scan"]


# ---------------------------------------------------------------------------------------
# 6. What the decoder accepts is bounded in size, count and depth


def _submit(payload: Any) -> bytes:
    """A Submit frame whose payload is ``payload``, encoded as a payload travels: under key
    ``e``, a byte string holding its CBOR (a :class:`RawCBOR` spliced in as it is)."""
    data = cbor_body(payload)
    return frame_of(cbor_body({"t": Submit.KIND, "i": 1, "j": "j", "s": "a.b", "e": data}))


def _submit_raw(value: Any) -> bytes:
    """A Submit frame whose payload ``value`` is sent plain (key ``p``), in the body itself."""
    return frame_of(cbor_body({"t": Submit.KIND, "i": 1, "j": "j", "s": "a.b", "p": value}))


def _kept(frame: bytes) -> Message:
    """The one message of ``frame``, its payload kept encoded (a leader's decoder)."""
    (message,) = FrameDecoder(decode_payloads=False).feed(frame)
    return message


@pytest.mark.parametrize(
    "prefix",
    [b"\x81", b"\xa1\x61k", b"\xd8\x63", b"\x9f", b"\xbf\x61k"],
    ids=["array", "map", "tag", "indefinite-array", "indefinite-map"],
)
def test_a_payload_nested_100000_deep_is_refused(prefix: bytes) -> None:
    deep = RawCBOR(prefix * 100_000 + b"\x00")
    # In a payload's bytes: refused when decoded, that payload only.
    result = feed(_submit(deep))
    assert isinstance(result, protocol.InvalidPayload), result
    assert "depth" in result.message
    check_refusal(result)
    kept = _kept(_submit(deep))
    assert kept.payload == protocol.Encoded(deep.data)
    with pytest.raises(protocol.InvalidPayload, match="depth"):
        protocol.decode_payload(kept.payload)
    check_survives(kept)
    # In the body itself (a payload sent plain, or under an unknown key): the frame is.
    for frame in (
        _submit_raw(deep),
        frame_of(cbor_body({"t": Submit.KIND, "i": 1, "j": "j", "s": "a.b", "x": deep})),
    ):
        for decoder in (FrameDecoder(), FrameDecoder(decode_payloads=False)):
            with pytest.raises(MalformedFrame, match="depth") as info:
                decoder.feed(frame)
            check_refusal(info.value)


def _nested(depth: int) -> Any:
    value: Any = 0
    for _ in range(depth):
        value = [value]
    return value


def test_a_payload_is_forwarded_byte_for_byte_whatever_its_depth() -> None:
    # A payload's depth is its own (MAX_DEPTH levels in its bytes, the message around it
    # does not count), and only its receiver decodes it: a leader keeps it encoded and
    # forwards the same bytes, in a map or in a bundle, however deep it is.
    deepest = _nested(protocol.MAX_DEPTH)
    too_deep = _nested(protocol.MAX_DEPTH + 1)
    for value in (deepest, too_deep):
        data = cbor2.dumps(value)
        submit = _kept(_submit(value))
        assert submit.payload == protocol.Encoded(data)
        assign = Assign.unchecked(mid=1, job_id="j", subject="a.b", payload=submit.payload)
        (frame,) = protocol.bundle_frames([encode_item(assign)], 2**20)
        for forwarded in (frame, encode(assign)):
            again = protocol.decode(forwarded, decode_payloads=False)
            assert again == assign
            assert again.payload.data == data  # the very bytes the client sent
            assert encode(again) == encode(assign)
    # The receiver at the end decodes it: the deepest payload is accepted ...
    frame = encode(Assign(mid=1, job_id="j", subject="a.b", payload=deepest))
    (assign,) = FrameDecoder().feed(frame)
    assert assign.payload == deepest
    assert protocol.decode_payload(protocol.Encoded(cbor2.dumps(deepest))) == deepest
    # ... one level more is refused, by decode_payload, or in the frame being decoded.
    with pytest.raises(protocol.InvalidPayload, match=r"depth \(64\)"):
        protocol.decode_payload(protocol.Encoded(cbor2.dumps(too_deep)))
    for frame in (
        encode(Assign(mid=1, job_id="j", subject="a.b", payload=too_deep)),
        frame_of(cbor_body([[Assign.KIND, 1, "j", "a.b", cbor2.dumps(too_deep)]])),
    ):
        result = feed(frame)
        assert isinstance(result, protocol.InvalidPayload), result
        check_refusal(result)
    # In the body the old rule stands: 64 levels, the message's own map included.
    assert isinstance(feed(_submit_raw(_nested(protocol.MAX_DEPTH))), MalformedFrame)


def test_a_map_of_a_million_tiny_keys_is_accepted_and_re_encodes() -> None:
    payload = {f"{i:x}": 0 for i in range(1_000_000)}
    frame = _submit(payload)
    (message,) = FrameDecoder().feed(frame)
    assert len(message.payload) == 1_000_000
    check_survives(message)
    # Kept encoded, it is one byte string: forwarded as it came.
    kept = _kept(frame)
    assert encode(kept) == frame
    check_survives(kept)


@pytest.mark.parametrize("item", [b"\x80", b"\x82\x0f\x01"], ids=["empty items", "pings"])
def test_a_bundle_of_a_million_items_is_refused(item: bytes) -> None:
    body = b"\x9a" + (1_000_000).to_bytes(4, "big") + item * 1_000_000
    result = feed(frame_of(body))
    assert isinstance(result, InvalidField), result
    assert result.message == (
        f"a bundle of 1000000 messages exceeds the limit of {MAX_BUNDLE_ITEMS} messages"
    )
    assert result.messages == []


def test_an_int_of_10000_digits_as_mid_is_refused() -> None:
    result = feed(frame_of(cbor2.dumps({"t": Ping.KIND, "i": 10**9999})))
    assert isinstance(result, MalformedFrame)
    assert result.message.endswith("a bignum of 4152 bytes exceeds the limit of 1024 bytes")
    check_refusal(result)
    # In a payload too: an int nobody could print. Refused when the payload is decoded
    # (not by a leader that keeps it encoded); in the body itself, with the frame.
    result = feed(_submit([1, 10**9999]))
    assert isinstance(result, protocol.InvalidPayload), result
    assert result.message.endswith("a bignum of 4152 bytes exceeds the limit of 1024 bytes")
    check_refusal(result)
    with pytest.raises(protocol.InvalidPayload, match="bignum of 4152 bytes"):
        protocol.decode_payload(_kept(_submit([1, 10**9999])).payload)
    assert isinstance(feed(_submit_raw([1, 10**9999])), MalformedFrame)


def test_the_largest_bignum_is_accepted_and_printable() -> None:
    big = 2 ** (8 * protocol.MAX_BIGNUM_SIZE) - 1
    (message,) = FrameDecoder().feed(_submit([big, -big - 1]))
    assert message.payload == [big, -big - 1]
    str(message.payload[0])
    check_survives(message)
    # One byte more is refused.
    result = feed(_submit([big + 1]))
    assert isinstance(result, protocol.InvalidPayload), result
    assert "bignum of 1025 bytes" in result.message


@pytest.mark.parametrize(
    "value",
    [
        cbor2.CBORTag(99, 1),
        cbor2.CBORTag(2, b"\x01"),  # a bignum 1 (an int, but wrapped: still fine)
        cbor2.CBORTag(55799, 1),  # self-described CBOR
        cbor2.CBORTag(1, 0),  # a datetime
        cbor2.CBORTag(4, [-2, 12345]),  # a decimal
        cbor2.CBORTag(5, [-(2**63), 1]),  # a bigfloat, 2**-(2**63)
        cbor2.CBORTag(30, [1, 3]),  # a rational
        cbor2.CBORTag(37, b"\x00" * 16),  # a UUID
        cbor2.CBORTag(258, ["a", "b"]),  # a set
        cbor2.CBORTag(260, b"\x7f\x00\x00\x01"),  # an IP address
        cbor2.CBORTag(2**64 - 1, [1, 2]),
        cbor2.CBORSimpleValue(99),
        cbor2.undefined,
    ],
    ids=safe_repr,
)
def test_tagged_values_in_payloads_re_encode_and_in_fields_are_refused(value: Any) -> None:
    for frame in (_submit(value), _submit_raw(value)):  # encoded, and sent plain
        result = feed(frame)
        if isinstance(result, ProtocolError):
            check_refusal(result)
        else:
            check_survives(result[0])
    for key in ("i", "j", "s", "h", "q", "to", "ma"):
        wire = {"t": Submit.KIND, "i": 1, "j": "j", "s": "a.b", key: value}
        result = feed(frame_of(cbor_body(wire)))
        if isinstance(result, ProtocolError):
            check_refusal(result)
        else:  # only an int in disguise (tags 2 and 55799 around 1) is a valid field value
            assert value in (cbor2.CBORTag(2, b"\x01"), cbor2.CBORTag(55799, 1))
            assert key in ("i", "q", "ma", "to")


#: Every int or number field, with values out of its range or of the wrong kind.
_NUMBER_VALUES = [-1, -(2**63), -(2**63) - 1, 2**64, -(2**64) - 1, 2**1000, 10**400, 2**8191]
_SECONDS_VALUES = [-1, -0.5, math.nan, math.inf, -math.inf, 10**400, -(2**1000)]


def _number_fields() -> list[Any]:
    cases = []
    for cls in KINDS:
        for field in attrs.fields(cls):
            name = getattr(field.validator, "__name__", "")
            values = None
            if name == "_opt_seconds":
                values = _SECONDS_VALUES
            elif name == "_opt_delay":
                values = [*_SECONDS_VALUES, 366 * 86400.0 + 1]
            elif name == "_opt_fraction":
                values = [-0.1, 1.5, math.nan, math.inf, 10**400]
            elif name in (
                "_uint",
                "_opt_uint",
                "_pos_int",
                "_opt_pos_int",
                "_opt_frame_limit",
                "_qos",
            ):
                extra = [2, math.nan] if name == "_qos" else [math.nan, 1.0, True]
                values = _NUMBER_VALUES + extra
            elif name == "_versions":
                values = [[v] for v in _NUMBER_VALUES[2:]] + [[math.nan]]
            if values is not None:
                cases.append(
                    pytest.param(cls, field.name, values, id=f"{cls.__name__}.{field.name}")
                )
    return cases


def _full_array(message: Message, /, **changes: Any) -> list[Any]:
    """``message`` as a bundled array with every field written, some of them changed."""
    fields = attrs.fields(type(message))
    return [message.KIND, *(changes.get(f.name, getattr(message, f.name)) for f in fields)]


@pytest.mark.parametrize(("cls", "field", "values"), _number_fields())
def test_number_fields_refuse_out_of_range_values(
    cls: type[Message], field: str, values: list
) -> None:
    key = attrs.fields_dict(cls)[field].metadata["key"]
    minimal = cls(**MINIMAL[cls])
    base = to_wire(minimal)
    for value in values:
        for frame in (
            frame_of(cbor_body({**base, key: value})),
            frame_of(cbor_body([_full_array(minimal, **{field: value})])),
        ):
            result = feed(frame)
            assert isinstance(result, InvalidField | MalformedFrame), (field, value, result)
            assert field in result.message or "bignum" in result.message
            check_refusal(result)


def test_the_number_field_table_covers_every_number_field() -> None:
    covered = {tuple(case.values[:2]) for case in _number_fields()}
    assert (Submit, "timeout") in covered and (Hello, "max_frame") in covered
    assert (Credit, "credit") in covered and (Hello, "versions") in covered
    assert len(covered) >= 40


# ---------------------------------------------------------------------------------------
# 7. The property: any well-formed hostile frame gives messages or a ProtocolError


# A fuzzer (cheap examples, a wide input space); its frames are large by design.
@settings(
    max_examples=400,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
    ],
)
@given(st.lists(sts.hostile_frames(), min_size=1, max_size=3), st.data())
def test_hostile_frames_give_messages_or_a_protocol_error(
    frames: list[bytes], data: st.DataObject
) -> None:
    stream = b"".join(frames)
    pieces = data.draw(sts.chunked(stream, max_chunks=4)) if len(stream) < 10**6 else [stream]
    decoder = FrameDecoder()
    received: list[Message] = []
    try:
        for piece in pieces:
            received += decoder.feed(piece)
    except ProtocolError as exc:
        received += exc.messages
        check_refusal(exc)
        event(type(exc).__name__)
    else:
        event("accepted")
    for message in received:
        check_survives(message)


@pytest.mark.parametrize("cls", KINDS, ids=lambda c: c.__name__)
def test_every_field_of_every_kind_takes_every_hostile_sample(cls: type[Message]) -> None:
    """Each field of each kind, in a map and in a bundle, set to each of the fixed
    hostile values (a payload also to each of them encoded, as payloads travel): messages
    that survive re-encoding, or a short refusal."""
    minimal = cls(**MINIMAL[cls])
    base = to_wire(minimal)
    for field in attrs.fields(cls):
        values = list(sts.HOSTILE_SAMPLES)
        keys = [field.metadata["key"]]  # a payload's: one sent plain
        if field.metadata.get("payload"):
            # Encoded too, as payloads travel: key "e", and the bundled payload's place.
            values += [cbor_body(value) for value in sts.HOSTILE_SAMPLES]
            keys.append(sts.wire_key(field))
        for value in values:
            for body in (
                *(cbor_body({**base, key: value}) for key in keys),
                cbor_body([_full_array(minimal, **{field.name: value})]),
            ):
                result = feed(frame_of(body))
                if isinstance(result, ProtocolError):
                    check_refusal(result)
                else:
                    for message in result:
                        check_survives(message)


@settings(max_examples=300)  # a fuzzer: every field of every kind, many hostile values
@given(st.sampled_from(KINDS), st.data())
def test_every_field_of_every_kind_takes_any_hostile_value(
    cls: type[Message], data: st.DataObject
) -> None:
    base = to_wire(cls(**MINIMAL[cls]))
    field = data.draw(st.sampled_from(attrs.fields(cls)))
    if field.metadata.get("payload") and data.draw(st.booleans()):
        key, value = sts.wire_key(field), data.draw(sts.hostile_payloads)  # encoded
    else:
        key, value = field.metadata["key"], data.draw(sts.hostile_values)  # or plain
    result = feed(frame_of(cbor_body({**base, key: value})))
    if isinstance(result, ProtocolError):
        check_refusal(result)
        event(f"refused: {type(result).__name__}")
    else:
        for message in result:
            check_survives(message)
        event("accepted")
