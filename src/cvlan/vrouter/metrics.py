"""The vrouter's Prometheus metrics (cvlan_vrouter_*), derived at scrape time from the same reading
as status.json (the engine's peer counters and the firewall's drop counter). See docs/METRICS.md."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from cvlan.vrouter.daemon import Vrouter

RECENT_S = 180.0
"""A handshake younger than this (WireGuard's REJECT_AFTER_TIME) means the peer is connected."""


def cvlan_of_keys(state: dict[str, Any] | None) -> dict[str, str]:
    """Member WireGuard key -> the id of its CVLAN (as a label value)."""
    out: dict[str, str] = {}
    for c in (state or {}).get("cvlans", []):
        for m in c["members"]:
            out[m["key"]] = str(c["id"])
    return out


class VrouterCollector(Collector):
    """Renders the last status reading; `refresh` reads a new one (in a thread) before each scrape."""

    def __init__(self, vr: Vrouter) -> None:
        self.vr = vr
        self.status: dict[str, Any] | None = None
        self.cvlans: dict[str, str] = {}

    async def refresh(self) -> None:
        if self.vr.state is None:
            return  # no hub state yet: no interface to read
        self.cvlans = cvlan_of_keys(self.vr.state)
        self.status = await asyncio.to_thread(self.vr.status)

    def collect(self) -> Iterator[Metric]:
        st = self.status or {}
        peers: list[dict[str, Any]] = st.get("peers", [])
        fwd = CounterMetricFamily(
            "cvlan_vrouter_forwarded_bytes",
            "WireGuard bytes exchanged with the members of each CVLAN (rx: from members, tx: to them)",
            labels=["cvlan", "direction"],
        )
        per: dict[str, list[int]] = {}
        for p in peers:
            cv = self.cvlans.get(p["key"])
            if cv is not None:
                acc = per.setdefault(cv, [0, 0])
                acc[0] += p["rx_bytes"]
                acc[1] += p["tx_bytes"]
        for cv, (rx, tx) in sorted(per.items()):
            fwd.add_metric([cv, "rx"], rx)
            fwd.add_metric([cv, "tx"], tx)
        yield fwd
        now = time.time()
        g = GaugeMetricFamily(
            "cvlan_vrouter_peers",
            "WireGuard peers of the hub, by kind and whether connected",
            labels=["kind", "connected"],
        )
        counts: dict[tuple[str, str], int] = {}
        for p in peers:
            kind = "member" if p["key"] in self.cvlans else "vrouter"
            up = "yes" if p["last_handshake"] > 0 and now - p["last_handshake"] < RECENT_S else "no"
            counts[(kind, up)] = counts.get((kind, up), 0) + 1
        for kind in ("member", "vrouter"):
            for up in ("yes", "no"):
                g.add_metric([kind, up], counts.get((kind, up), 0))
        yield g
        yield GaugeMetricFamily("cvlan_vrouter_cvlans", "CVLANs the hub serves", value=st.get("cvlans", 0))
        yield GaugeMetricFamily(
            "cvlan_vrouter_dead_vrouters",
            "Other vrouters of the region seen dead",
            value=len(st.get("dead_vrouters", [])),
        )
        yield CounterMetricFamily(
            "cvlan_vrouter_denied_packets",
            "Packets the forward chain dropped",
            value=st.get("denied_packets", 0),
        )
        yield CounterMetricFamily(
            "cvlan_vrouter_errors",
            "Failed polls, hub state applications and failover ticks",
            value=self.vr.errors,
        )


def registry(collector: VrouterCollector) -> CollectorRegistry:
    r = CollectorRegistry()
    r.register(collector)
    return r
