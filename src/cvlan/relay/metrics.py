"""Prometheus metrics of one relay process, in a registry of its own (several relays can share a
test process)."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, generate_latest


class RelayMetrics:
    """cvlan_relay_* series. Hot-path children are bound once, not looked up per packet."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.clients = Gauge("cvlan_relay_clients", "Connected node clients", registry=r)
        self.connects = Counter("cvlan_relay_connects", "Accepted client connections", registry=r)
        self.replaced = Counter(
            "cvlan_relay_replaced_connections",
            "Connections replaced by a newer one with the same key",
            registry=r,
        )
        frames = Counter("cvlan_relay_frames", "Relay frames", ["direction"], registry=r)
        nbytes = Counter(
            "cvlan_relay_bytes",
            "Relay bytes (frames in/out; forwarded = packet bytes)",
            ["direction"],
            registry=r,
        )
        self.frames_in, self.frames_out, self.frames_fwd = (
            frames.labels(d) for d in ("in", "out", "forwarded")
        )
        self.bytes_in, self.bytes_out, self.bytes_fwd = (nbytes.labels(d) for d in ("in", "out", "forwarded"))
        self.drops = Counter("cvlan_relay_drops", "Frames dropped, by reason", ["reason"], registry=r)
        self.drop_unknown = self.drops.labels("unknown_dest")
        self.drop_cross = self.drops.labels("cross_cvlan")
        self.drop_queue_head = self.drops.labels("queue_head")
        self.refused = Counter(
            "cvlan_relay_refused_connections", "Client connections refused, by reason", ["reason"], registry=r
        )
        self.check_errors = Counter(
            "cvlan_relay_revocation_check_errors",
            "Revocation checks that could not reach the controller",
            registry=r,
        )
        self.stun_requests = Counter(
            "cvlan_relay_stun_requests", "STUN Binding requests answered", registry=r
        )
        self.stun_bad = Counter(
            "cvlan_relay_stun_bad_datagrams", "UDP datagrams on the STUN port that were not STUN", registry=r
        )

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
