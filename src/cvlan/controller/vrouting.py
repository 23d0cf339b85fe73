"""Who reaches whom directly and who through a vrouter: the one rule both the node maps and the
vrouters' desired state are built from (pure functions, no I/O).

A node's region: the `region:NAME` tag its enrollment token gave it (operator's choice, stable);
without one, its home relay region (the relay region it measured closest, reported in polls);
with neither, no region ("").

A member's hubs: the registered vrouters of its CVLAN in its own region, in a preference order
fixed per member (rendezvous hashing of node id and vrouter id, so members spread over the
region's vrouters and adding or removing one moves only the members that preferred it). In hub
mode a member with no vrouter in its region uses all of the CVLAN's registered vrouters, so every
member of an all-hub CVLAN has some. In mesh mode a member without a vrouter in its region has
none. Which of its hubs carries traffic at a given moment is decided on the data plane (the first
alive one, dataplane/hubchoice.py): the node and every vrouter apply the same order.

Two members talk directly unless both have a hub and (the CVLAN is in hub mode, or they are in
different regions). The relation is symmetric, which WireGuard needs: a receiver accepts a packet
only from the peer its allowed IPs map the source address to, so if A sent to B via the vrouters,
B must also route A's /32 to its vrouter (A's peer entry at B then has no allowed IPs).

Traffic across regions: node -> its active hub (the CVLAN subnet, longest-prefix match loses to
direct /32s) -> the other member's active hub (a vrouter routes each member's /32 to that member's
first alive hub) -> node.
"""

from __future__ import annotations

import hashlib
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


def hubs_for(node_id: int, region: str, mode: str, hubs: Sequence[Hub]) -> tuple[Hub, ...]:
    """The vrouters a member may use, most preferred first (hubs: the CVLAN's registered vrouters)."""
    own = [h for h in hubs if region and h.region == region]
    pool = own or (list(hubs) if mode == "hub" else [])
    return tuple(sorted(pool, key=lambda h: (_rank(node_id, h.vrouter_id), h.vrouter_id)))


def _rank(node_id: int, vrouter_id: int) -> bytes:
    return hashlib.blake2b(f"{node_id}:{vrouter_id}".encode(), digest_size=8).digest()


def direct(mode: str, region_a: str, hub_a: Hub | None, region_b: str, hub_b: Hub | None) -> bool:
    """Whether members a and b reach each other directly (symmetric in a and b)."""
    if hub_a is None or hub_b is None:
        return True
    if mode == "hub":
        return False
    return region_a == region_b
