"""Backoff: grows with jitter, caps, resets; draws over the whole interval, so that a fleet failing
at once comes back spread out rather than in waves."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable

from cvlan.common.backoff import Backoff, ceiling, delay


def test_backoff_grows_with_jitter_and_caps() -> None:
    b = Backoff(base=1, cap=8, rng=random.Random(1))
    delays = [b.next() for _ in range(8)]
    assert all(0 <= d <= min(8, 2**k) for k, d in enumerate(delays)) and max(delays[4:]) >= 4
    b.reset()
    assert b.next() <= 1


def test_each_delay_is_drawn_uniformly_from_zero_to_the_doubled_base() -> None:
    rng = random.Random(7)
    for attempt in (0, 3, 10):
        d = ceiling(attempt, 0.5, 30.0)
        assert d == min(30.0, 0.5 * 2**attempt)
        draws = [delay(attempt, 0.5, 30.0, rng) for _ in range(20_000)]
        assert 0 <= min(draws) < d / 100 and d - d / 100 < max(draws) <= d
        quarters = Counter(min(3, int(4 * x / d)) for x in draws)
        assert all(0.23 <= quarters[q] / len(draws) <= 0.27 for q in range(4)), quarters


def _come_back(
    n: int, down_s: float, draw: Callable[[int, random.Random], float], seed: int = 3
) -> Counter[int]:
    """n clients lose the server at once and retry (their backoff, from attempt 0) until an attempt
    lands after it is back, down_s seconds later: how many arrive in each second after that."""
    rng = random.Random(seed)
    arrivals: Counter[int] = Counter()
    for _ in range(n):
        t, attempt = 0.0, 0
        while t < down_s:
            t += draw(attempt, rng)
            attempt += 1
        arrivals[int(t)] += 1
    return arrivals


def test_a_fleet_failing_at_once_comes_back_spread_out() -> None:
    """10,000 nodes, the server down 4 s: with the backoff's draws the busiest second takes under a
    third of the fleet. Drawing from the upper half of each interval, as it did before ([d/2, d]),
    put nearly half of it in one second: nodes that failed as often retried together."""
    n = 10_000

    def equal_jitter(attempt: int, rng: random.Random) -> float:
        d = ceiling(attempt, 0.5, 30.0)
        return rng.uniform(d / 2, d)

    full = _come_back(n, 4.0, lambda a, rng: delay(a, 0.5, 30.0, rng))
    equal = _come_back(n, 4.0, equal_jitter)
    assert sum(full.values()) == sum(equal.values()) == n
    assert max(full.values()) < n / 3 < 0.45 * n < max(equal.values())
