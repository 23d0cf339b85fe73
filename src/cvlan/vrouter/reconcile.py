"""Desired state (from the controller) -> what the hub interface should look like (pure).

WireGuard peers: every member this vrouter serves and every other vrouter of the same CVLANs.
Each member's /32 goes to the member's first alive hub in its preference order ("hubs"): to the
member's own peer when that is this vrouter, else to that vrouter's peer (the member accepts
packets only from the vrouter it routes its subnet to, and makes the same choice;
dataplane/hubchoice.py). A member that can fail over gets keepalives, so it sees this vrouter
alive. Routes: each served CVLAN's subnet into the hub interface; WireGuard's allowed IPs pick
the peer. Firewall: one nftables table whose forward chain passes a packet only when source and
destination are in the same served CVLAN (subnets are unique across tenants, so this is the
tenant boundary); everything else entering or leaving the hub interface is counted in `denied`
and dropped.
"""

from __future__ import annotations

import ipaddress
import json
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from cvlan.dataplane.firewall import (
    FirewallError,
    _render_rule,  # the node's own rule syntax, so both sides agree
    table_name,
)
from cvlan.dataplane.hubchoice import HUB_KEEPALIVE
from cvlan.dataplane.wgconfig import WgConfig, WgPeer
from cvlan.wire.endpoint import parse_endpoint, split_hostport
from cvlan.wire.healthprobe import PROBE_PORT
from cvlan.wire.keys import KeyHex, parse_key, public_of

HUB_ADDRESS = "169.254.77.1/32"
"""The hub interface's own address: link-local, never routed; only the source of ICMP errors."""
VROUTER_KEEPALIVE = HUB_KEEPALIVE
"""Between vrouters: either side may be behind a stateful firewall, and each must see the other alive."""


@dataclass(frozen=True)
class HubConfig:
    wg: WgConfig
    routes: tuple[str, ...]
    ruleset: str
    cvlans: int
    served: int
    vrouter_keys: tuple[KeyHex, ...] = ()
    """The other vrouters' keys (whose liveness decides where members' /32s go)."""


Resolver = Callable[[str], str]
Active = Callable[[Sequence[str]], str]
"""Preference order of hub keys -> the one that carries traffic now (HubLiveness.active)."""


def first(order: Sequence[str]) -> str:
    return order[0] if order else ""


MemberPolicy = tuple[int, str, list[dict[str, Any]]]
"""(node id, address, compiled inbound rules) of a member with a policy."""


def resolve_endpoint(text: str) -> str:
    """HOST:PORT with a name resolved to an IPv4 address (WireGuard takes addresses only)."""
    try:
        return parse_endpoint(text)
    except ValueError:
        pass
    host, port = split_hostport(text)
    infos = socket.getaddrinfo(host, port, socket.AF_INET, socket.SOCK_DGRAM)
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
    active: Active = first,
) -> HubConfig:
    """The hub configuration for a desired state; ValueError (or FirewallError) on bad input.
    active: which hub of a member's preference order carries its traffic (default: the first)."""
    own = public_of(private_key)
    keys = {int(state["vrouter"]["id"]): own}
    keys |= {int(v["id"]): parse_key(v["key"], f"vrouter {v['name']}") for v in state["vrouters"]}
    routed: dict[str, list[str]] = {k: [] for k in keys.values()}
    members: dict[str, WgPeer] = {}
    subnets: list[tuple[int, ipaddress.IPv4Network]] = []
    policies: dict[int, list[MemberPolicy]] = {}
    for c in state["cvlans"]:
        net = ipaddress.ip_network(c["subnet"])
        if not isinstance(net, ipaddress.IPv4Network):
            raise ValueError(f"CVLAN {c['name']}: only IPv4 subnets are supported")
        subnets.append((int(c["id"]), net))
        for mem in c["members"]:
            addr = str(ipaddress.ip_network(mem["address"]))
            if mem.get("filter_rules"):
                ip = str(ipaddress.ip_interface(mem["address"]).ip)
                policies.setdefault(int(c["id"]), []).append((int(mem["node_id"]), ip, mem["filter_rules"]))
            order = [keys[int(i)] for i in mem["hubs"] if int(i) in keys]
            via = active(order)
            if via and via != own:
                routed[via].append(addr)
            if mem["served"]:
                key = parse_key(mem["key"], f"member {mem['name']}")
                allowed = (addr,) if via == own else ()
                keepalive = HUB_KEEPALIVE if len(order) > 1 else 0
                members[key] = WgPeer(key, allowed, first_endpoint(list(mem["endpoints"])), keepalive)
    peers = dict(members)
    for v in state["vrouters"]:
        key = keys[int(v["id"])]
        try:
            ep = resolve(v["endpoint"]) if v["endpoint"] else ""
        except (OSError, ValueError):
            ep = ""  # unresolvable now: the other side's handshakes teach us its address
        peers[key] = WgPeer(key, tuple(sorted(routed[key])), ep, VROUTER_KEEPALIVE)
    wg = WgConfig(private_key, listen_port, tuple(peers[k] for k in sorted(peers)))
    routes = tuple(sorted(str(n) for _, n in subnets))
    others = tuple(sorted(k for k in keys.values() if k != own))
    ruleset = render_ruleset(ifname, subnets, policies)
    return HubConfig(wg, routes, ruleset, len(subnets), len(members), others)


def render_ruleset(
    ifname: str,
    subnets: list[tuple[int, ipaddress.IPv4Network]],
    policies: dict[int, list[MemberPolicy]] | None = None,
) -> str:
    """The vrouter's nftables table: forward only within one CVLAN (atomic replace, as `nft -f`).

    policies: per CVLAN id, the members with a compiled inbound policy; a packet to such a member
    must also pass its rules (the same rules, in the same order, as on the member itself)."""
    if not ifname or len(ifname) > 15 or not all(ch.isalnum() or ch in "_.-" for ch in ifname):
        raise FirewallError(f"interface name {ifname!r}: expected 1-15 of A-Z a-z 0-9 _ . -")
    table, q = table_name(ifname), json.dumps(ifname)
    chains = "".join(_cvlan_chain(cid, net, (policies or {}).get(cid, [])) for cid, net in subnets)
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
        # Replies of a flow whose first packet passed (so, within one CVLAN and its policy).
        f'    iifname {q} oifname {q} ct state established,related counter name "forwarded" accept\n'
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


def _cvlan_chain(cid: int, net: ipaddress.IPv4Network, policies: list[MemberPolicy]) -> str:
    """Destination check of one CVLAN; members with a policy first go through their own rules."""
    out = ""
    for node_id, _, rules in policies:
        body = "".join(f"    {_counted(_render_rule(i, r, net))}\n" for i, r in enumerate(rules))
        out += f'  chain node_{node_id} {{\n{body}    counter name "denied" drop\n  }}\n'
    # Health probes between members pass ahead of any policy, as on the members themselves.
    lines = f'    ip daddr {net} udp dport {PROBE_PORT} counter name "forwarded" accept\n'
    if policies:
        elems = ", ".join(f"{addr} : jump node_{node_id}" for node_id, addr, _ in policies)
        lines += f"    ip daddr vmap {{ {elems} }}\n"
    lines += f'    ip daddr {net} counter name "forwarded" accept\n'
    return out + f"  chain cvlan_{cid} {{\n{lines}  }}\n"


def _counted(rule: str) -> str:
    return rule[: -len(" accept")] + ' counter name "forwarded" accept' if rule.endswith(" accept") else rule
