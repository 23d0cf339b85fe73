"""Denied traffic end to end: a CVLAN policy reaches the nodes, the receiving node drops and logs what it
does not allow, and the controller lists the denied flows, while allowed traffic keeps flowing."""

from __future__ import annotations

import sys
from typing import Any

import pytest

from tests.harness.netns import Lab
from tests.harness.stack import start_controller, start_node, wait_until

pytestmark = pytest.mark.e2e

KNOCK = """
import socket, sys
t = socket.socket()
t.settimeout(1)
try:
    t.connect((sys.argv[1], 8080))
except OSError:
    pass
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for _ in range(3):
    u.sendto(b"x", (sys.argv[1], 5353))
"""


def test_policy_drops_are_reported_to_the_controller(lab: Lab) -> None:
    ctl = start_controller(lab)
    _, join = ctl.token("acme", "office")
    a = start_node(lab, lab.public_host("d0"), "d0", join)
    b = start_node(lab, lab.public_host("d1"), "d1", join)
    a.wait_ready(peers=1)
    b.wait_ready(peers=1)
    assert ctl.api is not None
    status, _ = ctl.api.request(
        "PUT",
        "/api/v1/tenants/acme/cvlans/office/policy",
        {"rules": [{"src": ["*"], "dst": ["*"], "proto": "icmp"}]},
    )
    assert status == 200
    # ICMP is allowed: the tunnel keeps working once the new filter is in place.
    assert b.ns.wait_ping(a.address(), timeout=30)

    def denied() -> list[dict[str, Any]] | None:
        b.ns.run(sys.executable, "-c", KNOCK, a.address(), timeout=30)
        assert ctl.api is not None
        _, page = ctl.api.request("GET", "/api/v1/tenants/acme/denied")
        ports = {f["dport"] for f in page["items"]}
        return page["items"] if {8080, 5353} <= ports else None

    flows = wait_until("denied flows at the controller", denied, timeout=90, interval=3)
    by_port = {f["dport"]: f for f in flows}
    assert by_port[8080]["proto"] == "tcp" and by_port[5353]["proto"] == "udp"
    assert by_port[8080]["src"] == b.address() and by_port[8080]["dst"] == a.address()
    assert by_port[5353]["packets"] >= 3
    # The other direction is not affected by anything d0 did, and pings still cross.
    assert a.ns.wait_ping(b.address(), timeout=15)
