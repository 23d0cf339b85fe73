"""Desired state (from the controller) -> what the hub interface should look like (pure).

WireGuard peers: every member this vrouter serves (allowed IPs: its /32) and every other vrouter
of the same CVLANs (allowed IPs: the /32s of the members it serves). Routes: each served CVLAN's
subnet into the hub interface; WireGuard's allowed IPs pick the peer. Firewall: one nftables table
whose forward chain passes a packet only when source and destination are in the same served CVLAN
(subnets are unique across tenants, so this is the tenant boundary); everything else entering or
leaving the hub interface is counted in `denied` and dropped.
"""

from __future__ import annotations

import ipaddress
import json
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cvlan.dataplane.firewall import FirewallError, table_name
from cvlan.dataplane.wgconfig import KeyHex, WgConfig, WgPeer, parse_endpoint, parse_key

HUB_ADDRESS = "169.254.77.1/32"
"""The hub interface's own address: link-local, never routed; only the source of ICMP errors."""
VROUTER_KEEPALIVE = 25
"""Between vrouters (either side may be the one behind a stateful firewall)."""


@dataclass(frozen=True)
class HubConfig:
    wg: WgConfig
    routes: tuple[str, ...]
    ruleset: str
    cvlans: int
    served: int


Resolver = Callable[[str], str]


def resolve_endpoint(text: str) -> str:
    """HOST:PORT with a name resolved to an IPv4 address (WireGuard takes addresses only)."""
    try:
        return parse_endpoint(text)
    except ValueError:
        pass
    host, _, port = text.rpartition(":")
    infos = socket.getaddrinfo(host, int(port), socket.AF_INET, socket.SOCK_DGRAM)
    return f"{infos[0][4][0]}:{port}"


def first_endpoint(eps: list[str]) -> str:
    for e in eps:
        try:
            return parse_endpoint(e)
        except ValueError:
            continue
    return ""


def build(
    state: dict[str, Any],
    private_key: KeyHex,
    ifname: str,
    listen_port: int,
    resolve: Resolver = resolve_endpoint,
) -> HubConfig:
    """The hub configuration for a desired state; ValueError (or FirewallError) on bad input."""
    peers: dict[str, WgPeer] = {}
    subnets: list[tuple[int, ipaddress.IPv4Network]] = []
    served = 0
    for c in state["cvlans"]:
        net = ipaddress.ip_network(c["subnet"])
        if not isinstance(net, ipaddress.IPv4Network):
            raise ValueError(f"CVLAN {c['name']}: only IPv4 subnets are supported")
        subnets.append((int(c["id"]), net))
        for mem in c["members"]:
            if not mem["served"]:
                continue
            key = parse_key(mem["key"], f"member {mem['name']}")
            addr = str(ipaddress.ip_network(mem["address"]))
            peers[key] = WgPeer(key, (addr,), first_endpoint(list(mem["endpoints"])), 0)
            served += 1
    for v in state["vrouters"]:
        key = parse_key(v["key"], f"vrouter {v['name']}")
        try:
            ep = resolve(v["endpoint"]) if v["endpoint"] else ""
        except (OSError, ValueError):
            ep = ""  # unresolvable now: the other side's handshakes teach us its address
        allowed = tuple(sorted(str(ipaddress.ip_network(a)) for a in v["allowed_ips"]))
        peers[key] = WgPeer(key, allowed, ep, VROUTER_KEEPALIVE)
    wg = WgConfig(private_key, listen_port, tuple(peers[k] for k in sorted(peers)))
    routes = tuple(sorted(str(n) for _, n in subnets))
    return HubConfig(wg, routes, render_ruleset(ifname, subnets), len(subnets), served)


def render_ruleset(ifname: str, subnets: list[tuple[int, ipaddress.IPv4Network]]) -> str:
    """The vrouter's nftables table: forward only within one CVLAN (atomic replace, as `nft -f`)."""
    if not ifname or len(ifname) > 15 or not all(ch.isalnum() or ch in "_.-" for ch in ifname):
        raise FirewallError(f"interface name {ifname!r}: expected 1-15 of A-Z a-z 0-9 _ . -")
    table, q = table_name(ifname), json.dumps(ifname)
    chains = "".join(
        f'  chain cvlan_{cid} {{\n    ip daddr {net} counter name "forwarded" accept\n  }}\n'
        for cid, net in subnets
    )
    elements = ", ".join(f"{net} : jump cvlan_{cid}" for cid, net in subnets)
    vmap = (
        "  map cvlan_of_src {\n    type ipv4_addr : verdict\n    flags interval\n"
        + (f"    elements = {{ {elements} }}\n" if subnets else "")
        + "  }\n"
    )
    return (
        f"table inet {table} {{}}\n"
        f"delete table inet {table}\n"
        f"table inet {table} {{\n"
        "  counter denied { }\n"
        "  counter denied_input { }\n"
        "  counter forwarded { }\n"
        f"{chains}{vmap}"
        "  chain forward {\n"
        "    type filter hook forward priority filter; policy accept;\n"
        f"    iifname != {q} oifname != {q} accept\n"
        f"    iifname {q} oifname {q} ip saddr vmap @cvlan_of_src\n"
        '    counter name "denied" drop\n'
        "  }\n"
        "  chain input {\n"
        "    type filter hook input priority filter; policy accept;\n"
        f"    iifname != {q} accept\n"
        "    ct state established,related accept\n"
        "    meta l4proto icmp accept\n"
        '    counter name "denied_input" drop\n'
        "  }\n"
        "}\n"
    )
