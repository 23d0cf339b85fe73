"""NAT traversal end to end: real NATs (nftables) in namespaces, real wireguard-go, the full stack
(controller, cvlan-relay, cvland + cvlan-ctrl on each node)."""

from __future__ import annotations

import sys
import time

import pytest

from tests.harness.netns import Lab, Netns
from tests.harness.relaystack import peer_paths, start_relay
from tests.harness.stack import start_controller, start_node, wait_until

pytestmark = pytest.mark.e2e


def _mesh(lab: Lab, nat_a: str, nat_b: str):  # type: ignore[no-untyped-def]
    ctl = start_controller(lab, poll_interval_s=2)
    relay = start_relay(lab, ctl)
    _, join = ctl.token("acme", "office")
    a_ns, a_nat = lab.nat_host("a", nat_a)
    b_ns, b_nat = lab.nat_host("b", nat_b)
    a = start_node(lab, a_ns, "a", join)
    b = start_node(lab, b_ns, "b", join)
    a.wait_ready(peers=1)
    b.wait_ready(peers=1)
    return ctl, relay, a, b, a_nat, b_nat


def test_port_preserving_nats_go_direct_without_relay_bytes(lab: Lab) -> None:
    ctl, relay, a, b, _, _ = _mesh(lab, "masquerade", "masquerade")
    wait_until(
        "a and b report STUN mappings", lambda: a.status().mapped_endpoint and b.status().mapped_endpoint, 30
    )
    wait_until("a pings b", lambda: a.ns.ping(b.address()), 60, 0.2)
    wait_until(
        "direct both ways", lambda: peer_paths(a) == {"b": "direct"} and peer_paths(b) == {"a": "direct"}, 30
    )
    before = relay.forwarded_bytes()
    for _ in range(5):
        assert a.ns.ping(b.address())
        assert b.ns.ping(a.address())
    assert relay.forwarded_bytes() == before
    assert a.status().home_relay_region == "eu"


def test_endpoint_dependent_nat_pings_through_relay_within_10s(lab: Lab) -> None:
    ctl, relay, a, b, a_nat, _ = _mesh(lab, "masquerade", "masquerade random")
    t0 = time.monotonic()
    wait_until("a pings b through the relay", lambda: a.ns.ping(b.address(), wait=0.5), 10, 0.1)
    took = time.monotonic() - t0
    assert peer_paths(a) == {"b": "relay"} or peer_paths(b) == {"a": "relay"}
    assert relay.forwarded_bytes() > 0
    print(f"relay path up {took:.1f} s after both nodes applied their maps")

    # The controller learns the STUN-mapped endpoint, the home relay and the path counts.
    def controller_view() -> bool:
        n = {x["name"]: x for x in ctl.nodes("acme")}["a"]
        return bool(
            n["home_relay_region"] == "eu"
            and n["endpoints"]
            and n["endpoints"][0] == f"{a_nat.ip}:51820"
            and n["health"].get("peers_relay") == 1
        )

    wait_until("controller sees a's mapping, home relay and relayed peer", controller_view, 60)

    # Relay restarted mid-ping: traffic resumes within 10 s.
    relay.stop()
    relay.start(with_token=False)
    t1 = time.monotonic()
    wait_until("ping resumes after relay restart", lambda: a.ns.ping(b.address(), wait=0.5), 10, 0.1)
    print(f"traffic resumed {time.monotonic() - t1:.1f} s after the relay came back")


def _set_nat(router: Netns, nat: str) -> None:
    """Replace the NAT statement of a Lab NAT router and forget its existing mappings."""
    router.exec("nft", "delete", "table", "ip", "cvlnat")
    router.exec(
        "nft",
        "-f",
        "-",
        input=(
            "table ip cvlnat {\n"
            "  chain post { type nat hook postrouting priority srcnat; policy accept;\n"
            f'    oifname "wan0" {nat}\n  }}\n'
            "  chain input { type filter hook input priority filter; policy accept;\n"
            '    iifname "wan0" ct state new counter drop\n  }\n'
            "  chain forward { type filter hook forward priority filter; policy accept;\n"
            '    iifname "wan0" ct state new counter drop\n  }\n'
            "}\n"
        ),
    )
    router.exec(sys.executable, "-c", "from pyroute2 import NFCTSocket; NFCTSocket().flush()")


def test_nat_change_moves_peer_from_relay_to_direct(lab: Lab, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CVLAND_STUN_INTERVAL_S", "5")
    ctl, relay, a, b, _, b_nat = _mesh(lab, "masquerade", "masquerade random")
    wait_until("a pings b through the relay", lambda: a.ns.ping(b.address(), wait=0.5), 15, 0.1)
    wait_until("relayed", lambda: "relay" in (peer_paths(a)["b"], peer_paths(b)["a"]), 15)
    _set_nat(b_nat, "masquerade")
    t0 = time.monotonic()
    wait_until(
        "direct both ways after the NAT change",
        lambda: (
            peer_paths(a) == {"b": "direct"} and peer_paths(b) == {"a": "direct"} and a.ns.ping(b.address())
        ),
        120,
    )
    print(f"moved to direct {time.monotonic() - t0:.1f} s after the NAT change")
    before = relay.forwarded_bytes()
    for _ in range(3):
        assert a.ns.ping(b.address())
    assert relay.forwarded_bytes() == before
