"""The Grafana dashboard and the Prometheus alert rules in deploy/: the dashboard is a valid Grafana
dashboard model (a JSON Schema of the parts Grafana needs to import it), its panels do not overlap,
and every query and alert names only metrics docs/METRICS.md documents (which the e2e test scrapes
from the daemons). With promtool installed, the rules and every panel query are parsed by Prometheus'
own parser."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from tests.harness.metricsdoc import all_documented, base_name, documented, query_names

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "cvlan.json"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"

DATASOURCE = {
    "type": "object",
    "required": ["type", "uid"],
    "properties": {"type": {"const": "prometheus"}, "uid": {"const": "${datasource}"}},
}
GRID = {
    "type": "object",
    "required": ["x", "y", "w", "h"],
    "properties": {
        "x": {"type": "integer", "minimum": 0, "maximum": 23},
        "y": {"type": "integer", "minimum": 0},
        "w": {"type": "integer", "minimum": 1, "maximum": 24},
        "h": {"type": "integer", "minimum": 1},
    },
}
TARGET = {
    "type": "object",
    "required": ["refId", "expr", "datasource"],
    "properties": {
        "refId": {"type": "string", "pattern": "^[A-Z]$"},
        "expr": {"type": "string", "minLength": 1},
        "legendFormat": {"type": "string"},
        "datasource": DATASOURCE,
    },
}
PANEL = {
    "type": "object",
    "required": ["id", "type", "title", "gridPos"],
    "properties": {
        "id": {"type": "integer", "minimum": 1},
        "type": {"enum": ["row", "timeseries", "stat", "gauge", "table", "bargauge"]},
        "title": {"type": "string", "minLength": 1},
        "gridPos": GRID,
    },
    "if": {"properties": {"type": {"const": "row"}}},
    "then": {"required": ["collapsed", "panels"]},
    "else": {
        "required": ["datasource", "targets", "fieldConfig"],
        "properties": {
            "datasource": DATASOURCE,
            "targets": {"type": "array", "minItems": 1, "items": TARGET},
        },
    },
}
SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "Grafana dashboard model (the parts an import needs)",
    "type": "object",
    "required": ["uid", "title", "schemaVersion", "panels", "templating", "time"],
    "properties": {
        "id": {"type": ["integer", "null"]},
        "uid": {"type": "string", "pattern": "^[a-zA-Z0-9_-]{1,40}$"},
        "title": {"type": "string", "minLength": 1},
        "schemaVersion": {"type": "integer", "minimum": 36},
        "time": {
            "type": "object",
            "required": ["from", "to"],
            "properties": {"from": {"type": "string"}, "to": {"type": "string"}},
        },
        "templating": {
            "type": "object",
            "required": ["list"],
            "properties": {
                "list": {
                    "type": "array",
                    "contains": {
                        "type": "object",
                        "required": ["name", "type", "query"],
                        "properties": {
                            "name": {"const": "datasource"},
                            "type": {"const": "datasource"},
                            "query": {"const": "prometheus"},
                        },
                    },
                }
            },
        },
        "panels": {"type": "array", "minItems": 1, "items": PANEL},
    },
}


def load_dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def queries(dash: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title, expr) of every target of every panel, rows' nested panels included."""
    out: list[tuple[str, str]] = []
    for p in dash["panels"]:
        for q in [p, *p.get("panels", [])]:
            out += [(q["title"], t["expr"]) for t in q.get("targets", [])]
    return out


def alert_rules() -> list[dict[str, Any]]:
    data = yaml.safe_load(ALERTS.read_text())
    return [r for g in data["groups"] for r in g["rules"]]


def test_dashboard_matches_the_grafana_model() -> None:
    dash = load_dashboard()
    jsonschema.validate(dash, SCHEMA)
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for p in dash["panels"]:
        refs = [t["refId"] for t in p.get("targets", [])]
        assert len(refs) == len(set(refs)), f"panel {p['title']!r}: repeated refId"
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24, f"panel {p['title']!r} is wider than the 24-column grid"


def test_dashboard_panels_do_not_overlap() -> None:
    cells: dict[tuple[int, int], str] = {}
    for p in load_dashboard()["panels"]:
        g = p["gridPos"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"panels {cells[(x, y)]!r} and {p['title']!r} overlap at {x},{y}"
                cells[(x, y)] = p["title"]


def test_schema_rejects_a_broken_dashboard() -> None:
    """The schema is not vacuous: the faults a hand edit makes are caught."""
    dash = load_dashboard()
    panel = next(p for p in dash["panels"] if p["type"] != "row")
    faults = ({"targets": []}, {"datasource": {"type": "prometheus", "uid": "prom-1"}}, {"gridPos": {"x": 0}})
    for fault in faults:
        broken = {**dash, "panels": [{**panel, **fault}]}
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(broken, SCHEMA)


def test_every_panel_query_names_documented_metrics() -> None:
    known = all_documented()
    for title, expr in queries(load_dashboard()):
        names = query_names(expr)
        assert names, f"panel {title!r}: query {expr!r} names no cvlan metric"
        assert names <= known, f"panel {title!r}: {sorted(names - known)} not in docs/METRICS.md"


def test_dashboard_covers_controller_front_relay_and_vrouter() -> None:
    used = {n for _, e in queries(load_dashboard()) for n in query_names(e)}
    for section in ("cvlan-controller", "cvlan-front", "cvlan-relay", "cvlan-vrouter"):
        assert used & set(documented()[section]), f"no panel shows a {section} metric"


def test_every_alert_names_documented_metrics() -> None:
    known = all_documented()
    rules = alert_rules()
    assert {r["alert"] for r in rules} >= {
        "CvlanControllerDown",
        "CvlanNodePollErrors",
        "CvlanNodeCertificateExpiring",
        "CvlanRelaySaturated",
    }
    for r in rules:
        names = query_names(r["expr"])
        assert names <= known, f"alert {r['alert']}: {sorted(names - known)} not in docs/METRICS.md"
        assert names or "up{" in r["expr"], f"alert {r['alert']} reads no metric"


NOT_METRICS = {"cvlan_name", "cvlan_map", "cvlan_subnet", "cvlan_prefix", "cvlan_session"}
"""cvlan_* words the docs use for other things: IPC keys, a LISTEN channel, a setting, a cookie."""


def test_every_metric_the_docs_name_is_in_the_tables_the_scrape_checks() -> None:
    known = all_documented()
    named: dict[str, set[str]] = {}
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for m in re.findall(r"`(cvlan_[a-z0-9_]+)(?:\{[^`]*\})?`", doc.read_text()):
            named.setdefault(base_name(m), set()).add(doc.name)
    outside = {n: sorted(where) for n, where in named.items() if n not in known and n not in NOT_METRICS}
    assert not outside, f"metrics named in the docs but not in docs/METRICS.md's tables: {outside}"


def test_query_name_extraction() -> None:
    assert query_names('sum by (le) (rate(cvlan_http_request_seconds_bucket{route="cvlan_x"}[5m]))') == {
        "cvlan_http_request_seconds"
    }


def promtool_check(rules: Path) -> subprocess.CompletedProcess[str]:
    argv = ["promtool", "check", "rules", str(rules)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60)


@pytest.mark.skipif(shutil.which("promtool") is None, reason="needs promtool (Debian package prometheus)")
def test_promtool_parses_alerts_and_panel_queries(tmp_path: Path) -> None:
    r = promtool_check(ALERTS)
    assert r.returncode == 0, r.stdout + r.stderr
    # Every panel query as a recording rule: promtool then parses each with Prometheus' PromQL parser.
    exprs = [e for _, e in queries(load_dashboard())]
    records = [{"record": f"cvlan:panel_query:{i}", "expr": e} for i, e in enumerate(exprs)]
    f = tmp_path / "panels.yml"
    f.write_text(yaml.safe_dump({"groups": [{"name": "panels", "rules": records}]}))
    r = promtool_check(f)
    assert r.returncode == 0, r.stdout + r.stderr
