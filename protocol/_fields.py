"""Field validators and field helpers of the message classes (:mod:`protocol._messages`).

Validators raise TypeError / ValueError naming the field; the decoder turns those into
:class:`protocol.InvalidField`. Each field has exactly one validator function rather than a
list (attrs wraps a list in a loop object): every decoded message runs them, and one call per
field makes building a Submit about 40% faster (2.8 -> 1.7 us). The generated fast decoder
(:mod:`protocol._fastcodec`) has an inline check for most of them and calls them only to
raise.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable
from typing import Any, cast

import attrs

from ._errors import safe_repr
from ._limits import (
    MAX_CODE_LENGTH,
    MAX_DELIVER_SIDS,
    MAX_HEADERS,
    MAX_NAME_LENGTH,
    MAX_PATTERNS,
    MAX_REASON_SIZE,
    MAX_VALUE_LENGTH,
    MAX_VERSIONS,
    MIN_MAX_FRAME,
)
from ._payload import Encoded
from ._subjects import validate_pattern, validate_subject

#: The roles a peer may declare in Hello.
ROLES = frozenset({"client", "worker", "leader", "observer"})


class RoutingPolicy(enum.StrEnum):
    """How the leader picks the worker for a job of a subject (``Hello.policy``): a subject
    has one policy, set by the first job-taking worker that serves it (a worker that asks
    for another one for a subject already served is refused at Hello with ``conflict``).

    Members are strings: ``RoutingPolicy.STICKY == "sticky"``.
    """

    ROUND_ROBIN = "round_robin"  #: each worker in turn
    LEAST_LOADED = "least_loaded"  #: the worker with the fewest jobs in hand
    STICKY = "sticky"  #: jobs with the same ``key`` header go to the same worker


class GroupMode(enum.StrEnum):
    """What a worker group does with its subjects (``Hello.mode``).

    Members are strings: ``GroupMode.BROADCAST == "broadcast"``.
    """

    ROUND_ROBIN = "round_robin"  #: the group takes jobs, one worker each
    BROADCAST = "broadcast"  #: every member receives every published message; no jobs


#: The values of ``Hello.policy`` and ``Hello.mode``, as plain strings.
POLICY_VALUES = frozenset(p.value for p in RoutingPolicy)
MODE_VALUES = frozenset(m.value for m in GroupMode)


# ---------------------------------------------------------------------------------------
# Validators. They raise TypeError / ValueError naming the field; the decoder turns those
# into protocol.InvalidField. Each field has exactly one validator function rather than a
# list (attrs wraps a list in a loop object): every decoded message runs them, and one
# call per field makes building a Submit about 40% faster (2.8 -> 1.7 us).

# Values in error messages may come from a remote peer and be as large as a frame: they
# are quoted with safe_repr, cut short (the error goes back to the peer, and into logs).


def _not_int(inst: Any, attr: attrs.Attribute[Any], value: Any) -> TypeError:
    return TypeError(
        f"{type(inst).__name__}.{attr.name} must be an int, got {type(value).__name__}"
    )


def _below(inst: Any, attr: attrs.Attribute[Any], value: Any, low: int) -> ValueError:
    return ValueError(f"{type(inst).__name__}.{attr.name} must be >= {low}, got {safe_repr(value)}")


#: Integer fields hold what CBOR's plain integers hold: -2**63 .. 2**64 - 1 (no bignums,
#: which a peer could make millions of digits long).
MIN_INT = -(2**63)
MAX_UINT = 2**64 - 1


def _too_big(inst: Any, attr: attrs.Attribute[Any], value: int) -> ValueError:
    return ValueError(
        f"{type(inst).__name__}.{attr.name} must be between {MIN_INT} and {MAX_UINT},"
        f" got an int of {value.bit_length()} bits"
    )


def _int(inst: Any, attr: attrs.Attribute[Any], value: Any) -> None:
    if type(value) is not int:
        raise _not_int(inst, attr, value)
    if not MIN_INT <= value <= MAX_UINT:
        raise _too_big(inst, attr, value)


def _int_from(inst: Any, attr: attrs.Attribute[Any], value: Any, low: int) -> None:
    """``value`` is an int from ``low`` to ``MAX_UINT``."""
    if type(value) is not int:
        raise _not_int(inst, attr, value)
    if value < low:
        raise _below(inst, attr, value, low)
    if value > MAX_UINT:
        raise _too_big(inst, attr, value)


def _uint(inst: Any, attr: attrs.Attribute[Any], value: Any) -> None:
    _int_from(inst, attr, value, 0)


def _opt_uint(inst: Any, attr: attrs.Attribute[Any], value: Any) -> None:
    if value is not None:
        _uint(inst, attr, value)


def _pos_int(inst: Any, attr: attrs.Attribute[Any], value: Any) -> None:
    _int_from(inst, attr, value, 1)


def _opt_pos_int(inst: Any, attr: attrs.Attribute[Any], value: Any) -> None:
    if value is not None:
        _pos_int(inst, attr, value)


def _opt_frame_limit(inst: Any, attr: attrs.Attribute[Any], value: Any) -> None:
    """None, or a frame limit of at least ``MIN_MAX_FRAME`` bytes."""
    if value is None:
        return
    if type(value) is int and value < MIN_MAX_FRAME:
        raise ValueError(
            f"{type(inst).__name__}.{attr.name} must be at least {MIN_MAX_FRAME} bytes (the"
            f" smallest frame limit, which every control message fits in), got {safe_repr(value)}"
        )
    _int_from(inst, attr, value, MIN_MAX_FRAME)


def _str(inst: Any, attr: attrs.Attribute[Any], value: Any) -> None:
    if type(value) is not str:
        raise TypeError(
            f"{type(inst).__name__}.{attr.name} must be a str, got {type(value).__name__}"
        )


def _non_empty_str(inst: Any, attr: attrs.Attribute[Any], value: Any) -> None:
    if type(value) is not str:
        _str(inst, attr, value)
    if not value:
        raise ValueError(f"{type(inst).__name__}.{attr.name} must not be empty")


def _opt_str(inst: Any, attr: attrs.Attribute[Any], value: Any) -> None:
    if value is not None:
        _str(inst, attr, value)


def _too_long(inst: Any, attr: attrs.Attribute[Any], value: str, limit: int) -> ValueError:
    return ValueError(
        f"{type(inst).__name__}.{attr.name} must be at most {limit} characters long,"
        f" got {len(value)}"
    )


def _short_str(inst: Any, attr: attrs.Attribute[Any], value: Any) -> None:
    """A name: a str of at most ``MAX_NAME_LENGTH`` characters (may be empty)."""
    if type(value) is not str:
        _str(inst, attr, value)
    if len(value) > MAX_NAME_LENGTH:
        raise _too_long(inst, attr, value, MAX_NAME_LENGTH)


def _opt_short_str(inst: Any, attr: attrs.Attribute[Any], value: Any) -> None:
    if value is not None:
        _short_str(inst, attr, value)


def _id(inst: Any, attr: attrs.Attribute[Any], value: Any) -> None:
    """An identifier: a non-empty str of at most ``MAX_NAME_LENGTH`` characters."""
    _non_empty_str(inst, attr, value)
    if len(value) > MAX_NAME_LENGTH:
        raise _too_long(inst, attr, value, MAX_NAME_LENGTH)


def _code(inst: Any, attr: attrs.Attribute[Any], value: Any) -> None:
    """An error code: a non-empty str of at most ``MAX_CODE_LENGTH`` characters."""
    _non_empty_str(inst, attr, value)
    if len(value) > MAX_CODE_LENGTH:
        raise _too_long(inst, attr, value, MAX_CODE_LENGTH)


def _opt_token(inst: Any, attr: attrs.Attribute[Any], value: Any) -> None:
    if value is None:
        return
    _str(inst, attr, value)
    if len(value) > MAX_VALUE_LENGTH:
        raise _too_long(inst, attr, value, MAX_VALUE_LENGTH)


def _not_one_of(
    inst: Any, attr: attrs.Attribute[Any], value: Any, allowed: type[enum.StrEnum]
) -> ValueError:
    names = ", ".join(member.value for member in allowed)
    return ValueError(
        f"{type(inst).__name__}.{attr.name} must be one of {names}, got {safe_repr(value)}"
    )


def _policy(inst: Any, attr: attrs.Attribute[Any], value: Any) -> None:
    """One of the :class:`RoutingPolicy` values, as a plain str."""
    if type(value) is not str or value not in POLICY_VALUES:
        raise _not_one_of(inst, attr, value, RoutingPolicy)


def _mode(inst: Any, attr: attrs.Attribute[Any], value: Any) -> None:
    """One of the :class:`GroupMode` values, as a plain str."""
    if type(value) is not str or value not in MODE_VALUES:
        raise _not_one_of(inst, attr, value, GroupMode)


def _plain_str(value: Any) -> Any:
    """Converter: a str enum member (``RoutingPolicy.STICKY``) becomes its plain str value,
    which is what goes on the wire and what a decoded message holds."""
    if isinstance(value, enum.Enum):
        return value.value
    return value


#: Texts that cannot exceed ``MAX_REASON_SIZE`` bytes of UTF-8 (4 bytes per character at
#: most) are kept without measuring them.
_SURELY_SHORT = MAX_REASON_SIZE // 4


def _cut_text(value: Any) -> Any:
    """Converter of free-text reasons (``Error.message``, ``Bye.reason`` ...): a str longer
    than ``MAX_REASON_SIZE`` bytes of UTF-8 is cut to that size, ending in ``...``; any
    other value is left for the validator to judge.

    Cutting rather than refusing: these are words for logs, our own side builds them from
    what a peer sent (an error quoting its input), and a control message must always fit
    in the smallest frame a peer may announce (``MIN_MAX_FRAME``).
    """
    if type(value) is not str or len(value) <= _SURELY_SHORT:
        return value
    data = value.encode("utf-8", "surrogatepass")
    if len(data) <= MAX_REASON_SIZE:
        return value
    return data[: MAX_REASON_SIZE - 3].decode("utf-8", "ignore") + "..."


def _bytes(inst: Any, attr: attrs.Attribute[Any], value: Any) -> None:
    if not isinstance(value, bytes):
        raise TypeError(
            f"{type(inst).__name__}.{attr.name} must be bytes, got {type(value).__name__}"
        )


def _bool(inst: Any, attr: attrs.Attribute[Any], value: Any) -> None:
    if type(value) is not bool:
        raise TypeError(
            f"{type(inst).__name__}.{attr.name} must be a bool, got {type(value).__name__}"
        )


def _opt_seconds(inst: Any, attr: attrs.Attribute[Any], value: Any) -> None:
    if value is None:
        return
    if type(value) not in (int, float):
        raise TypeError(
            f"{type(inst).__name__}.{attr.name} must be a number of seconds, got {type(value).__name__}"
        )
    try:
        ok = value >= 0 and math.isfinite(value)
    except OverflowError:  # an int too large for a float: no clock can use it
        ok = False
    if not ok:
        raise ValueError(
            f"{type(inst).__name__}.{attr.name} must be a finite number >= 0, got {safe_repr(value)}"
        )


#: The longest delay a Submit may ask for: a year (in seconds).
MAX_DELAY = 366 * 86400.0


def _opt_delay(inst: Any, attr: attrs.Attribute[Any], value: Any) -> None:
    """None, or seconds from 0 to :data:`MAX_DELAY`."""
    _opt_seconds(inst, attr, value)
    if value is not None and value > MAX_DELAY:
        raise ValueError(
            f"{type(inst).__name__}.{attr.name} must be at most {MAX_DELAY:g} s (a year),"
            f" got {safe_repr(value)}"
        )


def _opt_fraction(inst: Any, attr: attrs.Attribute[Any], value: Any) -> None:
    if value is None:
        return
    if type(value) not in (int, float):
        raise TypeError(
            f"{type(inst).__name__}.{attr.name} must be a number, got {type(value).__name__}"
        )
    if not 0.0 <= value <= 1.0:
        raise ValueError(
            f"{type(inst).__name__}.{attr.name} must be between 0 and 1, got {safe_repr(value)}"
        )


def _qos(inst: Any, attr: attrs.Attribute[Any], value: Any) -> None:
    if type(value) is not int or value not in (0, 1):
        raise ValueError(
            f"{type(inst).__name__}.{attr.name} must be 0 or 1, got {safe_repr(value)}"
        )


def _str_map(inst: Any, attr: attrs.Attribute[Any], value: Any) -> None:
    if type(value) is not dict:
        raise TypeError(
            f"{type(inst).__name__}.{attr.name} must be a map of str to str, got {type(value).__name__}"
        )
    for k, v in value.items():
        if type(k) is not str or type(v) is not str:
            raise TypeError(
                f"{type(inst).__name__}.{attr.name} must map str to str, got {safe_repr(k)}: {safe_repr(v)}"
            )


def _headers(inst: Any, attr: attrs.Attribute[Any], value: Any) -> None:
    """A map of str to str: at most ``MAX_HEADERS`` entries, names of at most
    ``MAX_NAME_LENGTH`` characters, values of at most ``MAX_VALUE_LENGTH``."""
    _str_map(inst, attr, value)
    if len(value) > MAX_HEADERS:
        raise ValueError(
            f"{type(inst).__name__}.{attr.name} must hold at most {MAX_HEADERS} entries, got {len(value)}"
        )
    for k, v in value.items():
        if len(k) > MAX_NAME_LENGTH:
            raise ValueError(
                f"{type(inst).__name__}.{attr.name} names must be at most {MAX_NAME_LENGTH}"
                f" characters long, got {safe_repr(k)}"
            )
        if len(v) > MAX_VALUE_LENGTH:
            raise ValueError(
                f"{type(inst).__name__}.{attr.name} values must be at most {MAX_VALUE_LENGTH}"
                f" characters long, got {safe_repr(k)}: {safe_repr(v)}"
            )


#: Subjects known to be valid, so that a repeated subject skips the rule check (a client
#: submits, a leader routes, the same few subjects over and over). Cleared when full: it
#: only ever holds strings that passed ``validate_subject``.
SUBJECTS_OK: set[str] = set()
SUBJECTS_OK_LIMIT = 4096


def _subject(inst: Any, attr: attrs.Attribute[Any], value: Any) -> None:
    if type(value) is str and value in SUBJECTS_OK:
        return
    if type(value) is not str:
        _str(inst, attr, value)
    validate_subject(value)
    if len(SUBJECTS_OK) >= SUBJECTS_OK_LIMIT:
        SUBJECTS_OK.clear()
    SUBJECTS_OK.add(value)


def _pattern(inst: Any, attr: attrs.Attribute[Any], value: Any) -> None:
    if type(value) is not str:
        _str(inst, attr, value)
    validate_pattern(value)


def _patterns(inst: Any, attr: attrs.Attribute[Any], value: Any) -> None:
    if len(value) > MAX_PATTERNS:
        raise ValueError(
            f"{type(inst).__name__}.{attr.name} must hold at most {MAX_PATTERNS} patterns, got {len(value)}"
        )
    for p in value:
        _pattern(inst, attr, p)


def _str_tuple(inst: Any, attr: attrs.Attribute[Any], value: Any) -> None:
    for p in value:
        _str(inst, attr, p)


def _versions(inst: Any, attr: attrs.Attribute[Any], value: Any) -> None:
    if len(value) > MAX_VERSIONS:
        raise ValueError(
            f"{type(inst).__name__}.{attr.name} must hold at most {MAX_VERSIONS} versions, got {len(value)}"
        )
    for p in value:
        _int(inst, attr, p)


def _sids(inst: Any, attr: attrs.Attribute[Any], value: Any) -> None:
    """A tuple of at most ``MAX_DELIVER_SIDS`` subscription ids (uints)."""
    if type(value) is not tuple:
        raise TypeError(
            f"{type(inst).__name__}.{attr.name} must be a list of subscription ids,"
            f" got {type(value).__name__}"
        )
    if len(value) > MAX_DELIVER_SIDS:
        raise ValueError(
            f"{type(inst).__name__}.{attr.name} must hold at most {MAX_DELIVER_SIDS}"
            f" subscription ids, got {len(value)}"
        )
    for sid in value:
        if type(sid) is not int or not 0 <= sid <= MAX_UINT:
            _uint(inst, attr, sid)


def _sid_tuple(value: Any) -> Any:
    """Converter of a list of subscription ids: a list becomes a tuple; an
    :class:`~protocol.Encoded` of a list (the CBOR encoding a leader keeps of the sids a
    route names, so that it encodes them once, not at every Publish) stands for the tuple it
    encodes. Any other value is left for the validator to judge."""
    kind = type(value)
    if kind is tuple:
        return value
    if kind is list:
        return tuple(value)
    if kind is Encoded:
        decoded = value.decode()
        if type(decoded) is list:
            return tuple(decoded)
    return value


def _role(inst: Any, attr: attrs.Attribute[Any], value: Any) -> None:
    _str(inst, attr, value)
    if value not in ROLES:
        raise ValueError(
            f"{type(inst).__name__}.{attr.name} must be one of {sorted(ROLES)}, got {safe_repr(value)}"
        )


def _tuple(value: Any) -> tuple[Any, ...]:
    if type(value) is tuple:
        return value
    if type(value) is list:
        return tuple(value)
    raise TypeError(f"expected a list, got {type(value).__name__}")


def _entries(inst: Any, attr: attrs.Attribute[Any], value: Any) -> None:
    for entry in value:
        if not (
            type(entry) is tuple
            and len(entry) == 2
            and type(entry[0]) is str
            and type(entry[1]) is bytes
        ):
            raise TypeError(
                f"{type(inst).__name__}.{attr.name} must hold [name, bytes] pairs, got {safe_repr(entry)}"
            )


def _entry_tuple(value: Any) -> tuple[Any, ...]:
    return tuple(tuple(e) if type(e) is list else e for e in _tuple(value))


def _any_map(inst: Any, attr: attrs.Attribute[Any], value: Any) -> None:
    if type(value) is not dict:
        raise TypeError(
            f"{type(inst).__name__}.{attr.name} must be a map, got {type(value).__name__}"
        )


def _key(key: str, **kw: Any) -> dict[str, str]:
    return {"key": key, **kw}


#: The class of the defaults that ``attrs.field(factory=...)`` makes (attrs' type stubs
#: declare ``attrs.Factory`` as a function that returns the default, to type such fields).
_FACTORY = cast("type[Any]", attrs.Factory)


def field_factory(field: attrs.Attribute[Any]) -> Callable[[], Any] | None:
    """The factory of a field declared with ``factory=`` (a fresh default per message),
    else None. For the code that builds messages without ``__init__``."""
    default = field.default
    if isinstance(default, _FACTORY):
        factory: Callable[[], Any] = default.factory
        return factory
    return None


def mid_field() -> Any:
    return attrs.field(validator=_uint, metadata=_key("i"), kw_only=True)


def cid_field(required: bool = False) -> Any:
    if required:
        return attrs.field(validator=_uint, metadata=_key("c"), kw_only=True)
    return attrs.field(default=None, validator=_opt_uint, metadata=_key("c"), kw_only=True)


def headers_field() -> Any:
    return attrs.field(factory=dict, validator=_headers, metadata=_key("h"), kw_only=True)


def payload_field() -> Any:
    """A payload: any value, sent as the CBOR byte string of its encoding (see
    :mod:`protocol._payload`); received as an :class:`~protocol.Encoded` or a value."""
    return attrs.field(default=None, metadata={**_key("p"), "payload": True}, kw_only=True)


#: What a :class:`~protocol.Query` may ask for.
QUERIES = (
    "result",
    "stats",
    "dead_letters",
    "dead_letter",
    "retry_dead_letter",
    "purge_dead_letters",
)
#: Dead letters one ``dead_letters`` query lists at most (the newest).
MAX_LISTED = 1000


def _query_what(inst: Any, attr: attrs.Attribute[Any], value: Any) -> None:
    """One of :data:`QUERIES`."""
    if type(value) is not str or value not in QUERIES:
        raise ValueError(
            f"{type(inst).__name__}.{attr.name} must be one of {', '.join(QUERIES)},"
            f" got {safe_repr(value)}"
        )
