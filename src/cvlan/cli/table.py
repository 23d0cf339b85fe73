"""Plain-text tables for terminals."""

from __future__ import annotations

from typing import Any


def cell(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, list):
        return ",".join(cell(x) for x in v) or "-"
    s = str(v)
    if len(s) == 27 and s.endswith("Z") and "T" in s:  # ISO timestamps: drop the microseconds
        s = s[:19].replace("T", " ")
    return s


def expires_in(seconds: float | None) -> str:
    """A certificate's time left: '6d 23h', '5h 10m', 'expired'; 'not issued' for None."""
    if seconds is None:
        return "not issued"
    s = int(seconds)
    if s <= 0:
        return "expired"
    if s >= 86400:
        return f"{s // 86400}d {s % 86400 // 3600}h"
    return f"{s // 3600}h {s % 3600 // 60}m"


def print_table(rows: list[dict[str, Any]], cols: list[str]) -> None:
    grid = [[c.upper() for c in cols]] + [[cell(r.get(c)) for c in cols] for r in rows]
    widths = [max(len(row[i]) for row in grid) for i in range(len(cols))]
    for row in grid:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())
