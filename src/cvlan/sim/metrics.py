"""Latency histograms and counters that merge across processes and seconds.

The histogram is log-linear (HDR-style): 32 sub-buckets per power of two of microseconds, so any
recorded value is reported within about 3 %, from 1 us to hours, in a few hundred integers."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

SUB_BITS = 5
SUB = 1 << SUB_BITS


def bucket_of(us: int) -> int:
    """The bucket index of a latency in microseconds (values below 1 us count as 0)."""
    if us < SUB:
        return max(us, 0)
    exp = us.bit_length() - SUB_BITS - 1
    return ((exp + 1) << SUB_BITS) + (us >> exp) - SUB


def bucket_upper_us(idx: int) -> int:
    """The largest value in bucket idx: percentiles report this, so they never understate."""
    if idx < SUB:
        return idx
    exp = (idx >> SUB_BITS) - 1
    mant = (idx & (SUB - 1)) + SUB
    return ((mant + 1) << exp) - 1


class Histogram:
    """Counts per bucket, plus the exact maximum."""

    __slots__ = ("counts", "max_us", "n")

    def __init__(self) -> None:
        self.counts: Counter[int] = Counter()
        self.max_us = 0
        self.n = 0

    def record(self, seconds: float) -> None:
        us = int(seconds * 1e6)
        self.counts[bucket_of(us)] += 1
        self.n += 1
        if us > self.max_us:
            self.max_us = us

    def merge(self, other: Histogram) -> None:
        self.counts.update(other.counts)
        self.n += other.n
        self.max_us = max(self.max_us, other.max_us)

    def percentile_ms(self, q: float) -> float:
        """The q-th percentile (0 < q <= 100) in milliseconds; 0.0 when empty."""
        if not self.n:
            return 0.0
        rank = max(1, int(self.n * q / 100.0 + 0.999999))
        seen = 0
        for idx in sorted(self.counts):
            seen += self.counts[idx]
            if seen >= rank:
                return min(bucket_upper_us(idx), self.max_us) / 1000.0
        return self.max_us / 1000.0

    def summary(self) -> dict[str, float]:
        return {
            "n": self.n,
            "p50": self.percentile_ms(50),
            "p90": self.percentile_ms(90),
            "p99": self.percentile_ms(99),
            "p999": self.percentile_ms(99.9),
            "max": self.max_us / 1000.0,
        }

    def to_wire(self) -> dict[str, Any]:
        return {"c": {str(k): v for k, v in self.counts.items()}, "m": self.max_us, "n": self.n}

    @classmethod
    def from_wire(cls, d: dict[str, Any]) -> Histogram:
        h = cls()
        h.counts = Counter({int(k): int(v) for k, v in d["c"].items()})
        h.max_us = int(d["m"])
        h.n = int(d["n"])
        return h


OPS = ("register", "connect", "discover", "poll", "report", "renew", "restart", "answer", "held_excess")
"""answer: every request the controller answers at once (discover, report, renew, and polls sent
with a version the node knows is stale: its first, after a restart, carrying a new endpoint);
held_excess: how much longer than the hold asked for an "unchanged" long-poll took."""


@dataclass
class Interval:
    """What one fleet worker did during one sampling interval (usually a second)."""

    ok: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    hist: dict[str, Histogram] = field(default_factory=lambda: {op: Histogram() for op in OPS})
    gauges: dict[str, int] = field(default_factory=dict)
    samples: dict[str, str] = field(default_factory=dict)
    """The first error message seen for each error kind (to explain the counts)."""

    def merge(self, other: Interval) -> None:
        for kind, text in other.samples.items():
            self.samples.setdefault(kind, text)
        self.ok.update(other.ok)
        self.errors.update(other.errors)
        for op, h in other.hist.items():
            self.hist.setdefault(op, Histogram()).merge(h)
        for k, v in other.gauges.items():
            self.gauges[k] = self.gauges.get(k, 0) + v

    def to_wire(self) -> dict[str, Any]:
        return {
            "ok": dict(self.ok),
            "errors": dict(self.errors),
            "hist": {op: h.to_wire() for op, h in self.hist.items() if h.n},
            "gauges": self.gauges,
            "samples": self.samples,
        }

    @classmethod
    def from_wire(cls, d: dict[str, Any]) -> Interval:
        iv = cls(
            ok=Counter(d["ok"]),
            errors=Counter(d["errors"]),
            gauges=dict(d["gauges"]),
            samples=dict(d.get("samples", {})),
        )
        for op, h in d["hist"].items():
            iv.hist[op] = Histogram.from_wire(h)
        return iv
