"""cvlan-ctrl's NetworkMap -> DesiredState conversion (pure)."""

from __future__ import annotations

from cvlan.agent.netmap import desired_state
from cvlan.agent.state import Identity
from cvlan.wire.pb import node_pb2 as pb

IDENT = Identity(
    server="https://c",
    ca_pem="CA",
    wg_private_key="11" * 32,
    tls_key_pem="K",
    cert_pem="C",
    node_id=5,
    node_name="me",
    address="100.64.0.5/32",
    tenant_id=1,
    cvlan_id=2,
    cvlan_name="office",
    cvlan_subnet="100.64.0.0/24",
)


def test_peers_vrouters_relays_and_credentials() -> None:
    m = pb.NetworkMap(
        version=77,
        self=pb.SelfNode(node_id=5, name="me", address="100.64.0.5/32"),
        cvlan_subnet="100.64.0.0/24",
        peers=[
            pb.Peer(
                node_id=6,
                name="b",
                wg_public_key=b"\x02" * 32,
                allowed_ips=["100.64.0.6/32"],
                endpoints=["192.0.2.6:51820"],
                home_relay_region="eu",
            ),
            pb.Peer(node_id=7, name="broken", wg_public_key=b"\x03" * 5),
        ],
        vrouters=[
            pb.VrouterPeer(
                vrouter_id=1,
                name="hub",
                region="eu",
                wg_public_key=b"\x04" * 32,
                endpoint="203.0.113.1:51820",
                allowed_ips=["100.64.0.0/24"],
            ),
            pb.VrouterPeer(vrouter_id=2, name="unregistered"),
        ],
        relay_map=pb.RelayMap(
            regions=[
                pb.RelayRegion(
                    name="eu", relays=[pb.RelayNode(name="r", url="https://r", stun="192.0.2.9:3478")]
                )
            ]
        ),
        filter_rules=[pb.FilterRule(action="accept", proto="tcp", ports=["22"])],
    )
    st = desired_state(IDENT, m, 51999)
    assert st.version == 77 and st.node_id == 5 and st.listen_port == 51999
    assert st.private_key == "11" * 32 and st.tls_cert_pem == "C" and st.ca_pem == "CA"
    b, hub = st.peers
    assert b.public_key == "02" * 32 and b.allowed_ips == ["100.64.0.6/32"] and b.relay_region == "eu"
    assert not b.via_vrouter and b.endpoints == ["192.0.2.6:51820"]
    assert hub.via_vrouter and hub.allowed_ips == ["100.64.0.0/24"] and hub.endpoints == ["203.0.113.1:51820"]
    assert [(r.region, r.stun) for r in st.relays] == [("eu", "192.0.2.9:3478")]
    assert st.filter_rules == [{"action": "accept", "src": [], "proto": "tcp", "ports": ["22"]}]


def test_empty_map_falls_back_to_the_enrolment() -> None:
    st = desired_state(IDENT, pb.NetworkMap(version=1), 51820)
    assert st.address == "100.64.0.5/32" and st.cvlan_subnet == "100.64.0.0/24" and st.peers == []


def test_dns_hosts_are_the_node_and_the_peers_the_policy_lets_it_reach() -> None:
    z = "office.acme.cvlan.internal"
    m = pb.NetworkMap(
        version=3,
        self=pb.SelfNode(node_id=5, name="me", address="100.64.0.5/32", dns_name=f"me.{z}"),
        cvlan_subnet="100.64.0.0/24",
        peers=[
            pb.Peer(
                node_id=i, wg_public_key=bytes([i]) * 32, address=f"100.64.0.{i}/32", dns_name=f"n{i}.{z}"
            )
            for i in (6, 7)
        ],
    )
    assert desired_state(IDENT, m, 51820).dns is None  # an older controller: DNS left alone
    # The map's DnsConfig comes in two pieces (the CVLAN's, the receiver's) that protobuf merges.
    raw = m.SerializeToString()
    raw += pb.NetworkMap(dns=pb.DnsConfig(zone=z, resolver="100.100.100.100")).SerializeToString()
    raw += pb.NetworkMap(dns=pb.DnsConfig(peer_ids=[7])).SerializeToString()
    d = desired_state(IDENT, pb.NetworkMap.FromString(raw), 51820).dns
    assert d is not None and (d.zone, d.resolver) == (z, "100.100.100.100")
    assert [(h.name, h.address) for h in d.hosts] == [(f"me.{z}", "100.64.0.5"), (f"n7.{z}", "100.64.0.7")]
    m.dns.CopyFrom(pb.DnsConfig(zone=z, resolver="100.100.100.100", all_peers=True))
    d = desired_state(IDENT, m, 51820).dns
    assert d is not None and [h.name for h in d.hosts] == [f"me.{z}", f"n6.{z}", f"n7.{z}"]
