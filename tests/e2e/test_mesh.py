"""The full stack: controller + cvlan-ctrl + cvland on real wireguard-go in network namespaces."""

from __future__ import annotations

import pytest

from tests.harness.netns import Lab
from tests.harness.stack import Controller, Node, start_controller, start_node

pytestmark = pytest.mark.e2e


def mesh(
    lab: Lab, ctl: Controller, n: int, tenant: str = "acme", cvlan: str = "office", prefix: str = "n"
) -> list[Node]:
    _, join = ctl.token(tenant, cvlan)
    nodes = [start_node(lab, lab.public_host(f"{prefix}{i}"), f"{prefix}{i}", join) for i in range(n)]
    for node in nodes:
        node.wait_ready(peers=n - 1)
    return nodes


def test_two_nodes_register_and_ping_both_ways(lab: Lab) -> None:
    ctl = start_controller(lab)
    a, b = mesh(lab, ctl, 2)
    rows = {r["name"]: r for r in ctl.nodes("acme")}
    assert set(rows) == {"n0", "n1"}
    assert a.address() == rows["n0"]["address"].split("/")[0]
    assert a.ns.wait_ping(b.address(), timeout=30), "n0 cannot reach n1 over the overlay"
    assert b.ns.wait_ping(a.address(), timeout=10), "n1 cannot reach n0 over the overlay"
    st = a.status()
    assert st.peers[0].name == "n1" and st.peers[0].path == "direct" and st.peers[0].last_handshake > 0
