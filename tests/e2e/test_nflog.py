"""NFLOG: packets dropped by an nftables `log group` rule reach our reader, aggregated per flow."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator

import pytest

from cvlan.dataplane.nflog import Aggregator, Flow, NflogError, NflogReader

pytestmark = pytest.mark.e2e

NS = f"cvnfl{os.getpid() % 100000}"
SENDER = f"cvnfs{os.getpid() % 100000}"
HOST_IF, NS_IF = f"nflh{os.getpid() % 10000}", f"nfln{os.getpid() % 10000}"
SEND = """
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for _ in range(3):
    s.sendto(b"x", ("10.203.0.2", 9999))
s.sendto(b"allowed", ("10.203.0.2", 9998))
t = socket.socket()
t.settimeout(0.5)
try:
    t.connect(("10.203.0.2", 8080))
except OSError:
    pass
"""
RULES = f"""
table inet cvnfltest {{
  chain input {{
    type filter hook input priority filter; policy accept;
    iifname "{NS_IF}" udp dport 9999 log prefix "cvlan-deny " group 7 drop
    iifname "{NS_IF}" tcp dport 8080 log prefix "cvlan-deny " group 7 drop
  }}
}}
"""


def sh(*args: str) -> None:
    subprocess.run(args, check=True, timeout=30, capture_output=True)


@pytest.fixture
def netns() -> Iterator[str]:
    if os.geteuid() != 0:
        pytest.skip("needs root to create network namespaces")
    sh("ip", "netns", "add", NS)
    sh("ip", "netns", "add", SENDER)
    try:
        sh("ip", "-n", SENDER, "link", "add", HOST_IF, "type", "veth", "peer", "name", NS_IF, "netns", NS)
        sh("ip", "-n", SENDER, "addr", "add", "10.203.0.1/30", "dev", HOST_IF)
        sh("ip", "-n", SENDER, "link", "set", HOST_IF, "up")
        sh("ip", "-n", NS, "addr", "add", "10.203.0.2/30", "dev", NS_IF)
        sh("ip", "-n", NS, "link", "set", NS_IF, "up")
        subprocess.run(
            ["ip", "netns", "exec", NS, "nft", "-f", "-"], input=RULES.encode(), check=True, timeout=30
        )
        yield NS
    finally:
        subprocess.run(["ip", "netns", "del", SENDER], capture_output=True, timeout=30)
        subprocess.run(["ip", "netns", "del", NS], capture_output=True, timeout=30)


def test_dropped_packets_are_read_and_aggregated(netns: str) -> None:
    reader = subprocess.Popen(
        [
            "ip",
            "netns",
            "exec",
            netns,
            sys.executable,
            "-m",
            "cvlan.dataplane.nflog",
            "--group",
            "7",
            "--prefix",
            "cvlan-deny",
            "--seconds",
            "6",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert reader.stdout is not None
        assert json.loads(reader.stdout.readline()) == {"ready": True}
        subprocess.run(["ip", "netns", "exec", SENDER, sys.executable, "-c", SEND], check=True, timeout=30)
        out, err = reader.communicate(timeout=30)
    finally:
        if reader.poll() is None:
            reader.kill()
    flows = [json.loads(line) for line in out.splitlines()]
    by_port = {f["dport"]: f for f in flows}
    assert set(by_port) == {9999, 8080}, (flows, err)
    assert by_port[9999] == {
        "src": "10.203.0.1",
        "dst": "10.203.0.2",
        "proto": "udp",
        "dport": 9999,
        "packets": 3,
    }
    assert by_port[8080]["proto"] == "tcp" and by_port[8080]["packets"] >= 1


def test_second_listener_on_the_same_group_is_refused(netns: str) -> None:
    code = (
        "from cvlan.dataplane.nflog import NflogReader, NflogError\n"
        "a = NflogReader(7)\n"
        "try:\n    NflogReader(7)\nexcept NflogError as e:\n    print(e)\n"
    )
    r = subprocess.run(
        ["ip", "netns", "exec", netns, sys.executable, "-c", code], capture_output=True, text=True, timeout=30
    )
    assert "another listener holds this group" in r.stdout, r.stderr


def test_aggregator_is_bounded() -> None:
    agg = Aggregator(max_flows=2)
    for port in (1, 2, 3, 1):
        agg.add(Flow("a", "b", "tcp", port))
    assert agg.overflow == 1
    assert agg.drain() == [(Flow("a", "b", "tcp", 1), 2), (Flow("a", "b", "tcp", 2), 1)]
    assert agg.drain() == [] and agg.overflow == 0
    with pytest.raises(NflogError, match="must be 0-65535"):
        NflogReader(70000)
