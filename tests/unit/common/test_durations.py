"""Durations as users write them (90s, 24h, 2w)."""

from __future__ import annotations

import datetime as dt

import pytest

from cvlan.common.durations import parse_duration


def test_durations() -> None:
    assert parse_duration("90s") == dt.timedelta(seconds=90)
    assert parse_duration("24h") == dt.timedelta(days=1)
    assert parse_duration(" 2w ") == dt.timedelta(weeks=2)
    for bad, why in [
        ("", "expected a number"),
        ("10", "expected a number"),
        ("0h", "greater than zero"),
        ("5y", "expected a number"),
        ("-1h", "expected a number"),
    ]:
        with pytest.raises(ValueError, match=why):
            parse_duration(bad)
