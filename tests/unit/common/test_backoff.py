"""Backoff: grows with jitter, caps, resets."""

from __future__ import annotations

import random

from cvlan.common.backoff import Backoff


def test_backoff_grows_with_jitter_and_caps() -> None:
    b = Backoff(base=1, cap=8, rng=random.Random(1))
    delays = [b.next() for _ in range(8)]
    assert 0.5 <= delays[0] <= 1 and all(d <= 8 for d in delays) and delays[-1] >= 4
    b.reset()
    assert b.next() <= 1
