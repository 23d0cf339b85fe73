"""Exponential backoff with "full jitter" (each delay uniform in [0, d]), for every retry loop.

d doubles from base at each failure up to cap. Drawing from the whole of [0, d] rather than its upper
half (equal jitter, [d/2, d], used before) matters when many clients fail at once, as a fleet does
when its TLS front or controller restarts: clients that failed the same number of times no longer
retry within the same half-interval, and one that drew a short delay moves on to a wider interval
while others still wait, so the fleet comes back spread out instead of in waves. Measured with
cvlan-sim (docs/SIMULATION.md, "A crash of the front"). A delay near 0 costs one early attempt."""

from __future__ import annotations

import random


class Backoff:
    """Delays that grow from base to cap, each drawn uniformly from [0, d]."""

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
    return rng.uniform(0.0, ceiling(attempt, base, cap))


def ceiling(attempt: int, base: float, cap: float) -> float:
    """The longest delay before retry number `attempt`: base doubled per failure, at most cap."""
    return float(min(cap, base * 2.0 ** min(attempt, 64)))
