"""Regenerate the tables of ``docs/protocol.md`` from the code of ``protocol/``.

The prose of the document is written by hand; the parts between ``<!-- begin NAME -->`` and
``<!-- end NAME -->`` markers are generated here from the message classes, the session table
and the error codes, so that they cannot drift from the code. A test runs :func:`check`.

Usage::

    python docs/gen_protocol_md.py          # rewrite docs/protocol.md in place
    python docs/gen_protocol_md.py --check  # exit 1 if the file is out of date
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import attrs

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import protocol  # noqa: E402
from protocol import ALLOWED, MESSAGE_TYPES, ErrorCode  # noqa: E402

DOC = ROOT / "docs" / "protocol.md"

# ---------------------------------------------------------------------------------------
# What each field means. Keys are (class name, field name); ("*", name) is the fallback for
# fields that mean the same everywhere. Every field must be described (generate() checks).

FIELD_DOCS: dict[tuple[str, str], str] = {
    ("*", "mid"): "Message id, unique per sender and connection (a counter from 1 is enough).",
    ("*", "cid"): "Correlation id: the `mid` of the message this one answers.",
    ("*", "payload"): "The data: any CBOR value, encoded (see *Payloads*; sent plain, key `p`).",
    ("*", "headers"): "Metadata, text to text. `key` routes jobs in sticky groups.",
    ("*", "job_id"): "The job's id, chosen by the submitter; the same id means the same job.",
    ("*", "reason"): "Why, in words (for logs).",
    # Hello
    ("Hello", "role"): "Who the sender is: `client`, `worker`, `leader` or `observer`.",
    ("Hello", "name"): "A name for logs and statistics (`square-3`, `cli`).",
    ("Hello", "versions"): "Protocol versions the sender speaks; the receiver picks one.",
    ("Hello", "patterns"): "Worker: the subject patterns it serves.",
    ("Hello", "credit"): "Worker: its initial window (see *Credit window*); 0 = send no jobs yet.",
    ("Hello", "group"): "Worker: the worker group it belongs to (routing inside a group).",
    ("Hello", "token"): "Authentication token, when the leader requires one.",
    ("Hello", "meta"): "Free-form facts: process id, host, library version.",
    ("Hello", "policy"): (
        "Worker: how the leader picks a worker of its group for a job: `round_robin` (each in"
        " turn), `least_loaded` (fewest jobs in hand) or `sticky` (by the `key` header)."
    ),
    ("Hello", "mode"): (
        "Worker: what its group does: `round_robin` takes jobs (one worker each);"
        " `broadcast` receives every published message and takes no jobs."
    ),
    # Welcome
    ("Welcome", "cid"): "The Hello's `mid`.",
    ("Welcome", "version"): "The protocol version chosen; both sides speak it from now on.",
    ("Welcome", "node"): "The answering node's name.",
    ("Welcome", "session"): "An id of this session, for logs.",
    ("Welcome", "heartbeat"): "Heartbeat interval in seconds (see *Heartbeats*); null or 0 = none.",
    ("Welcome", "max_frame"): (
        "Largest frame body, in bytes, the leader accepts; null = 16 MiB. At least 4096"
        " (see *Limits*)."
    ),
    ("Hello", "max_frame"): (
        "Largest frame body, in bytes, the sender accepts (bundles sent to it stay within it);"
        " null = 16 MiB. At least 4096 (see *Limits*)."
    ),
    # Ping / Pong / Bye / Error
    ("Pong", "cid"): "The Ping's `mid`.",
    ("Bye", "reason"): "Why the sender ends the session; cut to 2048 bytes (see *Limits*).",
    ("Error", "cid"): "The `mid` of the message that caused the error, when there is one.",
    ("Error", "code"): "An error code (see *Error codes*); clients switch on it.",
    ("Error", "message"): "What went wrong, in words; cut to 2048 bytes (see *Limits*).",
    ("Error", "job_id"): "The job concerned, when there is one.",
    ("Error", "retry_after"): "For `busy`: seconds after which a retry may succeed.",
    # Jobs
    ("Submit", "subject"): "Where the job goes: a subject (no wildcards).",
    ("Submit", "qos"): "0: at most once, no redelivery. 1: at least once, redelivered until done.",
    ("Submit", "timeout"): "Seconds after which the client no longer wants the result.",
    ("Submit", "max_attempts"): "Overrides the leader's redelivery limit for this job.",
    ("Submit", "wait_for_worker"): (
        "When no worker serves the subject: queue the job for one that will come (until its"
        " `timeout` or the leader's `max_queue_time`) instead of answering `no_route`."
    ),
    ("Submit", "enqueue"): (
        "Answer with an Ack (`cid` = this `mid`, `job_id`) once the job is accepted (written"
        " to the leader's journal) instead of with its Result; the submitter does not wait"
        " for the job (a Query `result` with `wait` does). QoS 1 only."
    ),
    ("Submit", "delay"): (
        "Seconds after its acceptance before the job may run (at most a year); it waits for"
        " a worker yet to come, and its `timeout` counts from the submit."
    ),
    ("Assign", "subject"): "The subject the job was submitted to.",
    ("Assign", "attempt"): "1 for the first delivery, then 2, 3, ... on redelivery.",
    ("Assign", "qos"): "The job's QoS, as submitted.",
    (
        "Assign",
        "ack_timeout",
    ): "Seconds the worker has to send Result, Nack or Progress before the job is redelivered.",
    ("Assign", "deadline"): (
        "Seconds the job may still run, when its Submit named a `timeout`: past them nobody"
        " waits for its result, and the worker cancels the handler."
    ),
    ("Assign", "max_attempts"): "The deliveries the job may take in all (for logs: `attempt 2/5`).",
    ("Ack", "cid"): "The `mid` of the message acknowledged.",
    ("Ack", "job_id"): "The job concerned, when the acknowledged message was about a job.",
    ("Nack", "cid"): "The Assign's `mid`.",
    ("Nack", "job_id"): "The job given back.",
    ("Nack", "delay"): "Redeliver after this many seconds; null = the leader's backoff.",
    ("Nack", "reason"): "Why, in words (for logs); cut to 2048 bytes (see *Limits*).",
    ("Progress", "fraction"): "How far the job is, from 0 to 1, when known.",
    ("Progress", "note"): "A word on what the job is doing.",
    (
        "Result",
        "cid",
    ): "Worker to leader: the Assign's `mid`. Leader to client: the Submit's `mid`.",
    ("Result", "ok"): "True: `payload` is the job's return value. False: the job failed.",
    ("Result", "payload"): (
        "The job's return value (when `ok`), encoded (see *Payloads*; sent plain, key `p`)."
    ),
    ("Result", "error_type"): "When not `ok`: the kind of failure (an exception class name).",
    ("Result", "error_message"): "When not `ok`: the failure in words.",
    ("Result", "attempts"): "How many deliveries the job took.",
    ("Result", "final"): (
        "For a failure from a worker: it is the job's outcome, not to be retried (the handler"
        " rejected the job, raised an exception its worker never retries, or returned a"
        " result that cannot be sent)."
    ),
    (
        "Result",
        "traceback",
    ): "For a failure: the remote traceback as text (for logs and the client).",
    ("Result", "error_code"): (
        "Leader to client, for a failure the leader decided: an error code (see *Error"
        " codes*), `cancelled` when a client cancelled the job. Null for a failure of the job"
        " itself. Never copied from a worker's Result: clients tell a cancelled job by this,"
        " never by `error_type`."
    ),
    ("Credit", "credit"): "The new window: the most unacknowledged jobs the worker may hold.",
    ("Cancel", "job_id"): "The job to cancel.",
    ("Cancel", "reason"): "Why, in words (for logs); cut to 2048 bytes (see *Limits*).",
    ("Cancel", "abandon"): (
        "From a client: it no longer waits for the job (its submit timed out or was"
        " cancelled); the job is cancelled only if no other client waits for it."
    ),
    ("Query", "what"): (
        "`result`: the result of job `job_id` (answered `not_found` when the leader has no"
        " such job; for a job still running, its Result when it ends with `wait`, else"
        " `not_found`). `stats`: the leader's statistics as the Result's payload."
        " `dead_letters`: the dead letters kept, newest first (at most 1000), without"
        " payloads. `dead_letter`: dead letter `job_id` whole (payload, attempts, last error,"
        " traceback). `retry_dead_letter`: submit dead letter `job_id` (every one when absent)"
        " again under its id, attempts reset; payload `{retried: n}`. `purge_dead_letters`:"
        " forget dead letter `job_id` (every one when absent); payload `{purged: n}`."
    ),
    ("Query", "job_id"): "For `result`: the job.",
    ("Query", "wait"): "For `result`: wait for a job that is still running.",
    # Pub/sub
    ("Publish", "subject"): "Where the message goes: a subject (no wildcards).",
    (
        "Publish",
        "qos",
    ): "0: fire and forget. 1: the leader answers Ack once it has taken the message.",
    ("Publish", "retain"): "Keep it as the subject's last message, replayed to later subscribers.",
    ("Subscribe", "sid"): "Subscription id, chosen by the subscriber, unique on its connection.",
    ("Subscribe", "pattern"): "What to receive: a pattern (wildcards allowed).",
    (
        "Subscribe",
        "queue",
    ): "Queue group: subscribers of one group share the messages (each goes to one).",
    ("Unsubscribe", "sid"): "The subscription to end.",
    ("Deliver", "sid"): "The subscription this delivery is for.",
    ("Deliver", "subject"): "The subject it was published to.",
    ("Deliver", "qos"): "1: the subscriber answers Ack (`cid` = this `mid`).",
    ("Deliver", "retained"): "True when this is a retained message replayed on subscribe.",
    ("Deliver", "also"): (
        "More subscriptions of this connection the message is for: it goes to `sid` and to"
        " each of these, once each (unknown sids are ignored). See *Publish and subscribe*."
    ),
    # Cache and transfers
    ("CachePut", "cache_id"): "The cache entry set; storing it again is a no-op (idempotent).",
    ("CachePut", "target"): "Which workers: every worker with a pattern matching this pattern.",
    ("CachePut", "entries"): "`[name, bytes]` pairs to store.",
    ("CachePut", "sha256"): "Optional hex SHA-256 digests by entry name, checked by the receiver.",
    ("CacheAck", "cid"): "The CachePut's `mid`.",
    ("CacheAck", "cache_id"): "The CachePut's `cache_id`.",
    ("CacheAck", "worker"): "The answering worker's name.",
    ("CacheAck", "statuses"): "Per entry name: `OK`, `SKIPPED` (already there) or `FAILED`.",
    ("CacheAck", "error"): "What failed, when something did.",
    ("Chunk", "transfer_id"): "The transfer this piece belongs to.",
    ("Chunk", "index"): "Position of this piece, from 0.",
    ("Chunk", "data"): "The piece's bytes.",
    ("Chunk", "last"): "True on the last piece.",
    ("Chunk", "total_size"): "Size of the whole, in bytes (on the last piece at least).",
    ("Chunk", "sha256"): "Hex SHA-256 of the whole (on the last piece).",
}

#: Wire type of a field, by the names of its validators.
_TYPES: dict[tuple[str, ...], str] = {
    ("_uint",): "uint",
    ("_pos_int",): "uint ≥ 1",
    ("_opt_uint",): "uint / null",
    ("_opt_pos_int",): "uint ≥ 1 / null",
    ("_str",): "text",
    ("_non_empty_str",): "text, not empty",
    ("_opt_str",): "text / null",
    ("_short_str",): "name",
    ("_opt_short_str",): "name / null",
    ("_id",): "id",
    ("_code",): "code",
    ("_opt_token",): "long text / null",
    ("_policy",): "text (policy)",
    ("_mode",): "text (mode)",
    ("_query_what",): "text (query)",
    ("_opt_frame_limit",): "uint ≥ 4096 / null",
    ("_bool",): "bool",
    ("_opt_seconds",): "seconds / null",
    ("_opt_delay",): "seconds (at most a year) / null",
    ("_opt_fraction",): "number 0..1 / null",
    ("_qos",): "0 or 1",
    ("_headers",): "headers",
    ("_str_map",): "map text→text",
    ("_any_map",): "map text→any",
    ("_subject",): "subject",
    ("_pattern",): "pattern",
    ("_patterns",): "array of pattern",
    ("_versions",): "array of int",
    ("_sids",): "array of uint",
    ("_role",): "text (role)",
    ("_entries",): "array of [text, bytes]",
    ("bytes",): "bytes",
    (): "any",
}
#: Wire type of a payload field (``metadata["payload"]``), whatever its validators, and its
#: key: that of its encoded form (its own key, ``p``, holds one sent plain).
PAYLOAD_TYPE = "bytes (the CBOR encoding of any value)"
PAYLOAD_KEY = protocol._payload.ENCODED_KEY

_ERROR_DOCS = {
    ErrorCode.PROTOCOL_ERROR: (
        "The peer broke the protocol (no more specific code applies). Every error this"
        " implementation detects has a more specific code."
    ),
    ErrorCode.FRAME_TOO_LARGE: "A frame announced, or inflated to, more than the limit.",
    ErrorCode.BAD_FRAME: "Unknown flags, bad zlib data, or a body that is not exactly one acceptable CBOR item.",
    ErrorCode.UNKNOWN_KIND: "The tag `t` names no message kind.",
    ErrorCode.BAD_FIELD: "Not a map, a field missing, of the wrong type or out of range.",
    ErrorCode.BAD_SUBJECT: "A subject or pattern breaks the subject rules.",
    ErrorCode.PROTOCOL_VIOLATION: "A message not allowed in this state or for this role (see *Session*).",
    ErrorCode.UNSUPPORTED_VERSION: "No protocol version in common (answer to Hello).",
    ErrorCode.BUSY: "A queue or mailbox is full; `retry_after` says when to try again.",
    ErrorCode.NOT_PERMITTED: (
        "Not done, with no effect: the sender's identity may not do this (submit to, publish"
        " to, subscribe to or serve the subject named; act on a job another identity"
        " submitted; act on dead letters without `admin`), the subject is reserved for the"
        " system (`$...`), a kind reserved for the sender's role (see *What each role may"
        " send*), or a Subscribe past the connection's `max_subscriptions`."
    ),
    ErrorCode.AUTH_FAILED: (
        "Authentication failed (answer to Hello: no credentials, a wrong or expired token, a"
        " client certificate that names no user); or, later, the connection's credentials"
        " expired or were revoked (the leader closes it)."
    ),
    ErrorCode.NO_ROUTE: (
        "No worker serves the job's subject (answering a Submit at once, or once the"
        " leader's `route_grace` or `restart_grace` passed with none coming)."
    ),
    ErrorCode.DEAD_LETTER: (
        "The job exhausted its attempts. A dead-lettered job is answered with a Result"
        " (`ok` false) instead."
    ),
    ErrorCode.TIMEOUT: "A deadline passed: the job's `timeout` before a worker took it; or no Hello in time (then the leader closes).",
    ErrorCode.CANCELLED: (
        "A client cancelled the job: the `error_code` of its Result (`ok` false), to every"
        " client waiting for it and to later resubmissions and queries of it."
    ),
    ErrorCode.SLOW_CONSUMER: "The peer reads too slowly; its connection is dropped.",
    ErrorCode.SHUTTING_DOWN: (
        "The node is shutting down and takes no new work. A node that stops closes its"
        " connections instead."
    ),
    ErrorCode.HEARTBEAT_TIMEOUT: "The peer was silent past its heartbeat deadline.",
    ErrorCode.INTERNAL: (
        "A failure inside the sender (a bug) while it served this connection; it ends the"
        " connection (a Bye follows). Other connections are served on."
    ),
    ErrorCode.CONFLICT: (
        "A job id submitted again with another subject or payload than the job it names; or"
        " a worker's Hello asking for another routing policy than the workers serving its"
        " subjects have (the leader then closes)."
    ),
    ErrorCode.NOT_FOUND: "A Query names a job the leader does not know (or no longer remembers).",
    ErrorCode.TOO_LARGE: (
        "A submit, publish or result that would be over a frame limit once forwarded; the"
        " request is refused, the session stays open."
    ),
}

#: What each limit of ``protocol`` bounds, by name, in the order of the table.
_LIMIT_DOCS: dict[str, tuple[str, str]] = {
    "MIN_MAX_FRAME": (
        "bytes",
        (
            "smallest `max_frame` a Hello or Welcome may announce (`bad_field`): every control"
            " message (Ping, Pong, Bye, Welcome, the largest Error) fits in it"
        ),
    ),
    "MAX_SUBJECT_LENGTH": ("bytes of UTF-8", "a subject or pattern (`bad_subject`)"),
    "MAX_SUBJECT_TOKENS": ("tokens", "a subject or pattern (`bad_subject`)"),
    "MAX_NAME_LENGTH": (
        "characters",
        (
            "a *name* or *id*: job ids, `Hello.name`, `Hello.group`, `Subscribe.queue`,"
            " `Welcome.node`, `Welcome.session`, cache and transfer ids, header names (`bad_field`)"
        ),
    ),
    "MAX_VALUE_LENGTH": ("characters", "`Hello.token`, a header value (`bad_field`)"),
    "MAX_CODE_LENGTH": ("characters", "`Error.code` (`bad_field`)"),
    "MAX_HEADERS": ("entries", "a `headers` map (`bad_field`)"),
    "MAX_VERSIONS": ("versions", "`Hello.versions` (`bad_field`)"),
    "MAX_PATTERNS": ("patterns", "`Hello.patterns` (`bad_field`)"),
    "MAX_DELIVER_SIDS": ("subscription ids", "`Deliver.also` (`bad_field`)"),
    "MAX_REASON_SIZE": (
        "bytes of UTF-8",
        (
            "`Error.message`, `Bye.reason`, `Nack.reason`, `Cancel.reason`: a longer text is"
            " **cut** to this size (ending in `...`), not refused"
        ),
    ),
    "MAX_DEPTH": (
        "levels",
        (
            "nesting of containers and tags in a body, the message's map or array included, a"
            " bundle's own array not (`bad_frame`); in a payload, counted on its own from the"
            " payload's value (`bad_field`, when the payload is decoded)"
        ),
    ),
    "MAX_BIGNUM_SIZE": (
        "bytes",
        (
            "a bignum (tags 2 and 3), anywhere in a body (`bad_frame`) or in a payload"
            " (`bad_field`, when the payload is decoded)"
        ),
    ),
    "MAX_BUNDLE_ITEMS": ("messages", "a bundle, refused whole (`bad_field`)"),
}


def _validator_names(field: attrs.Attribute) -> tuple[str, ...]:
    validator = field.validator
    if validator is None:
        return ()
    return tuple(
        v.__name__.lstrip("_") if v.__name__ == "_bytes" else v.__name__
        for v in getattr(validator, "_validators", (validator,))
    )


def _cbor(value: Any) -> str:
    """A default value written the way CBOR diagnostic notation would."""
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, tuple):
        return "[" + ", ".join(_cbor(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{}" if not value else repr(value)
    if isinstance(value, str):
        return '""' if not value else f'"{value}"'
    if isinstance(value, bytes):
        return "h''" if not value else f"h'{value.hex()}'"
    return repr(value)


def field_rows(cls: type) -> list[tuple[str, str, str, str, str]]:
    """(name, key, type, default, meaning) for every field of ``cls``."""
    rows = []
    for field in attrs.fields(cls):
        default = field.default
        if isinstance(default, attrs.Factory):  # type: ignore[arg-type]
            default = default.factory()
        shown_default = "required" if default is attrs.NOTHING else _cbor(default)
        names = _validator_names(field)
        try:
            wire_type = PAYLOAD_TYPE if field.metadata.get("payload") else _TYPES[names]
        except KeyError:
            raise SystemExit(
                f"{cls.__name__}.{field.name}: no wire type for validators {names}"
            ) from None
        meaning = FIELD_DOCS.get((cls.__name__, field.name)) or FIELD_DOCS.get(("*", field.name))
        if meaning is None:
            raise SystemExit(f"{cls.__name__}.{field.name}: add its meaning to FIELD_DOCS")
        key = PAYLOAD_KEY if field.metadata.get("payload") else field.metadata["key"]
        rows.append((field.name, key, wire_type, shown_default, meaning))
    return rows


def _summary(cls: type) -> str:
    doc = (cls.__doc__ or "").strip()
    return " ".join(doc.split("\n\n")[0].split()).replace("``", "`")


def _sorted_kinds() -> list[type]:
    return [MESSAGE_TYPES[tag] for tag in sorted(MESSAGE_TYPES)]


def section_tags() -> str:
    lines = ["| Tag | Message | Summary |", "|---:|---|---|"]
    lines.extend(
        f"| {cls.KIND} | [{cls.__name__}](#{cls.__name__.lower()}) | {_summary(cls)} |"
        for cls in _sorted_kinds()
    )
    return "\n".join(lines)


def section_messages() -> str:
    out = []
    for cls in _sorted_kinds():
        out.append(f"### {cls.__name__}\n")
        out.append(f"Tag **{cls.KIND}**. {_summary(cls)}\n")
        out.append("| Field | Key | Type | Default | Meaning |")
        out.append("|---|---|---|---|---|")
        for name, key, wire_type, default, meaning in field_rows(cls):
            out.append(f"| {name} | `{key}` | {wire_type} | {default} | {meaning} |")
        out.append("")
    return "\n".join(out).rstrip()


def section_roles() -> str:
    kinds = [k for k in _sorted_kinds() if k not in (protocol.Hello, protocol.Welcome)]
    roles = sorted(ALLOWED)
    reserved = protocol._session.RESERVED
    lines = ["| Message | " + " | ".join(roles) + " |", "|---|" + "---|" * len(roles)]
    for cls in kinds:
        marks = []
        for role in roles:
            if cls in reserved[role]:
                marks.append("reserved")
            elif cls in ALLOWED[role]:
                marks.append("yes")
            else:
                marks.append("")
        lines.append(f"| {cls.__name__} | " + " | ".join(marks) + " |")
    return "\n".join(lines)


def section_errors() -> str:
    codes = [v for k, v in vars(ErrorCode).items() if k.isupper() and isinstance(v, str)]
    missing = set(codes) - set(_ERROR_DOCS)
    if missing:
        raise SystemExit(f"describe these error codes in _ERROR_DOCS: {sorted(missing)}")
    by_code: dict[str, list[type]] = {}
    for name in dir(protocol):
        obj = getattr(protocol, name)
        if isinstance(obj, type) and issubclass(obj, protocol.ProtocolError):
            by_code.setdefault(obj.code, []).append(obj)
    # A code may be raised as a class and its subclasses (InvalidField, InvalidPayload):
    # the most general first.
    raised_as = {
        code: ", ".join(f"`{c.__name__}`" for c in sorted(classes, key=lambda c: len(c.__mro__)))
        for code, classes in by_code.items()
    }
    lines = ["| Code | Closes | Sent | Raised as | Meaning |", "|---|---|---|---|---|"]
    for code in codes:
        closes = "yes" if ErrorCode.closes_connection(code) else "no"
        sent = "reserved" if code in ErrorCode.RESERVED else "yes"
        raised = raised_as.get(code, "")
        lines.append(f"| `{code}` | {closes} | {sent} | {raised} | {_ERROR_DOCS[code]} |")
    return "\n".join(lines)


def section_limits() -> str:
    from protocol import _limits

    names = [name for name in vars(_limits) if name.isupper()]
    missing = set(names) - set(_LIMIT_DOCS)
    if missing:
        raise SystemExit(f"describe these limits in _LIMIT_DOCS: {sorted(missing)}")
    lines = ["| Limit | Value | Unit | Bounds |", "|---|---:|---|---|"]
    for name, (unit, bounds) in _LIMIT_DOCS.items():
        lines.append(f"| `{name}` | {getattr(protocol, name)} | {unit} | {bounds} |")
    return "\n".join(lines)


def section_example() -> str:
    message = protocol.Submit(mid=7, job_id="job-1", subject="math.square", payload={"n": 7})
    frame = protocol.encode(message)
    hex_bytes = frame.hex()
    lines = [
        "```",
        repr(message),
        "",
        f"wire map: {protocol.to_wire(message)!r}",
        "",
        f"frame ({len(frame)} bytes): header {hex_bytes[:10]} | body {hex_bytes[10:]}",
        "```",
    ]
    return "\n".join(lines)


SECTIONS = {
    "tags": section_tags,
    "messages": section_messages,
    "roles": section_roles,
    "errors": section_errors,
    "limits": section_limits,
    "example": section_example,
}


def generate(text: str) -> str:
    """Return ``text`` with every generated section replaced by its current content."""
    for name, make in SECTIONS.items():
        pattern = re.compile(
            rf"(<!-- begin {name} -->\n)(?:.*?\n)?(<!-- end {name} -->)", flags=re.DOTALL
        )
        if not pattern.search(text):
            raise SystemExit(f"docs/protocol.md has no '<!-- begin {name} -->' section")
        body = make()
        text = pattern.sub(lambda m, body=body: m.group(1) + body + "\n" + m.group(2), text)
    return text


def check() -> bool:
    """Whether docs/protocol.md is up to date with the code."""
    text = DOC.read_text(encoding="utf-8")
    return generate(text) == text


def main(argv: list[str]) -> int:
    if "--check" in argv:
        if check():
            return 0
        print(
            "docs/protocol.md is out of date: run python docs/gen_protocol_md.py", file=sys.stderr
        )
        return 1
    text = DOC.read_text(encoding="utf-8")
    DOC.write_text(generate(text), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
