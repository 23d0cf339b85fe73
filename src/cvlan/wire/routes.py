"""Subnet routes and exit nodes as they travel between a node and the controller: one parser, used by
cvlan-ctrl (its --advertise-routes flag and config) and by the controller (adverts, approvals)."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

EXIT_ROUTE = "0.0.0.0/0"
"""How an exit-node offer is stored beside a node's subnet routes (never a subnet route itself)."""
MAX_ROUTES = 32
"""The most subnet routes one node may advertise."""


class RouteError(ValueError):
    """A route that is not an IPv4 subnet route; the message says which and why."""


def parse_route(text: str) -> ipaddress.IPv4Network:
    """One subnet route: an IPv4 CIDR without host bits, not the default route."""
    try:
        net = ipaddress.ip_network(text.strip(), strict=True)
    except ValueError as e:
        hint = ""
        try:
            loose = ipaddress.ip_network(text.strip(), strict=False)
            hint = f" (did you mean {loose}?)"
        except ValueError:
            pass
        raise RouteError(f"route {text!r}: not an IPv4 network{hint}: {str(e).splitlines()[0]}") from None
    if not isinstance(net, ipaddress.IPv4Network):
        raise RouteError(f"route {text!r}: only IPv4 routes are supported")
    if net.prefixlen == 0:
        raise RouteError(
            f"route {text!r}: the default route is not a subnet route; offer the node as an exit node "
            "instead (--advertise-exit-node)"
        )
    return net


def parse_routes(items: Iterable[str]) -> list[str]:
    """Routes from a list (or comma-separated entries), normalized, deduplicated and sorted; RouteError
    for the first bad one, for two that overlap, or for more than MAX_ROUTES."""
    nets: set[ipaddress.IPv4Network] = set()
    for item in items:
        for part in item.split(","):
            if part.strip():
                nets.add(parse_route(part))
    if len(nets) > MAX_ROUTES:
        raise RouteError(f"{len(nets)} routes: a node advertises at most {MAX_ROUTES}")
    ordered = sorted(nets)
    for i, a in enumerate(ordered):
        for b in ordered[i + 1 :]:
            if a.overlaps(b):
                raise RouteError(f"routes {a} and {b} overlap: advertise one of them")
    return [str(n) for n in ordered]
