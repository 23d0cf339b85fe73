"""The report's sections for a long-polling fleet: a crash of the front, memory slope, the minutes."""

from __future__ import annotations

from typing import Any

from cvlan.sim import report_churn


def _second(t: int, connected: int, connects: int = 0, **ok: int) -> dict[str, Any]:
    return {"t": t, "ok": {"connect": connects, **ok}, "errors": {}, "gauges": {"connected": connected}}


def test_the_front_crash_section_times_the_fleet_back_from_the_drop() -> None:
    tl = [_second(t, 100) for t in range(10)]
    tl.append(_second(10, 100, front_restart=1))  # the gauges come a second late
    tl[-1]["errors"] = {"poll_conn_lost": 100}
    tl += [_second(11, 0), _second(12, 40, 40), _second(13, 90, 50), _second(14, 100, 10), _second(15, 100)]
    text = "\n".join(report_churn.sections({"timeline": tl, "config": {}, "phase_summary": {}}))
    assert "every node connected again after **4 s**" in text
    assert "at most 50 new connections in one second (at 13 s)" in text
    assert "poll_conn_lost 100" in text


def test_memory_slope_is_per_hour() -> None:
    assert report_churn.slope_mb_per_hour([(0.0, 100.0), (1800.0, 101.0), (3600.0, 102.0)]) == 2.0
    assert report_churn.slope_mb_per_hour([(0.0, 100.0)]) == 0.0
