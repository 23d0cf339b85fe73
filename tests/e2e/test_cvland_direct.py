"""Two cvland daemons driven directly over their IPC sockets with hand-made DesiredState."""

from __future__ import annotations

import time

import pytest

from cvlan.wire.ipc import DesiredState, PeerConfig
from cvlan.wire.keys import generate_keypair
from tests.harness import ipcclient
from tests.harness.cvland import Dataplane, start_cvland
from tests.harness.netns import Lab

pytestmark = pytest.mark.e2e

SUBNET = "100.64.7.0/24"


def _state(version: int, priv: str, addr: str, peers: list[PeerConfig], **kw: object) -> DesiredState:
    return DesiredState(
        version=version,
        node_id=1,
        private_key=priv,
        address=addr,
        cvlan_subnet=SUBNET,
        listen_port=51820,
        peers=peers,
        **kw,  # type: ignore[arg-type]
    )


def _wait_handshake(dp: Dataplane, timeout: float = 20.0) -> ipcclient.DeviceStatus:
    deadline = time.monotonic() + timeout
    st = dp.status()
    while time.monotonic() < deadline:
        st = dp.status()
        if st.peers and all(p.last_handshake > 0 for p in st.peers):
            return st
        time.sleep(0.3)
    return st


def test_two_cvland_over_ipc_ping_both_ways(lab: Lab) -> None:
    a, b = lab.lan_pair()
    da, db = start_cvland(lab, a), start_cvland(lab, b)
    (pa, ka), (pb, kb) = generate_keypair(), generate_keypair()
    # A lists a dead candidate first and B knows no endpoint for A: only A's path selection,
    # moving on to the second candidate, can bring the tunnel up.
    sa = _state(
        1,
        pa,
        "100.64.7.1/32",
        [
            PeerConfig(
                public_key=kb,
                allowed_ips=["100.64.7.2/32"],
                endpoints=["10.201.0.9:51820", "10.201.0.2:51820"],
                name="b",
            )
        ],
    )
    sb = _state(
        2,
        pb,
        "100.64.7.2/32",
        [PeerConfig(public_key=ka, allowed_ips=["100.64.7.1/32"], endpoints=[], name="a")],
    )
    ans = ipcclient.apply(da.socket, sa)
    assert ans["ok"] and ans["applied_version"] == 1, ans
    assert ipcclient.apply(db.socket, sb)["applied_version"] == 2

    assert a.wait_ping("100.64.7.2", timeout=30), "A cannot reach B over the tunnel"
    assert b.wait_ping("100.64.7.1", timeout=10), "B cannot reach A over the tunnel"

    st = _wait_handshake(da)
    assert st.interface == da.ifname and st.engine == "wireguard-go" and st.applied_version == 1
    peer = st.peers[0]
    assert peer.name == "b" and peer.public_key == kb and peer.path == "direct"
    assert peer.endpoint == "10.201.0.2:51820" and peer.rx_bytes > 0 and peer.tx_bytes > 0
    assert st.local_endpoints == ["10.201.0.1:51820"]
