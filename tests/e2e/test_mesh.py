"""The full stack: controller + cvlan-ctrl + cvland on real wireguard-go in network namespaces."""

from __future__ import annotations

import datetime as dt
import itertools
import json
import time

import pytest

from cvlan.devtools.harness.controller import script
from tests.harness.netns import Lab
from tests.harness.stack import Controller, Node, start_controller, start_node, wait_until

pytestmark = pytest.mark.e2e
OUTAGE_S = 20


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
    # What the node's operator sees.
    cli = [script("cvlancli"), "--socket", str(a.dp.socket), "--ctrl-state-dir", str(a.ctrl_state)]
    status = json.loads(a.ns.exec(*cli, "status", "--json"))
    assert status["node_name"] == "n0" and status["cvlan_name"] == "office"
    assert status["address"].split("/")[0] == a.address() and status["controller_reachable"] is True
    assert status["cert_not_after"] and status["device"]["local_endpoints"] == [f"{a.ns.ip}:51820"]
    peers = json.loads(a.ns.exec(*cli, "peers", "--json"))
    assert [(p["name"], p["path"], p["endpoint"]) for p in peers] == [("n1", "direct", f"{b.ns.ip}:51820")]
    ping = json.loads(a.ns.exec(*cli, "ping", "n1", "--json"))
    assert ping["received"] == 3 and ping["address"] == b.address()
    assert "n1" in a.ns.exec(*cli, "peers") and "reachable" in a.ns.exec(*cli, "status")
    r = a.ns.run(*cli, "ping", "nobody")
    assert r.returncode == 1 and r.stderr.strip() == "cvlancli: no peer 'nobody' (see `cvlancli peers`)"


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


def _last_seen(ctl: Controller, name: str) -> dt.datetime | None:
    row = next(r for r in ctl.nodes("acme") if r["name"] == name)
    seen = row["last_seen"]
    return dt.datetime.fromisoformat(seen.replace("Z", "+00:00")) if seen else None


def test_tunnels_outlive_a_controller_outage_and_polling_resumes(lab: Lab) -> None:
    ctl = start_controller(lab)
    a, b = mesh(lab, ctl, 2)
    assert a.ns.wait_ping(b.address(), timeout=30)
    ctl.stop()
    # Long enough for the broken long-poll and four failed polls (cvlan-ctrl backs off 1, 2, 4, 8 s):
    # the nodes keep their map through repeated failures. A longer outage adds only waiting: the
    # nodes' next poll comes at their next backoff step, up to the 30 s cap.
    outage_end = time.monotonic() + OUTAGE_S
    while time.monotonic() < outage_end:  # traffic keeps flowing during the whole outage
        assert a.ns.ping(b.address(), count=1, wait=2), "tunnel broke while the controller was down"
        assert b.ns.ping(a.address(), count=1, wait=2)
        time.sleep(5)
    assert a.ctrl is not None and a.ctrl.alive() and b.ctrl is not None and b.ctrl.alive()
    restarted = dt.datetime.now(dt.UTC)
    ctl.start()
    for n in (a, b):
        wait_until(
            f"{n.name} polls the restarted controller",
            lambda n=n: (_last_seen(ctl, n.name) or restarted) > restarted,
            timeout=60,
        )
    assert a.ns.ping(b.address(), count=2)


def test_deleted_node_loses_its_tunnels_within_one_poll_interval(lab: Lab) -> None:
    poll_s = 15
    ctl = start_controller(lab, poll_interval_s=poll_s)
    nodes = mesh(lab, ctl, 3)
    gone, rest = nodes[0], nodes[1:]
    gone_addr = gone.address()
    for n in rest:
        assert n.ns.wait_ping(gone_addr, timeout=30)
    node_id = next(r["id"] for r in ctl.nodes("acme") if r["name"] == gone.name)
    assert ctl.api is not None
    status, _ = ctl.api.request("DELETE", f"/api/v1/tenants/acme/nodes/{node_id}")
    assert status == 204
    for n in rest:
        wait_until(
            f"{n.name} dropped the deleted peer",
            lambda n=n: all(p.name != gone.name for p in n.status().peers),
            timeout=poll_s,
        )
        assert not n.ns.ping(gone_addr, count=2), f"{n.name} still reaches the deleted node"
    assert rest[0].ns.ping(rest[1].address(), count=2), "the remaining nodes must keep their tunnel"
