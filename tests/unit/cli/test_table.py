"""The admin CLI table cells."""

from __future__ import annotations

from cvlan.cli.table import cell


def test_table_cells() -> None:
    assert cell(None) == "-" and cell(True) == "yes" and cell([]) == "-" and cell(["a", "b"]) == "a,b"
    assert cell("2026-11-26T10:43:30.450747Z") == "2026-11-26 10:43:30"
