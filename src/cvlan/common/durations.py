"""Parse human durations such as 30s, 15m, 24h, 7d."""

from __future__ import annotations

import datetime as dt
import re

_RE = re.compile(r"\s*([0-9]{1,9})\s*([smhdw])\s*")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
MAX_DAYS = 36_500
"""The longest duration accepted (about 100 years): now plus or minus it is always a valid time."""


def parse_duration(text: str) -> dt.timedelta:
    """Return the timedelta for '90s', '15m', '24h', '7d' or '2w'; ValueError with the reason otherwise."""
    m = _RE.fullmatch(text)
    if not m:
        raise ValueError(f"duration {text!r}: expected a number and a unit s, m, h, d or w (e.g. 24h)")
    n = int(m.group(1))
    if n <= 0:
        raise ValueError(f"duration {text!r}: must be greater than zero")
    seconds = n * _UNIT[m.group(2)]
    if seconds > MAX_DAYS * 86400:
        raise ValueError(f"duration {text!r}: must be at most {MAX_DAYS}d")
    return dt.timedelta(seconds=seconds)
