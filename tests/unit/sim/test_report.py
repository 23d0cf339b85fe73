"""A run's results: figures in results.json, the per-second timeline gzip'd beside it."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

from cvlan.sim import report

DATA = {"config": {"nodes": 2}, "timeline": [{"t": 0, "ok": {"poll": 3}}, {"t": 1, "ok": {}}]}


def test_results_round_trip_with_the_timeline_apart(tmp_path: Path) -> None:
    path = report.save_results(tmp_path, DATA)
    assert json.loads(path.read_text()) == {"config": {"nodes": 2}}
    with gzip.open(tmp_path / report.TIMELINE, "rt") as f:
        assert [json.loads(line) for line in f] == DATA["timeline"]
    assert report.load_results(tmp_path) == DATA


def test_an_older_run_with_the_timeline_inside_still_reads(tmp_path: Path) -> None:
    (tmp_path / report.RESULTS).write_text(json.dumps(DATA))
    assert report.load_results(tmp_path) == DATA
