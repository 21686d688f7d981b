"""Protocol versions and their negotiation in Hello / Welcome."""

from __future__ import annotations

from collections.abc import Iterable

from ._errors import UnsupportedVersion, safe_repr

#: The newest protocol version this package speaks. Version 2 adds bundles (many
#: messages in one frame, see :mod:`protocol._bundle`); everything else is as in 1.
PROTOCOL_VERSION = 2
#: Every version this package can speak, newest first.
SUPPORTED_VERSIONS: tuple[int, ...] = (2, 1)


def negotiate_version(offered: Iterable[int], supported: Iterable[int] = SUPPORTED_VERSIONS) -> int:
    """Pick the newest version both sides speak.

    Args:
      offered: the versions listed in the peer's Hello.
      supported: the versions this side speaks.

    Raises:
      UnsupportedVersion: no version is common to both.
    """
    offered_set = set(offered)
    common = [v for v in supported if v in offered_set]
    if not common:
        raise UnsupportedVersion(
            f"no common protocol version: peer offers {safe_repr(sorted(offered_set))},"
            f" we speak {sorted(supported)}"
        )
    return max(common)
