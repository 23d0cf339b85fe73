"""What a node reports of its peers (agent) and what the controller accepts of it (node API)."""

from __future__ import annotations

import pytest

from cvlan.agent.daemon import peer_health
from cvlan.controller.errors import DomainError
from cvlan.controller.nodeapi.handlers import peer_health as accepted
from cvlan.wire.ipc import DeviceStatus, PeerStatus
from cvlan.wire.nodeproto import MAX_HEALTH_PEERS
from cvlan.wire.pb import node_pb2 as pb


def _peer(i: int, path: str = "direct", sent: int = 20, answered: int = 20, **kw: object) -> PeerStatus:
    return PeerStatus(
        public_key=f"{i:064x}", node_id=i, path=path, probes_sent=sent, probes_answered=answered, **kw
    )


def test_report_is_bounded_worst_first_and_leaves_vrouters_out() -> None:
    peers = [_peer(i) for i in range(1, 100)]
    peers.append(_peer(500, "none", 20, 0))
    peers.append(_peer(501, answered=5))
    peers.append(PeerStatus(public_key="f" * 64, via_vrouter=True, path="direct"))
    got, omitted = peer_health(DeviceStatus(interface="wg0", engine="fake", peers=peers), now=1000.0)
    assert len(got) == MAX_HEALTH_PEERS and omitted == 101 - MAX_HEALTH_PEERS
    assert [p.node_id for p in got[:2]] == [500, 501]
    assert got[0].path == pb.PEER_HEALTH_PATH_NONE and got[0].handshake_age_s == -1


def test_report_carries_path_region_rtt_and_handshake_age() -> None:
    st = DeviceStatus(
        interface="wg0",
        engine="fake",
        peers=[
            _peer(7, "relay", relay_region="eu", rtt_ms=3.25, last_handshake=990.0, rx_bytes=5, tx_bytes=6)
        ],
    )
    (p,), omitted = peer_health(st, now=1000.0)
    assert omitted == 0
    assert (p.path, p.relay_region, p.rtt_us, p.handshake_age_s) == (
        pb.PEER_HEALTH_PATH_RELAY,
        "eu",
        3250,
        10,
    )
    assert (p.probes_sent, p.probes_answered, p.rx_bytes, p.tx_bytes) == (20, 20, 5, 6)


def test_controller_stores_entries_with_their_state() -> None:
    h = pb.HealthSummary(
        peers=[
            pb.PeerHealth(
                node_id=3, path=pb.PEER_HEALTH_PATH_DIRECT, rtt_us=1500, probes_sent=20, probes_answered=14
            )
        ]
    )
    (e,) = accepted(h)
    assert e["path"] == "direct" and e["rtt_ms"] == 1.5 and e["state"] == "lossy" and e["sent"] == 20


@pytest.mark.parametrize(
    ("h", "message"),
    [
        (
            pb.HealthSummary(peers=[pb.PeerHealth(node_id=i) for i in range(MAX_HEALTH_PEERS + 1)]),
            "at most 64 peers",
        ),
        (
            pb.HealthSummary(peers=[pb.PeerHealth(node_id=1, probes_sent=1, probes_answered=2)]),
            "bad path, region or probe counts",
        ),
        (pb.HealthSummary(peers=[pb.PeerHealth(node_id=1, path=9)]), "bad path, region or probe counts"),  # type: ignore[arg-type]
    ],
)
def test_controller_refuses_bad_entries(h: pb.HealthSummary, message: str) -> None:
    with pytest.raises(DomainError, match=message):
        accepted(h)
