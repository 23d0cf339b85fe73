"""Disabling a node on a real mesh (wireguard-go, two namespaces, long-poll): its peer drops it and the
tunnel is gone at once; enabled, it comes back with the same address. About 25 s."""

from __future__ import annotations

import pytest

from tests.harness.netns import Lab
from tests.harness.stack import start_controller, start_node, wait_until

pytestmark = pytest.mark.e2e


def test_disabled_node_loses_its_tunnels_and_regains_them_when_enabled(lab: Lab) -> None:
    ctl = start_controller(lab)
    assert ctl.api is not None
    _, join = ctl.token("acme", "office")
    a, b = (start_node(lab, lab.public_host(n), n, join) for n in ("n0", "n1"))
    for node in (a, b):
        node.wait_ready(peers=1)
    addr_b = b.address()
    assert a.ns.wait_ping(addr_b, timeout=30), "no tunnel to start with"

    assert ctl.api.post("/api/v1/tenants/acme/nodes/n1/disable", {})["disabled"] is True
    # The peer's long-poll is answered at once (well inside one 5 s poll interval).
    a.wait_ready(peers=0, timeout=5)
    b.wait_ready(peers=0, timeout=10)  # the disabled node drops its peers and keeps running
    assert not a.ns.ping(addr_b, count=2), "traffic still reaches the disabled node"
    assert b.ctrl is not None and b.ctrl.alive(), "cvlan-ctrl exited on a disabled node"
    wait_until("the agent logged why", lambda: "disabled by an administrator" in b.ctrl.output(), 10)

    assert ctl.api.post("/api/v1/tenants/acme/nodes/n1/enable", {})["disabled"] is False
    a.wait_ready(peers=1, timeout=5)
    b.wait_ready(peers=1, timeout=40)  # the agent asks again with backoff (30 s at most)
    assert b.address() == addr_b
    assert a.ns.wait_ping(addr_b, timeout=30), "no tunnel after enable"
    assert b.ns.wait_ping(a.address(), timeout=10)
