"""When a node reports its peers' health, and which peers a report carries (docs/HEALTH.md): the rule
cvlan-ctrl follows and cvlan-sim follows with it, so that a simulated fleet sends the reports a real
one would.

A node reports when the health is worth it (a peer's path, relay region, loss band or RTT band
changed) and, unchanged, again after HEALTH_REFRESH_S; a report carries at most MAX_HEALTH_PEERS
entries, worst first, so that what is left out is healthy."""

from __future__ import annotations

from dataclasses import dataclass

from cvlan.wire.nodeproto import HEALTH_REFRESH_S, MAX_HEALTH_PEERS
from cvlan.wire.pb import node_pb2 as pb

REPORT_INTERVAL_S = 10.0
"""How often a node looks whether its peers' health is due for a report (cvlan-ctrl --report-interval)."""
Signature = tuple[tuple[int, int, str, int, int], ...]


def health_signature(peers: list[pb.PeerHealth]) -> Signature:
    """What of the peers' health is worth a report when it changes: each peer's path and relay
    region, its loss band (none / under 10 % / under 50 % / more; -1 before a probe went out) and its
    RTT band (a factor of 4). Counters and small RTT moves are not."""

    def loss_band(p: pb.PeerHealth) -> int:
        if p.probes_sent == 0:
            return -1
        lost = (p.probes_sent - p.probes_answered) / p.probes_sent
        return 0 if lost == 0 else 1 if lost < 0.1 else 2 if lost < 0.5 else 3

    return tuple(
        sorted((p.node_id, p.path, p.relay_region, loss_band(p), p.rtt_us.bit_length() // 2) for p in peers)
    )


@dataclass(frozen=True)
class HealthSent:
    """The signature of a peer-health report and when it was made (monotonic seconds)."""

    signature: Signature
    at: float

    def due_after(self, last: HealthSent | None) -> bool:
        """Whether this health needs a report, given the last one delivered."""
        if last is None or last.signature != self.signature:
            return True
        return self.at - last.at >= HEALTH_REFRESH_S


def worst_first(peers: list[pb.PeerHealth]) -> tuple[list[pb.PeerHealth], int]:
    """The entries a report carries: at most MAX_HEALTH_PEERS, unreachable peers first, then by
    probes lost; and how many were left out."""
    ranked = sorted(
        peers,
        key=lambda p: (p.path != pb.PEER_HEALTH_PATH_NONE, p.probes_answered - p.probes_sent, p.node_id),
    )
    return ranked[:MAX_HEALTH_PEERS], max(0, len(ranked) - MAX_HEALTH_PEERS)
