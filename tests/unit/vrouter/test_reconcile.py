"""Desired vrouter state -> hub configuration (pure), and the nftables table it renders."""

from __future__ import annotations

import ipaddress
import os
import shutil
import subprocess
from typing import Any

import pytest

from cvlan.dataplane.firewall import FirewallError
from cvlan.dataplane.hubchoice import HUB_KEEPALIVE
from cvlan.vrouter.reconcile import VROUTER_KEEPALIVE, build, render_ruleset
from cvlan.wire.keys import generate_keypair

PRIV, _ = generate_keypair()
K = [generate_keypair()[1] for _ in range(5)]


def state() -> dict[str, Any]:
    member = {"node_id": 1, "name": "e1", "key": K[0], "address": "100.64.0.1/32", "region": "east"}
    return {
        "vrouter": {"id": 1, "name": "vr-east", "region": "east", "endpoint": "192.0.2.1:51900"},
        "cvlans": [
            {
                "id": 7,
                "tenant_id": 1,
                "name": "office",
                "subnet": "100.64.0.0/24",
                "mode": "mesh",
                "members": [
                    {
                        **member,
                        "endpoints": ["bogus", "192.0.2.10:51820"],
                        "hub": "vr-east",
                        "hubs": [1],
                        "served": True,
                    },
                    {
                        **member,
                        "node_id": 2,
                        "name": "w1",
                        "key": K[1],
                        "address": "100.64.0.2/32",
                        "endpoints": [],
                        "hub": "vr-west",
                        "hubs": [2],
                        "served": False,
                    },
                ],
            },
            {
                "id": 8,
                "tenant_id": 2,
                "name": "lab",
                "subnet": "100.64.1.0/24",
                "mode": "hub",
                "members": [
                    {
                        **member,
                        "node_id": 3,
                        "name": "g1",
                        "key": K[2],
                        "address": "100.64.1.1/32",
                        "endpoints": [],
                        "hub": "vr-east",
                        "hubs": [1],
                        "served": True,
                    }
                ],
            },
        ],
        "vrouters": [
            {
                "id": 2,
                "name": "vr-west",
                "region": "west",
                "key": K[3],
                "endpoint": "vr-west.example:51900",
                "allowed_ips": ["100.64.0.2/32"],
            }
        ],
    }


def test_served_members_and_other_vrouters_become_peers() -> None:
    cfg = build(state(), PRIV, "hub0", 51900, resolve=lambda _: "198.51.100.7:51900")
    peers = {p.public_key: p for p in cfg.wg.peers}
    assert set(peers) == {K[0], K[2], K[3]}, "w1 is served by vr-west, not here"
    assert peers[K[0]].allowed_ips == ("100.64.0.1/32",) and peers[K[0]].endpoint == "192.0.2.10:51820"
    assert peers[K[2]].endpoint == "" and peers[K[2]].keepalive == 0
    assert peers[K[3]].allowed_ips == ("100.64.0.2/32",) and peers[K[3]].endpoint == "198.51.100.7:51900"
    assert peers[K[3]].keepalive == VROUTER_KEEPALIVE
    assert cfg.routes == ("100.64.0.0/24", "100.64.1.0/24") and (cfg.cvlans, cfg.served) == (2, 2)
    assert cfg.wg.listen_port == 51900


def test_unresolvable_vrouter_endpoint_is_left_to_roaming() -> None:
    def fail(_: str) -> str:
        raise OSError("no such host")

    cfg = build(state(), PRIV, "hub0", 51900, resolve=fail)
    assert {p.public_key: p.endpoint for p in cfg.wg.peers}[K[3]] == ""


def test_bad_keys_are_refused_by_name() -> None:
    s = state()
    s["vrouters"][0]["key"] = "xyz"
    with pytest.raises(ValueError, match="vrouter vr-west: expected 64 hex characters"):
        build(s, PRIV, "hub0", 1)


def test_ruleset_jumps_by_source_cvlan_to_a_destination_check() -> None:
    nets = [(7, ipaddress.IPv4Network("100.64.0.0/24")), (8, ipaddress.IPv4Network("100.64.1.0/24"))]
    text = render_ruleset("hub0", nets)
    assert "100.64.0.0/24 : jump cvlan_7, 100.64.1.0/24 : jump cvlan_8" in text
    assert (
        "chain cvlan_8 {\n"
        '    ip daddr 100.64.1.0/24 udp dport 41720 counter name "forwarded" accept\n'  # health probes
        '    ip daddr 100.64.1.0/24 counter name "forwarded" accept'
    ) in text
    assert text.index("ip saddr vmap @cvlan_of_src") < text.index('counter name "denied" drop')
    assert "elements" not in render_ruleset("hub0", [])
    with pytest.raises(FirewallError, match="interface name"):
        render_ruleset("bad name", nets)


@pytest.mark.skipif(
    shutil.which("nft") is None or os.geteuid() != 0,
    reason="this machine lacks nft or root (nft -c needs it)",
)
@pytest.mark.parametrize("n", [0, 1, 3])
def test_rendered_ruleset_passes_nft_check(n: int) -> None:
    nets = [(i, ipaddress.IPv4Network(f"100.64.{i}.0/24")) for i in range(n)]
    r = subprocess.run(
        ["nft", "-c", "-f", "-"],
        input=render_ruleset("hub0", nets),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 0, r.stderr


POLICY_RULES: list[dict[str, Any]] = [
    {"action": "accept", "src": ["100.64.0.9/32"], "proto": "tcp", "ports": ["22"]},
    {"action": "drop", "src": ["100.64.0.0/24"], "proto": "", "ports": []},
]


def test_member_policy_is_enforced_in_the_forward_chain() -> None:
    s = state()
    s["cvlans"][0]["members"][0]["filter_rules"] = POLICY_RULES
    text = build(s, PRIV, "hub0", 51900, resolve=lambda _: "198.51.100.7:51900").ruleset
    assert "ip daddr vmap { 100.64.0.1 : jump node_1 }" in text
    start = text.index("  chain node_1 {\n")
    chain = text[start : text.index("\n  }\n", start)].splitlines()[1:]
    assert (
        chain[0]
        == '    ip saddr 100.64.0.9/32 meta l4proto tcp tcp dport { 22 } counter name "forwarded" accept'
    )
    assert chain[1].startswith("    ip saddr 100.64.0.0/24 ") and chain[1].endswith(
        'counter name "denied" drop'
    )
    assert chain[2:] == ['    counter name "denied" drop']
    assert "jump node_3" not in text, "members without a policy only get the CVLAN check"
    assert text.index("ct state established,related") < text.index("ip saddr vmap @cvlan_of_src")


@pytest.mark.skipif(
    shutil.which("nft") is None or os.geteuid() != 0,
    reason="this machine lacks nft or root (nft -c needs it)",
)
def test_ruleset_with_policies_passes_nft_check() -> None:
    s = state()
    s["cvlans"][0]["members"][0]["filter_rules"] = POLICY_RULES
    s["cvlans"][1]["members"][0]["filter_rules"] = [
        {"action": "accept", "src": [], "proto": "icmp", "ports": []}
    ]
    text = build(s, PRIV, "hub0", 51900, resolve=lambda _: "198.51.100.7:51900").ruleset
    r = subprocess.run(["nft", "-c", "-f", "-"], input=text, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr + text


def two_east_vrouters() -> dict[str, Any]:
    """vr-east (this one, id 1) and vr-east-2 (id 3) in east, vr-west (id 2): e1 prefers vr-east-2."""
    s = state()
    e1 = s["cvlans"][0]["members"][0]
    e1["hubs"], e1["hub"] = [3, 1], "vr-east-2"
    s["vrouters"].append(
        {"id": 3, "name": "vr-east-2", "region": "east", "key": K[4], "endpoint": "192.0.2.3:51900"}
    )
    return s


def test_a_member_is_routed_through_its_active_hub() -> None:
    s = two_east_vrouters()
    cfg = build(s, PRIV, "hub0", 51900, resolve=lambda e: e)
    peers = {p.public_key: p for p in cfg.wg.peers}
    assert peers[K[0]].allowed_ips == (), "e1 uses vr-east-2: its /32 goes there, not to e1 directly"
    assert peers[K[0]].keepalive == HUB_KEEPALIVE, "e1 can fail over to here: it must see this vrouter alive"
    assert peers[K[4]].allowed_ips == ("100.64.0.1/32",) and peers[K[4]].keepalive == VROUTER_KEEPALIVE
    assert peers[K[3]].allowed_ips == ("100.64.0.2/32",)
    assert peers[K[2]].keepalive == 0, "g1 has one hub only: no keepalives needed"
    assert set(cfg.vrouter_keys) == {K[3], K[4]} and cfg.served == 2

    # vr-east-2 is dead: e1's /32 goes to e1 itself (the member makes the same choice).
    cfg = build(s, PRIV, "hub0", 51900, resolve=lambda e: e, active=lambda order: order[-1])
    peers = {p.public_key: p for p in cfg.wg.peers}
    assert peers[K[0]].allowed_ips == ("100.64.0.1/32",) and peers[K[4]].allowed_ips == ()
