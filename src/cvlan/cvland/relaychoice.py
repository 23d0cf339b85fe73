"""Which relay of a region carries a node's traffic: rendezvous hashing of the node's key over the
region's relays, skipping relays that are down.

Every node computes the same order of a region's relays for a given WireGuard key (highest
SHA-256(key || relay URL) first), so no coordination is needed: a node makes its *home relay* the
first relay of that order (in its home region) that is not down, and a peer sending to it picks the
first relay of the same order that is not down *from the peer's side*. When a relay dies, both
lose their connection to it at once and both move to the next relay of the order; when it comes
back, both return. A node stays connected to a relay it used, so a peer that noticed the change
later still reaches it there. Keys spread evenly over a region's relays, and adding or removing a
relay moves only the keys whose first choice it was.

If every relay of the node's home region is down, the home moves to the region with the next best
STUN round-trip time that has a relay up (reported to the controller as ``home_relay_region``;
peers follow with their next map). Until then a peer whose region has no relay up sends through
its own home relay, where the node is connected if it relays to that peer.

A relay reachable from one end but not from the other (a partial outage) would leave the ends
disagreeing; the relay then answers the sender's packets with PEER_GONE, and the sender passes that
relay over for the peer (for ``GONE_SKIP_S`` in cvland) and tries the next of the order.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterable


def rendezvous(key: bytes, urls: Iterable[str]) -> list[str]:
    """urls ordered by SHA-256(key || url), highest first (the same on every node)."""
    return sorted(urls, key=lambda u: hashlib.sha256(key + u.encode()).digest(), reverse=True)


class RelayChoice:
    """Home relay and per-peer relay over a relay map (region -> URLs) and a ``down(url)`` test."""

    def __init__(self, regions: dict[str, list[str]], down: Callable[[str], bool]) -> None:
        self.regions = regions
        self._down = down

    def first_up(self, key: bytes, region: str, skip: frozenset[str] = frozenset()) -> str | None:
        """The first relay of region, in key's order, that is not down (nor in skip)."""
        order = rendezvous(key, self.regions.get(region, ()))
        return next((u for u in order if not self._down(u) and u not in skip), None)

    def home(self, own: bytes, preferred: str, rtts: dict[str, float]) -> tuple[str, str]:
        """(region, url) of this node's home relay: the preferred region's first relay up, else the
        region with the best round-trip time that has one. With every relay down, the preferred
        region's first choice (its client keeps retrying)."""
        others = sorted((r for r in self.regions if r != preferred), key=lambda r: rtts.get(r, math.inf))
        for region in [preferred, *others] if preferred in self.regions else others:
            url = self.first_up(own, region)
            if url is not None:
                return region, url
        region = preferred if preferred in self.regions else next(iter(self.regions), "")
        order = rendezvous(own, self.regions.get(region, ()))
        return region, order[0] if order else ""

    def for_peer(self, peer: bytes, region: str, home: str, skip: frozenset[str] = frozenset()) -> str | None:
        """The relay that reaches peer (homed in region): its region's first relay up in the peer's
        order; else our home relay (home), where the peer is connected if it relays to us. Relays
        in skip (they said lately that the peer is not there) are passed over while another is up."""
        if region in self.regions:
            url = self.first_up(peer, region, skip) or self.first_up(peer, region)
            if url is not None:
                return url
            return home or None
        # Peer without a known home region: our region, in the peer's order (where it would be if
        # it shared our region).
        return self.first_up(peer, self._region_of(home)) or home or None

    def _region_of(self, url: str) -> str:
        return next((r for r, urls in self.regions.items() if url in urls), "")
