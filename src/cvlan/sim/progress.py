"""A one-line progress bar on stderr (only redrawn when stderr is a terminal, else a line per 10%)."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    def __init__(self, label: str, total: int, out: TextIO | None = None) -> None:
        self.label = label
        self.total = max(total, 0)
        self.done = 0
        self.out = out or sys.stderr
        self.tty = self.out.isatty()
        self.t0 = time.monotonic()
        self._last_draw = 0.0
        self._last_decile = -1

    def add(self, n: int = 1) -> None:
        self.done += n
        now = time.monotonic()
        if self.tty and now - self._last_draw < 0.1 and self.done < self.total:
            return
        self._last_draw = now
        self.draw()

    def draw(self, final: bool = False) -> None:
        frac = self.done / self.total if self.total else 1.0
        rate = self.done / max(time.monotonic() - self.t0, 1e-9)
        if self.tty:
            width = 30
            fill = int(frac * width)
            bar = "#" * fill + "." * (width - fill)
            end = "\n" if final else ""
            self.out.write(
                f"\r{self.label:<10} [{bar}] {self.done}/{self.total} {frac:6.1%} {rate:8.1f}/s{end}"
            )
            self.out.flush()
            return
        decile = int(frac * 10)
        if decile != self._last_decile or final:
            self._last_decile = decile
            self.out.write(f"{self.label}: {self.done}/{self.total} ({frac:.0%}, {rate:.1f}/s)\n")
            self.out.flush()

    def close(self) -> None:
        self.draw(final=True)
