"""cvlan-ctrl's Prometheus metrics (cvlan_ctrl_*), kept in memory in a registry of its own (several
agents can share a test process). See docs/METRICS.md."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

POLL_RESULTS = ("changed", "unchanged", "error")


class AgentMetrics:
    """Polls, maps applied, errors by reason and the node certificate's expiry."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        polls = Counter("cvlan_ctrl_polls", "Polls of the controller, by result", ["result"], registry=r)
        self.polls = {res: polls.labels(res) for res in POLL_RESULTS}
        self.maps_applied = Counter(
            "cvlan_ctrl_maps_applied", "Desired states (map versions) cvland applied", registry=r
        )
        self.applied_version = Gauge(
            "cvlan_ctrl_applied_version", "Map version cvland applied last (0: none yet)", registry=r
        )
        self.errors = Counter(
            "cvlan_ctrl_errors",
            "Errors talking to the controller or cvland, by reason (unreachable, timeout, "
            "cvland_refused, cvland_unreachable, ...)",
            ["reason"],
            registry=r,
        )
        self.cert_expiry = Gauge(
            "cvlan_ctrl_certificate_expiry_timestamp_seconds",
            "Unix time the node certificate expires (0: not enrolled yet)",
            registry=r,
        )
