"""Whole numbers read from untrusted text: ASCII digits only, within a stated bound.

`str.isdigit()` is true for characters such as '²' or '٣' that `int()` refuses or reads as digits,
and `int()` also takes signs, spaces and underscores; neither is a check on its own."""

from __future__ import annotations

import string

INT64_MAX = (1 << 63) - 1
"""The largest value a database identifier (SQL BIGINT, SQLite INTEGER) holds."""

_DIGITS = frozenset(string.digits)


def is_ascii_digits(text: str) -> bool:
    """True for one or more of 0-9 and nothing else."""
    return bool(text) and all(c in _DIGITS for c in text)


def parse_uint(text: str, maximum: int = INT64_MAX) -> int | None:
    """text as a whole number 0..maximum if it is ASCII digits only; None otherwise."""
    if not is_ascii_digits(text) or len(text) > len(str(maximum)) + 20:
        return None
    value = int(text)
    return value if value <= maximum else None
