"""Log lines: timestamps, and the fixed field vocabulary in every daemon and in docs/LOGGING.md."""

from __future__ import annotations

import ast
import json
import logging
import re
from pathlib import Path

from cvlan.common.log import FIELDS, JsonFormatter, TextFormatter

SRC = Path(__file__).resolve().parents[3] / "src" / "cvlan"
DOC = Path(__file__).resolve().parents[3] / "docs" / "LOGGING.md"


def record(**extra: object) -> logging.LogRecord:
    r = logging.LogRecord("cvlan.test", logging.INFO, __file__, 1, "peer path changed", None, None)
    r.created = 1796530631.0425  # 2026-12-06T04:17:11.042Z
    r.__dict__.update(extra)
    return r


def test_text_lines_carry_a_full_utc_timestamp_with_milliseconds() -> None:
    line = TextFormatter().format(record(tenant_id=3, cvlan=7, peer="ab12cd34"))
    want = "2026-12-06T04:17:11.042Z I cvlan.test: peer path changed tenant_id=3 cvlan=7 peer=ab12cd34"
    assert line == want


def test_json_lines_carry_the_cvlan_field() -> None:
    out = json.loads(JsonFormatter().format(record(cvlan=7, listen="x")))
    assert out["cvlan"] == 7
    assert "listen" not in out, "fields outside the vocabulary are not logged"


def _extra_keys(tree: ast.AST) -> list[tuple[int, str]]:
    keys: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            for kw in node.keywords:
                if kw.arg == "extra" and isinstance(kw.value, ast.Dict):
                    for k in kw.value.keys:
                        if isinstance(k, ast.Constant) and isinstance(k.value, str):
                            keys.append((node.lineno, k.value))
    return keys


def test_every_daemon_logs_only_fields_of_the_vocabulary() -> None:
    """A field outside FIELDS is dropped by both formatters: a divergent name loses the value."""
    wrong = [
        f"{path.relative_to(SRC)}:{line}: {key}"
        for path in sorted(SRC.rglob("*.py"))
        for line, key in _extra_keys(ast.parse(path.read_text()))
        if key not in FIELDS
    ]
    assert not wrong, f"log fields outside common/log.py FIELDS: {wrong}"


def test_logging_doc_lists_every_field() -> None:
    documented = set(re.findall(r"`([a-z_]+)`", DOC.read_text()))
    assert set(FIELDS) <= documented, f"not in docs/LOGGING.md: {sorted(set(FIELDS) - documented)}"
