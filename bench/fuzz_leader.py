"""Grammar-aware fuzzing of a leader over TCP and WebSocket (a script, not a test).

::

    python bench/fuzz_leader.py                          # 1,000,000 frames, cluster started here
    python bench/fuzz_leader.py --frames 200000 --seed 7 --connections 32
    python bench/fuzz_leader.py --tcp tcp://127.0.0.1:7700 --ws ws://127.0.0.1:7701 --pid PID
    python bench/fuzz_leader.py --replay fuzz-crash-1.json    # resend a crash's frames

It starts ``python -m actors.cluster`` with a tcp and a ws listener on free loopback ports
and 2 worker processes of ``examples.square:Square`` (or attaches to a running leader given
``--tcp``/``--ws``), then opens up to ``--connections`` hostile connections at a time until
``--frames`` frames are sent (or ``--seconds`` pass). Each hostile connection sends:

- **bytes**: random bytes, or a frame header with random flags, length or body;
- **cbor**: well-framed bodies holding random CBOR items (maps with random keys and
  tags, arrays, scalars, tags, deep nesting);
- **message** and **bundle** (most of the traffic): Hello as a client, worker, observer or
  leader (or none, or a bad one), then messages of every kind (mostly those the role may
  send) as maps or as version-2 bundles, with hostile values: wrong types, huge and
  negative ints, ints of thousands of digits, NaN and infinities, long strings, subjects
  and patterns of thousands of tokens, deep payloads, refused CBOR tags, tiny and huge
  ``max_frame``, messages before Hello, a second Hello, bundles mixing good and bad items;
- **huge**, rarely: frames just under and just over the 16 MiB limit, and zlib bombs.

Frames are built with the protocol's own framing (:mod:`protocol._framing`) around CBOR
written here (cbor2 plus a small raw encoder), so values the message classes would refuse
reach the leader. On WebSocket each frame is one binary message (sometimes not: a text
message, half a frame, two frames). Meanwhile a well-behaved :class:`actors.Client`
submits ``math.square`` jobs (QoS 1, several in flight) and the driver times them.

A crash is the leader's process exiting, or its listeners not answering a Hello for
``--hang-seconds``. The driver then writes ``fuzz-crash-N.json`` (the frames every hostile
connection active at the time, and the last ones to finish, sent), prints the leader's last
stderr lines, restarts the cluster on the same ports and goes on. Every connection's frames
come from an RNG seeded by ``--seed`` and the connection's number, so a run is repeatable;
``--replay FILE`` resends a dump's connections one by one and says after which one the
leader died.

At the end it prints frames sent by class and by message kind, connections opened, what
the leader answered, leader crashes, the leader's RSS before and after, and the good
client's jobs (ok, failed, success rate, p50, p99, the slowest calls), and how late this
script's own event loop ran (its stalls delay the good client too); ``--json`` adds one JSON
line.

Only loopback addresses are used. Everything is bounded: connections at once, frames,
seconds, the bytes each connection keeps for a dump.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import hashlib
import ipaddress
import itertools
import json
import math
import os
import random
import re
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(ROOT) not in sys.path:  # run as a script: make the repository importable
    sys.path.insert(0, str(ROOT))

import attrs  # noqa: E402
import cbor2  # noqa: E402

import protocol  # noqa: E402
from protocol import _fields as protocol_fields  # noqa: E402

#: The leader's frame limit (its default): the "huge" frames sit just under and over it.
LIMIT = protocol.DEFAULT_MAX_FRAME_SIZE
MiB = 1024 * 1024
#: The subject the well-behaved client submits to, and what serves it.
GOOD_SUBJECT = "math.square"
WORKER_SPEC = "examples.square:Square"
#: Seconds the cluster gets to print "cluster ready".
START_TIMEOUT = 30.0
#: Seconds the cluster gets to exit after SIGINT before its process group is killed.
STOP_TIMEOUT = 5.0
#: Seconds a probe waits for the Welcome to its Hello.
PROBE_TIMEOUT = 5.0
#: Bytes of sent frames each connection keeps for a crash dump (the most recent ones).
KEEP_BYTES = 1 * MiB
#: Frames over this size are kept in a dump as their recipe (they are rebuilt from it).
KEEP_FRAME = 64 * 1024
#: Finished connections kept for a crash dump (a crash may come just after a close).
KEEP_RECENT = 32
#: Bytes a hostile TCP connection writes per send_all.
CHUNK = 64 * 1024
#: Seconds a hostile connection waits, once it has sent everything, for the leader to
#: close (after Bye or an error); without either it waits only ``QUIET_WAIT``.
CLOSE_WAIT = 2.0
QUIET_WAIT = 0.05
#: Connections answered ``internal`` whose frames are dumped, at most.
MAX_INTERNAL_DUMPS = 20
#: Largest frame the hostile side decodes from the leader.
READ_LIMIT = 64 * MiB
#: The driver's event loop is checked every LAG_TICK seconds; lateness over LAG_REPORTED is
#: counted (this script's own stalls, which the good client's latencies include).
LAG_TICK = 0.1
LAG_REPORTED = 0.5
#: Slowest good calls (and driver stalls) kept for the report; calls over SLOW_REPORTED
#: seconds make the report list them.
SLOWEST_KEPT = 8
SLOW_REPORTED = 1.0


# ---------------------------------------------------------------------------------------
# CBOR written by hand where cbor2 would refuse (duplicate keys, raw items, nesting)


@attrs.frozen
class Raw:
    """An already encoded CBOR item, spliced in as is."""

    data: bytes


@attrs.frozen
class Pairs:
    """A CBOR map given as its key/value pairs (keys may repeat)."""

    items: tuple[tuple[Any, Any], ...]


@attrs.frozen
class Tagged:
    """A CBOR tag around a value that may hold :class:`Raw` parts."""

    tag: int
    value: Any


def head(major: int, n: int) -> bytes:
    """The head of a CBOR item: major type and argument."""
    m = major << 5
    if n < 24:
        return bytes((m | n,))
    if n < 0x100:
        return bytes((m | 24, n))
    if n < 0x10000:
        return bytes((m | 25,)) + n.to_bytes(2, "big")
    if n < 0x100000000:
        return bytes((m | 26,)) + n.to_bytes(4, "big")
    return bytes((m | 27,)) + n.to_bytes(8, "big")


def enc(obj: Any) -> bytes:
    """CBOR of ``obj``, where :class:`Raw`, :class:`Pairs` and :class:`Tagged` may appear.

    cbor2 encodes whatever holds none of them (it refuses the three classes, so a
    container holding one is written here, item by item)."""
    kind = type(obj)
    if kind is Raw:
        return obj.data
    if kind in (list, dict):
        try:
            return cbor2.dumps(obj)
        except cbor2.CBOREncodeError:
            pass
    if kind is dict:
        return head(5, len(obj)) + b"".join(enc(k) + enc(v) for k, v in obj.items())
    if kind is list:
        return head(4, len(obj)) + b"".join(enc(v) for v in obj)
    if kind is Pairs:
        return head(5, len(obj.items)) + b"".join(enc(k) + enc(v) for k, v in obj.items)
    if kind is Tagged:
        return head(6, obj.tag) + enc(obj.value)
    return cbor2.dumps(obj)


def frame(body: bytes, flags: int = 0) -> bytes:
    """A whole frame: the protocol's 5-byte header, then ``body``."""
    return struct.pack(">IB", len(body), flags) + body


def compressed(body: bytes) -> bytes:
    """A frame whose body is zlib-compressed (flag 0x01)."""
    return frame(zlib.compress(body, 1), protocol.FLAG_COMPRESSED)


# ---------------------------------------------------------------------------------------
# Values: valid ones at the edges, and hostile ones


TOKENS = ("fz", "a", "b", "c", "order", "x1", "é", "日本", "a*b", "foo>", "$x", "\x0b")
#: Token counts of the long subjects and patterns (recursion limits, trie depth, splits).
MANY_TOKENS = (64, 255, 256, 257, 999, 1001, 1500, 3000, 20_000, 100_000)
BAD_SUBJECTS = ("", ".", "a..b", ".a", "a.", "a b", "a\tb", "a\x00b", "a\nb", "a.*", "a.>", ">",
                "*", "a.>.b", "\u3000")  # fmt: skip
BAD_PATTERNS = ("", ".", "a..b", "a.>.b", ">.a", "a b", "a\x00", "\r", "a.")
ROLES = ("client", "worker", "observer", "leader")
POLICIES = ("round_robin", "least_loaded", "sticky")
MODES = ("round_robin", "broadcast")
#: Job ids shared by every hostile connection, so that Results, Nacks, Progress and
#: Cancels sometimes name real jobs of other connections.
JOB_POOL = tuple(f"fz-{i}" for i in range(64))
REFUSED_TAGS = (25, 28, 29, 35, 36, 256)
#: Integers beyond every field's range: bignums of up to 1024 bytes (what a payload may
#: hold) and, in ``TOO_BIG_INTS``, beyond (thousands of digits).
HUGE_INTS = (10**1000, -(10**1000), 2**64, -(2**63) - 1, 2**64 + 1, 2**128, 10**2466, 2**8191 + 1)
TOO_BIG_INTS = (2**8192, -(10**3000), 3**20000, 10**5000)
#: Validators of the message classes (names in ``protocol._fields``) that check what
#: another one here does; a validator in neither is guessed from its name.
SAME_AS = {
    "_id": "_non_empty_str", "_code": "_non_empty_str", "_short_str": "_str",
    "_opt_short_str": "_opt_str", "_opt_token": "_opt_str", "_versions": "_int_tuple",
    "_opt_frame_limit": "_opt_pos_int", "_str_tuple": "_patterns",
}  # fmt: skip
SEMANTIC_TAGS = (0, 1, 2, 3, 4, 5, 21, 22, 23, 24, 30, 32, 37, 100, 258, 260, 261, 1004, 55799)


def _text_chunks() -> tuple[str, ...]:
    rng = random.Random(0)
    alphabets = ("abcxyz", "é日本\u200b", "a\x00b", " \t\r\n", "\U0001f600", "\ufeff.*>", "fz.a_b")
    return tuple(
        "".join(rng.choice(a) for _ in range(rng.randint(1, 40)))
        for a in alphabets
        for _ in range(8)
    )


#: Pieces of text that :meth:`Values.text` cuts or repeats to a length.
TEXT_CHUNKS = _text_chunks()


class Values:
    """Random values for fields and payloads, from one seeded RNG.

    The method for a field is chosen by the name of its validator in the message class
    (``_uint``, ``_subject``, ...), so new fields of known types are fuzzed with no change
    here; an unknown validator gets :meth:`anything`.
    """

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    # -- sizes and scalars

    def size(self) -> int:
        """A length: mostly tiny, now and then up to 2 MiB."""
        r = self.rng.random()
        if r < 0.95:
            return self.rng.randint(0, 16)
        if r < 0.995:
            return self.rng.randint(17, 512)
        if r < 0.9995:
            return self.rng.randint(513, 8192)
        if r < 0.99995:
            return self.rng.randint(8193, 256 * 1024)
        return self.rng.randint(256 * 1024, 2 * MiB)

    def text(self, n: int | None = None) -> str:
        n = self.size() if n is None else n
        chunk = self.rng.choice(TEXT_CHUNKS)
        return chunk[:n] if n <= len(chunk) else (chunk * (n // len(chunk) + 1))[:n]

    def blob(self, n: int | None = None) -> bytes:
        n = self.size() if n is None else n
        if n <= 4096:
            return self.rng.randbytes(n)
        return (self.rng.randbytes(64) * (n // 64 + 1))[:n]

    def huge_int(self) -> int:
        return (
            self.rng.choice(HUGE_INTS) if self.rng.random() < 0.9 else self.rng.choice(TOO_BIG_INTS)
        )

    def any_int(self) -> int:
        """An int a payload may hold (bignums of up to 1024 bytes)."""
        r = self.rng.random()
        if r < 0.6:
            return self.rng.randint(-5, 100)
        if r < 0.9:
            return self.rng.choice((0, -1, 2**31, 2**53 + 1, 2**63 - 1, 2**64 - 1, -(2**63)))
        return self.rng.choice(HUGE_INTS)

    def any_float(self) -> Any:
        return self.rng.choice(
            (math.nan, math.inf, -math.inf, -0.0, 0.0, 5e-324, 1.7976931348623157e308, 0.5, -1.5,
             Raw(b"\xf9\x7e\x00"), Raw(b"\xf9\x7c\x00"), Raw(b"\xf9\x3c\x00"), Raw(b"\xfa\x7f\xc0\x00\x00"))
        )  # fmt: skip

    def bad_utf8(self) -> Raw:
        data = self.rng.choice((b"\xff", b"\xc3", b"\xed\xa0\x80", b"a\x80b", b"\xf4\x90\x80\x80"))
        return Raw(head(3, len(data)) + data)

    # -- fields, by validator

    def field(self, validator: str, hostile: bool) -> Any:
        """A value for a field checked by ``validator``: a valid one, or (``hostile``) one
        the validator should refuse."""
        name = SAME_AS.get(validator, validator)
        method = getattr(self, ("bad" if hostile else "ok") + name, None)
        if method is not None:
            return method()
        return self.guess(validator, hostile)

    def guess(self, validator: str, hostile: bool) -> Any:
        """A value for a validator this script does not know, from its name."""
        if hostile:
            return self.wrong_type()
        if "opt" in validator and self.rng.random() < 0.3:
            return None
        if any(word in validator for word in ("str", "id", "name", "token", "code", "text")):
            return self.text(self.rng.randint(1, 16))
        if any(word in validator for word in ("int", "limit", "count", "size")):
            return self.ok_pos_int()
        if "bool" in validator:
            return self.ok_bool()
        return self.anything(2)

    def wrong_type(self) -> Any:
        """A value of some type, usually the wrong one for the field at hand."""
        rng = self.rng
        choice = rng.randrange(14)
        if choice == 0:
            return None
        if choice == 1:
            return rng.choice((True, False))
        if choice == 2:
            return self.any_int()
        if choice == 3:
            return self.any_float()
        if choice == 4:
            return self.text()
        if choice == 5:
            return self.blob(rng.randint(0, 64))
        if choice == 6:
            return [self.any_int() for _ in range(rng.randint(0, 4))]
        if choice == 7:
            return {self.text(3): self.any_int()}
        if choice == 8:
            return self.bad_utf8()
        if choice == 9:
            return self.huge_int()
        if choice == 10:
            return Tagged(rng.choice(SEMANTIC_TAGS + REFUSED_TAGS), self.anything(1))
        if choice == 11:
            return Raw(b"\xf7")  # undefined
        if choice == 12:
            return Raw(bytes((0xE0 | rng.randrange(20),)))  # a simple value
        return self.deep(rng.choice((10, 62, 63, 64, 65, 200, 5000)))

    def ok_uint(self) -> int:
        r = self.rng.random()
        if r < 0.8:
            return self.rng.randint(0, 1000)
        return self.rng.choice((0, 2**32, 2**53 + 1, 2**63, 2**64 - 1))

    def bad_uint(self) -> Any:
        return (
            self.rng.choice((-1, 2**64, -(2**63) - 1, 10**3000, True, 1.0, "1"))
            if self.rng.random() < 0.6
            else self.wrong_type()
        )

    def ok_opt_uint(self) -> Any:
        return None if self.rng.random() < 0.3 else self.ok_uint()

    bad_opt_uint = bad_uint

    def ok_pos_int(self) -> int:
        return max(1, self.ok_uint())

    def bad_pos_int(self) -> Any:
        return 0 if self.rng.random() < 0.3 else self.bad_uint()

    def ok_opt_pos_int(self) -> Any:
        return None if self.rng.random() < 0.3 else self.ok_pos_int()

    bad_opt_pos_int = bad_pos_int

    def ok_str(self) -> str:
        return self.text()

    def bad_str(self) -> Any:
        return self.bad_utf8() if self.rng.random() < 0.3 else self.wrong_type()

    def ok_non_empty_str(self) -> str:
        return self.text(max(1, self.size()))

    def bad_non_empty_str(self) -> Any:
        return "" if self.rng.random() < 0.3 else self.bad_str()

    def ok_opt_str(self) -> Any:
        return None if self.rng.random() < 0.3 else self.text()

    bad_opt_str = bad_str

    def ok_bool(self) -> bool:
        return self.rng.random() < 0.5

    def bad_bool(self) -> Any:
        return (
            self.rng.choice((0, 1, "true", None, Raw(b"\xf7")))
            if self.rng.random() < 0.6
            else self.wrong_type()
        )

    def ok_qos(self) -> int:
        return self.rng.randint(0, 1)

    def bad_qos(self) -> Any:
        return (
            self.rng.choice((2, -1, True, 1.0, 2**64, None))
            if self.rng.random() < 0.6
            else self.wrong_type()
        )

    def ok_opt_seconds(self) -> Any:
        return self.rng.choice(
            (None, 0, 0.001, 5e-324, 1, 30, 1e9, 1.7976931348623157e308, 2**63, 2**64 - 1, -0.0,
             Raw(b"\xf9\x3c\x00"), Raw(b"\xfa\x3f\x80\x00\x00"))
        )  # fmt: skip

    def bad_opt_seconds(self) -> Any:
        return (
            self.rng.choice(
                (
                    -1,
                    -1e-9,
                    math.nan,
                    math.inf,
                    -math.inf,
                    10**400,
                    2**64,
                    "1",
                    Raw(b"\xf9\x7e\x00"),
                    Raw(b"\xf9\x7c\x00"),
                )
            )
            if self.rng.random() < 0.7
            else self.wrong_type()
        )

    def ok_opt_fraction(self) -> Any:
        return self.rng.choice((None, 0, 1, 0.5, 5e-324, -0.0, 1.0))

    def bad_opt_fraction(self) -> Any:
        return (
            self.rng.choice((1.0000001, -1e-300, 2, -1, math.nan, math.inf, 10**400))
            if self.rng.random() < 0.7
            else self.wrong_type()
        )

    def ok_headers(self) -> dict[str, str]:
        rng = self.rng
        r = rng.random()
        if r < 0.6:
            return {}
        if r < 0.9:
            return {"key": self.text(rng.randint(0, 8))}
        n = rng.choice((64, 65, 1000))
        return {f"h{i}": "v" for i in range(n)}

    def bad_headers(self) -> Any:
        rng = self.rng
        return rng.choice(
            ({"k": 1}, {"k": None}, {"k": ["x"]}, Raw(b"\xa1\x01\x61x"), Raw(b"\xa1\xf9\x7e\x00\x61x"),
             ["k", "v"], "k=v", Pairs((("k", "a"), ("k", "b"))), {"k": self.bad_utf8()})
        )  # fmt: skip

    ok_str_map = ok_headers
    bad_str_map = bad_headers

    def ok_any_map(self) -> dict[str, Any]:
        rng = self.rng
        meta: dict[str, Any] = {}
        if rng.random() < 0.8:
            meta["policy"] = rng.choice(POLICIES) if rng.random() < 0.8 else self.wrong_type()
        if rng.random() < 0.8:
            meta["mode"] = rng.choice(MODES) if rng.random() < 0.8 else self.wrong_type()
        if rng.random() < 0.3:
            meta["pid"] = self.any_int()
        if rng.random() < 0.1:
            meta[self.text(4)] = self.payload(3)
        return meta

    def bad_any_map(self) -> Any:
        return self.rng.choice(
            (
                ["policy"],
                "x",
                1,
                Raw(b"\xa1\x01\x00"),
                Pairs((("policy", "sticky"), ("policy", "x"))),
            )
        )

    def ok_bytes(self) -> bytes:
        return self.blob()

    def bad_bytes(self) -> Any:
        return self.text(self.rng.randint(0, 8)) if self.rng.random() < 0.5 else self.wrong_type()

    def ok_entries(self) -> list[Any]:
        return [
            [self.text(4), self.blob(self.rng.randint(0, 32))]
            for _ in range(self.rng.randint(0, 3))
        ]

    def bad_entries(self) -> Any:
        return self.rng.choice(
            ([["n", "x"]], [[1, b""]], [["n"]], [["n", b"", 3]], "x", [b"x"], {"n": b"x"})
        )

    def ok_role(self) -> str:
        return self.rng.choice(ROLES)

    def bad_role(self) -> Any:
        return (
            self.rng.choice(("admin", "", "Client", "client ", "worker\x00"))
            if self.rng.random() < 0.6
            else self.wrong_type()
        )

    def ok_policy(self) -> str:
        return self.rng.choice(POLICIES)

    def bad_policy(self) -> Any:
        return (
            self.rng.choice(("", "fastest", "Sticky", ["sticky"]))
            if self.rng.random() < 0.6
            else self.wrong_type()
        )

    def ok_mode(self) -> str:
        return self.rng.choice(MODES)

    def bad_mode(self) -> Any:
        return (
            self.rng.choice(("", "fanout", ["broadcast"]))
            if self.rng.random() < 0.6
            else self.wrong_type()
        )

    def ok_query_what(self) -> str:
        return self.rng.choice(tuple(getattr(protocol_fields, "QUERIES", ("result", "stats"))))

    def bad_query_what(self) -> Any:
        return self.rng.choice(("", "Stats", "everything", None, 1))

    def ok_int_tuple(self) -> list[int]:
        return self.rng.choice(
            ([2, 1], [2, 1], [1], [2], [1, 2], [3, 2, 1], [], [99], [2**64 - 1], [-1, 2], [0])
        )

    def bad_int_tuple(self) -> Any:
        return self.rng.choice(
            ([2**64], [1.0], ["2"], [True], 2, "21", {"v": 2}, [[2]], [10**3000])
        )

    # -- subjects and patterns

    def token(self) -> str:
        return self.rng.choice(TOKENS)

    def many_tokens(self, tokens: Sequence[str]) -> str:
        n = self.rng.choice(MANY_TOKENS)
        return ".".join(itertools.islice(itertools.cycle(tokens), n))

    def ok_subject(self) -> str:
        rng = self.rng
        r = rng.random()
        if r < 0.01:
            return GOOD_SUBJECT  # the real workers' subject: hostile jobs reach them
        if r < 0.02:
            return "fz." + self.many_tokens((rng.choice(TOKENS[:4]),))
        if r < 0.03:
            return self.many_tokens(("a",))
        if r < 0.035:
            return "fz." + self.text(rng.choice((100, 4093, 4094, 10_000, 300_000))).replace(
                ".", "_"
            ).replace(" ", "_")
        return ".".join(["fz"] + [self.token() for _ in range(rng.randint(0, 3))])

    def bad_subject(self) -> Any:
        return self.rng.choice(BAD_SUBJECTS) if self.rng.random() < 0.6 else self.wrong_type()

    def ok_pattern(self) -> str:
        rng = self.rng
        r = rng.random()
        if r < 0.02:
            stars = self.many_tokens(("*",))
            return stars + (".>" if rng.random() < 0.3 else "")
        if r < 0.03:
            return self.many_tokens(("*", "a"))
        while True:
            parts = ["fz"] + [rng.choice(("*", ">", *TOKENS[:5])) for _ in range(rng.randint(0, 3))]
            if ">" in parts[:-1]:
                parts = parts[: parts.index(">") + 1]
            pattern = ".".join(parts)
            if rng.random() < 0.05:
                pattern = rng.choice(("*.a", "*.*.*", "fz", "*"))
            # Never one the good client's jobs match: a hostile worker would take them.
            if not protocol.subject_matches(pattern, GOOD_SUBJECT):
                return pattern

    def bad_pattern(self) -> Any:
        return self.rng.choice(BAD_PATTERNS) if self.rng.random() < 0.6 else self.wrong_type()

    def ok_patterns(self) -> list[str]:
        return [self.ok_pattern() for _ in range(self.rng.choice((0, 1, 1, 2, 3, 50)))]

    def bad_patterns(self) -> Any:
        return (
            self.rng.choice(("fz.>", [">", 1], {"p": "x"}, [["fz"]], [None]))
            if self.rng.random() < 0.6
            else [self.bad_pattern()]
        )

    # -- payloads

    def deep(self, depth: int) -> Raw:
        """An array (or map) nested ``depth`` deep, written directly."""
        if self.rng.random() < 0.5:
            return Raw(b"\x81" * depth + b"\x00")
        return Raw(b"\xa1\x61k" * depth + b"\x00")

    def tagged(self) -> Any:
        rng = self.rng
        tag = rng.choice(SEMANTIC_TAGS + REFUSED_TAGS + (6, 27, 39, 262, 2**32, 2**64 - 1))
        content = rng.choice(
            (lambda: self.any_int(), lambda: self.any_float(), lambda: self.text(20), lambda: self.blob(rng.choice((0, 4, 16, 17))),
             lambda: [self.any_int(), self.any_int()], lambda: [1, 0], lambda: [[1], [2]], lambda: {"a": 1}, list,
             lambda: "2020-13-45T99:99:99Z", lambda: Tagged(rng.choice(SEMANTIC_TAGS), [self.any_int()]))
        )()  # fmt: skip
        return Tagged(tag, content)

    def anything(self, depth: int = 3) -> Any:
        """Any CBOR value: mostly within the protocol's payload rules, sometimes not."""
        return self.payload(depth) if self.rng.random() < 0.85 else self.bad_payload()

    def payload(self, depth: int = 3) -> Any:
        """A payload within the protocol's rules, with values at their edges."""
        rng = self.rng
        r = rng.random()
        if depth <= 0 or r < 0.40:
            return rng.choice(
                (None, True, False, self.any_int(), self.any_float(), self.text(rng.randint(0, 12)),
                 self.blob(rng.randint(0, 12)), 10**1000, -(2**8191), Raw(b"\xf7"), Raw(b"\xf0"))
            )  # fmt: skip
        if r < 0.62:
            return {
                self.text(rng.randint(0, 6)): self.payload(depth - 1)
                for _ in range(rng.randint(0, 4))
            }
        if r < 0.80:
            return [self.payload(depth - 1) for _ in range(rng.randint(0, 4))]
        if r < 0.83:
            return self.deep(rng.choice((10, 30, 55, 58)))
        if r < 0.88:
            return rng.choice(
                (Tagged(1, 1_700_000_000), Tagged(1, 1.5), Tagged(0, "2020-01-01T00:00:00Z"),
                 Tagged(2, b"\x01\x00"), Tagged(3, b"\xff"), Tagged(4, [-2, 12345]), Tagged(5, [1, 3]),
                 Tagged(30, [1, 3]), Tagged(37, bytes(16)), Tagged(258, [1, 2]), Tagged(260, bytes(4)),
                 Tagged(6, 1), Tagged(27, ["x", 1]), Tagged(100_000, "x"), Tagged(55799, {"a": 1}))
            )  # fmt: skip
        if r < 0.90:
            return Raw(b"\x9f" + enc(self.payload(depth - 1)) + b"\xff")  # indefinite array
        if r < 0.91:
            return Raw(b"\x7f\x61a\x62bc\xff")  # indefinite text
        if r < 0.95:
            return self.text(self.size())
        if r < 0.99:
            return self.blob(self.size())
        return list(range(rng.choice((1000, 4097, 50_000))))

    def bad_payload(self) -> Any:
        """A value the protocol's payload rules refuse (too deep, refused tags, bad keys...)."""
        rng = self.rng
        r = rng.random()
        if r < 0.2:
            return self.deep(rng.choice((61, 62, 63, 64, 65, 100, 10_000)))
        if r < 0.4:
            return self.tagged()
        if r < 0.5:
            key = rng.choice(
                (b"\x01", b"\xf9\x7e\x00", b"\x80", b"\xa0", b"\xf6", b"\xd8\x25\x50" + bytes(16))
            )
            return Raw(b"\xa1" + key + b"\x00")  # a map key the leader refuses
        if r < 0.6:
            return Pairs((("a", 1), ("a", 2)))
        if r < 0.7:
            return self.bad_utf8()
        if r < 0.8:
            return rng.choice(TOO_BIG_INTS)  # bignums over 1024 bytes
        if r < 0.9:
            return Raw(b"\x9f\x01")  # an indefinite array never closed
        return Raw(
            rng.choice((b"\x1c", b"\xff", b"\x5f\x01\xff", b"\xf8\x10", b"\xc1"))
        )  # reserved / malformed

    ok_any = payload

    def bad_any(self) -> Any:
        return self.bad_payload()


# ---------------------------------------------------------------------------------------
# Messages, bundles and frames


#: (wire key, field name, validator name, required) per message class, in field order.
FIELDS: dict[type, list[tuple[str, str, str, bool]]] = {
    cls: [
        (
            f.metadata["key"],
            f.name,
            getattr(f.validator, "__name__", "_any") if f.validator is not None else "_any",
            f.default is attrs.NOTHING,
        )
        for f in attrs.fields(cls)
    ]
    for cls in protocol.MESSAGE_TYPES.values()
}


#: How often a kind is sent, against 1 for kinds not named (a Bye or an Error ends the
#: session, so they are rarer).
KIND_WEIGHTS = {"Submit": 8, "Result": 5, "Publish": 3, "Progress": 2, "Credit": 2, "Subscribe": 2,
                "Nack": 1.5, "Assign": 2, "Bye": 0.1, "Error": 0.2}  # fmt: skip
ALL_KINDS = list(protocol.MESSAGE_TYPES.values())


def _role_kinds() -> dict[str, tuple[list[type], list[float]]]:
    table = {}
    for role, allowed in protocol.ALLOWED.items():
        kinds = sorted(allowed, key=lambda cls: cls.KIND)
        table[role] = (
            kinds,
            list(itertools.accumulate(KIND_WEIGHTS.get(k.__name__, 1.0) for k in kinds)),
        )
    return table


#: The kinds each role may send, with cumulative weights.
ROLE_KINDS = _role_kinds()

#: Wire key by field name, per message class.
KEYS: dict[type, dict[str, str]] = {
    cls: {name: key for key, name, _, _ in rows} for cls, rows in FIELDS.items()
}


@attrs.define
class Frame:
    """One frame of a hostile script: its bytes, class label and the kinds it holds.

    ``recipe`` rebuilds a frame too large to keep in a dump (see :func:`huge_frame`).
    """

    label: str
    data: bytes
    kinds: tuple[str, ...] = ()
    recipe: list[Any] | None = None


@attrs.define
class Context:
    """What a hostile connection knows while its script runs (shared with its reader)."""

    role: str | None = None
    assigned: list[str] = attrs.field(factory=list)  # job ids the leader assigned to us
    sids: list[int] = attrs.field(factory=list)
    max_frame: int | None = None
    hellos: int = 0


class Grammar:
    """Builds hostile frames: random bytes, random CBOR, and messages that follow (or
    nearly follow) the protocol's grammar."""

    def __init__(self, rng: random.Random, values: Values, ctx: Context) -> None:
        self.rng = rng
        self.v = values
        self.ctx = ctx
        self.mids = itertools.count(1)

    # -- fields with context (ids that exist, sids in use)

    def job_id(self) -> str:
        rng = self.rng
        if self.ctx.assigned and rng.random() < 0.5:
            return rng.choice(self.ctx.assigned[-32:])
        if rng.random() < 0.7:
            return rng.choice(JOB_POOL)
        return self.v.ok_non_empty_str()

    def value(self, cls: type, key: str, name: str, validator: str, hostile: bool) -> Any:
        rng = self.rng
        v = self.v
        if hostile:
            return v.field(validator, True)
        if name == "mid":
            return next(self.mids) if rng.random() < 0.95 else v.ok_uint()
        if name == "job_id":
            return self.job_id()
        if name == "sid":
            sid = rng.randint(0, 7) if rng.random() < 0.95 else v.ok_uint()
            if cls is protocol.Subscribe:
                self.ctx.sids.append(sid)
            elif self.ctx.sids and rng.random() < 0.7:
                sid = rng.choice(self.ctx.sids)
            return sid
        if name == "credit" and rng.random() < 0.8:
            return rng.randint(0, 16)
        if name == "max_frame" and rng.random() < 0.7:
            return None
        if name == "max_frame":
            return rng.choice((1, 5, 16, 40, 100, 1000, 65536, LIMIT, LIMIT + 1, 2**64 - 1))
        if name == "queue" and rng.random() < 0.5:
            return rng.choice((None, "q1", "q2"))
        if name in ("reason", "note", "error_message", "message") and rng.random() < 0.7:
            return rng.choice(("", "x", None if validator == "_opt_str" else ""))
        return v.field(validator, False)

    def wire_map(self, cls: type, *, hostile: bool) -> Any:
        """A message as its map; with ``hostile``, one field (or the map itself) is bad."""
        rng = self.rng
        fields = FIELDS[cls]
        bad = rng.randrange(len(fields) + 3) if hostile else -1
        pairs: list[tuple[Any, Any]] = [("t", cls.KIND)]
        for i, (key, name, validator, required) in enumerate(fields):
            if i == bad:
                if required and rng.random() < 0.2:
                    continue  # a required field missing
                pairs.append((key, self.value(cls, key, name, validator, True)))
            elif required or rng.random() < 0.4:
                pairs.append((key, self.value(cls, key, name, validator, False)))
        if bad == len(fields):  # the tag
            pairs[0] = (
                "t",
                rng.choice((0, 19, 23, 30, 39, 99, -1, 2**64 - 1, 10**30, "3", 3.0, None, True)),
            )
        elif bad == len(fields) + 1:  # a key twice
            pairs.append(rng.choice(pairs))
        elif bad == len(fields) + 2:  # not a map at all, or a non-text key
            return rng.choice((Raw(b"\xa1\x01\x02"), [cls.KIND], self.v.anything(1)))
        if rng.random() < 0.05:  # unknown keys are ignored; their values are payload-like
            pairs.append((self.v.text(rng.randint(1, 6)), self.v.payload(2)))
        if rng.random() < 0.1:
            rng.shuffle(pairs)
        return Pairs(tuple(pairs))

    def wire_array(self, cls: type, *, hostile: bool) -> Any:
        """A message as a bundle item ``[tag, fields...]``; with ``hostile``, a bad one."""
        rng = self.rng
        fields = FIELDS[cls]
        bad = rng.randrange(len(fields) + 4) if hostile else -1
        item: list[Any] = [cls.KIND]
        for i, (key, name, validator, _required) in enumerate(fields):
            item.append(self.value(cls, key, name, validator, i == bad))
        last_required = max(i for i, f in enumerate(fields) if f[3]) + 1
        cut = rng.randint(last_required, len(fields)) + 1
        if bad == len(fields):  # a required field missing
            cut = rng.randint(1, last_required)
        if bad == len(fields) + 1:  # more fields than the kind has
            return item + [None] * rng.randint(1, 3)
        item = item[:cut]
        if bad == len(fields) + 2:
            item[0] = rng.choice(("3", 3.0, None, -1, 19, 2**64, 10**30, [3]))
        elif bad == len(fields) + 3:
            return rng.choice(({"t": cls.KIND}, [], 3, "x", [[cls.KIND]]))
        return item

    def kind_for(self, role: str | None) -> type:
        """Mostly a kind this role may send (the usual ones more often); sometimes any kind
        at all (a second Hello, a Welcome...)."""
        rng = self.rng
        if role in ROLE_KINDS and rng.random() < 0.97:
            kinds, cumulative = ROLE_KINDS[role]
            return rng.choices(kinds, cum_weights=cumulative)[0]
        return rng.choice(ALL_KINDS)

    # -- frames

    def message_frame(self, role: str | None, bad_rate: float) -> Frame:
        cls = self.kind_for(role)
        hostile = self.rng.random() < bad_rate
        body = enc(self.wire_map(cls, hostile=hostile))
        return self._maybe_compressed(Frame("message", frame(body), (cls.__name__,)))

    def bundle_frame(self, role: str | None, bad_rate: float) -> Frame:
        rng = self.rng
        count = (
            rng.choice((1, 2, 2, 3, 4, 5, 8, 8, 16, 32))
            if rng.random() < 0.995
            else rng.choice((100, 4096))
        )
        items: list[Any] = []
        kinds: list[str] = []
        if count == 4096 and rng.random() < 0.5:  # the most a bundle may hold, then one more
            items = [[protocol.Ping.KIND, i] for i in range(rng.choice((4096, 4097)))]
            count = 0
            kinds = ["Ping"] * len(items)
        elif count == 4096 or rng.random() < 0.001:
            return self.flood_frame(role)
        for _ in range(count):
            cls = self.kind_for(role)
            items.append(self.wire_array(cls, hostile=rng.random() < bad_rate))
            kinds.append(cls.__name__)
        if rng.random() < 0.02:
            items = []  # an empty bundle
        body = (
            enc(items)
            if rng.random() < 0.97
            else b"\x9f" + b"".join(enc(i) for i in items) + b"\xff"
        )
        return self._maybe_compressed(Frame("bundle", frame(body), tuple(kinds)))

    def flood_frame(self, role: str | None) -> Frame:
        """A bundle of one valid message many times over (fresh mids): what one small frame
        makes the leader do, times thousands (a Query, a Publish to many subscribers...)."""
        rng = self.rng
        cls = self.kind_for(role)
        item = self.wire_array(cls, hostile=False)
        count = rng.choice((256, 1024, 4096))
        # The fields after the mid are encoded once (encoding the list of copies would walk
        # a large payload thousands of times: seconds during which this script, and so the
        # good client's calls, stand still), and the copies stop just past the frame limit.
        rest = b"".join(enc(v) for v in item[2:])
        count = min(count, LIMIT // max(len(rest), 1) + 1)
        first = head(4, len(item)) + enc(item[0])
        body = head(4, count) + b"".join(first + enc(i) + rest for i in range(1, count + 1))
        return Frame("bundle", frame(body), (cls.__name__,) * count)

    def _maybe_compressed(self, f: Frame) -> Frame:
        if self.rng.random() < 0.03:
            f.data = compressed(f.data[protocol.HEADER_SIZE :])
        return f

    def hello(self, role: str, *, hostile: bool) -> Frame:
        """A Hello in ``role``: a worker's with patterns (none matching the good client's
        subject), credit, group and routing; any other field now and then; with
        ``hostile``, one field bad."""
        cls = protocol.Hello
        rng = self.rng
        v = self.v
        chosen: dict[str, Any] = {"mid": 0, "role": role, "versions": [2, 1]}
        if rng.random() < 0.15:
            chosen["versions"] = v.ok_int_tuple()
        if role == "worker":
            chosen["patterns"] = v.ok_patterns()
            chosen["credit"] = (
                rng.choice((0, 1, 2, 4, 8, 64, 1000, 2**64 - 1))
                if rng.random() < 0.3
                else rng.randint(1, 8)
            )
            chosen["group"] = rng.choice((None, "fz", "fz2", v.text(3)))
            chosen["meta"] = v.ok_any_map()
        wire: dict[str, Any] = {"t": cls.KIND}
        for key, name, validator, _required in FIELDS[cls]:
            if name in chosen:
                wire[key] = chosen[name]
            elif rng.random() < 0.2:
                wire[key] = self.value(cls, key, name, validator, False)
        if hostile:
            key, name, validator, _ = rng.choice(FIELDS[cls])
            wire[key] = self.value(cls, key, name, validator, True)
        mf = wire.get(KEYS[cls]["max_frame"]) if "max_frame" in KEYS[cls] else None
        if type(mf) is int and 1 <= mf <= 2**64 - 1 and not self.ctx.hellos:
            self.ctx.max_frame = mf  # (what the leader answers a later Hello is not bound by it)
        self.ctx.hellos += 1
        return Frame("message", frame(enc(wire)), ("Hello",))

    def random_bytes(self) -> Frame:
        rng = self.rng
        r = rng.random()
        if r < 0.4:
            data = rng.randbytes(rng.choice((1, 4, 5, 6, 100, 4096, 70_000)))
        elif r < 0.6:
            n = rng.randint(1, 200)
            data = frame(rng.randbytes(n), rng.choice((0, 0, 1, 2, 0x80, 0xFF)))
        elif r < 0.8:  # a header announcing something, then less than that
            data = struct.pack(
                ">IB", rng.choice((0, 1, LIMIT, LIMIT + 1, 2**32 - 1)), rng.randrange(2)
            ) + rng.randbytes(rng.randint(0, 64))
        else:  # a compressed body that is not zlib, or is truncated
            body = zlib.compress(enc({"t": 15, "i": 1}))
            data = frame(rng.choice((rng.randbytes(20), body[:-3], body + b"xx", b"")), 1)
        return Frame("bytes", data)

    def random_cbor(self) -> Frame:
        rng = self.rng
        r = rng.random()
        if r < 0.5:
            tag = rng.choice([*list(protocol.MESSAGE_TYPES), 0, 19, 99])
            item: Any = {"t": tag}
            for _ in range(rng.randint(0, 6)):
                item[rng.choice(("i", "j", "s", "p", "c", "role", "v", "q", self.v.text(2)))] = (
                    self.v.anything(2)
                )
        elif r < 0.7:
            item = [self.v.anything(2) for _ in range(rng.randint(0, 5))]
        elif r < 0.8:
            item = Raw(enc(self.v.anything(2)) + enc(self.v.anything(1)))  # two items
        elif r < 0.9:
            item = Raw(
                head(rng.choice((2, 3, 4, 5)), rng.choice((10, 2**31, 2**63))) + rng.randbytes(8)
            )  # truncated
        else:
            item = self.v.anything(3)
        return Frame("cbor", frame(enc(item)))


def huge_frame(recipe: list[Any]) -> Frame:
    """A frame near the 16 MiB limit, rebuilt from its recipe (kept in dumps instead)."""
    kind, delta = recipe
    if kind == "bomb":  # zlib of zeros inflating to LIMIT + delta bytes
        body = zlib.compress(b"\xa2at\x0faiS" + b"\x00" * (LIMIT + delta), 9)
        return Frame("huge", frame(body, protocol.FLAG_COMPRESSED), ("Ping",), recipe)
    if kind == "header":  # announced just over the limit; only the header is sent
        return Frame("huge", struct.pack(">IB", LIMIT + delta, 0), (), recipe)
    # A Publish (or Submit) whose body is LIMIT + delta bytes (delta <= 0: just fits).
    if kind == "publish":
        prefix = {"t": 10, "i": 1, "s": "fz.huge"}
    else:
        prefix = {"t": 3, "i": 1, "j": f"fz-huge-{delta}", "s": "fz.huge", "to": 0.5}
    head_part = enc(prefix)[1:]
    overhead = 1 + len(head_part) + 1 + 5  # map head, pairs, key "p", bytes head (4-byte length)
    n = LIMIT + delta - overhead - 1
    body = (
        bytes((0xA0 | (len(prefix) + 1),))
        + head_part
        + b"\x61p"
        + b"\x5a"
        + n.to_bytes(4, "big")
        + b"\x00" * n
    )
    return Frame("huge", frame(body), ("Publish" if kind == "publish" else "Submit",), recipe)


def script(seed: int, index: int, args: argparse.Namespace, ctx: Context) -> Iterator[Frame]:
    """The frames hostile connection ``index`` sends: a function of the seed and index
    (and, for a worker, of the job ids the leader assigned it, see :class:`Context`)."""
    rng = random.Random(f"{seed}:{index}")
    values = Values(rng)
    g = Grammar(rng, values, ctx)
    r = rng.random()
    if r < 0.04:
        for _ in range(rng.randint(1, 3)):
            if rng.random() < 0.5:
                yield g.hello(rng.choice(ROLES), hostile=False)
            yield g.random_bytes()
        return
    if r < 0.10:
        if rng.random() < 0.7:
            yield g.hello(rng.choice(ROLES), hostile=False)
        for _ in range(rng.randint(1, 4)):
            yield g.random_cbor()
        return
    role = rng.choices(ROLES, weights=(40, 35, 10, 15))[0]
    ctx.role = role
    opening = rng.random()
    if opening < 0.04:
        ctx.role = None  # no Hello: the first message is something else
    elif opening < 0.10:
        yield g.hello(role, hostile=True)
    else:
        yield g.hello(role, hostile=False)
    # Most sessions are short (a bad message ends them); some go on long and valid.
    long_valid = rng.random() < 0.25
    bad_rate = 0.002 if long_valid else rng.choice((0.01, 0.02, 0.05))
    length = rng.randint(50, 600) if long_valid else rng.randint(1, 60)
    for _ in range(length):
        if rng.random() < 1 / args.huge_every:
            yield huge_frame(
                [
                    rng.choice(("publish", "submit", "bomb", "header")),
                    rng.choice((-1, 0, 1, -100, 1000)),
                ]
            )
            continue
        if rng.random() < 0.3:
            yield g.bundle_frame(ctx.role, bad_rate)
        else:
            yield g.message_frame(ctx.role, bad_rate)
    # The end: Bye, a closing Error or a Ping (whose Pong says the leader has handled
    # everything before it), each waited for; or nothing (the connection is just dropped).
    end = rng.random()
    if end < 0.45:
        yield Frame("end", frame(enc({"t": 18, "i": next(g.mids), "why": "fuzz"})), ("Bye",))
    elif end < 0.50:
        yield Frame(
            "end", frame(enc({"t": 17, "i": next(g.mids), "code": "bad_field"})), ("Error",)
        )
    elif end < 0.90:
        yield Frame("end", frame(enc({"t": 15, "i": next(g.mids)})), ("Ping",))


# ---------------------------------------------------------------------------------------
# The cluster under test


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


#: Runs ``python -m actors.cluster`` with faulthandler on SIGUSR1, so that a hung leader
#: can be asked for its stacks (and fatal signals print them too: ``-X faulthandler``).
LAUNCH = (
    "import faulthandler, runpy, signal, sys;"
    "faulthandler.register(signal.SIGUSR1, all_threads=True);"
    "runpy.run_module('actors.cluster', run_name='__main__', alter_sys=True)"
)


class Cluster:
    """``python -m actors.cluster`` as a child process (in its own process group), on
    fixed loopback ports so that a restart keeps the URLs; logs in ``log_dir``."""

    def __init__(self, log_dir: Path, workers: int) -> None:
        self.log_dir = log_dir
        self.workers = workers
        self.tcp_url = f"tcp://127.0.0.1:{free_port()}"
        self.ws_url = f"ws://127.0.0.1:{free_port()}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.pids: list[int] = []

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def argv(self) -> list[str]:
        return [
            sys.executable, "-X", "faulthandler", "-c", LAUNCH,
            "--listen", self.tcp_url, "--listen", self.ws_url,
            "--worker", f"{WORKER_SPEC}={self.workers}", "--drain-grace", "1",
        ]  # fmt: skip

    def command(self) -> str:
        return (
            f"python -m actors.cluster --listen {self.tcp_url} --listen {self.ws_url}"
            f" --worker {WORKER_SPEC}={self.workers} --drain-grace 1"
        )

    def _path(self, stream: str) -> Path:
        return self.log_dir / f"cluster-{self.starts}.{stream}"

    def _spawn(self, env: dict[str, str]) -> subprocess.Popen[bytes]:
        """Create the log files and start the process (blocking: run in a thread)."""
        with open(self._path("out"), "wb") as out, open(self._path("err"), "wb") as err:
            return subprocess.Popen(
                self.argv(), stdout=out, stderr=err, stdin=subprocess.DEVNULL, cwd=ROOT, env=env,
                start_new_session=True,
            )  # fmt: skip

    async def start(self) -> None:
        """Start the cluster and wait for its ``cluster ready`` line."""
        import trio

        self.starts += 1
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
        env["PYTHONUNBUFFERED"] = "1"
        self.proc = await trio.to_thread.run_sync(self._spawn, env)
        self.pids.append(self.proc.pid)
        deadline = time.monotonic() + START_TIMEOUT
        out = trio.Path(self._path("out"))
        while "cluster ready" not in await out.read_text(errors="replace"):
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"the cluster exited with status {self.proc.returncode}:\n{self.tail()}"
                )
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"the cluster was not ready within {START_TIMEOUT} s:\n{self.tail()}"
                )
            await trio.sleep(0.05)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def tail(self, lines: int = 40) -> str:
        """The last lines of the current incarnation's stderr."""
        path = self._path("err")
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def rss(self) -> tuple[int, int] | None:
        return read_rss(self.pid) if self.alive() else None

    def kill(self) -> None:
        """SIGKILL the whole process group (the leader and its workers)."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> int | None:
        """SIGINT (a graceful stop), then SIGKILL the group after :data:`STOP_TIMEOUT`."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(STOP_TIMEOUT)
        status = self.proc.poll()
        self.kill()
        return status


def read_rss(pid: int | None) -> tuple[int, int] | None:
    """(VmRSS, VmHWM) of ``pid`` in KiB, from /proc/PID/status."""
    if pid is None:
        return None
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    try:
        return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])
    except (KeyError, ValueError, IndexError):
        return None


# ---------------------------------------------------------------------------------------
# Bookkeeping


@attrs.define
class Tally:
    """Everything counted during a run."""

    frames: collections.Counter[str] = attrs.field(factory=collections.Counter)
    kinds: collections.Counter[str] = attrs.field(factory=collections.Counter)
    bytes_sent: int = 0
    connections: collections.Counter[str] = attrs.field(factory=collections.Counter)
    connect_failures: int = 0
    answers: collections.Counter[str] = attrs.field(factory=collections.Counter)
    error_codes: collections.Counter[str] = attrs.field(factory=collections.Counter)
    anomalies: collections.Counter[str] = attrs.field(factory=collections.Counter)
    anomaly_examples: dict[str, str] = attrs.field(factory=dict)
    driver_errors: collections.Counter[str] = attrs.field(factory=collections.Counter)
    outcomes: collections.Counter[str] = attrs.field(factory=collections.Counter)
    internal_dumps: list[str] = attrs.field(factory=list)
    #: What the leader's Errors said, digits and quoted values masked (bounded).
    reasons: collections.Counter[str] = attrs.field(factory=collections.Counter)

    def reason(self, code: str, message: str) -> None:
        text = re.sub(r"'[^']*'|\"[^\"]*\"|<[^>]*>", "'…'", message)
        text = re.sub(r"\d+", "#", text)[:90]
        key = f"{code}: {text}"
        if key in self.reasons or len(self.reasons) < 500:
            self.reasons[key] += 1

    connection_seconds: float = 0.0

    def anomaly(self, what: str, example: str) -> None:
        self.anomalies[what] += 1
        self.anomaly_examples.setdefault(what, example[:300])

    @property
    def total_frames(self) -> int:
        return sum(self.frames.values())


@attrs.define
class Budget:
    """The run's bounds: frames and seconds."""

    frames: int
    deadline: float
    sent: int = 0

    @property
    def exhausted(self) -> bool:
        return self.sent >= self.frames or time.monotonic() >= self.deadline


@attrs.define
class Record:
    """The frames one hostile connection sent (the most recent ``KEEP_BYTES`` of them)."""

    index: int
    transport: str
    role: str | None = None
    frames: collections.deque[Frame] = attrs.field(factory=collections.deque)
    kept: int = 0
    sent: int = 0
    last_sent: float = 0.0
    outcome: str = "open"

    def add(self, f: Frame) -> None:
        self.sent += 1
        self.last_sent = time.monotonic()
        self.frames.append(f)
        self.kept += min(len(f.data), KEEP_FRAME)
        while self.kept > KEEP_BYTES and len(self.frames) > 1:
            self.kept -= min(len(self.frames.popleft().data), KEEP_FRAME)

    def to_json(self) -> dict[str, Any]:
        frames = []
        for f in self.frames:
            entry: dict[str, Any] = {"label": f.label, "kinds": list(f.kinds), "len": len(f.data)}
            if f.recipe is not None:
                entry["recipe"] = f.recipe
            elif len(f.data) <= KEEP_FRAME:
                entry["hex"] = f.data.hex()
            else:
                entry["sha256"] = hashlib.sha256(f.data).hexdigest()
                entry["prefix_hex"] = f.data[:256].hex()
            frames.append(entry)
        return {
            "index": self.index, "transport": self.transport, "role": self.role,
            "frames_sent": self.sent, "frames_kept": len(self.frames), "outcome": self.outcome,
            "frames": frames,
        }  # fmt: skip


class Recorder:
    """The hostile connections open now and the last ones to finish, for crash dumps."""

    def __init__(self) -> None:
        self.active: dict[int, Record] = {}
        self.recent: collections.deque[Record] = collections.deque(maxlen=KEEP_RECENT)

    def open(self, index: int, transport: str) -> Record:
        record = self.active[index] = Record(index, transport)
        return record

    def close(self, record: Record) -> None:
        self.active.pop(record.index, None)
        self.recent.append(record)

    def suspects(self) -> list[Record]:
        """Every kept connection, the one that sent last first."""
        records = list(self.active.values()) + list(self.recent)
        return sorted(records, key=lambda r: r.last_sent, reverse=True)


def describe_frame(f: Frame, limit: int = 200) -> str:
    data = f.data
    shown = data[:limit].hex() + ("..." if len(data) > limit else "")
    recipe = f" recipe={f.recipe}" if f.recipe else ""
    return f"{f.label:7} {','.join(f.kinds)[:60]:20} {len(data):>9} B{recipe} {shown}"


# ---------------------------------------------------------------------------------------
# What the leader sends back


class LeaderReader:
    """Splits what the leader sends into frames, decodes them and counts what they hold."""

    def __init__(self, ctx: Context, tally: Tally) -> None:
        self.ctx = ctx
        self.tally = tally
        self.buffer = bytearray()
        self.decoder = protocol.FrameDecoder(max_frame_size=READ_LIMIT)
        self.welcomed = False
        self.broken = False
        self.pong: Any = None  # a trio.Event set at the first Pong
        self.ended: Any = None  # a trio.Event set when the leader ends the session
        self.internal: str | None = None  # the message of an ``internal`` Error, if one came

    def feed(self, data: bytes | bytearray) -> None:
        if self.broken:
            return
        buffer = self.buffer
        buffer += data
        while len(buffer) >= protocol.HEADER_SIZE:
            length, _flags = struct.unpack_from(">IB", buffer)
            if length > READ_LIMIT:
                self.tally.anomaly("leader frame over 64 MiB", f"length {length}")
                self.broken = True
                return
            end = protocol.HEADER_SIZE + length
            if len(buffer) < end:
                return
            whole = bytes(buffer[:end])
            del buffer[:end]
            self.frame(whole)

    def frame(self, whole: bytes) -> None:
        try:
            messages = self.decoder.feed(whole)
        except protocol.ProtocolError as exc:
            self.tally.anomaly("leader frame we cannot decode", f"{exc!r}: {whole[:120].hex()}")
            self.broken = True
            return
        kinds = [type(m).__name__ for m in messages]
        limit = self.ctx.max_frame
        body = len(whole) - protocol.HEADER_SIZE
        if self.welcomed and limit is not None and body > limit:
            self.tally.anomaly(
                f"leader frame over the peer's max_frame ({kinds[0] if kinds else '?'})",
                f"{body} bytes > max_frame {limit}: {kinds[:5]}",
            )
        for message in messages:
            kind = type(message)
            self.tally.answers[kind.__name__] += 1
            if kind is protocol.Welcome:
                self.welcomed = True
            elif kind is protocol.Pong and self.pong is not None:
                self.pong.set()
            elif kind is protocol.Bye and self.ended is not None:
                self.ended.set()
            elif kind is protocol.Error:
                self.tally.error_codes[message.code] += 1
                self.tally.reason(message.code, message.message)
                if protocol.ErrorCode.closes_connection(message.code) and self.ended is not None:
                    self.ended.set()  # it lingers until we close
                if message.code == protocol.ErrorCode.INTERNAL:
                    self.tally.anomaly("leader answered internal", message.message)
                    self.internal = message.message
            elif kind is protocol.Assign:
                assigned = self.ctx.assigned
                assigned.append(message.job_id)
                if len(assigned) > 64:
                    del assigned[:32]


# ---------------------------------------------------------------------------------------
# Hostile connections


async def hostile_connection(
    index: int, args: argparse.Namespace, urls: dict[str, str], tally: Tally,
    recorder: Recorder, budget: Budget,
) -> None:  # fmt: skip
    """Open connection ``index`` (TCP or WebSocket), send its script, read the answers."""
    import trio

    wire_rng = random.Random(f"{args.seed}:{index}:wire")
    transport = "ws" if wire_rng.random() < args.ws_share else "tcp"
    ctx = Context()
    frames = script(args.seed, index, args, ctx)
    record = recorder.open(index, transport)
    reader = LeaderReader(ctx, tally)
    started = time.monotonic()
    try:
        with trio.move_on_after(args.conn_seconds):
            if transport == "tcp":
                await _run_tcp(urls["tcp"], frames, wire_rng, reader, tally, record, budget)
            else:
                await _run_ws(urls["ws"], frames, wire_rng, reader, tally, record, budget)
    except Exception as exc:
        tally.driver_errors[f"{type(exc).__name__}: {exc}"[:200]] += 1
        record.outcome = f"driver error {exc!r}"[:200]
    finally:
        record.role = ctx.role
        recorder.close(record)
        if reader.internal is not None:
            dump_internal(record, reader.internal, args, tally)
        tally.outcomes[record.outcome] += 1
        tally.connection_seconds += time.monotonic() - started


def dump_internal(record: Record, message: str, args: argparse.Namespace, tally: Tally) -> None:
    """Keep the frames of a connection the leader answered ``internal`` (a bug it
    contained: a handler raised), for ``--replay``; the first ``MAX_INTERNAL_DUMPS``."""
    if len(tally.internal_dumps) >= MAX_INTERNAL_DUMPS:
        return
    path = Path(args.dump_dir) / f"fuzz-internal-{record.index}.json"
    dump = {
        "seed": args.seed,
        "kind": "internal",
        "error": message,
        "connections": [record.to_json()],
    }
    path.write_text(json.dumps(dump, indent=1))
    tally.internal_dumps.append(str(path))


def _sent(f: Frame, tally: Tally, record: Record, budget: Budget) -> None:
    tally.frames[f.label] += 1
    tally.kinds.update(f.kinds)
    tally.bytes_sent += len(f.data)
    record.add(f)
    budget.sent += 1


def _ends_politely(f: Frame | None) -> bool:
    """Whether the script ended with a Bye, an Error or a Ping: the leader then closes (or
    answers Pong) once it has handled everything before it, so it is worth waiting for."""
    return f is not None and f.label == "end"


def _syncs(f: Frame | None) -> bool:
    return f is not None and f.label == "end" and f.kinds == ("Ping",)


async def _run_tcp(
    url: str, frames: Iterator[Frame], wire_rng: random.Random, reader: LeaderReader,
    tally: Tally, record: Record, budget: Budget,
) -> None:  # fmt: skip
    import trio

    port = urlsplit(url).port
    assert port is not None
    try:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
    except OSError:
        tally.connect_failures += 1
        record.outcome = "connect failed"
        return
    tally.connections["tcp"] += 1
    closed = reader.ended = trio.Event()
    pong = reader.pong = trio.Event()
    reads = wire_rng.random() >= 0.03  # a few never read: the leader's slow-consumer path
    trickle = wire_rng.random() < 0.02  # a few cut their first frames into tiny writes
    last: Frame | None = None

    async def read() -> None:
        try:
            while True:
                data = await stream.receive_some(CHUNK)
                if not data:
                    break
                reader.feed(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            closed.set()

    async with trio.open_nursery() as nursery:
        if reads:
            nursery.start_soon(read)
        try:
            batch: list[Frame] = []
            size = 0
            for f in frames:
                if closed.is_set() or budget.exhausted:
                    break
                if trickle and record.sent < 2:
                    for i in range(0, len(f.data), 3):
                        await stream.send_all(f.data[i : i + 3])
                    _sent(f, tally, record, budget)
                    last = f
                    continue
                batch.append(f)
                size += len(f.data)
                if size >= CHUNK or wire_rng.random() < 0.2:
                    await stream.send_all(b"".join(x.data for x in batch))
                    for x in batch:
                        _sent(x, tally, record, budget)
                    last = batch[-1]
                    batch, size = [], 0
            if batch and not closed.is_set():
                await stream.send_all(b"".join(x.data for x in batch))
                for x in batch:
                    _sent(x, tally, record, budget)
                last = batch[-1]
            if reads:
                with trio.move_on_after(CLOSE_WAIT if _ends_politely(last) else QUIET_WAIT):
                    await (pong if _syncs(last) else closed).wait()
            record.outcome = "closed by leader" if closed.is_set() else "closed by us"
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            record.outcome = "reset by leader"
        finally:
            if wire_rng.random() < 0.3:  # an abortive close (RST) now and then
                with contextlib.suppress(OSError):
                    stream.socket.setsockopt(
                        socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                    )
            await stream.aclose()
            nursery.cancel_scope.cancel()


async def _run_ws(
    url: str, frames: Iterator[Frame], wire_rng: random.Random, reader: LeaderReader,
    tally: Tally, record: Record, budget: Budget,
) -> None:  # fmt: skip
    import trio
    import trio_websocket

    closed = reader.ended = trio.Event()
    pong = reader.pong = trio.Event()
    last: Frame | None = None
    async with trio.open_nursery() as nursery:
        try:
            with trio.fail_after(PROBE_TIMEOUT):
                ws = await trio_websocket.connect_websocket_url(
                    nursery, url, message_queue_size=4, max_message_size=READ_LIMIT
                )
        except (
            OSError,
            trio.TooSlowError,
            trio_websocket.HandshakeError,
            trio_websocket.ConnectionClosed,
        ):
            tally.connect_failures += 1
            record.outcome = "connect failed"
            nursery.cancel_scope.cancel()
            return
        tally.connections["ws"] += 1

        async def read() -> None:
            try:
                while True:
                    data = await ws.get_message()
                    if isinstance(data, str):
                        tally.anomaly("leader sent a text WebSocket message", data[:100])
                        continue
                    reader.feed(data)
            except trio_websocket.ConnectionClosed:
                pass
            finally:
                closed.set()

        nursery.start_soon(read)
        try:
            for f in frames:
                if closed.is_set() or budget.exhausted:
                    break
                r = wire_rng.random()
                if r < 0.003:
                    await ws.send_message(f.data.decode("latin-1"))  # a text message
                elif r < 0.006:
                    await ws.send_message(f.data + f.data)  # two frames in one message
                elif r < 0.009 and len(f.data) > 1:
                    await ws.send_message(f.data[: len(f.data) // 2])  # half a frame
                else:
                    await ws.send_message(f.data)
                _sent(f, tally, record, budget)
                last = f
            with trio.move_on_after(CLOSE_WAIT if _ends_politely(last) else QUIET_WAIT):
                await (pong if _syncs(last) else closed).wait()
            record.outcome = "closed by leader" if closed.is_set() else "closed by us"
        except trio_websocket.ConnectionClosed:
            record.outcome = "closed by leader"
        finally:
            with trio.move_on_after(1.0):
                with contextlib.suppress(
                    trio_websocket.ConnectionClosed,
                    trio.BrokenResourceError,
                    trio.ClosedResourceError,
                ):
                    await ws.aclose()
            nursery.cancel_scope.cancel()


# ---------------------------------------------------------------------------------------
# The well-behaved client


@attrs.define
class GoodStats:
    ok: int = 0
    failed: collections.Counter[str] = attrs.field(factory=collections.Counter)
    latencies: list[float] = attrs.field(factory=list)
    #: (seconds, started at, outcome) of the slowest calls (ok or not), for the report: to
    #: be read with the driver's own stalls (see DriverLag), which they include.
    slowest: list[tuple[float, float, str]] = attrs.field(factory=list)
    origin: float = attrs.field(factory=time.monotonic)

    def timed(self, started: float, outcome: str) -> None:
        """Keep the call that started at ``started`` (time.monotonic) if among the slowest."""
        took = time.monotonic() - started
        if len(self.slowest) < SLOWEST_KEPT or took > self.slowest[-1][0]:
            self.slowest.append((took, started - self.origin, outcome))
            self.slowest.sort(reverse=True)
            del self.slowest[SLOWEST_KEPT:]

    @property
    def total_failed(self) -> int:
        return sum(self.failed.values())

    def summary(self) -> dict[str, Any]:
        done = self.ok + self.total_failed
        lat = sorted(self.latencies)
        return {
            "ok": self.ok, "failed": self.total_failed, "failed_by": dict(self.failed),
            "success_rate": self.ok / done if done else math.nan,
            "p50_ms": percentile(lat, 0.50) * 1e3, "p99_ms": percentile(lat, 0.99) * 1e3,
            "max_ms": lat[-1] * 1e3 if lat else math.nan,
            "slowest": [{"ms": round(t * 1e3), "at_s": round(at, 1), "outcome": o} for t, at, o in self.slowest],
        }  # fmt: skip


@attrs.define
class DriverLag:
    """How late this script's own event loop ran: the good client, the probes and the
    hostile connections all share it, so a frame that took the driver long to build
    delays the good client's calls as a slow leader would. Lags over ``LAG_REPORTED``
    seconds are kept (with when they began), to tell the two apart in the report."""

    origin: float = attrs.field(factory=time.monotonic)
    longest: float = 0.0
    total: float = 0.0
    count: int = 0
    examples: list[tuple[float, float]] = attrs.field(factory=list)
    #: the cyclic garbage collector's pauses (one cause of the driver's own stalls)
    gc_longest: float = 0.0
    gc_total: float = 0.0
    _gc_started: float = 0.0

    def _gc(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._gc_started = time.perf_counter()
        else:
            took = time.perf_counter() - self._gc_started
            self.gc_total += took
            self.gc_longest = max(self.gc_longest, took)

    async def watch(self) -> None:
        import gc

        import trio

        gc.callbacks.append(self._gc)
        try:
            while True:
                before = time.monotonic()
                await trio.sleep(LAG_TICK)
                late = time.monotonic() - before - LAG_TICK
                if late > LAG_REPORTED:
                    self.count += 1
                    self.total += late
                    self.longest = max(self.longest, late)
                    if len(self.examples) < SLOWEST_KEPT:
                        self.examples.append((round(before - self.origin, 1), round(late, 2)))
        finally:
            gc.callbacks.remove(self._gc)

    def summary(self) -> dict[str, Any]:
        return {
            "over_s": LAG_REPORTED, "count": self.count, "longest_s": round(self.longest, 2),
            "total_s": round(self.total, 2), "examples": self.examples,
            "gc_longest_s": round(self.gc_longest, 3), "gc_total_s": round(self.gc_total, 2),
        }  # fmt: skip


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The nearest-rank ``q`` quantile of already sorted values (NaN if none)."""
    if not sorted_values:
        return math.nan
    return sorted_values[max(1, math.ceil(q * len(sorted_values))) - 1]


async def good_client(
    url: str, args: argparse.Namespace, stats: GoodStats, stop: Any, jobs: int | None = None
) -> None:
    """Submit ``math.square`` jobs (QoS 1, ``--good-inflight`` at once) until ``stop`` is
    set (or ``jobs`` are done); each checks its answer and is timed."""
    import trio

    from actors import Busy, Client, ClientError

    numbers = itertools.count(1)
    remaining = [jobs if jobs is not None else math.inf]

    async def loop() -> None:
        while not stop.is_set() and remaining[0] > 0:
            remaining[0] -= 1
            n = next(numbers)
            start = time.perf_counter()
            started = time.monotonic()
            try:
                answer = await client.submit(
                    GOOD_SUBJECT, {"n": n}, qos=1, timeout=args.job_timeout
                )
            except Busy as exc:
                stats.failed["Busy"] += 1
                stats.timed(started, "Busy")
                await trio.sleep(min(exc.retry_after or 0.1, 1.0))
                continue
            except ClientError as exc:
                stats.failed[type(exc).__name__] += 1
                stats.timed(started, type(exc).__name__)
                continue
            stats.timed(started, "ok")
            if answer == {"square": n * n}:
                stats.ok += 1
                stats.latencies.append(time.perf_counter() - start)
            else:
                stats.failed["WrongAnswer"] += 1

    try:
        async with Client.connect(url, name="fuzz-good") as client:
            async with trio.open_nursery() as nursery:
                for _ in range(args.good_inflight):
                    nursery.start_soon(loop)
    except ClientError as exc:  # could not connect at all
        stats.failed[f"connect: {type(exc).__name__}"] += 1


async def wait_for_workers(url: str, timeout: float = START_TIMEOUT) -> None:
    """Return once a job on the good client's subject succeeds (the workers are connected)."""
    import trio

    from actors import Client, ClientError

    with trio.fail_after(timeout):
        async with Client.connect(url, name="fuzz-warmup") as client:
            while True:
                try:
                    await client.submit(GOOD_SUBJECT, {"n": 2}, qos=1, timeout=2.0)
                    return
                except ClientError:
                    await trio.sleep(0.1)


# ---------------------------------------------------------------------------------------
# Watching the leader


async def probe(url: str) -> bool:
    """Whether the listener at ``url`` answers a Hello with a Welcome within PROBE_TIMEOUT."""
    import trio
    import trio_websocket

    hello = protocol.encode(
        protocol.Hello(mid=0, role="observer", name="fuzz-probe", versions=(2, 1))
    )
    decoder = protocol.FrameDecoder()
    with trio.move_on_after(PROBE_TIMEOUT):
        try:
            if url.startswith("ws://"):
                async with trio.open_nursery() as nursery:
                    ws = await trio_websocket.connect_websocket_url(
                        nursery, url, max_message_size=READ_LIMIT
                    )
                    await ws.send_message(hello)
                    answer = decoder.feed(await ws.get_message())
                    nursery.cancel_scope.cancel()
            else:
                port = urlsplit(url).port
                assert port is not None
                stream = await trio.open_tcp_stream("127.0.0.1", port)
                async with stream:
                    await stream.send_all(hello)
                    answer = []
                    while not answer:
                        data = await stream.receive_some(CHUNK)
                        if not data:
                            return False
                        answer = decoder.feed(data)
        except (OSError, protocol.ProtocolError, trio.BrokenResourceError, trio_websocket.HandshakeError,
                trio_websocket.ConnectionClosed):  # fmt: skip
            return False
        return bool(answer) and type(answer[0]) is protocol.Welcome
    return False


@attrs.define
class Leader:
    """The leader under test, as the driver sees it: up or down, its crashes, its RSS."""

    urls: dict[str, str]
    cluster: Cluster | None
    pid: int | None
    up: Any = None  # trio.Event, set while the leader is up
    crashes: list[dict[str, Any]] = attrs.field(factory=list)
    rss_samples: list[tuple[float, int]] = attrs.field(factory=list)
    incarnations: list[dict[str, Any]] = attrs.field(factory=list)

    def current_pid(self) -> int | None:
        return self.cluster.pid if self.cluster is not None else self.pid

    def alive(self) -> bool:
        if self.cluster is not None:
            return self.cluster.alive()
        return self.pid is None or read_rss(self.pid) is not None


async def watchdog(
    leader: Leader, args: argparse.Namespace, tally: Tally, recorder: Recorder, log_dir: Path
) -> None:
    """Probe the leader; on a crash or hang dump the suspects and restart the cluster."""
    import trio

    last_ok = time.monotonic()
    turn = itertools.cycle(("tcp", "ws"))
    while True:
        await trio.sleep(args.probe_every)
        rss = read_rss(leader.current_pid())
        if rss is not None:
            leader.rss_samples.append((time.monotonic(), rss[0]))
        if not leader.alive():
            await on_crash(leader, "exit", args, tally, recorder, log_dir)
            last_ok = time.monotonic()
            continue
        if await probe(leader.urls[next(turn)]):
            last_ok = time.monotonic()
        elif time.monotonic() - last_ok > args.hang_seconds:
            await on_crash(leader, "hang", args, tally, recorder, log_dir)
            last_ok = time.monotonic()


async def on_crash(
    leader: Leader,
    kind: str,
    args: argparse.Namespace,
    tally: Tally,
    recorder: Recorder,
    log_dir: Path,
) -> None:
    """Record a crash (the frames of the suspect connections, the leader's stderr) and
    restart the cluster when this driver started it."""
    import trio

    leader.up = trio.Event()  # the hostile loop waits on this until the restart
    cluster = leader.cluster
    status = None
    if cluster is not None and kind == "hang" and cluster.alive():
        with contextlib.suppress(ProcessLookupError):
            os.kill(cluster.proc.pid, signal.SIGUSR1)  # type: ignore[union-attr]  # faulthandler: stacks to stderr
        await trio.sleep(1.0)
    if cluster is not None:
        status = cluster.proc.poll() if cluster.proc is not None else None
        stderr = cluster.tail(60)
        end_rss = leader.rss_samples[-1][1] if leader.rss_samples else None
        leader.incarnations.append(
            {"pid": cluster.pid, "end": kind, "status": status, "last_rss_kib": end_rss}
        )
    else:
        stderr = "(attached: the leader's stderr is not ours to read)"
    number = len(leader.crashes) + 1
    suspects = recorder.suspects()
    dump = {
        "seed": args.seed, "crash": number, "kind": kind, "status": status,
        "time": time.strftime("%Y-%m-%d %H:%M:%S"), "frames_sent_so_far": tally.total_frames,
        "urls": leader.urls, "stderr_tail": stderr,
        "connections": [r.to_json() for r in suspects],
    }  # fmt: skip
    path = Path(args.dump_dir) / f"fuzz-crash-{number}.json"
    path.write_text(json.dumps(dump, indent=1))
    leader.crashes.append({"kind": kind, "status": status, "dump": str(path), "stderr_tail": stderr,
                           "after_frames": tally.total_frames})  # fmt: skip
    say(
        f"\n*** leader crash #{number} ({kind}, status {status}) after {tally.total_frames:,} frames"
    )
    say("--- the leader's last stderr lines:")
    say(stderr)
    if suspects:
        last = suspects[0]
        say(f"--- the frames connection #{last.index} ({last.transport}, role {last.role}) sent last"
            f" ({last.sent} sent, the last {min(len(last.frames), 20)} shown); all suspects in {path}:")  # fmt: skip
        for f in list(last.frames)[-20:]:
            say("  " + describe_frame(f))
    if cluster is None:
        say("--- attached to a leader this driver did not start: waiting for it to answer again")
        while not await probe(leader.urls["tcp"]):  # noqa: ASYNC110 - a remote leader: polling is all there is
            await trio.sleep(1.0)
    else:
        cluster.kill()
        await cluster.start()
        say(f"--- cluster restarted (pid {cluster.pid})\n")
    leader.up.set()


def say(line: str) -> None:
    print(line, flush=True)


# ---------------------------------------------------------------------------------------
# The run


async def fuzz(args: argparse.Namespace, leader: Leader, log_dir: Path) -> dict[str, Any]:
    """Baseline jobs, then the hostile phase with the good client alongside; the results."""
    import trio

    tally = Tally()
    recorder = Recorder()
    good = GoodStats()
    baseline = GoodStats()
    lag = DriverLag()
    leader.up = trio.Event()
    leader.up.set()
    results: dict[str, Any] = {"seed": args.seed, "urls": leader.urls}
    async with trio.open_nursery() as outer:
        outer.start_soon(watchdog, leader, args, tally, recorder, log_dir)
        # Baseline: the good client alone (once the workers serve), then the leader's RSS
        # before the hostile phase.
        await wait_for_workers(leader.urls["tcp"])
        await good_client(leader.urls["tcp"], args, baseline, trio.Event(), jobs=args.baseline_jobs)
        await trio.sleep(0.5)
        results["rss_before_kib"] = read_rss(leader.current_pid())
        stop_good = trio.Event()
        budget = Budget(args.frames, time.monotonic() + args.seconds)
        start = time.monotonic()
        good.origin = lag.origin = start
        good_done = trio.Event()

        async def run_good() -> None:
            try:
                await good_client(leader.urls["tcp"], args, good, stop_good)
            finally:
                good_done.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(run_good)
            nursery.start_soon(progress, tally, leader, good, start)
            nursery.start_soon(lag.watch)
            slots = trio.Semaphore(args.connections)
            async with trio.open_nursery() as hostile:
                for index in itertools.count(args.first_connection):
                    if budget.exhausted:
                        break
                    await leader.up.wait()
                    await slots.acquire()
                    hostile.start_soon(
                        _one, slots, index, args, leader.urls, tally, recorder, budget
                    )
            seconds = time.monotonic() - start
            stop_good.set()  # its last jobs finish (within their timeout), then it returns
            with trio.move_on_after(args.job_timeout + 2):
                await good_done.wait()
            nursery.cancel_scope.cancel()
        await trio.sleep(1.0)  # let the leader settle (closed connections cleaned up)
        results["rss_after_kib"] = read_rss(leader.current_pid())
        outer.cancel_scope.cancel()
    results.update(
        seconds=seconds, frames=dict(tally.frames), total_frames=tally.total_frames,
        bytes_sent=tally.bytes_sent, kinds=dict(tally.kinds.most_common()),
        connections=dict(tally.connections), connect_failures=tally.connect_failures,
        answers=dict(tally.answers.most_common()), error_codes=dict(tally.error_codes.most_common()),
        anomalies=dict(tally.anomalies), anomaly_examples=tally.anomaly_examples,
        driver_errors=dict(tally.driver_errors), crashes=len(leader.crashes),
        outcomes=dict(tally.outcomes), connection_seconds=tally.connection_seconds,
        error_reasons=dict(tally.reasons.most_common()), internal_dumps=tally.internal_dumps,
        crash_details=[{k: v for k, v in c.items() if k != "stderr_tail"} for c in leader.crashes],
        rss_peak_kib=max((kib for _, kib in leader.rss_samples), default=None),
        good=good.summary(), baseline=baseline.summary(), incarnations=leader.incarnations,
        driver_lag=lag.summary(),
    )  # fmt: skip
    return results


async def _one(slots: Any, index: int, *rest: Any) -> None:
    try:
        await hostile_connection(index, *rest)
    finally:
        slots.release()


async def progress(tally: Tally, leader: Leader, good: GoodStats, start: float) -> None:
    import trio

    while True:
        await trio.sleep(10)
        elapsed = time.monotonic() - start
        rss = leader.rss_samples[-1][1] / 1024 if leader.rss_samples else math.nan
        say(
            f"[{elapsed:6.0f} s] {tally.total_frames:>10,} frames, {sum(tally.connections.values()):>8,} connections,"
            f" {len(leader.crashes)} crashes, leader RSS {rss:.0f} MiB, good jobs {good.ok:,} ok {good.total_failed:,} failed"
        )  # fmt: skip


def report(results: dict[str, Any]) -> str:
    """The run's results as text."""
    lines = []
    total = results["total_frames"]
    seconds = max(results["seconds"], 1e-9)
    lines.append(
        f"frames sent: {total:,} in {seconds:.1f} s ({total / seconds:,.0f}/s), "
        f"{results['bytes_sent'] / MiB:,.1f} MiB; seed {results['seed']}"
    )
    lines.append(
        "  by class: " + ", ".join(f"{k} {v:,}" for k, v in sorted(results["frames"].items()))
    )
    lines.append(
        "  messages by kind: " + ", ".join(f"{k} {v:,}" for k, v in results["kinds"].items())
    )
    conns = results["connections"]
    lines.append(
        f"connections opened: {sum(conns.values()):,} ("
        + ", ".join(f"{k} {v:,}" for k, v in sorted(conns.items()))
        + f"); failed to connect: {results['connect_failures']:,}"
    )
    opened = max(1, sum(conns.values()))
    lines.append(
        "  ends: "
        + ", ".join(f"{k} {v:,}" for k, v in sorted(results["outcomes"].items()))
        + f"; {results['connection_seconds'] / opened * 1e3:.0f} ms each on average"
    )
    lines.append("leader sent: " + ", ".join(f"{k} {v:,}" for k, v in results["answers"].items()))
    lines.append(
        "  Error codes: " + ", ".join(f"{k} {v:,}" for k, v in results["error_codes"].items())
    )
    lines.append("  most frequent Error messages:")
    lines.extend(
        f"    {count:>9,}  {text}"
        for text, count in list(results["error_reasons"].items())[: results.get("show_reasons", 12)]
    )
    lines.append(f"leader crashes: {results['crashes']}")
    lines.extend(
        f"  {crash['kind']} (status {crash['status']}) after {crash['after_frames']:,} frames: {crash['dump']}"
        for crash in results["crash_details"]
    )
    lines.extend(
        f"  leader pid {life['pid']} ended by {life['end']} at RSS {_mib(life['last_rss_kib'])}"
        for life in results["incarnations"]
    )
    before, after, peak = (
        results.get("rss_before_kib"),
        results.get("rss_after_kib"),
        results.get("rss_peak_kib"),
    )
    lines.append(
        f"leader RSS: before {_mib(before and before[0])}, after {_mib(after and after[0])}, "
        f"peak sampled {_mib(peak)}" + (f", high-water mark {_mib(after[1])}" if after else "")
    )
    for name in ("baseline", "good"):
        g = results[name]
        title = (
            "good client (alone, before)" if name == "baseline" else "good client (under fuzzing)"
        )
        failed_by = ", ".join(f"{k} {v}" for k, v in g["failed_by"].items())
        lines.append(
            f"{title}: {g['ok']:,} ok, {g['failed']:,} failed{f' ({failed_by})' if failed_by else ''}, "
            f"success {g['success_rate']:.2%}, p50 {g['p50_ms']:.1f} ms, p99 {g['p99_ms']:.1f} ms,"
            f" max {g['max_ms']:.0f} ms"
        )
        if name == "good" and g.get("slowest") and g["max_ms"] >= SLOW_REPORTED * 1e3:
            lines.append(
                "  slowest calls (ms, started at s): "
                + ", ".join(f"{c['ms']:,} at {c['at_s']:g} ({c['outcome']})" for c in g["slowest"])
            )
    lag = results.get("driver_lag")
    if lag is not None:
        lines.append(
            f"this script's own event loop ran late by over {lag['over_s']:g} s {lag['count']:,} times,"
            f" {lag['total_s']:g} s in all, longest {lag['longest_s']:g} s (the good client's calls"
            " include these)"
            + (
                "; at (s, late by): "
                + ", ".join(f"{at:g} {late:g}" for at, late in lag["examples"])
                if lag["examples"]
                else ""
            )
            + f"; its garbage collector paused it {lag['gc_total_s']:g} s in all, {lag['gc_longest_s']:g} s at most"
        )
    if results["anomalies"]:
        lines.append("anomalies:")
        for what, count in results["anomalies"].items():
            lines.append(f"  {what}: {count:,} (e.g. {results['anomaly_examples'][what]})")
    if results["internal_dumps"]:
        lines.append(
            "  frames of the connections answered internal: " + ", ".join(results["internal_dumps"])
        )
    if results["driver_errors"]:
        lines.append("driver errors (bugs of this script): " + repr(results["driver_errors"]))
    return "\n".join(lines)


def _mib(kib: int | None) -> str:
    return "?" if kib is None else f"{kib / 1024:.1f} MiB"


# ---------------------------------------------------------------------------------------
# Replaying a dump


async def replay(args: argparse.Namespace, leader: Leader) -> int:
    """Resend the connections of a crash dump one by one, the oldest first; say after which
    one the leader stopped answering. Returns 1 if it did, else 0."""
    import trio

    dump = json.loads(await trio.Path(args.replay).read_text())
    records = dump["connections"]
    if args.replay_only is not None:
        records = [r for r in records if r["index"] in args.replay_only]
    records.sort(key=lambda r: r["index"])
    tally = Tally()
    budget = Budget(10**12, math.inf)
    for entry in records:
        frames = [_frame_of(e) for e in entry["frames"]]
        say(
            f"connection #{entry['index']} ({entry['transport']}, role {entry['role']}): {len(frames)} frames"
        )
        record = Record(entry["index"], entry["transport"])
        reader = LeaderReader(Context(), tally)
        wire_rng = _AsRecorded()
        run = _run_tcp if entry["transport"] == "tcp" else _run_ws
        with trio.move_on_after(args.conn_seconds):
            await run(
                leader.urls[entry["transport"]],
                iter(frames),
                wire_rng,
                reader,
                tally,
                record,
                budget,
            )
        await trio.sleep(0.5)
        if not leader.alive() or not await probe(leader.urls["tcp"]):
            say(f"the leader died after connection #{entry['index']}; its frames:")
            for f in frames:
                say("  " + describe_frame(f, 2000))
            if leader.cluster is not None:
                say("--- the leader's stderr:\n" + leader.cluster.tail(60))
            return 1
        say(f"  leader alive; it sent {dict(tally.answers)} errors {dict(tally.error_codes)}")
    say("the leader survived every connection of the dump")
    return 0


class _AsRecorded(random.Random):
    """The wire choices of a replay: every frame as recorded (no cut-up writes, no text
    messages, no abortive close)."""

    def random(self) -> float:
        return 0.99


def _frame_of(entry: dict[str, Any]) -> Frame:
    if "recipe" in entry:
        return huge_frame(entry["recipe"])
    if "hex" in entry:
        return Frame(entry["label"], bytes.fromhex(entry["hex"]), tuple(entry["kinds"]))
    raise ValueError(f"frame of {entry['len']} bytes kept only as its digest: rerun with the seed")


# ---------------------------------------------------------------------------------------
# Command line


def _loopback(url: str) -> str:
    parts = urlsplit(url)
    host = parts.hostname or ""
    try:
        ok = ipaddress.ip_address(host).is_loopback
    except ValueError:
        ok = host == "localhost"
    if not ok or parts.scheme not in ("tcp", "ws") or parts.port is None:
        raise argparse.ArgumentTypeError(
            f"{url}: a tcp:// or ws:// URL on a loopback address with a port"
        )
    return url.replace("localhost", "127.0.0.1")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python bench/fuzz_leader.py",
        description="Grammar-aware fuzzing of a leader over TCP and WebSocket (see the module docstring).",
    )
    parser.add_argument(
        "--frames", type=int, default=1_000_000, help="frames to send (default 1,000,000)"
    )
    parser.add_argument(
        "--seconds", type=float, default=3600.0, help="stop after this many seconds (default 3600)"
    )
    parser.add_argument(
        "--seed", type=int, default=1, help="seed of every connection's RNG (default 1)"
    )
    parser.add_argument(
        "--connections",
        type=int,
        default=16,
        help="hostile connections at once (default 16, at most 256)",
    )
    parser.add_argument(
        "--ws-share",
        type=float,
        default=0.3,
        help="share of hostile connections over WebSocket (default 0.3)",
    )
    parser.add_argument(
        "--huge-every",
        type=int,
        default=50_000,
        help="about one 16 MiB frame per this many frames (default 50,000)",
    )
    parser.add_argument(
        "--first-connection",
        type=int,
        default=0,
        help="number of the first hostile connection (default 0)",
    )
    parser.add_argument(
        "--conn-seconds",
        type=float,
        default=30.0,
        help="longest life of one hostile connection (default 30 s)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=2,
        help="worker processes of examples.square:Square (default 2)",
    )
    parser.add_argument(
        "--good-inflight", type=int, default=4, help="the good client's jobs in flight (default 4)"
    )
    parser.add_argument(
        "--job-timeout",
        type=float,
        default=10.0,
        help="the good client's per-job timeout (default 10 s)",
    )
    parser.add_argument(
        "--baseline-jobs",
        type=int,
        default=200,
        help="good jobs before the hostile phase (default 200)",
    )
    parser.add_argument(
        "--probe-every", type=float, default=1.0, help="seconds between liveness probes (default 1)"
    )
    parser.add_argument(
        "--hang-seconds",
        type=float,
        default=20.0,
        help="unanswered probes for this long is a hang (default 20 s)",
    )
    parser.add_argument(
        "--tcp",
        type=_loopback,
        help="attach to this leader's TCP listener instead of starting a cluster",
    )
    parser.add_argument(
        "--ws", type=_loopback, help="... and to this WebSocket listener (with --tcp)"
    )
    parser.add_argument("--pid", type=int, help="with --tcp/--ws: the leader's pid, for its RSS")
    parser.add_argument(
        "--logs",
        metavar="DIR",
        help="keep the cluster's stdout/stderr in DIR (default: a temporary directory)",
    )
    parser.add_argument(
        "--dump-dir", default=".", metavar="DIR", help="where crash dumps go (default: .)"
    )
    parser.add_argument(
        "--replay", metavar="FILE", help="resend the connections of a crash dump, one by one"
    )
    parser.add_argument(
        "--replay-only",
        type=int,
        nargs="+",
        metavar="N",
        help="with --replay: only these connections",
    )
    parser.add_argument(
        "--show",
        type=int,
        nargs="+",
        metavar="N",
        help="print the frames of these connections (from --seed) and exit",
    )
    parser.add_argument(
        "--json", action="store_true", help="end with one JSON line of every figure"
    )
    return parser


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.frames < 1:
        parser.error("--frames: at least 1")
    if not 1 <= args.connections <= 256:
        parser.error("--connections: from 1 to 256")
    if not 0 <= args.ws_share <= 1:
        parser.error("--ws-share: from 0 to 1")
    if args.huge_every < 1 or args.workers < 1 or args.good_inflight < 1:
        parser.error("--huge-every, --workers and --good-inflight: at least 1")
    if (args.tcp is None) != (args.ws is None):
        parser.error("--tcp and --ws go together")
    Path(args.dump_dir).mkdir(parents=True, exist_ok=True)


def show(args: argparse.Namespace) -> None:
    """Print the frames connections ``--show`` send (a worker's answers to the job ids
    the leader assigns it differ: those come from the run, and are in the dumps)."""
    for index in args.show:
        wire_rng = random.Random(f"{args.seed}:{index}:wire")
        transport = "ws" if wire_rng.random() < args.ws_share else "tcp"
        ctx = Context()
        frames = list(script(args.seed, index, args, ctx))
        say(f"connection #{index} ({transport}, role {ctx.role}): {len(frames)} frames")
        for f in frames:
            say("  " + describe_frame(f, 4000))


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    check_args(parser, args)
    if args.show:
        show(args)
        return 0
    import trio

    with contextlib.ExitStack() as stack:
        if args.logs:
            log_dir = Path(args.logs)
            log_dir.mkdir(parents=True, exist_ok=True)
        else:
            log_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="fuzz-leader-")))
        cluster = None
        if args.tcp is None:
            cluster = Cluster(log_dir, args.workers)
            stack.callback(cluster.stop)
            trio.run(cluster.start)
            urls = {"tcp": cluster.tcp_url, "ws": cluster.ws_url}
            say(f"cluster: {cluster.command()} (pid {cluster.pid}; logs in {log_dir})")
        else:
            urls = {"tcp": args.tcp, "ws": args.ws}
        leader = Leader(urls, cluster, args.pid)
        if args.replay:
            return trio.run(replay, args, leader)
        results = trio.run(fuzz, args, leader, log_dir)
        if cluster is not None:
            results["cluster_command"] = cluster.command()
            results["leader_pids"] = cluster.pids
    say(report(results))
    if args.json:
        print(json.dumps(results, default=str))
    return 1 if results["crashes"] else 0


if __name__ == "__main__":
    sys.exit(main())
