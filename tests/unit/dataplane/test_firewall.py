"""The nftables ruleset renderer: the whole table, atomically replaceable, and its input checks."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from cvlan.dataplane.firewall import FirewallError, render_ruleset


def test_empty_rules_allow_the_cvlan_subnet_and_drop_the_rest() -> None:
    text = render_ruleset("wg0", "100.64.0.0/24", [])
    assert text.startswith("table inet cvlan-wg0 {}\ndelete table inet cvlan-wg0\ntable inet cvlan-wg0 {\n")
    lines = [line.strip() for line in text.splitlines()]
    i = lines.index('iifname != "wg0" accept')
    assert lines[i + 1 : i + 5] == [
        "ct state established,related accept",
        'iifname "wg0" ip saddr 100.64.0.0/24 udp dport 41720 accept',  # health probes (docs/HEALTH.md)
        'iifname "wg0" ip saddr 100.64.0.0/24 accept',
        'log prefix "cvlan-deny " group 1117 counter name "denied" drop',
    ]


def test_rules_render_in_order() -> None:
    rules: list[dict[str, object]] = [
        {"src": "100.64.0.7/32", "proto": "tcp", "ports": [22, "8000-8100"]},
        {"src": ["100.64.0.8/32", "100.64.0.9/32"], "proto": "icmp"},
        {"proto": "udp", "ports": ["53"], "comment": "dns"},
    ]
    body = [line.strip() for line in render_ruleset("wg0", "100.64.0.0/24", rules).splitlines()]
    assert 'iifname "wg0" ip saddr 100.64.0.7/32 meta l4proto tcp tcp dport { 22, 8000-8100 } accept' in body
    assert 'iifname "wg0" ip saddr { 100.64.0.8/32, 100.64.0.9/32 } meta l4proto icmp accept' in body
    assert 'iifname "wg0" ip saddr 100.64.0.0/24 meta l4proto udp udp dport { 53 } accept' in body
    assert "ip saddr 100.64.0.0/24 accept" not in "\n".join(body)


def test_node_protocol_rule_shape_with_empty_fields_and_drop() -> None:
    # What cvlan-ctrl sends for FilterRule: every field present, empty meaning "any".
    rules: list[dict[str, object]] = [
        {"action": "drop", "src": ["100.64.0.9/32"], "proto": "", "ports": []},
        {"action": "accept", "src": [], "proto": "", "ports": []},
    ]
    body = [line.strip() for line in render_ruleset("wg0", "100.64.0.0/24", rules).splitlines()]
    i = body.index(
        'iifname "wg0" ip saddr 100.64.0.9/32 log prefix "cvlan-deny " group 1117 counter name "denied" drop'
    )
    assert body[i + 1] == 'iifname "wg0" ip saddr 100.64.0.0/24 accept'


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        ({"src": "nope"}, "filter rule 0: src 'nope': not a CIDR"),
        ({"src": 5}, "filter rule 0: src must be a CIDR or a list of CIDRs"),
        ({"src": "fd00::/64"}, "filter rule 0: src 'fd00::/64': only IPv4 is supported"),
        ({"proto": "sctp"}, "filter rule 0: proto 'sctp': expected one of any, tcp, udp, icmp"),
        ({"proto": "icmp", "ports": [1]}, "filter rule 0: ports need proto tcp or udp"),
        ({"proto": "tcp", "ports": 22}, "filter rule 0: ports must be a list"),
        ({"proto": "tcp", "ports": ["22-1"]}, "filter rule 0: port '22-1': out of range 1-65535"),
        ({"proto": "tcp", "ports": ["x"]}, "filter rule 0: port 'x': expected N or N-M"),
        ({"proto": "tcp", "ports": [True]}, "filter rule 0: port True: expected N or N-M"),
        ({"action": "reject"}, "filter rule 0: action 'reject': expected accept or drop"),
        ({"via": "1.2.3.4/32"}, "filter rule 0: unknown key 'via'"),
        ({"dst": "1.2.3.4/32"}, "filter rule 0: dst must be a list of CIDRs"),
        ({"dst": ["10.1.0.0/33"]}, "filter rule 0: dst '10.1.0.0/33': not a CIDR"),
    ],
)
def test_bad_rules_are_refused_with_one_line(rule: dict[str, object], message: str) -> None:
    with pytest.raises(FirewallError) as e:
        render_ruleset("wg0", "100.64.0.0/24", [rule])
    assert str(e.value) == message


def test_bad_interface_name_and_subnet() -> None:
    with pytest.raises(FirewallError, match="interface name"):
        render_ruleset('wg0"; flush ruleset', "100.64.0.0/24", [])
    with pytest.raises(FirewallError, match="cvlan subnet 'x': not a CIDR"):
        render_ruleset("wg0", "x", [])


@pytest.mark.skipif(
    shutil.which("nft") is None or os.geteuid() != 0,
    reason="this machine lacks nft or root (nft -c needs it)",
)
def test_rendered_ruleset_passes_nft_check() -> None:
    # `nft -c` parses and validates against the kernel without changing anything.
    rules: list[dict[str, object]] = [
        {"proto": "tcp", "ports": [22]},
        {"proto": "icmp"},
        {"action": "drop", "src": ["100.64.0.9/32"]},
    ]
    text = render_ruleset("wg0", "100.64.0.0/24", rules)
    r = subprocess.run(["nft", "-c", "-f", "-"], input=text, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
