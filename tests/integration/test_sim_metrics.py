"""The simulator's latency histogram: bounded relative error, mergeable, exact maximum."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from cvlan.sim.metrics import Histogram, Interval, bucket_of, bucket_upper_us


@given(st.integers(min_value=0, max_value=10**10))
def test_bucket_bounds_contain_the_value_within_4_percent(us: int) -> None:
    b = bucket_of(us)
    upper = bucket_upper_us(b)
    assert us <= upper <= us * 1.04 + 1
    assert bucket_of(upper) == b


def test_percentiles_match_exact_values_within_the_bucket_error() -> None:
    rng = random.Random(7)
    xs = [rng.expovariate(1 / 0.003) for _ in range(50_000)]
    h = Histogram()
    for x in xs:
        h.record(x)
    xs.sort()
    for q in (50, 90, 99, 99.9):
        exact = xs[int(len(xs) * q / 100) - 1] * 1000
        assert exact * 0.99 <= h.percentile_ms(q) <= exact * 1.04 + 0.001
    assert h.summary()["max"] == int(xs[-1] * 1e6) / 1000


def test_merge_over_the_wire_equals_one_histogram() -> None:
    a, b, both = Histogram(), Histogram(), Histogram()
    for i in range(1, 2000):
        (a if i % 2 else b).record(i / 1e5)
        both.record(i / 1e5)
    iv1, iv2 = Interval(), Interval()
    iv1.hist["poll"], iv2.hist["poll"] = a, b
    iv1.errors["poll_timeout"] = 2
    iv2.samples["poll_timeout"] = "first"
    merged = Interval.from_wire(iv1.to_wire())
    merged.merge(Interval.from_wire(iv2.to_wire()))
    assert merged.hist["poll"].summary() == both.summary()
    assert merged.errors["poll_timeout"] == 2 and merged.samples == {"poll_timeout": "first"}
    assert Histogram().percentile_ms(99) == 0.0
