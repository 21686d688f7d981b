"""Write ``tests/data/cbor_vectors.json``: golden CBOR vectors made by cbor2, for the
JavaScript codec (``clients/js/src/cbor.js``) and the Python side alike.

Run from the repository's root: ``python tests/data/gen_cbor_vectors.py`` (``--check``
only says whether the file is up to date). The output is deterministic.

Each valid vector is ``{"name", "hex", "value", "encode"}``: ``hex`` is one CBOR item,
``value`` describes what it decodes to (JSON, see ``FORMAT``), and ``encode`` lists the
sides whose encoder must write exactly ``hex`` for that value: ``"py"`` when
``cbor2.dumps`` does (with ``datetime_as_timestamp=True``), ``"js"`` when the JavaScript
encoder does too (it writes what cbor2 writes, except that a whole Number is an integer, an
integer-like text key comes first in a JavaScript object, and a Date has millisecond
precision: see ``_js_encodes_same``). A vector with neither is decode-only (a half float,
a longer head than needed, an indefinite length). Each invalid vector is ``{"name",
"hex"}``: bytes that both sides refuse (the Python side with ``protocol.decode_payload``).
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import cbor2

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # (run as a script from anywhere)
    sys.path.insert(0, str(ROOT))

import protocol  # noqa: E402
from protocol._bundle import bundle_frames, encode_item  # noqa: E402

OUT = Path(__file__).with_name("cbor_vectors.json")
UTC = dt.UTC

FORMAT = {
    "int": "decimal string: a Number in JavaScript when within +-(2^53-1), else a BigInt",
    "float": 'a JSON number, or "nan", "inf", "-inf" (JSON -0.0 is -0)',
    "text": "a string",
    "bytes": "hex",
    "array": "a list of values",
    "map": "a list of [key, value] pairs, in order: a JavaScript object when every key is "
    "text, else a Map",
    "tag": "[tag number (an int, or a decimal string beyond 2^53-1), value]",
    "date": "seconds since the epoch (tags 0 and 1): a Python datetime in UTC, a JavaScript Date",
    "bool": "true or false",
    "null": "null",
    "undefined": "null (CBOR undefined, cbor2.undefined)",
}


# ---------------------------------------------------------------------------------------
# Values and their descriptions


def describe(value: Any) -> Any:
    """The JSON description of a value cbor2 decoded."""
    if value is None:
        return {"null": None}
    if value is cbor2.undefined:
        return {"undefined": None}
    if type(value) is bool:
        return {"bool": value}
    if type(value) is int:
        return {"int": str(value)}
    if type(value) is float:
        if math.isnan(value):
            return {"float": "nan"}
        if math.isinf(value):
            return {"float": "inf" if value > 0 else "-inf"}
        return {"float": value}
    if type(value) is str:
        return {"text": value}
    if type(value) is bytes:
        return {"bytes": value.hex()}
    if type(value) in (list, tuple):  # (cbor2 decodes an array inside a tag as a tuple)
        return {"array": [describe(v) for v in value]}
    if isinstance(value, Mapping):  # (cbor2 decodes a map inside a tag as a frozendict)
        return {"map": [[describe(k), describe(v)] for k, v in value.items()]}
    if type(value) is cbor2.CBORTag:
        number = value.tag if value.tag < 2**53 else str(value.tag)
        return {"tag": [number, describe(value.value)]}
    if type(value) is dt.datetime:
        return {"date": value.timestamp()}
    raise TypeError(f"no description for {type(value).__name__}")


def build(desc: dict[str, Any]) -> Any:
    """The Python value a description stands for (what cbor2 decodes it to)."""
    ((kind, arg),) = desc.items()
    if kind == "null":
        return None
    if kind == "undefined":
        return cbor2.undefined
    if kind in ("bool", "text"):
        return arg
    if kind == "int":
        return int(arg)
    if kind == "float":
        return float(arg)
    if kind == "bytes":
        return bytes.fromhex(arg)
    if kind == "array":
        return [build(v) for v in arg]
    if kind == "map":
        return {build(k): build(v) for k, v in arg}
    if kind == "tag":
        return cbor2.CBORTag(int(arg[0]), build(arg[1]))
    if kind == "date":
        return dt.datetime.fromtimestamp(arg, UTC)
    raise ValueError(f"unknown description {kind!r}")


def dumps(value: Any) -> bytes:
    """cbor2's encoding, as the Python side writes it (dates as epoch times, tag 1)."""
    return cbor2.dumps(value, datetime_as_timestamp=True)


_ARRAY_INDEX = re.compile(r"0|[1-9][0-9]*")


def _js_encodes_same(value: Any) -> bool:
    """Whether the JavaScript encoder writes what cbor2 writes for this (decoded) value."""
    if type(value) is float:
        # a whole Number is written as an integer (but -0.0 and beyond 2^53 stay floats)
        negative_zero = value == 0 and math.copysign(1, value) < 0
        return not (value.is_integer() and abs(value) < 2**53 and not negative_zero)
    if type(value) in (list, tuple):
        return all(_js_encodes_same(v) for v in value)
    if isinstance(value, Mapping):
        # integer-like text keys come first in a JavaScript object
        if all(type(k) is str for k in value):
            keys = [k for k in value if _ARRAY_INDEX.fullmatch(k) and int(k) < 2**32 - 1]
            if keys and list(value)[: len(keys)] != keys:
                return False
        return all(_js_encodes_same(k) and _js_encodes_same(v) for k, v in value.items())
    if type(value) is cbor2.CBORTag:
        return _js_encodes_same(value.value)
    if type(value) is dt.datetime:
        return value.microsecond % 1000 == 0
    return True


# ---------------------------------------------------------------------------------------
# The vectors

_BIG = 2 ** (8 * 1024) - 1  # the largest bignum accepted (1024 bytes)


def _values() -> list[tuple[str, Any]]:
    """(name, Python value) pairs, encoded by cbor2."""
    ints = [0, 1, 10, 23, 24, 25, 100, 255, 256, 1000, 65535, 65536, 1_000_000]
    ints += [2**32 - 1, 2**32, 2**53 - 1, 2**53, 2**53 + 1, 2**63, 2**64 - 1]
    ints += [-1, -10, -24, -25, -100, -256, -257, -1000, -65536, -65537]
    ints += [-(2**32), -(2**32) - 1, -(2**53 - 1), -(2**53), -(2**63), -(2**64)]
    out: list[tuple[str, Any]] = [(f"int {n}", n) for n in ints]
    out += [
        ("bignum 2^64", 2**64),
        ("bignum 2^100", 2**100),
        ("bignum 10^100", 10**100),
        ("bignum -2^64-1", -(2**64) - 1),
        ("bignum -2^100", -(2**100)),
        ("bignum of 1024 bytes", _BIG),
        ("negative bignum of 1024 bytes", -1 - _BIG),
    ]
    floats = [0.0, -0.0, 1.0, -1.0, 1.5, -4.1, 0.1, 3.141592653589793, 1e300, -1e300]
    floats += [1e-300, 5e-324, 1.7976931348623157e308, 2.0**53, 2.0**64, 100000.0]
    floats += [5.960464477539063e-08, math.inf, -math.inf, math.nan]
    out += [(f"float {f!r}", f) for f in floats]
    texts = ["", "a", "IETF", '"\\', "\u00fc", "\u6c34", "\U00010151", "\U0001f600"]
    texts += ["h\u00e9llo w\u00f6rld \u20ac", "\ufeffBOM kept", "\x00\x7f", "x" * 23, "x" * 24]
    texts += ["\u00e9" * 12, "abc" * 100, "\u00e9\u20ac\U0001f600" * 50, "z" * 300]
    out += [(f"text {t[:20]!r} ({len(t)})", t) for t in texts]
    out += [
        ("bytes empty", b""),
        ("bytes 4", b"\x01\x02\x03\x04"),
        ("bytes 24", bytes(range(24))),
        ("bytes 300", bytes(range(256)) + bytes(44)),
        ("array empty", []),
        ("array [1, 2, 3]", [1, 2, 3]),
        ("array nested", [1, [2, 3], [4, 5]]),
        ("array of 25", list(range(1, 26))),
        ("array mixed", [None, True, False, "a", b"b", 1.5, -7, [], {}]),
        ("array 64 deep", _nest(64)),
        ("map empty", {}),
        ("map text keys", {"a": 1, "b": [2, 3]}),
        ("map five keys", {"a": "A", "b": "B", "c": "C", "d": "D", "e": "E"}),
        ("map nested", {"name": "x", "list": [1, 2.5, None], "map": {"k": {"k2": [[]]}}}),
        ("map int keys", {1: 2, 3: 4}),
        ("map negative and big int keys", {-1: "a", 2**64 - 1: "b"}),
        ("map mixed keys", {"a": 1, 2: "b"}),
        ("map bytes key", {b"k": 1}),
        ("map __proto__ key", {"__proto__": {"polluted": True}, "x": 1}),
        ("map constructor and toString keys", {"constructor": 1, "toString": 2}),
        ("map integer-like text keys", {"b": 1, "1": 2, "0": 3}),
        ("map integer-like text keys in order", {"0": 1, "7": 2, "z": 3}),
        ("map float key", {1.5: "f"}),
        ("map of 24", {f"k{i:02}": i for i in range(24)}),
        ("tag 1 int", cbor2.CBORTag(1, 1363896240)),
        ("tag 1 float", cbor2.CBORTag(1, 1363896240.5)),
        ("date with microseconds", dt.datetime(2013, 3, 21, 20, 4, 0, 123456, UTC)),
        ("tag 40000", cbor2.CBORTag(40000, 1)),
        ("tag 40000 of a map", cbor2.CBORTag(40000, {"a": [1, "b"]})),
        ("tag 2^64-1", cbor2.CBORTag(2**64 - 1, None)),
        ("tag 0 date", cbor2.CBORTag(0, "2013-03-21T20:04:00Z")),
        ("tag 0 date with offset", cbor2.CBORTag(0, "2013-03-21T21:04:00.5+01:00")),
        ("tag 0 date with microseconds", cbor2.CBORTag(0, "2013-03-21T20:04:00.123456+00:00")),
        ("false", False),
        ("true", True),
        ("null", None),
        ("undefined", cbor2.undefined),
        ("payload {'n': 7}", {"n": 7}),
    ]
    return out


def _nest(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


def _raw() -> list[tuple[str, str]]:
    """(name, hex) pairs written by hand: forms cbor2 decodes but does not write."""
    return [
        ("half 0.0", "f90000"),
        ("half -0.0", "f98000"),
        ("half 1.0", "f93c00"),
        ("half 1.5", "f93e00"),
        ("half 65504", "f97bff"),
        ("half 5.960464477539063e-08", "f90001"),
        ("half 6.103515625e-05", "f90400"),
        ("half -4.0", "f9c400"),
        ("half nan with payload", "f97e01"),
        ("single 100000.0", "fa47c35000"),
        ("single 1.5", "fa3fc00000"),
        ("single inf", "fa7f800000"),
        ("single smallest", "fa00000001"),
        ("double 1.0", "fb3ff0000000000000"),
        ("int 0 in a 1-byte head", "1800"),
        ("int 1 in a 4-byte head", "1a00000001"),
        ("int 10 in an 8-byte head", "1b000000000000000a"),
        ("int -1 in a 1-byte head", "3800"),
        ("bignum 1 (tag 2)", "c24101"),
        ("bignum 0 (tag 2, empty)", "c240"),
        ("bignum -1 (tag 3)", "c34100"),
        ("bignum 2^53-1 (tag 2)", "c2471fffffffffffff"),
        ("bignum -2^53 (tag 3)", "c3471fffffffffffff"),
        ("bignum 2^64-1 (tag 2)", "c248ffffffffffffffff"),
        ("indefinite array", "9f0102ff"),
        ("indefinite empty array", "9fff"),
        ("indefinite bytes", "5f42010243030405ff"),
        ("indefinite text", "7f657374726561646d696e67ff"),
        ("indefinite map", "bf6161016162820203ff"),
        ("indefinite map int key", "bf0102ff"),
        ("nested indefinite", "9f9f01ff9fffbf6161f5ffff"),
        ("map 64 deep", "a16161" * 63 + "a1616101"),
        ("empty array inside 64", "81" * 64 + "80"),
        ("tag inside 63 arrays", "81" * 63 + "d99c4001"),
    ]


def _messages() -> list[tuple[str, bytes]]:
    """(name, body) pairs: each message kind's body as the Python side encodes it."""
    p = protocol
    msgs: list[tuple[str, Any]] = [
        ("Hello client", p.Hello(mid=1, role="client", name="page", versions=(1, 2))),
        (
            "Hello worker",
            p.Hello(
                mid=1,
                role="worker",
                name="thumb-1",
                versions=(2,),
                patterns=("img.thumb", "img.>"),
                credit=4,
                group="thumbs",
                token="secret-token",
                meta={"pid": 1234, "host": "h\u00f6st", "tags": ["a", "b"]},
                max_frame=1 << 20,
                policy="least_loaded",
            ),
        ),
        ("Welcome", p.Welcome(mid=1, cid=1, version=2, node="n1", session="s-1", heartbeat=2.5)),
        ("Welcome whole heartbeat", p.Welcome(mid=1, cid=1, version=2, heartbeat=5.0)),
        (
            "Submit",
            p.Submit(
                mid=7,
                job_id="job-7",
                subject="img.thumb",
                payload={"n": 7, "url": "https://x/\u00e9.png", "sizes": [64, 128]},
                headers={"trace": "abc"},
                qos=1,
                timeout=2.5,
                max_attempts=3,
            ),
        ),
        ("Submit no payload", p.Submit(mid=8, job_id="j8", subject="a.b", qos=0)),
        (
            "Assign",
            p.Assign(mid=9, job_id="job-7", subject="img.thumb", payload=[1, 2.5], attempt=2),
        ),
        ("Ack", p.Ack(mid=10, cid=9, job_id="job-7")),
        ("Nack", p.Nack(mid=11, cid=9, job_id="job-7", delay=0.5, reason="busy")),
        ("Progress", p.Progress(mid=12, job_id="job-7", fraction=0.25, note="a quarter")),
        ("Result ok", p.Result(mid=13, cid=7, job_id="job-7", payload={"w": 64, "b": b"\x89PNG"})),
        (
            "Result error",
            p.Result(
                mid=14,
                cid=7,
                job_id="job-7",
                ok=False,
                error_type="ValueError",
                error_message="bad size",
                attempts=3,
                final=True,
                error_code="job_failed",
            ),
        ),
        ("Credit", p.Credit(mid=15, credit=64)),
        ("Cancel", p.Cancel(mid=16, job_id="job-7", reason="user", abandon=True)),
        ("Query", p.Query(mid=17, what="result", job_id="job-7", wait=True)),
        ("Publish", p.Publish(mid=18, subject="news.x", payload="hi", headers={"k": "v"})),
        ("Subscribe", p.Subscribe(mid=19, sid=3, pattern="news.*", queue="q")),
        ("Unsubscribe", p.Unsubscribe(mid=20, sid=3)),
        ("Deliver", p.Deliver(mid=21, sid=3, subject="news.x", payload=None, also=(4, 5))),
        ("Ping", p.Ping(mid=22)),
        ("Pong", p.Pong(mid=23, cid=22)),
        ("Error", p.Error(mid=24, cid=7, code="no_route", message="no worker", retry_after=1.5)),
        ("Bye", p.Bye(mid=25, reason="shutting down")),
        ("CachePut", p.CachePut(mid=26, cache_id="c1", target="img.>", entries=(("k", b"v"),))),
        ("CacheAck", p.CacheAck(mid=27, cid=26, cache_id="c1", worker="w1", statuses={"k": "ok"})),
        ("Chunk", p.Chunk(mid=28, transfer_id="x1", index=0, data=b"\x00\x01", last=True)),
    ]
    out = [(f"message {name}", p.encode_body(m)) for name, m in msgs]
    items = [encode_item(m) for _, m in msgs[4:8]]
    (frame,) = bundle_frames(items, 1 << 20)
    out.append(("bundle of Submit, Submit, Assign, Ack", frame[5:]))
    return out


def _invalid() -> list[tuple[str, str]]:
    """(name, hex) pairs that both sides refuse."""
    return [
        ("empty input", ""),
        ("truncated int", "19ff"),
        ("truncated 8-byte head", "1b00000000"),
        ("truncated float", "fb3ff0"),
        ("truncated text", "64616263"),
        ("truncated array", "830102"),
        ("truncated map", "a16161"),
        ("bytes longer than the input", "5affffffff00"),
        ("text longer than the input", "7b00000000ffffffff61"),
        ("array longer than the input", "9bffffffffffffffff00"),
        ("map longer than the input", "bb7fffffffffffffff00"),
        ("trailing byte", "0000"),
        ("trailing item", "a0a0"),
        ("reserved additional information 28", "1c"),
        ("reserved additional information 30 in a string", "5e"),
        ("reserved additional information 29 in major 7", "fd"),
        ("unexpected break", "ff"),
        ("break inside a definite array", "81ff"),
        ("indefinite int", "1f"),
        ("indefinite tag", "df01"),
        ("unterminated indefinite array", "9f01"),
        ("indefinite text with a bytes chunk", "7f4161ff"),
        ("indefinite text with a nested indefinite chunk", "7f7fffff"),
        ("invalid UTF-8", "62c328"),
        ("invalid UTF-8 overlong", "62c0af"),
        ("invalid UTF-8 surrogate", "63eda080"),
        ("invalid UTF-8 truncated sequence", "63e282"),
        ("invalid UTF-8 in a map key", "a162c32801"),
        ("duplicate text key", "a2616101616102"),
        ("duplicate bytes key", "a2416101416102"),
        ("array 65 deep", "81" * 65 + "01"),
        ("map 65 deep", "a16161" * 64 + "a1616101"),
        ("tags 65 deep", "d99c40" * 65 + "01"),
        ("tag inside 64 arrays", "81" * 64 + "d99c4001"),
        ("bignum of 1025 bytes", "c2590401" + "01" + "00" * 1024),
        ("bignum holding an int", "c201"),
        ("tag 28 (shared reference)", "d81c80"),
        ("tag 29 (shared reference)", "d81d00"),
        ("tag 25 (string reference)", "d81900"),
        ("tag 256 (string references)", "d9010080"),
        ("tag 35 (regular expression)", "d8236161"),
        ("tag 36 (MIME)", "d8246161"),
        ("tag 1 holding text", "c16161"),
        ("tag 0 holding text that is no date", "c06161"),
        ("simple value 24 below 32", "f818"),
        ("map key that is an array", "a18001"),
        ("map key that is a map", "a1a001"),
    ]


def build_vectors() -> dict[str, Any]:
    """The whole file's content."""
    entries = [(name, dumps(value).hex()) for name, value in _values()]
    entries += _raw()
    entries += [(name, body.hex()) for name, body in _messages()]
    vectors = []
    names: set[str] = set()
    for name, hex_ in entries:
        assert name not in names, name
        names.add(name)
        value = cbor2.loads(bytes.fromhex(hex_))
        encode = []
        if dumps(value).hex() == hex_:
            encode.append("py")
            if _js_encodes_same(value):
                encode.append("js")
        vectors.append({"name": name, "hex": hex_, "value": describe(value), "encode": encode})
    invalid = [{"name": name, "hex": hex_} for name, hex_ in _invalid()]
    return {
        "about": "Golden CBOR vectors written by tests/data/gen_cbor_vectors.py from cbor2 "
        "(do not edit). 'encode' lists the sides whose encoder writes exactly 'hex' for "
        "'value'; 'invalid' holds bytes both sides refuse.",
        "format": FORMAT,
        "vectors": vectors,
        "invalid": invalid,
    }


def render(data: dict[str, Any]) -> str:
    """The file's text: one vector per line."""
    lines = ["{"]
    lines.append(f'"about": {json.dumps(data["about"])},')
    lines.append(f'"format": {json.dumps(data["format"])},')
    for key in ("vectors", "invalid"):
        lines.append(f'"{key}": [')
        rows = [json.dumps(v) for v in data[key]]
        lines.extend(row + ("," if i < len(rows) - 1 else "") for i, row in enumerate(rows))
        lines.append("]," if key == "vectors" else "]")
    lines.append("}")
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    text = render(build_vectors())
    if "--check" in argv:
        current = OUT.read_text(encoding="utf-8") if OUT.exists() else ""
        if current != text:
            print(f"{OUT} is out of date: run python {Path(__file__).name}")
            return 1
        return 0
    OUT.write_text(text, encoding="utf-8")
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
