"""The health page's 24 h timeline: where each sample's bar sits and how its states stack."""

from __future__ import annotations

import datetime as dt
from typing import Any

from cvlan.controller.web.pages_health import timeline

NOW = dt.datetime(2026, 12, 6, 12, 0, tzinfo=dt.UTC)


def sample(minutes_ago: float, **counts: int) -> dict[str, Any]:
    base = dict.fromkeys(("down", "lossy", "relay", "ok", "unknown"), 0)
    return {"at": NOW - dt.timedelta(minutes=minutes_ago), **base, **counts, "median_rtt_ms": None}


def test_each_sample_lasts_until_the_next_and_states_stack_worst_first() -> None:
    bars = timeline([sample(120, ok=3, down=1), sample(60, ok=4), sample(0.2, relay=2, ok=2)], NOW)
    assert [(b["x"], b["w"]) for b in bars] == [
        (1320.0, 60.0),
        (1380.0, 59.8),
        (1434.0, 6.0),
    ]  # the last one: 6 minutes wide at least
    assert bars[0]["segments"] == [
        {"state": "down", "y": 0.0, "h": 25.0, "n": 1},
        {"state": "ok", "y": 25.0, "h": 75.0, "n": 3},
    ]
    assert [s["state"] for s in bars[2]["segments"]] == ["relay", "ok"]


def test_a_sample_older_than_the_window_starts_at_its_left_edge_and_no_pairs_draw_nothing() -> None:
    bars = timeline([sample(24 * 60 + 5, ok=1), sample(10)], NOW)
    assert bars[0]["x"] == 0.0 and bars[1]["segments"] == []
    assert timeline([], NOW) == []
