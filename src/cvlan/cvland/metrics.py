"""cvland's Prometheus metrics (cvlan_cvland_*), derived at scrape time from what a status call reads
(the engine's peer table) and from counters the daemon keeps in memory. See docs/METRICS.md."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from cvlan.cvland.daemon import Daemon
from cvlan.cvland.server import Serial
from cvlan.wire.ipc import DeviceStatus, PeerStatus
from cvlan.wire.keys import KeyHex, short

PATHS = ("direct", "relay", "vrouter", "none")


@dataclass
class Snapshot:
    """What one scrape reports: read on the daemon's thread, rendered on the loop."""

    status: DeviceStatus | None = None
    now: float = 0.0
    path_changes: int = 0
    denied_packets: int = 0
    relay_bytes: dict[str, int] = field(default_factory=lambda: {"out": 0, "in": 0})


def take(daemon: Daemon) -> Snapshot:
    """Read the daemon's status and counters (runs where status calls run: the daemon's thread)."""
    proxy = daemon.relay.proxy if daemon.relay is not None else None
    return Snapshot(
        status=daemon.status(),
        now=daemon.clock.now().timestamp(),
        path_changes=daemon.path_changes,
        denied_packets=daemon.denied_flows.total,
        relay_bytes={
            "out": proxy.bytes_to_relay if proxy else 0,
            "in": proxy.bytes_from_relay if proxy else 0,
        },
    )


class CvlandCollector(Collector):
    """Renders the last Snapshot; `refresh` takes a new one before each scrape."""

    def __init__(self, daemon: Daemon, serial: Serial) -> None:
        self.daemon = daemon
        self.serial = serial
        self.snap = Snapshot()

    async def refresh(self) -> None:
        self.snap = await self.serial.call(take, self.daemon)

    def collect(self) -> Iterator[Metric]:
        s = self.snap
        st = s.status
        peers = st.peers if st else []
        g = GaugeMetricFamily(
            "cvlan_cvland_peers", "Peers in the applied map, by path in use", labels=["path"]
        )
        for path in PATHS:
            g.add_metric([path], sum(1 for p in peers if p.path == path))
        yield g
        age = GaugeMetricFamily(
            "cvlan_cvland_peer_handshake_age_seconds",
            "Seconds since the last WireGuard handshake with each peer (absent: never)",
            labels=["peer"],
        )
        for p in peers:
            if p.last_handshake > 0:
                age.add_metric([short(KeyHex(p.public_key))], max(0.0, s.now - p.last_handshake))
        yield age
        yield from _probes(peers)
        wg = CounterMetricFamily(
            "cvlan_cvland_wireguard_bytes", "WireGuard bytes of all peers", labels=["direction"]
        )
        wg.add_metric(["rx"], sum(p.rx_bytes for p in peers))
        wg.add_metric(["tx"], sum(p.tx_bytes for p in peers))
        yield wg
        yield CounterMetricFamily(
            "cvlan_cvland_path_changes", "Peers moved to another endpoint or path", value=s.path_changes
        )
        relay = CounterMetricFamily(
            "cvlan_cvland_relay_proxied_bytes",
            "WireGuard packet bytes carried through a relay (out: to the relay, in: from it)",
            labels=["direction"],
        )
        for d, n in s.relay_bytes.items():
            relay.add_metric([d], n)
        yield relay
        yield CounterMetricFamily(
            "cvlan_cvland_denied_packets", "Packets the CVLAN's filter dropped", value=s.denied_packets
        )
        yield GaugeMetricFamily(
            "cvlan_cvland_applied_version",
            "Map version applied (0: none)",
            value=st.applied_version if st else 0,
        )
        yield GaugeMetricFamily(
            "cvlan_cvland_down", "1 while taken down (cvlancli down)", value=int(bool(st and st.down))
        )


def _probes(peers: list[PeerStatus]) -> Iterator[Metric]:
    """Round trip and loss of the health probes over the tunnel (docs/HEALTH.md), per peer."""
    rtt = GaugeMetricFamily(
        "cvlan_cvland_peer_rtt_seconds",
        "Median round trip of the health probes to each peer (absent: none answered)",
        labels=["peer"],
    )
    loss = GaugeMetricFamily(
        "cvlan_cvland_peer_probe_loss_ratio",
        "Fraction of the health probes to each peer lost in the window (absent: none sent yet)",
        labels=["peer"],
    )
    for p in peers:
        key = short(KeyHex(p.public_key))
        if p.rtt_ms is not None:
            rtt.add_metric([key], p.rtt_ms / 1000)
        if p.probes_sent:
            loss.add_metric([key], 1 - p.probes_answered / p.probes_sent)
    yield rtt
    yield loss


def registry(collector: CvlandCollector) -> CollectorRegistry:
    r = CollectorRegistry()
    r.register(collector)
    return r
