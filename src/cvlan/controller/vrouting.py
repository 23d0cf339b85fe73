"""Who reaches whom directly and who through a vrouter: the one rule both the node maps and the
vrouters' desired state are built from (pure functions, no I/O).

A node's region: the `region:NAME` tag its enrollment token gave it (operator's choice, stable);
without one, its home relay region (the relay region it measured closest, reported in polls);
with neither, no region ("").

A member's hub: the registered vrouter of its CVLAN in its own region (the lowest id if several).
In hub mode a member with no vrouter in its region uses the CVLAN's first registered vrouter, so
every member of an all-hub CVLAN has one. In mesh mode a member without a vrouter in its region
has no hub.

Two members talk directly unless both have a hub and (the CVLAN is in hub mode, or they are in
different regions). The relation is symmetric, which WireGuard needs: a receiver accepts a packet
only from the peer its allowed IPs map the source address to, so if A sent to B via the vrouters,
B must also route A's /32 to its vrouter (A's peer entry at B then has no allowed IPs).

Traffic across regions: node -> its hub (the CVLAN subnet, longest-prefix match loses to direct
/32s) -> the other region's hub (which carries that hub's members' /32s) -> node.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

REGION_TAG = "region:"


@dataclass(frozen=True, slots=True)
class Hub:
    """A registered vrouter serving a CVLAN."""

    vrouter_id: int
    name: str
    region: str


def node_region(tags: Iterable[str], home_relay_region: str) -> str:
    for t in tags:
        if t.startswith(REGION_TAG):
            return t[len(REGION_TAG) :]
    return home_relay_region


def hub_for(region: str, mode: str, hubs: Sequence[Hub]) -> Hub | None:
    """The vrouter a member of this region uses (hubs: the CVLAN's registered vrouters)."""
    own = [h for h in hubs if region and h.region == region]
    if own:
        return min(own, key=lambda h: h.vrouter_id)
    if mode == "hub" and hubs:
        return min(hubs, key=lambda h: h.vrouter_id)
    return None


def direct(mode: str, region_a: str, hub_a: Hub | None, region_b: str, hub_b: Hub | None) -> bool:
    """Whether members a and b reach each other directly (symmetric in a and b)."""
    if hub_a is None or hub_b is None:
        return True
    if mode == "hub":
        return False
    return region_a == region_b
