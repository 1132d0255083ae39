"""``90d``, ``12h``, ``30m``, ``2w``, ``45s`` into seconds (for --expires and --since)."""

from __future__ import annotations

import re

from aiboxctl.errors import UsageError

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_PATTERN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")


def parse_duration(text: str, *, option: str) -> float:
    match = _PATTERN.match(text or "")
    if not match or float(match.group(1)) <= 0:
        raise UsageError(f"{option} {text!r} is not a duration", hint=f"{option} 90d (units: s m h d w)")
    return float(match.group(1)) * _UNITS[match.group(2)]
