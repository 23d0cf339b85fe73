"""The rules of subnet routes and exit nodes (pure): which advertised route is refused and why, which
approval conflicts, which auto-approval rule approves it, and which advertiser is primary.

A node advertises routes (networks behind it) and may offer itself as an exit node; both are stored
per node, one row per prefix (the exit offer as wire.routes.EXIT_ROUTE). Nothing reaches a peer's
map before it is approved by a tenant admin or by an auto-approval rule of the CVLAN."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from cvlan.wire.routes import EXIT_ROUTE, RouteError, parse_route

RULE_KINDS = ("route", "exit")


def refusal(prefix: str, cvlan_subnet: str, pool: str, infra_hosts: Iterable[str]) -> str:
    """Why the route may never be used ("" when it may): not a subnet route, inside the overlay
    (the CVLAN's subnet or the controller's address pool), or covering the controller or a relay
    (routing them into the tunnel would cut every node off its control plane)."""
    if prefix == EXIT_ROUTE:
        return ""
    try:
        net = parse_route(prefix)
    except RouteError as e:
        return str(e)
    subnet = ipaddress.ip_network(cvlan_subnet, strict=False)
    if net.overlaps(subnet):
        return f"route {net} overlaps the CVLAN subnet {subnet}"
    overlay = ipaddress.ip_network(pool, strict=False)
    if net.overlaps(overlay):
        return f"route {net} overlaps the overlay address pool {overlay}"
    for host in infra_hosts:
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            continue
        if ip in net:
            return f"route {net} covers {ip}, an address of the controller or a relay"
    return ""


@dataclass(frozen=True, slots=True)
class Approved:
    """An approved route of another node of the CVLAN."""

    node: str
    prefix: str


def conflict(prefix: str, node: str, approved: Iterable[Approved]) -> str:
    """Why approving prefix for node conflicts ("" when it does not): another node's approved route
    overlaps it without being the same network. The same network on two nodes is allowed: one is
    primary, the other takes over when it goes offline."""
    if prefix == EXIT_ROUTE:
        return ""
    net = ipaddress.ip_network(prefix)
    for a in approved:
        if a.node == node or a.prefix == EXIT_ROUTE:
            continue
        other = ipaddress.ip_network(a.prefix)
        if other != net and other.overlaps(net):
            return f"route {net} overlaps {other}, approved for node {a.node}"
    return ""


def vrouted_refusal(prefix: str, cvlan: str) -> str:
    """Why no route (nor exit node) is approved in a CVLAN served by vrouters: members reached
    through a vrouter have no WireGuard path to the advertiser, and vrouters forward only addresses
    of the CVLAN subnet."""
    what = "the exit node offer" if prefix == EXIT_ROUTE else f"route {prefix}"
    return (
        f"{what} cannot be approved: CVLAN {cvlan!r} is served by vrouters, which carry only its own "
        "addresses (subnet routes and exit nodes need a CVLAN without vrouters)"
    )


def approval_problem(prefix: str, node: str, approved: Iterable[Approved], vrouted: str = "") -> str:
    """Why prefix may not be approved for node now ("" when it may): the one check an admin's approval
    and an auto-approval rule both go through. vrouted: the name of the CVLAN when vrouters serve it."""
    if vrouted:
        return vrouted_refusal(prefix, vrouted)
    return conflict(prefix, node, approved)


@dataclass(frozen=True, slots=True)
class AutoRule:
    """An auto-approval rule of a CVLAN: kind "route" approves advertised routes within prefix,
    kind "exit" approves exit-node offers; tag "" matches every node, else nodes with that tag."""

    kind: str
    prefix: str = ""
    tag: str = ""


def auto_approved(prefix: str, node_tags: Sequence[str], rules: Iterable[AutoRule]) -> bool:
    """Whether a rule approves this advertised route (or the exit offer) of a node with these tags."""
    tags = {t.removeprefix("tag:") for t in node_tags}
    for r in rules:
        if r.tag and r.tag.removeprefix("tag:") not in tags:
            continue
        if prefix == EXIT_ROUTE:
            if r.kind == "exit":
                return True
            continue
        if r.kind == "route" and ipaddress.IPv4Network(prefix).subnet_of(ipaddress.IPv4Network(r.prefix)):
            return True
    return False


def check_rule(kind: str, prefix: str, tag: str) -> AutoRule:
    """A validated rule; ValueError with one line otherwise."""
    if kind not in RULE_KINDS:
        raise ValueError(f"rule kind {kind!r}: expected route or exit")
    if kind == "exit":
        if prefix:
            raise ValueError("an exit rule takes no prefix")
        return AutoRule("exit", "", tag)
    if not prefix:
        raise ValueError("a route rule needs a prefix, e.g. 10.0.0.0/8")
    return AutoRule("route", str(parse_route(prefix)), tag)


@dataclass(frozen=True, slots=True)
class Advertiser:
    node_id: int
    online: bool


def primary(advertisers: Sequence[Advertiser]) -> int:
    """The node that carries a route several nodes advertise: the first online one in node id order
    (the order every receiving node uses with its own liveness, see cvland/subnets.py), else the
    first. 0 when there is none."""
    ordered = sorted(advertisers, key=lambda a: a.node_id)
    for a in ordered:
        if a.online:
            return a.node_id
    return ordered[0].node_id if ordered else 0
