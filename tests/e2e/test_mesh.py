"""The full stack: controller + cvlan-ctrl + cvland on real wireguard-go in network namespaces."""

from __future__ import annotations

import itertools

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


def test_tunnel_survives_restart_of_both_daemons_without_a_token(lab: Lab) -> None:
    ctl = start_controller(lab)
    a, b = mesh(lab, ctl, 2)
    before = {r["name"]: (r["id"], r["address"]) for r in ctl.nodes("acme")}
    addr_a = a.address()
    a.restart(lab)
    a.wait_ready(peers=1)
    assert a.address() == addr_a
    assert a.ns.wait_ping(b.address(), timeout=30), "no tunnel after restarting cvlan-ctrl and cvland"
    assert b.ns.wait_ping(addr_a, timeout=10)
    after = {r["name"]: (r["id"], r["address"]) for r in ctl.nodes("acme")}
    assert after == before, "the restarted node must keep its id and address (no re-registration)"
    assert a.ctrl is not None and a.ctrl.alive()


def test_five_nodes_every_pair_pings(lab: Lab) -> None:
    ctl = start_controller(lab)
    nodes = mesh(lab, ctl, 5)
    failed = [
        f"{x.name}->{y.name}"
        for x, y in itertools.permutations(nodes, 2)
        if not x.ns.wait_ping(y.address(), timeout=20)
    ]
    assert not failed, f"pairs without connectivity: {failed}"


def test_two_tenants_on_the_same_hosts_cannot_reach_each_other(lab: Lab) -> None:
    ctl = start_controller(lab)
    hosts = [lab.public_host(f"h{i}") for i in range(2)]
    _, join_a = ctl.token("acme", "office")
    _, join_g = ctl.token("globex", "lab")
    acme = [start_node(lab, h, f"acme{i}", join_a, 51820, "a") for i, h in enumerate(hosts)]
    globex = [start_node(lab, h, f"globex{i}", join_g, 51821, "g") for i, h in enumerate(hosts)]
    for n in acme + globex:
        n.wait_ready(peers=1)
    acme_keys = {r["wg_public_key"] for r in ctl.nodes("acme")}
    globex_keys = {r["wg_public_key"] for r in ctl.nodes("globex")}
    assert not acme_keys & globex_keys
    for group, own in ((acme, acme_keys), (globex, globex_keys)):
        for n in group:
            assert {p.public_key for p in n.status().peers} <= own, "a peer of another tenant was configured"
    # Inside each tenant: both ways.
    assert acme[0].ns.wait_ping(acme[1].address(), timeout=30)
    assert globex[1].ns.wait_ping(globex[0].address(), timeout=30)
    # Across tenants, sourced from the tenant's own overlay address: never.
    h0 = hosts[0]
    for src, dst in ((acme[0], globex[1]), (globex[0], acme[1])):
        r = h0.run("ping", "-n", "-q", "-c", "3", "-W", "1", "-I", src.address(), dst.address(), timeout=20)
        assert r.returncode != 0, f"{src.name} reached {dst.name} across tenants:\n{r.stdout}"
