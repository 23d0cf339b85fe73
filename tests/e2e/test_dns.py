"""DNS names for nodes on a real mesh (wireguard-go, namespaces): a node resolves its peers' names with
getent and dig and pings them by name; another CVLAN's names are NXDOMAIN; a rename resolves within a
poll; a tenant record resolves; `cvlancli down` and cvland stop give the namespace its resolv.conf back
byte for byte. About 40 s."""

from __future__ import annotations

import json

import pytest

from cvlan.devtools.harness.controller import script
from tests.e2e.conftest import give_resolv_conf
from tests.harness.netns import Lab, Netns
from tests.harness.stack import start_controller, start_node, wait_until

pytestmark = pytest.mark.e2e

ORIGINAL = "# the namespace's own resolver configuration\nnameserver 192.0.2.53\nsearch example.test\n"
ZONE = "office.acme.cvlan.internal"


def _getent(ns: Netns, name: str) -> str:
    r = ns.run("getent", "hosts", name, timeout=15)
    return r.stdout.split()[0] if r.returncode == 0 and r.stdout.split() else ""


def _dig(ns: Netns, name: str, *opts: str) -> tuple[str, list[str]]:
    out = ns.exec("dig", "+time=2", "+tries=2", *opts, name, check=False, timeout=20)
    status = next(
        (w.rstrip(",") for line in out.splitlines() if "status:" in line for w in line.split()[5:6]), ""
    )
    rows = [ln.split() for ln in out.splitlines() if not ln.startswith(";")]
    answers = [w[-1] for w in rows if len(w) >= 5 and w[2] == "IN"]
    return status, answers


def test_nodes_resolve_peers_by_name_and_the_host_config_comes_back(
    lab: Lab, own_resolv_conf: list[Netns]
) -> None:
    ctl = start_controller(lab)
    assert ctl.api is not None
    _, join = ctl.token("acme", "office")
    _, join_lab = ctl.token("acme", "lab")
    ns_a = lab.public_host("n0")
    conf = give_resolv_conf(ns_a, own_resolv_conf, ORIGINAL)
    a = start_node(lab, ns_a, "n0", join, dns_mode="resolv.conf")
    b = start_node(lab, lab.public_host("n1"), "n1", join)
    c = start_node(lab, lab.public_host("n2"), "n2", join_lab)
    a.wait_ready(peers=1)
    b.wait_ready(peers=1)
    c.wait_ready(peers=0)
    addr_b = b.address()

    assert conf.read_text().startswith("# Written by cvland (CVLAN)")
    assert "nameserver 100.100.100.100\nnameserver 192.0.2.53\n" in conf.read_text()
    assert _getent(ns_a, f"n1.{ZONE}") == addr_b
    assert _getent(ns_a, "n1") == addr_b, "the short name (search domain) does not resolve"
    assert _dig(ns_a, f"n1.{ZONE}") == ("NOERROR", [addr_b])
    assert _dig(ns_a, f"n1.{ZONE}", "+tcp") == ("NOERROR", [addr_b])
    assert ns_a.wait_ping("n1", timeout=30), "no ping by name"
    # Another CVLAN of the same tenant: NXDOMAIN from the node's resolver, nothing from getent.
    assert _dig(ns_a, "n2.lab.acme.cvlan.internal")[0] == "NXDOMAIN"
    assert _getent(ns_a, "n2.lab.acme.cvlan.internal") == ""

    ctl.api.request("PATCH", "/api/v1/tenants/acme/nodes/n1", {"name": "db1"})
    wait_until("the renamed node resolves", lambda: _getent(ns_a, f"db1.{ZONE}") == addr_b, 20)
    assert _dig(ns_a, f"n1.{ZONE}")[0] == "NXDOMAIN"

    ctl.api.post(
        "/api/v1/tenants/acme/cvlans/office/dns/records", {"name": "git", "type": "A", "value": "10.1.0.7"}
    )
    wait_until(
        "the tenant's record resolves", lambda: _dig(ns_a, f"git.{ZONE}") == ("NOERROR", ["10.1.0.7"]), 20
    )

    cli = [script("cvlancli"), "--socket", str(a.dp.socket), "--ctrl-state-dir", str(a.ctrl_state)]
    status = json.loads(ns_a.exec(*cli, "status", "--json"))
    assert status["device"]["dns"]["zone"] == ZONE and status["device"]["dns"]["host_config"] == "resolv.conf"

    ns_a.exec(*cli, "down")
    assert conf.read_text() == ORIGINAL, "cvlancli down left the resolver configuration changed"
    ns_a.exec(*cli, "up")
    wait_until("names resolve again after up", lambda: _getent(ns_a, f"db1.{ZONE}") == addr_b, 30)
    a.stop_ctrl()
    a.dp.proc.stop()
    assert conf.read_text() == ORIGINAL, "cvland stop left the resolver configuration changed"
