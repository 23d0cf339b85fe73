"""Inbound policy on the WireGuard interface: one nftables table, rendered whole, loaded atomically.

The rendered file first creates the table (so the delete cannot fail), deletes it and defines it
again; `nft -f` runs the file as one transaction, so either the new table is in place or the old
one is untouched. Rule format (DesiredState.filter_rules, the node protocol's FilterRule), evaluated in order:

    {"action": "accept" | "drop",                        # default: accept
     "src": ["100.64.0.7/32", ...] | "100.64.0.0/24",    # empty/absent: the CVLAN subnet
     "proto": "" | "any" | "tcp" | "udp" | "icmp",       # empty/absent: any
     "ports": ["22", "8000-8100"]}                       # tcp/udp only; empty/absent: all ports

An empty list allows everything from the CVLAN subnet. Everything else arriving on the interface
is logged to NFLOG group DENY_LOG_GROUP (for the denied-flow report), counted in the named counter
`denied` and dropped. Replies to our own traffic are accepted, and so are health probes from the
CVLAN (UDP PROBE_PORT, wire/healthprobe.py) ahead of the rules, whatever the policy says.

A node that serves subnet routes or is an exit node (docs/ROUTES.md) also gets a forward chain: a
rule with "dst" (a policy rule naming a route, `route:CIDR`) applies to traffic forwarded to those
networks; without any rule (no policy) the approved routes are open to the CVLAN; everything else
from the interface is dropped, except, on an exit node, traffic leaving the overlay: all of it
without a policy, with one what its rules with dst 0.0.0.0/0 (`internet`) accept. Forwarded
traffic is masqueraded to the node's own address (so the networks behind it need no route back)."""

from __future__ import annotations

import hashlib
import ipaddress
import json
import logging
import re
import subprocess
from collections.abc import Mapping, Sequence
from typing import Protocol

from cvlan.common.host import check_interface_name
from cvlan.wire.healthprobe import PROBE_PORT

log = logging.getLogger(__name__)

_PROTOS = ("any", "tcp", "udp", "icmp")
DENY_LOG_GROUP = 1117
"""NFLOG group every dropped packet is logged to (read by cvland, see dataplane/nflog.py)."""
DENY_LOG_PREFIX = "cvlan-deny "
_DROP = f'log prefix "{DENY_LOG_PREFIX}" group {DENY_LOG_GROUP} counter name "denied" drop'
_ACTIONS = {"accept": "accept", "drop": _DROP}
_IGNORED_KEYS = {"comment", "id", "name"}


class FirewallError(Exception):
    """The ruleset was invalid or nft refused it (the previous table stays)."""


def table_name(ifname: str) -> str:
    return f"cvlan-{ifname}"


def render_ruleset(
    ifname: str,
    subnet: str,
    rules: Sequence[Mapping[str, object]],
    routes: Sequence[str] = (),
    exit_node: bool = False,
) -> str:
    """The complete nft file for interface ifname; FirewallError on a bad rule or name. routes: the
    node's approved subnet routes; exit_node: it forwards its peers' internet traffic."""
    try:
        check_interface_name(ifname)
    except ValueError as e:
        raise FirewallError(f"interface name {ifname!r}: {e}") from None
    net = _network(subnet, "cvlan subnet")
    table = table_name(ifname)
    inbound = [(i, r) for i, r in enumerate(rules) if not r.get("dst")]
    beyond = [net, *(_network(r, "route") for r in routes)]
    forwarded = [_render_rule(i, r, net, beyond) for i, r in enumerate(rules) if r.get("dst")]
    accepts = [_render_rule(i, r, net) for i, r in inbound] or [f"ip saddr {net} accept"]
    if rules and not inbound:
        accepts = [f"ip saddr {net} {_DROP}"]  # a policy that only names routes protects the node too
    iif = f"iifname {json.dumps(ifname)}"
    body = "\n".join(f"    {iif} {a}" for a in accepts)
    return (
        f"table inet {table} {{}}\n"
        f"delete table inet {table}\n"
        f"table inet {table} {{\n"
        "  counter denied { }\n"
        "  chain input {\n"
        "    type filter hook input priority filter; policy accept;\n"
        f"    iifname != {json.dumps(ifname)} accept\n"
        "    ct state established,related accept\n"
        f"    iifname {json.dumps(ifname)} ip saddr {net} udp dport {PROBE_PORT} accept\n"
        f"{body}\n"
        f"    {_DROP}\n"
        "  }\n"
        f"{_forward_chains(ifname, net, forwarded, bool(rules), routes, exit_node)}"
        "}\n"
    )


def _forward_chains(
    ifname: str,
    net: ipaddress.IPv4Network,
    forwarded: list[str],
    policy: bool,
    routes: Sequence[str],
    exit_node: bool,
) -> str:
    """The forward and NAT chains of a node that forwards for its peers ("" for any other node)."""
    if not routes and not exit_node:
        return ""
    iif = f"iifname {json.dumps(ifname)}"
    nets = [str(_network(r, "route")) for r in routes]
    lines = [f"{iif} {x}" for x in forwarded]
    if nets:
        lines.append(f"{iif} ip daddr {_set(nets)} {_DROP if policy else 'accept'}")
    if exit_node and not policy:
        lines.append(f"{iif} ip daddr != {net} accept")
    lines.append(f"{iif} {_DROP}")
    body = "".join(f"    {x}\n" for x in lines)
    return (
        "  chain forward {\n"
        "    type filter hook forward priority filter; policy accept;\n"
        "    ct state established,related accept\n"
        f"{body}"
        "  }\n"
        "  chain postrouting {\n"
        "    type nat hook postrouting priority srcnat; policy accept;\n"
        f"    ip saddr {net} oifname != {json.dumps(ifname)} masquerade\n"
        "  }\n"
    )


def _set(items: Sequence[str]) -> str:
    return items[0] if len(items) == 1 else "{ " + ", ".join(items) + " }"


def _network(text: object, what: str) -> ipaddress.IPv4Network:
    try:
        net = ipaddress.ip_network(str(text), strict=False)
    except ValueError:
        raise FirewallError(f"{what} {text!r}: not a CIDR") from None
    if not isinstance(net, ipaddress.IPv4Network):
        raise FirewallError(f"{what} {text!r}: only IPv4 is supported")
    return net


def _render_rule(
    i: int,
    rule: Mapping[str, object],
    default_src: ipaddress.IPv4Network,
    beyond: Sequence[ipaddress.IPv4Network] = (),
) -> str:
    """One rule as nft text. A dst of 0.0.0.0/0 (a policy naming `internet`) means "outside beyond"
    (the CVLAN subnet and the node's own routes, which their own rules govern)."""
    unknown = set(rule) - {"src", "dst", "proto", "ports", "action"} - _IGNORED_KEYS
    if unknown:
        raise FirewallError(f"filter rule {i}: unknown key {sorted(unknown)[0]!r}")
    action = rule.get("action") or "accept"
    if action not in _ACTIONS:
        raise FirewallError(f"filter rule {i}: action {action!r}: expected accept or drop")
    src_raw = rule.get("src") or str(default_src)
    srcs = [src_raw] if isinstance(src_raw, str) else src_raw
    if not isinstance(srcs, list):
        raise FirewallError(f"filter rule {i}: src must be a CIDR or a list of CIDRs")
    nets = [str(_network(s, f"filter rule {i}: src")) for s in srcs]
    src = _set(nets)
    proto = rule.get("proto") or "any"
    if proto not in _PROTOS:
        raise FirewallError(f"filter rule {i}: proto {proto!r}: expected one of {', '.join(_PROTOS)}")
    out = f"ip saddr {src}"
    dst_raw = rule.get("dst") or []
    if not isinstance(dst_raw, list):
        raise FirewallError(f"filter rule {i}: dst must be a list of CIDRs")
    dsts = [_network(d, f"filter rule {i}: dst") for d in dst_raw]
    if any(d.prefixlen == 0 for d in dsts):
        out += " ip daddr != " + _set([str(b) for b in beyond or [default_src]])
    elif dsts:
        out += " ip daddr " + _set([str(d) for d in dsts])
    if proto != "any":
        out += f" meta l4proto {proto}"
    ports = rule.get("ports")
    if ports:
        if proto not in ("tcp", "udp"):
            raise FirewallError(f"filter rule {i}: ports need proto tcp or udp")
        out += f" {proto} dport {{ {', '.join(_port(i, p) for p in _as_list(i, ports))} }}"
    return f"{out} {_ACTIONS[str(action)]}"


def _as_list(i: int, v: object) -> list[object]:
    if not isinstance(v, list):
        raise FirewallError(f"filter rule {i}: ports must be a list")
    return v


def _port(i: int, p: object) -> str:
    text = str(p)
    m = re.fullmatch(r"([0-9]{1,5})(?:-([0-9]{1,5}))?", text)
    if isinstance(p, bool) or not m:
        raise FirewallError(f"filter rule {i}: port {p!r}: expected N or N-M")
    lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
    if not 0 < lo <= hi < 65536:
        raise FirewallError(f"filter rule {i}: port {p!r}: out of range 1-65535")
    return str(lo) if lo == hi else f"{lo}-{hi}"


def ruleset_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12]


class Firewall(Protocol):
    def apply(self, ruleset: str) -> None: ...
    def teardown(self) -> None: ...
    def denied(self) -> int: ...


class NftFirewall:
    """Loads rendered rulesets with `nft -f -` in the current network namespace."""

    def __init__(self, ifname: str) -> None:
        self.table = table_name(ifname)
        self._applied = ""

    def apply(self, ruleset: str) -> None:
        if ruleset == self._applied:
            return
        r = subprocess.run(["nft", "-f", "-"], input=ruleset, capture_output=True, text=True, timeout=30)
        if r.returncode != 0:
            err = (r.stderr.strip().splitlines() or ["nft failed"])[0]
            log.error(
                "nftables load refused; previous table kept (old %s, new %s): %s",
                ruleset_hash(self._applied),
                ruleset_hash(ruleset),
                err,
            )
            raise FirewallError(f"load table {self.table}: {err}")
        self._applied = ruleset

    def teardown(self) -> None:
        subprocess.run(["nft", "delete", "table", "inet", self.table], capture_output=True, timeout=30)
        self._applied = ""

    def denied(self) -> int:
        """Packets dropped so far by the table's `denied` counter (0 if the table is absent)."""
        r = subprocess.run(
            ["nft", "-j", "list", "counter", "inet", self.table, "denied"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        if r.returncode != 0:
            return 0
        for item in json.loads(r.stdout).get("nftables", []):
            if "counter" in item:
                return int(item["counter"].get("packets", 0))
        return 0


class FakeFirewall:
    """Keeps the last ruleset; can be told to refuse the next one."""

    def __init__(self) -> None:
        self.ruleset = ""
        self.loads = 0
        self.refuse_next = False

    def apply(self, ruleset: str) -> None:
        if self.refuse_next:
            self.refuse_next = False
            raise FirewallError("load table: refused by fake")
        if ruleset != self.ruleset:
            self.loads += 1
        self.ruleset = ruleset

    def teardown(self) -> None:
        self.ruleset = ""

    def denied(self) -> int:
        return 0
