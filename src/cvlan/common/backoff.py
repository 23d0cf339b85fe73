"""Exponential backoff with "equal jitter" (each delay uniform in [d/2, d]), for every retry loop.

Nodes that failed together the same number of times retry within the same half-interval: a fleet
coming back after an outage arrives in waves (bench/results/fleet-restart-2026-12-06). Full jitter
([0, d]) would spread it wider at the price of retries that come almost at once."""

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
        d = delay(self.attempt, self.base, self.cap, self._rng)
        self.attempt += 1
        return d

    def reset(self) -> None:
        self.attempt = 0


def delay(attempt: int, base: float, cap: float, rng: random.Random) -> float:
    """The delay before retry number `attempt` (0 first): what Backoff.next draws, for callers that keep
    only the attempt count (the simulator's 100,000 nodes)."""
    d = min(cap, base * (2 ** min(attempt, 64)))
    return rng.uniform(d / 2, d)
