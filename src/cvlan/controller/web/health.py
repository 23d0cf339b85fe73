"""Controller health for the platform admin's dashboard: request rate and latency from the
Prometheus metrics the API framework keeps, and a timed database round trip.

Rates are differences between samples of the cumulative counters, so they cover the time since the
oldest sample kept (up to WINDOW_S), and need two looks at the dashboard to be non-zero."""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from cvlan.controller.db import queries
from cvlan.controller.errors import DomainError
from cvlan.controller.http.framework import LATENCY, REQUESTS
from cvlan.controller.ops.context import OpsContext

WINDOW_S = 60.0
MIN_SPACING_S = 1.0


@dataclass(frozen=True)
class Sample:
    t: float
    node_requests: float
    api_requests: float
    errors: float
    buckets: tuple[tuple[float, float], ...]
    """Cumulative (upper bound, count) pairs of the latency histogram over every route."""


def _is_node_route(route: str) -> bool:
    return route.startswith("/v1/")


def take_sample() -> Sample:
    node = api = errors = 0.0
    for metric in REQUESTS.collect():
        for s in metric.samples:
            if not s.name.endswith("_total"):
                continue
            if _is_node_route(s.labels.get("route", "")):
                node += s.value
            else:
                api += s.value
            if s.labels.get("status", "").startswith("5"):
                errors += s.value
    buckets: dict[float, float] = {}
    for metric in LATENCY.collect():
        for s in metric.samples:
            if s.name.endswith("_bucket"):
                le = float(s.labels["le"])
                buckets[le] = buckets.get(le, 0.0) + s.value
    return Sample(time.monotonic(), node, api, errors, tuple(sorted(buckets.items())))


def quantile(buckets: list[tuple[float, float]], q: float) -> float | None:
    """The q-quantile estimated from cumulative histogram buckets (upper bound of its bucket)."""
    total = buckets[-1][1] if buckets else 0.0
    if total <= 0:
        return None
    for le, n in buckets:
        if n >= q * total:
            return le
    return buckets[-1][0]


class HealthMonitor:
    """Keeps recent samples; each call to report() adds one (at most one per MIN_SPACING_S)."""

    def __init__(self) -> None:
        self._samples: deque[Sample] = deque()

    def _sample(self) -> tuple[Sample, Sample]:
        now = take_sample()
        if not self._samples or now.t - self._samples[-1].t >= MIN_SPACING_S:
            self._samples.append(now)
        while len(self._samples) > 2 and now.t - self._samples[0].t > WINDOW_S:
            self._samples.popleft()
        return self._samples[0], now

    async def report(self, ctx: OpsContext, engine_pool: Any) -> dict[str, Any]:
        old, new = self._sample()
        span = max(new.t - old.t, 1e-9)
        diff = [(le, n - dict(old.buckets).get(le, 0.0)) for le, n in new.buckets]
        window_has_data = new.t - old.t >= MIN_SPACING_S
        t0 = time.perf_counter()
        try:
            async with ctx.tx() as s:
                await queries.ping(s)
            db = {"status": "ok", "round_trip_ms": round((time.perf_counter() - t0) * 1000, 2)}
        except DomainError as e:
            db = {"status": "unavailable", "error": e.message}
        url = ctx.settings.db_url
        db["backend"] = "PostgreSQL" if url.startswith("postgresql") else "SQLite"
        if hasattr(engine_pool, "checkedout"):
            db["pool_in_use"] = engine_pool.checkedout()
            db["pool_size"] = engine_pool.size()
        p50, p95 = quantile(diff, 0.5), quantile(diff, 0.95)
        return {
            "window_s": round(span, 1) if window_has_data else 0,
            "node_requests_per_s": round((new.node_requests - old.node_requests) / span, 2)
            if window_has_data
            else None,
            "api_requests_per_s": round((new.api_requests - old.api_requests) / span, 2)
            if window_has_data
            else None,
            "server_errors": int(new.errors),
            "latency_p50_ms": round(p50 * 1000, 1) if p50 is not None and window_has_data else None,
            "latency_p95_ms": round(p95 * 1000, 1) if p95 is not None and window_has_data else None,
            "requests_total": int(new.node_requests + new.api_requests),
            "db": db,
        }
