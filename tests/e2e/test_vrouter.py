"""Vrouters end to end: controller, cvlan-vrouter and nodes (cvlan-ctrl + cvland) on real wireguard-go
in network namespaces. "Crossed the vrouter" is read from the vrouter's own WireGuard counters."""

from __future__ import annotations

import base64
import json

import pytest

from cvlan.wire.keys import parse_key, public_of
from tests.harness.netns import Lab, Netns
from tests.harness.stack import Node, start_controller, start_node, wait_until
from tests.harness.vrouterstack import RunningVrouter, attach, cvlan_with_token, start_vrouter

pytestmark = pytest.mark.e2e

PAYLOAD = 1000
COUNT = 5
VOLUME = PAYLOAD * COUNT
"""Bytes of ICMP payload one ping_load sends each way: far above keepalives and handshakes."""


def ping_load(src: Netns, dst_ip: str) -> None:
    """COUNT pings of PAYLOAD bytes; every one must be answered."""
    r = src.run(
        "ping", "-n", "-q", "-c", str(COUNT), "-i", "0.2", "-W", "2", "-s", str(PAYLOAD), dst_ip, timeout=30
    )
    assert r.returncode == 0, f"ping {dst_ip} from {src.short}: {r.stdout}{r.stderr}"


def key_of(n: Node) -> str:
    """The node's WireGuard public key (hex) as the vrouter sees it."""
    d = json.loads((n.dp.state_dir / "desired.json").read_text())
    return str(public_of(d["private_key"]))


def delta(before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]], key: str) -> tuple[int, int]:
    b = before.get(key, (0, 0))
    a = after[key]
    return a[0] - b[0], a[1] - b[1]


def vrouter_key(v: RunningVrouter) -> str:
    return str(public_of(parse_key((v.state_dir / "wg.key").read_text())))


def test_hub_mode_traffic_crosses_the_vrouter(lab: Lab) -> None:
    ctl = start_controller(lab)
    hub = start_vrouter(lab, ctl, "hub1", "east")
    join = cvlan_with_token(ctl, "acme", "office", "hub")
    attach(ctl, "acme", "office", "hub1")
    a = start_node(lab, lab.public_host("a"), "a", join)
    b = start_node(lab, lab.public_host("b"), "b", join)
    for n in (a, b):
        n.wait_ready(peers=2)  # the other member (no allowed IPs) and the vrouter (the subnet)
    hub.wait_served(cvlans=1, served=2, peers=2)
    st = a.status()
    by_name = {p.name: p for p in st.peers}
    assert by_name["b"].allowed_ips == [], "in hub mode the member itself carries no route"
    assert by_name["hub1"].allowed_ips and by_name["hub1"].allowed_ips[0].endswith("/24")

    assert a.ns.wait_ping(b.address(), timeout=45), "a cannot reach b through the vrouter"
    before = hub.counters()
    ping_load(a.ns, b.address())
    after = hub.counters()
    rx_a, tx_a = delta(before, after, key_of(a))
    rx_b, tx_b = delta(before, after, key_of(b))
    assert rx_a >= VOLUME and tx_b >= VOLUME, f"requests a->hub->b: rx from a {rx_a}, tx to b {tx_b}"
    assert rx_b >= VOLUME and tx_a >= VOLUME, f"replies b->hub->a: rx from b {rx_b}, tx to a {tx_a}"
    assert hub.denied() == 0

    # Restart from the state dir alone: same WireGuard key, so the nodes' maps stay as they are.
    key = vrouter_key(hub)
    hub.restart()
    hub.wait_served(cvlans=1, served=2, peers=2)
    assert vrouter_key(hub) == key
    assert a.ns.wait_ping(b.address(), timeout=45), "no traffic through the restarted vrouter"
    before = hub.counters()
    ping_load(b.ns, a.address())
    rx_b, _ = delta(before, hub.counters(), key_of(b))
    assert rx_b >= VOLUME

    # A CVLAN policy is enforced in the vrouter too: only tcp/22 may reach b; ping may reach a.
    assert ctl.api is not None
    policy = {
        "rules": [
            {"src": ["*"], "dst": ["node:b"], "proto": "tcp", "ports": ["22"]},
            {"src": ["*"], "dst": ["node:a"], "proto": "icmp"},
        ]
    }
    ctl.api.request("PUT", "/api/v1/tenants/acme/cvlans/office/policy", policy)
    wait_until("the vrouter loaded b's policy", lambda: "node_" in hub.ns.exec("nft", "list", "ruleset"), 30)
    denied0, c0 = hub.denied(), hub.counters()
    r = a.ns.run(
        "ping", "-n", "-q", "-c", str(COUNT), "-i", "0.2", "-W", "1", "-s", str(PAYLOAD), b.address()
    )
    c1 = hub.counters()
    assert r.returncode != 0, "ping to b must be denied by the policy"
    assert hub.denied() - denied0 >= COUNT, "the vrouter itself drops and counts them"
    assert delta(c0, c1, key_of(a))[0] >= VOLUME and delta(c0, c1, key_of(b))[1] < PAYLOAD
    assert b.ns.wait_ping(a.address(), timeout=20), "the policy lets b ping a"


def test_two_regions_direct_inside_a_region_and_through_both_vrouters_across(lab: Lab) -> None:
    ctl = start_controller(lab)
    east = start_vrouter(lab, ctl, "vr-east", "east")
    west = start_vrouter(lab, ctl, "vr-west", "west")
    join_east = cvlan_with_token(ctl, "acme", "office", "mesh", region="east")
    join_west = cvlan_with_token(ctl, "acme", "office", "mesh", region="west")
    attach(ctl, "acme", "office", "vr-east")
    attach(ctl, "acme", "office", "vr-west")
    a1 = start_node(lab, lab.public_host("a1"), "a1", join_east)
    a2 = start_node(lab, lab.public_host("a2"), "a2", join_east)
    b1 = start_node(lab, lab.public_host("b1"), "b1", join_west)
    for n in (a1, a2, b1):
        n.wait_ready(peers=3)  # two members and the vrouter of its own region
    east.wait_served(cvlans=1, served=2, peers=3)  # a1, a2 and vr-west
    west.wait_served(cvlans=1, served=1, peers=2)  # b1 and vr-east
    peers = {p.name: p for p in a1.status().peers}
    assert set(peers) == {"a2", "b1", "vr-east"}, "only the own region's vrouter is a peer"
    assert peers["a2"].allowed_ips == [f"{a2.address()}/32"] and peers["b1"].allowed_ips == []

    # Same region: direct. The vrouter sees at most keepalives, never the ping volume.
    assert a1.ns.wait_ping(a2.address(), timeout=45)
    before = east.counters()
    ping_load(a1.ns, a2.address())
    after = east.counters()
    moved = sum(
        after[k][0] - before.get(k, (0, 0))[0] + after[k][1] - before.get(k, (0, 0))[1] for k in after
    )
    # (keepalives and a rekey handshake on each of its peers stay well below half the ping volume)
    assert moved < VOLUME // 2, f"same-region traffic crossed vr-east ({moved} bytes)"

    # Across regions: a1 -> vr-east -> vr-west -> b1, and back.
    assert a1.ns.wait_ping(b1.address(), timeout=45), "a1 cannot reach b1 across regions"
    e0, w0 = east.counters(), west.counters()
    ping_load(a1.ns, b1.address())
    e1, w1 = east.counters(), west.counters()
    rx, tx = delta(e0, e1, key_of(a1))
    assert rx >= VOLUME and tx >= VOLUME, f"vr-east <-> a1: rx {rx} tx {tx}"
    rx, tx = delta(e0, e1, vrouter_key(west))
    assert rx >= VOLUME and tx >= VOLUME, f"vr-east <-> vr-west: rx {rx} tx {tx}"
    rx, tx = delta(w0, w1, vrouter_key(east))
    assert rx >= VOLUME and tx >= VOLUME, f"vr-west <-> vr-east: rx {rx} tx {tx}"
    rx, tx = delta(w0, w1, key_of(b1))
    assert rx >= VOLUME and tx >= VOLUME, f"vr-west <-> b1: rx {rx} tx {tx}"
    assert b1.ns.wait_ping(a2.address(), timeout=20), "b1 cannot reach a2 across regions"


def test_a_vrouter_serving_two_tenants_never_forwards_between_them(lab: Lab) -> None:
    ctl = start_controller(lab)
    hub = start_vrouter(lab, ctl, "shared", "east")
    join_acme = cvlan_with_token(ctl, "acme", "office", "hub")
    join_globex = cvlan_with_token(ctl, "globex", "lab", "hub")
    attach(ctl, "acme", "office", "shared")
    attach(ctl, "globex", "lab", "shared")
    a1 = start_node(lab, lab.public_host("a1"), "a1", join_acme)
    a2 = start_node(lab, lab.public_host("a2"), "a2", join_acme)
    g1 = start_node(lab, lab.public_host("g1"), "g1", join_globex)
    a1.wait_ready(peers=2)
    a2.wait_ready(peers=2)
    g1.wait_ready(peers=1)  # alone in its CVLAN: only the vrouter
    hub.wait_served(cvlans=2, served=3, peers=3)
    assert a1.ns.wait_ping(a2.address(), timeout=45), "members of one tenant must reach each other"
    assert g1.address() and not a1.ns.ping(g1.address()), "no route to another tenant's CVLAN"

    # A hostile member of acme routes globex's subnet into its tunnel to the shared vrouter.
    assert ctl.api is not None
    globex_subnet = ctl.api.get("/api/v1/tenants/globex/cvlans/lab")["subnet"]
    acme_subnet = ctl.api.get("/api/v1/tenants/acme/cvlans/office")["subnet"]
    vr_b64 = base64.b64encode(bytes.fromhex(vrouter_key(hub))).decode()
    a1.ns.exec("wg", "set", a1.dp.ifname, "peer", vr_b64, "allowed-ips", f"{acme_subnet},{globex_subnet}")
    a1.ns.exec("ip", "route", "replace", globex_subnet, "dev", a1.dp.ifname)
    denied0 = hub.denied()
    c0 = hub.counters()
    r = a1.ns.run(
        "ping", "-n", "-q", "-c", str(COUNT), "-i", "0.2", "-W", "1", "-s", str(PAYLOAD), g1.address()
    )
    c1 = hub.counters()
    assert r.returncode != 0, "the vrouter forwarded a packet from acme into globex"
    rx, _ = delta(c0, c1, key_of(a1))
    assert rx >= VOLUME, "the hostile packets did reach the vrouter (the test must exercise its firewall)"
    assert hub.denied() - denied0 >= COUNT, "each packet across tenants is counted as denied"
    _, tx_g = delta(c0, c1, key_of(g1))
    assert tx_g < PAYLOAD, f"nothing but keepalives may go to globex's member ({tx_g} bytes)"
    assert a1.ns.wait_ping(a2.address(), timeout=20), "acme's own traffic still flows"
