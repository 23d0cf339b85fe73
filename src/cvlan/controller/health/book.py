"""Peer health as reports arrive: the latest pairs of each node, degradation events, a bounded
history per CVLAN, and the metrics -- all in memory, nothing read from the database per scrape.

The latest reports also reach the database (the node's health column, through the liveness
buffer), so the matrix itself is built from there by any controller process and survives a
restart; the events and the history are those this process saw (docs/HEALTH.md)."""

from __future__ import annotations

import datetime as dt
import statistics
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import Counter, Gauge

from cvlan.controller.health import matrix
from cvlan.controller.health.matrix import Event, Member, Pair

HISTORY_S = 24 * 3600
SAMPLE_S = 60
"""One history sample per CVLAN per minute at most: 1,440 samples over 24 h."""
MAX_EVENTS = 2000
"""Events kept per process, newest first (the oldest are dropped)."""
MAX_CVLANS = 20_000
"""CVLANs with a history; the one sampled longest ago is dropped beyond it."""

G_PAIRS = Gauge("cvlan_health_pairs", "Reported (node, peer) pairs by state", ["state"])
C_EVENTS = Counter("cvlan_health_events_total", "Peer health degradations and recoveries", ["kind"])
for _s in matrix.STATES:
    G_PAIRS.labels(_s)
for _k in ("relay_fallback", "direct_again", "loss", "loss_ok", "unreachable", "reachable"):
    C_EVENTS.labels(_k)


@dataclass(frozen=True, slots=True)
class Recorded:
    at: dt.datetime
    tenant_id: int
    cvlan_id: int
    event: Event

    def as_dict(self) -> dict[str, Any]:
        e = self.event
        return {
            "at": self.at,
            "cvlan_id": self.cvlan_id,
            "kind": e.kind,
            "node_id": e.node_id,
            "peer_id": e.peer_id,
            "detail": e.detail,
        }


@dataclass(slots=True)
class _Cvlan:
    tenant_id: int
    reports: dict[int, dict[int, Pair]] = field(default_factory=dict)
    """reporter -> peer -> pair, from each member's latest report."""
    unreachable: set[int] = field(default_factory=set)
    history: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=HISTORY_S // SAMPLE_S))
    sampled: dt.datetime | None = None


class HealthBook:
    def __init__(self, max_events: int = MAX_EVENTS) -> None:
        self._cvlans: dict[int, _Cvlan] = {}
        self._where: dict[int, int] = {}
        """node -> the CVLAN its latest report is filed under."""
        self._events: deque[Recorded] = deque(maxlen=max_events)
        self._states: dict[str, int] = dict.fromkeys(matrix.STATES, 0)

    def report(
        self,
        now: dt.datetime,
        tenant_id: int,
        cvlan_id: int,
        node_id: int,
        peers: Sequence[Mapping[str, Any]],
    ) -> list[Event]:
        """Take one node's report; the degradations and recoveries it shows (also recorded)."""
        moved = self._where.get(node_id)
        if moved is not None and moved != cvlan_id:
            self.forget(node_id)
        c = self._cvlans.get(cvlan_id)
        if c is None:
            c = self._cvlans[cvlan_id] = _Cvlan(tenant_id)
            self._bound()
        new = {p.dst: p for p in matrix.pairs_of(Member(node_id, str(node_id), True, tuple(peers)))}
        old = c.reports.get(node_id, {})
        events = matrix.pair_events(old, new)
        self._count(old.values(), -1)
        self._count(new.values(), +1)
        c.reports[node_id] = new
        self._where[node_id] = cvlan_id
        down = matrix.unreachable(p for ps in c.reports.values() for p in ps.values())
        events += matrix.reach_events(c.unreachable, down)
        c.unreachable = down
        for e in events:
            self._events.appendleft(Recorded(now, tenant_id, cvlan_id, e))
            C_EVENTS.labels(e.kind).inc()
        self._sample(c, now)
        return events

    def forget(self, node_id: int) -> None:
        """A node left (deleted or moved): its pairs no longer count."""
        cid = self._where.pop(node_id, None)
        c = self._cvlans.get(cid) if cid is not None else None
        if c is not None:
            self._count(c.reports.pop(node_id, {}).values(), -1)

    def events(self, tenant_id: int, cvlan_id: int | None = None, limit: int = 100) -> list[Recorded]:
        out = []
        for r in self._events:
            if r.tenant_id == tenant_id and (cvlan_id is None or r.cvlan_id == cvlan_id):
                out.append(r)
                if len(out) >= limit:
                    break
        return out

    def history(self, cvlan_id: int) -> list[dict[str, Any]]:
        c = self._cvlans.get(cvlan_id)
        return list(c.history) if c is not None else []

    def _count(self, ps: Iterable[Pair], sign: int) -> None:
        for p in ps:
            self._states[p.state] += sign
            G_PAIRS.labels(p.state).inc(sign)  # by difference: the gauge is the process's, not one book's

    def _sample(self, c: _Cvlan, now: dt.datetime) -> None:
        if c.sampled is not None and (now - c.sampled).total_seconds() < SAMPLE_S:
            return
        ps = [p for r in c.reports.values() for p in r.values()]
        rtts = [p.rtt_ms for p in ps if p.rtt_ms is not None]
        c.history.append(
            {
                "at": now,
                **matrix.summary(ps),
                "median_rtt_ms": round(statistics.median(rtts), 3) if rtts else None,
            }
        )
        c.sampled = now

    def _bound(self) -> None:
        while len(self._cvlans) > MAX_CVLANS:
            oldest = min(
                self._cvlans, key=lambda k: self._cvlans[k].sampled or dt.datetime.min.replace(tzinfo=dt.UTC)
            )
            for node in list(self._cvlans[oldest].reports):
                self.forget(node)
            del self._cvlans[oldest]
