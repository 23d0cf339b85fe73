"""Peer health end to end: three nodes behind real NATs (nftables), two relays, real wireguard-go.

a and c sit behind port-preserving NATs and reach each other directly; b sits behind an
endpoint-dependent NAT and is reached through a relay. The controller's reachability matrix shows
the relayed pairs with their region and an RTT; a router dropping a fifth of the packets shows as
loss; `cvlancli netcheck` tells the two NAT types apart and sees UDP blocked. Over IPv6 (addresses
of the documentation range 2001:db8::/32) netcheck asks a relay whose STUN name has both families,
and sees IPv6 UDP blocked when the router drops it."""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import pytest

from cvlan.cvland.probe import PROBE_INTERVAL_S, PROBE_TIMEOUT_S
from cvlan.devtools.harness.controller import script
from tests.harness.netns import Lab, Netns
from tests.harness.relaystack import STUN_PORT, RelayProc, start_relay
from tests.harness.stack import LONG_POLL_S, Controller, Node, start_controller, start_node, wait_until

pytestmark = pytest.mark.e2e

REPORT_S = 2
CTRL_ARGS = ("--report-interval", str(REPORT_S))


def _matrix(ctl: Controller) -> dict[str, Any]:
    assert ctl.api is not None
    h: dict[str, Any] = ctl.api.get("/api/v1/tenants/acme/cvlans/office/health")
    return h


def _pair(h: dict[str, Any], src: str, dst: str) -> dict[str, Any]:
    return next(p for p in h["pairs"] if p["src_name"] == src and p["dst_name"] == dst)


def _peer_status(x: Node, y: Node) -> Any:
    return next(p for p in x.status().peers if p.name == y.name)


def _netcheck(n: Node) -> dict[str, Any]:
    out = n.ns.exec(
        script("cvlancli"),
        "netcheck",
        "--json",
        "--socket",
        str(n.dp.socket),
        "--ctrl-state-dir",
        str(n.ctrl_state),
    )
    r: dict[str, Any] = json.loads(out)
    return r


def _drop(router: Netns, rule: str) -> None:
    """Add a rule to a forward chain of the NAT router (ahead of its NAT and home firewall)."""
    router.exec(
        "nft",
        "-f",
        "-",
        input=(
            "table ip cvlhealth {\n"
            "  chain drops { type filter hook forward priority -10; policy accept; }\n}\n"
            f"add rule ip cvlhealth drops {rule}\n"
        ),
    )


def test_matrix_shows_relay_and_loss_and_netcheck_tells_nats_apart(lab: Lab) -> None:
    ctl = start_controller(lab, poll_interval_s=2)
    start_relay(lab, ctl, "relay1", "eu")
    start_relay(lab, ctl, "relay2", "us")
    _, join = ctl.token("acme", "office")
    a_ns, _ = lab.nat_host("a", "masquerade")
    b_ns, b_nat = lab.nat_host("b", "masquerade random")
    c_ns, c_nat = lab.nat_host("c", "masquerade")
    a, b, c = (
        start_node(lab, ns, n, join, ctrl_args=CTRL_ARGS) for ns, n in ((a_ns, "a"), (b_ns, "b"), (c_ns, "c"))
    )
    for n in (a, b, c):
        n.wait_ready(peers=2)

    # b's NAT maps per destination: a and b reach each other through a relay. The one that measures
    # it first is in the controller's matrix, with the region and an RTT, within a report interval.
    def relayed_side() -> tuple[Node, Node] | None:
        for x, y in ((a, b), (b, a)):
            p = next(p for p in x.status().peers if p.name == y.name)
            if p.path == "relay" and p.rtt_ms is not None:
                return x, y
        return None

    src, dst = wait_until("a and b reach each other through a relay, probes answered", relayed_side, 60)
    t0 = time.monotonic()

    def relayed_in_matrix() -> dict[str, Any] | None:
        p = _pair(_matrix(ctl), src.name, dst.name)
        return p if p["path"] == "relay" and p["rtt_ms"] is not None else None

    got = wait_until(
        f"the matrix shows {src.name} → {dst.name} relayed with an RTT",
        relayed_in_matrix,
        3 * REPORT_S + LONG_POLL_S + 2,  # a report waits for the held long-poll to be answered
        0.2,
    )
    print(f"{src.name} → {dst.name} in the matrix {time.monotonic() - t0:.1f} s after it was measured: {got}")
    home = {n["name"]: n["home_relay_region"] for n in ctl.nodes("acme")}[dst.name]
    assert got["state"] == "relay" and got["relay_region"] == home and got["rtt_ms"] > 0
    wait_until(
        "the matrix shows a → c direct and ok", lambda: _pair(_matrix(ctl), "a", "c")["state"] == "ok", 20
    )
    h = _matrix(ctl)
    assert _pair(h, "a", "c")["path"] == "direct"
    assert h["pairs"][0]["state"] in ("relay", "down", "lossy")  # unhealthy pairs first

    # A policy that allows only TCP 22: ICMP (cvlancli ping) is dropped, the health probes are not.
    assert ctl.api is not None
    status, _ = ctl.api.request(
        "PUT",
        "/api/v1/tenants/acme/cvlans/office/policy",
        {"rules": [{"src": ["*"], "dst": ["*"], "proto": "tcp", "ports": ["22"]}]},
    )
    assert status == 200
    wait_until(
        "ICMP between a and c is dropped by the policy", lambda: not a.ns.ping(c.address(), wait=0.5), 30
    )
    # The probes have flowed since before the policy: conntrack would let them pass as an established
    # flow. Forget every flow, so that from now on a probe passes by the rule that accepts probes ahead
    # of the policy, or not at all.
    for n in (a, c):
        r = n.ns.run(sys.executable, "-c", "from pyroute2 import Conntrack; Conntrack().flush()")
        assert r.returncode == 0, r.stderr
    time.sleep(
        PROBE_TIMEOUT_S + 2 * PROBE_INTERVAL_S
    )  # probes sent since the policy would be counted lost by now
    for x, y in ((a, c), (c, a)):
        p = _peer_status(x, y)
        assert p.probes_sent > 0 and p.probes_answered == p.probes_sent and p.rtt_ms is not None, p

    # c's router drops a fifth of the packets: the direct pair a ↔ c loses probes both ways.
    _drop(c_nat, "numgen random mod 5 == 0 drop")
    lossy = wait_until(
        "the matrix shows a → c losing probes",
        lambda: (lambda p: p if p["loss"] and p["loss"] > 0.1 else None)(_pair(_matrix(ctl), "a", "c")),
        45,
        1.0,
    )
    print(f"a → c with 20 % drop at c's router: loss {lossy['loss']:.2f}, rtt {lossy['rtt_ms']} ms")
    assert lossy["state"] == "lossy" and lossy["path"] == "direct"
    events = ctl.api.get("/api/v1/tenants/acme/health/events")["items"] if ctl.api else []
    assert any(e["kind"] == "loss" and e["node"] == "a" and e["peer"] == "c" for e in events)

    # netcheck: STUN to both relays from one socket.
    na, nb = _netcheck(a), _netcheck(b)
    assert (na["udp"], na["nat"]) == (True, "port-preserving"), na
    assert (nb["udp"], nb["nat"]) == (True, "endpoint-dependent"), nb
    assert {x["region"] for x in na["answers"] if x["rtt_ms"] is not None} == {"eu", "us"}
    _drop(b_nat, 'iifname "lan0" meta l4proto udp drop')
    nb = _netcheck(b)
    assert (nb["udp"], nb["mapped_endpoint"]) == (False, ""), nb


def test_netcheck_asks_a_relay_over_ipv6_too(lab: Lab) -> None:
    ctl = start_controller(lab, poll_interval_s=2)
    relay_ns, a_ns = lab.public_host("relay1", ipv6=True), lab.public_host("a", ipv6=True)
    name, relay_v6, a_v6 = "relay1.stun.test", relay_ns.addrs[1].split("/")[0], a_ns.addrs[1].split("/")[0]
    lab.hosts_file(a_ns, {name: [relay_ns.ip, relay_v6]})  # the relay's STUN name has both families
    relay = RelayProc(lab, relay_ns, ctl, "relay1", "eu", stun_host=name, stun_listen=f"[::]:{STUN_PORT}")
    relay.create().start()
    _, join = ctl.token("acme", "office")
    a = start_node(lab, a_ns, "a", join)
    a.wait_ready(peers=0)
    wait_until("a has the relay in its relay map", lambda: [r for r in a.status().relays if r.stun], 30)
    n = _netcheck(a)
    assert (n["udp"], n["ipv4"], n["ipv6"]) == (True, True, True), n
    assert n["mapped_endpoint"].startswith(f"{a_ns.ip}:"), n
    assert n["mapped_endpoint_v6"].startswith(f"[{a_v6}]:"), n
    assert sorted((x["family"], x["server_ip"]) for x in n["answers"]) == [(4, relay_ns.ip), (6, relay_v6)]
    assert n["ipv6_address"] is False  # 2001:db8::/32 is not global: the old "has a global address" said no
    human = a.ns.exec(
        script("cvlancli"), "netcheck", "--socket", str(a.dp.socket), "--ctrl-state-dir", str(a.ctrl_state)
    )
    assert f"IPv6              yes, [{a_v6}]:" in human, human
    # The internet router drops IPv6 UDP: IPv4 still answers, IPv6 does not.
    assert lab.inet is not None
    lab.inet.exec(
        "nft",
        "-f",
        "-",
        input="table ip6 cvlv6 {\n  chain drops { type filter hook forward priority 0; policy accept;\n"
        "    meta l4proto udp drop\n  }\n}\n",
    )
    n = _netcheck(a)
    assert (n["udp"], n["ipv4"], n["ipv6"], n["mapped_endpoint_v6"]) == (True, True, False, ""), n
    assert [x["error"] for x in n["answers"] if x["family"] == 6] == ["no answer"]
