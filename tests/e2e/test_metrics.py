"""Every daemon's /metrics, scraped from a running deployment in namespaces: controller (with its proxy
socket), cvlan-front (two workers), a relay, a vrouter in hub mode, and a node's cvland and cvlan-ctrl
on real wireguard-go. Each must export every name docs/METRICS.md lists for it, so the document and
the code cannot drift; a few values are checked against what the test saw happen."""

from __future__ import annotations

import re
import ssl
import time

import pytest

from cvlan.devtools.harness.controller import script
from cvlan.devtools.lab.nsconnect import socket_in_netns
from tests.harness.metricsdoc import documented, exported, scrape
from tests.harness.netns import Lab, Netns, Proc
from tests.harness.relaystack import start_relay
from tests.harness.stack import Controller, start_controller, start_node, wait_until
from tests.harness.vrouterstack import attach, cvlan_with_token, start_vrouter

pytestmark = pytest.mark.e2e

CVLAND, CTRL, VROUTER, FRONT, CONTROLLER = 9371, 9372, 9373, 9374, 9464
"""The node daemons', the vrouter's and the controller's default ports; the front's first worker (given)."""
FRONT_PORT = 9443


def value(text: str, series: str) -> float:
    """The value of one series, e.g. 'cvlan_ctrl_polls_total{result="changed"}' (0 if absent)."""
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def total(texts: list[str], prefix: str) -> float:
    """Sum of every series starting with prefix (e.g. a counter over its labels) in several scrapes."""
    return sum(
        float(line.rsplit(" ", 1)[1])
        for text in texts
        for line in text.splitlines()
        if line.startswith(prefix)
    )


def check_documented(section: str, text: str) -> None:
    want = documented()[section]
    got = exported(text)
    missing = sorted(set(want) - set(got))
    assert not missing, f"{section} does not export {missing} (documented in docs/METRICS.md)"
    wrong = {n: (t, got[n]) for n, t in want.items() if got[n] != t}
    assert not wrong, f"{section}: documented type differs from the exported one: {wrong}"


def start_front(ctl: Controller, sock: str) -> None:
    d = ctl.data_dir
    ctl.ns.spawn(
        "front",
        script("cvlan-front"),
        "--listen",
        f"127.0.0.1:{FRONT_PORT}",
        "--cert",
        str(d / "server.crt"),
        "--key",
        str(d / "server.key"),
        "--ca",
        str(d / "ca.crt"),
        "--backend",
        sock,
        "--workers",
        "2",
        "--metrics-listen",
        f"127.0.0.1:{FRONT}",
    )


def not_tls(ns: Netns) -> None:
    """A client that speaks HTTP to the TLS port: one failed handshake for the front to count."""
    s = socket_in_netns(ns.name)
    s.settimeout(5)
    with s:
        s.connect(("127.0.0.1", FRONT_PORT))
        s.sendall(b"\x16\x03\x01\x00\x05hello")  # a handshake record whose body is not a ClientHello
        try:
            s.recv(100)
        except (TimeoutError, OSError):
            pass


def discover_through_front(ns: Netns) -> bytes:
    """One node API request through the front, as a node does before it has a certificate."""
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE  # loopback; the names are the controller's
    s = socket_in_netns(ns.name)
    s.settimeout(10)
    s.connect(("127.0.0.1", FRONT_PORT))
    with ctx.wrap_socket(s) as t:
        t.sendall(b"GET /v1/discover HTTP/1.1\r\nHost: ctl\r\nConnection: close\r\n\r\n")
        data = b""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            chunk = t.recv(65536)
            if not chunk:
                break
            data += chunk
    return data


def test_every_daemon_exports_its_documented_metrics(lab: Lab) -> None:
    sock = str(lab.dir / "ctl-proxy.sock")
    ctl = start_controller(lab, args=("--proxy-socket", sock))
    start_front(ctl, sock)
    relay = start_relay(lab, ctl)
    hub = start_vrouter(lab, ctl, "hub1", "eu")
    join = cvlan_with_token(ctl, "acme", "office", "hub", region="eu")
    attach(ctl, "acme", "office", "hub1")
    a = start_node(lab, lab.public_host("a"), "a", join)
    b = start_node(lab, lab.public_host("b"), "b", join)
    for n in (a, b):
        n.wait_ready(peers=2)
    hub.wait_served(cvlans=1, served=2, peers=2)
    assert a.ns.wait_ping(b.address(), timeout=45), "a cannot reach b through the vrouter"
    started = time.time()

    check_documented("cvlan-controller", scrape(ctl.ns.name, CONTROLLER))

    check_documented("cvlan-relay", relay.metrics_text())

    text = scrape(hub.ns.name, VROUTER)
    check_documented("cvlan-vrouter", text)
    cvlan_id = re.search(r'cvlan_vrouter_forwarded_bytes_total\{cvlan="(\d+)",direction="rx"\}', text)
    assert cvlan_id, "no per-CVLAN forwarded bytes after a ping through the hub"
    assert (
        value(text, f'cvlan_vrouter_forwarded_bytes_total{{cvlan="{cvlan_id.group(1)}",direction="rx"}}') > 0
    )
    assert value(text, "cvlan_vrouter_cvlans") == 1

    text = scrape(a.ns.name, CVLAND)
    check_documented("cvland", text)
    assert value(text, 'cvlan_cvland_peers{path="direct"}') >= 1, "the hub peer handshook directly"
    assert value(text, "cvlan_cvland_applied_version") > 0
    # b is reached through the hub: the health probes cross the vrouter (its forward chain lets them
    # through ahead of any policy) and give b a round trip and the path "vrouter".
    text = wait_until(
        "a measures a round trip to b through the vrouter",
        lambda: (lambda t: t if "cvlan_cvland_peer_rtt_seconds{" in t else None)(scrape(a.ns.name, CVLAND)),
        20,
    )
    assert value(text, 'cvlan_cvland_peers{path="vrouter"}') == 1

    text = scrape(a.ns.name, CTRL)
    check_documented("cvlan-ctrl", text)
    assert value(text, 'cvlan_ctrl_polls_total{result="changed"}') >= 1
    assert value(text, "cvlan_ctrl_maps_applied_total") >= 1
    assert value(text, "cvlan_ctrl_certificate_expiry_timestamp_seconds") > started

    not_tls(ctl.ns)
    answer = discover_through_front(ctl.ns)
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
    texts = [scrape(ctl.ns.name, FRONT + worker) for worker in (0, 1)]
    for text in texts:
        check_documented("cvlan-front", text)
    # Each event is counted once, by the worker the kernel gave the connection to.
    assert total(texts, "cvlan_front_handshake_failures_total{") == 1, "the one bad handshake"
    assert total(texts, "cvlan_front_handshakes_total") == 1
    assert total(texts, 'cvlan_front_requests_total{result="forwarded"}') == 1
    assert total(texts, 'cvlan_front_tls_records_total{direction="in"}') >= 1
    assert total(texts, 'cvlan_front_tls_records_total{direction="out"}') >= 1
    assert total(texts, "cvlan_front_connections_accepted_total") == 2


def start_ctrl(ns: Netns, lab: Lab, name: str, *extra: str) -> Proc:
    """cvlan-ctrl enrolling with an unreachable controller: it keeps retrying (and serving metrics)."""
    argv = [script("cvlan-ctrl"), "--state-dir", str(lab.dir / name), "--server", "https://192.0.2.1:1"]
    argv += ["--token", "cvt_x", "--ca-pin", "sha256:" + "0" * 64, "--enrol-timeout", "30", *extra]
    return ns.spawn(name, *argv)


def test_a_taken_default_port_is_a_warning_a_given_one_an_error(lab: Lab) -> None:
    ns = lab.public_host("n")
    first = start_ctrl(ns, lab, "first")
    wait_until("the first cvlan-ctrl serves metrics", lambda: scrape(ns.name, CTRL), 20, 0.2)
    second = start_ctrl(ns, lab, "second")  # default address, taken: runs without metrics
    third = start_ctrl(ns, lab, "third", "--metrics-listen", f"127.0.0.1:{CTRL}")  # given: must bind
    wait_until("the third cvlan-ctrl exits", lambda: not third.alive(), 20, 0.2)
    assert f"metrics listener 127.0.0.1:{CTRL}" in third.output()
    wait_until("the second warns", lambda: "metrics listener not started" in second.output(), 20, 0.2)
    assert first.alive() and second.alive()
    for p in (first, second):
        p.stop(grace=1.0)  # cvlan-ctrl acts on SIGTERM only after enrolling: do not wait for that
