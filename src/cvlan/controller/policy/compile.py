"""Compile a CVLAN's policy into the inbound filter rules of each member (node protocol FilterRule),
and into the forward rules of the members that carry subnet routes (`route:CIDR`) or are exit nodes
(`internet`, compiled as FilterRule.dst 0.0.0.0/0)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import NotRequired, TypedDict

from cvlan.controller.policy.document import INTERNET, PolicyDocument

EXIT_DST = "0.0.0.0/0"
"""FilterRule.dst of a rule naming `internet`: traffic an exit node forwards out of the overlay."""


class CompiledRule(TypedDict):
    action: str
    src: list[str]
    proto: str
    ports: list[str]
    dst: NotRequired[list[str]]
    """Networks behind the receiving node the rule applies to (a `route:CIDR` destination)."""


@dataclass(frozen=True)
class MemberRef:
    node_id: int
    name: str
    address: str
    tags: tuple[str, ...]
    routes: tuple[str, ...] = ()
    """Its approved subnet routes (a `route:CIDR` destination within one of them selects it)."""
    exit_node: bool = False
    """It is an approved exit node (an `internet` destination selects it)."""


def _routed(selector: str, m: MemberRef) -> bool:
    """Whether selector is route:CIDR and the network lies within one of m's routes."""
    if not selector.startswith("route:"):
        return False
    net = ipaddress.IPv4Network(selector.removeprefix("route:"))
    return any(net.subnet_of(ipaddress.IPv4Network(r)) for r in m.routes)


def _matches(selector: str, m: MemberRef) -> bool:
    if selector == "*":
        return True
    kind, _, value = selector.partition(":")
    if kind in ("route", INTERNET):
        return False
    if kind == "tag":
        return value in m.tags or f"tag:{value}" in m.tags
    return kind == "node" and value == m.name


def _sources(selectors: list[str], members: list[MemberRef], subnet: str) -> list[str]:
    out: list[str] = []
    for s in selectors:
        if s == "*":
            out.append(subnet)
        elif ":" in s:
            out += [f"{m.address}/32" for m in members if _matches(s, m)]
        else:
            out.append(s)
    return sorted(set(out))


def compile_for_members(
    doc: PolicyDocument | None, members: list[MemberRef], subnet: str
) -> dict[int, list[CompiledRule]]:
    """Rules per receiving node, in document order. No document: every list is empty (allow the CVLAN).

    With a document, a node no rule lets anything reach gets one explicit drop rule, because an empty
    list means "allow all" on the wire. A rule whose source selects nobody is left out (an empty
    source would mean "any")."""
    if doc is None:
        return {m.node_id: [] for m in members}
    out: dict[int, list[CompiledRule]] = {}
    for m in members:
        rules: list[CompiledRule] = []
        for r in doc.rules:
            src = _sources(r.src, members, subnet)
            if not src:
                continue
            rule: CompiledRule = {
                "action": r.action,
                "src": src,
                "proto": "" if r.proto == "any" else r.proto,
                "ports": list(r.ports),
            }
            if any(_matches(d, m) for d in r.dst):
                rules.append(rule)
            routed = [d.removeprefix("route:") for d in r.dst if _routed(d, m)]
            if routed:
                rules.append({**rule, "dst": routed})
            if m.exit_node and INTERNET in r.dst:
                rules.append({**rule, "dst": [EXIT_DST]})
        out[m.node_id] = rules or [{"action": "drop", "src": [subnet], "proto": "", "ports": []}]
    return out
