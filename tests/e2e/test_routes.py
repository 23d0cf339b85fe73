"""Subnet routes and exit nodes end to end: controller, cvlan-ctrl and cvland on real wireguard-go in
namespaces. A LAN behind two routers (not CVLAN members), a web server on the fake internet, a relay."""

from __future__ import annotations

import json
import sys
from typing import Any

import pytest

from cvlan.devtools.harness.controller import script
from tests.e2e.conftest import give_resolv_conf
from tests.harness.netns import Lab, Netns
from tests.harness.relaystack import RELAY_PORT, RelayProc, start_relay
from tests.harness.stack import CONTROLLER_PORT, Controller, Node, start_controller, start_node, wait_until

pytestmark = pytest.mark.e2e

LAN = "10.1.0.0/24"
LAN_HOST = "10.1.0.5"
WEB_PORT = "8080"


def lan_behind(lab: Lab, routers: list[Netns]) -> Netns:
    """A host 10.1.0.5 on a bridge with one leg to each router (router i: 10.1.0.(i+1)/24)."""
    host = lab.ns("lanhost")
    host.exec("ip", "link", "add", "br0", "type", "bridge")
    for i, r in enumerate(routers):
        lab.veth(r, "lan0", f"10.1.0.{i + 1}/24", host, f"leg{i}", "")
        host.exec("ip", "link", "set", f"leg{i}", "master", "br0")
    host.exec("ip", "addr", "add", f"{LAN_HOST}/24", "dev", "br0")
    host.exec("ip", "link", "set", "br0", "up")
    host.exec("ip", "route", "add", "default", "via", "10.1.0.1")
    return host


CORP_DNS = """
import socket, dns.message, dns.rrset
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("10.1.0.5", 53))
while True:
    data, peer = s.recvfrom(512)
    q = dns.message.from_wire(data)
    r = dns.message.make_response(q)
    r.answer.append(dns.rrset.from_text(q.question[0].name, 60, "IN", "A", "10.1.0.99"))
    s.sendto(r.to_wire(), peer)
"""
"""A DNS server on the LAN host answering every query with 10.1.0.99 (the corp.example resolver)."""


def api(ctl: Controller, method: str, path: str, body: Any = None) -> Any:
    assert ctl.api is not None
    return ctl.api.request(method, "/api/v1/tenants/acme" + path, body)


def routes(ctl: Controller) -> list[dict[str, Any]]:
    code, body = api(ctl, "GET", "/routes")
    assert code == 200, body
    return list(body["items"])


def web_clients(web: Any) -> list[str]:
    """Client addresses in the web server's access log, oldest first."""
    return [line.split()[0] for line in web.output().splitlines() if '"GET /' in line]


def fetch(node: Node, url: str) -> bool:
    code = f"import urllib.request as u; u.urlopen({url!r}, timeout=3).read()"
    return node.ns.run(sys.executable, "-c", code, timeout=10).returncode == 0


def connects(node: Node, ip: str, port: int) -> bool:
    """A TCP connection from the node's namespace to ip:port opens (within 3 s)."""
    code = f"import socket; socket.create_connection(({ip!r}, {port}), timeout=3).close()"
    return node.ns.run(sys.executable, "-c", code, timeout=10).returncode == 0


def control_plane_direct(node: Node, ctl: Controller, relay: RelayProc) -> bool:
    """The controller and the relay are routed the host's own way (not into the tunnel) and answer."""
    for ip, port in ((ctl.ns.ip, CONTROLLER_PORT), (relay.ns.ip, RELAY_PORT)):
        if node.dp.ifname in node.ns.exec("ip", "route", "get", ip) or not connects(node, ip, port):
            return False
    return True


def cli(node: Node, *argv: str) -> Any:
    base = [script("cvlancli"), "--socket", str(node.dp.socket), "--ctrl-state-dir", str(node.ctrl_state)]
    return node.ns.run(*base, *argv, timeout=40)


def host_routing(ns: Netns) -> tuple[str, str, str]:
    return (
        ns.exec("ip", "rule"),
        ns.exec("ip", "route", "show", "table", "all"),
        ns.exec("sysctl", "net.ipv4.ip_forward"),
    )


def test_subnet_route_failover_and_exit_node(lab: Lab, own_resolv_conf: list[Netns]) -> None:
    ctl = start_controller(lab)
    relay = start_relay(lab, ctl)
    _, join = ctl.token("acme", "office")
    a_ns, a2_ns, b_ns, web_ns = (lab.public_host(n) for n in ("ra", "rb", "b", "web"))
    lan = lan_behind(lab, [a_ns, a2_ns])
    web = web_ns.spawn("web", sys.executable, "-m", "http.server", "--bind", web_ns.ip, WEB_PORT)
    url = f"http://{web_ns.ip}:{WEB_PORT}/"
    adv = ("--advertise-routes", LAN)
    a = start_node(lab, a_ns, "ra", join, ctrl_args=(*adv, "--advertise-exit-node"))
    a.wait_ready(peers=0)  # ra enrols first: the lower node id, primary of the shared route
    a2 = start_node(lab, a2_ns, "rb", join, ctrl_args=adv)
    b_before = host_routing(b_ns)
    give_resolv_conf(b_ns, own_resolv_conf, "nameserver 192.0.2.53\n")
    b = start_node(lab, b_ns, "b", join, dns_mode="resolv.conf")
    for n in (a, a2, b):
        n.wait_ready(peers=2)

    # Advertised, not approved: nothing reaches the LAN, nothing is forwarded.
    wait_until("both adverts stored", lambda: len([r for r in routes(ctl) if r["route"] == LAN]) == 2, 30)
    assert sorted((r["node"], r["route"], r["state"]) for r in routes(ctl)) == [
        ("ra", "0.0.0.0/0", "pending"),
        ("ra", LAN, "pending"),
        ("rb", LAN, "pending"),
    ]
    assert not b.ns.ping(LAN_HOST, count=1, wait=1)
    assert a.status().forwarding == [] and a_ns.exec("sysctl", "-n", "net.ipv4.ip_forward").strip() == "0"

    for node in ("ra", "rb"):
        code, body = api(ctl, "POST", f"/nodes/{node}/routes/approve", {"routes": [LAN]})
        assert code == 200, body
    assert b.ns.wait_ping(LAN_HOST, timeout=30), "b cannot reach the LAN host through the approved route"
    assert wait_until("b routes the LAN via ra", lambda: b.status().routes == {LAN: "ra"}, 20)
    primary = {r["node"] for r in routes(ctl) if r["route"] == LAN and r["primary"]}
    assert primary == {"ra"}
    assert lan.run("ping", "-c", "1", "-W", "1", b.address()).returncode != 0, (
        "the LAN reaches into the CVLAN"
    )

    # Split DNS through the route: corp.example goes to the resolver on the LAN, behind ra.
    lan.spawn("corpdns", sys.executable, "-c", CORP_DNS)
    code, body = api(ctl, "PUT", "/cvlans/office/dns/forwarders/corp.example", {"servers": [LAN_HOST]})
    assert code == 200, body
    dig = ("dig", "+short", "+time=2", "+tries=1", "@100.100.100.100", "git.corp.example")
    assert wait_until(
        "corp.example resolves", lambda: b_ns.exec(*dig, check=False).strip() == "10.1.0.99", 30
    )

    # Exit node: b's internet traffic goes through ra (the web server sees ra's address), the
    # controller stays direct, and clearing the selection restores b's routing exactly.
    assert fetch(b, url) and web_clients(web)[-1] == b_ns.ip
    r = cli(b, "up", "--exit-node", "ra")
    assert r.returncode == 1 and r.stderr == (
        "cvlancli: cvland refused up: exit node 'ra': peer 'ra' is not an approved exit node"
        " (see `cvlancli status`)\n"
    )
    code, body = api(ctl, "POST", "/nodes/ra/routes/approve", {"exit_node": True})
    assert code == 200, body
    wait_until("b selects ra as exit node", lambda: cli(b, "up", "--exit-node", "ra").returncode == 0, 20)
    assert wait_until("web sees ra", lambda: fetch(b, url) and web_clients(web)[-1] == a_ns.ip, 20)
    # A policy governs who leaves through the exit node: members only -> b's internet traffic is
    # dropped on ra; a rule naming `internet` for b opens it again (the controller stays reachable).
    code, body = api(ctl, "PUT", "/cvlans/office/policy", {"rules": [{"src": ["*"], "dst": ["*"]}]})
    assert code == 200, body
    assert wait_until("ra drops b's internet traffic", lambda: not fetch(b, url), 30)
    assert control_plane_direct(b, ctl, relay), "the policy cut b off its controller or relay"

    def exit_flow_reported() -> bool:
        flows = api(ctl, "GET", "/denied")[1]["items"]
        return any(
            f["src"] == b.address() and f["dst"] == web_ns.ip and f["dport"] == int(WEB_PORT) for f in flows
        )

    assert wait_until("ra reports b's refused exit flow", exit_flow_reported, 45, interval=2)
    assert (
        cli(b, "status").returncode == 0
        and "ra (all internet traffic goes through it)" in cli(b, "status").stdout
    )
    opened = {"src": ["node:b"], "dst": ["internet"], "proto": "tcp", "ports": [WEB_PORT]}
    code, body = api(ctl, "PUT", "/cvlans/office/policy", {"rules": [{"src": ["*"], "dst": ["*"]}, opened]})
    assert code == 200, body
    assert wait_until("the policy lets b out", lambda: fetch(b, url) and web_clients(web)[-1] == a_ns.ip, 30)
    code, body = api(ctl, "DELETE", "/cvlans/office/policy")
    assert code in (200, 204), body
    assert b.dp.ifname in b_ns.exec("ip", "route", "get", web_ns.ip)
    assert control_plane_direct(b, ctl, relay), "the controller and the relay must not go through the exit"
    status = json.loads(cli(b, "status", "--json").stdout)
    assert status["controller_reachable"] is True and status["device"]["exit_node"] == "ra"
    assert "ra (all internet traffic goes through it)" in cli(b, "status").stdout
    assert cli(b, "up", "--exit-node", "").returncode == 0
    assert fetch(b, url) and web_clients(web)[-1] == b_ns.ip
    assert control_plane_direct(b, ctl, relay)
    after = host_routing(b_ns)
    assert after[0] == b_before[0] and after[2] == b_before[2]
    assert "table 51888" not in after[1]

    # Failover: the primary goes away, the standby carries the route within seconds.
    a.stop_ctrl()
    assert a.dp.proc is not None
    a.dp.proc.stop()
    assert wait_until("b moves the LAN to rb", lambda: b.status().routes == {LAN: "rb"}, 30)
    assert b.ns.wait_ping(LAN_HOST, timeout=15), "b cannot reach the LAN host through the standby"
    assert "10.1.0.0/24 dev lan0" in a2_ns.exec("ip", "route"), "rb's own LAN route was replaced"
