"""A node whose certificate expired while its host was down comes back as itself (wireguard-go, two
namespaces): first with a new token in a root-only file, then -- down again until expired -- with no
token, approved by a tenant admin; each time the same node id and address, and its peer reaches it
again. Certificates last 20 s here so that one can expire during the test. About 80 s."""

from __future__ import annotations

import os

import pytest

from tests.harness.cvland import start_cvland
from tests.harness.netns import Lab
from tests.harness.stack import Controller, start_node, wait_until

pytestmark = pytest.mark.e2e

LIFETIME_S = 20


def test_expired_node_reauthenticates_keeps_id_and_address_and_is_reached_again(lab: Lab) -> None:
    env = {"CVLAN_CONTROLLER_POLL_INTERVAL_S": "5", "CVLAN_CONTROLLER_NODE_CERT_LIFETIME_S": str(LIFETIME_S)}
    ctl = Controller(lab, lab.public_host("ctl"), lab.dir / "controller", env).start()
    assert ctl.api is not None
    _, join = ctl.token("acme", "office")
    a, b = (start_node(lab, lab.public_host(n), n, join) for n in ("n0", "n1"))
    for node in (a, b):
        node.wait_ready(peers=1)
    before = {n["name"]: n for n in ctl.nodes("acme")}["n1"]
    addr_b = b.address()
    assert a.ns.wait_ping(addr_b, timeout=30), "no tunnel to start with"

    # The host goes down (both daemons) until its certificate has expired.
    b.stop_ctrl()
    b.dp.proc.stop()
    assert {n["name"]: n for n in ctl.nodes("acme")}["n1"]["expires_in_s"] <= LIFETIME_S
    wait_until("n1's certificate expired", lambda: _expired(ctl), LIFETIME_S + 10, interval=1)

    token, _ = ctl.token("acme", "office", reusable=False)
    token_file = lab.dir / "n1.token"
    token_file.write_text(token + "\n")
    os.chmod(token_file, 0o600)
    b.dp = start_cvland(lab, b.ns, ifname=b.dp.ifname, state_dir=b.dp.state_dir, tag=b.tag)
    b.start_ctrl(token_file=token_file)
    # cvland re-applies its saved state at once; the node is back once it has a new certificate.
    wait_until("n1 re-authenticated", lambda: not _expired(ctl), 60, interval=1)
    b.wait_ready(peers=1, timeout=30)
    after = {n["name"]: n for n in ctl.nodes("acme")}["n1"]
    assert (after["id"], after["address"], after["wg_public_key"]) == (
        before["id"],
        before["address"],
        before["wg_public_key"],
    )
    assert b.address() == addr_b and len(ctl.nodes("acme")) == 2
    assert a.ns.wait_ping(addr_b, timeout=30), "the peer does not reach the node again"
    assert b.ns.wait_ping(a.address(), timeout=10)
    assert b.ctrl is not None and "re-authenticated as node n1" in b.ctrl.output()

    # Down again until expired; back with no token: it asks, a tenant admin approves, it is back.
    b.stop_ctrl()
    b.dp.proc.stop()
    wait_until("n1's certificate expired again", lambda: _expired(ctl), LIFETIME_S + 10, interval=1)
    b.dp = start_cvland(lab, b.ns, ifname=b.dp.ifname, state_dir=b.dp.state_dir, tag=b.tag)
    b.start_ctrl()
    wait_until("n1 asks a tenant admin", lambda: _asking(ctl), 60, interval=1)
    assert _expired(ctl) and b.ctrl is not None and b.ctrl.alive()
    assert ctl.api.post("/api/v1/tenants/acme/nodes/n1/reauth/approve", {})["state"] == "approved"
    wait_until("n1 re-authenticated after approval", lambda: not _expired(ctl), 60, interval=1)
    b.wait_ready(peers=1, timeout=30)
    again = {n["name"]: n for n in ctl.nodes("acme")}["n1"]
    assert (again["id"], again["address"]) == (before["id"], before["address"])
    assert a.ns.wait_ping(addr_b, timeout=30), "the peer does not reach the approved node"
    assert "waits for a tenant admin's approval" in b.ctrl.output()


def _asking(ctl: Controller) -> bool:
    assert ctl.api is not None
    items = ctl.api.get("/api/v1/tenants/acme/reauth-requests")["items"]
    return [(r["node"], r["state"]) for r in items] == [("n1", "pending")]


def _expired(ctl: Controller) -> bool:
    n = {n["name"]: n for n in ctl.nodes("acme")}["n1"]
    return n["expires_in_s"] is not None and n["expires_in_s"] < 0
