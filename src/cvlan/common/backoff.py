"""Exponential backoff with full jitter, for every retry loop."""

from __future__ import annotations

import random


class Backoff:
    """Delays that grow from base to cap, each drawn uniformly from [d/2, d]."""

    def __init__(self, base: float = 0.5, cap: float = 30.0, rng: random.Random | None = None) -> None:
        self.base = base
        self.cap = cap
        self.attempt = 0
        self._rng = rng or random.Random()

    def next(self) -> float:
        d = min(self.cap, self.base * (2**self.attempt))
        self.attempt += 1
        return self._rng.uniform(d / 2, d)

    def reset(self) -> None:
        self.attempt = 0
