"""Checks of single configuration values: URLs, subject patterns, names, numbers, choices.

Each check takes the value and the place it was found (file, table and key, or option)
and raises :class:`ConfigError` with a message that names that place and what was expected.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from protocol import GroupMode, RoutingPolicy, is_valid_pattern
from runtime import parse_url

#: The values a configuration or a command line may give a group's ``mode`` and its
#: ``policy``, in the enums' order (the default first), for checks and help texts.
MODE_CHOICES = tuple(mode.value for mode in GroupMode)
POLICY_CHOICES = tuple(policy.value for policy in RoutingPolicy)


class ConfigError(Exception):
    """A configuration, a command-line argument or an object name is wrong.

    The message names the problem and, when it comes from a file, the file, the table and
    the key, so that it can be shown to the user as is (the CLI prints it and exits 2).
    """

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


#: URL schemes a client or worker can connect to (see :func:`runtime.parse_url`), and a
#: leader listen on (``tls``/``wss`` with a certificate: the cluster's loader checks that).
CONNECT_SCHEMES = ("tcp", "tls", "ws", "wss")
LISTEN_SCHEMES = CONNECT_SCHEMES


def check_listen(value: Any, *, at: str) -> tuple[str, ...]:
    """Check a list of listen URLs (``tcp://host:port``, ``ws://host:port[/path]``,
    ``tls://``, ``wss://``).

    Port 0 asks the system for a free port.

    Raises:
      ConfigError: not a non-empty list of strings, an unknown scheme, no host,
        or a missing or out-of-range port.
    """
    urls = _check_str_list(value, at=at)
    if not urls:
        raise ConfigError(f"{at}: at least one listen address is needed")
    seen: set[tuple[str, int]] = set()
    for url in urls:
        problem = _url_problem(url, LISTEN_SCHEMES)
        if problem is not None:
            raise ConfigError(f"{at}: {problem}")
        parsed = parse_url(url)
        if parsed.port != 0:  # port 0 twice is two free ports
            if (parsed.host, parsed.port) in seen:
                raise ConfigError(f"{at}: {parsed.host}:{parsed.port} is listed twice")
            seen.add((parsed.host, parsed.port))
    return tuple(urls)


def check_url(url: Any, *, at: str) -> str:
    """Check a URL to connect to: ``tcp://``, ``tls://``, ``ws://`` or ``wss://`` host:port.

    Raises:
      ConfigError: naming what is wrong with it.
    """
    if not isinstance(url, str):
        raise ConfigError(f"{at}: expected a URL string, got {_show(url)}")
    problem = _url_problem(url, CONNECT_SCHEMES)
    if problem is not None:
        raise ConfigError(f"{at}: {problem}")
    return url


def _url_problem(url: str, schemes: Sequence[str]) -> str | None:
    try:
        parsed = parse_url(url)
    except ValueError as exc:
        return str(exc)
    if parsed.scheme not in schemes:
        return f"{url!r}: scheme '{parsed.scheme}' is not one of {', '.join(schemes)}"
    return None


def check_subjects(value: Any, *, at: str) -> tuple[str, ...]:
    """Check a non-empty list of subscription patterns (:func:`protocol.is_valid_pattern`).

    Raises:
      ConfigError: naming the first bad pattern.
    """
    patterns = _check_str_list(value, at=at)
    if not patterns:
        raise ConfigError(f"{at}: at least one subject pattern is needed")
    for pattern in patterns:
        if not is_valid_pattern(pattern):
            raise ConfigError(
                f"{at}: invalid subject pattern {pattern!r} (tokens separated by '.', "
                "'*' for one token, '>' only as the last token, no spaces)"
            )
    return tuple(patterns)


#: Multipliers of the units a size may carry: SI (kB, MB, GB) and binary (KiB, MiB, GiB; a
#: bare K, M or G is binary too, as in most memory settings).
SIZE_UNITS = {
    "": 1, "b": 1,
    "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
    "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
}  # fmt: skip
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*$", re.IGNORECASE)


def parse_size(value: Any) -> int:
    """A number of bytes from an int or a string such as ``"512MiB"``, ``"2GB"``, ``"1.5G"``.

    Raises:
      ValueError: not a positive whole number of bytes, or an unknown unit.
    """
    if isinstance(value, int) and not isinstance(value, bool):
        size = value
    elif isinstance(value, str) and (match := _SIZE_RE.match(value)):
        unit = SIZE_UNITS.get(match[2].lower())
        if unit is None:
            raise ValueError(
                f"unknown unit {match[2]!r} in {value!r} (use B, kB, MB, GB, KiB, MiB, GiB)"
            )
        size = int(float(match[1]) * unit)
    else:
        raise ValueError(f'expected a size in bytes such as 536870912 or "512MiB", got {value!r}')
    if size < 1:
        raise ValueError(f"expected a size of at least 1 byte, got {value!r}")
    return size


def check_size(value: Any, *, at: str) -> int:
    """Check a size in bytes (an integer, or a string with a unit: see :func:`parse_size`).

    Raises:
      ConfigError: naming the place and the problem.
    """
    try:
        return parse_size(value)
    except ValueError as exc:
        raise ConfigError(f"{at}: {exc}") from None


def format_size(size: int) -> str:
    """A size for people: ``512 MiB``, ``1.5 GiB``, ``900 B``."""
    for unit, factor in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if size >= factor:
            return f"{size / factor:.4g} {unit}"
    return f"{size} B"


def _check_keys(data: Mapping[str, Any], allowed: Iterable[str], *, where: str) -> None:
    allowed = list(allowed)
    for key in data:
        if key not in allowed:
            close = difflib.get_close_matches(key, allowed, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(
                f"{where}: unknown key {key!r}{hint}; allowed keys: {', '.join(allowed)}"
            )


def _check_name(value: Any, *, at: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{at}: expected a string, got {_show(value)}")
    if not value or not all(ch.isalnum() or ch in "_-" for ch in value):
        raise ConfigError(
            f"{at}: {value!r} is not a valid name (letters, digits, '_' and '-' only)"
        )
    return value


def _check_int(value: Any, *, at: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{at}: expected an integer >= {minimum}, got {_show(value)}")
    if value < minimum:
        raise ConfigError(f"{at}: expected an integer >= {minimum}, got {value}")
    return value


def _check_number(
    value: Any,
    *,
    at: str,
    minimum: float,
    exclusive: bool = False,
    maximum: float | None = None,
) -> float:
    bound = f"> {minimum:g}" if exclusive else f">= {minimum:g}"
    if maximum is not None:
        bound += f" and <= {maximum:g}"
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{at}: expected a number {bound}, got {_show(value)}")
    number = float(value)
    too_low = number <= minimum if exclusive else number < minimum
    if not math.isfinite(number) or too_low or (maximum is not None and number > maximum):
        raise ConfigError(f"{at}: expected a number {bound}, got {value}")
    return number


def _check_choice(value: Any, choices: Sequence[str], *, at: str) -> str:
    if not isinstance(value, str) or value not in choices:
        raise ConfigError(f"{at}: expected one of {', '.join(choices)}; got {_show(value)}")
    return value


def _check_str_list(value: Any, *, at: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ConfigError(f"{at}: expected a list of strings, got {_show(value)}")
    return list(value)


def _show(value: Any) -> str:
    """A value with its TOML-ish type, for 'expected X, got Y' messages."""
    kind = {
        bool: "boolean",
        int: "integer",
        float: "float",
        str: "string",
        list: "array",
        dict: "table",
    }.get(type(value), type(value).__name__)
    text = repr(value)
    if len(text) > 40:
        text = text[:37] + "..."
    return f"{kind} {text}"
