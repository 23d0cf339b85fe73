"""`cvlancli down` / `up` on a real mesh (wireguard-go, nftables, two namespaces): the node leaves the
network and comes back with the same address, and stays down across a restart. About 25 s."""

from __future__ import annotations

import json

import pytest

from cvlan.devtools.harness.controller import script
from tests.harness.netns import Lab
from tests.harness.stack import start_controller, start_node

pytestmark = pytest.mark.e2e


def test_down_stops_traffic_survives_a_restart_and_up_restores_the_same_address(lab: Lab) -> None:
    ctl = start_controller(lab)
    _, join = ctl.token("acme", "office")
    a, b = (start_node(lab, lab.public_host(n), n, join) for n in ("n0", "n1"))
    for node in (a, b):
        node.wait_ready(peers=1)
    addr_a = a.address()
    assert a.ns.wait_ping(b.address(), timeout=30), "no tunnel to start with"
    assert a.ns.run("nft", "list", "table", "inet", f"cvlan-{a.dp.ifname}").returncode == 0
    cli = [script("cvlancli"), "--socket", str(a.dp.socket), "--ctrl-state-dir", str(a.ctrl_state)]

    out = a.ns.exec(*cli, "down")
    assert out.strip() == (
        f"down: {a.dp.ifname} removed (tunnel, routes, firewall); identity and address {addr_a}/32 kept; "
        "stays down across restarts until `cvlancli up`"
    )
    assert a.ns.run("ip", "link", "show", a.dp.ifname).returncode != 0, "the interface is still there"
    assert a.ns.run("nft", "list", "table", "inet", "cvlan").returncode != 0, (
        "the nftables table is still there"
    )
    assert not a.ns.ping(b.address(), count=2), "traffic still flows after down"
    assert not b.ns.ping(addr_a, count=2), "the peer still reaches the node after down"

    # Both daemons restart (a reboot, an upgrade): the node stays down until `up`.
    a.restart(lab)
    status = json.loads(a.ns.exec(*cli, "status", "--json"))
    assert status["device"]["down"] is True and status["address"].split("/")[0] == addr_a
    assert "DOWN" in a.ns.exec(*cli, "status")
    assert not a.ns.ping(b.address(), count=2), "a restart brought the node back up"

    out = a.ns.exec(*cli, "up")
    assert out.strip() == f"up: {a.dp.ifname} back on the network with address {addr_a}/32"
    a.wait_ready(peers=1)
    assert a.address() == addr_a
    assert a.ns.wait_ping(b.address(), timeout=30), "no tunnel after up"
    assert b.ns.wait_ping(addr_a, timeout=10)
    assert [n["address"].split("/")[0] for n in ctl.nodes("acme") if n["name"] == "n0"] == [addr_a]
